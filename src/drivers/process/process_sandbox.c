/* Sandboxes of the process driver: the state directory and persistence,
 * the lifecycle (start, exit, stop, delete), conditions and events, and the
 * public operations of process.h. The cgroups of a run are in
 * process_cgroup.c; the namespace setup the child does between clone() and
 * exec(), and the plan it follows, in process_child.c.
 *
 * A sandbox is one child process, `openshell-supervisor`, started by
 * reactor_spawn() with clone flags for new mount, PID, UTS, IPC (and
 * network) namespaces. Everything the child needs is prepared in the
 * parent (a struct child_plan) so that the child only makes system calls.
 *
 * One pipe carries the outcome (reactor report_fd): a setup failure
 * arrives as a struct reactor_spawn_failure; otherwise the child hands the
 * pipe to the supervisor (--ready-fd), which writes one byte once it has
 * its signal handlers. Only then is the sandbox Running: PID 1 of a
 * namespace drops signals it has no handler for, so a SIGTERM sent
 * earlier would be lost. End of file without that byte means the
 * supervisor died first; the exit status tells the rest. */
#include "drivers/process/process.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "reactor/reactor.h"

#define SB_FILE_SPEC  "sandbox.pb"
#define SB_FILE_TOKEN "token"
#define SB_FILE_STATE "state"
#define SB_FILE_LOG   "supervisor.log"
#define SB_MAX_SPEC   (8 << 20)
#define SB_MAX_TOKEN  (64 << 10)
#define DEFAULT_PATH  "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static void sb_start(struct process_sandbox *sb);

/* ---- small helpers -------------------------------------------------------------- */

static void now_rfc3339(char out[40])
{
    int64_t ms = gw_clock_wall_ms();
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    char base[32];

    gmtime_r(&s, &tm);
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, 40, "%s.%03dZ", base, (int)(ms % 1000));
}

int process_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;

    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Writes |dir|/|name| through a temporary file and rename(), so a crash
 * leaves the old or the new content, never a mix. Returns 0 or -1 (errno). */
static int write_atomic(const char *dir, const char *name, const void *data, size_t len,
                        mode_t mode)
{
    char *tmp = gw_xasprintf("%s/.%s.tmp", dir, name);
    char *path = gw_xasprintf("%s/%s", dir, name);
    int rv = -1, fd, saved;

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        goto out;
    if (fchmod(fd, mode) != 0 || process_write_all(fd, data, len) != 0) {
        saved = errno;
        close(fd);
        unlink(tmp);
        errno = saved;
        goto out;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        saved = errno;
        unlink(tmp);
        errno = saved;
        goto out;
    }
    rv = 0;
out:
    free(tmp);
    free(path);
    return rv;
}

/* Reads a whole small file. Caller owns |*out| (NUL-terminated), free with
 * free(). Returns the length, or -1 (errno; EFBIG above |max|). */
ssize_t process_read_file(const char *path, size_t max, char **out)
{
    struct gw_buf b = {0};
    char chunk[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    ssize_t n;

    if (fd < 0)
        return -1;
    while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || b.len + (size_t)n > max) {
            int saved = n < 0 ? errno : EFBIG;
            close(fd);
            gw_buf_free(&b);
            errno = saved;
            return -1;
        }
        gw_buf_append(&b, chunk, (size_t)n);
    }
    close(fd);
    if (b.data != NULL)
        gw_buf_cstr(&b); /* may move the data: NUL-terminates it */
    *out = b.data != NULL ? b.data : gw_xstrdup("");
    return (ssize_t)b.len;
}

static void spawn_rm(struct process_driver *d, const char *path)
{
    const char *argv[] = {"/bin/rm", "-rf", "--one-file-system", "--", path, NULL};
    struct reactor_spawn_opts o = {.argv = argv, .stdout_fd = -1, .stderr_fd = -1};

    if (reactor_spawn(d->r, &o, NULL, NULL, NULL) != 0)
        log_error("process.remove_failed", LF_STR("path", path), LF_STR("error", strerror(errno)));
}

/* Moves |path| into the trash (one rename, so the name is gone at once) and
 * removes it from a child process: a large workdir must not stall the loop. */
static void remove_tree(struct process_driver *d, const char *path)
{
    char uuid[37];
    char *dst;

    gw_uuid4(uuid);
    dst = gw_xasprintf("%s/%s", d->trash_dir, uuid);
    if (rename(path, dst) != 0) {
        log_warn("process.trash_failed", LF_STR("path", path), LF_STR("error", strerror(errno)));
        spawn_rm(d, path);
    } else {
        spawn_rm(d, dst);
    }
    free(dst);
}

/* ---- argv and environment -------------------------------------------------------------------- */

struct strv {
    char **v;
    size_t n, cap;
};

static void strv_push(struct strv *s, char *item)
{
    if (s->n + 2 > s->cap) {
        s->cap = s->cap ? s->cap * 2 : 16;
        s->v = gw_xrealloc(s->v, s->cap * sizeof(*s->v));
    }
    s->v[s->n++] = item;
    s->v[s->n] = NULL;
}

static void strv_free(struct strv *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
}

/* Sets KEY=VALUE, replacing an earlier KEY. */
static void env_set(struct strv *env, const char *key, const char *value)
{
    size_t klen = strlen(key);

    for (size_t i = 0; i < env->n; i++) {
        if (strncmp(env->v[i], key, klen) == 0 && env->v[i][klen] == '=') {
            free(env->v[i]);
            env->v[i] = gw_xasprintf("%s=%s", key, value);
            return;
        }
    }
    strv_push(env, gw_xasprintf("%s=%s", key, value));
}

static bool env_has(const struct strv *env, const char *key)
{
    size_t klen = strlen(key);

    for (size_t i = 0; i < env->n; i++) {
        if (strncmp(env->v[i], key, klen) == 0 && env->v[i][klen] == '=')
            return true;
    }
    return false;
}

/* template.environment, then spec.environment (the sandbox's own values
 * win), defaults for PATH and HOME, then the driver's OPENSHELL_* values,
 * which nothing overrides. */
static void build_env(const struct process_sandbox *sb, struct strv *env)
{
    const Openshell__Compute__V1__DriverSandboxSpec *spec = sb->stored->spec;
    const Openshell__Compute__V1__DriverSandboxTemplate *t = spec ? spec->template_ : NULL;

    for (size_t i = 0; t != NULL && i < t->n_environment; i++)
        env_set(env, t->environment[i]->key, t->environment[i]->value);
    for (size_t i = 0; spec != NULL && i < spec->n_environment; i++)
        env_set(env, spec->environment[i]->key, spec->environment[i]->value);
    if (!env_has(env, "PATH"))
        env_set(env, "PATH", DEFAULT_PATH);
    if (!env_has(env, "HOME"))
        env_set(env, "HOME", "/sandbox");
    env_set(env, "OPENSHELL_SANDBOX_ID", sb->id);
    env_set(env, "OPENSHELL_SANDBOX_NAME", sb->stored->name);
    env_set(env, "OPENSHELL_SANDBOX_WORKSPACE", sb->stored->workspace);
    env_set(env, "OPENSHELL_LOG_LEVEL", spec && spec->log_level[0] ? spec->log_level : "info");
    const char *ep = sb->d->o.gateway_endpoint;
    if (ep != NULL && strncmp(ep, "unix:", 5) == 0) {
        /* The socket's directory is mounted at IN_SANDBOX_GW. */
        const char *base = strrchr(ep + 5, '/');
        char *in = gw_xasprintf("unix:" IN_SANDBOX_GW "/%s", base ? base + 1 : ep + 5);
        env_set(env, "OPENSHELL_ENDPOINT", in);
        free(in);
    } else if (ep != NULL) {
        env_set(env, "OPENSHELL_ENDPOINT", ep);
    }
    env_set(env, "OPENSHELL_SANDBOX_INSTANCE_ID", sb->instance_id);
    if (sb->token != NULL)
        env_set(env, "OPENSHELL_SANDBOX_TOKEN_FILE", IN_SANDBOX_JWT);
}

static void build_argv(const struct process_sandbox *sb, int ready_fd, struct strv *argv)
{
    const Openshell__Compute__V1__DriverSandboxSpec *spec = sb->stored->spec;

    strv_push(argv, gw_xstrdup(IN_SANDBOX_SUP));
    strv_push(argv, gw_xstrdup("--ready-fd"));
    strv_push(argv, gw_xasprintf("%d", ready_fd));
    strv_push(argv, gw_xstrdup("--stop-grace-seconds"));
    strv_push(argv, gw_xasprintf("%u", sb->opts.stop_grace_seconds));
    if (spec != NULL && spec->tty)
        strv_push(argv, gw_xstrdup("--tty"));
    strv_push(argv, gw_xstrdup("--"));
    for (size_t i = 0; spec != NULL && i < spec->n_command; i++)
        strv_push(argv, gw_xstrdup(spec->command[i]));
}

/* ---- conditions and events ----------------------------------------------------------------------
 */

static void cond_set(struct sb_cond *c, const char *status, const char *reason, const char *message)
{
    if (c->status == NULL || strcmp(c->status, status) != 0 || strcmp(c->reason, reason) != 0)
        now_rfc3339(c->ltt);
    c->status = status;
    snprintf(c->reason, sizeof(c->reason), "%s", reason);
    free(c->message);
    c->message = gw_xstrdup(message);
}

static void sb_conditions(struct process_sandbox *sb, const char *ready_status, const char *reason,
                          const char *message)
{
    cond_set(&sb->ready, ready_status, reason, message);
    if (sb->state == SB_STOPPED)
        cond_set(&sb->suspended, "True", "Stopped", "the sandbox is stopped");
    else
        cond_set(&sb->suspended, "False", "Active", "the sandbox is not stopped");
}

static void sb_platform(struct process_sandbox *sb, const char *type, const char *reason,
                        const char *message, const char *const *meta)
{
    process_emit_platform(sb->d, sb->id, type, reason, message, meta);
}

void process_sandbox_snapshot(const struct process_sandbox *sb, struct process_snapshot *out)
{
    const struct sb_cond *cs[2] = {&sb->ready, &sb->suspended};
    static const char *const types[2] = {"Ready", "Suspended"};

    openshell__compute__v1__driver_sandbox__init(&out->sandbox);
    openshell__compute__v1__driver_sandbox_status__init(&out->status);
    out->sandbox.id = (char *)sb->id;
    out->sandbox.name = sb->stored->name;
    out->sandbox.workspace = sb->stored->workspace;
    out->sandbox.spec = sb->stored->spec;
    out->sandbox.status = &out->status;
    out->status.sandbox_name = sb->stored->name;
    out->status.instance_id = (char *)sb->instance_id;
    out->status.deleting = sb->deleting;
    for (int i = 0; i < 2; i++) {
        Openshell__Compute__V1__DriverCondition *c = &out->conds[i];
        openshell__compute__v1__driver_condition__init(c);
        c->type = (char *)types[i];
        c->status = (char *)(cs[i]->status ? cs[i]->status : "Unknown");
        c->reason = (char *)cs[i]->reason;
        c->message = cs[i]->message ? cs[i]->message : (char *)"";
        c->last_transition_time = (char *)cs[i]->ltt;
        out->cond_ptrs[i] = c;
    }
    out->status.n_conditions = 2;
    out->status.conditions = out->cond_ptrs;
}

static void sb_changed(struct process_sandbox *sb)
{
    process_emit_snapshot(sb->d, sb);
}

/* ---- persistence -------------------------------------------------------------------------------
 */

static void sb_persist_state(struct process_sandbox *sb, const char *state)
{
    char line[16];

    snprintf(line, sizeof(line), "%s\n", state);
    if (write_atomic(sb->dir, SB_FILE_STATE, line, strlen(line), 0600) != 0)
        log_error("process.persist_failed", LF_STR("id", sb->id), LF_STR("file", SB_FILE_STATE),
                  LF_STR("error", strerror(errno)));
}

static struct process_sandbox *sb_new(struct process_driver *d, const char *id)
{
    struct process_sandbox *sb = gw_xcalloc(1, sizeof(*sb));

    sb->d = d;
    snprintf(sb->id, sizeof(sb->id), "%s", id);
    sb->dir = gw_xasprintf("%s/%s", d->sandboxes_dir, id);
    sb->report_fd = -1;
    sb->cg.oom_efd = -1;
    sb->prev = d->sandboxes_tail;
    if (d->sandboxes_tail)
        d->sandboxes_tail->next = sb;
    else
        d->sandboxes = sb;
    d->sandboxes_tail = sb;
    d->n_sandboxes++;
    return sb;
}

static void sb_free(struct process_sandbox *sb)
{
    struct process_driver *d = sb->d;

    if (sb->prev)
        sb->prev->next = sb->next;
    else
        d->sandboxes = sb->next;
    if (sb->next)
        sb->next->prev = sb->prev;
    else
        d->sandboxes_tail = sb->prev;
    d->n_sandboxes--;
    if (sb->child != NULL)
        reactor_child_detach(sb->child);
    if (sb->report_ev)
        event_free(sb->report_ev);
    if (sb->report_fd >= 0)
        close(sb->report_fd);
    process_cgroup_release(sb);
    reactor_timer_free(sb->kill_timer);
    reactor_timer_free(sb->restart_timer);
    if (sb->stored)
        protobuf_c_message_free_unpacked(&sb->stored->base, NULL);
    if (sb->token) {
        explicit_bzero(sb->token, strlen(sb->token));
        free(sb->token);
    }
    free(sb->ready.message);
    free(sb->suspended.message);
    free(sb->invalid);
    free(sb->dir);
    free(sb);
}

static void waiters_complete(struct process_waiter **list, bool existed)
{
    while (*list != NULL) {
        struct process_waiter *w = *list;
        process_waiter_unlink(w);
        w->done(w, existed);
    }
}

static void waiter_link(struct process_waiter **list, struct process_waiter *w)
{
    w->next = *list;
    if (*list)
        (*list)->pprev = &w->next;
    w->pprev = list;
    *list = w;
}

void process_waiter_unlink(struct process_waiter *w)
{
    if (w->pprev == NULL)
        return;
    *w->pprev = w->next;
    if (w->next)
        w->next->pprev = w->pprev;
    w->next = NULL;
    w->pprev = NULL;
}

/* ---- lifecycle ----------------------------------------------------------------------------------
 */

static void sb_start_failed(struct process_sandbox *sb, const char *step, const char *detail)
{
    char msg[512];
    const char *meta[] = {"step", step, NULL};

    snprintf(msg, sizeof(msg), "sandbox setup failed: %s: %s", step, detail);
    log_error("sandbox.setup_failed", LF_STR("id", sb->id), LF_STR("step", step),
              LF_STR("error", detail));
    sb->state = SB_EXITED;
    sb_conditions(sb, "False", "SetupFailed", msg);
    sb_platform(sb, "Warning", "SetupFailed", msg, meta);
    sb_changed(sb);
}

static void sb_kill_timeout(struct reactor_timer *t, void *arg)
{
    struct process_sandbox *sb = arg;

    if (sb->child != NULL) {
        log_warn("sandbox.kill", LF_STR("id", sb->id), LF_INT("pid", sb->pid),
                 LF_STR("reason", "stop grace expired"));
        (void)reactor_child_kill(sb->child, SIGKILL);
    }
}

/* Asks the process to go: SIGTERM and SIGKILL after |grace_s|, or SIGKILL
 * at once (|grace_s| 0, or still in setup, where SIGTERM would be lost:
 * PID 1 of a namespace ignores signals it has no handler for). */
static void sb_kill(struct process_sandbox *sb, unsigned grace_s)
{
    if (sb->child == NULL)
        return;
    log_debug("sandbox.kill", LF_STR("id", sb->id), LF_INT("pid", sb->pid),
              LF_UINT("grace_s", grace_s), LF_BOOL("starting", sb->state == SB_STARTING));
    sb->stopping = true;
    if (grace_s == 0 || sb->state == SB_STARTING) {
        (void)reactor_child_kill(sb->child, SIGKILL);
        return;
    }
    if (sb->kill_timer != NULL && reactor_timer_armed(sb->kill_timer))
        return;
    (void)reactor_child_kill(sb->child, SIGTERM);
    if (sb->kill_timer == NULL)
        sb->kill_timer = reactor_timer_new(sb->d->r, sb_kill_timeout, sb);
    reactor_timer_arm(sb->kill_timer, (uint64_t)grace_s * 1000);
}

static void sb_close_report(struct process_sandbox *sb)
{
    if (sb->report_ev) {
        event_free(sb->report_ev);
        sb->report_ev = NULL;
    }
    if (sb->report_fd >= 0)
        close(sb->report_fd);
    sb->report_fd = -1;
}

enum report {
    REPORT_PENDING, /* nothing to read yet */
    REPORT_READY,   /* the supervisor is up */
    REPORT_FAILED,  /* setup failed: sb->failure */
    REPORT_EOF,     /* closed without a word: the process died */
};

/* Reads the setup report and closes the pipe once the outcome is known. */
static enum report sb_read_report(struct process_sandbox *sb)
{
    struct reactor_spawn_failure f;
    enum report r = REPORT_EOF;
    ssize_t n;

    do
        n = read(sb->report_fd, &f, sizeof(f));
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return REPORT_PENDING;
    if (n == (ssize_t)sizeof(f)) {
        sb->failure = f;
        sb->failure.step[sizeof(f.step) - 1] = '\0';
        sb->setup_failed = true;
        r = REPORT_FAILED;
    } else if (n > 0) {
        r = REPORT_READY;
    }
    sb_close_report(sb);
    return r;
}

static void sb_on_report(evutil_socket_t fd, short what, void *arg)
{
    struct process_sandbox *sb = arg;
    char msg[128];

    if (sb_read_report(sb) != REPORT_READY || sb->child == NULL)
        return;
    sb->state = SB_RUNNING;
    if (sb->stopping || sb->deleting)
        return;
    snprintf(msg, sizeof(msg), "supervisor running (pid %d)", (int)sb->pid);
    log_info("sandbox.started", LF_STR("id", sb->id), LF_STR("name", sb->stored->name),
             LF_INT("pid", sb->pid), LF_STR("instance_id", sb->instance_id));
    sb_conditions(sb, "True", "Running", msg);
    sb_platform(sb, "Normal", "Started", msg, NULL);
    sb_changed(sb);
}

static void sb_finish_delete(struct process_sandbox *sb);

/* The run ended by our own request (stop, delete, driver shutdown). */
static void sb_exited_stopped(struct process_sandbox *sb)
{
    struct process_driver *d = sb->d;

    sb->state = SB_STOPPED;
    if (d->shutting_down) {
        waiters_complete(&sb->stop_waiters, true);
        if (d->on_idle != NULL && process_sandboxes_idle(d))
            d->on_idle(d);
        return;
    }
    log_info("sandbox.stopped", LF_STR("id", sb->id));
    sb_conditions(sb, "False", "ContainerStopped", "the sandbox was stopped");
    sb_platform(sb, "Normal", "Stopped", "the sandbox was stopped", NULL);
    sb_changed(sb);
    waiters_complete(&sb->stop_waiters, true);
    if (sb->want_running)
        sb_start(sb); /* StartSandbox arrived while the stop was in progress */
}

/* A supervisor that dies on its own is restarted, as a container runtime
 * restarts a crashed container: after 0.5, 1, 2, 4 and 8 s. A run that
 * lasted a minute resets the count; the sixth quick exit in a row is
 * final (Ready=False ProcessExited / OOMKilled: ERROR at the gateway). */
#define RESTART_MAX_QUICK 5
#define RESTART_QUICK_US  (60ull * 1000000)

static void sb_restart_due(struct reactor_timer *t, void *arg)
{
    struct process_sandbox *sb = arg;
    if (sb->child != NULL || sb->deleting || !sb->want_running || sb->d->shutting_down)
        return;
    log_info("sandbox.restarting", LF_STR("id", sb->id), LF_UINT("restart", sb->quick_exits));
    sb_start(sb);
}

static bool sb_schedule_restart(struct process_sandbox *sb, const char *why)
{
    char msg[320];
    bool quick = gw_clock_mono_us() - sb->started_us < RESTART_QUICK_US;
    sb->quick_exits = quick ? sb->quick_exits + 1 : 1;
    if (!sb->want_running || sb->d->shutting_down || sb->quick_exits > RESTART_MAX_QUICK)
        return false;
    unsigned delay_ms = 500u << (sb->quick_exits - 1);
    snprintf(msg, sizeof(msg), "%s; restarting in %u ms (restart %u of %u)", why, delay_ms,
             sb->quick_exits, RESTART_MAX_QUICK);
    /* A transient reason: the gateway shows PROVISIONING meanwhile. */
    sb_conditions(sb, "False", "Starting", msg);
    if (sb->restart_timer == NULL)
        sb->restart_timer = reactor_timer_new(sb->d->r, sb_restart_due, sb);
    reactor_timer_arm(sb->restart_timer, delay_ms);
    log_warn("sandbox.restart_scheduled", LF_STR("id", sb->id), LF_STR("reason", why),
             LF_UINT("delay_ms", delay_ms));
    return true;
}

/* The run ended on its own: exit, signal, OOM kill or setup failure. */
static void sb_exited_alone(struct process_sandbox *sb, int status)
{
    char msg[256], num[16];
    const char *meta[] = {NULL, num, NULL};

    if (sb->setup_failed) {
        sb_start_failed(sb, sb->failure.step, strerror(sb->failure.err));
        return;
    }
    sb->state = SB_EXITED;
    if (sb->oom_killed) {
        snprintf(msg, sizeof(msg), "the sandbox exceeded its memory limit and was killed");
        sb_conditions(sb, "False", "OOMKilled", msg);
        sb_platform(sb, "Warning", "OOMKilled", msg, NULL);
    } else {
        meta[0] = WIFSIGNALED(status) ? "signal" : "exit_code";
        snprintf(num, sizeof(num), "%d",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        snprintf(msg, sizeof(msg), WIFSIGNALED(status) ? "killed by signal %s" : "exit code %s",
                 num);
        sb_conditions(sb, "False", "ProcessExited", msg);
        sb_platform(sb, WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "Normal" : "Warning",
                    "Exited", msg, meta);
    }
    log_warn("sandbox.exited", LF_STR("id", sb->id), LF_STR("reason", sb->ready.reason),
             LF_STR("message", msg));
    (void)sb_schedule_restart(sb, msg);
    sb_changed(sb);
}

static void sb_on_exit(struct reactor_child *c, pid_t pid, int status, void *arg)
{
    struct process_sandbox *sb = arg;

    sb->child = NULL;
    if (sb->report_fd >= 0)
        (void)sb_read_report(sb); /* the child is gone: data or EOF is there */
    sb_close_report(sb);
    if (sb->kill_timer)
        reactor_timer_disarm(sb->kill_timer);
    if (!sb->oom_killed && process_cgroup_oom_killed(sb))
        sb->oom_killed = true;
    process_cgroup_release(sb);
    log_debug("sandbox.process_exit", LF_STR("id", sb->id), LF_INT("pid", pid),
              LF_INT("status", status));
    if (sb->deleting) {
        sb_finish_delete(sb);
        return;
    }
    if (sb->stopping) {
        sb_exited_stopped(sb);
        return;
    }
    sb_exited_alone(sb, status);
}

/* Opens the report pipe and the log file; writes a header line. */
static int sb_open_io(struct process_sandbox *sb, int report[2], int *log_fd)
{
    char *path = gw_xasprintf("%s/" SB_FILE_LOG, sb->dir);
    char ts[40], *line;

    *log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    free(path);
    if (*log_fd < 0)
        return -1;
    if (pipe2(report, O_CLOEXEC) != 0) {
        close(*log_fd);
        return -1;
    }
    now_rfc3339(ts);
    line = gw_xasprintf("--- %s openshell-driver-process: starting instance %s\n", ts,
                        sb->instance_id);
    (void)process_write_all(*log_fd, line, strlen(line));
    free(line);
    return 0;
}

static int sb_spawn(struct process_sandbox *sb, struct child_plan *plan, int report[2], int log_fd)
{
    struct strv argv = {0}, env = {0};
    int clone_flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC;
    int rv;

    process_child_plan_set_report(plan, report[0], report[1]);
    if (sb->opts.network == PROCESS_NET_ISOLATED)
        clone_flags |= CLONE_NEWNET;
    build_argv(sb, report[1], &argv);
    build_env(sb, &env);
    struct reactor_spawn_opts o = {
        .argv = (const char *const *)argv.v,
        .envp = (const char *const *)env.v,
        .stdout_fd = log_fd,
        .stderr_fd = log_fd,
        .die_with_parent = true,
        .clone_flags = clone_flags,
        .pre_exec = process_child_setup,
        .pre_exec_arg = plan,
        .report_fd = report[1],
    };
    rv = reactor_spawn(sb->d->r, &o, sb_on_exit, sb, &sb->child);
    strv_free(&argv);
    strv_free(&env);
    return rv;
}

static void sb_start(struct process_sandbox *sb)
{
    struct child_plan *plan = NULL;
    int report[2] = {-1, -1}, log_fd = -1;
    char err[512];

    GW_ASSERT(sb->child == NULL && !sb->deleting);
    if (sb->restart_timer != NULL)
        reactor_timer_disarm(sb->restart_timer);
    sb->started_us = gw_clock_mono_us();
    sb->stopping = sb->oom_killed = sb->setup_failed = false;
    gw_uuid4(sb->instance_id);
    if (sb->invalid != NULL) {
        sb_start_failed(sb, "validate the stored sandbox", sb->invalid);
        return;
    }
    if (process_cgroup_prepare(sb, err, sizeof(err)) != 0) {
        process_cgroup_release(sb);
        sb_start_failed(sb, "cgroup", err);
        return;
    }
    plan = process_child_plan_build(sb, err, sizeof(err));
    if (plan != NULL && sb_open_io(sb, report, &log_fd) != 0)
        snprintf(err, sizeof(err), "open %s or a pipe: %s", SB_FILE_LOG, strerror(errno));
    else if (plan != NULL && sb_spawn(sb, plan, report, log_fd) != 0)
        snprintf(err, sizeof(err), "%s", strerror(errno));
    process_child_plan_free(plan);
    if (report[1] >= 0)
        close(report[1]);
    if (log_fd >= 0)
        close(log_fd);
    if (sb->child == NULL) {
        if (report[0] >= 0)
            close(report[0]);
        process_cgroup_release(sb);
        sb_start_failed(sb, "spawn", err);
        return;
    }
    sb->pid = reactor_child_pid(sb->child);
    sb->report_fd = report[0];
    (void)fcntl(report[0], F_SETFL, O_NONBLOCK);
    sb->report_ev =
        event_new(reactor_base(sb->d->r), report[0], EV_READ | EV_PERSIST, sb_on_report, sb);
    event_add(sb->report_ev, NULL);
    sb->state = SB_STARTING;
    sb_conditions(sb, "False", "Starting", "starting the sandbox supervisor");
    sb_changed(sb);
}

/* ---- public operations -------------------------------------------------------------------------
 */

void process_sandbox_stop(struct process_sandbox *sb, struct process_waiter *w)
{
    if (!sb->deleting) {
        sb->want_running = false;
        sb_persist_state(sb, "stopped");
    }
    if (sb->restart_timer != NULL)
        reactor_timer_disarm(sb->restart_timer);
    sb->quick_exits = 0;
    if (sb->child != NULL) {
        if (w != NULL)
            waiter_link(&sb->stop_waiters, w);
        sb_kill(sb, sb->opts.stop_grace_seconds);
        return;
    }
    if (!sb->deleting && sb->state != SB_STOPPED) {
        sb->state = SB_STOPPED;
        sb_conditions(sb, "False", "ContainerStopped", "the sandbox was stopped");
        sb_platform(sb, "Normal", "Stopped", "the sandbox was stopped", NULL);
        sb_changed(sb);
    }
    if (w != NULL)
        w->done(w, true);
}

void process_sandbox_start(struct process_sandbox *sb)
{
    if (sb->deleting)
        return;
    if (!sb->want_running) {
        sb->want_running = true;
        sb_persist_state(sb, "running");
    }
    if (sb->child == NULL)
        sb_start(sb);
}

static void sb_finish_delete(struct process_sandbox *sb)
{
    struct process_driver *d = sb->d;
    char id[37];

    snprintf(id, sizeof(id), "%s", sb->id);
    process_cgroup_release(sb);
    remove_tree(d, sb->dir);
    log_info("sandbox.deleted", LF_STR("id", id));
    sb_platform(sb, "Normal", "Deleted", "the sandbox was deleted", NULL);
    process_emit_deleted(d, id);
    waiters_complete(&sb->stop_waiters, true);
    waiters_complete(&sb->delete_waiters, true);
    sb_free(sb);
    if (d->shutting_down && d->on_idle != NULL && process_sandboxes_idle(d))
        d->on_idle(d);
}

void process_sandbox_delete(struct process_sandbox *sb, struct process_waiter *w)
{
    if (w != NULL)
        waiter_link(&sb->delete_waiters, w);
    if (sb->deleting)
        return;
    sb->deleting = true;
    if (sb->restart_timer != NULL)
        reactor_timer_disarm(sb->restart_timer);
    sb_persist_state(sb, "deleting");
    sb_changed(sb);
    if (sb->child != NULL) {
        sb_kill(sb, 0);
        return;
    }
    sb_finish_delete(sb);
}

struct process_sandbox *process_sandbox_first(struct process_driver *d)
{
    return d->sandboxes;
}

struct process_sandbox *process_sandbox_next(struct process_sandbox *sb)
{
    return sb->next;
}

const char *process_sandbox_id(const struct process_sandbox *sb)
{
    return sb->id;
}

bool process_sandbox_deleting(const struct process_sandbox *sb)
{
    return sb->deleting;
}

struct process_sandbox *process_sandbox_find(struct process_driver *d, const char *id,
                                             const char *name, bool include_deleting)
{
    bool by_id = id != NULL && id[0] != '\0';

    if (!by_id && (name == NULL || name[0] == '\0'))
        return NULL;
    for (struct process_sandbox *sb = d->sandboxes; sb != NULL; sb = sb->next) {
        if (sb->deleting && !include_deleting)
            continue;
        if (by_id ? strcmp(sb->id, id) == 0 : strcmp(sb->stored->name, name) == 0)
            return sb;
    }
    return NULL;
}

void process_sandboxes_shutdown(struct process_driver *d, unsigned max_grace_s, bool force)
{
    d->shutting_down = true;
    for (struct process_sandbox *sb = d->sandboxes; sb != NULL; sb = sb->next) {
        if (sb->child == NULL)
            continue;
        sb_kill(sb, force ? 0 : GW_MIN(sb->opts.stop_grace_seconds, max_grace_s));
    }
}

bool process_sandboxes_idle(const struct process_driver *d)
{
    for (const struct process_sandbox *sb = d->sandboxes; sb != NULL; sb = sb->next) {
        if (sb->child != NULL)
            return false;
    }
    return true;
}

void process_sandboxes_free(struct process_driver *d)
{
    while (d->sandboxes != NULL)
        sb_free(d->sandboxes);
    process_cgroups_retry_free(d);
}

/* ---- create and load ----------------------------------------------------------------------------
 */

static void sb_configure(struct process_sandbox *sb, const struct process_options *opts,
                         const struct process_limits *lim)
{
    sb->opts = *opts;
    sb->lim = *lim;
    if (opts->hostname[0] != '\0')
        snprintf(sb->hostname, sizeof(sb->hostname), "%s", opts->hostname);
    else
        process_hostname_from_name(sb->stored->name, sb->hostname);
}

/* Packs |req| without its token and status, and unpacks that into memory
 * of our own (the request lives in the call's arena). */
static Openshell__Compute__V1__DriverSandbox *
copy_stripped(const Openshell__Compute__V1__DriverSandbox *req, uint8_t **packed, size_t *len)
{
    Openshell__Compute__V1__DriverSandbox top = *req;
    Openshell__Compute__V1__DriverSandboxSpec spec;

    top.status = NULL;
    top.namespace_ = (char *)"";
    if (req->spec != NULL) {
        spec = *req->spec;
        spec.sandbox_token = (char *)"";
        top.spec = &spec;
    }
    *len = openshell__compute__v1__driver_sandbox__get_packed_size(&top);
    *packed = gw_xmalloc(*len ? *len : 1);
    openshell__compute__v1__driver_sandbox__pack(&top, *packed);
    return openshell__compute__v1__driver_sandbox__unpack(NULL, *len, *packed);
}

static int create_files(const char *dir, const char *token, const uint8_t *packed, size_t len)
{
    char *work = gw_xasprintf("%s/" SB_DIR_WORK, dir);
    int rv = -1;

    if (token[0] != '\0' && write_atomic(dir, SB_FILE_TOKEN, token, strlen(token), 0600) != 0)
        goto out;
    if (write_atomic(dir, SB_FILE_STATE, "running\n", 8, 0600) != 0)
        goto out;
    if (mkdir(work, 0755) != 0 && errno != EEXIST)
        goto out;
    /* Last: a directory without it is an interrupted create. */
    rv = write_atomic(dir, SB_FILE_SPEC, packed, len, 0600);
out:
    free(work);
    return rv;
}

int process_sandbox_create(struct process_driver *d,
                           const Openshell__Compute__V1__DriverSandbox *req,
                           const struct process_options *opts, const struct process_limits *lim,
                           char *err, size_t errlen)
{
    const char *token = req->spec ? req->spec->sandbox_token : "";
    char *dir = gw_xasprintf("%s/%s", d->sandboxes_dir, req->id);
    Openshell__Compute__V1__DriverSandbox *stored;
    struct process_sandbox *sb;
    uint8_t *packed = NULL;
    size_t len;

    /* Not a loaded sandbox (the caller checked): leftovers of a broken one. */
    if (access(dir, F_OK) == 0)
        remove_tree(d, dir);
    stored = copy_stripped(req, &packed, &len);
    if (stored == NULL || mkdir(dir, 0700) != 0 || create_files(dir, token, packed, len) != 0) {
        snprintf(err, errlen, "persist sandbox %s: %s", req->id, strerror(errno));
        if (stored != NULL)
            protobuf_c_message_free_unpacked(&stored->base, NULL);
        if (access(dir, F_OK) == 0)
            remove_tree(d, dir);
        free(packed);
        free(dir);
        return -1;
    }
    free(packed);
    free(dir);
    sb = sb_new(d, req->id);
    sb->stored = stored;
    sb->token = token[0] != '\0' ? gw_xstrdup(token) : NULL;
    sb->want_running = true;
    sb_configure(sb, opts, lim);
    log_info("sandbox.created", LF_STR("id", sb->id), LF_STR("name", stored->name),
             LF_STR("workspace", stored->workspace));
    sb_start(sb);
    return 0;
}

static Openshell__Compute__V1__DriverSandbox *load_spec(const char *dir)
{
    char *path = gw_xasprintf("%s/" SB_FILE_SPEC, dir);
    char *data = NULL;
    ssize_t n = process_read_file(path, SB_MAX_SPEC, &data);
    Openshell__Compute__V1__DriverSandbox *s = NULL;

    if (n >= 0)
        s = openshell__compute__v1__driver_sandbox__unpack(NULL, (size_t)n, (uint8_t *)data);
    free(data);
    free(path);
    return s;
}

static char *load_text(const char *dir, const char *file, size_t max)
{
    char *path = gw_xasprintf("%s/%s", dir, file);
    char *data = NULL;

    if (process_read_file(path, max, &data) < 0)
        data = NULL;
    free(path);
    return data;
}

static void sb_load_one(struct process_driver *d, const char *id)
{
    char *dir = gw_xasprintf("%s/%s", d->sandboxes_dir, id);
    Openshell__Compute__V1__DriverSandbox *stored = load_spec(dir);
    char *state, err[512];
    struct process_options opts;
    struct process_limits lim;
    struct process_sandbox *sb;

    if (stored == NULL || strcmp(stored->id, id) != 0) {
        log_warn("process.load_skipped", LF_STR("path", dir),
                 LF_STR("reason", stored ? "id mismatch" : "no readable " SB_FILE_SPEC));
        if (stored == NULL && errno == ENOENT)
            remove_tree(d, dir); /* an interrupted create */
        if (stored)
            protobuf_c_message_free_unpacked(&stored->base, NULL);
        free(dir);
        return;
    }
    free(dir);
    sb = sb_new(d, id);
    sb->stored = stored;
    sb->token = load_text(sb->dir, SB_FILE_TOKEN, SB_MAX_TOKEN);
    state = load_text(sb->dir, SB_FILE_STATE, 64);
    if (process_sandbox_check(stored, d->o.allow_host_network, &opts, &lim, err, sizeof(err)) !=
        0) {
        sb->invalid = gw_xstrdup(err);
        process_options_default(&opts);
        memset(&lim, 0, sizeof(lim));
    }
    sb_configure(sb, &opts, &lim);
    sb->want_running = state == NULL || strncmp(state, "stopped", 7) != 0;
    if (state != NULL && strncmp(state, "deleting", 8) == 0) {
        sb->deleting = true;
        sb_finish_delete(sb);
    } else if (sb->want_running) {
        sb_start(sb);
    } else {
        sb_conditions(sb, "False", "ContainerStopped", "the sandbox is stopped");
    }
    if (state != NULL)
        state[strcspn(state, "\n")] = '\0';
    log_info("sandbox.loaded", LF_STR("id", id), LF_STR("state", state ? state : "running"));
    free(state);
}

static int make_dir(const char *path, mode_t mode)
{
    if (mkdir(path, mode) == 0 || errno == EEXIST)
        return 0;
    log_error("process.state_dir_failed", LF_STR("path", path), LF_STR("error", strerror(errno)));
    return -1;
}

static void empty_trash(struct process_driver *d)
{
    DIR *dir = opendir(d->trash_dir);
    struct dirent *e;

    while (dir != NULL && (e = readdir(dir)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *p = gw_xasprintf("%s/%s", d->trash_dir, e->d_name);
        spawn_rm(d, p);
        free(p);
    }
    if (dir)
        closedir(dir);
}

int process_sandboxes_load(struct process_driver *d)
{
    DIR *dir;
    struct dirent *e;

    if (make_dir(d->sandboxes_dir, 0700) || make_dir(d->trash_dir, 0700) ||
        make_dir(d->root_mnt, 0700))
        return -1;
    empty_trash(d);
    dir = opendir(d->sandboxes_dir);
    if (dir == NULL) {
        log_error("process.state_dir_failed", LF_STR("path", d->sandboxes_dir),
                  LF_STR("error", strerror(errno)));
        return -1;
    }
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (!gw_uuid_valid(e->d_name)) {
            log_warn("process.load_skipped", LF_STR("name", e->d_name),
                     LF_STR("reason", "not a sandbox id"));
            continue;
        }
        sb_load_one(d, e->d_name);
    }
    closedir(dir);
    return 0;
}
