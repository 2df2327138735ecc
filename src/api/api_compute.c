/* The gateway's side of the compute driver: per-sandbox gates that
 * serialize lifecycle work, driver observations (WatchSandboxes) applied to
 * the store, and reconciliation of store and platform (semantics.md §3, §8).
 *
 * Sandbox truth is the store's. The driver reports backend state; every
 * observation is applied under the sandbox's gate as "read the record,
 * compose the phase, write if it changed", so lifecycle calls and snapshots
 * of one sandbox never interleave. */
#include "api/api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "api/api_int.h"
#include "drivers/driver.h"
#include "openshell.pb-c.h"
#include "store/store.h"

#define GATE_BUCKETS     256
#define SWEEP_INTERVAL_S 60
#define ACTOR_DRIVER     "driver"
#define SHUTDOWN_STOP_MS 10000 /* each StopSandbox of a graceful shutdown */

struct gate_job {
    api_gate_fn fn;
    void *arg;
    bool lifecycle;
    struct gate_job *next;
};

/* A platform event waiting to be written (in arrival order). */
struct pending_pev {
    char *params[4]; /* id, actor, reason, payload JSON */
    struct pending_pev *next;
};

struct api_gate {
    char id[40];
    bool busy;
    struct gate_job *head, *tail;
    uint8_t *snap; /* latest unapplied watch snapshot (packed DriverSandbox) */
    size_t snap_len;
    bool snap_at_startup; /* observed before the first reconciliation ended */
    bool lost;            /* the driver said it is gone (deleted event / missing from List) */
    const char *lost_reason;
    struct pending_pev *pev_head, *pev_tail; /* platform events, oldest first */
    uint64_t last_watch_us;
    unsigned lifecycle;    /* lifecycle ops queued or running (creates, deletes, ...) */
    bool holder_lifecycle; /* the current holder is a lifecycle op */
    struct api_gate *next;
};

struct api_compute {
    struct api *a;
    struct api_gate *buckets[GATE_BUCKETS];
    unsigned n_gates;
    struct event *sweep;
    bool reconciling;
    bool reconcile_again;
    uint64_t list_started_us;
    int64_t list_started_ms;
    Openshell__Compute__V1__ListSandboxesResponse *listed; /* during a reconcile */
    bool startup_done;                                     /* the first reconciliation finished */
    bool shutting_down;                                    /* observations are no longer applied */
    unsigned stops_pending;
    void (*shutdown_done)(void *arg);
    void *shutdown_arg;
};

/* ---- deferred store queries ----------------------------------------------------- */

struct failed_query {
    store_cb cb;
    void *arg;
    int status;
};

static void run_failed_query(evutil_socket_t fd, short what, void *arg)
{
    struct failed_query *f = arg;
    struct store_result r = {.status = f->status, .sqlstate = "", .error = "database unavailable"};
    f->cb(&r, f->arg);
    free(f);
}

void api_store_run(struct api *a, const struct store_stmt *stmt, const char *const *values,
                   const int *lengths, store_cb cb, void *arg)
{
    int rv = a->opts.store != NULL ? store_query(a->opts.store, stmt, values, lengths, cb, arg)
                                   : STORE_ERR_UNAVAILABLE;
    if (rv == 0)
        return;
    struct failed_query *f = gw_xmalloc(sizeof(*f));
    f->cb = cb;
    f->arg = arg;
    f->status = rv;
    struct timeval now = {0, 0};
    if (event_base_once(a->base, -1, EV_TIMEOUT, run_failed_query, f, &now) != 0)
        GW_ASSERT(!"event_base_once failed");
}

/* ---- gates -------------------------------------------------------------------------- */

static unsigned gate_hash(const char *id)
{
    unsigned h = 5381;
    for (const char *p = id; *p; p++)
        h = h * 33 + (unsigned char)*p;
    return h % GATE_BUCKETS;
}

static struct api_gate *gate_find(struct api_compute *c, const char *id, bool create)
{
    unsigned b = gate_hash(id);
    for (struct api_gate *g = c->buckets[b]; g != NULL; g = g->next)
        if (strcmp(g->id, id) == 0)
            return g;
    if (!create)
        return NULL;
    struct api_gate *g = gw_xcalloc(1, sizeof(*g));
    snprintf(g->id, sizeof(g->id), "%s", id);
    g->next = c->buckets[b];
    c->buckets[b] = g;
    c->n_gates++;
    return g;
}

static void pev_free(struct pending_pev *p)
{
    for (size_t i = 0; i < GW_ARRAY_LEN(p->params); i++)
        free(p->params[i]);
    free(p);
}

static bool gate_has_observation(const struct api_gate *g)
{
    return g->snap != NULL || g->lost || g->pev_head != NULL;
}

static void gate_remove(struct api_compute *c, struct api_gate *g)
{
    struct api_gate **pp = &c->buckets[gate_hash(g->id)];
    while (*pp != g)
        pp = &(*pp)->next;
    *pp = g->next;
    c->n_gates--;
    while (g->pev_head != NULL) {
        struct pending_pev *p = g->pev_head;
        g->pev_head = p->next;
        pev_free(p);
    }
    free(g->snap);
    free(g);
}

static void apply_observation(struct api *a, const char *id, void *arg);

static void gate_enter(struct api *a, const char *id, api_gate_fn fn, void *arg, bool lifecycle)
{
    struct api_gate *g = gate_find(a->compute, id, true);
    if (lifecycle)
        g->lifecycle++;
    if (g->busy) {
        struct gate_job *j = gw_xmalloc(sizeof(*j));
        j->fn = fn;
        j->arg = arg;
        j->lifecycle = lifecycle;
        j->next = NULL;
        if (g->tail != NULL)
            g->tail->next = j;
        else
            g->head = j;
        g->tail = j;
        return;
    }
    g->busy = true;
    g->holder_lifecycle = lifecycle;
    fn(a, g->id, arg);
}

void api_gate_enter(struct api *a, const char *id, api_gate_fn fn, void *arg)
{
    gate_enter(a, id, fn, arg, true);
}

void api_gate_leave(struct api *a, const char *id)
{
    struct api_compute *c = a->compute;
    struct api_gate *g = gate_find(c, id, false);
    GW_ASSERT(g != NULL && g->busy);
    if (g->holder_lifecycle) {
        GW_ASSERT(g->lifecycle > 0);
        g->lifecycle--;
    }
    if (g->head != NULL) {
        struct gate_job *j = g->head;
        g->head = j->next;
        if (g->head == NULL)
            g->tail = NULL;
        api_gate_fn fn = j->fn;
        void *arg = j->arg;
        g->holder_lifecycle = j->lifecycle;
        free(j);
        fn(a, g->id, arg);
        return;
    }
    g->holder_lifecycle = false;
    if (gate_has_observation(g)) {
        apply_observation(a, g->id, NULL);
        return;
    }
    g->busy = false;
    gate_remove(c, g);
}

bool api_gate_busy(struct api *a, const char *id)
{
    struct api_gate *g = gate_find(a->compute, id, false);
    return g != NULL && g->busy;
}

/* A lifecycle call (create, delete, ...) holds or waits for the gate. */
static bool lifecycle_pending(struct api_compute *c, const char *id)
{
    struct api_gate *g = gate_find(c, id, false);
    return g != NULL && g->lifecycle > 0;
}

/* ---- rows ------------------------------------------------------------------------------ */

void api_sb_row_parse(struct api_sb_row *row, const struct store_result *r, int i)
{
    memset(row, 0, sizeof(*row));
    snprintf(row->id, sizeof(row->id), "%s", store_get(r, i, STORE_SB_ID));
    row->name = gw_xstrdup(store_get(r, i, STORE_SB_NAME));
    row->workspace = gw_xstrdup(store_get(r, i, STORE_SB_WORKSPACE));
    row->phase = api_phase_from_name(store_get(r, i, STORE_SB_PHASE));
    row->rv = (uint64_t)store_get_i64(r, i, STORE_SB_RV);
    row->created_ms = store_get_i64(r, i, STORE_SB_CREATED_MS);
    if (!store_is_null(r, i, STORE_SB_STATUS)) {
        size_t len;
        uint8_t *b = store_get_bytea(r, i, STORE_SB_STATUS, &len);
        row->status = openshell__v1__sandbox_status__unpack(NULL, len, b);
        free(b);
    }
}

void api_sb_row_clear(struct api_sb_row *row)
{
    free(row->name);
    free(row->workspace);
    if (row->status != NULL)
        protobuf_c_message_free_unpacked(&row->status->base, NULL);
    memset(row, 0, sizeof(*row));
}

/* ---- writes ------------------------------------------------------------------------- */

static char *conditions_json(const Openshell__V1__SandboxStatus *st)
{
    json_t *arr = json_array();
    for (size_t i = 0; st != NULL && i < st->n_conditions; i++) {
        const Openshell__V1__SandboxCondition *c = st->conditions[i];
        json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:s,s:s}", "type", c->type, "status",
                                             c->status, "reason", c->reason, "message", c->message,
                                             "last_transition_time", c->last_transition_time));
    }
    char *s = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    return s != NULL ? s : gw_xstrdup("[]");
}

void api_sb_write(struct api *a, const char *id, uint64_t expected_rv, int phase,
                  const Openshell__V1__SandboxStatus *status, int prev_phase, const char *actor,
                  const char *reason, store_cb cb, void *arg)
{
    char rv[24];
    size_t len = protobuf_c_message_get_packed_size(&status->base);
    uint8_t *bytes = gw_xmalloc(len ? len : 1);
    protobuf_c_message_pack(&status->base, bytes);
    char *conditions = conditions_json(status);
    json_t *po = json_pack("{s:s}", "agent_pod", status->agent_pod ? status->agent_pod : "");
    char *payload = json_dumps(po, JSON_COMPACT);
    json_decref(po);
    const char *values[9] = {
        id,
        api_u64(rv, expected_rv),
        api_phase_name(phase),
        (const char *)bytes,
        conditions,
        phase != prev_phase ? "sandbox.phase_changed" : "sandbox.status_changed",
        actor,
        reason ? reason : "",
        payload ? payload : "{}",
    };
    /* All text but the status (binary, length >= 0). */
    int lens[9] = {-1, -1, -1, (int)len, -1, -1, -1, -1, -1};
    api_store_run(a, &store_sb_update, values, lens, cb, arg);
    /* The store copied the parameters. */
    free(bytes);
    free(conditions);
    free(payload);
}

/* ---- applying observations ----------------------------------------------------- */

struct obs_op {
    struct api *a;
    char id[40];
    Openshell__Compute__V1__DriverSandbox *snap; /* NULL: apply "lost" */
    struct pending_pev *pev;                     /* a platform event to write */
    bool at_startup;                             /* the snapshot was observed at gateway startup */
    bool lost;
    char reason[64];
    int new_phase;
    int prev_phase;
};

static void obs_finish(struct obs_op *op)
{
    struct api *a = op->a;
    char id[40];
    snprintf(id, sizeof(id), "%s", op->id);
    if (op->snap != NULL)
        protobuf_c_message_free_unpacked(&op->snap->base, NULL);
    if (op->pev != NULL)
        pev_free(op->pev);
    free(op);
    api_gate_leave(a, id);
}

static void pev_written(const struct store_result *r, void *arg)
{
    struct obs_op *op = arg;
    if (r->status != STORE_OK)
        log_warn("compute.platform_event_failed", LF_STR("sandbox_id", op->id),
                 LF_STR("error", r->error));
    obs_finish(op);
}

static void obs_written(const struct store_result *r, void *arg)
{
    struct obs_op *op = arg;
    if (r->status != STORE_OK)
        log_warn("compute.apply_failed", LF_STR("sandbox_id", op->id), LF_STR("error", r->error));
    else if (op->new_phase != op->prev_phase)
        log_info("compute.phase", LF_STR("sandbox_id", op->id),
                 LF_STR("from", api_phase_name(op->prev_phase)),
                 LF_STR("to", api_phase_name(op->new_phase)));
    obs_finish(op);
}

static void obs_removed(const struct store_result *r, void *arg)
{
    struct obs_op *op = arg;
    if (r->status != STORE_OK)
        log_warn("compute.remove_failed", LF_STR("sandbox_id", op->id), LF_STR("error", r->error));
    else {
        log_info("compute.removed", LF_STR("sandbox_id", op->id), LF_STR("reason", op->reason));
        api_logs_drop(op->a, op->id);
    }
    obs_finish(op);
}

static void obs_restarted(int status, const char *message, const ProtobufCMessage *resp, void *arg)
{
    struct obs_op *op = arg;
    if (status == GRPC_STATUS_OK)
        log_info("compute.restarted", LF_STR("sandbox_id", op->id),
                 LF_STR("reason", "running intent kept across the gateway restart"));
    else
        log_warn("compute.restart_failed", LF_STR("sandbox_id", op->id),
                 LF_STR("status", grpc_status_name(status)), LF_STR("message", message));
    obs_finish(op);
}

/* A driver that leaves lifecycle to the gateway (gateway_manages_lifecycle)
 * had its sandboxes stopped when the gateway shut down: at startup, one
 * whose record still means to run (not stopped, stopping, deleting or
 * failed) is started again instead of being recorded as STOPPED. */
static bool restart_intent(struct api *a, const struct obs_op *op, int stored_phase)
{
    if (!op->at_startup || !driver_manages_lifecycle(a->driver) ||
        api_phase_backend(op->snap->status) != OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_STOPPED)
        return false;
    return stored_phase == OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_PROVISIONING ||
           stored_phase == OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_READY ||
           stored_phase == OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_STARTING;
}

static void obs_read(const struct store_result *r, void *arg)
{
    struct obs_op *op = arg;
    struct api *a = op->a;
    struct api_sb_row row;

    if (a->compute->shutting_down) {
        /* Records keep what they meant before the shutdown stops. */
        obs_finish(op);
        return;
    }
    if (r->status != STORE_OK) {
        log_warn("compute.read_failed", LF_STR("sandbox_id", op->id), LF_STR("error", r->error));
        obs_finish(op);
        return;
    }
    if (store_ntuples(r) == 0) {
        /* No record: a watch snapshot for a sandbox we never had or already
         * removed. Reconciliation decides about platform objects. */
        obs_finish(op);
        return;
    }
    api_sb_row_parse(&row, r, 0);
    op->prev_phase = row.phase;
    if (op->lost) {
        if (row.phase == OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_DELETING) {
            const char *p[] = {op->id, ACTOR_DRIVER, op->reason};
            api_sb_row_clear(&row);
            api_store_run(a, &store_sb_delete, p, NULL, obs_removed, op);
            return;
        }
        if (row.phase == OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_ERROR) {
            api_sb_row_clear(&row);
            obs_finish(op);
            return;
        }
        Openshell__V1__SandboxStatus *st = api_phase_status_with_ready(
            row.status, OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_ERROR, "False",
            "ComputeResourceMissing", "the compute driver no longer has this sandbox");
        op->new_phase = OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_ERROR;
        log_warn("compute.sandbox_lost", LF_STR("sandbox_id", op->id), LF_STR("name", row.name),
                 LF_STR("was", api_phase_name(row.phase)), LF_STR("reason", op->reason));
        api_sb_write(a, op->id, row.rv, op->new_phase, st, row.phase, ACTOR_DRIVER,
                     "ComputeResourceMissing", obs_written, op);
        protobuf_c_message_free_unpacked(&st->base, NULL);
        api_sb_row_clear(&row);
        return;
    }
    if (restart_intent(a, op, row.phase)) {
        Openshell__Compute__V1__StartSandboxRequest sr =
            OPENSHELL__COMPUTE__V1__START_SANDBOX_REQUEST__INIT;
        sr.sandbox_id = op->id;
        sr.sandbox_name = row.name;
        (void)driver_call(a->driver, DRIVER_START_SANDBOX, &sr.base, 0, obs_restarted, op);
        api_sb_row_clear(&row);
        return;
    }
    struct api_phase_in in = {
        .stored_phase = row.phase,
        .stored = row.status,
        .driver = op->snap->status,
        .session_connected = api_session_connected(a, op->id),
    };
    int phase;
    Openshell__V1__SandboxStatus *st = NULL;
    if (!api_phase_apply_snapshot(&in, &phase, &st)) {
        api_sb_row_clear(&row);
        obs_finish(op);
        return;
    }
    op->new_phase = phase;
    api_sb_write(a, op->id, row.rv, phase, st, row.phase, ACTOR_DRIVER, "driver snapshot",
                 obs_written, op);
    protobuf_c_message_free_unpacked(&st->base, NULL);
    api_sb_row_clear(&row);
}

/* Runs under the gate: takes the gate's oldest pending observation and
 * applies it (platform events first, in arrival order: the driver sends a
 * transition's event before its snapshot); leaving the gate applies the
 * next. */
static void apply_observation(struct api *a, const char *id, void *arg)
{
    struct api_gate *g = gate_find(a->compute, id, false);
    struct obs_op *op = gw_xcalloc(1, sizeof(*op));
    op->a = a;
    snprintf(op->id, sizeof(op->id), "%s", id);
    if (g->pev_head != NULL) {
        op->pev = g->pev_head;
        g->pev_head = op->pev->next;
        if (g->pev_head == NULL)
            g->pev_tail = NULL;
        api_store_run(a, &store_sb_platform_event, (const char *const *)op->pev->params, NULL,
                      pev_written, op);
        return;
    }
    if (g->lost) {
        op->lost = true;
        snprintf(op->reason, sizeof(op->reason), "%s", g->lost_reason);
        g->lost = false;
        free(g->snap); /* anything older than the loss is moot */
        g->snap = NULL;
    } else {
        op->snap = openshell__compute__v1__driver_sandbox__unpack(NULL, g->snap_len, g->snap);
        op->at_startup = g->snap_at_startup;
        free(g->snap);
        g->snap = NULL;
        if (op->snap == NULL) {
            obs_finish(op);
            return;
        }
    }
    const char *p[] = {op->id};
    api_store_run(a, &store_sb_get_by_id, p, NULL, obs_read, op);
}

static void observe_snapshot(struct api *a, const Openshell__Compute__V1__DriverSandbox *sb)
{
    if (sb == NULL || !gw_uuid_valid(sb->id))
        return;
    struct api_gate *g = gate_find(a->compute, sb->id, true);
    free(g->snap);
    g->snap_len = protobuf_c_message_get_packed_size(&sb->base);
    g->snap = gw_xmalloc(g->snap_len ? g->snap_len : 1);
    protobuf_c_message_pack(&sb->base, g->snap);
    g->snap_at_startup = !a->compute->startup_done;
    g->last_watch_us = gw_now_mono_us();
    if (!g->busy)
        gate_enter(a, g->id, apply_observation, NULL, false);
}

static void observe_lost(struct api *a, const char *id, const char *reason)
{
    if (!gw_uuid_valid(id))
        return;
    struct api_gate *g = gate_find(a->compute, id, true);
    g->lost = true;
    g->lost_reason = reason;
    g->last_watch_us = gw_now_mono_us();
    if (!g->busy)
        gate_enter(a, g->id, apply_observation, NULL, false);
}

/* ---- platform events ------------------------------------------------------------- */

/* Queued on the sandbox's gate and written one at a time, so their stream
 * order is the order the driver sent them (the pool's connections would
 * otherwise commit concurrent writes in any order). */
static void observe_platform_event(struct api *a,
                                   const Openshell__Compute__V1__WatchSandboxesPlatformEvent *pe)
{
    if (pe == NULL || pe->event == NULL || !gw_uuid_valid(pe->sandbox_id))
        return;
    const Openshell__Compute__V1__DriverPlatformEvent *e = pe->event;
    json_t *meta = json_object();
    for (size_t i = 0; i < e->n_metadata; i++)
        json_object_set_new(meta, e->metadata[i]->key, json_string(e->metadata[i]->value));
    json_t *o = json_pack("{s:I,s:s,s:s,s:s,s:s,s:o}", "timestamp_ms", (json_int_t)e->timestamp_ms,
                          "source", e->source, "type", e->type, "reason", e->reason, "message",
                          e->message, "metadata", meta);
    struct pending_pev *p = gw_xcalloc(1, sizeof(*p));
    p->params[0] = gw_xstrdup(pe->sandbox_id);
    p->params[1] = gw_xstrdup(ACTOR_DRIVER);
    p->params[2] = gw_xstrdup(e->reason);
    p->params[3] = o != NULL ? json_dumps(o, JSON_COMPACT) : gw_xstrdup("{}");
    json_decref(o);

    struct api_gate *g = gate_find(a->compute, pe->sandbox_id, true);
    if (g->pev_tail != NULL)
        g->pev_tail->next = p;
    else
        g->pev_head = p;
    g->pev_tail = p;
    if (!g->busy)
        gate_enter(a, g->id, apply_observation, NULL, false);
}

/* ---- reconciliation ------------------------------------------------------------------ */

static void reconcile_start(struct api *a);

static void orphan_deleted(int status, const char *message, const ProtobufCMessage *resp, void *arg)
{
    char *id = arg;
    if (status == GRPC_STATUS_OK)
        log_warn("compute.orphan_deleted", LF_STR("sandbox_id", id));
    else
        log_warn("compute.orphan_delete_failed", LF_STR("sandbox_id", id),
                 LF_STR("status", grpc_status_name(status)), LF_STR("message", message));
    free(id);
}

static const char *owner_label(const Openshell__Compute__V1__DriverSandbox *sb)
{
    if (sb->spec == NULL || sb->spec->template_ == NULL)
        return NULL;
    const Openshell__Compute__V1__DriverSandboxTemplate *t = sb->spec->template_;
    for (size_t i = 0; i < t->n_labels; i++)
        if (strcmp(t->labels[i]->key, API_OWNER_LABEL) == 0)
            return t->labels[i]->value;
    return NULL;
}

static void reconcile_end(struct api *a)
{
    struct api_compute *c = a->compute;
    if (c->listed != NULL)
        protobuf_c_message_free_unpacked(&c->listed->base, NULL);
    c->listed = NULL;
    c->reconciling = false;
    if (c->reconcile_again) {
        c->reconcile_again = false;
        reconcile_start(a);
    }
}

static void reconcile_rows(const struct store_result *r, void *arg)
{
    struct api *a = arg;
    struct api_compute *c = a->compute;
    Openshell__Compute__V1__ListSandboxesResponse *ls = c->listed;
    unsigned applied = 0, lost = 0, orphans = 0;

    if (r->status != STORE_OK) {
        log_warn("compute.reconcile_failed", LF_STR("step", "store"), LF_STR("error", r->error));
        reconcile_end(a);
        return;
    }
    int n = store_ntuples(r);
    bool *matched = gw_xcalloc(ls->n_sandboxes + 1, sizeof(bool));
    for (int i = 0; i < n; i++) {
        const char *id = store_get(r, i, STORE_SB_ID);
        size_t k;
        for (k = 0; k < ls->n_sandboxes; k++)
            if (ls->sandboxes[k]->id != NULL && strcmp(ls->sandboxes[k]->id, id) == 0)
                break;
        struct api_gate *g = gate_find(c, id, false);
        bool newer_watch = g != NULL && g->last_watch_us > c->list_started_us;
        if (k < ls->n_sandboxes) {
            matched[k] = true;
            if (!newer_watch) {
                observe_snapshot(a, ls->sandboxes[k]);
                applied++;
            }
            continue;
        }
        /* In the store, not on the platform. A create in flight here (gate
         * busy) or a record written after the List started is not missing.
         * (Another replica's create between its insert and its driver call
         * could look missing: run one replica, as upstream says.) */
        if (newer_watch || lifecycle_pending(c, id) ||
            store_get_i64(r, i, STORE_SB_CREATED_MS) >= c->list_started_ms)
            continue;
        observe_lost(a, id, "missing from the driver's ListSandboxes");
        lost++;
    }
    for (size_t k = 0; k < ls->n_sandboxes; k++) {
        const Openshell__Compute__V1__DriverSandbox *sb = ls->sandboxes[k];
        if (matched[k] || sb->id == NULL)
            continue;
        if (lifecycle_pending(c, sb->id))
            continue; /* a create or delete of ours is still deciding */
        const char *owner = owner_label(sb);
        if (owner == NULL || strcmp(owner, sb->id) != 0) {
            log_warn("compute.unowned_sandbox", LF_STR("sandbox_id", sb->id),
                     LF_STR("name", sb->name ? sb->name : ""),
                     LF_STR("action", "left alone: no ownership label"));
            continue;
        }
        orphans++;
        log_warn("compute.orphan", LF_STR("sandbox_id", sb->id), LF_STR("name", sb->name),
                 LF_STR("action", "deleting: owned by this gateway, no record"));
        Openshell__Compute__V1__DeleteSandboxRequest dr =
            OPENSHELL__COMPUTE__V1__DELETE_SANDBOX_REQUEST__INIT;
        dr.sandbox_id = sb->id;
        dr.sandbox_name = sb->name;
        (void)driver_call(a->driver, DRIVER_DELETE_SANDBOX, &dr.base, 0, orphan_deleted,
                          gw_xstrdup(sb->id));
    }
    free(matched);
    log_info("compute.reconciled", LF_UINT("records", n),
             LF_UINT("driver_sandboxes", ls->n_sandboxes), LF_UINT("applied", applied),
             LF_UINT("lost", lost), LF_UINT("orphans", orphans));
    reconcile_end(a);
}

static void reconcile_listed(int status, const char *message, const ProtobufCMessage *resp,
                             void *arg)
{
    struct api *a = arg;
    struct api_compute *c = a->compute;
    if (status != GRPC_STATUS_OK) {
        log_warn("compute.reconcile_failed", LF_STR("step", "ListSandboxes"),
                 LF_STR("status", grpc_status_name(status)), LF_STR("message", message));
        reconcile_end(a);
        return;
    }
    /* Keep a copy: the response is borrowed only for this callback. */
    size_t len = protobuf_c_message_get_packed_size(resp);
    uint8_t *buf = gw_xmalloc(len ? len : 1);
    protobuf_c_message_pack(resp, buf);
    c->listed = openshell__compute__v1__list_sandboxes_response__unpack(NULL, len, buf);
    free(buf);
    if (c->listed == NULL) {
        reconcile_end(a);
        return;
    }
    const char *p[] = {driver_name(a->driver)};
    api_store_run(a, &store_sb_list_driver, p, NULL, reconcile_rows, a);
}

static void reconcile_start(struct api *a)
{
    struct api_compute *c = a->compute;
    if (a->driver == NULL || driver_state(a->driver) != DRIVER_READY || a->opts.store == NULL ||
        !store_is_up(a->opts.store))
        return;
    if (c->reconciling) {
        c->reconcile_again = true;
        return;
    }
    c->reconciling = true;
    c->list_started_us = gw_now_mono_us();
    c->list_started_ms = gw_now_wall_ms();
    Openshell__Compute__V1__ListSandboxesRequest req =
        OPENSHELL__COMPUTE__V1__LIST_SANDBOXES_REQUEST__INIT;
    (void)driver_call(a->driver, DRIVER_LIST_SANDBOXES, &req.base, 0, reconcile_listed, a);
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    reconcile_start(arg);
}

/* ---- driver callbacks (wired by the gateway) ----------------------------------- */

void api_compute_on_driver_state(struct driver *d, enum driver_state st, const char *why, void *arg)
{
    struct api *a = arg;
    if (st == DRIVER_READY) {
        struct api_driver_info info = {
            .name = driver_name(d),
            .driver_name = driver_advertised_name(d),
            .driver_version = driver_version(d),
        };
        api_set_drivers(a, &info, 1);
    }
}

void api_compute_on_watch(struct driver *d, const Openshell__Compute__V1__WatchSandboxesEvent *ev,
                          void *arg)
{
    struct api *a = arg;
    if (a->compute == NULL || a->opts.store == NULL)
        return;
    switch (ev->payload_case) {
    case OPENSHELL__COMPUTE__V1__WATCH_SANDBOXES_EVENT__PAYLOAD_SANDBOX:
        if (ev->sandbox != NULL)
            observe_snapshot(a, ev->sandbox->sandbox);
        break;
    case OPENSHELL__COMPUTE__V1__WATCH_SANDBOXES_EVENT__PAYLOAD_DELETED:
        if (ev->deleted != NULL)
            observe_lost(a, ev->deleted->sandbox_id, "deleted by the driver");
        break;
    case OPENSHELL__COMPUTE__V1__WATCH_SANDBOXES_EVENT__PAYLOAD_PLATFORM_EVENT:
        observe_platform_event(a, ev->platform_event);
        break;
    default:
        break;
    }
}

void api_compute_on_watch_open(struct driver *d, void *arg)
{
    reconcile_start(arg);
}

void api_set_driver(struct api *a, struct driver *d)
{
    a->driver = d;
    if (d != NULL && a->compute == NULL) {
        struct api_compute *c = gw_xcalloc(1, sizeof(*c));
        c->a = a;
        c->sweep = event_new(a->base, -1, EV_PERSIST, on_sweep, a);
        struct timeval tv = {SWEEP_INTERVAL_S, 0};
        event_add(c->sweep, &tv);
        a->compute = c;
    }
    if (d != NULL && driver_state(d) == DRIVER_READY)
        api_compute_on_driver_state(d, DRIVER_READY, NULL, a);
}

void api_compute_reconcile(struct api *a)
{
    reconcile_start(a);
}

/* ---- graceful shutdown ---------------------------------------------------------- */

static void run_shutdown_done(evutil_socket_t fd, short what, void *arg)
{
    struct api_compute *c = arg;
    log_info("compute.shutdown_stopped");
    c->shutdown_done(c->shutdown_arg);
}

static void shutdown_stop_done(int status, const char *message, const ProtobufCMessage *resp,
                               void *arg)
{
    struct api *a = arg;
    struct api_compute *c = a->compute;
    if (status != GRPC_STATUS_OK)
        log_warn("compute.shutdown_stop_failed", LF_STR("status", grpc_status_name(status)),
                 LF_STR("message", message));
    GW_ASSERT(c->stops_pending > 0);
    if (--c->stops_pending == 0 && c->shutdown_done != NULL) {
        /* From the loop: the caller stops the driver, whose call is still
         * on the stack here. */
        struct timeval now = {0, 0};
        if (event_base_once(a->base, -1, EV_TIMEOUT, run_shutdown_done, c, &now) != 0)
            GW_ASSERT(!"event_base_once failed");
    }
}

static void shutdown_rows(const struct store_result *r, void *arg)
{
    struct api *a = arg;
    struct api_compute *c = a->compute;
    c->stops_pending = 1; /* held while the calls are issued */
    if (r->status != STORE_OK) {
        log_warn("compute.shutdown_list_failed", LF_STR("error", r->error));
    } else {
        for (int i = 0; i < store_ntuples(r); i++) {
            int ph = api_phase_from_name(store_get(r, i, STORE_SB_PHASE));
            if (ph != OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_PROVISIONING &&
                ph != OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_READY &&
                ph != OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_STARTING)
                continue;
            Openshell__Compute__V1__StopSandboxRequest req =
                OPENSHELL__COMPUTE__V1__STOP_SANDBOX_REQUEST__INIT;
            req.sandbox_id = (char *)store_get(r, i, STORE_SB_ID);
            req.sandbox_name = (char *)store_get(r, i, STORE_SB_NAME);
            c->stops_pending++;
            (void)driver_call(a->driver, DRIVER_STOP_SANDBOX, &req.base, SHUTDOWN_STOP_MS,
                              shutdown_stop_done, a);
        }
        log_info("compute.shutdown_stopping", LF_UINT("sandboxes", c->stops_pending - 1));
    }
    shutdown_stop_done(GRPC_STATUS_OK, NULL, NULL, a);
}

void api_compute_shutdown(struct api *a, void (*done)(void *arg), void *arg)
{
    struct api_compute *c = a->compute;
    if (c == NULL) {
        done(arg);
        return;
    }
    c->shutting_down = true;
    if (a->driver == NULL || driver_state(a->driver) != DRIVER_READY ||
        !driver_manages_lifecycle(a->driver) || a->opts.store == NULL) {
        done(arg);
        return;
    }
    c->shutdown_done = done;
    c->shutdown_arg = arg;
    const char *p[] = {driver_name(a->driver)};
    api_store_run(a, &store_sb_list_driver, p, NULL, shutdown_rows, a);
}

void api_compute_free(struct api *a)
{
    struct api_compute *c = a->compute;
    if (c == NULL)
        return;
    event_free(c->sweep);
    for (size_t b = 0; b < GATE_BUCKETS; b++) {
        while (c->buckets[b] != NULL) {
            struct api_gate *g = c->buckets[b];
            c->buckets[b] = g->next;
            while (g->head != NULL) {
                struct gate_job *j = g->head;
                g->head = j->next;
                free(j);
            }
            while (g->pev_head != NULL) {
                struct pending_pev *p = g->pev_head;
                g->pev_head = p->next;
                pev_free(p);
            }
            free(g->snap);
            free(g);
        }
    }
    if (c->listed != NULL)
        protobuf_c_message_free_unpacked(&c->listed->base, NULL);
    free(c);
    a->compute = NULL;
    a->driver = NULL;
}

/* Supervisor sessions (ConnectSupervisor) are served by the supervisor
 * relay; until a sandbox holds one, readiness stops at "backend ready". */
