/* In-process client <-> server over a socketpair: the four call kinds,
 * deadlines, cancellation, oversize messages and backpressure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "base/base.h"
#include "diag.pb-c.h"
#include "http2/grpc.h"

struct fixture {
    struct event_base *base;
    struct grpc_server *srv;
    struct grpc_channel *ch;
    struct event *guard; /* bounds every loop run */
    /* client side results */
    int done_status;
    char done_msg[256];
    bool done;
    unsigned msgs;
    uint64_t bytes;
    uint64_t summary_msgs;
    /* server side observations */
    unsigned cancels;
    struct grpc_call *held; /* a call the server keeps open */
    unsigned produced;
    size_t max_pending;
    unsigned writable_calls;
    bool timed_out;
};

static struct fixture *F;

/* ---- server handlers ---------------------------------------------------- */

static void unary_echo(struct grpc_call *call, void *msg)
{
    grpc_call_reply(call, msg);
}

static void finish_with_message(struct grpc_call *call, void *msg)
{
    grpc_call_finish(call, GRPC_STATUS_FAILED_PRECONDITION, "bad thing: 100% \xe2\x9c\x93\nnext");
}

static void hold(struct grpc_call *call, void *msg)
{
    F->held = call;
}

static void count_cancel(struct grpc_call *call)
{
    F->cancels++;
    if (F->held == call)
        F->held = NULL;
}

static void stream_pump(struct grpc_call *call)
{
    Openshell__Diag__V1__StreamChunk c = OPENSHELL__DIAG__V1__STREAM_CHUNK__INIT;
    Openshell__Diag__V1__StreamRequest *req = grpc_call_user(call);
    static uint8_t payload[65536];
    c.payload.data = payload;
    c.payload.len = req->size;
    for (;;) {
        if (req->count && F->produced >= req->count) {
            grpc_call_finish(call, GRPC_STATUS_OK, NULL);
            return;
        }
        c.seq = F->produced++;
        int rv = grpc_call_send(call, &c.base);
        F->max_pending = GW_MAX(F->max_pending, grpc_call_out_pending(call));
        if (rv == GRPC_SEND_FULL)
            return;
        assert_true(rv == GRPC_SEND_OK);
    }
}

static void stream_start(struct grpc_call *call, void *msg)
{
    F->held = call;
    grpc_call_set_user(call, msg); /* valid until the call ends */
    stream_pump(call);
}

static void stream_writable(struct grpc_call *call)
{
    F->writable_calls++;
    stream_pump(call);
}

static void collect_msg(struct grpc_call *call, void *msg)
{
    uintptr_t n = (uintptr_t)grpc_call_user(call);
    grpc_call_set_user(call, (void *)(n + 1));
}

static void collect_done(struct grpc_call *call)
{
    Openshell__Diag__V1__CollectSummary s = OPENSHELL__DIAG__V1__COLLECT_SUMMARY__INIT;
    s.messages = (uintptr_t)grpc_call_user(call);
    grpc_call_reply(call, &s.base);
}

static void bidi_msg(struct grpc_call *call, void *msg)
{
    assert_true(grpc_call_send(call, msg) >= 0);
}

static void bidi_done(struct grpc_call *call)
{
    grpc_call_finish(call, GRPC_STATUS_OK, NULL);
}

static const struct grpc_handler h_unary = {.on_message = unary_echo};
static const struct grpc_handler h_fail = {.on_message = finish_with_message};
static const struct grpc_handler h_hold = {.on_message = hold, .on_cancel = count_cancel};
static const struct grpc_handler h_stream = {
    .on_message = stream_start, .on_cancel = count_cancel, .on_writable = stream_writable};
static const struct grpc_handler h_collect = {.on_message = collect_msg,
                                              .on_half_close = collect_done};
static const struct grpc_handler h_bidi = {.on_message = bidi_msg, .on_half_close = bidi_done};

#define ECHO &openshell__diag__v1__echo_message__descriptor
static const struct grpc_method methods[] = {
    {"/t.T/Unary", GRPC_UNARY, ECHO, ECHO, &h_unary, NULL, 0},
    {"/t.T/Fail", GRPC_UNARY, ECHO, ECHO, &h_fail, NULL, 0},
    {"/t.T/Hold", GRPC_UNARY, ECHO, ECHO, &h_hold, NULL, 0},
    {"/t.T/Stream", GRPC_SERVER_STREAM, &openshell__diag__v1__stream_request__descriptor,
     &openshell__diag__v1__stream_chunk__descriptor, &h_stream, NULL, 0},
    {"/t.T/Collect", GRPC_CLIENT_STREAM, ECHO, &openshell__diag__v1__collect_summary__descriptor,
     &h_collect, NULL, 0},
    {"/t.T/Bidi", GRPC_BIDI, ECHO, ECHO, &h_bidi, NULL, 0},
};

/* ---- client callbacks ------------------------------------------------------ */

static void on_msg(struct grpc_ccall *cc, void *msg, void *arg)
{
    F->msgs++;
    const ProtobufCMessage *m = msg;
    if (m->descriptor == &openshell__diag__v1__echo_message__descriptor)
        F->bytes += ((Openshell__Diag__V1__EchoMessage *)msg)->payload.len;
    else if (m->descriptor == &openshell__diag__v1__stream_chunk__descriptor)
        F->bytes += ((Openshell__Diag__V1__StreamChunk *)msg)->payload.len;
    else if (m->descriptor == &openshell__diag__v1__collect_summary__descriptor)
        F->summary_msgs = ((Openshell__Diag__V1__CollectSummary *)msg)->messages;
}

static void on_done(struct grpc_ccall *cc, int status, const char *message, void *arg)
{
    F->done = true;
    F->done_status = status;
    snprintf(F->done_msg, sizeof(F->done_msg), "%s", message);
}

static void guard_cb(evutil_socket_t fd, short what, void *arg)
{
    F->timed_out = true;
    event_base_loopbreak(F->base);
}

/* Runs the loop until |pred| holds (checked every iteration) or 5 s pass. */
static void run_until(bool (*pred)(void))
{
    struct timeval tv = {5, 0};
    evtimer_add(F->guard, &tv);
    while (!pred() && !F->timed_out)
        event_base_loop(F->base, EVLOOP_ONCE);
    evtimer_del(F->guard);
    assert_false(F->timed_out);
}

static bool is_done(void)
{
    return F->done;
}

static int setup(void **state)
{
    int sv[2];
    F = calloc(1, sizeof(*F));
    F->base = event_base_new();
    F->guard = evtimer_new(F->base, guard_cb, NULL);
    struct grpc_server_opts so = {.max_recv_msg_bytes = 1024 * 1024};
    F->srv = grpc_server_new(F->base, &so);
    for (size_t i = 0; i < GW_ARRAY_LEN(methods); i++)
        assert_int_equal(grpc_server_add_method(F->srv, &methods[i]), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    evutil_make_socket_nonblocking(sv[0]);
    evutil_make_socket_nonblocking(sv[1]);
    struct bufferevent *sb = bufferevent_socket_new(F->base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    struct bufferevent *cb = bufferevent_socket_new(F->base, sv[1], BEV_OPT_CLOSE_ON_FREE);
    assert_int_equal(grpc_server_attach(F->srv, sb, 1, "test", NULL, 0), 0);
    struct grpc_channel_opts co = {0};
    F->ch = grpc_channel_new(F->base, cb, &co);
    assert_non_null(F->ch);
    *state = F;
    return 0;
}

static int teardown(void **state)
{
    grpc_channel_close(F->ch);
    grpc_server_free(F->srv);
    event_free(F->guard);
    event_base_free(F->base);
    free(F);
    return 0;
}

static struct grpc_ccall *unary(const char *path, size_t payload, const char *const *md,
                                uint64_t timeout_ms)
{
    static uint8_t buf[2 * 1024 * 1024];
    Openshell__Diag__V1__EchoMessage m = OPENSHELL__DIAG__V1__ECHO_MESSAGE__INIT;
    m.payload.data = buf;
    m.payload.len = payload;
    return grpc_channel_unary(F->ch, path, &m.base, ECHO, md, timeout_ms, on_msg, on_done, NULL);
}

/* ---- tests --------------------------------------------------------------------- */

static void test_unary_roundtrip(void **state)
{
    assert_non_null(unary("/t.T/Unary", 1000, NULL, 0));
    run_until(is_done);
    assert_int_equal(F->done_status, GRPC_STATUS_OK);
    assert_int_equal(F->msgs, 1);
    assert_int_equal(F->bytes, 1000);
}

static void test_unary_error_message_percent_encoded(void **state)
{
    assert_non_null(unary("/t.T/Fail", 1, NULL, 0));
    run_until(is_done);
    assert_int_equal(F->done_status, GRPC_STATUS_FAILED_PRECONDITION);
    assert_string_equal(F->done_msg, "bad thing: 100% \xe2\x9c\x93\nnext");
    assert_int_equal(F->msgs, 0);
}

static void test_unknown_method_unimplemented(void **state)
{
    assert_non_null(unary("/t.T/Nope", 1, NULL, 0));
    run_until(is_done);
    assert_int_equal(F->done_status, GRPC_STATUS_UNIMPLEMENTED);
}

static void test_server_stream_delivers_all(void **state)
{
    Openshell__Diag__V1__StreamRequest r = OPENSHELL__DIAG__V1__STREAM_REQUEST__INIT;
    r.count = 2000;
    r.size = 100;
    assert_non_null(grpc_channel_unary(F->ch, "/t.T/Stream", &r.base,
                                       &openshell__diag__v1__stream_chunk__descriptor, NULL, 0,
                                       on_msg, on_done, NULL));
    run_until(is_done);
    assert_int_equal(F->done_status, GRPC_STATUS_OK);
    assert_int_equal(F->msgs, 2000);
    assert_int_equal(F->bytes, 200000);
}

static void test_client_stream_counts(void **state)
{
    struct grpc_ccall *cc =
        grpc_channel_start(F->ch, "/t.T/Collect", &openshell__diag__v1__collect_summary__descriptor,
                           NULL, 0, on_msg, on_done, NULL);
    Openshell__Diag__V1__EchoMessage m = OPENSHELL__DIAG__V1__ECHO_MESSAGE__INIT;
    for (int i = 0; i < 300; i++)
        assert_true(grpc_ccall_send(cc, &m.base) >= 0);
    grpc_ccall_close_send(cc);
    run_until(is_done);
    assert_int_equal(F->done_status, GRPC_STATUS_OK);
    assert_int_equal(F->summary_msgs, 300);
}

static bool got_50(void)
{
    return F->msgs >= 50;
}

static void test_bidi_echoes_then_half_close(void **state)
{
    struct grpc_ccall *cc =
        grpc_channel_start(F->ch, "/t.T/Bidi", ECHO, NULL, 0, on_msg, on_done, NULL);
    uint8_t p[10] = {0};
    Openshell__Diag__V1__EchoMessage m = OPENSHELL__DIAG__V1__ECHO_MESSAGE__INIT;
    m.payload.data = p;
    m.payload.len = sizeof(p);
    for (int i = 0; i < 50; i++)
        assert_true(grpc_ccall_send(cc, &m.base) >= 0);
    run_until(got_50);
    assert_false(F->done);
    grpc_ccall_close_send(cc);
    run_until(is_done);
    assert_int_equal(F->done_status, GRPC_STATUS_OK);
    assert_int_equal(F->bytes, 500);
}

static bool cancelled(void)
{
    return F->cancels > 0;
}

static void test_server_enforces_grpc_timeout(void **state)
{
    /* No client-side deadline: only the server's timer can end this call. */
    static const char *const md[] = {"grpc-timeout", "50m", NULL};
    assert_non_null(unary("/t.T/Hold", 1, md, 0));
    run_until(is_done);
    assert_int_equal(F->done_status, GRPC_STATUS_DEADLINE_EXCEEDED);
    run_until(cancelled);
    assert_null(F->held);
}

static void test_malformed_timeout_rejected(void **state)
{
    static const char *const md[] = {"grpc-timeout", "soon", NULL};
    assert_non_null(unary("/t.T/Unary", 1, md, 0));
    run_until(is_done);
    assert_int_equal(F->done_status, GRPC_STATUS_INTERNAL);
}

static void test_client_deadline(void **state)
{
    assert_non_null(unary("/t.T/Hold", 1, NULL, 30));
    run_until(is_done);
    assert_int_equal(F->done_status, GRPC_STATUS_DEADLINE_EXCEEDED);
}

static bool held(void)
{
    return F->held != NULL;
}

static void test_client_cancel_reaches_handler(void **state)
{
    struct grpc_ccall *cc = unary("/t.T/Hold", 1, NULL, 0);
    run_until(held);
    grpc_ccall_cancel(cc);
    run_until(cancelled);
    assert_null(F->held);
    assert_false(F->done); /* a cancelled client call reports nothing */
}

static void test_oversize_request_resource_exhausted(void **state)
{
    assert_non_null(unary("/t.T/Unary", 1024 * 1024 + 10, NULL, 0));
    run_until(is_done);
    assert_int_equal(F->done_status, GRPC_STATUS_RESOURCE_EXHAUSTED);
    /* The connection still serves. */
    F->done = false;
    F->msgs = 0;
    assert_non_null(unary("/t.T/Unary", 10, NULL, 0));
    run_until(is_done);
    assert_int_equal(F->done_status, GRPC_STATUS_OK);
}

static void test_decode_bomb_refused_not_buffered(void **state)
{
    /* 600 KB of "field 7 = 0" pairs: small on the wire, but each unknown
     * field costs protobuf-c an allocation. The decoding budget (2x the
     * 1 MiB limit) refuses it instead of pinning ~15 MB per call. */
    static uint8_t bomb[600000];
    for (size_t i = 0; i < sizeof(bomb); i += 2) {
        bomb[i] = 0x38;
        bomb[i + 1] = 0x00;
    }
    struct grpc_ccall *cc =
        grpc_channel_start(F->ch, "/t.T/Unary", ECHO, NULL, 0, on_msg, on_done, NULL);
    assert_true(grpc_ccall_send_raw(cc, bomb, sizeof(bomb)) >= 0);
    grpc_ccall_close_send(cc);
    run_until(is_done);
    assert_int_equal(F->done_status, GRPC_STATUS_RESOURCE_EXHAUSTED);
}

static bool producer_blocked(void)
{
    return F->produced > 0 && F->held != NULL && grpc_call_congested(F->held);
}

static bool got_much_more(void)
{
    return F->writable_calls > 0 && F->msgs > 200;
}

static void test_backpressure_bounds_buffering(void **state)
{
    Openshell__Diag__V1__StreamRequest r = OPENSHELL__DIAG__V1__STREAM_REQUEST__INIT;
    r.count = 0; /* infinite */
    r.size = 65536;
    struct grpc_ccall *cc = grpc_channel_unary(F->ch, "/t.T/Stream", &r.base,
                                               &openshell__diag__v1__stream_chunk__descriptor, NULL,
                                               0, on_msg, on_done, NULL);
    grpc_ccall_pause_recv(cc, true);
    run_until(producer_blocked);
    /* Let the loop spin: a paused reader must not make the server produce. */
    for (int i = 0; i < 200; i++)
        event_base_loop(F->base, EVLOOP_NONBLOCK);
    unsigned produced = F->produced;
    for (int i = 0; i < 200; i++)
        event_base_loop(F->base, EVLOOP_NONBLOCK);
    assert_int_equal(F->produced, produced);
    /* Stream window (1 MiB) + connection buffers + per-call high water: a
     * few MiB at most, never unbounded. */
    assert_true((uint64_t)produced * 65536 < 8u * 1024 * 1024);
    assert_true(F->max_pending <= 256 * 1024 + 65536 + 5);
    grpc_ccall_pause_recv(cc, false);
    run_until(got_much_more);
    grpc_ccall_cancel(cc);
    run_until(cancelled);
}

/* A receiver paused while the server finishes: every message is still
 * delivered before on_done (the trailers must not overtake held data). */
static void test_paused_stream_end_delivers_all(void **state)
{
    Openshell__Diag__V1__StreamRequest r = OPENSHELL__DIAG__V1__STREAM_REQUEST__INIT;
    r.count = 8;
    r.size = 65536;
    struct grpc_ccall *cc = grpc_channel_unary(F->ch, "/t.T/Stream", &r.base,
                                               &openshell__diag__v1__stream_chunk__descriptor, NULL,
                                               0, on_msg, on_done, NULL);
    grpc_ccall_pause_recv(cc, true);
    for (int i = 0; i < 400 && !F->done; i++)
        event_base_loop(F->base, EVLOOP_NONBLOCK);
    if (!F->done)
        grpc_ccall_pause_recv(cc, false);
    run_until(is_done);
    assert_int_equal(F->done_status, GRPC_STATUS_OK);
    assert_int_equal(F->msgs, 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_unary_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unary_error_message_percent_encoded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_method_unimplemented, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_stream_delivers_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_stream_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bidi_echoes_then_half_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_enforces_grpc_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_timeout_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_cancel_reaches_handler, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversize_request_resource_exhausted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_decode_bomb_refused_not_buffered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure_bounds_buffering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_paused_stream_end_delivers_all, setup, teardown),
    };
    log_set_level(LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
