/*
 * events: lifecycle event fan-out and resumable subscriptions.
 *
 * Events are rows of sandbox_events, written by the store in the same
 * transaction as the state change they describe, and numbered afterwards
 * by gw_sequence_events() (dense sequence numbers in commit order; see
 * sql/001_init.sql). The hub:
 *   - runs the sequencer right after this gateway committed events
 *     (events_hub_kick), and once a second for events anyone else wrote
 *     (psql, a gateway that died before sequencing); a 'pending'
 *     notification, if some writer sends one, also triggers it;
 *   - learns new high-water marks from NOTIFY gw_events 'seq:N' (every
 *     replica sees every other replica's events) and fetches the new rows
 *     into a ring of recent events shared by all subscribers;
 *   - serves each subscriber from a cursor: from the ring while its cursor
 *     is inside it, otherwise page by page from PostgreSQL. A subscriber
 *     whose consumer is slow simply stops advancing; when it resumes
 *     behind the ring it reads from the database again. Memory is bounded
 *     by the ring plus one page per subscriber, whatever the subscribers do.
 * Every subscriber therefore sees every event after its cursor exactly
 * once, in sequence order, across restarts of the gateway.
 */
#ifndef GW_EVENTS_H
#define GW_EVENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

struct reactor;
struct store;
struct labels_selector;
struct events_hub;
struct events_sub;

/* One event, immutable and reference counted (shared by the ring, pages
 * and deliveries). Strings are never NULL. */
struct events_event {
    unsigned refs;
    uint64_t seq;
    int64_t created_at_ms;
    const char *sandbox_id; /* "" for workspace events */
    const char *sandbox_name;
    const char *workspace;
    const char *kind;
    const char *prev_phase;
    const char *new_phase;
    const char *actor;
    const char *reason;
    const char *labels_json;  /* JSON object text */
    const char *payload_json; /* JSON object text */
};

/* Returned with one reference from events_event_new (tests, store rows). */
struct events_event *events_event_new(uint64_t seq, int64_t created_at_ms, const char *sandbox_id,
                                      const char *sandbox_name, const char *workspace,
                                      const char *kind, const char *prev_phase,
                                      const char *new_phase, const char *actor, const char *reason,
                                      const char *labels_json, const char *payload_json);
void events_event_ref(struct events_event *ev);
/* Panics on underflow. */
void events_event_unref(struct events_event *ev);

/* ---- ring of recent events (pure; unit tested) -------------------------- */

/* Holds the events with lo < seq <= hi, consecutive. */
struct events_ring {
    struct events_event **slots;
    size_t cap;
    uint64_t lo, hi;
};

void events_ring_init(struct events_ring *r, size_t cap, uint64_t start);
void events_ring_free(struct events_ring *r);
/* Empties the ring and restarts it after |start|. */
void events_ring_reset(struct events_ring *r, uint64_t start);
/* Appends |ev| (takes one reference). |ev->seq| must be hi + 1, else the
 * ring restarts at ev->seq - 1 first (returns 1 then, 0 normally). The
 * oldest event is dropped when full (lo advances). */
int events_ring_push(struct events_ring *r, struct events_event *ev);
/* Borrowed, or NULL when |seq| is not inside (lo, hi]. */
struct events_event *events_ring_get(const struct events_ring *r, uint64_t seq);

/* ---- filters -------------------------------------------------------------- */

struct events_filter {
    const char *workspace;             /* NULL = every workspace */
    const char *sandbox_id;            /* NULL = every sandbox */
    const struct labels_selector *sel; /* NULL or empty = no label filter */
    const char *const *kinds;          /* NULL-terminated; NULL or empty = all kinds */
};

bool events_filter_matches(const struct events_filter *f, const struct events_event *ev);

/* ---- hub -------------------------------------------------------------------- */

struct events_hub_opts {
    size_t ring_size;   /* 0 = 8192 events */
    unsigned page_size; /* catch-up page, 0 = 256 */
};

/* Caller owns; free with events_hub_free() after every subscriber. */
struct events_hub *events_hub_new(struct reactor *r, struct store *s,
                                  const struct events_hub_opts *o);
void events_hub_free(struct events_hub *h);

/* Wire these to the store's callbacks (store_opts on_state / on_notify /
 * on_listen_reset). */
void events_hub_store_state(struct events_hub *h, bool up);
void events_hub_notify(struct events_hub *h, const char *payload);
void events_hub_listen_reset(struct events_hub *h);
/* This gateway committed events: number them soon. */
void events_hub_kick(struct events_hub *h);

/* Highest sequence number this hub has fetched (0 before start). */
uint64_t events_hub_head(const struct events_hub *h);
bool events_hub_ready(const struct events_hub *h);
unsigned events_hub_subscribers(const struct events_hub *h);
/* How far the slowest subscriber is behind: the largest events_hub_head()
 * minus events_sub_position() over the subscriptions, 0 when there are
 * none (for /metrics). */
uint64_t events_hub_max_lag(const struct events_hub *h);

/* ---- subscriptions ------------------------------------------------------------ */

/* Delivers one event (borrowed for the call; take a reference to keep it).
 * Return true to get more now, false when the consumer is congested: the
 * subscription then waits for events_sub_resume(). */
typedef bool (*events_event_cb)(struct events_sub *sub, const struct events_event *ev, void *arg);
/* The subscription delivered everything up to |seq| that existed when it
 * caught up, and is now live. Called once. Optional. */
typedef void (*events_caught_up_cb)(struct events_sub *sub, uint64_t seq, void *arg);

/* Starts delivering events with seq > |after| matching |f| (copied).
 * Callbacks always run from the loop, never inside this call. Caller owns;
 * free with events_sub_free() (safe from inside a callback). */
struct events_sub *events_sub_new(struct events_hub *h, uint64_t after,
                                  const struct events_filter *f, events_event_cb on_event,
                                  events_caught_up_cb on_caught_up, void *arg);
void events_sub_resume(struct events_sub *sub);
void events_sub_free(struct events_sub *sub);
/* Last sequence number delivered or skipped by the filter. */
uint64_t events_sub_position(const struct events_sub *sub);

#endif /* GW_EVENTS_H */
