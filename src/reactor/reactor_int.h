/*
 * reactor internals shared by the files of src/reactor/ only.
 *
 * struct reactor keeps every object it hands out on an intrusive list so
 * that reactor_free() can release whatever its users did not (listeners,
 * in-flight handshakes and connects, timers, signal handlers, children).
 * The element types are defined in the one .c file that uses them.
 */
#ifndef GW_REACTOR_INT_H
#define GW_REACTOR_INT_H

#include <sys/queue.h>
#include <sys/socket.h>

#include "reactor/reactor.h"

struct event;
struct ssl_st;
struct reactor_connect;
struct reactor_signal;

#define REACTOR_LISTEN_BACKLOG           1024
#define REACTOR_TLS_HANDSHAKE_TIMEOUT_MS 10000 /* accepted TLS connections */
#define REACTOR_CONNECT_TIMEOUT_MS       10000 /* outbound default (connect + handshake) */
#define REACTOR_ACCEPT_BACKOFF_MS        1000  /* pause after EMFILE & co. */

struct reactor {
    struct event_base *base;
    uint64_t last_conn_id;   /* reactor_next_conn_id() pre-increments */
    bool stop;               /* set by reactor_stop(), cleared when run returns */
    struct event *sigchld;   /* created on the first reactor_spawn() */
    unsigned children_alive; /* spawned and not yet reaped */
    LIST_HEAD(, reactor_listener) listeners;
    LIST_HEAD(, reactor_connect) connects; /* outbound, callback not yet run */
    LIST_HEAD(, reactor_timer) timers;
    LIST_HEAD(, reactor_signal) signals;
    LIST_HEAD(, reactor_child) children;
    /* Gets the reaped pids reactor_spawn() did not start (reactor_set_orphan_cb). */
    reactor_orphan_cb orphan_cb;
    void *orphan_arg;
};

/* Teardown helpers for reactor_free(), one per file that owns a list. Each
 * frees its objects without running user callbacks. */
void reactor_listeners_free_all(struct reactor *r);
void reactor_connects_free_all(struct reactor *r);
void reactor_children_free_all(struct reactor *r);

/* Fills |peer|'s TLS fields from a completed handshake: tls, and when the
 * peer presented a certificate that verified, client_verified, client_cn
 * and client_ou. */
void reactor_tls_describe_peer(struct ssl_st *ssl, struct reactor_peer *peer);
/* Makes |ssl| (client side) send SNI |name| and verify the server
 * certificate against it; an IP literal is matched against IP SANs and not
 * sent as SNI. Returns 0 or REACTOR_ERR_TLS. */
int reactor_tls_set_server_name(struct ssl_st *ssl, const char *name);
/* True when the handshake on |ssl| selected ALPN "h2". */
bool reactor_tls_alpn_is_h2(struct ssl_st *ssl);
/* Describes OpenSSL error |e| (0: the oldest one queued in this thread) in
 * |buf|, or copies |fallback| when there is none. Clears the thread's
 * error queue so a later failure is not blamed on this one. */
void reactor_tls_error_text(unsigned long e, const char *fallback, char *buf, size_t len);

/* Formats a socket address as in struct reactor_peer.addr. */
void reactor_addr_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t buflen);

#endif /* GW_REACTOR_INT_H */
