#include "reactor/reactor.h"
#include "reactor/reactor_int.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

struct reactor_timer {
    struct reactor *r;
    struct event *ev; /* re-assigned on each arm to switch EV_PERSIST */
    reactor_timer_cb cb;
    void *arg;
    LIST_ENTRY(reactor_timer) link;
};

struct reactor_signal {
    int signo;
    struct event *ev;
    reactor_signal_cb cb;
    void *arg;
    LIST_ENTRY(reactor_signal) link;
};

/* ---- loop ------------------------------------------------------------- */

/* libevent's own complaints become log lines like any other. */
static void on_libevent_log(int severity, const char *msg)
{
    if (severity >= EVENT_LOG_ERR)
        log_error("libevent", LF_STR("msg", msg));
    else if (severity == EVENT_LOG_WARN)
        log_warn("libevent", LF_STR("msg", msg));
    else
        log_debug("libevent", LF_STR("msg", msg));
}

struct reactor *reactor_new(void)
{
    struct reactor *r;

    /* A peer that goes away mid-write must show up as EPIPE on that one
     * connection, not kill the whole gateway. */
    signal(SIGPIPE, SIG_IGN);
    event_set_log_callback(on_libevent_log);

    r = gw_xcalloc(1, sizeof(*r));
    /* libevent would measure every new timeout from the time it cached
     * when the loop iteration began, so a timer armed late in a busy
     * iteration fires early (a 50 ms Delay measured 48 ms). Reading the
     * clock per timed event_add is one vDSO call. */
    struct event_config *cfg = event_config_new();
    if (cfg != NULL) {
        event_config_set_flag(cfg, EVENT_BASE_FLAG_NO_CACHE_TIME);
        r->base = event_base_new_with_config(cfg);
        event_config_free(cfg);
    }
    if (r->base == NULL) {
        log_error("reactor.base_failed");
        free(r);
        return NULL;
    }
    LIST_INIT(&r->listeners);
    LIST_INIT(&r->connects);
    LIST_INIT(&r->timers);
    LIST_INIT(&r->signals);
    LIST_INIT(&r->children);
    return r;
}

static void signals_free_all(struct reactor *r)
{
    struct reactor_signal *s;

    while ((s = LIST_FIRST(&r->signals)) != NULL) {
        LIST_REMOVE(s, link);
        event_free(s->ev);
        free(s);
    }
}

void reactor_free(struct reactor *r)
{
    struct reactor_timer *t;

    if (r == NULL)
        return;
    /* Everything below holds events on the base: release it all first. */
    reactor_connects_free_all(r);
    reactor_listeners_free_all(r);
    reactor_children_free_all(r);
    while ((t = LIST_FIRST(&r->timers)) != NULL)
        reactor_timer_free(t);
    signals_free_all(r);
    event_base_free(r->base);
    free(r);
}

struct event_base *reactor_base(struct reactor *r)
{
    return r->base;
}

/*
 * libevent 2.1 has no hook between the wait and the callbacks, so the loop
 * runs one iteration at a time (EVLOOP_ONCE) and invalidates the cached
 * clock before each wait: the first gw_now_*() after waking reads the clock
 * once, later ones in the same iteration reuse it.
 */
int reactor_run(struct reactor *r)
{
    int rc = 0;

    while (!r->stop) {
        int n;

        gw_time_invalidate();
        n = event_base_loop(r->base, EVLOOP_ONCE);
        if (n < 0) {
            log_error("reactor.loop_failed");
            rc = REACTOR_ERR_SYS;
            break;
        }
        if (n == 1)
            break; /* nothing is registered, so nothing could ever wake us */
    }
    r->stop = false;
    return rc;
}

void reactor_stop(struct reactor *r)
{
    r->stop = true;
}

uint64_t reactor_next_conn_id(struct reactor *r)
{
    return ++r->last_conn_id;
}

/* ---- timers ------------------------------------------------------------ */

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct reactor_timer *t = arg;

    /* The callback may free |t|: nothing touches it afterwards. */
    t->cb(t, t->arg);
}

struct reactor_timer *reactor_timer_new(struct reactor *r, reactor_timer_cb cb, void *arg)
{
    struct reactor_timer *t = gw_xcalloc(1, sizeof(*t));

    t->r = r;
    t->cb = cb;
    t->arg = arg;
    t->ev = event_new(r->base, -1, 0, on_timer, t);
    if (t->ev == NULL)
        gw_panic(__FILE__, __LINE__, "out of memory");
    LIST_INSERT_HEAD(&r->timers, t, link);
    return t;
}

static void timer_schedule(struct reactor_timer *t, uint64_t ms, short flags)
{
    struct timeval tv = {
        .tv_sec = (time_t)(ms / 1000),
        .tv_usec = (suseconds_t)(ms % 1000) * 1000,
    };

    /* EV_PERSIST can only change through event_assign(), which requires the
     * event to be neither pending nor active: delete it first. */
    event_del(t->ev);
    event_assign(t->ev, t->r->base, -1, flags, on_timer, t);
    event_add(t->ev, &tv);
}

void reactor_timer_arm(struct reactor_timer *t, uint64_t ms)
{
    timer_schedule(t, ms, 0);
}

void reactor_timer_arm_periodic(struct reactor_timer *t, uint64_t ms)
{
    /* A zero period would make the loop spin without ever blocking. */
    timer_schedule(t, ms > 0 ? ms : 1, EV_PERSIST);
}

void reactor_timer_disarm(struct reactor_timer *t)
{
    event_del(t->ev);
}

bool reactor_timer_armed(const struct reactor_timer *t)
{
    return event_pending(t->ev, EV_TIMEOUT, NULL) != 0;
}

void reactor_timer_free(struct reactor_timer *t)
{
    if (t == NULL)
        return;
    LIST_REMOVE(t, link);
    event_free(t->ev);
    free(t);
}

/* ---- signals ------------------------------------------------------------ */

static void on_signal(evutil_socket_t signo, short what, void *arg)
{
    struct reactor_signal *s = arg;

    s->cb((int)signo, s->arg);
}

int reactor_on_signal(struct reactor *r, int signo, reactor_signal_cb cb, void *arg)
{
    struct reactor_signal *s;

    LIST_FOREACH(s, &r->signals, link)
    {
        if (s->signo == signo) {
            s->cb = cb;
            s->arg = arg;
            return 0;
        }
    }
    s = gw_xcalloc(1, sizeof(*s));
    s->signo = signo;
    s->cb = cb;
    s->arg = arg;
    s->ev = evsignal_new(r->base, signo, on_signal, s);
    if (s->ev == NULL || evsignal_add(s->ev, NULL) != 0) {
        log_error("reactor.signal_failed", LF_INT("signo", signo));
        if (s->ev != NULL)
            event_free(s->ev);
        free(s);
        return REACTOR_ERR_SYS;
    }
    LIST_INSERT_HEAD(&r->signals, s, link);
    return 0;
}
