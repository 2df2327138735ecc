/* Folder-private declarations of src/api. */
#ifndef GW_API_INT_H
#define GW_API_INT_H

#include "api/api.h"
#include "http2/grpc.h"

struct reflection_index;
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

#endif /* GW_API_INT_H */
