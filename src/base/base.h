/*
 * base: the few things every module needs and nothing else: allocation that
 * aborts on OOM, invariant checks, a cached clock and structured logging.
 *
 * Logging renders one line per event: a dotted event name followed by typed
 * fields, as `key=value` text (default) or one JSON object per line. Fields
 * are built with the LF_* macros so the level is tested before any argument
 * is evaluated:
 *
 *   log_info("grpc.call", LF_STR("method", path), LF_INT("status", st),
 *            LF_DBL("dur_ms", ms));
 */
#ifndef GW_BASE_H
#define GW_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_MUSTCHECK    __attribute__((warn_unused_result))
#define GW_UNUSED       __attribute__((unused))
#define GW_NORETURN     __attribute__((noreturn))
#define GW_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define GW_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define GW_MIN(a, b)    ((a) < (b) ? (a) : (b))
#define GW_MAX(a, b)    ((a) > (b) ? (a) : (b))

/* Guards an invariant of our own code, never peer input: logs and aborts. */
#define GW_ASSERT(expr)                                                                            \
    do {                                                                                           \
        if (__builtin_expect(!(expr), 0))                                                          \
            gw_panic(__FILE__, __LINE__, "assertion failed: " #expr);                              \
    } while (0)

GW_NORETURN void gw_panic(const char *file, int line, const char *what);

/* Allocation of small, fixed sizes: never returns NULL (logs and aborts on
 * OOM). Sizes chosen by a peer must be checked against a limit first. */
void *gw_xmalloc(size_t n);
void *gw_xcalloc(size_t nmemb, size_t size);
void *gw_xrealloc(void *p, size_t n);
char *gw_xstrdup(const char *s);
char *gw_xstrndup(const char *s, size_t n);
/* Caller owns the result, free with free(). */
char *gw_xasprintf(const char *fmt, ...) GW_PRINTF(1, 2);
/* Formats an error message into |err| (skipped when |err| is NULL or
 * |errlen| 0) and returns -1, for `return gw_errf(err, errlen, ...)`. */
int gw_errf(char *err, size_t errlen, const char *fmt, ...) GW_PRINTF(3, 4);
int gw_verrf(char *err, size_t errlen, const char *fmt, va_list ap) GW_PRINTF(3, 0);

/* Clock. gw_time_update() is called once per loop iteration by the reactor;
 * gw_now_*() return the cached value (cheap), gw_clock_*() read the clock. */
void gw_time_update(void);
/* Forgets the cached time: the next gw_now_*() reads the clock. The
 * reactor calls this before each wait, so callbacks after a long idle
 * spell never see the time the loop went to sleep. */
void gw_time_invalidate(void);
uint64_t gw_now_mono_us(void); /* cached CLOCK_MONOTONIC, microseconds */
int64_t gw_now_wall_ms(void);  /* cached CLOCK_REALTIME, ms since the epoch */
uint64_t gw_clock_mono_us(void);
int64_t gw_clock_wall_ms(void);

/* Fill |buf| with |n| cryptographically random bytes. Returns 0 or -1. */
int gw_random_bytes(void *buf, size_t n) GW_MUSTCHECK;
/* Writes a random (version 4) UUID as 36 characters plus NUL into |out|. */
void gw_uuid4(char out[37]);
/* True when |s| is UUID text: 8-4-4-4-12 hex digits (either case). */
bool gw_uuid_valid(const char *s);

/* ---- logging ---------------------------------------------------------- */

enum log_level {
    LOG_ERROR = 0,
    LOG_WARN = 1,
    LOG_INFO = 2,
    LOG_DEBUG = 3,
    LOG_TRACE = 4,
};

enum log_format {
    LOG_FORMAT_TEXT = 0, /* event=... key=value */
    LOG_FORMAT_JSON = 1, /* {"ts":...,"level":...,"event":...,...} */
};

enum log_field_type {
    LF_T_END = 0,
    LF_T_STR,  /* NUL-terminated string; NULL renders as empty */
    LF_T_STRN, /* string with explicit length */
    LF_T_INT,  /* int64_t */
    LF_T_UINT, /* uint64_t */
    LF_T_DBL,  /* double, rendered with 3 decimals */
    LF_T_BOOL,
};

struct log_field {
    const char *key;
    enum log_field_type type;
    size_t len; /* LF_T_STRN only */
    union {
        const char *s;
        int64_t i;
        uint64_t u;
        double d;
        bool b;
    } v;
};

#define LF_STR(k, x)     ((struct log_field){.key = (k), .type = LF_T_STR, .v.s = (x)})
#define LF_STRN(k, x, n) ((struct log_field){.key = (k), .type = LF_T_STRN, .len = (n), .v.s = (x)})
#define LF_INT(k, x)     ((struct log_field){.key = (k), .type = LF_T_INT, .v.i = (int64_t)(x)})
#define LF_UINT(k, x)    ((struct log_field){.key = (k), .type = LF_T_UINT, .v.u = (uint64_t)(x)})
#define LF_DBL(k, x)     ((struct log_field){.key = (k), .type = LF_T_DBL, .v.d = (double)(x)})
#define LF_BOOL(k, x)    ((struct log_field){.key = (k), .type = LF_T_BOOL, .v.b = (x)})
#define LF_END_          ((struct log_field){.key = NULL, .type = LF_T_END})

extern enum log_level log_level_current;

static inline bool log_enabled(enum log_level l)
{
    return l <= log_level_current;
}

void log_set_level(enum log_level l);
void log_set_format(enum log_format f);
/* Redirects log lines to |fd| (default 2). */
void log_set_fd(int fd);
/* Parses "error", "warn", "info", "debug", "trace" (case-insensitive).
 * Returns 0 and sets |*out|, or -1 on an unknown name. */
int log_level_parse(const char *s, enum log_level *out) GW_MUSTCHECK;
const char *log_level_name(enum log_level l);

/* Renders one line; |fields| ends with an LF_T_END entry. Use the macros. */
void log_emit(enum log_level l, const char *event, const struct log_field *fields);

#define log_at(lvl, ev, ...)                                                                       \
    do {                                                                                           \
        if (log_enabled(lvl))                                                                      \
            log_emit((lvl), (ev), (const struct log_field[]){__VA_ARGS__ __VA_OPT__(, ) LF_END_}); \
    } while (0)
#define log_error(ev, ...) log_at(LOG_ERROR, ev __VA_OPT__(, ) __VA_ARGS__)
#define log_warn(ev, ...)  log_at(LOG_WARN, ev __VA_OPT__(, ) __VA_ARGS__)
#define log_info(ev, ...)  log_at(LOG_INFO, ev __VA_OPT__(, ) __VA_ARGS__)
#define log_debug(ev, ...) log_at(LOG_DEBUG, ev __VA_OPT__(, ) __VA_ARGS__)
#define log_trace(ev, ...) log_at(LOG_TRACE, ev __VA_OPT__(, ) __VA_ARGS__)

/* ---- growable byte buffer ------------------------------------------------ */

/* A plain byte buffer for building small strings (errors, headers, JSON). */
struct gw_buf {
    char *data; /* NUL-terminated when len > 0 or after gw_buf_cstr() */
    size_t len;
    size_t cap;
};

void gw_buf_append(struct gw_buf *b, const void *p, size_t n);
void gw_buf_appendf(struct gw_buf *b, const char *fmt, ...) GW_PRINTF(2, 3);
void gw_buf_vappendf(struct gw_buf *b, const char *fmt, va_list ap);
/* Borrowed, valid until the next append or gw_buf_free(). Never NULL. */
const char *gw_buf_cstr(struct gw_buf *b);
void gw_buf_reset(struct gw_buf *b);
void gw_buf_free(struct gw_buf *b);

#endif /* GW_BASE_H */
