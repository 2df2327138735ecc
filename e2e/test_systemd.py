"""systemd integration: the unit file, sd_notify messages and `make install`.

No systemd runs as PID 1 here (nor in CI): the service manager's side of
the notification protocol is played by a real AF_UNIX datagram socket, as
systemd's own $NOTIFY_SOCKET is, and the unit is checked offline with
`systemd-analyze verify`. Every gateway listens on loopback and is stopped
by PID (gateway_factory); every wait is bounded.
"""

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pytest

import utils
from utils import (
    GATEWAY_BIN,
    READY_TIMEOUT,
    REPO_ROOT,
    gateway_env,
    h2c_args,
    run,
    wait_until,
)

BUILD_DIR = GATEWAY_BIN.resolve().parent
UNIT_IN = REPO_ROOT / "systemd" / "openshell-gateway.service.in"
ENV_EXAMPLE = REPO_ROOT / "systemd" / "openshell-gateway.env"
PROGRAMS = ("openshell-gateway", "openshell-driver-process", "openshell-supervisor")
CLI = "openshell"
WATCHDOG_USEC = 2_000_000  # the gateway pings every WATCHDOG_USEC / 2


# ---------------------------------------------------------------------------
# The service manager's end of $NOTIFY_SOCKET


class NotifySocket:
    """A bound AF_UNIX datagram socket that records every notification with
    its arrival time and the sender's PID (SCM_CREDENTIALS, which is how
    systemd tells the main process from its children).

    |abstract| binds "@name" in the abstract namespace; otherwise a path
    under |directory|, made writable for everyone like /run/systemd/notify
    so that a child running as another user (the embedded PostgreSQL) would
    get through too if it had the variable.
    """

    def __init__(self, directory, abstract):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if abstract:
            name = f"openshell-e2e-notify-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = Path(directory) / "notify.sock"
            self.sock.bind(str(path))
            os.chmod(path, 0o666)
            self.address = str(path)
        self.sock.settimeout(0.1)
        self.messages = []  # (monotonic seconds, sender pid, {key: value}, raw text)
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self):
        space = socket.CMSG_SPACE(struct.calcsize("iII"))
        while not self._stop:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, space)
            except socket.timeout:
                continue
            except OSError:
                return
            at = time.monotonic()
            pid = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:struct.calcsize("iII")])[0]
            text = data.decode(errors="replace")
            fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
            with self._cond:
                self.messages.append((at, pid, fields, text))
                self._cond.notify_all()

    def wait_for(self, key, value="1", after=0, timeout=READY_TIMEOUT):
        """Waits for a message whose |key| is |value|, at index >= |after|;
        returns its index, or None when |timeout| passes first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.messages)):
                    if self.messages[i][2].get(key) == value:
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def snapshot(self):
        with self._cond:
            return list(self.messages)

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_factory(tmp_path):
    made = []

    def make(abstract=False):
        d = tmp_path / f"notify{len(made)}"
        d.mkdir()
        os.chmod(d, 0o755)
        ns = NotifySocket(d, abstract)
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.close()


def notify_env(tmp_path, name, ns, watchdog_pid=None):
    """The gateway's environment for |ns|: NOTIFY_SOCKET and WATCHDOG_USEC,
    WATCHDOG_PID only when given (never inherited from the test runner)."""
    env = gateway_env(tmp_path / name, {"NOTIFY_SOCKET": ns.address,
                                        "WATCHDOG_USEC": WATCHDOG_USEC})
    env.pop("WATCHDOG_PID", None)
    if watchdog_pid is not None:
        env["WATCHDOG_PID"] = str(watchdog_pid)
    return env


def port_answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def health_status(stubs, port):
    import grpc

    pb = stubs.health_pb2
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = stubs.health_pb2_grpc.HealthStub(ch)
        return stub.Check(pb.HealthCheckRequest(service=""), timeout=3).status


def watchdog_times(messages, start, end):
    return [at for at, _, f, _ in messages if f.get("WATCHDOG") == "1" and start <= at <= end]


# ---------------------------------------------------------------------------
# Readiness, watchdog, reload, stop


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_lifecycle(abstract, tmp_path, notify_factory, gateway_factory, port_lock, stubs):
    ns = notify_factory(abstract)
    port = port_lock().port
    name = "gw-notify"
    gw = gateway_factory(["--bind-address", "127.0.0.1", "--port", port, "--disable-tls"],
                         name=name, wait=False, use_env=notify_env(tmp_path, name, ns))

    ready = ns.wait_for("READY")
    assert ready is not None, f"no READY=1 within {READY_TIMEOUT}s\n{gw.log_text()}"
    # READY=1 means listening and serving: the port answers and Health says
    # SERVING right away, with no retry.
    assert port_answers(port), "READY=1 arrived before the listener accepted connections"
    assert health_status(stubs, port) == stubs.health_pb2.HealthCheckResponse.SERVING
    ev = gw.find_event("gateway.ready")
    assert ev is not None and ev.get("database") == "external"
    assert gw.find_event("driver.ready") is not None, "READY=1 before the driver answered"
    assert gw.find_event("store.migrated") is not None, "READY=1 before the migrations ran"
    gw.port = port

    # Watchdog keep-alives every WATCHDOG_USEC / 2 = 1 s.
    t_ready = ns.snapshot()[ready][0]
    time.sleep(3.3)
    pings = watchdog_times(ns.snapshot(), t_ready, t_ready + 3.3)
    assert len(pings) >= 3, f"only {len(pings)} WATCHDOG=1 in 3.3 s at WatchdogSec=2s"
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert all(g <= 1.5 for g in gaps), f"watchdog gaps {gaps}"

    # SIGHUP: RELOADING=1 with the CLOCK_MONOTONIC time it began, then READY=1.
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    mark = len(ns.snapshot())
    os.kill(gw.pid, signal.SIGHUP)
    reloading = ns.wait_for("RELOADING", after=mark, timeout=5)
    assert reloading is not None, f"no RELOADING=1 after SIGHUP\n{gw.log_text()}"
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = ns.snapshot()[reloading][2]
    assert "MONOTONIC_USEC" in fields, f"RELOADING=1 without MONOTONIC_USEC: {fields}"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    assert ns.wait_for("READY", after=reloading + 1, timeout=5) is not None, \
        "no READY=1 after the reload"
    assert port_answers(port)

    # SIGTERM: STOPPING=1, then a clean exit.
    mark = len(ns.snapshot())
    os.kill(gw.pid, signal.SIGTERM)
    assert ns.wait_for("STOPPING", after=mark, timeout=5) is not None, "no STOPPING=1"
    assert gw.wait_exit(30) == 0, gw.log_text()

    # Only the gateway spoke: its managed driver and the database it spawns
    # must not inherit NOTIFY_SOCKET (with NotifyAccess=all a child's
    # READY=1 would pass for the gateway's).
    messages = ns.snapshot()
    senders = {pid for _, pid, _, _ in messages}
    assert senders == {gw.pid}, f"notifications from {senders}, gateway is {gw.pid}: {messages}"
    readies = [i for i, m in enumerate(messages) if m[2].get("READY") == "1"]
    assert len(readies) == 2 and readies[0] == ready, [m[3] for m in messages]


@pytest.mark.parametrize("case", ["absent", "matching", "other"])
def test_watchdog_pid(case, tmp_path, notify_factory, gateway_factory, monkeypatch):
    """WATCHDOG_PID absent: the watchdog is ours; set to our PID: ours; set
    to another PID: meant for someone else, so no keep-alives (as
    sd_watchdog_enabled() decides)."""
    ns = notify_factory()
    name = f"gw-wd-{case}"
    env = notify_env(tmp_path, name, ns, watchdog_pid=1 if case == "other" else None)
    if case == "matching":
        # exec keeps the PID: the shell exports its own $$ and becomes the gateway.
        monkeypatch.setattr(utils, "GATEWAY_WRAPPER",
                            ["sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"',
                             "sh", *utils.GATEWAY_WRAPPER])
    gw = gateway_factory(h2c_args(), name=name, use_env=env)
    ready = ns.wait_for("READY", timeout=5)
    assert ready is not None, gw.log_text()
    if case == "matching":
        environ = Path(f"/proc/{gw.pid}/environ").read_bytes().split(b"\0")
        assert f"WATCHDOG_PID={gw.pid}".encode() in environ
    t_ready = ns.snapshot()[ready][0]
    time.sleep(2.6)
    pings = watchdog_times(ns.snapshot(), 0, t_ready + 2.6)
    if case == "other":
        assert pings == [], "keep-alives sent although WATCHDOG_PID names another process"
    else:
        assert len(pings) >= 2, f"{len(pings)} WATCHDOG=1 in 2.6 s at WatchdogSec=2s"


class DelayedProxy:
    """A reserved loopback port that refuses connections until open(), then
    forwards each connection to |target| (the session PostgreSQL)."""

    def __init__(self, port, target):
        self.port = port
        self.target = target
        self.listener = None
        self.socks = []
        self.lock = threading.Lock()

    def open(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self):
        if self.listener is not None:
            self.listener.close()
        with self.lock:
            for s in self.socks:
                s.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_no_ready_while_database_unreachable(tmp_path, notify_factory, gateway_factory,
                                             port_lock, postgres, db, stubs):
    """The database refuses connections: the gateway keeps retrying (it does
    not exit), keeps its event loop alive (keep-alives), opens no listener
    and says nothing but WATCHDOG=1, not even around a SIGHUP. Once the
    database is reachable it migrates, opens its listener and sends READY=1."""
    ns = notify_factory()
    port = port_lock().port
    proxy = DelayedProxy(port_lock().port, (postgres.host, postgres.port))
    name = "gw-nodb"
    url = f"postgresql://{postgres.user}@127.0.0.1:{proxy.port}/{db}"
    try:
        gw = gateway_factory(["--bind-address", "127.0.0.1", "--port", port, "--disable-tls",
                              "--db-url", url],
                             name=name, wait=False, use_env=notify_env(tmp_path, name, ns))
        wait_until(lambda: gw.find_event("driver.ready") or not gw.running, 10,
                   what="the driver to come up")
        time.sleep(1.0)
        os.kill(gw.pid, signal.SIGHUP)
        time.sleep(3.0)
        assert gw.running, f"gateway exited while the database was unreachable\n{gw.log_text()}"
        messages = ns.snapshot()
        others = [m[3] for m in messages if m[2].get("WATCHDOG") != "1"]
        assert others == [], f"sent {others} while the database was unreachable"
        assert len(watchdog_times(messages, 0, time.monotonic())) >= 3
        assert not port_answers(port), "listener open before the database was up"
        assert len(gw.events("store.conn_reset")) >= 2, "no retries logged"

        t_open = time.monotonic()
        proxy.open()
        ready = ns.wait_for("READY", timeout=15)
        assert ready is not None, f"no READY=1 after the database came up\n{gw.log_text()}"
        assert ns.snapshot()[ready][0] >= t_open
        assert port_answers(port)
        assert health_status(stubs, port) == stubs.health_pb2.HealthCheckResponse.SERVING
        assert gw.find_event("store.migrated") is not None
    finally:
        if "gw" in locals() and gw.running:
            gw.stop()
        proxy.close()


def test_sigterm_while_starting_sends_stopping(tmp_path, notify_factory, gateway_factory,
                                               port_lock):
    """SIGTERM before readiness (database unreachable): STOPPING=1 and a
    clean exit, never READY=1."""
    ns = notify_factory()
    name = "gw-early-stop"
    url = f"postgresql://postgres@127.0.0.1:{port_lock().port}/postgres"
    gw = gateway_factory(h2c_args("--db-url", url), name=name, wait=False,
                         use_env=notify_env(tmp_path, name, ns))
    wait_until(lambda: gw.find_event("store.conn_reset") or not gw.running, 10,
               what="a refused database connection")
    os.kill(gw.pid, signal.SIGTERM)
    assert ns.wait_for("STOPPING", timeout=5) is not None, gw.log_text()
    assert gw.wait_exit(30) == 0, gw.log_text()
    assert all(m[2].get("READY") != "1" for m in ns.snapshot())


# ---------------------------------------------------------------------------
# The unit file


def render_unit(dest, bindir, sysconfdir="/etc", docdir="/usr/share/doc/openshell-gateway"):
    """The unit as `make` renders it, with the given directories."""
    text = UNIT_IN.read_text()
    for key, value in (("bindir", bindir), ("sysconfdir", sysconfdir), ("docdir", docdir)):
        text = text.replace(f"@{key}@", str(value))
    assert not re.search(r"@[a-z]+@", text), "unsubstituted @...@ left in the unit"
    dest.write_text(text)
    return dest


def unit_settings(path):
    """[Service] (and other sections') key -> list of values, comments dropped."""
    settings = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


def systemd_analyze_verify(unit):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian: systemd; scripts/install-deps.sh test)")
    # Works without systemd as PID 1: it loads the unit offline.
    res = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
    return res


def test_unit_verifies(tmp_path):
    unit = render_unit(tmp_path / "openshell-gateway.service", BUILD_DIR)
    res = systemd_analyze_verify(unit)
    # An unknown or misspelt key is only a warning (exit 0): any output fails.
    assert res.returncode == 0 and res.stderr.strip() == "" and res.stdout.strip() == "", \
        f"systemd-analyze verify: rc={res.returncode}\n{res.stdout}{res.stderr}"

    s = unit_settings(unit)
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{BUILD_DIR}/openshell-gateway"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["EnvironmentFile"] == ["-/etc/openshell/gateway.env"]
    assert s["KillMode"] == ["mixed"]
    assert s["StateDirectory"] == ["openshell"]
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"]
    # The gateway pings at half the interval; 30 s leaves room for a busy host.
    assert s["WatchdogSec"] == ["30s"]
    # Options that break the process driver's namespaces, cgroups, mounts
    # or the JITs people run in sandboxes must stay out.
    for key in ("RestrictNamespaces", "ProtectControlGroups", "MemoryDenyWriteExecute",
                "ProtectHostname", "PrivateDevices", "CapabilityBoundingSet", "User"):
        assert key not in s, f"{key}= would break the process driver"

    # Stop timeout covers the drain (shutdown_grace_ms), the driver's sandbox
    # stop (10 s) and the embedded PostgreSQL stop (15 s).
    options = run([GATEWAY_BIN, "--list-options"]).stdout
    grace_ms = int(next(line.split("\t")[3] for line in options.splitlines()
                        if line.startswith("--shutdown-grace-ms")))
    stop = s["TimeoutStopSec"][0]
    assert stop.endswith("s")
    assert int(stop[:-1]) >= grace_ms / 1000 + 25, f"TimeoutStopSec={stop} too short"


def test_unit_verify_catches_a_missing_binary(tmp_path):
    """The check above is not vacuous: a wrong ExecStart fails verify."""
    unit = render_unit(tmp_path / "openshell-gateway.service", tmp_path / "no-such-bin")
    res = systemd_analyze_verify(unit)
    assert res.returncode != 0
    assert "no-such-bin/openshell-gateway" in res.stdout + res.stderr


def test_env_example_is_commented_and_names_real_variables():
    options = run([GATEWAY_BIN, "--list-options"]).stdout
    known = {line.split("\t")[1] for line in options.splitlines() if line.count("\t") >= 3}
    names = []
    for n, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        assert line == "" or line.startswith("#"), f"line {n} is not a comment: {line!r}"
        m = re.match(r"#([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            names.append(m.group(1))
            assert m.group(1) in known, f"line {n}: {m.group(1)} is not a gateway setting"
    # The example covers the settings an operator must decide on.
    for must in ("OPENSHELL_BIND_ADDRESS", "OPENSHELL_DB_URL", "OPENSHELL_TLS_CERT",
                 "OPENSHELL_LOG_FORMAT", "OPENSHELL_SHUTDOWN_GRACE_MS"):
        assert must in names


# ---------------------------------------------------------------------------
# make install


INSTALL_DIRS_MK = """
print-install-dirs:
\t@echo bindir=$(bindir)
\t@echo sysconfdir=$(sysconfdir)
\t@echo docdir=$(docdir)
\t@echo pkgdatadir=$(pkgdatadir)
\t@echo systemdsystemunitdir=$(systemdsystemunitdir)
"""


def install_dirs(tmp_path):
    mk = tmp_path / "dirs.mk"
    mk.write_text(INSTALL_DIRS_MK)
    out = run(["make", "-s", "--no-print-directory", "-C", BUILD_DIR, "-f", "Makefile",
               "-f", mk, "print-install-dirs"]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.mark.slow
def test_make_install(tmp_path, gateway_factory, monkeypatch):
    if not (BUILD_DIR / "Makefile").exists():
        pytest.skip(f"{BUILD_DIR} is not a configured build directory")
    dirs = install_dirs(tmp_path)
    if not dirs.get("systemdsystemunitdir") or dirs["systemdsystemunitdir"] == "no":
        pytest.skip("configured --without-systemdsystemunitdir")
    dest = tmp_path / "dest"
    cmd = ["make", "--no-print-directory", "-C", BUILD_DIR, "install", f"DESTDIR={dest}"]
    res = run(cmd, timeout=900, check=False)
    cli_missing = False
    if res.returncode != 0:
        # Tolerated only while the CLI itself does not build yet.
        cli = run(["make", "--no-print-directory", "-C", BUILD_DIR, CLI], timeout=600, check=False)
        assert cli.returncode != 0, f"make install failed:\n{res.stdout}\n{res.stderr}"
        cli_missing = True
        warnings.warn(f"the {CLI} CLI does not build yet; installed without it:\n"
                      + cli.stderr[-2000:])
        run(cmd + [f"bin_PROGRAMS={' '.join(PROGRAMS)}"], timeout=900)

    def under(path):
        return dest / str(path).lstrip("/")

    bindir = under(dirs["bindir"])
    for prog in PROGRAMS + (() if cli_missing else (CLI,)):
        assert os.access(bindir / prog, os.X_OK), f"{prog} not installed in {bindir}"
    run([bindir / "openshell-gateway", "--version"])

    unit = under(dirs["systemdsystemunitdir"]) / "openshell-gateway.service"
    s = unit_settings(unit)
    assert s["ExecStart"] == [f"{dirs['bindir']}/openshell-gateway"]
    assert s["EnvironmentFile"] == [f"-{dirs['sysconfdir']}/openshell/gateway.env"]
    assert "@" not in "".join(v for vals in s.values() for v in vals)
    # The installed unit verifies once its ExecStart points into DESTDIR.
    check = tmp_path / "check" / "openshell-gateway.service"
    check.parent.mkdir()
    check.write_text(unit.read_text().replace(f"ExecStart={dirs['bindir']}/",
                                              f"ExecStart={bindir}/"))
    res = systemd_analyze_verify(check)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr

    env_file = under(dirs["sysconfdir"]) / "openshell" / "gateway.env"
    assert env_file.read_text() == ENV_EXAMPLE.read_text()
    example = under(dirs["docdir"]) / "examples" / "openshell-gateway.env"
    assert example.read_text() == ENV_EXAMPLE.read_text()

    sqldir = under(dirs["pkgdatadir"]) / "sql"
    shipped = sorted(p.name for p in (REPO_ROOT / "sql").glob("*.sql"))
    assert sorted(p.name for p in sqldir.glob("*.sql")) == shipped
    for name in shipped:
        assert (sqldir / name).read_bytes() == (REPO_ROOT / "sql" / name).read_bytes()
    assert "CREATE VIEW audit_" in (sqldir / "001_init.sql").read_text()

    docdir = under(dirs["docdir"])
    for doc in ("README.md", "operations.md", "configuration.md", "audit.md",
                "drivers/process.md"):
        assert (docdir / doc).is_file(), f"{doc} not installed in {docdir}"

    # The installed gateway finds its managed driver next to itself.
    monkeypatch.setattr(utils, "GATEWAY_BIN", bindir / "openshell-gateway")
    gw = gateway_factory(h2c_args(), name="installed")
    spawned = gw.find_event("driver.spawned")
    assert spawned is not None and spawned.get("program") == str(
        bindir / "openshell-driver-process"), spawned
    assert gw.stop() == 0

    # An operator's environment file survives a reinstall and an uninstall.
    env_file.write_text("OPENSHELL_LOG_LEVEL=debug\n")
    run(cmd + ([f"bin_PROGRAMS={' '.join(PROGRAMS)}"] if cli_missing else []), timeout=900)
    assert env_file.read_text() == "OPENSHELL_LOG_LEVEL=debug\n"
    run(["make", "--no-print-directory", "-C", BUILD_DIR, "uninstall", f"DESTDIR={dest}"]
        + ([f"bin_PROGRAMS={' '.join(PROGRAMS)}"] if cli_missing else []), timeout=300)
    assert env_file.read_text() == "OPENSHELL_LOG_LEVEL=debug\n"
    assert not unit.exists()
    assert not (bindir / "openshell-gateway").exists()
    assert not (sqldir / "001_init.sql").exists()


# ---------------------------------------------------------------------------
# docs/operations.md: backup and restore of the embedded database


@pytest.mark.slow
def test_embedded_backup_and_restore_as_documented(tmp_path, gateway_factory):
    """Runs the "Backup and restore" commands of docs/operations.md against
    an embedded database in a scratch state directory."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("the documented procedure runs as root with runuser")
    for tool in ("pg_dump", "pg_restore", "psql"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian: postgresql-client)")
    pg_ctl = utils.PG_BIN / "pg_ctl"
    # Not under pytest's 0700 basetemp: the postgres user must reach pg/.
    state = Path(tempfile.mkdtemp(prefix="oe-bk-", dir="/tmp"))
    os.chmod(state, 0o755)
    dump = tmp_path / "openshell.dump"
    try:
        gw = gateway_factory(h2c_args("--state-dir", state / "gw"), name="bk",
                             embedded_db=True, timeout=60)
        conn = f"host={state / 'gw' / 'pg' / 'run'} dbname=openshell user=openshell"
        psql = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        run(psql + [conn, "-c", "CREATE TABLE backup_marker (v text)",
                    "-c", "INSERT INTO backup_marker VALUES ('before')"])
        migrations = run(psql + [conn, "-c", "SELECT count(*) FROM schema_migrations"]).stdout

        # Online dump, as documented.
        run(["pg_dump", "-Fc", "-f", dump, conn], timeout=120)
        run(psql + [conn, "-c", "UPDATE backup_marker SET v = 'after'"])
        assert gw.stop() == 0

        # Restore: the cluster by hand, socket only; recreate; restore; stop.
        s = state / "gw"
        run(["runuser", "-u", "postgres", "--", pg_ctl, "-D", s / "pg" / "data", "-w",
             "-l", s / "pg" / "log" / "postgresql.log",
             "-o", f"-c listen_addresses= -k {s}/pg/run", "start"], timeout=120)
        try:
            run(psql[:2] + [f"host={s}/pg/run dbname=postgres user=openshell",
                            "-c", "DROP DATABASE openshell", "-c", "CREATE DATABASE openshell"])
            run(["pg_restore", "--exit-on-error", "-d", conn, dump], timeout=120)
        finally:
            run(["runuser", "-u", "postgres", "--", pg_ctl, "-D", s / "pg" / "data", "-w",
                 "stop"], timeout=120)

        again = gateway_factory(h2c_args("--state-dir", s), name="bk-again",
                                embedded_db=True, timeout=60)
        assert not again.events("store.migration_apply"), "restored schema re-migrated"
        assert run(psql + [conn, "-c", "SELECT v FROM backup_marker"]).stdout.strip() == "before"
        assert run(psql + [conn, "-c", "SELECT count(*) FROM schema_migrations"]).stdout \
            == migrations
        assert again.stop() == 0
    finally:
        shutil.rmtree(state, ignore_errors=True)
