/*
 * cli_logs: `openshell sandbox logs NAME [-f] [--tail N] [--since-ms MS]
 * [--source S]... [--level L]`.
 *
 * Without -f one GetSandboxLogs call returns the last N buffered lines
 * (oldest first). With -f a WatchSandbox stream (follow_logs) replays the
 * last N lines and then delivers new ones as they are logged, until the
 * sandbox is deleted (the stream ends OK), the call fails, or a signal.
 *
 * Table output is one line per log line, `TIME LEVEL SOURCE MESSAGE`, with
 * fixed-width columns so a followed stream stays aligned; -o json prints
 * each SandboxLogLine as one JSON object per line.
 */
#include "cli/cli.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http2/grpc.h"
#include "openshell.pb-c.h"
#include "reactor/reactor.h"

#define SVC_GET_LOGS     "/openshell.v1.OpenShell/GetSandboxLogs"
#define SVC_WATCH        "/openshell.v1.OpenShell/WatchSandbox"
#define DEFAULT_TAIL     100
#define ALL_LINES        2000 /* the gateway keeps at most this many lines per sandbox */
#define EXIT_SIGNAL_BASE 128  /* exit code after a fatal signal: 128 + signo */
#define TIME_WIDTH       24   /* "2024-05-01T12:00:00.123Z" */
#define LEVEL_WIDTH      5
#define SOURCE_WIDTH     7

struct logs_args {
    const char *name;
    bool follow;
    uint32_t tail;
    int64_t since_ms;
    char **sources; /* borrowed from argv */
    size_t n_sources;
    const char *level;
};

static const char logs_help[] =
    "usage: openshell sandbox logs NAME [-f|--follow] [--tail N] [--since-ms MS]\n"
    "                              [--source S]... [--level L]\n"
    "\n"
    "Prints the sandbox's buffered log lines, oldest first, as\n"
    "`TIME LEVEL SOURCE MESSAGE` (-o json: one JSON object per line).\n"
    "\n"
    "  -f, --follow      keep printing new lines until interrupted or the\n"
    "                    sandbox is deleted\n"
    "      --tail N      the last N lines (default 100; 0 = all the gateway keeps)\n"
    "      --since-ms MS only lines at or after MS (milliseconds since the epoch)\n"
    "      --source S    only lines from source S (gateway, sandbox); repeatable\n"
    "      --level L     only lines at level L or more severe (ERROR, WARN, INFO,\n"
    "                    DEBUG, TRACE)\n"
    "  -h, --help        this text\n";

/* ---- printing ------------------------------------------------------------- */

/* RFC 3339 UTC with milliseconds; "-" for 0. */
static void format_time(int64_t ms, char out[40])
{
    struct tm tm;
    time_t secs;

    if (ms == 0) {
        snprintf(out, 40, "-");
        return;
    }
    secs = (time_t)(ms / 1000);
    if (ms < 0 && ms % 1000 != 0)
        secs--;
    if (gmtime_r(&secs, &tm) == NULL) {
        snprintf(out, 40, "%" PRId64, ms);
        return;
    }
    size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 40 - n, ".%03dZ", (int)(((ms % 1000) + 1000) % 1000));
}

static void print_header(void)
{
    printf("%-*s  %-*s  %-*s  %s\n", TIME_WIDTH, "TIME", LEVEL_WIDTH, "LEVEL", SOURCE_WIDTH,
           "SOURCE", "MESSAGE");
}

/* One log line: a table row, or its JSON. Returns false once stdout failed
 * (its reader went away). */
static bool print_line(const Openshell__V1__SandboxLogLine *l, bool json)
{
    char when[40];

    if (json) {
        cli_print_json(&l->base);
        return !ferror(stdout);
    }
    format_time(l->timestamp_ms, when);
    /* An empty source is the gateway's, as the --source filter counts it. */
    printf("%-*s  %-*s  %-*s  %s", TIME_WIDTH, when, LEVEL_WIDTH, l->level[0] ? l->level : "-",
           SOURCE_WIDTH, l->source[0] ? l->source : "gateway", l->message);
    for (size_t i = 0; i < l->n_fields; i++)
        printf(" %s=%s", l->fields[i]->key, l->fields[i]->value);
    putchar('\n');
    return !ferror(stdout);
}

/* ---- options --------------------------------------------------------------- */

static bool parse_ms(const char *s, int64_t *out)
{
    char *end;
    long long v;

    if (s[0] < '0' || s[0] > '9')
        return false;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *out = (int64_t)v;
    return true;
}

static int logs_opt(struct logs_args *a, int ch, char **argv, size_t *src_cap)
{
    static const char *cmd = "sandbox logs";
    unsigned long v;

    switch (ch) {
    case 'f':
        a->follow = true;
        return 0;
    case 'n':
        if (cli_parse_uint(optarg, UINT32_MAX, &v) != 0)
            return cli_usage(cmd, "--tail wants a number of lines, got '%s'", optarg);
        a->tail = (uint32_t)v;
        return 0;
    case 'S':
        if (!parse_ms(optarg, &a->since_ms))
            return cli_usage(cmd, "--since-ms wants milliseconds since the epoch, got '%s'",
                             optarg);
        return 0;
    case 's':
        if (optarg[0] == '\0')
            return cli_usage(cmd, "--source wants a source name (gateway, sandbox)");
        if (a->n_sources == *src_cap) {
            *src_cap = *src_cap ? *src_cap * 2 : 4;
            a->sources = gw_xrealloc(a->sources, *src_cap * sizeof(*a->sources));
        }
        a->sources[a->n_sources++] = optarg;
        return 0;
    case 'l':
        a->level = optarg;
        return 0;
    default:
        return cli_bad_option(cmd, ch, argv);
    }
}

/* Returns 0, -1 after --help, or the usage exit code. */
static int logs_parse(int argc, char **argv, struct logs_args *a)
{
    static const struct option longopts[] = {
        {"follow", no_argument, NULL, 'f'},
        {"tail", required_argument, NULL, 'n'},
        {"since-ms", required_argument, NULL, 'S'},
        {"source", required_argument, NULL, 's'},
        {"level", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    size_t src_cap = 0;
    int ch;

    a->tail = DEFAULT_TAIL;
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":fh", longopts, NULL)) != -1) {
        if (ch == 'h') {
            fputs(logs_help, stdout);
            return -1;
        }
        int rc = logs_opt(a, ch, argv, &src_cap);
        if (rc != 0)
            return rc;
    }
    if (optind >= argc)
        return cli_usage("sandbox logs", "missing the sandbox NAME");
    if (argc - optind > 1)
        return cli_usage("sandbox logs", "unexpected argument '%s'", argv[optind + 1]);
    a->name = argv[optind];
    return 0;
}

/* ---- one-shot ----------------------------------------------------------------- */

static int logs_get(struct cli *c, const struct logs_args *a, const char *id)
{
    Openshell__V1__GetSandboxLogsRequest req = OPENSHELL__V1__GET_SANDBOX_LOGS_REQUEST__INIT;
    Openshell__V1__GetSandboxLogsResponse *resp = NULL;
    bool json = cli_opts(c)->json;
    char what[300];
    int rc;

    req.sandbox_id = (char *)id;
    req.lines = a->tail != 0 ? a->tail : ALL_LINES;
    req.since_ms = a->since_ms;
    req.sources = a->sources;
    req.n_sources = a->n_sources;
    if (a->level != NULL)
        req.min_level = (char *)a->level;
    req.workspace = (char *)cli_opts(c)->workspace;
    snprintf(what, sizeof(what), "logs of sandbox \"%s\"", a->name);
    rc =
        cli_unary(c, SVC_GET_LOGS, &req.base, &openshell__v1__get_sandbox_logs_response__descriptor,
                  (ProtobufCMessage **)&resp, what);
    if (rc != 0)
        return rc;
    if (!json)
        print_header();
    for (size_t i = 0; i < resp->n_logs; i++) {
        if (!print_line(resp->logs[i], json))
            break;
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    if (fflush(stdout) != 0 || ferror(stdout))
        return errno == EPIPE ? EXIT_SIGNAL_BASE + SIGPIPE
                              : cli_fail("writing to stdout: %s", strerror(errno));
    return 0;
}

/* ---- follow -------------------------------------------------------------------- */

struct follow {
    struct cli *c;
    struct cli_stream *s; /* NULL once ended or cancelled */
    bool json;
    bool out_closed; /* stdout failed */
    int signo;       /* the signal that ended us, or 0 */
    struct cli_status st;
};

static void follow_stop(struct follow *f)
{
    if (f->s != NULL) {
        cli_stream_cancel(f->s);
        f->s = NULL;
    }
    cli_loop_exit(f->c);
}

static void on_watch_msg(struct cli_stream *s, const ProtobufCMessage *msg, void *arg)
{
    const Openshell__V1__SandboxStreamEvent *ev = (const Openshell__V1__SandboxStreamEvent *)msg;
    struct follow *f = arg;

    (void)s;
    switch (ev->payload_case) {
    case OPENSHELL__V1__SANDBOX_STREAM_EVENT__PAYLOAD_LOG:
        /* Blocking stdio on purpose: a slow reader holds the loop, which
         * stops reading the socket, which slows the gateway. */
        if (!print_line(ev->log, f->json) || fflush(stdout) != 0) {
            f->out_closed = true;
            follow_stop(f);
        }
        break;
    case OPENSHELL__V1__SANDBOX_STREAM_EVENT__PAYLOAD_WARNING:
        fprintf(stderr, "openshell: warning: %s\n", ev->warning->message);
        break;
    default:
        break; /* the status snapshot; events were not asked for */
    }
}

static void on_watch_end(struct cli_stream *s, const struct cli_status *st, void *arg)
{
    struct follow *f = arg;

    (void)s;
    f->s = NULL;
    f->st = *st;
    cli_loop_exit(f->c);
}

static void on_follow_signal(int signo, void *arg)
{
    struct follow *f = arg;

    f->signo = signo;
    follow_stop(f);
}

static int logs_follow(struct cli *c, const struct logs_args *a, const char *id)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    Openshell__V1__WatchSandboxRequest req = OPENSHELL__V1__WATCH_SANDBOX_REQUEST__INIT;
    struct follow f = {.c = c, .json = cli_opts(c)->json};
    char what[300];
    int code;

    req.id = (char *)id;
    req.follow_logs = true;
    req.log_tail_lines = a->tail != 0 ? a->tail : ALL_LINES;
    req.log_since_ms = a->since_ms;
    req.log_sources = a->sources;
    req.n_log_sources = a->n_sources;
    if (a->level != NULL)
        req.log_min_level = (char *)a->level;
    for (size_t i = 0; i < GW_ARRAY_LEN(sigs); i++) {
        if (reactor_on_signal(cli_reactor(c), sigs[i], on_follow_signal, &f) != 0)
            return cli_fail("logs: cannot install signal handlers");
    }
    f.s = cli_stream_start(c, SVC_WATCH, &openshell__v1__sandbox_stream_event__descriptor,
                           on_watch_msg, on_watch_end, &f, &code);
    if (f.s == NULL)
        return code;
    /* GRPC_ERR_CLOSED: the call already ended, on_end says how. */
    if (cli_stream_send(f.s, &req.base) >= 0)
        cli_stream_close_send(f.s);
    if (!f.json) {
        print_header();
        fflush(stdout);
    }
    cli_loop_run(c);
    if (f.s != NULL)
        cli_stream_cancel(f.s);
    if (f.signo != 0)
        return EXIT_SIGNAL_BASE + f.signo;
    if (f.out_closed)
        return EXIT_SIGNAL_BASE + SIGPIPE;
    snprintf(what, sizeof(what), "follow logs of sandbox \"%s\"", a->name);
    if (f.st.code != GRPC_STATUS_OK)
        return cli_fail_status(what, &f.st);
    return 0; /* the sandbox was deleted */
}

int cli_cmd_sandbox_logs(struct cli *c, int argc, char **argv)
{
    struct logs_args a = {0};
    char *id = NULL;
    int rc = logs_parse(argc, argv, &a);

    if (rc != 0)
        goto out;
    rc = cli_sandbox_id(c, a.name, &id);
    if (rc != 0)
        goto out;
    rc = a.follow ? logs_follow(c, &a, id) : logs_get(c, &a, id);
out:
    free(a.sources);
    free(id);
    return rc < 0 ? 0 : rc;
}
