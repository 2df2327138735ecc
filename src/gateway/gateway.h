/*
 * gateway: the openshell-gateway program: wires config, reactor, the gRPC
 * server and the API together, owns startup, reload and graceful shutdown.
 */
#ifndef GW_GATEWAY_H
#define GW_GATEWAY_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "base/base.h"

struct event_base;
struct gateway_http;
struct grpc_method;
struct api;
struct store;
struct events_hub;
struct driver;

/* What the plain-HTTP listeners report. */
struct gateway_http_status {
    bool serving;          /* false while starting or draining */
    unsigned connections;  /* open gRPC connections */
    unsigned active_calls; /* gRPC calls in flight */
    uint64_t calls_total;  /* calls started since boot */
    /* Read by /metrics at scrape time; each NULL while not running. */
    const struct api *api;
    const struct store *store;
    const struct events_hub *hub;
    const struct driver *driver;
};

typedef void (*gateway_http_status_fn)(struct gateway_http_status *out, void *arg);

/* Serves GET /healthz, /health (200 while the process runs), /readyz (200
 * only while serving) and, when |metrics| is true, GET /metrics in the
 * Prometheus text format, on numeric |addr|:|port| (plain HTTP/1.1).
 * Returns NULL and logs on failure. Caller owns, free with
 * gateway_http_free(). */
struct gateway_http *gateway_http_new(struct event_base *base, const char *addr, uint16_t port,
                                      bool metrics, gateway_http_status_fn fn, void *arg);
uint16_t gateway_http_port(const struct gateway_http *h);
void gateway_http_free(struct gateway_http *h);
/* A grpc_call_observer for the main gRPC server: counts one finished call
 * into the /metrics listener |arg| (created with |metrics| true). Clear the
 * observer before freeing that listener. */
void gateway_http_observe_call(const struct grpc_method *m, int status, uint64_t dur_us, void *arg);

/* ---- generate-certs: the local TLS bundle (gateway_certs.c) ---------------------------- */

#define GATEWAY_CERTS_ERR_USAGE   (-1) /* bad option value (SAN, days, empty directory) */
#define GATEWAY_CERTS_ERR_PARTIAL (-2) /* some bundle files exist, others do not */
#define GATEWAY_CERTS_ERR_IO      (-3) /* a directory or file could not be made or written */
#define GATEWAY_CERTS_ERR_CRYPTO  (-4) /* OpenSSL failed to make a key or certificate */

struct gateway_certs_opts {
    const char *dir;         /* bundle directory, created (0700) with its parents */
    const char *const *sans; /* extra server names: IP literals or DNS names */
    size_t n_sans;           /* entries in |sans|, at most 64 */
    unsigned days;           /* validity of every certificate, 1..36500 */
    const char *client_cn;   /* client certificate CN; NULL: "openshell-admin" */
};

enum gateway_certs_outcome {
    GATEWAY_CERTS_CREATED, /* nothing was there: the whole bundle was written */
    GATEWAY_CERTS_PRESENT, /* every file was there: nothing was touched */
};

/* Makes the local bundle under |o->dir| (layout in config.h,
 * config_local_tls_dir()): a CA (ca.crt, ca.key), a server certificate for
 * localhost, 127.0.0.1, ::1 and |o->sans|, a client certificate, all EC
 * P-256 and issued by the CA, and the sandbox-token key set (jwt_keys_load).
 * Private keys are 0600, directories made here 0700, files appear
 * atomically. Idempotent: all files present -> PRESENT without touching
 * them; none -> CREATED; some -> GATEWAY_CERTS_ERR_PARTIAL naming the
 * present and missing files. A failed run removes what it wrote. Returns 0
 * and sets |*outcome|, or a negative GATEWAY_CERTS_ERR_* with a one-line
 * reason in |err|. */
int gateway_certs_generate(const struct gateway_certs_opts *o, enum gateway_certs_outcome *outcome,
                           char *err, size_t errlen) GW_MUSTCHECK;

/* `openshell-gateway generate-certs [--output-dir DIR] [--san NAME]...
 * [--days N]`: |argv[0]| is "generate-certs". Reports to |out|, errors to
 * |errout|. Returns the exit code: 0 written or already present, 1 partial
 * bundle or failure, 2 usage error. */
int gateway_certs_main(int argc, char **argv, FILE *out, FILE *errout);

#endif /* GW_GATEWAY_H */
