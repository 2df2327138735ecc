"""Workspaces and memberships (semantics.md §5, §7, §17) against a real
PostgreSQL: CRUD, validation, paging and selectors, the default workspace,
two-phase delete while sandboxes remain, members and the 1000-member cap.

Each test gets its own database on the session cluster, so tests do not
see each other's rows. Every caller is the local-dev user, a platform
admin: the member-only paths are not reachable from here.
"""

import re
import subprocess
import time
import uuid

import grpc
import pytest

from utils import PG_BIN, h2c_args, wait_until

pytestmark = pytest.mark.postgres

RPC_TIMEOUT = 10.0
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
ACTIVE, TERMINATING = 1, 2  # openshell.datamodel.v1.WorkspacePhase
ROLE_UNSPECIFIED, ROLE_USER, ROLE_ADMIN = 0, 1, 2  # openshell.v1.WorkspaceRole


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture
def api(gw, stubs):
    ch = gw.channel()
    yield Api(stubs, ch)
    ch.close()


@pytest.fixture
def sql(db, postgres):
    """sql(query) runs |query| in this test's database; returns stdout."""
    return lambda q: postgres.sql(q, dbname=db)


class Api:
    """Thin wrapper: api.CreateWorkspace(name="x") builds the request from
    keyword arguments and calls the RPC with a bounded timeout."""

    def __init__(self, stubs, ch):
        self.pb = stubs.openshell_pb2
        self.stub = stubs.openshell_pb2_grpc.OpenShellStub(ch)

    def __getattr__(self, method):
        req_type = getattr(self.pb, method + "Request")
        rpc = getattr(self.stub, method)
        return lambda **kw: rpc(req_type(**kw), timeout=RPC_TIMEOUT)


def rpc_error(fn, **kw):
    """Runs an RPC that must fail; returns (code, details)."""
    with pytest.raises(grpc.RpcError) as info:
        fn(**kw)
    return info.value.code(), info.value.details()


def names(workspaces):
    return [w.metadata.name for w in workspaces]


def insert_sandbox(sql, workspace, name):
    """A live sandbox row through the store's own SQL function; returns its id."""
    sid = str(uuid.uuid4())
    sql(f"SELECT id FROM gw_sandbox_create('{sid}', '{workspace}', '{name}', 'owner', 'e2e', "
        f"'{{}}', '{{}}', '\\x'::bytea, '{{}}', 'docker', 'PROVISIONING', NULL)")
    return sid


# ---------------------------------------------------------------------------
# CRUD


def test_create_get_list_delete(api):
    created = api.CreateWorkspace(name="team-a", labels={"team": "a", "tier": "gold"}).workspace
    m = created.metadata
    assert UUID_RE.match(m.id)
    assert m.name == "team-a"
    assert m.created_at_ms > 0
    assert dict(m.labels) == {"team": "a", "tier": "gold"}
    assert m.resource_version >= 1
    assert m.workspace == ""
    assert m.deletion_timestamp_ms == 0
    assert created.status.phase == ACTIVE

    got = api.GetWorkspace(name="team-a").workspace
    assert got == created

    listed = api.ListWorkspaces().workspaces
    assert names(listed) == ["default", "team-a"]
    assert listed[1] == created

    assert api.DeleteWorkspace(name="team-a").deleted is True
    assert rpc_error(api.GetWorkspace, name="team-a") == (
        grpc.StatusCode.NOT_FOUND, "workspace 'team-a' not found")
    assert names(api.ListWorkspaces().workspaces) == ["default"]


def test_default_workspace_exists(api):
    w = api.GetWorkspace(name="default").workspace
    assert w.metadata.name == "default"
    assert w.status.phase == ACTIVE


@pytest.mark.parametrize("name", [
    "Team", "team_a", "-team", "team-", "te--am", "a" * 20, "tëam", "team a",
])
def test_create_rejects_bad_names(api, name):
    code, details = rpc_error(api.CreateWorkspace, name=name)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details


def test_create_name_limits(api):
    assert rpc_error(api.CreateWorkspace, name="") == (
        grpc.StatusCode.INVALID_ARGUMENT, "name is required")
    assert api.CreateWorkspace(name="a" * 19).workspace.metadata.name == "a" * 19
    assert api.CreateWorkspace(name="x").workspace.metadata.name == "x"
    assert api.CreateWorkspace(name="0-9").workspace.metadata.name == "0-9"


@pytest.mark.parametrize("labels", [
    {"Bad Key": "v"},
    {"k": "bad value"},
    {"k": "v" * 64},
    {"-k": "v"},
    {"UPPER.example.com/k": "v"},
    {"": "v"},
    {f"k{i}": "v" for i in range(129)},
])
def test_create_rejects_bad_labels(api, labels):
    code, _ = rpc_error(api.CreateWorkspace, name="team-l", labels=labels)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_error(api.GetWorkspace, name="team-l")[0] == grpc.StatusCode.NOT_FOUND


def test_create_accepts_label_forms(api, sql):
    labels = {"example.com/app": "web", "empty": "", "a_b.c-d": "X.y_z-1"}
    w = api.CreateWorkspace(name="team-l", labels=labels).workspace
    assert dict(w.metadata.labels) == labels
    # Stored as one JSON object (jsonb), not text.
    assert sql("SELECT jsonb_typeof(labels) FROM workspaces WHERE name = 'team-l'").strip() == \
        "object"


def test_create_duplicate(api):
    api.CreateWorkspace(name="dup")
    assert rpc_error(api.CreateWorkspace, name="dup") == (
        grpc.StatusCode.ALREADY_EXISTS, "workspace 'dup' already exists")
    assert rpc_error(api.CreateWorkspace, name="default") == (
        grpc.StatusCode.ALREADY_EXISTS, "workspace 'default' already exists")


def test_get_requires_name_and_reports_missing(api):
    assert rpc_error(api.GetWorkspace, name="") == (
        grpc.StatusCode.INVALID_ARGUMENT, "name is required")
    assert rpc_error(api.GetWorkspace, name="nope") == (
        grpc.StatusCode.NOT_FOUND, "workspace 'nope' not found")


# ---------------------------------------------------------------------------
# listing


def test_list_paging_in_creation_order(api, sql):
    for n in ("w-c", "w-a", "w-b", "w-d"):
        api.CreateWorkspace(name=n)
    # Same creation time for w-a and w-b: ties go by name.
    sql("UPDATE workspaces SET created_at = '2030-01-01' WHERE name IN ('w-a', 'w-b')")
    sql("UPDATE workspaces SET created_at = '2030-01-02' WHERE name = 'w-c'")
    sql("UPDATE workspaces SET created_at = '2029-12-31' WHERE name = 'w-d'")
    order = ["default", "w-d", "w-a", "w-b", "w-c"]
    assert names(api.ListWorkspaces().workspaces) == order
    assert names(api.ListWorkspaces(limit=2).workspaces) == order[:2]
    assert names(api.ListWorkspaces(limit=2, offset=2).workspaces) == order[2:4]
    assert names(api.ListWorkspaces(limit=2, offset=4).workspaces) == order[4:]
    assert names(api.ListWorkspaces(offset=5).workspaces) == []
    assert names(api.ListWorkspaces(offset=1000000).workspaces) == []


def test_list_limit_default_and_cap(api, sql):
    sql("INSERT INTO workspaces (id, name) "
        "SELECT gen_random_uuid(), 'bulk-' || i FROM generate_series(1, 1100) i")
    assert len(api.ListWorkspaces().workspaces) == 100
    assert len(api.ListWorkspaces(limit=5000).workspaces) == 1000
    assert len(api.ListWorkspaces(limit=5000, offset=1000).workspaces) == 101


def test_list_label_selector(api):
    api.CreateWorkspace(name="s-1", labels={"team": "a", "env": "prod"})
    api.CreateWorkspace(name="s-2", labels={"team": "a", "env": "dev"})
    api.CreateWorkspace(name="s-3", labels={"team": "b", "env": "prod"})
    api.CreateWorkspace(name="s-4", labels={"team": "", "example.com/x": "1"})

    def sel(s, **kw):
        return names(api.ListWorkspaces(label_selector=s, **kw).workspaces)

    assert sel("") == ["default", "s-1", "s-2", "s-3", "s-4"]
    assert sel("team=a") == ["s-1", "s-2"]
    assert sel("team=a,env=prod") == ["s-1"]
    assert sel(" team = a , env = prod ,") == ["s-1"]
    assert sel("team=a,,") == ["s-1", "s-2"]
    assert sel("team=") == ["s-4"]
    assert sel("example.com/x=1") == ["s-4"]
    assert sel("team=c") == []
    assert sel("team=a,team=b") == []
    assert sel("team=a,team=a") == ["s-1", "s-2"]
    # Filtering happens before paging.
    assert sel("env=prod", limit=1, offset=1) == ["s-3"]


@pytest.mark.parametrize("selector", [
    "team", "=a", "team!=a", "team=a=b", "Bad Key=a", "team=bad value", "team in (a)",
    ",".join(f"k{i}=v" for i in range(65)),
])
def test_list_rejects_malformed_selector(api, selector):
    code, details = rpc_error(api.ListWorkspaces, label_selector=selector)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details


# ---------------------------------------------------------------------------
# delete


def test_default_cannot_be_deleted(api):
    assert rpc_error(api.DeleteWorkspace, name="default") == (
        grpc.StatusCode.FAILED_PRECONDITION, "the default workspace cannot be deleted")
    assert api.GetWorkspace(name="default").workspace.status.phase == ACTIVE


def test_delete_missing_and_required(api):
    assert rpc_error(api.DeleteWorkspace, name="nope") == (
        grpc.StatusCode.NOT_FOUND, "workspace 'nope' not found")
    assert rpc_error(api.DeleteWorkspace, name="") == (
        grpc.StatusCode.INVALID_ARGUMENT, "name is required")


def test_delete_waits_for_sandboxes(api, sql):
    before = api.CreateWorkspace(name="busy").workspace
    sid = insert_sandbox(sql, "busy", "sb-1")

    expected = (grpc.StatusCode.FAILED_PRECONDITION,
                "workspace 'busy' still holds sandboxes; it stays TERMINATING until they are "
                "removed")
    assert rpc_error(api.DeleteWorkspace, name="busy") == expected
    w = api.GetWorkspace(name="busy").workspace
    assert w.status.phase == TERMINATING
    assert w.metadata.deletion_timestamp_ms >= before.metadata.created_at_ms
    assert w.metadata.resource_version > before.metadata.resource_version
    listed = {x.metadata.name: x for x in api.ListWorkspaces().workspaces}
    assert listed["busy"].status.phase == TERMINATING

    # A repeated call keeps it TERMINATING (the marking step is skipped).
    assert rpc_error(api.DeleteWorkspace, name="busy") == expected
    again = api.GetWorkspace(name="busy").workspace
    assert again.metadata.deletion_timestamp_ms == w.metadata.deletion_timestamp_ms
    assert again.metadata.resource_version == w.metadata.resource_version

    # No new sandboxes in a TERMINATING workspace.
    with pytest.raises(Exception, match="workspace_terminating"):
        insert_sandbox(sql, "busy", "sb-2")

    assert sql(f"SELECT gw_sandbox_delete('{sid}', 'e2e', 'test')").strip() == "t"
    assert api.DeleteWorkspace(name="busy").deleted is True
    assert rpc_error(api.GetWorkspace, name="busy")[0] == grpc.StatusCode.NOT_FOUND
    # The name is free again, with no history attached.
    fresh = api.CreateWorkspace(name="busy").workspace
    assert fresh.metadata.id != before.metadata.id
    assert fresh.status.phase == ACTIVE
    assert list(api.ListWorkspaceMembers(workspace="busy").members) == []


def test_delete_removes_members(api):
    api.CreateWorkspace(name="gone")
    api.AddWorkspaceMember(workspace="gone", principal_subject="alice", role=ROLE_USER)
    assert api.DeleteWorkspace(name="gone").deleted is True
    assert rpc_error(api.ListWorkspaceMembers, workspace="gone") == (
        grpc.StatusCode.NOT_FOUND, "workspace 'gone' not found")
    api.CreateWorkspace(name="gone")
    assert list(api.ListWorkspaceMembers(workspace="gone").members) == []


# ---------------------------------------------------------------------------
# members


def test_members_add_list_remove(api):
    api.CreateWorkspace(name="crew")
    alice = api.AddWorkspaceMember(workspace="crew", principal_subject="alice",
                                   role=ROLE_USER).member
    assert UUID_RE.match(alice.metadata.id)
    assert alice.metadata.name == "alice"
    assert alice.metadata.workspace == "crew"
    assert alice.metadata.created_at_ms > 0
    assert alice.metadata.resource_version >= 1
    assert alice.principal_subject == "alice"
    assert alice.role == ROLE_USER
    bob = api.AddWorkspaceMember(workspace="crew", principal_subject="bob",
                                 role=ROLE_ADMIN).member
    assert bob.role == ROLE_ADMIN

    members = api.ListWorkspaceMembers(workspace="crew").members
    assert [m.principal_subject for m in members] == ["alice", "bob"]
    assert members[0] == alice and members[1] == bob

    assert api.RemoveWorkspaceMember(workspace="crew", principal_subject="alice").removed is True
    assert api.RemoveWorkspaceMember(workspace="crew", principal_subject="alice").removed is False
    assert api.RemoveWorkspaceMember(workspace="crew", principal_subject="zed").removed is False
    assert [m.principal_subject for m in
            api.ListWorkspaceMembers(workspace="crew").members] == ["bob"]
    # Re-adding after removal is a fresh record.
    again = api.AddWorkspaceMember(workspace="crew", principal_subject="alice",
                                   role=ROLE_ADMIN).member
    assert again.metadata.id != alice.metadata.id and again.role == ROLE_ADMIN


def test_members_default_workspace(api):
    m = api.AddWorkspaceMember(principal_subject="carol", role=ROLE_USER).member
    assert m.metadata.workspace == "default"
    assert [x.principal_subject for x in api.ListWorkspaceMembers().members] == ["carol"]
    assert [x.principal_subject for x in
            api.ListWorkspaceMembers(workspace="default").members] == ["carol"]
    assert api.RemoveWorkspaceMember(principal_subject="carol").removed is True
    assert list(api.ListWorkspaceMembers().members) == []


def test_member_add_validation(api):
    api.CreateWorkspace(name="crew")
    assert rpc_error(api.AddWorkspaceMember, workspace="crew", principal_subject="",
                     role=ROLE_USER) == (
        grpc.StatusCode.INVALID_ARGUMENT, "principal_subject is required")
    code, _ = rpc_error(api.AddWorkspaceMember, workspace="crew", principal_subject="dan",
                        role=ROLE_UNSPECIFIED)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = rpc_error(api.AddWorkspaceMember, workspace="crew", principal_subject="dan", role=7)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(api.ListWorkspaceMembers(workspace="crew").members) == []


def test_member_duplicate(api):
    api.CreateWorkspace(name="crew")
    api.AddWorkspaceMember(workspace="crew", principal_subject="erin", role=ROLE_USER)
    code, details = rpc_error(api.AddWorkspaceMember, workspace="crew", principal_subject="erin",
                              role=ROLE_ADMIN)
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "erin" in details and "already exists" in details
    members = api.ListWorkspaceMembers(workspace="crew").members
    assert [(m.principal_subject, m.role) for m in members] == [("erin", ROLE_USER)]


def test_members_missing_workspace(api):
    assert rpc_error(api.AddWorkspaceMember, workspace="nope", principal_subject="x",
                     role=ROLE_USER) == (grpc.StatusCode.NOT_FOUND, "workspace 'nope' not found")
    assert rpc_error(api.RemoveWorkspaceMember, workspace="nope", principal_subject="x") == (
        grpc.StatusCode.NOT_FOUND, "workspace 'nope' not found")
    assert rpc_error(api.ListWorkspaceMembers, workspace="nope") == (
        grpc.StatusCode.NOT_FOUND, "workspace 'nope' not found")
    assert rpc_error(api.RemoveWorkspaceMember, workspace="default", principal_subject="") == (
        grpc.StatusCode.INVALID_ARGUMENT, "principal_subject is required")


def test_members_paging(api, sql):
    api.CreateWorkspace(name="crew")
    for s in ("m-3", "m-1", "m-2", "m-0"):
        api.AddWorkspaceMember(workspace="crew", principal_subject=s, role=ROLE_USER)
    sql("UPDATE workspace_members SET created_at = '2030-01-01' "
        "WHERE principal_subject IN ('m-1', 'm-2', 'm-3')")
    sql("UPDATE workspace_members SET created_at = '2029-01-01' WHERE principal_subject = 'm-0'")

    def page(**kw):
        return [m.principal_subject for m in
                api.ListWorkspaceMembers(workspace="crew", **kw).members]

    assert page() == ["m-0", "m-1", "m-2", "m-3"]
    assert page(limit=2) == ["m-0", "m-1"]
    assert page(limit=2, offset=2) == ["m-2", "m-3"]
    assert page(offset=4) == []  # past the end of an existing workspace: empty, not NOT_FOUND


def test_member_limit(api, sql):
    api.CreateWorkspace(name="big")
    sql("INSERT INTO workspace_members (id, workspace_id, principal_subject, role) "
        "SELECT gen_random_uuid(), w.id, 'user-' || i, 'USER' "
        "FROM workspaces w, generate_series(1, 999) i WHERE w.name = 'big'")
    # The 1000th member still fits...
    api.AddWorkspaceMember(workspace="big", principal_subject="last", role=ROLE_USER)
    # ...the 1001st does not.
    assert rpc_error(api.AddWorkspaceMember, workspace="big", principal_subject="one-more",
                     role=ROLE_USER) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "workspace 'big' has the maximum of 1000 members")
    assert len(api.ListWorkspaceMembers(workspace="big", limit=1000).members) == 1000
    assert len(api.ListWorkspaceMembers(workspace="big", limit=5000).members) == 1000
    assert len(api.ListWorkspaceMembers(workspace="big").members) == 100
    # Removing one makes room again.
    assert api.RemoveWorkspaceMember(workspace="big", principal_subject="user-1").removed
    api.AddWorkspaceMember(workspace="big", principal_subject="one-more", role=ROLE_USER)


def test_membership_events_recorded(api, sql):
    """The store functions write audit events with the caller as actor."""
    api.CreateWorkspace(name="audit")
    api.AddWorkspaceMember(workspace="audit", principal_subject="fay", role=ROLE_USER)
    api.RemoveWorkspaceMember(workspace="audit", principal_subject="fay")
    rows = sql("SELECT kind || ' ' || actor FROM sandbox_events WHERE workspace = 'audit' "
               "ORDER BY id").split()
    assert rows == ["workspace.created", "unauthenticated-local-dev",
                    "workspace.member_added", "unauthenticated-local-dev",
                    "workspace.member_removed", "unauthenticated-local-dev"]


# ---------------------------------------------------------------------------
# calls that end while their query is in flight


def test_cancelled_calls_while_queries_wait(api, gw, postgres, db, stubs):
    """Clients give up (deadline) while the gateway's queries wait on a
    table lock: the results that arrive later must be dropped without
    touching the freed calls, and the gateway keeps serving."""
    api.CreateWorkspace(name="slow")
    locker = subprocess.Popen(
        [str(PG_BIN / "psql"), "-X", "-q", "-h", postgres.host, "-p", str(postgres.port),
         "-U", postgres.user, "-d", db, "-c",
         "BEGIN; LOCK TABLE workspaces, workspace_members IN ACCESS EXCLUSIVE MODE; "
         "SELECT pg_sleep(4); COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: postgres.sql(
            "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' "
            f"AND relation = 'workspaces'::regclass", dbname=db).strip() == "1",
            timeout=10, what="the table lock")
        pb = stubs.openshell_pb2
        stub = stubs.openshell_pb2_grpc.OpenShellStub(gw.channel())
        calls = [
            (stub.GetWorkspace, pb.GetWorkspaceRequest(name="slow")),
            (stub.ListWorkspaces, pb.ListWorkspacesRequest()),
            (stub.CreateWorkspace, pb.CreateWorkspaceRequest(name="late")),
            (stub.AddWorkspaceMember, pb.AddWorkspaceMemberRequest(
                workspace="slow", principal_subject="x", role=ROLE_USER)),
            (stub.ListWorkspaceMembers, pb.ListWorkspaceMembersRequest(workspace="slow")),
            (stub.DeleteWorkspace, pb.DeleteWorkspaceRequest(name="doomed")),
        ]
        for rpc, req in calls:  # 6 x 0.2 s, well inside the 4 s lock
            with pytest.raises(grpc.RpcError) as info:
                rpc(req, timeout=0.2)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        _, err = locker.communicate(timeout=30)
    assert locker.returncode == 0, err
    time.sleep(0.5)  # let the held-back results come in and be dropped
    assert gw.running
    assert api.GetWorkspace(name="slow").workspace.metadata.name == "slow"
    # The cancelled writes either happened or not, but the gateway answers.
    assert "default" in names(api.ListWorkspaces().workspaces)
