/* Folder-private declarations of src/api. */
#ifndef GW_API_INT_H
#define GW_API_INT_H

#include "api/api.h"
#include "http2/grpc.h"

struct reflection_index;
struct health_watch;
struct diag_state;

#define API_MAX_METHODS 128

struct api {
    struct event_base *base;
    struct grpc_server *srv;
    struct api_opts opts;
    char *version;
    struct api_driver_info *drivers;
    size_t n_drivers;
    bool serving;
    struct health_watch *watches; /* open grpc.health.v1 Watch streams */
    struct reflection_index *refl;
    struct diag_state *diag;
    struct grpc_method methods[API_MAX_METHODS]; /* registered copies; outlive the server's use */
    size_t n_methods;
};

/* Registration tables, one per file; each ends with a NULL path. */
extern const struct grpc_method api_health_methods[];
extern const struct grpc_method api_reflection_methods[];
extern const struct grpc_method api_diag_methods[];

/* grpc.health.v1 */
void api_health_notify(struct api *a);
void api_health_end_watches(struct api *a);

/* Reflection: built once from the embedded descriptor set. */
struct reflection_index *api_reflection_index_new(void);
void api_reflection_index_free(struct reflection_index *ix);

/* Diagnostics bookkeeping (open Delay timers and Stream calls). */
void api_diag_end_all(struct api *a);

/* Authentication hook installed on the gRPC server. */
int api_auth_call_start(struct grpc_call *call, const struct grpc_method *m, void *arg,
                        const char **msg);

#endif /* GW_API_INT_H */
