"""Sandbox logs end to end (semantics.md §10, §11, §16, §19):
PushSandboxLogs from a sandbox principal, GetSandboxLogs with its filters,
and WatchSandbox follow_logs (replay, then live lines).

The gateway runs against e2e/fake_driver.py, which records every request it
receives: the sandbox JWT the gateway minted for a sandbox is in the
recorded CreateSandbox request (spec.sandbox_token). The tests present that
token as a supervisor would. No supervisor runs, so sandboxes never become
READY; nothing here needs them to.

Gateway-side lines (source "gateway") may be appended to a sandbox's buffer
by other parts of the gateway at any time, so the checks compare against
the buffer as read (with an independent Python model of the filters) or
look at the "sandbox" lines only.
"""

import json
import re
import time

import grpc
import pytest

from drivers_fixtures import RPC_TIMEOUT, WAIT, _drivers_stopper, _leaks, db_url, env  # noqa: F401
from utils import wait_until

pytestmark = pytest.mark.postgres

RANKS = {"ERROR": 0, "WARN": 1, "INFO": 2, "OCSF": 2, "DEBUG": 3, "TRACE": 4}


# ---------------------------------------------------------------------------
# helpers


class Logs:
    """A gateway on the fake driver, its API, and sandbox tokens."""

    def __init__(self, env):
        self.env = env
        self.pb = env.pb
        self.drv = env.fake_driver(name="mydrv")
        self.gw = env.gateway("--drivers", "mydrv", "--compute-driver-socket", self.drv.socket)
        self.api = env.api(self.gw)
        self.stub = self.api.stub

    def create(self, name):
        sb = self.api.CreateSandbox(
            name=name, spec=self.pb.SandboxSpec(command=["/bin/sh", "-c", "sleep 600"])).sandbox
        self.env.track(sid=sb.metadata.id)
        return sb.metadata.id

    def token(self, sid):
        """The JWT of |sid| from the driver's record of CreateSandbox."""
        def find():
            try:
                lines = self.drv.record.read_text().splitlines()
            except OSError:
                return None
            for line in lines:
                rec = json.loads(line)
                if rec.get("method") != "CreateSandbox":
                    continue
                sb = rec["request"].get("sandbox", {})
                if sb.get("id") == sid:
                    return sb.get("spec", {}).get("sandbox_token") or None
            return None

        tok = wait_until(find, WAIT, interval=0.05, what=f"sandbox token of {sid} in the record")
        assert tok.count(".") == 2, tok
        return tok

    def line(self, message, level="INFO", ts=None, source="", target="supervisor", **fields):
        return self.pb.SandboxLogLine(
            timestamp_ms=ts if ts is not None else int(time.time() * 1000), level=level,
            target=target, message=message, source=source, fields=fields)

    def batch(self, sid, *lines):
        return self.pb.PushSandboxLogsRequest(sandbox_id=sid, logs=list(lines))

    def push(self, token, *batches, timeout=RPC_TIMEOUT):
        md = [("authorization", f"Bearer {token}")] if token else None
        return self.stub.PushSandboxLogs(iter(batches), metadata=md, timeout=timeout)

    def push_error(self, token, *batches):
        with pytest.raises(grpc.RpcError) as ei:
            self.push(token, *batches)
        return ei.value.code(), ei.value.details()

    def get(self, sid, **kw):
        return self.api.GetSandboxLogs(sandbox_id=sid, **kw)

    def messages(self, sid, **kw):
        return [l.message for l in self.get(sid, sources=["sandbox"], **kw).logs]

    def watch(self, sid, **kw):
        wait_events_ready(self.gw)
        return self.env.watch(self.api, id=sid, **kw)


def wait_events_ready(gw):
    wait_until(lambda: gw.events("events.ready"), WAIT, interval=0.05, what="events.ready")


def model_filter(lines, since_ms=0, sources=(), min_level=""):
    """semantics.md §10's filters, written independently of the gateway."""
    out = []
    for l in lines:
        if since_ms > 0 and l.timestamp_ms < since_ms:
            continue
        if sources and (l.source or "gateway") not in sources:
            continue
        if min_level and RANKS.get(l.level.upper(), 5) > RANKS.get(min_level.upper(), 5):
            continue
        out.append(l)
    return out


def is_log(ev):
    return ev.WhichOneof("payload") == "log"


def sandbox_logs(w, start=0):
    """Messages of the "sandbox" log lines a watch received so far."""
    with w.cond:
        items = list(w.items[start:])
    return [ev.log.message for ev in items if is_log(ev) and ev.log.source == "sandbox"]


def wait_sandbox_logs(w, want, timeout=WAIT):
    wait_until(lambda: sandbox_logs(w) == want, timeout, interval=0.05,
               what=f"watch log lines {want}; got {sandbox_logs(w)}")


@pytest.fixture
def logs(env):
    return Logs(env)


# ---------------------------------------------------------------------------
# PushSandboxLogs + GetSandboxLogs


def test_push_then_get(logs):
    sid = logs.create("pusher")
    tok = logs.token(sid)
    resp = logs.push(
        tok,
        logs.batch("", logs.line("skipped: no sandbox id")),
        logs.batch(sid, logs.line("one", source="forged", pid="7"), logs.line("two", level="WARN")),
        logs.batch(sid, logs.line("three", level="error")),
    )
    # Empty response once the client half-closes.
    assert resp == logs.pb.PushSandboxLogsResponse()

    got = logs.get(sid)
    mine = [l for l in got.logs if l.source == "sandbox"]
    assert [l.message for l in mine] == ["one", "two", "three"]
    assert all(l.sandbox_id == sid for l in got.logs)
    assert not [l for l in got.logs if l.source not in ("sandbox", "gateway")]  # source forced
    assert dict(mine[0].fields) == {"pid": "7"}
    assert mine[0].target == "supervisor"
    assert mine[2].level == "error"
    assert got.buffer_total == len(got.logs)

    # A second stream appends to the same buffer, oldest first.
    logs.push(tok, logs.batch(sid, logs.line("four")))
    assert logs.messages(sid) == ["one", "two", "three", "four"]


def test_get_filters_match_model(logs):
    sid = logs.create("filtered")
    tok = logs.token(sid)
    base = 1_700_000_000_000
    levels = ["ERROR", "warn", "INFO", "OCSF", "DEBUG", "TRACE", "NOTICE", "info"]
    lines = [logs.line(f"m{i}", level=levels[i % len(levels)], ts=base + i) for i in range(40)]
    logs.push(tok, logs.batch(sid, *lines))

    full = list(logs.get(sid).logs)
    assert [l.message for l in full if l.source == "sandbox"] == [f"m{i}" for i in range(40)]
    cases = [
        {},
        {"lines": 10},
        {"lines": 10, "min_level": "WARN"},
        {"since_ms": base + 30},
        {"since_ms": base + 30, "lines": 25},
        {"min_level": "info"},
        {"min_level": "OCSF"},
        {"min_level": "unknown-level"},
        {"sources": ["sandbox"]},
        {"sources": ["gateway"]},
        {"sources": ["nobody"]},
        {"sources": ["gateway", "sandbox"], "min_level": "DEBUG", "since_ms": base + 5},
        {"lines": 5000},
    ]
    for kw in cases:
        n = kw.get("lines", 0) or 2000
        taken = full[-n:]
        want = model_filter(taken, kw.get("since_ms", 0), kw.get("sources", ()),
                            kw.get("min_level", ""))
        got = logs.get(sid, **kw)
        assert [l.message for l in got.logs] == [l.message for l in want], kw
        assert got.buffer_total == len(taken), kw
    # Unknown level names are dropped by a known minimum, kept by none.
    assert "m6" not in [l.message for l in logs.get(sid, min_level="TRACE").logs]
    assert "m6" in [l.message for l in logs.get(sid).logs]


def test_push_keeps_first_100_lines_per_batch(logs):
    sid = logs.create("capped")
    tok = logs.token(sid)
    logs.push(tok,
              logs.batch(sid, *[logs.line(f"a{i}") for i in range(150)]),
              logs.batch(sid, *[logs.line(f"b{i}") for i in range(5)]))
    assert logs.messages(sid) == [f"a{i}" for i in range(100)] + [f"b{i}" for i in range(5)]


def test_buffer_keeps_last_2000_lines(logs):
    sid = logs.create("ring")
    tok = logs.token(sid)
    batches = [logs.batch(sid, *[logs.line(f"n{b * 100 + i}") for i in range(100)])
               for b in range(25)]
    logs.push(tok, *batches)
    got = logs.get(sid)
    assert len(got.logs) <= 2000 and got.buffer_total == len(got.logs)
    mine = [l.message for l in got.logs if l.source == "sandbox"]
    assert mine[-1] == "n2499"
    assert mine == [f"n{i}" for i in range(2500 - len(mine), 2500)]
    assert len(mine) >= 1990  # only gateway lines could have taken places


def test_long_message_is_cut(logs):
    sid = logs.create("longline")
    tok = logs.token(sid)
    logs.push(tok, logs.batch(sid, logs.line("é" * 10000)))  # 20000 bytes of UTF-8
    (msg,) = logs.messages(sid)
    assert msg == "é" * 8192  # 16 KiB, cut on a character boundary


def test_push_for_another_sandbox_is_denied(logs):
    a = logs.create("owner-a")
    b = logs.create("owner-b")
    tok_a = logs.token(a)
    code, details = logs.push_error(tok_a, logs.batch(b, logs.line("intruder")))
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert logs.messages(b) == []

    # The first sandbox id is fixed for the stream; a later different one is refused.
    code, details = logs.push_error(tok_a, logs.batch(a, logs.line("mine")),
                                    logs.batch(b, logs.line("theirs")))
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert logs.messages(a) == ["mine"]
    assert logs.messages(b) == []


def test_push_by_user_is_denied(logs):
    sid = logs.create("userpush")
    code, details = logs.push_error(None, logs.batch(sid, logs.line("from a user")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == "this method requires a sandbox principal"
    assert logs.messages(sid) == []


def test_push_with_bad_token_is_unauthenticated(logs):
    sid = logs.create("badtok")
    tok = logs.token(sid)
    head, claims, sig = tok.split(".")
    forged = ".".join([head, claims, ("A" if sig[0] != "A" else "B") + sig[1:]])
    code, _ = logs.push_error(forged, logs.batch(sid, logs.line("x")))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_get_logs_errors(logs):
    sid = logs.create("errs")
    tok = logs.token(sid)
    code, details = logs.api.error("GetSandboxLogs", sandbox_id="")
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "sandbox_id is required")
    for bad in ("not-a-uuid", "7f0e8a52-0b8e-4c55-9a53-3f1d2b6c0a11"):
        code, _ = logs.api.error("GetSandboxLogs", sandbox_id=bad)
        assert code == grpc.StatusCode.NOT_FOUND, bad
    # A sandbox principal may not read logs (a user method).
    with pytest.raises(grpc.RpcError) as ei:
        logs.stub.GetSandboxLogs(logs.pb.GetSandboxLogsRequest(sandbox_id=sid),
                                 metadata=[("authorization", f"Bearer {tok}")],
                                 timeout=RPC_TIMEOUT)
    assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Upper-case spelling of the id reads the same buffer.
    logs.push(tok, logs.batch(sid, logs.line("hello")))
    assert logs.messages(sid.upper()) == ["hello"]


def test_deleted_sandbox_refuses_pushes(logs):
    sid = logs.create("gone")
    tok = logs.token(sid)
    logs.push(tok, logs.batch(sid, logs.line("before")))
    logs.api.DeleteSandbox(name="gone")
    logs.api.wait_not_found("gone")
    code, _ = logs.api.error("GetSandboxLogs", sandbox_id=sid)
    assert code == grpc.StatusCode.NOT_FOUND
    # The token outlives the sandbox; the existence check does not.
    code, details = logs.push_error(tok, logs.batch(sid, logs.line("after")))
    assert code == grpc.StatusCode.NOT_FOUND, details


# ---------------------------------------------------------------------------
# WatchSandbox follow_logs


def test_watch_replays_then_streams_live(logs):
    sid = logs.create("watched")
    tok = logs.token(sid)
    logs.push(tok, logs.batch(sid, *[logs.line(f"old{i}") for i in range(5)]))

    w = logs.watch(sid, follow_logs=True)
    i, first = w.wait_for(lambda ev: True, "first item")
    assert i == 0 and first.WhichOneof("payload") == "sandbox"
    wait_sandbox_logs(w, [f"old{i}" for i in range(5)])
    logs.push(tok, logs.batch(sid, logs.line("new0"), logs.line("new1")))
    wait_sandbox_logs(w, [f"old{i}" for i in range(5)] + ["new0", "new1"])
    _, ev = w.wait_for(lambda ev: is_log(ev) and ev.log.message == "new1", "new1")
    assert ev.log.sandbox_id == sid and ev.log.source == "sandbox"


def test_watch_replay_tail_and_filters(logs):
    sid = logs.create("tailed")
    tok = logs.token(sid)
    base = 1_700_000_000_000
    logs.push(tok, logs.batch(sid, *[
        logs.line(f"r{i}", level="WARN" if i % 2 else "DEBUG", ts=base + i) for i in range(30)]))

    # Default tail is 200: everything here.
    w_all = logs.watch(sid, follow_logs=True)
    wait_sandbox_logs(w_all, [f"r{i}" for i in range(30)])

    # log_tail_lines takes the last N first, then the filters apply.
    w_tail = logs.watch(sid, follow_logs=True, log_tail_lines=6, log_min_level="warn")
    wait_sandbox_logs(w_tail, ["r25", "r27", "r29"])

    # since applies to the replay only; sources and level to live lines too.
    w_f = logs.watch(sid, follow_logs=True, log_since_ms=base + 26, log_sources=["sandbox"],
                     log_min_level="WARN")
    wait_sandbox_logs(w_f, ["r27", "r29"])
    logs.push(tok, logs.batch(sid, logs.line("live-old-ts", level="ERROR", ts=base),
                              logs.line("live-debug", level="DEBUG")))
    wait_sandbox_logs(w_f, ["r27", "r29", "live-old-ts"])
    wait_sandbox_logs(w_tail, ["r25", "r27", "r29", "live-old-ts"])

    w_gw = logs.watch(sid, follow_logs=True, log_sources=["gateway"])
    w_gw.wait_for(lambda ev: ev.WhichOneof("payload") == "sandbox", "snapshot")
    logs.push(tok, logs.batch(sid, logs.line("not for gateway watchers")))
    wait_sandbox_logs(w_all, [f"r{i}" for i in range(30)] + ["live-old-ts", "live-debug",
                                                              "not for gateway watchers"])
    assert sandbox_logs(w_gw) == []


def test_watch_without_follow_logs_sends_no_lines(logs):
    sid = logs.create("nologs")
    tok = logs.token(sid)
    logs.push(tok, logs.batch(sid, logs.line("quiet")))
    w = logs.watch(sid, follow_status=True)
    w.wait_for(lambda ev: ev.WhichOneof("payload") == "sandbox", "snapshot")
    logs.push(tok, logs.batch(sid, logs.line("still quiet")))
    with_logs = logs.watch(sid, follow_logs=True)
    wait_sandbox_logs(with_logs, ["quiet", "still quiet"])
    assert not [ev for ev in w.items if is_log(ev)]


def test_watch_order_snapshot_logs_then_events(logs):
    sid = logs.create("ordered")
    tok = logs.token(sid)
    logs.push(tok, logs.batch(sid, logs.line("l0"), logs.line("l1")))
    # The fake driver reports a platform event (Created) for every sandbox;
    # once a watch saw it, it is stored and event_tail replays it.
    probe = logs.watch(sid, follow_events=True, event_tail=10)
    probe.wait_for(lambda ev: ev.WhichOneof("payload") == "event", "platform event")

    w = logs.watch(sid, follow_logs=True, follow_events=True, event_tail=10)
    w.wait_for(lambda ev: ev.WhichOneof("payload") == "event", "replayed event")
    wait_sandbox_logs(w, ["l0", "l1"])
    with w.cond:
        kinds = [ev.WhichOneof("payload") for ev in w.items]
    assert kinds[0] == "sandbox"
    last_replayed_log = max(i for i, k in enumerate(kinds) if k == "log")
    first_event = kinds.index("event")
    assert last_replayed_log < first_event, kinds


def test_slow_watcher_is_told_what_it_missed(logs):
    """A watcher that does not read is not buffered for without bound: its
    stream holds what flow control lets through, the ring keeps the newest
    lines, and when it reads again it gets one warning with the number of
    lines it lost, then the newest lines. More than the per-call output cap
    (8 MiB) is pushed, so buffering everything would abort the stream."""
    sid = logs.create("slow")
    tok = logs.token(sid)
    wait_events_ready(logs.gw)
    ch = logs.gw.channel(options=[("grpc.http2.bdp_probe", 0)])  # keep the 64 KiB window
    logs.env.channels.append(ch)
    stub = logs.env.stubs.openshell_pb2_grpc.OpenShellStub(ch)
    call = stub.WatchSandbox(logs.pb.WatchSandboxRequest(id=sid, follow_logs=True,
                                                         log_sources=["sandbox"]), timeout=60)
    assert next(call).WhichOneof("payload") == "sandbox"  # live from here on

    big = "x" * 16000
    batches, per = 12, 50
    for b in range(batches):
        logs.push(tok, logs.batch(sid, *[logs.line(f"{big}#{b * per + i}") for i in range(per)]))
    logs.push(tok, logs.batch(sid, logs.line("final")))
    pushed = batches * per + 1

    got, dropped = [], []
    for ev in call:
        kind = ev.WhichOneof("payload")
        if kind == "warning":
            m = re.match(r"^(\d+) log lines dropped", ev.warning.message)
            assert m, ev.warning.message
            dropped.append(int(m.group(1)))
        elif kind == "log":
            got.append(ev.log.message)
            if ev.log.message == "final":
                break
    call.cancel()
    nums = [int(m.rsplit("#", 1)[1]) for m in got[:-1]]
    assert nums == sorted(set(nums)), "lines out of order or repeated"
    assert dropped and sum(dropped) > 0
    assert len(got) < pushed / 2
    assert len(got) + sum(dropped) >= pushed
