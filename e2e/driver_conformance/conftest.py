"""Compute-driver conformance suite: what any openshell.compute.v1 driver
must do for the gateway (compute-v1.md), checked over its Unix socket.

    DRIVER_SOCKET=/path/to.sock /usr/bin/python3 -m pytest e2e/driver_conformance

runs it against an already running driver (its name and default image are
taken from GetCapabilities). Without DRIVER_SOCKET the suite runs twice:
against the in-tree process driver, started here as

    $DRIVER_BIN/openshell-driver-process --socket S --state-dir D --name process

(DRIVER_BIN defaults to <repo>/build), and against e2e/fake_driver.py, which
shows that the suite holds no driver-specific knowledge. Sockets and state
live in short temporary directories; every driver started here is stopped
by PID at the end, and every sandbox a test creates is deleted by the test
(or by its teardown).
"""

import os
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers_util import (  # noqa: E402
    Compute,
    DriverProcess,
    DriverStartError,
    kill_pids,
    procs_matching,
    rmtree,
    short_tmpdir,
)

WAIT = float(os.environ.get("CONFORMANCE_WAIT", "20"))  # bound for asynchronous outcomes


def _params():
    if os.environ.get("DRIVER_SOCKET"):
        return ["external"]
    return ["process", "fake"]


class Driver:
    """What a test gets: the socket, a client, the capabilities and helpers
    to build and clean up sandboxes."""

    def __init__(self, kind, socket, pb, proc=None, expected_name=None, workdir=None):
        self.kind = kind
        self.socket = socket
        self.pb = pb
        self.proc = proc
        self.expected_name = expected_name
        self.workdir = workdir
        self.client = Compute(socket, pb)
        self.caps = self.client.GetCapabilities()
        self.created = []  # every id a test created (for leak checks)

    def sandbox(self, **template_kw):
        """A minimal valid DriverSandbox: fresh UUID id, short name, workspace
        "default", a long-running command and the driver's default image."""
        pb = self.pb
        sid = str(uuid.uuid4())
        tmpl = pb.DriverSandboxTemplate(image=self.caps.default_image, **template_kw)
        return pb.DriverSandbox(
            id=sid, name="conf-" + sid[:8], workspace="default",
            spec=pb.DriverSandboxSpec(command=["/bin/sh", "-c", "sleep 600"], template=tmpl))

    def alive(self):
        """The driver still answers (and, when started here, still runs)."""
        if self.proc is not None:
            assert self.proc.running, f"driver exited: {self.proc.proc.returncode}\n" \
                                      f"{self.proc.log_text()}"
        assert self.client.GetCapabilities(timeout=5).driver_name


@pytest.fixture(scope="session", params=_params())
def driver(request, stubs):
    kind = request.param
    pb = stubs.compute_driver_pb2
    if kind == "external":
        d = Driver(kind, os.environ["DRIVER_SOCKET"], pb)
        yield d
        d.client.close()
        return

    work = short_tmpdir("osconf-")
    sock = work / "driver.sock"
    if kind == "process":
        state = work / "state"
        state.mkdir()
        proc = DriverProcess.process(sock, state, name="process", log_path=work / "driver.log")
        expected = "process"
    else:
        proc = DriverProcess.fake(sock, name="conformance-fake", log_path=work / "driver.log",
                                  stubs_dir=stubs.outdir, extra=["--ready-after-ms", "200"])
        expected = "conformance-fake"
    try:
        proc.start()
    except DriverStartError as e:
        proc.stop()
        rmtree(work)
        pytest.fail(str(e))
    d = Driver(kind, sock, pb, proc=proc, expected_name=expected, workdir=work)
    try:
        yield d
    finally:
        d.client.close()
        code = proc.stop()
        print(f"\n===== {kind} driver log (pid {proc.pid}, exit {code}) =====\n{proc.log_text()}")
        # Everything created was deleted again: nothing of it may still run.
        left = procs_matching(tokens=d.created + [str(work)], dirs=[work])
        kill_pids(left)
        rmtree(work)
        assert not left, f"{kind} driver left sandbox processes behind: {left}"


@pytest.fixture
def cleanup(driver):
    """cleanup(id) deletes the sandbox at teardown (best effort)."""
    ids = []

    def add(sid):
        ids.append(sid)
        driver.created.append(sid)
        return sid

    yield add
    for sid in ids:
        try:
            driver.client.DeleteSandbox(sandbox_id=sid, timeout=10)
        except grpc.RpcError:
            pass


class Watch:
    """One WatchSandboxes stream read by a background thread; events are
    kept in arrival order."""

    def __init__(self, client):
        self.call = client.watch(timeout=300)
        self.events = []
        self.error = None
        self.ended = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for ev in self.call:
                with self.cond:
                    self.events.append(ev)
                    self.cond.notify_all()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.error = e
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def wait_for(self, pred, what, start=0, timeout=WAIT):
        """Index of the first event at or after |start| satisfying |pred|."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(start, len(self.events)):
                    if pred(self.events[i]):
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"watch: no {what} within {timeout}s; "
                                         f"{len(self.events)} events: {self.events[-5:]}")
                if self.ended:
                    raise AssertionError(f"watch ended ({self.error}) before {what}")
                self.cond.wait(min(left, 0.2))

    def close(self):
        self.call.cancel()
        self.thread.join(5)


@pytest.fixture
def watch(driver):
    w = Watch(driver.client)
    yield w
    w.close()
