/*
 * store: PostgreSQL on the gateway's loop.
 *
 * A small pool of non-blocking libpq connections (PQconnectStartParams +
 * PQconnectPoll, then pipeline mode) plus one connection that LISTENs for
 * notifications. Queries are prepared statements sent with
 * PQsendQueryPrepared + PQpipelineSync; results are read on socket
 * readiness. Several queries may be in flight on one connection (pipeline),
 * each isolated by its own sync point. A connection that fails is closed,
 * its in-flight queries fail with STORE_ERR_UNAVAILABLE, and it reconnects
 * with backoff (100 ms doubling to 5 s). Nothing here blocks: no PQexec,
 * no DNS (host names other than "localhost" must come with hostaddr=).
 *
 * At startup the first connection applies the numbered migrations embedded
 * from sql/ under an advisory lock (a second gateway starting at the same
 * time waits for the lock and then finds them applied).
 */
#ifndef GW_STORE_H
#define GW_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

struct reactor;
struct store;
struct pg_result;

/* Per-query outcomes (struct store_result.status). */
#define STORE_OK              0
#define STORE_ERR_UNAVAILABLE (-1) /* no connection, or it broke before the result */
#define STORE_ERR_TIMEOUT     (-2) /* no result within the query timeout */
#define STORE_ERR_QUERY       (-3) /* the server reported an error; see sqlstate */
#define STORE_ERR_BUSY        (-4) /* the queue of waiting queries is full */
#define STORE_ERR_CONFIG      (-5) /* bad connection string (store_new) */

struct store_result {
    int status;            /* STORE_OK or STORE_ERR_* */
    struct pg_result *res; /* PGresult (tuples) on STORE_OK; borrowed during the callback */
    const char *sqlstate;  /* five-character SQLSTATE on STORE_ERR_QUERY, else "" */
    const char *error;     /* human text, "" on success; borrowed */
};

/* Called exactly once per query, always from the loop (never from inside
 * store_query). */
typedef void (*store_cb)(const struct store_result *r, void *arg);

/* A prepared statement. Declare them static; the pool prepares each one on
 * a connection the first time it is used there. */
struct store_stmt {
    const char *name; /* unique, e.g. "ws_create" */
    const char *sql;
    int nparams;
    bool writes_events; /* commits lifecycle events: on_events_written follows success */
};

struct store_opts {
    const char *conninfo;       /* URL or key=value string */
    unsigned pool_size;         /* query connections, 0 = 4 */
    unsigned query_timeout_ms;  /* 0 = 10000 */
    unsigned max_queue;         /* queries waiting for a connection, 0 = 4096 */
    const char *listen_channel; /* LISTEN on this channel, NULL = none */
    /* The store became usable (first time: migrations applied) or
     * unusable. |up| false: every connection is down; queries fail fast. */
    void (*on_state)(struct store *s, bool up, void *arg);
    /* A NOTIFY on listen_channel arrived; |payload| borrowed. */
    void (*on_notify)(struct store *s, const char *payload, void *arg);
    /* The LISTEN connection (re)connected: notifications may have been
     * missed while it was down. */
    void (*on_listen_reset)(struct store *s, void *arg);
    /* A statement marked writes_events committed (after its callback). */
    void (*on_events_written)(struct store *s, void *arg);
    void *arg;
};

/* Parses the connection string and prepares the pool; nothing connects
 * until store_start(). Returns NULL with |err| set on a bad string (for
 * example a host name that would need DNS). Caller owns, free with
 * store_free(). */
struct store *store_new(struct reactor *r, const struct store_opts *o, char *err, size_t errlen);
/* Starts connecting and applying migrations; on_state(true) follows. */
void store_start(struct store *s);
/* Closes every connection; queries still in flight fail with
 * STORE_ERR_UNAVAILABLE before this returns. */
void store_free(struct store *s);

/* Runs |stmt| with text parameters |values| (NULL entries are SQL NULL;
 * |lengths| NULL = all text, else a non-negative length marks a binary
 * parameter). Returns 0 (|cb| will run) or STORE_ERR_BUSY/UNAVAILABLE
 * (|cb| will not run). */
int store_query(struct store *s, const struct store_stmt *stmt, const char *const *values,
                const int *lengths, store_cb cb, void *arg) GW_MUSTCHECK;

bool store_is_up(const struct store *s);
/* True after a migration failed: the store will not retry; the gateway
 * should exit. */
bool store_is_fatal(const struct store *s);
/* Last connection or migration error, for logs; "" if none. Borrowed. */
const char *store_last_error(const struct store *s);
/* Numbers for /metrics and tests. */
unsigned store_pool_size(const struct store *s);
unsigned store_pool_busy(const struct store *s); /* connections with queries in flight */
unsigned store_queue_len(const struct store *s); /* queries waiting for a connection */

/* ---- result helpers (thin wrappers over libpq, for typed queries) --------- */

int store_ntuples(const struct store_result *r);
/* Borrowed text of a column; "" for NULL. */
const char *store_get(const struct store_result *r, int row, int col);
bool store_is_null(const struct store_result *r, int row, int col);
int64_t store_get_i64(const struct store_result *r, int row, int col);
/* Decodes a bytea column (hex text) into a new buffer: caller owns, free(). */
uint8_t *store_get_bytea(const struct store_result *r, int row, int col, size_t *len);

/* SQLSTATE classes callers map to gRPC statuses. */
bool store_is_unique_violation(const struct store_result *r); /* 23505 */
bool store_is_raise_exception(const struct store_result *r);  /* P0001 (our functions) */

/* ---- typed statements (store_queries.c) ------------------------------------
 *
 * Parameters are text unless noted; results use the column orders below.
 * Errors raised by our SQL functions come back as STORE_ERR_QUERY with
 * SQLSTATE P0001 and the reason as the error text ("workspace_not_found",
 * "workspace_terminating", "member_limit", "sandbox_not_found", "conflict");
 * name clashes as 23505 (store_is_unique_violation).
 */

/* Workspace columns: 0 id, 1 name, 2 labels (JSON text), 3 phase
 * ("ACTIVE"/"TERMINATING"), 4 created_at_ms, 5 terminating_at_ms (0 = not),
 * 6 resource_version. */
enum {
    STORE_WS_ID,
    STORE_WS_NAME,
    STORE_WS_LABELS,
    STORE_WS_PHASE,
    STORE_WS_CREATED_MS,
    STORE_WS_TERMINATING_MS,
    STORE_WS_RV
};
extern const struct store_stmt store_ws_create; /* $1 id, $2 name, $3 labels JSON, $4 actor */
extern const struct store_stmt store_ws_get;    /* $1 name */
/* $1 labels JSON to contain ("{}" = all), $2 limit, $3 offset, $4 member
 * subject ("" = every workspace) */
extern const struct store_stmt store_ws_list;
/* $1 name, $2 actor -> one text column: "deleted", "not_found", "default",
 * "busy:<kinds>" */
extern const struct store_stmt store_ws_delete;
/* $1 name, $2 actor -> as store_ws_delete, but "ready" instead of deleting
 * (the workspace is TERMINATING and empty) */
extern const struct store_stmt store_ws_delete_prepare;

/* Member columns: 0 id, 1 workspace, 2 principal_subject, 3 role
 * ("USER"/"ADMIN"), 4 resource_version, 5 created_at_ms. */
enum {
    STORE_MEM_ID,
    STORE_MEM_WORKSPACE,
    STORE_MEM_SUBJECT,
    STORE_MEM_ROLE,
    STORE_MEM_RV,
    STORE_MEM_CREATED_MS
};
/* $1 id, $2 workspace, $3 subject, $4 role, $5 actor */
extern const struct store_stmt store_member_add;
/* $1 workspace, $2 subject, $3 actor -> text: "removed", "absent", "not_found" */
extern const struct store_stmt store_member_remove;
/* $1 workspace, $2 limit, $3 offset */
extern const struct store_stmt store_member_list;
/* $1 workspace, $2 subject -> role column, no row when not a member */
extern const struct store_stmt store_member_role;

/* Sandbox columns: 0 id, 1 workspace, 2 name, 3 owner, 4 created_by,
 * 5 labels JSON, 6 annotations JSON, 7 spec (bytea), 8 status (bytea, may
 * be NULL), 9 driver, 10 phase (SandboxPhase name without the prefix, e.g.
 * "PROVISIONING"), 11 created_at_ms, 12 updated_at_ms, 13 resource_version. */
enum {
    STORE_SB_ID,
    STORE_SB_WORKSPACE,
    STORE_SB_NAME,
    STORE_SB_OWNER,
    STORE_SB_CREATED_BY,
    STORE_SB_LABELS,
    STORE_SB_ANNOTATIONS,
    STORE_SB_SPEC,
    STORE_SB_STATUS,
    STORE_SB_DRIVER,
    STORE_SB_PHASE,
    STORE_SB_CREATED_MS,
    STORE_SB_UPDATED_MS,
    STORE_SB_RV
};
extern const struct store_stmt store_sb_get_by_name; /* $1 workspace, $2 name */
extern const struct store_stmt store_sb_get_by_id;   /* $1 id (UUID text) */
/* $1 workspace ("" = all), $2 labels JSON to contain, $3 limit, $4 offset */
extern const struct store_stmt store_sb_list;
/* $1 id, $2 workspace, $3 name, $4 owner, $5 actor, $6 labels JSON,
 * $7 annotations JSON, $8 spec (binary), $9 spec JSON, $10 driver,
 * $11 phase, $12 status (binary or NULL) */
extern const struct store_stmt store_sb_create;
/* $1 id, $2 expected resource_version ("0" = any), $3 phase, $4 status
 * (binary or NULL = keep), $5 conditions JSON (NULL = keep), $6 event kind,
 * $7 actor, $8 reason, $9 payload JSON */
extern const struct store_stmt store_sb_update;
/* $1 id, $2 actor, $3 reason -> boolean column (false: no live sandbox) */
extern const struct store_stmt store_sb_delete;
/* $1 driver name -> every live sandbox of that driver (reconciliation) */
extern const struct store_stmt store_sb_list_driver;
/* $1 id, $2 actor, $3 reason, $4 payload JSON -> boolean column (false: no
 * live sandbox); records a 'sandbox.platform_event' event, row unchanged */
extern const struct store_stmt store_sb_platform_event;

/* Events. Columns: 0 seq, 1 sandbox_id ("" for workspace events),
 * 2 sandbox_name, 3 workspace, 4 kind, 5 prev_phase, 6 new_phase, 7 actor,
 * 8 reason, 9 labels JSON, 10 payload JSON, 11 created_at_ms. */
enum {
    STORE_EV_SEQ,
    STORE_EV_SANDBOX_ID,
    STORE_EV_SANDBOX_NAME,
    STORE_EV_WORKSPACE,
    STORE_EV_KIND,
    STORE_EV_PREV,
    STORE_EV_NEW,
    STORE_EV_ACTOR,
    STORE_EV_REASON,
    STORE_EV_LABELS,
    STORE_EV_PAYLOAD,
    STORE_EV_CREATED_MS
};
/* $1 after seq, $2 limit */
extern const struct store_stmt store_ev_fetch;
/* $1 after seq, $2 limit, $3 workspace */
extern const struct store_stmt store_ev_fetch_ws;
/* $1 sandbox id, $2 limit, $3 up to seq: the last platform events of one
 * sandbox, oldest first (WatchSandbox event_tail) */
extern const struct store_stmt store_ev_platform_tail;
/* no parameters -> one bigint column: the last sequence number assigned */
extern const struct store_stmt store_ev_sequence;
/* no parameters -> one bigint column: the last sequence number */
extern const struct store_stmt store_ev_last;

/* SSH sessions (sql/005_ssh_sessions.sql). Tokens never reach the
 * database: every statement takes the token's SHA-256 as 64 lowercase hex
 * digits.
 * $1 token sha256, $2 sandbox id, $3 actor, $4 expires_at_ms ("0" = never)
 * -> one row: 0 workspace name, 1 created_at_ms, 2 expires_at_ms (0 =
 * never). Raises 'sandbox_not_found' (no live sandbox) or
 * 'sandbox_not_ready' (phase not READY). */
enum { STORE_SSH_NEW_WORKSPACE, STORE_SSH_NEW_CREATED_MS, STORE_SSH_NEW_EXPIRES_MS };
extern const struct store_stmt store_ssh_session_create;
/* $1 token sha256 -> no row when unknown, else 0 sandbox id, 1 workspace
 * name, 2 revoked ("t"/"f"), 3 expires_at_ms (0 = never). */
enum { STORE_SSH_SANDBOX_ID, STORE_SSH_WORKSPACE, STORE_SSH_REVOKED, STORE_SSH_EXPIRES_MS };
extern const struct store_stmt store_ssh_session_get;
/* $1 token sha256, $2 sandbox id as read before, $3 actor -> one text
 * column: "revoked", "already_revoked", or "conflict" (gone, or not that
 * sandbox's any more). */
extern const struct store_stmt store_ssh_session_revoke;

/* ---- embedded PostgreSQL (a private cluster under the state dir) --------- */

struct store_embedded;

/* Called once: |conninfo| is the Unix-socket connection string when |ok|,
 * else |err| says why it could not start. Strings borrowed. */
typedef void (*store_embedded_cb)(struct store_embedded *e, bool ok, const char *conninfo,
                                  const char *err, void *arg);

/* Creates (first run: initdb) and starts a private cluster under
 * |state_dir|/pg with the server binaries in |pg_bin|, listening only on a
 * Unix socket in |state_dir|/pg/run. When running as root, initdb and
 * postgres run as the `postgres` user (data dir owned by it). Everything
 * is child processes on the reactor: nothing blocks. Returns NULL only on
 * allocation failure. Caller owns; free with store_embedded_stop(). */
struct store_embedded *store_embedded_start(struct reactor *r, const char *state_dir,
                                            const char *pg_bin, store_embedded_cb cb, void *arg);
/* Asks the server to stop (fast shutdown) and calls |done| once it exited
 * (or was killed after |timeout_ms|); frees |e| after |done| returns. */
void store_embedded_stop(struct store_embedded *e, unsigned timeout_ms, void (*done)(void *arg),
                         void *arg);

#endif /* GW_STORE_H */
