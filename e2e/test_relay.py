"""ForwardTcp relays end to end (semantics.md §13, §14).

A sandbox runs small TCP servers on its own loopback (relay_util.SERVER_SRC
as its main command); the test reaches them only through the gateway:
ForwardTcp -> RelayOpen on the supervisor's session -> the supervisor dials
the target inside the sandbox and carries the bytes over RelayStream. A
stock OpenSSH client reaches the supervisor's SSH server the same way
through e2e/forward_proxy.py as its ProxyCommand. The memory tests move
1 GiB (E2E_RELAY_BYTES) through one relay to or from a deliberately slow
reader and watch the gateway's RSS.
"""

import hashlib
import os
import shlex
import subprocess
import threading
import time

import grpc
import pytest

from drivers_fixtures import _drivers_stopper, _leaks, db_url, env  # noqa: F401 - fixtures
from relay_util import (
    create_server_sandbox,
    forward,
    forward_bytes,
    forward_init,
    phase,
    rss_kib,
    source_stream_sha256,
    ssh_token,
)

pytestmark = pytest.mark.postgres

E2E_DIR = os.path.dirname(os.path.abspath(__file__))
FORWARD_PROXY = os.path.join(E2E_DIR, "forward_proxy.py")
PYTHON = "/usr/bin/python3"
SSH = "/usr/bin/ssh"
KIB, MIB = 1024, 1024 * 1024
RELAY_BYTES = int(os.environ.get("E2E_RELAY_BYTES", str(1 << 30)))
RSS_BUDGET_KIB = 64 * 1024  # growth allowed over the baseline
SINK_DELAY = 0.001          # the sink sleeps this long after each 64 KiB read
STALL_AT = 256 * MIB        # where the slow side stops reading for a while
STALL_S = 3.0
CLIENT_RATE = 40 * MIB      # bytes/s the slow client reads at most
NO_PROGRESS_S = 30.0        # a relay silent this long (outside the stall) has stalled


@pytest.fixture
def served(env):
    """(gateway, api, sandbox id, ports) for a READY sandbox running the
    test servers with a slow sink."""
    gw = env.gateway()
    api = env.api(gw)
    sb, ports = create_server_sandbox(env, gw, api, "srv", delay=SINK_DELAY,
                                      stall_at=min(STALL_AT, RELAY_BYTES // 4), stall_s=STALL_S)
    return gw, api, sb.metadata.id, ports


# ---------------------------------------------------------------------------
# round trips


def test_forward_tcp_round_trip_and_half_close(served):
    gw, api, sid, ports = served
    pb = api.pb
    token = ssh_token(api, sid)
    f = forward(api, sid, token, port=ports["echo"])
    try:
        f.send(pb.TcpForwardFrame(data=b"hello"))
        f.wait(lambda items: forward_bytes(items) == b"hello", 20, "the echo of b'hello'")
        payload = [os.urandom(256 * KIB) for _ in range(4)] + [b"tail"]
        for p in payload:
            f.send(pb.TcpForwardFrame(data=p))
        sent = b"hello" + b"".join(payload)
        f.wait(lambda items: forward_bytes(items) == sent, 30, "every byte echoed")
        # Empty data frames are skipped, not taken as EOF.
        f.send(pb.TcpForwardFrame(data=b""))
        f.send(pb.TcpForwardFrame(data=b"!"))
        sent += b"!"
        f.wait(lambda items: forward_bytes(items) == sent, 20, "the echo after an empty frame")
        # Half-close: the target sees EOF and still answers before closing.
        f.close_send()
        assert f.wait_end(20) == (grpc.StatusCode.OK, "")
        assert forward_bytes(f.items) == sent + b"EOF %d\n" % len(sent)
        assert all(len(x.data) <= 64 * KIB for x in f.items if x.WhichOneof("payload") == "data")
    finally:
        f.cancel()


def test_forward_tcp_target_closes_first(served):
    """The target writes and closes: the client gets the bytes and an OK end
    without having half-closed."""
    gw, api, sid, ports = served
    pb = api.pb
    f = forward(api, sid, ssh_token(api, sid), host="localhost", port=ports["source"])
    try:
        size = 3 * MIB + 17
        f.send(pb.TcpForwardFrame(data=b"%d\n" % size))
        assert f.wait_end(30) == (grpc.StatusCode.OK, "")
        got = forward_bytes(f.items)
        assert len(got) == size
        assert hashlib.sha256(got).hexdigest() == source_stream_sha256(size)
    finally:
        f.cancel()


def test_forward_tcp_several_at_once(served):
    """Relays of one sandbox are independent: three echo forwards on one
    token interleave without mixing bytes."""
    gw, api, sid, ports = served
    pb = api.pb
    token = ssh_token(api, sid)
    fs = [forward(api, sid, token, port=ports["echo"]) for _ in range(3)]
    try:
        datas = [os.urandom(64 * KIB + i) for i in range(3)]
        for f, d in zip(fs, datas):
            f.send(pb.TcpForwardFrame(data=d[:1000]))
        for f, d in zip(fs, datas):
            f.send(pb.TcpForwardFrame(data=d[1000:]))
            f.close_send()
        for f, d in zip(fs, datas):
            assert f.wait_end(30) == (grpc.StatusCode.OK, "")
            assert forward_bytes(f.items) == d + b"EOF %d\n" % len(d)
    finally:
        for f in fs:
            f.cancel()


def test_forward_tcp_target_not_listening(served):
    gw, api, sid, ports = served
    f = forward(api, sid, ssh_token(api, sid), port=1)
    try:
        code, details = f.wait_end(30)
    finally:
        f.cancel()
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    # The sandbox and its session are unaffected.
    assert api.GetSandbox(name="srv").sandbox.status.phase == phase(api.pb, "READY")


def test_revoked_session_token_refused(served):
    gw, api, sid, ports = served
    pb = api.pb
    token = ssh_token(api, sid)
    f = forward(api, sid, token, port=ports["echo"])
    try:
        f.send(pb.TcpForwardFrame(data=b"before"))
        f.close_send()
        assert f.wait_end(20) == (grpc.StatusCode.OK, "")
        assert forward_bytes(f.items) == b"beforeEOF 6\n"
    finally:
        f.cancel()

    resp = api.RevokeSshSession(token=token)
    assert resp.revoked is True
    f = forward(api, sid, token, port=ports["echo"])
    try:
        f.send(pb.TcpForwardFrame(data=b"after"))
        code, details = f.wait_end(20)
    finally:
        f.cancel()
    assert code == grpc.StatusCode.UNAUTHENTICATED, (code, details)
    assert forward_bytes(f.items) == b""
    # Another session token still works.
    f = forward(api, sid, ssh_token(api, sid), port=ports["echo"])
    try:
        f.close_send()
        assert f.wait_end(20) == (grpc.StatusCode.OK, "")
        assert forward_bytes(f.items) == b"EOF 0\n"
    finally:
        f.cancel()


# ---------------------------------------------------------------------------
# a stock OpenSSH client through ForwardTcp


def ssh_cmd(gw, sid, token_file, stubs, remote):
    if not os.path.exists(SSH):
        pytest.fail(f"{SSH} is missing: install the openssh-client package "
                    "(apt-get install openssh-client) to run the SSH ProxyCommand test")
    proxy = shlex.join([PYTHON, FORWARD_PROXY, "--gateway", gw.target, "--sandbox-id", sid,
                        "--token-file", str(token_file), "--stubs-dir", str(stubs.outdir),
                        "--timeout", "120"])
    return [SSH, "-F", "/dev/null", "-o", f"ProxyCommand={proxy}",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30",
            "-o", "GSSAPIAuthentication=no", "sandbox@sandbox", remote]


def run_ssh(cmd, env, input=None, timeout=90):
    """Runs ssh (bounded); a timeout fails with what had arrived by then."""
    try:
        return subprocess.run(cmd, input=input, stdin=None if input is not None else
                              subprocess.DEVNULL, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"ssh did not finish within {timeout}s: {len(e.stdout or b'')} bytes on "
                    f"stdout, stderr {(e.stderr or b'')[-500:]!r}")


def test_openssh_client_through_forward_tcp(served, stubs, tmp_path):
    gw, api, sid, ports = served
    token_file = tmp_path / "ssh-token"
    token_file.write_text(ssh_token(api, sid) + "\n")
    token_file.chmod(0o600)
    home = tmp_path / "home"
    home.mkdir()
    run_env = dict(os.environ, HOME=str(home))

    res = run_ssh(ssh_cmd(gw, sid, token_file, stubs, "echo hello; echo oops >&2; exit 5"),
                  run_env)
    assert res.returncode == 5, res
    assert res.stdout == b"hello\n", res
    assert res.stderr == b"oops\n", res

    # Bulk data both ways through the same path.
    data = os.urandom(2 * MIB)
    res = run_ssh(ssh_cmd(gw, sid, token_file, stubs, "cat; echo done >&2"), run_env, input=data)
    assert res.returncode == 0, res.stderr
    assert res.stdout == data
    assert res.stderr == b"done\n", res.stderr

    # The proxy with a revoked token: ssh fails, the proxy says why.
    api.RevokeSshSession(token=token_file.read_text().strip())
    res = run_ssh(ssh_cmd(gw, sid, token_file, stubs, "echo never"), run_env)
    assert res.returncode == 255, res
    assert b"UNAUTHENTICATED" in res.stderr, res.stderr
    assert b"never" not in res.stdout


# ---------------------------------------------------------------------------
# relay memory


class RssSampler:
    """Samples a process's VmRSS every 50 ms on a thread until stop()."""

    def __init__(self, pid):
        self.pid = pid
        self.baseline = rss_kib(pid)
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
                self.samples += 1
            except (OSError, RuntimeError):
                return
            self._stop.wait(0.05)

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        return self.peak - self.baseline


def warm_up(api, sid, port):
    """One small relay first, so that the baseline includes the one-time
    allocations of a relay."""
    pb = api.pb
    f = forward(api, sid, ssh_token(api, sid), port=port)
    try:
        f.send(pb.TcpForwardFrame(data=b"x" * 100000))
        f.close_send()
        assert f.wait_end(30) == (grpc.StatusCode.OK, "")
    finally:
        f.cancel()


@pytest.mark.slow
def test_relay_memory_slow_target(served):
    """The client sends RELAY_BYTES as fast as the gateway takes them; the
    target reads 64 KiB per millisecond at most and stops reading for
    STALL_S once. The gateway must push back instead of buffering."""
    gw, api, sid, ports = served
    pb = api.pb
    warm_up(api, sid, ports["echo"])
    block = 256 * KIB
    base = hashlib.sha256(b"upload").digest() * (block // 32)
    n_blocks = RELAY_BYTES // block
    digest = hashlib.sha256()
    sent = [0]

    def requests():
        yield forward_init(pb, sid, ssh_token(api, sid), "127.0.0.1", ports["sink"])
        for i in range(n_blocks):
            blk = i.to_bytes(8, "big") + base[8:]
            digest.update(blk)
            sent[0] += len(blk)
            yield pb.TcpForwardFrame(data=blk)

    rss = RssSampler(gw.pid)
    t0 = time.monotonic()
    try:
        call = api.stub.ForwardTcp(requests(), timeout=240)
        reply = b"".join(f.data for f in call)
    finally:
        growth = rss.stop()
    took = time.monotonic() - t0
    print(f"upload: {sent[0]} bytes in {took:.1f}s ({sent[0] / MIB / took:.1f} MiB/s); "
          f"gateway RSS baseline {rss.baseline} KiB, peak {rss.peak} KiB, growth {growth} KiB "
          f"({rss.samples} samples)")
    assert sent[0] == n_blocks * block
    count, hexdigest = reply.decode().split()
    assert int(count) == sent[0], f"the target received {count} of {sent[0]} bytes"
    assert hexdigest == digest.hexdigest(), "the target received different bytes"
    assert took >= STALL_S, "the target's stall did not slow the transfer down"
    assert growth < RSS_BUDGET_KIB, (
        f"gateway RSS grew by {growth} KiB relaying {sent[0]} bytes to a slow target")
    assert gw.running


@pytest.mark.slow
def test_relay_memory_slow_client(served):
    """The target writes RELAY_BYTES as fast as it can; the client reads at
    most CLIENT_RATE and stops reading for STALL_S once."""
    gw, api, sid, ports = served
    pb = api.pb
    warm_up(api, sid, ports["echo"])
    stall_at = min(STALL_AT, RELAY_BYTES // 4)
    # Fixed client windows (no BDP growth): what the client absorbs itself
    # stays small, so the pressure reaches the gateway.
    ch = gw.channel(options=[("grpc.http2.bdp_probe", 0)])
    stub = type(api.stub)(ch)

    def requests():
        yield forward_init(pb, sid, ssh_token(api, sid), "127.0.0.1", ports["source"])
        # Then half-close at once: the other direction must go on.
        yield pb.TcpForwardFrame(data=b"%d\n" % RELAY_BYTES)

    rss = RssSampler(gw.pid)
    digest = hashlib.sha256()
    got = 0
    stalled = False
    t0 = time.monotonic()
    call = stub.ForwardTcp(requests(), timeout=240)
    progress = {"at": time.monotonic(), "stuck": None, "done": False}

    def watchdog():
        # A relay that stops delivering fails fast, with the byte count.
        while not progress["done"]:
            if time.monotonic() - progress["at"] > NO_PROGRESS_S:
                progress["stuck"] = got
                call.cancel()
                return
            time.sleep(0.5)

    threading.Thread(target=watchdog, name="watchdog", daemon=True).start()
    try:
        try:
            for frame in call:
                data = frame.data
                assert len(data) <= 64 * KIB
                digest.update(data)
                got += len(data)
                progress["at"] = time.monotonic()
                if not stalled and got >= stall_at:
                    stalled = True
                    time.sleep(STALL_S)
                ahead = t0 + got / CLIENT_RATE + (STALL_S if stalled else 0) - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                progress["at"] = time.monotonic()
        except grpc.RpcError:
            if progress["stuck"] is not None:
                pytest.fail(f"no data from the relay for {NO_PROGRESS_S}s after {got} of "
                            f"{RELAY_BYTES} bytes")
            raise
    finally:
        progress["done"] = True
        growth = rss.stop()
        ch.close()
    took = time.monotonic() - t0
    print(f"download: {got} bytes in {took:.1f}s ({got / MIB / took:.1f} MiB/s); "
          f"gateway RSS baseline {rss.baseline} KiB, peak {rss.peak} KiB, growth {growth} KiB "
          f"({rss.samples} samples)")
    assert got == RELAY_BYTES, f"received {got} of {RELAY_BYTES} bytes"
    assert digest.hexdigest() == source_stream_sha256(RELAY_BYTES)
    assert growth < RSS_BUDGET_KIB, (
        f"gateway RSS grew by {growth} KiB relaying {got} bytes to a slow client")
    assert gw.running
