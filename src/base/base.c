#include "base/base.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

enum log_level log_level_current = LOG_INFO;
static enum log_format log_format_current = LOG_FORMAT_TEXT;
static int log_fd = 2;

static uint64_t cached_mono_us;
static int64_t cached_wall_ms;

void gw_panic(const char *file, int line, const char *what)
{
    char msg[512];
    int n = snprintf(msg, sizeof(msg), "panic at %s:%d: %s\n", file, line, what);
    if (n > 0 && write(2, msg, (size_t)GW_MIN(n, (int)sizeof(msg) - 1)) < 0) {
        /* nothing left to report to */
    }
    abort();
}

static void *check_alloc(void *p, size_t n)
{
    if (p == NULL && n != 0)
        gw_panic(__FILE__, __LINE__, "out of memory");
    return p;
}

void *gw_xmalloc(size_t n)
{
    return check_alloc(malloc(n ? n : 1), 1);
}

void *gw_xcalloc(size_t nmemb, size_t size)
{
    return check_alloc(calloc(nmemb ? nmemb : 1, size ? size : 1), 1);
}

void *gw_xrealloc(void *p, size_t n)
{
    return check_alloc(realloc(p, n ? n : 1), 1);
}

char *gw_xstrdup(const char *s)
{
    return check_alloc(strdup(s), 1);
}

char *gw_xstrndup(const char *s, size_t n)
{
    return check_alloc(strndup(s, n), 1);
}

char *gw_xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *out = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&out, fmt, ap);
    va_end(ap);
    if (n < 0)
        gw_panic(__FILE__, __LINE__, "out of memory");
    return out;
}

int gw_verrf(char *err, size_t errlen, const char *fmt, va_list ap)
{
    if (err != NULL && errlen > 0)
        vsnprintf(err, errlen, fmt, ap);
    return -1;
}

int gw_errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    gw_verrf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

uint64_t gw_clock_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int64_t gw_clock_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void gw_time_update(void)
{
    cached_mono_us = gw_clock_mono_us();
    cached_wall_ms = gw_clock_wall_ms();
}

void gw_time_invalidate(void)
{
    cached_mono_us = 0;
    cached_wall_ms = 0;
}

uint64_t gw_now_mono_us(void)
{
    if (cached_mono_us == 0)
        gw_time_update();
    return cached_mono_us;
}

int64_t gw_now_wall_ms(void)
{
    if (cached_wall_ms == 0)
        gw_time_update();
    return cached_wall_ms;
}

int gw_random_bytes(void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

void gw_uuid4(char out[37])
{
    uint8_t b[16];
    if (gw_random_bytes(b, sizeof(b)) != 0)
        gw_panic(__FILE__, __LINE__, "getrandom failed");
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

bool gw_uuid_valid(const char *s)
{
    if (s == NULL || strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? c != '-'
                 : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return false;
    }
    return true;
}

/* ---- logging ------------------------------------------------------------ */

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};

void log_set_level(enum log_level l)
{
    log_level_current = l;
}

void log_set_format(enum log_format f)
{
    log_format_current = f;
}

void log_set_fd(int fd)
{
    log_fd = fd;
}

int log_level_parse(const char *s, enum log_level *out)
{
    for (size_t i = 0; i < GW_ARRAY_LEN(level_names); i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = LOG_WARN;
        return 0;
    }
    return -1;
}

const char *log_level_name(enum log_level l)
{
    return (unsigned)l < GW_ARRAY_LEN(level_names) ? level_names[l] : "?";
}

/* Text values are quoted when they hold spaces, quotes, '=' or control bytes,
 * so one event always stays one parseable line. */
static bool needs_quotes(const char *s, size_t n)
{
    if (n == 0)
        return true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f)
            return true;
    }
    return false;
}

static void append_escaped(struct gw_buf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            gw_buf_append(b, "\\\"", 2);
            break;
        case '\\':
            gw_buf_append(b, "\\\\", 2);
            break;
        case '\n':
            gw_buf_append(b, "\\n", 2);
            break;
        case '\r':
            gw_buf_append(b, "\\r", 2);
            break;
        case '\t':
            gw_buf_append(b, "\\t", 2);
            break;
        default:
            if (c < 0x20 || c == 0x7f)
                gw_buf_appendf(b, "\\u%04x", c);
            else
                gw_buf_append(b, &s[i], 1);
        }
    }
}

static void append_value(struct gw_buf *b, const struct log_field *f, bool json)
{
    const char *s;
    size_t n;
    switch (f->type) {
    case LF_T_STR:
    case LF_T_STRN:
        s = f->v.s ? f->v.s : "";
        n = f->type == LF_T_STR ? strlen(s) : (f->v.s ? f->len : 0);
        if (json || needs_quotes(s, n)) {
            gw_buf_append(b, "\"", 1);
            append_escaped(b, s, n);
            gw_buf_append(b, "\"", 1);
        } else {
            gw_buf_append(b, s, n);
        }
        break;
    case LF_T_INT:
        gw_buf_appendf(b, "%lld", (long long)f->v.i);
        break;
    case LF_T_UINT:
        gw_buf_appendf(b, "%llu", (unsigned long long)f->v.u);
        break;
    case LF_T_DBL:
        if (isfinite(f->v.d))
            gw_buf_appendf(b, "%.3f", f->v.d);
        else
            gw_buf_append(b, json ? "null" : "nan", json ? 4 : 3);
        break;
    case LF_T_BOOL:
        gw_buf_append(b, f->v.b ? "true" : "false", f->v.b ? 4 : 5);
        break;
    case LF_T_END:
        break;
    }
}

static void format_time(char *out, size_t n)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t w = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + w, n - w, ".%03ldZ", ts.tv_nsec / 1000000);
}

void log_emit(enum log_level l, const char *event, const struct log_field *fields)
{
    struct gw_buf b = {0};
    char ts[40];
    bool json = log_format_current == LOG_FORMAT_JSON;

    format_time(ts, sizeof(ts));
    if (json)
        gw_buf_appendf(&b, "{\"ts\":\"%s\",\"level\":\"%s\",\"event\":\"%s\"", ts,
                       log_level_name(l), event);
    else
        gw_buf_appendf(&b, "ts=%s level=%s event=%s", ts, log_level_name(l), event);
    for (const struct log_field *f = fields; f->type != LF_T_END; f++) {
        if (json) {
            gw_buf_append(&b, ",\"", 2);
            append_escaped(&b, f->key, strlen(f->key));
            gw_buf_append(&b, "\":", 2);
        } else {
            gw_buf_appendf(&b, " %s=", f->key);
        }
        append_value(&b, f, json);
    }
    gw_buf_append(&b, json ? "}\n" : "\n", json ? 2 : 1);

    const char *p = b.data;
    size_t left = b.len;
    while (left > 0) {
        ssize_t w = write(log_fd, p, left);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                /* A non-blocking stderr that is full: drop rather than block the loop. */
                break;
            }
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    gw_buf_free(&b);
}

/* ---- gw_buf ---------------------------------------------------------------- */

static void buf_reserve(struct gw_buf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 128;
    while (cap < need)
        cap *= 2;
    b->data = gw_xrealloc(b->data, cap);
    b->cap = cap;
}

void gw_buf_append(struct gw_buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void gw_buf_vappendf(struct gw_buf *b, const char *fmt, va_list ap)
{
    /* Most lines fit the stack buffer: one formatting pass, one copy. */
    char tmp[256];
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(tmp)) {
        gw_buf_append(b, tmp, (size_t)n);
        return;
    }
    buf_reserve(b, (size_t)n);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

void gw_buf_appendf(struct gw_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    gw_buf_vappendf(b, fmt, ap);
    va_end(ap);
}

const char *gw_buf_cstr(struct gw_buf *b)
{
    if (b->data == NULL)
        buf_reserve(b, 0), b->data[0] = '\0';
    return b->data;
}

void gw_buf_reset(struct gw_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void gw_buf_free(struct gw_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
