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
    size_t total; /* bytes handed out, for limits */
};

void arena_init(struct arena *a, void *inline_buf, size_t inline_cap);
void *arena_alloc(struct arena *a, size_t n);
char *arena_strndup(struct arena *a, const char *s, size_t n);
void arena_release(struct arena *a);
/* A protobuf-c allocator that allocates from |a| and never frees. */
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
size_t grpc_frame_pack_raw(struct evbuffer *out, const uint8_t *data, size_t len,
                           uint32_t max_len);

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
