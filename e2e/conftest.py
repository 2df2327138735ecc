"""End-to-end fixtures for openshell-gateway.

Run from the repository root with Debian's interpreter:

    /usr/bin/python3 -m pytest e2e

Environment knobs:
    GATEWAY_BIN         gateway binary (default <repo>/build/openshell-gateway)
    GATEWAY_WRAPPER     command prefix, e.g. "valgrind --error-exitcode=99"
    E2E_READY_TIMEOUT   seconds to wait for gateway.ready (default 10)
    E2E_PORT_MODE       "zero" (default: --port 0, port read from the log) or
                        "lock" (pick a free port under a file lock)
    PG_BIN              PostgreSQL binaries (default /usr/lib/postgresql/15/bin)

Every server listens on 127.0.0.1 only, every wait is bounded, and only
processes started here are signalled, by PID.
"""

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from utils import (
    PG_BIN,
    PORT_MODE,
    SANITIZER_MARKERS,
    Gateway,
    PortLock,
    Postgres,
    generate_stubs,
    h2c_args,
    make_pki,
    write_toml,
)


def pytest_configure(config):
    config.addinivalue_line("markers", "postgres: needs the throwaway PostgreSQL cluster")
    config.addinivalue_line("markers", "tls: needs the openssl CLI to build a test PKI")
    config.addinivalue_line("markers", "slow: takes several seconds")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the item so fixtures can tell in teardown
    # whether the test failed (PgBouncer-style "print the log on failure").
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def request_failed(request):
    """True when the setup or call phase of |request|'s test failed."""
    for when in ("setup", "call"):
        rep = getattr(request.node, "rep_" + when, None)
        if rep is not None and rep.failed:
            return True
    return False


@pytest.fixture
def port_lock():
    """Factory for PortLock objects, all released at teardown."""
    locks = []

    def make():
        lock = PortLock()
        locks.append(lock)
        return lock

    yield make
    for lock in locks:
        lock.release()


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    """Python stubs for every .proto under proto/, generated once per session."""
    try:
        return generate_stubs(tmp_path_factory.mktemp("stubs"))
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """Throwaway CA, server and client certificates (see utils.make_pki)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def gateway_factory(tmp_path, request):
    """Starts gateways on demand: gateway_factory(args, env=..., **start_kw).

    At teardown every gateway is stopped by PID (SIGTERM, bounded wait, then
    SIGKILL) and its log is printed (pytest shows it when the test fails). A
    gateway still running at teardown that does not exit 0 on SIGTERM, or a
    sanitizer report in a log, turns into a test error.
    """
    started = []

    def make(args=(), env=None, name=None, embedded_db=False, **kw):
        """embedded_db=False points the gateway at the session PostgreSQL
        (unless the test gives its own --db-url / OPENSHELL_DB_URL), so a
        test does not pay for initdb; True lets it start its own."""
        name = name or f"gw{len(started)}"
        args = [str(a) for a in args]
        given = "--db-url" in args or any(a.startswith("--db-url=") for a in args) or (
            env is not None and "OPENSHELL_DB_URL" in env)
        if not embedded_db and not given:
            args += ["--db-url", request.getfixturevalue("postgres").dsn]
        gw = Gateway(tmp_path / name, name=name)
        started.append(gw)
        gw.start(args, env=env, **kw)
        return gw

    yield make

    problems = []
    for gw in started:
        was_running = gw.running
        code = gw.stop()
        text = gw.log_text()
        print(f"\n===== {gw.name} log ({gw.log_path}) pid={gw.pid} exit={code} =====")
        print(" ".join(gw.cmd or []))
        print(text)
        if was_running and code != 0:
            problems.append(f"{gw.name}: exit code {code} on SIGTERM at teardown")
        if any(m in text for m in SANITIZER_MARKERS):
            problems.append(f"{gw.name}: sanitizer report in log")
    if problems and not request_failed(request):
        pytest.fail("; ".join(problems))


@pytest.fixture
def gateway(gateway_factory, tmp_path, port_lock):
    """A running h2c gateway with the Diagnostics service enabled, configured
    through a TOML file under tmp_path."""
    port = port_lock().port if PORT_MODE == "lock" else 0
    cfg = write_toml(tmp_path / "gateway.toml", {
        "openshell.gateway": {
            "bind_address": f"127.0.0.1:{port}",
            "disable_tls": True,
            "enable_diagnostics": True,
        },
    })
    return gateway_factory(["--config", cfg], name="gateway")


@pytest.fixture
def channel(gateway):
    """An open channel to the gateway fixture, closed at teardown."""
    ch = gateway.channel()
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def postgres():
    """Session-wide PostgreSQL 15 cluster; exposes .dsn, .conninfo, .sql()."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser")
    # Not under pytest's basetemp: that is 0700 root, which postgres cannot enter.
    basedir = Path(tempfile.mkdtemp(prefix="openshell-e2e-pg-"))
    lock = PortLock()
    pg = Postgres(basedir, lock.port)
    ok = False
    try:
        pg.initdb()
        pg.start()
        ok = True
        yield pg
    finally:
        pg.stop()
        lock.release()
        if not ok:
            print(f"\n===== postgres log ({pg.log_path}) =====\n{pg.log_text()}")
        shutil.rmtree(basedir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _postgres_marker(request):
    """Tests marked @pytest.mark.postgres get the cluster, and its log lines
    written during the test are printed (shown by pytest on failure)."""
    if request.node.get_closest_marker("postgres") is None:
        yield
        return
    pg = request.getfixturevalue("postgres")
    start = pg.log_path.stat().st_size if pg.log_path.exists() else 0
    yield
    with open(pg.log_path, errors="replace") as f:
        f.seek(start)
        print(f"\n===== postgres log during test =====\n{f.read()}")


@pytest.fixture
def db(postgres):
    """A fresh database on the session cluster, dropped at teardown."""
    name = "e2e_" + uuid.uuid4().hex[:16]
    postgres.sql(f"CREATE DATABASE {name}")
    yield name
    postgres.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def gw(db, postgres, gateway_factory):
    """An h2c gateway on |db| (migrations applied before gateway.ready)."""
    url = f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/{db}"
    return gateway_factory(h2c_args("--db-url", url), name="gateway")
