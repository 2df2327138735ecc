#include "reactor/reactor.h"
#include "reactor/reactor_int.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#define CHILD_CLOSE_FALLBACK_MAX 65536 /* fds closed one by one without close_range() */

struct reactor_child {
    struct reactor *r;
    pid_t pid;
    bool own_group;      /* leads its own process group: signal the whole group */
    bool reaped;         /* the pid may belong to someone else now */
    reactor_child_cb cb; /* NULL once detached */
    void *arg;
    LIST_ENTRY(reactor_child) link;
};

/* ---- in the child, between fork() and exec() ------------------------------
 *
 * Only async-signal-safe calls from here on: the parent may one day have
 * threads, and another thread could have held a lock (malloc's, stdio's) at
 * the moment of fork().
 */

static size_t append_str(char *buf, size_t used, size_t cap, const char *s)
{
    while (*s != '\0' && used + 1 < cap)
        buf[used++] = *s++;
    return used;
}

/* Hands the failure to the parent through |report_fd|, if any. */
static void child_report_fd(int fd, const char *step, int err)
{
    struct reactor_spawn_failure f;
    size_t n;

    memset(&f, 0, sizeof(f));
    f.err = err;
    n = append_str(f.step, 0, sizeof(f.step), step);
    f.step[n] = '\0';
    if (write(fd, &f, sizeof(f)) < 0) {
        /* the parent is gone; the exit status still says 127 */
    }
}

/* Leaves one line on the child's stderr, which is often a log file. */
static void child_report(const char *program, const char *step, int err)
{
    char msg[512];
    const char *name = strerrorname_np(err);
    size_t n = 0;

    n = append_str(msg, n, sizeof(msg), "reactor_spawn: ");
    n = append_str(msg, n, sizeof(msg), program);
    n = append_str(msg, n, sizeof(msg), ": ");
    n = append_str(msg, n, sizeof(msg), step);
    n = append_str(msg, n, sizeof(msg), " failed: ");
    n = append_str(msg, n, sizeof(msg), name != NULL ? name : "unknown error");
    msg[n++] = '\n';
    if (write(2, msg, n) < 0) {
        /* nowhere left to report to */
    }
}

/* Caught signals revert to default on exec but ignored ones stay ignored:
 * SIGPIPE in particular must not leak into children. */
static void child_reset_signals(void)
{
    struct sigaction sa;
    int sig;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP)
            (void)sigaction(sig, &sa, NULL);
    }
}

/* Copies the sources above 2 first so that any aliasing (stdout_fd == 2,
 * stderr_fd == 1) still works; the copies go with the other fds later. */
static int child_redirect(const struct reactor_spawn_opts *o)
{
    int out = -1;
    int err = -1;

    if (o->stdout_fd >= 0 && (out = fcntl(o->stdout_fd, F_DUPFD_CLOEXEC, 3)) < 0)
        return -1;
    if (o->stderr_fd >= 0 && (err = fcntl(o->stderr_fd, F_DUPFD_CLOEXEC, 3)) < 0)
        return -1;
    if (out >= 0 && dup2(out, 1) < 0)
        return -1;
    if (err >= 0 && dup2(err, 2) < 0)
        return -1;
    return 0;
}

static int child_drop_privileges(const struct reactor_spawn_opts *o)
{
    /* Supplementary groups can only change with privilege; without it
     * there are none to drop beyond what setgid/setuid allow. */
    if (geteuid() == 0 && setgroups(0, NULL) != 0)
        return -1;
    if (setgid(o->gid) != 0 || setuid(o->uid) != 0)
        return -1;
    /* Paranoia: if root can be regained, the drop did not happen. */
    if (o->uid != 0 && setuid(0) == 0) {
        errno = EPERM;
        return -1;
    }
    return 0;
}

/* Closes every fd above 2 except |keep| (> 2, or 0 for none). */
static void child_close_fds(int keep)
{
    struct rlimit rl;
    long max = CHILD_CLOSE_FALLBACK_MAX;
    long fd;

    if (keep > 3 && close_range(3, (unsigned)keep - 1, 0) != 0)
        goto fallback;
    if (close_range(keep > 2 ? (unsigned)keep + 1 : 3, ~0U, 0) == 0)
        return;
fallback:
    /* Kernels before 5.9 lack close_range(). */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)max)
        max = (long)rl.rlim_cur;
    for (fd = 3; fd < max; fd++) {
        if (fd != keep)
            (void)close((int)fd);
    }
}

/* Whether the parent still exists. In a new PID namespace getppid() is 0
 * whatever happened: there the pre_exec hook has to ask (see reactor.h). */
static bool child_parent_alive(const struct reactor_spawn_opts *o, pid_t parent)
{
    if (o->clone_flags & CLONE_NEWPID)
        return true;
    return getppid() == parent;
}

GW_NORETURN static void child_exec(const struct reactor_spawn_opts *o, pid_t parent)
{
    char *const *argv = (char *const *)o->argv;
    const char *step = "exec";
    sigset_t none;
    int err;

    child_reset_signals();
    if (o->new_process_group && setpgid(0, 0) != 0) {
        step = "setpgid";
        goto out;
    }
    if (child_redirect(o) != 0) {
        step = "dup2";
        goto out;
    }
    if (o->cwd != NULL && chdir(o->cwd) != 0) {
        step = "chdir";
        goto out;
    }
    if (o->drop_privileges && child_drop_privileges(o) != 0) {
        step = "dropping privileges";
        goto out;
    }
    /* After setuid: the kernel clears the parent-death signal when the
     * credentials change, so setting it earlier would be lost. */
    if (o->die_with_parent) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
            step = "prctl(PR_SET_PDEATHSIG)";
            goto out;
        }
        /* The parent may have died before prctl(): no signal would come. */
        if (!child_parent_alive(o, parent)) {
            step = "waiting for the parent";
            errno = ESRCH;
            goto out;
        }
    }
    if (o->pre_exec != NULL && o->pre_exec(o->pre_exec_arg, &step) != 0)
        goto out;
    step = "exec";
    child_close_fds(o->report_fd);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (o->envp != NULL)
        execve(argv[0], argv, (char *const *)o->envp);
    else
        execv(argv[0], argv);
out:
    err = errno;
    if (o->report_fd > 2)
        child_report_fd(o->report_fd, step, err);
    child_report(o->argv[0], step, err);
    _exit(127);
}

/* ---- in the parent ---------------------------------------------------------- */

static void child_reaped(struct reactor *r, pid_t pid, int status)
{
    struct reactor_child *c;

    LIST_FOREACH(c, &r->children, link)
    {
        if (c->pid == pid)
            break;
    }
    if (c == NULL) {
        log_debug("reactor.child_unknown", LF_INT("pid", pid), LF_INT("status", status));
        if (r->orphan_cb != NULL)
            r->orphan_cb(pid, status, r->orphan_arg);
        return;
    }
    LIST_REMOVE(c, link);
    r->children_alive--;
    c->reaped = true;
    log_debug("reactor.child_exited", LF_INT("pid", pid), LF_INT("status", status));
    if (c->cb != NULL)
        c->cb(c, pid, status, c->arg);
    free(c);
}

/* One SIGCHLD can stand for several exits, so reap until none is left.
 * waitpid(-1) also reaps children this module did not start; they are
 * logged at debug and handed to the orphan hook, if any. */
static void on_sigchld(evutil_socket_t signo, short what, void *arg)
{
    struct reactor *r = arg;
    int status;

    for (;;) {
        pid_t pid = waitpid(-1, &status, WNOHANG);

        if (pid < 0 && errno == EINTR)
            continue;
        if (pid <= 0)
            break;
        child_reaped(r, pid, status);
    }
}

/* Installed before the first fork(), so no exit can go unnoticed. */
static int sigchld_ensure(struct reactor *r)
{
    if (r->sigchld != NULL)
        return 0;
    r->sigchld = evsignal_new(r->base, SIGCHLD, on_sigchld, r);
    if (r->sigchld == NULL || evsignal_add(r->sigchld, NULL) != 0) {
        log_error("reactor.signal_failed", LF_INT("signo", SIGCHLD));
        if (r->sigchld != NULL)
            event_free(r->sigchld);
        r->sigchld = NULL;
        return REACTOR_ERR_SYS;
    }
    return 0;
}

int reactor_set_orphan_cb(struct reactor *r, reactor_orphan_cb cb, void *arg)
{
    if (sigchld_ensure(r) != 0)
        return REACTOR_ERR_SYS;
    r->orphan_cb = cb;
    r->orphan_arg = cb != NULL ? arg : NULL;
    return 0;
}

static struct reactor_child *child_track(struct reactor *r, pid_t pid, bool own_group,
                                         reactor_child_cb cb, void *arg)
{
    struct reactor_child *c = gw_xcalloc(1, sizeof(*c));

    c->r = r;
    c->pid = pid;
    c->own_group = own_group;
    c->cb = cb;
    c->arg = arg;
    LIST_INSERT_HEAD(&r->children, c, link);
    r->children_alive++;
    return c;
}

int reactor_spawn(struct reactor *r, const struct reactor_spawn_opts *opts, reactor_child_cb cb,
                  void *arg, struct reactor_child **out)
{
    pid_t parent = getpid();
    struct reactor_child *c;
    sigset_t all, old;
    pid_t pid;
    int err;

    GW_ASSERT(opts != NULL && opts->argv != NULL && opts->argv[0] != NULL);
    if (sigchld_ensure(r) != 0)
        return REACTOR_ERR_SYS;
    /* Until the child has reset its dispositions, a signal would run
     * libevent's handler there, which writes to a pipe shared with us. */
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    /* A raw clone() with namespace flags behaves like fork() otherwise
     * (glibc's clone() wrapper wants a separate stack). */
    if (opts->clone_flags != 0)
        pid = (pid_t)syscall(SYS_clone, (unsigned long)opts->clone_flags | SIGCHLD, NULL, NULL,
                             NULL, NULL);
    else
        pid = fork();
    if (pid == 0)
        child_exec(opts, parent);
    err = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        log_error("reactor.spawn_failed", LF_STR("program", opts->argv[0]),
                  LF_STR("reason", strerror(err)));
        return REACTOR_ERR_SYS;
    }
    /* The child does the same; whichever runs first closes the window in
     * which reactor_child_kill() would signal a group that does not exist. */
    if (opts->new_process_group)
        (void)setpgid(pid, pid);
    log_debug("reactor.child_spawned", LF_STR("program", opts->argv[0]), LF_INT("pid", pid));
    c = child_track(r, pid, opts->new_process_group, cb, arg);
    if (out != NULL)
        *out = c;
    return 0;
}

pid_t reactor_child_pid(const struct reactor_child *c)
{
    return c->pid;
}

int reactor_child_kill(struct reactor_child *c, int signo)
{
    if (c->reaped)
        return REACTOR_ERR_SYS;
    if (kill(c->own_group ? -c->pid : c->pid, signo) != 0)
        return REACTOR_ERR_SYS;
    return 0;
}

void reactor_child_detach(struct reactor_child *c)
{
    c->cb = NULL;
    c->arg = NULL;
}

unsigned reactor_children_running(const struct reactor *r)
{
    return r->children_alive;
}

void reactor_children_free_all(struct reactor *r)
{
    struct reactor_child *c;
    int status;

    while ((c = LIST_FIRST(&r->children)) != NULL) {
        LIST_REMOVE(c, link);
        (void)kill(c->own_group ? -c->pid : c->pid, SIGKILL);
        /* Teardown is the one place that may wait: the loop is gone. */
        while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR)
            ;
        free(c);
    }
    r->children_alive = 0;
    if (r->sigchld != NULL)
        event_free(r->sigchld);
    r->sigchld = NULL;
}
