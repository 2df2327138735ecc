/*
 * reactor: the gateway's single event loop and everything that feeds it:
 * listeners (TCP over IPv4/IPv6, TLS with ALPN "h2" and optional client
 * certificates, Unix sockets), outbound non-blocking connects, timers,
 * signals, child processes and systemd notifications.
 *
 * One struct reactor owns one libevent event_base and runs on one thread.
 * It knows nothing about HTTP/2 or protobuf: a listener hands every accepted
 * connection to a callback as a bufferevent plus a description of the peer.
 */
#ifndef GW_REACTOR_H
#define GW_REACTOR_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "base/base.h"

struct event_base;
struct bufferevent;
struct ssl_ctx_st;
struct reactor;
struct reactor_listener;
struct reactor_timer;
struct reactor_child;

/* Error codes: every fallible function returns 0 or one of these. */
#define REACTOR_ERR_SYS   (-1) /* a system call failed; errno-style text is logged */
#define REACTOR_ERR_TLS   (-2) /* TLS configuration (certificate, key, CA) is unusable */
#define REACTOR_ERR_ADDR  (-3) /* the address could not be parsed (numeric only, no DNS) */
#define REACTOR_ERR_INUSE (-4) /* address already in use */

/* What an accepted or connected peer is. Borrowed by callbacks, valid only
 * during the callback; copy what you keep. For outbound TLS connections the
 * client_* fields describe the server's certificate instead (verified
 * against the client context's CA). */
struct reactor_peer {
    char addr[80];        /* "127.0.0.1:5432", "[::1]:80" or "unix:/path" */
    bool tls;             /* the connection runs TLS */
    bool client_verified; /* TLS with a client certificate verified by the CA */
    char client_cn[256];  /* subject CN of the verified client certificate, else "" */
    char client_ou[256];  /* subject OU values joined by ',', else "" */
    uint64_t conn_id;     /* process-unique connection number, for logs */
};

/* ---- loop ------------------------------------------------------------- */

/* Creates the loop. Ignores SIGPIPE process-wide. Caller owns, free with
 * reactor_free(). Returns NULL only if libevent cannot create a base. */
struct reactor *reactor_new(void);
/* Closes listeners (dropping TLS handshakes still running), cancels pending
 * connects, kills (SIGKILL) and reaps children still running, frees timers
 * and signal handlers the caller did not free, then the base. Runs no
 * callbacks; every handle from this reactor is invalid afterwards.
 * Bufferevents already handed out must be freed before this. */
void reactor_free(struct reactor *r);
/* Borrowed, valid until reactor_free(). */
struct event_base *reactor_base(struct reactor *r);
/* Runs until reactor_stop() (or until nothing at all is registered).
 * Updates the cached clock (gw_time_update) once per loop iteration, before
 * the loop waits: libevent 2.1 has no hook between the wait and the
 * callbacks. Returns 0, or REACTOR_ERR_SYS if the loop failed. */
int reactor_run(struct reactor *r) GW_MUSTCHECK;
/* Makes reactor_run() return after the current iteration. */
void reactor_stop(struct reactor *r);
/* Next process-unique connection id (also used for outbound connections). */
uint64_t reactor_next_conn_id(struct reactor *r);

/* ---- TLS ---------------------------------------------------------------- */

/* Server context: certificate chain |cert_path|, private key |key_path|;
 * ALPN selects "h2" only (a client offering no h2 fails the handshake).
 * With |client_ca_path| the server requests a client certificate and
 * verifies it against that CA; |require_client_cert| then refuses clients
 * without one. Returns NULL and fills |err| (human text) on failure.
 * Caller owns, free with SSL_CTX_free(). */
struct ssl_ctx_st *reactor_tls_server_ctx(const char *cert_path, const char *key_path,
                                          const char *client_ca_path, bool require_client_cert,
                                          char *err, size_t errlen);
/* Client context offering ALPN "h2": verifies the server against
 * |ca_path| (NULL: system store; insecure=true: no verification) and
 * presents |cert_path|/|key_path| when given. Caller owns. */
struct ssl_ctx_st *reactor_tls_client_ctx(const char *ca_path, const char *cert_path,
                                          const char *key_path, bool insecure, char *err,
                                          size_t errlen);

/* ---- listeners ---------------------------------------------------------- */

/* Called for each accepted connection. |bev| is owned by the callee (free
 * with bufferevent_free). For TLS listeners the handshake has completed and
 * ALPN selected "h2" before this is called; a failed handshake is logged and
 * never reaches the callback. */
typedef void (*reactor_accept_cb)(struct bufferevent *bev, const struct reactor_peer *peer,
                                  void *arg);

/* Listens on numeric |addr| ("127.0.0.1", "::", "0.0.0.0") and |port| (0:
 * any free port; see reactor_listener_port). |tls| NULL = plaintext; the
 * listener takes one reference on |tls| (SSL_CTX_up_ref). Sets SO_REUSEADDR,
 * TCP_NODELAY on accepted sockets, backlog 1024. Returns 0 or REACTOR_ERR_*. */
int reactor_listen_tcp(struct reactor *r, const char *addr, uint16_t port, struct ssl_ctx_st *tls,
                       reactor_accept_cb cb, void *arg, struct reactor_listener **out) GW_MUSTCHECK;
/* Listens on a Unix socket at |path| (a stale socket file is removed first;
 * the file is created with |mode|, e.g. 0660, and removed on close). */
int reactor_listen_unix(struct reactor *r, const char *path, unsigned mode, struct ssl_ctx_st *tls,
                        reactor_accept_cb cb, void *arg,
                        struct reactor_listener **out) GW_MUSTCHECK;
/* The bound port (useful after listening on port 0); 0 for Unix sockets. */
uint16_t reactor_listener_port(const struct reactor_listener *l);
/* Stops accepting. Connections already accepted are not affected. */
void reactor_listener_disable(struct reactor_listener *l);
/* Closes and frees; removes a Unix socket file. TLS handshakes still
 * running on this listener are dropped. NULL is a no-op. May be called
 * from the listener's own accept callback. */
void reactor_listener_free(struct reactor_listener *l);
/* Replaces the TLS context for future handshakes (SIGHUP certificate
 * reload); takes one reference on |tls|. */
void reactor_listener_set_tls(struct reactor_listener *l, struct ssl_ctx_st *tls);

/* ---- outbound connections ------------------------------------------------ */

/* Called once when a connect finishes. On success |bev| is non-NULL and owned
 * by the callee; on failure |bev| is NULL and |err| says why. */
typedef void (*reactor_connect_cb)(struct bufferevent *bev, const struct reactor_peer *peer,
                                   const char *err, void *arg);

/* Non-blocking connect to a Unix socket |path|. The callback always runs
 * later from the loop (never from inside this call). Returns 0 or an error
 * (then the callback is not called). */
int reactor_connect_unix(struct reactor *r, const char *path, reactor_connect_cb cb,
                         void *arg) GW_MUSTCHECK;
/* Non-blocking connect to numeric |addr|:|port| (no DNS; "[::1]" and "::1"
 * both work). With |tls| the TLS handshake (SNI = |sni| when non-NULL, ALPN
 * h2) completes before the callback. |sni| is also the name the server
 * certificate must match (an IP literal is matched against IP SANs and not
 * sent as SNI); without |sni| only the chain is verified. |timeout_ms|
 * bounds connect plus handshake (0 = 10 s). Returns 0, REACTOR_ERR_ADDR or
 * REACTOR_ERR_TLS (|sni| unusable); failures of the connect itself,
 * immediate or not, arrive through the callback. */
int reactor_connect_tcp(struct reactor *r, const char *addr, uint16_t port, struct ssl_ctx_st *tls,
                        const char *sni, unsigned timeout_ms, reactor_connect_cb cb,
                        void *arg) GW_MUSTCHECK;

/* ---- timers --------------------------------------------------------------- */

typedef void (*reactor_timer_cb)(struct reactor_timer *t, void *arg);

/* A timer that does nothing until armed. Caller owns, free with
 * reactor_timer_free() (which also disarms it). */
struct reactor_timer *reactor_timer_new(struct reactor *r, reactor_timer_cb cb, void *arg);
/* (Re)arms to fire once after |ms| milliseconds. */
void reactor_timer_arm(struct reactor_timer *t, uint64_t ms);
/* Arms to fire every |ms| milliseconds until disarmed. */
void reactor_timer_arm_periodic(struct reactor_timer *t, uint64_t ms);
void reactor_timer_disarm(struct reactor_timer *t);
bool reactor_timer_armed(const struct reactor_timer *t);
void reactor_timer_free(struct reactor_timer *t);

/* ---- signals --------------------------------------------------------------- */

typedef void (*reactor_signal_cb)(int signo, void *arg);

/* Runs |cb| on the loop each time |signo| arrives (libevent evsignal).
 * One handler per signal; a second registration replaces the first.
 * Returns 0 or REACTOR_ERR_SYS. */
int reactor_on_signal(struct reactor *r, int signo, reactor_signal_cb cb, void *arg) GW_MUSTCHECK;

/* ---- child processes ---------------------------------------------------- */

/* Called on the loop once the child has been reaped. |status| is the raw
 * waitpid status (use WIFEXITED etc). The child handle is freed right after
 * the callback returns. */
typedef void (*reactor_child_cb)(struct reactor_child *c, pid_t pid, int status, void *arg);

struct reactor_spawn_opts {
    const char *const *argv; /* argv[0] is the program path (execv, no PATH search) */
    const char *const *envp; /* NULL: inherit the environment */
    const char *cwd;         /* NULL: inherit */
    int stdout_fd;           /* -1: inherit; else dup2'ed onto 1 */
    int stderr_fd;           /* -1: inherit; else dup2'ed onto 2 */
    uid_t uid;               /* with drop_privileges: setgid(gid)+setuid(uid) before exec */
    gid_t gid;
    bool drop_privileges;
    bool new_process_group; /* setpgid(0,0), so the group can be signalled */
    bool die_with_parent;   /* PR_SET_PDEATHSIG SIGKILL */
    /* Sandboxes; all zero keeps the plain fork()/exec() above. */
    int clone_flags; /* CLONE_NEW* flags: the child starts in new namespaces. With
                        CLONE_NEWPID it is PID 1 of its namespace, getppid() says 0,
                        and die_with_parent cannot check that the parent survived
                        until prctl(): pre_exec should (e.g. poll a pipe whose read
                        end only the parent holds for POLLERR). */
    /* Runs in the child after the redirections and the parent-death signal,
     * before other fds are closed and argv[0] is executed (so argv[0] may be
     * a path that only exists after the hook, e.g. after pivot_root).
     * Async-signal-safe code only. Returns 0, or -1 with errno set and
     * |*step| pointing to a static name of what failed. */
    int (*pre_exec)(void *arg, const char **step);
    void *pre_exec_arg;
    /* > 2: write end of a pipe (O_CLOEXEC) kept open in the child up to
     * exec. A failure between fork and exec is written to it as one struct
     * reactor_spawn_failure before the child exits 127; a successful exec
     * closes it, so the reader sees end-of-file with no data (unless
     * pre_exec cleared FD_CLOEXEC to hand it on to the program). The
     * caller closes its own copy after reactor_spawn() returns. 0 = none. */
    int report_fd;
};

/* What reactor_spawn's child writes to |report_fd| when setup fails. */
struct reactor_spawn_failure {
    int err;       /* errno */
    char step[60]; /* NUL-terminated name of the failed step */
};

/* Forks (or clone()s into new namespaces, see clone_flags) and execs.
 * Reaping is done from a SIGCHLD handler with
 * waitpid(-1, WNOHANG), which reaps every child of the process: other code
 * must not wait for children of its own. Exec failure (and any failure
 * between fork and exec, with one line on the child's stderr) shows as exit
 * status 127. Returns 0 and sets |*out| when |out| is non-NULL (borrowed
 * until the exit callback returns) or REACTOR_ERR_SYS. */
int reactor_spawn(struct reactor *r, const struct reactor_spawn_opts *opts, reactor_child_cb cb,
                  void *arg, struct reactor_child **out) GW_MUSTCHECK;
pid_t reactor_child_pid(const struct reactor_child *c);
/* Sends |signo| to the child (or its process group when it has one).
 * Returns 0, or REACTOR_ERR_SYS (also once the child has been reaped). */
int reactor_child_kill(struct reactor_child *c, int signo);
/* Forget the exit callback (the child is still reaped, and |c| freed then). */
void reactor_child_detach(struct reactor_child *c);
/* Number of children not yet reaped. */
unsigned reactor_children_running(const struct reactor *r);

/* Called on the loop for every reaped pid that reactor_spawn() did not
 * start: children forked by other code, and orphans re-parented to this
 * process (PID 1 of a namespace, or a child subreaper). |status| is the
 * raw waitpid status. */
typedef void (*reactor_orphan_cb)(pid_t pid, int status, void *arg);

/* Sets (|cb| NULL: removes) the orphan hook. Also installs the SIGCHLD
 * handler if reactor_spawn() has not yet, so such children are reaped
 * from now on. Returns 0 or REACTOR_ERR_SYS (the handler could not be
 * installed; the hook is not set). */
int reactor_set_orphan_cb(struct reactor *r, reactor_orphan_cb cb, void *arg) GW_MUSTCHECK;

/* ---- systemd -------------------------------------------------------------- */

/* Sends |state| ("READY=1", "STOPPING=1", "WATCHDOG=1", ...) to
 * $NOTIFY_SOCKET as one datagram (abstract "@..." names supported) without
 * ever blocking. No-op returning 0 when NOTIFY_SOCKET is unset; else 0,
 * REACTOR_ERR_ADDR (not a path or "@" name) or REACTOR_ERR_SYS (logged). */
int reactor_sd_notify(struct reactor *r, const char *state);
/* Watchdog interval from $WATCHDOG_USEC (and $WATCHDOG_PID when set),
 * in microseconds; 0 when the watchdog is off. */
uint64_t reactor_sd_watchdog_usec(void);
/* Moves $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID out of the
 * environment into process-lifetime copies that the two functions above
 * read from then on, so that child processes (a managed driver, the
 * embedded PostgreSQL) neither inherit them nor notify the service manager
 * in our name. Call once, before spawning children; later calls do
 * nothing. */
void reactor_sd_env_take(void);

#endif /* GW_REACTOR_H */
