"""Helpers for the supervisor-session, exec and relay tests
(e2e/test_sessions.py, e2e/test_exec.py, e2e/test_relay.py).

They run on the `env` fixture of drivers_fixtures.py: a gateway on the
test's database with its managed process driver, which starts
openshell-supervisor as PID 1 of every sandbox. The supervisor dials the
gateway (ConnectSupervisor) with the sandbox JWT the gateway minted; the
driver keeps a copy of that token in its state directory, which is where
the tests read it from (sandbox_token()).

Every wait here is bounded; bidirectional calls are fed from queues and
read by background threads (BidiCall) so that a test can wait for an
outcome with a deadline instead of blocking on an iterator.
"""

import base64
import hashlib
import json
import os
import queue
import threading
import time
from pathlib import Path

import grpc
import pytest

from drivers_fixtures import WAIT, new_token, sandbox_command
from drivers_util import all_procs
from utils import wait_until

READY_WAIT = 20.0  # sandbox creation / restart until READY
EXEC_TIMEOUT = 60.0  # gRPC deadline of one exec call
SUPERVISOR_EXE = "openshell-supervisor"


# ---------------------------------------------------------------------------
# phases and sandboxes


def phase(pb, name):
    return pb.SandboxPhase.Value("SANDBOX_PHASE_" + name)


def phase_name(pb, value):
    return pb.SandboxPhase.Name(value).replace("SANDBOX_PHASE_", "")


def get_sandbox(api, name, **kw):
    return api.GetSandbox(name=name, **kw).sandbox


def wait_phase(api, name, want, timeout=READY_WAIT, what=None):
    """Polls GetSandbox until the phase is |want| (a name like "READY");
    returns the sandbox. On timeout the last status is in the error."""
    pb = api.pb
    last = [None]

    def check():
        sb = get_sandbox(api, name)
        last[0] = sb
        return sb if sb.status.phase == phase(pb, want) else None

    try:
        return wait_until(check, timeout, interval=0.1, what=what or f"{name} {want}")
    except TimeoutError:
        sb = last[0]
        got = phase_name(pb, sb.status.phase) if sb is not None else "?"
        raise AssertionError(f"sandbox {name}: phase {got}, not {want}, after {timeout}s; "
                             f"status: {sb.status if sb is not None else None}") from None


def create_sandbox(env, api, name, command=None, **spec):
    """CreateSandbox with |command| (default: a shell ending in a unique
    `sleep`); tracks it for the leak check. Returns the created record."""
    marker = new_token()
    env.track(token=marker)
    cmd = command if command is not None else sandbox_command(marker)
    sb = api.CreateSandbox(name=name, spec=env.pb.SandboxSpec(command=cmd, **spec)).sandbox
    env.track(sid=sb.metadata.id)
    return sb


def create_ready(env, api, name, command=None, timeout=READY_WAIT, **spec):
    """create_sandbox() then wait for READY; returns the READY record."""
    sb = create_sandbox(env, api, name, command=command, **spec)
    return wait_phase(api, name, "READY", timeout,
                      what=f"sandbox {name} ({sb.metadata.id}) READY after create")


def driver_sandbox_dir(gw, sid):
    """The managed process driver's directory of sandbox |sid|."""
    return gw.workdir / "state" / "drivers" / "process" / "sandboxes" / sid


def sandbox_workdir(gw, sid):
    """Host side of the sandbox's /sandbox."""
    return driver_sandbox_dir(gw, sid) / "workdir"


def sandbox_token(gw, sid, timeout=WAIT):
    """The sandbox JWT the gateway handed to the driver (the driver's copy)."""
    path = driver_sandbox_dir(gw, sid) / "token"

    def read():
        try:
            text = path.read_text().strip()
        except OSError:
            return None
        return text or None

    return wait_until(read, timeout, interval=0.05, what=f"sandbox token file {path}")


def bearer(token):
    return [("authorization", f"Bearer {token}")]


# ---------------------------------------------------------------------------
# JWT pieces (for tampering; the gateway is the one verifying)


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_parts(token):
    """(header dict, claims dict, signature bytes) of a compact JWT."""
    h, p, s = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(p)), b64url_decode(s)


def jwt_with_flipped_signature(token):
    h, p, s = token.split(".")
    sig = bytearray(b64url_decode(s))
    sig[0] ^= 0x01
    return f"{h}.{p}.{b64url_encode(bytes(sig))}"


def jwt_with_claims(token, **changes):
    """|token| with some claims replaced; the original signature is kept, so
    the result is a forgery."""
    h, _, s = token.split(".")
    claims = jwt_parts(token)[1]
    claims.update(changes)
    body = b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    return f"{h}.{body}.{s}"


# ---------------------------------------------------------------------------
# unary calls with explicit metadata


def call(api, method, metadata=None, timeout=15.0, **kw):
    req = getattr(api.pb, method + "Request")(**kw)
    return getattr(api.stub, method)(req, timeout=timeout, metadata=metadata)


def call_code(api, method, metadata=None, **kw):
    """(code, details) of a call; (OK, response) when it succeeds."""
    try:
        return grpc.StatusCode.OK, call(api, method, metadata=metadata, **kw)
    except grpc.RpcError as e:
        return e.code(), e.details()


# ---------------------------------------------------------------------------
# bidirectional calls


class BidiCall:
    """A client-streaming or bidi call whose requests come from a queue
    (send(), close_send() half-closes) and whose responses a background
    thread collects into .items; .end is (code, details) once it ended."""

    def __init__(self, rpc, first=None, timeout=120.0, metadata=None, name="bidi",
                 describe=None):
        self.name = name
        self.describe = describe  # items -> text for error messages
        self.q = queue.Queue()
        if first is not None:
            self.q.put(first)
        self.items = []
        self.end = None
        self.cond = threading.Condition()
        self.call = rpc(self._requests(), timeout=timeout, metadata=metadata)
        self.thread = threading.Thread(target=self._read, name=name, daemon=True)
        self.thread.start()

    def _requests(self):
        while True:
            try:
                item = self.q.get(timeout=0.2)
            except queue.Empty:
                if self.end is not None:
                    return
                continue
            if item is None:
                return
            yield item

    def _read(self):
        try:
            for resp in self.call:
                with self.cond:
                    self.items.append(resp)
                    self.cond.notify_all()
            end = (grpc.StatusCode.OK, "")
        except grpc.RpcError as e:
            end = (e.code(), e.details())
        with self.cond:
            self.end = end
            self.cond.notify_all()

    def _summary(self):
        if self.describe is not None:
            return f"{len(self.items)} responses, {self.describe(self.items)}"
        return f"{len(self.items)} responses, last: {str(self.items[-3:])[:600]}"

    def send(self, msg):
        self.q.put(msg)

    def close_send(self):
        self.q.put(None)

    def wait(self, pred, timeout, what):
        """Waits until pred(self.items) is truthy; returns its value. Fails
        if the call ends first (unless pred holds then) or on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = pred(self.items)
                if value:
                    return value
                if self.end is not None:
                    raise AssertionError(f"{self.name}: call ended {self.end} before {what}; "
                                         f"{self._summary()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no {what} within {timeout}s; "
                                         f"{self._summary()}")
                self.cond.wait(min(left, 0.2))

    def wait_end(self, timeout, what="the end of the call"):
        """Waits for the call to end; returns (code, details)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.end is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: {what} did not come within {timeout}s; "
                                         f"{self._summary()}")
                self.cond.wait(min(left, 0.2))
            return self.end

    def cancel(self):
        self.call.cancel()
        self.close_send()
        self.thread.join(10)


# ---------------------------------------------------------------------------
# exec


class ExecResult:
    def __init__(self, events):
        self.events = events
        self.stdout = b"".join(e.stdout.data for e in events if e.WhichOneof("payload") == "stdout")
        self.stderr = b"".join(e.stderr.data for e in events if e.WhichOneof("payload") == "stderr")
        self.exits = [e.exit.exit_code for e in events if e.WhichOneof("payload") == "exit"]

    @property
    def exit_code(self):
        """The one exit code; the exit event must be the last event."""
        assert len(self.exits) == 1, f"expected exactly one exit event, got {self.exits}"
        assert self.events[-1].WhichOneof("payload") == "exit", "events after the exit event"
        return self.exits[0]

    def __repr__(self):
        return (f"ExecResult(stdout={self.stdout[:300]!r}, stderr={self.stderr[:300]!r}, "
                f"exits={self.exits})")


def run_exec(api, sid, command, timeout=EXEC_TIMEOUT, metadata=None, **kw):
    """ExecSandbox to its end; returns an ExecResult (raises grpc.RpcError)."""
    req = api.pb.ExecSandboxRequest(sandbox_id=sid, command=command, **kw)
    return ExecResult(list(api.stub.ExecSandbox(req, timeout=timeout, metadata=metadata)))


def exec_ok(api, sid, command, **kw):
    """run_exec() that must exit 0; returns stdout."""
    res = run_exec(api, sid, command, **kw)
    assert res.exit_code == 0, f"{command}: {res}"
    return res.stdout


def exec_error(api, sid, command, **kw):
    """(code, details) of an exec that must fail with a gRPC status."""
    try:
        res = run_exec(api, sid, command, **kw)
    except grpc.RpcError as e:
        return e.code(), e.details()
    pytest.fail(f"exec {command} succeeded: {res}")


def exec_interactive(api, start, timeout=EXEC_TIMEOUT, name="exec-interactive"):
    """An ExecSandboxInteractive call whose first message is |start|."""
    return BidiCall(api.stub.ExecSandboxInteractive, api.pb.ExecSandboxInput(start=start),
                    timeout=timeout, name=name, describe=lambda items: repr(ExecResult(items)))


def interactive_output(items):
    return ExecResult(list(items))


# Lists the processes of the sandbox's PID namespace, minus the lister and
# the processes between it and PID 1 (the exec's own shell/session chain),
# one JSON object per line.
PS_SRC = r"""
import json, os
def stat(p):
    s = open("/proc/%s/stat" % p).read()
    rest = s.rsplit(")", 1)[1].split()
    return rest[0], int(rest[1])
chain, p = set(), os.getpid()
while p > 1:
    chain.add(p)
    p = stat(p)[1]
for d in sorted(os.listdir("/proc")):
    if not d.isdigit() or int(d) in chain:
        continue
    try:
        st, ppid = stat(d)
        argv = open("/proc/%s/cmdline" % d, "rb").read().split(b"\0")
    except OSError:
        continue
    print(json.dumps({"pid": int(d), "ppid": ppid, "state": st,
                      "argv": [a.decode("utf-8", "replace") for a in argv if a]}))
"""


def sandbox_processes(api, sid):
    """Processes inside the sandbox other than the listing exec's own
    (dicts with pid, ppid, state, argv), seen from an exec of python3."""
    out = exec_ok(api, sid, ["/usr/bin/python3", "-c", PS_SRC])
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


# ---------------------------------------------------------------------------
# supervisor processes (host side)


def supervisor_procs(sid):
    """Host processes running openshell-supervisor for sandbox |sid| (its
    environment carries OPENSHELL_SANDBOX_ID), outermost first."""
    want = f"OPENSHELL_SANDBOX_ID={sid}".encode()
    found = [p for p in all_procs()
             if p.argv and os.path.basename(p.argv[0]) == SUPERVISOR_EXE
             and want in p.environ.split(b"\0")]
    pids = {p.pid for p in found}
    return sorted(found, key=lambda p: (p.ppid in pids, p.pid))


def supervisor_pid(sid, timeout=WAIT):
    """Host PID of sandbox |sid|'s supervisor (PID 1 of the sandbox)."""
    procs = wait_until(lambda: supervisor_procs(sid), timeout, interval=0.05,
                       what=f"the supervisor process of sandbox {sid}")
    return procs[0].pid


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


# ---------------------------------------------------------------------------
# supervisor sessions opened by the test


def supervisor_session(api, token, sandbox_id, instance_id, timeout=60.0):
    """ConnectSupervisor with |token| as bearer, sending hello first."""
    pb = api.pb
    hello = pb.SupervisorMessage(hello=pb.SupervisorHello(sandbox_id=sandbox_id,
                                                          instance_id=instance_id))
    return BidiCall(api.stub.ConnectSupervisor, hello, timeout=timeout,
                    metadata=bearer(token), name="test-supervisor")


def first_payload(items):
    return items[0].WhichOneof("payload") if items else None


# ---------------------------------------------------------------------------
# ForwardTcp


def forward_init(pb, sid, token, host=None, port=None, ssh=False, service_id=""):
    if ssh:
        init = pb.TcpForwardInit(sandbox_id=sid, authorization_token=token,
                                 service_id=service_id, ssh=pb.SshRelayTarget())
    else:
        init = pb.TcpForwardInit(sandbox_id=sid, authorization_token=token,
                                 service_id=service_id,
                                 tcp=pb.TcpRelayTarget(host=host, port=port))
    return pb.TcpForwardFrame(init=init)


def forward(api, sid, token, host="127.0.0.1", port=None, ssh=False, timeout=120.0):
    """A ForwardTcp call (BidiCall) with its init frame sent."""
    return BidiCall(api.stub.ForwardTcp, forward_init(api.pb, sid, token, host, port, ssh),
                    timeout=timeout, name="forward",
                    describe=lambda items: f"{len(forward_bytes(items))} data bytes received")


def forward_bytes(items):
    return b"".join(f.data for f in items if f.WhichOneof("payload") == "data")


def ssh_token(api, sid):
    resp = api.CreateSshSession(sandbox_id=sid)
    assert resp.token, resp
    return resp.token


# ---------------------------------------------------------------------------
# the TCP servers a sandbox runs for the relay tests
#
# Run inside the sandbox as its main command (python3 sees the host's root
# read-only; the sandbox has its own loopback). Three listeners on
# 127.0.0.1, kernel-chosen ports, written to /sandbox/ports.json once
# listening:
#   echo   - echoes every byte; on the client's EOF writes "EOF <n>\n" and
#            closes (so a half-close must travel through the relay);
#   sink   - reads 64 KiB, then sleeps argv[1] s (a deliberately slow
#            reader), once stalls argv[3] s after argv[2] bytes; on EOF writes
#            "<count> <sha256 hex>\n" and closes;
#   source - reads one line "<n>\n", writes n bytes of source_stream() and
#            closes; a slow client must slow it down.
# argv[4] is a unique number the process sleeps on (found by the leak check).

SERVER_SRC = r"""
import hashlib, json, os, socket, sys, threading, time
delay, stall_at, stall_s = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def echo(c):
    n = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
        c.sendall(b)
    c.sendall(b"EOF %d\n" % n)
    c.close()
def sink(c):
    h, n, stalled, buf = hashlib.sha256(), 0, False, bytearray(65536)
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        h.update(memoryview(buf)[:k])
        n += k
        if not stalled and n >= stall_at:
            stalled = True
            time.sleep(stall_s)
        time.sleep(delay)
    c.sendall(b"%d %s\n" % (n, h.hexdigest().encode()))
    c.close()
def source(c):
    line = b""
    while not line.endswith(b"\n"):
        b = c.recv(1)
        if not b:
            return
        line += b
    total, sent, i, size = int(line), 0, 0, 1 << 20
    base = hashlib.sha256(b"openshell-relay").digest() * (size // 32)
    while sent < total:
        blk = (i.to_bytes(8, "big") + base[8:])[:total - sent]
        c.sendall(blk)
        sent += len(blk)
        i += 1
    c.close()
def serve(ls, fn):
    while True:
        c, _ = ls.accept()
        threading.Thread(target=fn, args=(c,), daemon=True).start()
ports = {}
for name, fn in (("echo", echo), ("sink", sink), ("source", source)):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    ports[name] = ls.getsockname()[1]
    threading.Thread(target=serve, args=(ls, fn), daemon=True).start()
with open("/sandbox/ports.tmp", "w") as f:
    json.dump(ports, f)
os.rename("/sandbox/ports.tmp", "/sandbox/ports.json")
time.sleep(float(sys.argv[4]))
"""

SOURCE_BLOCK = 1 << 20


def source_stream_sha256(total):
    """sha256 of the first |total| bytes the `source` server writes."""
    base = hashlib.sha256(b"openshell-relay").digest() * (SOURCE_BLOCK // 32)
    h = hashlib.sha256()
    sent, i = 0, 0
    while sent < total:
        blk = (i.to_bytes(8, "big") + base[8:])[:total - sent]
        h.update(blk)
        sent += len(blk)
        i += 1
    return h.hexdigest()


def server_command(marker, delay=0.0, stall_at=1 << 62, stall_s=0.0):
    return ["/usr/bin/python3", "-c", SERVER_SRC, repr(delay), str(stall_at), repr(stall_s),
            marker]


def create_server_sandbox(env, gw, api, name, **server_kw):
    """A READY sandbox whose main command is SERVER_SRC; returns
    (sandbox record, {"echo": port, "sink": port, "source": port})."""
    marker = new_token()
    env.track(token=marker)
    sb = create_ready(env, api, name, command=server_command(marker, **server_kw))
    path = sandbox_workdir(gw, sb.metadata.id) / "ports.json"

    def ports():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    return sb, wait_until(ports, WAIT, interval=0.05, what=f"{path} written by the servers")
