"""Compute-driver selection errors at gateway startup (semantics.md §3, as
this gateway tightens it): each must make the gateway exit non-zero within
seconds, before any listener opens, with a message that says what is wrong.
And the two accepted variants next to them (name mismatch allowed)."""

import socket
import time

import pytest

from drivers_fixtures import (  # noqa: F401 - fixtures
    _drivers_stopper,
    _leaks,
    db_url,
    env,
    gateway_info,
)
from utils import write_toml

pytestmark = pytest.mark.postgres

EXIT_WITHIN = 10.0


def startup_error(env, *args, needles):
    """Starts a gateway that must fail; returns its log text."""
    t0 = time.monotonic()
    gw = env.gateway(*args, wait=False)
    code = gw.wait_exit(EXIT_WITHIN)
    elapsed = time.monotonic() - t0
    text = gw.log_text()
    assert code is not None, f"gateway still running {EXIT_WITHIN}s after start:\n{text}"
    assert code != 0, f"gateway exited 0:\n{text}"
    assert gw.find_event("gateway.listening") is None, "listeners opened before the error"
    for n in needles:
        assert n.lower() in text.lower(), f"{n!r} not in the gateway's output:\n{text}"
    return text, elapsed


def test_reserved_name_with_socket_flag(env):
    drv = env.fake_driver(name="kubernetes", record=False)
    startup_error(env, "--drivers", "kubernetes", "--compute-driver-socket", drv.socket,
                  needles=["reserved"])


def test_reserved_name_with_toml_socket_path(env):
    drv = env.fake_driver(name="docker", record=False)
    cfg = write_toml(env.tmp_path / "gateway.toml", {
        "openshell.gateway": {"compute_drivers": ["docker"]},
        "openshell.drivers.docker": {"socket_path": str(drv.socket)},
    })
    startup_error(env, "--config", cfg, needles=["reserved"])


def test_socket_without_drivers_flag(env):
    drv = env.fake_driver(name="mydrv", record=False)
    startup_error(env, "--compute-driver-socket", drv.socket, needles=["--drivers"])


def test_extension_driver_without_socket(env):
    startup_error(env, "--drivers", "mydrv", needles=["socket"])


def test_builtin_driver_not_shipped(env):
    startup_error(env, "--drivers", "docker", needles=["not shipped", "process"])


def test_driver_name_mismatch_refused(env):
    drv = env.fake_driver(name="other", record=False)
    startup_error(env, "--drivers", "mydrv", "--compute-driver-socket", drv.socket,
                  needles=["mismatch"])


def test_driver_name_mismatch_allowed(env):
    drv = env.fake_driver(name="other", record=False)
    gw = env.gateway("--drivers", "mydrv", "--compute-driver-socket", drv.socket,
                     "--allow-driver-name-mismatch")
    info = gateway_info(env.api(gw))
    assert info.name == "mydrv"
    assert info.capabilities.driver_name == "other"
    assert info.capabilities.driver_version == "0.0.1-fake"


@pytest.mark.parametrize("kind", ["missing", "stale"])
def test_unreachable_socket(env, kind):
    d = env.short_dir()
    path = d / "nobody.sock"
    if kind == "stale":
        # A socket file nobody listens on (connect gets ECONNREFUSED).
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.close()
    text, elapsed = startup_error(env, "--drivers", "mydrv", "--compute-driver-socket", path,
                                  "--driver-connect-timeout-ms", "500",
                                  needles=["unreachable"])
    assert elapsed >= 0.5, f"gave up after {elapsed:.2f}s, before the 500 ms connect budget"
