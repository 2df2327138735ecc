#include "toml/toml.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TOML_MAX_BYTES  (1024 * 1024)
#define TOML_MAX_DEPTH  32
#define TABLE_INDEX_MIN 8  /* tables with fewer keys are searched linearly */
#define SHOW_MAX        64 /* longest key text quoted in an error message */

/* How a table came to exist. TOML 1.0 lets a [header] name a table that was
 * only implied by an earlier header, but never one that a header or dotted
 * keys already defined; dotted keys may only extend tables made by dotted
 * keys. */
enum table_origin {
    ORIGIN_ROOT,
    ORIGIN_IMPLICIT, /* an intermediate part of a [header] path */
    ORIGIN_HEADER,   /* named by its own [header] */
    ORIGIN_DOTTED,   /* created by a dotted key such as a.b = 1 */
};

struct toml_table {
    char **keys;
    struct toml_value **vals;
    size_t len;
    size_t cap;
    uint32_t *slots; /* open-addressing index holding i + 1; NULL while small */
    size_t nslots;   /* a power of two, or 0 */
};

struct toml_array {
    char **items;
    size_t len;
    size_t cap;
};

struct toml_value {
    enum toml_type type;
    enum table_origin origin; /* tables only */
    unsigned line;
    unsigned col;
    union {
        struct toml_table tab;
        struct toml_array arr;
        char *str;
        int64_t i;
        bool b;
    } u;
};

/* A possibly dotted key as written: `a."b c".d`. */
struct keypath {
    char *part[TOML_MAX_DEPTH];
    const char *pos[TOML_MAX_DEPTH]; /* where each part starts, for errors */
    size_t n;
};

struct parser {
    const char *name;
    const char *p;   /* next byte to read */
    const char *end; /* one past the last byte */
    unsigned line;
    const char *line_start;
    char *err;
    size_t errlen;
    struct toml_value *root;
    struct toml_value *cur; /* table that receives key = value lines */
    size_t cur_depth;       /* parts in the current [header] */
};

/* ---- errors ------------------------------------------------------------- */

/* Columns count characters, not bytes; the text was checked to be UTF-8. */
static unsigned column_of(const struct parser *ps, const char *at)
{
    unsigned col = 1;
    for (const char *q = ps->line_start; q < at; q++)
        if (((unsigned char)*q & 0xC0) != 0x80)
            col++;
    return col;
}

GW_PRINTF(4, 5)
static int fail(struct parser *ps, const char *at, int code, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (ps->err == NULL || ps->errlen == 0)
        return code;
    if (at < ps->line_start)
        at = ps->line_start;
    n = snprintf(ps->err, ps->errlen, "%s:%u:%u: ", ps->name, ps->line, column_of(ps, at));
    if (n >= 0 && (size_t)n < ps->errlen) {
        va_start(ap, fmt);
        vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Writes the first |n| parts of |kp| as a.b.c into |out| (|outlen| > 4),
 * replacing bytes that would break a one-line message and cutting long keys
 * short with "...". */
static const char *show_path(const struct keypath *kp, size_t n, char *out, size_t outlen)
{
    size_t room = outlen - 4;
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        if (i > 0) {
            if (o == room)
                goto cut;
            out[o++] = '.';
        }
        for (const char *s = kp->part[i]; *s != '\0'; s++) {
            if (o == room)
                goto cut;
            out[o++] = ((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s;
        }
    }
    out[o] = '\0';
    return out;
cut:
    memcpy(out + o, "...", 4);
    return out;
}

/* ---- values ------------------------------------------------------------- */

static struct toml_value *value_new(enum toml_type type, unsigned line, unsigned col)
{
    struct toml_value *v = gw_xcalloc(1, sizeof(*v));
    v->type = type;
    v->line = line;
    v->col = col;
    return v;
}

void toml_free(struct toml_value *v)
{
    if (v == NULL)
        return;
    switch (v->type) {
    case TOML_TABLE:
        /* Recursion is bounded: tables nest at most TOML_MAX_DEPTH deep. */
        for (size_t i = 0; i < v->u.tab.len; i++) {
            free(v->u.tab.keys[i]);
            toml_free(v->u.tab.vals[i]);
        }
        free(v->u.tab.keys);
        free(v->u.tab.vals);
        free(v->u.tab.slots);
        break;
    case TOML_ARRAY:
        for (size_t i = 0; i < v->u.arr.len; i++)
            free(v->u.arr.items[i]);
        free(v->u.arr.items);
        break;
    case TOML_STRING:
        free(v->u.str);
        break;
    case TOML_INT:
    case TOML_BOOL:
        break;
    }
    free(v);
}

/* FNV-1a: keys are short and come from a trusted, size-limited file. */
static uint32_t hash_key(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static void index_insert(struct toml_table *t, size_t idx)
{
    size_t mask = t->nslots - 1;
    size_t i = hash_key(t->keys[idx]) & mask;
    while (t->slots[i] != 0)
        i = (i + 1) & mask;
    t->slots[i] = (uint32_t)(idx + 1);
}

/* Keeps the index at most half full so probes stay short. */
static void index_grow(struct toml_table *t)
{
    size_t n = t->nslots ? t->nslots * 2 : 32;
    free(t->slots);
    t->slots = gw_xcalloc(n, sizeof(*t->slots));
    t->nslots = n;
    for (size_t i = 0; i < t->len; i++)
        index_insert(t, i);
}

static struct toml_value *table_find(const struct toml_value *v, const char *key)
{
    const struct toml_table *t = &v->u.tab;
    size_t mask;

    if (t->slots == NULL) {
        for (size_t i = 0; i < t->len; i++)
            if (strcmp(t->keys[i], key) == 0)
                return t->vals[i];
        return NULL;
    }
    mask = t->nslots - 1;
    for (size_t i = hash_key(key) & mask; t->slots[i] != 0; i = (i + 1) & mask) {
        uint32_t s = t->slots[i] - 1;
        if (strcmp(t->keys[s], key) == 0)
            return t->vals[s];
    }
    return NULL;
}

/* Takes ownership of |key| and |val|. The caller checked |key| is new. */
static void table_add(struct toml_value *v, char *key, struct toml_value *val)
{
    struct toml_table *t = &v->u.tab;

    if (t->len == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 4;
        t->keys = gw_xrealloc(t->keys, t->cap * sizeof(*t->keys));
        t->vals = gw_xrealloc(t->vals, t->cap * sizeof(*t->vals));
    }
    t->keys[t->len] = key;
    t->vals[t->len] = val;
    t->len++;
    if (t->len >= TABLE_INDEX_MIN && t->len * 2 > t->nslots)
        index_grow(t);
    else if (t->slots != NULL)
        index_insert(t, t->len - 1);
}

static void array_push(struct toml_value *v, char *s)
{
    struct toml_array *a = &v->u.arr;
    if (a->len == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 4;
        a->items = gw_xrealloc(a->items, a->cap * sizeof(*a->items));
    }
    a->items[a->len++] = s;
}

/* ---- text checks and low-level scanning ----------------------------------- */

/* Length of the UTF-8 sequence at |p| (1..4), or 0 when it is truncated,
 * overlong, a surrogate or above U+10FFFF. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t n;
    uint32_t cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0)
        n = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, cp = c & 0x07;
    else
        return 0;
    if ((size_t)(end - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* TOML allows no raw control character except tab anywhere (strings and
 * comments included) and requires UTF-8, so one pass up front lets the
 * grammar below ignore encoding entirely. */
static int check_text(struct parser *ps)
{
    const char *p = ps->p;
    int rc = 0;

    while (p < ps->end && rc == 0) {
        unsigned char c = (unsigned char)*p;
        size_t n = 1;
        if (c == '\n') {
            ps->line++;
            ps->line_start = p + 1;
        } else if (c == '\r') {
            if (p + 1 >= ps->end || p[1] != '\n')
                rc = fail(ps, p, TOML_ERR_SYNTAX, "carriage return not followed by a line feed");
        } else if ((c < 0x20 && c != '\t') || c == 0x7f) {
            rc = fail(ps, p, TOML_ERR_SYNTAX, "control character U+%04X is not allowed", c);
        } else if ((n = utf8_len((const unsigned char *)p, (const unsigned char *)ps->end)) == 0) {
            rc = fail(ps, p, TOML_ERR_SYNTAX, "invalid UTF-8");
        }
        p += n ? n : 1;
    }
    return rc;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_bare(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' || c == '-';
}

static bool at(const struct parser *ps, char c)
{
    return ps->p < ps->end && *ps->p == c;
}

static bool at_newline(const struct parser *ps)
{
    return at(ps, '\n') || at(ps, '\r');
}

static void skip_ws(struct parser *ps)
{
    while (at(ps, ' ') || at(ps, '\t'))
        ps->p++;
}

static void skip_comment(struct parser *ps)
{
    if (at(ps, '#'))
        while (ps->p < ps->end && !at_newline(ps))
            ps->p++;
}

/* Consumes LF or CRLF (check_text refused a lone CR). */
static bool eat_newline(struct parser *ps)
{
    if (at(ps, '\r'))
        ps->p++;
    if (!at(ps, '\n'))
        return false;
    ps->p++;
    ps->line++;
    ps->line_start = ps->p;
    return true;
}

/* Whitespace, comments and newlines, as allowed between array elements. */
static void skip_blank(struct parser *ps)
{
    for (;;) {
        skip_ws(ps);
        skip_comment(ps);
        if (!eat_newline(ps))
            return;
    }
}

/* True when |q| ends a scalar: the end, whitespace, a comment or a separator. */
static bool is_delim(const struct parser *ps, const char *q)
{
    return q >= ps->end || *q == ' ' || *q == '\t' || *q == '\n' || *q == '\r' || *q == '#' ||
           *q == ',' || *q == ']';
}

static bool has_word(const struct parser *ps, const char *q, const char *w)
{
    size_t n = strlen(w);
    return (size_t)(ps->end - q) >= n && memcmp(q, w, n) == 0 && is_delim(ps, q + n);
}

/* ---- strings -------------------------------------------------------------- */

static int hex_value(char c)
{
    if (is_digit(c))
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static size_t utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* \uXXXX or \UXXXXXXXX at |*pp| (the backslash), |ndig| hex digits. U+0000
 * is refused too: values are handed to C code as NUL-terminated strings. */
static int decode_unicode(struct parser *ps, const char **pp, const char *end, char **dp, int ndig)
{
    const char *p = *pp;
    uint32_t cp = 0;

    if (end - (p + 2) < ndig)
        return fail(ps, p, TOML_ERR_SYNTAX, "\\%c escape needs %d hexadecimal digits", p[1], ndig);
    for (int i = 0; i < ndig; i++) {
        int h = hex_value(p[2 + i]);
        if (h < 0)
            return fail(ps, p, TOML_ERR_SYNTAX, "\\%c escape needs %d hexadecimal digits", p[1],
                        ndig);
        cp = (cp << 4) | (uint32_t)h;
    }
    if (cp == 0)
        return fail(ps, p, TOML_ERR_SYNTAX, "NUL characters are not allowed in strings");
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return fail(ps, p, TOML_ERR_SYNTAX, "escape is not a Unicode scalar value (U+%X)", cp);
    *dp += utf8_encode(cp, *dp);
    *pp = p + 2 + ndig;
    return 0;
}

static int decode_escape(struct parser *ps, const char **pp, const char *end, char **dp)
{
    static const char from[] = "btnfr\"\\";
    static const char to[] = "\b\t\n\f\r\"\\";
    const char *p = *pp;
    const char *hit;

    if (p[1] == 'u' || p[1] == 'U')
        return decode_unicode(ps, pp, end, dp, p[1] == 'u' ? 4 : 8);
    hit = p[1] != '\0' ? strchr(from, p[1]) : NULL;
    if (hit == NULL) {
        if ((unsigned char)p[1] > 0x20 && (unsigned char)p[1] < 0x7f)
            return fail(ps, p, TOML_ERR_SYNTAX, "invalid escape sequence '\\%c'", p[1]);
        return fail(ps, p, TOML_ERR_SYNTAX, "invalid escape sequence");
    }
    *(*dp)++ = to[hit - from];
    *pp = p + 2;
    return 0;
}

/* Decodes the body of a basic string, [from, to), into |dst|, which has room
 * for to - from + 1 bytes: no escape decodes to more bytes than it takes. */
static int decode_basic(struct parser *ps, const char *from, const char *to, char *dst)
{
    const char *p = from;
    char *d = dst;
    int rc;

    while (p < to) {
        if (*p != '\\') {
            *d++ = *p++;
            continue;
        }
        rc = decode_escape(ps, &p, to, &d);
        if (rc != 0)
            return rc;
    }
    *d = '\0';
    return 0;
}

static int parse_basic(struct parser *ps, char **out)
{
    const char *open = ps->p;
    const char *q = open + 1;
    char *s;
    int rc;

    if (ps->end - open >= 3 && open[1] == '"' && open[2] == '"')
        return fail(ps, open, TOML_ERR_SYNTAX, "multi-line strings are not supported");
    /* Find the closing quote first so the decoded string can be sized. */
    while (q < ps->end && *q != '"' && *q != '\n' && *q != '\r') {
        if (*q == '\\' && q + 1 < ps->end && q[1] != '\n' && q[1] != '\r')
            q++;
        q++;
    }
    if (q >= ps->end || *q != '"')
        return fail(ps, open, TOML_ERR_SYNTAX, "unterminated string");
    s = gw_xmalloc((size_t)(q - open));
    rc = decode_basic(ps, open + 1, q, s);
    if (rc != 0) {
        free(s);
        return rc;
    }
    *out = s;
    ps->p = q + 1;
    return 0;
}

static int parse_literal(struct parser *ps, char **out)
{
    const char *open = ps->p;
    const char *q = open + 1;

    if (ps->end - open >= 3 && open[1] == '\'' && open[2] == '\'')
        return fail(ps, open, TOML_ERR_SYNTAX, "multi-line strings are not supported");
    while (q < ps->end && *q != '\'' && *q != '\n' && *q != '\r')
        q++;
    if (q >= ps->end || *q != '\'')
        return fail(ps, open, TOML_ERR_SYNTAX, "unterminated string");
    *out = gw_xstrndup(open + 1, (size_t)(q - open - 1));
    ps->p = q + 1;
    return 0;
}

static int parse_string(struct parser *ps, char **out)
{
    return at(ps, '"') ? parse_basic(ps, out) : parse_literal(ps, out);
}

/* ---- scalars and arrays ----------------------------------------------------- */

/* Converts the digits in [digits, stop), already known to be [0-9_] starting
 * with a digit, checking '_' placement, leading zeros and the int64 range. */
static int int_value(struct parser *ps, const char *digits, const char *stop, bool neg,
                     int64_t *out)
{
    uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    uint64_t acc = 0;

    if (digits[0] == '0' && stop - digits > 1)
        return fail(ps, digits, TOML_ERR_SYNTAX, "leading zeros are not allowed");
    for (const char *p = digits; p < stop; p++) {
        if (*p == '_') {
            if (p + 1 == stop || !is_digit(p[1]))
                return fail(ps, p, TOML_ERR_SYNTAX, "'_' must stand between two digits");
            continue;
        }
        unsigned d = (unsigned)(*p - '0');
        if (acc > (limit - d) / 10)
            return fail(ps, digits, TOML_ERR_SYNTAX, "integer does not fit in 64 bits");
        acc = acc * 10 + d;
    }
    if (neg)
        *out = acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc;
    else
        *out = (int64_t)acc;
    return 0;
}

/* Only plain decimal integers are accepted; the other number forms are named
 * in the error so a user knows the value is unsupported, not misspelt. */
static int parse_int(struct parser *ps, int64_t *out)
{
    const char *start = ps->p;
    const char *q = ps->p;
    const char *digits;
    bool neg = false;
    int rc;

    if (q < ps->end && (*q == '+' || *q == '-'))
        neg = *q++ == '-';
    if (has_word(ps, q, "inf") || has_word(ps, q, "nan"))
        return fail(ps, start, TOML_ERR_SYNTAX, "floats are not supported");
    if (q >= ps->end || !is_digit(*q))
        return fail(ps, start, TOML_ERR_SYNTAX,
                    "invalid value (expected a string, integer, boolean or array of strings)");
    if (*q == '0' && q + 1 < ps->end && (q[1] == 'x' || q[1] == 'o' || q[1] == 'b'))
        return fail(ps, start, TOML_ERR_SYNTAX,
                    "hexadecimal, octal and binary integers are not supported");
    digits = q;
    while (q < ps->end && (is_digit(*q) || *q == '_'))
        q++;
    if (q < ps->end && (*q == '.' || *q == 'e' || *q == 'E'))
        return fail(ps, start, TOML_ERR_SYNTAX, "floats are not supported");
    if (q < ps->end && (*q == '-' || *q == ':'))
        return fail(ps, start, TOML_ERR_SYNTAX, "dates and times are not supported");
    if (!is_delim(ps, q))
        return fail(ps, q, TOML_ERR_SYNTAX, "invalid integer");
    rc = int_value(ps, digits, q, neg, out);
    if (rc == 0)
        ps->p = q;
    return rc;
}

static int parse_array(struct parser *ps, struct toml_value *a)
{
    char *s;
    int rc;

    ps->p++; /* '[' */
    for (;;) {
        skip_blank(ps);
        if (ps->p >= ps->end)
            return fail(ps, ps->p, TOML_ERR_SYNTAX, "unterminated array");
        if (at(ps, ']'))
            break;
        if (at(ps, ','))
            return fail(ps, ps->p, TOML_ERR_SYNTAX, "unexpected ',' in array");
        if (!at(ps, '"') && !at(ps, '\''))
            return fail(ps, ps->p, TOML_ERR_SYNTAX, "arrays may only contain strings");
        rc = parse_string(ps, &s);
        if (rc != 0)
            return rc;
        array_push(a, s);
        skip_blank(ps);
        if (ps->p >= ps->end)
            return fail(ps, ps->p, TOML_ERR_SYNTAX, "unterminated array");
        if (at(ps, ','))
            ps->p++;
        else if (!at(ps, ']'))
            return fail(ps, ps->p, TOML_ERR_SYNTAX, "expected ',' or ']' in array");
    }
    ps->p++; /* ']' */
    return 0;
}

static int parse_bool(struct parser *ps, bool *out)
{
    if (has_word(ps, ps->p, "true")) {
        ps->p += 4;
        *out = true;
        return 0;
    }
    if (has_word(ps, ps->p, "false")) {
        ps->p += 5;
        *out = false;
        return 0;
    }
    return fail(ps, ps->p, TOML_ERR_SYNTAX,
                "invalid value (expected a string, integer, boolean or array of strings)");
}

static int parse_value(struct parser *ps, struct toml_value **out)
{
    unsigned line = ps->line;
    unsigned col = column_of(ps, ps->p);
    struct toml_value *v = NULL;
    int rc;

    if (ps->p >= ps->end || at_newline(ps) || at(ps, '#'))
        return fail(ps, ps->p, TOML_ERR_SYNTAX, "expected a value after '='");
    if (at(ps, '{'))
        return fail(ps, ps->p, TOML_ERR_SYNTAX, "inline tables are not supported");
    if (at(ps, '"') || at(ps, '\'')) {
        v = value_new(TOML_STRING, line, col);
        rc = parse_string(ps, &v->u.str);
    } else if (at(ps, '[')) {
        v = value_new(TOML_ARRAY, line, col);
        rc = parse_array(ps, v);
    } else if (at(ps, 't') || at(ps, 'f')) {
        v = value_new(TOML_BOOL, line, col);
        rc = parse_bool(ps, &v->u.b);
    } else {
        v = value_new(TOML_INT, line, col);
        rc = parse_int(ps, &v->u.i);
    }
    if (rc != 0) {
        toml_free(v);
        return rc;
    }
    *out = v;
    return 0;
}

/* ---- keys, headers, key/value lines ----------------------------------------- */

static int parse_key_part(struct parser *ps, char **out)
{
    const char *start = ps->p;

    if (at(ps, '"') || at(ps, '\''))
        return parse_string(ps, out);
    while (ps->p < ps->end && is_bare(*ps->p))
        ps->p++;
    if (ps->p == start)
        return fail(ps, start, TOML_ERR_SYNTAX, "expected a key");
    *out = gw_xstrndup(start, (size_t)(ps->p - start));
    return 0;
}

static int parse_keypath(struct parser *ps, struct keypath *kp)
{
    int rc;

    for (;;) {
        if (kp->n == TOML_MAX_DEPTH)
            return fail(ps, ps->p, TOML_ERR_LIMIT, "keys nest deeper than %d levels",
                        TOML_MAX_DEPTH);
        kp->pos[kp->n] = ps->p;
        rc = parse_key_part(ps, &kp->part[kp->n]);
        if (rc != 0)
            return rc;
        kp->n++;
        skip_ws(ps);
        if (!at(ps, '.'))
            return 0;
        ps->p++;
        skip_ws(ps);
    }
}

static void keypath_free(struct keypath *kp)
{
    for (size_t i = 0; i < kp->n; i++)
        free(kp->part[i]);
    kp->n = 0;
}

static struct toml_value *table_new(struct parser *ps, const char *pos, enum table_origin origin)
{
    struct toml_value *t = value_new(TOML_TABLE, ps->line, column_of(ps, pos));
    t->origin = origin;
    return t;
}

/* Walks or creates the tables of a [header] path and makes the last one the
 * target of the following key/value lines. */
static int open_table(struct parser *ps, struct keypath *kp, const char *start)
{
    struct toml_value *t = ps->root;
    char path[SHOW_MAX + 4];

    for (size_t i = 0; i < kp->n; i++) {
        struct toml_value *child = table_find(t, kp->part[i]);
        bool last = i + 1 == kp->n;
        if (child == NULL) {
            child = table_new(ps, start, last ? ORIGIN_HEADER : ORIGIN_IMPLICIT);
            table_add(t, gw_xstrdup(kp->part[i]), child);
        } else if (child->type != TOML_TABLE) {
            return fail(ps, kp->pos[i], TOML_ERR_SYNTAX, "key '%s' is a value, not a table",
                        show_path(kp, i + 1, path, sizeof(path)));
        } else if (last && child->origin == ORIGIN_HEADER) {
            return fail(ps, start, TOML_ERR_SYNTAX, "table [%s] is defined twice",
                        show_path(kp, i + 1, path, sizeof(path)));
        } else if (last && child->origin == ORIGIN_DOTTED) {
            return fail(ps, start, TOML_ERR_SYNTAX, "table [%s] was already defined by dotted keys",
                        show_path(kp, i + 1, path, sizeof(path)));
        } else if (last) {
            child->origin = ORIGIN_HEADER;
            child->line = ps->line;
            child->col = column_of(ps, start);
        }
        t = child;
    }
    ps->cur = t;
    ps->cur_depth = kp->n;
    return 0;
}

static int parse_header(struct parser *ps)
{
    struct keypath kp = {.n = 0};
    const char *start = ps->p;
    int rc;

    ps->p++; /* '[' */
    if (at(ps, '[')) {
        rc = fail(ps, start, TOML_ERR_SYNTAX, "arrays of tables ([[...]]) are not supported");
        goto out;
    }
    skip_ws(ps);
    rc = parse_keypath(ps, &kp);
    if (rc != 0)
        goto out;
    if (!at(ps, ']')) {
        rc = fail(ps, ps->p, TOML_ERR_SYNTAX, "expected ']' at the end of the table header");
        goto out;
    }
    ps->p++;
    rc = open_table(ps, &kp, start);
out:
    keypath_free(&kp);
    return rc;
}

/* Finds the table a dotted key's last part goes into, creating the
 * intermediate tables, and checks that the last part is new. */
static int walk_dotted(struct parser *ps, struct keypath *kp, struct toml_value **out)
{
    struct toml_value *t = ps->cur;
    char path[SHOW_MAX + 4];

    for (size_t i = 0; i + 1 < kp->n; i++) {
        struct toml_value *child = table_find(t, kp->part[i]);
        if (child == NULL) {
            child = table_new(ps, kp->pos[i], ORIGIN_DOTTED);
            table_add(t, gw_xstrdup(kp->part[i]), child);
        } else if (child->type != TOML_TABLE) {
            return fail(ps, kp->pos[i], TOML_ERR_SYNTAX, "key '%s' is a value, not a table",
                        show_path(kp, i + 1, path, sizeof(path)));
        } else if (child->origin != ORIGIN_DOTTED) {
            return fail(ps, kp->pos[i], TOML_ERR_SYNTAX,
                        "table '%s' was defined by a [header]; dotted keys cannot extend it",
                        show_path(kp, i + 1, path, sizeof(path)));
        }
        t = child;
    }
    if (table_find(t, kp->part[kp->n - 1]) != NULL)
        return fail(ps, kp->pos[kp->n - 1], TOML_ERR_SYNTAX, "duplicate key '%s'",
                    show_path(kp, kp->n, path, sizeof(path)));
    *out = t;
    return 0;
}

static int parse_keyval(struct parser *ps)
{
    struct keypath kp = {.n = 0};
    struct toml_value *t = NULL;
    struct toml_value *v = NULL;
    int rc;

    rc = parse_keypath(ps, &kp);
    if (rc != 0)
        goto out;
    if (ps->cur_depth + kp.n > TOML_MAX_DEPTH) {
        rc = fail(ps, kp.pos[0], TOML_ERR_LIMIT, "keys nest deeper than %d levels", TOML_MAX_DEPTH);
        goto out;
    }
    if (!at(ps, '=')) {
        rc = fail(ps, ps->p, TOML_ERR_SYNTAX, "expected '=' after the key");
        goto out;
    }
    ps->p++;
    skip_ws(ps);
    rc = walk_dotted(ps, &kp, &t);
    if (rc != 0)
        goto out;
    rc = parse_value(ps, &v);
    if (rc != 0)
        goto out;
    table_add(t, kp.part[kp.n - 1], v);
    kp.part[kp.n - 1] = NULL;
out:
    keypath_free(&kp);
    return rc;
}

/* One logical line: blank, comment, [header] or key = value, then the end
 * of the line. */
static int parse_line(struct parser *ps)
{
    int rc = 0;

    skip_ws(ps);
    if (at(ps, '['))
        rc = parse_header(ps);
    else if (ps->p < ps->end && !at_newline(ps) && !at(ps, '#'))
        rc = parse_keyval(ps);
    if (rc != 0)
        return rc;
    skip_ws(ps);
    skip_comment(ps);
    if (ps->p < ps->end && !eat_newline(ps))
        return fail(ps, ps->p, TOML_ERR_SYNTAX, "expected the end of the line");
    return 0;
}

int toml_parse(const char *name, const char *text, size_t len, struct toml_value **out, char *err,
               size_t errlen)
{
    struct parser ps = {
        .name = name != NULL ? name : "<input>",
        .p = text,
        .end = text != NULL ? text + len : NULL,
        .line = 1,
        .line_start = text,
        .err = err,
        .errlen = errlen,
    };
    int rc = 0;

    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    ps.root = ps.cur = value_new(TOML_TABLE, 1, 1);
    ps.root->origin = ORIGIN_ROOT;
    if (len > TOML_MAX_BYTES) {
        rc = fail(&ps, ps.p, TOML_ERR_LIMIT, "input is larger than 1 MiB");
        goto out;
    }
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        ps.p = ps.line_start = text + 3; /* byte order mark */
    rc = check_text(&ps);
    if (rc != 0)
        goto out;
    ps.line = 1;
    ps.line_start = ps.p;
    while (rc == 0 && ps.p < ps.end)
        rc = parse_line(&ps);
    if (rc == 0) {
        *out = ps.root;
        ps.root = NULL;
    }
out:
    toml_free(ps.root);
    return rc;
}

/* Reads at most TOML_MAX_BYTES + 1 bytes so an oversized file is detected
 * without reading all of it. */
static int read_file(const char *path, char **buf, size_t *len, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t n = 0;
    char *b = NULL;
    int rc = 0;

    if (fd < 0)
        goto fail_io;
    b = gw_xmalloc(TOML_MAX_BYTES + 1);
    while (n <= TOML_MAX_BYTES) {
        ssize_t r = read(fd, b + n, TOML_MAX_BYTES + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto fail_io;
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *buf = b;
    *len = n;
    b = NULL;
    goto out;
fail_io:
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
    rc = TOML_ERR_IO;
out:
    if (fd >= 0)
        close(fd);
    free(b);
    return rc;
}

int toml_parse_file(const char *path, struct toml_value **out, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    int rc;

    *out = NULL;
    rc = read_file(path, &buf, &len, err, errlen);
    if (rc == 0)
        rc = toml_parse(path, buf, len, out, err, errlen);
    free(buf);
    return rc;
}

/* ---- accessors ---------------------------------------------------------------
 * A value of the wrong type reads as empty rather than aborting, so callers
 * that check toml_type() first lose nothing and the others stay safe. */

enum toml_type toml_type(const struct toml_value *v)
{
    return v->type;
}

unsigned toml_line(const struct toml_value *v)
{
    return v->line;
}

unsigned toml_col(const struct toml_value *v)
{
    return v->col;
}

size_t toml_table_len(const struct toml_value *t)
{
    return t != NULL && t->type == TOML_TABLE ? t->u.tab.len : 0;
}

const char *toml_table_key(const struct toml_value *t, size_t i)
{
    return i < toml_table_len(t) ? t->u.tab.keys[i] : NULL;
}

struct toml_value *toml_table_at(const struct toml_value *t, size_t i)
{
    return i < toml_table_len(t) ? t->u.tab.vals[i] : NULL;
}

struct toml_value *toml_table_get(const struct toml_value *t, const char *key)
{
    if (t == NULL || t->type != TOML_TABLE || key == NULL)
        return NULL;
    return table_find(t, key);
}

const char *toml_string(const struct toml_value *v)
{
    return v != NULL && v->type == TOML_STRING ? v->u.str : NULL;
}

int64_t toml_int(const struct toml_value *v)
{
    return v != NULL && v->type == TOML_INT ? v->u.i : 0;
}

bool toml_bool(const struct toml_value *v)
{
    return v != NULL && v->type == TOML_BOOL ? v->u.b : false;
}

size_t toml_array_len(const struct toml_value *a)
{
    return a != NULL && a->type == TOML_ARRAY ? a->u.arr.len : 0;
}

const char *toml_array_string(const struct toml_value *a, size_t i)
{
    return i < toml_array_len(a) ? a->u.arr.items[i] : NULL;
}
