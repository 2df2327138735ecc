/* openshell.events.v1.Events/Subscribe (the lifecycle stream for platform
 * schedulers) and openshell.v1.OpenShell/WatchSandbox, both fed by the
 * events hub; WatchSandbox's log lines come from the sandbox's log buffer
 * (api_logs.c). */
#include "api/api.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/api_int.h"
#include "events.pb-c.h"
#include "events/events.h"
#include "labels/labels.h"
#include "openshell.pb-c.h"
#include "store/store.h"

/* A long-lived stream fed by a hub subscription. */
struct ev_stream {
    struct grpc_call *call;
    struct api *api;
    struct events_sub *sub;
    struct labels_selector sel;
    bool have_sel;
    struct ev_stream *prev, *next;
    /* WatchSandbox */
    char sandbox_id[37];
    bool follow_status, stop_on_terminal, follow_events;
    struct api_log_watch *logs; /* follow_logs: a cursor into the sandbox's log buffer */
    bool log_replay_pending;    /* follow_logs: the replay is not fully sent yet */
    bool paused;                /* the subscription waits for events_sub_resume */
    struct events_event *held;  /* a platform event not sent yet (at most one: paused after) */
    uint32_t event_tail;        /* platform events to replay after the first snapshot */
    bool tail_pending;          /* replay not sent yet: live events wait */
    uint64_t start_seq;         /* the subscription starts after this */
    bool reading;               /* a snapshot read is in flight */
    bool sent;                  /* the first snapshot went out */
    bool dirty;                 /* another change arrived while reading or congested */
    bool ending;                /* finished or cancelled: free when the read returns */
    unsigned busy;              /* inside a call that may end the stream: free after it */
};

/* ---- registry (so a drain can end every stream) ------------------------- */

static struct ev_stream *stream_new(struct grpc_call *call)
{
    struct api *a = grpc_call_method_arg(call);
    struct ev_stream *st = gw_xcalloc(1, sizeof(*st));
    st->call = call;
    st->api = a;
    st->next = a->ev_streams;
    if (st->next)
        st->next->prev = st;
    a->ev_streams = st;
    grpc_call_set_user(call, st);
    return st;
}

/* Detaches from the call and the hub; frees unless a read is in flight. */
static void stream_end(struct ev_stream *st)
{
    if (st->ending)
        return;
    st->ending = true;
    if (st->held != NULL) {
        events_event_unref(st->held);
        st->held = NULL;
    }
    struct api *a = st->api;
    if (st->prev)
        st->prev->next = st->next;
    else
        a->ev_streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    events_sub_free(st->sub);
    st->sub = NULL;
    api_logs_unwatch(st->logs);
    st->logs = NULL;
    if (st->have_sel)
        labels_selector_free(&st->sel);
    if (!st->reading && st->busy == 0)
        free(st);
}

static void stream_finish(struct ev_stream *st, int status, const char *msg)
{
    struct grpc_call *call = st->call;
    stream_end(st);
    grpc_call_finish(call, status, msg);
}

static void stream_cancel(struct grpc_call *call)
{
    struct ev_stream *st = grpc_call_user(call);
    if (st != NULL)
        stream_end(st);
}

void api_events_end_all(struct api *a)
{
    while (a->ev_streams != NULL)
        stream_finish(a->ev_streams, GRPC_STATUS_UNAVAILABLE, "server is shutting down");
}

/* ---- conversion ---------------------------------------------------------------- */

static Openshell__V1__SandboxPhase phase_of(const char *name)
{
    char buf[64];
    snprintf(buf, sizeof(buf), "SANDBOX_PHASE_%s", name);
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value_by_name(
        &openshell__v1__sandbox_phase__descriptor, buf);
    return v ? (Openshell__V1__SandboxPhase)v->value
             : OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_UNSPECIFIED;
}

/* ---- Subscribe --------------------------------------------------------------------- */

static bool sub_event(struct events_sub *sub, const struct events_event *ev, void *arg)
{
    struct ev_stream *st = arg;
    Openshell__Events__V1__LifecycleEvent le = OPENSHELL__EVENTS__V1__LIFECYCLE_EVENT__INIT;
    Openshell__Events__V1__SubscribeResponse resp = OPENSHELL__EVENTS__V1__SUBSCRIBE_RESPONSE__INIT;
    le.sequence = ev->seq;
    le.kind = (char *)ev->kind;
    le.workspace = (char *)ev->workspace;
    le.sandbox_id = (char *)ev->sandbox_id;
    le.sandbox_name = (char *)ev->sandbox_name;
    le.previous_phase = phase_of(ev->prev_phase);
    le.new_phase = phase_of(ev->new_phase);
    le.actor = (char *)ev->actor;
    le.reason = (char *)ev->reason;
    le.payload_json = (char *)ev->payload_json;
    le.timestamp_ms = ev->created_at_ms;
    /* Label entries live in a scratch arena-free block: the call arena
     * would grow with every event of a long stream. */
    json_t *obj = json_loads(ev->labels_json, 0, NULL);
    size_t n = json_is_object(obj) ? json_object_size(obj) : 0;
    Openshell__Events__V1__LifecycleEvent__LabelsEntry entries[n ? n : 1];
    Openshell__Events__V1__LifecycleEvent__LabelsEntry *ptrs[n ? n : 1];
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        if (!json_is_string(v))
            continue;
        openshell__events__v1__lifecycle_event__labels_entry__init(&entries[le.n_labels]);
        entries[le.n_labels].key = (char *)k;
        entries[le.n_labels].value = (char *)json_string_value(v);
        ptrs[le.n_labels] = &entries[le.n_labels];
        le.n_labels++;
    }
    le.labels = ptrs;
    resp.payload_case = OPENSHELL__EVENTS__V1__SUBSCRIBE_RESPONSE__PAYLOAD_EVENT;
    resp.event = &le;
    int rv = grpc_call_send(st->call, &resp.base);
    json_decref(obj);
    if (rv < 0) { /* the call is over (overrun or closed) */
        stream_end(st);
        return false;
    }
    return rv == GRPC_SEND_OK;
}

static void sub_caught_up(struct events_sub *sub, uint64_t seq, void *arg)
{
    struct ev_stream *st = arg;
    Openshell__Events__V1__CaughtUp cu = OPENSHELL__EVENTS__V1__CAUGHT_UP__INIT;
    Openshell__Events__V1__SubscribeResponse resp = OPENSHELL__EVENTS__V1__SUBSCRIBE_RESPONSE__INIT;
    cu.sequence = seq;
    resp.payload_case = OPENSHELL__EVENTS__V1__SUBSCRIBE_RESPONSE__PAYLOAD_CAUGHT_UP;
    resp.caught_up = &cu;
    if (grpc_call_send(st->call, &resp.base) < 0)
        stream_end(st);
}

static void stream_writable(struct grpc_call *call)
{
    struct ev_stream *st = grpc_call_user(call);
    if (st != NULL && st->sub != NULL)
        events_sub_resume(st->sub);
}

static void subscribe(struct grpc_call *call, void *msg)
{
    struct api *a = grpc_call_method_arg(call);
    const struct api_principal *p = api_call_principal(call);
    Openshell__Events__V1__SubscribeRequest *req = msg;
    char err[256];

    if (a->opts.hub == NULL || !events_hub_ready(a->opts.hub)) {
        grpc_call_finish(call, GRPC_STATUS_UNAVAILABLE, "event stream not ready; retry later");
        return;
    }
    if (req->all_workspaces && req->workspace[0] != '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT,
                         "all_workspaces must not be combined with workspace");
        return;
    }
    if (req->all_workspaces && !p->platform_admin) {
        grpc_call_finish(call, GRPC_STATUS_PERMISSION_DENIED,
                         "all_workspaces requires the platform admin role");
        return;
    }
    /* Only platform admins exist until an identity provider supplies
     * workspace roles (every authenticated user is one, as upstream without
     * OIDC); refuse anyone else rather than stream a workspace unchecked. */
    if (!p->platform_admin) {
        grpc_call_finish(call, GRPC_STATUS_PERMISSION_DENIED,
                         "the event stream requires the platform admin role");
        return;
    }
    struct labels_selector sel = {0};
    if (labels_selector_parse(req->label_selector, &sel, err, sizeof(err)) != 0) {
        grpc_call_finishf(call, GRPC_STATUS_INVALID_ARGUMENT, "invalid label_selector: %s", err);
        return;
    }
    struct ev_stream *st = stream_new(call);
    st->sel = sel;
    st->have_sel = true;
    /* protobuf-c repeated strings are not NULL-terminated. */
    const char **kinds = grpc_call_alloc(call, (req->n_kinds + 1) * sizeof(char *));
    for (size_t i = 0; i < req->n_kinds; i++)
        kinds[i] = req->kinds[i];
    kinds[req->n_kinds] = NULL;
    struct events_filter f = {
        .workspace = req->all_workspaces ? NULL : api_workspace_name(req->workspace),
        .sel = sel.n > 0 ? &st->sel : NULL,
        .kinds = kinds,
    };
    st->sub = events_sub_new(a->opts.hub, req->after_sequence, &f, sub_event, sub_caught_up, st);
}

/* ---- WatchSandbox ---------------------------------------------------------------------- */

static void watch_read(struct ev_stream *st);
static void watch_tail(struct ev_stream *st);
static bool watch_resume(struct ev_stream *st);
static void watch_open(struct ev_stream *st);
static void watch_live(struct ev_stream *st);
static int send_platform_event(struct ev_stream *st, const struct events_event *ev);

static void watch_got(const struct store_result *r, void *arg)
{
    struct ev_stream *st = arg;
    st->reading = false;
    if (st->ending) {
        free(st);
        return;
    }
    if (r->status != STORE_OK) {
        struct grpc_call *call = st->call;
        stream_end(st);
        api_finish_store_error(call, r, "sandbox");
        return;
    }
    if (store_ntuples(r) == 0) {
        /* Gone: before the first snapshot that is NOT_FOUND, later it ends
         * the stream normally (upstream ends OK when the record vanishes). */
        if (st->sent)
            stream_finish(st, GRPC_STATUS_OK, NULL);
        else
            stream_finish(st, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    if (!st->sent && !api_principal_may_read(st->call, r, 0)) {
        /* No existence oracle: an inaccessible sandbox is "not found". */
        stream_finish(st, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    st->sent = true;
    /* Each snapshot is built in scratch memory and released once sent: a
     * long watch does not grow the call arena. */
    grpc_call_scratch_begin(st->call);
    Openshell__V1__Sandbox *sb = api_sandbox_from_row(st->call, r, 0);
    Openshell__V1__SandboxStreamEvent ev = OPENSHELL__V1__SANDBOX_STREAM_EVENT__INIT;
    ev.payload_case = OPENSHELL__V1__SANDBOX_STREAM_EVENT__PAYLOAD_SANDBOX;
    ev.sandbox = sb;
    int rv = grpc_call_send(st->call, &ev.base);
    bool ready =
        sb->status && sb->status->phase == OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_READY;
    api_sandbox_free_unpacked(sb);
    grpc_call_scratch_end(st->call);
    if (rv < 0) {
        stream_end(st);
        return;
    }
    if (st->stop_on_terminal && ready) {
        stream_finish(st, GRPC_STATUS_OK, NULL);
        return;
    }
    if (st->log_replay_pending || st->tail_pending) {
        watch_open(st);
        return;
    }
    watch_live(st);
}

/* event_tail: the last platform events before the subscription started,
 * sent once after the first snapshot; live events wait until then. */
static void watch_tail_got(const struct store_result *r, void *arg)
{
    struct ev_stream *st = arg;
    st->reading = false;
    st->tail_pending = false;
    if (st->ending) {
        free(st);
        return;
    }
    if (r->status != STORE_OK) {
        struct grpc_call *call = st->call;
        stream_end(st);
        api_finish_store_error(call, r, "sandbox events");
        return;
    }
    for (int i = 0; i < store_ntuples(r); i++) {
        struct events_event ev = {
            .created_at_ms = store_get_i64(r, i, STORE_EV_CREATED_MS),
            .kind = store_get(r, i, STORE_EV_KIND),
            .payload_json = store_get(r, i, STORE_EV_PAYLOAD),
        };
        if (send_platform_event(st, &ev) < 0) {
            stream_end(st);
            return;
        }
    }
    watch_live(st);
}

static void watch_tail(struct ev_stream *st)
{
    char limit[24], upto[24];
    const char *params[] = {st->sandbox_id, api_u64(limit, st->event_tail),
                            api_u64(upto, st->start_seq)};
    if (store_query(st->api->opts.store, &store_ev_platform_tail, params, NULL, watch_tail_got,
                    st) != 0) {
        stream_finish(st, GRPC_STATUS_UNAVAILABLE, "database unavailable; retry later");
        return;
    }
    st->reading = true;
}

static void watch_read(struct ev_stream *st)
{
    const char *params[] = {st->sandbox_id};
    if (st->reading)
        return;
    if (store_query(st->api->opts.store, &store_sb_get_by_id, params, NULL, watch_got, st) != 0) {
        stream_finish(st, GRPC_STATUS_UNAVAILABLE, "database unavailable; retry later");
        return;
    }
    st->reading = true;
}

/* Resumes the paused subscription once the held platform event (if any)
 * went out. Returns false when the stream ended or is congested again. */
static bool watch_resume(struct ev_stream *st)
{
    if (!st->paused || st->ending)
        return !st->ending;
    if (st->held != NULL) {
        int rv = send_platform_event(st, st->held);
        events_event_unref(st->held);
        st->held = NULL;
        if (rv < 0) {
            stream_end(st);
            return false;
        }
        if (rv == GRPC_SEND_FULL)
            return false; /* on_writable resumes */
    }
    st->paused = false;
    /* Resuming delivers at once, and a failed send there ends the stream. */
    st->busy++;
    events_sub_resume(st->sub);
    st->busy--;
    if (st->ending) {
        if (!st->reading)
            free(st);
        return false;
    }
    return true;
}

/* ---- WatchSandbox: log lines ------------------------------------------------------------- */

/* Says how many log lines the client missed because it fell behind the
 * buffer (the ring evicted them before they could be sent). */
static int send_log_warning(struct ev_stream *st, uint64_t dropped)
{
    char text[160];
    snprintf(text, sizeof(text),
             "%llu log lines dropped: the stream fell behind the sandbox's log buffer",
             (unsigned long long)dropped);
    Openshell__V1__SandboxStreamWarning w = OPENSHELL__V1__SANDBOX_STREAM_WARNING__INIT;
    Openshell__V1__SandboxStreamEvent out = OPENSHELL__V1__SANDBOX_STREAM_EVENT__INIT;
    w.message = text;
    out.payload_case = OPENSHELL__V1__SANDBOX_STREAM_EVENT__PAYLOAD_WARNING;
    out.warning = &w;
    return grpc_call_send(st->call, &out.base);
}

/* Sends buffered log lines while the client keeps up: only the replay
 * (|replay_only|, the opening phase) or everything. What is left waits in
 * the buffer for on_writable. Returns false when the stream ended. */
static bool logs_pump(struct ev_stream *st, bool replay_only)
{
    while (!grpc_call_congested(st->call)) {
        uint64_t dropped;
        const Openshell__V1__SandboxLogLine *l =
            api_logs_watch_next(st->logs, replay_only, &dropped);
        if (dropped > 0 && send_log_warning(st, dropped) < 0) {
            stream_end(st);
            return false;
        }
        if (l == NULL)
            break;
        Openshell__V1__SandboxStreamEvent out = OPENSHELL__V1__SANDBOX_STREAM_EVENT__INIT;
        out.payload_case = OPENSHELL__V1__SANDBOX_STREAM_EVENT__PAYLOAD_LOG;
        out.log = (Openshell__V1__SandboxLogLine *)l; /* packed by the send */
        if (grpc_call_send(st->call, &out.base) < 0) {
            stream_end(st);
            return false;
        }
    }
    if (replay_only && !api_logs_watch_replaying(st->logs))
        st->log_replay_pending = false;
    return true;
}

/* New log lines: sent now when the stream is live and keeps up; otherwise
 * they wait in the buffer (the opening phases or on_writable take them). */
static void watch_logs_ready(struct api_log_watch *w, void *arg)
{
    struct ev_stream *st = arg;
    (void)w;
    if (st->ending || !st->sent || st->log_replay_pending || st->tail_pending)
        return;
    (void)logs_pump(st, false);
}

/* After the first snapshot, in this order: the log replay, the platform
 * event tail, then live. A congested replay stays pending (on_writable
 * goes on); the tail is a store read (watch_tail_got goes on). */
static void watch_open(struct ev_stream *st)
{
    if (st->log_replay_pending) {
        if (!logs_pump(st, true) || st->log_replay_pending)
            return;
    }
    if (st->tail_pending) {
        if (!st->reading) /* else the snapshot read in flight comes back here */
            watch_tail(st);
        return;
    }
    watch_live(st);
}

/* Live: buffered log lines, then the held platform event and the paused
 * subscription, then a snapshot re-read a change asked for; each only
 * while the client keeps up. */
static void watch_live(struct ev_stream *st)
{
    if (st->logs != NULL && !logs_pump(st, false))
        return;
    if (grpc_call_congested(st->call) || st->reading)
        return;
    if (!watch_resume(st))
        return;
    if (st->dirty) {
        st->dirty = false;
        watch_read(st);
    }
}

/* A driver's platform event (kind sandbox.platform_event; the payload is
 * the DriverPlatformEvent as JSON) as a WatchSandbox `event`. */
static int send_platform_event(struct ev_stream *st, const struct events_event *ev)
{
    json_error_t jerr;
    json_t *o = json_loads(ev->payload_json, 0, &jerr);
    Openshell__V1__PlatformEvent pe = OPENSHELL__V1__PLATFORM_EVENT__INIT;
    Openshell__V1__SandboxStreamEvent out = OPENSHELL__V1__SANDBOX_STREAM_EVENT__INIT;
    json_t *meta = o != NULL ? json_object_get(o, "metadata") : NULL;
    size_t n = json_is_object(meta) ? json_object_size(meta) : 0;
    Openshell__V1__PlatformEvent__MetadataEntry entries[n > 0 ? n : 1];
    Openshell__V1__PlatformEvent__MetadataEntry *ptrs[n > 0 ? n : 1];
    const char *key;
    json_t *val;
    size_t i = 0;

    pe.timestamp_ms = o != NULL ? json_integer_value(json_object_get(o, "timestamp_ms")) : 0;
    if (pe.timestamp_ms == 0)
        pe.timestamp_ms = ev->created_at_ms;
#define FIELD(name)                                                                                \
    (o != NULL && json_is_string(json_object_get(o, name))                                         \
         ? (char *)json_string_value(json_object_get(o, name))                                     \
         : (char *)"")
    pe.source = FIELD("source");
    pe.type = FIELD("type");
    pe.reason = FIELD("reason");
    pe.message = FIELD("message");
#undef FIELD
    if (n > 0) {
        json_object_foreach(meta, key, val)
        {
            openshell__v1__platform_event__metadata_entry__init(&entries[i]);
            entries[i].key = (char *)key;
            entries[i].value = json_is_string(val) ? (char *)json_string_value(val) : (char *)"";
            ptrs[i] = &entries[i];
            i++;
        }
        pe.n_metadata = i;
        pe.metadata = ptrs;
    }
    out.payload_case = OPENSHELL__V1__SANDBOX_STREAM_EVENT__PAYLOAD_EVENT;
    out.event = &pe;
    int rv = grpc_call_send(st->call, &out.base);
    json_decref(o);
    return rv;
}

/* Every change of this sandbox: read a fresh snapshot (coalesced while a
 * read is in flight or the client is slow). Platform events are sent as
 * they come, in stream order, after the first snapshot. */
static bool watch_event(struct events_sub *sub, const struct events_event *ev, void *arg)
{
    struct ev_stream *st = arg;
    if (strcmp(ev->kind, "sandbox.platform_event") == 0) {
        if (!st->follow_events)
            return true;
        if (!st->sent || st->reading || st->log_replay_pending || st->tail_pending ||
            grpc_call_congested(st->call)) {
            /* Not now: the subscription counts it delivered, so keep it
             * and send it first when resumed (after the snapshot / replay,
             * or when writable). Paused, nothing else arrives meanwhile. */
            events_event_ref((struct events_event *)ev);
            st->held = (struct events_event *)ev;
            st->paused = true;
            return false;
        }
        int rv = send_platform_event(st, ev);
        if (rv < 0) {
            stream_end(st);
            return false;
        }
        if (rv == GRPC_SEND_FULL) {
            st->paused = true;
            return false;
        }
        return true;
    }
    bool deleted = strcmp(ev->kind, "sandbox.deleted") == 0;
    if (!st->follow_status && !deleted)
        return true;
    if (st->reading || grpc_call_congested(st->call)) {
        st->dirty = true;
        return true;
    }
    watch_read(st);
    return true;
}

static void watch_writable(struct grpc_call *call)
{
    struct ev_stream *st = grpc_call_user(call);
    if (st == NULL || !st->sent)
        return;
    if (st->log_replay_pending) {
        watch_open(st);
        return;
    }
    if (st->tail_pending) /* its read is in flight: watch_tail_got goes on */
        return;
    watch_live(st);
}

static void watch_sandbox(struct grpc_call *call, void *msg)
{
    struct api *a = grpc_call_method_arg(call);
    Openshell__V1__WatchSandboxRequest *req = msg;

    if (req->id[0] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "id is required");
        return;
    }
    if (!gw_uuid_valid(req->id)) {
        grpc_call_finish(call, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    if (api_store_unavailable(call))
        return;
    if (a->opts.hub == NULL || !events_hub_ready(a->opts.hub)) {
        grpc_call_finish(call, GRPC_STATUS_UNAVAILABLE, "event stream not ready; retry later");
        return;
    }
    struct ev_stream *st = stream_new(call);
    snprintf(st->sandbox_id, sizeof(st->sandbox_id), "%s", req->id);
    for (char *c = st->sandbox_id; *c; c++)
        if (*c >= 'A' && *c <= 'F')
            *c = (char)(*c - 'A' + 'a');
    st->follow_status = req->follow_status;
    st->stop_on_terminal = req->stop_on_terminal;
    st->follow_events = req->follow_events;
    st->event_tail = req->follow_events ? GW_MIN(req->event_tail, 1000u) : 0;
    st->tail_pending = st->event_tail > 0;
    st->start_seq = events_hub_head(a->opts.hub);
    if (req->follow_logs) {
        /* The request lives as long as the call: the filter borrows it. */
        struct api_logs_filter lf = {
            .since_ms = req->log_since_ms,
            .sources = (const char *const *)req->log_sources,
            .n_sources = req->n_log_sources,
            .min_level = req->log_min_level,
        };
        st->logs =
            api_logs_watch(a, st->sandbox_id, req->log_tail_lines, &lf, watch_logs_ready, st);
        st->log_replay_pending = true;
    }
    /* Subscribe first, then read: a change between the two is seen twice
     * (harmless), never lost. */
    struct events_filter f = {.sandbox_id = st->sandbox_id};
    st->sub = events_sub_new(a->opts.hub, st->start_seq, &f, watch_event, NULL, st);
    watch_read(st);
}

static const struct grpc_handler subscribe_h = {
    .on_message = subscribe, .on_cancel = stream_cancel, .on_writable = stream_writable};
static const struct grpc_handler watch_h = {
    .on_message = watch_sandbox, .on_cancel = stream_cancel, .on_writable = watch_writable};

const struct grpc_method api_events_methods[] = {
    {"/openshell.events.v1.Events/Subscribe", GRPC_SERVER_STREAM,
     &openshell__events__v1__subscribe_request__descriptor,
     &openshell__events__v1__subscribe_response__descriptor, &subscribe_h, NULL, API_AUTH_BEARER},
    {"/openshell.v1.OpenShell/WatchSandbox", GRPC_SERVER_STREAM,
     &openshell__v1__watch_sandbox_request__descriptor,
     &openshell__v1__sandbox_stream_event__descriptor, &watch_h, NULL, API_AUTH_BEARER},
    {.path = NULL},
};
