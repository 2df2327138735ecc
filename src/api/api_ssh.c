/* The SSH client of ExecSandbox: libssh over a relay, driven by the loop.
 *
 *   libssh <-> |fd_a| ==socketpair== |fd_b| <-> api_relay <-> supervisor <-> sshd
 *
 * libssh owns |fd_a| (it closes it when the transport ends, and on
 * ssh_free); our events watch a dup of it (|fd_watch|), so they never refer
 * to an fd number libssh released and the kernel may hand out again. libssh
 * reads and writes |fd_a| itself, from inside its own calls; each readiness
 * event resumes the current step (pump()). |fd_b| is bridged to the relay
 * with flow control both ways.
 *
 * libssh 0.10 quirks this file works around:
 *   - An fd given with SSH_OPTIONS_FD goes through the "connecting" path,
 *     whose first POLLOUT switches the socket to blocking mode (socket.c).
 *     A blocking write into a full socketpair would stall the loop, which
 *     is the only reader of the other end, so O_NONBLOCK is put back after
 *     each ssh_connect() step. libssh writes only after its own poll saw
 *     POLLOUT, so the non-blocking socket never answers EAGAIN to it (which
 *     libssh would take as fatal).
 *   - ssh_channel_read*() refuse to hand out buffered data once the session
 *     is in error or the channel closed, which would lose the tail of the
 *     output when the relay ends right after it; and ssh_channel_poll()
 *     processes no packet after EOF (the exit status comes after EOF).
 *     So output comes through the channel data callback, always taken into
 *     our queue, and ssh_execute_message_callbacks() runs the one packet
 *     round per event (for a client it only refuses server requests).
 *     Backpressure: above QUEUE_HIGH queued bytes the socket is not read,
 *     so the SSH window, the socketpair and the relay stop the remote.
 *   - In non-blocking mode ssh_send_keepalive() leaves its global request
 *     pending and the next call only collects the answer; it is called
 *     twice per probe.
 *   - ssh_channel_write() returns 0 when the peer's window is closed: the
 *     bytes stay in our input queue, retried on the next event.
 *   - Configuration files are not read (SSH_OPTIONS_PROCESS_CONFIG off) and
 *     the known-hosts files are /dev/null: the host key is not checked. */
#include "api/api_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <libssh/server.h> /* ssh_send_keepalive, ssh_execute_message_callbacks */

#define SSH_USER      "sandbox"
#define PTY_TERM      "xterm-256color"
#define KEEPALIVE_S   15
#define KEEPALIVE_MAX 4            /* silent intervals in a row that end the exec */
#define CLOSE_WAIT_MS 500          /* after the exit status, for the channel close */
#define QUEUE_HIGH    (256 * 1024) /* queued output above which the socket is not read */
#define INPUT_HIGH    (256 * 1024) /* queued input above which api_ssh_write says FULL */
#define INPUT_LOW     (64 * 1024)
#define WRITE_CHUNK   (32 * 1024)
#define BRIDGE_CHUNK  (64 * 1024)
#define ERRLEN        512
#define LOST_MSG      "exec relay closed before the command reported an exit status"

/* Forward-only; every change goes through set_state(). */
enum ssh_state {
    ST_CONNECT, /* banner and key exchange */
    ST_AUTH,    /* "none" as SSH_USER */
    ST_CHANNEL, /* session channel */
    ST_PTY,     /* pty-req */
    ST_EXEC,    /* exec request sent, waiting for its answer */
    ST_RUNNING, /* the command runs: output, input, exit status */
    ST_DONE,    /* on_end was called */
};

static const char *const state_names[] = {"connect", "auth",    "channel", "pty",
                                          "exec",    "running", "done"};

/* One piece of output as the SSH layer delivered it. */
struct chunk {
    struct chunk *next;
    bool is_stderr;
    size_t len;
    uint8_t data[];
};

struct api_ssh {
    struct api *a;
    struct event_base *base;
    const struct api_ssh_ops *ops;
    void *arg;
    char *sandbox_id;
    char *command;
    bool tty;
    uint32_t cols, rows;
    uint32_t timeout_secs;
    enum ssh_state state;

    /* libssh */
    ssh_session sess;
    ssh_channel ch;
    struct ssh_channel_callbacks_struct ch_cb;
    bool connect_called; /* the session owns |fd_a| from then on */
    int fd_a;            /* libssh's end, until handed over */
    int fd_watch;        /* dup of |fd_a| for our events */
    struct event *ev_ssh_r, *ev_ssh_w;
    bool ssh_r_on, ssh_w_on;

    /* the bridge between |fd_b| and the relay */
    struct api_relay *relay;
    int fd_b;
    struct event *ev_b_r, *ev_b_w;
    bool b_r_on, b_w_on;
    struct evbuffer *to_ssh; /* relay bytes |fd_b| did not take yet */
    bool relay_full;         /* api_relay_write said FULL (or the relay is gone) */
    bool relay_paused;       /* we paused the relay's on_data */
    bool relay_eof;          /* nothing more comes from the relay */
    bool b_shut;             /* |fd_b| shut for writing (the EOF reached libssh's side) */
    bool b_broken;           /* writing |fd_b| failed: relay bytes are dropped */
    int relay_status;        /* the relay's end when it was not OK */
    char *relay_msg;
    uint64_t bytes_in; /* from the relay, for keepalive liveness */
    uint64_t bytes_in_at_tick;
    unsigned silent_ticks;

    /* input */
    struct evbuffer *in;
    bool in_full;       /* api_ssh_write returned FULL: on_input_drained owed */
    bool in_closed;     /* api_ssh_close_input was called */
    bool close_channel; /* ... and wants a channel close after the EOF */
    bool eof_sent;
    bool close_sent;
    bool input_dead; /* the channel refuses writes: input is dropped */
    bool resize_pending;
    uint32_t rs_cols, rs_rows;

    /* output */
    struct chunk *out_head, *out_tail;
    size_t out_len;
    bool out_blocked; /* on_output returned false */

    /* how it ends */
    bool have_exit;
    int32_t exit_code;
    bool chan_closed;  /* the server closed the channel */
    bool close_waited; /* CLOSE_WAIT_MS passed after the exit status */
    bool timed_out;
    bool dead;   /* the transport is gone */
    bool failed; /* a setup step failed: fail_status / fail_msg */
    int fail_status;
    char fail_msg[ERRLEN];

    struct event *ev_pump, *ev_timeout, *ev_close_wait, *ev_keepalive;
    bool pump_scheduled;

    unsigned depth; /* inside our own callbacks */
    bool freed;     /* api_ssh_free() was called inside one: free on the way out */
};

static void destroy(struct api_ssh *s);
static void pump(struct api_ssh *s);

/* ---- lifetime ----------------------------------------------------------------------- */

static void enter(struct api_ssh *s)
{
    s->depth++;
}

static void leave(struct api_ssh *s)
{
    GW_ASSERT(s->depth > 0);
    if (--s->depth == 0 && s->freed)
        destroy(s);
}

static void set_state(struct api_ssh *s, enum ssh_state st)
{
    GW_ASSERT(st > s->state);
    log_debug("exec.ssh_state", LF_STR("sandbox_id", s->sandbox_id),
              LF_STR("from", state_names[s->state]), LF_STR("to", state_names[st]));
    s->state = st;
}

static void schedule_pump(struct api_ssh *s)
{
    if (s->pump_scheduled || s->state == ST_DONE)
        return;
    s->pump_scheduled = true;
    event_active(s->ev_pump, EV_TIMEOUT, 1);
}

static void watch(struct event *ev, bool *on, bool want)
{
    if (*on == want)
        return;
    if (want)
        event_add(ev, NULL);
    else
        event_del(ev);
    *on = want;
}

/* ---- the bridge: |fd_b| <-> relay ------------------------------------------------- */

static void update_bridge(struct api_ssh *s)
{
    watch(s->ev_b_r, &s->b_r_on, s->relay != NULL && !s->relay_full);
    watch(s->ev_b_w, &s->b_w_on, evbuffer_get_length(s->to_ssh) > 0 && !s->b_broken);
}

/* Once every relay byte reached |fd_b| after the relay's end, libssh gets
 * its end-of-file. */
static void maybe_shut_b(struct api_ssh *s)
{
    if (s->relay_eof && !s->b_shut && (evbuffer_get_length(s->to_ssh) == 0 || s->b_broken)) {
        shutdown(s->fd_b, SHUT_WR);
        s->b_shut = true;
    }
}

static void flush_to_ssh(struct api_ssh *s)
{
    while (evbuffer_get_length(s->to_ssh) > 0 && !s->b_broken) {
        int n = evbuffer_write(s->to_ssh, s->fd_b);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        s->b_broken = true; /* libssh's side is gone: nothing reads it */
        evbuffer_drain(s->to_ssh, evbuffer_get_length(s->to_ssh));
    }
    if (evbuffer_get_length(s->to_ssh) == 0 && s->relay_paused && s->relay != NULL) {
        s->relay_paused = false;
        api_relay_pause(s->relay, false);
    }
    maybe_shut_b(s);
}

static void on_b_event(evutil_socket_t fd, short what, void *arg)
{
    struct api_ssh *s = arg;
    (void)fd;
    if (what & EV_WRITE)
        flush_to_ssh(s);
    if ((what & EV_READ) && s->relay != NULL && !s->relay_full) {
        uint8_t buf[BRIDGE_CHUNK];
        ssize_t n = recv(s->fd_b, buf, sizeof(buf), 0);
        if (n > 0) {
            int rc = api_relay_write(s->relay, buf, (size_t)n);
            if (rc != API_RELAY_OK)
                s->relay_full = true; /* FULL: until on_writable; CLOSED: for good */
        }
    }
    update_bridge(s);
}

static void relay_on_open(struct api_relay *r, void *arg)
{
    struct api_ssh *s = arg;
    (void)r;
    log_debug("exec.relay_open", LF_STR("sandbox_id", s->sandbox_id));
    if (s->state == ST_DONE)
        return;
    if (s->timeout_secs > 0) {
        struct timeval tv = {(time_t)s->timeout_secs, 0};
        evtimer_add(s->ev_timeout, &tv);
    }
    struct timeval ka = {KEEPALIVE_S, 0};
    event_add(s->ev_keepalive, &ka);
}

static void relay_on_data(struct api_relay *r, const uint8_t *data, size_t len, void *arg)
{
    struct api_ssh *s = arg;
    s->bytes_in += len;
    if (s->b_broken)
        return;
    if (evbuffer_get_length(s->to_ssh) == 0) {
        ssize_t n = send(s->fd_b, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            s->b_broken = true;
            return;
        }
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        }
    }
    if (len > 0) {
        evbuffer_add(s->to_ssh, data, len);
        if (!s->relay_paused) {
            s->relay_paused = true;
            api_relay_pause(r, true);
        }
    }
    update_bridge(s);
}

static void relay_on_eof(struct api_relay *r, void *arg)
{
    struct api_ssh *s = arg;
    (void)r;
    s->relay_eof = true;
    maybe_shut_b(s);
}

static void relay_on_writable(struct api_relay *r, void *arg)
{
    struct api_ssh *s = arg;
    (void)r;
    s->relay_full = false;
    update_bridge(s);
}

static void relay_on_close(struct api_relay *r, int status, const char *message, void *arg)
{
    struct api_ssh *s = arg;
    (void)r;
    s->relay = NULL;
    s->relay_full = true;
    s->relay_paused = false;
    if (status != GRPC_STATUS_OK && s->relay_msg == NULL) {
        s->relay_status = status;
        s->relay_msg = gw_xstrdup(message ? message : "relay failed");
    }
    log_debug("exec.relay_closed", LF_STR("sandbox_id", s->sandbox_id),
              LF_STR("status", grpc_status_name(status)), LF_STR("message", message));
    /* libssh learns it from the socket once the bytes before it are in. */
    s->relay_eof = true;
    maybe_shut_b(s);
    update_bridge(s);
}

static const struct api_relay_ops relay_ops = {
    .on_open = relay_on_open,
    .on_data = relay_on_data,
    .on_eof = relay_on_eof,
    .on_writable = relay_on_writable,
    .on_close = relay_on_close,
};

/* ---- libssh channel callbacks (run inside libssh calls) ------------------------------ */

static int on_channel_data(ssh_session sess, ssh_channel ch, void *data, uint32_t len,
                           int is_stderr, void *userdata)
{
    struct api_ssh *s = userdata;
    (void)sess;
    (void)ch;
    if (len == 0)
        return 0;
    struct chunk *c = gw_xmalloc(sizeof(*c) + len);
    c->next = NULL;
    c->is_stderr = is_stderr != 0;
    c->len = len;
    memcpy(c->data, data, len);
    if (s->out_tail != NULL)
        s->out_tail->next = c;
    else
        s->out_head = c;
    s->out_tail = c;
    s->out_len += len;
    return (int)len;
}

static void on_channel_exit_status(ssh_session sess, ssh_channel ch, int status, void *userdata)
{
    struct api_ssh *s = userdata;
    (void)sess;
    (void)ch;
    if (s->have_exit)
        return;
    s->have_exit = true;
    /* The wire value is a uint32 that libssh stores in an int. */
    s->exit_code = status < 0 ? INT32_MAX : status;
    struct timeval tv = {0, CLOSE_WAIT_MS * 1000};
    evtimer_add(s->ev_close_wait, &tv);
}

static void on_channel_close(ssh_session sess, ssh_channel ch, void *userdata)
{
    struct api_ssh *s = userdata;
    (void)sess;
    (void)ch;
    s->chan_closed = true;
}

/* ---- the SSH steps ----------------------------------------------------------------- */

enum step_result { STEP_DONE, STEP_AGAIN, STEP_FAILED };

static int fail_step(struct api_ssh *s, int status, const char *fmt, ...) GW_PRINTF(3, 4);
static int fail_step(struct api_ssh *s, int status, const char *fmt, ...)
{
    if (!s->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(s->fail_msg, sizeof(s->fail_msg), fmt, ap);
        va_end(ap);
        s->failed = true;
        s->fail_status = status;
        log_debug("exec.ssh_failed", LF_STR("sandbox_id", s->sandbox_id),
                  LF_STR("state", state_names[s->state]), LF_STR("error", s->fail_msg));
    }
    return STEP_FAILED;
}

/* See the header comment: libssh made the socket blocking on connect. */
static void keep_nonblocking(struct api_ssh *s)
{
    int fl = fcntl(s->fd_watch, F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK))
        (void)fcntl(s->fd_watch, F_SETFL, fl | O_NONBLOCK);
}

static int step_connect(struct api_ssh *s)
{
    s->connect_called = true;
    s->fd_a = -1; /* the session closes it from now on */
    int rc = ssh_connect(s->sess);
    keep_nonblocking(s);
    if (rc == SSH_OK)
        return STEP_DONE;
    if (rc == SSH_AGAIN)
        return STEP_AGAIN;
    return fail_step(s, GRPC_STATUS_INTERNAL, "failed to establish ssh transport: %s",
                     ssh_get_error(s->sess));
}

static int step_auth(struct api_ssh *s)
{
    int rc = ssh_userauth_none(s->sess, NULL);
    switch (rc) {
    case SSH_AUTH_SUCCESS:
        return STEP_DONE;
    case SSH_AUTH_AGAIN:
        return STEP_AGAIN;
    case SSH_AUTH_DENIED:
    case SSH_AUTH_PARTIAL:
        return fail_step(s, GRPC_STATUS_PERMISSION_DENIED,
                         "ssh authentication rejected by sandbox");
    default:
        return fail_step(s, GRPC_STATUS_INTERNAL, "failed to authenticate ssh session: %s",
                         ssh_get_error(s->sess));
    }
}

static int step_channel(struct api_ssh *s)
{
    if (s->ch == NULL) {
        s->ch = ssh_channel_new(s->sess);
        if (s->ch == NULL)
            return fail_step(s, GRPC_STATUS_INTERNAL, "failed to open ssh channel: %s",
                             ssh_get_error(s->sess));
        memset(&s->ch_cb, 0, sizeof(s->ch_cb));
        s->ch_cb.userdata = s;
        s->ch_cb.channel_data_function = on_channel_data;
        s->ch_cb.channel_exit_status_function = on_channel_exit_status;
        s->ch_cb.channel_close_function = on_channel_close;
        ssh_callbacks_init(&s->ch_cb);
        if (ssh_set_channel_callbacks(s->ch, &s->ch_cb) != SSH_OK)
            return fail_step(s, GRPC_STATUS_INTERNAL, "failed to open ssh channel: %s",
                             ssh_get_error(s->sess));
    }
    int rc = ssh_channel_open_session(s->ch);
    if (rc == SSH_OK)
        return STEP_DONE;
    if (rc == SSH_AGAIN)
        return STEP_AGAIN;
    return fail_step(s, GRPC_STATUS_INTERNAL, "failed to open ssh channel: %s",
                     ssh_get_error(s->sess));
}

static int step_pty(struct api_ssh *s)
{
    int rc = ssh_channel_request_pty_size(s->ch, PTY_TERM, (int)s->cols, (int)s->rows);
    if (rc == SSH_OK)
        return STEP_DONE;
    if (rc == SSH_AGAIN)
        return STEP_AGAIN;
    return fail_step(s, GRPC_STATUS_INTERNAL, "failed to allocate PTY: %s", ssh_get_error(s->sess));
}

static int step_exec(struct api_ssh *s)
{
    int rc = ssh_channel_request_exec(s->ch, s->command);
    if (rc == SSH_OK)
        return STEP_DONE;
    if (rc == SSH_AGAIN)
        return STEP_AGAIN;
    return fail_step(s, GRPC_STATUS_INTERNAL, "failed to execute command over ssh: %s",
                     ssh_get_error(s->sess));
}

/* Runs the steps while they complete at once (each sends the next request
 * as soon as the previous answer is in). */
static void advance_setup(struct api_ssh *s)
{
    while (s->state < ST_RUNNING && !s->failed) {
        int rc;
        enum ssh_state next;
        switch (s->state) {
        case ST_CONNECT:
            rc = step_connect(s);
            next = ST_AUTH;
            break;
        case ST_AUTH:
            rc = step_auth(s);
            next = ST_CHANNEL;
            break;
        case ST_CHANNEL:
            rc = step_channel(s);
            next = s->tty ? ST_PTY : ST_EXEC;
            break;
        case ST_PTY:
            rc = step_pty(s);
            next = ST_EXEC;
            break;
        default:
            rc = step_exec(s);
            next = ST_RUNNING;
            break;
        }
        if (rc != STEP_DONE)
            return;
        set_state(s, next);
    }
}

/* ---- running --------------------------------------------------------------------------- */

static bool transport_alive(struct api_ssh *s)
{
    if (!s->connect_called)
        return true;
    return ssh_is_connected(s->sess) && !(ssh_get_status(s->sess) & SSH_CLOSED_ERROR);
}

static void mark_dead_if_gone(struct api_ssh *s)
{
    if (s->dead || transport_alive(s))
        return;
    s->dead = true;
    log_debug("exec.ssh_transport_end", LF_STR("sandbox_id", s->sandbox_id),
              LF_STR("state", state_names[s->state]), LF_STR("error", ssh_get_error(s->sess)));
}

/* Stdin into the channel as the peer's window and libssh's own output
 * buffer allow, then EOF (and close) once input ended. */
static void write_input(struct api_ssh *s)
{
    while (evbuffer_get_length(s->in) > 0 && !s->input_dead) {
        if (ssh_get_status(s->sess) & SSH_WRITE_PENDING)
            return; /* libssh still holds bytes for the socket */
        uint32_t win = ssh_channel_window_size(s->ch);
        if (win == 0)
            return;
        size_t n = GW_MIN(evbuffer_get_length(s->in), (size_t)GW_MIN(win, WRITE_CHUNK));
        const uint8_t *p = evbuffer_pullup(s->in, (ssize_t)n);
        int w = ssh_channel_write(s->ch, p, (uint32_t)n);
        if (w < 0) {
            log_debug("exec.stdin_refused", LF_STR("sandbox_id", s->sandbox_id),
                      LF_STR("error", ssh_get_error(s->sess)));
            s->input_dead = true;
            break;
        }
        if (w == 0)
            return;
        evbuffer_drain(s->in, (size_t)w);
    }
    if (s->input_dead)
        evbuffer_drain(s->in, evbuffer_get_length(s->in));
    if (s->in_closed && !s->eof_sent && evbuffer_get_length(s->in) == 0) {
        s->eof_sent = true;
        if (!s->input_dead && !s->chan_closed)
            (void)ssh_channel_send_eof(s->ch);
    }
    /* The close follows the exit status: a server may end the command as
     * soon as it sees our close, and its exit status would be lost. */
    if (s->close_channel && s->eof_sent && s->have_exit && !s->close_sent) {
        s->close_sent = true;
        if (!s->chan_closed)
            (void)ssh_channel_close(s->ch);
    }
}

static void apply_resize(struct api_ssh *s)
{
    if (!s->resize_pending || s->chan_closed || s->eof_sent)
        return;
    s->resize_pending = false;
    (void)ssh_channel_change_pty_size(s->ch, (int)s->rs_cols, (int)s->rs_rows);
}

/* Hands queued output over until the consumer is full. */
static void deliver_output(struct api_ssh *s)
{
    while (s->out_head != NULL && !s->out_blocked && !s->freed) {
        struct chunk *c = s->out_head;
        s->out_head = c->next;
        if (s->out_head == NULL)
            s->out_tail = NULL;
        s->out_len -= c->len;
        bool more = s->ops->on_output(s, c->is_stderr, c->data, c->len, s->arg);
        free(c);
        if (!more)
            s->out_blocked = true;
    }
}

/* One probe: the first call collects the previous answer, the second
 * sends (each is a no-op while a probe is still unanswered). */
static void send_keepalive(struct api_ssh *s)
{
    (void)ssh_send_keepalive(s->sess);
    (void)ssh_send_keepalive(s->sess);
}

/* ---- the end ------------------------------------------------------------------------- */

static void stop_ssh_events(struct api_ssh *s)
{
    watch(s->ev_ssh_r, &s->ssh_r_on, false);
    watch(s->ev_ssh_w, &s->ssh_w_on, false);
    evtimer_del(s->ev_timeout);
    evtimer_del(s->ev_close_wait);
    evtimer_del(s->ev_keepalive);
}

/* Decides whether the exec is over and tells the owner. */
static void check_end(struct api_ssh *s)
{
    struct api_ssh_result res = {.end = API_SSH_FAILED, .status = GRPC_STATUS_UNAVAILABLE};
    char msg[ERRLEN];
    if (s->timed_out) {
        res.end = API_SSH_TIMED_OUT;
    } else if (s->out_head != NULL) {
        return; /* every byte of output before the end goes first */
    } else if (s->state < ST_RUNNING && (s->failed || s->dead)) {
        if (s->relay_msg != NULL) {
            res.status = s->relay_status;
            res.message = s->relay_msg;
        } else if (s->failed) {
            res.status = s->fail_status;
            res.message = s->fail_msg;
        } else {
            snprintf(msg, sizeof(msg), "failed to establish ssh transport: %s",
                     s->connect_called ? ssh_get_error(s->sess) : "relay closed");
            res.status = GRPC_STATUS_INTERNAL;
            res.message = msg;
        }
    } else if (s->state == ST_RUNNING && s->have_exit &&
               (s->chan_closed || s->close_waited || s->dead)) {
        res.end = API_SSH_EXITED;
        res.exit_code = s->exit_code;
    } else if (s->state == ST_RUNNING && !s->have_exit && (s->chan_closed || s->dead)) {
        res.message = LOST_MSG;
    } else {
        return;
    }
    set_state(s, ST_DONE);
    stop_ssh_events(s);
    s->ops->on_end(s, &res, s->arg);
}

static void update_ssh_interest(struct api_ssh *s)
{
    bool alive = s->connect_called && !s->dead && s->state != ST_DONE;
    bool rd = alive && (s->state < ST_RUNNING || s->out_len < QUEUE_HIGH);
    bool wr = alive && (ssh_get_poll_flags(s->sess) & SSH_WRITE_PENDING);
    watch(s->ev_ssh_r, &s->ssh_r_on, rd);
    watch(s->ev_ssh_w, &s->ssh_w_on, wr);
}

/* Resumes the exchange after any event. Must run inside enter()/leave(). */
static void pump(struct api_ssh *s)
{
    s->pump_scheduled = false;
    if (s->freed || s->state == ST_DONE)
        return;
    mark_dead_if_gone(s);
    if (!s->dead && s->state > ST_CONNECT &&
        (s->out_len < QUEUE_HIGH || (ssh_get_poll_flags(s->sess) & SSH_WRITE_PENDING)))
        (void)ssh_execute_message_callbacks(s->sess); /* one packet round */
    if (!s->dead)
        advance_setup(s);
    if (!s->dead && s->state == ST_RUNNING) {
        write_input(s);
        apply_resize(s);
    }
    mark_dead_if_gone(s);
    deliver_output(s);
    if (s->freed)
        return;
    check_end(s);
    if (s->freed || s->state == ST_DONE)
        return;
    update_ssh_interest(s);
    if (s->in_full && evbuffer_get_length(s->in) <= INPUT_LOW) {
        s->in_full = false;
        s->ops->on_input_drained(s, s->arg);
    }
}

/* ---- loop callbacks -------------------------------------------------------------------- */

static void on_ssh_event(evutil_socket_t fd, short what, void *arg)
{
    struct api_ssh *s = arg;
    (void)fd;
    (void)what;
    enter(s);
    pump(s);
    leave(s);
}

static void on_pump_event(evutil_socket_t fd, short what, void *arg)
{
    on_ssh_event(fd, what, arg);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct api_ssh *s = arg;
    (void)fd;
    (void)what;
    log_info("exec.timeout", LF_STR("sandbox_id", s->sandbox_id),
             LF_UINT("timeout_s", s->timeout_secs));
    s->timed_out = true;
    enter(s);
    pump(s);
    leave(s);
}

static void on_close_wait(evutil_socket_t fd, short what, void *arg)
{
    struct api_ssh *s = arg;
    (void)fd;
    (void)what;
    s->close_waited = true;
    enter(s);
    pump(s);
    leave(s);
}

static void on_keepalive(evutil_socket_t fd, short what, void *arg)
{
    struct api_ssh *s = arg;
    (void)fd;
    (void)what;
    if (s->state == ST_DONE || s->dead)
        return;
    bool heard = s->bytes_in != s->bytes_in_at_tick;
    s->bytes_in_at_tick = s->bytes_in;
    /* Silence we cause ourselves (output or relay held back) is not the
     * peer's. */
    if (heard || s->relay_paused || s->out_len >= QUEUE_HIGH || s->out_blocked)
        s->silent_ticks = 0;
    else
        s->silent_ticks++;
    enter(s);
    if (s->silent_ticks >= KEEPALIVE_MAX) {
        log_info("exec.keepalive_timeout", LF_STR("sandbox_id", s->sandbox_id),
                 LF_UINT("silent_s", (uint64_t)s->silent_ticks * KEEPALIVE_S));
        if (s->state < ST_RUNNING)
            (void)fail_step(s, GRPC_STATUS_UNAVAILABLE,
                            "relay dropped: the sandbox's SSH server stopped answering");
        s->dead = true;
    } else if (s->silent_ticks > 0 && s->state > ST_AUTH) {
        send_keepalive(s);
    }
    pump(s);
    leave(s);
}

/* ---- public ----------------------------------------------------------------------------- */

static int session_setup(struct api_ssh *s)
{
    int verbosity = SSH_LOG_NOLOG;
    bool no = false;
    socket_t fd = s->fd_a;
    s->sess = ssh_new();
    if (s->sess == NULL)
        return -1;
    if (ssh_options_set(s->sess, SSH_OPTIONS_FD, &fd) < 0 ||
        ssh_options_set(s->sess, SSH_OPTIONS_HOST, "sandbox") < 0 ||
        ssh_options_set(s->sess, SSH_OPTIONS_USER, SSH_USER) < 0 ||
        ssh_options_set(s->sess, SSH_OPTIONS_PROCESS_CONFIG, &no) < 0 ||
        ssh_options_set(s->sess, SSH_OPTIONS_SSH_DIR, "/dev/null") < 0 ||
        ssh_options_set(s->sess, SSH_OPTIONS_KNOWNHOSTS, "/dev/null") < 0 ||
        ssh_options_set(s->sess, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, "/dev/null") < 0 ||
        ssh_options_set(s->sess, SSH_OPTIONS_LOG_VERBOSITY, &verbosity) < 0)
        return -1;
    ssh_set_blocking(s->sess, 0);
    return 0;
}

struct api_ssh *api_ssh_start(struct api *a, const struct api_ssh_params *p,
                              const struct api_ssh_ops *ops, void *arg, int *status,
                              const char **msg)
{
    struct api_ssh *s = gw_xcalloc(1, sizeof(*s));
    int sv[2];
    s->a = a;
    s->base = a->base;
    s->ops = ops;
    s->arg = arg;
    s->sandbox_id = gw_xstrdup(p->sandbox_id);
    s->command = gw_xstrdup(p->command);
    s->tty = p->tty;
    s->cols = p->cols;
    s->rows = p->rows;
    s->timeout_secs = p->timeout_secs;
    s->fd_a = s->fd_b = s->fd_watch = -1;
    s->to_ssh = evbuffer_new();
    s->in = evbuffer_new();
    s->ev_pump = event_new(s->base, -1, 0, on_pump_event, s);
    s->ev_timeout = evtimer_new(s->base, on_timeout, s);
    s->ev_close_wait = evtimer_new(s->base, on_close_wait, s);
    s->ev_keepalive = event_new(s->base, -1, EV_PERSIST, on_keepalive, s);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        goto fail;
    s->fd_a = sv[0];
    s->fd_b = sv[1];
    s->fd_watch = fcntl(s->fd_a, F_DUPFD_CLOEXEC, 0);
    if (s->fd_watch < 0 || session_setup(s) != 0)
        goto fail;
    s->ev_ssh_r = event_new(s->base, s->fd_watch, EV_READ | EV_PERSIST, on_ssh_event, s);
    s->ev_ssh_w = event_new(s->base, s->fd_watch, EV_WRITE | EV_PERSIST, on_ssh_event, s);
    s->ev_b_r = event_new(s->base, s->fd_b, EV_READ | EV_PERSIST, on_b_event, s);
    s->ev_b_w = event_new(s->base, s->fd_b, EV_WRITE | EV_PERSIST, on_b_event, s);
    struct api_relay_target t = {.tcp_host = NULL, .tcp_port = 0, .service_id = NULL};
    s->relay = api_relay_open(a, s->sandbox_id, &t, &relay_ops, s, status, msg);
    if (s->relay == NULL) {
        destroy(s);
        return NULL;
    }
    update_bridge(s);
    schedule_pump(s); /* the client speaks first: its banner waits in the relay */
    return s;
fail:
    log_error("exec.setup_failed", LF_STR("sandbox_id", p->sandbox_id),
              LF_STR("error", strerror(errno)));
    destroy(s);
    *status = GRPC_STATUS_INTERNAL;
    *msg = "could not set up the exec transport";
    return NULL;
}

int api_ssh_write(struct api_ssh *s, const uint8_t *data, size_t len)
{
    if (s->freed || s->state == ST_DONE || s->in_closed)
        return API_SSH_CLOSED;
    if (len > 0) {
        evbuffer_add(s->in, data, len);
        schedule_pump(s);
    }
    if (evbuffer_get_length(s->in) > INPUT_HIGH) {
        s->in_full = true;
        return API_SSH_FULL;
    }
    return API_SSH_OK;
}

void api_ssh_close_input(struct api_ssh *s, bool close_channel)
{
    if (s->freed || s->in_closed)
        return;
    s->in_closed = true;
    s->close_channel = close_channel;
    schedule_pump(s);
}

void api_ssh_resize(struct api_ssh *s, uint32_t cols, uint32_t rows)
{
    if (s->freed || !s->tty)
        return;
    s->resize_pending = true;
    s->rs_cols = cols;
    s->rs_rows = rows;
    schedule_pump(s);
}

void api_ssh_resume_output(struct api_ssh *s)
{
    if (s->freed || !s->out_blocked)
        return;
    s->out_blocked = false;
    schedule_pump(s);
}

static void free_if(struct event *ev)
{
    if (ev != NULL)
        event_free(ev);
}

static void destroy(struct api_ssh *s)
{
    if (s->relay != NULL)
        api_relay_close(s->relay);
    free_if(s->ev_ssh_r);
    free_if(s->ev_ssh_w);
    free_if(s->ev_b_r);
    free_if(s->ev_b_w);
    free_if(s->ev_pump);
    free_if(s->ev_timeout);
    free_if(s->ev_close_wait);
    free_if(s->ev_keepalive);
    if (s->sess != NULL)
        ssh_free(s->sess); /* frees the channel; closes |fd_a| once connecting began */
    if (s->fd_a >= 0)
        close(s->fd_a);
    if (s->fd_watch >= 0)
        close(s->fd_watch);
    if (s->fd_b >= 0)
        close(s->fd_b);
    while (s->out_head != NULL) {
        struct chunk *c = s->out_head;
        s->out_head = c->next;
        free(c);
    }
    if (s->to_ssh != NULL)
        evbuffer_free(s->to_ssh);
    if (s->in != NULL)
        evbuffer_free(s->in);
    free(s->relay_msg);
    free(s->sandbox_id);
    free(s->command);
    free(s);
}

void api_ssh_free(struct api_ssh *s)
{
    if (s == NULL || s->freed)
        return;
    s->freed = true;
    if (s->depth == 0)
        destroy(s);
}
