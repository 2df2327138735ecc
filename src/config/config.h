/*
 * config: the gateway's settings, resolved from one option table with the
 * precedence flag > OPENSHELL_* environment > TOML file > default.
 *
 * The option table (config_options.c) names, for every setting, its flag,
 * environment variable, TOML key, type, default, whether SIGHUP reloads it,
 * and its help text. `--help`, parsing, precedence and the docs check
 * (`openshell-gateway --list-options`) all read that one table.
 *
 * Key names follow upstream OpenShell where upstream has the setting:
 * [openshell.gateway] bind_address = "ip:port", log_level, disable_tls,
 * compute_drivers = [..], [openshell.gateway.tls] cert_path/key_path/
 * client_ca_path, [openshell.drivers.<name>] socket_path. The database URL
 * is refused in the file, as upstream does (it may carry a password).
 */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "base/base.h"

#define CONFIG_ERR_USAGE (-1) /* bad flag, bad value or conflicting settings */
#define CONFIG_ERR_FILE  (-2) /* the TOML file is unreadable or invalid */

/* Outcome of config_load() besides errors. */
enum config_action {
    CONFIG_RUN = 0,      /* start the gateway */
    CONFIG_HELP,         /* --help was printed; exit 0 */
    CONFIG_VERSION,      /* --version was printed; exit 0 */
    CONFIG_LIST_OPTIONS, /* --list-options was printed; exit 0 */
};

/* [openshell.drivers.<name>] table. */
struct config_driver {
    char *name;        /* normalized (trimmed, lower-case) */
    char *socket_path; /* NULL when the table has no socket_path */
    /* Options of a managed (built-in) driver; NULL/false when absent. */
    char *program;           /* driver program instead of the one next to the gateway */
    char *supervisor;        /* supervisor program handed to the driver */
    char *rootfs;            /* root filesystem directory for sandboxes */
    bool allow_host_network; /* let driver_config ask for the host network */
};

struct config {
    char *config_path; /* file actually loaded, or NULL */

    /* listeners */
    char *bind_address;    /* numeric IP, default "127.0.0.1" */
    uint16_t port;         /* default 17670; 0 = any free port */
    uint16_t health_port;  /* 0 = off */
    uint16_t metrics_port; /* 0 = off */
    char *metrics_address; /* numeric IP of the /metrics listener, default "127.0.0.1" */
    char *unix_socket;     /* extra Unix-socket listener (h2c), NULL = none */

    /* TLS */
    bool disable_tls;
    char *tls_cert;
    char *tls_key;
    char *tls_client_ca;
    bool tls_require_client_cert; /* with a client CA: refuse clients without one */
    char *tls_bundle_dir;         /* local bundle the TLS files came from, or NULL */
    char *jwt_bundle_dir;         /* local bundle the sandbox-token keys came from, or NULL */

    /* logging */
    enum log_level log_level;
    enum log_format log_format;

    /* state, database, drivers */
    char *state_dir; /* default $XDG_STATE_HOME/openshell/gateway */
    char *db_url;    /* NULL = embedded PostgreSQL under state_dir */
    char **drivers;  /* NULL-terminated list of normalized names */
    size_t n_drivers;
    char *compute_driver_socket;
    bool allow_driver_name_mismatch;    /* GetCapabilities name may differ from the configured */
    uint32_t driver_connect_timeout_ms; /* startup budget to reach a driver, default 30000 */
    struct config_driver *driver_tables;
    size_t n_driver_tables;

    /* supervisors and sandbox identity */
    char *supervisor_socket;       /* NULL: <state_dir>/run/supervisor.sock */
    char *sandbox_endpoint;        /* NULL: unix:<supervisor_socket> */
    char *jwt_signing_key;         /* NULL: <state_dir>/jwt/signing_key.pem */
    char *jwt_public_key;          /* NULL: <state_dir>/jwt/public_key.pem */
    char *jwt_kid_file;            /* NULL: <state_dir>/jwt/kid */
    char *jwt_gateway_id;          /* default "openshell" */
    uint32_t jwt_ttl_secs;         /* default 0 = never expires */
    uint32_t ssh_session_ttl_secs; /* default 86400 */

    /* gRPC limits */
    uint32_t max_recv_msg_bytes;     /* default 4 MiB */
    uint32_t max_concurrent_streams; /* default 256 */
    uint32_t shutdown_grace_ms;      /* drain bound on SIGTERM, default 10000 */

    /* diagnostics */
    bool enable_diagnostics; /* serve the diagnostics service, default false */
};

/* Sets every field to its built-in default. */
void config_init(struct config *c);
/* Frees everything config_init()/config_load() allocated. */
void config_free(struct config *c);

/* Resolves the configuration from |argv| (argv[0] is the program name),
 * the environment (getenv) and the TOML file named by --config /
 * OPENSHELL_GATEWAY_CONFIG (else $XDG_CONFIG_HOME/openshell/gateway.toml
 * when it exists). Help and version text go to |out| (NULL: not printed).
 * |c| must hold config_init() output or be all-zero; on success its old
 * contents are freed and replaced, on error |c| is unchanged.
 * Returns 0 and sets |*action|, or CONFIG_ERR_* with a one-line message
 * (for TOML errors "file:line:col: message") in |err|: CONFIG_ERR_FILE for
 * anything wrong in or with the file, CONFIG_ERR_USAGE for flags,
 * environment values and conflicting settings. */
int config_load(struct config *c, int argc, char **argv, FILE *out, enum config_action *action,
                char *err, size_t errlen) GW_MUSTCHECK;

/* Re-reads the settings that SIGHUP may change (log level and format, TLS
 * file paths) into |c| from the same sources. On error |c| is unchanged. */
int config_reload(struct config *c, int argc, char **argv, char *err, size_t errlen) GW_MUSTCHECK;

/* The local TLS bundle directory shared by openshell-gateway (generate-certs,
 * auto-detection) and the openshell CLI: $OPENSHELL_LOCAL_TLS_DIR, else
 * /var/lib/openshell/tls for root without XDG_STATE_HOME, else
 * $XDG_STATE_HOME/openshell/tls (default ~/.local/state). Layout: ca.crt,
 * server/tls.{crt,key}, client/tls.{crt,key}, jwt/{signing.pem,public.pem,kid}
 * (plus ca.key, 0600, kept only for issuing more certificates). Caller frees;
 * NULL when HOME is unset too. */
char *config_local_tls_dir(void);

/* The bundle's files, relative to its directory, in this order: the TLS
 * set (all five or none) and the sandbox-token key set (all three or none). */
#define CONFIG_LOCAL_TLS_FILES 5
#define CONFIG_LOCAL_JWT_FILES 3
enum {
    CONFIG_LOCAL_CA_CRT = 0, /* ca.crt */
    CONFIG_LOCAL_SERVER_CRT, /* server/tls.crt */
    CONFIG_LOCAL_SERVER_KEY, /* server/tls.key */
    CONFIG_LOCAL_CLIENT_CRT, /* client/tls.crt */
    CONFIG_LOCAL_CLIENT_KEY, /* client/tls.key */
};
enum {
    CONFIG_LOCAL_JWT_SIGNING = 0, /* jwt/signing.pem */
    CONFIG_LOCAL_JWT_PUBLIC,      /* jwt/public.pem */
    CONFIG_LOCAL_JWT_KID,         /* jwt/kid */
};
extern const char *const config_local_tls_files[CONFIG_LOCAL_TLS_FILES];
extern const char *const config_local_jwt_files[CONFIG_LOCAL_JWT_FILES];

/* Normalizes a driver name in place semantics: trimmed, ASCII lower-cased;
 * only letters, digits, '-' and '_' allowed. Returns a new string (caller
 * owns, free()) or NULL when the name is empty or has other characters. */
char *config_driver_name_normalize(const char *name);

/* Prints every option (flag, env, TOML key, default) one per line, tab
 * separated; used by the docs check. */
void config_print_options(FILE *out);

#endif /* GW_CONFIG_H */
