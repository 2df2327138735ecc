"""Self-checks of the e2e harness itself (no gateway needed)."""

import subprocess

import pytest

from utils import PortLock, parse_log_line, port_is_free


def test_stubs_generated(stubs):
    assert stubs.diag_pb2.StreamRequest(count=1, size=2).SerializeToString() == b"\x08\x01\x10\x02"
    assert stubs.health_pb2.HealthCheckResponse.SERVING == 1
    assert hasattr(stubs.reflection_pb2_grpc, "ServerReflectionStub")
    assert hasattr(stubs.openshell_pb2_grpc, "OpenShellStub")


@pytest.mark.tls
def test_pki_chains(pki):
    def verify(ca, cert):
        return subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(cert)],
                              capture_output=True, timeout=10).returncode

    assert verify(pki.ca_cert, pki.server_cert) == 0
    assert verify(pki.ca_cert, pki.client_cert) == 0
    assert verify(pki.ca_cert, pki.rogue_client_cert) != 0
    assert verify(pki.rogue_ca_cert, pki.rogue_client_cert) == 0
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(pki.server_cert)],
                          capture_output=True, text=True, timeout=10).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text


def test_port_lock_excludes_second_holder():
    a = PortLock()
    b = PortLock()
    try:
        assert a.port != b.port
        assert port_is_free(a.port)
    finally:
        a.release()
        b.release()


def test_parse_log_line():
    ev = parse_log_line('{"ts":"x","level":"info","event":"gateway.listening","port":5}')
    assert ev["event"] == "gateway.listening" and ev["port"] == 5
    ev = parse_log_line('ts=1 level=info event=gateway.listening addr="127.0.0.1:7" tls=false')
    assert ev["addr"] == "127.0.0.1:7" and ev["tls"] == "false"
    assert parse_log_line("garbage") is None


@pytest.mark.postgres
def test_postgres_cluster(postgres):
    assert postgres.sql("select 1").strip() == "1"
    assert postgres.sql("show fsync").strip() == "off"
    assert postgres.dsn.startswith("postgresql://postgres@127.0.0.1:")
