/* openshell.v1 workspaces and memberships (semantics.md §5, §7), plus what
 * the store-backed handlers share: cancel-safe queries, workspace
 * authorization and ObjectMeta maps from stored JSON. */
#include "api/api.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/api_int.h"
#include "drivers/driver.h"
#include "labels/labels.h"
#include "openshell.pb-c.h"
#include "store/store.h"

#define NAME_MAX_LEN 19   /* workspace names: DNS-1123 label, semantics.md §5 */
#define MEMBER_LIMIT 1000 /* enforced by gw_member_add(); quoted in the message */
#define ERRLEN       256

typedef Openshell__Datamodel__V1__Workspace ws_msg;
typedef Openshell__Datamodel__V1__ObjectMeta meta_msg;
typedef Openshell__V1__WorkspaceMember member_msg;

/* Per-call state of the handlers that resolve a workspace first. Lives in
 * the call arena. */
struct ws_op {
    void *req;             /* the request message (call arena) */
    const char *workspace; /* resolved name: "" became "default" */
};

/* ---- shared: arena strings ------------------------------------------------ */

GW_PRINTF(2, 3)
static const char *call_printf(struct grpc_call *call, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = grpc_call_alloc(call, (size_t)(n < 0 ? 0 : n) + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)(n < 0 ? 0 : n) + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* ---- shared: cancel-safe queries ------------------------------------------ */

/* One query in flight for a call. The call may end before the result comes
 * back (client reset, deadline, shutdown) and is then freed with its arena,
 * so the store holds this heap object; api_query_cancel() clears |call|
 * and query_done() frees it either way. */
struct query_guard {
    struct grpc_call *call; /* NULL once the call was cancelled */
    api_query_cb cb;
    void *state;
};

static void query_done(const struct store_result *r, void *arg)
{
    struct query_guard *g = arg;
    struct grpc_call *call = g->call;
    api_query_cb cb = g->cb;
    void *state = g->state;
    free(g);
    if (call == NULL)
        return;
    grpc_call_set_user(call, NULL);
    cb(call, r, state);
}

void api_query(struct grpc_call *call, const struct store_stmt *stmt, const char *const *values,
               const int *lengths, api_query_cb cb, void *state)
{
    struct api *a = grpc_call_method_arg(call);
    GW_ASSERT(grpc_call_user(call) == NULL);
    struct query_guard *g = gw_xmalloc(sizeof(*g));
    g->call = call;
    g->cb = cb;
    g->state = state;
    int rc = STORE_ERR_UNAVAILABLE;
    if (a->opts.store != NULL)
        rc = store_query(a->opts.store, stmt, values, lengths, query_done, g);
    if (rc != 0) {
        struct store_result fail = {.status = rc, .res = NULL, .sqlstate = "", .error = ""};
        free(g);
        api_finish_store_error(call, &fail, "");
        return;
    }
    grpc_call_set_user(call, g);
}

void api_query_cancel(struct grpc_call *call)
{
    struct query_guard *g = grpc_call_user(call);
    if (g == NULL)
        return;
    g->call = NULL;
    grpc_call_set_user(call, NULL);
}

/* ---- shared: authorization ------------------------------------------------- */

struct authz {
    const char *workspace;
    enum api_ws_role min_role;
    api_authorized_cb next;
    void *state;
};

static void authz_done(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct authz *z = arg;
    const char *subject = api_call_principal(call)->subject;
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "membership");
        return;
    }
    if (store_ntuples(r) == 0) {
        grpc_call_finishf(call, GRPC_STATUS_PERMISSION_DENIED,
                          "'%s' is not a member of workspace '%s'; ask a workspace admin to run: "
                          "openshell workspace member add %s %s",
                          subject, z->workspace, z->workspace, subject);
        return;
    }
    if (z->min_role == API_WS_ROLE_ADMIN && strcmp(store_get(r, 0, 0), "ADMIN") != 0) {
        grpc_call_finishf(call, GRPC_STATUS_PERMISSION_DENIED,
                          "this method needs the ADMIN role in workspace '%s'; ask a workspace "
                          "admin to run: openshell workspace member add %s %s",
                          z->workspace, z->workspace, subject);
        return;
    }
    z->next(call, z->state);
}

void api_workspace_authorize(struct grpc_call *call, const char *workspace,
                             enum api_ws_role min_role, api_authorized_cb next, void *state)
{
    const struct api_principal *p = api_call_principal(call);
    if (p->platform_admin) {
        next(call, state);
        return;
    }
    struct authz *z = grpc_call_alloc(call, sizeof(*z));
    z->workspace = workspace;
    z->min_role = min_role;
    z->next = next;
    z->state = state;
    const char *params[] = {workspace, p->subject};
    api_query(call, &store_member_role, params, NULL, authz_done, z);
}

struct exists_op {
    const char *workspace;
    api_authorized_cb next;
    void *state;
};

static void exists_done(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct exists_op *e = arg;
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "workspace");
        return;
    }
    if (store_ntuples(r) == 0) {
        api_finish_workspace_not_found(call, e->workspace);
        return;
    }
    e->next(call, e->state);
}

void api_workspace_check_exists(struct grpc_call *call, const char *workspace,
                                api_authorized_cb next, void *state)
{
    struct exists_op *e = grpc_call_alloc(call, sizeof(*e));
    e->workspace = workspace;
    e->next = next;
    e->state = state;
    const char *params[] = {workspace};
    api_query(call, &store_ws_get, params, NULL, exists_done, e);
}

void api_finish_workspace_not_found(struct grpc_call *call, const char *workspace)
{
    grpc_call_finishf(call, GRPC_STATUS_NOT_FOUND, "workspace '%s' not found", workspace);
}

/* ---- shared: ObjectMeta maps ----------------------------------------------- */

/* Splits a stored JSON object of strings into arena copies. Anything else
 * (NULL, bad JSON, not an object) yields no pairs: the columns are written
 * by our own SQL, so that would be a bug, logged once per row. */
static size_t json_pairs(struct grpc_call *call, const char *text, char ***keys, char ***vals)
{
    *keys = NULL;
    *vals = NULL;
    if (text == NULL || text[0] == '\0')
        return 0;
    json_error_t jerr;
    json_t *o = json_loads(text, 0, &jerr);
    if (!json_is_object(o)) {
        log_warn("api.bad_stored_map", LF_STR("method", grpc_call_method(call)->path));
        json_decref(o);
        return 0;
    }
    size_t n = 0, cap = json_object_size(o);
    *keys = grpc_call_alloc(call, (cap + 1) * sizeof(char *));
    *vals = grpc_call_alloc(call, (cap + 1) * sizeof(char *));
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        if (!json_is_string(v) || n == cap)
            continue;
        (*keys)[n] = grpc_call_strdup(call, k);
        (*vals)[n] = grpc_call_strdup(call, json_string_value(v));
        n++;
    }
    json_decref(o);
    return n;
}

void api_meta_set_maps(struct grpc_call *call, meta_msg *meta, const char *labels_json,
                       const char *annotations_json)
{
    char **k, **v;
    size_t n = json_pairs(call, labels_json, &k, &v);
    meta->labels = grpc_call_alloc(call, (n + 1) * sizeof(*meta->labels));
    for (size_t i = 0; i < n; i++) {
        Openshell__Datamodel__V1__ObjectMeta__LabelsEntry *e = grpc_call_alloc(call, sizeof(*e));
        openshell__datamodel__v1__object_meta__labels_entry__init(e);
        e->key = k[i];
        e->value = v[i];
        meta->labels[i] = e;
    }
    meta->n_labels = n;

    n = json_pairs(call, annotations_json, &k, &v);
    meta->annotations = grpc_call_alloc(call, (n + 1) * sizeof(*meta->annotations));
    for (size_t i = 0; i < n; i++) {
        Openshell__Datamodel__V1__ObjectMeta__AnnotationsEntry *e =
            grpc_call_alloc(call, sizeof(*e));
        openshell__datamodel__v1__object_meta__annotations_entry__init(e);
        e->key = k[i];
        e->value = v[i];
        meta->annotations[i] = e;
    }
    meta->n_annotations = n;
}

/* ---- rows to messages ------------------------------------------------------ */

static ws_msg *ws_from_row(struct grpc_call *call, const struct store_result *r, int row)
{
    ws_msg *w = grpc_call_alloc(call, sizeof(*w));
    meta_msg *m = grpc_call_alloc(call, sizeof(*m));
    Openshell__Datamodel__V1__WorkspaceStatus *st = grpc_call_alloc(call, sizeof(*st));
    openshell__datamodel__v1__workspace__init(w);
    openshell__datamodel__v1__object_meta__init(m);
    openshell__datamodel__v1__workspace_status__init(st);
    m->id = grpc_call_strdup(call, store_get(r, row, STORE_WS_ID));
    m->name = grpc_call_strdup(call, store_get(r, row, STORE_WS_NAME));
    m->created_at_ms = store_get_i64(r, row, STORE_WS_CREATED_MS);
    m->resource_version = (uint64_t)store_get_i64(r, row, STORE_WS_RV);
    m->deletion_timestamp_ms = store_get_i64(r, row, STORE_WS_TERMINATING_MS);
    api_meta_set_maps(call, m, store_get(r, row, STORE_WS_LABELS), NULL);
    st->phase = strcmp(store_get(r, row, STORE_WS_PHASE), "TERMINATING") == 0
                    ? OPENSHELL__DATAMODEL__V1__WORKSPACE_PHASE__WORKSPACE_PHASE_TERMINATING
                    : OPENSHELL__DATAMODEL__V1__WORKSPACE_PHASE__WORKSPACE_PHASE_ACTIVE;
    w->metadata = m;
    w->status = st;
    return w;
}

static member_msg *member_from_row(struct grpc_call *call, const struct store_result *r, int row)
{
    member_msg *mb = grpc_call_alloc(call, sizeof(*mb));
    meta_msg *m = grpc_call_alloc(call, sizeof(*m));
    openshell__v1__workspace_member__init(mb);
    openshell__datamodel__v1__object_meta__init(m);
    m->id = grpc_call_strdup(call, store_get(r, row, STORE_MEM_ID));
    m->name = grpc_call_strdup(call, store_get(r, row, STORE_MEM_SUBJECT));
    m->workspace = grpc_call_strdup(call, store_get(r, row, STORE_MEM_WORKSPACE));
    m->created_at_ms = store_get_i64(r, row, STORE_MEM_CREATED_MS);
    m->resource_version = (uint64_t)store_get_i64(r, row, STORE_MEM_RV);
    mb->metadata = m;
    mb->principal_subject = m->name;
    mb->role = strcmp(store_get(r, row, STORE_MEM_ROLE), "ADMIN") == 0
                   ? OPENSHELL__V1__WORKSPACE_ROLE__WORKSPACE_ROLE_ADMIN
                   : OPENSHELL__V1__WORKSPACE_ROLE__WORKSPACE_ROLE_USER;
    return mb;
}

/* ---- request checks --------------------------------------------------------- */

static bool require_platform_admin(struct grpc_call *call)
{
    if (api_call_principal(call)->platform_admin)
        return true;
    grpc_call_finish(call, GRPC_STATUS_PERMISSION_DENIED, "platform admin role required");
    return false;
}

static bool require_field(struct grpc_call *call, const char *value, const char *field)
{
    if (value != NULL && value[0] != '\0')
        return true;
    grpc_call_finishf(call, GRPC_STATUS_INVALID_ARGUMENT, "%s is required", field);
    return false;
}

/* The request's labels as compact JSON with sorted keys, or NULL with a
 * message in |err|. Caller owns the result, free(). */
static char *labels_to_json(Openshell__V1__CreateWorkspaceRequest__LabelsEntry **e, size_t n,
                            char *err, size_t errlen)
{
    json_t *o = json_object();
    char *out = NULL;
    snprintf(err, errlen, "labels could not be encoded");
    for (size_t i = 0; i < n; i++) {
        /* Checked one by one first: the rules admit only ASCII, which
         * jansson then always accepts. */
        if (!labels_key_valid(e[i]->key, err, errlen) ||
            !labels_value_valid(e[i]->value, err, errlen))
            goto out;
        if (json_object_set_new(o, e[i]->key, json_string(e[i]->value)) != 0)
            goto out;
    }
    if (labels_map_validate_json(o, false, err, errlen) != 0)
        goto out;
    out = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
out:
    json_decref(o);
    return out;
}

static struct ws_op *ws_op_new(struct grpc_call *call, void *req, const char *workspace)
{
    struct ws_op *op = grpc_call_alloc(call, sizeof(*op));
    op->req = req;
    op->workspace = api_workspace_name(workspace);
    return op;
}

/* ---- CreateWorkspace ---------------------------------------------------------- */

static void create_done(struct grpc_call *call, const struct store_result *r, void *arg)
{
    Openshell__V1__CreateWorkspaceRequest *req = arg;
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, call_printf(call, "workspace '%s'", req->name));
        return;
    }
    if (store_ntuples(r) != 1) {
        grpc_call_finish(call, GRPC_STATUS_INTERNAL, "internal database error");
        return;
    }
    Openshell__V1__CreateWorkspaceResponse resp = OPENSHELL__V1__CREATE_WORKSPACE_RESPONSE__INIT;
    resp.workspace = ws_from_row(call, r, 0);
    grpc_call_reply(call, &resp.base);
}

static void create_workspace(struct grpc_call *call, void *msg)
{
    Openshell__V1__CreateWorkspaceRequest *req = msg;
    char err[ERRLEN];
    if (!require_platform_admin(call) || api_store_unavailable(call) ||
        !require_field(call, req->name, "name"))
        return;
    if (!labels_dns_label_valid(req->name, NAME_MAX_LEN, err, sizeof(err))) {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, err);
        return;
    }
    char *labels = labels_to_json(req->labels, req->n_labels, err, sizeof(err));
    if (labels == NULL) {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, err);
        return;
    }
    char id[37];
    gw_uuid4(id);
    const char *params[] = {id, req->name, labels, api_call_principal(call)->subject};
    api_query(call, &store_ws_create, params, NULL, create_done, req);
    free(labels);
}

/* ---- GetWorkspace ------------------------------------------------------------- */

static void get_done(struct grpc_call *call, const struct store_result *r, void *arg)
{
    Openshell__V1__GetWorkspaceRequest *req = arg;
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "workspace");
        return;
    }
    if (store_ntuples(r) == 0) {
        api_finish_workspace_not_found(call, req->name);
        return;
    }
    Openshell__V1__GetWorkspaceResponse resp = OPENSHELL__V1__GET_WORKSPACE_RESPONSE__INIT;
    resp.workspace = ws_from_row(call, r, 0);
    grpc_call_reply(call, &resp.base);
}

static void get_authorized(struct grpc_call *call, void *arg)
{
    Openshell__V1__GetWorkspaceRequest *req = arg;
    const char *params[] = {req->name};
    api_query(call, &store_ws_get, params, NULL, get_done, req);
}

static void get_workspace(struct grpc_call *call, void *msg)
{
    Openshell__V1__GetWorkspaceRequest *req = msg;
    if (api_store_unavailable(call) || !require_field(call, req->name, "name"))
        return;
    api_workspace_authorize(call, req->name, API_WS_ROLE_USER, get_authorized, req);
}

/* ---- ListWorkspaces ----------------------------------------------------------- */

static void list_done(struct grpc_call *call, const struct store_result *r, void *arg)
{
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "workspace");
        return;
    }
    int n = store_ntuples(r);
    Openshell__V1__ListWorkspacesResponse resp = OPENSHELL__V1__LIST_WORKSPACES_RESPONSE__INIT;
    resp.workspaces = grpc_call_alloc(call, ((size_t)n + 1) * sizeof(*resp.workspaces));
    for (int i = 0; i < n; i++)
        resp.workspaces[i] = ws_from_row(call, r, i);
    resp.n_workspaces = (size_t)n;
    grpc_call_reply(call, &resp.base);
}

static void list_workspaces(struct grpc_call *call, void *msg)
{
    Openshell__V1__ListWorkspacesRequest *req = msg;
    const struct api_principal *p = api_call_principal(call);
    struct labels_selector sel;
    char err[ERRLEN];
    if (api_store_unavailable(call))
        return;
    if (labels_selector_parse(req->label_selector, &sel, err, sizeof(err)) != 0) {
        grpc_call_finishf(call, GRPC_STATUS_INVALID_ARGUMENT, "invalid label_selector: %s", err);
        return;
    }
    char *match = labels_selector_to_json(&sel);
    labels_selector_free(&sel);
    if (match == NULL) { /* one key asked with two values: nothing matches */
        Openshell__V1__ListWorkspacesResponse resp = OPENSHELL__V1__LIST_WORKSPACES_RESPONSE__INIT;
        grpc_call_reply(call, &resp.base);
        return;
    }
    char limit[24], offset[24];
    const char *params[] = {match, api_u64(limit, api_page_limit(req->limit)),
                            api_u64(offset, req->offset), p->platform_admin ? "" : p->subject};
    api_query(call, &store_ws_list, params, NULL, list_done, NULL);
    free(match);
}

/* ---- DeleteWorkspace ---------------------------------------------------------- */

/* Answers |call| for a gw_workspace_delete(_prepare) outcome. */
static void finish_delete_outcome(struct grpc_call *call, const char *name, const char *outcome)
{
    if (strcmp(outcome, "deleted") == 0) {
        Openshell__V1__DeleteWorkspaceResponse resp =
            OPENSHELL__V1__DELETE_WORKSPACE_RESPONSE__INIT;
        resp.deleted = true;
        grpc_call_reply(call, &resp.base);
    } else if (strcmp(outcome, "not_found") == 0) {
        api_finish_workspace_not_found(call, name);
    } else if (strcmp(outcome, "default") == 0) {
        grpc_call_finish(call, GRPC_STATUS_FAILED_PRECONDITION,
                         "the default workspace cannot be deleted");
    } else if (strncmp(outcome, "busy:", 5) == 0) {
        grpc_call_finishf(call, GRPC_STATUS_FAILED_PRECONDITION,
                          "workspace '%s' still holds %s; it stays TERMINATING until they are "
                          "removed",
                          name, outcome + 5);
    } else {
        log_error("api.workspace_delete_outcome", LF_STR("outcome", outcome));
        grpc_call_finish(call, GRPC_STATUS_INTERNAL, "internal database error");
    }
}

/* Past the driver's DeleteWorkspace the deletion completes even when the
 * client went away. */
struct ws_delete {
    struct api_detached det;
    struct api *a;
    char *name;
    char *actor;
};

static void ws_delete_free(struct ws_delete *w)
{
    api_detach_end(w->a, &w->det);
    free(w->name);
    free(w->actor);
    free(w);
}

static void ws_deleted(const struct store_result *r, void *arg)
{
    struct ws_delete *w = arg;
    const char *outcome = r->status == STORE_OK && store_ntuples(r) == 1 ? store_get(r, 0, 0) : "";
    log_info("api.workspace_deleted", LF_STR("workspace", w->name), LF_STR("outcome", outcome));
    if (w->det.call != NULL) {
        if (r->status != STORE_OK)
            api_finish_store_error(w->det.call, r, "workspace");
        else
            finish_delete_outcome(w->det.call, w->name, outcome);
    }
    ws_delete_free(w);
}

static void ws_driver_done(int status, const char *message, const ProtobufCMessage *resp, void *arg)
{
    struct ws_delete *w = arg;
    if (status != GRPC_STATUS_OK && status != GRPC_STATUS_UNIMPLEMENTED) {
        /* The workspace stays TERMINATING; a retry asks the driver again. */
        log_warn("api.workspace_driver_delete_failed", LF_STR("workspace", w->name),
                 LF_STR("status", grpc_status_name(status)), LF_STR("message", message));
        if (w->det.call != NULL)
            grpc_call_finishf(w->det.call, status, "delete workspace failed: %s",
                              message ? message : "");
        ws_delete_free(w);
        return;
    }
    const char *params[] = {w->name, w->actor};
    api_store_run(w->a, &store_ws_delete, params, NULL, ws_deleted, w);
}

static void delete_prepared(struct grpc_call *call, const struct store_result *r, void *arg)
{
    Openshell__V1__DeleteWorkspaceRequest *req = arg;
    struct api *a = grpc_call_method_arg(call);
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "workspace");
        return;
    }
    const char *outcome = store_ntuples(r) == 1 ? store_get(r, 0, 0) : "";
    if (strcmp(outcome, "ready") != 0) {
        finish_delete_outcome(call, req->name, outcome);
        return;
    }
    /* Empty and TERMINATING: the driver cleans up its side first
     * (UNIMPLEMENTED is fine), then the record goes. */
    if (a->driver == NULL || driver_state(a->driver) != DRIVER_READY) {
        grpc_call_finishf(call, GRPC_STATUS_UNAVAILABLE,
                          "compute driver is not connected; workspace '%s' stays TERMINATING, "
                          "retry later",
                          req->name);
        return;
    }
    struct ws_delete *w = gw_xcalloc(1, sizeof(*w));
    w->a = a;
    w->name = gw_xstrdup(req->name);
    w->actor = gw_xstrdup(api_call_principal(call)->subject);
    api_detach(call, &w->det);
    Openshell__Compute__V1__DeleteWorkspaceRequest dr =
        OPENSHELL__COMPUTE__V1__DELETE_WORKSPACE_REQUEST__INIT;
    dr.workspace = w->name;
    (void)driver_call(a->driver, DRIVER_DELETE_WORKSPACE, &dr.base, 0, ws_driver_done, w);
}

static void delete_workspace(struct grpc_call *call, void *msg)
{
    Openshell__V1__DeleteWorkspaceRequest *req = msg;
    if (!require_platform_admin(call) || api_store_unavailable(call) ||
        !require_field(call, req->name, "name"))
        return;
    if (strcmp(req->name, "default") == 0) {
        grpc_call_finish(call, GRPC_STATUS_FAILED_PRECONDITION,
                         "the default workspace cannot be deleted");
        return;
    }
    const char *params[] = {req->name, api_call_principal(call)->subject};
    api_query(call, &store_ws_delete_prepare, params, NULL, delete_prepared, req);
}

/* ---- AddWorkspaceMember ------------------------------------------------------- */

static void add_member_done(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct ws_op *op = arg;
    Openshell__V1__AddWorkspaceMemberRequest *req = op->req;
    if (store_is_raise_exception(r) && strcmp(r->error, "workspace_not_found") == 0) {
        api_finish_workspace_not_found(call, op->workspace);
        return;
    }
    if (store_is_raise_exception(r) && strcmp(r->error, "member_limit") == 0) {
        grpc_call_finishf(call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                          "workspace '%s' has the maximum of %d members", op->workspace,
                          MEMBER_LIMIT);
        return;
    }
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r,
                               call_printf(call, "member '%s' of workspace '%s'",
                                           req->principal_subject, op->workspace));
        return;
    }
    if (store_ntuples(r) != 1) {
        grpc_call_finish(call, GRPC_STATUS_INTERNAL, "internal database error");
        return;
    }
    Openshell__V1__AddWorkspaceMemberResponse resp =
        OPENSHELL__V1__ADD_WORKSPACE_MEMBER_RESPONSE__INIT;
    resp.member = member_from_row(call, r, 0);
    grpc_call_reply(call, &resp.base);
}

static void add_member_authorized(struct grpc_call *call, void *arg)
{
    struct ws_op *op = arg;
    Openshell__V1__AddWorkspaceMemberRequest *req = op->req;
    char id[37];
    gw_uuid4(id);
    const char *role =
        req->role == OPENSHELL__V1__WORKSPACE_ROLE__WORKSPACE_ROLE_ADMIN ? "ADMIN" : "USER";
    const char *params[] = {id, op->workspace, req->principal_subject, role,
                            api_call_principal(call)->subject};
    api_query(call, &store_member_add, params, NULL, add_member_done, op);
}

static void add_member(struct grpc_call *call, void *msg)
{
    Openshell__V1__AddWorkspaceMemberRequest *req = msg;
    if (api_store_unavailable(call) ||
        !require_field(call, req->principal_subject, "principal_subject"))
        return;
    if (req->role != OPENSHELL__V1__WORKSPACE_ROLE__WORKSPACE_ROLE_USER &&
        req->role != OPENSHELL__V1__WORKSPACE_ROLE__WORKSPACE_ROLE_ADMIN) {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT,
                         "role must be WORKSPACE_ROLE_USER or WORKSPACE_ROLE_ADMIN");
        return;
    }
    if (req->role == OPENSHELL__V1__WORKSPACE_ROLE__WORKSPACE_ROLE_ADMIN &&
        !api_call_principal(call)->platform_admin) {
        grpc_call_finish(call, GRPC_STATUS_PERMISSION_DENIED,
                         "only platform admins may grant the ADMIN role");
        return;
    }
    struct ws_op *op = ws_op_new(call, req, req->workspace);
    api_workspace_authorize(call, op->workspace, API_WS_ROLE_ADMIN, add_member_authorized, op);
}

/* ---- RemoveWorkspaceMember ---------------------------------------------------- */

static void remove_member_done(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct ws_op *op = arg;
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "member");
        return;
    }
    const char *outcome = store_ntuples(r) == 1 ? store_get(r, 0, 0) : "";
    if (strcmp(outcome, "not_found") == 0) {
        api_finish_workspace_not_found(call, op->workspace);
        return;
    }
    if (strcmp(outcome, "removed") != 0 && strcmp(outcome, "absent") != 0) {
        log_error("api.member_remove_outcome", LF_STR("outcome", outcome));
        grpc_call_finish(call, GRPC_STATUS_INTERNAL, "internal database error");
        return;
    }
    Openshell__V1__RemoveWorkspaceMemberResponse resp =
        OPENSHELL__V1__REMOVE_WORKSPACE_MEMBER_RESPONSE__INIT;
    resp.removed = strcmp(outcome, "removed") == 0;
    grpc_call_reply(call, &resp.base);
}

static void remove_member_authorized(struct grpc_call *call, void *arg)
{
    struct ws_op *op = arg;
    Openshell__V1__RemoveWorkspaceMemberRequest *req = op->req;
    const char *params[] = {op->workspace, req->principal_subject,
                            api_call_principal(call)->subject};
    api_query(call, &store_member_remove, params, NULL, remove_member_done, op);
}

static void remove_member(struct grpc_call *call, void *msg)
{
    Openshell__V1__RemoveWorkspaceMemberRequest *req = msg;
    if (api_store_unavailable(call) ||
        !require_field(call, req->principal_subject, "principal_subject"))
        return;
    struct ws_op *op = ws_op_new(call, req, req->workspace);
    api_workspace_authorize(call, op->workspace, API_WS_ROLE_ADMIN, remove_member_authorized, op);
}

/* ---- ListWorkspaceMembers ----------------------------------------------------- */

static void reply_no_members(struct grpc_call *call, void *arg)
{
    Openshell__V1__ListWorkspaceMembersResponse resp =
        OPENSHELL__V1__LIST_WORKSPACE_MEMBERS_RESPONSE__INIT;
    grpc_call_reply(call, &resp.base);
}

static void list_members_done(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct ws_op *op = arg;
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "member");
        return;
    }
    int n = store_ntuples(r);
    if (n == 0) { /* the join hides a missing workspace: tell it apart */
        api_workspace_check_exists(call, op->workspace, reply_no_members, NULL);
        return;
    }
    Openshell__V1__ListWorkspaceMembersResponse resp =
        OPENSHELL__V1__LIST_WORKSPACE_MEMBERS_RESPONSE__INIT;
    resp.members = grpc_call_alloc(call, (size_t)n * sizeof(*resp.members));
    for (int i = 0; i < n; i++)
        resp.members[i] = member_from_row(call, r, i);
    resp.n_members = (size_t)n;
    grpc_call_reply(call, &resp.base);
}

static void list_members_authorized(struct grpc_call *call, void *arg)
{
    struct ws_op *op = arg;
    Openshell__V1__ListWorkspaceMembersRequest *req = op->req;
    char limit[24], offset[24];
    const char *params[] = {op->workspace, api_u64(limit, api_page_limit(req->limit)),
                            api_u64(offset, req->offset)};
    api_query(call, &store_member_list, params, NULL, list_members_done, op);
}

static void list_members(struct grpc_call *call, void *msg)
{
    Openshell__V1__ListWorkspaceMembersRequest *req = msg;
    if (api_store_unavailable(call))
        return;
    struct ws_op *op = ws_op_new(call, req, req->workspace);
    api_workspace_authorize(call, op->workspace, API_WS_ROLE_USER, list_members_authorized, op);
}

/* ---- registration --------------------------------------------------------------- */

#define HANDLER(var, fn)                                                                           \
    static const struct grpc_handler var = {.on_message = (fn), .on_cancel = api_query_cancel}

HANDLER(create_workspace_h, create_workspace);
HANDLER(get_workspace_h, get_workspace);
HANDLER(list_workspaces_h, list_workspaces);
/* Its driver step outlives the call. */
static const struct grpc_handler delete_workspace_h = {.on_message = delete_workspace,
                                                       .on_cancel = api_detached_cancel};
HANDLER(add_member_h, add_member);
HANDLER(remove_member_h, remove_member);
HANDLER(list_members_h, list_members);

#define METHOD(name, msg, handler)                                                                 \
    {                                                                                              \
        "/openshell.v1.OpenShell/" #name, GRPC_UNARY, &openshell__v1__##msg##_request__descriptor, \
            &openshell__v1__##msg##_response__descriptor, &(handler), NULL, API_AUTH_BEARER        \
    }

const struct grpc_method api_workspace_methods[] = {
    METHOD(CreateWorkspace, create_workspace, create_workspace_h),
    METHOD(GetWorkspace, get_workspace, get_workspace_h),
    METHOD(ListWorkspaces, list_workspaces, list_workspaces_h),
    METHOD(DeleteWorkspace, delete_workspace, delete_workspace_h),
    METHOD(AddWorkspaceMember, add_workspace_member, add_member_h),
    METHOD(RemoveWorkspaceMember, remove_workspace_member, remove_member_h),
    METHOD(ListWorkspaceMembers, list_workspace_members, list_members_h),
    {.path = NULL},
};
