"""ExecSandbox and ExecSandboxInteractive end to end (semantics.md §12).

Each test creates sandboxes through the gateway's managed process driver
and waits until they are READY (the supervisor inside has a live
ConnectSupervisor session); the gateway then runs every exec as an SSH
client over a relay to the supervisor's built-in SSH server.
"""

import hashlib
import os
import time
import uuid

import grpc
import pytest

from drivers_fixtures import _drivers_stopper, _leaks, db_url, env  # noqa: F401 - fixtures
from relay_util import (
    ExecResult,
    create_ready,
    exec_error,
    exec_interactive,
    exec_ok,
    run_exec,
    sandbox_processes,
    wait_phase,
)
from utils import wait_until

pytestmark = pytest.mark.postgres

MIB = 1024 * 1024


@pytest.fixture
def box(env):
    """(api, sandbox id) of one READY sandbox on a fresh gateway."""
    gw = env.gateway()
    api = env.api(gw)
    sb = create_ready(env, api, "ex")
    return api, sb.metadata.id


def test_exec_stdout_stderr_exit_code(box):
    api, sid = box
    res = run_exec(api, sid, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert res.stdout == b"out\n", res
    assert res.stderr == b"err\n", res
    assert res.exit_code == 3, res


def test_exec_stdin_bytes(box):
    api, sid = box
    data = b"line one\n\x00binary\xff\xfe\nno newline at end" + os.urandom(200 * 1024)
    res = run_exec(api, sid, ["cat"], stdin=data)
    assert res.exit_code == 0, res
    assert res.stdout == data
    assert res.stderr == b""
    # No stdin at all: cat sees EOF at once.
    res = run_exec(api, sid, ["cat"])
    assert (res.stdout, res.exit_code) == (b"", 0), res


def test_exec_environment_and_workdir(box):
    api, sid = box
    assert exec_ok(api, sid, ["pwd"], workdir="/tmp") == b"/tmp\n"
    # Values that need quoting in the remote command string.
    value = "hello world 'quoted' \"double\" $HOME `x` ; |"
    out = exec_ok(api, sid, ["sh", "-c", 'printf "%s|%s" "$FOO" "$BAR_2"'],
                  environment={"FOO": value, "BAR_2": ""})
    assert out == f"{value}|".encode()
    # Arguments are passed as they are, not re-split by a shell.
    out = exec_ok(api, sid, ["printf", "%s\n", "a b", "c'd", "", "$HOME"])
    assert out == b"a b\nc'd\n\n$HOME\n"
    # The workdir is quoted too, and the environment applies there.
    exec_ok(api, sid, ["mkdir", "-p", "/tmp/dir with space"])
    out = exec_ok(api, sid, ["sh", "-c", 'pwd; echo "$FOO"'], workdir="/tmp/dir with space",
                  environment={"FOO": "bar"})
    assert out == b"/tmp/dir with space\nbar\n"
    # OPENSHELL_PYFUNC_B64 is the one OPENSHELL_* key allowed.
    out = exec_ok(api, sid, ["sh", "-c", 'echo "$OPENSHELL_PYFUNC_B64"'],
                  environment={"OPENSHELL_PYFUNC_B64": "aGk="})
    assert out == b"aGk=\n"


def test_exec_tty(box):
    api, sid = box
    cmd = ["sh", "-c", "[ -t 0 ] && echo yes || echo no"]
    res = run_exec(api, sid, cmd)
    assert (res.stdout, res.exit_code) == (b"no\n", 0), res
    res = run_exec(api, sid, cmd, tty=False)
    assert (res.stdout, res.exit_code) == (b"no\n", 0), res
    res = run_exec(api, sid, cmd, tty=True)
    assert res.exit_code == 0, res
    assert res.stdout.strip() == b"yes", res
    # With a PTY, stderr arrives on stdout.
    res = run_exec(api, sid, ["sh", "-c", "echo to-stderr >&2"], tty=True)
    assert res.exit_code == 0, res
    assert b"to-stderr" in res.stdout and res.stderr == b"", res


def test_exec_interactive_stdin_half_close(box):
    api, sid = box
    pb = api.pb
    ex = exec_interactive(api, pb.ExecSandboxRequest(sandbox_id=sid, command=["cat"]))
    try:
        pieces = [b"first\n", b"second ", os.urandom(100 * 1024), b"\x00last"]
        ex.send(pb.ExecSandboxInput(stdin=pieces[0]))
        # Streamed: the first piece comes back before more is sent.
        ex.wait(lambda items: ExecResult(items).stdout == pieces[0], 20,
                "the first stdin piece echoed by cat")
        for p in pieces[1:]:
            ex.send(pb.ExecSandboxInput(stdin=p))
        ex.close_send()
        assert ex.wait_end(30) == (grpc.StatusCode.OK, "")
        res = ExecResult(ex.items)
        assert res.stdout == b"".join(pieces)
        assert res.stderr == b""
        assert res.exit_code == 0
    finally:
        ex.cancel()


def test_exec_interactive_tty_resize(box):
    api, sid = box
    pb = api.pb
    start = pb.ExecSandboxRequest(sandbox_id=sid, tty=True, cols=80, rows=24,
                                  command=["sh", "-c", "stty size; read line; stty size; "
                                           "[ -t 0 ] && echo tty-yes; exit 4"])
    ex = exec_interactive(api, start)
    try:
        ex.wait(lambda items: b"24 80" in ExecResult(items).stdout, 20,
                "`stty size` showing the initial 24x80")
        ex.send(pb.ExecSandboxInput(resize=pb.ExecSandboxWindowResize(cols=100, rows=40)))
        ex.send(pb.ExecSandboxInput(stdin=b"go\n"))
        ex.wait(lambda items: b"40 100" in ExecResult(items).stdout, 20,
                "`stty size` showing 40 100 after the resize")
        ex.close_send()
        assert ex.wait_end(30) == (grpc.StatusCode.OK, "")
        res = ExecResult(ex.items)
        assert b"tty-yes" in res.stdout, res
        assert res.exit_code == 4, res
    finally:
        ex.cancel()


def test_exec_interactive_without_tty_ignores_resize(box):
    api, sid = box
    pb = api.pb
    start = pb.ExecSandboxRequest(sandbox_id=sid,
                                  command=["sh", "-c", "[ -t 0 ] && echo yes || echo no; cat"])
    ex = exec_interactive(api, start)
    try:
        ex.send(pb.ExecSandboxInput(resize=pb.ExecSandboxWindowResize(cols=100, rows=40)))
        # A second start is ignored.
        ex.send(pb.ExecSandboxInput(start=pb.ExecSandboxRequest(sandbox_id=sid,
                                                                command=["false"])))
        ex.send(pb.ExecSandboxInput(stdin=b"abc"))
        ex.close_send()
        assert ex.wait_end(30) == (grpc.StatusCode.OK, "")
        res = ExecResult(ex.items)
        assert res.stdout == b"no\nabc", res
        assert res.exit_code == 0, res
    finally:
        ex.cancel()


def test_exec_interactive_first_message_must_be_start(box):
    api, sid = box
    pb = api.pb
    from relay_util import BidiCall

    bad = BidiCall(api.stub.ExecSandboxInteractive, pb.ExecSandboxInput(stdin=b"x"),
                   timeout=20, name="exec-no-start")
    bad.close_send()
    code, details = bad.wait_end(20)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "start" in details, details

    empty = BidiCall(api.stub.ExecSandboxInteractive, None, timeout=20, name="exec-empty")
    empty.close_send()
    code, details = empty.wait_end(20)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)


def test_exec_timeout(box):
    api, sid = box
    marker = "30.%09d" % (uuid.uuid4().int % 10 ** 9)
    t0 = time.monotonic()
    res = run_exec(api, sid, ["sleep", marker], timeout_seconds=1)
    took = time.monotonic() - t0
    assert res.exit_code == 124, res
    assert took < 10, f"timeout_seconds=1 exec took {took:.1f}s"

    # Interactive execs are bounded the same way.
    pb = api.pb
    t0 = time.monotonic()
    ex = exec_interactive(api, pb.ExecSandboxRequest(sandbox_id=sid, command=["cat"],
                                                     timeout_seconds=1))
    try:
        assert ex.wait_end(15) == (grpc.StatusCode.OK, "")
        assert ExecResult(ex.items).exit_code == 124
        assert time.monotonic() - t0 < 10
    finally:
        ex.cancel()


def test_exec_timeout_ends_the_command(box):
    """The command of a timed-out exec does not keep running in the sandbox."""
    api, sid = box
    marker = "30.%09d" % (uuid.uuid4().int % 10 ** 9)
    res = run_exec(api, sid, ["sleep", marker], timeout_seconds=1)
    assert res.exit_code == 124, res

    def gone():
        return not [p for p in sandbox_processes(api, sid) if marker in p["argv"]]

    wait_until(gone, 10, interval=0.5,
               what=f"`sleep {marker}` of the timed-out exec to end inside the sandbox")


def test_exec_not_ready_and_not_found(env):
    gw = env.gateway()
    api = env.api(gw)
    sid = create_ready(env, api, "nr").metadata.id
    api.StopSandbox(name="nr")
    wait_phase(api, "nr", "STOPPED")
    code, details = exec_error(api, sid, ["true"])
    assert code == grpc.StatusCode.FAILED_PRECONDITION, (code, details)
    assert "not ready" in details, details

    code, details = exec_error(api, str(uuid.uuid4()), ["true"])
    assert code == grpc.StatusCode.NOT_FOUND, (code, details)


INVALID_EXECS = {
    "empty command": {"command": []},
    "no sandbox id": {"sandbox_id": ""},
    "env key starting with a digit": {"environment": {"1BAD": "x"}},
    "env key with a dash": {"environment": {"BAD-KEY": "x"}},
    "empty env key": {"environment": {"": "x"}},
    "OPENSHELL_ env key": {"environment": {"OPENSHELL_FOO": "x"}},
    "newline in an env value": {"environment": {"OK": "a\nb"}},
    "carriage return in an env value": {"environment": {"OK": "a\rb"}},
    "newline in workdir": {"workdir": "/tmp\nx"},
    "NUL in an argument": {"command": ["echo", "a\0b"]},
    "workdir over 4096 bytes": {"workdir": "/" + "a" * 5000},
    "1025 arguments": {"command": ["true"] + ["x"] * 1024},
    "argument over 32 KiB": {"command": ["echo", "a" * (32 * 1024 + 1)]},
}


def test_exec_invalid_arguments(box):
    """Each bad request is INVALID_ARGUMENT (all cases run; the failures are
    listed together)."""
    api, sid = box
    wrong = []
    for what, kw in INVALID_EXECS.items():
        req = {"sandbox_id": sid, "command": ["true"]}
        req.update(kw)
        command = req.pop("command")
        try:
            res = run_exec(api, req.pop("sandbox_id"), command, **req)
            wrong.append(f"{what}: accepted, {res}")
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                wrong.append(f"{what}: {e.code()} {e.details()!r}")
    assert not wrong, "\n".join(wrong)
    # Newlines inside arguments are allowed.
    assert exec_ok(api, sid, ["printf", "%s", "a\nb"]) == b"a\nb"


def test_exec_validation_precedes_lookup(env):
    """Argument errors are reported before the sandbox is looked up."""
    gw = env.gateway()
    api = env.api(gw)
    code, _ = exec_error(api, str(uuid.uuid4()), [])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = exec_error(api, str(uuid.uuid4()), ["true"], environment={"OPENSHELL_X": "1"})
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_exec_large_output(box):
    api, sid = box
    size = 16 * MIB
    res = run_exec(api, sid, ["sh", "-c", f"head -c {size} /dev/urandom | tee /tmp/big.bin"],
                   timeout=120)
    assert res.exit_code == 0, res.exits
    assert res.stderr == b""
    assert len(res.stdout) == size
    remote = exec_ok(api, sid, ["sha256sum", "/tmp/big.bin"]).split()[0].decode()
    assert hashlib.sha256(res.stdout).hexdigest() == remote


def test_exec_many_sequential_leave_no_processes(box):
    api, sid = box
    before = sandbox_processes(api, sid)
    assert any(p["pid"] == 1 for p in before), before
    for i in range(50):
        res = run_exec(api, sid, ["sh", "-c", f"echo run {i}; echo e{i} >&2; exit {i % 5}"])
        assert (res.stdout, res.stderr, res.exit_code) == (
            f"run {i}\n".encode(), f"e{i}\n".encode(), i % 5), res
    # The supervisor forks a helper per SSH connection (the listing's own
    # shows up too, under a new pid each time): such children are compared
    # by count, everything else by pid. Reaping may trail the exit status by
    # a moment.
    def key(procs):
        sup = next(p["argv"] for p in procs if p["pid"] == 1)
        return sorted((("supervisor child" if p["argv"] == sup and p["pid"] != 1
                        else str(p["pid"])), tuple(p["argv"]), p["state"]) for p in procs)

    want = key(before)
    last = [None]

    def settled():
        last[0] = sandbox_processes(api, sid)
        return key(last[0]) == want

    try:
        wait_until(settled, 10, interval=0.5, what="the sandbox's process list as before")
    except TimeoutError:
        pytest.fail(f"processes after 50 execs differ from before:\nbefore: {before}\n"
                    f"after: {last[0]}")
