/* cgroups of the process driver: finding, at startup, the hierarchies the
 * host lets us use (cgroup v2, else v1 per controller) and creating the
 * driver's parent cgroups; removals that were busy, retried from a timer;
 * and one sandbox's cgroups for a run: the directories, the limits and the
 * detection of OOM kills inside them. process_sandbox.c uses this through
 * the interface in process.h ("cgroups"); the child joins the directories
 * (process_child.c). */
#include "drivers/process/process.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "reactor/reactor.h"

#define CG_RETRY_MS    200
#define CG_RETRY_TRIES 50
#define CPU_PERIOD_US  100000
#define OOM_CHECK_MS   20 /* after an OOM event, until the kill shows in oom_kill */
#define OOM_CHECKS     50

/* ---- types --------------------------------------------------------------------- */

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

/* ---- small helpers -------------------------------------------------------------- */

static int write_text(const char *dir, const char *file, const char *value)
{
    char *path = gw_xasprintf("%s/%s", dir, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    int rv = -1, saved = 0;

    if (fd >= 0) {
        rv = process_write_all(fd, value, strlen(value));
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

    if (process_read_file(path, 1 << 16, &text) >= 0) {
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

    if (process_read_file(p, 1 << 20, &text) >= 0)
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
    if (process_read_file(path, 4096, &avail) < 0)
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
            if (process_read_file(procs, 1 << 20, &text) >= 0) {
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

void process_cgroups_retry_free(struct process_driver *d)
{
    reactor_timer_free(d->cg_retry);
    d->cg_retry = NULL;
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
 * (|err| set; directories already created are released by
 * process_cgroup_release). */
int process_cgroup_prepare(struct process_sandbox *sb, char *err, size_t errlen)
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
void process_cgroup_release(struct process_sandbox *sb)
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

/* ---- cgroups: OOM kills ------------------------------------------------------------------- */

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

bool process_cgroup_oom_killed(const struct process_sandbox *sb)
{
    return cg_oom_count(sb) > sb->cg.oom_base;
}
