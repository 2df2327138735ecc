/* libFuzzer target for the gRPC deframer and payload decoding
 * (src/http2/grpc_frame.c).
 *
 * Input layout:
 *   byte 0        bits 0-2: receive limit (see max_lens[]); bits 4-7: number
 *                 of chunk-size bytes that follow (0 = feed everything at once)
 *   chunk sizes   each byte is the size of the next feed call (0 = the rest),
 *                 used round robin
 *   stream        length-prefixed messages as a client sends them
 *
 * Every complete message is decoded as openshell.v1.CreateSandboxRequest into
 * a call-style arena (the unary path) and as
 * grpc.reflection.v1alpha.ServerReflectionRequest with the system allocator
 * (the streaming path), with grpc-encoding gzip so compressed messages are
 * inflated. The deframer's own invariants are checked after each feed. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http2/grpc.h"
#include "http2/http2_int.h"
#include "grpc/reflection/v1alpha/reflection.pb-c.h"
#include "openshell.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint32_t max_lens[8] = {0, 1, 16, 100, 1024, 65536, 1024 * 1024, 4 * 1024 * 1024};

static void check(int ok)
{
    if (!ok)
        abort();
}

/* A decoded message must serialize again within the limit it came in under
 * (unknown fields included), and status/msg must be set on failure. */
static void decode_one(const struct grpc_deframer *d, const ProtobufCMessageDescriptor *desc,
                       ProtobufCAllocator *alloc)
{
    int status = -1;
    const char *msg = NULL;
    ProtobufCMessage *m = grpc_payload_decode(d, "gzip", desc, alloc, d->max_len, &status, &msg);
    if (m == NULL) {
        check(status > 0 && status <= GRPC_STATUS_UNAUTHENTICATED && msg != NULL);
        return;
    }
    check(m->descriptor == desc);
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n + 1);
    check(buf != NULL);
    check(protobuf_c_message_pack(m, buf) == n);
    free(buf);
    protobuf_c_message_free_unpacked(m, alloc);
}

static void deliver(const struct grpc_deframer *d)
{
    unsigned char inline_buf[768] __attribute__((aligned(16)));
    struct arena arena;
    ProtobufCAllocator alloc;

    check(d->payload.len == d->msg_len && d->msg_len <= d->max_len);
    arena_init(&arena, inline_buf, sizeof(inline_buf));
    arena_pb_allocator(&arena, &alloc);
    decode_one(d, &openshell__v1__create_sandbox_request__descriptor, &alloc);
    arena_release(&arena);
    decode_one(d, &grpc__reflection__v1alpha__server_reflection_request__descriptor, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct grpc_deframer d;
    size_t used;

    if (size < 1)
        return 0;
    uint32_t max_len = max_lens[data[0] & 7];
    size_t nchunks = data[0] >> 4;
    if (1 + nchunks > size)
        return 0;
    const uint8_t *chunks = data + 1;
    const uint8_t *p = data + 1 + nchunks;
    size_t left = size - 1 - nchunks;

    grpc_deframer_init(&d, max_len);
    /* An empty feed consumes nothing and completes nothing. */
    check(grpc_deframer_feed(&d, p, 0, &used) == GRPC_DEFRAME_NEED && used == 0);
    for (size_t i = 0; left > 0; i++) {
        size_t want = nchunks > 0 ? chunks[i % nchunks] : 0;
        size_t len = want == 0 || want > left ? left : want;
        size_t off = 0;
        int rv = GRPC_DEFRAME_NEED;
        /* One chunk may hold the ends of several messages. */
        while (off < len) {
            rv = grpc_deframer_feed(&d, p + off, len - off, &used);
            check(used <= len - off);
            off += used;
            if (rv == GRPC_DEFRAME_NEED) {
                check(off == len);
            } else if (rv == GRPC_DEFRAME_MSG) {
                deliver(&d);
                grpc_deframer_reset_msg(&d);
            } else {
                check(rv == GRPC_DEFRAME_TOOBIG || rv == GRPC_DEFRAME_BADFLAG);
                check(d.hdr_have == 5 && d.payload.len == 0);
                check(rv == GRPC_DEFRAME_BADFLAG || d.msg_len > d.max_len);
                break;
            }
        }
        if (rv < 0)
            break; /* the server finishes the call here */
        p += len;
        left -= len;
    }
    grpc_deframer_free(&d);
    return 0;
}
