/* Unit tests for the sandbox log buffers (src/api/api_logs.c,
 * semantics.md §10-11, §19): level ranks and filters, stored copies and
 * their limits, the ring, and watchers as cursors into it. Everything runs
 * on a bare struct api (no server, no store): the registry only needs its
 * `logs` member. Run under AddressSanitizer, the frees are checked too. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api/api_int.h"
#include "openshell.pb-c.h"

typedef Openshell__V1__SandboxLogLine log_line;

static const char SB[] = "0d4c1f7e-8a0b-4d55-9a53-3f1d2b6c0a11";
static const char SB_UPPER[] = "0D4C1F7E-8A0B-4D55-9A53-3F1D2B6C0A11";

static log_line mk(const char *level, const char *source, int64_t ts, const char *message)
{
    log_line l = OPENSHELL__V1__SANDBOX_LOG_LINE__INIT;
    l.level = (char *)level;
    l.source = (char *)source;
    l.timestamp_ms = ts;
    l.message = (char *)message;
    l.target = (char *)"test";
    return l;
}

/* Pushes a stored copy of a line whose message is the decimal |i|. */
static void ring_push_n(struct api_log_ring *r, int i)
{
    char msg[32];
    snprintf(msg, sizeof(msg), "%d", i);
    log_line l = mk("INFO", "sandbox", 1000 + i, msg);
    size_t bytes;
    log_line *c = api_logs_line_copy(SB, &l, NULL, &bytes);
    api_log_ring_push(r, c, bytes);
}

/* ---- level ranks and filters ------------------------------------------------------ */

static void test_api_logs_level_rank_known_and_unknown(void **state)
{
    (void)state;
    assert_int_equal(api_logs_level_rank("ERROR"), 0);
    assert_int_equal(api_logs_level_rank("error"), 0);
    assert_int_equal(api_logs_level_rank("Warn"), 1);
    assert_int_equal(api_logs_level_rank("INFO"), 2);
    assert_int_equal(api_logs_level_rank("ocsf"), 2);
    assert_int_equal(api_logs_level_rank("DEBUG"), 3);
    assert_int_equal(api_logs_level_rank("trace"), 4);
    assert_int_equal(api_logs_level_rank("WARNING"), 5); /* only the exact names rank */
    assert_int_equal(api_logs_level_rank(""), 5);
    assert_int_equal(api_logs_level_rank(NULL), 5);
}

static void test_api_logs_filter_pass_min_level(void **state)
{
    (void)state;
    struct api_logs_filter f = {.min_level = "warn"};
    log_line err = mk("ERROR", "", 1, "e"), warn = mk("WARN", "", 1, "w"),
             info = mk("INFO", "", 1, "i"), odd = mk("NOTICE", "", 1, "n");
    assert_true(api_logs_filter_pass(&f, &err));
    assert_true(api_logs_filter_pass(&f, &warn));
    assert_false(api_logs_filter_pass(&f, &info));
    assert_false(api_logs_filter_pass(&f, &odd)); /* a known minimum drops unknown names */
    f.min_level = "OCSF";
    assert_true(api_logs_filter_pass(&f, &info));
    f.min_level = "verbose"; /* an unknown minimum lets everything through */
    assert_true(api_logs_filter_pass(&f, &odd));
    f.min_level = "";
    assert_true(api_logs_filter_pass(&f, &odd));
    f.min_level = NULL;
    assert_true(api_logs_filter_pass(&f, &odd));
}

static void test_api_logs_filter_pass_sources(void **state)
{
    (void)state;
    const char *gw[] = {"gateway"};
    const char *both[] = {"sandbox", "gateway"};
    const char *sb[] = {"sandbox"};
    log_line unset = mk("INFO", "", 1, "x"), gateway = mk("INFO", "gateway", 1, "x"),
             sandbox = mk("INFO", "sandbox", 1, "x"), other = mk("INFO", "Sandbox", 1, "x");
    struct api_logs_filter f = {.sources = gw, .n_sources = 1};
    assert_true(api_logs_filter_pass(&f, &unset)); /* empty counts as gateway */
    assert_true(api_logs_filter_pass(&f, &gateway));
    assert_false(api_logs_filter_pass(&f, &sandbox));
    f.sources = sb;
    assert_false(api_logs_filter_pass(&f, &unset));
    assert_true(api_logs_filter_pass(&f, &sandbox));
    assert_false(api_logs_filter_pass(&f, &other)); /* exact match */
    f.sources = both;
    f.n_sources = 2;
    assert_true(api_logs_filter_pass(&f, &unset));
    assert_true(api_logs_filter_pass(&f, &sandbox));
    f.n_sources = 0; /* no list: every source */
    assert_true(api_logs_filter_pass(&f, &other));
}

static void test_api_logs_filter_pass_since(void **state)
{
    (void)state;
    log_line old = mk("INFO", "", 999, "x"), edge = mk("INFO", "", 1000, "x"),
             late = mk("INFO", "", 1001, "x");
    struct api_logs_filter f = {.since_ms = 1000};
    assert_false(api_logs_filter_pass(&f, &old));
    assert_true(api_logs_filter_pass(&f, &edge));
    assert_true(api_logs_filter_pass(&f, &late));
    f.since_ms = 0;
    assert_true(api_logs_filter_pass(&f, &old));
}

static void test_api_logs_filter_pass_all_parts(void **state)
{
    (void)state;
    const char *sb[] = {"sandbox"};
    struct api_logs_filter f = {.since_ms = 50, .sources = sb, .n_sources = 1, .min_level = "INFO"};
    log_line ok = mk("info", "sandbox", 60, "x"), early = mk("INFO", "sandbox", 40, "x"),
             chatty = mk("DEBUG", "sandbox", 60, "x"), gw = mk("ERROR", "gateway", 60, "x");
    assert_true(api_logs_filter_pass(&f, &ok));
    assert_false(api_logs_filter_pass(&f, &early));
    assert_false(api_logs_filter_pass(&f, &chatty));
    assert_false(api_logs_filter_pass(&f, &gw));
}

/* ---- stored copies ---------------------------------------------------------------- */

static void test_api_logs_line_copy_fields_and_source(void **state)
{
    (void)state;
    Openshell__V1__SandboxLogLine__FieldsEntry e1 =
        OPENSHELL__V1__SANDBOX_LOG_LINE__FIELDS_ENTRY__INIT;
    Openshell__V1__SandboxLogLine__FieldsEntry e2 =
        OPENSHELL__V1__SANDBOX_LOG_LINE__FIELDS_ENTRY__INIT;
    Openshell__V1__SandboxLogLine__FieldsEntry *fields[] = {&e1, &e2};
    e1.key = (char *)"pid";
    e1.value = (char *)"42";
    e2.key = (char *)"path";
    e2.value = (char *)"/tmp/x";
    log_line l = mk("WARN", "forged", 1234, "hello");
    l.sandbox_id = (char *)"someone-else";
    l.fields = fields;
    l.n_fields = 2;
    size_t bytes = 0;
    log_line *c = api_logs_line_copy(SB, &l, "sandbox", &bytes);
    assert_string_equal(c->sandbox_id, SB);
    assert_string_equal(c->source, "sandbox");
    assert_string_equal(c->level, "WARN");
    assert_string_equal(c->target, "test");
    assert_string_equal(c->message, "hello");
    assert_int_equal(c->timestamp_ms, 1234);
    assert_int_equal(c->n_fields, 2);
    assert_string_equal(c->fields[0]->key, "pid");
    assert_string_equal(c->fields[1]->value, "/tmp/x");
    assert_true(bytes > sizeof(*c));
    /* A real message: it packs and unpacks to the same content. */
    size_t len = protobuf_c_message_get_packed_size(&c->base);
    uint8_t *buf = malloc(len);
    protobuf_c_message_pack(&c->base, buf);
    log_line *back = openshell__v1__sandbox_log_line__unpack(NULL, len, buf);
    assert_non_null(back);
    assert_string_equal(back->message, "hello");
    assert_int_equal(back->n_fields, 2);
    openshell__v1__sandbox_log_line__free_unpacked(back, NULL);
    free(buf);
    free(c);
    /* NULL source override keeps the line's own. */
    c = api_logs_line_copy(SB, &l, NULL, NULL);
    assert_string_equal(c->source, "forged");
    free(c);
}

static void test_api_logs_line_copy_cuts_long_text(void **state)
{
    (void)state;
    size_t n = API_LOGS_MESSAGE_MAX + 5000;
    char *big = malloc(n + 1);
    /* "é" (2 bytes) after one ASCII byte: the limit falls inside a character. */
    big[0] = 'a';
    for (size_t i = 1; i + 1 < n; i += 2) {
        big[i] = (char)0xC3;
        big[i + 1] = (char)0xA9;
    }
    big[n - 1] = 'z';
    big[n] = '\0';
    log_line l = mk(big, big, 1, big);
    l.target = big;
    log_line *c = api_logs_line_copy(SB, &l, NULL, NULL);
    assert_int_equal(strlen(c->message), API_LOGS_MESSAGE_MAX - 1); /* cut before the 'é' */
    assert_int_equal((unsigned char)c->message[API_LOGS_MESSAGE_MAX - 2], 0xA9);
    assert_true(strlen(c->level) <= API_LOGS_TEXT_MAX);
    assert_true(strlen(c->target) <= API_LOGS_TEXT_MAX);
    assert_true(strlen(c->source) <= API_LOGS_TEXT_MAX);
    assert_true(strlen(c->level) >= API_LOGS_TEXT_MAX - 1);
    /* Nothing was replaced: the cut copy is still valid UTF-8. */
    assert_null(strchr(c->message, '?'));
    free(c);
    free(big);
}

static void test_api_logs_line_copy_repairs_utf8(void **state)
{
    (void)state;
    /* Stray continuation, overlong '/', surrogate, truncated 3-byte
     * sequence at the end; valid 2-, 3- and 4-byte characters stay. */
    const char bad[] = "a\x80"
                       "b\xC0\xAF"
                       "c\xED\xA0\x80"
                       "d\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"
                       "e\xE2\x82";
    log_line l = mk("INFO", "", 1, bad);
    log_line *c = api_logs_line_copy(SB, &l, NULL, NULL);
    assert_string_equal(c->message, "a?b??c???d\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"
                                    "e??");
    free(c);
}

static void test_api_logs_line_copy_caps_fields(void **state)
{
    (void)state;
    size_t n = API_LOGS_FIELDS_MAX + 10;
    Openshell__V1__SandboxLogLine__FieldsEntry *entries = calloc(n, sizeof(*entries));
    Openshell__V1__SandboxLogLine__FieldsEntry **ptrs = calloc(n, sizeof(*ptrs));
    char longkey[API_LOGS_KEY_MAX + 50], longval[API_LOGS_VALUE_MAX + 50];
    memset(longkey, 'k', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = '\0';
    memset(longval, 'v', sizeof(longval) - 1);
    longval[sizeof(longval) - 1] = '\0';
    for (size_t i = 0; i < n; i++) {
        openshell__v1__sandbox_log_line__fields_entry__init(&entries[i]);
        entries[i].key = longkey;
        entries[i].value = longval;
        ptrs[i] = &entries[i];
    }
    log_line l = mk("INFO", "", 1, "m");
    l.fields = ptrs;
    l.n_fields = n;
    size_t bytes;
    log_line *c = api_logs_line_copy(SB, &l, NULL, &bytes);
    assert_int_equal(c->n_fields, API_LOGS_FIELDS_MAX);
    assert_int_equal(strlen(c->fields[0]->key), API_LOGS_KEY_MAX);
    assert_int_equal(strlen(c->fields[API_LOGS_FIELDS_MAX - 1]->value), API_LOGS_VALUE_MAX);
    /* Worst case stays bounded: the whole record is well under 64 KiB. */
    assert_true(bytes < 64 * 1024);
    free(c);
    free(ptrs);
    free(entries);
}

/* ---- ring ------------------------------------------------------------------------- */

static void test_api_log_ring_push_evicts_by_count(void **state)
{
    (void)state;
    struct api_log_ring r;
    api_log_ring_init(&r);
    assert_null(api_log_ring_at(&r, 0));
    for (int i = 0; i < API_LOGS_LINES_MAX + 500; i++)
        ring_push_n(&r, i);
    assert_int_equal(r.len, API_LOGS_LINES_MAX);
    assert_int_equal(r.next_seq, API_LOGS_LINES_MAX + 500);
    assert_int_equal(api_log_ring_first_seq(&r), 500);
    assert_null(api_log_ring_at(&r, 499));
    assert_string_equal(api_log_ring_at(&r, 500)->message, "500");
    assert_string_equal(api_log_ring_at(&r, 1777)->message, "1777");
    assert_string_equal(api_log_ring_at(&r, API_LOGS_LINES_MAX + 499)->message, "2499");
    assert_null(api_log_ring_at(&r, API_LOGS_LINES_MAX + 500));
    api_log_ring_clear(&r);
    assert_int_equal(r.len, 0);
    assert_int_equal(r.bytes, 0);
    assert_int_equal(r.next_seq, API_LOGS_LINES_MAX + 500); /* cursors stay valid */
    assert_null(api_log_ring_at(&r, 600));
    ring_push_n(&r, 7);
    assert_string_equal(api_log_ring_at(&r, API_LOGS_LINES_MAX + 500)->message, "7");
    api_log_ring_clear(&r);
}

static void test_api_log_ring_push_evicts_by_bytes(void **state)
{
    (void)state;
    struct api_log_ring r;
    api_log_ring_init(&r);
    char *big = malloc(API_LOGS_MESSAGE_MAX + 1);
    memset(big, 'x', API_LOGS_MESSAGE_MAX);
    big[API_LOGS_MESSAGE_MAX] = '\0';
    size_t one = 0;
    for (int i = 0; i < 200; i++) {
        log_line l = mk("INFO", "sandbox", i, big);
        size_t bytes;
        log_line *c = api_logs_line_copy(SB, &l, NULL, &bytes);
        one = bytes;
        api_log_ring_push(&r, c, bytes);
        assert_true(r.bytes <= API_LOGS_BYTES_MAX);
    }
    assert_int_equal(r.len, API_LOGS_BYTES_MAX / one);
    assert_int_equal(r.bytes, r.len * one);
    assert_int_equal(api_log_ring_at(&r, 199)->timestamp_ms, 199); /* the newest stays */
    api_log_ring_clear(&r);
    free(big);
}

/* ---- registry and watchers ------------------------------------------------------- */

struct seen {
    int calls;
    bool unwatch_in_callback;
    struct api_log_watch *w;
};

static void on_ready(struct api_log_watch *w, void *arg)
{
    struct seen *s = arg;
    s->calls++;
    if (s->unwatch_in_callback) {
        api_logs_unwatch(w);
        s->w = NULL;
    }
}

static void append_n(struct api *a, const char *id, int from, int to, const char *source)
{
    for (int i = from; i < to; i++) {
        char msg[32];
        snprintf(msg, sizeof(msg), "%d", i);
        log_line l = mk(i % 2 ? "DEBUG" : "INFO", source, 1000 + i, msg);
        api_logs_append(a, id, &l);
    }
}

/* Takes every available line; returns how many and the last message. */
static int take_all(struct api_log_watch *w, bool replay_only, uint64_t *dropped, char *last)
{
    int n = 0;
    uint64_t d;
    const log_line *l;
    *dropped = 0;
    while ((l = api_logs_watch_next(w, replay_only, &d)) != NULL) {
        *dropped += d;
        snprintf(last, 32, "%s", l->message);
        n++;
    }
    *dropped += d;
    return n;
}

static void test_api_logs_watch_replay_then_live(void **state)
{
    (void)state;
    struct api a = {0};
    struct seen s = {0};
    char last[32] = "";
    uint64_t dropped;
    append_n(&a, SB, 0, 300, "sandbox");
    struct api_logs_filter f = {0};
    /* Any spelling of the id finds the same buffer. */
    s.w = api_logs_watch(&a, SB_UPPER, 0, &f, on_ready, &s);
    assert_true(api_logs_watch_replaying(s.w));
    assert_int_equal(take_all(s.w, true, &dropped, last), API_LOGS_REPLAY_DEFAULT);
    assert_string_equal(last, "299");
    assert_int_equal(dropped, 0);
    assert_false(api_logs_watch_replaying(s.w));
    append_n(&a, SB, 300, 303, "");
    assert_int_equal(s.calls, 3);
    assert_null(api_logs_watch_next(s.w, true, &dropped)); /* replay is over */
    const log_line *l = api_logs_watch_next(s.w, false, &dropped);
    assert_string_equal(l->message, "300");
    assert_string_equal(l->source, "gateway"); /* empty source stored as gateway */
    assert_string_equal(l->sandbox_id, SB);
    assert_int_equal(take_all(s.w, false, &dropped, last), 2);
    api_logs_unwatch(s.w);
    api_logs_free(&a);
}

static void test_api_logs_watch_filters_replay_and_live(void **state)
{
    (void)state;
    struct api a = {0};
    struct seen s = {0};
    char last[32] = "";
    uint64_t dropped;
    append_n(&a, SB, 0, 50, "sandbox");
    const char *src[] = {"sandbox"};
    /* since applies to the replay only; level and source to both. */
    struct api_logs_filter f = {
        .since_ms = 1040, .sources = src, .n_sources = 1, .min_level = "INFO"};
    s.w = api_logs_watch(&a, SB, 20, &f, on_ready, &s);
    /* Last 20 = 30..49; since 1040 keeps 40..49; INFO keeps the even ones. */
    assert_int_equal(take_all(s.w, true, &dropped, last), 5);
    assert_string_equal(last, "48");
    append_n(&a, SB, 0, 4, "sandbox"); /* old timestamps: live ignores since */
    append_n(&a, SB, 4, 6, "gateway");
    assert_int_equal(take_all(s.w, false, &dropped, last), 2);
    assert_string_equal(last, "2");
    api_logs_unwatch(s.w);
    api_logs_free(&a);
}

static void test_api_logs_watch_reports_dropped_when_behind(void **state)
{
    (void)state;
    struct api a = {0};
    struct seen s = {0};
    char last[32] = "";
    uint64_t dropped;
    struct api_logs_filter f = {0};
    s.w = api_logs_watch(&a, SB, 0, &f, on_ready, &s);
    append_n(&a, SB, 0, API_LOGS_LINES_MAX + 123, "sandbox");
    assert_int_equal(take_all(s.w, false, &dropped, last), API_LOGS_LINES_MAX);
    assert_int_equal(dropped, 123);
    assert_string_equal(last, "2122");
    /* Reported once. */
    assert_null(api_logs_watch_next(s.w, false, &dropped));
    assert_int_equal(dropped, 0);
    api_logs_unwatch(s.w);
    api_logs_free(&a);
}

static void test_api_logs_drop_keeps_watchers_quiet(void **state)
{
    (void)state;
    struct api a = {0};
    struct seen s = {0};
    char last[32] = "";
    uint64_t dropped;
    struct api_logs_filter f = {0};
    append_n(&a, SB, 0, 10, "sandbox");
    s.w = api_logs_watch(&a, SB, 5, &f, on_ready, &s);
    api_logs_drop(&a, SB);
    assert_false(api_logs_watch_replaying(s.w));
    assert_null(api_logs_watch_next(s.w, false, &dropped));
    assert_int_equal(dropped, 0);
    append_n(&a, SB, 10, 11, "sandbox"); /* still attached: sees new lines */
    assert_int_equal(take_all(s.w, false, &dropped, last), 1);
    assert_string_equal(last, "10");
    api_logs_unwatch(s.w);
    /* Dropping an unknown or malformed id is harmless. */
    api_logs_drop(&a, "not-a-uuid");
    api_logs_drop(&a, "11111111-2222-3333-4444-555555555555");
    api_logs_free(&a);
}

static void test_api_logs_unwatch_inside_callback(void **state)
{
    (void)state;
    struct api a = {0};
    struct seen s1 = {.unwatch_in_callback = true}, s2 = {0};
    struct api_logs_filter f = {0};
    s1.w = api_logs_watch(&a, SB, 0, &f, on_ready, &s1);
    s2.w = api_logs_watch(&a, SB, 0, &f, on_ready, &s2);
    append_n(&a, SB, 0, 2, "sandbox");
    assert_int_equal(s1.calls, 1); /* gone after the first line */
    assert_int_equal(s2.calls, 2);
    assert_null(s1.w);
    api_logs_unwatch(s2.w);
    api_logs_free(&a);
}

static void test_api_logs_append_rejects_bad_id(void **state)
{
    (void)state;
    struct api a = {0};
    struct seen s = {0};
    uint64_t dropped;
    struct api_logs_filter f = {0};
    log_line l = mk("INFO", "", 0, "x");
    api_logs_append(&a, "nope", &l);
    api_logs_append(&a, NULL, &l);
    s.w = api_logs_watch(&a, "nope", 0, &f, on_ready, &s);
    assert_null(api_logs_watch_next(s.w, false, &dropped));
    api_logs_unwatch(s.w);
    /* A zero timestamp is stamped with the wall clock. */
    gw_time_update();
    api_logs_append(&a, SB, &l);
    s.w = api_logs_watch(&a, SB, 0, &f, on_ready, &s);
    const log_line *got = api_logs_watch_next(s.w, true, &dropped);
    assert_non_null(got);
    assert_true(got->timestamp_ms > 0);
    api_logs_unwatch(s.w);
    api_logs_free(&a);
}

/* Many sandboxes: the table grows and every buffer stays separate. */
static void test_api_logs_many_sandboxes(void **state)
{
    (void)state;
    struct api a = {0};
    char id[37];
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof(id), "%08x-0000-4000-8000-000000000000", i);
        append_n(&a, id, i, i + 2, "sandbox");
    }
    for (int i = 0; i < 1000; i += 97) {
        struct seen s = {0};
        struct api_logs_filter f = {0};
        char last[32] = "", want[32];
        uint64_t dropped;
        snprintf(id, sizeof(id), "%08x-0000-4000-8000-000000000000", i);
        s.w = api_logs_watch(&a, id, 0, &f, on_ready, &s);
        assert_int_equal(take_all(s.w, true, &dropped, last), 2);
        snprintf(want, sizeof(want), "%d", i + 1);
        assert_string_equal(last, want);
        api_logs_unwatch(s.w);
        api_logs_drop(&a, id);
    }
    api_logs_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_api_logs_level_rank_known_and_unknown),
        cmocka_unit_test(test_api_logs_filter_pass_min_level),
        cmocka_unit_test(test_api_logs_filter_pass_sources),
        cmocka_unit_test(test_api_logs_filter_pass_since),
        cmocka_unit_test(test_api_logs_filter_pass_all_parts),
        cmocka_unit_test(test_api_logs_line_copy_fields_and_source),
        cmocka_unit_test(test_api_logs_line_copy_cuts_long_text),
        cmocka_unit_test(test_api_logs_line_copy_repairs_utf8),
        cmocka_unit_test(test_api_logs_line_copy_caps_fields),
        cmocka_unit_test(test_api_log_ring_push_evicts_by_count),
        cmocka_unit_test(test_api_log_ring_push_evicts_by_bytes),
        cmocka_unit_test(test_api_logs_watch_replay_then_live),
        cmocka_unit_test(test_api_logs_watch_filters_replay_and_live),
        cmocka_unit_test(test_api_logs_watch_reports_dropped_when_behind),
        cmocka_unit_test(test_api_logs_drop_keeps_watchers_quiet),
        cmocka_unit_test(test_api_logs_unwatch_inside_callback),
        cmocka_unit_test(test_api_logs_append_rejects_bad_id),
        cmocka_unit_test(test_api_logs_many_sandboxes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
