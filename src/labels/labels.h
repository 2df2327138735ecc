/*
 * labels: validation of label and annotation maps, DNS-1123 names, and the
 * equality-only label selector used by the List RPCs (semantics.md §6, §7).
 *
 * Label keys are an optional DNS-subdomain prefix plus '/' plus a name:
 *   - prefix: ASCII lowercase letters, digits, '-' and '.'; at most 253
 *     bytes; must not start or end with '-' or '.'; must not contain "..".
 *   - name: 1..63 bytes of letters, digits, '-', '_' and '.'; must start and
 *     end with a letter or digit.
 *   - the whole key is at most 253 bytes.
 * Label values are empty, or 1..63 bytes with the charset and first/last
 * rule of the name part. Annotation keys follow the label-key rules;
 * annotation values are opaque, at most 8 KiB.
 *
 * Upstream's "alphanumeric" is Unicode-aware (Rust char::is_alphanumeric);
 * this module accepts ASCII letters and digits only. Lengths are bytes.
 *
 * Error messages are one line, name the offending text (control and
 * non-ASCII bytes escaped as \xNN, long text cut with "..."), and are
 * always NUL-terminated when |errlen| > 0. |err| may be NULL.
 */
#ifndef GW_LABELS_H
#define GW_LABELS_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "base/base.h"

#define LABELS_KEY_MAX         253  /* whole key, bytes */
#define LABELS_PREFIX_MAX      253  /* DNS-subdomain prefix, bytes */
#define LABELS_NAME_MAX        63   /* name part of a key, bytes */
#define LABELS_VALUE_MAX       63   /* label value, bytes */
#define LABELS_ANNOTATION_MAX  8192 /* annotation value, bytes */
#define LABELS_MAP_MAX_ENTRIES 128  /* entries in a labels or annotations map */
#define LABELS_SELECTOR_MAX    64   /* non-empty pairs in a selector */

#define LABELS_ERR_INVALID (-1) /* the input breaks a rule; |err| says which */

/* One equality requirement of a selector. Both strings are NUL-terminated;
 * |value| may be empty. */
struct labels_pair {
    char *key;
    char *value;
};

/* A parsed selector: a logical AND of |n| pairs, in input order. Duplicate
 * keys are kept as written. n == 0 (pairs NULL) matches everything. */
struct labels_selector {
    size_t n;
    struct labels_pair *pairs; /* owned; free with labels_selector_free() */
};

/* ---- keys, values, names ------------------------------------------------ */

/* True when |key| is a valid label key. Otherwise writes e.g.
 * "label key 'Foo/bar': prefix must be lowercase" into |err| and returns
 * false. NULL is treated as the empty key (invalid). */
bool labels_key_valid(const char *key, char *err, size_t errlen);

/* True when |value| is a valid label value (empty is valid; NULL counts as
 * empty). Otherwise writes "label value '...': <reason>" into |err|. */
bool labels_value_valid(const char *value, char *err, size_t errlen);

/* True when |name| is a DNS-1123 label of 1..|max_len| bytes: lowercase
 * a-z, digits and '-', no leading or trailing '-', no "--". Used for
 * workspace and sandbox names (max_len 19). Empty or NULL is invalid.
 * Otherwise writes "name '...': <reason>" into |err|. */
bool labels_dns_label_valid(const char *name, size_t max_len, char *err, size_t errlen);

/* True when |key| follows the label-key rules and |value| (NULL counts as
 * empty) is at most LABELS_ANNOTATION_MAX bytes. Otherwise writes
 * "annotation key '...': <reason>" or "annotation '...': value ..." into
 * |err|. */
bool labels_annotation_valid(const char *key, const char *value, char *err, size_t errlen);

/* ---- maps --------------------------------------------------------------- */

/* Validates a labels map (|annotations| false) or an annotations map
 * (|annotations| true) given as a JSON object of string values: at most
 * LABELS_MAP_MAX_ENTRIES entries, every value a string, every entry passing
 * the rules above (embedded NUL bytes in keys or label values are
 * rejected). |obj| is borrowed; NULL counts as an empty map. Returns 0, or
 * LABELS_ERR_INVALID with a one-line message in |err| (also when |obj| is
 * not an object). */
int labels_map_validate_json(const json_t *obj, bool annotations, char *err,
                             size_t errlen) GW_MUSTCHECK;

/* ---- selectors ---------------------------------------------------------- */

/* Parses |text| ("k1=v1,k2=v2"; NULL counts as empty) into |*out|: pairs are
 * split on ','; whitespace (Unicode White_Space, as Rust's str::trim) around
 * pairs, keys and values is trimmed; empty pairs are skipped; each pair is
 * split on its first '='. Errors: a pair without '=', an empty key, more than
 * LABELS_SELECTOR_MAX pairs, a key or value breaking the label rules (so
 * "a=b=c" fails: '=' is not allowed in a value). Empty text yields n == 0.
 * Returns 0 with |*out| filled (caller owns, free with labels_selector_free()),
 * or LABELS_ERR_INVALID with |*out| empty (nothing to free) and a one-line
 * message in |err|. */
int labels_selector_parse(const char *text, struct labels_selector *out, char *err,
                          size_t errlen) GW_MUSTCHECK;

/* Frees the pairs of |s| and resets it to empty; |s| itself is not freed.
 * NULL and already-empty selectors are fine. */
void labels_selector_free(struct labels_selector *s);

/* True when every pair of |s| is present in |labels| (borrowed JSON object)
 * as a string exactly equal (byte for byte, same length) to the pair's
 * value. An empty selector (or NULL |s|) matches anything, even a NULL or
 * non-object |labels|; otherwise a non-object never matches. */
bool labels_selector_matches_json(const struct labels_selector *s, const json_t *labels);

/* Like labels_selector_matches_json() on the JSON text |labels_json|. An
 * empty selector returns true without parsing; otherwise NULL or invalid
 * JSON returns false. */
bool labels_selector_matches_text(const struct labels_selector *s, const char *labels_json);

/* Renders |s| as a compact JSON object ({"k":"v",...}, keys in first-seen
 * order, "{}" when empty) for SQL containment: `labels @> $1::jsonb`.
 * A key given twice with the same value appears once. Returns NULL when
 * the same key is given with two different values (nothing can match:
 * the caller should return an empty result without querying), or when a
 * key or value is not valid UTF-8 (only possible for a hand-built
 * selector). Caller owns the result, free with free(). */
char *labels_selector_to_json(const struct labels_selector *s);

#endif /* GW_LABELS_H */
