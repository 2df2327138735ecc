/* Unit tests for generate-certs (src/gateway/gateway_certs.c): the bundle
 * is generated under a temporary directory and checked with OpenSSL's own
 * verifier (chains, purposes, names, extensions, key pairs), then the
 * idempotency rules (no-op, partial, stray CA key), the unwinding of a
 * failed run, bad options and the command-line front end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <ftw.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"
#include "gateway/gateway.h"
#include "jwt/jwt.h"

#define ERRLEN 2048

static char tmp_root[] = "/tmp/test_certs.XXXXXX";

/* ---- helpers ------------------------------------------------------------------ */

/* A fresh path under the temporary root (not created). */
static const char *path_in(const char *name)
{
    static char buf[4][512];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, sizeof(buf[0]), "%s/%s", tmp_root, name);
    return p;
}

static char *file_in(const char *dir, const char *rel)
{
    static char buf[4][600];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, sizeof(buf[0]), "%s/%s", dir, rel);
    return p;
}

static X509 *read_cert(const char *dir, const char *rel)
{
    FILE *f = fopen(file_in(dir, rel), "r");
    assert_non_null(f);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(x);
    return x;
}

static EVP_PKEY *read_key(const char *dir, const char *rel)
{
    FILE *f = fopen(file_in(dir, rel), "r");
    assert_non_null(f);
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(k);
    return k;
}

static bool exists(const char *dir, const char *rel)
{
    struct stat st;
    return lstat(file_in(dir, rel), &st) == 0;
}

static int generate(const char *dir, const char *const *sans, size_t n_sans, unsigned days,
                    enum gateway_certs_outcome *outcome, char *err)
{
    struct gateway_certs_opts o = {.dir = dir, .sans = sans, .n_sans = n_sans, .days = days};
    return gateway_certs_generate(&o, outcome, err, ERRLEN);
}

/* Generates a default bundle into |dir| and asserts it was created. */
static void make_bundle(const char *dir)
{
    enum gateway_certs_outcome outcome;
    char err[ERRLEN];
    assert_int_equal(generate(dir, NULL, 0, 30, &outcome, err), 0);
    assert_int_equal(outcome, GATEWAY_CERTS_CREATED);
}

/* Verifies |leaf| against |ca| for |purpose|; returns the verify result. */
static int verify(X509 *ca, X509 *leaf, int purpose)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    assert_int_equal(X509_STORE_add_cert(store, ca), 1);
    assert_int_equal(X509_STORE_CTX_init(ctx, store, leaf, NULL), 1);
    assert_int_equal(X509_STORE_CTX_set_purpose(ctx, purpose), 1);
    int ok = X509_verify_cert(ctx);
    int rc = ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return rc;
}

static void cn_of(X509 *x, char *out, size_t len)
{
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out, (int)len) >
                0);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Snapshot of one file for the no-touch checks. */
struct file_id {
    struct timespec mtime;
    ino_t ino;
    off_t size;
};

static void file_id_of(const char *dir, const char *rel, struct file_id *id)
{
    struct stat st;
    assert_int_equal(stat(file_in(dir, rel), &st), 0);
    id->mtime = st.st_mtim;
    id->ino = st.st_ino;
    id->size = st.st_size;
}

static void assert_same_file(const struct file_id *a, const struct file_id *b)
{
    assert_int_equal(a->mtime.tv_sec, b->mtime.tv_sec);
    assert_int_equal(a->mtime.tv_nsec, b->mtime.tv_nsec);
    assert_int_equal(a->ino, b->ino);
    assert_int_equal(a->size, b->size);
}

static const char *all_files[] = {"ca.crt",          "ca.key",         "server/tls.crt",
                                  "server/tls.key",  "client/tls.crt", "client/tls.key",
                                  "jwt/signing.pem", "jwt/public.pem", "jwt/kid"};

/* ---- the bundle ------------------------------------------------------------------ */

static void test_gateway_certs_generate_chains_to_ca(void **state)
{
    const char *dir = path_in("chain/nested/tls"); /* parents are created too */
    const char *sans[] = {"gw.unit.test", "10.0.0.7", "::1", "LOCALHOST"};
    enum gateway_certs_outcome outcome;
    char err[ERRLEN];

    assert_int_equal(generate(dir, sans, 4, 30, &outcome, err), 0);
    assert_int_equal(outcome, GATEWAY_CERTS_CREATED);
    X509 *ca = read_cert(dir, "ca.crt");
    X509 *srv = read_cert(dir, "server/tls.crt");
    X509 *cli = read_cert(dir, "client/tls.crt");
    assert_int_equal(verify(ca, srv, X509_PURPOSE_SSL_SERVER), X509_V_OK);
    assert_int_equal(verify(ca, cli, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
    /* Each leaf is good for its own purpose only. */
    assert_int_not_equal(verify(ca, srv, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
    assert_int_not_equal(verify(ca, cli, X509_PURPOSE_SSL_SERVER), X509_V_OK);
    assert_int_equal(X509_check_ca(ca), 1);
    assert_int_equal(X509_check_ca(srv), 0);
    assert_int_equal(X509_check_ca(cli), 0);
    assert_true(X509_get_extended_key_usage(srv) & XKU_SSL_SERVER);
    assert_false(X509_get_extended_key_usage(srv) & XKU_SSL_CLIENT);
    assert_true(X509_get_extended_key_usage(cli) & XKU_SSL_CLIENT);
    assert_false(X509_get_extended_key_usage(cli) & XKU_SSL_SERVER);
    /* SKI on every certificate, the leaves' AKI names the CA's key. */
    const ASN1_OCTET_STRING *ca_ski = X509_get0_subject_key_id(ca);
    assert_non_null(ca_ski);
    assert_non_null(X509_get0_subject_key_id(srv));
    assert_int_equal(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(srv), ca_ski), 0);
    assert_int_equal(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(cli), ca_ski), 0);
    /* Random serials. */
    assert_int_not_equal(ASN1_INTEGER_cmp(X509_get0_serialNumber(srv), X509_get0_serialNumber(cli)),
                         0);
    X509_free(ca);
    X509_free(srv);
    X509_free(cli);
}

static void test_gateway_certs_generate_server_names(void **state)
{
    const char *dir = path_in("names");
    const char *sans[] = {"gw.unit.test", "10.0.0.7", "*.wild.test", "fd00::5", "::1"};
    enum gateway_certs_outcome outcome;
    char err[ERRLEN];

    assert_int_equal(generate(dir, sans, 5, 30, &outcome, err), 0);
    X509 *srv = read_cert(dir, "server/tls.crt");
    assert_int_equal(X509_check_host(srv, "localhost", 0, 0, NULL), 1);
    assert_int_equal(X509_check_host(srv, "gw.unit.test", 0, 0, NULL), 1);
    assert_int_equal(X509_check_host(srv, "a.wild.test", 0, 0, NULL), 1);
    assert_int_equal(X509_check_host(srv, "other.test", 0, 0, NULL), 0);
    assert_int_equal(X509_check_ip_asc(srv, "127.0.0.1", 0), 1);
    assert_int_equal(X509_check_ip_asc(srv, "::1", 0), 1);
    assert_int_equal(X509_check_ip_asc(srv, "10.0.0.7", 0), 1);
    assert_int_equal(X509_check_ip_asc(srv, "fd00::5", 0), 1);
    assert_int_equal(X509_check_ip_asc(srv, "10.0.0.8", 0), 0);
    /* IP literals are IP entries, not DNS names; "::1" given twice is one. */
    GENERAL_NAMES *gens = X509_get_ext_d2i(srv, NID_subject_alt_name, NULL, NULL);
    assert_non_null(gens);
    int dns = 0, ip = 0;
    for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
        dns += gn->type == GEN_DNS;
        ip += gn->type == GEN_IPADD;
    }
    assert_int_equal(dns, 3); /* localhost, gw.unit.test, *.wild.test */
    assert_int_equal(ip, 4);  /* 127.0.0.1, ::1, 10.0.0.7, fd00::5 */
    GENERAL_NAMES_free(gens);
    X509_free(srv);
}

static void test_gateway_certs_generate_keys_match_and_are_private(void **state)
{
    const char *dir = path_in("keys");
    static const char *const pairs[][2] = {{"ca.crt", "ca.key"},
                                           {"server/tls.crt", "server/tls.key"},
                                           {"client/tls.crt", "client/tls.key"}};
    struct stat st;
    char cn[64];

    make_bundle(dir);
    for (size_t i = 0; i < 3; i++) {
        X509 *x = read_cert(dir, pairs[i][0]);
        EVP_PKEY *k = read_key(dir, pairs[i][1]);
        assert_int_equal(X509_check_private_key(x, k), 1);
        assert_int_equal(EVP_PKEY_get_base_id(k), EVP_PKEY_EC);
        assert_int_equal(stat(file_in(dir, pairs[i][1]), &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
        EVP_PKEY_free(k);
        X509_free(x);
    }
    const char *more_private[] = {"jwt/signing.pem", "jwt/kid"};
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(stat(file_in(dir, more_private[i]), &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
    }
    const char *dirs[] = {"", "server", "client", "jwt"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(stat(file_in(dir, dirs[i]), &st), 0);
        assert_int_equal(st.st_mode & 0777, 0700);
    }
    X509 *cli = read_cert(dir, "client/tls.crt");
    cn_of(cli, cn, sizeof(cn));
    assert_string_equal(cn, "openshell-admin");
    X509_free(cli);
}

static void test_gateway_certs_generate_jwt_keys_load(void **state)
{
    const char *dir = path_in("jwt");
    char err[ERRLEN];

    make_bundle(dir);
    struct jwt_key_paths kp = {
        .signing_key_path = file_in(dir, config_local_jwt_files[CONFIG_LOCAL_JWT_SIGNING]),
        .public_key_path = file_in(dir, config_local_jwt_files[CONFIG_LOCAL_JWT_PUBLIC]),
        .kid_path = file_in(dir, config_local_jwt_files[CONFIG_LOCAL_JWT_KID]),
    };
    struct jwt_keys *k = jwt_keys_load(&kp, false, err, sizeof(err));
    assert_non_null(k);
    assert_true(strlen(jwt_keys_kid(k)) > 0);
    jwt_keys_free(k);
}

static void test_gateway_certs_generate_validity_days(void **state)
{
    const char *dir = path_in("days");
    enum gateway_certs_outcome outcome;
    char err[ERRLEN];
    int pday, psec;

    assert_int_equal(generate(dir, NULL, 0, 7, &outcome, err), 0);
    X509 *srv = read_cert(dir, "server/tls.crt");
    assert_int_equal(
        ASN1_TIME_diff(&pday, &psec, X509_get0_notBefore(srv), X509_get0_notAfter(srv)), 1);
    assert_int_equal(pday, 7); /* 7 days and the 5 minutes of skew allowance */
    assert_int_equal(psec, 300);
    X509_free(srv);
}

/* ---- idempotency ------------------------------------------------------------------ */

static void test_gateway_certs_generate_second_run_is_noop(void **state)
{
    const char *dir = path_in("noop");
    const char *sans[] = {"changed.test"};
    struct file_id before[GW_ARRAY_LEN(all_files)], after;
    enum gateway_certs_outcome outcome;
    char err[ERRLEN];

    make_bundle(dir);
    for (size_t i = 0; i < GW_ARRAY_LEN(all_files); i++)
        file_id_of(dir, all_files[i], &before[i]);
    usleep(20000); /* a rewrite would show in the nanosecond mtime */
    assert_int_equal(generate(dir, sans, 1, 30, &outcome, err), 0);
    assert_int_equal(outcome, GATEWAY_CERTS_PRESENT);
    for (size_t i = 0; i < GW_ARRAY_LEN(all_files); i++) {
        file_id_of(dir, all_files[i], &after);
        assert_same_file(&before[i], &after);
    }
    /* ca.key is not needed to count as complete. */
    assert_int_equal(unlink(file_in(dir, "ca.key")), 0);
    assert_int_equal(generate(dir, NULL, 0, 30, &outcome, err), 0);
    assert_int_equal(outcome, GATEWAY_CERTS_PRESENT);
    assert_false(exists(dir, "ca.key"));
}

static void test_gateway_certs_generate_partial_lists_files(void **state)
{
    const char *dir = path_in("partial");
    enum gateway_certs_outcome outcome;
    struct file_id before, after;
    char err[ERRLEN];

    make_bundle(dir);
    assert_int_equal(unlink(file_in(dir, "client/tls.key")), 0);
    assert_int_equal(unlink(file_in(dir, "jwt/public.pem")), 0);
    file_id_of(dir, "ca.crt", &before);
    assert_int_equal(generate(dir, NULL, 0, 30, &outcome, err), GATEWAY_CERTS_ERR_PARTIAL);
    assert_non_null(strstr(err, "partial TLS bundle in"));
    assert_non_null(strstr(err, "present: ca.crt, server/tls.crt, server/tls.key, "
                                "client/tls.crt, jwt/signing.pem, jwt/kid, ca.key; "));
    assert_non_null(strstr(err, "missing: client/tls.key, jwt/public.pem."));
    assert_non_null(strstr(err, "Restore the missing files, or move"));
    /* Nothing was touched or filled in. */
    assert_false(exists(dir, "client/tls.key"));
    assert_false(exists(dir, "jwt/public.pem"));
    file_id_of(dir, "ca.crt", &after);
    assert_same_file(&before, &after);
}

static void test_gateway_certs_generate_stray_ca_key_is_partial(void **state)
{
    const char *dir = path_in("stray");
    enum gateway_certs_outcome outcome;
    char err[ERRLEN];

    assert_int_equal(mkdir(dir, 0700), 0);
    FILE *f = fopen(file_in(dir, "ca.key"), "w");
    assert_non_null(f);
    fputs("somebody's key\n", f);
    fclose(f);
    assert_int_equal(generate(dir, NULL, 0, 30, &outcome, err), GATEWAY_CERTS_ERR_PARTIAL);
    assert_non_null(strstr(err, "present: ca.key; missing: ca.crt,"));
}

static void test_gateway_certs_generate_empty_dir_is_filled(void **state)
{
    const char *dir = path_in("empty");
    assert_int_equal(mkdir(dir, 0755), 0);
    make_bundle(dir);
    for (size_t i = 0; i < GW_ARRAY_LEN(all_files); i++)
        assert_true(exists(dir, all_files[i]));
}

/* ---- failures ------------------------------------------------------------------ */

static void test_gateway_certs_generate_failure_unwinds(void **state)
{
    const char *dir = path_in("unwind");
    enum gateway_certs_outcome outcome;
    char err[ERRLEN];

    /* A file where jwt/ should be: the TLS files are written, the key set
     * cannot be, and the run must take the TLS files back. */
    assert_int_equal(mkdir(dir, 0700), 0);
    FILE *f = fopen(file_in(dir, "jwt"), "w");
    assert_non_null(f);
    fclose(f);
    assert_int_equal(generate(dir, NULL, 0, 30, &outcome, err), GATEWAY_CERTS_ERR_IO);
    assert_non_null(strstr(err, "sandbox token keys"));
    for (size_t i = 0; i < GW_ARRAY_LEN(all_files); i++)
        if (strncmp(all_files[i], "jwt/", 4) != 0)
            assert_false(exists(dir, all_files[i]));
}

static void test_gateway_certs_generate_bad_output_dir(void **state)
{
    const char *blocker = path_in("blocker");
    char dir[600];
    enum gateway_certs_outcome outcome;
    char err[ERRLEN];

    FILE *f = fopen(blocker, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(dir, sizeof(dir), "%s/tls", blocker);
    assert_int_equal(generate(dir, NULL, 0, 30, &outcome, err), GATEWAY_CERTS_ERR_IO);
    assert_non_null(strstr(err, "cannot create directory"));
    assert_non_null(strstr(err, blocker));
    /* The directory itself being a file. */
    assert_int_equal(generate(blocker, NULL, 0, 30, &outcome, err), GATEWAY_CERTS_ERR_IO);
    assert_non_null(strstr(err, "something else is in the way"));
    assert_int_equal(generate("", NULL, 0, 30, &outcome, err), GATEWAY_CERTS_ERR_USAGE);
    assert_non_null(strstr(err, "no output directory"));
}

static void test_gateway_certs_generate_bad_names_and_days(void **state)
{
    static const char *const bad[] = {"bad name",    "",         "a..b",       "-lead.test",
                                      "trail-.test", "x.*.test", "comma,test", "1.2.3.4/8"};
    const char *dir = path_in("bad");
    enum gateway_certs_outcome outcome;
    char err[ERRLEN];

    for (size_t i = 0; i < GW_ARRAY_LEN(bad); i++) {
        assert_int_equal(generate(dir, &bad[i], 1, 30, &outcome, err), GATEWAY_CERTS_ERR_USAGE);
        assert_non_null(strstr(err, "not an IP address or a DNS name"));
    }
    assert_int_equal(generate(dir, NULL, 0, 0, &outcome, err), GATEWAY_CERTS_ERR_USAGE);
    assert_non_null(strstr(err, "--days"));
    assert_int_equal(generate(dir, NULL, 0, 36501, &outcome, err), GATEWAY_CERTS_ERR_USAGE);
    assert_false(exists(dir, ""));
}

/* ---- the command ------------------------------------------------------------------ */

/* Runs gateway_certs_main over |argv|; |out|/|errs| receive the texts. */
static int run_main(int argc, const char **argv, char **out, char **errs)
{
    size_t n1, n2;
    FILE *fo = open_memstream(out, &n1);
    FILE *fe = open_memstream(errs, &n2);
    int code = gateway_certs_main(argc, (char **)argv, fo, fe);
    fclose(fo);
    fclose(fe);
    return code;
}

static void test_gateway_certs_main_outcomes(void **state)
{
    char dir_arg[600], *out = NULL, *errs = NULL;
    const char *dir = path_in("cmd");
    snprintf(dir_arg, sizeof(dir_arg), "--output-dir=%s", dir);
    const char *argv[] = {"generate-certs", dir_arg, "--san", "cmd.test", "--days", "9"};

    assert_int_equal(run_main(6, argv, &out, &errs), 0);
    assert_non_null(strstr(out, "Wrote a local TLS bundle to"));
    assert_non_null(strstr(out, "valid 9 days"));
    assert_non_null(strstr(out, "cmd.test"));
    free(out);
    free(errs);
    assert_int_equal(run_main(2, argv, &out, &errs), 0);
    assert_non_null(strstr(out, "TLS bundle already present in"));
    assert_non_null(strstr(out, "nothing to do"));
    free(out);
    free(errs);
    assert_int_equal(unlink(file_in(dir, "server/tls.crt")), 0);
    assert_int_equal(run_main(2, argv, &out, &errs), 1);
    assert_non_null(strstr(errs, "missing: server/tls.crt."));
    free(out);
    free(errs);
}

static void test_gateway_certs_main_usage_errors(void **state)
{
    static const struct {
        int argc;
        const char *argv[4];
        const char *msg;
    } cases[] = {
        {2, {"generate-certs", "--bogus"}, "unknown argument '--bogus'"},
        {2, {"generate-certs", "--san"}, "missing value for '--san'"},
        {3, {"generate-certs", "--days", "12x"}, "--days '12x': expected 1 to 36500"},
        {3, {"generate-certs", "--days", "-1"}, "--days '-1'"},
        {2, {"generate-certs", "--output-dir="}, "needs a non-empty value"},
        {4, {"generate-certs", "--output-dir", "/tmp/x", "--san=a b"}, "not an IP address"},
    };
    char *out, *errs;

    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        assert_int_equal(run_main(cases[i].argc, (const char **)cases[i].argv, &out, &errs), 2);
        assert_non_null(strstr(errs, cases[i].msg));
        free(out);
        free(errs);
    }
    const char *help[] = {"generate-certs", "--help"};
    assert_int_equal(run_main(2, help, &out, &errs), 0);
    assert_non_null(strstr(out, "Usage: openshell-gateway generate-certs"));
    free(out);
    free(errs);
}

static void test_gateway_certs_main_default_dir_from_env(void **state)
{
    const char *dir = path_in("envdir");
    const char *argv[] = {"generate-certs"};
    char *out, *errs;

    setenv("OPENSHELL_LOCAL_TLS_DIR", dir, 1);
    assert_int_equal(run_main(1, argv, &out, &errs), 0);
    unsetenv("OPENSHELL_LOCAL_TLS_DIR");
    assert_non_null(strstr(out, dir));
    assert_null(strstr(out, "not the default directory"));
    assert_true(exists(dir, "server/tls.key"));
    free(out);
    free(errs);
}

static int setup(void **state)
{
    (void)state;
    if (mkdtemp(tmp_root) == NULL)
        return -1;
    log_set_level(LOG_WARN); /* jwt.keys_generated is info */
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gateway_certs_generate_chains_to_ca),
        cmocka_unit_test(test_gateway_certs_generate_server_names),
        cmocka_unit_test(test_gateway_certs_generate_keys_match_and_are_private),
        cmocka_unit_test(test_gateway_certs_generate_jwt_keys_load),
        cmocka_unit_test(test_gateway_certs_generate_validity_days),
        cmocka_unit_test(test_gateway_certs_generate_second_run_is_noop),
        cmocka_unit_test(test_gateway_certs_generate_partial_lists_files),
        cmocka_unit_test(test_gateway_certs_generate_stray_ca_key_is_partial),
        cmocka_unit_test(test_gateway_certs_generate_empty_dir_is_filled),
        cmocka_unit_test(test_gateway_certs_generate_failure_unwinds),
        cmocka_unit_test(test_gateway_certs_generate_bad_output_dir),
        cmocka_unit_test(test_gateway_certs_generate_bad_names_and_days),
        cmocka_unit_test(test_gateway_certs_main_outcomes),
        cmocka_unit_test(test_gateway_certs_main_usage_errors),
        cmocka_unit_test(test_gateway_certs_main_default_dir_from_env),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
