/* Lifecycle event fan-out: the ring, the sequencer and fetch loop, and
 * cursor-driven subscriptions. See events.h for the design. */
#include "events/events.h"

#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "labels/labels.h"
#include "reactor/reactor.h"
#include "store/store.h"

#define FETCH_LIMIT     "1000"
#define SEQUENCER_BATCH 10000 /* LIMIT in gw_sequence_events() */

/* ---- events -------------------------------------------------------------- */

struct events_event *events_event_new(uint64_t seq, int64_t created_at_ms, const char *sandbox_id,
                                      const char *sandbox_name, const char *workspace,
                                      const char *kind, const char *prev_phase,
                                      const char *new_phase, const char *actor, const char *reason,
                                      const char *labels_json, const char *payload_json)
{
    const char *src[] = {sandbox_id, sandbox_name, workspace, kind,        prev_phase,
                         new_phase,  actor,        reason,    labels_json, payload_json};
    size_t len[GW_ARRAY_LEN(src)], total = 0;
    for (size_t i = 0; i < GW_ARRAY_LEN(src); i++) {
        len[i] = src[i] ? strlen(src[i]) : 0;
        total += len[i] + 1;
    }
    /* One allocation: the struct, then the strings. */
    struct events_event *ev = gw_xmalloc(sizeof(*ev) + total);
    char *p = (char *)(ev + 1);
    const char **dst[] = {&ev->sandbox_id,  &ev->sandbox_name, &ev->workspace, &ev->kind,
                          &ev->prev_phase,  &ev->new_phase,    &ev->actor,     &ev->reason,
                          &ev->labels_json, &ev->payload_json};
    for (size_t i = 0; i < GW_ARRAY_LEN(src); i++) {
        memcpy(p, src[i] ? src[i] : "", len[i] + 1);
        *dst[i] = p;
        p += len[i] + 1;
    }
    ev->refs = 1;
    ev->seq = seq;
    ev->created_at_ms = created_at_ms;
    return ev;
}

void events_event_ref(struct events_event *ev)
{
    ev->refs++;
}

void events_event_unref(struct events_event *ev)
{
    if (ev == NULL)
        return;
    GW_ASSERT(ev->refs > 0);
    if (--ev->refs == 0)
        free(ev);
}

/* ---- ring -------------------------------------------------------------------- */

void events_ring_init(struct events_ring *r, size_t cap, uint64_t start)
{
    r->cap = cap ? cap : 1;
    r->slots = gw_xcalloc(r->cap, sizeof(*r->slots));
    r->lo = r->hi = start;
}

void events_ring_reset(struct events_ring *r, uint64_t start)
{
    for (uint64_t s = r->lo + 1; s <= r->hi; s++) {
        events_event_unref(r->slots[s % r->cap]);
        r->slots[s % r->cap] = NULL;
    }
    r->lo = r->hi = start;
}

void events_ring_free(struct events_ring *r)
{
    events_ring_reset(r, 0);
    free(r->slots);
    r->slots = NULL;
}

int events_ring_push(struct events_ring *r, struct events_event *ev)
{
    int restarted = 0;
    if (ev->seq != r->hi + 1) {
        events_ring_reset(r, ev->seq - 1);
        restarted = 1;
    }
    if (r->hi - r->lo == r->cap) {
        r->lo++;
        events_event_unref(r->slots[r->lo % r->cap]);
        r->slots[r->lo % r->cap] = NULL;
    }
    r->hi++;
    r->slots[r->hi % r->cap] = ev;
    return restarted;
}

struct events_event *events_ring_get(const struct events_ring *r, uint64_t seq)
{
    if (seq <= r->lo || seq > r->hi)
        return NULL;
    return r->slots[seq % r->cap];
}

/* ---- filter ---------------------------------------------------------------------- */

bool events_filter_matches(const struct events_filter *f, const struct events_event *ev)
{
    if (f->workspace && strcmp(f->workspace, ev->workspace) != 0)
        return false;
    if (f->sandbox_id && strcmp(f->sandbox_id, ev->sandbox_id) != 0)
        return false;
    if (f->kinds && f->kinds[0]) {
        bool hit = false;
        for (size_t i = 0; f->kinds[i] && !hit; i++)
            hit = strcmp(f->kinds[i], ev->kind) == 0;
        if (!hit)
            return false;
    }
    if (f->sel && !labels_selector_matches_text(f->sel, ev->labels_json))
        return false;
    return true;
}

/* ---- hub --------------------------------------------------------------------------- */

struct events_sub {
    struct events_hub *h;
    struct events_sub *prev, *next;
    char *workspace, *sandbox_id;
    char **kinds;
    struct events_filter f;
    events_event_cb on_event;
    events_caught_up_cb on_caught_up;
    void *arg;
    uint64_t pos;
    bool paused;    /* consumer congested */
    bool querying;  /* a catch-up page query is in flight */
    bool dead;      /* freed while pumping or querying: free later */
    bool caught_up; /* on_caught_up delivered */
    int pumping;
    uint64_t query_hi; /* hub head when the page query was sent */
    struct events_event **page;
    size_t page_n, page_i;
};

struct events_hub {
    struct reactor *r;
    struct store *s;
    struct events_hub_opts o;
    struct events_ring ring;
    bool ready;     /* ring positioned at the stored head */
    bool starting;  /* the initial ev_last query is in flight */
    uint64_t known; /* highest sequence announced or returned */
    bool seq_running, seq_again;
    bool fetching;
    struct events_sub subs; /* sentinel */
    unsigned nsubs;
    struct event *tick;
    struct event *pump_ev; /* deferred pumping of live subscribers */
};

static void hub_fetch(struct events_hub *h);
static void sub_pump(struct events_sub *sub);

static struct events_event *event_from_row(const struct store_result *r, int row)
{
    return events_event_new(
        (uint64_t)store_get_i64(r, row, STORE_EV_SEQ), store_get_i64(r, row, STORE_EV_CREATED_MS),
        store_get(r, row, STORE_EV_SANDBOX_ID), store_get(r, row, STORE_EV_SANDBOX_NAME),
        store_get(r, row, STORE_EV_WORKSPACE), store_get(r, row, STORE_EV_KIND),
        store_get(r, row, STORE_EV_PREV), store_get(r, row, STORE_EV_NEW),
        store_get(r, row, STORE_EV_ACTOR), store_get(r, row, STORE_EV_REASON),
        store_get(r, row, STORE_EV_LABELS), store_get(r, row, STORE_EV_PAYLOAD));
}

/* Live subscribers are pumped from a deferred event so delivery never runs
 * inside a store callback chain that is still updating the ring. */
static void schedule_pump(struct events_hub *h)
{
    event_active(h->pump_ev, EV_WRITE, 0);
}

static void pump_cb(evutil_socket_t fd, short what, void *arg)
{
    struct events_hub *h = arg;
    struct events_sub *sub = h->subs.next;
    while (sub != &h->subs) {
        struct events_sub *next = sub->next;
        if (!sub->paused && !sub->querying)
            sub_pump(sub);
        sub = next;
    }
}

static void fetch_done(const struct store_result *r, void *arg)
{
    struct events_hub *h = arg;
    h->fetching = false;
    if (r->status != STORE_OK) {
        log_warn("events.fetch_failed", LF_STR("error", r->error));
        return; /* the tick retries */
    }
    int n = store_ntuples(r);
    for (int i = 0; i < n; i++) {
        struct events_event *ev = event_from_row(r, i);
        if (events_ring_push(&h->ring, ev))
            log_warn("events.ring_restarted", LF_UINT("seq", ev->seq));
        if (ev->seq > h->known)
            h->known = ev->seq;
    }
    if (n > 0)
        schedule_pump(h);
    if (n >= atoi(FETCH_LIMIT) || h->known > h->ring.hi)
        hub_fetch(h);
}

static void hub_fetch(struct events_hub *h)
{
    if (h->fetching || !h->ready)
        return;
    char after[24];
    snprintf(after, sizeof(after), "%llu", (unsigned long long)h->ring.hi);
    const char *params[] = {after, FETCH_LIMIT};
    if (store_query(h->s, &store_ev_fetch, params, NULL, fetch_done, h) == 0)
        h->fetching = true;
}

static void run_sequencer(struct events_hub *h);

static void sequence_done(const struct store_result *r, void *arg)
{
    struct events_hub *h = arg;
    h->seq_running = false;
    if (r->status == STORE_OK && store_ntuples(r) == 1) {
        uint64_t last = (uint64_t)store_get_i64(r, 0, 0);
        /* A run numbers at most 10000 events (gw_sequence_events); a full
         * run means a backlog (rows written without a kick): go again now
         * instead of waiting for the tick. */
        if (last >= h->known + SEQUENCER_BATCH)
            h->seq_again = true;
        if (last > h->known)
            h->known = last;
        if (h->known > h->ring.hi)
            hub_fetch(h);
    } else if (r->status != STORE_OK) {
        log_warn("events.sequence_failed", LF_STR("error", r->error));
    }
    if (h->seq_again) {
        h->seq_again = false;
        run_sequencer(h);
    }
}

static void run_sequencer(struct events_hub *h)
{
    if (h->seq_running) {
        h->seq_again = true;
        return;
    }
    if (store_query(h->s, &store_ev_sequence, NULL, NULL, sequence_done, h) == 0)
        h->seq_running = true;
}

static void start_done(const struct store_result *r, void *arg)
{
    struct events_hub *h = arg;
    h->starting = false;
    if (r->status != STORE_OK || store_ntuples(r) != 1) {
        log_warn("events.start_failed", LF_STR("error", r->error));
        return;
    }
    uint64_t last = (uint64_t)store_get_i64(r, 0, 0);
    events_ring_reset(&h->ring, last);
    h->known = GW_MAX(h->known, last);
    h->ready = true;
    log_info("events.ready", LF_UINT("head", last));
    run_sequencer(h);
    hub_fetch(h);
    schedule_pump(h);
}

static void hub_start(struct events_hub *h)
{
    if (h->ready || h->starting || !store_is_up(h->s))
        return;
    if (store_query(h->s, &store_ev_last, NULL, NULL, start_done, h) == 0)
        h->starting = true;
}

/* Once a second: number stray pending events (a writer that died before
 * kicking), fetch what a lost NOTIFY did not announce, retry failed
 * catch-up pages. */
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct events_hub *h = arg;
    if (!store_is_up(h->s))
        return;
    if (!h->ready) {
        hub_start(h);
        return;
    }
    run_sequencer(h);
    hub_fetch(h);
    schedule_pump(h);
}

struct events_hub *events_hub_new(struct reactor *r, struct store *s,
                                  const struct events_hub_opts *o)
{
    struct events_hub *h = gw_xcalloc(1, sizeof(*h));
    h->r = r;
    h->s = s;
    h->o = *o;
    if (!h->o.ring_size)
        h->o.ring_size = 8192;
    if (!h->o.page_size)
        h->o.page_size = 256;
    events_ring_init(&h->ring, h->o.ring_size, 0);
    h->subs.next = h->subs.prev = &h->subs;
    h->tick = event_new(reactor_base(r), -1, EV_PERSIST, tick_cb, h);
    struct timeval tv = {1, 0};
    event_add(h->tick, &tv);
    h->pump_ev = event_new(reactor_base(r), -1, 0, pump_cb, h);
    return h;
}

void events_hub_free(struct events_hub *h)
{
    if (h == NULL)
        return;
    GW_ASSERT(h->nsubs == 0);
    event_free(h->tick);
    event_free(h->pump_ev);
    events_ring_free(&h->ring);
    free(h);
}

void events_hub_store_state(struct events_hub *h, bool up)
{
    if (up) {
        hub_start(h);
        if (h->ready) {
            run_sequencer(h);
            hub_fetch(h);
        }
    }
}

void events_hub_notify(struct events_hub *h, const char *payload)
{
    if (strncmp(payload, "seq:", 4) == 0) {
        uint64_t n = strtoull(payload + 4, NULL, 10);
        if (n > h->known)
            h->known = n;
        if (h->known > h->ring.hi)
            hub_fetch(h);
    } else if (strcmp(payload, "pending") == 0) {
        run_sequencer(h);
    }
}

void events_hub_listen_reset(struct events_hub *h)
{
    /* Notifications may have been missed while LISTEN was down. */
    if (h->ready) {
        run_sequencer(h);
        hub_fetch(h);
    }
}

void events_hub_kick(struct events_hub *h)
{
    if (h->ready)
        run_sequencer(h);
}

uint64_t events_hub_head(const struct events_hub *h)
{
    return h->ring.hi;
}

bool events_hub_ready(const struct events_hub *h)
{
    return h->ready;
}

unsigned events_hub_subscribers(const struct events_hub *h)
{
    return h->nsubs;
}

uint64_t events_hub_max_lag(const struct events_hub *h)
{
    uint64_t lag = 0;
    for (const struct events_sub *sub = h->subs.next; sub != &h->subs; sub = sub->next) {
        if (h->ring.hi > sub->pos)
            lag = GW_MAX(lag, h->ring.hi - sub->pos);
    }
    return lag;
}

/* ---- subscriptions ---------------------------------------------------------------- */

static void page_drop(struct events_sub *sub)
{
    for (size_t i = sub->page_i; i < sub->page_n; i++)
        events_event_unref(sub->page[i]);
    free(sub->page);
    sub->page = NULL;
    sub->page_n = sub->page_i = 0;
}

static void sub_destroy(struct events_sub *sub)
{
    page_drop(sub);
    free(sub->workspace);
    free(sub->sandbox_id);
    for (size_t i = 0; sub->kinds && sub->kinds[i]; i++)
        free(sub->kinds[i]);
    free(sub->kinds);
    free(sub);
}

static void page_done(const struct store_result *r, void *arg)
{
    struct events_sub *sub = arg;
    sub->querying = false;
    if (sub->dead) {
        sub_destroy(sub);
        return;
    }
    if (r->status != STORE_OK) {
        log_warn("events.page_failed", LF_STR("error", r->error));
        return; /* the hub tick pumps us again */
    }
    int n = store_ntuples(r);
    if (n == 0) {
        /* No (matching) event between the cursor and what the database held
         * when the query ran, which is at least the hub head then: skip to
         * there, not to the ring's current start, which may have moved past
         * events this query could not see. */
        if (sub->pos < sub->query_hi)
            sub->pos = sub->query_hi;
    } else {
        sub->page = gw_xcalloc((size_t)n, sizeof(*sub->page));
        for (int i = 0; i < n; i++)
            sub->page[i] = event_from_row(r, i);
        sub->page_n = (size_t)n;
        sub->page_i = 0;
    }
    sub_pump(sub);
}

static void sub_query_page(struct events_sub *sub)
{
    char after[24], limit[16];
    snprintf(after, sizeof(after), "%llu", (unsigned long long)sub->pos);
    snprintf(limit, sizeof(limit), "%u", sub->h->o.page_size);
    const char *params[] = {after, limit, sub->workspace};
    const struct store_stmt *st = sub->workspace ? &store_ev_fetch_ws : &store_ev_fetch;
    sub->query_hi = sub->h->ring.hi;
    if (store_query(sub->h->s, st, params, NULL, page_done, sub) == 0)
        sub->querying = true;
}

/* Delivers |ev| if it matches; advances the cursor either way. Returns
 * false when the consumer asked to pause or freed the subscription. */
static bool sub_deliver(struct events_sub *sub, struct events_event *ev)
{
    sub->pos = ev->seq;
    if (!events_filter_matches(&sub->f, ev))
        return true;
    if (!sub->on_event(sub, ev, sub->arg))
        sub->paused = true;
    return !sub->paused && !sub->dead;
}

static void sub_step(struct events_sub *sub)
{
    struct events_hub *h = sub->h;
    while (!sub->paused && !sub->dead && !sub->querying) {
        if (sub->page_i < sub->page_n) {
            struct events_event *ev = sub->page[sub->page_i++];
            bool more = sub_deliver(sub, ev);
            events_event_unref(ev);
            if (!more)
                return;
            continue;
        }
        page_drop(sub);
        if (!h->ready)
            return;
        if (sub->pos >= h->ring.hi) {
            if (!sub->caught_up && h->known <= h->ring.hi) {
                sub->caught_up = true;
                if (sub->on_caught_up)
                    sub->on_caught_up(sub, h->ring.hi, sub->arg);
            }
            return;
        }
        if (sub->pos >= h->ring.lo) {
            if (!sub_deliver(sub, events_ring_get(&h->ring, sub->pos + 1)))
                return;
            continue;
        }
        sub_query_page(sub);
        return;
    }
}

static void sub_pump(struct events_sub *sub)
{
    sub->pumping++;
    sub_step(sub);
    sub->pumping--;
    if (sub->dead && sub->pumping == 0 && !sub->querying)
        sub_destroy(sub);
}

struct events_sub *events_sub_new(struct events_hub *h, uint64_t after,
                                  const struct events_filter *f, events_event_cb on_event,
                                  events_caught_up_cb on_caught_up, void *arg)
{
    struct events_sub *sub = gw_xcalloc(1, sizeof(*sub));
    sub->h = h;
    sub->pos = after;
    sub->on_event = on_event;
    sub->on_caught_up = on_caught_up;
    sub->arg = arg;
    if (f->workspace)
        sub->workspace = gw_xstrdup(f->workspace);
    if (f->sandbox_id)
        sub->sandbox_id = gw_xstrdup(f->sandbox_id);
    size_t nk = 0;
    while (f->kinds && f->kinds[nk])
        nk++;
    if (nk > 0) {
        sub->kinds = gw_xcalloc(nk + 1, sizeof(char *));
        for (size_t i = 0; i < nk; i++)
            sub->kinds[i] = gw_xstrdup(f->kinds[i]);
    }
    sub->f.workspace = sub->workspace;
    sub->f.sandbox_id = sub->sandbox_id;
    sub->f.kinds = (const char *const *)sub->kinds;
    sub->f.sel = f->sel;
    sub->next = h->subs.next;
    sub->prev = &h->subs;
    h->subs.next->prev = sub;
    h->subs.next = sub;
    h->nsubs++;
    schedule_pump(h);
    return sub;
}

void events_sub_resume(struct events_sub *sub)
{
    if (!sub->paused)
        return;
    sub->paused = false;
    if (sub->pumping == 0)
        sub_pump(sub);
}

void events_sub_free(struct events_sub *sub)
{
    if (sub == NULL || sub->dead)
        return;
    sub->prev->next = sub->next;
    sub->next->prev = sub->prev;
    sub->h->nsubs--;
    sub->dead = true;
    if (sub->pumping == 0 && !sub->querying)
        sub_destroy(sub);
}

uint64_t events_sub_position(const struct events_sub *sub)
{
    return sub->pos;
}
