/* Unit tests for the public phase derivation (src/api/api_phase.c,
 * semantics.md §8). Every status is a heap message released with
 * protobuf_c_message_free_unpacked(&st->base, NULL); running this binary
 * under AddressSanitizer proves the builders allocate consistently (no
 * leaks, no double or mismatched frees). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api/api_int.h"
#include "compute_driver.pb-c.h"
#include "openshell.pb-c.h"

#define P(x) OPENSHELL__V1__SANDBOX_PHASE__SANDBOX_PHASE_##x

typedef Openshell__V1__SandboxStatus status_t;
typedef Openshell__Compute__V1__DriverSandboxStatus dstatus_t;

/* ---- builders -------------------------------------------------------------------- */

static dstatus_t *dstatus_new(const char *instance)
{
    dstatus_t *d = gw_xmalloc(sizeof(*d));
    openshell__compute__v1__driver_sandbox_status__init(d);
    d->sandbox_name = gw_xstrdup("platform-obj");
    d->instance_id = gw_xstrdup(instance);
    d->agent_fd = gw_xstrdup("agent:1");
    d->sandbox_fd = gw_xstrdup("sup:2");
    return d;
}

static dstatus_t *dcond(dstatus_t *d, const char *type, const char *status, const char *reason,
                        const char *message, const char *ltt)
{
    Openshell__Compute__V1__DriverCondition *c = gw_xmalloc(sizeof(*c));
    openshell__compute__v1__driver_condition__init(c);
    c->type = gw_xstrdup(type);
    c->status = gw_xstrdup(status);
    c->reason = gw_xstrdup(reason);
    c->message = gw_xstrdup(message);
    c->last_transition_time = gw_xstrdup(ltt);
    d->conditions = gw_xrealloc(d->conditions, (d->n_conditions + 1) * sizeof(*d->conditions));
    d->conditions[d->n_conditions++] = c;
    return d;
}

/* A driver status with one Ready condition. */
static dstatus_t *dready(const char *status, const char *reason)
{
    return dcond(dstatus_new("pod-1"), "Ready", status, reason, "from driver",
                 "2024-01-02T03:04:05Z");
}

static void dfree(dstatus_t *d)
{
    if (d != NULL)
        protobuf_c_message_free_unpacked(&d->base, NULL);
}

static void sfree(status_t *s)
{
    if (s != NULL)
        protobuf_c_message_free_unpacked(&s->base, NULL);
}

static const Openshell__V1__SandboxCondition *cond(const status_t *s, const char *type)
{
    for (size_t i = 0; i < s->n_conditions; i++)
        if (strcmp(s->conditions[i]->type, type) == 0)
            return s->conditions[i];
    return NULL;
}

static void assert_cond(const status_t *s, const char *type, const char *status, const char *reason,
                        const char *message)
{
    const Openshell__V1__SandboxCondition *c = cond(s, type);
    if (c == NULL)
        fail_msg("no %s condition", type);
    assert_string_equal(c->status, status);
    assert_string_equal(c->reason, reason);
    if (message != NULL)
        assert_string_equal(c->message, message);
}

static void assert_rfc3339(const char *t)
{
    int y, mo, d, h, mi, s;
    char z = 0;
    assert_int_equal(strlen(t), 20);
    assert_int_equal(sscanf(t, "%4d-%2d-%2dT%2d:%2d:%2d%c", &y, &mo, &d, &h, &mi, &s, &z), 7);
    assert_int_equal(z, 'Z');
    assert_true(y >= 2024 && mo >= 1 && mo <= 12 && d >= 1 && d <= 31);
}

/* Applies |d| to (|stored_phase|, |stored|): returns whether it changed
 * something; |*st| is the new status (NULL when unchanged). */
static bool apply(int stored_phase, const status_t *stored, const dstatus_t *d, bool session,
                  int *phase, status_t **st)
{
    struct api_phase_in in = {
        .stored_phase = stored_phase,
        .stored = stored,
        .driver = d,
        .session_connected = session,
    };
    *phase = -42;
    *st = NULL;
    bool changed = api_phase_apply_snapshot(&in, phase, st);
    if (changed) {
        assert_non_null(*st);
        assert_int_equal((*st)->phase, *phase);
    } else {
        assert_int_equal(*phase, -42); /* outputs untouched */
        assert_null(*st);
    }
    return changed;
}

/* The phase a snapshot leads to from |stored_phase| (no stored status). */
static int phase_after(int stored_phase, const dstatus_t *d, bool session)
{
    int phase;
    status_t *st;
    if (!apply(stored_phase, NULL, d, session, &phase, &st))
        return stored_phase;
    sfree(st);
    return phase;
}

/* ---- names ---------------------------------------------------------------------------- */

static void test_api_phase_name_roundtrip(void **state)
{
    (void)state;
    const char *names[] = {"UNSPECIFIED", "PROVISIONING", "READY",   "ERROR",   "DELETING",
                           "UNKNOWN",     "STOPPING",     "STOPPED", "STARTING"};
    for (int p = 0; p <= P(STARTING); p++) {
        assert_string_equal(api_phase_name(p), names[p]);
        assert_int_equal(api_phase_from_name(names[p]), p);
    }
    assert_string_equal(api_phase_name(-1), "UNKNOWN");
    assert_string_equal(api_phase_name(99), "UNKNOWN");
    assert_int_equal(api_phase_from_name("ready"), P(READY));
    assert_int_equal(api_phase_from_name("nonsense"), P(UNKNOWN));
    assert_int_equal(api_phase_from_name(""), P(UNKNOWN));
    assert_int_equal(api_phase_from_name(NULL), P(UNKNOWN));
}

/* ---- backend phase ---------------------------------------------------------------------- */

static void test_api_phase_reason_transient_list(void **state)
{
    (void)state;
    const char *yes[] = {"ReconcilerError",        "DependenciesNotReady",
                         "SupervisorNotConnected", "Starting",
                         "ContainerStarting",      "ContainerCreated",
                         "HealthCheckStarting",    "InspectFailed",
                         "reconcilererror",        "STARTING",
                         "inspectFAILED"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        if (!api_phase_reason_transient(yes[i]))
            fail_msg("'%s' should be transient", yes[i]);
    const char *no[] = {"",
                        "CrashLoopBackOff",
                        "ImagePullBackOff",
                        "ContainerExited",
                        "MainProcessExited",
                        "Starting ",
                        "Start"};
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        if (api_phase_reason_transient(no[i]))
            fail_msg("'%s' should be terminal", no[i]);
    assert_false(api_phase_reason_transient(NULL));
}

static void test_api_phase_backend_rules(void **state)
{
    (void)state;
    assert_int_equal(api_phase_backend(NULL), P(UNKNOWN));

    dstatus_t *d = dstatus_new("x");
    assert_int_equal(api_phase_backend(d), P(PROVISIONING)); /* no conditions */
    dfree(d);

    d = dready("True", "");
    assert_int_equal(api_phase_backend(d), P(READY));
    d->deleting = true; /* deleting wins over everything */
    assert_int_equal(api_phase_backend(d), P(DELETING));
    dfree(d);

    d = dready("true", "");
    assert_int_equal(api_phase_backend(d), P(READY));
    dfree(d);

    d = dready("False", "ContainerStarting");
    assert_int_equal(api_phase_backend(d), P(PROVISIONING));
    dfree(d);

    d = dready("false", "ImagePullBackOff");
    assert_int_equal(api_phase_backend(d), P(ERROR));
    dfree(d);

    d = dready("False", "");
    assert_int_equal(api_phase_backend(d), P(ERROR)); /* empty reason is terminal */
    dfree(d);

    d = dready("Unknown", "ImagePullBackOff");
    assert_int_equal(api_phase_backend(d), P(PROVISIONING));
    dfree(d);

    /* Only the exact type "Ready" counts. */
    d = dcond(dstatus_new("x"), "ready", "True", "", "", "");
    assert_int_equal(api_phase_backend(d), P(PROVISIONING));
    dfree(d);

    /* The first Ready condition decides. */
    d = dcond(dready("False", "Crashed"), "Ready", "True", "", "", "");
    assert_int_equal(api_phase_backend(d), P(ERROR));
    dfree(d);
}

static void test_api_phase_backend_suspended(void **state)
{
    (void)state;
    dstatus_t *d = dcond(dready("True", ""), "Suspended", "TRUE", "Paused", "", "");
    assert_int_equal(api_phase_backend(d), P(STOPPED)); /* over Ready=True */
    dfree(d);

    d = dcond(dready("True", ""), "Suspended", "False", "", "", "");
    assert_int_equal(api_phase_backend(d), P(READY));
    dfree(d);

    /* Suspended after a terminal Ready=False still wins. */
    d = dcond(dready("False", "Crashed"), "Suspended", "true", "", "", "");
    assert_int_equal(api_phase_backend(d), P(STOPPED));
    dfree(d);
}

/* ---- composition ------------------------------------------------------------------------ */

static void test_api_phase_compose_ready_without_session(void **state)
{
    (void)state;
    dstatus_t *d = dcond(dready("True", "Running"), "Scheduled", "True", "Bound", "m", "t0");
    int phase;
    status_t *st;
    assert_true(apply(P(PROVISIONING), NULL, d, false, &phase, &st));
    assert_int_equal(phase, P(PROVISIONING));
    assert_cond(st, "Ready", "False", "SupervisorNotConnected",
                "Backend ready; waiting for supervisor session");
    assert_rfc3339(cond(st, "Ready")->last_transition_time);
    /* Other conditions are the driver's, times included. */
    assert_cond(st, "Scheduled", "True", "Bound", "m");
    assert_string_equal(cond(st, "Scheduled")->last_transition_time, "t0");
    assert_int_equal(st->n_conditions, 2);
    sfree(st);
    dfree(d);
}

static void test_api_phase_compose_session_ready(void **state)
{
    (void)state;
    int phase;
    status_t *st;
    dstatus_t *d = dready("True", "Running");
    assert_true(apply(P(PROVISIONING), NULL, d, true, &phase, &st));
    assert_int_equal(phase, P(READY));
    assert_cond(st, "Ready", "True", "DependenciesReady", "Supervisor session connected");
    sfree(st);
    dfree(d);

    /* Backend still provisioning, but the supervisor is there: READY. */
    d = dready("False", "ContainerStarting");
    assert_true(apply(P(PROVISIONING), NULL, d, true, &phase, &st));
    assert_int_equal(phase, P(READY));
    assert_cond(st, "Ready", "True", "DependenciesReady", "Supervisor session connected");
    sfree(st);
    dfree(d);

    /* No Ready condition at all: one is added. */
    d = dcond(dstatus_new("x"), "Scheduled", "True", "", "", "");
    assert_true(apply(P(PROVISIONING), NULL, d, true, &phase, &st));
    assert_int_equal(phase, P(READY));
    assert_int_equal(st->n_conditions, 2);
    assert_cond(st, "Ready", "True", "DependenciesReady", NULL);
    sfree(st);
    dfree(d);
}

static void test_api_phase_compose_passthrough(void **state)
{
    (void)state;
    int phase;
    status_t *st;
    /* ERROR, STOPPED and DELETING pass through even with a session. */
    dstatus_t *d = dready("False", "ImagePullBackOff");
    assert_true(apply(P(PROVISIONING), NULL, d, true, &phase, &st));
    assert_int_equal(phase, P(ERROR));
    assert_cond(st, "Ready", "False", "ImagePullBackOff", "from driver");
    assert_string_equal(cond(st, "Ready")->last_transition_time, "2024-01-02T03:04:05Z");
    sfree(st);
    dfree(d);

    d = dcond(dready("True", ""), "Suspended", "True", "", "", "");
    assert_int_equal(phase_after(P(READY), d, true), P(STOPPED));
    dfree(d);

    d = dready("True", "");
    d->deleting = true;
    assert_int_equal(phase_after(P(READY), d, true), P(DELETING));
    dfree(d);

    /* Backend provisioning, no session: PROVISIONING, Ready as the driver said. */
    d = dready("False", "ContainerCreated");
    assert_true(apply(P(PROVISIONING), NULL, d, false, &phase, &st));
    assert_int_equal(phase, P(PROVISIONING));
    assert_cond(st, "Ready", "False", "ContainerCreated", "from driver");
    sfree(st);
    dfree(d);
}

static void test_api_phase_ready_loses_session(void **state)
{
    (void)state;
    dstatus_t *d = dready("True", "");
    assert_int_equal(phase_after(P(READY), d, false), P(PROVISIONING));
    assert_int_equal(phase_after(P(READY), d, true), P(READY));
    assert_int_equal(phase_after(P(UNKNOWN), d, true), P(READY));
    dfree(d);
}

/* ---- overlay of the stored phase -------------------------------------------------------- */

static void test_api_phase_overlay_error_sticky(void **state)
{
    (void)state;
    status_t *stored =
        api_phase_status_with_ready(NULL, P(ERROR), "False", "MainProcessExited", "exited");
    dstatus_t *snaps[] = {dready("True", ""), dready("False", "Starting"), NULL};
    int phase;
    status_t *st;
    for (size_t i = 0; i < 3; i++) {
        assert_false(apply(P(ERROR), stored, snaps[i], true, &phase, &st));
        assert_false(apply(P(ERROR), stored, snaps[i], false, &phase, &st));
    }
    dstatus_t *del = dready("True", "");
    del->deleting = true;
    assert_false(apply(P(ERROR), stored, del, true, &phase, &st));
    dfree(del);
    dfree(snaps[0]);
    dfree(snaps[1]);
    sfree(stored);
}

static void test_api_phase_overlay_deleting_ignores(void **state)
{
    (void)state;
    int phase;
    status_t *st;
    dstatus_t *d = dready("True", "");
    assert_false(apply(P(DELETING), NULL, d, true, &phase, &st));
    assert_false(apply(P(DELETING), NULL, NULL, true, &phase, &st));
    d->deleting = true;
    assert_false(apply(P(DELETING), NULL, d, false, &phase, &st));
    dfree(d);
}

static void test_api_phase_overlay_stopping(void **state)
{
    (void)state;
    /* Composed STOPPED. */
    dstatus_t *d = dcond(dready("False", "Stopping"), "Suspended", "True", "", "", "");
    assert_int_equal(phase_after(P(STOPPING), d, false), P(STOPPED));
    dfree(d);

    /* The driver reports the workload exited or stopped (any condition). */
    d = dready("False", "ContainerExited");
    assert_int_equal(phase_after(P(STOPPING), d, false), P(STOPPED));
    dfree(d);
    d = dcond(dready("True", ""), "Running", "false", "ContainerStopped", "", "");
    assert_int_equal(phase_after(P(STOPPING), d, true), P(STOPPED));
    dfree(d);
    /* ... only with status False. */
    d = dcond(dready("False", "Starting"), "Running", "True", "ContainerExited", "", "");
    assert_int_equal(phase_after(P(STOPPING), d, false), P(STOPPING));
    dfree(d);

    /* Composed ERROR goes through. */
    d = dready("False", "OOMKilled");
    assert_int_equal(phase_after(P(STOPPING), d, false), P(ERROR));
    dfree(d);

    /* Anything else keeps STOPPING, READY with a session included. */
    d = dready("True", "");
    assert_int_equal(phase_after(P(STOPPING), d, true), P(STOPPING));
    assert_int_equal(phase_after(P(STOPPING), d, false), P(STOPPING));
    dfree(d);
}

static void test_api_phase_overlay_stopped_holds(void **state)
{
    (void)state;
    dstatus_t *d = dready("True", "");
    assert_int_equal(phase_after(P(STOPPED), d, true), P(STOPPED));
    dfree(d);
    d = dready("False", "Crashed");
    assert_int_equal(phase_after(P(STOPPED), d, false), P(STOPPED));
    dfree(d);
    d = dready("False", "Starting");
    assert_int_equal(phase_after(P(STOPPED), d, true), P(STOPPED));
    dfree(d);
}

static void test_api_phase_overlay_starting(void **state)
{
    (void)state;
    dstatus_t *d = dready("False", "ContainerStarting");
    assert_int_equal(phase_after(P(STARTING), d, false), P(STARTING));
    dfree(d);
    d = dready("True", ""); /* backend ready, supervisor not yet back */
    assert_int_equal(phase_after(P(STARTING), d, false), P(STARTING));
    assert_int_equal(phase_after(P(STARTING), d, true), P(READY));
    dfree(d);
    d = dready("False", "ImagePullBackOff");
    assert_int_equal(phase_after(P(STARTING), d, false), P(ERROR));
    dfree(d);
    d = dcond(dstatus_new("x"), "Suspended", "True", "", "", "");
    assert_int_equal(phase_after(P(STARTING), d, false), P(STARTING));
    dfree(d);
}

static void test_api_phase_overlay_hold_follows_driver_status(void **state)
{
    (void)state;
    /* The phase holds, but observers see the backend's progress. */
    status_t *stored =
        api_phase_status_with_ready(NULL, P(STARTING), "False", "Starting", "starting");
    dstatus_t *d = dready("False", "ContainerCreated");
    int phase;
    status_t *st;
    assert_true(apply(P(STARTING), stored, d, false, &phase, &st));
    assert_int_equal(phase, P(STARTING));
    assert_int_equal(st->phase, P(STARTING));
    assert_cond(st, "Ready", "False", "ContainerCreated", "from driver");
    assert_string_equal(st->agent_pod, "pod-1");

    /* The same snapshot again changes nothing. */
    status_t *again;
    assert_false(apply(P(STARTING), st, d, false, &phase, &again));
    sfree(st);
    dfree(d);
    sfree(stored);
}

static void test_api_phase_overlay_plain_phases_follow(void **state)
{
    (void)state;
    dstatus_t *d = dready("False", "Crashed");
    assert_int_equal(phase_after(P(READY), d, true), P(ERROR));
    assert_int_equal(phase_after(P(PROVISIONING), d, false), P(ERROR));
    assert_int_equal(phase_after(P(UNKNOWN), d, false), P(ERROR));
    dfree(d);
}

/* ---- snapshot without a status ---------------------------------------------------------- */

static void test_api_phase_no_status_promotes_with_session(void **state)
{
    (void)state;
    int phase;
    status_t *st;
    status_t *stored = api_phase_status_with_ready(NULL, P(PROVISIONING), "False",
                                                   "DependenciesNotReady", "waiting");
    stored->main_process_instance_id = gw_xstrdup("inst-7");
    assert_true(apply(P(PROVISIONING), stored, NULL, true, &phase, &st));
    assert_int_equal(phase, P(READY));
    assert_cond(st, "Ready", "True", "DependenciesReady", "Supervisor session connected");
    assert_string_equal(st->main_process_instance_id, "inst-7");
    sfree(st);

    assert_true(apply(P(UNKNOWN), NULL, NULL, true, &phase, &st));
    assert_int_equal(phase, P(READY));
    assert_int_equal(st->n_conditions, 1);
    sfree(st);
    sfree(stored);
}

static void test_api_phase_no_status_keeps_otherwise(void **state)
{
    (void)state;
    int phase;
    status_t *st;
    assert_false(apply(P(PROVISIONING), NULL, NULL, false, &phase, &st));
    assert_false(apply(P(UNKNOWN), NULL, NULL, false, &phase, &st));
    const int keep[] = {P(READY), P(STOPPING), P(STOPPED), P(STARTING), P(ERROR), P(DELETING)};
    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
        assert_false(apply(keep[i], NULL, NULL, true, &phase, &st));
        assert_false(apply(keep[i], NULL, NULL, false, &phase, &st));
    }
}

/* ---- status contents --------------------------------------------------------------------- */

static void test_api_phase_status_fields(void **state)
{
    (void)state;
    status_t *stored = api_phase_status_with_ready(NULL, P(PROVISIONING), "False", "Starting", "");
    stored->main_process_instance_id = gw_xstrdup("inst-1");
    stored->_exit_code_case = OPENSHELL__V1__SANDBOX_STATUS___EXIT_CODE_EXIT_CODE;
    stored->exit_code = 3;
    stored->current_policy_version = 9;
    stored->agent_pod = gw_xstrdup("old-pod");

    dstatus_t *d = dready("False", "ContainerCreated");
    int phase;
    status_t *st;
    assert_true(apply(P(PROVISIONING), stored, d, false, &phase, &st));
    assert_string_equal(st->sandbox_name, "platform-obj");
    assert_string_equal(st->agent_pod, "pod-1");
    assert_string_equal(st->agent_fd, "agent:1");
    assert_string_equal(st->sandbox_fd, "sup:2");
    assert_string_equal(st->main_process_instance_id, "inst-1");
    assert_int_equal(st->_exit_code_case, OPENSHELL__V1__SANDBOX_STATUS___EXIT_CODE_EXIT_CODE);
    assert_int_equal(st->exit_code, 3);
    assert_int_equal(st->current_policy_version, 9);
    assert_int_equal(st->n_conditions, 1);
    /* The stored record is untouched. */
    assert_string_equal(stored->agent_pod, "old-pod");
    sfree(st);
    dfree(d);
    sfree(stored);
}

/* Applies |d| twice (the second time to the first result) and checks the
 * second application changes nothing. */
static void check_idempotent(int stored_phase, const dstatus_t *d, bool session)
{
    int phase, phase2;
    status_t *st, *st2;
    if (!apply(stored_phase, NULL, d, session, &phase, &st))
        return;
    if (apply(phase, st, d, session, &phase2, &st2)) {
        fail_msg("stored %s, session %d: second identical snapshot changed %s -> %s",
                 api_phase_name(stored_phase), session, api_phase_name(phase),
                 api_phase_name(phase2));
    }
    sfree(st);
}

static void test_api_phase_identical_snapshot_no_change(void **state)
{
    (void)state;
    dstatus_t *snaps[] = {
        dready("True", ""),
        dready("False", "ContainerStarting"),
        dready("False", "Crashed"),
        dcond(dready("True", ""), "Suspended", "True", "", "", ""),
        dcond(dstatus_new("x"), "Scheduled", "True", "", "", "now"),
        dready("False", "ContainerExited"),
    };
    const int phases[] = {P(PROVISIONING), P(READY),    P(UNKNOWN),
                          P(STARTING),     P(STOPPING), P(STOPPED)};
    for (size_t i = 0; i < sizeof(snaps) / sizeof(snaps[0]); i++)
        for (size_t j = 0; j < sizeof(phases) / sizeof(phases[0]); j++) {
            check_idempotent(phases[j], snaps[i], false);
            check_idempotent(phases[j], snaps[i], true);
        }
    for (size_t i = 0; i < sizeof(snaps) / sizeof(snaps[0]); i++)
        dfree(snaps[i]);
}

/* |st| through its encoding, as the store hands it back. */
static status_t *roundtrip(const status_t *st)
{
    size_t len = openshell__v1__sandbox_status__get_packed_size(st);
    uint8_t *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    openshell__v1__sandbox_status__pack(st, buf);
    status_t *back = openshell__v1__sandbox_status__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(back);
    return back;
}

static void test_api_phase_identical_snapshot_decoded_stored(void **state)
{
    (void)state;
    /* Empty strings and absent fields decode to protobuf-c's defaults; the
     * comparison must not mistake them for changes. */
    dstatus_t *d =
        dcond(dcond(dstatus_new(""), "Ready", "True", "", "", ""), "Other", "", "", "", "");
    free(d->agent_fd);
    d->agent_fd = gw_xstrdup("");
    const bool sessions[] = {false, true};
    for (size_t i = 0; i < 2; i++) {
        int phase, phase2;
        status_t *st, *st2;
        assert_true(apply(P(PROVISIONING), NULL, d, sessions[i], &phase, &st));
        status_t *stored = roundtrip(st);
        assert_false(apply(phase, stored, d, sessions[i], &phase2, &st2));
        sfree(stored);
        sfree(st);
    }
    dfree(d);
}

static void test_api_phase_rewritten_ready_keeps_time(void **state)
{
    (void)state;
    /* A stored rewritten Ready condition with an old time keeps it. */
    status_t *stored =
        api_phase_status_with_ready(NULL, P(PROVISIONING), "False", "SupervisorNotConnected",
                                    "Backend ready; waiting for supervisor session");
    free(stored->conditions[0]->last_transition_time);
    stored->conditions[0]->last_transition_time = gw_xstrdup("2020-01-01T00:00:00Z");
    stored->agent_pod = gw_xstrdup("pod-1");
    stored->sandbox_name = gw_xstrdup("platform-obj");
    stored->agent_fd = gw_xstrdup("agent:1");
    stored->sandbox_fd = gw_xstrdup("sup:2");
    dstatus_t *d = dready("True", "");
    int phase;
    status_t *st;
    assert_false(apply(P(PROVISIONING), stored, d, false, &phase, &st));

    /* The supervisor arrives: a new Ready, with a new time. */
    assert_true(apply(P(PROVISIONING), stored, d, true, &phase, &st));
    assert_int_equal(phase, P(READY));
    assert_cond(st, "Ready", "True", "DependenciesReady", NULL);
    assert_string_not_equal(cond(st, "Ready")->last_transition_time, "2020-01-01T00:00:00Z");
    assert_rfc3339(cond(st, "Ready")->last_transition_time);
    sfree(st);
    dfree(d);
    sfree(stored);
}

static void test_api_phase_driver_change_is_change(void **state)
{
    (void)state;
    int phase, phase2;
    status_t *st, *st2;
    dstatus_t *d = dready("False", "ContainerCreated");
    assert_true(apply(P(PROVISIONING), NULL, d, false, &phase, &st));
    /* Same phase, different instance id: a change. */
    free(d->instance_id);
    d->instance_id = gw_xstrdup("pod-2");
    assert_true(apply(phase, st, d, false, &phase2, &st2));
    assert_int_equal(phase2, P(PROVISIONING));
    assert_string_equal(st2->agent_pod, "pod-2");
    sfree(st2);
    /* A different driver transition time for the same condition too. */
    free(d->conditions[0]->last_transition_time);
    d->conditions[0]->last_transition_time = gw_xstrdup("2024-09-09T09:09:09Z");
    d->instance_id[4] = '1';
    assert_true(apply(phase, st, d, false, &phase2, &st2));
    sfree(st2);
    sfree(st);
    dfree(d);
}

static void test_api_phase_stored_phase_field_ignored(void **state)
{
    (void)state;
    /* Only the phase column counts: a stale .phase inside the stored
     * status bytes does not make a snapshot look like a change. */
    int phase, phase2;
    status_t *st, *st2;
    dstatus_t *d = dready("False", "ContainerCreated");
    assert_true(apply(P(PROVISIONING), NULL, d, false, &phase, &st));
    st->phase = P(UNSPECIFIED);
    assert_false(apply(P(PROVISIONING), st, d, false, &phase2, &st2));
    sfree(st);
    dfree(d);
}

/* ---- api_phase_status_with_ready --------------------------------------------------------- */

static void test_api_phase_status_with_ready_new(void **state)
{
    (void)state;
    status_t *st = api_phase_status_with_ready(NULL, P(STOPPING), "False", "Stopping", "stopping");
    assert_int_equal(st->phase, P(STOPPING));
    assert_int_equal(st->n_conditions, 1);
    assert_cond(st, "Ready", "False", "Stopping", "stopping");
    assert_rfc3339(st->conditions[0]->last_transition_time);
    assert_string_equal(st->agent_pod, "");
    sfree(st);
}

static void test_api_phase_status_with_ready_replaces(void **state)
{
    (void)state;
    dstatus_t *d = dcond(dcond(dstatus_new("pod-9"), "Scheduled", "True", "", "", "t1"), "Ready",
                         "True", "Running", "", "t2");
    int phase;
    status_t *base;
    assert_true(apply(P(PROVISIONING), NULL, d, true, &phase, &base));
    base->main_process_instance_id = gw_xstrdup("inst");
    base->_exit_code_case = OPENSHELL__V1__SANDBOX_STATUS___EXIT_CODE_EXIT_CODE;
    base->exit_code = 0;

    status_t *st = api_phase_status_with_ready(base, P(STOPPED), "False", "Stopped", "stopped");
    assert_int_equal(st->phase, P(STOPPED));
    assert_int_equal(st->n_conditions, 2);
    assert_string_equal(st->conditions[1]->type, "Ready"); /* replaced in place */
    assert_cond(st, "Ready", "False", "Stopped", "stopped");
    assert_cond(st, "Scheduled", "True", "", NULL);
    assert_string_equal(cond(st, "Scheduled")->last_transition_time, "t1");
    assert_string_equal(st->agent_pod, "pod-9");
    assert_string_equal(st->main_process_instance_id, "inst");
    assert_int_equal(st->_exit_code_case, OPENSHELL__V1__SANDBOX_STATUS___EXIT_CODE_EXIT_CODE);
    /* |base| is a separate message, unchanged. */
    assert_int_equal(base->phase, P(READY));
    assert_cond(base, "Ready", "True", "DependenciesReady", NULL);
    sfree(st);

    /* No Ready condition in |base|: appended after the others. */
    status_t *noready = api_phase_status_with_ready(NULL, P(READY), "True", "x", "y");
    free(noready->conditions[0]->type);
    noready->conditions[0]->type = gw_xstrdup("Other");
    st = api_phase_status_with_ready(noready, P(STARTING), "False", "Starting", "starting");
    assert_int_equal(st->n_conditions, 2);
    assert_string_equal(st->conditions[0]->type, "Other");
    assert_cond(st, "Ready", "False", "Starting", "starting");
    sfree(st);
    sfree(noready);
    sfree(base);
    dfree(d);
}

static void test_api_phase_status_with_ready_unpacked_base(void **state)
{
    (void)state;
    /* A base decoded from stored bytes (as the lifecycle code has it). */
    status_t *src = api_phase_status_with_ready(NULL, P(READY), "True", "DependenciesReady", "ok");
    size_t len = openshell__v1__sandbox_status__get_packed_size(src);
    uint8_t *buf = malloc(len);
    openshell__v1__sandbox_status__pack(src, buf);
    status_t *base = openshell__v1__sandbox_status__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(base);
    status_t *st = api_phase_status_with_ready(base, P(STOPPING), "False", "Stopping", "");
    assert_cond(st, "Ready", "False", "Stopping", "");
    sfree(st);
    openshell__v1__sandbox_status__free_unpacked(base, NULL);
    sfree(src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_api_phase_name_roundtrip),
        cmocka_unit_test(test_api_phase_reason_transient_list),
        cmocka_unit_test(test_api_phase_backend_rules),
        cmocka_unit_test(test_api_phase_backend_suspended),
        cmocka_unit_test(test_api_phase_compose_ready_without_session),
        cmocka_unit_test(test_api_phase_compose_session_ready),
        cmocka_unit_test(test_api_phase_compose_passthrough),
        cmocka_unit_test(test_api_phase_ready_loses_session),
        cmocka_unit_test(test_api_phase_overlay_error_sticky),
        cmocka_unit_test(test_api_phase_overlay_deleting_ignores),
        cmocka_unit_test(test_api_phase_overlay_stopping),
        cmocka_unit_test(test_api_phase_overlay_stopped_holds),
        cmocka_unit_test(test_api_phase_overlay_starting),
        cmocka_unit_test(test_api_phase_overlay_hold_follows_driver_status),
        cmocka_unit_test(test_api_phase_overlay_plain_phases_follow),
        cmocka_unit_test(test_api_phase_no_status_promotes_with_session),
        cmocka_unit_test(test_api_phase_no_status_keeps_otherwise),
        cmocka_unit_test(test_api_phase_status_fields),
        cmocka_unit_test(test_api_phase_identical_snapshot_no_change),
        cmocka_unit_test(test_api_phase_identical_snapshot_decoded_stored),
        cmocka_unit_test(test_api_phase_rewritten_ready_keeps_time),
        cmocka_unit_test(test_api_phase_driver_change_is_change),
        cmocka_unit_test(test_api_phase_stored_phase_field_ignored),
        cmocka_unit_test(test_api_phase_status_with_ready_new),
        cmocka_unit_test(test_api_phase_status_with_ready_replaces),
        cmocka_unit_test(test_api_phase_status_with_ready_unpacked_base),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
