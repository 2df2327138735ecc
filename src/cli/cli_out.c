/*
 * cli_out: what the CLI prints: one-line errors with hints, exit codes,
 * aligned tables, key: value records, times and phase names.
 */
#include "cli/cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "http2/grpc.h"
#include "openshell.pb-c.h"

/* ---- errors ------------------------------------------------------------------ */

int cli_exit_for_status(int grpc_code)
{
    if (grpc_code == GRPC_STATUS_OK)
        return CLI_EXIT_OK;
    if (grpc_code < 0 || grpc_code > GRPC_STATUS_UNAUTHENTICATED)
        grpc_code = GRPC_STATUS_UNKNOWN;
    return CLI_EXIT_GRPC + grpc_code;
}

/* True when |what| names an object ('sandbox "demo"', 'workspace "team"')
 * rather than an action ('create sandbox "demo"'). */
static bool names_object(const char *what)
{
    return strncmp(what, "sandbox \"", 9) == 0 || strncmp(what, "workspace \"", 11) == 0;
}

/* What to suggest after a failure with |code|; NULL when nothing helps. */
static const char *status_hint(const char *what, int code)
{
    switch (code) {
    case GRPC_STATUS_UNAUTHENTICATED:
        return "check --tls-cert/--tls-key or --token";
    case GRPC_STATUS_PERMISSION_DENIED:
        return "ask a workspace admin for access or pick another --workspace";
    case GRPC_STATUS_UNAVAILABLE:
        return "is the gateway running? (set --gateway or OPENSHELL_GATEWAY_ENDPOINT)";
    case GRPC_STATUS_DEADLINE_EXCEEDED:
        return "raise --timeout if the gateway is busy";
    case GRPC_STATUS_NOT_FOUND:
        if (strncmp(what, "sandbox \"", 9) == 0)
            return "list sandboxes with 'openshell sandbox list'";
        if (strncmp(what, "workspace \"", 11) == 0)
            return "list workspaces with 'openshell workspace list'";
        return NULL;
    default:
        return NULL;
    }
}

int cli_fail_status(const char *what, const struct cli_status *st)
{
    return cli_fail_status_hint(what, st, NULL);
}

int cli_fail_status_hint(const char *what, const struct cli_status *st, const char *hint)
{
    const char *name = grpc_status_name(st->code);

    if (hint == NULL)
        hint = status_hint(what, st->code);
    struct gw_buf b = {0};

    if (st->code == GRPC_STATUS_UNAUTHENTICATED) {
        gw_buf_appendf(&b, "openshell: %s: the gateway rejected our credentials (%s)", what, name);
        if (st->message[0] != '\0')
            gw_buf_appendf(&b, ": %s", st->message);
    } else if (st->code == GRPC_STATUS_NOT_FOUND && names_object(what)) {
        /* |what| is the object itself: the server's text adds nothing. */
        gw_buf_appendf(&b, "openshell: %s not found (%s)", what, name);
    } else {
        gw_buf_appendf(&b, "openshell: %s: %s", what, name);
        if (st->message[0] != '\0')
            gw_buf_appendf(&b, ": %s", st->message);
    }
    if (hint != NULL)
        gw_buf_appendf(&b, "; %s", hint);
    /* One line, whatever the server put in its message. */
    for (size_t i = 0; i < b.len; i++) {
        if (b.data[i] == '\n' || b.data[i] == '\r')
            b.data[i] = ' ';
    }
    fprintf(stderr, "%s\n", gw_buf_cstr(&b));
    gw_buf_free(&b);
    return cli_exit_for_status(st->code);
}

int cli_usage(const char *cmd, const char *fmt, ...)
{
    va_list ap;

    fputs("openshell: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (cmd != NULL && cmd[0] != '\0')
        fprintf(stderr, "; try 'openshell %s --help'\n", cmd);
    else
        fputs("; try 'openshell --help'\n", stderr);
    return CLI_EXIT_USAGE;
}

int cli_fail(const char *fmt, ...)
{
    va_list ap;

    fputs("openshell: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return CLI_EXIT_FAIL;
}

/* OpenSSL's "error:0A000086:SSL routines::certificate verify failed" reads
 * better without the code and library name. */
static const char *tls_reason(const char *reason)
{
    const char *p = strstr(reason, "routines::");

    return strncmp(reason, "error:", 6) == 0 && p != NULL ? p + 10 : reason;
}

/* The hint after a failed connect, from the OS/TLS reason. */
static const char *connect_hint(const char *reason)
{
    if (strstr(reason, "wrong version number") != NULL ||
        strstr(reason, "packet length too long") != NULL)
        return "the gateway may not use TLS: try an http:// URL";
    if (strstr(reason, "certificate verify failed") != NULL)
        return "the gateway's certificate is not trusted: set --tls-ca or OPENSHELL_TLS_CA";
    if (strstr(reason, "certificate required") != NULL ||
        strstr(reason, "handshake failure") != NULL || strstr(reason, "unknown ca") != NULL ||
        strstr(reason, "bad certificate") != NULL)
        return "the gateway refused our client certificate: check --tls-cert/--tls-key";
    if (strstr(reason, "http/1.1") != NULL || strstr(reason, "ALPN") != NULL ||
        strstr(reason, "alpn") != NULL)
        return "the server does not speak HTTP/2 gRPC: check --gateway";
    return "is it running? (set --gateway or OPENSHELL_GATEWAY_ENDPOINT)";
}

int cli_fail_connect(const char *endpoint, const char *reason)
{
    fprintf(stderr, "openshell: cannot reach the gateway at %s: %s; %s\n", endpoint,
            tls_reason(reason), connect_hint(reason));
    return CLI_EXIT_CONNECT;
}

int cli_bad_option(const char *cmd, int ch, char *const *argv)
{
    const char *arg = optind > 0 ? argv[optind - 1] : "?";

    if (ch == ':')
        return cli_usage(cmd, "option '%s' needs a value", arg);
    if (optopt != 0 && strncmp(arg, "--", 2) != 0)
        return cli_usage(cmd, "unknown option '-%c'", optopt);
    return cli_usage(cmd, "unknown option '%s'", arg);
}

int cli_parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    unsigned long v;

    if (s == NULL || s[0] < '0' || s[0] > '9')
        return -1;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (*end != '\0' || errno != 0 || v > max)
        return -1;
    *out = v;
    return 0;
}

/* ---- JSON ------------------------------------------------------------------------ */

void cli_print_json(const ProtobufCMessage *m)
{
    char *s = pbjson_dumps(m, 0);

    fputs(s, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    free(s);
}

/* ---- tables ------------------------------------------------------------------ */

struct cli_table {
    size_t ncols;
    size_t nrows; /* including the header row */
    size_t cap;
    char **cells; /* nrows * ncols */
};

/* Display width: code points, so UTF-8 names do not throw columns off. */
static size_t text_width(const char *s)
{
    size_t w = 0;

    for (; *s != '\0'; s++) {
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    }
    return w;
}

static void table_push(struct cli_table *t, const char *const *cells)
{
    if (t->nrows == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 8;
        t->cells = gw_xrealloc(t->cells, t->cap * t->ncols * sizeof(char *));
    }
    for (size_t i = 0; i < t->ncols; i++)
        t->cells[t->nrows * t->ncols + i] = gw_xstrdup(cells[i] != NULL ? cells[i] : "-");
    t->nrows++;
}

struct cli_table *cli_table_new(size_t ncols, const char *const *headers)
{
    struct cli_table *t = gw_xcalloc(1, sizeof(*t));

    GW_ASSERT(ncols > 0);
    t->ncols = ncols;
    table_push(t, headers);
    return t;
}

void cli_table_add(struct cli_table *t, const char *const *cells)
{
    table_push(t, cells);
}

char *cli_table_render(const struct cli_table *t)
{
    size_t *width = gw_xcalloc(t->ncols, sizeof(size_t));
    struct gw_buf b = {0};
    char *out;

    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t i = 0; i < t->ncols; i++)
            width[i] = GW_MAX(width[i], text_width(t->cells[r * t->ncols + i]));
    }
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t i = 0; i < t->ncols; i++) {
            const char *cell = t->cells[r * t->ncols + i];
            gw_buf_appendf(&b, "%s", cell);
            if (i + 1 < t->ncols)
                gw_buf_appendf(&b, "%*s", (int)(width[i] - text_width(cell) + 2), "");
        }
        gw_buf_append(&b, "\n", 1);
    }
    free(width);
    out = gw_xstrdup(gw_buf_cstr(&b));
    gw_buf_free(&b);
    return out;
}

void cli_table_print(const struct cli_table *t, FILE *out)
{
    char *s = cli_table_render(t);

    fputs(s, out);
    free(s);
}

void cli_table_free(struct cli_table *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

/* ---- records ----------------------------------------------------------------- */

struct cli_record {
    size_t n, cap;
    char **keys;
    char **values;
};

struct cli_record *cli_record_new(void)
{
    return gw_xcalloc(1, sizeof(struct cli_record));
}

void cli_record_add(struct cli_record *r, const char *key, const char *value)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 16;
        r->keys = gw_xrealloc(r->keys, r->cap * sizeof(char *));
        r->values = gw_xrealloc(r->values, r->cap * sizeof(char *));
    }
    r->keys[r->n] = gw_xstrdup(key);
    r->values[r->n] = gw_xstrdup(value != NULL && value[0] != '\0' ? value : "-");
    r->n++;
}

void cli_record_addf(struct cli_record *r, const char *key, const char *fmt, ...)
{
    struct gw_buf b = {0};
    va_list ap;

    va_start(ap, fmt);
    gw_buf_vappendf(&b, fmt, ap);
    va_end(ap);
    cli_record_add(r, key, gw_buf_cstr(&b));
    gw_buf_free(&b);
}

char *cli_record_render(const struct cli_record *r)
{
    size_t w = 0;
    struct gw_buf b = {0};
    char *out;

    for (size_t i = 0; i < r->n; i++)
        w = GW_MAX(w, text_width(r->keys[i]) + 1);
    for (size_t i = 0; i < r->n; i++) {
        gw_buf_appendf(&b, "%s:%*s%s\n", r->keys[i], (int)(w - text_width(r->keys[i])), "",
                       r->values[i]);
    }
    out = gw_xstrdup(gw_buf_cstr(&b));
    gw_buf_free(&b);
    return out;
}

void cli_record_print(const struct cli_record *r, FILE *out)
{
    char *s = cli_record_render(r);

    fputs(s, out);
    free(s);
}

void cli_record_free(struct cli_record *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n; i++) {
        free(r->keys[i]);
        free(r->values[i]);
    }
    free(r->keys);
    free(r->values);
    free(r);
}

/* ---- small formatters ---------------------------------------------------------- */

void cli_time_format(int64_t ms, char out[32])
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;

    if (ms <= 0 || gmtime_r(&secs, &tm) == NULL) {
        snprintf(out, 32, "-");
        return;
    }
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

const char *cli_phase_name(int phase)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&openshell__v1__sandbox_phase__descriptor, phase);
    static const char prefix[] = "SANDBOX_PHASE_";

    if (v == NULL)
        return "UNKNOWN";
    if (strncmp(v->name, prefix, sizeof(prefix) - 1) == 0)
        return v->name + sizeof(prefix) - 1;
    return v->name;
}
