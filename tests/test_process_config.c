/* Unit tests for the process driver's pure parsing and validation
 * (src/drivers/process/process_config.c): Kubernetes quantities, the
 * driver_config Struct and whole DriverSandbox checks. Leaks are caught by
 * running this binary under AddressSanitizer. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "drivers/process/process.h"

#define ERRLEN     512
#define MAX_FIELDS 8
#define VALID_ID   "0b7c8a1e-2f44-4c1a-9d3e-5a6b7c8d9e0f"

/* ---- building Structs on the stack ---------------------------------------------- */

struct cfg {
    Google__Protobuf__Struct st;
    Google__Protobuf__Struct__FieldsEntry entries[MAX_FIELDS];
    Google__Protobuf__Struct__FieldsEntry *ptrs[MAX_FIELDS];
    Google__Protobuf__Value values[MAX_FIELDS];
    Google__Protobuf__Struct nested;
};

static void cfg_init(struct cfg *c)
{
    memset(c, 0, sizeof(*c));
    google__protobuf__struct__init(&c->st);
    google__protobuf__struct__init(&c->nested);
    c->st.fields = c->ptrs;
}

static Google__Protobuf__Value *cfg_add(struct cfg *c, const char *key)
{
    size_t i = c->st.n_fields++;

    assert_true(i < MAX_FIELDS);
    google__protobuf__struct__fields_entry__init(&c->entries[i]);
    google__protobuf__value__init(&c->values[i]);
    c->entries[i].key = (char *)key;
    c->entries[i].value = &c->values[i];
    c->ptrs[i] = &c->entries[i];
    return &c->values[i];
}

static void cfg_str(struct cfg *c, const char *key, const char *v)
{
    Google__Protobuf__Value *val = cfg_add(c, key);
    val->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
    val->string_value = (char *)v;
}

static void cfg_num(struct cfg *c, const char *key, double v)
{
    Google__Protobuf__Value *val = cfg_add(c, key);
    val->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
    val->number_value = v;
}

static void cfg_bool(struct cfg *c, const char *key, bool v)
{
    Google__Protobuf__Value *val = cfg_add(c, key);
    val->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
    val->bool_value = v;
}

static void cfg_null(struct cfg *c, const char *key)
{
    Google__Protobuf__Value *val = cfg_add(c, key);
    val->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
}

static void cfg_object(struct cfg *c, const char *key)
{
    Google__Protobuf__Value *val = cfg_add(c, key);
    val->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
    val->struct_value = &c->nested;
}

/* Parses |c| and expects an error starting with |prefix|. */
static void expect_cfg_error(struct cfg *c, bool allow_host, const char *prefix)
{
    struct process_options o;
    char err[ERRLEN] = "";

    assert_int_equal(process_config_parse(&c->st, allow_host, &o, err, sizeof(err)),
                     PROCESS_ERR_INVALID);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fail_msg("error \"%s\" does not start with \"%s\"", err, prefix);
}

/* ---- quantities ---------------------------------------------------------------------- */

static uint64_t q(const char *s, bool milli)
{
    uint64_t v = 12345;

    if (process_quantity_parse(s, milli, &v) != 0)
        fail_msg("quantity \"%s\" rejected", s);
    return v;
}

static void test_process_quantity_parse_cpu(void **state)
{
    assert_int_equal(q("500m", true), 500);
    assert_int_equal(q("1", true), 1000);
    assert_int_equal(q("2", true), 2000);
    assert_int_equal(q("1.5", true), 1500);
    assert_int_equal(q("0.25", true), 250);
    assert_int_equal(q(".5", true), 500);
    assert_int_equal(q("1.", true), 1000);
    assert_int_equal(q("+2", true), 2000);
    assert_int_equal(q("0", true), 0);
    assert_int_equal(q("100u", true), 1); /* 0.1 millicores rounds up */
    assert_int_equal(q("1e3", true), 1000000);
    assert_int_equal(q("1k", true), 1000000);
}

static void test_process_quantity_parse_memory(void **state)
{
    assert_int_equal(q("256Mi", false), 268435456ULL);
    assert_int_equal(q("1Gi", false), 1073741824ULL);
    assert_int_equal(q("1G", false), 1000000000ULL);
    assert_int_equal(q("1Ki", false), 1024);
    assert_int_equal(q("1k", false), 1000);
    assert_int_equal(q("1M", false), 1000000);
    assert_int_equal(q("1.5Gi", false), 1610612736ULL);
    assert_int_equal(q("1Ti", false), 1099511627776ULL);
    assert_int_equal(q("123", false), 123);
    assert_int_equal(q("500m", false), 1); /* half a byte rounds up */
    assert_int_equal(q("1E", false), 1000000000000000000ULL);
    assert_int_equal(q("2e2", false), 200);
    assert_int_equal(q("1E2", false), 100);
    assert_int_equal(q("7Ei", false), 7ULL << 60);
}

static void test_process_quantity_parse_rejects(void **state)
{
    static const char *const bad[] = {
        "",    "abc", "Mi",  "1.2.3", "-1",  "1 Gi", " 1", "1Gi ", "1Qi",  "1mi",   "1gi",
        "1Gb", "1e",  "1e+", "1ee3",  "..5", ".",    "+",  "1,5",  "0x10", "1e999",
    };
    uint64_t v;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (process_quantity_parse(bad[i], false, &v) == 0)
            fail_msg("quantity \"%s\" accepted as %llu", bad[i], (unsigned long long)v);
    }
    assert_int_equal(process_quantity_parse(NULL, false, &v), -1);
}

static void test_process_quantity_parse_overflow(void **state)
{
    uint64_t v;

    assert_int_equal(process_quantity_parse("16Ei", false, &v), -1);
    assert_int_equal(process_quantity_parse("99999999999999999999", false, &v), -1);
    assert_int_equal(process_quantity_parse("99999999999999999999Gi", false, &v), -1);
    assert_int_equal(process_quantity_parse("1e30", false, &v), -1);
    assert_int_equal(process_quantity_parse("1234567890123456789012345678901", false, &v), -1);
    /* Fits as bytes but not as millicores. */
    assert_int_equal(process_quantity_parse("18446744073709551615", false, &v), 0);
    assert_int_equal(v, UINT64_MAX);
    assert_int_equal(process_quantity_parse("18446744073709551615", true, &v), -1);
    assert_int_equal(process_quantity_parse("18446744073709551616", false, &v), -1);
    /* Too long to be a quantity at all. */
    assert_int_equal(process_quantity_parse("00000000000000000000000000000000000000000000000"
                                            "00000000000000000001",
                                            false, &v),
                     -1);
}

/* ---- names --------------------------------------------------------------------------- */

static void test_gw_uuid_valid(void **state)
{
    assert_true(gw_uuid_valid(VALID_ID));
    assert_true(gw_uuid_valid("0B7C8A1E-2F44-4C1A-9D3E-5A6B7C8D9E0F"));
    assert_false(gw_uuid_valid(NULL));
    assert_false(gw_uuid_valid(""));
    assert_false(gw_uuid_valid("0b7c8a1e-2f44-4c1a-9d3e-5a6b7c8d9e0"));
    assert_false(gw_uuid_valid("0b7c8a1e-2f44-4c1a-9d3e-5a6b7c8d9e0f0"));
    assert_false(gw_uuid_valid("0b7c8a1e2f44-4c1a-9d3e-5a6b7c8d9e0f-"));
    assert_false(gw_uuid_valid("0b7c8a1g-2f44-4c1a-9d3e-5a6b7c8d9e0f"));
    assert_false(gw_uuid_valid("../../../../etc/passwd/aaaaaaaaaaaaaa"));
    assert_false(gw_uuid_valid("0b7c8a1e/2f44-4c1a-9d3e-5a6b7c8d9e0f"));
}

static void test_process_dns_label_valid(void **state)
{
    char long63[64], long64[65];

    memset(long63, 'a', 63);
    long63[63] = '\0';
    memset(long64, 'a', 64);
    long64[64] = '\0';
    assert_true(process_dns_label_valid("a"));
    assert_true(process_dns_label_valid("my-box-1"));
    assert_true(process_dns_label_valid(long63));
    assert_false(process_dns_label_valid(long64));
    assert_false(process_dns_label_valid(""));
    assert_false(process_dns_label_valid("-a"));
    assert_false(process_dns_label_valid("a-"));
    assert_false(process_dns_label_valid("A"));
    assert_false(process_dns_label_valid("a.b"));
    assert_false(process_dns_label_valid("a_b"));
}

static void test_process_hostname_from_name(void **state)
{
    char out[64];

    process_hostname_from_name("my-box", out);
    assert_string_equal(out, "my-box");
    process_hostname_from_name("My_Box.1", out);
    assert_string_equal(out, "my-box-1");
    process_hostname_from_name("--x--", out);
    assert_string_equal(out, "x");
    process_hostname_from_name("!!!", out);
    assert_string_equal(out, "sandbox");
    process_hostname_from_name("", out);
    assert_string_equal(out, "sandbox");
}

/* ---- driver_config ------------------------------------------------------------------- */

static void test_process_config_parse_absent_is_default(void **state)
{
    struct process_options o, def;
    struct cfg c;
    char err[ERRLEN];

    process_options_default(&def);
    assert_int_equal(process_config_parse(NULL, false, &o, err, sizeof(err)), 0);
    assert_memory_equal(&o, &def, sizeof(o));
    cfg_init(&c);
    assert_int_equal(process_config_parse(&c.st, false, &o, err, sizeof(err)), 0);
    assert_memory_equal(&o, &def, sizeof(o));
    assert_int_equal(o.network, PROCESS_NET_ISOLATED);
    assert_string_equal(o.hostname, "");
    assert_int_equal(o.tmp_size, PROCESS_TMP_SIZE_DEFAULT);
    assert_int_equal(o.pids_limit, PROCESS_PIDS_DEFAULT);
    assert_int_equal(o.stop_grace_seconds, PROCESS_STOP_GRACE_DEFAULT);
}

static void test_process_config_parse_valid(void **state)
{
    struct process_options o;
    struct cfg c;
    char err[ERRLEN];

    cfg_init(&c);
    cfg_str(&c, "network", "host");
    cfg_str(&c, "hostname", "box-1");
    cfg_str(&c, "tmp_size", "128Mi");
    cfg_num(&c, "pids_limit", 100);
    cfg_num(&c, "stop_grace_seconds", 0);
    assert_int_equal(process_config_parse(&c.st, true, &o, err, sizeof(err)), 0);
    assert_int_equal(o.network, PROCESS_NET_HOST);
    assert_string_equal(o.hostname, "box-1");
    assert_int_equal(o.tmp_size, 128ULL << 20);
    assert_int_equal(o.pids_limit, 100);
    assert_int_equal(o.stop_grace_seconds, 0);

    cfg_init(&c);
    cfg_str(&c, "network", "isolated");
    cfg_num(&c, "pids_limit", 32768);
    cfg_num(&c, "stop_grace_seconds", 300);
    cfg_str(&c, "tmp_size", "16Gi");
    assert_int_equal(process_config_parse(&c.st, false, &o, err, sizeof(err)), 0);
    assert_int_equal(o.network, PROCESS_NET_ISOLATED);
    assert_int_equal(o.pids_limit, 32768);
    assert_int_equal(o.stop_grace_seconds, 300);
    assert_int_equal(o.tmp_size, 16ULL << 30);
}

static void test_process_config_parse_last_duplicate_wins(void **state)
{
    struct process_options o;
    struct cfg c;
    char err[ERRLEN];

    cfg_init(&c);
    cfg_num(&c, "pids_limit", 10);
    cfg_num(&c, "pids_limit", 20);
    assert_int_equal(process_config_parse(&c.st, false, &o, err, sizeof(err)), 0);
    assert_int_equal(o.pids_limit, 20);
}

static void test_process_config_parse_unknown_keys(void **state)
{
    static const char *const keys[] = {"Network", "image",    "memory",    "privileged",
                                       "",        "net work", "hostname.x"};
    struct cfg c;
    char want[128];

    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        cfg_init(&c);
        cfg_str(&c, keys[i], "x");
        snprintf(want, sizeof(want), "driver_config.%s: unknown key", keys[i]);
        expect_cfg_error(&c, true, want);
    }
    /* An unknown key after valid ones is still found. */
    cfg_init(&c);
    cfg_str(&c, "network", "isolated");
    cfg_object(&c, "extra");
    expect_cfg_error(&c, false, "driver_config.extra: unknown key");
}

static void test_process_config_parse_network(void **state)
{
    struct cfg c;

    cfg_init(&c);
    cfg_str(&c, "network", "bridge");
    expect_cfg_error(&c, true, "driver_config.network: expected \"isolated\" or \"host\"");
    cfg_init(&c);
    cfg_str(&c, "network", "HOST");
    expect_cfg_error(&c, true, "driver_config.network: expected \"isolated\" or \"host\"");
    cfg_init(&c);
    cfg_num(&c, "network", 1);
    expect_cfg_error(&c, true,
                     "driver_config.network: expected \"isolated\" or \"host\", got a number");
    cfg_init(&c);
    cfg_str(&c, "network", "host");
    expect_cfg_error(&c, false, "driver_config.network: \"host\" is not allowed");
}

static void test_process_config_parse_hostname(void **state)
{
    struct cfg c;

    cfg_init(&c);
    cfg_str(&c, "hostname", "Bad_Host");
    expect_cfg_error(&c, false, "driver_config.hostname: must be a DNS label");
    cfg_init(&c);
    cfg_str(&c, "hostname", "");
    expect_cfg_error(&c, false, "driver_config.hostname: must be a DNS label");
    cfg_init(&c);
    cfg_str(&c, "hostname",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"); /* 64 */
    expect_cfg_error(&c, false, "driver_config.hostname: must be a DNS label");
    cfg_init(&c);
    cfg_bool(&c, "hostname", true);
    expect_cfg_error(&c, false, "driver_config.hostname: expected a string, got a boolean");
    cfg_init(&c);
    cfg_object(&c, "hostname");
    expect_cfg_error(&c, false, "driver_config.hostname: expected a string, got an object");
}

static void test_process_config_parse_tmp_size(void **state)
{
    struct cfg c;

    cfg_init(&c);
    cfg_str(&c, "tmp_size", "lots");
    expect_cfg_error(&c, false, "driver_config.tmp_size: invalid quantity \"lots\"");
    cfg_init(&c);
    cfg_str(&c, "tmp_size", "512Ki");
    expect_cfg_error(&c, false, "driver_config.tmp_size: must be between 1Mi and 16Gi");
    cfg_init(&c);
    cfg_str(&c, "tmp_size", "17Gi");
    expect_cfg_error(&c, false, "driver_config.tmp_size: must be between 1Mi and 16Gi");
    cfg_init(&c);
    cfg_num(&c, "tmp_size", 67108864);
    expect_cfg_error(&c, false, "driver_config.tmp_size: expected a quantity string");
}

static void test_process_config_parse_integers(void **state)
{
    struct cfg c;

    cfg_init(&c);
    cfg_num(&c, "pids_limit", 0);
    expect_cfg_error(&c, false, "driver_config.pids_limit: must be between 1 and 32768, got 0");
    cfg_init(&c);
    cfg_num(&c, "pids_limit", 32769);
    expect_cfg_error(&c, false, "driver_config.pids_limit: must be between 1 and 32768");
    cfg_init(&c);
    cfg_num(&c, "pids_limit", 1.5);
    expect_cfg_error(&c, false, "driver_config.pids_limit: expected an integer, got 1.5");
    cfg_init(&c);
    cfg_str(&c, "pids_limit", "100");
    expect_cfg_error(&c, false, "driver_config.pids_limit: expected an integer, got a string");
    cfg_init(&c);
    cfg_null(&c, "pids_limit");
    expect_cfg_error(&c, false, "driver_config.pids_limit: expected an integer, got null");
    cfg_init(&c);
    cfg_num(&c, "stop_grace_seconds", -1);
    expect_cfg_error(&c, false, "driver_config.stop_grace_seconds: must be between 0 and 300");
    cfg_init(&c);
    cfg_num(&c, "stop_grace_seconds", 301);
    expect_cfg_error(&c, false, "driver_config.stop_grace_seconds: must be between 0 and 300");
    cfg_init(&c);
    cfg_num(&c, "stop_grace_seconds", INFINITY);
    expect_cfg_error(&c, false, "driver_config.stop_grace_seconds: expected an integer");
    cfg_init(&c);
    cfg_add(&c, "stop_grace_seconds"); /* a Value with no kind set */
    expect_cfg_error(&c, false,
                     "driver_config.stop_grace_seconds: expected an integer, got no value");
}

static void test_process_config_parse_error_keeps_output(void **state)
{
    struct process_options o;
    struct cfg c;
    char err[ERRLEN];

    memset(&o, 0x5a, sizeof(o));
    cfg_init(&c);
    cfg_num(&c, "pids_limit", 10);
    cfg_str(&c, "bogus", "x");
    assert_int_equal(process_config_parse(&c.st, false, &o, err, sizeof(err)), PROCESS_ERR_INVALID);
    assert_int_equal(o.pids_limit, 0x5a5a5a5a); /* untouched on failure */
}

static void test_process_config_parse_small_error_buffer(void **state)
{
    struct process_options o;
    struct cfg c;
    char err[8];

    cfg_init(&c);
    cfg_str(&c, "a-rather-long-unknown-key-name", "x");
    assert_int_equal(process_config_parse(&c.st, false, &o, err, sizeof(err)), PROCESS_ERR_INVALID);
    assert_int_equal(strlen(err), sizeof(err) - 1);
}

/* ---- whole sandbox --------------------------------------------------------------------- */

struct sbx {
    Openshell__Compute__V1__DriverSandbox sb;
    Openshell__Compute__V1__DriverSandboxSpec spec;
    Openshell__Compute__V1__DriverSandboxTemplate tpl;
    Openshell__Compute__V1__DriverResourceRequirements res;
    Openshell__Compute__V1__ResourceRequirements rr;
    Openshell__Compute__V1__GpuResourceRequirements gpu;
    Openshell__Compute__V1__DriverSandboxSpec__EnvironmentEntry env[2], *envp[2];
    Openshell__Compute__V1__DriverSandboxTemplate__EnvironmentEntry tenv[1], *tenvp[1];
    char *cmd[3];
    struct cfg cfg;
};

static void sbx_init(struct sbx *x)
{
    memset(x, 0, sizeof(*x));
    openshell__compute__v1__driver_sandbox__init(&x->sb);
    openshell__compute__v1__driver_sandbox_spec__init(&x->spec);
    openshell__compute__v1__driver_sandbox_template__init(&x->tpl);
    openshell__compute__v1__driver_resource_requirements__init(&x->res);
    openshell__compute__v1__resource_requirements__init(&x->rr);
    openshell__compute__v1__gpu_resource_requirements__init(&x->gpu);
    cfg_init(&x->cfg);
    x->sb.id = (char *)VALID_ID;
    x->sb.name = (char *)"box";
    x->sb.spec = &x->spec;
    x->spec.template_ = &x->tpl;
    x->tpl.image = (char *)"host";
    x->tpl.driver_config = &x->cfg.st;
    x->cmd[0] = (char *)"/bin/sh";
    x->cmd[1] = (char *)"-c";
    x->cmd[2] = (char *)"echo hi";
    x->spec.command = x->cmd;
    x->spec.n_command = 3;
    for (int i = 0; i < 2; i++) {
        openshell__compute__v1__driver_sandbox_spec__environment_entry__init(&x->env[i]);
        x->envp[i] = &x->env[i];
    }
    openshell__compute__v1__driver_sandbox_template__environment_entry__init(&x->tenv[0]);
    x->tenvp[0] = &x->tenv[0];
}

static int check(struct sbx *x, struct process_options *o, struct process_limits *l, char *err)
{
    return process_sandbox_check(&x->sb, false, o, l, err, ERRLEN);
}

static void expect_sb_error(struct sbx *x, int code, const char *prefix)
{
    struct process_options o;
    struct process_limits l;
    char err[ERRLEN] = "";

    assert_int_equal(check(x, &o, &l, err), code);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fail_msg("error \"%s\" does not start with \"%s\"", err, prefix);
}

static void test_process_sandbox_check_valid(void **state)
{
    struct process_options o;
    struct process_limits l;
    struct sbx x;
    char err[ERRLEN];

    sbx_init(&x);
    x.env[0].key = (char *)"FOO";
    x.env[0].value = (char *)"bar";
    x.spec.environment = x.envp;
    x.spec.n_environment = 1;
    x.res.cpu_request = (char *)"250m";
    x.res.cpu_limit = (char *)"1.5";
    x.res.memory_request = (char *)"128Mi";
    x.res.memory_limit = (char *)"1Gi";
    x.tpl.resources = &x.res;
    cfg_num(&x.cfg, "pids_limit", 64);
    assert_int_equal(check(&x, &o, &l, err), 0);
    assert_int_equal(l.cpu_request_milli, 250);
    assert_int_equal(l.cpu_limit_milli, 1500);
    assert_int_equal(l.memory_request, 128ULL << 20);
    assert_int_equal(l.memory_limit, 1ULL << 30);
    assert_int_equal(o.pids_limit, 64);
}

static void test_process_sandbox_check_minimal(void **state)
{
    struct process_options o;
    struct process_limits l;
    struct sbx x;
    char err[ERRLEN];

    /* No spec, or a spec without template and command: defaults. */
    sbx_init(&x);
    x.sb.spec = NULL;
    assert_int_equal(check(&x, &o, &l, err), 0);
    assert_int_equal(l.memory_limit, 0);
    assert_int_equal(o.pids_limit, PROCESS_PIDS_DEFAULT);
    sbx_init(&x);
    x.spec.template_ = NULL;
    x.spec.n_command = 0;
    assert_int_equal(check(&x, &o, &l, err), 0);
    sbx_init(&x);
    x.tpl.image = (char *)"";
    x.tpl.driver_config = NULL;
    assert_int_equal(check(&x, &o, &l, err), 0);
}

static void test_process_sandbox_check_identity(void **state)
{
    char longname[300];
    struct sbx x;

    sbx_init(&x);
    expect_sb_error(&x, 0, "");
    x.sb.id = (char *)"";
    expect_sb_error(&x, PROCESS_ERR_INVALID, "id: required");
    x.sb.id = (char *)"../x";
    expect_sb_error(&x, PROCESS_ERR_INVALID, "id: must be a UUID");
    sbx_init(&x);
    x.sb.name = (char *)"";
    expect_sb_error(&x, PROCESS_ERR_INVALID, "name: required");
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    x.sb.name = longname;
    expect_sb_error(&x, PROCESS_ERR_INVALID, "name: at most 253");
    x.sb.name = (char *)"a\nb";
    expect_sb_error(&x, PROCESS_ERR_INVALID, "name: at most 253");
    assert_int_equal(process_sandbox_check(NULL, false, NULL, NULL, longname, sizeof(longname)),
                     PROCESS_ERR_INVALID);
}

static void test_process_sandbox_check_image_and_command(void **state)
{
    struct sbx x;

    sbx_init(&x);
    x.tpl.image = (char *)"ubuntu:24.04";
    expect_sb_error(&x, PROCESS_ERR_INVALID, "template.image: ");
    /* Caller text quoted in a message never breaks it into lines (found
     * by fuzz_sandbox_spec). */
    x.tpl.image = (char *)"a\nb\r\x1b";
    {
        struct process_options o;
        struct process_limits l;
        char err[ERRLEN] = "";
        assert_int_equal(check(&x, &o, &l, err), PROCESS_ERR_INVALID);
        assert_non_null(strstr(err, "got \"a?b??\""));
    }
    sbx_init(&x);
    x.env[0].key = (char *)"A\nB";
    x.spec.environment = x.envp;
    x.spec.n_environment = 1;
    expect_sb_error(&x, PROCESS_ERR_INVALID, "environment[A?B]: invalid variable name");
    sbx_init(&x);
    x.cmd[0] = (char *)"";
    expect_sb_error(&x, PROCESS_ERR_INVALID, "command[0]: ");
    sbx_init(&x);
    x.spec.log_level = (char *)"info\x1b";
    expect_sb_error(&x, PROCESS_ERR_INVALID, "log_level: ");
}

static void test_process_sandbox_check_environment(void **state)
{
    struct sbx x;

    sbx_init(&x);
    x.env[0].key = (char *)"OK";
    x.env[1].key = (char *)"A=B";
    x.spec.environment = x.envp;
    x.spec.n_environment = 2;
    expect_sb_error(&x, PROCESS_ERR_INVALID, "environment[A=B]: invalid variable name");
    x.env[1].key = (char *)"";
    expect_sb_error(&x, PROCESS_ERR_INVALID, "environment: a variable name must not be empty");
    sbx_init(&x);
    x.tenv[0].key = (char *)"X=Y";
    x.tpl.environment = x.tenvp;
    x.tpl.n_environment = 1;
    expect_sb_error(&x, PROCESS_ERR_INVALID, "template.environment[X=Y]: invalid variable name");
}

static void test_process_sandbox_check_resources(void **state)
{
    struct sbx x;

    sbx_init(&x);
    x.tpl.resources = &x.res;
    x.res.cpu_limit = (char *)"lots";
    expect_sb_error(&x, PROCESS_ERR_INVALID, "template.resources.cpu_limit: invalid quantity");
    x.res.cpu_limit = (char *)"0";
    expect_sb_error(&x, PROCESS_ERR_INVALID,
                    "template.resources.cpu_limit: must be greater than 0");
    x.res.cpu_limit = (char *)"1";
    x.res.cpu_request = (char *)"2";
    expect_sb_error(&x, PROCESS_ERR_INVALID, "template.resources.cpu_request: must not exceed");
    sbx_init(&x);
    x.tpl.resources = &x.res;
    x.res.memory_limit = (char *)"1Mi";
    expect_sb_error(&x, PROCESS_ERR_INVALID,
                    "template.resources.memory_limit: must be at least 4Mi");
    x.res.memory_limit = (char *)"64Mi";
    x.res.memory_request = (char *)"1Gi";
    expect_sb_error(&x, PROCESS_ERR_INVALID, "template.resources.memory_request: must not exceed");
    x.res.memory_request = (char *)"1Zi";
    expect_sb_error(&x, PROCESS_ERR_INVALID, "template.resources.memory_request: invalid quantity");
}

static void test_process_sandbox_check_gpu_unsupported(void **state)
{
    struct sbx x;

    sbx_init(&x);
    x.spec.resource_requirements = &x.rr;
    x.rr.gpu = &x.gpu;
    expect_sb_error(&x, PROCESS_ERR_UNSUPPORTED, "resource_requirements.gpu: ");
    x.rr.gpu = NULL; /* present but empty: nothing requested */
    expect_sb_error(&x, 0, "");
}

static void test_process_sandbox_check_driver_config_path(void **state)
{
    struct sbx x;

    sbx_init(&x);
    cfg_str(&x.cfg, "network", "bridge");
    expect_sb_error(&x, PROCESS_ERR_INVALID,
                    "driver_config.network: expected \"isolated\" or \"host\"");
    sbx_init(&x);
    cfg_str(&x.cfg, "network", "host");
    expect_sb_error(&x, PROCESS_ERR_INVALID, "driver_config.network: \"host\" is not allowed");
}

#define T(f) cmocka_unit_test(f)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_process_quantity_parse_cpu),
        T(test_process_quantity_parse_memory),
        T(test_process_quantity_parse_rejects),
        T(test_process_quantity_parse_overflow),
        T(test_gw_uuid_valid),
        T(test_process_dns_label_valid),
        T(test_process_hostname_from_name),
        T(test_process_config_parse_absent_is_default),
        T(test_process_config_parse_valid),
        T(test_process_config_parse_last_duplicate_wins),
        T(test_process_config_parse_unknown_keys),
        T(test_process_config_parse_network),
        T(test_process_config_parse_hostname),
        T(test_process_config_parse_tmp_size),
        T(test_process_config_parse_integers),
        T(test_process_config_parse_error_keeps_output),
        T(test_process_config_parse_small_error_buffer),
        T(test_process_sandbox_check_valid),
        T(test_process_sandbox_check_minimal),
        T(test_process_sandbox_check_identity),
        T(test_process_sandbox_check_image_and_command),
        T(test_process_sandbox_check_environment),
        T(test_process_sandbox_check_resources),
        T(test_process_sandbox_check_gpu_unsupported),
        T(test_process_sandbox_check_driver_config_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
