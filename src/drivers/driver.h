/*
 * drivers: compute drivers as named endpoints, and the one compute.v1
 * client the gateway uses for all of them.
 *
 * Acquisition and consumption are separate. Acquisition turns the
 * configuration into a *named endpoint*: a driver name, a Unix socket path
 * and, for a managed driver, a lifecycle guard (the driver process the
 * gateway spawned, restarts with backoff and removes on shutdown). There
 * are two ways to acquire one:
 *
 *   managed  an in-tree driver selected by its reserved name (`process`):
 *            the gateway creates the socket path under its state dir and
 *            runs the driver program;
 *   remote   an operator-owned driver: `--drivers NAME` with
 *            `--compute-driver-socket PATH`, or `[openshell.drivers.NAME]
 *            socket_path`. The gateway never starts, restarts or removes it.
 *
 * Consumption (struct driver: connect, GetCapabilities, calls, the
 * WatchSandboxes stream, reconnection) never knows which way the endpoint
 * was acquired: the guard only tells it "the endpoint went away / is back".
 */
#ifndef GW_DRIVERS_H
#define GW_DRIVERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"
#include "compute_driver.pb-c.h"

struct config;
struct reactor;
struct driver;

/* ---- names (driver_names.c) ------------------------------------------------- */

/* Built-in names: upstream's (kubernetes, docker, podman, vm) and ours
 * (process). A reserved name can never be served by an unmanaged socket. */
bool driver_name_reserved(const char *name);
/* Built-in drivers this binary ships (can run managed). */
bool driver_name_shipped(const char *name);
/* "process": for error messages. */
const char *driver_shipped_names(void);

/* ---- acquisition ------------------------------------------------------------ */

#define DRIVER_NAME_MAX 64

/* A resolved endpoint plan: what to connect to, and for a managed driver
 * what to run. Strings are owned (driver_plan_clear). */
struct driver_plan {
    char *name;        /* normalized configured name: routes calls, keys driver_config */
    char *socket_path; /* Unix socket to dial */
    bool managed;
    /* managed only */
    char *program;    /* driver program */
    char *state_dir;  /* the driver's own state directory */
    char *supervisor; /* NULL: the driver's default */
    char *rootfs;     /* NULL: host / */
    bool allow_host_network;
};

/* Applies the selection rules to |c| (one driver; default `process`):
 * reserved names cannot take an unmanaged socket; a socket needs a name; a
 * non-reserved name needs a socket; a built-in name this binary does not
 * ship is refused, naming the ones it ships. |self_dir| is the directory of
 * the gateway binary (managed programs are looked up there). Returns 0, or
 * -1 with a one-line reason in |err|. */
int driver_plan_resolve(const struct config *c, const char *self_dir, struct driver_plan *out,
                        char *err, size_t errlen);
void driver_plan_clear(struct driver_plan *p);

/* ---- the driver (consumption) ---------------------------------------------- */

enum driver_state {
    DRIVER_CONNECTING = 0, /* no usable channel yet (or reconnecting) */
    DRIVER_READY,          /* connected and GetCapabilities answered */
    DRIVER_FAILED,         /* startup could not reach it in time: fatal */
    DRIVER_STOPPED,        /* driver_stop() finished */
};

struct driver_opts {
    const struct driver_plan *plan; /* copied */
    struct reactor *reactor;
    uint32_t connect_timeout_ms;   /* startup budget (first READY), 0 = 30000 */
    uint32_t call_timeout_ms;      /* default deadline of unary calls, 0 = 30000 */
    bool allow_name_mismatch;      /* advertised name may differ from the configured one */
    const char *gateway_endpoint;  /* handed to a managed driver (may be NULL) */
    const char *const *extra_args; /* appended to a managed driver's argv (NULL-terminated) */

    /* State changes. READY runs after every (re)connect once
     * GetCapabilities answered; CONNECTING when the channel is lost; FAILED
     * once when startup fails, with the reason. */
    void (*on_state)(struct driver *d, enum driver_state st, const char *why, void *arg);
    /* One WatchSandboxes message; |ev| is borrowed until return. */
    void (*on_watch)(struct driver *d, const Openshell__Compute__V1__WatchSandboxesEvent *ev,
                     void *arg);
    /* The watch stream (re)opened: messages from before may have been lost,
     * the consumer should reconcile (ListSandboxes). */
    void (*on_watch_open)(struct driver *d, void *arg);
    void *arg;
};

/* Creates the driver and starts acquiring it (spawn when managed) and
 * connecting. Never NULL. */
struct driver *driver_new(const struct driver_opts *o);
/* Shutdown: ends the watch, closes the channel, and for a managed driver
 * sends SIGTERM (SIGKILL after |grace_ms|), waits for it and removes its
 * socket; then calls |done| (from the loop) and frees |d|. Outstanding
 * calls end with UNAVAILABLE before |done|. */
void driver_stop(struct driver *d, unsigned grace_ms, void (*done)(void *arg), void *arg);

enum driver_state driver_state(const struct driver *d);
const char *driver_name(const struct driver *d);
const char *driver_socket_path(const struct driver *d);
bool driver_managed(const struct driver *d);
/* From the last GetCapabilities; "" before the first. */
const char *driver_advertised_name(const struct driver *d);
const char *driver_version(const struct driver *d);
const char *driver_default_image(const struct driver *d);
bool driver_manages_lifecycle(const struct driver *d);
/* Times the endpoint became READY (1 after startup). */
unsigned driver_generation(const struct driver *d);
/* Pid of a managed driver process, 0 when none runs. */
int driver_pid(const struct driver *d);

/* ---- calls ------------------------------------------------------------------ */

enum driver_method {
    DRIVER_GET_CAPABILITIES,
    DRIVER_VALIDATE_SANDBOX_CREATE,
    DRIVER_GET_SANDBOX,
    DRIVER_LIST_SANDBOXES,
    DRIVER_CREATE_SANDBOX,
    DRIVER_STOP_SANDBOX,
    DRIVER_START_SANDBOX,
    DRIVER_DELETE_SANDBOX,
    DRIVER_ENSURE_WORKSPACE,
    DRIVER_DELETE_WORKSPACE,
    DRIVER_GET_LISTENER_REQUIREMENTS,
    DRIVER_METHOD_COUNT /* not a method: the number of them */
};

struct driver_call;

/* Result of one unary call, called exactly once (never from inside
 * driver_call()). |resp| is the decoded response on OK (borrowed until the
 * callback returns), NULL otherwise. When the driver is not READY the call
 * fails with UNAVAILABLE "compute driver '<name>' is not connected". */
typedef void (*driver_reply_cb)(int status, const char *message, const ProtobufCMessage *resp,
                                void *arg);

/* Starts |m| with |req|; |timeout_ms| 0 = the driver's default deadline.
 * Returns a handle for driver_call_cancel (valid until the callback ran). */
struct driver_call *driver_call(struct driver *d, enum driver_method m, const ProtobufCMessage *req,
                                uint32_t timeout_ms, driver_reply_cb cb, void *arg);
/* Abandons the call: the callback will not run. */
void driver_call_cancel(struct driver_call *c);

/* compute.v1 path of |m|, e.g. "/openshell.compute.v1.ComputeDriver/CreateSandbox". */
const char *driver_method_path(enum driver_method m);
/* Calls of |m| made through |d| that ended with gRPC |status| (0..16),
 * including the ones failed locally (not connected: UNAVAILABLE) and the
 * ones abandoned with driver_call_cancel() (CANCELLED). For /metrics. */
uint64_t driver_call_count(const struct driver *d, enum driver_method m, int status);

#endif /* GW_DRIVERS_H */
