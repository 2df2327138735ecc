"""Fixtures and gateway-side helpers for e2e/test_drivers*.py.

`env` bundles what a driver test needs, set up in an order whose teardown
is safe: the test database first (dropped last), then the leak check, then
the remote drivers the test starts itself, then the gateways (stopped
first). At teardown, after every gateway and driver is stopped, no process
may remain that belongs to the test's sandboxes (matched by the unique
`sleep` argument each sandbox command carries, by sandbox id, or by the
test's directories); survivors are killed by PID and fail the test.
"""

import json
import random
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from conftest import request_failed
from drivers_util import (
    DriverProcess,
    DriverStartError,
    kill_pids,
    procs_matching,
    rmtree,
    short_tmpdir,
)
from utils import h2c_args, wait_until

RPC_TIMEOUT = 15.0
WAIT = 20.0  # bound for asynchronous outcomes (backend running, deletion, ...)
PROCESS_DRIVER_EXE = "openshell-driver-process"


# ---------------------------------------------------------------------------
# sandbox helpers


def backend_running(sb):
    """The driver reports the backend ready (semantics.md §8): with a live
    supervisor session the sandbox is READY (Ready=True / DependenciesReady,
    the process driver's real supervisor); without one (e.g. the fake
    driver, which runs no supervisor) Ready=False / SupervisorNotConnected."""
    return any(c.type == "Ready" and (
        (c.status.lower() == "false" and c.reason == "SupervisorNotConnected")
        or (c.status.lower() == "true" and c.reason == "DependenciesReady"))
        for c in sb.status.conditions)


def new_token():
    """A unique argument for `sleep` (coreutils accepts fractions), so that
    the sandbox's process can be found in /proc without guessing."""
    return "600.%09d" % random.randrange(10 ** 8, 10 ** 9)


def sandbox_command(token, first="echo hi > /sandbox/hello"):
    return ["/bin/sh", "-c", f"{first}; sleep {token}"]


def procs_with_arg(arg):
    """Processes having |arg| as one whole argument."""
    return [p for p in procs_matching(tokens=[arg]) if arg in p.argv]


def managed_driver_pid(gw, previous=None, timeout=WAIT):
    """PID of the gateway's managed driver: from the newest driver.spawned
    log event, else the gateway's child running openshell-driver-process.
    With |previous|, waits for a different one (a restart)."""
    def find():
        evs = [e for e in gw.events("driver.spawned") if e.get("pid") is not None]
        if evs:
            pid = int(evs[-1]["pid"])
        else:
            from drivers_util import all_procs

            kids = [p for p in all_procs() if p.ppid == gw.pid and p.argv
                    and p.argv[0].endswith(PROCESS_DRIVER_EXE)]
            pid = kids[-1].pid if kids else None
        return pid if pid is not None and pid != previous else None

    return wait_until(find, timeout, interval=0.05, what="managed driver pid")


def gateway_driver_ready(gw):
    """The gateway's own driver.ready log events (a managed driver's output
    goes to the same log and has a driver.ready line of its own; only the
    gateway's carries "managed")."""
    return [e for e in gw.events("driver.ready") if "managed" in e]


def pid_alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ---------------------------------------------------------------------------
# gateway API helpers


class Api:
    """api.CreateSandbox(name="x", ...) builds the request from keyword
    arguments and calls the RPC with a bounded timeout (timeout=...
    overrides it)."""

    def __init__(self, stubs, ch):
        self.pb = stubs.openshell_pb2
        self.stub = stubs.openshell_pb2_grpc.OpenShellStub(ch)

    def __getattr__(self, method):
        if method.startswith("_"):
            raise AttributeError(method)
        req_type = getattr(self.pb, method + "Request")
        rpc = getattr(self.stub, method)

        def call(timeout=RPC_TIMEOUT, **kw):
            return rpc(req_type(**kw), timeout=timeout)

        return call

    def ids(self, **kw):
        return sorted(s.metadata.id for s in self.ListSandboxes(limit=1000, **kw).sandboxes)

    def error(self, method, **kw):
        """(code, details) of a call that must fail."""
        try:
            resp = getattr(self, method)(**kw)
        except grpc.RpcError as e:
            return e.code(), e.details()
        pytest.fail(f"{method} succeeded: {resp}")

    def wait_not_found(self, name, timeout=WAIT):
        def gone():
            try:
                self.GetSandbox(name=name)
                return False
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                return True
        wait_until(gone, timeout, interval=0.1, what=f"GetSandbox({name}) NOT_FOUND")


class SandboxWatch:
    """One WatchSandbox stream read by a background thread: items holds the
    responses in arrival order; wait_for() scans them."""

    def __init__(self, api, **req):
        self.call = api.stub.WatchSandbox(api.pb.WatchSandboxRequest(**req), timeout=300)
        self.items = []
        self.end = None
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        try:
            for ev in self.call:
                with self.cond:
                    self.items.append(ev)
                    self.cond.notify_all()
            end = "END"
        except grpc.RpcError as e:
            end = e
        with self.cond:
            self.end = end
            self.cond.notify_all()

    def wait_for(self, pred, what, start=0, timeout=WAIT):
        """(index, item) of the first item at or after |start| for which
        pred(item) holds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(start, len(self.items)):
                    if pred(self.items[i]):
                        return i, self.items[i]
                if self.end is not None:
                    raise AssertionError(f"WatchSandbox ended ({self.end}) before {what}; "
                                         f"last items: {self.items[-3:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"WatchSandbox: no {what} within {timeout}s; "
                                         f"last items: {self.items[-3:]}")
                self.cond.wait(min(left, 0.2))

    def wait_sandbox(self, pred, what, start=0, timeout=WAIT):
        i, item = self.wait_for(
            lambda ev: ev.WhichOneof("payload") == "sandbox" and pred(ev.sandbox), what,
            start, timeout)
        return i, item.sandbox

    def close(self):
        self.call.cancel()


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture
def db_url(db, postgres):
    return f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/{db}"


class Env:
    def __init__(self, request, stubs, db_url, gateway_factory, tmp_path):
        self.request = request
        self.stubs = stubs
        self.pb = stubs.openshell_pb2
        self.db_url = db_url
        self.gateway_factory = gateway_factory
        self.tmp_path = tmp_path
        self.drivers = []
        self.dirs = []
        self.tokens = []
        self.ids = []
        self.channels = []
        self.watches = []

    # -- gateways -------------------------------------------------------------

    def gateway(self, *extra, name=None, db_url=None, **kw):
        """A plaintext gateway on this test's database (or |db_url|)."""
        args = h2c_args("--db-url", db_url or self.db_url, *extra)
        return self.gateway_factory(args, name=name, **kw)

    def api(self, gw):
        ch = gw.channel()
        self.channels.append(ch)
        return Api(self.stubs, ch)

    def watch(self, api, **req):
        w = SandboxWatch(api, **req)
        self.watches.append(w)
        return w

    # -- drivers the test runs itself ------------------------------------------

    def short_dir(self, prefix="osdrv-"):
        d = short_tmpdir(prefix)
        self.dirs.append(d)
        return d

    def process_driver(self, name="mydrv"):
        """The in-tree process driver, run by the test as an unmanaged
        endpoint. Returns (DriverProcess, its state dir)."""
        d = self.short_dir()
        state = d / "state"
        state.mkdir()
        drv = DriverProcess.process(d / "driver.sock", state, name=name,
                                    log_path=d / "driver.log")
        self._start(drv)
        return drv, state

    def fake_driver(self, name="mydrv", record=True, extra=()):
        """e2e/fake_driver.py; .record is its request log (or None)."""
        d = self.short_dir("osfake-")
        rec = d / "requests.jsonl" if record else None
        drv = DriverProcess.fake(d / "driver.sock", name=name, log_path=d / "driver.log",
                                 stubs_dir=self.stubs.outdir, record=rec, extra=extra)
        drv.record = rec
        self._start(drv)
        return drv

    def _start(self, drv):
        self.drivers.append(drv)
        try:
            drv.start()
        except DriverStartError as e:
            pytest.fail(str(e))

    # -- leak tracking ---------------------------------------------------------

    def track(self, sid=None, token=None):
        if sid:
            self.ids.append(sid)
        if token:
            self.tokens.append(token)

    def leftovers(self):
        return procs_matching(tokens=self.tokens + self.ids
                              + [str(d) for d in self.dirs] + [str(self.tmp_path)],
                              dirs=self.dirs + [self.tmp_path])

    # -- teardown ---------------------------------------------------------------

    def close_clients(self):
        for w in self.watches:
            w.close()
        for ch in self.channels:
            ch.close()

    def stop_drivers(self):
        for drv in self.drivers:
            code = drv.stop()
            print(f"\n===== {drv.name} driver log (pid {drv.pid}, exit {code}) =====\n"
                  f"{drv.log_text()}")


@pytest.fixture
def _leaks(request, tmp_path):
    """Runs the process leak check after everything set up later is gone."""
    holder = {}
    yield holder
    env = holder.get("env")
    if env is None:
        return
    left = env.leftovers()
    kill_pids(left)
    for d in env.dirs:
        rmtree(d)
    if left and not request_failed(request):
        pytest.fail(f"processes of this test's sandboxes survived every gateway and driver "
                    f"(killed now): {left}")


@pytest.fixture
def _drivers_stopper(_leaks):
    holder = {}
    yield holder
    env = holder.get("env")
    if env is not None:
        env.close_clients()
        env.stop_drivers()


@pytest.fixture
def env(request, stubs, db_url, _leaks, _drivers_stopper, gateway_factory, tmp_path):
    e = Env(request, stubs, db_url, gateway_factory, tmp_path)
    _leaks["env"] = e
    _drivers_stopper["env"] = e
    yield e
    e.close_clients()


def gateway_info(api):
    info = api.GetGatewayInfo()
    assert len(info.compute_drivers) == 1, info
    return info.compute_drivers[0]


def payload(ev):
    return json.loads(ev.payload_json or "{}")


def uuid_ok(text):
    return str(uuid.UUID(text)) == text
