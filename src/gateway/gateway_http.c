/* Plain-HTTP health and metrics listeners (separate ports, as upstream:
 * health routes only on the health port, /metrics only on the metrics port).
 * The metrics listener also owns the gateway's metric registry: the
 * families, the gRPC call observer that feeds them and the callbacks that
 * read the other modules' numbers at scrape time. */
#include "gateway/gateway.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "api/api.h"
#include "config.h"
#include "drivers/driver.h"
#include "events/events.h"
#include "http2/grpc.h"
#include "metrics/metrics.h"
#include "store/store.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define UNKNOWN_METHOD       "unknown" /* label of paths not in the method table */
#define HANDLED_SERIES_MAX   4096      /* (128 methods + unknown) x 17 codes, with room */
#define HANDLING_SERIES_MAX  256       /* methods */

/* Latency buckets in seconds: 0.5 ms (in-memory replies) to 10 s (driver
 * calls with slow backends). */
static const double latency_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                        0.1,    0.25,  0.5,    1,     2.5,  5,     10};

struct gateway_http {
    struct evhttp *http;
    uint16_t port;
    bool metrics;
    gateway_http_status_fn fn;
    void *arg;
    /* metrics listener only */
    struct metrics *reg;
    struct metrics_family *handled;  /* openshell_grpc_server_handled_total{method,code} */
    struct metrics_family *handling; /* openshell_grpc_server_handling_seconds{method} */
    struct gateway_http_status st;   /* sources, refreshed at each scrape */
    double start_time_s;             /* process start, seconds since the epoch; 0 = unknown */
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

/* ---- metrics: process numbers (read from /proc at scrape time) ----------------- */

/* Process start from /proc/self/stat (field 22, clock ticks after boot)
 * and the boot time in /proc/stat; 0 when either cannot be read. */
static double process_start_time(void)
{
    char buf[1024], line[256];
    unsigned long long start_ticks = 0, btime = 0;
    FILE *f = fopen("/proc/self/stat", "re");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (p == NULL || sscanf(p + 2,
                            "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d "
                            "%*d %*d %*d %*d %llu",
                            &start_ticks) != 1)
        return 0;
    f = fopen("/proc/stat", "re");
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "btime %llu", &btime) == 1)
            break;
    fclose(f);
    long hz = sysconf(_SC_CLK_TCK);
    if (btime == 0 || hz <= 0)
        return 0;
    return (double)btime + (double)start_ticks / (double)hz;
}

static void collect_start_time(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    if (h->start_time_s > 0)
        metrics_sink_add(sink, NULL, h->start_time_s);
}

/* Field |idx| (0: size, 1: resident) of /proc/self/statm, in bytes. */
static bool read_statm(int idx, double *out)
{
    unsigned long long v[2];
    FILE *f = fopen("/proc/self/statm", "re");
    if (f == NULL)
        return false;
    int n = fscanf(f, "%llu %llu", &v[0], &v[1]);
    fclose(f);
    if (n != 2)
        return false;
    *out = (double)v[idx] * (double)sysconf(_SC_PAGESIZE);
    return true;
}

static void collect_resident(struct metrics_sink *sink, void *arg)
{
    double v;
    if (read_statm(1, &v))
        metrics_sink_add(sink, NULL, v);
}

static void collect_virtual(struct metrics_sink *sink, void *arg)
{
    double v;
    if (read_statm(0, &v))
        metrics_sink_add(sink, NULL, v);
}

static void collect_open_fds(struct metrics_sink *sink, void *arg)
{
    DIR *d = opendir("/proc/self/fd");
    double n = 0;
    if (d == NULL)
        return;
    for (struct dirent *e = readdir(d); e != NULL; e = readdir(d))
        n += e->d_name[0] != '.';
    closedir(d);
    metrics_sink_add(sink, NULL, n - 1); /* not the directory's own descriptor */
}

static void collect_max_fds(struct metrics_sink *sink, void *arg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        metrics_sink_add(sink, NULL, (double)rl.rlim_cur);
}

static void collect_cpu(struct metrics_sink *sink, void *arg)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return;
    metrics_sink_add(sink, NULL,
                     (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                         (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
}

/* ---- metrics: the gateway's own numbers ------------------------------------------- */

static void collect_build_info(struct metrics_sink *sink, void *arg)
{
    const char *v[] = {PACKAGE_VERSION};
    metrics_sink_add(sink, v, 1);
}

static void collect_up(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    metrics_sink_add(sink, NULL, h->st.serving ? 1 : 0);
}

static void collect_connections(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    metrics_sink_add(sink, NULL, h->st.connections);
}

static void collect_active_calls(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    metrics_sink_add(sink, NULL, h->st.active_calls);
}

static void collect_sessions(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    if (h->st.api != NULL)
        metrics_sink_add(sink, NULL, api_sessions_live(h->st.api));
}

static void collect_relays(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    if (h->st.api != NULL)
        metrics_sink_add(sink, NULL, api_relays_open(h->st.api));
}

static void collect_forwards(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    if (h->st.api != NULL)
        metrics_sink_add(sink, NULL, api_forwards_live(h->st.api));
}

static void collect_subscribers(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    if (h->st.hub != NULL)
        metrics_sink_add(sink, NULL, events_hub_subscribers(h->st.hub));
}

static void collect_lag(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    if (h->st.hub != NULL)
        metrics_sink_add(sink, NULL, (double)events_hub_max_lag(h->st.hub));
}

static void collect_head(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    if (h->st.hub != NULL)
        metrics_sink_add(sink, NULL, (double)events_hub_head(h->st.hub));
}

/* One series per method and status that occurred (zeros are left out). */
static void collect_driver_calls(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    if (h->st.driver == NULL)
        return;
    for (int m = 0; m < DRIVER_METHOD_COUNT; m++) {
        for (int code = 0; code <= GRPC_STATUS_UNAUTHENTICATED; code++) {
            uint64_t n = driver_call_count(h->st.driver, m, code);
            const char *v[] = {driver_method_path(m), grpc_status_name(code)};
            if (n > 0)
                metrics_sink_add(sink, v, (double)n);
        }
    }
}

/* Calls that did not end with OK, per method that was called at all. */
static void collect_driver_errors(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    if (h->st.driver == NULL)
        return;
    for (int m = 0; m < DRIVER_METHOD_COUNT; m++) {
        uint64_t all = 0, errors = 0;
        for (int code = 0; code <= GRPC_STATUS_UNAUTHENTICATED; code++) {
            uint64_t n = driver_call_count(h->st.driver, m, code);
            all += n;
            errors += code != GRPC_STATUS_OK ? n : 0;
        }
        const char *v[] = {driver_method_path(m)};
        if (all > 0)
            metrics_sink_add(sink, v, (double)errors);
    }
}

static void collect_pool_connections(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    if (h->st.store == NULL)
        return;
    unsigned size = store_pool_size(h->st.store), busy = store_pool_busy(h->st.store);
    const char *vb[] = {"busy"}, *vi[] = {"idle"};
    metrics_sink_add(sink, vb, busy);
    metrics_sink_add(sink, vi, size > busy ? size - busy : 0);
}

static void collect_pool_size(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    if (h->st.store != NULL)
        metrics_sink_add(sink, NULL, store_pool_size(h->st.store));
}

static void collect_pool_waiting(struct metrics_sink *sink, void *arg)
{
    const struct gateway_http *h = arg;
    if (h->st.store != NULL)
        metrics_sink_add(sink, NULL, store_queue_len(h->st.store));
}

/* ---- metrics: the registry ------------------------------------------------------------ */

struct gauge_def {
    const char *name;
    const char *help;
    enum metrics_type type;
    const char *label; /* one label name, or NULL */
    metrics_collect_fn fn;
};

/* Families read at scrape time, in output order. */
static const struct gauge_def collected[] = {
    {"openshell_build_info", "Always 1; the version label is the gateway's version.", METRICS_GAUGE,
     "version", collect_build_info},
    {"openshell_gateway_up", "1 while serving, 0 while starting or draining.", METRICS_GAUGE, NULL,
     collect_up},
    {"openshell_grpc_connections", "Open gRPC (HTTP/2) connections.", METRICS_GAUGE, NULL,
     collect_connections},
    {"openshell_grpc_active_calls", "gRPC calls in flight.", METRICS_GAUGE, NULL,
     collect_active_calls},
    {"openshell_supervisor_sessions", "Live supervisor sessions (ConnectSupervisor streams).",
     METRICS_GAUGE, NULL, collect_sessions},
    {"openshell_relays_open", "Open relay channels between clients and sandboxes.", METRICS_GAUGE,
     NULL, collect_relays},
    {"openshell_tcp_forwards_open", "Live ForwardTcp calls.", METRICS_GAUGE, NULL,
     collect_forwards},
    {"openshell_event_subscribers", "Lifecycle event subscriptions (Events/Subscribe streams).",
     METRICS_GAUGE, NULL, collect_subscribers},
    {"openshell_event_subscriber_lag_events",
     "Events the slowest subscriber is behind the newest event this gateway fetched "
     "(0 without subscribers).",
     METRICS_GAUGE, NULL, collect_lag},
    {"openshell_events_head_sequence", "Sequence number of the newest lifecycle event fetched.",
     METRICS_GAUGE, NULL, collect_head},
    {"openshell_driver_calls_total",
     "compute.v1 calls made by the gateway's driver client, by method and final status.",
     METRICS_COUNTER, NULL, collect_driver_calls},
    {"openshell_driver_call_errors_total",
     "compute.v1 calls that did not end with OK (including local failures: driver not "
     "connected, deadline, cancellation).",
     METRICS_COUNTER, "method", collect_driver_errors},
    {"openshell_db_pool_connections",
     "PostgreSQL pool connections by state: busy (queries in flight) or idle.", METRICS_GAUGE,
     "state", collect_pool_connections},
    {"openshell_db_pool_size", "PostgreSQL pool connections configured.", METRICS_GAUGE, NULL,
     collect_pool_size},
    {"openshell_db_pool_waiting", "Queries waiting for a free pool connection.", METRICS_GAUGE,
     NULL, collect_pool_waiting},
    {"process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
     METRICS_GAUGE, NULL, collect_start_time},
    {"process_resident_memory_bytes", "Resident memory size in bytes.", METRICS_GAUGE, NULL,
     collect_resident},
    {"process_virtual_memory_bytes", "Virtual memory size in bytes.", METRICS_GAUGE, NULL,
     collect_virtual},
    {"process_open_fds", "Number of open file descriptors.", METRICS_GAUGE, NULL, collect_open_fds},
    {"process_max_fds", "Maximum number of open file descriptors.", METRICS_GAUGE, NULL,
     collect_max_fds},
    {"process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
     METRICS_COUNTER, NULL, collect_cpu},
};

static void registry_build(struct gateway_http *h)
{
    static const char *const method_code[] = {"method", "code", NULL};
    static const char *const method[] = {"method", NULL};
    static const char *const driver_labels[] = {"method", "code", NULL};

    h->reg = metrics_new();
    h->start_time_s = process_start_time();
    h->handled = metrics_counter_new(h->reg, "openshell_grpc_server_handled_total",
                                     "gRPC calls finished by the gateway, by method path "
                                     "(\"unknown\" for paths it does not serve) and status.",
                                     method_code, HANDLED_SERIES_MAX);
    h->handling = metrics_histogram_new(
        h->reg, "openshell_grpc_server_handling_seconds",
        "Time from a gRPC call's request headers to the end of its stream, by method.", method,
        latency_bounds, GW_ARRAY_LEN(latency_bounds), HANDLING_SERIES_MAX);
    GW_ASSERT(h->handled != NULL && h->handling != NULL);
    for (size_t i = 0; i < GW_ARRAY_LEN(collected); i++) {
        const struct gauge_def *d = &collected[i];
        const char *const one[] = {d->label, NULL};
        const char *const *labels = d->label ? one : NULL;
        if (d->fn == collect_driver_calls)
            labels = driver_labels;
        struct metrics_family *f =
            metrics_collector_new(h->reg, d->name, d->help, d->type, labels, d->fn, h);
        GW_ASSERT(f != NULL);
    }
}

void gateway_http_observe_call(const struct grpc_method *m, int status, uint64_t dur_us, void *arg)
{
    struct gateway_http *h = arg;
    const char *v[] = {m != NULL ? m->path : UNKNOWN_METHOD, grpc_status_name(status)};
    metrics_counter_add(metrics_series(h->handled, v), 1);
    metrics_histogram_observe(metrics_series(h->handling, v), (double)dur_us / 1e6);
}

static void serve_metrics(struct gateway_http *h, struct evhttp_request *req)
{
    struct gw_buf b = {0};
    memset(&h->st, 0, sizeof(h->st));
    h->fn(&h->st, h->arg);
    metrics_render(h->reg, &b);
    memset(&h->st, 0, sizeof(h->st)); /* the sources may go away before the next scrape */
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, b.data, b.len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", METRICS_CONTENT_TYPE);
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
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
    if (metrics)
        registry_build(h);
    int fd = bind_numeric(addr, port, &h->port);
    if (fd < 0) {
        log_error("gateway.http_listen_failed", LF_STR("addr", addr), LF_UINT("port", port),
                  LF_STR("error", strerror(errno)));
        metrics_free(h->reg);
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
        metrics_free(h->reg);
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
    metrics_free(h->reg);
    free(h);
}
