/*
 * toml: a strict parser for the TOML subset the gateway's configuration uses.
 *
 * Accepted: comments, bare and quoted keys, dotted keys, [table] and
 * [dotted.table] headers, basic "..." strings (with \b \t \n \f \r \" \\
 * \uXXXX \UXXXXXXXX escapes) and literal '...' strings, decimal integers
 * (optional sign, '_' between digits), true/false, and arrays of strings
 * (may span lines, trailing comma allowed).
 *
 * Everything else is rejected with "file:line:col: message": floats,
 * dates, inline tables, arrays of tables, multi-line strings, hex/octal
 * integers, mixed-type arrays, a key defined twice, a table defined twice.
 */
#ifndef GW_TOML_H
#define GW_TOML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

enum toml_type {
    TOML_TABLE,
    TOML_STRING,
    TOML_INT,
    TOML_BOOL,
    TOML_ARRAY, /* of strings */
};

struct toml_value;

#define TOML_ERR_SYNTAX (-1) /* the text is not in the accepted subset */
#define TOML_ERR_IO     (-2) /* the file could not be read */
#define TOML_ERR_LIMIT  (-3) /* input larger than 1 MiB or nesting deeper than 32 */

/* Parses |len| bytes of |text|. |name| is used in error messages. On success
 * returns 0 and sets |*out| to the root table (caller owns, free with
 * toml_free()). On failure returns a TOML_ERR_* code and writes
 * "name:line:col: message" into |err| (always NUL-terminated). */
int toml_parse(const char *name, const char *text, size_t len, struct toml_value **out, char *err,
               size_t errlen) GW_MUSTCHECK;
/* Reads and parses the file at |path|. Same contract as toml_parse(). */
int toml_parse_file(const char *path, struct toml_value **out, char *err,
                    size_t errlen) GW_MUSTCHECK;
void toml_free(struct toml_value *v);

enum toml_type toml_type(const struct toml_value *v);
/* Where the value (or, for tables, the header or first key) was defined. */
unsigned toml_line(const struct toml_value *v);
unsigned toml_col(const struct toml_value *v);

/* Tables: number of keys, and the i-th key/value in definition order.
 * Borrowed, valid until toml_free() of the root. */
size_t toml_table_len(const struct toml_value *t);
const char *toml_table_key(const struct toml_value *t, size_t i);
struct toml_value *toml_table_at(const struct toml_value *t, size_t i);
/* Child named |key| or NULL. */
struct toml_value *toml_table_get(const struct toml_value *t, const char *key);

/* Scalars. Borrowed string, valid until toml_free() of the root. */
const char *toml_string(const struct toml_value *v);
int64_t toml_int(const struct toml_value *v);
bool toml_bool(const struct toml_value *v);

/* Arrays of strings. */
size_t toml_array_len(const struct toml_value *a);
const char *toml_array_string(const struct toml_value *a, size_t i);

#endif /* GW_TOML_H */
