#!/usr/bin/python3
"""bench/relay_bench.py - supervisor relays and sessions: relay throughput,
exec round-trip latency and the gateway memory an idle supervisor session
costs.

Starts its own throwaway PostgreSQL 15 (127.0.0.1, a free port) and
openshell-gateway processes on it, and drives them with the C load
generator bench/relay-bench (bench/relay_bench.c, built by `make`), so that
the client is not the bottleneck. Parts (PARTS, default all three):

  forward  One sandbox of the managed process driver with host networking
           (driver_config {"process": {"network": "host"}}, the gateway
           started with [openshell.drivers.process] allow_host_network),
           READY once its supervisor's ConnectSupervisor session is up.
           relay-bench runs a TCP peer on 127.0.0.1 (a forked process: a
           sink and a source) and, for each stream count in STREAMS,
           alternates rounds of
             direct  this client <-> the peer over loopback TCP (the
                     physical limit, same endpoints), and
             relay   ForwardTcp through the gateway and the supervisor to
                     the same peer (tokens from CreateSshSession: at most
                     3 forwards per token, so one token per 3 streams),
           pushing BYTES per stream into the sink ("push") and pulling
           BYTES per stream from the source ("pull"); WARMUP rounds of each
           first, then REPS counted; medians, MB = 10^6 bytes. CPU % of
           the gateway, the supervisor, the client and the peer per round
           (100 = one CPU) are reported too.
  exec     EXEC_COUNT sequential ExecSandbox ["true"] on the same sandbox
           (after 5 warm-up calls): p50 / p99 / mean round trip.
  sessions A second gateway with e2e/fake_driver.py as its driver (fast
           creates); SESSIONS sandboxes are created, their sandbox JWTs
           read from the fake driver's --record file, and relay-bench opens
           one ConnectSupervisor per sandbox, each on its own HTTP/2
           connection over the gateway's supervisor Unix socket, and holds
           them idle. The gateway's VmRSS (/proc/PID/status) and Pss
           (/proc/PID/smaps_rollup) are read before the first session and,
           SETTLE s after each checkpoint in CHECKPOINTS (all accepted);
           KiB per session = growth / sessions held; sessions per GiB =
           1 GiB / that.

Environment (defaults in brackets):
  PARTS ["forward exec sessions"]  STREAMS ["1 16"]  DIRS ["push pull"]
  BYTES [1G] per stream with one stream; BYTES_MULTI [256M] per stream
  with more than one  REPS [5]  WARMUP [1]  CHUNK [64K] (ForwardTcp data
  frame payload and direct write size)
  EXEC_COUNT [200]  EXEC_PHASES [30]: extra execs timed phase by phase from
  the gateway's debug events (0: skip)
  SESSIONS [5000]  CHECKPOINTS ["1000 2500 5000"]  SETTLE [3] (s)
  CONN_BASELINE [1]: first hold SESSIONS bare HTTP/2 connections (one
  Health call each, no session) on the same socket, so the report can split
  connection and session cost; sessions then run on a fresh gateway
  PERF [0] (1: `perf record -g` of the gateway during extra 16-stream push
  and pull relay rounds; top symbols go into the report)
  GATEWAY_BIN [build/openshell-gateway]  TOOL [dir of the gateway/bench/relay-bench]
  DRIVER_BIN [dir of the gateway] (openshell-driver-process, openshell-supervisor)
  OUT [bench/results/relay.md]  KEEP [0] (1 keeps the work directory)
  JSON_OUT [none]: also write the raw results there; REPORT_FROM=FILE only
  rewrites OUT from such a file (no run)
  HOLD [0]: keep the forward/exec gateway and sandbox up this many seconds
  after those parts, with what relay-bench needs in <work>/hold.json
Everything listens on 127.0.0.1 or Unix sockets in the work directory;
every process started here is stopped by PID with bounded waits; every
loop is bounded in time.
"""

import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "e2e"))
sys.path.insert(0, str(REPO / "bench"))

from events_bench import (  # noqa: E402
    durable_postgres, fmt, run_until_signal, stop_bench_processes)


def env_int(name, default):
    return int(os.environ.get(name, default))


def parse_size(text):
    t = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    return int(t[:-1] if mult != 1 else t) * mult


PARTS = os.environ.get("PARTS", "forward exec sessions").split()
STREAMS = [int(x) for x in os.environ.get("STREAMS", "1 16").split()]
DIRS = os.environ.get("DIRS", "push pull").split()
BYTES = parse_size(os.environ.get("BYTES", "1G"))
BYTES_MULTI = parse_size(os.environ.get("BYTES_MULTI", "256M"))
REPS = env_int("REPS", 5)
WARMUP = env_int("WARMUP", 1)
CHUNK = parse_size(os.environ.get("CHUNK", "64K"))
EXEC_COUNT = env_int("EXEC_COUNT", 200)
SESSIONS = env_int("SESSIONS", 5000)
CHECKPOINTS = [int(x) for x in os.environ.get("CHECKPOINTS", "1000 2500 5000").split()]
SETTLE = float(os.environ.get("SETTLE", "3"))
PERF = os.environ.get("PERF", "0") == "1"
CONN_BASELINE = os.environ.get("CONN_BASELINE", "1") == "1"
HOLD = env_int("HOLD", 0)
JSON_OUT = os.environ.get("JSON_OUT", "")  # also write the raw results here
REPORT_FROM = os.environ.get("REPORT_FROM", "")  # only rewrite OUT from a JSON_OUT file  # s to keep the forward/exec setup up after the parts (debugging)
OUT = Path(os.environ.get("OUT", str(REPO / "bench" / "results" / "relay.md")))
KEEP = os.environ.get("KEEP", "0") == "1"
READY_TIMEOUT = 60.0
MAX_FORWARDS_PER_TOKEN = 3  # semantics.md §13
TARGET_RATIO = 0.55
TARGET_SESSION_KIB = 10.0
TARGET_EXEC_P50_MS = 5.0
WARMUP_EXEC = 5  # relay-bench exec's default warm-up calls
EXEC_PHASES = env_int("EXEC_PHASES", 30)


def log(msg):
    print(f"[relay-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mem_kib(pid):
    """(VmRSS, Pss, open fds) of |pid| in KiB / count."""
    rss = pss = None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    return {"rss": rss, "pss": pss, "fds": fds}


def raise_nofile(need):
    """Raises this process's RLIMIT_NOFILE (inherited by the gateway and
    relay-bench) to at least |need| when possible."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            soft, hard = need, need
        except (ValueError, OSError) as e:
            log(f"cannot raise the hard fd limit to {need}: {e}")
    if soft == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Bench:
    def __init__(self):
        import utils

        self.u = utils
        self.work = Path(tempfile.mkdtemp(prefix="osrelay-", dir="/tmp"))
        self.pg = None
        self.pg_lock = None
        self.gateways = []
        self.fakes = []
        self.gw_n = 0
        self.stubs = None
        self.notes = []
        self.commands = []
        self.tool = Path(os.environ.get("TOOL", str(utils.GATEWAY_BIN.parent / "bench" /
                                                    "relay-bench")))
        self.driver_dir = Path(os.environ.get("DRIVER_BIN", str(utils.GATEWAY_BIN.parent)))
        self.perf_text = None
        # What the report text needs of the knobs (REPORT_FROM uses the run's).
        self.knobs = {"SESSIONS": SESSIONS, "SETTLE": SETTLE, "EXEC_PHASES": EXEC_PHASES,
                      "STREAMS": STREAMS}

    # -- servers --------------------------------------------------------------

    def start_postgres(self):
        self.pg_lock = self.u.PortLock()
        self.pg, _ = durable_postgres(self.u, self.pg_lock.port, "osrelay-pg-")
        log(f"postgres up on 127.0.0.1:{self.pg.port}")

    def new_db(self, name):
        self.pg.sql(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.pg.port}/{name}"

    def start_gateway(self, db_url, *extra, toml=None, workdir=None, name=None):
        self.gw_n += 1
        gw = self.u.Gateway(workdir or self.work / f"gw{self.gw_n}", name=name or f"gw{self.gw_n}")
        self.gateways.append(gw)
        args = list(extra)
        if toml:
            args += ["--config", self.u.write_toml(gw.workdir / "gateway.toml", toml)]
        gw.start(self.u.h2c_args("--db-url", db_url, *args), timeout=60)
        log(f"gateway pid {gw.pid} on {gw.target}")
        return gw

    def stop_gateway(self, gw):
        if not gw.running:
            self.gateway_died(gw)
            return
        code = gw.stop(timeout=20)
        if code != 0:
            self.notes.append(f"{gw.name} exited {code} on SIGTERM")

    def start_fake(self, name, record):
        from drivers_util import DriverProcess

        d = self.work / f"fake-{name}"
        d.mkdir()
        drv = DriverProcess.fake(d / "driver.sock", name="fakebench", log_path=d / "driver.log",
                                 stubs_dir=self.stubs.outdir, record=record,
                                 extra=["--workers", "64"])
        self.fakes.append(drv)
        drv.start(timeout=30)
        return drv

    def stop_all(self):
        stop_bench_processes(self, KEEP, log)

    # -- the load generator ------------------------------------------------------

    def run_tool(self, args, timeout, name):
        cmd = [str(self.tool), *map(str, args)]
        shown = " ".join("<token>" if i > 0 and cmd[i - 1] == "--token" else shlex.quote(a)
                         for i, a in enumerate(cmd))
        self.commands.append(shown)
        log(f"running: {shown}")
        err_path = self.work / f"{name}.stderr"
        with open(err_path, "wb") as err:
            res = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=err, timeout=timeout, check=False)
        text = err_path.read_text(errors="replace")
        sys.stderr.write(text)
        try:
            out = json.loads(res.stdout.decode())
        except ValueError:
            raise RuntimeError(f"relay-bench {name} exited {res.returncode} without a result:\n"
                               f"{res.stdout.decode(errors='replace')}\n{text}") from None
        out["exit_code"] = res.returncode
        return out

    # -- the relay sandbox -----------------------------------------------------------

    def relay_gateway(self):
        toml = {"openshell.drivers.process": {"allow_host_network": True}}
        return self.start_gateway(self.new_db("relay"), toml=toml)

    def create_relay_sandbox(self, gw, stub):
        import grpc
        from google.protobuf import struct_pb2

        pb = self.stubs.openshell_pb2
        cfg = struct_pb2.Struct()
        cfg.update({"process": {"network": "host"}})
        spec = pb.SandboxSpec(command=["/bin/sh", "-c", "sleep 3600"],
                              template=pb.SandboxTemplate(driver_config=cfg))
        sb = stub.CreateSandbox(pb.CreateSandboxRequest(name="relay", spec=spec),
                                timeout=30).sandbox
        sid = sb.metadata.id
        deadline = time.monotonic() + READY_TIMEOUT
        t0 = time.monotonic()
        last = None
        while time.monotonic() < deadline:
            try:
                last = stub.GetSandbox(pb.GetSandboxRequest(name="relay"), timeout=10).sandbox
            except grpc.RpcError as e:
                log(f"GetSandbox: {e.code()} {e.details()}")
                time.sleep(0.2)
                continue
            if last.status.phase == pb.SANDBOX_PHASE_READY:
                log(f"sandbox {sid} READY after {time.monotonic() - t0:.2f} s")
                return sid
            if last.status.phase == pb.SANDBOX_PHASE_ERROR:
                break
            time.sleep(0.05)
        conds = [(c.type, c.status, c.reason, c.message) for c in last.status.conditions] \
            if last is not None else []
        raise RuntimeError(f"sandbox not READY within {READY_TIMEOUT:.0f} s: phase "
                           f"{last.status.phase if last else '?'} {conds}\n"
                           f"{gw.log_text()[-4000:]}")

    def supervisor_pid(self, gw):
        from drivers_util import descendants

        procs = [p for p in descendants(gw.pid) if p.argv and
                 os.path.basename(p.argv[0]) == "openshell-supervisor"]
        # The supervisor may fork helpers of the same name: take the top one.
        pids = {p.pid for p in procs}
        sup = [p for p in procs if p.ppid not in pids]
        if len(sup) != 1:
            self.notes.append(f"found {len(sup)} supervisor processes: CPU of the supervisor "
                              "not reported")
            return None
        return sup[0].pid

    def ssh_tokens(self, stub, sid, n):
        pb = self.stubs.openshell_pb2
        return [stub.CreateSshSession(pb.CreateSshSessionRequest(sandbox_id=sid),
                                      timeout=30).token for _ in range(n)]

    # -- parts forward and exec ---------------------------------------------------------

    def part_forward_exec(self):
        results = {"forward": {}, "exec": None}
        gw = self.relay_gateway()
        ch = gw.channel()
        try:
            stub = self.stubs.openshell_pb2_grpc.OpenShellStub(ch)
            sid = self.create_relay_sandbox(gw, stub)
            sup = self.supervisor_pid(gw)
            kmax = max(STREAMS)
            tokens = self.ssh_tokens(stub, sid, (kmax + MAX_FORWARDS_PER_TOKEN - 1) //
                                     MAX_FORWARDS_PER_TOKEN)
            watch = ["--watch", f"gateway={gw.pid}"]
            if sup:
                watch += ["--watch", f"supervisor={sup}"]
            common = ["--gateway", gw.target, "--sandbox", sid]
            for t in tokens:
                common += ["--token", t]
            dirs = "both" if {"push", "pull"} <= set(DIRS) else DIRS[0]
            if "forward" in PARTS:
                for k in STREAMS:
                    nbytes = BYTES if k == 1 else BYTES_MULTI
                    args = ["forward", *common, "--streams", k, "--bytes", nbytes, "--reps", REPS,
                            "--warmup", WARMUP, "--dir", dirs, "--chunk", CHUNK,
                            "--timeout-s", 120, *watch]
                    tmo = 120 + (REPS + WARMUP) * 2 * 2 * 120
                    results["forward"][k] = self.run_tool(args, tmo, f"forward-{k}")
                if PERF:
                    self.perf_profile(gw, sup, common, results["forward"].get(max(STREAMS)))
            if "exec" in PARTS:
                results["exec"] = self.run_tool(
                    ["exec", "--gateway", gw.target, "--sandbox", sid, "--count", EXEC_COUNT,
                     "--timeout-s", 600], 700, "exec")
            if results["exec"] is not None:
                # The gateway's own view of each exec (exec.start to exec.end).
                durs = [float(e["dur_ms"]) for e in gw.events("exec.end") if "dur_ms" in e]
                results["exec_gateway_ms"] = durs[WARMUP_EXEC:] if len(durs) > WARMUP_EXEC \
                    else durs
            if "exec" in PARTS and EXEC_PHASES > 0:
                results["exec_phases"] = self.exec_phases(gw, sid)
            results["gateway_rss_kib"] = mem_kib(gw.pid)["rss"]
            if HOLD > 0:
                info = self.work / "hold.json"
                info.write_text(json.dumps({"gateway": gw.target, "sandbox": sid,
                                            "tokens": tokens, "gateway_pid": gw.pid,
                                            "supervisor_pid": sup, "log": str(gw.log_path)}))
                log(f"holding for {HOLD} s; see {info}")
                time.sleep(HOLD)
        finally:
            ch.close()
            self.stop_gateway(gw)
        return results

    def exec_phases(self, gw, sid):
        """Per-phase medians of EXEC_PHASES extra execs, from the gateway's
        debug events (log level raised through its config file + SIGHUP,
        lowered again afterwards): relay open -> claimed by the supervisor,
        -> SSH authenticated, -> exec request sent, -> command running,
        -> done (exit status and channel close)."""
        from events_bench import pct

        cfg = gw.workdir / "gateway.toml"
        original = cfg.read_text()
        n0 = len(gw.events("gateway.reloaded"))

        def reload(text):
            cfg.write_text(text)
            os.kill(gw.pid, signal.SIGHUP)
            self.u.wait_until(lambda: len(gw.events("gateway.reloaded")) > n0, 10,
                              what="gateway.reloaded")

        reload('[openshell.gateway]\nlog_level = "debug"\n\n' + original)
        start = len(gw.log_text().splitlines())
        try:
            self.run_tool(["exec", "--gateway", gw.target, "--sandbox", sid, "--count",
                           EXEC_PHASES, "--warmup", 0, "--timeout-s", 300], 400, "exec-phases")
        finally:
            n0 = len(gw.events("gateway.reloaded"))
            reload(original)

        def ts(ev):
            t = datetime.datetime.strptime(ev["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
            return t.timestamp() * 1000.0

        marks = {("relay.open", None): "open", ("relay.claimed", None): "claimed",
                 ("exec.ssh_state", "auth"): "auth", ("exec.ssh_state", "exec"): "exec",
                 ("exec.ssh_state", "running"): "running", ("exec.ssh_state", "done"): "done"}
        runs, cur = [], {}
        for line in gw.log_text().splitlines()[start:]:
            ev = self.u.parse_log_line(line)
            if ev is None or ev.get("sandbox_id") != sid:
                continue
            name = marks.get((ev.get("event"), ev.get("to"))) or \
                marks.get((ev.get("event"), None))
            if name == "open":
                cur = {}
            if name:
                cur[name] = ts(ev)
            if ev.get("event") == "exec.end":
                runs.append(cur)
                cur = {}
        order = ["open", "claimed", "auth", "exec", "running", "done"]
        phases = {}
        for a, b in zip(order, order[1:]):
            vals = [r[b] - r[a] for r in runs if a in r and b in r]
            phases[f"{a}->{b}"] = (pct(vals, 50), pct(vals, 99), len(vals))
        return phases

    def perf_profile(self, gw, sup, common, measured):
        """perf record -g of the gateway (and the supervisor) during extra
        16-stream relay rounds; keeps the top of perf report."""
        if not shutil.which("perf"):
            self.notes.append("PERF=1 but perf is not installed")
            return
        k = max(STREAMS)
        texts = []
        for d in ("push", "pull"):
            if d not in DIRS:
                continue
            relay = [x for x in (measured or {}).get("series", [])
                     if x["dir"] == d and x["mode"] == "relay"]
            if relay and not relay[0]["mbps"]:
                self.notes.append(f"perf: {d} not profiled (its relay rounds failed)")
                continue
            pids = [str(gw.pid)] + ([str(sup)] if sup else [])
            data = self.work / f"perf-{d}.data"
            perf = subprocess.Popen(["perf", "record", "-g", "-F", "999", "-o", str(data),
                                     "-p", ",".join(pids)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(0.5)
                self.run_tool(["forward", *common, "--streams", k, "--bytes", BYTES_MULTI,
                               "--reps", 2, "--warmup", 0, "--dir", d, "--mode", "relay",
                               "--chunk", CHUNK], 900, f"perf-{d}")
            finally:
                perf.send_signal(signal.SIGINT)
                try:
                    perf.wait(60)
                except subprocess.TimeoutExpired:
                    perf.kill()
                    perf.wait(10)
            rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                                  "--sort", "comm,dso,symbol", "-g", "none",
                                  "--percent-limit", "0.7"],
                                 capture_output=True, text=True, timeout=300, check=False)
            lines = [ln for ln in rep.stdout.splitlines() if ln.strip() and
                     not ln.startswith("#")]
            texts.append((d, lines[:40]))
        self.perf_text = texts

    # -- part sessions -------------------------------------------------------------------

    def create_sandboxes(self, gw, n, threads=16):
        import grpc

        pb = self.stubs.openshell_pb2
        errors = []
        counter = {"next": 0}
        lock = threading.Lock()
        deadline = time.monotonic() + max(600, n / 5)

        def worker():
            ch = gw.channel()
            call = ch.unary_unary("/openshell.v1.OpenShell/CreateSandbox")
            try:
                while time.monotonic() < deadline:
                    with lock:
                        i = counter["next"]
                        if i >= n:
                            return
                        counter["next"] += 1
                    req = pb.CreateSandboxRequest(
                        name=f"s-{i}", spec=pb.SandboxSpec(command=["sleep", "infinity"]))
                    try:
                        call(req.SerializeToString(), timeout=60)
                    except grpc.RpcError as e:
                        errors.append(f"{e.code().name}: {e.details()}")
            finally:
                ch.close()

        t0 = time.monotonic()
        ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(max(1.0, deadline - time.monotonic() + 30))
        took = time.monotonic() - t0
        log(f"created {n - len(errors)} sandboxes in {took:.1f} s ({len(errors)} errors)")
        if errors:
            raise RuntimeError(f"{len(errors)} CreateSandbox errors, first: {errors[0]}")
        return took

    def part_sessions(self):
        """Creates the sandboxes, then (CONN_BASELINE) holds bare HTTP/2
        connections on one gateway, then sessions on a fresh gateway started
        on the same state directory (same JWT keys) and database."""
        from drivers_util import records_of

        limits = raise_nofile(SESSIONS + 1024)
        log(f"RLIMIT_NOFILE now {limits}")
        record = self.work / "fake-record.jsonl"
        drv = self.start_fake("sess", record)
        db = self.new_db("sessions")
        gw_args = ("--drivers", "fakebench", "--compute-driver-socket", drv.socket)
        gw = self.start_gateway(db, *gw_args, workdir=self.work / "gw-sess", name="gw-conn")
        out = {"limits": limits}
        try:
            out["create_s"] = self.create_sandboxes(gw, SESSIONS)
            ids, tokens = [], []
            for r in records_of(record, "CreateSandbox"):
                sb = r["request"]["sandbox"]
                tok = sb.get("spec", {}).get("sandbox_token", "")
                if tok:
                    ids.append(sb["id"])
                    tokens.append(tok)
            if len(ids) < SESSIONS:
                raise RuntimeError(f"the fake driver recorded {len(ids)} sandbox tokens, "
                                   f"{SESSIONS} needed (does the gateway mint tokens?)")
            ids_path, tok_path = self.work / "sandbox-ids.txt", self.work / "tokens.txt"
            ids_path.write_text("\n".join(ids[:SESSIONS]) + "\n")
            tok_path.touch(mode=0o600)
            tok_path.write_text("\n".join(tokens[:SESSIONS]) + "\n")
            if CONN_BASELINE:
                out["connections"] = self.hold_phase(gw, ["--connections-only"], "connections")
                self.stop_gateway(gw)
                gw = self.start_gateway(db, *gw_args, workdir=self.work / "gw-sess",
                                        name="gw-sessions")
            out["sessions"] = self.hold_phase(
                gw, ["--tokens", tok_path, "--sandbox-ids", ids_path], "sessions")
        finally:
            if gw.running:
                self.stop_gateway(gw)
            else:
                self.gateway_died(gw)
            drv.stop()
        return out

    def gateway_died(self, gw):
        code = gw.stop(timeout=5)
        self.notes.append(f"{gw.name} had already exited (status {code}"
                          f"{', SIGSEGV' if code == -signal.SIGSEGV else ''}) before it was "
                          "stopped")

    def hold_phase(self, gw, extra, label):
        """relay-bench sessions with |extra| against |gw|: memory before,
        at each checkpoint and after release."""
        out = {"checkpoints": [], "label": label}
        sock = gw.workdir / "state" / "run" / "supervisor.sock"
        if not sock.exists():
            raise RuntimeError(f"no supervisor socket at {sock}")
        time.sleep(SETTLE)
        out["base"] = mem_kib(gw.pid)
        for line in Path(f"/proc/{gw.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                out["gw_nofile"] = line.split()[3]
        log(f"{label}: gateway before: {out['base']}")
        cps = sorted({c for c in CHECKPOINTS if c < SESSIONS} | {SESSIONS})
        cmd = [str(self.tool), "sessions", "--socket", str(sock), *map(str, extra),
               "--count", str(SESSIONS), "--checkpoints", ",".join(map(str, cps)),
               "--timeout-s", "1800"]
        self.commands.append(" ".join(shlex.quote(c) for c in cmd))
        log(f"running: {' '.join(cmd)}")
        err_path = self.work / f"{label}.stderr"
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err)
            try:
                out["result"] = self.drive_sessions(proc, gw, out)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        sys.stderr.write(err_path.read_text(errors="replace"))
        time.sleep(SETTLE)
        out["after_release"] = mem_kib(gw.pid) if gw.running else None
        log(f"{label}: gateway after release: {out['after_release']}")
        return out

    def drive_sessions(self, proc, gw, out):
        """Reads CHECKPOINT lines, measures the gateway at each (after
        SETTLE s), tells the tool to go on; returns its JSON result."""
        deadline = time.monotonic() + 1800
        result = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            text = line.decode(errors="replace").strip()
            if text.startswith("CHECKPOINT"):
                _, acc, failed, secs = text.split()
                time.sleep(SETTLE)
                m = mem_kib(gw.pid)
                m.update({"accepted": int(acc), "failed": int(failed), "secs": float(secs)})
                out["checkpoints"].append(m)
                log(f"checkpoint: {m}")
                if int(acc) >= SESSIONS or int(failed) > 0:
                    proc.stdin.close()  # EOF: release everything
                else:
                    proc.stdin.write(b"next\n")
                    proc.stdin.flush()
            elif text.startswith("{"):
                result = json.loads(text)
                break
        proc.wait(120)
        if result is None:
            raise RuntimeError(f"relay-bench sessions exited {proc.returncode} without a result")
        result["exit_code"] = proc.returncode
        return result

    # -- report -------------------------------------------------------------------------

    def binary_id(self):
        import hashlib

        p = self.u.GATEWAY_BIN
        h = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        mt = datetime.datetime.fromtimestamp(p.stat().st_mtime, datetime.timezone.utc)
        return f"sha256 {h}..., built {mt.strftime('%Y-%m-%d %H:%M:%S UTC')}"

    def forward_table(self, fwd):
        def per_gb(pct_cpu, mbps):
            """CPU seconds per GB moved: (CPU % / 100) / (GB/s)."""
            if pct_cpu is None or pct_cpu < 0 or not mbps:
                return "-"
            return fmt(pct_cpu / 100.0 / (mbps / 1000.0), 2)

        lines = ["| streams | bytes per stream | direction | direct MB/s | relay MB/s | "
                 "relay / direct | target | gateway CPU % | supervisor CPU % | client CPU % | "
                 "peer CPU % | others CPU % (relay / direct rounds) | CPU s per GB relayed "
                 "(gateway / supervisor) |",
                 "|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---|---|"]
        per_rep = []
        for k, res in sorted(fwd.items()):
            series = {(s["dir"], s["mode"]): s for s in res["series"]}
            for d in ("push", "pull"):
                direct, relay = series.get((d, "direct")), series.get((d, "relay"))
                if not direct or not relay:
                    continue
                ratio = res["ratio_relay_to_direct"].get(d)
                ok = "met" if ratio is not None and ratio >= TARGET_RATIO else "**missed**"
                cpu = relay["cpu_pct_median"]
                if not relay["mbps"]:
                    lines.append(f"| {k} | {res['bytes'] >> 20} MiB | {d} | "
                                 f"{fmt(direct['median_mbps'])} | **failed** | - | "
                                 f">= {TARGET_RATIO} (not measured) | - | - | - | - | - | - |")
                    per_rep.append(f"- {k} stream(s), {d}: direct "
                                   f"{', '.join(fmt(x) for x in direct['mbps'])} MB/s; relay "
                                   "failed (see below)")
                    continue

                def others(c):
                    if c.get("machine") is None:
                        return None
                    return max(0.0, c["machine"] - sum(c.get(k) or 0.0 for k in (
                        "gateway", "supervisor", "client", "peer")))
                lines.append(
                    f"| {k} | {res['bytes'] >> 20} MiB | {d} | {fmt(direct['median_mbps'])} | "
                    f"{fmt(relay['median_mbps'])} | "
                    f"{fmt(ratio, 2) if ratio is not None else '-'} | "
                    f">= {TARGET_RATIO} ({ok}) | {fmt(cpu.get('gateway'))} | "
                    f"{fmt(cpu.get('supervisor'))} | {fmt(cpu.get('client'))} | "
                    f"{fmt(cpu.get('peer'))} | {fmt(others(cpu))} / "
                    f"{fmt(others(direct['cpu_pct_median']))} | "
                    f"{per_gb(cpu.get('gateway'), relay['median_mbps'])} / "
                    f"{per_gb(cpu.get('supervisor'), relay['median_mbps'])} |")
                per_rep.append(f"- {k} stream(s), {d}: direct "
                               f"{', '.join(fmt(x) for x in direct['mbps'])}; relay "
                               f"{', '.join(fmt(x) for x in relay['mbps'])} MB/s")
            if res.get("failures"):
                per_rep.append(f"- {k} stream(s): {res['failures']} failed round(s), first: "
                               f"{res.get('first_error')}")
            per_rep.append(f"- {k} stream(s): client writable callbacks "
                           f"{res.get('writable_callbacks')}, window resumes "
                           f"{res.get('window_resumes')}")
        return lines, per_rep

    @staticmethod
    def marginal_kib(phase):
        """RSS growth per item between the last two checkpoints (the base
        when there is only one), or None. Less sensitive than growth/held
        to what the heap had free before the first checkpoint."""
        cps = [{"accepted": 0, **phase["base"]}] + [
            c for c in phase.get("checkpoints", []) if c["accepted"] > 0]
        if len(cps) < 2 or cps[-1].get("rss") is None or cps[-2].get("rss") is None:
            return None
        return (cps[-1]["rss"] - cps[-2]["rss"]) / max(1, cps[-1]["accepted"] -
                                                     cps[-2]["accepted"])

    def hold_table(self, phase, what, target):
        base = phase["base"]
        lines = [f"| {what} held | gateway VmRSS MiB | Pss MiB | open fds | KiB per {what[:-1]} "
                 f"(RSS growth / held) | marginal KiB | {what} per GiB |"
                 + (" target |" if target else ""),
                 "|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if target else "")]
        lines.append(f"| 0 | {fmt(base['rss'] / 1024, 1)} | {fmt((base['pss'] or 0) / 1024, 1)}"
                     f" | {base['fds']} | - | - | - |" + (" - |" if target else ""))
        prev = {"accepted": 0, **base}
        for cp in phase["checkpoints"]:
            n = cp["accepted"]
            if n <= 0:
                continue
            per = (cp["rss"] - base["rss"]) / n
            marg = (cp["rss"] - prev["rss"]) / max(1, n - prev["accepted"])
            row = (f"| {n} | {fmt(cp['rss'] / 1024, 1)} | {fmt((cp['pss'] or 0) / 1024, 1)} | "
                   f"{cp['fds']} | {fmt(per, 2)} | {fmt(marg, 2)} | "
                   f"{fmt(1048576 / per) if per > 0 else '-'} |")
            if target:  # judged on the marginal cost: see sessions_section
                ok = "met" if marg < TARGET_SESSION_KIB else "**missed**"
                row += f" < {TARGET_SESSION_KIB:.0f} KiB marginal ({ok}) |"
            lines.append(row)
            prev = cp
        r = phase.get("result", {})
        lines += ["", f"relay-bench: {r.get('accepted')} of {r.get('count')} "
                  f"{'answered' if what == 'connections' else 'accepted'}, {r.get('failed')} "
                  f"failed, {r.get('lost_while_held')} lost while held, "
                  f"{r.get('seconds', 0):.1f} s in all"
                  + (f"; first error: {r.get('first_error')}" if r.get("first_error") else "")
                  + "."]
        after = phase.get("after_release")
        if after and after.get("rss") is not None:
            lines.append(f"After releasing them all: VmRSS {fmt(after['rss'] / 1024, 1)} MiB, "
                         f"{after['fds']} open fds.")
        else:
            lines.append("**The gateway was no longer running after they were all released** "
                         "(see Notes).")
        return lines

    def sessions_section(self, sess):
        lines = ["## Idle supervisor sessions: gateway memory", "",
                 f"{self.knobs['SESSIONS']} sandboxes created through e2e/fake_driver.py in "
                 f"{sess.get('create_s', 0):.1f} s (the gateway mints a sandbox JWT for each; "
                 "the fake driver records it). Memory of the gateway (VmRSS from "
                 "/proc/PID/status, Pss from /proc/PID/smaps_rollup) read "
                 f"{self.knobs['SETTLE']:.0f} s after each checkpoint, when everything opened "
                 "so far was "
                 "answered and idle. \"marginal KiB\" = RSS growth since the previous "
                 "checkpoint / items added; it is the figure to read (and the target is judged "
                 "on it): growth / held at the first checkpoint is flattered by heap the fresh "
                 "gateway freed after startup and reuses first.", ""]
        conn = sess.get("connections")
        ses = sess.get("sessions")
        if ses:
            lines += ["Sessions: one ConnectSupervisor per sandbox (`authorization: Bearer "
                      "<sandbox JWT>`, hello, session_accepted), each on its own HTTP/2 "
                      "connection over the supervisor Unix socket, held idle (the gateway's "
                      "15 s heartbeats are read):", ""] + \
                self.hold_table(ses, "sessions", True) + [""]
        if conn:
            lines += ["Baseline on a fresh gateway (same state and database): the same number "
                      "of bare HTTP/2 connections on the same socket, one Health call each, "
                      "then idle:", ""] + self.hold_table(conn, "connections", False) + [""]
        ps = self.marginal_kib(ses) if ses else None
        if ps is not None:
            ok = "met" if ps < TARGET_SESSION_KIB else "**missed**"
            lines += [f"**Marginal cost of an idle session** (RSS growth between the last two "
                      f"checkpoints / sessions added): {fmt(ps, 2)} KiB, i.e. "
                      f"{fmt(1048576 / ps) if ps > 0 else '-'} sessions per GiB of gateway RSS; "
                      f"target < {TARGET_SESSION_KIB:.0f} KiB ({ok}).", ""]
        pc = self.marginal_kib(conn) if conn else None
        if pc is not None and ps is not None:
            lines += [f"Split (marginal costs): {fmt(pc, 2)} KiB of it is the HTTP/2 "
                      f"connection alone (bare connection after one Health call) and "
                      f"{fmt(ps - pc, 2)} KiB the session on top (its stream, registry entry, "
                      "heartbeat timer, ...).", ""]
        nofile = (ses or conn or {}).get("gw_nofile")
        if nofile:
            lines += [f"Gateway RLIMIT_NOFILE: {nofile} (raised by the bench before starting "
                      "it).", ""]
        return lines

    def header(self, started):
        """The run's description lines (kept in JSON_OUT for REPORT_FROM)."""
        knobs = (f"PARTS=\"{' '.join(PARTS)}\" STREAMS=\"{' '.join(map(str, STREAMS))}\" "
                 f"DIRS=\"{' '.join(DIRS)}\" BYTES={BYTES >> 20}M BYTES_MULTI={BYTES_MULTI >> 20}M "
                 f"REPS={REPS} WARMUP={WARMUP} CHUNK={CHUNK >> 10}K EXEC_COUNT={EXEC_COUNT} "
                 f"SESSIONS={SESSIONS} CHECKPOINTS=\"{' '.join(map(str, CHECKPOINTS))}\" "
                 f"CONN_BASELINE={int(CONN_BASELINE)} PERF={int(PERF)}")
        for var in ("GATEWAY_BIN", "TOOL", "DRIVER_BIN"):
            if os.environ.get(var):
                knobs += f" {var}={os.environ[var]}"
        lines = [f"- command: `{knobs} bench/relay_bench.sh` (or `/usr/bin/python3 "
                 "bench/relay_bench.py` with the same environment)"]
        lines.append(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
                     f"UTC; total runtime {time.monotonic() - started:.0f} s")
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        lines.append(f"- machine: {platform.node()}, {os.cpu_count()} CPUs (nproc), "
                     f"{platform.system()} {platform.release()}; load average at the end {load} "
                     "(shared machine: other jobs may run)")
        lines.append(f"- gateway binary: {self.u.GATEWAY_BIN}, {self.binary_id()}")
        lines.append("- nothing pinned: client, TCP peer, gateway, supervisor and PostgreSQL "
                     "share the 2 CPUs")
        return lines

    def report(self, header, fe, sess):
        lines = ["# Supervisor relays and sessions", ""] + header + [""]
        if fe and fe.get("forward"):
            t, per_rep = self.forward_table(fe["forward"])
            lines += ["## Relay throughput: ForwardTcp vs direct loopback TCP", "",
                      "Aggregate MB/s (10^6 bytes/s), median of the counted rounds; direct and "
                      "relay rounds alternate in the same run against the same TCP peer "
                      "(a sink and a source on 127.0.0.1, in a process of their own). push: "
                      "client -> gateway -> supervisor -> sink, clock stopped at the sink's last "
                      "byte; pull: source -> supervisor -> gateway -> client, clock stopped at "
                      "the client's last byte. One HTTP/2 connection per relay stream. CPU %: "
                      "median over the relay rounds, 100 = one CPU (the machine has 200); "
                      "\"others\" = the machine's busy time (user, system, irq, softirq) minus "
                      "the four processes, i.e. kernel network work done outside their "
                      "accounting plus other jobs on this shared host.", ""] + t + \
                     ["", "Rounds:", ""] + per_rep + [""]
        if fe and fe.get("exec"):
            e = fe["exec"]
            ok = ("not measured" if e["ok"] == 0 else
                  "met" if e["p50_ms"] < TARGET_EXEC_P50_MS else "**missed**")
            lines += ["## Exec round trip (`true`)", "",
                      f"{e['ok']} sequential ExecSandbox [\"true\"] calls on one connection "
                      f"after {e['warmup']} warm-up calls; {e['failures']} failed"
                      + (f" (first: {e['first_error']})" if e.get("first_error") else "") + ".",
                      "", "| p50 ms | p99 ms | mean ms | min ms | max ms | target p50 |",
                      "|---:|---:|---:|---:|---:|---|",
                      f"| {fmt(e['p50_ms'], 2)} | {fmt(e['p99_ms'], 2)} | {fmt(e['mean_ms'], 2)} "
                      f"| {fmt(e['min_ms'], 2)} | {fmt(e['max_ms'], 2)} | < "
                      f"{TARGET_EXEC_P50_MS:.0f} ms ({ok}) |", ""]
            ph = fe.get("exec_phases")
            if ph:
                lines += ["Phases of the exec, from the gateway's debug events of "
                          f"{self.knobs['EXEC_PHASES']} further calls (log timestamps have 1 ms "
                          "resolution; "
                          "debug logging on, so a little slower):", "",
                          "| phase | what happens | p50 ms | p99 ms |", "|---|---|---:|---:|"]
                what = {"open->claimed": "RelayOpen sent on the session; the supervisor dials "
                                         "its SSH socket and opens RelayStream",
                        "claimed->auth": "SSH handshake over the relay (key exchange, host key)",
                        "auth->exec": "auth none, session channel open, exec request",
                        "exec->running": "the supervisor's SSH server starts the command",
                        "running->done": "`true` runs; exit status and channel close"}
                for k, (p50, p99, n) in ph.items():
                    lines.append(f"| {k} | {what.get(k, '')} | {fmt(p50, 1)} | {fmt(p99, 1)} |")
                lines.append("")
            gd = fe.get("exec_gateway_ms") or []
            if gd:
                from events_bench import pct

                lines += [f"Inside the gateway (its `exec.end` dur_ms, from the request to the "
                          f"end of the call, {len(gd)} calls): p50 {fmt(pct(gd, 50), 2)} ms, "
                          f"p99 {fmt(pct(gd, 99), 2)} ms.", ""]
        if sess:
            lines += self.sessions_section(sess)
        if self.perf_text:
            lines += ["## perf: where the gateway and supervisor spend CPU during relays", "",
                      f"`perf record -g -F 999` on the gateway and supervisor PIDs during two "
                      f"{max(self.knobs['STREAMS'])}-stream relay rounds per direction; "
                      "`perf report "
                      "--no-children --sort comm,dso,symbol`, entries above 0.7 %.", ""]
            for d, text in self.perf_text:
                lines += [f"{d}:", "", "```"] + text + ["```", ""]
        if self.notes:
            lines += ["Notes:", ""] + [f"- {n}" for n in self.notes] + [""]
        lines += ["Commands run (relay-bench):", ""] + [f"- `{c}`" for c in self.commands] + [""]
        text = "\n".join(lines)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text)
        print(text)
        log(f"written to {OUT}")

    def run(self):
        started = time.monotonic()
        if not self.tool.exists():
            raise SystemExit(f"relay-bench not found at {self.tool}: run make (or set TOOL)")
        for prog in ("openshell-driver-process", "openshell-supervisor"):
            if "forward" in PARTS or "exec" in PARTS:
                if not (self.driver_dir / prog).exists():
                    raise SystemExit(f"{prog} not found in {self.driver_dir}")
        (self.work / "stubs").mkdir()
        self.stubs = self.u.generate_stubs(self.work / "stubs")
        self.start_postgres()
        fe = sess = None
        if "forward" in PARTS or "exec" in PARTS:
            fe = self.part_forward_exec()
        if "sessions" in PARTS:
            sess = self.part_sessions()
        header = self.header(started)
        if JSON_OUT:
            Path(JSON_OUT).write_text(json.dumps(
                {"header": header, "knobs": self.knobs, "fe": fe, "sess": sess,
                 "notes": self.notes,
                 "commands": self.commands, "perf": self.perf_text}, indent=1, default=str))
            log(f"raw results in {JSON_OUT}")
        self.report(header, fe, sess)

    def report_from(self, path):
        """REPORT_FROM: the Markdown again from a JSON_OUT file (no run)."""
        data = json.loads(Path(path).read_text())
        self.notes, self.commands, self.perf_text = data["notes"], data["commands"], data["perf"]
        self.knobs = data["knobs"]

        def intkeys(fe):
            if fe and fe.get("forward"):
                fe["forward"] = {int(k): v for k, v in fe["forward"].items()}
            return fe
        self.report(data["header"], intkeys(data["fe"]), data["sess"])


def main():
    if REPORT_FROM:
        b = Bench()
        try:
            b.report_from(REPORT_FROM)
        finally:
            shutil.rmtree(b.work, ignore_errors=True)
        return 0
    return run_until_signal(Bench())


if __name__ == "__main__":
    sys.exit(main())
