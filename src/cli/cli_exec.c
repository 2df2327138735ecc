/*
 * cli_exec: `openshell sandbox exec NAME [-i] [-t] ... -- COMMAND [ARG...]`.
 *
 * Without -i/-t the command runs through ExecSandbox (one request, a stream
 * of stdout/stderr/exit events; stdin is not read). With -i or -t it runs
 * through ExecSandboxInteractive: a `start` message, then (with -i) stdin
 * in chunks of up to 64 KiB, half-closed at end of input, and (with -t)
 * window resizes on SIGWINCH.
 *
 * Everything moves on the CLI's one loop, with flow control both ways:
 *  - stdin is read only while the call takes more: after GRPC_SEND_FULL the
 *    read event is off until the writable callback;
 *  - fds 1 and 2 are made non-blocking; bytes a write could not take wait in
 *    a small per-fd buffer and the stream is paused (no more events are
 *    delivered, HTTP/2 flow control stops the gateway) until they drained.
 *    At most one event's bytes are ever held, so a slow reader slows the
 *    remote command instead of growing our memory.
 *
 * The terminal (raw mode with -i -t on a terminal) and the descriptor flags
 * are restored on every way out: the normal end, a failed call, SIGINT/
 * SIGTERM/SIGHUP (handled on the loop), SIGTSTP (restored while stopped),
 * and exit() from anywhere else (atexit).
 */
#include "cli/cli.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "http2/grpc.h"
#include "openshell.pb-c.h"
#include "reactor/reactor.h"

#define SVC_EXEC             "/openshell.v1.OpenShell/ExecSandbox"
#define SVC_EXEC_INTERACTIVE "/openshell.v1.OpenShell/ExecSandboxInteractive"
#define EXIT_SIGNAL_BASE     128 /* exit code after a fatal signal: 128 + signo */

/* The size of the first terminal among fds 0, 1, 2; false when none is one. */
static bool window_size(uint32_t *cols, uint32_t *rows)
{
    struct winsize ws;

    for (int fd = 0; fd <= 2; fd++) {
        if (isatty(fd) && ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
            *cols = ws.ws_col;
            *rows = ws.ws_row;
            return true;
        }
    }
    return false;
}

/* ---- the call ---------------------------------------------------------------- */

struct exec {
    struct cli *c;
    struct cli_stream *s;   /* NULL once ended or cancelled */
    struct cli_sink out[2]; /* stdout, stderr */
    struct cli_source in;   /* stdin (with -i) */
    bool interactive;       /* ExecSandboxInteractive */
    bool tty;               /* a PTY was requested: SIGWINCH sends resizes */
    bool paused;            /* the stream is paused until output drains */
    bool ended;             /* on_end ran: leave once output drained */
    bool got_exit;          /* an exit event arrived */
    int exit_code;          /* its code */
    int signo;              /* the signal that ended us, or 0 */
    bool pipe_closed;       /* stdout's reader went away */
    struct cli_status st;   /* how the call ended */
    const char *name;
};

static bool output_held(const struct exec *x)
{
    return cli_sink_held(&x->out[0]) > 0 || cli_sink_held(&x->out[1]) > 0;
}

/* Resumes delivery when nothing is held anymore; leaves once the call ended. */
static void on_output_drained(struct cli_sink *o, void *arg)
{
    struct exec *x = arg;

    (void)o;
    if (output_held(x))
        return;
    if (x->ended) {
        cli_loop_exit(x->c);
        return;
    }
    if (x->paused && x->s != NULL) {
        x->paused = false;
        cli_stream_pause(x->s, false);
    }
}

/* stderr failing is not worth ending the command for; stdout is: its
 * reader went away (EPIPE) and nobody wants the rest. */
static void on_output_failed(struct cli_sink *o, void *arg)
{
    struct exec *x = arg;

    if (o->fd != 1)
        return;
    x->pipe_closed = true;
    if (x->s != NULL) {
        cli_stream_cancel(x->s);
        x->s = NULL;
    }
    cli_loop_exit(x->c);
}

/* Writes |len| bytes to |o| right away as far as the descriptor takes them;
 * the rest is held and the stream paused until it drained. */
static void output_write(struct exec *x, struct cli_sink *o, const uint8_t *data, size_t len)
{
    /* Something held (on either fd) goes first, to keep the order. */
    if (cli_sink_write(o, data, len, output_held(x)) && !x->paused && x->s != NULL) {
        x->paused = true;
        cli_stream_pause(x->s, true);
    }
}

static void on_exec_msg(struct cli_stream *s, const ProtobufCMessage *msg, void *arg)
{
    const Openshell__V1__ExecSandboxEvent *ev = (const Openshell__V1__ExecSandboxEvent *)msg;
    struct exec *x = arg;

    (void)s;
    switch (ev->payload_case) {
    case OPENSHELL__V1__EXEC_SANDBOX_EVENT__PAYLOAD_STDOUT:
        output_write(x, &x->out[0], ev->stdout->data.data, ev->stdout->data.len);
        break;
    case OPENSHELL__V1__EXEC_SANDBOX_EVENT__PAYLOAD_STDERR:
        output_write(x, &x->out[1], ev->stderr->data.data, ev->stderr->data.len);
        break;
    case OPENSHELL__V1__EXEC_SANDBOX_EVENT__PAYLOAD_EXIT:
        x->got_exit = true;
        x->exit_code = ev->exit->exit_code;
        break;
    default:
        break; /* a payload this client does not know */
    }
}

static void on_exec_end(struct cli_stream *s, const struct cli_status *st, void *arg)
{
    struct exec *x = arg;

    (void)s;
    x->s = NULL;
    x->ended = true;
    x->st = *st;
    cli_source_enable(&x->in, false);
    if (!output_held(x))
        cli_loop_exit(x->c);
}

/* ---- stdin ----------------------------------------------------------------- */

/* End of stdin: half-close the request side. */
static void on_stdin_eof(void *arg)
{
    struct exec *x = arg;

    if (x->s != NULL)
        cli_stream_close_send(x->s);
}

/* Sends one chunk; false when the call is congested or gone. */
static bool on_stdin_data(void *arg, const uint8_t *data, size_t len)
{
    Openshell__V1__ExecSandboxInput in = OPENSHELL__V1__EXEC_SANDBOX_INPUT__INIT;
    struct exec *x = arg;

    if (x->s == NULL)
        return false;
    in.payload_case = OPENSHELL__V1__EXEC_SANDBOX_INPUT__PAYLOAD_STDIN;
    in.stdin.data = (uint8_t *)data;
    in.stdin.len = len;
    /* GRPC_SEND_FULL: wait for on_call_writable; CLOSED: on_end follows. */
    return cli_stream_send(x->s, &in.base) == GRPC_SEND_OK;
}

static void on_call_writable(struct cli_stream *s, void *arg)
{
    struct exec *x = arg;

    (void)s;
    cli_source_enable(&x->in, true);
}

/* Sets up reading fd 0. Returns 0 or -1 (libevent failed). */
static int stdin_open(struct exec *x)
{
    if (cli_source_open(&x->in, x->c, 0, on_stdin_data, on_stdin_eof, x) != 0)
        return -1;
    cli_stream_set_writable(x->s, on_call_writable);
    cli_source_enable(&x->in, true);
    return 0;
}

/* ---- signals -------------------------------------------------------------- */

static void on_exec_signal(int signo, void *arg)
{
    struct exec *x = arg;
    Openshell__V1__ExecSandboxInput in = OPENSHELL__V1__EXEC_SANDBOX_INPUT__INIT;
    Openshell__V1__ExecSandboxWindowResize rs = OPENSHELL__V1__EXEC_SANDBOX_WINDOW_RESIZE__INIT;
    int code;

    switch (signo) {
    case SIGWINCH:
        if (x->s == NULL || !x->tty || !window_size(&rs.cols, &rs.rows))
            return;
        in.payload_case = OPENSHELL__V1__EXEC_SANDBOX_INPUT__PAYLOAD_RESIZE;
        in.resize = &rs;
        /* A few bytes, queued even when congested. GRPC_ERR_CLOSED: the
         * call is ending and on_end follows, nothing to do here. */
        code = cli_stream_send(x->s, &in.base);
        (void)code;
        return;
    case SIGTSTP:
        /* Only registered in raw mode (where ^Z is a plain byte): someone
         * stopped us with kill. Give the terminal back while stopped. */
        cli_std_restore();
        (void)raise(SIGSTOP);
        /* Continued: raw again (the shell may have changed the terminal). */
        if (cli_std_raw() != 0)
            cli_std_restore();
        cli_std_nonblocking((const int[]){0, 1, 2}, 3);
        on_exec_signal(SIGWINCH, x);
        return;
    default:
        x->signo = signo;
        if (x->s != NULL) {
            cli_stream_cancel(x->s);
            x->s = NULL;
        }
        cli_loop_exit(x->c);
        return;
    }
}

static int signals_install(struct exec *x, bool raw)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGWINCH};
    struct reactor *r = cli_reactor(x->c);

    for (size_t i = 0; i < GW_ARRAY_LEN(sigs); i++) {
        if (reactor_on_signal(r, sigs[i], on_exec_signal, x) != 0)
            return -1;
    }
    if (raw && reactor_on_signal(r, SIGTSTP, on_exec_signal, x) != 0)
        return -1;
    return 0;
}

/* ---- options --------------------------------------------------------------- */

struct exec_args {
    const char *name;
    bool stdin_on; /* -i */
    bool tty;      /* -t */
    const char *workdir;
    uint32_t timeout_s;
    char **env; /* K=V strings, borrowed from argv */
    size_t n_env;
    char **cmd; /* borrowed from argv */
    size_t n_cmd;
};

static const char exec_help[] =
    "usage: openshell sandbox exec NAME [-i|--stdin] [-t|--tty] [--workdir DIR]\n"
    "                              [--env K=V]... [--timeout-secs N] -- COMMAND [ARG...]\n"
    "\n"
    "Runs COMMAND in the sandbox NAME and exits with its exit code. stdout and\n"
    "stderr are written as they arrive. Each ARG reaches the command as one\n"
    "argument; use `-- sh -c '...'` for shell syntax.\n"
    "\n"
    "  -i, --stdin          stream this process's stdin to the command (end of\n"
    "                       input closes the command's stdin)\n"
    "  -t, --tty            run the command on a pseudo-terminal of this\n"
    "                       terminal's size; with -i on a terminal, the terminal\n"
    "                       goes raw while the command runs\n"
    "      --workdir DIR    working directory of the command\n"
    "      --env K=V        environment variable (repeatable)\n"
    "      --timeout-secs N stop the command after N seconds (exit code 124)\n"
    "  -h, --help           this text\n";

/* Strict unsigned 32-bit decimal. */
/* Index of the first "--" in argv[1..argc), or argc when there is none. */
static int find_dashdash(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            return i;
    }
    return argc;
}

static int exec_opt(struct exec_args *a, int ch, char **argv, size_t *env_cap)
{
    static const char *cmd = "sandbox exec";
    unsigned long v;
    const char *eq;

    switch (ch) {
    case 'i':
        a->stdin_on = true;
        return 0;
    case 't':
        a->tty = true;
        return 0;
    case 'w':
        a->workdir = optarg;
        return 0;
    case 'e':
        eq = strchr(optarg, '=');
        if (eq == NULL || eq == optarg)
            return cli_usage(cmd, "--env wants KEY=VALUE, got '%s'", optarg);
        if (a->n_env == *env_cap) {
            *env_cap = *env_cap ? *env_cap * 2 : 8;
            a->env = gw_xrealloc(a->env, *env_cap * sizeof(*a->env));
        }
        a->env[a->n_env++] = optarg;
        return 0;
    case 'T':
        if (cli_parse_uint(optarg, UINT32_MAX, &v) != 0)
            return cli_usage(cmd, "--timeout-secs wants a number of seconds, got '%s'", optarg);
        a->timeout_s = (uint32_t)v;
        return 0;
    default:
        return cli_bad_option(cmd, ch, argv);
    }
}

/* Parses argv; returns 0, -1 after --help (exit 0), or the usage exit code. */
static int exec_parse(int argc, char **argv, struct exec_args *a)
{
    static const struct option longopts[] = {
        {"stdin", no_argument, NULL, 'i'},
        {"tty", no_argument, NULL, 't'},
        {"workdir", required_argument, NULL, 'w'},
        {"env", required_argument, NULL, 'e'},
        {"timeout-secs", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int dd = find_dashdash(argc, argv);
    size_t env_cap = 0;
    int ch;

    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(dd, argv, ":ith", longopts, NULL)) != -1) {
        if (ch == 'h') {
            fputs(exec_help, stdout);
            return -1;
        }
        int rc = exec_opt(a, ch, argv, &env_cap);
        if (rc != 0)
            return rc;
    }
    if (optind >= dd)
        return cli_usage("sandbox exec", "missing the sandbox NAME");
    if (dd - optind > 1)
        return cli_usage("sandbox exec", "unexpected argument '%s' (the command goes after '--')",
                         argv[optind + 1]);
    a->name = argv[optind];
    if (dd + 1 >= argc)
        return cli_usage("sandbox exec", "missing the COMMAND after '--'");
    a->cmd = argv + dd + 1;
    a->n_cmd = (size_t)(argc - dd - 1);
    return 0;
}

/* ---- the command ------------------------------------------------------------- */

/* Fills |req| from |a|; the environment entries live in |entries|/|ptrs|
 * (caller frees |ptrs| and |entries|). */
static void exec_request(const struct exec_args *a, const char *id,
                         Openshell__V1__ExecSandboxRequest *req,
                         Openshell__V1__ExecSandboxRequest__EnvironmentEntry **entries,
                         Openshell__V1__ExecSandboxRequest__EnvironmentEntry ***ptrs)
{
    static const Openshell__V1__ExecSandboxRequest__EnvironmentEntry init =
        OPENSHELL__V1__EXEC_SANDBOX_REQUEST__ENVIRONMENT_ENTRY__INIT;

    req->sandbox_id = (char *)id;
    req->command = a->cmd;
    req->n_command = a->n_cmd;
    if (a->workdir != NULL)
        req->workdir = (char *)a->workdir;
    req->timeout_seconds = a->timeout_s;
    req->tty = a->tty;
    if (a->tty)
        (void)window_size(&req->cols, &req->rows);
    *entries = gw_xcalloc(a->n_env ? a->n_env : 1, sizeof(**entries));
    *ptrs = gw_xcalloc(a->n_env ? a->n_env : 1, sizeof(**ptrs));
    for (size_t i = 0; i < a->n_env; i++) {
        char *eq = strchr(a->env[i], '=');
        (*entries)[i] = init;
        /* The key is the prefix before '=': cut a copy, keep argv intact. */
        (*entries)[i].key = gw_xstrndup(a->env[i], (size_t)(eq - a->env[i]));
        (*entries)[i].value = eq + 1;
        (*ptrs)[i] = &(*entries)[i];
    }
    req->environment = *ptrs;
    req->n_environment = a->n_env;
}

/* Starts the call and sends its first messages. Returns 0 or the exit code. */
static int exec_start(struct exec *x, const Openshell__V1__ExecSandboxRequest *req)
{
    Openshell__V1__ExecSandboxInput in = OPENSHELL__V1__EXEC_SANDBOX_INPUT__INIT;
    int code;

    x->s = cli_stream_start(x->c, x->interactive ? SVC_EXEC_INTERACTIVE : SVC_EXEC,
                            &openshell__v1__exec_sandbox_event__descriptor, on_exec_msg,
                            on_exec_end, x, &code);
    if (x->s == NULL)
        return code;
    if (!x->interactive) {
        code = cli_stream_send(x->s, &req->base);
        cli_stream_close_send(x->s);
    } else {
        in.payload_case = OPENSHELL__V1__EXEC_SANDBOX_INPUT__PAYLOAD_START;
        in.start = (Openshell__V1__ExecSandboxRequest *)req;
        code = cli_stream_send(x->s, &in.base);
    }
    /* GRPC_ERR_CLOSED: the call already failed, on_end says why. */
    if (code == GRPC_ERR_TOOBIG) {
        cli_stream_cancel(x->s);
        x->s = NULL;
        return cli_fail("exec in sandbox \"%s\": the command and its environment are too large "
                        "for one request",
                        x->name);
    }
    return 0;
}

static void exec_free(struct exec *x)
{
    if (x->s != NULL)
        cli_stream_cancel(x->s);
    cli_source_free(&x->in);
    cli_sink_free(&x->out[0]);
    cli_sink_free(&x->out[1]);
}

/* The exit code once the loop returned; prints the error if there is one. */
static int exec_result(const struct exec *x)
{
    char what[300];

    if (x->signo != 0)
        return EXIT_SIGNAL_BASE + x->signo;
    if (x->pipe_closed)
        return EXIT_SIGNAL_BASE + SIGPIPE; /* what a shell shows for a closed pipe */
    snprintf(what, sizeof(what), "exec in sandbox \"%s\"", x->name);
    if (x->st.code != GRPC_STATUS_OK)
        return cli_fail_status(what, &x->st);
    if (!x->got_exit)
        return cli_fail("%s: the gateway ended the call without an exit status", what);
    return x->exit_code & 0xff;
}

/* Sets up the terminal, descriptors, stdin and signals, then runs the loop. */
static int exec_run(struct exec *x, const struct exec_args *a)
{
    bool raw = a->tty && a->stdin_on && isatty(0);

    if (cli_sink_init(&x->out[0], x->c, 1, on_output_drained, on_output_failed, x) != 0 ||
        cli_sink_init(&x->out[1], x->c, 2, on_output_drained, on_output_failed, x) != 0)
        return cli_fail("exec: cannot set up the event loop");
    if (raw && cli_std_raw() != 0)
        return cli_fail("exec: cannot put the terminal in raw mode: %s", strerror(errno));
    if (a->stdin_on)
        cli_std_nonblocking((const int[]){0, 1, 2}, 3);
    else
        cli_std_nonblocking((const int[]){1, 2}, 2);
    if (signals_install(x, raw) != 0) {
        cli_std_restore();
        return cli_fail("exec: cannot install signal handlers");
    }
    if (a->stdin_on && stdin_open(x) != 0) {
        cli_std_restore();
        return cli_fail("exec: cannot watch stdin");
    }
    cli_loop_run(x->c);
    cli_std_restore();
    return exec_result(x);
}

int cli_cmd_sandbox_exec(struct cli *c, int argc, char **argv)
{
    Openshell__V1__ExecSandboxRequest req = OPENSHELL__V1__EXEC_SANDBOX_REQUEST__INIT;
    Openshell__V1__ExecSandboxRequest__EnvironmentEntry *entries = NULL;
    Openshell__V1__ExecSandboxRequest__EnvironmentEntry **ptrs = NULL;
    struct exec_args a = {0};
    struct exec x = {.c = c};
    char *id = NULL;
    int rc = exec_parse(argc, argv, &a);

    if (rc != 0)
        goto out;
    x.name = a.name;
    x.interactive = a.stdin_on || a.tty;
    x.tty = a.tty;
    rc = cli_sandbox_id(c, a.name, &id);
    if (rc != 0)
        goto out;
    exec_request(&a, id, &req, &entries, &ptrs);
    rc = exec_start(&x, &req);
    if (rc != 0)
        goto out;
    rc = exec_run(&x, &a);
out:
    exec_free(&x);
    for (size_t i = 0; entries != NULL && i < a.n_env; i++)
        free(entries[i].key);
    free(entries);
    free(ptrs);
    free(a.env);
    free(id);
    return rc < 0 ? 0 : rc;
}
