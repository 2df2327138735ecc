#!/usr/bin/python3
"""A compute driver (openshell.compute.v1.ComputeDriver) for tests, in Python.

    /usr/bin/python3 e2e/fake_driver.py --socket PATH [--name NAME]
        [--version V] [--default-image IMG] [--record FILE]
        [--create-delay-ms N] [--ready-after-ms N] [--fail-create CODE]
        [--crash-on-create] [--stubs-dir DIR]

Serves plaintext gRPC on the Unix socket PATH and keeps its sandboxes in
memory (nothing survives a restart). Semantics follow compute-v1.md:

- GetCapabilities: driver_name = --name (default "fake"), driver_version =
  --version, default_image = --default-image.
- GetGatewayListenerRequirements: no requirements.
- ValidateSandboxCreate: needs sandbox.id and sandbox.name, else
  INVALID_ARGUMENT; everything else (driver_config included) is accepted.
- CreateSandbox: waits --create-delay-ms first (gives up without creating
  anything if the caller cancels or its deadline passes meanwhile), then
  fails with --fail-create CODE if given, ALREADY_EXISTS for a known id,
  else stores the sandbox: Ready=False "Starting", and Ready=True "Running"
  after --ready-after-ms (default 0: at once). --crash-on-create makes the
  process exit at once (os._exit) when a CreateSandbox arrives (after
  recording it).
- Get/Stop/Start of an unknown id: NOT_FOUND. Stop: Suspended=True and
  Ready=False "Stopped" (idempotent). Start: Suspended removed, Ready=True
  "Running" after --ready-after-ms (idempotent). Delete: deleted=true and a
  deleted watch event, or deleted=false when absent.
- WatchSandboxes: a snapshot of every existing sandbox first, then every
  change, deletion and platform event (source "fake": Created, Started,
  Stopped, Deleted) as it happens.
- EnsureWorkspace / DeleteWorkspace: OK.

--record FILE appends one JSON line per request received, before it is
answered: {"ts": unix seconds, "method": "CreateSandbox", "request":
MessageToDict(request, preserving_proto_field_name=True),
"time_remaining": seconds left of the caller's deadline or null}.

Stubs are generated from proto/ into a temporary directory at startup
(removed at exit) unless --stubs-dir names a directory that already holds
them (e2e/utils.generate_stubs output). SIGTERM/SIGINT stop the server and
exit 0; the socket file is removed.
"""

import argparse
import json
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

E2E_DIR = Path(__file__).resolve().parent

# Condition reasons and event sources this driver reports.
SOURCE = "fake"
REASON_STARTING = "Starting"
REASON_RUNNING = "Running"
REASON_STOPPED = "Stopped"


def load_stubs(stubs_dir):
    """Returns (pb2, pb2_grpc, MessageToDict, cleanup dir or None)."""
    cleanup = None
    if stubs_dir:
        out = Path(stubs_dir)
        if str(out) not in sys.path:
            sys.path.insert(0, str(out))
    else:
        sys.path.insert(0, str(E2E_DIR))
        from utils import generate_stubs  # noqa: E402 (needs e2e/ on the path)

        cleanup = Path(tempfile.mkdtemp(prefix="fake-driver-stubs-"))
        generate_stubs(cleanup)
    import compute_driver_pb2  # noqa: E402
    import compute_driver_pb2_grpc  # noqa: E402
    from google.protobuf.json_format import MessageToDict  # noqa: E402

    return compute_driver_pb2, compute_driver_pb2_grpc, MessageToDict, cleanup


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Recorder:
    def __init__(self, path, to_dict):
        self.path = path
        self.to_dict = to_dict
        self.lock = threading.Lock()
        self.file = open(path, "a", buffering=1) if path else None

    def record(self, method, request, context):
        if self.file is None:
            return
        remaining = context.time_remaining() if context is not None else None
        line = json.dumps({
            "ts": time.time(),
            "method": method,
            "request": self.to_dict(request, preserving_proto_field_name=True),
            "time_remaining": remaining,
        }, sort_keys=True)
        with self.lock:
            self.file.write(line + "\n")
            self.file.flush()


class FakeDriver:
    """The servicer. All state is guarded by self.lock; every change is
    published to the watchers' queues under that lock, so a watcher that
    took its snapshot under the lock misses nothing."""

    def __init__(self, pb, args, recorder):
        self.pb = pb
        self.args = args
        self.rec = recorder
        self.lock = threading.Lock()
        self.sandboxes = {}  # id -> DriverSandbox
        self.generation = {}  # id -> int, bumps on every start/stop/delete
        self.watchers = set()
        self.timers = set()

    # -- helpers -------------------------------------------------------------

    def _set_conditions(self, sb, ready, reason, message, suspended):
        del sb.status.conditions[:]
        sb.status.conditions.add(type="Ready", status=ready, reason=reason, message=message,
                                 last_transition_time=now_rfc3339())
        if suspended:
            sb.status.conditions.add(type="Suspended", status="True", reason=REASON_STOPPED,
                                     message="stopped by request",
                                     last_transition_time=now_rfc3339())

    def _publish(self, event):
        for q in self.watchers:
            q.put(event)

    def _publish_snapshot(self, sb):
        ev = self.pb.WatchSandboxesEvent()
        ev.sandbox.sandbox.CopyFrom(sb)
        self._publish(ev)

    def _publish_platform(self, sid, type_, reason, message):
        ev = self.pb.WatchSandboxesEvent()
        ev.platform_event.sandbox_id = sid
        pe = ev.platform_event.event
        pe.timestamp_ms = int(time.time() * 1000)
        pe.source = SOURCE
        pe.type = type_
        pe.reason = reason
        pe.message = message
        self._publish(ev)

    def _mark_running(self, sid, gen):
        with self.lock:
            sb = self.sandboxes.get(sid)
            if sb is None or self.generation.get(sid) != gen:
                return
            self._set_conditions(sb, "True", REASON_RUNNING, "sandbox is running", False)
            self._publish_snapshot(sb)
            self._publish_platform(sid, "Normal", "Started", "sandbox started")

    def _schedule_running(self, sid):
        """Called with the lock held."""
        gen = self.generation[sid] = self.generation.get(sid, 0) + 1
        delay = self.args.ready_after_ms / 1000.0
        if delay <= 0:
            sb = self.sandboxes[sid]
            self._set_conditions(sb, "True", REASON_RUNNING, "sandbox is running", False)
            self._publish_snapshot(sb)
            self._publish_platform(sid, "Normal", "Started", "sandbox started")
            return
        t = threading.Timer(delay, self._mark_running, (sid, gen))
        t.daemon = True
        t.start()

    def _lookup(self, sid, name, context, method):
        """The sandbox for (sid, name) with the lock held; aborts NOT_FOUND."""
        sb = self.sandboxes.get(sid) if sid else None
        if sb is None and not sid and name:
            sb = next((s for s in self.sandboxes.values() if s.name == name), None)
        if sb is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"{method}: sandbox '{sid or name}' not found")
        return sb

    # -- RPCs ----------------------------------------------------------------

    def GetCapabilities(self, request, context):
        self.rec.record("GetCapabilities", request, context)
        return self.pb.GetCapabilitiesResponse(
            gateway_manages_lifecycle=self.args.manages_lifecycle,
            driver_name=self.args.name,
            driver_version=self.args.version,
            default_image=self.args.default_image)

    def GetGatewayListenerRequirements(self, request, context):
        self.rec.record("GetGatewayListenerRequirements", request, context)
        return self.pb.GetGatewayListenerRequirementsResponse()

    def ValidateSandboxCreate(self, request, context):
        self.rec.record("ValidateSandboxCreate", request, context)
        if not request.sandbox.id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sandbox.id is required")
        if not request.sandbox.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sandbox.name is required")
        return self.pb.ValidateSandboxCreateResponse()

    def CreateSandbox(self, request, context):
        self.rec.record("CreateSandbox", request, context)
        if self.args.crash_on_create:
            os._exit(3)
        if self.args.create_delay_ms > 0:
            deadline = time.monotonic() + self.args.create_delay_ms / 1000.0
            while time.monotonic() < deadline:
                if not context.is_active():
                    # The caller gave up: nothing is created.
                    context.abort(grpc.StatusCode.CANCELLED, "caller went away")
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        if self.args.fail_create:
            context.abort(getattr(grpc.StatusCode, self.args.fail_create),
                          "fake driver: injected CreateSandbox failure")
        src = request.sandbox
        if not src.id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sandbox.id is required")
        with self.lock:
            if src.id in self.sandboxes:
                context.abort(grpc.StatusCode.ALREADY_EXISTS,
                              f"sandbox '{src.id}' already exists")
            sb = self.pb.DriverSandbox()
            sb.CopyFrom(src)
            sb.spec.sandbox_token = ""  # never echo the secret back
            sb.namespace = sb.namespace or "fake"
            sb.status.sandbox_name = sb.name
            sb.status.instance_id = "fake-" + sb.id[:8]
            self._set_conditions(sb, "False", REASON_STARTING, "sandbox is starting", False)
            self.sandboxes[sb.id] = sb
            self._publish_snapshot(sb)
            self._publish_platform(sb.id, "Normal", "Created", "sandbox created")
            self._schedule_running(sb.id)
        return self.pb.CreateSandboxResponse()

    def GetSandbox(self, request, context):
        self.rec.record("GetSandbox", request, context)
        with self.lock:
            sb = self._lookup(request.sandbox_id, request.sandbox_name, context, "GetSandbox")
            out = self.pb.DriverSandbox()
            out.CopyFrom(sb)
        return self.pb.GetSandboxResponse(sandbox=out)

    def ListSandboxes(self, request, context):
        self.rec.record("ListSandboxes", request, context)
        with self.lock:
            out = self.pb.ListSandboxesResponse()
            for sb in self.sandboxes.values():
                out.sandboxes.add().CopyFrom(sb)
        return out

    def StopSandbox(self, request, context):
        self.rec.record("StopSandbox", request, context)
        with self.lock:
            sb = self._lookup(request.sandbox_id, request.sandbox_name, context, "StopSandbox")
            if any(c.type == "Suspended" and c.status == "True" for c in sb.status.conditions):
                return self.pb.StopSandboxResponse()
            self.generation[sb.id] = self.generation.get(sb.id, 0) + 1
            self._set_conditions(sb, "False", REASON_STOPPED, "sandbox stopped", True)
            self._publish_snapshot(sb)
            self._publish_platform(sb.id, "Normal", "Stopped", "sandbox stopped")
        return self.pb.StopSandboxResponse()

    def StartSandbox(self, request, context):
        self.rec.record("StartSandbox", request, context)
        with self.lock:
            sb = self._lookup(request.sandbox_id, request.sandbox_name, context, "StartSandbox")
            if not any(c.type == "Suspended" and c.status == "True"
                       for c in sb.status.conditions):
                return self.pb.StartSandboxResponse()  # running or starting already
            self._set_conditions(sb, "False", REASON_STARTING, "sandbox is starting", False)
            self._publish_snapshot(sb)
            self._schedule_running(sb.id)
        return self.pb.StartSandboxResponse()

    def DeleteSandbox(self, request, context):
        self.rec.record("DeleteSandbox", request, context)
        with self.lock:
            sid = request.sandbox_id
            if not sid and request.sandbox_name:
                sid = next((s.id for s in self.sandboxes.values()
                            if s.name == request.sandbox_name), "")
            sb = self.sandboxes.pop(sid, None)
            if sb is None:
                return self.pb.DeleteSandboxResponse(deleted=False)
            self.generation[sid] = self.generation.get(sid, 0) + 1
            self._publish_platform(sid, "Normal", "Deleted", "sandbox deleted")
            ev = self.pb.WatchSandboxesEvent()
            ev.deleted.sandbox_id = sid
            self._publish(ev)
        return self.pb.DeleteSandboxResponse(deleted=True)

    def WatchSandboxes(self, request, context):
        self.rec.record("WatchSandboxes", request, context)
        q = queue.Queue()
        with self.lock:
            for sb in self.sandboxes.values():
                ev = self.pb.WatchSandboxesEvent()
                ev.sandbox.sandbox.CopyFrom(sb)
                q.put(ev)
            self.watchers.add(q)
        context.add_callback(lambda: q.put(None))
        try:
            while context.is_active():
                try:
                    ev = q.get(timeout=0.5)
                except queue.Empty:
                    continue
                if ev is None:
                    break
                yield ev
        finally:
            with self.lock:
                self.watchers.discard(q)

    def EnsureWorkspace(self, request, context):
        self.rec.record("EnsureWorkspace", request, context)
        return self.pb.EnsureWorkspaceResponse()

    def DeleteWorkspace(self, request, context):
        self.rec.record("DeleteWorkspace", request, context)
        return self.pb.DeleteWorkspaceResponse()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--socket", required=True)
    p.add_argument("--name", default="fake")
    p.add_argument("--version", default="0.0.1-fake")
    p.add_argument("--default-image", default="fake.invalid/sandbox:latest")
    p.add_argument("--record", default=None)
    p.add_argument("--create-delay-ms", type=int, default=0)
    p.add_argument("--ready-after-ms", type=int, default=0)
    p.add_argument("--fail-create", default=None, metavar="CODE",
                   help="gRPC status code name, e.g. INTERNAL or FAILED_PRECONDITION")
    p.add_argument("--crash-on-create", action="store_true")
    p.add_argument("--manages-lifecycle", action="store_true",
                   help="advertise gateway_manages_lifecycle (Docker/Podman/VM style)")
    p.add_argument("--stubs-dir", default=None)
    p.add_argument("--workers", type=int, default=64)
    args = p.parse_args(argv)
    if args.fail_create:
        args.fail_create = args.fail_create.upper()
        if not hasattr(grpc.StatusCode, args.fail_create) or args.fail_create == "OK":
            p.error(f"--fail-create: unknown status code {args.fail_create!r}")
    return args


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    pb, pb_grpc, to_dict, cleanup = load_stubs(args.stubs_dir)
    recorder = Recorder(args.record, to_dict)
    driver = FakeDriver(pb, args, recorder)

    sock = Path(args.socket)
    try:
        sock.unlink()
    except FileNotFoundError:
        pass
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers),
                         maximum_concurrent_rpcs=None)
    pb_grpc.add_ComputeDriverServicer_to_server(driver, server)
    if server.add_insecure_port("unix:" + str(sock)) == 0:
        print(f"fake-driver: cannot listen on {sock}", file=sys.stderr, flush=True)
        return 1
    server.start()
    print(f"fake-driver: listening on {sock} name={args.name} pid={os.getpid()}",
          file=sys.stderr, flush=True)

    done = threading.Event()

    def on_signal(signum, frame):
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not done.wait(1.0):
        pass
    server.stop(grace=1.0).wait(5)
    try:
        sock.unlink()
    except FileNotFoundError:
        pass
    if cleanup is not None:
        shutil.rmtree(cleanup, ignore_errors=True)
    print("fake-driver: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
