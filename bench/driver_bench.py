#!/usr/bin/python3
"""bench/driver_bench.py - sandbox creation through the compute drivers.

Starts its own throwaway PostgreSQL 15 (fsync on, 127.0.0.1, a free port)
and openshell-gateway processes on it (the gateway pinned to SERVER_CPU
with taskset, this process to CLIENT_CPU), then measures:

  (a) Cold create-to-backend-running latency with the managed process
      driver (the gateway's default): N sandboxes, one after another, each
      `/bin/sh -c "sleep 600"`. Per sandbox: t0 = just before CreateSandbox
      is sent; "reply" = CreateSandbox's response received; "running" =
      the first WatchSandbox(follow_status) snapshot (stream opened right
      after the reply; its first message is the current state) carrying
      the Ready=False / SupervisorNotConnected condition, i.e. the driver
      reported the sandbox process running. Each sandbox is deleted (and
      its GetSandbox NOT_FOUND awaited) before the next, outside the timed
      window. Reported: p50 / p99 (nearest rank), min, max.
  (b) Create throughput with e2e/fake_driver.py as the driver (it answers
      ValidateSandboxCreate and CreateSandbox at once from memory): C
      client threads (one channel each) call CreateSandbox back to back
      for WARMUP + D seconds; sandboxes/s = successful replies that
      arrived within the last D seconds / D. Every run uses a fresh
      database, gateway and fake driver; REPEAT runs; the table shows
      medians (min-max), reply latency p50/p99 and the CPU share of the
      gateway, PostgreSQL, the fake driver and this client (100 = one CPU),
      because on a small machine the Python driver or client can be the
      limit rather than the gateway.

Environment (defaults in brackets):
  N [30]  C [16]  D [10]  WARMUP [2]  REPEAT [3]
  SERVER_CPU [0] CLIENT_CPU [1]
  GATEWAY_BIN [build/openshell-gateway]  DRIVER_BIN [dir of the gateway]
  PG_BIN [/usr/lib/postgresql/15/bin]
  OUT [bench/results/drivers.md]  KEEP [0] (1 keeps the work directory)
  PARTS ["a b"] (run only some parts)
Everything listens on 127.0.0.1 or Unix sockets in the work directory;
every process started here is stopped by PID with bounded waits; every
loop is bounded in time.
"""

import datetime
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "e2e"))
sys.path.insert(0, str(REPO / "bench"))

from events_bench import (  # noqa: E402
    CpuMeter, durable_postgres, fmt, med, pct, proc_cpu_s, run_until_signal,
    stop_bench_processes)


def env_int(name, default):
    return int(os.environ.get(name, default))


N = env_int("N", 30)
C = env_int("C", 16)
D = env_int("D", 10)
WARMUP = env_int("WARMUP", 2)
REPEAT = env_int("REPEAT", 3)
SERVER_CPU = env_int("SERVER_CPU", 0)
CLIENT_CPU = env_int("CLIENT_CPU", 1)
OUT = Path(os.environ.get("OUT", str(REPO / "bench" / "results" / "drivers.md")))
KEEP = os.environ.get("KEEP", "0") == "1"
PARTS = os.environ.get("PARTS", "a b").split()
RUNNING_TIMEOUT = 30.0
PG_STATS = os.environ.get("PG_STATS", "0") == "1"  # where PostgreSQL time goes


def log(msg):
    print(f"[driver-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def backend_running(sb):
    return any(c.type == "Ready" and c.status.lower() == "false"
               and c.reason == "SupervisorNotConnected" for c in sb.status.conditions)


class Bench:
    def __init__(self):
        import utils

        self.u = utils
        self.work = Path(tempfile.mkdtemp(prefix="osdrvbench-", dir="/tmp"))
        self.pg = None
        self.pg_lock = None
        self.gateways = []
        self.fakes = []
        self.gw_n = 0
        self.taskset = shutil.which("taskset")
        self.stubs = None
        self.notes = []

    # -- servers ------------------------------------------------------------

    def start_postgres(self):
        self.pg_lock = self.u.PortLock()
        extra = ("shared_preload_libraries = 'pg_stat_statements'\n"
                 "pg_stat_statements.track = all\n") if PG_STATS else ""
        self.pg, _ = durable_postgres(self.u, self.pg_lock.port, "osdrvbench-pg-", extra)
        log(f"postgres up on 127.0.0.1:{self.pg.port}")

    def new_db(self, name):
        self.pg.sql(f"CREATE DATABASE {name}")
        if PG_STATS:
            self.pg.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", dbname=name)
        return f"postgresql://postgres@127.0.0.1:{self.pg.port}/{name}"

    def start_gateway(self, db_url, *extra):
        u = self.u
        if self.taskset:
            u.GATEWAY_WRAPPER = [self.taskset, "-c", str(SERVER_CPU)]
        self.gw_n += 1
        gw = u.Gateway(self.work / f"gw{self.gw_n}", name=f"gw{self.gw_n}")
        self.gateways.append(gw)
        gw.start(u.h2c_args("--db-url", db_url, *extra), timeout=60)
        log(f"gateway pid {gw.pid} on {gw.target} {' '.join(map(str, extra))}")
        return gw

    def stop_gateway(self, gw):
        code = gw.stop(timeout=15)
        if code != 0:
            self.notes.append(f"{gw.name} exited {code} on SIGTERM")

    def start_fake(self, name):
        from drivers_util import DriverProcess

        d = self.work / f"fake-{name}"
        d.mkdir()
        drv = DriverProcess.fake(d / "driver.sock", name="fakebench", log_path=d / "driver.log",
                                 stubs_dir=self.stubs.outdir, extra=["--workers", "128"])
        if self.taskset:  # this process is pinned; the driver is not
            drv.cmd = [self.taskset, "-c", f"0-{os.cpu_count() - 1}", *drv.cmd]
        self.fakes.append(drv)
        drv.start(timeout=30)
        return drv

    def stop_all(self):
        stop_bench_processes(self, KEEP, log)

    # -- (a) create-to-running latency ----------------------------------------

    def part_a(self):
        import grpc

        pb = self.stubs.openshell_pb2
        gw = self.start_gateway(self.new_db("lat"))
        ch = gw.channel()
        stub = self.stubs.openshell_pb2_grpc.OpenShellStub(ch)
        reply, running = [], []
        errors = 0
        try:
            for i in range(N):
                name = f"lat-{i}"
                spec = pb.SandboxSpec(command=["/bin/sh", "-c", "sleep 600"])
                t0 = time.monotonic()
                try:
                    sb = stub.CreateSandbox(pb.CreateSandboxRequest(name=name, spec=spec),
                                            timeout=30).sandbox
                except grpc.RpcError as e:
                    errors += 1
                    log(f"create {name}: {e.code()} {e.details()}")
                    continue
                t1 = time.monotonic()
                call = stub.WatchSandbox(pb.WatchSandboxRequest(id=sb.metadata.id,
                                                                follow_status=True),
                                         timeout=RUNNING_TIMEOUT)
                t2 = None
                try:
                    for ev in call:
                        if ev.WhichOneof("payload") == "sandbox" and backend_running(ev.sandbox):
                            t2 = time.monotonic()
                            break
                except grpc.RpcError as e:
                    log(f"watch {name}: {e.code()} {e.details()}")
                call.cancel()
                if t2 is None:
                    errors += 1
                else:
                    reply.append(t1 - t0)
                    running.append(t2 - t0)
                stub.DeleteSandbox(pb.DeleteSandboxRequest(name=name), timeout=30)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        stub.GetSandbox(pb.GetSandboxRequest(name=name), timeout=10)
                    except grpc.RpcError as e:
                        if e.code() == grpc.StatusCode.NOT_FOUND:
                            break
                    time.sleep(0.02)
        finally:
            ch.close()
            self.stop_gateway(gw)
        log(f"(a) {len(running)}/{N} sandboxes, running p50 "
            f"{1000 * (pct(running, 50) or 0):.1f} ms")
        return {"reply": reply, "running": running, "errors": errors}

    # -- (b) create throughput --------------------------------------------------

    def part_b_run(self, r):
        import grpc

        pb = self.stubs.openshell_pb2
        drv = self.start_fake(f"r{r}")
        gw = self.start_gateway(self.new_db(f"tput{r}"), "--drivers", "fakebench",
                                "--compute-driver-socket", drv.socket)
        barrier = threading.Barrier(C + 1)
        t_marks = {}
        results = [None] * C

        def client(i):
            ch = gw.channel()
            call = ch.unary_unary("/openshell.v1.OpenShell/CreateSandbox")
            done, errs = [], {}
            try:
                barrier.wait(30)
                k = 0
                while True:
                    t0 = time.monotonic()
                    if t0 >= t_marks["end"]:
                        break
                    req = pb.CreateSandboxRequest(
                        name=f"b{r}-{i}-{k}",
                        spec=pb.SandboxSpec(command=["/bin/sh", "-c", "sleep 600"]),
                    ).SerializeToString()
                    k += 1
                    try:
                        call(req, timeout=30)
                        done.append((time.monotonic(), time.monotonic() - t0))
                    except grpc.RpcError as e:
                        errs[e.code().name] = errs.get(e.code().name, 0) + 1
            finally:
                ch.close()
            results[i] = (done, errs)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(C)]
        t_marks["end"] = time.monotonic() + 3600
        for t in threads:
            t.start()
        barrier.wait(30)
        t_begin = time.monotonic()
        t_marks["end"] = t_begin + WARMUP + D
        time.sleep(WARMUP)  # warm-up phase of the run (not measured)
        meter = CpuMeter(gw.pid, self.pg.postmaster_pid())
        fake0 = proc_cpu_s(drv.pid)
        t_meas = time.monotonic()
        for t in threads:
            t.join(WARMUP + D + 60)
        cpu = meter.stop()
        fake1 = proc_cpu_s(drv.pid)
        window_end = t_marks["end"]
        ok, lat, errs = 0, [], {}
        for res in results:
            if res is None:
                continue
            for when, took in res[0]:
                if t_meas <= when <= window_end:
                    ok += 1
                    lat.append(took)
            for k, v in res[1].items():
                errs[k] = errs.get(k, 0) + v
        span = window_end - t_meas
        stored = int(self.pg.sql("SELECT count(*) FROM sandboxes WHERE deleted_at IS NULL",
                                 dbname=f"tput{r}").strip())
        if PG_STATS and r == 1:
            self.dump_pg_stats(f"tput{r}", stored)
        self.stop_gateway(gw)
        drv.stop()
        out = {"rate": ok / span if span > 0 else 0.0, "ok": ok, "errors": errs,
               "p50_ms": 1000 * pct(lat, 50) if lat else None,
               "p99_ms": 1000 * pct(lat, 99) if lat else None,
               "gw_pct": cpu["gw_pct"], "pg_pct": cpu["pg_pct"],
               "client_pct": cpu["client_pct"],
               "fake_pct": (100.0 * (fake1 - fake0) / cpu["wall"]
                            if fake0 is not None and fake1 is not None else None),
               "machine_pct": cpu["machine_pct"], "stored": stored}
        # CpuMeter counts the fake driver as foreign: take it out.
        out["foreign_pct"] = max(0.0, cpu["foreign_pct"] - (out["fake_pct"] or 0.0))
        log(f"(b) run {r}: {out['rate']:.0f} sandboxes/s, errors {errs}, "
            f"gateway {fmt(cpu['gw_pct'])} %, fake {fmt(out['fake_pct'])} %")
        return out

    def dump_pg_stats(self, dbname, creates):
        """Where PostgreSQL's time goes per created sandbox (PG_STATS=1):
        pg_stat_statements of the whole run 1 (warm-up included), per
        statement: calls and execution time per stored sandbox."""
        rows = self.pg.sql(
            "SELECT calls, round(total_exec_time::numeric, 1), "
            "regexp_replace(left(query, 90), '\\s+', ' ', 'g') FROM pg_stat_statements "
            f"WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '{dbname}') "
            "ORDER BY total_exec_time DESC LIMIT 15", dbname=dbname)
        out = ["| calls per create | exec ms per create | statement |", "|---:|---:|---|"]
        for line in rows.strip().splitlines():
            calls, ms, q = line.split("|", 2)
            out.append(f"| {int(calls) / max(creates, 1):.2f} | {float(ms) / max(creates, 1):.3f} "
                       f"| `{q.strip()}` |")
        path = REPO / "bench" / "results" / "drivers-pgstats.md"
        path.write_text("# PostgreSQL time per created sandbox (driver_bench PG_STATS=1, run 1)\n\n"
                        f"{creates} sandboxes stored; top statements by total execution time.\n\n"
                        + "\n".join(out) + "\n")
        log(f"pg_stat_statements written to {path}")

    def part_b(self):
        return [self.part_b_run(r) for r in range(1, REPEAT + 1)]

    # -- report ---------------------------------------------------------------

    def binary_id(self):
        import hashlib

        p = self.u.GATEWAY_BIN
        h = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        mt = datetime.datetime.fromtimestamp(p.stat().st_mtime, datetime.timezone.utc)
        return f"sha256 {h}..., built {mt.strftime('%Y-%m-%d %H:%M:%S UTC')}"

    def report(self, started, a, b):
        def ms(v):
            return fmt(1000 * v, 1) if v is not None else "-"

        def rng(vals, nd=0):
            vals = [v for v in vals if v is not None]
            if not vals:
                return "-"
            return f"{fmt(med(vals), nd)} ({fmt(min(vals), nd)}-{fmt(max(vals), nd)})"

        lines = ["# Compute drivers: sandbox creation", ""]
        lines.append(f"- command: `/usr/bin/python3 bench/driver_bench.py` "
                     f"(N={N} C={C} D={D} WARMUP={WARMUP} REPEAT={REPEAT})")
        lines.append(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
                     f"UTC; total runtime {time.monotonic() - started:.0f} s")
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        lines.append(f"- machine: {platform.node()}, {os.cpu_count()} CPUs, "
                     f"{platform.system()} {platform.release()}; load average at the end "
                     f"{load} (shared machine)")
        lines.append(f"- gateway binary: {self.u.GATEWAY_BIN}, {self.binary_id()}")
        pin = "no taskset: nothing pinned"
        if self.taskset:
            pin = (f"gateway pinned to CPU {SERVER_CPU}, this client to CPU {CLIENT_CPU} "
                   "(taskset); PostgreSQL and the fake driver unpinned; the managed process "
                   "driver and its sandboxes inherit the gateway's CPU")
        lines.append(f"- {pin}; PostgreSQL 15 with fsync=on, synchronous_commit=on")
        lines.append("")
        if a is not None:
            lines += ["## (a) Create to backend running, managed process driver", "",
                      f"{len(a['running'])} of {N} sandboxes created one after another "
                      f"(`/bin/sh -c \"sleep 600\"`), {a['errors']} errors; time from sending "
                      "CreateSandbox to the reply, and to the first WatchSandbox snapshot "
                      "with Ready=False/SupervisorNotConnected (driver reports the process "
                      "running).", "",
                      "| interval | p50 ms | p99 ms | min ms | max ms |",
                      "|---|---:|---:|---:|---:|"]
            for label, vals in (("CreateSandbox reply", a["reply"]),
                                ("create to backend running", a["running"])):
                lines.append(f"| {label} | {ms(pct(vals, 50))} | {ms(pct(vals, 99))} | "
                             f"{ms(min(vals) if vals else None)} | "
                             f"{ms(max(vals) if vals else None)} |")
            lines.append("")
        if b is not None:
            lines += ["## (b) Create throughput, fake driver answering at once", "",
                      f"{C} client threads calling CreateSandbox back to back, {WARMUP} s "
                      f"warm-up then {D} s measured, {REPEAT} runs (fresh database, gateway "
                      "and fake driver each); median (min-max). CPU % = share of one CPU "
                      "during the measured window; \"others\" = the rest of the machine's busy "
                      "time (other jobs on this shared host).", "",
                      "| sandboxes/s | reply p50 ms | reply p99 ms | gateway CPU % | "
                      "PostgreSQL CPU % | fake driver CPU % | client CPU % | others CPU % | "
                      "errors |",
                      "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
            errs = {}
            for run in b:
                for k, v in run["errors"].items():
                    errs[k] = errs.get(k, 0) + v
            lines.append(
                f"| {rng([x['rate'] for x in b])} | {rng([x['p50_ms'] for x in b], 1)} | "
                f"{rng([x['p99_ms'] for x in b], 1)} | {rng([x['gw_pct'] for x in b])} | "
                f"{rng([x['pg_pct'] for x in b])} | {rng([x['fake_pct'] for x in b])} | "
                f"{rng([x['client_pct'] for x in b])} | "
                f"{rng([x['foreign_pct'] for x in b])} | "
                f"{', '.join(f'{k} {v}' for k, v in sorted(errs.items())) or 'none'} |")
            lines += ["", "Per run:", "",
                      "| run | sandboxes/s | replies counted | rows stored | p50 ms | p99 ms |",
                      "|---:|---:|---:|---:|---:|---:|"]
            for i, run in enumerate(b, 1):
                lines.append(f"| {i} | {fmt(run['rate'])} | {run['ok']} | {run['stored']} | "
                             f"{fmt(run['p50_ms'], 1)} | {fmt(run['p99_ms'], 1)} |")
            lines.append("")
        if self.notes:
            lines += ["Notes:", ""] + [f"- {n}" for n in self.notes] + [""]
        text = "\n".join(lines)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text)
        print(text)
        log(f"written to {OUT}")

    def run(self):
        started = time.monotonic()
        (self.work / "stubs").mkdir()
        self.stubs = self.u.generate_stubs(self.work / "stubs")
        self.start_postgres()  # before pinning this process: PostgreSQL stays unpinned
        if self.taskset:
            os.sched_setaffinity(0, {CLIENT_CPU})
        a = self.part_a() if "a" in PARTS else None
        b = self.part_b() if "b" in PARTS else None
        self.report(started, a, b)


def main():
    return run_until_signal(Bench())


if __name__ == "__main__":
    sys.exit(main())
