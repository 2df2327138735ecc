/* Unit tests for gRPC status names, grpc-timeout parsing and formatting,
 * grpc-message percent-encoding and trailer building
 * (src/http2/grpc_status.c). */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http2/grpc.h"
#include "http2/http2_int.h"

#define US_PER_S 1000000ull
#define US_PER_M (60 * US_PER_S)
#define US_PER_H (3600 * US_PER_S)

/* ---- helpers ------------------------------------------------------------------ */

static uint64_t parse_ok(const char *s)
{
    uint64_t us = 12345;
    if (grpc_timeout_parse(s, strlen(s), &us) != 0)
        fail_msg("grpc_timeout_parse(\"%s\") failed", s);
    return us;
}

static void parse_bad_n(const char *s, size_t len)
{
    uint64_t us = 0;
    if (grpc_timeout_parse(s, len, &us) != -1)
        fail_msg("grpc_timeout_parse(\"%.*s\") accepted (%llu us)", (int)len, s,
                 (unsigned long long)us);
}

static void parse_bad(const char *s)
{
    parse_bad_n(s, strlen(s));
}

static void expect_format(uint64_t us, const char *want)
{
    char out[16];
    memset(out, '#', sizeof(out));
    grpc_timeout_format(us, out);
    if (strcmp(out, want) != 0)
        fail_msg("grpc_timeout_format(%llu) = \"%s\", want \"%s\"", (unsigned long long)us, out,
                 want);
}

static void expect_encode_n(const char *in, size_t len, const char *want)
{
    struct gw_buf b = {0};
    grpc_message_encode(&b, in, len);
    if (strcmp(gw_buf_cstr(&b), want) != 0)
        fail_msg("encode: got \"%s\", want \"%s\"", gw_buf_cstr(&b), want);
    assert_int_equal(b.len, strlen(want));
    gw_buf_free(&b);
}

static void expect_encode(const char *in, const char *want)
{
    expect_encode_n(in, strlen(in), want);
}

static void expect_decode(const char *in, const char *want, size_t want_len)
{
    struct gw_buf b = {0};
    grpc_message_decode(&b, in, strlen(in));
    assert_int_equal(b.len, want_len);
    assert_memory_equal(gw_buf_cstr(&b), want, want_len);
    assert_int_equal(gw_buf_cstr(&b)[want_len], '\0');
    gw_buf_free(&b);
}

/* ---- grpc_status_name -------------------------------------------------------------- */

static void test_grpc_status_name_all_codes(void **state)
{
    static const char *const names[] = {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    assert_int_equal(GW_ARRAY_LEN(names), 17);
    for (int i = 0; i < 17; i++)
        assert_string_equal(grpc_status_name(i), names[i]);
    assert_string_equal(grpc_status_name(GRPC_STATUS_RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED");
    assert_string_equal(grpc_status_name(GRPC_STATUS_UNAUTHENTICATED), "UNAUTHENTICATED");
}

static void test_grpc_status_name_out_of_range(void **state)
{
    static const int bad[] = {-1, 17, 18, 100, INT_MIN, INT_MAX};
    for (size_t i = 0; i < GW_ARRAY_LEN(bad); i++)
        assert_string_equal(grpc_status_name(bad[i]), "UNKNOWN");
}

/* ---- grpc_timeout_parse ---------------------------------------------------------- */

static void test_grpc_timeout_parse_every_unit(void **state)
{
    assert_true(parse_ok("1H") == US_PER_H);
    assert_true(parse_ok("1M") == US_PER_M);
    assert_true(parse_ok("1S") == US_PER_S);
    assert_true(parse_ok("1m") == 1000);
    assert_true(parse_ok("1u") == 1);
    assert_true(parse_ok("1000n") == 1);
    assert_true(parse_ok("2H") == 2 * US_PER_H);
    assert_true(parse_ok("30S") == 30 * US_PER_S);
    assert_true(parse_ok("100m") == 100000);
    assert_true(parse_ok("5u") == 5);
}

static void test_grpc_timeout_parse_nanoseconds_round_up(void **state)
{
    assert_true(parse_ok("0n") == 0);
    assert_true(parse_ok("1n") == 1);
    assert_true(parse_ok("999n") == 1);
    assert_true(parse_ok("1001n") == 2);
    assert_true(parse_ok("1999n") == 2);
    assert_true(parse_ok("2000n") == 2);
    assert_true(parse_ok("99999999n") == 100000);
}

static void test_grpc_timeout_parse_zero(void **state)
{
    assert_true(parse_ok("0H") == 0);
    assert_true(parse_ok("0S") == 0);
    assert_true(parse_ok("0u") == 0);
    assert_true(parse_ok("00000000m") == 0);
}

static void test_grpc_timeout_parse_one_and_eight_digits(void **state)
{
    assert_true(parse_ok("7S") == 7 * US_PER_S);
    assert_true(parse_ok("12345678u") == 12345678);
    assert_true(parse_ok("00000001S") == US_PER_S);
    assert_true(parse_ok("99999999m") == 99999999000ull);
    /* The largest value fits in 64 bits without saturating. */
    assert_true(parse_ok("99999999H") == 99999999ull * US_PER_H);
}

static void test_grpc_timeout_parse_nine_digits_rejected(void **state)
{
    parse_bad("123456789S");
    parse_bad("000000001S");
    parse_bad("999999999n");
}

static void test_grpc_timeout_parse_empty(void **state)
{
    parse_bad("");
    parse_bad_n("1S", 0);
}

static void test_grpc_timeout_parse_missing_unit(void **state)
{
    parse_bad("100");
    parse_bad("1");
    parse_bad("12345678");
}

static void test_grpc_timeout_parse_missing_digits(void **state)
{
    parse_bad("S");
    parse_bad("H");
    parse_bad("n");
}

static void test_grpc_timeout_parse_bad_unit(void **state)
{
    static const char *const bad[] = {"1s", "1h", "1x", "1U", "1N", "1 ", "1\x7f", "1ms"};
    for (size_t i = 0; i < GW_ARRAY_LEN(bad); i++)
        parse_bad(bad[i]);
}

static void test_grpc_timeout_parse_non_digit(void **state)
{
    static const char *const bad[] = {"1a0S", " 1S", "1 S", "1.5S", "0x1S", "1e3m", "SS"};
    for (size_t i = 0; i < GW_ARRAY_LEN(bad); i++)
        parse_bad(bad[i]);
    parse_bad_n("\xff\x31S", 3);
    parse_bad_n("1\0S", 3);
}

static void test_grpc_timeout_parse_leading_sign_rejected(void **state)
{
    parse_bad("+1S");
    parse_bad("-1S");
    parse_bad("-0n");
}

static void test_grpc_timeout_parse_uses_len_not_nul(void **state)
{
    uint64_t us = 0;
    assert_int_equal(grpc_timeout_parse("10Sjunk", 3, &us), 0);
    assert_true(us == 10 * US_PER_S);
    assert_int_equal(grpc_timeout_parse("10Sjunk", 2, &us), -1);
}

/* ---- grpc_timeout_format ---------------------------------------------------------- */

static void test_grpc_timeout_format_unit_switches(void **state)
{
    expect_format(0, "0u");
    expect_format(1, "1u");
    expect_format(99999999, "99999999u");
    expect_format(100000000, "100000m");
    expect_format(100000001, "100001m"); /* rounded up, never shorter */
    expect_format(99999999000ull, "99999999m");
    expect_format(99999999001ull, "100000S");
    expect_format(99999999 * US_PER_S, "99999999S");
    expect_format(99999999 * US_PER_S + 1, "1666667M");
    expect_format(99999999 * US_PER_M, "99999999M");
    expect_format(99999999 * US_PER_M + 1, "1666667H");
    expect_format(99999999 * US_PER_H, "99999999H");
}

static void test_grpc_timeout_format_saturates(void **state)
{
    expect_format(99999999 * US_PER_H + 1, "99999999H");
    expect_format(UINT64_MAX / 2, "99999999H");
    expect_format(UINT64_MAX - 1000, "99999999H");
    expect_format(UINT64_MAX, "99999999H");
}

static void test_grpc_timeout_format_fits_in_ten_bytes(void **state)
{
    static const uint64_t values[] = {0, 99999999, 99999999 * US_PER_H, UINT64_MAX};
    for (size_t i = 0; i < GW_ARRAY_LEN(values); i++) {
        char out[16];
        grpc_timeout_format(values[i], out);
        assert_true(strlen(out) <= 9);
    }
}

static void test_grpc_timeout_format_round_trips(void **state)
{
    static const uint64_t values[] = {
        0,
        1,
        999,
        1000,
        1001,
        12345678,
        99999999,
        100000000,
        100000001,
        123456789,
        4000000000ull,
        99999999000ull,
        99999999001ull,
        100000000000ull,
        3 * US_PER_H + 17,
        99999999 * US_PER_S,
        99999999 * US_PER_S + 1,
        86400 * 365 * US_PER_S,
        99999999 * US_PER_M,
        99999999 * US_PER_M + 1,
        99999999 * US_PER_H,
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(values); i++) {
        uint64_t us = values[i];
        char out[16];
        grpc_timeout_format(us, out);
        uint64_t back = parse_ok(out);
        /* Never shorter than asked, and longer by less than one unit. */
        uint64_t unit = back;
        switch (out[strlen(out) - 1]) {
        case 'u':
            unit = 1;
            break;
        case 'm':
            unit = 1000;
            break;
        case 'S':
            unit = US_PER_S;
            break;
        case 'M':
            unit = US_PER_M;
            break;
        case 'H':
            unit = US_PER_H;
            break;
        default:
            fail_msg("unexpected unit in \"%s\"", out);
        }
        if (back < us || back - us >= unit)
            fail_msg("%llu -> \"%s\" -> %llu", (unsigned long long)us, out,
                     (unsigned long long)back);
        /* The text is itself a fixed point. */
        char again[16];
        grpc_timeout_format(back, again);
        assert_string_equal(again, out);
    }
}

/* ---- grpc_message_encode / decode ----------------------------------------------------- */

static void test_grpc_message_encode_keeps_ascii(void **state)
{
    expect_encode("hello", "hello");
    expect_encode("A-Z a-z 0-9 ~!@#$^&*()_+={}[]|\\:;\"'<>,.?/`",
                  "A-Z a-z 0-9 ~!@#$^&*()_+={}[]|\\:;\"'<>,.?/`");
    expect_encode("", "");
}

static void test_grpc_message_encode_keeps_space(void **state)
{
    expect_encode(" ", " ");
    expect_encode("unknown service 'x'", "unknown service 'x'");
}

static void test_grpc_message_encode_percent(void **state)
{
    expect_encode("%", "%25");
    expect_encode("100% done", "100%25 done");
    expect_encode("%25", "%2525");
}

static void test_grpc_message_encode_control_chars(void **state)
{
    expect_encode("a\nb", "a%0Ab");
    expect_encode("\r\n", "%0D%0A");
    expect_encode("\t", "%09");
    expect_encode("\x1f", "%1F");
    expect_encode("\x7f", "%7F");
    expect_encode_n("a\0b", 3, "a%00b");
}

static void test_grpc_message_encode_utf8(void **state)
{
    expect_encode("caf\xc3\xa9", "caf%C3%A9");
    expect_encode("\xe2\x82\xac 5", "%E2%82%AC 5");
    expect_encode("\xf0\x9f\x98\x80", "%F0%9F%98%80");
    expect_encode("\xff", "%FF");
}

static void test_grpc_message_encode_appends(void **state)
{
    struct gw_buf b = {0};
    gw_buf_append(&b, "pre:", 4);
    grpc_message_encode(&b, "a b\n", 4);
    assert_string_equal(gw_buf_cstr(&b), "pre:a b%0A");
    gw_buf_free(&b);
}

static void test_grpc_message_decode_round_trip(void **state)
{
    char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (char)i;
    struct gw_buf enc = {0}, dec = {0};

    grpc_message_encode(&enc, all, sizeof(all));
    for (size_t i = 0; i < enc.len; i++)
        assert_true(enc.data[i] >= 0x20 && enc.data[i] <= 0x7e);
    grpc_message_decode(&dec, enc.data, enc.len);
    assert_int_equal(dec.len, sizeof(all));
    assert_memory_equal(dec.data, all, sizeof(all));
    gw_buf_free(&enc);
    gw_buf_free(&dec);

    expect_decode("caf%C3%A9", "caf\xc3\xa9", 5);
    expect_decode("100%25 done%0A", "100% done\n", 10);
    expect_decode("plain text", "plain text", 10);
}

static void test_grpc_message_decode_lower_case_hex(void **state)
{
    expect_decode("%c3%a9%0a", "\xc3\xa9\n", 3);
    expect_decode("%e2%82%AC", "\xe2\x82\xac", 3);
}

static void test_grpc_message_decode_invalid_escapes_kept(void **state)
{
    expect_decode("%zz", "%zz", 3);
    expect_decode("%G1", "%G1", 3);
    expect_decode("%1G", "%1G", 3);
    expect_decode("a%%41", "a%A", 3);
    expect_decode("% 1", "% 1", 3);
    expect_decode("%-1", "%-1", 3);
}

static void test_grpc_message_decode_truncated_escape_kept(void **state)
{
    expect_decode("%4", "%4", 2);
    expect_decode("%", "%", 1);
    expect_decode("abc%", "abc%", 4);
    expect_decode("abc%4", "abc%4", 5);
    expect_decode("%41%4", "A%4", 3);
}

static void test_grpc_message_decode_empty(void **state)
{
    expect_decode("", "", 0);
}

static void test_grpc_message_decode_nul_escape(void **state)
{
    expect_decode("a%00b", "a\0b", 3);
}

/* ---- grpc_trailers_build --------------------------------------------------------------- */

static void expect_nv(const nghttp2_nv *nv, const char *name, const char *value)
{
    assert_int_equal(nv->namelen, strlen(name));
    assert_memory_equal(nv->name, name, nv->namelen);
    if (nv->valuelen != strlen(value) || memcmp(nv->value, value, nv->valuelen) != 0)
        fail_msg("%s: got \"%.*s\", want \"%s\"", name, (int)nv->valuelen, (const char *)nv->value,
                 value);
}

static void test_grpc_trailers_build_status_only(void **state)
{
    nghttp2_nv nva[2];
    char text[12];
    struct gw_buf buf = {0};

    assert_int_equal(grpc_trailers_build(nva, GRPC_STATUS_OK, NULL, text, &buf), 1);
    expect_nv(&nva[0], "grpc-status", "0");
    assert_true(nva[0].flags & NGHTTP2_NV_FLAG_NO_COPY_NAME);
    assert_ptr_equal(nva[0].value, (uint8_t *)text);

    assert_int_equal(grpc_trailers_build(nva, GRPC_STATUS_NOT_FOUND, "", text, &buf), 1);
    expect_nv(&nva[0], "grpc-status", "5");
    gw_buf_free(&buf);
}

static void test_grpc_trailers_build_with_message(void **state)
{
    nghttp2_nv nva[2];
    char text[12];
    struct gw_buf buf = {0};

    assert_int_equal(grpc_trailers_build(nva, GRPC_STATUS_UNAUTHENTICATED,
                                         "missing client certificate", text, &buf),
                     2);
    expect_nv(&nva[0], "grpc-status", "16");
    expect_nv(&nva[1], "grpc-message", "missing client certificate");
    assert_true(nva[1].flags & NGHTTP2_NV_FLAG_NO_COPY_NAME);

    /* The message is percent-encoded into |buf|, replacing what was there. */
    assert_int_equal(grpc_trailers_build(nva, GRPC_STATUS_INTERNAL, "50% failed\n", text, &buf), 2);
    expect_nv(&nva[0], "grpc-status", "13");
    expect_nv(&nva[1], "grpc-message", "50%25 failed%0A");
    assert_ptr_equal(nva[1].value, (uint8_t *)buf.data);
    gw_buf_free(&buf);
}

static void test_grpc_trailers_build_status_text_width(void **state)
{
    nghttp2_nv nva[2];
    char text[12];
    struct gw_buf buf = {0};

    assert_int_equal(grpc_trailers_build(nva, INT_MIN, NULL, text, &buf), 1);
    expect_nv(&nva[0], "grpc-status", "-2147483648");
    assert_int_equal(grpc_trailers_build(nva, 99, "x", text, &buf), 2);
    expect_nv(&nva[0], "grpc-status", "99");
    expect_nv(&nva[1], "grpc-message", "x");
    gw_buf_free(&buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grpc_status_name_all_codes),
        cmocka_unit_test(test_grpc_status_name_out_of_range),
        cmocka_unit_test(test_grpc_timeout_parse_every_unit),
        cmocka_unit_test(test_grpc_timeout_parse_nanoseconds_round_up),
        cmocka_unit_test(test_grpc_timeout_parse_zero),
        cmocka_unit_test(test_grpc_timeout_parse_one_and_eight_digits),
        cmocka_unit_test(test_grpc_timeout_parse_nine_digits_rejected),
        cmocka_unit_test(test_grpc_timeout_parse_empty),
        cmocka_unit_test(test_grpc_timeout_parse_missing_unit),
        cmocka_unit_test(test_grpc_timeout_parse_missing_digits),
        cmocka_unit_test(test_grpc_timeout_parse_bad_unit),
        cmocka_unit_test(test_grpc_timeout_parse_non_digit),
        cmocka_unit_test(test_grpc_timeout_parse_leading_sign_rejected),
        cmocka_unit_test(test_grpc_timeout_parse_uses_len_not_nul),
        cmocka_unit_test(test_grpc_timeout_format_unit_switches),
        cmocka_unit_test(test_grpc_timeout_format_saturates),
        cmocka_unit_test(test_grpc_timeout_format_fits_in_ten_bytes),
        cmocka_unit_test(test_grpc_timeout_format_round_trips),
        cmocka_unit_test(test_grpc_message_encode_keeps_ascii),
        cmocka_unit_test(test_grpc_message_encode_keeps_space),
        cmocka_unit_test(test_grpc_message_encode_percent),
        cmocka_unit_test(test_grpc_message_encode_control_chars),
        cmocka_unit_test(test_grpc_message_encode_utf8),
        cmocka_unit_test(test_grpc_message_encode_appends),
        cmocka_unit_test(test_grpc_message_decode_round_trip),
        cmocka_unit_test(test_grpc_message_decode_lower_case_hex),
        cmocka_unit_test(test_grpc_message_decode_invalid_escapes_kept),
        cmocka_unit_test(test_grpc_message_decode_truncated_escape_kept),
        cmocka_unit_test(test_grpc_message_decode_empty),
        cmocka_unit_test(test_grpc_message_decode_nul_escape),
        cmocka_unit_test(test_grpc_trailers_build_status_only),
        cmocka_unit_test(test_grpc_trailers_build_with_message),
        cmocka_unit_test(test_grpc_trailers_build_status_text_width),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
