/*
 * config: declarations shared by config.c (sources and precedence) and
 * config_options.c (the option table and how each type of value is parsed).
 */
#ifndef GW_CONFIG_INT_H
#define GW_CONFIG_INT_H

#include "config/config.h"
#include "toml/toml.h"

/* How an option's value is read and stored. */
enum config_type {
    CT_ACTION,   /* --help, --version, --list-options: no value */
    CT_CONFIG,   /* --config: names the file, resolved before everything else */
    CT_STRING,   /* non-empty string (paths, URLs) into a char * */
    CT_BOOL,     /* true/false/1/0/yes/no/on/off into a bool */
    CT_U32,      /* decimal in [min, max] into a uint32_t */
    CT_PORT,     /* decimal 0..65535 into a uint16_t */
    CT_IP,       /* numeric IPv4 or IPv6 literal into a char * */
    CT_LEVEL,    /* log level name into an enum log_level */
    CT_FORMAT,   /* "text" or "json" into an enum log_format */
    CT_DRIVERS,  /* comma list (flag, env) or array of strings (file) */
    CT_FILE_KEY, /* a file-only key that config.c handles itself */
};

/* One row of the option table. Rows with a flag appear in --help's option
 * list; every row appears in --list-options. */
struct config_option {
    const char *name;  /* identifier, e.g. "bind_address" */
    const char *flag;  /* "--bind-address", or NULL for file-only keys */
    const char *alias; /* second spelling ("--driver", "-h"), or NULL */
    const char *env;   /* OPENSHELL_* variable, or NULL */
    const char *key;   /* full dotted TOML path, or NULL when refused in the file */
    enum config_type type;
    /* The TOML value is "ip:port": for CT_IP the IP goes to |off| and the
     * port to |port_off|; for CT_PORT only the port is kept, in |off|. */
    bool addr_key;
    size_t off;      /* field in struct config */
    size_t port_off; /* CT_IP with addr_key */
    uint32_t min;    /* CT_U32 bounds */
    uint32_t max;
    enum config_action action; /* CT_ACTION */
    const char *arg;           /* value placeholder in --help, e.g. "<port>" */
    const char *def;           /* default as text, or NULL for "none" */
    bool computed_default;     /* |def| only describes a default computed at run time */
    bool reloadable;           /* SIGHUP re-reads it */
    const char *help;
};

extern const struct config_option config_options[];
extern const size_t config_options_len;

/* Row whose flag or alias is the |len| bytes at |name|, or NULL. */
const struct config_option *config_option_by_flag(const char *name, size_t len);
/* Row called |name| (e.g. "drivers"); the row must exist. */
const struct config_option *config_option_by_name(const char *name);
/* Row whose TOML key is |key| (full dotted path), or NULL. */
const struct config_option *config_option_by_key(const char *key);
/* True when some row's TOML key lies under the table |path| ("a.b"). */
bool config_table_known(const char *path);

/* Parses |text| as |o|'s value into |c|. |src| names where the text came
 * from (the flag, the variable, or "file:line:col: key") and starts the
 * one-line message written to |err| on failure. Returns 0 or -1. */
int config_option_set_text(struct config *c, const struct config_option *o, const char *text,
                           const char *src, char *err, size_t errlen) GW_MUSTCHECK;
/* The same for a value from the TOML file, checking its TOML type. */
int config_option_set_toml(struct config *c, const struct config_option *o,
                           const struct toml_value *v, const char *src, char *err,
                           size_t errlen) GW_MUSTCHECK;
/* Moves |o|'s value from |from| to |to|; strings are swapped so that
 * config_free(from) releases the old one. */
void config_option_move(struct config *to, struct config *from, const struct config_option *o);

/* Parses 1/0/true/false/yes/no/on/off, any case. Returns 0 or -1. */
int config_bool_parse(const char *s, bool *out) GW_MUSTCHECK;

/* Copies |s| into |buf| (|n| > 4) for an error message: control bytes
 * become '?', and text longer than the buffer ends in "...". Returns |buf|. */
const char *config_show(const char *s, char *buf, size_t n);

/* Writes "|prog| [OPTIONS]" usage and every row's help to |out|. */
void config_print_help(FILE *out, const char *prog);

#endif /* GW_CONFIG_INT_H */
