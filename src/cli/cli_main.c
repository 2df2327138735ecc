/*
 * openshell: the command-line client. Global options (flag > environment >
 * default), the local TLS bundle defaults, then dispatch on the command
 * words to the cli_cmd_* entry points.
 */
#include "cli/cli.h"

#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "config/config.h"
#include "http2/grpc.h"

#define DEFAULT_ENDPOINT "https://127.0.0.1:17670"
#define DEFAULT_TIMEOUT  30
#define MAX_TIMEOUT      86400

typedef int (*cmd_fn)(struct cli *c, int argc, char **argv);

/* One command: up to three words, e.g. {"workspace", "member", "add"}. */
struct command {
    const char *words[3];
    cmd_fn fn;
    const char *summary;
};

static const struct command commands[] = {
    {{"gateway", "info"}, cli_cmd_gateway_info, "show the gateway's status, version and drivers"},
    {{"sandbox", "create"}, cli_cmd_sandbox_create, "create a sandbox"},
    {{"sandbox", "list"}, cli_cmd_sandbox_list, "list sandboxes"},
    {{"sandbox", "get"}, cli_cmd_sandbox_get, "show one sandbox"},
    {{"sandbox", "delete"}, cli_cmd_sandbox_delete, "delete sandboxes"},
    {{"sandbox", "stop"}, cli_cmd_sandbox_stop, "stop a sandbox"},
    {{"sandbox", "start"}, cli_cmd_sandbox_start, "start a stopped sandbox"},
    {{"sandbox", "exec"}, cli_cmd_sandbox_exec, "run a command in a sandbox"},
    {{"sandbox", "connect"}, cli_cmd_sandbox_connect, "open a shell in a sandbox over ssh"},
    {{"sandbox", "logs"}, cli_cmd_sandbox_logs, "show or follow a sandbox's logs"},
    {{"ssh-proxy"}, cli_cmd_ssh_proxy, "the ssh ProxyCommand used by 'sandbox connect'"},
    {{"events", "watch"}, cli_cmd_events_watch, "follow the lifecycle event stream"},
    {{"workspace", "create"}, cli_cmd_workspace_create, "create a workspace"},
    {{"workspace", "list"}, cli_cmd_workspace_list, "list workspaces"},
    {{"workspace", "delete"}, cli_cmd_workspace_delete, "delete a workspace"},
    {{"workspace", "member", "add"}, cli_cmd_workspace_member_add, "add a workspace member"},
    {{"workspace", "member", "remove"},
     cli_cmd_workspace_member_remove,
     "remove a workspace member"},
    {{"workspace", "member", "list"}, cli_cmd_workspace_member_list, "list workspace members"},
};

static void print_help(FILE *out)
{
    fputs("Usage: openshell [GLOBAL OPTIONS] COMMAND [ARGS...]\n"
          "\n"
          "Commands:\n",
          out);
    for (size_t i = 0; i < GW_ARRAY_LEN(commands); i++) {
        const struct command *cmd = &commands[i];
        char name[64];
        snprintf(name, sizeof(name), "%s%s%s%s%s", cmd->words[0], cmd->words[1] ? " " : "",
                 cmd->words[1] ? cmd->words[1] : "", cmd->words[2] ? " " : "",
                 cmd->words[2] ? cmd->words[2] : "");
        fprintf(out, "  %-25s %s\n", name, cmd->summary);
    }
    fputs("\n"
          "Global options (before the command):\n"
          "  -g, --gateway URL     https://HOST:PORT, http://HOST:PORT (h2c) or unix:/PATH\n"
          "                        [$OPENSHELL_GATEWAY_ENDPOINT, default " DEFAULT_ENDPOINT "]\n"
          "      --tls-ca FILE     CA that signed the gateway's certificate\n"
          "                        [$OPENSHELL_TLS_CA, default <bundle>/ca.crt if present,\n"
          "                        else the system trust store]\n"
          "      --tls-cert FILE   client certificate for mTLS\n"
          "                        [$OPENSHELL_TLS_CERT, default <bundle>/client/tls.crt]\n"
          "      --tls-key FILE    client key [$OPENSHELL_TLS_KEY, default "
          "<bundle>/client/tls.key]\n"
          "      --token TOKEN     sent as 'authorization: Bearer TOKEN' [$OPENSHELL_TOKEN]\n"
          "  -w, --workspace NAME  workspace [$OPENSHELL_WORKSPACE, default: the gateway's]\n"
          "  -o, --output FORMAT   table or json [$OPENSHELL_OUTPUT, default table]\n"
          "      --timeout SECS    deadline of each unary call [$OPENSHELL_TIMEOUT, default 30]\n"
          "  -h, --help            this help; 'openshell COMMAND --help' for a command\n"
          "      --version         print the version\n"
          "\n"
          "<bundle> is the local TLS directory written by 'openshell-gateway generate-certs'\n"
          "($OPENSHELL_LOCAL_TLS_DIR, else /var/lib/openshell/tls for root, else\n"
          "$XDG_STATE_HOME/openshell/tls).\n"
          "\n"
          "Exit codes: 0 ok, 1 local failure, 2 usage error, 10 + gRPC status for a failed\n"
          "call (15 NOT_FOUND, 24 UNAVAILABLE or gateway unreachable, 26 UNAUTHENTICATED).\n",
          out);
}

/* Help for a command group ("openshell sandbox"): its subcommands. */
static void print_group_help(const char *w0, const char *w1, FILE *out)
{
    fprintf(out, "Usage: openshell %s%s%s SUBCOMMAND [ARGS...]\n\nSubcommands:\n", w0,
            w1 ? " " : "", w1 ? w1 : "");
    for (size_t i = 0; i < GW_ARRAY_LEN(commands); i++) {
        const struct command *cmd = &commands[i];
        const char *sub;
        if (strcmp(cmd->words[0], w0) != 0)
            continue;
        if (w1 != NULL && (cmd->words[1] == NULL || strcmp(cmd->words[1], w1) != 0))
            continue;
        sub = w1 != NULL ? cmd->words[2] : cmd->words[1];
        if (w1 == NULL && cmd->words[2] != NULL) {
            if (i > 0 && commands[i - 1].words[2] != NULL &&
                strcmp(commands[i - 1].words[1], cmd->words[1]) == 0)
                continue;
            fprintf(out, "  %-18s %s commands\n", cmd->words[1], cmd->words[1]);
            continue;
        }
        if (sub != NULL)
            fprintf(out, "  %-18s %s\n", sub, cmd->summary);
    }
    fprintf(out, "\nRun 'openshell %s%s%s SUBCOMMAND --help' for its options.\n", w0, w1 ? " " : "",
            w1 ? w1 : "");
}

/* ---- global options ------------------------------------------------------- */

struct globals {
    struct cli_opts o;
    char *bundle_ca, *bundle_cert, *bundle_key; /* owned */
    char self[PATH_MAX];
};

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);

    return v != NULL && v[0] != '\0' ? v : dflt;
}

static bool file_exists(const char *path)
{
    return access(path, R_OK) == 0;
}

/* Fills the TLS files the user left unset from the local bundle. */
static void apply_bundle(struct globals *g)
{
    char *dir = config_local_tls_dir();

    if (dir == NULL)
        return;
    if (g->o.ca == NULL) {
        g->bundle_ca = gw_xasprintf("%s/ca.crt", dir);
        if (file_exists(g->bundle_ca))
            g->o.ca = g->bundle_ca;
    }
    if (g->o.cert == NULL && g->o.key == NULL) {
        g->bundle_cert = gw_xasprintf("%s/client/tls.crt", dir);
        g->bundle_key = gw_xasprintf("%s/client/tls.key", dir);
        if (file_exists(g->bundle_cert) && file_exists(g->bundle_key)) {
            g->o.cert = g->bundle_cert;
            g->o.key = g->bundle_key;
        }
    }
    free(dir);
}

static int parse_timeout(const char *s, unsigned *out)
{
    char *end;
    unsigned long v;

    if (s[0] < '0' || s[0] > '9')
        return -1;
    v = strtoul(s, &end, 10);
    if (*end != '\0' || v < 1 || v > MAX_TIMEOUT)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int parse_output(const char *s, bool *json)
{
    if (strcmp(s, "table") == 0)
        *json = false;
    else if (strcmp(s, "json") == 0)
        *json = true;
    else
        return -1;
    return 0;
}

/* Environment first, so flags parsed afterwards override it. */
static int globals_from_env(struct globals *g)
{
    const char *v;

    g->o.endpoint = env_or("OPENSHELL_GATEWAY_ENDPOINT", DEFAULT_ENDPOINT);
    g->o.ca = env_or("OPENSHELL_TLS_CA", NULL);
    g->o.cert = env_or("OPENSHELL_TLS_CERT", NULL);
    g->o.key = env_or("OPENSHELL_TLS_KEY", NULL);
    g->o.token = env_or("OPENSHELL_TOKEN", NULL);
    g->o.workspace = env_or("OPENSHELL_WORKSPACE", "");
    g->o.timeout_s = DEFAULT_TIMEOUT;
    v = env_or("OPENSHELL_OUTPUT", NULL);
    if (v != NULL && parse_output(v, &g->o.json) != 0)
        return cli_usage(NULL, "OPENSHELL_OUTPUT must be 'table' or 'json', not '%s'", v);
    v = env_or("OPENSHELL_TIMEOUT", NULL);
    if (v != NULL && parse_timeout(v, &g->o.timeout_s) != 0)
        return cli_usage(NULL, "OPENSHELL_TIMEOUT must be 1..%d seconds, not '%s'", MAX_TIMEOUT, v);
    return 0;
}

enum { OPT_TLS_CA = 256, OPT_TLS_CERT, OPT_TLS_KEY, OPT_TOKEN, OPT_TIMEOUT, OPT_VERSION };

static const struct option global_longopts[] = {
    {"gateway", required_argument, NULL, 'g'},
    {"tls-ca", required_argument, NULL, OPT_TLS_CA},
    {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
    {"tls-key", required_argument, NULL, OPT_TLS_KEY},
    {"token", required_argument, NULL, OPT_TOKEN},
    {"workspace", required_argument, NULL, 'w'},
    {"output", required_argument, NULL, 'o'},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

/* Handles one parsed global option. Returns -1 to go on, else an exit code. */
static int global_opt(struct globals *g, int ch, const char *arg)
{
    switch (ch) {
    case 'g':
        g->o.endpoint = arg;
        return -1;
    case OPT_TLS_CA:
        g->o.ca = arg;
        return -1;
    case OPT_TLS_CERT:
        g->o.cert = arg;
        return -1;
    case OPT_TLS_KEY:
        g->o.key = arg;
        return -1;
    case OPT_TOKEN:
        g->o.token = arg;
        return -1;
    case 'w':
        g->o.workspace = arg;
        return -1;
    case 'o':
        if (parse_output(arg, &g->o.json) != 0)
            return cli_usage(NULL, "--output must be 'table' or 'json', not '%s'", arg);
        return -1;
    case OPT_TIMEOUT:
        if (parse_timeout(arg, &g->o.timeout_s) != 0)
            return cli_usage(NULL, "--timeout must be 1..%d seconds, not '%s'", MAX_TIMEOUT, arg);
        return -1;
    case 'h':
        print_help(stdout);
        return 0;
    case OPT_VERSION:
        printf("openshell %s\n", PACKAGE_VERSION);
        return 0;
    default:
        return CLI_EXIT_USAGE;
    }
}

/* Parses the options before the command words; *first is the index of the
 * first command word. Returns -1 to go on, else an exit code. */
static int parse_globals(struct globals *g, int argc, char **argv, int *first)
{
    int ch, rc;

    rc = globals_from_env(g);
    if (rc != 0)
        return rc;
    opterr = 0;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "+:g:w:o:h", global_longopts, NULL)) != -1) {
        if (ch == '?')
            return cli_usage(NULL, "unknown option '%s'", argv[optind - 1]);
        if (ch == ':')
            return cli_usage(NULL, "option '%s' needs a value", argv[optind - 1]);
        rc = global_opt(g, ch, optarg);
        if (rc >= 0)
            return rc;
    }
    *first = optind;
    return -1;
}

/* ---- dispatch ---------------------------------------------------------------- */

/* Finds the command named by argv[first...]; sets *nwords. NULL when none. */
static const struct command *find_command(int argc, char **argv, int first, int *nwords)
{
    const struct command *best = NULL;

    for (size_t i = 0; i < GW_ARRAY_LEN(commands); i++) {
        const struct command *cmd = &commands[i];
        int n = 0;
        while (n < 3 && cmd->words[n] != NULL && first + n < argc &&
               strcmp(cmd->words[n], argv[first + n]) == 0)
            n++;
        if (n < 3 && cmd->words[n] != NULL)
            continue;
        best = cmd;
        *nwords = n;
        break;
    }
    return best;
}

/* No full command: a bare or --help group word gets its help, anything else
 * is a usage error. */
static int unknown_command(int argc, char **argv, int first)
{
    const char *w0 = argv[first];
    const char *w1 = first + 1 < argc ? argv[first + 1] : NULL;
    const char *w2 = first + 2 < argc ? argv[first + 2] : NULL;
    bool group = false, sub_group = false;

    for (size_t i = 0; i < GW_ARRAY_LEN(commands); i++) {
        if (strcmp(commands[i].words[0], w0) != 0)
            continue;
        group = true;
        if (w1 != NULL && commands[i].words[2] != NULL && strcmp(commands[i].words[1], w1) == 0)
            sub_group = true;
    }
    if (!group)
        return cli_usage(NULL, "unknown command '%s'", w0);
    if (sub_group) {
        if (w2 == NULL || strcmp(w2, "--help") == 0 || strcmp(w2, "-h") == 0) {
            print_group_help(w0, w1, w2 == NULL ? stderr : stdout);
            return w2 == NULL ? CLI_EXIT_USAGE : 0;
        }
        char grp[128];
        snprintf(grp, sizeof(grp), "%s %s", w0, w1);
        return cli_usage(grp, "unknown command '%s %s %s'", w0, w1, w2);
    }
    if (w1 == NULL || strcmp(w1, "--help") == 0 || strcmp(w1, "-h") == 0) {
        print_group_help(w0, NULL, w1 == NULL ? stderr : stdout);
        return w1 == NULL ? CLI_EXIT_USAGE : 0;
    }
    return cli_usage(w0, "unknown command '%s %s'", w0, w1);
}

/* Logs of the libraries underneath stay out of the CLI's output unless
 * OPENSHELL_LOG_LEVEL asks for them (debugging). */
static void setup_logging(void)
{
    const char *lvl = getenv("OPENSHELL_LOG_LEVEL");
    enum log_level l;
    int fd;

    if (lvl != NULL && log_level_parse(lvl, &l) == 0) {
        log_set_level(l);
        return;
    }
    log_set_level(LOG_ERROR);
    fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (fd >= 0)
        log_set_fd(fd);
}

int main(int argc, char **argv)
{
    struct globals g;
    const struct command *cmd;
    struct cli *c;
    char err[256];
    int first = 0, nwords = 0, rc;
    struct grpc_endpoint ep;
    ssize_t n;

    memset(&g, 0, sizeof(g));
    setup_logging();
    rc = parse_globals(&g, argc, argv, &first);
    if (rc >= 0)
        goto out;
    if (first >= argc) {
        print_help(stderr);
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    cmd = find_command(argc, argv, first, &nwords);
    if (cmd == NULL) {
        rc = unknown_command(argc, argv, first);
        goto out;
    }
    if (grpc_endpoint_parse(g.o.endpoint, &ep, err, sizeof(err)) != 0) {
        rc = cli_usage(NULL, "invalid gateway URL '%s': %s", g.o.endpoint, err);
        goto out;
    }
    if ((g.o.cert == NULL) != (g.o.key == NULL)) {
        rc = cli_usage(NULL, "--tls-cert and --tls-key go together");
        goto out;
    }
    if (ep.tls)
        apply_bundle(&g);
    n = readlink("/proc/self/exe", g.self, sizeof(g.self) - 1);
    if (n > 0)
        g.self[n] = '\0';
    else
        snprintf(g.self, sizeof(g.self), "%s", argv[0]);
    g.o.self = g.self;
    c = cli_new(&g.o);
    /* argv[0] of the command is its last word; its arguments follow. */
    rc = cmd->fn(c, argc - (first + nwords - 1), argv + first + nwords - 1);
    cli_free(c);
out:
    free(g.bundle_ca);
    free(g.bundle_cert);
    free(g.bundle_key);
    fflush(stdout);
    return rc;
}
