/* openshell.v1 ExecSandbox and ExecSandboxInteractive (semantics.md §12).
 *
 * The request is checked and turned into the remote command string (pure
 * functions, unit-tested), the sandbox must be visible and READY
 * (api_sandbox_require_ready), then api_ssh runs the command over a relay
 * and its output becomes ExecSandboxEvent messages, held back while the
 * client does not read (the SSH window then stops the command).
 *
 * Until the READY lookup answered, the call's user pointer belongs to
 * api_query and the request lives in the call arena; from then on an exec
 * object on the heap is attached to the call (api_detach, so that on_cancel
 * finds it while a query may still be in flight) and is its user pointer. */
#include "api/api.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "openshell.pb-c.h"

#define ERRLEN            512
#define TIMEOUT_EXIT_CODE 124
#define DEFAULT_COLS      80
#define DEFAULT_ROWS      24
#define PYFUNC_KEY        "OPENSHELL_PYFUNC_B64" /* the Python SDK's exec-python payload */
#define SHELL_SAFE        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789./_-"

typedef Openshell__V1__ExecSandboxRequest exec_req;

/* ---- messages -------------------------------------------------------------------------- */

#define Q(s) API_QUOTE(s)

/* ---- validation -------------------------------------------------------------------------- */

static bool env_key_valid(const char *k)
{
    if (!((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') || *k == '_'))
        return false;
    for (k++; *k != '\0'; k++)
        if (!((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') || (*k >= '0' && *k <= '9') ||
              *k == '_'))
            return false;
    return true;
}

static int check_env_keys(const exec_req *req, char *err, size_t errlen)
{
    for (size_t i = 0; i < req->n_environment; i++) {
        const char *k = req->environment[i]->key;
        if (!env_key_valid(k))
            return api_invalid(err, errlen,
                               "environment keys must match ^[A-Za-z_][A-Za-z0-9_]*$; got '%s'",
                               Q(k));
        if (strncmp(k, "OPENSHELL_", 10) == 0 && strcmp(k, PYFUNC_KEY) != 0)
            return api_invalid(err, errlen,
                               "environment keys starting with OPENSHELL_ are reserved; got '%s'",
                               Q(k));
    }
    return GRPC_STATUS_OK;
}

static int check_args(const exec_req *req, char *err, size_t errlen)
{
    if (req->n_command > API_EXEC_ARGS_MAX)
        return api_invalid(err, errlen, "command array exceeds %d argument limit",
                           API_EXEC_ARGS_MAX);
    for (size_t i = 0; i < req->n_command; i++)
        if (strlen(req->command[i]) > API_EXEC_ARG_MAX)
            return api_invalid(err, errlen, "command argument %zu exceeds %d byte limit", i,
                               API_EXEC_ARG_MAX);
    return GRPC_STATUS_OK;
}

static int check_env_values(const exec_req *req, char *err, size_t errlen)
{
    for (size_t i = 0; i < req->n_environment; i++) {
        const char *k = req->environment[i]->key, *v = req->environment[i]->value;
        if (strlen(v) > API_EXEC_ARG_MAX)
            return api_invalid(err, errlen, "environment value for '%s' exceeds %d byte limit",
                               Q(k), API_EXEC_ARG_MAX);
        if (strpbrk(v, "\r\n") != NULL)
            return api_invalid(err, errlen,
                               "environment value for '%s' contains newline or carriage return "
                               "characters",
                               Q(k));
    }
    return GRPC_STATUS_OK;
}

static int check_workdir(const exec_req *req, char *err, size_t errlen)
{
    if (strlen(req->workdir) > API_EXEC_WORKDIR_MAX)
        return api_invalid(err, errlen, "workdir exceeds %d byte limit", API_EXEC_WORKDIR_MAX);
    if (strpbrk(req->workdir, "\r\n") != NULL)
        return api_invalid(err, errlen, "workdir contains newline or carriage return characters");
    return GRPC_STATUS_OK;
}

int api_exec_validate(const exec_req *req, char *err, size_t errlen)
{
    int rc;
    if (req->sandbox_id[0] == '\0')
        return api_invalid(err, errlen, "sandbox_id is required");
    if (req->n_command == 0)
        return api_invalid(err, errlen, "command is required");
    if ((rc = check_env_keys(req, err, errlen)) != GRPC_STATUS_OK ||
        (rc = check_args(req, err, errlen)) != GRPC_STATUS_OK ||
        (rc = check_env_values(req, err, errlen)) != GRPC_STATUS_OK ||
        (rc = check_workdir(req, err, errlen)) != GRPC_STATUS_OK)
        return rc;
    struct gw_buf cmd = {0};
    rc = api_exec_command_build(req, &cmd);
    gw_buf_free(&cmd);
    if (rc != 0)
        return api_invalid(err, errlen,
                           "command construction failed: assembled command string exceeds %d byte "
                           "limit",
                           API_EXEC_COMMAND_MAX);
    return GRPC_STATUS_OK;
}

/* ---- the remote command string ----------------------------------------------------------- */

void api_exec_shell_escape(struct gw_buf *out, const char *s)
{
    size_t n = strlen(s);
    if (n == 0) {
        gw_buf_append(out, "''", 2);
        return;
    }
    if (strspn(s, SHELL_SAFE) == n) {
        gw_buf_append(out, s, n);
        return;
    }
    gw_buf_append(out, "'", 1);
    for (;;) {
        size_t run = strcspn(s, "'");
        gw_buf_append(out, s, run);
        s += run;
        if (*s == '\0')
            break;
        gw_buf_append(out, "'\"'\"'", 5);
        s++;
    }
    gw_buf_append(out, "'", 1);
}

static int cmp_entry(const void *x, const void *y)
{
    const Openshell__V1__ExecSandboxRequest__EnvironmentEntry *const *a = x, *const *b = y;
    int c = strcmp((*a)->key, (*b)->key);
    if (c != 0)
        return c;
    return *a < *b ? -1 : *a > *b; /* keep wire order among equal keys (see below) */
}

/* Appends |s| then checks the limit. */
static int add_part(struct gw_buf *out, const char *key, const char *value, bool escape)
{
    if (out->len > 0)
        gw_buf_append(out, " ", 1);
    if (key != NULL) {
        gw_buf_append(out, key, strlen(key));
        gw_buf_append(out, "=", 1);
    }
    if (escape)
        api_exec_shell_escape(out, value);
    else
        gw_buf_append(out, value, strlen(value));
    return out->len > API_EXEC_COMMAND_MAX ? -1 : 0;
}

int api_exec_command_build(const exec_req *req, struct gw_buf *out)
{
    size_t start = out->len;
    struct gw_buf body = {0};
    int rc = 0;
    size_t n = req->n_environment;
    /* Sorted by key; entries of one key stay in wire order (qsort is not
     * stable, hence the pointer tie-break over an array laid out in wire
     * order), and the last one wins. */
    Openshell__V1__ExecSandboxRequest__EnvironmentEntry **env = NULL;
    if (n > 0) {
        env = gw_xmalloc(n * sizeof(*env));
        Openshell__V1__ExecSandboxRequest__EnvironmentEntry *copy = gw_xmalloc(n * sizeof(*copy));
        for (size_t i = 0; i < n; i++) {
            copy[i] = *req->environment[i];
            env[i] = &copy[i];
        }
        qsort(env, n, sizeof(*env), cmp_entry);
        for (size_t i = 0; i < n && rc == 0; i++) {
            if (i + 1 < n && strcmp(env[i]->key, env[i + 1]->key) == 0)
                continue;
            rc = add_part(&body, env[i]->key, env[i]->value, true);
        }
        free(copy);
        free(env);
    }
    for (size_t i = 0; i < req->n_command && rc == 0; i++)
        rc = add_part(&body, NULL, req->command[i], true);
    if (rc == 0 && req->workdir[0] != '\0') {
        gw_buf_append(out, "cd ", 3);
        api_exec_shell_escape(out, req->workdir);
        gw_buf_append(out, " && ", 4);
    }
    if (rc == 0)
        gw_buf_append(out, body.data, body.len);
    gw_buf_free(&body);
    if (rc == 0 && out->len - start > API_EXEC_COMMAND_MAX)
        rc = -1;
    return rc;
}

/* ---- one exec ------------------------------------------------------------------------------ */

/* What the READY lookup carries (call arena: dies with the call). */
struct exec_start {
    bool interactive;
    bool tty;
    uint32_t cols, rows;
    uint32_t timeout_secs;
    const char *sandbox_id;
    const char *command;
    const uint8_t *stdin_data; /* unary: the request's bytes, valid until the call ends */
    size_t stdin_len;
};

struct exec {
    struct api_detached det; /* det.call: the call, NULL once it ended */
    struct api *a;
    struct api_ssh *ssh;
    bool interactive;
    bool recv_paused; /* input is paused until on_input_drained */
    char sandbox_id[40];
    uint64_t t0_us;
    uint64_t out_bytes;
};

static void exec_free(struct exec *ex)
{
    api_ssh_free(ex->ssh);
    api_detach_end(ex->a, &ex->det);
    free(ex);
}

static void log_end(struct exec *ex, const char *outcome, int status, int exit_code)
{
    log_info("exec.end", LF_STR("sandbox_id", ex->sandbox_id), LF_STR("outcome", outcome),
             LF_STR("status", grpc_status_name(status)), LF_INT("exit_code", exit_code),
             LF_UINT("out_bytes", ex->out_bytes),
             LF_DBL("dur_ms", (double)(gw_clock_mono_us() - ex->t0_us) / 1000.0));
}

/* The call is over (finished, overrun or cancelled; it is not touched
 * again): end the exec. */
static void exec_done(struct exec *ex)
{
    ex->det.call = NULL;
    exec_free(ex);
}

static struct exec *exec_of(struct api_detached *d)
{
    return (struct exec *)((char *)d - offsetof(struct exec, det));
}

static bool ssh_output(struct api_ssh *s, bool is_stderr, const uint8_t *data, size_t len,
                       void *arg)
{
    struct exec *ex = arg;
    (void)s;
    Openshell__V1__ExecSandboxEvent ev = OPENSHELL__V1__EXEC_SANDBOX_EVENT__INIT;
    Openshell__V1__ExecSandboxStdout out = OPENSHELL__V1__EXEC_SANDBOX_STDOUT__INIT;
    Openshell__V1__ExecSandboxStderr err = OPENSHELL__V1__EXEC_SANDBOX_STDERR__INIT;
    if (is_stderr) {
        err.data.data = (uint8_t *)data;
        err.data.len = len;
        ev.payload_case = OPENSHELL__V1__EXEC_SANDBOX_EVENT__PAYLOAD_STDERR;
        ev.stderr = &err;
    } else {
        out.data.data = (uint8_t *)data;
        out.data.len = len;
        ev.payload_case = OPENSHELL__V1__EXEC_SANDBOX_EVENT__PAYLOAD_STDOUT;
        ev.stdout = &out;
    }
    ex->out_bytes += len;
    int rv = grpc_call_send(ex->det.call, &ev.base);
    if (rv < 0) {
        /* Overrun: the gRPC layer finished the call already. */
        log_end(ex, "send_failed", GRPC_STATUS_RESOURCE_EXHAUSTED, -1);
        exec_done(ex);
        return false;
    }
    return rv == GRPC_SEND_OK;
}

static void ssh_input_drained(struct api_ssh *s, void *arg)
{
    struct exec *ex = arg;
    (void)s;
    if (ex->recv_paused && ex->det.call != NULL) {
        ex->recv_paused = false;
        grpc_call_pause_recv(ex->det.call, false); /* may deliver input right here */
    }
}

static void send_exit(struct grpc_call *call, int32_t code)
{
    Openshell__V1__ExecSandboxEvent ev = OPENSHELL__V1__EXEC_SANDBOX_EVENT__INIT;
    Openshell__V1__ExecSandboxExit ex = OPENSHELL__V1__EXEC_SANDBOX_EXIT__INIT;
    ex.exit_code = code;
    ev.payload_case = OPENSHELL__V1__EXEC_SANDBOX_EVENT__PAYLOAD_EXIT;
    ev.exit = &ex;
    if (grpc_call_send(call, &ev.base) >= 0)
        grpc_call_finish(call, GRPC_STATUS_OK, NULL);
}

static void ssh_end(struct api_ssh *s, const struct api_ssh_result *res, void *arg)
{
    struct exec *ex = arg;
    struct grpc_call *call = ex->det.call;
    (void)s;
    switch (res->end) {
    case API_SSH_EXITED:
        log_end(ex, "exited", GRPC_STATUS_OK, res->exit_code);
        send_exit(call, res->exit_code);
        break;
    case API_SSH_TIMED_OUT:
        log_end(ex, "timed_out", GRPC_STATUS_OK, TIMEOUT_EXIT_CODE);
        send_exit(call, TIMEOUT_EXIT_CODE);
        break;
    default:
        log_end(ex, "failed", res->status, -1);
        log_debug("exec.failed", LF_STR("sandbox_id", ex->sandbox_id),
                  LF_STR("message", res->message));
        grpc_call_finish(call, res->status, res->message);
        break;
    }
    exec_done(ex);
}

static const struct api_ssh_ops exec_ssh_ops = {
    .on_output = ssh_output,
    .on_input_drained = ssh_input_drained,
    .on_end = ssh_end,
};

/* The sandbox is READY: start the SSH exchange. */
static void exec_ready(struct grpc_call *call, const struct api_sb_row *row, void *state)
{
    struct exec_start *st = state;
    struct api *a = grpc_call_method_arg(call);
    struct api_ssh_params p = {
        .sandbox_id = row->id,
        .command = st->command,
        .tty = st->tty,
        .cols = st->cols,
        .rows = st->rows,
        .timeout_secs = st->timeout_secs,
    };
    int status = GRPC_STATUS_INTERNAL;
    const char *msg = "exec failed";
    struct exec *ex = gw_xcalloc(1, sizeof(*ex));
    ex->a = a;
    ex->interactive = st->interactive;
    ex->t0_us = gw_clock_mono_us();
    snprintf(ex->sandbox_id, sizeof(ex->sandbox_id), "%s", row->id);
    ex->ssh = api_ssh_start(a, &p, &exec_ssh_ops, ex, &status, &msg);
    if (ex->ssh == NULL) {
        log_info("exec.refused", LF_STR("sandbox_id", ex->sandbox_id),
                 LF_STR("status", grpc_status_name(status)), LF_STR("message", msg));
        free(ex);
        grpc_call_finish(call, status, msg);
        return;
    }
    api_detach(call, &ex->det);
    grpc_call_set_user(call, ex);
    log_info("exec.start", LF_STR("sandbox_id", ex->sandbox_id),
             LF_BOOL("interactive", st->interactive), LF_BOOL("tty", st->tty),
             LF_UINT("command_len", strlen(st->command)), LF_UINT("timeout_s", st->timeout_secs));
    if (!st->interactive) {
        if (st->stdin_len > 0)
            (void)api_ssh_write(ex->ssh, st->stdin_data, st->stdin_len);
        api_ssh_close_input(ex->ssh, false);
        return;
    }
    /* Input held back during the lookup flows now; this may deliver it
     * (and even end the call) right here, so nothing may follow. */
    grpc_call_pause_recv(call, false);
}

/* Checks |req|, keeps what the exec needs in the call arena, and looks the
 * sandbox up. |req| is borrowed until this returns. */
static void exec_begin(struct grpc_call *call, const exec_req *req, bool interactive)
{
    char err[ERRLEN];
    if (api_exec_validate(req, err, sizeof(err)) != GRPC_STATUS_OK) {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, err);
        return;
    }
    struct gw_buf cmd = {0};
    if (api_exec_command_build(req, &cmd) != 0) { /* validated above */
        gw_buf_free(&cmd);
        grpc_call_finish(call, GRPC_STATUS_INTERNAL, "command construction failed");
        return;
    }
    struct exec_start *st = grpc_call_alloc(call, sizeof(*st));
    memset(st, 0, sizeof(*st));
    st->interactive = interactive;
    st->tty = req->tty;
    st->timeout_secs = req->timeout_seconds;
    st->sandbox_id = grpc_call_strdup(call, req->sandbox_id);
    st->command = grpc_call_strdup(call, gw_buf_cstr(&cmd));
    gw_buf_free(&cmd);
    if (interactive) {
        st->cols = req->cols != 0 ? req->cols : DEFAULT_COLS;
        st->rows = req->rows != 0 ? req->rows : DEFAULT_ROWS;
        /* Later input waits until the exec exists. */
        grpc_call_pause_recv(call, true);
    } else {
        st->stdin_data = req->stdin.data;
        st->stdin_len = req->stdin.len;
    }
    api_sandbox_require_ready(call, st->sandbox_id, exec_ready, st);
}

/* ---- handlers ---------------------------------------------------------------------------- */

/* protobuf-c ends a string at its first NUL byte, so an argument like
 * "a\0b" would silently run as "a" (semantics §12 wants INVALID_ARGUMENT).
 * What was dropped shows as a packed size below the wire size. Map entries
 * are the one legitimate difference: encoders differ on writing an empty
 * key or value (2 bytes each), which protobuf-c leaves out. */
static bool lossy_request(struct grpc_call *call, const ProtobufCMessage *m, const exec_req *req)
{
    size_t wire = grpc_call_msg_wire_len(call);
    size_t packed = protobuf_c_message_get_packed_size(m);
    size_t slack = 0;
    for (size_t i = 0; i < req->n_environment; i++)
        slack +=
            2 * ((req->environment[i]->key[0] == '\0') + (req->environment[i]->value[0] == '\0'));
    if (wire == 0 || (wire >= packed && wire <= packed + slack))
        return false;
    grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT,
                     "the request has a NUL byte in a string (command arguments, environment "
                     "and workdir must not contain NUL) or is not canonically encoded");
    return true;
}

static void exec_unary_message(struct grpc_call *call, void *msg)
{
    if (lossy_request(call, msg, msg))
        return;
    exec_begin(call, msg, false);
}

static void exec_input_message(struct grpc_call *call, void *msg)
{
    const Openshell__V1__ExecSandboxInput *in = msg;
    struct exec *ex = grpc_call_user(call);
    if (ex == NULL) {
        if (in->payload_case != OPENSHELL__V1__EXEC_SANDBOX_INPUT__PAYLOAD_START ||
            in->start == NULL) {
            grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT,
                             "first message must be a start payload");
            return;
        }
        if (lossy_request(call, &in->base, in->start))
            return;
        exec_begin(call, in->start, true);
        return;
    }
    switch (in->payload_case) {
    case OPENSHELL__V1__EXEC_SANDBOX_INPUT__PAYLOAD_STDIN:
        if (in->stdin.len > 0 &&
            api_ssh_write(ex->ssh, in->stdin.data, in->stdin.len) == API_SSH_FULL) {
            ex->recv_paused = true;
            grpc_call_pause_recv(call, true);
        }
        break;
    case OPENSHELL__V1__EXEC_SANDBOX_INPUT__PAYLOAD_RESIZE:
        if (in->resize != NULL)
            api_ssh_resize(ex->ssh, in->resize->cols, in->resize->rows);
        break;
    default:
        break; /* further start messages are ignored */
    }
}

static void exec_input_half_close(struct grpc_call *call)
{
    struct exec *ex = grpc_call_user(call);
    if (ex == NULL) {
        grpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT,
                         "empty stream: expected start message");
        return;
    }
    api_ssh_close_input(ex->ssh, true);
}

static void exec_writable(struct grpc_call *call)
{
    struct exec *ex = grpc_call_user(call);
    if (ex != NULL)
        api_ssh_resume_output(ex->ssh);
}

/* The client went away (reset, deadline, shutdown): end the exec, or the
 * READY lookup when the exec does not exist yet. */
static void exec_cancel(struct grpc_call *call)
{
    struct api *a = grpc_call_method_arg(call);
    for (struct api_detached *d = a->detached; d != NULL; d = d->next) {
        if (d->call == call) {
            struct exec *ex = exec_of(d);
            log_end(ex, "cancelled", GRPC_STATUS_CANCELLED, -1);
            exec_done(ex);
            return;
        }
    }
    api_query_cancel(call);
}

static const struct grpc_handler exec_h = {
    .on_message = exec_unary_message,
    .on_cancel = exec_cancel,
    .on_writable = exec_writable,
};

static const struct grpc_handler exec_interactive_h = {
    .on_message = exec_input_message,
    .on_half_close = exec_input_half_close,
    .on_cancel = exec_cancel,
    .on_writable = exec_writable,
};

const struct grpc_method api_exec_methods[] = {
    {"/openshell.v1.OpenShell/ExecSandbox", GRPC_SERVER_STREAM,
     &openshell__v1__exec_sandbox_request__descriptor,
     &openshell__v1__exec_sandbox_event__descriptor, &exec_h, NULL, API_AUTH_BEARER},
    {"/openshell.v1.OpenShell/ExecSandboxInteractive", GRPC_BIDI,
     &openshell__v1__exec_sandbox_input__descriptor, &openshell__v1__exec_sandbox_event__descriptor,
     &exec_interactive_h, NULL, API_AUTH_BEARER},
    {.path = NULL},
};
