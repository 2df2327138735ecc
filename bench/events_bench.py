#!/usr/bin/python3
"""bench/events_bench.py - lifecycle event append rate and delivery latency.

Starts its own throwaway PostgreSQL 15 (fsync on, 127.0.0.1, a free port)
and an openshell-gateway on it (pinned to SERVER_CPU with taskset; this
process, its threads and pgbench run on CLIENT_CPU), then measures:

  1. Append rate: WRITERS threads each call AddWorkspaceMember (one
     lifecycle event per call) for DURATION seconds; events/s counted from
     successful replies. In the same run, pgbench on the same server does
     the same SQL work with the same client count and duration:
       member         SELECT FROM gw_member_add(...)  (exactly what the
                      gateway runs per call, NOTIFY included)
       insert         one plain INSERT of an event row into a table shaped
                      like sandbox_events (the raw floor)
       insert_notify  the same INSERT plus pg_notify() in one transaction
                      (isolates what NOTIFY costs at commit)
     with synchronous_commit=on and then off (ALTER SYSTEM +
     pg_reload_conf(), and the gateway restarted so its connections start
     with the new value). Every configuration runs REPEAT times,
     interleaved; tables show medians (min-max beside them).
  2. Delivery latency: one writer appends LAT_RATE events/s for
     LAT_SECONDS s while N Subscribe streams (N in LAT_SUBS) follow the
     workspace; latency = arrival at the subscriber - the writer's
     acknowledgement (gateway reply received), both CLOCK_MONOTONIC on this
     host. The subscribers are a minimal HTTP/2 reader in a child process
     (several streams per connection, huge flow-control windows, one
     timestamp per recv()), because grpcio in Python cannot absorb
     N x LAT_RATE messages/s on one CPU; its CPU use is reported. Each
     arrival gets two timestamps: when recv() returned in the reader
     (user space, includes the reader's own queueing) and the kernel's
     receive time of the data (SO_TIMESTAMPNS, CLOCK_REALTIME, compared
     with the writer's time.time() at the reply), which excludes it.

Environment (defaults in brackets):
  DURATION [10] WARMUP [2] REPEAT [3] WRITERS [8] ROTATE [500]
  PGBENCH_SCRIPTS ["member member@4 insert insert_notify"] (NAME@N: N clients)
  SYNC_MODES ["on off"]
  LAT_SUBS ["1 100 1000"] LAT_RATE [100] LAT_SECONDS [10] LAT_CONNS [10]
  SERVER_CPU [0] CLIENT_CPU [1]
  NOISE_MAX [30] NOISE_RETRIES [1]: an append run during which other jobs
      on the machine ("foreign" CPU: machine busy time minus the gateway,
      this process, pgbench and our PostgreSQL) took more than NOISE_MAX %
      of a CPU is run again, up to NOISE_RETRIES times; the quietest try
      counts, and every try's foreign CPU % is in the report; extra tries
      stop once they have added RETRY_BUDGET [150] seconds in total
  GATEWAY_BIN [build/openshell-gateway]  PG_BIN [/usr/lib/postgresql/15/bin]
  OUT [bench/results/events.md]  JSON_OUT [none]: raw measurements as JSON
  KEEP [0] (1 keeps the work directory)
Everything listens on 127.0.0.1 only; every process started here is
stopped by PID with bounded waits; every loop is bounded in time.
"""

import array
import datetime
import json
import os
import platform
import re
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "e2e"))


def env_int(name, default):
    return int(os.environ.get(name, default))


DURATION = env_int("DURATION", 10)
WARMUP = env_int("WARMUP", 2)
REPEAT = env_int("REPEAT", 3)
WRITERS = env_int("WRITERS", 8)
ROTATE = env_int("ROTATE", 500)  # members per workspace before moving on (limit is 1000)
# NAME or NAME@CLIENTS (default WRITERS clients); member@4 matches the
# gateway's 4 pooled query connections.
PGBENCH_SCRIPTS = os.environ.get("PGBENCH_SCRIPTS",
                                 "member member@4 insert insert_notify").split()
SYNC_MODES = os.environ.get("SYNC_MODES", "on off").split()
LAT_SUBS = [int(x) for x in os.environ.get("LAT_SUBS", "1 100 1000").split()]
LAT_RATE = env_int("LAT_RATE", 100)
LAT_SECONDS = env_int("LAT_SECONDS", 10)
LAT_CONNS = env_int("LAT_CONNS", 10)
SERVER_CPU = env_int("SERVER_CPU", 0)
CLIENT_CPU = env_int("CLIENT_CPU", 1)
OUT = Path(os.environ.get("OUT", str(REPO / "bench" / "results" / "events.md")))
NOISE_MAX = env_int("NOISE_MAX", 30)  # foreign CPU % (of one CPU) that makes a run count as noisy
NOISE_RETRIES = env_int("NOISE_RETRIES", 1)  # extra tries of a noisy append run
RETRY_BUDGET = env_int("RETRY_BUDGET", 150)  # seconds that extra tries may add in total
KEEP = os.environ.get("KEEP", "0") == "1"
JSON_OUT = os.environ.get("JSON_OUT", "")  # also write every measurement here as JSON

ADD_MEMBER = "/openshell.v1.OpenShell/AddWorkspaceMember"
SUBSCRIBE = "/openshell.events.v1.Events/Subscribe"
ROLE_USER = 1
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux asm-generic value
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[events-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# small helpers


def durable_postgres(u, port, prefix, extra_conf=""):
    """A throwaway PostgreSQL 15 tuned for measuring commits: utils.Postgres
    tunes for tests (fsync off); later lines win in postgresql.conf. Not
    under a 0700 work dir: the postgres user must enter it. Returns the
    started server and its base directory."""
    basedir = Path(tempfile.mkdtemp(prefix=prefix))
    pg = u.Postgres(basedir, port)
    pg.initdb()
    with open(pg.pgdata / "postgresql.conf", "a") as f:
        f.write("\n# bench: durable commits\n"
                "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"
                "log_connections = off\nmax_connections = 100\n" + extra_conf)
    pg.start()
    return pg, basedir


def proc_cpu_s(pid):
    """utime+stime of |pid| (all threads) in seconds; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pg_cluster_cpu_s(postmaster):
    """CPU seconds of a PostgreSQL cluster: the postmaster (with the children
    it has reaped: cutime/cstime) plus its live children (backends)."""
    if not postmaster:
        return None
    try:
        f = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    total = sum(int(x) for x in f[11:15])
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            g = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(g[1]) == postmaster:
            total += int(g[11]) + int(g[12])
    return total / CLK_TCK


def machine_busy():
    """(busy, total) jiffies over all CPUs from /proc/stat. Busy is user,
    nice, system and steal: irq/softirq time (loopback TCP is processed
    there, for our traffic too) is left out so that it does not count as
    other people's load."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in parts[:8]] + [0] * max(0, 8 - len(parts))
    busy = vals[0] + vals[1] + vals[2] + vals[7]
    return busy, sum(vals[:8])


class CpuMeter:
    """CPU% over a window (100 = one CPU fully busy) of: the gateway, this
    process with the children it waited for (pgbench), our PostgreSQL
    cluster, the whole machine (out of 100 x nproc), and "foreign": the
    machine minus those three, i.e. other people's jobs on this shared host."""

    def __init__(self, gw_pid, postmaster=None):
        self.gw_pid = gw_pid
        self.pm = postmaster
        self.t0 = time.monotonic()
        self.gw0 = proc_cpu_s(gw_pid) if gw_pid else None
        self.pg0 = pg_cluster_cpu_s(postmaster)
        t = os.times()
        self.me0 = t.user + t.system
        self.ch0 = t.children_user + t.children_system
        self.m0 = machine_busy()

    def stop(self):
        wall = time.monotonic() - self.t0
        gw1 = proc_cpu_s(self.gw_pid) if self.gw_pid else None
        pg1 = pg_cluster_cpu_s(self.pm)
        t = os.times()
        m1 = machine_busy()
        ncpu = os.cpu_count() or 1
        me = t.user + t.system - self.me0
        ch = t.children_user + t.children_system - self.ch0
        machine = 100.0 * ncpu * (m1[0] - self.m0[0]) / max(1, m1[1] - self.m0[1])
        out = {"wall": wall, "client_pct": 100.0 * me / wall,
               "children_pct": 100.0 * ch / wall, "machine_pct": machine}
        out["gw_pct"] = (100.0 * (gw1 - self.gw0) / wall
                         if gw1 is not None and self.gw0 is not None else None)
        out["pg_pct"] = (100.0 * (pg1 - self.pg0) / wall
                         if pg1 is not None and self.pg0 is not None else None)
        ours = out["client_pct"] + out["children_pct"] + (out["gw_pct"] or 0) + \
            (out["pg_pct"] or 0)
        out["foreign_pct"] = max(0.0, machine - ours)
        return out


def pct(values, p):
    """Nearest-rank percentile of a list (sorted here)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, nd=0):
    if v is None:
        return "-"
    return f"{v:,.{nd}f}"


class WaitSampler:
    """Samples what the bench database's active client backends wait on
    (pg_stat_activity.wait_event_type/wait_event, "CPU" when none) every
    |interval| s through one long-lived psql, until stop()."""

    QUERY = ("SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity "
             "WHERE datname = 'bench' AND backend_type = 'client backend' AND state = 'active' "
             "AND pid <> pg_backend_pid();")

    def __init__(self, pg, interval=0.1):
        self.counts = {}
        self.samples = 0
        self.interval = interval
        self._stop = threading.Event()
        self.proc = subprocess.Popen(
            [str(pg.utils_pg_bin / "psql"), "-X", "-q", "-A", "-t", "-h", pg.host,
             "-p", str(pg.port), "-U", pg.user, "-d", "bench"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                self.proc.stdin.write(self.QUERY + "\n\\echo __END__\n")
                self.proc.stdin.flush()
                while True:
                    line = self.proc.stdout.readline()
                    if not line or line.strip() == "__END__":
                        break
                    k = line.strip()
                    if k:
                        self.counts[k] = self.counts.get(k, 0) + 1
                if not line:
                    return
                self.samples += 1
                self._stop.wait(self.interval)
        except (OSError, ValueError):
            pass

    def stop(self):
        self._stop.set()
        self.thread.join(5)
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        total = sum(self.counts.values())
        top = sorted(self.counts.items(), key=lambda kv: -kv[1])
        # share of sampled active backends, and mean number of active backends
        return {"waits": [(k, round(100.0 * v / total)) for k, v in top[:4]] if total else [],
                "wait_counts": dict(self.counts),
                "active_avg": total / self.samples if self.samples else 0}


# ---------------------------------------------------------------------------
# minimal HTTP/2 subscriber (child process)
#
# Frames are parsed by hand: no HPACK decoding is needed because only DATA
# payloads (gRPC messages) matter; response HEADERS are skipped. Requests use
# literal header fields without indexing (utils.hpack_literal).

def read_varint(buf, i):
    shift = 0
    val = 0
    while True:
        b = buf[i]
        i += 1
        val |= (b & 0x7F) << shift
        if b < 0x80:
            return val, i
        shift += 7


def skip_field(buf, i, wtype):
    if wtype == 0:
        _, i = read_varint(buf, i)
    elif wtype == 1:
        i += 8
    elif wtype == 2:
        n, i = read_varint(buf, i)
        i += n
    elif wtype == 5:
        i += 4
    else:
        raise ValueError(f"wire type {wtype}")
    return i


def field1_varint(buf, start, end):
    """Field 1 (varint) of the message in buf[start:end]; 0 when absent."""
    i = start
    while i < end:
        tag, i = read_varint(buf, i)
        if tag == 0x08:
            v, _ = read_varint(buf, i)
            return v
        i = skip_field(buf, i, tag & 7)
    return 0


def parse_subscribe_response(msg):
    """('event', seq) or ('caught_up', seq) or (None, 0)."""
    i, end = 0, len(msg)
    while i < end:
        tag, i = read_varint(msg, i)
        if tag in (0x0A, 0x12):
            n, i = read_varint(msg, i)
            return ("event" if tag == 0x0A else "caught_up"), field1_varint(msg, i, i + n)
        i = skip_field(msg, i, tag & 7)
    return None, 0


def encode_subscribe_request(after, workspace):
    def varint(v):
        out = bytearray()
        while True:
            b = v & 0x7F
            v >>= 7
            if v:
                out.append(b | 0x80)
            else:
                out.append(b)
                return bytes(out)
    ws = workspace.encode()
    return b"\x08" + varint(after) + b"\x12" + varint(len(ws)) + ws


def reader_main(argv):
    """Child: python3 events_bench.py --reader PORT WORKSPACE AFTER NSTREAMS NCONNS OUTPREFIX.

    Prints READY once every stream got CaughtUp; then reads stdin for
    "expect N" (stop when every stream has seq >= N, or 15 s later) or
    "stop". Writes OUTPREFIX.json, .seq (int64) and .t (float64)."""
    import utils  # noqa: E402  (h2 helpers)

    port, workspace, after, nstreams, nconns, outprefix = argv
    port, after, nstreams, nconns = int(port), int(after), int(nstreams), int(nconns)
    deadline = time.monotonic() + 300
    req = utils.grpc_frame(encode_subscribe_request(after, workspace))
    headers = [(":method", "POST"), (":scheme", "http"), (":path", SUBSCRIBE),
               (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"),
               ("te", "trailers")]
    block = b"".join(utils.hpack_literal(n, v) for n, v in headers)
    big = 0x7FFFFFFF
    settings = (utils.h2_frame(utils.H2_SETTINGS, 0, 0,
                               (2).to_bytes(2, "big") + (0).to_bytes(4, "big")  # no push
                               + (4).to_bytes(2, "big") + big.to_bytes(4, "big")))  # window
    conn_window = utils.h2_frame(8, 0, 0, (big - 65535).to_bytes(4, "big"))

    sel = selectors.DefaultSelector()
    streams = {}  # (conn index, sid) -> state
    conns = []
    per_conn = [nstreams // nconns + (1 if k < nstreams % nconns else 0) for k in range(nconns)]
    for ci, n in enumerate(per_conn):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        out = bytearray(utils.H2_PREFACE + settings + conn_window)
        for k in range(n):
            sid = 1 + 2 * k
            out += utils.h2_frame(utils.H2_HEADERS, utils.H2_END_HEADERS, sid, block)
            out += utils.h2_frame(utils.H2_DATA, utils.H2_END_STREAM, sid, req)
            streams[(ci, sid)] = {"buf": bytearray(), "seq": array.array("q"),
                                  "t": array.array("d"), "k": array.array("d"),
                                  "caught": False, "ended": None, "last": 0}
        sock.sendall(out)
        sock.setblocking(False)
        conn = {"i": ci, "sock": sock, "buf": bytearray(), "dead": False}
        conns.append(conn)
        sel.register(sock, selectors.EVENT_READ, conn)
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, None)

    n_caught = 0
    ready_printed = False
    expect = None
    expect_deadline = None
    stop = False
    cpu0 = wall0 = None
    errors = []

    def handle_msg(key, st, msg, t, tk):
        nonlocal n_caught
        kind, seq = parse_subscribe_response(msg)
        if kind == "event":
            st["seq"].append(seq)
            st["t"].append(t)
            st["k"].append(tk)
            st["last"] = seq
        elif kind == "caught_up":
            if not st["caught"]:
                st["caught"] = True
                n_caught += 1

    def handle_frames(conn, t, tk):
        buf = conn["buf"]
        pos, n = 0, len(buf)
        ci = conn["i"]
        while n - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            if n - pos < 9 + length:
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            p0, p1 = pos + 9, pos + 9 + length
            pos = p1
            if ftype == utils.H2_DATA:
                if flags & 0x8:  # PADDED
                    pad = buf[p0]
                    p0, p1 = p0 + 1, p1 - pad
                st = streams.get((ci, sid))
                if st is None:
                    continue
                sb = st["buf"]
                sb += buf[p0:p1]
                while len(sb) >= 5:
                    mlen = int.from_bytes(sb[1:5], "big")
                    if len(sb) < 5 + mlen:
                        break
                    handle_msg((ci, sid), st, bytes(sb[5:5 + mlen]), t, tk)
                    del sb[:5 + mlen]
                if flags & utils.H2_END_STREAM and st["ended"] is None:
                    st["ended"] = "data-end"
            elif ftype == utils.H2_HEADERS:
                st = streams.get((ci, sid))
                if st is not None and flags & utils.H2_END_STREAM and st["ended"] is None:
                    st["ended"] = "trailers"
            elif ftype == utils.H2_RST_STREAM:
                st = streams.get((ci, sid))
                if st is not None and st["ended"] is None:
                    st["ended"] = "rst"
            elif ftype == utils.H2_SETTINGS and not flags & utils.H2_ACK:
                conn["sock"].sendall(utils.h2_frame(utils.H2_SETTINGS, utils.H2_ACK, 0))
            elif ftype == utils.H2_PING and not flags & utils.H2_ACK:
                conn["sock"].sendall(utils.h2_frame(utils.H2_PING, utils.H2_ACK, 0,
                                                    bytes(buf[p0:p1])))
            elif ftype == utils.H2_GOAWAY:
                errors.append(f"GOAWAY on connection {ci}")
                conn["dead"] = True
        del buf[:pos]

    while not stop and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            conn = key.data
            if conn is None:
                line = os.read(sys.stdin.fileno(), 4096).decode()
                if not line:
                    stop = True
                for cmd in line.split("\n"):
                    if cmd.startswith("expect "):
                        expect = int(cmd.split()[1])
                        expect_deadline = time.monotonic() + 15
                    elif cmd.strip() == "stop":
                        stop = True
                continue
            sock = conn["sock"]
            tk = 0.0
            try:
                # Small reads keep the kernel timestamp (that of the newest
                # segment read) close to each message's own arrival.
                chunk, anc, _, _ = sock.recvmsg(16384, 64)
                for level, ctype, data in anc:
                    if level == socket.SOL_SOCKET and ctype == SCM_TIMESTAMPNS:
                        sec, nsec = int.from_bytes(data[0:8], "little"), \
                            int.from_bytes(data[8:16], "little")
                        tk = sec + nsec / 1e9
            except BlockingIOError:
                continue
            except OSError as e:
                errors.append(f"connection {conn['i']}: {e}")
                chunk = b""
            t = time.monotonic()
            if not chunk:
                sel.unregister(sock)
                conn["dead"] = True
                continue
            conn["buf"] += chunk
            handle_frames(conn, t, tk)
        if not ready_printed and n_caught == len(streams):
            ready_printed = True
            tm = os.times()
            cpu0, wall0 = tm.user + tm.system, time.monotonic()
            print("READY", flush=True)
        if not ready_printed and all(c["dead"] for c in conns):
            break
        if expect is not None:
            if all(st["last"] >= expect for st in streams.values()):
                stop = True
            elif time.monotonic() > expect_deadline:
                errors.append("timed out waiting for the last event on some streams")
                stop = True

    tm = os.times()
    cpu = (tm.user + tm.system - cpu0) if cpu0 is not None else None
    wall = (time.monotonic() - wall0) if wall0 is not None else None
    for c in conns:
        try:
            c["sock"].close()
        except OSError:
            pass
    keys = sorted(streams)
    counts = [len(streams[k]["seq"]) for k in keys]
    with open(outprefix + ".seq", "wb") as f:
        for k in keys:
            streams[k]["seq"].tofile(f)
    with open(outprefix + ".t", "wb") as f:
        for k in keys:
            streams[k]["t"].tofile(f)
    with open(outprefix + ".k", "wb") as f:
        for k in keys:
            streams[k]["k"].tofile(f)
    ended = [streams[k]["ended"] for k in keys if streams[k]["ended"]]
    Path(outprefix + ".json").write_text(json.dumps({
        "counts": counts, "cpu_s": cpu, "wall_s": wall, "ready": ready_printed,
        "caught": n_caught, "ended": ended[:20], "n_ended": len(ended), "errors": errors}))
    return 0


# ---------------------------------------------------------------------------
# the benchmark


class Bench:
    def __init__(self):
        import utils

        self.utils = utils
        self.work = Path(tempfile.mkdtemp(prefix="openshell-evbench-"))
        self.pg = None
        self.pg_lock = None
        self.gw = None
        self.gw_n = 0
        self.children = []  # Popen objects to stop by PID at exit
        self.settings = []
        self.notes = []
        self.gw_logs = []
        self.taskset = shutil.which("taskset")
        self.retry_spent = 0.0
        self.binaries = []

    # -- servers ------------------------------------------------------------

    def start_postgres(self):
        u = self.utils
        self.pg_lock = u.PortLock()
        self.pg, basedir = durable_postgres(u, self.pg_lock.port, "openshell-evbench-pg-")
        self.pg.utils_pg_bin = u.PG_BIN
        self.pg.sql("CREATE DATABASE bench")
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.pg.port}/bench"
        log(f"postgres up on 127.0.0.1:{self.pg.port} ({basedir})")

    def psql(self, q):
        return self.pg.sql(q, dbname="bench")

    def binary_id(self):
        """sha256 prefix and mtime of the gateway binary (others may rebuild it)."""
        import hashlib

        p = self.utils.GATEWAY_BIN
        h = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        mt = datetime.datetime.fromtimestamp(p.stat().st_mtime, datetime.timezone.utc)
        return f"sha256 {h}..., built {mt.strftime('%Y-%m-%d %H:%M:%S UTC')}"

    def start_gateway(self):
        u = self.utils
        bid = self.binary_id()
        if bid not in self.binaries:
            self.binaries.append(bid)
        if self.gw is not None:
            self.stop_gateway()
        if self.taskset:
            u.GATEWAY_WRAPPER = [self.taskset, "-c", str(SERVER_CPU)]
        self.gw_n += 1
        gw = u.Gateway(self.work / f"gw{self.gw_n}", name=f"gw{self.gw_n}")
        gw.start(u.h2c_args("--db-url", self.dsn), timeout=60)
        self.gw = gw
        log(f"gateway pid {gw.pid} on {gw.target}")
        return gw

    def stop_gateway(self):
        if self.gw is None:
            return
        code = self.gw.stop(timeout=15)
        text = self.gw.log_text()
        self.gw_logs.append((self.gw.name, code, text))
        self.gw = None

    def stop_all(self):
        for p in self.children:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        try:
            self.stop_gateway()
        except Exception as e:  # noqa: BLE001
            log(f"stopping gateway: {e}")
        if self.pg is not None:
            self.pg.stop()
            if not KEEP:
                shutil.rmtree(self.pg.basedir, ignore_errors=True)
        if self.pg_lock is not None:
            self.pg_lock.release()
        if not KEEP:
            shutil.rmtree(self.work, ignore_errors=True)

    def set_sync(self, mode):
        self.pg.sql(f"ALTER SYSTEM SET synchronous_commit = {mode}")
        self.pg.sql("SELECT pg_reload_conf()")
        time.sleep(0.3)
        got = self.psql("SHOW synchronous_commit").strip()
        if got != mode:
            raise RuntimeError(f"synchronous_commit is {got!r}, wanted {mode!r}")
        self.start_gateway()  # fresh connections start with the new value

    def wait_sequenced(self, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            n = int(self.psql("SELECT count(*) FROM sandbox_events WHERE seq IS NULL").strip())
            if n == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} events still unsequenced after {timeout}s")
            time.sleep(0.1)

    def create_workspaces(self, names):
        if not names:
            return
        arr = ",".join(f"'{n}'" for n in names)
        self.psql("SELECT count(*) FROM (SELECT gw_workspace_create(gen_random_uuid(), n, "
                  f"'{{}}', 'bench') FROM unnest(ARRAY[{arr}]) AS n) x")

    def record_settings(self):
        names = ["server_version", "fsync", "synchronous_commit", "wal_sync_method",
                 "full_page_writes", "wal_level", "shared_buffers", "wal_buffers", "commit_delay",
                 "commit_siblings", "max_wal_size", "checkpoint_timeout", "max_connections"]
        arr = ",".join(f"'{n}'" for n in names)
        out = self.psql(f"SELECT name, current_setting(name), '' FROM pg_settings "
                        f"WHERE name IN ({arr}) ORDER BY name")
        self.settings = [line.split("|") for line in out.strip().splitlines()]

    def fsync_probe(self, seconds=2.0):
        """8 kB write + fdatasync in a loop on the data directory's file system."""
        path = self.pg.basedir / "fsync-probe"
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        block = b"\0" * 8192
        n = 0
        lat = []
        t_end = time.monotonic() + seconds
        try:
            while time.monotonic() < t_end:
                t0 = time.monotonic()
                os.pwrite(fd, block, 0)
                os.fdatasync(fd)
                lat.append(time.monotonic() - t0)
                n += 1
        finally:
            os.close(fd)
            os.unlink(path)
        self.fsync = {"ops": n / seconds, "p50_ms": 1000 * pct(lat, 50),
                      "p99_ms": 1000 * pct(lat, 99)}
        log(f"fsync probe: {self.fsync['ops']:.0f} 8kB write+fdatasync/s, "
            f"p50 {self.fsync['p50_ms']:.2f} ms")

    # -- append rate: gateway -----------------------------------------------

    def gateway_run(self, tag, duration, stubs):
        """WRITERS threads x AddWorkspaceMember for |duration| s."""
        import grpc

        pb = stubs.openshell_pb2
        nws = 0
        per_writer = []
        # Enough workspaces for 2,000 calls/s per writer.
        n_per = max(4, (2000 * duration) // ROTATE + 1)
        names = []
        for i in range(WRITERS):
            ws = [f"g{tag}w{i}n{k}" for k in range(n_per)]
            per_writer.append(ws)
            names += ws
            nws += len(ws)
        self.create_workspaces(names)
        self.wait_sequenced()

        start = threading.Barrier(WRITERS + 1)
        results = [None] * WRITERS
        t_stop = [0.0]

        def writer(i):
            ch = self.gw.channel()
            call = ch.unary_unary(ADD_MEMBER)
            ok = 0
            errs = {}
            lat = []
            k = 0
            n = 0
            ws = per_writer[i]
            try:
                start.wait(30)
                while True:
                    t0 = time.monotonic()
                    if t0 >= t_stop[0]:
                        break
                    n += 1
                    if n > ROTATE:
                        k += 1
                        n = 1
                        if k >= len(ws):
                            errs["out_of_workspaces"] = errs.get("out_of_workspaces", 0) + 1
                            break
                    req = pb.AddWorkspaceMemberRequest(workspace=ws[k], principal_subject=f"u{n}",
                                                       role=ROLE_USER).SerializeToString()
                    try:
                        call(req, timeout=10)
                        ok += 1
                        lat.append(time.monotonic() - t0)
                    except grpc.RpcError as e:
                        c = str(e.code())
                        errs[c] = errs.get(c, 0) + 1
            finally:
                ch.close()
            results[i] = (ok, errs, lat)

        threads = [threading.Thread(target=writer, args=(i,), daemon=True)
                   for i in range(WRITERS)]
        for t in threads:
            t.start()
        t_stop[0] = time.monotonic() + 3600
        start.wait(30)
        t_begin = time.monotonic()
        t_stop[0] = t_begin + duration
        meter = CpuMeter(self.gw.pid, self.pg.postmaster_pid())
        sampler = WaitSampler(self.pg)
        for t in threads:
            t.join(duration + 30)
        cpu = meter.stop()
        waits = sampler.stop()
        wall = time.monotonic() - t_begin
        ok = sum(r[0] for r in results if r)
        errs = {}
        lat = []
        for r in results:
            if r:
                lat += r[2]
                for k, v in r[1].items():
                    errs[k] = errs.get(k, 0) + v
        backlog = int(self.psql("SELECT count(*) FROM sandbox_events WHERE seq IS NULL").strip())
        return {"rate": ok / wall, "ok": ok, "errors": errs, "wall": wall,
                "gw_us": (1e4 * cpu["gw_pct"] / (ok / wall)
                          if ok and cpu["gw_pct"] is not None else None),
                "p50_ms": 1000 * pct(lat, 50) if lat else None,
                "p99_ms": 1000 * pct(lat, 99) if lat else None,
                "backlog": backlog, **cpu, **waits}

    # -- append rate: pgbench ----------------------------------------------

    def write_pgbench_scripts(self):
        d = self.work / "pgbench"
        d.mkdir(exist_ok=True)
        scripts = {
            # Exactly the statement the gateway prepares for AddWorkspaceMember
            # (store_queries.c: SELECT cols FROM gw_member_add(...)).
            "member": (
                "\\set n :n + 1\n"
                "\\set ws :base + :client_id * 1000 + :n / " + str(ROTATE) + "\n"
                "SELECT id FROM gw_member_add(gen_random_uuid(), 'p'::text || :ws::text, "
                "'u'::text || :n::text, 'USER', 'bench');\n"),
            "insert": (
                "\\set n :n + 1\n"
                "INSERT INTO bench_events (sandbox_name, workspace, kind, actor, payload) "
                "VALUES ('', 'benchws', 'workspace.member_added', 'bench', "
                "jsonb_build_object('principal_subject', 'u'::text || :n::text, 'role', 'USER'));\n"),
            "insert_notify": (
                "\\set n :n + 1\n"
                "BEGIN;\n"
                "INSERT INTO bench_events (sandbox_name, workspace, kind, actor, payload) "
                "VALUES ('', 'benchws', 'workspace.member_added', 'bench', "
                "jsonb_build_object('principal_subject', 'u'::text || :n::text, 'role', 'USER'));\n"
                "SELECT pg_notify('bench_events', 'pending');\n"
                "END;\n"),
        }
        self.pgbench_files = {}
        for name, text in scripts.items():
            p = d / f"{name}.sql"
            p.write_text(text)
            self.pgbench_files[name] = p
        # Same columns, defaults and indexes as sandbox_events, no NOTIFY.
        self.psql("CREATE TABLE IF NOT EXISTS bench_events "
                  "(LIKE sandbox_events INCLUDING DEFAULTS INCLUDING INDEXES)")
        self.pgbench_base = 0

    def pgbench_run(self, spec, duration):
        script, _, clients = spec.partition("@")
        clients = int(clients or WRITERS)
        base = 0
        if script == "member":
            self.pgbench_base += 100000
            base = self.pgbench_base
            names = [f"p{base + c * 1000 + k}" for c in range(clients)
                     for k in range(max(4, (4000 * duration) // ROTATE + 1))]
            self.create_workspaces(names)
            self.wait_sequenced()
        cmd = [str(self.utils.PG_BIN / "pgbench"), "-n", "-M", "prepared",
               "-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "postgres",
               "-c", str(clients), "-j", "1", "-T", str(duration),
               "-D", "n=0", "-D", f"base={base}",
               "-f", str(self.pgbench_files[script]), "bench"]
        self.pgbench_cmd_example = cmd
        meter = CpuMeter(self.gw.pid if self.gw else None, self.pg.postmaster_pid())
        sampler = WaitSampler(self.pg)
        res = self.utils.run(cmd, timeout=duration + 60, check=False)
        cpu = meter.stop()
        waits = sampler.stop()
        m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", res.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", res.stdout)
        lat = re.search(r"latency average = ([\d.]+) ms", res.stdout)
        if res.returncode != 0 or not m:
            log(f"pgbench {script} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
            return {"rate": None, "error": (res.stderr or res.stdout)[-500:], **cpu}
        backlog = int(self.psql("SELECT count(*) FROM sandbox_events WHERE seq IS NULL").strip())
        return {"rate": float(m.group(1)), "failed": int(failed.group(1)) if failed else 0,
                "lat_avg_ms": float(lat.group(1)) if lat else None, "backlog": backlog, **cpu,
                **waits}

    # -- delivery latency ---------------------------------------------------

    def latency_run(self, nsubs, stubs):
        import grpc

        pb = stubs.openshell_pb2
        ws = f"lat{nsubs}"
        total = LAT_RATE * LAT_SECONDS
        if total > 1000:
            raise RuntimeError("LAT_RATE x LAT_SECONDS must stay <= 1000 (member limit)")
        self.create_workspaces([ws])
        self.wait_sequenced()
        head = int(self.psql("SELECT last_seq FROM event_sequence").strip())
        nconns = max(1, min(nsubs, LAT_CONNS))
        outprefix = str(self.work / f"lat{nsubs}")
        reader = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--reader", str(self.gw.port), ws,
             str(head), str(nsubs), str(nconns), outprefix],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.children.append(reader)
        # READY, bounded by a timer that kills the reader (by PID) if stuck.
        timer = threading.Timer(60, lambda: reader.poll() is None and reader.kill())
        timer.start()
        line = reader.stdout.readline().strip()
        timer.cancel()
        if line != "READY":
            reader.wait(10)
            info = json.loads(Path(outprefix + ".json").read_text()) \
                if Path(outprefix + ".json").exists() else {}
            raise RuntimeError(f"subscriber reader not ready: {line!r} {info}")
        subs_on_gw = nsubs
        time.sleep(0.5)

        ch = self.gw.channel()
        call = ch.unary_unary(ADD_MEMBER)
        acks = {}  # subject -> (sent, acked)
        errs = {}
        meter = CpuMeter(self.gw.pid, self.pg.postmaster_pid())
        t0 = time.monotonic()
        for i in range(total):
            due = t0 + i / LAT_RATE
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            subj = f"l{i}"
            req = pb.AddWorkspaceMemberRequest(workspace=ws, principal_subject=subj,
                                               role=ROLE_USER).SerializeToString()
            ts = time.monotonic()
            try:
                call(req, timeout=10)
                acks[subj] = (ts, time.monotonic(), time.time())
            except grpc.RpcError as e:
                errs[str(e.code())] = errs.get(str(e.code()), 0) + 1
        send_wall = time.monotonic() - t0
        ch.close()
        cpu = meter.stop()
        self.wait_sequenced()
        rows = self.psql(f"SELECT seq, payload->>'principal_subject' FROM sandbox_events "
                         f"WHERE workspace = '{ws}' AND kind = 'workspace.member_added' "
                         f"AND seq > {head} ORDER BY seq")
        ack_by_seq = {}
        for line in rows.strip().splitlines():
            seq, subj = line.split("|")
            if subj in acks:
                ack_by_seq[int(seq)] = acks[subj]
        last = max(ack_by_seq) if ack_by_seq else head
        reader.stdin.write(f"expect {last}\n")
        reader.stdin.flush()
        try:
            reader.wait(40)
        except subprocess.TimeoutExpired:
            reader.kill()
            reader.wait(10)
        info = json.loads(Path(outprefix + ".json").read_text())
        seqs = array.array("q")
        times = array.array("d")
        with open(outprefix + ".seq", "rb") as f:
            seqs.fromfile(f, sum(info["counts"]))
        with open(outprefix + ".t", "rb") as f:
            times.fromfile(f, sum(info["counts"]))
        ktimes = array.array("d")
        with open(outprefix + ".k", "rb") as f:
            ktimes.fromfile(f, sum(info["counts"]))
        lat = []
        klat = []
        per_event_max = {}
        got = []
        dup_or_order = 0
        pos = 0
        for c in info["counts"]:
            s_seqs = seqs[pos:pos + c]
            s_times = times[pos:pos + c]
            s_k = ktimes[pos:pos + c]
            pos += c
            n_writer = 0
            prev = 0
            for s, t, tk in zip(s_seqs, s_times, s_k):
                if s <= prev:
                    dup_or_order += 1
                prev = s
                a = ack_by_seq.get(s)
                if a is None:
                    continue
                n_writer += 1
                d = t - a[1]
                lat.append(d)
                if tk:
                    klat.append(tk - a[2])
                if d > per_event_max.get(s, -1e9):
                    per_event_max[s] = d
            got.append(n_writer)
        rpc = [a[1] - a[0] for a in acks.values()]
        ms = 1000.0
        return {
            "subs": nsubs, "conns": nconns, "sent": len(acks), "errors": errs,
            "send_rate": len(acks) / send_wall,
            "got_min": min(got) if got else 0, "got_max": max(got) if got else 0,
            "all": bool(got) and min(got) == len(ack_by_seq) == len(acks),
            "p50": ms * pct(lat, 50), "p99": ms * pct(lat, 99), "max": ms * max(lat),
            "min": ms * min(lat),
            "k_p50": ms * pct(klat, 50) if klat else None,
            "k_p99": ms * pct(klat, 99) if klat else None,
            "fan_p50": ms * pct(list(per_event_max.values()), 50),
            "fan_p99": ms * pct(list(per_event_max.values()), 99),
            "rpc_p50": ms * pct(rpc, 50), "rpc_p99": ms * pct(rpc, 99),
            "reader_cpu_pct": (100.0 * info["cpu_s"] / info["wall_s"]
                               if info.get("wall_s") else None),
            "gw_pct": cpu["gw_pct"], "machine_pct": cpu["machine_pct"],
            "pg_pct": cpu["pg_pct"],
            # the reader is not this process's waited child yet: subtract it here
            "foreign_pct": max(0.0, cpu["foreign_pct"] - (100.0 * info["cpu_s"] / info["wall_s"]
                                                          if info.get("wall_s") else 0)),
            "writer_pct": cpu["client_pct"],
            "order_violations": dup_or_order, "reader_errors": info["errors"],
            "n_ended": info["n_ended"], "subs_on_gw": subs_on_gw,
        }

    # -- driver ---------------------------------------------------------------

    def run(self):
        started = datetime.datetime.now(datetime.timezone.utc)
        t_start = time.monotonic()
        u = self.utils
        if not u.GATEWAY_BIN.exists():
            raise RuntimeError(f"gateway binary not found: {u.GATEWAY_BIN}")
        self.start_postgres()
        # Everything started from here on (threads, pgbench, the reader)
        # runs on CLIENT_CPU; the gateway is started under taskset SERVER_CPU;
        # PostgreSQL (started above) may use every CPU.
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > CLIENT_CPU:
            os.sched_setaffinity(0, {CLIENT_CPU})
        stubs = u.generate_stubs(self._mkdir("stubs"))
        self.fsync_probe()
        self.start_gateway()
        self.record_settings()
        self.write_pgbench_scripts()

        append = {}  # (mode, what) -> list of results
        for mode in SYNC_MODES:
            log(f"synchronous_commit = {mode}")
            self.set_sync(mode)
            if WARMUP > 0:
                self.gateway_run(f"{mode[:2]}x", WARMUP, stubs)
            for rep in range(REPEAT):
                r = self.quiet_run(lambda t: self.gateway_run(f"{mode[:2]}{rep}r{t}", DURATION,
                                                              stubs), f"rep {rep} gateway")
                append.setdefault((mode, "gateway"), []).append(r)
                for script in PGBENCH_SCRIPTS:
                    r = self.quiet_run(lambda t: self.pgbench_run(script, DURATION),
                                       f"rep {rep} pgbench {script}")
                    append.setdefault((mode, script), []).append(r)

        # Latency with durable commits (the default).
        self.set_sync("on")
        latency = []
        for n in LAT_SUBS:
            log(f"latency with {n} subscriber(s)")
            r = self.latency_run(n, stubs)
            latency.append(r)
            log(f"  p50 {r['p50']:.2f} ms p99 {r['p99']:.2f} ms got {r['got_min']}-"
                f"{r['got_max']}/{r['sent']} reader cpu {fmt(r['reader_cpu_pct'])}% "
                f"gw cpu {fmt(r['gw_pct'])}%")
        self.stop_gateway()
        self.elapsed = time.monotonic() - t_start
        self.report(started, append, latency)

    def quiet_run(self, fn, label):
        """Runs fn(try) until other jobs took at most NOISE_MAX % CPU during
        it (at most 1 + NOISE_RETRIES tries); returns the quietest try."""
        tries = []
        for t in range(1 + max(0, NOISE_RETRIES)):
            if t > 0 and self.retry_spent >= RETRY_BUDGET:
                break
            t0 = time.monotonic()
            r = fn(t)
            if t > 0:
                self.retry_spent += time.monotonic() - t0
            self.wait_sequenced()
            tries.append(r)
            log(f"  {label}: {fmt(r.get('rate'))}/s errors={r.get('errors') or r.get('failed')} "
                f"gw {fmt(r.get('gw_pct'))}% pg {fmt(r.get('pg_pct'))}% "
                f"client {fmt(r.get('client_pct', 0) + r.get('children_pct', 0))}% "
                f"foreign {fmt(r.get('foreign_pct'))}%")
            if r.get("foreign_pct", 0) <= NOISE_MAX:
                break
        best = min(tries, key=lambda x: x.get("foreign_pct", 0))
        best["tries"] = [round(x.get("foreign_pct", 0)) for x in tries]
        best["try_rates"] = [x.get("rate") for x in tries]
        return best

    def _mkdir(self, name):
        p = self.work / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    # -- report ---------------------------------------------------------------

    def report(self, started, append, latency):
        def agg(mode, what, key="rate"):
            vals = [r.get(key) for r in append.get((mode, what), []) if r.get(key) is not None]
            return med(vals), (min(vals) if vals else None), (max(vals) if vals else None)

        lines = []
        env_parts = [f"{k}={os.environ[k]}" for k in
                     ("DURATION", "WARMUP", "REPEAT", "WRITERS", "ROTATE", "PGBENCH_SCRIPTS",
                      "SYNC_MODES", "LAT_SUBS", "LAT_RATE", "LAT_SECONDS", "LAT_CONNS",
                      "SERVER_CPU", "CLIENT_CPU", "NOISE_MAX", "NOISE_RETRIES", "RETRY_BUDGET", "OUT")
                     if k in os.environ]
        cmd = " ".join([*(shlex.quote(p) for p in env_parts), "/usr/bin/python3",
                        "bench/events_bench.py"])
        cpu_model = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        load = Path("/proc/loadavg").read_text().split()[:3]
        gw_ver = self.utils.run([str(self.utils.GATEWAY_BIN), "--version"], check=False).stdout
        lines += [
            "# Lifecycle events: append rate and delivery latency",
            "",
            f"- command: `{cmd}` (from the repository root)",
            f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}; total runtime "
            f"{self.elapsed:.0f} s",
            f"- machine: {platform.node()}, {os.cpu_count()} CPUs ({cpu_model}), "
            f"{platform.system()} {platform.release()}; load average at the end "
            f"{' '.join(load)} (shared machine: other jobs run alongside)",
            f"- gateway binary: {'; '.join(self.binaries)}"
            + (" (**CHANGED during the run**: someone rebuilt it; the runs mix binaries)"
               if len(self.binaries) > 1 else ""),
            f"- gateway: {gw_ver.strip() or self.utils.GATEWAY_BIN} pinned to CPU {SERVER_CPU} "
            f"({'taskset' if self.taskset else 'NOT pinned: no taskset'}); clients (Python "
            f"writers, pgbench, subscriber reader) on CPU {CLIENT_CPU}; PostgreSQL unpinned",
            f"- writers: {WRITERS} (gateway: one gRPC channel each, AddWorkspaceMember; "
            f"pgbench: -c {WRITERS} -j 1 -M prepared over TCP 127.0.0.1), {DURATION} s per run, "
            f"{REPEAT} runs per configuration (median, min-max), {WARMUP} s gateway warm-up "
            f"per synchronous_commit setting; a writer moves to a new workspace every "
            f"{ROTATE} members (the limit is 1000)",
            f"- storage probe (data directory's file system): "
            f"{self.fsync['ops']:.0f} x (8 kB write + fdatasync)/s, p50 "
            f"{self.fsync['p50_ms']:.2f} ms, p99 {self.fsync['p99_ms']:.2f} ms",
            "",
            "PostgreSQL settings (synchronous_commit switched per run with ALTER SYSTEM + "
            "pg_reload_conf(); the gateway is restarted after each switch):",
            "",
            "| setting | value |",
            "| --- | --- |",
        ]
        for row in self.settings:
            if len(row) == 3:
                lines.append(f"| {row[0]} | {row[1]}{(' ' + row[2]) if row[2] else ''} |")
        lines += ["", "## Append rate (events/s)", ""]
        labels = {
            "gateway": f"gateway AddWorkspaceMember (gRPC, {WRITERS} writers, one event per call)",
            "member": "pgbench `SELECT FROM gw_member_add(...)` (same SQL as the gateway)",
            "insert": "pgbench one INSERT of an event row (raw floor, no NOTIFY)",
            "insert_notify": "pgbench INSERT + pg_notify() in one transaction",
        }
        whats = ["gateway", *PGBENCH_SCRIPTS]
        head = "| workload | " + " | ".join(f"synchronous_commit={m}" for m in SYNC_MODES) + " |"
        lines += [head, "| --- |" + " --- |" * len(SYNC_MODES)]
        for w in whats:
            cells = []
            for m in SYNC_MODES:
                md, lo, hi = agg(m, w)
                cells.append(f"{fmt(md)} ({fmt(lo)}-{fmt(hi)})" if md is not None else "-")
            name, _, n = w.partition("@")
            label = labels.get(name, name)
            if name != "gateway":
                label += f", {n or WRITERS} clients"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for w in PGBENCH_SCRIPTS:
            cells = []
            for m in SYNC_MODES:
                g, p = agg(m, "gateway")[0], agg(m, w)[0]
                cells.append(f"{g / p:.2f}" if g and p else "-")
            lines.append(f"| ratio gateway / {w} | " + " | ".join(cells) + " |")
        lines += ["", "Gateway runs in detail (medians over the runs):", "",
                  "| synchronous_commit | RPC p50 ms | RPC p99 ms | gateway CPU % | "
                  "gateway CPU µs per event | PostgreSQL CPU % | client CPU % | foreign CPU % "
                  "| errors | unsequenced at end |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for m in SYNC_MODES:
            rs = append.get((m, "gateway"), [])
            errs = {}
            for r in rs:
                for k, v in r["errors"].items():
                    errs[k] = errs.get(k, 0) + v
            lines.append(
                f"| {m} | {fmt(agg(m, 'gateway', 'p50_ms')[0], 2)} | "
                f"{fmt(agg(m, 'gateway', 'p99_ms')[0], 2)} | {fmt(agg(m, 'gateway', 'gw_pct')[0])} | "
                f"{fmt(agg(m, 'gateway', 'gw_us')[0])} | "
                f"{fmt(agg(m, 'gateway', 'pg_pct')[0])} | "
                f"{fmt(agg(m, 'gateway', 'client_pct')[0])} | "
                f"{fmt(agg(m, 'gateway', 'foreign_pct')[0])} | "
                f"{sum(errs.values()) if errs else 0}{(' ' + json.dumps(errs)) if errs else ''} | "
                f"{fmt(agg(m, 'gateway', 'backlog')[0])} |")
        lines += ["", "pgbench runs in detail (medians):", "",
                  "| synchronous_commit | script | latency avg ms | failed | "
                  "gateway CPU % (sequencing) | PostgreSQL CPU % | pgbench CPU % | "
                  "foreign CPU % |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for m in SYNC_MODES:
            for w in PGBENCH_SCRIPTS:
                lines.append(f"| {m} | {w} | {fmt(agg(m, w, 'lat_avg_ms')[0], 2)} | "
                             f"{fmt(agg(m, w, 'failed')[0])} | {fmt(agg(m, w, 'gw_pct')[0])} | "
                             f"{fmt(agg(m, w, 'pg_pct')[0])} | "
                             f"{fmt(agg(m, w, 'children_pct')[0])} | "
                             f"{fmt(agg(m, w, 'foreign_pct')[0])} |")
        lines += ["", "What the database's active client backends waited on (pg_stat_activity "
                  "sampled every 0.1 s during each counted run; share of all samples of "
                  "the runs; CPU = no wait event; for the gateway rows these are the "
                  "gateway's pooled connections):", "",
                  "| synchronous_commit | workload | mean active backends | top wait events |",
                  "| --- | --- | --- | --- |"]
        for m in SYNC_MODES:
            for w in whats:
                rs = append.get((m, w), [])
                tot = {}
                for r in rs:
                    for k, v in r.get("wait_counts", {}).items():
                        tot[k] = tot.get(k, 0) + v
                ssum = sum(tot.values()) or 1
                top = sorted(tot.items(), key=lambda kv: -kv[1])[:4]
                act = med([r.get("active_avg") for r in rs])
                lines.append(f"| {m} | {w} | {fmt(act, 1)} | "
                             + ", ".join(f"{k} {round(100 * v / ssum)}%" for k, v in top) + " |")
        lines += ["", f"All runs (a run with more than {NOISE_MAX} % foreign CPU was tried "
                  f"again, up to {NOISE_RETRIES} time(s) while retries had added less than "
                  f"{RETRY_BUDGET} s, {self.retry_spent:.0f} s used; the quietest try "
                  "counts):", "",
                  "| synchronous_commit | workload | run | events/s | foreign CPU % per try "
                  "| events/s per try |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for m in SYNC_MODES:
            for w in whats:
                for i, r in enumerate(append.get((m, w), [])):
                    lines.append(f"| {m} | {w} | {i + 1} | {fmt(r.get('rate'))} | "
                                 f"{', '.join(str(x) for x in r.get('tries', []))} | "
                                 f"{', '.join(fmt(x) for x in r.get('try_rates', []))} |")
        lines += [
            "", "## Delivery latency (synchronous_commit=on)", "",
            f"One writer, AddWorkspaceMember at {LAT_RATE}/s for {LAT_SECONDS} s; N Subscribe "
            "streams on the written workspace (after_sequence = head, so no catch-up). "
            "Latency = arrival at the subscriber - the writer's receipt of the gateway's "
            "reply; percentiles over every (subscriber, event) pair; \"slowest subscriber\" "
            "is the per-event maximum over subscribers.",
            "",
            "| subscribers | connections | events sent | events per subscriber (min-max) | all? "
            "| p50 ms | p99 ms | max ms | slowest subscriber p50 / p99 ms "
            "| kernel-timestamp p50 / p99 ms | reply RPC p50 / p99 ms "
            "| reader CPU % | gateway CPU % | gateway CPU µs per delivered event "
            "| PostgreSQL CPU % | foreign CPU % |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
            "| --- | --- | --- |",
        ]
        for r in latency:
            lines.append(
                f"| {r['subs']} | {r['conns']} | {r['sent']} | {r['got_min']}-{r['got_max']} | "
                f"{'yes' if r['all'] else 'NO'} | {r['p50']:.2f} | {r['p99']:.2f} | "
                f"{r['max']:.2f} | {r['fan_p50']:.2f} / {r['fan_p99']:.2f} | "
                f"{fmt(r['k_p50'], 2)} / {fmt(r['k_p99'], 2)} | "
                f"{r['rpc_p50']:.2f} / {r['rpc_p99']:.2f} | {fmt(r['reader_cpu_pct'])} | "
                f"{fmt(r['gw_pct'])} | "
                f"{fmt(1e4 * r['gw_pct'] / (r['send_rate'] * r['subs']), 1) if r['gw_pct'] else '-'} | "
                f"{fmt(r['pg_pct'])} | {fmt(r['foreign_pct'])} |")
        notes = []
        for r in latency:
            if r["errors"] or r["reader_errors"] or r["order_violations"] or r["n_ended"]:
                notes.append(f"- {r['subs']} subscribers: write errors {r['errors']}, reader "
                             f"errors {r['reader_errors']}, out-of-order/duplicate deliveries "
                             f"{r['order_violations']}, streams ended early {r['n_ended']}")
            if r["min"] < 0:
                notes.append(f"- {r['subs']} subscribers: some events arrived before the "
                             f"writer saw the reply (min {r['min']:.2f} ms): the writer's "
                             "wake-up after the reply is part of the clock difference")
        warn = []
        for name, code, text in self.gw_logs:
            for line in text.splitlines():
                ev = self.utils.parse_log_line(line)
                if ev and str(ev.get("level", "")).lower() in ("warn", "warning", "error"):
                    warn.append(f"{name}: {line.strip()[:300]}")
            if code not in (0, None):
                warn.append(f"{name}: exit code {code} on SIGTERM")
        lines += ["", "## Notes", ""]
        lines += notes or ["- no write errors, reader errors or ordering problems"]
        if warn:
            lines += ["- gateway warnings/errors in the logs "
                      f"({len(warn)} lines, first 10):", ""]
            lines += [f"      {w}" for w in warn[:10]]
        else:
            lines.append("- no warning or error lines in the gateway logs")
        lines.append("")
        text = "\n".join(lines)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text)
        if JSON_OUT:
            Path(JSON_OUT).write_text(json.dumps(
                {"append": {f"{m}/{w}": v for (m, w), v in append.items()},
                 "latency": latency, "settings": self.settings, "fsync": self.fsync},
                indent=1, default=str))
        print(text)
        log(f"wrote {OUT}" + (f" and {JSON_OUT}" if JSON_OUT else ""))


def stop_bench_processes(h, keep, log):
    """Stops what a benchmark harness |h| started (its .gateways, .fakes,
    .pg, .pg_lock and .work), gateways first; |keep| leaves the files."""
    for gw in h.gateways:
        try:
            if gw.running:
                h.stop_gateway(gw)
        except Exception as e:  # noqa: BLE001
            log(f"stopping {gw.name}: {e}")
    for drv in h.fakes:
        drv.stop()
    if h.pg is not None:
        h.pg.stop()
        if not keep:
            shutil.rmtree(h.pg.basedir, ignore_errors=True)
    if h.pg_lock is not None:
        h.pg_lock.release()
    if not keep:
        shutil.rmtree(h.work, ignore_errors=True)
    else:
        log(f"work directory kept: {h.work}")


def run_until_signal(bench):
    """Runs |bench| (run(), then stop_all() whatever happens; SIGTERM
    stops it like ^C). Shared with driver_bench.py."""

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        bench.run()
    finally:
        bench.stop_all()
    return 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--reader":
        return reader_main(sys.argv[2:])
    return run_until_signal(Bench())


if __name__ == "__main__":
    sys.exit(main())
