"""The README's Quickstart, run as written.

The section's first `sh` block (the run command) is started in the
background; the other blocks run in order in one bash, the way a new user
pastes them into a second terminal. The only differences from a user's
machine are environment variables the README names (a free port, a
throwaway state directory and TLS bundle), so the text cannot rot without
this test failing.
"""
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from drivers_util import procs_matching, rmtree, wait_no_procs
from utils import REPO_ROOT, wait_until

README = REPO_ROOT / "README.md"
RUN_TIMEOUT = 900     # run.sh may have to build from scratch
STEPS_TIMEOUT = 300


def quickstart_blocks():
    """The fenced ```sh blocks of README's "## Quickstart" section."""
    text = README.read_text()
    m = re.search(r"^## Quickstart\n(.*?)^## ", text, re.S | re.M)
    assert m, "README.md has no '## Quickstart' section"
    blocks = re.findall(r"^```sh\n(.*?)^```", m.group(1), re.S | re.M)
    assert len(blocks) >= 2, "the Quickstart needs the run block and at least one more"
    return blocks


def test_quickstart_blocks_are_what_this_test_expects():
    blocks = quickstart_blocks()
    # The first block is the run command of "Two commands": started in the
    # background below.
    assert blocks[0].strip() == "./scripts/run.sh"
    steps = "".join(blocks[1:])
    for needed in ("openshell sandbox create", "openshell sandbox exec",
                   "openshell events watch", "psql "):
        assert needed in steps, f"the Quickstart lost its '{needed}' step"


@pytest.fixture
def workdir():
    # The embedded PostgreSQL runs as the postgres user: it must traverse
    # the state directory, and its socket path must stay short.
    base = Path(tempfile.mkdtemp(prefix="oe-readme-", dir="/tmp"))
    base.chmod(0o711)
    yield base
    rmtree(base)


def test_readme_quickstart(workdir, port_lock, request):
    if os.geteuid() != 0:
        pytest.skip("the Quickstart runs as root (process driver, embedded PostgreSQL)")
    blocks = quickstart_blocks()
    port = port_lock().port
    state = workdir / "state"
    tls = workdir / "tls"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENSHELL_")}
    env.update({
        "OPENSHELL_SERVER_PORT": str(port),
        "OPENSHELL_STATE_DIR": str(state),
        "OPENSHELL_LOCAL_TLS_DIR": str(tls),
        "OPENSHELL_GATEWAY_ENDPOINT": f"https://127.0.0.1:{port}",
    })
    log_path = workdir / "run.log"
    log = open(log_path, "wb")
    # run.sh execs the gateway, so this pid ends up being the gateway's.
    run = subprocess.Popen(shlex.split(blocks[0]), cwd=REPO_ROOT, env=env, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    cli = REPO_ROOT / "build" / "openshell"

    def gateway_answers():
        if run.poll() is not None:
            raise AssertionError(f"run.sh exited {run.returncode}:\n{log_path.read_text()[-4000:]}")
        if not cli.exists():
            return False
        r = subprocess.run([str(cli), "gateway", "info"], env=env, capture_output=True,
                           timeout=30)
        return r.returncode == 0

    steps = None
    try:
        wait_until(gateway_answers, RUN_TIMEOUT, interval=0.5, what="the gateway from run.sh")
        # run.sh made the bundle the CLI just used, and the gateway serves TLS.
        assert (tls / "ca.crt").exists() and (tls / "client" / "tls.crt").exists()
        script = "set -euo pipefail\nset -x\n" + "".join(blocks[1:])
        steps = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=env,
                               capture_output=True, text=True, timeout=STEPS_TIMEOUT)
        print(steps.stdout)
        print(steps.stderr)
        assert steps.returncode == 0, f"a Quickstart step failed:\n{steps.stderr[-4000:]}"
        out = steps.stdout
        assert "hello from" in out
        assert re.search(r"^demo\s", out, re.M), "sandbox list shows demo"
        assert "sandbox.created" in out, "events watch and the audit query show the create"
        # The audit query ran against the gateway's own database: its row
        # for demo names the phase the sandbox reached.
        assert re.search(r"\|\s*demo\s*\|\s*sandbox\.created", out)
        # The sandbox is gone, and nothing of it runs any more.
        r = subprocess.run([str(cli), "sandbox", "get", "demo"], env=env, capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 15, r.stderr
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
            try:
                run.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(timeout=10)
        log.close()
        print(log_path.read_text()[-20000:])
    assert run.returncode == 0, "the gateway exits 0 on SIGTERM"
    wait_no_procs("quickstart sandboxes", timeout=15, tokens=[str(state)], dirs=[state])
    assert not procs_matching(tokens=[str(workdir)])


def building_by_hand_block():
    text = README.read_text()
    m = re.search(r"^## Building by hand\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, "README.md has no '## Building by hand' section"
    lines = [ln[4:] for ln in m.group(1).splitlines() if ln.startswith("    ")]
    assert lines, "the section has no indented command block"
    return "\n".join(lines) + "\n", m.group(1)


def test_building_by_hand(tmp_path):
    """The hand-build commands, in a copy of the tracked sources (what a
    fresh clone has), then the options and targets the section names."""
    block, section = building_by_hand_block()
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    for f in filter(None, files):
        rel = f.decode()
        if not (REPO_ROOT / rel).is_file():
            continue
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, src / rel)
    env = dict(os.environ, MAKEFLAGS=f"-j{os.cpu_count() or 2}")
    r = subprocess.run(["bash", "-euxo", "pipefail", "-c", block], cwd=src, env=env,
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, f"Building by hand failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert (src / "build" / "openshell-gateway").exists()
    assert (src / "build" / "openshell").exists()
    opts = subprocess.run(["./configure", "--help"], cwd=src, capture_output=True, text=True,
                          timeout=60).stdout
    for opt in re.findall(r"`(--[a-z-]+)", section):
        assert opt in opts, f"README names {opt}, ./configure --help does not"
    r = subprocess.run(["make", "format-check"], cwd=src / "build", capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
