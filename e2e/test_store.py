"""Store startup: concurrent migrations, failing migrations, bad URLs."""
import threading
import uuid
from pathlib import Path

import pytest


def fresh_db(postgres):
    name = "st_" + uuid.uuid4().hex[:12]
    postgres.sql(f"CREATE DATABASE {name}")
    return name, f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/{name}"


@pytest.mark.postgres
def test_two_gateways_migrate_the_same_database_at_once(postgres, gateway_factory):
    name, url = fresh_db(postgres)
    gws, errors = [], []

    def start(i):
        try:
            gws.append(gateway_factory(["--disable-tls", "--port", "0", "--db-url", url],
                                       name=f"gw{i}"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(gws) == 3
    rows = postgres.sql("SELECT version, name FROM schema_migrations ORDER BY version", dbname=name)
    migrations = sorted((Path(__file__).resolve().parent.parent / "sql").glob("[0-9]*.sql"))
    assert rows.strip().splitlines() == [
        f"{int(p.stem.split('_')[0])}|{p.stem}" for p in migrations]
    # Exactly one default workspace, and every gateway serves.
    assert postgres.sql("SELECT count(*) FROM workspaces WHERE name = 'default'",
                        dbname=name).strip() == "1"
    applied = sum(gw.log_text().count('"store.migration_apply"') for gw in gws)
    assert applied == len(migrations)  # each applied once, by one gateway


@pytest.mark.postgres
def test_failing_migration_stops_the_gateway_with_its_error(postgres, gateway_factory):
    name, url = fresh_db(postgres)
    # Something in the way of migration 001: it must fail, roll back, and the
    # gateway must exit non-zero naming the migration.
    postgres.sql("CREATE TABLE workspaces (x int)", dbname=name)
    gw = gateway_factory(["--disable-tls", "--port", "0", "--db-url", url], wait=False)
    code = gw.wait_exit(30)
    assert code is not None and code != 0
    log = gw.log_text()
    assert "store.migration_failed" in log
    assert "001_init" in log
    # Nothing half-applied.
    assert postgres.sql("SELECT count(*) FROM schema_migrations", dbname=name).strip() == "0"
    assert postgres.sql("SELECT to_regclass('sandbox_events') IS NULL", dbname=name).strip() == "t"


def test_db_url_needing_dns_is_refused(gateway_factory):
    gw = gateway_factory(["--disable-tls", "--port", "0", "--db-url",
                          "postgresql://u@db.example.invalid:5432/x"], wait=False)
    code = gw.wait_exit(15)
    assert code is not None and code != 0
    assert "DNS" in gw.log_text()


@pytest.mark.postgres
def test_gateway_waits_for_an_unreachable_database_without_serving(postgres, gateway_factory):
    # Nothing listens on this port: the gateway keeps retrying, does not open
    # its listeners, and still stops cleanly on SIGTERM.
    gw = gateway_factory(["--disable-tls", "--port", "0", "--db-url",
                          "postgresql://u@127.0.0.1:1/none"], wait=False)
    assert gw.wait_exit(3) is None
    log = gw.log_text()
    assert "store.conn_reset" in log
    assert "gateway.ready" not in log
    assert gw.stop() == 0


def test_gateway_runs_its_embedded_database(gateway_factory, stubs, tmp_path_factory):
    """Without --db-url the gateway initdb's and runs its own PostgreSQL under
    the state dir, serves store-backed RPCs, and stops the server on exit."""
    import os
    import subprocess
    import tempfile

    # Not under pytest's 0700 basetemp: the postgres user must traverse it.
    state = Path(tempfile.mkdtemp(prefix="openshell-e2e-embedded-"))
    os.chmod(state, 0o755)
    try:
        gw = gateway_factory(["--disable-tls", "--port", "0", "--state-dir", state / "gw"],
                             embedded_db=True, state_dir=False, timeout=60)
        assert '"database":"embedded"' in gw.log_text()
        pb, rpc = stubs.openshell_pb2, stubs.openshell_pb2_grpc
        ch = gw.channel()
        try:
            stub = rpc.OpenShellStub(ch)
            stub.CreateWorkspace(pb.CreateWorkspaceRequest(name="emb-ws"), timeout=10)
            names = [w.metadata.name for w in
                     stub.ListWorkspaces(pb.ListWorkspacesRequest(), timeout=10).workspaces]
            assert "emb-ws" in names and "default" in names
        finally:
            ch.close()
        assert (state / "gw" / "pg" / "data" / "PG_VERSION").exists()
        assert gw.stop() == 0
        left = subprocess.run(["pgrep", "-f", f"postgres -D {state}/gw/pg/data"],
                              capture_output=True, text=True).stdout.strip()
        assert left == "", f"postgres still running: {left}"
    finally:
        subprocess.run(["rm", "-rf", str(state)], check=False)
