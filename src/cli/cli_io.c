/*
 * cli_io: the standard descriptors on the CLI's loop, shared by the
 * streaming commands that move raw bytes (sandbox exec, ssh-proxy).
 *
 *  - cli_std_*: non-blocking flags and the terminal's raw mode, remembered
 *    process-wide (the descriptors and the terminal are process-wide) and
 *    put back by cli_std_restore() or, failing that, at exit();
 *  - cli_sink: writes to fd 1 or 2 without blocking; what the descriptor
 *    does not take is held until it is writable, and the caller pauses its
 *    stream meanwhile, so at most one message's bytes are ever held;
 *  - cli_source: reads fd 0 in chunks while the caller can take them (the
 *    caller turns it off while its call is congested).
 */
#include "cli/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <termios.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "reactor/reactor.h"

#define SOURCE_CHUNK (64 * 1024) /* bytes per read of fd 0 */

/* ---- descriptor flags and the terminal ---------------------------------------- */

static struct {
    bool fl_saved[3];
    int fl[3];             /* original file status flags of fds 0..2 */
    bool raw;              /* the terminal on fd 0 is in raw mode */
    struct termios saved;  /* its settings before */
    bool atexit_installed; /* cli_std_restore() registered with atexit() */
} std_state;

void cli_std_restore(void)
{
    if (std_state.raw) {
        (void)tcsetattr(0, TCSAFLUSH, &std_state.saved);
        std_state.raw = false;
    }
    for (int fd = 2; fd >= 0; fd--) {
        if (std_state.fl_saved[fd]) {
            (void)fcntl(fd, F_SETFL, std_state.fl[fd]);
            std_state.fl_saved[fd] = false;
        }
    }
}

static void install_atexit(void)
{
    if (!std_state.atexit_installed && atexit(cli_std_restore) == 0)
        std_state.atexit_installed = true;
}

void cli_std_nonblocking(const int *fds, size_t n)
{
    install_atexit();
    /* The descriptors often share one open file (a terminal): read all the
     * flags before the first is changed. */
    for (size_t i = 0; i < n; i++) {
        int fl = fcntl(fds[i], F_GETFL);
        if (fl >= 0 && !std_state.fl_saved[fds[i]]) {
            std_state.fl[fds[i]] = fl;
            std_state.fl_saved[fds[i]] = true;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (std_state.fl_saved[fds[i]])
            (void)fcntl(fds[i], F_SETFL, std_state.fl[fds[i]] | O_NONBLOCK);
    }
}

int cli_std_raw(void)
{
    struct termios t;

    if (!std_state.raw) {
        if (tcgetattr(0, &std_state.saved) != 0)
            return -1;
        install_atexit();
    }
    t = std_state.saved;
    t.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
    t.c_oflag &= ~(tcflag_t)OPOST;
    t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    t.c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
    t.c_cflag |= CS8;
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    if (tcsetattr(0, TCSADRAIN, &t) != 0)
        return -1;
    std_state.raw = true;
    return 0;
}

/* ---- output --------------------------------------------------------------------- */

/* Failed for good: drop what is held, tell the owner once. */
static void sink_fail(struct cli_sink *o, int err)
{
    o->err = err != 0 ? err : EIO;
    evbuffer_drain(o->held, evbuffer_get_length(o->held));
    o->on_failed(o, o->arg);
}

static void on_sink_writable(evutil_socket_t fd, short what, void *arg)
{
    struct cli_sink *o = arg;

    (void)fd;
    (void)what;
    while (evbuffer_get_length(o->held) > 0) {
        int n = evbuffer_write(o->held, o->fd);
        if (n > 0 || (n < 0 && errno == EINTR))
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && event_add(o->ev, NULL) == 0)
            return;
        sink_fail(o, n < 0 ? errno : EIO);
        return;
    }
    o->on_drained(o, o->arg);
}

int cli_sink_init(struct cli_sink *o, struct cli *c, int fd, cli_sink_fn on_drained,
                  cli_sink_fn on_failed, void *arg)
{
    *o = (struct cli_sink){.fd = fd, .on_drained = on_drained, .on_failed = on_failed, .arg = arg};
    o->held = evbuffer_new();
    o->ev = event_new(reactor_base(cli_reactor(c)), fd, EV_WRITE, on_sink_writable, o);
    return o->held != NULL && o->ev != NULL ? 0 : -1;
}

void cli_sink_free(struct cli_sink *o)
{
    if (o->ev != NULL)
        event_free(o->ev);
    if (o->held != NULL)
        evbuffer_free(o->held);
    o->ev = NULL;
    o->held = NULL;
}

size_t cli_sink_held(const struct cli_sink *o)
{
    return o->held != NULL ? evbuffer_get_length(o->held) : 0;
}

bool cli_sink_write(struct cli_sink *o, const uint8_t *data, size_t len, bool queue)
{
    int err = EAGAIN; /* a write of 0 bytes: try again when writable */

    if (o->err != 0 || len == 0)
        return false;
    /* Bytes already held (here, or on a sibling when |queue|) go first. */
    queue = queue || evbuffer_get_length(o->held) > 0;
    while (!queue && len > 0) {
        ssize_t n = write(o->fd, data, len);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            err = n < 0 ? errno : EAGAIN;
            break;
        }
    }
    if (len == 0)
        return false;
    if (err != EAGAIN && err != EWOULDBLOCK) {
        sink_fail(o, err);
        return false;
    }
    evbuffer_add(o->held, data, len);
    if (event_add(o->ev, NULL) != 0) {
        sink_fail(o, errno);
        return false;
    }
    return true;
}

/* ---- input ------------------------------------------------------------------------ */

static void on_source_readable(evutil_socket_t fd, short what, void *arg)
{
    static uint8_t buf[SOURCE_CHUNK];
    struct cli_source *in = arg;
    ssize_t n;

    (void)fd;
    (void)what;
    if (!in->on)
        return;
    if (!in->poll)
        in->on = false; /* a one-shot timer: re-armed below */
    n = read(in->fd, buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        cli_source_enable(in, true);
        return;
    }
    if (n <= 0) { /* end of input; a read error (EIO: terminal gone) ends it too */
        cli_source_enable(in, false);
        in->eof = true;
        in->on_eof(in->arg);
        return;
    }
    cli_source_enable(in, in->on_data(in->arg, buf, (size_t)n));
}

int cli_source_open(struct cli_source *in, struct cli *c, int fd, cli_source_data_fn on_data,
                    cli_source_eof_fn on_eof, void *arg)
{
    struct event_base *base = reactor_base(cli_reactor(c));

    *in = (struct cli_source){
        .fd = fd, .poll = true, .on_data = on_data, .on_eof = on_eof, .arg = arg};
    in->ev = event_new(base, fd, EV_READ | EV_PERSIST, on_source_readable, in);
    if (in->ev == NULL)
        return -1;
    if (event_add(in->ev, NULL) != 0) {
        /* epoll refuses regular files and /dev/null (EPERM): they never
         * block, so read them from a timer that fires on the next turn. */
        event_free(in->ev);
        in->poll = false;
        in->ev = event_new(base, -1, 0, on_source_readable, in);
        if (in->ev == NULL)
            return -1;
    } else {
        event_del(in->ev);
    }
    return 0;
}

void cli_source_enable(struct cli_source *in, bool on)
{
    static const struct timeval now = {0, 0};

    if (in->ev == NULL || in->eof)
        on = false;
    if (on == in->on)
        return;
    in->on = on;
    if (!on)
        event_del(in->ev);
    else
        (void)event_add(in->ev, in->poll ? NULL : &now); /* a file: next iteration */
}

void cli_source_free(struct cli_source *in)
{
    if (in->ev != NULL)
        event_free(in->ev);
    in->ev = NULL;
    in->on = false;
}
