#include "http2/h2.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <unistd.h>

#include "http2/http2_int.h"

/* Connection states, forward only. */
enum h2_conn_state {
    H2_CONN_OPEN,     /* serving */
    H2_CONN_DRAINING, /* GOAWAY sent or being sent: no new streams */
    H2_CONN_CLOSING,  /* torn down; freed when the outermost callback returns */
};

struct h2_conn {
    nghttp2_session *ngh;
    struct bufferevent *bev;
    struct event_base *base;
    struct event *flush_ev;     /* deferred "wants write": one flush per iteration */
    struct event *keepalive_ev; /* periodic keepalive tick */
    struct event *goaway_ev;    /* second GOAWAY step */
    const struct h2_stream_ops *ops;
    void *conn_arg;
    void (*on_conn_close)(struct h2_conn *c, void *conn_arg);
    enum h2_role role;
    enum h2_conn_state state;
    struct h2_stream streams; /* list head (sentinel) */
    unsigned nstreams;
    size_t out_high_water;
    uint32_t max_header_list;
    uint32_t keepalive_ms, keepalive_timeout_ms;
    uint64_t last_read_us, ping_sent_us;
    bool ping_outstanding;
    bool goaway_final; /* the second GOAWAY was submitted */
    bool flush_scheduled;
    int plain;          /* plain socket (read directly): -1 unknown yet, 0 no, 1 yes */
    bool write_blocked; /* send stopped at the high-water mark */
    int depth;          /* nesting of our own callbacks: free is deferred while > 0 */
    uint64_t conn_id;
    char peer[96];
};

static void conn_free(struct h2_conn *c);
static void conn_flush(struct h2_conn *c);

/* Second GOAWAY step: the last stream id we will process. */
static void send_final_goaway(struct h2_conn *c)
{
    int32_t last = nghttp2_session_get_last_proc_stream_id(c->ngh);
    c->goaway_final = true;
    nghttp2_submit_goaway(c->ngh, NGHTTP2_FLAG_NONE, last, NGHTTP2_NO_ERROR, NULL, 0);
    h2_conn_schedule_flush(c);
}

/* ---- stream list -------------------------------------------------------- */

static void stream_link(struct h2_conn *c, struct h2_stream *st)
{
    st->conn = c;
    st->_next = c->streams._next;
    st->_prev = &c->streams;
    c->streams._next->_prev = st;
    c->streams._next = st;
    c->nstreams++;
}

static void stream_unlink(struct h2_conn *c, struct h2_stream *st)
{
    if (st->_next == NULL)
        return;
    st->_prev->_next = st->_next;
    st->_next->_prev = st->_prev;
    st->_next = st->_prev = NULL;
    c->nstreams--;
}

#define H2_MAX_SINGLE_IO (256 * 1024) /* bytes per read() / write() of one socket event */

static struct h2_stream *stream_get(struct h2_conn *c, int32_t id)
{
    return nghttp2_session_get_stream_user_data(c->ngh, id);
}

/* ---- nghttp2 callbacks ---------------------------------------------------- */

/* Frames other than DATA payloads are copied into the socket's output
 * buffer; above the high-water mark we stop and resume from the write
 * callback, so a peer that does not read cannot grow our memory. */
static ssize_t send_cb(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *arg)
{
    struct h2_conn *c = arg;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (evbuffer_get_length(out) >= c->out_high_water) {
        c->write_blocked = true;
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    if (evbuffer_add(out, data, len) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return (ssize_t)len;
}

static int send_data_cb(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *src, void *arg)
{
    struct h2_conn *c = arg;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    struct h2_stream *st = stream_get(c, frame->hd.stream_id);
    if (evbuffer_get_length(out) >= c->out_high_water) {
        c->write_blocked = true;
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    if (st == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (evbuffer_add(out, framehd, 9) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (length > 0 && c->ops->on_send_data(st, out, length) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
}

static ssize_t read_cb(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len,
                       uint32_t *data_flags, nghttp2_data_source *src, void *arg)
{
    struct h2_conn *c = arg;
    struct h2_stream *st = stream_get(c, id);
    if (st == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    ssize_t n = c->ops->on_read_length(st, len, data_flags);
    if (n == H2_DEFER)
        return NGHTTP2_ERR_DEFERRED;
    if (n < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    return n;
}

static enum h2_headers_kind headers_kind(struct h2_conn *c, const nghttp2_frame *f)
{
    if (c->role == H2_SERVER)
        return f->headers.cat == NGHTTP2_HCAT_REQUEST ? H2_HEADERS_REQUEST : H2_HEADERS_TRAILERS;
    return f->headers.cat == NGHTTP2_HCAT_RESPONSE ? H2_HEADERS_RESPONSE : H2_HEADERS_TRAILERS;
}

static int begin_headers_cb(nghttp2_session *s, const nghttp2_frame *f, void *arg)
{
    struct h2_conn *c = arg;
    if (f->hd.type != NGHTTP2_HEADERS || c->role != H2_SERVER ||
        f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    /* While DRAINING, streams the peer opened before it saw our final GOAWAY
     * are still served; nghttp2 itself refuses those above last_stream_id. */
    struct h2_stream *st = c->ops->on_begin(c, f->hd.stream_id, c->conn_arg);
    if (st == NULL) {
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_REFUSED_STREAM);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    st->id = f->hd.stream_id;
    st->_hdr_bytes = 0;
    st->_unconsumed = 0;
    stream_link(c, st);
    nghttp2_session_set_stream_user_data(s, f->hd.stream_id, st);
    return 0;
}

static int header_cb(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *arg)
{
    struct h2_conn *c = arg;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct h2_stream *st = stream_get(c, f->hd.stream_id);
    if (st == NULL)
        return 0;
    /* RFC 9113 §6.5.2 accounting: name + value + 32 per field. */
    st->_hdr_bytes += (uint32_t)(namelen + valuelen + 32);
    if (st->_hdr_bytes > c->max_header_list) {
        log_debug("h2.header_list_too_large", LF_UINT("conn", c->conn_id),
                  LF_INT("stream", f->hd.stream_id), LF_UINT("bytes", st->_hdr_bytes));
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (c->ops->on_header(st, headers_kind(c, f), name, namelen, value, valuelen) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static int data_chunk_cb(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *arg)
{
    struct h2_conn *c = arg;
    struct h2_stream *st = stream_get(c, id);
    if (st == NULL) {
        /* Nobody will consume it: give the connection window back now. */
        nghttp2_session_consume_connection(s, len);
        return 0;
    }
    st->_unconsumed += (uint32_t)len;
    if (c->ops->on_data(st, data, len) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static int frame_recv_cb(nghttp2_session *s, const nghttp2_frame *f, void *arg)
{
    struct h2_conn *c = arg;
    struct h2_stream *st;
    bool eos = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;

    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        st = stream_get(c, f->hd.stream_id);
        if (st != NULL && c->ops->on_headers_done(st, headers_kind(c, f), eos) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        break;
    case NGHTTP2_DATA:
        st = stream_get(c, f->hd.stream_id);
        if (st != NULL && eos && c->ops->on_end_stream(st) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        break;
    case NGHTTP2_PING:
        if (f->hd.flags & NGHTTP2_FLAG_ACK) {
            c->ping_outstanding = false;
            /* The peer answered the PING sent with the shutdown notice, so
             * every request it sent before seeing the notice has arrived. */
            if (c->state == H2_CONN_DRAINING && c->role == H2_SERVER && !c->goaway_final)
                send_final_goaway(c);
        }
        break;
    default:
        break;
    }
    return 0;
}

static int stream_close_cb(nghttp2_session *s, int32_t id, uint32_t error_code, void *arg)
{
    struct h2_conn *c = arg;
    struct h2_stream *st = stream_get(c, id);
    if (st == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(s, id, NULL);
    stream_unlink(c, st);
    if (st->_unconsumed > 0)
        nghttp2_session_consume_connection(s, st->_unconsumed);
    st->_unconsumed = 0;
    c->ops->on_close(st, error_code);
    return 0;
}

static nghttp2_session_callbacks *make_callbacks(void)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return NULL;
    nghttp2_session_callbacks_set_send_callback(cbs, send_cb);
    nghttp2_session_callbacks_set_send_data_callback(cbs, send_data_cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, begin_headers_cb);
    nghttp2_session_callbacks_set_on_header_callback(cbs, header_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, data_chunk_cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, frame_recv_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, stream_close_cb);
    return cbs;
}

/* The abuse limits listed in docs/http2-limits.md. */
static nghttp2_option *make_options(const struct h2_conn_opts *o)
{
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0)
        return NULL;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_reserved_remote_streams(opt, 0);
    nghttp2_option_set_max_send_header_block_length(opt, 64 * 1024);
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_max_continuations(opt, 8);
    /* Rapid reset (CVE-2023-44487): a burst of 1000, then 33 per second. */
    nghttp2_option_set_stream_reset_rate_limit(opt, 1000, 33);
    if (o->role == H2_CLIENT)
        nghttp2_option_set_peer_max_concurrent_streams(opt, 100);
    return opt;
}

/* ---- I/O pump -------------------------------------------------------------- */

static void conn_enter(struct h2_conn *c)
{
    c->depth++;
}

/* Leaves a callback; frees the connection if it was closed inside. */
static void conn_leave(struct h2_conn *c)
{
    if (--c->depth == 0 && c->state == H2_CONN_CLOSING)
        conn_free(c);
}

static void conn_fail(struct h2_conn *c, const char *why, int rv)
{
    log_debug("h2.conn_error", LF_UINT("conn", c->conn_id), LF_STR("peer", c->peer),
              LF_STR("reason", why), LF_STR("detail", rv ? nghttp2_strerror(rv) : ""));
    h2_conn_close(c);
}

static void conn_flush(struct h2_conn *c)
{
    if (c->state == H2_CONN_CLOSING)
        return;
    c->write_blocked = false;
    int rv = nghttp2_session_send(c->ngh);
    if (rv != 0) {
        conn_fail(c, "send", rv);
        return;
    }
    if (!nghttp2_session_want_read(c->ngh) && !nghttp2_session_want_write(c->ngh) &&
        evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        h2_conn_close(c);
}

static void read_input(struct h2_conn *c, struct evbuffer *in)
{
    struct evbuffer_iovec v[16];
    while (c->state != H2_CONN_CLOSING && evbuffer_get_length(in) > 0) {
        int n = evbuffer_peek(in, -1, NULL, v, 16);
        if (n > 16)
            n = 16;
        size_t total = 0;
        for (int i = 0; i < n; i++) {
            ssize_t r = nghttp2_session_mem_recv(c->ngh, v[i].iov_base, v[i].iov_len);
            if (r < 0) {
                evbuffer_drain(in, total);
                conn_fail(c, "recv", (int)r);
                return;
            }
            total += (size_t)r;
            if (c->state == H2_CONN_CLOSING)
                break;
        }
        evbuffer_drain(in, total);
    }
}

/* libevent 2.1's socket bufferevent reads at most 4 KiB per readiness
 * event (evbuffer_read caps at EVBUFFER_MAX_READ whatever the socket
 * holds), which paces a bulk stream at 4 KiB per loop iteration. On a
 * plain socket, keep reading here into one buffer and hand it straight to
 * nghttp2, up to H2_READ_BUDGET per event so other connections get their
 * turn. TLS connections keep libevent's path (the bytes are records). */
#define H2_READ_BUDGET (1024 * 1024)

static void read_socket_more(struct h2_conn *c)
{
    static uint8_t buf[H2_MAX_SINGLE_IO];
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd < 0 || c->plain == 0)
        return;
    if (c->plain < 0) {
        c->plain = bufferevent_get_underlying(c->bev) == NULL &&
                           bufferevent_openssl_get_ssl(c->bev) == NULL
                       ? 1
                       : 0;
        if (c->plain == 0)
            return;
    }
    size_t budget = H2_READ_BUDGET;
    while (budget > 0 && c->state != H2_CONN_CLOSING && !c->write_blocked) {
        ssize_t n = read(fd, buf, GW_MIN(sizeof(buf), budget));
        if (n <= 0)
            return; /* EAGAIN, EOF or an error: libevent's next read reports it */
        size_t off = 0;
        while (off < (size_t)n && c->state != H2_CONN_CLOSING) {
            ssize_t r = nghttp2_session_mem_recv(c->ngh, buf + off, (size_t)n - off);
            if (r < 0) {
                conn_fail(c, "recv", (int)r);
                return;
            }
            off += (size_t)r;
        }
        budget -= (size_t)n;
        if ((size_t)n < sizeof(buf))
            return; /* drained */
        conn_flush(c);
    }
}

static void bev_read_cb(struct bufferevent *bev, void *arg)
{
    struct h2_conn *c = arg;
    conn_enter(c);
    c->last_read_us = gw_now_mono_us();
    read_input(c, bufferevent_get_input(bev));
    read_socket_more(c);
    conn_flush(c);
    /* A peer that sends while not reading our answers waits until it does. */
    if (c->state != H2_CONN_CLOSING && c->write_blocked)
        bufferevent_disable(c->bev, EV_READ);
    conn_leave(c);
}

static void bev_write_cb(struct bufferevent *bev, void *arg)
{
    struct h2_conn *c = arg;
    conn_enter(c);
    bool was_blocked = c->write_blocked;
    conn_flush(c);
    if (c->state != H2_CONN_CLOSING && !c->write_blocked) {
        bufferevent_enable(c->bev, EV_READ);
        if (was_blocked && c->ops->on_conn_writable != NULL)
            c->ops->on_conn_writable(c, c->conn_arg);
    }
    conn_leave(c);
}

static void bev_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct h2_conn *c = arg;
    conn_enter(c);
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        log_debug("h2.conn_closed", LF_UINT("conn", c->conn_id), LF_STR("peer", c->peer),
                  LF_BOOL("eof", (what & BEV_EVENT_EOF) != 0),
                  LF_STR("error", (what & BEV_EVENT_ERROR) ? strerror(errno) : ""));
        h2_conn_close(c);
    }
    conn_leave(c);
}

static void flush_ev_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2_conn *c = arg;
    conn_enter(c);
    c->flush_scheduled = false;
    conn_flush(c);
    conn_leave(c);
}

static void keepalive_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2_conn *c = arg;
    uint64_t now = gw_clock_mono_us();
    conn_enter(c);
    if (c->ping_outstanding) {
        if (now - c->ping_sent_us > (uint64_t)c->keepalive_timeout_ms * 1000) {
            log_info("h2.keepalive_timeout", LF_UINT("conn", c->conn_id), LF_STR("peer", c->peer));
            h2_conn_close(c);
        }
    } else if (now - c->last_read_us >= (uint64_t)c->keepalive_ms * 1000) {
        if (nghttp2_submit_ping(c->ngh, NGHTTP2_FLAG_NONE, NULL) == 0) {
            c->ping_outstanding = true;
            c->ping_sent_us = now;
            conn_flush(c);
        }
    }
    conn_leave(c);
}

static void goaway_final_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2_conn *c = arg;
    conn_enter(c);
    if (c->state == H2_CONN_DRAINING && !c->goaway_final) {
        send_final_goaway(c);
        conn_flush(c);
    }
    conn_leave(c);
}

/* ---- public ---------------------------------------------------------------- */

static int session_create(struct h2_conn *c, const struct h2_conn_opts *o)
{
    nghttp2_session_callbacks *cbs = make_callbacks();
    nghttp2_option *opt = make_options(o);
    int rv = -1;
    if (cbs == NULL || opt == NULL)
        goto out;
    if (o->role == H2_SERVER)
        rv = nghttp2_session_server_new2(&c->ngh, cbs, c, opt);
    else
        rv = nghttp2_session_client_new2(&c->ngh, cbs, c, opt);
out:
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    return rv;
}

static int send_settings(struct h2_conn *c, const struct h2_conn_opts *o)
{
    uint32_t window = o->initial_window_size ? o->initial_window_size : 1024 * 1024;
    uint32_t conn_window = o->conn_window_size ? o->conn_window_size : 16 * 1024 * 1024;
    nghttp2_settings_entry iv[4];
    size_t n = 0;
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, c->max_header_list};
    if (o->role == H2_SERVER) {
        uint32_t mcs = o->max_concurrent_streams ? o->max_concurrent_streams : 256;
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, mcs};
    } else {
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
    }
    if (nghttp2_submit_settings(c->ngh, NGHTTP2_FLAG_NONE, iv, n) != 0)
        return -1;
    return nghttp2_session_set_local_window_size(c->ngh, NGHTTP2_FLAG_NONE, 0,
                                                 (int32_t)conn_window);
}

struct h2_conn *h2_conn_new(struct event_base *base, struct bufferevent *bev,
                            const struct h2_conn_opts *o)
{
    struct h2_conn *c = gw_xcalloc(1, sizeof(*c));
    c->bev = bev;
    c->base = base;
    c->ops = o->ops;
    c->conn_arg = o->conn_arg;
    c->on_conn_close = o->on_conn_close;
    c->role = o->role;
    c->streams._next = c->streams._prev = &c->streams;
    c->out_high_water = o->out_high_water ? o->out_high_water : 1024 * 1024;
    c->max_header_list = o->max_header_list_size ? o->max_header_list_size : 16 * 1024;
    c->keepalive_ms = o->keepalive_ms;
    c->keepalive_timeout_ms = o->keepalive_timeout_ms ? o->keepalive_timeout_ms : 20000;
    c->conn_id = o->conn_id;
    c->last_read_us = gw_clock_mono_us();
    c->plain = -1;
    snprintf(c->peer, sizeof(c->peer), "%s", o->peer ? o->peer : "");

    if (session_create(c, o) != 0)
        goto fail_session;
    if (send_settings(c, o) != 0)
        goto fail_settings;
    c->flush_ev = event_new(base, -1, 0, flush_ev_cb, c);
    c->goaway_ev = evtimer_new(base, goaway_final_cb, c);
    if (c->keepalive_ms > 0) {
        struct timeval tv = {c->keepalive_ms / 1000 / 2, (c->keepalive_ms / 2 % 1000) * 1000};
        if (tv.tv_sec == 0 && tv.tv_usec == 0)
            tv.tv_usec = 1000;
        c->keepalive_ev = event_new(base, -1, EV_PERSIST, keepalive_cb, c);
        event_add(c->keepalive_ev, &tv);
    }
    bufferevent_setcb(bev, bev_read_cb, bev_write_cb, bev_event_cb, c);
    bufferevent_setwatermark(bev, EV_WRITE, c->out_high_water / 2, 0);
    /* libevent moves at most 16 KiB per socket event by default, which
     * caps a bulk stream at 16 KiB per loop iteration; relays need more. */
    (void)bufferevent_set_max_single_read(bev, H2_MAX_SINGLE_IO);
    (void)bufferevent_set_max_single_write(bev, H2_MAX_SINGLE_IO);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    conn_enter(c);
    conn_flush(c);
    /* Bytes that arrived with the TLS handshake are already buffered. */
    if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        read_input(c, bufferevent_get_input(bev)), conn_flush(c);
    conn_leave(c);
    return c;

fail_settings:
    nghttp2_session_del(c->ngh);
fail_session:
    bufferevent_free(bev);
    free(c);
    return NULL;
}

void h2_conn_schedule_flush(struct h2_conn *c)
{
    if (c->flush_scheduled || c->state == H2_CONN_CLOSING)
        return;
    c->flush_scheduled = true;
    event_active(c->flush_ev, EV_WRITE, 0);
}

void h2_conn_resume_stream(struct h2_conn *c, int32_t stream_id)
{
    if (c->state == H2_CONN_CLOSING)
        return;
    nghttp2_session_resume_data(c->ngh, stream_id);
    h2_conn_schedule_flush(c);
}

void h2_conn_consume(struct h2_conn *c, struct h2_stream *st, size_t n)
{
    if (c->state == H2_CONN_CLOSING || n == 0)
        return;
    GW_ASSERT(n <= st->_unconsumed);
    st->_unconsumed -= (uint32_t)n;
    if (st->_next != NULL)
        nghttp2_session_consume(c->ngh, st->id, n);
    else
        nghttp2_session_consume_connection(c->ngh, n);
    h2_conn_schedule_flush(c);
}

int h2_conn_submit_response(struct h2_conn *c, int32_t stream_id, const nghttp2_nv *nva,
                            size_t nvlen, bool end_stream)
{
    if (c->state == H2_CONN_CLOSING)
        return H2_ERR_CLOSED;
    nghttp2_data_provider prd = {.source.ptr = NULL, .read_callback = read_cb};
    int rv = nghttp2_submit_response(c->ngh, stream_id, nva, nvlen, end_stream ? NULL : &prd);
    if (rv != 0)
        return H2_ERR_PROTOCOL;
    h2_conn_schedule_flush(c);
    return 0;
}

int h2_conn_submit_trailers(struct h2_conn *c, int32_t stream_id, const nghttp2_nv *nva,
                            size_t nvlen)
{
    if (c->state == H2_CONN_CLOSING)
        return H2_ERR_CLOSED;
    if (nghttp2_submit_trailer(c->ngh, stream_id, nva, nvlen) != 0)
        return H2_ERR_PROTOCOL;
    h2_conn_schedule_flush(c);
    return 0;
}

int h2_conn_submit_request(struct h2_conn *c, const nghttp2_nv *nva, size_t nvlen,
                           struct h2_stream *st)
{
    if (c->state != H2_CONN_OPEN)
        return H2_ERR_CLOSED;
    nghttp2_data_provider prd = {.source.ptr = NULL, .read_callback = read_cb};
    int32_t id = nghttp2_submit_request(c->ngh, NULL, nva, nvlen, &prd, st);
    if (id < 0)
        return id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE ? H2_ERR_CLOSED : H2_ERR_PROTOCOL;
    st->id = id;
    st->_hdr_bytes = 0;
    st->_unconsumed = 0;
    stream_link(c, st);
    h2_conn_schedule_flush(c);
    return 0;
}

void h2_conn_reset_stream(struct h2_conn *c, int32_t stream_id, uint32_t error_code)
{
    if (c->state == H2_CONN_CLOSING)
        return;
    nghttp2_submit_rst_stream(c->ngh, NGHTTP2_FLAG_NONE, stream_id, error_code);
    h2_conn_schedule_flush(c);
}

void h2_conn_forget_stream(struct h2_conn *c, struct h2_stream *st)
{
    if (st->_next == NULL)
        return;
    stream_unlink(c, st);
    if (c->state == H2_CONN_CLOSING)
        return;
    if (st->_unconsumed > 0)
        nghttp2_session_consume_connection(c->ngh, st->_unconsumed);
    st->_unconsumed = 0;
    nghttp2_session_set_stream_user_data(c->ngh, st->id, NULL);
    if (nghttp2_session_find_stream(c->ngh, st->id) != NULL)
        h2_conn_reset_stream(c, st->id, NGHTTP2_CANCEL);
}

void h2_conn_shutdown(struct h2_conn *c)
{
    if (c->state != H2_CONN_OPEN)
        return;
    c->state = H2_CONN_DRAINING;
    if (c->role == H2_SERVER) {
        nghttp2_submit_shutdown_notice(c->ngh);
        /* The final GOAWAY follows one round trip later, so requests already
         * in flight when the notice was sent are still accepted: when the
         * PING sent now is answered, or after 1 s at the latest. */
        if (nghttp2_submit_ping(c->ngh, NGHTTP2_FLAG_NONE, NULL) == 0) {
            c->ping_outstanding = true;
            c->ping_sent_us = gw_clock_mono_us();
        }
        struct timeval tv = {1, 0};
        evtimer_add(c->goaway_ev, &tv);
    } else {
        nghttp2_submit_goaway(c->ngh, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
    }
    h2_conn_schedule_flush(c);
}

void h2_conn_close(struct h2_conn *c)
{
    if (c->state == H2_CONN_CLOSING)
        return;
    c->state = H2_CONN_CLOSING;
    /* Every stream learns it is gone before the connection disappears. */
    while (c->streams._next != &c->streams) {
        struct h2_stream *st = c->streams._next;
        stream_unlink(c, st);
        nghttp2_session_set_stream_user_data(c->ngh, st->id, NULL);
        c->ops->on_close(st, NGHTTP2_CANCEL);
    }
    if (c->depth == 0)
        conn_free(c);
}

static void conn_free(struct h2_conn *c)
{
    if (c->on_conn_close != NULL)
        c->on_conn_close(c, c->conn_arg);
    if (c->keepalive_ev)
        event_free(c->keepalive_ev);
    event_free(c->goaway_ev);
    event_free(c->flush_ev);
    bufferevent_free(c->bev);
    nghttp2_session_del(c->ngh);
    free(c);
}

bool h2_conn_is_closing(const struct h2_conn *c)
{
    return c->state != H2_CONN_OPEN;
}

unsigned h2_conn_stream_count(const struct h2_conn *c)
{
    return c->nstreams;
}

size_t h2_conn_out_pending(const struct h2_conn *c)
{
    return evbuffer_get_length(bufferevent_get_output(c->bev));
}

bool h2_conn_out_congested(const struct h2_conn *c)
{
    return c->write_blocked || h2_conn_out_pending(c) >= c->out_high_water;
}

uint64_t h2_conn_id(const struct h2_conn *c)
{
    return c->conn_id;
}

const char *h2_conn_peer(const struct h2_conn *c)
{
    return c->peer;
}

void *h2_conn_arg(const struct h2_conn *c)
{
    return c->conn_arg;
}

struct event_base *h2_conn_base(const struct h2_conn *c)
{
    return c->base;
}
