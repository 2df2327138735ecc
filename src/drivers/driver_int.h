/* Folder-private declarations of src/drivers: the lifecycle guard of a
 * managed driver, used by the client (driver_client.c). */
#ifndef GW_DRIVER_INT_H
#define GW_DRIVER_INT_H

#include "drivers/driver.h"

struct driver_guard;

/* Runs |plan|'s program (managed plans only) now and again with backoff
 * whenever it exits while not stopping. |on_exit| is told each time the
 * process ended (the endpoint is gone until the next start). |extra_args|
 * (NULL-terminated, may be NULL) are appended to the driver's arguments. */
struct driver_guard *driver_guard_new(struct reactor *r, const struct driver_plan *plan,
                                      const char *gateway_endpoint, const char *const *extra_args,
                                      void (*on_exit)(void *arg, const char *why), void *arg);
/* SIGTERM, SIGKILL after |grace_ms|, socket file removed, then |done| from
 * the loop; |g| is freed after |done| returns. */
void driver_guard_stop(struct driver_guard *g, unsigned grace_ms, void (*done)(void *arg),
                       void *arg);
int driver_guard_pid(const struct driver_guard *g);

#endif /* GW_DRIVER_INT_H */
