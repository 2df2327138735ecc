/* Supervisor sessions and relays (semantics.md §8, §14, §15).
 *
 * Every sandbox's supervisor holds one ConnectSupervisor stream: the
 * session. The registry maps sandbox ids to their live session and to the
 * relays opened toward them. A relay is born waiting for a session (15 s),
 * is announced with RelayOpen, waits for the supervisor to claim it with a
 * RelayStream call (10 s), and then carries bytes both ways until each side
 * sent its end.
 *
 * Readiness follows sessions: a connect or a disconnect queues one
 * "sync" job on the sandbox's gate, which reads the record and writes the
 * phase the session rules of §8 give for the session state at that moment
 * (so any number of flaps settles on the truth, in order with lifecycle
 * calls and driver observations).
 *
 * Also here: ReportMainProcessExit, RefreshSandboxToken, IssueSandboxToken
 * and the "sandbox must be READY" lookup the relay users share. */
#include "api/api.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>

#include "api/api_int.h"
#include "jwt/jwt.h"
#include "openshell.pb-c.h"
#include "store/store.h"

#define HEARTBEAT_S        15    /* advertised, and the gateway's own interval */
#define SESSION_IDLE_S     50    /* nothing from the supervisor this long: the session is dead */
#define SESSION_WAIT_MS    15000 /* a relay waits this long for a session */
#define CLAIM_WAIT_MS      10000 /* and this long for its RelayStream */
#define MAX_PENDING        256
#define MAX_PENDING_PER_SB 32
#define RELAY_CHUNK        (16 * 1024)
#define INSTANCE_ID_MAX    128
#define ACTOR_SUPERVISOR   "supervisor"

/* ---- a small map from UUID text to an embedded node ------------------------ */

struct idnode {
    const char *key; /* points into the owner */
    struct idnode *next;
};

struct idmap {
    struct idnode **b;
    size_t nb, n;
};

static size_t id_hash(const char *s)
{
    size_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static struct idnode *idmap_find(const struct idmap *m, const char *key)
{
    if (m->nb == 0)
        return NULL;
    for (struct idnode *n = m->b[id_hash(key) & (m->nb - 1)]; n; n = n->next)
        if (strcmp(n->key, key) == 0)
            return n;
    return NULL;
}

static void idmap_put(struct idmap *m, struct idnode *n)
{
    if (m->n + 1 > m->nb) {
        size_t nb = m->nb ? m->nb * 2 : 64;
        struct idnode **b = gw_xcalloc(nb, sizeof(*b));
        for (size_t i = 0; i < m->nb; i++) {
            struct idnode *x = m->b[i];
            while (x) {
                struct idnode *next = x->next;
                size_t j = id_hash(x->key) & (nb - 1);
                x->next = b[j];
                b[j] = x;
                x = next;
            }
        }
        free(m->b);
        m->b = b;
        m->nb = nb;
    }
    size_t j = id_hash(n->key) & (m->nb - 1);
    n->next = m->b[j];
    m->b[j] = n;
    m->n++;
}

static void idmap_del(struct idmap *m, struct idnode *n)
{
    struct idnode **pp = &m->b[id_hash(n->key) & (m->nb - 1)];
    while (*pp && *pp != n)
        pp = &(*pp)->next;
    if (*pp == n) {
        *pp = n->next;
        m->n--;
    }
    n->next = NULL;
}

#define CONTAINER_OF(p, type, field) ((type *)((char *)(p)-offsetof(type, field)))

/* ---- registry types ------------------------------------------------------------ */

struct session;

/* Everything the gateway holds for one sandbox id. Freed when it holds
 * nothing (no session, no relay, no queued sync). */
struct sb_entry {
    struct idnode node;
    char id[37];
    struct session *cur;      /* the live session, or NULL */
    struct api_relay *relays; /* every relay of the sandbox */
    unsigned pending;         /* relays not claimed yet */
    bool sync_queued;         /* a readiness sync waits for the gate */
};

enum session_state {
    S_HELLO,    /* waiting for the hello */
    S_CHECKING, /* the sandbox is being looked up */
    S_LIVE,     /* registered (current, or superseded and ending) */
    S_ENDED,
};

struct session {
    struct api_sessions *S;
    struct grpc_call *call; /* NULL once the call ended */
    struct sb_entry *e;     /* while current */
    enum session_state state;
    bool lookup_pending; /* the store lookup holds this object */
    char sandbox_id[37];
    char session_id[37];
    char instance_id[INSTANCE_ID_MAX + 1];
    struct event *tick; /* heartbeat and idle check */
    uint64_t last_rx_us;
};

enum relay_state {
    R_WAIT_SESSION,
    R_WAIT_CLAIM,
    R_OPEN,
    R_OVER, /* failed or finished; on_close pending */
};

struct api_relay {
    struct idnode node; /* channel map, while not claimed */
    struct api_sessions *S;
    struct sb_entry *e;
    struct api_relay *prev, *next; /* e->relays */
    char channel_id[37];
    enum relay_state state;
    char *tcp_host; /* NULL: SSH */
    uint16_t tcp_port;
    char *service_id;
    const struct api_relay_ops *ops;
    void *arg;
    struct event *timer;  /* session wait, then claim wait */
    struct event *notify; /* deferred work: resume, close */
    struct grpc_call *call;
    struct gw_buf early; /* written before the claim */
    bool want_writable;
    bool shut_wr;      /* the user asked for EOF toward the target */
    bool shut_wr_sent; /* the end marker went out */
    bool eof_in;       /* the target finished */
    bool paused;
    bool resume_pending;
    int close_status;
    char *close_msg;
};

struct api_sessions {
    struct api *a;
    bool draining;         /* the gateway is stopping: sessions end without readiness writes */
    struct idmap entries;  /* sandbox id -> sb_entry */
    struct idmap channels; /* channel id -> unclaimed relay */
    unsigned pending_total;
    unsigned live;
    unsigned relays;
};

static struct api_sessions *sessions(struct api *a)
{
    if (a->sessions == NULL) {
        a->sessions = gw_xcalloc(1, sizeof(*a->sessions));
        a->sessions->a = a;
    }
    return a->sessions;
}

static struct sb_entry *entry_get(struct api_sessions *S, const char *id, bool create)
{
    struct idnode *n = idmap_find(&S->entries, id);
    if (n != NULL)
        return CONTAINER_OF(n, struct sb_entry, node);
    if (!create)
        return NULL;
    struct sb_entry *e = gw_xcalloc(1, sizeof(*e));
    snprintf(e->id, sizeof(e->id), "%s", id);
    e->node.key = e->id;
    idmap_put(&S->entries, &e->node);
    return e;
}

static void entry_maybe_free(struct api_sessions *S, struct sb_entry *e)
{
    if (e->cur != NULL || e->relays != NULL || e->sync_queued)
        return;
    idmap_del(&S->entries, &e->node);
    free(e);
}

bool api_session_connected(struct api *a, const char *sandbox_id)
{
    if (a->sessions == NULL)
        return false;
    struct sb_entry *e = entry_get(a->sessions, sandbox_id, false);
    return e != NULL && e->cur != NULL;
}

unsigned api_sessions_live(const struct api *a)
{
    return a->sessions ? a->sessions->live : 0;
}

unsigned api_relays_open(const struct api *a)
{
    return a->sessions ? a->sessions->relays : 0;
}

/* ---- readiness (§8 session events) --------------------------------------------- */

static void sync_queue(struct api_sessions *S, const char *sandbox_id);

struct sync_op {
    struct api *a;
    char id[37];
};

/* Ends a sync (always from a store callback, never inside sync_queue()):
 * leaves the gate and frees the entry if it holds nothing any more. */
static void sync_done(struct sync_op *op)
{
    struct api *a = op->a;
    struct sb_entry *e = a->sessions ? entry_get(a->sessions, op->id, false) : NULL;
    if (e != NULL)
        entry_maybe_free(a->sessions, e);
    api_gate_leave(a, op->id);
    free(op);
}

static void sync_written(const struct store_result *r, void *arg)
{
    struct sync_op *op = arg;
    if (r->status != STORE_OK)
        log_warn("session.readiness_write_failed", LF_STR("sandbox_id", op->id),
                 LF_STR("error", r->error));
    sync_done(op);
}

static bool ready_condition_is(const Openshell__V1__SandboxStatus *st, const char *status,
                               const char *reason)
{
    if (st == NULL)
        return false;
    for (size_t i = 0; i < st->n_conditions; i++) {
        const Openshell__V1__SandboxCondition *c = st->conditions[i];
        if (strcmp(c->type, "Ready") == 0)
            return strcmp(c->status, status) == 0 && strcmp(c->reason, reason) == 0;
    }
    return false;
}

static void set_instance(Openshell__V1__SandboxStatus *st, const char *instance)
{
    if (st->main_process_instance_id != NULL &&
        st->main_process_instance_id != (char *)protobuf_c_empty_string)
        free(st->main_process_instance_id);
    st->main_process_instance_id = gw_xstrdup(instance);
}

static void sync_read(const struct store_result *r, void *arg)
{
    struct sync_op *op = arg;
    struct api *a = op->a;
    if (r->status != STORE_OK || store_ntuples(r) == 0) {
        if (r->status != STORE_OK)
            log_warn("session.readiness_read_failed", LF_STR("sandbox_id", op->id),
                     LF_STR("error", r->error));
        sync_done(op);
        return;
    }
    struct api_sb_row row;
    api_sb_row_parse(&row, r, 0);
    struct sb_entry *e = a->sessions ? entry_get(a->sessions, op->id, false) : NULL;
    const struct session *s = e ? e->cur : NULL;
    Openshell__V1__SandboxStatus *st = NULL;
    int phase = row.phase;
    const char *reason = NULL;

    if (s != NULL) {
        bool blocked = row.phase == OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_DELETING ||
                       row.phase == OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_ERROR ||
                       row.phase == OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_STOPPING ||
                       row.phase == OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_STOPPED;
        bool same =
            row.phase == OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_READY && row.status != NULL &&
            strcmp(row.status->main_process_instance_id, s->instance_id) == 0 &&
            row.status->_exit_code_case == OPENSHELL__V1__SANDBOX_STATUS___EXIT_CODE__NOT_SET &&
            ready_condition_is(row.status, "True", "DependenciesReady");
        if (!blocked && !same) {
            phase = OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_READY;
            st = api_phase_status_with_ready(row.status, phase, "True", "DependenciesReady",
                                             "Supervisor session connected");
            set_instance(st, s->instance_id);
            st->_exit_code_case = OPENSHELL__V1__SANDBOX_STATUS___EXIT_CODE__NOT_SET;
            st->exit_code = 0;
            reason = "supervisor session connected";
        }
    } else if (row.phase == OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_READY) {
        phase = OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_PROVISIONING;
        st = api_phase_status_with_ready(row.status, phase, "False", "DependenciesNotReady",
                                         "Supervisor session disconnected");
        reason = "supervisor session disconnected";
    }
    if (st == NULL) {
        api_sb_row_clear(&row);
        sync_done(op);
        return;
    }
    api_sb_write(a, op->id, row.rv, phase, st, row.phase, ACTOR_SUPERVISOR, reason, sync_written,
                 op);
    protobuf_c_message_free_unpacked(&st->base, NULL);
    api_sb_row_clear(&row);
}

static void sync_run(struct api *a, const char *sandbox_id, void *arg)
{
    struct sync_op *op = arg;
    /* From here on a new change queues a new sync: this one may have read
     * too early to see it. This may run inside sync_queue() (a free gate),
     * so the entry is not freed here but in sync_done(). */
    struct sb_entry *e = a->sessions ? entry_get(a->sessions, op->id, false) : NULL;
    if (e != NULL)
        e->sync_queued = false;
    const char *p[] = {op->id};
    api_store_run(a, &store_sb_get_by_id, p, NULL, sync_read, op);
}

static void sync_queue(struct api_sessions *S, const char *sandbox_id)
{
    struct sb_entry *e = entry_get(S, sandbox_id, true);
    if (e->sync_queued)
        return;
    e->sync_queued = true;
    struct sync_op *op = gw_xcalloc(1, sizeof(*op));
    op->a = S->a;
    snprintf(op->id, sizeof(op->id), "%s", sandbox_id);
    api_gate_enter(S->a, op->id, sync_run, op);
}

/* ---- relays ----------------------------------------------------------------------- */

static void relay_send_open(struct api_relay *r, struct session *s);
static void relay_notify_cb(evutil_socket_t fd, short what, void *arg);
static void relay_timer_cb(evutil_socket_t fd, short what, void *arg);

static void relay_arm(struct api_relay *r, unsigned ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(r->timer, &tv);
}

static void relay_unpend(struct api_relay *r)
{
    if (r->state != R_WAIT_SESSION && r->state != R_WAIT_CLAIM)
        return;
    idmap_del(&r->S->channels, &r->node);
    r->e->pending--;
    r->S->pending_total--;
}

/* Detaches |r| from the registry (not from its call). */
static void relay_unlink(struct api_relay *r)
{
    relay_unpend(r);
    struct sb_entry *e = r->e;
    if (e == NULL)
        return;
    if (r->prev)
        r->prev->next = r->next;
    else
        e->relays = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    r->e = NULL;
    r->S->relays--;
    entry_maybe_free(r->S, e);
}

static void relay_free(struct api_relay *r)
{
    if (r->call != NULL)
        grpc_call_set_user(r->call, NULL);
    event_free(r->timer);
    event_free(r->notify);
    gw_buf_free(&r->early);
    free(r->tcp_host);
    free(r->service_id);
    free(r->close_msg);
    free(r);
}

/* The relay is over with |status|: tell the user from the loop. The
 * supervisor's call, if any, is finished with |call_status|. */
static void relay_over(struct api_relay *r, int status, const char *msg, int call_status)
{
    if (r->state == R_OVER)
        return;
    relay_unlink(r);
    r->state = R_OVER;
    evtimer_del(r->timer);
    if (r->call != NULL) {
        grpc_call_set_user(r->call, NULL);
        grpc_call_finish(r->call, call_status, call_status == GRPC_STATUS_OK ? NULL : msg);
        r->call = NULL;
    }
    r->close_status = status;
    r->close_msg = gw_xstrdup(msg ? msg : "");
    event_active(r->notify, EV_TIMEOUT, 0);
}

static void relay_fail(struct api_relay *r, int status, const char *msg)
{
    log_debug("relay.failed", LF_STR("channel_id", r->channel_id),
              LF_STR("status", grpc_status_name(status)), LF_STR("message", msg));
    relay_over(r, status, msg, GRPC_STATUS_CANCELLED);
}

static void relay_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct api_relay *r = arg;
    if (r->state == R_WAIT_SESSION)
        relay_fail(r, GRPC_STATUS_UNAVAILABLE,
                   "supervisor relay failed: no supervisor session for the sandbox within 15 s");
    else if (r->state == R_WAIT_CLAIM)
        relay_fail(r, GRPC_STATUS_DEADLINE_EXCEEDED, "relay open timed out");
}

static void relay_notify_cb(evutil_socket_t fd, short what, void *arg)
{
    struct api_relay *r = arg;
    if (r->state == R_OVER) {
        r->ops->on_close(r, r->close_status, r->close_msg, r->arg);
        relay_free(r);
        return;
    }
    if (r->resume_pending) {
        r->resume_pending = false;
        if (!r->paused && r->call != NULL)
            grpc_call_pause_recv(r->call, false);
    }
}

/* Sends |len| bytes as RelayFrame{data} messages of at most RELAY_CHUNK. */
static int relay_send_data(struct api_relay *r, const uint8_t *data, size_t len)
{
    int rv = GRPC_SEND_OK;
    while (len > 0) {
        size_t n = GW_MIN(len, (size_t)RELAY_CHUNK);
        uint8_t hdr[8];
        size_t h = 0;
        hdr[h++] = 0x12; /* field 2 (data), wire type 2 */
        size_t v = n;
        while (v >= 0x80) {
            hdr[h++] = (uint8_t)(v | 0x80);
            v >>= 7;
        }
        hdr[h++] = (uint8_t)v;
        rv = grpc_call_send_parts(r->call, hdr, h, data, n);
        if (rv < 0)
            return rv;
        data += n;
        len -= n;
    }
    return rv;
}

/* The gateway's end of data: a non-data frame after init. */
static void relay_send_end(struct api_relay *r)
{
    Openshell__V1__RelayInit init = OPENSHELL__V1__RELAY_INIT__INIT;
    Openshell__V1__RelayFrame f = OPENSHELL__V1__RELAY_FRAME__INIT;
    init.channel_id = r->channel_id;
    f.payload_case = OPENSHELL__V1__RELAY_FRAME__PAYLOAD_INIT;
    f.init = &init;
    int rv = grpc_call_send(r->call, &f.base);
    (void)rv; /* a closed call ends the relay through its on_cancel */
    r->shut_wr_sent = true;
}

static void relay_maybe_done(struct api_relay *r)
{
    if (r->state == R_OPEN && r->eof_in && r->shut_wr_sent)
        relay_over(r, GRPC_STATUS_OK, NULL, GRPC_STATUS_OK);
}

struct api_relay *api_relay_open(struct api *a, const char *sandbox_id,
                                 const struct api_relay_target *t, const struct api_relay_ops *ops,
                                 void *arg, int *status, const char **msg)
{
    struct api_sessions *S = sessions(a);
    struct sb_entry *e = entry_get(S, sandbox_id, false);
    if (S->pending_total >= MAX_PENDING || (e != NULL && e->pending >= MAX_PENDING_PER_SB)) {
        *status = GRPC_STATUS_RESOURCE_EXHAUSTED;
        *msg = "too many pending relays";
        return NULL;
    }
    e = entry_get(S, sandbox_id, true);
    struct api_relay *r = gw_xcalloc(1, sizeof(*r));
    r->S = S;
    r->e = e;
    gw_uuid4(r->channel_id);
    r->node.key = r->channel_id;
    r->ops = ops;
    r->arg = arg;
    if (t != NULL && t->tcp_host != NULL) {
        r->tcp_host = gw_xstrdup(t->tcp_host);
        r->tcp_port = t->tcp_port;
    }
    if (t != NULL && t->service_id != NULL && t->service_id[0] != '\0')
        r->service_id = gw_xstrdup(t->service_id);
    r->timer = evtimer_new(a->base, relay_timer_cb, r);
    r->notify = event_new(a->base, -1, 0, relay_notify_cb, r);
    r->next = e->relays;
    if (r->next)
        r->next->prev = r;
    e->relays = r;
    e->pending++;
    S->pending_total++;
    S->relays++;
    idmap_put(&S->channels, &r->node);
    r->state = R_WAIT_SESSION;
    if (e->cur != NULL && e->cur->state == S_LIVE) {
        relay_send_open(r, e->cur);
    } else {
        relay_arm(r, SESSION_WAIT_MS);
    }
    log_debug("relay.open", LF_STR("sandbox_id", sandbox_id), LF_STR("channel_id", r->channel_id),
              LF_STR("target", r->tcp_host ? "tcp" : "ssh"));
    return r;
}

int api_relay_write(struct api_relay *r, const uint8_t *data, size_t len)
{
    if (r->state == R_OVER || r->shut_wr)
        return API_RELAY_CLOSED;
    if (r->state != R_OPEN) {
        gw_buf_append(&r->early, data, len);
        r->want_writable = true;
        return API_RELAY_FULL;
    }
    int rv = relay_send_data(r, data, len);
    if (rv < 0)
        return API_RELAY_CLOSED;
    if (rv == GRPC_SEND_FULL) {
        r->want_writable = true;
        return API_RELAY_FULL;
    }
    return API_RELAY_OK;
}

void api_relay_shutdown_write(struct api_relay *r)
{
    if (r->shut_wr || r->state == R_OVER)
        return;
    r->shut_wr = true;
    if (r->state != R_OPEN)
        return; /* sent after the early bytes once claimed */
    relay_send_end(r);
    if (r->eof_in) {
        /* on_close must not run inside this call: relay_over defers it. */
        relay_maybe_done(r);
    }
}

void api_relay_pause(struct api_relay *r, bool paused)
{
    if (r->paused == paused)
        return;
    r->paused = paused;
    if (r->call == NULL)
        return;
    if (paused) {
        grpc_call_pause_recv(r->call, true);
    } else {
        /* Resuming replays held messages synchronously: do it from the loop. */
        r->resume_pending = true;
        event_active(r->notify, EV_TIMEOUT, 0);
    }
}

void api_relay_close(struct api_relay *r)
{
    if (r->state != R_OVER) {
        relay_unlink(r);
        if (r->call != NULL) {
            grpc_call_set_user(r->call, NULL);
            grpc_call_finish(r->call, GRPC_STATUS_CANCELLED, "relay closed by the gateway");
            r->call = NULL;
        }
    }
    relay_free(r);
}

/* ---- sessions ----------------------------------------------------------------------- */

/* Session messages are small and few (bounded by the relay caps), so a
 * congested stream just queues them; a dead one ends through on_cancel. */
static void session_send(struct session *s, const ProtobufCMessage *m)
{
    int rv = grpc_call_send(s->call, m);
    (void)rv;
}

static void relay_send_open(struct api_relay *r, struct session *s)
{
    Openshell__V1__GatewayMessage m = OPENSHELL__V1__GATEWAY_MESSAGE__INIT;
    Openshell__V1__RelayOpen ro = OPENSHELL__V1__RELAY_OPEN__INIT;
    Openshell__V1__TcpRelayTarget tcp = OPENSHELL__V1__TCP_RELAY_TARGET__INIT;
    Openshell__V1__SshRelayTarget ssh = OPENSHELL__V1__SSH_RELAY_TARGET__INIT;
    ro.channel_id = r->channel_id;
    if (r->tcp_host != NULL) {
        tcp.host = r->tcp_host;
        tcp.port = r->tcp_port;
        ro.target_case = OPENSHELL__V1__RELAY_OPEN__TARGET_TCP;
        ro.tcp = &tcp;
    } else {
        ro.target_case = OPENSHELL__V1__RELAY_OPEN__TARGET_SSH;
        ro.ssh = &ssh;
    }
    if (r->service_id != NULL)
        ro.service_id = r->service_id;
    m.payload_case = OPENSHELL__V1__GATEWAY_MESSAGE__PAYLOAD_RELAY_OPEN;
    m.relay_open = &ro;
    session_send(s, &m.base);
    r->state = R_WAIT_CLAIM;
    relay_arm(r, CLAIM_WAIT_MS);
}

static void session_tick(evutil_socket_t fd, short what, void *arg);

static void session_free(struct session *s)
{
    if (s->tick)
        event_free(s->tick);
    free(s);
}

/* Ends |s|: unregisters it (readiness is synced when it was current),
 * finishes its call with |status| when still open, frees it unless the
 * store lookup still holds it. */
static void session_end(struct session *s, int status, const char *msg)
{
    if (s->state == S_ENDED)
        return;
    struct api_sessions *S = s->S;
    bool was_current = s->e != NULL && s->e->cur == s;
    s->state = S_ENDED;
    if (s->tick)
        evtimer_del(s->tick);
    if (was_current) {
        struct sb_entry *e = s->e;
        e->cur = NULL;
        S->live--;
        /* Announced relays go back to waiting: a new session re-sends them. */
        for (struct api_relay *r = e->relays; r; r = r->next)
            if (r->state == R_WAIT_CLAIM)
                r->state = R_WAIT_SESSION;
        log_info("session.disconnected", LF_STR("sandbox_id", s->sandbox_id),
                 LF_STR("session_id", s->session_id), LF_STR("reason", msg ? msg : "stream ended"));
        /* A stopping gateway leaves the records alone: the next one starts
         * with the stored phases and the supervisors reconnect to it. */
        if (!S->draining)
            sync_queue(S, s->sandbox_id);
        s->e = NULL;
        entry_maybe_free(S, e);
    }
    if (s->call != NULL) {
        grpc_call_set_user(s->call, NULL);
        grpc_call_finish(s->call, status, msg);
        s->call = NULL;
    }
    if (!s->lookup_pending)
        session_free(s);
}

static void session_register(struct session *s)
{
    struct api_sessions *S = s->S;
    struct sb_entry *e = entry_get(S, s->sandbox_id, true);
    if (e->cur != NULL) {
        struct session *old = e->cur;
        log_info("session.superseded", LF_STR("sandbox_id", s->sandbox_id),
                 LF_STR("old_session_id", old->session_id));
        /* Not a disconnect: the new session becomes current below, and
         * the sync queued by session_end() sees it. */
        session_end(old, GRPC_STATUS_ABORTED,
                    "superseded by a newer supervisor session of this sandbox");
        e = entry_get(S, s->sandbox_id, true); /* session_end() may have freed it */
    }
    gw_uuid4(s->session_id);
    s->e = e;
    e->cur = s;
    s->state = S_LIVE;
    S->live++;

    Openshell__V1__GatewayMessage m = OPENSHELL__V1__GATEWAY_MESSAGE__INIT;
    Openshell__V1__SessionAccepted acc = OPENSHELL__V1__SESSION_ACCEPTED__INIT;
    acc.session_id = s->session_id;
    acc.heartbeat_interval_secs = HEARTBEAT_S;
    m.payload_case = OPENSHELL__V1__GATEWAY_MESSAGE__PAYLOAD_SESSION_ACCEPTED;
    m.session_accepted = &acc;
    session_send(s, &m.base);

    s->last_rx_us = gw_now_mono_us();
    s->tick = event_new(S->a->base, -1, EV_PERSIST, session_tick, s);
    struct timeval tv = {HEARTBEAT_S, 0};
    evtimer_add(s->tick, &tv);
    log_info("session.connected", LF_STR("sandbox_id", s->sandbox_id),
             LF_STR("session_id", s->session_id), LF_STR("instance_id", s->instance_id),
             LF_STR("peer", grpc_call_peer(s->call)));
    /* Relays that waited for a session (or were announced on the old one). */
    for (struct api_relay *r = e->relays; r; r = r->next)
        if (r->state == R_WAIT_SESSION || r->state == R_WAIT_CLAIM)
            relay_send_open(r, s);
    sync_queue(S, s->sandbox_id);
}

static void session_tick(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    if (gw_now_mono_us() - s->last_rx_us > (uint64_t)SESSION_IDLE_S * 1000000) {
        session_end(s, GRPC_STATUS_UNAVAILABLE, "no message from the supervisor for 50 s");
        return;
    }
    static const uint8_t heartbeat[] = {0x1a, 0x00}; /* GatewayMessage{heartbeat{}} */
    int rv = grpc_call_send_raw(s->call, heartbeat, sizeof(heartbeat));
    (void)rv; /* small control messages; a dead stream ends through on_cancel */
}

static void session_looked_up(const struct store_result *r, void *arg)
{
    struct session *s = arg;
    s->lookup_pending = false;
    if (s->state == S_ENDED) {
        session_free(s);
        return;
    }
    if (r->status != STORE_OK) {
        api_finish_store_error(s->call, r, "sandbox");
        grpc_call_set_user(s->call, NULL);
        s->call = NULL;
        s->state = S_ENDED;
        session_free(s);
        return;
    }
    if (store_ntuples(r) == 0) {
        session_end(s, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    session_register(s);
    grpc_call_pause_recv(s->call, false);
}

static void on_hello(struct session *s, const Openshell__V1__SupervisorHello *h)
{
    const struct api_principal *p = api_call_principal(s->call);
    if (h->sandbox_id == NULL || h->sandbox_id[0] == '\0') {
        session_end(s, GRPC_STATUS_INVALID_ARGUMENT, "sandbox_id is required");
        return;
    }
    if (p->kind != API_PRINCIPAL_SANDBOX) {
        session_end(s, GRPC_STATUS_PERMISSION_DENIED, "this method requires a sandbox principal");
        return;
    }
    if (strcmp(h->sandbox_id, p->sandbox_id) != 0) {
        session_end(s, GRPC_STATUS_PERMISSION_DENIED,
                    "cross-sandbox access denied: the token belongs to another sandbox");
        return;
    }
    if (h->instance_id != NULL && strlen(h->instance_id) > INSTANCE_ID_MAX) {
        session_end(s, GRPC_STATUS_INVALID_ARGUMENT, "instance_id is longer than 128 bytes");
        return;
    }
    snprintf(s->sandbox_id, sizeof(s->sandbox_id), "%s", h->sandbox_id);
    snprintf(s->instance_id, sizeof(s->instance_id), "%s", h->instance_id ? h->instance_id : "");
    s->state = S_CHECKING;
    s->lookup_pending = true;
    grpc_call_pause_recv(s->call, true);
    const char *params[] = {s->sandbox_id};
    api_store_run(s->S->a, &store_sb_get_by_id, params, NULL, session_looked_up, s);
}

static void on_relay_result(struct session *s, const Openshell__V1__RelayOpenResult *res)
{
    struct idnode *n = idmap_find(&s->S->channels, res->channel_id ? res->channel_id : "");
    if (n == NULL)
        return;
    struct api_relay *r = CONTAINER_OF(n, struct api_relay, node);
    if (r->e == NULL || strcmp(r->e->id, s->sandbox_id) != 0)
        return; /* not this sandbox's channel: ignore */
    if (res->success)
        return; /* informational: the RelayStream follows */
    char msg[512];
    snprintf(msg, sizeof(msg), "supervisor relay failed: %s",
             res->error && res->error[0] ? res->error
                                         : "the supervisor could not reach the target");
    relay_fail(r, GRPC_STATUS_UNAVAILABLE, msg);
}

static void cs_message(struct grpc_call *call, void *msg)
{
    struct session *s = grpc_call_user(call);
    const Openshell__V1__SupervisorMessage *m = msg;
    if (s == NULL) {
        s = gw_xcalloc(1, sizeof(*s));
        s->S = sessions(grpc_call_method_arg(call));
        s->call = call;
        s->state = S_HELLO;
        grpc_call_set_user(call, s);
    }
    s->last_rx_us = gw_now_mono_us();
    if (s->state == S_HELLO) {
        if (m->payload_case != OPENSHELL__V1__SUPERVISOR_MESSAGE__PAYLOAD_HELLO) {
            session_end(s, GRPC_STATUS_INVALID_ARGUMENT, "expected SupervisorHello");
            return;
        }
        on_hello(s, m->hello);
        return;
    }
    switch (m->payload_case) {
    case OPENSHELL__V1__SUPERVISOR_MESSAGE__PAYLOAD_RELAY_OPEN_RESULT:
        on_relay_result(s, m->relay_open_result);
        break;
    case OPENSHELL__V1__SUPERVISOR_MESSAGE__PAYLOAD_RELAY_CLOSE:
        log_debug("session.relay_close", LF_STR("sandbox_id", s->sandbox_id),
                  LF_STR("channel_id", m->relay_close->channel_id),
                  LF_STR("reason", m->relay_close->reason));
        break;
    default: /* heartbeats, repeated hellos: liveness only */
        break;
    }
}

static void cs_half_close(struct grpc_call *call)
{
    struct session *s = grpc_call_user(call);
    if (s == NULL) {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "stream closed before hello");
        return;
    }
    if (s->state == S_HELLO) {
        session_end(s, GRPC_STATUS_INVALID_ARGUMENT, "stream closed before hello");
        return;
    }
    session_end(s, GRPC_STATUS_OK, "the supervisor closed the session");
}

static void cs_cancel(struct grpc_call *call)
{
    struct session *s = grpc_call_user(call);
    if (s == NULL)
        return;
    grpc_call_set_user(call, NULL);
    s->call = NULL;
    session_end(s, GRPC_STATUS_CANCELLED, "the session stream ended");
}

void api_session_drop(struct api *a, const char *sandbox_id)
{
    if (a->sessions == NULL)
        return;
    struct sb_entry *e = entry_get(a->sessions, sandbox_id, false);
    if (e == NULL)
        return;
    /* Unclaimed relays fail now; open ones end with the supervisor. */
    struct api_relay *r = e->relays;
    while (r != NULL) {
        struct api_relay *next = r->next;
        if (r->state == R_WAIT_SESSION || r->state == R_WAIT_CLAIM)
            relay_fail(r, GRPC_STATUS_UNAVAILABLE,
                       "supervisor relay failed: the sandbox is stopping");
        r = next;
    }
    e = entry_get(a->sessions, sandbox_id, false);
    if (e != NULL && e->cur != NULL)
        session_end(e->cur, GRPC_STATUS_CANCELLED, "the sandbox is stopping");
}

void api_sessions_end_all(struct api *a)
{
    struct api_sessions *S = a->sessions;
    if (S == NULL)
        return;
    S->draining = true;
    for (size_t i = 0; i < S->entries.nb; i++) {
        struct idnode *n = S->entries.b[i];
        while (n != NULL) {
            struct idnode *next = n->next;
            struct sb_entry *e = CONTAINER_OF(n, struct sb_entry, node);
            /* Ending the session may free the entry (not |next|). */
            if (e->cur != NULL)
                session_end(e->cur, GRPC_STATUS_UNAVAILABLE, "the gateway is shutting down");
            n = next;
        }
    }
}

void api_sessions_free(struct api *a)
{
    struct api_sessions *S = a->sessions;
    if (S == NULL)
        return;
    /* Calls were closed before (their on_cancel ended sessions and
     * relays); what is left are entries kept for queued syncs and relays
     * whose close notification never ran. */
    for (size_t i = 0; i < S->entries.nb; i++) {
        struct idnode *n = S->entries.b[i];
        while (n != NULL) {
            struct idnode *next = n->next;
            struct sb_entry *e = CONTAINER_OF(n, struct sb_entry, node);
            while (e->relays != NULL) {
                struct api_relay *r = e->relays;
                e->relays = r->next;
                r->e = NULL;
                relay_free(r);
            }
            free(e);
            n = next;
        }
    }
    free(S->entries.b);
    free(S->channels.b);
    free(S);
    a->sessions = NULL;
}

/* ---- RelayStream ----------------------------------------------------------------------- */

static void rs_claim(struct grpc_call *call, const Openshell__V1__RelayInit *init)
{
    struct api *a = grpc_call_method_arg(call);
    const struct api_principal *p = api_call_principal(call);
    if (init->channel_id == NULL || init->channel_id[0] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "channel_id is required");
        return;
    }
    struct idnode *n = a->sessions ? idmap_find(&a->sessions->channels, init->channel_id) : NULL;
    if (n == NULL) {
        grpc_call_finish(call, GRPC_STATUS_NOT_FOUND, "unknown or expired relay channel");
        return;
    }
    struct api_relay *r = CONTAINER_OF(n, struct api_relay, node);
    if (p->kind != API_PRINCIPAL_SANDBOX || strcmp(p->sandbox_id, r->e->id) != 0) {
        grpc_call_finish(call, GRPC_STATUS_PERMISSION_DENIED,
                         "cross-sandbox access denied: the relay channel belongs to another "
                         "sandbox");
        return;
    }
    relay_unpend(r);
    evtimer_del(r->timer);
    r->state = R_OPEN;
    r->call = call;
    grpc_call_set_user(call, r);
    log_debug("relay.claimed", LF_STR("sandbox_id", r->e->id), LF_STR("channel_id", r->channel_id));
    r->ops->on_open(r, r->arg);
    if (grpc_call_user(call) != r)
        return; /* closed by the user */
    if (r->paused)
        grpc_call_pause_recv(call, true);
    int rv = GRPC_SEND_OK;
    if (r->early.len > 0) {
        rv = relay_send_data(r, (const uint8_t *)r->early.data, r->early.len);
        gw_buf_free(&r->early);
    }
    if (rv >= 0 && r->shut_wr)
        relay_send_end(r);
    if (rv == GRPC_SEND_OK && r->want_writable) {
        r->want_writable = false;
        r->ops->on_writable(r, r->arg);
    }
}

static void rs_message(struct grpc_call *call, void *msg)
{
    const Openshell__V1__RelayFrame *f = msg;
    struct api_relay *r = grpc_call_user(call);
    if (r == NULL) {
        if (f->payload_case != OPENSHELL__V1__RELAY_FRAME__PAYLOAD_INIT) {
            grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT,
                             "the first RelayStream frame must be init");
            return;
        }
        rs_claim(call, f->init);
        return;
    }
    if (r->eof_in)
        return;
    if (f->payload_case == OPENSHELL__V1__RELAY_FRAME__PAYLOAD_DATA) {
        if (f->data.len > 0)
            r->ops->on_data(r, f->data.data, f->data.len, r->arg);
        return;
    }
    /* A non-data frame after init ends this direction. */
    r->eof_in = true;
    r->ops->on_eof(r, r->arg);
    if (grpc_call_user(call) == r)
        relay_maybe_done(r);
}

static void rs_half_close(struct grpc_call *call)
{
    struct api_relay *r = grpc_call_user(call);
    if (r == NULL) {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT,
                         "the first RelayStream frame must be init");
        return;
    }
    if (r->eof_in)
        return;
    r->eof_in = true;
    r->ops->on_eof(r, r->arg);
    if (grpc_call_user(call) == r)
        relay_maybe_done(r);
}

static void rs_writable(struct grpc_call *call)
{
    struct api_relay *r = grpc_call_user(call);
    if (r == NULL || !r->want_writable)
        return;
    r->want_writable = false;
    r->ops->on_writable(r, r->arg);
}

static void rs_cancel(struct grpc_call *call)
{
    struct api_relay *r = grpc_call_user(call);
    if (r == NULL)
        return;
    grpc_call_set_user(call, NULL);
    r->call = NULL;
    relay_over(r, GRPC_STATUS_UNAVAILABLE, "relay dropped: the supervisor's stream ended",
               GRPC_STATUS_CANCELLED);
}

/* ---- the READY lookup of relay users --------------------------------------------------- */

struct ready_lookup {
    api_ready_cb next;
    void *state;
};

static void ready_looked_up(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct ready_lookup *l = arg;
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "sandbox");
        return;
    }
    if (store_ntuples(r) == 0 || !api_principal_may_read(call, r, 0)) {
        grpc_call_finish(call, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    struct api_sb_row row;
    api_sb_row_parse(&row, r, 0);
    if (row.phase != OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_READY) {
        api_sb_row_clear(&row);
        grpc_call_finish(call, GRPC_STATUS_FAILED_PRECONDITION, "sandbox is not ready");
        return;
    }
    l->next(call, &row, l->state);
    api_sb_row_clear(&row);
}

void api_sandbox_require_ready(struct grpc_call *call, const char *sandbox_id, api_ready_cb next,
                               void *state)
{
    if (sandbox_id == NULL || sandbox_id[0] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "sandbox_id is required");
        return;
    }
    if (!gw_uuid_valid(sandbox_id)) {
        grpc_call_finish(call, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    if (api_store_unavailable(call))
        return;
    struct ready_lookup *l = grpc_call_alloc(call, sizeof(*l));
    l->next = next;
    l->state = state;
    const char *p[] = {sandbox_id};
    api_query(call, &store_sb_get_by_id, p, NULL, ready_looked_up, l);
}

/* ---- ReportMainProcessExit ---------------------------------------------------------------- */

struct exit_op {
    struct api_detached d;
    struct api *a;
    char id[37];
    char *instance_id;
    int32_t code;
};

static void exit_reply(struct exit_op *op, int status, const char *msg)
{
    if (op->d.call != NULL) {
        if (status == GRPC_STATUS_OK) {
            Openshell__V1__ReportMainProcessExitResponse resp =
                OPENSHELL__V1__REPORT_MAIN_PROCESS_EXIT_RESPONSE__INIT;
            grpc_call_reply(op->d.call, &resp.base);
        } else {
            grpc_call_finish(op->d.call, status, msg);
        }
    }
    api_detach_end(op->a, &op->d);
    api_gate_leave(op->a, op->id);
    free(op->instance_id);
    free(op);
}

static void exit_written(const struct store_result *r, void *arg)
{
    struct exit_op *op = arg;
    if (r->status != STORE_OK) {
        log_warn("session.exit_write_failed", LF_STR("sandbox_id", op->id),
                 LF_STR("error", r->error));
        exit_reply(op, GRPC_STATUS_FAILED_PRECONDITION, "could not record the main process exit");
        return;
    }
    exit_reply(op, GRPC_STATUS_OK, NULL);
}

static void exit_read(const struct store_result *r, void *arg)
{
    struct exit_op *op = arg;
    if (r->status != STORE_OK) {
        exit_reply(op, GRPC_STATUS_FAILED_PRECONDITION, "could not read the sandbox");
        return;
    }
    if (store_ntuples(r) == 0) {
        exit_reply(op, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    struct api_sb_row row;
    api_sb_row_parse(&row, r, 0);
    const char *recorded = row.status ? row.status->main_process_instance_id : "";
    bool have_exit = row.status != NULL && row.status->_exit_code_case ==
                                               OPENSHELL__V1__SANDBOX_STATUS___EXIT_CODE_EXIT_CODE;
    const char *ignored = NULL;
    switch (row.phase) {
    case OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_DELETING:
    case OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_STOPPING:
    case OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_STOPPED:
        ignored = "the sandbox is stopping or stopped";
        break;
    case OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_STARTING:
        if (strcmp(recorded, op->instance_id) == 0)
            ignored = "report from the previous instance";
        break;
    default:
        if (recorded[0] != '\0' && strcmp(recorded, op->instance_id) != 0)
            ignored = "stale instance";
        else if (have_exit)
            ignored = "duplicate report";
        break;
    }
    if (ignored != NULL) {
        log_info("session.exit_ignored", LF_STR("sandbox_id", op->id),
                 LF_STR("instance_id", op->instance_id), LF_STR("reason", ignored));
        api_sb_row_clear(&row);
        exit_reply(op, GRPC_STATUS_OK, NULL);
        return;
    }
    char msg[96];
    snprintf(msg, sizeof(msg), "Main process exited with code %d", (int)op->code);
    int phase = OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_ERROR;
    Openshell__V1__SandboxStatus *st =
        api_phase_status_with_ready(row.status, phase, "False", "MainProcessExited", msg);
    set_instance(st, op->instance_id);
    st->_exit_code_case = OPENSHELL__V1__SANDBOX_STATUS___EXIT_CODE_EXIT_CODE;
    st->exit_code = op->code;
    log_info("session.main_process_exited", LF_STR("sandbox_id", op->id),
             LF_STR("instance_id", op->instance_id), LF_INT("exit_code", op->code));
    api_sb_write(op->a, op->id, row.rv, phase, st, row.phase, ACTOR_SUPERVISOR,
                 "main process exited", exit_written, op);
    protobuf_c_message_free_unpacked(&st->base, NULL);
    api_sb_row_clear(&row);
}

static void exit_run(struct api *a, const char *sandbox_id, void *arg)
{
    struct exit_op *op = arg;
    const char *p[] = {op->id};
    api_store_run(a, &store_sb_get_by_id, p, NULL, exit_read, op);
}

static void on_report_exit(struct grpc_call *call, void *msg)
{
    const Openshell__V1__ReportMainProcessExitRequest *req = msg;
    const struct api_principal *p = api_call_principal(call);
    struct api *a = grpc_call_method_arg(call);
    if (req->sandbox_id == NULL || req->sandbox_id[0] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "sandbox_id is required");
        return;
    }
    if (req->instance_id == NULL || req->instance_id[0] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "instance_id is required");
        return;
    }
    if (strlen(req->instance_id) > INSTANCE_ID_MAX) {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT,
                         "instance_id is longer than 128 bytes");
        return;
    }
    if (p->kind != API_PRINCIPAL_SANDBOX || strcmp(p->sandbox_id, req->sandbox_id) != 0) {
        grpc_call_finish(call, GRPC_STATUS_PERMISSION_DENIED,
                         "cross-sandbox access denied: the token belongs to another sandbox");
        return;
    }
    if (api_store_unavailable(call))
        return;
    struct exit_op *op = gw_xcalloc(1, sizeof(*op));
    op->a = a;
    snprintf(op->id, sizeof(op->id), "%s", req->sandbox_id);
    op->instance_id = gw_xstrdup(req->instance_id);
    op->code = req->exit_code;
    api_detach(call, &op->d);
    api_gate_enter(a, op->id, exit_run, op);
}

/* ---- sandbox tokens ---------------------------------------------------------------------- */

char *api_sandbox_token_mint(struct api *a, const char *sandbox_id, uint64_t *exp_s)
{
    *exp_s = 0;
    if (a->opts.jwt == NULL)
        return NULL;
    uint64_t now = (uint64_t)(gw_clock_wall_ms() / 1000);
    return jwt_mint_sandbox(a->opts.jwt, a->opts.jwt_issuer, sandbox_id, now, a->opts.jwt_ttl_secs,
                            exp_s);
}

static void refresh_looked_up(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct api *a = grpc_call_method_arg(call);
    const struct api_principal *p = api_call_principal(call);
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "sandbox");
        return;
    }
    if (store_ntuples(r) == 0) {
        grpc_call_finish(call, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    uint64_t exp;
    char *tok = api_sandbox_token_mint(a, p->sandbox_id, &exp);
    Openshell__V1__RefreshSandboxTokenResponse resp =
        OPENSHELL__V1__REFRESH_SANDBOX_TOKEN_RESPONSE__INIT;
    resp.token = grpc_call_strdup(call, tok);
    resp.expires_at_ms = (int64_t)(exp * 1000);
    explicit_bzero(tok, strlen(tok));
    free(tok);
    grpc_call_reply(call, &resp.base);
}

static void on_refresh(struct grpc_call *call, void *msg)
{
    const Openshell__V1__RefreshSandboxTokenRequest *req = msg;
    struct api *a = grpc_call_method_arg(call);
    const struct api_principal *p = api_call_principal(call);
    if (p->kind != API_PRINCIPAL_SANDBOX) {
        grpc_call_finish(call, GRPC_STATUS_PERMISSION_DENIED,
                         "RefreshSandboxToken requires a gateway-issued sandbox token");
        return;
    }
    if (a->opts.jwt == NULL) {
        grpc_call_finish(call, GRPC_STATUS_UNAVAILABLE, "sandbox token signing is not configured");
        return;
    }
    if (req->n_extension_service_names > 64) {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "at most 64 extension_service_names");
        return;
    }
    if (req->n_extension_service_names > 0) {
        /* No sandbox policy selects extension services on this gateway. */
        grpc_call_finishf(call, GRPC_STATUS_PERMISSION_DENIED,
                          "extension service '%.64s' is not selected by the sandbox policy",
                          req->extension_service_names[0]);
        return;
    }
    if (api_store_unavailable(call))
        return;
    const char *params[] = {p->sandbox_id};
    api_query(call, &store_sb_get_by_id, params, NULL, refresh_looked_up, NULL);
}

/* IssueSandboxToken exchanges a platform workload credential (a
 * Kubernetes projected service-account token upstream) for a sandbox
 * token. The exchange is pluggable (api_opts.token_exchange); with none
 * configured every caller is refused, as a gateway without Kubernetes
 * support does upstream. */
struct issue_op {
    struct api *a;
    struct grpc_call *call; /* NULL once the call was cancelled */
    char sandbox_id[37];
};

/* The user pointer is the op while the exchange or the lookup runs. */
static struct grpc_call *issue_take_call(struct issue_op *op)
{
    struct grpc_call *call = op->call;
    if (call != NULL)
        grpc_call_set_user(call, NULL);
    return call;
}

static void issue_looked_up(const struct store_result *r, void *arg)
{
    struct issue_op *op = arg;
    struct grpc_call *call = issue_take_call(op);
    if (call == NULL) {
        free(op);
        return;
    }
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "sandbox");
    } else if (store_ntuples(r) == 0) {
        grpc_call_finish(call, GRPC_STATUS_NOT_FOUND, "sandbox not found");
    } else {
        uint64_t exp;
        char *tok = api_sandbox_token_mint(op->a, op->sandbox_id, &exp);
        Openshell__V1__IssueSandboxTokenResponse resp =
            OPENSHELL__V1__ISSUE_SANDBOX_TOKEN_RESPONSE__INIT;
        resp.token = grpc_call_strdup(call, tok);
        resp.expires_at_ms = (int64_t)(exp * 1000);
        explicit_bzero(tok, strlen(tok));
        free(tok);
        grpc_call_reply(call, &resp.base);
    }
    free(op);
}

static void issue_exchanged(void *arg, int status, const char *sandbox_id, const char *message)
{
    struct issue_op *op = arg;
    if (op->call == NULL) {
        free(op);
        return;
    }
    if (status != GRPC_STATUS_OK || sandbox_id == NULL || !gw_uuid_valid(sandbox_id)) {
        struct grpc_call *call = issue_take_call(op);
        if (status != GRPC_STATUS_OK)
            grpc_call_finish(call, status, message ? message : "credential exchange failed");
        else
            grpc_call_finish(call, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        free(op);
        return;
    }
    snprintf(op->sandbox_id, sizeof(op->sandbox_id), "%s", sandbox_id);
    const char *params[] = {op->sandbox_id};
    api_store_run(op->a, &store_sb_get_by_id, params, NULL, issue_looked_up, op);
}

static void on_issue(struct grpc_call *call, void *msg)
{
    struct api *a = grpc_call_method_arg(call);
    const struct api_principal *p = api_call_principal(call);
    const struct api_token_exchange *x = a->opts.token_exchange;
    (void)msg;
    if (p->kind == API_PRINCIPAL_SANDBOX) {
        grpc_call_finish(call, GRPC_STATUS_PERMISSION_DENIED,
                         "holders of a gateway sandbox token must use RefreshSandboxToken");
        return;
    }
    if (x == NULL) {
        grpc_call_finish(call, GRPC_STATUS_PERMISSION_DENIED,
                         "IssueSandboxToken requires a platform workload credential, and no "
                         "credential exchange is configured on this gateway");
        return;
    }
    if (a->opts.jwt == NULL) {
        grpc_call_finish(call, GRPC_STATUS_UNAVAILABLE, "sandbox token signing is not configured");
        return;
    }
    const char *authz = grpc_call_header(call, "authorization");
    if (authz == NULL || strncasecmp(authz, "Bearer ", 7) != 0 || authz[7] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_UNAUTHENTICATED, "missing authorization header");
        return;
    }
    struct issue_op *op = gw_xcalloc(1, sizeof(*op));
    op->a = a;
    op->call = call;
    grpc_call_set_user(call, op);
    x->verify(x->ctx, authz + 7, issue_exchanged, op);
}

static void issue_cancel(struct grpc_call *call)
{
    struct issue_op *op = grpc_call_user(call);
    if (op == NULL)
        return;
    grpc_call_set_user(call, NULL);
    op->call = NULL; /* freed by the pending exchange or lookup */
}

/* ---- method table ---------------------------------------------------------------------- */

static const struct grpc_handler connect_handler = {
    .on_message = cs_message,
    .on_half_close = cs_half_close,
    .on_cancel = cs_cancel,
};
static const struct grpc_handler relay_handler = {
    .on_message = rs_message,
    .on_half_close = rs_half_close,
    .on_cancel = rs_cancel,
    .on_writable = rs_writable,
};
static const struct grpc_handler exit_handler = {
    .on_message = on_report_exit,
    .on_cancel = api_detached_cancel,
};
static const struct grpc_handler refresh_handler = {
    .on_message = on_refresh,
    .on_cancel = api_query_cancel,
};
static const struct grpc_handler issue_handler = {
    .on_message = on_issue,
    .on_cancel = issue_cancel,
};

const struct grpc_method api_session_methods[] = {
    {"/openshell.v1.OpenShell/ConnectSupervisor", GRPC_BIDI,
     &openshell__v1__supervisor_message__descriptor, &openshell__v1__gateway_message__descriptor,
     &connect_handler, NULL, API_AUTH_SANDBOX},
    {"/openshell.v1.OpenShell/RelayStream", GRPC_BIDI, &openshell__v1__relay_frame__descriptor,
     &openshell__v1__relay_frame__descriptor, &relay_handler, NULL, API_AUTH_SANDBOX},
    {"/openshell.v1.OpenShell/ReportMainProcessExit", GRPC_UNARY,
     &openshell__v1__report_main_process_exit_request__descriptor,
     &openshell__v1__report_main_process_exit_response__descriptor, &exit_handler, NULL,
     API_AUTH_SANDBOX},
    {"/openshell.v1.OpenShell/RefreshSandboxToken", GRPC_UNARY,
     &openshell__v1__refresh_sandbox_token_request__descriptor,
     &openshell__v1__refresh_sandbox_token_response__descriptor, &refresh_handler, NULL,
     API_AUTH_SANDBOX},
    /* Dual: the platform credential it exchanges is not a sandbox token. */
    {"/openshell.v1.OpenShell/IssueSandboxToken", GRPC_UNARY,
     &openshell__v1__issue_sandbox_token_request__descriptor,
     &openshell__v1__issue_sandbox_token_response__descriptor, &issue_handler, NULL, API_AUTH_DUAL},
    {.path = NULL},
};
