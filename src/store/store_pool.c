/* The asynchronous libpq pool: connections, pipelined prepared queries,
 * migrations, LISTEN, timeouts and reconnection. */
#include "store/store.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "reactor/reactor.h"
#include "store/store_int.h"

#define MAX_POOL           32
#define MAX_INFLIGHT       64 /* pipelined queries per connection */
#define BACKOFF_MIN_MS     100
#define BACKOFF_MAX_MS     5000
#define CONNECT_TIMEOUT_MS 10000
#define MIGRATION_LOCK     "7236021546"

/* Connection states, forward only within one connection attempt; a broken
 * connection goes back to DOWN through conn_reset(). */
enum conn_state {
    CONN_DOWN,       /* not connected; a retry timer may be armed */
    CONN_CONNECTING, /* PQconnectPoll in progress */
    CONN_SETUP,      /* connected; migrations / LISTEN in simple-query mode */
    CONN_READY,      /* pipeline mode, serving queries */
};

/* Where the head in-flight query is in its result stream. */
enum q_phase {
    Q_PREPARE, /* waiting for the Prepare result, then NULL */
    Q_RESULT,  /* waiting for the query's result(s), then NULL */
    Q_SYNC,    /* waiting for PGRES_PIPELINE_SYNC */
};

struct query {
    struct query *next;
    const struct store_stmt *stmt;
    char **values;
    int *lengths;
    int *formats;
    store_cb cb; /* NULL once answered (timed out) */
    void *arg;
    uint64_t deadline_us;
    enum q_phase phase;
    bool prepare_sent;
    PGresult *res;       /* the query's result, kept until the sync */
    bool commit_unknown; /* no sync result: the commit may not have happened */
    char *error_text;    /* first error seen */
    char sqlstate[6];
};

struct pgconn;
typedef void (*simple_cb)(struct pgconn *c, PGresult *last, const char *err);

struct pgconn {
    struct store *s;
    PGconn *pg;
    int index; /* -1 for the listener */
    enum conn_state state;
    struct event *rev, *wev;
    struct event *retry_ev, *connect_timer;
    unsigned backoff_ms;
    int sock;
    const struct store_stmt **prepared;
    size_t nprepared, capprepared;
    struct query *head, *tail;
    unsigned ninflight;
    simple_cb simple; /* simple-query mode callback (SETUP) */
    PGresult *simple_last;
    char *simple_err;
    int setup_step;
    int *applied; /* migrations already applied (SETUP on the first conn) */
    size_t napplied;
};

struct store {
    struct reactor *r;
    struct event_base *base;
    struct store_opts o;
    char *listen_channel;
    const char **keys, **vals; /* connection parameters */
    struct pgconn conns[MAX_POOL];
    unsigned nconns;
    struct pgconn listener;
    bool has_listener;
    struct query *wait_head, *wait_tail; /* no connection ready yet */
    unsigned nwait;
    bool migrated, up, started, freeing, fatal;
    struct event *tick;        /* timeouts */
    struct event *dispatch_ev; /* deferred send: one flush per iteration */
    char last_error[256];
};

static void conn_connect(struct pgconn *c);
static void conn_reset(struct pgconn *c, const char *why);
static void conn_ready(struct pgconn *c);
static void dispatch_waiting(struct store *s);
static void dispatch_cb(evutil_socket_t fd, short what, void *arg);
static void update_up(struct store *s);

/* ---- queries ---------------------------------------------------------- */

static struct query *query_new(const struct store_stmt *stmt, const char *const *values,
                               const int *lengths, store_cb cb, void *arg, uint64_t deadline)
{
    struct query *q = gw_xcalloc(1, sizeof(*q));
    int n = stmt->nparams;
    q->stmt = stmt;
    q->cb = cb;
    q->arg = arg;
    q->deadline_us = deadline;
    q->values = gw_xcalloc((size_t)n + 1, sizeof(char *));
    q->lengths = gw_xcalloc((size_t)n + 1, sizeof(int));
    q->formats = gw_xcalloc((size_t)n + 1, sizeof(int));
    for (int i = 0; i < n; i++) {
        if (values[i] == NULL)
            continue;
        bool binary = lengths != NULL && lengths[i] >= 0;
        size_t len = binary ? (size_t)lengths[i] : strlen(values[i]);
        q->values[i] = gw_xmalloc(len + 1);
        memcpy(q->values[i], values[i], len);
        q->values[i][len] = '\0';
        q->lengths[i] = (int)len;
        q->formats[i] = binary ? 1 : 0;
    }
    return q;
}

static void query_free(struct query *q)
{
    for (int i = 0; i < q->stmt->nparams; i++)
        free(q->values[i]);
    free(q->values);
    free(q->lengths);
    free(q->formats);
    if (q->res)
        PQclear(q->res);
    free(q->error_text);
    free(q);
}

/* Answers the caller once; the query object may live on until its sync. */
static void query_answer(struct query *q, int status, const char *err)
{
    if (q->cb == NULL)
        return;
    store_cb cb = q->cb;
    q->cb = NULL;
    struct store_result r = {
        .status = status,
        .res = status == STORE_OK ? (struct pg_result *)q->res : NULL,
        .sqlstate = q->sqlstate,
        .error = err ? err : "",
    };
    cb(&r, q->arg);
}

static void query_fail(struct query *q, int status, const char *err)
{
    query_answer(q, status, err);
    query_free(q);
}

/* A write that records events committed: the event hub numbers them now
 * rather than at its next tick. */
static void query_succeed(struct store *s, struct query *q)
{
    bool events = q->stmt->writes_events;
    query_answer(q, STORE_OK, NULL);
    query_free(q);
    if (events && s->o.on_events_written)
        s->o.on_events_written(s, s->o.arg);
}

/* ---- connection plumbing -------------------------------------------------- */

static void on_readable(evutil_socket_t fd, short what, void *arg);
static void on_writable(evutil_socket_t fd, short what, void *arg);

static void conn_events_free(struct pgconn *c)
{
    if (c->rev)
        event_free(c->rev);
    if (c->wev)
        event_free(c->wev);
    c->rev = c->wev = NULL;
    c->sock = -1;
}

/* libpq may switch sockets while connecting; events follow PQsocket(). */
static void conn_watch(struct pgconn *c, bool read, bool write)
{
    int sock = PQsocket(c->pg);
    if (sock != c->sock) {
        conn_events_free(c);
        c->sock = sock;
        c->rev = event_new(c->s->base, sock, EV_READ | EV_PERSIST, on_readable, c);
        c->wev = event_new(c->s->base, sock, EV_WRITE, on_writable, c);
    }
    if (read)
        event_add(c->rev, NULL);
    else
        event_del(c->rev);
    if (write)
        event_add(c->wev, NULL);
}

static void conn_flush(struct pgconn *c)
{
    int rv = PQflush(c->pg);
    if (rv < 0) {
        conn_reset(c, PQerrorMessage(c->pg));
        return;
    }
    if (rv == 1)
        event_add(c->wev, NULL);
}

static void fail_inflight(struct pgconn *c, const char *why)
{
    while (c->head != NULL) {
        struct query *q = c->head;
        c->head = q->next;
        query_fail(q, STORE_ERR_UNAVAILABLE, why);
    }
    c->tail = NULL;
    c->ninflight = 0;
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    conn_connect(arg);
}

/* Closes the connection, fails what was in flight, schedules a reconnect. */
static void conn_reset(struct pgconn *c, const char *why)
{
    struct store *s = c->s;
    bool was_ready = c->state == CONN_READY;
    char msg[256];
    snprintf(msg, sizeof(msg), "database connection lost: %s", why ? why : "");
    for (char *p = msg; *p; p++)
        if (*p == '\n')
            *p = ' ';
    log_warn("store.conn_reset", LF_INT("conn", c->index), LF_STR("reason", msg),
             LF_UINT("retry_ms", c->backoff_ms));
    snprintf(s->last_error, sizeof(s->last_error), "%s", msg);
    conn_events_free(c);
    if (c->connect_timer)
        evtimer_del(c->connect_timer);
    if (c->pg)
        PQfinish(c->pg);
    c->pg = NULL;
    c->nprepared = 0;
    if (c->simple_last)
        PQclear(c->simple_last);
    c->simple_last = NULL;
    c->state = CONN_DOWN;
    fail_inflight(c, msg);
    if (!s->freeing && !s->fatal) {
        struct timeval tv = {c->backoff_ms / 1000, (c->backoff_ms % 1000) * 1000};
        evtimer_add(c->retry_ev, &tv);
        c->backoff_ms = GW_MIN(c->backoff_ms * 2, BACKOFF_MAX_MS);
    }
    if (was_ready)
        update_up(s);
}

static void connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pgconn *c = arg;
    if (c->state == CONN_CONNECTING)
        conn_reset(c, "connect timed out");
}

static void conn_poll_connect(struct pgconn *c)
{
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        conn_watch(c, true, false);
        return;
    case PGRES_POLLING_WRITING:
        conn_watch(c, false, true);
        return;
    case PGRES_POLLING_OK:
        evtimer_del(c->connect_timer);
        conn_watch(c, true, false);
        if (PQsetnonblocking(c->pg, 1) != 0) {
            conn_reset(c, PQerrorMessage(c->pg));
            return;
        }
        c->backoff_ms = BACKOFF_MIN_MS;
        c->state = CONN_SETUP;
        log_debug("store.connected", LF_INT("conn", c->index));
        conn_ready(c);
        return;
    default:
        conn_reset(c, PQerrorMessage(c->pg));
        return;
    }
}

/* Server notices become debug log lines instead of raw stderr text. */
static void notice_cb(void *arg, const char *message)
{
    struct pgconn *c = arg;
    size_t n = strlen(message);
    while (n > 0 && message[n - 1] == '\n')
        n--;
    log_debug("store.notice", LF_INT("conn", c->index), LF_STRN("message", message, n));
}

static void conn_connect(struct pgconn *c)
{
    struct store *s = c->s;
    if (s->freeing)
        return;
    c->pg = PQconnectStartParams(s->keys, s->vals, 0);
    if (c->pg == NULL) {
        conn_reset(c, "out of memory");
        return;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_reset(c, PQerrorMessage(c->pg));
        return;
    }
    PQsetNoticeProcessor(c->pg, notice_cb, c);
    c->state = CONN_CONNECTING;
    c->sock = -1;
    struct timeval tv = {CONNECT_TIMEOUT_MS / 1000, 0};
    evtimer_add(c->connect_timer, &tv);
    conn_poll_connect(c);
}

/* ---- simple-query mode (migrations, LISTEN) ---------------------------------- */

static void simple_send(struct pgconn *c, const char *sql, simple_cb cb)
{
    c->simple = cb;
    free(c->simple_err);
    c->simple_err = NULL;
    if (PQsendQuery(c->pg, sql) != 1) {
        conn_reset(c, PQerrorMessage(c->pg));
        return;
    }
    conn_flush(c);
}

static void simple_read(struct pgconn *c)
{
    while (c->pg != NULL && !PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (r == NULL) {
            simple_cb cb = c->simple;
            PGresult *last = c->simple_last;
            char *err = c->simple_err;
            c->simple = NULL;
            c->simple_last = NULL;
            c->simple_err = NULL;
            if (cb)
                cb(c, last, err);
            if (last)
                PQclear(last);
            free(err);
            return;
        }
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_FATAL_ERROR && c->simple_err == NULL)
            c->simple_err = gw_xstrdup(PQresultErrorMessage(r));
        if (c->simple_last)
            PQclear(c->simple_last);
        c->simple_last = r;
    }
}

/* ---- migrations (first connection only) -------------------------------------- */

static void migrate_step(struct pgconn *c, PGresult *last, const char *err);

static bool migration_applied(const struct pgconn *c, int version)
{
    for (size_t i = 0; i < c->napplied; i++)
        if (c->applied[i] == version)
            return true;
    return false;
}

static void migration_failed(struct pgconn *c, const char *what, const char *err)
{
    struct store *s = c->s;
    snprintf(s->last_error, sizeof(s->last_error), "migration %s failed: %s", what, err);
    for (char *p = s->last_error; *p; p++)
        if (*p == '\n')
            *p = ' ';
    log_error("store.migration_failed", LF_STR("migration", what), LF_STR("error", err));
    s->fatal = true;
    if (s->o.on_state)
        s->o.on_state(s, false, s->o.arg);
}

static void send_next_migration(struct pgconn *c)
{
    for (size_t i = 0; i < store_migrations_count; i++) {
        const struct store_migration *m = &store_migrations[i];
        if (migration_applied(c, m->version))
            continue;
        log_info("store.migration_apply", LF_INT("version", m->version), LF_STR("name", m->name));
        char *sql = gw_xasprintf("BEGIN;\n%s\n;INSERT INTO schema_migrations (version, name) "
                                 "VALUES (%d, '%s');\nCOMMIT;",
                                 m->sql, m->version, m->name);
        c->applied = gw_xrealloc(c->applied, (c->napplied + 1) * sizeof(int));
        c->applied[c->napplied++] = m->version;
        c->setup_step = 3;
        simple_send(c, sql, migrate_step);
        free(sql);
        return;
    }
    c->setup_step = 4;
    simple_send(c, "SELECT pg_advisory_unlock(" MIGRATION_LOCK ")", migrate_step);
}

static void migrate_step(struct pgconn *c, PGresult *last, const char *err)
{
    if (err != NULL) {
        /* A failed migration leaves its transaction aborted; roll back so
         * the session (and its advisory lock) end cleanly. */
        migration_failed(c, c->napplied ? store_migrations[c->napplied - 1].name : "setup", err);
        conn_reset(c, "migration failed");
        return;
    }
    switch (c->setup_step) {
    case 0:
        c->setup_step = 1;
        simple_send(c,
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                    "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
                    migrate_step);
        break;
    case 1:
        c->setup_step = 2;
        simple_send(c, "SELECT version FROM schema_migrations ORDER BY version", migrate_step);
        break;
    case 2:
        c->napplied = 0;
        for (int i = 0; last != NULL && i < PQntuples(last); i++) {
            c->applied = gw_xrealloc(c->applied, (c->napplied + 1) * sizeof(int));
            c->applied[c->napplied++] = atoi(PQgetvalue(last, i, 0));
        }
        send_next_migration(c);
        break;
    case 3:
        send_next_migration(c);
        break;
    default:
        c->s->migrated = true;
        log_info("store.migrated", LF_UINT("migrations", store_migrations_count));
        conn_ready(c);
        /* The rest of the pool connects now that the schema exists. */
        for (unsigned i = 1; i < c->s->nconns; i++)
            if (c->s->conns[i].state == CONN_DOWN)
                conn_connect(&c->s->conns[i]);
        if (c->s->has_listener && c->s->listener.state == CONN_DOWN)
            conn_connect(&c->s->listener);
        break;
    }
}

/* ---- listener ------------------------------------------------------------------- */

static void listen_done(struct pgconn *c, PGresult *last, const char *err)
{
    if (err != NULL) {
        conn_reset(c, err);
        return;
    }
    c->state = CONN_READY;
    log_debug("store.listening", LF_STR("channel", c->s->listen_channel));
    if (c->s->o.on_listen_reset)
        c->s->o.on_listen_reset(c->s, c->s->o.arg);
}

static void listener_read(struct pgconn *c)
{
    PGnotify *n;
    simple_read(c);
    while (c->pg != NULL && (n = PQnotifies(c->pg)) != NULL) {
        if (c->s->o.on_notify)
            c->s->o.on_notify(c->s, n->extra, c->s->o.arg);
        PQfreemem(n);
    }
}

/* ---- pipeline mode --------------------------------------------------------------- */

static bool is_prepared(const struct pgconn *c, const struct store_stmt *st)
{
    for (size_t i = 0; i < c->nprepared; i++)
        if (c->prepared[i] == st)
            return true;
    return false;
}

static void mark_prepared(struct pgconn *c, const struct store_stmt *st)
{
    if (c->nprepared == c->capprepared) {
        c->capprepared = c->capprepared ? c->capprepared * 2 : 32;
        c->prepared = gw_xrealloc(c->prepared, c->capprepared * sizeof(*c->prepared));
    }
    c->prepared[c->nprepared++] = st;
}

static void unmark_prepared(struct pgconn *c, const struct store_stmt *st)
{
    for (size_t i = 0; i < c->nprepared; i++) {
        if (c->prepared[i] == st) {
            c->prepared[i] = c->prepared[--c->nprepared];
            return;
        }
    }
}

static int conn_send(struct pgconn *c, struct query *q)
{
    const struct store_stmt *st = q->stmt;
    if (!is_prepared(c, st)) {
        if (PQsendPrepare(c->pg, st->name, st->sql, st->nparams, NULL) != 1)
            return -1;
        mark_prepared(c, st);
        q->prepare_sent = true;
    }
    q->phase = q->prepare_sent ? Q_PREPARE : Q_RESULT;
    if (PQsendQueryPrepared(c->pg, st->name, st->nparams, (const char *const *)q->values,
                            q->lengths, q->formats, 0) != 1 ||
        PQpipelineSync(c->pg) != 1)
        return -1;
    q->next = NULL;
    if (c->tail)
        c->tail->next = q;
    else
        c->head = q;
    c->tail = q;
    c->ninflight++;
    return 0;
}

/* SQLSTATE classes 08 (connection exception) and 57 (operator
 * intervention, e.g. the server shutting down): not the query's fault. */
static bool sqlstate_is_connection(const char *state)
{
    return strncmp(state, "08", 2) == 0 || strncmp(state, "57", 2) == 0;
}

static void note_error(struct query *q, PGresult *r)
{
    if (q->error_text != NULL)
        return;
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    snprintf(q->sqlstate, sizeof(q->sqlstate), "%s", state ? state : "");
    q->error_text = gw_xstrdup(primary ? primary : PQresultErrorMessage(r));
}

/* Consumes one result of the head query; completes it at its sync. */
static void pipeline_result(struct pgconn *c, PGresult *r)
{
    struct query *q = c->head;
    if (q == NULL) {
        if (r)
            PQclear(r);
        return;
    }
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_EMPTY_QUERY;
    switch (q->phase) {
    case Q_PREPARE:
        if (r == NULL) {
            q->phase = Q_RESULT;
            return;
        }
        if (st == PGRES_FATAL_ERROR) {
            note_error(q, r);
            unmark_prepared(c, q->stmt);
        }
        PQclear(r);
        return;
    case Q_RESULT:
        if (r == NULL) {
            q->phase = Q_SYNC;
            return;
        }
        if (st == PGRES_PIPELINE_SYNC) { /* aborted before the query ran */
            PQclear(r);
            goto complete;
        }
        if (st == PGRES_FATAL_ERROR || st == PGRES_PIPELINE_ABORTED) {
            if (st == PGRES_FATAL_ERROR)
                note_error(q, r);
            PQclear(r);
            return;
        }
        if (q->res)
            PQclear(q->res);
        q->res = r;
        return;
    case Q_SYNC:
        /* The implicit transaction commits at the sync point: only the sync
         * result means it did. Anything else (the server going away between
         * the rows and the commit) leaves the outcome unknown. */
        if (r != NULL && st == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            goto complete;
        }
        if (r != NULL)
            PQclear(r);
        q->commit_unknown = true;
        goto complete;
    }
    return;
complete:
    c->head = q->next;
    if (c->head == NULL)
        c->tail = NULL;
    c->ninflight--;
    if (q->commit_unknown || sqlstate_is_connection(q->sqlstate))
        query_fail(q, STORE_ERR_UNAVAILABLE,
                   "database connection lost before the transaction committed");
    else if (q->error_text)
        query_fail(q, STORE_ERR_QUERY, q->error_text);
    else
        query_succeed(c->s, q);
}

static void pipeline_read(struct pgconn *c)
{
    /* query_fail may run a callback that queues more work or frees the
     * store; PQgetResult is only called while this connection lives. */
    while (c->pg != NULL && c->state == CONN_READY && !PQisBusy(c->pg)) {
        if (c->head == NULL)
            break;
        PGresult *r = PQgetResult(c->pg);
        pipeline_result(c, r);
    }
    dispatch_waiting(c->s);
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct pgconn *c = arg;
    if (c->state == CONN_CONNECTING) {
        conn_poll_connect(c);
        return;
    }
    if (PQconsumeInput(c->pg) != 1) {
        conn_reset(c, PQerrorMessage(c->pg));
        return;
    }
    if (c->index < 0)
        listener_read(c);
    else if (c->state == CONN_SETUP)
        simple_read(c);
    else
        pipeline_read(c);
    if (c->pg != NULL && PQstatus(c->pg) == CONNECTION_BAD)
        conn_reset(c, PQerrorMessage(c->pg));
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    struct pgconn *c = arg;
    if (c->state == CONN_CONNECTING) {
        conn_poll_connect(c);
        return;
    }
    conn_flush(c);
}

/* A connection finished connecting (SETUP): migrations on the first one,
 * LISTEN on the listener, otherwise straight to pipeline mode. */
static void conn_ready(struct pgconn *c)
{
    struct store *s = c->s;
    if (c->index < 0) {
        char *sql = gw_xasprintf("LISTEN \"%s\"", s->listen_channel);
        simple_send(c, sql, listen_done);
        free(sql);
        return;
    }
    if (!s->migrated) {
        c->setup_step = 0;
        simple_send(c, "SELECT pg_advisory_lock(" MIGRATION_LOCK ")", migrate_step);
        return;
    }
    if (PQenterPipelineMode(c->pg) != 1) {
        conn_reset(c, PQerrorMessage(c->pg));
        return;
    }
    c->state = CONN_READY;
    update_up(s);
    dispatch_waiting(s);
}

/* ---- dispatch and timeouts ------------------------------------------------------------ */

static struct pgconn *pick_conn(struct store *s)
{
    struct pgconn *best = NULL;
    for (unsigned i = 0; i < s->nconns; i++) {
        struct pgconn *c = &s->conns[i];
        if (c->state != CONN_READY || c->ninflight >= MAX_INFLIGHT)
            continue;
        if (best == NULL || c->ninflight < best->ninflight)
            best = c;
    }
    return best;
}

static bool send_on(struct pgconn *c, struct query *q)
{
    if (conn_send(c, q) != 0) {
        char *why = gw_xstrdup(PQerrorMessage(c->pg));
        query_fail(q, STORE_ERR_UNAVAILABLE, why);
        conn_reset(c, why);
        free(why);
        return false;
    }
    return true;
}

static void dispatch_waiting(struct store *s)
{
    struct pgconn *c;
    bool touched[MAX_POOL] = {false};
    while (s->wait_head != NULL && (c = pick_conn(s)) != NULL) {
        struct query *q = s->wait_head;
        s->wait_head = q->next;
        if (s->wait_head == NULL)
            s->wait_tail = NULL;
        s->nwait--;
        if (q->cb == NULL) { /* timed out while waiting */
            query_free(q);
            continue;
        }
        if (send_on(c, q))
            touched[c->index] = true;
    }
    for (unsigned i = 0; i < s->nconns; i++)
        if (touched[i] && s->conns[i].state == CONN_READY)
            conn_flush(&s->conns[i]);
}

static void expire(struct query *q, uint64_t now)
{
    for (; q != NULL; q = q->next)
        if (q->cb != NULL && q->deadline_us <= now)
            query_answer(q, STORE_ERR_TIMEOUT, "database query timed out");
}

/* Callers get STORE_ERR_TIMEOUT at their deadline; a connection whose head
 * query is late by another full timeout is presumed stuck and reset (the
 * server-side statement_timeout normally ends such queries first). */
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct store *s = arg;
    uint64_t now = gw_clock_mono_us();
    uint64_t grace = (uint64_t)s->o.query_timeout_ms * 1000;
    expire(s->wait_head, now);
    for (unsigned i = 0; i < s->nconns; i++) {
        struct pgconn *c = &s->conns[i];
        expire(c->head, now);
        if (c->head != NULL && c->head->deadline_us + grace <= now)
            conn_reset(c, "query stuck past its timeout");
    }
}

static void update_up(struct store *s)
{
    bool up = false;
    for (unsigned i = 0; i < s->nconns && !up; i++)
        up = s->conns[i].state == CONN_READY;
    if (up == s->up)
        return;
    s->up = up;
    log_info(up ? "store.up" : "store.down", LF_UINT("pool", s->nconns));
    if (!up) {
        /* Nothing can serve the waiting queries soon: fail them now. */
        while (s->wait_head != NULL) {
            struct query *q = s->wait_head;
            s->wait_head = q->next;
            s->nwait--;
            query_fail(q, STORE_ERR_UNAVAILABLE, "database unavailable");
        }
        s->wait_tail = NULL;
    }
    if (s->o.on_state)
        s->o.on_state(s, up, s->o.arg);
}

int store_query(struct store *s, const struct store_stmt *stmt, const char *const *values,
                const int *lengths, store_cb cb, void *arg)
{
    if (!s->up)
        return STORE_ERR_UNAVAILABLE;
    if (s->nwait >= s->o.max_queue)
        return STORE_ERR_BUSY;
    uint64_t deadline = gw_clock_mono_us() + (uint64_t)s->o.query_timeout_ms * 1000;
    struct query *q = query_new(stmt, values, lengths, cb, arg, deadline);
    q->next = NULL;
    if (s->wait_tail)
        s->wait_tail->next = q;
    else
        s->wait_head = q;
    s->wait_tail = q;
    s->nwait++;
    /* Sent from a deferred event: the callback never runs inside this call,
     * and queries issued in one loop iteration share one pipeline flush. */
    event_active(s->dispatch_ev, EV_WRITE, 0);
    return 0;
}

static void dispatch_cb(evutil_socket_t fd, short what, void *arg)
{
    dispatch_waiting(arg);
}

/* ---- connection string ------------------------------------------------------------------ */

static bool numeric_host(const char *h)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

static void add_param(struct store *s, size_t *n, const char *k, const char *v)
{
    s->keys = gw_xrealloc(s->keys, (*n + 2) * sizeof(char *));
    s->vals = gw_xrealloc(s->vals, (*n + 2) * sizeof(char *));
    s->keys[*n] = gw_xstrdup(k);
    s->vals[*n] = gw_xstrdup(v);
    (*n)++;
    s->keys[*n] = NULL;
    s->vals[*n] = NULL;
}

/* Keeps the loop free of DNS: a host must be a socket directory, a numeric
 * address, "localhost" (pinned to 127.0.0.1) or come with hostaddr=. */
static int parse_conninfo(struct store *s, const char *conninfo, char *err, size_t errlen)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    const char *host = NULL, *hostaddr = NULL, *options = NULL;
    size_t n = 0;
    if (opts == NULL) {
        snprintf(err, errlen, "invalid database URL: %s", perr ? perr : "out of memory");
        PQfreemem(perr);
        return -1;
    }
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (o->val == NULL)
            continue;
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
        else if (strcmp(o->keyword, "options") == 0) {
            options = o->val;
            continue;
        }
        add_param(s, &n, o->keyword, o->val);
    }
    int rv = 0;
    if (host && !hostaddr && host[0] != '/' && host[0] != '@' && !numeric_host(host)) {
        if (strcmp(host, "localhost") == 0) {
            add_param(s, &n, "hostaddr", "127.0.0.1");
        } else {
            snprintf(err, errlen,
                     "database host '%s' would need a DNS lookup on the event loop; use a "
                     "numeric address or add hostaddr=",
                     host);
            rv = -1;
        }
    }
    char *o2 = gw_xasprintf("%s%s-c statement_timeout=%u", options ? options : "",
                            options ? " " : "", s->o.query_timeout_ms);
    add_param(s, &n, "options", o2);
    free(o2);
    add_param(s, &n, "fallback_application_name", "openshell-gateway");
    add_param(s, &n, "keepalives", "1");
    add_param(s, &n, "keepalives_idle", "15");
    add_param(s, &n, "keepalives_interval", "5");
    add_param(s, &n, "keepalives_count", "3");
    PQconninfoFree(opts);
    return rv;
}

/* ---- lifecycle ----------------------------------------------------------------------------- */

static void conn_init(struct store *s, struct pgconn *c, int index)
{
    c->s = s;
    c->index = index;
    c->sock = -1;
    c->backoff_ms = BACKOFF_MIN_MS;
    c->retry_ev = evtimer_new(s->base, retry_cb, c);
    c->connect_timer = evtimer_new(s->base, connect_timeout_cb, c);
}

struct store *store_new(struct reactor *r, const struct store_opts *o, char *err, size_t errlen)
{
    struct store *s = gw_xcalloc(1, sizeof(*s));
    s->r = r;
    s->base = reactor_base(r);
    s->o = *o;
    s->o.conninfo = NULL;
    if (!s->o.pool_size)
        s->o.pool_size = 4;
    if (!s->o.query_timeout_ms)
        s->o.query_timeout_ms = 10000;
    if (!s->o.max_queue)
        s->o.max_queue = 4096;
    s->nconns = GW_MIN(s->o.pool_size, MAX_POOL);
    if (parse_conninfo(s, o->conninfo, err, errlen) != 0) {
        store_free(s);
        return NULL;
    }
    for (unsigned i = 0; i < s->nconns; i++)
        conn_init(s, &s->conns[i], (int)i);
    if (o->listen_channel) {
        s->has_listener = true;
        s->listen_channel = gw_xstrdup(o->listen_channel);
        conn_init(s, &s->listener, -1);
    }
    s->dispatch_ev = event_new(s->base, -1, 0, dispatch_cb, s);
    s->tick = event_new(s->base, -1, EV_PERSIST, tick_cb, s);
    struct timeval tv = {0, 100000};
    event_add(s->tick, &tv);
    return s;
}

void store_start(struct store *s)
{
    if (s->started)
        return;
    s->started = true;
    conn_connect(&s->conns[0]);
}

static void conn_close(struct pgconn *c)
{
    if (c->s == NULL)
        return;
    fail_inflight(c, "database connection closed");
    conn_events_free(c);
    if (c->retry_ev)
        event_free(c->retry_ev);
    if (c->connect_timer)
        event_free(c->connect_timer);
    if (c->pg)
        PQfinish(c->pg);
    if (c->simple_last)
        PQclear(c->simple_last);
    free(c->simple_err);
    free(c->prepared);
    free(c->applied);
}

void store_free(struct store *s)
{
    if (s == NULL)
        return;
    s->freeing = true;
    while (s->wait_head != NULL) {
        struct query *q = s->wait_head;
        s->wait_head = q->next;
        query_fail(q, STORE_ERR_UNAVAILABLE, "database connection closed");
    }
    for (unsigned i = 0; i < s->nconns; i++)
        conn_close(&s->conns[i]);
    if (s->has_listener)
        conn_close(&s->listener);
    if (s->tick)
        event_free(s->tick);
    if (s->dispatch_ev)
        event_free(s->dispatch_ev);
    for (size_t i = 0; s->keys && s->keys[i]; i++) {
        free((char *)s->keys[i]);
        free((char *)s->vals[i]);
    }
    free(s->keys);
    free(s->vals);
    free(s->listen_channel);
    free(s);
}

bool store_is_up(const struct store *s)
{
    return s->up;
}

const char *store_last_error(const struct store *s)
{
    return s->last_error;
}

bool store_is_fatal(const struct store *s)
{
    return s->fatal;
}

unsigned store_pool_size(const struct store *s)
{
    return s->nconns;
}

unsigned store_pool_busy(const struct store *s)
{
    unsigned n = 0;
    for (unsigned i = 0; i < s->nconns; i++)
        n += s->conns[i].ninflight > 0;
    return n;
}

unsigned store_queue_len(const struct store *s)
{
    return s->nwait;
}

/* ---- result helpers ---------------------------------------------------------------------- */

int store_ntuples(const struct store_result *r)
{
    return r->res ? PQntuples((PGresult *)r->res) : 0;
}

const char *store_get(const struct store_result *r, int row, int col)
{
    return PQgetvalue((PGresult *)r->res, row, col);
}

bool store_is_null(const struct store_result *r, int row, int col)
{
    return PQgetisnull((PGresult *)r->res, row, col) != 0;
}

int64_t store_get_i64(const struct store_result *r, int row, int col)
{
    return strtoll(PQgetvalue((PGresult *)r->res, row, col), NULL, 10);
}

uint8_t *store_get_bytea(const struct store_result *r, int row, int col, size_t *len)
{
    size_t n = 0;
    unsigned char *p =
        PQunescapeBytea((const unsigned char *)PQgetvalue((PGresult *)r->res, row, col), &n);
    if (p == NULL) {
        *len = 0;
        return gw_xcalloc(1, 1);
    }
    uint8_t *out = gw_xmalloc(n + 1);
    memcpy(out, p, n);
    PQfreemem(p);
    *len = n;
    return out;
}

bool store_is_unique_violation(const struct store_result *r)
{
    return r->status == STORE_ERR_QUERY && strcmp(r->sqlstate, "23505") == 0;
}

bool store_is_raise_exception(const struct store_result *r)
{
    return r->status == STORE_ERR_QUERY && strcmp(r->sqlstate, "P0001") == 0;
}
