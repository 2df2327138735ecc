/* openshell.v1 GetSandbox and ListSandboxes (semantics.md §7), and the
 * row-to-Sandbox converter the other sandbox handlers share. */
#include "api/api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "labels/labels.h"
#include "openshell.pb-c.h"
#include "store/store.h"

#define ERRLEN 256

/* ---- rows to messages ------------------------------------------------------ */

/* Decodes bytea column |col| as |desc| with the default allocator (the
 * caller frees it with protobuf_c_message_free_unpacked). A row that does
 * not decode was written by a bug, not by a peer: it is logged and shown
 * empty rather than failing every read of the list it sits in. */
static ProtobufCMessage *unpack_column(const struct store_result *r, int row, int col,
                                       const ProtobufCMessageDescriptor *desc)
{
    ProtobufCMessage *m = NULL;
    if (!store_is_null(r, row, col)) {
        size_t len;
        uint8_t *bytes = store_get_bytea(r, row, col, &len);
        /* protobuf-c copies strings and bytes out of the input. */
        m = protobuf_c_message_unpack(desc, NULL, len, bytes);
        free(bytes);
        if (m == NULL)
            log_error("api.sandbox_unreadable", LF_STR("id", store_get(r, row, STORE_SB_ID)),
                      LF_STR("message", desc->name));
    }
    if (m == NULL) {
        m = gw_xmalloc(desc->sizeof_message);
        protobuf_c_message_init(desc, m);
    }
    return m;
}

static Openshell__V1__SandboxPhase phase_from_name(const char *phase)
{
    char name[64];
    snprintf(name, sizeof(name), "SANDBOX_PHASE_%s", phase);
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value_by_name(
        &openshell__v1__sandbox_phase__descriptor, name);
    return v ? (Openshell__V1__SandboxPhase)v->value
             : OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_UNKNOWN;
}

static Openshell__Datamodel__V1__ObjectMeta *meta_from_row(struct grpc_call *call,
                                                           const struct store_result *r, int row)
{
    Openshell__Datamodel__V1__ObjectMeta *m = grpc_call_alloc(call, sizeof(*m));
    openshell__datamodel__v1__object_meta__init(m);
    m->id = grpc_call_strdup(call, store_get(r, row, STORE_SB_ID));
    m->name = grpc_call_strdup(call, store_get(r, row, STORE_SB_NAME));
    m->workspace = grpc_call_strdup(call, store_get(r, row, STORE_SB_WORKSPACE));
    m->created_at_ms = store_get_i64(r, row, STORE_SB_CREATED_MS);
    m->resource_version = (uint64_t)store_get_i64(r, row, STORE_SB_RV);
    api_meta_set_maps(call, m, store_get(r, row, STORE_SB_LABELS),
                      store_get(r, row, STORE_SB_ANNOTATIONS));
    return m;
}

Openshell__V1__Sandbox *api_sandbox_from_row(struct grpc_call *call, const struct store_result *r,
                                             int row)
{
    Openshell__V1__Sandbox *sb = grpc_call_alloc(call, sizeof(*sb));
    openshell__v1__sandbox__init(sb);
    sb->metadata = meta_from_row(call, r, row);
    sb->spec = (Openshell__V1__SandboxSpec *)unpack_column(
        r, row, STORE_SB_SPEC, &openshell__v1__sandbox_spec__descriptor);
    sb->status = (Openshell__V1__SandboxStatus *)unpack_column(
        r, row, STORE_SB_STATUS, &openshell__v1__sandbox_status__descriptor);
    sb->status->phase = phase_from_name(store_get(r, row, STORE_SB_PHASE));
    return sb;
}

void api_sandbox_free_unpacked(Openshell__V1__Sandbox *sb)
{
    if (sb == NULL)
        return;
    if (sb->spec != NULL)
        protobuf_c_message_free_unpacked(&sb->spec->base, NULL);
    if (sb->status != NULL)
        protobuf_c_message_free_unpacked(&sb->status->base, NULL);
    sb->spec = NULL;
    sb->status = NULL;
}

/* ---- GetSandbox ------------------------------------------------------------- */

struct get_op {
    Openshell__V1__GetSandboxRequest *req;
    const char *workspace; /* "" became "default" */
};

static void finish_sandbox_not_found(struct grpc_call *call, void *arg)
{
    grpc_call_finish(call, GRPC_STATUS_NOT_FOUND, "sandbox not found");
}

static void get_done(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct get_op *op = arg;
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "sandbox");
        return;
    }
    if (store_ntuples(r) == 0) {
        /* The join hides a missing workspace: name it when that is why. */
        api_workspace_check_exists(call, op->workspace, finish_sandbox_not_found, NULL);
        return;
    }
    Openshell__V1__SandboxResponse resp = OPENSHELL__V1__SANDBOX_RESPONSE__INIT;
    resp.sandbox = api_sandbox_from_row(call, r, 0);
    grpc_call_reply(call, &resp.base); /* packs now: the decoded parts can go */
    api_sandbox_free_unpacked(resp.sandbox);
}

static void get_authorized(struct grpc_call *call, void *arg)
{
    struct get_op *op = arg;
    const char *params[] = {op->workspace, op->req->name};
    api_query(call, &store_sb_get_by_name, params, NULL, get_done, op);
}

static void get_sandbox(struct grpc_call *call, void *msg)
{
    Openshell__V1__GetSandboxRequest *req = msg;
    if (api_store_unavailable(call))
        return;
    if (req->name == NULL || req->name[0] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "name is required");
        return;
    }
    struct get_op *op = grpc_call_alloc(call, sizeof(*op));
    op->req = req;
    op->workspace = api_workspace_name(req->workspace);
    api_workspace_authorize(call, op->workspace, API_WS_ROLE_USER, get_authorized, op);
}

/* ---- ListSandboxes ---------------------------------------------------------- */

struct list_op {
    Openshell__V1__ListSandboxesRequest *req;
    const char *workspace; /* "" = every workspace (all_workspaces) */
    char *match;           /* selector as JSON for `labels @>`, call arena */
};

static void reply_empty_list(struct grpc_call *call, void *arg)
{
    Openshell__V1__ListSandboxesResponse resp = OPENSHELL__V1__LIST_SANDBOXES_RESPONSE__INIT;
    grpc_call_reply(call, &resp.base);
}

static void list_done(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct list_op *op = arg;
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "sandbox");
        return;
    }
    int n = store_ntuples(r);
    if (n == 0 && op->workspace[0] != '\0') {
        api_workspace_check_exists(call, op->workspace, reply_empty_list, NULL);
        return;
    }
    Openshell__V1__ListSandboxesResponse resp = OPENSHELL__V1__LIST_SANDBOXES_RESPONSE__INIT;
    resp.sandboxes = grpc_call_alloc(call, ((size_t)n + 1) * sizeof(*resp.sandboxes));
    for (int i = 0; i < n; i++)
        resp.sandboxes[i] = api_sandbox_from_row(call, r, i);
    resp.n_sandboxes = (size_t)n;
    grpc_call_reply(call, &resp.base); /* packs now: the decoded parts can go */
    for (int i = 0; i < n; i++)
        api_sandbox_free_unpacked(resp.sandboxes[i]);
}

static void list_authorized(struct grpc_call *call, void *arg)
{
    struct list_op *op = arg;
    if (op->match == NULL) { /* one key asked with two values: nothing matches */
        if (op->workspace[0] != '\0')
            api_workspace_check_exists(call, op->workspace, reply_empty_list, NULL);
        else
            reply_empty_list(call, NULL);
        return;
    }
    char limit[24], offset[24];
    const char *params[] = {op->workspace, op->match,
                            api_u64(limit, api_page_limit(op->req->limit)),
                            api_u64(offset, op->req->offset)};
    api_query(call, &store_sb_list, params, NULL, list_done, op);
}

/* The selector as an arena JSON object; false when the call was finished
 * with INVALID_ARGUMENT. |*out| NULL: the selector can match nothing. */
static bool selector_json(struct grpc_call *call, const char *text, char **out)
{
    struct labels_selector sel;
    char err[ERRLEN];
    if (labels_selector_parse(text, &sel, err, sizeof(err)) != 0) {
        grpc_call_finishf(call, GRPC_STATUS_INVALID_ARGUMENT, "invalid label_selector: %s", err);
        return false;
    }
    char *json = labels_selector_to_json(&sel);
    labels_selector_free(&sel);
    *out = json ? grpc_call_strdup(call, json) : NULL;
    free(json);
    return true;
}

static void list_sandboxes(struct grpc_call *call, void *msg)
{
    Openshell__V1__ListSandboxesRequest *req = msg;
    if (api_store_unavailable(call))
        return;
    if (req->all_workspaces && req->workspace[0] != '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT,
                         "all_workspaces cannot be combined with workspace");
        return;
    }
    if (req->all_workspaces && !api_call_principal(call)->platform_admin) {
        grpc_call_finish(call, GRPC_STATUS_PERMISSION_DENIED,
                         "all_workspaces requires the platform admin role");
        return;
    }
    struct list_op *op = grpc_call_alloc(call, sizeof(*op));
    op->req = req;
    if (!selector_json(call, req->label_selector, &op->match))
        return;
    if (req->all_workspaces) {
        op->workspace = "";
        list_authorized(call, op);
        return;
    }
    op->workspace = api_workspace_name(req->workspace);
    api_workspace_authorize(call, op->workspace, API_WS_ROLE_USER, list_authorized, op);
}

/* ---- registration --------------------------------------------------------------- */

static const struct grpc_handler get_sandbox_h = {.on_message = get_sandbox,
                                                  .on_cancel = api_query_cancel};
static const struct grpc_handler list_sandboxes_h = {.on_message = list_sandboxes,
                                                     .on_cancel = api_query_cancel};

const struct grpc_method api_sandbox_methods[] = {
    {"/openshell.v1.OpenShell/GetSandbox", GRPC_UNARY,
     &openshell__v1__get_sandbox_request__descriptor, &openshell__v1__sandbox_response__descriptor,
     &get_sandbox_h, NULL, API_AUTH_BEARER},
    {"/openshell.v1.OpenShell/ListSandboxes", GRPC_UNARY,
     &openshell__v1__list_sandboxes_request__descriptor,
     &openshell__v1__list_sandboxes_response__descriptor, &list_sandboxes_h, NULL, API_AUTH_BEARER},
    {.path = NULL},
};
