#include "labels/labels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Offending text is shown up to this many input bytes, then "...". */
#define SHOWN_INPUT_MAX 64
/* Each shown byte may become "\xNN" (4 bytes); plus "..." and NUL. */
#define SHOWN_BUF (SHOWN_INPUT_MAX * 4 + 4)

/* ---- error text ---------------------------------------------------------- */

/* Copies |n| bytes of |s| into |dst| for an error message: control bytes,
 * non-ASCII bytes, quote and backslash become \xNN so the message stays one
 * printable line whatever the input. */
static void render_text(char dst[SHOWN_BUF], const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t shown = GW_MIN(n, (size_t)SHOWN_INPUT_MAX);
    size_t o = 0;

    for (size_t i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f || c == '\'' || c == '\\') {
            dst[o++] = '\\';
            dst[o++] = 'x';
            dst[o++] = hex[c >> 4];
            dst[o++] = hex[c & 0xf];
        } else {
            dst[o++] = (char)c;
        }
    }
    if (shown < n) {
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = '\0';
}

/* Writes "<what> '<s>': <reason>" (or "<what> <reason>" when |s| is NULL)
 * into |err| and returns false, so callers can `return fail(...)`. */
static bool fail(char *err, size_t errlen, const char *what, const char *s, size_t n,
                 const char *reason)
{
    char shown[SHOWN_BUF];

    if (err == NULL || errlen == 0)
        return false;
    if (s == NULL) {
        snprintf(err, errlen, "%s %s", what, reason);
        return false;
    }
    render_text(shown, s, n);
    snprintf(err, errlen, "%s '%s': %s", what, shown, reason);
    return false;
}

/* ---- character rules ----------------------------------------------------- */

/* ASCII only: upstream uses Rust's Unicode-aware char::is_alphanumeric, so
 * it also accepts e.g. "é" or "名"; we deliberately accept ASCII only. */
static bool is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool is_segment_char(unsigned char c)
{
    return is_alnum(c) || c == '-' || c == '_' || c == '.';
}

static bool is_lower_digit(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* Outcome of checking a key's name part or a label value; they share the
 * charset and the first/last rule. */
enum segment_check {
    SEG_OK = 0,
    SEG_EMPTY,
    SEG_TOO_LONG,
    SEG_BAD_CHAR,
    SEG_BAD_START,
    SEG_BAD_END,
};

static const char *const name_reasons[] = {
    [SEG_EMPTY] = "name must not be empty",
    [SEG_TOO_LONG] = "name must be at most 63 characters",
    [SEG_BAD_CHAR] = "name may contain only letters, digits, '-', '_' and '.'",
    [SEG_BAD_START] = "name must start with a letter or digit",
    [SEG_BAD_END] = "name must end with a letter or digit",
};

static const char *const value_reasons[] = {
    [SEG_EMPTY] = "must not be empty",
    [SEG_TOO_LONG] = "must be at most 63 characters",
    [SEG_BAD_CHAR] = "may contain only letters, digits, '-', '_' and '.'",
    [SEG_BAD_START] = "must start with a letter or digit",
    [SEG_BAD_END] = "must end with a letter or digit",
};

/* Checks a non-empty segment in upstream's order: length, charset, first
 * character, last character. */
static enum segment_check check_segment(const char *s, size_t n)
{
    if (n == 0)
        return SEG_EMPTY;
    if (n > LABELS_NAME_MAX)
        return SEG_TOO_LONG;
    for (size_t i = 0; i < n; i++) {
        if (!is_segment_char((unsigned char)s[i]))
            return SEG_BAD_CHAR;
    }
    if (!is_alnum((unsigned char)s[0]))
        return SEG_BAD_START;
    if (!is_alnum((unsigned char)s[n - 1]))
        return SEG_BAD_END;
    return SEG_OK;
}

/* Returns NULL when |p| (|n| bytes) is a valid DNS-subdomain prefix, else
 * the reason. */
static const char *prefix_problem(const char *p, size_t n)
{
    if (n == 0)
        return "prefix must not be empty when '/' is present";
    if (n > LABELS_PREFIX_MAX)
        return "prefix must be at most 253 characters";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 'A' && c <= 'Z')
            return "prefix must be lowercase";
        if (!is_lower_digit(c) && c != '-' && c != '.')
            return "prefix may contain only lowercase letters, digits, '-' and '.'";
    }
    if (p[0] == '-' || p[0] == '.' || p[n - 1] == '-' || p[n - 1] == '.')
        return "prefix must not start or end with '-' or '.'";
    if (memmem(p, n, "..", 2) != NULL)
        return "prefix must not contain '..'";
    return NULL;
}

/* ---- keys and values ----------------------------------------------------- */

/* Label-key rules on |n| bytes; |what| is "label key" or "annotation key".
 * The name part is checked before the prefix, as upstream does. */
static bool check_key(const char *what, const char *key, size_t n, char *err, size_t errlen)
{
    const char *slash;
    const char *name = key;
    size_t name_len = n;
    enum segment_check sc;
    const char *reason;

    if (n == 0)
        return fail(err, errlen, what, NULL, 0, "must not be empty");
    if (n > LABELS_KEY_MAX)
        return fail(err, errlen, what, key, n, "must be at most 253 characters");
    slash = memchr(key, '/', n);
    if (slash != NULL) {
        name = slash + 1;
        name_len = n - (size_t)(name - key);
    }
    sc = check_segment(name, name_len);
    if (sc != SEG_OK)
        return fail(err, errlen, what, key, n, name_reasons[sc]);
    if (slash != NULL) {
        reason = prefix_problem(key, (size_t)(slash - key));
        if (reason != NULL)
            return fail(err, errlen, what, key, n, reason);
    }
    return true;
}

static bool check_value(const char *value, size_t n, char *err, size_t errlen)
{
    enum segment_check sc;

    if (n == 0)
        return true;
    sc = check_segment(value, n);
    if (sc != SEG_OK)
        return fail(err, errlen, "label value", value, n, value_reasons[sc]);
    return true;
}

static bool check_annotation(const char *key, size_t key_len, size_t value_len, char *err,
                             size_t errlen)
{
    if (!check_key("annotation key", key, key_len, err, errlen))
        return false;
    if (value_len > LABELS_ANNOTATION_MAX)
        return fail(err, errlen, "annotation", key, key_len, "value must be at most 8192 bytes");
    return true;
}

bool labels_key_valid(const char *key, char *err, size_t errlen)
{
    return check_key("label key", key, key != NULL ? strlen(key) : 0, err, errlen);
}

bool labels_value_valid(const char *value, char *err, size_t errlen)
{
    return check_value(value, value != NULL ? strlen(value) : 0, err, errlen);
}

bool labels_annotation_valid(const char *key, const char *value, char *err, size_t errlen)
{
    return check_annotation(key, key != NULL ? strlen(key) : 0, value != NULL ? strlen(value) : 0,
                            err, errlen);
}

bool labels_dns_label_valid(const char *name, size_t max_len, char *err, size_t errlen)
{
    size_t n = name != NULL ? strlen(name) : 0;
    char reason[64];

    if (n == 0)
        return fail(err, errlen, "name", NULL, 0, "is required");
    if (n > max_len) {
        snprintf(reason, sizeof(reason), "must be at most %zu characters", max_len);
        return fail(err, errlen, "name", name, n, reason);
    }
    for (size_t i = 0; i < n; i++) {
        if (!is_lower_digit((unsigned char)name[i]) && name[i] != '-')
            return fail(err, errlen, "name", name, n,
                        "may contain only lowercase letters, digits and '-'");
    }
    if (name[0] == '-' || name[n - 1] == '-')
        return fail(err, errlen, "name", name, n, "must not start or end with '-'");
    if (strstr(name, "--") != NULL)
        return fail(err, errlen, "name", name, n, "must not contain '--'");
    return true;
}

/* ---- maps ---------------------------------------------------------------- */

/* One map entry; |key| has |key_len| bytes (jansson keys may hold NULs). */
static bool check_entry(const char *key, size_t key_len, const json_t *v, bool annotations,
                        char *err, size_t errlen)
{
    const char *what = annotations ? "annotation" : "label";

    if (!json_is_string(v))
        return fail(err, errlen, what, key, key_len, "value must be a string");
    if (annotations)
        return check_annotation(key, key_len, json_string_length(v), err, errlen);
    if (!check_key("label key", key, key_len, err, errlen))
        return false;
    return check_value(json_string_value(v), json_string_length(v), err, errlen);
}

int labels_map_validate_json(const json_t *obj, bool annotations, char *err, size_t errlen)
{
    const char *what = annotations ? "annotations" : "labels";
    json_t *o = (json_t *)obj; /* jansson's iterator API is not const-correct */

    if (obj == NULL)
        return 0;
    if (!json_is_object(obj)) {
        fail(err, errlen, what, NULL, 0, "must be a JSON object");
        return LABELS_ERR_INVALID;
    }
    if (json_object_size(obj) > LABELS_MAP_MAX_ENTRIES) {
        fail(err, errlen, what, NULL, 0, "must have at most 128 entries");
        return LABELS_ERR_INVALID;
    }
    for (void *it = json_object_iter(o); it != NULL; it = json_object_iter_next(o, it)) {
        if (!check_entry(json_object_iter_key(it), json_object_iter_key_len(it),
                         json_object_iter_value(it), annotations, err, errlen))
            return LABELS_ERR_INVALID;
    }
    return 0;
}

/* ---- selectors ----------------------------------------------------------- */

/* Length of the Unicode White_Space code point (UTF-8) at |p| with |n| bytes
 * available, or 0. This is the set Rust's str::trim removes: U+0009..000D,
 * U+0020, U+0085, U+00A0, U+1680, U+2000..200A, U+2028, U+2029, U+202F,
 * U+205F, U+3000. */
static size_t space_len_at(const unsigned char *p, size_t n)
{
    if (n >= 1 && ((p[0] >= 0x09 && p[0] <= 0x0d) || p[0] == 0x20))
        return 1;
    if (n >= 2 && p[0] == 0xc2 && (p[1] == 0x85 || p[1] == 0xa0))
        return 2;
    if (n < 3)
        return 0;
    if (p[0] == 0xe1 && p[1] == 0x9a && p[2] == 0x80)
        return 3;
    if (p[0] == 0xe3 && p[1] == 0x80 && p[2] == 0x80)
        return 3;
    if (p[0] != 0xe2)
        return 0;
    if (p[1] == 0x80 &&
        ((p[2] >= 0x80 && p[2] <= 0x8a) || p[2] == 0xa8 || p[2] == 0xa9 || p[2] == 0xaf))
        return 3;
    if (p[1] == 0x81 && p[2] == 0x9f)
        return 3;
    return 0;
}

/* Trims White_Space from both ends of |*s| (|*n| bytes) in place. */
static void trim_space(const char **s, size_t *n)
{
    const unsigned char *p = (const unsigned char *)*s;
    size_t len = *n;
    size_t k;
    bool again = true;

    while (len > 0 && (k = space_len_at(p, len)) > 0) {
        p += k;
        len -= k;
    }
    while (again) {
        again = false;
        for (k = 1; k <= 3 && k <= len; k++) {
            if (space_len_at(p + len - k, k) == k) {
                len -= k;
                again = true;
                break;
            }
        }
    }
    *s = (const char *)p;
    *n = len;
}

/* Parses one non-empty, trimmed pair and appends it to |out|, whose
 * |pairs| array holds LABELS_SELECTOR_MAX entries. */
static int parse_pair(const char *p, size_t n, struct labels_selector *out, char *err,
                      size_t errlen)
{
    const char *eq = memchr(p, '=', n);
    const char *key = p;
    const char *value;
    size_t key_len, value_len;
    struct labels_pair *pair;

    if (eq == NULL) {
        fail(err, errlen, "label selector pair", p, n, "expected 'key=value'");
        return LABELS_ERR_INVALID;
    }
    key_len = (size_t)(eq - p);
    value = eq + 1;
    value_len = n - key_len - 1;
    trim_space(&key, &key_len);
    trim_space(&value, &value_len);
    if (key_len == 0) {
        fail(err, errlen, "label selector pair", p, n, "key must not be empty");
        return LABELS_ERR_INVALID;
    }
    if (!check_key("label key", key, key_len, err, errlen) ||
        !check_value(value, value_len, err, errlen))
        return LABELS_ERR_INVALID;
    pair = &out->pairs[out->n++];
    pair->key = gw_xstrndup(key, key_len);
    pair->value = gw_xstrndup(value, value_len);
    return 0;
}

int labels_selector_parse(const char *text, struct labels_selector *out, char *err, size_t errlen)
{
    const char *p = text;
    const char *end;
    const char *seg;
    size_t seg_len;

    out->n = 0;
    out->pairs = NULL;
    while (p != NULL) {
        end = strchr(p, ',');
        seg = p;
        seg_len = end != NULL ? (size_t)(end - p) : strlen(p);
        p = end != NULL ? end + 1 : NULL;
        trim_space(&seg, &seg_len);
        if (seg_len == 0)
            continue;
        if (out->n == LABELS_SELECTOR_MAX) {
            fail(err, errlen, "label selector", NULL, 0, "must have at most 64 pairs");
            goto fail_parse;
        }
        if (out->pairs == NULL)
            out->pairs = gw_xcalloc(LABELS_SELECTOR_MAX, sizeof(*out->pairs));
        if (parse_pair(seg, seg_len, out, err, errlen) != 0)
            goto fail_parse;
    }
    return 0;

fail_parse:
    labels_selector_free(out);
    return LABELS_ERR_INVALID;
}

void labels_selector_free(struct labels_selector *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++) {
        free(s->pairs[i].key);
        free(s->pairs[i].value);
    }
    free(s->pairs);
    s->pairs = NULL;
    s->n = 0;
}

bool labels_selector_matches_json(const struct labels_selector *s, const json_t *labels)
{
    if (s == NULL || s->n == 0)
        return true;
    if (!json_is_object(labels))
        return false;
    for (size_t i = 0; i < s->n; i++) {
        const json_t *v = json_object_get(labels, s->pairs[i].key);
        size_t want = strlen(s->pairs[i].value);

        if (!json_is_string(v) || json_string_length(v) != want ||
            memcmp(json_string_value(v), s->pairs[i].value, want) != 0)
            return false;
    }
    return true;
}

bool labels_selector_matches_text(const struct labels_selector *s, const char *labels_json)
{
    json_t *root;
    bool ok;

    if (s == NULL || s->n == 0)
        return true;
    if (labels_json == NULL)
        return false;
    root = json_loads(labels_json, 0, NULL);
    if (root == NULL)
        return false;
    ok = labels_selector_matches_json(s, root);
    json_decref(root);
    return ok;
}

static int dump_to_buf(const char *buffer, size_t size, void *data)
{
    gw_buf_append(data, buffer, size);
    return 0;
}

/* Adds |pair| to |obj| unless already there with the same value. Returns
 * false on a conflicting duplicate or a string jansson refuses (not UTF-8). */
static bool add_pair(json_t *obj, const struct labels_pair *pair)
{
    const json_t *old = json_object_get(obj, pair->key);
    json_t *v;

    if (old != NULL)
        return strcmp(json_string_value(old), pair->value) == 0;
    v = json_string(pair->value);
    if (v == NULL)
        return false;
    return json_object_set_new(obj, pair->key, v) == 0;
}

char *labels_selector_to_json(const struct labels_selector *s)
{
    struct gw_buf b = {0};
    json_t *obj = json_object();
    char *result = NULL;
    size_t n = s != NULL ? s->n : 0;

    if (obj == NULL)
        gw_panic(__FILE__, __LINE__, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (!add_pair(obj, &s->pairs[i]))
            goto out;
    }
    if (json_dump_callback(obj, dump_to_buf, &b, JSON_COMPACT) != 0) {
        gw_buf_free(&b);
        goto out;
    }
    gw_buf_cstr(&b);
    result = b.data; /* ownership moves to the caller */

out:
    json_decref(obj);
    return result;
}
