#include "jwt/jwt.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#define TOKEN_MAX        8192 /* longer tokens are refused before any decoding */
#define DECODED_MAX      (TOKEN_MAX / 4 * 3 + 3)
#define EXP_LEEWAY_S     60
#define ED25519_RAW_LEN  32
#define ED25519_SIG_LEN  64
#define SIG_B64_LEN      86 /* base64url of 64 bytes, unpadded */
#define KID_RANDOM_BYTES 16
#define KID_MAX          256
#define KEY_FILE_MAX     (64 * 1024) /* a PEM key is well under 1 KiB */
#define SUB_PREFIX       "spiffe://openshell/sandbox/"
#define EXT_TYP          "openshell-ext+jwt"
#define JSON_OUT_FLAGS   (JSON_COMPACT | JSON_SORT_KEYS)

struct jwt_keys {
    EVP_PKEY *priv;                   /* Ed25519 signing key */
    EVP_PKEY *pub;                    /* the matching public key, as loaded */
    char *kid;                        /* NUL-terminated, printable ASCII */
    size_t kid_len;                   /* strlen(kid) */
    uint8_t pub_raw[ED25519_RAW_LEN]; /* raw public key, for the JWKS */
    char *header_b64;                 /* base64url of the constant JWS header */
    size_t header_b64_len;
};

GW_PRINTF(3, 4) static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* The most recent OpenSSL error as text (static buffer), clearing the queue
 * so a failure here never leaks into an unrelated caller's error check. */
static const char *ossl_reason(void)
{
    static char buf[160];
    unsigned long e = ERR_peek_last_error();

    if (e == 0)
        snprintf(buf, sizeof(buf), "unknown OpenSSL error");
    else
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return buf;
}

/* ---- base64url (RFC 4648 §5, no padding) ---------------------------------- */

static const char b64url_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t jwt_b64url_encode(const uint8_t *in, size_t len, char *out)
{
    size_t o = 0;
    size_t i = 0;

    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64url_chars[v >> 18 & 63];
        out[o++] = b64url_chars[v >> 12 & 63];
        out[o++] = b64url_chars[v >> 6 & 63];
        out[o++] = b64url_chars[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64url_chars[v >> 18 & 63];
        out[o++] = b64url_chars[v >> 12 & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64url_chars[v >> 18 & 63];
        out[o++] = b64url_chars[v >> 12 & 63];
        out[o++] = b64url_chars[v >> 6 & 63];
    }
    out[o] = '\0';
    return o;
}

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Strict: a length of 4n+1 cannot come from any byte string, and the unused
 * low bits of the last character must be zero (RFC 4648 §3.5), so each byte
 * string has exactly one accepted encoding and a signature cannot be
 * re-encoded into a second valid token. */
long jwt_b64url_decode(const char *in, size_t len, uint8_t *out)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;

    if (len % 4 == 1 || len > (size_t)LONG_MAX)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0)
        return -1;
    return (long)o;
}

/* Heap base64url of |len| bytes; sets |*out_len|. */
static char *b64url_dup(const uint8_t *in, size_t len, size_t *out_len)
{
    char *s = gw_xmalloc(4 * ((len + 2) / 3) + 1);
    size_t n = jwt_b64url_encode(in, len, s);

    if (out_len != NULL)
        *out_len = n;
    return s;
}

/* ---- small JSON helpers ----------------------------------------------------- */

/* Compact, sorted-key text of |j| (heap, free()); aborts on OOM. */
static char *json_text(const json_t *j)
{
    char *s = json_dumps(j, JSON_OUT_FLAGS);

    if (s == NULL)
        gw_panic(__FILE__, __LINE__, "json_dumps failed (out of memory)");
    return s;
}

/* True when |v| is a JSON string exactly equal to the |n| bytes at |s|. */
static bool json_str_is(const json_t *v, const char *s, size_t n)
{
    return json_is_string(v) && json_string_length(v) == n &&
           memcmp(json_string_value(v), s, n) == 0;
}

enum claim_state {
    CLAIM_OK = 0,
    CLAIM_MISSING,
    CLAIM_BAD_TYPE,
};

/* A claim that must be a JSON integer >= 0 (a real such as 1.5e9 is not). */
static enum claim_state uint_claim(const json_t *obj, const char *name, uint64_t *out)
{
    const json_t *v = json_object_get(obj, name);

    if (v == NULL)
        return CLAIM_MISSING;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return CLAIM_BAD_TYPE;
    *out = (uint64_t)json_integer_value(v);
    return CLAIM_OK;
}

static enum claim_state str_claim(const json_t *obj, const char *name, const json_t **out)
{
    const json_t *v = json_object_get(obj, name);

    if (v == NULL)
        return CLAIM_MISSING;
    if (!json_is_string(v))
        return CLAIM_BAD_TYPE;
    *out = v;
    return CLAIM_OK;
}

/* ---- keys: reading ---------------------------------------------------------- */

/* Reads a small regular file into a NUL-terminated heap buffer. */
static int read_small_file(const char *path, char **data, size_t *len, char *err, size_t errlen)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        set_err(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > KEY_FILE_MAX) {
        set_err(err, errlen, "%s: not a regular file of at most %d bytes", path, KEY_FILE_MAX);
        close(fd);
        return -1;
    }
    char *buf = gw_xmalloc((size_t)st.st_size + 1);
    size_t n = 0;
    while (n < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + n, (size_t)st.st_size - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            set_err(err, errlen, "cannot read %s: %s", path,
                    r < 0 ? strerror(errno) : "short read");
            OPENSSL_clear_free(buf, (size_t)st.st_size + 1);
            close(fd);
            return -1;
        }
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return 0;
}

/* A passphrase-protected key is refused instead of prompting on a terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* Reads an Ed25519 key from the PEM file |path|: a PKCS#8 private key
 * (|private_key|; the file's bytes are wiped after parsing) or an SPKI
 * public key. */
static EVP_PKEY *load_key(const char *path, bool private_key, char *err, size_t errlen)
{
    const char *what = private_key ? "signing key" : "public key";
    char *pem = NULL;
    size_t len = 0;

    if (read_small_file(path, &pem, &len, err, errlen) != 0)
        return NULL;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL)
        gw_panic(__FILE__, __LINE__, "BIO_new_mem_buf failed (out of memory)");
    EVP_PKEY *pk = private_key ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL)
                               : PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    if (private_key)
        OPENSSL_clear_free(pem, len + 1);
    else
        free(pem);
    if (pk == NULL) {
        set_err(err, errlen, "%s: not %s (%s)", path,
                private_key ? "an unencrypted PEM private key" : "a PEM public key", ossl_reason());
        return NULL;
    }
    if (EVP_PKEY_get_id(pk) != EVP_PKEY_ED25519) {
        set_err(err, errlen, "%s: %s is %s, not Ed25519", path, what,
                EVP_PKEY_get0_type_name(pk) ? EVP_PKEY_get0_type_name(pk) : "of another type");
        EVP_PKEY_free(pk);
        return NULL;
    }
    return pk;
}

/* The kid file holds one line; a final "\n" or "\r\n" is not part of it.
 * The kid goes into JSON and logs, so only printable ASCII without spaces
 * is accepted. */
static char *load_kid(const char *path, char *err, size_t errlen)
{
    char *s = NULL;
    size_t n = 0;

    if (read_small_file(path, &s, &n, err, errlen) != 0)
        return NULL;
    if (n > 0 && s[n - 1] == '\n')
        n--;
    if (n > 0 && s[n - 1] == '\r')
        n--;
    s[n] = '\0';
    bool ok = n > 0 && n <= KID_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = s[i] > 0x20 && s[i] < 0x7f;
    if (!ok) {
        set_err(err, errlen,
                "%s: the kid must be one line of 1 to %d printable ASCII characters "
                "without spaces",
                path, KID_MAX);
        free(s);
        return NULL;
    }
    return s;
}

/* The JWS header is the same for every token of a key set: encode it once. */
static void keys_set_header(struct jwt_keys *k)
{
    json_t *h = json_pack("{s:s,s:s,s:s}", "alg", "EdDSA", "kid", k->kid, "typ", "JWT");

    GW_ASSERT(h != NULL); /* the kid is ASCII, so only OOM fails here */
    char *text = json_text(h);
    json_decref(h);
    k->header_b64 = b64url_dup((const uint8_t *)text, strlen(text), &k->header_b64_len);
    free(text);
}

static struct jwt_keys *load_key_set(const struct jwt_key_paths *p, char *err, size_t errlen)
{
    struct jwt_keys *k = gw_xcalloc(1, sizeof(*k));
    uint8_t priv_pub[ED25519_RAW_LEN];
    size_t n1 = sizeof(priv_pub), n2 = sizeof(k->pub_raw);

    k->priv = load_key(p->signing_key_path, true, err, errlen);
    if (k->priv == NULL)
        goto fail;
    k->pub = load_key(p->public_key_path, false, err, errlen);
    if (k->pub == NULL)
        goto fail;
    if (EVP_PKEY_get_raw_public_key(k->priv, priv_pub, &n1) != 1 ||
        EVP_PKEY_get_raw_public_key(k->pub, k->pub_raw, &n2) != 1 || n1 != ED25519_RAW_LEN ||
        n2 != ED25519_RAW_LEN) {
        set_err(err, errlen, "cannot read the raw Ed25519 public key (%s)", ossl_reason());
        goto fail;
    }
    if (CRYPTO_memcmp(priv_pub, k->pub_raw, ED25519_RAW_LEN) != 0) {
        set_err(err, errlen,
                "public key %s does not match signing key %s (restore the matching public key, "
                "or remove all three key files to generate a new set)",
                p->public_key_path, p->signing_key_path);
        goto fail;
    }
    k->kid = load_kid(p->kid_path, err, errlen);
    if (k->kid == NULL)
        goto fail;
    k->kid_len = strlen(k->kid);
    keys_set_header(k);
    return k;
fail:
    jwt_keys_free(k);
    return NULL;
}

/* ---- keys: generating ------------------------------------------------------- */

/* Creates the missing directories leading to |path| (not its last part),
 * mode 0700. */
static int make_parent_dirs(const char *path, char *err, size_t errlen)
{
    char *dup = gw_xstrdup(path);
    int rc = 0;

    for (char *s = dup + 1; *s != '\0'; s++) {
        if (*s != '/' || s[-1] == '/')
            continue;
        *s = '\0';
        if (mkdir(dup, 0700) != 0 && errno != EEXIST) {
            set_err(err, errlen, "cannot create directory %s: %s", dup, strerror(errno));
            rc = -1;
            break;
        }
        *s = '/';
    }
    free(dup);
    return rc;
}

/* Writes |data| to a new temporary file beside |path| with |mode|, synced.
 * Returns the temporary name (heap) or NULL. */
static char *write_temp(const char *path, const void *data, size_t len, mode_t mode, char *err,
                        size_t errlen)
{
    char *tmp = gw_xasprintf("%s.tmp.XXXXXX", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    const char *what = "create";

    if (fd < 0)
        goto fail_open;
    what = "write";
    if (fchmod(fd, mode) != 0)
        goto fail_write;
    for (size_t off = 0; off < len;) {
        ssize_t w = write(fd, (const char *)data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = EIO;
            goto fail_write;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0)
        goto fail_write;
    if (close(fd) != 0) {
        fd = -1;
        goto fail_write;
    }
    return tmp;
fail_write:
    set_err(err, errlen, "cannot %s %s: %s", what, tmp, strerror(errno));
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    free(tmp);
    return NULL;
fail_open:
    set_err(err, errlen, "cannot %s %s: %s", what, tmp, strerror(errno));
    free(tmp);
    return NULL;
}

/* fsync the directory holding |path| so the renames survive a crash. */
static void sync_parent_dir(const char *path)
{
    char *dup = gw_xstrdup(path);
    char *slash = strrchr(dup, '/');
    const char *dir = ".";

    if (slash == dup)
        dir = "/";
    else if (slash != NULL) {
        *slash = '\0';
        dir = dup;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dup);
}

struct key_files {
    char *data[3];
    size_t len[3];
    mode_t mode[3];
};

static void key_files_free(struct key_files *f)
{
    for (int i = 0; i < 3; i++)
        OPENSSL_clear_free(f->data[i], f->len[i]);
}

/* PEM text of a memory BIO, copied to the heap. */
static void bio_take(BIO *bio, char **data, size_t *len)
{
    char *p = NULL;
    long n = BIO_get_mem_data(bio, &p);

    GW_ASSERT(n > 0 && p != NULL);
    *data = gw_xmalloc((size_t)n);
    memcpy(*data, p, (size_t)n);
    *len = (size_t)n;
}

/* A fresh Ed25519 key, its PKCS#8 and SPKI PEM and a random kid. */
static int make_key_files(struct key_files *f, char *err, size_t errlen)
{
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    BIO *b0 = BIO_new(BIO_s_mem()), *b1 = BIO_new(BIO_s_mem());
    uint8_t rnd[KID_RANDOM_BYTES];
    int rc = -1;

    if (ctx == NULL || b0 == NULL || b1 == NULL || EVP_PKEY_keygen_init(ctx) != 1 ||
        EVP_PKEY_keygen(ctx, &pk) != 1) {
        set_err(err, errlen, "cannot generate an Ed25519 key (%s)", ossl_reason());
        goto out;
    }
    if (PEM_write_bio_PKCS8PrivateKey(b0, pk, NULL, NULL, 0, NULL, NULL) != 1 ||
        PEM_write_bio_PUBKEY(b1, pk) != 1) {
        set_err(err, errlen, "cannot encode the new key as PEM (%s)", ossl_reason());
        goto out;
    }
    if (gw_random_bytes(rnd, sizeof(rnd)) != 0) {
        set_err(err, errlen, "cannot read random bytes for the kid: %s", strerror(errno));
        goto out;
    }
    bio_take(b0, &f->data[0], &f->len[0]);
    bio_take(b1, &f->data[1], &f->len[1]);
    f->data[2] = gw_xmalloc(4 * ((sizeof(rnd) + 2) / 3) + 2);
    f->len[2] = jwt_b64url_encode(rnd, sizeof(rnd), f->data[2]);
    f->data[2][f->len[2]++] = '\n';
    f->mode[0] = 0600;
    f->mode[1] = 0644;
    f->mode[2] = 0600;
    rc = 0;
out:
    BIO_free(b0);
    BIO_free(b1);
    EVP_PKEY_free(pk);
    EVP_PKEY_CTX_free(ctx);
    return rc;
}

/* Generates the three files. All are first written to temporary files, then
 * renamed one after the other; a failed rename removes what this call put in
 * place, so no partial set is left behind except on a crash in between
 * (which the next load reports as a partial set). */
static int generate_key_set(const struct jwt_key_paths *p, char *err, size_t errlen)
{
    const char *paths[3] = {p->signing_key_path, p->public_key_path, p->kid_path};
    struct key_files f = {0};
    char *tmp[3] = {NULL, NULL, NULL};
    int renamed = 0, rc = -1;

    if (make_key_files(&f, err, errlen) != 0)
        goto out;
    for (int i = 0; i < 3; i++) {
        if (make_parent_dirs(paths[i], err, errlen) != 0)
            goto out;
        tmp[i] = write_temp(paths[i], f.data[i], f.len[i], f.mode[i], err, errlen);
        if (tmp[i] == NULL)
            goto out;
    }
    for (; renamed < 3; renamed++) {
        if (rename(tmp[renamed], paths[renamed]) != 0) {
            set_err(err, errlen, "cannot rename %s to %s: %s", tmp[renamed], paths[renamed],
                    strerror(errno));
            goto out;
        }
        free(tmp[renamed]);
        tmp[renamed] = NULL;
    }
    for (int i = 0; i < 3; i++)
        sync_parent_dir(paths[i]);
    rc = 0;
out:
    for (int i = 0; rc != 0 && i < renamed; i++)
        unlink(paths[i]);
    for (int i = 0; i < 3; i++) {
        if (tmp[i] != NULL)
            unlink(tmp[i]);
        free(tmp[i]);
    }
    key_files_free(&f);
    return rc;
}

/* ---- keys: public API ------------------------------------------------------- */

static int check_paths(const struct jwt_key_paths *p, char *err, size_t errlen)
{
    if (p == NULL || p->signing_key_path == NULL || p->public_key_path == NULL ||
        p->kid_path == NULL || !p->signing_key_path[0] || !p->public_key_path[0] ||
        !p->kid_path[0]) {
        set_err(err, errlen,
                "JWT key paths: the signing key, public key and kid paths are all "
                "required");
        return -1;
    }
    if (strcmp(p->signing_key_path, p->public_key_path) == 0 ||
        strcmp(p->signing_key_path, p->kid_path) == 0 ||
        strcmp(p->public_key_path, p->kid_path) == 0) {
        set_err(err, errlen,
                "JWT key paths: the signing key, public key and kid need three "
                "different files");
        return -1;
    }
    return 0;
}

/* Sets |present[i]|; fails on anything but "exists" or "does not exist". */
static int probe_files(const char *const paths[3], bool present[3], char *err, size_t errlen)
{
    for (int i = 0; i < 3; i++) {
        struct stat st;
        if (stat(paths[i], &st) == 0) {
            present[i] = true;
            continue;
        }
        if (errno != ENOENT) {
            set_err(err, errlen, "cannot access %s: %s", paths[i], strerror(errno));
            return -1;
        }
        present[i] = false;
    }
    return 0;
}

/* One line: what is missing, what is there, and the two ways out. */
static void report_partial(const char *const paths[3], const bool present[3], char *err,
                           size_t errlen)
{
    static const char *const names[3] = {"signing key", "public key", "kid"};
    struct gw_buf miss = {0}, have = {0};

    for (int i = 0; i < 3; i++) {
        struct gw_buf *b = present[i] ? &have : &miss;
        gw_buf_appendf(b, "%s%s %s", b->len ? ", " : "", names[i], paths[i]);
    }
    set_err(err, errlen,
            "incomplete JWT key set: missing %s (present: %s); restore the missing file, or "
            "remove the present file(s) to generate a new key set",
            gw_buf_cstr(&miss), gw_buf_cstr(&have));
    gw_buf_free(&miss);
    gw_buf_free(&have);
}

struct jwt_keys *jwt_keys_load(const struct jwt_key_paths *paths, bool create, char *err,
                               size_t errlen)
{
    bool present[3];

    if (check_paths(paths, err, errlen) != 0)
        return NULL;
    const char *const files[3] = {paths->signing_key_path, paths->public_key_path, paths->kid_path};
    if (probe_files(files, present, err, errlen) != 0)
        return NULL;
    int n = present[0] + present[1] + present[2];
    if (n == 0 && !create) {
        set_err(err, errlen, "no JWT key set: %s, %s and %s do not exist", files[0], files[1],
                files[2]);
        return NULL;
    }
    if (n > 0 && n < 3) {
        report_partial(files, present, err, errlen);
        return NULL;
    }
    if (n == 0) {
        if (generate_key_set(paths, err, errlen) != 0)
            return NULL;
    }
    struct jwt_keys *k = load_key_set(paths, err, errlen);
    if (k != NULL && n == 0)
        log_info("jwt.keys_generated", LF_STR("kid", k->kid),
                 LF_STR("signing_key", paths->signing_key_path),
                 LF_STR("public_key", paths->public_key_path));
    return k;
}

void jwt_keys_free(struct jwt_keys *k)
{
    if (k == NULL)
        return;
    EVP_PKEY_free(k->priv);
    EVP_PKEY_free(k->pub);
    free(k->kid);
    free(k->header_b64);
    free(k);
}

const char *jwt_keys_kid(const struct jwt_keys *k)
{
    return k->kid;
}

char *jwt_issuer(const char *gateway_id)
{
    return gw_xasprintf("openshell-gateway:%s", gateway_id);
}

/* ---- minting ---------------------------------------------------------------- */

static void sign(const struct jwt_keys *k, const char *tbs, size_t len,
                 uint8_t sig[ED25519_SIG_LEN])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t siglen = ED25519_SIG_LEN;

    if (ctx == NULL)
        gw_panic(__FILE__, __LINE__, "EVP_MD_CTX_new failed (out of memory)");
    /* Ed25519 hashes internally: the digest must be NULL (RFC 8032). */
    if (EVP_DigestSignInit(ctx, NULL, NULL, NULL, k->priv) != 1 ||
        EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)tbs, len) != 1 ||
        siglen != ED25519_SIG_LEN)
        gw_panic(__FILE__, __LINE__, "Ed25519 signing failed");
    EVP_MD_CTX_free(ctx);
}

char *jwt_mint_sandbox(const struct jwt_keys *k, const char *issuer, const char *sandbox_id,
                       uint64_t now_s, uint64_t ttl_s, uint64_t *exp_s)
{
    GW_ASSERT(k != NULL && issuer != NULL && gw_uuid_valid(sandbox_id));
    /* Claims are JSON integers (int64); a TTL reaching past that saturates. */
    GW_ASSERT(now_s <= (uint64_t)INT64_MAX);
    uint64_t max = (uint64_t)INT64_MAX;
    uint64_t exp = ttl_s == 0 ? 0 : (ttl_s > max - now_s ? max : now_s + ttl_s);

    char *sub = gw_xasprintf(SUB_PREFIX "%s", sandbox_id);
    json_t *c = json_pack("{s:s,s:I,s:I,s:s,s:s,s:s}", "aud", issuer, "exp", (json_int_t)exp, "iat",
                          (json_int_t)now_s, "iss", issuer, "sandbox_id", sandbox_id, "sub", sub);
    free(sub);
    /* Fails only on OOM or an issuer that is not UTF-8 (a config bug). */
    GW_ASSERT(c != NULL);
    char *claims = json_text(c);
    json_decref(c);

    size_t clen = strlen(claims);
    size_t cap = k->header_b64_len + 1 + 4 * ((clen + 2) / 3) + 1 + SIG_B64_LEN + 1;
    char *tok = gw_xmalloc(cap);
    size_t o = k->header_b64_len;
    memcpy(tok, k->header_b64, o);
    tok[o++] = '.';
    o += jwt_b64url_encode((const uint8_t *)claims, clen, tok + o);
    free(claims);

    uint8_t sig[ED25519_SIG_LEN];
    sign(k, tok, o, sig);
    tok[o++] = '.';
    o += jwt_b64url_encode(sig, sizeof(sig), tok + o);
    GW_ASSERT(o < cap);
    if (exp_s != NULL)
        *exp_s = exp;
    return tok;
}

/* ---- verifying -------------------------------------------------------------- */

/* The three segments of a compact JWS, as offsets into the token. */
struct jws_parts {
    size_t header_len; /* header: [0, header_len) */
    size_t claims_off, claims_len;
    size_t sig_off, sig_len;
};

static bool split_jws(const char *t, size_t len, struct jws_parts *p)
{
    const char *d1 = memchr(t, '.', len);
    if (d1 == NULL)
        return false;
    const char *d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - t));
    if (d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - t)) != NULL)
        return false;
    p->header_len = (size_t)(d1 - t);
    p->claims_off = p->header_len + 1;
    p->claims_len = (size_t)(d2 - d1 - 1);
    p->sig_off = (size_t)(d2 + 1 - t);
    p->sig_len = len - p->sig_off;
    return true;
}

/* Decodes a base64url segment holding a JSON object; NULL when it is not one.
 * Duplicate keys are refused so a claim cannot mean two things. */
static json_t *decode_json_segment(const char *s, size_t len)
{
    uint8_t buf[DECODED_MAX];
    long n = jwt_b64url_decode(s, len, buf);

    if (n <= 0)
        return NULL;
    json_t *j = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* Header checks. NOT_MINE for anything another authenticator might own;
 * INVALID once alg and kid say the token claims to be ours. */
static enum jwt_verdict check_header(const struct jwt_keys *k, const json_t *h, const char **why)
{
    const json_t *typ = json_object_get(h, "typ");

    if (!json_str_is(json_object_get(h, "alg"), "EdDSA", 5)) {
        *why = "alg is not EdDSA";
        return JWT_NOT_MINE;
    }
    if (!json_str_is(json_object_get(h, "kid"), k->kid, k->kid_len)) {
        *why = "kid is not ours";
        return JWT_NOT_MINE;
    }
    if (typ != NULL && json_str_is(typ, EXT_TYP, strlen(EXT_TYP))) {
        *why = "extension credentials (typ openshell-ext+jwt) are not gateway tokens";
        return JWT_INVALID;
    }
    if (typ != NULL && !json_str_is(typ, "JWT", 3)) {
        *why = "typ is not JWT";
        return JWT_INVALID;
    }
    /* RFC 7515 §4.1.11: unknown critical extensions must be refused, and
     * we understand none. */
    if (json_object_get(h, "crit") != NULL) {
        *why = "crit header parameters are not supported";
        return JWT_INVALID;
    }
    return JWT_OK;
}

static bool verify_signature(const struct jwt_keys *k, const char *t, const struct jws_parts *p)
{
    uint8_t sig[ED25519_SIG_LEN + 3];

    if (p->sig_len != SIG_B64_LEN ||
        jwt_b64url_decode(t + p->sig_off, p->sig_len, sig) != ED25519_SIG_LEN)
        return false;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        gw_panic(__FILE__, __LINE__, "EVP_MD_CTX_new failed (out of memory)");
    /* The signing input is the ASCII of "header.claims" as received. */
    bool ok =
        EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, k->pub) == 1 &&
        EVP_DigestVerify(ctx, sig, ED25519_SIG_LEN, (const unsigned char *)t, p->sig_off - 1) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        ERR_clear_error();
    return ok;
}

/* iss and aud are both exactly the issuer; exp (and nbf when present) are
 * integers checked against |now_s| with the leeway; iat is an integer when
 * present. */
static enum jwt_verdict check_time_and_issuer(const json_t *c, const char *issuer, uint64_t now_s,
                                              uint64_t *exp, const char **why)
{
    const json_t *v = NULL;
    uint64_t t = 0;
    size_t ilen = strlen(issuer);
    enum claim_state st;

    if ((st = str_claim(c, "iss", &v)) != CLAIM_OK || !json_str_is(v, issuer, ilen)) {
        *why = st == CLAIM_MISSING ? "missing iss" : "wrong issuer";
        return JWT_INVALID;
    }
    if ((st = str_claim(c, "aud", &v)) != CLAIM_OK || !json_str_is(v, issuer, ilen)) {
        *why = st == CLAIM_MISSING ? "missing aud" : "wrong audience";
        return JWT_INVALID;
    }
    if ((st = uint_claim(c, "exp", exp)) != CLAIM_OK) {
        *why = st == CLAIM_MISSING ? "missing exp" : "exp is not a non-negative integer";
        return JWT_INVALID;
    }
    if (*exp != 0 && *exp + EXP_LEEWAY_S < now_s) {
        *why = "token expired";
        return JWT_INVALID;
    }
    if ((st = uint_claim(c, "iat", &t)) == CLAIM_BAD_TYPE) {
        *why = "iat is not a non-negative integer";
        return JWT_INVALID;
    }
    if ((st = uint_claim(c, "nbf", &t)) == CLAIM_BAD_TYPE ||
        (st == CLAIM_OK && t > now_s && t - now_s > EXP_LEEWAY_S)) {
        *why = st == CLAIM_BAD_TYPE ? "nbf is not a non-negative integer" : "token not yet valid";
        return JWT_INVALID;
    }
    return JWT_OK;
}

/* sub and sandbox_id: present, strings, a UUID, and sub names it. */
static enum jwt_verdict check_subject(const json_t *c, char sandbox_id[37], const char **why)
{
    const json_t *sub = NULL, *sid = NULL;
    enum claim_state st;
    const size_t plen = sizeof(SUB_PREFIX) - 1;

    if ((st = str_claim(c, "sub", &sub)) != CLAIM_OK) {
        *why = st == CLAIM_MISSING ? "missing sub" : "sub is not a string";
        return JWT_INVALID;
    }
    if ((st = str_claim(c, "sandbox_id", &sid)) != CLAIM_OK) {
        *why = st == CLAIM_MISSING ? "missing sandbox_id" : "sandbox_id is not a string";
        return JWT_INVALID;
    }
    const char *id = json_string_value(sid);
    if (json_string_length(sid) != 36 || !gw_uuid_valid(id)) {
        *why = "sandbox_id is not a UUID";
        return JWT_INVALID;
    }
    const char *s = json_string_value(sub);
    if (json_string_length(sub) != plen + 36 || memcmp(s, SUB_PREFIX, plen) != 0 ||
        memcmp(s + plen, id, 36) != 0) {
        *why = "sub does not match sandbox_id";
        return JWT_INVALID;
    }
    memcpy(sandbox_id, id, 36);
    sandbox_id[36] = '\0';
    return JWT_OK;
}

static enum jwt_verdict check_claims(const json_t *c, const char *issuer, uint64_t now_s,
                                     char sandbox_id[37], uint64_t *exp_s, const char **why)
{
    uint64_t exp = 0;
    enum jwt_verdict v = check_time_and_issuer(c, issuer, now_s, &exp, why);

    if (v != JWT_OK)
        return v;
    v = check_subject(c, sandbox_id, why);
    if (v == JWT_OK && exp_s != NULL)
        *exp_s = exp;
    return v;
}

enum jwt_verdict jwt_verify_sandbox(const struct jwt_keys *k, const char *issuer, const char *token,
                                    size_t len, uint64_t now_s, char sandbox_id[37],
                                    uint64_t *exp_s, const char **why)
{
    const char *unused;
    struct jws_parts p;
    enum jwt_verdict v;

    if (why == NULL)
        why = &unused;
    /* Our tokens are a few hundred bytes: a huge one is someone else's
     * (or nobody's), and is never decoded here. */
    if (token == NULL || len > TOKEN_MAX) {
        *why = "token longer than 8 KiB";
        return JWT_NOT_MINE;
    }
    if (!split_jws(token, len, &p)) {
        *why = "not a compact JWS (three dot-separated parts)";
        return JWT_NOT_MINE;
    }
    json_t *h = decode_json_segment(token, p.header_len);
    if (h == NULL) {
        *why = "JWS header is not a base64url JSON object";
        return JWT_NOT_MINE;
    }
    v = check_header(k, h, why);
    json_decref(h);
    if (v != JWT_OK)
        return v;
    /* Only signed claims are parsed. */
    if (!verify_signature(k, token, &p)) {
        *why = "bad signature";
        return JWT_INVALID;
    }
    json_t *c = decode_json_segment(token + p.claims_off, p.claims_len);
    if (c == NULL) {
        *why = "claims are not a base64url JSON object";
        return JWT_INVALID;
    }
    v = check_claims(c, issuer, now_s, sandbox_id, exp_s, why);
    json_decref(c);
    if (v == JWT_OK)
        *why = "valid";
    return v;
}

/* ---- JWKS ------------------------------------------------------------------- */

char *jwt_jwks_json(const struct jwt_keys *k)
{
    char x[4 * ((ED25519_RAW_LEN + 2) / 3) + 1];

    jwt_b64url_encode(k->pub_raw, sizeof(k->pub_raw), x);
    json_t *j = json_pack("{s:[{s:s,s:s,s:s,s:s,s:s,s:s}]}", "keys", "alg", "EdDSA", "crv",
                          "Ed25519", "kid", k->kid, "kty", "OKP", "use", "sig", "x", x);
    GW_ASSERT(j != NULL); /* all ASCII: only OOM fails */
    char *s = json_text(j);
    json_decref(j);
    return s;
}
