/* openshell.v1 Health and GetGatewayInfo; grpc.health.v1 Check and Watch. */
#include "api/api.h"

#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "grpc/health/v1/health.pb-c.h"
#include "openshell.pb-c.h"

typedef Grpc__Health__V1__HealthCheckResponse__ServingStatus serving_status;
#define ST_SERVING     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
#define ST_NOT_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
#define ST_UNKNOWN_SVC GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN

struct health_watch {
    struct grpc_call *call;
    struct api *api;
    char *service;
    int last_sent; /* -1 before the first message */
    struct health_watch *prev, *next;
};

/* ---- openshell.v1.OpenShell ---------------------------------------------- */

static void health(struct grpc_call *call, void *msg)
{
    struct api *a = grpc_call_method_arg(call);
    Openshell__V1__HealthResponse resp = OPENSHELL__V1__HEALTH_RESPONSE__INIT;
    resp.status = OPENSHELL__V1__SERVICE_STATUS__SERVICE_STATUS_HEALTHY;
    resp.version = a->version;
    grpc_call_reply(call, &resp.base);
}

static void gateway_info(struct grpc_call *call, void *msg)
{
    struct api *a = grpc_call_method_arg(call);
    const struct api_principal *p = api_call_principal(call);
    if (!p->platform_admin) {
        grpc_call_finish(call, GRPC_STATUS_PERMISSION_DENIED, "platform admin role required");
        return;
    }
    Openshell__V1__GetGatewayInfoResponse resp = OPENSHELL__V1__GET_GATEWAY_INFO_RESPONSE__INIT;
    resp.status = OPENSHELL__V1__SERVICE_STATUS__SERVICE_STATUS_HEALTHY;
    resp.gateway_version = a->version;
    Openshell__V1__ComputeDriverInfo *infos =
        grpc_call_alloc(call, sizeof(*infos) * (a->n_drivers + 1));
    Openshell__V1__ComputeDriverCapabilities *caps =
        grpc_call_alloc(call, sizeof(*caps) * (a->n_drivers + 1));
    Openshell__V1__ComputeDriverInfo **ptrs =
        grpc_call_alloc(call, sizeof(*ptrs) * (a->n_drivers + 1));
    for (size_t i = 0; i < a->n_drivers; i++) {
        openshell__v1__compute_driver_info__init(&infos[i]);
        openshell__v1__compute_driver_capabilities__init(&caps[i]);
        infos[i].name = (char *)a->drivers[i].name;
        caps[i].driver_name = (char *)a->drivers[i].driver_name;
        caps[i].driver_version = (char *)a->drivers[i].driver_version;
        infos[i].capabilities = &caps[i];
        ptrs[i] = &infos[i];
    }
    resp.n_compute_drivers = a->n_drivers;
    resp.compute_drivers = ptrs;
    grpc_call_reply(call, &resp.base);
}

/* ---- grpc.health.v1.Health ------------------------------------------------ */

/* "" is the server as a whole; otherwise any service with a registered
 * method counts. */
static bool service_known(const struct api *a, const char *svc)
{
    size_t n = strlen(svc);
    if (n == 0)
        return true;
    for (size_t i = 0; i < a->n_methods; i++) {
        const char *p = a->methods[i].path;
        if (p[0] == '/' && strncmp(p + 1, svc, n) == 0 && p[n + 1] == '/')
            return true;
    }
    return false;
}

static serving_status status_of(const struct api *a, const char *svc)
{
    if (!service_known(a, svc))
        return ST_UNKNOWN_SVC;
    return a->serving ? ST_SERVING : ST_NOT_SERVING;
}

static void check(struct grpc_call *call, void *msg)
{
    struct api *a = grpc_call_method_arg(call);
    Grpc__Health__V1__HealthCheckRequest *req = msg;
    serving_status st = status_of(a, req->service);
    if (st == ST_UNKNOWN_SVC) {
        grpc_call_finishf(call, GRPC_STATUS_NOT_FOUND, "unknown service '%s'", req->service);
        return;
    }
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = st;
    grpc_call_reply(call, &resp.base);
}

static void watch_free(struct health_watch *w)
{
    struct api *a = w->api;
    if (w->prev)
        w->prev->next = w->next;
    else
        a->watches = w->next;
    if (w->next)
        w->next->prev = w->prev;
    free(w->service);
    free(w);
}

static void watch_send(struct health_watch *w)
{
    serving_status st = status_of(w->api, w->service);
    if ((int)st == w->last_sent)
        return;
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = st;
    w->last_sent = (int)st;
    /* One tiny message per status change: SEND_FULL cannot build up. */
    if (grpc_call_send(w->call, &resp.base) < 0)
        log_debug("health.watch_send_failed");
}

static void watch(struct grpc_call *call, void *msg)
{
    struct api *a = grpc_call_method_arg(call);
    Grpc__Health__V1__HealthCheckRequest *req = msg;
    struct health_watch *w = gw_xcalloc(1, sizeof(*w));
    w->call = call;
    w->api = a;
    w->service = gw_xstrdup(req->service);
    w->last_sent = -1;
    w->next = a->watches;
    if (a->watches)
        a->watches->prev = w;
    a->watches = w;
    grpc_call_set_user(call, w);
    watch_send(w);
}

static void watch_cancel(struct grpc_call *call)
{
    struct health_watch *w = grpc_call_user(call);
    if (w != NULL)
        watch_free(w);
}

void api_health_notify(struct api *a)
{
    for (struct health_watch *w = a->watches; w != NULL; w = w->next)
        watch_send(w);
}

void api_health_end_watches(struct api *a)
{
    while (a->watches != NULL) {
        struct health_watch *w = a->watches;
        grpc_call_finish(w->call, GRPC_STATUS_UNAVAILABLE, "server is shutting down");
        watch_free(w);
    }
}

static const struct grpc_handler health_h = {.on_message = health};
static const struct grpc_handler gateway_info_h = {.on_message = gateway_info};
static const struct grpc_handler check_h = {.on_message = check};
static const struct grpc_handler watch_h = {.on_message = watch, .on_cancel = watch_cancel};

const struct grpc_method api_health_methods[] = {
    {"/openshell.v1.OpenShell/Health", GRPC_UNARY, &openshell__v1__health_request__descriptor,
     &openshell__v1__health_response__descriptor, &health_h, NULL, API_AUTH_UNAUTHENTICATED},
    {"/openshell.v1.OpenShell/GetGatewayInfo", GRPC_UNARY,
     &openshell__v1__get_gateway_info_request__descriptor,
     &openshell__v1__get_gateway_info_response__descriptor, &gateway_info_h, NULL, API_AUTH_BEARER},
    {"/grpc.health.v1.Health/Check", GRPC_UNARY,
     &grpc__health__v1__health_check_request__descriptor,
     &grpc__health__v1__health_check_response__descriptor, &check_h, NULL,
     API_AUTH_UNAUTHENTICATED},
    {"/grpc.health.v1.Health/Watch", GRPC_SERVER_STREAM,
     &grpc__health__v1__health_check_request__descriptor,
     &grpc__health__v1__health_check_response__descriptor, &watch_h, NULL,
     API_AUTH_UNAUTHENTICATED},
    {.path = NULL},
};
