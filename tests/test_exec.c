/* Unit tests for the exec request checks and the remote command string
 * (src/api/api_exec.c, semantics.md §12). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api/api_int.h"
#include "openshell.pb-c.h"

#define ERRLEN  512
#define OK      GRPC_STATUS_OK
#define INVALID GRPC_STATUS_INVALID_ARGUMENT

typedef Openshell__V1__ExecSandboxRequest req_t;
typedef Openshell__V1__ExecSandboxRequest__EnvironmentEntry env_t;

/* A request with up to 8 environment entries, all on the stack. */
struct req_fixture {
    req_t req;
    env_t env[8];
    env_t *envp[8];
};

static void req_init(struct req_fixture *f, const char *sandbox_id, char **argv, size_t argc)
{
    memset(f, 0, sizeof(*f));
    req_t init = OPENSHELL__V1__EXEC_SANDBOX_REQUEST__INIT;
    f->req = init;
    f->req.sandbox_id = (char *)sandbox_id;
    f->req.command = argv;
    f->req.n_command = argc;
    f->req.environment = f->envp;
}

static void req_env(struct req_fixture *f, const char *key, const char *value)
{
    size_t i = f->req.n_environment++;
    assert_true(i < 8);
    env_t init = OPENSHELL__V1__EXEC_SANDBOX_REQUEST__ENVIRONMENT_ENTRY__INIT;
    f->env[i] = init;
    f->env[i].key = (char *)key;
    f->env[i].value = (char *)value;
    f->envp[i] = &f->env[i];
}

static char *escaped(const char *s)
{
    static char out[256];
    struct gw_buf b = {0};
    api_exec_shell_escape(&b, s);
    snprintf(out, sizeof(out), "%s", gw_buf_cstr(&b));
    gw_buf_free(&b);
    return out;
}

/* Builds |f|'s command into a static buffer (asserting success). */
static const char *built(const struct req_fixture *f)
{
    static char out[1024];
    struct gw_buf b = {0};
    assert_int_equal(api_exec_command_build(&f->req, &b), 0);
    snprintf(out, sizeof(out), "%s", gw_buf_cstr(&b));
    gw_buf_free(&b);
    return out;
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* ---- escaping ------------------------------------------------------------------------- */

static void test_shell_escape_safe_passes_through(void **state)
{
    (void)state;
    assert_string_equal(escaped("ls"), "ls");
    assert_string_equal(escaped("/usr/bin/python3"), "/usr/bin/python3");
    assert_string_equal(escaped("a-b_c.d/E9"), "a-b_c.d/E9");
}

static void test_shell_escape_empty_is_two_quotes(void **state)
{
    (void)state;
    assert_string_equal(escaped(""), "''");
}

static void test_shell_escape_quotes_unsafe(void **state)
{
    (void)state;
    assert_string_equal(escaped("a b"), "'a b'");
    assert_string_equal(escaped("$HOME"), "'$HOME'");
    assert_string_equal(escaped("x;rm -rf /"), "'x;rm -rf /'");
    assert_string_equal(escaped("line1\nline2"), "'line1\nline2'");
    assert_string_equal(escaped("caf\xc3\xa9"), "'caf\xc3\xa9'");
    assert_string_equal(escaped("a=b"), "'a=b'");
    assert_string_equal(escaped("*"), "'*'");
}

static void test_shell_escape_single_quote(void **state)
{
    (void)state;
    assert_string_equal(escaped("it's"), "'it'\"'\"'s'");
    assert_string_equal(escaped("'"), "''\"'\"''");
    assert_string_equal(escaped("''"), "''\"'\"''\"'\"''");
}

/* ---- the command string ----------------------------------------------------------------- */

static void test_command_build_argv_joined(void **state)
{
    (void)state;
    char *argv[] = {"echo", "hello world", "", "it's"};
    struct req_fixture f;
    req_init(&f, "sb", argv, 4);
    assert_string_equal(built(&f), "echo 'hello world' '' 'it'\"'\"'s'");
}

static void test_command_build_env_sorted_before_argv(void **state)
{
    (void)state;
    char *argv[] = {"env"};
    struct req_fixture f;
    req_init(&f, "sb", argv, 1);
    req_env(&f, "ZED", "last");
    req_env(&f, "A_1", "x y");
    req_env(&f, "B", "");
    req_env(&f, "OPENSHELL_PYFUNC_B64", "aGk=");
    assert_string_equal(built(&f), "A_1='x y' B='' OPENSHELL_PYFUNC_B64='aGk=' ZED=last env");
}

static void test_command_build_env_byte_order(void **state)
{
    (void)state;
    char *argv[] = {"true"};
    struct req_fixture f;
    req_init(&f, "sb", argv, 1);
    req_env(&f, "b", "1");
    req_env(&f, "_", "2");
    req_env(&f, "B", "3");
    req_env(&f, "a", "4");
    /* Uppercase < '_' < lowercase in byte order. */
    assert_string_equal(built(&f), "B=3 _=2 a=4 b=1 true");
}

static void test_command_build_repeated_key_last_wins(void **state)
{
    (void)state;
    char *argv[] = {"true"};
    struct req_fixture f;
    req_init(&f, "sb", argv, 1);
    req_env(&f, "K", "first");
    req_env(&f, "A", "a");
    req_env(&f, "K", "second");
    req_env(&f, "K", "third");
    assert_string_equal(built(&f), "A=a K=third true");
}

static void test_command_build_workdir_prefix(void **state)
{
    (void)state;
    char *argv[] = {"pwd"};
    struct req_fixture f;
    req_init(&f, "sb", argv, 1);
    f.req.workdir = "/tmp/my dir";
    req_env(&f, "X", "1");
    assert_string_equal(built(&f), "cd '/tmp/my dir' && X=1 pwd");
    f.req.workdir = "/work";
    assert_string_equal(built(&f), "cd /work && X=1 pwd");
}

static void test_command_build_appends(void **state)
{
    (void)state;
    char *argv[] = {"ls", "-l"};
    struct req_fixture f;
    req_init(&f, "sb", argv, 2);
    struct gw_buf b = {0};
    gw_buf_append(&b, "prefix:", 7);
    assert_int_equal(api_exec_command_build(&f.req, &b), 0);
    assert_string_equal(gw_buf_cstr(&b), "prefix:ls -l");
    gw_buf_free(&b);
}

static void test_command_build_limit(void **state)
{
    (void)state;
    /* 8 arguments of 32 KiB plus 7 spaces: 262151 bytes, just over. */
    char *big = repeat('x', 32 * 1024);
    char *argv[8];
    for (int i = 0; i < 8; i++)
        argv[i] = big;
    struct req_fixture f;
    req_init(&f, "sb", argv, 8);
    struct gw_buf b = {0};
    assert_int_equal(api_exec_command_build(&f.req, &b), -1);
    gw_buf_free(&b);
    /* Exactly at the limit is fine: 7 x 32 KiB + 7 spaces + the rest. */
    size_t rest = API_EXEC_COMMAND_MAX - 7 * 32 * 1024 - 7;
    char *tail = repeat('y', rest);
    argv[7] = tail;
    assert_int_equal(api_exec_command_build(&f.req, &b), 0);
    assert_int_equal(b.len, API_EXEC_COMMAND_MAX);
    gw_buf_free(&b);
    /* The workdir prefix counts too. */
    f.req.workdir = "/w";
    assert_int_equal(api_exec_command_build(&f.req, &b), -1);
    gw_buf_free(&b);
    free(tail);
    free(big);
}

/* ---- validation ----------------------------------------------------------------------------- */

static int validate(const struct req_fixture *f, char *err)
{
    err[0] = '\0';
    return api_exec_validate(&f->req, err, ERRLEN);
}

static void test_validate_accepts_plain_request(void **state)
{
    (void)state;
    char err[ERRLEN];
    char *argv[] = {"python3", "-c", "print('a')\nprint('b')"};
    struct req_fixture f;
    req_init(&f, "sb", argv, 3);
    req_env(&f, "PATH", "/usr/bin:/bin");
    req_env(&f, "OPENSHELL_PYFUNC_B64", "e30=");
    f.req.workdir = "/sandbox";
    assert_int_equal(validate(&f, err), OK);
}

static void test_validate_requires_sandbox_id_first(void **state)
{
    (void)state;
    char err[ERRLEN];
    struct req_fixture f;
    req_init(&f, "", NULL, 0);
    assert_int_equal(validate(&f, err), INVALID);
    assert_string_equal(err, "sandbox_id is required");
}

static void test_validate_requires_command(void **state)
{
    (void)state;
    char err[ERRLEN];
    struct req_fixture f;
    req_init(&f, "sb", NULL, 0);
    req_env(&f, "1BAD", "x"); /* the command check comes first */
    assert_int_equal(validate(&f, err), INVALID);
    assert_string_equal(err, "command is required");
}

static void test_validate_env_key_pattern(void **state)
{
    (void)state;
    char err[ERRLEN];
    char *argv[] = {"true"};
    const char *bad[] = {"1ABC", "A-B", "", "A B", "A=B", "\xc3\xa9"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct req_fixture f;
        req_init(&f, "sb", argv, 1);
        req_env(&f, bad[i], "v");
        assert_int_equal(validate(&f, err), INVALID);
        assert_non_null(strstr(err, "environment keys must match ^[A-Za-z_][A-Za-z0-9_]*$"));
    }
    struct req_fixture f;
    req_init(&f, "sb", argv, 1);
    req_env(&f, "_a1", "v");
    assert_int_equal(validate(&f, err), OK);
}

static void test_validate_env_key_message_is_escaped(void **state)
{
    (void)state;
    char err[ERRLEN];
    char *argv[] = {"true"};
    struct req_fixture f;
    req_init(&f, "sb", argv, 1);
    req_env(&f, "a'b\n", "v");
    assert_int_equal(validate(&f, err), INVALID);
    assert_string_equal(err,
                        "environment keys must match ^[A-Za-z_][A-Za-z0-9_]*$; got 'a\\x27b\\x0a'");
}

static void test_validate_openshell_keys_reserved(void **state)
{
    (void)state;
    char err[ERRLEN];
    char *argv[] = {"true"};
    struct req_fixture f;
    req_init(&f, "sb", argv, 1);
    req_env(&f, "OPENSHELL_SANDBOX_ID", "x");
    assert_int_equal(validate(&f, err), INVALID);
    assert_string_equal(
        err, "environment keys starting with OPENSHELL_ are reserved; got 'OPENSHELL_SANDBOX_ID'");
    /* Only the exact Python SDK key is let through. */
    req_init(&f, "sb", argv, 1);
    req_env(&f, "OPENSHELL_PYFUNC_B64X", "x");
    assert_int_equal(validate(&f, err), INVALID);
    req_init(&f, "sb", argv, 1);
    req_env(&f, "OPENSHELL", "x"); /* no underscore: not the reserved prefix */
    assert_int_equal(validate(&f, err), OK);
}

static void test_validate_argument_count(void **state)
{
    (void)state;
    char err[ERRLEN];
    char **argv = calloc(API_EXEC_ARGS_MAX + 1, sizeof(*argv));
    assert_non_null(argv);
    for (size_t i = 0; i <= API_EXEC_ARGS_MAX; i++)
        argv[i] = "a";
    struct req_fixture f;
    req_init(&f, "sb", argv, API_EXEC_ARGS_MAX);
    assert_int_equal(validate(&f, err), OK);
    req_init(&f, "sb", argv, API_EXEC_ARGS_MAX + 1);
    assert_int_equal(validate(&f, err), INVALID);
    assert_string_equal(err, "command array exceeds 1024 argument limit");
    free(argv);
}

static void test_validate_argument_size(void **state)
{
    (void)state;
    char err[ERRLEN];
    char *ok = repeat('a', API_EXEC_ARG_MAX);
    char *big = repeat('a', API_EXEC_ARG_MAX + 1);
    char *argv[] = {"echo", ok, big};
    struct req_fixture f;
    req_init(&f, "sb", argv, 2);
    assert_int_equal(validate(&f, err), OK);
    req_init(&f, "sb", argv, 3);
    assert_int_equal(validate(&f, err), INVALID);
    assert_string_equal(err, "command argument 2 exceeds 32768 byte limit");
    free(ok);
    free(big);
}

static void test_validate_env_values(void **state)
{
    (void)state;
    char err[ERRLEN];
    char *argv[] = {"true"};
    char *big = repeat('v', API_EXEC_ARG_MAX + 1);
    struct req_fixture f;
    req_init(&f, "sb", argv, 1);
    req_env(&f, "BIG", big);
    assert_int_equal(validate(&f, err), INVALID);
    assert_string_equal(err, "environment value for 'BIG' exceeds 32768 byte limit");
    req_init(&f, "sb", argv, 1);
    req_env(&f, "A", "line\nbreak");
    assert_int_equal(validate(&f, err), INVALID);
    assert_string_equal(err,
                        "environment value for 'A' contains newline or carriage return characters");
    req_init(&f, "sb", argv, 1);
    req_env(&f, "A", "cr\r");
    assert_int_equal(validate(&f, err), INVALID);
    req_init(&f, "sb", argv, 1);
    req_env(&f, "A", "tab\tand 'quotes' $x");
    assert_int_equal(validate(&f, err), OK);
    free(big);
}

static void test_validate_workdir(void **state)
{
    (void)state;
    char err[ERRLEN];
    char *argv[] = {"true"};
    char *ok = repeat('d', API_EXEC_WORKDIR_MAX);
    char *big = repeat('d', API_EXEC_WORKDIR_MAX + 1);
    struct req_fixture f;
    req_init(&f, "sb", argv, 1);
    f.req.workdir = ok;
    assert_int_equal(validate(&f, err), OK);
    f.req.workdir = big;
    assert_int_equal(validate(&f, err), INVALID);
    assert_string_equal(err, "workdir exceeds 4096 byte limit");
    f.req.workdir = "/tmp\n";
    assert_int_equal(validate(&f, err), INVALID);
    assert_string_equal(err, "workdir contains newline or carriage return characters");
    free(ok);
    free(big);
}

static void test_validate_assembled_size(void **state)
{
    (void)state;
    char err[ERRLEN];
    /* Every argument within its limit, the quoting pushes the whole over:
     * 2 x 32768 single quotes become 2 x 163842 bytes. */
    char *quotes = repeat('\'', API_EXEC_ARG_MAX);
    char *argv[] = {quotes, quotes};
    struct req_fixture f;
    req_init(&f, "sb", argv, 1);
    assert_int_equal(validate(&f, err), OK);
    req_init(&f, "sb", argv, 2);
    assert_int_equal(validate(&f, err), INVALID);
    assert_string_equal(err, "command construction failed: assembled command string exceeds "
                             "262144 byte limit");
    free(quotes);
}

static void test_validate_order_keys_before_sizes(void **state)
{
    (void)state;
    char err[ERRLEN];
    char **argv = calloc(API_EXEC_ARGS_MAX + 1, sizeof(*argv));
    assert_non_null(argv);
    for (size_t i = 0; i <= API_EXEC_ARGS_MAX; i++)
        argv[i] = "a";
    struct req_fixture f;
    req_init(&f, "sb", argv, API_EXEC_ARGS_MAX + 1);
    req_env(&f, "OPENSHELL_X", "v");
    f.req.workdir = "/bad\n";
    assert_int_equal(validate(&f, err), INVALID);
    assert_non_null(strstr(err, "reserved"));
    req_init(&f, "sb", argv, API_EXEC_ARGS_MAX + 1);
    f.req.workdir = "/bad\n";
    assert_int_equal(validate(&f, err), INVALID);
    assert_non_null(strstr(err, "argument limit"));
    free(argv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shell_escape_safe_passes_through),
        cmocka_unit_test(test_shell_escape_empty_is_two_quotes),
        cmocka_unit_test(test_shell_escape_quotes_unsafe),
        cmocka_unit_test(test_shell_escape_single_quote),
        cmocka_unit_test(test_command_build_argv_joined),
        cmocka_unit_test(test_command_build_env_sorted_before_argv),
        cmocka_unit_test(test_command_build_env_byte_order),
        cmocka_unit_test(test_command_build_repeated_key_last_wins),
        cmocka_unit_test(test_command_build_workdir_prefix),
        cmocka_unit_test(test_command_build_appends),
        cmocka_unit_test(test_command_build_limit),
        cmocka_unit_test(test_validate_accepts_plain_request),
        cmocka_unit_test(test_validate_requires_sandbox_id_first),
        cmocka_unit_test(test_validate_requires_command),
        cmocka_unit_test(test_validate_env_key_pattern),
        cmocka_unit_test(test_validate_env_key_message_is_escaped),
        cmocka_unit_test(test_validate_openshell_keys_reserved),
        cmocka_unit_test(test_validate_argument_count),
        cmocka_unit_test(test_validate_argument_size),
        cmocka_unit_test(test_validate_env_values),
        cmocka_unit_test(test_validate_workdir),
        cmocka_unit_test(test_validate_assembled_size),
        cmocka_unit_test(test_validate_order_keys_before_sizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
