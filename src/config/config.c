/*
 * Sources and precedence. A load starts from the defaults and applies the
 * TOML file, then the environment, then the flags, each replacing what came
 * before; so a file value only survives where neither a variable nor a flag
 * names the setting, and "bind_address = ip:port" in the file still yields
 * to --port for the port alone. The result replaces the caller's struct only
 * when every source and the cross-checks succeed.
 */
#include "config/config.h"
#include "config/config_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/un.h>

#ifdef HAVE_CONFIG_H
#include <config.h> /* autoconf's, found through -I. before src/ */
#endif
#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.0.0-dev"
#endif

#define KEY_MAX  128 /* longest dotted TOML path we look up */
#define SHOW_MAX 64

/* Where a setting's value came from; later sources win. */
enum source {
    SRC_DEFAULT = 0,
    SRC_FILE,
    SRC_ENV,
    SRC_FLAG,
};

/* State of one config_load()/config_reload() call. */
struct load {
    const char **flag_value; /* per option: last value on the command line, or NULL */
    enum source *src;        /* per option: where the value in use came from */
    enum config_action action;
    char *err;
    size_t errlen;
};

static size_t option_index(const struct config_option *o)
{
    return (size_t)(o - config_options);
}

GW_PRINTF(3, 4)
static int fail(struct load *ld, int code, const char *fmt, ...)
{
    va_list ap;
    if (ld->err != NULL && ld->errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(ld->err, ld->errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ---- defaults ------------------------------------------------------------------ */

/* $|var|/|suffix| when |var| is absolute (the XDG spec says to ignore
 * relative values), else $HOME/|home_rel|/|suffix|; NULL without HOME.
 * Caller owns the result. */
static char *xdg_path(const char *var, const char *home_rel, const char *suffix)
{
    const char *base = getenv(var);
    const char *home = getenv("HOME");

    if (base != NULL && base[0] == '/')
        return gw_xasprintf("%s/%s", base, suffix);
    if (home == NULL || home[0] == '\0')
        return NULL;
    return gw_xasprintf("%s/%s/%s", home, home_rel, suffix);
}

char *config_local_tls_dir(void)
{
    const char *dir = getenv("OPENSHELL_LOCAL_TLS_DIR");

    if (dir != NULL && dir[0] != '\0')
        return gw_xstrdup(dir);
    /* Same split as the state directory: root is a system service. */
    if (geteuid() == 0 && getenv("XDG_STATE_HOME") == NULL)
        return gw_xstrdup("/var/lib/openshell/tls");
    return xdg_path("XDG_STATE_HOME", ".local/state", "openshell/tls");
}

void config_init(struct config *c)
{
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < config_options_len; i++) {
        const struct config_option *o = &config_options[i];
        if (o->def == NULL || o->computed_default || o->type == CT_FILE_KEY)
            continue;
        /* The table's defaults are part of the program: they always parse. */
        int rc = config_option_set_text(c, o, o->def, o->name, NULL, 0);
        GW_ASSERT(rc == 0);
    }
    /* root runs as a system service: its state lives under /var/lib, which
     * the embedded database's postgres user can traverse (root's home is
     * 0700). Other users get the XDG location. */
    if (geteuid() == 0 && getenv("XDG_STATE_HOME") == NULL)
        c->state_dir = gw_xstrdup("/var/lib/openshell/gateway");
    else
        c->state_dir = xdg_path("XDG_STATE_HOME", ".local/state", "openshell/gateway");
}

void config_free(struct config *c)
{
    free(c->config_path);
    free(c->bind_address);
    free(c->metrics_address);
    free(c->unix_socket);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->tls_client_ca);
    free(c->tls_bundle_dir);
    free(c->jwt_bundle_dir);
    free(c->state_dir);
    free(c->supervisor_socket);
    free(c->sandbox_endpoint);
    free(c->jwt_signing_key);
    free(c->jwt_public_key);
    free(c->jwt_kid_file);
    free(c->jwt_gateway_id);
    free(c->db_url);
    for (size_t i = 0; i < c->n_drivers; i++)
        free(c->drivers[i]);
    free(c->drivers);
    free(c->compute_driver_socket);
    for (size_t i = 0; i < c->n_driver_tables; i++) {
        free(c->driver_tables[i].name);
        free(c->driver_tables[i].socket_path);
        free(c->driver_tables[i].program);
        free(c->driver_tables[i].supervisor);
        free(c->driver_tables[i].rootfs);
    }
    free(c->driver_tables);
    memset(c, 0, sizeof(*c));
}

/* ---- command line ---------------------------------------------------------------- */

/* One argument (and, for "--flag value", the next one). Values are only
 * recorded here; they are parsed after the file so precedence holds. */
static int scan_one(struct load *ld, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    const char *eq = strchr(a, '=');
    size_t len = eq != NULL ? (size_t)(eq - a) : strlen(a);
    const struct config_option *o = a[0] == '-' ? config_option_by_flag(a, len) : NULL;
    const char **slot;

    if (a[0] != '-')
        return fail(ld, CONFIG_ERR_USAGE, "unexpected argument '%.*s' (see --help)", SHOW_MAX, a);
    if (o == NULL)
        return fail(ld, CONFIG_ERR_USAGE, "unknown option '%.*s' (see --help)",
                    (int)GW_MIN(len, SHOW_MAX), a);
    if (o->type == CT_ACTION) {
        if (eq != NULL)
            return fail(ld, CONFIG_ERR_USAGE, "%s takes no value", o->flag);
        if (ld->action == CONFIG_RUN)
            ld->action = o->action;
        return 0;
    }
    slot = &ld->flag_value[option_index(o)];
    if (eq != NULL)
        *slot = eq + 1;
    else if (o->type == CT_BOOL)
        *slot = "true";
    else if (*i + 1 < argc && strncmp(argv[*i + 1], "--", 2) != 0)
        *slot = argv[++*i];
    else
        return fail(ld, CONFIG_ERR_USAGE, "%s needs a value", o->flag);
    return 0;
}

static int scan_argv(struct load *ld, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        int rc = scan_one(ld, argc, argv, &i);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static void print_action(FILE *out, enum config_action action, int argc, char **argv)
{
    const char *prog = argc > 0 && argv[0] != NULL ? argv[0] : "openshell-gateway";
    const char *slash = strrchr(prog, '/');

    if (out == NULL)
        return;
    if (slash != NULL)
        prog = slash + 1;
    if (action == CONFIG_HELP)
        config_print_help(out, prog);
    else if (action == CONFIG_VERSION)
        fprintf(out, "openshell-gateway %s\n", PACKAGE_VERSION);
    else if (action == CONFIG_LIST_OPTIONS)
        config_print_options(out);
}

/* ---- the TOML file ----------------------------------------------------------------- */

/* --config, else OPENSHELL_GATEWAY_CONFIG, else the XDG default if it
 * exists. Sets |*path| (caller owns) or leaves it NULL when there is none. */
static int find_file(struct load *ld, char **path)
{
    const struct config_option *o = config_option_by_name("config");
    const char *v = ld->flag_value[option_index(o)];
    struct stat st;

    if (v == NULL && getenv(o->env) != NULL && getenv(o->env)[0] != '\0')
        v = getenv(o->env);
    if (v != NULL && v[0] == '\0')
        return fail(ld, CONFIG_ERR_USAGE, "%s: the value must not be empty", o->flag);
    if (v != NULL) {
        *path = gw_xstrdup(v);
        return 0;
    }
    *path = xdg_path("XDG_CONFIG_HOME", ".config", "openshell/gateway.toml");
    if (*path != NULL && stat(*path, &st) != 0 && errno == ENOENT) {
        free(*path);
        *path = NULL;
    }
    return 0;
}

static bool is_bare_key(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return false;
    return true;
}

static int refuse_db_url(struct load *ld, const char *file, const struct toml_value *v)
{
    return fail(ld, CONFIG_ERR_FILE,
                "%s:%u:%u: db_url cannot be set in the config file; use --db-url or "
                "OPENSHELL_DB_URL",
                file, toml_line(v), toml_col(v));
}

static int driver_string_key(struct load *ld, struct config_driver *d, const char *key,
                             const struct toml_value *v, const char *file, char **out)
{
    if (toml_type(v) != TOML_STRING || toml_string(v)[0] == '\0')
        return fail(ld, CONFIG_ERR_FILE,
                    "%s:%u:%u: openshell.drivers.%s.%s: expected a non-empty string", file,
                    toml_line(v), toml_col(v), d->name, key);
    free(*out);
    *out = gw_xstrdup(toml_string(v));
    return 0;
}

static int apply_driver_key(struct load *ld, struct config_driver *d, const char *key,
                            const struct toml_value *v, const char *file)
{
    char buf[SHOW_MAX + 4];

    if (strcmp(key, "db_url") == 0)
        return refuse_db_url(ld, file, v);
    if (strcmp(key, "socket_path") == 0)
        return driver_string_key(ld, d, key, v, file, &d->socket_path);
    if (strcmp(key, "program") == 0)
        return driver_string_key(ld, d, key, v, file, &d->program);
    if (strcmp(key, "supervisor") == 0)
        return driver_string_key(ld, d, key, v, file, &d->supervisor);
    if (strcmp(key, "rootfs") == 0)
        return driver_string_key(ld, d, key, v, file, &d->rootfs);
    if (strcmp(key, "allow_host_network") == 0) {
        if (toml_type(v) != TOML_BOOL)
            return fail(ld, CONFIG_ERR_FILE,
                        "%s:%u:%u: openshell.drivers.%s.allow_host_network: expected a boolean",
                        file, toml_line(v), toml_col(v), d->name);
        d->allow_host_network = toml_bool(v);
        return 0;
    }
    return fail(ld, CONFIG_ERR_FILE, "%s:%u:%u: unknown key 'openshell.drivers.%s.%s'", file,
                toml_line(v), toml_col(v), d->name, config_show(key, buf, sizeof(buf)));
}

/* One [openshell.drivers.<name>] table; the name is normalized first so
 * "Docker" and "docker" are the same driver. */
static int apply_driver_table(struct config *c, struct load *ld, const char *name,
                              const struct toml_value *t, const char *file)
{
    char buf[SHOW_MAX + 4];
    char *norm = config_driver_name_normalize(name);
    struct config_driver *d;

    if (toml_type(t) != TOML_TABLE || norm == NULL) {
        free(norm);
        return fail(ld, CONFIG_ERR_FILE,
                    "%s:%u:%u: openshell.drivers.%s: expected a table [openshell.drivers.<name>] "
                    "whose name has only letters, digits, '-' and '_'",
                    file, toml_line(t), toml_col(t), config_show(name, buf, sizeof(buf)));
    }
    for (size_t i = 0; i < c->n_driver_tables; i++) {
        if (strcmp(c->driver_tables[i].name, norm) == 0) {
            free(norm);
            return fail(ld, CONFIG_ERR_FILE, "%s:%u:%u: driver table '%s' is defined twice", file,
                        toml_line(t), toml_col(t), c->driver_tables[i].name);
        }
    }
    c->driver_tables =
        gw_xrealloc(c->driver_tables, (c->n_driver_tables + 1) * sizeof(*c->driver_tables));
    d = &c->driver_tables[c->n_driver_tables++];
    memset(d, 0, sizeof(*d));
    d->name = norm;
    for (size_t i = 0; i < toml_table_len(t); i++) {
        int rc = apply_driver_key(ld, d, toml_table_key(t, i), toml_table_at(t, i), file);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int apply_version(struct load *ld, const struct toml_value *v, const char *file)
{
    if (toml_type(v) != TOML_INT || toml_int(v) < 0 || toml_int(v) > 1)
        return fail(ld, CONFIG_ERR_FILE,
                    "%s:%u:%u: openshell.version: unsupported version (this gateway reads "
                    "version 1)",
                    file, toml_line(v), toml_col(v));
    return 0;
}

static int apply_table(struct config *c, struct load *ld, const struct toml_value *t,
                       const char *prefix, const char *file);

/* One key of a known table, at dotted path |prefix|.|key|. */
static int apply_entry(struct config *c, struct load *ld, const char *prefix, const char *key,
                       const struct toml_value *v, const char *file)
{
    char path[KEY_MAX];
    char src[KEY_MAX + 256];
    char buf[SHOW_MAX + 4];
    const struct config_option *o = NULL;
    bool table = toml_type(v) == TOML_TABLE;
    int n = snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "", key);

    if (strcmp(key, "db_url") == 0)
        return refuse_db_url(ld, file, v);
    if (table && strcmp(path, "openshell.drivers") == 0) {
        for (size_t i = 0; i < toml_table_len(v); i++) {
            int rc = apply_driver_table(c, ld, toml_table_key(v, i), toml_table_at(v, i), file);
            if (rc != 0)
                return rc;
        }
        return 0;
    }
    if (is_bare_key(key) && (size_t)n < sizeof(path)) {
        if (table && config_table_known(path))
            return apply_table(c, ld, v, path, file);
        if (!table && config_table_known(path))
            return fail(ld, CONFIG_ERR_FILE, "%s:%u:%u: %s: expected a table", file, toml_line(v),
                        toml_col(v), path);
        o = config_option_by_key(path);
    }
    if (o == NULL)
        return fail(ld, CONFIG_ERR_FILE, "%s:%u:%u: unknown %s '%s%s%s'", file, toml_line(v),
                    toml_col(v), table ? "table" : "key", prefix, *prefix ? "." : "",
                    config_show(key, buf, sizeof(buf)));
    if (o->type == CT_FILE_KEY)
        return apply_version(ld, v, file);
    snprintf(src, sizeof(src), "%s:%u:%u: %s", file, toml_line(v), toml_col(v), path);
    if (config_option_set_toml(c, o, v, src, ld->err, ld->errlen) != 0)
        return CONFIG_ERR_FILE;
    ld->src[option_index(o)] = SRC_FILE;
    return 0;
}

/* Recursion only follows tables the option table knows, three levels at most. */
static int apply_table(struct config *c, struct load *ld, const struct toml_value *t,
                       const char *prefix, const char *file)
{
    for (size_t i = 0; i < toml_table_len(t); i++) {
        int rc = apply_entry(c, ld, prefix, toml_table_key(t, i), toml_table_at(t, i), file);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int apply_file(struct config *c, struct load *ld, char **path)
{
    struct toml_value *root = NULL;
    int rc = find_file(ld, path);

    if (rc != 0 || *path == NULL)
        return rc;
    if (toml_parse_file(*path, &root, ld->err, ld->errlen) != 0)
        return CONFIG_ERR_FILE;
    rc = apply_table(c, ld, root, "", *path);
    toml_free(root);
    return rc;
}

/* ---- environment and flags ------------------------------------------------------------ */

/* Empty variables count as unset, as with upstream's command-line parser. */
static int apply_env(struct config *c, struct load *ld)
{
    for (size_t i = 0; i < config_options_len; i++) {
        const struct config_option *o = &config_options[i];
        const char *v = o->env != NULL && o->type != CT_CONFIG ? getenv(o->env) : NULL;
        if (v == NULL || v[0] == '\0')
            continue;
        if (config_option_set_text(c, o, v, o->env, ld->err, ld->errlen) != 0)
            return CONFIG_ERR_USAGE;
        ld->src[i] = SRC_ENV;
    }
    return 0;
}

static int apply_flags(struct config *c, struct load *ld)
{
    for (size_t i = 0; i < config_options_len; i++) {
        const struct config_option *o = &config_options[i];
        if (ld->flag_value[i] == NULL || o->type == CT_CONFIG)
            continue;
        if (config_option_set_text(c, o, ld->flag_value[i], o->flag, ld->err, ld->errlen) != 0)
            return CONFIG_ERR_USAGE;
        ld->src[i] = SRC_FLAG;
    }
    return 0;
}

/* ---- cross-checks ------------------------------------------------------------------ */

static int check_tls(struct config *c, struct load *ld)
{
    if (c->disable_tls)
        return 0;
    if (c->tls_cert == NULL && c->tls_key == NULL)
        return fail(ld, CONFIG_ERR_USAGE,
                    "TLS is enabled but --tls-cert and --tls-key are not both set and there is "
                    "no local TLS bundle (run `openshell-gateway generate-certs` to create one, "
                    "set --tls-cert and --tls-key, or use --disable-tls)");
    if (c->tls_cert == NULL || c->tls_key == NULL)
        return fail(ld, CONFIG_ERR_USAGE,
                    "TLS is enabled but --tls-cert and --tls-key are not both set "
                    "(set them, or use --disable-tls)");
    if (c->tls_require_client_cert && c->tls_client_ca == NULL)
        return fail(ld, CONFIG_ERR_USAGE, "--tls-require-client-cert needs --tls-client-ca");
    return 0;
}

/* ---- the local TLS bundle (semantics.md "Local bundle auto-detection") ------------------ */

const char *const config_local_tls_files[CONFIG_LOCAL_TLS_FILES] = {
    "ca.crt", "server/tls.crt", "server/tls.key", "client/tls.crt", "client/tls.key",
};
const char *const config_local_jwt_files[CONFIG_LOCAL_JWT_FILES] = {
    "jwt/signing.pem",
    "jwt/public.pem",
    "jwt/kid",
};

/* How many of the |n| |files| exist under |dir|; the missing ones are
 * appended to |missing| as a comma list. */
static size_t probe_bundle(const char *dir, const char *const *files, size_t n,
                           struct gw_buf *missing)
{
    size_t found = 0;
    struct stat st;

    for (size_t i = 0; i < n; i++) {
        char *p = gw_xasprintf("%s/%s", dir, files[i]);
        if (stat(p, &st) == 0)
            found++;
        else
            gw_buf_appendf(missing, "%s%s", missing->len > 0 ? ", " : "", files[i]);
        free(p);
    }
    return found;
}

/* With TLS on and neither certificate nor key set anywhere, the bundle's
 * server certificate and key serve, and its CA verifies client
 * certificates (required at the handshake unless
 * --tls-require-client-cert says otherwise: upstream requires mTLS when a
 * client CA is set and no OIDC issuer is, and this gateway has no OIDC). */
static int apply_tls_bundle(struct config *c, struct load *ld, const char *dir)
{
    const struct config_option *req = config_option_by_name("tls_require_client_cert");
    struct gw_buf missing = {0};
    size_t n;
    int rc = 0;

    if (c->disable_tls || c->tls_cert != NULL || c->tls_key != NULL)
        return 0;
    n = probe_bundle(dir, config_local_tls_files, CONFIG_LOCAL_TLS_FILES, &missing);
    if (n > 0 && n < CONFIG_LOCAL_TLS_FILES) {
        rc = fail(ld, CONFIG_ERR_USAGE,
                  "local TLS bundle %s is incomplete: missing %s (restore the missing files, "
                  "or move the directory away and run `openshell-gateway generate-certs`, or "
                  "set --tls-cert and --tls-key)",
                  dir, gw_buf_cstr(&missing));
    } else if (n == CONFIG_LOCAL_TLS_FILES) {
        c->tls_cert = gw_xasprintf("%s/%s", dir, config_local_tls_files[CONFIG_LOCAL_SERVER_CRT]);
        c->tls_key = gw_xasprintf("%s/%s", dir, config_local_tls_files[CONFIG_LOCAL_SERVER_KEY]);
        if (c->tls_client_ca == NULL) {
            c->tls_client_ca =
                gw_xasprintf("%s/%s", dir, config_local_tls_files[CONFIG_LOCAL_CA_CRT]);
            if (ld->src[option_index(req)] == SRC_DEFAULT)
                c->tls_require_client_cert = true;
        }
        c->tls_bundle_dir = gw_xstrdup(dir);
    }
    gw_buf_free(&missing);
    return rc;
}

/* Sandbox-token keys named nowhere come from the bundle when it has all three. */
static int apply_jwt_bundle(struct config *c, struct load *ld, const char *dir)
{
    struct gw_buf missing = {0};
    size_t n;
    int rc = 0;

    if (c->jwt_signing_key != NULL || c->jwt_public_key != NULL || c->jwt_kid_file != NULL)
        return 0;
    n = probe_bundle(dir, config_local_jwt_files, CONFIG_LOCAL_JWT_FILES, &missing);
    if (n > 0 && n < CONFIG_LOCAL_JWT_FILES) {
        rc = fail(ld, CONFIG_ERR_USAGE,
                  "local TLS bundle %s has an incomplete sandbox token key set: missing %s "
                  "(restore the missing files, remove the rest of %s/jwt, or set "
                  "--jwt-signing-key, --jwt-public-key and --jwt-kid-file)",
                  dir, gw_buf_cstr(&missing), dir);
    } else if (n == CONFIG_LOCAL_JWT_FILES) {
        c->jwt_signing_key =
            gw_xasprintf("%s/%s", dir, config_local_jwt_files[CONFIG_LOCAL_JWT_SIGNING]);
        c->jwt_public_key =
            gw_xasprintf("%s/%s", dir, config_local_jwt_files[CONFIG_LOCAL_JWT_PUBLIC]);
        c->jwt_kid_file = gw_xasprintf("%s/%s", dir, config_local_jwt_files[CONFIG_LOCAL_JWT_KID]);
        c->jwt_bundle_dir = gw_xstrdup(dir);
    }
    gw_buf_free(&missing);
    return rc;
}

static int apply_local_bundle(struct config *c, struct load *ld)
{
    char *dir = config_local_tls_dir();
    int rc = 0;

    if (dir == NULL)
        return 0;
    rc = apply_tls_bundle(c, ld, dir);
    if (rc == 0)
        rc = apply_jwt_bundle(c, ld, dir);
    free(dir);
    return rc;
}

/* The extra listeners must not collide with the main one or each other;
 * port 0 means "off" for them and "any free port" for the main listener. */
static int check_ports(struct config *c, struct load *ld)
{
    if (c->health_port != 0 && c->health_port == c->port)
        return fail(ld, CONFIG_ERR_USAGE, "--health-port %u must differ from --port",
                    c->health_port);
    if (c->metrics_port != 0 && c->metrics_port == c->port)
        return fail(ld, CONFIG_ERR_USAGE, "--metrics-port %u must differ from --port",
                    c->metrics_port);
    if (c->metrics_port != 0 && c->metrics_port == c->health_port)
        return fail(ld, CONFIG_ERR_USAGE, "--metrics-port %u must differ from --health-port",
                    c->metrics_port);
    return 0;
}

static int check_drivers(struct config *c, struct load *ld)
{
    enum source from = ld->src[option_index(config_option_by_name("drivers"))];

    if (c->n_drivers > 1)
        return fail(ld, CONFIG_ERR_USAGE, "multiple compute drivers are not supported yet");
    if (c->compute_driver_socket != NULL && (c->n_drivers != 1 || from < SRC_ENV))
        return fail(ld, CONFIG_ERR_USAGE,
                    "--compute-driver-socket needs exactly one driver named with --drivers or "
                    "OPENSHELL_DRIVERS");
    return 0;
}

static bool socket_path_fits(const char *path)
{
    return path == NULL || strlen(path) < sizeof(((struct sockaddr_un *)NULL)->sun_path);
}

static int check_sockets(struct config *c, struct load *ld)
{
    size_t max = sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1;

    if (!socket_path_fits(c->unix_socket))
        return fail(ld, CONFIG_ERR_USAGE, "--unix-socket: path longer than %zu bytes", max);
    /* A default too long for sun_path fails when the listener opens. */
    if (c->supervisor_socket != NULL && !socket_path_fits(c->supervisor_socket))
        return fail(ld, CONFIG_ERR_USAGE,
                    "--supervisor-socket: path longer than %zu bytes (%s); choose a shorter "
                    "--supervisor-socket or --state-dir",
                    max, c->supervisor_socket);
    if (c->supervisor_socket == NULL)
        c->supervisor_socket = gw_xasprintf("%s/run/supervisor.sock", c->state_dir);
    if (c->sandbox_endpoint == NULL)
        c->sandbox_endpoint = gw_xasprintf("unix:%s", c->supervisor_socket);
    if (strncmp(c->sandbox_endpoint, "unix:", 5) != 0 &&
        strncmp(c->sandbox_endpoint, "http://", 7) != 0 &&
        strncmp(c->sandbox_endpoint, "https://", 8) != 0)
        return fail(ld, CONFIG_ERR_USAGE,
                    "--sandbox-endpoint: expected unix:<path>, http://<ip>:<port> or "
                    "https://<ip>:<port>");
    if (!socket_path_fits(c->compute_driver_socket))
        return fail(ld, CONFIG_ERR_USAGE, "--compute-driver-socket: path longer than %zu bytes",
                    max);
    for (size_t i = 0; i < c->n_driver_tables; i++)
        if (!socket_path_fits(c->driver_tables[i].socket_path))
            return fail(ld, CONFIG_ERR_FILE,
                        "openshell.drivers.%s.socket_path: path longer than %zu bytes",
                        c->driver_tables[i].name, max);
    return 0;
}

static int check_settings(struct config *c, struct load *ld)
{
    int rc;

    if (c->state_dir == NULL)
        return fail(ld, CONFIG_ERR_USAGE,
                    "no state directory: HOME and XDG_STATE_HOME are unset (use --state-dir)");
    rc = apply_local_bundle(c, ld);
    if (rc != 0)
        return rc;
    if (c->jwt_signing_key == NULL)
        c->jwt_signing_key = gw_xasprintf("%s/jwt/signing_key.pem", c->state_dir);
    if (c->jwt_public_key == NULL)
        c->jwt_public_key = gw_xasprintf("%s/jwt/public_key.pem", c->state_dir);
    if (c->jwt_kid_file == NULL)
        c->jwt_kid_file = gw_xasprintf("%s/jwt/kid", c->state_dir);
    if (c->jwt_gateway_id == NULL || c->jwt_gateway_id[0] == '\0' ||
        strlen(c->jwt_gateway_id) > 128 ||
        strspn(c->jwt_gateway_id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "0123456789._:-") != strlen(c->jwt_gateway_id))
        return fail(ld, CONFIG_ERR_USAGE,
                    "--jwt-gateway-id: 1 to 128 characters from A-Z a-z 0-9 . _ : -");
    rc = check_tls(c, ld);
    if (rc == 0)
        rc = check_ports(c, ld);
    if (rc == 0)
        rc = check_drivers(c, ld);
    if (rc == 0)
        rc = check_sockets(c, ld);
    return rc;
}

/* ---- entry points ---------------------------------------------------------------- */

static int load(struct config *out, int argc, char **argv, FILE *fp, enum config_action *action,
                char *err, size_t errlen)
{
    struct load ld = {.err = err, .errlen = errlen, .action = CONFIG_RUN};
    struct config c;
    char *path = NULL;
    int rc;

    *action = CONFIG_RUN;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    config_init(&c);
    ld.flag_value = gw_xcalloc(config_options_len, sizeof(*ld.flag_value));
    ld.src = gw_xcalloc(config_options_len, sizeof(*ld.src));
    rc = scan_argv(&ld, argc, argv);
    if (rc != 0 || ld.action != CONFIG_RUN) {
        *action = ld.action;
        if (rc == 0)
            print_action(fp, ld.action, argc, argv);
        goto out;
    }
    rc = apply_file(&c, &ld, &path);
    if (rc == 0)
        rc = apply_env(&c, &ld);
    if (rc == 0)
        rc = apply_flags(&c, &ld);
    if (rc == 0)
        rc = check_settings(&c, &ld);
    if (rc == 0) {
        c.config_path = path;
        path = NULL;
        config_free(out);
        *out = c;
        memset(&c, 0, sizeof(c));
    }
out:
    config_free(&c);
    free(path);
    free(ld.flag_value);
    free(ld.src);
    return rc;
}

int config_load(struct config *c, int argc, char **argv, FILE *out, enum config_action *action,
                char *err, size_t errlen)
{
    return load(c, argc, argv, out, action, err, errlen);
}

/* Loads everything again, as at startup, and keeps only the reloadable
 * settings, so a SIGHUP can never half-apply a broken file. */
int config_reload(struct config *c, int argc, char **argv, char *err, size_t errlen)
{
    struct config fresh;
    enum config_action action;
    int rc;

    memset(&fresh, 0, sizeof(fresh));
    rc = load(&fresh, argc, argv, NULL, &action, err, errlen);
    if (rc != 0 || action != CONFIG_RUN)
        return rc;
    for (size_t i = 0; i < config_options_len; i++)
        if (config_options[i].reloadable)
            config_option_move(c, &fresh, &config_options[i]);
    config_free(&fresh);
    return 0;
}
