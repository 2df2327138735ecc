/*
 * Unit tests for src/reactor: timers, signals, child processes, sd_notify,
 * and listeners/connects over loopback and Unix sockets, with TLS material
 * generated in-process (no files shipped, no network peer).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "reactor/reactor.h"

#define GUARD_MS 5000 /* a test whose loop runs longer than this has failed */

/* Files written once by the group setup. */
static struct {
    char dir[64];
    char self_cert[128]; /* Ed25519, self-signed, SAN localhost + 127.0.0.1 */
    char self_key[128];
    char ca_cert[128];     /* EC P-256 test CA */
    char server_cert[128]; /* signed by the CA, SAN localhost + 127.0.0.1 */
    char server_key[128];
    char client_cert[128]; /* signed by the CA: CN=alice, OU=eng, OU=ops */
    char client_key[128];
    char other_key[128]; /* matches no certificate */
} tls_files;

/* ---- loop helpers --------------------------------------------------------- */

struct guard {
    struct reactor *r;
    bool expired;
};

static void on_guard(struct reactor_timer *t, void *arg)
{
    struct guard *g = arg;

    g->expired = true;
    reactor_stop(g->r);
}

/* Runs the loop until a callback stops it; fails the test after GUARD_MS. */
static void run_until_stopped(struct reactor *r)
{
    struct guard g = {.r = r};
    struct reactor_timer *t = reactor_timer_new(r, on_guard, &g);

    reactor_timer_arm(t, GUARD_MS);
    assert_int_equal(reactor_run(r), 0);
    reactor_timer_free(t);
    assert_false(g.expired);
}

static void on_stop_timer(struct reactor_timer *t, void *arg)
{
    reactor_stop(arg);
}

/* Runs the loop for |ms| whatever happens. */
static void run_for(struct reactor *r, uint64_t ms)
{
    struct reactor_timer *t = reactor_timer_new(r, on_stop_timer, r);

    reactor_timer_arm(t, ms);
    assert_int_equal(reactor_run(r), 0);
    reactor_timer_free(t);
}

static int setup_reactor(void **state)
{
    struct reactor *r = reactor_new();

    assert_non_null(r);
    *state = r;
    return 0;
}

static int teardown_reactor(void **state)
{
    reactor_free(*state);
    return 0;
}

/* Sends log lines to a memory file until log_capture_end(). */
static int log_capture_begin(void)
{
    int fd = memfd_create("reactor-test-log", MFD_CLOEXEC);

    assert_true(fd >= 0);
    log_set_level(LOG_INFO);
    log_set_fd(fd);
    return fd;
}

static bool log_capture_end(int fd, const char *needle)
{
    char buf[16384];
    ssize_t n;

    log_set_fd(2);
    log_set_level(LOG_WARN);
    n = pread(fd, buf, sizeof(buf) - 1, 0);
    close(fd);
    assert_true(n >= 0);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

/* ---- timers --------------------------------------------------------------- */

struct ticks {
    struct reactor *r;
    int count;
    int stop_at;
    bool armed_in_cb;
};

static void on_tick(struct reactor_timer *t, void *arg)
{
    struct ticks *k = arg;

    k->count++;
    k->armed_in_cb = reactor_timer_armed(t);
    if (k->count == k->stop_at) {
        reactor_timer_disarm(t);
        reactor_stop(k->r);
    }
}

static void test_reactor_timer_arm_fires_once(void **state)
{
    struct reactor *r = *state;
    struct ticks k = {.r = r};
    struct reactor_timer *t = reactor_timer_new(r, on_tick, &k);

    assert_false(reactor_timer_armed(t));
    reactor_timer_arm(t, 5);
    assert_true(reactor_timer_armed(t));
    run_for(r, 60);
    assert_int_equal(k.count, 1);
    assert_false(k.armed_in_cb);
    assert_false(reactor_timer_armed(t));
    reactor_timer_free(t);
}

static void test_reactor_timer_arm_periodic_fires_until_disarmed(void **state)
{
    struct reactor *r = *state;
    struct ticks k = {.r = r, .stop_at = 3};
    struct reactor_timer *t = reactor_timer_new(r, on_tick, &k);

    reactor_timer_arm_periodic(t, 2);
    run_until_stopped(r);
    assert_int_equal(k.count, 3);
    assert_true(k.armed_in_cb);
    assert_false(reactor_timer_armed(t));
    run_for(r, 20);
    assert_int_equal(k.count, 3);
    reactor_timer_free(t);
}

static void test_reactor_timer_disarm_prevents_firing(void **state)
{
    struct reactor *r = *state;
    struct ticks k = {.r = r};
    struct reactor_timer *t = reactor_timer_new(r, on_tick, &k);

    reactor_timer_arm_periodic(t, 2);
    reactor_timer_arm(t, 5); /* re-arming replaces the periodic schedule */
    reactor_timer_disarm(t);
    assert_false(reactor_timer_armed(t));
    run_for(r, 30);
    assert_int_equal(k.count, 0);
    reactor_timer_free(t);
}

static void on_tick_rearm_once(struct reactor_timer *t, void *arg)
{
    struct ticks *k = arg;

    k->count++;
    if (k->count == 1) {
        reactor_timer_arm(t, 5); /* periodic becomes one-shot from inside */
        return;
    }
    k->armed_in_cb = reactor_timer_armed(t);
    reactor_stop(k->r);
}

static void test_reactor_timer_rearm_inside_callback(void **state)
{
    struct reactor *r = *state;
    struct ticks k = {.r = r};
    struct reactor_timer *t = reactor_timer_new(r, on_tick_rearm_once, &k);

    reactor_timer_arm_periodic(t, 1);
    run_until_stopped(r);
    assert_int_equal(k.count, 2);
    assert_false(k.armed_in_cb);
    run_for(r, 20);
    assert_int_equal(k.count, 2);
    reactor_timer_free(t);
}

static void on_tick_free_self(struct reactor_timer *t, void *arg)
{
    struct ticks *k = arg;

    k->count++;
    reactor_timer_free(t);
    reactor_stop(k->r);
}

static void test_reactor_timer_free_inside_callback_is_safe(void **state)
{
    struct reactor *r = *state;
    struct ticks k = {.r = r};
    struct reactor_timer *t = reactor_timer_new(r, on_tick_free_self, &k);

    reactor_timer_arm_periodic(t, 1);
    run_until_stopped(r);
    assert_int_equal(k.count, 1);
}

/* ---- signals ---------------------------------------------------------------- */

struct sigseen {
    struct reactor *r;
    int signo;
    int count;
    int other;
};

static void on_usr1(int signo, void *arg)
{
    struct sigseen *s = arg;

    s->signo = signo;
    s->count++;
    reactor_stop(s->r);
}

static void on_usr1_other(int signo, void *arg)
{
    struct sigseen *s = arg;

    s->other++;
    reactor_stop(s->r);
}

static void test_reactor_on_signal_runs_callback_on_loop(void **state)
{
    struct reactor *r = *state;
    struct sigseen s = {.r = r};

    assert_int_equal(reactor_on_signal(r, SIGUSR1, on_usr1, &s), 0);
    raise(SIGUSR1);
    /* Delivered, but the callback waits for the loop. */
    assert_int_equal(s.count, 0);
    run_until_stopped(r);
    assert_int_equal(s.count, 1);
    assert_int_equal(s.signo, SIGUSR1);
}

static void test_reactor_on_signal_second_registration_replaces(void **state)
{
    struct reactor *r = *state;
    struct sigseen s = {.r = r};

    assert_int_equal(reactor_on_signal(r, SIGUSR1, on_usr1, &s), 0);
    assert_int_equal(reactor_on_signal(r, SIGUSR1, on_usr1_other, &s), 0);
    raise(SIGUSR1);
    run_until_stopped(r);
    assert_int_equal(s.count, 0);
    assert_int_equal(s.other, 1);
}

static void test_reactor_on_signal_rejects_sigkill(void **state)
{
    struct sigseen s = {.r = *state};

    assert_int_equal(reactor_on_signal(*state, SIGKILL, on_usr1, &s), REACTOR_ERR_SYS);
}

/* ---- child processes ------------------------------------------------------------ */

struct exits {
    struct reactor *r;
    int calls;
    pid_t pid;
    int status;
};

static void on_child_exit(struct reactor_child *c, pid_t pid, int status, void *arg)
{
    struct exits *e = arg;

    assert_int_equal(reactor_child_pid(c), pid);
    e->calls++;
    e->pid = pid;
    e->status = status;
    reactor_stop(e->r);
}

static struct reactor_spawn_opts spawn_opts(const char *const *argv)
{
    struct reactor_spawn_opts o = {.argv = argv, .stdout_fd = -1, .stderr_fd = -1};

    return o;
}

static void test_reactor_spawn_reports_exit_status(void **state)
{
    struct reactor *r = *state;
    const char *const argv[] = {"/bin/sh", "-c", "exit 3", NULL};
    struct reactor_spawn_opts o = spawn_opts(argv);
    struct exits e = {.r = r};
    struct reactor_child *c = NULL;

    assert_int_equal(reactor_spawn(r, &o, on_child_exit, &e, &c), 0);
    assert_non_null(c);
    assert_true(reactor_child_pid(c) > 0);
    assert_int_equal(reactor_children_running(r), 1);
    e.pid = reactor_child_pid(c);
    run_until_stopped(r);
    assert_int_equal(e.calls, 1);
    assert_true(WIFEXITED(e.status));
    assert_int_equal(WEXITSTATUS(e.status), 3);
    assert_int_equal(reactor_children_running(r), 0);
}

static void test_reactor_spawn_exec_failure_exits_127(void **state)
{
    struct reactor *r = *state;
    const char *const argv[] = {"/nonexistent/openshell-test-program", NULL};
    struct reactor_spawn_opts o = spawn_opts(argv);
    struct exits e = {.r = r};
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);

    assert_true(devnull >= 0);
    o.stderr_fd = devnull; /* keep the child's complaint out of the test output */
    assert_int_equal(reactor_spawn(r, &o, on_child_exit, &e, NULL), 0);
    close(devnull);
    run_until_stopped(r);
    assert_int_equal(e.calls, 1);
    assert_true(WIFEXITED(e.status));
    assert_int_equal(WEXITSTATUS(e.status), 127);
}

static void test_reactor_child_kill_sends_signal(void **state)
{
    struct reactor *r = *state;
    const char *const argv[] = {"/bin/sleep", "30", NULL};
    struct reactor_spawn_opts o = spawn_opts(argv);
    struct exits e = {.r = r};
    struct reactor_child *c = NULL;

    o.new_process_group = true;
    o.die_with_parent = true;
    assert_int_equal(reactor_spawn(r, &o, on_child_exit, &e, &c), 0);
    assert_int_equal(reactor_child_kill(c, SIGTERM), 0);
    run_until_stopped(r);
    assert_int_equal(e.calls, 1);
    assert_true(WIFSIGNALED(e.status));
    assert_int_equal(WTERMSIG(e.status), SIGTERM);
}

/* Reads what the child wrote once it has exited; |fd| is non-blocking. */
static void read_all(int fd, char *buf, size_t len)
{
    size_t used = 0;
    ssize_t n;

    while (used + 1 < len && (n = read(fd, buf + used, len - 1 - used)) > 0)
        used += (size_t)n;
    buf[used] = '\0';
}

static void test_reactor_spawn_redirects_stdout_sets_cwd_and_env(void **state)
{
    struct reactor *r = *state;
    const char *const argv[] = {"/bin/sh", "-c", "pwd; echo \"$GW_TEST\"", NULL};
    const char *const envp[] = {"GW_TEST=42", NULL};
    struct reactor_spawn_opts o = spawn_opts(argv);
    struct exits e = {.r = r};
    char out[64];
    int p[2];

    assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
    o.stdout_fd = p[1];
    o.cwd = "/";
    o.envp = envp;
    assert_int_equal(reactor_spawn(r, &o, on_child_exit, &e, NULL), 0);
    close(p[1]);
    run_until_stopped(r);
    read_all(p[0], out, sizeof(out));
    close(p[0]);
    assert_int_equal(WEXITSTATUS(e.status), 0);
    assert_string_equal(out, "/\n42\n");
}

/* The gateway ignores SIGPIPE; its children must not inherit that. */
static void test_reactor_spawn_resets_ignored_signals(void **state)
{
    struct reactor *r = *state;
    const char *const argv[] = {"/bin/sh", "-c", "grep SigIgn /proc/$$/status", NULL};
    struct reactor_spawn_opts o = spawn_opts(argv);
    struct exits e = {.r = r};
    unsigned long long ignored = ~0ULL;
    char out[128];
    int p[2];

    assert_int_equal(signal(SIGPIPE, SIG_IGN) != SIG_ERR, true);
    assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
    o.stdout_fd = p[1];
    assert_int_equal(reactor_spawn(r, &o, on_child_exit, &e, NULL), 0);
    close(p[1]);
    run_until_stopped(r);
    read_all(p[0], out, sizeof(out));
    close(p[0]);
    assert_int_equal(sscanf(out, "SigIgn: %llx", &ignored), 1);
    assert_int_equal(ignored & (1ULL << (SIGPIPE - 1)), 0);
}

static void on_poll_children(struct reactor_timer *t, void *arg)
{
    struct reactor *r = arg;

    if (reactor_children_running(r) == 0)
        reactor_stop(r);
}

static void test_reactor_child_detach_skips_callback(void **state)
{
    struct reactor *r = *state;
    const char *const argv[] = {"/bin/sh", "-c", "exit 0", NULL};
    struct reactor_spawn_opts o = spawn_opts(argv);
    struct exits e = {.r = r};
    struct reactor_child *c = NULL;
    struct reactor_timer *poll = reactor_timer_new(r, on_poll_children, r);

    assert_int_equal(reactor_spawn(r, &o, on_child_exit, &e, &c), 0);
    reactor_child_detach(c);
    reactor_timer_arm_periodic(poll, 2);
    run_until_stopped(r);
    reactor_timer_free(poll);
    assert_int_equal(e.calls, 0);
    assert_int_equal(reactor_children_running(r), 0);
}

static void test_reactor_free_kills_running_children(void **state)
{
    struct reactor *r = reactor_new();
    const char *const argv[] = {"/bin/sleep", "30", NULL};
    struct reactor_spawn_opts o = spawn_opts(argv);
    struct exits e = {.r = r};
    struct reactor_child *c = NULL;
    pid_t pid;

    assert_non_null(r);
    assert_int_equal(reactor_spawn(r, &o, on_child_exit, &e, &c), 0);
    pid = reactor_child_pid(c);
    reactor_free(r);
    /* Killed and reaped: the pid no longer exists, not even as a zombie. */
    assert_int_equal(kill(pid, 0), -1);
    assert_int_equal(errno, ESRCH);
    assert_int_equal(e.calls, 0);
}

/* ---- systemd ------------------------------------------------------------------- */

static void check_notify_received(struct reactor *r, int fd, const char *notify_socket)
{
    char buf[64];
    ssize_t n;

    assert_int_equal(setenv("NOTIFY_SOCKET", notify_socket, 1), 0);
    assert_int_equal(reactor_sd_notify(r, "READY=1"), 0);
    unsetenv("NOTIFY_SOCKET");
    n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    assert_int_equal(n, 7);
    buf[n] = '\0';
    assert_string_equal(buf, "READY=1");
}

static void test_reactor_sd_notify_sends_datagram_to_path(void **state)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify.sock", tls_files.dir);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    check_notify_received(*state, fd, sa.sun_path);
    close(fd);
    unlink(sa.sun_path);
}

static void test_reactor_sd_notify_supports_abstract_names(void **state)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char name[64];
    socklen_t len;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    snprintf(name, sizeof(name), "@openshell-reactor-test-%ld", (long)getpid());
    memcpy(sa.sun_path + 1, name + 1, strlen(name) - 1);
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name));
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, len), 0);
    check_notify_received(*state, fd, name);
    close(fd);
}

static void test_reactor_sd_notify_without_socket_is_noop(void **state)
{
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(reactor_sd_notify(*state, "READY=1"), 0);
    assert_int_equal(setenv("NOTIFY_SOCKET", "relative/path", 1), 0);
    assert_int_equal(reactor_sd_notify(*state, "READY=1"), REACTOR_ERR_ADDR);
    unsetenv("NOTIFY_SOCKET");
}

static void test_reactor_sd_watchdog_usec_reads_env(void **state)
{
    char pid[32];

    unsetenv("WATCHDOG_PID");
    unsetenv("WATCHDOG_USEC");
    assert_int_equal(reactor_sd_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "30000000", 1);
    assert_int_equal(reactor_sd_watchdog_usec(), 30000000);
    snprintf(pid, sizeof(pid), "%ld", (long)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(reactor_sd_watchdog_usec(), 30000000);
    setenv("WATCHDOG_PID", "1", 1);
    assert_int_equal(reactor_sd_watchdog_usec(), 0);
    unsetenv("WATCHDOG_PID");
    setenv("WATCHDOG_USEC", "soon", 1);
    assert_int_equal(reactor_sd_watchdog_usec(), 0);
    unsetenv("WATCHDOG_USEC");
}

/* ---- connections ------------------------------------------------------------------ */

/* Both ends of one connection made through a listener in the same loop. */
struct net {
    struct reactor *r;
    struct bufferevent *server; /* accepted */
    struct bufferevent *client; /* connected */
    struct reactor_peer server_peer;
    struct reactor_peer client_peer;
    int accepts;
    int connects;
    bool client_failed; /* connect failed, or the connection died afterwards */
    char err[256];
    char received[16];
};

static void on_server_read(struct bufferevent *bev, void *arg)
{
    struct net *n = arg;
    size_t used = strlen(n->received);

    evbuffer_remove(bufferevent_get_input(bev), n->received + used, sizeof(n->received) - 1 - used);
    if (strlen(n->received) >= 4)
        reactor_stop(n->r);
}

static void on_accepted(struct bufferevent *bev, const struct reactor_peer *peer, void *arg)
{
    struct net *n = arg;

    n->accepts++;
    n->server = bev;
    n->server_peer = *peer;
    bufferevent_setcb(bev, on_server_read, NULL, NULL, n);
    bufferevent_enable(bev, EV_READ);
}

static void on_client_event(struct bufferevent *bev, short what, void *arg)
{
    struct net *n = arg;

    n->client_failed = true;
    reactor_stop(n->r);
}

static void on_connected(struct bufferevent *bev, const struct reactor_peer *peer, const char *err,
                         void *arg)
{
    struct net *n = arg;

    n->connects++;
    n->client_peer = *peer;
    if (bev == NULL) {
        n->client_failed = true;
        snprintf(n->err, sizeof(n->err), "%s", err);
        reactor_stop(n->r);
        return;
    }
    n->client = bev;
    bufferevent_setcb(bev, NULL, NULL, on_client_event, n);
    bufferevent_enable(bev, EV_READ);
    bufferevent_write(bev, "ping", 4);
}

static void net_close(struct net *n)
{
    if (n->server != NULL)
        bufferevent_free(n->server);
    if (n->client != NULL)
        bufferevent_free(n->client);
    n->server = NULL;
    n->client = NULL;
}

static uint16_t listen_loopback(struct reactor *r, struct ssl_ctx_st *tls, struct net *n,
                                struct reactor_listener **l)
{
    uint16_t port;

    assert_int_equal(reactor_listen_tcp(r, "127.0.0.1", 0, tls, on_accepted, n, l), 0);
    port = reactor_listener_port(*l);
    assert_true(port != 0);
    return port;
}

static void test_reactor_listen_tcp_accepts_connect_tcp(void **state)
{
    struct reactor *r = *state;
    struct net n = {.r = r};
    struct reactor_listener *l = NULL;
    uint16_t port = listen_loopback(r, NULL, &n, &l);
    char want[32];

    assert_int_equal(reactor_connect_tcp(r, "127.0.0.1", port, NULL, NULL, 0, on_connected, &n), 0);
    assert_int_equal(n.connects, 0); /* never from inside the call */
    run_until_stopped(r);
    assert_int_equal(n.accepts, 1);
    assert_int_equal(n.connects, 1);
    assert_string_equal(n.received, "ping");
    assert_false(n.server_peer.tls);
    assert_memory_equal(n.server_peer.addr, "127.0.0.1:", 10);
    snprintf(want, sizeof(want), "127.0.0.1:%u", port);
    assert_string_equal(n.client_peer.addr, want);
    assert_true(n.server_peer.conn_id != 0 && n.client_peer.conn_id != 0);
    assert_true(n.server_peer.conn_id != n.client_peer.conn_id);
    net_close(&n);
    reactor_listener_free(l);
}

static void test_reactor_listen_tcp_accepts_ipv6_loopback(void **state)
{
    struct reactor *r = *state;
    struct net n = {.r = r};
    struct reactor_listener *l = NULL;

    if (reactor_listen_tcp(r, "::1", 0, NULL, on_accepted, &n, &l) != 0)
        skip(); /* no IPv6 in this sandbox */
    assert_int_equal(
        reactor_connect_tcp(r, "[::1]", reactor_listener_port(l), NULL, NULL, 0, on_connected, &n),
        0);
    run_until_stopped(r);
    assert_string_equal(n.received, "ping");
    assert_memory_equal(n.server_peer.addr, "[::1]:", 6);
    net_close(&n);
    reactor_listener_free(l);
}

/* A "::" listener also takes IPv4 clients (unless the host forces
 * bindv6only); they show up with their IPv4 address, not ::ffff:a.b.c.d. */
static void test_reactor_listen_tcp_dual_stack_reports_ipv4_peer(void **state)
{
    struct reactor *r = *state;
    struct net n = {.r = r};
    struct reactor_listener *l = NULL;
    FILE *f = fopen("/proc/sys/net/ipv6/bindv6only", "r");
    int v6only = 1;

    if (f != NULL) {
        if (fscanf(f, "%d", &v6only) != 1)
            v6only = 1;
        fclose(f);
    }
    if (v6only != 0 || reactor_listen_tcp(r, "::", 0, NULL, on_accepted, &n, &l) != 0)
        skip();
    assert_int_equal(reactor_connect_tcp(r, "127.0.0.1", reactor_listener_port(l), NULL, NULL, 0,
                                         on_connected, &n),
                     0);
    run_until_stopped(r);
    assert_string_equal(n.received, "ping");
    assert_memory_equal(n.server_peer.addr, "127.0.0.1:", 10);
    net_close(&n);
    reactor_listener_free(l);
}

static void test_reactor_listen_tcp_reports_address_in_use(void **state)
{
    struct reactor *r = *state;
    struct net n = {.r = r};
    struct reactor_listener *a = NULL;
    struct reactor_listener *b = NULL;
    uint16_t port = listen_loopback(r, NULL, &n, &a);

    assert_int_equal(reactor_listen_tcp(r, "127.0.0.1", port, NULL, on_accepted, &n, &b),
                     REACTOR_ERR_INUSE);
    reactor_listener_free(a);
}

static void test_reactor_listen_tcp_rejects_host_names(void **state)
{
    struct reactor *r = *state;
    struct net n = {.r = r};
    struct reactor_listener *l = NULL;

    assert_int_equal(reactor_listen_tcp(r, "localhost", 0, NULL, on_accepted, &n, &l),
                     REACTOR_ERR_ADDR);
    assert_int_equal(reactor_connect_tcp(r, "localhost", 80, NULL, NULL, 0, on_connected, &n),
                     REACTOR_ERR_ADDR);
}

static void test_reactor_connect_tcp_refused_reports_error(void **state)
{
    struct reactor *r = *state;
    struct net n = {.r = r};
    struct reactor_listener *l = NULL;
    uint16_t port = listen_loopback(r, NULL, &n, &l);

    reactor_listener_free(l); /* nothing listens on |port| any more */
    assert_int_equal(reactor_connect_tcp(r, "127.0.0.1", port, NULL, NULL, 0, on_connected, &n), 0);
    assert_int_equal(n.connects, 0);
    run_until_stopped(r);
    assert_int_equal(n.connects, 1);
    assert_true(n.client_failed);
    assert_true(n.err[0] != '\0');
}

static void unix_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tls_files.dir, name);
}

static void test_reactor_listen_unix_accepts_connect_unix(void **state)
{
    struct reactor *r = *state;
    struct net n = {.r = r};
    struct reactor_listener *l = NULL;
    char path[128];
    char want[160];
    struct stat st;

    unix_path(path, sizeof(path), "gw.sock");
    assert_int_equal(reactor_listen_unix(r, path, 0600, NULL, on_accepted, &n, &l), 0);
    assert_int_equal(reactor_listener_port(l), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(reactor_connect_unix(r, path, on_connected, &n), 0);
    assert_int_equal(n.connects, 0);
    run_until_stopped(r);
    assert_string_equal(n.received, "ping");
    snprintf(want, sizeof(want), "unix:%s", path);
    assert_string_equal(n.server_peer.addr, want);
    net_close(&n);
    reactor_listener_free(l);
    assert_int_equal(stat(path, &st), -1); /* removed on close */
}

static void test_reactor_listen_unix_replaces_stale_socket(void **state)
{
    struct reactor *r = *state;
    struct net n = {.r = r};
    struct reactor_listener *l = NULL;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    unix_path(sa.sun_path, sizeof(sa.sun_path), "stale.sock");
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd); /* the file stays behind, as after a crash */
    assert_int_equal(reactor_listen_unix(r, sa.sun_path, 0660, NULL, on_accepted, &n, &l), 0);
    assert_int_equal(reactor_connect_unix(r, sa.sun_path, on_connected, &n), 0);
    run_until_stopped(r);
    assert_string_equal(n.received, "ping");
    net_close(&n);
    reactor_listener_free(l);
}

static void test_reactor_listen_unix_refuses_to_delete_other_files(void **state)
{
    struct reactor *r = *state;
    struct net n = {.r = r};
    struct reactor_listener *l = NULL;
    char path[128];
    int fd;

    unix_path(path, sizeof(path), "not-a-socket");
    fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(reactor_listen_unix(r, path, 0600, NULL, on_accepted, &n, &l),
                     REACTOR_ERR_INUSE);
    assert_int_equal(access(path, F_OK), 0);
    unlink(path);
}

static void test_reactor_connect_unix_missing_socket_reports_error(void **state)
{
    struct reactor *r = *state;
    struct net n = {.r = r};
    char path[128];

    unix_path(path, sizeof(path), "nobody-listens.sock");
    assert_int_equal(reactor_connect_unix(r, path, on_connected, &n), 0);
    assert_int_equal(n.connects, 0);
    run_until_stopped(r);
    assert_int_equal(n.connects, 1);
    assert_true(n.client_failed);
    assert_string_equal(n.err, strerror(ENOENT));
}

static void test_reactor_connect_unix_stale_socket_reports_refused(void **state)
{
    struct reactor *r = *state;
    struct net n = {.r = r};
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    unix_path(sa.sun_path, sizeof(sa.sun_path), "dead.sock");
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    assert_int_equal(reactor_connect_unix(r, sa.sun_path, on_connected, &n), 0);
    assert_int_equal(n.connects, 0);
    run_until_stopped(r);
    assert_true(n.client_failed);
    assert_string_equal(n.err, strerror(ECONNREFUSED));
    unlink(sa.sun_path);
}

/* Objects the user never freed are released by reactor_free(); the
 * sanitizer build would report any leak. */
static void test_reactor_free_releases_leftovers(void **state)
{
    struct reactor *r = reactor_new();
    struct net n = {.r = r};
    struct reactor_listener *l = NULL;
    struct sigseen s = {.r = r};
    uint16_t port = listen_loopback(r, NULL, &n, &l);

    reactor_timer_arm(reactor_timer_new(r, on_stop_timer, r), 1000);
    assert_int_equal(reactor_on_signal(r, SIGUSR2, on_usr1, &s), 0);
    assert_int_equal(reactor_connect_tcp(r, "127.0.0.1", port, NULL, NULL, 0, on_connected, &n), 0);
    reactor_free(r);
    assert_int_equal(n.connects, 0);
}

/* ---- TLS material ------------------------------------------------------------------ */

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509_EXTENSION *ext;

    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    assert_non_null(ext);
    assert_int_equal(X509_add_ext(x, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

/* A certificate for |key| named |cn| (plus OUs), signed by |issuer| or,
 * when NULL, by itself. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, const char *const *ous, X509 *issuer,
                       EVP_PKEY *issuer_key, bool ca)
{
    static long serial = 1;
    X509 *x = X509_new();
    X509_NAME *name = X509_get_subject_name(x);
    EVP_PKEY *signer = issuer_key != NULL ? issuer_key : key;

    assert_int_equal(X509_set_version(x, 2), 1);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    assert_int_equal(X509_set_pubkey(x, key), 1);
    for (; ous != NULL && *ous != NULL; ous++)
        X509_NAME_add_entry_by_txt(name, "OU", MBSTRING_ASC, (const unsigned char *)*ous, -1, -1,
                                   0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name);
    add_ext(x, issuer != NULL ? issuer : x, NID_subject_key_identifier, "hash");
    if (ca) {
        add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(x, issuer != NULL ? issuer : x, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
    }
    /* Ed25519 signs the message itself: no separate digest. */
    assert_true(X509_sign(x, signer, EVP_PKEY_is_a(signer, "ED25519") ? NULL : EVP_sha256()) > 0);
    return x;
}

static void write_pem(const char *path, X509 *cert, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    if (cert != NULL)
        assert_int_equal(PEM_write_X509(f, cert), 1);
    if (key != NULL)
        assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
}

static void tls_files_path(char *buf, const char *name)
{
    snprintf(buf, 128, "%s/%s", tls_files.dir, name);
}

static void make_tls_files(void)
{
    const char *const ous[] = {"eng", "ops", NULL};
    EVP_PKEY *self_key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    EVP_PKEY *ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *server_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *client_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *other_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *self = make_cert(self_key, "localhost", NULL, NULL, NULL, false);
    X509 *ca = make_cert(ca_key, "Reactor Test CA", NULL, NULL, NULL, true);
    X509 *server = make_cert(server_key, "localhost", NULL, ca, ca_key, false);
    X509 *client = make_cert(client_key, "alice", ous, ca, ca_key, false);

    write_pem(tls_files.self_cert, self, NULL);
    write_pem(tls_files.self_key, NULL, self_key);
    write_pem(tls_files.ca_cert, ca, NULL);
    write_pem(tls_files.server_cert, server, NULL);
    write_pem(tls_files.server_key, NULL, server_key);
    write_pem(tls_files.client_cert, client, NULL);
    write_pem(tls_files.client_key, NULL, client_key);
    write_pem(tls_files.other_key, NULL, other_key);
    X509_free(self);
    X509_free(ca);
    X509_free(server);
    X509_free(client);
    EVP_PKEY_free(self_key);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(server_key);
    EVP_PKEY_free(client_key);
    EVP_PKEY_free(other_key);
}

static int setup_files(void **state)
{
    snprintf(tls_files.dir, sizeof(tls_files.dir), "/tmp/test_reactor.XXXXXX");
    if (mkdtemp(tls_files.dir) == NULL)
        return -1;
    tls_files_path(tls_files.self_cert, "self.crt");
    tls_files_path(tls_files.self_key, "self.key");
    tls_files_path(tls_files.ca_cert, "ca.crt");
    tls_files_path(tls_files.server_cert, "server.crt");
    tls_files_path(tls_files.server_key, "server.key");
    tls_files_path(tls_files.client_cert, "client.crt");
    tls_files_path(tls_files.client_key, "client.key");
    tls_files_path(tls_files.other_key, "other.key");
    make_tls_files();
    log_set_level(LOG_WARN);
    return 0;
}

static int teardown_files(void **state)
{
    const char *files[] = {tls_files.self_cert,   tls_files.self_key,   tls_files.ca_cert,
                           tls_files.server_cert, tls_files.server_key, tls_files.client_cert,
                           tls_files.client_key,  tls_files.other_key};

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        unlink(files[i]);
    return rmdir(tls_files.dir);
}

/* ---- TLS ----------------------------------------------------------------------------- */

static struct ssl_ctx_st *server_ctx(const char *cert, const char *key, const char *ca,
                                     bool require)
{
    char err[256] = "";
    struct ssl_ctx_st *ctx = reactor_tls_server_ctx(cert, key, ca, require, err, sizeof(err));

    if (ctx == NULL)
        fail_msg("server ctx: %s", err);
    return ctx;
}

static struct ssl_ctx_st *client_ctx(const char *ca, const char *cert, const char *key)
{
    char err[256] = "";
    struct ssl_ctx_st *ctx = reactor_tls_client_ctx(ca, cert, key, false, err, sizeof(err));

    if (ctx == NULL)
        fail_msg("client ctx: %s", err);
    return ctx;
}

static bool alpn_is_h2(struct bufferevent *bev)
{
    const unsigned char *p = NULL;
    unsigned int len = 0;

    SSL_get0_alpn_selected(bufferevent_openssl_get_ssl(bev), &p, &len);
    return len == 2 && memcmp(p, "h2", 2) == 0;
}

/* Connects a TLS client to a TLS listener in the same loop; stops when the
 * server has read "ping" or the client has failed. */
static void tls_exchange(struct reactor *r, struct ssl_ctx_st *server, struct ssl_ctx_st *client,
                         const char *sni, struct net *n)
{
    struct reactor_listener *l = NULL;
    uint16_t port = listen_loopback(r, server, n, &l);

    assert_int_equal(reactor_connect_tcp(r, "127.0.0.1", port, client, sni, 0, on_connected, n), 0);
    run_until_stopped(r);
    reactor_listener_free(l);
}

static void test_reactor_tls_listener_accepts_h2_client(void **state)
{
    struct reactor *r = *state;
    struct ssl_ctx_st *server = server_ctx(tls_files.self_cert, tls_files.self_key, NULL, false);
    struct ssl_ctx_st *client = client_ctx(tls_files.self_cert, NULL, NULL);
    struct net n = {.r = r};

    tls_exchange(r, server, client, "localhost", &n);
    assert_false(n.client_failed);
    assert_string_equal(n.received, "ping");
    assert_true(n.server_peer.tls);
    assert_false(n.server_peer.client_verified);
    assert_string_equal(n.server_peer.client_cn, "");
    assert_true(alpn_is_h2(n.server));
    assert_true(n.client_peer.tls);
    assert_true(n.client_peer.client_verified); /* outbound: the server's certificate */
    assert_string_equal(n.client_peer.client_cn, "localhost");
    assert_true(alpn_is_h2(n.client));
    net_close(&n);
    SSL_CTX_free(server);
    SSL_CTX_free(client);
}

static void test_reactor_tls_mtls_verifies_client_certificate(void **state)
{
    struct reactor *r = *state;
    struct ssl_ctx_st *server =
        server_ctx(tls_files.server_cert, tls_files.server_key, tls_files.ca_cert, true);
    struct ssl_ctx_st *client =
        client_ctx(tls_files.ca_cert, tls_files.client_cert, tls_files.client_key);
    struct net n = {.r = r};

    tls_exchange(r, server, client, "127.0.0.1", &n);
    assert_false(n.client_failed);
    assert_string_equal(n.received, "ping");
    assert_true(n.server_peer.client_verified);
    assert_string_equal(n.server_peer.client_cn, "alice");
    assert_string_equal(n.server_peer.client_ou, "eng,ops");
    net_close(&n);
    SSL_CTX_free(server);
    SSL_CTX_free(client);
}

static void test_reactor_tls_refuses_client_without_certificate(void **state)
{
    struct reactor *r = *state;
    struct ssl_ctx_st *server =
        server_ctx(tls_files.server_cert, tls_files.server_key, tls_files.ca_cert, true);
    struct ssl_ctx_st *client = client_ctx(tls_files.ca_cert, NULL, NULL);
    struct net n = {.r = r};
    int log = log_capture_begin();

    /* TLS 1.3 clients finish before the server checks their certificate:
     * the refusal then arrives as an alert on the open connection. */
    tls_exchange(r, server, client, "localhost", &n);
    assert_true(log_capture_end(log, "event=reactor.tls_handshake_failed"));
    assert_true(n.client_failed);
    assert_int_equal(n.accepts, 0);
    net_close(&n);
    SSL_CTX_free(server);
    SSL_CTX_free(client);
}

static void test_reactor_tls_refuses_client_without_alpn(void **state)
{
    struct reactor *r = *state;
    struct ssl_ctx_st *server = server_ctx(tls_files.self_cert, tls_files.self_key, NULL, false);
    SSL_CTX *client = SSL_CTX_new(TLS_client_method()); /* offers no ALPN at all */
    struct net n = {.r = r};
    int log = log_capture_begin();

    tls_exchange(r, server, client, NULL, &n);
    assert_true(log_capture_end(log, "ALPN h2"));
    assert_true(n.client_failed);
    assert_int_equal(n.accepts, 0);
    net_close(&n);
    SSL_CTX_free(server);
    SSL_CTX_free(client);
}

static void test_reactor_connect_tcp_tls_rejects_wrong_server_name(void **state)
{
    struct reactor *r = *state;
    struct ssl_ctx_st *server = server_ctx(tls_files.self_cert, tls_files.self_key, NULL, false);
    struct ssl_ctx_st *client = client_ctx(tls_files.self_cert, NULL, NULL);
    struct net n = {.r = r};

    tls_exchange(r, server, client, "elsewhere.example", &n);
    assert_true(n.client_failed);
    assert_null(n.client);
    assert_non_null(strstr(n.err, "certificate verify failed"));
    assert_int_equal(n.accepts, 0);
    net_close(&n);
    SSL_CTX_free(server);
    SSL_CTX_free(client);
}

static void test_reactor_connect_tcp_tls_refused_reports_error(void **state)
{
    struct reactor *r = *state;
    struct ssl_ctx_st *client = client_ctx(tls_files.self_cert, NULL, NULL);
    struct net n = {.r = r};
    struct reactor_listener *l = NULL;
    uint16_t port = listen_loopback(r, NULL, &n, &l);

    reactor_listener_free(l);
    assert_int_equal(
        reactor_connect_tcp(r, "127.0.0.1", port, client, "localhost", 0, on_connected, &n), 0);
    run_until_stopped(r);
    assert_true(n.client_failed);
    assert_null(n.client);
    assert_string_equal(n.err, strerror(ECONNREFUSED));
    SSL_CTX_free(client);
}

/* Accepts and then never reads nor answers. */
static void on_accepted_mute(struct bufferevent *bev, const struct reactor_peer *peer, void *arg)
{
    struct net *n = arg;

    n->accepts++;
    n->server = bev;
}

static void test_reactor_connect_tcp_tls_times_out(void **state)
{
    struct reactor *r = *state;
    struct ssl_ctx_st *client = client_ctx(tls_files.self_cert, NULL, NULL);
    struct net n = {.r = r};
    struct reactor_listener *l = NULL;
    uint16_t port;

    assert_int_equal(reactor_listen_tcp(r, "127.0.0.1", 0, NULL, on_accepted_mute, &n, &l), 0);
    port = reactor_listener_port(l);

    assert_int_equal(
        reactor_connect_tcp(r, "127.0.0.1", port, client, "localhost", 50, on_connected, &n), 0);
    run_until_stopped(r);
    assert_true(n.client_failed);
    assert_string_equal(n.err, "timeout");
    net_close(&n);
    reactor_listener_free(l);
    SSL_CTX_free(client);
}

static void test_reactor_tls_server_ctx_reports_bad_key(void **state)
{
    char err[256] = "";

    assert_null(reactor_tls_server_ctx(tls_files.self_cert, tls_files.other_key, NULL, false, err,
                                       sizeof(err)));
    assert_non_null(strstr(err, "does not match"));
    assert_null(reactor_tls_server_ctx("/nonexistent.crt", tls_files.self_key, NULL, false, err,
                                       sizeof(err)));
    assert_non_null(strstr(err, "/nonexistent.crt"));
    assert_null(reactor_tls_client_ctx(NULL, tls_files.client_cert, NULL, false, err, sizeof(err)));
}

static void test_reactor_listener_set_tls_switches_context(void **state)
{
    struct reactor *r = *state;
    struct ssl_ctx_st *self = server_ctx(tls_files.self_cert, tls_files.self_key, NULL, false);
    struct ssl_ctx_st *signed_ctx =
        server_ctx(tls_files.server_cert, tls_files.server_key, NULL, false);
    struct ssl_ctx_st *client = client_ctx(tls_files.ca_cert, NULL, NULL);
    struct net n = {.r = r};
    struct reactor_listener *l = NULL;
    uint16_t port = listen_loopback(r, self, &n, &l);

    /* The listener holds its own references from here on. */
    reactor_listener_set_tls(l, signed_ctx);
    SSL_CTX_free(self);
    SSL_CTX_free(signed_ctx);
    assert_int_equal(
        reactor_connect_tcp(r, "127.0.0.1", port, client, "localhost", 0, on_connected, &n), 0);
    run_until_stopped(r);
    assert_false(n.client_failed);
    assert_string_equal(n.received, "ping");
    net_close(&n);
    reactor_listener_free(l);
    SSL_CTX_free(client);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup_reactor, teardown_reactor)
    const struct CMUnitTest tests[] = {
        T(test_reactor_timer_arm_fires_once),
        T(test_reactor_timer_arm_periodic_fires_until_disarmed),
        T(test_reactor_timer_disarm_prevents_firing),
        T(test_reactor_timer_rearm_inside_callback),
        T(test_reactor_timer_free_inside_callback_is_safe),
        T(test_reactor_on_signal_runs_callback_on_loop),
        T(test_reactor_on_signal_second_registration_replaces),
        T(test_reactor_on_signal_rejects_sigkill),
        T(test_reactor_spawn_reports_exit_status),
        T(test_reactor_spawn_exec_failure_exits_127),
        T(test_reactor_child_kill_sends_signal),
        T(test_reactor_spawn_redirects_stdout_sets_cwd_and_env),
        T(test_reactor_spawn_resets_ignored_signals),
        T(test_reactor_child_detach_skips_callback),
        cmocka_unit_test(test_reactor_free_kills_running_children),
        T(test_reactor_sd_notify_sends_datagram_to_path),
        T(test_reactor_sd_notify_supports_abstract_names),
        T(test_reactor_sd_notify_without_socket_is_noop),
        cmocka_unit_test(test_reactor_sd_watchdog_usec_reads_env),
        T(test_reactor_listen_tcp_accepts_connect_tcp),
        T(test_reactor_listen_tcp_accepts_ipv6_loopback),
        T(test_reactor_listen_tcp_dual_stack_reports_ipv4_peer),
        T(test_reactor_listen_tcp_reports_address_in_use),
        T(test_reactor_listen_tcp_rejects_host_names),
        T(test_reactor_connect_tcp_refused_reports_error),
        T(test_reactor_listen_unix_accepts_connect_unix),
        T(test_reactor_listen_unix_replaces_stale_socket),
        T(test_reactor_listen_unix_refuses_to_delete_other_files),
        T(test_reactor_connect_unix_missing_socket_reports_error),
        T(test_reactor_connect_unix_stale_socket_reports_refused),
        cmocka_unit_test(test_reactor_free_releases_leftovers),
        T(test_reactor_tls_listener_accepts_h2_client),
        T(test_reactor_tls_mtls_verifies_client_certificate),
        T(test_reactor_tls_refuses_client_without_certificate),
        T(test_reactor_tls_refuses_client_without_alpn),
        T(test_reactor_connect_tcp_tls_rejects_wrong_server_name),
        T(test_reactor_connect_tcp_tls_refused_reports_error),
        T(test_reactor_connect_tcp_tls_times_out),
        cmocka_unit_test(test_reactor_tls_server_ctx_reports_bad_key),
        T(test_reactor_listener_set_tls_switches_context),
    };
#undef T
    return cmocka_run_group_tests(tests, setup_files, teardown_files);
}
