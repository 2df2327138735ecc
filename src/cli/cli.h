/*
 * cli: the `openshell` command-line client.
 *
 * One process, one reactor loop, one lazily opened gRPC channel to the
 * gateway. Blocking name resolution (getaddrinfo) happens before the loop
 * runs; every byte of a call then moves on the loop. A synchronous helper
 * (cli_unary) runs the loop until its call ends, so commands read like
 * straight-line code; streaming commands start their calls and run the
 * loop themselves (cli_loop_run) until a callback says cli_loop_exit().
 *
 * cli_unary()/cli_unary_status() run the loop themselves and must not be
 * called from inside a loop callback (libevent loops do not nest): leave
 * the loop with cli_loop_exit() first, or use cli_stream_start() +
 * cli_stream_send() + cli_stream_close_send() for an asynchronous unary.
 *
 * Errors are one line on stderr starting "openshell: "; exit codes are
 * 0 ok, 1 local failure, 2 usage, 10 + gRPC status for a failed call
 * (24 = UNAVAILABLE also when the gateway cannot be reached).
 */
#ifndef GW_CLI_H
#define GW_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <protobuf-c/protobuf-c.h>

#include "base/base.h"
#include "pbjson/pbjson.h"

struct reactor;
struct json_t;

/* Exit codes. */
#define CLI_EXIT_OK      0
#define CLI_EXIT_FAIL    1  /* local failure: unreadable file, --wait ended in ERROR */
#define CLI_EXIT_USAGE   2  /* unknown command/option, missing argument, bad value */
#define CLI_EXIT_GRPC    10 /* + the gRPC status code */
#define CLI_EXIT_CONNECT 24 /* the gateway cannot be reached (10 + UNAVAILABLE) */

/* Global options, resolved (flag > env > default). Strings are borrowed from
 * argv/environ or owned by the struct cli; valid until cli_free(). */
struct cli_opts {
    const char *endpoint;        /* as given, parsed by grpc_endpoint_parse() */
    const char *ca, *cert, *key; /* NULL when unused */
    const char *token;           /* bearer, or NULL */
    const char *workspace;       /* "" = gateway default */
    bool json;                   /* -o json */
    unsigned timeout_s;          /* unary deadline */
    const char *self;            /* absolute path of this binary (/proc/self/exe) */
};

/* Options + lazily opened connection + loop. */
struct cli;

/* Creates the client for |opts| (copied; the strings it points to must stay
 * valid until cli_free()). Nothing is connected yet. Caller owns, free with
 * cli_free(). Never NULL (aborts if libevent cannot create a loop). */
struct cli *cli_new(const struct cli_opts *opts);
/* Cancels open streams (no callbacks), closes the connection, frees. NULL ok. */
void cli_free(struct cli *c);

/* Borrowed, valid until cli_free(). */
const struct cli_opts *cli_opts(const struct cli *c);
struct reactor *cli_reactor(struct cli *c);

/* A gRPC status: |code| is a GRPC_STATUS_* value, |message| the server's
 * text (or a local description for UNAVAILABLE/DEADLINE_EXCEEDED). */
struct cli_status {
    int code;
    char message[1024];
};

/* ---- calls ---------------------------------------------------------------- */

/* Unary call with the --timeout deadline. Returns 0 with *resp set (free with
 * protobuf_c_message_free_unpacked(*resp, NULL)); otherwise prints the
 * one-line error for |what| (e.g. "get sandbox \"demo\"") and returns the
 * exit code (10 + status, 24 when the gateway cannot be reached). Runs the
 * loop: not from inside a loop callback. */
int cli_unary(struct cli *c, const char *path, const ProtobufCMessage *req,
              const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
              const char *what) GW_MUSTCHECK;
/* Same, but prints nothing: returns the gRPC status code (0 = OK) and fills
 * |st| (a connection failure is UNAVAILABLE with the reason as message). */
int cli_unary_status(struct cli *c, const char *path, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                     struct cli_status *st) GW_MUSTCHECK;

/* Streaming calls (server, client or bidi) on the same connection. */
struct cli_stream;
/* Each response message, borrowed until the callback returns. */
typedef void (*cli_msg_fn)(struct cli_stream *s, const ProtobufCMessage *msg, void *arg);
/* Runs exactly once when the call ends (not after cli_stream_cancel()); the
 * stream is freed after it returns. */
typedef void (*cli_end_fn)(struct cli_stream *s, const struct cli_status *st, void *arg);

/* Starts the call (connecting first if needed, which runs the loop until the
 * connection is up: call it before cli_loop_run() or from a callback once
 * connected). No deadline. Returns the stream, or NULL after printing the
 * error when the gateway cannot be reached (then *exit_code is set). The
 * stream is owned by the client until |on_end| returns or it is cancelled. */
struct cli_stream *cli_stream_start(struct cli *c, const char *path,
                                    const ProtobufCMessageDescriptor *resp_desc, cli_msg_fn on_msg,
                                    cli_end_fn on_end, void *arg, int *exit_code);
/* As cli_stream_start() but prints nothing: NULL with |st| filled (code
 * UNAVAILABLE, the OS/TLS reason as message) when the gateway cannot be
 * reached. For callers that retry (events watch). */
struct cli_stream *cli_stream_try_start(struct cli *c, const char *path,
                                        const ProtobufCMessageDescriptor *resp_desc,
                                        cli_msg_fn on_msg, cli_end_fn on_end, void *arg,
                                        struct cli_status *st);
/* Queues one request message: GRPC_SEND_OK, GRPC_SEND_FULL (stop producing
 * until the writable callback) or GRPC_ERR_CLOSED. */
int cli_stream_send(struct cli_stream *s, const ProtobufCMessage *m) GW_MUSTCHECK;
/* |fn| runs when a stream that returned GRPC_SEND_FULL can take more. */
void cli_stream_set_writable(struct cli_stream *s, void (*fn)(struct cli_stream *s, void *arg));
/* Half-closes the request side. */
void cli_stream_close_send(struct cli_stream *s);
/* Abandons the call (RST_STREAM); on_end is NOT called afterwards and |s|
 * is invalid on return. */
void cli_stream_cancel(struct cli_stream *s);
/* Stops (true) or resumes delivery of response messages (flow control). */
void cli_stream_pause(struct cli_stream *s, bool paused);

/* The loop: runs until cli_loop_exit() (or until nothing is registered).
 * Timers, signals and fds through cli_reactor() (src/reactor/reactor.h). */
void cli_loop_run(struct cli *c);
void cli_loop_exit(struct cli *c);

/* GetSandbox by |name| in the --workspace. Returns 0 with *id (caller frees
 * with free()), or the exit code after printing NOT_FOUND etc. Runs the loop. */
int cli_sandbox_id(struct cli *c, const char *name, char **id) GW_MUSTCHECK;

/* ---- errors (cli_out.c): each prints exactly one line to stderr ------------ */

/* 10 + |grpc_code|; 0 for OK. */
int cli_exit_for_status(int grpc_code);
/* "openshell: <what>: <STATUS>: <message>" with a hint where one helps
 * (UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE, NOT_FOUND of a sandbox).
 * Returns the exit code. */
int cli_fail_status(const char *what, const struct cli_status *st);
/* Same with |hint| instead of the default one (NULL: the default). */
int cli_fail_status_hint(const char *what, const struct cli_status *st, const char *hint);
/* Usage error: "openshell: <msg>; try 'openshell CMD --help'" (|cmd| NULL:
 * 'openshell --help'). Returns 2. */
int cli_usage(const char *cmd, const char *fmt, ...) GW_PRINTF(2, 3);
/* Local failure "openshell: <msg>". Returns 1. */
int cli_fail(const char *fmt, ...) GW_PRINTF(1, 2);
/* "openshell: cannot reach the gateway at <endpoint>: <reason>; <hint>".
 * Returns 24. */
int cli_fail_connect(const char *endpoint, const char *reason);

/* A getopt_long() failure for command |cmd| ("sandbox create"): |ch| is the
 * '?' or ':' it returned (optstring must start with ':'), |argv| the vector
 * it parsed. Prints the usage error, returns 2. */
int cli_bad_option(const char *cmd, int ch, char *const *argv);
/* Parses a decimal integer 0..|max| (no sign, no junk). Returns 0 or -1. */
int cli_parse_uint(const char *s, unsigned long max, unsigned long *out) GW_MUSTCHECK;

/* ---- output (cli_out.c) ---------------------------------------------------- */

/* Compact proto3 JSON of |m| + "\n" on stdout (flushed). */
void cli_print_json(const ProtobufCMessage *m);

/* An aligned table: a header row, then rows; columns separated by two
 * spaces, every column but the last padded to its widest cell (UTF-8 aware
 * by code points). Cells are copied. */
struct cli_table;
/* |headers| has |ncols| entries. Caller owns, free with cli_table_free(). */
struct cli_table *cli_table_new(size_t ncols, const char *const *headers);
/* Appends a row of |ncols| cells (NULL prints as "-"; "" as ""). */
void cli_table_add(struct cli_table *t, const char *const *cells);
/* Renders the table into |out|. */
void cli_table_print(const struct cli_table *t, FILE *out);
/* Renders into a heap string (caller frees with free()). */
char *cli_table_render(const struct cli_table *t);
void cli_table_free(struct cli_table *t);

/* "key: value" records: keys padded so the values line up. */
struct cli_record;
struct cli_record *cli_record_new(void);
/* Appends "key: value" (value NULL or "" prints as "-"). */
void cli_record_add(struct cli_record *r, const char *key, const char *value);
void cli_record_addf(struct cli_record *r, const char *key, const char *fmt, ...) GW_PRINTF(3, 4);
void cli_record_print(const struct cli_record *r, FILE *out);
char *cli_record_render(const struct cli_record *r);
void cli_record_free(struct cli_record *r);

/* UTC "2024-05-01T12:00:00Z" for |ms| since the epoch ("-" for 0) into |out|. */
void cli_time_format(int64_t ms, char out[32]);
/* "READY" for SANDBOX_PHASE_READY etc. (the enum value name without the
 * SANDBOX_PHASE_ prefix); "UNKNOWN" for values out of range. */
const char *cli_phase_name(int phase);

/* ---- the standard descriptors on the loop (cli_io.c) ------------------------- */

struct event;
struct evbuffer;

/* Makes |fds| (among 0, 1, 2) non-blocking. The original flags are kept
 * process-wide (the first call's win) and put back by cli_std_restore(),
 * which is also registered with atexit(). */
void cli_std_nonblocking(const int *fds, size_t n);
/* Puts the terminal at fd 0 in raw mode, as ssh does for an interactive
 * session (keys, ^C and ^Z included, pass unprocessed). Returns 0 or -1
 * (errno set). */
int cli_std_raw(void);
/* Puts back the terminal settings and the descriptor flags. Idempotent. */
void cli_std_restore(void);

/* A descriptor written without blocking: the bytes it does not take are
 * held (and written when it is writable); the caller pauses its stream
 * while anything is held. */
struct cli_sink;
/* |o| drained what it held (on_drained), or a write failed for good
 * (on_failed: o->err says why, the held bytes are dropped and every later
 * write is discarded). Called from the loop or from cli_sink_write(). */
typedef void (*cli_sink_fn)(struct cli_sink *o, void *arg);
struct cli_sink {
    int fd;
    int err;               /* errno of the write that failed for good, or 0 */
    struct event *ev;      /* EV_WRITE, pending only while |held| is not empty */
    struct evbuffer *held; /* bytes the descriptor did not take yet */
    cli_sink_fn on_drained, on_failed;
    void *arg;
};
/* Returns 0 or -1 (libevent failed; cli_sink_free() still needed). */
int cli_sink_init(struct cli_sink *o, struct cli *c, int fd, cli_sink_fn on_drained,
                  cli_sink_fn on_failed, void *arg) GW_MUSTCHECK;
void cli_sink_free(struct cli_sink *o);
/* Bytes held. */
size_t cli_sink_held(const struct cli_sink *o);
/* Writes |len| bytes as far as the descriptor takes them right away (none
 * when |queue|: something held elsewhere must go first) and holds the rest.
 * Returns true when bytes are now held (pause the stream until on_drained);
 * false when all were written, or when they were dropped because the
 * descriptor failed (on_failed has run). */
bool cli_sink_write(struct cli_sink *o, const uint8_t *data, size_t len, bool queue);

/* A descriptor read in chunks of up to 64 KiB while on. A descriptor epoll
 * refuses (a regular file, /dev/null) is read from a zero timer instead. */
/* A chunk, borrowed for the call; return true to go on reading, false to
 * stop until cli_source_enable(true) (the call is congested or gone). */
typedef bool (*cli_source_data_fn)(void *arg, const uint8_t *data, size_t len);
/* End of input (or a read error): the source is off for good. */
typedef void (*cli_source_eof_fn)(void *arg);
struct cli_source {
    int fd;
    struct event *ev; /* EV_READ on |fd|, or a 0 s timer */
    bool poll;        /* |fd| can be polled */
    bool on;          /* reading */
    bool eof;         /* input ended */
    cli_source_data_fn on_data;
    cli_source_eof_fn on_eof;
    void *arg;
};
/* Sets |in| up, off. Returns 0 or -1 (libevent failed; cli_source_free()
 * still needed). */
int cli_source_open(struct cli_source *in, struct cli *c, int fd, cli_source_data_fn on_data,
                    cli_source_eof_fn on_eof, void *arg) GW_MUSTCHECK;
/* Starts (true) or stops reading; no-op after end of input. */
void cli_source_enable(struct cli_source *in, bool on);
void cli_source_free(struct cli_source *in);

/* ---- commands -------------------------------------------------------------- */

/* Command entry points: argv[0] is the command word ("exec"), argc/argv are
 * what follows the command words; return the process exit code. Each parses
 * its own options with getopt_long (set optind = 0 first) and handles --help. */
int cli_cmd_gateway_info(struct cli *c, int argc, char **argv);
int cli_cmd_sandbox_create(struct cli *c, int argc, char **argv);
int cli_cmd_sandbox_list(struct cli *c, int argc, char **argv);
int cli_cmd_sandbox_get(struct cli *c, int argc, char **argv);
int cli_cmd_sandbox_delete(struct cli *c, int argc, char **argv);
int cli_cmd_sandbox_stop(struct cli *c, int argc, char **argv);
int cli_cmd_sandbox_start(struct cli *c, int argc, char **argv);
int cli_cmd_workspace_create(struct cli *c, int argc, char **argv);
int cli_cmd_workspace_list(struct cli *c, int argc, char **argv);
int cli_cmd_workspace_delete(struct cli *c, int argc, char **argv);
int cli_cmd_workspace_member_add(struct cli *c, int argc, char **argv);
int cli_cmd_workspace_member_remove(struct cli *c, int argc, char **argv);
int cli_cmd_workspace_member_list(struct cli *c, int argc, char **argv);
int cli_cmd_events_watch(struct cli *c, int argc, char **argv);

int cli_cmd_sandbox_exec(struct cli *c, int argc, char **argv);    /* CLI-B */
int cli_cmd_sandbox_connect(struct cli *c, int argc, char **argv); /* CLI-B */
int cli_cmd_sandbox_logs(struct cli *c, int argc, char **argv);    /* CLI-B */
int cli_cmd_ssh_proxy(struct cli *c, int argc, char **argv);       /* CLI-B */

#endif /* GW_CLI_H */
