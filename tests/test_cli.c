/* Unit tests for the openshell CLI's pure parts: the proto3 JSON encoder and
 * JSON -> Struct (cli_json.c), tables, records, errors and exit codes
 * (cli_out.c) and gateway URL parsing (grpc_endpoint_parse, shared with the
 * supervisor, in http2/grpc_client.c). Leaks are caught by
 * running this binary under AddressSanitizer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "cli/cli.h"
#include "diag.pb-c.h"
#include "events.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "http2/grpc.h"
#include "openshell.pb-c.h"

/* Asserts that the proto3 JSON of |m| equals the JSON text |expected|
 * (as JSON values: key order and spacing do not matter). */
static void assert_json_eq(const ProtobufCMessage *m, const char *expected)
{
    char *got = pbjson_dumps(m, 0);
    json_error_t je;
    json_t *a = json_loads(got, JSON_DECODE_ANY, &je);
    json_t *b = json_loads(expected, JSON_DECODE_ANY, &je);

    assert_non_null(a);
    assert_non_null(b);
    if (!json_equal(a, b))
        fail_msg("JSON differs\n got:      %s\n expected: %s", got, expected);
    json_decref(a);
    json_decref(b);
    free(got);
}

/* Runs |fn| with stderr captured; returns what it printed (caller frees). */
static char *capture_stderr(int (*fn)(void *), void *arg, int *rc)
{
    FILE *tmp = tmpfile();
    int saved = dup(STDERR_FILENO);
    char *out = calloc(1, 4096);
    size_t n;

    assert_non_null(tmp);
    assert_non_null(out);
    fflush(stderr);
    assert_true(dup2(fileno(tmp), STDERR_FILENO) >= 0);
    *rc = fn(arg);
    fflush(stderr);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    rewind(tmp);
    n = fread(out, 1, 4095, tmp);
    out[n] = '\0';
    fclose(tmp);
    return out;
}

/* ---- lowerCamelCase ------------------------------------------------------------ */

static void test_cli_json_name_converts_snake_case(void **state)
{
    char out[64];

    (void)state;
    pbjson_name("sandbox_id", out, sizeof(out));
    assert_string_equal(out, "sandboxId");
    pbjson_name("created_at_ms", out, sizeof(out));
    assert_string_equal(out, "createdAtMs");
    pbjson_name("name", out, sizeof(out));
    assert_string_equal(out, "name");
    pbjson_name("a_b_c", out, sizeof(out));
    assert_string_equal(out, "aBC");
    pbjson_name("log_tail_lines", out, sizeof(out));
    assert_string_equal(out, "logTailLines");
    pbjson_name("field_2_x", out, sizeof(out));
    assert_string_equal(out, "field2X");
}

static void test_cli_json_name_truncates(void **state)
{
    char out[6];

    (void)state;
    pbjson_name("principal_subject", out, sizeof(out));
    assert_string_equal(out, "princ");
}

/* ---- encoder ---------------------------------------------------------------------- */

static void test_cli_json_defaults_omitted(void **state)
{
    Openshell__V1__SandboxStatus st = OPENSHELL__V1__SANDBOX_STATUS__INIT;
    Openshell__V1__Sandbox sb = OPENSHELL__V1__SANDBOX__INIT;

    (void)state;
    assert_json_eq(&st.base, "{}");
    assert_json_eq(&sb.base, "{}");
}

static void test_cli_json_scalars_enums_and_int64(void **state)
{
    Openshell__Datamodel__V1__ObjectMeta md = OPENSHELL__DATAMODEL__V1__OBJECT_META__INIT;
    Openshell__V1__SandboxStatus st = OPENSHELL__V1__SANDBOX_STATUS__INIT;

    (void)state;
    md.id = "abc";
    md.name = "demo";
    md.created_at_ms = 1700000000123;
    md.resource_version = UINT64_MAX;
    md.deletion_timestamp_ms = -5;
    assert_json_eq(&md.base, "{\"id\":\"abc\",\"name\":\"demo\",\"createdAtMs\":\"1700000000123\","
                             "\"resourceVersion\":\"18446744073709551615\","
                             "\"deletionTimestampMs\":\"-5\"}");
    st.phase = OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_READY;
    st.current_policy_version = 7;
    st.sandbox_name = "demo";
    assert_json_eq(&st.base, "{\"sandboxName\":\"demo\",\"phase\":\"SANDBOX_PHASE_READY\","
                             "\"currentPolicyVersion\":7}");
    /* A number the enum does not know stays a number. */
    st.phase = 99;
    st.current_policy_version = 0;
    st.sandbox_name = "";
    assert_json_eq(&st.base, "{\"phase\":99}");
}

static void test_cli_json_oneof_set_default_is_written(void **state)
{
    Openshell__V1__SandboxStatus st = OPENSHELL__V1__SANDBOX_STATUS__INIT;

    (void)state;
    /* proto3 optional: presence, not value, decides. */
    st._exit_code_case = OPENSHELL__V1__SANDBOX_STATUS___EXIT_CODE_EXIT_CODE;
    st.exit_code = 0;
    assert_json_eq(&st.base, "{\"exitCode\":0}");
    st.exit_code = -9;
    assert_json_eq(&st.base, "{\"exitCode\":-9}");
}

static void test_cli_json_oneof_message_payload(void **state)
{
    Openshell__Events__V1__SubscribeResponse r = OPENSHELL__EVENTS__V1__SUBSCRIBE_RESPONSE__INIT;
    Openshell__Events__V1__CaughtUp cu = OPENSHELL__EVENTS__V1__CAUGHT_UP__INIT;
    Openshell__Events__V1__LifecycleEvent ev = OPENSHELL__EVENTS__V1__LIFECYCLE_EVENT__INIT;

    (void)state;
    assert_json_eq(&r.base, "{}");
    cu.sequence = 42;
    r.payload_case = OPENSHELL__EVENTS__V1__SUBSCRIBE_RESPONSE__PAYLOAD_CAUGHT_UP;
    r.caught_up = &cu;
    assert_json_eq(&r.base, "{\"caughtUp\":{\"sequence\":\"42\"}}");
    /* An empty message in a set oneof is still written. */
    cu.sequence = 0;
    assert_json_eq(&r.base, "{\"caughtUp\":{}}");
    ev.sequence = 3;
    ev.kind = "sandbox.created";
    ev.new_phase = OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_PROVISIONING;
    r.payload_case = OPENSHELL__EVENTS__V1__SUBSCRIBE_RESPONSE__PAYLOAD_EVENT;
    r.event = &ev;
    assert_json_eq(&r.base, "{\"event\":{\"sequence\":\"3\",\"kind\":\"sandbox.created\","
                            "\"newPhase\":\"SANDBOX_PHASE_PROVISIONING\"}}");
}

static void test_cli_json_bytes_base64(void **state)
{
    Openshell__Diag__V1__StreamChunk ch = OPENSHELL__DIAG__V1__STREAM_CHUNK__INIT;
    uint8_t data[] = {'h', 'i', '!', 0xff, 0x00};

    (void)state;
    ch.seq = 1;
    ch.payload.data = data;
    ch.payload.len = 5;
    assert_json_eq(&ch.base, "{\"seq\":\"1\",\"payload\":\"aGkh/wA=\"}");
    ch.payload.len = 4;
    assert_json_eq(&ch.base, "{\"seq\":\"1\",\"payload\":\"aGkh/w==\"}");
    ch.payload.len = 3;
    assert_json_eq(&ch.base, "{\"seq\":\"1\",\"payload\":\"aGkh\"}");
    ch.payload.len = 0;
    assert_json_eq(&ch.base, "{\"seq\":\"1\"}");
}

static void test_cli_json_maps_repeated_and_nested(void **state)
{
    Openshell__V1__SandboxSpec spec = OPENSHELL__V1__SANDBOX_SPEC__INIT;
    Openshell__V1__SandboxSpec__EnvironmentEntry e1 =
        OPENSHELL__V1__SANDBOX_SPEC__ENVIRONMENT_ENTRY__INIT;
    Openshell__V1__SandboxSpec__EnvironmentEntry e2 =
        OPENSHELL__V1__SANDBOX_SPEC__ENVIRONMENT_ENTRY__INIT;
    Openshell__V1__SandboxSpec__EnvironmentEntry *env[] = {&e1, &e2};
    Openshell__V1__SandboxTemplate t = OPENSHELL__V1__SANDBOX_TEMPLATE__INIT;
    char *cmd[] = {"sleep", "10"};

    (void)state;
    e1.key = "A";
    e1.value = "1";
    e2.key = "B_C";
    e2.value = "";
    spec.n_environment = 2;
    spec.environment = env;
    spec.n_command = 2;
    spec.command = cmd;
    spec.tty = true;
    t.image = "debian:12";
    spec.template_ = &t;
    assert_json_eq(&spec.base, "{\"environment\":{\"A\":\"1\",\"B_C\":\"\"},"
                               "\"template\":{\"image\":\"debian:12\"},"
                               "\"command\":[\"sleep\",\"10\"],\"tty\":true}");
}

static void test_cli_json_repeated_messages(void **state)
{
    Openshell__V1__SandboxStatus st = OPENSHELL__V1__SANDBOX_STATUS__INIT;
    Openshell__V1__SandboxCondition c1 = OPENSHELL__V1__SANDBOX_CONDITION__INIT;
    Openshell__V1__SandboxCondition c2 = OPENSHELL__V1__SANDBOX_CONDITION__INIT;
    Openshell__V1__SandboxCondition *conds[] = {&c1, &c2};

    (void)state;
    c1.type = "Ready";
    c1.status = "False";
    c1.reason = "Starting";
    c2.type = "Other";
    st.n_conditions = 2;
    st.conditions = conds;
    assert_json_eq(&st.base, "{\"conditions\":[{\"type\":\"Ready\",\"status\":\"False\","
                             "\"reason\":\"Starting\"},{\"type\":\"Other\"}]}");
}

static void test_cli_json_struct_value_listvalue(void **state)
{
    Google__Protobuf__Struct s = GOOGLE__PROTOBUF__STRUCT__INIT;
    Google__Protobuf__Struct inner = GOOGLE__PROTOBUF__STRUCT__INIT;
    Google__Protobuf__ListValue lst = GOOGLE__PROTOBUF__LIST_VALUE__INIT;
    Google__Protobuf__Value v[7];
    Google__Protobuf__Value *items[2];
    Google__Protobuf__Struct__FieldsEntry e[5];
    Google__Protobuf__Struct__FieldsEntry *ep[5];
    Google__Protobuf__Struct__FieldsEntry *ip[1];
    Openshell__V1__SandboxTemplate t = OPENSHELL__V1__SANDBOX_TEMPLATE__INIT;

    (void)state;
    for (int i = 0; i < 7; i++)
        google__protobuf__value__init(&v[i]);
    for (int i = 0; i < 5; i++) {
        google__protobuf__struct__fields_entry__init(&e[i]);
        ep[i] = &e[i];
    }
    v[0].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
    v[0].string_value = "x";
    v[1].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
    v[1].number_value = 2.5;
    v[2].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
    v[2].bool_value = true;
    v[3].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
    v[4].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
    v[4].number_value = 3;
    items[0] = &v[0];
    items[1] = &v[4];
    lst.n_values = 2;
    lst.values = items;
    v[5].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
    v[5].list_value = &lst;
    e[4].key = "deep";
    e[4].value = &v[2];
    ip[0] = &e[4];
    inner.n_fields = 1;
    inner.fields = ip;
    v[6].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
    v[6].struct_value = &inner;
    e[0].key = "s";
    e[0].value = &v[1];
    e[1].key = "n";
    e[1].value = &v[3];
    e[2].key = "l";
    e[2].value = &v[5];
    e[3].key = "o";
    e[3].value = &v[6];
    s.n_fields = 4;
    s.fields = ep;
    assert_json_eq(&s.base, "{\"s\":2.5,\"n\":null,\"l\":[\"x\",3],\"o\":{\"deep\":true}}");
    assert_json_eq(&lst.base, "[\"x\",3]");
    assert_json_eq(&v[0].base, "\"x\"");
    /* Inside a message: driver_config is plain JSON too, never {"fields":...}. */
    t.driver_config = &inner;
    assert_json_eq(&t.base, "{\"driverConfig\":{\"deep\":true}}");
}

static void test_pbjson_dumps_compact_is_one_line(void **state)
{
    Openshell__V1__GetSandboxRequest req = OPENSHELL__V1__GET_SANDBOX_REQUEST__INIT;
    char *s;

    (void)state;
    req.name = "demo";
    req.workspace = "team";
    s = pbjson_dumps(&req.base, 0);
    assert_string_equal(s, "{\"name\":\"demo\",\"workspace\":\"team\"}");
    free(s);
    s = pbjson_dumps(&req.base, PBJSON_PRETTY);
    assert_non_null(strchr(s, '\n'));
    free(s);
}

/* ---- JSON -> Struct ---------------------------------------------------------------- */

static void test_cli_json_to_struct_roundtrip(void **state)
{
    const char *text = "{\"process\":{\"cpu\":2,\"ratio\":0.5,\"args\":[\"a\",true,null],"
                       "\"nested\":{}},\"name\":\"x\"}";
    ProtobufCMessage *m = NULL;
    Google__Protobuf__Struct *s;
    char err[256];

    (void)state;
    assert_int_equal(pbjson_struct_from_text(text, &m, err, sizeof(err)), 0);
    assert_non_null(m);
    assert_ptr_equal(m->descriptor, &google__protobuf__struct__descriptor);
    s = (Google__Protobuf__Struct *)m;
    assert_int_equal(s->n_fields, 2);
    assert_json_eq(m, text);
    /* It also survives the wire. */
    {
        size_t n = protobuf_c_message_get_packed_size(m);
        uint8_t *buf = malloc(n);
        ProtobufCMessage *back;
        assert_non_null(buf);
        protobuf_c_message_pack(m, buf);
        back = protobuf_c_message_unpack(&google__protobuf__struct__descriptor, NULL, n, buf);
        assert_non_null(back);
        assert_json_eq(back, text);
        protobuf_c_message_free_unpacked(back, NULL);
        free(buf);
    }
    protobuf_c_message_free_unpacked(m, NULL);
}

static void test_cli_json_to_struct_rejects_bad_input(void **state)
{
    ProtobufCMessage *m = (ProtobufCMessage *)1;
    char err[256];

    (void)state;
    assert_int_equal(pbjson_struct_from_text("{\"a\":", &m, err, sizeof(err)), -1);
    assert_null(m);
    assert_non_null(strstr(err, "invalid JSON"));
    assert_int_equal(pbjson_struct_from_text("[1,2]", &m, err, sizeof(err)), -1);
    assert_string_equal(err, "expected a JSON object, got an array");
    assert_int_equal(pbjson_struct_from_text("\"s\"", &m, err, sizeof(err)), -1);
    assert_string_equal(err, "expected a JSON object, got a string");
    assert_int_equal(pbjson_struct_from_text("{\"a\":1,\"a\":2}", &m, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "duplicate"));
    assert_int_equal(pbjson_struct_from_text("", &m, err, sizeof(err)), -1);
}

static void test_cli_json_to_struct_empty_object(void **state)
{
    ProtobufCMessage *m = NULL;
    char err[256];

    (void)state;
    assert_int_equal(pbjson_struct_from_text("{}", &m, err, sizeof(err)), 0);
    assert_int_equal(((Google__Protobuf__Struct *)m)->n_fields, 0);
    assert_json_eq(m, "{}");
    protobuf_c_message_free_unpacked(m, NULL);
}

/* ---- exit codes and errors ------------------------------------------------------------ */

static void test_cli_exit_for_status_maps_codes(void **state)
{
    (void)state;
    assert_int_equal(cli_exit_for_status(GRPC_STATUS_OK), 0);
    assert_int_equal(cli_exit_for_status(GRPC_STATUS_INVALID_ARGUMENT), 13);
    assert_int_equal(cli_exit_for_status(GRPC_STATUS_DEADLINE_EXCEEDED), 14);
    assert_int_equal(cli_exit_for_status(GRPC_STATUS_NOT_FOUND), 15);
    assert_int_equal(cli_exit_for_status(GRPC_STATUS_ALREADY_EXISTS), 16);
    assert_int_equal(cli_exit_for_status(GRPC_STATUS_PERMISSION_DENIED), 17);
    assert_int_equal(cli_exit_for_status(GRPC_STATUS_FAILED_PRECONDITION), 19);
    assert_int_equal(cli_exit_for_status(GRPC_STATUS_UNAVAILABLE), 24);
    assert_int_equal(cli_exit_for_status(GRPC_STATUS_UNAUTHENTICATED), 26);
    /* Out of range: UNKNOWN. */
    assert_int_equal(cli_exit_for_status(99), 12);
    assert_int_equal(cli_exit_for_status(-1), 12);
}

struct fail_case {
    const char *what;
    struct cli_status st;
};

static int run_fail_status(void *arg)
{
    struct fail_case *fc = arg;
    return cli_fail_status(fc->what, &fc->st);
}

static void test_cli_fail_status_lines(void **state)
{
    struct fail_case fc = {.what = "sandbox \"nope\"", .st = {.code = GRPC_STATUS_NOT_FOUND}};
    char *out;
    int rc;

    (void)state;
    snprintf(fc.st.message, sizeof(fc.st.message), "sandbox not found");
    out = capture_stderr(run_fail_status, &fc, &rc);
    assert_int_equal(rc, 15);
    assert_string_equal(out, "openshell: sandbox \"nope\" not found (NOT_FOUND); list sandboxes "
                             "with 'openshell sandbox list'\n");
    free(out);

    fc.what = "create sandbox \"x\"";
    fc.st.code = GRPC_STATUS_ALREADY_EXISTS;
    snprintf(fc.st.message, sizeof(fc.st.message), "sandbox already exists\nsecond line");
    out = capture_stderr(run_fail_status, &fc, &rc);
    assert_int_equal(rc, 16);
    assert_string_equal(
        out,
        "openshell: create sandbox \"x\": ALREADY_EXISTS: sandbox already exists second line\n");
    free(out);

    fc.what = "list sandboxes";
    fc.st.code = GRPC_STATUS_UNAUTHENTICATED;
    snprintf(fc.st.message, sizeof(fc.st.message), "missing credentials");
    out = capture_stderr(run_fail_status, &fc, &rc);
    assert_int_equal(rc, 26);
    assert_string_equal(out, "openshell: list sandboxes: the gateway rejected our credentials "
                             "(UNAUTHENTICATED): missing credentials; check --tls-cert/--tls-key "
                             "or --token\n");
    free(out);
}

static int run_usage(void *arg)
{
    (void)arg;
    return cli_usage("sandbox create", "unknown option '%s'", "--bogus");
}

static int run_connect(void *arg)
{
    (void)arg;
    return cli_fail_connect("https://127.0.0.1:17670", "Connection refused");
}

static void test_cli_usage_and_connect_lines(void **state)
{
    char *out;
    int rc;

    (void)state;
    out = capture_stderr(run_usage, NULL, &rc);
    assert_int_equal(rc, 2);
    assert_string_equal(out, "openshell: unknown option '--bogus'; try 'openshell sandbox create "
                             "--help'\n");
    free(out);
    out = capture_stderr(run_connect, NULL, &rc);
    assert_int_equal(rc, 24);
    assert_string_equal(out, "openshell: cannot reach the gateway at https://127.0.0.1:17670: "
                             "Connection refused; is it running? (set --gateway or "
                             "OPENSHELL_GATEWAY_ENDPOINT)\n");
    free(out);
}

static void test_cli_parse_uint_bounds(void **state)
{
    unsigned long v = 0;

    (void)state;
    assert_int_equal(cli_parse_uint("42", 100, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(cli_parse_uint("0", 100, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(cli_parse_uint("101", 100, &v), -1);
    assert_int_equal(cli_parse_uint("-1", 100, &v), -1);
    assert_int_equal(cli_parse_uint("+1", 100, &v), -1);
    assert_int_equal(cli_parse_uint("1x", 100, &v), -1);
    assert_int_equal(cli_parse_uint("", 100, &v), -1);
    assert_int_equal(cli_parse_uint("99999999999999999999999", ULONG_MAX, &v), -1);
}

/* ---- tables and records ---------------------------------------------------------- */

static void test_cli_table_aligns_columns(void **state)
{
    static const char *const hdr[] = {"NAME", "ID", "PHASE"};
    static const char *const r1[] = {"demo", "1234567890", "READY"};
    static const char *const r2[] = {"a-much-longer-name", "1", NULL};
    struct cli_table *t = cli_table_new(3, hdr);
    char *s;

    (void)state;
    cli_table_add(t, r1);
    cli_table_add(t, r2);
    s = cli_table_render(t);
    assert_string_equal(s, "NAME                ID          PHASE\n"
                           "demo                1234567890  READY\n"
                           "a-much-longer-name  1           -\n");
    free(s);
    cli_table_free(t);
}

static void test_cli_table_counts_utf8_code_points(void **state)
{
    static const char *const hdr[] = {"N", "X"};
    static const char *const r1[] = {"\xc3\xa9t\xc3\xa9", "1"}; /* "été": 3 columns */
    static const char *const r2[] = {"abcd", "2"};
    struct cli_table *t = cli_table_new(2, hdr);
    char *s;

    (void)state;
    cli_table_add(t, r1);
    cli_table_add(t, r2);
    s = cli_table_render(t);
    assert_string_equal(s, "N     X\n"
                           "\xc3\xa9t\xc3\xa9   1\n"
                           "abcd  2\n");
    free(s);
    cli_table_free(t);
}

static void test_cli_table_header_only(void **state)
{
    static const char *const hdr[] = {"NAME", "PHASE"};
    struct cli_table *t = cli_table_new(2, hdr);
    char *s = cli_table_render(t);

    (void)state;
    assert_string_equal(s, "NAME  PHASE\n");
    free(s);
    cli_table_free(t);
}

static void test_cli_record_aligns_values(void **state)
{
    struct cli_record *r = cli_record_new();
    char *s;

    (void)state;
    cli_record_add(r, "name", "demo");
    cli_record_add(r, "workspace", "");
    cli_record_addf(r, "exit code", "%d", 3);
    cli_record_add(r, "id", NULL);
    s = cli_record_render(r);
    assert_string_equal(s, "name:      demo\n"
                           "workspace: -\n"
                           "exit code: 3\n"
                           "id:        -\n");
    free(s);
    cli_record_free(r);
}

static void test_cli_time_and_phase_names(void **state)
{
    char ts[32];

    (void)state;
    cli_time_format(1700000000123, ts);
    assert_string_equal(ts, "2023-11-14T22:13:20Z");
    cli_time_format(0, ts);
    assert_string_equal(ts, "-");
    assert_string_equal(cli_phase_name(OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_READY), "READY");
    assert_string_equal(cli_phase_name(OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_PROVISIONING),
                        "PROVISIONING");
    assert_string_equal(cli_phase_name(0), "UNSPECIFIED");
    assert_string_equal(cli_phase_name(1234), "UNKNOWN");
}

/* ---- endpoint parsing ------------------------------------------------------------- */

static void test_grpc_endpoint_parse_valid(void **state)
{
    struct grpc_endpoint ep;
    char err[256];

    (void)state;
    assert_int_equal(grpc_endpoint_parse("https://127.0.0.1:17670", &ep, err, sizeof(err)), 0);
    assert_true(ep.tls);
    assert_false(ep.is_unix);
    assert_string_equal(ep.host, "127.0.0.1");
    assert_int_equal(ep.port, 17670);
    assert_string_equal(ep.authority, "127.0.0.1:17670");

    assert_int_equal(grpc_endpoint_parse("http://gw.example.com/", &ep, err, sizeof(err)), 0);
    assert_false(ep.tls);
    assert_string_equal(ep.host, "gw.example.com");
    assert_int_equal(ep.port, 80);

    assert_int_equal(grpc_endpoint_parse("https://localhost", &ep, err, sizeof(err)), 0);
    assert_int_equal(ep.port, 443);
    assert_string_equal(ep.authority, "localhost:443");

    assert_int_equal(grpc_endpoint_parse("https://[::1]:8443", &ep, err, sizeof(err)), 0);
    assert_string_equal(ep.host, "::1");
    assert_int_equal(ep.port, 8443);
    assert_string_equal(ep.authority, "[::1]:8443");

    assert_int_equal(grpc_endpoint_parse("unix:/run/openshell.sock", &ep, err, sizeof(err)), 0);
    assert_true(ep.is_unix);
    assert_false(ep.tls);
    assert_string_equal(ep.path, "/run/openshell.sock");
    assert_string_equal(ep.authority, "localhost");

    assert_int_equal(grpc_endpoint_parse("unix:///tmp/gw.sock", &ep, err, sizeof(err)), 0);
    assert_string_equal(ep.path, "/tmp/gw.sock");

    assert_int_equal(grpc_endpoint_parse("http://gw_1.Example-2:080", &ep, err, sizeof(err)), 0);
    assert_string_equal(ep.host, "gw_1.Example-2");
    assert_int_equal(ep.port, 80);
    assert_string_equal(ep.authority, "gw_1.Example-2:80");

    assert_int_equal(grpc_endpoint_parse("http://[fe80::1]", &ep, err, sizeof(err)), 0);
    assert_string_equal(ep.host, "fe80::1");
    assert_int_equal(ep.port, 80);
    assert_string_equal(ep.authority, "[fe80::1]:80");

    assert_int_equal(grpc_endpoint_parse("https://h:65535/", &ep, err, sizeof(err)), 0);
    assert_int_equal(ep.port, 65535);
}

static void expect_endpoint_error(const char *url, const char *needle)
{
    struct grpc_endpoint ep;
    char err[256] = "";

    if (grpc_endpoint_parse(url, &ep, err, sizeof(err)) != -1)
        fail_msg("'%s' was accepted", url);
    if (strstr(err, needle) == NULL)
        fail_msg("'%s': error '%s' does not mention '%s'", url, err, needle);
}

static void test_grpc_endpoint_parse_errors(void **state)
{
    char longpath[200];
    char longhost[8 + 255 + 7]; /* "https://" + 255 x 'h' + ":17670" */

    (void)state;
    expect_endpoint_error("", "empty");
    expect_endpoint_error("ftp://x:1", "must start with");
    expect_endpoint_error("127.0.0.1:17670", "must start with");
    expect_endpoint_error("https://", "host is empty");
    expect_endpoint_error("https://:80", "host is empty");
    expect_endpoint_error("https://h:0", "port");
    expect_endpoint_error("https://h:65536", "port");
    expect_endpoint_error("https://h:", "port");
    expect_endpoint_error("https://h:12x", "port");
    expect_endpoint_error("https://h:-1", "port");
    expect_endpoint_error("https://h:+80", "port");
    expect_endpoint_error("https://h: 80", "port");
    expect_endpoint_error("https://h:99999999999999999999", "port");
    expect_endpoint_error("https://::1:8443", "needs brackets");
    expect_endpoint_error("http://fe80::1", "needs brackets");
    expect_endpoint_error("https://h:80:90", "needs brackets");
    expect_endpoint_error("https://[gw.example]:80", "not an IPv6 address");
    expect_endpoint_error("https://[]:80", "host is empty");
    expect_endpoint_error("https://user@h:80", "characters other than");
    expect_endpoint_error("https://h%20x", "characters other than");
    expect_endpoint_error("https://h:80/api", "no path");
    expect_endpoint_error("https://h:80?x=1", "no path");
    expect_endpoint_error("https://[::1:80", "']'");
    expect_endpoint_error("https://[::1]x", "after ']'");
    expect_endpoint_error("unix:relative.sock", "absolute");
    expect_endpoint_error("unix:", "absolute");
    expect_endpoint_error("unix://", "absolute");
    expect_endpoint_error("unix://relative.sock", "absolute");
    memset(longpath, 'a', sizeof(longpath));
    memcpy(longpath, "unix:/", 6);
    longpath[sizeof(longpath) - 1] = '\0';
    expect_endpoint_error(longpath, "longer than");
    /* A 255-byte name fits the host but not "host:port" in :authority. */
    memset(longhost, 'h', sizeof(longhost));
    memcpy(longhost, "https://", 8);
    memcpy(longhost + sizeof(longhost) - 7, ":17670", 7);
    expect_endpoint_error(longhost, "too long");
    memset(longhost, 'h', sizeof(longhost));
    memcpy(longhost, "http://", 7);
    longhost[sizeof(longhost) - 1] = '\0';
    expect_endpoint_error(longhost, "too long");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_json_name_converts_snake_case),
        cmocka_unit_test(test_cli_json_name_truncates),
        cmocka_unit_test(test_cli_json_defaults_omitted),
        cmocka_unit_test(test_cli_json_scalars_enums_and_int64),
        cmocka_unit_test(test_cli_json_oneof_set_default_is_written),
        cmocka_unit_test(test_cli_json_oneof_message_payload),
        cmocka_unit_test(test_cli_json_bytes_base64),
        cmocka_unit_test(test_cli_json_maps_repeated_and_nested),
        cmocka_unit_test(test_cli_json_repeated_messages),
        cmocka_unit_test(test_cli_json_struct_value_listvalue),
        cmocka_unit_test(test_pbjson_dumps_compact_is_one_line),
        cmocka_unit_test(test_cli_json_to_struct_roundtrip),
        cmocka_unit_test(test_cli_json_to_struct_rejects_bad_input),
        cmocka_unit_test(test_cli_json_to_struct_empty_object),
        cmocka_unit_test(test_cli_exit_for_status_maps_codes),
        cmocka_unit_test(test_cli_fail_status_lines),
        cmocka_unit_test(test_cli_usage_and_connect_lines),
        cmocka_unit_test(test_cli_parse_uint_bounds),
        cmocka_unit_test(test_cli_table_aligns_columns),
        cmocka_unit_test(test_cli_table_counts_utf8_code_points),
        cmocka_unit_test(test_cli_table_header_only),
        cmocka_unit_test(test_cli_record_aligns_values),
        cmocka_unit_test(test_cli_time_and_phase_names),
        cmocka_unit_test(test_grpc_endpoint_parse_valid),
        cmocka_unit_test(test_grpc_endpoint_parse_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
