#include "reactor/reactor.h"
#include "reactor/reactor_int.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* RFC 7540 section 9.2.2: HTTP/2 over TLS 1.2 needs ephemeral key exchange
 * and an AEAD cipher. Every TLS 1.3 suite qualifies and is left alone. */
static const char h2_tls12_ciphers[] = "ECDHE+AESGCM:ECDHE+CHACHA20";
static const unsigned char alpn_h2_wire[] = {2, 'h', '2'};
/* Session resumption with client certificates needs a session id context. */
static const unsigned char session_id_ctx[] = "openshell-gateway";

void reactor_tls_error_text(unsigned long e, const char *fallback, char *buf, size_t len)
{
    if (e == 0)
        e = ERR_get_error();
    if (e != 0)
        ERR_error_string_n(e, buf, len);
    else
        snprintf(buf, len, "%s", fallback != NULL ? fallback : "unknown TLS error");
    ERR_clear_error();
}

static void put_error(char *err, size_t errlen, const char *msg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", msg);
}

static void set_error(char *err, size_t errlen, const char *what, const char *path)
{
    char detail[256];

    reactor_tls_error_text(0, "no detail", detail, sizeof(detail));
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s%s%s: %s", what, path != NULL ? " " : "", path != NULL ? path : "",
                 detail);
}

/*
 * Server side of ALPN. A list that offers no "h2" is refused with the
 * no_application_protocol alert (RFC 7301 section 3.2): the gateway speaks
 * nothing else. The list comes from the peer, so every length is checked.
 */
static int select_alpn_h2(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    unsigned int i = 0;

    while (i < inlen) {
        unsigned int n = in[i];

        if (n > inlen - i - 1)
            break;
        if (n == 2 && memcmp(in + i + 1, "h2", 2) == 0) {
            *out = in + i + 1;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + n;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static int configure_common(SSL_CTX *ctx, char *err, size_t errlen)
{
    /* HTTP/2 forbids renegotiation (RFC 7540 section 9.2.1). */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_cipher_list(ctx, h2_tls12_ciphers) != 1) {
        set_error(err, errlen, "configuring TLS protocol versions and ciphers", NULL);
        return REACTOR_ERR_TLS;
    }
    return 0;
}

static int load_identity(SSL_CTX *ctx, const char *cert, const char *key, char *err, size_t errlen)
{
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        set_error(err, errlen, "loading certificate", cert);
        return REACTOR_ERR_TLS;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        set_error(err, errlen, "loading private key", key);
        return REACTOR_ERR_TLS;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        set_error(err, errlen, "private key does not match certificate", cert);
        return REACTOR_ERR_TLS;
    }
    return 0;
}

static int load_client_ca(SSL_CTX *ctx, const char *ca, bool require, char *err, size_t errlen)
{
    STACK_OF(X509_NAME) * names;

    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        set_error(err, errlen, "loading client CA", ca);
        return REACTOR_ERR_TLS;
    }
    /* The names are sent in CertificateRequest so clients with several
     * certificates pick one this CA signed. */
    names = SSL_load_client_CA_file(ca);
    if (names == NULL) {
        set_error(err, errlen, "reading client CA names", ca);
        return REACTOR_ERR_TLS;
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (require ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                       NULL);
    return 0;
}

struct ssl_ctx_st *reactor_tls_server_ctx(const char *cert_path, const char *key_path,
                                          const char *client_ca_path, bool require_client_cert,
                                          char *err, size_t errlen)
{
    SSL_CTX *ctx = NULL;
    SSL_CTX *ret = NULL;

    if (cert_path == NULL || key_path == NULL) {
        put_error(err, errlen, "a TLS server needs both a certificate and a key");
        goto out;
    }
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        set_error(err, errlen, "creating TLS context", NULL);
        goto out;
    }
    if (configure_common(ctx, err, errlen) != 0 ||
        load_identity(ctx, cert_path, key_path, err, errlen) != 0)
        goto out;
    if (client_ca_path != NULL &&
        load_client_ca(ctx, client_ca_path, require_client_cert, err, errlen) != 0)
        goto out;
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_session_id_context(ctx, session_id_ctx, sizeof(session_id_ctx) - 1);
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn_h2, NULL);
    ret = ctx;
    ctx = NULL;
out:
    SSL_CTX_free(ctx);
    return ret;
}

static int configure_client_verify(SSL_CTX *ctx, const char *ca, bool insecure, char *err,
                                   size_t errlen)
{
    if (insecure) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return 0;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (ca != NULL && SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        set_error(err, errlen, "loading CA", ca);
        return REACTOR_ERR_TLS;
    }
    if (ca == NULL && SSL_CTX_set_default_verify_paths(ctx) != 1) {
        set_error(err, errlen, "loading the system CA store", NULL);
        return REACTOR_ERR_TLS;
    }
    return 0;
}

struct ssl_ctx_st *reactor_tls_client_ctx(const char *ca_path, const char *cert_path,
                                          const char *key_path, bool insecure, char *err,
                                          size_t errlen)
{
    SSL_CTX *ctx = NULL;
    SSL_CTX *ret = NULL;

    if ((cert_path == NULL) != (key_path == NULL)) {
        put_error(err, errlen, "a client certificate needs its key and the other way round");
        goto out;
    }
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        set_error(err, errlen, "creating TLS context", NULL);
        goto out;
    }
    if (configure_common(ctx, err, errlen) != 0 ||
        configure_client_verify(ctx, ca_path, insecure, err, errlen) != 0)
        goto out;
    /* Unlike everything else in OpenSSL, this one returns 0 on success. */
    if (SSL_CTX_set_alpn_protos(ctx, alpn_h2_wire, sizeof(alpn_h2_wire)) != 0) {
        set_error(err, errlen, "configuring ALPN", NULL);
        goto out;
    }
    if (cert_path != NULL && load_identity(ctx, cert_path, key_path, err, errlen) != 0)
        goto out;
    ret = ctx;
    ctx = NULL;
out:
    SSL_CTX_free(ctx);
    return ret;
}

int reactor_tls_set_server_name(struct ssl_st *ssl, const char *name)
{
    unsigned char ip[sizeof(struct in6_addr)];
    X509_VERIFY_PARAM *param = SSL_get0_param(ssl);

    /* RFC 6066 section 3: SNI carries host names only. An address is still
     * checked against the certificate's IP SANs. */
    if (inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1)
        return X509_VERIFY_PARAM_set1_ip_asc(param, name) == 1 ? 0 : REACTOR_ERR_TLS;
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (SSL_set_tlsext_host_name(ssl, name) != 1 || SSL_set1_host(ssl, name) != 1)
        return REACTOR_ERR_TLS;
    return 0;
}

bool reactor_tls_alpn_is_h2(struct ssl_st *ssl)
{
    const unsigned char *p = NULL;
    unsigned int n = 0;

    SSL_get0_alpn_selected(ssl, &p, &n);
    return n == 2 && memcmp(p, "h2", 2) == 0;
}

/*
 * Copies one name entry as UTF-8. Identities feed authorization, so a value
 * that does not fit or embeds a NUL is refused rather than truncated into
 * some other name.
 */
static bool entry_text(const X509_NAME_ENTRY *e, char *buf, size_t len)
{
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(e));
    bool ok = n >= 0 && (size_t)n < len && memchr(utf8, '\0', (size_t)n) == NULL;

    if (ok) {
        memcpy(buf, utf8, (size_t)n);
        buf[n] = '\0';
    }
    OPENSSL_free(utf8);
    return ok;
}

/* The most specific CN is the last one in the subject. */
static void copy_common_name(const X509_NAME *name, char *buf, size_t len)
{
    int i = -1;
    int last = -1;

    while ((i = X509_NAME_get_index_by_NID(name, NID_commonName, i)) >= 0)
        last = i;
    if (last < 0 || !entry_text(X509_NAME_get_entry(name, last), buf, len))
        buf[0] = '\0';
}

/* OUs joined by ','. A value containing ',' would make the list ambiguous
 * and is left out, as is any value past the end of the buffer. */
static void copy_org_units(const X509_NAME *name, char *buf, size_t len)
{
    char one[256];
    size_t used = 0;
    int i = -1;

    buf[0] = '\0';
    while ((i = X509_NAME_get_index_by_NID(name, NID_organizationalUnitName, i)) >= 0) {
        size_t n;

        if (!entry_text(X509_NAME_get_entry(name, i), one, sizeof(one)) || strchr(one, ',') != NULL)
            continue;
        n = strlen(one);
        if (used + (used > 0) + n + 1 > len)
            break;
        if (used > 0)
            buf[used++] = ',';
        memcpy(buf + used, one, n + 1);
        used += n;
    }
}

void reactor_tls_describe_peer(struct ssl_st *ssl, struct reactor_peer *peer)
{
    X509 *cert = SSL_get0_peer_certificate(ssl);
    const X509_NAME *name;

    peer->tls = true;
    peer->client_verified = false;
    peer->client_cn[0] = '\0';
    peer->client_ou[0] = '\0';
    /* With SSL_VERIFY_NONE a failed chain does not abort the handshake, so
     * only a certificate checked under SSL_VERIFY_PEER counts. */
    if (cert == NULL || SSL_get_verify_mode(ssl) == SSL_VERIFY_NONE ||
        SSL_get_verify_result(ssl) != X509_V_OK)
        return;
    peer->client_verified = true;
    name = X509_get_subject_name(cert);
    copy_common_name(name, peer->client_cn, sizeof(peer->client_cn));
    copy_org_units(name, peer->client_ou, sizeof(peer->client_ou));
}
