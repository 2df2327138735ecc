/* Unit tests for label/annotation validation, DNS-1123 names and label
 * selectors (src/labels). Leaks are caught by running this binary under
 * AddressSanitizer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "labels/labels.h"

#define ERRLEN 512

/* Returns a freshly allocated string of |n| copies of |c| (caller frees). */
static char *rep(char c, size_t n)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* Concatenates |a| and |b| into a new string (caller frees). */
static char *cat(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *s = malloc(na + nb + 1);
    assert_non_null(s);
    memcpy(s, a, na);
    memcpy(s + na, b, nb + 1);
    return s;
}

static void expect_err_contains(const char *err, const char *want, const char *input)
{
    if (strstr(err, want) == NULL)
        fail_msg("input '%s': error '%s' lacks '%s'", input, err, want);
    if (strchr(err, '\n') != NULL)
        fail_msg("input '%s': error '%s' spans lines", input, err);
}

static void key_ok(const char *key)
{
    char err[ERRLEN] = "";
    if (!labels_key_valid(key, err, sizeof(err)))
        fail_msg("key '%s' rejected: %s", key, err);
}

static void key_bad(const char *key, const char *want)
{
    char err[ERRLEN] = "";
    if (labels_key_valid(key, err, sizeof(err)))
        fail_msg("key '%s' accepted", key);
    expect_err_contains(err, want, key);
}

static void value_ok(const char *value)
{
    char err[ERRLEN] = "";
    if (!labels_value_valid(value, err, sizeof(err)))
        fail_msg("value '%s' rejected: %s", value, err);
}

static void value_bad(const char *value, const char *want)
{
    char err[ERRLEN] = "";
    if (labels_value_valid(value, err, sizeof(err)))
        fail_msg("value '%s' accepted", value);
    expect_err_contains(err, want, value);
}

/* ---- labels_key_valid ---------------------------------------------------- */

static void test_labels_key_valid_accepts_plain_and_prefixed(void **state)
{
    key_ok("app");
    key_ok("a");
    key_ok("A");
    key_ok("1");
    key_ok("Z9");
    key_ok("a_b.c-d");
    key_ok("MyLabel");
    key_ok("app.kubernetes.io/name");
    key_ok("example.com/my-label");
    key_ok("k8s.io/App_Name");
    key_ok("a/b");
    key_ok("a-b.c-d/x");
    key_ok("123.456/x");
}

static void test_labels_key_valid_name_length(void **state)
{
    char *n63 = rep('a', 63);
    char *n64 = rep('a', 64);
    char *p63 = cat("example.com/", n63);
    char *p64 = cat("example.com/", n64);

    key_ok(n63);
    key_bad(n64, "name must be at most 63 characters");
    key_ok(p63);
    key_bad(p64, "name must be at most 63 characters");
    free(n63);
    free(n64);
    free(p63);
    free(p64);
}

static void test_labels_key_valid_key_length(void **state)
{
    char *prefix189 = rep('p', 189);
    char *prefix190 = rep('p', 190);
    char *name63 = rep('n', 63);
    char *k253, *k254, *tmp;

    tmp = cat(prefix189, "/");
    k253 = cat(tmp, name63);
    free(tmp);
    tmp = cat(prefix190, "/");
    k254 = cat(tmp, name63);
    free(tmp);
    assert_int_equal(strlen(k253), 253);
    assert_int_equal(strlen(k254), 254);
    key_ok(k253);
    key_bad(k254, "must be at most 253 characters");
    free(prefix189);
    free(prefix190);
    free(name63);
    free(k253);
    free(k254);
}

static void test_labels_key_valid_rejects_long_prefix(void **state)
{
    char *prefix = rep('p', 253);
    char *key = cat(prefix, "/a");

    /* The whole-key limit fires first. */
    key_bad(key, "must be at most 253 characters");
    free(prefix);
    free(key);
}

static void test_labels_key_valid_rejects_bad_chars(void **state)
{
    const char *want = "name may contain only letters, digits, '-', '_' and '.'";

    key_bad("a b", want);
    key_bad("a@b", want);
    key_bad("a=b", want);
    key_bad("a,b", want);
    key_bad("a:b", want);
    key_bad("a\tb", want);
    key_bad("a/b/c", want);
    key_bad("x/a b", want);
    /* Upstream accepts Unicode alphanumerics; we accept ASCII only. */
    key_bad("caf\xc3\xa9", want);
}

static void test_labels_key_valid_rejects_name_edges(void **state)
{
    key_bad("", "label key must not be empty");
    key_bad(NULL, "label key must not be empty");
    key_bad("-a", "name must start with a letter or digit");
    key_bad("_a", "name must start with a letter or digit");
    key_bad(".a", "name must start with a letter or digit");
    key_bad("a-", "name must end with a letter or digit");
    key_bad("a.", "name must end with a letter or digit");
    key_bad("a_", "name must end with a letter or digit");
    key_bad("a/", "name must not be empty");
    key_bad("example.com/-x", "name must start");
    key_bad("/a", "prefix must not be empty");
}

static void test_labels_key_valid_rejects_bad_prefix(void **state)
{
    char err[ERRLEN];

    assert_false(labels_key_valid("Foo/bar", err, sizeof(err)));
    assert_string_equal(err, "label key 'Foo/bar': prefix must be lowercase");
    key_bad("example.COM/x", "prefix must be lowercase");
    key_bad("foo_bar/x", "prefix may contain only lowercase letters, digits, '-' and '.'");
    key_bad("foo bar/x", "prefix may contain only");
    key_bad("-foo/x", "prefix must not start or end with '-' or '.'");
    key_bad("foo-/x", "prefix must not start or end with '-' or '.'");
    key_bad(".foo/x", "prefix must not start or end with '-' or '.'");
    key_bad("foo./x", "prefix must not start or end with '-' or '.'");
    key_bad("foo..bar/x", "prefix must not contain '..'");
    key_ok("foo.bar-baz.qux/x");
}

static void test_labels_key_valid_error_text_is_safe(void **state)
{
    char err[ERRLEN];
    char tiny[8];
    char *longkey = rep('A', 300);

    /* Control characters and quotes are escaped: the message is one line. */
    assert_false(labels_key_valid("a\nb'", err, sizeof(err)));
    assert_non_null(strstr(err, "'a\\x0ab\\x27'"));
    expect_err_contains(err, "name may contain", "a\\nb");
    /* Long input is cut. */
    memcpy(longkey, "Foo/", 4);
    assert_false(labels_key_valid(longkey, err, sizeof(err)));
    assert_non_null(strstr(err, "...'"));
    assert_true(strlen(err) < 120);
    /* A short buffer stays NUL-terminated; NULL/0 buffers are fine. */
    assert_false(labels_key_valid("Foo/bar", tiny, sizeof(tiny)));
    assert_int_equal(strlen(tiny), sizeof(tiny) - 1);
    assert_false(labels_key_valid("Foo/bar", NULL, 0));
    assert_false(labels_key_valid("Foo/bar", err, 0));
    assert_true(labels_key_valid("ok", NULL, 0));
    free(longkey);
}

/* ---- labels_value_valid -------------------------------------------------- */

static void test_labels_value_valid_accepts(void **state)
{
    char *v63 = rep('v', 63);

    value_ok("");
    value_ok(NULL);
    value_ok("a");
    value_ok("A");
    value_ok("9");
    value_ok("a.b-c_d");
    value_ok("v1.2.3");
    value_ok(v63);
    free(v63);
}

static void test_labels_value_valid_rejects(void **state)
{
    char *v64 = rep('v', 64);

    value_bad(v64, "label value '");
    value_bad(v64, "must be at most 63 characters");
    value_bad("-a", "must start with a letter or digit");
    value_bad(".a", "must start with a letter or digit");
    value_bad("a-", "must end with a letter or digit");
    value_bad("a_", "must end with a letter or digit");
    value_bad("a b", "may contain only letters, digits, '-', '_' and '.'");
    value_bad("b=c", "label value 'b=c': may contain only");
    value_bad("a/b", "may contain only");
    value_bad("a,b", "may contain only");
    value_bad("caf\xc3\xa9", "may contain only");
    value_bad(" a", "may contain only");
    free(v64);
}

/* ---- labels_dns_label_valid ---------------------------------------------- */

static void dns_ok(const char *name, size_t max)
{
    char err[ERRLEN] = "";
    if (!labels_dns_label_valid(name, max, err, sizeof(err)))
        fail_msg("name '%s' rejected: %s", name, err);
}

static void dns_bad(const char *name, size_t max, const char *want)
{
    char err[ERRLEN] = "";
    if (labels_dns_label_valid(name, max, err, sizeof(err)))
        fail_msg("name '%s' accepted", name ? name : "(null)");
    expect_err_contains(err, want, name ? name : "(null)");
}

static void test_labels_dns_label_valid_accepts(void **state)
{
    char *n19 = rep('a', 19);
    char *n63 = rep('z', 63);

    dns_ok("a", 19);
    dns_ok("0", 19);
    dns_ok("a-b", 19);
    dns_ok("abc123", 19);
    dns_ok("9lives", 19);
    dns_ok("my-sandbox-1", 19);
    dns_ok("default", 19);
    dns_ok(n19, 19);
    dns_ok(n63, 63);
    free(n19);
    free(n63);
}

static void test_labels_dns_label_valid_rejects(void **state)
{
    char *n20 = rep('a', 20);

    dns_bad("", 19, "name is required");
    dns_bad(NULL, 19, "name is required");
    dns_bad(n20, 19, "must be at most 19 characters");
    dns_bad("-a", 19, "must not start or end with '-'");
    dns_bad("a-", 19, "must not start or end with '-'");
    dns_bad("-", 19, "must not start or end with '-'");
    dns_bad("a--b", 19, "name 'a--b': must not contain '--'");
    dns_bad("A", 19, "may contain only lowercase letters, digits and '-'");
    dns_bad("mySandbox", 19, "may contain only lowercase");
    dns_bad("a_b", 19, "may contain only lowercase");
    dns_bad("a.b", 19, "may contain only lowercase");
    dns_bad("a b", 19, "may contain only lowercase");
    dns_bad("caf\xc3\xa9", 19, "may contain only lowercase");
    free(n20);
}

/* ---- labels_annotation_valid --------------------------------------------- */

static void test_labels_annotation_valid(void **state)
{
    char err[ERRLEN];
    char *v8192 = rep('x', 8192);
    char *v8193 = rep('x', 8193);

    assert_true(labels_annotation_valid("example.com/note", "", err, sizeof(err)));
    assert_true(labels_annotation_valid("note", NULL, err, sizeof(err)));
    assert_true(
        labels_annotation_valid("note", "free text, with = and\nnewlines", err, sizeof(err)));
    assert_true(labels_annotation_valid("note", v8192, err, sizeof(err)));
    assert_false(labels_annotation_valid("note", v8193, err, sizeof(err)));
    expect_err_contains(err, "annotation 'note': value must be at most 8192 bytes", "v8193");
    assert_false(labels_annotation_valid("Foo/bar", "x", err, sizeof(err)));
    assert_string_equal(err, "annotation key 'Foo/bar': prefix must be lowercase");
    assert_false(labels_annotation_valid("", "x", err, sizeof(err)));
    expect_err_contains(err, "annotation key must not be empty", "");
    assert_false(labels_annotation_valid("-x", "x", err, sizeof(err)));
    free(v8192);
    free(v8193);
}

/* ---- labels_map_validate_json -------------------------------------------- */

static void map_bad(json_t *obj, bool annotations, const char *want)
{
    char err[ERRLEN] = "";
    if (labels_map_validate_json(obj, annotations, err, sizeof(err)) != LABELS_ERR_INVALID)
        fail_msg("map accepted, wanted '%s'", want);
    expect_err_contains(err, want, "map");
}

static void test_labels_map_validate_json_accepts(void **state)
{
    char err[ERRLEN];
    json_t *labels =
        json_pack("{s:s, s:s, s:s}", "app", "web", "example.com/tier", "front", "empty", "");
    json_t *ann = json_pack("{s:s}", "example.com/note", "any text: \"quoted\" \n ok");
    json_t *empty = json_object();

    assert_int_equal(labels_map_validate_json(labels, false, err, sizeof(err)), 0);
    assert_int_equal(labels_map_validate_json(ann, true, err, sizeof(err)), 0);
    assert_int_equal(labels_map_validate_json(empty, false, err, sizeof(err)), 0);
    assert_int_equal(labels_map_validate_json(NULL, false, err, sizeof(err)), 0);
    json_decref(labels);
    json_decref(ann);
    json_decref(empty);
}

static json_t *map_of(size_t n)
{
    json_t *obj = json_object();
    char key[32];

    for (size_t i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "k%zu", i);
        json_object_set_new(obj, key, json_string("v"));
    }
    return obj;
}

static void test_labels_map_validate_json_entry_limit(void **state)
{
    char err[ERRLEN];
    json_t *m128 = map_of(128);
    json_t *m129 = map_of(129);

    assert_int_equal(labels_map_validate_json(m128, false, err, sizeof(err)), 0);
    assert_int_equal(labels_map_validate_json(m128, true, err, sizeof(err)), 0);
    map_bad(m129, false, "labels must have at most 128 entries");
    map_bad(m129, true, "annotations must have at most 128 entries");
    json_decref(m128);
    json_decref(m129);
}

static void test_labels_map_validate_json_rejects_entries(void **state)
{
    json_t *arr = json_array();
    json_t *num = json_pack("{s:i}", "app", 1);
    json_t *badkey = json_pack("{s:s}", "Foo/bar", "x");
    json_t *badval = json_pack("{s:s}", "app", "-web");
    json_t *nulkey = json_object();
    json_t *nulval = json_object();
    json_t *bigann = json_object();
    char *v64 = rep('v', 64);
    char *v8193 = rep('v', 8193);
    json_t *longval = json_pack("{s:s}", "app", v64);

    json_object_setn_new(nulkey, "a\0b", 3, json_string("x"));
    json_object_set_new(nulval, "app", json_stringn("a\0b", 3));
    json_object_set_new(bigann, "note", json_string(v8193));
    map_bad(arr, false, "labels must be a JSON object");
    map_bad(num, false, "label 'app': value must be a string");
    map_bad(num, true, "annotation 'app': value must be a string");
    map_bad(badkey, false, "label key 'Foo/bar': prefix must be lowercase");
    map_bad(badkey, true, "annotation key 'Foo/bar': prefix must be lowercase");
    map_bad(badval, false, "label value '-web': must start");
    map_bad(longval, false, "must be at most 63 characters");
    map_bad(nulkey, false, "label key 'a\\x00b'");
    map_bad(nulval, false, "label value 'a\\x00b'");
    map_bad(bigann, true, "value must be at most 8192 bytes");
    /* Annotation values are opaque: these pass as annotations. */
    assert_int_equal(labels_map_validate_json(badval, true, NULL, 0), 0);
    assert_int_equal(labels_map_validate_json(nulval, true, NULL, 0), 0);
    assert_int_equal(labels_map_validate_json(longval, true, NULL, 0), 0);
    json_decref(arr);
    json_decref(num);
    json_decref(badkey);
    json_decref(badval);
    json_decref(nulkey);
    json_decref(nulval);
    json_decref(bigann);
    json_decref(longval);
    free(v64);
    free(v8193);
}

/* ---- labels_selector_parse ------------------------------------------------ */

static void sel_ok(const char *text, struct labels_selector *s)
{
    char err[ERRLEN] = "";
    if (labels_selector_parse(text, s, err, sizeof(err)) != 0)
        fail_msg("selector '%s' rejected: %s", text, err);
}

static void sel_bad(const char *text, const char *want)
{
    struct labels_selector s = {.n = 99, .pairs = (struct labels_pair *)1};
    char err[ERRLEN] = "";

    if (labels_selector_parse(text, &s, err, sizeof(err)) != LABELS_ERR_INVALID)
        fail_msg("selector '%s' accepted", text);
    expect_err_contains(err, want, text);
    assert_int_equal(s.n, 0);
    assert_null(s.pairs);
}

static void expect_pair(const struct labels_selector *s, size_t i, const char *k, const char *v)
{
    assert_true(i < s->n);
    assert_string_equal(s->pairs[i].key, k);
    assert_string_equal(s->pairs[i].value, v);
}

static void test_labels_selector_parse_single(void **state)
{
    struct labels_selector s;

    sel_ok("a=b", &s);
    assert_int_equal(s.n, 1);
    expect_pair(&s, 0, "a", "b");
    labels_selector_free(&s);
    assert_int_equal(s.n, 0);
    assert_null(s.pairs);

    sel_ok("app.kubernetes.io/name=web-1", &s);
    assert_int_equal(s.n, 1);
    expect_pair(&s, 0, "app.kubernetes.io/name", "web-1");
    labels_selector_free(&s);
}

static void test_labels_selector_parse_trims_and_skips(void **state)
{
    struct labels_selector s;

    sel_ok(" a = b , c=d ,", &s);
    assert_int_equal(s.n, 2);
    expect_pair(&s, 0, "a", "b");
    expect_pair(&s, 1, "c", "d");
    labels_selector_free(&s);

    sel_ok(",,\ta=b\n,, ,\r\n", &s);
    assert_int_equal(s.n, 1);
    expect_pair(&s, 0, "a", "b");
    labels_selector_free(&s);

    /* Unicode White_Space (NBSP, ideographic space, em space, NEL) as in
     * Rust's str::trim. */
    sel_ok("\xc2\xa0"
           "a\xe3\x80\x80=\xe2\x80\x83"
           "b\xc2\x85",
           &s);
    assert_int_equal(s.n, 1);
    expect_pair(&s, 0, "a", "b");
    labels_selector_free(&s);
}

static void test_labels_selector_parse_empty(void **state)
{
    struct labels_selector s;

    sel_ok("", &s);
    assert_int_equal(s.n, 0);
    assert_null(s.pairs);
    labels_selector_free(&s);
    sel_ok(NULL, &s);
    assert_int_equal(s.n, 0);
    sel_ok("  , ,, ", &s);
    assert_int_equal(s.n, 0);
    labels_selector_free(&s);
}

static void test_labels_selector_parse_empty_value(void **state)
{
    struct labels_selector s;

    sel_ok("a=", &s);
    assert_int_equal(s.n, 1);
    expect_pair(&s, 0, "a", "");
    labels_selector_free(&s);
    sel_ok("a = ,b=c", &s);
    assert_int_equal(s.n, 2);
    expect_pair(&s, 0, "a", "");
    expect_pair(&s, 1, "b", "c");
    labels_selector_free(&s);
}

static void test_labels_selector_parse_duplicates_kept(void **state)
{
    struct labels_selector s;

    sel_ok("a=b,a=b,a=c", &s);
    assert_int_equal(s.n, 3);
    expect_pair(&s, 2, "a", "c");
    labels_selector_free(&s);
}

static void test_labels_selector_parse_rejects(void **state)
{
    sel_bad("a=b=c", "label value 'b=c': may contain only");
    sel_bad("a", "label selector pair 'a': expected 'key=value'");
    sel_bad("a=b,c", "label selector pair 'c': expected 'key=value'");
    sel_bad("=b", "label selector pair '=b': key must not be empty");
    sel_bad(" = b", "key must not be empty");
    sel_bad("=", "key must not be empty");
    sel_bad("Foo/bar=x", "label key 'Foo/bar': prefix must be lowercase");
    sel_bad("a b=c", "label key 'a b'");
    sel_bad("a=b c", "label value 'b c'");
    sel_bad("a!=b", "label key 'a!'");
    sel_bad("a==b", "label value '=b'");
    sel_bad("a=-b", "must start with a letter or digit");
    sel_bad("a in (b)", "expected 'key=value'");
    sel_bad("a=b,\xc2", "expected 'key=value'");
    sel_bad("ok=1,-bad=2", "label key '-bad'");
}

/* Builds "k0=v,k1=v,...", |n| pairs, with |extra| appended. */
static char *many_pairs(size_t n, const char *extra)
{
    struct gw_buf b = {0};
    char *out;

    for (size_t i = 0; i < n; i++)
        gw_buf_appendf(&b, "%sk%zu=v", i ? "," : "", i);
    gw_buf_appendf(&b, "%s", extra);
    out = strdup(gw_buf_cstr(&b));
    gw_buf_free(&b);
    return out;
}

static void test_labels_selector_parse_pair_limit(void **state)
{
    struct labels_selector s;
    char *t64 = many_pairs(64, "");
    char *t64e = many_pairs(64, ", , ,");
    char *t65 = many_pairs(65, "");
    char *t64bad = many_pairs(64, ",Bad/x=y");

    sel_ok(t64, &s);
    assert_int_equal(s.n, 64);
    expect_pair(&s, 63, "k63", "v");
    labels_selector_free(&s);
    sel_ok(t64e, &s);
    assert_int_equal(s.n, 64);
    labels_selector_free(&s);
    sel_bad(t65, "label selector must have at most 64 pairs");
    /* Like upstream, the count is checked before the 65th pair is parsed. */
    sel_bad(t64bad, "at most 64 pairs");
    free(t64);
    free(t64e);
    free(t65);
    free(t64bad);
}

static void test_labels_selector_free_null_and_twice(void **state)
{
    struct labels_selector s = {0};

    labels_selector_free(NULL);
    labels_selector_free(&s);
    sel_ok("a=b", &s);
    labels_selector_free(&s);
    labels_selector_free(&s);
}

/* ---- matching ------------------------------------------------------------ */

static bool match_text(const char *sel, const char *labels)
{
    struct labels_selector s;
    bool r;

    sel_ok(sel, &s);
    r = labels_selector_matches_text(&s, labels);
    labels_selector_free(&s);
    return r;
}

static void test_labels_selector_matches_json_subset(void **state)
{
    json_t *labels = json_pack("{s:s, s:s, s:s}", "a", "b", "c", "d", "example.com/e", "f");
    struct labels_selector s;

    sel_ok("a=b", &s);
    assert_true(labels_selector_matches_json(&s, labels));
    labels_selector_free(&s);
    sel_ok("a=b,c=d,example.com/e=f", &s);
    assert_true(labels_selector_matches_json(&s, labels));
    labels_selector_free(&s);
    sel_ok("c=d,a=b", &s);
    assert_true(labels_selector_matches_json(&s, labels));
    labels_selector_free(&s);
    sel_ok("a=b,a=b", &s);
    assert_true(labels_selector_matches_json(&s, labels));
    labels_selector_free(&s);
    json_decref(labels);
}

static void test_labels_selector_matches_json_mismatch(void **state)
{
    json_t *labels = json_pack("{s:s, s:s, s:i, s:s}", "a", "b", "c", "d", "n", 1, "bb", "bbb");
    struct labels_selector s;

    sel_ok("a=x", &s);
    assert_false(labels_selector_matches_json(&s, labels));
    labels_selector_free(&s);
    sel_ok("a=b,z=1", &s);
    assert_false(labels_selector_matches_json(&s, labels));
    labels_selector_free(&s);
    sel_ok("n=1", &s);
    assert_false(labels_selector_matches_json(&s, labels));
    labels_selector_free(&s);
    sel_ok("bb=bb", &s);
    assert_false(labels_selector_matches_json(&s, labels));
    labels_selector_free(&s);
    sel_ok("A=b", &s);
    assert_false(labels_selector_matches_json(&s, labels));
    labels_selector_free(&s);
    sel_ok("a=b,a=c", &s);
    assert_false(labels_selector_matches_json(&s, labels));
    labels_selector_free(&s);
    json_decref(labels);
}

static void test_labels_selector_matches_json_empty_value(void **state)
{
    json_t *with = json_pack("{s:s}", "a", "");
    json_t *without = json_object();
    json_t *nul = json_object();
    struct labels_selector s;

    json_object_set_new(nul, "a", json_stringn("b\0x", 3));
    sel_ok("a=", &s);
    assert_true(labels_selector_matches_json(&s, with));
    assert_false(labels_selector_matches_json(&s, without));
    labels_selector_free(&s);
    sel_ok("a=b", &s);
    assert_false(labels_selector_matches_json(&s, nul));
    labels_selector_free(&s);
    json_decref(with);
    json_decref(without);
    json_decref(nul);
}

static void test_labels_selector_matches_json_empty_selector(void **state)
{
    struct labels_selector s = {0};
    json_t *labels = json_pack("{s:s}", "a", "b");
    json_t *arr = json_array();

    assert_true(labels_selector_matches_json(&s, labels));
    assert_true(labels_selector_matches_json(&s, arr));
    assert_true(labels_selector_matches_json(&s, NULL));
    assert_true(labels_selector_matches_json(NULL, labels));
    sel_ok("a=b", &s);
    assert_false(labels_selector_matches_json(&s, arr));
    assert_false(labels_selector_matches_json(&s, NULL));
    labels_selector_free(&s);
    json_decref(labels);
    json_decref(arr);
}

static void test_labels_selector_matches_text(void **state)
{
    struct labels_selector empty = {0};

    assert_true(match_text("a=b", "{\"a\":\"b\",\"x\":\"y\"}"));
    assert_true(match_text(" a = b ", "{\"a\": \"b\"}"));
    assert_false(match_text("a=b", "{\"a\":\"c\"}"));
    assert_false(match_text("a=b", "{}"));
    assert_false(match_text("a=b", "{\"a\":"));
    assert_false(match_text("a=b", "not json"));
    assert_false(match_text("a=b", "[\"a\",\"b\"]"));
    assert_false(match_text("a=b", "\"a=b\""));
    assert_false(match_text("a=b", ""));
    assert_false(match_text("a=b", NULL));
    assert_false(match_text("a=b", "{\"a\":\"b\\u0000\"}"));
    assert_true(match_text("", "{}"));
    assert_true(match_text("", "{\"a\":\"b\"}"));
    /* An empty selector does not parse the text at all. */
    assert_true(labels_selector_matches_text(&empty, "not json"));
    assert_true(labels_selector_matches_text(&empty, NULL));
}

/* ---- labels_selector_to_json --------------------------------------------- */

static void expect_to_json(const char *sel, const char *want)
{
    struct labels_selector s;
    char *got;

    sel_ok(sel, &s);
    got = labels_selector_to_json(&s);
    if (want == NULL) {
        if (got != NULL)
            fail_msg("selector '%s': got %s, want NULL", sel, got);
    } else {
        assert_non_null(got);
        assert_string_equal(got, want);
    }
    free(got);
    labels_selector_free(&s);
}

static void test_labels_selector_to_json_basic(void **state)
{
    char *got;

    expect_to_json("a=b", "{\"a\":\"b\"}");
    expect_to_json(" a = b , c=d ,", "{\"a\":\"b\",\"c\":\"d\"}");
    expect_to_json("z=1,a=2", "{\"z\":\"1\",\"a\":\"2\"}");
    expect_to_json("a=", "{\"a\":\"\"}");
    expect_to_json("app.kubernetes.io/name=web_1.x", "{\"app.kubernetes.io/name\":\"web_1.x\"}");
    expect_to_json("", "{}");
    got = labels_selector_to_json(NULL);
    assert_string_equal(got, "{}");
    free(got);
}

static void test_labels_selector_to_json_duplicates(void **state)
{
    expect_to_json("a=b,a=b", "{\"a\":\"b\"}");
    expect_to_json("a=b,c=d,a=b", "{\"a\":\"b\",\"c\":\"d\"}");
    expect_to_json("a=b,a=c", NULL);
    expect_to_json("a=b,c=d,a=", NULL);
}

static void test_labels_selector_to_json_special_chars(void **state)
{
    /* Hand-built: parsed selectors cannot hold these characters, but the
     * renderer must still produce valid JSON. */
    struct labels_pair pairs[] = {
        {.key = "q\"k\\", .value = "line\nbreak\ttab\x01 caf\xc3\xa9/"},
        {.key = "x'y", .value = "</script>"},
    };
    struct labels_selector s = {.n = 2, .pairs = pairs};
    struct labels_pair bad[] = {{.key = "k", .value = "\xff"}};
    struct labels_selector sbad = {.n = 1, .pairs = bad};
    char *got = labels_selector_to_json(&s);
    json_t *back;

    assert_non_null(got);
    assert_string_equal(got, "{\"q\\\"k\\\\\":\"line\\nbreak\\ttab\\u0001 caf\xc3\xa9/\","
                             "\"x'y\":\"</script>\"}");
    back = json_loads(got, 0, NULL);
    assert_non_null(back);
    assert_true(labels_selector_matches_json(&s, back));
    json_decref(back);
    free(got);
    assert_null(labels_selector_to_json(&sbad));
}

static void test_labels_selector_to_json_roundtrip(void **state)
{
    struct labels_selector s;
    char *got;
    json_t *back;

    sel_ok("example.com/tier=front, app = web ,v=", &s);
    got = labels_selector_to_json(&s);
    assert_non_null(got);
    back = json_loads(got, 0, NULL);
    assert_non_null(back);
    assert_int_equal(json_object_size(back), 3);
    assert_true(labels_selector_matches_json(&s, back));
    assert_true(labels_selector_matches_text(&s, got));
    json_decref(back);
    free(got);
    labels_selector_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_labels_key_valid_accepts_plain_and_prefixed),
        cmocka_unit_test(test_labels_key_valid_name_length),
        cmocka_unit_test(test_labels_key_valid_key_length),
        cmocka_unit_test(test_labels_key_valid_rejects_long_prefix),
        cmocka_unit_test(test_labels_key_valid_rejects_bad_chars),
        cmocka_unit_test(test_labels_key_valid_rejects_name_edges),
        cmocka_unit_test(test_labels_key_valid_rejects_bad_prefix),
        cmocka_unit_test(test_labels_key_valid_error_text_is_safe),
        cmocka_unit_test(test_labels_value_valid_accepts),
        cmocka_unit_test(test_labels_value_valid_rejects),
        cmocka_unit_test(test_labels_dns_label_valid_accepts),
        cmocka_unit_test(test_labels_dns_label_valid_rejects),
        cmocka_unit_test(test_labels_annotation_valid),
        cmocka_unit_test(test_labels_map_validate_json_accepts),
        cmocka_unit_test(test_labels_map_validate_json_entry_limit),
        cmocka_unit_test(test_labels_map_validate_json_rejects_entries),
        cmocka_unit_test(test_labels_selector_parse_single),
        cmocka_unit_test(test_labels_selector_parse_trims_and_skips),
        cmocka_unit_test(test_labels_selector_parse_empty),
        cmocka_unit_test(test_labels_selector_parse_empty_value),
        cmocka_unit_test(test_labels_selector_parse_duplicates_kept),
        cmocka_unit_test(test_labels_selector_parse_rejects),
        cmocka_unit_test(test_labels_selector_parse_pair_limit),
        cmocka_unit_test(test_labels_selector_free_null_and_twice),
        cmocka_unit_test(test_labels_selector_matches_json_subset),
        cmocka_unit_test(test_labels_selector_matches_json_mismatch),
        cmocka_unit_test(test_labels_selector_matches_json_empty_value),
        cmocka_unit_test(test_labels_selector_matches_json_empty_selector),
        cmocka_unit_test(test_labels_selector_matches_text),
        cmocka_unit_test(test_labels_selector_to_json_basic),
        cmocka_unit_test(test_labels_selector_to_json_duplicates),
        cmocka_unit_test(test_labels_selector_to_json_special_chars),
        cmocka_unit_test(test_labels_selector_to_json_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
