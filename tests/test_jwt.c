/* Unit tests for sandbox JWTs (src/jwt/jwt.c): base64url, minting and
 * verifying, every rejection path of jwt_verify_sandbox, key files
 * (generation, modes, reload, partial and mismatched sets) and the JWKS.
 * Keys are generated under a temporary directory removed at the end; tokens
 * with chosen headers and claims are signed here with the same private key
 * through OpenSSL, so each claim check is reached past the signature. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <ftw.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jwt/jwt.h"

#define ERRLEN 512
#define NOW    ((uint64_t)1700000000)
#define SID    "0b7c8a1e-2f44-4c1a-9d3e-5a6b7c8d9e0f"
#define SID2   "11111111-2222-4333-8444-555555555555"
#define ISS    "openshell-gateway:openshell"
#define SUB    "spiffe://openshell/sandbox/" SID

/* One key set for the token tests, and a second one (another kid and key). */
struct key_set {
    char dir[256];
    char priv_path[300], pub_path[300], kid_path[300];
    struct jwt_key_paths paths;
    struct jwt_keys *keys;
    EVP_PKEY *priv; /* the same private key, loaded here to forge tokens */
};

static char tmp_root[] = "/tmp/test_jwt.XXXXXX";
static struct key_set ours, theirs;

/* ---- helpers ------------------------------------------------------------------ */

static void set_paths(struct key_set *s, const char *dir)
{
    snprintf(s->dir, sizeof(s->dir), "%s", dir);
    snprintf(s->priv_path, sizeof(s->priv_path), "%s/jwt/signing.pem", dir);
    snprintf(s->pub_path, sizeof(s->pub_path), "%s/jwt/public.pem", dir);
    snprintf(s->kid_path, sizeof(s->kid_path), "%s/jwt/kid", dir);
    s->paths.signing_key_path = s->priv_path;
    s->paths.public_key_path = s->pub_path;
    s->paths.kid_path = s->kid_path;
}

static EVP_PKEY *read_priv_pem(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    EVP_PKEY *pk = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(pk);
    return pk;
}

static void key_set_make(struct key_set *s, const char *name)
{
    char dir[256];
    char err[ERRLEN] = "";

    snprintf(dir, sizeof(dir), "%s/%s", tmp_root, name);
    set_paths(s, dir);
    s->keys = jwt_keys_load(&s->paths, true, err, sizeof(err));
    if (s->keys == NULL)
        fail_msg("jwt_keys_load: %s", err);
    s->priv = read_priv_pem(s->priv_path);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_tree(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int group_setup(void **state)
{
    (void)state;
    log_set_level(LOG_WARN); /* key generation logs at info */
    if (mkdtemp(tmp_root) == NULL)
        return -1;
    key_set_make(&ours, "ours");
    key_set_make(&theirs, "theirs");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    struct key_set *sets[] = {&ours, &theirs};
    for (size_t i = 0; i < 2; i++) {
        jwt_keys_free(sets[i]->keys);
        EVP_PKEY_free(sets[i]->priv);
    }
    rm_tree(tmp_root);
    return 0;
}

static char *b64(const void *p, size_t n)
{
    char *s = malloc(4 * ((n + 2) / 3) + 1);
    assert_non_null(s);
    jwt_b64url_encode(p, n, s);
    return s;
}

/* A compact JWS of the given header and claims text, signed with |key|. */
static char *forge(EVP_PKEY *key, const char *header, const char *claims)
{
    char *h = b64(header, strlen(header)), *c = b64(claims, strlen(claims));
    size_t tlen = strlen(h) + 1 + strlen(c);
    char *tok = malloc(tlen + 1 + 86 + 1);
    assert_non_null(tok);
    snprintf(tok, tlen + 1, "%s.%s", h, c);
    free(h);
    free(c);

    uint8_t sig[64];
    size_t siglen = sizeof(sig);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, NULL, NULL, key), 1);
    assert_int_equal(EVP_DigestSign(ctx, sig, &siglen, (unsigned char *)tok, tlen), 1);
    EVP_MD_CTX_free(ctx);
    tok[tlen] = '.';
    jwt_b64url_encode(sig, siglen, tok + tlen + 1);
    return tok;
}

static char *our_header(void)
{
    return gw_xasprintf("{\"alg\":\"EdDSA\",\"kid\":\"%s\",\"typ\":\"JWT\"}",
                        jwt_keys_kid(ours.keys));
}

/* Standard claims with one field replaced: |extra| is spliced in verbatim
 * (e.g. "\"exp\":5,") and the named field in |skip| left out. */
static char *claims_with(const char *skip, const char *extra)
{
    struct gw_buf b = {0};
    const char *fields[][2] = {
        {"aud", "\"" ISS "\""}, {"exp", "1700003600"},         {"iat", "1700000000"},
        {"iss", "\"" ISS "\""}, {"sandbox_id", "\"" SID "\""}, {"sub", "\"" SUB "\""},
    };

    gw_buf_append(&b, "{", 1);
    if (extra != NULL)
        gw_buf_appendf(&b, "%s", extra);
    for (size_t i = 0; i < GW_ARRAY_LEN(fields); i++) {
        char needle[32];
        snprintf(needle, sizeof(needle), "\"%s\":", fields[i][0]);
        bool replaced = extra != NULL && strstr(extra, needle) != NULL;
        if ((skip != NULL && strcmp(skip, fields[i][0]) == 0) || replaced)
            continue;
        gw_buf_appendf(&b, "\"%s\":%s,", fields[i][0], fields[i][1]);
    }
    if (b.data[b.len - 1] == ',')
        b.len--;
    gw_buf_append(&b, "}", 1);
    char *s = gw_xstrdup(gw_buf_cstr(&b));
    gw_buf_free(&b);
    return s;
}

/* Signs our header + claims (|skip|, |extra| as claims_with()). */
static char *forge_claims(const char *skip, const char *extra)
{
    char *h = our_header(), *c = claims_with(skip, extra);
    char *tok = forge(ours.priv, h, c);
    free(h);
    free(c);
    return tok;
}

static enum jwt_verdict verify_at(const char *tok, uint64_t now, const char **why)
{
    char sid[37] = "";
    return jwt_verify_sandbox(ours.keys, ISS, tok, strlen(tok), now, sid, NULL, why);
}

static void expect_verdict(const char *tok, enum jwt_verdict want, const char *why_part)
{
    const char *why = NULL;
    enum jwt_verdict got = verify_at(tok, NOW, &why);
    if (got != want || why == NULL || strstr(why, why_part) == NULL)
        fail_msg("verdict %d (%s), want %d (%s)", got, why ? why : "(null)", want, why_part);
}

static void expect_claims_invalid(const char *skip, const char *extra, const char *why_part)
{
    char *tok = forge_claims(skip, extra);
    expect_verdict(tok, JWT_INVALID, why_part);
    free(tok);
}

static mode_t file_mode(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 07777;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *buf = calloc(1, 65536);
    assert_non_null(buf);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static void copy_file(const char *from, const char *to)
{
    char *s = slurp(from);
    write_file(to, s);
    free(s);
}

/* ---- base64url -------------------------------------------------------------- */

/* RFC 4648 §10 vectors; unpadded, as JWS uses them. */
static const char *const rfc_vectors[][2] = {
    {"", ""},           {"f", "Zg"},          {"fo", "Zm8"},          {"foo", "Zm9v"},
    {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"},
};

static void test_jwt_b64url_encode_rfc4648_vectors(void **state)
{
    (void)state;
    char out[64];
    for (size_t i = 0; i < GW_ARRAY_LEN(rfc_vectors); i++) {
        size_t n =
            jwt_b64url_encode((const uint8_t *)rfc_vectors[i][0], strlen(rfc_vectors[i][0]), out);
        assert_string_equal(out, rfc_vectors[i][1]);
        assert_int_equal(n, strlen(rfc_vectors[i][1]));
    }
    /* The URL-safe alphabet: standard "+/" become "-_". */
    const uint8_t hi[] = {0xfb, 0xff, 0xbf};
    jwt_b64url_encode(hi, sizeof(hi), out);
    assert_string_equal(out, "-_-_");
    jwt_b64url_encode(hi, 2, out);
    assert_string_equal(out, "-_8");
}

static void test_jwt_b64url_decode_rfc4648_vectors(void **state)
{
    (void)state;
    uint8_t out[64];
    for (size_t i = 0; i < GW_ARRAY_LEN(rfc_vectors); i++) {
        const char *enc = rfc_vectors[i][1];
        long n = jwt_b64url_decode(enc, strlen(enc), out);
        assert_int_equal(n, (long)strlen(rfc_vectors[i][0]));
        assert_memory_equal(out, rfc_vectors[i][0], (size_t)n);
    }
    assert_int_equal(jwt_b64url_decode("-_-_", 4, out), 3);
    assert_int_equal(out[0], 0xfb);
    assert_int_equal(out[1], 0xff);
    assert_int_equal(out[2], 0xbf);
}

static void test_jwt_b64url_round_trip_all_bytes(void **state)
{
    (void)state;
    uint8_t in[256], back[256];
    char enc[4 * 86 + 1];
    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (uint8_t)(255 - i);
    for (size_t len = 0; len <= sizeof(in); len++) {
        size_t n = jwt_b64url_encode(in, len, enc);
        assert_int_equal(n, (len * 4 + 2) / 3);
        assert_int_equal(jwt_b64url_decode(enc, n, back), (long)len);
        assert_memory_equal(back, in, len);
    }
}

static void test_jwt_b64url_decode_rejects(void **state)
{
    (void)state;
    uint8_t out[64];
    const char *bad[] = {
        "Zg==",        /* padding */
        "Zm8=",        /* padding */
        "Zm9v=",       /* padding */
        "Z",           /* 4n+1 characters */
        "Zm9vY",       /* 4n+1 characters */
        "Zh",          /* non-zero unused bits: not the canonical encoding */
        "Zm9",         /* non-zero unused bits */
        "Zm+v",        /* standard alphabet */
        "Zm/v",        /* standard alphabet */
        "Zm9 v",       /* space */
        "Zm9v\n",      /* newline */
        "Zm9v.Zg",     /* separator */
        "Zm\xc3\xa9v", /* non-ASCII */
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(bad); i++) {
        if (jwt_b64url_decode(bad[i], strlen(bad[i]), out) != -1)
            fail_msg("accepted '%s'", bad[i]);
    }
    assert_int_equal(jwt_b64url_decode("Zm\0v", 4, out), -1); /* NUL inside */
}

/* ---- mint and verify ---------------------------------------------------------- */

static void test_jwt_issuer_format(void **state)
{
    (void)state;
    char *iss = jwt_issuer("openshell");
    assert_string_equal(iss, ISS);
    free(iss);
}

/* Decodes segment |idx| of |tok| into a NUL-terminated heap string. */
static char *segment_text(const char *tok, int idx)
{
    const char *p = tok;
    for (int i = 0; i < idx; i++)
        p = strchr(p, '.') + 1;
    size_t n = strcspn(p, ".");
    char *out = calloc(1, n + 1);
    assert_non_null(out);
    long m = jwt_b64url_decode(p, n, (uint8_t *)out);
    assert_true(m >= 0);
    out[m] = '\0';
    return out;
}

static void test_jwt_mint_verify_round_trip(void **state)
{
    (void)state;
    uint64_t exp = 0, got_exp = 0;
    char *tok = jwt_mint_sandbox(ours.keys, ISS, SID, NOW, 3600, &exp);
    assert_int_equal(exp, NOW + 3600);

    char *h = segment_text(tok, 0), *want_h = our_header();
    assert_string_equal(h, want_h);
    char *c = segment_text(tok, 1);
    assert_string_equal(c, "{\"aud\":\"" ISS "\",\"exp\":1700003600,\"iat\":1700000000,"
                           "\"iss\":\"" ISS "\",\"sandbox_id\":\"" SID "\",\"sub\":\"" SUB "\"}");

    char sid[37] = "";
    const char *why = NULL;
    assert_int_equal(
        jwt_verify_sandbox(ours.keys, ISS, tok, strlen(tok), NOW + 10, sid, &got_exp, &why),
        JWT_OK);
    assert_string_equal(sid, SID);
    assert_int_equal(got_exp, NOW + 3600);
    assert_non_null(why);
    free(h);
    free(want_h);
    free(c);
    free(tok);
}

/* |len| bounds the token: bytes after it are not part of it. */
static void test_jwt_verify_uses_len_not_nul(void **state)
{
    (void)state;
    char *tok = jwt_mint_sandbox(ours.keys, ISS, SID, NOW, 60, NULL);
    size_t n = strlen(tok);
    char *buf = malloc(n + 8);
    assert_non_null(buf);
    memcpy(buf, tok, n);
    memcpy(buf + n, ".junk!!", 8);
    char sid[37];
    const char *why;
    assert_int_equal(jwt_verify_sandbox(ours.keys, ISS, buf, n, NOW, sid, NULL, &why), JWT_OK);
    assert_int_equal(jwt_verify_sandbox(ours.keys, ISS, buf, n + 2, NOW, sid, NULL, &why),
                     JWT_NOT_MINE);
    free(buf);
    free(tok);
}

static void test_jwt_mint_ttl_zero_never_expires(void **state)
{
    (void)state;
    uint64_t exp = 99, got_exp = 99;
    char *tok = jwt_mint_sandbox(ours.keys, ISS, SID, NOW, 0, &exp);
    assert_int_equal(exp, 0);
    char sid[37];
    const char *why;
    assert_int_equal(jwt_verify_sandbox(ours.keys, ISS, tok, strlen(tok), NOW + 100u * 365 * 86400,
                                        sid, &got_exp, &why),
                     JWT_OK);
    assert_int_equal(got_exp, 0);
    free(tok);
}

static void test_jwt_mint_huge_ttl_saturates(void **state)
{
    (void)state;
    uint64_t exp = 0;
    char *tok = jwt_mint_sandbox(ours.keys, ISS, SID, NOW, UINT64_MAX, &exp);
    assert_int_equal(exp, (uint64_t)INT64_MAX);
    expect_verdict(tok, JWT_OK, "valid");
    free(tok);
}

static void test_jwt_verify_expiry_leeway(void **state)
{
    (void)state;
    char *tok = jwt_mint_sandbox(ours.keys, ISS, SID, NOW, 100, NULL); /* exp = NOW + 100 */
    const char *why;
    assert_int_equal(verify_at(tok, NOW + 100, &why), JWT_OK);
    assert_int_equal(verify_at(tok, NOW + 160, &why), JWT_OK); /* within the 60 s leeway */
    assert_int_equal(verify_at(tok, NOW + 161, &why), JWT_INVALID);
    assert_string_equal(why, "token expired");
    free(tok);
}

static void test_jwt_verify_wrong_kid_not_mine(void **state)
{
    (void)state;
    /* Another key set's token: its kid is not ours. */
    char *tok = jwt_mint_sandbox(theirs.keys, ISS, SID, NOW, 60, NULL);
    expect_verdict(tok, JWT_NOT_MINE, "kid");
    free(tok);
    /* Our key, another kid; and no kid at all. */
    char *c = claims_with(NULL, NULL);
    tok = forge(ours.priv, "{\"alg\":\"EdDSA\",\"kid\":\"someone-else\",\"typ\":\"JWT\"}", c);
    expect_verdict(tok, JWT_NOT_MINE, "kid");
    free(tok);
    tok = forge(ours.priv, "{\"alg\":\"EdDSA\",\"typ\":\"JWT\"}", c);
    expect_verdict(tok, JWT_NOT_MINE, "kid");
    free(tok);
    /* A kid that only starts like ours. */
    char *h = gw_xasprintf("{\"alg\":\"EdDSA\",\"kid\":\"%sx\"}", jwt_keys_kid(ours.keys));
    tok = forge(ours.priv, h, c);
    expect_verdict(tok, JWT_NOT_MINE, "kid");
    free(tok);
    free(h);
    free(c);
}

static void test_jwt_verify_other_alg_not_mine(void **state)
{
    (void)state;
    const char *kid = jwt_keys_kid(ours.keys);
    char *c = claims_with(NULL, NULL);
    const char *algs[] = {"\"HS256\"",   "\"none\"", "\"RS256\"", "\"eddsa\"",
                          "\"Ed25519\"", "5",        "null"};
    for (size_t i = 0; i < GW_ARRAY_LEN(algs); i++) {
        char *h = gw_xasprintf("{\"alg\":%s,\"kid\":\"%s\",\"typ\":\"JWT\"}", algs[i], kid);
        char *tok = forge(ours.priv, h, c);
        expect_verdict(tok, JWT_NOT_MINE, "alg");
        free(tok);
        free(h);
    }
    /* alg none with an empty signature, the classic forgery. */
    char *h = gw_xasprintf("{\"alg\":\"none\",\"kid\":\"%s\"}", kid);
    char *hb = b64(h, strlen(h)), *cb = b64(c, strlen(c));
    char *tok = gw_xasprintf("%s.%s.", hb, cb);
    expect_verdict(tok, JWT_NOT_MINE, "alg");
    free(tok);
    free(hb);
    free(cb);
    free(h);
    free(c);
}

static void test_jwt_verify_bad_signature(void **state)
{
    (void)state;
    char *tok = jwt_mint_sandbox(ours.keys, ISS, SID, NOW, 60, NULL);
    size_t n = strlen(tok);
    /* Flip one signature character (keeping the encoding canonical). */
    tok[n - 5] = tok[n - 5] == 'A' ? 'B' : 'A';
    expect_verdict(tok, JWT_INVALID, "bad signature");
    free(tok);

    /* Signed by another key under our kid. */
    char *h = our_header(), *c = claims_with(NULL, NULL);
    tok = forge(theirs.priv, h, c);
    expect_verdict(tok, JWT_INVALID, "bad signature");
    free(tok);

    /* A signature of the wrong size, and none at all. */
    tok = forge(ours.priv, h, c);
    n = strlen(tok);
    tok[n - 4] = '\0';
    expect_verdict(tok, JWT_INVALID, "bad signature");
    strrchr(tok, '.')[1] = '\0';
    expect_verdict(tok, JWT_INVALID, "bad signature");
    free(tok);
    free(h);
    free(c);
}

/* Claims from one token with the signature of another. */
static void test_jwt_verify_tampered_claims(void **state)
{
    (void)state;
    char *a = jwt_mint_sandbox(ours.keys, ISS, SID, NOW, 60, NULL);
    char *b = jwt_mint_sandbox(ours.keys, ISS, SID2, NOW, 60, NULL);
    char *a_sig = strrchr(a, '.');
    char *b_sig = strrchr(b, '.');
    assert_int_equal(strlen(a_sig), strlen(b_sig));
    memcpy(b_sig, a_sig, strlen(a_sig));
    expect_verdict(b, JWT_INVALID, "bad signature");

    /* Re-encoding a claim by hand (sandbox_id swapped) without re-signing. */
    char *c = claims_with(NULL, "\"sandbox_id\":\"" SID2 "\",");
    char *cb = b64(c, strlen(c));
    char *first_dot = strchr(a, '.');
    char *tok = gw_xasprintf("%.*s.%s%s", (int)(first_dot - a), a, cb, a_sig);
    expect_verdict(tok, JWT_INVALID, "bad signature");
    free(tok);
    free(cb);
    free(c);
    free(a);
    free(b);
}

static void test_jwt_verify_issuer_and_audience(void **state)
{
    (void)state;
    expect_claims_invalid(NULL, "\"iss\":\"openshell-gateway:other\",", "wrong issuer");
    expect_claims_invalid(NULL, "\"iss\":\"openshell-gateway:openshell \",", "wrong issuer");
    expect_claims_invalid(NULL, "\"iss\":\"OPENSHELL-GATEWAY:openshell\",", "wrong issuer");
    expect_claims_invalid(NULL, "\"iss\":[\"" ISS "\"],", "wrong issuer");
    expect_claims_invalid(NULL, "\"aud\":\"openshell-gateway:other\",", "wrong audience");
    expect_claims_invalid(NULL, "\"aud\":\"openshell-gateway:opensh\",", "wrong audience");
    expect_claims_invalid(NULL, "\"aud\":[\"x\"],", "wrong audience");
    expect_claims_invalid("iss", NULL, "missing iss");
    expect_claims_invalid("aud", NULL, "missing aud");

    /* The verifier's issuer decides: another gateway id rejects our token. */
    char *tok = jwt_mint_sandbox(ours.keys, ISS, SID, NOW, 60, NULL);
    char sid[37];
    const char *why;
    assert_int_equal(jwt_verify_sandbox(ours.keys, "openshell-gateway:b", tok, strlen(tok), NOW,
                                        sid, NULL, &why),
                     JWT_INVALID);
    assert_string_equal(why, "wrong issuer");
    free(tok);
}

static void test_jwt_verify_required_claims(void **state)
{
    (void)state;
    expect_claims_invalid("exp", NULL, "missing exp");
    expect_claims_invalid("sub", NULL, "missing sub");
    expect_claims_invalid("sandbox_id", NULL, "missing sandbox_id");
    /* iat is optional. */
    char *tok = forge_claims("iat", NULL);
    expect_verdict(tok, JWT_OK, "valid");
    free(tok);
}

static void test_jwt_verify_numeric_claims_are_integers(void **state)
{
    (void)state;
    expect_claims_invalid(NULL, "\"exp\":\"1700003600\",", "exp is not");
    expect_claims_invalid(NULL, "\"exp\":1700003600.0,", "exp is not");
    expect_claims_invalid(NULL, "\"exp\":1.7e9,", "exp is not");
    expect_claims_invalid(NULL, "\"exp\":-1,", "exp is not");
    expect_claims_invalid(NULL, "\"exp\":null,", "exp is not");
    expect_claims_invalid(NULL, "\"exp\":true,", "exp is not");
    expect_claims_invalid(NULL, "\"iat\":\"now\",", "iat is not");
    expect_claims_invalid(NULL, "\"iat\":1.5,", "iat is not");
    /* Past int64: the JSON parser refuses it, so the claims are unreadable. */
    expect_claims_invalid(NULL, "\"exp\":99999999999999999999,", "claims");
}

static void test_jwt_verify_exp_claims(void **state)
{
    (void)state;
    char *tok = forge_claims(NULL, "\"exp\":0,");
    expect_verdict(tok, JWT_OK, "valid");
    free(tok);
    tok = forge_claims(NULL, "\"exp\":1699999940,"); /* NOW - 60 */
    expect_verdict(tok, JWT_OK, "valid");
    free(tok);
    expect_claims_invalid(NULL, "\"exp\":1699999939,", "token expired");
    expect_claims_invalid(NULL, "\"exp\":1,", "token expired");
    /* nbf is honoured when present, with the same leeway. */
    tok = forge_claims(NULL, "\"nbf\":1700000060,");
    expect_verdict(tok, JWT_OK, "valid");
    free(tok);
    expect_claims_invalid(NULL, "\"nbf\":1700000061,", "not yet valid");
    expect_claims_invalid(NULL, "\"nbf\":\"x\",", "nbf is not");
}

static void test_jwt_verify_subject(void **state)
{
    (void)state;
    expect_claims_invalid(NULL, "\"sub\":\"spiffe://openshell/sandbox/" SID2 "\",",
                          "sub does not match");
    expect_claims_invalid(NULL, "\"sub\":\"spiffe://other/sandbox/" SID "\",",
                          "sub does not match");
    expect_claims_invalid(NULL, "\"sub\":\"" SID "\",", "sub does not match");
    expect_claims_invalid(NULL, "\"sub\":\"" SUB "/\",", "sub does not match");
    expect_claims_invalid(NULL, "\"sub\":5,", "sub is not a string");
    /* Case matters: compared exactly. */
    expect_claims_invalid(NULL, "\"sandbox_id\":\"0B7C8A1E-2F44-4C1A-9D3E-5A6B7C8D9E0F\",",
                          "sub does not match");
    expect_claims_invalid(NULL,
                          "\"sandbox_id\":\"sandbox-1\",\"sub\":\"spiffe://openshell/"
                          "sandbox/sandbox-1\",",
                          "not a UUID");
    expect_claims_invalid(NULL, "\"sandbox_id\":\"" SID "x\",", "not a UUID");
    expect_claims_invalid(NULL, "\"sandbox_id\":7,", "sandbox_id is not a string");
    expect_claims_invalid(NULL, "\"sandbox_id\":\"0b7c8a1e-2f44-4c1a-9d3e-5a6b7c8d9e0\\u0000\",",
                          "claims");
}

static void test_jwt_verify_typ(void **state)
{
    (void)state;
    const char *kid = jwt_keys_kid(ours.keys);
    char *c = claims_with(NULL, NULL);
    struct {
        const char *typ;
        enum jwt_verdict want;
        const char *why;
    } cases[] = {
        {",\"typ\":\"openshell-ext+jwt\"", JWT_INVALID, "openshell-ext+jwt"},
        {",\"typ\":\"JOSE\"", JWT_INVALID, "typ"},
        {",\"typ\":5", JWT_INVALID, "typ"},
        {",\"crit\":[\"exp\"]", JWT_INVALID, "crit"},
        {"", JWT_OK, "valid"}, /* typ is optional */
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        char *h = gw_xasprintf("{\"alg\":\"EdDSA\",\"kid\":\"%s\"%s}", kid, cases[i].typ);
        char *tok = forge(ours.priv, h, c);
        expect_verdict(tok, cases[i].want, cases[i].why);
        free(tok);
        free(h);
    }
    free(c);
}

static void test_jwt_verify_oversize(void **state)
{
    (void)state;
    /* A valid token padded past 8 KiB with an ignored claim. */
    char *pad = malloc(9000);
    assert_non_null(pad);
    memset(pad, 'a', 8999);
    pad[8999] = '\0';
    char *extra = gw_xasprintf("\"x\":\"%s\",", pad);
    char *tok = forge_claims(NULL, extra);
    assert_true(strlen(tok) > 8192);
    expect_verdict(tok, JWT_NOT_MINE, "8 KiB");
    free(tok);
    free(extra);

    /* Just under the limit it is checked normally. */
    pad[5000] = '\0';
    extra = gw_xasprintf("\"x\":\"%s\",", pad);
    tok = forge_claims(NULL, extra);
    assert_true(strlen(tok) <= 8192);
    expect_verdict(tok, JWT_OK, "valid");
    free(tok);
    free(extra);
    free(pad);
}

static void test_jwt_verify_garbage_not_mine(void **state)
{
    (void)state;
    const char *bad[] = {
        "",
        "abc",
        "..",
        "a.b.c",
        "Bearer x.y.z",
        "eyJhbGciOiJFZERTQSJ9..",        /* {"alg":"EdDSA"}, nothing else */
        "W10.e30.AAAA",                  /* header [] */
        "bnVsbA.e30.AAAA",               /* header null */
        "e30.e30.AAAA",                  /* header {} */
        "eyJhbGciOiJFZERTQSIs.e30.AAAA", /* truncated JSON */
        "e30=.e30.AAAA",                 /* padded header */
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(bad); i++) {
        const char *why = NULL;
        if (verify_at(bad[i], NOW, &why) != JWT_NOT_MINE)
            fail_msg("'%s' was not NOT_MINE", bad[i]);
        assert_non_null(why);
    }
    /* Duplicate header keys: the second alg must not win. */
    char *c = claims_with(NULL, NULL);
    char *h = gw_xasprintf("{\"alg\":\"HS256\",\"alg\":\"EdDSA\",\"kid\":\"%s\"}",
                           jwt_keys_kid(ours.keys));
    char *tok = forge(ours.priv, h, c);
    expect_verdict(tok, JWT_NOT_MINE, "header");
    free(tok);
    free(h);
    free(c);
}

static void test_jwt_verify_signed_garbage_claims(void **state)
{
    (void)state;
    char *h = our_header();
    const char *bad[] = {"[]", "null", "{", "{\"sub\":1,\"sub\":2}", "", "\"x\""};
    for (size_t i = 0; i < GW_ARRAY_LEN(bad); i++) {
        char *tok = forge(ours.priv, h, bad[i]);
        expect_verdict(tok, JWT_INVALID, "claims");
        free(tok);
    }
    /* Duplicate claim keys are refused even when both agree. */
    char *c = claims_with(NULL, "\"iss\":\"" ISS "\",\"iss\":\"" ISS "\",");
    char *tok = forge(ours.priv, h, c);
    expect_verdict(tok, JWT_INVALID, "claims");
    free(tok);
    free(c);
    free(h);
}

static void test_jwt_verify_segment_count(void **state)
{
    (void)state;
    char *tok = jwt_mint_sandbox(ours.keys, ISS, SID, NOW, 60, NULL);
    char *four = gw_xasprintf("%s.AAAA", tok);
    expect_verdict(four, JWT_NOT_MINE, "three");
    free(four);
    char *five = gw_xasprintf("%s.AAAA.AAAA", tok); /* JWE shape */
    expect_verdict(five, JWT_NOT_MINE, "three");
    free(five);
    *strrchr(tok, '.') = '\0';
    expect_verdict(tok, JWT_NOT_MINE, "three");
    free(tok);
}

static void test_jwt_verify_padding_characters(void **state)
{
    (void)state;
    char *tok = jwt_mint_sandbox(ours.keys, ISS, SID, NOW, 60, NULL);
    /* "=" on the signature: it is ours by its header, so INVALID. */
    char *t1 = gw_xasprintf("%s==", tok);
    expect_verdict(t1, JWT_INVALID, "bad signature");
    free(t1);
    /* "=" on the claims: signature input changes, so the signature fails. */
    char *d2 = strrchr(tok, '.');
    char *t2 = gw_xasprintf("%.*s=%s", (int)(d2 - tok), tok, d2);
    expect_verdict(t2, JWT_INVALID, "bad signature");
    free(t2);
    /* "=" on the header: not base64url, not recognisably ours. */
    char *d1 = strchr(tok, '.');
    char *t3 = gw_xasprintf("%.*s=%s", (int)(d1 - tok), tok, d1);
    expect_verdict(t3, JWT_NOT_MINE, "header");
    free(t3);
    /* A signature re-encoded with non-zero unused bits is refused. */
    size_t n = strlen(tok);
    char last = tok[n - 1];
    tok[n - 1] = last == 'A' ? 'B' : (char)(last + 1);
    expect_verdict(tok, JWT_INVALID, "bad signature");
    free(tok);
}

/* Signed claims that are valid JSON but odd: unknown claims are ignored. */
static void test_jwt_verify_extra_claims_ignored(void **state)
{
    (void)state;
    char *tok = forge_claims(NULL, "\"jti\":\"abc\",\"caller_kind\":\"sandbox\",");
    const char *why;
    char sid[37];
    uint64_t exp;
    assert_int_equal(jwt_verify_sandbox(ours.keys, ISS, tok, strlen(tok), NOW, sid, &exp, &why),
                     JWT_OK);
    assert_string_equal(sid, SID);
    assert_int_equal(exp, 1700003600);
    free(tok);
}

/* ---- key files ------------------------------------------------------------ */

static void test_jwt_keys_generated_files(void **state)
{
    (void)state;
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/ours/jwt", tmp_root);
    assert_int_equal(file_mode(dir), 0700);
    assert_int_equal(file_mode(ours.priv_path), 0600);
    assert_int_equal(file_mode(ours.pub_path), 0644);
    assert_int_equal(file_mode(ours.kid_path), 0600);

    char *priv = slurp(ours.priv_path), *pub = slurp(ours.pub_path), *kid = slurp(ours.kid_path);
    assert_non_null(strstr(priv, "-----BEGIN PRIVATE KEY-----")); /* PKCS#8 */
    assert_non_null(strstr(pub, "-----BEGIN PUBLIC KEY-----"));   /* SPKI */
    /* kid: 16 random bytes in base64url, one line. */
    assert_int_equal(strlen(kid), 23);
    assert_int_equal(kid[22], '\n');
    kid[22] = '\0';
    assert_string_equal(kid, jwt_keys_kid(ours.keys));
    uint8_t raw[32];
    assert_int_equal(jwt_b64url_decode(kid, 22, raw), 16);
    assert_string_not_equal(jwt_keys_kid(ours.keys), jwt_keys_kid(theirs.keys));
    /* No temporary files left behind. */
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t count = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        count += e->d_name[0] != '.';
    closedir(d);
    assert_int_equal(count, 3);
    free(priv);
    free(pub);
    free(kid);
}

static void test_jwt_keys_reload_same_kid(void **state)
{
    (void)state;
    char err[ERRLEN] = "";
    bool create[] = {true, false};
    for (size_t i = 0; i < 2; i++) {
        struct jwt_keys *k = jwt_keys_load(&ours.paths, create[i], err, sizeof(err));
        if (k == NULL)
            fail_msg("reload: %s", err);
        assert_string_equal(jwt_keys_kid(k), jwt_keys_kid(ours.keys));
        /* Tokens of one load verify with the other. */
        char *tok = jwt_mint_sandbox(k, ISS, SID, NOW, 60, NULL);
        expect_verdict(tok, JWT_OK, "valid");
        free(tok);
        jwt_keys_free(k);
    }
}

static void test_jwt_keys_missing_without_create(void **state)
{
    (void)state;
    struct key_set s;
    char dir[300], err[ERRLEN] = "";
    snprintf(dir, sizeof(dir), "%s/none", tmp_root);
    set_paths(&s, dir);
    assert_null(jwt_keys_load(&s.paths, false, err, sizeof(err)));
    assert_non_null(strstr(err, "no JWT key set"));
    assert_non_null(strstr(err, s.priv_path));
    struct stat st;
    assert_int_equal(stat(dir, &st), -1); /* nothing created */
}

static void test_jwt_keys_partial_set_refused(void **state)
{
    (void)state;
    struct key_set s;
    char dir[300], err[ERRLEN] = "";
    snprintf(dir, sizeof(dir), "%s/partial", tmp_root);
    set_paths(&s, dir);
    struct jwt_keys *k = jwt_keys_load(&s.paths, true, err, sizeof(err));
    assert_non_null(k);
    jwt_keys_free(k);

    assert_int_equal(unlink(s.pub_path), 0);
    bool create[] = {true, false};
    for (size_t i = 0; i < 2; i++) {
        err[0] = '\0';
        assert_null(jwt_keys_load(&s.paths, create[i], err, sizeof(err)));
        assert_non_null(strstr(err, "missing public key"));
        assert_non_null(strstr(err, s.pub_path));
        assert_non_null(strstr(err, "restore"));
        assert_non_null(strstr(err, "remove"));
        assert_null(strchr(err, '\n'));
        struct stat st;
        assert_int_equal(stat(s.pub_path, &st), -1); /* not regenerated */
    }
    /* Only the kid left. */
    assert_int_equal(unlink(s.priv_path), 0);
    assert_null(jwt_keys_load(&s.paths, true, err, sizeof(err)));
    assert_non_null(strstr(err, "missing signing key"));
    assert_non_null(strstr(err, "public key"));
    /* Removing the rest lets a new set be generated. */
    assert_int_equal(unlink(s.kid_path), 0);
    k = jwt_keys_load(&s.paths, true, err, sizeof(err));
    assert_non_null(k);
    jwt_keys_free(k);
}

static void test_jwt_keys_mismatched_public_refused(void **state)
{
    (void)state;
    struct key_set s;
    char dir[300], err[ERRLEN] = "";
    snprintf(dir, sizeof(dir), "%s/mismatch", tmp_root);
    set_paths(&s, dir);
    struct jwt_keys *k = jwt_keys_load(&s.paths, true, err, sizeof(err));
    assert_non_null(k);
    jwt_keys_free(k);
    copy_file(theirs.pub_path, s.pub_path);
    assert_null(jwt_keys_load(&s.paths, false, err, sizeof(err)));
    assert_non_null(strstr(err, "does not match"));
    assert_non_null(strstr(err, s.pub_path));
}

/* Writes |pk| as PKCS#8 PEM to |path|. */
static void write_priv(const char *path, EVP_PKEY *pk)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PKCS8PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
}

static void test_jwt_keys_non_ed25519_refused(void **state)
{
    (void)state;
    struct key_set s;
    char dir[300], err[ERRLEN] = "";
    snprintf(dir, sizeof(dir), "%s/ec", tmp_root);
    set_paths(&s, dir);
    struct jwt_keys *k = jwt_keys_load(&s.paths, true, err, sizeof(err));
    assert_non_null(k);
    jwt_keys_free(k);

    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(ec);
    write_priv(s.priv_path, ec);
    assert_null(jwt_keys_load(&s.paths, false, err, sizeof(err)));
    assert_non_null(strstr(err, "not Ed25519"));

    /* X25519 is a curve25519 key too, but not a signing one. */
    EVP_PKEY *x = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
    assert_non_null(x);
    write_priv(s.priv_path, x);
    assert_null(jwt_keys_load(&s.paths, false, err, sizeof(err)));
    assert_non_null(strstr(err, "not Ed25519"));

    /* An EC public key beside a good private key. */
    write_priv(s.priv_path, ours.priv);
    FILE *f = fopen(s.pub_path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PUBKEY(f, ec), 1);
    fclose(f);
    assert_null(jwt_keys_load(&s.paths, false, err, sizeof(err)));
    assert_non_null(strstr(err, "public key is"));
    EVP_PKEY_free(ec);
    EVP_PKEY_free(x);
}

static void test_jwt_keys_bad_files_refused(void **state)
{
    (void)state;
    struct key_set s;
    char dir[300], err[ERRLEN] = "";
    snprintf(dir, sizeof(dir), "%s/bad", tmp_root);
    set_paths(&s, dir);
    struct jwt_keys *k = jwt_keys_load(&s.paths, true, err, sizeof(err));
    assert_non_null(k);
    jwt_keys_free(k);
    char *good_kid = slurp(s.kid_path);

    const char *kids[] = {"", "\n", "two words\n", "a\nb\n", "tab\there"};
    for (size_t i = 0; i < GW_ARRAY_LEN(kids); i++) {
        write_file(s.kid_path, kids[i]);
        if (jwt_keys_load(&s.paths, false, err, sizeof(err)) != NULL)
            fail_msg("kid '%s' accepted", kids[i]);
        assert_non_null(strstr(err, "kid"));
    }
    /* CRLF and no final newline are fine. */
    write_file(s.kid_path, "my-kid\r\n");
    k = jwt_keys_load(&s.paths, false, err, sizeof(err));
    assert_non_null(k);
    assert_string_equal(jwt_keys_kid(k), "my-kid");
    jwt_keys_free(k);
    write_file(s.kid_path, good_kid);

    /* Not PEM; an encrypted key is refused rather than prompting. */
    write_file(s.priv_path, "not a key\n");
    assert_null(jwt_keys_load(&s.paths, false, err, sizeof(err)));
    assert_non_null(strstr(err, "not an unencrypted PEM private key"));
    FILE *f = fopen(s.priv_path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PKCS8PrivateKey(f, ours.priv, EVP_aes_256_cbc(), NULL, 0, NULL,
                                               (void *)"passphrase"),
                     1);
    fclose(f);
    assert_null(jwt_keys_load(&s.paths, false, err, sizeof(err)));
    assert_non_null(strstr(err, "not an unencrypted PEM private key"));
    write_file(s.pub_path, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
    write_priv(s.priv_path, ours.priv);
    assert_null(jwt_keys_load(&s.paths, false, err, sizeof(err)));
    assert_non_null(strstr(err, "not a PEM public key"));
    free(good_kid);
    ERR_clear_error();
}

static void test_jwt_keys_bad_paths(void **state)
{
    (void)state;
    char err[ERRLEN] = "";
    struct jwt_key_paths p = {ours.priv_path, NULL, ours.kid_path};
    assert_null(jwt_keys_load(&p, true, err, sizeof(err)));
    assert_non_null(strstr(err, "required"));
    p.public_key_path = "";
    assert_null(jwt_keys_load(&p, true, err, sizeof(err)));
    p.public_key_path = ours.priv_path;
    assert_null(jwt_keys_load(&p, true, err, sizeof(err)));
    assert_non_null(strstr(err, "different"));
    /* A directory in place of the key. */
    struct key_set s;
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/dir", tmp_root);
    set_paths(&s, dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(dir, sizeof(dir), "%s/dir/jwt", tmp_root);
    assert_int_equal(mkdir(dir, 0700), 0);
    assert_int_equal(mkdir(s.priv_path, 0700), 0);
    write_file(s.pub_path, "x");
    write_file(s.kid_path, "x");
    assert_null(jwt_keys_load(&s.paths, false, err, sizeof(err)));
    assert_non_null(strstr(err, "regular file"));

    /* Key paths below a regular file: refused with the reason. */
    snprintf(dir, sizeof(dir), "%s/dir/jwt/public.pem/sub", tmp_root);
    set_paths(&s, dir);
    assert_null(jwt_keys_load(&s.paths, true, err, sizeof(err)));
    assert_non_null(strstr(err, s.priv_path));
    assert_non_null(strstr(err, "Not a directory"));
}

/* ---- JWKS --------------------------------------------------------------------- */

static void test_jwt_jwks_json(void **state)
{
    (void)state;
    char *s = jwt_jwks_json(ours.keys);
    json_error_t jerr;
    json_t *j = json_loads(s, JSON_REJECT_DUPLICATES, &jerr);
    assert_non_null(j);
    json_t *keys = json_object_get(j, "keys");
    assert_true(json_is_array(keys));
    assert_int_equal(json_array_size(keys), 1);
    json_t *k = json_array_get(keys, 0);
    assert_string_equal(json_string_value(json_object_get(k, "kty")), "OKP");
    assert_string_equal(json_string_value(json_object_get(k, "crv")), "Ed25519");
    assert_string_equal(json_string_value(json_object_get(k, "alg")), "EdDSA");
    assert_string_equal(json_string_value(json_object_get(k, "use")), "sig");
    assert_string_equal(json_string_value(json_object_get(k, "kid")), jwt_keys_kid(ours.keys));
    assert_int_equal(json_object_size(k), 6);

    /* x is the raw 32-byte public key. */
    const char *x = json_string_value(json_object_get(k, "x"));
    assert_non_null(x);
    assert_int_equal(strlen(x), 43);
    uint8_t raw[33], want[32];
    size_t wn = sizeof(want);
    assert_int_equal(jwt_b64url_decode(x, strlen(x), raw), 32);
    assert_int_equal(EVP_PKEY_get_raw_public_key(ours.priv, want, &wn), 1);
    assert_memory_equal(raw, want, 32);

    /* Compact with sorted keys. */
    char *expect = gw_xasprintf("{\"keys\":[{\"alg\":\"EdDSA\",\"crv\":\"Ed25519\",\"kid\":\"%s\","
                                "\"kty\":\"OKP\",\"use\":\"sig\",\"x\":\"%s\"}]}",
                                jwt_keys_kid(ours.keys), x);
    assert_string_equal(s, expect);
    free(expect);
    json_decref(j);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jwt_b64url_encode_rfc4648_vectors),
        cmocka_unit_test(test_jwt_b64url_decode_rfc4648_vectors),
        cmocka_unit_test(test_jwt_b64url_round_trip_all_bytes),
        cmocka_unit_test(test_jwt_b64url_decode_rejects),
        cmocka_unit_test(test_jwt_issuer_format),
        cmocka_unit_test(test_jwt_mint_verify_round_trip),
        cmocka_unit_test(test_jwt_verify_uses_len_not_nul),
        cmocka_unit_test(test_jwt_mint_ttl_zero_never_expires),
        cmocka_unit_test(test_jwt_mint_huge_ttl_saturates),
        cmocka_unit_test(test_jwt_verify_expiry_leeway),
        cmocka_unit_test(test_jwt_verify_wrong_kid_not_mine),
        cmocka_unit_test(test_jwt_verify_other_alg_not_mine),
        cmocka_unit_test(test_jwt_verify_bad_signature),
        cmocka_unit_test(test_jwt_verify_tampered_claims),
        cmocka_unit_test(test_jwt_verify_issuer_and_audience),
        cmocka_unit_test(test_jwt_verify_required_claims),
        cmocka_unit_test(test_jwt_verify_numeric_claims_are_integers),
        cmocka_unit_test(test_jwt_verify_exp_claims),
        cmocka_unit_test(test_jwt_verify_subject),
        cmocka_unit_test(test_jwt_verify_typ),
        cmocka_unit_test(test_jwt_verify_oversize),
        cmocka_unit_test(test_jwt_verify_garbage_not_mine),
        cmocka_unit_test(test_jwt_verify_signed_garbage_claims),
        cmocka_unit_test(test_jwt_verify_segment_count),
        cmocka_unit_test(test_jwt_verify_padding_characters),
        cmocka_unit_test(test_jwt_verify_extra_claims_ignored),
        cmocka_unit_test(test_jwt_keys_generated_files),
        cmocka_unit_test(test_jwt_keys_reload_same_kid),
        cmocka_unit_test(test_jwt_keys_missing_without_create),
        cmocka_unit_test(test_jwt_keys_partial_set_refused),
        cmocka_unit_test(test_jwt_keys_mismatched_public_refused),
        cmocka_unit_test(test_jwt_keys_non_ed25519_refused),
        cmocka_unit_test(test_jwt_keys_bad_files_refused),
        cmocka_unit_test(test_jwt_keys_bad_paths),
        cmocka_unit_test(test_jwt_jwks_json),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
