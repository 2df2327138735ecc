/*
 * jwt: sandbox identity tokens (semantics.md §15). EdDSA over Ed25519 with
 * OpenSSL, nothing else: no other algorithm is ever accepted.
 *
 * A token is the compact JWS  base64url(header) "." base64url(claims) "."
 * base64url(signature)  with
 *   header  {"alg":"EdDSA","kid":<kid>,"typ":"JWT"}
 *   claims  {"aud":<issuer>,"exp":<iat+ttl or 0>,"iat":<now>,"iss":<issuer>,
 *            "sandbox_id":<uuid>,"sub":"spiffe://openshell/sandbox/<uuid>"}
 * where issuer = "openshell-gateway:<gateway_id>". exp = 0 never expires.
 *
 * Keys are files: a PKCS#8 PEM private key, an SPKI PEM public key and a
 * one-line kid. jwt_keys_load() loads them; with |create| it first
 * generates all three when none exists (private key and kid mode 0600,
 * public key 0644, written atomically), and refuses a partial set.
 *
 * Pure functions over their arguments (the clock is a parameter), so the
 * unit tests drive every branch. Nothing here touches the event loop.
 */
#ifndef GW_JWT_H
#define GW_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

struct jwt_keys;

struct jwt_key_paths {
    const char *signing_key_path; /* PKCS#8 PEM private key */
    const char *public_key_path;  /* SPKI PEM public key */
    const char *kid_path;         /* one line: the key id */
};

/* Loads the key set (and with |create| generates it first when none of
 * the three files exists; a partial set is an error naming the missing
 * files). The public key must match the private one. Returns the keys
 * (free with jwt_keys_free) or NULL with a one-line reason in |err|. */
struct jwt_keys *jwt_keys_load(const struct jwt_key_paths *paths, bool create, char *err,
                               size_t errlen);
void jwt_keys_free(struct jwt_keys *k);
/* The kid (borrowed). */
const char *jwt_keys_kid(const struct jwt_keys *k);

/* Builds an issuer from a gateway id: "openshell-gateway:<gateway_id>".
 * Heap string, free(). */
char *jwt_issuer(const char *gateway_id);

/* Mints a sandbox token for |sandbox_id| (a UUID text) issued at |now_s|
 * with lifetime |ttl_s| (0: exp = 0, never expires). Sets |*exp_s| to the
 * exp claim. Heap string, free(). Never NULL (aborts on OOM). */
char *jwt_mint_sandbox(const struct jwt_keys *k, const char *issuer, const char *sandbox_id,
                       uint64_t now_s, uint64_t ttl_s, uint64_t *exp_s);

enum jwt_verdict {
    JWT_OK = 0,   /* valid: |sandbox_id| is filled */
    JWT_NOT_MINE, /* not one of ours (not a JWS, alg not EdDSA, kid differs):
                     leave it to other authenticators */
    JWT_INVALID,  /* ours but bad: signature, claims, issuer/audience, expired,
                     typ openshell-ext+jwt; |*why| says which */
};

/* Verifies |token| (|len| bytes, not NUL-terminated necessarily) at |now_s|:
 * header alg EdDSA and kid == ours (else JWT_NOT_MINE), typ not
 * "openshell-ext+jwt", signature, iss and aud exactly |issuer|, exp, sub
 * and sandbox_id present, sub == "spiffe://openshell/sandbox/<sandbox_id>",
 * sandbox_id a UUID, exp == 0 or exp >= now_s - 60. On JWT_OK copies the
 * sandbox id into |sandbox_id| and the exp claim into |*exp_s| (may be
 * NULL). |*why| is a static reason on JWT_INVALID / JWT_NOT_MINE. Bounded
 * work: tokens longer than 8 KiB are JWT_INVALID or JWT_NOT_MINE at once. */
enum jwt_verdict jwt_verify_sandbox(const struct jwt_keys *k, const char *issuer, const char *token,
                                    size_t len, uint64_t now_s, char sandbox_id[37],
                                    uint64_t *exp_s, const char **why);

/* The JWKS document publishing the public key:
 * {"keys":[{"alg":"EdDSA","crv":"Ed25519","kid":...,"kty":"OKP","use":"sig","x":...}]}
 * Heap string, free(). */
char *jwt_jwks_json(const struct jwt_keys *k);

/* base64url without padding (RFC 4648 §5); exposed for tests. |out| must
 * hold 4 * ((len + 2) / 3) + 1 bytes. Returns the length written. */
size_t jwt_b64url_encode(const uint8_t *in, size_t len, char *out);
/* Decodes base64url without padding (padding and other characters are
 * rejected). |out| holds at least len * 3 / 4 + 1 bytes. Returns the
 * decoded length or -1. */
long jwt_b64url_decode(const char *in, size_t len, uint8_t *out);

#endif /* GW_JWT_H */
