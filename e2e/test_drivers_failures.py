"""Failure paths between the gateway, its compute driver and PostgreSQL:
a driver that is down, slow, or killed mid-create, and a database that is
down. The rule every test checks at the end: the gateway's records and the
driver's sandboxes agree (nothing half-created stays behind)."""

import os
import shutil
import signal
import tempfile
import threading
import time

import grpc
import pytest

from drivers_fixtures import (  # noqa: F401 - fixtures
    WAIT,
    _drivers_stopper,
    _leaks,
    db_url,
    env,
    gateway_driver_ready,
    managed_driver_pid,
    new_token,
    pid_alive,
    procs_with_arg,
    sandbox_command,
)
from drivers_util import Compute, records_of
from utils import PG_BIN, PortLock, Postgres, wait_until

pytestmark = pytest.mark.postgres

FAILED_CREATE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
# Records and driver agree once the restarted driver's watch opens (the
# reconcile on reconnect deletes owned orphans); 30 s is margin for a loaded
# machine, not an expected wait.
SETTLE = 30.0


def spec(pb, token=None, cmd=None):
    return pb.SandboxSpec(command=cmd or sandbox_command(token, first="true"))


# ---------------------------------------------------------------------------
# remote driver down, slow


def test_create_with_driver_down(env):
    pb = env.pb
    drv = env.fake_driver(name="mydrv")
    gw = env.gateway("--drivers", "mydrv", "--compute-driver-socket", drv.socket)
    api = env.api(gw)
    drv.kill()

    code, details = api.error("CreateSandbox", name="down",
                              spec=spec(pb, cmd=["/bin/sh", "-c", "sleep 600"]))
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    assert api.ids() == []
    assert gw.running
    assert records_of(drv.record, "CreateSandbox") == []


def test_remote_driver_restart_is_picked_up(env):
    """An operator restarts its driver on the same socket: creates work
    again without restarting the gateway."""
    pb = env.pb
    drv = env.fake_driver(name="mydrv")
    gw = env.gateway("--drivers", "mydrv", "--compute-driver-socket", drv.socket)
    api = env.api(gw)
    drv.kill()
    assert api.error("CreateSandbox", name="first", spec=spec(
        pb, cmd=["/bin/sh", "-c", "sleep 600"]))[0] == grpc.StatusCode.UNAVAILABLE
    drv.start()

    def create_ok():
        try:
            return api.CreateSandbox(name="again", spec=spec(
                pb, cmd=["/bin/sh", "-c", "sleep 600"])).sandbox
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
            return None

    sb = wait_until(create_ok, WAIT, interval=0.25, what="CreateSandbox after driver restart")
    with Compute(drv.socket) as c:
        assert c.list_ids() == [sb.metadata.id]
    assert api.ids() == [sb.metadata.id]


def test_slow_driver_create_deadline(env):
    pb = env.pb
    drv = env.fake_driver(name="mydrv", extra=["--create-delay-ms", "30000"])
    gw = env.gateway("--drivers", "mydrv", "--compute-driver-socket", drv.socket)
    api = env.api(gw)

    t0 = time.monotonic()
    code, details = api.error("CreateSandbox", name="slow", timeout=2.0,
                              spec=spec(pb, cmd=["/bin/sh", "-c", "sleep 600"]))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
    assert time.monotonic() - t0 < 5.0

    # The gateway's call to the driver carried a deadline of its own.
    recs = wait_until(lambda: records_of(drv.record, "CreateSandbox"), 5,
                      what="CreateSandbox reaching the driver")
    assert len(recs) == 1
    assert recs[0]["time_remaining"] is not None, "driver call without a deadline"

    # Eventually the record and the driver agree: either both have the
    # sandbox or neither does.
    c = Compute(drv.socket)
    try:
        def agree():
            return api.ids() == c.list_ids()
        wait_until(agree, 40, interval=0.2, what="records == driver sandboxes")
        assert gw.running
    finally:
        c.close()


@pytest.mark.parametrize("driver_code,want", [
    ("FAILED_PRECONDITION", grpc.StatusCode.FAILED_PRECONDITION),
    ("ALREADY_EXISTS", grpc.StatusCode.ALREADY_EXISTS),
    ("RESOURCE_EXHAUSTED", grpc.StatusCode.INTERNAL),
    ("INTERNAL", grpc.StatusCode.INTERNAL),
])
def test_driver_create_error_removes_record(env, driver_code, want):
    """compute-v1.md: on a CreateSandbox error the row is deleted;
    ALREADY_EXISTS and FAILED_PRECONDITION pass through, anything else
    becomes INTERNAL."""
    pb = env.pb
    drv = env.fake_driver(name="mydrv", extra=["--fail-create", driver_code])
    gw = env.gateway("--drivers", "mydrv", "--compute-driver-socket", drv.socket)
    api = env.api(gw)
    code, details = api.error("CreateSandbox", name="refused",
                              spec=spec(pb, cmd=["/bin/sh", "-c", "sleep 600"]))
    assert code == want, (code, details)
    assert len(records_of(drv.record, "CreateSandbox")) == 1
    assert api.ids() == []
    code, _ = api.error("GetSandbox", name="refused")
    assert code == grpc.StatusCode.NOT_FOUND


def test_driver_crash_on_create(env):
    pb = env.pb
    drv = env.fake_driver(name="mydrv", extra=["--crash-on-create"])
    gw = env.gateway("--drivers", "mydrv", "--compute-driver-socket", drv.socket)
    api = env.api(gw)
    code, details = api.error("CreateSandbox", name="crash",
                              spec=spec(pb, cmd=["/bin/sh", "-c", "sleep 600"]))
    assert code in FAILED_CREATE_CODES, (code, details)
    assert drv.proc.wait(5) == 3  # the fake really died in CreateSandbox
    assert len(records_of(drv.record, "CreateSandbox")) == 1
    assert api.ids() == []
    assert gw.running
    api.Health()


# ---------------------------------------------------------------------------
# managed driver killed mid-create


@pytest.mark.slow
def test_managed_driver_killed_mid_create(env):
    pb = env.pb
    gw = env.gateway()
    api = env.api(gw)
    state = gw.workdir / "state"
    sandboxes = state / "drivers" / "process" / "sandboxes"
    sock = state / "drivers" / "process.sock"
    old_pid = managed_driver_pid(gw)
    readies_before = len(gateway_driver_ready(gw))
    assert readies_before == 1

    prefix = new_token()  # "600.NNNNNNNNN"; each sandbox appends 3 digits
    env.track(token=prefix)
    lock = threading.Lock()
    results = []  # (name, token, code, sandbox id or details, t)
    stop = threading.Event()
    counter = iter(range(1000))

    def worker():
        while not stop.is_set():
            with lock:
                i = next(counter)
            if i >= 900:
                return
            token = f"{prefix}{i:03d}"
            name = f"k{i}"
            try:
                sb = api.CreateSandbox(name=name, spec=spec(pb, token), timeout=30).sandbox
                out = (name, token, grpc.StatusCode.OK, sb.metadata.id, time.monotonic())
            except grpc.RpcError as e:
                out = (name, token, e.code(), e.details(), time.monotonic())
            with lock:
                results.append(out)
            if out[2] != grpc.StatusCode.OK:
                stop.wait(0.02)  # pacing while the driver is down, not a check

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        # Kill once creates are flowing.
        wait_until(lambda: sum(r[2] == grpc.StatusCode.OK for r in results) >= 3, WAIT,
                   what="three successful creates before the kill")
        os.kill(old_pid, signal.SIGKILL)
        wait_until(lambda: len(gateway_driver_ready(gw)) > readies_before, WAIT,
                   what="driver.ready again after the managed driver was killed")
        new_pid = managed_driver_pid(gw, previous=old_pid)
        assert new_pid != old_pid and pid_alive(new_pid)
        # Some creates after the restart, then stop.
        ready_seen = time.monotonic()
        wait_until(lambda: sum(r[2] == grpc.StatusCode.OK and r[4] > ready_seen
                               for r in results) >= 2, WAIT,
                   what="successful creates after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join(40)
    assert all(not t.is_alive() for t in threads), "a create did not return within 40 s"

    assert gw.running
    assert gw.find_event("driver.down") is not None, "no driver.down log event"
    failed = [r for r in results if r[2] != grpc.StatusCode.OK]
    assert failed, "no create failed although the driver was killed during creates"
    bad = [r for r in failed if r[2] not in FAILED_CREATE_CODES]
    assert not bad, f"creates failed with unexpected codes: {bad}"
    ok_ids = {r[3] for r in results if r[2] == grpc.StatusCode.OK}
    failed_names = {r[0] for r in failed}

    # Settling: records == live driver sandboxes == driver state entries.
    c = Compute(sock)
    try:
        def settled():
            recs = set(api.ids())
            live = set(c.list_ids())
            dirs = {p.name for p in sandboxes.iterdir()} if sandboxes.exists() else set()
            return recs == live == dirs and (recs, live, dirs)
        try:
            wait_until(settled, SETTLE, interval=0.25, what="records, driver and state agree")
        except TimeoutError:
            recs = set(api.ids())
            live = set(c.list_ids())
            dirs = {p.name for p in sandboxes.iterdir()} if sandboxes.exists() else set()
            pytest.fail(f"not settled: records-only {sorted(recs - live)}, driver-only "
                        f"{sorted(live - recs)}, dirs-only {sorted(dirs - recs)}, "
                        f"records-without-dir {sorted(recs - dirs)}")
        recs = {s.metadata.name: s for s in api.ListSandboxes(limit=1000).sandboxes}
    finally:
        c.close()
    # Every successful create kept its record; no failed create left one.
    assert ok_ids <= {s.metadata.id for s in recs.values()}, "a successful create lost its record"
    assert not failed_names & set(recs), f"failed creates left records: {failed_names & set(recs)}"
    # And no sandbox runs twice (one from before the kill, one restarted).
    for r in results:
        if r[2] == grpc.StatusCode.OK:
            n = len(procs_with_arg(r[1]))
            assert n <= 1, f"sandbox {r[0]} runs {n} times: {procs_with_arg(r[1])}"


# ---------------------------------------------------------------------------
# database down


@pytest.fixture
def own_pg():
    """A PostgreSQL cluster of this test's own (the test stops it)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}")
    basedir = tempfile.mkdtemp(prefix="openshell-e2e-drvpg-")
    lock = PortLock()
    pg = Postgres(basedir, lock.port)
    try:
        pg.initdb()
        pg.start()
        pg.sql("CREATE DATABASE drv")
        yield pg
    finally:
        pg.stop()
        lock.release()
        print(f"\n===== dedicated postgres log =====\n{pg.log_text()[-5000:]}")
        shutil.rmtree(basedir, ignore_errors=True)


@pytest.mark.slow
def test_create_with_database_down(env, own_pg):
    pb = env.pb
    url = f"postgresql://{own_pg.user}@{own_pg.host}:{own_pg.port}/drv"
    gw = env.gateway(db_url=url)
    api = env.api(gw)
    sock = gw.workdir / "state" / "drivers" / "process.sock"
    token = new_token()
    env.track(token=token)
    before = api.CreateSandbox(name="before", spec=spec(pb, token)).sandbox.metadata.id
    env.track(sid=before)

    own_pg.stop()
    token2 = new_token()
    env.track(token=token2)
    code, details = api.error("CreateSandbox", name="during", spec=spec(pb, token2))
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    with Compute(sock) as c:
        assert c.list_ids() == [before], "the driver got a sandbox the store never recorded"
    assert not procs_with_arg(token2)
    assert gw.running
