#include "api/api.h"

#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"

static int register_table(struct api *a, const struct grpc_method *table)
{
    for (const struct grpc_method *m = table; m->path != NULL; m++) {
        /* The tables are shared and const; each api registers copies whose
         * method context is itself. */
        GW_ASSERT(a->n_methods < API_MAX_METHODS);
        struct grpc_method *copy = &a->methods[a->n_methods++];
        *copy = *m;
        copy->arg = a;
        if (grpc_server_add_method(a->srv, copy) != 0) {
            log_error("api.duplicate_method", LF_STR("path", m->path));
            return -1;
        }
    }
    return 0;
}

struct api *api_new(struct event_base *base, struct grpc_server *srv, const struct api_opts *o)
{
    struct api *a = gw_xcalloc(1, sizeof(*a));
    a->base = base;
    a->srv = srv;
    a->opts = *o;
    a->version = gw_xstrdup(o->version ? o->version : "");
    a->opts.version = a->version;
    a->serving = true;
    a->refl = api_reflection_index_new();
    if (a->refl == NULL)
        goto fail;
    if (register_table(a, api_health_methods) != 0 ||
        register_table(a, api_reflection_methods) != 0 ||
        register_table(a, api_events_methods) != 0 ||
        register_table(a, api_workspace_methods) != 0 ||
        register_table(a, api_sandbox_methods) != 0 ||
        register_table(a, api_lifecycle_methods) != 0 ||
        register_table(a, api_session_methods) != 0 || register_table(a, api_exec_methods) != 0 ||
        register_table(a, api_forward_methods) != 0 || register_table(a, api_logs_methods) != 0)
        goto fail;
    if (o->enable_diagnostics && register_table(a, api_diag_methods) != 0)
        goto fail;
    grpc_server_set_call_start_hook(srv, api_auth_call_start, a);
    return a;
fail:
    api_free(a);
    return NULL;
}

static void free_drivers(struct api *a)
{
    for (size_t i = 0; i < a->n_drivers; i++) {
        free((char *)a->drivers[i].name);
        free((char *)a->drivers[i].driver_name);
        free((char *)a->drivers[i].driver_version);
    }
    free(a->drivers);
    a->drivers = NULL;
    a->n_drivers = 0;
}

void api_free(struct api *a)
{
    if (a == NULL)
        return;
    api_reflection_index_free(a->refl);
    free_drivers(a);
    api_sessions_free(a);
    api_logs_free(a);
    free(a->diag);
    free(a->version);
    free(a->listen_host);
    free(a);
}

void api_set_listener(struct api *a, const char *host, uint16_t port, bool tls)
{
    free(a->listen_host);
    a->listen_host = gw_xstrdup(host ? host : "");
    a->listen_port = port;
    a->listen_tls = tls;
}

void api_set_drivers(struct api *a, const struct api_driver_info *drivers, size_t n)
{
    free_drivers(a);
    a->drivers = gw_xcalloc(n ? n : 1, sizeof(*a->drivers));
    for (size_t i = 0; i < n; i++) {
        a->drivers[i].name = gw_xstrdup(drivers[i].name ? drivers[i].name : "");
        a->drivers[i].driver_name =
            gw_xstrdup(drivers[i].driver_name ? drivers[i].driver_name : "");
        a->drivers[i].driver_version =
            gw_xstrdup(drivers[i].driver_version ? drivers[i].driver_version : "");
    }
    a->n_drivers = n;
}

void api_set_backend(struct api *a, struct store *store, struct events_hub *hub)
{
    a->opts.store = store;
    a->opts.hub = hub;
}

void api_set_serving(struct api *a, bool serving)
{
    if (a->serving == serving)
        return;
    a->serving = serving;
    api_health_notify(a);
}

void api_end_streams(struct api *a)
{
    api_health_end_watches(a);
    api_events_end_all(a);
    api_diag_end_all(a);
    api_sessions_end_all(a);
}
