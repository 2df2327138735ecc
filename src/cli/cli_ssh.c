/*
 * cli_ssh: `openshell sandbox connect NAME [-- COMMAND...]` and
 * `openshell ssh-proxy --sandbox-id ID --token TOKEN`.
 *
 * connect asks the gateway for an SSH session token (CreateSshSession) and
 * runs the system ssh as a child with a ProxyCommand that is this binary's
 * ssh-proxy, repeating the global connection options. ssh inherits the
 * terminal; we wait on the loop (keeping our gateway connection alive for
 * the RevokeSshSession that follows) and exit with ssh's status.
 *
 * ssh-proxy bridges stdin/stdout to ForwardTcp: stdin becomes data frames
 * (at most 64 KiB each), data frames go to stdout, end of stdin half-closes
 * the call. Flow control both ways: stdin is not read while the call is
 * congested, and the stream is paused while stdout holds unwritten bytes, so
 * memory stays bounded whatever the speeds of the two sides.
 */
#include "cli/cli.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "http2/grpc.h"
#include "openshell.pb-c.h"
#include "reactor/reactor.h"

#define SVC_CREATE_SSH   "/openshell.v1.OpenShell/CreateSshSession"
#define SVC_REVOKE_SSH   "/openshell.v1.OpenShell/RevokeSshSession"
#define SVC_FORWARD_TCP  "/openshell.v1.OpenShell/ForwardTcp"
#define DEFAULT_SSH      "/usr/bin/ssh"
#define SSH_USER         "sandbox"
#define EXIT_SIGNAL_BASE 128 /* exit code after a fatal signal: 128 + signo */

extern char **environ;

/* ---- shell quoting for the ProxyCommand --------------------------------------- */

/* Appends |s| as one POSIX shell word. ssh expands %-tokens in a
 * ProxyCommand before the shell sees it, so '%' is doubled as well. */
static void append_word(struct gw_buf *b, const char *s)
{
    static const char safe[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                               "0123456789_./:@=+,-";
    bool plain = s[0] != '\0' && strspn(s, safe) == strlen(s);

    if (b->len > 0)
        gw_buf_append(b, " ", 1);
    if (!plain)
        gw_buf_append(b, "'", 1);
    for (const char *p = s; *p != '\0'; p++) {
        if (*p == '\'')
            gw_buf_append(b, "'\\''", 4);
        else if (*p == '%')
            gw_buf_append(b, "%%", 2);
        else
            gw_buf_append(b, p, 1);
    }
    if (!plain)
        gw_buf_append(b, "'", 1);
}

/* Appends |s| as one shell word for the remote command line (no %-tokens
 * there: sshd hands the string to the user's shell as is). */
static void append_remote_word(struct gw_buf *b, const char *s)
{
    static const char safe[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                               "0123456789_./:@=+,-";

    if (b->len > 0)
        gw_buf_append(b, " ", 1);
    if (s[0] != '\0' && strspn(s, safe) == strlen(s)) {
        gw_buf_append(b, s, strlen(s));
        return;
    }
    gw_buf_append(b, "'", 1);
    for (const char *p = s; *p != '\0'; p++) {
        if (*p == '\'')
            gw_buf_append(b, "'\\''", 4);
        else
            gw_buf_append(b, p, 1);
    }
    gw_buf_append(b, "'", 1);
}

/* "ProxyCommand=<self> --gateway URL [tls] [--token T] ssh-proxy --sandbox-id ID --token TOK". */
static char *proxy_command(const struct cli_opts *o, const char *id, const char *token)
{
    struct gw_buf b = {0};
    char *out;

    append_word(&b, o->self);
    append_word(&b, "--gateway");
    append_word(&b, o->endpoint);
    if (o->ca != NULL) {
        append_word(&b, "--tls-ca");
        append_word(&b, o->ca);
    }
    if (o->cert != NULL) {
        append_word(&b, "--tls-cert");
        append_word(&b, o->cert);
    }
    if (o->key != NULL) {
        append_word(&b, "--tls-key");
        append_word(&b, o->key);
    }
    if (o->token != NULL && o->token[0] != '\0') {
        append_word(&b, "--token");
        append_word(&b, o->token);
    }
    append_word(&b, "ssh-proxy");
    append_word(&b, "--sandbox-id");
    append_word(&b, id);
    append_word(&b, "--token");
    append_word(&b, token);
    out = gw_xasprintf("ProxyCommand=%s", gw_buf_cstr(&b));
    gw_buf_free(&b);
    return out;
}

/* ---- connect --------------------------------------------------------------- */

static const char connect_help[] =
    "usage: openshell sandbox connect NAME [-- COMMAND [ARG...]]\n"
    "\n"
    "Opens an SSH session to the sandbox NAME with the system ssh (/usr/bin/ssh,\n"
    "or $OPENSHELL_SSH), tunnelled through the gateway by `openshell ssh-proxy`.\n"
    "Without COMMAND: an interactive shell (a terminal is allocated when stdin\n"
    "is one). With COMMAND: runs it without a terminal; each ARG reaches it as\n"
    "one argument (use `-- sh -c '...'` for shell syntax). Exits with ssh's\n"
    "status; the session token is revoked afterwards.\n"
    "\n"
    "  -h, --help   this text\n";

struct connect_run {
    struct cli *c;
    struct reactor_child *child;
    int status;  /* raw waitpid status */
    bool exited; /* the child was reaped */
};

/* The ssh program: $OPENSHELL_SSH (a path, or a name looked up in $PATH) or
 * /usr/bin/ssh. Returns a heap path, or NULL when nothing executable is found. */
static char *ssh_program(void)
{
    const char *want = getenv("OPENSHELL_SSH");
    const char *path = getenv("PATH");

    if (want == NULL || want[0] == '\0')
        want = DEFAULT_SSH;
    if (strchr(want, '/') != NULL)
        return access(want, X_OK) == 0 ? gw_xstrdup(want) : NULL;
    for (const char *p = path != NULL ? path : "/usr/bin:/bin"; *p != '\0';) {
        size_t n = strcspn(p, ":");
        char *cand = gw_xasprintf("%.*s/%s", (int)(n > 0 ? n : 1), n > 0 ? p : ".", want);
        if (access(cand, X_OK) == 0)
            return cand;
        free(cand);
        p += n;
        if (*p == ':')
            p++;
    }
    return NULL;
}

/* The environment for ssh: ours with SHELL=/bin/sh, because ssh runs the
 * ProxyCommand with $SHELL -c and the quoting above is POSIX sh's. The
 * array is heap-allocated; its strings are borrowed from environ. */
static const char **ssh_environ(void)
{
    size_t n = 0;
    size_t k = 0;
    const char **env;

    while (environ[n] != NULL)
        n++;
    env = gw_xcalloc(n + 2, sizeof(*env));
    for (size_t i = 0; i < n; i++) {
        if (strncmp(environ[i], "SHELL=", 6) != 0)
            env[k++] = environ[i];
    }
    env[k++] = "SHELL=/bin/sh";
    env[k] = NULL;
    return env;
}

/* ssh's argv (heap array; strings owned by the caller or static). */
static const char **ssh_argv(const char *prog, const char *proxy, const char *host, bool tty,
                             const char *remote)
{
    static const char *const fixed[] = {
        "-o", "StrictHostKeyChecking=no",       "-o", "UserKnownHostsFile=/dev/null",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-o", "ServerAliveInterval=15",         "-o", "ServerAliveCountMax=3",
    };
    const char **argv = gw_xcalloc(GW_ARRAY_LEN(fixed) + 12, sizeof(*argv));
    size_t n = 0;

    argv[n++] = prog;
    argv[n++] = "-o";
    argv[n++] = proxy;
    for (size_t i = 0; i < GW_ARRAY_LEN(fixed); i++)
        argv[n++] = fixed[i];
    if (remote != NULL)
        argv[n++] = "-T";
    else if (tty)
        argv[n++] = "-tt";
    argv[n++] = "-l";
    argv[n++] = SSH_USER;
    argv[n++] = "--"; /* the host and the command are never taken for options */
    argv[n++] = host;
    if (remote != NULL)
        argv[n++] = remote;
    argv[n] = NULL;
    return argv;
}

static void on_ssh_exit(struct reactor_child *child, pid_t pid, int status, void *arg)
{
    struct connect_run *r = arg;

    (void)child;
    (void)pid;
    r->child = NULL;
    r->status = status;
    r->exited = true;
    cli_loop_exit(r->c);
}

/* SIGINT/SIGQUIT: ssh (in our process group) gets them from the terminal
 * and decides; we only stay alive to revoke the token. SIGTERM/SIGHUP sent
 * to us alone are passed on to ssh. Caught rather than ignored: caught
 * dispositions reset to default in the child, so ssh stays interruptible. */
static void on_connect_signal(int signo, void *arg)
{
    struct connect_run *r = arg;

    if ((signo == SIGTERM || signo == SIGHUP) && r->child != NULL)
        (void)reactor_child_kill(r->child, signo);
}

/* Runs ssh and waits for it on the loop. Returns its exit code. */
static int run_ssh(struct cli *c, const char *const *argv, const char *const *envp)
{
    static const int sigs[] = {SIGINT, SIGQUIT, SIGTERM, SIGHUP};
    struct connect_run r = {.c = c};
    struct reactor_spawn_opts so = {
        .argv = argv,
        .envp = envp,
        .stdout_fd = -1,
        .stderr_fd = -1,
    };

    for (size_t i = 0; i < GW_ARRAY_LEN(sigs); i++) {
        if (reactor_on_signal(cli_reactor(c), sigs[i], on_connect_signal, &r) != 0)
            return cli_fail("connect: cannot install signal handlers");
    }
    if (reactor_spawn(cli_reactor(c), &so, on_ssh_exit, &r, &r.child) != 0)
        return cli_fail("connect: cannot start %s: %s", argv[0], strerror(errno));
    while (!r.exited)
        cli_loop_run(c);
    if (WIFEXITED(r.status))
        return WEXITSTATUS(r.status);
    if (WIFSIGNALED(r.status))
        return EXIT_SIGNAL_BASE + WTERMSIG(r.status);
    return CLI_EXIT_FAIL;
}

/* Revokes |token|; a failure is reported but does not change the exit code. */
static void revoke_session(struct cli *c, const char *token)
{
    Openshell__V1__RevokeSshSessionRequest req = OPENSHELL__V1__REVOKE_SSH_SESSION_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    struct cli_status st;

    req.token = (char *)token;
    if (cli_unary_status(c, SVC_REVOKE_SSH, &req.base,
                         &openshell__v1__revoke_ssh_session_response__descriptor, &resp,
                         &st) != 0) {
        (void)cli_fail_status("revoke the SSH session token", &st);
        return;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
}

/* CreateSshSession for |id|. Returns 0 with *token (caller frees) or the exit code. */
static int create_session(struct cli *c, const char *name, const char *id, char **token)
{
    Openshell__V1__CreateSshSessionRequest req = OPENSHELL__V1__CREATE_SSH_SESSION_REQUEST__INIT;
    Openshell__V1__CreateSshSessionResponse *resp = NULL;
    char what[300];
    int rc;

    *token = NULL;
    req.sandbox_id = (char *)id;
    snprintf(what, sizeof(what), "open an SSH session to sandbox \"%s\"", name);
    rc = cli_unary(c, SVC_CREATE_SSH, &req.base,
                   &openshell__v1__create_ssh_session_response__descriptor,
                   (ProtobufCMessage **)&resp, what);
    if (rc != 0)
        return rc;
    if (resp->token[0] == '\0') {
        protobuf_c_message_free_unpacked(&resp->base, NULL);
        return cli_fail("%s: the gateway returned no session token", what);
    }
    *token = gw_xstrdup(resp->token);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return 0;
}

/* Parses argv into |name| and the remote command (NULL without one).
 * Returns 0, -1 after --help, or the usage exit code. */
static int connect_parse(int argc, char **argv, const char **name, char **remote)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int dd = argc;
    int ch;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            dd = i;
            break;
        }
    }
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(dd, argv, ":h", longopts, NULL)) != -1) {
        if (ch != 'h')
            return cli_bad_option("sandbox connect", ch, argv);
        fputs(connect_help, stdout);
        return -1;
    }
    if (optind >= dd)
        return cli_usage("sandbox connect", "missing the sandbox NAME");
    if (dd - optind > 1)
        return cli_usage("sandbox connect", "unexpected argument '%s' (a command goes after '--')",
                         argv[optind + 1]);
    *name = argv[optind];
    *remote = NULL;
    if (dd < argc && dd + 1 == argc)
        return cli_usage("sandbox connect", "missing the COMMAND after '--'");
    if (dd + 1 < argc) {
        struct gw_buf b = {0};
        for (int i = dd + 1; i < argc; i++)
            append_remote_word(&b, argv[i]);
        *remote = gw_xstrdup(gw_buf_cstr(&b));
        gw_buf_free(&b);
    }
    return 0;
}

/* What connect needs locally, checked before any call: the ssh program
 * (*prog, caller frees) and our own absolute path. Returns 0 or the exit code. */
static int connect_local_checks(struct cli *c, char **prog)
{
    const char *want = getenv("OPENSHELL_SSH");

    *prog = ssh_program();
    if (*prog == NULL)
        return cli_fail("cannot run %s: no such executable; install openssh-client or set "
                        "OPENSHELL_SSH",
                        want != NULL && want[0] != '\0' ? want : DEFAULT_SSH);
    if (cli_opts(c)->self == NULL || cli_opts(c)->self[0] != '/')
        return cli_fail("connect: cannot tell the absolute path of this program for the ssh "
                        "ProxyCommand");
    return 0;
}

int cli_cmd_sandbox_connect(struct cli *c, int argc, char **argv)
{
    const char *name = NULL;
    char *remote = NULL;
    char *id = NULL;
    char *token = NULL;
    char *prog = NULL;
    char *proxy = NULL;
    char *host = NULL;
    const char **sargv = NULL;
    const char **senv = NULL;
    int rc = connect_parse(argc, argv, &name, &remote);

    if (rc != 0)
        goto out;
    rc = connect_local_checks(c, &prog);
    if (rc != 0)
        goto out;
    rc = cli_sandbox_id(c, name, &id);
    if (rc != 0)
        goto out;
    rc = create_session(c, name, id, &token);
    if (rc != 0)
        goto out;
    proxy = proxy_command(cli_opts(c), id, token);
    host = gw_xasprintf("openshell-%s", name);
    sargv = ssh_argv(prog, proxy, host, isatty(0), remote);
    senv = ssh_environ();
    rc = run_ssh(c, sargv, senv);
    revoke_session(c, token);
out:
    free(senv);
    free(sargv);
    free(host);
    free(proxy);
    free(prog);
    free(token);
    free(id);
    free(remote);
    return rc < 0 ? 0 : rc;
}

/* ---- ssh-proxy ------------------------------------------------------------------ */

static const char proxy_help[] =
    "usage: openshell ssh-proxy --sandbox-id ID --token TOKEN\n"
    "\n"
    "The ProxyCommand that `openshell sandbox connect` gives ssh: bridges stdin\n"
    "and stdout to the sandbox's SSH server through the gateway (ForwardTcp),\n"
    "authorized by an SSH session TOKEN from CreateSshSession.\n"
    "\n"
    "  --sandbox-id ID   the sandbox's id (not its name)\n"
    "  --token TOKEN     the SSH session token\n"
    "  -h, --help        this text\n";

struct proxy {
    struct cli *c;
    struct cli_stream *s; /* NULL once ended or cancelled */
    struct cli_source in; /* stdin */
    struct cli_sink out;  /* stdout */
    bool paused;          /* the stream is paused until |out| drained */
    bool ended;           /* on_end ran */
    int signo;            /* the signal that ended us, or 0 */
    struct cli_status st;
};

static void proxy_stop(struct proxy *p)
{
    if (p->s != NULL) {
        cli_stream_cancel(p->s);
        p->s = NULL;
    }
    cli_source_enable(&p->in, false);
    cli_loop_exit(p->c);
}

/* stdout failed for good: ssh is gone or the descriptor is broken. */
static void on_proxy_out_failed(struct cli_sink *o, void *arg)
{
    (void)o;
    proxy_stop(arg);
}

static void on_proxy_out_drained(struct cli_sink *o, void *arg)
{
    struct proxy *p = arg;

    (void)o;
    if (p->ended) {
        cli_loop_exit(p->c);
        return;
    }
    if (p->paused && p->s != NULL) {
        p->paused = false;
        cli_stream_pause(p->s, false);
    }
}

static void on_proxy_msg(struct cli_stream *s, const ProtobufCMessage *msg, void *arg)
{
    const Openshell__V1__TcpForwardFrame *f = (const Openshell__V1__TcpForwardFrame *)msg;
    struct proxy *p = arg;

    (void)s;
    if (f->payload_case != OPENSHELL__V1__TCP_FORWARD_FRAME__PAYLOAD_DATA)
        return;
    /* What stdout does not take is held and the stream paused until
     * on_proxy_out_drained. */
    if (cli_sink_write(&p->out, f->data.data, f->data.len, false) && !p->paused && p->s != NULL) {
        p->paused = true;
        cli_stream_pause(p->s, true);
    }
}

static void on_proxy_end(struct cli_stream *s, const struct cli_status *st, void *arg)
{
    struct proxy *p = arg;

    (void)s;
    p->s = NULL;
    p->ended = true;
    p->st = *st;
    cli_source_enable(&p->in, false);
    if (cli_sink_held(&p->out) == 0)
        cli_loop_exit(p->c);
}

/* A chunk of stdin becomes a data frame; false when the call is congested
 * (on_proxy_writable resumes) or gone (on_end follows). */
static bool on_proxy_stdin(void *arg, const uint8_t *data, size_t len)
{
    Openshell__V1__TcpForwardFrame f = OPENSHELL__V1__TCP_FORWARD_FRAME__INIT;
    struct proxy *p = arg;

    if (p->s == NULL)
        return false;
    f.payload_case = OPENSHELL__V1__TCP_FORWARD_FRAME__PAYLOAD_DATA;
    f.data.data = (uint8_t *)data;
    f.data.len = len;
    return cli_stream_send(p->s, &f.base) == GRPC_SEND_OK;
}

/* End of stdin half-closes the call. */
static void on_proxy_stdin_eof(void *arg)
{
    struct proxy *p = arg;

    if (p->s != NULL)
        cli_stream_close_send(p->s);
}

static void on_proxy_writable(struct cli_stream *s, void *arg)
{
    struct proxy *p = arg;

    (void)s;
    cli_source_enable(&p->in, true);
}

static void on_proxy_signal(int signo, void *arg)
{
    struct proxy *p = arg;

    p->signo = signo;
    proxy_stop(p);
}

/* Events for stdin/stdout and the signals. Returns 0 or -1. */
static int proxy_setup(struct proxy *p)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};

    if (cli_sink_init(&p->out, p->c, 1, on_proxy_out_drained, on_proxy_out_failed, p) != 0 ||
        cli_source_open(&p->in, p->c, 0, on_proxy_stdin, on_proxy_stdin_eof, p) != 0)
        return -1;
    for (size_t i = 0; i < GW_ARRAY_LEN(sigs); i++) {
        if (reactor_on_signal(cli_reactor(p->c), sigs[i], on_proxy_signal, p) != 0)
            return -1;
    }
    return 0;
}

/* Opens ForwardTcp and sends the init frame. Returns 0 or the exit code. */
static int proxy_start(struct proxy *p, const char *id, const char *token)
{
    Openshell__V1__TcpForwardFrame f = OPENSHELL__V1__TCP_FORWARD_FRAME__INIT;
    Openshell__V1__TcpForwardInit init = OPENSHELL__V1__TCP_FORWARD_INIT__INIT;
    Openshell__V1__SshRelayTarget ssh = OPENSHELL__V1__SSH_RELAY_TARGET__INIT;
    int code;

    p->s = cli_stream_start(p->c, SVC_FORWARD_TCP, &openshell__v1__tcp_forward_frame__descriptor,
                            on_proxy_msg, on_proxy_end, p, &code);
    if (p->s == NULL)
        return code;
    init.sandbox_id = (char *)id;
    init.authorization_token = (char *)token;
    init.target_case = OPENSHELL__V1__TCP_FORWARD_INIT__TARGET_SSH;
    init.ssh = &ssh;
    f.payload_case = OPENSHELL__V1__TCP_FORWARD_FRAME__PAYLOAD_INIT;
    f.init = &init;
    /* A few bytes on a fresh call: GRPC_ERR_CLOSED would mean it already
     * ended, and on_end reports that. */
    if (cli_stream_send(p->s, &f.base) < 0)
        return 0;
    cli_stream_set_writable(p->s, on_proxy_writable);
    cli_source_enable(&p->in, true);
    return 0;
}

static int proxy_parse(int argc, char **argv, const char **id, const char **token)
{
    static const struct option longopts[] = {
        {"sandbox-id", required_argument, NULL, 's'},
        {"token", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;

    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (ch) {
        case 's':
            *id = optarg;
            break;
        case 't':
            *token = optarg;
            break;
        case 'h':
            fputs(proxy_help, stdout);
            return -1;
        default:
            return cli_bad_option("ssh-proxy", ch, argv);
        }
    }
    if (optind < argc)
        return cli_usage("ssh-proxy", "unexpected argument '%s'", argv[optind]);
    if (*id == NULL || (*id)[0] == '\0')
        return cli_usage("ssh-proxy", "--sandbox-id is required");
    if (*token == NULL || (*token)[0] == '\0')
        return cli_usage("ssh-proxy", "--token is required");
    return 0;
}

/* The exit code after the loop; prints the error if there is one. */
static int proxy_result(const struct proxy *p, const char *id)
{
    char what[300];

    if (p->signo != 0)
        return EXIT_SIGNAL_BASE + p->signo;
    if (p->out.err == EPIPE)
        return CLI_EXIT_OK; /* ssh closed its end: it has what it wanted */
    if (p->out.err != 0)
        return cli_fail("ssh-proxy: writing to stdout: %s", strerror(p->out.err));
    snprintf(what, sizeof(what), "forward to sandbox %s", id);
    if (p->st.code != GRPC_STATUS_OK)
        return cli_fail_status(what, &p->st);
    return CLI_EXIT_OK;
}

int cli_cmd_ssh_proxy(struct cli *c, int argc, char **argv)
{
    struct proxy p = {.c = c};
    const char *id = NULL;
    const char *token = NULL;
    int rc = proxy_parse(argc, argv, &id, &token);

    if (rc != 0)
        return rc < 0 ? 0 : rc;
    if (proxy_setup(&p) != 0) {
        rc = cli_fail("ssh-proxy: cannot set up the event loop");
        goto out;
    }
    rc = proxy_start(&p, id, token);
    if (rc != 0)
        goto out;
    /* The flags may be shared with a terminal when run by hand: put back. */
    cli_std_nonblocking((const int[]){0, 1}, 2);
    cli_loop_run(c);
    cli_std_restore();
    rc = proxy_result(&p, id);
out:
    if (p.s != NULL)
        cli_stream_cancel(p.s);
    cli_source_free(&p.in);
    cli_sink_free(&p.out);
    return rc;
}
