/* RelayOpen and RelayStream: bytes between the gateway and a local target
 * (the SSH server's socket or a loopback TCP port).
 *
 * A relay dials its target with the reactor, then takes the connected
 * socket over as a plain non-blocking fd: reads go straight from the
 * kernel into one shared 64 KiB scratch buffer behind a hand-written
 * RelayFrame header (field 2, LEN), so a chunk is copied once more, into
 * the call's output, and never touched per byte. libevent 2.1's
 * bufferevents read at most 4 KiB per call, which costs too many loop
 * iterations on a throughput path.
 *
 * Flow control, both ways and per relay:
 *   target -> gateway  the target socket is read only while the call is
 *                      not congested (grpc_ccall_send said GRPC_SEND_FULL:
 *                      wait for the writable callback);
 *   gateway -> target  bytes the target does not take at once wait in
 *                      |out|; above SUP_RELAY_HIGH_WATER the call's
 *                      receive side is paused (HTTP/2 flow control then
 *                      slows the gateway), below SUP_RELAY_LOW_WATER it
 *                      resumes.
 * So a relay holds at most about HIGH_WATER + one message toward the target,
 * the call's high-water mark plus one chunk toward the gateway, and the
 * HTTP/2 stream window of held-back input.
 *
 * End of data: the target's EOF half-closes the call; the gateway's end
 * (a non-data frame after init, or the call ending) becomes
 * shutdown(SHUT_WR) once |out| has drained. The relay is done when both
 * directions are; any error closes both.
 */
#include "supervisor/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "http2/grpc.h"
#include "openshell.pb-c.h"
#include "reactor/reactor.h"

#define RELAY_PATH          "/openshell.v1.OpenShell/RelayStream"
#define RELAY_DIAL_MS       10000 /* TCP connect bound */
#define RELAY_READS_PER_CB  4     /* chunks read per readiness event (fairness) */
#define RELAY_LINGER_MS     10000 /* both sides done, waiting for the call's status */
#define RELAY_FRAME_HDR_MAX 4     /* tag byte + varint of a length <= 64 KiB */

enum relay_state {
    RELAY_DIALING,   /* reactor connect pending */
    RELAY_STREAMING, /* fd and call up */
    RELAY_CLOSED,    /* torn down, freed when no callback of it is on the stack */
};

struct relay {
    struct sup_relays *m; /* NULL: the manager is gone (a dial still pending) */
    enum relay_state state;
    char *channel_id;
    char target[80]; /* "ssh" or "127.0.0.1:8080", for logs and errors */
    int fd;
    struct event *rev, *wev;
    struct evbuffer *out; /* toward the target */
    struct grpc_ccall *cc;
    struct event *linger;
    bool send_full;   /* waiting for the call's writable callback */
    bool recv_paused; /* the call's receive side is paused */
    bool target_eof;  /* the target ended its output; close_send done */
    bool gw_eof;      /* the gateway ended its output */
    bool shut_wr;     /* shutdown(SHUT_WR) done */
    bool call_done;
    int depth;         /* relay callbacks on the stack */
    uint64_t up, down; /* bytes toward the gateway / the target */
    LIST_ENTRY(relay) link;
};

struct sup_relays {
    struct reactor *r;
    char *ssh_socket;
    sup_relay_result_cb on_result;
    sup_relay_channel_cb channel;
    void *arg;
    LIST_HEAD(, relay) relays;
    unsigned n;
};

/* One buffer for every relay: the loop is single-threaded and a chunk is
 * handed to the call before the next read. */
static uint8_t scratch[RELAY_FRAME_HDR_MAX + SUP_RELAY_CHUNK];

static void relay_close(struct relay *rl, const char *why);

/* ---- lifetime --------------------------------------------------------------------- */

static void relay_free(struct relay *rl)
{
    if (rl->m != NULL) {
        LIST_REMOVE(rl, link);
        rl->m->n--;
    }
    free(rl->channel_id);
    free(rl);
}

static void relay_enter(struct relay *rl)
{
    rl->depth++;
}

/* Ends a callback; frees a closed relay once the outermost one returns. */
static void relay_leave(struct relay *rl)
{
    if (--rl->depth == 0 && rl->state == RELAY_CLOSED)
        relay_free(rl);
}

/* Releases the fd, events and call. |why| NULL: a normal end. Safe to
 * call more than once. */
static void relay_close(struct relay *rl, const char *why)
{
    if (rl->state == RELAY_CLOSED)
        return;
    if (why != NULL)
        log_info("supervisor.relay_error", LF_STR("channel_id", rl->channel_id),
                 LF_STR("target", rl->target), LF_STR("error", why));
    log_debug("supervisor.relay_closed", LF_STR("channel_id", rl->channel_id),
              LF_UINT("bytes_up", rl->up), LF_UINT("bytes_down", rl->down));
    rl->state = RELAY_CLOSED;
    if (rl->cc != NULL) {
        struct grpc_ccall *cc = rl->cc;
        rl->cc = NULL;
        grpc_ccall_cancel(cc); /* no done callback follows */
    }
    if (rl->rev != NULL)
        event_free(rl->rev);
    if (rl->wev != NULL)
        event_free(rl->wev);
    if (rl->linger != NULL)
        event_free(rl->linger);
    rl->rev = rl->wev = rl->linger = NULL;
    if (rl->out != NULL)
        evbuffer_free(rl->out);
    rl->out = NULL;
    if (rl->fd >= 0)
        close(rl->fd);
    rl->fd = -1;
}

static void on_linger(evutil_socket_t fd, short what, void *arg)
{
    struct relay *rl = arg;

    relay_enter(rl);
    relay_close(rl, "the gateway did not end the relay call");
    relay_leave(rl);
}

/* Both directions done: the socket goes now; the call ends with the
 * gateway's status (bounded by the linger timer), or at once when it
 * already has. */
static void relay_maybe_finish(struct relay *rl)
{
    bool up_done = rl->target_eof || rl->call_done;
    bool down_done = (rl->gw_eof || rl->call_done) && evbuffer_get_length(rl->out) == 0;
    struct timeval tv = {RELAY_LINGER_MS / 1000, 0};

    if (rl->state != RELAY_STREAMING || !up_done || !down_done)
        return;
    if (rl->call_done) {
        relay_close(rl, NULL);
        return;
    }
    if (rl->fd >= 0) {
        event_free(rl->rev);
        event_free(rl->wev);
        rl->rev = rl->wev = NULL;
        close(rl->fd);
        rl->fd = -1;
    }
    if (rl->linger == NULL) {
        rl->linger = evtimer_new(reactor_base(rl->m->r), on_linger, rl);
        evtimer_add(rl->linger, &tv);
    }
}

/* ---- gateway -> target ----------------------------------------------------------- */

static void update_recv_pause(struct relay *rl)
{
    size_t pending = evbuffer_get_length(rl->out);
    bool pause = rl->recv_paused ? pending > SUP_RELAY_LOW_WATER : pending > SUP_RELAY_HIGH_WATER;

    if (pause == rl->recv_paused || rl->cc == NULL)
        return;
    rl->recv_paused = pause;
    /* Resuming may deliver held-back frames right here (re-entering
     * on_call_msg); the caller is inside relay_enter. */
    grpc_ccall_pause_recv(rl->cc, pause);
}

/* The gateway has no more to send: half-close the target once |out| drained. */
static void target_shut_wr(struct relay *rl)
{
    if (rl->shut_wr || rl->fd < 0 || evbuffer_get_length(rl->out) > 0)
        return;
    rl->shut_wr = true;
    if (shutdown(rl->fd, SHUT_WR) != 0 && errno != ENOTCONN)
        log_debug("supervisor.relay_shutdown_failed", LF_STR("channel_id", rl->channel_id),
                  LF_STR("error", strerror(errno)));
}

static void on_target_write(evutil_socket_t fd, short what, void *arg)
{
    struct relay *rl = arg;
    int n;

    relay_enter(rl);
    n = evbuffer_write(rl->out, rl->fd);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
        char why[160];
        snprintf(why, sizeof(why), "write to %s: %s", rl->target, strerror(errno));
        relay_close(rl, why);
        goto out;
    }
    if (evbuffer_get_length(rl->out) == 0) {
        event_del(rl->wev);
        if (rl->gw_eof || rl->call_done)
            target_shut_wr(rl);
    }
    update_recv_pause(rl);
    relay_maybe_finish(rl);
out:
    relay_leave(rl);
}

/* Writes what the target takes now and queues the rest. */
static void deliver(struct relay *rl, const uint8_t *data, size_t len)
{
    ssize_t n = 0;

    rl->down += len;
    if (evbuffer_get_length(rl->out) == 0) {
        n = write(rl->fd, data, len);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            char why[160];
            snprintf(why, sizeof(why), "write to %s: %s", rl->target, strerror(errno));
            relay_close(rl, why);
            return;
        }
        if (n < 0)
            n = 0;
    }
    if ((size_t)n < len) {
        evbuffer_add(rl->out, data + n, len - (size_t)n);
        event_add(rl->wev, NULL);
        update_recv_pause(rl);
    }
}

static void on_call_msg(struct grpc_ccall *cc, void *msg, void *arg)
{
    struct relay *rl = arg;
    const Openshell__V1__RelayFrame *f = msg;

    relay_enter(rl);
    if (rl->state != RELAY_STREAMING || rl->gw_eof)
        goto out;
    if (f->payload_case == OPENSHELL__V1__RELAY_FRAME__PAYLOAD_DATA) {
        if (f->data.len > 0 && rl->fd >= 0)
            deliver(rl, f->data.data, f->data.len);
        goto out;
    }
    /* Any other frame after init is the gateway's end-of-data marker. */
    log_debug("supervisor.relay_gateway_eof", LF_STR("channel_id", rl->channel_id),
              LF_INT("frame", f->payload_case), LF_UINT("bytes_down", rl->down));
    rl->gw_eof = true;
    target_shut_wr(rl);
    relay_maybe_finish(rl);
out:
    relay_leave(rl);
}

static void on_call_done(struct grpc_ccall *cc, int status, const char *message, void *arg)
{
    struct relay *rl = arg;

    relay_enter(rl);
    rl->cc = NULL; /* freed by the gRPC layer after this returns */
    rl->call_done = true;
    if (rl->state == RELAY_STREAMING) {
        if (status == GRPC_STATUS_CANCELLED) {
            /* The gateway drops relays it is done with this way. */
            log_debug("supervisor.relay_cancelled", LF_STR("channel_id", rl->channel_id),
                      LF_STR("message", message));
            relay_close(rl, NULL);
        } else if (status != GRPC_STATUS_OK) {
            char why[256];
            snprintf(why, sizeof(why), "relay call ended: %s: %s", grpc_status_name(status),
                     message);
            relay_close(rl, why);
        } else {
            /* Nothing more can go up; what the gateway sent still goes down. */
            if (rl->rev != NULL)
                event_del(rl->rev);
            target_shut_wr(rl);
            relay_maybe_finish(rl);
        }
    }
    relay_leave(rl);
}

/* ---- target -> gateway ----------------------------------------------------------- */

/* Puts the RelayFrame header (field 2, wire type LEN, varint length) right
 * before the |len| payload bytes at scratch + RELAY_FRAME_HDR_MAX. Returns
 * where the frame starts. */
static uint8_t *frame_header(size_t len)
{
    uint8_t v[RELAY_FRAME_HDR_MAX];
    size_t k = 0;
    uint8_t *start;

    do {
        v[k] = (uint8_t)(len & 0x7f);
        len >>= 7;
        if (len != 0)
            v[k] |= 0x80;
        k++;
    } while (len != 0);
    start = scratch + RELAY_FRAME_HDR_MAX - 1 - k;
    start[0] = (2 << 3) | 2;
    memcpy(start + 1, v, k);
    return start;
}

/* Reads one chunk. Returns false when reading must stop for now. */
static bool pump_one(struct relay *rl)
{
    ssize_t n = read(rl->fd, scratch + RELAY_FRAME_HDR_MAX, SUP_RELAY_CHUNK);
    uint8_t *frame;
    int rv;

    if (n < 0) {
        char why[160];
        if (errno == EAGAIN || errno == EINTR)
            return false;
        snprintf(why, sizeof(why), "read from %s: %s", rl->target, strerror(errno));
        relay_close(rl, why);
        return false;
    }
    if (n == 0) {
        rl->target_eof = true;
        event_del(rl->rev);
        grpc_ccall_close_send(rl->cc);
        relay_maybe_finish(rl);
        return false;
    }
    frame = frame_header((size_t)n);
    rv = grpc_ccall_send_raw(rl->cc, frame, (size_t)(scratch + RELAY_FRAME_HDR_MAX + n - frame));
    if (rv < 0) {
        relay_close(rl, "relay call closed");
        return false;
    }
    rl->up += (uint64_t)n;
    if (rv == GRPC_SEND_FULL) {
        rl->send_full = true;
        event_del(rl->rev);
        return false;
    }
    return true;
}

static void on_target_read(evutil_socket_t fd, short what, void *arg)
{
    struct relay *rl = arg;

    relay_enter(rl);
    for (int i = 0; i < RELAY_READS_PER_CB; i++) {
        if (rl->state != RELAY_STREAMING || rl->cc == NULL || rl->send_full || rl->target_eof)
            break;
        if (!pump_one(rl))
            break;
    }
    relay_leave(rl);
}

static void on_call_writable(struct grpc_ccall *cc, void *arg)
{
    struct relay *rl = arg;

    relay_enter(rl);
    if (rl->send_full && rl->state == RELAY_STREAMING) {
        rl->send_full = false;
        if (!rl->target_eof && rl->rev != NULL)
            event_add(rl->rev, NULL);
    }
    relay_leave(rl);
}

/* ---- opening ---------------------------------------------------------------------- */

static void report(struct sup_relays *m, const char *channel_id, const char *error)
{
    if (m != NULL && m->on_result != NULL)
        m->on_result(m->arg, channel_id, error);
}

/* Opens RelayStream and sends init. Returns 0 or -1 (reason logged). */
static int start_call(struct relay *rl)
{
    Openshell__V1__RelayInit init = OPENSHELL__V1__RELAY_INIT__INIT;
    Openshell__V1__RelayFrame f = OPENSHELL__V1__RELAY_FRAME__INIT;
    const char *const *md = NULL;
    struct grpc_channel *ch = rl->m->channel(rl->m->arg, &md);

    if (ch == NULL) {
        relay_close(rl, "no session with the gateway");
        return -1;
    }
    rl->cc = grpc_channel_start(ch, RELAY_PATH, &openshell__v1__relay_frame__descriptor, md, 0,
                                on_call_msg, on_call_done, rl);
    if (rl->cc == NULL) {
        relay_close(rl, "cannot start RelayStream: the connection is closing");
        return -1;
    }
    grpc_ccall_set_writable_cb(rl->cc, on_call_writable);
    init.channel_id = rl->channel_id;
    f.payload_case = OPENSHELL__V1__RELAY_FRAME__PAYLOAD_INIT;
    f.init = &init;
    if (grpc_ccall_send(rl->cc, &f.base) < 0) {
        relay_close(rl, "cannot send the relay init frame");
        return -1;
    }
    return 0;
}

/* Takes the connected socket out of |bev| (freed) as a plain fd. */
static int adopt_fd(struct bufferevent *bev)
{
    int fd = fcntl(bufferevent_getfd(bev), F_DUPFD_CLOEXEC, 3);

    bufferevent_free(bev);
    return fd;
}

static void on_dialed(struct bufferevent *bev, const struct reactor_peer *peer, const char *err,
                      void *arg)
{
    struct relay *rl = arg;
    struct event_base *base;
    char why[256];

    if (rl->m == NULL) { /* the manager went away while dialing */
        if (bev != NULL)
            bufferevent_free(bev);
        relay_free(rl);
        return;
    }
    relay_enter(rl);
    if (bev == NULL || (rl->fd = adopt_fd(bev)) < 0) {
        snprintf(why, sizeof(why), "connect %s: %s", rl->target,
                 bev == NULL ? (err != NULL ? err : "failed") : strerror(errno));
        log_warn("supervisor.relay_target_failed", LF_STR("channel_id", rl->channel_id),
                 LF_STR("target", rl->target), LF_STR("error", why));
        rl->state = RELAY_CLOSED;
        report(rl->m, rl->channel_id, why);
        goto out;
    }
    rl->state = RELAY_STREAMING;
    report(rl->m, rl->channel_id, NULL);
    if (rl->state != RELAY_STREAMING || start_call(rl) != 0)
        goto out;
    base = reactor_base(rl->m->r);
    rl->out = evbuffer_new();
    rl->rev = event_new(base, rl->fd, EV_READ | EV_PERSIST, on_target_read, rl);
    rl->wev = event_new(base, rl->fd, EV_WRITE | EV_PERSIST, on_target_write, rl);
    if (rl->out == NULL || rl->rev == NULL || rl->wev == NULL)
        gw_panic(__FILE__, __LINE__, "out of memory");
    event_add(rl->rev, NULL);
    log_debug("supervisor.relay_open", LF_STR("channel_id", rl->channel_id),
              LF_STR("target", rl->target));
out:
    relay_leave(rl);
}

int sup_relay_check_tcp(const char *host, uint32_t port, char *addr, size_t addrlen, char *err,
                        size_t errlen)
{
    struct in_addr a4;
    struct in6_addr a6;
    const char *h = host != NULL ? host : "";

    if (port < 1 || port > 65535) {
        snprintf(err, errlen, "invalid relay target port %u (want 1..65535)", port);
        return -1;
    }
    if (strcmp(h, "localhost") == 0)
        h = "127.0.0.1";
    if (inet_pton(AF_INET, h, &a4) == 1) {
        if ((ntohl(a4.s_addr) >> 24) != 127)
            goto refuse;
    } else if (inet_pton(AF_INET6, h, &a6) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&a6))
            goto refuse;
    } else {
        goto refuse;
    }
    snprintf(addr, addrlen, "%s", h);
    return 0;
refuse:
    snprintf(err, errlen, "relay target host '%.64s' is not a loopback address", h);
    return -1;
}

static struct relay *find(struct sup_relays *m, const char *channel_id)
{
    struct relay *rl;

    LIST_FOREACH(rl, &m->relays, link)
    {
        if (rl->state != RELAY_CLOSED && strcmp(rl->channel_id, channel_id) == 0)
            return rl;
    }
    return NULL;
}

/* Starts the dial. Returns 0, or -1 with a reason in |why|. */
static int dial(struct sup_relays *m, struct relay *rl, const Openshell__V1__RelayOpen *ro,
                char *why, size_t len)
{
    char addr[64];
    int rc;

    if (ro->target_case != OPENSHELL__V1__RELAY_OPEN__TARGET_TCP) {
        snprintf(rl->target, sizeof(rl->target), "%.70s", m->ssh_socket);
        rc = reactor_connect_unix(m->r, m->ssh_socket, on_dialed, rl);
    } else {
        const Openshell__V1__TcpRelayTarget *t = ro->tcp;
        snprintf(rl->target, sizeof(rl->target), "%.64s:%u", t->host ? t->host : "", t->port);
        if (sup_relay_check_tcp(t->host, t->port, addr, sizeof(addr), why, len) != 0)
            return -1;
        snprintf(rl->target, sizeof(rl->target), strchr(addr, ':') ? "[%s]:%u" : "%s:%u", addr,
                 t->port);
        rc = reactor_connect_tcp(m->r, addr, (uint16_t)t->port, NULL, NULL, RELAY_DIAL_MS,
                                 on_dialed, rl);
    }
    if (rc != 0) {
        snprintf(why, len, "connect %s: %s", rl->target,
                 rc == REACTOR_ERR_ADDR ? "unusable address" : strerror(errno));
        return -1;
    }
    return 0;
}

void sup_relays_open(struct sup_relays *m, const Openshell__V1__RelayOpen *ro)
{
    const char *id = ro->channel_id != NULL ? ro->channel_id : "";
    struct relay *rl;
    char why[256];

    if (id[0] == '\0') {
        log_warn("supervisor.relay_open_invalid", LF_STR("reason", "empty channel_id"));
        return;
    }
    if (find(m, id) != NULL) {
        log_debug("supervisor.relay_open_duplicate", LF_STR("channel_id", id));
        return;
    }
    rl = gw_xcalloc(1, sizeof(*rl));
    rl->m = m;
    rl->fd = -1;
    rl->state = RELAY_DIALING;
    rl->channel_id = gw_xstrdup(id);
    LIST_INSERT_HEAD(&m->relays, rl, link);
    m->n++;
    if (ro->target_case == OPENSHELL__V1__RELAY_OPEN__TARGET_TCP && ro->tcp == NULL) {
        snprintf(why, sizeof(why), "relay target tcp without host and port");
    } else if (dial(m, rl, ro, why, sizeof(why)) == 0) {
        return;
    }
    log_warn("supervisor.relay_target_failed", LF_STR("channel_id", id),
             LF_STR("target", rl->target), LF_STR("error", why));
    report(m, id, why);
    relay_free(rl);
}

/* ---- manager ------------------------------------------------------------------------ */

struct sup_relays *sup_relays_new(struct reactor *r, const struct sup_relays_opts *o)
{
    struct sup_relays *m = gw_xcalloc(1, sizeof(*m));

    m->r = r;
    m->ssh_socket = gw_xstrdup(o->ssh_socket);
    m->on_result = o->on_result;
    m->channel = o->channel;
    m->arg = o->arg;
    LIST_INIT(&m->relays);
    return m;
}

void sup_relays_free(struct sup_relays *m)
{
    struct relay *rl;

    if (m == NULL)
        return;
    while ((rl = LIST_FIRST(&m->relays)) != NULL) {
        LIST_REMOVE(rl, link);
        rl->m = NULL;
        if (rl->state == RELAY_DIALING)
            continue; /* on_dialed frees it */
        relay_close(rl, NULL);
        if (rl->depth == 0)
            relay_free(rl);
    }
    free(m->ssh_socket);
    free(m);
}

unsigned sup_relays_active(const struct sup_relays *m)
{
    return m->n;
}
