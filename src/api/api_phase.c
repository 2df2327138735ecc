/* Public SandboxPhase derivation (semantics.md §8): the backend phase of a
 * driver snapshot, its composition with supervisor-session presence, the
 * overlay of the stored phase, and the status messages that go with them.
 *
 * Statuses built here are heap messages that the caller releases with
 * protobuf_c_message_free_unpacked(&st->base, NULL), so everything in them
 * comes from malloc: copies go through pack + unpack with protobuf-c's
 * default allocator, and every string set here is a gw_xstrdup() copy
 * (fields never set keep protobuf-c's static empty string, which
 * free_unpacked knows not to free). */
#include "api/api_int.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <sys/types.h>

#include "compute_driver.pb-c.h"
#include "openshell.pb-c.h"

#define P(x) OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_##x

#define READY_TYPE "Ready"

/* ---- names ------------------------------------------------------------------- */

static const char *const phase_names[] = {
    [P(UNSPECIFIED)] = "UNSPECIFIED",
    [P(PROVISIONING)] = "PROVISIONING",
    [P(READY)] = "READY",
    [P(ERROR)] = "ERROR",
    [P(DELETING)] = "DELETING",
    [P(UNKNOWN)] = "UNKNOWN",
    [P(STOPPING)] = "STOPPING",
    [P(STOPPED)] = "STOPPED",
    [P(STARTING)] = "STARTING",
};

const char *api_phase_name(int phase)
{
    if (phase < 0 || (size_t)phase >= GW_ARRAY_LEN(phase_names) || phase_names[phase] == NULL)
        return "UNKNOWN";
    return phase_names[phase];
}

int api_phase_from_name(const char *name)
{
    for (size_t i = 0; name != NULL && i < GW_ARRAY_LEN(phase_names); i++)
        if (phase_names[i] != NULL && strcasecmp(name, phase_names[i]) == 0)
            return (int)i;
    return P(UNKNOWN);
}

/* ---- backend phase ---------------------------------------------------------- */

bool api_phase_reason_transient(const char *reason)
{
    static const char *const transient[] = {
        "ReconcilerError",   "DependenciesNotReady", "SupervisorNotConnected", "Starting",
        "ContainerStarting", "ContainerCreated",     "HealthCheckStarting",    "InspectFailed",
    };
    for (size_t i = 0; reason != NULL && i < GW_ARRAY_LEN(transient); i++)
        if (strcasecmp(reason, transient[i]) == 0)
            return true;
    return false;
}

static bool str_is(const char *s, const char *want)
{
    return s != NULL && strcmp(s, want) == 0;
}

static bool str_is_ci(const char *s, const char *want)
{
    return s != NULL && strcasecmp(s, want) == 0;
}

int api_phase_backend(const Openshell__Compute__V1__DriverSandboxStatus *st)
{
    if (st == NULL)
        return P(UNKNOWN);
    if (st->deleting)
        return P(DELETING);
    for (size_t i = 0; i < st->n_conditions; i++)
        if (str_is(st->conditions[i]->type, "Suspended") &&
            str_is_ci(st->conditions[i]->status, "true"))
            return P(STOPPED);
    for (size_t i = 0; i < st->n_conditions; i++) {
        const Openshell__Compute__V1__DriverCondition *c = st->conditions[i];
        if (!str_is(c->type, READY_TYPE))
            continue;
        if (str_is_ci(c->status, "true"))
            return P(READY);
        if (str_is_ci(c->status, "false"))
            return api_phase_reason_transient(c->reason) ? P(PROVISIONING) : P(ERROR);
        return P(PROVISIONING);
    }
    return P(PROVISIONING);
}

/* Composition with session presence: ERROR, DELETING and STOPPED pass;
 * everything else is READY exactly when a supervisor session is live. */
static int compose(int backend, bool session)
{
    if (backend == P(ERROR) || backend == P(DELETING) || backend == P(STOPPED))
        return backend;
    return session ? P(READY) : P(PROVISIONING);
}

/* The driver says the workload has exited or was stopped. */
static bool driver_shows_stopped(const Openshell__Compute__V1__DriverSandboxStatus *st)
{
    for (size_t i = 0; i < st->n_conditions; i++) {
        const Openshell__Compute__V1__DriverCondition *c = st->conditions[i];
        if (str_is_ci(c->status, "false") &&
            (str_is_ci(c->reason, "ContainerExited") || str_is_ci(c->reason, "ContainerStopped")))
            return true;
    }
    return false;
}

/* Overlay of the stored phase on the composed one, for a snapshot that has
 * a status (stored ERROR and DELETING never get here). */
static int overlay(int stored, int composed, const Openshell__Compute__V1__DriverSandboxStatus *st)
{
    switch (stored) {
    case P(STOPPING):
        if (composed == P(STOPPED) || driver_shows_stopped(st))
            return P(STOPPED);
        return composed == P(ERROR) ? P(ERROR) : P(STOPPING);
    case P(STOPPED):
        return P(STOPPED);
    case P(STARTING):
        return composed == P(READY) || composed == P(ERROR) ? composed : P(STARTING);
    default:
        return composed;
    }
}

/* ---- heap statuses ------------------------------------------------------------ */

static bool is_default_str(const char *s)
{
    return s == NULL || s == protobuf_c_empty_string;
}

static void set_str(char **field, const char *v)
{
    if (!is_default_str(*field))
        free(*field);
    *field = gw_xstrdup(v != NULL ? v : "");
}

/* Deep copy of |base| with malloc, or an empty status when NULL. */
static Openshell__V1__SandboxStatus *status_clone(const Openshell__V1__SandboxStatus *base)
{
    Openshell__V1__SandboxStatus *st;
    if (base == NULL) {
        st = gw_xmalloc(sizeof(*st));
        openshell__v1__sandbox_status__init(st);
        return st;
    }
    size_t len = openshell__v1__sandbox_status__get_packed_size(base);
    uint8_t *buf = gw_xmalloc(len);
    size_t packed = openshell__v1__sandbox_status__pack(base, buf);
    GW_ASSERT(packed == len);
    st = openshell__v1__sandbox_status__unpack(NULL, len, buf);
    free(buf);
    GW_ASSERT(st != NULL); /* we just encoded it: only OOM fails */
    return st;
}

static Openshell__V1__SandboxCondition *condition_new(const char *type)
{
    Openshell__V1__SandboxCondition *c = gw_xmalloc(sizeof(*c));
    openshell__v1__sandbox_condition__init(c);
    set_str(&c->type, type);
    return c;
}

static void conditions_clear(Openshell__V1__SandboxStatus *st)
{
    for (size_t i = 0; i < st->n_conditions; i++)
        protobuf_c_message_free_unpacked(&st->conditions[i]->base, NULL);
    free(st->conditions);
    st->conditions = NULL;
    st->n_conditions = 0;
}

/* Replaces the conditions of |st| with copies of the driver's. */
static void conditions_from_driver(Openshell__V1__SandboxStatus *st,
                                   const Openshell__Compute__V1__DriverSandboxStatus *d)
{
    conditions_clear(st);
    if (d->n_conditions == 0)
        return;
    st->conditions = gw_xcalloc(d->n_conditions, sizeof(*st->conditions));
    for (size_t i = 0; i < d->n_conditions; i++) {
        const Openshell__Compute__V1__DriverCondition *dc = d->conditions[i];
        Openshell__V1__SandboxCondition *c = condition_new(dc->type);
        set_str(&c->status, dc->status);
        set_str(&c->reason, dc->reason);
        set_str(&c->message, dc->message);
        set_str(&c->last_transition_time, dc->last_transition_time);
        st->conditions[st->n_conditions++] = c;
    }
}

/* Index of the first Ready condition of |st|, or -1. */
static ssize_t ready_index(const Openshell__V1__SandboxStatus *st)
{
    for (size_t i = 0; st != NULL && i < st->n_conditions; i++)
        if (str_is(st->conditions[i]->type, READY_TYPE))
            return (ssize_t)i;
    return -1;
}

/* Sets the first Ready condition of |st| (appended when missing). */
static void set_ready(Openshell__V1__SandboxStatus *st, const char *status, const char *reason,
                      const char *message, const char *when)
{
    ssize_t i = ready_index(st);
    Openshell__V1__SandboxCondition *c;
    if (i >= 0) {
        c = st->conditions[i];
    } else {
        st->conditions =
            gw_xrealloc(st->conditions, (st->n_conditions + 1) * sizeof(*st->conditions));
        c = condition_new(READY_TYPE);
        st->conditions[st->n_conditions++] = c;
    }
    set_str(&c->status, status);
    set_str(&c->reason, reason);
    set_str(&c->message, message);
    set_str(&c->last_transition_time, when);
}

static void now_rfc3339(char out[32])
{
    time_t t = (time_t)(gw_now_wall_ms() / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* A gateway-rewritten Ready condition keeps the transition time it already
 * had in |stored| when nothing about it changed (so a repeated snapshot is
 * not a change); otherwise it changed now. */
static void rewrite_ready(Openshell__V1__SandboxStatus *st,
                          const Openshell__V1__SandboxStatus *stored, const char *status,
                          const char *reason, const char *message)
{
    ssize_t i = ready_index(stored);
    const Openshell__V1__SandboxCondition *old = i >= 0 ? stored->conditions[i] : NULL;
    char now[32];
    if (old != NULL && str_is(old->status, status) && str_is(old->reason, reason) &&
        str_is(old->message, message)) {
        set_ready(st, status, reason, message, old->last_transition_time);
        return;
    }
    now_rfc3339(now);
    set_ready(st, status, reason, message, now);
}

static void ready_dependencies(Openshell__V1__SandboxStatus *st,
                               const Openshell__V1__SandboxStatus *stored)
{
    rewrite_ready(st, stored, "True", "DependenciesReady", "Supervisor session connected");
}

/* Same encoding apart from .phase (the phase is compared on its own). */
static bool status_same(Openshell__V1__SandboxStatus *st,
                        const Openshell__V1__SandboxStatus *stored)
{
    Openshell__V1__SandboxStatus empty = OPENSHELL__V1__SANDBOX_STATUS__INIT;
    if (stored == NULL)
        stored = &empty;
    Openshell__V1__SandboxPhase phase = st->phase;
    st->phase = stored->phase;
    size_t a = openshell__v1__sandbox_status__get_packed_size(st);
    size_t b = openshell__v1__sandbox_status__get_packed_size(stored);
    bool same = false;
    if (a == b) {
        uint8_t *x = gw_xmalloc(a), *y = gw_xmalloc(b);
        openshell__v1__sandbox_status__pack(st, x);
        openshell__v1__sandbox_status__pack(stored, y);
        same = memcmp(x, y, a) == 0;
        free(x);
        free(y);
    }
    st->phase = phase;
    return same;
}

/* ---- snapshot application ------------------------------------------------------- */

/* The status for a snapshot that has one: driver fields and conditions,
 * the Ready rewrite of the composition, everything else from |stored|. */
static Openshell__V1__SandboxStatus *status_from_snapshot(const struct api_phase_in *in,
                                                          int backend, int composed)
{
    const Openshell__Compute__V1__DriverSandboxStatus *d = in->driver;
    Openshell__V1__SandboxStatus *st = status_clone(in->stored);
    set_str(&st->sandbox_name, d->sandbox_name);
    set_str(&st->agent_pod, d->instance_id);
    set_str(&st->agent_fd, d->agent_fd);
    set_str(&st->sandbox_fd, d->sandbox_fd);
    conditions_from_driver(st, d);
    if (backend == P(READY) && !in->session_connected)
        rewrite_ready(st, in->stored, "False", "SupervisorNotConnected",
                      "Backend ready; waiting for supervisor session");
    else if (in->session_connected && composed == P(READY))
        ready_dependencies(st, in->stored);
    return st;
}

bool api_phase_apply_snapshot(const struct api_phase_in *in, int *phase_out,
                              Openshell__V1__SandboxStatus **status_out)
{
    int stored = in->stored_phase, phase;
    Openshell__V1__SandboxStatus *st;
    if (stored == P(ERROR) || stored == P(DELETING))
        return false;
    if (in->driver == NULL) {
        bool promote = in->session_connected && (stored == P(PROVISIONING) ||
                                                 stored == P(UNKNOWN) || stored == P(UNSPECIFIED));
        if (!promote)
            return false;
        phase = P(READY);
        st = status_clone(in->stored);
        ready_dependencies(st, in->stored);
    } else {
        int backend = api_phase_backend(in->driver);
        int composed = compose(backend, in->session_connected);
        phase = overlay(stored, composed, in->driver);
        st = status_from_snapshot(in, backend, composed);
    }
    st->phase = (Openshell__V1__SandboxPhase)phase;
    if (phase == stored && status_same(st, in->stored)) {
        protobuf_c_message_free_unpacked(&st->base, NULL);
        return false;
    }
    *phase_out = phase;
    *status_out = st;
    return true;
}

Openshell__V1__SandboxStatus *api_phase_status_with_ready(const Openshell__V1__SandboxStatus *base,
                                                          int phase, const char *status,
                                                          const char *reason, const char *message)
{
    char now[32];
    Openshell__V1__SandboxStatus *st = status_clone(base);
    st->phase = (Openshell__V1__SandboxPhase)phase;
    now_rfc3339(now);
    set_ready(st, status, reason, message, now);
    return st;
}
