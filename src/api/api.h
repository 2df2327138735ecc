/*
 * api: the handlers of the services the gateway serves, and the
 * authentication step every call passes first.
 *
 * Every method is registered with its auth mode (from the contract's
 * `authorization` option). A call-start hook authenticates the caller into
 * an api_principal before any handler runs, so every handler sees the
 * caller's principal (api_call_principal) and never parses credentials.
 */
#ifndef GW_API_H
#define GW_API_H

#include <stdbool.h>
#include <stddef.h>

#include "base/base.h"
#include "drivers/driver.h"

struct event_base;
struct grpc_server;
struct grpc_call;
struct api;

/* Per-method authentication modes (openshell.options.v1 AuthorizationRule). */
enum api_auth_mode {
    API_AUTH_UNAUTHENTICATED = 0, /* no credentials checked (Health, probes, reflection) */
    API_AUTH_BEARER,              /* user principals only */
    API_AUTH_SANDBOX,             /* sandbox principals only (supervisor JWT) */
    API_AUTH_DUAL,                /* either */
};

enum api_principal_kind {
    API_PRINCIPAL_ANONYMOUS = 0,
    API_PRINCIPAL_USER,
    API_PRINCIPAL_SANDBOX,
};

/* Who is calling. Lives in the call's arena; borrowed by handlers until the
 * call ends. */
struct api_principal {
    enum api_principal_kind kind;
    const char *subject; /* user subject, or spiffe id for sandboxes */
    const char *display_name;
    const char *identity_provider; /* "mtls", "local_dev", "oidc", ... */
    const char *sandbox_id;        /* sandbox principals only */
    bool platform_admin;
};

/* TLS identity of a connection, handed to grpc_server_attach as conn_info. */
struct api_conn_identity {
    bool tls;
    bool client_verified;
    char client_cn[256];
    char client_ou[256];
};

/* One compute driver as reported by GetGatewayInfo. */
struct api_driver_info {
    const char *name;           /* configured, normalized: the driver_config key */
    const char *driver_name;    /* from GetCapabilities */
    const char *driver_version; /* from GetCapabilities */
};

struct store;
struct events_hub;
struct jwt_keys;

/* A platform credential exchange for IssueSandboxToken (upstream: a
 * Kubernetes projected service-account token checked with TokenReview).
 * |verify| gets the caller's bearer credential and calls |done| exactly
 * once, possibly later from the loop, with GRPC_STATUS_OK and the sandbox
 * id the credential is bound to, or an error status and message. */
typedef void (*api_exchange_done_cb)(void *arg, int status, const char *sandbox_id,
                                     const char *message);
struct api_token_exchange {
    void (*verify)(void *ctx, const char *credential, api_exchange_done_cb done, void *arg);
    void *ctx;
};

struct api_opts {
    const char *version;     /* gateway version string */
    struct store *store;     /* NULL: the store-backed services answer UNAVAILABLE */
    struct events_hub *hub;  /* lifecycle event fan-out (with |store|) */
    bool enable_diagnostics; /* register openshell.diag.v1.Diagnostics */
    bool mtls_user_auth;     /* verified client certificates name the user */
    /* Sandbox identity (semantics.md §15): the signing keys (borrowed, must
     * outlive the api; NULL = no sandbox principals: supervisor RPCs are
     * refused and CreateSandbox hands out no token), the issuer and
     * audience "openshell-gateway:<id>", and the token lifetime (0 =
     * never expires). */
    const struct jwt_keys *jwt;
    const char *jwt_issuer;
    uint64_t jwt_ttl_secs;
    uint64_t ssh_session_ttl_secs; /* CreateSshSession token lifetime, 0 = never expires */
    const struct api_token_exchange *token_exchange; /* NULL: IssueSandboxToken refused */
};

/* Creates the API and registers every method on |srv|. Caller owns, free
 * with api_free() after the server closed every call. Returns NULL when a
 * method path is registered twice (a programming error) or the embedded
 * descriptor set does not parse. */
struct api *api_new(struct event_base *base, struct grpc_server *srv, const struct api_opts *o);
void api_free(struct api *a);

/* Attaches the database and event hub once they exist (borrowed; both must
 * outlive every call). */
void api_set_backend(struct api *a, struct store *store, struct events_hub *hub);

/* Where clients reach the gateway, as CreateSshSession reports it: the
 * bind address as text, the bound port, and whether TLS is on (copied). */
void api_set_listener(struct api *a, const char *host, uint16_t port, bool tls);

/* Replaces the compute-driver snapshot shown by GetGatewayInfo (copied). */
void api_set_drivers(struct api *a, const struct api_driver_info *drivers, size_t n);

/* Attaches the compute driver (borrowed; must outlive every call and be
 * detached with api_compute_free() before it is stopped). CreateSandbox,
 * DeleteSandbox, StopSandbox and StartSandbox go through it. */
void api_set_driver(struct api *a, struct driver *d);
/* Driver callbacks for struct driver_opts (arg = the api): the snapshot of
 * GetGatewayInfo, observations applied to the store, reconciliation when
 * the watch stream (re)opens. */
void api_compute_on_driver_state(struct driver *d, enum driver_state st, const char *why,
                                 void *arg);
void api_compute_on_watch(struct driver *d, const Openshell__Compute__V1__WatchSandboxesEvent *ev,
                          void *arg);
void api_compute_on_watch_open(struct driver *d, void *arg);
/* Starts a reconciliation of store and driver now (coalesced with one in
 * progress); the gateway calls it when the database comes back. */
void api_compute_reconcile(struct api *a);
/* Graceful shutdown, before the driver and the store go: from now on
 * driver observations are not applied (records keep their intent), and
 * when the driver advertises gateway_manages_lifecycle its running
 * sandboxes are stopped (each StopSandbox bounded to 10 s); at the next
 * startup those whose record still means to run are started again. Calls
 * |done| once (possibly at once). */
void api_compute_shutdown(struct api *a, void (*done)(void *arg), void *arg);
/* Drops gates and timers; call once the store is closed (its callbacks ran). */
void api_compute_free(struct api *a);

/* Serving status reported by grpc.health.v1 (Check and Watch streams are
 * told about changes). The gateway sets NOT_SERVING when it starts to drain. */
void api_set_serving(struct api *a, bool serving);

/* Ends long-lived streams (health Watch, ...) with UNAVAILABLE, so a drain
 * does not wait for them. */
void api_end_streams(struct api *a);

/* The authenticated caller of |call|; never NULL inside a handler. */
const struct api_principal *api_call_principal(const struct grpc_call *call);

/* Counts for /metrics: live supervisor sessions, open relay channels and
 * live ForwardTcp calls. */
unsigned api_sessions_live(const struct api *a);
unsigned api_relays_open(const struct api *a);
unsigned api_forwards_live(const struct api *a);

#endif /* GW_API_H */
