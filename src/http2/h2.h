/*
 * h2: HTTP/2 connections on nghttp2 over any bufferevent (TCP, TLS, Unix).
 *
 * An h2_conn owns one nghttp2 session and one bufferevent and pumps bytes
 * between them on the reactor loop: input is fed to nghttp2 as it arrives,
 * output is produced once per loop iteration (a deferred "flush" event), and
 * reading stops while the socket's output buffer is above its high-water
 * mark, so a peer that does not read cannot make us buffer without bound.
 *
 * Stream-level events are forwarded to an h2_stream_ops table (the gRPC
 * layer implements it); the stream's user pointer is whatever on_begin (server)
 * or h2_conn_submit_request (client) supplied.
 *
 * Abuse limits (docs/http2-limits.md) are applied to every server session:
 * concurrent streams, header list size, rapid reset, CONTINUATION flood,
 * SETTINGS and outbound-ACK floods, HPACK table size.
 */
#ifndef GW_H2_H
#define GW_H2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <event2/buffer.h>

#include <nghttp2/nghttp2.h>

#include "base/base.h"

struct bufferevent;
struct event_base;
struct h2_conn;

#define H2_ERR_NOMEM    (-1)
#define H2_ERR_CLOSED   (-2) /* connection closing or closed */
#define H2_ERR_PROTOCOL (-3) /* nghttp2 refused the operation */

enum h2_role {
    H2_SERVER,
    H2_CLIENT,
};

/* Header block kinds seen by on_header. */
enum h2_headers_kind {
    H2_HEADERS_REQUEST,  /* server: request headers */
    H2_HEADERS_RESPONSE, /* client: response headers (also trailers-only) */
    H2_HEADERS_TRAILERS, /* trailers (second header block) */
};

/* A stream as the connection sees it. The layer above embeds it as the
 * first member of its own per-stream object (h2o style): fields without
 * a leading underscore are read-only for the owner, the rest belong to h2. */
struct h2_stream {
    int32_t id; /* 0 until the client request is submitted */
    struct h2_conn *conn;
    uint32_t _hdr_bytes;  /* header list size received so far */
    uint32_t _unconsumed; /* received DATA not yet given back to flow control */
    struct h2_stream *_prev, *_next;
};

/* Stream callbacks. A callback returning non-zero resets the stream
 * (RST_STREAM INTERNAL_ERROR); on_close still follows. No callback may free
 * the connection (use h2_conn_close, which defers). */
struct h2_stream_ops {
    /* Server only: the peer opened |stream_id|. Return the stream object
     * (its id/conn are filled in by h2), or NULL to refuse the stream
     * (RST_STREAM REFUSED_STREAM). */
    struct h2_stream *(*on_begin)(struct h2_conn *c, int32_t stream_id, void *conn_arg);
    int (*on_header)(struct h2_stream *st, enum h2_headers_kind kind, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen);
    /* A header block ended. |end_stream|: the peer will send nothing more. */
    int (*on_headers_done)(struct h2_stream *st, enum h2_headers_kind kind, bool end_stream);
    /* DATA payload. The bytes count against flow control until the owner
     * calls h2_conn_consume(). */
    int (*on_data)(struct h2_stream *st, const uint8_t *data, size_t len);
    /* The peer half-closed (END_STREAM on a DATA frame). */
    int (*on_end_stream)(struct h2_stream *st);
    /* The stream is gone (closed, reset, or the connection died).
     * |error_code| is the HTTP/2 error code (0 = NO_ERROR). After this
     * returns h2 never touches |st| again; the owner may free it. */
    void (*on_close)(struct h2_stream *st, uint32_t error_code);
    /* Output: how many payload bytes are ready (at most |max|). Return the
     * count (>= 0, may be 0 only together with NGHTTP2_DATA_FLAG_EOF in
     * |*data_flags|) or H2_DEFER when nothing is ready yet (resume with
     * h2_conn_resume_stream). An owner that submits trailers from here
     * (h2_conn_submit_trailers) also sets NGHTTP2_DATA_FLAG_NO_END_STREAM. */
    ssize_t (*on_read_length)(struct h2_stream *st, size_t max, uint32_t *data_flags);
    /* Moves exactly |len| payload bytes (as announced by on_read_length)
     * into |out|. Returns 0 or -1. */
    int (*on_send_data)(struct h2_stream *st, struct evbuffer *out, size_t len);
    /* The socket output drained below its low-water mark (see
     * h2_conn_out_congested). Optional. */
    void (*on_conn_writable)(struct h2_conn *c, void *conn_arg);
};

#define H2_DEFER (-1)

struct h2_conn_opts {
    enum h2_role role;
    const struct h2_stream_ops *ops;
    void *conn_arg;                  /* passed to on_begin / on_conn_close */
    uint32_t max_concurrent_streams; /* server: advertised and enforced; 0 = 256 */
    uint32_t max_header_list_size;   /* 0 = 16 KiB */
    uint32_t initial_window_size;    /* per stream, 0 = 1 MiB */
    uint32_t conn_window_size;       /* connection receive window, 0 = 16 MiB */
    size_t out_high_water;           /* socket output buffer high-water, 0 = 1 MiB */
    uint32_t keepalive_ms;           /* send PING after this idle time, 0 = off */
    uint32_t keepalive_timeout_ms;   /* close if the PING is not answered, 0 = 20 s */
    /* Called once when the connection is closed and about to be freed; all
     * streams got on_close before. */
    void (*on_conn_close)(struct h2_conn *c, void *conn_arg);
    uint64_t conn_id; /* for logs */
    const char *peer; /* for logs; copied */
};

/* Takes ownership of |bev| (even on failure). Sends the connection preface
 * and SETTINGS. Returns NULL only when nghttp2 cannot allocate. The
 * connection frees itself on EOF/error, after on_conn_close. */
struct h2_conn *h2_conn_new(struct event_base *base, struct bufferevent *bev,
                            const struct h2_conn_opts *opts);

/* Schedules a flush of pending frames at the end of this loop iteration.
 * Call after queueing output from outside an nghttp2 callback. */
void h2_conn_schedule_flush(struct h2_conn *c);
/* Resumes a stream whose on_read_length returned H2_DEFER, then
 * schedules a flush. */
void h2_conn_resume_stream(struct h2_conn *c, int32_t stream_id);
/* Tells flow control that the owner processed |n| received bytes of |st|
 * (the stream and connection windows reopen). */
void h2_conn_consume(struct h2_conn *c, struct h2_stream *st, size_t n);

/* Server: submits response headers |nva| (with a data provider unless
 * |end_stream|). Client: h2_conn_submit_request. Return 0 or H2_ERR_*. */
int h2_conn_submit_response(struct h2_conn *c, int32_t stream_id, const nghttp2_nv *nva,
                            size_t nvlen, bool end_stream) GW_MUSTCHECK;
int h2_conn_submit_trailers(struct h2_conn *c, int32_t stream_id, const nghttp2_nv *nva,
                            size_t nvlen) GW_MUSTCHECK;
/* Client: opens |st| with request headers and a data provider (the body
 * comes from on_read_length/on_send_data). Sets st->id and st->conn.
 * Returns 0 or H2_ERR_*. */
int h2_conn_submit_request(struct h2_conn *c, const nghttp2_nv *nva, size_t nvlen,
                           struct h2_stream *st) GW_MUSTCHECK;
/* Resets a stream with |error_code| (e.g. NGHTTP2_CANCEL). */
void h2_conn_reset_stream(struct h2_conn *c, int32_t stream_id, uint32_t error_code);
/* Detaches |st| from the connection without waiting for the stream to
 * close: no further callbacks for it (resets the stream if still open). */
void h2_conn_forget_stream(struct h2_conn *c, struct h2_stream *st);

/* Graceful shutdown, in two steps (RFC 9113 §6.8): a GOAWAY shutdown notice
 * now, the final GOAWAY with the last processed stream id one RTT later;
 * the connection closes once its streams are done or at the deadline set by
 * the caller with h2_conn_close(). */
void h2_conn_shutdown(struct h2_conn *c);
/* Closes now: every stream gets on_close, then on_conn_close; frees the
 * connection at the end of the current callback (deferred free). */
void h2_conn_close(struct h2_conn *c);

bool h2_conn_is_closing(const struct h2_conn *c);
unsigned h2_conn_stream_count(const struct h2_conn *c);
size_t h2_conn_out_pending(const struct h2_conn *c); /* bytes in the socket output buffer */
bool h2_conn_out_congested(const struct h2_conn *c); /* above high-water */
uint64_t h2_conn_id(const struct h2_conn *c);
const char *h2_conn_peer(const struct h2_conn *c); /* borrowed */
void *h2_conn_arg(const struct h2_conn *c);
struct event_base *h2_conn_base(const struct h2_conn *c);

#endif /* GW_H2_H */
