"""`openshell-gateway generate-certs` and the gateway's use of the local TLS
bundle: TLS and mTLS with no TLS flag at all, the bundle's sandbox-token
keys, idempotency and the partial-bundle refusals."""

import os
import shutil
import signal
import stat

import grpc
import pytest

from utils import GATEWAY_BIN, READY_TIMEOUT, gateway_env, run, wait_until

RPC_TIMEOUT = 5.0
HEALTHY = 1  # openshell.v1.ServiceStatus.SERVICE_STATUS_HEALTHY
TLS_FILES = ["ca.crt", "server/tls.crt", "server/tls.key", "client/tls.crt", "client/tls.key"]
JWT_FILES = ["jwt/signing.pem", "jwt/public.pem", "jwt/kid"]
KEY_FILES = ["ca.key", "server/tls.key", "client/tls.key", "jwt/signing.pem", "jwt/kid"]


def generate(tmp_path, *args, env=None, check=True):
    """Runs generate-certs with a clean environment under |tmp_path|."""
    full = gateway_env(tmp_path / "gen-env", env)
    return run([str(GATEWAY_BIN), "generate-certs", *map(str, args)], env=full, check=check)


def snapshot(d):
    """(mtime_ns, inode, bytes) of every file under |d|."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, d)] = (st.st_mtime_ns, st.st_ino, fh.read())
    return out


def san_text(cert):
    return run(["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"]).stdout


def creds(d, client=True):
    read = lambda rel: (d / rel).read_bytes()  # noqa: E731
    return grpc.ssl_channel_credentials(
        root_certificates=read("ca.crt"),
        private_key=read("client/tls.key") if client else None,
        certificate_chain=read("client/tls.crt") if client else None)


def plain_args(*extra):
    """TLS on (the default) and no TLS flag: the bundle must do the rest."""
    return ["--bind-address", "127.0.0.1", "--port", "0", *extra]


def gateway_info(stubs, ch):
    stub = stubs.openshell_pb2_grpc.OpenShellStub(ch)
    return stub.GetGatewayInfo(stubs.openshell_pb2.GetGatewayInfoRequest(), timeout=RPC_TIMEOUT)


def health(stubs, ch):
    stub = stubs.openshell_pb2_grpc.OpenShellStub(ch)
    return stub.Health(stubs.openshell_pb2.HealthRequest(), timeout=RPC_TIMEOUT)


@pytest.fixture
def bundle(tmp_path):
    """A bundle made by generate-certs with one extra DNS and one IP name."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    d = tmp_path / "tls"
    res = generate(tmp_path, "--output-dir", d, "--san", "gw.e2e.test", "--san", "10.9.8.7")
    assert "Wrote a local TLS bundle" in res.stdout
    return d


# ---------------------------------------------------------------------------
# generate-certs


def test_generate_certs_writes_bundle(bundle):
    for rel in TLS_FILES + JWT_FILES + ["ca.key"]:
        assert (bundle / rel).is_file(), rel
    for rel in KEY_FILES:
        assert stat.S_IMODE((bundle / rel).stat().st_mode) == 0o600, rel
    for sub in ("server", "client", "jwt"):
        assert stat.S_IMODE((bundle / sub).stat().st_mode) == 0o700, sub
    res = run(["openssl", "verify", "-CAfile", bundle / "ca.crt", "-purpose", "sslserver",
               bundle / "server/tls.crt"])
    assert "OK" in res.stdout
    res = run(["openssl", "verify", "-CAfile", bundle / "ca.crt", "-purpose", "sslclient",
               bundle / "client/tls.crt"])
    assert "OK" in res.stdout
    sans = san_text(bundle / "server/tls.crt")
    for want in ("DNS:localhost", "IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1",
                 "DNS:gw.e2e.test", "IP Address:10.9.8.7"):
        assert want in sans
    # No stray temporary files.
    assert not [p for p in bundle.rglob("*") if ".tmp." in p.name]


def test_generate_certs_is_idempotent(tmp_path, bundle):
    before = snapshot(bundle)
    res = generate(tmp_path, "--output-dir", bundle, "--san", "other.e2e.test")
    assert res.stdout.strip() == f"TLS bundle already present in {bundle}; nothing to do"
    assert snapshot(bundle) == before


def test_generate_certs_refuses_partial_bundle(tmp_path, bundle):
    (bundle / "client/tls.key").unlink()
    (bundle / "jwt/kid").unlink()
    before = snapshot(bundle)
    res = generate(tmp_path, "--output-dir", bundle, check=False)
    assert res.returncode == 1
    err = res.stderr
    assert f"partial TLS bundle in {bundle}" in err
    present, missing = err.split("present: ")[1].split("; missing: ")
    assert "ca.crt" in present and "server/tls.key" in present and "ca.key" in present
    assert missing.startswith("client/tls.key, jwt/kid. ")
    assert "client/tls.key" not in present
    assert "move" in err and "Restore the missing files" in err
    assert snapshot(bundle) == before


def test_generate_certs_default_dir_from_env(tmp_path):
    d = tmp_path / "from-env"
    res = generate(tmp_path, env={"OPENSHELL_LOCAL_TLS_DIR": d})
    assert f"Wrote a local TLS bundle to {d}" in res.stdout
    assert "not the default directory" not in res.stdout
    assert all((d / rel).is_file() for rel in TLS_FILES + JWT_FILES)


@pytest.mark.parametrize("args, message", [
    (["--san", "bad name"], "--san 'bad name': not an IP address or a DNS name"),
    (["--san", "-x.test"], "not an IP address or a DNS name"),
    (["--days", "0"], "--days '0': expected 1 to 36500"),
    (["--days", "ten"], "--days 'ten'"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
    (["--san"], "missing value for '--san'"),
])
def test_generate_certs_usage_errors(tmp_path, args, message):
    d = tmp_path / "tls"
    res = generate(tmp_path, "--output-dir", d, *args, check=False)
    assert res.returncode == 2, res
    assert message in res.stderr
    assert not d.exists()


def test_generate_certs_bad_output_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = generate(tmp_path, "--output-dir", blocker / "tls", check=False)
    assert res.returncode == 1
    assert f"cannot create directory {blocker}" in res.stderr


def test_generate_certs_help(tmp_path):
    res = generate(tmp_path, "--help")
    assert "Usage: openshell-gateway generate-certs" in res.stdout
    assert "--san NAME" in res.stdout


# ---------------------------------------------------------------------------
# the gateway with the bundle


@pytest.mark.tls
def test_gateway_uses_bundle_with_mtls(stubs, bundle, gateway_factory):
    gw = gateway_factory(plain_args(), env={"OPENSHELL_LOCAL_TLS_DIR": bundle},
                         credentials=creds(bundle))
    assert gw.tls is True
    ev = gw.find_event("gateway.tls_bundle")
    assert ev is not None and ev["dir"] == str(bundle)
    assert ev["client_ca"] == str(bundle / "ca.crt")
    assert ev["require_client_cert"] in (True, "true")
    with gw.channel() as ch:
        assert health(stubs, ch).status == HEALTHY
        assert gateway_info(stubs, ch).status == HEALTHY
    # The CA alone is not enough: the handshake wants a client certificate.
    with gw.channel(credentials=creds(bundle, client=False)) as ch:
        for call in (health, gateway_info):
            with pytest.raises(grpc.RpcError) as info:
                call(stubs, ch)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # A plaintext client gets nowhere either.
    with grpc.insecure_channel(gw.target) as ch:
        with pytest.raises(grpc.RpcError):
            health(stubs, ch)


@pytest.mark.tls
def test_gateway_certificate_carries_extra_san(stubs, bundle, gateway_factory):
    gw = gateway_factory(plain_args(), env={"OPENSHELL_LOCAL_TLS_DIR": bundle},
                         credentials=creds(bundle))
    named = [("grpc.ssl_target_name_override", "gw.e2e.test")]
    with gw.channel(options=named) as ch:
        assert health(stubs, ch).status == HEALTHY
    other = [("grpc.ssl_target_name_override", "not-in-the-cert.e2e.test")]
    with gw.channel(options=other) as ch:
        with pytest.raises(grpc.RpcError) as info:
            health(stubs, ch)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.tls
def test_gateway_uses_bundle_jwt_keys(bundle, gateway_factory):
    gw = gateway_factory(plain_args(), env={"OPENSHELL_LOCAL_TLS_DIR": bundle},
                         credentials=creds(bundle))
    kid = (bundle / "jwt/kid").read_text().strip()
    assert gw.find_event("gateway.jwt_bundle")["dir"] == str(bundle)
    assert gw.find_event("gateway.jwt_keys")["kid"] == kid
    # The state directory's default key set was not created.
    assert not (gw.workdir / "state" / "jwt").exists()


@pytest.mark.tls
def test_gateway_explicit_tls_flags_win_over_bundle(stubs, pki, bundle, gateway_factory):
    gw = gateway_factory(
        plain_args("--tls-cert", pki.server_cert, "--tls-key", pki.server_key),
        env={"OPENSHELL_LOCAL_TLS_DIR": bundle},
        credentials=grpc.ssl_channel_credentials(root_certificates=pki.read(pki.ca_cert)))
    assert gw.find_event("gateway.tls_bundle") is None
    with gw.channel() as ch:
        assert health(stubs, ch).status == HEALTHY


@pytest.mark.tls
def test_gateway_bundle_survives_reload(stubs, bundle, gateway_factory):
    gw = gateway_factory(plain_args(), env={"OPENSHELL_LOCAL_TLS_DIR": bundle},
                         credentials=creds(bundle))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: gw.find_event("gateway.reloaded") or gw.find_event("gateway.reload_failed"),
               READY_TIMEOUT, what="reload")
    assert gw.find_event("gateway.reload_failed") is None
    assert gw.find_event("gateway.reload_tls_failed") is None
    with gw.channel() as ch:
        assert gateway_info(stubs, ch).status == HEALTHY


@pytest.mark.tls
@pytest.mark.parametrize("remove, named", [
    (["client/tls.key"], "missing client/tls.key"),
    (["ca.crt", "server/tls.crt"], "missing ca.crt, server/tls.crt"),
])
def test_gateway_refuses_partial_bundle(bundle, gateway_factory, remove, named):
    for rel in remove:
        (bundle / rel).unlink()
    gw = gateway_factory(plain_args(), env={"OPENSHELL_LOCAL_TLS_DIR": bundle}, wait=False)
    code = gw.wait_exit(READY_TIMEOUT)
    assert code is not None and code != 0
    log = gw.log_text()
    assert f"local TLS bundle {bundle} is incomplete: {named}" in log
    assert "generate-certs" in log


@pytest.mark.tls
def test_gateway_refuses_partial_jwt_set(bundle, gateway_factory):
    (bundle / "jwt/public.pem").unlink()
    gw = gateway_factory(plain_args(), env={"OPENSHELL_LOCAL_TLS_DIR": bundle}, wait=False)
    code = gw.wait_exit(READY_TIMEOUT)
    assert code is not None and code != 0
    assert "incomplete sandbox token key set: missing jwt/public.pem" in gw.log_text()


def test_gateway_without_cert_or_bundle_names_generate_certs(gateway_factory):
    gw = gateway_factory(plain_args(), wait=False)
    code = gw.wait_exit(READY_TIMEOUT)
    assert code is not None and code != 0
    assert "run `openshell-gateway generate-certs`" in gw.log_text()


@pytest.mark.tls
def test_gateway_disable_tls_ignores_partial_tls_files(stubs, bundle, gateway_factory):
    # With TLS off the TLS half is not read; the complete JWT half still is.
    (bundle / "server/tls.key").unlink()
    gw = gateway_factory(plain_args("--disable-tls"), env={"OPENSHELL_LOCAL_TLS_DIR": bundle})
    assert gw.tls is False
    assert gw.find_event("gateway.tls_bundle") is None
    assert gw.find_event("gateway.jwt_keys")["kid"] == (bundle / "jwt/kid").read_text().strip()
    with gw.channel() as ch:
        assert health(stubs, ch).status == HEALTHY
