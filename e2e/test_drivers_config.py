"""driver_config envelope selection (semantics.md §4) seen from the driver:
e2e/fake_driver.py records every request it gets, so the tests compare
what the gateway forwarded in ValidateSandboxCreate and CreateSandbox with
what the caller sent. Plus driver-side validation by the process driver."""

import grpc
import pytest
from google.protobuf import struct_pb2

from drivers_fixtures import (  # noqa: F401 - fixtures
    _drivers_stopper,
    _leaks,
    db_url,
    env,
    new_token,
    sandbox_command,
)
from drivers_util import Compute, read_records, records_of

pytestmark = pytest.mark.postgres

PLATFORM_KEYS = {"runtime_class_name", "annotations", "host_users", "resources_raw"}
ENVELOPE = {"mydrv": {"a": 1, "nested": {"b": "x"}}, "other": {"zzz": True}, "MyDrv": {"c": 1}}


def envelope(value):
    s = struct_pb2.Struct()
    s.update(value)
    return s


def create(env, api, name, env_value=None):
    pb = env.pb
    tmpl = pb.SandboxTemplate()
    if env_value is not None:
        tmpl.driver_config.CopyFrom(envelope(env_value))
    spec = pb.SandboxSpec(command=["/bin/sh", "-c", "sleep 600"], template=tmpl)
    return api.CreateSandbox(name=name, spec=spec).sandbox


def forwarded(drv, sid):
    """(validate, create) recorded requests for sandbox |sid|; Validate must
    come first, each exactly once."""
    recs = read_records(drv.record)
    idx = {m: [i for i, r in enumerate(recs) if r["method"] == m
               and r["request"].get("sandbox", {}).get("id") == sid]
           for m in ("ValidateSandboxCreate", "CreateSandbox")}
    assert len(idx["ValidateSandboxCreate"]) == 1, idx
    assert len(idx["CreateSandbox"]) == 1, idx
    v, c = idx["ValidateSandboxCreate"][0], idx["CreateSandbox"][0]
    assert v < c, "CreateSandbox was sent before ValidateSandboxCreate"
    return recs[v]["request"]["sandbox"], recs[c]["request"]["sandbox"]


def assert_platform_config_clean(template, caller_keys):
    pc = template.get("platform_config")
    if pc is None:
        return
    assert set(pc) <= PLATFORM_KEYS, f"platform_config has unexpected keys: {pc}"
    flat = repr(pc)
    for k in caller_keys:
        assert repr(k) not in flat, f"caller key {k!r} leaked into platform_config: {pc}"


@pytest.fixture
def fake_gw(env):
    drv = env.fake_driver(name="mydrv")
    gw = env.gateway("--drivers", "mydrv", "--compute-driver-socket", drv.socket)
    return drv, env.api(gw)


def test_selected_block_is_forwarded_exactly(env, fake_gw):
    drv, api = fake_gw
    sb = create(env, api, "cfg-sel", ENVELOPE)
    sid = sb.metadata.id
    for req in forwarded(drv, sid):
        assert req["name"] == "cfg-sel"
        assert req["workspace"] == "default"
        tmpl = req["spec"]["template"]
        assert tmpl["driver_config"] == {"a": 1, "nested": {"b": "x"}}, tmpl
        assert_platform_config_clean(tmpl, ["mydrv", "other", "MyDrv", "a", "nested", "zzz", "c"])
    # The fake driver now has it, under the gateway's id.
    with Compute(drv.socket) as c:
        assert c.list_ids() == [sid]


@pytest.mark.parametrize("value", [None, {}, {"other": {"a": 1}, "MyDrv": {"a": 1},
                                              "mydrv2": {"a": 1}, "my": {"a": 1}}],
                         ids=["no-envelope", "empty-envelope", "no-matching-key"])
def test_no_block_no_driver_config(env, fake_gw, value):
    drv, api = fake_gw
    sid = create(env, api, "cfg-none", value).metadata.id
    for req in forwarded(drv, sid):
        tmpl = req["spec"].get("template", {})
        assert "driver_config" not in tmpl, tmpl
        assert_platform_config_clean(tmpl, ["other", "MyDrv", "mydrv2", "my", "a"])


@pytest.mark.parametrize("block", ["str", [1, 2], 5, True], ids=["string", "list", "number",
                                                                 "bool"])
def test_selected_block_must_be_an_object(env, fake_gw, block):
    drv, api = fake_gw
    with pytest.raises(grpc.RpcError) as info:
        create(env, api, "cfg-bad", {"mydrv": block, "other": {"x": 1}})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert "driver_config.mydrv" in info.value.details(), info.value.details()
    assert api.ids() == []
    assert records_of(drv.record, "CreateSandbox") == []
    with Compute(drv.socket) as c:
        assert c.list_ids() == []


def test_process_driver_rejects_unknown_keys(env):
    pb = env.pb
    gw = env.gateway()
    api = env.api(gw)
    token = new_token()
    env.track(token=token)
    tmpl = pb.SandboxTemplate()
    tmpl.driver_config.CopyFrom(envelope({"process": {"bogus": 1}}))
    with pytest.raises(grpc.RpcError) as info:
        api.CreateSandbox(name="cfg-bogus", spec=pb.SandboxSpec(
            command=sandbox_command(token), template=tmpl))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert "driver_config.bogus" in info.value.details(), info.value.details()
    assert api.ids() == []
    sandboxes = gw.workdir / "state" / "drivers" / "process" / "sandboxes"
    assert not sandboxes.exists() or list(sandboxes.iterdir()) == []
    with Compute(gw.workdir / "state" / "drivers" / "process.sock") as c:
        assert c.list_ids() == []
