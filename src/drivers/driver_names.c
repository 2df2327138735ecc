/* Driver names and the selection rules that turn the configuration into an
 * endpoint plan (semantics.md §3). */
#include "drivers/driver.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"

static const char *const reserved_names[] = {"kubernetes", "docker", "podman", "vm", "process"};
static const char *const shipped_names[] = {"process"};

bool driver_name_reserved(const char *name)
{
    for (size_t i = 0; i < GW_ARRAY_LEN(reserved_names); i++)
        if (strcmp(name, reserved_names[i]) == 0)
            return true;
    return false;
}

bool driver_name_shipped(const char *name)
{
    for (size_t i = 0; i < GW_ARRAY_LEN(shipped_names); i++)
        if (strcmp(name, shipped_names[i]) == 0)
            return true;
    return false;
}

const char *driver_shipped_names(void)
{
    return "process";
}

void driver_plan_clear(struct driver_plan *p)
{
    free(p->name);
    free(p->socket_path);
    free(p->program);
    free(p->state_dir);
    free(p->supervisor);
    free(p->rootfs);
    memset(p, 0, sizeof(*p));
}

static const struct config_driver *find_table(const struct config *c, const char *name)
{
    for (size_t i = 0; i < c->n_driver_tables; i++)
        if (strcmp(c->driver_tables[i].name, name) == 0)
            return &c->driver_tables[i];
    return NULL;
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = gw_xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int refuse(char *err, size_t errlen, const char *fmt, const char *a, const char *b)
{
    snprintf(err, errlen, fmt, a, b);
    return -1;
}

int driver_plan_resolve(const struct config *c, const char *self_dir, struct driver_plan *out,
                        char *err, size_t errlen)
{
    const char *name = c->n_drivers > 0 ? c->drivers[0] : "process";
    const struct config_driver *t = find_table(c, name);
    size_t max_sun = 107;

    memset(out, 0, sizeof(*out));
    if (c->n_drivers > 1)
        return refuse(err, errlen, "multiple compute drivers are not supported yet%s%s", "", "");
    if (c->compute_driver_socket != NULL && c->n_drivers == 0)
        return refuse(err, errlen,
                      "--compute-driver-socket needs a driver name from --drivers or "
                      "OPENSHELL_DRIVERS%s%s",
                      "", "");

    if (driver_name_reserved(name)) {
        if (c->compute_driver_socket != NULL || (t != NULL && t->socket_path != NULL))
            return refuse(err, errlen,
                          "driver name '%s' is reserved for a built-in driver and cannot be "
                          "served through an unmanaged socket; give the out-of-tree driver "
                          "another name (this gateway ships: %s)",
                          name, driver_shipped_names());
        if (!driver_name_shipped(name))
            return refuse(err, errlen,
                          "built-in driver '%s' is not shipped in this build (this gateway "
                          "ships: %s)",
                          name, driver_shipped_names());
        /* Managed: socket and state under the gateway's state dir. */
        char *drivers_dir = path_join(c->state_dir, "drivers");
        size_t n = strlen(drivers_dir) + strlen(name) + 8;
        out->name = gw_xstrdup(name);
        out->managed = true;
        out->socket_path = gw_xmalloc(n);
        snprintf(out->socket_path, n, "%s/%s.sock", drivers_dir, name);
        out->state_dir = path_join(drivers_dir, name);
        free(drivers_dir);
        if (t != NULL && t->program != NULL)
            out->program = gw_xstrdup(t->program);
        else {
            char prog[64];
            snprintf(prog, sizeof(prog), "openshell-driver-%s", name);
            out->program = path_join(self_dir, prog);
        }
        if (t != NULL && t->supervisor != NULL)
            out->supervisor = gw_xstrdup(t->supervisor);
        if (t != NULL && t->rootfs != NULL)
            out->rootfs = gw_xstrdup(t->rootfs);
        out->allow_host_network = t != NULL && t->allow_host_network;
        if (strlen(out->socket_path) > max_sun) {
            snprintf(err, errlen,
                     "managed driver socket %s is longer than %zu bytes; use a shorter "
                     "--state-dir",
                     out->socket_path, max_sun);
            driver_plan_clear(out);
            return -1;
        }
        if (access(out->program, X_OK) != 0) {
            snprintf(err, errlen,
                     "managed driver '%s': program %s is not an executable file (set "
                     "[openshell.drivers.%s] program)",
                     name, out->program, name);
            driver_plan_clear(out);
            return -1;
        }
        return 0;
    }

    /* An extension driver: operator-owned socket, nothing to manage. */
    const char *sock = c->compute_driver_socket;
    if (sock == NULL && t != NULL)
        sock = t->socket_path;
    if (sock == NULL)
        return refuse(err, errlen,
                      "driver '%s' is not built in and has no socket: set "
                      "--compute-driver-socket or [openshell.drivers.%s] socket_path",
                      name, name);
    if (t != NULL && (t->program || t->supervisor || t->rootfs || t->allow_host_network))
        return refuse(err, errlen,
                      "openshell.drivers.%s: program, supervisor, rootfs and "
                      "allow_host_network apply only to managed built-in drivers (%s)",
                      name, driver_shipped_names());
    out->name = gw_xstrdup(name);
    out->socket_path = gw_xstrdup(sock);
    return 0;
}
