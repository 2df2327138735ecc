/* openshell.v1 CreateSandbox, DeleteSandbox, StopSandbox and StartSandbox
 * through the compute driver (semantics.md §6, §9).
 *
 * Each call becomes a lifecycle op. Until the caller is authorized and the
 * record resolved, the op lives in the call (api_query). From then on it is
 * a heap object that does not depend on the call: it holds the sandbox's
 * gate, talks to the driver and the store, and if the client goes away
 * (deadline, reset, shutdown) it still finishes the transition it started,
 * so nothing is left half done; only the reply is dropped. */
#include "api/api.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/api_int.h"
#include "drivers/driver.h"
#include "pbjson/pbjson.h"
#include "openshell.pb-c.h"
#include "store/store.h"

#define ERRLEN             512
#define DRIVER_CALL_MAX_MS 30000
#define PHASE(x)           OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_##x

enum lc_kind { LC_CREATE, LC_DELETE, LC_STOP, LC_START };

struct lc_op {
    struct api_detached det; /* det.call: NULL once the client went away */
    struct api *a;
    enum lc_kind kind;
    char id[40];
    char *name;
    char *workspace;
    char *actor;
    bool gate_held;
    uint32_t driver_timeout_ms;
    struct api_sb_row row; /* the record as read under the gate */
    uint64_t rv;           /* resource version after our last write */
    /* create */
    uint8_t *spec;
    size_t spec_len;
    uint8_t *dsb; /* packed DriverSandbox */
    size_t dsb_len;
    char *labels_json;
    char *annotations_json;
    char *spec_json;
    uint8_t *reply; /* packed SandboxResponse of the persisted record */
    size_t reply_len;
    /* failure to report once cleanup is done */
    int fail_status;
    char *fail_message;
};

static const char *method_verb[] = {"create", "delete", "stop", "start"};

/* ---- op bookkeeping ------------------------------------------------------------ */

static struct lc_op *lc_new(struct grpc_call *call, enum lc_kind kind)
{
    struct api *a = grpc_call_method_arg(call);
    struct lc_op *op = gw_xcalloc(1, sizeof(*op));
    op->a = a;
    op->kind = kind;
    op->actor = gw_xstrdup(api_call_principal(call)->subject);
    uint64_t deadline = grpc_call_deadline_us(call);
    op->driver_timeout_ms = DRIVER_CALL_MAX_MS;
    if (deadline != 0) {
        uint64_t now = gw_clock_mono_us();
        uint64_t left = deadline > now ? (deadline - now) / 1000 : 1;
        if (left < op->driver_timeout_ms)
            op->driver_timeout_ms = left > 0 ? (uint32_t)left : 1;
    }
    api_detach(call, &op->det);
    return op;
}

static void lc_free(struct lc_op *op)
{
    api_detach_end(op->a, &op->det);
    api_sb_row_clear(&op->row);
    free(op->name);
    free(op->workspace);
    free(op->actor);
    free(op->spec);
    free(op->dsb);
    free(op->labels_json);
    free(op->annotations_json);
    free(op->spec_json);
    free(op->reply);
    free(op->fail_message);
    free(op);
}

/* Ends the op: leaves the gate (pending observations then apply). */
static void lc_done(struct lc_op *op)
{
    struct api *a = op->a;
    char id[40];
    bool held = op->gate_held;
    snprintf(id, sizeof(id), "%s", op->id);
    lc_free(op);
    if (held)
        api_gate_leave(a, id);
}

static void lc_fail(struct lc_op *op, int status, const char *fmt, ...) GW_PRINTF(3, 4);
static void lc_fail(struct lc_op *op, int status, const char *fmt, ...)
{
    if (op->det.call != NULL) {
        char msg[ERRLEN];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        grpc_call_finish(op->det.call, status, msg);
        op->det.call = NULL;
    }
    lc_done(op);
}

static void lc_fail_store(struct lc_op *op, const struct store_result *r, const char *what)
{
    if (op->det.call != NULL) {
        api_finish_store_error(op->det.call, r, what);
        op->det.call = NULL;
    }
    lc_done(op);
}

/* Replies with the sandbox in row 0 of |r| (sandbox columns). */
static void lc_reply_row(struct lc_op *op, const struct store_result *r)
{
    if (op->det.call != NULL) {
        Openshell__V1__SandboxResponse resp = OPENSHELL__V1__SANDBOX_RESPONSE__INIT;
        resp.sandbox = api_sandbox_from_row(op->det.call, r, 0);
        grpc_call_reply(op->det.call, &resp.base);
        api_sandbox_free_unpacked(resp.sandbox);
        op->det.call = NULL;
    }
    lc_done(op);
}

static bool driver_usable(struct grpc_call *call)
{
    struct api *a = grpc_call_method_arg(call);
    if (a->driver != NULL && driver_state(a->driver) == DRIVER_READY)
        return true;
    grpc_call_finishf(call, GRPC_STATUS_UNAVAILABLE,
                      "compute driver '%s' is not connected; retry later",
                      a->driver != NULL ? driver_name(a->driver) : "none");
    return false;
}

/* Maps a driver failure of |verb| to the status the caller sees. */
static int driver_failure_status(enum lc_kind kind, int status)
{
    switch (status) {
    case GRPC_STATUS_UNAVAILABLE:
    case GRPC_STATUS_DEADLINE_EXCEEDED:
        return status;
    default:
        break;
    }
    /* Upstream: create passes ALREADY_EXISTS and FAILED_PRECONDITION
     * through and turns anything else into INTERNAL. */
    if (kind == LC_CREATE)
        return status == GRPC_STATUS_ALREADY_EXISTS || status == GRPC_STATUS_FAILED_PRECONDITION
                   ? status
                   : GRPC_STATUS_INTERNAL;
    if (kind == LC_DELETE)
        return GRPC_STATUS_INTERNAL;
    return status; /* stop/start keep the driver's code */
}

/* ---- shared steps under the gate --------------------------------------------- */

/* Runs under the gate with the record just read (row 0 of |r|, also
 * parsed into op->row). */
typedef void (*lc_step)(struct lc_op *op, const struct store_result *r);

/* Reads the record by id under the gate into op->row; NOT_FOUND if gone,
 * ABORTED if it was renamed while we waited. */
static void locked_read_done(const struct store_result *r, void *arg);

static void on_gate(struct api *a, const char *id, void *arg)
{
    struct lc_op *op = arg;
    op->gate_held = true;
    const char *p[] = {op->id};
    api_store_run(a, &store_sb_get_by_id, p, NULL, locked_read_done, op);
}

static lc_step kind_locked[4];

static void locked_read_done(const struct store_result *r, void *arg)
{
    struct lc_op *op = arg;
    if (r->status != STORE_OK) {
        lc_fail_store(op, r, "sandbox");
        return;
    }
    if (store_ntuples(r) == 0) {
        lc_fail(op, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    api_sb_row_clear(&op->row);
    api_sb_row_parse(&op->row, r, 0);
    if (strcmp(op->row.name, op->name) != 0) {
        lc_fail(op, GRPC_STATUS_ABORTED, "sandbox was renamed while the %s waited",
                method_verb[op->kind]);
        return;
    }
    op->rv = op->row.rv;
    kind_locked[op->kind](op, r);
}

static void finish_not_found(struct grpc_call *call, void *arg)
{
    grpc_call_finish(call, GRPC_STATUS_NOT_FOUND, "sandbox not found");
}

/* Delete, stop and start, until the record is resolved: call-scoped. */
struct by_name {
    enum lc_kind kind;
    const char *name;
    const char *workspace;
};

/* Resolves (workspace, name) to an id; from here on the op is its own. */
static void resolved(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct by_name *bn = arg;
    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "sandbox");
        return;
    }
    if (store_ntuples(r) == 0) {
        /* The join hides a missing workspace: name it when that is why. */
        api_workspace_check_exists(call, bn->workspace, finish_not_found, NULL);
        return;
    }
    struct lc_op *op = lc_new(call, bn->kind);
    op->name = gw_xstrdup(bn->name);
    op->workspace = gw_xstrdup(bn->workspace);
    snprintf(op->id, sizeof(op->id), "%s", store_get(r, 0, STORE_SB_ID));
    api_gate_enter(op->a, op->id, on_gate, op);
}

static void by_name_authorized(struct grpc_call *call, void *arg)
{
    struct by_name *bn = arg;
    const char *p[] = {bn->workspace, bn->name};
    api_query(call, &store_sb_get_by_name, p, NULL, resolved, bn);
}

/* Common start of delete/stop/start: name required, authorize, resolve. */
static void by_name_start(struct grpc_call *call, enum lc_kind kind, const char *name,
                          const char *workspace)
{
    if (api_store_unavailable(call))
        return;
    if (name == NULL || name[0] == '\0') {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "name is required");
        return;
    }
    if (!driver_usable(call))
        return;
    struct by_name *bn = grpc_call_alloc(call, sizeof(*bn));
    bn->kind = kind;
    bn->name = name; /* the request lives in the call's arena */
    bn->workspace = api_workspace_name(workspace);
    api_workspace_authorize(call, bn->workspace, API_WS_ROLE_USER, by_name_authorized, bn);
}

/* Writes |phase| with the Ready condition (|cstatus|, |reason|, |message|)
 * over the current record, then runs |cb|. */
static void write_phase(struct lc_op *op, int phase, const char *cstatus, const char *reason,
                        const char *message, void (*cb)(const struct store_result *, void *))
{
    Openshell__V1__SandboxStatus *st =
        api_phase_status_with_ready(op->row.status, phase, cstatus, reason, message);
    api_sb_write(op->a, op->id, op->rv, phase, st, op->row.phase, op->actor, reason, cb, op);
    protobuf_c_message_free_unpacked(&st->base, NULL);
}

/* Puts the record back as it was before our first write (driver failure). */
static void restore_done(const struct store_result *r, void *arg)
{
    struct lc_op *op = arg;
    if (r->status != STORE_OK)
        log_warn("api.restore_failed", LF_STR("sandbox_id", op->id), LF_STR("error", r->error));
    lc_fail(op, op->fail_status, "%s", op->fail_message);
}

/* The driver refused or failed: the record goes back to what it was before
 * our first write, then the call fails with "<verb> sandbox failed: ...". */
static void driver_failed(struct lc_op *op, int status, const char *message)
{
    char msg[ERRLEN];
    snprintf(msg, sizeof(msg), "%s sandbox failed: %s", method_verb[op->kind],
             message ? message : "");
    op->fail_status = driver_failure_status(op->kind, status);
    op->fail_message = gw_xstrdup(msg);
    Openshell__V1__SandboxStatus empty = OPENSHELL__V1__SANDBOX_STATUS__INIT;
    const Openshell__V1__SandboxStatus *st = op->row.status != NULL ? op->row.status : &empty;
    api_sb_write(op->a, op->id, op->rv, op->row.phase, st, -1, op->actor, "driver call failed",
                 restore_done, op);
}

static bool wrote(struct lc_op *op, const struct store_result *r)
{
    if (r->status != STORE_OK) {
        if (r->status == STORE_ERR_QUERY && strstr(r->error, "conflict") != NULL)
            lc_fail(op, GRPC_STATUS_ABORTED, "sandbox was modified concurrently; retry");
        else
            lc_fail_store(op, r, "sandbox");
        return false;
    }
    op->rv = (uint64_t)store_get_i64(r, 0, STORE_SB_RV);
    return true;
}

static void driver_request(struct lc_op *op, enum driver_method m, driver_reply_cb cb)
{
    union {
        Openshell__Compute__V1__StopSandboxRequest stop;
        Openshell__Compute__V1__StartSandboxRequest start;
        Openshell__Compute__V1__DeleteSandboxRequest del;
    } u;
    const ProtobufCMessage *req;
    switch (m) {
    case DRIVER_STOP_SANDBOX:
        openshell__compute__v1__stop_sandbox_request__init(&u.stop);
        u.stop.sandbox_id = op->id;
        u.stop.sandbox_name = op->name;
        req = &u.stop.base;
        break;
    case DRIVER_START_SANDBOX:
        openshell__compute__v1__start_sandbox_request__init(&u.start);
        u.start.sandbox_id = op->id;
        u.start.sandbox_name = op->name;
        req = &u.start.base;
        break;
    default:
        openshell__compute__v1__delete_sandbox_request__init(&u.del);
        u.del.sandbox_id = op->id;
        u.del.sandbox_name = op->name;
        req = &u.del.base;
        break;
    }
    (void)driver_call(op->a->driver, m, req, op->driver_timeout_ms, cb, op);
}

/* ---- StopSandbox ------------------------------------------------------------------- */

static void stop_written(const struct store_result *r, void *arg)
{
    struct lc_op *op = arg;
    if (!wrote(op, r))
        return;
    lc_reply_row(op, r);
}

static void stop_driver_done(int status, const char *message, const ProtobufCMessage *resp,
                             void *arg)
{
    struct lc_op *op = arg;
    if (status != GRPC_STATUS_OK) {
        driver_failed(op, status, message);
        return;
    }
    /* The STOPPING row is the base of the STOPPED one. The supervisor is
     * gone with the backend; its session (if the stream lingers) too. */
    api_session_drop(op->a, op->id);
    op->row.phase = PHASE(STOPPING);
    write_phase(op, PHASE(STOPPED), "False", "Stopped", "Sandbox stopped", stop_written);
}

static void stopping_written(const struct store_result *r, void *arg)
{
    struct lc_op *op = arg;
    if (!wrote(op, r))
        return;
    driver_request(op, DRIVER_STOP_SANDBOX, stop_driver_done);
}

static void stop_locked(struct lc_op *op, const struct store_result *r)
{
    int ph = op->row.phase;
    if (ph == PHASE(STOPPED)) {
        lc_reply_row(op, r);
        return;
    }
    /* Upstream also requires READY; PROVISIONING is allowed here because
     * readiness needs a supervisor session, and a sandbox whose supervisor
     * never connects must still be stoppable (docs/api.md). */
    if (ph != PHASE(READY) && ph != PHASE(STOPPING) && ph != PHASE(PROVISIONING)) {
        lc_fail(op, GRPC_STATUS_FAILED_PRECONDITION,
                "sandbox must be Ready to stop (current phase: %s)", api_phase_name(ph));
        return;
    }
    write_phase(op, PHASE(STOPPING), "False", "Stopping", "Stopping sandbox", stopping_written);
}

static void stop_sandbox(struct grpc_call *call, void *msg)
{
    Openshell__V1__StopSandboxRequest *req = msg;
    by_name_start(call, LC_STOP, req->name, req->workspace);
}

/* ---- StartSandbox ------------------------------------------------------------------ */

static void start_reread(const struct store_result *r, void *arg)
{
    struct lc_op *op = arg;
    if (r->status != STORE_OK) {
        lc_fail_store(op, r, "sandbox");
        return;
    }
    if (store_ntuples(r) == 0) {
        lc_fail(op, GRPC_STATUS_NOT_FOUND, "sandbox not found");
        return;
    }
    lc_reply_row(op, r);
}

static void start_driver_done(int status, const char *message, const ProtobufCMessage *resp,
                              void *arg)
{
    struct lc_op *op = arg;
    if (status != GRPC_STATUS_OK) {
        driver_failed(op, status, message);
        return;
    }
    const char *p[] = {op->id};
    api_store_run(op->a, &store_sb_get_by_id, p, NULL, start_reread, op);
}

static void starting_written(const struct store_result *r, void *arg)
{
    struct lc_op *op = arg;
    if (!wrote(op, r))
        return;
    driver_request(op, DRIVER_START_SANDBOX, start_driver_done);
}

static void start_locked(struct lc_op *op, const struct store_result *r)
{
    int ph = op->row.phase;
    if (ph == PHASE(READY)) {
        lc_reply_row(op, r);
        return;
    }
    if (ph != PHASE(STOPPED) && ph != PHASE(STARTING)) {
        lc_fail(op, GRPC_STATUS_FAILED_PRECONDITION,
                "sandbox must be Stopped to start (current phase: %s)", api_phase_name(ph));
        return;
    }
    write_phase(op, PHASE(STARTING), "False", "Starting", "Starting sandbox", starting_written);
}

static void start_sandbox(struct grpc_call *call, void *msg)
{
    Openshell__V1__StartSandboxRequest *req = msg;
    by_name_start(call, LC_START, req->name, req->workspace);
}

/* ---- DeleteSandbox ------------------------------------------------------------------ */

static void reply_deleted(struct lc_op *op, bool deleted)
{
    if (op->det.call != NULL) {
        Openshell__V1__DeleteSandboxResponse resp = OPENSHELL__V1__DELETE_SANDBOX_RESPONSE__INIT;
        resp.deleted = deleted;
        grpc_call_reply(op->det.call, &resp.base);
        op->det.call = NULL;
    }
    lc_done(op);
}

static void delete_removed(const struct store_result *r, void *arg)
{
    struct lc_op *op = arg;
    if (r->status != STORE_OK) {
        lc_fail_store(op, r, "sandbox");
        return;
    }
    api_logs_drop(op->a, op->id);
    reply_deleted(op, false);
}

static void delete_driver_done(int status, const char *message, const ProtobufCMessage *resp,
                               void *arg)
{
    struct lc_op *op = arg;
    if (status != GRPC_STATUS_OK) {
        driver_failed(op, status, message);
        return;
    }
    const Openshell__Compute__V1__DeleteSandboxResponse *d = (const void *)resp;
    if (d->deleted) {
        /* The row stays DELETING until the driver's watch reports the
         * deletion (or reconciliation finds it gone). */
        reply_deleted(op, true);
        return;
    }
    /* Nothing was on the platform: the record goes now. */
    const char *p[] = {op->id, op->actor, "deleted; nothing on the platform"};
    api_store_run(op->a, &store_sb_delete, p, NULL, delete_removed, op);
}

static void deleting_written(const struct store_result *r, void *arg)
{
    struct lc_op *op = arg;
    if (!wrote(op, r))
        return;
    driver_request(op, DRIVER_DELETE_SANDBOX, delete_driver_done);
}

static void delete_locked(struct lc_op *op, const struct store_result *r)
{
    if (op->row.phase == PHASE(DELETING)) {
        reply_deleted(op, true);
        return;
    }
    api_session_drop(op->a, op->id);
    write_phase(op, PHASE(DELETING), "False", "Deleting", "Deleting sandbox", deleting_written);
}

static void delete_sandbox(struct grpc_call *call, void *msg)
{
    Openshell__V1__DeleteSandboxRequest *req = msg;
    by_name_start(call, LC_DELETE, req->name, req->workspace);
}

/* ---- CreateSandbox ------------------------------------------------------------------ */

static char *json_take(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s != NULL ? s : gw_xstrdup("{}");
}

static char *labels_json(const Openshell__V1__CreateSandboxRequest *req)
{
    json_t *o = json_object();
    for (size_t i = 0; i < req->n_labels; i++)
        json_object_set_new(o, req->labels[i]->key, json_string(req->labels[i]->value));
    return json_take(o);
}

static char *annotations_json(const Openshell__V1__CreateSandboxRequest *req)
{
    json_t *o = json_object();
    for (size_t i = 0; i < req->n_annotations; i++)
        json_object_set_new(o, req->annotations[i]->key, json_string(req->annotations[i]->value));
    return json_take(o);
}

/* Replies with the record as persisted: the gate was held since, so no
 * observation changed it. */
static void create_reply(struct lc_op *op)
{
    log_info("api.sandbox_created", LF_STR("sandbox_id", op->id), LF_STR("name", op->name),
             LF_STR("workspace", op->workspace), LF_STR("owner", op->actor));
    if (op->det.call != NULL && op->reply != NULL) {
        Openshell__V1__SandboxResponse *resp =
            openshell__v1__sandbox_response__unpack(NULL, op->reply_len, op->reply);
        if (resp != NULL) {
            grpc_call_reply(op->det.call, &resp->base);
            protobuf_c_message_free_unpacked(&resp->base, NULL);
        } else { /* cannot happen for a spec that passed validation */
            grpc_call_finishf(op->det.call, GRPC_STATUS_INTERNAL,
                              "sandbox '%s' was created but its record does not encode; use "
                              "GetSandbox",
                              op->name);
        }
        op->det.call = NULL;
    }
    lc_done(op);
}

static void create_cleanup_driver_done(int status, const char *message,
                                       const ProtobufCMessage *resp, void *arg)
{
    char *id = arg;
    log_info("api.create_cleanup", LF_STR("sandbox_id", id),
             LF_STR("driver_delete", grpc_status_name(status)));
    free(id);
}

static void create_row_removed(const struct store_result *r, void *arg)
{
    struct lc_op *op = arg;
    if (r->status != STORE_OK)
        log_error("api.create_cleanup_failed", LF_STR("sandbox_id", op->id),
                  LF_STR("error", r->error),
                  LF_STR("note", "reconciliation marks the record once the driver reports"));
    else
        api_logs_drop(op->a, op->id);
    lc_fail(op, op->fail_status, "%s", op->fail_message);
}

static void create_driver_done(int status, const char *message, const ProtobufCMessage *resp,
                               void *arg)
{
    struct lc_op *op = arg;
    if (status == GRPC_STATUS_OK) {
        create_reply(op);
        return;
    }
    /* Nothing half created: the record goes, and when the driver may have
     * made something before failing, it is asked to remove it (a driver
     * that is gone is reconciled when it is back: an owned object without
     * a record is deleted then). */
    char msg[ERRLEN];
    int st = driver_failure_status(LC_CREATE, status);
    if (st == GRPC_STATUS_INTERNAL)
        snprintf(msg, sizeof(msg), "create sandbox failed: %s", message ? message : "");
    else
        snprintf(msg, sizeof(msg), "%s", message ? message : "create sandbox failed");
    op->fail_status = st;
    op->fail_message = gw_xstrdup(msg);
    log_warn("api.create_failed", LF_STR("sandbox_id", op->id), LF_STR("name", op->name),
             LF_STR("status", grpc_status_name(status)), LF_STR("message", message ? message : ""));
    if (status != GRPC_STATUS_ALREADY_EXISTS && status != GRPC_STATUS_INVALID_ARGUMENT &&
        status != GRPC_STATUS_FAILED_PRECONDITION && driver_state(op->a->driver) == DRIVER_READY) {
        Openshell__Compute__V1__DeleteSandboxRequest dr =
            OPENSHELL__COMPUTE__V1__DELETE_SANDBOX_REQUEST__INIT;
        dr.sandbox_id = op->id;
        dr.sandbox_name = op->name;
        (void)driver_call(op->a->driver, DRIVER_DELETE_SANDBOX, &dr.base, 0,
                          create_cleanup_driver_done, gw_xstrdup(op->id));
    }
    char reason[ERRLEN + 32];
    snprintf(reason, sizeof(reason), "create failed: %s", msg);
    const char *p[] = {op->id, op->actor, reason};
    api_store_run(op->a, &store_sb_delete, p, NULL, create_row_removed, op);
}

static void create_persisted(const struct store_result *r, void *arg)
{
    struct lc_op *op = arg;
    if (r->status != STORE_OK) {
        if (store_is_unique_violation(r)) {
            lc_fail(op, GRPC_STATUS_ALREADY_EXISTS, "sandbox '%s' already exists", op->name);
        } else if (store_is_raise_exception(r) && strstr(r->error, "workspace_not_found")) {
            lc_fail(op, GRPC_STATUS_NOT_FOUND, "workspace '%s' not found", op->workspace);
        } else if (store_is_raise_exception(r) && strstr(r->error, "workspace_terminating")) {
            lc_fail(op, GRPC_STATUS_FAILED_PRECONDITION, "workspace '%s' is terminating",
                    op->workspace);
        } else {
            lc_fail_store(op, r, "sandbox");
        }
        return;
    }
    if (op->det.call != NULL) {
        /* The reply, built now: the row is only readable in this callback. */
        Openshell__V1__SandboxResponse resp = OPENSHELL__V1__SANDBOX_RESPONSE__INIT;
        grpc_call_scratch_begin(op->det.call);
        resp.sandbox = api_sandbox_from_row(op->det.call, r, 0);
        op->reply_len = protobuf_c_message_get_packed_size(&resp.base);
        op->reply = gw_xmalloc(op->reply_len ? op->reply_len : 1);
        protobuf_c_message_pack(&resp.base, op->reply);
        api_sandbox_free_unpacked(resp.sandbox);
        grpc_call_scratch_end(op->det.call);
    }
    /* The driver gets the spec with the sandbox token (minted here once
     * the gateway has a signing key: the supervisor issue). */
    Openshell__Compute__V1__CreateSandboxRequest req =
        OPENSHELL__COMPUTE__V1__CREATE_SANDBOX_REQUEST__INIT;
    req.sandbox = openshell__compute__v1__driver_sandbox__unpack(NULL, op->dsb_len, op->dsb);
    if (req.sandbox == NULL) { /* cannot happen for a spec that passed validation */
        create_driver_done(GRPC_STATUS_INTERNAL, "driver sandbox does not encode", NULL, op);
        return;
    }
    (void)driver_call(op->a->driver, DRIVER_CREATE_SANDBOX, &req.base, op->driver_timeout_ms,
                      create_driver_done, op);
    protobuf_c_message_free_unpacked(&req.sandbox->base, NULL);
}

static void create_locked(struct api *a, const char *id, void *arg)
{
    struct lc_op *op = arg;
    op->gate_held = true;
    Openshell__V1__SandboxStatus st = OPENSHELL__V1__SANDBOX_STATUS__INIT;
    st.phase = PHASE(PROVISIONING);
    st.sandbox_name = op->name;
    size_t st_len = protobuf_c_message_get_packed_size(&st.base);
    uint8_t *st_bytes = gw_xmalloc(st_len ? st_len : 1);
    protobuf_c_message_pack(&st.base, st_bytes);
    const char *p[12] = {op->id,
                         op->workspace,
                         op->name,
                         op->actor,
                         op->actor,
                         op->labels_json,
                         op->annotations_json,
                         (const char *)op->spec,
                         op->spec_json,
                         driver_name(a->driver),
                         "PROVISIONING",
                         (const char *)st_bytes};
    int lens[12] = {-1, -1, -1, -1, -1, -1, -1, (int)op->spec_len, -1, -1, -1, (int)st_len};
    api_store_run(a, &store_sb_create, p, lens, create_persisted, op);
    free(st_bytes); /* the store copied the parameters */
}

static void create_validated(int status, const char *message, const ProtobufCMessage *resp,
                             void *arg)
{
    struct lc_op *op = arg;
    if (status != GRPC_STATUS_OK) {
        /* ValidateSandboxCreate errors reach the caller unchanged. */
        lc_fail(op, status, "%s", message ? message : "");
        return;
    }
    api_gate_enter(op->a, op->id, create_locked, op);
}

struct create_state {
    Openshell__V1__CreateSandboxRequest *req;
    const char *workspace;
    char name[24];
};

static void create_ws_checked(struct grpc_call *call, const struct store_result *r, void *arg)
{
    struct create_state *cs = arg;
    struct api *a = grpc_call_method_arg(call);
    Openshell__V1__CreateSandboxRequest *req = cs->req;
    char err[ERRLEN];
    char id[37];

    if (r->status != STORE_OK) {
        api_finish_store_error(call, r, "workspace");
        return;
    }
    if (store_ntuples(r) == 0) {
        api_finish_workspace_not_found(call, cs->workspace);
        return;
    }
    if (strcmp(store_get(r, 0, STORE_WS_PHASE), "ACTIVE") != 0) {
        grpc_call_finishf(call, GRPC_STATUS_FAILED_PRECONDITION, "workspace '%s' is terminating",
                          cs->workspace);
        return;
    }
    if (!driver_usable(call))
        return;
    /* The persisted spec names the image the driver will boot. */
    Openshell__V1__SandboxSpec *spec = req->spec;
    if (spec->template_ == NULL) {
        spec->template_ = grpc_call_alloc(call, sizeof(*spec->template_));
        openshell__v1__sandbox_template__init(spec->template_);
    }
    if (spec->template_->image == NULL || spec->template_->image[0] == '\0')
        spec->template_->image = grpc_call_strdup(call, driver_default_image(a->driver));

    gw_uuid4(id);
    Openshell__Compute__V1__DriverSandbox *dsb = NULL;
    int st = api_spec_to_driver(call, id, cs->name, cs->workspace, spec, driver_name(a->driver),
                                driver_default_image(a->driver), &dsb, err, sizeof(err));
    if (st != GRPC_STATUS_OK) {
        grpc_call_finish(call, st, err);
        return;
    }
    /* The sandbox's identity: the supervisor authenticates with it. */
    uint64_t exp;
    char *token = api_sandbox_token_mint(a, id, &exp);
    if (token != NULL) {
        dsb->spec->sandbox_token = grpc_call_strdup(call, token);
        explicit_bzero(token, strlen(token));
        free(token);
    }
    struct lc_op *op = lc_new(call, LC_CREATE);
    snprintf(op->id, sizeof(op->id), "%s", id);
    op->name = gw_xstrdup(cs->name);
    op->workspace = gw_xstrdup(cs->workspace);
    op->spec_len = protobuf_c_message_get_packed_size(&spec->base);
    op->spec = gw_xmalloc(op->spec_len ? op->spec_len : 1);
    protobuf_c_message_pack(&spec->base, op->spec);
    op->spec_json = pbjson_dumps(&spec->base, PBJSON_SORT_KEYS);
    op->dsb_len = protobuf_c_message_get_packed_size(&dsb->base);
    op->dsb = gw_xmalloc(op->dsb_len ? op->dsb_len : 1);
    protobuf_c_message_pack(&dsb->base, op->dsb);
    op->labels_json = labels_json(req);
    op->annotations_json = annotations_json(req);

    Openshell__Compute__V1__ValidateSandboxCreateRequest vr =
        OPENSHELL__COMPUTE__V1__VALIDATE_SANDBOX_CREATE_REQUEST__INIT;
    vr.sandbox = dsb;
    (void)driver_call(a->driver, DRIVER_VALIDATE_SANDBOX_CREATE, &vr.base, op->driver_timeout_ms,
                      create_validated, op);
}

static void create_authorized(struct grpc_call *call, void *arg)
{
    struct create_state *cs = arg;
    const char *p[] = {cs->workspace};
    api_query(call, &store_ws_get, p, NULL, create_ws_checked, cs);
}

static void create_sandbox(struct grpc_call *call, void *msg)
{
    Openshell__V1__CreateSandboxRequest *req = msg;
    char err[ERRLEN];

    if (api_store_unavailable(call))
        return;
    if (api_spec_validate(call, req, err, sizeof(err)) != GRPC_STATUS_OK) {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, err);
        return;
    }
    if (!driver_usable(call))
        return;
    struct create_state *cs = grpc_call_alloc(call, sizeof(*cs));
    cs->req = req;
    cs->workspace = api_workspace_name(req->workspace);
    if (req->name != NULL && req->name[0] != '\0')
        snprintf(cs->name, sizeof(cs->name), "%s", req->name);
    else
        api_spec_generate_name(cs->name, sizeof(cs->name));
    api_workspace_authorize(call, cs->workspace, API_WS_ROLE_USER, create_authorized, cs);
}

/* ---- registration -------------------------------------------------------------- */

static lc_step kind_locked[4] = {
    [LC_CREATE] = NULL, /* create holds the gate from create_locked */
    [LC_DELETE] = delete_locked,
    [LC_STOP] = stop_locked,
    [LC_START] = start_locked,
};

static const struct grpc_handler create_h = {.on_message = create_sandbox,
                                             .on_cancel = api_detached_cancel};
static const struct grpc_handler delete_h = {.on_message = delete_sandbox,
                                             .on_cancel = api_detached_cancel};
static const struct grpc_handler stop_h = {.on_message = stop_sandbox,
                                           .on_cancel = api_detached_cancel};
static const struct grpc_handler start_h = {.on_message = start_sandbox,
                                            .on_cancel = api_detached_cancel};

const struct grpc_method api_lifecycle_methods[] = {
    {"/openshell.v1.OpenShell/CreateSandbox", GRPC_UNARY,
     &openshell__v1__create_sandbox_request__descriptor,
     &openshell__v1__sandbox_response__descriptor, &create_h, NULL, API_AUTH_BEARER},
    {"/openshell.v1.OpenShell/DeleteSandbox", GRPC_UNARY,
     &openshell__v1__delete_sandbox_request__descriptor,
     &openshell__v1__delete_sandbox_response__descriptor, &delete_h, NULL, API_AUTH_BEARER},
    {"/openshell.v1.OpenShell/StopSandbox", GRPC_UNARY,
     &openshell__v1__stop_sandbox_request__descriptor, &openshell__v1__sandbox_response__descriptor,
     &stop_h, NULL, API_AUTH_BEARER},
    {"/openshell.v1.OpenShell/StartSandbox", GRPC_UNARY,
     &openshell__v1__start_sandbox_request__descriptor,
     &openshell__v1__sandbox_response__descriptor, &start_h, NULL, API_AUTH_BEARER},
    {.path = NULL},
};
