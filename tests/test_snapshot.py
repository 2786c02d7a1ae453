"""The snapshot fast path: a file-copy clone taken only when the database is ours alone, dumped, sealed, and
swapped back in by the restore only when it is provably what the manifest describes (else pg_restore)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils import backup, fingerprint, restore
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import ConnInfo
from conftest import run_alembic, seed
from pgcluster import APP, APP_PASSWORD, MIGRATOR, MIGRATOR_PASSWORD, PgCluster


def conninfo(pg: PgCluster, dbname: str) -> ConnInfo:
    return ConnInfo(host="127.0.0.1", port=pg.port, dbname=dbname, user=MIGRATOR, password=MIGRATOR_PASSWORD)


def query(pg: PgCluster, statement: str, params: tuple = (), dbname: str = "postgres"):
    with contextlib.closing(pg.connect(dbname)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else None


def databases(pg: PgCluster) -> set[str]:
    return {row[0] for row in query(pg, "SELECT datname FROM pg_database")}


def fp(pg: PgCluster, dbname: str) -> dict:
    with contextlib.closing(pg.connect(dbname)) as conn:
        return fingerprint.database_fingerprint(conn)


@pytest.fixture
def seeded(pg: PgCluster, dbname: str) -> str:
    run_alembic(pg, dbname, "upgrade", "0001")
    seed(pg, dbname)
    return dbname


def backed_up_clone(pg: PgCluster, dbname: str, tmp_path: Path) -> dict:
    snap = backup.take_snapshot(conninfo(pg, dbname))
    assert snap["snapshot_database"], snap["snapshot_skipped"]
    request = backup.BackupRequest(
        environment="staging", directory=str(tmp_path / "backups"), source_database=snap["snapshot_database"]
    )
    return backup.run_backup(conninfo(pg, dbname), request)


def test_clone_is_private_sealed_and_swapped_back_by_the_restore(pg, seeded, tmp_path):
    before = fp(pg, seeded)
    result = backed_up_clone(pg, seeded, tmp_path)
    clone = result["snapshot_database"]
    manifest = result["manifest"]
    assert manifest["database"] == seeded and manifest["snapshot_database"] == clone
    assert fingerprint.compare(manifest["tables"], before) == []
    ((allow, public_connect, oid),) = query(
        pg,
        "SELECT datallowconn, has_database_privilege(%s, datname, 'CONNECT'), oid FROM pg_database "
        "WHERE datname = %s",
        (APP, clone),
    )
    assert (allow, public_connect, oid) == (False, False, manifest["snapshot_oid"])

    query(pg, "DELETE FROM meeting_participants", dbname=seeded)  # the "failed migration"
    done = restore.run_restore(
        conninfo(pg, seeded), restore.RestoreRequest(manifest_path=result["manifest_path"])
    )

    assert done["method"] == "snapshot" and done["fingerprint_ok"] and done["restore_seconds"] == 0.0
    assert fingerprint.compare(before, fp(pg, seeded)) == []
    assert clone not in databases(pg) and done["forensic_database"] in databases(pg)
    # The application can connect again: the clone's private ACL does not survive the swap.
    with (
        contextlib.closing(pg.connect(seeded, user=APP, password=APP_PASSWORD)) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT count(*) FROM users")
        assert cur.fetchone()[0] > 0


def test_another_session_means_no_clone_and_nobody_is_terminated(pg, seeded):
    dbs_before = databases(pg)
    with contextlib.closing(pg.connect(seeded, user=APP, password=APP_PASSWORD)) as app:
        snap = backup.take_snapshot(conninfo(pg, seeded))
        assert snap["snapshot_database"] is None
        assert "1 other session(s) of meetings_app" in snap["snapshot_skipped"]
        with app.cursor() as cur:  # still alive
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    assert databases(pg) == dbs_before


@pytest.mark.parametrize("tamper", ["unsealed", "changed_while_sealed", "dropped"])
def test_a_clone_that_cannot_be_trusted_falls_back_to_pg_restore(pg, seeded, tmp_path, tamper):
    before = fp(pg, seeded)
    result = backed_up_clone(pg, seeded, tmp_path)
    clone = result["snapshot_database"]
    if tamper == "dropped":
        query(pg, f'DROP DATABASE "{clone}"')
    else:
        query(pg, f'ALTER DATABASE "{clone}" WITH ALLOW_CONNECTIONS true')
        query(pg, "UPDATE users SET name = 'x'", dbname=clone)
        if tamper == "changed_while_sealed":
            query(pg, f'ALTER DATABASE "{clone}" WITH ALLOW_CONNECTIONS false')
    query(pg, "DELETE FROM meeting_participants", dbname=seeded)

    done = restore.run_restore(
        conninfo(pg, seeded), restore.RestoreRequest(manifest_path=result["manifest_path"])
    )

    assert done["method"] == "pg_restore", done["snapshot_note"]
    expected_note = {
        "unsealed": "not sealed",
        "changed_while_sealed": "differs",
        "dropped": "no longer exists",
    }
    assert expected_note[tamper] in done["snapshot_note"]
    assert fingerprint.compare(before, fp(pg, seeded)) == []


def test_drop_snapshot_refuses_a_name_outside_the_clone_scheme(pg, seeded):
    with pytest.raises(backup.BackupError, match="is not a snapshot of"):
        backup.drop_snapshot(conninfo(pg, seeded), "postgres", seeded)
    assert seeded in databases(pg)


def test_prepare_refuses_before_anything_is_cloned(pg, seeded, tmp_path):
    """The pipeline checks the dump's refusals first: the dump of a clone runs on while migrating."""
    dbs_before = databases(pg)
    request = backup.BackupRequest(
        environment="staging",
        directory=str(tmp_path / "backups"),
        expected_revision="0003",
        prepare_only=True,
    )
    with pytest.raises(backup.BackupError, match="not 0003 as pre-flight saw"):
        backup.run_backup(conninfo(pg, seeded), request)
    assert databases(pg) == dbs_before
