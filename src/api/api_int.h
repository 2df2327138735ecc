/* Folder-private declarations of src/api. */
#ifndef GW_API_INT_H
#define GW_API_INT_H

#include "api/api.h"
#include "http2/grpc.h"

struct reflection_index;
struct api_compute;
struct api_detached;
struct driver;
struct health_watch;
struct diag_state;
struct ev_stream;
struct api_sessions;
struct api_logs;
struct fwd;
struct jwt_keys;

#define API_MAX_METHODS 128

struct api {
    struct event_base *base;
    struct grpc_server *srv;
    struct api_opts opts;
    char *version;
    struct api_driver_info *drivers;
    size_t n_drivers;
    bool serving;
    struct health_watch *watches; /* open grpc.health.v1 Watch streams */
    struct ev_stream *ev_streams; /* open Subscribe / WatchSandbox streams */
    struct reflection_index *refl;
    struct diag_state *diag;
    struct driver *driver;         /* the compute driver (borrowed), NULL until attached */
    struct api_compute *compute;   /* gates, observations, reconciliation */
    struct api_detached *detached; /* work that outlives its call (api_common.c) */
    struct api_sessions *sessions; /* supervisor sessions and relays (api_session.c) */
    struct api_logs *logs;         /* per-sandbox log buffers and watchers (api_logs.c) */
    struct fwd *forwards;          /* live ForwardTcp calls, for their caps (api_forward.c) */
    /* Where CreateSshSession tells clients to connect (api_set_listener). */
    char *listen_host;
    uint16_t listen_port;
    bool listen_tls;
    struct grpc_method methods[API_MAX_METHODS]; /* registered copies; outlive the server's use */
    size_t n_methods;
};

/* Registration tables, one per file; each ends with a NULL path. */
extern const struct grpc_method api_workspace_methods[];
extern const struct grpc_method api_sandbox_methods[];
extern const struct grpc_method api_events_methods[];
extern const struct grpc_method api_health_methods[];
extern const struct grpc_method api_reflection_methods[];
extern const struct grpc_method api_diag_methods[];
extern const struct grpc_method api_lifecycle_methods[];
extern const struct grpc_method api_session_methods[]; /* ConnectSupervisor, RelayStream, ... */
extern const struct grpc_method api_exec_methods[];    /* ExecSandbox, ExecSandboxInteractive */
extern const struct grpc_method
    api_forward_methods[]; /* CreateSshSession, RevokeSshSession, ForwardTcp */
extern const struct grpc_method api_logs_methods[]; /* GetSandboxLogs, PushSandboxLogs */

/* grpc.health.v1 */
void api_health_notify(struct api *a);
void api_health_end_watches(struct api *a);

/* Reflection: built once from the embedded descriptor set. */
struct reflection_index *api_reflection_index_new(void);
void api_reflection_index_free(struct reflection_index *ix);

/* Ends every Subscribe / WatchSandbox stream (drain). */
void api_events_end_all(struct api *a);

/* Diagnostics bookkeeping (open Delay timers and Stream calls). */
void api_diag_end_all(struct api *a);

/* ---- shared helpers (api_common.c) ---------------------------------------- */

struct store_result;

/* Maps a failed store result to a gRPC status and finishes |call| with it:
 * UNAVAILABLE when the database is unreachable or timed out, ALREADY_EXISTS
 * on unique violations (|what| names the object, e.g. "workspace 'x'"),
 * INTERNAL otherwise. The one place store errors become statuses. */
void api_finish_store_error(struct grpc_call *call, const struct store_result *r, const char *what);
/* Finishes with UNAVAILABLE when the store is missing or down; returns
 * true if it did (the handler must return). */
bool api_store_unavailable(struct grpc_call *call);
/* "" -> "default". Borrowed or static. */
const char *api_workspace_name(const char *w);
/* Page size from a request limit: 0 -> 100, capped at 1000. */
unsigned api_page_limit(uint32_t limit);
/* Caller text made safe for a one-line error message: control, quote,
 * backslash and non-ASCII bytes as \xNN, cut after API_QUOTE_MAX bytes
 * with "...". Returns |q|'s buffer. API_QUOTE(s) uses a temporary that
 * lives until the end of the full expression (e.g. a snprintf call). */
#define API_QUOTE_MAX 64
struct api_quoted {
    char s[API_QUOTE_MAX * 4 + 4];
};
const char *api_quote(struct api_quoted *q, const char *s);
#define API_QUOTE(s) api_quote(&(struct api_quoted){{0}}, (s))
/* Formats |err| like gw_errf() and returns GRPC_STATUS_INVALID_ARGUMENT,
 * for request validation (api_spec.c, api_exec.c). */
int api_invalid(char *err, size_t errlen, const char *fmt, ...) GW_PRINTF(3, 4);
/* Writes decimal |v| into |buf| (>= 24 bytes) and returns it. */
const char *api_u64(char *buf, uint64_t v);

/* Whether the caller may read the sandbox in row |row| of |r| (sandbox
 * columns): platform admins always. Other users need a membership, which
 * this gateway does not track for them yet without OIDC (every
 * authenticated user is a platform admin then, as upstream), so false. */
bool api_principal_may_read(struct grpc_call *call, const struct store_result *r, int row);

/* ---- sandbox records (api_sandbox.c) -------------------------------------- */

struct Openshell__V1__Sandbox;
/* Builds the public Sandbox from row |row| of a sandbox-columns result
 * (store.h STORE_SB_*): metadata and phase from the columns, spec and status
 * decoded from their protobuf bytes. Allocated in the call arena except the
 * decoded spec/status: release those with api_sandbox_free_unpacked() once
 * the message was sent (sending copies the bytes). */
struct Openshell__V1__Sandbox *api_sandbox_from_row(struct grpc_call *call,
                                                    const struct store_result *r, int row);
void api_sandbox_free_unpacked(struct Openshell__V1__Sandbox *sb);

/* Authentication hook installed on the gRPC server. */
int api_auth_call_start(struct grpc_call *call, const struct grpc_method *m, void *arg,
                        const char **msg);

/* ==== workspaces and sandboxes (api_workspace.c; used by api_sandbox.c) ==== */

struct store_stmt;
struct Openshell__Datamodel__V1__ObjectMeta;

/* Result continuation of api_query(). |r| is borrowed until it returns;
 * |state| is the pointer given to api_query(). */
typedef void (*api_query_cb)(struct grpc_call *call, const struct store_result *r, void *state);

/* Runs |stmt| (arguments as store_query()) for |call| and then |cb|, unless
 * the call ended first (client reset, deadline, shutdown): then |cb| never
 * runs and nothing touches the call. When the query cannot be queued, the
 * call is finished through api_finish_store_error() and |cb| never runs.
 * One query per call at a time (it uses the call's user pointer); every
 * method using it must install api_query_cancel() as its on_cancel. */
void api_query(struct grpc_call *call, const struct store_stmt *stmt, const char *const *values,
               const int *lengths, api_query_cb cb, void *state);
/* The on_cancel handler that goes with api_query(). */
void api_query_cancel(struct grpc_call *call);

/* Least membership role a workspace-scoped method needs. */
enum api_ws_role {
    API_WS_ROLE_USER = 1,
    API_WS_ROLE_ADMIN = 2,
};

typedef void (*api_authorized_cb)(struct grpc_call *call, void *state);

/* Lets the caller into |workspace| (borrowed; must live as long as the
 * call) with at least |min_role|, then runs |next|: platform admins pass at
 * once (synchronously), others need a membership (semantics.md §5). On
 * refusal (PERMISSION_DENIED with the member-add hint) or a store error the
 * call is finished and |next| never runs. Uses api_query(). */
void api_workspace_authorize(struct grpc_call *call, const char *workspace,
                             enum api_ws_role min_role, api_authorized_cb next, void *state);
/* Runs |next| when |workspace| exists; otherwise finishes NOT_FOUND
 * "workspace '<name>' not found" (or a store error). Uses api_query(). */
void api_workspace_check_exists(struct grpc_call *call, const char *workspace,
                                api_authorized_cb next, void *state);
void api_finish_workspace_not_found(struct grpc_call *call, const char *workspace);

/* Fills |meta|'s labels and annotations maps from stored JSON objects of
 * strings (NULL or "" = empty map). Everything lives in the call arena. */
void api_meta_set_maps(struct grpc_call *call, struct Openshell__Datamodel__V1__ObjectMeta *meta,
                       const char *labels_json, const char *annotations_json);

/* ---- work that outlives its call (api_common.c) -------------------------------
 *
 * A handler that starts something that must finish even when the client
 * goes away (a lifecycle transition, a workspace deletion past its point of
 * no return) embeds this in a heap object and attaches it: from then on
 * the call may end at any time and |call| becomes NULL, so the work
 * completes and only the reply is dropped. Before attaching, the handler is
 * call-scoped as usual (api_query). */
struct api_detached {
    struct grpc_call *call; /* NULL once the client went away */
    struct api_detached *prev, *next;
};
void api_detach(struct grpc_call *call, struct api_detached *d);
void api_detach_end(struct api *a, struct api_detached *d);
/* on_cancel for such handlers: forgets the call of the attached work, or
 * cancels the call-scoped query when nothing is attached yet. */
void api_detached_cancel(struct grpc_call *call);

/* ---- compute (api_compute.c) ----------------------------------------------
 *
 * Lifecycle work on one sandbox is serialized by its gate: a lifecycle call
 * or an observation from the driver runs only while it holds the gate, and
 * leaves it when done (the next waiter, or pending observations, run then).
 */

struct store_stmt;
struct store_result;
typedef void (*api_gate_fn)(struct api *a, const char *sandbox_id, void *arg);

/* Runs |fn| once the gate of |sandbox_id| is free (now, if it is). |fn|
 * owns the gate until it calls api_gate_leave(). */
void api_gate_enter(struct api *a, const char *sandbox_id, api_gate_fn fn, void *arg);
void api_gate_leave(struct api *a, const char *sandbox_id);
bool api_gate_busy(struct api *a, const char *sandbox_id);

/* A sandbox row decoded for lifecycle decisions (heap; api_sb_row_clear). */
struct api_sb_row {
    char id[40];
    char *name;
    char *workspace;
    int phase;
    uint64_t rv;
    int64_t created_ms;
    struct Openshell__V1__SandboxStatus *status; /* NULL when the row has none */
};
void api_sb_row_parse(struct api_sb_row *row, const struct store_result *r, int i);
void api_sb_row_clear(struct api_sb_row *row);

/* store_query that always calls back (from the loop), also when the query
 * could not be queued (status STORE_ERR_*). Not tied to a call. */
void api_store_run(struct api *a, const struct store_stmt *stmt, const char *const *values,
                   const int *lengths, void (*cb)(const struct store_result *r, void *arg),
                   void *arg);
/* gw_sandbox_update with |status| (phase set inside too), the conditions
 * column and an event of kind sandbox.phase_changed (phase differs from
 * |prev_phase|) or sandbox.status_changed. The result row is SB_COLS. */
void api_sb_write(struct api *a, const char *id, uint64_t expected_rv, int phase,
                  const struct Openshell__V1__SandboxStatus *status, int prev_phase,
                  const char *actor, const char *reason,
                  void (*cb)(const struct store_result *r, void *arg), void *arg);
/* Whether the sandbox has a live supervisor session on this gateway. */
bool api_session_connected(struct api *a, const char *sandbox_id);

/* ---- sandbox specs (api_spec.c) --------------------------------------------
 *
 * Pure functions over generated messages: no store, no driver, no loop.
 * Everything they allocate lives in |call|'s arena unless said otherwise.
 */

struct Openshell__V1__CreateSandboxRequest;
struct Openshell__V1__SandboxSpec;
struct Openshell__V1__SandboxStatus;
struct Openshell__Compute__V1__DriverSandbox;
struct Openshell__Compute__V1__DriverSandboxStatus;

/* Label the gateway adds to DriverSandboxTemplate.labels of every sandbox
 * it provisions; a platform object without a record is deleted by
 * reconciliation only when it carries this label (value: the sandbox id). */
#define API_OWNER_LABEL "openshell.io/sandbox-id"

/* CreateSandbox validation and defaults (semantics.md §6), in this order:
 * spec required ("spec is required"); command defaults to
 * ["/bin/bash","-l"] with tty=true when empty; |req->name| when non-empty
 * (DNS-1123 label, at most 19 bytes); every size/format limit of the spec
 * (providers, log_level, spec.environment, template strings/maps/
 * environment, template.resources and template.driver_config encoded size,
 * explicit GPU count 0, command, policy encoded size); then the request's
 * labels and annotations (src/labels rules). Environment maps: keys
 * [A-Za-z_][A-Za-z0-9_]*, OPENSHELL_* reserved, no CR/LF in values, at most
 * 256 KiB of keys + values. Messages name the field first, e.g.
 * "spec.environment: key 'OPENSHELL_X' is reserved" or
 * "spec.template.driver_config: encoded size 70000 exceeds 65536 bytes";
 * caller text in them is escaped and cut. An embedded NUL cannot be
 * detected here (protobuf-c strings end at the first NUL byte). May replace
 * |req->spec->command| (arena memory) and set tty. Returns GRPC_STATUS_OK,
 * or GRPC_STATUS_INVALID_ARGUMENT with the message in |err|. */
int api_spec_validate(struct grpc_call *call, struct Openshell__V1__CreateSandboxRequest *req,
                      char *err, size_t errlen);

/* Server-generated sandbox name: two lowercase words "adjective-noun",
 * cut to at most 19 bytes, no trailing '-'. |out| holds at least 20 bytes. */
void api_spec_generate_name(char *out, size_t outlen);
/* The naming rule api_spec_generate_name() applies to its two words:
 * "<adjective>-<noun>" cut to at most 19 bytes (and |outlen| - 1), then
 * trailing '-' removed. Always NUL-terminates when |outlen| > 0. */
void api_spec_compose_name(char *out, size_t outlen, const char *adjective, const char *noun);

/* Public -> driver mapping (compute-v1.md, "Public -> driver mapping"):
 * builds the DriverSandbox for |spec| (NULL maps as an empty spec): id,
 * name, workspace, namespace empty; log_level, environment, command, tty
 * and resource_requirements (gpu.count presence kept); a template always
 * (image = |default_image| when the caller's is empty; agent_socket ->
 * agent_socket_path; labels plus API_OWNER_LABEL = |id|, replacing a
 * caller label of that key; environment). template.resources
 * {requests,limits}.{cpu,memory} strings become typed resources (absent
 * when all four are empty); every other entry, nested or not, goes to
 * platform_config.resources_raw, e.g. {"requests":{"nvidia.com/gpu":"1"}}.
 * platform_config holds runtime_class_name (non-empty), annotations (an
 * object of strings, when any), host_users = !user_namespaces (when set)
 * and resources_raw (when non-empty), and is absent when none applies.
 * template.driver_config is a copy of the inner object of the envelope
 * block whose key equals |driver_name| exactly (the last one if repeated;
 * absent when none matches or |driver_name| is NULL; other blocks are
 * never looked at); it is never merged into platform_config. The token is
 * left empty. Shares no memory with |spec|. Returns GRPC_STATUS_OK, or
 * GRPC_STATUS_INVALID_ARGUMENT with |*out| NULL and in |err|
 * "template.driver_config.<name> must be an object",
 * "spec.template.resources.<requests|limits> must be an object" or
 * "spec.template.resources.<requests|limits>.<cpu|memory> must be a
 * string". */
int api_spec_to_driver(struct grpc_call *call, const char *id, const char *name,
                       const char *workspace, const struct Openshell__V1__SandboxSpec *spec,
                       const char *driver_name, const char *default_image,
                       struct Openshell__Compute__V1__DriverSandbox **out, char *err,
                       size_t errlen);

/* Where the two functions above allocate: |alloc| returns |n| bytes and
 * never NULL; the memory is released all at once by the owner of |ctx|,
 * never piecewise. The grpc_call entry points use the call arena; unit
 * tests pass their own. */
struct api_alloc {
    void *(*alloc)(void *ctx, size_t n);
    void *ctx;
};

/* api_spec_validate() and api_spec_to_driver() with an explicit
 * allocator; same contracts. */
int api_spec_validate_with(const struct api_alloc *al,
                           struct Openshell__V1__CreateSandboxRequest *req, char *err,
                           size_t errlen);
int api_spec_to_driver_with(const struct api_alloc *al, const char *id, const char *name,
                            const char *workspace, const struct Openshell__V1__SandboxSpec *spec,
                            const char *driver_name, const char *default_image,
                            struct Openshell__Compute__V1__DriverSandbox **out, char *err,
                            size_t errlen);

/* ---- public phase (api_phase.c; semantics.md §8) ---------------------------
 *
 * Phases use the generated enum Openshell__V1__SandboxPhase (int here to
 * keep this header free of generated includes). Statuses returned are heap
 * messages built with malloc/strdup: free with
 * protobuf_c_message_free_unpacked(&st->base, NULL).
 */

/* Store spelling: "READY" for SANDBOX_PHASE_READY, ... ("UNKNOWN" fallback). */
const char *api_phase_name(int phase);
int api_phase_from_name(const char *name);

/* Backend phase of one driver status (NULL = no status -> UNKNOWN):
 * deleting -> DELETING, Suspended=True -> STOPPED, first Ready condition
 * True -> READY, False -> ERROR (terminal reason) or PROVISIONING
 * (transient reason), else PROVISIONING. */
int api_phase_backend(const struct Openshell__Compute__V1__DriverSandboxStatus *st);
bool api_phase_reason_transient(const char *reason);

struct api_phase_in {
    int stored_phase;                                  /* persisted phase (the phase column) */
    const struct Openshell__V1__SandboxStatus *stored; /* persisted status, may be NULL */
    const struct Openshell__Compute__V1__DriverSandboxStatus *driver; /* NULL: no status */
    bool session_connected; /* live supervisor session for the sandbox */
};

/* Applies one driver snapshot to a stored record: backend phase, then
 * composition with session presence, then the overlay of the stored phase:
 *   - stored ERROR (sticky) or DELETING: nothing changes;
 *   - no driver status: the stored record stays, except that PROVISIONING,
 *     UNKNOWN or UNSPECIFIED become READY (Ready=True/DependenciesReady)
 *     when a session is connected;
 *   - STOPPING -> STOPPED when composed STOPPED or a driver condition has
 *     status False and reason ContainerExited/ContainerStopped, -> ERROR
 *     when composed ERROR, else stays; STOPPED stays; STARTING stays until
 *     composed READY or ERROR; any other stored phase takes the composed one.
 * Refinement over upstream: while STARTING, STOPPING or STOPPED holds, the
 * status still follows the snapshot (conditions, instance fields) so that
 * observers see the backend's progress; only the phase stays.
 * The new status copies sandbox_name, instance_id (-> agent_pod), agent_fd,
 * sandbox_fd and the conditions (with their last_transition_time) from the
 * driver; everything else (main_process_instance_id, exit_code,
 * current_policy_version) comes from |stored|. The Ready condition is
 * rewritten as §8 says: backend READY without a session -> False/
 * SupervisorNotConnected; session and composed READY -> True/
 * DependenciesReady (added when missing). A rewritten Ready condition keeps
 * the stored one's last_transition_time when its status, reason and
 * message are unchanged, else gets the current time; so an identical
 * snapshot is never a change. .phase is set to the new phase.
 * Returns true and sets |*phase_out| and |*status_out| (caller owns, free
 * with protobuf_c_message_free_unpacked(&st->base, NULL)) when the phase
 * differs from |stored_phase| or the status (ignoring its .phase) from
 * |stored| (NULL compares as an empty status); false, outputs untouched,
 * when nothing changed. */
bool api_phase_apply_snapshot(const struct api_phase_in *in, int *phase_out,
                              struct Openshell__V1__SandboxStatus **status_out);

/* Copy of |base| (may be NULL: an empty status) with phase |phase| and the
 * first Ready condition replaced by (|status|, |reason|, |message|) with
 * last_transition_time = now (RFC 3339 UTC, "2024-05-01T12:00:00Z"); the
 * condition is appended when |base| has none. For lifecycle writes
 * (Stopping, Stopped, Starting, session connect/disconnect, ...). Never
 * NULL (aborts on OOM); caller owns, free with
 * protobuf_c_message_free_unpacked(&st->base, NULL). |base| is unchanged. */
struct Openshell__V1__SandboxStatus *
api_phase_status_with_ready(const struct Openshell__V1__SandboxStatus *base, int phase,
                            const char *status, const char *reason, const char *message);

/* ---- relay users: the sandbox must be READY (api_session.c) -----------------
 *
 * For exec, forward and SSH-session handlers, after their own argument
 * checks: an empty |sandbox_id| -> INVALID_ARGUMENT "sandbox_id is
 * required"; a sandbox the caller cannot see -> NOT_FOUND "sandbox not
 * found"; phase not READY -> FAILED_PRECONDITION "sandbox is not ready";
 * store errors as usual. Otherwise runs |next| with the parsed row
 * (borrowed until |next| returns). Uses api_query(), so the method's
 * on_cancel must be api_query_cancel() (or forward to it) until |next| ran. */
typedef void (*api_ready_cb)(struct grpc_call *call, const struct api_sb_row *row, void *state);
void api_sandbox_require_ready(struct grpc_call *call, const char *sandbox_id, api_ready_cb next,
                               void *state);

/* ---- supervisor sessions and relays (api_session.c) ------------------------
 *
 * A relay is one byte stream between a gateway user (exec, ForwardTcp) and
 * a target inside the sandbox, carried by a RelayStream call the
 * supervisor opens after a RelayOpen on its session (semantics.md §14).
 *
 * Flow control both ways: api_relay_write() returns API_RELAY_FULL when
 * the caller must stop writing until on_writable; api_relay_pause() stops
 * on_data (the supervisor is then held by HTTP/2 flow control). Memory per
 * relay stays bounded by the gRPC call's high-water mark plus one chunk.
 */
struct api_relay;

struct api_relay_ops {
    /* The supervisor claimed the channel: bytes flow from now on. */
    void (*on_open)(struct api_relay *r, void *arg);
    /* Bytes from the target (borrowed until return). Not called while paused. */
    void (*on_data)(struct api_relay *r, const uint8_t *data, size_t len, void *arg);
    /* The target finished sending (the supervisor half-closed). */
    void (*on_eof)(struct api_relay *r, void *arg);
    /* A write returned API_RELAY_FULL and the output drained: write more. */
    void (*on_writable)(struct api_relay *r, void *arg);
    /* The relay is over, exactly once, unless api_relay_close() came first:
     * GRPC_STATUS_OK once both directions finished; UNAVAILABLE
     * "supervisor relay failed: ..." (no session within 15 s, or the
     * supervisor reported the target failed, text included);
     * DEADLINE_EXCEEDED "relay open timed out" (not claimed within 10 s);
     * UNAVAILABLE "relay dropped: ..." (the stream broke). |r| is freed
     * after it returns. Never called from inside an api_relay_* call. */
    void (*on_close)(struct api_relay *r, int status, const char *message, void *arg);
};

struct api_relay_target {
    const char *tcp_host; /* NULL: the supervisor's SSH server; else a loopback literal */
    uint16_t tcp_port;
    const char *service_id; /* may be NULL */
};

#define API_RELAY_OK     0
#define API_RELAY_FULL   1    /* queued; wait for on_writable before writing more */
#define API_RELAY_CLOSED (-1) /* shut down for writing, or over */

/* Opens a relay to |sandbox_id|'s target: waits up to 15 s for a live
 * session, sends RelayOpen and waits up to 10 s for the claim. Returns the
 * relay, or NULL with |*status| / |*msg| (static) set: RESOURCE_EXHAUSTED
 * "too many pending relays" (256 in total / 32 per sandbox). */
struct api_relay *api_relay_open(struct api *a, const char *sandbox_id,
                                 const struct api_relay_target *t, const struct api_relay_ops *ops,
                                 void *arg, int *status, const char **msg);
/* Queues |len| bytes toward the target (split into chunks of at most
 * 16 KiB). Before on_open the bytes wait in the relay and the result is
 * API_RELAY_FULL. */
int api_relay_write(struct api_relay *r, const uint8_t *data, size_t len);
/* EOF toward the target once queued bytes went out. */
void api_relay_shutdown_write(struct api_relay *r);
/* Stops (true) or resumes (false) on_data / on_eof delivery. */
void api_relay_pause(struct api_relay *r, bool paused);
/* Abandons the relay: no callback runs afterwards; the supervisor's
 * stream is ended. */
void api_relay_close(struct api_relay *r);

/* A fresh sandbox token for |sandbox_id| (heap, free()), with its exp in
 * |*exp_s| (0 = never); NULL when no signing key is configured. */
char *api_sandbox_token_mint(struct api *a, const char *sandbox_id, uint64_t *exp_s);

/* Ends the sandbox's session (StopSandbox, DeleteSandbox) and fails its
 * pending relays; the supervisor reconnects if it is still running. */
void api_session_drop(struct api *a, const char *sandbox_id);
/* Drain: ends every supervisor session (UNAVAILABLE; the supervisors
 * reconnect to the next gateway) without readiness writes. */
void api_sessions_end_all(struct api *a);
/* Frees the registry (api_free). */
void api_sessions_free(struct api *a);

/* ---- sandbox logs (api_logs.c; semantics.md §10-11) ------------------------
 *
 * In memory only: the last 2000 lines per sandbox, lost on restart.
 */
struct Openshell__V1__SandboxLogLine;
/* Appends a copy of |line| to the sandbox's buffer and hands it to the
 * sandbox's watchers. An empty source counts as "gateway". */
void api_logs_append(struct api *a, const char *sandbox_id,
                     const struct Openshell__V1__SandboxLogLine *line);
/* Forgets the sandbox's buffer (the sandbox was deleted). */
void api_logs_drop(struct api *a, const char *sandbox_id);
void api_logs_free(struct api *a);

/* Limits. A sandbox keeps its last API_LOGS_LINES_MAX lines and at most
 * API_LOGS_BYTES_MAX bytes of them (the oldest go first), so one buffer,
 * and a GetSandboxLogs reply built from it, stays far below the 4 MiB
 * message limit of gRPC clients. Each stored line is cut to these sizes
 * (at a UTF-8 character boundary; invalid UTF-8 bytes become '?', because
 * proto3 strings must be UTF-8 and clients refuse messages that are not):
 * message API_LOGS_MESSAGE_MAX bytes; level, target and source
 * API_LOGS_TEXT_MAX; at most API_LOGS_FIELDS_MAX fields (the first ones),
 * keys API_LOGS_KEY_MAX and values API_LOGS_VALUE_MAX bytes. */
#define API_LOGS_LINES_MAX      2000
#define API_LOGS_BYTES_MAX      (1024 * 1024)
#define API_LOGS_REPLAY_DEFAULT 200 /* WatchSandbox log_tail_lines = 0 */
#define API_LOGS_BATCH_MAX      100 /* PushSandboxLogs: lines kept per batch */
#define API_LOGS_MESSAGE_MAX    16384
#define API_LOGS_TEXT_MAX       256
#define API_LOGS_FIELDS_MAX     32
#define API_LOGS_KEY_MAX        128
#define API_LOGS_VALUE_MAX      1024

/* Rank of a level name for filters, case-insensitive: ERROR 0, WARN 1,
 * INFO and OCSF 2, DEBUG 3, TRACE 4, anything else (NULL too) 5. */
int api_logs_level_rank(const char *level);

/* Which lines a reader wants (semantics.md §10). */
struct api_logs_filter {
    int64_t since_ms;           /* > 0: only lines with timestamp_ms >= since_ms */
    const char *const *sources; /* |n_sources| names; none = every source. A line
                                   with an empty source counts as "gateway". */
    size_t n_sources;
    const char *min_level; /* NULL or "": every level; else rank(line) <= rank(min) */
};
/* Whether |line| passes every part of |f|. */
bool api_logs_filter_pass(const struct api_logs_filter *f,
                          const struct Openshell__V1__SandboxLogLine *line);

/* A stored copy of |line| in one heap block (free() releases it whole),
 * with sandbox_id = |sandbox_id|, source = |source| when not NULL, and
 * every string cut and repaired as described above. |*bytes| (may be
 * NULL) receives the block's size, which the byte budget counts. Never
 * NULL (aborts on OOM). */
struct Openshell__V1__SandboxLogLine *
api_logs_line_copy(const char *sandbox_id, const struct Openshell__V1__SandboxLogLine *line,
                   const char *source, size_t *bytes);

/* The per-sandbox buffer: a ring of owned line copies. Every line pushed
 * gets the next sequence number; the ring holds seq first_seq ..
 * next_seq - 1, where first_seq = next_seq - len. Plain data: the fields
 * are read by api_logs.c and the unit tests, written only by these
 * functions. */
struct api_log_ring {
    struct Openshell__V1__SandboxLogLine **slot; /* |cap| entries, oldest at |head| */
    size_t cap, head, len;
    size_t bytes;      /* sum of the held copies' sizes */
    uint64_t next_seq; /* sequence number of the next line pushed */
};
void api_log_ring_init(struct api_log_ring *r);
/* Frees every held line; next_seq is kept (readers' cursors stay valid). */
void api_log_ring_clear(struct api_log_ring *r);
/* Takes ownership of |line| (an api_logs_line_copy() result of |bytes|
 * bytes): appends it, then evicts the oldest lines while more than
 * API_LOGS_LINES_MAX are held or their bytes exceed API_LOGS_BYTES_MAX
 * (the newest line always stays). */
void api_log_ring_push(struct api_log_ring *r, struct Openshell__V1__SandboxLogLine *line,
                       size_t bytes);
uint64_t api_log_ring_first_seq(const struct api_log_ring *r);
/* The line numbered |seq| (borrowed until the ring changes), or NULL when
 * it is not held (evicted, or not pushed yet). */
const struct Openshell__V1__SandboxLogLine *api_log_ring_at(const struct api_log_ring *r,
                                                            uint64_t seq);

/* Log watchers (WatchSandbox follow_logs). A watcher is a cursor into
 * its sandbox's ring, not a queue: a reader that falls behind loses the
 * lines the ring evicted meanwhile (and is told how many), and never
 * makes the gateway hold more than the ring itself. */
struct api_log_watch;

/* New lines can be taken with api_logs_watch_next(). Called from inside
 * api_logs_append() (so from any handler that logs or pushes); it may
 * call api_logs_watch_next() and api_logs_unwatch() on |w| itself, but
 * must not append lines. */
typedef void (*api_log_watch_fn)(struct api_log_watch *w, void *arg);

/* Starts watching |sandbox_id|: first a replay of the last |tail| lines
 * (0 -> API_LOGS_REPLAY_DEFAULT) buffered now, filtered by all of |f|,
 * then every line appended later, filtered by |f| without since_ms.
 * |f|'s strings are borrowed until api_logs_unwatch(). Free with
 * api_logs_unwatch(). */
struct api_log_watch *api_logs_watch(struct api *a, const char *sandbox_id, uint32_t tail,
                                     const struct api_logs_filter *f, api_log_watch_fn fn,
                                     void *arg);
/* The next line for the reader (borrowed until the next call into
 * api_logs), or NULL when there is none now. With |replay_only| it stops
 * at the end of the replay. |*dropped| receives how many lines were
 * evicted before the reader took them since the last call (may be > 0
 * with a NULL result too). */
const struct Openshell__V1__SandboxLogLine *
api_logs_watch_next(struct api_log_watch *w, bool replay_only, uint64_t *dropped);
/* Whether replay lines remain to be taken. */
bool api_logs_watch_replaying(const struct api_log_watch *w);
void api_logs_unwatch(struct api_log_watch *w);

/* ---- exec (api_exec.c, api_ssh.c) ------------------------------------------
 *
 * ExecSandbox and ExecSandboxInteractive (semantics.md §12). The request is
 * checked and turned into one remote command string by the pure functions
 * below; api_ssh then runs that command with an SSH client over a relay to
 * the supervisor's SSH server, driven by the gateway's loop.
 */

struct Openshell__V1__ExecSandboxRequest;

#define API_EXEC_ARGS_MAX    1024
#define API_EXEC_ARG_MAX     (32 * 1024) /* one argv element, one environment value */
#define API_EXEC_WORKDIR_MAX 4096
#define API_EXEC_COMMAND_MAX (256 * 1024) /* the assembled remote command string */

/* Checks |req| in the order of semantics.md §12 and upstream's messages:
 * "sandbox_id is required"; "command is required"; each environment key
 * must match [A-Za-z_][A-Za-z0-9_]* and must not start with OPENSHELL_
 * unless it is OPENSHELL_PYFUNC_B64; at most API_EXEC_ARGS_MAX arguments
 * of at most API_EXEC_ARG_MAX bytes; environment values of at most
 * API_EXEC_ARG_MAX bytes without CR or LF; a workdir of at most
 * API_EXEC_WORKDIR_MAX bytes without CR or LF; then the assembled command
 * must fit API_EXEC_COMMAND_MAX. Caller text in messages is escaped and
 * cut. An embedded NUL cannot be seen here: protobuf-c strings end at the
 * first NUL, so such a value arrives cut there. Returns GRPC_STATUS_OK, or
 * GRPC_STATUS_INVALID_ARGUMENT with the message in |err|. */
int api_exec_validate(const struct Openshell__V1__ExecSandboxRequest *req, char *err,
                      size_t errlen);

/* Appends |s| quoted for a POSIX shell: made only of [A-Za-z0-9./_-] it is
 * appended as is, empty as '', anything else inside single quotes with
 * each ' written as '"'"'. */
void api_exec_shell_escape(struct gw_buf *out, const char *s);

/* Appends the remote command string of |req| to |out|: the environment
 * sorted by key (byte order; of repeated keys the last one wins, as in a
 * protobuf map) as KEY=<escaped value>, then each argv element escaped,
 * all joined by single spaces, prefixed with "cd <escaped workdir> && "
 * when workdir is set. Returns 0, or -1 when the result would exceed
 * API_EXEC_COMMAND_MAX bytes (|out| then holds a partial string). */
int api_exec_command_build(const struct Openshell__V1__ExecSandboxRequest *req,
                           struct gw_buf *out) GW_MUSTCHECK;

/* ---- SSH over a relay (api_ssh.c) -------------------------------------------
 *
 * One exec: a relay to the sandbox's SSH target (RelayOpen with no target),
 * a libssh client session on one end of a socketpair whose other end is
 * bridged to the relay, user "sandbox" with auth "none" (the host key is not
 * verified, as upstream), one session channel, an optional PTY
 * ("xterm-256color"), then the exec request. libssh runs non-blocking and
 * is resumed by readiness events on its socket: nothing polls or sleeps.
 *
 * Flow control: output is handed over while the consumer accepts it, then
 * held (the SSH window, the socketpair and the relay stop the remote in
 * turn); input is queued up to a high-water mark, and written as the SSH
 * window allows. SSH keepalives go out every 15 s after the relay is
 * claimed; 4 intervals in a row without a byte from the sandbox end the
 * exec as a lost relay.
 *
 * Callbacks run only from the loop, never from inside an api_ssh_* call.
 * api_ssh_free() may be called from inside any of them.
 */
struct api_ssh;

enum api_ssh_end {
    API_SSH_EXITED,    /* the command reported |exit_code| */
    API_SSH_TIMED_OUT, /* |timeout_secs| passed first */
    API_SSH_FAILED,    /* |status| and |message| */
};

struct api_ssh_result {
    enum api_ssh_end end;
    int32_t exit_code;   /* API_SSH_EXITED; an exit status above INT32_MAX is INT32_MAX */
    int status;          /* API_SSH_FAILED: a grpc_status */
    const char *message; /* API_SSH_FAILED: borrowed until on_end returns */
};

struct api_ssh_ops {
    /* Command output (stderr when |is_stderr|; with a PTY all of it is
     * stdout), borrowed until return. The chunk is taken either way;
     * returning false stops output until api_ssh_resume_output(). */
    bool (*on_output)(struct api_ssh *s, bool is_stderr, const uint8_t *data, size_t len,
                      void *arg);
    /* api_ssh_write() had returned API_SSH_FULL and the input queue
     * drained below the low-water mark. */
    void (*on_input_drained)(struct api_ssh *s, void *arg);
    /* The exec is over; called exactly once unless api_ssh_free() came
     * first, and only after every byte of output before it was handed
     * over. API_SSH_EXITED once the exit status arrived and the channel
     * closed (or 500 ms passed); API_SSH_FAILED with UNAVAILABLE "exec
     * relay closed before the command reported an exit status" when the
     * channel or the transport ended first after the exec request was
     * sent (also after 4 silent keepalive intervals); before that, the
     * relay's own status (see api_relay_ops.on_close), UNAVAILABLE "relay
     * dropped: the sandbox's SSH server stopped answering" (keepalives), or
     * the failed SSH step: INTERNAL "failed to establish ssh transport:
     * ...", PERMISSION_DENIED "ssh authentication rejected by sandbox",
     * INTERNAL "failed to open ssh channel: ...", "failed to allocate PTY:
     * ...", "failed to execute command over ssh: ...". API_SSH_TIMED_OUT
     * ends at once, dropping output not handed over yet. The owner still
     * frees |s|. */
    void (*on_end)(struct api_ssh *s, const struct api_ssh_result *res, void *arg);
};

struct api_ssh_params {
    const char *sandbox_id;
    const char *command; /* the remote command string */
    bool tty;            /* request a PTY of |cols| x |rows| */
    uint32_t cols, rows;
    uint32_t timeout_secs; /* 0 = none; counted from the relay's claim */
};

#define API_SSH_OK     0
#define API_SSH_FULL   1    /* queued above the high-water mark: wait for on_input_drained */
#define API_SSH_CLOSED (-1) /* input was closed, or the exec is over */

/* Opens the relay and starts the SSH exchange (|p| is copied). Returns the
 * exec, caller owns, free with api_ssh_free(); or NULL with |*status| and
 * |*msg| (static) set when the relay cannot be opened. */
struct api_ssh *api_ssh_start(struct api *a, const struct api_ssh_params *p,
                              const struct api_ssh_ops *ops, void *arg, int *status,
                              const char **msg);
/* Queues |len| bytes for the command's stdin (copied; sent once the exec
 * request was accepted). Returns API_SSH_OK, API_SSH_FULL or
 * API_SSH_CLOSED (nothing queued). */
int api_ssh_write(struct api_ssh *s, const uint8_t *data, size_t len);
/* No more input: EOF once the queue is written; with |close_channel|
 * (ExecSandboxInteractive's half-close) also a channel close, sent once the
 * exit status arrived so that the command is not cut short. */
void api_ssh_close_input(struct api_ssh *s, bool close_channel);
/* Window change (only with a PTY; the latest size wins). */
void api_ssh_resize(struct api_ssh *s, uint32_t cols, uint32_t rows);
/* The consumer accepts output again after on_output returned false. */
void api_ssh_resume_output(struct api_ssh *s);
/* Ends the exec: closes the relay (api_relay_close), the SSH session and
 * every timer; no callback runs afterwards. Inside a callback of |s| the
 * memory goes once that callback returns. NULL is ignored. */
void api_ssh_free(struct api_ssh *s);

/* ---- SSH sessions and ForwardTcp (api_forward.c) ---------------------------- *
 *
 * CreateSshSession tokens are stored as their SHA-256 only
 * (sql/005_ssh_sessions.sql); ForwardTcp hashes the token it is given and
 * looks the hash up. Live forwards are counted in memory for the caps
 * (3 per token, 20 per sandbox).
 */

/* SHA-256 of |token| (its bytes up to the NUL) as 64 lowercase hex digits
 * plus NUL: the key of the ssh_sessions table. */
void api_ssh_token_hash(const char *token, char out[65]);

/* Checks a ForwardTcp TCP target (semantics.md §13): port 1..65535; host
 * required (surrounding ASCII whitespace ignored); "localhost" in any case
 * becomes "127.0.0.1"; anything else must be an IPv4 or IPv6 literal in
 * 127.0.0.0/8 or ::1, written back in canonical form. On success returns
 * NULL with the host in |out| (>= 46 bytes); otherwise the
 * INVALID_ARGUMENT message (static): "tcp target port must be between 1
 * and 65535", "tcp target host is required" or "tcp target host must be
 * loopback". */
const char *api_forward_tcp_target(const char *host, uint32_t port, char *out, size_t outlen);

#endif /* GW_API_INT_H */
