/* Folder-private declarations of src/http2 (h2 connections and gRPC). */
#ifndef GW_HTTP2_INT_H
#define GW_HTTP2_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "http2/grpc.h"
#include "http2/h2.h"

/* ---- arena: a call's allocations, freed together ---------------------- */

struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    unsigned char data[];
};

struct arena {
    struct arena_block *head;
    unsigned char *inline_buf; /* first block, owned by the embedding object */
    size_t inline_used, inline_cap;
    size_t total;      /* bytes handed out */
    size_t pb_used;    /* bytes handed to protobuf-c through arena_pb_allocator */
    size_t pb_budget;  /* protobuf-c allocations fail past this (0 = no limit) */
    bool pb_exhausted; /* a protobuf-c allocation was refused */
};

void arena_init(struct arena *a, void *inline_buf, size_t inline_cap);
void *arena_alloc(struct arena *a, size_t n);
char *arena_strndup(struct arena *a, const char *s, size_t n);
void arena_release(struct arena *a);
/* A protobuf-c allocator that allocates from |a| and never frees. With a
 * pb_budget it returns NULL past the budget, so a small message that
 * expands into a huge object tree (unknown fields, packed repeats) fails
 * to decode instead of pinning memory. */
void arena_pb_allocator(struct arena *a, ProtobufCAllocator *out);

/* ---- headers kept per call --------------------------------------------- */

struct hdr {
    const char *name; /* lower-case, NUL-terminated (arena) */
    const char *value;
    uint32_t value_len;
};

#define HDRS_MAX 24 /* headers kept per block; more are counted but dropped */

struct hdr_list {
    struct hdr items[HDRS_MAX];
    unsigned n;
};

const char *hdr_list_get(const struct hdr_list *l, const char *name);

/* Serializes |msg| with the 5-byte gRPC prefix straight into |out|.
 * Returns the framed length, or 0 when the message exceeds |max_len|. */
size_t grpc_frame_pack(struct evbuffer *out, const ProtobufCMessage *msg, uint32_t max_len);
size_t grpc_frame_pack_raw(struct evbuffer *out, const uint8_t *data, size_t len, uint32_t max_len);

/* Decoding budget for one message of at most |max_len| bytes. */
#define GRPC_DECODE_BUDGET(max_len) ((size_t)(max_len)*2 + 64 * 1024)

/* Decodes one deframed payload into a message: gunzips it when compressed
 * (per |encoding|), unpacks with |alloc|. On failure returns NULL with
 * |*status| and |*msg| set. */
void *grpc_payload_decode(const struct grpc_deframer *d, const char *encoding,
                          const ProtobufCMessageDescriptor *desc, ProtobufCAllocator *alloc,
                          uint32_t max_len, int *status, const char **msg);

/* Builds trailers: grpc-status (+ grpc-message when |message| is non-empty,
 * percent-encoded into |buf|). |nva| needs room for 2 entries; returns the
 * count. |status_text| needs >= 12 bytes. */
size_t grpc_trailers_build(nghttp2_nv *nva, int status, const char *message, char *status_text,
                           struct gw_buf *buf);

#define MAKE_NV(n, v, vl)                                                                          \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vl),                                       \
            NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE                           \
    }
#define MAKE_NV_LIT(n, v) MAKE_NV(n, v, sizeof(v) - 1)

#endif /* GW_HTTP2_INT_H */
