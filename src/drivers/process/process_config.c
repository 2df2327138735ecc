/* Pure parsing and validation for the process driver: Kubernetes
 * quantities, the driver_config Struct and a whole DriverSandbox. No I/O,
 * no globals: unit-tested in tests/test_process_config.c. */
#include "drivers/process/process.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define MAX_COMMAND_ARGS   1024
#define MAX_COMMAND_BYTES  (128 * 1024)
#define MAX_ENV_ENTRIES    1024
#define MAX_ENV_BYTES      (128 * 1024)
#define MAX_ENV_KEY        256
#define MAX_NAME_BYTES     253
#define MAX_LOG_LEVEL      64
#define MAX_TOKEN_BYTES    (64 * 1024)
#define MAX_QUANTITY_CHARS 64
#define MAX_KEY_IN_ERROR   64

typedef unsigned __int128 u128;

/* ---- quantities ------------------------------------------------------------ */

struct quantity {
    u128 mantissa;    /* all digits, the decimal point dropped */
    int dec_exp;      /* power of ten applied to the mantissa */
    unsigned bin_exp; /* power of two (Ki = 10, Mi = 20, ...) */
};

/* Digits of "<digits>[.<digits>]" into |q|; at least one digit somewhere. */
static const char *parse_number(const char *p, struct quantity *q)
{
    unsigned digits = 0;
    bool dot = false;

    for (;; p++) {
        if (*p == '.' && !dot) {
            dot = true;
            continue;
        }
        if (*p < '0' || *p > '9')
            break;
        if (++digits > 30)
            return NULL; /* beyond any 64-bit value we could return */
        q->mantissa = q->mantissa * 10 + (unsigned)(*p - '0');
        if (dot)
            q->dec_exp--;
    }
    return digits > 0 ? p : NULL;
}

/* "e"/"E" followed by a signed integer; "E" alone is the exa suffix. */
static bool parse_exponent(const char *p, int *out)
{
    int sign = 1;
    int v = 0;

    if (*p == '+' || *p == '-')
        sign = *p++ == '-' ? -1 : 1;
    if (*p == '\0')
        return false;
    for (; *p != '\0'; p++) {
        if (*p < '0' || *p > '9' || v > 100)
            return false;
        v = v * 10 + (*p - '0');
    }
    *out = sign * v;
    return true;
}

static bool parse_suffix(const char *p, struct quantity *q)
{
    static const struct {
        const char *s;
        int dec;
        unsigned bin;
    } suffixes[] = {
        {"", 0, 0},    {"n", -9, 0},  {"u", -6, 0},  {"m", -3, 0},  {"k", 3, 0},   {"M", 6, 0},
        {"G", 9, 0},   {"T", 12, 0},  {"P", 15, 0},  {"E", 18, 0},  {"Ki", 0, 10}, {"Mi", 0, 20},
        {"Gi", 0, 30}, {"Ti", 0, 40}, {"Pi", 0, 50}, {"Ei", 0, 60},
    };
    int e;

    for (size_t i = 0; i < GW_ARRAY_LEN(suffixes); i++) {
        if (strcmp(p, suffixes[i].s) == 0) {
            q->dec_exp += suffixes[i].dec;
            q->bin_exp = suffixes[i].bin;
            return true;
        }
    }
    if ((*p == 'e' || *p == 'E') && parse_exponent(p + 1, &e)) {
        q->dec_exp += e;
        return true;
    }
    return false;
}

static bool mul_checked(u128 *v, u128 by)
{
    if (by != 0 && *v > ~(u128)0 / by)
        return false;
    *v *= by;
    return true;
}

int process_quantity_parse(const char *s, bool milli, uint64_t *out)
{
    struct quantity q = {0};
    const char *p = s;
    u128 num, den = 1;
    int exp;

    if (s == NULL || strlen(s) > MAX_QUANTITY_CHARS)
        return -1;
    if (*p == '+')
        p++;
    p = parse_number(p, &q);
    if (p == NULL || !parse_suffix(p, &q))
        return -1;
    exp = q.dec_exp + (milli ? 3 : 0);
    if (exp < -60 || exp > 60)
        return -1;
    num = q.mantissa;
    if (num == 0) {
        *out = 0;
        return 0;
    }
    if (!mul_checked(&num, (u128)1 << q.bin_exp))
        return -1;
    for (; exp > 0; exp--) {
        if (!mul_checked(&num, 10))
            return -1;
    }
    for (; exp < 0; exp++) {
        if (!mul_checked(&den, 10)) {
            *out = 1; /* vanishingly small but positive: rounds up to 1 */
            return 0;
        }
    }
    num = num / den + (num % den != 0);
    if (num > UINT64_MAX)
        return -1;
    *out = (uint64_t)num;
    return 0;
}

/* ---- names ------------------------------------------------------------------- */

bool process_dns_label_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;

    if (n == 0 || n > 63 || s[0] == '-' || s[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

void process_hostname_from_name(const char *name, char out[64])
{
    size_t n = 0;

    if (process_dns_label_valid(name)) {
        snprintf(out, 64, "%s", name);
        return;
    }
    for (const char *p = name ? name : ""; *p != '\0' && n < 63; p++) {
        char c = *p;
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
            c = '-';
        if (c == '-' && (n == 0 || out[n - 1] == '-'))
            continue;
        out[n++] = c;
    }
    while (n > 0 && out[n - 1] == '-')
        n--;
    out[n] = '\0';
    if (n == 0)
        snprintf(out, 64, "sandbox");
}

/* ---- driver_config ------------------------------------------------------------ */

void process_options_default(struct process_options *o)
{
    memset(o, 0, sizeof(*o));
    o->network = PROCESS_NET_ISOLATED;
    o->tmp_size = PROCESS_TMP_SIZE_DEFAULT;
    o->pids_limit = PROCESS_PIDS_DEFAULT;
    o->stop_grace_seconds = PROCESS_STOP_GRACE_DEFAULT;
}

static const char *kind_name(const Google__Protobuf__Value *v)
{
    switch (v ? v->kind_case : GOOGLE__PROTOBUF__VALUE__KIND__NOT_SET) {
    case GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE:
        return "null";
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
        return "a number";
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        return "a string";
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
        return "a boolean";
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return "an object";
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE:
        return "a list";
    default:
        return "no value";
    }
}

static int fail(char *err, size_t errlen, const char *path, const char *key, const char *fmt, ...)
    GW_PRINTF(5, 6);

/* Formats "<path><key>: <message>" (key cut to a sane length). Caller
 * text quoted in it (keys, images, values) may hold control characters:
 * they become '?', so the status message stays one printable line. */
static int fail(char *err, size_t errlen, const char *path, const char *key, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(err, errlen, "%s%.*s: ", path, MAX_KEY_IN_ERROR, key ? key : "");

    if (n >= 0 && (size_t)n < errlen) {
        va_start(ap, fmt);
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    for (char *p = err; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return PROCESS_ERR_INVALID;
}

#define CFG "driver_config."

static const char *string_of(const Google__Protobuf__Value *v)
{
    return v && v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE ? v->string_value : NULL;
}

/* An integral JSON number in [lo, hi]. */
static int integer_of(const Google__Protobuf__Value *v, const char *key, long lo, long hi,
                      long *out, char *err, size_t errlen)
{
    double d;

    if (v == NULL || v->kind_case != GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE)
        return fail(err, errlen, CFG, key, "expected an integer, got %s", kind_name(v));
    d = v->number_value;
    if (!isfinite(d) || d != floor(d))
        return fail(err, errlen, CFG, key, "expected an integer, got %g", d);
    if (d < (double)lo || d > (double)hi)
        return fail(err, errlen, CFG, key, "must be between %ld and %ld, got %.0f", lo, hi, d);
    *out = (long)d;
    return 0;
}

static int cfg_network(const Google__Protobuf__Value *v, bool allow_host, struct process_options *o,
                       char *err, size_t errlen)
{
    const char *s = string_of(v);

    if (s == NULL)
        return fail(err, errlen, CFG, "network", "expected \"isolated\" or \"host\", got %s",
                    kind_name(v));
    if (strcmp(s, "isolated") == 0) {
        o->network = PROCESS_NET_ISOLATED;
        return 0;
    }
    if (strcmp(s, "host") != 0)
        return fail(err, errlen, CFG, "network", "expected \"isolated\" or \"host\"");
    if (!allow_host)
        return fail(err, errlen, CFG, "network",
                    "\"host\" is not allowed: the driver was started without "
                    "--allow-host-network");
    o->network = PROCESS_NET_HOST;
    return 0;
}

static int cfg_hostname(const Google__Protobuf__Value *v, struct process_options *o, char *err,
                        size_t errlen)
{
    const char *s = string_of(v);

    if (s == NULL)
        return fail(err, errlen, CFG, "hostname", "expected a string, got %s", kind_name(v));
    if (!process_dns_label_valid(s))
        return fail(err, errlen, CFG, "hostname",
                    "must be a DNS label: 1-63 characters a-z, 0-9 and '-', not starting or "
                    "ending with '-'");
    snprintf(o->hostname, sizeof(o->hostname), "%s", s);
    return 0;
}

static int cfg_tmp_size(const Google__Protobuf__Value *v, struct process_options *o, char *err,
                        size_t errlen)
{
    const char *s = string_of(v);
    uint64_t bytes;

    if (s == NULL)
        return fail(err, errlen, CFG, "tmp_size",
                    "expected a quantity string such as \"64Mi\", "
                    "got %s",
                    kind_name(v));
    if (process_quantity_parse(s, false, &bytes) != 0)
        return fail(err, errlen, CFG, "tmp_size", "invalid quantity \"%.64s\"", s);
    if (bytes < PROCESS_TMP_SIZE_MIN || bytes > PROCESS_TMP_SIZE_MAX)
        return fail(err, errlen, CFG, "tmp_size", "must be between 1Mi and 16Gi");
    o->tmp_size = bytes;
    return 0;
}

static int cfg_entry(const char *key, const Google__Protobuf__Value *v, bool allow_host,
                     struct process_options *o, char *err, size_t errlen)
{
    long n;

    if (strcmp(key, "network") == 0)
        return cfg_network(v, allow_host, o, err, errlen);
    if (strcmp(key, "hostname") == 0)
        return cfg_hostname(v, o, err, errlen);
    if (strcmp(key, "tmp_size") == 0)
        return cfg_tmp_size(v, o, err, errlen);
    if (strcmp(key, "pids_limit") == 0) {
        if (integer_of(v, key, 1, PROCESS_PIDS_MAX, &n, err, errlen) != 0)
            return PROCESS_ERR_INVALID;
        o->pids_limit = (uint32_t)n;
        return 0;
    }
    if (strcmp(key, "stop_grace_seconds") == 0) {
        if (integer_of(v, key, 0, PROCESS_STOP_GRACE_MAX, &n, err, errlen) != 0)
            return PROCESS_ERR_INVALID;
        o->stop_grace_seconds = (uint32_t)n;
        return 0;
    }
    return fail(err, errlen, CFG, key,
                "unknown key (allowed: network, hostname, tmp_size, "
                "pids_limit, stop_grace_seconds)");
}

int process_config_parse(const Google__Protobuf__Struct *cfg, bool allow_host_network,
                         struct process_options *out, char *err, size_t errlen)
{
    struct process_options o;

    process_options_default(&o);
    for (size_t i = 0; cfg != NULL && i < cfg->n_fields; i++) {
        const Google__Protobuf__Struct__FieldsEntry *e = cfg->fields[i];
        /* A repeated map key on the wire: the last one wins, as in protobuf. */
        if (cfg_entry(e->key, e->value, allow_host_network, &o, err, errlen) != 0)
            return PROCESS_ERR_INVALID;
    }
    *out = o;
    return 0;
}

/* ---- the whole sandbox --------------------------------------------------------- */

static bool has_control_chars(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    }
    return false;
}

static int check_command(const Openshell__Compute__V1__DriverSandboxSpec *spec, char *err,
                         size_t errlen)
{
    size_t total = 0;

    if (spec->n_command > MAX_COMMAND_ARGS)
        return fail(err, errlen, "command", NULL, "at most %d arguments", MAX_COMMAND_ARGS);
    if (spec->n_command > 0 && spec->command[0][0] == '\0')
        return fail(err, errlen, "command[0]", NULL, "the program must not be empty");
    for (size_t i = 0; i < spec->n_command; i++)
        total += strlen(spec->command[i]) + 1;
    if (total > MAX_COMMAND_BYTES)
        return fail(err, errlen, "command", NULL, "larger than %d bytes", MAX_COMMAND_BYTES);
    return 0;
}

/* Keys of both environment maps share the entry layout (key, value). */
static int check_env(const char *path, size_t n, char *const *keys, char *const *values, char *err,
                     size_t errlen)
{
    size_t total = 0;

    if (n > MAX_ENV_ENTRIES)
        return fail(err, errlen, path, NULL, "at most %d variables", MAX_ENV_ENTRIES);
    for (size_t i = 0; i < n; i++) {
        const char *k = keys[i];
        if (k[0] == '\0')
            return fail(err, errlen, path, NULL, "a variable name must not be empty");
        if (strlen(k) > MAX_ENV_KEY || strchr(k, '=') != NULL || has_control_chars(k)) {
            char name[80];
            snprintf(name, sizeof(name), "[%.60s]", k); /* fits MAX_KEY_IN_ERROR */
            return fail(err, errlen, path, name, "invalid variable name");
        }
        total += strlen(k) + strlen(values[i]) + 2;
    }
    if (total > MAX_ENV_BYTES)
        return fail(err, errlen, path, NULL, "larger than %d bytes", MAX_ENV_BYTES);
    return 0;
}

static int check_spec_env(const Openshell__Compute__V1__DriverSandboxSpec *spec, char *err,
                          size_t errlen)
{
    const Openshell__Compute__V1__DriverSandboxTemplate *t = spec->template_;
    size_t n = spec->n_environment + (t ? t->n_environment : 0);
    char *keys[n ? n : 1], *values[n ? n : 1];
    int rv;

    for (size_t i = 0; i < spec->n_environment; i++) {
        keys[i] = spec->environment[i]->key;
        values[i] = spec->environment[i]->value;
    }
    rv = check_env("environment", spec->n_environment, keys, values, err, errlen);
    if (rv != 0 || t == NULL)
        return rv;
    for (size_t i = 0; i < t->n_environment; i++) {
        keys[i] = t->environment[i]->key;
        values[i] = t->environment[i]->value;
    }
    return check_env("template.environment", t->n_environment, keys, values, err, errlen);
}

static int one_quantity(const char *field, const char *text, bool cpu, uint64_t *out, char *err,
                        size_t errlen)
{
    *out = 0;
    if (text == NULL || text[0] == '\0')
        return 0;
    if (process_quantity_parse(text, cpu, out) != 0)
        return fail(err, errlen, "template.resources.", field, "invalid quantity \"%.64s\"", text);
    return 0;
}

static int check_resources(const Openshell__Compute__V1__DriverResourceRequirements *r,
                           struct process_limits *lim, char *err, size_t errlen)
{
    memset(lim, 0, sizeof(*lim));
    if (r == NULL)
        return 0;
    if (one_quantity("cpu_request", r->cpu_request, true, &lim->cpu_request_milli, err, errlen) ||
        one_quantity("cpu_limit", r->cpu_limit, true, &lim->cpu_limit_milli, err, errlen) ||
        one_quantity("memory_request", r->memory_request, false, &lim->memory_request, err,
                     errlen) ||
        one_quantity("memory_limit", r->memory_limit, false, &lim->memory_limit, err, errlen))
        return PROCESS_ERR_INVALID;
    if (r->cpu_limit[0] != '\0' && lim->cpu_limit_milli == 0)
        return fail(err, errlen, "template.resources.cpu_limit", NULL, "must be greater than 0");
    if (r->memory_limit[0] != '\0' && lim->memory_limit < PROCESS_MEMORY_LIMIT_MIN)
        return fail(err, errlen, "template.resources.memory_limit", NULL, "must be at least 4Mi");
    if (lim->cpu_limit_milli != 0 && lim->cpu_request_milli > lim->cpu_limit_milli)
        return fail(err, errlen, "template.resources.cpu_request", NULL,
                    "must not exceed cpu_limit");
    if (lim->memory_limit != 0 && lim->memory_request > lim->memory_limit)
        return fail(err, errlen, "template.resources.memory_request", NULL,
                    "must not exceed memory_limit");
    return 0;
}

static int check_template(const Openshell__Compute__V1__DriverSandboxTemplate *t,
                          bool allow_host_network, struct process_options *opts,
                          struct process_limits *lim, char *err, size_t errlen)
{
    if (t == NULL) {
        memset(lim, 0, sizeof(*lim));
        process_options_default(opts);
        return 0;
    }
    if (t->image[0] != '\0' && strcmp(t->image, "host") != 0)
        return fail(err, errlen, "template.image", NULL,
                    "the process driver runs sandboxes on the host: the image must be empty or "
                    "\"host\", got \"%.128s\"",
                    t->image);
    if (check_resources(t->resources, lim, err, errlen) != 0)
        return PROCESS_ERR_INVALID;
    return process_config_parse(t->driver_config, allow_host_network, opts, err, errlen);
}

static int check_spec(const Openshell__Compute__V1__DriverSandboxSpec *spec,
                      bool allow_host_network, struct process_options *opts,
                      struct process_limits *lim, char *err, size_t errlen)
{
    if (spec == NULL) {
        memset(lim, 0, sizeof(*lim));
        process_options_default(opts);
        return 0;
    }
    if (strlen(spec->log_level) > MAX_LOG_LEVEL || has_control_chars(spec->log_level))
        return fail(err, errlen, "log_level", NULL, "invalid value");
    if (strlen(spec->sandbox_token) > MAX_TOKEN_BYTES)
        return fail(err, errlen, "sandbox_token", NULL, "larger than %d bytes", MAX_TOKEN_BYTES);
    if (check_command(spec, err, errlen) != 0 || check_spec_env(spec, err, errlen) != 0)
        return PROCESS_ERR_INVALID;
    if (check_template(spec->template_, allow_host_network, opts, lim, err, errlen) != 0)
        return PROCESS_ERR_INVALID;
    if (spec->resource_requirements != NULL && spec->resource_requirements->gpu != NULL) {
        snprintf(err, errlen, "resource_requirements.gpu: the process driver cannot provide GPUs");
        return PROCESS_ERR_UNSUPPORTED;
    }
    return 0;
}

int process_sandbox_check(const Openshell__Compute__V1__DriverSandbox *sb, bool allow_host_network,
                          struct process_options *opts, struct process_limits *lim, char *err,
                          size_t errlen)
{
    if (sb == NULL)
        return fail(err, errlen, "sandbox", NULL, "required");
    if (sb->id[0] == '\0')
        return fail(err, errlen, "id", NULL, "required");
    if (!gw_uuid_valid(sb->id))
        return fail(err, errlen, "id", NULL, "must be a UUID");
    if (sb->name[0] == '\0')
        return fail(err, errlen, "name", NULL, "required");
    if (strlen(sb->name) > MAX_NAME_BYTES || has_control_chars(sb->name))
        return fail(err, errlen, "name", NULL, "at most %d printable characters", MAX_NAME_BYTES);
    return check_spec(sb->spec, allow_host_network, opts, lim, err, errlen);
}
