"""Helpers for e2e/test_cli.py: running the `openshell` command-line client.

The client binary is $OPENSHELL_CLI_BIN, else `openshell` next to the
gateway binary under test ($GATEWAY_BIN), so that one build directory is
tested as a whole. Every run is bounded (subprocess timeouts); a run that
outlives its bound is killed by PID and fails the test with what it had
printed so far. The environment a client runs with has no OPENSHELL_*
variable from the caller, its own HOME and XDG dirs, and an empty local TLS
bundle directory, so nothing on this machine leaks into a test.
"""

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

import pytest

from utils import GATEWAY_BIN

CLI_BIN = Path(os.environ.get("OPENSHELL_CLI_BIN", str(GATEWAY_BIN.parent / "openshell")))
CLI_TIMEOUT = 60.0  # bound of one client run, seconds

# Exit codes of the agreed interface (cli_spec.md "Errors and exit codes").
EXIT_LOCAL, EXIT_USAGE = 1, 2
EXIT_INVALID_ARGUMENT, EXIT_DEADLINE, EXIT_NOT_FOUND, EXIT_ALREADY_EXISTS = 13, 14, 15, 16
EXIT_PERMISSION_DENIED, EXIT_FAILED_PRECONDITION = 17, 19
EXIT_UNAVAILABLE, EXIT_UNAUTHENTICATED = 24, 26


def cli_env(home, extra=None):
    """The client's environment: the caller's minus OPENSHELL_*, HOME and
    XDG dirs under |home|, OPENSHELL_LOCAL_TLS_DIR pointing at an empty
    directory (so a bundle in /var/lib/openshell/tls is not picked up)."""
    home = Path(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENSHELL_")}
    for var, sub in (("XDG_CONFIG_HOME", "xdg-config"), ("XDG_STATE_HOME", "xdg-state"),
                     ("XDG_DATA_HOME", "xdg-data"), ("XDG_CACHE_HOME", "xdg-cache")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    (home / "no-tls-bundle").mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["OPENSHELL_LOCAL_TLS_DIR"] = str(home / "no-tls-bundle")
    env.pop("TERM", None)
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def require_cli():
    if not CLI_BIN.exists():
        pytest.fail(f"openshell CLI binary not found: {CLI_BIN} "
                    "(build it, or set OPENSHELL_CLI_BIN / GATEWAY_BIN)")


class Result:
    """A finished client run: code, stdout, stderr (text) and the command."""

    def __init__(self, cmd, code, stdout, stderr):
        self.cmd, self.code, self.stdout, self.stderr = cmd, code, stdout, stderr

    @property
    def err_lines(self):
        return [l for l in self.stderr.splitlines() if l.strip()]

    @property
    def out_lines(self):
        return [l for l in self.stdout.splitlines() if l.strip()]

    def json(self):
        try:
            return json.loads(self.stdout)
        except ValueError as e:
            raise AssertionError(f"stdout of {self} is not one JSON document: {e}") from None

    def json_lines(self):
        out = []
        for line in self.out_lines:
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise AssertionError(f"line {line!r} of {self} is not JSON: {e}") from None
        return out

    def __repr__(self):
        return (f"openshell run {self.cmd[1:]!r}: exit {self.code}\n"
                f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}")


class Cli:
    """Runs the client against one gateway: cli("sandbox", "list") puts the
    global options (gateway URL, TLS files, ...) first and returns a Result.
    |base| holds those global options; |env| the environment."""

    def __init__(self, home, base=(), env=None):
        require_cli()
        self.home = Path(home)
        self.base = [str(a) for a in base]
        self.env = cli_env(self.home, env)

    def with_options(self, *base, env=None, replace=False):
        """A Cli with extra (or, with |replace|, only these) global options
        and extra environment variables."""
        c = Cli.__new__(Cli)
        c.home = self.home
        c.base = ([] if replace else list(self.base)) + [str(a) for a in base]
        c.env = dict(self.env)
        if env:
            c.env.update({k: str(v) for k, v in env.items()})
        return c

    def cmd(self, *args):
        return [str(CLI_BIN), *self.base, *[str(a) for a in args]]

    def __call__(self, *args, input=None, timeout=CLI_TIMEOUT, env=None):
        cmd = self.cmd(*args)
        full_env = dict(self.env, **{k: str(v) for k, v in (env or {}).items()})
        try:
            p = subprocess.run(cmd, input=input, capture_output=True, text=True,
                               timeout=timeout, env=full_env,
                               stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"openshell {cmd[1:]} did not finish within {timeout}s; "
                        f"stdout {str(e.stdout)[-1500:]!r} stderr {str(e.stderr)[-1500:]!r}")
        return Result(cmd, p.returncode, p.stdout, p.stderr)

    def ok(self, *args, **kw):
        """Runs and requires exit 0."""
        res = self(*args, **kw)
        assert res.code == 0, res
        return res

    def json(self, *args, **kw):
        """Runs with -o json (exit 0 required) and parses stdout."""
        return self.ok("-o", "json", *args, **kw).json()

    def stream(self, *args, env=None):
        return CliStream(self.cmd(*args), dict(self.env, **(env or {})))

    def pty(self, *args, timeout=CLI_TIMEOUT, input=b"", env=None, keep_slave=False):
        return run_in_pty(self.cmd(*args), dict(self.env, **(env or {})), timeout=timeout,
                          input=input, keep_slave=keep_slave)


class CliStream:
    """A long-running client (logs -f, events watch): stdout and stderr are
    read line by line by background threads; wait_for() waits (bounded) for
    a line; interrupt() sends SIGINT by PID and waits for the exit."""

    def __init__(self, cmd, env):
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, text=True, bufsize=1)
        self.out, self.err = [], []
        self.cond = threading.Condition()
        self.threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out),
                                         daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stderr, self.err),
                                         daemon=True)]
        for t in self.threads:
            t.start()

    def _read(self, f, lines):
        for line in f:
            with self.cond:
                lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, pred, what, timeout=20.0, stream="out"):
        """Waits until pred(list of lines so far) is truthy; returns its value."""
        lines = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = pred(list(lines))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not any(
                        t.is_alive() for t in self.threads):
                    raise AssertionError(
                        f"openshell {self.cmd[1:]}: no {what} within {timeout}s "
                        f"(exit {self.proc.poll()})\n--- stdout ---\n"
                        + "\n".join(self.out[-30:]) + "\n--- stderr ---\n"
                        + "\n".join(self.err[-30:]))
                self.cond.wait(min(left, 0.1))

    def interrupt(self, timeout=10.0):
        """SIGINT (as Ctrl-C would), bounded wait, SIGKILL if still running;
        returns the exit code (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        for t in self.threads:
            t.join(5)
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for t in self.threads:
            t.join(5)

    def summary(self):
        return (f"openshell {self.cmd[1:]} exit {self.proc.poll()}\n--- stdout ---\n"
                + "\n".join(self.out[-40:]) + "\n--- stderr ---\n" + "\n".join(self.err[-40:]))


class PtyResult:
    def __init__(self, code, output, termios_before=None, termios_after=None):
        self.code, self.output = code, output
        self.termios_before, self.termios_after = termios_before, termios_after

    def __repr__(self):
        return f"pty run: exit {self.code}, output {self.output[-3000:]!r}"


def run_in_pty(cmd, env, timeout=CLI_TIMEOUT, input=b"", keep_slave=False):
    """Runs |cmd| with stdin, stdout and stderr on a new pseudo-terminal
    (80x24, TERM=xterm) and collects everything it writes. |input| is
    written to the terminal first. With |keep_slave| the terminal's termios
    settings are returned from before and after the run (to check that a
    raw mode was undone). Bounded by |timeout| (SIGKILL by PID)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    before = termios.tcgetattr(slave)
    env = dict(env, TERM="xterm")
    out = bytearray()
    try:
        proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env,
                                start_new_session=True)
        if not keep_slave:
            os.close(slave)
            slave = None
        if input:
            os.write(master, input)
        deadline = time.monotonic() + timeout
        while True:
            r, _, _ = select.select([master], [], [], 0.05)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every slave descriptor closed
                    chunk = b""
                if chunk:
                    out += chunk
                    continue
                if proc.poll() is not None:
                    break
            elif proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(10)
                pytest.fail(f"{cmd[1:]} in a pty did not finish within {timeout}s; "
                            f"output {bytes(out[-2000:])!r}")
        after = termios.tcgetattr(slave) if slave is not None else None
        return PtyResult(proc.returncode, bytes(out), before, after)
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)


def unwrap(obj, key):
    """A JSON line that may be either the wrapped stream message
    ({"event": {...}}, {"log": {...}}) or the inner message itself."""
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict) and len(obj) == 1:
        return obj[key]
    return obj


def key_values(text):
    """`key: value` lines of a table-mode record, keys lowercased."""
    out = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip().lower(), v.strip())
    return out


def table_rows(text):
    """A table's header (list of column names) and rows: cells are split on
    whitespace, the last column keeps the rest of the line (so only the
    last column may contain spaces)."""
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines:
        return [], []
    header = lines[0].split()
    rows = []
    for l in lines[1:]:
        cells = l.split(None, len(header) - 1)
        rows.append(cells)
    return header, rows
