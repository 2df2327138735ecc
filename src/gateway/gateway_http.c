/* Plain-HTTP health and metrics listeners (separate ports, as upstream:
 * health routes only on the health port, /metrics only on the metrics port). */
#include "gateway/gateway.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/http.h>

struct gateway_http {
    struct evhttp *http;
    uint16_t port;
    bool metrics;
    gateway_http_status_fn fn;
    void *arg;
};

/* Binds without any name resolution: the address is numeric. */
static int bind_numeric(const char *addr, uint16_t port, uint16_t *bound)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, addr, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons(port);
        len = sizeof(*in4);
    } else if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        len = sizeof(*in6);
    } else {
        errno = EINVAL;
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 128) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    len = sizeof(ss);
    getsockname(fd, (struct sockaddr *)&ss, &len);
    *bound = ntohs(ss.ss_family == AF_INET ? in4->sin_port : in6->sin6_port);
    return fd;
}

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *body)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, strlen(body));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; charset=utf-8");
    evhttp_send_reply(req, code, reason, b);
    evbuffer_free(b);
}

static void serve_metrics(struct gateway_http *h, struct evhttp_request *req)
{
    struct gateway_http_status st = {0};
    h->fn(&st, h->arg);
    struct gw_buf b = {0};
    gw_buf_appendf(&b,
                   "# HELP openshell_gateway_up 1 while serving, 0 while starting or draining.\n"
                   "# TYPE openshell_gateway_up gauge\n"
                   "openshell_gateway_up %d\n"
                   "# HELP openshell_grpc_connections Open gRPC connections.\n"
                   "# TYPE openshell_grpc_connections gauge\n"
                   "openshell_grpc_connections %u\n"
                   "# HELP openshell_grpc_active_calls gRPC calls in flight.\n"
                   "# TYPE openshell_grpc_active_calls gauge\n"
                   "openshell_grpc_active_calls %u\n",
                   st.serving ? 1 : 0, st.connections, st.active_calls);
    reply_text(req, 200, "OK", gw_buf_cstr(&b));
    gw_buf_free(&b);
}

static void handle(struct evhttp_request *req, void *arg)
{
    struct gateway_http *h = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    struct gateway_http_status st = {0};
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET &&
        evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        reply_text(req, 405, "Method Not Allowed", "method not allowed\n");
        return;
    }
    if (path == NULL)
        path = "/";
    if (!h->metrics && (strcmp(path, "/healthz") == 0 || strcmp(path, "/health") == 0)) {
        reply_text(req, 200, "OK", "ok\n");
    } else if (!h->metrics && strcmp(path, "/readyz") == 0) {
        h->fn(&st, h->arg);
        if (st.serving)
            reply_text(req, 200, "OK", "ready\n");
        else
            reply_text(req, 503, "Service Unavailable", "not ready\n");
    } else if (h->metrics && strcmp(path, "/metrics") == 0) {
        serve_metrics(h, req);
    } else {
        reply_text(req, 404, "Not Found", "not found\n");
    }
}

struct gateway_http *gateway_http_new(struct event_base *base, const char *addr, uint16_t port,
                                      bool metrics, gateway_http_status_fn fn, void *arg)
{
    struct gateway_http *h = gw_xcalloc(1, sizeof(*h));
    h->metrics = metrics;
    h->fn = fn;
    h->arg = arg;
    int fd = bind_numeric(addr, port, &h->port);
    if (fd < 0) {
        log_error("gateway.http_listen_failed", LF_STR("addr", addr), LF_UINT("port", port),
                  LF_STR("error", strerror(errno)));
        free(h);
        return NULL;
    }
    h->http = evhttp_new(base);
    evhttp_set_timeout(h->http, 10);
    evhttp_set_max_headers_size(h->http, 8192);
    evhttp_set_max_body_size(h->http, 0);
    evhttp_set_gencb(h->http, handle, h);
    if (evhttp_accept_socket_with_handle(h->http, fd) == NULL) {
        close(fd);
        evhttp_free(h->http);
        free(h);
        return NULL;
    }
    return h;
}

uint16_t gateway_http_port(const struct gateway_http *h)
{
    return h->port;
}

void gateway_http_free(struct gateway_http *h)
{
    if (h == NULL)
        return;
    evhttp_free(h->http);
    free(h);
}
