"""Helpers for the compute-driver tests (e2e/test_drivers*.py, the
e2e/driver_conformance suite and bench/driver_bench.py).

DriverProcess runs one driver program (the in-tree process driver or
e2e/fake_driver.py) on a Unix socket and stops it by PID; Compute is a
compute.v1 client for such a socket; the /proc helpers find the processes a
sandbox left behind. Every wait is bounded.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import grpc

from utils import REPO_ROOT, wait_until

E2E_DIR = Path(__file__).resolve().parent
FAKE_DRIVER = E2E_DIR / "fake_driver.py"
PYTHON = os.environ.get("E2E_PYTHON", "/usr/bin/python3")


def driver_bin_dir():
    """Directory of openshell-driver-process (env DRIVER_BIN, else build/)."""
    return Path(os.environ.get("DRIVER_BIN", str(REPO_ROOT / "build")))


def process_driver_bin():
    return driver_bin_dir() / "openshell-driver-process"


def short_tmpdir(prefix="osdrv-"):
    """A fresh directory with a short path (a Unix socket path must fit in
    108 bytes; pytest's tmp_path can be long). Remove with shutil.rmtree."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# ---------------------------------------------------------------------------
# driver processes


class DriverStartError(Exception):
    pass


class DriverProcess:
    """One driver program listening on |socket|; output goes to |log_path|.

    start() returns once GetCapabilities answers on the socket (bounded);
    stop() signals by PID (SIGTERM, bounded wait, SIGKILL)."""

    def __init__(self, cmd, socket, log_path, name="driver"):
        self.cmd = [str(c) for c in cmd]
        self.socket = Path(socket)
        self.log_path = Path(log_path)
        self.name = name
        self.proc = None
        self._log = None

    @classmethod
    def process(cls, socket, state_dir, name="process", log_path=None, extra=()):
        """The in-tree process driver."""
        binary = process_driver_bin()
        cmd = [binary, "--socket", socket, "--state-dir", state_dir, "--name", name, *extra]
        return cls(cmd, socket, log_path or Path(state_dir).parent / f"{name}-driver.log",
                   name=name)

    @classmethod
    def fake(cls, socket, name="fake", log_path=None, stubs_dir=None, record=None, extra=()):
        """e2e/fake_driver.py."""
        cmd = [PYTHON, FAKE_DRIVER, "--socket", socket, "--name", name]
        if stubs_dir:
            cmd += ["--stubs-dir", stubs_dir]
        if record:
            cmd += ["--record", record]
        cmd += list(extra)
        return cls(cmd, socket, log_path or Path(socket).parent / f"{name}-fake.log", name=name)

    def start(self, timeout=15.0, wait=True):
        if not Path(self.cmd[0]).exists():
            raise DriverStartError(f"driver program not found: {self.cmd[0]}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, cwd=str(self.log_path.parent))
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if self.proc.poll() is not None:
                raise DriverStartError(f"{self.name}: exited with {self.proc.returncode} before "
                                       f"answering\n{' '.join(self.cmd)}\n{self.log_text()}")
            if self.socket.exists():
                try:
                    with Compute(self.socket) as c:
                        c.GetCapabilities(timeout=1.0)
                    return self
                except grpc.RpcError as e:
                    last = e
            if time.monotonic() >= deadline:
                raise DriverStartError(f"{self.name}: no GetCapabilities answer within "
                                       f"{timeout}s ({last})\n{self.log_text()}")
            time.sleep(0.02)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL by PID; waits (bounded) for the exit."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout=10.0):
        """SIGTERM by PID, bounded wait, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# ---------------------------------------------------------------------------
# compute.v1 client


class Compute:
    """compute.v1 client on a Unix socket: c.CreateSandbox(sandbox=...) builds
    the request from keyword arguments; c.raw(method, bytes) sends bytes as
    they are (identity serializers) and returns the response bytes."""

    SERVICE = "/openshell.compute.v1.ComputeDriver/"

    def __init__(self, socket, pb=None, timeout=10.0):
        if pb is None:
            import compute_driver_pb2 as pb  # generated stubs must be on sys.path
        self.pb = pb
        self.timeout = timeout
        self.channel = grpc.insecure_channel("unix:" + str(socket))
        import compute_driver_pb2_grpc

        self.stub = compute_driver_pb2_grpc.ComputeDriverStub(self.channel)

    def __getattr__(self, method):
        if method.startswith("_"):
            raise AttributeError(method)
        req_type = getattr(self.pb, method + "Request")
        rpc = getattr(self.stub, method)

        def call(timeout=None, **kw):
            return rpc(req_type(**kw), timeout=timeout or self.timeout)

        return call

    def raw(self, method, data, timeout=None):
        fn = self.channel.unary_unary(self.SERVICE + method)  # no (de)serializers: bytes
        return fn(data, timeout=timeout or self.timeout)

    def watch(self, timeout=120.0):
        """A WatchSandboxes call (iterate it; cancel() when done)."""
        return self.stub.WatchSandboxes(self.pb.WatchSandboxesRequest(), timeout=timeout)

    def list_ids(self):
        return sorted(sb.id for sb in self.ListSandboxes().sandboxes)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def rpc_code(fn, *args, **kw):
    """Calls fn; returns (code, details) of its grpc error, or (OK, response)."""
    try:
        return grpc.StatusCode.OK, fn(*args, **kw)
    except grpc.RpcError as e:
        return e.code(), e.details()


# ---------------------------------------------------------------------------
# protobuf wire helpers (for unknown-field tests)


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def unknown_fields():
    """Fields no compute.v1 message defines: a varint (#1000), a
    length-delimited blob (#1001) and a fixed32 (#1002)."""
    return (varint(1000 << 3 | 0) + varint(7)
            + varint(1001 << 3 | 2) + varint(5) + b"hello"
            + varint(1002 << 3 | 5) + b"\x01\x02\x03\x04")


def len_field(number, payload):
    return varint(number << 3 | 2) + varint(len(payload)) + payload


# ---------------------------------------------------------------------------
# records of the fake driver


def read_records(path):
    """The fake driver's --record file: list of {"method", "request", ...}."""
    out = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def records_of(path, method):
    return [r for r in read_records(path) if r["method"] == method]


# ---------------------------------------------------------------------------
# processes (from /proc)


class ProcInfo:
    def __init__(self, pid):
        self.pid = pid
        base = Path(f"/proc/{pid}")
        self.argv = [a.decode(errors="replace")
                     for a in (base / "cmdline").read_bytes().split(b"\0") if a]
        stat = (base / "stat").read_text()
        rest = stat.rsplit(")", 1)[1].split()
        self.state = rest[0]
        self.ppid = int(rest[1])
        try:
            self.environ = (base / "environ").read_bytes()
        except OSError:
            self.environ = b""
        try:
            self.cwd = os.readlink(base / "cwd")
        except OSError:
            self.cwd = ""

    def __repr__(self):
        return f"pid {self.pid} (ppid {self.ppid}, {self.state}) cwd={self.cwd!r} argv={self.argv}"


def all_procs():
    out = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            p = ProcInfo(int(d))
        except (OSError, ValueError, IndexError):
            continue
        if p.state == "Z" or not p.argv:
            continue
        out.append(p)
    return out


def procs_matching(tokens=(), dirs=(), exclude=()):
    """Live processes whose argv or environment contains one of |tokens|, or
    whose working directory is inside one of |dirs|; pids in |exclude| are
    left out."""
    tokens = [t for t in tokens if t]
    btokens = [t.encode() for t in tokens]
    dirs = [str(d).rstrip("/") for d in dirs if d]
    found = []
    for p in all_procs():
        if p.pid in exclude:
            continue
        if any(t in a for t in tokens for a in p.argv) or any(
                t in p.environ for t in btokens) or any(
                p.cwd == d or p.cwd.startswith(d + "/") for d in dirs):
            found.append(p)
    return found


def descendants(pid):
    """Live descendants of |pid| (not |pid| itself)."""
    procs = all_procs()
    children = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c.pid)
    return out


def kill_pids(procs):
    """SIGKILL the given processes by PID (a safety net for leftovers)."""
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def wait_no_procs(what, timeout=10.0, **match):
    """Waits until procs_matching(**match) is empty; raises AssertionError
    listing the survivors otherwise."""
    try:
        wait_until(lambda: not procs_matching(**match), timeout, interval=0.05, what=what)
    except TimeoutError:
        raise AssertionError(f"{what}: still running after {timeout}s: "
                             f"{procs_matching(**match)}") from None


def rmtree(path):
    shutil.rmtree(path, ignore_errors=True)
