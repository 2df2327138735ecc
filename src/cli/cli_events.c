/*
 * cli_events: `events watch`, a follower of openshell.events.v1.Events/
 * Subscribe that survives dropped connections.
 *
 * The cursor is the sequence of the last event printed. Every (re)subscribe
 * asks for events after it, and an event at or below it is skipped, so a
 * reconnect neither repeats nor loses anything. With --resume FILE the
 * cursor is also written to FILE (temp file + rename) after every printed
 * event, so the next run starts where this one stopped.
 */
#include "cli/cli.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "events.pb-c.h"
#include "http2/grpc.h"
#include "openshell.pb-c.h"
#include "reactor/reactor.h"

#define SUBSCRIBE      "/openshell.events.v1.Events/Subscribe"
#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 5000
#define MAX_KINDS      64

struct watch {
    struct cli *c;
    Openshell__Events__V1__SubscribeRequest req; /* strings borrowed from argv/opts */
    char *kinds[MAX_KINDS];
    const char *resume;   /* --resume FILE or NULL */
    bool until_caught_up; /* exit 0 at the CaughtUp marker */
    bool json;
    uint64_t last; /* sequence of the last printed event */
    unsigned backoff_ms;
    struct cli_stream *stream;
    struct reactor_timer *retry;
    bool connected_once; /* a stream has been started */
    bool header_done;
    int rc; /* exit code once done; -1 while following */
};

static const char watch_help[] =
    "Usage: openshell events watch [OPTIONS]\n"
    "\n"
    "Follows the lifecycle event stream until interrupted, one event per line:\n"
    "SEQ TIME KIND WORKSPACE SANDBOX PREV->NEW ACTOR REASON (-o json: one\n"
    "SubscribeResponse JSON object per line). A dropped connection is retried with\n"
    "backoff (250 ms doubling to 5 s) from the last printed sequence.\n"
    "\n"
    "Options:\n"
    "      --after N           start after sequence N (default: the --resume file's,\n"
    "                          else 0 = the whole retained history)\n"
    "      --workspace W       only workspace W (default: the global --workspace)\n"
    "      --all-workspaces    every workspace you can see\n"
    "      --selector SEL      only sandboxes whose labels match SEL\n"
    "      --kind K            only events of kind K (repeatable)\n"
    "      --resume FILE       keep the last printed sequence in FILE and start after it\n"
    "      --until-caught-up   exit 0 once the history up to now has been printed\n"
    "  -h, --help              this help\n";

/* ---- resume file ------------------------------------------------------------ */

/* Reads the cursor from |path|: 0 with *seq (0 when the file does not
 * exist), or an exit code. */
static int resume_read(const char *path, uint64_t *seq)
{
    FILE *f = fopen(path, "r");
    char buf[64];
    char *end;
    size_t n;

    *seq = 0;
    if (f == NULL) {
        if (errno == ENOENT)
            return 0;
        return cli_fail("cannot read the resume file '%s': %s", path, strerror(errno));
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    if (buf[0] < '0' || buf[0] > '9') {
        if (buf[0] == '\0')
            return 0;
        return cli_fail("the resume file '%s' does not hold a sequence number", path);
    }
    errno = 0;
    *seq = strtoull(buf, &end, 10);
    if (*end != '\0' || errno != 0)
        return cli_fail("the resume file '%s' does not hold a sequence number", path);
    return 0;
}

/* Replaces |path| atomically with |seq|. Returns 0 or an exit code. */
static int resume_write(const char *path, uint64_t seq)
{
    char *tmp = gw_xasprintf("%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    int rc = 0;

    if (f == NULL) {
        rc = cli_fail("cannot write the resume file '%s': %s", tmp, strerror(errno));
        goto out;
    }
    if (fprintf(f, "%llu\n", (unsigned long long)seq) < 0 || fclose(f) != 0) {
        rc = cli_fail("cannot write the resume file '%s': %s", tmp, strerror(errno));
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, path) != 0) {
        rc = cli_fail("cannot replace the resume file '%s': %s", path, strerror(errno));
        unlink(tmp);
    }
out:
    free(tmp);
    return rc;
}

/* ---- printing ------------------------------------------------------------------ */

static const char *dash(const char *s)
{
    return s != NULL && s[0] != '\0' ? s : "-";
}

static void print_event_line(struct watch *w, const Openshell__Events__V1__LifecycleEvent *e)
{
    char ts[32], phases[64];
    int prev = (int)e->previous_phase, next = (int)e->new_phase;

    if (!w->header_done && isatty(STDOUT_FILENO)) {
        printf("%-6s  %-20s  %-24s  %-12s  %-20s  %-26s  %-18s  %s\n", "SEQ", "TIME", "KIND",
               "WORKSPACE", "SANDBOX", "PREV->NEW", "ACTOR", "REASON");
        w->header_done = true;
    }
    cli_time_format(e->timestamp_ms, ts);
    if (prev == 0 && next == 0)
        snprintf(phases, sizeof(phases), "-");
    else if (prev == 0)
        snprintf(phases, sizeof(phases), "->%s", cli_phase_name(next));
    else
        snprintf(phases, sizeof(phases), "%s->%s", cli_phase_name(prev), cli_phase_name(next));
    printf("%-6llu  %-20s  %-24s  %-12s  %-20s  %-26s  %-18s  %s\n",
           (unsigned long long)e->sequence, ts, dash(e->kind), dash(e->workspace),
           dash(e->sandbox_name), phases, dash(e->actor), dash(e->reason));
}

/* ---- the stream ------------------------------------------------------------------ */

static void watch_done(struct watch *w, int rc)
{
    if (w->rc < 0)
        w->rc = rc;
    cli_loop_exit(w->c);
}

static void on_event(struct watch *w, const Openshell__Events__V1__SubscribeResponse *r)
{
    const Openshell__Events__V1__LifecycleEvent *e = r->event;
    int rc;

    if (e->sequence <= w->last)
        return; /* already printed before a reconnect */
    if (w->json)
        cli_print_json(&r->base);
    else
        print_event_line(w, e);
    fflush(stdout);
    w->last = e->sequence;
    if (w->resume != NULL) {
        rc = resume_write(w->resume, w->last);
        if (rc != 0)
            watch_done(w, rc);
    }
}

static void on_msg(struct cli_stream *s, const ProtobufCMessage *msg, void *arg)
{
    const Openshell__Events__V1__SubscribeResponse *r =
        (const Openshell__Events__V1__SubscribeResponse *)msg;
    struct watch *w = arg;

    (void)s;
    if (w->rc >= 0)
        return;
    w->backoff_ms = BACKOFF_MIN_MS;
    switch (r->payload_case) {
    case OPENSHELL__EVENTS__V1__SUBSCRIBE_RESPONSE__PAYLOAD_EVENT:
        on_event(w, r);
        break;
    case OPENSHELL__EVENTS__V1__SUBSCRIBE_RESPONSE__PAYLOAD_CAUGHT_UP:
        if (w->json) {
            cli_print_json(&r->base);
        } else if (isatty(STDERR_FILENO)) {
            fprintf(stderr, "(caught up at sequence %llu; following new events)\n",
                    (unsigned long long)r->caught_up->sequence);
        }
        if (w->until_caught_up)
            watch_done(w, 0);
        break;
    default:
        break;
    }
}

/* Whether a stream that ended with |code| is worth resubscribing. */
static bool retryable(int code)
{
    switch (code) {
    case GRPC_STATUS_OK:
    case GRPC_STATUS_CANCELLED:
    case GRPC_STATUS_UNKNOWN:
    case GRPC_STATUS_DEADLINE_EXCEEDED:
    case GRPC_STATUS_RESOURCE_EXHAUSTED: /* a lagging subscriber was dropped */
    case GRPC_STATUS_ABORTED:
    case GRPC_STATUS_INTERNAL:
    case GRPC_STATUS_UNAVAILABLE:
        return true;
    default:
        return false;
    }
}

static void schedule_retry(struct watch *w, const char *why)
{
    fprintf(stderr,
            "openshell: event stream interrupted (%s); reconnecting in %u ms from sequence "
            "%llu\n",
            why, w->backoff_ms, (unsigned long long)w->last);
    reactor_timer_arm(w->retry, w->backoff_ms);
    w->backoff_ms = GW_MIN(w->backoff_ms * 2, BACKOFF_MAX_MS);
}

static void on_end(struct cli_stream *s, const struct cli_status *st, void *arg)
{
    struct watch *w = arg;
    char why[1100];

    (void)s;
    w->stream = NULL;
    if (w->rc >= 0)
        return;
    if (!retryable(st->code)) {
        watch_done(w, cli_fail_status("watch events", st));
        return;
    }
    if (st->code == GRPC_STATUS_OK)
        snprintf(why, sizeof(why), "the gateway ended the stream");
    else
        snprintf(why, sizeof(why), "%s%s%s", grpc_status_name(st->code), st->message[0] ? ": " : "",
                 st->message);
    /* Leave the loop: resubscribing may have to dial, which runs the loop. */
    schedule_retry(w, why);
}

/* Starts a Subscribe after the cursor. |first|: a failure to connect ends
 * the command (printed); later ones are retried. Returns false when the
 * command is over. */
static bool subscribe(struct watch *w, bool first)
{
    struct cli_status st;
    int rc = 0;

    w->req.after_sequence = w->last;
    if (first)
        w->stream = cli_stream_start(w->c, SUBSCRIBE,
                                     &openshell__events__v1__subscribe_response__descriptor, on_msg,
                                     on_end, w, &rc);
    else
        w->stream = cli_stream_try_start(w->c, SUBSCRIBE,
                                         &openshell__events__v1__subscribe_response__descriptor,
                                         on_msg, on_end, w, &st);
    if (w->stream == NULL) {
        if (first) {
            w->rc = rc;
            return false;
        }
        char why[1200];
        snprintf(why, sizeof(why), "%s: %s", cli_opts(w->c)->endpoint, st.message);
        schedule_retry(w, why);
        return true;
    }
    if (cli_stream_send(w->stream, &w->req.base) < 0) {
        cli_stream_cancel(w->stream);
        w->stream = NULL;
        schedule_retry(w, "the connection closed");
        return true;
    }
    cli_stream_close_send(w->stream);
    return true;
}

static void on_retry(struct reactor_timer *t, void *arg)
{
    struct watch *w = arg;

    (void)t;
    /* Resubscribe outside the callback (dialing runs the loop). */
    cli_loop_exit(w->c);
}

static void on_signal(int signo, void *arg)
{
    struct watch *w = arg;

    (void)signo;
    watch_done(w, 0);
}

/* Follows until done. Returns the exit code. */
static int watch_run(struct watch *w)
{
    struct reactor *r = cli_reactor(w->c);

    w->retry = reactor_timer_new(r, on_retry, w);
    if (reactor_on_signal(r, SIGINT, on_signal, w) != 0 ||
        reactor_on_signal(r, SIGTERM, on_signal, w) != 0) {
        reactor_timer_free(w->retry);
        return cli_fail("cannot install signal handlers");
    }
    if (subscribe(w, true)) {
        while (w->rc < 0) {
            cli_loop_run(w->c);
            if (w->rc < 0 && w->stream == NULL && !reactor_timer_armed(w->retry))
                subscribe(w, false);
        }
    }
    if (w->stream != NULL)
        cli_stream_cancel(w->stream);
    reactor_timer_free(w->retry);
    return w->rc;
}

/* ---- options ---------------------------------------------------------------------- */

enum { OPT_AFTER = 256, OPT_WS, OPT_ALL_WS, OPT_SELECTOR, OPT_KIND, OPT_RESUME, OPT_CAUGHT_UP };

static int watch_opt(struct watch *w, int ch, const char *arg, bool *have_after)
{
    const char *cmd = "events watch";
    unsigned long long v;
    char *end;

    switch (ch) {
    case OPT_AFTER:
        errno = 0;
        v = arg[0] >= '0' && arg[0] <= '9' ? strtoull(arg, &end, 10) : 0;
        if (arg[0] < '0' || arg[0] > '9' || *end != '\0' || errno != 0)
            return cli_usage(cmd, "--after must be a sequence number, not '%s'", arg);
        w->last = v;
        *have_after = true;
        return 0;
    case OPT_WS:
        w->req.workspace = (char *)arg;
        return 0;
    case OPT_ALL_WS:
        w->req.all_workspaces = true;
        return 0;
    case OPT_SELECTOR:
        w->req.label_selector = (char *)arg;
        return 0;
    case OPT_KIND:
        if (w->req.n_kinds == MAX_KINDS)
            return cli_usage(cmd, "at most %d --kind options", MAX_KINDS);
        w->kinds[w->req.n_kinds++] = (char *)arg;
        return 0;
    case OPT_RESUME:
        w->resume = arg;
        return 0;
    case OPT_CAUGHT_UP:
        w->until_caught_up = true;
        return 0;
    default:
        return CLI_EXIT_USAGE;
    }
}

static int watch_parse(struct watch *w, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"after", required_argument, NULL, OPT_AFTER},
        {"workspace", required_argument, NULL, OPT_WS},
        {"all-workspaces", no_argument, NULL, OPT_ALL_WS},
        {"selector", required_argument, NULL, OPT_SELECTOR},
        {"kind", required_argument, NULL, OPT_KIND},
        {"resume", required_argument, NULL, OPT_RESUME},
        {"until-caught-up", no_argument, NULL, OPT_CAUGHT_UP},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool have_after = false;
    int ch, rc;

    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (ch == '?' || ch == ':')
            return cli_bad_option("events watch", ch, argv);
        rc = watch_opt(w, ch, optarg, &have_after);
        if (rc != 0)
            return rc;
    }
    if (optind < argc)
        return cli_usage("events watch", "unexpected argument '%s'", argv[optind]);
    if (w->req.all_workspaces && w->req.workspace != NULL && w->req.workspace[0] != '\0')
        return cli_usage("events watch", "--all-workspaces and --workspace exclude each other");
    if (w->req.workspace == NULL || w->req.workspace[0] == '\0')
        w->req.workspace = w->req.all_workspaces ? "" : (char *)cli_opts(w->c)->workspace;
    if (w->resume != NULL && !have_after)
        return resume_read(w->resume, &w->last);
    return 0;
}

int cli_cmd_events_watch(struct cli *c, int argc, char **argv)
{
    struct watch w = {.c = c, .backoff_ms = BACKOFF_MIN_MS, .rc = -1};
    int rc;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(watch_help, stdout);
            return 0;
        }
    }
    openshell__events__v1__subscribe_request__init(&w.req);
    w.req.kinds = w.kinds;
    w.json = cli_opts(c)->json;
    rc = watch_parse(&w, argc, argv);
    if (rc != 0)
        return rc;
    return watch_run(&w);
}
