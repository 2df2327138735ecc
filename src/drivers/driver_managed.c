/* The lifecycle guard of a managed driver: the gateway runs the driver
 * program, restarts it with backoff when it dies, and on shutdown stops it
 * and removes its socket. Nothing here speaks gRPC: the client only learns
 * "the endpoint went away" and keeps reconnecting. */
#include "drivers/driver_int.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "reactor/reactor.h"

#define BACKOFF_FIRST_MS 250
#define BACKOFF_MAX_MS   8000
#define STABLE_AFTER_MS  10000 /* a run this long resets the backoff */
#define MAX_ARGS         32

struct driver_guard {
    struct reactor *r;
    struct driver_plan plan; /* owned copy */
    char *gateway_endpoint;
    char **extra_args;
    struct reactor_child *child; /* NULL while not running */
    struct reactor_timer *respawn;
    struct reactor_timer *kill_timer;
    uint64_t started_us;
    unsigned backoff_ms;
    unsigned restarts;
    bool stopping;
    void (*on_exit)(void *arg, const char *why);
    void *arg;
    void (*done)(void *arg);
    void *done_arg;
};

static void guard_spawn(struct driver_guard *g);
static void on_kill_timer(struct reactor_timer *t, void *arg);

static char *dup_or_null(const char *s)
{
    return s != NULL ? gw_xstrdup(s) : NULL;
}

static void guard_free(struct driver_guard *g)
{
    reactor_timer_free(g->respawn);
    reactor_timer_free(g->kill_timer);
    driver_plan_clear(&g->plan);
    free(g->gateway_endpoint);
    if (g->extra_args != NULL) {
        for (char **a = g->extra_args; *a != NULL; a++)
            free(*a);
        free(g->extra_args);
    }
    free(g);
}

static void describe_status(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exited with code %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(buf, len, "ended (status %d)", status);
}

static void on_child_exit(struct reactor_child *c, pid_t pid, int status, void *arg)
{
    struct driver_guard *g = arg;
    char why[96];

    describe_status(status, why, sizeof(why));
    g->child = NULL;
    if (g->stopping) {
        log_info("driver.stopped", LF_STR("name", g->plan.name), LF_INT("pid", pid),
                 LF_STR("how", why));
        reactor_timer_disarm(g->kill_timer);
        unlink(g->plan.socket_path);
        void (*done)(void *) = g->done;
        void *done_arg = g->done_arg;
        guard_free(g);
        if (done != NULL)
            done(done_arg);
        return;
    }
    uint64_t ran_ms = (gw_now_mono_us() - g->started_us) / 1000;
    if (ran_ms >= STABLE_AFTER_MS)
        g->backoff_ms = BACKOFF_FIRST_MS;
    log_error("driver.exited", LF_STR("name", g->plan.name), LF_INT("pid", pid), LF_STR("how", why),
              LF_UINT("ran_ms", ran_ms), LF_UINT("restart_in_ms", g->backoff_ms));
    g->on_exit(g->arg, why);
    reactor_timer_arm(g->respawn, g->backoff_ms);
    g->backoff_ms = g->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : g->backoff_ms * 2;
}

static void on_respawn(struct reactor_timer *t, void *arg)
{
    struct driver_guard *g = arg;
    if (!g->stopping && g->child == NULL) {
        g->restarts++;
        guard_spawn(g);
    }
}

static void guard_spawn(struct driver_guard *g)
{
    const char *argv[MAX_ARGS + 1];
    size_t n = 0;

    argv[n++] = g->plan.program;
    argv[n++] = "--socket";
    argv[n++] = g->plan.socket_path;
    argv[n++] = "--state-dir";
    argv[n++] = g->plan.state_dir;
    argv[n++] = "--name";
    argv[n++] = g->plan.name;
    if (g->plan.supervisor != NULL) {
        argv[n++] = "--supervisor";
        argv[n++] = g->plan.supervisor;
    }
    if (g->plan.rootfs != NULL) {
        argv[n++] = "--rootfs";
        argv[n++] = g->plan.rootfs;
    }
    if (g->plan.allow_host_network)
        argv[n++] = "--allow-host-network";
    if (g->gateway_endpoint != NULL) {
        argv[n++] = "--gateway-endpoint";
        argv[n++] = g->gateway_endpoint;
    }
    for (char **a = g->extra_args; a != NULL && *a != NULL && n < MAX_ARGS; a++)
        argv[n++] = *a;
    argv[n] = NULL;

    /* The driver owns its state dir; the directory of its socket is ours. */
    char *dir = gw_xstrdup(g->plan.socket_path);
    char *slash = strrchr(dir, '/');
    if (slash != NULL && slash != dir) {
        *slash = '\0';
        if (mkdir(dir, 0700) != 0 && errno != EEXIST)
            log_warn("driver.mkdir_failed", LF_STR("path", dir), LF_STR("error", strerror(errno)));
    }
    free(dir);

    struct reactor_spawn_opts o = {
        .argv = argv,
        .stdout_fd = -1,
        .stderr_fd = -1,
        /* Its own group: a terminal's ^C reaches the gateway, which then
         * stops the driver in order. Dies with the gateway if that is
         * killed outright; it restarts its sandboxes when run again. */
        .new_process_group = true,
        .die_with_parent = true,
    };
    g->started_us = gw_now_mono_us();
    if (reactor_spawn(g->r, &o, on_child_exit, g, &g->child) != 0) {
        log_error("driver.spawn_failed", LF_STR("name", g->plan.name),
                  LF_STR("program", g->plan.program), LF_STR("error", strerror(errno)));
        g->child = NULL;
        reactor_timer_arm(g->respawn, g->backoff_ms);
        return;
    }
    log_info("driver.spawned", LF_STR("name", g->plan.name), LF_STR("program", g->plan.program),
             LF_INT("pid", reactor_child_pid(g->child)), LF_STR("socket", g->plan.socket_path),
             LF_UINT("restarts", g->restarts));
}

struct driver_guard *driver_guard_new(struct reactor *r, const struct driver_plan *plan,
                                      const char *gateway_endpoint, const char *const *extra_args,
                                      void (*on_exit)(void *arg, const char *why), void *arg)
{
    struct driver_guard *g = gw_xcalloc(1, sizeof(*g));
    g->r = r;
    g->plan.name = gw_xstrdup(plan->name);
    g->plan.socket_path = gw_xstrdup(plan->socket_path);
    g->plan.managed = true;
    g->plan.program = gw_xstrdup(plan->program);
    g->plan.state_dir = gw_xstrdup(plan->state_dir);
    g->plan.supervisor = dup_or_null(plan->supervisor);
    g->plan.rootfs = dup_or_null(plan->rootfs);
    g->plan.allow_host_network = plan->allow_host_network;
    g->gateway_endpoint = dup_or_null(gateway_endpoint);
    if (extra_args != NULL) {
        size_t n = 0;
        while (extra_args[n] != NULL)
            n++;
        g->extra_args = gw_xcalloc(n + 1, sizeof(char *));
        for (size_t i = 0; i < n; i++)
            g->extra_args[i] = gw_xstrdup(extra_args[i]);
    }
    g->on_exit = on_exit;
    g->arg = arg;
    g->backoff_ms = BACKOFF_FIRST_MS;
    g->respawn = reactor_timer_new(r, on_respawn, g);
    g->kill_timer = reactor_timer_new(r, on_kill_timer, g);
    guard_spawn(g);
    return g;
}

static void on_kill_timer(struct reactor_timer *t, void *arg)
{
    struct driver_guard *g = arg;
    if (g->child != NULL) {
        log_warn("driver.kill", LF_STR("name", g->plan.name),
                 LF_INT("pid", reactor_child_pid(g->child)));
        (void)reactor_child_kill(g->child, SIGKILL);
    }
}

static void on_stop_deferred(struct reactor_timer *t, void *arg)
{
    struct driver_guard *g = arg;
    unlink(g->plan.socket_path);
    void (*done)(void *) = g->done;
    void *done_arg = g->done_arg;
    guard_free(g);
    if (done != NULL)
        done(done_arg);
}

void driver_guard_stop(struct driver_guard *g, unsigned grace_ms, void (*done)(void *arg),
                       void *arg)
{
    g->stopping = true;
    g->done = done;
    g->done_arg = arg;
    reactor_timer_disarm(g->respawn);
    if (g->child == NULL) {
        /* Not running (between restarts): finish from the loop. */
        reactor_timer_free(g->kill_timer);
        g->kill_timer = reactor_timer_new(g->r, on_stop_deferred, g);
        reactor_timer_arm(g->kill_timer, 0);
        return;
    }
    if (reactor_child_kill(g->child, SIGTERM) != 0)
        log_warn("driver.signal_failed", LF_STR("name", g->plan.name),
                 LF_STR("error", strerror(errno)));
    reactor_timer_arm(g->kill_timer, grace_ms);
}

int driver_guard_pid(const struct driver_guard *g)
{
    return g->child != NULL ? (int)reactor_child_pid(g->child) : 0;
}
