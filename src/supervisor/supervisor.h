/*
 * supervisor: openshell-supervisor, PID 1 of a sandbox.
 *
 *   main.c         arguments and environment, PID-1 duties (reaping every
 *                  child, signals, shutdown), the main command (exact argv,
 *                  on a PTY when tty), its output captured as log lines
 *   sup_session.c  the connection to the gateway: ConnectSupervisor (hello,
 *                  heartbeats, reconnect with backoff), ReportMainProcessExit,
 *                  PushSandboxLogs, RefreshSandboxToken
 *   sup_relay.c    RelayOpen: dial the target (the SSH socket or a loopback
 *                  TCP port), open RelayStream, bridge bytes with flow control
 *   sup_ssh.c      the SSH server on a Unix socket inside the sandbox
 *
 * One libevent loop (src/reactor) in the supervisor process; the SSH server
 * forks one child per connection, which may block (it serves one client).
 */
#ifndef GW_SUPERVISOR_H
#define GW_SUPERVISOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "base/base.h"
#include "http2/grpc.h"

struct reactor;
struct Openshell__V1__RelayOpen;

/* ---- gateway endpoint and token (sup_session.c) ---------------------------------
 *
 * OPENSHELL_ENDPOINT forms are grpc_endpoint_parse()'s ("unix:/path",
 * "unix:///path", "http://host[:port]", "https://host[:port]") with one
 * more rule: |host| is a numeric IPv4/IPv6 address ("[::1]") or "localhost"
 * (dialed as 127.0.0.1), since the loop never resolves names.
 */
struct sup_endpoint {
    struct grpc_endpoint gw; /* as parsed; gw.host is kept for TLS names */
    char addr[64];           /* TCP: numeric address to dial, without brackets */
};

/* Parses |url| into |out|. Returns 0, or -1 with a one-line reason in |err|. */
int sup_endpoint_parse(const char *url, struct sup_endpoint *out, char *err,
                       size_t errlen) GW_MUSTCHECK;

/* Reads the "exp" claim of compact JWT |token| without verifying anything
 * (base64url middle segment, JSON). Returns 0 and |*exp_s| (0: never
 * expires, also when the claim is absent), or -1 when the token is not a
 * JWT or the claims are not a JSON object with a numeric exp. */
int sup_token_exp(const char *token, int64_t *exp_s) GW_MUSTCHECK;

/* ---- session with the gateway (sup_session.c) --------------------------------
 *
 * Dials the endpoint and holds ConnectSupervisor (hello, heartbeats, relay
 * requests) with `authorization: Bearer <token>`, reconnecting with
 * exponential backoff (100 ms -> 5 s, jittered; 5 s after UNAUTHENTICATED,
 * PERMISSION_DENIED, NOT_FOUND, INVALID_ARGUMENT), reset by an accepted
 * session. After each accepted session a PushSandboxLogs stream carries
 * the queued log lines (batches of at most 100, every 500 ms). The token
 * is refreshed with RefreshSandboxToken at 80 % of its lifetime when it
 * has one. ReportMainProcessExit runs on a connection of its own and is
 * retried until the gateway answers OK or a status that cannot change.
 */
struct sup_session;

struct sup_session_opts {
    const struct sup_endpoint *endpoint; /* copied */
    const char *sandbox_id;              /* copied */
    const char *instance_id;             /* copied */
    const char *token;                   /* copied, NULL or "": no authorization header */
    const char *ca_file;                 /* https: CA bundle, NULL: system store */
    const char *ssh_socket;              /* where "ssh" relays are dialed; copied */
};

/* Starts connecting (from the loop, never inside this call). Returns the
 * session (free with sup_session_free) or NULL with a reason in |err|
 * (TLS context unusable). */
struct sup_session *sup_session_new(struct reactor *r, const struct sup_session_opts *o, char *err,
                                    size_t errlen);
/* Closes the session, the relays and every call; drops queued log lines
 * and a pending exit report. NULL is a no-op. */
void sup_session_free(struct sup_session *s);

/* Log line targets. */
#define SUP_TARGET_MAIN       "main"
#define SUP_TARGET_SUPERVISOR "openshell-supervisor"

/* Queues one log line (|msg|, |len| bytes, need not be NUL-terminated; made
 * valid UTF-8) for PushSandboxLogs, stamped now. |target| must be a static
 * string. At most SUP_LOG_PENDING_MAX lines wait; the oldest are dropped
 * and counted (reported later as one warn line). */
#define SUP_LOG_PENDING_MAX 2000
void sup_session_log(struct sup_session *s, enum log_level level, const char *target,
                     const char *msg, size_t len);
/* Reports the main process's exit (ReportMainProcessExit) once. */
void sup_session_report_exit(struct sup_session *s, int exit_code);
/* True while a session is accepted by the gateway. */
bool sup_session_connected(const struct sup_session *s);

/* ---- relays (sup_relay.c) ------------------------------------------------------
 *
 * RelayOpen: dial the target (the SSH socket, or a loopback TCP port),
 * answer with a relay_open_result, open a RelayStream call on the session's
 * channel, send init{channel_id}, then copy bytes both ways with flow
 * control: at most one 64 KiB chunk is read from the target while the call
 * is not congested, and the call's receive side is paused while more than
 * SUP_RELAY_HIGH_WATER bytes wait to be written to the target.
 */
struct sup_relays;

#define SUP_RELAY_CHUNK      (64 * 1024)  /* target bytes per RelayFrame */
#define SUP_RELAY_HIGH_WATER (256 * 1024) /* target output before pausing the call */
#define SUP_RELAY_LOW_WATER  (64 * 1024)  /* ... and resuming it */

/* The answer to a RelayOpen, called once per request that is not a
 * duplicate. |error| is NULL on success. */
typedef void (*sup_relay_result_cb)(void *arg, const char *channel_id, const char *error);
/* The channel and metadata to open RelayStream with, at the time the dial
 * succeeded; NULL when no session is up (the relay then closes). Both are
 * borrowed for the duration of the call. */
typedef struct grpc_channel *(*sup_relay_channel_cb)(void *arg, const char *const **metadata);

struct sup_relays_opts {
    const char *ssh_socket; /* copied */
    sup_relay_result_cb on_result;
    sup_relay_channel_cb channel;
    void *arg;
};

/* Caller owns, free with sup_relays_free(). */
struct sup_relays *sup_relays_new(struct reactor *r, const struct sup_relays_opts *o);
/* Closes every relay (cancelling their calls) and frees |m|; dials still
 * running finish later and close at once. No callbacks run. */
void sup_relays_free(struct sup_relays *m);
/* Handles one RelayOpen (a request for a channel id already being served
 * is ignored: the gateway re-sends pending requests on a new session).
 * |ro| is borrowed for the call. A failure to start dialing is answered
 * through on_result before this returns. */
void sup_relays_open(struct sup_relays *m, const struct Openshell__V1__RelayOpen *ro);
/* Checks a TCP relay target: |host| loopback (127.0.0.0/8, ::1, or
 * "localhost" which becomes 127.0.0.1) and |port| 1..65535. Returns 0 with
 * the numeric address in |addr|, or -1 with a reason in |err|. */
int sup_relay_check_tcp(const char *host, uint32_t port, char *addr, size_t addrlen, char *err,
                        size_t errlen) GW_MUSTCHECK;
/* Relays dialing or running. */
unsigned sup_relays_active(const struct sup_relays *m);

/* ---- SSH server (sup_ssh.c) ---------------------------------------------------
 *
 * libssh server, one forked child per connection. Authentication: "none"
 * (and any other method) is accepted: whoever reaches this socket came
 * through the sandbox's own namespaces or through the gateway's relay,
 * which authenticated the caller, as upstream's supervisor does. Serves
 * one session channel per connection with pty-req, env, exec (run as
 * `/bin/sh -c <command>`), shell (a login shell), window-change and
 * signal requests, and reports exit-status (or exit-signal) before closing
 * the channel. Without a PTY stdout is channel data and stderr extended
 * data; with a PTY everything is channel data. Commands run in |workdir|
 * with |envp| plus the client's env requests.
 */
struct sup_ssh;

struct sup_ssh_opts {
    const char *socket_path; /* Unix socket to listen on (replaced if stale) */
    const char *workdir;     /* cwd of commands, e.g. "/sandbox" */
    const char *shell;       /* login shell for "shell" requests; NULL: /bin/bash, else /bin/sh */
    char *const *envp;       /* base environment of commands; NULL: the supervisor's */
};

/* Generates the host key (Ed25519, in memory) and starts listening.
 * Already forks one (spare) connection child, so the caller's SIGCHLD
 * reaper must be in place first. Returns NULL with a reason in |err|. */
struct sup_ssh *sup_ssh_start(struct reactor *r, const struct sup_ssh_opts *o, char *err,
                              size_t errlen);
/* Stops listening and sends SIGTERM to every connection child (they end
 * their commands, report them to their clients and exit within a few
 * seconds; the caller reaps them, without calling sup_ssh_child_exited).
 * Frees |s|. */
void sup_ssh_stop(struct sup_ssh *s);
const char *sup_ssh_socket_path(const struct sup_ssh *s);
/* main.c's reaper reports every reaped pid; returns true when it was one
 * of the server's connection children. */
bool sup_ssh_child_exited(struct sup_ssh *s, pid_t pid, int status);

#endif /* GW_SUPERVISOR_H */
