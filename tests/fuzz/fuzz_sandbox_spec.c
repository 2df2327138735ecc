/* libFuzzer target for the sandbox spec path a caller controls end to end:
 * a CreateSandboxRequest (protobuf bytes) through the gateway's validation
 * (api_spec_validate) and public -> driver mapping with driver_config
 * selection (api_spec_to_driver), then the process driver's own check of
 * the DriverSandbox it would receive (process_sandbox_check, driver_config
 * schema included). Every refusal must be a one-line message with the
 * right status; a mapped sandbox must survive a pack/unpack round trip.
 * ASan/UBSan catch the rest. Seeds: tests/fuzz/corpus/sandbox_spec
 * (tests/fuzz/make_corpus.py). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "compute_driver.pb-c.h"
#include "drivers/process/process.h"
#include "http2/grpc.h"
#include "openshell.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok)
        abort();
}

/* The allocator contract: never NULL, released all at once. */
struct chunks {
    void **p;
    size_t n, cap;
};

static void *chunk_alloc(void *ctx, size_t n)
{
    struct chunks *c = ctx;
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 64;
        c->p = realloc(c->p, c->cap * sizeof(void *));
        check(c->p != NULL);
    }
    void *m = calloc(1, n ? n : 1);
    check(m != NULL);
    c->p[c->n++] = m;
    return m;
}

static void chunks_free(struct chunks *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->p[i]);
    free(c->p);
}

static void *pb_alloc(void *data, size_t n)
{
    return chunk_alloc(data, n);
}

static void pb_free(void *data, void *p)
{
    /* released with the chunks */
}

static void check_message(const char *err)
{
    check(err[0] != '\0');
    check(strchr(err, '\n') == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 256 * 1024)
        return 0;
    /* As in the gateway, the request and what validation adds to it (the
     * default command) share one arena, released at once. */
    struct chunks c = {0};
    ProtobufCAllocator pa = {pb_alloc, pb_free, &c};
    Openshell__V1__CreateSandboxRequest *req =
        openshell__v1__create_sandbox_request__unpack(&pa, size, data);
    if (req == NULL) {
        chunks_free(&c);
        return 0;
    }
    struct api_alloc al = {chunk_alloc, &c};
    char err[512] = "";

    int st = api_spec_validate_with(&al, req, err, sizeof(err));
    check(st == GRPC_STATUS_OK || st == GRPC_STATUS_INVALID_ARGUMENT);
    if (st != GRPC_STATUS_OK) {
        check_message(err);
        goto out;
    }
    check(req->spec != NULL && req->spec->n_command > 0);

    Openshell__Compute__V1__DriverSandbox *dsb = NULL;
    err[0] = '\0';
    st = api_spec_to_driver_with(&al, "0b7c8a1e-2f44-4c1a-9d3e-5a6b7c8d9e0f", "fuzz", "default",
                                 req->spec, "process", "host", &dsb, err, sizeof(err));
    check(st == GRPC_STATUS_OK || st == GRPC_STATUS_INVALID_ARGUMENT);
    if (st != GRPC_STATUS_OK) {
        check(dsb == NULL);
        check_message(err);
        goto out;
    }
    check(dsb != NULL && dsb->spec != NULL && dsb->spec->template_ != NULL);

    /* What the driver receives is the packed form. */
    size_t len = protobuf_c_message_get_packed_size(&dsb->base);
    uint8_t *buf = malloc(len ? len : 1);
    check(buf != NULL);
    protobuf_c_message_pack(&dsb->base, buf);
    Openshell__Compute__V1__DriverSandbox *got =
        openshell__compute__v1__driver_sandbox__unpack(NULL, len, buf);
    free(buf);
    check(got != NULL);
    struct process_options opts;
    struct process_limits lim;
    err[0] = '\0';
    int rc = process_sandbox_check(got, false, &opts, &lim, err, sizeof(err));
    check(rc == 0 || rc == PROCESS_ERR_INVALID || rc == PROCESS_ERR_UNSUPPORTED);
    if (rc != 0)
        check_message(err);
    protobuf_c_message_free_unpacked(&got->base, NULL);
out:
    chunks_free(&c);
    return 0;
}
