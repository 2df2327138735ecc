/* Unit tests for configuration loading (src/config): precedence flag > env >
 * file > default, every refusal rule, driver tables, help and reload. Each
 * test starts with no OPENSHELL_* variable set and HOME/XDG_* pointing into
 * a private temporary directory, so the developer's own files never leak in. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"
#include "config/config_int.h"
#include "drivers/driver.h"

#define ERRLEN 512

static char tmpdir[64];
static char file_path[128];

/* ---- fixtures and helpers ----------------------------------------------------- */

static void clear_env(void)
{
    for (size_t i = 0; i < config_options_len; i++)
        if (config_options[i].env != NULL)
            unsetenv(config_options[i].env);
    setenv("HOME", tmpdir, 1);
    unsetenv("XDG_CONFIG_HOME");
    unsetenv("XDG_STATE_HOME");
}

static int group_setup(void **state)
{
    strcpy(tmpdir, "/tmp/test_config_XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    snprintf(file_path, sizeof(file_path), "%s/gateway.toml", tmpdir);
    return 0;
}

static int group_teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static int test_setup(void **state)
{
    clear_env();
    unlink(file_path);
    return 0;
}

static void write_file(const char *path, const char *body)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(body, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* Writes |body| to the test's config file and names it in the environment. */
static void use_file(const char *body)
{
    write_file(file_path, body);
    setenv("OPENSHELL_GATEWAY_CONFIG", file_path, 1);
}

/* config_load() with argv = program name + the NULL-terminated arguments. */
__attribute__((sentinel)) static int load(struct config *c, char *err, ...)
{
    char *argv[32];
    int argc = 0;
    const char *a;
    enum config_action action;
    va_list ap;

    argv[argc++] = "openshell-gateway";
    va_start(ap, err);
    while ((a = va_arg(ap, const char *)) != NULL && argc < 31)
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    return config_load(c, argc, argv, NULL, &action, err, ERRLEN);
}

#define LOAD_OK(c, ...)                                                                            \
    do {                                                                                           \
        char err_[ERRLEN];                                                                         \
        int rc_ = load((c), err_, __VA_ARGS__, NULL);                                              \
        if (rc_ != 0)                                                                              \
            fail_msg("config_load failed (%d): %s", rc_, err_);                                    \
    } while (0)

/* Loads into a fresh config expecting |code| and an error containing |msg|. */
#define EXPECT_ERR(code, msg, ...)                                                                 \
    do {                                                                                           \
        struct config c_;                                                                          \
        char err_[ERRLEN];                                                                         \
        config_init(&c_);                                                                          \
        int rc_ = load(&c_, err_, __VA_ARGS__, NULL);                                              \
        if (rc_ != (code) || strstr(err_, (msg)) == NULL)                                          \
            fail_msg("line %d: got %d '%s', want %d '%s'", __LINE__, rc_, err_, (code), (msg));    \
        assert_null(strchr(err_, '\n'));                                                           \
        config_free(&c_);                                                                          \
    } while (0)

#define EXPECT_USAGE(msg, ...) EXPECT_ERR(CONFIG_ERR_USAGE, msg, __VA_ARGS__)
#define EXPECT_FILE(msg, ...)  EXPECT_ERR(CONFIG_ERR_FILE, msg, __VA_ARGS__)

/* "<file>:<pos>: <rest>" for the test's config file. */
static const char *at_file(const char *pos, const char *rest)
{
    static char buf[256];
    snprintf(buf, sizeof(buf), "%s:%s: %s", file_path, pos, rest);
    return buf;
}

/* ---- defaults ----------------------------------------------------------------- */

static void test_config_init_sets_defaults(void **state)
{
    struct config c;
    char want[128];

    config_init(&c);
    assert_null(c.config_path);
    assert_string_equal(c.bind_address, "127.0.0.1");
    assert_int_equal(c.port, 17670);
    assert_int_equal(c.health_port, 0);
    assert_int_equal(c.metrics_port, 0);
    assert_null(c.unix_socket);
    assert_false(c.disable_tls);
    assert_null(c.tls_cert);
    assert_false(c.tls_require_client_cert);
    assert_int_equal(c.log_level, LOG_INFO);
    assert_int_equal(c.log_format, LOG_FORMAT_TEXT);
    if (geteuid() == 0)
        snprintf(want, sizeof(want), "/var/lib/openshell/gateway");
    else
        snprintf(want, sizeof(want), "%s/.local/state/openshell/gateway", tmpdir);
    assert_string_equal(c.state_dir, want);
    assert_null(c.db_url);
    assert_null(c.drivers);
    assert_int_equal(c.n_drivers, 0);
    assert_null(c.compute_driver_socket);
    assert_int_equal(c.n_driver_tables, 0);
    assert_int_equal(c.max_recv_msg_bytes, 4194304);
    assert_int_equal(c.max_concurrent_streams, 256);
    assert_int_equal(c.shutdown_grace_ms, 10000);
    assert_false(c.enable_diagnostics);
    config_free(&c);
    config_free(&c); /* freeing twice is harmless: config_free() zeroes */
}

static void test_config_init_follows_xdg_state_home(void **state)
{
    struct config c;

    setenv("XDG_STATE_HOME", "/var/lib/x", 1);
    config_init(&c);
    assert_string_equal(c.state_dir, "/var/lib/x/openshell/gateway");
    config_free(&c);
    setenv("XDG_STATE_HOME", "relative/dir", 1); /* ignored, as the XDG spec says */
    config_init(&c);
    assert_non_null(strstr(c.state_dir, "/.local/state/openshell/gateway"));
    config_free(&c);
}

static void test_config_load_needs_a_state_dir(void **state)
{
    struct config c;

    unsetenv("HOME");
    /* root defaults to /var/lib/openshell/gateway, so it always has one. */
    if (geteuid() != 0)
        EXPECT_USAGE("no state directory", "--disable-tls");
    config_init(&c);
    LOAD_OK(&c, "--disable-tls", "--state-dir", "/srv/gw");
    assert_string_equal(c.state_dir, "/srv/gw");
    config_free(&c);
}

static void test_config_load_uses_defaults_without_sources(void **state)
{
    struct config c;

    config_init(&c);
    LOAD_OK(&c, "--disable-tls");
    assert_null(c.config_path);
    assert_true(c.disable_tls);
    assert_int_equal(c.port, 17670);
    assert_string_equal(c.bind_address, "127.0.0.1");
    config_free(&c);
}

static void test_config_load_accepts_zeroed_struct(void **state)
{
    struct config c;

    memset(&c, 0, sizeof(c));
    LOAD_OK(&c, "--disable-tls");
    assert_int_equal(c.port, 17670);
    config_free(&c);
}

/* ---- precedence ------------------------------------------------------------------- */

static void test_config_load_precedence_flag_env_file_default(void **state)
{
    struct config c;

    config_init(&c);
    use_file("[openshell.gateway]\n"
             "log_level = \"debug\"\n"
             "max_concurrent_streams = 100\n"
             "disable_tls = true\n");
    setenv("OPENSHELL_LOG_LEVEL", "warn", 1);
    setenv("OPENSHELL_MAX_CONCURRENT_STREAMS", "200", 1);
    LOAD_OK(&c, "--log-level", "error", "--max-concurrent-streams=300");
    assert_int_equal(c.log_level, LOG_ERROR);
    assert_int_equal(c.max_concurrent_streams, 300);
    assert_string_equal(c.config_path, file_path);

    LOAD_OK(&c, "--log-format", "json"); /* env next */
    assert_int_equal(c.log_level, LOG_WARN);
    assert_int_equal(c.max_concurrent_streams, 200);
    assert_int_equal(c.log_format, LOG_FORMAT_JSON);

    unsetenv("OPENSHELL_LOG_LEVEL");
    unsetenv("OPENSHELL_MAX_CONCURRENT_STREAMS");
    LOAD_OK(&c, "--log-level=trace", "--log-level=debug"); /* last flag wins */
    assert_int_equal(c.log_level, LOG_DEBUG);
    assert_int_equal(c.max_concurrent_streams, 100); /* file next */
    assert_true(c.disable_tls);

    unsetenv("OPENSHELL_GATEWAY_CONFIG");
    LOAD_OK(&c, "--disable-tls");
    assert_int_equal(c.log_level, LOG_INFO); /* default last */
    assert_int_equal(c.max_concurrent_streams, 256);
    assert_null(c.config_path);
    config_free(&c);
}

static void test_config_load_file_bind_address_sets_ip_and_port(void **state)
{
    struct config c;

    config_init(&c);
    use_file("[openshell.gateway]\n"
             "bind_address = \"0.0.0.0:8080\"\n"
             "health_bind_address = \"127.0.0.1:8081\"\n"
             "metrics_bind_address = \"[::1]:8082\"\n"
             "disable_tls = true\n");
    LOAD_OK(&c, "--disable-tls");
    assert_string_equal(c.bind_address, "0.0.0.0");
    assert_int_equal(c.port, 8080);
    assert_int_equal(c.health_port, 8081);
    assert_int_equal(c.metrics_port, 8082);

    /* The port flag or variable replaces only the port part. */
    setenv("OPENSHELL_SERVER_PORT", "9000", 1);
    LOAD_OK(&c, "--disable-tls");
    assert_string_equal(c.bind_address, "0.0.0.0");
    assert_int_equal(c.port, 9000);
    LOAD_OK(&c, "--port", "9001");
    assert_int_equal(c.port, 9001);

    /* The address flag or variable replaces only the IP. */
    setenv("OPENSHELL_BIND_ADDRESS", "::1", 1);
    LOAD_OK(&c, "--disable-tls");
    assert_string_equal(c.bind_address, "::1");
    assert_int_equal(c.port, 9000);
    LOAD_OK(&c, "--bind-address=10.1.2.3");
    assert_string_equal(c.bind_address, "10.1.2.3");
    config_free(&c);

    config_init(&c);
    use_file("[openshell.gateway]\nbind_address = \"[fe80::1]:0\"\n");
    unsetenv("OPENSHELL_SERVER_PORT");
    unsetenv("OPENSHELL_BIND_ADDRESS");
    LOAD_OK(&c, "--disable-tls");
    assert_string_equal(c.bind_address, "fe80::1");
    assert_int_equal(c.port, 0);
    config_free(&c);
}

static void test_config_load_reads_every_file_key(void **state)
{
    struct config c;

    config_init(&c);
    use_file("[openshell]\n"
             "version = 1\n"
             "[openshell.gateway]\n"
             "unix_socket = \"/run/gw.sock\"\n"
             "log_format = \"json\"\n"
             "compute_drivers = [\" Docker \"]\n"
             "state_dir = '/srv/state'\n"
             "max_recv_msg_bytes = 1_048_576\n"
             "shutdown_grace_ms = 0\n"
             "enable_diagnostics = true\n"
             "[openshell.gateway.tls]\n"
             "cert_path = \"/c.pem\"\n"
             "key_path = \"/k.pem\"\n"
             "client_ca_path = \"/ca.pem\"\n"
             "require_client_auth = true\n");
    LOAD_OK(&c, "--log-level=info");
    assert_string_equal(c.unix_socket, "/run/gw.sock");
    assert_int_equal(c.log_format, LOG_FORMAT_JSON);
    assert_int_equal(c.n_drivers, 1);
    assert_string_equal(c.drivers[0], "docker");
    assert_null(c.drivers[1]);
    assert_string_equal(c.state_dir, "/srv/state");
    assert_int_equal(c.max_recv_msg_bytes, 1048576);
    assert_int_equal(c.shutdown_grace_ms, 0);
    assert_true(c.enable_diagnostics);
    assert_string_equal(c.tls_cert, "/c.pem");
    assert_string_equal(c.tls_key, "/k.pem");
    assert_string_equal(c.tls_client_ca, "/ca.pem");
    assert_true(c.tls_require_client_cert);
    assert_false(c.disable_tls);
    config_free(&c);
}

static void test_config_load_accepts_dotted_keys_in_file(void **state)
{
    struct config c;

    config_init(&c);
    use_file("openshell.gateway.disable_tls = true\n"
             "openshell.gateway.tls.cert_path = \"/x\"\n"
             "openshell.drivers.vm.socket_path = \"/run/vm.sock\"\n");
    LOAD_OK(&c, "--port=1");
    assert_true(c.disable_tls);
    assert_string_equal(c.tls_cert, "/x");
    assert_int_equal(c.n_driver_tables, 1);
    assert_string_equal(c.driver_tables[0].name, "vm");
    config_free(&c);
}

static void test_config_load_accepts_both_flag_forms(void **state)
{
    struct config c;

    config_init(&c);
    LOAD_OK(&c, "--disable-tls", "--health-port", "81", "--metrics-port=82", "--unix-socket",
            "/tmp/s", "--db-url=postgres://u:p@127.0.0.1/db", "--enable-diagnostics=true");
    assert_int_equal(c.health_port, 81);
    assert_int_equal(c.metrics_port, 82);
    assert_string_equal(c.unix_socket, "/tmp/s");
    assert_string_equal(c.db_url, "postgres://u:p@127.0.0.1/db");
    assert_true(c.enable_diagnostics);
    /* A value may contain '=' and start with a single '-'. */
    LOAD_OK(&c, "--disable-tls=true", "--state-dir", "-dir=x");
    assert_string_equal(c.state_dir, "-dir=x");
    LOAD_OK(&c, "--disable-tls=false", "--tls-cert", "/c", "--tls-key=/k");
    assert_false(c.disable_tls);
    assert_string_equal(c.tls_cert, "/c");
    config_free(&c);
}

static void test_config_load_env_booleans(void **state)
{
    static const char *const yes[] = {"1", "true", "TRUE", "yes", "on"};
    static const char *const no[] = {"0", "false", "No", "off"};
    struct config c;

    config_init(&c);
    for (size_t i = 0; i < GW_ARRAY_LEN(yes); i++) {
        setenv("OPENSHELL_DISABLE_TLS", yes[i], 1);
        LOAD_OK(&c, "--port=1");
        assert_true(c.disable_tls);
    }
    for (size_t i = 0; i < GW_ARRAY_LEN(no); i++) {
        setenv("OPENSHELL_DISABLE_TLS", no[i], 1);
        LOAD_OK(&c, "--tls-cert=/c", "--tls-key=/k");
        assert_false(c.disable_tls);
    }
    setenv("OPENSHELL_DISABLE_TLS", "maybe", 1);
    EXPECT_USAGE("OPENSHELL_DISABLE_TLS: invalid value 'maybe' (expected true or false)",
                 "--port=1");
    unsetenv("OPENSHELL_DISABLE_TLS");
    EXPECT_USAGE("--disable-tls: invalid value 'nah'", "--disable-tls=nah");
    config_free(&c);
}

static void test_config_load_treats_empty_env_as_unset(void **state)
{
    struct config c;

    config_init(&c);
    setenv("OPENSHELL_SERVER_PORT", "", 1);
    setenv("OPENSHELL_GATEWAY_CONFIG", "", 1);
    setenv("OPENSHELL_DISABLE_TLS", "1", 1);
    LOAD_OK(&c, "--log-level=info");
    assert_int_equal(c.port, 17670);
    assert_null(c.config_path);
    config_free(&c);
}

static void test_config_load_reads_every_env_variable(void **state)
{
    struct config c;

    config_init(&c);
    setenv("OPENSHELL_BIND_ADDRESS", "0.0.0.0", 1);
    setenv("OPENSHELL_SERVER_PORT", "1000", 1);
    setenv("OPENSHELL_HEALTH_PORT", "1001", 1);
    setenv("OPENSHELL_METRICS_PORT", "1002", 1);
    setenv("OPENSHELL_UNIX_SOCKET", "/s", 1);
    setenv("OPENSHELL_LOG_LEVEL", "TRACE", 1);
    setenv("OPENSHELL_LOG_FORMAT", "json", 1);
    setenv("OPENSHELL_TLS_CERT", "/c", 1);
    setenv("OPENSHELL_TLS_KEY", "/k", 1);
    setenv("OPENSHELL_TLS_CLIENT_CA", "/ca", 1);
    setenv("OPENSHELL_TLS_REQUIRE_CLIENT_CERT", "yes", 1);
    setenv("OPENSHELL_DB_URL", "postgres:///x", 1);
    setenv("OPENSHELL_DRIVERS", "Podman", 1);
    setenv("OPENSHELL_COMPUTE_DRIVER_SOCKET", "/d.sock", 1);
    setenv("OPENSHELL_STATE_DIR", "/st", 1);
    setenv("OPENSHELL_MAX_RECV_MSG_BYTES", "1024", 1);
    setenv("OPENSHELL_MAX_CONCURRENT_STREAMS", "10000", 1);
    setenv("OPENSHELL_SHUTDOWN_GRACE_MS", "5", 1);
    setenv("OPENSHELL_ENABLE_DIAGNOSTICS", "true", 1);
    LOAD_OK(&c, "--log-format=text");
    assert_string_equal(c.bind_address, "0.0.0.0");
    assert_int_equal(c.port, 1000);
    assert_int_equal(c.health_port, 1001);
    assert_int_equal(c.metrics_port, 1002);
    assert_string_equal(c.unix_socket, "/s");
    assert_int_equal(c.log_level, LOG_TRACE);
    assert_int_equal(c.log_format, LOG_FORMAT_TEXT);
    assert_string_equal(c.tls_client_ca, "/ca");
    assert_true(c.tls_require_client_cert);
    assert_string_equal(c.db_url, "postgres:///x");
    assert_string_equal(c.drivers[0], "podman");
    assert_string_equal(c.compute_driver_socket, "/d.sock");
    assert_string_equal(c.state_dir, "/st");
    assert_int_equal(c.max_recv_msg_bytes, 1024);
    assert_int_equal(c.max_concurrent_streams, 10000);
    assert_int_equal(c.shutdown_grace_ms, 5);
    assert_true(c.enable_diagnostics);
    config_free(&c);
}

/* ---- command-line errors ------------------------------------------------------------ */

static void test_config_load_rejects_bad_arguments(void **state)
{
    EXPECT_USAGE("unknown option '--bogus' (see --help)", "--bogus");
    EXPECT_USAGE("unknown option '--bogus'", "--bogus=1");
    EXPECT_USAGE("unknown option '-x'", "-x");
    EXPECT_USAGE("unexpected argument 'serve'", "serve");
    EXPECT_USAGE("--port needs a value", "--port");
    EXPECT_USAGE("--port needs a value", "--port", "--disable-tls");
    EXPECT_USAGE("--help takes no value", "--help=1");
    EXPECT_USAGE("--tls-cert: the value must not be empty", "--tls-cert=");
    EXPECT_USAGE("--config: the value must not be empty", "--config=");
}

static void test_config_load_rejects_bad_flag_values(void **state)
{
    EXPECT_USAGE("--port: invalid value '65536' (expected an integer from 0 to 65535)",
                 "--port=65536");
    EXPECT_USAGE("--port: invalid value '-1'", "--port=-1");
    EXPECT_USAGE("--port: invalid value 'abc'", "--port", "abc");
    EXPECT_USAGE("--port: invalid value '+80'", "--port=+80");
    EXPECT_USAGE("--port: invalid value ' 80'", "--port= 80");
    EXPECT_USAGE("--health-port: invalid value '99999999999999999999'",
                 "--health-port=99999999999999999999");
    EXPECT_USAGE("--bind-address: invalid address 'localhost' (expected a numeric IPv4 or IPv6",
                 "--bind-address=localhost");
    EXPECT_USAGE("--bind-address: invalid address '1.2.3.4:80'", "--bind-address=1.2.3.4:80");
    EXPECT_USAGE("--bind-address: invalid address '1.2.3'", "--bind-address=1.2.3");
    EXPECT_USAGE("--max-recv-msg-bytes: invalid value '1023' (expected an integer from 1024 to "
                 "67108864)",
                 "--max-recv-msg-bytes=1023");
    EXPECT_USAGE("--max-recv-msg-bytes: invalid value '67108865'", "--max-recv-msg-bytes=67108865");
    EXPECT_USAGE("--max-concurrent-streams: invalid value '0'", "--max-concurrent-streams=0");
    EXPECT_USAGE("--max-concurrent-streams: invalid value '10001'",
                 "--max-concurrent-streams=10001");
    EXPECT_USAGE("--shutdown-grace-ms: invalid value '3600001'", "--shutdown-grace-ms=3600001");
    EXPECT_USAGE("--log-level: invalid value 'loud' (expected error, warn, info, debug or trace)",
                 "--log-level=loud");
    EXPECT_USAGE("--log-format: invalid value 'xml' (expected text or json)", "--log-format=xml");
    EXPECT_USAGE("--drivers: invalid driver name 'bad name'", "--drivers=bad name");
    EXPECT_USAGE("--drivers: invalid driver name ''", "--drivers=a,,b");
    EXPECT_USAGE("--drivers: invalid driver name ''", "--driver=docker,");
    EXPECT_USAGE("--drivers: the value must not be empty", "--drivers=");
}

static void test_config_load_shortens_echoed_values(void **state)
{
    char big[300];

    memset(big, '9', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    EXPECT_USAGE("...' (expected an integer", "--port", big);
    EXPECT_USAGE("--log-level: invalid value 'a?b'", "--log-level=a\nb");
}

static void test_config_load_rejects_bad_env_values(void **state)
{
    setenv("OPENSHELL_SERVER_PORT", "eighty", 1);
    EXPECT_USAGE("OPENSHELL_SERVER_PORT: invalid value 'eighty'", "--disable-tls");
    /* A flag does not hide a broken variable for the same setting. */
    EXPECT_USAGE("OPENSHELL_SERVER_PORT: invalid value 'eighty'", "--disable-tls", "--port=1");
    unsetenv("OPENSHELL_SERVER_PORT");
    setenv("OPENSHELL_BIND_ADDRESS", "example.com", 1);
    EXPECT_USAGE("OPENSHELL_BIND_ADDRESS: invalid address 'example.com'", "--disable-tls");
    unsetenv("OPENSHELL_BIND_ADDRESS");
    setenv("OPENSHELL_DRIVERS", "a/b", 1);
    EXPECT_USAGE("OPENSHELL_DRIVERS: invalid driver name 'a/b'", "--disable-tls");
}

/* ---- file errors ------------------------------------------------------------------- */

static void test_config_load_rejects_unknown_file_keys(void **state)
{
    use_file("[openshell.gateway]\nbogus = 1\n");
    EXPECT_FILE(at_file("2:9", "unknown key 'openshell.gateway.bogus'"), "--disable-tls");
    use_file("[openshell.gateway.oidc]\nissuer = \"x\"\n");
    EXPECT_FILE(at_file("1:1", "unknown table 'openshell.gateway.oidc'"), "--disable-tls");
    use_file("[openshell.supervisor]\n");
    EXPECT_FILE(at_file("1:1", "unknown table 'openshell.supervisor'"), "--disable-tls");
    use_file("port = 1\n");
    EXPECT_FILE(at_file("1:8", "unknown key 'port'"), "--disable-tls");
    use_file("[gateway]\nport = 1\n");
    EXPECT_FILE(at_file("1:1", "unknown table 'gateway'"), "--disable-tls");
    use_file("[openshell]\n\"gateway.disable_tls\" = true\n");
    EXPECT_FILE(at_file("2:25", "unknown key 'openshell.gateway.disable_tls'"), "--disable-tls");
    use_file("[openshell]\ngateway = 1\n");
    EXPECT_FILE(at_file("2:11", "openshell.gateway: expected a table"), "--disable-tls");
    use_file("[openshell.gateway]\nport = 17670\n"); /* the port lives in bind_address */
    EXPECT_FILE(at_file("2:8", "unknown key 'openshell.gateway.port'"), "--disable-tls");
}

static void test_config_load_rejects_db_url_in_file(void **state)
{
    const char *msg = "db_url cannot be set in the config file; use --db-url or OPENSHELL_DB_URL";

    use_file("[openshell.gateway]\ndb_url = \"postgres://u:secret@h/db\"\n");
    EXPECT_FILE(at_file("2:10", msg), "--disable-tls");
    use_file("[openshell]\ndb_url = \"x\"\n");
    EXPECT_FILE(at_file("2:10", msg), "--disable-tls");
    use_file("[openshell.drivers.docker]\ndb_url = \"x\"\n");
    EXPECT_FILE(at_file("2:10", msg), "--disable-tls");

    /* The secret never appears in the message. */
    struct config c;
    char err[ERRLEN];
    use_file("[openshell.gateway]\ndb_url = \"postgres://u:secret@h/db\"\n");
    config_init(&c);
    assert_int_equal(load(&c, err, "--db-url=postgres:///ok", NULL), CONFIG_ERR_FILE);
    assert_null(strstr(err, "secret"));
    config_free(&c);
}

static void test_config_load_rejects_bad_file_values(void **state)
{
    use_file("[openshell.gateway]\nbind_address = \"127.0.0.1\"\n");
    EXPECT_FILE(at_file("2:16", "openshell.gateway.bind_address: invalid address '127.0.0.1' "
                                "(expected \"ip:port\""),
                "--disable-tls");
    use_file("[openshell.gateway]\nbind_address = \"::1:80\"\n");
    EXPECT_FILE("invalid address '::1:80'", "--disable-tls");
    use_file("[openshell.gateway]\nbind_address = \"[127.0.0.1]:80\"\n");
    EXPECT_FILE("invalid address '[127.0.0.1]:80'", "--disable-tls");
    use_file("[openshell.gateway]\nbind_address = \"localhost:80\"\n");
    EXPECT_FILE("invalid address 'localhost:80'", "--disable-tls");
    use_file("[openshell.gateway]\nhealth_bind_address = \"0.0.0.0:65536\"\n");
    EXPECT_FILE("openshell.gateway.health_bind_address: invalid address", "--disable-tls");
    use_file("[openshell.gateway]\nmetrics_bind_address = \"[::1]\"\n");
    EXPECT_FILE("openshell.gateway.metrics_bind_address: invalid address", "--disable-tls");
    use_file("[openshell.gateway]\nbind_address = 17670\n");
    EXPECT_FILE(at_file("2:16", "openshell.gateway.bind_address: expected a string"),
                "--disable-tls");
    use_file("[openshell.gateway]\nmax_recv_msg_bytes = 10\n");
    EXPECT_FILE(at_file("2:22", "openshell.gateway.max_recv_msg_bytes: invalid value 10 "
                                "(expected an integer from 1024 to 67108864)"),
                "--disable-tls");
    use_file("[openshell.gateway]\nmax_concurrent_streams = \"5\"\n");
    EXPECT_FILE("max_concurrent_streams: expected an integer", "--disable-tls");
    use_file("[openshell.gateway]\ndisable_tls = \"yes\"\n");
    EXPECT_FILE("openshell.gateway.disable_tls: expected true or false", "--port=1");
    use_file("[openshell.gateway]\nlog_level = \"loud\"\n");
    EXPECT_FILE(at_file("2:13", "openshell.gateway.log_level: invalid value 'loud'"),
                "--disable-tls");
    use_file("[openshell.gateway]\ncompute_drivers = \"docker\"\n");
    EXPECT_FILE("compute_drivers: expected an array of strings", "--disable-tls");
    use_file("[openshell.gateway]\ncompute_drivers = [\"ok\", \"not ok\"]\n");
    EXPECT_FILE("compute_drivers: invalid driver name 'not ok'", "--disable-tls");
    use_file("[openshell.gateway]\nstate_dir = \"\"\n");
    EXPECT_FILE("openshell.gateway.state_dir: the value must not be empty", "--disable-tls");
    use_file("[openshell.gateway.tls]\ncert_path = true\n");
    EXPECT_FILE("openshell.gateway.tls.cert_path: expected a string", "--disable-tls");
}

static void test_config_load_checks_file_version(void **state)
{
    struct config c;

    config_init(&c);
    use_file("[openshell]\nversion = 1\n");
    LOAD_OK(&c, "--disable-tls");
    use_file("[openshell]\nversion = 0\n");
    LOAD_OK(&c, "--disable-tls");
    config_free(&c);
    use_file("[openshell]\nversion = 2\n");
    EXPECT_FILE(at_file("2:11", "openshell.version: unsupported version"), "--disable-tls");
    use_file("[openshell]\nversion = -1\n");
    EXPECT_FILE("unsupported version", "--disable-tls");
    use_file("[openshell]\nversion = \"1\"\n");
    EXPECT_FILE("unsupported version", "--disable-tls");
}

static void test_config_load_reports_toml_syntax_errors(void **state)
{
    use_file("[openshell.gateway]\nshutdown_grace_ms = 1.5\n");
    EXPECT_FILE(at_file("2:21", "floats are not supported"), "--disable-tls");
    use_file("[openshell.gateway]\n[openshell.gateway]\n");
    EXPECT_FILE(at_file("2:1", "table [openshell.gateway] is defined twice"), "--disable-tls");
    use_file("x = {}\n");
    EXPECT_FILE(at_file("1:5", "inline tables are not supported"), "--disable-tls");
}

static void test_config_load_needs_an_explicit_file_to_exist(void **state)
{
    char missing[160];

    snprintf(missing, sizeof(missing), "%s/missing.toml", tmpdir);
    EXPECT_FILE("missing.toml: cannot read: No such file or directory", "--config", missing);
    setenv("OPENSHELL_GATEWAY_CONFIG", missing, 1);
    EXPECT_FILE("missing.toml: cannot read", "--disable-tls");
}

static void test_config_load_config_flag_beats_env(void **state)
{
    struct config c;
    char other[160];

    snprintf(other, sizeof(other), "%s/other.toml", tmpdir);
    write_file(other, "[openshell.gateway]\nlog_level = \"error\"\n");
    use_file("[openshell.gateway]\nlog_level = \"debug\"\n");
    config_init(&c);
    LOAD_OK(&c, "--disable-tls", "--config", other);
    assert_int_equal(c.log_level, LOG_ERROR);
    assert_string_equal(c.config_path, other);
    config_free(&c);
    unlink(other);
}

static void test_config_load_reads_xdg_default_file_if_present(void **state)
{
    struct config c;
    char dir[160];
    char path[200];

    config_init(&c);
    LOAD_OK(&c, "--disable-tls"); /* absent: fine */
    assert_null(c.config_path);

    snprintf(dir, sizeof(dir), "%s/.config", tmpdir);
    mkdir(dir, 0700);
    snprintf(dir, sizeof(dir), "%s/.config/openshell", tmpdir);
    mkdir(dir, 0700);
    snprintf(path, sizeof(path), "%s/gateway.toml", dir);
    write_file(path, "[openshell.gateway]\nlog_level = \"warn\"\n");
    LOAD_OK(&c, "--disable-tls"); /* $HOME/.config fallback */
    assert_string_equal(c.config_path, path);
    assert_int_equal(c.log_level, LOG_WARN);
    unlink(path);

    snprintf(dir, sizeof(dir), "%s/xdg", tmpdir);
    mkdir(dir, 0700);
    snprintf(dir, sizeof(dir), "%s/xdg/openshell", tmpdir);
    mkdir(dir, 0700);
    snprintf(path, sizeof(path), "%s/gateway.toml", dir);
    write_file(path, "[openshell.gateway]\nlog_level = \"debug\"\n");
    snprintf(dir, sizeof(dir), "%s/xdg", tmpdir);
    setenv("XDG_CONFIG_HOME", dir, 1);
    LOAD_OK(&c, "--disable-tls");
    assert_string_equal(c.config_path, path);
    assert_int_equal(c.log_level, LOG_DEBUG);

    /* A broken default file is still an error. */
    write_file(path, "nope\n");
    EXPECT_FILE("gateway.toml:1:5: expected '='", "--disable-tls");
    unlink(path);
    config_free(&c);
}

/* ---- drivers ----------------------------------------------------------------------- */

static void test_config_load_reads_driver_tables(void **state)
{
    struct config c;

    config_init(&c);
    use_file("[openshell.drivers.Docker]\n"
             "socket_path = \"/run/docker-driver.sock\"\n"
             "[openshell.drivers.my-ext_1]\n"
             "[openshell.drivers.\" Podman \"]\n"
             "socket_path = '/run/p.sock'\n");
    LOAD_OK(&c, "--disable-tls");
    assert_int_equal(c.n_driver_tables, 3);
    assert_string_equal(c.driver_tables[0].name, "docker");
    assert_string_equal(c.driver_tables[0].socket_path, "/run/docker-driver.sock");
    assert_string_equal(c.driver_tables[1].name, "my-ext_1");
    assert_null(c.driver_tables[1].socket_path);
    assert_string_equal(c.driver_tables[2].name, "podman");
    config_free(&c);
}

static void test_config_load_rejects_bad_driver_tables(void **state)
{
    use_file("[openshell.drivers.docker]\nsocket = \"/x\"\n");
    EXPECT_FILE(at_file("2:10", "unknown key 'openshell.drivers.docker.socket'"), "--disable-tls");
    use_file("[openshell.drivers.Docker]\n[openshell.drivers.docker]\n");
    EXPECT_FILE(at_file("2:1", "driver table 'docker' is defined twice"), "--disable-tls");
    use_file("[openshell.drivers.\"a b\"]\n");
    EXPECT_FILE(at_file("1:1", "openshell.drivers.a b: expected a table"), "--disable-tls");
    use_file("[openshell.drivers]\ndocker = \"/x\"\n");
    EXPECT_FILE(at_file("2:10", "openshell.drivers.docker: expected a table"), "--disable-tls");
    use_file("[openshell.drivers.docker]\nsocket_path = \"\"\n");
    EXPECT_FILE("openshell.drivers.docker.socket_path: expected a non-empty string",
                "--disable-tls");
    use_file("[openshell.drivers.docker]\nsocket_path = 5\n");
    EXPECT_FILE("expected a non-empty string", "--disable-tls");
    use_file("[openshell]\ndrivers = 1\n");
    EXPECT_FILE(at_file("2:11", "openshell.drivers: expected a table"), "--disable-tls");
}

static void test_config_load_reads_driver_names(void **state)
{
    struct config c;

    config_init(&c);
    LOAD_OK(&c, "--disable-tls", "--driver", " VM ");
    assert_int_equal(c.n_drivers, 1);
    assert_string_equal(c.drivers[0], "vm");
    LOAD_OK(&c, "--disable-tls", "--drivers=kubernetes");
    assert_string_equal(c.drivers[0], "kubernetes");
    use_file("[openshell.gateway]\ncompute_drivers = []\n");
    LOAD_OK(&c, "--disable-tls");
    assert_int_equal(c.n_drivers, 0);
    config_free(&c);
    EXPECT_USAGE("multiple compute drivers are not supported yet", "--disable-tls",
                 "--drivers=docker,podman");
    use_file("[openshell.gateway]\ncompute_drivers = [\"a\", \"b\",]\n");
    EXPECT_USAGE("multiple compute drivers are not supported yet", "--disable-tls");
}

static void test_config_load_compute_driver_socket_needs_cli_driver(void **state)
{
    struct config c;
    const char *msg = "--compute-driver-socket needs exactly one driver named with --drivers or "
                      "OPENSHELL_DRIVERS";

    EXPECT_USAGE(msg, "--disable-tls", "--compute-driver-socket=/run/d.sock");
    use_file("[openshell.gateway]\ncompute_drivers = [\"docker\"]\n");
    EXPECT_USAGE(msg, "--disable-tls", "--compute-driver-socket=/run/d.sock");
    config_init(&c);
    LOAD_OK(&c, "--disable-tls", "--compute-driver-socket=/run/d.sock", "--drivers=docker");
    assert_string_equal(c.compute_driver_socket, "/run/d.sock");
    setenv("OPENSHELL_DRIVERS", "ext", 1);
    LOAD_OK(&c, "--disable-tls", "--compute-driver-socket=/run/e.sock");
    assert_string_equal(c.drivers[0], "ext");
    config_free(&c);
}

static void test_config_driver_name_normalize(void **state)
{
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        {"docker", "docker"},
        {"  Docker\t", "docker"},
        {"K8s_X-1", "k8s_x-1"},
        {"", NULL},
        {"   ", NULL},
        {"a.b", NULL},
        {"a b", NULL},
        {"dock/er", NULL},
        {"é", NULL},
    };

    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        char *got = config_driver_name_normalize(cases[i].in);
        if (cases[i].out == NULL)
            assert_null(got);
        else
            assert_string_equal(got, cases[i].out);
        free(got);
    }
}

/* ---- cross-checks ---------------------------------------------------------------------- */

static void test_config_load_checks_tls_settings(void **state)
{
    struct config c;

    EXPECT_USAGE("TLS is enabled but --tls-cert and --tls-key are not both set", "--port=1");
    EXPECT_USAGE("TLS is enabled", "--tls-cert=/c");
    EXPECT_USAGE("TLS is enabled", "--tls-key=/k");
    EXPECT_USAGE("--tls-require-client-cert needs --tls-client-ca", "--tls-cert=/c", "--tls-key=/k",
                 "--tls-require-client-cert");
    config_init(&c);
    LOAD_OK(&c, "--tls-cert=/c", "--tls-key=/k", "--tls-client-ca=/ca",
            "--tls-require-client-cert");
    assert_true(c.tls_require_client_cert);
    /* With TLS off the TLS paths are not needed. */
    LOAD_OK(&c, "--disable-tls", "--tls-require-client-cert");
    config_free(&c);
}

static void test_config_load_checks_port_conflicts(void **state)
{
    struct config c;

    EXPECT_USAGE("--health-port 80 must differ from --port", "--disable-tls", "--port=80",
                 "--health-port=80");
    EXPECT_USAGE("--metrics-port 80 must differ from --port", "--disable-tls", "--port=80",
                 "--metrics-port=80");
    EXPECT_USAGE("--metrics-port 81 must differ from --health-port", "--disable-tls",
                 "--health-port=81", "--metrics-port=81");
    config_init(&c);
    LOAD_OK(&c, "--disable-tls", "--port=0", "--health-port=0", "--metrics-port=0");
    LOAD_OK(&c, "--disable-tls", "--port=0", "--health-port=9", "--metrics-port=10");
    config_free(&c);
}

static void test_config_load_checks_socket_path_length(void **state)
{
    char path[200];

    memset(path, 'a', sizeof(path) - 1);
    path[0] = '/';
    path[sizeof(path) - 1] = '\0';
    EXPECT_USAGE("--unix-socket: path longer than 107 bytes", "--disable-tls", "--unix-socket",
                 path);
    EXPECT_USAGE("--compute-driver-socket: path longer than", "--disable-tls", "--drivers=x",
                 "--compute-driver-socket", path);
}

static void test_config_load_leaves_config_unchanged_on_error(void **state)
{
    struct config c;
    char err[ERRLEN];

    config_init(&c);
    LOAD_OK(&c, "--disable-tls", "--port=1234", "--tls-cert=/keep");
    assert_int_equal(load(&c, err, "--disable-tls", "--port=1", "--log-level=nope", NULL),
                     CONFIG_ERR_USAGE);
    assert_int_equal(c.port, 1234);
    assert_string_equal(c.tls_cert, "/keep");
    config_free(&c);
}

/* ---- help, version, listing -------------------------------------------------------------- */

/* Runs config_load() with one action flag, capturing what it prints. */
static char *run_action(const char *flag, enum config_action want)
{
    struct config c;
    char err[ERRLEN];
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    char *argv[] = {"/usr/bin/openshell-gateway", "--port=bad", (char *)flag, NULL};
    enum config_action action;

    assert_non_null(out);
    config_init(&c);
    /* Help needs no valid settings: the bad port is never parsed. */
    assert_int_equal(config_load(&c, 3, argv, out, &action, err, sizeof(err)), 0);
    assert_int_equal(action, want);
    assert_int_equal(c.port, 17670);
    config_free(&c);
    fclose(out);
    return text;
}

/* Joins the wrapped lines of |text| in place: every run of blanks and
 * newlines becomes one space, so wrapped help text can be searched. */
static void squeeze_spaces(char *text)
{
    char *o = text;
    for (char *p = text; *p != '\0'; p++) {
        bool blank = *p == ' ' || *p == '\n';
        if (!blank || o == text || o[-1] != ' ')
            *o++ = blank ? ' ' : *p;
    }
    *o = '\0';
}

static void test_config_load_help_lists_every_option(void **state)
{
    char *text = run_action("--help", CONFIG_HELP);

    assert_non_null(strstr(text, "Usage: openshell-gateway [OPTIONS]"));
    for (char *line = strchr(text, '\n'); line != NULL; line = strchr(line + 1, '\n'))
        assert_true(strcspn(line + 1, "\n") <= 80);
    squeeze_spaces(text);
    for (size_t i = 0; i < config_options_len; i++) {
        const struct config_option *o = &config_options[i];
        const char *want[] = {o->flag, o->alias, o->env, o->key, o->help};
        for (size_t j = 0; j < GW_ARRAY_LEN(want); j++)
            if (want[j] != NULL && strstr(text, want[j]) == NULL) {
                free(text);
                fail_msg("--help lacks '%s'", want[j]);
            }
    }
    assert_non_null(strstr(text, "[default: 17670]"));
    assert_non_null(strstr(text, "[reloadable]"));
    free(text);
    free(run_action("-h", CONFIG_HELP));
}

static void test_config_load_prints_version(void **state)
{
    char *text = run_action("--version", CONFIG_VERSION);
    assert_true(strncmp(text, "openshell-gateway ", 18) == 0);
    assert_non_null(strchr(text, '\n'));
    free(text);
    free(run_action("-V", CONFIG_VERSION));
}

static void test_config_load_lists_options_for_docs_check(void **state)
{
    char *text = run_action("--list-options", CONFIG_LIST_OPTIONS);
    size_t lines = 0;

    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        size_t tabs = 0;
        for (char *p = line; *p != '\0'; p++)
            tabs += *p == '\t';
        assert_int_equal(tabs, 3);
        lines++;
    }
    assert_int_equal(lines, config_options_len);
    free(text);

    text = run_action("--list-options", CONFIG_LIST_OPTIONS);
    assert_non_null(strstr(text, "--bind-address\tOPENSHELL_BIND_ADDRESS\t"
                                 "openshell.gateway.bind_address\t127.0.0.1\n"));
    assert_non_null(strstr(text, "--drivers,--driver\tOPENSHELL_DRIVERS\t"));
    assert_non_null(strstr(text, "--db-url\tOPENSHELL_DB_URL\t-\tnone\n"));
    assert_non_null(strstr(text, "-\t-\topenshell.drivers.<name>.socket_path\tnone\n"));
    free(text);
}

/* ---- reload -------------------------------------------------------------------------- */

static void test_config_reload_changes_only_reloadable_settings(void **state)
{
    struct config c;
    char err[ERRLEN];
    char *argv[] = {"openshell-gateway", "--port=1000", NULL};

    use_file("[openshell.gateway]\n"
             "log_level = \"info\"\n"
             "max_concurrent_streams = 10\n"
             "[openshell.gateway.tls]\n"
             "cert_path = \"/old.crt\"\n"
             "key_path = \"/old.key\"\n");
    config_init(&c);
    LOAD_OK(&c, "--port=1000");
    assert_string_equal(c.tls_cert, "/old.crt");

    use_file("[openshell.gateway]\n"
             "log_level = \"debug\"\n"
             "log_format = \"json\"\n"
             "max_concurrent_streams = 20\n"
             "bind_address = \"0.0.0.0:2000\"\n"
             "[openshell.gateway.tls]\n"
             "cert_path = \"/new.crt\"\n"
             "key_path = \"/new.key\"\n"
             "client_ca_path = \"/new.ca\"\n");
    assert_int_equal(config_reload(&c, 2, argv, err, sizeof(err)), 0);
    assert_int_equal(c.log_level, LOG_DEBUG);
    assert_int_equal(c.log_format, LOG_FORMAT_JSON);
    assert_string_equal(c.tls_cert, "/new.crt");
    assert_string_equal(c.tls_key, "/new.key");
    assert_string_equal(c.tls_client_ca, "/new.ca");
    assert_int_equal(c.max_concurrent_streams, 10); /* not reloadable */
    assert_string_equal(c.bind_address, "127.0.0.1");
    assert_int_equal(c.port, 1000);

    /* A broken file changes nothing. */
    use_file("[openshell.gateway]\nlog_level = \"error\"\nbroken\n");
    assert_int_equal(config_reload(&c, 2, argv, err, sizeof(err)), CONFIG_ERR_FILE);
    assert_non_null(strstr(err, ":3:7: expected '='"));
    assert_int_equal(c.log_level, LOG_DEBUG);
    assert_string_equal(c.tls_cert, "/new.crt");
    config_free(&c);
}

static void test_config_option_table_is_consistent(void **state)
{
    for (size_t i = 0; i < config_options_len; i++) {
        const struct config_option *o = &config_options[i];
        assert_non_null(o->name);
        assert_non_null(o->help);
        assert_true(o->flag != NULL || o->key != NULL);
        if (o->env != NULL)
            assert_int_equal(strncmp(o->env, "OPENSHELL_", 10), 0);
        if (o->flag != NULL)
            assert_true(config_option_by_flag(o->flag, strlen(o->flag)) == o);
        if (o->key != NULL && o->type != CT_FILE_KEY)
            assert_true(config_option_by_key(o->key) == o);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(o->name, config_options[j].name);
    }
}

/* ---- driver selection (driver_plan_resolve: config -> endpoint plan) ---------- */

/* Loads with the given arguments and resolves the plan; returns its rc. */
#define RESOLVE(plan, err, ...)                                                                    \
    ({                                                                                             \
        struct config c_;                                                                          \
        config_init(&c_);                                                                          \
        LOAD_OK(&c_, "--disable-tls", "--state-dir", "/var/lib/gw", __VA_ARGS__);                  \
        int rc_ = driver_plan_resolve(&c_, tmpdir, (plan), (err), ERRLEN);                         \
        config_free(&c_);                                                                          \
        rc_;                                                                                       \
    })

#define EXPECT_PLAN_ERR(msg, ...)                                                                  \
    do {                                                                                           \
        struct driver_plan p_;                                                                     \
        char e_[ERRLEN] = "";                                                                      \
        if (RESOLVE(&p_, e_, __VA_ARGS__) != -1 || strstr(e_, (msg)) == NULL)                      \
            fail_msg("line %d: got '%s', want '%s'", __LINE__, e_, (msg));                         \
    } while (0)

/* An executable stand-in for the driver program next to "the gateway". */
static void fake_driver_program(void)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/openshell-driver-process", tmpdir);
    write_file(path, "#!/bin/sh\n");
    assert_int_equal(chmod(path, 0755), 0);
}

static void test_driver_plan_defaults_to_managed_process(void **state)
{
    struct driver_plan p;
    char err[ERRLEN];
    char want[160];
    fake_driver_program();
    assert_int_equal(RESOLVE(&p, err, "--log-level", "info"), 0);
    assert_string_equal(p.name, "process");
    assert_true(p.managed);
    assert_string_equal(p.socket_path, "/var/lib/gw/drivers/process.sock");
    assert_string_equal(p.state_dir, "/var/lib/gw/drivers/process");
    snprintf(want, sizeof(want), "%s/openshell-driver-process", tmpdir);
    assert_string_equal(p.program, want);
    assert_null(p.supervisor);
    assert_null(p.rootfs);
    assert_false(p.allow_host_network);
    driver_plan_clear(&p);
}

static void test_driver_plan_reads_managed_options(void **state)
{
    struct driver_plan p;
    char err[ERRLEN];
    use_file("[openshell.drivers.process]\nprogram = \"/bin/true\"\nsupervisor = \"/opt/sup\"\n"
             "rootfs = \"/srv/root\"\nallow_host_network = true\n");
    assert_int_equal(RESOLVE(&p, err, "--drivers", "Process"), 0);
    assert_true(p.managed);
    assert_string_equal(p.program, "/bin/true");
    assert_string_equal(p.supervisor, "/opt/sup");
    assert_string_equal(p.rootfs, "/srv/root");
    assert_true(p.allow_host_network);
    driver_plan_clear(&p);
    use_file("[openshell.drivers.process]\nallow_host_network = \"yes\"\n");
    EXPECT_FILE("openshell.drivers.process.allow_host_network: expected a boolean",
                "--disable-tls");
}

static void test_driver_plan_remote_endpoints(void **state)
{
    struct driver_plan p;
    char err[ERRLEN];
    assert_int_equal(
        RESOLVE(&p, err, "--drivers", "mydrv", "--compute-driver-socket", "/run/d.sock"), 0);
    assert_string_equal(p.name, "mydrv");
    assert_false(p.managed);
    assert_string_equal(p.socket_path, "/run/d.sock");
    assert_null(p.program);
    driver_plan_clear(&p);

    use_file("[openshell.gateway]\ncompute_drivers = [\"ext\"]\n"
             "[openshell.drivers.ext]\nsocket_path = \"/run/ext.sock\"\n");
    assert_int_equal(RESOLVE(&p, err, "--log-level", "info"), 0);
    assert_string_equal(p.name, "ext");
    assert_false(p.managed);
    assert_string_equal(p.socket_path, "/run/ext.sock");
    driver_plan_clear(&p);
}

static void test_driver_plan_refusals(void **state)
{
    /* Reserved names never take an unmanaged socket, from either source. */
    EXPECT_PLAN_ERR("'kubernetes' is reserved", "--drivers", "kubernetes",
                    "--compute-driver-socket", "/run/k.sock");
    EXPECT_PLAN_ERR("'process' is reserved", "--drivers", "process", "--compute-driver-socket",
                    "/run/p.sock");
    use_file("[openshell.gateway]\ncompute_drivers = [\"docker\"]\n"
             "[openshell.drivers.docker]\nsocket_path = \"/run/docker.sock\"\n");
    EXPECT_PLAN_ERR("'docker' is reserved", "--log-level", "info");
    unlink(file_path);
    unsetenv("OPENSHELL_GATEWAY_CONFIG");
    /* A managed driver whose program is missing. */
    use_file("[openshell.drivers.process]\nprogram = \"/nonexistent/drv\"\n");
    EXPECT_PLAN_ERR("program /nonexistent/drv is not an executable file", "--log-level", "info");
    unlink(file_path);
    unsetenv("OPENSHELL_GATEWAY_CONFIG");
    /* Built-in but not in this binary. */
    EXPECT_PLAN_ERR("'vm' is not shipped in this build (this gateway ships: process)", "--drivers",
                    "vm");
    /* An extension name needs a socket. */
    EXPECT_PLAN_ERR("driver 'mydrv' is not built in and has no socket", "--drivers", "mydrv");
    /* Managed-only options under a remote driver. */
    use_file("[openshell.drivers.ext]\nsocket_path = \"/run/e.sock\"\nrootfs = \"/r\"\n");
    EXPECT_PLAN_ERR("apply only to managed built-in drivers", "--drivers", "ext");
    /* A socket without a name is refused by the configuration already. */
    EXPECT_USAGE("--compute-driver-socket needs exactly one driver", "--disable-tls",
                 "--compute-driver-socket", "/run/x.sock");
}

static void test_driver_plan_refuses_long_managed_socket(void **state)
{
    struct driver_plan p;
    char err[ERRLEN];
    char dir[160];
    struct config c;
    memset(dir, 'd', sizeof(dir));
    dir[0] = '/';
    dir[sizeof(dir) - 1] = '\0';
    config_init(&c);
    LOAD_OK(&c, "--disable-tls", "--state-dir", dir);
    assert_int_equal(driver_plan_resolve(&c, "/bin", &p, err, ERRLEN), -1);
    assert_non_null(strstr(err, "use a shorter --state-dir"));
    config_free(&c);
}

static void test_driver_names(void **state)
{
    const char *reserved[] = {"kubernetes", "docker", "podman", "vm", "process"};
    for (size_t i = 0; i < 5; i++)
        assert_true(driver_name_reserved(reserved[i]));
    assert_false(driver_name_reserved("Docker")); /* names are normalized before */
    assert_false(driver_name_reserved("mydrv"));
    assert_true(driver_name_shipped("process"));
    assert_false(driver_name_shipped("kubernetes"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_config_init_sets_defaults, test_setup),
        cmocka_unit_test_setup(test_config_init_follows_xdg_state_home, test_setup),
        cmocka_unit_test_setup(test_config_load_needs_a_state_dir, test_setup),
        cmocka_unit_test_setup(test_config_load_uses_defaults_without_sources, test_setup),
        cmocka_unit_test_setup(test_config_load_accepts_zeroed_struct, test_setup),
        cmocka_unit_test_setup(test_config_load_precedence_flag_env_file_default, test_setup),
        cmocka_unit_test_setup(test_config_load_file_bind_address_sets_ip_and_port, test_setup),
        cmocka_unit_test_setup(test_config_load_reads_every_file_key, test_setup),
        cmocka_unit_test_setup(test_config_load_accepts_dotted_keys_in_file, test_setup),
        cmocka_unit_test_setup(test_config_load_accepts_both_flag_forms, test_setup),
        cmocka_unit_test_setup(test_config_load_env_booleans, test_setup),
        cmocka_unit_test_setup(test_config_load_treats_empty_env_as_unset, test_setup),
        cmocka_unit_test_setup(test_config_load_reads_every_env_variable, test_setup),
        cmocka_unit_test_setup(test_config_load_rejects_bad_arguments, test_setup),
        cmocka_unit_test_setup(test_config_load_rejects_bad_flag_values, test_setup),
        cmocka_unit_test_setup(test_config_load_shortens_echoed_values, test_setup),
        cmocka_unit_test_setup(test_config_load_rejects_bad_env_values, test_setup),
        cmocka_unit_test_setup(test_config_load_rejects_unknown_file_keys, test_setup),
        cmocka_unit_test_setup(test_config_load_rejects_db_url_in_file, test_setup),
        cmocka_unit_test_setup(test_config_load_rejects_bad_file_values, test_setup),
        cmocka_unit_test_setup(test_config_load_checks_file_version, test_setup),
        cmocka_unit_test_setup(test_config_load_reports_toml_syntax_errors, test_setup),
        cmocka_unit_test_setup(test_config_load_needs_an_explicit_file_to_exist, test_setup),
        cmocka_unit_test_setup(test_config_load_config_flag_beats_env, test_setup),
        cmocka_unit_test_setup(test_config_load_reads_xdg_default_file_if_present, test_setup),
        cmocka_unit_test_setup(test_config_load_reads_driver_tables, test_setup),
        cmocka_unit_test_setup(test_config_load_rejects_bad_driver_tables, test_setup),
        cmocka_unit_test_setup(test_config_load_reads_driver_names, test_setup),
        cmocka_unit_test_setup(test_config_load_compute_driver_socket_needs_cli_driver, test_setup),
        cmocka_unit_test_setup(test_config_driver_name_normalize, test_setup),
        cmocka_unit_test_setup(test_config_load_checks_tls_settings, test_setup),
        cmocka_unit_test_setup(test_config_load_checks_port_conflicts, test_setup),
        cmocka_unit_test_setup(test_config_load_checks_socket_path_length, test_setup),
        cmocka_unit_test_setup(test_config_load_leaves_config_unchanged_on_error, test_setup),
        cmocka_unit_test_setup(test_config_load_help_lists_every_option, test_setup),
        cmocka_unit_test_setup(test_config_load_prints_version, test_setup),
        cmocka_unit_test_setup(test_config_load_lists_options_for_docs_check, test_setup),
        cmocka_unit_test_setup(test_config_reload_changes_only_reloadable_settings, test_setup),
        cmocka_unit_test_setup(test_config_option_table_is_consistent, test_setup),
        cmocka_unit_test_setup(test_driver_plan_defaults_to_managed_process, test_setup),
        cmocka_unit_test_setup(test_driver_plan_reads_managed_options, test_setup),
        cmocka_unit_test_setup(test_driver_plan_remote_endpoints, test_setup),
        cmocka_unit_test_setup(test_driver_plan_refusals, test_setup),
        cmocka_unit_test_setup(test_driver_plan_refuses_long_managed_socket, test_setup),
        cmocka_unit_test_setup(test_driver_names, test_setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
