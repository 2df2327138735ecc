"""GetSandbox and ListSandboxes (semantics.md §7, §17) against a real
PostgreSQL. Rows are written with the store's own SQL functions
(gw_sandbox_create / gw_sandbox_delete), so these tests need no compute
driver: paging and ordering, label selectors, workspace scoping,
all_workspaces, soft deletes and the stored spec/status round trip.

Each test gets its own database on the session cluster.
"""

import json
import uuid

import grpc
import pytest

from utils import h2c_args

pytestmark = pytest.mark.postgres

RPC_TIMEOUT = 10.0
BASE_TIME = "2030-01-01 00:00:00+00"


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture
def api(gw, stubs):
    ch = gw.channel()
    yield Api(stubs, ch)
    ch.close()


@pytest.fixture
def store(db, postgres, stubs):
    return Store(lambda q: postgres.sql(q, dbname=db), stubs)


class Api:
    def __init__(self, stubs, ch):
        self.pb = stubs.openshell_pb2
        self.stub = stubs.openshell_pb2_grpc.OpenShellStub(ch)

    def __getattr__(self, method):
        req_type = getattr(self.pb, method + "Request")
        rpc = getattr(self.stub, method)
        return lambda **kw: rpc(req_type(**kw), timeout=RPC_TIMEOUT)


class Store:
    """Writes rows directly, the way the gateway's create path will."""

    def __init__(self, sql, stubs):
        self.sql = sql
        self.pb = stubs.openshell_pb2

    def workspace(self, name, labels="{}"):
        self.sql(f"SELECT id FROM gw_workspace_create('{uuid.uuid4()}', '{name}', "
                 f"'{labels}', 'e2e')")

    def sandbox(self, name, workspace="default", labels=None, annotations=None, spec=None,
                status=None, phase="PROVISIONING", at=None):
        """Creates a live sandbox; |at| = seconds after BASE_TIME for its
        creation time. Returns its id."""
        sid = str(uuid.uuid4())
        spec = spec if spec is not None else self.pb.SandboxSpec(command=["sleep", "60"])
        status_sql = "NULL" if status is None else bytea(status.SerializeToString())
        self.sql(
            f"SELECT id FROM gw_sandbox_create('{sid}', '{workspace}', '{name}', 'owner-1', "
            f"'e2e', {jsonb(labels)}, {jsonb(annotations)}, "
            f"{bytea(spec.SerializeToString())}, '{{}}', 'docker', '{phase}', {status_sql})")
        if at is not None:
            self.sql(f"UPDATE sandboxes SET created_at = timestamptz '{BASE_TIME}' "
                     f"+ interval '{at} seconds' WHERE id = '{sid}'")
        return sid

    def delete(self, sid):
        assert self.sql(f"SELECT gw_sandbox_delete('{sid}', 'e2e', 'test')").strip() == "t"


def bytea(data):
    return f"'\\x{data.hex()}'::bytea"


def jsonb(d):
    text = json.dumps(d or {}).replace("'", "''")
    return f"'{text}'::jsonb"


def rpc_error(fn, **kw):
    with pytest.raises(grpc.RpcError) as info:
        fn(**kw)
    return info.value.code(), info.value.details()


def names(sandboxes):
    return [s.metadata.name for s in sandboxes]


# ---------------------------------------------------------------------------
# GetSandbox


def test_get_round_trips_the_record(api, store, stubs):
    pb = stubs.openshell_pb2
    spec = pb.SandboxSpec(log_level="debug", command=["python3", "-m", "http.server"],
                          tty=True, environment={"A": "1", "B": "two"},
                          template=pb.SandboxTemplate(image="busybox:1", labels={"x": "y"}))
    status = pb.SandboxStatus(sandbox_name="sb-one", agent_pod="pod-7",
                              conditions=[pb.SandboxCondition(type="Ready", status="True",
                                                              reason="DependenciesReady")],
                              phase=1)  # the phase column wins over the blob
    sid = store.sandbox("sb-one", labels={"app": "web", "example.com/tier": "1"},
                        annotations={"note": "hello world"}, spec=spec, status=status,
                        phase="READY")

    sb = api.GetSandbox(name="sb-one").sandbox
    m = sb.metadata
    assert m.id == sid
    assert m.name == "sb-one"
    assert m.workspace == "default"
    assert m.created_at_ms > 0
    assert m.resource_version == 1
    assert dict(m.labels) == {"app": "web", "example.com/tier": "1"}
    assert dict(m.annotations) == {"note": "hello world"}
    assert m.deletion_timestamp_ms == 0
    assert sb.spec == spec
    expected_status = pb.SandboxStatus()
    expected_status.CopyFrom(status)
    expected_status.phase = pb.SANDBOX_PHASE_READY
    assert sb.status == expected_status

    # workspace "" means default
    assert api.GetSandbox(name="sb-one", workspace="default").sandbox == sb


@pytest.mark.parametrize("phase", ["PROVISIONING", "READY", "ERROR", "DELETING", "STOPPING",
                                   "STOPPED", "STARTING", "UNKNOWN"])
def test_get_phase_without_status(api, store, stubs, phase):
    store.sandbox("sb-p", phase=phase)
    sb = api.GetSandbox(name="sb-p").sandbox
    assert sb.status.phase == stubs.openshell_pb2.SandboxPhase.Value("SANDBOX_PHASE_" + phase)
    assert sb.status.sandbox_name == ""
    assert list(sb.status.conditions) == []


def test_get_errors(api, store):
    store.workspace("other")
    store.sandbox("sb-x", workspace="other")
    assert rpc_error(api.GetSandbox, name="") == (
        grpc.StatusCode.INVALID_ARGUMENT, "name is required")
    assert rpc_error(api.GetSandbox, name="nope") == (
        grpc.StatusCode.NOT_FOUND, "sandbox not found")
    # It lives in another workspace.
    assert rpc_error(api.GetSandbox, name="sb-x") == (
        grpc.StatusCode.NOT_FOUND, "sandbox not found")
    assert api.GetSandbox(name="sb-x", workspace="other").sandbox.metadata.workspace == "other"
    assert rpc_error(api.GetSandbox, name="sb-x", workspace="ghost") == (
        grpc.StatusCode.NOT_FOUND, "workspace 'ghost' not found")


def test_get_hides_deleted(api, store):
    sid = store.sandbox("sb-d")
    assert api.GetSandbox(name="sb-d").sandbox.metadata.id == sid
    store.delete(sid)
    assert rpc_error(api.GetSandbox, name="sb-d") == (
        grpc.StatusCode.NOT_FOUND, "sandbox not found")
    # The name can be reused; the new record is the one returned.
    sid2 = store.sandbox("sb-d")
    assert api.GetSandbox(name="sb-d").sandbox.metadata.id == sid2


# ---------------------------------------------------------------------------
# ListSandboxes: ordering and paging


def test_list_orders_by_creation_then_name(api, store):
    store.sandbox("c", at=10)
    store.sandbox("b", at=20)
    store.sandbox("a", at=20)
    store.sandbox("d", at=5)
    store.sandbox("e", at=30)
    order = ["d", "c", "a", "b", "e"]
    assert names(api.ListSandboxes().sandboxes) == order
    assert names(api.ListSandboxes(limit=2).sandboxes) == order[0:2]
    assert names(api.ListSandboxes(limit=2, offset=2).sandboxes) == order[2:4]
    assert names(api.ListSandboxes(limit=2, offset=4).sandboxes) == order[4:]
    assert names(api.ListSandboxes(limit=2, offset=5).sandboxes) == []
    assert names(api.ListSandboxes(offset=4000000000).sandboxes) == []


def test_list_skips_deleted(api, store):
    store.sandbox("a", at=1)
    sid = store.sandbox("b", at=2)
    store.sandbox("c", at=3)
    store.delete(sid)
    assert names(api.ListSandboxes().sandboxes) == ["a", "c"]
    assert names(api.ListSandboxes(limit=1, offset=1).sandboxes) == ["c"]


def test_list_records_are_complete(api, store, stubs):
    spec = stubs.openshell_pb2.SandboxSpec(command=["true"], environment={"K": "v"})
    sid = store.sandbox("full", labels={"k": "v"}, annotations={"a": "b"}, spec=spec,
                        phase="STOPPED")
    (sb,) = api.ListSandboxes().sandboxes
    assert sb.metadata.id == sid and sb.metadata.workspace == "default"
    assert dict(sb.metadata.labels) == {"k": "v"}
    assert dict(sb.metadata.annotations) == {"a": "b"}
    assert sb.spec == spec
    assert sb.status.phase == stubs.openshell_pb2.SANDBOX_PHASE_STOPPED
    assert sb == api.GetSandbox(name="full").sandbox


def test_list_limit_default_and_cap(api, store):
    spec = store.pb.SandboxSpec(command=["sleep", "1"]).SerializeToString()
    store.sql("SELECT count(*) FROM generate_series(1, 1001) i, LATERAL gw_sandbox_create("
              "gen_random_uuid(), 'default', 'sb-' || i, 'owner', 'e2e', '{}', '{}', "
              f"{bytea(spec)}, '{{}}', 'docker', 'PROVISIONING', NULL) s")
    assert len(api.ListSandboxes().sandboxes) == 100
    assert len(api.ListSandboxes(limit=1000).sandboxes) == 1000
    assert len(api.ListSandboxes(limit=4000).sandboxes) == 1000
    assert len(api.ListSandboxes(limit=4000, offset=1000).sandboxes) == 1


# ---------------------------------------------------------------------------
# ListSandboxes: label selectors


@pytest.fixture
def labelled(store):
    store.sandbox("s1", labels={"app": "web", "env": "prod"}, at=1)
    store.sandbox("s2", labels={"app": "web", "env": "dev"}, at=2)
    store.sandbox("s3", labels={"app": "db", "env": "prod"}, at=3)
    store.sandbox("s4", labels={"app": "", "example.com/team": "core"}, at=4)
    store.sandbox("s5", at=5)
    return store


@pytest.mark.parametrize("selector,expected", [
    ("", ["s1", "s2", "s3", "s4", "s5"]),
    ("app=web", ["s1", "s2"]),
    ("app=web,env=prod", ["s1"]),
    ("env=prod", ["s1", "s3"]),
    ("  app = web ,  env = dev  ", ["s2"]),
    ("app=web,,", ["s1", "s2"]),
    (",", ["s1", "s2", "s3", "s4", "s5"]),
    ("app=", ["s4"]),
    ("example.com/team=core", ["s4"]),
    ("app=cache", []),
    ("missing=x", []),
    ("app=web,app=db", []),
    ("app=web,app=web", ["s1", "s2"]),
])
def test_list_label_selector(api, labelled, selector, expected):
    assert names(api.ListSandboxes(label_selector=selector).sandboxes) == expected


def test_list_selector_filters_before_paging(api, labelled):
    assert names(api.ListSandboxes(label_selector="env=prod", limit=1).sandboxes) == ["s1"]
    assert names(api.ListSandboxes(label_selector="env=prod", limit=1,
                                   offset=1).sandboxes) == ["s3"]
    assert names(api.ListSandboxes(label_selector="env=prod", offset=2).sandboxes) == []


@pytest.mark.parametrize("selector", [
    "app", "=web", "app!=web", "app==web", "app=web=x", "app in (web)", "!app",
    "Bad Key=x", "app=bad value", "app=" + "v" * 64, "-app=x",
    ",".join(f"k{i}=v" for i in range(65)),
])
def test_list_rejects_malformed_selector(api, labelled, selector):
    code, details = rpc_error(api.ListSandboxes, label_selector=selector)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details


def test_list_selector_pair_limit(api, labelled):
    at_limit = ",".join(["app=web"] * 64)
    assert names(api.ListSandboxes(label_selector=at_limit).sandboxes) == ["s1", "s2"]


# ---------------------------------------------------------------------------
# ListSandboxes: workspaces


@pytest.fixture
def spread(store):
    store.workspace("blue")
    store.workspace("green")
    store.sandbox("x", workspace="blue", at=3)
    store.sandbox("x", workspace="green", at=3)
    store.sandbox("y", workspace="default", at=1)
    store.sandbox("z", workspace="blue", at=2)
    store.sandbox("a", workspace="green", at=4, labels={"k": "v"})
    return store


def test_list_scoped_to_workspace(api, spread):
    assert names(api.ListSandboxes().sandboxes) == ["y"]
    assert names(api.ListSandboxes(workspace="default").sandboxes) == ["y"]
    blue = api.ListSandboxes(workspace="blue").sandboxes
    assert names(blue) == ["z", "x"]
    assert {s.metadata.workspace for s in blue} == {"blue"}
    assert names(api.ListSandboxes(workspace="green").sandboxes) == ["x", "a"]


def test_list_all_workspaces(api, spread):
    every = api.ListSandboxes(all_workspaces=True).sandboxes
    # creation time, then name, then workspace
    assert [(s.metadata.workspace, s.metadata.name) for s in every] == [
        ("default", "y"), ("blue", "z"), ("blue", "x"), ("green", "x"), ("green", "a")]
    assert [(s.metadata.workspace, s.metadata.name) for s in
            api.ListSandboxes(all_workspaces=True, limit=2, offset=2).sandboxes] == [
        ("blue", "x"), ("green", "x")]
    assert [(s.metadata.workspace, s.metadata.name) for s in
            api.ListSandboxes(all_workspaces=True, label_selector="k=v").sandboxes] == [
        ("green", "a")]


def test_list_all_workspaces_with_workspace_rejected(api, spread):
    code, details = rpc_error(api.ListSandboxes, all_workspaces=True, workspace="blue")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "all_workspaces" in details
    code, _ = rpc_error(api.ListSandboxes, all_workspaces=True, workspace="default")
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_list_unknown_workspace(api, spread):
    assert rpc_error(api.ListSandboxes, workspace="ghost") == (
        grpc.StatusCode.NOT_FOUND, "workspace 'ghost' not found")
    assert rpc_error(api.ListSandboxes, workspace="ghost", label_selector="k=v") == (
        grpc.StatusCode.NOT_FOUND, "workspace 'ghost' not found")
    assert rpc_error(api.ListSandboxes, workspace="ghost", label_selector="k=v,k=w") == (
        grpc.StatusCode.NOT_FOUND, "workspace 'ghost' not found")
    # An existing workspace with nothing matching is just empty.
    assert names(api.ListSandboxes(workspace="blue", label_selector="k=v").sandboxes) == []
    assert names(api.ListSandboxes(workspace="blue", offset=10).sandboxes) == []


def test_list_in_terminating_workspace(api, spread):
    """A TERMINATING workspace still lists what it holds."""
    code, _ = rpc_error(api.DeleteWorkspace, name="blue")
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert names(api.ListSandboxes(workspace="blue").sandboxes) == ["z", "x"]
    assert api.GetSandbox(name="z", workspace="blue").sandbox.metadata.workspace == "blue"
