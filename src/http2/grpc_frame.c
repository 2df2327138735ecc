/* gRPC message framing: the deframer, packing into evbuffers, gzip. */
#include "http2/grpc.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <zlib.h>

#include "http2/http2_int.h"

void grpc_deframer_init(struct grpc_deframer *d, uint32_t max_len)
{
    memset(d, 0, sizeof(*d));
    d->max_len = max_len;
}

void grpc_deframer_free(struct grpc_deframer *d)
{
    gw_buf_free(&d->payload);
}

void grpc_deframer_reset_msg(struct grpc_deframer *d)
{
    d->hdr_have = 0;
    d->msg_len = 0;
    d->compressed = false;
    /* Keep a small buffer for the next message; drop a large one so one big
     * message does not pin its memory for the life of a stream. */
    if (d->payload.cap > 64 * 1024)
        gw_buf_free(&d->payload);
    else
        gw_buf_reset(&d->payload);
}

int grpc_deframer_feed(struct grpc_deframer *d, const uint8_t *data, size_t len, size_t *used)
{
    size_t off = 0;
    if (d->hdr_have < 5) {
        size_t take = GW_MIN((size_t)(5 - d->hdr_have), len);
        memcpy(d->hdr + d->hdr_have, data, take);
        d->hdr_have = (uint8_t)(d->hdr_have + take);
        off += take;
        if (d->hdr_have < 5) {
            *used = off;
            return GRPC_DEFRAME_NEED;
        }
        if (d->hdr[0] > 1) {
            *used = off;
            return GRPC_DEFRAME_BADFLAG;
        }
        d->compressed = d->hdr[0] == 1;
        d->msg_len = (uint32_t)d->hdr[1] << 24 | (uint32_t)d->hdr[2] << 16 |
                     (uint32_t)d->hdr[3] << 8 | d->hdr[4];
        if (d->msg_len > d->max_len) {
            *used = off;
            return GRPC_DEFRAME_TOOBIG;
        }
    }
    size_t want = d->msg_len - d->payload.len;
    size_t take = GW_MIN(want, len - off);
    if (take > 0)
        gw_buf_append(&d->payload, data + off, take);
    off += take;
    *used = off;
    return d->payload.len == d->msg_len ? GRPC_DEFRAME_MSG : GRPC_DEFRAME_NEED;
}

void grpc_frame_prefix(uint8_t out[5], uint32_t len)
{
    out[0] = 0;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

/* Packs straight into the evbuffer's free space: no intermediate copy. */
size_t grpc_frame_pack(struct evbuffer *out, const ProtobufCMessage *msg, uint32_t max_len)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    if (len > max_len)
        return 0;
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ev_ssize_t)(len + 5), &v, 1) != 1)
        return 0;
    uint8_t *p = v.iov_base;
    grpc_frame_prefix(p, (uint32_t)len);
    protobuf_c_message_pack(msg, p + 5);
    v.iov_len = len + 5;
    evbuffer_commit_space(out, &v, 1);
    return len + 5;
}

size_t grpc_frame_pack_raw(struct evbuffer *out, const uint8_t *data, size_t len, uint32_t max_len)
{
    uint8_t pre[5];
    if (len > max_len)
        return 0;
    grpc_frame_prefix(pre, (uint32_t)len);
    evbuffer_add(out, pre, 5);
    if (len > 0)
        evbuffer_add(out, data, len);
    return len + 5;
}

/* Inflates; sets |*too_big| when the output would pass |max_len|. */
static int gunzip_bounded(const uint8_t *in, size_t len, uint32_t max_len, struct gw_buf *out,
                          bool *too_big)
{
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    /* 16 + MAX_WBITS: gzip wrapper only. */
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK)
        return -1;
    gw_buf_reset(out);
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)len;
    int rv = -1;
    unsigned char chunk[16384];
    for (;;) {
        zs.next_out = chunk;
        zs.avail_out = sizeof(chunk);
        int z = inflate(&zs, Z_NO_FLUSH);
        size_t got = sizeof(chunk) - zs.avail_out;
        if (out->len + got > max_len) {
            *too_big = true;
            break;
        }
        gw_buf_append(out, chunk, got);
        if (z == Z_STREAM_END) {
            rv = zs.avail_in == 0 ? 0 : -1;
            break;
        }
        if (z != Z_OK || (got == 0 && zs.avail_in == 0))
            break;
    }
    inflateEnd(&zs);
    return rv;
}

int grpc_gunzip(const uint8_t *in, size_t len, uint32_t max_len, struct gw_buf *out)
{
    bool too_big = false;
    return gunzip_bounded(in, len, max_len, out, &too_big);
}

void *grpc_payload_decode(const struct grpc_deframer *d, const char *encoding,
                          const ProtobufCMessageDescriptor *desc, ProtobufCAllocator *alloc,
                          uint32_t max_len, int *status, const char **msg)
{
    const uint8_t *p = (const uint8_t *)d->payload.data;
    size_t n = d->payload.len;
    struct gw_buf inflated = {0};
    void *m = NULL;

    if (d->compressed) {
        if (encoding == NULL || strcmp(encoding, "gzip") != 0) {
            *status = GRPC_STATUS_UNIMPLEMENTED;
            *msg = "compressed message without a supported grpc-encoding (gzip)";
            goto out;
        }
        bool too_big = false;
        if (gunzip_bounded(p, n, max_len, &inflated, &too_big) != 0) {
            *status = too_big ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_INTERNAL;
            *msg = too_big ? "decompressed message larger than the limit" : "invalid gzip message";
            goto out;
        }
        p = (const uint8_t *)inflated.data;
        n = inflated.len;
    }
    m = protobuf_c_message_unpack(desc, alloc, n, n ? p : (const uint8_t *)"");
    if (m == NULL) {
        const struct arena *a = alloc ? alloc->allocator_data : NULL;
        bool over = a != NULL && a->pb_exhausted;
        *status = over ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_INTERNAL;
        *msg =
            over ? "message expands beyond the decoding memory limit" : "failed to parse message";
    }
out:
    gw_buf_free(&inflated);
    return m;
}

/* ---- arena ------------------------------------------------------------------ */

#define ARENA_ALIGN 16

static size_t align_up(uintptr_t n)
{
    return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
}

void arena_init(struct arena *a, void *inline_buf, size_t inline_cap)
{
    a->head = NULL;
    a->inline_buf = inline_buf;
    a->inline_used = 0;
    a->inline_cap = inline_cap;
    a->total = 0;
    a->pb_used = 0;
    a->pb_budget = 0;
    a->pb_exhausted = false;
}

/* Offset of the next 16-byte aligned address at or after |base + used|. */
static size_t aligned_offset(const unsigned char *base, size_t used)
{
    uintptr_t p = (uintptr_t)(base + used);
    return used + (align_up(p) - p);
}

void *arena_alloc(struct arena *a, size_t n)
{
    n = align_up(n ? n : 1);
    a->total += n;
    if (a->inline_buf != NULL) {
        size_t off = aligned_offset(a->inline_buf, a->inline_used);
        if (off <= a->inline_cap && a->inline_cap - off >= n) {
            a->inline_used = off + n;
            return a->inline_buf + off;
        }
    }
    size_t off = a->head ? aligned_offset(a->head->data, a->head->used) : 0;
    if (a->head == NULL || off > a->head->cap || a->head->cap - off < n) {
        size_t cap = GW_MAX(n + ARENA_ALIGN, (size_t)4096 - sizeof(struct arena_block));
        struct arena_block *b = gw_xmalloc(sizeof(*b) + cap);
        b->cap = cap;
        b->used = 0;
        b->next = a->head;
        a->head = b;
        off = aligned_offset(b->data, 0);
    }
    a->head->used = off + n;
    return a->head->data + off;
}

char *arena_strndup(struct arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void arena_release(struct arena *a)
{
    struct arena_block *b = a->head;
    while (b != NULL) {
        struct arena_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
    a->inline_used = 0;
    a->total = 0;
    a->pb_used = 0;
    a->pb_exhausted = false;
}

static void *pb_arena_alloc(void *data, size_t n)
{
    struct arena *a = data;
    if (a->pb_budget != 0 && (n > a->pb_budget || a->pb_used > a->pb_budget - n)) {
        a->pb_exhausted = true;
        return NULL;
    }
    a->pb_used += n;
    return arena_alloc(a, n);
}

static void pb_arena_free(void *data, void *p)
{
    /* released with the arena */
}

void arena_pb_allocator(struct arena *a, ProtobufCAllocator *out)
{
    out->alloc = pb_arena_alloc;
    out->free = pb_arena_free;
    out->allocator_data = a;
}
