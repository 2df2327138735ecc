/*
 * The option table and the parsing of each type of value. Everything that
 * knows an option's name, flag, variable, key or default reads this table:
 * config.c for precedence, --help, --list-options and the docs check.
 */
#include "config/config_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define OFF(field) offsetof(struct config, field)
#define SHOW_MAX   64 /* longest value echoed in an error message */

/* clang-format off */
const struct config_option config_options[] = {
    {.name = "config", .flag = "--config", .env = "OPENSHELL_GATEWAY_CONFIG",
     .type = CT_CONFIG, .off = OFF(config_path), .arg = "<path>",
     .def = "$XDG_CONFIG_HOME/openshell/gateway.toml", .computed_default = true,
     .help = "TOML configuration file. Without it, the default path is read only if it exists."},
    {.name = "bind_address", .flag = "--bind-address", .env = "OPENSHELL_BIND_ADDRESS",
     .key = "openshell.gateway.bind_address", .type = CT_IP, .addr_key = true,
     .off = OFF(bind_address), .port_off = OFF(port), .arg = "<ip>", .def = "127.0.0.1",
     .help = "Numeric IPv4 or IPv6 address of the main listener. In the file it is "
             "\"ip:port\" (\"[::1]:17670\" for IPv6) and sets the port too."},
    {.name = "port", .flag = "--port", .env = "OPENSHELL_SERVER_PORT",
     .type = CT_PORT, .off = OFF(port), .arg = "<port>", .def = "17670",
     .help = "TCP port of the main listener (gRPC and HTTP); 0 picks a free port. "
             "In the file, the port part of bind_address."},
    {.name = "health_port", .flag = "--health-port", .env = "OPENSHELL_HEALTH_PORT",
     .key = "openshell.gateway.health_bind_address", .type = CT_PORT, .addr_key = true,
     .off = OFF(health_port), .arg = "<port>", .def = "0",
     .help = "Port of the plain-HTTP health listener (/healthz, /readyz); 0 = off. "
             "In the file, the port part of health_bind_address = \"ip:port\"."},
    {.name = "metrics_port", .flag = "--metrics-port", .env = "OPENSHELL_METRICS_PORT",
     .type = CT_PORT, .off = OFF(metrics_port), .arg = "<port>", .def = "0",
     .help = "Port of the plain-HTTP /metrics listener; 0 = off. "
             "In the file, the port part of metrics_bind_address = \"ip:port\"."},
    {.name = "metrics_bind_address", .flag = "--metrics-bind-address",
     .env = "OPENSHELL_METRICS_BIND_ADDRESS", .key = "openshell.gateway.metrics_bind_address",
     .type = CT_IP, .addr_key = true, .off = OFF(metrics_address), .port_off = OFF(metrics_port),
     .arg = "<ip>", .def = "127.0.0.1",
     .help = "Numeric IP of the /metrics listener (unauthenticated: keep it on loopback or a "
             "private network). In the file it is \"ip:port\" and sets --metrics-port too."},
    {.name = "unix_socket", .flag = "--unix-socket", .env = "OPENSHELL_UNIX_SOCKET",
     .key = "openshell.gateway.unix_socket", .type = CT_STRING, .off = OFF(unix_socket),
     .arg = "<path>",
     .help = "Also serve plaintext HTTP/2 (h2c) on this Unix socket."},
    {.name = "log_level", .flag = "--log-level", .env = "OPENSHELL_LOG_LEVEL",
     .key = "openshell.gateway.log_level", .type = CT_LEVEL, .off = OFF(log_level),
     .arg = "<level>", .def = "info", .reloadable = true,
     .help = "Log level: error, warn, info, debug or trace."},
    {.name = "log_format", .flag = "--log-format", .env = "OPENSHELL_LOG_FORMAT",
     .key = "openshell.gateway.log_format", .type = CT_FORMAT, .off = OFF(log_format),
     .arg = "<format>", .def = "text", .reloadable = true,
     .help = "Log line format: text (key=value) or json (one object per line)."},
    {.name = "tls_cert", .flag = "--tls-cert", .env = "OPENSHELL_TLS_CERT",
     .key = "openshell.gateway.tls.cert_path", .type = CT_STRING, .off = OFF(tls_cert),
     .arg = "<path>", .reloadable = true,
     .help = "PEM server certificate (chain). Required unless TLS is disabled."},
    {.name = "tls_key", .flag = "--tls-key", .env = "OPENSHELL_TLS_KEY",
     .key = "openshell.gateway.tls.key_path", .type = CT_STRING, .off = OFF(tls_key),
     .arg = "<path>", .reloadable = true,
     .help = "PEM private key of the server certificate. Required unless TLS is disabled."},
    {.name = "tls_client_ca", .flag = "--tls-client-ca", .env = "OPENSHELL_TLS_CLIENT_CA",
     .key = "openshell.gateway.tls.client_ca_path", .type = CT_STRING, .off = OFF(tls_client_ca),
     .arg = "<path>", .reloadable = true,
     .help = "PEM CA bundle that client certificates are verified against (mTLS)."},
    {.name = "tls_require_client_cert", .flag = "--tls-require-client-cert",
     .env = "OPENSHELL_TLS_REQUIRE_CLIENT_CERT", .key = "openshell.gateway.tls.require_client_auth",
     .type = CT_BOOL, .off = OFF(tls_require_client_cert), .arg = "[=<bool>]", .def = "false",
     .help = "Refuse TLS clients that present no certificate signed by the client CA."},
    {.name = "disable_tls", .flag = "--disable-tls", .env = "OPENSHELL_DISABLE_TLS",
     .key = "openshell.gateway.disable_tls", .type = CT_BOOL, .off = OFF(disable_tls),
     .arg = "[=<bool>]", .def = "false",
     .help = "Serve plaintext HTTP/2 (h2c) on the main port instead of TLS."},
    {.name = "db_url", .flag = "--db-url", .env = "OPENSHELL_DB_URL",
     .type = CT_STRING, .off = OFF(db_url), .arg = "<url>",
     .help = "PostgreSQL connection URL. Without it the gateway runs its own PostgreSQL "
             "under the state directory. Refused in the file (it may hold a password)."},
    {.name = "drivers", .flag = "--drivers", .alias = "--driver", .env = "OPENSHELL_DRIVERS",
     .key = "openshell.gateway.compute_drivers", .type = CT_DRIVERS, .arg = "<name,...>",
     .help = "Compute driver name (one; comma list syntax). In the file, an array of strings."},
    {.name = "compute_driver_socket", .flag = "--compute-driver-socket",
     .env = "OPENSHELL_COMPUTE_DRIVER_SOCKET", .type = CT_STRING,
     .off = OFF(compute_driver_socket), .arg = "<path>",
     .help = "Unix socket of an already running driver for the one name given with --drivers."},
    {.name = "allow_driver_name_mismatch", .flag = "--allow-driver-name-mismatch",
     .env = "OPENSHELL_ALLOW_DRIVER_NAME_MISMATCH",
     .key = "openshell.gateway.allow_driver_name_mismatch", .type = CT_BOOL,
     .off = OFF(allow_driver_name_mismatch), .arg = "[=<bool>]", .def = "false",
     .help = "Start even when the driver's GetCapabilities name differs from the configured "
             "name (the configured name still keys driver_config)."},
    {.name = "driver_connect_timeout_ms", .flag = "--driver-connect-timeout-ms",
     .env = "OPENSHELL_DRIVER_CONNECT_TIMEOUT_MS",
     .key = "openshell.gateway.driver_connect_timeout_ms", .type = CT_U32,
     .off = OFF(driver_connect_timeout_ms), .min = 100, .max = 600000, .arg = "<ms>",
     .def = "30000",
     .help = "How long startup waits for the compute driver to answer GetCapabilities "
             "(100 to 600000 ms; connects are retried every 250 ms)."},
    {.name = "state_dir", .flag = "--state-dir", .env = "OPENSHELL_STATE_DIR",
     .key = "openshell.gateway.state_dir", .type = CT_STRING, .off = OFF(state_dir),
     .arg = "<path>", .def = "$XDG_STATE_HOME/openshell/gateway (root: /var/lib/openshell/gateway)",
     .computed_default = true,
     .help = "Directory for the gateway's state (embedded database, keys)."},
    {.name = "supervisor_socket", .flag = "--supervisor-socket",
     .env = "OPENSHELL_SUPERVISOR_SOCKET", .key = "openshell.gateway.supervisor_socket",
     .type = CT_STRING, .off = OFF(supervisor_socket), .arg = "<path>",
     .def = "<state_dir>/run/supervisor.sock", .computed_default = true,
     .help = "Unix socket (h2c) the supervisors of local sandboxes dial; the process driver "
             "mounts its directory into each sandbox."},
    {.name = "sandbox_endpoint", .flag = "--sandbox-endpoint", .env = "OPENSHELL_SANDBOX_ENDPOINT",
     .key = "openshell.gateway.sandbox_endpoint", .type = CT_STRING, .off = OFF(sandbox_endpoint),
     .arg = "<url>", .def = "unix:<supervisor_socket>", .computed_default = true,
     .help = "Gateway endpoint handed to managed drivers for their sandboxes' supervisors: "
             "unix:<path>, http://<ip>:<port> or https://<ip>:<port>."},
    {.name = "jwt_signing_key", .flag = "--jwt-signing-key", .env = "OPENSHELL_JWT_SIGNING_KEY",
     .key = "openshell.gateway.gateway_jwt.signing_key_path", .type = CT_STRING,
     .off = OFF(jwt_signing_key), .arg = "<path>", .def = "<state_dir>/jwt/signing_key.pem",
     .computed_default = true,
     .help = "PKCS#8 PEM Ed25519 key that signs sandbox tokens. When the key, public key "
             "and kid files are all missing they are generated (0600) at startup."},
    {.name = "jwt_public_key", .flag = "--jwt-public-key", .env = "OPENSHELL_JWT_PUBLIC_KEY",
     .key = "openshell.gateway.gateway_jwt.public_key_path", .type = CT_STRING,
     .off = OFF(jwt_public_key), .arg = "<path>", .def = "<state_dir>/jwt/public_key.pem",
     .computed_default = true, .help = "SPKI PEM public key matching the signing key."},
    {.name = "jwt_kid_file", .flag = "--jwt-kid-file", .env = "OPENSHELL_JWT_KID_FILE",
     .key = "openshell.gateway.gateway_jwt.kid_path", .type = CT_STRING, .off = OFF(jwt_kid_file),
     .arg = "<path>", .def = "<state_dir>/jwt/kid", .computed_default = true,
     .help = "File holding the key id (one line) put in every token header."},
    {.name = "jwt_gateway_id", .flag = "--jwt-gateway-id", .env = "OPENSHELL_JWT_GATEWAY_ID",
     .key = "openshell.gateway.gateway_jwt.gateway_id", .type = CT_STRING,
     .off = OFF(jwt_gateway_id), .arg = "<id>", .def = "openshell",
     .help = "Gateway id: tokens carry iss = aud = \"openshell-gateway:<id>\"."},
    {.name = "jwt_ttl_secs", .flag = "--jwt-ttl-secs", .env = "OPENSHELL_JWT_TTL_SECS",
     .key = "openshell.gateway.gateway_jwt.ttl_secs", .type = CT_U32, .off = OFF(jwt_ttl_secs),
     .min = 0, .max = 31536000, .arg = "<secs>", .def = "0",
     .help = "Sandbox token lifetime in seconds; 0 = never expires (supervisors refresh "
             "tokens at 80 % of their lifetime)."},
    {.name = "ssh_session_ttl_secs", .flag = "--ssh-session-ttl-secs",
     .env = "OPENSHELL_SSH_SESSION_TTL_SECS", .key = "openshell.gateway.ssh_session_ttl_secs",
     .type = CT_U32, .off = OFF(ssh_session_ttl_secs), .min = 0, .max = 31536000,
     .arg = "<secs>", .def = "86400",
     .help = "Lifetime of CreateSshSession tokens in seconds; 0 = never expire."},
    {.name = "max_recv_msg_bytes", .flag = "--max-recv-msg-bytes",
     .env = "OPENSHELL_MAX_RECV_MSG_BYTES", .key = "openshell.gateway.max_recv_msg_bytes",
     .type = CT_U32, .off = OFF(max_recv_msg_bytes), .min = 1024, .max = 64u << 20,
     .arg = "<bytes>", .def = "4194304",
     .help = "Largest gRPC request message accepted (1024 to 67108864)."},
    {.name = "max_concurrent_streams", .flag = "--max-concurrent-streams",
     .env = "OPENSHELL_MAX_CONCURRENT_STREAMS", .key = "openshell.gateway.max_concurrent_streams",
     .type = CT_U32, .off = OFF(max_concurrent_streams), .min = 1, .max = 10000,
     .arg = "<n>", .def = "256",
     .help = "HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per connection (1 to 10000)."},
    {.name = "shutdown_grace_ms", .flag = "--shutdown-grace-ms",
     .env = "OPENSHELL_SHUTDOWN_GRACE_MS", .key = "openshell.gateway.shutdown_grace_ms",
     .type = CT_U32, .off = OFF(shutdown_grace_ms), .min = 0, .max = 3600000,
     .arg = "<ms>", .def = "10000",
     .help = "How long SIGTERM waits for open calls to finish (0 to 3600000 ms)."},
    {.name = "enable_diagnostics", .flag = "--enable-diagnostics",
     .env = "OPENSHELL_ENABLE_DIAGNOSTICS", .key = "openshell.gateway.enable_diagnostics",
     .type = CT_BOOL, .off = OFF(enable_diagnostics), .arg = "[=<bool>]", .def = "false",
     .help = "Serve the gateway's diagnostics service."},
    {.name = "help", .flag = "--help", .alias = "-h", .type = CT_ACTION, .action = CONFIG_HELP,
     .help = "Print this help and exit."},
    {.name = "version", .flag = "--version", .alias = "-V", .type = CT_ACTION,
     .action = CONFIG_VERSION, .help = "Print the version and exit."},
    {.name = "list_options", .flag = "--list-options", .type = CT_ACTION,
     .action = CONFIG_LIST_OPTIONS,
     .help = "Print every option as flag<TAB>env<TAB>TOML key<TAB>default and exit."},
    {.name = "file_version", .key = "openshell.version", .type = CT_FILE_KEY, .def = "1",
     .help = "Version of the file's schema; only 1 is understood (0 is taken as 1)."},
    {.name = "driver_socket_path", .key = "openshell.drivers.<name>.socket_path",
     .type = CT_FILE_KEY,
     .help = "Unix socket of the compute driver <name> (one [openshell.drivers.<name>] "
             "table per driver). Refused for reserved built-in names."},
    {.name = "driver_program", .key = "openshell.drivers.<name>.program", .type = CT_FILE_KEY,
     .help = "Managed built-in driver only: the driver program to run instead of the one "
             "installed next to the gateway."},
    {.name = "driver_supervisor", .key = "openshell.drivers.<name>.supervisor",
     .type = CT_FILE_KEY,
     .help = "Managed built-in driver only: the openshell-supervisor program sandboxes run."},
    {.name = "driver_rootfs", .key = "openshell.drivers.<name>.rootfs", .type = CT_FILE_KEY,
     .help = "Managed process driver only: root filesystem directory sandboxes see "
             "(read-only); default: the host's /."},
    {.name = "driver_allow_host_network", .key = "openshell.drivers.<name>.allow_host_network",
     .type = CT_FILE_KEY, .def = "false",
     .help = "Managed process driver only: allow driver_config network = \"host\"."},
};
/* clang-format on */
const size_t config_options_len = GW_ARRAY_LEN(config_options);

/* ---- lookups ---------------------------------------------------------------- */

static bool spelled(const char *want, const char *name, size_t len)
{
    return want != NULL && strlen(want) == len && memcmp(want, name, len) == 0;
}

const struct config_option *config_option_by_flag(const char *name, size_t len)
{
    for (size_t i = 0; i < config_options_len; i++) {
        const struct config_option *o = &config_options[i];
        if (spelled(o->flag, name, len) || spelled(o->alias, name, len))
            return o;
    }
    return NULL;
}

const struct config_option *config_option_by_name(const char *name)
{
    for (size_t i = 0; i < config_options_len; i++)
        if (strcmp(config_options[i].name, name) == 0)
            return &config_options[i];
    GW_ASSERT(!"no option table row by that name");
    return NULL;
}

const struct config_option *config_option_by_key(const char *key)
{
    for (size_t i = 0; i < config_options_len; i++)
        if (config_options[i].key != NULL && strcmp(config_options[i].key, key) == 0)
            return &config_options[i];
    return NULL;
}

bool config_table_known(const char *path)
{
    size_t n = strlen(path);
    for (size_t i = 0; i < config_options_len; i++) {
        const char *k = config_options[i].key;
        if (k != NULL && strncmp(k, path, n) == 0 && k[n] == '.')
            return true;
    }
    return false;
}

/* ---- value parsing ------------------------------------------------------------ */

const char *config_show(const char *s, char *buf, size_t n)
{
    size_t o = 0;
    for (; *s != '\0' && o + 4 < n; s++)
        buf[o++] = ((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s;
    if (*s != '\0')
        memcpy(buf + o, "...", 3), o += 3;
    buf[o] = '\0';
    return buf;
}

static void *field(struct config *c, const struct config_option *o)
{
    return (char *)c + o->off;
}

int config_bool_parse(const char *s, bool *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < GW_ARRAY_LEN(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0 || strcasecmp(s, no[i]) == 0) {
            *out = strcasecmp(s, yes[i]) == 0;
            return 0;
        }
    }
    return -1;
}

/* Plain decimal digits only: no sign, no spaces, no base prefixes. */
static bool parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
    uint64_t v = 0;
    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
        if (v > max)
            return false;
    }
    if (v < min)
        return false;
    *out = (uint32_t)v;
    return true;
}

/* Numeric literals only: a host name would need a blocking DNS lookup. */
static bool is_ip(const char *s, int family)
{
    unsigned char addr[sizeof(struct in6_addr)];
    if (family != AF_UNSPEC)
        return inet_pton(family, s, addr) == 1;
    return inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1;
}

/* Splits "a.b.c.d:port" or "[v6]:port" into |ip| and |*port|. */
static bool split_addr(const char *s, char *ip, size_t iplen, uint16_t *port)
{
    const char *host = s;
    const char *colon;
    size_t hlen;
    uint32_t p;
    bool v6 = s[0] == '[';

    if (v6) {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return false;
        host = s + 1;
        hlen = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return false;
        hlen = (size_t)(colon - s);
        if (memchr(s, ':', hlen) != NULL)
            return false; /* IPv6 needs brackets */
    }
    if (hlen == 0 || hlen >= iplen)
        return false;
    memcpy(ip, host, hlen);
    ip[hlen] = '\0';
    if (!is_ip(ip, v6 ? AF_INET6 : AF_INET) || !parse_u32(colon + 1, 0, 65535, &p))
        return false;
    *port = (uint16_t)p;
    return true;
}

char *config_driver_name_normalize(const char *name)
{
    const char *end = name + strlen(name);
    char *out;

    while (*name != '\0' && isspace((unsigned char)*name))
        name++;
    while (end > name && isspace((unsigned char)end[-1]))
        end--;
    if (end == name)
        return NULL;
    out = gw_xstrndup(name, (size_t)(end - name));
    for (char *p = out; *p != '\0'; p++) {
        *p = (char)tolower((unsigned char)*p);
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_') {
            free(out);
            return NULL;
        }
    }
    return out;
}

static void drivers_free(char **list)
{
    for (size_t i = 0; list != NULL && list[i] != NULL; i++)
        free(list[i]);
    free(list);
}

/* Appends the normalized |raw| to the NULL-terminated |*list|. */
static int drivers_add(char ***list, size_t *n, const char *raw, const char *src, char *err,
                       size_t errlen)
{
    char buf[SHOW_MAX + 4];
    char *name = config_driver_name_normalize(raw);
    if (name == NULL)
        return gw_errf(err, errlen,
                       "%s: invalid driver name '%s' (use letters, digits, '-' and '_'; not empty)",
                       src, config_show(raw, buf, sizeof(buf)));
    *list = gw_xrealloc(*list, (*n + 2) * sizeof(**list));
    (*list)[(*n)++] = name;
    (*list)[*n] = NULL;
    return 0;
}

static void drivers_replace(struct config *c, char **list, size_t n)
{
    drivers_free(c->drivers);
    c->drivers = list;
    c->n_drivers = n;
}

static int set_drivers_text(struct config *c, const char *text, const char *src, char *err,
                            size_t errlen)
{
    char **list = NULL;
    size_t n = 0;
    const char *p = text;

    if (*text == '\0')
        return gw_errf(err, errlen, "%s: the value must not be empty", src);
    for (;;) {
        const char *comma = strchr(p, ',');
        char *raw = gw_xstrndup(p, comma != NULL ? (size_t)(comma - p) : strlen(p));
        int rc = drivers_add(&list, &n, raw, src, err, errlen);
        free(raw);
        if (rc != 0) {
            drivers_free(list);
            return rc;
        }
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    drivers_replace(c, list, n);
    return 0;
}

static int set_string(char **dst, const char *text, const char *src, char *err, size_t errlen)
{
    if (*text == '\0')
        return gw_errf(err, errlen, "%s: the value must not be empty", src);
    free(*dst);
    *dst = gw_xstrdup(text);
    return 0;
}

/* Types whose text is checked against a fixed syntax, echoing the value. */
static int set_scalar(struct config *c, const struct config_option *o, const char *text,
                      const char *src, char *err, size_t errlen)
{
    char buf[SHOW_MAX + 4];
    uint32_t u;
    int rc = 0;

    switch (o->type) {
    case CT_BOOL:
        if (config_bool_parse(text, (bool *)field(c, o)) != 0)
            rc = gw_errf(err, errlen, "%s: invalid value '%s' (expected true or false)", src,
                         config_show(text, buf, sizeof(buf)));
        break;
    case CT_U32:
    case CT_PORT:
        if (!parse_u32(text, o->type == CT_PORT ? 0 : o->min, o->type == CT_PORT ? 65535 : o->max,
                       &u))
            rc = gw_errf(err, errlen, "%s: invalid value '%s' (expected an integer from %u to %u)",
                         src, config_show(text, buf, sizeof(buf)), o->type == CT_PORT ? 0 : o->min,
                         o->type == CT_PORT ? 65535 : o->max);
        else if (o->type == CT_PORT)
            *(uint16_t *)field(c, o) = (uint16_t)u;
        else
            *(uint32_t *)field(c, o) = u;
        break;
    case CT_LEVEL:
        if (log_level_parse(text, (enum log_level *)field(c, o)) != 0)
            rc = gw_errf(err, errlen,
                         "%s: invalid value '%s' (expected error, warn, info, debug or trace)", src,
                         config_show(text, buf, sizeof(buf)));
        break;
    default:
        GW_ASSERT(o->type == CT_FORMAT);
        if (strcasecmp(text, "text") == 0 || strcasecmp(text, "json") == 0)
            *(enum log_format *)field(c, o) =
                strcasecmp(text, "json") == 0 ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT;
        else
            rc = gw_errf(err, errlen, "%s: invalid value '%s' (expected text or json)", src,
                         config_show(text, buf, sizeof(buf)));
        break;
    }
    return rc;
}

int config_option_set_text(struct config *c, const struct config_option *o, const char *text,
                           const char *src, char *err, size_t errlen)
{
    char buf[SHOW_MAX + 4];

    switch (o->type) {
    case CT_CONFIG:
    case CT_STRING:
        return set_string((char **)field(c, o), text, src, err, errlen);
    case CT_IP:
        if (!is_ip(text, AF_UNSPEC))
            return gw_errf(err, errlen,
                           "%s: invalid address '%s' (expected a numeric IPv4 or IPv6 address)",
                           src, config_show(text, buf, sizeof(buf)));
        return set_string((char **)field(c, o), text, src, err, errlen);
    case CT_DRIVERS:
        return set_drivers_text(c, text, src, err, errlen);
    case CT_BOOL:
    case CT_U32:
    case CT_PORT:
    case CT_LEVEL:
    case CT_FORMAT:
        return set_scalar(c, o, text, src, err, errlen);
    case CT_ACTION:
    case CT_FILE_KEY:
        break;
    }
    return gw_errf(err, errlen, "%s: takes no value", src);
}

/* "ip:port" keys of the file: bind_address, health_bind_address, ... */
static int set_addr(struct config *c, const struct config_option *o, const char *text,
                    const char *src, char *err, size_t errlen)
{
    char ip[INET6_ADDRSTRLEN + 1];
    char buf[SHOW_MAX + 4];
    uint16_t port;

    if (!split_addr(text, ip, sizeof(ip), &port))
        return gw_errf(err, errlen,
                       "%s: invalid address '%s' (expected \"ip:port\" with a numeric IP, e.g. "
                       "\"127.0.0.1:17670\" or \"[::1]:17670\")",
                       src, config_show(text, buf, sizeof(buf)));
    if (o->type == CT_IP) {
        free(*(char **)field(c, o));
        *(char **)field(c, o) = gw_xstrdup(ip);
        *(uint16_t *)((char *)c + o->port_off) = port;
    } else {
        *(uint16_t *)field(c, o) = port;
    }
    return 0;
}

static int set_toml_int(struct config *c, const struct config_option *o, int64_t v, const char *src,
                        char *err, size_t errlen)
{
    uint32_t min = o->type == CT_PORT ? 0 : o->min;
    uint32_t max = o->type == CT_PORT ? 65535 : o->max;

    if (v < (int64_t)min || v > (int64_t)max)
        return gw_errf(err, errlen, "%s: invalid value %lld (expected an integer from %u to %u)",
                       src, (long long)v, min, max);
    if (o->type == CT_PORT)
        *(uint16_t *)field(c, o) = (uint16_t)v;
    else
        *(uint32_t *)field(c, o) = (uint32_t)v;
    return 0;
}

static int set_toml_drivers(struct config *c, const struct toml_value *v, const char *src,
                            char *err, size_t errlen)
{
    char **list = NULL;
    size_t n = 0;

    for (size_t i = 0; i < toml_array_len(v); i++) {
        if (drivers_add(&list, &n, toml_array_string(v, i), src, err, errlen) != 0) {
            drivers_free(list);
            return -1;
        }
    }
    drivers_replace(c, list, n);
    return 0;
}

/* The TOML type each option type takes in the file. */
static enum toml_type toml_type_for(const struct config_option *o)
{
    if (o->addr_key)
        return TOML_STRING;
    switch (o->type) {
    case CT_BOOL:
        return TOML_BOOL;
    case CT_U32:
    case CT_PORT:
        return TOML_INT;
    case CT_DRIVERS:
        return TOML_ARRAY;
    default:
        return TOML_STRING;
    }
}

int config_option_set_toml(struct config *c, const struct config_option *o,
                           const struct toml_value *v, const char *src, char *err, size_t errlen)
{
    static const char *const names[] = {
        [TOML_TABLE] = "a table",
        [TOML_STRING] = "a string",
        [TOML_INT] = "an integer",
        [TOML_BOOL] = "true or false",
        [TOML_ARRAY] = "an array of strings",
    };
    enum toml_type want = toml_type_for(o);

    if (toml_type(v) != want)
        return gw_errf(err, errlen, "%s: expected %s", src, names[want]);
    if (o->addr_key)
        return set_addr(c, o, toml_string(v), src, err, errlen);
    switch (want) {
    case TOML_BOOL:
        *(bool *)field(c, o) = toml_bool(v);
        return 0;
    case TOML_INT:
        return set_toml_int(c, o, toml_int(v), src, err, errlen);
    case TOML_ARRAY:
        return set_toml_drivers(c, v, src, err, errlen);
    default:
        return config_option_set_text(c, o, toml_string(v), src, err, errlen);
    }
}

void config_option_move(struct config *to, struct config *from, const struct config_option *o)
{
    char **a;
    char **b;
    char *tmp;

    switch (o->type) {
    case CT_STRING:
    case CT_IP:
        a = (char **)field(to, o);
        b = (char **)field(from, o);
        tmp = *a;
        *a = *b;
        *b = tmp;
        break;
    case CT_BOOL:
        *(bool *)field(to, o) = *(bool *)field(from, o);
        break;
    case CT_U32:
        *(uint32_t *)field(to, o) = *(uint32_t *)field(from, o);
        break;
    case CT_PORT:
        *(uint16_t *)field(to, o) = *(uint16_t *)field(from, o);
        break;
    case CT_LEVEL:
        *(enum log_level *)field(to, o) = *(enum log_level *)field(from, o);
        break;
    case CT_FORMAT:
        *(enum log_format *)field(to, o) = *(enum log_format *)field(from, o);
        break;
    default:
        /* Drivers, actions and file-only keys are never reloadable. */
        GW_ASSERT(!o->reloadable);
        break;
    }
}

/* ---- help and listing ------------------------------------------------------------ */

/* Prints |text| indented by 8 columns, broken at spaces to stay within 80. */
static void print_wrapped(FILE *out, const char *text)
{
    const int width = 72;

    while (*text != '\0') {
        int n = (int)strlen(text);
        if (n > width) {
            n = width;
            while (n > 0 && text[n] != ' ')
                n--;
            if (n == 0) /* one long word: let it overflow */
                n = (int)strcspn(text, " ");
        }
        fprintf(out, "        %.*s\n", n, text);
        text += n;
        while (*text == ' ')
            text++;
    }
}

static void print_option_help(FILE *out, const struct config_option *o)
{
    char details[512];
    int n = 0;

    fprintf(out, "  %s", o->flag != NULL ? o->flag : o->key);
    if (o->alias != NULL)
        fprintf(out, ", %s", o->alias);
    if (o->arg != NULL)
        fprintf(out, "%s%s", o->arg[0] == '[' ? "" : " ", o->arg);
    fputc('\n', out);
    print_wrapped(out, o->help);
    if (o->type == CT_ACTION)
        return;
    if (o->env != NULL)
        n += snprintf(details + n, sizeof(details) - (size_t)n, "[env: %s] ", o->env);
    if (o->flag != NULL && o->key != NULL)
        n += snprintf(details + n, sizeof(details) - (size_t)n, "[file: %s] ", o->key);
    snprintf(details + n, sizeof(details) - (size_t)n, "[default: %s]%s",
             o->def != NULL ? o->def : "none", o->reloadable ? " [reloadable]" : "");
    print_wrapped(out, details);
}

void config_print_help(FILE *out, const char *prog)
{
    fprintf(out,
            "Usage: %s [OPTIONS]\n"
            "       %s generate-certs [--output-dir DIR] [--san NAME]...\n\n"
            "OpenShell-compatible gateway. Each setting comes from its flag, else its\n"
            "OPENSHELL_* environment variable, else the TOML file, else its default.\n"
            "Flags take \"--flag value\" or \"--flag=value\"; booleans also \"--flag\" alone.\n"
            "[reloadable] settings are re-read on SIGHUP. generate-certs creates the local\n"
            "TLS bundle the gateway uses when no --tls-cert/--tls-key is set.\n\nOptions:\n",
            prog, prog);
    for (size_t i = 0; i < config_options_len; i++)
        if (config_options[i].flag != NULL)
            print_option_help(out, &config_options[i]);
    fputs("\nConfiguration file only:\n", out);
    for (size_t i = 0; i < config_options_len; i++)
        if (config_options[i].flag == NULL)
            print_option_help(out, &config_options[i]);
}

void config_print_options(FILE *out)
{
    for (size_t i = 0; i < config_options_len; i++) {
        const struct config_option *o = &config_options[i];
        fprintf(out, "%s%s%s\t%s\t%s\t%s\n", o->flag != NULL ? o->flag : "-",
                o->alias != NULL ? "," : "", o->alias != NULL ? o->alias : "",
                o->env != NULL ? o->env : "-", o->key != NULL ? o->key : "-",
                o->type == CT_ACTION ? "-" : (o->def != NULL ? o->def : "none"));
    }
}
