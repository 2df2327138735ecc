/* openshell-supervisor (minimal): PID 1 of a sandbox.
 *
 *   openshell-supervisor [--stop-grace-seconds N] [--ready-fd FD] [--tty] [--] CMD ARGS...
 *
 * Reaps every zombie, starts the main command (argv as given, never parsed
 * by a shell; cwd /sandbox, stdin /dev/null, stdout and stderr inherited),
 * logs how it ended and stays up afterwards as the session holder. On
 * SIGTERM or SIGINT it forwards SIGTERM to every remaining process, waits
 * up to the grace period, SIGKILLs what is left and exits 0. Without a
 * command it just waits. Plain POSIX: signals are taken synchronously with
 * sigtimedwait(), so there is no handler state to get wrong.
 *
 * Later this process dials the gateway (ConnectSupervisor); for now it
 * only checks that the sandbox token file named by
 * OPENSHELL_SANDBOX_TOKEN_FILE is readable (never printing the token).
 *
 * --ready-fd: one byte is written to FD (then closed) once the signal
 * handlers are in place; the driver reports the sandbox Running only then.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"

#define DEFAULT_GRACE_S 5
#define WORKDIR         "/sandbox"

struct supervisor {
    char **cmd; /* NULL: no main command */
    bool tty;
    unsigned grace_s; /* after SIGTERM, before SIGKILL */
    int ready_fd;     /* -1: none */
    pid_t main_pid;   /* 0 once reaped (or never started) */
    bool terminating;
    uint64_t deadline_us; /* while terminating: when to SIGKILL */
    bool killed;
};

static void on_signal(int signo)
{
    (void)signo; /* never runs: the signals stay blocked and are taken with sigtimedwait */
}

/* PID 1 of a PID namespace only receives signals it has a handler for, so
 * install one (blocked, then waited for) for each signal we act on. */
static void setup_signals(sigset_t *set)
{
    static const int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP};
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(set);
    for (size_t i = 0; i < GW_ARRAY_LEN(sigs); i++) {
        sigaction(sigs[i], &sa, NULL);
        sigaddset(set, sigs[i]);
    }
    sigprocmask(SIG_BLOCK, set, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static void check_token(void)
{
    const char *path = getenv("OPENSHELL_SANDBOX_TOKEN_FILE");
    struct stat st;
    int fd;

    if (path == NULL || path[0] == '\0') {
        log_warn("supervisor.no_token",
                 LF_STR("reason", "OPENSHELL_SANDBOX_TOKEN_FILE is not set"));
        return;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
        log_error("supervisor.token_unreadable", LF_STR("path", path),
                  LF_STR("error", strerror(errno)));
        if (fd >= 0)
            close(fd);
        return;
    }
    close(fd);
    log_info("supervisor.token", LF_STR("path", path), LF_INT("bytes", st.st_size));
}

/* In the child: never returns. Reports an exec failure on |report|. */
GW_NORETURN static void exec_main(struct supervisor *s, const sigset_t *blocked, int report)
{
    struct sigaction sa;
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int err;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP)
            (void)sigaction(sig, &sa, NULL);
    }
    sigprocmask(SIG_UNBLOCK, blocked, NULL);
    (void)setsid(); /* its own session and process group, ready for a terminal later */
    if (null < 0 || dup2(null, 0) < 0)
        goto fail;
    if (chdir(WORKDIR) != 0 && errno != ENOENT) /* no /sandbox: run by hand, stay put */
        goto fail;
    execvp(s->cmd[0], s->cmd);
fail:
    err = errno;
    if (write(report, &err, sizeof(err)) < 0) {
        /* the supervisor still sees exit status 127 */
    }
    _exit(127);
}

static void start_main(struct supervisor *s, const sigset_t *blocked)
{
    int p[2], err = 0;
    ssize_t n;
    pid_t pid;

    if (pipe2(p, O_CLOEXEC) != 0) {
        log_error("supervisor.start_failed", LF_STR("error", strerror(errno)));
        return;
    }
    pid = fork();
    if (pid == 0) {
        close(p[0]);
        exec_main(s, blocked, p[1]);
    }
    close(p[1]);
    if (pid < 0) {
        log_error("supervisor.start_failed", LF_STR("error", strerror(errno)));
        close(p[0]);
        return;
    }
    s->main_pid = pid;
    do
        n = read(p[0], &err, sizeof(err));
    while (n < 0 && errno == EINTR);
    close(p[0]);
    if (n == (ssize_t)sizeof(err))
        log_error("supervisor.exec_failed", LF_STR("program", s->cmd[0]),
                  LF_STR("error", strerror(err)));
    else
        log_info("supervisor.main_started", LF_STR("program", s->cmd[0]), LF_INT("pid", pid));
}

static void log_main_exit(int status)
{
    if (WIFSIGNALED(status))
        log_info("supervisor.main_exited", LF_INT("signal", WTERMSIG(status)),
                 LF_INT("exit_code", 128 + WTERMSIG(status)));
    else
        log_info("supervisor.main_exited", LF_INT("exit_code", WEXITSTATUS(status)));
}

/* Reaps every child that has exited. Returns true when none is left. */
static bool reap(struct supervisor *s)
{
    int status;

    for (;;) {
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid < 0)
            return errno == ECHILD;
        if (pid == 0)
            return false;
        if (pid == s->main_pid) {
            s->main_pid = 0;
            log_main_exit(status);
        }
    }
}

/* As PID 1, kill(-1) reaches every other process of the namespace; run
 * outside one (tests, by hand), only our own children's groups. */
static void signal_all(struct supervisor *s, int signo)
{
    if (getpid() == 1)
        (void)kill(-1, signo);
    else if (s->main_pid > 0)
        (void)kill(-s->main_pid, signo);
}

static void begin_termination(struct supervisor *s, int signo)
{
    if (s->terminating)
        return;
    log_info("supervisor.terminating", LF_STR("signal", strsignal(signo)),
             LF_UINT("grace_s", s->grace_s));
    s->terminating = true;
    s->deadline_us = gw_clock_mono_us() + (uint64_t)s->grace_s * 1000000;
    signal_all(s, SIGTERM);
}

static int parse_args(int argc, char **argv, struct supervisor *s)
{
    int i = 1;

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
            s->grace_s = (unsigned)strtoul(argv[++i], NULL, 10);
            s->grace_s = s->grace_s > 0 ? s->grace_s - 1 : 0; /* leave the driver its SIGKILL */
        } else if (strcmp(argv[i], "--ready-fd") == 0 && i + 1 < argc) {
            s->ready_fd = (int)strtol(argv[++i], NULL, 10);
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

/* Waits for the next signal, up to the termination deadline. */
static int next_signal(struct supervisor *s, const sigset_t *set)
{
    struct timespec ts = {.tv_sec = 3600, .tv_nsec = 0};

    if (s->terminating) {
        uint64_t now = gw_clock_mono_us();
        uint64_t left = s->deadline_us > now ? s->deadline_us - now : 0;
        ts.tv_sec = (time_t)(left / 1000000);
        ts.tv_nsec = (long)(left % 1000000) * 1000;
    }
    return sigtimedwait(set, NULL, &ts);
}

/* Until a termination signal has been handled and no child is left. */
static void run(struct supervisor *s, const sigset_t *set)
{
    for (;;) {
        int sig = next_signal(s, set);
        bool none_left;

        if (sig == SIGTERM || sig == SIGINT)
            begin_termination(s, sig);
        none_left = reap(s);
        if (!s->terminating)
            continue;
        if (none_left)
            return;
        if (gw_clock_mono_us() < s->deadline_us)
            continue;
        if (s->killed)
            return; /* something unkillable; the namespace dies with us anyway */
        log_warn("supervisor.kill_remaining");
        s->killed = true;
        signal_all(s, SIGKILL);
        s->deadline_us = gw_clock_mono_us() + 1000000;
    }
}

int main(int argc, char **argv)
{
    struct supervisor s;
    sigset_t set;
    const char *lvl = getenv("OPENSHELL_LOG_LEVEL");
    enum log_level level;

    memset(&s, 0, sizeof(s));
    if (lvl != NULL && log_level_parse(lvl, &level) == 0)
        log_set_level(level);
    if (parse_args(argc, argv, &s) != 0)
        return 2;
    setup_signals(&set);
    if (getpid() != 1)
        (void)prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    log_info("supervisor.started", LF_INT("pid", getpid()),
             LF_STR("sandbox_id", getenv("OPENSHELL_SANDBOX_ID")));
    check_token();
    if (s.ready_fd > 2) {
        if (write(s.ready_fd, "R", 1) != 1)
            log_warn("supervisor.ready_failed", LF_STR("error", strerror(errno)));
        close(s.ready_fd);
    }
    if (s.tty)
        log_warn("supervisor.tty_unsupported",
                 LF_STR("reason", "a terminal was requested; this supervisor runs the command "
                                  "without one for now"));
    if (s.cmd != NULL)
        start_main(&s, &set);
    else
        log_info("supervisor.no_command");
    run(&s, &set);
    log_info("supervisor.exiting");
    return 0;
}
