/* Unit tests for gRPC message framing (src/http2/grpc_frame.c): the
 * incremental deframer, packing into evbuffers, gzip inflation, payload
 * decoding and the per-call arena. Leaks are caught by AddressSanitizer's
 * leak checker (make check with --enable-asan); the arena release test also
 * asks it for a check on the spot. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <zlib.h>

#include "http2/grpc.h"
#include "http2/http2_int.h"
#include "openshell.pb-c.h"

#if defined(__SANITIZE_ADDRESS__)
#define HAVE_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_LSAN 1
#endif
#endif
#ifdef HAVE_LSAN
#include <sanitizer/lsan_interface.h>
#endif

#define MAX_LEN 1024

/* ---- helpers ------------------------------------------------------------------ */

/* Writes one framed message (|flag|, |len| payload bytes of |fill|) into |out|
 * and returns its size. */
static size_t make_frame(uint8_t *out, uint8_t flag, uint32_t len, uint8_t fill)
{
    grpc_frame_prefix(out, len);
    out[0] = flag;
    memset(out + 5, fill, len);
    return len + 5;
}

/* Feeds |data| in one call per byte until a message completes. Returns the
 * deframer result and the bytes consumed in |*consumed|. */
static int feed_bytewise(struct grpc_deframer *d, const uint8_t *data, size_t len, size_t *consumed)
{
    size_t off = 0;
    int rv = GRPC_DEFRAME_NEED;
    while (off < len) {
        size_t used = 0;
        rv = grpc_deframer_feed(d, data + off, 1, &used);
        assert_true(used <= 1);
        off += used;
        if (rv != GRPC_DEFRAME_NEED)
            break;
        assert_int_equal(used, 1);
    }
    *consumed = off;
    return rv;
}

/* gzip-compresses |in| with a gzip wrapper (16 + MAX_WBITS). Caller owns the
 * result, free with free(). */
static uint8_t *gzip_bytes(const uint8_t *in, size_t len, size_t *out_len)
{
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    assert_int_equal(
        deflateInit2(&zs, Z_BEST_SPEED, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
    size_t cap = deflateBound(&zs, (uLong)len) + 64;
    uint8_t *out = malloc(cap);
    assert_non_null(out);
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)len;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
    *out_len = cap - zs.avail_out;
    deflateEnd(&zs);
    return out;
}

/* A deframer holding one complete message with |payload|. */
static void load_deframer(struct grpc_deframer *d, bool compressed, const uint8_t *payload,
                          size_t len)
{
    uint8_t hdr[5];
    size_t used;
    grpc_deframer_init(d, 64 * 1024 * 1024);
    grpc_frame_prefix(hdr, (uint32_t)len);
    hdr[0] = compressed ? 1 : 0;
    int rv = grpc_deframer_feed(d, hdr, 5, &used);
    if (len > 0) {
        assert_int_equal(rv, GRPC_DEFRAME_NEED);
        rv = grpc_deframer_feed(d, payload, len, &used);
        assert_int_equal(used, len);
    }
    assert_int_equal(rv, GRPC_DEFRAME_MSG);
    assert_int_equal(d->payload.len, len);
}

static size_t pack_health_response(uint8_t *out, size_t cap, const char *version)
{
    Openshell__V1__HealthResponse resp = OPENSHELL__V1__HEALTH_RESPONSE__INIT;
    resp.status = OPENSHELL__V1__SERVICE_STATUS__SERVICE_STATUS_HEALTHY;
    resp.version = (char *)version;
    size_t n = protobuf_c_message_get_packed_size(&resp.base);
    assert_true(n <= cap);
    return protobuf_c_message_pack(&resp.base, out);
}

/* ---- deframer ------------------------------------------------------------------- */

static void test_grpc_deframer_feed_byte_at_a_time(void **state)
{
    uint8_t buf[5 + 300];
    size_t n = make_frame(buf, 0, 300, 'a');
    struct grpc_deframer d;
    size_t consumed;

    grpc_deframer_init(&d, MAX_LEN);
    assert_int_equal(feed_bytewise(&d, buf, n, &consumed), GRPC_DEFRAME_MSG);
    assert_int_equal(consumed, n);
    assert_false(d.compressed);
    assert_int_equal(d.msg_len, 300);
    assert_int_equal(d.payload.len, 300);
    assert_memory_equal(d.payload.data, buf + 5, 300);
    grpc_deframer_free(&d);
}

static void test_grpc_deframer_feed_header_split_across_calls(void **state)
{
    uint8_t buf[5 + 10];
    size_t n = make_frame(buf, 1, 10, 'z');
    struct grpc_deframer d;
    size_t used;

    grpc_deframer_init(&d, MAX_LEN);
    assert_int_equal(grpc_deframer_feed(&d, buf, 2, &used), GRPC_DEFRAME_NEED);
    assert_int_equal(used, 2);
    assert_int_equal(d.hdr_have, 2);
    assert_int_equal(grpc_deframer_feed(&d, buf + 2, 4, &used), GRPC_DEFRAME_NEED);
    assert_int_equal(used, 4);
    assert_int_equal(grpc_deframer_feed(&d, buf + 6, n - 6, &used), GRPC_DEFRAME_MSG);
    assert_int_equal(used, n - 6);
    assert_true(d.compressed);
    assert_memory_equal(d.payload.data, buf + 5, 10);
    grpc_deframer_free(&d);
}

static void test_grpc_deframer_feed_several_messages_in_one_buffer(void **state)
{
    uint8_t buf[3 * 5 + 7 + 0 + 40];
    size_t n = 0;
    n += make_frame(buf + n, 0, 7, '1');
    n += make_frame(buf + n, 0, 0, 0);
    n += make_frame(buf + n, 1, 40, '3');
    struct grpc_deframer d;
    size_t off = 0, used;

    grpc_deframer_init(&d, MAX_LEN);
    assert_int_equal(grpc_deframer_feed(&d, buf, n, &used), GRPC_DEFRAME_MSG);
    assert_int_equal(used, 12); /* stops at the end of the first message */
    assert_int_equal(d.payload.len, 7);
    assert_memory_equal(d.payload.data, "1111111", 7);
    off += used;
    grpc_deframer_reset_msg(&d);

    assert_int_equal(grpc_deframer_feed(&d, buf + off, n - off, &used), GRPC_DEFRAME_MSG);
    assert_int_equal(used, 5);
    assert_int_equal(d.payload.len, 0);
    off += used;
    grpc_deframer_reset_msg(&d);

    assert_int_equal(grpc_deframer_feed(&d, buf + off, n - off, &used), GRPC_DEFRAME_MSG);
    assert_int_equal(used, 45);
    assert_true(d.compressed);
    assert_int_equal(d.payload.len, 40);
    assert_int_equal(d.payload.data[39], '3');
    off += used;
    assert_int_equal(off, n);
    grpc_deframer_free(&d);
}

static void test_grpc_deframer_feed_zero_length_message(void **state)
{
    uint8_t buf[5];
    struct grpc_deframer d;
    size_t used;

    make_frame(buf, 0, 0, 0);
    grpc_deframer_init(&d, MAX_LEN);
    assert_int_equal(grpc_deframer_feed(&d, buf, 4, &used), GRPC_DEFRAME_NEED);
    assert_int_equal(grpc_deframer_feed(&d, buf + 4, 1, &used), GRPC_DEFRAME_MSG);
    assert_int_equal(used, 1);
    assert_int_equal(d.msg_len, 0);
    assert_int_equal(d.payload.len, 0);
    grpc_deframer_free(&d);
}

static void test_grpc_deframer_feed_exactly_max_len(void **state)
{
    static uint8_t buf[5 + MAX_LEN];
    size_t n = make_frame(buf, 0, MAX_LEN, 'm');
    struct grpc_deframer d;
    size_t used;

    grpc_deframer_init(&d, MAX_LEN);
    assert_int_equal(grpc_deframer_feed(&d, buf, n, &used), GRPC_DEFRAME_MSG);
    assert_int_equal(used, n);
    assert_int_equal(d.payload.len, MAX_LEN);
    grpc_deframer_free(&d);
}

static void test_grpc_deframer_feed_max_len_plus_one(void **state)
{
    static uint8_t buf[5 + MAX_LEN + 1];
    size_t n = make_frame(buf, 0, MAX_LEN + 1, 'm');
    struct grpc_deframer d;
    size_t used;

    grpc_deframer_init(&d, MAX_LEN);
    assert_int_equal(grpc_deframer_feed(&d, buf, n, &used), GRPC_DEFRAME_TOOBIG);
    assert_int_equal(used, 5); /* nothing of the payload is buffered */
    assert_int_equal(d.msg_len, MAX_LEN + 1);
    assert_int_equal(d.payload.len, 0);
    grpc_deframer_free(&d);
}

static void test_grpc_deframer_feed_huge_length(void **state)
{
    uint8_t hdr[5] = {0, 0xff, 0xff, 0xff, 0xff};
    struct grpc_deframer d;
    size_t consumed;

    grpc_deframer_init(&d, 4 * 1024 * 1024);
    assert_int_equal(feed_bytewise(&d, hdr, 5, &consumed), GRPC_DEFRAME_TOOBIG);
    assert_int_equal(consumed, 5);
    assert_int_equal(d.msg_len, UINT32_MAX);
    grpc_deframer_free(&d);
}

static void test_grpc_deframer_feed_bad_flag(void **state)
{
    static const uint8_t flags[] = {2, 0x80, 0xff};
    for (size_t i = 0; i < GW_ARRAY_LEN(flags); i++) {
        uint8_t buf[5 + 3];
        size_t n = make_frame(buf, flags[i], 3, 'b');
        struct grpc_deframer d;
        size_t used;

        grpc_deframer_init(&d, MAX_LEN);
        assert_int_equal(grpc_deframer_feed(&d, buf, n, &used), GRPC_DEFRAME_BADFLAG);
        assert_int_equal(used, 5);
        grpc_deframer_free(&d);
    }
}

static void test_grpc_deframer_feed_compressed_flag(void **state)
{
    uint8_t buf[5 + 4];
    size_t n = make_frame(buf, 1, 4, 'c');
    struct grpc_deframer d;
    size_t used;

    grpc_deframer_init(&d, MAX_LEN);
    assert_int_equal(grpc_deframer_feed(&d, buf, n, &used), GRPC_DEFRAME_MSG);
    assert_true(d.compressed);
    grpc_deframer_reset_msg(&d);
    assert_false(d.compressed);
    n = make_frame(buf, 0, 4, 'c');
    assert_int_equal(grpc_deframer_feed(&d, buf, n, &used), GRPC_DEFRAME_MSG);
    assert_false(d.compressed);
    grpc_deframer_free(&d);
}

static void test_grpc_deframer_reset_msg_between_messages(void **state)
{
    uint8_t a[5 + 20], b[5 + 3];
    size_t na = make_frame(a, 1, 20, 'a');
    size_t nb = make_frame(b, 0, 3, 'b');
    struct grpc_deframer d;
    size_t used;

    grpc_deframer_init(&d, MAX_LEN);
    assert_int_equal(grpc_deframer_feed(&d, a, na, &used), GRPC_DEFRAME_MSG);
    grpc_deframer_reset_msg(&d);
    assert_int_equal(d.hdr_have, 0);
    assert_int_equal(d.msg_len, 0);
    assert_int_equal(d.payload.len, 0);
    assert_false(d.compressed);
    /* A small buffer is kept for the next message. */
    assert_non_null(d.payload.data);
    assert_int_equal(grpc_deframer_feed(&d, b, nb, &used), GRPC_DEFRAME_MSG);
    assert_int_equal(used, nb);
    assert_int_equal(d.payload.len, 3);
    assert_memory_equal(d.payload.data, "bbb", 3);
    grpc_deframer_free(&d);
}

static void test_grpc_deframer_reset_msg_drops_large_buffer(void **state)
{
    size_t len = 100 * 1024;
    uint8_t *buf = malloc(5 + len);
    assert_non_null(buf);
    size_t n = make_frame(buf, 0, (uint32_t)len, 'L');
    struct grpc_deframer d;
    size_t used;

    grpc_deframer_init(&d, 1024 * 1024);
    assert_int_equal(grpc_deframer_feed(&d, buf, n, &used), GRPC_DEFRAME_MSG);
    assert_true(d.payload.cap > 64 * 1024);
    grpc_deframer_reset_msg(&d);
    assert_null(d.payload.data);
    assert_int_equal(d.payload.cap, 0);
    /* Still usable afterwards. */
    n = make_frame(buf, 0, 2, 's');
    assert_int_equal(grpc_deframer_feed(&d, buf, n, &used), GRPC_DEFRAME_MSG);
    assert_memory_equal(d.payload.data, "ss", 2);
    grpc_deframer_free(&d);
    free(buf);
}

/* ---- prefix and packing ------------------------------------------------------------ */

static void test_grpc_frame_prefix_big_endian(void **state)
{
    uint8_t p[5];
    grpc_frame_prefix(p, 0x01020304);
    assert_memory_equal(p, "\x00\x01\x02\x03\x04", 5);
    grpc_frame_prefix(p, 0);
    assert_memory_equal(p, "\x00\x00\x00\x00\x00", 5);
    grpc_frame_prefix(p, UINT32_MAX);
    assert_memory_equal(p, "\x00\xff\xff\xff\xff", 5);
}

static void test_grpc_frame_pack_writes_prefix_and_payload(void **state)
{
    Openshell__V1__HealthResponse resp = OPENSHELL__V1__HEALTH_RESPONSE__INIT;
    resp.status = OPENSHELL__V1__SERVICE_STATUS__SERVICE_STATUS_HEALTHY;
    resp.version = "1.2.3";
    size_t plen = protobuf_c_message_get_packed_size(&resp.base);
    uint8_t want[64];
    assert_int_equal(protobuf_c_message_pack(&resp.base, want), plen);
    struct evbuffer *out = evbuffer_new();

    evbuffer_add(out, "xy", 2); /* appends after what is already there */
    assert_int_equal(grpc_frame_pack(out, &resp.base, MAX_LEN), plen + 5);
    assert_int_equal(evbuffer_get_length(out), plen + 7);
    const uint8_t *p = evbuffer_pullup(out, -1);
    assert_memory_equal(p, "xy", 2);
    assert_int_equal(p[2], 0);
    assert_int_equal((uint32_t)p[3] << 24 | p[4] << 16 | p[5] << 8 | p[6], plen);
    assert_memory_equal(p + 7, want, plen);
    evbuffer_free(out);
}

static void test_grpc_frame_pack_empty_message(void **state)
{
    Openshell__V1__HealthRequest req = OPENSHELL__V1__HEALTH_REQUEST__INIT;
    struct evbuffer *out = evbuffer_new();

    assert_int_equal(grpc_frame_pack(out, &req.base, MAX_LEN), 5);
    assert_int_equal(evbuffer_get_length(out), 5);
    assert_memory_equal(evbuffer_pullup(out, -1), "\0\0\0\0\0", 5);
    evbuffer_free(out);
}

static void test_grpc_frame_pack_oversize(void **state)
{
    Openshell__V1__HealthResponse resp = OPENSHELL__V1__HEALTH_RESPONSE__INIT;
    resp.version = "0123456789";
    size_t plen = protobuf_c_message_get_packed_size(&resp.base);
    struct evbuffer *out = evbuffer_new();

    assert_int_equal(grpc_frame_pack(out, &resp.base, (uint32_t)plen - 1), 0);
    assert_int_equal(evbuffer_get_length(out), 0);
    assert_int_equal(grpc_frame_pack(out, &resp.base, (uint32_t)plen), plen + 5);
    evbuffer_free(out);
}

static void test_grpc_frame_pack_raw_writes_prefix_and_payload(void **state)
{
    static const uint8_t data[] = {1, 2, 3, 0, 0xff};
    struct evbuffer *out = evbuffer_new();

    assert_int_equal(grpc_frame_pack_raw(out, data, sizeof(data), MAX_LEN), 10);
    assert_int_equal(evbuffer_get_length(out), 10);
    assert_memory_equal(evbuffer_pullup(out, -1), "\x00\x00\x00\x00\x05\x01\x02\x03\x00\xff", 10);
    evbuffer_free(out);
}

static void test_grpc_frame_pack_raw_empty(void **state)
{
    struct evbuffer *out = evbuffer_new();

    assert_int_equal(grpc_frame_pack_raw(out, NULL, 0, MAX_LEN), 5);
    assert_memory_equal(evbuffer_pullup(out, -1), "\0\0\0\0\0", 5);
    evbuffer_free(out);
}

static void test_grpc_frame_pack_raw_oversize(void **state)
{
    static uint8_t data[MAX_LEN + 1];
    struct evbuffer *out = evbuffer_new();

    assert_int_equal(grpc_frame_pack_raw(out, data, MAX_LEN + 1, MAX_LEN), 0);
    assert_int_equal(evbuffer_get_length(out), 0);
    assert_int_equal(grpc_frame_pack_raw(out, data, MAX_LEN, MAX_LEN), MAX_LEN + 5);
    evbuffer_free(out);
}

static void test_grpc_frame_pack_round_trips_through_deframer(void **state)
{
    Openshell__V1__HealthResponse resp = OPENSHELL__V1__HEALTH_RESPONSE__INIT;
    resp.version = "round-trip";
    struct evbuffer *out = evbuffer_new();
    struct grpc_deframer d;
    size_t used, off = 0;

    assert_true(grpc_frame_pack(out, &resp.base, MAX_LEN) > 0);
    assert_true(grpc_frame_pack_raw(out, (const uint8_t *)"raw", 3, MAX_LEN) > 0);
    size_t n = evbuffer_get_length(out);
    const uint8_t *p = evbuffer_pullup(out, -1);
    grpc_deframer_init(&d, MAX_LEN);
    assert_int_equal(grpc_deframer_feed(&d, p, n, &used), GRPC_DEFRAME_MSG);
    off += used;
    Openshell__V1__HealthResponse *got = openshell__v1__health_response__unpack(
        NULL, d.payload.len, (const uint8_t *)d.payload.data);
    assert_non_null(got);
    assert_string_equal(got->version, "round-trip");
    openshell__v1__health_response__free_unpacked(got, NULL);
    grpc_deframer_reset_msg(&d);
    assert_int_equal(grpc_deframer_feed(&d, p + off, n - off, &used), GRPC_DEFRAME_MSG);
    assert_int_equal(off + used, n);
    assert_memory_equal(d.payload.data, "raw", 3);
    grpc_deframer_free(&d);
    evbuffer_free(out);
}

/* ---- gzip ------------------------------------------------------------------------ */

static void test_grpc_gunzip_round_trip(void **state)
{
    /* Larger than the 16 KiB inflate chunk, so several chunks are appended. */
    size_t len = 100000;
    uint8_t *plain = malloc(len);
    assert_non_null(plain);
    for (size_t i = 0; i < len; i++)
        plain[i] = (uint8_t)(i * 7 + i / 300);
    size_t zlen;
    uint8_t *z = gzip_bytes(plain, len, &zlen);
    struct gw_buf out = {0};

    assert_int_equal(grpc_gunzip(z, zlen, (uint32_t)len, &out), 0);
    assert_int_equal(out.len, len);
    assert_memory_equal(out.data, plain, len);
    gw_buf_free(&out);
    free(z);
    free(plain);
}

static void test_grpc_gunzip_empty_payload(void **state)
{
    size_t zlen;
    uint8_t *z = gzip_bytes((const uint8_t *)"", 0, &zlen);
    struct gw_buf out = {0};

    assert_int_equal(grpc_gunzip(z, zlen, MAX_LEN, &out), 0);
    assert_int_equal(out.len, 0);
    gw_buf_free(&out);
    free(z);
}

static void test_grpc_gunzip_exactly_max_len(void **state)
{
    uint8_t plain[MAX_LEN];
    memset(plain, 'q', sizeof(plain));
    size_t zlen;
    uint8_t *z = gzip_bytes(plain, sizeof(plain), &zlen);
    struct gw_buf out = {0};

    assert_int_equal(grpc_gunzip(z, zlen, MAX_LEN, &out), 0);
    assert_int_equal(out.len, MAX_LEN);
    gw_buf_free(&out);
    free(z);
}

static void test_grpc_gunzip_over_max_len(void **state)
{
    uint8_t plain[MAX_LEN + 1];
    memset(plain, 'q', sizeof(plain));
    size_t zlen;
    uint8_t *z = gzip_bytes(plain, sizeof(plain), &zlen);
    struct gw_buf out = {0};

    assert_int_equal(grpc_gunzip(z, zlen, MAX_LEN, &out), -1);
    assert_true(out.len <= MAX_LEN);
    gw_buf_free(&out);
    free(z);
}

static void test_grpc_gunzip_bomb_is_bounded(void **state)
{
    /* 64 MiB of zeros compresses to ~64 KiB; inflating must stop at the limit. */
    size_t len = 64u * 1024 * 1024;
    uint8_t *plain = calloc(1, len);
    assert_non_null(plain);
    size_t zlen;
    uint8_t *z = gzip_bytes(plain, len, &zlen);
    free(plain);
    struct gw_buf out = {0};

    assert_int_equal(grpc_gunzip(z, zlen, 4 * 1024 * 1024, &out), -1);
    assert_true(out.cap <= 8 * 1024 * 1024);
    gw_buf_free(&out);
    free(z);
}

static void test_grpc_gunzip_truncated(void **state)
{
    uint8_t plain[2000];
    for (size_t i = 0; i < sizeof(plain); i++)
        plain[i] = (uint8_t)(i * 31);
    size_t zlen;
    uint8_t *z = gzip_bytes(plain, sizeof(plain), &zlen);
    struct gw_buf out = {0};

    /* Cut anywhere: in the header, the deflate data or the CRC/size trailer. */
    static const size_t cuts[] = {1, 5, 10, 20, 100};
    for (size_t i = 0; i < GW_ARRAY_LEN(cuts); i++)
        assert_int_equal(grpc_gunzip(z, GW_MIN(cuts[i], zlen - 1), MAX_LEN * 4, &out), -1);
    assert_int_equal(grpc_gunzip(z, zlen - 4, MAX_LEN * 4, &out), -1);
    assert_int_equal(grpc_gunzip(z, zlen - 1, MAX_LEN * 4, &out), -1);
    assert_int_equal(grpc_gunzip(z, zlen, MAX_LEN * 4, &out), 0);
    gw_buf_free(&out);
    free(z);
}

static void test_grpc_gunzip_garbage(void **state)
{
    static const uint8_t garbage[] = "this is not gzip at all, not even close";
    static const uint8_t bad_method[] = {0x1f, 0x8b, 0x07, 0, 0, 0, 0, 0, 0, 3};
    struct gw_buf out = {0};

    assert_int_equal(grpc_gunzip(garbage, sizeof(garbage), MAX_LEN, &out), -1);
    assert_int_equal(grpc_gunzip(bad_method, sizeof(bad_method), MAX_LEN, &out), -1);
    assert_int_equal(grpc_gunzip(garbage, 0, MAX_LEN, &out), -1);
    gw_buf_free(&out);
}

static void test_grpc_gunzip_corrupt_crc(void **state)
{
    uint8_t plain[100];
    memset(plain, 'c', sizeof(plain));
    size_t zlen;
    uint8_t *z = gzip_bytes(plain, sizeof(plain), &zlen);
    struct gw_buf out = {0};

    z[zlen - 8] ^= 0x55; /* first CRC32 byte of the trailer */
    assert_int_equal(grpc_gunzip(z, zlen, MAX_LEN, &out), -1);
    gw_buf_free(&out);
    free(z);
}

static void test_grpc_gunzip_rejects_trailing_bytes(void **state)
{
    uint8_t plain[50];
    memset(plain, 't', sizeof(plain));
    size_t zlen;
    uint8_t *z = gzip_bytes(plain, sizeof(plain), &zlen);
    uint8_t *longer = malloc(zlen + 3);
    assert_non_null(longer);
    memcpy(longer, z, zlen);
    memcpy(longer + zlen, "xyz", 3);
    struct gw_buf out = {0};

    assert_int_equal(grpc_gunzip(longer, zlen + 3, MAX_LEN, &out), -1);
    gw_buf_free(&out);
    free(longer);
    free(z);
}

static void test_grpc_gunzip_rejects_zlib_wrapper(void **state)
{
    uint8_t plain[64];
    memset(plain, 'w', sizeof(plain));
    uLongf zlen = compressBound(sizeof(plain));
    uint8_t z[256];
    assert_int_equal(compress(z, &zlen, plain, sizeof(plain)), Z_OK);
    struct gw_buf out = {0};

    assert_int_equal(grpc_gunzip(z, zlen, MAX_LEN, &out), -1);
    gw_buf_free(&out);
}

static void test_grpc_gunzip_resets_output(void **state)
{
    size_t zlen;
    uint8_t *z = gzip_bytes((const uint8_t *)"fresh", 5, &zlen);
    struct gw_buf out = {0};

    gw_buf_append(&out, "stale", 5);
    assert_int_equal(grpc_gunzip(z, zlen, MAX_LEN, &out), 0);
    assert_int_equal(out.len, 5);
    assert_memory_equal(out.data, "fresh", 5);
    gw_buf_free(&out);
    free(z);
}

/* ---- payload decoding --------------------------------------------------------------- */

static void test_grpc_payload_decode_uncompressed(void **state)
{
    uint8_t pb[64];
    size_t n = pack_health_response(pb, sizeof(pb), "9.9");
    struct grpc_deframer d;
    int status = -1;
    const char *msg = NULL;

    load_deframer(&d, false, pb, n);
    Openshell__V1__HealthResponse *m = grpc_payload_decode(
        &d, NULL, &openshell__v1__health_response__descriptor, NULL, MAX_LEN, &status, &msg);
    assert_non_null(m);
    assert_int_equal(m->status, OPENSHELL__V1__SERVICE_STATUS__SERVICE_STATUS_HEALTHY);
    assert_string_equal(m->version, "9.9");
    protobuf_c_message_free_unpacked(&m->base, NULL);
    grpc_deframer_free(&d);
}

static void test_grpc_payload_decode_empty_payload(void **state)
{
    struct grpc_deframer d;
    int status = -1;
    const char *msg = NULL;

    load_deframer(&d, false, NULL, 0);
    Openshell__V1__HealthRequest *m = grpc_payload_decode(
        &d, "gzip", &openshell__v1__health_request__descriptor, NULL, MAX_LEN, &status, &msg);
    assert_non_null(m);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    grpc_deframer_free(&d);
}

static void test_grpc_payload_decode_gzip(void **state)
{
    uint8_t pb[64];
    size_t n = pack_health_response(pb, sizeof(pb), "gz");
    size_t zlen;
    uint8_t *z = gzip_bytes(pb, n, &zlen);
    struct grpc_deframer d;
    int status = -1;
    const char *msg = NULL;

    load_deframer(&d, true, z, zlen);
    Openshell__V1__HealthResponse *m = grpc_payload_decode(
        &d, "gzip", &openshell__v1__health_response__descriptor, NULL, MAX_LEN, &status, &msg);
    assert_non_null(m);
    assert_string_equal(m->version, "gz");
    protobuf_c_message_free_unpacked(&m->base, NULL);
    grpc_deframer_free(&d);
    free(z);
}

static void test_grpc_payload_decode_uncompressed_ignores_encoding(void **state)
{
    uint8_t pb[64];
    size_t n = pack_health_response(pb, sizeof(pb), "plain");
    struct grpc_deframer d;
    int status = -1;
    const char *msg = NULL;

    /* grpc-encoding only applies to messages whose flag says compressed. */
    load_deframer(&d, false, pb, n);
    Openshell__V1__HealthResponse *m = grpc_payload_decode(
        &d, "gzip", &openshell__v1__health_response__descriptor, NULL, MAX_LEN, &status, &msg);
    assert_non_null(m);
    assert_string_equal(m->version, "plain");
    protobuf_c_message_free_unpacked(&m->base, NULL);
    grpc_deframer_free(&d);
}

static void test_grpc_payload_decode_compressed_without_encoding(void **state)
{
    uint8_t pb[64];
    size_t n = pack_health_response(pb, sizeof(pb), "x");
    size_t zlen;
    uint8_t *z = gzip_bytes(pb, n, &zlen);
    static const char *const encodings[] = {NULL, "identity", "deflate", "GZIP", "gzip2"};

    for (size_t i = 0; i < GW_ARRAY_LEN(encodings); i++) {
        struct grpc_deframer d;
        int status = -1;
        const char *msg = NULL;
        load_deframer(&d, true, z, zlen);
        void *m = grpc_payload_decode(&d, encodings[i], &openshell__v1__health_response__descriptor,
                                      NULL, MAX_LEN, &status, &msg);
        assert_null(m);
        assert_int_equal(status, GRPC_STATUS_UNIMPLEMENTED);
        assert_non_null(msg);
        grpc_deframer_free(&d);
    }
    free(z);
}

static void test_grpc_payload_decode_bad_gzip(void **state)
{
    static const uint8_t junk[] = {0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 3, 0xde, 0xad};
    struct grpc_deframer d;
    int status = -1;
    const char *msg = NULL;

    load_deframer(&d, true, junk, sizeof(junk));
    void *m = grpc_payload_decode(&d, "gzip", &openshell__v1__health_response__descriptor, NULL,
                                  MAX_LEN, &status, &msg);
    assert_null(m);
    assert_int_equal(status, GRPC_STATUS_INTERNAL);
    assert_non_null(msg);
    grpc_deframer_free(&d);
}

static void test_grpc_payload_decode_gzip_over_limit(void **state)
{
    /* A valid message that inflates past the receive limit is the peer's
     * resource problem, not a corrupt stream. */
    Openshell__V1__HealthResponse resp = OPENSHELL__V1__HEALTH_RESPONSE__INIT;
    char *version = malloc(100001);
    assert_non_null(version);
    memset(version, 'v', 100000);
    version[100000] = '\0';
    resp.version = version;
    size_t n = protobuf_c_message_get_packed_size(&resp.base);
    uint8_t *pb = malloc(n);
    assert_non_null(pb);
    protobuf_c_message_pack(&resp.base, pb);
    size_t zlen;
    uint8_t *z = gzip_bytes(pb, n, &zlen);
    struct grpc_deframer d;
    int status = -1;
    const char *msg = NULL;

    load_deframer(&d, true, z, zlen);
    void *m = grpc_payload_decode(&d, "gzip", &openshell__v1__health_response__descriptor, NULL,
                                  MAX_LEN, &status, &msg);
    grpc_deframer_free(&d);
    free(z);
    free(pb);
    free(version);
    assert_null(m);
    assert_non_null(msg);
    if (status != GRPC_STATUS_RESOURCE_EXHAUSTED)
        fail_msg("status %s (%s), want RESOURCE_EXHAUSTED", grpc_status_name(status), msg);
}

static void test_grpc_payload_decode_invalid_protobuf(void **state)
{
    static const struct {
        const char *bytes;
        size_t len;
    } cases[] = {
        {"\x12\x05\x61\x62", 4}, /* string field shorter than its length */
        {"\x12", 1},             /* tag without a length */
        {"\x08\xff\xff\xff", 4}, /* truncated varint */
        {"\x0f", 1},             /* wire type 7 does not exist */
        {"\x00\x00", 2},         /* field number 0 */
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        struct grpc_deframer d;
        int status = -1;
        const char *msg = NULL;
        load_deframer(&d, false, (const uint8_t *)cases[i].bytes, cases[i].len);
        void *m = grpc_payload_decode(&d, NULL, &openshell__v1__health_response__descriptor, NULL,
                                      MAX_LEN, &status, &msg);
        if (m != NULL)
            fail_msg("case %zu decoded", i);
        assert_int_equal(status, GRPC_STATUS_INTERNAL);
        assert_non_null(msg);
        grpc_deframer_free(&d);
    }
}

static void test_grpc_payload_decode_unknown_fields_skipped(void **state)
{
    /* HealthRequest has no fields: a varint (7), a length-delimited (9), a
     * fixed64 (10) and a fixed32 (11) field are all unknown. */
    static const uint8_t pb[] = {
        0x38, 0x96, 0x01,                                     /* 7: varint 150 */
        0x4a, 0x03, 0x61, 0x62, 0x63,                         /* 9: "abc" */
        0x51, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, /* 10: fixed64 */
        0x5d, 0x01, 0x02, 0x03, 0x04,                         /* 11: fixed32 */
    };
    struct grpc_deframer d;
    int status = -1;
    const char *msg = NULL;

    load_deframer(&d, false, pb, sizeof(pb));
    Openshell__V1__HealthRequest *m = grpc_payload_decode(
        &d, NULL, &openshell__v1__health_request__descriptor, NULL, MAX_LEN, &status, &msg);
    assert_non_null(m);
    /* protobuf-c keeps unknown fields and packs them back unchanged. */
    assert_int_equal(m->base.n_unknown_fields, 4);
    uint8_t again[sizeof(pb)];
    assert_int_equal(protobuf_c_message_get_packed_size(&m->base), sizeof(pb));
    assert_int_equal(protobuf_c_message_pack(&m->base, again), sizeof(pb));
    assert_memory_equal(again, pb, sizeof(pb));
    protobuf_c_message_free_unpacked(&m->base, NULL);
    grpc_deframer_free(&d);
}

static void test_grpc_payload_decode_unknown_field_next_to_known(void **state)
{
    uint8_t pb[64];
    size_t n = pack_health_response(pb, sizeof(pb), "k");
    pb[n++] = 0xa0; /* field 100, varint: tag is two bytes */
    pb[n++] = 0x06;
    pb[n++] = 0x2a;
    struct grpc_deframer d;
    int status = -1;
    const char *msg = NULL;

    load_deframer(&d, false, pb, n);
    Openshell__V1__HealthResponse *m = grpc_payload_decode(
        &d, NULL, &openshell__v1__health_response__descriptor, NULL, MAX_LEN, &status, &msg);
    assert_non_null(m);
    assert_string_equal(m->version, "k");
    assert_int_equal(m->base.n_unknown_fields, 1);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    grpc_deframer_free(&d);
}

static void test_grpc_payload_decode_into_arena(void **state)
{
    _Alignas(16) unsigned char inline_buf[64];
    struct arena a;
    ProtobufCAllocator alloc;
    uint8_t pb[64];
    size_t n = pack_health_response(pb, sizeof(pb), "arena-version-string-longer-than-inline");
    struct grpc_deframer d;
    int status = -1;
    const char *msg = NULL;

    arena_init(&a, inline_buf, sizeof(inline_buf));
    arena_pb_allocator(&a, &alloc);
    load_deframer(&d, false, pb, n);
    Openshell__V1__HealthResponse *m = grpc_payload_decode(
        &d, NULL, &openshell__v1__health_response__descriptor, &alloc, MAX_LEN, &status, &msg);
    assert_non_null(m);
    assert_string_equal(m->version, "arena-version-string-longer-than-inline");
    assert_true(a.total >= sizeof(*m));
    /* Freeing through the arena allocator is a no-op; the arena owns it. */
    protobuf_c_message_free_unpacked(&m->base, &alloc);
    grpc_deframer_free(&d);
    arena_release(&a);
}

/* ---- arena ------------------------------------------------------------------------ */

static void test_arena_alloc_alignment(void **state)
{
    _Alignas(16) unsigned char inline_buf[256];
    static const size_t sizes[] = {1, 3, 8, 15, 16, 17, 31, 33, 100, 4000, 5000};
    struct arena a;

    unsigned misaligned = 0;
    size_t first_bad = 0;

    arena_init(&a, inline_buf, sizeof(inline_buf));
    for (int round = 0; round < 4; round++) {
        for (size_t i = 0; i < GW_ARRAY_LEN(sizes); i++) {
            unsigned char *p = arena_alloc(&a, sizes[i]);
            assert_non_null(p);
            if ((uintptr_t)p % 16 != 0 && misaligned++ == 0)
                first_bad = sizes[i];
            memset(p, 0xa5, sizes[i]);
        }
    }
    arena_release(&a);
    if (misaligned > 0)
        fail_msg("%u allocations not 16-byte aligned (first: arena_alloc(%zu))", misaligned,
                 first_bad);
}

static void test_arena_alloc_uses_inline_buffer_first(void **state)
{
    _Alignas(16) unsigned char inline_buf[64];
    struct arena a;

    arena_init(&a, inline_buf, sizeof(inline_buf));
    unsigned char *p = arena_alloc(&a, 10);
    unsigned char *q = arena_alloc(&a, 10);
    assert_ptr_equal(p, inline_buf);
    assert_ptr_equal(q, inline_buf + 16);
    assert_null(a.head);
    unsigned char *r = arena_alloc(&a, 40); /* does not fit in the 32 bytes left */
    assert_true(r < inline_buf || r >= inline_buf + sizeof(inline_buf));
    assert_non_null(a.head);
    unsigned char *s = arena_alloc(&a, 32); /* fits exactly in what is left inline */
    assert_ptr_equal(s, inline_buf + 32);
    assert_int_equal(a.total, 16 + 16 + 48 + 32);
    arena_release(&a);
}

static void test_arena_alloc_zero_size(void **state)
{
    struct arena a;

    arena_init(&a, NULL, 0);
    void *p = arena_alloc(&a, 0);
    void *q = arena_alloc(&a, 0);
    assert_non_null(p);
    assert_non_null(q);
    assert_ptr_not_equal(p, q);
    arena_release(&a);
}

static void test_arena_alloc_spans_blocks(void **state)
{
    enum { N = 2000, SZ = 40 };
    static unsigned char *ptrs[N];
    _Alignas(16) unsigned char inline_buf[128];
    struct arena a;

    arena_init(&a, inline_buf, sizeof(inline_buf));
    for (int i = 0; i < N; i++) {
        ptrs[i] = arena_alloc(&a, SZ);
        memset(ptrs[i], i & 0xff, SZ);
    }
    /* Every allocation kept its own bytes: nothing overlapped. */
    for (int i = 0; i < N; i++)
        for (int j = 0; j < SZ; j++)
            assert_int_equal(ptrs[i][j], i & 0xff);
    size_t blocks = 0;
    for (struct arena_block *b = a.head; b != NULL; b = b->next) {
        assert_true(b->used <= b->cap);
        blocks++;
    }
    assert_true(blocks >= (size_t)N * 48 / 4096);
    assert_int_equal(a.total, (size_t)N * 48);
    arena_release(&a);
}

static void test_arena_alloc_larger_than_a_block(void **state)
{
    struct arena a;

    arena_init(&a, NULL, 0);
    unsigned char *small = arena_alloc(&a, 10);
    unsigned char *big = arena_alloc(&a, 100000);
    memset(big, 'B', 100000);
    memset(small, 'S', 10);
    unsigned char *after = arena_alloc(&a, 10);
    memset(after, 'A', 10);
    assert_int_equal(big[0], 'B');
    assert_int_equal(big[99999], 'B');
    assert_int_equal(small[9], 'S');
    assert_int_equal(a.total, 16 + 100000 + 16);
    arena_release(&a);
}

static void test_arena_strndup_copies_and_terminates(void **state)
{
    _Alignas(16) unsigned char inline_buf[64];
    struct arena a;

    arena_init(&a, inline_buf, sizeof(inline_buf));
    char *s = arena_strndup(&a, "hello, world", 5);
    assert_string_equal(s, "hello");
    char *e = arena_strndup(&a, "", 0);
    assert_string_equal(e, "");
    /* Embedded NUL bytes are copied as they are, n counts. */
    char *z = arena_strndup(&a, "a\0b", 3);
    assert_memory_equal(z, "a\0b\0", 4);
    char long_src[300];
    memset(long_src, 'x', sizeof(long_src));
    char *l = arena_strndup(&a, long_src, sizeof(long_src));
    assert_int_equal(strlen(l), sizeof(long_src));
    assert_string_equal(s, "hello");
    arena_release(&a);
}

static void check_no_leaks(void)
{
#ifdef HAVE_LSAN
    assert_int_equal(__lsan_do_recoverable_leak_check(), 0);
#endif
}

static void test_arena_release_frees_everything(void **state)
{
    _Alignas(16) unsigned char inline_buf[96];
    struct arena a;

    arena_init(&a, inline_buf, sizeof(inline_buf));
    for (int i = 0; i < 500; i++)
        (void)arena_alloc(&a, (size_t)(i % 300) + 1);
    (void)arena_alloc(&a, 50000);
    assert_non_null(a.head);
    arena_release(&a);
    assert_null(a.head);
    assert_int_equal(a.inline_used, 0);
    assert_int_equal(a.total, 0);
    check_no_leaks();
    /* Reusable after release; releasing twice is harmless. */
    char *s = arena_strndup(&a, "again", 5);
    assert_ptr_equal(s, inline_buf);
    (void)arena_alloc(&a, 10000);
    arena_release(&a);
    arena_release(&a);
    check_no_leaks();
}

static void test_arena_pb_allocator_free_is_noop(void **state)
{
    struct arena a;
    ProtobufCAllocator alloc;

    arena_init(&a, NULL, 0);
    arena_pb_allocator(&a, &alloc);
    assert_ptr_equal(alloc.allocator_data, &a);
    void *p = alloc.alloc(alloc.allocator_data, 24);
    assert_non_null(p);
    assert_int_equal(a.total, 32);
    alloc.free(alloc.allocator_data, p);
    memset(p, 0, 24); /* still owned by the arena */
    arena_release(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grpc_deframer_feed_byte_at_a_time),
        cmocka_unit_test(test_grpc_deframer_feed_header_split_across_calls),
        cmocka_unit_test(test_grpc_deframer_feed_several_messages_in_one_buffer),
        cmocka_unit_test(test_grpc_deframer_feed_zero_length_message),
        cmocka_unit_test(test_grpc_deframer_feed_exactly_max_len),
        cmocka_unit_test(test_grpc_deframer_feed_max_len_plus_one),
        cmocka_unit_test(test_grpc_deframer_feed_huge_length),
        cmocka_unit_test(test_grpc_deframer_feed_bad_flag),
        cmocka_unit_test(test_grpc_deframer_feed_compressed_flag),
        cmocka_unit_test(test_grpc_deframer_reset_msg_between_messages),
        cmocka_unit_test(test_grpc_deframer_reset_msg_drops_large_buffer),
        cmocka_unit_test(test_grpc_frame_prefix_big_endian),
        cmocka_unit_test(test_grpc_frame_pack_writes_prefix_and_payload),
        cmocka_unit_test(test_grpc_frame_pack_empty_message),
        cmocka_unit_test(test_grpc_frame_pack_oversize),
        cmocka_unit_test(test_grpc_frame_pack_raw_writes_prefix_and_payload),
        cmocka_unit_test(test_grpc_frame_pack_raw_empty),
        cmocka_unit_test(test_grpc_frame_pack_raw_oversize),
        cmocka_unit_test(test_grpc_frame_pack_round_trips_through_deframer),
        cmocka_unit_test(test_grpc_gunzip_round_trip),
        cmocka_unit_test(test_grpc_gunzip_empty_payload),
        cmocka_unit_test(test_grpc_gunzip_exactly_max_len),
        cmocka_unit_test(test_grpc_gunzip_over_max_len),
        cmocka_unit_test(test_grpc_gunzip_bomb_is_bounded),
        cmocka_unit_test(test_grpc_gunzip_truncated),
        cmocka_unit_test(test_grpc_gunzip_garbage),
        cmocka_unit_test(test_grpc_gunzip_corrupt_crc),
        cmocka_unit_test(test_grpc_gunzip_rejects_trailing_bytes),
        cmocka_unit_test(test_grpc_gunzip_rejects_zlib_wrapper),
        cmocka_unit_test(test_grpc_gunzip_resets_output),
        cmocka_unit_test(test_grpc_payload_decode_uncompressed),
        cmocka_unit_test(test_grpc_payload_decode_empty_payload),
        cmocka_unit_test(test_grpc_payload_decode_gzip),
        cmocka_unit_test(test_grpc_payload_decode_uncompressed_ignores_encoding),
        cmocka_unit_test(test_grpc_payload_decode_compressed_without_encoding),
        cmocka_unit_test(test_grpc_payload_decode_bad_gzip),
        cmocka_unit_test(test_grpc_payload_decode_gzip_over_limit),
        cmocka_unit_test(test_grpc_payload_decode_invalid_protobuf),
        cmocka_unit_test(test_grpc_payload_decode_unknown_fields_skipped),
        cmocka_unit_test(test_grpc_payload_decode_unknown_field_next_to_known),
        cmocka_unit_test(test_grpc_payload_decode_into_arena),
        cmocka_unit_test(test_arena_alloc_alignment),
        cmocka_unit_test(test_arena_alloc_uses_inline_buffer_first),
        cmocka_unit_test(test_arena_alloc_zero_size),
        cmocka_unit_test(test_arena_alloc_spans_blocks),
        cmocka_unit_test(test_arena_alloc_larger_than_a_block),
        cmocka_unit_test(test_arena_strndup_copies_and_terminates),
        cmocka_unit_test(test_arena_release_frees_everything),
        cmocka_unit_test(test_arena_pb_allocator_free_is_noop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
