/* The SQL-free parts of the event stream: the ring of recent events and
 * subscription filters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "events/events.h"
#include "labels/labels.h"

static struct events_event *ev(uint64_t seq)
{
    return events_event_new(seq, 1000 + (int64_t)seq, "id-1", "sb", "default", "sandbox.created",
                            "", "PROVISIONING", "alice", "", "{\"app\":\"web\"}", "{}");
}

static void test_events_ring_push_get_in_order(void **state)
{
    struct events_ring r;
    events_ring_init(&r, 8, 10);
    assert_null(events_ring_get(&r, 10));
    for (uint64_t s = 11; s <= 15; s++)
        assert_int_equal(events_ring_push(&r, ev(s)), 0);
    assert_int_equal(r.lo, 10);
    assert_int_equal(r.hi, 15);
    assert_null(events_ring_get(&r, 10));
    assert_null(events_ring_get(&r, 16));
    for (uint64_t s = 11; s <= 15; s++)
        assert_int_equal(events_ring_get(&r, s)->seq, s);
    events_ring_free(&r);
}

static void test_events_ring_evicts_oldest_when_full(void **state)
{
    struct events_ring r;
    events_ring_init(&r, 4, 0);
    for (uint64_t s = 1; s <= 10; s++)
        events_ring_push(&r, ev(s));
    assert_int_equal(r.lo, 6);
    assert_int_equal(r.hi, 10);
    assert_null(events_ring_get(&r, 6));
    for (uint64_t s = 7; s <= 10; s++)
        assert_int_equal(events_ring_get(&r, s)->seq, s);
    events_ring_free(&r);
}

static void test_events_ring_restarts_on_gap(void **state)
{
    struct events_ring r;
    events_ring_init(&r, 4, 0);
    events_ring_push(&r, ev(1));
    events_ring_push(&r, ev(2));
    assert_int_equal(events_ring_push(&r, ev(9)), 1);
    assert_int_equal(r.lo, 8);
    assert_int_equal(r.hi, 9);
    assert_null(events_ring_get(&r, 2));
    assert_int_equal(events_ring_get(&r, 9)->seq, 9);
    events_ring_free(&r);
}

static void test_events_ring_reset_keeps_shared_events(void **state)
{
    struct events_ring r;
    struct events_event *e = ev(1);
    events_event_ref(e); /* a subscriber page still holds it */
    events_ring_init(&r, 4, 0);
    events_ring_push(&r, e);
    events_ring_reset(&r, 100);
    assert_int_equal(r.lo, 100);
    assert_int_equal(r.hi, 100);
    assert_int_equal(e->refs, 1);
    assert_string_equal(e->actor, "alice");
    events_event_unref(e);
    events_ring_free(&r);
}

static void test_events_event_new_copies_strings(void **state)
{
    char kind[] = "sandbox.deleted";
    struct events_event *e =
        events_event_new(7, 5, NULL, "n", "ws", kind, NULL, NULL, "bob", NULL, NULL, NULL);
    kind[0] = 'X';
    assert_string_equal(e->kind, "sandbox.deleted");
    assert_string_equal(e->sandbox_id, "");
    assert_string_equal(e->labels_json, "");
    assert_int_equal(e->seq, 7);
    events_event_unref(e);
}

static void test_events_filter_matches_workspace_kind_sandbox(void **state)
{
    struct events_event *e = ev(1);
    const char *kinds[] = {"sandbox.deleted", "sandbox.created", NULL};
    const char *other[] = {"workspace.created", NULL};
    struct events_filter f = {0};
    assert_true(events_filter_matches(&f, e));
    f.workspace = "default";
    assert_true(events_filter_matches(&f, e));
    f.workspace = "team";
    assert_false(events_filter_matches(&f, e));
    f.workspace = NULL;
    f.kinds = kinds;
    assert_true(events_filter_matches(&f, e));
    f.kinds = other;
    assert_false(events_filter_matches(&f, e));
    f.kinds = NULL;
    f.sandbox_id = "id-1";
    assert_true(events_filter_matches(&f, e));
    f.sandbox_id = "id-2";
    assert_false(events_filter_matches(&f, e));
    events_event_unref(e);
}

static void test_events_filter_label_selector(void **state)
{
    struct events_event *e = ev(1);
    struct labels_selector sel;
    char err[128];
    struct events_filter f = {.sel = &sel};
    assert_int_equal(labels_selector_parse("app=web", &sel, err, sizeof(err)), 0);
    assert_true(events_filter_matches(&f, e));
    labels_selector_free(&sel);
    assert_int_equal(labels_selector_parse("app=db", &sel, err, sizeof(err)), 0);
    assert_false(events_filter_matches(&f, e));
    labels_selector_free(&sel);
    assert_int_equal(labels_selector_parse("app=web,tier=x", &sel, err, sizeof(err)), 0);
    assert_false(events_filter_matches(&f, e));
    labels_selector_free(&sel);
    events_event_unref(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_events_ring_push_get_in_order),
        cmocka_unit_test(test_events_ring_evicts_oldest_when_full),
        cmocka_unit_test(test_events_ring_restarts_on_gap),
        cmocka_unit_test(test_events_ring_reset_keeps_shared_events),
        cmocka_unit_test(test_events_event_new_copies_strings),
        cmocka_unit_test(test_events_filter_matches_workspace_kind_sandbox),
        cmocka_unit_test(test_events_filter_label_selector),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
