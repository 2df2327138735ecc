/*
 * store_embedded: a private PostgreSQL cluster under the state directory,
 * for a gateway started without a database URL.
 *
 * Layout under |state_dir|/pg (all 0700): data/ (the cluster), run/ (the
 * only socket: no TCP listener), log/postgresql.log (initdb's and the
 * server's output, appended).
 *
 * Every step is a child process or a socket event on the loop:
 *
 *   prepare (directories, owner)  --  next loop iteration after start()
 *   [rm -rf data]                 --  an initdb was interrupted last time
 *   [initdb]                      --  first run (no data/PG_VERSION)
 *   postgres                      --  runs until stop()
 *   connect every 100 ms          --  non-blocking libpq, up to 30 s
 *   SELECT / CREATE DATABASE      --  on that admin connection
 *   cb(ok)
 *
 * As root, initdb and postgres run as the `postgres` user (initdb refuses
 * root), which then owns pg/ and everything below it.
 */
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "reactor/reactor.h"

#define EMB_OS_USER          "postgres"  /* who runs the server when we are root */
#define EMB_DB_USER          "openshell" /* bootstrap superuser (initdb -U) */
#define EMB_DB_NAME          "openshell"
#define EMB_SOCKET_NAME      ".s.PGSQL.5432"
#define EMB_POLL_MS          100
#define EMB_READY_TIMEOUT_MS 30000
#define EMB_GIVE_UP_MS       10000 /* a server we gave up on gets this long before SIGKILL */
#define EMB_TAIL_BYTES       4096  /* of the log, read for error messages */
#define EMB_TAIL_LINES       5
#define EMB_MAX_GROUPS       64

/* Forward only; FAILED can follow any state. */
enum emb_state {
    EMB_PREPARING, /* start() returned; prepare runs on the next iteration */
    EMB_CLEANING,  /* rm -rf of a data dir left by an interrupted initdb */
    EMB_INITDB,    /* initdb running */
    EMB_STARTING,  /* postgres running, not accepting connections yet */
    EMB_CREATING,  /* admin connection up: checking for / creating the database */
    EMB_READY,     /* cb(true) called */
    EMB_FAILED,    /* cb(false) called, or the server died after READY */
};

enum emb_query {
    EMB_Q_NONE,   /* still connecting (or no connection) */
    EMB_Q_CHECK,  /* SELECT 1 FROM pg_database ... */
    EMB_Q_CREATE, /* CREATE DATABASE */
};

struct store_embedded {
    struct reactor *r;
    enum emb_state state;
    store_embedded_cb cb;
    void *arg;
    char *state_dir; /* as given; absolute (realpath) after prepare */
    char *pg_bin;
    char *dir;        /* state_dir/pg */
    char *data_dir;   /* dir/data */
    char *run_dir;    /* dir/run: the socket */
    char *log_path;   /* dir/log/postgresql.log */
    char *conninfo;   /* handed to cb on success */
    int log_fd;       /* O_RDWR|O_APPEND: children write, the error tail is read back */
    off_t log_mark;   /* log size when the current child started: its tail begins here */
    bool as_postgres; /* we are root: children run as uid/gid */
    uid_t uid;
    gid_t gid;
    gid_t groups[EMB_MAX_GROUPS]; /* of the postgres user, for the search check */
    int ngroups;
    struct reactor_child *child; /* rm, initdb or postgres; NULL once reaped */
    pid_t child_pid;
    const char *child_name;
    struct reactor_timer *kick; /* deferred work: prepare, or done() after stop */
    struct reactor_timer *tick; /* readiness polling and its deadline */
    struct reactor_timer *kill; /* SIGKILL escalation */
    uint64_t deadline_us;
    PGconn *conn; /* admin connection (dbname=postgres) */
    struct event *conn_ev;
    enum emb_query query;
    bool db_exists;    /* EMB_Q_CHECK found the database */
    bool query_failed; /* a result was an error; err says which */
    bool stopping;
    void (*done)(void *arg);
    void *done_arg;
    char last_connect_err[256]; /* latest refused connect, for the timeout message */
    char err[2048];
};

static void on_child_exit(struct reactor_child *c, pid_t pid, int status, void *arg);
static void on_conn_event(evutil_socket_t fd, short what, void *arg);

/* ---- small helpers ---------------------------------------------------------- */

static const char *state_name(enum emb_state s)
{
    static const char *const names[] = {"preparing", "cleaning", "initdb", "starting",
                                        "creating",  "ready",    "failed"};
    return names[s];
}

static void set_state(struct store_embedded *e, enum emb_state s)
{
    GW_ASSERT(s > e->state);
    log_debug("store.embedded_state", LF_STR("from", state_name(e->state)),
              LF_STR("to", state_name(s)));
    e->state = s;
}

GW_PRINTF(2, 3) static void set_err(struct store_embedded *e, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(e->err, sizeof(e->err), "embedded PostgreSQL: ");

    va_start(ap, fmt);
    vsnprintf(e->err + n, sizeof(e->err) - (size_t)n, fmt, ap);
    va_end(ap);
}

/* Copies libpq's message on one line: runs of newlines, tabs and spaces
 * become one space, trailing ones go. */
static void copy_pq_message(char *dst, size_t len, const char *msg)
{
    char *p;
    size_t n;

    snprintf(dst, len, "%s", msg != NULL && *msg != '\0' ? msg : "unknown error");
    for (p = dst, n = 0; *p != '\0'; p++) {
        char c = (*p == '\n' || *p == '\t') ? ' ' : *p;

        if (c != ' ' || (n > 0 && dst[n - 1] != ' '))
            dst[n++] = c;
    }
    dst[n] = '\0';
    while (n > 0 && dst[n - 1] == ' ')
        dst[--n] = '\0';
}

static void describe_status(int status, char *buf, size_t len)
{
    const char *sig = WIFSIGNALED(status) ? sigabbrev_np(WTERMSIG(status)) : NULL;

    if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "was killed by signal %d (SIG%s)", WTERMSIG(status),
                 sig != NULL ? sig : "?");
    else
        snprintf(buf, len, "ended with wait status %d", status);
}

/* Appends the last lines the current child wrote to the log, joined with
 * " | ", so one error line says why the server would not start. */
static void append_log_tail(struct store_embedded *e)
{
    char raw[EMB_TAIL_BYTES + 1];
    const char *lines[EMB_TAIL_LINES];
    struct stat st;
    off_t from;
    ssize_t n;
    size_t used, i, count = 0;
    char *save = NULL, *line;

    if (e->log_fd < 0 || fstat(e->log_fd, &st) != 0)
        return;
    from = GW_MAX(e->log_mark, st.st_size - EMB_TAIL_BYTES);
    n = from < st.st_size ? pread(e->log_fd, raw, (size_t)(st.st_size - from), from) : 0;
    raw[n > 0 ? n : 0] = '\0';
    for (line = strtok_r(raw, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save))
        lines[count++ % EMB_TAIL_LINES] = line;
    used = strlen(e->err);
    used += (size_t)snprintf(e->err + used, sizeof(e->err) - used, " (log %s%s", e->log_path,
                             count > 0 ? ": " : ", empty");
    for (i = count > EMB_TAIL_LINES ? count - EMB_TAIL_LINES : 0;
         i < count && used < sizeof(e->err); i++)
        used += (size_t)snprintf(e->err + used, sizeof(e->err) - used, "%s%s",
                                 lines[i % EMB_TAIL_LINES], i + 1 < count ? " | " : "");
    if (used < sizeof(e->err))
        snprintf(e->err + used, sizeof(e->err) - used, ")");
}

/* A conninfo value: bare when it is safe, else quoted with \ and ' escaped. */
static char *conninfo_value(const char *v)
{
    struct gw_buf b = {0};
    const char *p;

    if (*v != '\0' && strpbrk(v, " \t\n'\\=") == NULL)
        return gw_xstrdup(v);
    gw_buf_append(&b, "'", 1);
    for (p = v; *p != '\0'; p++) {
        if (*p == '\'' || *p == '\\')
            gw_buf_append(&b, "\\", 1);
        gw_buf_append(&b, p, 1);
    }
    gw_buf_append(&b, "'", 1);
    return b.data;
}

/* ---- preparing the directories ------------------------------------------------ */

static int resolve_user(struct store_embedded *e)
{
    struct passwd *pw;

    e->uid = geteuid();
    e->gid = getegid();
    if (e->uid != 0)
        return 0;
    pw = getpwnam(EMB_OS_USER); /* startup only: may read NSS files */
    if (pw == NULL) {
        set_err(e, "running as root needs the '" EMB_OS_USER
                   "' user (Debian package postgresql) for the embedded database");
        return -1;
    }
    e->as_postgres = true;
    e->uid = pw->pw_uid;
    e->gid = pw->pw_gid;
    e->ngroups = EMB_MAX_GROUPS;
    if (getgrouplist(EMB_OS_USER, e->gid, e->groups, &e->ngroups) < 0)
        e->ngroups = EMB_MAX_GROUPS; /* truncated: the first ones are enough for a check */
    return 0;
}

/* Whether the server's user may pass through a directory (ACLs ignored). */
static bool server_can_search(const struct store_embedded *e, const struct stat *st)
{
    int i;

    if (st->st_uid == e->uid)
        return (st->st_mode & S_IXUSR) != 0;
    for (i = 0; i < e->ngroups; i++) {
        if (e->groups[i] == st->st_gid)
            return (st->st_mode & S_IXGRP) != 0;
    }
    return (st->st_mode & S_IXOTH) != 0;
}

/* As root the postgres user must reach state_dir/pg. The state dir stays
 * root's; the minimal change is o+x on it alone (search, not list: 0700
 * becomes 0711, nothing else in it becomes visible). Its parents are not
 * ours to change: one the user cannot pass is an error naming it. */
static int make_reachable(struct store_embedded *e)
{
    struct stat st;
    char *p = gw_xstrdup(e->state_dir);
    char *slash;
    int rc = -1;

    for (slash = strchr(p + 1, '/'); slash != NULL; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        if (stat(p, &st) == 0 && !server_can_search(e, &st)) {
            set_err(e,
                    "the '" EMB_OS_USER "' user cannot enter %s (mode %04o), a parent of the "
                    "state directory; allow it (chmod o+x) or choose another state directory",
                    p, (unsigned)(st.st_mode & 07777));
            goto out;
        }
        *slash = '/';
    }
    if (stat(e->state_dir, &st) != 0) {
        set_err(e, "cannot stat %s: %s", e->state_dir, strerror(errno));
        goto out;
    }
    if (!server_can_search(e, &st)) {
        if (chmod(e->state_dir, (st.st_mode & 07777) | S_IXOTH) != 0) {
            set_err(e, "cannot chmod o+x %s: %s", e->state_dir, strerror(errno));
            goto out;
        }
        log_info("store.embedded_state_dir_mode", LF_STR("path", e->state_dir),
                 LF_STR("change", "o+x"));
    }
    rc = 0;
out:
    free(p);
    return rc;
}

/* Applies the server's owner through an fd opened without following
 * symlinks: as root, a link planted by the postgres user must not make us
 * chown something else. */
static int own_fd(struct store_embedded *e, int fd, const char *path)
{
    if (e->as_postgres && fchown(fd, e->uid, e->gid) != 0) {
        set_err(e, "cannot chown %s to " EMB_OS_USER ": %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int ensure_dir(struct store_embedded *e, const char *path)
{
    int fd, rc;

    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        set_err(e, "cannot create directory %s: %s", path, strerror(errno));
        return -1;
    }
    fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        set_err(e, "cannot open directory %s: %s", path,
                errno == ELOOP ? "it is a symbolic link" : strerror(errno));
        return -1;
    }
    rc = own_fd(e, fd, path);
    close(fd);
    return rc;
}

static int open_log(struct store_embedded *e)
{
    struct stat st;

    e->log_fd = open(e->log_path, O_RDWR | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (e->log_fd < 0) {
        set_err(e, "cannot open %s: %s", e->log_path, strerror(errno));
        return -1;
    }
    if (fstat(e->log_fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
        set_err(e, "%s is not a plain file", e->log_path);
        return -1;
    }
    return own_fd(e, e->log_fd, e->log_path);
}

/* The state dir itself: created when missing (its parent must exist), then
 * made absolute, since libpq takes a host starting with '/' as a socket
 * directory. */
static int resolve_state_dir(struct store_embedded *e)
{
    char *abs;

    if (mkdir(e->state_dir, 0700) != 0 && errno != EEXIST) {
        set_err(e, "cannot create state directory %s: %s", e->state_dir, strerror(errno));
        return -1;
    }
    abs = realpath(e->state_dir, NULL);
    if (abs == NULL) {
        set_err(e, "cannot resolve state directory %s: %s", e->state_dir, strerror(errno));
        return -1;
    }
    free(e->state_dir);
    e->state_dir = abs;
    return 0;
}

static int build_paths(struct store_embedded *e)
{
    char *host;
    char *server = gw_xasprintf("%s/postgres", e->pg_bin);
    bool have_server = access(server, X_OK) == 0;

    free(server);
    if (!have_server) {
        set_err(e, "no PostgreSQL server in %s (Debian package postgresql-15)", e->pg_bin);
        return -1;
    }
    e->dir = gw_xasprintf("%s/pg", e->state_dir);
    e->data_dir = gw_xasprintf("%s/data", e->dir);
    e->run_dir = gw_xasprintf("%s/run", e->dir);
    e->log_path = gw_xasprintf("%s/log/postgresql.log", e->dir);
    if (strlen(e->run_dir) + sizeof("/" EMB_SOCKET_NAME) >
        sizeof(((struct sockaddr_un *)0)->sun_path)) {
        set_err(e,
                "socket path %s/" EMB_SOCKET_NAME " is too long for a Unix socket; "
                "choose a shorter state directory",
                e->run_dir);
        return -1;
    }
    host = conninfo_value(e->run_dir);
    e->conninfo = gw_xasprintf("host=%s dbname=" EMB_DB_NAME " user=" EMB_DB_USER, host);
    free(host);
    return 0;
}

static int prepare(struct store_embedded *e)
{
    char *log_dir;
    int rc;

    if (resolve_user(e) != 0 || resolve_state_dir(e) != 0 || build_paths(e) != 0)
        return -1;
    if (e->as_postgres && make_reachable(e) != 0)
        return -1;
    if (ensure_dir(e, e->dir) != 0 || ensure_dir(e, e->run_dir) != 0)
        return -1;
    log_dir = gw_xasprintf("%s/log", e->dir);
    rc = ensure_dir(e, log_dir);
    free(log_dir);
    if (rc != 0)
        return -1;
    return open_log(e);
}

/* ---- children ----------------------------------------------------------------- */

/* Every child: cwd pg/ (as root, postgres cannot enter our cwd), output to
 * the log, its own process group (SIGKILL reaches initdb's helpers too;
 * postgres backends make their own groups and die with the postmaster),
 * killed if we die. |as_server| drops to the postgres user when root. */
static int spawn(struct store_embedded *e, const char *name, const char *const *argv,
                 bool as_server)
{
    struct reactor_spawn_opts o = {
        .argv = argv,
        .cwd = e->dir,
        .stdout_fd = e->log_fd,
        .stderr_fd = e->log_fd,
        .uid = e->uid,
        .gid = e->gid,
        .drop_privileges = as_server && e->as_postgres,
        .new_process_group = true,
        .die_with_parent = true,
    };
    struct stat st;

    e->log_mark = fstat(e->log_fd, &st) == 0 ? st.st_size : 0;
    if (reactor_spawn(e->r, &o, on_child_exit, e, &e->child) != 0) {
        e->child = NULL;
        set_err(e, "cannot start %s (fork failed)", argv[0]);
        return -1;
    }
    e->child_pid = reactor_child_pid(e->child);
    e->child_name = name;
    return 0;
}

static int spawn_cleanup(struct store_embedded *e)
{
    const char *argv[] = {"/bin/rm", "-rf", "--", e->data_dir, NULL};

    log_warn("store.embedded_partial_data_dir", LF_STR("data_dir", e->data_dir),
             LF_STR("action", "removing before initdb"));
    set_state(e, EMB_CLEANING);
    /* As us, not the server's user: whoever left files there, they go.
     * rm does not follow symlinks, so as root this stays inside data/. */
    return spawn(e, "rm", argv, false);
}

static int spawn_initdb(struct store_embedded *e)
{
    char *prog = gw_xasprintf("%s/initdb", e->pg_bin);
    /* clang-format off */
    const char *argv[] = {prog, "-D", e->data_dir, "-U", EMB_DB_USER, "-A", "trust",
                          "--encoding=UTF8", "--locale=C", "--no-instructions", NULL};
    /* clang-format on */
    int rc;

    log_info("store.embedded_initdb", LF_STR("data_dir", e->data_dir),
             LF_STR("user", e->as_postgres ? EMB_OS_USER : "(current)"));
    set_state(e, EMB_INITDB);
    rc = spawn(e, "initdb", argv, true);
    free(prog);
    return rc;
}

static int spawn_postgres(struct store_embedded *e)
{
    char *prog = gw_xasprintf("%s/postgres", e->pg_bin);
    /* clang-format off */
    const char *argv[] = {prog,
                          "-D", e->data_dir,
                          "-k", e->run_dir,
                          "-c", "listen_addresses=",
                          /* root bypasses the mode; otherwise we are the owner */
                          "-c", "unix_socket_permissions=0700",
                          "-c", "logging_collector=off",
                          "-c", "max_connections=100",
                          "-c", "shared_buffers=64MB",
                          "-c", "fsync=on",
                          NULL};
    /* clang-format on */
    int rc;

    set_state(e, EMB_STARTING);
    rc = spawn(e, "postgres", argv, true);
    free(prog);
    if (rc == 0) {
        e->deadline_us = gw_clock_mono_us() + (uint64_t)EMB_READY_TIMEOUT_MS * 1000;
        reactor_timer_arm_periodic(e->tick, EMB_POLL_MS);
    }
    return rc;
}

/* ---- failure and success ---------------------------------------------------------- */

static void conn_close(struct store_embedded *e)
{
    if (e->conn_ev != NULL)
        event_free(e->conn_ev);
    e->conn_ev = NULL;
    if (e->conn != NULL)
        PQfinish(e->conn);
    e->conn = NULL;
    e->query = EMB_Q_NONE;
}

/* Start failed, e->err says why. A server still running is asked to stop
 * (stop() will wait for it); the caller hears cb(false) last, so it may
 * call store_embedded_stop() from there. */
static void fail(struct store_embedded *e)
{
    conn_close(e);
    reactor_timer_disarm(e->tick);
    set_state(e, EMB_FAILED);
    log_error("store.embedded_failed", LF_STR("reason", e->err));
    if (e->child != NULL) {
        (void)reactor_child_kill(e->child, SIGINT);
        reactor_timer_arm(e->kill, EMB_GIVE_UP_MS);
    }
    e->cb(e, false, NULL, e->err, e->arg);
}

static void succeed(struct store_embedded *e)
{
    conn_close(e);
    reactor_timer_disarm(e->tick);
    set_state(e, EMB_READY);
    log_info("store.embedded_started", LF_STR("socket_dir", e->run_dir),
             LF_INT("pid", e->child_pid), LF_STR("data_dir", e->data_dir));
    e->cb(e, true, e->conninfo, NULL, e->arg);
}

/* Calls done() and frees: the last thing that happens to |e|. */
static void finish(struct store_embedded *e)
{
    void (*done)(void *) = e->done;
    void *done_arg = e->done_arg;

    done(done_arg);
    conn_close(e);
    reactor_timer_free(e->kick);
    reactor_timer_free(e->tick);
    reactor_timer_free(e->kill);
    if (e->log_fd >= 0)
        close(e->log_fd);
    free(e->state_dir);
    free(e->pg_bin);
    free(e->dir);
    free(e->data_dir);
    free(e->run_dir);
    free(e->log_path);
    free(e->conninfo);
    free(e);
}

/* ---- the admin connection -------------------------------------------------------- */

static void conn_watch(struct store_embedded *e, short what)
{
    struct event_base *base = reactor_base(e->r);
    int fd = PQsocket(e->conn);

    if (e->conn_ev == NULL) {
        e->conn_ev = event_new(base, fd, what, on_conn_event, e);
        if (e->conn_ev == NULL)
            gw_panic(__FILE__, __LINE__, "out of memory");
    } else {
        event_del(e->conn_ev);
        event_assign(e->conn_ev, base, fd, what, on_conn_event, e);
    }
    event_add(e->conn_ev, NULL);
}

/* Refused while the server starts up ("starting up", no socket yet): try
 * again on the next tick. */
static void connect_refused(struct store_embedded *e)
{
    copy_pq_message(e->last_connect_err, sizeof(e->last_connect_err),
                    e->conn != NULL ? PQerrorMessage(e->conn) : "out of memory");
    log_debug("store.embedded_connect_retry", LF_STR("reason", e->last_connect_err));
    conn_close(e);
}

static void connect_begin(struct store_embedded *e)
{
    const char *const keys[] = {"host", "dbname", "user", "application_name", NULL};
    const char *const values[] = {e->run_dir, "postgres", EMB_DB_USER, "openshell-gateway", NULL};

    e->conn = PQconnectStartParams(keys, values, 0);
    if (e->conn == NULL || PQstatus(e->conn) == CONNECTION_BAD || PQsocket(e->conn) < 0) {
        connect_refused(e);
        return;
    }
    /* libpq: after PQconnectStart, behave as if PQconnectPoll said WRITING. */
    conn_watch(e, EV_WRITE);
}

static void query_error(struct store_embedded *e, const char *what)
{
    char msg[512];

    copy_pq_message(msg, sizeof(msg), PQerrorMessage(e->conn));
    set_err(e, "%s: %s", what, msg);
    fail(e);
}

static void query_flush(struct store_embedded *e)
{
    int rc = PQflush(e->conn);

    if (rc < 0) {
        query_error(e, "admin connection failed");
        return;
    }
    conn_watch(e, (short)(EV_READ | (rc == 1 ? EV_WRITE : 0)));
}

static void query_send(struct store_embedded *e, enum emb_query q, const char *sql)
{
    e->query = q;
    e->query_failed = false;
    if (PQsendQuery(e->conn, sql) == 0) {
        query_error(e, "admin query could not be sent");
        return;
    }
    query_flush(e);
}

static void connect_done(struct store_embedded *e)
{
    set_state(e, EMB_CREATING);
    if (PQsetnonblocking(e->conn, 1) != 0) {
        query_error(e, "admin connection");
        return;
    }
    query_send(e, EMB_Q_CHECK, "SELECT 1 FROM pg_database WHERE datname = '" EMB_DB_NAME "'");
}

static void connect_step(struct store_embedded *e)
{
    switch (PQconnectPoll(e->conn)) {
    case PGRES_POLLING_READING:
        conn_watch(e, EV_READ);
        break;
    case PGRES_POLLING_WRITING:
        conn_watch(e, EV_WRITE);
        break;
    case PGRES_POLLING_OK:
        connect_done(e);
        break;
    default:
        connect_refused(e);
        break;
    }
}

static void query_result(struct store_embedded *e, const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    char msg[512];

    switch (PQresultStatus(res)) {
    case PGRES_TUPLES_OK:
        if (e->query == EMB_Q_CHECK)
            e->db_exists = PQntuples(res) > 0;
        break;
    case PGRES_COMMAND_OK:
        break;
    default:
        /* 42P04 duplicate_database: someone else created it; fine. */
        if (e->query == EMB_Q_CREATE && state != NULL && strcmp(state, "42P04") == 0)
            break;
        copy_pq_message(msg, sizeof(msg), PQresultErrorMessage(res));
        set_err(e, "%s: %s",
                e->query == EMB_Q_CHECK ? "cannot look up the database"
                                        : "cannot create database " EMB_DB_NAME,
                msg);
        e->query_failed = true;
        break;
    }
}

static void query_done(struct store_embedded *e)
{
    if (e->query_failed) {
        fail(e);
    } else if (e->query == EMB_Q_CHECK && !e->db_exists) {
        log_info("store.embedded_createdb", LF_STR("database", EMB_DB_NAME));
        query_send(e, EMB_Q_CREATE, "CREATE DATABASE " EMB_DB_NAME);
    } else {
        succeed(e);
    }
}

static void query_io(struct store_embedded *e, short what)
{
    PGresult *res;

    if ((what & EV_READ) != 0 && PQconsumeInput(e->conn) == 0) {
        query_error(e, "admin connection failed");
        return;
    }
    while (PQisBusy(e->conn) == 0) {
        res = PQgetResult(e->conn);
        if (res == NULL) {
            query_done(e);
            return;
        }
        query_result(e, res);
        PQclear(res);
    }
    query_flush(e);
}

static void on_conn_event(evutil_socket_t fd, short what, void *arg)
{
    struct store_embedded *e = arg;

    if (e->query == EMB_Q_NONE)
        connect_step(e);
    else
        query_io(e, what);
}

/* ---- timers and child exits --------------------------------------------------------- */

static void on_tick(struct reactor_timer *t, void *arg)
{
    struct store_embedded *e = arg;

    if (gw_clock_mono_us() >= e->deadline_us) {
        set_err(e, "the server did not accept connections within %d s (last attempt: %s)",
                EMB_READY_TIMEOUT_MS / 1000,
                e->last_connect_err[0] != '\0' ? e->last_connect_err : "none completed");
        append_log_tail(e);
        fail(e);
        return;
    }
    if (e->state == EMB_STARTING && e->conn == NULL)
        connect_begin(e);
}

static void on_kill(struct reactor_timer *t, void *arg)
{
    struct store_embedded *e = arg;

    if (e->child == NULL)
        return;
    log_warn("store.embedded_kill", LF_STR("program", e->child_name), LF_INT("pid", e->child_pid),
             LF_STR("reason", "did not stop in time"));
    (void)reactor_child_kill(e->child, SIGKILL);
}

static void begin(struct store_embedded *e)
{
    char *version;
    struct stat st;
    int rc;

    if (prepare(e) != 0) {
        fail(e);
        return;
    }
    version = gw_xasprintf("%s/PG_VERSION", e->data_dir);
    if (stat(version, &st) == 0)
        rc = spawn_postgres(e);
    else if (lstat(e->data_dir, &st) == 0)
        rc = spawn_cleanup(e);
    else
        rc = spawn_initdb(e);
    free(version);
    if (rc != 0)
        fail(e);
}

static void on_kick(struct reactor_timer *t, void *arg)
{
    struct store_embedded *e = arg;

    if (e->stopping)
        finish(e);
    else
        begin(e);
}

/* rm or initdb finished: on to the next step. */
static void step_exited(struct store_embedded *e, int status)
{
    char how[96];
    int rc;

    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        describe_status(status, how, sizeof(how));
        set_err(e, "%s %s", e->child_name, how);
        append_log_tail(e);
        fail(e);
        return;
    }
    rc = e->state == EMB_CLEANING ? spawn_initdb(e) : spawn_postgres(e);
    if (rc != 0)
        fail(e);
}

static void on_child_exit(struct reactor_child *c, pid_t pid, int status, void *arg)
{
    struct store_embedded *e = arg;
    char how[96];

    e->child = NULL;
    reactor_timer_disarm(e->kill);
    describe_status(status, how, sizeof(how));
    if (e->stopping) {
        log_info("store.embedded_stopped", LF_STR("program", e->child_name), LF_INT("pid", pid),
                 LF_STR("status", how));
        finish(e);
        return;
    }
    switch (e->state) {
    case EMB_CLEANING:
    case EMB_INITDB:
        step_exited(e, status);
        break;
    case EMB_STARTING:
    case EMB_CREATING:
        set_err(e, "the server %s during startup", how);
        append_log_tail(e);
        fail(e);
        break;
    case EMB_READY:
        log_error("store.embedded_exited", LF_INT("pid", pid), LF_STR("status", how),
                  LF_STR("log", e->log_path));
        set_state(e, EMB_FAILED);
        break;
    default: /* a server we gave up on has stopped */
        log_info("store.embedded_stopped", LF_STR("program", e->child_name), LF_INT("pid", pid),
                 LF_STR("status", how));
        break;
    }
}

/* ---- API ---------------------------------------------------------------------------- */

struct store_embedded *store_embedded_start(struct reactor *r, const char *state_dir,
                                            const char *pg_bin, store_embedded_cb cb, void *arg)
{
    struct store_embedded *e = gw_xcalloc(1, sizeof(*e));

    GW_ASSERT(state_dir != NULL && pg_bin != NULL && cb != NULL);
    e->r = r;
    e->state = EMB_PREPARING;
    e->cb = cb;
    e->arg = arg;
    e->state_dir = gw_xstrdup(state_dir);
    e->pg_bin = gw_xstrdup(pg_bin);
    e->log_fd = -1;
    e->kick = reactor_timer_new(r, on_kick, e);
    e->tick = reactor_timer_new(r, on_tick, e);
    e->kill = reactor_timer_new(r, on_kill, e);
    /* The caller hears back from the loop, never from inside this call. */
    reactor_timer_arm(e->kick, 0);
    return e;
}

/* Fast shutdown is SIGINT to the postmaster (its group holds only it:
 * backends make their own). initdb and rm get SIGINT too; initdb removes
 * what it created. Once stopping, cb is not called any more. */
void store_embedded_stop(struct store_embedded *e, unsigned timeout_ms, void (*done)(void *arg),
                         void *arg)
{
    GW_ASSERT(!e->stopping && done != NULL);
    e->stopping = true;
    e->done = done;
    e->done_arg = arg;
    conn_close(e);
    reactor_timer_disarm(e->tick);
    if (e->child == NULL) {
        reactor_timer_arm(e->kick, 0);
        return;
    }
    if (reactor_child_kill(e->child, SIGINT) != 0)
        log_warn("store.embedded_signal_failed", LF_INT("pid", e->child_pid),
                 LF_STR("reason", strerror(errno)));
    reactor_timer_arm(e->kill, timeout_ms);
}
