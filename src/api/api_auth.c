/* Authentication: turns a call's credentials into an api_principal before
 * any handler runs, and enforces the method's auth mode (semantics.md §16). */
#include "api/api.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "api/api_int.h"
#include "jwt/jwt.h"

static const char LOCAL_DEV_SUBJECT[] = "unauthenticated-local-dev";

const struct api_principal *api_call_principal(const struct grpc_call *call)
{
    return grpc_call_auth(call);
}

/* A user named by a verified client certificate (mTLS user auth). Without
 * OIDC every authenticated user counts as platform admin, as upstream. */
static int principal_from_cert(struct grpc_call *call, const struct api_conn_identity *id,
                               struct api_principal *p, const char **msg)
{
    if (id == NULL || !id->client_verified) {
        *msg = "missing client certificate";
        return GRPC_STATUS_UNAUTHENTICATED;
    }
    p->kind = API_PRINCIPAL_USER;
    p->subject = grpc_call_strdup(call, id->client_cn[0] ? id->client_cn : "unknown");
    p->display_name = p->subject;
    p->identity_provider = "mtls";
    p->platform_admin = true;
    return GRPC_STATUS_OK;
}

static void principal_local_dev(struct api_principal *p)
{
    p->kind = API_PRINCIPAL_USER;
    p->subject = LOCAL_DEV_SUBJECT;
    p->display_name = "Unauthenticated Local Dev";
    p->identity_provider = "local_dev";
    p->platform_admin = true;
}

/* The sandbox JWT authenticator: a bearer token with our kid becomes a
 * sandbox principal or fails the call; any other bearer is left for the
 * authenticators after it. Returns OK with |p| set, OK with |p| untouched
 * (not ours), or UNAUTHENTICATED. */
static int principal_from_jwt(struct api *a, struct grpc_call *call, struct api_principal *p,
                              const char **msg)
{
    const char *authz = grpc_call_header(call, "authorization");
    if (a->opts.jwt == NULL || authz == NULL || strncasecmp(authz, "Bearer ", 7) != 0)
        return GRPC_STATUS_OK;
    const char *tok = authz + 7;
    while (*tok == ' ')
        tok++;
    char sandbox_id[37];
    const char *why = NULL;
    uint64_t now = (uint64_t)(gw_now_wall_ms() / 1000);
    switch (jwt_verify_sandbox(a->opts.jwt, a->opts.jwt_issuer, tok, strlen(tok), now, sandbox_id,
                               NULL, &why)) {
    case JWT_OK:
        p->kind = API_PRINCIPAL_SANDBOX;
        p->sandbox_id = grpc_call_strdup(call, sandbox_id);
        char spiffe[80];
        snprintf(spiffe, sizeof(spiffe), "spiffe://openshell/sandbox/%s", sandbox_id);
        p->subject = grpc_call_strdup(call, spiffe);
        p->display_name = p->subject;
        p->identity_provider = "sandbox_jwt";
        return GRPC_STATUS_OK;
    case JWT_NOT_MINE:
        return GRPC_STATUS_OK;
    case JWT_INVALID:
    default: {
        char buf[160];
        snprintf(buf, sizeof(buf), "invalid token: %s", why ? why : "verification failed");
        *msg = grpc_call_strdup(call, buf);
        return GRPC_STATUS_UNAUTHENTICATED;
    }
    }
}

int api_auth_call_start(struct grpc_call *call, const struct grpc_method *m, void *arg,
                        const char **msg)
{
    struct api *a = arg;
    struct api_principal *p = grpc_call_alloc(call, sizeof(*p));
    memset(p, 0, sizeof(*p));
    grpc_call_set_auth(call, p);

    if (m->auth_mode == API_AUTH_UNAUTHENTICATED)
        return GRPC_STATUS_OK;

    int st = principal_from_jwt(a, call, p, msg);
    if (st != GRPC_STATUS_OK)
        return st;
    if (p->kind == API_PRINCIPAL_ANONYMOUS) {
        if (a->opts.mtls_user_auth)
            st = principal_from_cert(call, grpc_call_conn_info(call), p, msg);
        else
            principal_local_dev(p);
        if (st != GRPC_STATUS_OK)
            return st;
    }

    if (m->auth_mode == API_AUTH_SANDBOX && p->kind != API_PRINCIPAL_SANDBOX) {
        *msg = "this method requires a sandbox principal";
        return GRPC_STATUS_PERMISSION_DENIED;
    }
    if (m->auth_mode == API_AUTH_BEARER && p->kind == API_PRINCIPAL_SANDBOX) {
        *msg = "sandbox principals may not call this method";
        return GRPC_STATUS_PERMISSION_DENIED;
    }
    return GRPC_STATUS_OK;
}
