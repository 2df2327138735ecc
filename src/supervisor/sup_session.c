/* The supervisor's side of the gateway: the ConnectSupervisor session
 * (semantics.md §14), PushSandboxLogs (§11), ReportMainProcessExit (§14)
 * and RefreshSandboxToken (§15).
 *
 * The session owns one HTTP/2 channel at a time. ConnectSupervisor,
 * PushSandboxLogs and every RelayStream run on it; ReportMainProcessExit
 * and RefreshSandboxToken each dial a connection of their own (upstream
 * does the same for the exit report, so a broken session cannot hold it
 * back). A session call that ends with a transport status (UNAVAILABLE,
 * CANCELLED, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN) drops the channel and
 * its relays; one the gateway ended with another status keeps the channel
 * and retries on it.
 *
 * Channels and dials outlive their owners by a little (a pending connect
 * cannot be cancelled; a channel closed inside one of its own callbacks
 * reports on_close later), so both go through small heap links whose
 * owner pointer is cleared when the owner lets go.
 */
#include "supervisor/supervisor.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <event2/bufferevent.h>
#include <jansson.h>
#include <openssl/ssl.h>

#include "http2/grpc.h"
#include "jwt/jwt.h"
#include "openshell.pb-c.h"
#include "reactor/reactor.h"

#define SVC                  "/openshell.v1.OpenShell/"
#define BACKOFF_MIN_MS       100
#define BACKOFF_MAX_MS       5000
#define DIAL_TIMEOUT_MS      10000
#define KEEPALIVE_MS         10000 /* HTTP/2 PING after this idle time */
#define HANDSHAKE_TIMEOUT_MS 20000 /* hello sent, session_accepted not yet */
#define HEARTBEAT_MIN_S      5
#define UNARY_TIMEOUT_MS     10000
#define LOG_BATCH_MAX        100
#define LOG_FLUSH_MS         500
#define PUSH_REOPEN_MS       5000
#define REFRESH_BACKOFF_MAX  30000
#define TOKEN_MAX            8192

/* ---- endpoint and token ----------------------------------------------------------- */

int sup_endpoint_parse(const char *url, struct sup_endpoint *out, char *err, size_t errlen)
{
    unsigned char buf[sizeof(struct in6_addr)];
    const char *host;
    int af = AF_INET;

    memset(out, 0, sizeof(*out));
    if (grpc_endpoint_parse(url, &out->gw, err, errlen) != 0)
        return -1;
    if (out->gw.is_unix)
        return 0;
    /* grpc_endpoint_parse() takes an IPv6 literal only in brackets. */
    host = strcmp(out->gw.host, "localhost") == 0 ? "127.0.0.1" : out->gw.host;
    if (inet_pton(AF_INET, host, buf) != 1) {
        af = AF_INET6;
        if (inet_pton(AF_INET6, host, buf) != 1) {
            snprintf(err, errlen,
                     "endpoint host '%.64s' must be a numeric IP address ([v6] in brackets) or "
                     "localhost: names are not resolved",
                     out->gw.host);
            return -1;
        }
    }
    if (inet_ntop(af, buf, out->addr, sizeof(out->addr)) == NULL) {
        snprintf(err, errlen, "cannot format endpoint address '%.64s'", out->gw.host);
        return -1;
    }
    return 0;
}

int sup_token_exp(const char *token, int64_t *exp_s)
{
    const char *dot1 = strchr(token, '.');
    const char *dot2 = dot1 != NULL ? strchr(dot1 + 1, '.') : NULL;
    size_t len;
    uint8_t *raw;
    long n;
    json_t *claims, *exp;
    int rc = -1;

    if (dot2 == NULL || strlen(token) > TOKEN_MAX)
        return -1;
    len = (size_t)(dot2 - dot1 - 1);
    raw = gw_xmalloc(len * 3 / 4 + 1);
    n = jwt_b64url_decode(dot1 + 1, len, raw);
    claims = n >= 0 ? json_loadb((const char *)raw, (size_t)n, JSON_REJECT_DUPLICATES, NULL) : NULL;
    free(raw);
    if (!json_is_object(claims))
        goto out;
    exp = json_object_get(claims, "exp");
    if (exp == NULL || json_is_null(exp)) {
        *exp_s = 0;
        rc = 0;
    } else if (json_is_integer(exp)) {
        *exp_s = (int64_t)json_integer_value(exp);
        rc = 0;
    } else if (json_is_real(exp)) {
        *exp_s = (int64_t)json_real_value(exp);
        rc = 0;
    }
out:
    json_decref(claims);
    return rc;
}

/* ---- dials and channel links ------------------------------------------------------- */

typedef void (*dial_done_fn)(void *owner, struct bufferevent *bev, const char *err);
typedef void (*chan_closed_fn)(void *owner, struct grpc_channel *ch);

struct dial {
    dial_done_fn done;
    void *owner; /* NULL: abandoned, the connection is dropped */
};

struct chan_link {
    chan_closed_fn closed;
    void *owner; /* NULL: abandoned */
};

struct oneshot;

enum sess_state {
    SESS_WAITING,   /* backoff timer armed */
    SESS_DIALING,   /* connecting */
    SESS_HANDSHAKE, /* hello sent */
    SESS_ACCEPTED,  /* session_accepted received */
};

/* A unary call on a connection of its own, retried with backoff. */
struct oneshot {
    struct sup_session *s;
    const char *name; /* for logs */
    const char *path;
    const ProtobufCMessageDescriptor *resp_desc;
    uint8_t *req;
    size_t req_len;
    unsigned backoff_ms, max_backoff_ms;
    bool (*gives_up)(int status);
    void (*on_ok)(struct sup_session *s, const ProtobufCMessage *resp);
    struct reactor_timer *timer;
    struct dial *dial;
    struct grpc_channel *ch;
    struct chan_link *link;
    struct grpc_ccall *cc;
    uint8_t *resp;
    size_t resp_len;
    bool have_resp;
    bool active;
};

struct log_item {
    int64_t ts_ms;
    enum log_level level;
    const char *target; /* static */
    char *msg;          /* valid UTF-8, NUL-terminated */
};

struct sup_session {
    struct reactor *r;
    struct sup_endpoint ep;
    char *sandbox_id, *instance_id;
    char *token; /* never logged */
    char *auth;  /* "Bearer <token>" */
    const char *md[3];
    struct ssl_ctx_st *tls;
    struct sup_relays *relays;
    enum sess_state state;
    struct dial *dial;
    struct grpc_channel *ch;
    struct chan_link *link;
    struct grpc_ccall *call; /* ConnectSupervisor */
    struct reactor_timer *retry, *heartbeat, *handshake;
    unsigned backoff_ms;
    unsigned failures; /* attempts since the last accepted session */
    char last_error[256];
    char session_id[64];
    /* logs */
    struct log_item *q; /* ring of SUP_LOG_PENDING_MAX */
    size_t q_head, q_len;
    uint64_t dropped;
    struct grpc_ccall *push;
    bool push_full;
    uint64_t push_retry_at_us;
    struct reactor_timer *flush, *flush_soon;
    /* unary calls */
    struct oneshot exit_report;
    bool exit_requested;
    struct oneshot refresh;
    struct reactor_timer *refresh_timer;
};

static void session_schedule(struct sup_session *s, int status);
static void push_flush(struct sup_session *s);

static void on_dialed(struct bufferevent *bev, const struct reactor_peer *peer, const char *err,
                      void *arg)
{
    struct dial *d = arg;

    if (d->owner == NULL) {
        if (bev != NULL)
            bufferevent_free(bev);
    } else {
        d->done(d->owner, bev, err);
    }
    free(d);
}

/* Starts connecting to the endpoint. Returns the dial (owned by the
 * reactor callback) or NULL with |err| filled. */
static struct dial *dial_start(struct sup_session *s, dial_done_fn done, void *owner, char *err,
                               size_t errlen)
{
    const struct grpc_endpoint *gw = &s->ep.gw;
    struct dial *d = gw_xcalloc(1, sizeof(*d));
    int rc;

    d->done = done;
    d->owner = owner;
    if (gw->is_unix)
        rc = reactor_connect_unix(s->r, gw->path, on_dialed, d);
    else
        rc = reactor_connect_tcp(s->r, s->ep.addr, gw->port, gw->tls ? s->tls : NULL,
                                 gw->tls ? gw->host : NULL, DIAL_TIMEOUT_MS, on_dialed, d);
    if (rc != 0) {
        snprintf(err, errlen, "cannot connect to the endpoint: %s",
                 rc == REACTOR_ERR_ADDR  ? "unusable address"
                 : rc == REACTOR_ERR_TLS ? "unusable TLS server name"
                                         : strerror(errno));
        free(d);
        return NULL;
    }
    return d;
}

static void on_chan_close(struct grpc_channel *ch, void *arg)
{
    struct chan_link *l = arg;

    if (l->owner != NULL)
        l->closed(l->owner, ch);
    free(l);
}

/* Wraps a connected |bev| (taken) in a channel. Returns NULL on failure. */
static struct grpc_channel *channel_new(struct sup_session *s, struct bufferevent *bev,
                                        chan_closed_fn closed, void *owner, struct chan_link **link)
{
    struct chan_link *l = gw_xcalloc(1, sizeof(*l));
    struct grpc_channel_opts o = {
        .authority = s->ep.gw.authority,
        .scheme = s->ep.gw.tls ? "https" : "http",
        .keepalive_ms = KEEPALIVE_MS,
        .on_close = on_chan_close,
        .arg = l,
    };
    struct grpc_channel *ch;

    l->closed = closed;
    l->owner = owner;
    ch = grpc_channel_new(reactor_base(s->r), bev, &o);
    if (ch == NULL) {
        free(l);
        return NULL;
    }
    *link = l;
    return ch;
}

/* Lets go of a channel: its on_close will not reach the owner. */
static void channel_drop(struct grpc_channel **ch, struct chan_link **link)
{
    struct grpc_channel *c = *ch;

    if (c == NULL)
        return;
    (*link)->owner = NULL;
    *ch = NULL;
    *link = NULL;
    if (!grpc_channel_is_closing(c))
        grpc_channel_close(c);
}

static unsigned jitter(unsigned ms)
{
    uint32_t r = 0;

    if (ms < 2 || gw_random_bytes(&r, sizeof(r)) != 0)
        return ms;
    return ms / 2 + r % (ms / 2 + 1); /* [ms/2, ms] */
}

/* ---- metadata and token --------------------------------------------------------------- */

static void set_token(struct sup_session *s, const char *token)
{
    if (s->token != NULL) {
        explicit_bzero(s->token, strlen(s->token));
        explicit_bzero(s->auth, strlen(s->auth));
        free(s->token);
        free(s->auth);
    }
    s->token = gw_xstrdup(token != NULL ? token : "");
    s->auth = gw_xasprintf("Bearer %s", s->token);
    s->md[0] = s->token[0] != '\0' ? "authorization" : NULL;
    s->md[1] = s->auth;
    s->md[2] = NULL;
}

static void schedule_refresh(struct sup_session *s)
{
    int64_t exp = 0, now = gw_now_wall_ms() / 1000;
    uint64_t delay_ms;

    if (s->token[0] == '\0' || sup_token_exp(s->token, &exp) != 0) {
        if (s->token[0] != '\0')
            log_warn("supervisor.token_unparsed",
                     LF_STR("reason", "the token's exp claim cannot be read; not refreshing"));
        return;
    }
    if (exp <= 0)
        return; /* never expires */
    delay_ms = exp > now ? (uint64_t)(exp - now) * 800 : 1000;
    if (delay_ms < 1000)
        delay_ms = 1000;
    log_info("supervisor.token_refresh_scheduled", LF_INT("exp", exp),
             LF_UINT("in_s", delay_ms / 1000));
    reactor_timer_arm(s->refresh_timer, delay_ms);
}

/* ---- log lines -------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at |p| (|n| bytes left), 0 if invalid. */
static size_t utf8_seq(const uint8_t *p, size_t n)
{
    uint8_t c = p[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xbf;

    if (c >= 0x01 && c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        need = 2;
    else if (c >= 0xe0 && c <= 0xef)
        need = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        need = 4;
    else
        return 0;
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (n < need || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < need; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    }
    return need;
}

/* Copies |len| bytes as valid UTF-8: NUL and invalid bytes become U+FFFD.
 * Caller owns, free(). */
static char *utf8_clean(const char *msg, size_t len)
{
    const uint8_t *p = (const uint8_t *)msg;
    char *out = gw_xmalloc(len * 3 + 1);
    size_t o = 0;

    for (size_t i = 0; i < len;) {
        size_t k = utf8_seq(p + i, len - i);
        if (k == 0) {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
            continue;
        }
        memcpy(out + o, p + i, k);
        o += k;
        i += k;
    }
    out[o] = '\0';
    return out;
}

static const char *level_text(enum log_level l)
{
    switch (l) {
    case LOG_ERROR:
        return "ERROR";
    case LOG_WARN:
        return "WARN";
    case LOG_INFO:
        return "INFO";
    case LOG_DEBUG:
        return "DEBUG";
    default:
        return "TRACE";
    }
}

void sup_session_log(struct sup_session *s, enum log_level level, const char *target,
                     const char *msg, size_t len)
{
    struct log_item *it;

    if (s == NULL)
        return;
    if (s->q_len == SUP_LOG_PENDING_MAX) { /* drop the oldest */
        free(s->q[s->q_head].msg);
        s->q_head = (s->q_head + 1) % SUP_LOG_PENDING_MAX;
        s->q_len--;
        s->dropped++;
    }
    it = &s->q[(s->q_head + s->q_len) % SUP_LOG_PENDING_MAX];
    it->ts_ms = gw_now_wall_ms();
    it->level = level;
    it->target = target;
    it->msg = utf8_clean(msg, len);
    s->q_len++;
    if (s->q_len >= LOG_BATCH_MAX && s->push != NULL && !s->push_full)
        reactor_timer_arm(s->flush_soon, 0);
}

static void slog(struct sup_session *s, enum log_level level, const char *fmt, ...) GW_PRINTF(3, 4);

/* A supervisor line of our own for the sandbox's log. */
static void slog(struct sup_session *s, enum log_level level, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    sup_session_log(s, level, SUP_TARGET_SUPERVISOR, buf, GW_MIN((size_t)n, sizeof(buf) - 1));
}

static void on_push_writable(struct grpc_ccall *cc, void *arg)
{
    struct sup_session *s = arg;

    s->push_full = false;
    push_flush(s);
}

static void on_push_done(struct grpc_ccall *cc, int status, const char *message, void *arg)
{
    struct sup_session *s = arg;

    s->push = NULL;
    s->push_full = false;
    s->push_retry_at_us = gw_now_mono_us() + PUSH_REOPEN_MS * 1000ULL;
    if (status != GRPC_STATUS_OK)
        log_warn("supervisor.log_push_ended", LF_STR("status", grpc_status_name(status)),
                 LF_STR("message", message));
}

static void push_open(struct sup_session *s)
{
    if (s->push != NULL || s->ch == NULL || s->state != SESS_ACCEPTED)
        return;
    s->push = grpc_channel_start(s->ch, SVC "PushSandboxLogs",
                                 &openshell__v1__push_sandbox_logs_response__descriptor, s->md, 0,
                                 NULL, on_push_done, s);
    if (s->push == NULL)
        return;
    s->push_full = false;
    grpc_ccall_set_writable_cb(s->push, on_push_writable);
    log_debug("supervisor.log_push_open");
}

static void fill_line(const struct sup_session *s, Openshell__V1__SandboxLogLine *l,
                      const struct log_item *it)
{
    *l = (Openshell__V1__SandboxLogLine)OPENSHELL__V1__SANDBOX_LOG_LINE__INIT;
    l->sandbox_id = s->sandbox_id;
    l->timestamp_ms = it->ts_ms;
    l->level = (char *)level_text(it->level);
    l->target = (char *)it->target;
    l->message = it->msg;
}

/* Sends one batch of up to LOG_BATCH_MAX queued lines (with the drop
 * notice first when lines were dropped). Returns false when nothing more
 * can be sent now. */
static bool push_batch(struct sup_session *s)
{
    Openshell__V1__SandboxLogLine lines[LOG_BATCH_MAX];
    Openshell__V1__SandboxLogLine *ptrs[LOG_BATCH_MAX];
    Openshell__V1__PushSandboxLogsRequest req = OPENSHELL__V1__PUSH_SANDBOX_LOGS_REQUEST__INIT;
    char note[96];
    size_t n = 0, taken = 0;
    int rv;

    if (s->dropped > 0) {
        struct log_item drop = {gw_now_wall_ms(), LOG_WARN, SUP_TARGET_SUPERVISOR, note};
        snprintf(note, sizeof(note), "%llu log lines dropped (more than %d pending)",
                 (unsigned long long)s->dropped, SUP_LOG_PENDING_MAX);
        fill_line(s, &lines[n++], &drop);
    }
    for (; n < LOG_BATCH_MAX && taken < s->q_len; n++, taken++)
        fill_line(s, &lines[n], &s->q[(s->q_head + taken) % SUP_LOG_PENDING_MAX]);
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        ptrs[i] = &lines[i];
    req.sandbox_id = s->sandbox_id;
    req.n_logs = n;
    req.logs = ptrs;
    rv = grpc_ccall_send(s->push, &req.base);
    if (rv < 0)
        return false; /* the call is ending; its done callback follows */
    s->dropped = 0;
    for (size_t i = 0; i < taken; i++) {
        free(s->q[s->q_head].msg);
        s->q_head = (s->q_head + 1) % SUP_LOG_PENDING_MAX;
    }
    s->q_len -= taken;
    if (rv == GRPC_SEND_FULL) {
        s->push_full = true;
        return false;
    }
    return true;
}

static void push_flush(struct sup_session *s)
{
    if (s->push == NULL && s->state == SESS_ACCEPTED && gw_now_mono_us() >= s->push_retry_at_us)
        push_open(s);
    while (s->push != NULL && !s->push_full && (s->q_len > 0 || s->dropped > 0)) {
        if (!push_batch(s))
            break;
    }
}

static void on_flush(struct reactor_timer *t, void *arg)
{
    push_flush(arg);
}

/* ---- unary calls on their own connection ------------------------------------------------ */

static void oneshot_attempt(struct oneshot *o);

static void oneshot_retry(struct oneshot *o, const char *why)
{
    unsigned d = jitter(o->backoff_ms);

    log_info("supervisor.call_retry", LF_STR("call", o->name), LF_STR("error", why),
             LF_UINT("retry_in_ms", d));
    reactor_timer_arm(o->timer, d);
    o->backoff_ms = GW_MIN(o->backoff_ms * 2, o->max_backoff_ms);
}

static void oneshot_on_msg(struct grpc_ccall *cc, void *msg, void *arg)
{
    struct oneshot *o = arg;
    const ProtobufCMessage *m = msg;

    if (o->have_resp)
        return;
    o->resp_len = protobuf_c_message_get_packed_size(m);
    o->resp = gw_xmalloc(o->resp_len + 1);
    protobuf_c_message_pack(m, o->resp);
    o->have_resp = true;
}

static void oneshot_finish_ok(struct oneshot *o)
{
    ProtobufCMessage *resp =
        protobuf_c_message_unpack(o->resp_desc, NULL, o->resp_len, o->have_resp ? o->resp : NULL);

    if (resp == NULL) {
        oneshot_retry(o, "the gateway answered without a valid response");
        return;
    }
    o->active = false;
    o->on_ok(o->s, resp);
    protobuf_c_message_free_unpacked(resp, NULL);
}

static void oneshot_on_done(struct grpc_ccall *cc, int status, const char *message, void *arg)
{
    struct oneshot *o = arg;
    char why[300];

    o->cc = NULL;
    channel_drop(&o->ch, &o->link); /* one call per connection */
    if (status == GRPC_STATUS_OK) {
        oneshot_finish_ok(o);
    } else if (o->gives_up != NULL && o->gives_up(status)) {
        log_error("supervisor.call_failed", LF_STR("call", o->name),
                  LF_STR("status", grpc_status_name(status)), LF_STR("message", message),
                  LF_STR("action", "giving up"));
        o->active = false;
    } else {
        snprintf(why, sizeof(why), "%s: %s", grpc_status_name(status), message);
        oneshot_retry(o, why);
    }
    free(o->resp);
    o->resp = NULL;
    o->have_resp = false;
}

static void oneshot_chan_closed(void *owner, struct grpc_channel *ch)
{
    struct oneshot *o = owner;

    o->ch = NULL;
    o->link = NULL;
}

static void oneshot_dialed(void *owner, struct bufferevent *bev, const char *err)
{
    struct oneshot *o = owner;
    char why[300];

    o->dial = NULL;
    if (bev == NULL) {
        snprintf(why, sizeof(why), "connect: %s", err != NULL ? err : "failed");
        oneshot_retry(o, why);
        return;
    }
    o->ch = channel_new(o->s, bev, oneshot_chan_closed, o, &o->link);
    if (o->ch != NULL)
        o->cc = grpc_channel_start(o->ch, o->path, o->resp_desc, o->s->md, UNARY_TIMEOUT_MS,
                                   oneshot_on_msg, oneshot_on_done, o);
    if (o->cc == NULL) {
        channel_drop(&o->ch, &o->link);
        oneshot_retry(o, "cannot start the call");
        return;
    }
    if (grpc_ccall_send_raw(o->cc, o->req, o->req_len) < 0) {
        grpc_ccall_cancel(o->cc);
        o->cc = NULL;
        channel_drop(&o->ch, &o->link);
        oneshot_retry(o, "cannot send the request");
        return;
    }
    grpc_ccall_close_send(o->cc);
}

static void oneshot_attempt(struct oneshot *o)
{
    char err[256];

    if (!o->active || o->dial != NULL || o->cc != NULL)
        return;
    o->dial = dial_start(o->s, oneshot_dialed, o, err, sizeof(err));
    if (o->dial == NULL)
        oneshot_retry(o, err);
}

static void on_oneshot_timer(struct reactor_timer *t, void *arg)
{
    oneshot_attempt(arg);
}

/* Starts (or restarts) the call with |req| packed. */
static void oneshot_start(struct oneshot *o, const ProtobufCMessage *req)
{
    free(o->req);
    o->req_len = protobuf_c_message_get_packed_size(req);
    o->req = gw_xmalloc(o->req_len + 1);
    protobuf_c_message_pack(req, o->req);
    o->active = true;
    o->backoff_ms = BACKOFF_MIN_MS;
    if (o->dial == NULL && o->cc == NULL)
        reactor_timer_arm(o->timer, 0);
}

static void oneshot_init(struct sup_session *s, struct oneshot *o, const char *name,
                         const char *path, const ProtobufCMessageDescriptor *resp_desc,
                         unsigned max_backoff_ms)
{
    o->s = s;
    o->name = name;
    o->path = path;
    o->resp_desc = resp_desc;
    o->max_backoff_ms = max_backoff_ms;
    o->backoff_ms = BACKOFF_MIN_MS;
    o->timer = reactor_timer_new(s->r, on_oneshot_timer, o);
}

static void oneshot_free(struct oneshot *o)
{
    if (o->cc != NULL)
        grpc_ccall_cancel(o->cc);
    o->cc = NULL;
    channel_drop(&o->ch, &o->link);
    if (o->dial != NULL)
        o->dial->owner = NULL;
    if (o->timer != NULL)
        reactor_timer_free(o->timer);
    free(o->req);
    free(o->resp);
}

/* ReportMainProcessExit: these answers cannot change by retrying. */
static bool exit_gives_up(int status)
{
    return status == GRPC_STATUS_INVALID_ARGUMENT || status == GRPC_STATUS_PERMISSION_DENIED ||
           status == GRPC_STATUS_NOT_FOUND || status == GRPC_STATUS_FAILED_PRECONDITION;
}

static void exit_reported(struct sup_session *s, const ProtobufCMessage *resp)
{
    log_info("supervisor.exit_reported");
}

void sup_session_report_exit(struct sup_session *s, int exit_code)
{
    Openshell__V1__ReportMainProcessExitRequest req =
        OPENSHELL__V1__REPORT_MAIN_PROCESS_EXIT_REQUEST__INIT;

    if (s == NULL || s->exit_requested)
        return;
    s->exit_requested = true;
    slog(s, LOG_WARN, "main process exited with code %d", exit_code);
    req.sandbox_id = s->sandbox_id;
    req.instance_id = s->instance_id;
    req.exit_code = exit_code;
    oneshot_start(&s->exit_report, &req.base);
}

static void token_refreshed(struct sup_session *s, const ProtobufCMessage *resp)
{
    const Openshell__V1__RefreshSandboxTokenResponse *r = (const void *)resp;

    if (r->token == NULL || r->token[0] == '\0') {
        log_warn("supervisor.token_refresh_failed", LF_STR("error", "empty token in the answer"));
        s->refresh.active = true;
        oneshot_retry(&s->refresh, "empty token");
        return;
    }
    set_token(s, r->token);
    log_info("supervisor.token_refreshed", LF_INT("expires_at_ms", r->expires_at_ms));
    schedule_refresh(s);
}

static void on_refresh_timer(struct reactor_timer *t, void *arg)
{
    struct sup_session *s = arg;
    Openshell__V1__RefreshSandboxTokenRequest req =
        OPENSHELL__V1__REFRESH_SANDBOX_TOKEN_REQUEST__INIT;

    oneshot_start(&s->refresh, &req.base);
}

/* ---- the session ---------------------------------------------------------------------- */

static const char *state_name(enum sess_state st)
{
    static const char *const names[] = {"waiting", "dialing", "handshake", "accepted"};
    return names[st];
}

static void set_state(struct sup_session *s, enum sess_state st)
{
    if (s->state == st)
        return;
    log_debug("supervisor.session_state", LF_STR("from", state_name(s->state)),
              LF_STR("to", state_name(st)));
    s->state = st;
}

static int send_msg(struct sup_session *s, const Openshell__V1__SupervisorMessage *m)
{
    if (s->call == NULL)
        return GRPC_ERR_CLOSED;
    return grpc_ccall_send(s->call, &m->base);
}

static void on_heartbeat(struct reactor_timer *t, void *arg)
{
    struct sup_session *s = arg;
    Openshell__V1__SupervisorHeartbeat hb = OPENSHELL__V1__SUPERVISOR_HEARTBEAT__INIT;
    Openshell__V1__SupervisorMessage m = OPENSHELL__V1__SUPERVISOR_MESSAGE__INIT;

    m.payload_case = OPENSHELL__V1__SUPERVISOR_MESSAGE__PAYLOAD_HEARTBEAT;
    m.heartbeat = &hb;
    if (send_msg(s, &m) < 0)
        log_debug("supervisor.heartbeat_failed");
}

static bool transport_status(int status)
{
    return status == GRPC_STATUS_UNAVAILABLE || status == GRPC_STATUS_CANCELLED ||
           status == GRPC_STATUS_DEADLINE_EXCEEDED || status == GRPC_STATUS_INTERNAL ||
           status == GRPC_STATUS_UNKNOWN;
}

static bool permanent_status(int status)
{
    return status == GRPC_STATUS_UNAUTHENTICATED || status == GRPC_STATUS_PERMISSION_DENIED ||
           status == GRPC_STATUS_NOT_FOUND || status == GRPC_STATUS_INVALID_ARGUMENT;
}

/* Drops the channel with everything on it (relays, log stream). */
static void session_drop_channel(struct sup_session *s)
{
    if (s->push != NULL) {
        grpc_ccall_cancel(s->push);
        s->push = NULL;
    }
    channel_drop(&s->ch, &s->link);
}

/* The attempt (or the accepted session) is over: log it and arm the retry.
 * |status| -1: a connection failure described in |why|. */
static void session_end(struct sup_session *s, int status, const char *why)
{
    bool was_accepted = s->state == SESS_ACCEPTED;

    reactor_timer_disarm(s->heartbeat);
    reactor_timer_disarm(s->handshake);
    if (s->call != NULL) {
        grpc_ccall_cancel(s->call);
        s->call = NULL;
    }
    snprintf(s->last_error, sizeof(s->last_error), "%s", why);
    if (was_accepted) {
        log_warn("supervisor.session_lost", LF_STR("session_id", s->session_id),
                 LF_STR("status", status >= 0 ? grpc_status_name(status) : "CONNECTION"),
                 LF_STR("message", why));
        slog(s, LOG_WARN, "session with the gateway lost: %s", why);
    } else if (s->failures == 0 || permanent_status(status)) {
        log_warn("supervisor.session_failed",
                 LF_STR("status", status >= 0 ? grpc_status_name(status) : "CONNECTION"),
                 LF_STR("message", why), LF_UINT("attempt", s->failures + 1));
    } else {
        log_debug("supervisor.session_failed",
                  LF_STR("status", status >= 0 ? grpc_status_name(status) : "CONNECTION"),
                  LF_STR("message", why), LF_UINT("attempt", s->failures + 1));
    }
    s->failures++;
    if (status < 0 || transport_status(status))
        session_drop_channel(s);
    session_schedule(s, status);
}

static void session_accepted(struct sup_session *s, const Openshell__V1__SessionAccepted *a)
{
    unsigned hb = GW_MAX(a->heartbeat_interval_secs, HEARTBEAT_MIN_S);

    if (s->state == SESS_ACCEPTED)
        return;
    reactor_timer_disarm(s->handshake);
    snprintf(s->session_id, sizeof(s->session_id), "%s", a->session_id ? a->session_id : "");
    set_state(s, SESS_ACCEPTED);
    s->backoff_ms = BACKOFF_MIN_MS;
    s->failures = 0;
    reactor_timer_arm_periodic(s->heartbeat, (uint64_t)hb * 1000);
    log_info("supervisor.session_connected", LF_STR("session_id", s->session_id),
             LF_STR("endpoint", s->ep.gw.is_unix ? s->ep.gw.path : s->ep.gw.authority),
             LF_UINT("heartbeat_s", hb));
    slog(s, LOG_INFO, "session with the gateway connected (session %s)", s->session_id);
    s->push_retry_at_us = 0;
    push_flush(s);
}

static void on_gateway_msg(struct grpc_ccall *cc, void *msg, void *arg)
{
    struct sup_session *s = arg;
    const Openshell__V1__GatewayMessage *m = msg;

    switch (m->payload_case) {
    case OPENSHELL__V1__GATEWAY_MESSAGE__PAYLOAD_SESSION_ACCEPTED:
        session_accepted(s, m->session_accepted);
        break;
    case OPENSHELL__V1__GATEWAY_MESSAGE__PAYLOAD_SESSION_REJECTED: {
        char why[300];
        snprintf(why, sizeof(why), "session rejected: %s",
                 m->session_rejected->reason ? m->session_rejected->reason : "");
        session_end(s, GRPC_STATUS_PERMISSION_DENIED, why);
        break;
    }
    case OPENSHELL__V1__GATEWAY_MESSAGE__PAYLOAD_HEARTBEAT:
        log_trace("supervisor.gateway_heartbeat");
        break;
    case OPENSHELL__V1__GATEWAY_MESSAGE__PAYLOAD_RELAY_OPEN:
        sup_relays_open(s->relays, m->relay_open);
        break;
    case OPENSHELL__V1__GATEWAY_MESSAGE__PAYLOAD_RELAY_CLOSE:
        log_debug("supervisor.relay_close_received",
                  LF_STR("channel_id", m->relay_close->channel_id),
                  LF_STR("reason", m->relay_close->reason));
        break;
    default:
        log_debug("supervisor.gateway_message_unknown", LF_INT("case", m->payload_case));
        break;
    }
}

static void on_session_done(struct grpc_ccall *cc, int status, const char *message, void *arg)
{
    struct sup_session *s = arg;

    s->call = NULL; /* freed by the gRPC layer */
    session_end(s, status, message);
}

static void on_handshake_timeout(struct reactor_timer *t, void *arg)
{
    struct sup_session *s = arg;

    session_end(s, GRPC_STATUS_DEADLINE_EXCEEDED, "no session_accepted from the gateway in time");
}

/* ConnectSupervisor on the current channel, hello first. */
static void session_start_call(struct sup_session *s)
{
    Openshell__V1__SupervisorHello hello = OPENSHELL__V1__SUPERVISOR_HELLO__INIT;
    Openshell__V1__SupervisorMessage m = OPENSHELL__V1__SUPERVISOR_MESSAGE__INIT;

    s->call = grpc_channel_start(s->ch, SVC "ConnectSupervisor",
                                 &openshell__v1__gateway_message__descriptor, s->md, 0,
                                 on_gateway_msg, on_session_done, s);
    if (s->call == NULL) {
        session_end(s, GRPC_STATUS_UNAVAILABLE, "the connection is closing");
        return;
    }
    set_state(s, SESS_HANDSHAKE);
    hello.sandbox_id = s->sandbox_id;
    hello.instance_id = s->instance_id;
    m.payload_case = OPENSHELL__V1__SUPERVISOR_MESSAGE__PAYLOAD_HELLO;
    m.hello = &hello;
    if (send_msg(s, &m) < 0) {
        session_end(s, GRPC_STATUS_UNAVAILABLE, "cannot send hello");
        return;
    }
    reactor_timer_arm(s->handshake, HANDSHAKE_TIMEOUT_MS);
}

static void session_chan_closed(void *owner, struct grpc_channel *ch)
{
    struct sup_session *s = owner;

    s->ch = NULL;
    s->link = NULL;
    s->push = NULL; /* its done callback already ran */
    if (s->call != NULL || s->state == SESS_HANDSHAKE || s->state == SESS_ACCEPTED)
        session_end(s, GRPC_STATUS_UNAVAILABLE, "connection closed");
}

static void session_dialed(void *owner, struct bufferevent *bev, const char *err)
{
    struct sup_session *s = owner;

    s->dial = NULL;
    if (bev == NULL) {
        char why[300];
        snprintf(why, sizeof(why), "connect %s: %s",
                 s->ep.gw.is_unix ? s->ep.gw.path : s->ep.gw.authority,
                 err != NULL ? err : "failed");
        session_end(s, -1, why);
        return;
    }
    s->ch = channel_new(s, bev, session_chan_closed, s, &s->link);
    if (s->ch == NULL) {
        session_end(s, -1, "HTTP/2 session setup failed");
        return;
    }
    session_start_call(s);
}

static void on_retry(struct reactor_timer *t, void *arg)
{
    struct sup_session *s = arg;
    char err[256];

    if (s->ch != NULL && !grpc_channel_is_closing(s->ch)) {
        session_start_call(s);
        return;
    }
    session_drop_channel(s);
    set_state(s, SESS_DIALING);
    s->dial = dial_start(s, session_dialed, s, err, sizeof(err));
    if (s->dial == NULL)
        session_end(s, -1, err);
}

static void session_schedule(struct sup_session *s, int status)
{
    unsigned d;

    set_state(s, SESS_WAITING);
    if (reactor_timer_armed(s->retry))
        return;
    if (permanent_status(status)) {
        d = BACKOFF_MAX_MS;
    } else {
        d = jitter(s->backoff_ms);
        s->backoff_ms = GW_MIN(s->backoff_ms * 2, BACKOFF_MAX_MS);
    }
    log_debug("supervisor.session_retry", LF_UINT("in_ms", d));
    reactor_timer_arm(s->retry, d);
}

/* ---- relays' view of the session ----------------------------------------------------------- */

static void on_relay_result(void *arg, const char *channel_id, const char *error)
{
    struct sup_session *s = arg;
    Openshell__V1__RelayOpenResult res = OPENSHELL__V1__RELAY_OPEN_RESULT__INIT;
    Openshell__V1__SupervisorMessage m = OPENSHELL__V1__SUPERVISOR_MESSAGE__INIT;

    res.channel_id = (char *)channel_id;
    res.success = error == NULL;
    res.error = (char *)(error != NULL ? error : "");
    m.payload_case = OPENSHELL__V1__SUPERVISOR_MESSAGE__PAYLOAD_RELAY_OPEN_RESULT;
    m.relay_open_result = &res;
    if (error != NULL)
        slog(s, LOG_WARN, "relay %s: target failed: %s", channel_id, error);
    if (send_msg(s, &m) < 0)
        log_debug("supervisor.relay_result_unsent", LF_STR("channel_id", channel_id));
}

static struct grpc_channel *relay_channel(void *arg, const char *const **metadata)
{
    struct sup_session *s = arg;

    if (s->ch == NULL || grpc_channel_is_closing(s->ch))
        return NULL;
    *metadata = s->md;
    return s->ch;
}

/* ---- public ------------------------------------------------------------------------------- */

struct sup_session *sup_session_new(struct reactor *r, const struct sup_session_opts *o, char *err,
                                    size_t errlen)
{
    struct sup_session *s;
    struct sup_relays_opts ro = {
        .ssh_socket = o->ssh_socket,
        .on_result = on_relay_result,
        .channel = relay_channel,
    };

    s = gw_xcalloc(1, sizeof(*s));
    s->r = r;
    s->ep = *o->endpoint;
    if (s->ep.gw.tls) {
        s->tls = reactor_tls_client_ctx(o->ca_file, NULL, NULL, false, err, errlen);
        if (s->tls == NULL) {
            free(s);
            return NULL;
        }
    }
    s->sandbox_id = gw_xstrdup(o->sandbox_id);
    s->instance_id = gw_xstrdup(o->instance_id);
    set_token(s, o->token);
    ro.arg = s;
    s->relays = sup_relays_new(r, &ro);
    s->q = gw_xcalloc(SUP_LOG_PENDING_MAX, sizeof(*s->q));
    s->retry = reactor_timer_new(r, on_retry, s);
    s->heartbeat = reactor_timer_new(r, on_heartbeat, s);
    s->handshake = reactor_timer_new(r, on_handshake_timeout, s);
    s->flush = reactor_timer_new(r, on_flush, s);
    s->flush_soon = reactor_timer_new(r, on_flush, s);
    s->refresh_timer = reactor_timer_new(r, on_refresh_timer, s);
    oneshot_init(s, &s->exit_report, "ReportMainProcessExit", SVC "ReportMainProcessExit",
                 &openshell__v1__report_main_process_exit_response__descriptor, BACKOFF_MAX_MS);
    s->exit_report.gives_up = exit_gives_up;
    s->exit_report.on_ok = exit_reported;
    oneshot_init(s, &s->refresh, "RefreshSandboxToken", SVC "RefreshSandboxToken",
                 &openshell__v1__refresh_sandbox_token_response__descriptor, REFRESH_BACKOFF_MAX);
    s->refresh.on_ok = token_refreshed;
    s->backoff_ms = BACKOFF_MIN_MS;
    s->state = SESS_WAITING;
    reactor_timer_arm_periodic(s->flush, LOG_FLUSH_MS);
    reactor_timer_arm(s->retry, 0);
    schedule_refresh(s);
    return s;
}

void sup_session_free(struct sup_session *s)
{
    if (s == NULL)
        return;
    sup_relays_free(s->relays); /* cancels their calls before the channel goes */
    if (s->call != NULL)
        grpc_ccall_cancel(s->call);
    s->call = NULL;
    session_drop_channel(s);
    if (s->dial != NULL)
        s->dial->owner = NULL;
    oneshot_free(&s->exit_report);
    oneshot_free(&s->refresh);
    reactor_timer_free(s->retry);
    reactor_timer_free(s->heartbeat);
    reactor_timer_free(s->handshake);
    reactor_timer_free(s->flush);
    reactor_timer_free(s->flush_soon);
    reactor_timer_free(s->refresh_timer);
    for (size_t i = 0; i < s->q_len; i++)
        free(s->q[(s->q_head + i) % SUP_LOG_PENDING_MAX].msg);
    free(s->q);
    set_token(s, NULL); /* wipes the old one */
    free(s->token);
    free(s->auth);
    free(s->sandbox_id);
    free(s->instance_id);
    if (s->tls != NULL)
        SSL_CTX_free(s->tls);
    free(s);
}

bool sup_session_connected(const struct sup_session *s)
{
    return s != NULL && s->state == SESS_ACCEPTED;
}
