/*
 * metrics: a small Prometheus registry rendered in the text exposition
 * format, version 0.0.4.
 *
 * A registry holds metric families, rendered in the order they were
 * declared. There are two kinds of family:
 *
 *   stored     counters and histograms whose values live here. Each label
 *              combination is a series, created (one allocation) the first
 *              time metrics_series() sees it; later look-ups are a hash
 *              probe, and updates (metrics_counter_add,
 *              metrics_histogram_observe) allocate nothing. A family has a
 *              fixed bound on its series: once it is reached, new label
 *              combinations all share one overflow series whose label
 *              values are "other", so a caller that passes unbounded
 *              values cannot grow memory or the scrape without limit.
 *   collected  counters and gauges owned by someone else: a callback runs
 *              at every render and emits the current samples through
 *              metrics_sink_add().
 *
 * The registry knows nothing of the gateway: callers name their families
 * and decide what the labels mean. Not thread-safe; the gateway uses it
 * from its one loop.
 */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

struct metrics;
struct metrics_family;
struct metrics_series;
struct metrics_sink;

#define METRICS_LABELS_MAX  4    /* label names per family */
#define METRICS_BUCKETS_MAX 32   /* histogram upper bounds, +Inf not counted */
#define METRICS_SERIES_MAX  8192 /* largest |max_series| a family may ask for */
#define METRICS_OVERFLOW    "other"

enum metrics_type {
    METRICS_COUNTER,
    METRICS_GAUGE,
    METRICS_HISTOGRAM,
};

/* Caller owns, free with metrics_free(). Never NULL. */
struct metrics *metrics_new(void);
/* Frees the registry with its families and series. NULL is allowed. */
void metrics_free(struct metrics *m);

/* ---- declaring families ----------------------------------------------------
 *
 * |name| must match [a-zA-Z_:][a-zA-Z0-9_:]* and be new in the registry;
 * |help| is any text (escaped on output); |label_names| is NULL or a
 * NULL-terminated list of at most METRICS_LABELS_MAX distinct names matching
 * [a-zA-Z_][a-zA-Z0-9_]* and not starting with "__" (histograms may not use
 * "le"). Each returns the family, borrowed and valid until metrics_free(),
 * or NULL when an argument breaks these rules. A family without labels
 * starts with its one series at zero. */

/* Counter stored here; at most |max_series| (1..METRICS_SERIES_MAX) label
 * combinations, plus the overflow series. */
struct metrics_family *metrics_counter_new(struct metrics *m, const char *name, const char *help,
                                           const char *const *label_names, size_t max_series);
/* Histogram stored here with the |nbounds| (1..METRICS_BUCKETS_MAX)
 * strictly increasing finite upper bounds in |bounds| (copied); the +Inf
 * bucket is implicit. |max_series| as for counters. */
struct metrics_family *metrics_histogram_new(struct metrics *m, const char *name, const char *help,
                                             const char *const *label_names, const double *bounds,
                                             size_t nbounds, size_t max_series);

/* Emits the current samples of a collected family: one metrics_sink_add()
 * per series. Runs inside metrics_render(); it must not declare families. */
typedef void (*metrics_collect_fn)(struct metrics_sink *sink, void *arg);

/* Counter or gauge (|type| METRICS_COUNTER or METRICS_GAUGE) whose samples
 * |fn| emits at render time with |arg|. */
struct metrics_family *metrics_collector_new(struct metrics *m, const char *name, const char *help,
                                             enum metrics_type type, const char *const *label_names,
                                             metrics_collect_fn fn, void *arg);

/* One sample of the family being collected. |label_values| holds one string
 * per label name of the family (NULL when it has none); values are escaped
 * on output. */
void metrics_sink_add(struct metrics_sink *sink, const char *const *label_values, double value);

/* ---- stored series ----------------------------------------------------------- */

/* The series of stored family |f| for |label_values| (one string per label
 * name, copied on creation; NULL when the family has none). Past the
 * family's bound, the overflow series. Borrowed, valid until
 * metrics_free(); callers may keep it to skip the look-up next time. */
struct metrics_series *metrics_series(struct metrics_family *f, const char *const *label_values);
/* Adds |n| to a counter series. */
void metrics_counter_add(struct metrics_series *s, uint64_t n);
/* Records |v| in a histogram series: the first bucket whose bound is >= v,
 * the sum and the count. NaN is ignored. */
void metrics_histogram_observe(struct metrics_series *s, double v);

/* ---- reading ------------------------------------------------------------------- */

/* Appends the whole registry to |out| in the text format: for each family
 * "# HELP", "# TYPE" and its samples; histograms as cumulative
 * name_bucket{...,le="..."} lines ending with le="+Inf", then name_sum
 * and name_count. */
void metrics_render(struct metrics *m, struct gw_buf *out);

/* Series currently stored in |f| (overflow included); 0 for collectors. */
size_t metrics_family_series(const struct metrics_family *f);
/* Value of a counter series. */
uint64_t metrics_counter_value(const struct metrics_series *s);
/* Appends |v| as Prometheus prints floats: shortest text that reads back
 * as |v|, "+Inf", "-Inf" or "NaN". */
void metrics_format_double(struct gw_buf *out, double v);

#endif /* GW_METRICS_H */
