/*
 * sup_ssh: the SSH server inside a sandbox (see supervisor.h).
 *
 * The supervisor's loop only accepts: each connection is served by its own
 * forked child, which runs libssh in poll mode (ssh_event) and may block.
 * One such child is forked ahead of time and waits as a spare, so a new
 * connection is handed over (SCM_RIGHTS) instead of waiting for a fork.
 * The child starts the command with posix_spawn() (a vfork: no copy of its
 * page tables) in a new session, watches it through a pidfd and reaps it
 * itself, so the supervisor's reaper only ever sees connection children.
 *
 * Ordering at exit (RFC 4254 section 6.10): the command's output is
 * drained to end-of-file (or until it has been quiet for DRAIN_GRACE_MS
 * after the command exited, when a background process keeps the pipe
 * open) before exit-status, EOF and CLOSE go out, because clients may drop
 * data that arrives after CLOSE.
 *
 * Flow control: command output is read only while the client's window is
 * open, so a slow client stalls the command instead of filling memory.
 * Stdin bytes go straight from libssh's packet buffer into the pipe; what
 * the pipe does not take stays in libssh's buffer, whose window libssh only
 * reopens once that buffer has been consumed (see pump_stdin).
 */
#include "supervisor/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <event2/event.h>
#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <libssh/server.h>

#include "reactor/reactor.h"

#define MAX_CONNS        64     /* concurrent connection children */
#define KEX_TIMEOUT_S    10     /* banner + key exchange */
#define SETUP_TIMEOUT_MS 60000  /* accept .. exec/shell request */
#define DRAIN_GRACE_MS   250    /* output still open after the command exited */
#define CLOSE_WAIT_MS    2000   /* after our CLOSE: wait for the client to hang up */
#define KILL_GRACE_MS    2000   /* after SIGHUP/SIGTERM to the command: then SIGKILL */
#define IO_CHUNK         65536  /* one read from a command pipe */
#define MAX_ENV          128    /* env requests per channel */
#define MAX_ENV_BYTES    262144 /* their total size */
#define MAX_TERM         64     /* TERM from pty-req */
#define ACCEPT_PAUSE_MS  100    /* after EMFILE: stop accepting this long */

extern char **environ;

struct sup_ssh {
    struct reactor *r;
    char *socket_path;
    char *workdir; /* NULL: inherit */
    char *shell;   /* NULL: /bin/bash if present, else /bin/sh */
    char **envp;   /* owned copy; NULL: environ at fork time */
    ssh_bind bind; /* holds the host key */
    int listen_fd;
    struct event *accept_ev;
    struct event *resume_ev; /* re-enables accept after fd exhaustion */
    struct event *refill_ev; /* forks a new spare after one was used */
    pid_t spare_pid;         /* a child waiting for a connection, 0: none */
    int spare_sock;          /* our end of its socketpair, -1: none */
    pid_t kids[MAX_CONNS];   /* connection children not yet reaped */
    unsigned nkids;
};

/* ---- the connection child ---------------------------------------------------- */

enum { OUT_STDOUT, OUT_STDERR, OUT_N };

/* One output of the command (with a PTY only OUT_STDOUT is used). */
struct out_stream {
    int fd;          /* our read end, -1 once at end-of-file */
    bool polled;     /* registered in the ssh_event */
    bool ready;      /* poll reported it readable (or hung up) */
    bool idle;       /* the last read found the pipe empty */
    char *buf;       /* IO_CHUNK bytes */
    size_t off, len; /* read but not yet taken by the channel */
};

struct conn {
    struct sup_ssh *s;
    ssh_session session;
    ssh_event event;
    ssh_channel channel;
    struct ssh_server_callbacks_struct scb;
    struct ssh_channel_callbacks_struct ccb;
    int sigfd; /* SIGTERM/SIGINT/SIGHUP */
    bool sig_ready;
    uint64_t start_us;

    /* requests before the command */
    bool pty;
    char term[MAX_TERM + 1];
    struct winsize ws;
    char **env; /* "NAME=value" from env requests */
    size_t nenv, env_bytes;

    /* the command */
    pid_t pid; /* 0: not started; -1: could not be started (reported as 127) */
    int pidfd;
    bool pid_polled, pid_ready;
    bool exited;
    int status;
    uint64_t cmd_start_us, exit_us;

    /* stdin: the pipe (or a dup of the PTY master) */
    int in_fd;      /* -1: not started or closed */
    bool in_gone;   /* closed for good: discard what the client sends */
    bool in_polled; /* registered for POLLOUT */
    bool in_ready;
    bool in_backlog; /* libssh may hold stdin bytes we have not taken */
    bool client_eof;
    char *in_buf; /* bytes taken from libssh, not yet in the pipe */
    size_t in_off, in_len, in_cap;

    struct out_stream out[OUT_N];

    /* lifecycle */
    bool client_closed; /* the client closed the channel */
    bool session_gone;  /* the connection is closed or broken */
    bool hung_up;       /* the client left first: the command got SIGHUP */
    bool terminating;   /* we got SIGTERM: the command got it too */
    bool exit_sent;     /* exit-status, EOF and CLOSE are out */
    bool done;
    uint64_t kill_at_us;  /* SIGKILL the command's group at this time (0: no) */
    uint64_t close_by_us; /* after exit_sent: give up waiting for the client */
    uint64_t stop_by_us;  /* after SIGTERM: give up on the client altogether */
};

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static uint64_t ms_to_us(uint64_t ms)
{
    return ms * 1000;
}

static int on_fd_ready(socket_t fd, int revents, void *userdata)
{
    (void)fd;
    (void)revents;
    *(bool *)userdata = true;
    return 0;
}

/* Adds |fd| to or removes it from the event loop so it matches |want|.
 * Only called between polls, never from a libssh callback. */
static void set_polled(struct conn *c, int fd, bool *polled, bool want, short events, bool *ready)
{
    if (fd < 0 || *polled == want)
        return;
    if (want) {
        if (ssh_event_add_fd(c->event, fd, events, on_fd_ready, ready) != SSH_OK) {
            log_error("ssh.poll_failed", LF_INT("fd", fd));
            c->done = true;
            return;
        }
    } else {
        ssh_event_remove_fd(c->event, fd);
    }
    *polled = want;
}

/* RFC 4254 names are the signal names without "SIG". */
static const char *signal_name(int sig)
{
    const char *n = sigabbrev_np(sig);
    return n != NULL ? n : "UNKNOWN";
}

static int signal_number(const char *name)
{
    if (strncmp(name, "SIG", 3) == 0)
        name += 3;
    for (int sig = 1; sig < NSIG; sig++) {
        const char *n = sigabbrev_np(sig);
        if (n != NULL && strcmp(n, name) == 0)
            return sig;
    }
    return 0;
}

/* Sends |sig| to the command's process group (it is a session leader). */
static void signal_command(struct conn *c, int sig)
{
    if (c->pid > 0 && !c->exited && kill(-c->pid, sig) != 0 && errno == ESRCH)
        (void)kill(c->pid, sig);
}

/* ---- starting the command ------------------------------------------------------ */

static bool env_name_valid(const char *n)
{
    if (!((*n >= 'A' && *n <= 'Z') || (*n >= 'a' && *n <= 'z') || *n == '_'))
        return false;
    for (n++; *n != '\0'; n++) {
        if (!((*n >= 'A' && *n <= 'Z') || (*n >= 'a' && *n <= 'z') || (*n >= '0' && *n <= '9') ||
              *n == '_'))
            return false;
    }
    return true;
}

/* True when "NAME=..." entry |e| sets |name| (of |len| bytes). */
static bool env_entry_is(const char *e, const char *name, size_t len)
{
    return strncmp(e, name, len) == 0 && e[len] == '=';
}

static bool env_requested(const struct conn *c, const char *name, size_t len)
{
    for (size_t i = 0; i < c->nenv; i++) {
        if (env_entry_is(c->env[i], name, len))
            return true;
    }
    return false;
}

static bool env_overridden(const struct conn *c, const char *e)
{
    const char *eq = strchr(e, '=');
    size_t len = eq != NULL ? (size_t)(eq - e) : strlen(e);

    if (c->pty && len == 4 && strncmp(e, "TERM", 4) == 0)
        return true;
    return env_requested(c, e, len);
}

/* The command's environment: the base, then env requests, then (with a
 * PTY, unless an env request set it) TERM from pty-req. The array is owned
 * by the caller, who frees it and *|term_out|; the other strings are
 * borrowed. */
static char **build_env(const struct conn *c, char **term_out)
{
    char *const *base = c->s->envp != NULL ? c->s->envp : environ;
    size_t nbase = 0, n = 0;
    char **envp;

    while (base != NULL && base[nbase] != NULL)
        nbase++;
    envp = gw_xcalloc(nbase + c->nenv + 2, sizeof(*envp));
    for (size_t i = 0; i < nbase; i++) {
        if (!env_overridden(c, base[i]))
            envp[n++] = base[i];
    }
    for (size_t i = 0; i < c->nenv; i++)
        envp[n++] = c->env[i];
    *term_out = NULL;
    if (c->pty && !env_requested(c, "TERM", 4)) {
        *term_out = gw_xasprintf("TERM=%s", c->term[0] != '\0' ? c->term : "xterm");
        envp[n++] = *term_out;
    }
    return envp;
}

static int make_pipes(int in[2], int out[2], int err[2])
{
    if (pipe2(in, O_CLOEXEC) != 0)
        return -1;
    if (pipe2(out, O_CLOEXEC) != 0)
        return -1;
    if (pipe2(err, O_CLOEXEC) != 0)
        return -1;
    return 0;
}

/* Opens a PTY master sized from pty-req; its slave's name into |slave|. */
static int open_pty(const struct conn *c, char *slave, size_t len)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);

    if (m < 0)
        return -1;
    if (grantpt(m) != 0 || unlockpt(m) != 0 || ptsname_r(m, slave, len) != 0 ||
        ioctl(m, TIOCSWINSZ, &c->ws) != 0) {
        int e = errno;

        close(m);
        errno = e;
        return -1;
    }
    return m;
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl >= 0)
        (void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Keeps our ends of the command's stdio; closes the grandchild's. */
static int adopt_stdio(struct conn *c, int master, int in[2], int out[2], int err[2])
{
    if (master >= 0) {
        c->in_fd = fcntl(master, F_DUPFD_CLOEXEC, 3);
        c->out[OUT_STDOUT].fd = master;
        if (c->in_fd < 0)
            return -1;
    } else {
        close_fd(&in[0]);
        close_fd(&out[1]);
        close_fd(&err[1]);
        c->in_fd = in[1];
        c->out[OUT_STDOUT].fd = out[0];
        c->out[OUT_STDERR].fd = err[0];
    }
    set_nonblock(c->in_fd);
    for (int i = 0; i < OUT_N; i++) {
        if (c->out[i].fd >= 0)
            set_nonblock(c->out[i].fd);
    }
    return 0;
}

static void log_spawn_failure(const char *step, int err)
{
    log_warn("ssh.spawn_failed", LF_STR("step", step), LF_STR("error", strerror(err)));
}

/* Moves |fd| above stdio so the dup2 file actions cannot clobber it. */
static int above_stdio(int fd)
{
    int moved;

    if (fd < 0 || fd > 2)
        return fd;
    moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return moved;
}

/* The command's process setup, done by posix_spawn() between its vfork
 * and exec (no copy of our page tables: a fork here costs milliseconds):
 * a new session, default signal handling with nothing blocked, stdio on
 * the pipes or the PTY, the workdir, and no other descriptor. With a PTY
 * the slave is opened after setsid(), which makes it the controlling
 * terminal (what TIOCSCTTY would do). */
static int spawn_setup(const struct conn *c, posix_spawn_file_actions_t *fa,
                       posix_spawnattr_t *attr, const int stdio[3], const char *slave)
{
    sigset_t all, none;
    struct stat st;
    int rc;

    sigfillset(&all);
    sigemptyset(&none);
    if ((rc = posix_spawnattr_setsigdefault(attr, &all)) != 0 ||
        (rc = posix_spawnattr_setsigmask(attr, &none)) != 0 ||
        (rc = posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK |
                                                 POSIX_SPAWN_SETSID)) != 0)
        return rc;
    if (slave != NULL) {
        if ((rc = posix_spawn_file_actions_addopen(fa, 0, slave, O_RDWR, 0)) != 0 ||
            (rc = posix_spawn_file_actions_adddup2(fa, 0, 1)) != 0 ||
            (rc = posix_spawn_file_actions_adddup2(fa, 0, 2)) != 0)
            return rc;
    } else {
        for (int i = 0; i < 3; i++) {
            if ((rc = posix_spawn_file_actions_adddup2(fa, stdio[i], i)) != 0)
                return rc;
        }
    }
    /* A missing workdir (run outside a sandbox) leaves the cwd as it is. */
    if (c->s->workdir != NULL && stat(c->s->workdir, &st) == 0 &&
        (rc = posix_spawn_file_actions_addchdir_np(fa, c->s->workdir)) != 0)
        return rc;
    return posix_spawn_file_actions_addclosefrom_np(fa, 3);
}

/* The command could not be started: it "exits" 127 with the reason on its
 * stderr (the PTY with one), as a shell reports a missing program. */
static void fail_exec(struct conn *c, const char *path, int err, const char *slave, int err_w)
{
    char msg[512];
    int n = snprintf(msg, sizeof(msg), "openshell-supervisor: cannot run %s: %s\r\n", path,
                     strerror(err));
    int fd = slave != NULL ? open(slave, O_WRONLY | O_NOCTTY | O_CLOEXEC) : err_w;

    if (fd >= 0 && n > 0 && write(fd, msg, GW_MIN((size_t)n, sizeof(msg) - 1)) < 0) {
        /* the status still says what happened */
    }
    if (slave != NULL && fd >= 0)
        close(fd);
    c->pid = -1;
    c->exited = true;
    c->status = 127 << 8; /* as from exit(127) */
    c->exit_us = gw_clock_mono_us();
    log_warn("ssh.spawn_failed", LF_STR("step", "exec"), LF_STR("path", path),
             LF_STR("error", strerror(err)));
}

static int spawn_command(const struct conn *c, char *const argv[], const int stdio[3],
                         const char *slave, pid_t *pid)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    char *term = NULL, **envp;
    int rc;

    if (posix_spawn_file_actions_init(&fa) != 0)
        return ENOMEM;
    if (posix_spawnattr_init(&attr) != 0) {
        posix_spawn_file_actions_destroy(&fa);
        return ENOMEM;
    }
    envp = build_env(c, &term);
    rc = spawn_setup(c, &fa, &attr, stdio, slave);
    if (rc == 0)
        rc = posix_spawn(pid, argv[0], &fa, &attr, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    free(envp);
    free(term);
    return rc;
}

/* Starts the command: `/bin/sh -c |command|`, or a login shell when
 * |command| is NULL. Returns 0 (also when exec failed: see fail_exec), or
 * -1 (logged; the request is refused). */
static int spawn(struct conn *c, const char *command)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, master = -1;
    char slave[128];
    const char *shell = c->s->shell;
    pid_t pid = -1;
    int rc;

    if (shell == NULL && command == NULL)
        shell = access("/bin/bash", X_OK) == 0 ? "/bin/bash" : "/bin/sh";
    char *const sh_argv[] = {(char *)"/bin/sh", (char *)"-c", (char *)command, NULL};
    char *const login_argv[] = {(char *)shell, (char *)"-l", NULL};
    char *const *argv = command != NULL ? sh_argv : login_argv;

    if (c->pty ? (master = open_pty(c, slave, sizeof(slave))) < 0 : make_pipes(in, out, err) != 0) {
        log_spawn_failure(c->pty ? "pty" : "pipe", errno);
        goto fail;
    }
    in[0] = above_stdio(in[0]);
    out[1] = above_stdio(out[1]);
    err[1] = above_stdio(err[1]);
    const int stdio[3] = {in[0], out[1], err[1]};

    rc = spawn_command(c, argv, stdio, c->pty ? slave : NULL, &pid);
    c->cmd_start_us = gw_clock_mono_us();
    if (rc != 0) {
        fail_exec(c, argv[0], rc, c->pty ? slave : NULL, err[1]);
    } else {
        c->pid = pid;
        c->pidfd = pidfd_open(pid, 0);
        if (c->pidfd < 0) {
            log_spawn_failure("pidfd", errno); /* cannot watch it: end the connection */
            kill(-pid, SIGKILL);
            c->done = true;
        }
    }
    if (adopt_stdio(c, master, in, out, err) != 0)
        c->done = true;
    return 0;
fail:
    close_fd(&master);
    for (int i = 0; i < 2; i++) {
        close_fd(&in[i]);
        close_fd(&out[i]);
        close_fd(&err[i]);
    }
    return -1;
}

static int start_command(struct conn *c, const char *command)
{
    if (c->pid != 0 || c->client_closed)
        return SSH_ERROR;
    if (spawn(c, command) != 0)
        return SSH_ERROR;
    log_info("ssh.command", LF_INT("pid", c->pid), LF_STR("kind", command ? "exec" : "shell"),
             LF_BOOL("pty", c->pty), LF_UINT("command_len", command ? strlen(command) : 0),
             LF_UINT("env", c->nenv));
    if (command != NULL)
        log_debug("ssh.command_text", LF_INT("pid", c->pid), LF_STR("command", command));
    return SSH_OK;
}

/* ---- libssh callbacks ---------------------------------------------------------- *
 * They run inside libssh's packet processing, which may happen in any
 * libssh call (writes flush and read packets too). They record state,
 * start the command and write stdin, but never change what the event loop
 * polls: conn_step() does that between polls. */

static int on_auth_none(ssh_session session, const char *user, void *userdata)
{
    (void)session;
    (void)user;
    (void)userdata;
    return SSH_AUTH_SUCCESS;
}

static int on_auth_password(ssh_session session, const char *user, const char *password,
                            void *userdata)
{
    (void)session;
    (void)user;
    (void)password;
    (void)userdata;
    return SSH_AUTH_SUCCESS;
}

static int on_auth_pubkey(ssh_session session, const char *user, struct ssh_key_struct *pubkey,
                          char signature_state, void *userdata)
{
    (void)session;
    (void)user;
    (void)pubkey;
    (void)signature_state;
    (void)userdata;
    return SSH_AUTH_SUCCESS;
}

static int on_pty_request(ssh_session session, ssh_channel channel, const char *term, int cols,
                          int rows, int px_w, int px_h, void *userdata)
{
    struct conn *c = userdata;
    size_t len = strlen(term);

    (void)session;
    (void)channel;
    if (c->pid != 0 || len > MAX_TERM)
        return SSH_ERROR;
    for (size_t i = 0; i < len; i++) {
        char ch = term[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.' || ch == '+'))
            return SSH_ERROR;
    }
    memcpy(c->term, term, len + 1);
    c->ws.ws_col = (unsigned short)GW_MIN((unsigned)cols, 65535u);
    c->ws.ws_row = (unsigned short)GW_MIN((unsigned)rows, 65535u);
    c->ws.ws_xpixel = (unsigned short)GW_MIN((unsigned)px_w, 65535u);
    c->ws.ws_ypixel = (unsigned short)GW_MIN((unsigned)px_h, 65535u);
    c->pty = true;
    return SSH_OK;
}

static int on_window_change(ssh_session session, ssh_channel channel, int cols, int rows, int px_w,
                            int px_h, void *userdata)
{
    struct conn *c = userdata;

    (void)session;
    (void)channel;
    c->ws.ws_col = (unsigned short)GW_MIN((unsigned)cols, 65535u);
    c->ws.ws_row = (unsigned short)GW_MIN((unsigned)rows, 65535u);
    c->ws.ws_xpixel = (unsigned short)GW_MIN((unsigned)px_w, 65535u);
    c->ws.ws_ypixel = (unsigned short)GW_MIN((unsigned)px_h, 65535u);
    /* The kernel sends SIGWINCH to the terminal's foreground group. */
    if (c->pty && c->out[OUT_STDOUT].fd >= 0)
        (void)ioctl(c->out[OUT_STDOUT].fd, TIOCSWINSZ, &c->ws);
    return SSH_OK;
}

static int on_env_request(ssh_session session, ssh_channel channel, const char *name,
                          const char *value, void *userdata)
{
    struct conn *c = userdata;
    size_t nlen = strlen(name), vlen = strlen(value);
    size_t i;

    (void)session;
    (void)channel;
    if (c->pid != 0 || nlen > 256 || !env_name_valid(name) ||
        c->env_bytes + nlen + vlen + 2 > MAX_ENV_BYTES) {
        log_debug("ssh.env_refused", LF_STR("name", name));
        return SSH_ERROR;
    }
    for (i = 0; i < c->nenv && !env_entry_is(c->env[i], name, nlen); i++)
        ;
    if (i == c->nenv) {
        if (c->nenv == MAX_ENV)
            return SSH_ERROR;
        c->env = gw_xrealloc(c->env, (c->nenv + 1) * sizeof(*c->env));
        c->nenv++;
    } else {
        c->env_bytes -= strlen(c->env[i]) + 1;
        free(c->env[i]);
    }
    c->env[i] = gw_xasprintf("%s=%s", name, value);
    c->env_bytes += nlen + vlen + 2;
    return SSH_OK;
}

static int on_exec_request(ssh_session session, ssh_channel channel, const char *command,
                           void *userdata)
{
    (void)session;
    (void)channel;
    return start_command(userdata, command);
}

static int on_shell_request(ssh_session session, ssh_channel channel, void *userdata)
{
    (void)session;
    (void)channel;
    return start_command(userdata, NULL);
}

static void on_signal_request(ssh_session session, ssh_channel channel, const char *name,
                              void *userdata)
{
    struct conn *c = userdata;
    int sig = signal_number(name);

    (void)session;
    (void)channel;
    if (sig == 0) {
        log_debug("ssh.signal_unknown", LF_STR("signal", name));
        return;
    }
    signal_command(c, sig);
}

/* Stdin: writes straight from libssh's buffer into the pipe. What the pipe
 * does not take stays in that buffer (we return how much we consumed);
 * pump_stdin() moves it once the pipe drains. */
static int on_data(ssh_session session, ssh_channel channel, void *data, uint32_t len,
                   int is_stderr, void *userdata)
{
    struct conn *c = userdata;
    ssize_t n;

    (void)session;
    (void)channel;
    if (is_stderr || c->in_gone)
        return (int)len; /* extended data toward a server means nothing; discard */
    if (c->in_fd < 0 || c->in_len > c->in_off) {
        c->in_backlog = true; /* not started yet, or older bytes queue first */
        return 0;
    }
    n = write(c->in_fd, data, len);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) { /* EPIPE: the command closed stdin */
            c->in_gone = true;                   /* pump_stdin() closes the pipe */
            return (int)len;
        }
        n = 0;
    }
    if ((uint32_t)n < len)
        c->in_backlog = true;
    return (int)n;
}

static void on_eof(ssh_session session, ssh_channel channel, void *userdata)
{
    (void)session;
    (void)channel;
    ((struct conn *)userdata)->client_eof = true;
}

static void on_close(ssh_session session, ssh_channel channel, void *userdata)
{
    (void)session;
    (void)channel;
    ((struct conn *)userdata)->client_closed = true;
}

/* One session channel per connection; a second one is refused. */
static ssh_channel on_channel_open(ssh_session session, void *userdata)
{
    struct conn *c = userdata;

    if (c->channel != NULL)
        return NULL;
    c->channel = ssh_channel_new(session);
    if (c->channel == NULL)
        return NULL;
    c->ccb = (struct ssh_channel_callbacks_struct){
        .size = sizeof(c->ccb),
        .userdata = c,
        .channel_data_function = on_data,
        .channel_eof_function = on_eof,
        .channel_close_function = on_close,
        .channel_signal_function = on_signal_request,
        .channel_pty_request_function = on_pty_request,
        .channel_shell_request_function = on_shell_request,
        .channel_pty_window_change_function = on_window_change,
        .channel_exec_request_function = on_exec_request,
        .channel_env_request_function = on_env_request,
    };
    ssh_set_channel_callbacks(c->channel, &c->ccb);
    return c->channel;
}

/* ---- the loop ------------------------------------------------------------------ */

static void discard_stdin_backlog(struct conn *c)
{
    char scratch[4096];

    while (ssh_channel_poll(c->channel, 0) > 0) {
        if (ssh_channel_read_nonblocking(c->channel, scratch, sizeof(scratch), 0) <= 0)
            break;
    }
    c->in_backlog = false;
}

static void close_stdin(struct conn *c)
{
    set_polled(c, c->in_fd, &c->in_polled, false, 0, NULL);
    close_fd(&c->in_fd);
    c->in_gone = true;
    c->in_off = c->in_len = 0;
}

/* Writes the queued stdin bytes; returns false when the pipe is full. */
static bool flush_stdin(struct conn *c)
{
    while (c->in_off < c->in_len) {
        ssize_t n = write(c->in_fd, c->in_buf + c->in_off, c->in_len - c->in_off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return false;
        if (n < 0) { /* EPIPE: the command closed stdin */
            close_stdin(c);
            return true;
        }
        c->in_off += (size_t)n;
    }
    c->in_off = c->in_len = 0;
    return true;
}

/* Takes everything libssh holds at once: libssh reopens the client's window
 * on each read, so reading all of it (not a chunk at a time) bounds what the
 * client can have in flight to one window while we hold at most one
 * window's worth ourselves. */
static void take_stdin_backlog(struct conn *c)
{
    int avail = ssh_channel_poll(c->channel, 0);
    int n;

    c->in_backlog = false;
    if (avail <= 0)
        return;
    if ((size_t)avail > c->in_cap) {
        c->in_cap = (size_t)avail;
        c->in_buf = gw_xrealloc(c->in_buf, c->in_cap);
    }
    n = ssh_channel_read_nonblocking(c->channel, c->in_buf, (uint32_t)avail, 0);
    if (n > 0) {
        c->in_off = 0;
        c->in_len = (size_t)n;
    }
}

static void pump_stdin(struct conn *c)
{
    bool want_poll = false;

    if (c->in_gone && c->in_fd >= 0)
        close_stdin(c);
    if (c->in_gone || c->exited) {
        if (c->in_backlog && c->channel != NULL)
            discard_stdin_backlog(c);
    } else if (c->in_fd >= 0) {
        if (c->in_ready || !c->in_polled) {
            c->in_ready = false;
            if (flush_stdin(c) && c->in_fd >= 0 && c->in_backlog) {
                take_stdin_backlog(c);
                flush_stdin(c);
            }
        }
        want_poll = c->in_fd >= 0 && (c->in_len > c->in_off || c->in_backlog);
        /* End of input closes the pipe; a PTY stays open as OpenSSH does. */
        if (!want_poll && c->client_eof && !c->pty && c->in_fd >= 0) {
            close_stdin(c);
            return;
        }
    }
    set_polled(c, c->in_fd, &c->in_polled, want_poll, POLLOUT, &c->in_ready);
}

static void close_out(struct conn *c, struct out_stream *o)
{
    set_polled(c, o->fd, &o->polled, false, 0, NULL);
    close_fd(&o->fd);
    o->off = o->len = 0;
}

/* Hands buffered output to the channel; returns false while some is left. */
static bool flush_out(struct conn *c, int idx)
{
    struct out_stream *o = &c->out[idx];
    int n;

    if (o->off == o->len)
        return true;
    n = idx == OUT_STDERR
            ? ssh_channel_write_stderr(c->channel, o->buf + o->off, (uint32_t)(o->len - o->off))
            : ssh_channel_write(c->channel, o->buf + o->off, (uint32_t)(o->len - o->off));
    if (n < 0) { /* the channel or the connection is gone: stop reading */
        close_out(c, o);
        return true;
    }
    o->off += (size_t)n;
    if (o->off < o->len)
        return false;
    o->off = o->len = 0;
    return true;
}

/* Reads at most what the client's window allows, so a slow client makes
 * the command block on its pipe instead of us buffering. */
static void pump_out(struct conn *c, int idx)
{
    struct out_stream *o = &c->out[idx];
    uint32_t window;
    ssize_t n;

    if (o->fd < 0)
        return;
    if (!flush_out(c, idx) || o->fd < 0) { /* window closed or key re-exchange */
        set_polled(c, o->fd, &o->polled, false, 0, NULL);
        return;
    }
    window = ssh_channel_window_size(c->channel);
    if (window > 0 && o->ready) {
        o->ready = false;
        n = read(o->fd, o->buf, GW_MIN((size_t)window, (size_t)IO_CHUNK));
        if (n > 0) {
            o->idle = false;
            o->ready = true; /* read again next step: more data, or EAGAIN = idle */
            o->len = (size_t)n;
            if (!flush_out(c, idx) || o->fd < 0)
                window = 0;
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            close_out(c, o); /* end-of-file; EIO on a PTY whose slave is gone */
            return;
        } else if (errno == EAGAIN) {
            o->idle = true;
        }
    }
    set_polled(c, o->fd, &o->polled, window > 0 && o->off == o->len, POLLIN, &o->ready);
}

/* Output is finished when every stream hit end-of-file, or (after the
 * command exited) was quiet for DRAIN_GRACE_MS: a background process may
 * hold the pipe open forever. */
static bool outputs_done(struct conn *c, uint64_t now)
{
    bool late = now >= c->exit_us + ms_to_us(DRAIN_GRACE_MS);

    for (int i = 0; i < OUT_N; i++) {
        struct out_stream *o = &c->out[i];

        if (o->fd < 0)
            continue;
        if (!late || !o->idle || o->off < o->len)
            return false;
    }
    for (int i = 0; i < OUT_N; i++)
        close_out(c, &c->out[i]);
    return true;
}

static void reap_command(struct conn *c)
{
    pid_t r;

    c->pid_ready = false;
    while ((r = waitpid(c->pid, &c->status, WNOHANG)) < 0 && errno == EINTR)
        ;
    if (r != c->pid)
        return;
    c->exited = true;
    c->exit_us = gw_clock_mono_us();
    c->kill_at_us = 0;
    set_polled(c, c->pidfd, &c->pid_polled, false, 0, NULL);
    close_fd(&c->pidfd);
    /* Read once more so quiet pipes count as idle from now on. */
    for (int i = 0; i < OUT_N; i++)
        c->out[i].ready = true;
}

/* exit-status (128+N for a signal, for clients that read nothing else),
 * exit-signal for a signal, then EOF and CLOSE. */
static void send_exit(struct conn *c, uint64_t now)
{
    int st = c->status;
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);

    close_stdin(c);
    (void)ssh_channel_request_send_exit_status(c->channel, code);
    if (WIFSIGNALED(st))
        (void)ssh_channel_request_send_exit_signal(c->channel, signal_name(WTERMSIG(st)),
                                                   WCOREDUMP(st) ? 1 : 0, "", "");
    (void)ssh_channel_close(c->channel);
    c->exit_sent = true;
    c->close_by_us = now + ms_to_us(CLOSE_WAIT_MS);
    log_info("ssh.exit", LF_INT("pid", c->pid), LF_INT("code", code),
             LF_STR("signal", WIFSIGNALED(st) ? signal_name(WTERMSIG(st)) : ""),
             LF_DBL("dur_ms", (double)(now - c->cmd_start_us) / 1000.0));
}

/* The client left before the command ended: hang up on it like a
 * terminal would, and SIGKILL its group if it is still there later. */
static void hang_up(struct conn *c, uint64_t now)
{
    c->hung_up = true;
    close_stdin(c);
    for (int i = 0; i < OUT_N; i++)
        close_out(c, &c->out[i]);
    if (!c->session_gone && c->channel != NULL)
        (void)ssh_channel_close(c->channel);
    if (c->pid == 0 || c->exited) {
        c->done = true;
        return;
    }
    log_info("ssh.hangup", LF_INT("pid", c->pid));
    signal_command(c, SIGHUP);
    c->kill_at_us = now + ms_to_us(KILL_GRACE_MS);
}

/* SIGTERM (sup_ssh_stop) or SIGINT/SIGHUP to the connection child. */
static void handle_signals(struct conn *c, uint64_t now)
{
    struct signalfd_siginfo si;

    c->sig_ready = false;
    while (read(c->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (c->terminating)
            continue;
        c->terminating = true;
        c->stop_by_us = now + ms_to_us(2 * KILL_GRACE_MS);
        if (c->pid == 0 || c->exited || c->hung_up) {
            c->done = true; /* nothing to end, or only the client is left to wait for */
        } else {
            signal_command(c, SIGTERM);
            c->kill_at_us = now + ms_to_us(KILL_GRACE_MS);
        }
    }
}

static void check_session(struct conn *c)
{
    if (c->session_gone || !(ssh_get_status(c->session) & (SSH_CLOSED | SSH_CLOSED_ERROR)))
        return;
    c->session_gone = true;
    ssh_event_remove_session(c->event, c->session);
}

static void check_deadlines(struct conn *c, uint64_t now)
{
    if (c->pid == 0 && now >= c->start_us + ms_to_us(SETUP_TIMEOUT_MS)) {
        log_info("ssh.setup_timeout");
        c->done = true;
    }
    if (c->kill_at_us != 0 && now >= c->kill_at_us && !c->exited) {
        signal_command(c, SIGKILL);
        c->kill_at_us = 0;
    }
    if (c->exit_sent && now >= c->close_by_us)
        c->done = true;
    if (c->terminating && now >= c->stop_by_us)
        c->done = true;
}

/* Runs after every poll: moves bytes, notices the end of things. */
static void conn_step(struct conn *c)
{
    uint64_t now = gw_clock_mono_us();

    if (c->sig_ready)
        handle_signals(c, now);
    check_session(c);
    if (c->pid_ready)
        reap_command(c);
    if ((c->session_gone || c->client_closed) && !c->exit_sent && !c->hung_up)
        hang_up(c, now);
    if (c->pid != 0 && !c->hung_up && !c->exit_sent) {
        pump_stdin(c);
        for (int i = 0; i < OUT_N; i++)
            pump_out(c, i);
        if (c->exited && outputs_done(c, now))
            send_exit(c, now);
    }
    check_session(c); /* the calls above may have found the client gone */
    if (c->hung_up && c->exited)
        c->done = true;
    if (c->exit_sent && (c->session_gone || (c->client_closed && c->terminating)))
        c->done = true;
    check_deadlines(c, now);
    if (c->pid != 0 && !c->exited)
        set_polled(c, c->pidfd, &c->pid_polled, true, POLLIN, &c->pid_ready);
}

static void consider(uint64_t *next, uint64_t at)
{
    if (at != 0 && (*next == 0 || at < *next))
        *next = at;
}

/* Milliseconds until the next deadline, -1 for none. */
static int conn_timeout_ms(const struct conn *c)
{
    uint64_t next = 0, now;

    if (c->pid == 0)
        consider(&next, c->start_us + ms_to_us(SETUP_TIMEOUT_MS));
    consider(&next, c->kill_at_us);
    if (c->terminating)
        consider(&next, c->stop_by_us);
    if (!c->exit_sent && !c->hung_up) {
        for (int i = 0; i < OUT_N; i++) {
            if (c->out[i].fd >= 0 && c->out[i].ready && c->out[i].off == c->out[i].len &&
                c->channel != NULL && ssh_channel_window_size(c->channel) > 0)
                return 0; /* a read is due now */
        }
    }
    if (c->exit_sent)
        consider(&next, c->close_by_us);
    else if (c->exited)
        consider(&next, c->exit_us + ms_to_us(DRAIN_GRACE_MS));
    if (next == 0)
        return -1;
    now = gw_clock_mono_us();
    return next <= now ? 0 : (int)((next - now + 999) / 1000);
}

static void conn_loop(struct conn *c)
{
    unsigned errors = 0;

    while (!c->done) {
        int timeout = conn_timeout_ms(c);

        /* One error is normal (the client hung up during the poll); a
         * second in a row would spin, so wait a little before going on. */
        errors = ssh_event_dopoll(c->event, timeout) == SSH_ERROR ? errors + 1 : 0;
        if (errors > 1)
            (void)poll(NULL, 0, timeout < 0 || timeout > 100 ? 100 : timeout);
        conn_step(c);
    }
    if (c->pid > 0 && !c->exited) { /* leaving early (SIGTERM + client gone) */
        signal_command(c, SIGKILL);
        while (waitpid(c->pid, &c->status, 0) < 0 && errno == EINTR)
            ;
    }
}

/* In the connection child: default signal handling (SIGPIPE ignored, the
 * commands get it back), SIGTERM/SIGINT/SIGHUP through a signalfd, die
 * with the supervisor, and close every descriptor but the connection and
 * stdio (the supervisor's other sockets must not outlive it in here). */
static int child_setup(struct conn *c, int fd, pid_t parent)
{
    struct sigaction sa;
    sigset_t set;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP)
            (void)sigaction(sig, &sa, NULL);
    }
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_SETMASK, &set, NULL);
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) == 0 && getppid() != parent)
        return -1;
    if (fd > 3)
        (void)close_range(3, (unsigned)fd - 1, 0);
    (void)close_range((unsigned)fd + 1, ~0U, 0);
    c->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    return c->sigfd < 0 ? -1 : 0;
}

/* Everything that does not need the connection yet (a spare does it
 * while it waits). */
static int conn_prepare(struct conn *c)
{
    long kex_timeout = KEX_TIMEOUT_S;

    c->session = ssh_new();
    c->event = ssh_event_new();
    if (c->session == NULL || c->event == NULL)
        return -1;
    (void)ssh_options_set(c->session, SSH_OPTIONS_TIMEOUT, &kex_timeout);
    c->scb = (struct ssh_server_callbacks_struct){
        .size = sizeof(c->scb),
        .userdata = c,
        .auth_none_function = on_auth_none,
        .auth_password_function = on_auth_password,
        .auth_pubkey_function = on_auth_pubkey,
        .channel_open_request_session_function = on_channel_open,
    };
    ssh_set_server_callbacks(c->session, &c->scb);
    ssh_set_auth_methods(c->session, SSH_AUTH_METHOD_NONE | SSH_AUTH_METHOD_PASSWORD |
                                         SSH_AUTH_METHOD_PUBLICKEY);
    return ssh_event_add_fd(c->event, c->sigfd, POLLIN, on_fd_ready, &c->sig_ready);
}

/* Key exchange on |fd|; authentication and the rest happen in the loop. */
static int conn_handshake(struct conn *c, int fd)
{
    if (ssh_bind_accept_fd(c->s->bind, c->session, fd) != SSH_OK) {
        log_warn("ssh.accept_failed", LF_STR("error", ssh_get_error(c->s->bind)));
        return -1;
    }
    if (ssh_handle_key_exchange(c->session) != SSH_OK) {
        log_info("ssh.kex_failed", LF_STR("error", ssh_get_error(c->session)));
        return -1;
    }
    ssh_set_blocking(c->session, 0);
    return ssh_event_add_session(c->event, c->session) == SSH_OK ? 0 : -1;
}

/* The output buffers are never written before use, so they stay out of
 * the zeroing below: every page touched in a fresh child is a page fault. */
static void conn_init(struct conn *c, struct sup_ssh *s)
{
    static char bufs[OUT_N][IO_CHUNK];

    *c = (struct conn){.s = s, .sigfd = -1, .pidfd = -1, .in_fd = -1};
    for (int i = 0; i < OUT_N; i++) {
        c->out[i].fd = -1;
        c->out[i].buf = bufs[i];
    }
}

/* Serves the connection on |fd| to its end. */
GW_NORETURN static void serve(struct conn *c, int fd)
{
    c->start_us = gw_clock_mono_us();
    if (conn_handshake(c, fd) != 0)
        _exit(1);
    conn_loop(c);
    /* Send what is still queued (normally nothing: the client answered). */
    if (!c->session_gone)
        (void)ssh_blocking_flush(c->session, 1000);
    _exit(0);
}

/* Receives one descriptor sent with SCM_RIGHTS; -1 on end-of-file/error. */
static int recv_fd(int sock)
{
    char byte;
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } u;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr m = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    struct cmsghdr *h;
    int fd;

    if (recvmsg(sock, &m, MSG_CMSG_CLOEXEC) <= 0)
        return -1;
    h = CMSG_FIRSTHDR(&m);
    if (h == NULL || h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS ||
        h->cmsg_len != CMSG_LEN(sizeof(int)))
        return -1;
    memcpy(&fd, CMSG_DATA(h), sizeof(fd));
    return fd;
}

static int send_fd(int sock, int fd)
{
    char byte = 'c';
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } u;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr m = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);

    memset(u.buf, 0, sizeof(u.buf));
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof(fd));
    return sendmsg(sock, &m, MSG_DONTWAIT | MSG_NOSIGNAL) == 1 ? 0 : -1;
}

/* A spare connection child: set up ahead of time, it waits for the
 * supervisor to hand it an accepted connection, so no fork() sits between
 * a client's connect and its key exchange. Ends on SIGTERM or when the
 * supervisor closes its end. */
GW_NORETURN static void spare_main(struct sup_ssh *s, int sock, pid_t parent)
{
    static struct conn c;
    struct pollfd p[2];
    int fd;

    conn_init(&c, s);
    if (child_setup(&c, sock, parent) != 0 || conn_prepare(&c) != 0)
        _exit(1);
    p[0] = (struct pollfd){.fd = sock, .events = POLLIN};
    p[1] = (struct pollfd){.fd = c.sigfd, .events = POLLIN};
    while (poll(p, 2, -1) < 0) {
        if (errno != EINTR)
            _exit(1);
    }
    if (p[1].revents != 0)
        _exit(0);
    fd = recv_fd(sock);
    if (fd < 0)
        _exit(0);
    close(sock);
    serve(&c, fd);
}

/* Forks a connection child: serving |fd| at once, or (|fd| < 0) a spare
 * waiting on the socketpair end |spare_sock|. Returns its pid, or -1. */
static pid_t fork_child(struct sup_ssh *s, int fd, int spare_sock)
{
    static struct conn c;
    sigset_t all, old;
    pid_t parent = getpid(), pid;

    /* No signal may run the supervisor's handlers in the child before
     * it resets them (libevent's would write to the supervisor's pipe). */
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid = fork();
    if (pid == 0) {
        if (fd < 0)
            spare_main(s, spare_sock, parent);
        conn_init(&c, s);
        if (child_setup(&c, fd, parent) != 0 || conn_prepare(&c) != 0)
            _exit(1);
        serve(&c, fd);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0)
        log_warn("ssh.fork_failed", LF_STR("error", strerror(errno)));
    else
        s->kids[s->nkids++] = pid;
    return pid;
}

static void drop_spare(struct sup_ssh *s)
{
    if (s->spare_sock >= 0) {
        close(s->spare_sock); /* the spare sees end-of-file and leaves */
        s->spare_sock = -1;
    }
    s->spare_pid = 0;
}

/* Keeps one spare child ready while below the connection limit. */
static void make_spare(struct sup_ssh *s)
{
    int sv[2];

    if (s->spare_pid != 0 || s->nkids >= MAX_CONNS)
        return;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        log_warn("ssh.spare_failed", LF_STR("error", strerror(errno)));
        return;
    }
    s->spare_pid = fork_child(s, -1, sv[1]);
    close(sv[1]);
    if (s->spare_pid < 0) {
        s->spare_pid = 0;
        close(sv[0]);
        return;
    }
    s->spare_sock = sv[0];
}

static void on_refill(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    make_spare(arg);
}

/* Hands |fd| to the spare child, else forks a child for it. */
static void start_connection(struct sup_ssh *s, int fd)
{
    static const struct timeval now = {0, 0};
    pid_t pid = s->spare_pid;

    if (pid != 0 && send_fd(s->spare_sock, fd) != 0) {
        log_warn("ssh.spare_failed", LF_STR("error", strerror(errno)));
        (void)kill(pid, SIGTERM);
        pid = 0;
    }
    if (s->spare_pid != 0) {
        drop_spare(s);
        evtimer_add(s->refill_ev, &now); /* after this loop iteration */
    }
    if (pid == 0 && s->nkids >= MAX_CONNS) {
        log_warn("ssh.refused", LF_STR("reason", "too many connections"),
                 LF_UINT("limit", MAX_CONNS));
        close(fd);
        return;
    }
    if (pid == 0)
        pid = fork_child(s, fd, -1);
    close(fd);
    if (pid > 0)
        log_info("ssh.accept", LF_INT("pid", pid), LF_UINT("active", s->nkids));
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    struct sup_ssh *s = arg;

    (void)fd;
    (void)what;
    event_add(s->accept_ev, NULL);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    struct sup_ssh *s = arg;

    (void)what;
    for (int i = 0; i < 16; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd >= 0) {
            start_connection(s, fd);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            struct timeval tv = {0, ACCEPT_PAUSE_MS * 1000};

            log_warn("ssh.accept_failed", LF_STR("error", strerror(errno)));
            event_del(s->accept_ev);
            evtimer_add(s->resume_ev, &tv);
        } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
            log_warn("ssh.accept_failed", LF_STR("error", strerror(errno)));
        }
        return;
    }
}

/* Replaces a stale socket file (never another kind of file), binds, makes
 * it 0600 before anyone can connect, then listens. */
static int listen_unix(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "socket path too long (max %zu bytes): %s", sizeof(sa.sun_path) - 1,
                 path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "%s exists and is not a socket", path);
            return -1;
        }
        (void)unlink(path);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || chmod(path, 0600) != 0 ||
        listen(fd, 128) != 0) {
        snprintf(err, errlen, "listen on %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static char **copy_env(char *const *envp)
{
    size_t n = 0;
    char **out;

    if (envp == NULL)
        return NULL;
    while (envp[n] != NULL)
        n++;
    out = gw_xcalloc(n + 1, sizeof(*out));
    for (size_t i = 0; i < n; i++)
        out[i] = gw_xstrdup(envp[i]);
    return out;
}

static int make_bind(struct sup_ssh *s, char *err, size_t errlen)
{
    ssh_key key = NULL;
    int level = SSH_LOG_NOLOG;

    if (ssh_pki_generate(SSH_KEYTYPE_ED25519, 0, &key) != SSH_OK) {
        snprintf(err, errlen, "generating the Ed25519 host key failed");
        return -1;
    }
    s->bind = ssh_bind_new();
    if (s->bind == NULL) {
        ssh_key_free(key);
        snprintf(err, errlen, "ssh_bind_new failed");
        return -1;
    }
    (void)ssh_bind_options_set(s->bind, SSH_BIND_OPTIONS_LOG_VERBOSITY, &level);
    if (ssh_bind_options_set(s->bind, SSH_BIND_OPTIONS_IMPORT_KEY, key) != SSH_OK) {
        ssh_key_free(key); /* only taken over on success */
        snprintf(err, errlen, "host key: %s", ssh_get_error(s->bind));
        return -1;
    }
    return 0;
}

struct sup_ssh *sup_ssh_start(struct reactor *r, const struct sup_ssh_opts *o, char *err,
                              size_t errlen)
{
    struct sup_ssh *s;
    struct event_base *base = reactor_base(r);

    if (o == NULL || o->socket_path == NULL || o->socket_path[0] == '\0') {
        snprintf(err, errlen, "an SSH socket path is required");
        return NULL;
    }
    s = gw_xcalloc(1, sizeof(*s));
    s->r = r;
    s->listen_fd = -1;
    s->spare_sock = -1;
    s->socket_path = gw_xstrdup(o->socket_path);
    s->workdir = o->workdir != NULL ? gw_xstrdup(o->workdir) : NULL;
    s->shell = o->shell != NULL ? gw_xstrdup(o->shell) : NULL;
    s->envp = copy_env(o->envp);
    if (make_bind(s, err, errlen) != 0)
        goto fail;
    s->listen_fd = listen_unix(s->socket_path, err, errlen);
    if (s->listen_fd < 0)
        goto fail;
    s->accept_ev = event_new(base, s->listen_fd, EV_READ | EV_PERSIST, on_accept, s);
    s->resume_ev = evtimer_new(base, on_resume, s);
    s->refill_ev = evtimer_new(base, on_refill, s);
    if (s->accept_ev == NULL || s->resume_ev == NULL || s->refill_ev == NULL ||
        event_add(s->accept_ev, NULL) != 0) {
        snprintf(err, errlen, "cannot register the SSH listener on the loop");
        goto fail;
    }
    make_spare(s);
    log_info("ssh.listening", LF_STR("path", s->socket_path));
    return s;
fail:
    sup_ssh_stop(s);
    return NULL;
}

void sup_ssh_stop(struct sup_ssh *s)
{
    if (s == NULL)
        return;
    if (s->accept_ev != NULL)
        event_free(s->accept_ev);
    if (s->resume_ev != NULL)
        event_free(s->resume_ev);
    if (s->refill_ev != NULL)
        event_free(s->refill_ev);
    drop_spare(s);
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        (void)unlink(s->socket_path);
    }
    for (unsigned i = 0; i < s->nkids; i++)
        (void)kill(s->kids[i], SIGTERM);
    if (s->nkids > 0)
        log_info("ssh.stopping", LF_UINT("connections", s->nkids));
    if (s->bind != NULL)
        ssh_bind_free(s->bind);
    if (s->envp != NULL) {
        for (size_t i = 0; s->envp[i] != NULL; i++)
            free(s->envp[i]);
        free(s->envp);
    }
    free(s->socket_path);
    free(s->workdir);
    free(s->shell);
    free(s);
}

const char *sup_ssh_socket_path(const struct sup_ssh *s)
{
    return s->socket_path;
}

bool sup_ssh_child_exited(struct sup_ssh *s, pid_t pid, int status)
{
    for (unsigned i = 0; i < s->nkids; i++) {
        if (s->kids[i] != pid)
            continue;
        s->kids[i] = s->kids[--s->nkids];
        if (pid == s->spare_pid) { /* refilled by the next connection */
            drop_spare(s);
            log_warn("ssh.spare_exited", LF_INT("pid", pid), LF_INT("status", status));
            return true;
        }
        if (WIFSIGNALED(status) || WEXITSTATUS(status) != 0)
            log_info("ssh.connection_failed", LF_INT("pid", pid), LF_INT("status", status));
        else
            log_debug("ssh.connection_closed", LF_INT("pid", pid));
        return true;
    }
    return false;
}
