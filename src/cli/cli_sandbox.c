/*
 * cli_sandbox: sandbox create/list/get/delete/stop/start and gateway info,
 * plus the --wait progress display (WatchSandbox with follow_status and
 * stop_on_terminal).
 *
 * Requests are built on the heap only (strings copied), so one
 * protobuf_c_message_free_unpacked() releases a whole request.
 */
#include "cli/cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http2/grpc.h"
#include "openshell.pb-c.h"
#include "reactor/reactor.h"

#define SVC                  "/openshell.v1.OpenShell/"
#define DEFAULT_WAIT_SECS    300
#define MAX_WAIT_SECS        86400
#define SPINNER_MS           100
#define MAX_DRIVER_CFG_BYTES (1u << 20)

/* ---- shared helpers -------------------------------------------------------- */

static bool want_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            return false;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    }
    return false;
}

/* Replaces a heap string field (which may still hold protobuf-c's static
 * empty default) with a copy of |v|. */
static void set_str(char **dst, const char *v)
{
    if (*dst != NULL && *dst != protobuf_c_empty_string)
        free(*dst);
    *dst = gw_xstrdup(v);
}

/* Appends key |k| = value |v| (both copied) to the map field |field| of
 * message |m| (a string->string map: entries with key = 1, value = 2). */
static void map_put(ProtobufCMessage *m, const char *field, const char *k, size_t klen,
                    const char *v)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(m->descriptor, field);
    const ProtobufCMessageDescriptor *ed;
    size_t *n;
    ProtobufCMessage ***arr;
    ProtobufCMessage *e;

    GW_ASSERT(f != NULL && f->label == PROTOBUF_C_LABEL_REPEATED);
    ed = f->descriptor;
    n = (size_t *)((char *)m + f->quantifier_offset);
    arr = (ProtobufCMessage ***)((char *)m + f->offset);
    /* A repeated key replaces the earlier value, as in a map. */
    for (size_t i = 0; i < *n; i++) {
        char **key = (char **)((char *)(*arr)[i] + ed->fields[0].offset);
        if (strlen(*key) == klen && strncmp(*key, k, klen) == 0) {
            char **val = (char **)((char *)(*arr)[i] + ed->fields[1].offset);
            set_str(val, v);
            return;
        }
    }
    e = gw_xmalloc(ed->sizeof_message);
    protobuf_c_message_init(ed, e);
    *(char **)((char *)e + ed->fields[0].offset) = gw_xstrndup(k, klen);
    *(char **)((char *)e + ed->fields[1].offset) = gw_xstrdup(v);
    *arr = gw_xrealloc(*arr, (*n + 1) * sizeof(**arr));
    (*arr)[(*n)++] = e;
}

/* Parses "K=V" for option |opt| into map |field| of |m|. Returns 0 or 2. */
static int put_kv(const char *cmd, const char *opt, const char *arg, ProtobufCMessage *m,
                  const char *field)
{
    const char *eq = strchr(arg, '=');

    if (eq == NULL || eq == arg)
        return cli_usage(cmd, "%s expects KEY=VALUE, not '%s'", opt, arg);
    map_put(m, field, arg, (size_t)(eq - arg), eq + 1);
    return 0;
}

static int parse_wait_timeout(const char *cmd, const char *arg, unsigned *out)
{
    unsigned long v;

    if (cli_parse_uint(arg, MAX_WAIT_SECS, &v) != 0 || v == 0)
        return cli_usage(cmd, "--wait-timeout must be 1..%d seconds, not '%s'", MAX_WAIT_SECS, arg);
    *out = (unsigned)v;
    return 0;
}

static const char *str0(const char *s)
{
    return s != NULL ? s : "";
}

/* The Ready condition (or the first one with a reason). Borrowed; NULL. */
static const Openshell__V1__SandboxCondition *ready_condition(const Openshell__V1__Sandbox *sb)
{
    const Openshell__V1__SandboxCondition *first = NULL;

    if (sb->status == NULL)
        return NULL;
    for (size_t i = 0; i < sb->status->n_conditions; i++) {
        const Openshell__V1__SandboxCondition *c = sb->status->conditions[i];
        if (strcmp(str0(c->type), "Ready") == 0)
            return c;
        if (first == NULL && str0(c->reason)[0] != '\0')
            first = c;
    }
    return first;
}

static int sandbox_phase(const Openshell__V1__Sandbox *sb)
{
    return sb->status != NULL ? (int)sb->status->phase : 0;
}

static const char *sandbox_name(const Openshell__V1__Sandbox *sb)
{
    return sb->metadata != NULL ? str0(sb->metadata->name) : "";
}

/* "k=v,k2=v2" of a string map field into |b|. */
static void join_map(struct gw_buf *b, size_t n,
                     Openshell__Datamodel__V1__ObjectMeta__LabelsEntry **e)
{
    for (size_t i = 0; i < n; i++)
        gw_buf_appendf(b, "%s%s=%s", i ? "," : "", str0(e[i]->key), str0(e[i]->value));
}

/* The key: value record of one sandbox. */
static void print_sandbox_record(const Openshell__V1__Sandbox *sb)
{
    const Openshell__Datamodel__V1__ObjectMeta *md = sb->metadata;
    const Openshell__V1__SandboxSpec *spec = sb->spec;
    const Openshell__V1__SandboxCondition *cond = ready_condition(sb);
    struct cli_record *r = cli_record_new();
    struct gw_buf b = {0};
    char ts[32];

    cli_record_add(r, "name", sandbox_name(sb));
    cli_record_add(r, "id", md != NULL ? md->id : NULL);
    cli_record_add(r, "workspace", md != NULL ? md->workspace : NULL);
    cli_record_add(r, "phase", cli_phase_name(sandbox_phase(sb)));
    if (cond != NULL) {
        cli_record_add(r, "reason", cond->reason);
        cli_record_add(r, "message", cond->message);
    }
    cli_record_add(r, "image",
                   spec != NULL && spec->template_ != NULL ? spec->template_->image : NULL);
    for (size_t i = 0; spec != NULL && i < spec->n_command; i++)
        gw_buf_appendf(&b, "%s%s", i ? " " : "", spec->command[i]);
    cli_record_add(r, "command", gw_buf_cstr(&b));
    cli_record_add(r, "tty", spec != NULL && spec->tty ? "true" : "false");
    gw_buf_reset(&b);
    if (md != NULL)
        join_map(&b, md->n_labels, md->labels);
    cli_record_add(r, "labels", gw_buf_cstr(&b));
    cli_time_format(md != NULL ? md->created_at_ms : 0, ts);
    cli_record_add(r, "created", ts);
    if (sb->status != NULL &&
        sb->status->_exit_code_case == OPENSHELL__V1__SANDBOX_STATUS___EXIT_CODE_EXIT_CODE)
        cli_record_addf(r, "exit code", "%d", sb->status->exit_code);
    cli_record_print(r, stdout);
    fflush(stdout);
    cli_record_free(r);
    gw_buf_free(&b);
}

/* Prints a SandboxResponse as `get` does: JSON, or the record. */
static void print_sandbox_response(const struct cli *c, const Openshell__V1__SandboxResponse *resp)
{
    if (cli_opts(c)->json)
        cli_print_json(&resp->base);
    else if (resp->sandbox != NULL)
        print_sandbox_record(resp->sandbox);
}

/* ---- --wait ------------------------------------------------------------------ */

struct waiter {
    struct cli *c;
    const char *name;
    bool tty;       /* redraw one line on stderr */
    int last_phase; /* -1 before the first snapshot */
    char line[512]; /* the current progress text */
    uint64_t start_us;
    unsigned spin;
    struct reactor_timer *spinner, *deadline;
    struct cli_stream *stream;
    Openshell__V1__SandboxResponse *final; /* the READY record (owned) */
    int rc;                                /* exit code once done; -1 while waiting */
};

static void waiter_draw(struct waiter *w)
{
    static const char frames[] = "|/-\\";
    unsigned secs = (unsigned)((gw_clock_mono_us() - w->start_us) / 1000000);

    fprintf(stderr, "\r\033[K%c %s %us", frames[w->spin++ % 4], w->line, secs);
    fflush(stderr);
}

static void on_spinner(struct reactor_timer *t, void *arg)
{
    (void)t;
    waiter_draw(arg);
}

/* Ends the wait with exit code |rc|; the progress line becomes permanent. */
static void waiter_finish(struct waiter *w, int rc)
{
    if (w->rc >= 0)
        return;
    w->rc = rc;
    if (w->tty) {
        unsigned secs = (unsigned)((gw_clock_mono_us() - w->start_us) / 1000000);
        fprintf(stderr, "\r\033[K%s %us\n", w->line, secs);
        fflush(stderr);
    }
    reactor_timer_disarm(w->spinner);
    reactor_timer_disarm(w->deadline);
    cli_loop_exit(w->c);
}

static void on_deadline(struct reactor_timer *t, void *arg)
{
    struct waiter *w = arg;
    struct cli_status st = {.code = GRPC_STATUS_DEADLINE_EXCEEDED};
    char what[300];

    (void)t;
    if (w->stream != NULL) {
        cli_stream_cancel(w->stream);
        w->stream = NULL;
    }
    waiter_finish(w, 0);
    snprintf(st.message, sizeof(st.message), "still %s after the --wait-timeout",
             w->last_phase >= 0 ? cli_phase_name(w->last_phase) : "not observed");
    snprintf(what, sizeof(what), "waiting for sandbox \"%s\" to become READY", w->name);
    w->rc = cli_fail_status(what, &st);
}

static void on_watch_msg(struct cli_stream *s, const ProtobufCMessage *msg, void *arg)
{
    const Openshell__V1__SandboxStreamEvent *ev = (const Openshell__V1__SandboxStreamEvent *)msg;
    struct waiter *w = arg;
    const Openshell__V1__SandboxCondition *cond;
    int phase;

    (void)s;
    if (ev->payload_case != OPENSHELL__V1__SANDBOX_STREAM_EVENT__PAYLOAD_SANDBOX || w->rc >= 0)
        return;
    phase = sandbox_phase(ev->sandbox);
    cond = ready_condition(ev->sandbox);
    snprintf(w->line, sizeof(w->line), "sandbox %s: %s", w->name, cli_phase_name(phase));
    if (cond != NULL && str0(cond->reason)[0] != '\0')
        snprintf(w->line + strlen(w->line), sizeof(w->line) - strlen(w->line), " (%s)",
                 cond->reason);
    if (phase != w->last_phase && !w->tty) {
        fprintf(stderr, "%s\n", w->line);
        fflush(stderr);
    }
    w->last_phase = phase;
    if (w->tty)
        waiter_draw(w);
    if (phase == OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_READY) {
        Openshell__V1__SandboxResponse r = OPENSHELL__V1__SANDBOX_RESPONSE__INIT;
        size_t n;
        uint8_t *buf;
        /* Keep a copy of the borrowed snapshot for the final record. */
        r.sandbox = ev->sandbox;
        n = protobuf_c_message_get_packed_size(&r.base);
        buf = gw_xmalloc(n + 1);
        protobuf_c_message_pack(&r.base, buf);
        w->final = (Openshell__V1__SandboxResponse *)protobuf_c_message_unpack(
            &openshell__v1__sandbox_response__descriptor, NULL, n, buf);
        free(buf);
        waiter_finish(w, 0);
    } else if (phase == OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_ERROR) {
        waiter_finish(w, CLI_EXIT_FAIL);
        fprintf(stderr, "openshell: sandbox \"%s\" failed: %s%s%s\n", w->name,
                cond != NULL && str0(cond->reason)[0] ? cond->reason : "ERROR",
                cond != NULL && str0(cond->message)[0] ? ": " : "",
                cond != NULL ? str0(cond->message) : "");
    }
}

static void on_watch_end(struct cli_stream *s, const struct cli_status *st, void *arg)
{
    struct waiter *w = arg;
    char what[300];

    (void)s;
    w->stream = NULL;
    if (w->rc >= 0)
        return;
    waiter_finish(w, 0);
    if (st->code == GRPC_STATUS_OK) {
        w->rc = cli_fail("sandbox \"%s\" went away while waiting for it (last phase %s)", w->name,
                         w->last_phase >= 0 ? cli_phase_name(w->last_phase) : "unknown");
        return;
    }
    snprintf(what, sizeof(what), "watch sandbox \"%s\"", w->name);
    w->rc = cli_fail_status(what, st);
}

/* Follows sandbox |id| until READY, ERROR or |timeout_s|. Prints the final
 * record on success. Returns the exit code. */
static int wait_ready(struct cli *c, const char *name, const char *id, unsigned timeout_s)
{
    Openshell__V1__WatchSandboxRequest req = OPENSHELL__V1__WATCH_SANDBOX_REQUEST__INIT;
    struct waiter w = {.c = c, .name = name, .last_phase = -1, .rc = -1};
    int rc = 0;

    w.tty = isatty(STDERR_FILENO) && !cli_opts(c)->json;
    w.start_us = gw_clock_mono_us();
    snprintf(w.line, sizeof(w.line), "sandbox %s: waiting", name);
    req.id = (char *)id;
    req.follow_status = true;
    req.stop_on_terminal = true;
    w.stream =
        cli_stream_start(c, SVC "WatchSandbox", &openshell__v1__sandbox_stream_event__descriptor,
                         on_watch_msg, on_watch_end, &w, &rc);
    if (w.stream == NULL)
        return rc;
    if (cli_stream_send(w.stream, &req.base) < 0) {
        cli_stream_cancel(w.stream);
        return cli_fail_connect(cli_opts(c)->endpoint, "the connection closed");
    }
    cli_stream_close_send(w.stream);
    w.spinner = reactor_timer_new(cli_reactor(c), on_spinner, &w);
    w.deadline = reactor_timer_new(cli_reactor(c), on_deadline, &w);
    reactor_timer_arm(w.deadline, (uint64_t)timeout_s * 1000);
    if (w.tty) {
        waiter_draw(&w);
        reactor_timer_arm_periodic(w.spinner, SPINNER_MS);
    }
    while (w.rc < 0)
        cli_loop_run(c);
    if (w.stream != NULL)
        cli_stream_cancel(w.stream);
    reactor_timer_free(w.spinner);
    reactor_timer_free(w.deadline);
    if (w.rc == 0 && w.final != NULL)
        print_sandbox_response(c, w.final);
    if (w.final != NULL)
        protobuf_c_message_free_unpacked(&w.final->base, NULL);
    return w.rc;
}

/* ---- gateway info ---------------------------------------------------------- */

static const char *service_status_name(int st)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&openshell__v1__service_status__descriptor, st);
    static const char prefix[] = "SERVICE_STATUS_";

    if (v == NULL)
        return "UNKNOWN";
    return strncmp(v->name, prefix, sizeof(prefix) - 1) == 0 ? v->name + sizeof(prefix) - 1
                                                             : v->name;
}

static const char gateway_info_help[] =
    "Usage: openshell gateway info\n"
    "\n"
    "Shows the gateway's health status, version and compute drivers (GetGatewayInfo).\n";

int cli_cmd_gateway_info(struct cli *c, int argc, char **argv)
{
    Openshell__V1__GetGatewayInfoRequest req = OPENSHELL__V1__GET_GATEWAY_INFO_REQUEST__INIT;
    Openshell__V1__GetGatewayInfoResponse *resp = NULL;
    struct cli_record *r;
    struct gw_buf b = {0};
    int rc;

    if (want_help(argc, argv)) {
        fputs(gateway_info_help, stdout);
        return 0;
    }
    if (argc > 1)
        return cli_usage("gateway info", "unexpected argument '%s'", argv[1]);
    rc = cli_unary(c, SVC "GetGatewayInfo", &req.base,
                   &openshell__v1__get_gateway_info_response__descriptor,
                   (ProtobufCMessage **)&resp, "gateway info");
    if (rc != 0)
        return rc;
    if (cli_opts(c)->json) {
        cli_print_json(&resp->base);
    } else {
        r = cli_record_new();
        cli_record_add(r, "gateway", cli_opts(c)->endpoint);
        cli_record_add(r, "status", service_status_name(resp->status));
        cli_record_add(r, "version", resp->gateway_version);
        for (size_t i = 0; i < resp->n_compute_drivers; i++) {
            const Openshell__V1__ComputeDriverInfo *d = resp->compute_drivers[i];
            gw_buf_appendf(&b, "%s%s", i ? ", " : "", str0(d->name));
            if (d->capabilities != NULL && str0(d->capabilities->driver_version)[0] != '\0')
                gw_buf_appendf(&b, " %s", d->capabilities->driver_version);
        }
        cli_record_add(r, "drivers", gw_buf_cstr(&b));
        cli_record_print(r, stdout);
        cli_record_free(r);
        gw_buf_free(&b);
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return 0;
}

/* ---- sandbox create ------------------------------------------------------------ */

static const char create_help[] =
    "Usage: openshell sandbox create [OPTIONS] [-- COMMAND [ARG...]]\n"
    "\n"
    "Creates a sandbox in the --workspace and prints its record. Without a COMMAND the\n"
    "gateway runs a login shell (/bin/bash -l) on a terminal.\n"
    "\n"
    "Options:\n"
    "      --name NAME                sandbox name (default: generated by the gateway)\n"
    "      --image IMAGE              image for the driver (default: the driver's)\n"
    "      --label K=V                label on the sandbox (repeatable)\n"
    "      --env K=V                  environment variable of the command (repeatable)\n"
    "      --driver-config-json JSON  a JSON object (or @FILE holding one) keyed by driver\n"
    "                                 name, sent as SandboxTemplate.driver_config\n"
    "      --tty                      run the command on a terminal\n"
    "      --wait                     follow the sandbox until it is READY (exit 0),\n"
    "                                 ERROR (exit 1) or the wait timeout (exit 14)\n"
    "      --wait-timeout SECS        how long --wait waits (default 300)\n"
    "  -h, --help                     this help\n";

enum {
    OPT_NAME = 256,
    OPT_IMAGE,
    OPT_LABEL,
    OPT_ENV,
    OPT_DRIVER_CFG,
    OPT_TTY,
    OPT_WAIT,
    OPT_WAIT_TIMEOUT,
    OPT_SELECTOR,
    OPT_ALL_WS,
    OPT_LIMIT,
};

/* Reads |arg| ("@FILE" or JSON text) into a Struct at *out. Returns 0 or the
 * exit code (2 for bad JSON, 1 for an unreadable file). */
static int load_driver_config(const char *arg, ProtobufCMessage **out)
{
    const char *cmd = "sandbox create";
    char err[300];
    char *text = NULL;

    if (arg[0] == '@') {
        FILE *f = fopen(arg + 1, "r");
        struct gw_buf b = {0};
        char chunk[4096];
        size_t n;
        if (f == NULL)
            return cli_fail("--driver-config-json: cannot read '%s': %s", arg + 1, strerror(errno));
        while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0 && b.len <= MAX_DRIVER_CFG_BYTES)
            gw_buf_append(&b, chunk, n);
        fclose(f);
        if (b.len > MAX_DRIVER_CFG_BYTES) {
            gw_buf_free(&b);
            return cli_usage(cmd, "--driver-config-json: '%s' is larger than 1 MiB", arg + 1);
        }
        text = gw_xstrdup(gw_buf_cstr(&b));
        gw_buf_free(&b);
    } else {
        text = gw_xstrdup(arg);
    }
    if (pbjson_struct_from_text(text, out, err, sizeof(err)) != 0) {
        free(text);
        return cli_usage(cmd, "--driver-config-json: %s", err);
    }
    free(text);
    return 0;
}

struct create_args {
    Openshell__V1__CreateSandboxRequest *req;
    bool wait;
    unsigned wait_s;
};

static Openshell__V1__SandboxTemplate *template_of(Openshell__V1__SandboxSpec *spec)
{
    if (spec->template_ == NULL) {
        spec->template_ = gw_xmalloc(sizeof(*spec->template_));
        openshell__v1__sandbox_template__init(spec->template_);
    }
    return spec->template_;
}

/* One parsed option of `sandbox create`. Returns 0 or an exit code. */
static int create_opt(struct create_args *a, int ch, const char *arg)
{
    const char *cmd = "sandbox create";
    Openshell__V1__SandboxSpec *spec = a->req->spec;
    Openshell__V1__SandboxTemplate *t;
    ProtobufCMessage *cfg;
    int rc;

    switch (ch) {
    case OPT_NAME:
        set_str(&a->req->name, arg);
        return 0;
    case OPT_IMAGE:
        t = template_of(spec);
        set_str(&t->image, arg);
        return 0;
    case OPT_LABEL:
        return put_kv(cmd, "--label", arg, &a->req->base, "labels");
    case OPT_ENV:
        return put_kv(cmd, "--env", arg, &spec->base, "environment");
    case OPT_DRIVER_CFG:
        rc = load_driver_config(arg, &cfg);
        if (rc != 0)
            return rc;
        t = template_of(spec);
        if (t->driver_config != NULL)
            protobuf_c_message_free_unpacked(&t->driver_config->base, NULL);
        t->driver_config = (Google__Protobuf__Struct *)cfg;
        return 0;
    case OPT_TTY:
        spec->tty = true;
        return 0;
    case OPT_WAIT:
        a->wait = true;
        return 0;
    case OPT_WAIT_TIMEOUT:
        return parse_wait_timeout(cmd, arg, &a->wait_s);
    default:
        return CLI_EXIT_USAGE;
    }
}

/* Parses argv into |a|. Returns 0 or an exit code. */
static int create_parse(struct create_args *a, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"name", required_argument, NULL, OPT_NAME},
        {"image", required_argument, NULL, OPT_IMAGE},
        {"label", required_argument, NULL, OPT_LABEL},
        {"env", required_argument, NULL, OPT_ENV},
        {"driver-config-json", required_argument, NULL, OPT_DRIVER_CFG},
        {"tty", no_argument, NULL, OPT_TTY},
        {"wait", no_argument, NULL, OPT_WAIT},
        {"wait-timeout", required_argument, NULL, OPT_WAIT_TIMEOUT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    Openshell__V1__SandboxSpec *spec = a->req->spec;
    int ch, rc;

    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (ch == '?' || ch == ':')
            return cli_bad_option("sandbox create", ch, argv);
        rc = create_opt(a, ch, optarg);
        if (rc != 0)
            return rc;
    }
    if (optind < argc && strcmp(argv[optind - 1], "--") != 0)
        return cli_usage("sandbox create", "unexpected argument '%s' (put the command after --)",
                         argv[optind]);
    if (optind < argc) {
        spec->n_command = (size_t)(argc - optind);
        spec->command = gw_xcalloc(spec->n_command, sizeof(char *));
        for (size_t i = 0; i < spec->n_command; i++)
            spec->command[i] = gw_xstrdup(argv[optind + (int)i]);
    }
    return 0;
}

int cli_cmd_sandbox_create(struct cli *c, int argc, char **argv)
{
    Openshell__V1__SandboxResponse *resp = NULL;
    struct create_args a = {.wait_s = DEFAULT_WAIT_SECS};
    char what[300];
    int rc;

    if (want_help(argc, argv)) {
        fputs(create_help, stdout);
        return 0;
    }
    a.req = gw_xmalloc(sizeof(*a.req));
    openshell__v1__create_sandbox_request__init(a.req);
    a.req->spec = gw_xmalloc(sizeof(*a.req->spec));
    openshell__v1__sandbox_spec__init(a.req->spec);
    a.req->workspace = gw_xstrdup(cli_opts(c)->workspace);
    rc = create_parse(&a, argc, argv);
    if (rc != 0)
        goto out;
    if (a.req->name[0] != '\0')
        snprintf(what, sizeof(what), "create sandbox \"%s\"", a.req->name);
    else
        snprintf(what, sizeof(what), "create sandbox");
    rc = cli_unary(c, SVC "CreateSandbox", &a.req->base,
                   &openshell__v1__sandbox_response__descriptor, (ProtobufCMessage **)&resp, what);
    if (rc != 0)
        goto out;
    if (!a.wait || resp->sandbox == NULL || resp->sandbox->metadata == NULL) {
        print_sandbox_response(c, resp);
    } else {
        char *name = gw_xstrdup(sandbox_name(resp->sandbox));
        char *id = gw_xstrdup(str0(resp->sandbox->metadata->id));
        rc = wait_ready(c, name, id, a.wait_s);
        free(name);
        free(id);
    }
out:
    if (resp != NULL)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    protobuf_c_message_free_unpacked(&a.req->base, NULL);
    return rc;
}

/* ---- sandbox list ---------------------------------------------------------------- */

static const char list_help[] =
    "Usage: openshell sandbox list [--selector SEL] [--all-workspaces] [--limit N]\n"
    "\n"
    "Lists the sandboxes of the --workspace as NAME ID PHASE WORKSPACE CREATED.\n"
    "\n"
    "Options:\n"
    "      --selector SEL     label selector, e.g. 'team=ml,tier!=dev'\n"
    "      --all-workspaces   every workspace you can see (not with --workspace)\n"
    "      --limit N          at most N sandboxes\n"
    "  -h, --help             this help\n";

static void print_sandbox_table(const Openshell__V1__ListSandboxesResponse *resp)
{
    static const char *const hdr[] = {"NAME", "ID", "PHASE", "WORKSPACE", "CREATED"};
    struct cli_table *t = cli_table_new(5, hdr);

    for (size_t i = 0; i < resp->n_sandboxes; i++) {
        const Openshell__V1__Sandbox *sb = resp->sandboxes[i];
        const Openshell__Datamodel__V1__ObjectMeta *md = sb->metadata;
        char ts[32];
        const char *row[5];
        cli_time_format(md != NULL ? md->created_at_ms : 0, ts);
        row[0] = sandbox_name(sb);
        row[1] = md != NULL ? str0(md->id) : "";
        row[2] = cli_phase_name(sandbox_phase(sb));
        row[3] = md != NULL && str0(md->workspace)[0] ? md->workspace : "-";
        row[4] = ts;
        cli_table_add(t, row);
    }
    cli_table_print(t, stdout);
    cli_table_free(t);
}

int cli_cmd_sandbox_list(struct cli *c, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"selector", required_argument, NULL, OPT_SELECTOR},
        {"all-workspaces", no_argument, NULL, OPT_ALL_WS},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    Openshell__V1__ListSandboxesRequest req = OPENSHELL__V1__LIST_SANDBOXES_REQUEST__INIT;
    Openshell__V1__ListSandboxesResponse *resp = NULL;
    unsigned long limit;
    int ch, rc;

    if (want_help(argc, argv)) {
        fputs(list_help, stdout);
        return 0;
    }
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (ch) {
        case OPT_SELECTOR:
            req.label_selector = optarg;
            break;
        case OPT_ALL_WS:
            req.all_workspaces = true;
            break;
        case OPT_LIMIT:
            if (cli_parse_uint(optarg, UINT32_MAX, &limit) != 0 || limit == 0)
                return cli_usage("sandbox list", "--limit must be a positive number, not '%s'",
                                 optarg);
            req.limit = (uint32_t)limit;
            break;
        default:
            return cli_bad_option("sandbox list", ch, argv);
        }
    }
    if (optind < argc)
        return cli_usage("sandbox list", "unexpected argument '%s'", argv[optind]);
    if (req.all_workspaces && cli_opts(c)->workspace[0] != '\0')
        return cli_usage("sandbox list", "--all-workspaces and --workspace exclude each other");
    req.workspace = (char *)cli_opts(c)->workspace;
    rc = cli_unary(c, SVC "ListSandboxes", &req.base,
                   &openshell__v1__list_sandboxes_response__descriptor, (ProtobufCMessage **)&resp,
                   "list sandboxes");
    if (rc != 0)
        return rc;
    if (cli_opts(c)->json)
        cli_print_json(&resp->base);
    else
        print_sandbox_table(resp);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return 0;
}

/* ---- get / delete / stop / start ---------------------------------------------------- */

/* Commands taking exactly one NAME and no options but --help (and, for
 * start, --wait). Returns 0 with *name set, or an exit code. */
static int one_name(const char *cmd, int argc, char **argv, const char **name)
{
    if (argc < 2)
        return cli_usage(cmd, "missing the sandbox NAME");
    if (argv[1][0] == '-')
        return cli_usage(cmd, "unknown option '%s'", argv[1]);
    if (argc > 2)
        return cli_usage(cmd, "unexpected argument '%s'", argv[2]);
    *name = argv[1];
    return 0;
}

/* get and stop: one NAME, one call answering a SandboxResponse (|req| with
 * its name and workspace fields), the record printed. */
static int name_call(struct cli *c, int argc, char **argv, const char *cmd, const char *help,
                     const char *method, ProtobufCMessage *req, char **req_name, char **req_ws)
{
    Openshell__V1__SandboxResponse *resp = NULL;
    const char *name = NULL;
    char what[300];
    int rc;

    if (want_help(argc, argv)) {
        fputs(help, stdout);
        return 0;
    }
    rc = one_name(cmd, argc, argv, &name);
    if (rc != 0)
        return rc;
    *req_name = (char *)name;
    *req_ws = (char *)cli_opts(c)->workspace;
    snprintf(what, sizeof(what), "sandbox \"%s\"", name);
    rc = cli_unary(c, method, req, &openshell__v1__sandbox_response__descriptor,
                   (ProtobufCMessage **)&resp, what);
    if (rc != 0)
        return rc;
    print_sandbox_response(c, resp);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return 0;
}

static const char get_help[] = "Usage: openshell sandbox get NAME\n"
                               "\n"
                               "Shows one sandbox of the --workspace as key: value lines.\n";

int cli_cmd_sandbox_get(struct cli *c, int argc, char **argv)
{
    Openshell__V1__GetSandboxRequest req = OPENSHELL__V1__GET_SANDBOX_REQUEST__INIT;

    return name_call(c, argc, argv, "sandbox get", get_help, SVC "GetSandbox", &req.base, &req.name,
                     &req.workspace);
}

static const char delete_help[] = "Usage: openshell sandbox delete NAME...\n"
                                  "\n"
                                  "Deletes sandboxes of the --workspace. Every NAME is tried; the\n"
                                  "exit code is that of the last failure.\n";

int cli_cmd_sandbox_delete(struct cli *c, int argc, char **argv)
{
    int rc = 0;

    if (want_help(argc, argv)) {
        fputs(delete_help, stdout);
        return 0;
    }
    if (argc < 2)
        return cli_usage("sandbox delete", "missing the sandbox NAME");
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-')
            return cli_usage("sandbox delete", "unknown option '%s'", argv[i]);
    }
    for (int i = 1; i < argc; i++) {
        Openshell__V1__DeleteSandboxRequest req = OPENSHELL__V1__DELETE_SANDBOX_REQUEST__INIT;
        Openshell__V1__DeleteSandboxResponse *resp = NULL;
        char what[300];
        int r;
        req.name = argv[i];
        req.workspace = (char *)cli_opts(c)->workspace;
        snprintf(what, sizeof(what), "sandbox \"%s\"", argv[i]);
        r = cli_unary(c, SVC "DeleteSandbox", &req.base,
                      &openshell__v1__delete_sandbox_response__descriptor,
                      (ProtobufCMessage **)&resp, what);
        if (r != 0) {
            rc = r;
            continue;
        }
        if (cli_opts(c)->json)
            cli_print_json(&resp->base);
        else
            printf("deleted sandbox %s\n", argv[i]);
        fflush(stdout);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    return rc;
}

static const char stop_help[] = "Usage: openshell sandbox stop NAME\n"
                                "\n"
                                "Stops a sandbox (its record is kept; 'sandbox start' resumes it)\n"
                                "and prints the record.\n";

int cli_cmd_sandbox_stop(struct cli *c, int argc, char **argv)
{
    Openshell__V1__StopSandboxRequest req = OPENSHELL__V1__STOP_SANDBOX_REQUEST__INIT;

    return name_call(c, argc, argv, "sandbox stop", stop_help, SVC "StopSandbox", &req.base,
                     &req.name, &req.workspace);
}

static const char start_help[] =
    "Usage: openshell sandbox start NAME [--wait] [--wait-timeout SECS]\n"
    "\n"
    "Starts a stopped sandbox and prints its record.\n"
    "\n"
    "Options:\n"
    "      --wait               follow the sandbox until READY (exit 0), ERROR (exit 1)\n"
    "                           or the wait timeout (exit 14)\n"
    "      --wait-timeout SECS  how long --wait waits (default 300)\n"
    "  -h, --help               this help\n";

int cli_cmd_sandbox_start(struct cli *c, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"wait", no_argument, NULL, OPT_WAIT},
        {"wait-timeout", required_argument, NULL, OPT_WAIT_TIMEOUT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    Openshell__V1__StartSandboxRequest req = OPENSHELL__V1__START_SANDBOX_REQUEST__INIT;
    Openshell__V1__SandboxResponse *resp = NULL;
    unsigned wait_s = DEFAULT_WAIT_SECS;
    bool wait = false;
    char what[300];
    int ch, rc;

    if (want_help(argc, argv)) {
        fputs(start_help, stdout);
        return 0;
    }
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (ch == OPT_WAIT) {
            wait = true;
        } else if (ch == OPT_WAIT_TIMEOUT) {
            rc = parse_wait_timeout("sandbox start", optarg, &wait_s);
            if (rc != 0)
                return rc;
        } else {
            return cli_bad_option("sandbox start", ch, argv);
        }
    }
    if (optind >= argc)
        return cli_usage("sandbox start", "missing the sandbox NAME");
    if (optind + 1 < argc)
        return cli_usage("sandbox start", "unexpected argument '%s'", argv[optind + 1]);
    req.name = argv[optind];
    req.workspace = (char *)cli_opts(c)->workspace;
    snprintf(what, sizeof(what), "sandbox \"%s\"", req.name);
    rc = cli_unary(c, SVC "StartSandbox", &req.base, &openshell__v1__sandbox_response__descriptor,
                   (ProtobufCMessage **)&resp, what);
    if (rc != 0)
        return rc;
    if (!wait || resp->sandbox == NULL || resp->sandbox->metadata == NULL) {
        print_sandbox_response(c, resp);
    } else {
        char *id = gw_xstrdup(str0(resp->sandbox->metadata->id));
        rc = wait_ready(c, req.name, id, wait_s);
        free(id);
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}
