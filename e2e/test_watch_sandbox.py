"""WatchSandbox (semantics.md §10): the current state first, then a fresh
snapshot on every change, ending when the record disappears. Rows are written
with the store's SQL functions, as the create/update paths do."""

import queue
import threading
import time

import grpc
import pytest

from test_sandboxes_read import Store, api, store  # noqa: F401 - fixtures

pytestmark = pytest.mark.postgres


def watch(api, stubs, **kw):
    """Starts WatchSandbox; returns (call, queue of responses or exceptions)."""
    req = stubs.openshell_pb2.WatchSandboxRequest(**kw)
    call = api.stub.WatchSandbox(req, timeout=30)
    q = queue.Queue()

    def reader():
        try:
            for ev in call:
                q.put(ev)
            q.put("END")
        except grpc.RpcError as e:
            q.put(e)

    threading.Thread(target=reader, daemon=True).start()
    return call, q


def next_item(q, timeout=10):
    return q.get(timeout=timeout)


def until_phase(q, phase, last_rv=0, timeout=10):
    """Reads snapshots until one shows |phase|. A change that lands between
    the watch's subscription and its first read may be reported twice (by
    design: never lost, possibly repeated), so earlier states may repeat;
    resource versions never go back. Returns the matching snapshot."""
    deadline = time.monotonic() + timeout
    while True:
        item = next_item(q, max(0.1, deadline - time.monotonic()))
        assert not isinstance(item, (str, Exception)), item
        rv = item.sandbox.metadata.resource_version
        assert rv >= last_rv
        last_rv = rv
        if item.sandbox.status.phase == phase:
            return item


def update(store, sid, phase, reason):
    store.sql(f"SELECT id FROM gw_sandbox_update('{sid}', 0, '{phase}', NULL, NULL, "
              f"'sandbox.phase_changed', 'e2e', '{reason}', '{{}}')")


def wait_events_ready(gw):
    deadline = time.monotonic() + 10
    while '"events.ready"' not in gw.log_text():
        assert time.monotonic() < deadline, "event hub never became ready"
        time.sleep(0.05)


def test_watch_sends_snapshot_then_every_change(gw, api, store, stubs):
    wait_events_ready(gw)
    pb = stubs.openshell_pb2
    sid = store.sandbox("watched", labels={"app": "web"})
    call, q = watch(api, stubs, id=sid, follow_status=True)
    first = next_item(q)
    assert first.WhichOneof("payload") == "sandbox"
    assert first.sandbox.metadata.id == sid
    assert first.sandbox.status.phase == pb.SANDBOX_PHASE_PROVISIONING

    update(store, sid, "READY", "up")
    second = until_phase(q, pb.SANDBOX_PHASE_READY, first.sandbox.metadata.resource_version)
    assert second.sandbox.metadata.resource_version > first.sandbox.metadata.resource_version

    update(store, sid, "STOPPING", "stop")
    third = until_phase(q, pb.SANDBOX_PHASE_STOPPING, second.sandbox.metadata.resource_version)

    # Deleting the record ends the stream normally (after any repeats).
    store.delete(sid)
    while True:
        item = next_item(q)
        if item == "END":
            break
        assert item.sandbox.metadata.resource_version >= third.sandbox.metadata.resource_version


def test_watch_stop_on_terminal_ends_at_ready(gw, api, store, stubs):
    wait_events_ready(gw)
    sid = store.sandbox("to-ready")
    call, q = watch(api, stubs, id=sid, follow_status=True, stop_on_terminal=True)
    assert next_item(q).sandbox.status.phase == stubs.openshell_pb2.SANDBOX_PHASE_PROVISIONING
    update(store, sid, "READY", "up")
    until_phase(q, stubs.openshell_pb2.SANDBOX_PHASE_READY)
    assert next_item(q) == "END"


def test_watch_without_follow_sends_one_snapshot_and_stays_open(gw, api, store, stubs):
    wait_events_ready(gw)
    sid = store.sandbox("quiet")
    call, q = watch(api, stubs, id=sid)
    assert next_item(q).sandbox.metadata.id == sid
    update(store, sid, "READY", "up")
    with pytest.raises(queue.Empty):
        q.get(timeout=1.0)
    call.cancel()


@pytest.mark.parametrize("wid,code", [
    ("", grpc.StatusCode.INVALID_ARGUMENT),
    ("not-a-uuid", grpc.StatusCode.NOT_FOUND),
    ("7f0e8a52-0b8e-4c55-9a53-3f1d2b6c0a11", grpc.StatusCode.NOT_FOUND),
])
def test_watch_bad_ids(gw, api, stubs, wid, code):
    wait_events_ready(gw)
    call, q = watch(api, stubs, id=wid)
    err = next_item(q)
    assert isinstance(err, grpc.RpcError)
    assert err.code() == code


def test_watch_many_changes_coalesce_but_end_at_latest(gw, api, store, stubs):
    """A burst of changes may be coalesced, but the last snapshot seen is the
    latest state."""
    wait_events_ready(gw)
    pb = stubs.openshell_pb2
    sid = store.sandbox("busy")
    call, q = watch(api, stubs, id=sid, follow_status=True)
    next_item(q)
    for i in range(30):
        update(store, sid, "READY" if i % 2 else "PROVISIONING", f"flip-{i}")
    update(store, sid, "ERROR", "final")
    deadline = time.monotonic() + 15
    last = None
    while time.monotonic() < deadline:
        item = next_item(q)
        last = item
        if item.sandbox.status.phase == pb.SANDBOX_PHASE_ERROR:
            break
    assert last.sandbox.status.phase == pb.SANDBOX_PHASE_ERROR
    call.cancel()
