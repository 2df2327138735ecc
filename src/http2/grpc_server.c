/* gRPC server: HTTP/2 streams become calls dispatched through the method
 * table. The gRPC over HTTP/2 protocol document is the reference for the
 * header and trailer rules applied here. */
#include "http2/grpc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "http2/http2_int.h"

#define METHOD_SLOTS 256 /* open addressing, power of two */

struct sconn {
    struct grpc_server *srv;
    struct h2_conn *h2;
    struct sconn *prev, *next;
    void *info;
};

/* Call states, forward only. */
enum call_state {
    CALL_HEADERS, /* receiving request headers */
    CALL_ACTIVE,  /* dispatched: the handler owns finishing it */
    CALL_FINISHED /* status decided; waiting for the stream to close */
};

struct grpc_call {
    struct h2_stream st; /* first: h2 hands us back this pointer */
    struct sconn *conn;
    struct grpc_server *srv;
    const struct grpc_method *method;
    enum call_state state;
    bool bad_method;       /* :method is not POST */
    bool bad_content_type; /* content-type is not application/grpc* */
    bool eof_in;           /* client half-closed */
    bool half_close_done;  /* on_half_close delivered (or unary dispatched) */
    bool paused;
    bool congested;
    bool deferred;      /* nghttp2 waits for output (H2_DEFER) */
    bool headers_sent;  /* response headers submitted */
    bool finish_queued; /* trailers go out once |out| drains */
    int status;
    const char *status_msg; /* arena copy */
    const char *path;
    const char *timeout;
    const char *encoding;
    unsigned nmsgs;
    void *unary_msg;
    size_t msg_wire_len; /* serialized length of the message being delivered, 0 = unknown */
    struct hdr_list hdrs;
    struct grpc_deframer deframer;
    struct evbuffer *in;  /* received bytes held back while paused */
    struct evbuffer *out; /* framed response bytes not yet handed to nghttp2 */
    struct event *deadline_ev;
    uint64_t deadline_us;
    uint64_t start_us;
    void *user, *auth;
    struct grpc_call *wprev, *wnext; /* on srv->writable list */
    bool on_wlist;
    ProtobufCAllocator alloc;
    struct arena scratch; /* released after every handler callback */
    bool alloc_scratch;   /* grpc_call_alloc/strdup use |scratch| (grpc_call_scratch_begin) */
    ProtobufCAllocator scratch_alloc;
    struct gw_buf tbuf;
    char status_text[12];
    struct arena arena;
    unsigned char arena_buf[768];
};

struct grpc_server {
    struct event_base *base;
    struct grpc_server_opts opts;
    const struct grpc_method *methods[METHOD_SLOTS];
    grpc_call_start_hook hook;
    void *hook_arg;
    grpc_call_observer observer;
    void *observer_arg;
    struct sconn conns; /* sentinel */
    unsigned nconns, ncalls;
    bool shutting_down;
    struct grpc_call *wlist; /* calls to tell on_writable */
    struct event *writable_ev;
};

static void call_deliver_input(struct grpc_call *call, const uint8_t *data, size_t len);
static void call_finish_internal(struct grpc_call *call, int status, const char *msg);

/* ---- method table -------------------------------------------------------- */

static uint32_t path_hash(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 16777619u;
    return h;
}

int grpc_server_add_method(struct grpc_server *s, const struct grpc_method *m)
{
    size_t n = strlen(m->path);
    uint32_t h = path_hash(m->path, n);
    for (unsigned i = 0; i < METHOD_SLOTS; i++) {
        unsigned slot = (h + i) & (METHOD_SLOTS - 1);
        if (s->methods[slot] == NULL) {
            s->methods[slot] = m;
            return 0;
        }
        if (strcmp(s->methods[slot]->path, m->path) == 0)
            return -1;
    }
    return -1;
}

const struct grpc_method *grpc_server_find_method(const struct grpc_server *s, const char *path,
                                                  size_t n)
{
    uint32_t h = path_hash(path, n);
    for (unsigned i = 0; i < METHOD_SLOTS; i++) {
        const struct grpc_method *m = s->methods[(h + i) & (METHOD_SLOTS - 1)];
        if (m == NULL)
            return NULL;
        if (strncmp(m->path, path, n) == 0 && m->path[n] == '\0')
            return m;
    }
    return NULL;
}

/* ---- writable notifications ------------------------------------------------ */

static void wlist_remove(struct grpc_call *call)
{
    if (!call->on_wlist)
        return;
    if (call->wprev)
        call->wprev->wnext = call->wnext;
    else
        call->srv->wlist = call->wnext;
    if (call->wnext)
        call->wnext->wprev = call->wprev;
    call->wprev = call->wnext = NULL;
    call->on_wlist = false;
}

static void wlist_add(struct grpc_call *call)
{
    if (call->on_wlist)
        return;
    call->on_wlist = true;
    call->wprev = NULL;
    call->wnext = call->srv->wlist;
    if (call->srv->wlist)
        call->srv->wlist->wprev = call;
    call->srv->wlist = call;
    event_active(call->srv->writable_ev, EV_WRITE, 0);
}

/* Runs outside nghttp2 callbacks, so handlers may send freely. */
static void writable_ev_cb(evutil_socket_t fd, short what, void *arg)
{
    struct grpc_server *s = arg;
    while (s->wlist != NULL) {
        struct grpc_call *call = s->wlist;
        wlist_remove(call);
        if (call->state != CALL_ACTIVE || !call->congested)
            continue;
        if (grpc_call_out_pending(call) >= call->srv->opts.call_high_water / 2)
            continue;
        call->congested = false;
        if (call->method->handler->on_writable)
            call->method->handler->on_writable(call);
        arena_release(&call->scratch);
    }
}

/* ---- call lifecycle ------------------------------------------------------------ */

static struct h2_stream *on_begin(struct h2_conn *c, int32_t stream_id, void *conn_arg)
{
    struct sconn *sc = conn_arg;
    struct grpc_call *call = gw_xmalloc(sizeof(*call));
    memset(call, 0, offsetof(struct grpc_call, arena_buf));
    call->conn = sc;
    call->srv = sc->srv;
    call->start_us = gw_now_mono_us();
    arena_init(&call->arena, call->arena_buf, sizeof(call->arena_buf));
    call->arena.pb_budget = GRPC_DECODE_BUDGET(sc->srv->opts.max_recv_msg_bytes);
    arena_pb_allocator(&call->arena, &call->alloc);
    arena_init(&call->scratch, NULL, 0);
    call->scratch.pb_budget = call->arena.pb_budget;
    arena_pb_allocator(&call->scratch, &call->scratch_alloc);
    grpc_deframer_init(&call->deframer, sc->srv->opts.max_recv_msg_bytes);
    call->out = evbuffer_new();
    sc->srv->ncalls++;
    return &call->st;
}

static int on_header(struct h2_stream *st, enum h2_headers_kind kind, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen)
{
    struct grpc_call *call = (struct grpc_call *)st;
    if (kind != H2_HEADERS_REQUEST)
        return 0; /* request trailers carry nothing gRPC needs */
    const char *n = (const char *)name, *v = (const char *)value;
    if (n[0] == ':') {
        if (nlen == 5 && memcmp(n, ":path", 5) == 0)
            call->path = arena_strndup(&call->arena, v, vlen);
        else if (nlen == 7 && memcmp(n, ":method", 7) == 0)
            call->bad_method = !(vlen == 4 && memcmp(v, "POST", 4) == 0);
        return 0;
    }
    if (nlen == 12 && memcmp(n, "content-type", 12) == 0) {
        call->bad_content_type = !(vlen >= 16 && memcmp(v, "application/grpc", 16) == 0 &&
                                   (vlen == 16 || v[16] == '+' || v[16] == ';'));
        return 0;
    }
    if (call->hdrs.n < HDRS_MAX) {
        struct hdr *h = &call->hdrs.items[call->hdrs.n++];
        h->name = arena_strndup(&call->arena, n, nlen);
        h->value = arena_strndup(&call->arena, v, vlen);
        h->value_len = (uint32_t)vlen;
        if (strcmp(h->name, "grpc-timeout") == 0)
            call->timeout = h->value;
        else if (strcmp(h->name, "grpc-encoding") == 0)
            call->encoding = h->value;
    }
    return 0;
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct grpc_call *call = arg;
    if (call->state != CALL_ACTIVE)
        return;
    call_finish_internal(call, GRPC_STATUS_DEADLINE_EXCEEDED, "deadline exceeded");
    if (call->method->handler->on_cancel)
        call->method->handler->on_cancel(call);
}

static int arm_deadline(struct grpc_call *call)
{
    uint64_t us;
    if (call->timeout == NULL)
        return 0;
    if (grpc_timeout_parse(call->timeout, strlen(call->timeout), &us) != 0)
        return -1;
    call->deadline_us = call->start_us + us;
    call->deadline_ev = evtimer_new(call->srv->base, deadline_cb, call);
    struct timeval tv = {(time_t)(us / 1000000), (suseconds_t)(us % 1000000)};
    evtimer_add(call->deadline_ev, &tv);
    return 0;
}

/* Answers a request that never reaches a handler: trailers-only. */
static void reject(struct grpc_call *call, const char *http_status, int status, const char *msg)
{
    nghttp2_nv nva[4] = {MAKE_NV(":status", http_status, strlen(http_status)),
                         MAKE_NV_LIT("content-type", "application/grpc")};
    size_t n = 2 + grpc_trailers_build(nva + 2, status, msg, call->status_text, &call->tbuf);
    call->state = CALL_FINISHED;
    call->status = status;
    call->headers_sent = true;
    if (h2_conn_submit_response(call->conn->h2, call->st.id, nva, n, true) != 0)
        h2_conn_reset_stream(call->conn->h2, call->st.id, NGHTTP2_INTERNAL_ERROR);
}

static void dispatch_headers(struct grpc_call *call)
{
    struct grpc_server *s = call->srv;
    const char *msg = NULL;

    if (call->bad_method) {
        reject(call, "405", GRPC_STATUS_INTERNAL, "gRPC requires the POST method");
        return;
    }
    if (call->bad_content_type) {
        reject(call, "415", GRPC_STATUS_INTERNAL, "content-type must be application/grpc");
        return;
    }
    if (call->path == NULL) {
        reject(call, "200", GRPC_STATUS_INTERNAL, "missing :path");
        return;
    }
    call->method = grpc_server_find_method(s, call->path, strlen(call->path));
    if (call->method == NULL) {
        reject(call, "200", GRPC_STATUS_UNIMPLEMENTED, "unknown method");
        return;
    }
    if (arm_deadline(call) != 0) {
        reject(call, "200", GRPC_STATUS_INTERNAL, "malformed grpc-timeout");
        return;
    }
    if (s->hook != NULL) {
        int st = s->hook(call, call->method, s->hook_arg, &msg);
        if (st != GRPC_STATUS_OK) {
            reject(call, "200", st, msg);
            return;
        }
    }
    call->state = CALL_ACTIVE;
}

static void deliver_half_close(struct grpc_call *call)
{
    const struct grpc_handler *h = call->method->handler;
    call->half_close_done = true;
    if (call->deframer.hdr_have > 0) {
        call_finish_internal(call, GRPC_STATUS_INTERNAL, "truncated request message");
        if (h->on_cancel)
            h->on_cancel(call);
        return;
    }
    if (call->method->kind == GRPC_UNARY || call->method->kind == GRPC_SERVER_STREAM) {
        if (call->nmsgs != 1) {
            call_finish_internal(call, GRPC_STATUS_INTERNAL,
                                 "expected exactly one request message");
            if (h->on_cancel)
                h->on_cancel(call);
            return;
        }
        h->on_message(call, call->unary_msg);
    } else if (h->on_half_close) {
        h->on_half_close(call);
    }
    arena_release(&call->scratch);
}

/* The client half-closed: tell the handler once every held-back byte was
 * delivered (a paused call learns it when resumed). */
static void maybe_half_close(struct grpc_call *call)
{
    if (call->eof_in && call->state == CALL_ACTIVE && !call->paused && !call->half_close_done &&
        (call->in == NULL || evbuffer_get_length(call->in) == 0))
        deliver_half_close(call);
}

static int on_headers_done(struct h2_stream *st, enum h2_headers_kind kind, bool end_stream)
{
    struct grpc_call *call = (struct grpc_call *)st;
    if (kind == H2_HEADERS_REQUEST && call->state == CALL_HEADERS)
        dispatch_headers(call);
    if (end_stream) {
        call->eof_in = true;
        maybe_half_close(call);
    }
    return 0;
}

/* One complete message is in the deframer: decode and hand it over. */
static void deliver_message(struct grpc_call *call)
{
    const struct grpc_method *m = call->method;
    int status;
    const char *err;
    bool single = m->kind == GRPC_UNARY || m->kind == GRPC_SERVER_STREAM;

    call->nmsgs++;
    if (single && call->nmsgs > 1) {
        call_finish_internal(call, GRPC_STATUS_INTERNAL, "expected exactly one request message");
        goto cancel;
    }
    /* Streamed messages decode into the scratch arena, released right
     * after the handler saw them; the single message of a unary call lives
     * as long as the call. Both have a decoding budget. */
    call->msg_wire_len = call->deframer.compressed ? 0 : call->deframer.msg_len;
    void *msg = grpc_payload_decode(&call->deframer, call->encoding, m->request,
                                    single ? &call->alloc : &call->scratch_alloc,
                                    call->srv->opts.max_recv_msg_bytes, &status, &err);
    grpc_deframer_reset_msg(&call->deframer);
    if (msg == NULL) {
        call_finish_internal(call, status, err);
        goto cancel;
    }
    if (single) {
        call->unary_msg = msg;
        return;
    }
    m->handler->on_message(call, msg);
    arena_release(&call->scratch);
    return;
cancel:
    if (m->handler->on_cancel)
        m->handler->on_cancel(call);
}

/* Feeds bytes to the deframer while the call accepts messages. Returns how
 * many bytes were processed (the rest must be held back: paused). */
static size_t feed(struct grpc_call *call, const uint8_t *data, size_t len)
{
    size_t off = 0;
    while (off < len && call->state == CALL_ACTIVE && !call->paused) {
        size_t used;
        int rv = grpc_deframer_feed(&call->deframer, data + off, len - off, &used);
        off += used;
        if (rv == GRPC_DEFRAME_MSG) {
            deliver_message(call);
        } else if (rv == GRPC_DEFRAME_TOOBIG) {
            char msg[96];
            snprintf(msg, sizeof(msg), "received message larger than max (%u vs. %u)",
                     call->deframer.msg_len, call->deframer.max_len);
            call_finish_internal(call, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
            if (call->method->handler->on_cancel)
                call->method->handler->on_cancel(call);
        } else if (rv == GRPC_DEFRAME_BADFLAG) {
            call_finish_internal(call, GRPC_STATUS_INTERNAL, "invalid message compression flag");
            if (call->method->handler->on_cancel)
                call->method->handler->on_cancel(call);
        }
    }
    if (call->state != CALL_ACTIVE)
        off = len; /* a finished call drops what is left */
    return off;
}

static void call_deliver_input(struct grpc_call *call, const uint8_t *data, size_t len)
{
    size_t used = feed(call, data, len);
    h2_conn_consume(call->conn->h2, &call->st, used);
    if (used < len) {
        if (call->in == NULL)
            call->in = evbuffer_new();
        evbuffer_add(call->in, data + used, len - used);
    }
}

static int on_data(struct h2_stream *st, const uint8_t *data, size_t len)
{
    struct grpc_call *call = (struct grpc_call *)st;
    if (call->state != CALL_ACTIVE) {
        h2_conn_consume(call->conn->h2, st, len);
        return 0;
    }
    if (call->paused || (call->in != NULL && evbuffer_get_length(call->in) > 0)) {
        if (call->in == NULL)
            call->in = evbuffer_new();
        evbuffer_add(call->in, data, len);
        return 0;
    }
    call_deliver_input(call, data, len);
    return 0;
}

static int on_end_stream(struct h2_stream *st)
{
    struct grpc_call *call = (struct grpc_call *)st;
    call->eof_in = true;
    maybe_half_close(call);
    return 0;
}

static void call_free(struct grpc_call *call)
{
    wlist_remove(call);
    if (call->deadline_ev)
        event_free(call->deadline_ev);
    if (call->in)
        evbuffer_free(call->in);
    evbuffer_free(call->out);
    grpc_deframer_free(&call->deframer);
    gw_buf_free(&call->tbuf);
    arena_release(&call->scratch);
    arena_release(&call->arena);
    call->srv->ncalls--;
    free(call);
}

static void on_close(struct h2_stream *st, uint32_t error_code)
{
    struct grpc_call *call = (struct grpc_call *)st;
    if (call->state == CALL_ACTIVE) {
        call->state = CALL_FINISHED;
        call->status = GRPC_STATUS_CANCELLED;
        if (call->method->handler->on_cancel)
            call->method->handler->on_cancel(call);
    }
    if (call->srv->observer != NULL)
        call->srv->observer(call->method,
                            call->state == CALL_HEADERS ? GRPC_STATUS_CANCELLED : call->status,
                            gw_clock_mono_us() - call->start_us, call->srv->observer_arg);
    if (log_enabled(LOG_DEBUG)) {
        double ms = (double)(gw_clock_mono_us() - call->start_us) / 1000.0;
        log_debug("grpc.call", LF_STR("method", call->path), LF_INT("status", call->status),
                  LF_DBL("dur_ms", ms), LF_UINT("conn", h2_conn_id(call->conn->h2)),
                  LF_UINT("h2_error", error_code));
    }
    call_free(call);
}

static ssize_t on_read_length(struct h2_stream *st, size_t max, uint32_t *flags)
{
    struct grpc_call *call = (struct grpc_call *)st;
    size_t len = evbuffer_get_length(call->out);
    if (len > 0)
        return (ssize_t)GW_MIN(len, max);
    if (!call->finish_queued) {
        call->deferred = true;
        return H2_DEFER;
    }
    nghttp2_nv nva[2];
    size_t n =
        grpc_trailers_build(nva, call->status, call->status_msg, call->status_text, &call->tbuf);
    if (h2_conn_submit_trailers(call->conn->h2, st->id, nva, n) != 0)
        return -1;
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    return 0;
}

static int on_send_data(struct h2_stream *st, struct evbuffer *out, size_t len)
{
    struct grpc_call *call = (struct grpc_call *)st;
    if (evbuffer_remove_buffer(call->out, out, len) != (int)len)
        return -1;
    if (call->congested && evbuffer_get_length(call->out) < call->srv->opts.call_high_water / 2)
        wlist_add(call);
    return 0;
}

static const struct h2_stream_ops server_ops = {
    .on_begin = on_begin,
    .on_header = on_header,
    .on_headers_done = on_headers_done,
    .on_data = on_data,
    .on_end_stream = on_end_stream,
    .on_close = on_close,
    .on_read_length = on_read_length,
    .on_send_data = on_send_data,
};

/* ---- server ------------------------------------------------------------------ */

struct grpc_server *grpc_server_new(struct event_base *base, const struct grpc_server_opts *o)
{
    struct grpc_server *s = gw_xcalloc(1, sizeof(*s));
    s->base = base;
    s->opts = *o;
    if (!s->opts.max_recv_msg_bytes)
        s->opts.max_recv_msg_bytes = 4 * 1024 * 1024;
    if (!s->opts.max_send_msg_bytes)
        s->opts.max_send_msg_bytes = 4 * 1024 * 1024;
    if (!s->opts.max_concurrent_streams)
        s->opts.max_concurrent_streams = 256;
    if (!s->opts.max_header_list_size)
        s->opts.max_header_list_size = 16 * 1024;
    if (!s->opts.call_high_water)
        s->opts.call_high_water = 256 * 1024;
    if (!s->opts.call_hard_cap)
        s->opts.call_hard_cap = 8 * 1024 * 1024;
    if (!s->opts.keepalive_ms)
        s->opts.keepalive_ms = 60000;
    s->conns.next = s->conns.prev = &s->conns;
    s->writable_ev = event_new(base, -1, 0, writable_ev_cb, s);
    return s;
}

void grpc_server_free(struct grpc_server *s)
{
    if (s == NULL)
        return;
    grpc_server_close_all(s);
    event_free(s->writable_ev);
    free(s);
}

void grpc_server_set_call_start_hook(struct grpc_server *s, grpc_call_start_hook hook, void *arg)
{
    s->hook = hook;
    s->hook_arg = arg;
}

void grpc_server_set_observer(struct grpc_server *s, grpc_call_observer fn, void *arg)
{
    s->observer = fn;
    s->observer_arg = arg;
}

static void on_conn_close(struct h2_conn *c, void *arg)
{
    struct sconn *sc = arg;
    sc->prev->next = sc->next;
    sc->next->prev = sc->prev;
    sc->srv->nconns--;
    free(sc->info);
    free(sc);
}

int grpc_server_attach(struct grpc_server *s, struct bufferevent *bev, uint64_t conn_id,
                       const char *peer, const void *conn_info, size_t conn_info_size)
{
    struct sconn *sc = gw_xcalloc(1, sizeof(*sc));
    sc->srv = s;
    if (conn_info_size > 0) {
        sc->info = gw_xmalloc(conn_info_size);
        memcpy(sc->info, conn_info, conn_info_size);
    }
    struct h2_conn_opts o = {
        .role = H2_SERVER,
        .ops = &server_ops,
        .conn_arg = sc,
        .max_concurrent_streams = s->opts.max_concurrent_streams,
        .max_header_list_size = s->opts.max_header_list_size,
        .keepalive_ms = s->opts.keepalive_ms == UINT32_MAX ? 0 : s->opts.keepalive_ms,
        .on_conn_close = on_conn_close,
        .conn_id = conn_id,
        .peer = peer,
    };
    sc->next = s->conns.next;
    sc->prev = &s->conns;
    s->conns.next->prev = sc;
    s->conns.next = sc;
    s->nconns++;
    sc->h2 = h2_conn_new(s->base, bev, &o);
    if (sc->h2 == NULL) {
        on_conn_close(NULL, sc);
        return -1;
    }
    if (s->shutting_down)
        h2_conn_shutdown(sc->h2);
    return 0;
}

void grpc_server_shutdown(struct grpc_server *s)
{
    s->shutting_down = true;
    for (struct sconn *sc = s->conns.next; sc != &s->conns; sc = sc->next)
        h2_conn_shutdown(sc->h2);
}

void grpc_server_close_all(struct grpc_server *s)
{
    while (s->conns.next != &s->conns)
        h2_conn_close(s->conns.next->h2);
}

unsigned grpc_server_active_calls(const struct grpc_server *s)
{
    return s->ncalls;
}

unsigned grpc_server_connections(const struct grpc_server *s)
{
    return s->nconns;
}

/* ---- call API ------------------------------------------------------------------ */

static int send_headers(struct grpc_call *call)
{
    static const nghttp2_nv nva[] = {
        MAKE_NV_LIT(":status", "200"),
        MAKE_NV_LIT("content-type", "application/grpc"),
        MAKE_NV_LIT("grpc-accept-encoding", "identity,gzip"),
    };
    call->headers_sent = true;
    return h2_conn_submit_response(call->conn->h2, call->st.id, nva, GW_ARRAY_LEN(nva), false);
}

static void kick(struct grpc_call *call)
{
    if (call->deferred) {
        call->deferred = false;
        h2_conn_resume_stream(call->conn->h2, call->st.id);
    }
}

static int after_queue(struct grpc_call *call)
{
    size_t pending = evbuffer_get_length(call->out);
    kick(call);
    if (pending > call->srv->opts.call_hard_cap) {
        call_finish_internal(call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                             "server-side output buffer overrun");
        return GRPC_ERR_OVERRUN;
    }
    if (pending >= call->srv->opts.call_high_water) {
        call->congested = true;
        return GRPC_SEND_FULL;
    }
    return GRPC_SEND_OK;
}

int grpc_call_send(struct grpc_call *call, const ProtobufCMessage *msg)
{
    if (call->state != CALL_ACTIVE)
        return GRPC_ERR_CLOSED;
    if (!call->headers_sent && send_headers(call) != 0)
        return GRPC_ERR_CLOSED;
    if (grpc_frame_pack(call->out, msg, call->srv->opts.max_send_msg_bytes) == 0)
        return GRPC_ERR_TOOBIG;
    return after_queue(call);
}

int grpc_call_send_raw(struct grpc_call *call, const uint8_t *data, size_t len)
{
    if (call->state != CALL_ACTIVE)
        return GRPC_ERR_CLOSED;
    if (!call->headers_sent && send_headers(call) != 0)
        return GRPC_ERR_CLOSED;
    if (grpc_frame_pack_raw(call->out, data, len, call->srv->opts.max_send_msg_bytes) == 0)
        return GRPC_ERR_TOOBIG;
    return after_queue(call);
}

int grpc_call_send_parts(struct grpc_call *call, const uint8_t *head, size_t head_len,
                         const uint8_t *body, size_t body_len)
{
    uint8_t pre[5];
    size_t len = head_len + body_len;
    if (call->state != CALL_ACTIVE)
        return GRPC_ERR_CLOSED;
    if (!call->headers_sent && send_headers(call) != 0)
        return GRPC_ERR_CLOSED;
    if (len > call->srv->opts.max_send_msg_bytes)
        return GRPC_ERR_TOOBIG;
    grpc_frame_prefix(pre, (uint32_t)len);
    evbuffer_add(call->out, pre, sizeof(pre));
    evbuffer_add(call->out, head, head_len);
    if (body_len > 0)
        evbuffer_add(call->out, body, body_len);
    return after_queue(call);
}

static void call_finish_internal(struct grpc_call *call, int status, const char *msg)
{
    if (call->state == CALL_FINISHED)
        return;
    if (!call->headers_sent) {
        reject(call, "200", status, msg);
    } else {
        call->state = CALL_FINISHED;
        call->status = status;
        call->status_msg = msg ? arena_strndup(&call->arena, msg, strlen(msg)) : NULL;
        call->finish_queued = true;
        kick(call);
        h2_conn_schedule_flush(call->conn->h2);
    }
    if (call->deadline_ev)
        evtimer_del(call->deadline_ev);
    wlist_remove(call);
}

void grpc_call_finish(struct grpc_call *call, int status, const char *message)
{
    GW_ASSERT(call->state == CALL_ACTIVE);
    call_finish_internal(call, status, message);
}

void grpc_call_finishf(struct grpc_call *call, int status, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    grpc_call_finish(call, status, buf);
}

void grpc_call_reply(struct grpc_call *call, const ProtobufCMessage *msg)
{
    int rv = grpc_call_send(call, msg);
    if (rv == GRPC_ERR_TOOBIG) {
        grpc_call_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "response larger than the limit");
        return;
    }
    if (rv < 0)
        return;
    grpc_call_finish(call, GRPC_STATUS_OK, NULL);
}

size_t grpc_call_msg_wire_len(const struct grpc_call *call)
{
    return call->msg_wire_len;
}

void grpc_call_pause_recv(struct grpc_call *call, bool paused)
{
    if (call->paused == paused)
        return;
    call->paused = paused;
    if (paused || call->state != CALL_ACTIVE)
        return;
    /* Replay what was held back, chunk by chunk, until paused again. */
    while (call->in != NULL && evbuffer_get_length(call->in) > 0 && call->state == CALL_ACTIVE &&
           !call->paused) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(call->in, -1, NULL, &v, 1) < 1)
            break;
        size_t used = feed(call, v.iov_base, v.iov_len);
        evbuffer_drain(call->in, used);
        h2_conn_consume(call->conn->h2, &call->st, used);
    }
    maybe_half_close(call);
}

void grpc_call_set_user(struct grpc_call *call, void *p)
{
    call->user = p;
}

void *grpc_call_user(const struct grpc_call *call)
{
    return call->user;
}

void grpc_call_set_auth(struct grpc_call *call, void *p)
{
    call->auth = p;
}

void *grpc_call_auth(const struct grpc_call *call)
{
    return call->auth;
}

const struct grpc_method *grpc_call_method(const struct grpc_call *call)
{
    return call->method;
}

void *grpc_call_method_arg(const struct grpc_call *call)
{
    return call->method->arg;
}

const char *hdr_list_get(const struct hdr_list *l, const char *name)
{
    for (unsigned i = 0; i < l->n; i++)
        if (strcmp(l->items[i].name, name) == 0)
            return l->items[i].value;
    return NULL;
}

const char *grpc_call_header(const struct grpc_call *call, const char *name)
{
    return hdr_list_get(&call->hdrs, name);
}

const void *grpc_call_conn_info(const struct grpc_call *call)
{
    return call->conn->info;
}

const char *grpc_call_peer(const struct grpc_call *call)
{
    return h2_conn_peer(call->conn->h2);
}

uint64_t grpc_call_deadline_us(const struct grpc_call *call)
{
    return call->deadline_us;
}

void *grpc_call_alloc(struct grpc_call *call, size_t n)
{
    return arena_alloc(call->alloc_scratch ? &call->scratch : &call->arena, n);
}

char *grpc_call_strdup(struct grpc_call *call, const char *s)
{
    return arena_strndup(call->alloc_scratch ? &call->scratch : &call->arena, s, strlen(s));
}

void grpc_call_scratch_begin(struct grpc_call *call)
{
    call->alloc_scratch = true;
}

void grpc_call_scratch_end(struct grpc_call *call)
{
    call->alloc_scratch = false;
    arena_release(&call->scratch);
}

void *grpc_call_scratch_alloc(struct grpc_call *call, size_t n)
{
    return arena_alloc(&call->scratch, n);
}

bool grpc_call_congested(const struct grpc_call *call)
{
    return call->congested;
}

size_t grpc_call_out_pending(const struct grpc_call *call)
{
    return evbuffer_get_length(call->out);
}
