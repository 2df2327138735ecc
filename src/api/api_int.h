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
    struct driver *driver;        /* the compute driver (borrowed), NULL until attached */
    struct api_compute *compute;  /* gates, observations, reconciliation */
    struct api_detached *detached; /* work that outlives its call (api_common.c) */
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
void api_finish_store_error(struct grpc_call *call, const struct store_result *r,
                            const char *what);
/* Finishes with UNAVAILABLE when the store is missing or down; returns
 * true if it did (the handler must return). */
bool api_store_unavailable(struct grpc_call *call);
/* "" -> "default". Borrowed or static. */
const char *api_workspace_name(const char *w);
/* Page size from a request limit: 0 -> 100, capped at 1000. */
unsigned api_page_limit(uint32_t limit);
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

/* A message as proto3 JSON (lowerCamelCase names, enum names, 64-bit
 * integers as strings, bytes base64, Struct as objects), sorted keys.
 * Heap string, free(). (api_json.c) */
char *api_message_json(const ProtobufCMessage *m);

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

#endif /* GW_API_INT_H */
