/* The compute.v1 client: one HTTP/2 channel over the endpoint's Unix
 * socket, the startup handshake (GetCapabilities, then
 * GetGatewayListenerRequirements), unary calls with deadlines, the
 * WatchSandboxes stream, and reconnection. Knows nothing of how the
 * endpoint was acquired beyond the guard's "it went away". */
#include "drivers/driver_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/event.h>

#include "http2/grpc.h"
#include "reactor/reactor.h"

#define RETRY_MS           250   /* connect retry step (upstream: 250 ms) */
#define RETRY_MAX_MS       2000  /* after startup the step grows to this */
#define WATCH_REOPEN_MS    2000  /* upstream: watch re-opened 2 s after an error or end */
#define HANDSHAKE_TIMEOUT  10000 /* GetCapabilities deadline per attempt */
#define DEFAULT_TIMEOUT_MS 30000
#define SVC                "/openshell.compute.v1.ComputeDriver/"

static const struct {
    const char *path;
    const ProtobufCMessageDescriptor *resp;
} methods[] = {
    [DRIVER_GET_CAPABILITIES] = {SVC "GetCapabilities",
                                 &openshell__compute__v1__get_capabilities_response__descriptor},
    [DRIVER_VALIDATE_SANDBOX_CREATE] =
        {SVC "ValidateSandboxCreate",
         &openshell__compute__v1__validate_sandbox_create_response__descriptor},
    [DRIVER_GET_SANDBOX] = {SVC "GetSandbox",
                            &openshell__compute__v1__get_sandbox_response__descriptor},
    [DRIVER_LIST_SANDBOXES] = {SVC "ListSandboxes",
                               &openshell__compute__v1__list_sandboxes_response__descriptor},
    [DRIVER_CREATE_SANDBOX] = {SVC "CreateSandbox",
                               &openshell__compute__v1__create_sandbox_response__descriptor},
    [DRIVER_STOP_SANDBOX] = {SVC "StopSandbox",
                             &openshell__compute__v1__stop_sandbox_response__descriptor},
    [DRIVER_START_SANDBOX] = {SVC "StartSandbox",
                              &openshell__compute__v1__start_sandbox_response__descriptor},
    [DRIVER_DELETE_SANDBOX] = {SVC "DeleteSandbox",
                               &openshell__compute__v1__delete_sandbox_response__descriptor},
    [DRIVER_ENSURE_WORKSPACE] = {SVC "EnsureWorkspace",
                                 &openshell__compute__v1__ensure_workspace_response__descriptor},
    [DRIVER_DELETE_WORKSPACE] = {SVC "DeleteWorkspace",
                                 &openshell__compute__v1__delete_workspace_response__descriptor},
    [DRIVER_GET_LISTENER_REQUIREMENTS] =
        {SVC "GetGatewayListenerRequirements",
         &openshell__compute__v1__get_gateway_listener_requirements_response__descriptor},
};

struct driver_call {
    struct driver *d;
    struct grpc_ccall *cc; /* NULL when failed before starting */
    enum driver_method m;
    driver_reply_cb cb;
    void *arg;
    uint8_t *resp; /* packed copy of the response message */
    size_t resp_len;
    bool have_resp;
    bool cancelled;
    struct driver_call *next, *prev; /* calls waiting for a deferred failure */
};

struct driver {
    struct reactor *r;
    struct driver_plan plan;
    struct driver_opts opts; /* plan pointer not kept */
    struct driver_guard *guard;
    enum driver_state state;
    struct grpc_channel *ch;
    struct grpc_ccall *watch;
    struct driver_call *handshake;
    struct reactor_timer *retry;
    struct reactor_timer *watch_timer;
    struct reactor_timer *fail_timer; /* runs deferred failures */
    struct driver_call *deferred;     /* calls failed before they started */
    uint64_t started_us;
    unsigned retry_ms;
    unsigned generation;
    bool connect_pending;
    bool stopping;
    bool in_stop; /* inside driver_stop(): do not free yet */
    char last_error[512];
    char *adv_name, *adv_version, *default_image;
    bool manages_lifecycle;
    uint64_t calls[DRIVER_METHOD_COUNT][GRPC_STATUS_UNAUTHENTICATED + 1]; /* by status */
    void (*stop_done)(void *arg);
    void *stop_arg;
    unsigned stop_grace_ms;
    bool guard_stopped;
};

static void try_connect(struct driver *d);
static void set_state(struct driver *d, enum driver_state st, const char *why);
static void maybe_finish_stop(struct driver *d);

/* ---- calls -------------------------------------------------------------------- */

/* Counts a finished call for driver_call_count(). */
static void count_call(struct driver *d, enum driver_method m, int status)
{
    if (status < 0 || status > GRPC_STATUS_UNAUTHENTICATED)
        status = GRPC_STATUS_UNKNOWN;
    d->calls[m][status]++;
}

static void call_free(struct driver_call *c)
{
    free(c->resp);
    free(c);
}

static void call_on_msg(struct grpc_ccall *cc, void *msg, void *arg)
{
    struct driver_call *c = arg;
    const ProtobufCMessage *m = msg;
    if (c->have_resp)
        return; /* unary: a second message is ignored; the status decides */
    c->resp_len = protobuf_c_message_get_packed_size(m);
    c->resp = gw_xmalloc(c->resp_len ? c->resp_len : 1);
    protobuf_c_message_pack(m, c->resp);
    c->have_resp = true;
}

static void call_on_done(struct grpc_ccall *cc, int status, const char *message, void *arg)
{
    struct driver_call *c = arg;
    ProtobufCMessage *resp = NULL;

    if (status == GRPC_STATUS_OK) {
        if (c->have_resp)
            resp = protobuf_c_message_unpack(methods[c->m].resp, NULL, c->resp_len, c->resp);
        if (resp == NULL) {
            status = GRPC_STATUS_INTERNAL;
            message = "compute driver answered without a valid response message";
        }
    }
    count_call(c->d, c->m, status);
    c->cb(status, message, status == GRPC_STATUS_OK ? resp : NULL, c->arg);
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    call_free(c);
}

static void run_deferred(struct reactor_timer *t, void *arg)
{
    struct driver *d = arg;
    while (d->deferred != NULL) {
        struct driver_call *c = d->deferred;
        d->deferred = c->next;
        if (d->deferred != NULL)
            d->deferred->prev = NULL;
        count_call(d, c->m, c->cancelled ? GRPC_STATUS_CANCELLED : GRPC_STATUS_UNAVAILABLE);
        if (!c->cancelled) {
            char msg[160];
            snprintf(msg, sizeof(msg), "compute driver '%s' is not connected", d->plan.name);
            c->cb(GRPC_STATUS_UNAVAILABLE, msg, NULL, c->arg);
        }
        call_free(c);
    }
}

struct driver_call *driver_call(struct driver *d, enum driver_method m, const ProtobufCMessage *req,
                                uint32_t timeout_ms, driver_reply_cb cb, void *arg)
{
    struct driver_call *c = gw_xcalloc(1, sizeof(*c));
    c->d = d;
    c->m = m;
    c->cb = cb;
    c->arg = arg;
    bool usable = d->ch != NULL && !d->stopping &&
                  (d->state == DRIVER_READY || m == DRIVER_GET_CAPABILITIES ||
                   m == DRIVER_GET_LISTENER_REQUIREMENTS);
    if (usable) {
        c->cc = grpc_channel_unary(d->ch, methods[m].path, req, methods[m].resp, NULL,
                                   timeout_ms ? timeout_ms : d->opts.call_timeout_ms, call_on_msg,
                                   call_on_done, c);
    }
    if (c->cc == NULL) {
        c->next = d->deferred;
        if (d->deferred != NULL)
            d->deferred->prev = c;
        d->deferred = c;
        reactor_timer_arm(d->fail_timer, 0);
    }
    return c;
}

void driver_call_cancel(struct driver_call *c)
{
    if (c->cc != NULL) {
        count_call(c->d, c->m, GRPC_STATUS_CANCELLED);
        grpc_ccall_cancel(c->cc);
        call_free(c);
        return;
    }
    c->cancelled = true; /* freed by run_deferred */
}

const char *driver_method_path(enum driver_method m)
{
    GW_ASSERT(m < DRIVER_METHOD_COUNT);
    return methods[m].path;
}

uint64_t driver_call_count(const struct driver *d, enum driver_method m, int status)
{
    GW_ASSERT(m < DRIVER_METHOD_COUNT);
    if (status < 0 || status > GRPC_STATUS_UNAUTHENTICATED)
        return 0;
    return d->calls[m][status];
}

/* ---- the watch stream ------------------------------------------------------- */

static void watch_on_msg(struct grpc_ccall *cc, void *msg, void *arg)
{
    struct driver *d = arg;
    if (d->opts.on_watch != NULL)
        d->opts.on_watch(d, msg, d->opts.arg);
}

static void watch_on_done(struct grpc_ccall *cc, int status, const char *message, void *arg)
{
    struct driver *d = arg;
    d->watch = NULL;
    if (d->stopping || d->ch == NULL || d->state != DRIVER_READY)
        return;
    log_warn("driver.watch_ended", LF_STR("name", d->plan.name),
             LF_STR("status", grpc_status_name(status)), LF_STR("message", message ? message : ""),
             LF_UINT("reopen_in_ms", WATCH_REOPEN_MS));
    reactor_timer_arm(d->watch_timer, WATCH_REOPEN_MS);
}

static void watch_open(struct driver *d)
{
    Openshell__Compute__V1__WatchSandboxesRequest req =
        OPENSHELL__COMPUTE__V1__WATCH_SANDBOXES_REQUEST__INIT;
    if (d->ch == NULL || d->watch != NULL || d->stopping)
        return;
    d->watch = grpc_channel_unary(d->ch, SVC "WatchSandboxes", &req.base,
                                  &openshell__compute__v1__watch_sandboxes_event__descriptor, NULL,
                                  0, watch_on_msg, watch_on_done, d);
    if (d->watch == NULL)
        return;
    log_debug("driver.watch_open", LF_STR("name", d->plan.name));
    if (d->opts.on_watch_open != NULL)
        d->opts.on_watch_open(d, d->opts.arg);
}

static void on_watch_timer(struct reactor_timer *t, void *arg)
{
    struct driver *d = arg;
    if (d->state == DRIVER_READY)
        watch_open(d);
}

/* ---- connection and handshake ----------------------------------------------- */

static bool startup_expired(const struct driver *d)
{
    return d->generation == 0 &&
           gw_now_mono_us() - d->started_us >= (uint64_t)d->opts.connect_timeout_ms * 1000;
}

static void fail_startup(struct driver *d, const char *why)
{
    if (d->state == DRIVER_FAILED)
        return;
    log_error("driver.failed", LF_STR("name", d->plan.name), LF_STR("socket", d->plan.socket_path),
              LF_STR("error", why));
    set_state(d, DRIVER_FAILED, why);
}

static void schedule_retry(struct driver *d)
{
    if (d->stopping || d->state == DRIVER_FAILED)
        return;
    if (startup_expired(d)) {
        char why[1024];
        snprintf(why, sizeof(why), "compute driver '%s' unreachable at %s after %u ms: %s",
                 d->plan.name, d->plan.socket_path, d->opts.connect_timeout_ms, d->last_error);
        fail_startup(d, why);
        return;
    }
    reactor_timer_arm(d->retry, d->retry_ms);
    if (d->generation > 0 && d->retry_ms < RETRY_MAX_MS)
        d->retry_ms *= 2;
}

static void set_state(struct driver *d, enum driver_state st, const char *why)
{
    if (d->state == st)
        return;
    d->state = st;
    if (d->opts.on_state != NULL)
        d->opts.on_state(d, st, why, d->opts.arg);
}

static void drop_channel(struct driver *d, const char *why)
{
    if (d->ch != NULL) {
        struct grpc_channel *ch = d->ch;
        d->ch = NULL; /* on_close sees it is no longer ours */
        grpc_channel_close(ch);
    }
    if (d->state == DRIVER_READY) {
        log_warn("driver.down", LF_STR("name", d->plan.name), LF_STR("reason", why));
        set_state(d, DRIVER_CONNECTING, why);
    }
    if (!d->connect_pending && !reactor_timer_armed(d->retry))
        schedule_retry(d);
}

static void on_channel_close(struct grpc_channel *ch, void *arg)
{
    struct driver *d = arg;
    if (d->ch == ch) {
        d->ch = NULL;
        snprintf(d->last_error, sizeof(d->last_error), "connection closed");
        if (d->state == DRIVER_READY) {
            log_warn("driver.down", LF_STR("name", d->plan.name),
                     LF_STR("reason", "connection closed"));
            set_state(d, DRIVER_CONNECTING, "connection closed");
        }
        schedule_retry(d);
    }
    maybe_finish_stop(d);
}

static void on_listener_reqs(int status, const char *message, const ProtobufCMessage *resp,
                             void *arg)
{
    struct driver *d = arg;
    if (d->stopping || d->ch == NULL)
        return;
    if (status == GRPC_STATUS_OK) {
        const Openshell__Compute__V1__GetGatewayListenerRequirementsResponse *r =
            (const void *)resp;
        for (size_t i = 0; i < r->n_requirements; i++)
            log_warn(
                "driver.listener_requirement_ignored", LF_STR("name", d->plan.name),
                LF_STR("reason", r->requirements[i]->reason ? r->requirements[i]->reason : ""));
    } else if (status != GRPC_STATUS_UNIMPLEMENTED) {
        log_warn("driver.listener_requirements_failed", LF_STR("name", d->plan.name),
                 LF_STR("status", grpc_status_name(status)),
                 LF_STR("message", message ? message : ""));
    }
}

static void on_capabilities(int status, const char *message, const ProtobufCMessage *resp,
                            void *arg)
{
    struct driver *d = arg;
    d->handshake = NULL;
    if (d->stopping || d->ch == NULL)
        return;
    if (status != GRPC_STATUS_OK) {
        snprintf(d->last_error, sizeof(d->last_error), "GetCapabilities: %s: %s",
                 grpc_status_name(status), message ? message : "");
        if (status != GRPC_STATUS_UNAVAILABLE && status != GRPC_STATUS_DEADLINE_EXCEEDED &&
            d->generation == 0) {
            char why[1024];
            snprintf(why, sizeof(why), "compute driver '%s' at %s failed GetCapabilities: %s",
                     d->plan.name, d->plan.socket_path, d->last_error);
            fail_startup(d, why);
            return;
        }
        drop_channel(d, d->last_error);
        return;
    }
    const Openshell__Compute__V1__GetCapabilitiesResponse *caps = (const void *)resp;
    const char *adv = caps->driver_name ? caps->driver_name : "";
    if (strcmp(adv, d->plan.name) != 0 && !d->opts.allow_name_mismatch) {
        char why[1024];
        snprintf(why, sizeof(why),
                 "compute driver at %s reports name '%s' but is configured as '%s': name "
                 "mismatch (use --allow-driver-name-mismatch to accept it)",
                 d->plan.socket_path, adv, d->plan.name);
        if (d->generation == 0) {
            fail_startup(d, why);
            return;
        }
        snprintf(d->last_error, sizeof(d->last_error), "%.500s", why);
        log_error("driver.name_mismatch", LF_STR("name", d->plan.name), LF_STR("driver_name", adv));
        drop_channel(d, why);
        return;
    }
    free(d->adv_name);
    free(d->adv_version);
    free(d->default_image);
    d->adv_name = gw_xstrdup(adv);
    d->adv_version = gw_xstrdup(caps->driver_version ? caps->driver_version : "");
    d->default_image = gw_xstrdup(caps->default_image ? caps->default_image : "");
    d->manages_lifecycle = caps->gateway_manages_lifecycle;
    d->generation++;
    d->retry_ms = RETRY_MS;
    log_info("driver.ready", LF_STR("name", d->plan.name), LF_STR("driver_name", d->adv_name),
             LF_STR("driver_version", d->adv_version), LF_STR("socket", d->plan.socket_path),
             LF_BOOL("managed", d->plan.managed), LF_STR("default_image", d->default_image),
             LF_BOOL("manages_lifecycle", d->manages_lifecycle),
             LF_UINT("generation", d->generation));

    Openshell__Compute__V1__GetGatewayListenerRequirementsRequest lr =
        OPENSHELL__COMPUTE__V1__GET_GATEWAY_LISTENER_REQUIREMENTS_REQUEST__INIT;
    (void)driver_call(d, DRIVER_GET_LISTENER_REQUIREMENTS, &lr.base, HANDSHAKE_TIMEOUT,
                      on_listener_reqs, d);
    set_state(d, DRIVER_READY, NULL);
    if (d->state == DRIVER_READY && !d->stopping)
        watch_open(d);
}

static void on_connected(struct bufferevent *bev, const struct reactor_peer *peer, const char *err,
                         void *arg)
{
    struct driver *d = arg;
    d->connect_pending = false;
    if (d->stopping) {
        if (bev != NULL)
            bufferevent_free(bev);
        maybe_finish_stop(d);
        return;
    }
    if (bev == NULL) {
        snprintf(d->last_error, sizeof(d->last_error), "%s", err ? err : "connect failed");
        schedule_retry(d);
        return;
    }
    struct grpc_channel_opts co = {
        .authority = "localhost",
        .scheme = "http",
        .max_recv_msg_bytes = 64u << 20,
        .keepalive_ms = 30000,
        .on_close = on_channel_close,
        .arg = d,
    };
    d->ch = grpc_channel_new(reactor_base(d->r), bev, &co);
    if (d->ch == NULL) {
        snprintf(d->last_error, sizeof(d->last_error), "HTTP/2 session setup failed");
        schedule_retry(d);
        return;
    }
    Openshell__Compute__V1__GetCapabilitiesRequest req =
        OPENSHELL__COMPUTE__V1__GET_CAPABILITIES_REQUEST__INIT;
    d->handshake =
        driver_call(d, DRIVER_GET_CAPABILITIES, &req.base, HANDSHAKE_TIMEOUT, on_capabilities, d);
}

static void try_connect(struct driver *d)
{
    if (d->stopping || d->ch != NULL || d->connect_pending || d->state == DRIVER_FAILED)
        return;
    if (reactor_connect_unix(d->r, d->plan.socket_path, on_connected, d) != 0) {
        snprintf(d->last_error, sizeof(d->last_error), "cannot connect to %s", d->plan.socket_path);
        schedule_retry(d);
        return;
    }
    d->connect_pending = true;
}

static void on_retry(struct reactor_timer *t, void *arg)
{
    try_connect(arg);
}

/* The managed process ended: the endpoint is gone until the guard has
 * started it again; reconnecting begins now (the socket refuses until the
 * new process listens). */
static void on_guard_exit(void *arg, const char *why)
{
    struct driver *d = arg;
    snprintf(d->last_error, sizeof(d->last_error), "driver process %s", why);
    drop_channel(d, d->last_error);
}

/* ---- lifecycle ---------------------------------------------------------------- */

struct driver *driver_new(const struct driver_opts *o)
{
    struct driver *d = gw_xcalloc(1, sizeof(*d));
    const struct driver_plan *p = o->plan;
    d->r = o->reactor;
    d->opts = *o;
    d->opts.plan = NULL;
    d->opts.extra_args = NULL;
    d->opts.gateway_endpoint = NULL;
    if (d->opts.connect_timeout_ms == 0)
        d->opts.connect_timeout_ms = 30000;
    if (d->opts.call_timeout_ms == 0)
        d->opts.call_timeout_ms = DEFAULT_TIMEOUT_MS;
    d->plan.name = gw_xstrdup(p->name);
    d->plan.socket_path = gw_xstrdup(p->socket_path);
    d->plan.managed = p->managed;
    d->adv_name = gw_xstrdup("");
    d->adv_version = gw_xstrdup("");
    d->default_image = gw_xstrdup("");
    d->retry_ms = RETRY_MS;
    d->started_us = gw_now_mono_us();
    snprintf(d->last_error, sizeof(d->last_error), "not tried yet");
    d->retry = reactor_timer_new(d->r, on_retry, d);
    d->watch_timer = reactor_timer_new(d->r, on_watch_timer, d);
    d->fail_timer = reactor_timer_new(d->r, run_deferred, d);
    log_info("driver.configured", LF_STR("name", p->name), LF_STR("socket", p->socket_path),
             LF_BOOL("managed", p->managed));
    if (p->managed) {
        d->guard = driver_guard_new(d->r, p, o->gateway_endpoint, o->extra_args, on_guard_exit, d);
        /* The process needs a moment to listen: first attempt after one step. */
        reactor_timer_arm(d->retry, RETRY_MS / 5);
    } else {
        try_connect(d);
    }
    return d;
}

static void driver_free(struct driver *d)
{
    reactor_timer_free(d->retry);
    reactor_timer_free(d->watch_timer);
    reactor_timer_free(d->fail_timer);
    driver_plan_clear(&d->plan);
    free(d->adv_name);
    free(d->adv_version);
    free(d->default_image);
    free(d);
}

static void on_guard_stopped(void *arg)
{
    struct driver *d = arg;
    d->guard = NULL;
    d->guard_stopped = true;
    maybe_finish_stop(d);
}

static void maybe_finish_stop(struct driver *d)
{
    if (!d->stopping || d->in_stop || d->ch != NULL || d->connect_pending)
        return;
    if (d->guard != NULL) {
        if (!d->guard_stopped) {
            struct driver_guard *g = d->guard;
            d->guard_stopped = true; /* stop requested once */
            driver_guard_stop(g, d->stop_grace_ms, on_guard_stopped, d);
        }
        return;
    }
    run_deferred(NULL, d);
    d->state = DRIVER_STOPPED;
    void (*done)(void *) = d->stop_done;
    void *done_arg = d->stop_arg;
    driver_free(d);
    if (done != NULL)
        done(done_arg);
}

void driver_stop(struct driver *d, unsigned grace_ms, void (*done)(void *arg), void *arg)
{
    if (d->stopping)
        return;
    d->stopping = true;
    d->stop_done = done;
    d->stop_arg = arg;
    d->stop_grace_ms = grace_ms;
    d->in_stop = true; /* closing the channel calls back into maybe_finish_stop */
    reactor_timer_disarm(d->retry);
    reactor_timer_disarm(d->watch_timer);
    if (d->watch != NULL) {
        grpc_ccall_cancel(d->watch);
        d->watch = NULL;
    }
    if (d->ch != NULL) {
        struct grpc_channel *ch = d->ch;
        d->ch = NULL;
        grpc_channel_close(ch); /* pending calls end UNAVAILABLE; on_close follows */
    }
    d->in_stop = false;
    maybe_finish_stop(d);
}

enum driver_state driver_state(const struct driver *d)
{
    return d->state;
}

const char *driver_name(const struct driver *d)
{
    return d->plan.name;
}

const char *driver_socket_path(const struct driver *d)
{
    return d->plan.socket_path;
}

bool driver_managed(const struct driver *d)
{
    return d->plan.managed;
}

const char *driver_advertised_name(const struct driver *d)
{
    return d->adv_name;
}

const char *driver_version(const struct driver *d)
{
    return d->adv_version;
}

const char *driver_default_image(const struct driver *d)
{
    return d->default_image;
}

bool driver_manages_lifecycle(const struct driver *d)
{
    return d->manages_lifecycle;
}

unsigned driver_generation(const struct driver *d)
{
    return d->generation;
}

int driver_pid(const struct driver *d)
{
    return d->guard != NULL && !d->guard_stopped ? driver_guard_pid(d->guard) : 0;
}
