/* Authentication: turns a call's credentials into an api_principal before
 * any handler runs, and enforces the method's auth mode (semantics.md §16). */
#include "api/api.h"

#include <string.h>

#include "api/api_int.h"

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

int api_auth_call_start(struct grpc_call *call, const struct grpc_method *m, void *arg,
                        const char **msg)
{
    struct api *a = arg;
    struct api_principal *p = grpc_call_alloc(call, sizeof(*p));
    memset(p, 0, sizeof(*p));
    grpc_call_set_auth(call, p);

    if (m->auth_mode == API_AUTH_UNAUTHENTICATED)
        return GRPC_STATUS_OK;

    int st = GRPC_STATUS_OK;
    if (a->opts.mtls_user_auth)
        st = principal_from_cert(call, grpc_call_conn_info(call), p, msg);
    else
        principal_local_dev(p);
    if (st != GRPC_STATUS_OK)
        return st;

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
