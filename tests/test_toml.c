/* Unit tests for the strict TOML subset parser (src/toml). Leaks are caught
 * by running this binary under AddressSanitizer (make check with
 * --enable-asan). */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "toml/toml.h"

#define ERRLEN 256

static struct toml_value *parse_ok(const char *text)
{
    struct toml_value *root = NULL;
    char err[ERRLEN];
    int rc = toml_parse("t.toml", text, strlen(text), &root, err, sizeof(err));
    if (rc != 0)
        fail_msg("unexpected error %d: %s (input: %s)", rc, err, text);
    assert_non_null(root);
    assert_int_equal(toml_type(root), TOML_TABLE);
    return root;
}

/* Parses |text| (|len| bytes) expecting |code| and an error that starts with
 * "t.toml:|pos|: " and contains |msg|. */
static void expect_error_n(const char *text, size_t len, int code, const char *pos, const char *msg)
{
    struct toml_value *root = (struct toml_value *)1;
    char err[ERRLEN];
    char prefix[64];
    int rc = toml_parse("t.toml", text, len, &root, err, sizeof(err));

    snprintf(prefix, sizeof(prefix), "t.toml:%s: ", pos);
    if (rc != code || strncmp(err, prefix, strlen(prefix)) != 0 || strstr(err, msg) == NULL)
        fail_msg("input %s: got rc %d err '%s', want rc %d '%s...%s'", text, rc, err, code, prefix,
                 msg);
    assert_null(root);
}

static void expect_error(const char *text, const char *pos, const char *msg)
{
    expect_error_n(text, strlen(text), TOML_ERR_SYNTAX, pos, msg);
}

static const struct toml_value *get_path(const struct toml_value *t, const char *a, const char *b)
{
    const struct toml_value *v = toml_table_get(t, a);
    assert_non_null(v);
    if (b != NULL) {
        v = toml_table_get(v, b);
        assert_non_null(v);
    }
    return v;
}

/* ---- accepted input --------------------------------------------------------- */

static void test_toml_parse_accepts_empty_input(void **state)
{
    struct toml_value *root = parse_ok("");
    assert_int_equal(toml_table_len(root), 0);
    toml_free(root);
    root = parse_ok("\n\n   \t\n# only a comment\n");
    assert_int_equal(toml_table_len(root), 0);
    toml_free(root);
}

static void test_toml_parse_reads_scalars(void **state)
{
    struct toml_value *root = parse_ok("s = \"str\"\n"
                                       "l = 'C:\\path'\n"
                                       "i = 42\n"
                                       "n = -17\n"
                                       "p = +5\n"
                                       "u = 1_000_000\n"
                                       "z = 0\n"
                                       "t = true\n"
                                       "f = false # comment\n");
    assert_string_equal(toml_string(toml_table_get(root, "s")), "str");
    assert_string_equal(toml_string(toml_table_get(root, "l")), "C:\\path");
    assert_int_equal(toml_int(toml_table_get(root, "i")), 42);
    assert_int_equal(toml_int(toml_table_get(root, "n")), -17);
    assert_int_equal(toml_int(toml_table_get(root, "p")), 5);
    assert_int_equal(toml_int(toml_table_get(root, "u")), 1000000);
    assert_int_equal(toml_int(toml_table_get(root, "z")), 0);
    assert_true(toml_bool(toml_table_get(root, "t")));
    assert_false(toml_bool(toml_table_get(root, "f")));
    assert_int_equal(toml_type(toml_table_get(root, "f")), TOML_BOOL);
    assert_null(toml_table_get(root, "missing"));
    toml_free(root);
}

static void test_toml_parse_keeps_definition_order(void **state)
{
    struct toml_value *root = parse_ok("b = 1\na = 2\nc = 3\n");
    assert_int_equal(toml_table_len(root), 3);
    assert_string_equal(toml_table_key(root, 0), "b");
    assert_string_equal(toml_table_key(root, 1), "a");
    assert_string_equal(toml_table_key(root, 2), "c");
    assert_int_equal(toml_int(toml_table_at(root, 1)), 2);
    assert_null(toml_table_key(root, 3));
    assert_null(toml_table_at(root, 3));
    toml_free(root);
}

static void test_toml_parse_reads_int64_limits(void **state)
{
    struct toml_value *root =
        parse_ok("max = 9223372036854775807\nmin = -9223372036854775808\nm0 = -0\n");
    assert_true(toml_int(toml_table_get(root, "max")) == INT64_MAX);
    assert_true(toml_int(toml_table_get(root, "min")) == INT64_MIN);
    assert_int_equal(toml_int(toml_table_get(root, "m0")), 0);
    toml_free(root);
}

static void test_toml_parse_decodes_escapes(void **state)
{
    struct toml_value *root = parse_ok("a = \"tab\\tnl\\nq\\\"bs\\\\b\\bf\\fr\\r\"\n"
                                       "u = \"\\u00e9\\u20AC\\U0001F600\"\n"
                                       "raw = \"é€\"\n");
    assert_string_equal(toml_string(toml_table_get(root, "a")), "tab\tnl\nq\"bs\\b\bf\fr\r");
    assert_string_equal(toml_string(toml_table_get(root, "u")),
                        "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
    assert_string_equal(toml_string(toml_table_get(root, "raw")), "é€");
    toml_free(root);
}

static void test_toml_parse_reads_tables(void **state)
{
    struct toml_value *root = parse_ok("top = 1\n"
                                       "[openshell]\n"
                                       "version = 1\n"
                                       "[openshell.gateway]\n"
                                       "bind_address = \"127.0.0.1:17670\"\n"
                                       "[ openshell . gateway . tls ]\n"
                                       "cert_path = \"/c\"\n");
    const struct toml_value *gw = get_path(root, "openshell", "gateway");
    assert_int_equal(toml_type(gw), TOML_TABLE);
    assert_int_equal(toml_line(gw), 4);
    assert_int_equal(toml_col(gw), 1);
    assert_string_equal(toml_string(toml_table_get(gw, "bind_address")), "127.0.0.1:17670");
    assert_string_equal(toml_string(get_path(gw, "tls", "cert_path")), "/c");
    assert_int_equal(toml_int(get_path(root, "openshell", "version")), 1);
    assert_int_equal(toml_int(toml_table_get(root, "top")), 1);
    toml_free(root);
}

static void test_toml_parse_allows_implicit_table_defined_later(void **state)
{
    struct toml_value *root = parse_ok("[a.b.c]\nx = 1\n[a]\ny = 2\n[a.b]\nz = 3\n");
    assert_int_equal(toml_int(get_path(get_path(root, "a", "b"), "c", "x")), 1);
    assert_int_equal(toml_int(get_path(root, "a", "y")), 2);
    assert_int_equal(toml_int(toml_table_get(get_path(root, "a", "b"), "z")), 3);
    toml_free(root);
}

static void test_toml_parse_reads_dotted_keys(void **state)
{
    struct toml_value *root = parse_ok("a.b = 1\n"
                                       "a . c = 'x'\n"
                                       "\"quoted.key\".d = true\n"
                                       "[t]\n"
                                       "x.y.z = 2\n"
                                       "x.y.w = 3\n"
                                       "[t.x.q]\n"
                                       "v = 4\n");
    assert_int_equal(toml_int(get_path(root, "a", "b")), 1);
    assert_string_equal(toml_string(get_path(root, "a", "c")), "x");
    assert_true(toml_bool(get_path(root, "quoted.key", "d")));
    const struct toml_value *xy = get_path(get_path(root, "t", "x"), "y", NULL);
    assert_int_equal(toml_int(toml_table_get(xy, "z")), 2);
    assert_int_equal(toml_int(toml_table_get(xy, "w")), 3);
    assert_int_equal(toml_int(get_path(get_path(get_path(root, "t", "x"), "q", NULL), "v", NULL)),
                     4);
    toml_free(root);
}

static void test_toml_parse_reads_quoted_keys(void **state)
{
    struct toml_value *root = parse_ok("\"a b\" = 1\n'lit\\' = 2\n\"\" = 3\n\"\\u00e9\" = 4\n");
    assert_int_equal(toml_int(toml_table_get(root, "a b")), 1);
    assert_int_equal(toml_int(toml_table_get(root, "lit\\")), 2);
    assert_int_equal(toml_int(toml_table_get(root, "")), 3);
    assert_int_equal(toml_int(toml_table_get(root, "é")), 4);
    toml_free(root);
}

static void test_toml_parse_reads_arrays(void **state)
{
    struct toml_value *root = parse_ok("e = []\n"
                                       "one = [\"a\"]\n"
                                       "mix = [ \"a\", 'b' ]\n"
                                       "multi = [\n"
                                       "  \"x\", # first\n"
                                       "  # a comment line\n"
                                       "  \"y\",\n"
                                       "]\n"
                                       "after = 1\n");
    const struct toml_value *multi = toml_table_get(root, "multi");
    assert_int_equal(toml_type(multi), TOML_ARRAY);
    assert_int_equal(toml_array_len(toml_table_get(root, "e")), 0);
    assert_int_equal(toml_array_len(toml_table_get(root, "one")), 1);
    assert_string_equal(toml_array_string(toml_table_get(root, "mix"), 1), "b");
    assert_int_equal(toml_array_len(multi), 2);
    assert_string_equal(toml_array_string(multi, 0), "x");
    assert_string_equal(toml_array_string(multi, 1), "y");
    assert_null(toml_array_string(multi, 2));
    assert_int_equal(toml_line(multi), 4);
    assert_int_equal(toml_line(toml_table_get(root, "after")), 9);
    toml_free(root);
}

static void test_toml_parse_accepts_crlf_bom_and_no_final_newline(void **state)
{
    struct toml_value *root = parse_ok("\xEF\xBB\xBF"
                                       "a = 1\r\n"
                                       "[t] # c\r\n"
                                       "b = [\r\n'x',\r\n]\r\n"
                                       "c = \"end\"");
    assert_int_equal(toml_int(toml_table_get(root, "a")), 1);
    assert_string_equal(toml_string(get_path(root, "t", "c")), "end");
    assert_int_equal(toml_line(get_path(root, "t", "c")), 6);
    toml_free(root);
}

static void test_toml_parse_records_line_and_col(void **state)
{
    struct toml_value *root = parse_ok("# c\n\n  key   =   \"v\"\n[tab]\nk = 1\n");
    const struct toml_value *v = toml_table_get(root, "key");
    assert_int_equal(toml_line(v), 3);
    assert_int_equal(toml_col(v), 13);
    assert_int_equal(toml_line(toml_table_get(root, "tab")), 4);
    toml_free(root);
}

static void test_toml_parse_indexes_large_tables(void **state)
{
    char *text = malloc(64 * 1000);
    size_t n = 0;
    char key[32];

    assert_non_null(text);
    for (int i = 0; i < 1000; i++)
        n += (size_t)sprintf(text + n, "k%d = %d\n", i, i);
    struct toml_value *root = parse_ok(text);
    assert_int_equal(toml_table_len(root), 1000);
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(toml_int(toml_table_get(root, key)), i);
    }
    assert_null(toml_table_get(root, "k1000"));
    toml_free(root);
    /* The index must still catch duplicates. */
    n += (size_t)sprintf(text + n, "k500 = 1\n");
    expect_error_n(text, n, TOML_ERR_SYNTAX, "1001:1", "duplicate key 'k500'");
    free(text);
}

static void test_toml_accessors_tolerate_wrong_types(void **state)
{
    struct toml_value *root = parse_ok("s = 'x'\ni = 1\n");
    const struct toml_value *s = toml_table_get(root, "s");
    assert_int_equal(toml_int(s), 0);
    assert_false(toml_bool(s));
    assert_int_equal(toml_array_len(s), 0);
    assert_int_equal(toml_table_len(s), 0);
    assert_null(toml_table_get(s, "x"));
    assert_null(toml_string(toml_table_get(root, "i")));
    assert_null(toml_table_get(NULL, "x"));
    toml_free(root);
    toml_free(NULL);
}

/* ---- rejected input ------------------------------------------------------------ */

static void test_toml_parse_rejects_float(void **state)
{
    expect_error("a = 1.5\n", "1:5", "floats are not supported");
    expect_error("a = 1e5\n", "1:5", "floats are not supported");
    expect_error("a = -2E3\n", "1:5", "floats are not supported");
    expect_error("a = inf\n", "1:5", "floats are not supported");
    expect_error("a = -nan\n", "1:5", "floats are not supported");
    expect_error("x = 1\na = +inf\n", "2:5", "floats are not supported");
}

static void test_toml_parse_rejects_dates(void **state)
{
    expect_error("a = 1979-05-27\n", "1:5", "dates and times are not supported");
    expect_error("a = 07:32:00\n", "1:5", "dates and times are not supported");
    expect_error("a = 1979-05-27T07:32:00Z\n", "1:5", "dates and times are not supported");
}

static void test_toml_parse_rejects_inline_table(void **state)
{
    expect_error("a = { b = 1 }\n", "1:5", "inline tables are not supported");
}

static void test_toml_parse_rejects_array_of_tables(void **state)
{
    expect_error("[[a]]\n", "1:1", "arrays of tables");
    expect_error("x = 1\n  [[a.b]]\n", "2:3", "arrays of tables");
}

static void test_toml_parse_rejects_multiline_strings(void **state)
{
    expect_error("a = \"\"\"x\"\"\"\n", "1:5", "multi-line strings are not supported");
    expect_error("a = '''x'''\n", "1:5", "multi-line strings are not supported");
}

static void test_toml_parse_rejects_nondecimal_ints(void **state)
{
    expect_error("a = 0x1F\n", "1:5", "hexadecimal, octal and binary");
    expect_error("a = 0o17\n", "1:5", "hexadecimal, octal and binary");
    expect_error("a = 0b101\n", "1:5", "hexadecimal, octal and binary");
}

static void test_toml_parse_rejects_bad_ints(void **state)
{
    expect_error("a = 012\n", "1:5", "leading zeros");
    expect_error("a = -012\n", "1:6", "leading zeros");
    expect_error("a = 1__2\n", "1:6", "'_' must stand between two digits");
    expect_error("a = 1_\n", "1:6", "'_' must stand between two digits");
    expect_error("a = _1\n", "1:5", "invalid value");
    expect_error("a = 12ab\n", "1:7", "invalid integer");
    expect_error("a = +\n", "1:5", "invalid value");
    expect_error("a = -\n", "1:5", "invalid value");
}

static void test_toml_parse_rejects_int_overflow(void **state)
{
    expect_error("a = 9223372036854775808\n", "1:5", "does not fit in 64 bits");
    expect_error("a = -9223372036854775809\n", "1:6", "does not fit in 64 bits");
    expect_error("a = 99999999999999999999999\n", "1:5", "does not fit in 64 bits");
}

static void test_toml_parse_rejects_mixed_arrays(void **state)
{
    expect_error("a = [\"x\", 1]\n", "1:11", "arrays may only contain strings");
    expect_error("a = [1, 2]\n", "1:6", "arrays may only contain strings");
    expect_error("a = [true]\n", "1:6", "arrays may only contain strings");
    expect_error("a = [[\"x\"]]\n", "1:6", "arrays may only contain strings");
    expect_error("a = [\n  'x',\n  {}\n]\n", "3:3", "arrays may only contain strings");
}

static void test_toml_parse_rejects_bad_arrays(void **state)
{
    expect_error("a = [,]\n", "1:6", "unexpected ','");
    expect_error("a = ['x',,]\n", "1:10", "unexpected ','");
    expect_error("a = ['x' 'y']\n", "1:10", "expected ',' or ']'");
    expect_error("a = ['x',\n", "2:1", "unterminated array");
    expect_error("a = [\n'x'", "2:4", "unterminated array");
}

static void test_toml_parse_rejects_duplicate_keys(void **state)
{
    expect_error("a = 1\na = 2\n", "2:1", "duplicate key 'a'");
    expect_error("a = 1\n\"a\" = 2\n", "2:1", "duplicate key 'a'");
    expect_error("[t]\nx = 1\n  x = 2\n", "3:3", "duplicate key 'x'");
    expect_error("a.b = 1\na.b = 2\n", "2:3", "duplicate key 'a.b'");
    expect_error("[a.b]\n[a]\nb = 1\n", "3:1", "duplicate key 'b'");
}

static void test_toml_parse_rejects_redefined_tables(void **state)
{
    expect_error("[a]\n[a]\n", "2:1", "table [a] is defined twice");
    expect_error("[a.b]\nx = 1\n[b]\n[ a.b ]\n", "4:1", "table [a.b] is defined twice");
    expect_error("a.b = 1\n[a]\n", "2:1", "table [a] was already defined by dotted keys");
    expect_error("[x]\na.b.c = 1\n[x.a.b]\n", "3:1", "table [x.a.b] was already defined by dotted");
}

static void test_toml_parse_rejects_key_redefined_as_table(void **state)
{
    expect_error("a = 1\n[a]\n", "2:2", "key 'a' is a value, not a table");
    expect_error("a = 1\n[a.b]\n", "2:2", "key 'a' is a value, not a table");
    expect_error("a = 1\na.b = 2\n", "2:1", "key 'a' is a value, not a table");
    expect_error("[t]\na = 'x'\n[t.a.b]\n", "3:4", "key 't.a' is a value, not a table");
}

static void test_toml_parse_rejects_dotted_keys_into_header_table(void **state)
{
    expect_error("[a.b.c]\nz = 9\n[a]\nb.c.t = 1\n", "4:1", "table 'b' was defined by a [header]");
}

static void test_toml_parse_rejects_bare_cr(void **state)
{
    expect_error("a = 1\rb = 2\n", "1:6", "carriage return");
    expect_error("a = 'x\ry'\n", "1:7", "carriage return");
    expect_error("a = 1\r", "1:6", "carriage return");
}

static void test_toml_parse_rejects_control_chars(void **state)
{
    expect_error("a = \"x\x01y\"\n", "1:7", "control character U+0001");
    expect_error("# comment \x7f\n", "1:11", "control character U+007F");
    expect_error("a = 'x\x1by'\n", "1:7", "control character U+001B");
    expect_error_n("a = 'x\0'\n", 9, TOML_ERR_SYNTAX, "1:7", "control character U+0000");
    struct toml_value *root = parse_ok("a = \"x\ty\"\n"); /* a raw tab is fine */
    toml_free(root);
}

static void test_toml_parse_rejects_invalid_utf8(void **state)
{
    expect_error("a = '\xff'\n", "1:6", "invalid UTF-8");
    expect_error("a = '\xC3'\n", "1:6", "invalid UTF-8");
    expect_error("a = '\xC0\xAF'\n", "1:6", "invalid UTF-8");     /* overlong */
    expect_error("a = '\xED\xA0\x80'\n", "1:6", "invalid UTF-8"); /* surrogate */
    expect_error("a = '\xF4\x90\x80\x80'\n", "1:6", "invalid UTF-8");
    expect_error("é = 1\n# \xE2\x82\n", "2:3", "invalid UTF-8");
    expect_error_n("a = '\xE2\x82", 7, TOML_ERR_SYNTAX, "1:6", "invalid UTF-8");
}

static void test_toml_parse_rejects_invalid_unicode_escapes(void **state)
{
    expect_error("a = \"\\uD800\"\n", "1:6", "not a Unicode scalar value");
    expect_error("a = \"\\uDFFF\"\n", "1:6", "not a Unicode scalar value");
    expect_error("a = \"\\U00110000\"\n", "1:6", "not a Unicode scalar value");
    expect_error("a = \"\\UFFFFFFFF\"\n", "1:6", "not a Unicode scalar value");
    expect_error("a = \"\\u0000\"\n", "1:6", "NUL characters are not allowed");
    expect_error("a = \"\\u12\"\n", "1:6", "\\u escape needs 4 hexadecimal digits");
    expect_error("a = \"\\u12G4\"\n", "1:6", "\\u escape needs 4 hexadecimal digits");
    expect_error("a = \"\\U1234567\"\n", "1:6", "\\U escape needs 8 hexadecimal digits");
}

static void test_toml_parse_rejects_bad_escapes(void **state)
{
    expect_error("a = \"\\q\"\n", "1:6", "invalid escape sequence '\\q'");
    expect_error("a = \"\\e\"\n", "1:6", "invalid escape sequence '\\e'");
    expect_error("a = \"\\x41\"\n", "1:6", "invalid escape sequence '\\x'");
    expect_error("a = \"x\\ \"\n", "1:7", "invalid escape sequence");
    expect_error("a = \"é\\é\"\n", "1:7", "invalid escape sequence");
}

static void test_toml_parse_rejects_unterminated_strings(void **state)
{
    expect_error("a = \"abc\n", "1:5", "unterminated string");
    expect_error("a = \"abc\\\"\n", "1:5", "unterminated string");
    expect_error("a = \"abc\\", "1:5", "unterminated string");
    expect_error("a = 'abc", "1:5", "unterminated string");
    expect_error("\"k = 1\n", "1:1", "unterminated string");
}

static void test_toml_parse_rejects_bad_syntax(void **state)
{
    expect_error("a\n", "1:2", "expected '=' after the key");
    expect_error("a b = 1\n", "1:3", "expected '=' after the key");
    expect_error("= 1\n", "1:1", "expected a key");
    expect_error("a = \n", "1:5", "expected a value");
    expect_error("a = # c\n", "1:5", "expected a value");
    expect_error("a =", "1:4", "expected a value");
    expect_error("a = 1 2\n", "1:7", "expected the end of the line");
    expect_error("a = 'x' b = 1\n", "1:9", "expected the end of the line");
    expect_error("a = truex\n", "1:5", "invalid value");
    expect_error("a = True\n", "1:5", "invalid value");
    expect_error("a = bare\n", "1:5", "invalid value");
    expect_error("a. = 1\n", "1:4", "expected a key");
    expect_error(".a = 1\n", "1:1", "expected a key");
    expect_error("[]\n", "1:2", "expected a key");
    expect_error("[a\n", "1:3", "expected ']'");
    expect_error("[a] x = 1\n", "1:5", "expected the end of the line");
    expect_error("[a.]\n", "1:4", "expected a key");
    expect_error("é = 1\n", "1:1", "expected a key");
}

static void test_toml_parse_reports_columns_in_characters(void **state)
{
    /* "é€" is 5 bytes but 2 characters. */
    expect_error("k = 'é€' x\n", "1:10", "expected the end of the line");
}

static void test_toml_parse_rejects_too_deep_nesting(void **state)
{
    char text[512];
    size_t n = 0;

    for (int i = 0; i < 32; i++)
        n += (size_t)sprintf(text + n, "%sk", i ? "." : "");
    sprintf(text + n, " = 1\n");
    struct toml_value *root = parse_ok(text); /* 32 levels are fine */
    toml_free(root);

    n = (size_t)sprintf(text, "[");
    for (int i = 0; i < 33; i++)
        n += (size_t)sprintf(text + n, "%sk", i ? "." : "");
    sprintf(text + n, "]\n");
    expect_error_n(text, strlen(text), TOML_ERR_LIMIT, "1:66", "deeper than 32");

    n = (size_t)sprintf(text, "[");
    for (int i = 0; i < 30; i++)
        n += (size_t)sprintf(text + n, "%sk", i ? "." : "");
    sprintf(text + n, "]\nx.y.z = 1\n");
    expect_error_n(text, strlen(text), TOML_ERR_LIMIT, "2:1", "deeper than 32");
}

static void test_toml_parse_rejects_oversized_input(void **state)
{
    size_t len = 1024 * 1024 + 1;
    char *text = malloc(len);
    assert_non_null(text);
    memset(text, '\n', len);
    expect_error_n(text, len, TOML_ERR_LIMIT, "1:1", "larger than 1 MiB");
    struct toml_value *root = NULL;
    char err[ERRLEN];
    assert_int_equal(toml_parse("t.toml", text, len - 1, &root, err, sizeof(err)), 0);
    toml_free(root);
    free(text);
}

static void test_toml_parse_truncates_long_error_text(void **state)
{
    struct toml_value *root = NULL;
    char err[12];
    char big[1024];
    int rc;

    /* The error buffer is always NUL-terminated, however short. */
    rc = toml_parse("t.toml", "a = 1.5", 7, &root, err, sizeof(err));
    assert_int_equal(rc, TOML_ERR_SYNTAX);
    assert_string_equal(err, "t.toml:1:5:");
    assert_int_equal(toml_parse("t.toml", "a = 1.5", 7, &root, NULL, 0), TOML_ERR_SYNTAX);
    /* A long key is shortened in the message. */
    memset(big, 'k', 300);
    strcpy(big + 300, " = 1\n");
    memcpy(big + 305, big, 305);
    big[610] = '\0';
    char msg[ERRLEN];
    rc = toml_parse("t.toml", big, strlen(big), &root, msg, sizeof(msg));
    assert_int_equal(rc, TOML_ERR_SYNTAX);
    assert_non_null(strstr(msg, "duplicate key 'kkk"));
    assert_non_null(strstr(msg, "...'"));
}

static void test_toml_parse_file_reads_and_reports(void **state)
{
    char path[] = "/tmp/test_toml_XXXXXX";
    int fd = mkstemp(path);
    struct toml_value *root = NULL;
    char err[ERRLEN];
    const char *body = "[openshell]\nversion = 1\n";

    assert_true(fd >= 0);
    assert_int_equal(write(fd, body, strlen(body)), (int)strlen(body));
    close(fd);
    assert_int_equal(toml_parse_file(path, &root, err, sizeof(err)), 0);
    assert_int_equal(toml_int(get_path(root, "openshell", "version")), 1);
    toml_free(root);

    fd = open(path, O_WRONLY | O_APPEND);
    assert_int_equal(write(fd, "bad\n", 4), 4);
    close(fd);
    assert_int_equal(toml_parse_file(path, &root, err, sizeof(err)), TOML_ERR_SYNTAX);
    char want[128];
    snprintf(want, sizeof(want), "%s:3:4: expected '='", path);
    assert_non_null(strstr(err, want));
    unlink(path);

    assert_int_equal(toml_parse_file(path, &root, err, sizeof(err)), TOML_ERR_IO);
    assert_null(root);
    assert_non_null(strstr(err, "No such file"));
    assert_int_equal(toml_parse_file("/tmp", &root, err, sizeof(err)), TOML_ERR_IO);
}

static void test_toml_parse_file_rejects_oversized_file(void **state)
{
    char path[] = "/tmp/test_toml_XXXXXX";
    int fd = mkstemp(path);
    struct toml_value *root = NULL;
    char err[ERRLEN];
    static char block[64 * 1024];

    assert_true(fd >= 0);
    memset(block, '#', sizeof(block));
    for (int i = 0; i < 17; i++)
        assert_int_equal(write(fd, block, sizeof(block)), (int)sizeof(block));
    close(fd);
    assert_int_equal(toml_parse_file(path, &root, err, sizeof(err)), TOML_ERR_LIMIT);
    assert_non_null(strstr(err, "larger than 1 MiB"));
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_toml_parse_accepts_empty_input),
        cmocka_unit_test(test_toml_parse_reads_scalars),
        cmocka_unit_test(test_toml_parse_keeps_definition_order),
        cmocka_unit_test(test_toml_parse_reads_int64_limits),
        cmocka_unit_test(test_toml_parse_decodes_escapes),
        cmocka_unit_test(test_toml_parse_reads_tables),
        cmocka_unit_test(test_toml_parse_allows_implicit_table_defined_later),
        cmocka_unit_test(test_toml_parse_reads_dotted_keys),
        cmocka_unit_test(test_toml_parse_reads_quoted_keys),
        cmocka_unit_test(test_toml_parse_reads_arrays),
        cmocka_unit_test(test_toml_parse_accepts_crlf_bom_and_no_final_newline),
        cmocka_unit_test(test_toml_parse_records_line_and_col),
        cmocka_unit_test(test_toml_parse_indexes_large_tables),
        cmocka_unit_test(test_toml_accessors_tolerate_wrong_types),
        cmocka_unit_test(test_toml_parse_rejects_float),
        cmocka_unit_test(test_toml_parse_rejects_dates),
        cmocka_unit_test(test_toml_parse_rejects_inline_table),
        cmocka_unit_test(test_toml_parse_rejects_array_of_tables),
        cmocka_unit_test(test_toml_parse_rejects_multiline_strings),
        cmocka_unit_test(test_toml_parse_rejects_nondecimal_ints),
        cmocka_unit_test(test_toml_parse_rejects_bad_ints),
        cmocka_unit_test(test_toml_parse_rejects_int_overflow),
        cmocka_unit_test(test_toml_parse_rejects_mixed_arrays),
        cmocka_unit_test(test_toml_parse_rejects_bad_arrays),
        cmocka_unit_test(test_toml_parse_rejects_duplicate_keys),
        cmocka_unit_test(test_toml_parse_rejects_redefined_tables),
        cmocka_unit_test(test_toml_parse_rejects_key_redefined_as_table),
        cmocka_unit_test(test_toml_parse_rejects_dotted_keys_into_header_table),
        cmocka_unit_test(test_toml_parse_rejects_bare_cr),
        cmocka_unit_test(test_toml_parse_rejects_control_chars),
        cmocka_unit_test(test_toml_parse_rejects_invalid_utf8),
        cmocka_unit_test(test_toml_parse_rejects_invalid_unicode_escapes),
        cmocka_unit_test(test_toml_parse_rejects_bad_escapes),
        cmocka_unit_test(test_toml_parse_rejects_unterminated_strings),
        cmocka_unit_test(test_toml_parse_rejects_bad_syntax),
        cmocka_unit_test(test_toml_parse_reports_columns_in_characters),
        cmocka_unit_test(test_toml_parse_rejects_too_deep_nesting),
        cmocka_unit_test(test_toml_parse_rejects_oversized_input),
        cmocka_unit_test(test_toml_parse_truncates_long_error_text),
        cmocka_unit_test(test_toml_parse_file_reads_and_reports),
        cmocka_unit_test(test_toml_parse_file_rejects_oversized_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
