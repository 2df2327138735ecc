/* libFuzzer target for sandbox JWTs (src/jwt/jwt.c). Every input is used
 * three ways:
 *   1. as a bearer token given to jwt_verify_sandbox;
 *   2. as base64url text given to jwt_b64url_decode: whatever decodes must
 *      re-encode to the same text (one encoding per byte string);
 *   3. as the claims JSON of a token signed here with the fuzz key, so the
 *      claim checks behind the signature are reached too: such a token is
 *      ours by its header, so it is never JWT_NOT_MINE.
 * A JWT_OK verdict must come with a UUID sandbox id; every refusal has a
 * one-line reason. ASan/UBSan catch the rest.
 *
 * The key is fixed (below) so the seeds in tests/fuzz/corpus/jwt verify: it
 * is written to a temporary directory and loaded with jwt_keys_load once.
 * Seeds: a valid token (exp 0, and one with exp 1700003600 checked at
 * FUZZ_NOW), its truncations, bad base64url, 2 and 4 segments, alg none,
 * another kid, typ openshell-ext+jwt, and bare claims JSON for use 3. They
 * were minted with this key and kid through jwt_mint_sandbox, or by hand. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "jwt/jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NOW    ((uint64_t)1700000000)
#define FUZZ_ISSUER "openshell-gateway:openshell"
#define FUZZ_KID    "fuzz-kid-0"

/* A test key, used nowhere else. */
static const char fuzz_private_pem[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEIFxn+sfNJgcABbnObjzPZk4bv3oaPNcNIHprR9kbvvo+\n"
    "-----END PRIVATE KEY-----\n";
static const char fuzz_public_pem[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEASYfQU0LrKE687Vl2ypo/zGlBG4kIBKkQ+nZXyMwYqRs=\n"
    "-----END PUBLIC KEY-----\n";

static struct jwt_keys *keys;
static EVP_PKEY *signing_key;
static char header_b64[128];

static void check(int ok)
{
    if (!ok)
        abort();
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    check(f != NULL);
    check(fputs(text, f) >= 0);
    check(fclose(f) == 0);
}

static void setup(void)
{
    char dir[] = "/tmp/fuzz_jwt.XXXXXX";
    char p0[64], p1[64], p2[64], err[256] = "";

    check(mkdtemp(dir) != NULL);
    snprintf(p0, sizeof(p0), "%s/signing.pem", dir);
    snprintf(p1, sizeof(p1), "%s/public.pem", dir);
    snprintf(p2, sizeof(p2), "%s/kid", dir);
    write_text(p0, fuzz_private_pem);
    write_text(p1, fuzz_public_pem);
    write_text(p2, FUZZ_KID "\n");
    struct jwt_key_paths paths = {p0, p1, p2};
    keys = jwt_keys_load(&paths, false, err, sizeof(err));
    if (keys == NULL) {
        fprintf(stderr, "fuzz_jwt: %s\n", err);
        abort();
    }
    unlink(p0);
    unlink(p1);
    unlink(p2);
    rmdir(dir);

    BIO *bio = BIO_new_mem_buf(fuzz_private_pem, -1);
    check(bio != NULL);
    signing_key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    check(signing_key != NULL);
    static const char header[] = "{\"alg\":\"EdDSA\",\"kid\":\"" FUZZ_KID "\",\"typ\":\"JWT\"}";
    jwt_b64url_encode((const uint8_t *)header, strlen(header), header_b64);
}

static void check_reason(const char *why)
{
    check(why != NULL && why[0] != '\0');
    check(strchr(why, '\n') == NULL);
}

static enum jwt_verdict verify(const char *tok, size_t len)
{
    char sid[37];
    const char *why = NULL;
    uint64_t exp = 1;

    memset(sid, 'x', sizeof(sid));
    enum jwt_verdict v = jwt_verify_sandbox(keys, FUZZ_ISSUER, tok, len, FUZZ_NOW, sid, &exp, &why);
    check(v == JWT_OK || v == JWT_NOT_MINE || v == JWT_INVALID);
    check_reason(why);
    if (v == JWT_OK) {
        check(sid[36] == '\0' && gw_uuid_valid(sid));
        check(exp == 0 || exp + 60 >= FUZZ_NOW);
    }
    return v;
}

/* Use 2: decode, and re-encode what decoded. */
static void fuzz_b64url(const uint8_t *data, size_t size)
{
    uint8_t *out = malloc(size * 3 / 4 + 1);
    check(out != NULL);
    long n = jwt_b64url_decode((const char *)data, size, out);
    check(n >= -1 && (n < 0 || (size_t)n <= size * 3 / 4));
    if (n >= 0) {
        char *enc = malloc(4 * (((size_t)n + 2) / 3) + 1);
        check(enc != NULL);
        size_t m = jwt_b64url_encode(out, (size_t)n, enc);
        check(m == size && memcmp(enc, data, size) == 0);
        free(enc);
    }
    free(out);
}

/* Use 3: |data| as claims under our header, signed with our key. */
static void fuzz_signed_claims(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return;
    size_t hlen = strlen(header_b64);
    size_t cap = hlen + 1 + 4 * ((size + 2) / 3) + 1 + 86 + 1;
    char *tok = malloc(cap);
    check(tok != NULL);
    memcpy(tok, header_b64, hlen);
    size_t o = hlen;
    tok[o++] = '.';
    o += jwt_b64url_encode(data, size, tok + o);

    uint8_t sig[64];
    size_t siglen = sizeof(sig);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    check(ctx != NULL);
    check(EVP_DigestSignInit(ctx, NULL, NULL, NULL, signing_key) == 1);
    check(EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)tok, o) == 1);
    EVP_MD_CTX_free(ctx);
    tok[o++] = '.';
    o += jwt_b64url_encode(sig, siglen, tok + o);
    check(o < cap);
    check(verify(tok, o) != JWT_NOT_MINE);
    free(tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (keys == NULL)
        setup();
    /* Use 1, on an exact-size heap copy so reads past |size| are caught. */
    char *tok = malloc(size ? size : 1);
    check(tok != NULL);
    memcpy(tok, data, size);
    verify(tok, size);
    free(tok);
    fuzz_b64url(data, size);
    fuzz_signed_claims(data, size);
    return 0;
}
