/*
 * pbjson: the proto3 JSON mapping over protobuf-c descriptors, and JSON
 * objects into google.protobuf.Struct.
 *
 * Mapping (https://protobuf.dev/programming-guides/proto3/#json): field names
 * in lowerCamelCase; enums by value name (unknown numbers as integers);
 * int64/uint64/fixed64 as decimal strings; bytes as padded base64; float and
 * double non-finite values as "NaN"/"Infinity"/"-Infinity"; maps as objects
 * keyed by the key's text; Struct, Value and ListValue as the JSON they
 * stand for. Singular proto3 fields holding their default are omitted; a
 * oneof member (proto3 `optional` included) is written when it is the set
 * case, even with a default value.
 */
#include "pbjson/pbjson.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "google/protobuf/struct.pb-c.h"

static json_t *message_json(const ProtobufCMessage *m);

void pbjson_name(const char *field, char *out, size_t len)
{
    size_t j = 0;
    bool up = false;

    if (len == 0)
        return;
    for (const char *p = field; *p != '\0' && j + 1 < len; p++) {
        if (*p == '_') {
            up = true;
            continue;
        }
        out[j++] = up && *p >= 'a' && *p <= 'z' ? (char)(*p - 'a' + 'A') : *p;
        up = false;
    }
    out[j] = '\0';
}

/* ---- well-known types ------------------------------------------------------------ */

static json_t *number_json(double d)
{
    if (isnan(d))
        return json_string("NaN");
    if (isinf(d))
        return json_string(d > 0 ? "Infinity" : "-Infinity");
    /* Integral values print without a fraction, as JSON readers expect. */
    if (d == floor(d) && fabs(d) < 9007199254740992.0)
        return json_integer((json_int_t)d);
    return json_real(d);
}

static json_t *value_json(const Google__Protobuf__Value *v);

static json_t *struct_json(const Google__Protobuf__Struct *s)
{
    json_t *o = json_object();

    for (size_t i = 0; i < s->n_fields; i++) {
        const Google__Protobuf__Struct__FieldsEntry *e = s->fields[i];
        if (e != NULL && e->key != NULL)
            json_object_set_new(o, e->key, value_json(e->value));
    }
    return o;
}

static json_t *list_json(const Google__Protobuf__ListValue *l)
{
    json_t *a = json_array();

    for (size_t i = 0; i < l->n_values; i++)
        json_array_append_new(a, value_json(l->values[i]));
    return a;
}

static json_t *value_json(const Google__Protobuf__Value *v)
{
    if (v == NULL)
        return json_null();
    switch (v->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
        return number_json(v->number_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        return json_string(v->string_value != NULL ? v->string_value : "");
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
        return json_boolean(v->bool_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return v->struct_value != NULL ? struct_json(v->struct_value) : json_object();
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE:
        return v->list_value != NULL ? list_json(v->list_value) : json_array();
    default:
        return json_null();
    }
}

/* ---- scalars ------------------------------------------------------------------- */

static json_t *base64_json(const ProtobufCBinaryData *b)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = b->len, o = 0;
    char *out = gw_xmalloc(4 * ((n + 2) / 3) + 1);
    json_t *j;

    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)b->data[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)b->data[i + 1] << 8;
        if (i + 2 < n)
            v |= b->data[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    out[o] = '\0';
    j = json_string(out);
    free(out);
    return j;
}

static json_t *float_json(double d)
{
    if (isnan(d))
        return json_string("NaN");
    if (isinf(d))
        return json_string(d > 0 ? "Infinity" : "-Infinity");
    return json_real(d);
}

/* The JSON of one value of field |f| stored at |p|. */
static json_t *scalar_json(const ProtobufCFieldDescriptor *f, const void *p)
{
    char buf[32];

    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return json_integer(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return json_integer(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        snprintf(buf, sizeof(buf), "%lld", (long long)*(const int64_t *)p);
        return json_string(buf);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        snprintf(buf, sizeof(buf), "%llu", (unsigned long long)*(const uint64_t *)p);
        return json_string(buf);
    case PROTOBUF_C_TYPE_FLOAT:
        return float_json(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return float_json(*(const double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        return json_boolean(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumValue *ev =
            protobuf_c_enum_descriptor_get_value(f->descriptor, *(const int *)p);
        return ev != NULL ? json_string(ev->name) : json_integer(*(const int *)p);
    }
    case PROTOBUF_C_TYPE_STRING:
        return json_string(*(char *const *)p != NULL ? *(char *const *)p : "");
    case PROTOBUF_C_TYPE_BYTES:
        return base64_json(p);
    case PROTOBUF_C_TYPE_MESSAGE:
        return message_json(*(ProtobufCMessage *const *)p);
    }
    return json_null();
}

/* In-memory size of one element of a repeated field of |f|'s type. */
static size_t elem_size(const ProtobufCFieldDescriptor *f)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return sizeof(uint64_t);
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_ENUM:
        return sizeof(int);
    default:
        return sizeof(uint32_t);
    }
}

/* Whether a singular proto3 field holds its default value. */
static bool is_default(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING:
        return *(char *const *)p == NULL || (*(char *const *)p)[0] == '\0';
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(void *const *)p == NULL;
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len == 0;
    case PROTOBUF_C_TYPE_FLOAT:
        return *(const float *)p == 0 && !signbit(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return *(const double *)p == 0 && !signbit(*(const double *)p);
    default: {
        static const uint8_t zero[8];
        return memcmp(p, zero, elem_size(f)) == 0;
    }
    }
}

/* protoc marks map entries with the map_entry option, which protobuf-c does
 * not keep: recognize the generated shape (a nested "...Entry" message with
 * exactly key = 1 and value = 2). */
static bool is_map_field(const ProtobufCFieldDescriptor *f)
{
    const ProtobufCMessageDescriptor *d;
    size_t n;

    if (f->type != PROTOBUF_C_TYPE_MESSAGE || f->label != PROTOBUF_C_LABEL_REPEATED)
        return false;
    d = f->descriptor;
    n = strlen(d->name);
    return n > 5 && strcmp(d->name + n - 5, "Entry") == 0 && d->n_fields == 2 &&
           strcmp(d->fields[0].name, "key") == 0 && d->fields[0].id == 1 &&
           strcmp(d->fields[1].name, "value") == 0 && d->fields[1].id == 2;
}

static json_t *map_json(const ProtobufCFieldDescriptor *f, size_t n, const void *arr)
{
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    const ProtobufCFieldDescriptor *kf = &ed->fields[0];
    const ProtobufCFieldDescriptor *vf = &ed->fields[1];
    json_t *map = json_object();

    for (size_t k = 0; k < n; k++) {
        const char *e = ((const char *const *)arr)[k];
        json_t *key, *val;
        if (e == NULL)
            continue;
        key = scalar_json(kf, e + kf->offset);
        /* Integer and bool keys become their text, as the mapping says. */
        if (json_is_integer(key)) {
            char buf[32];
            snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(key));
            json_decref(key);
            key = json_string(buf);
        } else if (json_is_boolean(key)) {
            bool b = json_is_true(key);
            json_decref(key);
            key = json_string(b ? "true" : "false");
        }
        val = vf->type == PROTOBUF_C_TYPE_MESSAGE && *(void *const *)(e + vf->offset) == NULL
                  ? json_object()
                  : scalar_json(vf, e + vf->offset);
        json_object_set_new(map, json_string_value(key), val);
        json_decref(key);
    }
    return map;
}

static json_t *repeated_json(const ProtobufCFieldDescriptor *f, const char *base)
{
    size_t n = *(const size_t *)(base + f->quantifier_offset);
    const char *arr = *(const char *const *)(base + f->offset);
    json_t *a;

    if (n == 0 || arr == NULL)
        return NULL;
    if (is_map_field(f))
        return map_json(f, n, arr);
    a = json_array();
    for (size_t k = 0; k < n; k++)
        json_array_append_new(a, scalar_json(f, arr + k * elem_size(f)));
    return a;
}

/* The JSON of singular field |f| of the message at |base|, or NULL when the
 * field is omitted (default value, unset oneof member or proto2 has_ off). */
static json_t *singular_json(const ProtobufCFieldDescriptor *f, const char *base)
{
    const void *p = base + f->offset;

    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        if (*(const uint32_t *)(base + f->quantifier_offset) != f->id)
            return NULL;
        return scalar_json(f, p);
    }
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset != 0 &&
        f->type != PROTOBUF_C_TYPE_MESSAGE && f->type != PROTOBUF_C_TYPE_STRING) {
        if (!*(const protobuf_c_boolean *)(base + f->quantifier_offset))
            return NULL;
        return scalar_json(f, p);
    }
    if (is_default(f, p))
        return NULL;
    return scalar_json(f, p);
}

static json_t *message_json(const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d;
    json_t *o;

    if (m == NULL)
        return json_null();
    d = m->descriptor;
    if (d == &google__protobuf__struct__descriptor)
        return struct_json((const Google__Protobuf__Struct *)m);
    if (d == &google__protobuf__value__descriptor)
        return value_json((const Google__Protobuf__Value *)m);
    if (d == &google__protobuf__list_value__descriptor)
        return list_json((const Google__Protobuf__ListValue *)m);
    o = json_object();
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        json_t *v = f->label == PROTOBUF_C_LABEL_REPEATED ? repeated_json(f, (const char *)m)
                                                          : singular_json(f, (const char *)m);
        char name[128];
        if (v == NULL)
            continue;
        pbjson_name(f->name, name, sizeof(name));
        json_object_set_new(o, name, v);
    }
    return o;
}

json_t *pbjson_from_message(const ProtobufCMessage *m)
{
    return message_json(m);
}

char *pbjson_dumps(const ProtobufCMessage *m, unsigned flags)
{
    json_t *j = message_json(m);
    char *s =
        json_dumps(j, JSON_ENCODE_ANY | ((flags & PBJSON_PRETTY) ? JSON_INDENT(2) : JSON_COMPACT) |
                          ((flags & PBJSON_SORT_KEYS) ? JSON_SORT_KEYS : JSON_PRESERVE_ORDER));

    json_decref(j);
    if (s == NULL)
        gw_panic(__FILE__, __LINE__, "json_dumps failed");
    return s;
}

/* ---- JSON -> google.protobuf.Struct ---------------------------------------------- */

static Google__Protobuf__Value *value_from_json(json_t *j);

static Google__Protobuf__Struct *struct_from_json(json_t *obj)
{
    Google__Protobuf__Struct *s = gw_xmalloc(sizeof(*s));
    const char *key;
    json_t *v;
    size_t i = 0;

    google__protobuf__struct__init(s);
    s->n_fields = json_object_size(obj);
    s->fields = s->n_fields ? gw_xcalloc(s->n_fields, sizeof(*s->fields)) : NULL;
    json_object_foreach(obj, key, v)
    {
        Google__Protobuf__Struct__FieldsEntry *e = gw_xmalloc(sizeof(*e));
        google__protobuf__struct__fields_entry__init(e);
        e->key = gw_xstrdup(key);
        e->value = value_from_json(v);
        s->fields[i++] = e;
    }
    return s;
}

static Google__Protobuf__Value *value_from_json(json_t *j)
{
    Google__Protobuf__Value *v = gw_xmalloc(sizeof(*v));

    google__protobuf__value__init(v);
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
        v->struct_value = struct_from_json(j);
        break;
    case JSON_ARRAY: {
        Google__Protobuf__ListValue *l = gw_xmalloc(sizeof(*l));
        google__protobuf__list_value__init(l);
        l->n_values = json_array_size(j);
        l->values = l->n_values ? gw_xcalloc(l->n_values, sizeof(*l->values)) : NULL;
        for (size_t i = 0; i < l->n_values; i++)
            l->values[i] = value_from_json(json_array_get(j, i));
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
        v->list_value = l;
        break;
    }
    case JSON_STRING:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
        v->string_value = gw_xstrndup(json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
        v->number_value = (double)json_integer_value(j);
        break;
    case JSON_REAL:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
        v->number_value = json_real_value(j);
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
        v->bool_value = json_is_true(j);
        break;
    default:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
        v->null_value = GOOGLE__PROTOBUF__NULL_VALUE__NULL_VALUE;
        break;
    }
    return v;
}

int pbjson_struct_from_text(const char *text, ProtobufCMessage **out, char *err, size_t errlen)
{
    json_error_t je;
    json_t *j;

    *out = NULL;
    j = json_loads(text, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (j == NULL) {
        snprintf(err, errlen, "invalid JSON at line %d column %d: %s", je.line, je.column, je.text);
        return -1;
    }
    if (!json_is_object(j)) {
        snprintf(err, errlen, "expected a JSON object, got %s",
                 json_is_array(j)     ? "an array"
                 : json_is_string(j)  ? "a string"
                 : json_is_number(j)  ? "a number"
                 : json_is_boolean(j) ? "a boolean"
                                      : "null");
        json_decref(j);
        return -1;
    }
    *out = &struct_from_json(j)->base;
    json_decref(j);
    return 0;
}
