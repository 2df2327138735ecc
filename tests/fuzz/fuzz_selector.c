/* libFuzzer target for label selectors: every input either parses into
 * pairs that pass the label rules, or fails with a one-line, NUL-terminated
 * message and an empty selector. A parsed selector must match the object
 * its own to_json renders (unless it names one key with two values), and
 * the first bytes after the first NUL are tried as a labels JSON text.
 * ASan/UBSan catch the rest. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "labels/labels.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok)
        abort();
}

static void check_pairs(const struct labels_selector *s)
{
    check(s->n <= LABELS_SELECTOR_MAX);
    check((s->n == 0) == (s->pairs == NULL));
    for (size_t i = 0; i < s->n; i++) {
        check(labels_key_valid(s->pairs[i].key, NULL, 0));
        check(labels_value_valid(s->pairs[i].value, NULL, 0));
    }
}

/* The selector must match its own JSON rendering, via both entry points. */
static void check_roundtrip(const struct labels_selector *s)
{
    char *text = labels_selector_to_json(s);
    json_t *obj;

    if (text == NULL) {
        check(s->n >= 2);
        return;
    }
    obj = json_loads(text, 0, NULL);
    check(obj != NULL && json_is_object(obj));
    check(json_object_size(obj) <= s->n);
    check(labels_selector_matches_json(s, obj));
    check(labels_selector_matches_text(s, text));
    check(labels_map_validate_json(obj, false, NULL, 0) == 0);
    json_decref(obj);
    free(text);
}

static void check_error(const char *text, const struct labels_selector *s, const char *err)
{
    char tiny[6];
    struct labels_selector again;

    check(s->n == 0 && s->pairs == NULL);
    check(strlen(err) > 0 && strchr(err, '\n') == NULL);
    check(labels_selector_parse(text, &again, tiny, sizeof(tiny)) == LABELS_ERR_INVALID);
    check(again.n == 0 && strlen(tiny) < sizeof(tiny));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The selector is the input up to its first NUL; any rest is a labels
     * JSON text. Both get their own exact-size copies so ASan sees reads
     * past the end. */
    const uint8_t *nul = memchr(data, 0, size);
    size_t sel_len = nul != NULL ? (size_t)(nul - data) : size;
    char *text = malloc(sel_len + 1);
    char *rest = NULL;
    struct labels_selector s;
    char err[512];

    memcpy(text, data, sel_len);
    text[sel_len] = '\0';
    if (nul != NULL) {
        size_t rest_len = size - sel_len - 1;
        rest = malloc(rest_len + 1);
        memcpy(rest, nul + 1, rest_len);
        rest[rest_len] = '\0';
    }
    err[0] = '\0';
    if (labels_selector_parse(text, &s, err, sizeof(err)) == 0) {
        check_pairs(&s);
        check_roundtrip(&s);
        (void)labels_selector_matches_text(&s, rest);
        labels_selector_free(&s);
    } else {
        check_error(text, &s, err);
    }
    (void)labels_key_valid(text, err, sizeof(err));
    (void)labels_value_valid(text, err, sizeof(err));
    (void)labels_dns_label_valid(text, 19, err, sizeof(err));
    free(text);
    free(rest);
    return 0;
}
