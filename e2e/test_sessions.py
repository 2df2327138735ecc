"""Supervisor sessions, readiness and sandbox tokens end to end
(semantics.md §8, §14, §15, §16).

The managed process driver starts openshell-supervisor as PID 1 of each
sandbox; the supervisor opens ConnectSupervisor with the sandbox JWT the
gateway minted, and the sandbox is READY exactly while that session is
live. Tests here also act as a supervisor themselves: they read a sandbox's
token from the driver's state directory and open sessions or call
sandbox-only methods with it. Without mTLS, a call without a bearer token
is the local-dev user.
"""

import os
import signal
import time
import uuid

import grpc
import pytest

from drivers_fixtures import _drivers_stopper, _leaks, db_url, env  # noqa: F401 - fixtures
from drivers_fixtures import WAIT
from relay_util import (
    READY_WAIT,
    BidiCall,
    bearer,
    call,
    call_code,
    create_ready,
    create_sandbox,
    exec_error,
    exec_ok,
    first_payload,
    jwt_parts,
    jwt_with_claims,
    jwt_with_flipped_signature,
    phase,
    phase_name,
    sandbox_token,
    supervisor_pid,
    supervisor_procs,
    supervisor_session,
    wait_phase,
)
from test_events import Subscriber
from utils import wait_until

pytestmark = pytest.mark.postgres

SANDBOX_ONLY = "sandbox principals may not call this method"
NEEDS_SANDBOX = "this method requires a sandbox principal"


def ready_condition(sb):
    conds = [c for c in sb.status.conditions if c.type == "Ready"]
    assert len(conds) == 1, sb.status
    return conds[0]


def assert_exec_works(api, sid):
    assert exec_ok(api, sid, ["echo", "alive"]) == b"alive\n"


def stays(pred, seconds, interval=0.1):
    """True when pred() holds at every poll for |seconds|."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not pred():
            return False
        time.sleep(interval)
    return pred()


# ---------------------------------------------------------------------------
# readiness


def test_ready_after_create(env):
    gw = env.gateway()
    api = env.api(gw)
    pb = env.pb
    created = create_sandbox(env, api, "rdy")
    sid = created.metadata.id
    assert created.status.phase == phase(pb, "PROVISIONING"), created.status
    w = env.watch(api, id=sid, follow_status=True)
    _, sb = w.wait_sandbox(lambda s: s.status.phase == phase(pb, "READY"), "READY",
                           timeout=READY_WAIT)
    cond = ready_condition(sb)
    assert (cond.status.lower(), cond.reason) == ("true", "DependenciesReady"), sb.status
    assert sb.status.main_process_instance_id, sb.status
    assert not sb.status.HasField("exit_code"), sb.status
    # Every earlier snapshot was PROVISIONING (no detour through ERROR).
    seen = [phase_name(pb, it.sandbox.status.phase) for it in w.items
            if it.WhichOneof("payload") == "sandbox"]
    assert set(seen[:-1]) <= {"PROVISIONING"}, seen
    got = api.GetSandbox(name="rdy").sandbox
    assert got.status.phase == phase(pb, "READY")
    assert got.status.main_process_instance_id == sb.status.main_process_instance_id
    # One supervisor runs for it, as a child of the driver.
    assert len(supervisor_procs(sid)) >= 1
    assert_exec_works(api, sid)


def test_supervisor_killed_phase_leaves_ready_and_returns(env, stubs):
    gw = env.gateway()
    api = env.api(gw)
    pb = env.pb
    wait_until(lambda: gw.find_event("events.ready"), 10, what="events.ready")
    sub = Subscriber(stubs, gw, name="sess-events")
    try:
        sub.wait_caught_up()
        sb = create_ready(env, api, "kill")
        sid = sb.metadata.id
        old_instance = sb.status.main_process_instance_id
        assert old_instance, sb.status
        w = env.watch(api, id=sid, follow_status=True)
        w.wait_sandbox(lambda s: s.status.phase == phase(pb, "READY"), "initial READY snapshot")
        start = len(w.items)
        pid = supervisor_pid(sid)
        os.kill(pid, signal.SIGKILL)

        i, down = w.wait_sandbox(lambda s: s.status.phase != phase(pb, "READY"),
                                 "a snapshot leaving READY after the supervisor was killed",
                                 start=start)
        assert down.status.phase == phase(pb, "PROVISIONING"), down.status
        assert ready_condition(down).status.lower() == "false", down.status
        j, up = w.wait_sandbox(lambda s: s.status.phase == phase(pb, "READY"),
                               "READY again after the driver restarted the supervisor",
                               start=i + 1, timeout=READY_WAIT)
        between = [phase_name(pb, it.sandbox.status.phase) for it in w.items[i:j]
                   if it.WhichOneof("payload") == "sandbox"]
        assert set(between) <= {"PROVISIONING"}, between
        new_instance = up.status.main_process_instance_id
        assert new_instance and new_instance != old_instance, (old_instance, up.status)
        new_pid = supervisor_pid(sid)
        assert new_pid != pid
        assert_exec_works(api, sid)

        def changes():
            return [(e.previous_phase, e.new_phase) for e in sub.snapshot()
                    if e.sandbox_id == sid and e.kind == "sandbox.phase_changed"]

        ready, prov = phase(pb, "READY"), phase(pb, "PROVISIONING")

        def both():
            c = changes()
            if (ready, prov) not in c:
                return False
            return (prov, ready) in c[c.index((ready, prov)) + 1:]

        try:
            sub.wait(both, WAIT, "phase_changed READY->PROVISIONING then PROVISIONING->READY")
        except TimeoutError as e:
            raise AssertionError(f"{e}; changes: "
                                 f"{[(phase_name(pb, a), phase_name(pb, b)) for a, b in changes()]}"
                                 ) from None
    finally:
        sub.close()


def test_stop_drops_session_and_start_reconnects(env):
    gw = env.gateway()
    api = env.api(gw)
    pb = env.pb
    sb = create_ready(env, api, "stst")
    sid = sb.metadata.id
    old_instance = sb.status.main_process_instance_id

    stopped = api.StopSandbox(name="stst").sandbox
    assert stopped.status.phase == phase(pb, "STOPPED"), stopped.status
    wait_until(lambda: not supervisor_procs(sid), WAIT, interval=0.05,
               what="the supervisor gone after StopSandbox")
    code, details = exec_error(api, sid, ["true"])
    assert code == grpc.StatusCode.FAILED_PRECONDITION, (code, details)
    # The session's end does not move a STOPPED sandbox.
    assert stays(lambda: api.GetSandbox(name="stst").sandbox.status.phase
                 == phase(pb, "STOPPED"), 1.0)

    started = api.StartSandbox(name="stst").sandbox
    assert started.status.phase in (phase(pb, "STARTING"), phase(pb, "READY")), started.status
    up = wait_phase(api, "stst", "READY", what="READY after StartSandbox")
    assert up.status.main_process_instance_id, up.status
    assert up.status.main_process_instance_id != old_instance, up.status
    assert_exec_works(api, sid)


def test_main_process_exit_is_error(env):
    """The supervisor reports its main command's exit: ERROR, exit_code
    set, Ready=False MainProcessExited; ERROR then sticks."""
    gw = env.gateway()
    api = env.api(gw)
    pb = env.pb
    for name, code in (("exit7", 7), ("exit0", 0)):
        create_sandbox(env, api, name, command=["sh", "-c", f"sleep 0.5; exit {code}"])
    for name, code in (("exit7", 7), ("exit0", 0)):
        sb = wait_phase(api, name, "ERROR", what=f"{name} ERROR after its command exited")
        assert sb.status.HasField("exit_code"), sb.status
        assert sb.status.exit_code == code, sb.status
        cond = ready_condition(sb)
        assert (cond.status.lower(), cond.reason) == ("false", "MainProcessExited"), sb.status
        assert sb.status.main_process_instance_id, sb.status
    assert stays(lambda: api.GetSandbox(name="exit7").sandbox.status.phase
                 == phase(pb, "ERROR"), 1.5)


def test_stale_main_process_exit_report_ignored(env):
    gw = env.gateway()
    api = env.api(gw)
    pb = env.pb
    sb = create_ready(env, api, "stale")
    sid = sb.metadata.id
    instance = sb.status.main_process_instance_id
    token = sandbox_token(gw, sid)

    code, details = call_code(api, "ReportMainProcessExit", metadata=bearer(token),
                              sandbox_id=sid, instance_id="", exit_code=9)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    code, details = call_code(api, "ReportMainProcessExit", metadata=bearer(token),
                              sandbox_id="", instance_id=instance, exit_code=9)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)

    call(api, "ReportMainProcessExit", metadata=bearer(token), sandbox_id=sid,
         instance_id="stale-" + uuid.uuid4().hex, exit_code=9)

    def unchanged():
        s = api.GetSandbox(name="stale").sandbox
        return (s.status.phase == phase(pb, "READY") and not s.status.HasField("exit_code")
                and s.status.main_process_instance_id == instance)

    assert stays(unchanged, 1.5), api.GetSandbox(name="stale").sandbox.status
    assert_exec_works(api, sid)


# ---------------------------------------------------------------------------
# sessions opened by the test


def test_second_session_supersedes_the_first(env):
    """A second ConnectSupervisor for the same sandbox takes over: the
    supervisor's stream is closed, the supervisor dials again (same
    process), and its new session in turn supersedes the test's."""
    gw = env.gateway()
    api = env.api(gw)
    pb = env.pb
    sb = create_ready(env, api, "super")
    sid = sb.metadata.id
    orig = sb.status.main_process_instance_id
    pid = supervisor_pid(sid)
    token = sandbox_token(gw, sid)

    s = supervisor_session(api, token, sid, "test-" + uuid.uuid4().hex)
    try:
        s.wait(lambda items: items, 10, "the gateway's first message")
        assert first_payload(s.items) == "session_accepted", s.items
        acc = s.items[0].session_accepted
        assert acc.session_id and acc.heartbeat_interval_secs == 15, acc
        end = s.wait_end(30, "the test's session superseded by the reconnecting supervisor")
        print(f"test session ended with {end}")
    finally:
        s.cancel()

    def back():
        st = api.GetSandbox(name="super").sandbox.status
        return st.phase == phase(pb, "READY") and st.main_process_instance_id == orig

    wait_until(back, READY_WAIT, interval=0.1,
               what="READY with the supervisor's own instance id again")
    assert supervisor_pid(sid) == pid, "the supervisor was restarted instead of reconnecting"
    assert_exec_works(api, sid)


def test_session_handshake_errors(env):
    gw = env.gateway()
    api = env.api(gw)
    pb = env.pb
    sb = create_ready(env, api, "hs")
    sid = sb.metadata.id
    token = sandbox_token(gw, sid)

    # First message not a hello.
    s = BidiCall(api.stub.ConnectSupervisor,
                 pb.SupervisorMessage(heartbeat=pb.SupervisorHeartbeat()),
                 timeout=20, metadata=bearer(token), name="no-hello")
    code, details = s.wait_end(20)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    # Stream closed before any message.
    s = BidiCall(api.stub.ConnectSupervisor, None, timeout=20, metadata=bearer(token),
                 name="empty")
    s.close_send()
    code, details = s.wait_end(20)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    # Hello without a sandbox id.
    s = supervisor_session(api, token, "", "x")
    code, details = s.wait_end(20)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    # None of this disturbed the real session.
    assert api.GetSandbox(name="hs").sandbox.status.phase == phase(pb, "READY")
    assert_exec_works(api, sid)


# ---------------------------------------------------------------------------
# tokens and principals


def test_sandbox_token_refused_on_user_methods(env):
    gw = env.gateway()
    api = env.api(gw)
    pb = env.pb
    sb = create_ready(env, api, "tok")
    sid = sb.metadata.id
    md = bearer(sandbox_token(gw, sid))

    unary = [
        ("ListSandboxes", {}),
        ("GetSandbox", {"name": "tok"}),
        ("CreateSandbox", {"name": "other", "spec": pb.SandboxSpec(command=["true"])}),
        ("DeleteSandbox", {"name": "tok"}),
        ("StopSandbox", {"name": "tok"}),
        ("CreateSshSession", {"sandbox_id": sid}),
        ("GetGatewayInfo", {}),
    ]
    for method, kw in unary:
        code, details = call_code(api, method, metadata=md, **kw)
        assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, SANDBOX_ONLY), method
    try:
        list(api.stub.ExecSandbox(pb.ExecSandboxRequest(sandbox_id=sid, command=["true"]),
                                  timeout=15, metadata=md))
        pytest.fail("ExecSandbox accepted a sandbox principal")
    except grpc.RpcError as e:
        assert (e.code(), e.details()) == (grpc.StatusCode.PERMISSION_DENIED, SANDBOX_ONLY)
    w = api.stub.WatchSandbox(pb.WatchSandboxRequest(id=sid), timeout=15, metadata=md)
    try:
        next(w)
        pytest.fail("WatchSandbox accepted a sandbox principal")
    except grpc.RpcError as e:
        assert (e.code(), e.details()) == (grpc.StatusCode.PERMISSION_DENIED, SANDBOX_ONLY)

    # Nothing happened; Health needs no credentials at all.
    assert [s.metadata.name for s in api.ListSandboxes().sandboxes] == ["tok"]
    assert api.GetSandbox(name="tok").sandbox.status.phase == phase(pb, "READY")
    assert call(api, "Health", metadata=md).status == pb.SERVICE_STATUS_HEALTHY


def test_user_refused_on_sandbox_methods(env):
    gw = env.gateway()
    api = env.api(gw)
    pb = env.pb
    sb = create_ready(env, api, "usr")
    sid = sb.metadata.id
    instance = sb.status.main_process_instance_id

    for method, kw in (("ReportMainProcessExit", {"sandbox_id": sid, "instance_id": instance,
                                                  "exit_code": 1}),
                       ("RefreshSandboxToken", {})):
        code, details = call_code(api, method, **kw)
        assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, NEEDS_SANDBOX), method
    # Without Kubernetes ServiceAccount support nobody gets IssueSandboxToken.
    code, details = call_code(api, "IssueSandboxToken")
    assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)

    s = BidiCall(api.stub.ConnectSupervisor,
                 pb.SupervisorMessage(hello=pb.SupervisorHello(sandbox_id=sid, instance_id="x")),
                 timeout=20, name="user-connect")
    assert s.wait_end(20) == (grpc.StatusCode.PERMISSION_DENIED, NEEDS_SANDBOX)
    assert not s.items, s.items
    r = BidiCall(api.stub.RelayStream,
                 pb.RelayFrame(init=pb.RelayInit(channel_id=str(uuid.uuid4()))),
                 timeout=20, name="user-relay")
    assert r.wait_end(20) == (grpc.StatusCode.PERMISSION_DENIED, NEEDS_SANDBOX)
    try:
        api.stub.PushSandboxLogs(iter([pb.PushSandboxLogsRequest(sandbox_id=sid)]), timeout=15)
        pytest.fail("PushSandboxLogs accepted a user principal")
    except grpc.RpcError as e:
        assert (e.code(), e.details()) == (grpc.StatusCode.PERMISSION_DENIED, NEEDS_SANDBOX)

    # The sandbox is untouched (no exit recorded, still READY).
    st = api.GetSandbox(name="usr").sandbox.status
    assert st.phase == phase(pb, "READY") and not st.HasField("exit_code"), st


def test_forged_tokens_unauthenticated(env):
    gw = env.gateway()
    api = env.api(gw)
    pb = env.pb
    a = create_ready(env, api, "forga").metadata.id
    b = create_ready(env, api, "forgb").metadata.id
    token = sandbox_token(gw, a)
    header, claims, _ = jwt_parts(token)
    assert header.get("alg") == "EdDSA" and header.get("kid"), header
    assert claims.get("sandbox_id") == a, claims
    assert claims.get("sub") == f"spiffe://openshell/sandbox/{a}", claims

    forged = {
        "bad-signature": jwt_with_flipped_signature(token),
        "other-sandbox": jwt_with_claims(token, sandbox_id=b,
                                         sub=f"spiffe://openshell/sandbox/{b}"),
        "later-expiry": jwt_with_claims(token, exp=int(time.time()) + 3600),
    }
    for what, bad in forged.items():
        for method, kw in (("RefreshSandboxToken", {}),
                           ("ReportMainProcessExit", {"sandbox_id": a, "instance_id": "x"}),
                           ("ListSandboxes", {})):
            code, details = call_code(api, method, metadata=bearer(bad), **kw)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (what, method, code, details)
        s = supervisor_session(api, bad, a, "forged")
        code, details = s.wait_end(20)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (what, "ConnectSupervisor", code, details)
    for name in ("forga", "forgb"):
        assert api.GetSandbox(name=name).sandbox.status.phase == phase(pb, "READY")


def test_cross_sandbox_token_refused(env):
    gw = env.gateway()
    api = env.api(gw)
    pb = env.pb
    a = create_ready(env, api, "crossa").metadata.id
    sb_b = create_ready(env, api, "crossb")
    b = sb_b.metadata.id
    token_a = sandbox_token(gw, a)

    s = supervisor_session(api, token_a, b, "intruder")
    try:
        code, details = s.wait_end(20)
    finally:
        s.cancel()
    assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)
    assert not any(it.WhichOneof("payload") == "session_accepted" for it in s.items), s.items

    code, details = call_code(api, "ReportMainProcessExit", metadata=bearer(token_a),
                              sandbox_id=b, instance_id=sb_b.status.main_process_instance_id,
                              exit_code=1)
    assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)

    for name in ("crossa", "crossb"):
        st = api.GetSandbox(name=name).sandbox.status
        assert st.phase == phase(pb, "READY") and not st.HasField("exit_code"), (name, st)
    assert api.GetSandbox(name="crossb").sandbox.status.main_process_instance_id == \
        sb_b.status.main_process_instance_id
    assert_exec_works(api, b)


def test_refresh_sandbox_token(env):
    gw = env.gateway()
    api = env.api(gw)
    sb = create_ready(env, api, "rfr")
    sid = sb.metadata.id
    token = sandbox_token(gw, sid)
    old_header, old_claims, _ = jwt_parts(token)

    time.sleep(1.1)  # a later iat
    resp = call(api, "RefreshSandboxToken", metadata=bearer(token))
    new = resp.token
    header, claims, sig = jwt_parts(new)
    assert header.get("alg") == "EdDSA" and header.get("kid") == old_header.get("kid"), header
    assert claims.get("sandbox_id") == sid, claims
    assert claims.get("sub") == f"spiffe://openshell/sandbox/{sid}", claims
    assert claims.get("iss") == old_claims.get("iss") and claims.get("aud") == old_claims.get(
        "aud"), (claims, old_claims)
    assert claims.get("iat", 0) > old_claims.get("iat", 0), (claims, old_claims)
    assert resp.expires_at_ms == claims.get("exp", 0) * 1000, (resp.expires_at_ms, claims)
    assert len(sig) == 64
    assert new != token

    # The new token is accepted, and the old one stays valid.
    assert call(api, "RefreshSandboxToken", metadata=bearer(new)).token
    assert call(api, "RefreshSandboxToken", metadata=bearer(token)).token

    # IssueSandboxToken is for Kubernetes ServiceAccount callers only.
    code, details = call_code(api, "IssueSandboxToken", metadata=bearer(token))
    assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)

    # A deleted sandbox's token gets no refresh.
    assert api.DeleteSandbox(name="rfr").deleted is True
    api.wait_not_found("rfr", timeout=WAIT)
    code, details = call_code(api, "RefreshSandboxToken", metadata=bearer(new))
    assert code == grpc.StatusCode.NOT_FOUND, (code, details)
