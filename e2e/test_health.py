"""Foundation: transport (h2c, TLS, mTLS), health services, status codes,
limits, streaming shapes, shutdown and configuration."""

import http.client
import json
import queue
import re
import signal
import subprocess
import threading
import time

import grpc
import pytest

from utils import (
    GATEWAY_BIN,
    H2_END_STREAM,
    H2_HEADERS,
    READY_TIMEOUT,
    gateway_env,
    h2c_args,
    raw_grpc_call,
)

RPC_TIMEOUT = 5.0
MIB = 1024 * 1024
HEALTHY = 1  # openshell.v1.ServiceStatus.SERVICE_STATUS_HEALTHY


def health(stubs, ch):
    stub = stubs.openshell_pb2_grpc.OpenShellStub(ch)
    return stub.Health(stubs.openshell_pb2.HealthRequest(), timeout=RPC_TIMEOUT)


def assert_healthy(stubs, ch):
    resp = health(stubs, ch)
    assert resp.status == HEALTHY
    assert resp.version != ""
    return resp


def rpc_code(fn, *args, **kw):
    """Runs an RPC that must fail; returns its grpc.StatusCode."""
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kw)
    return info.value.code()


def diag(stubs, ch):
    return stubs.diag_pb2_grpc.DiagnosticsStub(ch)


def tls_args(pki, *extra):
    return ["--bind-address", "127.0.0.1", "--port", "0",
            "--tls-cert", pki.server_cert, "--tls-key", pki.server_key, *extra]


def client_creds(pki, cert=None, key=None, ca=None):
    return grpc.ssl_channel_credentials(
        root_certificates=pki.read(ca or pki.ca_cert),
        private_key=pki.read(key) if key else None,
        certificate_chain=pki.read(cert) if cert else None,
    )


# ---------------------------------------------------------------------------
# OpenShell.Health and GetGatewayInfo


def test_health_h2c(stubs, gateway, channel):
    assert_healthy(stubs, channel)
    ev = gateway.find_event("gateway.listening")
    assert ev["addr"] == f"127.0.0.1:{gateway.port}"
    assert gateway.tls is False


def test_get_gateway_info(stubs, channel):
    version = health(stubs, channel).version
    stub = stubs.openshell_pb2_grpc.OpenShellStub(channel)
    info = stub.GetGatewayInfo(stubs.openshell_pb2.GetGatewayInfoRequest(), timeout=RPC_TIMEOUT)
    assert info.status == HEALTHY
    assert info.gateway_version == version


@pytest.mark.tls
def test_health_tls(stubs, pki, gateway_factory):
    gw = gateway_factory(tls_args(pki), credentials=client_creds(pki))
    assert gw.tls is True
    with gw.channel() as ch:
        assert_healthy(stubs, ch)


@pytest.mark.tls
def test_tls_rejects_plaintext_client(stubs, pki, gateway_factory):
    gw = gateway_factory(tls_args(pki), credentials=client_creds(pki))
    with grpc.insecure_channel(gw.target) as ch:
        assert rpc_code(health, stubs, ch) == grpc.StatusCode.UNAVAILABLE
    with gw.channel() as ch:
        assert_healthy(stubs, ch)


def test_tls_without_cert_fails_to_start(gateway_factory):
    # TLS is on unless disabled, and then a certificate and key are mandatory.
    gw = gateway_factory(["--bind-address", "127.0.0.1", "--port", "0"], wait=False)
    code = gw.wait_exit(READY_TIMEOUT)
    assert code is not None, "gateway kept running without a TLS certificate"
    assert code != 0


@pytest.mark.tls
def test_mtls_required(stubs, pki, gateway_factory):
    good = client_creds(pki, pki.client_cert, pki.client_key)
    gw = gateway_factory(
        tls_args(pki, "--tls-client-ca", pki.ca_cert, "--tls-require-client-cert"),
        credentials=good)
    with gw.channel() as ch:
        assert_healthy(stubs, ch)
    # No client certificate.
    with gw.channel(credentials=client_creds(pki)) as ch:
        assert rpc_code(health, stubs, ch) == grpc.StatusCode.UNAVAILABLE
    # A certificate from a CA the gateway does not trust.
    rogue = client_creds(pki, pki.rogue_client_cert, pki.rogue_client_key)
    with gw.channel(credentials=rogue) as ch:
        assert rpc_code(health, stubs, ch) == grpc.StatusCode.UNAVAILABLE
    # The gateway survives the failed handshakes.
    with gw.channel() as ch:
        assert_healthy(stubs, ch)


@pytest.mark.tls
def test_mtls_optional(stubs, pki, gateway_factory):
    gw = gateway_factory(tls_args(pki, "--tls-client-ca", pki.ca_cert),
                         credentials=client_creds(pki))
    with gw.channel() as ch:
        assert_healthy(stubs, ch)
    with gw.channel(credentials=client_creds(pki, pki.client_cert, pki.client_key)) as ch:
        assert_healthy(stubs, ch)


# ---------------------------------------------------------------------------
# grpc.health.v1


def test_grpc_health_check(stubs, channel):
    pb = stubs.health_pb2
    stub = stubs.health_pb2_grpc.HealthStub(channel)
    resp = stub.Check(pb.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
    assert resp.status == pb.HealthCheckResponse.SERVING


def test_grpc_health_check_unknown_service(stubs, channel):
    pb = stubs.health_pb2
    stub = stubs.health_pb2_grpc.HealthStub(channel)
    code = rpc_code(stub.Check, pb.HealthCheckRequest(service="no.such.Service"),
                    timeout=RPC_TIMEOUT)
    assert code == grpc.StatusCode.NOT_FOUND


def test_grpc_health_watch(stubs, channel):
    pb = stubs.health_pb2
    stub = stubs.health_pb2_grpc.HealthStub(channel)
    call = stub.Watch(pb.HealthCheckRequest(service=""), timeout=10)
    try:
        first = next(call)
        assert first.status == pb.HealthCheckResponse.SERVING
    finally:
        call.cancel()
    # The stream stays open until the client leaves; the server copes.
    assert_healthy(stubs, channel)


# ---------------------------------------------------------------------------
# Status codes


def test_unknown_method_unimplemented(channel):
    nope = channel.unary_unary("/openshell.v1.OpenShell/Nope")
    assert rpc_code(nope, b"", timeout=RPC_TIMEOUT) == grpc.StatusCode.UNIMPLEMENTED
    other = channel.unary_unary("/no.such.Service/Method")
    assert rpc_code(other, b"", timeout=RPC_TIMEOUT) == grpc.StatusCode.UNIMPLEMENTED


def test_unimplemented_upstream_rpc(stubs, channel):
    # In upstream's service but not in this gateway's subset.
    for method in ("ListProviders", "GetSandboxConfig", "ListSandboxPolicies"):
        call = channel.unary_unary(f"/openshell.v1.OpenShell/{method}")
        assert rpc_code(call, b"", timeout=RPC_TIMEOUT) == grpc.StatusCode.UNIMPLEMENTED, method
    assert_healthy(stubs, channel)


def big_channel(gateway):
    return gateway.channel(options=[("grpc.max_send_message_length", 16 * MIB),
                                    ("grpc.max_receive_message_length", 16 * MIB)])


def test_oversize_request_resource_exhausted(stubs, gateway):
    pb = stubs.diag_pb2
    with big_channel(gateway) as ch:
        stub = diag(stubs, ch)
        code = rpc_code(stub.Collect, iter([pb.EchoMessage(payload=b"x" * (5 * MIB))]),
                        timeout=10)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        code = rpc_code(lambda: list(stub.Echo(iter([pb.EchoMessage(payload=b"y" * (5 * MIB))]),
                                               timeout=10)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Unary: a HealthRequest padded with an unknown length-delimited field 15.
        pad = 5 * MIB
        body = bytes([0x7A]) + varint(pad) + b"\0" * pad
        call = ch.unary_unary("/openshell.v1.OpenShell/Health")
        assert rpc_code(call, body, timeout=10) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert_healthy(stubs, ch)


def test_request_just_under_limit_accepted(stubs, gateway):
    pb = stubs.diag_pb2
    payload = 4 * MIB - 64  # tag + length prefix keep the message under 4 MiB
    with big_channel(gateway) as ch:
        summary = diag(stubs, ch).Collect(iter([pb.EchoMessage(payload=b"z" * payload)]),
                                          timeout=10)
    assert summary.messages == 1
    assert summary.bytes == payload


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


def test_deadline_exceeded(stubs, gateway, channel):
    stub = diag(stubs, channel)
    t0 = time.monotonic()
    code = rpc_code(stub.Delay, stubs.diag_pb2.DelayRequest(delay_ms=2000), timeout=0.2)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 1.5
    # A short delay still completes, and the server is fine afterwards.
    resp = stub.Delay(stubs.diag_pb2.DelayRequest(delay_ms=50), timeout=RPC_TIMEOUT)
    assert resp.waited_ms >= 50
    assert_healthy(stubs, channel)


def test_deadline_enforced_by_server(stubs, gateway):
    # A raw client that never cancels: the gateway itself must end the call
    # once grpc-timeout passes, not when the handler finishes 2 s later.
    msg = stubs.diag_pb2.DelayRequest(delay_ms=2000).SerializeToString()
    frames, end = raw_grpc_call(gateway.port, "/openshell.diag.v1.Diagnostics/Delay", msg,
                                extra_headers=[("grpc-timeout", "200m")], timeout=5)
    assert end is not None, frames
    assert end.at < 1.5, f"call ended after {end.at:.2f}s: {frames}"
    # Control: the same call without a timeout runs to completion.
    frames, end = raw_grpc_call(gateway.port, "/openshell.diag.v1.Diagnostics/Delay",
                                stubs.diag_pb2.DelayRequest(delay_ms=300).SerializeToString(),
                                timeout=5)
    assert end is not None and end.type == H2_HEADERS and end.flags & H2_END_STREAM, frames
    assert end.at >= 0.25


# ---------------------------------------------------------------------------
# Streaming shapes (Diagnostics)


def test_server_stream(stubs, channel):
    chunks = list(diag(stubs, channel).Stream(stubs.diag_pb2.StreamRequest(count=5, size=100),
                                              timeout=RPC_TIMEOUT))
    assert len(chunks) == 5
    assert all(len(c.payload) == 100 for c in chunks)
    seqs = [c.seq for c in chunks]
    assert seqs == list(range(seqs[0], seqs[0] + 5))


def test_client_streaming_collect(stubs, channel):
    pb = stubs.diag_pb2
    sizes = [0, 1, 10, 1000, 70000, 3]
    summary = diag(stubs, channel).Collect(iter(pb.EchoMessage(payload=b"a" * n) for n in sizes),
                                           timeout=RPC_TIMEOUT)
    assert summary.messages == len(sizes)
    assert summary.bytes == sum(sizes)
    empty = diag(stubs, channel).Collect(iter([]), timeout=RPC_TIMEOUT)
    assert (empty.messages, empty.bytes) == (0, 0)


def test_bidi_echo(stubs, channel):
    pb = stubs.diag_pb2
    msgs = [f"msg-{i}".encode() * (i + 1) for i in range(20)]
    replies = list(diag(stubs, channel).Echo(iter(pb.EchoMessage(payload=m) for m in msgs),
                                             timeout=RPC_TIMEOUT))
    assert [r.payload for r in replies] == msgs


def test_bidi_echo_ping_pong(stubs, channel):
    # Each reply must arrive before the client sends the next message: the
    # gateway may not wait for the half-close to answer.
    pb = stubs.diag_pb2
    outbox = queue.Queue()
    done = object()

    def requests():
        while True:
            item = outbox.get(timeout=RPC_TIMEOUT)
            if item is done:
                return
            yield item

    call = diag(stubs, channel).Echo(requests(), timeout=10)
    try:
        for i in range(10):
            payload = b"ping-%d" % i
            outbox.put(pb.EchoMessage(payload=payload))
            assert next(call).payload == payload
        outbox.put(done)
        with pytest.raises(StopIteration):
            next(call)
    finally:
        call.cancel()


# ---------------------------------------------------------------------------
# Shutdown


def test_sigterm_idle_exits_zero(gateway_factory):
    gw = gateway_factory(h2c_args())
    assert gw.stop(signal.SIGTERM, timeout=12) == 0


@pytest.mark.slow
def test_sigterm_with_stream_in_flight(stubs, gateway_factory):
    gw = gateway_factory(h2c_args("--enable-diagnostics", "--shutdown-grace-ms", "1000"))
    with gw.channel() as ch:
        call = diag(stubs, ch).Stream(stubs.diag_pb2.StreamRequest(count=0, size=1024),
                                      timeout=20)
        for _ in range(3):
            next(call)
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        received = 0
        end_code = None
        try:
            for _ in call:  # keep reading so flow control never stalls the drain
                received += 1
        except grpc.RpcError as e:
            end_code = e.code()
        elapsed = time.monotonic() - t0
        assert end_code != grpc.StatusCode.DEADLINE_EXCEEDED, "stream did not end on shutdown"
        assert elapsed < 10
    assert gw.wait_exit(10) == 0
    assert gw.stop() == 0


# ---------------------------------------------------------------------------
# Configuration, logging, CLI


def test_config_file_bind(stubs, gateway_factory, tmp_path, port_lock):
    port = port_lock().port
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        "# e2e\n"
        "[openshell.gateway]\n"
        f'bind_address = "127.0.0.1:{port}"\n'
        "disable_tls = true\n")
    gw = gateway_factory(["--config", cfg])
    assert gw.port == port
    with gw.channel() as ch:
        assert_healthy(stubs, ch)


def test_config_file_syntax_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[openshell.gateway]\nbind_address = = \"127.0.0.1:1\"\n")
    res = subprocess.run([str(GATEWAY_BIN), "--config", str(cfg)], capture_output=True,
                         text=True, timeout=10, env=gateway_env(tmp_path),
                         stdin=subprocess.DEVNULL)
    assert res.returncode != 0
    out = res.stderr
    m = re.search(re.escape(str(cfg)) + r":(\d+):(\d+)", out)
    assert m, f"no file:line:col in stderr:\n{out}"
    assert int(m.group(1)) == 2
    assert int(m.group(2)) >= 1


def test_env_configuration(stubs, gateway_factory, port_lock):
    port = port_lock().port
    gw = gateway_factory([], env={"OPENSHELL_BIND_ADDRESS": "127.0.0.1",
                                  "OPENSHELL_SERVER_PORT": port,
                                  "OPENSHELL_DISABLE_TLS": "true"})
    assert gw.port == port and gw.tls is False
    with gw.channel() as ch:
        assert_healthy(stubs, ch)


def test_health_port_http(gateway_factory, port_lock):
    hport = port_lock().port
    gw = gateway_factory(h2c_args("--health-port", hport))
    conn = http.client.HTTPConnection("127.0.0.1", hport, timeout=RPC_TIMEOUT)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200
    assert body.strip() == b"ok"
    assert gw.running


def test_json_log_lines(gateway):
    lines = [line for line in gateway.log_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        obj = json.loads(line)
        assert {"ts", "level", "event"} <= obj.keys(), line
    listening = gateway.find_event("gateway.listening")
    assert isinstance(listening["port"], int) and listening["port"] == gateway.port
    assert listening["tls"] is False
    names = [e["event"] for e in gateway.events()]
    assert names.index("gateway.listening") < names.index("gateway.ready")


def test_text_log_format(stubs, gateway_factory):
    gw = gateway_factory(h2c_args(), log_format="text")
    lines = [line for line in gw.log_text().splitlines() if line.strip()]
    assert lines and not any(line.lstrip().startswith("{") for line in lines)
    assert any("event=gateway.ready" in line for line in lines)
    with gw.channel() as ch:
        assert_healthy(stubs, ch)


def test_help_mentions_bind_address(tmp_path):
    res = subprocess.run([str(GATEWAY_BIN), "--help"], capture_output=True, text=True,
                         timeout=10, env=gateway_env(tmp_path), stdin=subprocess.DEVNULL)
    assert res.returncode == 0
    assert "--bind-address" in res.stdout + res.stderr


def test_concurrent_clients(stubs, gateway):
    # Several channels (connections) at once, each with a few calls in flight.
    errors = []

    def worker():
        try:
            with gateway.channel() as ch:
                stub = diag(stubs, ch)
                for _ in range(5):
                    assert_healthy(stubs, ch)
                    chunks = list(stub.Stream(stubs.diag_pb2.StreamRequest(count=4, size=5000),
                                              timeout=RPC_TIMEOUT))
                    assert len(chunks) == 4
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
