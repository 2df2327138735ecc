"""Compute drivers behind the gateway: the sandbox lifecycle end to end.

Create -> list/get -> backend running -> stop -> start -> delete, against
  * the managed process driver (the gateway's default: it spawns
    build/openshell-driver-process with socket <state>/drivers/process.sock
    and state <state>/drivers/process/),
  * the same program run by the test as an unmanaged endpoint under another
    name, selected by --drivers/--compute-driver-socket or by the TOML
    [openshell.drivers.<name>] table,
and the lifecycle events this produces (openshell.events.v1 Subscribe and
WatchSandbox follow_events).

"Backend running" is READY once the sandbox's supervisor holds its session
(the process driver), or the Ready=False / SupervisorNotConnected condition
the gateway derives from the driver's Ready=True when no supervisor connects
(the fake driver; semantics.md §8). Each sandbox command
ends in `sleep <unique number>`, which is how its process is found in /proc.
"""

import grpc
import pytest

from drivers_fixtures import (  # noqa: F401 - fixtures
    WAIT,
    _drivers_stopper,
    _leaks,
    backend_running,
    db_url,
    env,
    gateway_driver_ready,
    gateway_info,
    managed_driver_pid,
    new_token,
    payload,
    pid_alive,
    procs_with_arg,
    sandbox_command,
    uuid_ok,
)
from drivers_util import wait_no_procs
from test_events import Subscriber
from utils import wait_until, write_toml

pytestmark = pytest.mark.postgres


def phase(pb, name):
    return pb.SandboxPhase.Value("SANDBOX_PHASE_" + name)


def run_lifecycle(env, api, sandboxes_dir, name="life", session=True):
    """The whole lifecycle of one sandbox through the public API; checks the
    driver's side effects under |sandboxes_dir| (<driver state>/sandboxes).
    |session|: the driver hands its supervisors the gateway's endpoint (a
    managed driver does), so the sandbox becomes READY; a driver started
    without --gateway-endpoint only gets to "backend running"."""
    pb = env.pb
    token = new_token()
    env.track(token=token)

    created = api.CreateSandbox(name=name, spec=pb.SandboxSpec(command=sandbox_command(token)))
    sb = created.sandbox
    sid = sb.metadata.id
    env.track(sid=sid)
    assert uuid_ok(sid), sid
    assert sb.metadata.name == name
    assert sb.metadata.workspace == "default"
    assert sb.status.phase == phase(pb, "PROVISIONING")
    assert list(sb.spec.command) == sandbox_command(token)

    assert api.ids() == [sid]
    got = api.GetSandbox(name=name).sandbox
    assert got.metadata.id == sid

    # Backend running: the process driver reports Ready=True; with the
    # sandbox's supervisor holding its session the sandbox is READY.
    w = env.watch(api, id=sid, follow_status=True)
    if session:
        _, snap = w.wait_sandbox(lambda sb: sb.status.phase == phase(pb, "READY"), "READY")
    else:
        _, snap = w.wait_sandbox(backend_running, "backend running")
        assert snap.status.phase == phase(pb, "PROVISIONING"), snap.status
    assert backend_running(snap), snap.status
    assert snap.status.agent_pod, f"driver instance id missing from agent_pod: {snap.status}"

    hello = sandboxes_dir / sid / "workdir" / "hello"
    wait_until(lambda: hello.exists() and hello.read_text() == "hi\n", WAIT, interval=0.05,
               what=f"{hello} written by the sandbox")
    wait_until(lambda: procs_with_arg(token), WAIT, interval=0.05,
               what=f"the sandbox's `sleep {token}` process")

    stopped = api.StopSandbox(name=name).sandbox
    assert stopped.metadata.id == sid
    assert stopped.status.phase == phase(pb, "STOPPED"), stopped.status
    assert api.GetSandbox(name=name).sandbox.status.phase == phase(pb, "STOPPED")
    wait_no_procs(f"sandbox {sid} processes after StopSandbox", tokens=[token])
    assert api.StopSandbox(name=name).sandbox.status.phase == phase(pb, "STOPPED")  # idempotent

    started = api.StartSandbox(name=name).sandbox
    assert started.status.phase == phase(pb, "STARTING"), started.status
    w2 = env.watch(api, id=sid, follow_status=True)
    _, snap = w2.wait_sandbox(
        lambda s: s.status.phase == phase(pb, "STARTING") and backend_running(s),
        "backend running again after StartSandbox (phase STARTING)")
    wait_until(lambda: procs_with_arg(token), WAIT, interval=0.05,
               what=f"`sleep {token}` running again after StartSandbox")
    assert len(procs_with_arg(token)) == 1, procs_with_arg(token)

    deleted = api.DeleteSandbox(name=name)
    assert deleted.deleted is True
    api.wait_not_found(name)
    assert api.ids() == []
    wait_no_procs(f"sandbox {sid} processes after DeleteSandbox", tokens=[token, sid])
    wait_until(lambda: not (sandboxes_dir / sid).exists(), WAIT, interval=0.05,
               what=f"driver sandbox dir {sandboxes_dir / sid} removed")
    return sid, token


# ---------------------------------------------------------------------------
# 1. managed process driver (the default)


@pytest.mark.parametrize("flags", [[], ["--drivers", "process"]], ids=["default", "explicit"])
def test_lifecycle_managed_process_driver(env, flags):
    gw = env.gateway(*flags)
    api = env.api(gw)
    state = gw.workdir / "state"
    sock = state / "drivers" / "process.sock"

    info = gateway_info(api)
    assert info.name == "process"
    assert info.capabilities.driver_name == "process"
    assert info.capabilities.driver_version

    readies = gateway_driver_ready(gw)
    assert len(readies) == 1, f"gateway driver.ready events: {readies}"
    ready = readies[0]
    assert ready.get("name") == "process"
    assert ready.get("driver_name") == "process"
    assert str(ready.get("managed")).lower() in ("true", "1"), ready
    assert ready.get("socket") == str(sock), ready
    assert sock.is_socket()
    driver_pid = managed_driver_pid(gw)
    assert pid_alive(driver_pid)

    sid, token = run_lifecycle(env, api, state / "drivers" / "process" / "sandboxes")

    assert gw.stop() == 0
    assert not pid_alive(driver_pid), "managed driver still running after gateway stop"
    wait_no_procs("sandbox processes after gateway stop", timeout=5,
                  tokens=[token, sid, str(state)], dirs=[state])


# ---------------------------------------------------------------------------
# 2. the process driver as an unmanaged endpoint named "mydrv"


@pytest.mark.parametrize("how", ["flags", "toml"])
def test_lifecycle_remote_endpoint(env, how):
    drv, state = env.process_driver(name="mydrv")
    if how == "flags":
        gw = env.gateway("--drivers", "mydrv", "--compute-driver-socket", drv.socket)
    else:
        cfg = write_toml(env.tmp_path / "gateway.toml", {
            "openshell.gateway": {"compute_drivers": ["mydrv"]},
            "openshell.drivers.mydrv": {"socket_path": str(drv.socket)},
        })
        gw = env.gateway("--config", cfg)
    api = env.api(gw)

    info = gateway_info(api)
    assert info.name == "mydrv"
    assert info.capabilities.driver_name == "mydrv"
    assert info.capabilities.driver_version
    readies = gateway_driver_ready(gw)
    assert len(readies) == 1, f"gateway driver.ready events: {readies}"
    ready = readies[0]
    assert ready.get("name") == "mydrv", ready
    assert ready.get("driver_name") == "mydrv", ready
    assert str(ready.get("managed")).lower() in ("false", "0"), ready
    assert ready.get("socket") == str(drv.socket), ready
    assert gw.find_event("driver.spawned") is None, "an unmanaged driver was spawned"

    sid, token = run_lifecycle(env, api, state / "sandboxes", session=False)

    assert gw.stop() == 0
    # The endpoint is operator-owned: the gateway leaves it running.
    assert drv.running, "the gateway stopped an unmanaged driver"
    assert not procs_with_arg(token)


# ---------------------------------------------------------------------------
# 7. lifecycle events


def started_event(ev):
    return (ev.WhichOneof("payload") == "event" and ev.event.source == "process"
            and ev.event.reason == "Started")


def create_and_wait_running(env, api, name):
    token = new_token()
    env.track(token=token)
    sid = api.CreateSandbox(name=name, spec=env.pb.SandboxSpec(
        command=sandbox_command(token))).sandbox.metadata.id
    env.track(sid=sid)
    w = env.watch(api, id=sid, follow_status=True)
    w.wait_sandbox(backend_running, "backend running")
    w.close()
    return sid


def test_lifecycle_events_subscribe(env, stubs):
    """openshell.events.v1 Subscribe sees the whole lifecycle: created, the
    phase changes of stop/start/delete, the driver's platform events
    (kind sandbox.platform_event) and deleted, in that order."""
    pb = env.pb
    gw = env.gateway()
    api = env.api(gw)
    wait_until(lambda: gw.find_event("events.ready"), 10, what="events.ready")
    sub = Subscriber(stubs, gw, name="drv-events")
    try:
        sub.wait_caught_up()
        sid = create_and_wait_running(env, api, "evts")

        def mine():
            return [e for e in sub.snapshot() if e.sandbox_id == sid]

        def platform(reason):
            return [payload(e) for e in mine() if e.kind == "sandbox.platform_event"
                    and payload(e).get("source") == "process"
                    and payload(e).get("reason") == reason]

        sub.wait(lambda: platform("Started"), WAIT, "platform event Started after create")
        api.StopSandbox(name="evts")
        api.StartSandbox(name="evts")
        sub.wait(lambda: len(platform("Started")) >= 2, WAIT,
                 "a second platform event Started after StartSandbox")
        assert api.DeleteSandbox(name="evts").deleted is True
        api.wait_not_found("evts")
        sub.wait(lambda: any(e.kind == "sandbox.deleted" for e in mine()), WAIT,
                 "sandbox.deleted")

        evs = mine()
        kinds = [e.kind for e in evs]
        assert kinds[0] == "sandbox.created", kinds
        assert kinds[-1] == "sandbox.deleted", kinds
        changes = [e for e in evs if e.kind not in (
            "sandbox.created", "sandbox.deleted", "sandbox.platform_event")]
        new_phases = [e.new_phase for e in changes]
        for want in ("STOPPING", "STOPPED", "STARTING", "DELETING"):
            assert phase(pb, want) in new_phases, (want, [(e.kind, e.new_phase) for e in evs])
        plat = [payload(e) for e in evs if e.kind == "sandbox.platform_event"]
        assert all(set(p) >= {"source", "type", "reason", "message"} for p in plat), plat
        seqs = [e.sequence for e in evs]
        assert seqs == sorted(seqs)
    finally:
        sub.close()


def test_watch_sandbox_platform_events(env):
    """WatchSandbox(follow_events) streams the driver's platform events live,
    and event_tail replays the most recent ones (semantics.md §10)."""
    gw = env.gateway()
    api = env.api(gw)
    sid = create_and_wait_running(env, api, "wevts")
    api.StopSandbox(name="wevts")

    live = env.watch(api, id=sid, follow_events=True)
    live.wait_for(lambda ev: ev.WhichOneof("payload") == "sandbox", "initial snapshot")
    api.StartSandbox(name="wevts")
    _, ev = live.wait_for(started_event, "a live PlatformEvent process/Started after "
                                         "StartSandbox")
    assert ev.event.timestamp_ms > 0
    assert ev.event.type == "Normal"

    replay = env.watch(api, id=sid, follow_events=True, event_tail=50)
    replay.wait_for(lambda e: len([x for x in replay.items if started_event(x)]) >= 2,
                    "two Started events (create, start) replayed with event_tail")
    events = [x.event for x in replay.items if x.WhichOneof("payload") == "event"]
    # The driver stamps its events in the order it sends them: the replay
    # keeps that order.
    stamps = [e.timestamp_ms for e in events]
    assert stamps == sorted(stamps), [(e.reason, e.timestamp_ms, e.message) for e in events]
    assert replay.items[0].WhichOneof("payload") == "sandbox"


def test_watch_opened_at_create_sees_started(env):
    """A watch opened right after CreateSandbox returns, while the driver is
    starting the sandbox, gets the create's Started event exactly once:
    replayed (event_tail) if it came before the subscription, live if it
    came after, never lost in between."""
    gw = env.gateway()
    api = env.api(gw)
    token = new_token()
    env.track(token=token)
    sid = api.CreateSandbox(name="race", spec=env.pb.SandboxSpec(
        command=sandbox_command(token))).sandbox.metadata.id
    env.track(sid=sid)
    w = env.watch(api, id=sid, follow_status=True, follow_events=True, event_tail=50)
    w.wait_sandbox(backend_running, "backend running")
    w.wait_for(started_event, "the create's PlatformEvent process/Started")
    assert len([x for x in w.items if started_event(x)]) == 1, w.items



def test_delete_workspace_asks_the_driver(env):
    """DeleteWorkspace calls the driver's DeleteWorkspace once the workspace
    is TERMINATING and empty, before removing it; while the driver is away
    the workspace stays TERMINATING and the call is UNAVAILABLE."""
    from drivers_util import records_of

    pb = env.pb
    drv = env.fake_driver(name="mydrv")
    gw = env.gateway("--drivers", "mydrv", "--compute-driver-socket", drv.socket)
    api = env.api(gw)
    api.CreateWorkspace(name="team")
    api.CreateSandbox(workspace="team", name="box",
                      spec=pb.SandboxSpec(command=["/bin/sh", "-c", "sleep 600"]))

    code, _ = api.error("DeleteWorkspace", name="team")
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert records_of(drv.record, "DeleteWorkspace") == [], "asked before the workspace was empty"

    assert api.DeleteSandbox(workspace="team", name="box").deleted is True
    wait_until(lambda: api.ids(workspace="team") == [], WAIT, interval=0.05,
               what="the sandbox record removed after the driver's deletion")
    drv.kill()
    code, details = api.error("DeleteWorkspace", name="team")
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    terminating = 2  # openshell.datamodel.v1.WorkspacePhase TERMINATING
    assert api.GetWorkspace(name="team").workspace.status.phase == terminating

    drv.start()

    def deleted():
        try:
            return api.DeleteWorkspace(name="team").deleted
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
            return False

    assert wait_until(deleted, WAIT, interval=0.25, what="DeleteWorkspace once the driver is back")
    reqs = [r["request"] for r in records_of(drv.record, "DeleteWorkspace")]
    assert reqs == [{"workspace": "team"}], reqs
    assert api.error("GetWorkspace", name="team")[0] == grpc.StatusCode.NOT_FOUND
