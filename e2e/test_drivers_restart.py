"""Gateway restarts with sandboxes on the managed process driver: the
records survive, the sandboxes run again (exactly once each), and a record
whose driver sandbox vanished meanwhile turns ERROR instead of being
silently re-created or left PROVISIONING.

Each sandbox appends a line to /sandbox/hello when its command starts, so
two lines prove that it was started again after the restart."""

import shutil

import grpc
import pytest

from drivers_fixtures import (  # noqa: F401 - fixtures
    WAIT,
    _drivers_stopper,
    _leaks,
    backend_running,
    db_url,
    env,
    managed_driver_pid,
    new_token,
    pid_alive,
    procs_with_arg,
    sandbox_command,
)
from drivers_util import Compute, wait_no_procs
from utils import wait_until

pytestmark = pytest.mark.postgres


def phase(pb, name):
    return pb.SandboxPhase.Value("SANDBOX_PHASE_" + name)


def start_gateway(env, state, name):
    gw = env.gateway("--state-dir", state, name=name)
    return gw, env.api(gw)


def create_running(env, api, sandboxes, names):
    """Creates |names| and waits until each runs (backend running, hello
    written once, its sleep process up). Returns {name: (id, token)}."""
    pb = env.pb
    out = {}
    for n in names:
        token = new_token()
        env.track(token=token)
        sb = api.CreateSandbox(name=n, spec=pb.SandboxSpec(
            command=sandbox_command(token, first="echo hi >> /sandbox/hello"))).sandbox
        env.track(sid=sb.metadata.id)
        out[n] = (sb.metadata.id, token)
    for n, (sid, token) in out.items():
        wait_until(lambda: backend_running(api.GetSandbox(name=n).sandbox), WAIT, interval=0.1,
                   what=f"{n}: backend running")
        hello = sandboxes / sid / "workdir" / "hello"
        wait_until(lambda: hello.exists() and hello.read_text() == "hi\n", WAIT, interval=0.05,
                   what=f"{n}: {hello} written once")
        wait_until(lambda: len(procs_with_arg(token)) == 1, WAIT, interval=0.05,
                   what=f"{n}: one `sleep {token}` process")
    return out


def stop_and_check(gw, boxes, state):
    driver_pid = managed_driver_pid(gw)
    assert gw.stop() == 0
    assert not pid_alive(driver_pid), "managed driver survived the gateway"
    tokens = [token for _, token in boxes.values()]
    wait_no_procs("sandboxes with the gateway stopped", timeout=5, tokens=tokens + [str(state)])


@pytest.mark.slow
def test_restart_keeps_sandboxes_running(env):
    pb = env.pb
    state = env.tmp_path / "state"
    state.mkdir()
    sandboxes = state / "drivers" / "process" / "sandboxes"
    gw1, api1 = start_gateway(env, state, "gw-a")
    boxes = create_running(env, api1, sandboxes, ["r1", "r2", "r3"])
    stop_and_check(gw1, boxes, state)

    gw2, api2 = start_gateway(env, state, "gw-b")
    ids = sorted(sid for sid, _ in boxes.values())
    assert api2.ids() == ids
    for n, (sid, token) in boxes.items():
        hello = sandboxes / sid / "workdir" / "hello"
        wait_until(lambda: hello.exists() and hello.read_text() == "hi\nhi\n", WAIT,
                   interval=0.05, what=f"{n}: started again after the restart")
        wait_until(lambda: api2.GetSandbox(name=n).sandbox.status.phase == phase(pb, "READY"),
                   WAIT, interval=0.1, what=f"{n}: READY again after the restart")
        sb = api2.GetSandbox(name=n).sandbox
        assert sb.metadata.id == sid
        assert sb.status.phase == phase(pb, "READY"), sb.status
        # hello is written before `sleep` starts: wait for it, then make sure
        # there is exactly one (no copy left over from before the restart).
        wait_until(lambda: procs_with_arg(token), WAIT, interval=0.05,
                   what=f"{n}: `sleep {token}` running again")
        assert len(procs_with_arg(token)) == 1, (n, procs_with_arg(token))

    with Compute(state / "drivers" / "process.sock") as c:
        assert c.list_ids() == ids
    assert sorted(p.name for p in sandboxes.iterdir()) == ids
    assert api2.ids() == ids
    assert gw2.find_event("compute.reconciled") is not None, "no compute.reconciled log event"


@pytest.mark.slow
def test_restart_with_vanished_sandbox(env):
    pb = env.pb
    state = env.tmp_path / "state"
    state.mkdir()
    sandboxes = state / "drivers" / "process" / "sandboxes"
    gw1, api1 = start_gateway(env, state, "gw-a")
    boxes = create_running(env, api1, sandboxes, ["keep", "lost"])
    stop_and_check(gw1, boxes, state)
    lost_id = boxes["lost"][0]
    shutil.rmtree(sandboxes / lost_id)

    gw2, api2 = start_gateway(env, state, "gw-b")
    keep_id, keep_token = boxes["keep"]
    hello = sandboxes / keep_id / "workdir" / "hello"
    wait_until(lambda: hello.exists() and hello.read_text() == "hi\nhi\n", WAIT, interval=0.05,
               what="keep: started again after the restart")

    def errored():
        sb = api2.GetSandbox(name="lost").sandbox
        return sb if sb.status.phase == phase(pb, "ERROR") else None

    lost = wait_until(errored, WAIT, interval=0.1, what="lost: phase ERROR after the restart")
    assert any(c.reason for c in lost.status.conditions), \
        f"ERROR without a reason: {lost.status}"
    assert not (sandboxes / lost_id).exists(), "the vanished sandbox was re-created"
    with Compute(state / "drivers" / "process.sock") as c:
        assert c.list_ids() == [keep_id]
    wait_until(lambda: procs_with_arg(keep_token), WAIT, interval=0.05,
               what="keep: `sleep` running again")
    assert len(procs_with_arg(keep_token)) == 1
    assert not procs_with_arg(boxes["lost"][1])

    # Deleting it: the driver has nothing (deleted=false), the row goes.
    assert api2.DeleteSandbox(name="lost").deleted is False
    code, _ = api2.error("GetSandbox", name="lost")
    assert code == grpc.StatusCode.NOT_FOUND
    assert api2.ids() == [keep_id]


def test_reconcile_deletes_only_owned_orphans(env):
    """Platform objects without a record: the gateway deletes one that
    carries its ownership label for its own id, and only reports one that
    does not (an operator's, or another system's)."""
    import uuid

    drv, _state = env.process_driver(name="mydrv")
    owned, foreign = str(uuid.uuid4()), str(uuid.uuid4())
    with Compute(drv.socket) as c:
        cpb = c.pb
        for sid, labels in ((owned, {"openshell.io/sandbox-id": owned}),
                            (foreign, {"team": "ops"})):
            env.track(sid=sid)
            sb = cpb.DriverSandbox(id=sid, name="n" + sid[:6], workspace="default")
            sb.spec.command.extend(["/bin/sh", "-c", "sleep 600"])
            sb.spec.template.image = "host"
            sb.spec.template.labels.update(labels)
            c.CreateSandbox(sandbox=sb)
        assert c.list_ids() == sorted([owned, foreign])

        gw = env.gateway("--drivers", "mydrv", "--compute-driver-socket", drv.socket)
        wait_until(lambda: c.list_ids() == [foreign], WAIT, interval=0.1,
                   what="the owned orphan deleted by the gateway's reconciliation")
    api = env.api(gw)
    assert api.ids() == [], "reconciliation must not invent records"
    reported = [e for e in gw.events("compute.unowned_sandbox") if e.get("sandbox_id") == foreign]
    assert reported, "the foreign object was not reported"
    deleted = [e for e in gw.events("compute.orphan") if e.get("sandbox_id") == owned]
    assert deleted, "the owned orphan's deletion was not logged"
    with Compute(drv.socket) as c:
        c.DeleteSandbox(sandbox_id=foreign)  # the operator's to remove


def test_gateway_managed_lifecycle_restart(env):
    """A driver advertising gateway_manages_lifecycle (Docker/Podman/VM
    style) leaves restarts to the gateway: a graceful shutdown stops the
    running sandboxes (their records keep meaning to run), and the next
    gateway starts exactly those again; an explicitly stopped one stays
    stopped."""
    from drivers_util import records_of

    pb = env.pb
    drv = env.fake_driver(name="mydrv", extra=["--manages-lifecycle"])
    args = ("--drivers", "mydrv", "--compute-driver-socket", drv.socket)
    gw1 = env.gateway(*args, name="gw-a")
    api1 = env.api(gw1)
    cmd = pb.SandboxSpec(command=["/bin/sh", "-c", "sleep 600"])
    run = api1.CreateSandbox(name="run", spec=cmd).sandbox.metadata.id
    held = api1.CreateSandbox(name="held", spec=cmd).sandbox.metadata.id
    wait_until(lambda: backend_running(api1.GetSandbox(name="run").sandbox), WAIT,
               interval=0.05, what="run: backend running")
    assert api1.StopSandbox(name="held").sandbox.status.phase == \
        pb.SandboxPhase.Value("SANDBOX_PHASE_STOPPED")

    def stops():
        return [r["request"].get("sandbox_id") for r in records_of(drv.record, "StopSandbox")]

    assert stops() == [held]
    gw1.stop()
    assert stops() == [held, run], "the shutdown must stop exactly the running sandbox"

    gw2 = env.gateway(*args, name="gw-b")
    api2 = env.api(gw2)

    def starts():
        return [r["request"].get("sandbox_id") for r in records_of(drv.record, "StartSandbox")]

    wait_until(lambda: starts() == [run], WAIT, interval=0.05,
               what="the next gateway starts the running sandbox again")
    wait_until(lambda: backend_running(api2.GetSandbox(name="run").sandbox), WAIT,
               interval=0.05, what="run: backend running after the restart")
    assert api2.GetSandbox(name="run").sandbox.status.phase == \
        pb.SandboxPhase.Value("SANDBOX_PHASE_PROVISIONING")
    assert api2.GetSandbox(name="held").sandbox.status.phase == \
        pb.SandboxPhase.Value("SANDBOX_PHASE_STOPPED")
    assert starts() == [run], "an explicitly stopped sandbox must stay stopped"
