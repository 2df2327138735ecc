/* Prometheus registry and text exposition (format 0.0.4: "Exposition
 * formats" in the Prometheus documentation is the reference for the
 * escaping and histogram rules applied here). */
#include "metrics/metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct metrics_series {
    struct metrics_series *next; /* creation order, for rendering */
    const struct metrics_family *f;
    const char *values[METRICS_LABELS_MAX];
    uint32_t hash;
    uint64_t count;     /* counter value, or histogram observations */
    double sum;         /* histogram only */
    uint64_t buckets[]; /* histogram only: per bucket, not cumulative; last = +Inf */
};

struct metrics_family {
    struct metrics_family *next;
    char *name;
    char *help;
    enum metrics_type type;
    size_t nlabels;
    char *labels[METRICS_LABELS_MAX];
    /* stored families */
    double bounds[METRICS_BUCKETS_MAX];
    size_t nbounds;
    size_t max_series, nseries;
    struct metrics_series **slots; /* open addressing, power of two, > 2 * max_series */
    size_t nslots;
    struct metrics_series *first, *last;
    struct metrics_series *overflow;
    /* collected families */
    metrics_collect_fn fn;
    void *arg;
};

struct metrics {
    struct metrics_family *first, *last;
};

struct metrics_sink {
    const struct metrics_family *f;
    struct gw_buf *out;
};

struct metrics *metrics_new(void)
{
    return gw_xcalloc(1, sizeof(struct metrics));
}

static void family_free(struct metrics_family *f)
{
    struct metrics_series *s = f->first;
    while (s != NULL) {
        struct metrics_series *next = s->next;
        free(s);
        s = next;
    }
    free(f->overflow);
    free(f->slots);
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->labels[i]);
    free(f->name);
    free(f->help);
    free(f);
}

void metrics_free(struct metrics *m)
{
    if (m == NULL)
        return;
    struct metrics_family *f = m->first;
    while (f != NULL) {
        struct metrics_family *next = f->next;
        family_free(f);
        f = next;
    }
    free(m);
}

/* ---- names ---------------------------------------------------------------------- */

static bool name_char(char c, bool first, bool colon)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_')
        return true;
    if (colon && c == ':')
        return true;
    return !first && c >= '0' && c <= '9';
}

static bool valid_name(const char *s, bool colon)
{
    if (s == NULL || s[0] == '\0')
        return false;
    for (size_t i = 0; s[i] != '\0'; i++)
        if (!name_char(s[i], i == 0, colon))
            return false;
    return true;
}

static bool name_taken(const struct metrics *m, const char *name)
{
    for (const struct metrics_family *f = m->first; f != NULL; f = f->next)
        if (strcmp(f->name, name) == 0)
            return true;
    return false;
}

/* Checks the label names; returns how many, or -1 when one is invalid. */
static int check_labels(const char *const *labels, enum metrics_type type)
{
    int n = 0;
    if (labels == NULL)
        return 0;
    for (; labels[n] != NULL; n++) {
        if (n == METRICS_LABELS_MAX || !valid_name(labels[n], false) ||
            strncmp(labels[n], "__", 2) == 0)
            return -1;
        if (type == METRICS_HISTOGRAM && strcmp(labels[n], "le") == 0)
            return -1;
        for (int j = 0; j < n; j++)
            if (strcmp(labels[j], labels[n]) == 0)
                return -1;
    }
    return n;
}

static struct metrics_family *family_add(struct metrics *m, const char *name, const char *help,
                                         enum metrics_type type, const char *const *labels)
{
    int n = check_labels(labels, type);
    if (!valid_name(name, true) || help == NULL || n < 0 || name_taken(m, name))
        return NULL;
    struct metrics_family *f = gw_xcalloc(1, sizeof(*f));
    f->name = gw_xstrdup(name);
    f->help = gw_xstrdup(help);
    f->type = type;
    f->nlabels = (size_t)n;
    for (size_t i = 0; i < f->nlabels; i++)
        f->labels[i] = gw_xstrdup(labels[i]);
    if (m->last != NULL)
        m->last->next = f;
    else
        m->first = f;
    m->last = f;
    return f;
}

/* ---- stored series ---------------------------------------------------------------- */

static uint32_t values_hash(const struct metrics_family *f, const char *const *values)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < f->nlabels; i++) {
        for (const char *p = values[i]; *p != '\0'; p++)
            h = (h ^ (uint8_t)*p) * 16777619u;
        h = (h ^ 0xffu) * 16777619u; /* separator: ("a","bc") differs from ("ab","c") */
    }
    return h;
}

static bool values_equal(const struct metrics_family *f, const struct metrics_series *s,
                         const char *const *values)
{
    for (size_t i = 0; i < f->nlabels; i++)
        if (strcmp(s->values[i], values[i]) != 0)
            return false;
    return true;
}

/* One allocation: the series, its buckets, then its label value strings. */
static struct metrics_series *series_alloc(const struct metrics_family *f,
                                           const char *const *values, uint32_t hash)
{
    size_t nb = f->type == METRICS_HISTOGRAM ? f->nbounds + 1 : 0;
    size_t head = sizeof(struct metrics_series) + nb * sizeof(uint64_t);
    size_t len[METRICS_LABELS_MAX];
    size_t total = head;
    for (size_t i = 0; i < f->nlabels; i++) {
        len[i] = strlen(values[i]) + 1;
        total += len[i];
    }
    struct metrics_series *s = gw_xcalloc(1, total);
    char *p = (char *)s + head;
    for (size_t i = 0; i < f->nlabels; i++) {
        memcpy(p, values[i], len[i]);
        s->values[i] = p;
        p += len[i];
    }
    s->f = f;
    s->hash = hash;
    return s;
}

static struct metrics_series *series_overflow(struct metrics_family *f)
{
    if (f->overflow == NULL) {
        const char *values[METRICS_LABELS_MAX];
        for (size_t i = 0; i < f->nlabels; i++)
            values[i] = METRICS_OVERFLOW;
        f->overflow = series_alloc(f, values, 0);
    }
    return f->overflow;
}

struct metrics_series *metrics_series(struct metrics_family *f, const char *const *values)
{
    GW_ASSERT(f->slots != NULL); /* a stored family */
    uint32_t h = values_hash(f, values);
    size_t mask = f->nslots - 1;
    size_t i = h & mask;
    for (; f->slots[i] != NULL; i = (i + 1) & mask) {
        if (f->slots[i]->hash == h && values_equal(f, f->slots[i], values))
            return f->slots[i];
    }
    if (f->nseries == f->max_series)
        return series_overflow(f);
    struct metrics_series *s = series_alloc(f, values, h);
    f->slots[i] = s;
    f->nseries++;
    if (f->last != NULL)
        f->last->next = s;
    else
        f->first = s;
    f->last = s;
    return s;
}

static struct metrics_family *stored_new(struct metrics *m, const char *name, const char *help,
                                         enum metrics_type type, const char *const *labels,
                                         size_t max_series)
{
    if (max_series == 0 || max_series > METRICS_SERIES_MAX)
        return NULL;
    struct metrics_family *f = family_add(m, name, help, type, labels);
    if (f == NULL)
        return NULL;
    f->max_series = max_series;
    f->nslots = 4;
    while (f->nslots <= 2 * max_series)
        f->nslots *= 2;
    f->slots = gw_xcalloc(f->nslots, sizeof(*f->slots));
    return f;
}

struct metrics_family *metrics_counter_new(struct metrics *m, const char *name, const char *help,
                                           const char *const *label_names, size_t max_series)
{
    struct metrics_family *f = stored_new(m, name, help, METRICS_COUNTER, label_names, max_series);
    if (f != NULL && f->nlabels == 0)
        (void)metrics_series(f, NULL);
    return f;
}

static bool bounds_ok(const double *bounds, size_t n)
{
    if (bounds == NULL || n == 0 || n > METRICS_BUCKETS_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
            return false;
    }
    return true;
}

struct metrics_family *metrics_histogram_new(struct metrics *m, const char *name, const char *help,
                                             const char *const *label_names, const double *bounds,
                                             size_t nbounds, size_t max_series)
{
    if (!bounds_ok(bounds, nbounds))
        return NULL;
    struct metrics_family *f =
        stored_new(m, name, help, METRICS_HISTOGRAM, label_names, max_series);
    if (f == NULL)
        return NULL;
    memcpy(f->bounds, bounds, nbounds * sizeof(double));
    f->nbounds = nbounds;
    if (f->nlabels == 0)
        (void)metrics_series(f, NULL);
    return f;
}

struct metrics_family *metrics_collector_new(struct metrics *m, const char *name, const char *help,
                                             enum metrics_type type, const char *const *label_names,
                                             metrics_collect_fn fn, void *arg)
{
    if (fn == NULL || (type != METRICS_COUNTER && type != METRICS_GAUGE))
        return NULL;
    struct metrics_family *f = family_add(m, name, help, type, label_names);
    if (f == NULL)
        return NULL;
    f->fn = fn;
    f->arg = arg;
    return f;
}

void metrics_counter_add(struct metrics_series *s, uint64_t n)
{
    GW_ASSERT(s->f->type == METRICS_COUNTER);
    s->count += n;
}

void metrics_histogram_observe(struct metrics_series *s, double v)
{
    const struct metrics_family *f = s->f;
    size_t i = 0;
    GW_ASSERT(f->type == METRICS_HISTOGRAM);
    if (isnan(v))
        return;
    while (i < f->nbounds && v > f->bounds[i])
        i++;
    s->buckets[i]++;
    s->sum += v;
    s->count++;
}

size_t metrics_family_series(const struct metrics_family *f)
{
    return f->nseries + (f->overflow != NULL);
}

uint64_t metrics_counter_value(const struct metrics_series *s)
{
    return s->count;
}

/* ---- rendering -------------------------------------------------------------------- */

void metrics_format_double(struct gw_buf *out, double v)
{
    char buf[40];
    if (isnan(v)) {
        gw_buf_append(out, "NaN", 3);
        return;
    }
    if (isinf(v)) {
        gw_buf_appendf(out, "%s", v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e15) {
        gw_buf_appendf(out, "%.0f", v == 0 ? 0.0 : v); /* no "-0" */
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    gw_buf_appendf(out, "%s", buf);
}

/* HELP text escapes backslash and newline; label values also escape '"'. */
static void append_escaped(struct gw_buf *out, const char *s, bool quote)
{
    const char *run = s;
    for (; *s != '\0'; s++) {
        const char *esc = NULL;
        if (*s == '\\')
            esc = "\\\\";
        else if (*s == '\n')
            esc = "\\n";
        else if (quote && *s == '"')
            esc = "\\\"";
        if (esc == NULL)
            continue;
        gw_buf_append(out, run, (size_t)(s - run));
        gw_buf_append(out, esc, 2);
        run = s + 1;
    }
    gw_buf_append(out, run, (size_t)(s - run));
}

/* name{l1="v1",...[,le="x"]} with |suffix| after the name ("_bucket"). */
static void append_sample_head(struct gw_buf *out, const struct metrics_family *f,
                               const char *suffix, const char *const *values, const char *le)
{
    gw_buf_appendf(out, "%s%s", f->name, suffix);
    if (f->nlabels == 0 && le == NULL)
        return;
    gw_buf_append(out, "{", 1);
    for (size_t i = 0; i < f->nlabels; i++) {
        gw_buf_appendf(out, "%s%s=\"", i ? "," : "", f->labels[i]);
        append_escaped(out, values[i], true);
        gw_buf_append(out, "\"", 1);
    }
    if (le != NULL)
        gw_buf_appendf(out, "%sle=\"%s\"", f->nlabels ? "," : "", le);
    gw_buf_append(out, "}", 1);
}

static void render_histogram(struct gw_buf *out, const struct metrics_family *f,
                             const struct metrics_series *s)
{
    uint64_t cum = 0;
    struct gw_buf le = {0};
    for (size_t i = 0; i <= f->nbounds; i++) {
        cum += s->buckets[i];
        gw_buf_reset(&le);
        if (i < f->nbounds)
            metrics_format_double(&le, f->bounds[i]);
        else
            gw_buf_append(&le, "+Inf", 4);
        append_sample_head(out, f, "_bucket", s->values, gw_buf_cstr(&le));
        gw_buf_appendf(out, " %llu\n", (unsigned long long)cum);
    }
    gw_buf_free(&le);
    append_sample_head(out, f, "_sum", s->values, NULL);
    gw_buf_append(out, " ", 1);
    metrics_format_double(out, s->sum);
    gw_buf_append(out, "\n", 1);
    append_sample_head(out, f, "_count", s->values, NULL);
    gw_buf_appendf(out, " %llu\n", (unsigned long long)s->count);
}

static void render_series(struct gw_buf *out, const struct metrics_family *f,
                          const struct metrics_series *s)
{
    if (f->type == METRICS_HISTOGRAM) {
        render_histogram(out, f, s);
        return;
    }
    append_sample_head(out, f, "", s->values, NULL);
    gw_buf_appendf(out, " %llu\n", (unsigned long long)s->count);
}

void metrics_sink_add(struct metrics_sink *sink, const char *const *values, double value)
{
    append_sample_head(sink->out, sink->f, "", values, NULL);
    gw_buf_append(sink->out, " ", 1);
    metrics_format_double(sink->out, value);
    gw_buf_append(sink->out, "\n", 1);
}

static const char *type_name(enum metrics_type t)
{
    switch (t) {
    case METRICS_COUNTER:
        return "counter";
    case METRICS_GAUGE:
        return "gauge";
    case METRICS_HISTOGRAM:
        return "histogram";
    }
    return "untyped";
}

void metrics_render(struct metrics *m, struct gw_buf *out)
{
    for (const struct metrics_family *f = m->first; f != NULL; f = f->next) {
        gw_buf_appendf(out, "# HELP %s ", f->name);
        append_escaped(out, f->help, false);
        gw_buf_appendf(out, "\n# TYPE %s %s\n", f->name, type_name(f->type));
        if (f->fn != NULL) {
            struct metrics_sink sink = {.f = f, .out = out};
            f->fn(&sink, f->arg);
            continue;
        }
        for (const struct metrics_series *s = f->first; s != NULL; s = s->next)
            render_series(out, f, s);
        if (f->overflow != NULL)
            render_series(out, f, f->overflow);
    }
}
