/* openshell-gateway: startup, reload, graceful shutdown. */
#include "gateway/gateway.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "api/api.h"
#include "config.h"
#include "config/config.h"
#include "drivers/driver.h"
#include "events/events.h"
#include "http2/grpc.h"
#include "jwt/jwt.h"
#include "reactor/reactor.h"
#include "store/store.h"

/* Gateway states, forward only. */
enum gw_state {
    GW_STARTING, /* database coming up; no listeners yet */
    GW_SERVING,
    GW_DRAINING, /* first SIGTERM/SIGINT: no new connections, calls finish */
    GW_STOPPING, /* calls done: closing the database, stopping the embedded server */
    GW_STOPPED,
};

struct gateway {
    struct config cfg;
    int argc;
    char **argv;
    struct reactor *r;
    struct grpc_server *srv;
    struct api *api;
    struct ssl_ctx_st *tls;
    struct reactor_listener *tcp;
    struct reactor_listener *unix_l;
    struct reactor_listener *sup_l; /* supervisors of local sandboxes */
    struct jwt_keys *jwt;
    char *jwt_issuer;
    struct gateway_http *health_http;
    struct gateway_http *metrics_http;
    struct reactor_timer *drain_timer;
    struct reactor_timer *watchdog_timer;
    struct store *store;
    struct store_embedded *embedded;
    struct events_hub *hub;
    struct driver *driver;
    struct driver_plan plan;
    bool store_ready;        /* the database came up at least once */
    bool driver_ready;       /* the compute driver answered GetCapabilities at least once */
    unsigned stopping_parts; /* driver and embedded database still stopping */
    enum gw_state state;
    uint64_t drain_deadline_us;
    int exit_code;
};

static void gw_set_state(struct gateway *g, enum gw_state s)
{
    static const char *const names[] = {"starting", "serving", "draining", "stopping", "stopped"};
    GW_ASSERT(s >= g->state);
    log_debug("gateway.state", LF_STR("from", names[g->state]), LF_STR("to", names[s]));
    g->state = s;
}

static void on_accept(struct bufferevent *bev, const struct reactor_peer *peer, void *arg)
{
    struct gateway *g = arg;
    struct api_conn_identity id = {.tls = peer->tls, .client_verified = peer->client_verified};
    snprintf(id.client_cn, sizeof(id.client_cn), "%s", peer->client_cn);
    snprintf(id.client_ou, sizeof(id.client_ou), "%s", peer->client_ou);
    if (grpc_server_attach(g->srv, bev, peer->conn_id, peer->addr, &id, sizeof(id)) != 0)
        log_warn("gateway.attach_failed", LF_STR("peer", peer->addr));
}

static void http_status(struct gateway_http_status *out, void *arg)
{
    struct gateway *g = arg;
    out->serving = g->state == GW_SERVING;
    out->connections = grpc_server_connections(g->srv);
    out->active_calls = grpc_server_active_calls(g->srv);
    out->api = g->api;
    out->store = g->store;
    out->hub = g->hub;
    out->driver = g->driver;
}

/* ---- TLS ---------------------------------------------------------------- */

static struct ssl_ctx_st *load_tls(const struct config *c, char *err, size_t errlen)
{
    if (c->tls_cert == NULL || c->tls_key == NULL) {
        snprintf(err, errlen,
                 "TLS is on but no certificate is configured: pass --tls-cert and --tls-key "
                 "(or --disable-tls for plaintext h2c on a trusted network)");
        return NULL;
    }
    return reactor_tls_server_ctx(c->tls_cert, c->tls_key, c->tls_client_ca,
                                  c->tls_require_client_cert, err, errlen);
}

/* ---- shutdown ---------------------------------------------------------------- */

static void stop_listeners(struct gateway *g)
{
    if (g->tcp)
        reactor_listener_disable(g->tcp);
    if (g->unix_l)
        reactor_listener_disable(g->unix_l);
    if (g->sup_l)
        reactor_listener_disable(g->sup_l);
}

static void backend_part_stopped(struct gateway *g)
{
    GW_ASSERT(g->stopping_parts > 0);
    if (--g->stopping_parts > 0)
        return;
    gw_set_state(g, GW_STOPPED);
    reactor_stop(g->r);
}

static void embedded_stopped(void *arg)
{
    struct gateway *g = arg;
    g->embedded = NULL;
    backend_part_stopped(g);
}

static void driver_stopped(void *arg)
{
    backend_part_stopped(arg);
}

/* Second half of stop_backend(), once the compute side let go of the
 * sandboxes it had to stop. */
static void backend_close(void *arg)
{
    struct gateway *g = arg;
    if (g->driver != NULL) {
        struct driver *d = g->driver;
        g->driver = NULL;
        g->stopping_parts++;
        /* Lifecycle work still in flight fails its driver calls now and
         * writes its outcome while the store is still open. */
        driver_stop(d, 10000, driver_stopped, g);
    }
    api_set_backend(g->api, NULL, NULL);
    store_free(g->store);
    g->store = NULL;
    events_hub_free(g->hub);
    g->hub = NULL;
    if (g->embedded != NULL) {
        g->stopping_parts++;
        store_embedded_stop(g->embedded, 15000, embedded_stopped, g);
    }
    backend_part_stopped(g);
}

/* Calls are done: stop the sandboxes a lifecycle-managing driver leaves to
 * us, stop the compute driver (a managed one is signalled and waited for),
 * close the database side, then stop the embedded server. Every step is
 * asynchronous: the loop runs until they finished. */
static void stop_backend(struct gateway *g)
{
    if (g->state >= GW_STOPPING)
        return;
    gw_set_state(g, GW_STOPPING);
    grpc_server_close_all(g->srv);
    api_end_streams(g->api);
    g->stopping_parts = 1; /* held until backend_close() is done */
    api_compute_shutdown(g->api, backend_close, g);
}

static void drain_tick(struct reactor_timer *t, void *arg)
{
    struct gateway *g = arg;
    unsigned calls = grpc_server_active_calls(g->srv);
    unsigned conns = grpc_server_connections(g->srv);
    if (calls == 0 && conns == 0) {
        log_info("gateway.drained");
    } else if (gw_clock_mono_us() >= g->drain_deadline_us) {
        log_warn("gateway.drain_deadline", LF_UINT("calls", calls), LF_UINT("connections", conns));
    } else {
        return;
    }
    reactor_timer_disarm(t);
    stop_backend(g);
}

static void begin_drain(struct gateway *g)
{
    gw_set_state(g, GW_DRAINING);
    if (reactor_sd_notify(g->r, "STOPPING=1") != 0)
        log_debug("gateway.notify_failed");
    api_set_serving(g->api, false);
    stop_listeners(g);
    grpc_server_shutdown(g->srv);
    api_end_streams(g->api);
    g->drain_deadline_us = gw_clock_mono_us() + (uint64_t)g->cfg.shutdown_grace_ms * 1000;
    g->drain_timer = reactor_timer_new(g->r, drain_tick, g);
    reactor_timer_arm_periodic(g->drain_timer, 25);
}

static void on_terminate(int signo, void *arg)
{
    struct gateway *g = arg;
    if (g->state == GW_SERVING) {
        log_info("gateway.stopping", LF_STR("signal", strsignal(signo)),
                 LF_UINT("grace_ms", g->cfg.shutdown_grace_ms));
        begin_drain(g);
        return;
    }
    if (g->state == GW_STARTING) {
        log_info("gateway.stopping", LF_STR("signal", strsignal(signo)));
        (void)reactor_sd_notify(g->r, "STOPPING=1");
        stop_backend(g);
        return;
    }
    /* A second signal does not wait for calls (the embedded database, if
     * any, still gets its bounded stop). */
    log_warn("gateway.stop_now", LF_STR("signal", strsignal(signo)));
    if (g->state == GW_DRAINING) {
        reactor_timer_disarm(g->drain_timer);
        stop_backend(g);
    }
}

/* SIGHUP reloads what can change without dropping connections: log level
 * and format, and the TLS certificate (new handshakes use the new one).
 * systemd hears RELOADING=1 ... READY=1 only while serving: a READY=1
 * before startup finished, or after STOPPING=1, would lie. */
static void on_reload(int signo, void *arg)
{
    struct gateway *g = arg;
    bool notify_sd = g->state == GW_SERVING;
    char err[512], notify[64];
    snprintf(notify, sizeof(notify), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)gw_clock_mono_us());
    if (notify_sd)
        (void)reactor_sd_notify(g->r, notify);
    if (config_reload(&g->cfg, g->argc, g->argv, err, sizeof(err)) != 0) {
        log_error("gateway.reload_failed", LF_STR("error", err));
        goto out;
    }
    log_set_level(g->cfg.log_level);
    log_set_format(g->cfg.log_format);
    if (!g->cfg.disable_tls && g->tcp != NULL) {
        struct ssl_ctx_st *ctx = load_tls(&g->cfg, err, sizeof(err));
        if (ctx == NULL) {
            log_error("gateway.reload_tls_failed", LF_STR("error", err));
            goto out;
        }
        reactor_listener_set_tls(g->tcp, ctx);
        SSL_CTX_free(g->tls);
        g->tls = ctx;
    }
    log_info("gateway.reloaded", LF_STR("log_level", log_level_name(g->cfg.log_level)));
out:
    if (notify_sd)
        (void)reactor_sd_notify(g->r, "READY=1");
}

static void watchdog_tick(struct reactor_timer *t, void *arg)
{
    struct gateway *g = arg;
    (void)reactor_sd_notify(g->r, "WATCHDOG=1");
}

/* ---- startup ------------------------------------------------------------------ */

/* Creates the state directory (0700) and missing parents (0755, like any
 * directory under /var/lib: the embedded database's user must traverse them). */
static int make_dirs(const char *path)
{
    char *p = gw_xstrdup(path);
    int rv = 0;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            rv = -1;
        *s = '/';
    }
    if (mkdir(p, 0700) != 0 && errno != EEXIST)
        rv = -1;
    free(p);
    return rv;
}

/* Creates the parent directory of |path| (0755: sandboxes see it). */
static int make_dirs_for(const char *path)
{
    char *dir = gw_xstrdup(path);
    char *slash = strrchr(dir, '/');
    int rv = 0;
    if (slash != NULL && slash != dir) {
        *slash = '\0';
        rv = make_dirs(dir);
        if (rv == 0)
            (void)chmod(dir, 0755);
    }
    free(dir);
    return rv;
}

static int start_listeners(struct gateway *g)
{
    const struct config *c = &g->cfg;
    int rv = reactor_listen_tcp(g->r, c->bind_address, c->port, g->tls, on_accept, g, &g->tcp);
    if (rv != 0) {
        log_error(
            "gateway.listen_failed", LF_STR("addr", c->bind_address), LF_UINT("port", c->port),
            LF_STR("error", rv == REACTOR_ERR_INUSE ? "address already in use" : strerror(errno)));
        return -1;
    }
    uint16_t port = reactor_listener_port(g->tcp);
    char addr[128];
    snprintf(addr, sizeof(addr), strchr(c->bind_address, ':') ? "[%s]:%u" : "%s:%u",
             c->bind_address, port);
    log_info("gateway.listening", LF_STR("addr", addr), LF_UINT("port", port),
             LF_BOOL("tls", g->tls != NULL), LF_BOOL("mtls", c->tls_client_ca != NULL));
    if (c->unix_socket != NULL) {
        rv = reactor_listen_unix(g->r, c->unix_socket, 0660, NULL, on_accept, g, &g->unix_l);
        if (rv != 0) {
            log_error("gateway.listen_failed", LF_STR("path", c->unix_socket),
                      LF_STR("error", strerror(errno)));
            return -1;
        }
        log_info("gateway.listening_unix", LF_STR("path", c->unix_socket));
    }
    if (make_dirs_for(c->supervisor_socket) != 0 ||
        reactor_listen_unix(g->r, c->supervisor_socket, 0660, NULL, on_accept, g, &g->sup_l) != 0) {
        log_error("gateway.listen_failed", LF_STR("path", c->supervisor_socket),
                  LF_STR("error", strlen(c->supervisor_socket) >= 108
                                      ? "path too long for a Unix socket: set --supervisor-socket"
                                      : strerror(errno)));
        return -1;
    }
    log_info("gateway.listening_supervisors", LF_STR("path", c->supervisor_socket));
    api_set_listener(g->api, c->bind_address, port, g->tls != NULL);
    if (c->health_port != 0) {
        g->health_http = gateway_http_new(reactor_base(g->r), c->bind_address, c->health_port,
                                          false, http_status, g);
        if (g->health_http == NULL)
            return -1;
        log_info("gateway.health_listening", LF_UINT("port", gateway_http_port(g->health_http)));
    }
    if (c->metrics_port != 0) {
        g->metrics_http = gateway_http_new(reactor_base(g->r), c->metrics_address, c->metrics_port,
                                           true, http_status, g);
        if (g->metrics_http == NULL)
            return -1;
        grpc_server_set_observer(g->srv, gateway_http_observe_call, g->metrics_http);
        log_info("gateway.metrics_listening", LF_STR("addr", c->metrics_address),
                 LF_UINT("port", gateway_http_port(g->metrics_http)));
    }
    return 0;
}

static int install_signals(struct gateway *g)
{
    if (reactor_on_signal(g->r, SIGTERM, on_terminate, g) != 0 ||
        reactor_on_signal(g->r, SIGINT, on_terminate, g) != 0 ||
        reactor_on_signal(g->r, SIGHUP, on_reload, g) != 0)
        return -1;
    uint64_t wd = reactor_sd_watchdog_usec();
    if (wd > 0) {
        g->watchdog_timer = reactor_timer_new(g->r, watchdog_tick, g);
        reactor_timer_arm_periodic(g->watchdog_timer, GW_MAX(wd / 2000, 1));
    }
    return 0;
}

/* The database is up and the driver answered: open the doors. */
static void serve(struct gateway *g)
{
    const struct config *c = &g->cfg;
    if (g->state != GW_STARTING || !g->store_ready || !g->driver_ready)
        return;
    if (start_listeners(g) != 0) {
        g->exit_code = 1;
        stop_backend(g);
        return;
    }
    gw_set_state(g, GW_SERVING);
    log_info("gateway.ready", LF_STR("version", PACKAGE_VERSION),
             LF_BOOL("diagnostics", c->enable_diagnostics),
             LF_STR("database", g->embedded ? "embedded" : "external"),
             LF_STR("driver", g->plan.name));
    (void)reactor_sd_notify(g->r, "READY=1");
}

static void on_store_state(struct store *s, bool up, void *arg)
{
    struct gateway *g = arg;
    if (g->hub)
        events_hub_store_state(g->hub, up);
    if (store_is_fatal(s)) {
        log_error("gateway.database_failed", LF_STR("error", store_last_error(s)));
        g->exit_code = 1;
        if (g->state == GW_STARTING || g->state == GW_SERVING)
            stop_backend(g);
        return;
    }
    if (up && g->state == GW_STARTING) {
        g->store_ready = true;
        serve(g);
    }
    /* Observations may have been dropped while the database was away. */
    if (up && g->api != NULL)
        api_compute_reconcile(g->api);
}

/* ---- the compute driver --------------------------------------------------------- */

static void on_driver_state(struct driver *d, enum driver_state st, const char *why, void *arg)
{
    struct gateway *g = arg;
    api_compute_on_driver_state(d, st, why, g->api);
    if (st == DRIVER_FAILED) {
        /* Startup could not reach the driver: upstream aborts too. */
        fprintf(stderr, "openshell-gateway: %s\n", why ? why : "compute driver failed");
        g->exit_code = 1;
        if (g->state == GW_STARTING || g->state == GW_SERVING)
            stop_backend(g);
        return;
    }
    if (st == DRIVER_READY && g->state == GW_STARTING) {
        g->driver_ready = true;
        serve(g);
    }
}

static void on_driver_watch(struct driver *d, const Openshell__Compute__V1__WatchSandboxesEvent *ev,
                            void *arg)
{
    struct gateway *g = arg;
    api_compute_on_watch(d, ev, g->api);
}

static void on_driver_watch_open(struct driver *d, void *arg)
{
    struct gateway *g = arg;
    api_compute_on_watch_open(d, g->api);
}

/* Directory of the running binary: managed driver programs live there. */
static void self_dir(char *out, size_t len)
{
    ssize_t n = readlink("/proc/self/exe", out, len - 1);
    if (n <= 0) {
        snprintf(out, len, ".");
        return;
    }
    out[n] = '\0';
    char *slash = strrchr(out, '/');
    if (slash != NULL && slash != out)
        *slash = '\0';
}

static int start_driver(struct gateway *g)
{
    const struct config *c = &g->cfg;
    char dir[4096], err[1024];

    self_dir(dir, sizeof(dir));
    if (driver_plan_resolve(c, dir, &g->plan, err, sizeof(err)) != 0) {
        log_error("gateway.driver_config", LF_STR("error", err));
        fprintf(stderr, "openshell-gateway: %s\n", err);
        return -1;
    }
    const char *extra[] = {"--log-level", log_level_name(c->log_level), "--log-format",
                           c->log_format == LOG_FORMAT_JSON ? "json" : "text", NULL};
    struct driver_opts o = {
        .plan = &g->plan,
        .reactor = g->r,
        .connect_timeout_ms = c->driver_connect_timeout_ms,
        .gateway_endpoint = c->sandbox_endpoint,
        .allow_name_mismatch = c->allow_driver_name_mismatch,
        .extra_args = extra,
        .on_state = on_driver_state,
        .on_watch = on_driver_watch,
        .on_watch_open = on_driver_watch_open,
        .arg = g,
    };
    g->driver = driver_new(&o);
    api_set_driver(g->api, g->driver);
    return 0;
}

static void on_store_notify(struct store *s, const char *payload, void *arg)
{
    struct gateway *g = arg;
    if (g->hub)
        events_hub_notify(g->hub, payload);
}

static void on_store_listen_reset(struct store *s, void *arg)
{
    struct gateway *g = arg;
    if (g->hub)
        events_hub_listen_reset(g->hub);
}

static void on_store_events_written(struct store *s, void *arg)
{
    struct gateway *g = arg;
    if (g->hub)
        events_hub_kick(g->hub);
}

static int open_store(struct gateway *g, const char *conninfo)
{
    char err[512];
    struct store_opts so = {
        .conninfo = conninfo,
        .listen_channel = "gw_events",
        .on_state = on_store_state,
        .on_notify = on_store_notify,
        .on_listen_reset = on_store_listen_reset,
        .on_events_written = on_store_events_written,
        .arg = g,
    };
    g->store = store_new(g->r, &so, err, sizeof(err));
    if (g->store == NULL) {
        log_error("gateway.database_config", LF_STR("error", err));
        return -1;
    }
    struct events_hub_opts ho = {0};
    g->hub = events_hub_new(g->r, g->store, &ho);
    api_set_backend(g->api, g->store, g->hub);
    store_start(g->store);
    return 0;
}

static void on_embedded(struct store_embedded *e, bool ok, const char *conninfo, const char *err,
                        void *arg)
{
    struct gateway *g = arg;
    if (!ok) {
        log_error("gateway.embedded_database_failed", LF_STR("error", err));
        g->exit_code = 1;
        stop_backend(g);
        return;
    }
    if (open_store(g, conninfo) != 0) {
        g->exit_code = 1;
        stop_backend(g);
    }
}

static int startup(struct gateway *g)
{
    const struct config *c = &g->cfg;
    char err[512];

    if (make_dirs(c->state_dir) != 0) {
        log_error("gateway.state_dir_failed", LF_STR("path", c->state_dir),
                  LF_STR("error", strerror(errno)));
        return -1;
    }
    if (!c->disable_tls) {
        g->tls = load_tls(c, err, sizeof(err));
        if (g->tls == NULL) {
            log_error("gateway.tls_failed", LF_STR("error", err));
            return -1;
        }
        if (c->tls_bundle_dir != NULL)
            log_info("gateway.tls_bundle", LF_STR("dir", c->tls_bundle_dir),
                     LF_STR("client_ca", c->tls_client_ca),
                     LF_BOOL("require_client_cert", c->tls_require_client_cert));
    }
    struct grpc_server_opts so = {
        .max_recv_msg_bytes = c->max_recv_msg_bytes,
        .max_concurrent_streams = c->max_concurrent_streams,
    };
    g->srv = grpc_server_new(reactor_base(g->r), &so);
    struct jwt_key_paths kp = {
        .signing_key_path = c->jwt_signing_key,
        .public_key_path = c->jwt_public_key,
        .kid_path = c->jwt_kid_file,
    };
    g->jwt = jwt_keys_load(&kp, true, err, sizeof(err));
    if (g->jwt == NULL) {
        log_error("gateway.jwt_keys_failed", LF_STR("error", err));
        fprintf(stderr, "openshell-gateway: sandbox token keys: %s\n", err);
        return -1;
    }
    if (c->jwt_bundle_dir != NULL)
        log_info("gateway.jwt_bundle", LF_STR("dir", c->jwt_bundle_dir));
    g->jwt_issuer = jwt_issuer(c->jwt_gateway_id);
    log_info("gateway.jwt_keys", LF_STR("kid", jwt_keys_kid(g->jwt)),
             LF_STR("issuer", g->jwt_issuer), LF_UINT("ttl_secs", c->jwt_ttl_secs));
    struct api_opts ao = {
        .version = PACKAGE_VERSION,
        .enable_diagnostics = c->enable_diagnostics,
        .mtls_user_auth = !c->disable_tls && c->tls_client_ca != NULL,
        .jwt = g->jwt,
        .jwt_issuer = g->jwt_issuer,
        .jwt_ttl_secs = c->jwt_ttl_secs,
        .ssh_session_ttl_secs = c->ssh_session_ttl_secs,
    };
    g->api = api_new(reactor_base(g->r), g->srv, &ao);
    if (g->api == NULL)
        return -1;
    if (install_signals(g) != 0)
        return -1;
    if (start_driver(g) != 0)
        return -1;
    /* Listeners open once the database is usable and the driver answered
     * (serve()). */
    if (c->db_url != NULL)
        return open_store(g, c->db_url);
    log_info("gateway.embedded_database", LF_STR("state_dir", c->state_dir));
    g->embedded = store_embedded_start(g->r, c->state_dir, GW_PG_BIN, on_embedded, g);
    return g->embedded ? 0 : -1;
}

static void teardown(struct gateway *g)
{
    if (g->srv)
        grpc_server_close_all(g->srv);
    if (g->api) {
        api_end_streams(g->api);
        api_set_backend(g->api, NULL, NULL);
    }
    if (g->driver != NULL) /* startup failed before the loop ran */
        driver_stop(g->driver, 0, NULL, NULL);
    store_free(g->store);
    events_hub_free(g->hub);
    reactor_timer_free(g->drain_timer);
    reactor_timer_free(g->watchdog_timer);
    reactor_listener_free(g->tcp);
    reactor_listener_free(g->unix_l);
    reactor_listener_free(g->sup_l);
    gateway_http_free(g->health_http);
    if (g->srv)
        grpc_server_set_observer(g->srv, NULL, NULL); /* it counts into metrics_http */
    gateway_http_free(g->metrics_http);
    grpc_server_free(g->srv);
    if (g->api)
        api_compute_free(g->api);
    api_free(g->api);
    jwt_keys_free(g->jwt);
    free(g->jwt_issuer);
    driver_plan_clear(&g->plan);
    if (g->tls)
        SSL_CTX_free(g->tls);
    reactor_free(g->r);
    config_free(&g->cfg);
}

int main(int argc, char **argv)
{
    struct gateway g = {.argc = argc, .argv = argv};
    enum config_action action;
    char err[1024];
    int code = 1;

    /* Relay and HTTP/2 buffers come and go in 16-64 KiB pieces: keep them
     * off mmap and keep freed heap instead of trimming and faulting it in
     * again for every chunk. */
    (void)mallopt(M_MMAP_THRESHOLD, 1024 * 1024);
    (void)mallopt(M_TRIM_THRESHOLD, 8 * 1024 * 1024);
    /* A subcommand, not a setting: it runs before (and without) the config. */
    if (argc > 1 && strcmp(argv[1], "generate-certs") == 0)
        return gateway_certs_main(argc - 1, argv + 1, stdout, stderr);
    config_init(&g.cfg);
    if (config_load(&g.cfg, argc, argv, stdout, &action, err, sizeof(err)) != 0) {
        fprintf(stderr, "openshell-gateway: %s\n", err);
        fprintf(stderr, "Try 'openshell-gateway --help' for the options.\n");
        config_free(&g.cfg);
        return 2;
    }
    if (action != CONFIG_RUN) {
        config_free(&g.cfg);
        return 0;
    }
    log_set_level(g.cfg.log_level);
    log_set_format(g.cfg.log_format);
    /* Before any child exists: the managed driver and the embedded
     * PostgreSQL would otherwise send READY=1 to systemd in our name. */
    reactor_sd_env_take();
    g.r = reactor_new();
    if (g.r == NULL) {
        log_error("gateway.reactor_failed");
        config_free(&g.cfg);
        return 1;
    }
    if (startup(&g) != 0)
        goto out;
    if (reactor_run(g.r) != 0) {
        log_error("gateway.loop_failed");
        goto out;
    }
    code = g.exit_code;
    log_info("gateway.stopped", LF_INT("exit_code", code));
out:
    teardown(&g);
    return code;
}
