"""Embedded PostgreSQL (src/store/store_embedded.c) through tests/tools/embedded_probe.c.

These tests drive the store module's embedded cluster directly through a
small probe program, compiled once per session (the gateway's own use of it
is covered by test_store.py::test_gateway_runs_its_embedded_database):

    embedded_probe STATE_DIR [PG_BIN]   -> "READY <conninfo>" | "FAILED <error>"
    SIGTERM                             -> "STOPPED", exit 0

Knobs: EMBEDDED_PROBE_BIN (use a prebuilt probe, e.g. a sanitizer build),
EMBEDDED_PROBE_CC (default gcc), PG_BIN.

Every wait is bounded; only processes started here are signalled, by PID:
the probes, and postgres servers whose working directory is one of our data
directories (they are the probes' children).
"""

import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from utils import PG_BIN, REPO_ROOT, SANITIZER_MARKERS, run, wait_until

READY_TIMEOUT = 90  # initdb with fsync plus server start
STOP_TIMEOUT = 20   # the probe stops the server with a 10 s limit
IS_ROOT = os.geteuid() == 0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (PG_BIN / "postgres").exists(), reason=f"no PostgreSQL in {PG_BIN}"),
]


def pkg_config(*args):
    return shlex.split(run(["pkg-config", *args], timeout=30).stdout)


def build_probe(out):
    cc = os.environ.get("EMBEDDED_PROBE_CC", "gcc")
    src = REPO_ROOT / "src"
    cmd = [cc, "-std=gnu11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
           "-Wmissing-prototypes", "-Wstrict-prototypes", "-Wno-unused-parameter", "-g",
           f"-I{src}", "-o", str(out),
           str(REPO_ROOT / "tests/tools/embedded_probe.c"),
           str(src / "store/store_embedded.c"),
           *sorted(str(p) for p in (src / "reactor").glob("*.c")),
           str(src / "base/base.c"),
           *pkg_config("--cflags", "--libs", "libevent", "libevent_openssl", "openssl", "libpq")]
    run(cmd, timeout=180)


@pytest.fixture(scope="session")
def emb_root():
    """A short base directory the postgres user can pass through when we are
    root (pytest's own tmp dirs are 0700 and long: the socket path must stay
    under 108 bytes)."""
    base = Path(tempfile.mkdtemp(prefix="oe-", dir="/tmp"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def probe_bin(emb_root):
    prebuilt = os.environ.get("EMBEDDED_PROBE_BIN")
    if prebuilt:
        return Path(prebuilt)
    out = emb_root / "embedded_probe"
    build_probe(out)
    out.chmod(0o755)
    return out


def server_pids(data_dir):
    """PIDs of processes working in |data_dir|: a postmaster and its children
    all chdir there."""
    want = os.path.realpath(data_dir)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") == want:
                pids.append(int(entry))
        except OSError:
            pass
    return pids


class Probe:
    def __init__(self, binary, state_dir, name, pg_bin=PG_BIN, prefix=()):
        self.state_dir = Path(state_dir)
        self.name = name
        self.out_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".out")[1])
        self.err_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".err")[1])
        self.cmd = [*prefix, str(binary), str(state_dir), str(pg_bin)]
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL)

    @property
    def data_dir(self):
        return self.state_dir / "pg" / "data"

    def out(self):
        return self.out_path.read_text()

    def err(self):
        return self.err_path.read_text()

    def wait_outcome(self, timeout=READY_TIMEOUT):
        """Returns ("READY", conninfo) or ("FAILED", error)."""
        def outcome():
            for line in self.out().splitlines():
                word, _, rest = line.partition(" ")
                if word in ("READY", "FAILED"):
                    return word, rest
            if self.proc.poll() is not None:
                return "EXITED", f"exit {self.proc.returncode} without an outcome"
            return None
        return wait_until(outcome, timeout, interval=0.05, what=f"{self.name} outcome")

    def ready(self):
        word, rest = self.wait_outcome()
        assert word == "READY", f"{self.name}: {word} {rest}\n{self.err()}"
        return rest

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM by PID, bounded wait, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.proc.kill()
                self.wait(10)
        return self.proc.returncode

    def kill9(self):
        self.proc.kill()
        self.wait(10)


@pytest.fixture
def state_dir(emb_root):
    d = Path(tempfile.mkdtemp(prefix="s", dir=emb_root))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def probes(probe_bin, state_dir):
    """probes(state_dir, **kw) starts a probe; all are stopped at teardown,
    their output is printed, and servers they left behind are killed. (It
    depends on state_dir so that it is torn down before the directory goes.)"""
    started = []

    def make(state_dir, name=None, **kw):
        p = Probe(probe_bin, state_dir, name or f"probe{len(started)}", **kw)
        started.append(p)
        return p

    yield make

    problems = []
    for p in started:
        code = p.stop()
        err = p.err()
        print(f"\n===== {p.name}: {' '.join(p.cmd)} exit={code} =====\n{p.out()}{err}")
        log = p.state_dir / "pg" / "log" / "postgresql.log"
        if log.exists():
            print(f"----- {log} (tail) -----\n" + "\n".join(log.read_text().splitlines()[-15:]))
        if any(m in err for m in SANITIZER_MARKERS):
            problems.append(f"{p.name}: sanitizer report")
        p.out_path.unlink(missing_ok=True)
        p.err_path.unlink(missing_ok=True)
    for data_dir in {p.data_dir for p in started}:
        left = server_pids(data_dir)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if left:
            print(f"killed leftover server processes {left} in {data_dir}")
    if problems:
        pytest.fail("; ".join(problems))


def psql(conninfo, sql, timeout=30):
    res = run([str(PG_BIN / "psql"), conninfo, "-X", "-Atq", "-v", "ON_ERROR_STOP=1", "-c", sql],
              timeout=timeout)
    return res.stdout.strip()


def wait_no_server(data_dir, timeout=15):
    wait_until(lambda: not server_pids(data_dir), timeout, interval=0.1,
               what=f"no server process left in {data_dir}")


def pid_gone(pid):
    """True once |pid| has no /proc entry: exited *and* reaped. A zombie
    still counts for kill(pid, 0), which is what postgres checks against
    postmaster.pid."""
    return not os.path.exists(f"/proc/{pid}")


def stop_cleanly(p):
    assert p.stop() == 0, p.err()
    assert "STOPPED" in p.out()
    wait_no_server(p.data_dir)


# ---- tests ---------------------------------------------------------------------------


def test_first_run_creates_cluster_and_serves_socket(probes, state_dir):
    p = probes(state_dir)
    conninfo = p.ready()
    pg = state_dir / "pg"

    assert conninfo == f"host={pg / 'run'} dbname=openshell user=openshell"
    assert (pg / "data" / "PG_VERSION").read_text().strip() == "15"
    assert (pg / "run" / ".s.PGSQL.5432").is_socket()
    for d in (pg, pg / "data", pg / "run", pg / "log"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    if IS_ROOT:
        owner = pwd.getpwnam("postgres").pw_uid
        for d in (pg, pg / "data", pg / "data" / "PG_VERSION", pg / "run", pg / "log"):
            assert d.stat().st_uid == owner, d
        assert state_dir.stat().st_uid == 0
        assert stat.S_IMODE(state_dir.stat().st_mode) & 0o001, "state dir needs o+x"
    err = p.err()
    assert "event=store.embedded_initdb" in err
    assert "event=store.embedded_createdb" in err
    assert "event=store.embedded_started" in err

    assert psql(conninfo, "select 1") == "1"
    assert psql(conninfo, "show listen_addresses") == ""
    assert psql(conninfo, "select current_database() || ' ' || current_user") == \
        "openshell openshell"
    pids = server_pids(p.data_dir)
    assert pids

    stop_cleanly(p)
    assert "event=store.embedded_stopped" in p.err()
    assert not (pg / "data" / "postmaster.pid").exists()


def test_second_run_reuses_cluster_and_keeps_data(probes, state_dir):
    first = probes(state_dir, name="first")
    conninfo = first.ready()
    psql(conninfo, "create table kept(v text); insert into kept values ('from run 1')")
    stop_cleanly(first)

    second = probes(state_dir, name="second")
    assert second.ready() == conninfo
    assert "store.embedded_initdb" not in second.err()
    assert "store.embedded_createdb" not in second.err()
    assert psql(conninfo, "select v from kept") == "from run 1"
    stop_cleanly(second)


def test_kill9_leaves_no_server_and_restart_handles_stale_pid(probes, state_dir):
    first = probes(state_dir, name="killed")
    conninfo = first.ready()
    psql(conninfo, "create table t(v int); insert into t values (42)")
    first.kill9()

    # die_with_parent: the postmaster gets SIGKILL with its parent, and its
    # children follow once they notice.
    try:
        wait_no_server(first.data_dir)
    except TimeoutError:
        pytest.fail("the server outlived its killed parent: die_with_parent had no effect "
                    "(the kernel clears PR_SET_PDEATHSIG on setuid, so the reactor must set "
                    "it after dropping privileges)")
    stale = first.data_dir / "postmaster.pid"
    assert stale.exists(), "expected a stale postmaster.pid"
    # The orphan is reparented to PID 1, which has to reap it: postgres
    # takes a zombie postmaster for a live one. (Some minimal inits reap
    # slowly; systemd does it at once.)
    old_pid = int(stale.read_text().split()[0])
    wait_until(lambda: pid_gone(old_pid), 30, interval=0.1, what=f"PID 1 to reap {old_pid}")

    second = probes(state_dir, name="restarted")
    assert second.ready() == conninfo
    assert psql(conninfo, "select v from t") == "42"
    stop_cleanly(second)


def test_second_server_on_same_data_dir_fails_with_log_tail(probes, state_dir):
    owner = probes(state_dir, name="owner")
    conninfo = owner.ready()

    intruder = probes(state_dir, name="intruder")
    word, err = intruder.wait_outcome()
    assert word == "FAILED"
    assert intruder.wait(STOP_TIMEOUT) == 1
    assert "during startup" in err and "already exists" in err, err
    assert "postgresql.log" in err

    assert psql(conninfo, "select 1") == "1"  # the first server is untouched
    stop_cleanly(owner)


def test_partial_data_dir_is_removed_before_initdb(probes, state_dir):
    data = state_dir / "pg" / "data"
    data.mkdir(parents=True)
    (data / "junk").write_text("left by an interrupted initdb\n")

    p = probes(state_dir)
    conninfo = p.ready()
    assert "event=store.embedded_partial_data_dir" in p.err()
    assert not (data / "junk").exists()
    assert psql(conninfo, "select 1") == "1"
    stop_cleanly(p)


def test_stop_during_initdb_then_restart_works(probes, state_dir):
    p = probes(state_dir, name="interrupted")
    wait_until(lambda: "event=store.embedded_initdb" in p.err() or p.proc.poll() is not None,
               READY_TIMEOUT, interval=0.01, what="initdb to start")
    assert p.stop() == 0, p.err()
    assert "STOPPED" in p.out() and "READY" not in p.out()
    wait_no_server(p.data_dir)

    again = probes(state_dir, name="again")
    assert psql(again.ready(), "select 1") == "1"
    stop_cleanly(again)


def test_state_dir_that_is_not_a_directory_fails(probes, emb_root):
    blocker = Path(tempfile.mkstemp(dir=emb_root)[1])
    try:
        p = probes(blocker / "state")
        word, err = p.wait_outcome()
        assert word == "FAILED"
        assert p.wait(STOP_TIMEOUT) == 1
        assert "cannot create state directory" in err and "Not a directory" in err, err
    finally:
        blocker.unlink()


def test_unwritable_state_dir_fails(probes, state_dir):
    if IS_ROOT:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) needed to run the probe unprivileged")
        state_dir.chmod(0o755)  # root's, not writable by nobody
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    else:
        state_dir.chmod(0o500)
        prefix = []
    try:
        p = probes(state_dir, prefix=prefix)
        word, err = p.wait_outcome()
        assert word == "FAILED"
        assert p.wait(STOP_TIMEOUT) == 1
        assert f"cannot create directory {state_dir}/pg: Permission denied" in err, err
    finally:
        state_dir.chmod(0o700)


@pytest.mark.skipif(not IS_ROOT, reason="checks the root-only parent check")
def test_root_parent_not_searchable_by_postgres_fails(probes, emb_root):
    closed = Path(tempfile.mkdtemp(dir=emb_root))  # 0700, root's
    try:
        p = probes(closed / "state")
        word, err = p.wait_outcome()
        assert word == "FAILED"
        assert f"cannot enter {closed} (mode 0700)" in err, err
    finally:
        shutil.rmtree(closed, ignore_errors=True)


@pytest.mark.skipif(not IS_ROOT or shutil.which("setpriv") is None,
                    reason="runs the probe as the postgres user through setpriv")
def test_non_root_runs_cluster_as_current_user(probes, state_dir):
    shutil.chown(state_dir, "postgres", "postgres")
    prefix = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
    p = probes(state_dir, prefix=prefix)
    conninfo = p.ready()
    assert "store.embedded_state_dir_mode" not in p.err()
    assert psql(conninfo, "select 1") == "1"
    stop_cleanly(p)


def test_bad_pg_bin_and_long_socket_path_fail(probes, emb_root, state_dir):
    p = probes(state_dir, name="nobin", pg_bin=emb_root / "no-such-bin")
    word, err = p.wait_outcome()
    assert word == "FAILED" and "no PostgreSQL server in" in err, err

    deep = state_dir / ("d" * 100)
    q = probes(deep, name="deep")
    word, err = q.wait_outcome()
    assert word == "FAILED" and "too long for a Unix socket" in err, err
