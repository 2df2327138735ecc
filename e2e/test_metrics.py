"""/metrics: the Prometheus text exposition (format 0.0.4) on its own
plain-HTTP listener, bound to loopback unless metrics_bind_address says
otherwise.

Every scrape is parsed strictly (each sample belongs to a declared family,
no duplicate series, histogram buckets cumulative and ending at +Inf with
_count equal to the +Inf bucket), and counters are checked to move by
exactly the calls a test made between two scrapes."""

import math
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from drivers_fixtures import _drivers_stopper, _leaks, db_url, env  # noqa: F401 - fixtures
from relay_util import create_ready, exec_ok
from test_events import Subscriber
from utils import GATEWAY_BIN, gateway_env, h2c_args, wait_until, write_toml

pytestmark = pytest.mark.postgres

RPC_TIMEOUT = 5.0
SVC = "/openshell.v1.OpenShell/"
DRIVER_SVC = "/openshell.compute.v1.ComputeDriver/"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

NAME_RE = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE_RE = re.compile(rf"^({NAME_RE})(\{{(.*)\}})? (\S+)$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
TYPES = {"counter", "gauge", "histogram"}


# ---------------------------------------------------------------------------
# scraping and strict parsing


def scrape(port, host="127.0.0.1"):
    """GET /metrics; returns the parsed families (see parse())."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=RPC_TIMEOUT) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == CONTENT_TYPE
        body = r.read().decode("utf-8")
    return parse(body)


def unescape(value):
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse_labels(text):
    labels = {}
    pos = 0
    while pos < len(text):
        m = LABEL_RE.match(text, pos)
        assert m, f"bad label set {{{text}}} at {pos}"
        assert m.group(1) not in labels, f"label {m.group(1)} twice in {{{text}}}"
        labels[m.group(1)] = unescape(m.group(2))
        pos = m.end()
    return labels


def parse_value(text):
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    assert re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?", text), f"bad value {text!r}"
    return float(text)


class Family:
    def __init__(self, name, help_text):
        self.name = name
        self.help = help_text
        self.type = None
        self.samples = []  # (sample name, labels dict, value)

    def value(self, **labels):
        """The value of the one sample whose labels are exactly |labels|
        (counters, gauges), or None."""
        got = [v for n, lb, v in self.samples if n == self.name and lb == labels]
        assert len(got) <= 1
        return got[0] if got else None

    def series(self, suffix, **labels):
        return [(lb, v) for n, lb, v in self.samples if n == self.name + suffix
                and all(lb.get(k) == v2 for k, v2 in labels.items())]


def parse(body):
    """Families by name. Fails on anything the 0.0.4 text format (as this
    gateway writes it) does not allow."""
    assert body.endswith("\n"), "exposition must end with a newline"
    fams = {}
    cur = None
    seen = set()
    for line in body[:-1].split("\n"):
        assert line, "empty line in exposition"
        if line.startswith("# HELP "):
            name, _, text = line[7:].partition(" ")
            assert re.fullmatch(NAME_RE, name), line
            assert name not in fams, f"family {name} declared twice"
            cur = fams[name] = Family(name, text)
            continue
        if line.startswith("# TYPE "):
            name, _, typ = line[7:].partition(" ")
            assert cur is not None and cur.name == name and cur.type is None, \
                f"TYPE without its HELP just before: {line}"
            assert typ in TYPES, line
            cur.type = typ
            continue
        assert not line.startswith("#"), f"unexpected comment: {line}"
        m = SAMPLE_RE.match(line)
        assert m, f"bad sample line: {line!r}"
        assert cur is not None and cur.type is not None, f"sample before any family: {line}"
        name, labels = m.group(1), parse_labels(m.group(3) or "")
        allowed = {cur.name}
        if cur.type == "histogram":
            allowed = {cur.name + s for s in ("_bucket", "_sum", "_count")}
        assert name in allowed, f"sample {name} does not belong to family {cur.name}"
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen, f"duplicate series {line}"
        seen.add(key)
        value = parse_value(m.group(4))
        if cur.type == "counter":
            assert value >= 0 and not math.isnan(value), line
        cur.samples.append((name, labels, value))
    for f in fams.values():
        assert f.type is not None, f"family {f.name} without TYPE"
        if f.type == "histogram":
            check_histogram(f)
    return fams


def check_histogram(f):
    groups = {}
    for name, labels, value in f.samples:
        base = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        g = groups.setdefault(base, {"buckets": [], "sum": None, "count": None})
        if name == f.name + "_bucket":
            assert "le" in labels, f"{f.name}_bucket without le"
            g["buckets"].append((parse_value(labels["le"]), value))
        else:
            assert "le" not in labels
            g["sum" if name.endswith("_sum") else "count"] = value
    for base, g in groups.items():
        les = [le for le, _ in g["buckets"]]
        counts = [c for _, c in g["buckets"]]
        assert les and les[-1] == math.inf, f"{f.name}{base}: last bucket is not +Inf"
        assert les == sorted(les) and len(set(les)) == len(les), f"{f.name}{base}: le order"
        assert counts == sorted(counts), f"{f.name}{base}: buckets not cumulative"
        assert g["count"] is not None and g["sum"] is not None, f"{f.name}{base}: no sum/count"
        assert g["count"] == counts[-1], f"{f.name}{base}: _count != +Inf bucket"


def handled(fams, method, code):
    return fams["openshell_grpc_server_handled_total"].value(method=method, code=code) or 0


def handling_count(fams, method):
    got = fams["openshell_grpc_server_handling_seconds"].series("_count", method=method)
    return got[0][1] if got else 0


def total(fams, name):
    return sum(v for n, _, v in fams[name].samples if n == name)


def listening_sockets(port):
    """Local IPv4/IPv6 addresses of sockets listening on |port|, from
    /proc/net/tcp{,6} (state 0A = LISTEN)."""
    out = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(path).read_text().splitlines()[1:]:
            fields = line.split()
            addr, _, hexport = fields[1].partition(":")
            if fields[3] == "0A" and int(hexport, 16) == port:
                out.append(addr)
    return out


def refused(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# ---------------------------------------------------------------------------
# tests


def test_metrics_count_calls_by_method_and_status(stubs, gateway_factory, port_lock):
    mport = port_lock().port
    gw = gateway_factory(h2c_args("--metrics-port", mport))
    ev = gw.find_event("gateway.metrics_listening")
    assert ev["addr"] == "127.0.0.1" and ev["port"] == mport

    before = scrape(mport)
    with gw.channel() as ch:
        stub = stubs.openshell_pb2_grpc.OpenShellStub(ch)
        version = None
        for _ in range(3):
            version = stub.Health(stubs.openshell_pb2.HealthRequest(), timeout=RPC_TIMEOUT).version
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as info:
                stub.GetSandbox(stubs.openshell_pb2.GetSandboxRequest(name="no-such-sandbox"),
                                timeout=RPC_TIMEOUT)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        nosuch = ch.unary_unary(SVC + "NoSuchMethod")
        with pytest.raises(grpc.RpcError) as info:
            nosuch(b"", timeout=RPC_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    after = scrape(mport)

    assert handled(after, SVC + "Health", "OK") - handled(before, SVC + "Health", "OK") == 3
    assert (handled(after, SVC + "GetSandbox", "NOT_FOUND")
            - handled(before, SVC + "GetSandbox", "NOT_FOUND")) == 2
    # An unknown path is counted, but under a bounded label.
    assert (handled(after, "unknown", "UNIMPLEMENTED")
            - handled(before, "unknown", "UNIMPLEMENTED")) == 1
    assert not any(lb["method"].endswith("NoSuchMethod")
                   for _, lb, _ in after["openshell_grpc_server_handled_total"].samples)
    # Nothing else was called in between.
    name = "openshell_grpc_server_handled_total"
    assert total(after, name) - total(before, name) == 6
    # The latency histogram saw the same calls.
    assert handling_count(after, SVC + "Health") - handling_count(before, SVC + "Health") == 3
    assert (handling_count(after, SVC + "GetSandbox")
            - handling_count(before, SVC + "GetSandbox")) == 2
    assert handling_count(after, "unknown") - handling_count(before, "unknown") == 1

    # Build, process and database numbers.
    assert after["openshell_build_info"].value(version=version) == 1
    assert after["openshell_gateway_up"].value() == 1
    assert after["openshell_grpc_connections"].value() == 0
    assert after["openshell_grpc_active_calls"].value() == 0
    start = after["process_start_time_seconds"].value()
    assert time.time() - 600 < start <= time.time()
    assert after["process_resident_memory_bytes"].value() > 1024 * 1024
    assert after["process_open_fds"].value() >= 5
    assert after["process_max_fds"].value() >= after["process_open_fds"].value()
    size = after["openshell_db_pool_size"].value()
    pool = after["openshell_db_pool_connections"]
    assert size >= 1
    assert pool.value(state="busy") + pool.value(state="idle") == size
    assert after["openshell_db_pool_waiting"].value() >= 0
    # The managed process driver answered the startup handshake.
    drv = after["openshell_driver_calls_total"]
    assert drv.value(method=DRIVER_SVC + "GetCapabilities", code="OK") >= 1
    assert after["openshell_driver_call_errors_total"].value(
        method=DRIVER_SVC + "GetCapabilities") == 0
    assert after["openshell_supervisor_sessions"].value() == 0
    assert after["openshell_event_subscribers"].value() == 0

    # Only the metrics port serves /metrics, and only GET/HEAD.
    req = urllib.request.Request(f"http://127.0.0.1:{mport}/metrics", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=RPC_TIMEOUT)
    assert info.value.code == 405
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=RPC_TIMEOUT)
    assert info.value.code == 404


def test_metrics_listener_is_loopback_whatever_the_bind_address(gateway_factory, port_lock):
    """The main listener on another address (127.0.0.2) does not move the
    unauthenticated metrics listener off 127.0.0.1."""
    mport = port_lock().port
    main = port_lock().port
    # The harness probes Health on 127.0.0.1: wait for the log line instead.
    gw = gateway_factory(["--bind-address", "127.0.0.2", "--port", main, "--disable-tls",
                          "--metrics-port", mport], wait=False)
    wait_until(lambda: gw.find_event("gateway.ready") or not gw.running, 60,
               what="gateway.ready")
    assert gw.running, gw.log_text()
    assert gw.find_event("gateway.metrics_listening")["addr"] == "127.0.0.1"
    assert listening_sockets(mport) == ["0100007F"]  # 127.0.0.1 in /proc's hex
    assert refused("127.0.0.2", mport)
    assert "openshell_build_info" in scrape(mport)


def test_metrics_bind_address_from_toml(gateway_factory, port_lock, tmp_path):
    mport = port_lock().port
    cfg = write_toml(tmp_path / "gateway.toml", {
        "openshell.gateway": {
            "bind_address": "127.0.0.1:0",
            "disable_tls": True,
            "metrics_bind_address": f"127.0.0.3:{mport}",
        },
    })
    gw = gateway_factory(["--config", cfg])
    ev = gw.find_event("gateway.metrics_listening")
    assert ev["addr"] == "127.0.0.3" and ev["port"] == mport
    assert listening_sockets(mport) == ["0300007F"]
    assert refused("127.0.0.1", mport)
    assert "openshell_grpc_server_handled_total" in scrape(mport, host="127.0.0.3")


def test_metrics_bad_bind_address_refused(tmp_path):
    res = subprocess.run([str(GATEWAY_BIN), "--disable-tls", "--metrics-bind-address",
                          "localhost", "--metrics-port", "9"], capture_output=True, text=True,
                         timeout=10, env=gateway_env(tmp_path), stdin=subprocess.DEVNULL)
    assert res.returncode == 2
    assert "--metrics-bind-address: invalid address 'localhost'" in res.stderr


def test_metrics_sessions_subscribers_and_driver_calls(env, stubs, port_lock):
    mport = port_lock().port
    gw = env.gateway("--metrics-port", mport)
    api = env.api(gw)
    before = scrape(mport)
    sb = create_ready(env, api, "metrics-sb")
    assert exec_ok(api, sb.metadata.id, ["echo", "hi"]) == b"hi\n"

    sub = Subscriber(stubs, gw, name="metrics-sub")
    try:
        sub.wait_caught_up()
        after = scrape(mport)
        assert after["openshell_supervisor_sessions"].value() == 1
        assert after["openshell_event_subscribers"].value() == 1
        # Caught up: the subscriber is not behind the head it was served.
        assert after["openshell_event_subscriber_lag_events"].value() == 0
        assert after["openshell_events_head_sequence"].value() >= 1
    finally:
        sub.close()
    # The exec's relay is closed again; no forwards were opened.
    wait_until(lambda: scrape(mport)["openshell_relays_open"].value() == 0, 10,
               what="relays closed after exec")
    assert after["openshell_tcp_forwards_open"].value() == 0

    drv_b, drv_a = before["openshell_driver_calls_total"], after["openshell_driver_calls_total"]
    create = DRIVER_SVC + "CreateSandbox"
    assert (drv_a.value(method=create, code="OK") or 0) - (drv_b.value(method=create, code="OK")
                                                          or 0) == 1
    assert after["openshell_driver_call_errors_total"].value(method=create) == 0
    assert handled(after, SVC + "CreateSandbox", "OK") - handled(before, SVC + "CreateSandbox",
                                                                 "OK") == 1
    # The supervisor's session is a gRPC call of its own, still running.
    assert after["openshell_grpc_active_calls"].value() >= 2
