/* The child side of starting a sandbox. The parent builds a struct
 * child_plan (the entries of the source root to bind, the host paths to
 * hide, the cgroups to join, the token, RLIMIT_AS without a memory cgroup);
 * process_child_setup(), reactor_spawn()'s pre_exec hook, follows it in the
 * child between clone() and exec(): join the cgroups, set the host name,
 * assemble the new root, bring up loopback, pivot_root, drop capabilities.
 * That part is async-signal-safe: system calls only, no malloc, no stdio.
 * process_sandbox.c builds the plan, spawns, and frees it afterwards. */
#include "drivers/process/process.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PLAN_MAX_ENTRIES 256
#define PLAN_MAX_MASKS   4

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
    const char *gateway_dir; /* host directory of the gateway's Unix socket, or NULL */
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
    if (p->gateway_dir != NULL) {
        cpath(dst, p->mnt, IN_SANDBOX_GW);
        CHILD_TRY(mkdir(dst, 0755), "mkdir " IN_SANDBOX_GW);
        CHILD_TRY(mount(p->gateway_dir, dst, NULL, MS_BIND, NULL), "bind the gateway socket dir");
        CHILD_TRY(mount(NULL, dst, NULL,
                        MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL),
                  "read-only gateway socket dir");
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

int process_child_setup(void *arg, const char **step)
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

void process_child_plan_free(struct child_plan *p)
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
    free((char *)p->gateway_dir);
    free(p);
}

struct child_plan *process_child_plan_build(struct process_sandbox *sb, char *err, size_t errlen)
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
    if (d->o.gateway_endpoint != NULL && strncmp(d->o.gateway_endpoint, "unix:", 5) == 0) {
        const char *path = d->o.gateway_endpoint + 5;
        while (path[0] == '/' && path[1] == '/')
            path++; /* unix:///x */
        const char *slash = strrchr(path, '/');
        if (slash != NULL && slash != path)
            p->gateway_dir = gw_xstrndup(path, (size_t)(slash - path));
    }
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
        process_child_plan_free(p);
        return NULL;
    }
    return p;
}

void process_child_plan_set_report(struct child_plan *p, int rd, int wr)
{
    p->report_rd = rd;
    p->report_wr = wr;
}
