"""The `openshell` command-line client end to end (the agreed interface is
docs/cli.md, from /tmp/i6/cli_spec.md): every command against a real
gateway with its managed process driver and the session PostgreSQL, table
and `-o json` output parsed here, exit codes and one-line errors, TLS and
mTLS with explicit files, environment variables and the local bundle
directory, and the event watcher's resume file and reconnects.

Most tests share one gateway (module scope, its own database) and one READY
sandbox created through gRPC, so a broken `sandbox create` does not hide
the exec, logs and connect results. Tests that need a gateway of their own
(TLS, a restart) get one from gateway_factory. Every client run is bounded;
at the end no process of this module's sandboxes may remain.
"""

import hashlib
import json
import os
import re
import select
import shlex
import signal
import stat
import subprocess
import termios
import time
import uuid

import grpc
import pytest

from cli_util import (
    CLI_BIN,
    EXIT_ALREADY_EXISTS,
    EXIT_DEADLINE,
    EXIT_FAILED_PRECONDITION,
    EXIT_INVALID_ARGUMENT,
    EXIT_LOCAL,
    EXIT_NOT_FOUND,
    EXIT_PERMISSION_DENIED,
    EXIT_UNAUTHENTICATED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Cli,
    key_values,
    require_cli,
    table_rows,
    unwrap,
)
from drivers_fixtures import Api, _drivers_stopper, _leaks, db_url, env, new_token  # noqa: F401
from drivers_util import kill_pids, procs_matching
from relay_util import (
    bearer,
    create_sandbox,
    jwt_with_flipped_signature,
    sandbox_token,
    wait_phase,
)
from utils import SANITIZER_MARKERS, Gateway, PortLock, h2c_args, wait_until

pytestmark = pytest.mark.postgres

SSH = "/usr/bin/ssh"
READY_WAIT = 30.0
WAIT = 20.0
PHASE_RE = re.compile(r"^sandbox (\S+): ([A-Z_]+)\b(.*)$")
INTERRUPTED = (0, 130, -signal.SIGINT)  # what a Ctrl-C'd follower may exit with


# ---------------------------------------------------------------------------
# the shared gateway


class Shared:
    """One gateway (h2c, managed process driver, own database) for the
    module: .gw, .api (gRPC, for setting up and checking), .cli (the client
    pointed at it), .sql(query) on its database. track() records sandbox
    ids and the unique `sleep` arguments for the final leak check."""

    def __init__(self, gw, api, cli, postgres, dbname, pb):
        self.gw, self.api, self.cli, self.pb = gw, api, cli, pb
        self.postgres, self.dbname = postgres, dbname
        self.tokens, self.ids = [], []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.gw.port}"

    def sql(self, q):
        return self.postgres.sql(q, dbname=self.dbname).strip()

    def track(self, sid=None, token=None):
        if sid:
            self.ids.append(sid)
        if token:
            self.tokens.append(token)

    def command(self):
        """A sandbox command ending in a unique sleep (tracked)."""
        token = new_token()
        self.track(token=token)
        return ["/bin/sh", "-c", f"sleep {token}"]

    def sid(self, name, workspace=""):
        sb = self.api.GetSandbox(name=name, workspace=workspace).sandbox
        self.track(sid=sb.metadata.id)
        return sb.metadata.id

    def wait_gone(self, name, workspace="", timeout=WAIT):
        def gone():
            try:
                self.api.GetSandbox(name=name, workspace=workspace)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND, e
                return True
            return False
        wait_until(gone, timeout, interval=0.1, what=f"sandbox {name} gone")


@pytest.fixture(scope="module")
def shared(tmp_path_factory, postgres, stubs):
    require_cli()
    dbname = "cli_" + uuid.uuid4().hex[:16]
    postgres.sql(f"CREATE DATABASE {dbname}")
    url = f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/{dbname}"
    workdir = tmp_path_factory.mktemp("cli-gw")
    gw = Gateway(workdir / "gateway", name="gateway")
    ch = None
    s = None
    problems = []
    try:
        gw.start(h2c_args("--db-url", url))
        ch = gw.channel()
        s = Shared(gw, Api(stubs, ch), Cli(workdir / "home", ["-g", f"http://127.0.0.1:{gw.port}"]),
                   postgres, dbname, stubs.openshell_pb2)
        yield s
    finally:
        if ch is not None:
            ch.close()
        was_running = gw.running
        code = gw.stop()
        text = gw.log_text()
        print(f"\n===== shared gateway log ({gw.log_path}) exit={code} =====\n{text[-20000:]}")
        if was_running and code != 0:
            problems.append(f"shared gateway: exit code {code} on SIGTERM")
        if any(m in text for m in SANITIZER_MARKERS):
            problems.append("shared gateway: sanitizer report in log")
        if s is not None:
            def leftovers():
                return procs_matching(tokens=s.tokens + s.ids, dirs=[gw.workdir])
            try:
                wait_until(lambda: not leftovers(), 10, interval=0.1, what="no sandbox process")
            except TimeoutError:
                left = leftovers()
                kill_pids(left)
                problems.append(f"sandbox processes survived the gateway (killed now): {left}")
        postgres.sql(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture(scope="module")
def box(shared):
    """(name, id) of one READY sandbox, created through gRPC."""
    name = "cli-box"
    sb = create_sandbox(shared, shared.api, name)
    wait_phase(shared.api, name, "READY", READY_WAIT)
    return name, sb.metadata.id


@pytest.fixture
def dead_url():
    """An http:// URL on a loopback port where nothing listens."""
    lock = PortLock()
    yield f"http://127.0.0.1:{lock.port}"
    lock.release()


def one_line_error(res, *needles):
    """stderr of a failed run is one line starting with "openshell:" that
    contains every needle."""
    assert res.code != 0, res
    assert len(res.err_lines) == 1, f"want exactly one stderr line: {res}"
    line = res.err_lines[0]
    assert line.startswith("openshell:"), res
    for n in needles:
        assert n in line, f"{n!r} not in the error line: {res}"
    return line


def usage_error(res, *needles):
    """A usage error: exit 2, the one-line error (naming |needles|) and at
    most one more line, the `try 'openshell ... --help'` hint."""
    assert res.code == EXIT_USAGE, res
    assert 1 <= len(res.err_lines) <= 2, res
    assert res.err_lines[0].startswith("openshell:"), res
    assert "--help" in res.stderr, res
    for n in needles:
        assert n in res.err_lines[0], f"{n!r} not in the error line: {res}"
    assert res.stdout == "", res


def phase_of(cli, name, *pre):
    """The phase name (READY, ...) from `get -o json`, or None if gone."""
    res = cli(*pre, "-o", "json", "sandbox", "get", name)
    if res.code == EXIT_NOT_FOUND:
        return None
    assert res.code == 0, res
    ph = res.json()["sandbox"].get("status", {}).get("phase", "SANDBOX_PHASE_UNSPECIFIED")
    return ph.replace("SANDBOX_PHASE_", "")


def wait_cli_phase(cli, name, want, timeout=READY_WAIT, pre=()):
    last = [None]

    def check():
        last[0] = phase_of(cli, name, *pre)
        return last[0] == want
    try:
        wait_until(check, timeout, interval=0.2, what=f"{name} {want}")
    except TimeoutError:
        raise AssertionError(f"sandbox {name}: phase {last[0]}, not {want}, "
                             f"after {timeout}s (seen through `sandbox get`)") from None


def progress_lines(res, name):
    """The plain `sandbox NAME: PHASE (reason)` lines of a non-TTY --wait;
    every stderr line must be one."""
    phases = []
    for line in res.err_lines:
        m = PHASE_RE.match(line)
        assert m and m.group(1) == name, f"unexpected stderr line {line!r}: {res}"
        phases.append(m.group(2))
    assert "\r" not in res.stderr and "\x1b" not in res.stderr, res
    return phases


# ---------------------------------------------------------------------------
# no gateway needed


def test_version_and_help(tmp_path):
    cli = Cli(tmp_path)
    res = cli.ok("--version")
    assert res.stdout.strip(), res
    res = cli.ok("--help")
    for word in ("sandbox", "events", "workspace", "gateway", "--gateway", "--output"):
        assert word in res.stdout, (word, res)
    res = cli.ok("sandbox", "--help")
    for word in ("create", "list", "exec", "connect", "logs"):
        assert word in res.stdout, (word, res)


@pytest.mark.parametrize("args,needle", [
    (["frobnicate"], "frobnicate"),
    (["sandbox", "frob"], "frob"),
    (["sandbox", "list", "--bogus"], "--bogus"),
    (["--bogus-global", "gateway", "info"], "--bogus-global"),
    (["sandbox", "get"], ""),
    (["sandbox", "list", "--limit", "abc"], "--limit"),
    (["-o", "yaml", "sandbox", "list"], "yaml"),
    (["sandbox", "exec", "somebox"], ""),
    (["sandbox", "create", "--label", "novalue"], "--label"),
    (["workspace", "member", "add", "ws"], ""),
    (["workspace", "member", "add", "ws", "alice", "--role", "boss"], "--role"),
    (["events", "watch", "--after", "-1"], "--after"),
    (["events", "watch", "--workspace", "a", "--all-workspaces"], ""),
    (["ssh-proxy", "--sandbox-id", "x"], "--token"),
])
def test_usage_errors(tmp_path, dead_url, args, needle):
    # Against an endpoint where nothing listens: a usage error is found
    # before any connection is tried (else this would exit 24).
    res = Cli(tmp_path, ["-g", dead_url])(*args)
    usage_error(res, *([needle] if needle else []))


def test_gateway_down(tmp_path, dead_url):
    cli = Cli(tmp_path)
    res = cli("-g", dead_url, "gateway", "info")
    assert res.code == EXIT_UNAVAILABLE, res
    one_line_error(res, dead_url.replace("http://", ""))
    # The same through the environment variable, and for another command.
    res = cli("sandbox", "list", env={"OPENSHELL_GATEWAY_ENDPOINT": dead_url})
    assert res.code == EXIT_UNAVAILABLE, res
    one_line_error(res, dead_url.replace("http://", ""))
    # A Unix socket that does not exist.
    sock = tmp_path / "nothing-here.sock"
    res = cli("-g", f"unix:{sock}", "gateway", "info")
    assert res.code == EXIT_UNAVAILABLE, res
    one_line_error(res, str(sock))


# ---------------------------------------------------------------------------
# gateway info, endpoint from the environment


def test_gateway_info(shared):
    info = shared.api.GetGatewayInfo()
    res = shared.cli.ok("gateway", "info")
    assert info.gateway_version in res.stdout, res
    assert "process" in res.stdout, res
    doc = shared.cli.json("gateway", "info")
    assert doc["status"] == "SERVICE_STATUS_HEALTHY", doc
    assert doc["gatewayVersion"] == info.gateway_version, doc
    assert [d["name"] for d in doc["computeDrivers"]] == ["process"], doc
    assert doc["computeDrivers"][0]["capabilities"]["driverName"], doc


def test_endpoint_and_output_from_environment(shared, dead_url):
    bare = shared.cli.with_options(replace=True)
    endpoint = {"OPENSHELL_GATEWAY_ENDPOINT": shared.url}
    res = bare.ok("gateway", "info", env=endpoint)
    assert "process" in res.stdout, res
    res = bare.ok("gateway", "info", env=dict(endpoint, OPENSHELL_OUTPUT="json"))
    assert json.loads(res.stdout)["computeDrivers"][0]["name"] == "process", res
    # -g wins over the environment.
    res = bare.ok("-g", shared.url, "gateway", "info",
                  env={"OPENSHELL_GATEWAY_ENDPOINT": dead_url})
    assert "process" in res.stdout, res


# ---------------------------------------------------------------------------
# errors from the gateway


@pytest.mark.parametrize("args", [
    ["sandbox", "get", "{n}"],
    ["sandbox", "delete", "{n}"],
    ["sandbox", "stop", "{n}"],
    ["sandbox", "start", "{n}"],
    ["sandbox", "exec", "{n}", "--", "true"],
    ["sandbox", "connect", "{n}", "--", "true"],
    ["sandbox", "logs", "{n}"],
    ["workspace", "delete", "{n}"],
    ["workspace", "member", "list", "{n}"],
])
def test_unknown_names_exit_15(shared, args):
    name = "nope-" + uuid.uuid4().hex[:8]
    res = shared.cli(*[a.format(n=name) for a in args])
    assert res.code == EXIT_NOT_FOUND, res
    one_line_error(res, name)
    assert res.stdout == "", res


def test_sandbox_token_and_forged_token(shared, box):
    name, sid = box
    token = sandbox_token(shared.gw, sid)
    res = shared.cli("--token", token, "sandbox", "list")
    assert res.code == EXIT_PERMISSION_DENIED, res
    one_line_error(res, "PERMISSION_DENIED")
    res = shared.cli("sandbox", "get", name, env={"OPENSHELL_TOKEN": token})
    assert res.code == EXIT_PERMISSION_DENIED, res
    one_line_error(res)
    res = shared.cli("--token", jwt_with_flipped_signature(token), "sandbox", "list")
    assert res.code == EXIT_UNAUTHENTICATED, res
    one_line_error(res, "UNAUTHENTICATED")


# ---------------------------------------------------------------------------
# sandbox create / list / get / stop / start / delete


def test_sandbox_lifecycle(shared):
    cli = shared.cli
    name = "cli-life"
    command = shared.command()
    res = cli.ok("sandbox", "create", "--name", name, "--label", "team=life-blue",
                 "--label", "tier=gold", "--env", "FOO=bar baz", "--env", "EMPTY=",
                 "--", *command)
    kv = key_values(res.stdout)
    assert kv.get("name") == name, res
    sid = shared.sid(name)
    assert kv.get("id") == sid, res
    assert res.stderr == "", res

    sb = shared.api.GetSandbox(name=name).sandbox
    assert dict(sb.metadata.labels) == {"team": "life-blue", "tier": "gold"}, sb.metadata
    assert dict(sb.spec.environment) == {"FOO": "bar baz", "EMPTY": ""}, sb.spec
    assert list(sb.spec.command) == command, sb.spec

    wait_cli_phase(cli, name, "READY")

    # get: key: value lines, and the JSON form of GetSandbox's response.
    kv = key_values(cli.ok("sandbox", "get", name).stdout)
    assert kv.get("name") == name and kv.get("id") == sid, kv
    assert kv.get("phase") == "READY", kv
    doc = cli.json("sandbox", "get", name)["sandbox"]
    assert doc["metadata"]["name"] == name and doc["metadata"]["id"] == sid, doc
    assert doc["metadata"]["labels"] == {"team": "life-blue", "tier": "gold"}, doc
    assert isinstance(doc["metadata"]["createdAtMs"], str), doc  # int64 as a string
    assert int(doc["metadata"]["createdAtMs"]) == sb.metadata.created_at_ms, doc
    assert doc["spec"]["environment"] == {"FOO": "bar baz", "EMPTY": ""}, doc
    assert doc["status"]["phase"] == "SANDBOX_PHASE_READY", doc
    # The environment reaches the sandbox.
    res = cli.ok("sandbox", "exec", name, "--", "sh", "-c", 'printf "%s|%s" "$FOO" "$EMPTY"')
    assert res.stdout == "bar baz|", res

    # list: header and a row; JSON; selector; limit.
    res = cli.ok("sandbox", "list")
    header, rows = table_rows(res.stdout)
    assert header[:5] == ["NAME", "ID", "PHASE", "WORKSPACE", "CREATED"], res
    mine = [r for r in rows if r[0] == name]
    assert len(mine) == 1 and mine[0][1] == sid and mine[0][2] == "READY", res
    assert mine[0][3] in ("default", ""), res
    listed = cli.json("sandbox", "list")["sandboxes"]
    assert name in [s["metadata"]["name"] for s in listed], listed
    res = cli.ok("sandbox", "list", "--selector", "team=life-blue")
    assert [r[0] for r in table_rows(res.stdout)[1]] == [name], res
    doc = cli.json("sandbox", "list", "--selector", "team=life-blue,tier=gold")
    assert [s["metadata"]["name"] for s in doc["sandboxes"]] == [name], doc
    doc = cli.json("sandbox", "list", "--selector", "team=nobody")
    assert doc.get("sandboxes", []) == [], doc  # default values are omitted: {}
    assert len(shared.api.ListSandboxes(limit=100).sandboxes) >= 2  # cli-life and cli-box
    doc = cli.json("sandbox", "list", "--limit", "1")
    assert len(doc["sandboxes"]) == 1, doc

    # stop, then start --wait.
    res = cli.ok("sandbox", "stop", name)
    wait_cli_phase(cli, name, "STOPPED")
    res = cli("sandbox", "start", name, "--wait", timeout=READY_WAIT + 30)
    assert res.code == 0, res
    phases = progress_lines(res, name)
    assert phases and phases[-1] == "READY", res
    assert key_values(res.stdout).get("phase") == "READY", res

    # delete: one line naming the sandbox; gone afterwards.
    res = cli.ok("sandbox", "delete", name)
    assert len(res.out_lines) == 1 and name in res.stdout, res
    shared.wait_gone(name)
    res = cli("sandbox", "get", name)
    assert res.code == EXIT_NOT_FOUND, res


def test_create_wait_plain(shared):
    cli = shared.cli
    name = "cli-wait"
    res = cli("sandbox", "create", "--name", name, "--wait", "--", *shared.command(),
              timeout=READY_WAIT + 30)
    shared.sid(name)
    assert res.code == 0, res
    phases = progress_lines(res, name)
    assert phases and phases[-1] == "READY", res
    assert all(a != b for a, b in zip(res.err_lines, res.err_lines[1:])), \
        f"the same transition printed twice: {res}"
    assert key_values(res.stdout).get("phase") == "READY", res
    assert shared.api.GetSandbox(name=name).sandbox.status.phase == shared.pb.SandboxPhase.Value(
        "SANDBOX_PHASE_READY")

    # With -o json: plain progress lines on stderr, the final record as JSON.
    name2 = "cli-wait-json"
    res = cli("-o", "json", "sandbox", "create", "--name", name2, "--wait", "--",
              *shared.command(), timeout=READY_WAIT + 30)
    shared.sid(name2)
    assert res.code == 0, res
    phases = progress_lines(res, name2)
    assert phases and phases[-1] == "READY", res
    assert res.json()["sandbox"]["status"]["phase"] == "SANDBOX_PHASE_READY", res

    cli.ok("sandbox", "delete", name, name2)
    shared.wait_gone(name)
    shared.wait_gone(name2)


def test_create_wait_timeout(env, tmp_path):
    """With a driver that runs no supervisor the sandbox never becomes
    READY: --wait gives up after --wait-timeout with exit 14."""
    drv = env.fake_driver(name="mydrv")
    gw = env.gateway("--drivers", "mydrv", "--compute-driver-socket", drv.socket)
    cli = Cli(tmp_path / "home", ["-g", f"http://127.0.0.1:{gw.port}"])
    t0 = time.monotonic()
    res = cli("sandbox", "create", "--name", "never-ready", "--wait", "--wait-timeout", "2",
              "--", "sleep", "600", timeout=30)
    took = time.monotonic() - t0
    assert res.code == EXIT_DEADLINE, res
    assert 1.5 <= took < 15, (took, res)
    assert res.err_lines, res
    for line in res.err_lines[:-1]:
        assert PHASE_RE.match(line), res
    assert res.err_lines[-1].startswith("openshell:"), res
    assert "never-ready" in res.err_lines[-1] or "DEADLINE" in res.err_lines[-1], res
    sb = env.api(gw).GetSandbox(name="never-ready").sandbox
    env.track(sid=sb.metadata.id)
    assert sb.status.phase == env.pb.SandboxPhase.Value("SANDBOX_PHASE_PROVISIONING"), sb.status


def test_create_wait_on_a_terminal(shared):
    name = "cli-tty"
    res = shared.cli.pty("sandbox", "create", "--name", name, "--wait", "--", *shared.command(),
                         timeout=READY_WAIT + 30)
    shared.sid(name)
    assert res.code == 0, res
    out = res.output
    assert name.encode() in out and b"READY" in out, res
    # One updating line: carriage returns and clear-to-end-of-line.
    assert b"\r" in out.replace(b"\r\n", b""), res
    assert re.search(rb"\x1b\[0?K", out), res
    shared.cli.ok("sandbox", "delete", name)
    shared.wait_gone(name)


def test_driver_config_json(shared, tmp_path):
    cli = shared.cli
    # Only the block keyed by the active driver is forwarded: the docker
    # block (which the process driver would reject) is ignored.
    envelope = {"process": {"hostname": "cli-host"}, "docker": {"bogus": [1, {"x": None}]}}
    name = "cli-cfg"
    res = cli("sandbox", "create", "--name", name, "--driver-config-json", json.dumps(envelope),
              "--wait", "--", *shared.command(), timeout=READY_WAIT + 30)
    shared.sid(name)
    assert res.code == 0, res
    doc = cli.json("sandbox", "get", name)["sandbox"]
    assert doc["spec"]["template"]["driverConfig"] == envelope, doc  # Struct as plain JSON
    res = cli.ok("sandbox", "exec", name, "--", "hostname")
    assert res.stdout == "cli-host\n", res
    cli.ok("sandbox", "delete", name)

    # @FILE: a block the process driver rejects -> INVALID_ARGUMENT from the
    # gateway (exit 13), nothing created.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"process": {"bogus": 1}}))
    res = cli("sandbox", "create", "--name", "cli-cfg-bad", "--driver-config-json", f"@{bad}",
              "--", *shared.command())
    assert res.code == EXIT_INVALID_ARGUMENT, res
    one_line_error(res, "driver_config.bogus")
    assert cli("sandbox", "get", "cli-cfg-bad").code == EXIT_NOT_FOUND

    # @FILE with a good block.
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"process": {"hostname": "from-file"}}, indent=2) + "\n")
    name2 = "cli-cfg-file"
    res = cli("sandbox", "create", "--name", name2, "--driver-config-json", f"@{good}",
              "--wait", "--", *shared.command(), timeout=READY_WAIT + 30)
    shared.sid(name2)
    assert res.code == 0, res
    assert cli.ok("sandbox", "exec", name2, "--", "hostname").stdout == "from-file\n"
    cli.ok("sandbox", "delete", name2)

    # Local errors: invalid JSON and a non-object are usage errors naming
    # the option; an unreadable file is a local failure.
    for value in ('{"process": ', "[1, 2]", '"text"', "{} trailing"):
        res = cli("sandbox", "create", "--name", "cli-cfg-x", "--driver-config-json", value,
                  "--", "true")
        usage_error(res, "--driver-config-json")
    missing = tmp_path / "missing.json"
    res = cli("sandbox", "create", "--name", "cli-cfg-x", "--driver-config-json", f"@{missing}",
              "--", "true")
    assert res.code == EXIT_LOCAL, res
    one_line_error(res, str(missing))
    assert cli("sandbox", "get", "cli-cfg-x").code == EXIT_NOT_FOUND
    shared.wait_gone(name)
    shared.wait_gone(name2)


# ---------------------------------------------------------------------------
# exec


def test_exec(shared, box):
    cli = shared.cli
    name, _ = box
    res = cli("sandbox", "exec", name, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (res.code, res.stdout, res.stderr) == (3, "out\n", "err\n"), res
    res = cli.ok("sandbox", "exec", name, "--workdir", "/tmp", "--", "pwd")
    assert res.stdout == "/tmp\n", res
    res = cli.ok("sandbox", "exec", name, "--env", "A=1 2", "--env", "B=x=y", "--", "sh", "-c",
                 'printf "%s|%s" "$A" "$B"')
    assert res.stdout == "1 2|x=y", res
    # Arguments reach the command as they are.
    res = cli.ok("sandbox", "exec", name, "--", "printf", "%s\\n", "a b", "c'd", "$HOME")
    assert res.stdout == "a b\nc'd\n$HOME\n", res
    # Without -i stdin is not read: cat sees nothing.
    res = cli.ok("sandbox", "exec", name, "--", "cat", input="not sent\n")
    assert res.stdout == "", res
    # -i streams stdin, EOF half-closes.
    data = "line one\nline two\n" + "x" * 100000 + "\nno newline"
    res = cli.ok("sandbox", "exec", name, "-i", "--", "cat", input=data)
    assert res.stdout == data, (len(res.stdout), res.stderr)
    res = cli("sandbox", "exec", name, "--stdin", "--", "sh", "-c", "wc -c; exit 7", input="abc")
    assert (res.code, res.stdout.strip()) == (7, "3"), res


def test_exec_tty(shared, box):
    name, _ = box
    res = shared.cli.pty("sandbox", "exec", name, "-t", "--", "sh", "-c",
                         "[ -t 0 ] && [ -t 1 ] && echo tty-yes; exit 5", keep_slave=True)
    assert res.code == 5, res
    assert b"tty-yes" in res.output, res
    # The local terminal is back in its original mode afterwards.
    lflag = 3
    assert res.termios_after[lflag] & (termios.ICANON | termios.ECHO) == \
        res.termios_before[lflag] & (termios.ICANON | termios.ECHO), res
    assert res.termios_after == res.termios_before, res


# ---------------------------------------------------------------------------
# connect and ssh-proxy


def write_ssh_wrapper(tmp_path):
    """An OPENSHELL_SSH that records its argv (one per line, JSON) and runs
    the real ssh."""
    rec = tmp_path / "ssh-argv.json"
    wrapper = tmp_path / "ssh-wrapper"
    wrapper.write_text(
        "#!/usr/bin/python3\n"
        "import json, os, sys\n"
        f"open({str(rec)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        f"os.execv({SSH!r}, [{SSH!r}] + sys.argv[1:])\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper, rec


def option_values(argv, name):
    """Values of `-o NAME=VALUE` / `-oNAME=VALUE` options in an ssh argv."""
    out = []
    for i, a in enumerate(argv):
        opt = argv[i + 1] if a == "-o" and i + 1 < len(argv) else (a[2:] if a.startswith("-o")
                                                                     and a != "-o" else None)
        if opt and "=" in opt and opt.split("=", 1)[0].lower() == name.lower():
            out.append(opt.split("=", 1)[1])
        elif opt and " " in opt and opt.split(" ", 1)[0].lower() == name.lower():
            out.append(opt.split(" ", 1)[1])
    return out


def test_connect(shared, box, tmp_path):
    if not os.path.exists(SSH):
        pytest.skip(f"{SSH} is missing (apt-get install openssh-client): connect runs the "
                    "system ssh")
    name, sid = box
    cli = shared.cli
    res = cli("sandbox", "connect", name, "--", "echo", "hi", timeout=90)
    assert (res.code, res.stdout) == (0, "hi\n"), res

    wrapper, rec = write_ssh_wrapper(tmp_path)
    res = cli("sandbox", "connect", name, "--", "sh", "-c", "echo to-err >&2; exit 4",
              env={"OPENSHELL_SSH": wrapper}, timeout=90)
    assert res.code == 4, res
    assert "to-err" in res.stderr, res
    argv = json.loads(rec.read_text())
    assert "-T" in argv and "-tt" not in argv, argv
    assert f"sandbox@openshell-{name}" in argv or (
        "-l" in argv and argv[argv.index("-l") + 1] == "sandbox" and f"openshell-{name}" in argv
    ), argv
    for opt, want in (("StrictHostKeyChecking", "no"), ("UserKnownHostsFile", "/dev/null")):
        assert option_values(argv, opt) == [want], (opt, argv)
    proxy = option_values(argv, "ProxyCommand")
    assert len(proxy) == 1, argv
    words = shlex.split(proxy[0])
    assert os.path.realpath(words[0]) == os.path.realpath(CLI_BIN), words
    assert "ssh-proxy" in words, words
    assert words[words.index("--sandbox-id") + 1] == sid, words
    token = words[words.index("--token") + 1]
    assert shared.url in words or f"127.0.0.1:{shared.gw.port}" in proxy[0], words
    # The session token was revoked once ssh finished.
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert shared.sql(f"SELECT revoked_at IS NOT NULL FROM ssh_sessions "
                      f"WHERE token_sha256 = '{digest}'") == "t"

    # The recorded ProxyCommand with the revoked token now fails, in one line.
    res = subprocess.run(words, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=30, env=cli.env)
    assert res.returncode == EXIT_UNAUTHENTICATED, res
    assert len([l for l in res.stderr.splitlines() if l.strip()]) == 1, res.stderr
    assert res.stdout == "", res


def test_connect_interactive_shell(shared, box, tmp_path):
    """On a terminal, connect gives ssh -tt and a remote shell: a command
    typed in runs there and the shell's exit status comes back."""
    if not os.path.exists(SSH):
        pytest.skip(f"{SSH} is missing (apt-get install openssh-client): connect runs the "
                    "system ssh")
    name, _ = box
    wrapper, rec = write_ssh_wrapper(tmp_path)
    res = shared.cli.pty("sandbox", "connect", name, env={"OPENSHELL_SSH": wrapper},
                         input=b"echo marker-$((40+2)); exit 6\r", timeout=90, keep_slave=True)
    assert res.code == 6, res
    assert b"marker-42" in res.output, res
    argv = json.loads(rec.read_text())
    assert "-tt" in argv and "-T" not in argv, argv
    assert res.termios_after == res.termios_before, res


def test_ssh_proxy(shared, box):
    name, sid = box
    cli = shared.cli
    token = shared.api.CreateSshSession(sandbox_id=sid).token
    # A good token: the sandbox's SSH server greets through the proxy; EOF
    # on stdin half-closes and the proxy exits 0 when the stream ends.
    p = subprocess.Popen(cli.cmd("ssh-proxy", "--sandbox-id", sid, "--token", token),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=cli.env)
    try:
        p.stdin.write(b"SSH-2.0-OpenSSH_9.2 e2e\r\n")
        p.stdin.flush()
        banner = b""
        deadline = time.monotonic() + 30
        while b"\n" not in banner and time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.1)
            if r:
                chunk = os.read(p.stdout.fileno(), 4096)
                if not chunk:
                    break
                banner += chunk
        assert banner.startswith(b"SSH-2.0-"), (banner, p.poll())
        p.stdin.close()
        p.stdin = None
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, (p.returncode, err)
        assert len(err.splitlines()) == 0, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    shared.api.RevokeSshSession(token=token)

    res = cli("ssh-proxy", "--sandbox-id", sid, "--token", "not-a-real-token")
    assert res.code == EXIT_UNAUTHENTICATED, res
    one_line_error(res)
    assert res.stdout == "", res


# ---------------------------------------------------------------------------
# logs


def push_logs(shared, sid, lines):
    pb = shared.pb
    token = sandbox_token(shared.gw, sid)
    now = int(time.time() * 1000)
    batch = pb.PushSandboxLogsRequest(sandbox_id=sid, logs=[
        pb.SandboxLogLine(timestamp_ms=now + i, level=level, target="e2e", message=msg,
                          source="sandbox")
        for i, (level, msg) in enumerate(lines)])
    shared.api.stub.PushSandboxLogs(iter([batch]), metadata=bearer(token), timeout=15)


def log_messages(objs):
    return [unwrap(o, "log").get("message") for o in objs]


def test_logs(shared, box):
    cli = shared.cli
    name, sid = box
    tag = uuid.uuid4().hex[:6]
    mine = [("INFO", f"cli-log-{tag}-1"), ("WARN", f"cli-log-{tag}-2"),
            ("ERROR", f"cli-log-{tag}-3"), ("INFO", f"cli-log-{tag}-4"),
            ("DEBUG", f"cli-log-{tag}-5")]
    push_logs(shared, sid, mine)
    want = [m for _, m in mine]

    def grpc_messages(**kw):
        return [l.message for l in shared.api.GetSandboxLogs(sandbox_id=sid, **kw).logs]

    # JSON lines, one per log line, in order.
    res = cli.ok("-o", "json", "sandbox", "logs", name, "--tail", "1000")
    objs = res.json_lines()
    got = log_messages(objs)
    assert [m for m in got if m in want] == want, res
    assert got == grpc_messages(lines=1000), res
    o = [unwrap(x, "log") for x in objs if unwrap(x, "log").get("message") == want[2]][0]
    assert o["level"] == "ERROR" and o["source"] == "sandbox", o
    assert isinstance(o["timestampMs"], str), o
    # --tail, --source and --level against the gateway's own answer.
    res = cli.ok("-o", "json", "sandbox", "logs", name, "--tail", "3", "--source", "sandbox")
    assert log_messages(res.json_lines()) == grpc_messages(lines=3, sources=["sandbox"]), res
    res = cli.ok("-o", "json", "sandbox", "logs", name, "--tail", "1000", "--level", "warn")
    assert log_messages(res.json_lines()) == grpc_messages(lines=1000, min_level="warn"), res
    assert want[1] in log_messages(res.json_lines())
    assert want[0] not in log_messages(res.json_lines())
    # Table: one line per log line with its level, source and message.
    res = cli.ok("sandbox", "logs", name, "--tail", "1000", "--source", "sandbox")
    for level, msg in mine:
        line = [l for l in res.out_lines if l.endswith(msg)]
        assert len(line) == 1, (msg, res)
        assert level in line[0].split() and "sandbox" in line[0].split(), line

    # -f: history first, then new lines as they arrive, until interrupted.
    s = cli.stream("-o", "json", "sandbox", "logs", name, "-f", "--tail", "5", "--source", "sandbox")
    try:
        s.wait_for(lambda lines: any(want[-1] in l for l in lines), "the last history line")
        follow = f"cli-follow-{tag}"
        push_logs(shared, sid, [("INFO", follow)])
        s.wait_for(lambda lines: any(follow in l for l in lines), "a line pushed while following")
        code = s.interrupt()
        assert code in INTERRUPTED, s.summary()
        objs = [json.loads(l) for l in s.out if l.strip()]
        assert log_messages(objs).count(follow) == 1, s.summary()
    finally:
        s.kill()


# ---------------------------------------------------------------------------
# workspaces and members


def test_workspaces_and_members(shared):
    cli = shared.cli
    ws = "cli-ws"
    res = cli.ok("workspace", "create", ws)
    assert ws in res.stdout, res
    res = cli("workspace", "create", ws)
    assert res.code == EXIT_ALREADY_EXISTS, res
    one_line_error(res, ws)

    header, rows = table_rows(cli.ok("workspace", "list").stdout)
    assert header and header[0] == "NAME", header
    assert {"default", ws} <= {r[0] for r in rows}, rows
    doc = cli.json("workspace", "list")
    assert {"default", ws} <= {w["metadata"]["name"] for w in doc["workspaces"]}, doc

    cli.ok("workspace", "member", "add", ws, "alice")
    cli.ok("workspace", "member", "add", ws, "bob", "--role", "admin")
    res = cli.ok("workspace", "member", "list", ws)
    header, rows = table_rows(res.stdout)
    by_subject = {r[0]: [c.lower() for c in r] for r in rows}
    assert set(by_subject) == {"alice", "bob"}, res
    assert "user" in " ".join(by_subject["alice"]) and "admin" in " ".join(by_subject["bob"]), res
    doc = cli.json("workspace", "member", "list", ws)
    roles = {m["principalSubject"]: m["role"] for m in doc["members"]}
    assert roles == {"alice": "WORKSPACE_ROLE_USER", "bob": "WORKSPACE_ROLE_ADMIN"}, doc
    res = cli.ok("workspace", "member", "remove", ws, "alice")
    assert len(res.out_lines) == 1 and "alice" in res.stdout, res
    doc = cli.json("workspace", "member", "list", ws)
    assert [m["principalSubject"] for m in doc["members"]] == ["bob"], doc

    # Sandboxes in the workspace: -w scopes create/get/list.
    name = "cli-in-ws"
    cli.ok("-w", ws, "sandbox", "create", "--name", name, "--", *shared.command())
    shared.sid(name, workspace=ws)
    assert cli("sandbox", "get", name).code == EXIT_NOT_FOUND
    assert key_values(cli.ok("-w", ws, "sandbox", "get", name).stdout).get("name") == name
    res = cli.ok("sandbox", "get", name, env={"OPENSHELL_WORKSPACE": ws})
    assert key_values(res.stdout).get("workspace") == ws, res
    names = [s["metadata"]["name"] for s in cli.json("sandbox", "list").get("sandboxes", [])]
    assert name not in names
    doc = cli.json("sandbox", "list", "--all-workspaces")
    assert {(s["metadata"]["name"], s["metadata"].get("workspace")) for s in doc["sandboxes"]} >= {
        (name, ws)}, doc
    header, rows = table_rows(cli.ok("sandbox", "list", "--all-workspaces").stdout)
    assert [r[3] for r in rows if r[0] == name] == [ws], rows
    # The workspace cannot go while the sandbox remains.
    res = cli("workspace", "delete", ws)
    assert res.code == EXIT_FAILED_PRECONDITION, res
    one_line_error(res)
    cli.ok("-w", ws, "sandbox", "delete", name)
    shared.wait_gone(name, workspace=ws)
    res = cli.ok("workspace", "delete", ws)
    assert len(res.out_lines) == 1 and ws in res.stdout, res
    doc = cli.json("workspace", "list")
    assert ws not in {w["metadata"]["name"] for w in doc["workspaces"]}, doc
    res = cli("workspace", "delete", ws)
    assert res.code == EXIT_NOT_FOUND, res


# ---------------------------------------------------------------------------
# events watch


def event_objs(res):
    """Lifecycle events from JSON lines (CaughtUp markers dropped)."""
    out = []
    for o in res.json_lines():
        if "caughtUp" in o:
            continue
        o = unwrap(o, "event")
        assert isinstance(o.get("sequence"), str), o  # uint64 as a string
        out.append(o)
    return out


def seqs(events):
    return [int(e["sequence"]) for e in events]


def test_events_watch(shared, tmp_path):
    cli = shared.cli
    ws = "cli-ev"
    cli.ok("workspace", "create", ws)
    name = "cli-ev-box"
    cli.ok("-w", ws, "sandbox", "create", "--name", name, "--label", "evsel=yes", "--",
           *shared.command())
    shared.sid(name, workspace=ws)
    wait_until(lambda: shared.api.GetSandbox(name=name, workspace=ws).sandbox.status.phase
               == shared.pb.SandboxPhase.Value("SANDBOX_PHASE_READY"), READY_WAIT, interval=0.1,
               what=f"{name} READY")

    res = cli("-o", "json", "events", "watch", "--all-workspaces", "--until-caught-up")
    assert res.code == 0, res
    every = event_objs(res)
    s = seqs(every)
    assert s == list(range(1, len(s) + 1)), s  # dense, in order, from the start
    kinds = {(e.get("kind"), e.get("workspace")) for e in every}
    assert ("workspace.created", ws) in kinds, kinds
    assert ("sandbox.created", ws) in kinds, kinds
    ready = [e for e in every if e.get("sandboxName") == name
             and e.get("newPhase") == "SANDBOX_PHASE_READY"]
    assert ready, every

    # Without --workspace: the default workspace only.
    res = cli.ok("-o", "json", "events", "watch", "--until-caught-up")
    assert seqs(event_objs(res)) == [int(e["sequence"]) for e in every
                                     if e.get("workspace") in ("default", "")], res
    # --after N: exactly the later ones.
    mid = s[len(s) // 2]
    res = cli.ok("-o", "json", "events", "watch", "--all-workspaces", "--until-caught-up",
                 "--after", mid)
    assert seqs(event_objs(res)) == [x for x in s if x > mid], res
    # --workspace, --kind, --selector.
    res = cli.ok("-o", "json", "events", "watch", "--workspace", ws, "--until-caught-up")
    assert seqs(event_objs(res)) == [int(e["sequence"]) for e in every
                                     if e.get("workspace") == ws], res
    res = cli.ok("-o", "json", "events", "watch", "--all-workspaces", "--until-caught-up",
                 "--kind", "workspace.created", "--kind", "sandbox.created")
    got = event_objs(res)
    assert seqs(got) == [int(e["sequence"]) for e in every
                         if e.get("kind") in ("workspace.created", "sandbox.created")], res
    res = cli.ok("-o", "json", "events", "watch", "--workspace", ws, "--selector", "evsel=yes",
                 "--until-caught-up")
    got = event_objs(res)
    assert got and all(e.get("labels", {}).get("evsel") == "yes" for e in got), res
    assert seqs(got) == [int(e["sequence"]) for e in every
                         if e.get("labels", {}).get("evsel") == "yes"], res

    # Table: one line per event, the sequence first.
    res = cli.ok("events", "watch", "--all-workspaces", "--until-caught-up")
    table = [int(l.split()[0]) for l in res.out_lines if l.split()[0].isdigit()]
    assert table == s, res
    line = [l for l in res.out_lines if l.split()[0] == str(ready[0]["sequence"])][0]
    assert name in line and "READY" in line, line

    # --resume FILE: the second run prints only what is newer.
    resume = tmp_path / "resume"
    res = cli.ok("-o", "json", "events", "watch", "--all-workspaces", "--until-caught-up",
                 "--resume", resume)
    assert seqs(event_objs(res)) == s, res
    assert int(resume.read_text().strip()) == s[-1], resume.read_text()
    cli.ok("workspace", "create", "cli-ev2")
    res = cli.ok("-o", "json", "events", "watch", "--all-workspaces", "--until-caught-up",
                 "--resume", resume)
    newer = event_objs(res)
    assert newer and min(seqs(newer)) == s[-1] + 1, res
    assert ("workspace.created", "cli-ev2") in {(e["kind"], e.get("workspace")) for e in newer}
    assert int(resume.read_text().strip()) == seqs(newer)[-1]
    res = cli.ok("-o", "json", "events", "watch", "--all-workspaces", "--until-caught-up",
                 "--resume", resume)
    assert event_objs(res) == [], res

    cli.ok("-w", ws, "sandbox", "delete", name)
    shared.wait_gone(name, workspace=ws)


def test_events_watch_reconnects_across_gateway_restart(postgres, db, gateway_factory, stubs,
                                                        tmp_path):
    """A watcher keeps following while its gateway restarts on the same
    port: it says so on stderr, reconnects from the last sequence it
    printed, and prints every event exactly once."""
    lock = PortLock()
    try:
        url = f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/{db}"
        args = ["--bind-address", "127.0.0.1", "--port", str(lock.port), "--disable-tls",
                "--db-url", url]
        gw = gateway_factory(args, name="gw-before")
        cli = Cli(tmp_path / "home", ["-g", f"http://127.0.0.1:{gw.port}"])

        def create(gw, names):
            with gw.channel() as ch:
                api = Api(stubs, ch)
                for n in names:
                    api.CreateWorkspace(name=n)

        create(gw, ["rc-1", "rc-2"])
        s = cli.stream("-o", "json", "events", "watch", "--all-workspaces")
        try:
            def created(lines, want):
                have = set()
                for l in lines:
                    o = unwrap(json.loads(l), "event")
                    if o.get("kind") == "workspace.created":
                        have.add(o.get("workspace"))
                return want <= have

            s.wait_for(lambda l: created(l, {"rc-1", "rc-2"}), "the history")
            create(gw, ["rc-3"])
            s.wait_for(lambda l: created(l, {"rc-3"}), "a live event")
            assert gw.stop() == 0
            s.wait_for(lambda l: l, "a word about the lost connection", stream="err")
            gw2 = gateway_factory(args, name="gw-after")
            create(gw2, ["rc-4", "rc-5"])
            s.wait_for(lambda l: created(l, {"rc-4", "rc-5"}), "events after the restart",
                       timeout=30)
            assert s.proc.poll() is None, s.summary()
            code = s.interrupt()
            assert code in INTERRUPTED, s.summary()
        finally:
            s.kill()
        objs = [unwrap(json.loads(l), "event") for l in s.out if l.strip()]
        objs = [o for o in objs if "caughtUp" not in o]
        got = seqs(objs)
        assert got == list(range(1, len(got) + 1)), s.summary()  # none lost, none twice
        names = [o.get("workspace") for o in objs if o.get("kind") == "workspace.created"]
        assert names == ["default", "rc-1", "rc-2", "rc-3", "rc-4", "rc-5"] or \
            names == ["rc-1", "rc-2", "rc-3", "rc-4", "rc-5"], names
        assert all(len(l) < 300 for l in s.err), s.err
    finally:
        lock.release()


# ---------------------------------------------------------------------------
# TLS and mTLS


def tls_gateway(gateway_factory, pki):
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.read(pki.ca_cert), private_key=pki.read(pki.client_key),
        certificate_chain=pki.read(pki.client_cert))
    return gateway_factory(["--bind-address", "127.0.0.1", "--port", "0",
                            "--tls-cert", pki.server_cert, "--tls-key", pki.server_key,
                            "--tls-client-ca", pki.ca_cert, "--tls-require-client-cert"],
                           credentials=creds, name="gw-tls")


@pytest.mark.tls
def test_tls_and_mtls(pki, gateway_factory, tmp_path):
    gw = tls_gateway(gateway_factory, pki)
    url = f"https://127.0.0.1:{gw.port}"
    files = ["--tls-ca", pki.ca_cert, "--tls-cert", pki.client_cert, "--tls-key", pki.client_key]
    cli = Cli(tmp_path / "home", ["-g", url])

    res = cli.ok(*files, "gateway", "info")
    assert "process" in res.stdout, res
    assert cli.json(*files, "sandbox", "list").get("sandboxes", []) == []
    # The server certificate also names localhost.
    cli.ok("-g", f"https://localhost:{gw.port}", *files, "gateway", "info")
    # The same files through the environment.
    cli.ok("gateway", "info", env={"OPENSHELL_TLS_CA": pki.ca_cert,
                                   "OPENSHELL_TLS_CERT": pki.client_cert,
                                   "OPENSHELL_TLS_KEY": pki.client_key})
    # The same through a local bundle directory, with no option at all.
    bundle = tmp_path / "bundle"
    (bundle / "client").mkdir(parents=True)
    (bundle / "ca.crt").write_bytes(pki.read(pki.ca_cert))
    (bundle / "client" / "tls.crt").write_bytes(pki.read(pki.client_cert))
    (bundle / "client" / "tls.key").write_bytes(pki.read(pki.client_key))
    res = cli.ok("gateway", "info", env={"OPENSHELL_LOCAL_TLS_DIR": bundle})
    assert "process" in res.stdout, res
    # And the bundle is the default endpoint's companion: the endpoint from
    # the environment, the credentials from the bundle.
    bare = Cli(tmp_path / "home2")
    bare.ok("gateway", "info", env={"OPENSHELL_LOCAL_TLS_DIR": bundle,
                                    "OPENSHELL_GATEWAY_ENDPOINT": url})

    # A CA that did not sign the server certificate: exit 24, a TLS reason.
    res = cli("--tls-ca", pki.rogue_ca_cert, "--tls-cert", pki.client_cert,
              "--tls-key", pki.client_key, "gateway", "info")
    assert res.code == EXIT_UNAVAILABLE, res
    line = one_line_error(res, f"127.0.0.1:{gw.port}")
    assert re.search(r"(?i)tls|certificate|verify|ssl", line), line
    # No client certificate where the gateway requires one.
    res = cli("--tls-ca", pki.ca_cert, "gateway", "info")
    assert res.code == EXIT_UNAVAILABLE, res
    one_line_error(res)
    # A client certificate from a CA the gateway does not trust.
    res = cli("--tls-ca", pki.ca_cert, "--tls-cert", pki.rogue_client_cert,
              "--tls-key", pki.rogue_client_key, "gateway", "info")
    assert res.code == EXIT_UNAVAILABLE, res
    one_line_error(res)
    # A missing TLS file is a local failure naming it.
    res = cli("--tls-ca", tmp_path / "no-such-ca.crt", "gateway", "info")
    assert res.code == EXIT_LOCAL, res
    one_line_error(res, "no-such-ca.crt")
    assert gw.running
    # Plaintext to a TLS port fails too, and says where it tried.
    res = cli("-g", f"http://127.0.0.1:{gw.port}", "gateway", "info")
    assert res.code == EXIT_UNAVAILABLE, res
    one_line_error(res, f"127.0.0.1:{gw.port}")
