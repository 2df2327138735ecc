/* libFuzzer target for the TOML subset parser: every input must either parse
 * into a tree whose accessors agree with each other, or fail with a
 * positioned, NUL-terminated message. ASan/UBSan catch the rest. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "toml/toml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok)
        abort();
}

/* Depth is bounded by the parser's own nesting limit (32). */
static void walk(const struct toml_value *t, unsigned depth)
{
    check(depth <= 33);
    for (size_t i = 0; i < toml_table_len(t); i++) {
        const char *key = toml_table_key(t, i);
        const struct toml_value *v = toml_table_at(t, i);
        check(key != NULL && v != NULL);
        check(toml_table_get(t, key) == v);
        check(toml_line(v) >= 1 && toml_col(v) >= 1);
        switch (toml_type(v)) {
        case TOML_TABLE:
            walk(v, depth + 1);
            break;
        case TOML_STRING:
            check(toml_string(v) != NULL);
            (void)strlen(toml_string(v));
            break;
        case TOML_ARRAY:
            for (size_t j = 0; j < toml_array_len(v); j++)
                (void)strlen(toml_array_string(v, j));
            check(toml_array_string(v, toml_array_len(v)) == NULL);
            break;
        case TOML_INT:
        case TOML_BOOL:
            (void)toml_int(v);
            (void)toml_bool(v);
            break;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct toml_value *root = NULL;
    char err[256];
    char tiny[8];
    int rc;

    /* |data| is not NUL-terminated, so any read past |size| is caught. */
    rc = toml_parse("fuzz", (const char *)data, size, &root, err, sizeof(err));
    if (rc == 0) {
        check(root != NULL && toml_type(root) == TOML_TABLE);
        walk(root, 0);
        toml_free(root);
        return 0;
    }
    check(root == NULL);
    check(rc == TOML_ERR_SYNTAX || rc == TOML_ERR_LIMIT);
    check(strncmp(err, "fuzz:", 5) == 0 && strlen(err) < sizeof(err));
    /* The same failure with a short error buffer must stay in bounds. */
    check(toml_parse("fuzz", (const char *)data, size, &root, tiny, sizeof(tiny)) == rc);
    check(root == NULL && strlen(tiny) < sizeof(tiny));
    return 0;
}
