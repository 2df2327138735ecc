/* openshell.diag.v1.Diagnostics (only with --enable-diagnostics): load and
 * flow-control probes for operators and the benchmarks. Every producer here
 * obeys GRPC_SEND_FULL, so a slow reader slows it down instead of making the
 * gateway buffer. */
#include "api/api.h"

#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "api/api_int.h"
#include "diag.pb-c.h"

#define DIAG_MAX_CHUNK (1024 * 1024)

/* A Stream or Delay call in progress; linked so shutdown can end them. */
struct diag_job {
    struct grpc_call *call;
    struct api *api;
    struct diag_job *prev, *next;
    /* Stream */
    uint64_t remaining; /* UINT64_MAX = until cancelled */
    uint64_t seq;
    uint8_t *payload;
    size_t size;
    /* Delay */
    struct event *timer;
    uint64_t due_us; /* started_us + the requested delay */
    uint64_t started_us;
};

struct diag_state {
    struct diag_job *jobs;
};

static struct diag_job *job_new(struct grpc_call *call)
{
    struct api *a = grpc_call_method_arg(call);
    if (a->diag == NULL)
        a->diag = gw_xcalloc(1, sizeof(*a->diag));
    struct diag_job *j = gw_xcalloc(1, sizeof(*j));
    j->call = call;
    j->api = a;
    j->next = a->diag->jobs;
    if (j->next)
        j->next->prev = j;
    a->diag->jobs = j;
    grpc_call_set_user(call, j);
    return j;
}

static void job_free(struct diag_job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        j->api->diag->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    if (j->timer)
        event_free(j->timer);
    free(j->payload);
    free(j);
}

static void job_cancel(struct grpc_call *call)
{
    struct diag_job *j = grpc_call_user(call);
    if (j != NULL)
        job_free(j);
}

/* ---- Stream ------------------------------------------------------------------ */

static void stream_pump(struct diag_job *j)
{
    Openshell__Diag__V1__StreamChunk chunk = OPENSHELL__DIAG__V1__STREAM_CHUNK__INIT;
    chunk.payload.data = j->payload;
    chunk.payload.len = j->size;
    while (j->remaining > 0) {
        chunk.seq = j->seq++;
        if (j->remaining != UINT64_MAX)
            j->remaining--;
        int rv = grpc_call_send(j->call, &chunk.base);
        if (rv < 0) {
            job_free(j);
            return;
        }
        if (rv == GRPC_SEND_FULL)
            return; /* resumed by on_writable */
    }
    struct grpc_call *call = j->call;
    job_free(j);
    grpc_call_finish(call, GRPC_STATUS_OK, NULL);
}

static void stream_start(struct grpc_call *call, void *msg)
{
    Openshell__Diag__V1__StreamRequest *req = msg;
    if (req->size > DIAG_MAX_CHUNK) {
        grpc_call_finishf(call, GRPC_STATUS_INVALID_ARGUMENT, "size must be at most %d",
                          DIAG_MAX_CHUNK);
        return;
    }
    struct diag_job *j = job_new(call);
    j->remaining = req->count ? req->count : UINT64_MAX;
    j->size = req->size;
    j->payload = gw_xcalloc(1, j->size + 1);
    memset(j->payload, 'x', j->size);
    stream_pump(j);
}

static void stream_writable(struct grpc_call *call)
{
    struct diag_job *j = grpc_call_user(call);
    if (j != NULL)
        stream_pump(j);
}

/* ---- Echo (bidi) --------------------------------------------------------------- */

static void echo_message(struct grpc_call *call, void *msg)
{
    if (grpc_call_send(call, msg) == GRPC_SEND_FULL)
        grpc_call_pause_recv(call, true);
}

static void echo_writable(struct grpc_call *call)
{
    grpc_call_pause_recv(call, false);
}

static void finish_ok(struct grpc_call *call)
{
    grpc_call_finish(call, GRPC_STATUS_OK, NULL);
}

/* ---- Collect (client streaming) ------------------------------------------------ */

static void collect_message(struct grpc_call *call, void *msg)
{
    Openshell__Diag__V1__CollectSummary *sum = grpc_call_user(call);
    if (sum == NULL) {
        sum = grpc_call_alloc(call, sizeof(*sum));
        openshell__diag__v1__collect_summary__init(sum);
        grpc_call_set_user(call, sum);
    }
    sum->messages++;
    sum->bytes += ((Openshell__Diag__V1__EchoMessage *)msg)->payload.len;
}

static void collect_done(struct grpc_call *call)
{
    Openshell__Diag__V1__CollectSummary empty = OPENSHELL__DIAG__V1__COLLECT_SUMMARY__INIT;
    Openshell__Diag__V1__CollectSummary *sum = grpc_call_user(call);
    grpc_call_reply(call, sum ? &sum->base : &empty.base);
}

/* ---- Delay ---------------------------------------------------------------------- */

static void delay_fire(evutil_socket_t fd, short what, void *arg)
{
    struct diag_job *j = arg;
    uint64_t now = gw_clock_mono_us();
    if (now < j->due_us) {
        /* libevent may fire a timer up to a clock tick early: wait the rest. */
        uint64_t left = j->due_us - now;
        struct timeval tv = {(time_t)(left / 1000000), (suseconds_t)(left % 1000000)};
        evtimer_add(j->timer, &tv);
        return;
    }
    Openshell__Diag__V1__DelayResponse resp = OPENSHELL__DIAG__V1__DELAY_RESPONSE__INIT;
    resp.waited_ms = (uint32_t)((now - j->started_us) / 1000);
    struct grpc_call *call = j->call;
    job_free(j);
    grpc_call_reply(call, &resp.base);
}

static void delay_start(struct grpc_call *call, void *msg)
{
    Openshell__Diag__V1__DelayRequest *req = msg;
    struct diag_job *j = job_new(call);
    j->started_us = gw_clock_mono_us();
    j->due_us = j->started_us + (uint64_t)req->delay_ms * 1000;
    j->timer = evtimer_new(j->api->base, delay_fire, j);
    struct timeval tv = {req->delay_ms / 1000, (req->delay_ms % 1000) * 1000};
    evtimer_add(j->timer, &tv);
}

void api_diag_end_all(struct api *a)
{
    while (a->diag != NULL && a->diag->jobs != NULL) {
        struct diag_job *j = a->diag->jobs;
        struct grpc_call *call = j->call;
        job_free(j);
        grpc_call_finish(call, GRPC_STATUS_UNAVAILABLE, "server is shutting down");
    }
}

static const struct grpc_handler stream_h = {
    .on_message = stream_start, .on_cancel = job_cancel, .on_writable = stream_writable};
static const struct grpc_handler echo_h = {
    .on_message = echo_message, .on_half_close = finish_ok, .on_writable = echo_writable};
static const struct grpc_handler collect_h = {.on_message = collect_message,
                                              .on_half_close = collect_done};
static const struct grpc_handler delay_h = {.on_message = delay_start, .on_cancel = job_cancel};

const struct grpc_method api_diag_methods[] = {
    {"/openshell.diag.v1.Diagnostics/Stream", GRPC_SERVER_STREAM,
     &openshell__diag__v1__stream_request__descriptor,
     &openshell__diag__v1__stream_chunk__descriptor, &stream_h, NULL, API_AUTH_BEARER},
    {"/openshell.diag.v1.Diagnostics/Echo", GRPC_BIDI,
     &openshell__diag__v1__echo_message__descriptor, &openshell__diag__v1__echo_message__descriptor,
     &echo_h, NULL, API_AUTH_BEARER},
    {"/openshell.diag.v1.Diagnostics/Collect", GRPC_CLIENT_STREAM,
     &openshell__diag__v1__echo_message__descriptor,
     &openshell__diag__v1__collect_summary__descriptor, &collect_h, NULL, API_AUTH_BEARER},
    {"/openshell.diag.v1.Diagnostics/Delay", GRPC_UNARY,
     &openshell__diag__v1__delay_request__descriptor,
     &openshell__diag__v1__delay_response__descriptor, &delay_h, NULL, API_AUTH_BEARER},
    {.path = NULL},
};
