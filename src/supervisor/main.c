/* openshell-supervisor: PID 1 of a sandbox.
 *
 *   openshell-supervisor [--stop-grace-seconds N] [--ready-fd FD] [--tty] [--] CMD ARGS...
 *
 * One libevent loop (src/reactor) does everything: it reaps every child
 * (the reactor's SIGCHLD handler; pids it did not spawn come back through
 * its orphan hook), runs the main command (argv as given, execvp, never a
 * shell; cwd /sandbox; on a PTY with --tty, else stdin /dev/null and
 * stdout/stderr pipes), turns its output into log lines (our own stderr,
 * which the driver keeps as the sandbox log, and PushSandboxLogs), serves
 * SSH on a Unix socket (sup_ssh.c) and holds the session with the gateway
 * (sup_session.c). When the main command exits, the exit is reported and
 * the supervisor stays up until SIGTERM.
 *
 * SIGTERM or SIGINT: stop the SSH server, close the session, forward
 * SIGTERM to every remaining process, wait up to the grace period, SIGKILL
 * what is left and exit 0. Without a command it just serves.
 *
 * Environment (set by the driver): OPENSHELL_SANDBOX_ID, _NAME, _WORKSPACE,
 * OPENSHELL_ENDPOINT (no session without it), OPENSHELL_SANDBOX_TOKEN_FILE
 * (read once, kept in memory only, never logged, and not passed on),
 * OPENSHELL_SANDBOX_INSTANCE_ID (else a fresh UUID), OPENSHELL_TLS_CA_FILE,
 * OPENSHELL_SSH_SOCKET, OPENSHELL_LOG_LEVEL.
 *
 * --ready-fd: one byte is written to FD (then closed) once the signal
 * handlers are in place; the driver reports the sandbox Running only then.
 */
#include "supervisor/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "reactor/reactor.h"

#define DEFAULT_GRACE_S    5
#define WORKDIR            "/sandbox"
#define DEFAULT_SSH_SOCKET "/run/openshell/ssh.sock"
#define TOKEN_ENV          "OPENSHELL_SANDBOX_TOKEN_FILE"
#define TOKEN_FILE_MAX     8192
#define LINE_MAX_BYTES     8192 /* longer output lines are split */
#define DONE_POLL_MS       50   /* while terminating: are all children gone? */
#define KILL_WAIT_MS       1000 /* after SIGKILL, before giving up */

extern char **environ;

struct supervisor;

/* One output stream of the main command, split into lines. */
struct out_reader {
    struct supervisor *sup;
    int fd; /* -1 when closed */
    struct event *ev;
    enum log_level level;
    bool keep_fd; /* the PTY master: stays open after EOF so the terminal lives on */
    size_t len;
    char buf[LINE_MAX_BYTES];
};

struct supervisor {
    struct reactor *r;
    char **cmd; /* NULL: no main command */
    bool tty;
    unsigned grace_s; /* after SIGTERM, before SIGKILL */
    int ready_fd;     /* -1: none */
    char **child_env; /* environ without the token file variable */
    pid_t main_pid;   /* 0 once reaped (or never started) */
    pid_t main_pgid;  /* the main command's process group (its own session) */
    struct out_reader out[2];
    int exec_fd; /* read end of the exec-failure pipe, -1 when done */
    struct event *exec_ev;
    struct sup_session *session;
    struct sup_ssh *ssh;
    const char *ssh_socket;
    bool terminating;
    bool killed;
    struct reactor_timer *deadline, *done_poll;
};

/* ---- output of the main command ----------------------------------------------------- */

static void emit_line(struct supervisor *s, enum log_level level, const char *p, size_t len)
{
    struct iovec iov[2] = {{(void *)p, len}, {(void *)"\n", 1}};

    if (len > 0 && p[len - 1] == '\r')
        iov[0].iov_len = --len;
    if (writev(2, iov, 2) < 0) {
        /* our stderr is gone; the line still goes to the gateway */
    }
    sup_session_log(s->session, level, SUP_TARGET_MAIN, p, len);
}

static void reader_close(struct out_reader *o)
{
    if (o->ev != NULL)
        event_free(o->ev);
    o->ev = NULL;
    if (o->len > 0)
        emit_line(o->sup, o->level, o->buf, o->len);
    o->len = 0;
    if (o->fd >= 0 && !o->keep_fd)
        close(o->fd);
    if (!o->keep_fd)
        o->fd = -1;
}

/* Emits every complete line in the buffer; a full buffer without a
 * newline is emitted as one line. */
static void split_lines(struct out_reader *o)
{
    size_t start = 0;
    char *nl;

    while ((nl = memchr(o->buf + start, '\n', o->len - start)) != NULL) {
        emit_line(o->sup, o->level, o->buf + start, (size_t)(nl - (o->buf + start)));
        start = (size_t)(nl - o->buf) + 1;
    }
    if (start == 0 && o->len == sizeof(o->buf)) {
        emit_line(o->sup, o->level, o->buf, o->len);
        start = o->len;
    }
    memmove(o->buf, o->buf + start, o->len - start);
    o->len -= start;
}

static void on_output(evutil_socket_t fd, short what, void *arg)
{
    struct out_reader *o = arg;
    ssize_t n = read(o->fd, o->buf + o->len, sizeof(o->buf) - o->len);

    if (n > 0) {
        o->len += (size_t)n;
        split_lines(o);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    /* EOF, or EIO on a PTY master once every slave fd is closed. */
    reader_close(o);
}

static void reader_start(struct supervisor *s, struct out_reader *o, int fd, enum log_level level,
                         bool keep_fd)
{
    o->sup = s;
    o->fd = fd;
    o->level = level;
    o->keep_fd = keep_fd;
    (void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    o->ev = event_new(reactor_base(s->r), fd, EV_READ | EV_PERSIST, on_output, o);
    if (o->ev == NULL)
        gw_panic(__FILE__, __LINE__, "out of memory");
    event_add(o->ev, NULL);
}

/* ---- starting the main command -------------------------------------------------------- */

/* The child's standard streams. */
struct child_stdio {
    int in, out, err; /* in the child: dup2'ed onto 0, 1, 2 */
    bool ctty;        /* |in| is a PTY slave to become the controlling terminal */
};

/* In the child: never returns. Reports a failure's errno on |report|. */
GW_NORETURN static void exec_main(struct supervisor *s, const struct child_stdio *io, int report)
{
    struct sigaction sa;
    sigset_t none;
    int err;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP)
            (void)sigaction(sig, &sa, NULL);
    }
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    (void)setsid(); /* its own session and process group */
    if (io->ctty && ioctl(io->in, TIOCSCTTY, 0) != 0)
        goto fail;
    if (dup2(io->in, 0) < 0 || dup2(io->out, 1) < 0 || dup2(io->err, 2) < 0)
        goto fail;
    /* Whatever else is open stays with the supervisor. */
    (void)close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
    if (chdir(WORKDIR) != 0 && errno != ENOENT) /* no /sandbox: run by hand, stay put */
        goto fail;
    environ = s->child_env;
    execvp(s->cmd[0], s->cmd);
fail:
    err = errno;
    if (write(report, &err, sizeof(err)) < 0) {
        /* the supervisor still sees exit status 127 */
    }
    _exit(127);
}

static void on_exec_report(evutil_socket_t fd, short what, void *arg)
{
    struct supervisor *s = arg;
    int err = 0;
    ssize_t n = read(s->exec_fd, &err, sizeof(err));

    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n == (ssize_t)sizeof(err)) {
        char msg[300];
        log_error("supervisor.exec_failed", LF_STR("program", s->cmd[0]),
                  LF_STR("error", strerror(err)));
        snprintf(msg, sizeof(msg), "cannot run %.200s: %s", s->cmd[0], strerror(err));
        sup_session_log(s->session, LOG_ERROR, SUP_TARGET_SUPERVISOR, msg, strlen(msg));
    }
    event_free(s->exec_ev);
    s->exec_ev = NULL;
    close(s->exec_fd);
    s->exec_fd = -1;
}

/* Opens the child's streams: a PTY, or /dev/null plus two pipes. |keep|
 * gets the parent's ends (out, err; err -1 with a PTY). Returns 0 or -1. */
static int open_stdio(struct supervisor *s, struct child_stdio *io, int keep[2])
{
    struct winsize ws = {.ws_row = 24, .ws_col = 80};
    int po[2], pe[2];

    if (s->tty) {
        int master, slave;
        if (openpty(&master, &slave, NULL, NULL, &ws) != 0)
            return -1;
        *io = (struct child_stdio){slave, slave, slave, true};
        keep[0] = master;
        keep[1] = -1;
        return 0;
    }
    io->ctty = false;
    io->in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (io->in < 0)
        return -1;
    if (pipe2(po, O_CLOEXEC) != 0) {
        close(io->in);
        return -1;
    }
    if (pipe2(pe, O_CLOEXEC) != 0) {
        close(io->in);
        close(po[0]);
        close(po[1]);
        return -1;
    }
    io->out = po[1];
    io->err = pe[1];
    keep[0] = po[0];
    keep[1] = pe[0];
    return 0;
}

static void close_child_ends(const struct child_stdio *io)
{
    close(io->in);
    if (io->out != io->in)
        close(io->out);
    if (io->err != io->in && io->err != io->out)
        close(io->err);
}

static void start_main(struct supervisor *s)
{
    struct child_stdio io;
    int keep[2], rep[2];
    sigset_t all, old;
    pid_t pid;

    if (open_stdio(s, &io, keep) != 0 || pipe2(rep, O_CLOEXEC) != 0) {
        log_error("supervisor.start_failed", LF_STR("error", strerror(errno)));
        return;
    }
    /* Until the child has reset its dispositions, a signal would run
     * libevent's handler there. */
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid = fork();
    if (pid == 0) {
        close(rep[0]);
        exec_main(s, &io, rep[1]);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    close(rep[1]);
    close_child_ends(&io);
    if (pid < 0) {
        log_error("supervisor.start_failed", LF_STR("error", strerror(errno)));
        close(rep[0]);
        close(keep[0]);
        if (keep[1] >= 0)
            close(keep[1]);
        return;
    }
    s->main_pid = s->main_pgid = pid;
    reader_start(s, &s->out[0], keep[0], LOG_INFO, s->tty);
    if (keep[1] >= 0)
        reader_start(s, &s->out[1], keep[1], LOG_WARN, false);
    s->exec_fd = rep[0];
    s->exec_ev = event_new(reactor_base(s->r), rep[0], EV_READ | EV_PERSIST, on_exec_report, s);
    if (s->exec_ev == NULL)
        gw_panic(__FILE__, __LINE__, "out of memory");
    event_add(s->exec_ev, NULL);
    log_info("supervisor.main_started", LF_STR("program", s->cmd[0]), LF_INT("pid", pid),
             LF_BOOL("tty", s->tty));
}

/* ---- children and termination ---------------------------------------------------------- */

static int exit_code_of(int status)
{
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

static void main_exited(struct supervisor *s, int status)
{
    int code = exit_code_of(status);

    s->main_pid = 0;
    if (WIFSIGNALED(status))
        log_info("supervisor.main_exited", LF_INT("signal", WTERMSIG(status)),
                 LF_INT("exit_code", code));
    else
        log_info("supervisor.main_exited", LF_INT("exit_code", code));
    if (!s->terminating)
        sup_session_report_exit(s->session, code);
}

static void on_orphan(pid_t pid, int status, void *arg)
{
    struct supervisor *s = arg;

    if (pid == s->main_pid && pid != 0) {
        main_exited(s, status);
        return;
    }
    if (s->ssh != NULL && sup_ssh_child_exited(s->ssh, pid, status))
        return;
    log_debug("supervisor.reaped", LF_INT("pid", pid), LF_INT("status", status));
}

/* True when this process has no child left (running or zombie); never reaps. */
static bool no_children(void)
{
    siginfo_t si;

    return waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 && errno == ECHILD;
}

/* As PID 1, kill(-1) reaches every other process of the namespace; run
 * outside one (tests, by hand), only the main command's group. */
static void signal_all(struct supervisor *s, int signo)
{
    if (getpid() == 1)
        (void)kill(-1, signo);
    else if (s->main_pgid > 0)
        (void)kill(-s->main_pgid, signo);
}

static void on_done_poll(struct reactor_timer *t, void *arg)
{
    struct supervisor *s = arg;

    if (no_children())
        reactor_stop(s->r);
}

static void on_deadline(struct reactor_timer *t, void *arg)
{
    struct supervisor *s = arg;

    if (s->killed) {
        reactor_stop(s->r); /* something unkillable; the namespace dies with us anyway */
        return;
    }
    log_warn("supervisor.kill_remaining");
    s->killed = true;
    signal_all(s, SIGKILL);
    reactor_timer_arm(s->deadline, KILL_WAIT_MS);
}

static void on_term_signal(int signo, void *arg)
{
    struct supervisor *s = arg;

    if (s->terminating)
        return;
    log_info("supervisor.terminating", LF_STR("signal", strsignal(signo)),
             LF_UINT("grace_s", s->grace_s));
    s->terminating = true;
    if (s->ssh != NULL)
        sup_ssh_stop(s->ssh);
    s->ssh = NULL;
    sup_session_free(s->session);
    s->session = NULL;
    signal_all(s, SIGTERM);
    s->deadline = reactor_timer_new(s->r, on_deadline, s);
    s->done_poll = reactor_timer_new(s->r, on_done_poll, s);
    reactor_timer_arm(s->deadline, (uint64_t)s->grace_s * 1000);
    reactor_timer_arm_periodic(s->done_poll, DONE_POLL_MS);
    on_done_poll(s->done_poll, s);
}

static void on_ignored_signal(int signo, void *arg)
{
    log_debug("supervisor.signal_ignored", LF_STR("signal", strsignal(signo)));
}

/* PID 1 of a PID namespace only receives signals it has a handler for;
 * the reactor installs one for each of these (and SIGCHLD). */
static int setup_signals(struct supervisor *s)
{
    if (reactor_on_signal(s->r, SIGTERM, on_term_signal, s) != 0 ||
        reactor_on_signal(s->r, SIGINT, on_term_signal, s) != 0 ||
        reactor_on_signal(s->r, SIGHUP, on_ignored_signal, s) != 0 ||
        reactor_set_orphan_cb(s->r, on_orphan, s) != 0)
        return -1;
    return 0;
}

/* ---- arguments and environment ------------------------------------------------------------ */

static int parse_args(int argc, char **argv, struct supervisor *s)
{
    int i = 1;
    char *end;

    s->grace_s = DEFAULT_GRACE_S;
    s->ready_fd = -1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        }
        if (strcmp(argv[i], "--tty") == 0) {
            s->tty = true;
        } else if (strcmp(argv[i], "--stop-grace-seconds") == 0 && i + 1 < argc) {
            unsigned long g = strtoul(argv[++i], &end, 10);
            if (*end != '\0' || g > 86400) {
                fprintf(stderr, "openshell-supervisor: bad --stop-grace-seconds '%s'\n", argv[i]);
                return -1;
            }
            s->grace_s = g > 0 ? (unsigned)g - 1 : 0; /* leave the driver its SIGKILL */
        } else if (strcmp(argv[i], "--ready-fd") == 0 && i + 1 < argc) {
            long fd = strtol(argv[++i], &end, 10);
            if (*end != '\0' || fd < 0 || fd > INT_MAX) {
                fprintf(stderr, "openshell-supervisor: bad --ready-fd '%s'\n", argv[i]);
                return -1;
            }
            s->ready_fd = (int)fd;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "openshell-supervisor: unknown option '%s'\n", argv[i]);
            return -1;
        } else {
            break;
        }
    }
    s->cmd = i < argc ? &argv[i] : NULL;
    return 0;
}

/* The environment for the main command and SSH sessions: ours without
 * the token file's name. The strings stay environ's. */
static char **child_environment(void)
{
    size_t n = 0, k = 0;
    char **env;

    while (environ[n] != NULL)
        n++;
    env = gw_xcalloc(n + 1, sizeof(*env));
    for (size_t i = 0; i < n; i++) {
        if (strncmp(environ[i], TOKEN_ENV "=", sizeof(TOKEN_ENV)) != 0)
            env[k++] = environ[i];
    }
    return env;
}

/* Reads the token once. Returns a heap string (trimmed) or NULL. */
static char *read_token(void)
{
    const char *path = getenv(TOKEN_ENV);
    char *buf;
    ssize_t n;
    size_t len = 0;
    int fd;

    if (path == NULL || path[0] == '\0') {
        log_warn("supervisor.no_token", LF_STR("reason", TOKEN_ENV " is not set"));
        return NULL;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        log_error("supervisor.token_unreadable", LF_STR("path", path),
                  LF_STR("error", strerror(errno)));
        return NULL;
    }
    buf = gw_xmalloc(TOKEN_FILE_MAX + 1);
    while (len < TOKEN_FILE_MAX &&
           ((n = read(fd, buf + len, TOKEN_FILE_MAX - len)) > 0 || (n < 0 && errno == EINTR)))
        len += n > 0 ? (size_t)n : 0;
    close(fd);
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' '))
        len--;
    buf[len] = '\0';
    if (len == 0) {
        log_error("supervisor.token_unreadable", LF_STR("path", path),
                  LF_STR("error", "empty or unreadable"));
        free(buf);
        return NULL;
    }
    log_info("supervisor.token", LF_STR("path", path), LF_UINT("bytes", len));
    return buf;
}

/* ---- session and SSH ----------------------------------------------------------------------- */

static void start_session(struct supervisor *s)
{
    const char *url = getenv("OPENSHELL_ENDPOINT");
    const char *id = getenv("OPENSHELL_SANDBOX_ID");
    const char *inst = getenv("OPENSHELL_SANDBOX_INSTANCE_ID");
    struct sup_endpoint ep;
    struct sup_session_opts o = {0};
    char err[256], uuid[37];
    char *token;

    if (url == NULL || url[0] == '\0') {
        log_warn("supervisor.no_session", LF_STR("reason", "OPENSHELL_ENDPOINT is not set"));
        return;
    }
    if (id == NULL || id[0] == '\0') {
        log_error("supervisor.no_session", LF_STR("reason", "OPENSHELL_SANDBOX_ID is not set"));
        return;
    }
    if (sup_endpoint_parse(url, &ep, err, sizeof(err)) != 0) {
        log_error("supervisor.no_session", LF_STR("endpoint", url), LF_STR("reason", err));
        return;
    }
    if (inst == NULL || inst[0] == '\0') {
        gw_uuid4(uuid);
        inst = uuid;
    }
    token = read_token();
    o.endpoint = &ep;
    o.sandbox_id = id;
    o.instance_id = inst;
    o.token = token;
    o.ca_file = getenv("OPENSHELL_TLS_CA_FILE");
    o.ssh_socket = s->ssh_socket;
    s->session = sup_session_new(s->r, &o, err, sizeof(err));
    if (token != NULL) {
        explicit_bzero(token, strlen(token));
        free(token);
    }
    if (s->session == NULL) {
        log_error("supervisor.no_session", LF_STR("endpoint", url), LF_STR("reason", err));
        return;
    }
    log_info("supervisor.session_starting", LF_STR("endpoint", url), LF_STR("sandbox_id", id),
             LF_STR("instance_id", inst));
}

static void start_ssh(struct supervisor *s)
{
    struct sup_ssh_opts o = {
        .socket_path = s->ssh_socket,
        .workdir = WORKDIR,
        .shell = NULL,
        .envp = s->child_env,
    };
    char dir[PATH_MAX], err[256];
    char *slash;

    snprintf(dir, sizeof(dir), "%s", s->ssh_socket);
    slash = strrchr(dir, '/');
    if (slash != NULL && slash != dir) {
        *slash = '\0';
        if (mkdir(dir, 0755) != 0 && errno != EEXIST)
            log_warn("supervisor.ssh_dir_failed", LF_STR("dir", dir),
                     LF_STR("error", strerror(errno)));
    }
    s->ssh = sup_ssh_start(s->r, &o, err, sizeof(err));
    if (s->ssh == NULL)
        log_error("supervisor.ssh_failed", LF_STR("socket", s->ssh_socket), LF_STR("error", err));
}

static void signal_ready(struct supervisor *s)
{
    if (s->ready_fd <= 2)
        return;
    if (write(s->ready_fd, "R", 1) != 1)
        log_warn("supervisor.ready_failed", LF_STR("error", strerror(errno)));
    close(s->ready_fd);
    s->ready_fd = -1;
}

static void cleanup(struct supervisor *s)
{
    for (size_t i = 0; i < GW_ARRAY_LEN(s->out); i++) {
        s->out[i].keep_fd = false;
        if (s->out[i].fd >= 0 || s->out[i].ev != NULL)
            reader_close(&s->out[i]);
    }
    if (s->exec_ev != NULL)
        event_free(s->exec_ev);
    if (s->exec_fd >= 0)
        close(s->exec_fd);
    if (s->ssh != NULL)
        sup_ssh_stop(s->ssh);
    sup_session_free(s->session);
    if (s->deadline != NULL)
        reactor_timer_free(s->deadline);
    if (s->done_poll != NULL)
        reactor_timer_free(s->done_poll);
    reactor_free(s->r);
    free(s->child_env);
}

int main(int argc, char **argv)
{
    struct supervisor s;
    const char *lvl = getenv("OPENSHELL_LOG_LEVEL");
    enum log_level level;
    int rc = 0;

    /* Relay chunks are 64 KiB: keep them off mmap and keep freed heap
     * instead of trimming and faulting it back in for every chunk. */
    (void)mallopt(M_MMAP_THRESHOLD, 1024 * 1024);
    (void)mallopt(M_TRIM_THRESHOLD, 8 * 1024 * 1024);

    memset(&s, 0, sizeof(s));
    s.exec_fd = s.out[0].fd = s.out[1].fd = -1;
    if (lvl != NULL && log_level_parse(lvl, &level) == 0)
        log_set_level(level);
    if (parse_args(argc, argv, &s) != 0)
        return 2;
    s.ssh_socket = getenv("OPENSHELL_SSH_SOCKET");
    if (s.ssh_socket == NULL || s.ssh_socket[0] == '\0')
        s.ssh_socket = DEFAULT_SSH_SOCKET;
    s.r = reactor_new();
    if (s.r == NULL || setup_signals(&s) != 0) {
        log_error("supervisor.setup_failed");
        return 1;
    }
    if (getpid() != 1)
        (void)prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    s.child_env = child_environment();
    log_info("supervisor.started", LF_INT("pid", getpid()),
             LF_STR("sandbox_id", getenv("OPENSHELL_SANDBOX_ID")),
             LF_STR("sandbox_name", getenv("OPENSHELL_SANDBOX_NAME")));
    signal_ready(&s);
    start_ssh(&s);
    start_session(&s);
    if (s.cmd != NULL)
        start_main(&s);
    else
        log_info("supervisor.no_command");
    if (reactor_run(s.r) != 0) {
        log_error("supervisor.loop_failed");
        rc = 1;
    }
    log_info("supervisor.exiting");
    cleanup(&s);
    return rc;
}
