/* libFuzzer target for the server's request path: HTTP/2 framing (nghttp2
 * and src/http2/h2_conn.c), gRPC calls (grpc_server.c) and the real API
 * handlers, Diagnostics included.
 *
 * Each input is a run of raw HTTP/2 frames. A fresh event base, gRPC server
 * and API are created per input, one end of a socketpair is attached as a
 * connection, and the other end plays the client: it sends the connection
 * preface and an empty SETTINGS frame, then the input, reading and
 * discarding whatever the server answers. The loop runs a bounded number of
 * non-blocking iterations, then the client hangs up and everything is torn
 * down. ASan/UBSan and LeakSanitizer catch the rest.
 *
 * Build with -DFUZZ_VERBOSE to log every call (grpc.call ... status=N) to
 * stderr when checking what a seed input does. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/event.h>

#include "api/api.h"
#include "http2/grpc.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define LOOPS_WRITING 64 /* iterations allowed to deliver the input */
#define LOOPS_AFTER   16 /* iterations to let the server answer */
#define LOOPS_CLOSING 64 /* iterations for the server to notice the hang-up */
#define READ_CHUNK    65536

/* Client connection preface (RFC 9113 §3.4) and an empty SETTINGS frame. */
static const uint8_t preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                                 "\x00\x00\x00\x04\x00\x00\x00\x00\x00";

struct client {
    int fd;
    const uint8_t *pending[2];
    size_t pending_len[2];
    unsigned cur;
    bool failed; /* the server hung up: stop writing */
};

static void check(int ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* The gateway ignores SIGPIPE; a write to a hung-up peer must not kill us. */
    signal(SIGPIPE, SIG_IGN);
#ifdef FUZZ_VERBOSE
    log_set_level(LOG_DEBUG);
#else
    /* Render debug lines too (their fields come from peer input), to nowhere. */
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    check(fd >= 0);
    log_set_fd(fd);
    log_set_level(LOG_DEBUG);
#endif
    return 0;
}

static void client_write(struct client *cl)
{
    while (!cl->failed && cl->cur < 2) {
        if (cl->pending_len[cl->cur] == 0) {
            cl->cur++;
            continue;
        }
        ssize_t n = write(cl->fd, cl->pending[cl->cur], cl->pending_len[cl->cur]);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                cl->failed = true;
            return;
        }
        cl->pending[cl->cur] += n;
        cl->pending_len[cl->cur] -= (size_t)n;
    }
}

static bool client_done_writing(const struct client *cl)
{
    return cl->failed || cl->cur >= 2;
}

/* Reads and discards the server's output; false once the server hung up. */
static bool client_drain(struct client *cl)
{
    static uint8_t buf[READ_CHUNK];
    for (;;) {
        ssize_t n = read(cl->fd, buf, sizeof(buf));
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return true;
        return false;
    }
}

static void run_once(struct event_base *base)
{
    gw_time_update();
    check(event_base_loop(base, EVLOOP_NONBLOCK) != -1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fds[2];
    struct grpc_server_opts sopts = {0};
    struct api_opts aopts = {.version = "fuzz", .enable_diagnostics = true};

    struct event_base *base = event_base_new();
    check(base != NULL);
    struct grpc_server *srv = grpc_server_new(base, &sopts);
    struct api *api = api_new(base, srv, &aopts);
    check(api != NULL);
    check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0);
    struct bufferevent *bev = bufferevent_socket_new(base, fds[0], BEV_OPT_CLOSE_ON_FREE);
    check(bev != NULL);
    check(grpc_server_attach(srv, bev, 1, "fuzz", NULL, 0) == 0);

    struct client cl = {.fd = fds[1]};
    cl.pending[0] = preface;
    cl.pending_len[0] = sizeof(preface) - 1;
    cl.pending[1] = data;
    cl.pending_len[1] = size;

    bool open = true;
    for (int i = 0; i < LOOPS_WRITING && open && !client_done_writing(&cl); i++) {
        client_write(&cl);
        run_once(base);
        open = client_drain(&cl);
    }
    for (int i = 0; i < LOOPS_AFTER && open && grpc_server_connections(srv) > 0; i++) {
        run_once(base);
        open = client_drain(&cl);
    }

    /* The client hangs up; the server must notice and free the connection. */
    close(fds[1]);
    for (int i = 0; i < LOOPS_CLOSING && grpc_server_connections(srv) > 0; i++)
        run_once(base);
    grpc_server_close_all(srv);
    check(grpc_server_connections(srv) == 0);
    check(grpc_server_active_calls(srv) == 0);
    grpc_server_free(srv);
    api_free(api);
    event_base_free(base);
    return 0;
}
