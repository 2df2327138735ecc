/*
 * process: the in-tree `openshell-driver-process` compute driver. It serves
 * openshell.compute.v1.ComputeDriver on a Unix socket and runs every
 * sandbox as `openshell-supervisor`, PID 1 of its own mount, PID, UTS, IPC
 * (and, unless host networking is allowed, network) namespaces, with a
 * read-only view of the host root, a private writable /sandbox and cgroup
 * limits where the host lets us create cgroups.
 *
 * Files:
 *   process_config.c   pure parsing and validation (quantities, the
 *                      driver_config Struct, a whole DriverSandbox); unit
 *                      tested on its own (tests/test_process_config.c)
 *   process_sandbox.c  sandbox objects: state directory, persistence,
 *                      lifecycle, conditions and events
 *   process_cgroup.c   cgroups: discovery at startup, busy removals
 *                      retried from a timer, one sandbox's limits and
 *                      OOM detection
 *   process_child.c    the child plan (built in the parent) and the
 *                      namespace setup between clone() and exec()
 *   process_service.c  the gRPC methods and WatchSandboxes fan-out
 *   main.c             flags, startup, signals, shutdown
 *
 * Everything runs on one reactor loop; nothing blocks it.
 */
#ifndef GW_PROCESS_H
#define GW_PROCESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "base/base.h"
#include "compute_driver.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "reactor/reactor.h"

struct reactor;
struct reactor_child;
struct reactor_timer;
struct reactor_listener;
struct grpc_server;
struct grpc_call;
struct event;

/* ---- pure parsing and validation (process_config.c) --------------------- */

#define PROCESS_ERR_INVALID (-1) /* INVALID_ARGUMENT: the request is malformed */
#define PROCESS_ERR_UNSUPPORTED                                                                    \
    (-2) /* FAILED_PRECONDITION: well formed, but this driver cannot                               \
          */

#define PROCESS_TMP_SIZE_DEFAULT   (64ULL << 20) /* private /tmp tmpfs */
#define PROCESS_TMP_SIZE_MIN       (1ULL << 20)
#define PROCESS_TMP_SIZE_MAX       (16ULL << 30)
#define PROCESS_PIDS_DEFAULT       4096
#define PROCESS_PIDS_MAX           32768
#define PROCESS_STOP_GRACE_DEFAULT 10
#define PROCESS_STOP_GRACE_MAX     300
#define PROCESS_MEMORY_LIMIT_MIN   (4ULL << 20)

enum process_network {
    PROCESS_NET_ISOLATED = 0, /* new network namespace with only `lo` */
    PROCESS_NET_HOST = 1,     /* the host's network namespace */
};

/* The validated driver_config block (DriverSandboxTemplate.driver_config). */
struct process_options {
    enum process_network network;
    char hostname[64];           /* "" = derived from the sandbox name */
    uint64_t tmp_size;           /* bytes */
    uint32_t pids_limit;         /* processes in the sandbox cgroup */
    uint32_t stop_grace_seconds; /* SIGTERM -> SIGKILL */
};

/* Typed template.resources; 0 = not given. */
struct process_limits {
    uint64_t cpu_request_milli;
    uint64_t cpu_limit_milli;
    uint64_t memory_request; /* bytes */
    uint64_t memory_limit;   /* bytes */
};

/* Fills |o| with the defaults used when driver_config is absent. */
void process_options_default(struct process_options *o);

/* Parses a Kubernetes quantity ("500m", "1", "1.5", "256Mi", "1Gi", "1G",
 * "2e3"; suffixes n u m k M G T P E Ki Mi Gi Ti Pi Ei, exponent e/E).
 * Negative values are refused. With |milli| the result is in thousandths
 * (CPU millicores: "500m" -> 500, "2" -> 2000), else in whole units (bytes:
 * "1Gi" -> 1073741824); fractions round up. Returns 0, or -1 on junk or a
 * value that does not fit in 64 bits. */
int process_quantity_parse(const char *s, bool milli, uint64_t *out) GW_MUSTCHECK;

/* Parses and validates the inner driver_config object |cfg| (NULL or empty
 * = defaults) into |out|. Allowed keys: network ("isolated" | "host", the
 * latter only with |allow_host_network|), hostname (DNS label), tmp_size
 * (quantity), pids_limit (integer 1..32768), stop_grace_seconds (integer
 * 0..300). Returns 0, or PROCESS_ERR_INVALID with |err| set to text that
 * starts with the offending path ("driver_config.network: ..."). */
int process_config_parse(const Google__Protobuf__Struct *cfg, bool allow_host_network,
                         struct process_options *out, char *err, size_t errlen) GW_MUSTCHECK;

/* Validates a whole DriverSandbox for this driver: id (UUID), name, image
 * (empty or "host"), command, environment, log_level, resources (into
 * |lim|), GPU (unsupported), the token size and driver_config (into
 * |opts|). Returns 0, PROCESS_ERR_INVALID or PROCESS_ERR_UNSUPPORTED with
 * |err| starting with the offending path ("template.resources.cpu_limit:"). */
int process_sandbox_check(const Openshell__Compute__V1__DriverSandbox *sb, bool allow_host_network,
                          struct process_options *opts, struct process_limits *lim, char *err,
                          size_t errlen) GW_MUSTCHECK;

/* RFC 1123 label: 1..63 of [a-z0-9-], no leading or trailing '-'. */
bool process_dns_label_valid(const char *s);
/* Writes a host name for the sandbox |name| into |out| (64 bytes): the name
 * itself when it is a DNS label, else a sanitized form, else "sandbox". */
void process_hostname_from_name(const char *name, char out[64]);

/* ---- the driver ---------------------------------------------------------- */

struct process_driver_opts {
    const char *socket_path;
    const char *state_dir;
    const char *name;             /* driver name reported by GetCapabilities */
    const char *supervisor;       /* host path of openshell-supervisor */
    const char *rootfs;           /* NULL = the host root, read-only */
    bool allow_host_network;      /* driver_config network=host may be used */
    const char *gateway_endpoint; /* NULL or exported as OPENSHELL_ENDPOINT */
};

struct process_sandbox;
struct process_watcher;
struct process_cgroups;

struct process_driver {
    struct process_driver_opts o;
    struct reactor *r;
    struct grpc_server *srv;
    struct reactor_listener *listener;
    char *sandboxes_dir; /* <state>/sandboxes */
    char *trash_dir;     /* <state>/trash: deleted directories being removed */
    char *root_mnt;      /* <state>/root: where each child assembles its root */
    char *socket_dir;    /* directory of the socket, hidden inside sandboxes */
    struct process_cgroups *cg;
    struct process_sandbox *sandboxes; /* doubly linked, creation order */
    struct process_sandbox *sandboxes_tail;
    unsigned n_sandboxes;
    struct process_watcher *watchers;
    struct reactor_timer *cg_retry; /* retries cgroup removals that were busy */
    bool shutting_down;
    void (*on_idle)(struct process_driver *d); /* shutdown: the last sandbox stopped */
};

/* A gRPC call waiting for a sandbox to finish stopping or deleting. The
 * service owns it; the sandbox module links it into the sandbox and calls
 * |done| exactly once (then forgets it), unless the service unlinks it
 * first with process_waiter_unlink() (call cancelled). */
struct process_waiter {
    struct grpc_call *call;
    void (*done)(struct process_waiter *w, bool existed);
    struct process_waiter *next;
    struct process_waiter **pprev; /* NULL when not linked */
};

void process_waiter_unlink(struct process_waiter *w);

/* ---- sandboxes (process_sandbox.c) ---------------------------------------- */

/* Loads <state>/sandboxes/<id>/ directories and starts those whose desired
 * state is "running"; finishes interrupted deletions; empties the trash.
 * Returns 0, or -1 when the state directory is unusable. */
int process_sandboxes_load(struct process_driver *d) GW_MUSTCHECK;

/* By id when |id| is non-empty, else the first one named |name|. NULL when
 * absent (or being deleted and |include_deleting| is false). Borrowed. */
struct process_sandbox *process_sandbox_find(struct process_driver *d, const char *id,
                                             const char *name, bool include_deleting);
/* Iteration in creation order: first(d), then next(sb) until NULL. */
struct process_sandbox *process_sandbox_first(struct process_driver *d);
struct process_sandbox *process_sandbox_next(struct process_sandbox *sb);
const char *process_sandbox_id(const struct process_sandbox *sb);
bool process_sandbox_deleting(const struct process_sandbox *sb);

/* Persists |req| (validated; token kept in its own file) and starts it.
 * Returns 0; -1 (internal error, |err| set) when nothing could be
 * persisted. A start failure after persisting is reported through the
 * sandbox's conditions, not here. */
int process_sandbox_create(struct process_driver *d,
                           const Openshell__Compute__V1__DriverSandbox *req,
                           const struct process_options *opts, const struct process_limits *lim,
                           char *err, size_t errlen) GW_MUSTCHECK;

/* Sets the desired state to stopped and stops the sandbox: SIGTERM, SIGKILL
 * after the grace. |w| (NULL allowed) is completed once no process is left. */
void process_sandbox_stop(struct process_sandbox *sb, struct process_waiter *w);
/* Sets the desired state to running and starts the sandbox if it is not
 * running (after a stop in progress when there is one). */
void process_sandbox_start(struct process_sandbox *sb);
/* Kills the sandbox, reports deleting=true, removes its cgroup and
 * directory, then emits the deleted event and completes |w| (NULL allowed).
 * The sandbox object is freed afterwards; callers must not keep it. */
void process_sandbox_delete(struct process_sandbox *sb, struct process_waiter *w);

/* Driver shutdown: SIGTERM every running sandbox (SIGKILL after at most
 * |max_grace_s|, or at once when |force|). The desired state on disk is
 * left alone, so the next driver start brings them back. d->on_idle runs
 * once no sandbox process is left. */
void process_sandboxes_shutdown(struct process_driver *d, unsigned max_grace_s, bool force);
bool process_sandboxes_idle(const struct process_driver *d);
/* Frees every sandbox object (after the loop stopped). */
void process_sandboxes_free(struct process_driver *d);

/* A snapshot message pointing into the sandbox: valid until the sandbox
 * changes or the loop runs again. */
struct process_snapshot {
    Openshell__Compute__V1__DriverSandbox sandbox;
    Openshell__Compute__V1__DriverSandboxStatus status;
    Openshell__Compute__V1__DriverCondition conds[2];
    Openshell__Compute__V1__DriverCondition *cond_ptrs[2];
};

void process_sandbox_snapshot(const struct process_sandbox *sb, struct process_snapshot *out);

/* ---- inside the sandbox module --------------------------------------------------
 *
 * Shared by process_sandbox.c, process_cgroup.c and process_child.c only;
 * process_service.c and main.c use the functions above and never look
 * into a struct process_sandbox. */

#define SB_DIR_WORK    "workdir" /* <sandbox dir>/workdir, bound on /sandbox */
#define IN_SANDBOX_DIR "/run/openshell"
#define IN_SANDBOX_JWT "/run/openshell/sandbox.jwt"
#define IN_SANDBOX_SUP "/run/openshell/openshell-supervisor"
#define IN_SANDBOX_GW  "/run/openshell/gateway" /* the gateway's socket directory, read-only */

enum cg_ctrl { CG_MEMORY, CG_CPU, CG_PIDS, CG_NCTRL };

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
    struct reactor_timer *restart_timer; /* backoff before restarting a crashed supervisor */
    unsigned quick_exits;                /* consecutive runs that ended within a minute */
    uint64_t started_us;                 /* when the current run was spawned */
    struct sb_cgroup cg;
    struct sb_cond ready, suspended;
    struct process_waiter *stop_waiters, *delete_waiters;
};

/* Writes all |n| bytes of |p| to |fd|, retrying on EINTR. Returns 0 or -1
 * (errno). */
int process_write_all(int fd, const void *p, size_t n);
/* Reads a whole small file. Caller owns |*out| (NUL-terminated), free with
 * free(). Returns the length, or -1 (errno; EFBIG above |max|). */
ssize_t process_read_file(const char *path, size_t max, char **out) GW_MUSTCHECK;

/* ---- cgroups (process_cgroup.c) -------------------------------------------------- */

/* Probes cgroup hierarchies (v2 and v1) for memory, cpu and pids and
 * creates the driver's parent cgroups. Never fails: missing controllers
 * are logged and limits fall back to setrlimit() or are not enforced. */
void process_cgroups_probe(struct process_driver *d);
/* Last try at removals still pending, then removes the driver's parent
 * cgroups and frees d->cg (after the loop is gone). */
void process_cgroups_free(struct process_driver *d);
/* Frees d->cg_retry, the timer that retries busy removals (before the
 * loop is freed; removals still pending are left to process_cgroups_free). */
void process_cgroups_retry_free(struct process_driver *d);

/* Creates |sb|'s cgroups for a run (in sb->cg) and writes the limits of
 * sb->lim and sb->opts; on cgroup v1 it also starts watching for OOM kills,
 * which end the whole sandbox. Returns 0, or -1 with |err| set. The caller
 * calls process_cgroup_release() after the run, or at once on failure
 * (for the directories already created). */
int process_cgroup_prepare(struct process_sandbox *sb, char *err, size_t errlen) GW_MUSTCHECK;
/* Whether the kernel counted an OOM kill in the run's memory cgroup since
 * process_cgroup_prepare() (false without a memory cgroup). */
bool process_cgroup_oom_killed(const struct process_sandbox *sb);
/* After the run: stops the OOM watch and removes the directories; busy
 * ones are retried from d->cg_retry. Leaves sb->cg empty; safe to repeat. */
void process_cgroup_release(struct process_sandbox *sb);

/* ---- the child (process_child.c) ------------------------------------------------- */

struct child_plan;

/* Builds in the parent everything the child needs for |sb| (the entries of
 * the root to bind, paths to hide, sb->cg's cgroup.procs files, limits
 * without a cgroup, the token), so that the child only makes system calls.
 * Caller owns the plan, free with process_child_plan_free(); NULL with
 * |err| set when the root cannot be read. The plan borrows sb's strings:
 * free it before |sb| changes. */
struct child_plan *process_child_plan_build(struct process_sandbox *sb, char *err, size_t errlen);
/* Both ends of the report pipe: the child closes |rd| and passes |wr| on to
 * the supervisor as its ready pipe. */
void process_child_plan_set_report(struct child_plan *p, int rd, int wr);
/* NULL allowed. */
void process_child_plan_free(struct child_plan *p);

/* reactor_spawn()'s pre_exec hook, |arg| a struct child_plan: runs in the
 * child between clone() and exec() and is async-signal-safe (system calls
 * only, no malloc, no stdio). Returns 0, or -1 with errno set and |*step|
 * naming the failed step (static storage). */
int process_child_setup(void *arg, const char **step);

/* ---- service (process_service.c) ------------------------------------------ */

/* Registers the ComputeDriver methods and listens on the socket (parent
 * directory created, stale socket removed, mode 0600). Returns 0 or -1. */
int process_service_start(struct process_driver *d) GW_MUSTCHECK;
/* Closes the listener (removing the socket), ends watch streams and closes
 * connections. */
void process_service_stop(struct process_driver *d);

/* WatchSandboxes fan-out; each is a no-op without watchers. */
void process_emit_snapshot(struct process_driver *d, const struct process_sandbox *sb);
void process_emit_deleted(struct process_driver *d, const char *id);
/* |meta| is NULL or a NULL-terminated list of key, value pairs. */
void process_emit_platform(struct process_driver *d, const char *id, const char *type,
                           const char *reason, const char *message, const char *const *meta);

#endif /* GW_PROCESS_H */
