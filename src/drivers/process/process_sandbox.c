/* Sandboxes of the process driver: the state directory, the lifecycle
 * (start, exit, stop, delete), the namespace setup the child does between
 * clone() and exec(), and cgroup limits.
 *
 * A sandbox is one child process, `openshell-supervisor`, started by
 * reactor_spawn() with clone flags for new mount, PID, UTS, IPC (and
 * network) namespaces. Everything the child needs is prepared here in the
 * parent (a struct child_plan) so that the child only makes system calls.
 *
 * One pipe carries the outcome (reactor report_fd): a setup failure
 * arrives as a struct reactor_spawn_failure; otherwise the child hands the
 * pipe to the supervisor (--ready-fd), which writes one byte once it has
 * its signal handlers. Only then is the sandbox Running: PID 1 of a
 * namespace drops signals it has no handler for, so a SIGTERM sent
 * earlier would be lost. End of file without that byte means the
 * supervisor died first; the exit status tells the rest. */
#include "drivers/process/process.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "reactor/reactor.h"

#define SB_FILE_SPEC     "sandbox.pb"
#define SB_FILE_TOKEN    "token"
#define SB_FILE_STATE    "state"
#define SB_FILE_LOG      "supervisor.log"
#define SB_DIR_WORK      "workdir"
#define SB_MAX_SPEC      (8 << 20)
#define SB_MAX_TOKEN     (64 << 10)
#define IN_SANDBOX_DIR   "/run/openshell"
#define IN_SANDBOX_JWT   "/run/openshell/sandbox.jwt"
#define IN_SANDBOX_SUP   "/run/openshell/openshell-supervisor"
#define DEFAULT_PATH     "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define PLAN_MAX_ENTRIES 256
#define PLAN_MAX_MASKS   4
#define CG_RETRY_MS      200
#define CG_RETRY_TRIES   50
#define CPU_PERIOD_US    100000
#define OOM_CHECK_MS     20 /* after an OOM event, until the kill shows in oom_kill */
#define OOM_CHECKS       50

/* ---- types --------------------------------------------------------------------- */

enum cg_ctrl { CG_MEMORY, CG_CPU, CG_PIDS, CG_NCTRL };
static const char *const cg_ctrl_names[CG_NCTRL] = {"memory", "cpu", "pids"};

struct cg_pending {
    char *path;
    int tries;
    struct cg_pending *next;
};

/* What the host lets us use, found once at startup. A controller is used
 * from cgroup v2 when it is enabled there, else from its v1 hierarchy. */
struct process_cgroups {
    char *v2_base;              /* <cgroup2>/<own>/openshell-<name>, or NULL */
    bool v2[CG_NCTRL];          /* controller enabled for v2_base's children */
    char *v1_base[CG_NCTRL];    /* <v1 mount>/<own>/openshell-<name>, or NULL */
    struct cg_pending *pending; /* removals that were busy, retried by a timer */
};

/* One sandbox's cgroups for the current run. */
struct sb_cgroup {
    char *dirs[1 + CG_NCTRL]; /* created directories */
    size_t n_dirs;
    char *mem_dir; /* where memory (and OOM kills) are accounted */
    bool mem_v2;
    bool has[CG_NCTRL];
    uint64_t oom_base; /* oom_kill count when the run started */
    int oom_efd;       /* v1: eventfd signalled on OOM, else -1 */
    struct event *oom_ev;
    struct reactor_timer *oom_timer; /* re-reads oom_kill after an OOM event */
    int oom_checks;
};

enum sb_state {
    SB_STOPPED,  /* no process; desired stopped (or shutdown) */
    SB_STARTING, /* cloned; setup not confirmed yet */
    SB_RUNNING,  /* the supervisor was executed */
    SB_EXITED,   /* ended on its own or failed to start: see the Ready condition */
};

struct sb_cond {
    const char *status; /* "True" / "False" */
    char reason[32];
    char *message;
    char ltt[40]; /* RFC 3339, changed when status or reason changes */
};

struct process_sandbox {
    struct process_driver *d;
    struct process_sandbox *prev, *next;
    char id[37];
    char *dir;
    Openshell__Compute__V1__DriverSandbox *stored; /* as received, token stripped */
    char *token;                                   /* NULL when none */
    struct process_options opts;
    struct process_limits lim;
    char hostname[64];
    char *invalid; /* the stored sandbox no longer validates: why */
    enum sb_state state;
    bool want_running; /* desired state, as persisted */
    bool stopping;     /* we asked the process to go away */
    bool deleting;
    bool oom_killed;
    char instance_id[37];
    struct reactor_child *child; /* non-NULL while a process exists */
    pid_t pid;
    int report_fd;
    struct event *report_ev;
    bool setup_failed;
    struct reactor_spawn_failure failure;
    struct reactor_timer *kill_timer;
    struct sb_cgroup cg;
    struct sb_cond ready, suspended;
    struct process_waiter *stop_waiters, *delete_waiters;
};

static void sb_start(struct process_sandbox *sb);

/* ---- small helpers -------------------------------------------------------------- */

static void now_rfc3339(char out[40])
{
    int64_t ms = gw_clock_wall_ms();
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    char base[32];

    gmtime_r(&s, &tm);
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, 40, "%s.%03dZ", base, (int)(ms % 1000));
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;

    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Writes |dir|/|name| through a temporary file and rename(), so a crash
 * leaves the old or the new content, never a mix. Returns 0 or -1 (errno). */
static int write_atomic(const char *dir, const char *name, const void *data, size_t len,
                        mode_t mode)
{
    char *tmp = gw_xasprintf("%s/.%s.tmp", dir, name);
    char *path = gw_xasprintf("%s/%s", dir, name);
    int rv = -1, fd, saved;

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        goto out;
    if (fchmod(fd, mode) != 0 || write_all(fd, data, len) != 0) {
        saved = errno;
        close(fd);
        unlink(tmp);
        errno = saved;
        goto out;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        saved = errno;
        unlink(tmp);
        errno = saved;
        goto out;
    }
    rv = 0;
out:
    free(tmp);
    free(path);
    return rv;
}

/* Reads a whole small file. Caller owns |*out| (NUL-terminated), free with
 * free(). Returns the length, or -1 (errno; EFBIG above |max|). */
static ssize_t read_file(const char *path, size_t max, char **out)
{
    struct gw_buf b = {0};
    char chunk[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    ssize_t n;

    if (fd < 0)
        return -1;
    while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || b.len + (size_t)n > max) {
            int saved = n < 0 ? errno : EFBIG;
            close(fd);
            gw_buf_free(&b);
            errno = saved;
            return -1;
        }
        gw_buf_append(&b, chunk, (size_t)n);
    }
    close(fd);
    if (b.data != NULL)
        gw_buf_cstr(&b); /* may move the data: NUL-terminates it */
    *out = b.data != NULL ? b.data : gw_xstrdup("");
    return (ssize_t)b.len;
}

static int write_text(const char *dir, const char *file, const char *value)
{
    char *path = gw_xasprintf("%s/%s", dir, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    int rv = -1, saved = 0;

    if (fd >= 0) {
        rv = write_all(fd, value, strlen(value));
        saved = errno;
        close(fd);
        errno = saved;
    }
    free(path);
    return rv;
}

/* Value of "key N" in a flat keyed file (memory.events, memory.oom_control). */
static uint64_t read_keyed(const char *dir, const char *file, const char *key)
{
    char *path = gw_xasprintf("%s/%s", dir, file);
    char *text = NULL;
    uint64_t v = 0;
    size_t klen = strlen(key);

    if (read_file(path, 1 << 16, &text) >= 0) {
        for (char *line = text; line != NULL && *line != '\0';) {
            char *nl = strchr(line, '\n');
            if (strncmp(line, key, klen) == 0 && line[klen] == ' ')
                v = strtoull(line + klen + 1, NULL, 10);
            line = nl ? nl + 1 : NULL;
        }
    }
    free(text);
    free(path);
    return v;
}

static void spawn_rm(struct process_driver *d, const char *path)
{
    const char *argv[] = {"/bin/rm", "-rf", "--one-file-system", "--", path, NULL};
    struct reactor_spawn_opts o = {.argv = argv, .stdout_fd = -1, .stderr_fd = -1};

    if (reactor_spawn(d->r, &o, NULL, NULL, NULL) != 0)
        log_error("process.remove_failed", LF_STR("path", path), LF_STR("error", strerror(errno)));
}

/* Moves |path| into the trash (one rename, so the name is gone at once) and
 * removes it from a child process: a large workdir must not stall the loop. */
static void remove_tree(struct process_driver *d, const char *path)
{
    char uuid[37];
    char *dst;

    gw_uuid4(uuid);
    dst = gw_xasprintf("%s/%s", d->trash_dir, uuid);
    if (rename(path, dst) != 0) {
        log_warn("process.trash_failed", LF_STR("path", path), LF_STR("error", strerror(errno)));
        spawn_rm(d, path);
    } else {
        spawn_rm(d, dst);
    }
    free(dst);
}

/* ---- cgroups: discovery ------------------------------------------------------------ */

/* In-place decoding of the octal escapes of /proc/self/mountinfo. */
static void unescape_octal(char *s)
{
    char *o = s;

    for (; *s != '\0'; s++) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '7' && s[2] >= '0' && s[3] >= '0') {
            *o++ = (char)(((s[1] - '0') << 6) | ((s[2] - '0') << 3) | (s[3] - '0'));
            s += 3;
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
}

static bool list_has(const char *list, const char *item, char sep)
{
    size_t n = strlen(item);

    for (const char *p = list; p != NULL && *p != '\0';) {
        const char *e = strchr(p, sep);
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && strncmp(p, item, n) == 0)
            return true;
        p = e ? e + 1 : NULL;
    }
    return false;
}

struct cg_mount {
    char *mountpoint;
    char *root; /* the part of the hierarchy mounted there */
};

/* Finds the cgroup2 mount (|ctrl| NULL) or the v1 mount carrying |ctrl|. */
static bool find_cg_mount(const char *ctrl, struct cg_mount *out)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char *line = NULL;
    size_t cap = 0;
    bool found = false;

    if (f == NULL)
        return false;
    while (!found && getline(&line, &cap, f) > 0) {
        char *fields[32];
        size_t n = 0, sep = 0;
        for (char *save = NULL, *t = strtok_r(line, " \n", &save); t && n < 32;
             t = strtok_r(NULL, " \n", &save)) {
            if (strcmp(t, "-") == 0 && sep == 0)
                sep = n;
            fields[n++] = t;
        }
        if (sep == 0 || n < sep + 4)
            continue;
        const char *fstype = fields[sep + 1], *opts = fields[sep + 3];
        if (ctrl == NULL ? strcmp(fstype, "cgroup2") == 0
                         : strcmp(fstype, "cgroup") == 0 && list_has(opts, ctrl, ',')) {
            unescape_octal(fields[3]);
            unescape_octal(fields[4]);
            out->root = gw_xstrdup(fields[3]);
            out->mountpoint = gw_xstrdup(fields[4]);
            found = true;
        }
    }
    free(line);
    fclose(f);
    return found;
}

/* Our own cgroup path in the hierarchy with |ctrl| (NULL: the v2 line). */
static char *own_cgroup(const char *ctrl)
{
    FILE *f = fopen("/proc/self/cgroup", "re");
    char *line = NULL, *res = NULL;
    size_t cap = 0;

    if (f == NULL)
        return NULL;
    while (res == NULL && getline(&line, &cap, f) > 0) {
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (c2 == NULL)
            continue;
        *c2 = '\0';
        c2[strcspn(c2 + 1, "\n") + 1] = '\0';
        if (ctrl == NULL ? (strncmp(line, "0:", 2) == 0 && c1[1] == '\0')
                         : list_has(c1 + 1, ctrl, ','))
            res = gw_xstrdup(c2 + 1);
    }
    free(line);
    fclose(f);
    return res;
}

/* <mountpoint> + (own path relative to the mounted root). */
static char *cg_own_dir(const char *ctrl)
{
    struct cg_mount m = {0};
    char *own, *res = NULL;
    const char *rel;
    size_t rlen;

    if (!find_cg_mount(ctrl, &m))
        return NULL;
    own = own_cgroup(ctrl);
    if (own != NULL) {
        rlen = strlen(m.root);
        rel = own;
        if (strcmp(m.root, "/") != 0 && strncmp(own, m.root, rlen) == 0)
            rel = own + rlen;
        if (strcmp(rel, "/") == 0)
            rel = "";
        res = gw_xasprintf("%s%s", m.mountpoint, rel);
    }
    free(own);
    free(m.root);
    free(m.mountpoint);
    return res;
}

static bool file_exists(const char *dir, const char *file)
{
    char *p = gw_xasprintf("%s/%s", dir, file);
    bool ok = access(p, F_OK) == 0;

    free(p);
    return ok;
}

/* The driver's parent cgroup: "openshell-<name>-<hash of the state dir>",
 * so drivers with other state directories on the same host (even under the
 * same name) never share, and never sweep, each other's cgroups. */
static char *cg_base_name(const struct process_driver *d)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */

    for (const char *p = d->o.state_dir; *p != '\0'; p++) {
        h ^= (unsigned char)*p;
        h *= 1099511628211ULL;
    }
    return gw_xasprintf("openshell-%s-%012llx", d->o.name, (unsigned long long)(h >> 16));
}

static void cg_v1_probe(struct process_driver *d, enum cg_ctrl c)
{
    static const char *const probe_file[CG_NCTRL] = {"memory.limit_in_bytes", "cpu.cfs_quota_us",
                                                     "pids.max"};
    char *own = cg_own_dir(cg_ctrl_names[c]);
    char *base, *name;

    if (own == NULL)
        return;
    name = cg_base_name(d);
    base = gw_xasprintf("%s/%s", own, name);
    free(name);
    free(own);
    if ((mkdir(base, 0755) != 0 && errno != EEXIST) || !file_exists(base, probe_file[c])) {
        log_warn("process.cgroup_unusable", LF_STR("controller", cg_ctrl_names[c]),
                 LF_STR("path", base), LF_STR("error", strerror(errno)));
        free(base);
        return;
    }
    d->cg->v1_base[c] = base;
}

/* Whether our cgroup holds no process but us (so we may move into a leaf). */
static bool cg_only_us(const char *dir)
{
    char *p = gw_xasprintf("%s/cgroup.procs", dir);
    char *text = NULL;
    bool only = false;

    if (read_file(p, 1 << 20, &text) >= 0)
        only = strtol(text, NULL, 10) == (long)getpid() && strchr(text, '\n') != NULL &&
               strchr(text, '\n')[1] == '\0';
    free(text);
    free(p);
    return only;
}

/* cgroup v2 forbids processes in a cgroup whose children get controllers
 * (except at the root): when we are alone in ours, move into a leaf. */
static int cg_v2_enable(struct process_driver *d, const char *dir, const char *ctrl)
{
    char *plus = gw_xasprintf("+%s", ctrl);
    int rv = write_text(dir, "cgroup.subtree_control", plus);

    if (rv != 0 && errno == EBUSY && cg_only_us(dir)) {
        char *leaf = gw_xasprintf("%s/openshell-%s-driver", dir, d->o.name);
        if ((mkdir(leaf, 0755) == 0 || errno == EEXIST) &&
            write_text(leaf, "cgroup.procs", "0") == 0)
            rv = write_text(dir, "cgroup.subtree_control", plus);
        free(leaf);
    }
    free(plus);
    return rv;
}

static void cg_v2_probe(struct process_driver *d)
{
    char *own = cg_own_dir(NULL);
    char *avail = NULL, *path, *base, *name;

    if (own == NULL)
        return;
    path = gw_xasprintf("%s/cgroup.controllers", own);
    if (read_file(path, 4096, &avail) < 0)
        goto out;
    name = cg_base_name(d);
    base = gw_xasprintf("%s/%s", own, name);
    free(name);
    for (int c = 0; c < CG_NCTRL; c++) {
        avail[strcspn(avail, "\n")] = '\0';
        if (!list_has(avail, cg_ctrl_names[c], ' '))
            continue;
        if (cg_v2_enable(d, own, cg_ctrl_names[c]) != 0 ||
            ((mkdir(base, 0755) != 0 && errno != EEXIST)) ||
            write_text(base, "cgroup.subtree_control",
                       c == CG_MEMORY ? "+memory"
                       : c == CG_CPU  ? "+cpu"
                                      : "+pids") != 0) {
            log_warn("process.cgroup_unusable", LF_STR("controller", cg_ctrl_names[c]),
                     LF_STR("path", base), LF_STR("error", strerror(errno)));
            continue;
        }
        d->cg->v2[c] = true;
    }
    if (d->cg->v2[CG_MEMORY] || d->cg->v2[CG_CPU] || d->cg->v2[CG_PIDS])
        d->cg->v2_base = base;
    else
        free(base);
out:
    free(avail);
    free(path);
    free(own);
}

static void cg_schedule_retry(struct process_driver *d, const char *path);

/* Left over from a previous run of the driver: its sandboxes died with it
 * (parent-death signal); kill whatever is still inside and remove. */
static void cg_sweep(struct process_driver *d, const char *base)
{
    DIR *dir = opendir(base);
    struct dirent *e;

    if (dir == NULL)
        return;
    while ((e = readdir(dir)) != NULL) {
        char *path, *procs = NULL, *text = NULL;
        if (e->d_type != DT_DIR || e->d_name[0] == '.')
            continue;
        path = gw_xasprintf("%s/%s", base, e->d_name);
        if (rmdir(path) != 0 && errno == EBUSY) {
            procs = gw_xasprintf("%s/cgroup.procs", path);
            if (read_file(procs, 1 << 20, &text) >= 0) {
                for (char *p = text; *p != '\0';) {
                    char *end;
                    long pid = strtol(p, &end, 10);
                    if (end == p)
                        break;
                    if (pid > 1)
                        (void)kill((pid_t)pid, SIGKILL);
                    p = end + (*end == '\n');
                }
            }
            cg_schedule_retry(d, path);
        }
        free(text);
        free(procs);
        free(path);
    }
    closedir(dir);
}

void process_cgroups_probe(struct process_driver *d)
{
    struct process_cgroups *cg = gw_xcalloc(1, sizeof(*cg));

    d->cg = cg;
    cg_v2_probe(d);
    for (int c = 0; c < CG_NCTRL; c++) {
        if (!cg->v2[c])
            cg_v1_probe(d, c);
    }
    if (cg->v2_base)
        cg_sweep(d, cg->v2_base);
    for (int c = 0; c < CG_NCTRL; c++) {
        if (cg->v1_base[c])
            cg_sweep(d, cg->v1_base[c]);
    }
    for (int c = 0; c < CG_NCTRL; c++) {
        const char *how = cg->v2[c] ? "cgroup2" : cg->v1_base[c] ? "cgroup1" : "none";
        log_info("process.cgroup", LF_STR("controller", cg_ctrl_names[c]), LF_STR("using", how),
                 LF_STR("path", cg->v2[c] ? cg->v2_base : cg->v1_base[c]));
    }
}

void process_cgroups_free(struct process_driver *d)
{
    struct process_cgroups *cg = d->cg;

    if (cg == NULL)
        return;
    /* Last chance for busy removals, then the (now empty) parents. */
    while (cg->pending != NULL) {
        struct cg_pending *p = cg->pending;
        cg->pending = p->next;
        (void)rmdir(p->path);
        free(p->path);
        free(p);
    }
    if (cg->v2_base != NULL)
        (void)rmdir(cg->v2_base);
    free(cg->v2_base);
    for (int c = 0; c < CG_NCTRL; c++) {
        if (cg->v1_base[c] != NULL)
            (void)rmdir(cg->v1_base[c]);
        free(cg->v1_base[c]);
    }
    free(cg);
    d->cg = NULL;
}

/* ---- cgroups: removal retries ----------------------------------------------------------- */

static void cg_retry_tick(struct reactor_timer *t, void *arg)
{
    struct process_driver *d = arg;
    struct cg_pending **pp = &d->cg->pending;

    while (*pp != NULL) {
        struct cg_pending *p = *pp;
        if (rmdir(p->path) == 0 || errno == ENOENT || ++p->tries >= CG_RETRY_TRIES) {
            if (p->tries >= CG_RETRY_TRIES)
                log_warn("process.cgroup_remove_failed", LF_STR("path", p->path),
                         LF_STR("error", strerror(errno)));
            *pp = p->next;
            free(p->path);
            free(p);
            continue;
        }
        pp = &p->next;
    }
    if (d->cg->pending == NULL)
        reactor_timer_disarm(t);
}

static void cg_schedule_retry(struct process_driver *d, const char *path)
{
    struct cg_pending *p = gw_xcalloc(1, sizeof(*p));

    p->path = gw_xstrdup(path);
    p->next = d->cg->pending;
    d->cg->pending = p;
    if (d->cg_retry == NULL)
        d->cg_retry = reactor_timer_new(d->r, cg_retry_tick, d);
    if (!reactor_timer_armed(d->cg_retry))
        reactor_timer_arm_periodic(d->cg_retry, CG_RETRY_MS);
}

/* A new run reuses the directory: it must not be removed under it. */
static void cg_unschedule(struct process_driver *d, const char *path)
{
    for (struct cg_pending **pp = &d->cg->pending; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->path, path) == 0) {
            struct cg_pending *p = *pp;
            *pp = p->next;
            free(p->path);
            free(p);
            return;
        }
    }
}

/* ---- cgroups: one sandbox ---------------------------------------------------------------- */

static void sb_oom_event(evutil_socket_t fd, short what, void *arg);

static int cg_add_dir(struct process_sandbox *sb, const char *base, char *err, size_t errlen)
{
    char *dir = gw_xasprintf("%s/%s", base, sb->id);

    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cgroup %s: %s", dir, strerror(errno));
        free(dir);
        return -1;
    }
    cg_unschedule(sb->d, dir);
    sb->cg.dirs[sb->cg.n_dirs++] = dir;
    return 0;
}

/* Writes one limit; |required| failures abort the start. */
static int cg_set(const char *dir, const char *file, const char *value, bool required, char *err,
                  size_t errlen)
{
    if (write_text(dir, file, value) == 0 || !required)
        return 0;
    snprintf(err, errlen, "cgroup %s/%s: %s", dir, file, strerror(errno));
    return -1;
}

static int cg_limits_v2(struct process_sandbox *sb, const char *dir, char *err, size_t errlen)
{
    const struct process_limits *l = &sb->lim;
    const struct process_cgroups *cg = sb->d->cg;
    char v[64];

    if (cg->v2[CG_MEMORY]) {
        snprintf(v, sizeof(v), "%llu", (unsigned long long)l->memory_limit);
        if (cg_set(dir, "memory.max", l->memory_limit ? v : "max", l->memory_limit != 0, err,
                   errlen) != 0)
            return -1;
        (void)cg_set(dir, "memory.swap.max", l->memory_limit ? "0" : "max", false, err, errlen);
        (void)cg_set(dir, "memory.oom.group", "1", false, err, errlen);
    }
    if (cg->v2[CG_CPU]) {
        uint64_t shares = GW_MAX(2, l->cpu_request_milli * 1024 / 1000);
        snprintf(v, sizeof(v), "%llu %d",
                 (unsigned long long)GW_MAX(1000, l->cpu_limit_milli * CPU_PERIOD_US / 1000),
                 CPU_PERIOD_US);
        if (cg_set(dir, "cpu.max", l->cpu_limit_milli ? v : "max 100000", l->cpu_limit_milli != 0,
                   err, errlen) != 0)
            return -1;
        snprintf(v, sizeof(v), "%llu",
                 (unsigned long long)(1 + (GW_MIN(shares, 262144) - 2) * 9999 / 262142));
        (void)cg_set(dir, "cpu.weight", l->cpu_request_milli ? v : "100", false, err, errlen);
    }
    if (cg->v2[CG_PIDS]) {
        snprintf(v, sizeof(v), "%u", sb->opts.pids_limit);
        return cg_set(dir, "pids.max", v, true, err, errlen);
    }
    return 0;
}

static int cg_limits_v1(struct process_sandbox *sb, enum cg_ctrl c, const char *dir, char *err,
                        size_t errlen)
{
    const struct process_limits *l = &sb->lim;
    char v[64];

    switch (c) {
    case CG_MEMORY:
        snprintf(v, sizeof(v), "%llu", (unsigned long long)l->memory_limit);
        /* memsw must stay >= the memory limit: raise it first when lowering... */
        (void)cg_set(dir, "memory.memsw.limit_in_bytes", "-1", false, err, errlen);
        if (cg_set(dir, "memory.limit_in_bytes", l->memory_limit ? v : "-1", l->memory_limit != 0,
                   err, errlen) != 0)
            return -1;
        /* ...then no swap beyond it (only when swap accounting is on). */
        if (l->memory_limit)
            (void)cg_set(dir, "memory.memsw.limit_in_bytes", v, false, err, errlen);
        return 0;
    case CG_CPU:
        snprintf(v, sizeof(v), "%llu",
                 (unsigned long long)GW_MAX(1000, l->cpu_limit_milli * CPU_PERIOD_US / 1000));
        (void)cg_set(dir, "cpu.cfs_period_us", "100000", false, err, errlen);
        if (cg_set(dir, "cpu.cfs_quota_us", l->cpu_limit_milli ? v : "-1", l->cpu_limit_milli != 0,
                   err, errlen) != 0)
            return -1;
        snprintf(v, sizeof(v), "%llu",
                 (unsigned long long)GW_MAX(2, l->cpu_request_milli * 1024 / 1000));
        (void)cg_set(dir, "cpu.shares", l->cpu_request_milli ? v : "1024", false, err, errlen);
        return 0;
    default:
        snprintf(v, sizeof(v), "%u", sb->opts.pids_limit);
        return cg_set(dir, "pids.max", v, true, err, errlen);
    }
}

/* v1 has no memory.oom.group: an eventfd tells us about any OOM kill, and
 * we then end the whole sandbox, so both versions behave the same. */
static void cg_watch_oom_v1(struct process_sandbox *sb)
{
    char *ctl = gw_xasprintf("%s/memory.oom_control", sb->cg.mem_dir);
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int ofd = open(ctl, O_RDONLY | O_CLOEXEC);
    char v[32];

    if (efd >= 0 && ofd >= 0) {
        snprintf(v, sizeof(v), "%d %d", efd, ofd);
        if (write_text(sb->cg.mem_dir, "cgroup.event_control", v) == 0) {
            sb->cg.oom_efd = efd;
            sb->cg.oom_ev =
                event_new(reactor_base(sb->d->r), efd, EV_READ | EV_PERSIST, sb_oom_event, sb);
            event_add(sb->cg.oom_ev, NULL);
            efd = -1;
        }
    }
    if (efd >= 0) {
        log_warn("sandbox.oom_watch_failed", LF_STR("id", sb->id),
                 LF_STR("error", strerror(errno)));
        close(efd);
    }
    if (ofd >= 0)
        close(ofd);
    free(ctl);
}

static uint64_t cg_oom_count(const struct process_sandbox *sb)
{
    if (sb->cg.mem_dir == NULL)
        return 0;
    return read_keyed(sb->cg.mem_dir, sb->cg.mem_v2 ? "memory.events" : "memory.oom_control",
                      "oom_kill");
}

static int cg_prepare_v1(struct process_sandbox *sb, char *err, size_t errlen)
{
    const struct process_cgroups *cg = sb->d->cg;

    for (int c = 0; c < CG_NCTRL; c++) {
        if (cg->v2[c] || cg->v1_base[c] == NULL)
            continue;
        if (cg_add_dir(sb, cg->v1_base[c], err, errlen) != 0 ||
            cg_limits_v1(sb, c, sb->cg.dirs[sb->cg.n_dirs - 1], err, errlen) != 0)
            return -1;
        sb->cg.has[c] = true;
        if (c == CG_MEMORY)
            sb->cg.mem_dir = sb->cg.dirs[sb->cg.n_dirs - 1];
    }
    return 0;
}

/* Creates the sandbox's cgroups and writes its limits. Returns 0 or -1
 * (|err| set; directories already created are released by cg_release). */
static int cg_prepare(struct process_sandbox *sb, char *err, size_t errlen)
{
    const struct process_cgroups *cg = sb->d->cg;

    sb->cg.oom_efd = -1;
    if (cg->v2_base != NULL) {
        if (cg_add_dir(sb, cg->v2_base, err, errlen) != 0 ||
            cg_limits_v2(sb, sb->cg.dirs[0], err, errlen) != 0)
            return -1;
        for (int c = 0; c < CG_NCTRL; c++)
            sb->cg.has[c] = cg->v2[c];
        if (cg->v2[CG_MEMORY]) {
            sb->cg.mem_dir = sb->cg.dirs[0];
            sb->cg.mem_v2 = true;
        }
    }
    if (cg_prepare_v1(sb, err, errlen) != 0)
        return -1;
    sb->cg.oom_base = cg_oom_count(sb);
    if (sb->cg.mem_dir != NULL && !sb->cg.mem_v2)
        cg_watch_oom_v1(sb);
    return 0;
}

/* After the run: stop watching and remove the directories (retried later
 * when the kernel still counts the dead processes). */
static void cg_release(struct process_sandbox *sb)
{
    if (sb->cg.oom_ev != NULL) {
        event_free(sb->cg.oom_ev);
        sb->cg.oom_ev = NULL;
    }
    if (sb->cg.oom_efd >= 0)
        close(sb->cg.oom_efd);
    sb->cg.oom_efd = -1;
    reactor_timer_free(sb->cg.oom_timer);
    for (size_t i = 0; i < sb->cg.n_dirs; i++) {
        if (rmdir(sb->cg.dirs[i]) != 0 && errno != ENOENT)
            cg_schedule_retry(sb->d, sb->cg.dirs[i]);
        free(sb->cg.dirs[i]);
    }
    memset(&sb->cg, 0, sizeof(sb->cg));
    sb->cg.oom_efd = -1;
}

/* ---- the child: between clone() and exec() ------------------------------------------------
 *
 * Only system calls from here on (no malloc, no stdio): everything was
 * prepared in the plan by the parent.
 */

struct plan_entry {
    char *name;
    char type;    /* 'd' directory, 'f' file, 'l' symlink */
    char *target; /* symlink target */
};

struct child_plan {
    const char *root_src; /* "/" or --rootfs, entries are bound from here */
    const char *mnt;      /* where the new root is assembled (<state>/root) */
    struct plan_entry entries[PLAN_MAX_ENTRIES];
    size_t n_entries;
    const char *masks[PLAN_MAX_MASKS]; /* host paths hidden under an empty tmpfs */
    size_t n_masks;
    const char *workdir;
    const char *supervisor;
    const char *hostname;
    char tmp_opts[64];
    bool isolate_net;
    const char *token;
    size_t token_len;
    char *cg_procs[1 + CG_NCTRL];
    size_t n_cg;
    bool set_as;
    rlim_t as_bytes;
    int report_rd; /* the parent's end of the report pipe, closed in the child */
    int report_wr;
};

static char step_buf[60];

/* Joins |a| and |b| into |out| (PATH_MAX). Returns false when too long. */
static bool cpath(char *out, const char *a, const char *b)
{
    size_t n = 0;

    for (; *a != '\0' && n < PATH_MAX - 1; a++)
        out[n++] = *a;
    if (n > 0 && out[n - 1] == '/' && *b == '/')
        n--;
    for (; *b != '\0' && n < PATH_MAX - 1; b++)
        out[n++] = *b;
    out[n] = '\0';
    return *a == '\0' && *b == '\0';
}

/* Names a failed step that includes a path, e.g. "bind /usr". */
static const char *step_with(const char *what, const char *path)
{
    size_t n = 0;

    for (; *what != '\0' && n < sizeof(step_buf) - 1; what++)
        step_buf[n++] = *what;
    for (; *path != '\0' && n < sizeof(step_buf) - 1; path++)
        step_buf[n++] = *path;
    step_buf[n] = '\0';
    return step_buf;
}

#define CHILD_TRY(expr, name)                                                                      \
    do {                                                                                           \
        if ((expr) != 0) {                                                                         \
            *step = (name);                                                                        \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)

static int child_join_cgroups(const struct child_plan *p, const char **step)
{
    for (size_t i = 0; i < p->n_cg; i++) {
        int fd = open(p->cg_procs[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1) {
            *step = "join cgroup";
            return -1;
        }
        close(fd);
    }
    if (p->n_cg > 0)
        CHILD_TRY(unshare(CLONE_NEWCGROUP), "unshare cgroup namespace");
    if (p->set_as) {
        struct rlimit rl = {.rlim_cur = p->as_bytes, .rlim_max = p->as_bytes};
        CHILD_TRY(setrlimit(RLIMIT_AS, &rl), "setrlimit(RLIMIT_AS)");
    }
    return 0;
}

/* Binds one top-level entry of the source root, read-only. */
static int child_bind_entry(const struct child_plan *p, const struct plan_entry *e,
                            const char **step)
{
    struct mount_attr ro = {.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV};
    char src[PATH_MAX], dst[PATH_MAX], rel[PATH_MAX];
    int fd;

    if (!cpath(rel, "/", e->name) || !cpath(src, p->root_src, rel) || !cpath(dst, p->mnt, rel)) {
        errno = ENAMETOOLONG;
        *step = step_with("path ", rel);
        return -1;
    }
    if (e->type == 'l') {
        CHILD_TRY(symlink(e->target, dst), step_with("symlink ", rel));
        return 0;
    }
    if (e->type == 'd') {
        CHILD_TRY(mkdir(dst, 0755), step_with("mkdir ", rel));
        CHILD_TRY(mount(src, dst, NULL, MS_BIND | MS_REC, NULL), step_with("bind ", rel));
        CHILD_TRY(mount_setattr(AT_FDCWD, dst, AT_RECURSIVE, &ro, sizeof(ro)),
                  step_with("read-only ", rel));
        return 0;
    }
    fd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    CHILD_TRY(fd < 0, step_with("create ", rel));
    close(fd);
    CHILD_TRY(mount(src, dst, NULL, MS_BIND, NULL), step_with("bind ", rel));
    CHILD_TRY(mount(NULL, dst, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL),
              step_with("read-only ", rel));
    return 0;
}

/* Hides host paths (the driver's state and socket directories) that the
 * read-only view would otherwise show. Absent paths need no hiding. */
static int child_masks(const struct child_plan *p, const char **step)
{
    char dst[PATH_MAX];

    for (size_t i = 0; i < p->n_masks; i++) {
        if (!cpath(dst, p->mnt, p->masks[i]))
            continue;
        if (mount("tmpfs", dst, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  "size=4k,mode=0700") != 0 &&
            errno != ENOENT && errno != ENOTDIR) {
            *step = step_with("hide ", p->masks[i]);
            return -1;
        }
    }
    return 0;
}

static int child_mkdirs(const struct child_plan *p, const char **step)
{
    static const char *const dirs[] = {"/sandbox", "/tmp", "/proc", "/sys", "/dev", "/run"};
    char dst[PATH_MAX];

    for (size_t i = 0; i < GW_ARRAY_LEN(dirs); i++) {
        cpath(dst, p->mnt, dirs[i]);
        CHILD_TRY(mkdir(dst, 0755) != 0 && errno != EEXIST, step_with("mkdir ", dirs[i]));
    }
    return 0;
}

static int child_mount_at(const struct child_plan *p, const char *rel, const char *src,
                          const char *type, unsigned long flags, const char *data,
                          const char **step)
{
    char dst[PATH_MAX];

    cpath(dst, p->mnt, rel);
    CHILD_TRY(mount(src, dst, type, flags, data), step_with("mount ", rel));
    return 0;
}

/* A read-only bind of a path onto itself (parts of /proc; absent is fine). */
static int child_ro_self(const struct child_plan *p, const char *rel, const char **step)
{
    char dst[PATH_MAX];

    cpath(dst, p->mnt, rel);
    if (mount(dst, dst, NULL, MS_BIND | MS_REC, NULL) != 0) {
        if (errno == ENOENT)
            return 0;
        *step = step_with("bind ", rel);
        return -1;
    }
    CHILD_TRY(mount(NULL, dst, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL),
              step_with("read-only ", rel));
    return 0;
}

static int child_special_fs(const struct child_plan *p, const char **step)
{
    char dst[PATH_MAX];

    cpath(dst, p->mnt, "/sandbox");
    CHILD_TRY(mount(p->workdir, dst, NULL, MS_BIND, NULL), "bind /sandbox");
    CHILD_TRY(mount(NULL, dst, NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV, NULL),
              "remount /sandbox");
    if (child_mount_at(p, "/tmp", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, p->tmp_opts, step) ||
        child_mount_at(p, "/proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, step) ||
        child_ro_self(p, "/proc/sys", step) || child_ro_self(p, "/proc/sysrq-trigger", step) ||
        child_mount_at(p, "/sys", "sysfs", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       NULL, step))
        return -1;
    return 0;
}

/* A minimal /dev: a few host device nodes bound onto a tmpfs, a private
 * devpts and /dev/shm; the tmpfs is then made read-only. */
static int child_dev(const struct child_plan *p, const char **step)
{
    static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
    static const char *const links[][2] = {{"ptmx", "pts/ptmx"},
                                           {"fd", "/proc/self/fd"},
                                           {"stdin", "/proc/self/fd/0"},
                                           {"stdout", "/proc/self/fd/1"},
                                           {"stderr", "/proc/self/fd/2"}};
    char dev[PATH_MAX], dst[PATH_MAX], src[PATH_MAX];
    int fd;

    if (child_mount_at(p, "/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k",
                       step))
        return -1;
    cpath(dev, p->mnt, "/dev/");
    for (size_t i = 0; i < GW_ARRAY_LEN(nodes); i++) {
        cpath(dst, dev, nodes[i]);
        cpath(src, "/dev/", nodes[i]);
        fd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
        CHILD_TRY(fd < 0, step_with("create /dev/", nodes[i]));
        close(fd);
        CHILD_TRY(mount(src, dst, NULL, MS_BIND, NULL), step_with("bind /dev/", nodes[i]));
    }
    for (size_t i = 0; i < GW_ARRAY_LEN(links); i++) {
        cpath(dst, dev, links[i][0]);
        CHILD_TRY(symlink(links[i][1], dst), step_with("symlink /dev/", links[i][0]));
    }
    cpath(dst, dev, "pts");
    CHILD_TRY(mkdir(dst, 0755), "mkdir /dev/pts");
    CHILD_TRY(mount("devpts", dst, "devpts", MS_NOSUID | MS_NOEXEC,
                    "newinstance,ptmxmode=0666,mode=0620"),
              "mount /dev/pts");
    cpath(dst, dev, "shm");
    CHILD_TRY(mkdir(dst, 01777), "mkdir /dev/shm");
    CHILD_TRY(mount("tmpfs", dst, "tmpfs", MS_NOSUID | MS_NODEV, p->tmp_opts), "mount /dev/shm");
    cpath(dst, p->mnt, "/dev");
    CHILD_TRY(
        mount(NULL, dst, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC, NULL),
        "read-only /dev");
    return 0;
}

/* /run: private tmpfs with the token (root, 0400) and the supervisor. */
static int child_run(const struct child_plan *p, const char **step)
{
    char dir[PATH_MAX], dst[PATH_MAX];
    int fd;

    if (child_mount_at(p, "/run", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m",
                       step))
        return -1;
    cpath(dir, p->mnt, IN_SANDBOX_DIR);
    CHILD_TRY(mkdir(dir, 0700), "mkdir " IN_SANDBOX_DIR);
    if (p->token != NULL) {
        cpath(dst, p->mnt, IN_SANDBOX_JWT);
        fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0400);
        CHILD_TRY(fd < 0, "create " IN_SANDBOX_JWT);
        if (write(fd, p->token, p->token_len) != (ssize_t)p->token_len) {
            close(fd);
            *step = "write " IN_SANDBOX_JWT;
            return -1;
        }
        close(fd);
    }
    cpath(dst, p->mnt, IN_SANDBOX_SUP);
    fd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0500);
    CHILD_TRY(fd < 0, "create " IN_SANDBOX_SUP);
    close(fd);
    CHILD_TRY(mount(p->supervisor, dst, NULL, MS_BIND, NULL), "bind the supervisor");
    CHILD_TRY(mount(NULL, dst, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL),
              "read-only supervisor");
    return 0;
}

static int child_build_root(const struct child_plan *p, const char **step)
{
    CHILD_TRY(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), "make mounts private");
    CHILD_TRY(mount("tmpfs", p->mnt, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m"),
              "mount the root tmpfs");
    for (size_t i = 0; i < p->n_entries; i++) {
        if (child_bind_entry(p, &p->entries[i], step) != 0)
            return -1;
    }
    if (child_masks(p, step) || child_mkdirs(p, step) || child_special_fs(p, step) ||
        child_dev(p, step) || child_run(p, step))
        return -1;
    return 0;
}

static int child_loopback_up(const char **step)
{
    struct ifreq ifr;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    CHILD_TRY(fd < 0, "socket for lo");
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, "lo", 3);
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) != 0) {
        close(fd);
        *step = "get lo flags";
        return -1;
    }
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(fd, SIOCSIFFLAGS, &ifr) != 0) {
        close(fd);
        *step = "bring up lo";
        return -1;
    }
    close(fd);
    return 0;
}

static int child_enter_root(const struct child_plan *p, const char **step)
{
    CHILD_TRY(chdir(p->mnt), "chdir to the new root");
    CHILD_TRY(syscall(SYS_pivot_root, ".", "."), "pivot_root");
    CHILD_TRY(umount2(".", MNT_DETACH), "detach the old root");
    CHILD_TRY(chdir("/"), "chdir /");
    CHILD_TRY(mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL),
              "read-only /");
    CHILD_TRY(chdir("/sandbox"), "chdir /sandbox");
    return 0;
}

/* Docker's default set minus CAP_MKNOD: no CAP_SYS_ADMIN (so no remounting
 * the read-only root), no module loading, no raw I/O, no ptrace. */
#define CAPS_KEEP                                                                                  \
    ((1ULL << CAP_CHOWN) | (1ULL << CAP_DAC_OVERRIDE) | (1ULL << CAP_FOWNER) |                     \
     (1ULL << CAP_FSETID) | (1ULL << CAP_KILL) | (1ULL << CAP_SETGID) | (1ULL << CAP_SETUID) |     \
     (1ULL << CAP_SETPCAP) | (1ULL << CAP_NET_BIND_SERVICE) | (1ULL << CAP_NET_RAW) |              \
     (1ULL << CAP_SYS_CHROOT) | (1ULL << CAP_AUDIT_WRITE) | (1ULL << CAP_SETFCAP))

static int child_drop_caps(const char **step)
{
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];

    for (int cap = 0; cap < 64; cap++) {
        if (CAPS_KEEP & (1ULL << cap))
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
            if (errno == EINVAL)
                break; /* beyond the kernel's last capability */
            *step = "drop capabilities";
            return -1;
        }
    }
    memset(data, 0, sizeof(data));
    data[0].effective = data[0].permitted = data[0].inheritable = (uint32_t)CAPS_KEEP;
    data[1].effective = data[1].permitted = data[1].inheritable = (uint32_t)(CAPS_KEEP >> 32);
    CHILD_TRY(syscall(SYS_capset, &hdr, data), "capset");
    (void)prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    return 0;
}

/* PR_SET_PDEATHSIG is set, but the driver may have died before: then
 * nobody holds the report pipe's read end any more (POLLERR). */
static int child_check_parent(const struct child_plan *p, const char **step)
{
    struct pollfd pfd = {.fd = p->report_wr, .events = POLLOUT};

    close(p->report_rd);
    if (poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLERR)) {
        errno = ESRCH;
        *step = "waiting for the driver";
        return -1;
    }
    return 0;
}

static int child_setup(void *arg, const char **step)
{
    const struct child_plan *p = arg;

    umask(022);
    if (child_check_parent(p, step) != 0)
        return -1;
    /* Out of the driver's process group: a signal for the driver's group
     * (the gateway stops a managed driver that way) is not for sandboxes. */
    CHILD_TRY(setsid() < 0, "setsid");
    if (child_join_cgroups(p, step) != 0)
        return -1;
    CHILD_TRY(sethostname(p->hostname, strlen(p->hostname)), "sethostname");
    if (child_build_root(p, step) != 0)
        return -1;
    if (p->isolate_net && child_loopback_up(step) != 0)
        return -1;
    if (child_enter_root(p, step) != 0 || child_drop_caps(step) != 0)
        return -1;
    /* The supervisor keeps the report pipe to say when it is ready. */
    CHILD_TRY(fcntl(p->report_wr, F_SETFD, 0), "pass the ready pipe");
    return 0;
}

/* ---- the plan, in the parent --------------------------------------------------------------- */

static bool replaced_entry(const char *name)
{
    static const char *const own[] = {".", "..", "dev", "proc", "sys", "tmp", "run", "sandbox"};

    for (size_t i = 0; i < GW_ARRAY_LEN(own); i++) {
        if (strcmp(name, own[i]) == 0)
            return true;
    }
    return false;
}

static int plan_entries(struct child_plan *p, char *err, size_t errlen)
{
    DIR *dir = opendir(p->root_src);
    struct dirent *e;
    struct stat st;

    if (dir == NULL) {
        snprintf(err, errlen, "open root %s: %s", p->root_src, strerror(errno));
        return -1;
    }
    while ((e = readdir(dir)) != NULL) {
        char *path, link[PATH_MAX];
        struct plan_entry *pe;
        ssize_t n = 0;
        if (replaced_entry(e->d_name) || p->n_entries == PLAN_MAX_ENTRIES)
            continue;
        path = gw_xasprintf("%s/%s", p->root_src, e->d_name);
        if (lstat(path, &st) != 0)
            st.st_mode = 0;
        if (S_ISLNK(st.st_mode))
            n = readlink(path, link, sizeof(link) - 1);
        free(path);
        if (n < 0 || !(S_ISDIR(st.st_mode) || S_ISREG(st.st_mode) || S_ISLNK(st.st_mode)))
            continue;
        pe = &p->entries[p->n_entries++];
        pe->name = gw_xstrdup(e->d_name);
        pe->type = S_ISDIR(st.st_mode) ? 'd' : S_ISREG(st.st_mode) ? 'f' : 'l';
        if (pe->type == 'l') {
            link[n] = '\0';
            pe->target = gw_xstrdup(link);
        }
    }
    closedir(dir);
    return 0;
}

static void plan_free(struct child_plan *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->n_entries; i++) {
        free(p->entries[i].name);
        free(p->entries[i].target);
    }
    for (size_t i = 0; i < p->n_cg; i++)
        free(p->cg_procs[i]);
    free((char *)p->workdir);
    free(p);
}

static struct child_plan *plan_build(struct process_sandbox *sb, char *err, size_t errlen)
{
    struct process_driver *d = sb->d;
    struct child_plan *p = gw_xcalloc(1, sizeof(*p));

    p->root_src = d->o.rootfs ? d->o.rootfs : "/";
    p->mnt = d->root_mnt;
    p->workdir = gw_xasprintf("%s/" SB_DIR_WORK, sb->dir);
    p->supervisor = d->o.supervisor;
    p->hostname = sb->hostname;
    snprintf(p->tmp_opts, sizeof(p->tmp_opts), "mode=1777,size=%llu",
             (unsigned long long)sb->opts.tmp_size);
    p->isolate_net = sb->opts.network == PROCESS_NET_ISOLATED;
    p->token = sb->token;
    p->token_len = sb->token ? strlen(sb->token) : 0;
    p->masks[p->n_masks++] = d->o.state_dir;
    if (strcmp(d->socket_dir, "/") != 0)
        p->masks[p->n_masks++] = d->socket_dir;
    for (size_t i = 0; i < sb->cg.n_dirs; i++)
        p->cg_procs[p->n_cg++] = gw_xasprintf("%s/cgroup.procs", sb->cg.dirs[i]);
    if (sb->lim.memory_limit != 0 && !sb->cg.has[CG_MEMORY]) {
        p->set_as = true;
        p->as_bytes = (rlim_t)sb->lim.memory_limit;
    }
    if (plan_entries(p, err, errlen) != 0) {
        plan_free(p);
        return NULL;
    }
    return p;
}

/* ---- argv and environment -------------------------------------------------------------------- */

struct strv {
    char **v;
    size_t n, cap;
};

static void strv_push(struct strv *s, char *item)
{
    if (s->n + 2 > s->cap) {
        s->cap = s->cap ? s->cap * 2 : 16;
        s->v = gw_xrealloc(s->v, s->cap * sizeof(*s->v));
    }
    s->v[s->n++] = item;
    s->v[s->n] = NULL;
}

static void strv_free(struct strv *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
}

/* Sets KEY=VALUE, replacing an earlier KEY. */
static void env_set(struct strv *env, const char *key, const char *value)
{
    size_t klen = strlen(key);

    for (size_t i = 0; i < env->n; i++) {
        if (strncmp(env->v[i], key, klen) == 0 && env->v[i][klen] == '=') {
            free(env->v[i]);
            env->v[i] = gw_xasprintf("%s=%s", key, value);
            return;
        }
    }
    strv_push(env, gw_xasprintf("%s=%s", key, value));
}

static bool env_has(const struct strv *env, const char *key)
{
    size_t klen = strlen(key);

    for (size_t i = 0; i < env->n; i++) {
        if (strncmp(env->v[i], key, klen) == 0 && env->v[i][klen] == '=')
            return true;
    }
    return false;
}

/* template.environment, then spec.environment (the sandbox's own values
 * win), defaults for PATH and HOME, then the driver's OPENSHELL_* values,
 * which nothing overrides. */
static void build_env(const struct process_sandbox *sb, struct strv *env)
{
    const Openshell__Compute__V1__DriverSandboxSpec *spec = sb->stored->spec;
    const Openshell__Compute__V1__DriverSandboxTemplate *t = spec ? spec->template_ : NULL;

    for (size_t i = 0; t != NULL && i < t->n_environment; i++)
        env_set(env, t->environment[i]->key, t->environment[i]->value);
    for (size_t i = 0; spec != NULL && i < spec->n_environment; i++)
        env_set(env, spec->environment[i]->key, spec->environment[i]->value);
    if (!env_has(env, "PATH"))
        env_set(env, "PATH", DEFAULT_PATH);
    if (!env_has(env, "HOME"))
        env_set(env, "HOME", "/sandbox");
    env_set(env, "OPENSHELL_SANDBOX_ID", sb->id);
    env_set(env, "OPENSHELL_SANDBOX_NAME", sb->stored->name);
    env_set(env, "OPENSHELL_SANDBOX_WORKSPACE", sb->stored->workspace);
    env_set(env, "OPENSHELL_LOG_LEVEL", spec && spec->log_level[0] ? spec->log_level : "info");
    if (sb->d->o.gateway_endpoint != NULL)
        env_set(env, "OPENSHELL_ENDPOINT", sb->d->o.gateway_endpoint);
    if (sb->token != NULL)
        env_set(env, "OPENSHELL_SANDBOX_TOKEN_FILE", IN_SANDBOX_JWT);
}

static void build_argv(const struct process_sandbox *sb, int ready_fd, struct strv *argv)
{
    const Openshell__Compute__V1__DriverSandboxSpec *spec = sb->stored->spec;

    strv_push(argv, gw_xstrdup(IN_SANDBOX_SUP));
    strv_push(argv, gw_xstrdup("--ready-fd"));
    strv_push(argv, gw_xasprintf("%d", ready_fd));
    strv_push(argv, gw_xstrdup("--stop-grace-seconds"));
    strv_push(argv, gw_xasprintf("%u", sb->opts.stop_grace_seconds));
    if (spec != NULL && spec->tty)
        strv_push(argv, gw_xstrdup("--tty"));
    strv_push(argv, gw_xstrdup("--"));
    for (size_t i = 0; spec != NULL && i < spec->n_command; i++)
        strv_push(argv, gw_xstrdup(spec->command[i]));
}

/* ---- conditions and events ----------------------------------------------------------------------
 */

static void cond_set(struct sb_cond *c, const char *status, const char *reason, const char *message)
{
    if (c->status == NULL || strcmp(c->status, status) != 0 || strcmp(c->reason, reason) != 0)
        now_rfc3339(c->ltt);
    c->status = status;
    snprintf(c->reason, sizeof(c->reason), "%s", reason);
    free(c->message);
    c->message = gw_xstrdup(message);
}

static void sb_conditions(struct process_sandbox *sb, const char *ready_status, const char *reason,
                          const char *message)
{
    cond_set(&sb->ready, ready_status, reason, message);
    if (sb->state == SB_STOPPED)
        cond_set(&sb->suspended, "True", "Stopped", "the sandbox is stopped");
    else
        cond_set(&sb->suspended, "False", "Active", "the sandbox is not stopped");
}

static void sb_platform(struct process_sandbox *sb, const char *type, const char *reason,
                        const char *message, const char *const *meta)
{
    process_emit_platform(sb->d, sb->id, type, reason, message, meta);
}

void process_sandbox_snapshot(const struct process_sandbox *sb, struct process_snapshot *out)
{
    const struct sb_cond *cs[2] = {&sb->ready, &sb->suspended};
    static const char *const types[2] = {"Ready", "Suspended"};

    openshell__compute__v1__driver_sandbox__init(&out->sandbox);
    openshell__compute__v1__driver_sandbox_status__init(&out->status);
    out->sandbox.id = (char *)sb->id;
    out->sandbox.name = sb->stored->name;
    out->sandbox.workspace = sb->stored->workspace;
    out->sandbox.spec = sb->stored->spec;
    out->sandbox.status = &out->status;
    out->status.sandbox_name = sb->stored->name;
    out->status.instance_id = (char *)sb->instance_id;
    out->status.deleting = sb->deleting;
    for (int i = 0; i < 2; i++) {
        Openshell__Compute__V1__DriverCondition *c = &out->conds[i];
        openshell__compute__v1__driver_condition__init(c);
        c->type = (char *)types[i];
        c->status = (char *)(cs[i]->status ? cs[i]->status : "Unknown");
        c->reason = (char *)cs[i]->reason;
        c->message = cs[i]->message ? cs[i]->message : (char *)"";
        c->last_transition_time = (char *)cs[i]->ltt;
        out->cond_ptrs[i] = c;
    }
    out->status.n_conditions = 2;
    out->status.conditions = out->cond_ptrs;
}

static void sb_changed(struct process_sandbox *sb)
{
    process_emit_snapshot(sb->d, sb);
}

/* ---- persistence -------------------------------------------------------------------------------
 */

static void sb_persist_state(struct process_sandbox *sb, const char *state)
{
    char line[16];

    snprintf(line, sizeof(line), "%s\n", state);
    if (write_atomic(sb->dir, SB_FILE_STATE, line, strlen(line), 0600) != 0)
        log_error("process.persist_failed", LF_STR("id", sb->id), LF_STR("file", SB_FILE_STATE),
                  LF_STR("error", strerror(errno)));
}

static struct process_sandbox *sb_new(struct process_driver *d, const char *id)
{
    struct process_sandbox *sb = gw_xcalloc(1, sizeof(*sb));

    sb->d = d;
    snprintf(sb->id, sizeof(sb->id), "%s", id);
    sb->dir = gw_xasprintf("%s/%s", d->sandboxes_dir, id);
    sb->report_fd = -1;
    sb->cg.oom_efd = -1;
    sb->prev = d->sandboxes_tail;
    if (d->sandboxes_tail)
        d->sandboxes_tail->next = sb;
    else
        d->sandboxes = sb;
    d->sandboxes_tail = sb;
    d->n_sandboxes++;
    return sb;
}

static void sb_free(struct process_sandbox *sb)
{
    struct process_driver *d = sb->d;

    if (sb->prev)
        sb->prev->next = sb->next;
    else
        d->sandboxes = sb->next;
    if (sb->next)
        sb->next->prev = sb->prev;
    else
        d->sandboxes_tail = sb->prev;
    d->n_sandboxes--;
    if (sb->child != NULL)
        reactor_child_detach(sb->child);
    if (sb->report_ev)
        event_free(sb->report_ev);
    if (sb->report_fd >= 0)
        close(sb->report_fd);
    cg_release(sb);
    reactor_timer_free(sb->kill_timer);
    if (sb->stored)
        protobuf_c_message_free_unpacked(&sb->stored->base, NULL);
    if (sb->token) {
        explicit_bzero(sb->token, strlen(sb->token));
        free(sb->token);
    }
    free(sb->ready.message);
    free(sb->suspended.message);
    free(sb->invalid);
    free(sb->dir);
    free(sb);
}

static void waiters_complete(struct process_waiter **list, bool existed)
{
    while (*list != NULL) {
        struct process_waiter *w = *list;
        process_waiter_unlink(w);
        w->done(w, existed);
    }
}

static void waiter_link(struct process_waiter **list, struct process_waiter *w)
{
    w->next = *list;
    if (*list)
        (*list)->pprev = &w->next;
    w->pprev = list;
    *list = w;
}

void process_waiter_unlink(struct process_waiter *w)
{
    if (w->pprev == NULL)
        return;
    *w->pprev = w->next;
    if (w->next)
        w->next->pprev = w->pprev;
    w->next = NULL;
    w->pprev = NULL;
}

/* ---- lifecycle ----------------------------------------------------------------------------------
 */

static void sb_start_failed(struct process_sandbox *sb, const char *step, const char *detail)
{
    char msg[512];
    const char *meta[] = {"step", step, NULL};

    snprintf(msg, sizeof(msg), "sandbox setup failed: %s: %s", step, detail);
    log_error("sandbox.setup_failed", LF_STR("id", sb->id), LF_STR("step", step),
              LF_STR("error", detail));
    sb->state = SB_EXITED;
    sb_conditions(sb, "False", "SetupFailed", msg);
    sb_platform(sb, "Warning", "SetupFailed", msg, meta);
    sb_changed(sb);
}

static void sb_kill_timeout(struct reactor_timer *t, void *arg)
{
    struct process_sandbox *sb = arg;

    if (sb->child != NULL) {
        log_warn("sandbox.kill", LF_STR("id", sb->id), LF_INT("pid", sb->pid),
                 LF_STR("reason", "stop grace expired"));
        (void)reactor_child_kill(sb->child, SIGKILL);
    }
}

/* Asks the process to go: SIGTERM and SIGKILL after |grace_s|, or SIGKILL
 * at once (|grace_s| 0, or still in setup, where SIGTERM would be lost:
 * PID 1 of a namespace ignores signals it has no handler for). */
static void sb_kill(struct process_sandbox *sb, unsigned grace_s)
{
    if (sb->child == NULL)
        return;
    log_debug("sandbox.kill", LF_STR("id", sb->id), LF_INT("pid", sb->pid),
              LF_UINT("grace_s", grace_s), LF_BOOL("starting", sb->state == SB_STARTING));
    sb->stopping = true;
    if (grace_s == 0 || sb->state == SB_STARTING) {
        (void)reactor_child_kill(sb->child, SIGKILL);
        return;
    }
    if (sb->kill_timer != NULL && reactor_timer_armed(sb->kill_timer))
        return;
    (void)reactor_child_kill(sb->child, SIGTERM);
    if (sb->kill_timer == NULL)
        sb->kill_timer = reactor_timer_new(sb->d->r, sb_kill_timeout, sb);
    reactor_timer_arm(sb->kill_timer, (uint64_t)grace_s * 1000);
}

/* Any OOM kill inside ends the whole sandbox (what memory.oom.group does
 * on cgroup v2), so the sandbox reports OOMKilled instead of running on
 * with a dead main command. */
static void sb_oom_check(struct reactor_timer *t, void *arg)
{
    struct process_sandbox *sb = arg;

    if (sb->child == NULL || sb->oom_killed)
        return;
    if (cg_oom_count(sb) <= sb->cg.oom_base) {
        /* The event comes when the cgroup runs out, before the kill. */
        if (++sb->cg.oom_checks < OOM_CHECKS)
            reactor_timer_arm(t, OOM_CHECK_MS);
        return;
    }
    log_warn("sandbox.oom_killed", LF_STR("id", sb->id), LF_INT("pid", sb->pid));
    sb->oom_killed = true;
    (void)reactor_child_kill(sb->child, SIGKILL);
}

static void sb_oom_event(evutil_socket_t fd, short what, void *arg)
{
    struct process_sandbox *sb = arg;
    uint64_t n;

    if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        return;
    log_debug("sandbox.oom_event", LF_STR("id", sb->id));
    if (sb->cg.oom_timer == NULL)
        sb->cg.oom_timer = reactor_timer_new(sb->d->r, sb_oom_check, sb);
    sb->cg.oom_checks = 0;
    sb_oom_check(sb->cg.oom_timer, sb);
}

static void sb_close_report(struct process_sandbox *sb)
{
    if (sb->report_ev) {
        event_free(sb->report_ev);
        sb->report_ev = NULL;
    }
    if (sb->report_fd >= 0)
        close(sb->report_fd);
    sb->report_fd = -1;
}

enum report {
    REPORT_PENDING, /* nothing to read yet */
    REPORT_READY,   /* the supervisor is up */
    REPORT_FAILED,  /* setup failed: sb->failure */
    REPORT_EOF,     /* closed without a word: the process died */
};

/* Reads the setup report and closes the pipe once the outcome is known. */
static enum report sb_read_report(struct process_sandbox *sb)
{
    struct reactor_spawn_failure f;
    enum report r = REPORT_EOF;
    ssize_t n;

    do
        n = read(sb->report_fd, &f, sizeof(f));
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return REPORT_PENDING;
    if (n == (ssize_t)sizeof(f)) {
        sb->failure = f;
        sb->failure.step[sizeof(f.step) - 1] = '\0';
        sb->setup_failed = true;
        r = REPORT_FAILED;
    } else if (n > 0) {
        r = REPORT_READY;
    }
    sb_close_report(sb);
    return r;
}

static void sb_on_report(evutil_socket_t fd, short what, void *arg)
{
    struct process_sandbox *sb = arg;
    char msg[128];

    if (sb_read_report(sb) != REPORT_READY || sb->child == NULL)
        return;
    sb->state = SB_RUNNING;
    if (sb->stopping || sb->deleting)
        return;
    snprintf(msg, sizeof(msg), "supervisor running (pid %d)", (int)sb->pid);
    log_info("sandbox.started", LF_STR("id", sb->id), LF_STR("name", sb->stored->name),
             LF_INT("pid", sb->pid), LF_STR("instance_id", sb->instance_id));
    sb_conditions(sb, "True", "Running", msg);
    sb_platform(sb, "Normal", "Started", msg, NULL);
    sb_changed(sb);
}

static void sb_finish_delete(struct process_sandbox *sb);

/* The run ended by our own request (stop, delete, driver shutdown). */
static void sb_exited_stopped(struct process_sandbox *sb)
{
    struct process_driver *d = sb->d;

    sb->state = SB_STOPPED;
    if (d->shutting_down) {
        waiters_complete(&sb->stop_waiters, true);
        if (d->on_idle != NULL && process_sandboxes_idle(d))
            d->on_idle(d);
        return;
    }
    log_info("sandbox.stopped", LF_STR("id", sb->id));
    sb_conditions(sb, "False", "ContainerStopped", "the sandbox was stopped");
    sb_platform(sb, "Normal", "Stopped", "the sandbox was stopped", NULL);
    sb_changed(sb);
    waiters_complete(&sb->stop_waiters, true);
    if (sb->want_running)
        sb_start(sb); /* StartSandbox arrived while the stop was in progress */
}

/* The run ended on its own: exit, signal, OOM kill or setup failure. */
static void sb_exited_alone(struct process_sandbox *sb, int status)
{
    char msg[256], num[16];
    const char *meta[] = {NULL, num, NULL};

    if (sb->setup_failed) {
        sb_start_failed(sb, sb->failure.step, strerror(sb->failure.err));
        return;
    }
    sb->state = SB_EXITED;
    if (sb->oom_killed) {
        snprintf(msg, sizeof(msg), "the sandbox exceeded its memory limit and was killed");
        sb_conditions(sb, "False", "OOMKilled", msg);
        sb_platform(sb, "Warning", "OOMKilled", msg, NULL);
    } else {
        meta[0] = WIFSIGNALED(status) ? "signal" : "exit_code";
        snprintf(num, sizeof(num), "%d",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        snprintf(msg, sizeof(msg), WIFSIGNALED(status) ? "killed by signal %s" : "exit code %s",
                 num);
        sb_conditions(sb, "False", "ProcessExited", msg);
        sb_platform(sb, WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "Normal" : "Warning",
                    "Exited", msg, meta);
    }
    log_warn("sandbox.exited", LF_STR("id", sb->id), LF_STR("reason", sb->ready.reason),
             LF_STR("message", msg));
    sb_changed(sb);
}

static void sb_on_exit(struct reactor_child *c, pid_t pid, int status, void *arg)
{
    struct process_sandbox *sb = arg;

    sb->child = NULL;
    if (sb->report_fd >= 0)
        (void)sb_read_report(sb); /* the child is gone: data or EOF is there */
    sb_close_report(sb);
    if (sb->kill_timer)
        reactor_timer_disarm(sb->kill_timer);
    if (!sb->oom_killed && cg_oom_count(sb) > sb->cg.oom_base)
        sb->oom_killed = true;
    cg_release(sb);
    log_debug("sandbox.process_exit", LF_STR("id", sb->id), LF_INT("pid", pid),
              LF_INT("status", status));
    if (sb->deleting) {
        sb_finish_delete(sb);
        return;
    }
    if (sb->stopping) {
        sb_exited_stopped(sb);
        return;
    }
    sb_exited_alone(sb, status);
}

/* Opens the report pipe and the log file; writes a header line. */
static int sb_open_io(struct process_sandbox *sb, int report[2], int *log_fd)
{
    char *path = gw_xasprintf("%s/" SB_FILE_LOG, sb->dir);
    char ts[40], *line;

    *log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    free(path);
    if (*log_fd < 0)
        return -1;
    if (pipe2(report, O_CLOEXEC) != 0) {
        close(*log_fd);
        return -1;
    }
    now_rfc3339(ts);
    line = gw_xasprintf("--- %s openshell-driver-process: starting instance %s\n", ts,
                        sb->instance_id);
    (void)write_all(*log_fd, line, strlen(line));
    free(line);
    return 0;
}

static int sb_spawn(struct process_sandbox *sb, struct child_plan *plan, int report[2], int log_fd)
{
    struct strv argv = {0}, env = {0};
    int clone_flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC;
    int rv;

    plan->report_rd = report[0];
    plan->report_wr = report[1];
    if (sb->opts.network == PROCESS_NET_ISOLATED)
        clone_flags |= CLONE_NEWNET;
    build_argv(sb, report[1], &argv);
    build_env(sb, &env);
    struct reactor_spawn_opts o = {
        .argv = (const char *const *)argv.v,
        .envp = (const char *const *)env.v,
        .stdout_fd = log_fd,
        .stderr_fd = log_fd,
        .die_with_parent = true,
        .clone_flags = clone_flags,
        .pre_exec = child_setup,
        .pre_exec_arg = plan,
        .report_fd = report[1],
    };
    rv = reactor_spawn(sb->d->r, &o, sb_on_exit, sb, &sb->child);
    strv_free(&argv);
    strv_free(&env);
    return rv;
}

static void sb_start(struct process_sandbox *sb)
{
    struct child_plan *plan = NULL;
    int report[2] = {-1, -1}, log_fd = -1;
    char err[512];

    GW_ASSERT(sb->child == NULL && !sb->deleting);
    sb->stopping = sb->oom_killed = sb->setup_failed = false;
    gw_uuid4(sb->instance_id);
    if (sb->invalid != NULL) {
        sb_start_failed(sb, "validate the stored sandbox", sb->invalid);
        return;
    }
    if (cg_prepare(sb, err, sizeof(err)) != 0) {
        cg_release(sb);
        sb_start_failed(sb, "cgroup", err);
        return;
    }
    plan = plan_build(sb, err, sizeof(err));
    if (plan != NULL && sb_open_io(sb, report, &log_fd) != 0)
        snprintf(err, sizeof(err), "open %s or a pipe: %s", SB_FILE_LOG, strerror(errno));
    else if (plan != NULL && sb_spawn(sb, plan, report, log_fd) != 0)
        snprintf(err, sizeof(err), "%s", strerror(errno));
    plan_free(plan);
    if (report[1] >= 0)
        close(report[1]);
    if (log_fd >= 0)
        close(log_fd);
    if (sb->child == NULL) {
        if (report[0] >= 0)
            close(report[0]);
        cg_release(sb);
        sb_start_failed(sb, "spawn", err);
        return;
    }
    sb->pid = reactor_child_pid(sb->child);
    sb->report_fd = report[0];
    (void)fcntl(report[0], F_SETFL, O_NONBLOCK);
    sb->report_ev =
        event_new(reactor_base(sb->d->r), report[0], EV_READ | EV_PERSIST, sb_on_report, sb);
    event_add(sb->report_ev, NULL);
    sb->state = SB_STARTING;
    sb_conditions(sb, "False", "Starting", "starting the sandbox supervisor");
    sb_changed(sb);
}

/* ---- public operations -------------------------------------------------------------------------
 */

void process_sandbox_stop(struct process_sandbox *sb, struct process_waiter *w)
{
    if (!sb->deleting) {
        sb->want_running = false;
        sb_persist_state(sb, "stopped");
    }
    if (sb->child != NULL) {
        if (w != NULL)
            waiter_link(&sb->stop_waiters, w);
        sb_kill(sb, sb->opts.stop_grace_seconds);
        return;
    }
    if (!sb->deleting && sb->state != SB_STOPPED) {
        sb->state = SB_STOPPED;
        sb_conditions(sb, "False", "ContainerStopped", "the sandbox was stopped");
        sb_platform(sb, "Normal", "Stopped", "the sandbox was stopped", NULL);
        sb_changed(sb);
    }
    if (w != NULL)
        w->done(w, true);
}

void process_sandbox_start(struct process_sandbox *sb)
{
    if (sb->deleting)
        return;
    if (!sb->want_running) {
        sb->want_running = true;
        sb_persist_state(sb, "running");
    }
    if (sb->child == NULL)
        sb_start(sb);
}

static void sb_finish_delete(struct process_sandbox *sb)
{
    struct process_driver *d = sb->d;
    char id[37];

    snprintf(id, sizeof(id), "%s", sb->id);
    cg_release(sb);
    remove_tree(d, sb->dir);
    log_info("sandbox.deleted", LF_STR("id", id));
    sb_platform(sb, "Normal", "Deleted", "the sandbox was deleted", NULL);
    process_emit_deleted(d, id);
    waiters_complete(&sb->stop_waiters, true);
    waiters_complete(&sb->delete_waiters, true);
    sb_free(sb);
    if (d->shutting_down && d->on_idle != NULL && process_sandboxes_idle(d))
        d->on_idle(d);
}

void process_sandbox_delete(struct process_sandbox *sb, struct process_waiter *w)
{
    if (w != NULL)
        waiter_link(&sb->delete_waiters, w);
    if (sb->deleting)
        return;
    sb->deleting = true;
    sb_persist_state(sb, "deleting");
    sb_changed(sb);
    if (sb->child != NULL) {
        sb_kill(sb, 0);
        return;
    }
    sb_finish_delete(sb);
}

struct process_sandbox *process_sandbox_first(struct process_driver *d)
{
    return d->sandboxes;
}

struct process_sandbox *process_sandbox_next(struct process_sandbox *sb)
{
    return sb->next;
}

const char *process_sandbox_id(const struct process_sandbox *sb)
{
    return sb->id;
}

bool process_sandbox_deleting(const struct process_sandbox *sb)
{
    return sb->deleting;
}

struct process_sandbox *process_sandbox_find(struct process_driver *d, const char *id,
                                             const char *name, bool include_deleting)
{
    bool by_id = id != NULL && id[0] != '\0';

    if (!by_id && (name == NULL || name[0] == '\0'))
        return NULL;
    for (struct process_sandbox *sb = d->sandboxes; sb != NULL; sb = sb->next) {
        if (sb->deleting && !include_deleting)
            continue;
        if (by_id ? strcmp(sb->id, id) == 0 : strcmp(sb->stored->name, name) == 0)
            return sb;
    }
    return NULL;
}

void process_sandboxes_shutdown(struct process_driver *d, unsigned max_grace_s, bool force)
{
    d->shutting_down = true;
    for (struct process_sandbox *sb = d->sandboxes; sb != NULL; sb = sb->next) {
        if (sb->child == NULL)
            continue;
        sb_kill(sb, force ? 0 : GW_MIN(sb->opts.stop_grace_seconds, max_grace_s));
    }
}

bool process_sandboxes_idle(const struct process_driver *d)
{
    for (const struct process_sandbox *sb = d->sandboxes; sb != NULL; sb = sb->next) {
        if (sb->child != NULL)
            return false;
    }
    return true;
}

void process_sandboxes_free(struct process_driver *d)
{
    while (d->sandboxes != NULL)
        sb_free(d->sandboxes);
    reactor_timer_free(d->cg_retry);
    d->cg_retry = NULL;
}

/* ---- create and load ----------------------------------------------------------------------------
 */

static void sb_configure(struct process_sandbox *sb, const struct process_options *opts,
                         const struct process_limits *lim)
{
    sb->opts = *opts;
    sb->lim = *lim;
    if (opts->hostname[0] != '\0')
        snprintf(sb->hostname, sizeof(sb->hostname), "%s", opts->hostname);
    else
        process_hostname_from_name(sb->stored->name, sb->hostname);
}

/* Packs |req| without its token and status, and unpacks that into memory
 * of our own (the request lives in the call's arena). */
static Openshell__Compute__V1__DriverSandbox *
copy_stripped(const Openshell__Compute__V1__DriverSandbox *req, uint8_t **packed, size_t *len)
{
    Openshell__Compute__V1__DriverSandbox top = *req;
    Openshell__Compute__V1__DriverSandboxSpec spec;

    top.status = NULL;
    top.namespace_ = (char *)"";
    if (req->spec != NULL) {
        spec = *req->spec;
        spec.sandbox_token = (char *)"";
        top.spec = &spec;
    }
    *len = openshell__compute__v1__driver_sandbox__get_packed_size(&top);
    *packed = gw_xmalloc(*len ? *len : 1);
    openshell__compute__v1__driver_sandbox__pack(&top, *packed);
    return openshell__compute__v1__driver_sandbox__unpack(NULL, *len, *packed);
}

static int create_files(const char *dir, const char *token, const uint8_t *packed, size_t len)
{
    char *work = gw_xasprintf("%s/" SB_DIR_WORK, dir);
    int rv = -1;

    if (token[0] != '\0' && write_atomic(dir, SB_FILE_TOKEN, token, strlen(token), 0600) != 0)
        goto out;
    if (write_atomic(dir, SB_FILE_STATE, "running\n", 8, 0600) != 0)
        goto out;
    if (mkdir(work, 0755) != 0 && errno != EEXIST)
        goto out;
    /* Last: a directory without it is an interrupted create. */
    rv = write_atomic(dir, SB_FILE_SPEC, packed, len, 0600);
out:
    free(work);
    return rv;
}

int process_sandbox_create(struct process_driver *d,
                           const Openshell__Compute__V1__DriverSandbox *req,
                           const struct process_options *opts, const struct process_limits *lim,
                           char *err, size_t errlen)
{
    const char *token = req->spec ? req->spec->sandbox_token : "";
    char *dir = gw_xasprintf("%s/%s", d->sandboxes_dir, req->id);
    Openshell__Compute__V1__DriverSandbox *stored;
    struct process_sandbox *sb;
    uint8_t *packed = NULL;
    size_t len;

    /* Not a loaded sandbox (the caller checked): leftovers of a broken one. */
    if (access(dir, F_OK) == 0)
        remove_tree(d, dir);
    stored = copy_stripped(req, &packed, &len);
    if (stored == NULL || mkdir(dir, 0700) != 0 || create_files(dir, token, packed, len) != 0) {
        snprintf(err, errlen, "persist sandbox %s: %s", req->id, strerror(errno));
        if (stored != NULL)
            protobuf_c_message_free_unpacked(&stored->base, NULL);
        if (access(dir, F_OK) == 0)
            remove_tree(d, dir);
        free(packed);
        free(dir);
        return -1;
    }
    free(packed);
    free(dir);
    sb = sb_new(d, req->id);
    sb->stored = stored;
    sb->token = token[0] != '\0' ? gw_xstrdup(token) : NULL;
    sb->want_running = true;
    sb_configure(sb, opts, lim);
    log_info("sandbox.created", LF_STR("id", sb->id), LF_STR("name", stored->name),
             LF_STR("workspace", stored->workspace));
    sb_start(sb);
    return 0;
}

static Openshell__Compute__V1__DriverSandbox *load_spec(const char *dir)
{
    char *path = gw_xasprintf("%s/" SB_FILE_SPEC, dir);
    char *data = NULL;
    ssize_t n = read_file(path, SB_MAX_SPEC, &data);
    Openshell__Compute__V1__DriverSandbox *s = NULL;

    if (n >= 0)
        s = openshell__compute__v1__driver_sandbox__unpack(NULL, (size_t)n, (uint8_t *)data);
    free(data);
    free(path);
    return s;
}

static char *load_text(const char *dir, const char *file, size_t max)
{
    char *path = gw_xasprintf("%s/%s", dir, file);
    char *data = NULL;

    if (read_file(path, max, &data) < 0)
        data = NULL;
    free(path);
    return data;
}

static void sb_load_one(struct process_driver *d, const char *id)
{
    char *dir = gw_xasprintf("%s/%s", d->sandboxes_dir, id);
    Openshell__Compute__V1__DriverSandbox *stored = load_spec(dir);
    char *state, err[512];
    struct process_options opts;
    struct process_limits lim;
    struct process_sandbox *sb;

    if (stored == NULL || strcmp(stored->id, id) != 0) {
        log_warn("process.load_skipped", LF_STR("path", dir),
                 LF_STR("reason", stored ? "id mismatch" : "no readable " SB_FILE_SPEC));
        if (stored == NULL && errno == ENOENT)
            remove_tree(d, dir); /* an interrupted create */
        if (stored)
            protobuf_c_message_free_unpacked(&stored->base, NULL);
        free(dir);
        return;
    }
    free(dir);
    sb = sb_new(d, id);
    sb->stored = stored;
    sb->token = load_text(sb->dir, SB_FILE_TOKEN, SB_MAX_TOKEN);
    state = load_text(sb->dir, SB_FILE_STATE, 64);
    if (process_sandbox_check(stored, d->o.allow_host_network, &opts, &lim, err, sizeof(err)) !=
        0) {
        sb->invalid = gw_xstrdup(err);
        process_options_default(&opts);
        memset(&lim, 0, sizeof(lim));
    }
    sb_configure(sb, &opts, &lim);
    sb->want_running = state == NULL || strncmp(state, "stopped", 7) != 0;
    if (state != NULL && strncmp(state, "deleting", 8) == 0) {
        sb->deleting = true;
        sb_finish_delete(sb);
    } else if (sb->want_running) {
        sb_start(sb);
    } else {
        sb_conditions(sb, "False", "ContainerStopped", "the sandbox is stopped");
    }
    if (state != NULL)
        state[strcspn(state, "\n")] = '\0';
    log_info("sandbox.loaded", LF_STR("id", id), LF_STR("state", state ? state : "running"));
    free(state);
}

static int make_dir(const char *path, mode_t mode)
{
    if (mkdir(path, mode) == 0 || errno == EEXIST)
        return 0;
    log_error("process.state_dir_failed", LF_STR("path", path), LF_STR("error", strerror(errno)));
    return -1;
}

static void empty_trash(struct process_driver *d)
{
    DIR *dir = opendir(d->trash_dir);
    struct dirent *e;

    while (dir != NULL && (e = readdir(dir)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *p = gw_xasprintf("%s/%s", d->trash_dir, e->d_name);
        spawn_rm(d, p);
        free(p);
    }
    if (dir)
        closedir(dir);
}

int process_sandboxes_load(struct process_driver *d)
{
    DIR *dir;
    struct dirent *e;

    if (make_dir(d->sandboxes_dir, 0700) || make_dir(d->trash_dir, 0700) ||
        make_dir(d->root_mnt, 0700))
        return -1;
    empty_trash(d);
    dir = opendir(d->sandboxes_dir);
    if (dir == NULL) {
        log_error("process.state_dir_failed", LF_STR("path", d->sandboxes_dir),
                  LF_STR("error", strerror(errno)));
        return -1;
    }
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (!gw_uuid_valid(e->d_name)) {
            log_warn("process.load_skipped", LF_STR("name", e->d_name),
                     LF_STR("reason", "not a sandbox id"));
            continue;
        }
        sb_load_one(d, e->d_name);
    }
    closedir(dir);
    return 0;
}
