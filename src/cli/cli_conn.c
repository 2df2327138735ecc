/*
 * cli_conn: the CLI's connection to the gateway and the calls on it.
 *
 * The endpoint is resolved with getaddrinfo() (blocking is fine: nothing
 * else runs yet) and each resolved address is tried in order until one
 * connects; the TLS context is built once. The gRPC channel is opened on the
 * first call and reopened by the next call after the gateway closed it, so
 * a long `events watch` survives a gateway restart.
 *
 * Synchronous helpers run the reactor until their own completion flag is
 * set: every callback that sets one also calls reactor_stop().
 */
#include "cli/cli.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <openssl/ssl.h>

#include "http2/grpc.h"
#include "openshell.pb-c.h"
#include "reactor/reactor.h"

#define SVC             "/openshell.v1.OpenShell/"
#define DIAL_TIMEOUT_MS 10000
#define KEEPALIVE_MS    20000
#define MAX_RECV_BYTES  (16u << 20)

struct cli_stream {
    struct cli *c;
    struct grpc_ccall *cc;
    cli_msg_fn on_msg;
    cli_end_fn on_end;
    void (*on_writable)(struct cli_stream *s, void *arg);
    void *arg;
    LIST_ENTRY(cli_stream) link;
};

struct cli {
    struct cli_opts opts;
    struct reactor *r;
    struct grpc_endpoint ep;
    bool ep_ok;             /* ep parsed (cli_main validates it before cli_new) */
    struct ssl_ctx_st *tls; /* https only, built on the first connect */
    struct grpc_channel *ch;
    char *auth;        /* "Bearer TOKEN" or NULL */
    const char *md[3]; /* metadata for every call */
    bool in_loop;      /* cli_loop_run or a synchronous helper is running */
    LIST_HEAD(, cli_stream) streams;
};

/* ---- client ---------------------------------------------------------------- */

struct cli *cli_new(const struct cli_opts *opts)
{
    struct cli *c = gw_xcalloc(1, sizeof(*c));
    char err[256];
    size_t n = 0;

    c->opts = *opts;
    c->r = reactor_new();
    if (c->r == NULL)
        gw_panic(__FILE__, __LINE__, "cannot create the event loop");
    c->ep_ok = grpc_endpoint_parse(opts->endpoint, &c->ep, err, sizeof(err)) == 0;
    if (opts->token != NULL && opts->token[0] != '\0') {
        c->auth = gw_xasprintf("Bearer %s", opts->token);
        c->md[n++] = "authorization";
        c->md[n++] = c->auth;
    }
    c->md[n] = NULL;
    LIST_INIT(&c->streams);
    return c;
}

static void stream_free(struct cli_stream *s)
{
    LIST_REMOVE(s, link);
    free(s);
}

void cli_free(struct cli *c)
{
    struct cli_stream *s;

    if (c == NULL)
        return;
    while ((s = LIST_FIRST(&c->streams)) != NULL) {
        grpc_ccall_cancel(s->cc);
        stream_free(s);
    }
    if (c->ch != NULL) {
        struct grpc_channel *ch = c->ch;
        c->ch = NULL;
        if (!grpc_channel_is_closing(ch))
            grpc_channel_close(ch);
    }
    reactor_free(c->r);
    SSL_CTX_free(c->tls);
    free(c->auth);
    free(c);
}

const struct cli_opts *cli_opts(const struct cli *c)
{
    return &c->opts;
}

struct reactor *cli_reactor(struct cli *c)
{
    return c->r;
}

void cli_loop_run(struct cli *c)
{
    GW_ASSERT(!c->in_loop);
    c->in_loop = true;
    if (reactor_run(c->r) != 0)
        fprintf(stderr, "openshell: the event loop failed\n");
    c->in_loop = false;
}

void cli_loop_exit(struct cli *c)
{
    reactor_stop(c->r);
}

/* Runs the loop until |*flag| is set by a callback (which also stops it). */
static void run_until(struct cli *c, const bool *flag)
{
    GW_ASSERT(!c->in_loop);
    c->in_loop = true;
    while (!*flag) {
        if (reactor_run(c->r) != 0)
            break;
    }
    c->in_loop = false;
}

/* ---- connecting -------------------------------------------------------------- */

struct dial {
    struct cli *c;
    bool done;
    struct bufferevent *bev;
    char err[256];
};

static void on_dialed(struct bufferevent *bev, const struct reactor_peer *peer, const char *err,
                      void *arg)
{
    struct dial *d = arg;

    (void)peer;
    d->done = true;
    d->bev = bev;
    if (bev == NULL)
        snprintf(d->err, sizeof(d->err), "%s", err != NULL ? err : "connection failed");
    reactor_stop(d->c->r);
}

static void on_channel_close(struct grpc_channel *ch, void *arg)
{
    struct cli *c = arg;

    if (c->ch == ch)
        c->ch = NULL;
}

/* Dials one numeric address. Returns the connected bufferevent or NULL with
 * |err| filled. */
static struct bufferevent *dial_addr(struct cli *c, const char *addr, char *err, size_t errlen)
{
    struct dial d = {.c = c};
    int rc;

    if (c->ep.is_unix)
        rc = reactor_connect_unix(c->r, c->ep.path, on_dialed, &d);
    else
        rc = reactor_connect_tcp(c->r, addr, c->ep.port, c->ep.tls ? c->tls : NULL,
                                 c->ep.tls ? c->ep.host : NULL, DIAL_TIMEOUT_MS, on_dialed, &d);
    if (rc != 0) {
        snprintf(err, errlen, "%s",
                 rc == REACTOR_ERR_ADDR  ? "unusable address"
                 : rc == REACTOR_ERR_TLS ? "unusable TLS server name"
                                         : strerror(errno));
        return NULL;
    }
    run_until(c, &d.done);
    if (d.bev == NULL)
        snprintf(err, errlen, "%s", d.err);
    return d.bev;
}

/* Resolves the host (numeric text passes through) and dials each address in
 * turn. Returns the bufferevent or NULL with |err| filled. */
static struct bufferevent *dial_host(struct cli *c, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    struct bufferevent *bev = NULL;
    int rc;

    if (c->ep.is_unix)
        return dial_addr(c, NULL, err, errlen);
    rc = getaddrinfo(c->ep.host, NULL, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve '%s': %s", c->ep.host, gai_strerror(rc));
        return NULL;
    }
    for (struct addrinfo *ai = res; ai != NULL && bev == NULL; ai = ai->ai_next) {
        char addr[INET6_ADDRSTRLEN];
        const void *sa = ai->ai_family == AF_INET6
                             ? (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
                             : (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr;
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        if (inet_ntop(ai->ai_family, sa, addr, sizeof(addr)) == NULL)
            continue;
        bev = dial_addr(c, addr, err, errlen);
    }
    freeaddrinfo(res);
    if (bev == NULL && err[0] == '\0')
        snprintf(err, errlen, "no usable address for '%s'", c->ep.host);
    return bev;
}

/* Opens the channel when there is none. Returns 0, or an exit code after
 * filling |st| (UNAVAILABLE) and |*local| (true: TLS files unusable, a local
 * failure rather than an unreachable gateway). */
static int ensure_channel(struct cli *c, struct cli_status *st, bool *local)
{
    char err[512] = "";
    struct bufferevent *bev;
    struct grpc_channel_opts o = {
        .authority = c->ep.authority,
        .scheme = c->ep.tls ? "https" : "http",
        .max_recv_msg_bytes = MAX_RECV_BYTES,
        .keepalive_ms = KEEPALIVE_MS,
        .on_close = on_channel_close,
        .arg = c,
    };

    *local = false;
    if (c->ch != NULL && !grpc_channel_is_closing(c->ch))
        return 0;
    c->ch = NULL;
    st->code = GRPC_STATUS_UNAVAILABLE;
    if (!c->ep_ok) {
        snprintf(st->message, sizeof(st->message), "the gateway URL is not valid");
        *local = true;
        return CLI_EXIT_USAGE;
    }
    if (c->ep.tls && c->tls == NULL) {
        c->tls =
            reactor_tls_client_ctx(c->opts.ca, c->opts.cert, c->opts.key, false, err, sizeof(err));
        if (c->tls == NULL) {
            snprintf(st->message, sizeof(st->message), "%s", err);
            *local = true;
            return CLI_EXIT_FAIL;
        }
    }
    bev = dial_host(c, err, sizeof(err));
    if (bev == NULL) {
        snprintf(st->message, sizeof(st->message), "%s", err);
        return CLI_EXIT_CONNECT;
    }
    c->ch = grpc_channel_new(reactor_base(c->r), bev, &o);
    if (c->ch == NULL) {
        snprintf(st->message, sizeof(st->message), "cannot start HTTP/2 on the connection");
        return CLI_EXIT_CONNECT;
    }
    return 0;
}

/* Prints the connection failure of ensure_channel(). Returns the exit code. */
static int report_connect(struct cli *c, int code, const struct cli_status *st, bool local)
{
    if (!local)
        return cli_fail_connect(c->opts.endpoint, st->message);
    if (code == CLI_EXIT_USAGE)
        return cli_usage(NULL, "invalid gateway URL '%s'", c->opts.endpoint);
    return cli_fail("cannot use the TLS files for %s: %s; check --tls-ca/--tls-cert/--tls-key",
                    c->opts.endpoint, st->message);
}

/* ---- unary calls ---------------------------------------------------------- */

struct unary {
    struct cli *c;
    bool done;
    ProtobufCMessage *resp;
    struct cli_status *st;
};

/* Keeps a copy of the borrowed response (a CLI can afford the re-pack). */
static ProtobufCMessage *message_copy(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = gw_xmalloc(n > 0 ? n : 1);
    ProtobufCMessage *copy;

    protobuf_c_message_pack(m, buf);
    copy = protobuf_c_message_unpack(m->descriptor, NULL, n, buf);
    free(buf);
    return copy;
}

static void on_unary_msg(struct grpc_ccall *cc, void *msg, void *arg)
{
    struct unary *u = arg;

    (void)cc;
    if (u->resp == NULL)
        u->resp = message_copy(msg);
}

/* Fills |st|; an UNAVAILABLE status names the endpoint, so that a one-line
 * error always says where the connection failed. */
static void status_fill(const struct cli *c, struct cli_status *st, int status, const char *message)
{
    st->code = status;
    if (status == GRPC_STATUS_UNAVAILABLE)
        snprintf(st->message, sizeof(st->message), "%s: %s", c->opts.endpoint,
                 message != NULL && message[0] != '\0' ? message : "connection lost");
    else
        snprintf(st->message, sizeof(st->message), "%s", message != NULL ? message : "");
}

static void on_unary_done(struct grpc_ccall *cc, int status, const char *message, void *arg)
{
    struct unary *u = arg;

    (void)cc;
    status_fill(u->c, u->st, status, message);
    u->done = true;
    reactor_stop(u->c->r);
}

/* The call itself; |*local| as for ensure_channel(). Returns the gRPC code. */
static int unary_run(struct cli *c, const char *path, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                     struct cli_status *st, int *conn_exit, bool *local)
{
    struct unary u = {.c = c, .st = st};

    *resp = NULL;
    *conn_exit = 0;
    memset(st, 0, sizeof(*st));
    *conn_exit = ensure_channel(c, st, local);
    if (*conn_exit != 0)
        return st->code;
    if (grpc_channel_unary(c->ch, path, req, resp_desc, c->md, (uint64_t)c->opts.timeout_s * 1000,
                           on_unary_msg, on_unary_done, &u) == NULL) {
        st->code = GRPC_STATUS_UNAVAILABLE;
        snprintf(st->message, sizeof(st->message), "the connection is closing");
        return st->code;
    }
    run_until(c, &u.done);
    if (st->code == GRPC_STATUS_OK && u.resp == NULL) {
        st->code = GRPC_STATUS_INTERNAL;
        snprintf(st->message, sizeof(st->message), "the gateway sent no response message");
    }
    if (st->code != GRPC_STATUS_OK) {
        if (u.resp != NULL)
            protobuf_c_message_free_unpacked(u.resp, NULL);
        return st->code;
    }
    *resp = u.resp;
    return 0;
}

int cli_unary_status(struct cli *c, const char *path, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                     struct cli_status *st)
{
    int conn_exit;
    bool local;

    return unary_run(c, path, req, resp_desc, resp, st, &conn_exit, &local);
}

int cli_unary(struct cli *c, const char *path, const ProtobufCMessage *req,
              const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
              const char *what)
{
    struct cli_status st;
    int conn_exit;
    bool local;
    int code = unary_run(c, path, req, resp_desc, resp, &st, &conn_exit, &local);

    if (code == 0)
        return 0;
    if (conn_exit != 0)
        return report_connect(c, conn_exit, &st, local);
    /* A TLS 1.3 server that wants a client certificate says so only after
     * the handshake, so the first call just sees the connection close. */
    if (code == GRPC_STATUS_UNAVAILABLE && c->ep.tls && c->opts.cert == NULL)
        return cli_fail_status_hint(
            what, &st,
            "the gateway may require a client certificate: set "
            "--tls-cert/--tls-key (or OPENSHELL_TLS_CERT/OPENSHELL_TLS_KEY)");
    /* h2c to a TLS port: the server drops the connection. */
    if (code == GRPC_STATUS_UNAVAILABLE && !c->ep.tls && !c->ep.is_unix)
        return cli_fail_status_hint(what, &st,
                                    "is the gateway running, and if it uses TLS, did you mean "
                                    "https://? (set --gateway or OPENSHELL_GATEWAY_ENDPOINT)");
    return cli_fail_status(what, &st);
}

int cli_sandbox_id(struct cli *c, const char *name, char **id)
{
    Openshell__V1__GetSandboxRequest req = OPENSHELL__V1__GET_SANDBOX_REQUEST__INIT;
    Openshell__V1__SandboxResponse *resp = NULL;
    char what[300];
    int rc;

    *id = NULL;
    req.name = (char *)name;
    req.workspace = (char *)c->opts.workspace;
    snprintf(what, sizeof(what), "sandbox \"%s\"", name);
    rc = cli_unary(c, SVC "GetSandbox", &req.base, &openshell__v1__sandbox_response__descriptor,
                   (ProtobufCMessage **)&resp, what);
    if (rc != 0)
        return rc;
    if (resp->sandbox == NULL || resp->sandbox->metadata == NULL ||
        resp->sandbox->metadata->id == NULL || resp->sandbox->metadata->id[0] == '\0') {
        protobuf_c_message_free_unpacked(&resp->base, NULL);
        return cli_fail("sandbox \"%s\": the gateway returned no sandbox id", name);
    }
    *id = gw_xstrdup(resp->sandbox->metadata->id);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return 0;
}

/* ---- streams ----------------------------------------------------------------- */

static void on_stream_msg(struct grpc_ccall *cc, void *msg, void *arg)
{
    struct cli_stream *s = arg;

    (void)cc;
    if (s->on_msg != NULL)
        s->on_msg(s, msg, s->arg);
}

static void on_stream_done(struct grpc_ccall *cc, int status, const char *message, void *arg)
{
    struct cli_stream *s = arg;
    struct cli_status st;

    (void)cc;
    status_fill(s->c, &st, status, message);
    LIST_REMOVE(s, link);
    if (s->on_end != NULL)
        s->on_end(s, &st, s->arg);
    free(s);
}

static void on_stream_writable(struct grpc_ccall *cc, void *arg)
{
    struct cli_stream *s = arg;

    (void)cc;
    if (s->on_writable != NULL)
        s->on_writable(s, s->arg);
}

/* Opens the channel if needed and starts the call. NULL with |st| filled,
 * |*conn_exit| the exit code and |*local| as for ensure_channel(). */
static struct cli_stream *stream_open(struct cli *c, const char *path,
                                      const ProtobufCMessageDescriptor *resp_desc,
                                      cli_msg_fn on_msg, cli_end_fn on_end, void *arg,
                                      struct cli_status *st, int *conn_exit, bool *local)
{
    struct cli_stream *s;

    memset(st, 0, sizeof(*st));
    *conn_exit = ensure_channel(c, st, local);
    if (*conn_exit != 0)
        return NULL;
    s = gw_xcalloc(1, sizeof(*s));
    s->c = c;
    s->on_msg = on_msg;
    s->on_end = on_end;
    s->arg = arg;
    s->cc = grpc_channel_start(c->ch, path, resp_desc, c->md, 0, on_stream_msg, on_stream_done, s);
    if (s->cc == NULL) {
        free(s);
        st->code = GRPC_STATUS_UNAVAILABLE;
        snprintf(st->message, sizeof(st->message), "the connection is closing");
        *conn_exit = CLI_EXIT_CONNECT;
        return NULL;
    }
    LIST_INSERT_HEAD(&c->streams, s, link);
    return s;
}

struct cli_stream *cli_stream_start(struct cli *c, const char *path,
                                    const ProtobufCMessageDescriptor *resp_desc, cli_msg_fn on_msg,
                                    cli_end_fn on_end, void *arg, int *exit_code)
{
    struct cli_status st;
    bool local = false;
    int conn_exit;
    struct cli_stream *s =
        stream_open(c, path, resp_desc, on_msg, on_end, arg, &st, &conn_exit, &local);

    *exit_code = 0;
    if (s == NULL)
        *exit_code = report_connect(c, conn_exit, &st, local);
    return s;
}

struct cli_stream *cli_stream_try_start(struct cli *c, const char *path,
                                        const ProtobufCMessageDescriptor *resp_desc,
                                        cli_msg_fn on_msg, cli_end_fn on_end, void *arg,
                                        struct cli_status *st)
{
    int conn_exit;
    bool local = false;

    return stream_open(c, path, resp_desc, on_msg, on_end, arg, st, &conn_exit, &local);
}

int cli_stream_send(struct cli_stream *s, const ProtobufCMessage *m)
{
    return grpc_ccall_send(s->cc, m);
}

void cli_stream_set_writable(struct cli_stream *s, void (*fn)(struct cli_stream *s, void *arg))
{
    s->on_writable = fn;
    grpc_ccall_set_writable_cb(s->cc, fn != NULL ? on_stream_writable : NULL);
}

void cli_stream_close_send(struct cli_stream *s)
{
    grpc_ccall_close_send(s->cc);
}

void cli_stream_cancel(struct cli_stream *s)
{
    grpc_ccall_cancel(s->cc);
    stream_free(s);
}

void cli_stream_pause(struct cli_stream *s, bool paused)
{
    grpc_ccall_pause_recv(s->cc, paused);
}
