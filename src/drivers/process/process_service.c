/* openshell.compute.v1.ComputeDriver for the process driver: the twelve
 * methods and the WatchSandboxes fan-out with bounded per-watcher queues. */
#include "drivers/process/process.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "http2/grpc.h"
#include "reactor/reactor.h"

/* A watcher that falls this far behind (beyond what the call itself
 * buffers) is cut off with RESOURCE_EXHAUSTED instead of growing. */
#define WATCH_MAX_QUEUED       4096
#define WATCH_MAX_QUEUED_BYTES (16u << 20)

#define PFX "/openshell.compute.v1.ComputeDriver/"

struct qmsg {
    struct qmsg *next;
    size_t len;
    uint8_t data[];
};

struct process_watcher {
    struct grpc_call *call;
    struct process_driver *d;
    struct process_watcher *prev, *next;
    struct qmsg *head, *tail; /* waiting for on_writable */
    size_t n_queued, bytes_queued;
};

static struct process_driver *driver_of(struct grpc_call *call)
{
    return grpc_call_method_arg(call);
}

/* ---- watchers --------------------------------------------------------------------- */

static void watcher_free(struct process_watcher *w)
{
    struct process_driver *d = w->d;

    if (w->prev)
        w->prev->next = w->next;
    else
        d->watchers = w->next;
    if (w->next)
        w->next->prev = w->prev;
    while (w->head != NULL) {
        struct qmsg *m = w->head;
        w->head = m->next;
        free(m);
    }
    grpc_call_set_user(w->call, NULL);
    free(w);
}

/* Ends a watcher whose call is still open. */
static void watcher_finish(struct process_watcher *w, int status, const char *msg)
{
    struct grpc_call *call = w->call;

    watcher_free(w);
    grpc_call_finish(call, status, msg);
}

/* Handles a negative grpc_call_send_raw() result; the watcher is gone. */
static void watcher_send_failed(struct process_watcher *w, int rv)
{
    if (rv == GRPC_ERR_TOOBIG) {
        watcher_finish(w, GRPC_STATUS_INTERNAL, "event larger than the message limit");
        return;
    }
    /* GRPC_ERR_OVERRUN finished the call; GRPC_ERR_CLOSED means it is over. */
    watcher_free(w);
}

/* Sends or queues one event. Returns false when the watcher ended (and
 * was freed). */
static bool watcher_push(struct process_watcher *w, const uint8_t *data, size_t len)
{
    struct qmsg *m;
    int rv;

    if (w->head == NULL && !grpc_call_congested(w->call)) {
        rv = grpc_call_send_raw(w->call, data, len);
        if (rv < 0) {
            watcher_send_failed(w, rv);
            return false;
        }
        return true; /* GRPC_SEND_FULL: queued by the call; later ones wait here */
    }
    if (w->n_queued >= WATCH_MAX_QUEUED || w->bytes_queued + len > WATCH_MAX_QUEUED_BYTES) {
        log_warn("process.watch_overflow", LF_STR("peer", grpc_call_peer(w->call)),
                 LF_UINT("queued", w->n_queued));
        watcher_finish(w, GRPC_STATUS_RESOURCE_EXHAUSTED,
                       "watch stream fell too far behind; re-open it");
        return false;
    }
    m = gw_xmalloc(sizeof(*m) + len);
    m->next = NULL;
    m->len = len;
    memcpy(m->data, data, len);
    if (w->tail)
        w->tail->next = m;
    else
        w->head = m;
    w->tail = m;
    w->n_queued++;
    w->bytes_queued += len;
    return true;
}

static void watch_writable(struct grpc_call *call)
{
    struct process_watcher *w = grpc_call_user(call);

    while (w != NULL && w->head != NULL) {
        struct qmsg *m = w->head;
        int rv = grpc_call_send_raw(call, m->data, m->len);
        w->head = m->next;
        if (w->head == NULL)
            w->tail = NULL;
        w->n_queued--;
        w->bytes_queued -= m->len;
        free(m);
        if (rv < 0) {
            watcher_send_failed(w, rv);
            return;
        }
        if (rv == GRPC_SEND_FULL)
            return;
    }
}

static void watch_cancel(struct grpc_call *call)
{
    struct process_watcher *w = grpc_call_user(call);

    if (w != NULL)
        watcher_free(w);
}

/* To every watcher, or to |only|. Returns false when |only| ended. */
static bool emit_event(struct process_driver *d,
                       const Openshell__Compute__V1__WatchSandboxesEvent *ev,
                       struct process_watcher *only)
{
    bool alive = true;
    size_t len;
    uint8_t *buf;

    if (d->watchers == NULL)
        return true;
    len = openshell__compute__v1__watch_sandboxes_event__get_packed_size(ev);
    buf = gw_xmalloc(len ? len : 1);
    openshell__compute__v1__watch_sandboxes_event__pack(ev, buf);
    if (only != NULL) {
        alive = watcher_push(only, buf, len);
    } else {
        for (struct process_watcher *w = d->watchers, *next; w != NULL; w = next) {
            next = w->next; /* w may end here */
            (void)watcher_push(w, buf, len);
        }
    }
    free(buf);
    return alive;
}

static bool emit_snapshot_to(struct process_driver *d, const struct process_sandbox *sb,
                             struct process_watcher *only)
{
    Openshell__Compute__V1__WatchSandboxesEvent ev =
        OPENSHELL__COMPUTE__V1__WATCH_SANDBOXES_EVENT__INIT;
    Openshell__Compute__V1__WatchSandboxesSandboxEvent se =
        OPENSHELL__COMPUTE__V1__WATCH_SANDBOXES_SANDBOX_EVENT__INIT;
    struct process_snapshot snap;

    process_sandbox_snapshot(sb, &snap);
    se.sandbox = &snap.sandbox;
    ev.payload_case = OPENSHELL__COMPUTE__V1__WATCH_SANDBOXES_EVENT__PAYLOAD_SANDBOX;
    ev.sandbox = &se;
    return emit_event(d, &ev, only);
}

void process_emit_snapshot(struct process_driver *d, const struct process_sandbox *sb)
{
    (void)emit_snapshot_to(d, sb, NULL);
}

void process_emit_deleted(struct process_driver *d, const char *id)
{
    Openshell__Compute__V1__WatchSandboxesEvent ev =
        OPENSHELL__COMPUTE__V1__WATCH_SANDBOXES_EVENT__INIT;
    Openshell__Compute__V1__WatchSandboxesDeletedEvent de =
        OPENSHELL__COMPUTE__V1__WATCH_SANDBOXES_DELETED_EVENT__INIT;

    de.sandbox_id = (char *)id;
    ev.payload_case = OPENSHELL__COMPUTE__V1__WATCH_SANDBOXES_EVENT__PAYLOAD_DELETED;
    ev.deleted = &de;
    (void)emit_event(d, &ev, NULL);
}

void process_emit_platform(struct process_driver *d, const char *id, const char *type,
                           const char *reason, const char *message, const char *const *meta)
{
    Openshell__Compute__V1__WatchSandboxesEvent ev =
        OPENSHELL__COMPUTE__V1__WATCH_SANDBOXES_EVENT__INIT;
    Openshell__Compute__V1__WatchSandboxesPlatformEvent pe =
        OPENSHELL__COMPUTE__V1__WATCH_SANDBOXES_PLATFORM_EVENT__INIT;
    Openshell__Compute__V1__DriverPlatformEvent e =
        OPENSHELL__COMPUTE__V1__DRIVER_PLATFORM_EVENT__INIT;
    Openshell__Compute__V1__DriverPlatformEvent__MetadataEntry entries[4], *ptrs[4];
    size_t n = 0;

    for (; meta != NULL && meta[2 * n] != NULL && n < GW_ARRAY_LEN(entries); n++) {
        openshell__compute__v1__driver_platform_event__metadata_entry__init(&entries[n]);
        entries[n].key = (char *)meta[2 * n];
        entries[n].value = (char *)meta[2 * n + 1];
        ptrs[n] = &entries[n];
    }
    e.timestamp_ms = gw_clock_wall_ms();
    e.source = (char *)"process";
    e.type = (char *)type;
    e.reason = (char *)reason;
    e.message = (char *)message;
    e.n_metadata = n;
    e.metadata = ptrs;
    pe.sandbox_id = (char *)id;
    pe.event = &e;
    ev.payload_case = OPENSHELL__COMPUTE__V1__WATCH_SANDBOXES_EVENT__PAYLOAD_PLATFORM_EVENT;
    ev.platform_event = &pe;
    (void)emit_event(d, &ev, NULL);
}

static void watch_sandboxes(struct grpc_call *call, void *msg)
{
    struct process_driver *d = driver_of(call);
    struct process_watcher *w = gw_xcalloc(1, sizeof(*w));

    w->call = call;
    w->d = d;
    w->next = d->watchers;
    if (d->watchers)
        d->watchers->prev = w;
    d->watchers = w;
    grpc_call_set_user(call, w);
    log_debug("process.watch_open", LF_STR("peer", grpc_call_peer(call)),
              LF_UINT("sandboxes", d->n_sandboxes));
    /* The current state first; changes follow as they happen. */
    for (struct process_sandbox *sb = process_sandbox_first(d); sb != NULL;
         sb = process_sandbox_next(sb)) {
        if (!emit_snapshot_to(d, sb, w))
            return; /* ended while sending */
    }
}

/* ---- unary methods --------------------------------------------------------------------- */

static void get_capabilities(struct grpc_call *call, void *msg)
{
    struct process_driver *d = driver_of(call);
    Openshell__Compute__V1__GetCapabilitiesResponse resp =
        OPENSHELL__COMPUTE__V1__GET_CAPABILITIES_RESPONSE__INIT;

    resp.driver_name = (char *)d->o.name;
    resp.driver_version = (char *)PACKAGE_VERSION;
    resp.default_image = (char *)"host";
    resp.gateway_manages_lifecycle = false;
    grpc_call_reply(call, &resp.base);
}

static void get_listener_requirements(struct grpc_call *call, void *msg)
{
    Openshell__Compute__V1__GetGatewayListenerRequirementsResponse resp =
        OPENSHELL__COMPUTE__V1__GET_GATEWAY_LISTENER_REQUIREMENTS_RESPONSE__INIT;

    grpc_call_reply(call, &resp.base);
}

/* ValidateSandboxCreate and CreateSandbox check the same way: false when
 * the call was finished with the refusal (INVALID_ARGUMENT, or
 * FAILED_PRECONDITION for what this driver cannot provide). */
static bool check_or_finish(struct grpc_call *call, const struct process_driver *d,
                            const Openshell__Compute__V1__DriverSandbox *sb,
                            struct process_options *opts, struct process_limits *lim)
{
    char err[512];
    int rv = process_sandbox_check(sb, d->o.allow_host_network, opts, lim, err, sizeof(err));
    if (rv == 0)
        return true;
    grpc_call_finish(call,
                     rv == PROCESS_ERR_UNSUPPORTED ? GRPC_STATUS_FAILED_PRECONDITION
                                                   : GRPC_STATUS_INVALID_ARGUMENT,
                     err);
    return false;
}

static void validate_create(struct grpc_call *call, void *msg)
{
    struct process_driver *d = driver_of(call);
    Openshell__Compute__V1__ValidateSandboxCreateRequest *req = msg;
    Openshell__Compute__V1__ValidateSandboxCreateResponse resp =
        OPENSHELL__COMPUTE__V1__VALIDATE_SANDBOX_CREATE_RESPONSE__INIT;
    struct process_options opts;
    struct process_limits lim;

    if (check_or_finish(call, d, req->sandbox, &opts, &lim))
        grpc_call_reply(call, &resp.base);
}

static void create_sandbox(struct grpc_call *call, void *msg)
{
    struct process_driver *d = driver_of(call);
    Openshell__Compute__V1__CreateSandboxRequest *req = msg;
    Openshell__Compute__V1__CreateSandboxResponse resp =
        OPENSHELL__COMPUTE__V1__CREATE_SANDBOX_RESPONSE__INIT;
    struct process_options opts;
    struct process_limits lim;
    char err[512];

    if (!check_or_finish(call, d, req->sandbox, &opts, &lim))
        return;
    if (process_sandbox_find(d, req->sandbox->id, NULL, true) != NULL) {
        grpc_call_finishf(call, GRPC_STATUS_ALREADY_EXISTS, "sandbox %s already exists",
                          req->sandbox->id);
        return;
    }
    if (process_sandbox_create(d, req->sandbox, &opts, &lim, err, sizeof(err)) != 0) {
        log_error("process.create_failed", LF_STR("id", req->sandbox->id), LF_STR("error", err));
        grpc_call_finish(call, GRPC_STATUS_INTERNAL, err);
        return;
    }
    grpc_call_reply(call, &resp.base);
}

/* The three lifecycle requests and GetSandbox share (sandbox_id, sandbox_name). */
static struct process_sandbox *lookup(struct grpc_call *call, const char *id, const char *name)
{
    struct process_sandbox *sb;

    if (id[0] == '\0' && name[0] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT,
                         "sandbox_id or sandbox_name is required");
        return NULL;
    }
    sb = process_sandbox_find(driver_of(call), id, name, true);
    if (sb == NULL)
        grpc_call_finishf(call, GRPC_STATUS_NOT_FOUND, "sandbox %s not found",
                          id[0] != '\0' ? id : name);
    return sb;
}

static void get_sandbox(struct grpc_call *call, void *msg)
{
    Openshell__Compute__V1__GetSandboxRequest *req = msg;
    Openshell__Compute__V1__GetSandboxResponse resp =
        OPENSHELL__COMPUTE__V1__GET_SANDBOX_RESPONSE__INIT;
    struct process_sandbox *sb = lookup(call, req->sandbox_id, req->sandbox_name);
    struct process_snapshot snap;

    if (sb == NULL)
        return;
    process_sandbox_snapshot(sb, &snap);
    resp.sandbox = &snap.sandbox;
    grpc_call_reply(call, &resp.base);
}

static void list_sandboxes(struct grpc_call *call, void *msg)
{
    struct process_driver *d = driver_of(call);
    Openshell__Compute__V1__ListSandboxesResponse resp =
        OPENSHELL__COMPUTE__V1__LIST_SANDBOXES_RESPONSE__INIT;
    size_t n = 0;
    struct process_snapshot *snaps =
        grpc_call_alloc(call, sizeof(*snaps) * (d->n_sandboxes ? d->n_sandboxes : 1));
    Openshell__Compute__V1__DriverSandbox **ptrs =
        grpc_call_alloc(call, sizeof(*ptrs) * (d->n_sandboxes ? d->n_sandboxes : 1));

    for (struct process_sandbox *sb = process_sandbox_first(d); sb != NULL;
         sb = process_sandbox_next(sb), n++) {
        process_sandbox_snapshot(sb, &snaps[n]);
        ptrs[n] = &snaps[n].sandbox;
    }
    resp.n_sandboxes = n;
    resp.sandboxes = ptrs;
    grpc_call_reply(call, &resp.base);
}

static void start_sandbox(struct grpc_call *call, void *msg)
{
    Openshell__Compute__V1__StartSandboxRequest *req = msg;
    Openshell__Compute__V1__StartSandboxResponse resp =
        OPENSHELL__COMPUTE__V1__START_SANDBOX_RESPONSE__INIT;
    struct process_sandbox *sb = lookup(call, req->sandbox_id, req->sandbox_name);

    if (sb == NULL)
        return;
    if (process_sandbox_deleting(sb)) {
        grpc_call_finishf(call, GRPC_STATUS_FAILED_PRECONDITION, "sandbox %s is being deleted",
                          process_sandbox_id(sb));
        return;
    }
    process_sandbox_start(sb);
    grpc_call_reply(call, &resp.base);
}

/* ---- asynchronous replies (Stop, Delete) ------------------------------------------------ */

static void stop_done(struct process_waiter *w, bool existed)
{
    Openshell__Compute__V1__StopSandboxResponse resp =
        OPENSHELL__COMPUTE__V1__STOP_SANDBOX_RESPONSE__INIT;
    struct grpc_call *call = w->call;

    grpc_call_set_user(call, NULL);
    free(w);
    grpc_call_reply(call, &resp.base);
}

static void delete_done(struct process_waiter *w, bool existed)
{
    Openshell__Compute__V1__DeleteSandboxResponse resp =
        OPENSHELL__COMPUTE__V1__DELETE_SANDBOX_RESPONSE__INIT;
    struct grpc_call *call = w->call;

    grpc_call_set_user(call, NULL);
    free(w);
    resp.deleted = existed;
    grpc_call_reply(call, &resp.base);
}

static struct process_waiter *waiter_new(struct grpc_call *call,
                                         void (*done)(struct process_waiter *, bool))
{
    struct process_waiter *w = gw_xcalloc(1, sizeof(*w));

    w->call = call;
    w->done = done;
    grpc_call_set_user(call, w);
    return w;
}

static void waiter_cancel(struct grpc_call *call)
{
    struct process_waiter *w = grpc_call_user(call);

    if (w != NULL) {
        process_waiter_unlink(w);
        free(w);
    }
}

static void stop_sandbox(struct grpc_call *call, void *msg)
{
    Openshell__Compute__V1__StopSandboxRequest *req = msg;
    struct process_sandbox *sb = lookup(call, req->sandbox_id, req->sandbox_name);

    if (sb != NULL)
        process_sandbox_stop(sb, waiter_new(call, stop_done));
}

static void delete_sandbox(struct grpc_call *call, void *msg)
{
    Openshell__Compute__V1__DeleteSandboxRequest *req = msg;
    Openshell__Compute__V1__DeleteSandboxResponse resp =
        OPENSHELL__COMPUTE__V1__DELETE_SANDBOX_RESPONSE__INIT;
    struct process_sandbox *sb;

    if (req->sandbox_id[0] == '\0' && req->sandbox_name[0] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT,
                         "sandbox_id or sandbox_name is required");
        return;
    }
    sb = process_sandbox_find(driver_of(call), req->sandbox_id, req->sandbox_name, true);
    if (sb == NULL) {
        resp.deleted = false; /* nothing was there */
        grpc_call_reply(call, &resp.base);
        return;
    }
    process_sandbox_delete(sb, waiter_new(call, delete_done));
}

static void ensure_workspace(struct grpc_call *call, void *msg)
{
    Openshell__Compute__V1__EnsureWorkspaceResponse resp =
        OPENSHELL__COMPUTE__V1__ENSURE_WORKSPACE_RESPONSE__INIT;

    grpc_call_reply(call, &resp.base);
}

static void delete_workspace(struct grpc_call *call, void *msg)
{
    Openshell__Compute__V1__DeleteWorkspaceResponse resp =
        OPENSHELL__COMPUTE__V1__DELETE_WORKSPACE_RESPONSE__INIT;

    grpc_call_reply(call, &resp.base);
}

/* ---- method table and listener ------------------------------------------------------------ */

static const struct grpc_handler h_caps = {.on_message = get_capabilities};
static const struct grpc_handler h_listeners = {.on_message = get_listener_requirements};
static const struct grpc_handler h_validate = {.on_message = validate_create};
static const struct grpc_handler h_get = {.on_message = get_sandbox};
static const struct grpc_handler h_list = {.on_message = list_sandboxes};
static const struct grpc_handler h_create = {.on_message = create_sandbox};
static const struct grpc_handler h_stop = {.on_message = stop_sandbox, .on_cancel = waiter_cancel};
static const struct grpc_handler h_start = {.on_message = start_sandbox};
static const struct grpc_handler h_delete = {.on_message = delete_sandbox,
                                             .on_cancel = waiter_cancel};
static const struct grpc_handler h_watch = {
    .on_message = watch_sandboxes, .on_cancel = watch_cancel, .on_writable = watch_writable};
static const struct grpc_handler h_ensure_ws = {.on_message = ensure_workspace};
static const struct grpc_handler h_delete_ws = {.on_message = delete_workspace};

#define M(name, kind, req, resp, h)                                                                \
    {                                                                                              \
        PFX name, kind, &openshell__compute__v1__##req##__descriptor,                              \
            &openshell__compute__v1__##resp##__descriptor, &h, NULL, 0                             \
    }

/* Not const: .arg is set to the driver when the service starts. */
static struct grpc_method methods[] = {
    M("GetCapabilities", GRPC_UNARY, get_capabilities_request, get_capabilities_response, h_caps),
    M("GetGatewayListenerRequirements", GRPC_UNARY, get_gateway_listener_requirements_request,
      get_gateway_listener_requirements_response, h_listeners),
    M("ValidateSandboxCreate", GRPC_UNARY, validate_sandbox_create_request,
      validate_sandbox_create_response, h_validate),
    M("GetSandbox", GRPC_UNARY, get_sandbox_request, get_sandbox_response, h_get),
    M("ListSandboxes", GRPC_UNARY, list_sandboxes_request, list_sandboxes_response, h_list),
    M("CreateSandbox", GRPC_UNARY, create_sandbox_request, create_sandbox_response, h_create),
    M("StopSandbox", GRPC_UNARY, stop_sandbox_request, stop_sandbox_response, h_stop),
    M("StartSandbox", GRPC_UNARY, start_sandbox_request, start_sandbox_response, h_start),
    M("DeleteSandbox", GRPC_UNARY, delete_sandbox_request, delete_sandbox_response, h_delete),
    M("WatchSandboxes", GRPC_SERVER_STREAM, watch_sandboxes_request, watch_sandboxes_event,
      h_watch),
    M("EnsureWorkspace", GRPC_UNARY, ensure_workspace_request, ensure_workspace_response,
      h_ensure_ws),
    M("DeleteWorkspace", GRPC_UNARY, delete_workspace_request, delete_workspace_response,
      h_delete_ws),
};

static void on_accept(struct bufferevent *bev, const struct reactor_peer *peer, void *arg)
{
    struct process_driver *d = arg;

    if (grpc_server_attach(d->srv, bev, peer->conn_id, peer->addr, NULL, 0) != 0)
        log_warn("process.attach_failed", LF_STR("peer", peer->addr));
}

int process_service_start(struct process_driver *d)
{
    struct grpc_server_opts so = {0};

    d->srv = grpc_server_new(reactor_base(d->r), &so);
    if (d->srv == NULL)
        return -1;
    for (size_t i = 0; i < GW_ARRAY_LEN(methods); i++) {
        methods[i].arg = d;
        if (grpc_server_add_method(d->srv, &methods[i]) != 0)
            return -1;
    }
    if (reactor_listen_unix(d->r, d->o.socket_path, 0600, NULL, on_accept, d, &d->listener) != 0) {
        log_error("process.listen_failed", LF_STR("path", d->o.socket_path),
                  LF_STR("error", strerror(errno)));
        return -1;
    }
    return 0;
}

void process_service_stop(struct process_driver *d)
{
    reactor_listener_free(d->listener);
    d->listener = NULL;
    while (d->watchers != NULL)
        watcher_finish(d->watchers, GRPC_STATUS_UNAVAILABLE, "the driver is shutting down");
    if (d->srv != NULL)
        grpc_server_close_all(d->srv);
}
