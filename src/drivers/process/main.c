/* openshell-driver-process: flags, startup, signals and shutdown of the
 * process compute driver (see process.h). */
#include "drivers/process/process.h"

#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "http2/grpc.h"
#include "reactor/reactor.h"

#define SHUTDOWN_MAX_GRACE_S 10 /* per sandbox, when the driver stops */

static const char usage_text[] =
    "Usage: openshell-driver-process --socket PATH --state-dir DIR [options]\n"
    "\n"
    "Serves openshell.compute.v1.ComputeDriver on a Unix socket and runs each\n"
    "sandbox as openshell-supervisor in its own Linux namespaces.\n"
    "\n"
    "  --socket PATH            Unix socket to listen on (required)\n"
    "  --state-dir DIR          sandbox state directory (required)\n"
    "  --name NAME              driver name reported to the gateway (default: process)\n"
    "  --supervisor PATH        openshell-supervisor binary (default: next to this one)\n"
    "  --rootfs DIR             root filesystem for sandboxes (default: the host's /)\n"
    "  --allow-host-network     let driver_config network=\"host\" be used\n"
    "  --gateway-endpoint URL   exported to sandboxes as OPENSHELL_ENDPOINT\n"
    "  --log-level LEVEL        error, warn, info (default), debug, trace\n"
    "  --log-format FORMAT      text (default) or json\n"
    "  --help, --version\n";

struct driver_main {
    struct process_driver d;
    char *socket_path, *state_dir, *supervisor, *rootfs;
    int lock_fd; /* <state-dir>/driver.lock, held while we run */
    int signals;
};

/* ---- flags ------------------------------------------------------------------- */

enum {
    OPT_SOCKET = 1000,
    OPT_STATE_DIR,
    OPT_NAME,
    OPT_SUPERVISOR,
    OPT_ROOTFS,
    OPT_HOST_NET,
    OPT_ENDPOINT,
    OPT_LOG_LEVEL,
    OPT_LOG_FORMAT,
    OPT_HELP,
    OPT_VERSION,
};

static const struct option long_opts[] = {
    {"socket", required_argument, NULL, OPT_SOCKET},
    {"state-dir", required_argument, NULL, OPT_STATE_DIR},
    {"name", required_argument, NULL, OPT_NAME},
    {"supervisor", required_argument, NULL, OPT_SUPERVISOR},
    {"rootfs", required_argument, NULL, OPT_ROOTFS},
    {"allow-host-network", no_argument, NULL, OPT_HOST_NET},
    {"gateway-endpoint", required_argument, NULL, OPT_ENDPOINT},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

static int bad_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "openshell-driver-process: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'openshell-driver-process --help'.\n");
    return 2;
}

static int set_log_option(int opt, const char *v)
{
    enum log_level lvl;

    if (opt == OPT_LOG_LEVEL) {
        if (log_level_parse(v, &lvl) != 0)
            return bad_usage("unknown log level '%s'", v);
        log_set_level(lvl);
    } else if (strcmp(v, "text") == 0 || strcmp(v, "json") == 0) {
        log_set_format(v[0] == 'j' ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT);
    } else {
        return bad_usage("unknown log format '%s' (text or json)", v);
    }
    return 0;
}

static int check_flags(int argc, char **argv, const struct process_driver_opts *o)
{
    if (optind < argc)
        return bad_usage("unexpected argument '%s'", argv[optind]);
    if (o->socket_path == NULL || o->socket_path[0] == '\0')
        return bad_usage("%s", "--socket is required");
    if (o->state_dir == NULL || o->state_dir[0] == '\0')
        return bad_usage("%s", "--state-dir is required");
    if (o->name[0] == '\0' || strchr(o->name, '/') != NULL)
        return bad_usage("invalid --name '%s'", o->name);
    return -1;
}

/* Returns -1 to run, or an exit code. */
static int parse_flags(int argc, char **argv, struct process_driver_opts *o)
{
    int c, rv;

    while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
        switch (c) {
        case OPT_SOCKET:
            o->socket_path = optarg;
            break;
        case OPT_STATE_DIR:
            o->state_dir = optarg;
            break;
        case OPT_NAME:
            o->name = optarg;
            break;
        case OPT_SUPERVISOR:
            o->supervisor = optarg;
            break;
        case OPT_ROOTFS:
            o->rootfs = optarg;
            break;
        case OPT_HOST_NET:
            o->allow_host_network = true;
            break;
        case OPT_ENDPOINT:
            o->gateway_endpoint = optarg;
            break;
        case OPT_LOG_LEVEL:
        case OPT_LOG_FORMAT:
            if ((rv = set_log_option(c, optarg)) != 0)
                return rv;
            break;
        case OPT_HELP:
            fputs(usage_text, stdout);
            return 0;
        case OPT_VERSION:
            printf("openshell-driver-process %s\n", PACKAGE_VERSION);
            return 0;
        default:
            return bad_usage("%s", "invalid option");
        }
    }
    return check_flags(argc, argv, o);
}

/* ---- paths ---------------------------------------------------------------------- */

/* mkdir -p: missing parents 0755, the last component |mode|. */
static int make_dirs(const char *path, mode_t mode)
{
    char *p = gw_xstrdup(path);
    int rv = 0;

    for (char *s = p + 1; *s != '\0'; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            rv = -1;
        *s = '/';
    }
    if (mkdir(p, mode) != 0 && errno != EEXIST)
        rv = -1;
    free(p);
    return rv;
}

static char *real_path(const char *path, const char *what)
{
    char *r = realpath(path, NULL);

    if (r == NULL)
        log_error("process.bad_path", LF_STR("what", what), LF_STR("path", path),
                  LF_STR("error", strerror(errno)));
    return r;
}

/* The socket's directory exists and every path is absolute and resolved:
 * the sandbox setup uses them after other mounts changed the view. */
static int resolve_paths(struct driver_main *m)
{
    struct process_driver_opts *o = &m->d.o;
    char *copy = gw_xstrdup(o->socket_path), *dir = dirname(copy);
    char *base_copy = gw_xstrdup(o->socket_path), *base = basename(base_copy);
    int rv = -1;

    if (make_dirs(o->state_dir, 0700) != 0 || make_dirs(dir, 0755) != 0)
        log_error("process.mkdir_failed", LF_STR("error", strerror(errno)));
    if ((m->state_dir = real_path(o->state_dir, "state-dir")) == NULL ||
        (m->d.socket_dir = real_path(dir, "socket directory")) == NULL)
        goto out;
    m->socket_path = gw_xasprintf("%s/%s", m->d.socket_dir, base);
    if (o->rootfs != NULL && (m->rootfs = real_path(o->rootfs, "rootfs")) == NULL)
        goto out;
    o->state_dir = m->state_dir;
    o->socket_path = m->socket_path;
    o->rootfs = m->rootfs;
    rv = 0;
out:
    free(copy);
    free(base_copy);
    return rv;
}

/* Default: openshell-supervisor in the directory of our own binary. */
static int resolve_supervisor(struct driver_main *m)
{
    struct process_driver_opts *o = &m->d.o;
    char self[PATH_MAX], *path;
    ssize_t n;

    if (o->supervisor == NULL) {
        n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n <= 0) {
            log_error("process.self_path_failed", LF_STR("error", strerror(errno)));
            return -1;
        }
        self[n] = '\0';
        path = gw_xasprintf("%s/openshell-supervisor", dirname(self));
    } else {
        path = gw_xstrdup(o->supervisor);
    }
    m->supervisor = real_path(path, "supervisor");
    free(path);
    if (m->supervisor == NULL)
        return -1;
    if (access(m->supervisor, X_OK) != 0) {
        log_error("process.bad_path", LF_STR("what", "supervisor"), LF_STR("path", m->supervisor),
                  LF_STR("error", strerror(errno)));
        return -1;
    }
    o->supervisor = m->supervisor;
    return 0;
}

/* One driver per state directory: a second one would start the same
 * sandboxes and sweep the first one's cgroups. */
static int lock_state_dir(struct driver_main *m)
{
    char *path = gw_xasprintf("%s/driver.lock", m->state_dir);

    m->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (m->lock_fd < 0 || flock(m->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        log_error("process.state_dir_locked", LF_STR("path", path),
                  LF_STR("error", errno == EWOULDBLOCK ? "another openshell-driver-process uses "
                                                         "this state directory"
                                                       : strerror(errno)));
        free(path);
        return -1;
    }
    free(path);
    return 0;
}

/* ---- signals and shutdown ---------------------------------------------------------- */

static void on_idle(struct process_driver *d)
{
    log_info("process.sandboxes_stopped");
    reactor_stop(d->r);
}

static void on_terminate(int signo, void *arg)
{
    struct driver_main *m = arg;
    struct process_driver *d = &m->d;

    if (m->signals++ > 0) {
        log_warn("process.stop_now", LF_STR("signal", strsignal(signo)));
        process_sandboxes_shutdown(d, 0, true);
        return;
    }
    log_info("process.stopping", LF_STR("signal", strsignal(signo)));
    (void)reactor_sd_notify(d->r, "STOPPING=1");
    process_service_stop(d);
    d->on_idle = on_idle;
    process_sandboxes_shutdown(d, SHUTDOWN_MAX_GRACE_S, false);
    if (process_sandboxes_idle(d))
        on_idle(d);
}

static void on_hangup(int signo, void *arg)
{
    log_info("process.sighup_ignored");
}

static int startup(struct driver_main *m)
{
    struct process_driver *d = &m->d;

    if (resolve_paths(m) != 0 || resolve_supervisor(m) != 0 || lock_state_dir(m) != 0)
        return -1;
    d->sandboxes_dir = gw_xasprintf("%s/sandboxes", m->state_dir);
    d->trash_dir = gw_xasprintf("%s/trash", m->state_dir);
    d->root_mnt = gw_xasprintf("%s/root", m->state_dir);
    d->r = reactor_new();
    if (d->r == NULL)
        return -1;
    if (reactor_on_signal(d->r, SIGTERM, on_terminate, m) != 0 ||
        reactor_on_signal(d->r, SIGINT, on_terminate, m) != 0 ||
        reactor_on_signal(d->r, SIGHUP, on_hangup, m) != 0)
        return -1;
    process_cgroups_probe(d);
    if (process_sandboxes_load(d) != 0 || process_service_start(d) != 0)
        return -1;
    log_info("process.ready", LF_STR("socket", d->o.socket_path), LF_STR("name", d->o.name),
             LF_STR("version", PACKAGE_VERSION), LF_STR("state_dir", d->o.state_dir),
             LF_STR("supervisor", d->o.supervisor), LF_UINT("sandboxes", d->n_sandboxes),
             LF_BOOL("allow_host_network", d->o.allow_host_network));
    (void)reactor_sd_notify(d->r, "READY=1");
    return 0;
}

static void teardown(struct driver_main *m)
{
    struct process_driver *d = &m->d;

    if (d->r != NULL) {
        process_service_stop(d);
        process_sandboxes_free(d);
    }
    if (d->srv != NULL)
        grpc_server_free(d->srv);
    if (d->r != NULL)
        reactor_free(d->r); /* kills and reaps sandboxes still running */
    process_cgroups_free(d);
    free(d->sandboxes_dir);
    free(d->trash_dir);
    free(d->root_mnt);
    free(d->socket_dir);
    free(m->socket_path);
    free(m->state_dir);
    free(m->supervisor);
    free(m->rootfs);
    if (m->lock_fd > 0)
        close(m->lock_fd);
}

int main(int argc, char **argv)
{
    struct driver_main m;
    int code;

    memset(&m, 0, sizeof(m));
    m.d.o.name = "process";
    code = parse_flags(argc, argv, &m.d.o);
    if (code >= 0)
        return code;
    code = 1;
    if (startup(&m) == 0) {
        if (reactor_run(m.d.r) == 0)
            code = 0;
        else
            log_error("process.loop_failed");
    }
    log_info("process.stopped", LF_INT("exit_code", code));
    teardown(&m);
    return code;
}
