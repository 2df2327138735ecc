"""The compute.v1 contract every driver owes the gateway (compute-v1.md):
capabilities, validation, the sandbox lifecycle with its watch events,
NOT_FOUND / ALREADY_EXISTS / deleted=false edge cases, idempotent stop and
start, tolerance of unknown fields, optional workspace RPCs and the
driver_config passthrough. See conftest.py for how drivers are chosen."""

import threading
import uuid

import grpc
import pytest

from drivers_util import len_field, rpc_code, unknown_fields

from .conftest import WAIT


def conds(sb):
    return {c.type: c for c in sb.status.conditions}


def is_true(sb, ctype):
    c = conds(sb).get(ctype)
    return c is not None and c.status.lower() == "true"


def snapshot_of(sid, pred=lambda sb: True):
    """Watch predicate: a sandbox snapshot of |sid| that satisfies |pred|."""
    def check(ev):
        return (ev.WhichOneof("payload") == "sandbox" and ev.sandbox.sandbox.id == sid
                and pred(ev.sandbox.sandbox))
    return check


def deleted_of(sid):
    return lambda ev: ev.WhichOneof("payload") == "deleted" and ev.deleted.sandbox_id == sid


def running(sb):
    return is_true(sb, "Ready") and not is_true(sb, "Suspended")


# ---------------------------------------------------------------------------
# handshake


def test_capabilities(driver):
    caps = driver.client.GetCapabilities()
    assert caps.driver_name, "GetCapabilities.driver_name is empty"
    assert caps.driver_version, "GetCapabilities.driver_version is empty"
    if driver.expected_name is not None:
        assert caps.driver_name == driver.expected_name


def test_listener_requirements(driver):
    code, resp = rpc_code(driver.client.GetGatewayListenerRequirements)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNIMPLEMENTED), (code, resp)
    if code == grpc.StatusCode.OK:
        for req in resp.requirements:
            assert req.WhichOneof("selector") is not None, f"requirement without selector: {req}"


# ---------------------------------------------------------------------------
# validation


def test_validate_accepts_minimal_sandbox(driver):
    sb = driver.sandbox()
    driver.client.ValidateSandboxCreate(sandbox=sb)
    # Validation provisions nothing.
    code, _ = rpc_code(driver.client.GetSandbox, sandbox_id=sb.id, sandbox_name=sb.name)
    assert code == grpc.StatusCode.NOT_FOUND
    assert sb.id not in driver.client.list_ids()


# ---------------------------------------------------------------------------
# lifecycle


def test_lifecycle(driver, watch, cleanup):
    c = driver.client
    sb = driver.sandbox()
    sid = cleanup(sb.id)

    c.CreateSandbox(sandbox=sb)

    got = c.GetSandbox(sandbox_id=sid, sandbox_name=sb.name).sandbox
    assert got.id == sid
    assert sid in c.list_ids()

    watch.wait_for(snapshot_of(sid, running), "Ready=True snapshot after create")

    code, details = rpc_code(c.CreateSandbox, sandbox=sb)
    assert code == grpc.StatusCode.ALREADY_EXISTS, (code, details)
    assert c.list_ids().count(sid) == 1

    # Stop must not return while the stop is in progress: the suspension is
    # visible right away.
    c.StopSandbox(sandbox_id=sid, sandbox_name=sb.name)
    got = c.GetSandbox(sandbox_id=sid, sandbox_name=sb.name).sandbox
    assert is_true(got, "Suspended"), f"not Suspended=True after StopSandbox: {got.status}"
    stopped_at = watch.wait_for(snapshot_of(sid, lambda s: is_true(s, "Suspended")),
                                "Suspended=True snapshot after stop")

    c.StopSandbox(sandbox_id=sid, sandbox_name=sb.name)  # idempotent
    assert is_true(c.GetSandbox(sandbox_id=sid).sandbox, "Suspended")

    c.StartSandbox(sandbox_id=sid, sandbox_name=sb.name)
    watch.wait_for(snapshot_of(sid, running), "Ready=True snapshot after start",
                   start=stopped_at + 1)
    c.StartSandbox(sandbox_id=sid, sandbox_name=sb.name)  # idempotent
    got = c.GetSandbox(sandbox_id=sid).sandbox
    assert not is_true(got, "Suspended"), got.status

    assert c.DeleteSandbox(sandbox_id=sid, sandbox_name=sb.name).deleted is True
    watch.wait_for(deleted_of(sid), "deleted event")
    code, details = rpc_code(c.GetSandbox, sandbox_id=sid, sandbox_name=sb.name)
    assert code == grpc.StatusCode.NOT_FOUND, (code, details)
    assert sid not in c.list_ids()
    assert c.DeleteSandbox(sandbox_id=sid, sandbox_name=sb.name).deleted is False
    driver.alive()


def test_unknown_ids(driver):
    c = driver.client
    sid, name = str(uuid.uuid4()), "conf-missing"
    for method in (c.GetSandbox, c.StopSandbox, c.StartSandbox):
        code, details = rpc_code(method, sandbox_id=sid, sandbox_name=name)
        assert code == grpc.StatusCode.NOT_FOUND, (method, code, details)
    assert c.DeleteSandbox(sandbox_id=sid, sandbox_name=name).deleted is False


def test_concurrent_creates(driver, cleanup):
    c = driver.client
    boxes = [driver.sandbox() for _ in range(4)]
    for sb in boxes:
        cleanup(sb.id)
    results = [None] * len(boxes)

    def create(i):
        results[i] = rpc_code(c.CreateSandbox, sandbox=boxes[i])

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(boxes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert [r[0] for r in results] == [grpc.StatusCode.OK] * len(boxes), results
    ids = c.list_ids()
    assert all(sb.id in ids for sb in boxes)
    for sb in boxes:
        assert c.DeleteSandbox(sandbox_id=sb.id, sandbox_name=sb.name).deleted is True


# ---------------------------------------------------------------------------
# unknown fields


def test_unknown_fields_are_skipped(driver, cleanup):
    pb = driver.pb
    c = driver.client
    junk = unknown_fields()

    caps = pb.GetCapabilitiesResponse.FromString(c.raw("GetCapabilities", junk))
    assert caps.driver_name == driver.caps.driver_name

    code, _ = rpc_code(c.raw, "GetGatewayListenerRequirements", junk)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNIMPLEMENTED)

    sb = driver.sandbox()
    sid = cleanup(sb.id)
    # Unknown fields both in the request and inside the nested DriverSandbox.
    body = len_field(1, sb.SerializeToString() + junk) + junk
    c.raw("ValidateSandboxCreate", body)
    c.raw("CreateSandbox", body)

    ref = pb.GetSandboxRequest(sandbox_id=sid, sandbox_name=sb.name).SerializeToString()
    got = pb.GetSandboxResponse.FromString(c.raw("GetSandbox", ref + junk)).sandbox
    assert got.id == sid
    listed = pb.ListSandboxesResponse.FromString(c.raw("ListSandboxes", junk))
    assert sid in [s.id for s in listed.sandboxes]

    c.raw("StopSandbox", ref + junk)
    c.raw("StartSandbox", ref + junk)
    deleted = pb.DeleteSandboxResponse.FromString(c.raw("DeleteSandbox", ref + junk))
    assert deleted.deleted is True
    driver.alive()


# ---------------------------------------------------------------------------
# workspaces and passthrough config


def test_workspace_rpcs_optional(driver):
    c = driver.client
    code, resp = rpc_code(c.EnsureWorkspace, workspace="conformance")
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNIMPLEMENTED), (code, resp)
    code, resp = rpc_code(c.DeleteWorkspace, workspace="conformance")
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNIMPLEMENTED), (code, resp)
    driver.alive()


@pytest.mark.parametrize("field", ["driver_config", "platform_config"])
def test_config_passthrough_answers(driver, cleanup, field):
    """A driver may reject an opaque config block it does not understand
    (INVALID_ARGUMENT, with a message), but it must answer and keep running;
    if it accepts it in validation, it must accept it in CreateSandbox."""
    c = driver.client
    sb = driver.sandbox()
    getattr(sb.spec.template, field).update({
        "conformance_unknown_key": 1,
        "nested": {"deep": [1, "two", None, True], "empty": {}},
    })
    sid = cleanup(sb.id)
    code, details = rpc_code(c.ValidateSandboxCreate, sandbox=sb)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (code, details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert details, "INVALID_ARGUMENT without a message"
    else:
        c.CreateSandbox(sandbox=sb)
        assert c.GetSandbox(sandbox_id=sid).sandbox.id == sid
        assert c.DeleteSandbox(sandbox_id=sid, sandbox_name=sb.name).deleted is True
    driver.alive()
