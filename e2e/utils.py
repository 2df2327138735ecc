"""Helpers for the gateway end-to-end tests (fixtures live in conftest.py).

Modelled on PgBouncer's test/utils.py: a process wrapper per server
(Gateway, Postgres), PortLock for race-free ports, log helpers.
"""

import fcntl
import importlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent
PROTO_DIR = REPO_ROOT / "proto"
GATEWAY_BIN = Path(os.environ.get("GATEWAY_BIN", str(REPO_ROOT / "build" / "openshell-gateway")))
GATEWAY_WRAPPER = shlex.split(os.environ.get("GATEWAY_WRAPPER", ""))
GRPC_PYTHON_PLUGIN = os.environ.get("GRPC_PYTHON_PLUGIN", "/usr/bin/grpc_python_plugin")
PROTO_SYSTEM_INCLUDE = os.environ.get("PROTO_SYSTEM_INCLUDE", "/usr/include")
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
READY_TIMEOUT = float(os.environ.get("E2E_READY_TIMEOUT", "10"))
STOP_TIMEOUT = float(os.environ.get("E2E_STOP_TIMEOUT", "15"))
PORT_MODE = os.environ.get("E2E_PORT_MODE", "zero")
PORT_LOCK_DIR = Path(tempfile.gettempdir()) / "openshell-e2e-ports"

HEALTH_METHOD = "/openshell.v1.OpenShell/Health"

# Log lines that mean the gateway hit a memory error or UB (sanitizer builds).
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def wait_until(predicate, timeout, interval=0.02, what="condition"):
    """Polls |predicate| until it returns a truthy value; raises on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run(cmd, timeout=60, check=True, **kw):
    """subprocess.run with a bound, captured text output and a readable error."""
    res = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(
            f"command failed ({res.returncode}): {shlex.join(map(str, cmd))}\n"
            f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
        )
    return res


# ---------------------------------------------------------------------------
# Ports


class PortLock:
    """A loopback TCP port reserved by an flock()ed file.

    Concurrent e2e runs on one host skip ports whose lock file is held, and a
    probe bind() makes sure nothing listens there now. Ports come from below
    the kernel's ephemeral range so outgoing connections cannot grab them
    between the probe and the server's own bind(). Release with release().
    """

    def __init__(self):
        PORT_LOCK_DIR.mkdir(mode=0o777, exist_ok=True)
        low = 32768
        try:
            low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
        hi = max(low, 12000)
        rng = random.Random(os.getpid() ^ time.monotonic_ns())
        for _ in range(500):
            port = rng.randrange(10000, hi)
            fd = os.open(PORT_LOCK_DIR / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if port_is_free(port):
                self.port = port
                self._fd = fd
                return
            os.close(fd)
        raise RuntimeError("no free port found under " + str(PORT_LOCK_DIR))

    def release(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------
# Generated protobuf / gRPC stubs


class Stubs:
    """Python modules generated from proto/ (and /usr/include imports).

    Attribute access takes a module's base name (stubs.diag_pb2,
    stubs.openshell_pb2_grpc); module() takes a dotted name
    (stubs.module("grpc.health.v1.health_pb2")).
    """

    def __init__(self, outdir):
        self.outdir = outdir
        self._by_base = {}
        for path in sorted(outdir.rglob("*_pb2*.py")):
            dotted = ".".join(path.relative_to(outdir).with_suffix("").parts)
            self._by_base.setdefault(path.stem, []).append(dotted)

    def module(self, dotted):
        return importlib.import_module(dotted)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        found = self._by_base.get(name)
        if not found:
            pytest.fail(f"no generated module {name!r}: is its .proto under {PROTO_DIR}?")
        if len(found) > 1:
            pytest.fail(f"{name!r} is ambiguous ({found}); use stubs.module()")
        return importlib.import_module(found[0])

    # Shorthands for the three services the suite talks to.
    @property
    def health_pb2(self):
        return self.module("grpc.health.v1.health_pb2")

    @property
    def health_pb2_grpc(self):
        return self.module("grpc.health.v1.health_pb2_grpc")

    @property
    def reflection_pb2(self):
        return self.module("grpc.reflection.v1alpha.reflection_pb2")

    @property
    def reflection_pb2_grpc(self):
        return self.module("grpc.reflection.v1alpha.reflection_pb2_grpc")


def generate_stubs(out):
    """Runs protoc over every .proto under proto/ into |out| and makes the
    modules importable; returns a Stubs."""
    import grpc

    protos = sorted(str(p) for p in PROTO_DIR.rglob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {PROTO_DIR}")
    run(
        [
            "protoc",
            f"--plugin=protoc-gen-grpc_python={GRPC_PYTHON_PLUGIN}",
            f"-I{PROTO_DIR}",
            f"-I{PROTO_SYSTEM_INCLUDE}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *protos,
        ],
        timeout=120,
    )
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    # proto/grpc/... generates a "grpc" package that would shadow grpcio;
    # graft it onto grpcio's package path instead so that both the stubs'
    # "from grpc.health.v1 import health_pb2" and grpcio itself resolve.
    if (out / "grpc").is_dir() and str(out / "grpc") not in grpc.__path__:
        grpc.__path__.append(str(out / "grpc"))
    importlib.invalidate_caches()
    return Stubs(out)


def make_pki(d):
    """Builds a throwaway PKI in directory |d| with the openssl CLI.

    ca_cert signs server_cert (SAN IP:127.0.0.1, DNS:localhost) and
    client_cert (CN=e2e-client); rogue_ca_cert signs rogue_client_cert, which
    the gateway must not trust. read(path) returns a file's bytes.
    """

    def make_ca(name, cn):
        run(["openssl", "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
             "-days", "3", "-subj", f"/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.crt")])

    def make_leaf(name, cn, ca, extensions):
        ext = d / f"{name}.ext"
        ext.write_text("\n".join(extensions) + "\n")
        run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
             "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr")])
        run(["openssl", "x509", "-req", "-sha256", "-days", "3",
             "-in", str(d / f"{name}.csr"),
             "-CA", str(d / f"{ca}.crt"), "-CAkey", str(d / f"{ca}.key"),
             "-set_serial", str(random.getrandbits(63)),
             "-extfile", str(ext), "-out", str(d / f"{name}.crt")])

    leaf = ["basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment"]
    make_ca("ca", "openshell-e2e-ca")
    make_ca("rogue-ca", "openshell-e2e-rogue-ca")
    make_leaf("server", "localhost", "ca",
              leaf + ["extendedKeyUsage=serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
    make_leaf("client", "e2e-client", "ca", leaf + ["extendedKeyUsage=clientAuth"])
    make_leaf("rogue-client", "e2e-client", "rogue-ca", leaf + ["extendedKeyUsage=clientAuth"])
    return types.SimpleNamespace(
        dir=d,
        ca_cert=d / "ca.crt",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        client_cert=d / "client.crt",
        client_key=d / "client.key",
        rogue_ca_cert=d / "rogue-ca.crt",
        rogue_client_cert=d / "rogue-client.crt",
        rogue_client_key=d / "rogue-client.key",
        read=lambda p: Path(p).read_bytes(),
    )


# ---------------------------------------------------------------------------
# Gateway process


class GatewayStartError(Exception):
    pass


def parse_log_line(line):
    """One log line as a dict (JSON, or key=value text); None if unparsable."""
    line = line.strip()
    if not line:
        return None
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None
    fields = {}
    for m in re.finditer(r'(\w[\w.]*)=("(?:[^"\\]|\\.)*"|\S*)', line):
        value = m.group(2)
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                value = value[1:-1]
        fields[m.group(1)] = value
    return fields if "event" in fields else None


def gateway_env(workdir, extra=None):
    """The environment the gateway runs with: the caller's minus OPENSHELL_*,
    with XDG dirs inside |workdir| so no user config or TLS bundle leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENSHELL_")}
    for var, sub in (("XDG_CONFIG_HOME", "xdg-config"), ("XDG_STATE_HOME", "xdg-state"),
                     ("XDG_DATA_HOME", "xdg-data"), ("XDG_CACHE_HOME", "xdg-cache")):
        path = workdir / sub
        path.mkdir(parents=True, exist_ok=True)
        env[var] = str(path)
    # The local TLS bundle (generate-certs): a path that never exists unless
    # the test names one, so a bundle on the machine is never picked up.
    env["OPENSHELL_LOCAL_TLS_DIR"] = str(workdir / "no-local-tls")
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def h2c_args(*extra):
    """Flags for a plaintext (h2c) gateway on a kernel-chosen loopback port."""
    return ["--bind-address", "127.0.0.1", "--port", "0", "--disable-tls", *extra]


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def write_toml(path, tables):
    """Writes {"openshell.gateway": {"key": value, ...}, ...} as a TOML file."""
    lines = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in keys.items())
        lines.append("")
    Path(path).write_text("\n".join(lines))
    return Path(path)


class Gateway:
    """One openshell-gateway process, its log file and how to reach it."""

    def __init__(self, workdir, name="gateway"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = self.workdir / f"{name}.log"
        self.proc = None
        self.port = None
        self.addr = None
        self.tls = None
        self.credentials = None  # grpc.ChannelCredentials when TLS is on
        self.channel_options = []
        self.cmd = None
        self._log_file = None
        self._port_lock = None
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------

    def start(self, args=(), env=None, wait=True, log_format="json", state_dir=True,
              credentials=None, timeout=READY_TIMEOUT, use_env=None):
        """Starts the gateway with |args|; with |wait|, returns once it logs
        gateway.ready and answers Health (raises GatewayStartError if it exits
        first or the bound passes)."""
        if not GATEWAY_BIN.exists():
            pytest.fail(f"gateway binary not found: {GATEWAY_BIN} (build it or set GATEWAY_BIN)")
        args = [str(a) for a in args]
        if log_format and "--log-format" not in args:
            args += ["--log-format", log_format]
        if state_dir and "--state-dir" not in args:
            state = self.workdir / "state"
            state.mkdir(exist_ok=True)
            args += ["--state-dir", str(state)]
        if PORT_MODE == "lock":
            args = self._lock_zero_port(args)
        self.credentials = credentials
        self.cmd = [*GATEWAY_WRAPPER, str(GATEWAY_BIN), *args]
        full_env = use_env if use_env is not None else gateway_env(self.workdir, env)
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            env=full_env,
            cwd=self.workdir,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def _lock_zero_port(self, args):
        for i, a in enumerate(args[:-1]):
            if a == "--port" and args[i + 1] == "0":
                self._port_lock = PortLock()
                args = list(args)
                args[i + 1] = str(self._port_lock.port)
                break
        return args

    def wait_ready(self, timeout=READY_TIMEOUT):
        """Waits for gateway.ready (bounded), learns the port, polls Health."""
        deadline = time.monotonic() + timeout
        while True:
            if self.find_event("gateway.ready"):
                break
            if self.proc.poll() is not None:
                raise GatewayStartError(
                    f"gateway exited with {self.proc.returncode} before gateway.ready\n"
                    f"{self.log_text()}")
            if time.monotonic() >= deadline:
                raise GatewayStartError(
                    f"no gateway.ready within {timeout}s\n{self.log_text()}")
            time.sleep(0.02)
        self._learn_port()
        if self.tls is False or self.credentials is not None:
            self.wait_healthy(max(1.0, deadline - time.monotonic()))
        return self

    def _learn_port(self):
        ev = self.find_event("gateway.listening")
        if ev is None:
            raise GatewayStartError(f"no gateway.listening event\n{self.log_text()}")
        self.addr = ev.get("addr")
        port = ev.get("port")
        if port is None and self.addr:
            port = self.addr.rsplit(":", 1)[-1]
        if port is None and self._port_lock is not None:
            port = self._port_lock.port
        self.port = int(port)
        tls = ev.get("tls")
        if isinstance(tls, str):
            tls = tls.lower() in ("true", "1", "yes", "on")
        self.tls = bool(tls) if tls is not None else (self.credentials is not None)

    def wait_healthy(self, timeout=5.0):
        """Polls the Health RPC until it answers (bounded)."""
        import grpc

        deadline = time.monotonic() + timeout
        last = None
        with self.channel() as ch:
            health = ch.unary_unary(HEALTH_METHOD)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise GatewayStartError(
                        f"gateway exited with {self.proc.returncode}\n{self.log_text()}")
                try:
                    health(b"", timeout=1.0)
                    return
                except grpc.RpcError as e:
                    last = e
                    time.sleep(0.05)
        raise GatewayStartError(f"Health never answered: {last}\n{self.log_text()}")

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Signals the process (by PID), waits up to |timeout| s, then SIGKILLs.
        Returns the exit code (negative = killed by that signal)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"{self.name}: no exit {timeout}s after signal {sig}; sending SIGKILL")
                self.proc.kill()
                self.proc.wait(10)
        self._stopped = True
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._port_lock is not None:
            self._port_lock.release()
            self._port_lock = None
        return self.proc.returncode

    def wait_exit(self, timeout):
        """Waits (bounded) for the process to exit by itself; returns its code."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    # -- introspection -----------------------------------------------------

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def target(self):
        return f"127.0.0.1:{self.port}"

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self, name=None):
        """Parsed log lines, optionally only those whose event is |name|."""
        out = []
        for line in self.log_text().splitlines():
            ev = parse_log_line(line)
            if ev is not None and (name is None or ev.get("event") == name):
                out.append(ev)
        return out

    def find_event(self, name):
        evs = self.events(name)
        return evs[0] if evs else None

    def log_contains(self, pattern):
        return re.search(pattern, self.log_text()) is not None

    def rss_kib(self):
        """Resident set size from /proc/PID/status, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    # -- clients -----------------------------------------------------------

    def channel(self, credentials=None, options=None):
        """A grpc channel to this gateway (TLS if the gateway runs TLS)."""
        import grpc

        opts = list(self.channel_options) + list(options or [])
        creds = credentials or self.credentials
        if self.tls or credentials is not None:
            if creds is None:
                raise ValueError("gateway runs TLS: pass credentials")
            return grpc.secure_channel(self.target, creds, options=opts)
        return grpc.insecure_channel(self.target, options=opts)


# ---------------------------------------------------------------------------
# Minimal raw HTTP/2 client
#
# grpcio enforces deadlines on the client side too and cancels the stream
# itself, so it cannot show whether the gateway honours grpc-timeout. This
# client sends one gRPC request with hand-encoded HPACK (literal fields, no
# Huffman, no indexing) and never cancels; it records the frames it gets.

H2_DATA, H2_HEADERS, H2_RST_STREAM, H2_SETTINGS, H2_PING, H2_GOAWAY = 0, 1, 3, 4, 6, 7
H2_END_STREAM, H2_ACK, H2_END_HEADERS = 0x1, 0x1, 0x4
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def hpack_int(value, prefix_bits, first_byte_flags=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = bytearray([first_byte_flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name, value):
    """Literal header field without indexing, new name (RFC 7541 6.2.2)."""
    name, value = name.encode(), value.encode()
    return (b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value)


def h2_frame(ftype, flags, stream_id, payload=b""):
    return (len(payload).to_bytes(3, "big") + bytes([ftype, flags])
            + stream_id.to_bytes(4, "big") + payload)


def grpc_frame(message):
    return b"\x00" + len(message).to_bytes(4, "big") + message


class H2Frame:
    def __init__(self, ftype, flags, stream_id, payload, at):
        self.type, self.flags, self.stream_id, self.payload, self.at = (
            ftype, flags, stream_id, payload, at)

    def __repr__(self):
        return (f"H2Frame(type={self.type} flags={self.flags:#x} stream={self.stream_id} "
                f"len={len(self.payload)} at={self.at:.3f})")


def raw_grpc_call(port, path, message, extra_headers=(), timeout=5.0):
    """Sends one gRPC request on stream 1 and reads frames until stream 1
    ends (END_STREAM or RST_STREAM), GOAWAY, EOF or |timeout| s. Returns
    (frames, end_frame or None); frame.at is seconds since the request."""
    headers = [(":method", "POST"), (":scheme", "http"), (":path", path),
               (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"),
               ("te", "trailers"), *extra_headers]
    block = b"".join(hpack_literal(n, v) for n, v in headers)
    frames = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        t0 = time.monotonic()
        sock.sendall(H2_PREFACE + h2_frame(H2_SETTINGS, 0, 0)
                     + h2_frame(H2_HEADERS, H2_END_HEADERS, 1, block)
                     + h2_frame(H2_DATA, H2_END_STREAM, 1, grpc_frame(message)))
        buf = b""
        deadline = t0 + timeout
        while True:
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                n = int.from_bytes(buf[:3], "big")
                f = H2Frame(buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF,
                            buf[9:9 + n], time.monotonic() - t0)
                buf = buf[9 + n:]
                frames.append(f)
                if f.type == H2_SETTINGS and not f.flags & H2_ACK:
                    sock.sendall(h2_frame(H2_SETTINGS, H2_ACK, 0))
                elif f.type == H2_PING and not f.flags & H2_ACK:
                    sock.sendall(h2_frame(H2_PING, H2_ACK, 0, f.payload))
                elif f.stream_id == 1 and (f.type == H2_RST_STREAM or (
                        f.type in (H2_HEADERS, H2_DATA) and f.flags & H2_END_STREAM)):
                    return frames, f
                elif f.type == H2_GOAWAY:
                    return frames, None
            left = deadline - time.monotonic()
            if left <= 0:
                return frames, None
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                return frames, None
            if not chunk:
                return frames, None
            buf += chunk


# ---------------------------------------------------------------------------
# PostgreSQL


class Postgres:
    """A throwaway PostgreSQL cluster owned by the postgres user when run as
    root (initdb refuses root), on 127.0.0.1 and a locked port."""

    def __init__(self, basedir, port):
        self.basedir = Path(basedir)
        self.pgdata = self.basedir / "data"
        self.sockdir = self.basedir / "sock"
        self.log_path = self.basedir / "postgres.log"
        self.port = port
        self.host = "127.0.0.1"
        self.user = "postgres"
        self.dbname = "postgres"
        self.started = False

    @property
    def dsn(self):
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    @property
    def conninfo(self):
        return f"host={self.host} port={self.port} user={self.user} dbname={self.dbname}"

    def _as_owner(self, cmd):
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *map(str, cmd)]
        return [str(c) for c in cmd]

    def initdb(self):
        self.sockdir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.basedir, "postgres", "postgres")
            shutil.chown(self.sockdir, "postgres", "postgres")
        run(self._as_owner([PG_BIN / "initdb", "-D", self.pgdata, "-U", self.user,
                            "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"]),
            timeout=120)
        conf = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.sockdir}'",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "max_connections = 100",
            "log_min_messages = info",
            "log_connections = on",
        ]
        with open(self.pgdata / "postgresql.conf", "a") as f:
            f.write("\n# openshell e2e\n" + "\n".join(conf) + "\n")

    def start(self):
        run(self._as_owner([PG_BIN / "pg_ctl", "-D", self.pgdata, "-l", self.log_path,
                            "-w", "-t", "60", "start"]), timeout=90)
        self.started = True

    def postmaster_pid(self):
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self):
        if not self.started:
            return
        res = run(self._as_owner([PG_BIN / "pg_ctl", "-D", self.pgdata, "-m", "fast",
                                  "-w", "-t", "30", "stop"]), timeout=60, check=False)
        if res.returncode != 0:
            pid = self.postmaster_pid()
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.started = False

    def sql(self, query, dbname=None):
        """Runs |query| with psql over TCP; returns stdout (unaligned, tuples only)."""
        res = run([PG_BIN / "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                   "-h", self.host, "-p", str(self.port), "-U", self.user,
                   "-d", dbname or self.dbname, "-c", query], timeout=60)
        return res.stdout

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

