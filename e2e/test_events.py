"""Lifecycle event stream (openshell.events.v1.Events/Subscribe) end to end.

What the stream promises (proto/events.proto, src/events/events.h): every
event with sequence > after_sequence, in sequence order, exactly once, then
live delivery; dense sequence numbers 1, 2, 3, ... (sql/001_init.sql,
gw_sequence_events), across gateway restarts, PostgreSQL restarts, replicas
sharing one database and consumers that stop reading for a while.

Each test runs on its own database (sequences start at 1), except the
PostgreSQL-restart test, which gets a cluster of its own. Writes go through
the workspace RPCs (one lifecycle event each) or through the store's SQL
functions; subscribers are background threads that record everything they
receive (see Subscriber). Every wait is bounded and only processes started
here are signalled, by PID.
"""

import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid

import grpc
import pytest

from utils import PG_BIN, PortLock, Postgres, h2c_args, run, wait_until

pytestmark = pytest.mark.postgres

RPC_TIMEOUT = 10.0
ROLE_USER = 1  # openshell.v1.WorkspaceRole.WORKSPACE_ROLE_USER
PHASE_PROVISIONING, PHASE_READY = 1, 2  # openshell.v1.SandboxPhase
MIB_KIB = 1024


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture
def db(postgres):
    """A fresh database on the session cluster (sequences start at 1),
    dropped at teardown."""
    name = "evt_" + uuid.uuid4().hex[:16]
    postgres.sql(f"CREATE DATABASE {name}")
    yield name
    postgres.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db_url(db, postgres):
    return f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/{db}"


@pytest.fixture
def sql(db, postgres):
    """sql(query) runs |query| in this test's database; returns stdout."""
    return lambda q: postgres.sql(q, dbname=db)


@pytest.fixture
def subscribers(stubs):
    """subscribers(gw, **SubscribeRequest fields) -> a started Subscriber;
    every one is closed at teardown."""
    made = []

    def make(gw, **kw):
        s = Subscriber(stubs, gw, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def own_postgres():
    """A PostgreSQL cluster of this test's own (it gets restarted)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}")
    basedir = tempfile.mkdtemp(prefix="openshell-e2e-evpg-")
    lock = PortLock()
    pg = Postgres(basedir, lock.port)
    try:
        pg.initdb()
        # Committed means durable across a PostgreSQL crash (-m immediate),
        # unlike the session cluster's synchronous_commit = off.
        with open(pg.pgdata / "postgresql.conf", "a") as f:
            f.write("synchronous_commit = on\n")
            # Every statement with its parameters, for the evidence when an
            # acknowledged write goes missing.
            f.write("log_statement = 'all'\n")
            f.write("log_line_prefix = '%m [%p] %q%a '\n")
        pg.start()
        yield pg
    finally:
        pg.stop()
        lock.release()
        # Without the statement log lines (there are thousands).
        text = "\n".join(ln for ln in pg.log_text().splitlines()
                         if " LOG:  execute " not in ln and "DETAIL:  parameters:" not in ln)
        print(f"\n===== dedicated postgres log ({pg.log_path}) =====\n{text[-20000:]}")
        shutil.rmtree(basedir, ignore_errors=True)


# ---------------------------------------------------------------------------
# helpers


class Api:
    """api.CreateWorkspace(name="x") builds the request from keyword
    arguments and calls the RPC with a bounded timeout."""

    def __init__(self, stubs, ch):
        self.pb = stubs.openshell_pb2
        self.stub = stubs.openshell_pb2_grpc.OpenShellStub(ch)

    def __getattr__(self, method):
        req_type = getattr(self.pb, method + "Request")
        rpc = getattr(self.stub, method)
        return lambda **kw: rpc(req_type(**kw), timeout=RPC_TIMEOUT)


class Subscriber:
    """One Subscribe stream read by a background thread.

    events: every LifecycleEvent received, in arrival order (across
    reconnects when resume=True: a reconnect resumes after the last sequence
    received). caught_up: (number of events received before it, sequence)
    per CaughtUp message. ended: (code, details) per stream that ended.
    pause()/unpause() stop and restart pulling messages from the stream.
    """

    def __init__(self, stubs, gw, name="sub", resume=False, resume_for=60.0,
                 channel_options=None, **req):
        self.pb = stubs.events_pb2
        self.name = name
        self.req = req
        self.resume = resume
        self.resume_for = resume_for
        self.ch = gw.channel(options=channel_options)
        self.stub = stubs.events_pb2_grpc.EventsStub(self.ch)
        self.events = []
        self.caught_up = []
        self.ended = []
        self.reconnects = 0
        self.cond = threading.Condition()
        self.gate = threading.Event()
        self.gate.set()
        self.stopping = False
        self.call = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    # -- reader thread ------------------------------------------------------

    def _request(self):
        r = dict(self.req)
        if self.events:
            r["after_sequence"] = self.events[-1].sequence
        return self.pb.SubscribeRequest(**r)

    def _run(self):
        give_up = None
        while True:
            with self.cond:
                if self.stopping:
                    return
                call = self.stub.Subscribe(self._request())
                self.call = call
            try:
                for resp in call:
                    while not self.gate.wait(0.2):
                        if self.stopping:
                            return
                    with self.cond:
                        if resp.HasField("event"):
                            self.events.append(resp.event)
                        else:
                            self.caught_up.append((len(self.events), resp.caught_up.sequence))
                        self.cond.notify_all()
                outcome = (grpc.StatusCode.OK, "")
            except grpc.RpcError as e:
                outcome = (e.code(), e.details())
            with self.cond:
                if self.stopping:
                    return
                self.ended.append(outcome)
                self.cond.notify_all()
            if not self.resume:
                return
            now = time.monotonic()
            give_up = give_up or now + self.resume_for
            if now >= give_up:
                return
            self.reconnects += 1
            time.sleep(0.1)

    # -- observers ----------------------------------------------------------

    def wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.name}: timed out after {timeout}s waiting for {what}; "
                        f"{len(self.events)} events, last seq {self.last_seq()}, "
                        f"caught_up {self.caught_up[-3:]}, ended {self.ended[-5:]}")
                if not self.resume and self.ended:
                    raise AssertionError(f"{self.name}: stream ended {self.ended} while "
                                         f"waiting for {what}")
                self.cond.wait(min(left, 0.25))

    def wait_caught_up(self, timeout=15.0):
        self.wait(lambda: self.caught_up, timeout, "caught_up")
        return self.caught_up[0]

    def wait_seq(self, seq, timeout=15.0):
        self.wait(lambda: self.last_seq() >= seq, timeout, f"sequence {seq}")

    def wait_count(self, n, timeout=15.0):
        self.wait(lambda: len(self.events) >= n, timeout, f"{n} events")

    def last_seq(self):
        return self.events[-1].sequence if self.events else 0

    def seqs(self):
        with self.cond:
            return [e.sequence for e in self.events]

    def snapshot(self):
        with self.cond:
            return list(self.events)

    def pause(self):
        self.gate.clear()

    def unpause(self):
        self.gate.set()

    def close(self):
        with self.cond:
            self.stopping = True
            call = self.call
        self.gate.set()
        if call is not None:
            call.cancel()
        self.thread.join(10)
        self.ch.close()


def start_gateway(gateway_factory, url, name):
    """A plaintext gateway on |url| whose event hub is ready (Subscribe
    answers UNAVAILABLE "retry later" until then)."""
    gw = gateway_factory(h2c_args("--db-url", url), name=name)
    wait_until(lambda: gw.find_event("events.ready"), 10, what=f"{name}: events.ready")
    return gw


def subject(ev):
    """The member subject of a workspace.member_* event (None otherwise)."""
    return json.loads(ev.payload_json or "{}").get("principal_subject")


def assert_consecutive(seqs, first, last, who):
    """|seqs| is exactly first, first+1, ..., last (explains the first
    anomaly: gap, duplicate or reordering)."""
    for i in range(1, len(seqs)):
        if seqs[i] != seqs[i - 1] + 1:
            lo = max(0, i - 3)
            pytest.fail(f"{who}: not consecutive at index {i}: {seqs[i - 1]} -> {seqs[i]} "
                        f"(around: {seqs[lo:i + 3]}; {len(seqs)} events)")
    if last < first:
        assert seqs == [], f"{who}: expected no events, got {seqs[:10]}..."
        return
    assert seqs, f"{who}: expected {first}..{last}, got nothing"
    assert seqs[0] == first, f"{who}: first sequence {seqs[0]}, expected {first}"
    assert seqs[-1] == last, f"{who}: last sequence {seqs[-1]}, expected {last}"


def seq_state(sql):
    """(last_seq, pending events, stored events) in the database."""
    out = sql("SELECT (SELECT last_seq FROM event_sequence), "
              "(SELECT count(*) FROM sandbox_events WHERE seq IS NULL), "
              "(SELECT count(*) FROM sandbox_events)").strip()
    return tuple(int(x) for x in out.split("|"))


def wait_sequenced(sql, total=None, timeout=15.0):
    """Waits until no event is pending (and, with |total|, last_seq == total);
    returns last_seq."""
    def done():
        last, pending, stored = seq_state(sql)
        if pending == 0 and (total is None or last == total):
            return last
        return None
    return wait_until(done, timeout, interval=0.05,
                      what=f"every event sequenced (total={total}, now={seq_state(sql)})")


def wait_hub_has(stubs, gw, seq, timeout=15.0):
    """Waits until |gw|'s hub has fetched event |seq| (a probe subscription
    from seq-1 receives it), so that later subscriptions catch up to it."""
    probe = Subscriber(stubs, gw, name="probe", after_sequence=seq - 1, all_workspaces=True,
                       resume=True, resume_for=timeout)
    try:
        probe.wait_seq(seq, timeout)
    finally:
        probe.close()


def subscribe_error(stubs, gw, **req):
    """Subscribes with |req| and returns (code, details) of the stream's end;
    fails if an event arrives first."""
    with gw.channel() as ch:
        call = stubs.events_pb2_grpc.EventsStub(ch).Subscribe(
            stubs.events_pb2.SubscribeRequest(**req), timeout=RPC_TIMEOUT)
        try:
            first = next(call)
        except grpc.RpcError as e:
            return e.code(), e.details()
        except StopIteration:
            return grpc.StatusCode.OK, ""
        call.cancel()
        pytest.fail(f"Subscribe({req}) was accepted; first message {first}")


class Writer(threading.Thread):
    """Adds members |subjects| to |workspace| one RPC after the other.

    results: (subject, code name, details) per final outcome, in order.
    acked: subjects whose write returned OK. With retry_unavailable, an
    UNAVAILABLE write is retried (same subject) until |deadline|; a retry
    answered ALREADY_EXISTS means an earlier attempt committed (ack lost),
    and the subject goes to committed_unacked. Otherwise the writer stops at
    the first error, or when stop is set.
    """

    def __init__(self, stubs, gw, workspace, subjects, retry_unavailable=False, deadline=None,
                 start_gate=None):
        super().__init__(name=f"writer-{workspace}", daemon=True)
        self.pb = stubs.openshell_pb2
        self.ch = gw.channel()
        self.stub = stubs.openshell_pb2_grpc.OpenShellStub(self.ch)
        self.workspace = workspace
        self.subjects = subjects
        self.retry_unavailable = retry_unavailable
        self.deadline = deadline or (time.monotonic() + 120)
        self.start_gate = start_gate
        self.stop = threading.Event()
        self.results = []
        self.acked = []
        self.committed_unacked = []
        self.retries = 0
        self.last_ok_at = None
        self.attempts = []  # (subject, "sent" | outcome, monotonic time)

    def run(self):
        if self.start_gate is not None:
            self.start_gate.wait(30)
        try:
            for s in self.subjects:
                if self.stop.is_set() or time.monotonic() >= self.deadline:
                    return
                if not self._write(s):
                    return
        finally:
            self.ch.close()

    def _write(self, s):
        req = self.pb.AddWorkspaceMemberRequest(workspace=self.workspace, principal_subject=s,
                                                role=ROLE_USER)
        retried = False
        while True:
            try:
                self.attempts.append((s, "sent", time.monotonic()))
                self.stub.AddWorkspaceMember(req, timeout=RPC_TIMEOUT)
                self.attempts.append((s, "OK", time.monotonic()))
                self.results.append((s, "OK", ""))
                self.acked.append(s)
                self.last_ok_at = time.monotonic()
                return True
            except grpc.RpcError as e:
                code = e.code()
                self.attempts.append((s, f"{code.name}: {e.details()}", time.monotonic()))
                if code == grpc.StatusCode.ALREADY_EXISTS and retried:
                    self.results.append((s, "ALREADY_EXISTS_AFTER_RETRY", e.details()))
                    self.committed_unacked.append(s)
                    return True
                retryable = code in (grpc.StatusCode.UNAVAILABLE,
                                     grpc.StatusCode.DEADLINE_EXCEEDED)
                if self.retry_unavailable and retryable:
                    if time.monotonic() >= self.deadline or self.stop.is_set():
                        # Outcome unknown; neither a failure nor committed.
                        self.results.append((s, "ABANDONED", e.details()))
                        return False
                    retried = True
                    self.retries += 1
                    time.sleep(0.05)
                    continue
                self.results.append((s, code.name, e.details()))
                return False

    def failures(self):
        return [r for r in self.results
                if r[1] not in ("OK", "ALREADY_EXISTS_AFTER_RETRY", "ABANDONED")]


def run_writers(writers, timeout):
    for w in writers:
        w.start()
    deadline = time.monotonic() + timeout
    for w in writers:
        w.join(max(0.1, deadline - time.monotonic()))
    alive = [w.name for w in writers if w.is_alive()]
    assert not alive, f"writers still running after {timeout}s: {alive}"


def rss_sampler(gw, stop, out):
    """Samples gw's VmRSS (KiB) into |out| until |stop| is set."""
    while not stop.is_set():
        try:
            out.append(gw.rss_kib())
        except (OSError, RuntimeError):
            return
        stop.wait(0.05)


# ---------------------------------------------------------------------------
# 1. resume from arbitrary cursors, then live delivery


def test_resume_from_any_cursor_then_live(db_url, sql, stubs, gateway_factory, subscribers):
    """300 events; for each cursor c, exactly c+1..300 in order before
    CaughtUp, from a gateway's ring and from a fresh replica (database
    pages); then 20 live events on every open stream, no gaps."""
    gw = start_gateway(gateway_factory, db_url, "gw")
    with gw.channel() as ch:
        api = Api(stubs, ch)
        api.CreateWorkspace(name="resume")
        for i in range(299):
            api.AddWorkspaceMember(workspace="resume", principal_subject=f"m{i:03d}",
                                   role=ROLE_USER)
    wait_sequenced(sql, total=300)
    # A replica started now has an empty ring: its cursors are served from
    # the database page by page; gw serves the same cursors from its ring.
    fresh = start_gateway(gateway_factory, db_url, "fresh")
    expected_subjects = [None] + [f"m{i:03d}" for i in range(299)]

    live = {}
    for g in (gw, fresh):
        wait_hub_has(stubs, g, 300)
        for c in (0, 1, 57, 150, 299, 300):
            who = f"{g.name} after_sequence={c}"
            s = subscribers(g, name=who, after_sequence=c, all_workspaces=True)
            n, cu = s.wait_caught_up()
            got = s.snapshot()[:n]
            assert cu == 300, f"{who}: caught_up.sequence {cu}"
            assert_consecutive([e.sequence for e in got], c + 1, 300, who)
            assert [subject(e) for e in got] == expected_subjects[c:], who
            if c == 0:
                assert got[0].kind == "workspace.created" and got[0].workspace == "resume"
                assert all(e.kind == "workspace.member_added" for e in got[1:])
                assert all(e.workspace == "resume" and e.timestamp_ms > 0 for e in got)
            if c in (0, 150, 300):
                live[who] = s
            else:
                s.close()

    # Live: 20 more writes (through gw); every open stream gets 301..320.
    with gw.channel() as ch:
        api = Api(stubs, ch)
        for i in range(20):
            api.AddWorkspaceMember(workspace="resume", principal_subject=f"live{i:02d}",
                                   role=ROLE_USER)
    for who, s in live.items():
        s.wait_seq(320)
        c = s.req["after_sequence"]
        evs = s.snapshot()
        assert_consecutive([e.sequence for e in evs], c + 1, 320, who)
        assert [subject(e) for e in evs[-20:]] == [f"live{i:02d}" for i in range(20)], who
        assert len(s.caught_up) == 1, f"{who}: CaughtUp sent {len(s.caught_up)} times"
        assert not s.ended, f"{who}: stream ended: {s.ended}"


def test_cursor_beyond_head(db_url, sql, stubs, gateway_factory, subscribers):
    """A cursor past the newest event: nothing until the stream gets there;
    CaughtUp reports the newest existing sequence (events.proto: "Highest
    sequence number existing when the stream caught up")."""
    gw = start_gateway(gateway_factory, db_url, "gw")
    with gw.channel() as ch:
        api = Api(stubs, ch)
        api.CreateWorkspace(name="ahead")
        for i in range(9):
            api.AddWorkspaceMember(workspace="ahead", principal_subject=f"m{i}", role=ROLE_USER)
    wait_sequenced(sql, total=10)
    wait_hub_has(stubs, gw, 10)
    s = subscribers(gw, name="after_sequence=12", after_sequence=12, all_workspaces=True)
    n, cu = s.wait_caught_up()
    assert n == 0
    with gw.channel() as ch:
        api = Api(stubs, ch)
        for i in range(5):
            api.AddWorkspaceMember(workspace="ahead", principal_subject=f"late{i}",
                                   role=ROLE_USER)
    s.wait_seq(15)
    assert s.seqs() == [13, 14, 15]
    assert cu == 10, f"CaughtUp.sequence is {cu} with events 1..10 stored (cursor 12)"


# ---------------------------------------------------------------------------
# 2. filters and request validation


def test_filters(db_url, sql, stubs, gateway_factory, subscribers):
    gw = start_gateway(gateway_factory, db_url, "gw")
    # Live subscribers, started before anything is written.
    live_alpha = subscribers(gw, name="live-alpha", workspace="alpha")
    live_default = subscribers(gw, name="live-default")
    live_removed = subscribers(gw, name="live-removed", all_workspaces=True,
                               kinds=["workspace.member_removed"])
    live_web = subscribers(gw, name="live-web", all_workspaces=True, label_selector="app=web")
    for s in (live_alpha, live_default, live_removed, live_web):
        s.wait_caught_up()

    with gw.channel() as ch:
        api = Api(stubs, ch)
        api.CreateWorkspace(name="alpha")
        api.CreateWorkspace(name="beta")
        for i in range(10):
            for ws in ("alpha", "beta"):
                api.AddWorkspaceMember(workspace=ws, principal_subject=f"{ws}-{i}",
                                       role=ROLE_USER)
        api.AddWorkspaceMember(principal_subject="dflt-0", role=ROLE_USER)  # "default"
        for i in range(0, 10, 3):
            api.RemoveWorkspaceMember(workspace="alpha", principal_subject=f"alpha-{i}")
            api.RemoveWorkspaceMember(workspace="beta", principal_subject=f"beta-{i}")
    # SQL writers: sandbox events carry the sandbox's labels.
    sql("SELECT id FROM gw_sandbox_create(gen_random_uuid(), 'default', 'sb1', 'alice', "
        "'alice', '{\"app\":\"web\"}'::jsonb, '{}'::jsonb, '\\x'::bytea, '{}'::jsonb, "
        "'sql-test', 'PROVISIONING', NULL)")
    sql("SELECT id FROM gw_sandbox_create(gen_random_uuid(), 'default', 'sb2', 'bob', "
        "'bob', '{\"app\":\"db\"}'::jsonb, '{}'::jsonb, '\\x'::bytea, '{}'::jsonb, "
        "'sql-test', 'PROVISIONING', NULL)")
    sql("SELECT id FROM gw_sandbox_create(gen_random_uuid(), 'alpha', 'sb3', 'carol', "
        "'carol', '{\"app\":\"web\",\"tier\":\"x\"}'::jsonb, '{}'::jsonb, '\\x'::bytea, "
        "'{}'::jsonb, 'sql-test', 'PROVISIONING', NULL)")
    # sb1 is relabelled, then changes phase: that event carries the labels it
    # has then (app=api), so app=web subscribers do not get it.
    sql("UPDATE sandboxes SET labels = '{\"app\":\"api\"}' WHERE name = 'sb1'")
    sql("SELECT count(*) FROM sandboxes s, LATERAL gw_sandbox_update(s.id, 0, 'READY', NULL, "
        "NULL, 'sandbox.phase_changed', 'alice', 'ready', '{}') WHERE s.name = 'sb1'")
    with gw.channel() as ch:  # two events: workspace.terminating, workspace.deleted
        assert Api(stubs, ch).DeleteWorkspace(name="beta").deleted is True
    total = 2 + 20 + 1 + 8 + 3 + 1 + 2
    wait_sequenced(sql, total=total)
    wait_hub_has(stubs, gw, total)

    # The truth, from the database.
    rows = [line.split("|") for line in sql(
        "SELECT seq, workspace, kind, sandbox_name, labels::text FROM sandbox_events "
        "ORDER BY seq").splitlines()]
    assert [int(r[0]) for r in rows] == list(range(1, total + 1))

    def expect(pred):
        return [int(r[0]) for r in rows if pred(r)]

    want = {
        "alpha": expect(lambda r: r[1] == "alpha"),
        "default": expect(lambda r: r[1] == "default"),
        "removed": expect(lambda r: r[2] == "workspace.member_removed"),
        "web": expect(lambda r: "\"app\": \"web\"" in r[4]),
        "beta-added": expect(lambda r: r[1] == "beta" and r[2] == "workspace.member_added"),
        "created": expect(lambda r: r[2] in ("workspace.created", "sandbox.created")),
        "gone": expect(lambda r: r[2] in ("workspace.terminating", "workspace.deleted")),
        "api": expect(lambda r: "\"app\": \"api\"" in r[4]),
    }
    assert len(want["alpha"]) == 1 + 10 + 4 + 1
    assert len(want["default"]) == 4
    assert len(want["gone"]) == 2 and len(want["api"]) == 1
    assert len(want["removed"]) == 8
    assert len(want["web"]) == 2

    def check(s, key, caught_up_only=False):
        s.wait_seq(want[key][-1])
        evs = s.snapshot()
        if caught_up_only:
            n, cu = s.caught_up[0]
            assert cu == total, f"{s.name}: caught_up.sequence {cu}"
            evs = evs[:n]
        assert [e.sequence for e in evs] == want[key], s.name
        return evs

    # Live delivery with filters.
    evs = check(live_alpha, "alpha")
    assert all(e.workspace == "alpha" for e in evs)
    evs = check(live_default, "default")
    assert [e.kind for e in evs] == ["workspace.member_added", "sandbox.created",
                                     "sandbox.created", "sandbox.phase_changed"]
    changed = evs[-1]
    assert (changed.sandbox_name, changed.previous_phase, changed.new_phase, changed.reason,
            dict(changed.labels)) == ("sb1", PHASE_PROVISIONING, PHASE_READY, "ready",
                                      {"app": "api"})
    evs = check(live_removed, "removed")
    assert sorted(subject(e) for e in evs) == sorted(
        [f"alpha-{i}" for i in range(0, 10, 3)] + [f"beta-{i}" for i in range(0, 10, 3)])
    evs = check(live_web, "web")
    assert [(e.sandbox_name, e.workspace, e.kind) for e in evs] == [
        ("sb1", "default", "sandbox.created"), ("sb3", "alpha", "sandbox.created")]
    assert dict(evs[0].labels) == {"app": "web"}
    assert dict(evs[1].labels) == {"app": "web", "tier": "x"}
    assert evs[0].new_phase == PHASE_PROVISIONING and evs[0].sandbox_id
    assert evs[0].actor == "alice"

    # Catch-up with filters, from gw's ring and from a fresh replica (its
    # ring starts at the head: served from the database).
    fresh = start_gateway(gateway_factory, db_url, "fresh")
    wait_hub_has(stubs, fresh, total)
    for g in (gw, fresh):
        cases = [
            ("alpha", dict(workspace="alpha")),
            ("default", dict()),
            ("default", dict(workspace="default")),
            ("removed", dict(all_workspaces=True, kinds=["workspace.member_removed"])),
            ("web", dict(all_workspaces=True, label_selector="app=web")),
            ("web", dict(all_workspaces=True, label_selector=" app = web ,")),
            ("beta-added", dict(workspace="beta", kinds=["workspace.member_added"])),
            ("created", dict(all_workspaces=True,
                             kinds=["workspace.created", "sandbox.created"])),
            ("gone", dict(all_workspaces=True,
                          kinds=["workspace.terminating", "workspace.deleted"])),
            ("gone", dict(workspace="beta",
                          kinds=["workspace.terminating", "workspace.deleted"])),
            ("api", dict(all_workspaces=True, label_selector="app=api")),
        ]
        for key, req in cases:
            s = subscribers(g, name=f"{g.name} {req}", **req)
            s.wait_caught_up()
            check(s, key, caught_up_only=True)
            s.close()
        # No match at all: just caught_up.
        s = subscribers(g, name=f"{g.name} nomatch", all_workspaces=True,
                        label_selector="app=none")
        assert s.wait_caught_up() == (0, total)
        s.close()
        s = subscribers(g, name=f"{g.name} noworkspace", workspace="nosuch")
        assert s.wait_caught_up() == (0, total)
        s.close()

    # Request validation.
    code, details = subscribe_error(stubs, gw, all_workspaces=True, workspace="alpha")
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details
    for bad in ("app", "=web", "app!=web", "app=web=x", "Bad Key=x", "app=bad value"):
        code, details = subscribe_error(stubs, gw, all_workspaces=True, label_selector=bad)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (bad, code, details)
        assert "label_selector" in details, (bad, details)


# ---------------------------------------------------------------------------
# 3. concurrent writers and subscribers

WRITERS = 10
PER_WRITER = int(os.environ.get("E2E_EVENTS_PER_WRITER", "1000"))


@pytest.mark.slow
def test_concurrent_writers_and_subscribers(db_url, sql, stubs, gateway_factory, subscribers):
    gw = start_gateway(gateway_factory, db_url, "gw")
    with gw.channel() as ch:
        api = Api(stubs, ch)
        for w in range(WRITERS):
            api.CreateWorkspace(name=f"conc-{w}")
    subs = [subscribers(gw, name=f"sub{i}", all_workspaces=True) for i in range(3)]
    for s in subs:
        s.wait_caught_up()

    gate = threading.Event()
    writers = [Writer(stubs, gw, f"conc-{w}", [f"w{w}-{j:04d}" for j in range(PER_WRITER)],
                      start_gate=gate) for w in range(WRITERS)]
    for w in writers:
        w.start()
    t0 = time.monotonic()
    gate.set()
    for w in writers:
        w.join(max(0.1, 120 - (time.monotonic() - t0)))
    write_time = time.monotonic() - t0
    assert not any(w.is_alive() for w in writers), "writers still running after 120 s"
    acked = sum(len(w.acked) for w in writers)
    failures = [f for w in writers for f in w.failures()]
    print(f"concurrency: {acked} acknowledged writes in {write_time:.1f}s "
          f"({acked / write_time:.0f}/s), failures: {failures[:5]}")
    assert not failures, f"writes failed: {failures[:10]}"
    total = acked + WRITERS

    t1 = time.monotonic()
    for s in subs:
        s.wait_count(total, timeout=60)
    print(f"concurrency: subscribers complete {time.monotonic() - t1:.1f}s after the last ack")
    wait_sequenced(sql, total=total)
    time.sleep(0.3)  # anything beyond |total| would be a duplicate
    acked_set = {(w.workspace, s) for w in writers for s in w.acked}
    first = None
    for s in subs:
        evs = s.snapshot()
        assert len(evs) == total, f"{s.name}: {len(evs)} events, expected {total}"
        assert_consecutive([e.sequence for e in evs], 1, total, s.name)
        got = [(e.workspace, subject(e)) for e in evs if e.kind == "workspace.member_added"]
        assert len(got) == acked and set(got) == acked_set, s.name
        # Each writer is sequential: its events appear in its own order.
        for w in writers:
            mine = [x for ws, x in got if ws == w.workspace]
            assert mine == w.acked, f"{s.name}: {w.workspace} out of order"
        assert len(s.caught_up) == 1 and not s.ended, (s.name, s.caught_up, s.ended)
        if first is None:
            first = [(e.sequence, e.kind, e.workspace, e.payload_json) for e in evs]
        else:
            assert [(e.sequence, e.kind, e.workspace, e.payload_json) for e in evs] == first


# ---------------------------------------------------------------------------
# 4. kill -9 of the gateway while writers run


@pytest.mark.slow
@pytest.mark.parametrize("survivor", ["restart", "replica"])
def test_gateway_crash_keeps_acknowledged_events(db_url, sql, stubs, gateway_factory,
                                                  subscribers, survivor):
    """kill -9 while 10 writers run. "restart": a new gateway on the same
    database finds every acknowledged write. "replica": a second gateway
    that was running all along numbers the dead one's pending events (no
    restart) and its live subscriber gets them."""
    gw = start_gateway(gateway_factory, db_url, "gw")
    peer = peer_sub = None
    if survivor == "replica":
        peer = start_gateway(gateway_factory, db_url, "peer")
        peer_sub = subscribers(peer, name="peer-live", all_workspaces=True)
        peer_sub.wait_caught_up()
    with gw.channel() as ch:
        api = Api(stubs, ch)
        for w in range(WRITERS):
            api.CreateWorkspace(name=f"crash-{w}")
    watcher = subscribers(gw, name="watcher", all_workspaces=True)
    watcher.wait_caught_up()

    writers = [Writer(stubs, gw, f"crash-{w}", [f"c{w}-{j:04d}" for j in range(1000)])
               for w in range(WRITERS)]
    for w in writers:
        w.start()
    wait_until(lambda: sum(len(w.acked) for w in writers) >= 1500, 60, interval=0.01,
               what="1500 acknowledged writes before the kill")
    pid = gw.pid
    gw.stop(sig=signal.SIGKILL)
    killed_at = time.monotonic()
    assert gw.proc.returncode == -signal.SIGKILL
    for w in writers:
        w.join(RPC_TIMEOUT + 5)
    assert not any(w.is_alive() for w in writers)
    acked = [(w.workspace, s) for w in writers for s in w.acked]
    failed = [(w.workspace, f) for w in writers for f in w.failures()]
    codes = {f[1] for _, f in failed}
    print(f"crash ({survivor}): killed pid {pid} after {len(acked)} acks; failed writes: "
          f"{len(failed)} {sorted(codes)}; watcher had {len(watcher.events)} events")
    assert codes <= {"UNAVAILABLE"}, f"unexpected failure codes: {failed[:10]}"

    def check(evs, last, who):
        assert_consecutive([e.sequence for e in evs], 1, last, who)
        got = [(e.workspace, subject(e)) for e in evs if e.kind == "workspace.member_added"]
        assert len(got) == len(set(got)), f"{who}: an event appears twice"
        missing = set(acked) - set(got)
        assert not missing, \
            f"{who}: {len(missing)} acknowledged writes have no event: {sorted(missing)[:10]}"
        possible = set(acked) | {(ws, f[0]) for ws, f in failed}
        unexpected = set(got) - possible
        assert not unexpected, f"{who}: events for writes never made: {sorted(unexpected)[:10]}"
        for w in writers:
            mine = [x for ws, x in got if ws == w.workspace]
            assert mine[:len(w.acked)] == w.acked, f"{who}: {w.workspace} out of order"
            assert len(mine) <= len(w.acked) + 1, f"{who}: {w.workspace}: >1 unacked write"
        return got

    if survivor == "replica":
        last = wait_sequenced(sql, timeout=15)  # by the peer: nobody restarted
        peer_sub.wait_seq(last, timeout=15)
        time.sleep(0.3)
        check(peer_sub.snapshot(), last, "peer-live")
        print(f"crash (replica): peer numbered and delivered the orphans "
              f"{time.monotonic() - killed_at:.1f}s after the kill")

    gw2 = start_gateway(gateway_factory, db_url, "gw2")
    restart_s = time.monotonic() - killed_at
    last = wait_sequenced(sql)
    wait_hub_has(stubs, gw2, last)
    s = subscribers(gw2, name="after-restart", all_workspaces=True)
    n, cu = s.wait_caught_up(30)
    assert cu == last
    evs = s.snapshot()[:n]
    got = check(evs, last, s.name)
    # The watcher (on the dead gateway) saw a gapless prefix of the same stream.
    before = watcher.snapshot()
    assert_consecutive([e.sequence for e in before], 1, len(before), "watcher")
    assert [(e.sequence, e.payload_json) for e in before] == \
        [(e.sequence, e.payload_json) for e in evs[:len(before)]]
    if peer_sub is not None:
        assert [(e.sequence, e.payload_json) for e in peer_sub.snapshot()] == \
            [(e.sequence, e.payload_json) for e in evs]
    print(f"crash ({survivor}): restart+ready {restart_s:.1f}s, {last} events after restart, "
          f"{len(got) - len(acked)} unacknowledged writes present")


# ---------------------------------------------------------------------------
# 5. PostgreSQL restart under load


PG_WRITERS = 10


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate", "outage"])
def test_postgres_restart_under_load(own_postgres, stubs, gateway_factory, subscribers, mode):
    """10 writers (retrying UNAVAILABLE) while PostgreSQL restarts: three
    times "pg_ctl restart -m fast" / "-m immediate", or one 5-second outage.
    The same gateway process serves writes again within 30 s; a subscriber
    connected throughout and one that starts afterwards see the same
    gapless stream, which holds an event for every committed write."""
    pg = own_postgres
    gw = start_gateway(gateway_factory, pg.dsn, "gw")
    pid = gw.pid

    def sql(q):
        return pg.sql(q)

    with gw.channel() as ch:
        api = Api(stubs, ch)
        for w in range(PG_WRITERS):
            api.CreateWorkspace(name=f"pgr-{w}")
    during = subscribers(gw, name="during", all_workspaces=True, resume=True)
    during.wait_caught_up()

    deadline = time.monotonic() + 90
    writers = [Writer(stubs, gw, f"pgr-{w}", [f"p{w}-{j:04d}" for j in range(1000)],
                      retry_unavailable=True, deadline=deadline) for w in range(PG_WRITERS)]
    for w in writers:
        w.start()
    pg_ctl = [PG_BIN / "pg_ctl", "-D", pg.pgdata, "-l", pg.log_path, "-w", "-t", "60"]
    t0 = None
    restarts = []  # (began, up, first OK write), monotonic
    for k in range(1 if mode == "outage" else 3):
        wait_until(lambda: sum(len(w.acked) for w in writers) >= 400 * (k + 1), 30,
                   interval=0.01, what=f"{400 * (k + 1)} writes before restart {k + 1}")
        began = time.monotonic()
        t0 = t0 or began
        if mode == "outage":  # down for 5 s, writers retrying all along
            run(pg._as_owner([*pg_ctl, "-m", "fast", "stop"]), timeout=90)
            time.sleep(5)
            run(pg._as_owner([*pg_ctl, "start"]), timeout=90)
        else:
            run(pg._as_owner([*pg_ctl, "-m", mode, "restart"]), timeout=90)
        up = time.monotonic()
        # The same gateway process serves writes again, within 30 s.
        wait_until(lambda: any(w.last_ok_at and w.last_ok_at > up for w in writers), 30,
                   interval=0.02, what=f"a successful write after restart {k + 1}")
        ok = min(w.last_ok_at for w in writers if w.last_ok_at and w.last_ok_at > up)
        restarts.append((began, up, ok))
        assert gw.running and gw.pid == pid, "the gateway process did not survive"
    time.sleep(1.0)  # some load after the last recovery
    for w in writers:
        w.stop.set()
    for w in writers:
        w.join(RPC_TIMEOUT + 5)
    assert not any(w.is_alive() for w in writers)
    assert gw.running and gw.pid == pid, "the gateway process did not survive"
    with gw.channel() as ch:  # and it still accepts new writes
        Api(stubs, ch).AddWorkspaceMember(workspace="pgr-0", principal_subject="after",
                                          role=ROLE_USER)

    acked = [(w.workspace, s) for w in writers for s in w.acked]
    committed = acked + [(w.workspace, s) for w in writers for s in w.committed_unacked]
    committed.append(("pgr-0", "after"))
    failures = [f for w in writers for f in w.failures()]
    retries = sum(w.retries for w in writers)
    print(f"pg restart ({mode}): " + "; ".join(
        f"restart {i + 1}: pg_ctl {up - began:.1f}s, first OK write {ok - up:.2f}s after "
        f"PostgreSQL was up" for i, (began, up, ok) in enumerate(restarts))
        + f"; {len(committed)} committed writes ({len(committed) - len(acked) - 1} known only "
        f"from ALREADY_EXISTS on retry), {retries} retries, failures {failures[:5]}")
    assert not failures, f"writes failed with a non-retryable error: {failures[:10]}"

    # The stream: gapless, in order, exactly the events stored, for the
    # subscriber connected throughout and for one that starts now.
    last = wait_sequenced(sql)
    stored = [tuple(r.split("|")) for r in sql(
        "SELECT seq, workspace, coalesce(payload->>'principal_subject', '') FROM sandbox_events "
        "ORDER BY seq").splitlines()]
    assert [int(r[0]) for r in stored] == list(range(1, last + 1))
    during.wait_seq(last, timeout=30)
    after = subscribers(gw, name="after", all_workspaces=True)
    n, cu = after.wait_caught_up(30)
    assert cu == last
    time.sleep(0.3)
    for s, evs in ((during, during.snapshot()), (after, after.snapshot()[:n])):
        assert_consecutive([e.sequence for e in evs], 1, last, s.name)
        assert [(str(e.sequence), e.workspace, subject(e) or "") for e in evs] == stored, \
            f"{s.name}: the stream differs from the stored events"
    print(f"pg restart ({mode}): subscriber 'during' reconnected {during.reconnects} times "
          f"(ended: {during.ended[:3]})")

    # Every committed write is in the database, with its event.
    members = {tuple(r.split("|")) for r in sql(
        "SELECT w.name, m.principal_subject FROM workspace_members m "
        "JOIN workspaces w ON w.id = m.workspace_id").splitlines()}
    evrows = {(r[1], r[2]) for r in stored}
    lost = sorted(set(committed) - members)
    no_event = sorted(set(committed) - evrows)
    if lost or no_event:
        history = {}
        for w in writers:
            for subj, what, at in w.attempts:
                if (w.workspace, subj) in set(lost) | set(no_event):
                    history.setdefault(subj, []).append(f"{what} at t{at - t0:+.3f}s")
        pglog = pg.log_text().splitlines()
        evidence = []
        for _, subj in lost[:3]:
            for i, line in enumerate(pglog):
                if f"'{subj}'" in line:
                    m = re.search(r"\[(\d+)\]", line)
                    bpid = m.group(1) if m else None
                    evidence.append(f"--- PostgreSQL log, backend that ran {subj}:")
                    evidence += [ln for ln in pglog[max(0, i - 2):i + 40]
                                 if bpid and f"[{bpid}]" in ln][:6]
        print("\n".join(evidence))
        pytest.fail(
            f"{len(lost)} writes answered OK are missing from workspace_members and "
            f"{len(no_event)} have no event (restarts began at " + ", ".join(
                f"t{b - t0:+.3f}s (up t{u - t0:+.3f}s)" for b, u, _ in restarts)
            + f"): lost={lost[:10]} history={history}")
    assert len(evrows) == last  # one event per write (and per workspace creation)


# ---------------------------------------------------------------------------
# 6. two replicas on one database


def test_two_replicas_one_database(db_url, sql, stubs, gateway_factory, subscribers):
    a = start_gateway(gateway_factory, db_url, "gwA")
    b = start_gateway(gateway_factory, db_url, "gwB")
    on_b = subscribers(b, name="on-B", all_workspaces=True)
    on_a = subscribers(a, name="on-A", all_workspaces=True)
    on_b.wait_caught_up()
    on_a.wait_caught_up()

    # Writes through A, read on B.
    with a.channel() as ch:
        api = Api(stubs, ch)
        api.CreateWorkspace(name="rep-a")
        for i in range(100):
            api.AddWorkspaceMember(workspace="rep-a", principal_subject=f"a{i:03d}",
                                   role=ROLE_USER)
    on_b.wait_seq(101, timeout=10)
    evs = on_b.snapshot()
    assert_consecutive([e.sequence for e in evs], 1, 101, "on-B")
    assert [subject(e) for e in evs[1:]] == [f"a{i:03d}" for i in range(100)]

    # Writes through B, read on A.
    with b.channel() as ch:
        api = Api(stubs, ch)
        api.CreateWorkspace(name="rep-b")
        for i in range(100):
            api.AddWorkspaceMember(workspace="rep-b", principal_subject=f"b{i:03d}",
                                   role=ROLE_USER)
    on_a.wait_seq(202, timeout=10)
    evs = on_a.snapshot()
    assert_consecutive([e.sequence for e in evs], 1, 202, "on-A")
    assert [subject(e) for e in evs[102:]] == [f"b{i:03d}" for i in range(100)]

    # Both at once: both replicas deliver the same gapless stream.
    ws = []
    with a.channel() as ch:
        for i in range(4):
            Api(stubs, ch).CreateWorkspace(name=f"rep-both-{i}")
            ws.append(f"rep-both-{i}")
    writers = [Writer(stubs, a if i % 2 == 0 else b, ws[i], [f"x{i}-{j:03d}" for j in range(200)])
               for i in range(4)]
    run_writers(writers, 60)
    assert not [f for w in writers for f in w.failures()]
    total = 202 + 4 + 800
    wait_sequenced(sql, total=total)
    for s in (on_a, on_b):
        s.wait_seq(total, timeout=15)
    ea, eb = on_a.snapshot(), on_b.snapshot()
    assert_consecutive([e.sequence for e in ea], 1, total, "on-A")
    assert_consecutive([e.sequence for e in eb], 1, total, "on-B")
    assert [(e.sequence, e.payload_json) for e in ea] == [(e.sequence, e.payload_json) for e in eb]
    for w in writers:
        assert [subject(e) for e in ea if e.workspace == w.workspace
                and e.kind == "workspace.member_added"] == w.acked
    assert len(on_a.caught_up) == 1 and len(on_b.caught_up) == 1
    assert not on_a.ended and not on_b.ended


# ---------------------------------------------------------------------------
# 7. slow subscriber: served from the database, bounded memory

SLOW_WORKSPACES = 20  # x 1000 members (+ 1 creation) = 20,020 events
RING = 8192           # events_hub_opts.ring_size default (src/events/events.h)


@pytest.mark.slow
def test_slow_subscriber_bounded_memory(db, db_url, sql, postgres, stubs, gateway_factory,
                                        subscribers):
    # Statement logging for this database only: shows the catch-up reads the
    # gateway makes (a subscriber that fell behind the ring of recent events
    # must be served page by page from PostgreSQL).
    sql(f"ALTER DATABASE {db} SET log_statement = 'all'")
    gw = start_gateway(gateway_factory, db_url, "gw")
    # A fixed client window (no BDP growth): once the subscriber stops
    # reading, HTTP/2 flow control stalls its stream and the gateway's
    # per-call output queue fills; then the gateway stops pulling events.
    slow_opts = [("grpc.http2.bdp_probe", 0)]
    slow = subscribers(gw, name="slow", all_workspaces=True, channel_options=slow_opts)
    fast = subscribers(gw, name="fast", all_workspaces=True)
    for s in (slow, fast):
        s.wait_caught_up()
    time.sleep(0.5)
    baseline = gw.rss_kib()
    samples = []
    stop = threading.Event()
    sampler = threading.Thread(target=rss_sampler, args=(gw, stop, samples), daemon=True)
    sampler.start()
    log_start = postgres.log_path.stat().st_size
    total = SLOW_WORKSPACES * 1001
    try:
        # Some events while it still reads, then it stops reading.
        sql("SELECT count(*) FROM gw_workspace_create(gen_random_uuid(), 'slow-0', '{}', 'e2e')")
        sql("SELECT count(*) FROM generate_series(1, 50) g, LATERAL gw_member_add("
            "gen_random_uuid(), 'slow-0', 'slow-0-' || g, 'USER', 'e2e')")
        slow.wait_seq(51)
        slow.pause()
        t0 = time.monotonic()

        def fill(ws_indexes):
            for w in ws_indexes:
                name = f"slow-{w}"
                if w > 0:
                    sql(f"SELECT count(*) FROM gw_workspace_create(gen_random_uuid(), "
                        f"'{name}', '{{}}', 'e2e')")
                lo = 51 if w == 0 else 1
                # One transaction per statement: 1000 (or 950) events at once.
                sql(f"SELECT count(*) FROM generate_series({lo}, 1000) g, LATERAL "
                    f"gw_member_add(gen_random_uuid(), '{name}', '{name}-' || g, 'USER', 'e2e')")

        fillers = [threading.Thread(target=fill, args=(range(k, SLOW_WORKSPACES, 2),))
                   for k in range(2)]
        for f in fillers:
            f.start()
        for f in fillers:
            f.join(120)
        assert not any(f.is_alive() for f in fillers)
        wait_sequenced(sql, total=total, timeout=30)
        fast.wait_seq(total, timeout=30)
        write_s = time.monotonic() - t0
        paused_at = len(slow.events)
        time.sleep(1.0)  # it stays stalled
        assert len(slow.events) == paused_at
        peak_paused = max(samples)
        slow.unpause()
        t1 = time.monotonic()
        slow.wait_seq(total, timeout=60)
        drain_s = time.monotonic() - t1
        time.sleep(0.5)
    finally:
        stop.set()
        sampler.join(5)
    peak = max(samples + [gw.rss_kib()])
    with open(postgres.log_path, errors="replace") as f:
        f.seek(log_start)
        pglog = f.read()
    # ev_fetch with LIMIT 256 = a subscriber's catch-up page (the hub's own
    # fetches into the ring use LIMIT 1000).
    pages = [int(a) for a in re.findall(r"parameters: \$1 = '(\d+)', \$2 = '256'", pglog)]
    print(f"slow subscriber: {total} events written in {write_s:.1f}s while it was stalled "
          f"(client had {paused_at}, gateway-side cursor at {pages[0] if pages else '?'}); "
          f"drained in {drain_s:.1f}s with {len(pages)} catch-up pages from PostgreSQL; "
          f"RSS baseline {baseline / 1024:.1f} MiB, peak while stalled "
          f"{peak_paused / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB")

    evs = slow.snapshot()
    assert_consecutive([e.sequence for e in evs], 1, total, "slow")
    assert len({(e.workspace, subject(e)) for e in evs}) == total
    rows = [r.split("|") for r in sql(
        "SELECT seq, workspace, kind FROM sandbox_events ORDER BY seq").splitlines()]
    assert [(e.sequence, e.workspace, e.kind) for e in evs] == \
        [(int(r[0]), r[1], r[2]) for r in rows]
    assert len(slow.caught_up) == 1 and not slow.ended
    assert_consecutive(fast.seqs(), 1, total, "fast")
    assert pages and pages[0] < total - RING, (
        "the slow subscriber never fell behind the ring of recent events, so it was not "
        f"served from the database (page cursors: {pages[:5]})")
    assert peak - baseline <= 64 * MIB_KIB, \
        f"RSS grew by {(peak - baseline) / 1024:.1f} MiB (bound 64 MiB)"

    # Workspace-filtered catch-up across the ring boundary: pages of
    # workspace rows from PostgreSQL, then the ring.
    lo = total - RING
    for ws in sql("SELECT workspace FROM sandbox_events GROUP BY workspace "
                  f"HAVING min(seq) < {lo} ORDER BY max(seq) DESC LIMIT 2").split():
        want = [int(r[0]) for r in rows if r[1] == ws]
        s = subscribers(gw, name=f"ws-{ws}", workspace=ws, channel_options=slow_opts)
        n, cu = s.wait_caught_up(30)
        assert cu == total
        assert [e.sequence for e in s.snapshot()[:n]] == want, f"workspace {ws}"
        s.close()

