/* Unit tests for CreateSandbox validation and defaults, generated names and
 * the public -> driver mapping (src/api/api_spec.c). Messages are built in
 * a test arena released after every test; leaks and stray pointers are
 * caught by running this binary under AddressSanitizer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "api/api_int.h"
#include "compute_driver.pb-c.h"
#include "datamodel.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "labels/labels.h"
#include "pbjson/pbjson.h"
#include "openshell.pb-c.h"

#define ERRLEN  512
#define INVALID GRPC_STATUS_INVALID_ARGUMENT

/* ---- test arena ----------------------------------------------------------------- */

struct test_arena {
    void **blocks;
    size_t n, cap;
};

static struct test_arena arena;

static void *arena_alloc(void *ctx, size_t n)
{
    struct test_arena *a = ctx;
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->blocks = realloc(a->blocks, a->cap * sizeof(*a->blocks));
        assert_non_null(a->blocks);
    }
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    a->blocks[a->n++] = p;
    return p;
}

static const struct api_alloc AL = {arena_alloc, &arena};

static int arena_release(void **state)
{
    (void)state;
    for (size_t i = 0; i < arena.n; i++)
        free(arena.blocks[i]);
    free(arena.blocks);
    memset(&arena, 0, sizeof(arena));
    return 0;
}

static char *sdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(arena_alloc(&arena, n), s, n);
}

/* |n| copies of |c| in the arena. */
static char *rep(char c, size_t n)
{
    char *s = arena_alloc(&arena, n + 1);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static void *msg(const ProtobufCMessageDescriptor *d)
{
    void *m = arena_alloc(&arena, d->sizeof_message);
    protobuf_c_message_init(d, m);
    return m;
}

/* ---- builders ---------------------------------------------------------------------- */

/* Appends key=value to a map field of any generated entry type. */
#define MAP_ADD(arr, count, descriptor, k, v)                                                      \
    do {                                                                                           \
        __typeof__(arr) old_ = (arr);                                                              \
        (arr) = arena_alloc(&arena, ((count) + 1) * sizeof(*(arr)));                               \
        if ((count) > 0)                                                                           \
            memcpy((arr), old_, (count) * sizeof(*(arr)));                                         \
        (arr)[(count)] = msg(descriptor);                                                          \
        (arr)[(count)]->key = sdup(k);                                                             \
        (arr)[(count)]->value = sdup(v);                                                           \
        (count)++;                                                                                 \
    } while (0)

#define SPEC_ENV_ADD(s, k, v)                                                                      \
    MAP_ADD((s)->environment, (s)->n_environment,                                                  \
            &openshell__v1__sandbox_spec__environment_entry__descriptor, k, v)
#define TMPL_ENV_ADD(t, k, v)                                                                      \
    MAP_ADD((t)->environment, (t)->n_environment,                                                  \
            &openshell__v1__sandbox_template__environment_entry__descriptor, k, v)
#define TMPL_LABEL_ADD(t, k, v)                                                                    \
    MAP_ADD((t)->labels, (t)->n_labels,                                                            \
            &openshell__v1__sandbox_template__labels_entry__descriptor, k, v)
#define TMPL_ANN_ADD(t, k, v)                                                                      \
    MAP_ADD((t)->annotations, (t)->n_annotations,                                                  \
            &openshell__v1__sandbox_template__annotations_entry__descriptor, k, v)
#define REQ_LABEL_ADD(r, k, v)                                                                     \
    MAP_ADD((r)->labels, (r)->n_labels,                                                            \
            &openshell__v1__create_sandbox_request__labels_entry__descriptor, k, v)
#define REQ_ANN_ADD(r, k, v)                                                                       \
    MAP_ADD((r)->annotations, (r)->n_annotations,                                                  \
            &openshell__v1__create_sandbox_request__annotations_entry__descriptor, k, v)

static Openshell__V1__SandboxSpec *spec_new(void)
{
    return msg(&openshell__v1__sandbox_spec__descriptor);
}

static Openshell__V1__SandboxTemplate *tmpl_of(Openshell__V1__SandboxSpec *s)
{
    if (s->template_ == NULL)
        s->template_ = msg(&openshell__v1__sandbox_template__descriptor);
    return s->template_;
}

static Openshell__V1__CreateSandboxRequest *req_new(void)
{
    Openshell__V1__CreateSandboxRequest *r =
        msg(&openshell__v1__create_sandbox_request__descriptor);
    r->spec = spec_new();
    return r;
}

static void set_command(Openshell__V1__SandboxSpec *s, size_t n, const char *const *argv)
{
    s->command = arena_alloc(&arena, (n ? n : 1) * sizeof(char *));
    for (size_t i = 0; i < n; i++)
        s->command[i] = sdup(argv[i]);
    s->n_command = n;
}

static Google__Protobuf__Struct *struct_from_json(const json_t *o);

static Google__Protobuf__Value *value_from_json(const json_t *j)
{
    Google__Protobuf__Value *v = msg(&google__protobuf__value__descriptor);
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
        v->struct_value = struct_from_json(j);
        break;
    case JSON_ARRAY: {
        Google__Protobuf__ListValue *l = msg(&google__protobuf__list_value__descriptor);
        l->values = arena_alloc(&arena, (json_array_size(j) + 1) * sizeof(*l->values));
        for (size_t i = 0; i < json_array_size(j); i++)
            l->values[l->n_values++] = value_from_json(json_array_get(j, i));
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
        v->list_value = l;
        break;
    }
    case JSON_STRING:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
        v->string_value = sdup(json_string_value(j));
        break;
    case JSON_INTEGER:
    case JSON_REAL:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
        v->number_value = json_number_value(j);
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
        v->bool_value = json_is_true(j);
        break;
    case JSON_NULL:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
        break;
    }
    return v;
}

static Google__Protobuf__Struct *struct_from_json(const json_t *o)
{
    Google__Protobuf__Struct *s = msg(&google__protobuf__struct__descriptor);
    const char *k;
    json_t *v;
    s->fields = arena_alloc(&arena, (json_object_size(o) + 1) * sizeof(*s->fields));
    json_object_foreach((json_t *)o, k, v)
    {
        Google__Protobuf__Struct__FieldsEntry *e =
            msg(&google__protobuf__struct__fields_entry__descriptor);
        e->key = sdup(k);
        e->value = value_from_json(v);
        s->fields[s->n_fields++] = e;
    }
    return s;
}

/* A Struct from JSON object text (single quotes allowed for readability). */
static Google__Protobuf__Struct *S(const char *text)
{
    char *t = sdup(text);
    for (char *p = t; *p; p++)
        if (*p == '\'')
            *p = '"';
    json_error_t je;
    json_t *o = json_loads(t, JSON_DECODE_INT_AS_REAL, &je);
    if (o == NULL || !json_is_object(o))
        fail_msg("bad test JSON %s: %s", text, je.text);
    Google__Protobuf__Struct *s = struct_from_json(o);
    json_decref(o);
    return s;
}

static json_t *struct_to_json(const Google__Protobuf__Struct *s);

static json_t *value_to_json(const Google__Protobuf__Value *v)
{
    switch (v->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return struct_to_json(v->struct_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE: {
        json_t *a = json_array();
        for (size_t i = 0; i < v->list_value->n_values; i++)
            json_array_append_new(a, value_to_json(v->list_value->values[i]));
        return a;
    }
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        return json_string(v->string_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
        return json_real(v->number_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
        return json_boolean(v->bool_value);
    default:
        return json_null();
    }
}

static json_t *struct_to_json(const Google__Protobuf__Struct *s)
{
    json_t *o = json_object();
    for (size_t i = 0; i < s->n_fields; i++)
        json_object_set_new(o, s->fields[i]->key, value_to_json(s->fields[i]->value));
    return o;
}

/* Asserts that |s| (NULL = absent) holds exactly the JSON object |want|
 * (NULL = expected absent). */
static void assert_struct(const Google__Protobuf__Struct *s, const char *want)
{
    if (want == NULL) {
        if (s != NULL) {
            json_t *got = struct_to_json(s);
            char *g = json_dumps(got, JSON_SORT_KEYS | JSON_COMPACT);
            json_decref(got);
            fail_msg("expected no struct, got %s", g);
        }
        return;
    }
    if (s == NULL)
        fail_msg("expected %s, got no struct", want);
    json_t *got = struct_to_json(s);
    char *t = sdup(want);
    for (char *p = t; *p; p++)
        if (*p == '\'')
            *p = '"';
    json_t *exp = json_loads(t, JSON_DECODE_INT_AS_REAL, NULL);
    assert_non_null(exp);
    if (!json_equal(got, exp)) {
        char *g = json_dumps(got, JSON_SORT_KEYS | JSON_COMPACT);
        char *e = json_dumps(exp, JSON_SORT_KEYS | JSON_COMPACT);
        fprintf(stderr, "got  %s\nwant %s\n", g, e);
        free(g);
        free(e);
        json_decref(got);
        json_decref(exp);
        fail();
    }
    json_decref(got);
    json_decref(exp);
}

/* ---- validation helpers -------------------------------------------------------------- */

static void validate_ok(Openshell__V1__CreateSandboxRequest *r)
{
    char err[ERRLEN] = "";
    int rc = api_spec_validate_with(&AL, r, err, sizeof(err));
    if (rc != GRPC_STATUS_OK)
        fail_msg("validation failed (%d): %s", rc, err);
}

static void validate_bad(Openshell__V1__CreateSandboxRequest *r, const char *want)
{
    char err[ERRLEN] = "";
    int rc = api_spec_validate_with(&AL, r, err, sizeof(err));
    if (rc != INVALID)
        fail_msg("expected INVALID_ARGUMENT containing '%s', got %d", want, rc);
    if (strstr(err, want) == NULL)
        fail_msg("error '%s' lacks '%s'", err, want);
    if (strchr(err, '\n') != NULL)
        fail_msg("error '%s' spans lines", err);
}

/* ---- api_spec_validate: spec and command defaults ---------------------------------- */

static void test_api_spec_validate_spec_required(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    r->spec = NULL;
    char err[ERRLEN] = "";
    assert_int_equal(api_spec_validate_with(&AL, r, err, sizeof(err)), INVALID);
    assert_string_equal(err, "spec is required");
    /* Before anything else: a bad name does not change the message. */
    r->name = sdup("BAD NAME");
    assert_int_equal(api_spec_validate_with(&AL, r, err, sizeof(err)), INVALID);
    assert_string_equal(err, "spec is required");
}

static void test_api_spec_validate_default_command(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    validate_ok(r);
    assert_int_equal(r->spec->n_command, 2);
    assert_string_equal(r->spec->command[0], "/bin/bash");
    assert_string_equal(r->spec->command[1], "-l");
    assert_true(r->spec->tty);
}

static void test_api_spec_validate_command_kept(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    const char *argv[] = {"sleep", "infinity"};
    set_command(r->spec, 2, argv);
    validate_ok(r);
    assert_int_equal(r->spec->n_command, 2);
    assert_string_equal(r->spec->command[0], "sleep");
    assert_false(r->spec->tty);
}

static void test_api_spec_validate_command_limits(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    const char *empty0[] = {"", "x"};
    set_command(r->spec, 2, empty0);
    validate_bad(r, "spec.command[0]: must not be empty");

    const char *long1[] = {"sh", rep('a', 32 * 1024 + 1)};
    set_command(r->spec, 2, long1);
    validate_bad(r, "spec.command[1]: 32769 bytes exceed the limit of 32768");

    const char *edge[] = {"sh", rep('a', 32 * 1024)};
    set_command(r->spec, 2, edge);
    validate_ok(r);

    const char *big[9];
    for (int i = 0; i < 9; i++)
        big[i] = rep('b', 32 * 1024); /* each fine, 288 KiB in total */
    set_command(r->spec, 9, big);
    validate_bad(r, "spec.command: total size 294912 bytes exceeds 262144");

    const char *many[257];
    for (int i = 0; i < 257; i++)
        many[i] = "x";
    set_command(r->spec, 257, many);
    validate_bad(r, "spec.command: 257 arguments exceed the limit of 256");
    set_command(r->spec, 256, many);
    validate_ok(r);
}

/* ---- api_spec_validate: name ----------------------------------------------------------- */

static void test_api_spec_validate_name(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    const char *good[] = {"", "a", "my-sandbox", "abc123", "a-b-c", "abcdefghijklmnopqrs"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        r->name = sdup(good[i]);
        validate_ok(r);
    }
    const char *bad[] = {"abcdefghijklmnopqrst", "My-box", "-ab", "ab-", "a--b", "a_b", "a.b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r->name = sdup(bad[i]);
        validate_bad(r, "name");
    }
}

static void test_api_spec_validate_name_before_spec_fields(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    r->name = sdup("Bad");
    SPEC_ENV_ADD(r->spec, "OPENSHELL_X", "1");
    validate_bad(r, "name 'Bad'");
}

/* ---- api_spec_validate: spec fields ---------------------------------------------------- */

static void test_api_spec_validate_providers_and_log_level(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    r->spec->providers = arena_alloc(&arena, 33 * sizeof(char *));
    for (int i = 0; i < 33; i++)
        r->spec->providers[i] = sdup("p");
    r->spec->n_providers = 33;
    validate_bad(r, "spec.providers: 33 entries exceed the limit of 32");
    r->spec->n_providers = 32;
    validate_ok(r);

    r->spec->log_level = rep('d', 33);
    validate_bad(r, "spec.log_level: 33 bytes exceed the limit of 32");
    r->spec->log_level = rep('d', 32);
    validate_ok(r);
}

static void test_api_spec_validate_environment(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    SPEC_ENV_ADD(r->spec, "PATH", "/usr/bin");
    SPEC_ENV_ADD(r->spec, "_private", "");
    SPEC_ENV_ADD(r->spec, "openshell_lower", "ok: prefix test is case-sensitive");
    SPEC_ENV_ADD(r->spec, "OPENSHELL", "no underscore");
    validate_ok(r);

    r = req_new();
    SPEC_ENV_ADD(r->spec, "OPENSHELL_X", "1");
    validate_bad(r, "spec.environment: key 'OPENSHELL_X' is reserved");

    r = req_new();
    SPEC_ENV_ADD(r->spec, "1ABC", "1");
    validate_bad(r, "spec.environment: key '1ABC' must match [A-Za-z_][A-Za-z0-9_]*");

    r = req_new();
    SPEC_ENV_ADD(r->spec, "A-B", "1");
    validate_bad(r, "spec.environment: key 'A-B'");

    r = req_new();
    SPEC_ENV_ADD(r->spec, "", "1");
    validate_bad(r, "spec.environment: key ''");

    r = req_new();
    SPEC_ENV_ADD(r->spec, "A", "line\nbreak");
    validate_bad(r, "spec.environment: value of 'A' contains CR or LF");

    r = req_new();
    SPEC_ENV_ADD(r->spec, "A", "carriage\rreturn");
    validate_bad(r, "contains CR or LF");

    r = req_new();
    SPEC_ENV_ADD(r->spec, rep('K', 257), "v");
    validate_bad(r, "spec.environment: key 'KKKK");
    validate_bad(r, "is 257 bytes, limit 256");

    r = req_new();
    SPEC_ENV_ADD(r->spec, "BIG", rep('v', 8193));
    validate_bad(r, "spec.environment: value of 'BIG' is 8193 bytes, limit 8192");
}

static void test_api_spec_validate_environment_counts(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    char key[32];
    for (int i = 0; i < 129; i++) {
        snprintf(key, sizeof(key), "K%d", i);
        SPEC_ENV_ADD(r->spec, key, "v");
    }
    validate_bad(r, "spec.environment: 129 entries exceed the limit of 128");
    r->spec->n_environment = 128;
    validate_ok(r);

    /* 40 values of 8 KiB: each within limits, 320 KiB in total. */
    r = req_new();
    for (int i = 0; i < 40; i++) {
        snprintf(key, sizeof(key), "K%d", i);
        SPEC_ENV_ADD(r->spec, key, rep('v', 8192));
    }
    validate_bad(r, "spec.environment: total size");
    validate_bad(r, "exceeds 262144");
    r->spec->n_environment = 31; /* 31 * (8192 + 3) fits */
    validate_ok(r);
}

static void test_api_spec_validate_template_strings(void **state)
{
    (void)state;
    const char *fields[] = {"spec.template.image", "spec.template.runtime_class_name",
                            "spec.template.agent_socket"};
    for (int f = 0; f < 3; f++) {
        Openshell__V1__CreateSandboxRequest *r = req_new();
        Openshell__V1__SandboxTemplate *t = tmpl_of(r->spec);
        char **slot = f == 0 ? &t->image : f == 1 ? &t->runtime_class_name : &t->agent_socket;
        *slot = rep('x', 1024);
        validate_ok(r);
        *slot = rep('x', 1025);
        char want[128];
        snprintf(want, sizeof(want), "%s: 1025 bytes exceed the limit of 1024", fields[f]);
        validate_bad(r, want);
    }
}

static void test_api_spec_validate_template_maps(void **state)
{
    (void)state;
    char key[32];
    Openshell__V1__CreateSandboxRequest *r = req_new();
    Openshell__V1__SandboxTemplate *t = tmpl_of(r->spec);
    for (int i = 0; i < 129; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        TMPL_LABEL_ADD(t, key, "v");
    }
    validate_bad(r, "spec.template.labels: 129 entries exceed the limit of 128");
    t->n_labels = 128;
    validate_ok(r);

    r = req_new();
    t = tmpl_of(r->spec);
    TMPL_ANN_ADD(t, "a", rep('v', 8193));
    validate_bad(r, "spec.template.annotations: value of 'a' is 8193 bytes");

    /* Template labels are only size-checked here: the driver owns them. */
    r = req_new();
    t = tmpl_of(r->spec);
    TMPL_LABEL_ADD(t, "Not A Label Key", "v");
    validate_ok(r);

    r = req_new();
    t = tmpl_of(r->spec);
    TMPL_ENV_ADD(t, "OPENSHELL_TOKEN", "x");
    validate_bad(r, "spec.template.environment: key 'OPENSHELL_TOKEN' is reserved");

    r = req_new();
    t = tmpl_of(r->spec);
    TMPL_ENV_ADD(t, "GOOD", "a\nb");
    validate_bad(r, "spec.template.environment: value of 'GOOD' contains CR or LF");
}

/* A Struct whose encoding is a little over |size| bytes. */
static Google__Protobuf__Struct *big_struct(size_t size)
{
    Google__Protobuf__Struct *s = msg(&google__protobuf__struct__descriptor);
    Google__Protobuf__Struct__FieldsEntry *e =
        msg(&google__protobuf__struct__fields_entry__descriptor);
    Google__Protobuf__Value *v = msg(&google__protobuf__value__descriptor);
    v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
    v->string_value = rep('z', size);
    e->key = sdup("k");
    e->value = v;
    s->fields = arena_alloc(&arena, sizeof(*s->fields));
    s->fields[0] = e;
    s->n_fields = 1;
    return s;
}

static void test_api_spec_validate_struct_sizes(void **state)
{
    (void)state;
    char want[128];
    Openshell__V1__CreateSandboxRequest *r = req_new();
    Openshell__V1__SandboxTemplate *t = tmpl_of(r->spec);
    t->driver_config = big_struct(70000);
    size_t n = protobuf_c_message_get_packed_size(&t->driver_config->base);
    snprintf(want, sizeof(want),
             "spec.template.driver_config: encoded size %zu exceeds 65536 bytes", n);
    validate_bad(r, want);
    validate_bad(r, "template.driver_config: encoded size");

    t->driver_config = big_struct(65000); /* under the cap */
    assert_true(protobuf_c_message_get_packed_size(&t->driver_config->base) <= 65536);
    validate_ok(r);

    t->resources = big_struct(66000);
    validate_bad(r, "spec.template.resources: encoded size");
}

static void test_api_spec_validate_gpu_count(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    r->spec->resource_requirements = msg(&openshell__v1__resource_requirements__descriptor);
    validate_ok(r); /* no gpu */
    r->spec->resource_requirements->gpu =
        msg(&openshell__v1__gpu_resource_requirements__descriptor);
    validate_ok(r); /* gpu, count absent */
    r->spec->resource_requirements->gpu->_count_case =
        OPENSHELL__V1__GPU_RESOURCE_REQUIREMENTS___COUNT_COUNT;
    r->spec->resource_requirements->gpu->count = 0;
    validate_bad(r, "spec.resource_requirements.gpu.count: must be greater than 0");
    r->spec->resource_requirements->gpu->count = 2;
    validate_ok(r);
}

static void test_api_spec_validate_policy_size(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    Openshell__Sandbox__V1__SandboxPolicy *p =
        msg(&openshell__sandbox__v1__sandbox_policy__descriptor);
    p->filesystem = msg(&openshell__sandbox__v1__filesystem_policy__descriptor);
    p->filesystem->read_only = arena_alloc(&arena, 9 * sizeof(char *));
    for (int i = 0; i < 9; i++)
        p->filesystem->read_only[i] = rep('/', 30000);
    p->filesystem->n_read_only = 9;
    r->spec->policy = p;
    validate_bad(r, "spec.policy: encoded size");
    validate_bad(r, "exceeds 262144 bytes");
    p->filesystem->n_read_only = 8;
    validate_ok(r);
}

/* ---- api_spec_validate: request labels and annotations ------------------------------- */

static void test_api_spec_validate_labels(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    REQ_LABEL_ADD(r, "app", "web");
    REQ_LABEL_ADD(r, "example.com/tier", "");
    validate_ok(r);

    r = req_new();
    REQ_LABEL_ADD(r, "Bad Key", "v");
    validate_bad(r, "labels: label key 'Bad Key'");

    r = req_new();
    REQ_LABEL_ADD(r, "app", "-bad");
    validate_bad(r, "labels: label value '-bad'");

    r = req_new();
    REQ_LABEL_ADD(r, "app", rep('v', 64));
    validate_bad(r, "labels: label value");

    r = req_new();
    char key[32];
    for (int i = 0; i < 129; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        REQ_LABEL_ADD(r, key, "v");
    }
    validate_bad(r, "labels: 129 entries exceed the limit of 128");
    r->n_labels = 128;
    validate_ok(r);
}

static void test_api_spec_validate_annotations(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    REQ_ANN_ADD(r, "example.com/note", "free text, with spaces\nand lines");
    validate_ok(r);

    r = req_new();
    REQ_ANN_ADD(r, "bad key", "v");
    validate_bad(r, "annotations: annotation key 'bad key'");

    r = req_new();
    REQ_ANN_ADD(r, "note", rep('v', 8193));
    validate_bad(r, "annotations: ");

    r = req_new();
    char key[32];
    for (int i = 0; i < 129; i++) {
        snprintf(key, sizeof(key), "a%d", i);
        REQ_ANN_ADD(r, key, "v");
    }
    validate_bad(r, "annotations: 129 entries exceed the limit of 128");
}

static void test_api_spec_validate_spec_before_labels(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    REQ_LABEL_ADD(r, "Bad Key", "v");
    SPEC_ENV_ADD(r->spec, "OPENSHELL_X", "1");
    validate_bad(r, "spec.environment");
}

static void test_api_spec_validate_escapes_text(void **state)
{
    (void)state;
    Openshell__V1__CreateSandboxRequest *r = req_new();
    SPEC_ENV_ADD(r->spec, "A'\x01", "v");
    validate_bad(r, "key 'A\\x27\\x01'");

    r = req_new();
    SPEC_ENV_ADD(r->spec, rep('Q', 300), "v");
    char err[ERRLEN];
    assert_int_equal(api_spec_validate_with(&AL, r, err, sizeof(err)), INVALID);
    assert_non_null(strstr(err, "...'"));
    assert_true(strlen(err) < 200);

    /* A short buffer still gets a terminated message. */
    char small[8];
    assert_int_equal(api_spec_validate_with(&AL, r, small, sizeof(small)), INVALID);
    assert_int_equal(strlen(small), 7);
}

/* ---- generated names -------------------------------------------------------------------- */

static void test_api_spec_generate_name_shape(void **state)
{
    (void)state;
    char seen[64][20];
    size_t distinct = 0;
    for (int i = 0; i < 2000; i++) {
        char name[20];
        char err[ERRLEN];
        memset(name, 'X', sizeof(name));
        api_spec_generate_name(name, sizeof(name));
        size_t n = strlen(name);
        assert_true(n >= 1 && n <= 19);
        if (!labels_dns_label_valid(name, 19, err, sizeof(err)))
            fail_msg("generated name '%s' invalid: %s", name, err);
        const char *dash = strchr(name, '-');
        assert_non_null(dash); /* every word pair fits: no cut needed */
        assert_ptr_equal(strrchr(name, '-'), dash);
        for (const char *p = name; *p; p++)
            assert_true((*p >= 'a' && *p <= 'z') || *p == '-');
        bool dup = false;
        for (size_t j = 0; j < distinct && !dup; j++)
            dup = strcmp(seen[j], name) == 0;
        if (!dup && distinct < 64)
            memcpy(seen[distinct++], name, n + 1);
    }
    assert_int_equal(distinct, 64); /* at least 64 different names */
}

static void test_api_spec_generate_name_small_buffer(void **state)
{
    (void)state;
    char buf[6];
    api_spec_generate_name(buf, sizeof(buf));
    assert_true(strlen(buf) <= 5);
    assert_true(strlen(buf) >= 1);
    assert_true(buf[strlen(buf) - 1] != '-');
}

static void test_api_spec_compose_name_cut(void **state)
{
    (void)state;
    char out[32];
    api_spec_compose_name(out, sizeof(out), "calm", "otter");
    assert_string_equal(out, "calm-otter");
    api_spec_compose_name(out, sizeof(out), "abcdefghij", "klmnopqrstuvwxyz");
    assert_string_equal(out, "abcdefghij-klmnopqr");
    assert_int_equal(strlen(out), 19);
    /* The cut lands right after the dash: it is dropped. */
    api_spec_compose_name(out, sizeof(out), "abcdefghijklmnopqr", "stuv");
    assert_string_equal(out, "abcdefghijklmnopqr");
    api_spec_compose_name(out, sizeof(out), "abcdefghijklmnopqrs", "tuv");
    assert_string_equal(out, "abcdefghijklmnopqrs");
    /* |outlen| also bounds it. */
    api_spec_compose_name(out, 4, "ab", "cd");
    assert_string_equal(out, "ab");
    out[0] = 'Z';
    api_spec_compose_name(out, 0, "ab", "cd");
    assert_int_equal(out[0], 'Z');
}

/* ---- api_spec_to_driver ------------------------------------------------------------------- */

static Openshell__Compute__V1__DriverSandbox *to_driver(const Openshell__V1__SandboxSpec *s,
                                                        const char *driver)
{
    Openshell__Compute__V1__DriverSandbox *d = (void *)1;
    char err[ERRLEN] = "";
    int rc = api_spec_to_driver_with(&AL, "0b7c-id", "calm-otter", "default", s, driver,
                                     "ghcr.io/default:1", &d, err, sizeof(err));
    if (rc != GRPC_STATUS_OK)
        fail_msg("mapping failed (%d): %s", rc, err);
    assert_non_null(d);
    /* The message encodes and decodes: no dangling or half-set parts. */
    size_t len = protobuf_c_message_get_packed_size(&d->base);
    uint8_t *buf = arena_alloc(&arena, len + 1);
    assert_int_equal(protobuf_c_message_pack(&d->base, buf), len);
    Openshell__Compute__V1__DriverSandbox *back =
        openshell__compute__v1__driver_sandbox__unpack(NULL, len, buf);
    assert_non_null(back);
    openshell__compute__v1__driver_sandbox__free_unpacked(back, NULL);
    return d;
}

static void to_driver_bad(const Openshell__V1__SandboxSpec *s, const char *driver, const char *want)
{
    Openshell__Compute__V1__DriverSandbox *d = (void *)1;
    char err[ERRLEN] = "";
    int rc =
        api_spec_to_driver_with(&AL, "id", "n", "default", s, driver, "img", &d, err, sizeof(err));
    assert_int_equal(rc, INVALID);
    assert_null(d);
    if (strcmp(err, want) != 0)
        fail_msg("error '%s', want '%s'", err, want);
}

static const char *label_of(const Openshell__Compute__V1__DriverSandboxTemplate *t, const char *k,
                            size_t *count)
{
    const char *v = NULL;
    *count = 0;
    for (size_t i = 0; i < t->n_labels; i++)
        if (strcmp(t->labels[i]->key, k) == 0) {
            v = t->labels[i]->value;
            (*count)++;
        }
    return v;
}

static void test_api_spec_to_driver_basic_fields(void **state)
{
    (void)state;
    Openshell__V1__SandboxSpec *s = spec_new();
    Openshell__V1__SandboxTemplate *t = tmpl_of(s);
    s->log_level = sdup("debug");
    SPEC_ENV_ADD(s, "A", "1");
    SPEC_ENV_ADD(s, "B", "2");
    const char *argv[] = {"python", "-m", "http.server"};
    set_command(s, 3, argv);
    s->tty = true;
    s->providers = arena_alloc(&arena, sizeof(char *));
    s->providers[0] = sdup("github");
    s->n_providers = 1;
    t->image = sdup("python:3.12");
    t->agent_socket = sdup("/run/agent.sock");
    TMPL_LABEL_ADD(t, "team", "infra");
    TMPL_ENV_ADD(t, "T", "x");

    Openshell__Compute__V1__DriverSandbox *d = to_driver(s, "docker");
    assert_string_equal(d->id, "0b7c-id");
    assert_string_equal(d->name, "calm-otter");
    assert_string_equal(d->workspace, "default");
    assert_string_equal(d->namespace_, "");
    assert_null(d->status);
    Openshell__Compute__V1__DriverSandboxSpec *ds = d->spec;
    assert_non_null(ds);
    assert_string_equal(ds->log_level, "debug");
    assert_int_equal(ds->n_environment, 2);
    assert_string_equal(ds->environment[0]->key, "A");
    assert_string_equal(ds->environment[1]->value, "2");
    assert_int_equal(ds->n_command, 3);
    assert_string_equal(ds->command[2], "http.server");
    assert_ptr_not_equal(ds->command[2], s->command[2]); /* copied */
    assert_true(ds->tty);
    assert_string_equal(ds->sandbox_token, "");
    assert_null(ds->resource_requirements);
    Openshell__Compute__V1__DriverSandboxTemplate *dt = ds->template_;
    assert_non_null(dt);
    assert_string_equal(dt->image, "python:3.12");
    assert_string_equal(dt->agent_socket_path, "/run/agent.sock");
    size_t c;
    assert_string_equal(label_of(dt, "team", &c), "infra");
    assert_string_equal(label_of(dt, API_OWNER_LABEL, &c), "0b7c-id");
    assert_int_equal(c, 1);
    assert_int_equal(dt->n_labels, 2);
    assert_int_equal(dt->n_environment, 1);
    assert_string_equal(dt->environment[0]->key, "T");
    assert_null(dt->resources);
    assert_null(dt->platform_config);
    assert_null(dt->driver_config);
}

static void test_api_spec_to_driver_default_image(void **state)
{
    (void)state;
    /* No template at all: one is made, with the default image. */
    Openshell__V1__SandboxSpec *s = spec_new();
    Openshell__Compute__V1__DriverSandbox *d = to_driver(s, "docker");
    assert_non_null(d->spec->template_);
    assert_string_equal(d->spec->template_->image, "ghcr.io/default:1");
    size_t c;
    assert_string_equal(label_of(d->spec->template_, API_OWNER_LABEL, &c), "0b7c-id");

    /* Empty image in a template. */
    tmpl_of(s)->image = sdup("");
    d = to_driver(s, "docker");
    assert_string_equal(d->spec->template_->image, "ghcr.io/default:1");

    /* No default known either: stays empty. */
    char err[ERRLEN];
    assert_int_equal(
        api_spec_to_driver_with(&AL, "i", "n", "w", s, "docker", NULL, &d, err, sizeof(err)),
        GRPC_STATUS_OK);
    assert_string_equal(d->spec->template_->image, "");

    /* NULL spec maps like an empty one. */
    assert_int_equal(
        api_spec_to_driver_with(&AL, "i", "n", "w", NULL, "docker", "img", &d, err, sizeof(err)),
        GRPC_STATUS_OK);
    assert_string_equal(d->spec->template_->image, "img");
    assert_int_equal(d->spec->n_command, 0);
}

static void test_api_spec_to_driver_owner_label_wins(void **state)
{
    (void)state;
    Openshell__V1__SandboxSpec *s = spec_new();
    TMPL_LABEL_ADD(tmpl_of(s), API_OWNER_LABEL, "forged");
    TMPL_LABEL_ADD(tmpl_of(s), "a", "b");
    Openshell__Compute__V1__DriverSandbox *d = to_driver(s, "docker");
    size_t c;
    assert_string_equal(label_of(d->spec->template_, API_OWNER_LABEL, &c), "0b7c-id");
    assert_int_equal(c, 1);
    assert_int_equal(d->spec->template_->n_labels, 2);
}

static void test_api_spec_to_driver_gpu_presence(void **state)
{
    (void)state;
    Openshell__V1__SandboxSpec *s = spec_new();
    s->resource_requirements = msg(&openshell__v1__resource_requirements__descriptor);
    Openshell__Compute__V1__DriverSandbox *d = to_driver(s, "docker");
    assert_non_null(d->spec->resource_requirements);
    assert_null(d->spec->resource_requirements->gpu);

    s->resource_requirements->gpu = msg(&openshell__v1__gpu_resource_requirements__descriptor);
    d = to_driver(s, "docker");
    assert_non_null(d->spec->resource_requirements->gpu);
    assert_int_equal(d->spec->resource_requirements->gpu->_count_case,
                     OPENSHELL__COMPUTE__V1__GPU_RESOURCE_REQUIREMENTS___COUNT__NOT_SET);

    s->resource_requirements->gpu->_count_case =
        OPENSHELL__V1__GPU_RESOURCE_REQUIREMENTS___COUNT_COUNT;
    s->resource_requirements->gpu->count = 4;
    d = to_driver(s, "docker");
    assert_int_equal(d->spec->resource_requirements->gpu->_count_case,
                     OPENSHELL__COMPUTE__V1__GPU_RESOURCE_REQUIREMENTS___COUNT_COUNT);
    assert_int_equal(d->spec->resource_requirements->gpu->count, 4);
}

static void test_api_spec_to_driver_resources_typed(void **state)
{
    (void)state;
    Openshell__V1__SandboxSpec *s = spec_new();
    tmpl_of(s)->resources = S("{'requests': {'cpu': '500m', 'memory': '256Mi'}, "
                              "'limits': {'cpu': '2'}}");
    Openshell__Compute__V1__DriverSandbox *d = to_driver(s, "docker");
    Openshell__Compute__V1__DriverResourceRequirements *r = d->spec->template_->resources;
    assert_non_null(r);
    assert_string_equal(r->cpu_request, "500m");
    assert_string_equal(r->memory_request, "256Mi");
    assert_string_equal(r->cpu_limit, "2");
    assert_string_equal(r->memory_limit, "");
    assert_null(d->spec->template_->platform_config); /* nothing left over */

    tmpl_of(s)->resources = S("{'limits': {'memory': '1Gi'}}");
    r = to_driver(s, "docker")->spec->template_->resources;
    assert_string_equal(r->memory_limit, "1Gi");
    assert_string_equal(r->cpu_request, "");
}

static void test_api_spec_to_driver_resources_empty(void **state)
{
    (void)state;
    Openshell__V1__SandboxSpec *s = spec_new();
    const char *cases[] = {"{}", "{'requests': {}}", "{'requests': {'cpu': ''}, 'limits': {}}"};
    for (size_t i = 0; i < 3; i++) {
        tmpl_of(s)->resources = S(cases[i]);
        Openshell__Compute__V1__DriverSandbox *d = to_driver(s, "docker");
        assert_null(d->spec->template_->resources);
        assert_null(d->spec->template_->platform_config);
    }
}

static void test_api_spec_to_driver_resources_raw(void **state)
{
    (void)state;
    Openshell__V1__SandboxSpec *s = spec_new();
    tmpl_of(s)->resources = S("{'requests': {'cpu': '1', 'nvidia.com/gpu': '1'}, "
                              "'limits': {'ephemeral-storage': '2Gi'}, "
                              "'claims': [{'name': 'x'}], 'priority': 5}");
    Openshell__Compute__V1__DriverSandbox *d = to_driver(s, "docker");
    assert_string_equal(d->spec->template_->resources->cpu_request, "1");
    assert_struct(d->spec->template_->platform_config,
                  "{'resources_raw': {'requests': {'nvidia.com/gpu': '1'}, "
                  "'limits': {'ephemeral-storage': '2Gi'}, "
                  "'claims': [{'name': 'x'}], 'priority': 5}}");

    /* Only other entries: no typed resources at all. */
    tmpl_of(s)->resources = S("{'hugepages': '1'}");
    d = to_driver(s, "docker");
    assert_null(d->spec->template_->resources);
    assert_struct(d->spec->template_->platform_config, "{'resources_raw': {'hugepages': '1'}}");
}

static void test_api_spec_to_driver_resources_bad_types(void **state)
{
    (void)state;
    Openshell__V1__SandboxSpec *s = spec_new();
    tmpl_of(s)->resources = S("{'requests': '1'}");
    to_driver_bad(s, "docker", "spec.template.resources.requests must be an object");
    tmpl_of(s)->resources = S("{'limits': ['1']}");
    to_driver_bad(s, "docker", "spec.template.resources.limits must be an object");
    tmpl_of(s)->resources = S("{'limits': {'cpu': 2}}");
    to_driver_bad(s, "docker", "spec.template.resources.limits.cpu must be a string");
    tmpl_of(s)->resources = S("{'requests': {'memory': null}}");
    to_driver_bad(s, "docker", "spec.template.resources.requests.memory must be a string");
    tmpl_of(s)->resources = S("{'requests': {'memory': {'a': 'b'}}}");
    to_driver_bad(s, "docker", "spec.template.resources.requests.memory must be a string");
}

static void test_api_spec_to_driver_platform_config(void **state)
{
    (void)state;
    Openshell__V1__SandboxSpec *s = spec_new();
    Openshell__V1__SandboxTemplate *t = tmpl_of(s);
    t->runtime_class_name = sdup("gvisor");
    TMPL_ANN_ADD(t, "example.com/a", "1");
    TMPL_ANN_ADD(t, "b", "two words");
    t->_user_namespaces_case = OPENSHELL__V1__SANDBOX_TEMPLATE___USER_NAMESPACES_USER_NAMESPACES;
    t->user_namespaces = true;
    Openshell__Compute__V1__DriverSandbox *d = to_driver(s, "kubernetes");
    assert_struct(d->spec->template_->platform_config,
                  "{'runtime_class_name': 'gvisor', "
                  "'annotations': {'example.com/a': '1', 'b': 'two words'}, "
                  "'host_users': false}");

    t->user_namespaces = false;
    t->runtime_class_name = sdup("");
    t->n_annotations = 0;
    d = to_driver(s, "kubernetes");
    assert_struct(d->spec->template_->platform_config, "{'host_users': true}");

    /* Unset user_namespaces, nothing else: no platform_config at all. */
    t->_user_namespaces_case = OPENSHELL__V1__SANDBOX_TEMPLATE___USER_NAMESPACES__NOT_SET;
    d = to_driver(s, "kubernetes");
    assert_null(d->spec->template_->platform_config);
}

static void test_api_spec_to_driver_driver_config_select(void **state)
{
    (void)state;
    Openshell__V1__SandboxSpec *s = spec_new();
    tmpl_of(s)->driver_config = S("{'docker': {'network': 'host', 'n': 1}, "
                                  "'kubernetes': {'node_selector': {'a': 'b'}}, "
                                  "'vm': 'not an object, never looked at'}");
    Openshell__Compute__V1__DriverSandbox *d = to_driver(s, "docker");
    assert_struct(d->spec->template_->driver_config, "{'network': 'host', 'n': 1}");
    assert_null(d->spec->template_->platform_config); /* never merged */

    d = to_driver(s, "kubernetes");
    assert_struct(d->spec->template_->driver_config, "{'node_selector': {'a': 'b'}}");

    /* The forwarded block is a copy, not the caller's object. */
    assert_ptr_not_equal(d->spec->template_->driver_config,
                         tmpl_of(s)->driver_config->fields[1]->value->struct_value);
}

static void test_api_spec_to_driver_driver_config_no_match(void **state)
{
    (void)state;
    Openshell__V1__SandboxSpec *s = spec_new();
    tmpl_of(s)->driver_config = S("{'Docker': {'a': 1}, 'dock': {'b': 2}, 'docker-x': {'c': 3}, "
                                  "'docker ': {'d': 4}, '*': {'e': 5}}");
    Openshell__Compute__V1__DriverSandbox *d = to_driver(s, "docker");
    assert_null(d->spec->template_->driver_config);

    tmpl_of(s)->driver_config = S("{}");
    d = to_driver(s, "docker");
    assert_null(d->spec->template_->driver_config);

    tmpl_of(s)->driver_config = S("{'docker': {'a': 1}}");
    d = to_driver(s, NULL);
    assert_null(d->spec->template_->driver_config);
}

static void test_api_spec_to_driver_driver_config_not_object(void **state)
{
    (void)state;
    Openshell__V1__SandboxSpec *s = spec_new();
    const char *cases[] = {"{'docker': 'x'}", "{'docker': 1}", "{'docker': null}",
                           "{'docker': ['a']}", "{'docker': true}"};
    for (size_t i = 0; i < 5; i++) {
        tmpl_of(s)->driver_config = S(cases[i]);
        to_driver_bad(s, "docker", "template.driver_config.docker must be an object");
    }
    /* Unselected non-objects are fine. */
    tmpl_of(s)->driver_config = S("{'docker': {}, 'podman': 'x'}");
    Openshell__Compute__V1__DriverSandbox *d = to_driver(s, "docker");
    assert_struct(d->spec->template_->driver_config, "{}");
}

static void test_api_spec_to_driver_driver_config_repeated_key(void **state)
{
    (void)state;
    /* A map key given twice on the wire: the last one counts. */
    Openshell__V1__SandboxSpec *s = spec_new();
    Google__Protobuf__Struct *a = S("{'docker': 'first, not an object'}");
    Google__Protobuf__Struct *b = S("{'docker': {'second': true}}");
    Google__Protobuf__Struct *env = msg(&google__protobuf__struct__descriptor);
    env->fields = arena_alloc(&arena, 2 * sizeof(*env->fields));
    env->fields[0] = a->fields[0];
    env->fields[1] = b->fields[0];
    env->n_fields = 2;
    tmpl_of(s)->driver_config = env;
    Openshell__Compute__V1__DriverSandbox *d = to_driver(s, "docker");
    assert_struct(d->spec->template_->driver_config, "{'second': true}");
}

static void test_api_spec_to_driver_validated_request(void **state)
{
    (void)state;
    /* The path CreateSandbox takes: validate (defaults), then map. */
    Openshell__V1__CreateSandboxRequest *r = req_new();
    tmpl_of(r->spec)->driver_config = S("{'docker': {'x': 'y'}}");
    validate_ok(r);
    Openshell__Compute__V1__DriverSandbox *d = to_driver(r->spec, "docker");
    assert_int_equal(d->spec->n_command, 2);
    assert_string_equal(d->spec->command[0], "/bin/bash");
    assert_true(d->spec->tty);
    assert_struct(d->spec->template_->driver_config, "{'x': 'y'}");
}

/* An unknown field whose tag is an overlong encoding of field number 0:
 * protobuf-c decodes it, keeps it, and writes it back canonically, which
 * it then refuses to decode. Such a spec would be stored unreadable and
 * forwarded undecodable, so it is refused up front (fuzz_sandbox_spec). */
static void test_api_spec_validate_refuses_field_zero(void **state)
{
    /* CreateSandboxRequest{spec{command:["a"], <tag 0x80 0x00 = field 0, varint 1>}} */
    static const uint8_t wire[] = {0x0a, 0x06, 0x62, 0x01, 'a', 0x80, 0x00, 0x01};
    Openshell__V1__CreateSandboxRequest *req =
        openshell__v1__create_sandbox_request__unpack(NULL, sizeof(wire), wire);
    char err[256];
    assert_non_null(req); /* the library takes it */
    assert_int_equal(api_spec_validate_with(&AL, req, err, sizeof(err)),
                     GRPC_STATUS_INVALID_ARGUMENT);
    assert_string_equal(err, "spec: malformed encoding (a field numbered 0)");
    protobuf_c_message_free_unpacked(&req->base, NULL);
}

/* ---- pbjson_dumps (the spec_json column) ------------------------------------ */

static void test_pbjson_dumps_spec(void **state)
{
    Openshell__V1__SandboxSpec *s = spec_new();
    const char *argv[] = {"/bin/sh", "-c", "echo 'hi'"};
    set_command(s, 3, argv);
    s->tty = true;
    s->log_level = sdup("debug");
    Openshell__V1__SandboxTemplate *t = tmpl_of(s);
    t->image = sdup("host");
    TMPL_LABEL_ADD(t, "app", "web");
    t->driver_config =
        S("{'process': {'network': 'isolated', 'pids_limit': 64}, 'x': [1, true, null]}");
    t->_user_namespaces_case = OPENSHELL__V1__SANDBOX_TEMPLATE___USER_NAMESPACES_USER_NAMESPACES;
    t->user_namespaces = false; /* set, even though false: presence is kept */
    s->resource_requirements = msg(&openshell__v1__resource_requirements__descriptor);
    s->resource_requirements->gpu = msg(&openshell__v1__gpu_resource_requirements__descriptor);

    char *j = pbjson_dumps(&s->base, PBJSON_SORT_KEYS);
    assert_string_equal(
        j, "{\"command\":[\"/bin/sh\",\"-c\",\"echo 'hi'\"],\"logLevel\":\"debug\","
           "\"resourceRequirements\":{\"gpu\":{}},\"template\":{\"driverConfig\":{\"process\":"
           "{\"network\":\"isolated\",\"pids_limit\":64},\"x\":[1,true,null]},"
           "\"image\":\"host\",\"labels\":{\"app\":\"web\"},\"userNamespaces\":false},"
           "\"tty\":true}");
    free(j);
}

static void test_pbjson_dumps_scalars(void **state)
{
    Openshell__V1__SandboxStatus st = OPENSHELL__V1__SANDBOX_STATUS__INIT;
    st.phase = OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_READY;
    st._exit_code_case = OPENSHELL__V1__SANDBOX_STATUS___EXIT_CODE_EXIT_CODE;
    st.exit_code = 0; /* a set oneof member is shown even at its default */
    char *j = pbjson_dumps(&st.base, PBJSON_SORT_KEYS);
    assert_string_equal(j, "{\"exitCode\":0,\"phase\":\"SANDBOX_PHASE_READY\"}");
    free(j);

    Openshell__Datamodel__V1__ObjectMeta m = OPENSHELL__DATAMODEL__V1__OBJECT_META__INIT;
    m.created_at_ms = 1795395580497;
    m.resource_version = 18446744073709551615ull;
    j = pbjson_dumps(&m.base, PBJSON_SORT_KEYS);
    assert_string_equal(j, "{\"createdAtMs\":\"1795395580497\","
                           "\"resourceVersion\":\"18446744073709551615\"}");
    free(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_teardown(f, arena_release)
        T(test_api_spec_validate_spec_required),
        T(test_api_spec_validate_default_command),
        T(test_api_spec_validate_command_kept),
        T(test_api_spec_validate_command_limits),
        T(test_api_spec_validate_name),
        T(test_api_spec_validate_name_before_spec_fields),
        T(test_api_spec_validate_providers_and_log_level),
        T(test_api_spec_validate_environment),
        T(test_api_spec_validate_environment_counts),
        T(test_api_spec_validate_template_strings),
        T(test_api_spec_validate_template_maps),
        T(test_api_spec_validate_struct_sizes),
        T(test_api_spec_validate_gpu_count),
        T(test_api_spec_validate_policy_size),
        T(test_api_spec_validate_labels),
        T(test_api_spec_validate_annotations),
        T(test_api_spec_validate_spec_before_labels),
        T(test_api_spec_validate_escapes_text),
        T(test_api_spec_generate_name_shape),
        T(test_api_spec_generate_name_small_buffer),
        T(test_api_spec_compose_name_cut),
        T(test_api_spec_to_driver_basic_fields),
        T(test_api_spec_to_driver_default_image),
        T(test_api_spec_to_driver_owner_label_wins),
        T(test_api_spec_to_driver_gpu_presence),
        T(test_api_spec_to_driver_resources_typed),
        T(test_api_spec_to_driver_resources_empty),
        T(test_api_spec_to_driver_resources_raw),
        T(test_api_spec_to_driver_resources_bad_types),
        T(test_api_spec_to_driver_platform_config),
        T(test_api_spec_to_driver_driver_config_select),
        T(test_api_spec_to_driver_driver_config_no_match),
        T(test_api_spec_to_driver_driver_config_not_object),
        T(test_api_spec_to_driver_driver_config_repeated_key),
        T(test_api_spec_to_driver_validated_request),
        T(test_api_spec_validate_refuses_field_zero),
        T(test_pbjson_dumps_spec),
        T(test_pbjson_dumps_scalars),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
