/*
 * embedded_probe: drives store_embedded on a reactor for e2e/test_embedded_db.py
 * until the gateway wires it in.
 *
 *   embedded_probe STATE_DIR [PG_BIN]
 *
 * Prints "READY <conninfo>" once the cluster accepts connections, or
 * "FAILED <error>" and exits 1. On SIGTERM or SIGINT it stops the cluster,
 * prints "STOPPED" and exits 0. Gateway logs go to stderr.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/base.h"
#include "reactor/reactor.h"
#include "store/store.h"

#define PROBE_STOP_TIMEOUT_MS 10000

struct probe {
    struct reactor *r;
    struct store_embedded *e; /* NULL once stop was requested */
    int exit_code;
};

static void on_stopped(void *arg)
{
    struct probe *p = arg;

    printf("STOPPED\n");
    fflush(stdout);
    reactor_stop(p->r);
}

static void stop(struct probe *p)
{
    struct store_embedded *e = p->e;

    if (e == NULL)
        return;
    p->e = NULL;
    store_embedded_stop(e, PROBE_STOP_TIMEOUT_MS, on_stopped, p);
}

static void on_started(struct store_embedded *e, bool ok, const char *conninfo, const char *err,
                       void *arg)
{
    struct probe *p = arg;

    if (ok) {
        printf("READY %s\n", conninfo);
        fflush(stdout);
        return;
    }
    printf("FAILED %s\n", err);
    fflush(stdout);
    p->exit_code = 1;
    stop(p);
}

static void on_signal(int signo, void *arg)
{
    stop(arg);
}

int main(int argc, char **argv)
{
    struct probe p = {0};

    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s STATE_DIR [PG_BIN]\n", argv[0]);
        return 2;
    }
    log_set_level(LOG_DEBUG);
    p.r = reactor_new();
    if (p.r == NULL)
        return 1;
    if (reactor_on_signal(p.r, SIGTERM, on_signal, &p) != 0 ||
        reactor_on_signal(p.r, SIGINT, on_signal, &p) != 0)
        return 1;
    p.e = store_embedded_start(p.r, argv[1], argc > 2 ? argv[2] : "/usr/lib/postgresql/15/bin",
                               on_started, &p);
    if (reactor_run(p.r) != 0)
        p.exit_code = 1;
    reactor_free(p.r);
    return p.exit_code;
}
