/*
 * pbjson: protobuf messages as JSON, over the protobuf-c descriptors.
 * Used by the gateway for the readable copies the store keeps next to the
 * binary ones (sandboxes.spec_json) and by the openshell CLI for -o json and
 * --driver-config-json.
 */
#ifndef GW_PBJSON_H
#define GW_PBJSON_H

#include <stdbool.h>
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "base/base.h"

struct json_t;

enum {
    PBJSON_PRETTY = 1 << 0,    /* indented; default compact, one line */
    PBJSON_SORT_KEYS = 1 << 1, /* keys sorted; default in field order */
};

/* lowerCamelCase JSON name of a snake_case proto field name ("sandbox_id"
 * -> "sandboxId", "a_b_c" -> "aBC"), written into |out| (truncated to |len|). */
void pbjson_name(const char *field, char *out, size_t len);
/* proto3 JSON mapping of |m|: lowerCamelCase names, enums by value name,
 * 64-bit integers as strings, bytes base64, maps as objects, Struct/Value/
 * ListValue as plain JSON, default values and unset oneofs omitted.
 * Returns a new reference (json_decref). */
struct json_t *pbjson_from_message(const ProtobufCMessage *m);
/* Serialized with PBJSON_* |flags|. Caller frees with free(). */
char *pbjson_dumps(const ProtobufCMessage *m, unsigned flags);
/* Parses |text| as a JSON object into a new google.protobuf.Struct. Returns
 * 0 with *out (free with protobuf_c_message_free_unpacked(*out, NULL)), or -1
 * with |err| saying what is wrong (not JSON, not an object). */
int pbjson_struct_from_text(const char *text, ProtobufCMessage **out, char *err,
                            size_t errlen) GW_MUSTCHECK;

#endif /* GW_PBJSON_H */
