#include "reactor/reactor.h"
#include "reactor/reactor_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

struct reactor_handshake;

struct reactor_listener {
    struct reactor *r;
    struct evconnlistener *lev;
    SSL_CTX *tls; /* one reference; NULL for plaintext */
    reactor_accept_cb cb;
    void *arg;
    char *unix_path;       /* unlinked on free; NULL for TCP */
    uint16_t port;         /* bound TCP port */
    bool disabled;         /* by reactor_listener_disable(): no automatic re-enable */
    struct event *backoff; /* re-enables accepting after EMFILE & co. */
    LIST_HEAD(, reactor_handshake) handshakes;
    LIST_ENTRY(reactor_listener) link;
};

/* An accepted TLS connection whose handshake is still running. Nobody but
 * its listener knows about it, so it dies with the listener. */
struct reactor_handshake {
    struct reactor_listener *l;
    struct bufferevent *bev;
    struct event *timeout;
    struct reactor_peer peer;
    LIST_ENTRY(reactor_handshake) link;
};

/* An outbound connect whose callback has not run yet. */
struct reactor_connect {
    struct reactor *r;
    struct bufferevent *bev;
    struct event *timeout; /* also delivers an immediate failure from the loop */
    int early_errno;       /* connect failed inside reactor_connect_*() */
    reactor_connect_cb cb;
    void *arg;
    struct reactor_peer peer;
    LIST_ENTRY(reactor_connect) link;
};

union sockaddr_any {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
    struct sockaddr_un un;
    struct sockaddr_storage ss;
};

static struct timeval ms_to_timeval(uint64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};

    return tv;
}

/* ---- addresses -------------------------------------------------------------- */

/* Numeric only, never DNS: a name lookup would block the loop. "[::1]" is
 * accepted as well as "::1". */
static int parse_numeric(const char *addr, uint16_t port, union sockaddr_any *out, socklen_t *len)
{
    char bare[INET6_ADDRSTRLEN + 2];
    size_t n = strlen(addr);

    memset(out, 0, sizeof(*out));
    if (n >= 2 && addr[0] == '[' && addr[n - 1] == ']' && n - 2 < sizeof(bare)) {
        memcpy(bare, addr + 1, n - 2);
        bare[n - 2] = '\0';
        addr = bare;
    }
    if (inet_pton(AF_INET, addr, &out->in.sin_addr) == 1) {
        out->in.sin_family = AF_INET;
        out->in.sin_port = htons(port);
        *len = sizeof(out->in);
        return 0;
    }
    if (inet_pton(AF_INET6, addr, &out->in6.sin6_addr) == 1) {
        out->in6.sin6_family = AF_INET6;
        out->in6.sin6_port = htons(port);
        *len = sizeof(out->in6);
        return 0;
    }
    return REACTOR_ERR_ADDR;
}

static int make_unix_addr(const char *path, union sockaddr_any *out, socklen_t *len)
{
    size_t n = strlen(path);

    if (n == 0 || n >= sizeof(out->un.sun_path))
        return REACTOR_ERR_ADDR;
    memset(out, 0, sizeof(*out));
    out->un.sun_family = AF_UNIX;
    memcpy(out->un.sun_path, path, n + 1);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
}

static void format_in6(const struct sockaddr_in6 *in6, char *buf, size_t buflen)
{
    char ip[INET6_ADDRSTRLEN];
    uint16_t port = ntohs(in6->sin6_port);

    /* Dual-stack "::" listeners see IPv4 clients as ::ffff:a.b.c.d. */
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
        inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], ip, sizeof(ip));
        snprintf(buf, buflen, "%s:%u", ip, port);
        return;
    }
    inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
    snprintf(buf, buflen, "[%s]:%u", ip, port);
}

void reactor_addr_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t buflen)
{
    const union sockaddr_any *a = (const union sockaddr_any *)sa;
    char ip[INET_ADDRSTRLEN];

    switch (sa->sa_family) {
    case AF_INET:
        inet_ntop(AF_INET, &a->in.sin_addr, ip, sizeof(ip));
        snprintf(buf, buflen, "%s:%u", ip, ntohs(a->in.sin_port));
        break;
    case AF_INET6:
        format_in6(&a->in6, buf, buflen);
        break;
    case AF_UNIX:
        if (len > offsetof(struct sockaddr_un, sun_path) && a->un.sun_path[0] != '\0')
            snprintf(buf, buflen, "unix:%.*s", (int)sizeof(a->un.sun_path), a->un.sun_path);
        else
            snprintf(buf, buflen, "unix:");
        break;
    default:
        snprintf(buf, buflen, "unknown");
        break;
    }
}

/*
 * libevent keeps the OpenSSL errors of a bufferevent on a stack, mixed with
 * bare SSL_get_error() codes (SSL_ERROR_SYSCALL and the like, library 0).
 * Pops them all and returns the oldest real one: the root cause.
 */
static unsigned long pop_openssl_error(struct bufferevent *bev)
{
    unsigned long e;
    unsigned long oldest = 0;

    while ((e = bufferevent_get_openssl_error(bev)) != 0) {
        if (ERR_GET_LIB(e) != 0)
            oldest = e;
    }
    return oldest;
}

static void describe_bev_error(struct bufferevent *bev, short what, int err, char *buf, size_t len)
{
    unsigned long e = pop_openssl_error(bev);
    int soerr = 0;
    socklen_t sl = sizeof(soerr);

    if (e != 0) {
        reactor_tls_error_text(e, NULL, buf, len);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        snprintf(buf, len, "timeout");
        return;
    }
    if (what & BEV_EVENT_EOF) {
        snprintf(buf, len, "connection closed by peer");
        return;
    }
    if (getsockopt(bufferevent_getfd(bev), SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr != 0)
        err = soerr;
    snprintf(buf, len, "%s", err != 0 ? strerror(err) : "connection closed by peer");
}

/* ---- listeners ---------------------------------------------------------------- */

static void handshake_free(struct reactor_handshake *hs)
{
    LIST_REMOVE(hs, link);
    event_free(hs->timeout);
    if (hs->bev != NULL)
        bufferevent_free(hs->bev);
    free(hs);
}

static void handshake_fail(struct reactor_handshake *hs, const char *reason)
{
    log_info("reactor.tls_handshake_failed", LF_UINT("conn", hs->peer.conn_id),
             LF_STR("peer", hs->peer.addr), LF_STR("reason", reason));
    handshake_free(hs);
}

static void handshake_done(struct reactor_handshake *hs)
{
    struct reactor_listener *l = hs->l;
    struct bufferevent *bev = hs->bev;
    struct reactor_peer peer = hs->peer;
    SSL *ssl = bufferevent_openssl_get_ssl(bev);

    if (!reactor_tls_alpn_is_h2(ssl)) {
        handshake_fail(hs, "client did not negotiate ALPN h2");
        return;
    }
    reactor_tls_describe_peer(ssl, &peer);
    bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
    hs->bev = NULL;
    handshake_free(hs);
    log_debug("reactor.accept", LF_UINT("conn", peer.conn_id), LF_STR("peer", peer.addr),
              LF_BOOL("tls", true), LF_BOOL("client_verified", peer.client_verified));
    l->cb(bev, &peer, l->arg);
}

static void on_handshake_event(struct bufferevent *bev, short what, void *arg)
{
    struct reactor_handshake *hs = arg;
    int err = errno;
    char reason[256];

    if (what & BEV_EVENT_CONNECTED) {
        handshake_done(hs);
        return;
    }
    describe_bev_error(bev, what, err, reason, sizeof(reason));
    handshake_fail(hs, reason);
}

static void on_handshake_timeout(evutil_socket_t fd, short what, void *arg)
{
    handshake_fail(arg, "handshake timeout");
}

static void handshake_start(struct reactor_listener *l, evutil_socket_t fd,
                            const struct reactor_peer *peer)
{
    struct event_base *base = l->r->base;
    struct timeval tv = ms_to_timeval(REACTOR_TLS_HANDSHAKE_TIMEOUT_MS);
    struct reactor_handshake *hs;
    struct bufferevent *bev;
    SSL *ssl = SSL_new(l->tls);

    /* When this fails libevent may already have freed |ssl| and closed |fd|
     * (it depends on where it failed): leaking on this out-of-memory path
     * beats a double free. */
    bev = ssl != NULL ? bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                       BEV_OPT_CLOSE_ON_FREE)
                      : NULL;
    if (bev == NULL) {
        log_error("reactor.accept_failed", LF_STR("peer", peer->addr),
                  LF_STR("reason", "cannot create TLS connection"));
        evutil_closesocket(fd);
        return;
    }
    hs = gw_xcalloc(1, sizeof(*hs));
    hs->l = l;
    hs->bev = bev;
    hs->peer = *peer;
    hs->peer.tls = true;
    hs->timeout = evtimer_new(base, on_handshake_timeout, hs);
    if (hs->timeout == NULL)
        gw_panic(__FILE__, __LINE__, "out of memory");
    LIST_INSERT_HEAD(&l->handshakes, hs, link);
    bufferevent_setcb(bev, NULL, NULL, on_handshake_event, hs);
    evtimer_add(hs->timeout, &tv);
}

static void accept_plain(struct reactor_listener *l, evutil_socket_t fd,
                         const struct reactor_peer *peer)
{
    struct bufferevent *bev = bufferevent_socket_new(l->r->base, fd, BEV_OPT_CLOSE_ON_FREE);

    if (bev == NULL) {
        log_error("reactor.accept_failed", LF_STR("peer", peer->addr),
                  LF_STR("reason", "cannot create bufferevent"));
        evutil_closesocket(fd);
        return;
    }
    log_debug("reactor.accept", LF_UINT("conn", peer->conn_id), LF_STR("peer", peer->addr),
              LF_BOOL("tls", false));
    l->cb(bev, peer, l->arg);
}

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct reactor_listener *l = arg;
    struct reactor_peer peer;
    int one = 1;

    memset(&peer, 0, sizeof(peer));
    peer.conn_id = reactor_next_conn_id(l->r);
    if (l->unix_path != NULL) {
        /* Unix clients are unnamed: the listener's path says more. */
        snprintf(peer.addr, sizeof(peer.addr), "unix:%s", l->unix_path);
    } else {
        /* gRPC messages are small and latency-bound: never wait for Nagle. */
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        reactor_addr_format(sa, (socklen_t)salen, peer.addr, sizeof(peer.addr));
    }
    if (l->tls != NULL)
        handshake_start(l, fd, &peer);
    else
        accept_plain(l, fd, &peer);
}

/* accept() keeps failing while the process is out of descriptors, and the
 * listening socket stays readable: pause instead of spinning. */
static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    struct reactor_listener *l = arg;
    int err = EVUTIL_SOCKET_ERROR();
    struct timeval tv = ms_to_timeval(REACTOR_ACCEPT_BACKOFF_MS);

    log_warn("reactor.accept_failed", LF_UINT("port", l->port), LF_STR("reason", strerror(err)),
             LF_UINT("pause_ms", REACTOR_ACCEPT_BACKOFF_MS));
    evconnlistener_disable(l->lev);
    evtimer_add(l->backoff, &tv);
}

static void on_backoff_done(evutil_socket_t fd, short what, void *arg)
{
    struct reactor_listener *l = arg;

    if (!l->disabled)
        evconnlistener_enable(l->lev);
}

/* Wraps listening socket |fd| (closed on failure). */
static int listener_open(struct reactor *r, int fd, SSL_CTX *tls, reactor_accept_cb cb, void *arg,
                         struct reactor_listener **out)
{
    struct reactor_listener *l = gw_xcalloc(1, sizeof(*l));

    l->lev = evconnlistener_new(r->base, on_accept, l,
                                LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    if (l->lev == NULL) {
        close(fd);
        free(l);
        return REACTOR_ERR_SYS;
    }
    l->backoff = evtimer_new(r->base, on_backoff_done, l);
    if (l->backoff == NULL)
        gw_panic(__FILE__, __LINE__, "out of memory");
    evconnlistener_set_error_cb(l->lev, on_accept_error);
    l->r = r;
    l->cb = cb;
    l->arg = arg;
    if (tls != NULL && SSL_CTX_up_ref(tls) == 1)
        l->tls = tls;
    LIST_INIT(&l->handshakes);
    LIST_INSERT_HEAD(&r->listeners, l, link);
    *out = l;
    return 0;
}

static int errno_to_rc(int err)
{
    return err == EADDRINUSE ? REACTOR_ERR_INUSE : REACTOR_ERR_SYS;
}

static int listen_failed(const char *addr, const char *reason, int rc)
{
    log_error("reactor.listen_failed", LF_STR("addr", addr), LF_STR("reason", reason));
    return rc;
}

int reactor_listen_tcp(struct reactor *r, const char *addr, uint16_t port, struct ssl_ctx_st *tls,
                       reactor_accept_cb cb, void *arg, struct reactor_listener **out)
{
    union sockaddr_any sa;
    socklen_t salen;
    int one = 1;
    int fd;
    int rc;

    if (parse_numeric(addr, port, &sa, &salen) != 0)
        return listen_failed(addr, "not a numeric IP address", REACTOR_ERR_ADDR);
    fd = socket(sa.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return listen_failed(addr, strerror(errno), REACTOR_ERR_SYS);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, &sa.sa, salen) != 0 || listen(fd, REACTOR_LISTEN_BACKLOG) != 0 ||
        getsockname(fd, &sa.sa, &(socklen_t){sizeof(sa)}) != 0) {
        int err = errno;

        close(fd);
        return listen_failed(addr, strerror(err), errno_to_rc(err));
    }
    rc = listener_open(r, fd, tls, cb, arg, out);
    if (rc != 0)
        return listen_failed(addr, "cannot create listener", rc);
    (*out)->port = ntohs(sa.sa.sa_family == AF_INET ? sa.in.sin_port : sa.in6.sin6_port);
    log_info("reactor.listen", LF_STR("addr", addr), LF_UINT("port", (*out)->port),
             LF_BOOL("tls", tls != NULL));
    return 0;
}

/* Removes a socket left over by an earlier run; anything else at |path| is
 * not ours to delete. */
static int remove_stale_socket(const char *path)
{
    struct stat st;

    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : REACTOR_ERR_SYS;
    if (!S_ISSOCK(st.st_mode))
        return REACTOR_ERR_INUSE;
    return unlink(path) == 0 ? 0 : REACTOR_ERR_SYS;
}

/* Binds |fd| at |path| with permissions |mode|. Linux creates the socket
 * file from the inode's mode minus the umask, so restricting the inode
 * first means the path is never more open than |mode|. */
static int bind_unix(int fd, const char *path, const union sockaddr_any *sa, socklen_t salen,
                     unsigned mode)
{
    if (fchmod(fd, (mode_t)mode) != 0 || bind(fd, &sa->sa, salen) != 0)
        return -1;
    if (chmod(path, (mode_t)mode) != 0 || listen(fd, REACTOR_LISTEN_BACKLOG) != 0) {
        int err = errno;

        unlink(path);
        errno = err;
        return -1;
    }
    return 0;
}

int reactor_listen_unix(struct reactor *r, const char *path, unsigned mode, struct ssl_ctx_st *tls,
                        reactor_accept_cb cb, void *arg, struct reactor_listener **out)
{
    union sockaddr_any sa;
    socklen_t salen;
    int fd;
    int rc;

    if (make_unix_addr(path, &sa, &salen) != 0)
        return listen_failed(path, "socket path empty or too long", REACTOR_ERR_ADDR);
    rc = remove_stale_socket(path);
    if (rc != 0)
        return listen_failed(
            path, rc == REACTOR_ERR_INUSE ? "exists and is not a socket" : strerror(errno), rc);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return listen_failed(path, strerror(errno), REACTOR_ERR_SYS);
    if (bind_unix(fd, path, &sa, salen, mode) != 0) {
        int err = errno;

        close(fd);
        return listen_failed(path, strerror(err), errno_to_rc(err));
    }
    rc = listener_open(r, fd, tls, cb, arg, out);
    if (rc != 0) {
        unlink(path);
        return listen_failed(path, "cannot create listener", rc);
    }
    (*out)->unix_path = gw_xstrdup(path);
    log_info("reactor.listen", LF_STR("addr", path), LF_BOOL("tls", tls != NULL));
    return 0;
}

uint16_t reactor_listener_port(const struct reactor_listener *l)
{
    return l->port;
}

void reactor_listener_disable(struct reactor_listener *l)
{
    l->disabled = true;
    event_del(l->backoff);
    evconnlistener_disable(l->lev);
}

void reactor_listener_free(struct reactor_listener *l)
{
    struct reactor_handshake *hs;

    if (l == NULL)
        return;
    while ((hs = LIST_FIRST(&l->handshakes)) != NULL)
        handshake_free(hs);
    LIST_REMOVE(l, link);
    evconnlistener_free(l->lev);
    event_free(l->backoff);
    if (l->unix_path != NULL) {
        unlink(l->unix_path);
        free(l->unix_path);
    }
    SSL_CTX_free(l->tls);
    free(l);
}

void reactor_listener_set_tls(struct reactor_listener *l, struct ssl_ctx_st *tls)
{
    /* Handshakes already running keep the context their SSL was made from. */
    if (tls != NULL && SSL_CTX_up_ref(tls) != 1)
        return;
    SSL_CTX_free(l->tls);
    l->tls = tls;
}

void reactor_listeners_free_all(struct reactor *r)
{
    struct reactor_listener *l;

    while ((l = LIST_FIRST(&r->listeners)) != NULL)
        reactor_listener_free(l);
}

/* ---- outbound connections ------------------------------------------------------- */

static void connect_free(struct reactor_connect *c)
{
    LIST_REMOVE(c, link);
    event_free(c->timeout);
    if (c->bev != NULL)
        bufferevent_free(c->bev);
    free(c);
}

/* Runs the user callback exactly once and forgets |c|. On success |c->bev|
 * changes hands. */
static void connect_finish(struct reactor_connect *c, bool ok, const char *err)
{
    reactor_connect_cb cb = c->cb;
    void *arg = c->arg;
    struct reactor_peer peer = c->peer;
    struct bufferevent *bev = NULL;

    if (ok) {
        bev = c->bev;
        c->bev = NULL;
        bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
        if (peer.tls)
            reactor_tls_describe_peer(bufferevent_openssl_get_ssl(bev), &peer);
    } else {
        log_debug("reactor.connect_failed", LF_UINT("conn", peer.conn_id),
                  LF_STR("peer", peer.addr), LF_STR("reason", err));
    }
    connect_free(c);
    cb(bev, &peer, ok ? NULL : err, arg);
}

static void on_connect_event(struct bufferevent *bev, short what, void *arg)
{
    struct reactor_connect *c = arg;
    int err = errno;
    char reason[256];

    if (what & BEV_EVENT_CONNECTED) {
        connect_finish(c, true, NULL);
        return;
    }
    describe_bev_error(bev, what, err, reason, sizeof(reason));
    connect_finish(c, false, reason);
}

static void on_connect_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct reactor_connect *c = arg;

    connect_finish(c, false, c->early_errno != 0 ? strerror(c->early_errno) : "timeout");
}

/* Creates the SSL first: a bad |sni| is the caller's error and must be
 * reported before anything else happens. */
static int connect_ssl_new(SSL_CTX *tls, const char *sni, SSL **out)
{
    *out = NULL;
    if (tls == NULL)
        return 0;
    *out = SSL_new(tls);
    if (*out == NULL)
        return REACTOR_ERR_TLS;
    if (sni != NULL && reactor_tls_set_server_name(*out, sni) != 0) {
        SSL_free(*out);
        *out = NULL;
        return REACTOR_ERR_TLS;
    }
    return 0;
}

/* Starts a non-blocking connect. Returns the socket (connected or still
 * connecting), or -1 with errno set. Doing the connect() here rather than
 * in libevent keeps the real errno of an immediate failure (a Unix socket
 * nobody listens on) and creates the socket CLOEXEC from the start. */
static int connect_socket(const union sockaddr_any *sa, socklen_t salen)
{
    int one = 1;
    int fd = socket(sa->sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    if (sa->sa.sa_family != AF_UNIX)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, &sa->sa, salen) != 0 && errno != EINPROGRESS && errno != EINTR) {
        int err = errno;

        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

/* Wraps connecting socket |fd|; takes ownership of |fd| and |ssl| (NULL
 * for plaintext), even on failure. BEV_EVENT_CONNECTED follows once the
 * connect (and handshake) completes. */
static struct bufferevent *connect_bev_new(struct reactor *r, int fd, SSL *ssl)
{
    struct bufferevent *bev;

    if (ssl != NULL) {
        bev = bufferevent_openssl_socket_new(r->base, fd, ssl, BUFFEREVENT_SSL_CONNECTING,
                                             BEV_OPT_CLOSE_ON_FREE);
        if (bev == NULL)
            evutil_closesocket(fd); /* see handshake_start() about |ssl| */
        return bev;
    }
    bev = bufferevent_socket_new(r->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        evutil_closesocket(fd);
        return NULL;
    }
    /* No address: the socket is already connecting; libevent only waits. */
    if (bufferevent_socket_connect(bev, NULL, 0) != 0) {
        bufferevent_free(bev);
        return NULL;
    }
    return bev;
}

static struct reactor_connect *connect_new(struct reactor *r, const union sockaddr_any *sa,
                                           socklen_t salen, bool tls, reactor_connect_cb cb,
                                           void *arg)
{
    struct reactor_connect *c = gw_xcalloc(1, sizeof(*c));

    c->r = r;
    c->cb = cb;
    c->arg = arg;
    c->peer.tls = tls;
    c->peer.conn_id = reactor_next_conn_id(r);
    reactor_addr_format(&sa->sa, salen, c->peer.addr, sizeof(c->peer.addr));
    c->timeout = evtimer_new(r->base, on_connect_timeout, c);
    if (c->timeout == NULL)
        gw_panic(__FILE__, __LINE__, "out of memory");
    LIST_INSERT_HEAD(&r->connects, c, link);
    return c;
}

static int connect_start(struct reactor *r, const union sockaddr_any *sa, socklen_t salen,
                         SSL_CTX *tls, const char *sni, unsigned timeout_ms, reactor_connect_cb cb,
                         void *arg)
{
    struct timeval tv = ms_to_timeval(timeout_ms != 0 ? timeout_ms : REACTOR_CONNECT_TIMEOUT_MS);
    struct reactor_connect *c;
    SSL *ssl = NULL;
    int rc = connect_ssl_new(tls, sni, &ssl);
    int fd;

    if (rc != 0)
        return rc;
    c = connect_new(r, sa, salen, tls != NULL, cb, arg);
    fd = connect_socket(sa, salen);
    if (fd < 0) {
        /* Still reported from the loop, never from inside this call. */
        c->early_errno = errno;
        SSL_free(ssl);
        tv = ms_to_timeval(0);
    } else {
        c->bev = connect_bev_new(r, fd, ssl);
        if (c->bev == NULL) {
            connect_free(c);
            return REACTOR_ERR_SYS;
        }
        bufferevent_setcb(c->bev, NULL, NULL, on_connect_event, c);
    }
    evtimer_add(c->timeout, &tv);
    return 0;
}

int reactor_connect_unix(struct reactor *r, const char *path, reactor_connect_cb cb, void *arg)
{
    union sockaddr_any sa;
    socklen_t salen;

    if (make_unix_addr(path, &sa, &salen) != 0)
        return REACTOR_ERR_ADDR;
    return connect_start(r, &sa, salen, NULL, NULL, 0, cb, arg);
}

int reactor_connect_tcp(struct reactor *r, const char *addr, uint16_t port, struct ssl_ctx_st *tls,
                        const char *sni, unsigned timeout_ms, reactor_connect_cb cb, void *arg)
{
    union sockaddr_any sa;
    socklen_t salen;

    if (parse_numeric(addr, port, &sa, &salen) != 0)
        return REACTOR_ERR_ADDR;
    return connect_start(r, &sa, salen, tls, sni, timeout_ms, cb, arg);
}

void reactor_connects_free_all(struct reactor *r)
{
    struct reactor_connect *c;

    while ((c = LIST_FIRST(&r->connects)) != NULL)
        connect_free(c);
}
