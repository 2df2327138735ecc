"""CreateSshSession, RevokeSshSession and ForwardTcp (semantics.md §13).

Two groups:

  * Store-made sandboxes. Rows are written with the store's own SQL
    functions (gw_sandbox_create / gw_sandbox_update), so the argument,
    token and cap checks run against a READY record with no supervisor
    behind it. A forward that passes every check then waits for a
    supervisor session (15 s, semantics.md §14), which is what the cap
    tests rely on: the waiting forwards hold their slots.
  * Real sandboxes: the managed process driver starts each sandbox's
    supervisor, which dials back; the sandbox's command is a small Python
    TCP server on loopback inside the sandbox's own network namespace, and
    ForwardTcp reaches it only through the relay.

The ssh_sessions table (sql/005_ssh_sessions.sql) is checked with psql:
only token hashes are stored, and stopping or removing a sandbox deletes
its sessions.
"""

import hashlib
import queue
import threading
import time
import uuid

import grpc
import pytest

from drivers_fixtures import (  # noqa: F401 - fixtures
    WAIT,
    _drivers_stopper,
    _leaks,
    db_url,
    env,
    new_token,
)
from utils import h2c_args, wait_until

pytestmark = pytest.mark.postgres

RPC_TIMEOUT = 10.0
RELAY_WAIT = 15.0      # the gateway waits this long for a supervisor session
ECHO_PORT = 7000       # inside the sandbox's network namespace
BYE_PORT = 7001        # sends "bye\n" and closes at once
CLOSED_PORT = 7002     # nothing listens there
SINK_PORT = 7003       # reads to EOF, answers "<count> <sha256 hex>\n" and closes
SOURCE_PORT = 7004     # reads "<count>\n", sends that many pattern bytes and closes
READY_WAIT = 60.0
LOCAL_DEV = "unauthenticated-local-dev"


# ---------------------------------------------------------------------------
# helpers


def sha256_hex(text):
    return hashlib.sha256(text.encode()).hexdigest()


def rpc_error(fn, *args, **kw):
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kw)
    return info.value.code(), info.value.details()


class Api:
    def __init__(self, stubs, ch):
        self.pb = stubs.openshell_pb2
        self.stub = stubs.openshell_pb2_grpc.OpenShellStub(ch)

    def __getattr__(self, method):
        if method.startswith("_"):
            raise AttributeError(method)
        req_type = getattr(self.pb, method + "Request")
        rpc = getattr(self.stub, method)
        return lambda timeout=RPC_TIMEOUT, **kw: rpc(req_type(**kw), timeout=timeout)

    def init(self, sandbox_id, token="", host=None, port=None, ssh=False, service_id=""):
        kw = {"sandbox_id": sandbox_id, "authorization_token": token, "service_id": service_id}
        if ssh:
            kw["ssh"] = self.pb.SshRelayTarget()
        elif host is not None or port is not None:
            kw["tcp"] = self.pb.TcpRelayTarget(host=host or "", port=port or 0)
        return self.pb.TcpForwardFrame(init=self.pb.TcpForwardInit(**kw))

    def data(self, b):
        return self.pb.TcpForwardFrame(data=b)

    def forward(self, *frames, **kw):
        return Forward(self, frames, **kw)


class Forward:
    """One ForwardTcp call. Frames go out from a queue (None = half-close);
    a thread reads the responses: their bytes are appended to .data (or
    only hashed, with keep=False) and .end is the final (code, details)."""

    def __init__(self, api, frames=(), timeout=120, keep=True, maxsize=0):
        self.api = api
        self.q = queue.Queue(maxsize)
        for f in frames:
            self.q.put(f)
        self.keep = keep
        self.data = bytearray()
        self.nbytes = 0
        self.digest = hashlib.sha256()
        self.bad_frames = []
        self.end = None
        self.cond = threading.Condition()
        self.call = api.stub.ForwardTcp(self._requests(), timeout=timeout)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _requests(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            yield item

    def _read(self):
        try:
            for frame in self.call:
                with self.cond:
                    if frame.WhichOneof("payload") != "data":
                        self.bad_frames.append(frame)
                    if self.keep:
                        self.data += frame.data
                    self.digest.update(frame.data)
                    self.nbytes += len(frame.data)
                    self.cond.notify_all()
            end = (grpc.StatusCode.OK, "")
        except grpc.RpcError as e:
            end = (e.code(), e.details())
        with self.cond:
            self.end = end
            self.cond.notify_all()

    def send(self, b):
        self.q.put(self.api.data(b))

    def send_frame(self, frame):
        self.q.put(frame)

    def half_close(self):
        self.q.put(None)

    def wait_bytes(self, n, timeout=WAIT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.nbytes < n:
                left = deadline - time.monotonic()
                if left <= 0 or self.end is not None:
                    raise AssertionError(f"got {self.nbytes} of {n} bytes (end: {self.end})")
                self.cond.wait(min(left, 0.2))

    def wait_end(self, timeout=WAIT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.end is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"ForwardTcp did not end within {timeout}s "
                                         f"({self.nbytes} bytes so far)")
                self.cond.wait(min(left, 0.2))
            return self.end

    def cancel(self):
        self.call.cancel()
        self.q.put(None)


class Store:
    """Sandbox rows and SSH sessions written with the store's functions."""

    def __init__(self, postgres, db, pb):
        self.postgres = postgres
        self.db = db
        self.pb = pb

    def sql(self, q):
        return self.postgres.sql(q, dbname=self.db).strip()

    def sandbox(self, name, phase="READY", workspace="default"):
        sid = str(uuid.uuid4())
        spec = self.pb.SandboxSpec(command=["sleep", "60"]).SerializeToString()
        # Driver "sqltest": no compute driver reconciles these rows.
        self.sql(f"SELECT id FROM gw_sandbox_create('{sid}', '{workspace}', '{name}', 'owner-1', "
                 f"'e2e', '{{}}', '{{}}', '\\x{spec.hex()}'::bytea, '{{}}', 'sqltest', "
                 f"'{phase}', NULL)")
        return sid

    def set_phase(self, sid, phase):
        self.sql(f"SELECT id FROM gw_sandbox_update('{sid}', 0, '{phase}', NULL, NULL, "
                 f"'sandbox.phase_changed', 'e2e', 'test', '{{}}')")

    def delete(self, sid):
        assert self.sql(f"SELECT gw_sandbox_delete('{sid}', 'e2e', 'test')") == "t"

    def session(self, sid, token, expires_ms=0):
        """Creates a session for |token| directly (the gateway hashes it the
        same way)."""
        return self.sql(f"SELECT workspace FROM gw_ssh_session_create('{sha256_hex(token)}', "
                        f"'{sid}', 'e2e', {expires_ms})")

    def sessions(self, sid):
        return int(self.sql(f"SELECT count(*) FROM ssh_sessions WHERE sandbox_id = '{sid}'"))


@pytest.fixture
def api(gw, stubs):
    ch = gw.channel()
    yield Api(stubs, ch)
    ch.close()


@pytest.fixture
def store(postgres, db, stubs):
    return Store(postgres, db, stubs.openshell_pb2)


def wait_opening(gw, n, timeout=WAIT):
    """Waits until the gateway logged |n| forward.opening events (a forward
    passed every check and holds its slots); returns them."""
    return wait_until(lambda: (lambda evs: evs if len(evs) >= n else None)(
        gw.events("forward.opening")), timeout, interval=0.05, what=f"{n} forward.opening")


# ---------------------------------------------------------------------------
# the migration, through psql


def test_ssh_sessions_table_functions_and_trigger(gw, store):
    sid = store.sandbox("sq-1", phase="PROVISIONING")
    other = store.sandbox("sq-2")
    token, token2 = str(uuid.uuid4()), str(uuid.uuid4())

    # Only READY sandboxes get sessions; unknown ones are refused.
    with pytest.raises(RuntimeError) as info:
        store.session(sid, token)
    assert "sandbox_not_ready" in str(info.value)
    with pytest.raises(RuntimeError) as info:
        store.session(str(uuid.uuid4()), token)
    assert "sandbox_not_found" in str(info.value)

    store.set_phase(sid, "READY")
    assert store.session(sid, token) == "default"
    store.session(sid, token2, expires_ms=int(time.time() * 1000) + 3_600_000)
    store.session(other, str(uuid.uuid4()))
    # Only hashes are stored, and the table refuses anything else as a key.
    assert store.sql("SELECT count(*) FROM ssh_sessions x WHERE x::text LIKE "
                     f"'%{token}%'") == "0"
    assert store.sql("SELECT count(*) FROM ssh_sessions WHERE token_sha256 = "
                     f"'{sha256_hex(token)}'") == "1"
    with pytest.raises(RuntimeError) as info:
        store.sql(f"INSERT INTO ssh_sessions (token_sha256, sandbox_id, workspace_id, "
                  f"created_by) SELECT '{token}', id, workspace_id, 'x' FROM sandboxes "
                  f"WHERE id = '{sid}'")
    assert "check constraint" in str(info.value)

    # Audit view: no hashes, a state per row.
    cols = store.sql("SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM "
                     "information_schema.columns WHERE table_name = 'audit_ssh_sessions'")
    assert "token" not in cols and "sha" not in cols, cols
    assert store.sql(f"SELECT state || ',' || created_by || ',' || (expires_at IS NULL) FROM "
                     f"audit_ssh_sessions WHERE sandbox_id = '{sid}' ORDER BY expires_at "
                     f"NULLS FIRST") == "live,e2e,true\nlive,e2e,false"

    # Revoke is a compare-and-swap on (token, sandbox).
    h = sha256_hex(token)
    assert store.sql(f"SELECT gw_ssh_session_revoke('{h}', '{other}', 'e2e')") == "conflict"
    assert store.sql(f"SELECT gw_ssh_session_revoke('{h}', '{sid}', 'bob')") == "revoked"
    assert store.sql(f"SELECT gw_ssh_session_revoke('{h}', '{sid}', 'e2e')") == \
        "already_revoked"
    assert store.sql("SELECT state || ',' || revoked_by FROM audit_ssh_sessions WHERE "
                     "revoked_at IS NOT NULL") == "revoked,bob"
    gone = sha256_hex(str(uuid.uuid4()))
    assert store.sql(f"SELECT gw_ssh_session_revoke('{gone}', '{sid}', 'e2e')") == "conflict"

    # STOPPING keeps them; STOPPED (same transaction as the phase) deletes them.
    store.set_phase(sid, "STOPPING")
    assert store.sessions(sid) == 2
    store.set_phase(sid, "STOPPED")
    assert store.sessions(sid) == 0
    assert store.sessions(other) == 1
    # Soft delete deletes them too.
    store.delete(other)
    assert store.sessions(other) == 0
    # And a hard delete cascades.
    store.set_phase(sid, "READY")
    store.session(sid, str(uuid.uuid4()))
    store.sql(f"DELETE FROM sandboxes WHERE id = '{sid}'")
    assert store.sql("SELECT count(*) FROM ssh_sessions") == "0"


def test_create_prunes_dead_sessions_of_the_sandbox(gw, store):
    sid = store.sandbox("prune")
    other = store.sandbox("prune-2")
    old, recent, revoked, elsewhere = (str(uuid.uuid4()) for _ in range(4))
    for tok in (old, recent, revoked):
        store.session(sid, tok)
    store.session(other, elsewhere)

    def age(tok, column, interval):
        store.sql(f"UPDATE ssh_sessions SET {column} = now() - interval '{interval}' "
                  f"WHERE token_sha256 = '{sha256_hex(tok)}'")

    age(old, "expires_at", "2 hours")
    age(recent, "expires_at", "30 minutes")
    age(revoked, "revoked_at", "2 hours")
    age(elsewhere, "expires_at", "2 hours")
    assert store.sessions(sid) == 3
    # The next creation for the sandbox drops what died more than an hour
    # ago, and only for that sandbox.
    store.session(sid, str(uuid.uuid4()))
    left = store.sql(f"SELECT token_sha256 FROM ssh_sessions WHERE sandbox_id = '{sid}'")
    assert sha256_hex(old) not in left and sha256_hex(revoked) not in left
    assert sha256_hex(recent) in left
    assert store.sessions(sid) == 2
    assert store.sessions(other) == 1


# ---------------------------------------------------------------------------
# CreateSshSession / RevokeSshSession on store-made sandboxes


def test_create_ssh_session_errors(api, store):
    assert rpc_error(api.CreateSshSession, sandbox_id="") == (
        grpc.StatusCode.INVALID_ARGUMENT, "sandbox_id is required")
    code, _ = rpc_error(api.CreateSshSession, sandbox_id=str(uuid.uuid4()))
    assert code == grpc.StatusCode.NOT_FOUND
    for phase in ("PROVISIONING", "STOPPED", "ERROR"):
        sid = store.sandbox(f"nr-{phase.lower()}", phase=phase)
        code, details = rpc_error(api.CreateSshSession, sandbox_id=sid)
        assert code == grpc.StatusCode.FAILED_PRECONDITION, (phase, details)
        assert store.sessions(sid) == 0
    deleted = store.sandbox("gone")
    store.delete(deleted)
    code, _ = rpc_error(api.CreateSshSession, sandbox_id=deleted)
    assert code == grpc.StatusCode.NOT_FOUND


def test_create_ssh_session_reply_and_record(gw, api, store):
    sid = store.sandbox("ssh-1")
    before = int(time.time() * 1000)
    resp = api.CreateSshSession(sandbox_id=sid)
    after = int(time.time() * 1000)
    assert resp.sandbox_id == sid
    assert str(uuid.UUID(resp.token)) == resp.token and uuid.UUID(resp.token).version == 4
    assert resp.gateway_host == "127.0.0.1"
    assert resp.gateway_port == gw.port
    assert resp.gateway_scheme == "http"
    assert resp.host_key_fingerprint == ""
    # Default TTL: 24 h.
    assert before + 86_400_000 <= resp.expires_at_ms <= after + 86_400_000
    # Stored by hash only, with the creator and the same expiry.
    row = store.sql(f"SELECT sandbox_id, created_by, gw_ms(expires_at) FROM ssh_sessions "
                    f"WHERE token_sha256 = '{sha256_hex(resp.token)}'")
    assert row == f"{sid}|{LOCAL_DEV}|{resp.expires_at_ms}"
    assert store.sql(f"SELECT count(*) FROM ssh_sessions x WHERE x::text LIKE "
                     f"'%{resp.token}%'") == "0"
    # Two sessions: two different tokens.
    assert api.CreateSshSession(sandbox_id=sid).token != resp.token
    assert store.sessions(sid) == 2
    # The token never reaches the log.
    assert resp.token not in gw.log_text()
    assert gw.events("ssh_session.created")


def test_revoke_ssh_session(gw, api, store):
    assert rpc_error(api.RevokeSshSession, token="") == (
        grpc.StatusCode.INVALID_ARGUMENT, "token is required")
    assert api.RevokeSshSession(token=str(uuid.uuid4())).revoked is False
    assert api.RevokeSshSession(token="not even a uuid").revoked is False

    sid = store.sandbox("rev-1")
    token = api.CreateSshSession(sandbox_id=sid).token
    assert api.RevokeSshSession(token=token).revoked is True
    assert store.sql(f"SELECT revoked_by FROM ssh_sessions WHERE token_sha256 = "
                     f"'{sha256_hex(token)}'") == LOCAL_DEV
    assert api.RevokeSshSession(token=token).revoked is True  # already revoked
    # Once the sandbox stopped the session is gone: unknown again.
    store.set_phase(sid, "STOPPED")
    assert api.RevokeSshSession(token=token).revoked is False
    assert token not in gw.log_text()


@pytest.mark.parametrize("ttl,expect_ms", [(0, 0), (5, 5000)])
def test_ssh_session_ttl_option(postgres, db, gateway_factory, stubs, ttl, expect_ms):
    url = f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/{db}"
    gw = gateway_factory(h2c_args("--db-url", url, "--ssh-session-ttl-secs", ttl))
    store = Store(postgres, db, stubs.openshell_pb2)
    ch = gw.channel()
    try:
        api = Api(stubs, ch)
        sid = store.sandbox("ttl")
        t0 = int(time.time() * 1000)
        resp = api.CreateSshSession(sandbox_id=sid)
        if expect_ms == 0:
            assert resp.expires_at_ms == 0
            assert store.sql("SELECT expires_at IS NULL FROM ssh_sessions") == "t"
            return
        assert t0 + expect_ms - 1000 <= resp.expires_at_ms <= int(time.time() * 1000) + expect_ms
        # Accepted before expiry (the forward then waits for a supervisor) ...
        f = api.forward(api.init(sid, resp.token, "127.0.0.1", 22))
        wait_opening(gw, 1)
        f.cancel()
        # ... and refused after it.
        time.sleep(max(0.0, (resp.expires_at_ms - time.time() * 1000) / 1000.0) + 0.3)
        f = api.forward(api.init(sid, resp.token, "127.0.0.1", 22))
        assert f.wait_end() == (grpc.StatusCode.UNAUTHENTICATED, "SSH session token expired")
    finally:
        ch.close()


# ---------------------------------------------------------------------------
# ForwardTcp checks on store-made sandboxes


def test_forward_first_frame_must_be_init(api):
    f = api.forward(api.data(b"hello"), None)
    assert f.wait_end() == (grpc.StatusCode.INVALID_ARGUMENT,
                            "first TcpForwardFrame must be init")
    f = api.forward(api.pb.TcpForwardFrame(), None)
    assert f.wait_end() == (grpc.StatusCode.INVALID_ARGUMENT,
                            "first TcpForwardFrame must be init")
    f = api.forward(None)
    assert f.wait_end() == (grpc.StatusCode.INVALID_ARGUMENT, "empty ForwardTcp stream")


@pytest.mark.parametrize("host,port,message", [
    ("10.0.0.1", 80, "tcp target host must be loopback"),
    ("0.0.0.0", 80, "tcp target host must be loopback"),
    ("example.com", 80, "tcp target host must be loopback"),
    ("localhost.example.com", 80, "tcp target host must be loopback"),
    ("::ffff:127.0.0.1", 80, "tcp target host must be loopback"),
    ("[::1]", 80, "tcp target host must be loopback"),
    ("127.0.0.1:80", 80, "tcp target host must be loopback"),
    ("fe80::1", 80, "tcp target host must be loopback"),
    ("", 80, "tcp target host is required"),
    ("   ", 80, "tcp target host is required"),
    ("127.0.0.1", 0, "tcp target port must be between 1 and 65535"),
    ("127.0.0.1", 65536, "tcp target port must be between 1 and 65535"),
    ("10.0.0.1", 0, "tcp target port must be between 1 and 65535"),  # port checked first
])
def test_forward_rejects_bad_tcp_targets(api, host, port, message):
    # The target is checked before the sandbox is even looked up.
    f = api.forward(api.init(str(uuid.uuid4()), "t", host, port))
    assert f.wait_end() == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_forward_init_field_checks_in_order(api):
    f = api.forward(api.init("", "t", "10.0.0.1", 0))
    assert f.wait_end() == (grpc.StatusCode.INVALID_ARGUMENT, "sandbox_id is required")
    f = api.forward(api.init(str(uuid.uuid4()), "t"))
    assert f.wait_end() == (grpc.StatusCode.INVALID_ARGUMENT, "tcp forward target is required")
    # Valid target, unknown sandbox: NOT_FOUND before the token is looked at.
    f = api.forward(api.init(str(uuid.uuid4()), "", "127.0.0.1", 80))
    assert f.wait_end()[0] == grpc.StatusCode.NOT_FOUND


def test_forward_token_checks(gw, api, store):
    sid = store.sandbox("tok-a")
    other = store.sandbox("tok-b")
    notready = store.sandbox("tok-c", phase="PROVISIONING")
    token = api.CreateSshSession(sandbox_id=sid).token
    other_token = api.CreateSshSession(sandbox_id=other).token

    def end(sandbox, tok, **target):
        target = target or {"host": "127.0.0.1", "port": 22}
        return api.forward(api.init(sandbox, tok, **target)).wait_end()

    # READY is checked before the token.
    assert end(notready, "")[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert end(sid, "") == (grpc.StatusCode.UNAUTHENTICATED,
                            "authorization_token is required for ForwardTcp")
    assert end(sid, "   ") == (grpc.StatusCode.UNAUTHENTICATED,
                               "authorization_token is required for ForwardTcp")
    # Every target kind needs it.
    assert end(sid, "", ssh=True)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert end(sid, str(uuid.uuid4())) == (grpc.StatusCode.UNAUTHENTICATED,
                                           "SSH session token not found")
    assert end(sid, other_token) == (grpc.StatusCode.UNAUTHENTICATED,
                                     "SSH session token is not valid")
    expired = str(uuid.uuid4())
    store.session(sid, expired, expires_ms=int(time.time() * 1000) - 1000)
    assert end(sid, expired) == (grpc.StatusCode.UNAUTHENTICATED, "SSH session token expired")
    revoked = api.CreateSshSession(sandbox_id=sid).token
    assert api.RevokeSshSession(token=revoked).revoked is True
    assert end(sid, revoked) == (grpc.StatusCode.UNAUTHENTICATED,
                                 "SSH session token is not valid")
    assert not gw.events("forward.opening")

    # The good token passes every check (surrounding blanks ignored), then
    # waits for the sandbox's supervisor; the target is normalized.
    targets = [({"host": " LocalHost ", "port": 22}, "127.0.0.1:22"),
               ({"host": "127.1.2.3", "port": 8080}, "127.1.2.3:8080"),
               ({"host": "0:0::1", "port": 65535}, "[::1]:65535"),
               ({"ssh": True}, "ssh")]
    for i, (target, shown) in enumerate(targets):
        f = api.forward(api.init(sid, f" {token}\t", **target))
        evs = wait_opening(gw, i + 1)
        assert evs[-1]["target"] == shown and evs[-1]["sandbox_id"] == sid, evs[-1]
        f.cancel()
        assert f.wait_end()[0] == grpc.StatusCode.CANCELLED
    wait_until(lambda: len(gw.events("forward.closed")) == len(targets), WAIT,
               what="forward.closed after each cancel")
    for text in (token, other_token, expired, revoked):
        assert text not in gw.log_text()


def test_forward_caps_per_token_and_per_sandbox(gw, api, store):
    sid = store.sandbox("caps")
    tokens = [api.CreateSshSession(sandbox_id=sid).token for _ in range(7)]
    calls = []

    def start(tok, sandbox=sid):
        f = api.forward(api.init(sandbox, tok, "127.0.0.1", 22))
        calls.append(f)
        return f

    # 3 per token: the 4th on the same token is refused at once.
    for _ in range(3):
        start(tokens[0])
    wait_opening(gw, 3)
    assert start(tokens[0]).wait_end() == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                           "SSH session connection limit reached")
    # 20 per sandbox: 3 x 6 tokens = 18, then 2 more, then the 21st fails.
    for tok in tokens[1:6]:
        for _ in range(3):
            start(tok)
    start(tokens[6])
    start(tokens[6])
    wait_opening(gw, 20)
    assert start(tokens[6]).wait_end() == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                           "sandbox SSH connection limit reached")
    # Another sandbox is not affected.
    other = store.sandbox("caps-2")
    start(api.CreateSshSession(sandbox_id=other).token, other)
    assert wait_opening(gw, 21)[-1]["sandbox_id"] == other
    # A cancelled forward gives its slots back.
    calls[0].cancel()
    wait_until(lambda: gw.events("forward.closed"), WAIT, what="forward.closed")
    start(tokens[0])
    wait_opening(gw, 22)
    for c in calls:
        c.cancel()
    wait_until(lambda: len(gw.events("forward.closed")) == 22, WAIT,
               what="every forward closed")


@pytest.mark.slow
def test_forward_without_supervisor_is_unavailable(gw, api, store):
    sid = store.sandbox("nosup")
    token = api.CreateSshSession(sandbox_id=sid).token
    t0 = time.monotonic()
    f = api.forward(api.init(sid, token, "127.0.0.1", 22), api.data(b"queued"))
    code, details = f.wait_end(timeout=RELAY_WAIT + 10)
    assert code == grpc.StatusCode.UNAVAILABLE, details
    assert details.startswith("supervisor relay failed"), details
    assert time.monotonic() - t0 >= RELAY_WAIT - 1
    # The slot is free again.
    wait_until(lambda: gw.events("forward.closed"), WAIT, what="forward.closed")


def test_stop_and_removal_clear_sessions_for_forward(gw, api, store):
    sid = store.sandbox("stopme")
    token = api.CreateSshSession(sandbox_id=sid).token
    store.set_phase(sid, "STOPPED")
    assert store.sessions(sid) == 0
    store.set_phase(sid, "READY")  # a new run: the old token is dead
    f = api.forward(api.init(sid, token, "127.0.0.1", 22))
    assert f.wait_end() == (grpc.StatusCode.UNAUTHENTICATED, "SSH session token not found")
    token = api.CreateSshSession(sandbox_id=sid).token
    store.delete(sid)
    assert store.sessions(sid) == 0
    f = api.forward(api.init(sid, token, "127.0.0.1", 22))
    assert f.wait_end()[0] == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------------------
# real sandboxes: process driver + supervisor + relay

SERVER = f"""
import hashlib, socket, sys, threading

def echo(c):
    with c:
        while True:
            b = c.recv(65536)
            if not b:
                break
            c.sendall(b)
        c.shutdown(socket.SHUT_WR)

def bye(c):
    with c:
        c.sendall(b"bye\\n")

def sink(c):
    with c:
        h, n = hashlib.sha256(), 0
        while True:
            b = c.recv(65536)
            if not b:
                break
            h.update(b)
            n += len(b)
        c.sendall(b"%d %s\\n" % (n, h.hexdigest().encode()))

def source(c):
    with c:
        line = b""
        while not line.endswith(b"\\n"):
            b = c.recv(64)
            if not b:
                return
            line += b
        left = int(line)
        block = bytes(range(256)) * 256
        while left > 0:
            n = min(left, len(block))
            c.sendall(block[:n])
            left -= n

def serve(port, fn):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=fn, args=(c,), daemon=True).start()

for port, fn in (({BYE_PORT}, bye), ({SINK_PORT}, sink), ({SOURCE_PORT}, source)):
    threading.Thread(target=serve, args=(port, fn), daemon=True).start()
print("servers up", flush=True)
serve({ECHO_PORT}, echo)
"""


def ready_sandbox(env, gw, name):
    """A sandbox running SERVER, READY (its supervisor connected)."""
    api = Api(env.stubs, gw.channel())
    token = new_token()
    env.track(token=token)
    pb = env.pb
    sb = api.CreateSandbox(name=name, spec=pb.SandboxSpec(
        command=["/usr/bin/python3", "-c", SERVER, token])).sandbox
    env.track(sid=sb.metadata.id)
    ready = pb.SandboxPhase.Value("SANDBOX_PHASE_READY")

    def is_ready():
        st = api.GetSandbox(name=name).sandbox.status
        if st.phase == pb.SandboxPhase.Value("SANDBOX_PHASE_ERROR"):
            pytest.fail(f"sandbox {name} went to ERROR: {st}")
        return st.phase == ready

    wait_until(is_ready, READY_WAIT, interval=0.1, what=f"sandbox {name} READY")
    return api, sb.metadata.id


def wait_servers(api, sid, token, timeout=WAIT):
    """READY means the supervisor is connected, not that the sandbox's
    command listens yet: retry one echo round trip until it works."""
    deadline = time.monotonic() + timeout
    while True:
        f = api.forward(api.init(sid, token, "127.0.0.1", ECHO_PORT), api.data(b"ping"), None)
        end = f.wait_end()
        if end == (grpc.StatusCode.OK, "") and bytes(f.data) == b"ping":
            return
        assert end[0] == grpc.StatusCode.UNAVAILABLE and "refused" in end[1], end
        assert time.monotonic() < deadline, f"sandbox servers not listening: {end}"
        time.sleep(0.1)


def echo_roundtrip(api, sid, token, payload):
    f = api.forward(api.init(sid, token, "127.0.0.1", ECHO_PORT))
    f.send(payload)
    f.wait_bytes(len(payload))
    return f


def test_forward_echo_half_close_and_target_close(env):
    gw = env.gateway()
    api, sid = ready_sandbox(env, gw, "echo")
    token = api.CreateSshSession(sandbox_id=sid).token
    wait_servers(api, sid, token)

    # Bytes go through and come back; empty data frames are skipped.
    f = api.forward(api.init(sid, token, "localhost", ECHO_PORT), api.data(b""))
    f.send(b"hello ")
    f.send(b"")
    f.send(b"world")
    f.wait_bytes(11)
    assert bytes(f.data) == b"hello world"
    # Half-close: the echo server sees EOF, closes, and the stream ends OK
    # after everything it sent.
    f.send(b"!")
    f.half_close()
    assert f.wait_end() == (grpc.StatusCode.OK, "")
    assert bytes(f.data) == b"hello world!" and not f.bad_frames

    # The target closes first: its bytes, then OK, without the client
    # half-closing.
    f = api.forward(api.init(sid, token, "127.0.0.1", BYE_PORT))
    assert f.wait_end() == (grpc.StatusCode.OK, "")
    assert bytes(f.data) == b"bye\n"
    f.cancel()

    # A non-data frame after init stops client input like a half-close.
    f = api.forward(api.init(sid, token, "127.0.0.1", ECHO_PORT))
    f.send(b"abc")
    f.wait_bytes(3)
    f.send_frame(api.init(sid, token, "127.0.0.1", ECHO_PORT))
    f.send(b"dropped")
    assert f.wait_end() == (grpc.StatusCode.OK, "")
    assert bytes(f.data) == b"abc"
    f.cancel()

    # Nothing listens: the supervisor's dial fails -> UNAVAILABLE.
    f = api.forward(api.init(sid, token, "127.0.0.1", CLOSED_PORT))
    code, details = f.wait_end()
    assert code == grpc.StatusCode.UNAVAILABLE, details
    f.cancel()

    # The supervisor's built-in SSH server answers with its banner.
    f = api.forward(api.init(sid, token, ssh=True))
    f.wait_bytes(8)
    assert bytes(f.data).startswith(b"SSH-2.0-"), bytes(f.data)
    f.cancel()


def test_forward_caps_with_live_relays(env):
    gw = env.gateway()
    api, sid = ready_sandbox(env, gw, "capslive")
    token = api.CreateSshSession(sandbox_id=sid).token
    wait_servers(api, sid, token)
    fs = [echo_roundtrip(api, sid, token, b"x%d" % i) for i in range(3)]
    f4 = api.forward(api.init(sid, token, "127.0.0.1", ECHO_PORT))
    assert f4.wait_end() == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                             "SSH session connection limit reached")
    # Closing one (half-close, ends OK) frees its slot.
    fs[0].half_close()
    assert fs[0].wait_end() == (grpc.StatusCode.OK, "")
    wait_until(lambda: gw.events("forward.closed"), WAIT, what="forward.closed")
    f5 = echo_roundtrip(api, sid, token, b"again")
    assert bytes(f5.data) == b"again"
    for f in fs[1:] + [f5]:
        f.cancel()


BULK = 64 << 20
RSS_SLACK_KIB = 48 * 1024  # far below the 64 MiB moved: nothing is buffered whole


class RssWatch:
    """Samples the gateway's RSS every 50 ms until stop()."""

    def __init__(self, gw):
        self.gw = gw
        self.start = gw.rss_kib()
        self.peak = self.start
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.wait(0.05):
            try:
                self.peak = max(self.peak, self.gw.rss_kib())
            except OSError:
                return

    def stop(self):
        self.done.set()
        self.thread.join(5)
        return self.peak - self.start


def upload(f, total, chunk=61 * 1024 + 7):
    """Sends |total| bytes of a varied pattern (chunk sizes unrelated to any
    frame size on the way) from a thread, then half-closes. Returns the
    running sha256 (complete once the thread ended) and the thread."""
    sent = hashlib.sha256()

    def run():
        left, i = total, 0
        while left > 0:
            n = min(chunk, left)
            b = (bytes([(i * 7 + j) & 0xFF for j in range(256)]) * (n // 256 + 1))[:n]
            sent.update(b)
            f.send(b)
            left -= n
            i += 1
        f.half_close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return sent, t


def bulk_sandbox(env, name):
    gw = env.gateway()
    api, sid = ready_sandbox(env, gw, name)
    token = api.CreateSshSession(sandbox_id=sid).token
    wait_servers(api, sid, token)
    return gw, api, sid, token


def report(what, total, secs, growth):
    print(f"{what}: {total >> 20} MiB in {secs:.2f}s ({total / secs / (1 << 20):.1f} MiB/s); "
          f"gateway RSS growth {growth} KiB")


@pytest.mark.slow
def test_forward_large_upload(env):
    """Client -> target: 64 MiB into a sink that answers with its count and
    hash. The gateway holds client input while the relay is full."""
    gw, api, sid, token = bulk_sandbox(env, "up")
    f = Forward(api, [api.init(sid, token, "127.0.0.1", SINK_PORT)], maxsize=32, timeout=300)
    rss = RssWatch(gw)
    t0 = time.monotonic()
    sent, producer = upload(f, BULK)
    assert f.wait_end(timeout=240) == (grpc.StatusCode.OK, "")
    producer.join(10)
    report("upload", BULK, time.monotonic() - t0, growth := rss.stop())
    assert bytes(f.data) == b"%d %s\n" % (BULK, sent.hexdigest().encode())
    assert growth < RSS_SLACK_KIB, growth
    ev = gw.events("forward.closed")[-1]
    assert int(ev["bytes_up"]) == BULK, ev


@pytest.mark.slow
def test_forward_large_download(env):
    """Target -> client: 64 MiB from a source; the stream ends OK when the
    source closes, with no half-close from the client."""
    gw, api, sid, token = bulk_sandbox(env, "down")
    f = Forward(api, [api.init(sid, token, "127.0.0.1", SOURCE_PORT),
                      api.data(b"%d\n" % BULK)], keep=False, timeout=300)
    rss = RssWatch(gw)
    t0 = time.monotonic()
    assert f.wait_end(timeout=240) == (grpc.StatusCode.OK, "")
    report("download", BULK, time.monotonic() - t0, growth := rss.stop())
    want = hashlib.sha256()
    block = bytes(range(256)) * 256
    for _ in range(BULK // len(block)):
        want.update(block)
    assert f.nbytes == BULK and f.digest.hexdigest() == want.hexdigest()
    assert growth < RSS_SLACK_KIB, growth
    f.cancel()


@pytest.mark.slow
def test_forward_large_echo_both_ways(env):
    """64 MiB through the echo server: both directions at once, each held
    back by the other's flow control."""
    gw, api, sid, token = bulk_sandbox(env, "bulk")
    f = Forward(api, [api.init(sid, token, "127.0.0.1", ECHO_PORT)], keep=False, maxsize=32,
                timeout=300)
    rss = RssWatch(gw)
    t0 = time.monotonic()
    sent, producer = upload(f, BULK)
    assert f.wait_end(timeout=240) == (grpc.StatusCode.OK, "")
    producer.join(10)
    report("echo (each way)", BULK, time.monotonic() - t0, growth := rss.stop())
    assert f.nbytes == BULK
    assert f.digest.hexdigest() == sent.hexdigest()
    assert growth < RSS_SLACK_KIB, growth
    ev = gw.events("forward.closed")[-1]
    assert int(ev["bytes_up"]) == BULK and int(ev["bytes_down"]) == BULK, ev


def test_stop_sandbox_deletes_its_ssh_sessions(env, postgres, db):
    gw = env.gateway()
    api, sid = ready_sandbox(env, gw, "stopfwd")
    store = Store(postgres, db, env.pb)
    token = api.CreateSshSession(sandbox_id=sid).token
    wait_servers(api, sid, token)
    f = echo_roundtrip(api, sid, token, b"before stop")
    assert store.sessions(sid) == 1
    f.half_close()
    assert f.wait_end() == (grpc.StatusCode.OK, "")

    stopped = api.StopSandbox(name="stopfwd").sandbox
    assert stopped.status.phase == env.pb.SandboxPhase.Value("SANDBOX_PHASE_STOPPED")
    assert store.sessions(sid) == 0
    code, _ = rpc_error(api.CreateSshSession, sandbox_id=sid)
    assert code == grpc.StatusCode.FAILED_PRECONDITION

    api.StartSandbox(name="stopfwd")
    ready = env.pb.SandboxPhase.Value("SANDBOX_PHASE_READY")
    wait_until(lambda: api.GetSandbox(name="stopfwd").sandbox.status.phase == ready,
               READY_WAIT, interval=0.1, what="READY again after StartSandbox")
    f = api.forward(api.init(sid, token, "127.0.0.1", ECHO_PORT))
    assert f.wait_end() == (grpc.StatusCode.UNAUTHENTICATED, "SSH session token not found")
    # A new session works on the new run.
    token = api.CreateSshSession(sandbox_id=sid).token
    wait_servers(api, sid, token)
    f = echo_roundtrip(api, sid, token, b"after start")
    f.cancel()
    assert api.DeleteSandbox(name="stopfwd").deleted in (True, False)
    wait_until(lambda: store.sessions(sid) == 0, WAIT, what="sessions gone after delete")
