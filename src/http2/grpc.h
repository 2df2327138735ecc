/*
 * grpc: the gRPC protocol on top of h2, for both ends.
 *
 * Server: a grpc_server holds the method table (keyed by path) and limits;
 * grpc_server_attach() turns an accepted bufferevent into an HTTP/2
 * connection whose streams become calls. One asynchronous handler API
 * serves all four call kinds:
 *
 *   on_message      each request message. For UNARY and SERVER_STREAM it is
 *                   called exactly once, after the client half-closed, and
 *                   the message stays valid until the call ends. For
 *                   CLIENT_STREAM and BIDI it is called per message and the
 *                   message is borrowed only until on_message returns.
 *                   Messages that would expand past 2x the receive limit
 *                   in memory are refused (RESOURCE_EXHAUSTED).
 *   on_half_close   CLIENT_STREAM and BIDI: the client sent its last message.
 *   on_cancel       the call ended without the handler finishing it: the
 *                   client reset the stream, the deadline passed, the
 *                   connection died or the server is shutting down. The
 *                   handler must drop every reference to the call before
 *                   returning; the call is freed right after.
 *   on_writable     the call had reported GRPC_SEND_FULL and its output
 *                   drained below the low-water mark: produce more.
 *
 * A handler finishes a call exactly once with grpc_call_finish() (or
 * grpc_call_reply() for unary), synchronously or later from another event.
 * After finishing, the call belongs to the gRPC layer: no callbacks follow
 * and the handler must not touch it.
 *
 * Client: a grpc_channel runs calls over one HTTP/2 client connection
 * (driver sockets, the CLI, tests).
 */
#ifndef GW_GRPC_H
#define GW_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "base/base.h"

struct bufferevent;
struct event_base;
struct grpc_server;
struct grpc_call;
struct grpc_channel;
struct grpc_ccall;

enum grpc_status {
    GRPC_STATUS_OK = 0,
    GRPC_STATUS_CANCELLED = 1,
    GRPC_STATUS_UNKNOWN = 2,
    GRPC_STATUS_INVALID_ARGUMENT = 3,
    GRPC_STATUS_DEADLINE_EXCEEDED = 4,
    GRPC_STATUS_NOT_FOUND = 5,
    GRPC_STATUS_ALREADY_EXISTS = 6,
    GRPC_STATUS_PERMISSION_DENIED = 7,
    GRPC_STATUS_RESOURCE_EXHAUSTED = 8,
    GRPC_STATUS_FAILED_PRECONDITION = 9,
    GRPC_STATUS_ABORTED = 10,
    GRPC_STATUS_OUT_OF_RANGE = 11,
    GRPC_STATUS_UNIMPLEMENTED = 12,
    GRPC_STATUS_INTERNAL = 13,
    GRPC_STATUS_UNAVAILABLE = 14,
    GRPC_STATUS_DATA_LOSS = 15,
    GRPC_STATUS_UNAUTHENTICATED = 16,
};

enum grpc_kind {
    GRPC_UNARY,
    GRPC_SERVER_STREAM,
    GRPC_CLIENT_STREAM,
    GRPC_BIDI,
};

/* grpc_call_send() results. */
#define GRPC_SEND_OK    0
#define GRPC_SEND_FULL  1    /* queued; above high-water: wait for on_writable */
#define GRPC_ERR_CLOSED (-1) /* the call is already finished or cancelled */
#define GRPC_ERR_TOOBIG (-2) /* message larger than the peer's limit */
#define GRPC_ERR_OVERRUN                                                                           \
    (-3) /* the handler ignored GRPC_SEND_FULL past the hard cap: the call                         \
            was finished with RESOURCE_EXHAUSTED; treat it as finished */

/* ---- pure helpers (framing, status, timeouts): tested directly ------------ */

/* "OK", "CANCELLED", ... ; "UNKNOWN" for values out of range. */
const char *grpc_status_name(int status);
/* Parses a grpc-timeout header value ("1H", "30S", "100m", "5u", "10n",
 * at most 8 digits). Returns 0 and the timeout in microseconds (rounded up,
 * saturating), or -1 when malformed. */
int grpc_timeout_parse(const char *s, size_t len, uint64_t *out_us) GW_MUSTCHECK;
/* Formats |us| microseconds as a grpc-timeout value into |out| (>= 10 bytes). */
void grpc_timeout_format(uint64_t us, char out[16]);
/* Percent-encodes |msg| for grpc-message (RFC 3986 unreserved + space
 * kept... per the gRPC spec: bytes outside 0x20-0x7E and '%' are encoded).
 * Appends to |out|. */
void grpc_message_encode(struct gw_buf *out, const char *msg, size_t len);
/* Decodes a grpc-message value; invalid escapes are kept verbatim. */
void grpc_message_decode(struct gw_buf *out, const char *val, size_t len);

/* Incremental deframer for length-prefixed messages
 * (1 byte compressed flag, 4 bytes big-endian length, payload). */
struct grpc_deframer {
    uint32_t max_len; /* larger messages fail with GRPC_DEFRAME_TOOBIG */
    uint8_t hdr[5];
    uint8_t hdr_have;
    bool compressed;
    uint32_t msg_len;
    struct gw_buf payload;
};

#define GRPC_DEFRAME_NEED    0    /* consumed everything, no complete message yet */
#define GRPC_DEFRAME_MSG     1    /* a message is complete (see deframer fields) */
#define GRPC_DEFRAME_TOOBIG  (-1) /* the announced length exceeds max_len */
#define GRPC_DEFRAME_BADFLAG (-2) /* compressed flag neither 0 nor 1 */

void grpc_deframer_init(struct grpc_deframer *d, uint32_t max_len);
void grpc_deframer_free(struct grpc_deframer *d);
/* Consumes bytes from |data| up to the end of the next message. Sets
 * |*used| to the bytes consumed. On GRPC_DEFRAME_MSG the payload is in
 * d->payload (d->payload.len == d->msg_len) and d->compressed says whether
 * it is compressed; call grpc_deframer_reset_msg() before the next feed. */
int grpc_deframer_feed(struct grpc_deframer *d, const uint8_t *data, size_t len,
                       size_t *used) GW_MUSTCHECK;
void grpc_deframer_reset_msg(struct grpc_deframer *d);
/* Writes the 5-byte prefix for an uncompressed message of |len| bytes. */
void grpc_frame_prefix(uint8_t out[5], uint32_t len);
/* gzip-inflates |in| into |out| (reset first), failing with -1 when the
 * result would exceed |max_len| or the data is not valid gzip. */
int grpc_gunzip(const uint8_t *in, size_t len, uint32_t max_len, struct gw_buf *out) GW_MUSTCHECK;

/* ---- server ---------------------------------------------------------------- */

struct grpc_handler {
    void (*on_message)(struct grpc_call *call, void *msg);
    void (*on_half_close)(struct grpc_call *call);
    void (*on_cancel)(struct grpc_call *call);
    void (*on_writable)(struct grpc_call *call);
};

struct grpc_method {
    const char *path; /* "/package.Service/Method" */
    enum grpc_kind kind;
    const ProtobufCMessageDescriptor *request;
    const ProtobufCMessageDescriptor *response;
    const struct grpc_handler *handler;
    void *arg;     /* method context, see grpc_call_method_arg() */
    int auth_mode; /* opaque to this layer; read by the call-start hook */
};

/* Runs when a call's headers arrived, before any message is delivered.
 * Return GRPC_STATUS_OK to proceed, or a status (with |*msg| set to a
 * static or call-arena string) to answer trailers-only. */
typedef int (*grpc_call_start_hook)(struct grpc_call *call, const struct grpc_method *m, void *arg,
                                    const char **msg);

struct grpc_server_opts {
    uint32_t max_recv_msg_bytes;     /* 0 = 4 MiB */
    uint32_t max_send_msg_bytes;     /* 0 = 4 MiB */
    uint32_t max_concurrent_streams; /* 0 = 256 */
    uint32_t max_header_list_size;   /* 0 = 16 KiB */
    size_t call_high_water;          /* per-call queued output before SEND_FULL, 0 = 256 KiB */
    size_t call_hard_cap;            /* per-call output cap, 0 = 8 MiB */
    uint32_t keepalive_ms;           /* 0 = 60 s; UINT32_MAX = off */
};

/* Caller owns, free with grpc_server_free() (after every connection closed).
 * Deadlines are timers on |base|: with libevent's default time caching they
 * may fire up to one loop iteration early; the reactor's base reads the
 * clock instead (EVENT_BASE_FLAG_NO_CACHE_TIME). */
struct grpc_server *grpc_server_new(struct event_base *base, const struct grpc_server_opts *opts);
void grpc_server_free(struct grpc_server *s);
/* Adds a method; |m| is borrowed and must outlive the server. Returns 0, or
 * -1 when the path is already registered. */
int grpc_server_add_method(struct grpc_server *s, const struct grpc_method *m) GW_MUSTCHECK;
const struct grpc_method *grpc_server_find_method(const struct grpc_server *s, const char *path,
                                                  size_t len);
void grpc_server_set_call_start_hook(struct grpc_server *s, grpc_call_start_hook hook, void *arg);
/* Runs once per call when its stream closes, whatever ended it (the
 * handler, a rejection before dispatch, cancellation): |m| is the method
 * from the table, or NULL when the path was missing or unknown (so the
 * observer sees a bounded set of methods); |status| the final gRPC status
 * (CANCELLED for a stream reset before the call was dispatched); |dur_us|
 * the microseconds since the stream began. The call is already gone. */
typedef void (*grpc_call_observer)(const struct grpc_method *m, int status, uint64_t dur_us,
                                   void *arg);
/* Sets or (|fn| NULL) clears the observer; at most one. */
void grpc_server_set_observer(struct grpc_server *s, grpc_call_observer fn, void *arg);
/* Serves HTTP/2 gRPC on |bev| (takes ownership, even on failure). |peer|
 * text and |conn_id| are used in logs; |conn_info| is an opaque pointer
 * handlers can read with grpc_call_conn_info() (e.g. TLS client identity);
 * it is copied by |conn_info_size| bytes. Returns 0 or -1. */
int grpc_server_attach(struct grpc_server *s, struct bufferevent *bev, uint64_t conn_id,
                       const char *peer, const void *conn_info, size_t conn_info_size);
/* Begins graceful shutdown: GOAWAY to every connection, new calls are
 * refused; in-flight calls continue. */
void grpc_server_shutdown(struct grpc_server *s);
/* Cancels every remaining call (on_cancel, client sees UNAVAILABLE) and
 * closes every connection. */
void grpc_server_close_all(struct grpc_server *s);
unsigned grpc_server_active_calls(const struct grpc_server *s);
unsigned grpc_server_connections(const struct grpc_server *s);

/* ---- server call ------------------------------------------------------------ */

/* Sends one response message. Returns GRPC_SEND_OK, GRPC_SEND_FULL or a
 * negative GRPC_ERR_*. Unary calls must use grpc_call_reply(). */
int grpc_call_send(struct grpc_call *call, const ProtobufCMessage *msg) GW_MUSTCHECK;
/* Sends an already-serialized message. */
int grpc_call_send_raw(struct grpc_call *call, const uint8_t *data, size_t len) GW_MUSTCHECK;
/* Sends one message whose serialized bytes are |head| followed by |body|
 * (e.g. a hand-encoded field header and the bytes it announces), without
 * joining them first. Same results as grpc_call_send(). */
int grpc_call_send_parts(struct grpc_call *call, const uint8_t *head, size_t head_len,
                         const uint8_t *body, size_t body_len) GW_MUSTCHECK;
/* Ends the call with |status| and |message| (NULL or text; percent-encoded
 * on the wire). Trailers-only when nothing was sent yet. The call must not
 * be used afterwards. */
void grpc_call_finish(struct grpc_call *call, int status, const char *message);
/* printf-style message. */
void grpc_call_finishf(struct grpc_call *call, int status, const char *fmt, ...) GW_PRINTF(3, 4);
/* Unary: sends |msg| and finishes with OK. */
void grpc_call_reply(struct grpc_call *call, const ProtobufCMessage *msg);
/* Serialized length of the request message being delivered to on_message
 * (for unary calls: of the one request), or 0 when unknown (it arrived
 * compressed). A handler compares it with the decoded message's packed
 * size to notice what protobuf-c loses silently: a NUL inside a string
 * field (the string ends there) or a non-canonical encoding. */
size_t grpc_call_msg_wire_len(const struct grpc_call *call);
/* Stops (true) or resumes (false) delivery of request messages. While
 * paused, received bytes are not acknowledged to HTTP/2 flow control, so
 * the client is slowed down instead of the gateway buffering. */
void grpc_call_pause_recv(struct grpc_call *call, bool paused);

/* Handler state pointer (NULL at start). */
void grpc_call_set_user(struct grpc_call *call, void *p);
void *grpc_call_user(const struct grpc_call *call);
/* Authentication state set by the call-start hook (NULL at start). */
void grpc_call_set_auth(struct grpc_call *call, void *p);
void *grpc_call_auth(const struct grpc_call *call);
const struct grpc_method *grpc_call_method(const struct grpc_call *call);
void *grpc_call_method_arg(const struct grpc_call *call);
/* First value of request header |name| (lower-case) or NULL. Borrowed,
 * valid until the call ends. */
const char *grpc_call_header(const struct grpc_call *call, const char *name);
/* Bytes from grpc_server_attach(|conn_info|). Borrowed. */
const void *grpc_call_conn_info(const struct grpc_call *call);
const char *grpc_call_peer(const struct grpc_call *call);
/* Absolute deadline (gw_clock_mono_us scale) or 0 when none. */
uint64_t grpc_call_deadline_us(const struct grpc_call *call);
/* Arena allocation freed when the call ends. Never NULL. */
void *grpc_call_alloc(struct grpc_call *call, size_t n);
char *grpc_call_strdup(struct grpc_call *call, const char *s);
/* Scratch allocation released as soon as the current handler callback
 * (on_message, on_half_close, on_writable) returns: for building a reply
 * that is sent before returning, on long streams where the call arena
 * would grow with every message. Never NULL. */
void *grpc_call_scratch_alloc(struct grpc_call *call, size_t n);
/* Outside handler callbacks (e.g. in a database callback of a long
 * stream): between begin and end, grpc_call_alloc/strdup take scratch
 * memory, and end releases it. Send what you built before calling end. */
void grpc_call_scratch_begin(struct grpc_call *call);
void grpc_call_scratch_end(struct grpc_call *call);
/* True once GRPC_SEND_FULL was returned and on_writable has not yet run. */
bool grpc_call_congested(const struct grpc_call *call);
/* Bytes queued for this call and not yet written to the socket. */
size_t grpc_call_out_pending(const struct grpc_call *call);

/* ---- client ---------------------------------------------------------------- */

/* A gateway endpoint URL, parsed (grpc_endpoint_parse). The parser only
 * reads text: host names are kept as written, resolving them (or refusing
 * to) is the caller's business. */
struct grpc_endpoint {
    bool is_unix;        /* unix:/path: h2c over a Unix socket */
    bool tls;            /* https:// */
    char host[256];      /* TCP: host name or IP literal, without brackets; "" for unix */
    uint16_t port;       /* TCP: 443 (https) or 80 (http) when the URL has none */
    char path[108];      /* unix: the absolute socket path (fits sockaddr_un.sun_path) */
    char authority[256]; /* :authority, "host:port" ("[v6]:port"); "localhost" for unix */
};

/* Parses |url|: "unix:/path", "unix:///path", "http://HOST[:PORT][/]" or
 * "https://HOST[:PORT][/]". HOST is a name, an IPv4 literal or an IPv6
 * literal in brackets ("[::1]"); PORT is 1..65535 in plain digits. Returns 0
 * with |*ep| filled, or -1 with a one-phrase reason in |err| (|*ep| is then
 * unspecified). */
int grpc_endpoint_parse(const char *url, struct grpc_endpoint *ep, char *err,
                        size_t errlen) GW_MUSTCHECK;

struct grpc_channel_opts {
    const char *authority;       /* :authority, default "localhost" */
    const char *scheme;          /* "http" or "https", default "http" */
    uint32_t max_recv_msg_bytes; /* 0 = 4 MiB */
    uint32_t keepalive_ms;       /* 0 = off */
    /* Called once when the connection is gone (after every call's done).
     * The channel is freed after it returns. */
    void (*on_close)(struct grpc_channel *ch, void *arg);
    void *arg;
};

/* Client message callback: |msg| is borrowed until the callback returns. */
typedef void (*grpc_ccall_msg_cb)(struct grpc_ccall *cc, void *msg, void *arg);
/* Called exactly once when the call ends (status from trailers, or
 * UNAVAILABLE/CANCELLED/DEADLINE_EXCEEDED/INTERNAL generated locally).
 * The call is freed after it returns. */
typedef void (*grpc_ccall_done_cb)(struct grpc_ccall *cc, int status, const char *message,
                                   void *arg);

/* Takes ownership of |bev| (even on failure). Returns NULL on failure. */
struct grpc_channel *grpc_channel_new(struct event_base *base, struct bufferevent *bev,
                                      const struct grpc_channel_opts *opts);
/* Closes the connection: every open call gets done(UNAVAILABLE), then
 * on_close; the channel is freed. */
void grpc_channel_close(struct grpc_channel *ch);
bool grpc_channel_is_closing(const struct grpc_channel *ch);

/* Starts a call. |metadata| is NULL or a NULL-terminated list of
 * name,value pairs. |timeout_ms| 0 = none. Returns the call, or NULL when
 * the channel is closing (then no callback runs). */
struct grpc_ccall *grpc_channel_start(struct grpc_channel *ch, const char *path,
                                      const ProtobufCMessageDescriptor *response,
                                      const char *const *metadata, uint64_t timeout_ms,
                                      grpc_ccall_msg_cb on_msg, grpc_ccall_done_cb on_done,
                                      void *arg);
/* Queues one request message. Returns GRPC_SEND_OK, GRPC_SEND_FULL (wait for
 * the writable callback if set) or GRPC_ERR_CLOSED. */
int grpc_ccall_send(struct grpc_ccall *cc, const ProtobufCMessage *msg) GW_MUSTCHECK;
int grpc_ccall_send_raw(struct grpc_ccall *cc, const uint8_t *data, size_t len) GW_MUSTCHECK;
/* Half-closes the request side. */
void grpc_ccall_close_send(struct grpc_ccall *cc);
/* Abandons the call: RST_STREAM CANCEL; done is NOT called afterwards. */
void grpc_ccall_cancel(struct grpc_ccall *cc);
void grpc_ccall_set_writable_cb(struct grpc_ccall *cc, void (*fn)(struct grpc_ccall *, void *));
/* Stops (true) or resumes delivering response messages (flow control). */
void grpc_ccall_pause_recv(struct grpc_ccall *cc, bool paused);
/* Response header or trailer |name| (lower-case) or NULL; borrowed. */
const char *grpc_ccall_header(const struct grpc_ccall *cc, const char *name);

/* Convenience: start + send |req| + close_send. */
struct grpc_ccall *grpc_channel_unary(struct grpc_channel *ch, const char *path,
                                      const ProtobufCMessage *req,
                                      const ProtobufCMessageDescriptor *response,
                                      const char *const *metadata, uint64_t timeout_ms,
                                      grpc_ccall_msg_cb on_msg, grpc_ccall_done_cb on_done,
                                      void *arg);

#endif /* GW_GRPC_H */
