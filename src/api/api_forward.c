/* openshell.v1 CreateSshSession, RevokeSshSession and ForwardTcp
 * (semantics.md §13).
 *
 * An SSH session is a token that lets ForwardTcp reach one READY sandbox.
 * The store keeps only the token's SHA-256 (sql/005_ssh_sessions.sql), and
 * deletes a sandbox's sessions when it is stopped or removed.
 *
 * ForwardTcp bridges one client stream and one relay (api_session.c) with
 * flow control both ways, so memory per forward stays bounded:
 *
 *   client data -> api_relay_write(); API_RELAY_FULL pauses client input
 *                  (HTTP/2 flow control then slows the client) until the
 *                  relay's on_writable;
 *   relay data  -> TcpForwardFrame{data} chunks of at most 64 KiB: a
 *                  hand-encoded field header plus the relay's bytes, sent
 *                  as two parts (one copy, no protobuf-c, no arena);
 *                  GRPC_SEND_FULL pauses the relay until the call's
 *                  on_writable.
 *
 * Relay callbacks never end the call or the relay themselves: they record
 * what should happen and wake the forward's deferred event, which runs
 * from the loop outside every relay and gRPC callback. That keeps
 * api_relay_close() and grpc_call_pause_recv(false) (which may deliver
 * messages, and even on_cancel, synchronously) out of nested calls. */
#include "api/api.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>
#include <openssl/evp.h>

#include "api/api_int.h"
#include "openshell.pb-c.h"
#include "store/store.h"

#define FWD_PER_TOKEN   3           /* concurrent forwards per SSH session token */
#define FWD_PER_SANDBOX 20          /* concurrent forwards per sandbox */
#define FWD_CHUNK       (64 * 1024) /* largest data frame sent to the client */
#define FWD_HDR         4           /* tag byte + varint length of at most FWD_CHUNK (3 bytes) */
#define HOST_MAX        253         /* CreateSshSessionResponse.gateway_host limit */

typedef Openshell__V1__TcpForwardFrame frame_msg;

/* ---- tokens and targets (pure) --------------------------------------------------- */

void api_ssh_token_hash(const char *token, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    int ok = EVP_Digest(token, strlen(token), md, &n, EVP_sha256(), NULL);
    GW_ASSERT(ok == 1 && n == 32);
    for (unsigned int i = 0; i < n; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

/* |s| without surrounding ASCII whitespace, as (start, length). */
static const char *trim(const char *s, size_t *len)
{
    while (*s != '\0' && isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    *len = n;
    return s;
}

const char *api_forward_tcp_target(const char *host, uint32_t port, char *out, size_t outlen)
{
    static const char not_loopback[] = "tcp target host must be loopback";
    char buf[INET6_ADDRSTRLEN];
    unsigned char addr[16];
    size_t n;

    if (port == 0 || port > 65535)
        return "tcp target port must be between 1 and 65535";
    host = trim(host != NULL ? host : "", &n);
    if (n == 0)
        return "tcp target host is required";
    if (n >= sizeof(buf))
        return not_loopback;
    memcpy(buf, host, n);
    buf[n] = '\0';
    if (strcasecmp(buf, "localhost") == 0) {
        snprintf(out, outlen, "127.0.0.1");
        return NULL;
    }
    if (inet_pton(AF_INET, buf, addr) == 1) {
        if (addr[0] != 127)
            return not_loopback;
        return inet_ntop(AF_INET, addr, out, (socklen_t)outlen) ? NULL : not_loopback;
    }
    if (inet_pton(AF_INET6, buf, addr) == 1) {
        static const unsigned char loop6[16] = {[15] = 1};
        if (memcmp(addr, loop6, 16) != 0)
            return not_loopback;
        return inet_ntop(AF_INET6, addr, out, (socklen_t)outlen) ? NULL : not_loopback;
    }
    return not_loopback;
}

/* CreateSshSessionResponse.gateway_host goes into an SSH ProxyCommand:
 * alphanumerics and . - : [ ] only, 1..253 bytes (openshell-v1.md). */
static bool gateway_host_ok(const char *h)
{
    size_t n = h != NULL ? strlen(h) : 0;
    if (n == 0 || n > HOST_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)h[i];
        if (!isalnum(c) && strchr(".-:[]", c) == NULL)
            return false;
    }
    return true;
}

/* ---- CreateSshSession ---------------------------------------------------------- */

struct create_op {
    char sandbox_id[40]; /* canonical id of the sandbox (echoed: charset-safe) */
    char token[37];
    char token_hash[65];
    int64_t expires_ms; /* 0 = never */
};

static void create_done(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct create_op *op = arg;
    struct api *a = grpc_call_method_arg(call);

    if (store_is_raise_exception(r) && strcmp(r->error, "sandbox_not_found") == 0) {
        grpc_call_finish(call, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    if (store_is_raise_exception(r) && strcmp(r->error, "sandbox_not_ready") == 0) {
        grpc_call_finish(call, GRPC_STATUS_FAILED_PRECONDITION, "sandbox is not ready");
        return;
    }
    if (r->status != STORE_OK || store_ntuples(r) != 1) {
        api_finish_store_error(call, r, "ssh session");
        return;
    }
    Openshell__V1__CreateSshSessionResponse resp = OPENSHELL__V1__CREATE_SSH_SESSION_RESPONSE__INIT;
    resp.sandbox_id = op->sandbox_id;
    resp.token = op->token;
    resp.gateway_host = a->listen_host;
    resp.gateway_port = a->listen_port;
    resp.gateway_scheme = a->listen_tls ? "https" : "http";
    resp.expires_at_ms = op->expires_ms;
    log_info("ssh_session.created", LF_STR("sandbox_id", op->sandbox_id),
             LF_STR("workspace", store_get(r, 0, STORE_SSH_NEW_WORKSPACE)),
             LF_STR("by", api_call_principal(call)->subject),
             LF_INT("expires_at_ms", op->expires_ms));
    grpc_call_reply(call, &resp.base);
}

static void create_ready(struct grpc_call *call, const struct api_sb_row *row, void *arg)
{
    struct api *a = grpc_call_method_arg(call);
    (void)arg;

    /* Checked before a token exists: the reply must be usable as is. */
    if (!gateway_host_ok(a->listen_host) || a->listen_port == 0) {
        log_error("ssh_session.no_listener", LF_STR("host", a->listen_host),
                  LF_UINT("port", a->listen_port));
        grpc_call_finish(call, GRPC_STATUS_INTERNAL,
                         "the gateway's listen address is not known; cannot create SSH sessions");
        return;
    }
    struct create_op *op = grpc_call_alloc(call, sizeof(*op));
    snprintf(op->sandbox_id, sizeof(op->sandbox_id), "%s", row->id);
    gw_uuid4(op->token);
    api_ssh_token_hash(op->token, op->token_hash);
    int64_t now = gw_now_wall_ms();
    uint64_t ttl = a->opts.ssh_session_ttl_secs;
    op->expires_ms = 0;
    if (ttl > 0)
        op->expires_ms = ttl > (uint64_t)(INT64_MAX - now) / 1000 ? INT64_MAX / 1000 * 1000
                                                                  : now + (int64_t)ttl * 1000;
    char exp[24];
    const char *p[] = {op->token_hash, op->sandbox_id, api_call_principal(call)->subject,
                       api_u64(exp, (uint64_t)op->expires_ms)};
    api_query(call, &store_ssh_session_create, p, NULL, create_done, op);
}

static void create_ssh_session(struct grpc_call *call, void *msg)
{
    Openshell__V1__CreateSshSessionRequest *req = msg;
    if (req->sandbox_id == NULL || req->sandbox_id[0] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "sandbox_id is required");
        return;
    }
    if (api_store_unavailable(call))
        return;
    api_sandbox_require_ready(call, req->sandbox_id, create_ready, NULL);
}

/* ---- RevokeSshSession ---------------------------------------------------------- */

struct revoke_op {
    char token_hash[65];
    char sandbox_id[40];
};

static void revoke_done(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct revoke_op *op = arg;
    if (r->status != STORE_OK || store_ntuples(r) != 1) {
        api_finish_store_error(call, r, "ssh session");
        return;
    }
    const char *outcome = store_get(r, 0, 0);
    if (strcmp(outcome, "conflict") == 0) {
        grpc_call_finish(call, GRPC_STATUS_ABORTED,
                         "ssh session was modified concurrently; retry the request");
        return;
    }
    if (strcmp(outcome, "revoked") == 0)
        log_info("ssh_session.revoked", LF_STR("sandbox_id", op->sandbox_id),
                 LF_STR("by", api_call_principal(call)->subject));
    Openshell__V1__RevokeSshSessionResponse resp = OPENSHELL__V1__REVOKE_SSH_SESSION_RESPONSE__INIT;
    resp.revoked = true; /* "revoked" or "already_revoked" */
    grpc_call_reply(call, &resp.base);
}

static void revoke_authorized(struct grpc_call *call, struct revoke_op *op)
{
    const char *p[] = {op->token_hash, op->sandbox_id, api_call_principal(call)->subject};
    api_query(call, &store_ssh_session_revoke, p, NULL, revoke_done, op);
}

/* Not a member of the session's workspace: the session does not exist for
 * this caller (NOT_FOUND, as upstream), rather than PERMISSION_DENIED. */
static void revoke_member_checked(struct grpc_call *call, const struct store_result *r, void *arg)
{
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "membership");
        return;
    }
    if (store_ntuples(r) == 0) {
        grpc_call_finish(call, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    revoke_authorized(call, arg);
}

static void revoke_found(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct revoke_op *op = arg;
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "ssh session");
        return;
    }
    if (store_ntuples(r) == 0) {
        Openshell__V1__RevokeSshSessionResponse resp =
            OPENSHELL__V1__REVOKE_SSH_SESSION_RESPONSE__INIT;
        resp.revoked = false;
        grpc_call_reply(call, &resp.base);
        return;
    }
    snprintf(op->sandbox_id, sizeof(op->sandbox_id), "%s", store_get(r, 0, STORE_SSH_SANDBOX_ID));
    const struct api_principal *pr = api_call_principal(call);
    if (pr->platform_admin) {
        revoke_authorized(call, op);
        return;
    }
    const char *p[] = {grpc_call_strdup(call, store_get(r, 0, STORE_SSH_WORKSPACE)), pr->subject};
    api_query(call, &store_member_role, p, NULL, revoke_member_checked, op);
}

static void revoke_ssh_session(struct grpc_call *call, void *msg)
{
    Openshell__V1__RevokeSshSessionRequest *req = msg;
    if (req->token == NULL || req->token[0] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "token is required");
        return;
    }
    if (api_store_unavailable(call))
        return;
    struct revoke_op *op = grpc_call_alloc(call, sizeof(*op));
    api_ssh_token_hash(req->token, op->token_hash);
    op->sandbox_id[0] = '\0';
    const char *p[] = {op->token_hash};
    api_query(call, &store_ssh_session_get, p, NULL, revoke_found, op);
}

/* ---- ForwardTcp: state ------------------------------------------------------------
 *
 * Until the token is accepted the request lives in the call arena and the
 * call's user pointer belongs to api_query(). Then it becomes a heap
 * |struct fwd|, the user pointer, registered in a->forwards for the caps.
 */

/* The validated init frame (call arena). */
struct fwd_req {
    const char *sandbox_id; /* as requested */
    const char *service_id; /* NULL when empty */
    const char *token;      /* trimmed */
    bool ssh;               /* the supervisor's SSH server, else |host|:|port| */
    char host[INET6_ADDRSTRLEN];
    uint16_t port;
    char sb_id[40]; /* canonical sandbox id, once resolved */
    char token_hash[65];
};

struct fwd {
    struct fwd *prev, *next; /* a->forwards */
    struct api *a;
    struct grpc_call *call; /* NULL once the call is gone (cancelled) */
    struct api_relay *r;    /* NULL once the relay is over */
    struct event *defer;    /* runs fwd_deferred() from the loop */
    char sandbox_id[40];
    char token_hash[65];
    char target[64];               /* for logs: "ssh" or "host:port" */
    uint64_t bytes_up, bytes_down; /* client -> target, target -> client */
    uint64_t start_us;
    bool input_done;   /* client half-closed or sent a non-data frame */
    bool relay_paused; /* we paused the relay: the call's output is full */
    bool want_resume;  /* resume client input from the deferred event */
    bool ending;       /* end from the deferred event with |end_status| */
    bool call_gone;    /* the gRPC layer finished the call itself (overrun) */
    bool in_resume;    /* inside grpc_call_pause_recv(false) */
    bool cancelled;    /* on_cancel ran during |in_resume| */
    int end_status;
    char end_msg[256];
};

/* The api's live forwards (a->forwards), counted against the caps. */
static void live_add(struct fwd *f)
{
    f->prev = NULL;
    f->next = f->a->forwards;
    if (f->next != NULL)
        f->next->prev = f;
    f->a->forwards = f;
}

static void live_remove(struct fwd *f)
{
    if (f->prev != NULL)
        f->prev->next = f->next;
    else if (f->a->forwards == f)
        f->a->forwards = f->next;
    if (f->next != NULL)
        f->next->prev = f->prev;
    f->prev = f->next = NULL;
}

unsigned api_forwards_live(const struct api *a)
{
    unsigned n = 0;
    for (const struct fwd *f = a->forwards; f != NULL; f = f->next)
        n++;
    return n;
}

static void count_live(const struct api *a, const char *token_hash, const char *sandbox_id,
                       unsigned *per_token, unsigned *per_sandbox)
{
    *per_token = *per_sandbox = 0;
    for (const struct fwd *f = a->forwards; f != NULL; f = f->next) {
        *per_token += strcmp(f->token_hash, token_hash) == 0;
        *per_sandbox += strcmp(f->sandbox_id, sandbox_id) == 0;
    }
}

static struct fwd *fwd_of_call(const struct grpc_call *call)
{
    const struct api *a = grpc_call_method_arg(call);
    for (struct fwd *f = a->forwards; f != NULL; f = f->next)
        if (f->call == call)
            return f;
    return NULL;
}

static void fwd_free(struct fwd *f)
{
    double ms = (double)(gw_clock_mono_us() - f->start_us) / 1000.0;
    log_info("forward.closed", LF_STR("sandbox_id", f->sandbox_id), LF_STR("target", f->target),
             LF_UINT("bytes_up", f->bytes_up), LF_UINT("bytes_down", f->bytes_down),
             LF_INT("status", f->ending ? f->end_status : GRPC_STATUS_CANCELLED),
             LF_DBL("dur_ms", ms));
    live_remove(f);
    if (f->r != NULL)
        api_relay_close(f->r);
    event_free(f->defer);
    free(f);
}

/* Asks the deferred event to end the forward with |status| (the first
 * request wins). */
static void fwd_end_later(struct fwd *f, int status, const char *msg)
{
    if (!f->ending) {
        f->ending = true;
        f->end_status = status;
        snprintf(f->end_msg, sizeof(f->end_msg), "%s", msg != NULL ? msg : "");
    }
    event_active(f->defer, EV_WRITE, 0);
}

static void fwd_resume_later(struct fwd *f)
{
    f->want_resume = true;
    event_active(f->defer, EV_WRITE, 0);
}

/* From the loop: ends the forward, or resumes client input. Resuming may
 * deliver queued messages, a half-close or a cancellation right here. */
static void fwd_deferred(evutil_socket_t fd, short what, void *arg)
{
    struct fwd *f = arg;
    (void)fd;
    (void)what;
    if (f->ending || f->call == NULL) {
        if (f->call != NULL && !f->call_gone)
            grpc_call_finish(f->call, f->end_status, f->end_msg[0] ? f->end_msg : NULL);
        fwd_free(f);
        return;
    }
    if (!f->want_resume)
        return;
    f->want_resume = false;
    f->in_resume = true;
    grpc_call_pause_recv(f->call, false);
    f->in_resume = false;
    if (f->cancelled)
        fwd_free(f);
}

/* ---- ForwardTcp: relay -> client ------------------------------------------------ */

/* Writes the TcpForwardFrame{data: |n| bytes} header into |out|: field 2,
 * wire type LEN (tag 0x12), then |n| as a varint. Returns its length (at
 * most FWD_HDR). The bytes themselves follow as the second part of
 * grpc_call_send_parts(), so they are copied once, into the call's output. */
static size_t frame_header(uint8_t out[FWD_HDR], size_t n)
{
    size_t k = 0;
    out[k++] = 0x12;
    do {
        uint8_t b = (uint8_t)(n & 0x7f);
        n >>= 7;
        out[k++] = (uint8_t)(b | (n ? 0x80 : 0));
    } while (n != 0);
    return k;
}

static void relay_on_open(struct api_relay *r, void *arg)
{
    struct fwd *f = arg;
    (void)r;
    log_debug("forward.relay_open", LF_STR("sandbox_id", f->sandbox_id));
    fwd_resume_later(f); /* client input was held since the init frame */
}

static void relay_on_data(struct api_relay *r, const uint8_t *data, size_t len, void *arg)
{
    struct fwd *f = arg;
    bool full = false;
    if (f->call == NULL || f->ending)
        return;
    while (len > 0) {
        size_t n = GW_MIN(len, (size_t)FWD_CHUNK);
        uint8_t hdr[FWD_HDR];
        size_t h = frame_header(hdr, n);
        int rc = grpc_call_send_parts(f->call, hdr, h, data, n);
        if (rc == GRPC_ERR_CLOSED || rc == GRPC_ERR_OVERRUN) {
            f->call_gone = true; /* already finished by the gRPC layer */
            fwd_end_later(f, GRPC_STATUS_RESOURCE_EXHAUSTED, "output overrun");
            return;
        }
        if (rc == GRPC_ERR_TOOBIG) {
            fwd_end_later(f, GRPC_STATUS_INTERNAL, "forward frame exceeds the send limit");
            return;
        }
        full |= rc == GRPC_SEND_FULL;
        f->bytes_down += n;
        data += n;
        len -= n;
    }
    if (full && !f->relay_paused) {
        f->relay_paused = true;
        api_relay_pause(r, true);
    }
}

/* The target closed its side: everything it sent is queued on the call,
 * which the trailers follow. */
static void relay_on_eof(struct api_relay *r, void *arg)
{
    (void)r;
    fwd_end_later(arg, GRPC_STATUS_OK, NULL);
}

static void relay_on_writable(struct api_relay *r, void *arg)
{
    (void)r;
    fwd_resume_later(arg);
}

static void relay_on_close(struct api_relay *r, int status, const char *message, void *arg)
{
    struct fwd *f = arg;
    (void)r;
    f->r = NULL; /* freed when we return */
    fwd_end_later(f, status, message);
}

static const struct api_relay_ops relay_ops = {
    .on_open = relay_on_open,
    .on_data = relay_on_data,
    .on_eof = relay_on_eof,
    .on_writable = relay_on_writable,
    .on_close = relay_on_close,
};

/* ---- ForwardTcp: client -> relay ------------------------------------------------- */

static void fwd_input_done(struct fwd *f)
{
    if (f->input_done)
        return;
    f->input_done = true;
    if (f->r != NULL)
        api_relay_shutdown_write(f->r);
}

static void fwd_client_frame(struct fwd *f, const frame_msg *m)
{
    if (f->input_done || f->ending || f->r == NULL)
        return; /* after a half-close or a non-data frame input is dropped */
    if (m->payload_case != OPENSHELL__V1__TCP_FORWARD_FRAME__PAYLOAD_DATA) {
        fwd_input_done(f);
        return;
    }
    if (m->data.len == 0)
        return;
    f->bytes_up += m->data.len;
    int rc = api_relay_write(f->r, m->data.data, m->data.len);
    if (rc == API_RELAY_FULL)
        grpc_call_pause_recv(f->call, true); /* until the relay's on_writable */
    else if (rc == API_RELAY_CLOSED)
        f->input_done = true;
}

/* ---- ForwardTcp: opening ----------------------------------------------------------- */

static void forward_start(struct grpc_call *call, struct fwd_req *q)
{
    struct api *a = grpc_call_method_arg(call);
    struct fwd *f = gw_xcalloc(1, sizeof(*f));
    f->a = a;
    f->call = call;
    f->start_us = gw_clock_mono_us();
    f->defer = event_new(a->base, -1, 0, fwd_deferred, f);
    GW_ASSERT(f->defer != NULL);
    snprintf(f->sandbox_id, sizeof(f->sandbox_id), "%s", q->sb_id);
    memcpy(f->token_hash, q->token_hash, sizeof(f->token_hash));
    if (q->ssh)
        snprintf(f->target, sizeof(f->target), "ssh");
    else if (strchr(q->host, ':') != NULL)
        snprintf(f->target, sizeof(f->target), "[%s]:%u", q->host, q->port);
    else
        snprintf(f->target, sizeof(f->target), "%s:%u", q->host, q->port);
    live_add(f);
    grpc_call_set_user(call, f);

    struct api_relay_target t = {
        .tcp_host = q->ssh ? NULL : q->host,
        .tcp_port = q->port,
        .service_id = q->service_id,
    };
    int status = GRPC_STATUS_UNAVAILABLE;
    const char *msg = "supervisor relay failed";
    struct api_relay *r = api_relay_open(a, f->sandbox_id, &t, &relay_ops, f, &status, &msg);
    if (r == NULL) {
        f->ending = true;
        f->end_status = status;
        f->call = NULL;
        grpc_call_set_user(call, NULL);
        fwd_free(f);
        grpc_call_finish(call, status, msg);
        return;
    }
    f->r = r;
    log_info("forward.opening", LF_STR("sandbox_id", f->sandbox_id), LF_STR("target", f->target),
             LF_STR("service_id", q->service_id));
}

static void forward_token_checked(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct fwd_req *q = arg;
    struct api *a = grpc_call_method_arg(call);
    unsigned per_token, per_sandbox;

    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "ssh session");
        return;
    }
    if (store_ntuples(r) == 0) {
        grpc_call_finish(call, GRPC_STATUS_UNAUTHENTICATED, "SSH session token not found");
        return;
    }
    if (strcmp(store_get(r, 0, STORE_SSH_REVOKED), "t") == 0 ||
        strcmp(store_get(r, 0, STORE_SSH_SANDBOX_ID), q->sb_id) != 0) {
        grpc_call_finish(call, GRPC_STATUS_UNAUTHENTICATED, "SSH session token is not valid");
        return;
    }
    int64_t exp = store_get_i64(r, 0, STORE_SSH_EXPIRES_MS);
    if (exp > 0 && gw_now_wall_ms() > exp) {
        grpc_call_finish(call, GRPC_STATUS_UNAUTHENTICATED, "SSH session token expired");
        return;
    }
    count_live(a, q->token_hash, q->sb_id, &per_token, &per_sandbox);
    if (per_token >= FWD_PER_TOKEN) {
        grpc_call_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                         "SSH session connection limit reached");
        return;
    }
    if (per_sandbox >= FWD_PER_SANDBOX) {
        grpc_call_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                         "sandbox SSH connection limit reached");
        return;
    }
    forward_start(call, q);
}

static void forward_ready(struct grpc_call *call, const struct api_sb_row *row, void *arg)
{
    struct fwd_req *q = arg;
    if (q->token[0] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_UNAUTHENTICATED,
                         "authorization_token is required for ForwardTcp");
        return;
    }
    snprintf(q->sb_id, sizeof(q->sb_id), "%s", row->id);
    api_ssh_token_hash(q->token, q->token_hash);
    const char *p[] = {q->token_hash};
    api_query(call, &store_ssh_session_get, p, NULL, forward_token_checked, q);
}

/* The first frame: validated in the order of semantics.md §13, then the
 * sandbox and the token are looked up while client input is held. */
static void forward_init(struct grpc_call *call, const frame_msg *m)
{
    if (m->payload_case != OPENSHELL__V1__TCP_FORWARD_FRAME__PAYLOAD_INIT || m->init == NULL) {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "first TcpForwardFrame must be init");
        return;
    }
    const Openshell__V1__TcpForwardInit *in = m->init;
    struct fwd_req *q = grpc_call_alloc(call, sizeof(*q));
    memset(q, 0, sizeof(*q));
    if (in->sandbox_id == NULL || in->sandbox_id[0] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "sandbox_id is required");
        return;
    }
    if (in->target_case == OPENSHELL__V1__TCP_FORWARD_INIT__TARGET_SSH) {
        q->ssh = true;
    } else if (in->target_case == OPENSHELL__V1__TCP_FORWARD_INIT__TARGET_TCP && in->tcp != NULL) {
        const char *err =
            api_forward_tcp_target(in->tcp->host, in->tcp->port, q->host, sizeof(q->host));
        if (err != NULL) {
            grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, err);
            return;
        }
        q->port = (uint16_t)in->tcp->port;
    } else {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "tcp forward target is required");
        return;
    }
    if (api_store_unavailable(call))
        return;
    size_t n;
    const char *tok = trim(in->authorization_token ? in->authorization_token : "", &n);
    q->token = grpc_call_alloc(call, n + 1);
    memcpy((char *)q->token, tok, n);
    ((char *)q->token)[n] = '\0';
    q->sandbox_id = grpc_call_strdup(call, in->sandbox_id);
    if (in->service_id != NULL && in->service_id[0] != '\0')
        q->service_id = grpc_call_strdup(call, in->service_id);
    /* Hold further frames (data the client sends right away) until the
     * relay is open; HTTP/2 flow control keeps them bounded. */
    grpc_call_pause_recv(call, true);
    api_sandbox_require_ready(call, q->sandbox_id, forward_ready, q);
}

/* ---- ForwardTcp: handler ------------------------------------------------------------ */

static void forward_message(struct grpc_call *call, void *msg)
{
    struct fwd *f = grpc_call_user(call);
    /* Client input is held from the init frame until the forward exists,
     * so the user pointer is ours whenever a later frame arrives. */
    if (f == NULL) {
        forward_init(call, msg);
        return;
    }
    fwd_client_frame(f, msg);
}

static void forward_half_close(struct grpc_call *call)
{
    struct fwd *f = grpc_call_user(call);
    if (f == NULL) {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "empty ForwardTcp stream");
        return;
    }
    fwd_input_done(f);
}

static void forward_writable(struct grpc_call *call)
{
    struct fwd *f = grpc_call_user(call);
    if (f == NULL || !f->relay_paused || f->r == NULL)
        return;
    f->relay_paused = false;
    api_relay_pause(f->r, false);
}

static void forward_cancel(struct grpc_call *call)
{
    struct fwd *f = fwd_of_call(call);
    if (f == NULL) {
        api_query_cancel(call); /* still resolving the sandbox or the token */
        return;
    }
    f->call = NULL;
    if (f->in_resume) {
        f->cancelled = true; /* fwd_deferred() frees it when resuming returns */
        return;
    }
    fwd_free(f);
}

/* ---- registration ---------------------------------------------------------------- */

static const struct grpc_handler create_h = {.on_message = create_ssh_session,
                                             .on_cancel = api_query_cancel};
static const struct grpc_handler revoke_h = {.on_message = revoke_ssh_session,
                                             .on_cancel = api_query_cancel};
static const struct grpc_handler forward_h = {
    .on_message = forward_message,
    .on_half_close = forward_half_close,
    .on_cancel = forward_cancel,
    .on_writable = forward_writable,
};

const struct grpc_method api_forward_methods[] = {
    {"/openshell.v1.OpenShell/CreateSshSession", GRPC_UNARY,
     &openshell__v1__create_ssh_session_request__descriptor,
     &openshell__v1__create_ssh_session_response__descriptor, &create_h, NULL, API_AUTH_BEARER},
    {"/openshell.v1.OpenShell/RevokeSshSession", GRPC_UNARY,
     &openshell__v1__revoke_ssh_session_request__descriptor,
     &openshell__v1__revoke_ssh_session_response__descriptor, &revoke_h, NULL, API_AUTH_BEARER},
    {"/openshell.v1.OpenShell/ForwardTcp", GRPC_BIDI, &openshell__v1__tcp_forward_frame__descriptor,
     &openshell__v1__tcp_forward_frame__descriptor, &forward_h, NULL, API_AUTH_BEARER},
    {.path = NULL},
};
