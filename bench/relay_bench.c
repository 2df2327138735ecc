/*
 * relay-bench: load generator for the supervisor relay benchmarks
 * (bench/relay_bench.py runs it; see bench/results/relay.md).
 *
 *   relay-bench forward  --gateway HOST:PORT --sandbox ID --token T [--token T2 ...]
 *                        [--bytes N] [--streams K] [--reps R] [--warmup W]
 *                        [--dir push|pull|both] [--mode relay|direct|both]
 *                        [--chunk BYTES] [--window BYTES] [--target-port P]
 *                        [--source-port P] [--shared-conn] [--timeout-s S]
 *                        [--bearer JWT] [--watch NAME=PID ...]
 *   relay-bench exec     --gateway HOST:PORT --sandbox ID [--count N] [--warmup W]
 *                        [--bearer JWT] [--timeout-s S]
 *   relay-bench sessions --socket PATH --tokens FILE --sandbox-ids FILE [--count N]
 *                        [--parallel P] [--checkpoints A,B,...] [--hold-s S]
 *                        [--connections-only]
 *
 * forward: K concurrent ForwardTcp streams (one HTTP/2 connection each
 * unless --shared-conn) through the gateway and the sandbox's supervisor
 * to a TCP peer on 127.0.0.1, compared in the same run with a direct
 * loopback TCP copy between this process and the same peer. "push" sends
 * N bytes per stream to a sink (relay: data frames, then half-close; the
 * clock stops at the sink's last byte), "pull" reads N bytes per stream
 * from a source (the clock stops at the last byte received here). The
 * peer is a forked child process with its own epoll loop, so the client
 * and the peer get a CPU each in the direct copy, as iperf3 does; its
 * counters live in shared memory. Writes are --chunk bytes on both sides
 * (the client's, the source's; reads up to 256 KiB), so push and pull
 * direct copies do the same system calls. Rounds alternate direct and relay;
 * --warmup rounds of each are run first and not counted. MB = 10^6 bytes.
 *
 * Push respects GRPC_SEND_FULL: a stream that got it waits for the
 * call's writable callback. If the client library never delivers writable
 * callbacks (none in this process, and a stream waited 200 ms after
 * GRPC_SEND_FULL while the sink received 8 MiB),
 * GRPC_SEND_FULL is no longer waited on and a window instead bounds what
 * this process queues: a stream waits while the bytes sent and not yet at
 * the sink exceed --window per stream. The JSON says which
 * ("paced_by_window").
 *
 * exec: N sequential ExecSandbox ["true"] on one connection; latency from
 * sending the request to the end of the call (exit event seen, status OK).
 *
 * sessions: N ConnectSupervisor streams, each on its own HTTP/2 connection
 * to the gateway's supervisor Unix socket (authorization: Bearer <sandbox
 * JWT>, hello{sandbox_id, instance_id}), held open once session_accepted
 * arrived. At each checkpoint (and at N) it prints
 *   CHECKPOINT <accepted> <failed> <seconds>
 * on stdout and waits for a line on stdin (EOF on stdin ends the hold),
 * or --hold-s seconds when stdin cannot be watched. --connections-only
 * opens the same connections but makes one Health call on each instead of
 * a session (no files needed): the cost of an idle HTTP/2 connection alone.
 *
 * Every command prints one JSON object on stdout at the end (after the
 * checkpoint lines for sessions) and progress on stderr; exit status 0
 * only when every call succeeded. Everything is bounded by --timeout-s.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/event.h>

#include "base/base.h"
#include "http2/grpc.h"
#include "reactor/reactor.h"

#include "openshell.pb-c.h"

#define PATH_FORWARD "/openshell.v1.OpenShell/ForwardTcp"
#define PATH_EXEC    "/openshell.v1.OpenShell/ExecSandbox"
#define PATH_CONNECT "/openshell.v1.OpenShell/ConnectSupervisor"
#define PATH_HEALTH  "/openshell.v1.OpenShell/Health"

#define MAX_TOKENS          64
#define MAX_WATCH           8
#define MAX_STREAMS         256
#define MAX_REPS            1000
#define PEER_BUF            (256 * 1024)
#define POLL_MS             1          /* window waits, the sink's last bytes */
#define DETECT_MS           20         /* waits for on_writable: only the fallback check */
#define WRITABLE_GRACE_US   200000     /* a stream waiting this long for on_writable ... */
#define WRITABLE_GRACE_SINK (8u << 20) /* ... while the sink got this much: none will come */
#define DEFAULT_CHUNK       (64 * 1024)

enum { DIR_PUSH = 1, DIR_PULL = 2 };
enum { MODE_DIRECT = 1, MODE_RELAY = 2 };

struct watch_pid {
    char name[32];
    pid_t pid;
};

struct opts {
    const char *cmd;
    char gw_host[64];
    uint16_t gw_port;
    const char *sandbox;
    const char *tokens[MAX_TOKENS];
    unsigned n_tokens;
    const char *bearer;
    uint64_t bytes;
    unsigned streams;
    unsigned reps;
    unsigned warmup;
    int dirs;
    int modes;
    size_t chunk;
    size_t window;
    uint16_t sink_port;
    uint16_t source_port;
    bool shared_conn;
    unsigned timeout_s;
    struct watch_pid watch[MAX_WATCH];
    unsigned n_watch;
    unsigned count;
    const char *socket_path;
    const char *tokens_file;
    const char *ids_file;
    unsigned parallel;
    unsigned checkpoints[32];
    unsigned n_checkpoints;
    unsigned hold_s;
    bool connections_only;
    bool warmup_set;
    bool timeout_set;
};

/* ---- small helpers ----------------------------------------------------------- */

static void die(const char *fmt, ...) GW_PRINTF(1, 2) GW_NORETURN;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("relay-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void note(const char *fmt, ...) GW_PRINTF(1, 2);

static void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("[relay-bench] ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint64_t parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t mult = 1;
    if (end != s && (*end == 'K' || *end == 'k'))
        mult = 1024, end++;
    else if (end != s && (*end == 'M' || *end == 'm'))
        mult = 1024 * 1024, end++;
    else if (end != s && (*end == 'G' || *end == 'g'))
        mult = 1024ull * 1024 * 1024, end++;
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v > max / mult || v * mult < min ||
        v * mult > max)
        die("%s: invalid value '%s' (expected %llu to %llu; K, M, G suffixes allowed)", opt, s,
            (unsigned long long)min, (unsigned long long)max);
    return v * mult;
}

static void parse_hostport(const char *s, struct opts *o)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s || (size_t)(colon - s) >= sizeof(o->gw_host))
        die("--gateway: expected HOST:PORT with a numeric host, got '%s'", s);
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']')
        h++, hl -= 2;
    memcpy(o->gw_host, h, hl);
    o->gw_host[hl] = '\0';
    o->gw_port = (uint16_t)parse_u64("--gateway port", colon + 1, 1, 65535);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of |n| values (sorted in place). */
static double percentile(double *v, size_t n, double p)
{
    if (n == 0)
        return 0.0;
    qsort(v, n, sizeof(*v), cmp_double);
    size_t rank = (size_t)((p / 100.0) * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1];
}

static double median_of(const double *src, size_t n)
{
    if (n == 0)
        return 0.0;
    double *v = gw_xmalloc(n * sizeof(*v));
    memcpy(v, src, n * sizeof(*v));
    qsort(v, n, sizeof(*v), cmp_double);
    double m = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
    free(v);
    return m;
}

/* Prints |s| as a JSON string literal. */
static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

/* utime+stime of |pid| in seconds from /proc, or -1 when it is gone. */
static double proc_cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1.0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1.0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1.0;
    unsigned long ut = 0, st = 0;
    /* fields after ")": state(3) ... utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1.0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Busy CPU seconds of the whole machine (all CPUs) from /proc/stat: user,
 * nice, system, irq, softirq and steal. */
static double machine_busy_s(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return -1.0;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 8)
        return -1.0;
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            note("setrlimit(RLIMIT_NOFILE): %s", strerror(errno));
    }
}

static size_t nofile_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return 1u << 20;
    return (size_t)rl.rlim_cur;
}

/* ---- the TCP peer: a forked child with its own epoll loop ------------------------
 *
 * Sink connections are read until EOF and then closed; source connections
 * get |source_len| bytes, a half-close, and are closed at the peer's EOF.
 * Counters are in shared memory, updated with atomics. */

struct peer_shared {
    uint32_t ready; /* 1: listening; 2: failed (see err) */
    uint16_t sink_port;
    uint16_t source_port;
    uint64_t source_len;
    uint64_t write_size; /* source writes of this size (the client's --chunk) */
    uint64_t sink_bytes;
    uint64_t sink_last_us;
    uint32_t sink_eofs;
    uint32_t source_done;
    uint32_t errors;
    char err[160];
};

struct peer_conn {
    int fd;
    bool source;
    bool draining; /* source: everything sent, waiting for the EOF */
    uint64_t left;
};

static int listen_loopback(uint16_t port, uint16_t *bound)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof(sa);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 1024) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        close(fd);
        return -1;
    }
    *bound = ntohs(sa.sin_port);
    return fd;
}

static void peer_close(int ep, struct peer_conn *c)
{
    (void)epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

static void peer_accept(int ep, int lfd, bool source, struct peer_shared *sh)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        struct peer_conn *c = gw_xcalloc(1, sizeof(*c));
        c->fd = fd;
        c->source = source;
        c->left = __atomic_load_n(&sh->source_len, __ATOMIC_ACQUIRE);
        struct epoll_event ev = {.events = source ? EPOLLOUT : EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            free(c);
        }
    }
}

/* Reads what is there; returns true when the connection is finished. */
static bool peer_read(struct peer_conn *c, uint8_t *buf, struct peer_shared *sh)
{
    for (;;) {
        ssize_t n = read(c->fd, buf, PEER_BUF);
        if (n > 0) {
            if (!c->source) {
                __atomic_fetch_add(&sh->sink_bytes, (uint64_t)n, __ATOMIC_RELEASE);
                __atomic_store_n(&sh->sink_last_us, gw_clock_mono_us(), __ATOMIC_RELEASE);
            }
            continue;
        }
        if (n == 0) {
            if (c->source)
                __atomic_fetch_add(&sh->source_done, 1, __ATOMIC_RELEASE);
            else
                __atomic_fetch_add(&sh->sink_eofs, 1, __ATOMIC_RELEASE);
            return true;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return false;
        __atomic_fetch_add(&sh->errors, 1, __ATOMIC_RELEASE);
        return true;
    }
}

/* Writes what fits; returns true on a write error. */
static bool peer_write(int ep, struct peer_conn *c, const uint8_t *buf, struct peer_shared *sh)
{
    while (c->left > 0) {
        uint64_t ws = __atomic_load_n(&sh->write_size, __ATOMIC_ACQUIRE);
        ssize_t n = write(c->fd, buf, (size_t)GW_MIN(c->left, GW_MIN(ws, (uint64_t)PEER_BUF)));
        if (n > 0) {
            c->left -= (uint64_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return false;
        __atomic_fetch_add(&sh->errors, 1, __ATOMIC_RELEASE);
        return true;
    }
    (void)shutdown(c->fd, SHUT_WR);
    c->draining = true;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    (void)epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    return false;
}

static GW_NORETURN void peer_main(struct peer_shared *sh, pid_t parent, uint16_t sink_port,
                                  uint16_t source_port)
{
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(0);
    signal(SIGPIPE, SIG_IGN);
    uint16_t sp = 0, srcp = 0;
    int sfd = listen_loopback(sink_port, &sp);
    int srcfd = listen_loopback(source_port, &srcp);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    uint8_t *buf = gw_xmalloc(PEER_BUF);
    for (size_t i = 0; i < PEER_BUF; i++)
        buf[i] = (uint8_t)(i * 131u + 7u);
    if (sfd < 0 || srcfd < 0 || ep < 0) {
        snprintf(sh->err, sizeof(sh->err), "peer listen on 127.0.0.1:%u/%u: %s", sink_port,
                 source_port, strerror(errno));
        __atomic_store_n(&sh->ready, 2, __ATOMIC_RELEASE);
        _exit(1);
    }
    /* The listeners are told apart by these two sentinel pointers. */
    static char sink_tag, source_tag;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &sink_tag};
    (void)epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
    ev.data.ptr = &source_tag;
    (void)epoll_ctl(ep, EPOLL_CTL_ADD, srcfd, &ev);
    sh->sink_port = sp;
    sh->source_port = srcp;
    __atomic_store_n(&sh->ready, 1, __ATOMIC_RELEASE);

    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, 1000);
        if (n < 0 && errno != EINTR)
            _exit(1);
        if (getppid() != parent)
            _exit(0);
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &sink_tag || p == &source_tag) {
                peer_accept(ep, p == &sink_tag ? sfd : srcfd, p == &source_tag, sh);
                continue;
            }
            struct peer_conn *c = p;
            bool finished;
            if (!c->source || c->draining)
                finished = peer_read(c, buf, sh);
            else if (evs[i].events & (EPOLLERR | EPOLLHUP))
                finished = true; /* the reader went away before everything was sent */
            else
                finished = peer_write(ep, c, buf, sh);
            if (finished)
                peer_close(ep, c);
        }
    }
}

struct peer {
    pid_t pid;
    struct peer_shared *sh;
};

static void peer_start(struct peer *p, uint16_t sink_port, uint16_t source_port)
{
    p->sh = mmap(NULL, sizeof(*p->sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p->sh == MAP_FAILED)
        die("mmap: %s", strerror(errno));
    memset(p->sh, 0, sizeof(*p->sh));
    pid_t parent = getpid();
    fflush(NULL);
    p->pid = fork();
    if (p->pid < 0)
        die("fork: %s", strerror(errno));
    if (p->pid == 0)
        peer_main(p->sh, parent, sink_port, source_port);
    uint64_t deadline = gw_clock_mono_us() + 5000000;
    while (__atomic_load_n(&p->sh->ready, __ATOMIC_ACQUIRE) == 0) {
        if (gw_clock_mono_us() > deadline)
            die("the TCP peer did not start listening within 5 s");
        usleep(1000);
    }
    if (p->sh->ready != 1)
        die("%s", p->sh->err);
}

static void peer_stop(struct peer *p)
{
    if (p->pid <= 0)
        return;
    (void)kill(p->pid, SIGTERM);
    int status;
    for (int i = 0; i < 500; i++) {
        pid_t r = waitpid(p->pid, &status, WNOHANG);
        if (r == p->pid || (r < 0 && errno == ECHILD))
            break;
        usleep(10000);
    }
    p->pid = 0;
}

/* ---- forward: one round of K streams ------------------------------------------------ */

struct round;

struct fstream {
    struct round *rd;
    unsigned idx;
    struct grpc_channel *ch; /* relay: own channel, or the round's shared one */
    struct grpc_ccall *cc;
    int fd; /* direct */
    struct event *ev;
    uint64_t sent;
    uint64_t recvd;
    uint64_t last_us; /* pull: time of the last byte received here */
    bool connected;
    bool wait_writable; /* got GRPC_SEND_FULL: waits for the writable callback */
    bool wait_window;   /* the window is full: waits for the sink */
    uint64_t full_since_us;
    uint64_t sink_at_full; /* sink bytes when the wait began */
    bool half_closed;
    bool done;
    int status;
};

struct round_result {
    bool ok;
    double secs;
    double mbps;
    double cpu_pct[MAX_WATCH + 3]; /* watched pids, self, the peer, the whole machine */
    char err[256];
};

struct bench {
    struct opts o;
    struct reactor *r;
    struct peer peer;
    uint8_t *frame; /* header + one full chunk of TcpForwardFrame.data */
    size_t frame_len;
    uint8_t *tail_frame; /* the last, shorter chunk of a stream */
    size_t tail_len;
    uint8_t *raw; /* payload for the direct copy */
    uint64_t writable_cbs;
    uint64_t window_resumes;
    bool no_writable_cb; /* the client never reports writable: pace by the window */
};

struct round {
    struct bench *b;
    int mode;
    int dir;
    unsigned n;
    struct fstream *st;
    unsigned connecting;
    unsigned channels_open;
    unsigned done;
    bool started;
    bool finished;
    bool failed;
    char err[256];
    uint64_t t0;
    uint64_t t_end;
    struct reactor_timer *timeout;
    struct reactor_timer *poll;
    double cpu0[MAX_WATCH + 3];
    uint64_t wall0;
};

static size_t put_varint(uint8_t *out, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

/* TcpForwardFrame{data = |len| bytes of |payload|} hand-encoded: field 2, LEN. */
static uint8_t *build_data_frame(const uint8_t *payload, size_t len, size_t *out_len)
{
    uint8_t *f = gw_xmalloc(len + 11);
    f[0] = (2 << 3) | 2;
    size_t h = 1 + put_varint(f + 1, len);
    memcpy(f + h, payload, len);
    *out_len = h + len;
    return f;
}

static void cpu_sample(const struct round *rd, double *out)
{
    const struct opts *o = &rd->b->o;
    for (unsigned i = 0; i < o->n_watch; i++)
        out[i] = proc_cpu_s(o->watch[i].pid);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    out[o->n_watch] = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                      (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    out[o->n_watch + 1] = proc_cpu_s(rd->b->peer.pid);
    out[o->n_watch + 2] = machine_busy_s();
}

static void round_fail(struct round *rd, const char *fmt, ...) GW_PRINTF(2, 3);

static void round_stop_if_idle(struct round *rd)
{
    if (rd->finished && rd->connecting == 0 && rd->channels_open == 0)
        reactor_stop(rd->b->r);
}

/* Ends the round: closes what is still open; reactor_run returns once every
 * pending connect and channel has reported back. */
static void round_finish(struct round *rd)
{
    if (rd->finished)
        return;
    rd->finished = true;
    if (rd->t_end == 0)
        rd->t_end = gw_clock_mono_us();
    reactor_timer_disarm(rd->timeout);
    reactor_timer_disarm(rd->poll);
    for (unsigned i = 0; i < rd->n; i++) {
        struct fstream *s = &rd->st[i];
        if (s->cc != NULL && !s->done) {
            s->done = true;
            grpc_ccall_cancel(s->cc);
        }
        s->cc = NULL;
        if (s->ev != NULL && !s->connected && rd->mode == MODE_DIRECT)
            rd->connecting--; /* its connect event goes away with it */
        if (s->ev != NULL) {
            event_free(s->ev);
            s->ev = NULL;
        }
        if (s->fd >= 0) {
            close(s->fd);
            s->fd = -1;
        }
    }
    for (unsigned i = 0; i < rd->n; i++) {
        struct fstream *s = &rd->st[i];
        if (s->ch != NULL && (i == 0 || !rd->b->o.shared_conn))
            grpc_channel_close(s->ch);
    }
    round_stop_if_idle(rd);
}

static void round_fail(struct round *rd, const char *fmt, ...)
{
    if (!rd->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(rd->err, sizeof(rd->err), fmt, ap);
        va_end(ap);
        rd->failed = true;
    }
    round_finish(rd);
}

/* The round is over once every stream is done and, for push, the sink has
 * seen every byte and every end of stream. */
static void round_check(struct round *rd)
{
    if (rd->finished || rd->done < rd->n)
        return;
    struct peer_shared *sh = rd->b->peer.sh;
    uint64_t want = rd->b->o.bytes * rd->n;
    if (rd->dir == DIR_PUSH) {
        if (__atomic_load_n(&sh->sink_eofs, __ATOMIC_ACQUIRE) < rd->n) {
            reactor_timer_arm(rd->poll, POLL_MS); /* the sink is still draining */
            return;
        }
        uint64_t got = __atomic_load_n(&sh->sink_bytes, __ATOMIC_ACQUIRE);
        rd->t_end = __atomic_load_n(&sh->sink_last_us, __ATOMIC_ACQUIRE);
        if (got != want) {
            round_fail(rd, "sink received %llu bytes, expected %llu", (unsigned long long)got,
                       (unsigned long long)want);
            return;
        }
    } else {
        uint64_t last = 0;
        for (unsigned i = 0; i < rd->n; i++) {
            if (rd->st[i].recvd != rd->b->o.bytes) {
                round_fail(rd, "stream %u received %llu bytes, expected %llu", i,
                           (unsigned long long)rd->st[i].recvd, (unsigned long long)rd->b->o.bytes);
                return;
            }
            last = GW_MAX(last, rd->st[i].last_us);
        }
        rd->t_end = last;
    }
    round_finish(rd);
}

static void stream_done(struct fstream *s)
{
    if (s->done)
        return;
    s->done = true;
    s->rd->done++;
    round_check(s->rd);
}

static uint64_t inflight_total(struct round *rd)
{
    uint64_t sent = 0;
    for (unsigned i = 0; i < rd->n; i++)
        sent += rd->st[i].sent;
    uint64_t at_sink = __atomic_load_n(&rd->b->peer.sh->sink_bytes, __ATOMIC_ACQUIRE);
    return sent > at_sink ? sent - at_sink : 0;
}

static bool window_open(struct round *rd)
{
    return inflight_total(rd) < (uint64_t)rd->b->o.window * rd->n;
}

/* Relay push: queue data frames until GRPC_SEND_FULL or the end; after
 * GRPC_SEND_FULL the stream waits for the call's writable callback. Only
 * when this client is known not to deliver it does the window pace the
 * stream instead (see on_poll). */
static void relay_pump(struct fstream *s)
{
    struct bench *b = s->rd->b;
    const uint64_t total = b->o.bytes;
    while (!s->done && !s->wait_writable && !s->wait_window && s->sent < total) {
        if (b->no_writable_cb && !window_open(s->rd)) {
            s->wait_window = true;
            reactor_timer_arm(s->rd->poll, POLL_MS);
            break;
        }
        uint64_t left = total - s->sent;
        bool full = left >= b->o.chunk;
        int rv = grpc_ccall_send_raw(s->cc, full ? b->frame : b->tail_frame,
                                     full ? b->frame_len : b->tail_len);
        if (rv < 0) {
            round_fail(s->rd, "stream %u: send failed (%d)", s->idx, rv);
            return;
        }
        s->sent += full ? b->o.chunk : left;
        if (rv == GRPC_SEND_FULL && !b->no_writable_cb) {
            s->wait_writable = true;
            s->full_since_us = gw_clock_mono_us();
            s->sink_at_full = __atomic_load_n(&b->peer.sh->sink_bytes, __ATOMIC_ACQUIRE);
            if (!reactor_timer_armed(s->rd->poll))
                reactor_timer_arm(s->rd->poll, DETECT_MS);
        }
    }
    if (!s->done && s->sent == total && !s->half_closed) {
        s->half_closed = true;
        grpc_ccall_close_send(s->cc);
    }
}

static void on_call_writable(struct grpc_ccall *cc, void *arg)
{
    struct fstream *s = arg;
    (void)cc;
    s->rd->b->writable_cbs++;
    if (s->wait_writable && !s->done) {
        s->wait_writable = false;
        relay_pump(s);
    }
}

/* Periodic while push streams wait or the sink drains. Resumes streams
 * that waited for the window once it has room. A stream that waited
 * WRITABLE_GRACE_US for a writable callback with the window open, when no
 * call of this process ever got one, shows that the client library does
 * not deliver them: from then on GRPC_SEND_FULL is not waited on and the
 * window (bytes sent and not yet at the sink, per stream) bounds what is
 * queued here instead. */
static void on_poll(struct reactor_timer *t, void *arg)
{
    struct round *rd = arg;
    struct bench *b = rd->b;
    (void)t;
    if (rd->finished)
        return;
    if (rd->done == rd->n) {
        round_check(rd);
        return;
    }
    uint64_t now = gw_clock_mono_us();
    uint64_t at_sink = __atomic_load_n(&b->peer.sh->sink_bytes, __ATOMIC_ACQUIRE);
    bool open = window_open(rd), waiting = false;
    for (unsigned i = 0; i < rd->n && !rd->finished; i++) {
        struct fstream *s = &rd->st[i];
        if (s->done || rd->mode != MODE_RELAY)
            continue;
        if (s->wait_writable && b->writable_cbs == 0 && !b->no_writable_cb &&
            now - s->full_since_us > WRITABLE_GRACE_US &&
            at_sink - s->sink_at_full >= WRITABLE_GRACE_SINK) {
            b->no_writable_cb = true;
            note("no writable callback %u ms after GRPC_SEND_FULL while the sink received %u MiB: "
                 "pacing by the window (%zu bytes per stream) from now on",
                 (unsigned)(WRITABLE_GRACE_US / 1000), WRITABLE_GRACE_SINK >> 20, b->o.window);
        }
        if (s->wait_writable && b->no_writable_cb) {
            s->wait_writable = false;
            relay_pump(s);
        } else if (s->wait_window && open) {
            s->wait_window = false;
            b->window_resumes++;
            relay_pump(s);
        }
    }
    bool window_wait = false;
    for (unsigned i = 0; i < rd->n; i++) {
        waiting |= (rd->st[i].wait_writable || rd->st[i].wait_window) && !rd->st[i].done;
        window_wait |= rd->st[i].wait_window && !rd->st[i].done;
    }
    if (waiting && !rd->finished)
        reactor_timer_arm(rd->poll, window_wait || b->no_writable_cb ? POLL_MS : DETECT_MS);
}

static void on_timeout(struct reactor_timer *t, void *arg)
{
    struct round *rd = arg;
    (void)t;
    round_fail(rd, "timed out after %u s (%u of %u streams done)", rd->b->o.timeout_s, rd->done,
               rd->n);
}

static void on_fwd_msg(struct grpc_ccall *cc, void *msg, void *arg)
{
    struct fstream *s = arg;
    const Openshell__V1__TcpForwardFrame *f = msg;
    (void)cc;
    if (f->payload_case == OPENSHELL__V1__TCP_FORWARD_FRAME__PAYLOAD_DATA && f->data.len > 0) {
        s->recvd += f->data.len;
        s->last_us = gw_clock_mono_us();
    }
}

static void on_fwd_done(struct grpc_ccall *cc, int status, const char *message, void *arg)
{
    struct fstream *s = arg;
    (void)cc;
    s->cc = NULL;
    s->status = status;
    if (s->done)
        return;
    if (status != GRPC_STATUS_OK) {
        round_fail(s->rd, "stream %u: ForwardTcp ended with %s: %s", s->idx,
                   grpc_status_name(status), message);
        return;
    }
    stream_done(s);
}

static void relay_start_stream(struct round *rd, struct fstream *s)
{
    struct bench *b = rd->b;
    const char *md[3] = {NULL, NULL, NULL};
    char auth[4096];
    if (b->o.bearer) {
        snprintf(auth, sizeof(auth), "Bearer %s", b->o.bearer);
        md[0] = "authorization";
        md[1] = auth;
    }
    s->cc = grpc_channel_start(s->ch, PATH_FORWARD, &openshell__v1__tcp_forward_frame__descriptor,
                               md, 0, on_fwd_msg, on_fwd_done, s);
    if (s->cc == NULL) {
        round_fail(rd, "stream %u: cannot start ForwardTcp (connection closing)", s->idx);
        return;
    }
    grpc_ccall_set_writable_cb(s->cc, on_call_writable);
    Openshell__V1__TcpRelayTarget tcp = OPENSHELL__V1__TCP_RELAY_TARGET__INIT;
    tcp.host = "127.0.0.1";
    tcp.port = rd->dir == DIR_PUSH ? b->peer.sh->sink_port : b->peer.sh->source_port;
    Openshell__V1__TcpForwardInit init = OPENSHELL__V1__TCP_FORWARD_INIT__INIT;
    init.sandbox_id = (char *)b->o.sandbox;
    init.authorization_token = (char *)b->o.tokens[s->idx % b->o.n_tokens];
    init.target_case = OPENSHELL__V1__TCP_FORWARD_INIT__TARGET_TCP;
    init.tcp = &tcp;
    Openshell__V1__TcpForwardFrame f = OPENSHELL__V1__TCP_FORWARD_FRAME__INIT;
    f.payload_case = OPENSHELL__V1__TCP_FORWARD_FRAME__PAYLOAD_INIT;
    f.init = &init;
    int rv = grpc_ccall_send(s->cc, &f.base);
    if (rv < 0) {
        round_fail(rd, "stream %u: cannot send init (%d)", s->idx, rv);
        return;
    }
    if (rd->dir == DIR_PULL) {
        s->half_closed = true;
        grpc_ccall_close_send(s->cc);
    } else {
        relay_pump(s);
    }
}

/* ---- direct copy over plain loopback TCP ------------------------------------------- */

static void on_direct_io(evutil_socket_t fd, short what, void *arg)
{
    struct fstream *s = arg;
    struct round *rd = s->rd;
    struct bench *b = rd->b;
    (void)what;
    if (rd->dir == DIR_PUSH && !s->half_closed) {
        while (s->sent < b->o.bytes) {
            size_t n = (size_t)GW_MIN((uint64_t)b->o.chunk, b->o.bytes - s->sent);
            ssize_t w = write(fd, b->raw, n);
            if (w > 0) {
                s->sent += (uint64_t)w;
                continue;
            }
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && errno == EAGAIN)
                return;
            round_fail(rd, "direct stream %u: write: %s", s->idx, strerror(errno));
            return;
        }
        (void)shutdown(fd, SHUT_WR);
        s->half_closed = true;
        event_del(s->ev);
        event_assign(s->ev, reactor_base(b->r), fd, EV_READ | EV_PERSIST, on_direct_io, s);
        event_add(s->ev, NULL);
        return;
    }
    for (;;) {
        ssize_t n = read(fd, b->raw, b->o.chunk);
        if (n > 0) {
            s->recvd += (uint64_t)n;
            s->last_us = gw_clock_mono_us();
            continue;
        }
        if (n == 0) {
            event_del(s->ev);
            stream_done(s);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return;
        round_fail(rd, "direct stream %u: read: %s", s->idx, strerror(errno));
        return;
    }
}

static void round_begin(struct round *rd);

static void on_direct_connected(evutil_socket_t fd, short what, void *arg)
{
    struct fstream *s = arg;
    struct round *rd = s->rd;
    int err = 0;
    socklen_t el = sizeof(err);
    (void)what;
    rd->connecting--;
    if (rd->finished) {
        round_stop_if_idle(rd);
        return;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) {
        round_fail(rd, "direct stream %u: connect: %s", s->idx, strerror(err ? err : errno));
        return;
    }
    s->connected = true;
    if (rd->connecting == 0)
        round_begin(rd);
}

static void direct_connect(struct round *rd, struct fstream *s)
{
    struct bench *b = rd->b;
    uint16_t port = rd->dir == DIR_PUSH ? b->peer.sh->sink_port : b->peer.sh->source_port;
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        round_fail(rd, "socket: %s", strerror(errno));
        return;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS) {
        round_fail(rd, "direct connect to 127.0.0.1:%u: %s", port, strerror(errno));
        return;
    }
    s->ev = event_new(reactor_base(b->r), s->fd, EV_WRITE, on_direct_connected, s);
    event_add(s->ev, NULL);
    rd->connecting++;
}

/* ---- relay connections ---------------------------------------------------------------- */

static void on_channel_close(struct grpc_channel *ch, void *arg)
{
    struct round *rd = arg;
    for (unsigned i = 0; i < rd->n; i++)
        if (rd->st[i].ch == ch)
            rd->st[i].ch = NULL;
    rd->channels_open--;
    if (!rd->finished)
        round_fail(rd, "connection to the gateway closed");
    round_stop_if_idle(rd);
}

static void on_relay_connected(struct bufferevent *bev, const struct reactor_peer *peer,
                               const char *err, void *arg)
{
    struct fstream *s = arg;
    struct round *rd = s->rd;
    (void)peer;
    rd->connecting--;
    if (bev != NULL && rd->finished) {
        bufferevent_free(bev);
        bev = NULL;
    }
    if (rd->finished) {
        round_stop_if_idle(rd);
        return;
    }
    if (bev == NULL) {
        round_fail(rd, "connect to the gateway: %s", err ? err : "failed");
        return;
    }
    struct grpc_channel_opts co = {
        .authority = "localhost",
        .scheme = "http",
        .max_recv_msg_bytes = 16u << 20,
        .on_close = on_channel_close,
        .arg = rd,
    };
    s->ch = grpc_channel_new(reactor_base(rd->b->r), bev, &co);
    if (s->ch == NULL) {
        round_fail(rd, "HTTP/2 session setup failed");
        return;
    }
    rd->channels_open++;
    if (rd->b->o.shared_conn)
        for (unsigned i = 1; i < rd->n; i++)
            rd->st[i].ch = s->ch;
    if (rd->connecting == 0)
        round_begin(rd);
}

/* Every connection is up: start the clock and the streams. */
static void round_begin(struct round *rd)
{
    if (rd->started || rd->finished)
        return;
    rd->started = true;
    struct peer_shared *sh = rd->b->peer.sh;
    __atomic_store_n(&sh->sink_bytes, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&sh->sink_eofs, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&sh->source_done, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&sh->sink_last_us, 0, __ATOMIC_RELEASE);
    cpu_sample(rd, rd->cpu0);
    rd->t0 = rd->wall0 = gw_clock_mono_us();
    reactor_timer_arm(rd->timeout, (uint64_t)rd->b->o.timeout_s * 1000);
    for (unsigned i = 0; i < rd->n && !rd->finished; i++) {
        struct fstream *s = &rd->st[i];
        if (rd->mode == MODE_RELAY) {
            relay_start_stream(rd, s);
        } else {
            event_free(s->ev);
            s->ev =
                event_new(reactor_base(rd->b->r), s->fd,
                          (rd->dir == DIR_PUSH ? EV_WRITE : EV_READ) | EV_PERSIST, on_direct_io, s);
            event_add(s->ev, NULL);
        }
    }
    if (rd->dir == DIR_PUSH && rd->mode == MODE_RELAY && !rd->finished &&
        !reactor_timer_armed(rd->poll))
        reactor_timer_arm(rd->poll, DETECT_MS);
}

/* Opens the round's connections (one shared one with --shared-conn);
 * round_begin() starts the clock once they are all up. */
static void round_connect(struct round *rd)
{
    struct bench *b = rd->b;
    unsigned conns = rd->mode == MODE_RELAY && b->o.shared_conn ? 1 : rd->n;
    for (unsigned i = 0; i < conns && !rd->finished; i++) {
        if (rd->mode == MODE_DIRECT) {
            direct_connect(rd, &rd->st[i]);
        } else if (reactor_connect_tcp(b->r, b->o.gw_host, b->o.gw_port, NULL, NULL, 10000,
                                       on_relay_connected, &rd->st[i]) != 0) {
            round_fail(rd, "cannot connect to %s:%u", b->o.gw_host, b->o.gw_port);
        } else {
            rd->connecting++;
        }
    }
}

static struct round_result round_result_of(const struct round *rd)
{
    const struct bench *b = rd->b;
    struct round_result res = {.ok = !rd->failed};
    double cpu1[MAX_WATCH + 3];
    cpu_sample(rd, cpu1);
    double wall = (double)(gw_clock_mono_us() - rd->wall0) / 1e6;
    snprintf(res.err, sizeof(res.err), "%s", rd->err);
    if (res.ok) {
        res.secs = (double)(rd->t_end - rd->t0) / 1e6;
        res.mbps = res.secs > 0 ? (double)b->o.bytes * rd->n / res.secs / 1e6 : 0.0;
    }
    for (unsigned i = 0; i < b->o.n_watch + 3; i++)
        res.cpu_pct[i] = wall > 0 && rd->cpu0[i] >= 0 && cpu1[i] >= 0
                             ? 100.0 * (cpu1[i] - rd->cpu0[i]) / wall
                             : -1.0;
    return res;
}

static struct round_result run_round(struct bench *b, int mode, int dir)
{
    struct round rd = {.b = b, .mode = mode, .dir = dir, .n = b->o.streams};
    rd.st = gw_xcalloc(rd.n, sizeof(*rd.st));
    rd.timeout = reactor_timer_new(b->r, on_timeout, &rd);
    rd.poll = reactor_timer_new(b->r, on_poll, &rd);
    __atomic_store_n(&b->peer.sh->source_len, b->o.bytes, __ATOMIC_RELEASE);
    __atomic_store_n(&b->peer.sh->write_size, (uint64_t)b->o.chunk, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < rd.n; i++) {
        rd.st[i].rd = &rd;
        rd.st[i].idx = i;
        rd.st[i].fd = -1;
    }
    reactor_timer_arm(rd.timeout, (uint64_t)b->o.timeout_s * 1000); /* connecting too */
    round_connect(&rd);
    if (!(rd.finished && rd.connecting == 0 && rd.channels_open == 0) && reactor_run(b->r) != 0)
        round_fail(&rd, "event loop failed");
    struct round_result res = round_result_of(&rd);
    for (unsigned i = 0; i < rd.n; i++) {
        if (rd.st[i].ev != NULL)
            event_free(rd.st[i].ev);
        if (rd.st[i].fd >= 0)
            close(rd.st[i].fd);
    }
    reactor_timer_free(rd.timeout);
    reactor_timer_free(rd.poll);
    free(rd.st);
    return res;
}

/* ---- forward: the command ------------------------------------------------------------ */

struct series {
    int mode, dir;
    bool given_up; /* a round failed: the series' other rounds are skipped */
    double mbps[MAX_REPS];
    double cpu[MAX_WATCH + 3][MAX_REPS];
    unsigned n;
};

static const char *dir_name(int dir)
{
    return dir == DIR_PUSH ? "push" : "pull";
}

static const char *mode_name(int mode)
{
    return mode == MODE_RELAY ? "relay" : "direct";
}

static void print_series_json(const struct bench *b, const struct series *s, bool last)
{
    printf("    {\"dir\": \"%s\", \"mode\": \"%s\", \"median_mbps\": %.1f, \"mbps\": [",
           dir_name(s->dir), mode_name(s->mode), median_of(s->mbps, s->n));
    for (unsigned i = 0; i < s->n; i++)
        printf("%s%.1f", i ? ", " : "", s->mbps[i]);
    printf("], \"cpu_pct_median\": {");
    for (unsigned w = 0; w < b->o.n_watch + 3; w++) {
        static const char *const own[] = {"client", "peer", "machine"};
        const char *name = w < b->o.n_watch ? b->o.watch[w].name : own[w - b->o.n_watch];
        printf("%s\"%s\": %.1f", w ? ", " : "", name, median_of(s->cpu[w], s->n));
    }
    printf("}}%s\n", last ? "" : ",");
}

/* Every series of a forward run and what failed. */
struct fwd_run {
    struct series ser[4];
    unsigned nser;
    int failures;
    char first_err[320];
};

/* Runs one round of |s| and files its result (counted after warm-up). */
static void run_one(struct bench *b, struct fwd_run *run, struct series *s, unsigned rep)
{
    const struct opts *o = &b->o;
    struct round_result rr = run_round(b, s->mode, s->dir);
    bool counted = rep >= o->warmup;
    if (!rr.ok) {
        run->failures++;
        if (run->first_err[0] == '\0')
            snprintf(run->first_err, sizeof(run->first_err), "%s %s: %s", dir_name(s->dir),
                     mode_name(s->mode), rr.err);
        note("%s %s rep %u: FAILED: %s (the series' other rounds are skipped)", dir_name(s->dir),
             mode_name(s->mode), rep, rr.err);
        s->given_up = true;
        return;
    }
    note("%s %-6s %s %u: %u x %llu bytes in %.3f s = %.1f MB/s (client cpu %.0f%%, peer %.0f%%)",
         dir_name(s->dir), mode_name(s->mode), counted ? "rep" : "warmup",
         counted ? rep - o->warmup + 1 : rep + 1, o->streams, (unsigned long long)o->bytes, rr.secs,
         rr.mbps, rr.cpu_pct[o->n_watch], rr.cpu_pct[o->n_watch + 1]);
    if (!counted)
        return;
    s->mbps[s->n] = rr.mbps;
    for (unsigned w = 0; w < o->n_watch + 3; w++)
        s->cpu[w][s->n] = rr.cpu_pct[w];
    s->n++;
}

/* Per direction: direct and relay rounds alternate, warm-up first. */
static void run_forward(struct bench *b, struct fwd_run *run)
{
    const struct opts *o = &b->o;
    for (int dir = DIR_PUSH; dir <= DIR_PULL; dir++) {
        if (!(o->dirs & dir))
            continue;
        unsigned base = run->nser;
        for (int mode = MODE_DIRECT; mode <= MODE_RELAY; mode++)
            if (o->modes & mode)
                run->ser[run->nser++] = (struct series){.mode = mode, .dir = dir};
        for (unsigned rep = 0; rep < o->warmup + o->reps; rep++)
            for (unsigned k = base; k < run->nser; k++)
                if (!run->ser[k].given_up)
                    run_one(b, run, &run->ser[k], rep);
    }
}

static void print_forward_json(const struct bench *b, const struct fwd_run *run)
{
    const struct opts *o = &b->o;
    printf("{\"command\": \"forward\", \"bytes\": %llu, \"streams\": %u, \"reps\": %u, "
           "\"warmup\": %u, \"chunk\": %zu, \"window\": %zu, \"shared_conn\": %s, "
           "\"writable_callbacks\": %llu, \"window_resumes\": %llu, \"paced_by_window\": %s, "
           "\"failures\": %d, \"first_error\": ",
           (unsigned long long)o->bytes, o->streams, o->reps, o->warmup, o->chunk, o->window,
           o->shared_conn ? "true" : "false", (unsigned long long)b->writable_cbs,
           (unsigned long long)b->window_resumes, b->no_writable_cb ? "true" : "false",
           run->failures);
    json_str(run->first_err);
    printf(",\n  \"series\": [\n");
    for (unsigned k = 0; k < run->nser; k++)
        print_series_json(b, &run->ser[k], k + 1 == run->nser);
    printf("  ],\n  \"ratio_relay_to_direct\": {");
    bool first = true;
    for (unsigned k = 0; k + 1 < run->nser; k++) {
        const struct series *d = &run->ser[k], *r = &run->ser[k + 1];
        if (d->mode == MODE_DIRECT && r->mode == MODE_RELAY && d->dir == r->dir && d->n > 0 &&
            r->n > 0) {
            printf("%s\"%s\": %.3f", first ? "" : ", ", dir_name(d->dir),
                   median_of(r->mbps, r->n) / median_of(d->mbps, d->n));
            first = false;
        }
    }
    printf("}}\n");
    fflush(stdout);
}

static int cmd_forward(struct bench *b)
{
    struct opts *o = &b->o;
    uint8_t *payload = gw_xmalloc(o->chunk);
    for (size_t i = 0; i < o->chunk; i++)
        payload[i] = (uint8_t)(i * 131u + 7u);
    b->raw = payload;
    b->frame = build_data_frame(payload, o->chunk, &b->frame_len);
    b->tail_frame = build_data_frame(payload, (size_t)(o->bytes % o->chunk), &b->tail_len);
    peer_start(&b->peer, o->sink_port, o->source_port);
    note("peer pid %d: sink 127.0.0.1:%u, source 127.0.0.1:%u", (int)b->peer.pid,
         b->peer.sh->sink_port, b->peer.sh->source_port);
    b->r = reactor_new();
    if (b->r == NULL)
        die("cannot create the event loop");
    struct fwd_run *run = gw_xcalloc(1, sizeof(*run));
    run_forward(b, run);
    peer_stop(&b->peer);
    print_forward_json(b, run);
    int rc = run->failures ? 1 : 0;
    free(run);
    reactor_free(b->r);
    free(b->frame);
    free(b->tail_frame);
    free(payload);
    return rc;
}

/* ---- exec ------------------------------------------------------------------------------- */

struct exec_state {
    struct bench *b;
    struct grpc_channel *ch;
    unsigned total;
    unsigned next;
    double *lat_ms;
    unsigned n_lat;
    uint64_t t0;
    bool saw_exit;
    int exit_code;
    int failures;
    char err[256];
    bool closing;
    bool closed;
    struct reactor_timer *timeout;
};

static void exec_next(struct exec_state *x);

static void exec_end(struct exec_state *x)
{
    reactor_timer_disarm(x->timeout);
    if (x->closing)
        return;
    x->closing = true;
    if (x->ch != NULL && !x->closed)
        grpc_channel_close(x->ch);
    else
        reactor_stop(x->b->r);
}

static void on_exec_msg(struct grpc_ccall *cc, void *msg, void *arg)
{
    struct exec_state *x = arg;
    const Openshell__V1__ExecSandboxEvent *ev = msg;
    (void)cc;
    if (ev->payload_case == OPENSHELL__V1__EXEC_SANDBOX_EVENT__PAYLOAD_EXIT) {
        x->saw_exit = true;
        x->exit_code = ev->exit->exit_code;
    }
}

static void on_exec_done(struct grpc_ccall *cc, int status, const char *message, void *arg)
{
    struct exec_state *x = arg;
    (void)cc;
    double ms = (double)(gw_clock_mono_us() - x->t0) / 1000.0;
    if (status != GRPC_STATUS_OK || !x->saw_exit || x->exit_code != 0) {
        x->failures++;
        if (x->err[0] == '\0')
            snprintf(x->err, sizeof(x->err), "%s: %s (exit event %s, code %d)",
                     grpc_status_name(status), message, x->saw_exit ? "seen" : "missing",
                     x->exit_code);
        note("exec %u failed: %s %s", x->next, grpc_status_name(status), message);
        if (x->closing) {
            exec_end(x);
            return;
        }
    } else if (x->next > x->b->o.warmup) {
        x->lat_ms[x->n_lat++] = ms;
    }
    exec_next(x);
}

static void exec_next(struct exec_state *x)
{
    if (x->next >= x->total || x->closed || x->closing) {
        exec_end(x);
        return;
    }
    x->next++;
    x->saw_exit = false;
    x->exit_code = -1;
    static char true_cmd[] = "true";
    char *argv[] = {true_cmd};
    Openshell__V1__ExecSandboxRequest req = OPENSHELL__V1__EXEC_SANDBOX_REQUEST__INIT;
    req.sandbox_id = (char *)x->b->o.sandbox;
    req.n_command = 1;
    req.command = argv;
    const char *md[3] = {NULL, NULL, NULL};
    char auth[4096];
    if (x->b->o.bearer) {
        snprintf(auth, sizeof(auth), "Bearer %s", x->b->o.bearer);
        md[0] = "authorization";
        md[1] = auth;
    }
    x->t0 = gw_clock_mono_us();
    if (grpc_channel_unary(x->ch, PATH_EXEC, &req.base,
                           &openshell__v1__exec_sandbox_event__descriptor, md, 30000, on_exec_msg,
                           on_exec_done, x) == NULL) {
        x->failures++;
        snprintf(x->err, sizeof(x->err), "cannot start ExecSandbox (connection closing)");
        exec_end(x);
    }
}

static void on_exec_close(struct grpc_channel *ch, void *arg)
{
    struct exec_state *x = arg;
    (void)ch;
    x->closed = true;
    x->ch = NULL;
    if (x->next < x->total) {
        x->failures++;
        if (x->err[0] == '\0')
            snprintf(x->err, sizeof(x->err), "connection to the gateway closed");
    }
    reactor_timer_disarm(x->timeout);
    reactor_stop(x->b->r);
}

static void on_exec_connected(struct bufferevent *bev, const struct reactor_peer *peer,
                              const char *err, void *arg)
{
    struct exec_state *x = arg;
    (void)peer;
    if (bev == NULL) {
        x->failures++;
        snprintf(x->err, sizeof(x->err), "connect to the gateway: %s", err ? err : "failed");
        reactor_timer_disarm(x->timeout);
        reactor_stop(x->b->r);
        return;
    }
    struct grpc_channel_opts co = {.on_close = on_exec_close, .arg = x};
    x->ch = grpc_channel_new(reactor_base(x->b->r), bev, &co);
    if (x->ch == NULL) {
        x->failures++;
        snprintf(x->err, sizeof(x->err), "HTTP/2 session setup failed");
        reactor_stop(x->b->r);
        return;
    }
    exec_next(x);
}

static void on_exec_timeout(struct reactor_timer *t, void *arg)
{
    struct exec_state *x = arg;
    (void)t;
    x->failures++;
    snprintf(x->err, sizeof(x->err), "timed out after %u s (%u of %u calls started)",
             x->b->o.timeout_s, x->next, x->total);
    x->total = x->next; /* start nothing more */
    exec_end(x);
}

static int cmd_exec(struct bench *b)
{
    struct opts *o = &b->o;
    b->r = reactor_new();
    if (b->r == NULL)
        die("cannot create the event loop");
    struct exec_state x = {.b = b, .total = o->warmup + o->count};
    x.lat_ms = gw_xcalloc(x.total + 1, sizeof(double));
    x.timeout = reactor_timer_new(b->r, on_exec_timeout, &x);
    reactor_timer_arm(x.timeout, (uint64_t)o->timeout_s * 1000);
    if (reactor_connect_tcp(b->r, o->gw_host, o->gw_port, NULL, NULL, 10000, on_exec_connected,
                            &x) != 0)
        die("cannot connect to %s:%u", o->gw_host, o->gw_port);
    if (reactor_run(b->r) != 0)
        die("event loop failed");
    double sum = 0;
    for (unsigned i = 0; i < x.n_lat; i++)
        sum += x.lat_ms[i];
    double mean = x.n_lat ? sum / x.n_lat : 0.0;
    double p50 = percentile(x.lat_ms, x.n_lat, 50);
    double p99 = percentile(x.lat_ms, x.n_lat, 99);
    double mn = x.n_lat ? x.lat_ms[0] : 0.0, mx = x.n_lat ? x.lat_ms[x.n_lat - 1] : 0.0;
    note("exec: %u ok, %d failed; p50 %.2f ms, p99 %.2f ms, mean %.2f ms", x.n_lat, x.failures, p50,
         p99, mean);
    printf("{\"command\": \"exec\", \"count\": %u, \"warmup\": %u, \"ok\": %u, \"failures\": %d, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"mean_ms\": %.3f, \"min_ms\": %.3f, "
           "\"max_ms\": %.3f, \"first_error\": ",
           o->count, o->warmup, x.n_lat, x.failures, p50, p99, mean, mn, mx);
    json_str(x.err);
    printf("}\n");
    fflush(stdout);
    reactor_timer_free(x.timeout);
    free(x.lat_ms);
    reactor_free(b->r);
    return x.failures || x.n_lat != o->count ? 1 : 0;
}

/* ---- sessions ----------------------------------------------------------------------------- */

struct sess {
    struct sess_state *ss;
    unsigned idx;
    struct grpc_channel *ch;
    struct grpc_ccall *cc;
    bool accepted;
    bool ended;
};

struct sess_state {
    struct bench *b;
    char **ids;
    char **tokens;
    struct sess *s;
    unsigned n;
    unsigned launched;
    unsigned in_flight;
    unsigned accepted;
    unsigned failed;
    unsigned lost; /* ended after being accepted */
    unsigned heartbeats;
    unsigned target;  /* launch up to this many before the next checkpoint */
    unsigned next_cp; /* index into checkpoints */
    bool waiting_stdin;
    bool holding_done;
    bool timed_out;
    unsigned channels_open;
    uint64_t t0;
    char err[256];
    struct event *stdin_ev;
    struct reactor_timer *timer;
    struct reactor_timer *hold;
};

static void sess_launch(struct sess_state *ss);

static void sess_fail(struct sess *s, const char *fmt, ...) GW_PRINTF(2, 3);

static void sess_fail(struct sess *s, const char *fmt, ...)
{
    struct sess_state *ss = s->ss;
    if (s->ended)
        return;
    s->ended = true;
    if (s->accepted) {
        ss->lost++;
    } else {
        ss->failed++;
        ss->in_flight--;
    }
    if (ss->err[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ss->err, sizeof(ss->err), fmt, ap);
        va_end(ap);
        note("session %u (%s): %s", s->idx, ss->ids[s->idx], ss->err);
    }
    if (s->ch != NULL) {
        struct grpc_channel *ch = s->ch;
        s->ch = NULL;
        grpc_channel_close(ch);
    }
    if (!s->accepted)
        sess_launch(ss);
}

static void on_sess_msg(struct grpc_ccall *cc, void *msg, void *arg)
{
    struct sess *s = arg;
    struct sess_state *ss = s->ss;
    const Openshell__V1__GatewayMessage *m = msg;
    (void)cc;
    switch (m->payload_case) {
    case OPENSHELL__V1__GATEWAY_MESSAGE__PAYLOAD_SESSION_ACCEPTED:
        if (!s->accepted && !s->ended) {
            s->accepted = true;
            ss->accepted++;
            ss->in_flight--;
            if (ss->accepted % 500 == 0)
                note("sessions: %u accepted (%.1f s)", ss->accepted,
                     (double)(gw_clock_mono_us() - ss->t0) / 1e6);
            sess_launch(ss);
        }
        break;
    case OPENSHELL__V1__GATEWAY_MESSAGE__PAYLOAD_SESSION_REJECTED:
        sess_fail(s, "session_rejected: %s",
                  m->session_rejected->reason ? m->session_rejected->reason : "");
        break;
    case OPENSHELL__V1__GATEWAY_MESSAGE__PAYLOAD_HEARTBEAT:
        ss->heartbeats++;
        break;
    default:
        break;
    }
}

static void on_sess_done(struct grpc_ccall *cc, int status, const char *message, void *arg)
{
    struct sess *s = arg;
    (void)cc;
    s->cc = NULL;
    sess_fail(s, "ConnectSupervisor ended with %s: %s", grpc_status_name(status), message);
}

/* --connections-only: the Health answer counts as "accepted"; the
 * connection then stays open with no call on it. */
static void on_health_done(struct grpc_ccall *cc, int status, const char *message, void *arg)
{
    struct sess *s = arg;
    struct sess_state *ss = s->ss;
    (void)cc;
    s->cc = NULL;
    if (status != GRPC_STATUS_OK) {
        sess_fail(s, "Health ended with %s: %s", grpc_status_name(status), message);
        return;
    }
    if (s->accepted || s->ended)
        return;
    s->accepted = true;
    ss->accepted++;
    ss->in_flight--;
    if (ss->accepted % 500 == 0)
        note("connections: %u answered (%.1f s)", ss->accepted,
             (double)(gw_clock_mono_us() - ss->t0) / 1e6);
    sess_launch(ss);
}

static void on_sess_close(struct grpc_channel *ch, void *arg)
{
    struct sess *s = arg;
    (void)ch;
    s->ch = NULL;
    s->ss->channels_open--;
    if (!s->ended)
        sess_fail(s, "connection closed");
    if (s->ss->holding_done && s->ss->channels_open == 0)
        reactor_stop(s->ss->b->r);
}

static void on_sess_connected(struct bufferevent *bev, const struct reactor_peer *peer,
                              const char *err, void *arg)
{
    struct sess *s = arg;
    struct sess_state *ss = s->ss;
    (void)peer;
    if (ss->holding_done) {
        if (bev != NULL)
            bufferevent_free(bev);
        return;
    }
    if (bev == NULL) {
        sess_fail(s, "connect to %s: %s", ss->b->o.socket_path, err ? err : "failed");
        return;
    }
    struct grpc_channel_opts co = {.on_close = on_sess_close, .arg = s};
    s->ch = grpc_channel_new(reactor_base(ss->b->r), bev, &co);
    if (s->ch == NULL) {
        sess_fail(s, "HTTP/2 session setup failed");
        return;
    }
    ss->channels_open++;
    if (ss->b->o.connections_only) {
        Openshell__V1__HealthRequest hr = OPENSHELL__V1__HEALTH_REQUEST__INIT;
        s->cc = grpc_channel_unary(s->ch, PATH_HEALTH, &hr.base,
                                   &openshell__v1__health_response__descriptor, NULL, 30000, NULL,
                                   on_health_done, s);
        if (s->cc == NULL)
            sess_fail(s, "cannot start Health");
        return;
    }
    char auth[8192];
    snprintf(auth, sizeof(auth), "Bearer %s", ss->tokens[s->idx]);
    const char *md[] = {"authorization", auth, NULL};
    s->cc = grpc_channel_start(s->ch, PATH_CONNECT, &openshell__v1__gateway_message__descriptor, md,
                               0, on_sess_msg, on_sess_done, s);
    if (s->cc == NULL) {
        sess_fail(s, "cannot start ConnectSupervisor");
        return;
    }
    char instance[37];
    gw_uuid4(instance);
    Openshell__V1__SupervisorHello hello = OPENSHELL__V1__SUPERVISOR_HELLO__INIT;
    hello.sandbox_id = ss->ids[s->idx];
    hello.instance_id = instance;
    Openshell__V1__SupervisorMessage m = OPENSHELL__V1__SUPERVISOR_MESSAGE__INIT;
    m.payload_case = OPENSHELL__V1__SUPERVISOR_MESSAGE__PAYLOAD_HELLO;
    m.hello = &hello;
    if (grpc_ccall_send(s->cc, &m.base) < 0)
        sess_fail(s, "cannot send hello");
}

static void sess_checkpoint(struct sess_state *ss)
{
    printf("CHECKPOINT %u %u %.3f\n", ss->accepted, ss->failed,
           (double)(gw_clock_mono_us() - ss->t0) / 1e6);
    fflush(stdout);
    note("checkpoint: %u accepted, %u failed, %u heartbeats so far", ss->accepted, ss->failed,
         ss->heartbeats);
    ss->waiting_stdin = true;
    if (ss->stdin_ev == NULL)
        reactor_timer_arm(ss->hold, (uint64_t)ss->b->o.hold_s * 1000);
}

static void sess_release(struct sess_state *ss)
{
    ss->holding_done = true;
    reactor_timer_disarm(ss->timer);
    reactor_timer_disarm(ss->hold);
    if (ss->stdin_ev != NULL)
        event_del(ss->stdin_ev);
    for (unsigned i = 0; i < ss->n; i++) {
        struct sess *s = &ss->s[i];
        s->ended = true; /* closing on purpose: not a loss */
        if (s->ch != NULL) {
            struct grpc_channel *ch = s->ch;
            s->ch = NULL;
            grpc_channel_close(ch);
        }
    }
    if (ss->channels_open == 0)
        reactor_stop(ss->b->r);
}

/* Moves to the next checkpoint, or releases everything after the last. */
static void sess_continue(struct sess_state *ss)
{
    ss->waiting_stdin = false;
    reactor_timer_disarm(ss->hold);
    if (ss->target >= ss->n || ss->timed_out) {
        sess_release(ss);
        return;
    }
    const struct opts *o = &ss->b->o;
    unsigned next = ss->next_cp < o->n_checkpoints ? o->checkpoints[ss->next_cp++] : ss->n;
    ss->target = GW_MIN(next, ss->n); /* not inside GW_MIN: it evaluates twice */
    sess_launch(ss);
}

static void sess_launch(struct sess_state *ss)
{
    const struct opts *o = &ss->b->o;
    if (ss->waiting_stdin || ss->holding_done)
        return;
    while (ss->launched < ss->target && ss->in_flight < o->parallel) {
        struct sess *s = &ss->s[ss->launched];
        s->ss = ss;
        s->idx = ss->launched++;
        ss->in_flight++;
        if (reactor_connect_unix(ss->b->r, o->socket_path, on_sess_connected, s) != 0)
            sess_fail(s, "cannot connect to %s", o->socket_path);
    }
    if (ss->launched == ss->target && ss->in_flight == 0)
        sess_checkpoint(ss);
}

static void on_stdin(evutil_socket_t fd, short what, void *arg)
{
    struct sess_state *ss = arg;
    char buf[256];
    (void)what;
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
        /* EOF: release everything, whatever the checkpoint. */
        ss->target = ss->n;
        ss->waiting_stdin = false;
        sess_release(ss);
        return;
    }
    if (n > 0 && ss->waiting_stdin)
        sess_continue(ss);
}

static void on_sess_hold(struct reactor_timer *t, void *arg)
{
    (void)t;
    sess_continue(arg);
}

static void on_sess_timeout(struct reactor_timer *t, void *arg)
{
    struct sess_state *ss = arg;
    (void)t;
    ss->timed_out = true;
    if (ss->err[0] == '\0')
        snprintf(ss->err, sizeof(ss->err), "timed out after %u s with %u of %u accepted",
                 ss->b->o.timeout_s, ss->accepted, ss->n);
    note("%s", ss->err);
    ss->target = ss->n;
    sess_release(ss);
}

/* Reads up to |max| non-empty lines of |path|. */
static char **read_lines(const char *path, unsigned max, unsigned *n_out)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        die("%s: %s", path, strerror(errno));
    char **lines = gw_xcalloc(max + 1, sizeof(char *));
    unsigned n = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while (n < max && (len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' '))
            line[--len] = '\0';
        if (len > 0)
            lines[n++] = gw_xstrdup(line);
    }
    free(line);
    fclose(f);
    *n_out = n;
    return lines;
}

/* The sandbox ids and tokens (or placeholder names with
 * --connections-only); sets the line counts. Dies on short files. */
static void sess_load(struct sess_state *ss, unsigned *n_ids, unsigned *n_tok)
{
    const struct opts *o = &ss->b->o;
    *n_ids = *n_tok = 0;
    if (o->connections_only) {
        ss->ids = gw_xcalloc(o->count, sizeof(char *));
        for (unsigned i = 0; i < o->count; i++)
            ss->ids[i] = gw_xasprintf("connection-%u", i);
        *n_ids = o->count;
        return;
    }
    ss->ids = read_lines(o->ids_file, o->count, n_ids);
    ss->tokens = read_lines(o->tokens_file, o->count, n_tok);
    if (*n_ids < o->count || *n_tok < o->count)
        die("--count %u but %s has %u lines and %s has %u", o->count, o->ids_file, *n_ids,
            o->tokens_file, *n_tok);
}

static void sess_print_json(const struct sess_state *ss)
{
    double secs = (double)(gw_clock_mono_us() - ss->t0) / 1e6;
    printf("{\"command\": \"sessions\", \"connections_only\": %s, \"count\": %u, "
           "\"accepted\": %u, \"failed\": %u, \"lost_while_held\": %u, \"heartbeats\": %u, "
           "\"seconds\": %.3f, \"first_error\": ",
           ss->b->o.connections_only ? "true" : "false", ss->n, ss->accepted, ss->failed, ss->lost,
           ss->heartbeats, secs);
    json_str(ss->err);
    printf("}\n");
    fflush(stdout);
}

static int cmd_sessions(struct bench *b)
{
    struct opts *o = &b->o;
    unsigned n_ids, n_tok;
    struct sess_state ss = {.b = b};
    sess_load(&ss, &n_ids, &n_tok);
    size_t need = (size_t)o->count + 64;
    if (nofile_limit() < need)
        die("RLIMIT_NOFILE is %zu, %zu descriptors are needed: raise the hard limit "
            "(ulimit -Hn)",
            nofile_limit(), need);
    b->r = reactor_new();
    if (b->r == NULL)
        die("cannot create the event loop");
    ss.n = o->count;
    ss.s = gw_xcalloc(ss.n, sizeof(*ss.s));
    ss.timer = reactor_timer_new(b->r, on_sess_timeout, &ss);
    ss.hold = reactor_timer_new(b->r, on_sess_hold, &ss);
    reactor_timer_arm(ss.timer, (uint64_t)o->timeout_s * 1000);
    ss.stdin_ev = event_new(reactor_base(b->r), 0, EV_READ | EV_PERSIST, on_stdin, &ss);
    if (ss.stdin_ev != NULL && event_add(ss.stdin_ev, NULL) != 0) {
        event_free(ss.stdin_ev);
        ss.stdin_ev = NULL;
        note("stdin cannot be watched: each checkpoint holds for %u s", o->hold_s);
    }
    ss.t0 = gw_clock_mono_us();
    sess_continue(&ss);
    if (reactor_run(b->r) != 0)
        die("event loop failed");
    sess_print_json(&ss);
    if (ss.stdin_ev != NULL)
        event_free(ss.stdin_ev);
    reactor_timer_free(ss.timer);
    reactor_timer_free(ss.hold);
    for (unsigned i = 0; i < n_ids; i++)
        free(ss.ids[i]);
    for (unsigned i = 0; i < n_tok; i++)
        free(ss.tokens[i]);
    free(ss.ids);
    free(ss.tokens);
    free(ss.s);
    reactor_free(b->r);
    return ss.accepted == ss.n && ss.lost == 0 ? 0 : 1;
}

/* ---- arguments ------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fputs("usage:\n"
          "  relay-bench forward --gateway HOST:PORT --sandbox ID --token T [--token T ...]\n"
          "      [--bytes N] [--streams K] [--reps R] [--warmup W] [--dir push|pull|both]\n"
          "      [--mode relay|direct|both] [--chunk BYTES] [--window BYTES]\n"
          "      [--target-port P] [--source-port P] [--shared-conn] [--timeout-s S]\n"
          "      [--bearer JWT] [--watch NAME=PID ...]\n"
          "  relay-bench exec --gateway HOST:PORT --sandbox ID [--count N] [--warmup W]\n"
          "      [--bearer JWT] [--timeout-s S]\n"
          "  relay-bench sessions --socket PATH --tokens FILE --sandbox-ids FILE [--count N]\n"
          "      [--parallel P] [--checkpoints A,B,...] [--hold-s S] [--timeout-s S]\n"
          "  relay-bench sessions --connections-only --socket PATH [--count N] [...]\n"
          "Sizes take K, M, G suffixes (powers of 1024). Results: one JSON object on stdout.\n",
          f);
}

enum {
    O_GATEWAY = 256,
    O_SANDBOX,
    O_TOKEN,
    O_BEARER,
    O_BYTES,
    O_STREAMS,
    O_REPS,
    O_WARMUP,
    O_DIR,
    O_MODE,
    O_CHUNK,
    O_WINDOW,
    O_TARGET_PORT,
    O_SOURCE_PORT,
    O_SHARED_CONN,
    O_TIMEOUT,
    O_WATCH,
    O_COUNT,
    O_SOCKET,
    O_TOKENS,
    O_IDS,
    O_PARALLEL,
    O_CHECKPOINTS,
    O_HOLD,
    O_LOG_LEVEL,
    O_CONN_ONLY,
};

static const struct option long_opts[] = {
    {"gateway", required_argument, NULL, O_GATEWAY},
    {"sandbox", required_argument, NULL, O_SANDBOX},
    {"token", required_argument, NULL, O_TOKEN},
    {"bearer", required_argument, NULL, O_BEARER},
    {"bytes", required_argument, NULL, O_BYTES},
    {"streams", required_argument, NULL, O_STREAMS},
    {"reps", required_argument, NULL, O_REPS},
    {"warmup", required_argument, NULL, O_WARMUP},
    {"dir", required_argument, NULL, O_DIR},
    {"mode", required_argument, NULL, O_MODE},
    {"chunk", required_argument, NULL, O_CHUNK},
    {"window", required_argument, NULL, O_WINDOW},
    {"target-port", required_argument, NULL, O_TARGET_PORT},
    {"source-port", required_argument, NULL, O_SOURCE_PORT},
    {"shared-conn", no_argument, NULL, O_SHARED_CONN},
    {"timeout-s", required_argument, NULL, O_TIMEOUT},
    {"watch", required_argument, NULL, O_WATCH},
    {"count", required_argument, NULL, O_COUNT},
    {"socket", required_argument, NULL, O_SOCKET},
    {"tokens", required_argument, NULL, O_TOKENS},
    {"sandbox-ids", required_argument, NULL, O_IDS},
    {"parallel", required_argument, NULL, O_PARALLEL},
    {"checkpoints", required_argument, NULL, O_CHECKPOINTS},
    {"hold-s", required_argument, NULL, O_HOLD},
    {"log-level", required_argument, NULL, O_LOG_LEVEL},
    {"connections-only", no_argument, NULL, O_CONN_ONLY},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int parse_choice(const char *opt, const char *v, const char *a, int av, const char *bname,
                        int bv)
{
    if (strcmp(v, a) == 0)
        return av;
    if (strcmp(v, bname) == 0)
        return bv;
    if (strcmp(v, "both") == 0)
        return av | bv;
    die("%s: invalid value '%s' (expected %s, %s or both)", opt, v, a, bname);
}

static void parse_watch(struct opts *o, const char *v)
{
    const char *eq = strchr(v, '=');
    if (eq == NULL || eq == v || (size_t)(eq - v) >= sizeof(o->watch[0].name))
        die("--watch: expected NAME=PID, got '%s'", v);
    if (o->n_watch >= MAX_WATCH)
        die("--watch: at most %d processes", MAX_WATCH);
    struct watch_pid *w = &o->watch[o->n_watch++];
    memcpy(w->name, v, (size_t)(eq - v));
    w->name[eq - v] = '\0';
    w->pid = (pid_t)parse_u64("--watch pid", eq + 1, 1, INT_MAX);
}

static void parse_checkpoints(struct opts *o, const char *v)
{
    char *copy = gw_xstrdup(v), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (o->n_checkpoints >= GW_ARRAY_LEN(o->checkpoints))
            die("--checkpoints: at most %zu values", GW_ARRAY_LEN(o->checkpoints));
        unsigned c = (unsigned)parse_u64("--checkpoints", t, 1, 1000000);
        if (o->n_checkpoints > 0 && c <= o->checkpoints[o->n_checkpoints - 1])
            die("--checkpoints: values must increase");
        o->checkpoints[o->n_checkpoints++] = c;
    }
    free(copy);
}

/* One getopt_long result. */
static void parse_option(struct opts *o, int c, const char *arg)
{
    switch (c) {
    case O_GATEWAY:
        parse_hostport(arg, o);
        break;
    case O_SANDBOX:
        o->sandbox = arg;
        break;
    case O_TOKEN:
        if (o->n_tokens >= MAX_TOKENS)
            die("--token: at most %d", MAX_TOKENS);
        if (arg[0] == '\0')
            die("--token: empty");
        o->tokens[o->n_tokens++] = arg;
        break;
    case O_BEARER:
        o->bearer = arg;
        break;
    case O_BYTES:
        o->bytes = parse_u64("--bytes", arg, 1, 1ull << 40);
        break;
    case O_STREAMS:
        o->streams = (unsigned)parse_u64("--streams", arg, 1, MAX_STREAMS);
        break;
    case O_REPS:
        o->reps = (unsigned)parse_u64("--reps", arg, 1, MAX_REPS);
        break;
    case O_WARMUP:
        o->warmup = (unsigned)parse_u64("--warmup", arg, 0, 100);
        o->warmup_set = true;
        break;
    case O_DIR:
        o->dirs = parse_choice("--dir", arg, "push", DIR_PUSH, "pull", DIR_PULL);
        break;
    case O_MODE:
        o->modes = parse_choice("--mode", arg, "direct", MODE_DIRECT, "relay", MODE_RELAY);
        break;
    case O_CHUNK:
        o->chunk = parse_u64("--chunk", arg, 1024, PEER_BUF);
        break;
    case O_WINDOW:
        o->window = parse_u64("--window", arg, 64u << 10, 1u << 30);
        break;
    case O_TARGET_PORT:
        o->sink_port = (uint16_t)parse_u64("--target-port", arg, 0, 65535);
        break;
    case O_SOURCE_PORT:
        o->source_port = (uint16_t)parse_u64("--source-port", arg, 0, 65535);
        break;
    case O_SHARED_CONN:
        o->shared_conn = true;
        break;
    case O_TIMEOUT:
        o->timeout_s = (unsigned)parse_u64("--timeout-s", arg, 1, 86400);
        break;
    case O_WATCH:
        parse_watch(o, arg);
        break;
    case O_COUNT:
        o->count = (unsigned)parse_u64("--count", arg, 1, 1000000);
        break;
    case O_SOCKET:
        o->socket_path = arg;
        break;
    case O_TOKENS:
        o->tokens_file = arg;
        break;
    case O_IDS:
        o->ids_file = arg;
        break;
    case O_PARALLEL:
        o->parallel = (unsigned)parse_u64("--parallel", arg, 1, 4096);
        break;
    case O_CHECKPOINTS:
        parse_checkpoints(o, arg);
        break;
    case O_CONN_ONLY:
        o->connections_only = true;
        break;
    case O_HOLD:
        o->hold_s = (unsigned)parse_u64("--hold-s", arg, 0, 86400);
        break;
    case O_LOG_LEVEL: {
        enum log_level l;
        if (log_level_parse(arg, &l) != 0)
            die("--log-level: invalid value '%s'", arg);
        log_set_level(l);
        break;
    }
    case 'h':
        usage(stdout);
        exit(0);
    default:
        usage(stderr);
        exit(2);
    }
}

/* What each command needs, and per-command defaults. */
static void check_args(struct opts *o, int argc, char **argv)
{
    if (optind < argc)
        die("unexpected argument '%s'", argv[optind]);
    bool fwd = strcmp(o->cmd, "forward") == 0, ex = strcmp(o->cmd, "exec") == 0;
    if (fwd || ex) {
        if (o->gw_port == 0 && (fwd ? (o->modes & MODE_RELAY) != 0 : true))
            die("%s: --gateway HOST:PORT is required", o->cmd);
        if (o->sandbox == NULL && (ex || (o->modes & MODE_RELAY)))
            die("%s: --sandbox ID is required", o->cmd);
    }
    if (fwd && (o->modes & MODE_RELAY) && o->n_tokens == 0)
        die("forward: --token is required for relay rounds (CreateSshSession token; a token "
            "carries at most 3 concurrent forwards, give several for more streams)");
    if (fwd && o->sink_port != 0 && o->sink_port == o->source_port)
        die("forward: --target-port and --source-port must differ");
    if (ex && !o->warmup_set)
        o->warmup = 5;
    if (strcmp(o->cmd, "sessions") == 0) {
        if (o->socket_path == NULL)
            die("sessions: --socket is required");
        if (!o->connections_only && (o->tokens_file == NULL || o->ids_file == NULL))
            die("sessions: --tokens and --sandbox-ids are required (or --connections-only)");
        if (!o->timeout_set)
            o->timeout_s = 3600;
    }
}

static void parse_args(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){
        .bytes = 256ull << 20,
        .streams = 1,
        .reps = 5,
        .warmup = 1,
        .dirs = DIR_PUSH,
        .modes = MODE_DIRECT | MODE_RELAY,
        .chunk = DEFAULT_CHUNK,
        .window = 4u << 20,
        .timeout_s = 120,
        .count = 100,
        .parallel = 32,
        .hold_s = 10,
    };
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        exit(argc < 2 ? 2 : 0);
    }
    o->cmd = argv[1];
    if (strcmp(o->cmd, "forward") != 0 && strcmp(o->cmd, "exec") != 0 &&
        strcmp(o->cmd, "sessions") != 0)
        die("unknown command '%s' (forward, exec or sessions)", o->cmd);
    optind = 2;
    int c;
    while ((c = getopt_long(argc, argv, "h", long_opts, NULL)) != -1)
        parse_option(o, c, optarg);
    check_args(o, argc, argv);
}

int main(int argc, char **argv)
{
    struct bench b = {0};
    log_set_level(LOG_WARN);
    parse_args(argc, argv, &b.o);
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(b.o.cmd, "forward") == 0)
        return cmd_forward(&b);
    if (strcmp(b.o.cmd, "exec") == 0)
        return cmd_exec(&b);
    return cmd_sessions(&b);
}
