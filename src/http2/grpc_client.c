/* gRPC client: calls over one HTTP/2 client connection (driver sockets,
 * the CLI, tests). */
#include "http2/grpc.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "config.h"
#include "http2/http2_int.h"

#define CCALL_HIGH_WATER (256 * 1024) /* queued request bytes before GRPC_SEND_FULL */
#define CCALL_LOW_WATER  (64 * 1024)  /* ... and before the writable callback */

struct grpc_channel {
    struct h2_conn *h2;
    struct event_base *base;
    struct grpc_channel_opts opts;
    char authority[256];
    char scheme[8];
};

struct grpc_ccall {
    struct h2_stream st; /* first: h2 hands us back this pointer */
    struct grpc_channel *ch;
    const ProtobufCMessageDescriptor *resp;
    grpc_ccall_msg_cb on_msg;
    grpc_ccall_done_cb on_done;
    void (*on_writable)(struct grpc_ccall *, void *);
    void *arg;
    struct evbuffer *out;
    struct evbuffer *in; /* held back while paused */
    struct grpc_deframer deframer;
    struct hdr_list hdrs;
    struct event *deadline_ev;
    const char *encoding;
    int http_status;
    int status; /* from grpc-status, -1 until seen */
    const char *message;
    bool close_send;
    bool deferred;
    bool full;                 /* GRPC_SEND_FULL returned, on_writable not yet run */
    struct event *writable_ev; /* runs on_writable from the loop */
    bool paused;
    bool ending;   /* the stream ended: held messages are delivered despite |paused| */
    bool done;     /* on_done delivered (or cancelled): no more callbacks */
    bool detached; /* no longer attached to the stream */
    int depth;     /* callbacks in progress: free is deferred */
    struct arena arena;
    unsigned char arena_buf[512];
};

static void ccall_free(struct grpc_ccall *cc)
{
    if (cc->deadline_ev)
        event_free(cc->deadline_ev);
    if (cc->writable_ev)
        event_free(cc->writable_ev);
    evbuffer_free(cc->out);
    if (cc->in)
        evbuffer_free(cc->in);
    grpc_deframer_free(&cc->deframer);
    arena_release(&cc->arena);
    free(cc);
}

static void ccall_detach(struct grpc_ccall *cc)
{
    if (!cc->detached) {
        cc->detached = true;
        h2_conn_forget_stream(cc->ch->h2, &cc->st);
    }
}

/* Frees unless a callback of this call is still on the stack. */
static void ccall_release(struct grpc_ccall *cc)
{
    ccall_detach(cc);
    if (cc->depth == 0)
        ccall_free(cc);
}

static void ccall_done(struct grpc_ccall *cc, int status, const char *message)
{
    if (cc->done)
        return;
    cc->done = true;
    cc->depth++;
    cc->on_done(cc, status, message ? message : "", cc->arg);
    cc->depth--;
    ccall_release(cc);
}

/* ---- h2 stream callbacks ------------------------------------------------------ */

static int c_on_header(struct h2_stream *st, enum h2_headers_kind kind, const uint8_t *name,
                       size_t nlen, const uint8_t *value, size_t vlen)
{
    struct grpc_ccall *cc = (struct grpc_ccall *)st;
    const char *n = (const char *)name;
    if (nlen == 7 && memcmp(n, ":status", 7) == 0) {
        cc->http_status = atoi(arena_strndup(&cc->arena, (const char *)value, vlen));
        return 0;
    }
    if (cc->hdrs.n >= HDRS_MAX)
        return 0;
    struct hdr *h = &cc->hdrs.items[cc->hdrs.n++];
    h->name = arena_strndup(&cc->arena, n, nlen);
    h->value = arena_strndup(&cc->arena, (const char *)value, vlen);
    h->value_len = (uint32_t)vlen;
    if (strcmp(h->name, "grpc-status") == 0) {
        cc->status = atoi(h->value);
    } else if (strcmp(h->name, "grpc-message") == 0) {
        struct gw_buf b = {0};
        grpc_message_decode(&b, h->value, vlen);
        cc->message = arena_strndup(&cc->arena, b.data, b.len);
        gw_buf_free(&b);
    } else if (strcmp(h->name, "grpc-encoding") == 0) {
        cc->encoding = h->value;
    }
    return 0;
}

static void finish_from_trailers(struct grpc_ccall *cc)
{
    if (cc->status >= 0) {
        ccall_done(cc, cc->status, cc->message);
        return;
    }
    char msg[64];
    snprintf(msg, sizeof(msg), "no grpc-status (http status %d)", cc->http_status);
    ccall_done(cc,
               cc->http_status == 200 || cc->http_status == 0 ? GRPC_STATUS_INTERNAL
                                                              : GRPC_STATUS_UNKNOWN,
               msg);
}

static size_t c_feed(struct grpc_ccall *cc, const uint8_t *data, size_t len);

/* Feeds the messages a pause held back in |cc->in| (all of them when the
 * stream is ending, else until paused again), acknowledging the bytes to
 * HTTP/2 flow control. The caller holds a depth reference. */
static void feed_held(struct grpc_ccall *cc)
{
    while (cc->in != NULL && evbuffer_get_length(cc->in) > 0 && !cc->done &&
           (!cc->paused || cc->ending)) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(cc->in, -1, NULL, &v, 1) < 1)
            break;
        size_t used = c_feed(cc, v.iov_base, v.iov_len);
        evbuffer_drain(cc->in, used);
        if (!cc->detached)
            h2_conn_consume(cc->ch->h2, &cc->st, used);
    }
}

/* The stream ended while grpc_ccall_pause_recv() held messages back:
 * delivers them now, paused or not, so none is lost. They are at most a
 * stream window of bytes (never consumed, so never acknowledged). Returns
 * false when the call is finished (and freed if no callback is running):
 * the caller must not touch |cc| then. */
static bool deliver_held(struct grpc_ccall *cc)
{
    cc->ending = true;
    cc->depth++;
    feed_held(cc);
    cc->depth--;
    if (!cc->done)
        return true;
    if (cc->depth == 0)
        ccall_free(cc);
    return false;
}

static int c_on_headers_done(struct h2_stream *st, enum h2_headers_kind kind, bool end_stream)
{
    struct grpc_ccall *cc = (struct grpc_ccall *)st;
    if (end_stream && !cc->done && deliver_held(cc)) {
        if (cc->deframer.hdr_have > 0 && cc->status == GRPC_STATUS_OK) {
            ccall_done(cc, GRPC_STATUS_INTERNAL, "truncated response message");
            return 0;
        }
        finish_from_trailers(cc);
    }
    return 0;
}

/* Each response decodes into a scratch arena with a budget, released once
 * the callback returned. */
static bool deliver(struct grpc_ccall *cc)
{
    int status;
    const char *err;
    struct arena scratch;
    ProtobufCAllocator alloc;
    arena_init(&scratch, NULL, 0);
    scratch.pb_budget = GRPC_DECODE_BUDGET(cc->ch->opts.max_recv_msg_bytes);
    arena_pb_allocator(&scratch, &alloc);
    void *msg = grpc_payload_decode(&cc->deframer, cc->encoding, cc->resp, &alloc,
                                    cc->ch->opts.max_recv_msg_bytes, &status, &err);
    grpc_deframer_reset_msg(&cc->deframer);
    if (msg == NULL) {
        arena_release(&scratch);
        ccall_done(cc, status, err);
        return false;
    }
    if (cc->on_msg) {
        cc->depth++;
        cc->on_msg(cc, msg, cc->arg);
        cc->depth--;
    }
    arena_release(&scratch);
    return !cc->done;
}

/* Returns bytes processed; stops when paused or done. */
static size_t c_feed(struct grpc_ccall *cc, const uint8_t *data, size_t len)
{
    size_t off = 0;
    while (off < len && !cc->done && (!cc->paused || cc->ending)) {
        size_t used;
        int rv = grpc_deframer_feed(&cc->deframer, data + off, len - off, &used);
        off += used;
        if (rv == GRPC_DEFRAME_MSG) {
            if (!deliver(cc))
                break;
        } else if (rv < 0) {
            ccall_done(cc,
                       rv == GRPC_DEFRAME_TOOBIG ? GRPC_STATUS_RESOURCE_EXHAUSTED
                                                 : GRPC_STATUS_INTERNAL,
                       rv == GRPC_DEFRAME_TOOBIG ? "response message larger than the limit"
                                                 : "invalid message compression flag");
            break;
        }
    }
    return cc->done ? len : off;
}

static int c_on_data(struct h2_stream *st, const uint8_t *data, size_t len)
{
    struct grpc_ccall *cc = (struct grpc_ccall *)st;
    struct h2_conn *h2 = cc->ch->h2;
    if (cc->done) {
        h2_conn_consume(h2, st, len);
        return 0;
    }
    if (cc->paused || (cc->in != NULL && evbuffer_get_length(cc->in) > 0)) {
        if (cc->in == NULL)
            cc->in = evbuffer_new();
        evbuffer_add(cc->in, data, len);
        return 0;
    }
    cc->depth++;
    size_t used = c_feed(cc, data, len);
    if (!cc->detached)
        h2_conn_consume(h2, st, used);
    if (used < len) {
        if (cc->in == NULL)
            cc->in = evbuffer_new();
        evbuffer_add(cc->in, data + used, len - used);
    }
    cc->depth--;
    if (cc->done && cc->depth == 0)
        ccall_free(cc);
    return 0;
}

static int c_on_end_stream(struct h2_stream *st)
{
    /* DATA with END_STREAM and no trailers: a broken server. */
    struct grpc_ccall *cc = (struct grpc_ccall *)st;
    if (!cc->done && deliver_held(cc))
        finish_from_trailers(cc);
    return 0;
}

static void c_on_close(struct h2_stream *st, uint32_t error_code)
{
    struct grpc_ccall *cc = (struct grpc_ccall *)st;
    cc->detached = true;
    if (!cc->done) {
        if (cc->status >= 0 && !deliver_held(cc))
            return;
        if (cc->status >= 0)
            ccall_done(cc, cc->status, cc->message);
        else if (error_code == NGHTTP2_REFUSED_STREAM)
            ccall_done(cc, GRPC_STATUS_UNAVAILABLE, "stream refused by the server");
        else if (error_code == NGHTTP2_CANCEL || error_code == NGHTTP2_NO_ERROR)
            ccall_done(cc, GRPC_STATUS_UNAVAILABLE, "connection closed");
        else
            ccall_done(cc, GRPC_STATUS_INTERNAL, "stream reset by the server");
        return;
    }
    if (cc->depth == 0)
        ccall_free(cc);
}

static ssize_t c_on_read_length(struct h2_stream *st, size_t max, uint32_t *flags)
{
    struct grpc_ccall *cc = (struct grpc_ccall *)st;
    size_t len = evbuffer_get_length(cc->out);
    if (len > 0)
        return (ssize_t)GW_MIN(len, max);
    if (cc->close_send) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        return 0;
    }
    cc->deferred = true;
    return H2_DEFER;
}

static void c_writable_cb(evutil_socket_t fd, short what, void *arg)
{
    struct grpc_ccall *cc = arg;
    if (cc->done || !cc->full || evbuffer_get_length(cc->out) >= CCALL_LOW_WATER)
        return;
    cc->full = false;
    if (cc->on_writable == NULL)
        return;
    cc->depth++;
    cc->on_writable(cc, cc->arg);
    cc->depth--;
    if (cc->done && cc->depth == 0)
        ccall_free(cc);
}

static int c_on_send_data(struct h2_stream *st, struct evbuffer *out, size_t len)
{
    struct grpc_ccall *cc = (struct grpc_ccall *)st;
    if (evbuffer_remove_buffer(cc->out, out, len) != (int)len)
        return -1;
    /* Not from inside nghttp2: the callback may send, cancel or free. */
    if (cc->full && evbuffer_get_length(cc->out) < CCALL_LOW_WATER) {
        if (cc->writable_ev == NULL)
            cc->writable_ev = event_new(cc->ch->base, -1, 0, c_writable_cb, cc);
        event_active(cc->writable_ev, 0, 0);
    }
    return 0;
}

static void c_on_conn_close(struct h2_conn *c, void *arg)
{
    struct grpc_channel *ch = arg;
    if (ch->opts.on_close)
        ch->opts.on_close(ch, ch->opts.arg);
    free(ch);
}

static const struct h2_stream_ops client_ops = {
    .on_header = c_on_header,
    .on_headers_done = c_on_headers_done,
    .on_data = c_on_data,
    .on_end_stream = c_on_end_stream,
    .on_close = c_on_close,
    .on_read_length = c_on_read_length,
    .on_send_data = c_on_send_data,
};

/* ---- channel ------------------------------------------------------------------- */

struct grpc_channel *grpc_channel_new(struct event_base *base, struct bufferevent *bev,
                                      const struct grpc_channel_opts *opts)
{
    struct grpc_channel *ch = gw_xcalloc(1, sizeof(*ch));
    ch->base = base;
    ch->opts = *opts;
    if (!ch->opts.max_recv_msg_bytes)
        ch->opts.max_recv_msg_bytes = 4 * 1024 * 1024;
    snprintf(ch->authority, sizeof(ch->authority), "%s",
             opts->authority ? opts->authority : "localhost");
    snprintf(ch->scheme, sizeof(ch->scheme), "%s", opts->scheme ? opts->scheme : "http");
    struct h2_conn_opts o = {
        .role = H2_CLIENT,
        .ops = &client_ops,
        .conn_arg = ch,
        .keepalive_ms = opts->keepalive_ms,
        .on_conn_close = c_on_conn_close,
        .peer = ch->authority,
    };
    ch->h2 = h2_conn_new(base, bev, &o);
    if (ch->h2 == NULL) {
        free(ch);
        return NULL;
    }
    return ch;
}

void grpc_channel_close(struct grpc_channel *ch)
{
    h2_conn_close(ch->h2);
}

bool grpc_channel_is_closing(const struct grpc_channel *ch)
{
    return h2_conn_is_closing(ch->h2);
}

static void c_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    ccall_done(arg, GRPC_STATUS_DEADLINE_EXCEEDED, "deadline exceeded");
}

#define MAX_REQ_HEADERS 40

struct grpc_ccall *grpc_channel_start(struct grpc_channel *ch, const char *path,
                                      const ProtobufCMessageDescriptor *response,
                                      const char *const *metadata, uint64_t timeout_ms,
                                      grpc_ccall_msg_cb on_msg, grpc_ccall_done_cb on_done,
                                      void *arg)
{
    if (h2_conn_is_closing(ch->h2))
        return NULL;
    struct grpc_ccall *cc = gw_xcalloc(1, sizeof(*cc));
    char tmo[16];
    nghttp2_nv nva[MAX_REQ_HEADERS] = {
        MAKE_NV_LIT(":method", "POST"),
        MAKE_NV(":scheme", ch->scheme, strlen(ch->scheme)),
        /* Copied: the caller's path need not outlive this call. */
        {(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), NGHTTP2_NV_FLAG_NO_COPY_NAME},
        MAKE_NV(":authority", ch->authority, strlen(ch->authority)),
        MAKE_NV_LIT("te", "trailers"),
        MAKE_NV_LIT("content-type", "application/grpc"),
        MAKE_NV_LIT("user-agent", "openshell-grpc-c/" PACKAGE_VERSION),
        MAKE_NV_LIT("grpc-accept-encoding", "identity,gzip"),
    };
    size_t n = 8;
    if (timeout_ms > 0) {
        grpc_timeout_format(timeout_ms * 1000, tmo);
        /* |tmo| is on this stack: nghttp2 must copy the value (MAKE_NV
         * would have it read after we return). */
        nva[n++] = (nghttp2_nv){(uint8_t *)"grpc-timeout", (uint8_t *)tmo, 12, strlen(tmo),
                                NGHTTP2_NV_FLAG_NO_COPY_NAME};
    }
    for (size_t i = 0; metadata && metadata[i] && metadata[i + 1] && n < MAX_REQ_HEADERS; i += 2)
        nva[n++] = (nghttp2_nv){(uint8_t *)metadata[i], (uint8_t *)metadata[i + 1],
                                strlen(metadata[i]), strlen(metadata[i + 1]), NGHTTP2_NV_FLAG_NONE};

    cc->ch = ch;
    cc->resp = response;
    cc->on_msg = on_msg;
    cc->on_done = on_done;
    cc->arg = arg;
    cc->status = -1;
    cc->out = evbuffer_new();
    arena_init(&cc->arena, cc->arena_buf, sizeof(cc->arena_buf));
    grpc_deframer_init(&cc->deframer, ch->opts.max_recv_msg_bytes);
    if (h2_conn_submit_request(ch->h2, nva, n, &cc->st) != 0) {
        cc->detached = true;
        ccall_free(cc);
        return NULL;
    }
    if (timeout_ms > 0) {
        cc->deadline_ev = evtimer_new(ch->base, c_deadline_cb, cc);
        struct timeval tv = {(time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000};
        evtimer_add(cc->deadline_ev, &tv);
    }
    return cc;
}

static int c_after_queue(struct grpc_ccall *cc)
{
    if (cc->deferred) {
        cc->deferred = false;
        h2_conn_resume_stream(cc->ch->h2, cc->st.id);
    }
    if (evbuffer_get_length(cc->out) < CCALL_HIGH_WATER)
        return GRPC_SEND_OK;
    cc->full = true;
    return GRPC_SEND_FULL;
}

int grpc_ccall_send(struct grpc_ccall *cc, const ProtobufCMessage *msg)
{
    if (cc->done || cc->close_send || cc->detached)
        return GRPC_ERR_CLOSED;
    if (grpc_frame_pack(cc->out, msg, UINT32_MAX) == 0 && protobuf_c_message_get_packed_size(msg))
        return GRPC_ERR_TOOBIG;
    return c_after_queue(cc);
}

int grpc_ccall_send_raw(struct grpc_ccall *cc, const uint8_t *data, size_t len)
{
    if (cc->done || cc->close_send || cc->detached)
        return GRPC_ERR_CLOSED;
    if (len > UINT32_MAX)
        return GRPC_ERR_TOOBIG;
    grpc_frame_pack_raw(cc->out, data, len, UINT32_MAX);
    return c_after_queue(cc);
}

void grpc_ccall_close_send(struct grpc_ccall *cc)
{
    if (cc->done || cc->close_send || cc->detached)
        return;
    cc->close_send = true;
    c_after_queue(cc);
}

void grpc_ccall_cancel(struct grpc_ccall *cc)
{
    cc->done = true;
    ccall_release(cc);
}

void grpc_ccall_set_writable_cb(struct grpc_ccall *cc, void (*fn)(struct grpc_ccall *, void *))
{
    cc->on_writable = fn;
}

void grpc_ccall_pause_recv(struct grpc_ccall *cc, bool paused)
{
    if (cc->paused == paused)
        return;
    cc->paused = paused;
    if (paused || cc->done)
        return;
    cc->depth++;
    feed_held(cc);
    cc->depth--;
    if (cc->done && cc->depth == 0)
        ccall_free(cc);
}

const char *grpc_ccall_header(const struct grpc_ccall *cc, const char *name)
{
    return hdr_list_get(&cc->hdrs, name);
}

struct grpc_ccall *grpc_channel_unary(struct grpc_channel *ch, const char *path,
                                      const ProtobufCMessage *req,
                                      const ProtobufCMessageDescriptor *response,
                                      const char *const *metadata, uint64_t timeout_ms,
                                      grpc_ccall_msg_cb on_msg, grpc_ccall_done_cb on_done,
                                      void *arg)
{
    struct grpc_ccall *cc =
        grpc_channel_start(ch, path, response, metadata, timeout_ms, on_msg, on_done, arg);
    if (cc == NULL)
        return NULL;
    if (grpc_ccall_send(cc, req) < 0) {
        grpc_ccall_cancel(cc);
        return NULL;
    }
    grpc_ccall_close_send(cc);
    return cc;
}

/* ---- endpoint URLs --------------------------------------------------------- */

#define HOST_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_"

/* Copies the host of "host[:port]" or "[v6][:port]" (the text ends at |end|)
 * into ep->host and points |*colon| at the ':' before the port (NULL: none). */
static int split_host(const char *hp, const char *end, struct grpc_endpoint *ep, const char **colon,
                      char *err, size_t errlen)
{
    const char *h = hp, *hend;
    size_t len;

    *colon = NULL;
    if (*hp == '[') {
        const char *rb = memchr(hp, ']', (size_t)(end - hp));
        if (rb == NULL) {
            snprintf(err, errlen, "missing ']' after the IPv6 address");
            return -1;
        }
        if (rb + 1 != end && rb[1] != ':') {
            snprintf(err, errlen, "unexpected text after ']'");
            return -1;
        }
        *colon = rb + 1 != end ? rb + 1 : NULL;
        h = hp + 1;
        hend = rb;
    } else {
        *colon = memchr(hp, ':', (size_t)(end - hp));
        hend = *colon != NULL ? *colon : end;
        if (*colon != NULL && memchr(*colon + 1, ':', (size_t)(end - *colon - 1)) != NULL) {
            snprintf(err, errlen, "an IPv6 address needs brackets: [addr]:port");
            return -1;
        }
    }
    len = (size_t)(hend - h);
    if (len == 0) {
        snprintf(err, errlen, "the host is empty");
        return -1;
    }
    if (len >= sizeof(ep->host)) {
        snprintf(err, errlen, "the host name is too long");
        return -1;
    }
    memcpy(ep->host, h, len);
    ep->host[len] = '\0';
    if (*hp == '[') {
        unsigned char a6[16];
        if (inet_pton(AF_INET6, ep->host, a6) != 1) {
            snprintf(err, errlen, "'[%.64s]' is not an IPv6 address", ep->host);
            return -1;
        }
    } else if (strspn(ep->host, HOST_CHARS) != len) {
        snprintf(err, errlen,
                 "the host '%.64s' has characters other than letters, digits, '.', '-' and '_'",
                 ep->host);
        return -1;
    }
    return 0;
}

static int parse_host_port(const char *hp, struct grpc_endpoint *ep, char *err, size_t errlen)
{
    const char *end = hp + strcspn(hp, "/?#");
    const char *colon;
    unsigned long port = ep->tls ? 443 : 80;
    int n;

    if (*end != '\0' && !(*end == '/' && end[1] == '\0')) {
        snprintf(err, errlen, "a gateway URL has no path or query");
        return -1;
    }
    if (split_host(hp, end, ep, &colon, err, errlen) != 0)
        return -1;
    if (colon != NULL) {
        /* Plain digits only: no sign, no blanks (strtoul would take both). */
        const char *p = colon + 1;
        for (port = 0; p < end && *p >= '0' && *p <= '9' && port <= 65535; p++)
            port = port * 10 + (unsigned long)(*p - '0');
        if (p != end || p == colon + 1 || port < 1 || port > 65535) {
            snprintf(err, errlen, "the port must be 1..65535");
            return -1;
        }
    }
    ep->port = (uint16_t)port;
    n = snprintf(ep->authority, sizeof(ep->authority), *hp == '[' ? "[%s]:%u" : "%s:%u", ep->host,
                 ep->port);
    if (n < 0 || (size_t)n >= sizeof(ep->authority)) {
        snprintf(err, errlen, "the host name is too long");
        return -1;
    }
    return 0;
}

int grpc_endpoint_parse(const char *url, struct grpc_endpoint *ep, char *err, size_t errlen)
{
    memset(ep, 0, sizeof(*ep));
    if (url == NULL || url[0] == '\0') {
        snprintf(err, errlen, "the gateway URL is empty");
        return -1;
    }
    if (strncmp(url, "unix:", 5) == 0) {
        const char *p = url + 5;
        if (strncmp(p, "//", 2) == 0)
            p += 2;
        if (p[0] != '/') {
            snprintf(err, errlen, "a unix: gateway URL needs an absolute socket path");
            return -1;
        }
        if (strlen(p) >= sizeof(ep->path)) {
            snprintf(err, errlen, "the socket path is longer than %zu bytes", sizeof(ep->path) - 1);
            return -1;
        }
        ep->is_unix = true;
        snprintf(ep->path, sizeof(ep->path), "%s", p);
        snprintf(ep->authority, sizeof(ep->authority), "localhost");
        return 0;
    }
    if (strncmp(url, "http://", 7) == 0)
        return parse_host_port(url + 7, ep, err, errlen);
    if (strncmp(url, "https://", 8) == 0) {
        ep->tls = true;
        return parse_host_port(url + 8, ep, err, errlen);
    }
    snprintf(err, errlen, "the gateway URL must start with https://, http:// or unix:");
    return -1;
}
