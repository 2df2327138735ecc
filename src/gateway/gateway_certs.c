/*
 * openshell-gateway generate-certs: the local TLS bundle that lets a fresh
 * install run with TLS and mTLS without an operator-made PKI.
 *
 * One CA issues a server certificate (serverAuth, the loopback names plus
 * --san) and a client certificate (clientAuth) for the openshell CLI; the
 * sandbox-token key set is made by jwt_keys_load() so its format is the one
 * the gateway reads. Keys are EC P-256 (what grpcio, curl and OpenSSL clients
 * all take). The CA key stays beside ca.crt, 0600, only to issue more
 * certificates later.
 *
 * Idempotent in upstream's sense: every file present -> nothing to do; none
 * -> generate; some -> refuse with the lists, since guessing which half is
 * stale could silently replace a CA that clients already trust.
 */
#include "gateway/gateway.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "config/config.h"
#include "jwt/jwt.h"

#define DEFAULT_DAYS      3650
#define MAX_DAYS          36500
#define MAX_SANS          64
#define DEFAULT_CLIENT_CN "openshell-admin"
#define CA_KEY_FILE       "ca.key"

/* Names every server certificate carries: the gateway listens on loopback
 * by default and clients dial any of these. */
static const char *const builtin_sans[] = {"localhost", "127.0.0.1", "::1"};

/* The last OpenSSL error as text (static buffer), or "unknown error". */
static const char *ossl_reason(void)
{
    static char buf[256];
    unsigned long e = ERR_peek_last_error();

    if (e == 0)
        return "unknown error";
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return buf;
}

/* ---- names ---------------------------------------------------------------------------- */

/* A DNS name for a SAN: dot-separated labels of letters, digits and '-'
 * (not at either end), 1..63 bytes each, 253 in all; the first label may
 * be "*". */
static bool dns_name_valid(const char *s)
{
    size_t total = strlen(s);

    if (total == 0 || total > 253)
        return false;
    for (const char *label = s;;) {
        const char *dot = strchr(label, '.');
        size_t n = dot != NULL ? (size_t)(dot - label) : strlen(label);
        bool wildcard = label == s && n == 1 && label[0] == '*';
        if (n == 0 || n > 63 || (!wildcard && (label[0] == '-' || label[n - 1] == '-')))
            return false;
        for (size_t i = 0; i < n && !wildcard; i++)
            if (!isalnum((unsigned char)label[i]) && label[i] != '-')
                return false;
        if (dot == NULL)
            return true;
        label = dot + 1;
    }
}

/* Parses an IP literal into |out| (4 or 16 bytes); returns the length or 0. */
static size_t parse_ip(const char *s, unsigned char out[16])
{
    if (inet_pton(AF_INET, s, out) == 1)
        return 4;
    if (inet_pton(AF_INET6, s, out) == 1)
        return 16;
    return 0;
}

/* The SAN in canonical text (IPs as inet_ntop prints them, DNS names in
 * lower case) so duplicates are seen; heap string. */
static char *san_canonical(const char *s)
{
    unsigned char ip[16];
    char buf[INET6_ADDRSTRLEN];
    size_t n = parse_ip(s, ip);

    if (n != 0) {
        inet_ntop(n == 4 ? AF_INET : AF_INET6, ip, buf, sizeof(buf));
        return gw_xstrdup(buf);
    }
    char *low = gw_xstrdup(s);
    for (char *p = low; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return low;
}

/* Adds |name| to |gens| as an IP or DNS entry. Returns 0 or -1. */
static int add_san(GENERAL_NAMES *gens, const char *name)
{
    unsigned char ip[16];
    size_t n = parse_ip(name, ip);
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_STRING *v = n != 0 ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new();

    if (gn == NULL || v == NULL ||
        ASN1_STRING_set(v, n != 0 ? (const void *)ip : (const void *)name,
                        n != 0 ? (int)n : (int)strlen(name)) != 1) {
        GENERAL_NAME_free(gn);
        ASN1_STRING_free(v);
        return -1;
    }
    GENERAL_NAME_set0_value(gn, n != 0 ? GEN_IPADD : GEN_DNS, v);
    if (sk_GENERAL_NAME_push(gens, gn) == 0) {
        GENERAL_NAME_free(gn);
        return -1;
    }
    return 0;
}

/* The built-in names followed by |o->sans|, canonical and without
 * duplicates. Fills |out| (heap strings, free each) and returns the count,
 * or -1 with |err| set for a name that is neither an IP nor a DNS name. */
static int collect_sans(const struct gateway_certs_opts *o, char **out, char *err, size_t errlen)
{
    size_t total = GW_ARRAY_LEN(builtin_sans) + o->n_sans, n = 0;

    if (o->n_sans > MAX_SANS)
        return gw_errf(err, errlen, "too many --san names (at most %d)", MAX_SANS);
    for (size_t i = 0; i < total; i++) {
        const char *s = i < GW_ARRAY_LEN(builtin_sans) ? builtin_sans[i]
                                                       : o->sans[i - GW_ARRAY_LEN(builtin_sans)];
        unsigned char ip[16];
        if (s == NULL || (parse_ip(s, ip) == 0 && !dns_name_valid(s))) {
            for (size_t j = 0; j < n; j++)
                free(out[j]);
            return gw_errf(err, errlen, "--san '%s': not an IP address or a DNS name",
                           s != NULL ? s : "");
        }
        char *canon = san_canonical(s);
        bool dup = false;
        for (size_t j = 0; j < n && !dup; j++)
            dup = strcmp(out[j], canon) == 0;
        if (dup)
            free(canon);
        else
            out[n++] = canon;
    }
    return (int)n;
}

/* ---- certificates --------------------------------------------------------------------- */

/* What one certificate is for. */
struct cert_spec {
    const char *cn;
    bool ca;           /* CA:TRUE, keyCertSign; else a leaf */
    const char *eku;   /* "serverAuth" / "clientAuth", NULL for the CA */
    char *const *sans; /* subjectAltName entries, or NULL */
    size_t n_sans;
    unsigned days;
};

/* A positive random 127-bit serial (RFC 5280 §4.1.2.2: at most 20 octets,
 * unpredictable serials defeat chosen-prefix collisions). */
static int set_random_serial(X509 *x)
{
    unsigned char raw[16];
    BIGNUM *bn = NULL;
    int rc = -1;

    if (gw_random_bytes(raw, sizeof(raw)) != 0)
        return -1;
    raw[0] = (unsigned char)((raw[0] & 0x7f) | 0x01); /* positive, never zero */
    bn = BN_bin2bn(raw, sizeof(raw), NULL);
    if (bn != NULL && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL)
        rc = 0;
    BN_free(bn);
    return rc;
}

static int set_subject(X509 *x, const char *cn)
{
    X509_NAME *name = X509_get_subject_name(x);

    if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"OpenShell", -1,
                                   -1, 0) != 1 ||
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                   0) != 1)
        return -1;
    return 0;
}

/* Adds one extension written in OpenSSL's configuration syntax. */
static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    int rc = ext != NULL && X509_add_ext(x, ext, -1) == 1 ? 0 : -1;

    X509_EXTENSION_free(ext);
    return rc;
}

/* basicConstraints, keyUsage, extendedKeyUsage, SKI, AKI and the SANs.
 * |issuer| is NULL for the self-signed CA (it is its own issuer). */
static int add_extensions(X509 *x, const struct cert_spec *s, X509 *issuer)
{
    X509V3_CTX ctx;
    GENERAL_NAMES *gens = NULL;
    int rc = -1;

    X509V3_set_ctx(&ctx, issuer != NULL ? issuer : x, x, NULL, NULL, 0);
    if (add_ext(x, &ctx, NID_basic_constraints,
                s->ca ? "critical,CA:TRUE,pathlen:0" : "critical,CA:FALSE") != 0 ||
        add_ext(x, &ctx, NID_key_usage,
                s->ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature") != 0 ||
        (s->eku != NULL && add_ext(x, &ctx, NID_ext_key_usage, s->eku) != 0) ||
        add_ext(x, &ctx, NID_subject_key_identifier, "hash") != 0 ||
        add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always") != 0)
        return -1;
    if (s->n_sans == 0)
        return 0;
    gens = sk_GENERAL_NAME_new_null();
    if (gens == NULL)
        return -1;
    for (size_t i = 0; i < s->n_sans; i++)
        if (add_san(gens, s->sans[i]) != 0)
            goto out;
    if (X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) == 1)
        rc = 0;
out:
    GENERAL_NAMES_free(gens);
    return rc;
}

/* A certificate for |key| as |s| says, signed by |issuer_key| (the CA's),
 * or self-signed when |issuer| is NULL. Caller owns; NULL on failure. */
static X509 *make_cert(const struct cert_spec *s, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key)
{
    X509 *x = X509_new();

    if (x == NULL || X509_set_version(x, X509_VERSION_3) != 1 || set_random_serial(x) != 0 ||
        X509_gmtime_adj(X509_getm_notBefore(x), -300) == NULL || /* tolerate clock skew */
        X509_time_adj_ex(X509_getm_notAfter(x), (int)s->days, 0, NULL) == NULL ||
        set_subject(x, s->cn) != 0 ||
        X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer)
                                               : X509_get_subject_name(x)) != 1 ||
        X509_set_pubkey(x, key) != 1 || add_extensions(x, s, issuer) != 0 ||
        X509_sign(x, issuer_key != NULL ? issuer_key : key, EVP_sha256()) <= 0) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* ---- files ---------------------------------------------------------------------------- */

/* One file of the bundle in memory before it is written. */
struct out_file {
    const char *rel; /* path under the bundle directory */
    char *pem;
    size_t len;
    mode_t mode;
    bool written; /* this run created it (removed again if a later step fails) */
};

enum { OF_CA_KEY, OF_CA_CRT, OF_SERVER_KEY, OF_SERVER_CRT, OF_CLIENT_KEY, OF_CLIENT_CRT, OF_N };

static int bio_take(BIO *bio, struct out_file *f)
{
    char *p = NULL;
    long n = BIO_get_mem_data(bio, &p);

    if (n <= 0)
        return -1;
    f->pem = gw_xmalloc((size_t)n);
    memcpy(f->pem, p, (size_t)n);
    f->len = (size_t)n;
    return 0;
}

static int pem_key(EVP_PKEY *k, struct out_file *f)
{
    BIO *bio = BIO_new(BIO_s_mem());
    int rc = bio != NULL && PEM_write_bio_PrivateKey(bio, k, NULL, NULL, 0, NULL, NULL) == 1
                 ? bio_take(bio, f)
                 : -1;
    BIO_free(bio);
    return rc;
}

static int pem_cert(X509 *x, struct out_file *f)
{
    BIO *bio = BIO_new(BIO_s_mem());
    int rc = bio != NULL && PEM_write_bio_X509(bio, x) == 1 ? bio_take(bio, f) : -1;
    BIO_free(bio);
    return rc;
}

/* Creates |path| and its missing parents with mode 0700 (existing ones are
 * left as they are). */
static int make_dirs(const char *path, char *err, size_t errlen)
{
    char *dup = gw_xstrdup(path);
    struct stat st;
    int rc = 0;

    for (char *s = dup + 1;; s++) {
        bool end = *s == '\0';
        if (!end && (*s != '/' || s[-1] == '/'))
            continue;
        *s = '\0';
        if ((mkdir(dup, 0700) != 0 && errno != EEXIST) || stat(dup, &st) != 0) {
            rc = gw_errf(err, errlen, "cannot create directory %s: %s", dup, strerror(errno));
            break;
        }
        if (!S_ISDIR(st.st_mode)) {
            rc = gw_errf(err, errlen, "cannot create directory %s: something else is in the way",
                         dup);
            break;
        }
        if (end)
            break;
        *s = '/';
    }
    free(dup);
    return rc;
}

static int write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Writes |f| to |dir|/|f->rel|: a synced temporary file beside it,
 * hard-linked into place so a file that appeared meanwhile is never
 * replaced (rename as a fallback where the filesystem has no links). */
static int write_file(const char *dir, struct out_file *f, char *err, size_t errlen)
{
    char *path = gw_xasprintf("%s/%s", dir, f->rel);
    char *tmp = gw_xasprintf("%s.tmp.XXXXXX", path);
    int fd = mkostemp(tmp, O_CLOEXEC), rc = -1;

    if (fd < 0) {
        gw_errf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        goto out;
    }
    errno = EIO; /* write_all() on a zero-length write */
    if (fchmod(fd, f->mode) != 0 || write_all(fd, f->pem, f->len) != 0 || fsync(fd) != 0) {
        gw_errf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        close(fd);
        goto out_unlink;
    }
    if (close(fd) != 0) {
        gw_errf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        goto out_unlink;
    }
    if (link(tmp, path) == 0 ||
        ((errno == EPERM || errno == EOPNOTSUPP || errno == ENOSYS) && rename(tmp, path) == 0)) {
        f->written = true;
        rc = 0;
    } else {
        gw_errf(err, errlen, "cannot create %s: %s", path,
                errno == EEXIST ? "it appeared while the bundle was being written"
                                : strerror(errno));
    }
out_unlink:
    unlink(tmp); /* gone already after a rename */
out:
    free(tmp);
    free(path);
    return rc;
}

static void files_free(struct out_file *f)
{
    for (int i = 0; i < OF_N; i++)
        OPENSSL_clear_free(f[i].pem, f[i].len);
}

/* Removes what this run wrote, so a failure never leaves a partial bundle. */
static void files_unwind(const char *dir, struct out_file *f)
{
    for (int i = 0; i < OF_N; i++) {
        if (!f[i].written)
            continue;
        char *path = gw_xasprintf("%s/%s", dir, f[i].rel);
        unlink(path);
        free(path);
    }
}

/* ---- the bundle ----------------------------------------------------------------------- */

/* Keys and certificates for the CA, the server and the client as PEM in
 * |f|. Returns 0 or GATEWAY_CERTS_ERR_CRYPTO. */
static int make_pki(const struct gateway_certs_opts *o, char *const *sans, size_t n_sans,
                    struct out_file *f, char *err, size_t errlen)
{
    const struct cert_spec ca = {.cn = "OpenShell local CA", .ca = true, .days = o->days};
    const struct cert_spec server = {.cn = "openshell-gateway",
                                     .eku = "serverAuth",
                                     .sans = sans,
                                     .n_sans = n_sans,
                                     .days = o->days};
    const struct cert_spec client = {.cn = o->client_cn ? o->client_cn : DEFAULT_CLIENT_CN,
                                     .eku = "clientAuth",
                                     .days = o->days};
    EVP_PKEY *ca_key = EVP_EC_gen("P-256"), *srv_key = EVP_EC_gen("P-256");
    EVP_PKEY *cli_key = EVP_EC_gen("P-256");
    X509 *ca_crt = NULL, *srv_crt = NULL, *cli_crt = NULL;
    int rc = GATEWAY_CERTS_ERR_CRYPTO;

    if (ca_key == NULL || srv_key == NULL || cli_key == NULL) {
        gw_errf(err, errlen, "cannot generate an EC P-256 key: %s", ossl_reason());
        goto out;
    }
    ca_crt = make_cert(&ca, ca_key, NULL, NULL);
    srv_crt = ca_crt != NULL ? make_cert(&server, srv_key, ca_crt, ca_key) : NULL;
    cli_crt = srv_crt != NULL ? make_cert(&client, cli_key, ca_crt, ca_key) : NULL;
    if (cli_crt == NULL) {
        gw_errf(err, errlen, "cannot issue a certificate: %s", ossl_reason());
        goto out;
    }
    if (pem_key(ca_key, &f[OF_CA_KEY]) != 0 || pem_cert(ca_crt, &f[OF_CA_CRT]) != 0 ||
        pem_key(srv_key, &f[OF_SERVER_KEY]) != 0 || pem_cert(srv_crt, &f[OF_SERVER_CRT]) != 0 ||
        pem_key(cli_key, &f[OF_CLIENT_KEY]) != 0 || pem_cert(cli_crt, &f[OF_CLIENT_CRT]) != 0) {
        gw_errf(err, errlen, "cannot encode PEM: %s", ossl_reason());
        goto out;
    }
    rc = 0;
out:
    X509_free(ca_crt);
    X509_free(srv_crt);
    X509_free(cli_crt);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(srv_key);
    EVP_PKEY_free(cli_key);
    return rc;
}

/* Which bundle files exist. The eight of config.h are the bundle; ca.key
 * alone does not make a bundle but does make an empty directory "partial"
 * (a CA key without its certificate is somebody's). */
struct probe {
    bool present[CONFIG_LOCAL_TLS_FILES + CONFIG_LOCAL_JWT_FILES];
    size_t n_present;
    bool ca_key;
};

static const char *bundle_file(size_t i)
{
    return i < CONFIG_LOCAL_TLS_FILES ? config_local_tls_files[i]
                                      : config_local_jwt_files[i - CONFIG_LOCAL_TLS_FILES];
}

#define BUNDLE_FILES (CONFIG_LOCAL_TLS_FILES + CONFIG_LOCAL_JWT_FILES)

/* lstat()s |dir|/|rel|: 1 present, 0 absent, -1 with |err| set. */
static int probe_one(const char *dir, const char *rel, char *err, size_t errlen)
{
    char *path = gw_xasprintf("%s/%s", dir, rel);
    struct stat st;
    int rc = 1;

    if (lstat(path, &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            rc = 0;
        else
            rc = gw_errf(err, errlen, "cannot check %s: %s", path, strerror(errno));
    }
    free(path);
    return rc;
}

static int probe_bundle(const char *dir, struct probe *p, char *err, size_t errlen)
{
    memset(p, 0, sizeof(*p));
    for (size_t i = 0; i < BUNDLE_FILES; i++) {
        int r = probe_one(dir, bundle_file(i), err, errlen);
        if (r < 0)
            return GATEWAY_CERTS_ERR_IO;
        p->present[i] = r == 1;
        p->n_present += (size_t)r;
    }
    int r = probe_one(dir, CA_KEY_FILE, err, errlen);
    if (r < 0)
        return GATEWAY_CERTS_ERR_IO;
    p->ca_key = r == 1;
    return 0;
}

/* "partial TLS bundle in DIR: present: a, b; missing: c, d; ..." */
static int report_partial(const char *dir, const struct probe *p, char *err, size_t errlen)
{
    struct gw_buf present = {0}, missing = {0};

    for (size_t i = 0; i < BUNDLE_FILES; i++) {
        struct gw_buf *b = p->present[i] ? &present : &missing;
        gw_buf_appendf(b, "%s%s", b->len > 0 ? ", " : "", bundle_file(i));
    }
    if (p->ca_key)
        gw_buf_appendf(&present, "%s%s", present.len > 0 ? ", " : "", CA_KEY_FILE);
    gw_errf(err, errlen,
            "partial TLS bundle in %s: present: %s; missing: %s. Restore the missing files, "
            "or move %s away and run generate-certs again for a new bundle (clients must then "
            "trust the new ca.crt)",
            dir, gw_buf_cstr(&present), gw_buf_cstr(&missing), dir);
    gw_buf_free(&present);
    gw_buf_free(&missing);
    return GATEWAY_CERTS_ERR_PARTIAL;
}

/* The sandbox-token key set, through the gateway's own loader. */
static int make_jwt(const char *dir, char *err, size_t errlen)
{
    char *paths[CONFIG_LOCAL_JWT_FILES];
    char why[512];

    for (size_t i = 0; i < CONFIG_LOCAL_JWT_FILES; i++)
        paths[i] = gw_xasprintf("%s/%s", dir, config_local_jwt_files[i]);
    struct jwt_key_paths kp = {
        .signing_key_path = paths[CONFIG_LOCAL_JWT_SIGNING],
        .public_key_path = paths[CONFIG_LOCAL_JWT_PUBLIC],
        .kid_path = paths[CONFIG_LOCAL_JWT_KID],
    };
    struct jwt_keys *k = jwt_keys_load(&kp, true, why, sizeof(why));
    for (size_t i = 0; i < CONFIG_LOCAL_JWT_FILES; i++)
        free(paths[i]);
    if (k == NULL)
        return gw_errf(err, errlen, "sandbox token keys: %s", why);
    jwt_keys_free(k);
    return 0;
}

static int write_bundle(const char *dir, struct out_file *f, char *err, size_t errlen)
{
    static const char *const subdirs[] = {"server", "client"};

    if (make_dirs(dir, err, errlen) != 0)
        return GATEWAY_CERTS_ERR_IO;
    for (size_t i = 0; i < GW_ARRAY_LEN(subdirs); i++) {
        char *sub = gw_xasprintf("%s/%s", dir, subdirs[i]);
        int rc = make_dirs(sub, err, errlen);
        free(sub);
        if (rc != 0)
            return GATEWAY_CERTS_ERR_IO;
    }
    for (int i = 0; i < OF_N; i++)
        if (write_file(dir, &f[i], err, errlen) != 0)
            goto fail;
    if (make_jwt(dir, err, errlen) != 0)
        goto fail;
    return 0;
fail:
    files_unwind(dir, f);
    return GATEWAY_CERTS_ERR_IO;
}

int gateway_certs_generate(const struct gateway_certs_opts *o, enum gateway_certs_outcome *outcome,
                           char *err, size_t errlen)
{
    char *sans[GW_ARRAY_LEN(builtin_sans) + MAX_SANS];
    struct out_file f[OF_N] = {
        [OF_CA_KEY] = {.rel = CA_KEY_FILE, .mode = 0600},
        [OF_CA_CRT] = {.rel = "ca.crt", .mode = 0644},
        [OF_SERVER_KEY] = {.rel = "server/tls.key", .mode = 0600},
        [OF_SERVER_CRT] = {.rel = "server/tls.crt", .mode = 0644},
        [OF_CLIENT_KEY] = {.rel = "client/tls.key", .mode = 0600},
        [OF_CLIENT_CRT] = {.rel = "client/tls.crt", .mode = 0644},
    };
    struct probe p;
    int n_sans = 0, rc;

    if (o->dir == NULL || o->dir[0] == '\0') {
        gw_errf(err, errlen, "no output directory");
        return GATEWAY_CERTS_ERR_USAGE;
    }
    if (o->days == 0 || o->days > MAX_DAYS) {
        gw_errf(err, errlen, "--days: expected 1 to %d", MAX_DAYS);
        return GATEWAY_CERTS_ERR_USAGE;
    }
    n_sans = collect_sans(o, sans, err, errlen);
    if (n_sans < 0)
        return GATEWAY_CERTS_ERR_USAGE;
    rc = probe_bundle(o->dir, &p, err, errlen);
    if (rc == 0 && p.n_present == BUNDLE_FILES) {
        *outcome = GATEWAY_CERTS_PRESENT;
        goto out;
    }
    if (rc == 0 && (p.n_present > 0 || p.ca_key))
        rc = report_partial(o->dir, &p, err, errlen);
    if (rc == 0)
        rc = make_pki(o, sans, (size_t)n_sans, f, err, errlen);
    if (rc == 0)
        rc = write_bundle(o->dir, f, err, errlen);
    if (rc == 0)
        *outcome = GATEWAY_CERTS_CREATED;
out:
    files_free(f);
    for (int i = 0; i < n_sans; i++)
        free(sans[i]);
    return rc;
}

/* ---- the command ---------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fputs("Usage: openshell-gateway generate-certs [--output-dir DIR] [--san NAME]... "
          "[--days N]\n\n"
          "Creates the local TLS bundle: a CA (ca.crt, ca.key), a server certificate\n"
          "(server/tls.crt, server/tls.key) for localhost, 127.0.0.1, ::1 and every --san,\n"
          "a client certificate (client/tls.crt, client/tls.key) and the sandbox token\n"
          "signing key (jwt/signing.pem, jwt/public.pem, jwt/kid). Does nothing when the\n"
          "bundle is already complete; refuses a partial one.\n\n"
          "Options:\n"
          "  --output-dir DIR   bundle directory (default: $OPENSHELL_LOCAL_TLS_DIR, else\n"
          "                     $XDG_STATE_HOME/openshell/tls, ~/.local/state/openshell/tls,\n"
          "                     or /var/lib/openshell/tls for root)\n"
          "  --san NAME         extra server name, an IP address or DNS name; repeatable\n"
          "                     (--server-san is the same)\n"
          "  --days N           certificate validity in days (default 3650)\n"
          "  -h, --help         this text\n",
          out);
}

struct cmd_args {
    const char *dir;
    const char *sans[MAX_SANS + 1];
    size_t n_sans;
    unsigned days;
    bool help;
};

/* The value of option |name| at argv[*i], from "--name=value" or the next
 * argument (advancing *i); NULL when |arg| is not that option. Sets
 * |*missing| when the option has no value. */
static const char *opt_value(int argc, char **argv, int *i, const char *name, bool *missing)
{
    const char *arg = argv[*i];
    size_t n = strlen(name);

    if (strncmp(arg, name, n) != 0)
        return NULL;
    if (arg[n] == '=')
        return arg + n + 1;
    if (arg[n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = true;
        return NULL;
    }
    return argv[++*i];
}

static int parse_days(const char *v, unsigned *out)
{
    char *end;
    unsigned long n;

    errno = 0;
    n = strtoul(v, &end, 10);
    if (!isdigit((unsigned char)v[0]) || *end != '\0' || errno != 0 || n == 0 || n > MAX_DAYS)
        return -1;
    *out = (unsigned)n;
    return 0;
}

/* Returns 0, or 2 with the reason on |errout|. */
static int parse_args(int argc, char **argv, struct cmd_args *a, FILE *errout)
{
    for (int i = 1; i < argc; i++) {
        bool missing = false;
        const char *v = NULL, *opt = argv[i];
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            a->help = true;
        } else if ((v = opt_value(argc, argv, &i, "--output-dir", &missing)) != NULL) {
            a->dir = v;
        } else if ((v = opt_value(argc, argv, &i, "--san", &missing)) != NULL ||
                   (v = opt_value(argc, argv, &i, "--server-san", &missing)) != NULL) {
            if (a->n_sans == MAX_SANS) {
                fprintf(errout,
                        "openshell-gateway generate-certs: too many --san names "
                        "(at most %d)\n",
                        MAX_SANS);
                return 2;
            }
            a->sans[a->n_sans++] = v;
        } else if ((v = opt_value(argc, argv, &i, "--days", &missing)) != NULL) {
            if (parse_days(v, &a->days) != 0) {
                fprintf(errout, "openshell-gateway generate-certs: --days '%s': expected 1 to %d\n",
                        v, MAX_DAYS);
                return 2;
            }
        } else {
            fprintf(errout, "openshell-gateway generate-certs: %s '%s'\n",
                    missing ? "missing value for" : "unknown argument", argv[i]);
            fputs("Try 'openshell-gateway generate-certs --help'.\n", errout);
            return 2;
        }
        if (v != NULL && v[0] == '\0') {
            fprintf(errout, "openshell-gateway generate-certs: %s needs a non-empty value\n", opt);
            return 2;
        }
    }
    return 0;
}

static void report_created(FILE *out, const char *dir, const struct cmd_args *a, bool default_dir)
{
    char kid[128] = "";
    char *kid_path = gw_xasprintf("%s/%s", dir, config_local_jwt_files[CONFIG_LOCAL_JWT_KID]);
    FILE *fp = fopen(kid_path, "r");

    if (fp != NULL) {
        if (fgets(kid, sizeof(kid), fp) != NULL)
            kid[strcspn(kid, "\r\n")] = '\0';
        fclose(fp);
    }
    free(kid_path);
    fprintf(out, "Wrote a local TLS bundle to %s (valid %u days):\n", dir, a->days);
    fprintf(out, "  ca.crt                  CA certificate; clients trust it\n"
                 "  ca.key                  CA key (0600), only for issuing more certificates\n"
                 "  server/tls.{crt,key}    gateway certificate for localhost, 127.0.0.1, ::1");
    for (size_t i = 0; i < a->n_sans; i++)
        fprintf(out, ", %s", a->sans[i]);
    fprintf(out,
            "\n  client/tls.{crt,key}    client certificate (CN %s) for the openshell CLI\n"
            "  jwt/                    sandbox token signing key (kid %s)\n\n",
            DEFAULT_CLIENT_CN, kid);
    fprintf(out, "openshell-gateway uses the bundle by itself when TLS is on and no\n"
                 "--tls-cert/--tls-key is set: it serves server/tls.crt and requires client\n"
                 "certificates signed by ca.crt. The openshell CLI reads ca.crt and client/\n"
                 "from the same directory.\n");
    if (!default_dir)
        fprintf(out,
                "This is not the default directory: set OPENSHELL_LOCAL_TLS_DIR=%s\n"
                "for both the gateway and the CLI.\n",
                dir);
}

int gateway_certs_main(int argc, char **argv, FILE *out, FILE *errout)
{
    struct cmd_args a = {.days = DEFAULT_DAYS};
    char *def = config_local_tls_dir();
    char err[2048];
    enum gateway_certs_outcome outcome;
    int code = parse_args(argc, argv, &a, errout);

    if (code != 0 || a.help) {
        if (a.help)
            usage(out);
        goto out;
    }
    if (a.dir == NULL && def == NULL) {
        fputs("openshell-gateway generate-certs: no bundle directory: pass --output-dir, or set "
              "OPENSHELL_LOCAL_TLS_DIR or HOME\n",
              errout);
        code = 2;
        goto out;
    }
    const char *dir = a.dir != NULL ? a.dir : def;
    struct gateway_certs_opts o = {.dir = dir, .sans = a.sans, .n_sans = a.n_sans, .days = a.days};
    int rc = gateway_certs_generate(&o, &outcome, err, sizeof(err));
    if (rc != 0) {
        fprintf(errout, "openshell-gateway generate-certs: %s\n", err);
        code = rc == GATEWAY_CERTS_ERR_USAGE ? 2 : 1;
    } else if (outcome == GATEWAY_CERTS_PRESENT) {
        fprintf(out, "TLS bundle already present in %s; nothing to do\n", dir);
    } else {
        report_created(out, dir, &a, def != NULL && strcmp(def, dir) == 0);
    }
out:
    free(def);
    return code;
}
