/* Unit tests for the Prometheus registry and its text exposition
 * (src/metrics). Outputs are compared byte for byte: the format is a
 * contract with every scraper. Leaks are caught by running this binary
 * under AddressSanitizer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>

#include "metrics/metrics.h"

/* Renders |m| into a string the caller frees. */
static char *render(struct metrics *m)
{
    struct gw_buf b = {0};
    metrics_render(m, &b);
    char *s = strdup(gw_buf_cstr(&b));
    gw_buf_free(&b);
    assert_non_null(s);
    return s;
}

static void assert_render(struct metrics *m, const char *want)
{
    char *got = render(m);
    if (strcmp(got, want) != 0) {
        print_error("want:\n%s\ngot:\n%s\n", want, got);
        free(got);
        fail();
    }
    free(got);
}

static char *fmt(double v)
{
    struct gw_buf b = {0};
    metrics_format_double(&b, v);
    char *s = strdup(gw_buf_cstr(&b));
    gw_buf_free(&b);
    return s;
}

static void assert_fmt(double v, const char *want)
{
    char *got = fmt(v);
    assert_string_equal(got, want);
    free(got);
}

/* ---- counters --------------------------------------------------------------------- */

static void test_metrics_counter_without_labels_starts_at_zero(void **state)
{
    struct metrics *m = metrics_new();
    struct metrics_family *f = metrics_counter_new(m, "x_total", "Things.", NULL, 1);
    assert_non_null(f);
    assert_render(m, "# HELP x_total Things.\n"
                     "# TYPE x_total counter\n"
                     "x_total 0\n");
    metrics_counter_add(metrics_series(f, NULL), 3);
    metrics_counter_add(metrics_series(f, NULL), 2);
    assert_render(m, "# HELP x_total Things.\n"
                     "# TYPE x_total counter\n"
                     "x_total 5\n");
    metrics_free(m);
}

static void test_metrics_counter_counts_per_label_set(void **state)
{
    static const char *const labels[] = {"method", "code", NULL};
    struct metrics *m = metrics_new();
    struct metrics_family *f = metrics_counter_new(m, "calls_total", "Calls.", labels, 16);
    const char *a[] = {"/s/A", "OK"}, *b[] = {"/s/A", "NOT_FOUND"}, *c[] = {"/s/B", "OK"};

    /* Nothing observed yet: only the header. */
    assert_render(m, "# HELP calls_total Calls.\n# TYPE calls_total counter\n");
    struct metrics_series *sa = metrics_series(f, a);
    metrics_counter_add(sa, 1);
    metrics_counter_add(metrics_series(f, b), 1);
    metrics_counter_add(metrics_series(f, c), 4);
    metrics_counter_add(metrics_series(f, a), 1);
    /* The same label set gives the same series. */
    assert_ptr_equal(metrics_series(f, a), sa);
    assert_int_equal(metrics_counter_value(sa), 2);
    assert_int_equal(metrics_family_series(f), 3);
    assert_render(m, "# HELP calls_total Calls.\n"
                     "# TYPE calls_total counter\n"
                     "calls_total{method=\"/s/A\",code=\"OK\"} 2\n"
                     "calls_total{method=\"/s/A\",code=\"NOT_FOUND\"} 1\n"
                     "calls_total{method=\"/s/B\",code=\"OK\"} 4\n");
    metrics_free(m);
}

/* ("a","bc") and ("ab","c") must be different series. */
static void test_metrics_series_distinguishes_value_boundaries(void **state)
{
    static const char *const labels[] = {"x", "y", NULL};
    struct metrics *m = metrics_new();
    struct metrics_family *f = metrics_counter_new(m, "t_total", "T.", labels, 4);
    const char *a[] = {"a", "bc"}, *b[] = {"ab", "c"};
    assert_ptr_not_equal(metrics_series(f, a), metrics_series(f, b));
    assert_int_equal(metrics_family_series(f), 2);
    metrics_free(m);
}

static void test_metrics_series_bound_uses_overflow(void **state)
{
    static const char *const labels[] = {"path", NULL};
    struct metrics *m = metrics_new();
    struct metrics_family *f = metrics_counter_new(m, "req_total", "Requests.", labels, 2);
    char name[32];

    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof(name), "/p%d", i);
        const char *v[] = {name};
        metrics_counter_add(metrics_series(f, v), 1);
    }
    /* Two real series and one overflow series, however many values came. */
    assert_int_equal(metrics_family_series(f), 3);
    const char *first[] = {"/p0"};
    metrics_counter_add(metrics_series(f, first), 1); /* existing series still found */
    assert_render(m, "# HELP req_total Requests.\n"
                     "# TYPE req_total counter\n"
                     "req_total{path=\"/p0\"} 2\n"
                     "req_total{path=\"/p1\"} 1\n"
                     "req_total{path=\"other\"} 98\n");
    metrics_free(m);
}

/* ---- escaping ---------------------------------------------------------------------- */

static void test_metrics_render_escapes_label_values_and_help(void **state)
{
    static const char *const labels[] = {"v", NULL};
    struct metrics *m = metrics_new();
    struct metrics_family *f =
        metrics_counter_new(m, "e_total", "Back\\slash, \"quotes\" and\nnewline.", labels, 4);
    const char *v[] = {"a\\b\"c\nd"};
    metrics_counter_add(metrics_series(f, v), 7);
    /* HELP escapes \ and newline only; label values also escape ". */
    assert_render(m, "# HELP e_total Back\\\\slash, \"quotes\" and\\nnewline.\n"
                     "# TYPE e_total counter\n"
                     "e_total{v=\"a\\\\b\\\"c\\nd\"} 7\n");
    metrics_free(m);
}

/* ---- histograms --------------------------------------------------------------------- */

static void test_metrics_histogram_buckets_are_cumulative(void **state)
{
    static const char *const labels[] = {"method", NULL};
    static const double bounds[] = {0.25, 0.5, 1};
    struct metrics *m = metrics_new();
    struct metrics_family *f =
        metrics_histogram_new(m, "lat_seconds", "Latency.", labels, bounds, 3, 8);
    const char *a[] = {"/s/A"};
    struct metrics_series *s = metrics_series(f, a);

    metrics_histogram_observe(s, 0.125);
    metrics_histogram_observe(s, 0.25); /* on the bound: le is inclusive */
    metrics_histogram_observe(s, 0.75);
    metrics_histogram_observe(s, 2.0); /* only +Inf */
    metrics_histogram_observe(s, NAN); /* ignored */
    assert_render(m, "# HELP lat_seconds Latency.\n"
                     "# TYPE lat_seconds histogram\n"
                     "lat_seconds_bucket{method=\"/s/A\",le=\"0.25\"} 2\n"
                     "lat_seconds_bucket{method=\"/s/A\",le=\"0.5\"} 2\n"
                     "lat_seconds_bucket{method=\"/s/A\",le=\"1\"} 3\n"
                     "lat_seconds_bucket{method=\"/s/A\",le=\"+Inf\"} 4\n"
                     "lat_seconds_sum{method=\"/s/A\"} 3.125\n"
                     "lat_seconds_count{method=\"/s/A\"} 4\n");
    metrics_free(m);
}

static void test_metrics_histogram_without_labels(void **state)
{
    static const double bounds[] = {1, 2.5};
    struct metrics *m = metrics_new();
    struct metrics_family *f = metrics_histogram_new(m, "h", "H.", NULL, bounds, 2, 1);
    assert_render(m, "# HELP h H.\n# TYPE h histogram\n"
                     "h_bucket{le=\"1\"} 0\nh_bucket{le=\"2.5\"} 0\nh_bucket{le=\"+Inf\"} 0\n"
                     "h_sum 0\nh_count 0\n");
    metrics_histogram_observe(metrics_series(f, NULL), 2);
    assert_render(m, "# HELP h H.\n# TYPE h histogram\n"
                     "h_bucket{le=\"1\"} 0\nh_bucket{le=\"2.5\"} 1\nh_bucket{le=\"+Inf\"} 1\n"
                     "h_sum 2\nh_count 1\n");
    metrics_free(m);
}

/* ---- collected families ---------------------------------------------------------------- */

struct pool {
    unsigned busy, idle;
    int calls;
};

static void collect_pool(struct metrics_sink *sink, void *arg)
{
    struct pool *p = arg;
    const char *b[] = {"busy"}, *i[] = {"idle"};
    p->calls++;
    metrics_sink_add(sink, b, p->busy);
    metrics_sink_add(sink, i, p->idle);
}

static void collect_one(struct metrics_sink *sink, void *arg)
{
    metrics_sink_add(sink, NULL, *(double *)arg);
}

static void collect_nothing(struct metrics_sink *sink, void *arg)
{
    (void)sink;
    (void)arg;
}

static void test_metrics_collector_reads_at_render(void **state)
{
    static const char *const labels[] = {"state", NULL};
    struct metrics *m = metrics_new();
    struct pool p = {.busy = 1, .idle = 3};
    double up = 1;
    assert_non_null(metrics_collector_new(m, "pool_connections", "Pool.", METRICS_GAUGE, labels,
                                          collect_pool, &p));
    assert_non_null(metrics_collector_new(m, "up", "Up.", METRICS_GAUGE, NULL, collect_one, &up));
    assert_non_null(metrics_collector_new(m, "gone_total", "Gone.", METRICS_COUNTER, NULL,
                                          collect_nothing, NULL));
    assert_int_equal(p.calls, 0);
    assert_render(m, "# HELP pool_connections Pool.\n"
                     "# TYPE pool_connections gauge\n"
                     "pool_connections{state=\"busy\"} 1\n"
                     "pool_connections{state=\"idle\"} 3\n"
                     "# HELP up Up.\n# TYPE up gauge\nup 1\n"
                     "# HELP gone_total Gone.\n# TYPE gone_total counter\n");
    p.busy = 4;
    p.idle = 0;
    up = 0.25;
    assert_render(m, "# HELP pool_connections Pool.\n"
                     "# TYPE pool_connections gauge\n"
                     "pool_connections{state=\"busy\"} 4\n"
                     "pool_connections{state=\"idle\"} 0\n"
                     "# HELP up Up.\n# TYPE up gauge\nup 0.25\n"
                     "# HELP gone_total Gone.\n# TYPE gone_total counter\n");
    assert_int_equal(p.calls, 2);
    metrics_free(m);
}

/* ---- declarations refused ----------------------------------------------------------------- */

static void test_metrics_declare_refuses_bad_arguments(void **state)
{
    static const char *const bad_label[] = {"0x", NULL};
    static const char *const reserved[] = {"__name", NULL};
    static const char *const dup[] = {"a", "a", NULL};
    static const char *const le[] = {"le", NULL};
    static const char *const many[] = {"a", "b", "c", "d", "e", NULL};
    static const char *const colon[] = {"a:b", NULL};
    static const double bounds[] = {1, 2};
    static const double unsorted[] = {2, 1};
    static const double inf[] = {1, INFINITY};
    struct metrics *m = metrics_new();

    assert_null(metrics_counter_new(m, "", "h", NULL, 1));
    assert_null(metrics_counter_new(m, "9lives", "h", NULL, 1));
    assert_null(metrics_counter_new(m, "has-dash", "h", NULL, 1));
    assert_null(metrics_counter_new(m, "ok_total", NULL, NULL, 1));
    assert_null(metrics_counter_new(m, "ok_total", "h", bad_label, 1));
    assert_null(metrics_counter_new(m, "ok_total", "h", reserved, 1));
    assert_null(metrics_counter_new(m, "ok_total", "h", dup, 1));
    assert_null(metrics_counter_new(m, "ok_total", "h", many, 1));
    assert_null(metrics_counter_new(m, "ok_total", "h", colon, 1));
    assert_null(metrics_counter_new(m, "ok_total", "h", NULL, 0));
    assert_null(metrics_counter_new(m, "ok_total", "h", NULL, METRICS_SERIES_MAX + 1));
    assert_null(metrics_histogram_new(m, "h", "h", le, bounds, 2, 1));
    assert_null(metrics_histogram_new(m, "h", "h", NULL, unsorted, 2, 1));
    assert_null(metrics_histogram_new(m, "h", "h", NULL, inf, 2, 1));
    assert_null(metrics_histogram_new(m, "h", "h", NULL, bounds, 0, 1));
    assert_null(metrics_collector_new(m, "g", "h", METRICS_HISTOGRAM, NULL, collect_nothing, NULL));
    assert_null(metrics_collector_new(m, "g", "h", METRICS_GAUGE, NULL, NULL, NULL));
    /* A counter may use "le" and colons in its name; names are unique. */
    assert_non_null(metrics_counter_new(m, "ns:ok_total", "h", le, 1));
    assert_null(metrics_counter_new(m, "ns:ok_total", "h", NULL, 1));
    assert_null(
        metrics_collector_new(m, "ns:ok_total", "h", METRICS_GAUGE, NULL, collect_nothing, NULL));
    metrics_free(m);
}

/* ---- numbers ----------------------------------------------------------------------------------
 */

static void test_metrics_format_double_is_shortest_round_trip(void **state)
{
    assert_fmt(0, "0");
    assert_fmt(-0.0, "0");
    assert_fmt(42, "42");
    assert_fmt(-3, "-3");
    assert_fmt(0.0005, "0.0005");
    assert_fmt(0.1, "0.1");
    assert_fmt(2.5, "2.5");
    assert_fmt(1.0 / 3.0, "0.3333333333333333");
    assert_fmt(1e300, "1e+300");
    assert_fmt(INFINITY, "+Inf");
    assert_fmt(-INFINITY, "-Inf");
    assert_fmt(NAN, "NaN");
    char *s = fmt(1234567.890625);
    assert_true(strtod(s, NULL) == 1234567.890625);
    free(s);
}

/* A whole registry: families keep declaration order. */
static void test_metrics_render_keeps_declaration_order(void **state)
{
    static const double bounds[] = {1};
    struct metrics *m = metrics_new();
    double v = 3;
    assert_non_null(metrics_collector_new(m, "b", "B.", METRICS_GAUGE, NULL, collect_one, &v));
    assert_non_null(metrics_histogram_new(m, "a", "A.", NULL, bounds, 1, 1));
    assert_non_null(metrics_counter_new(m, "c_total", "C.", NULL, 1));
    assert_render(m, "# HELP b B.\n# TYPE b gauge\nb 3\n"
                     "# HELP a A.\n# TYPE a histogram\n"
                     "a_bucket{le=\"1\"} 0\na_bucket{le=\"+Inf\"} 0\na_sum 0\na_count 0\n"
                     "# HELP c_total C.\n# TYPE c_total counter\nc_total 0\n");
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_counter_without_labels_starts_at_zero),
        cmocka_unit_test(test_metrics_counter_counts_per_label_set),
        cmocka_unit_test(test_metrics_series_distinguishes_value_boundaries),
        cmocka_unit_test(test_metrics_series_bound_uses_overflow),
        cmocka_unit_test(test_metrics_render_escapes_label_values_and_help),
        cmocka_unit_test(test_metrics_histogram_buckets_are_cumulative),
        cmocka_unit_test(test_metrics_histogram_without_labels),
        cmocka_unit_test(test_metrics_collector_reads_at_render),
        cmocka_unit_test(test_metrics_declare_refuses_bad_arguments),
        cmocka_unit_test(test_metrics_format_double_is_shortest_round_trip),
        cmocka_unit_test(test_metrics_render_keeps_declaration_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
