"""The db_smoke role through ansible-playbook: reports every check, fails naming each failed one."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils import alembic_runner as ar
from pgcluster import APP_PASSWORD, MIGRATOR_PASSWORD, PgCluster
from test_alembic_runner import conninfo, make_project
from test_preflight import failure_lines, host_vars, run_playbook


@pytest.fixture
def migrated(pg: PgCluster, dbname: str, tmp_path: Path) -> str:
    ar.upgrade(str(make_project(tmp_path / "proj")), conninfo(pg, dbname))
    with contextlib.closing(pg.connect(dbname)) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO users (email) VALUES ('a@example.com'), ('b@example.com')")
        conn.commit()
    return dbname


def smoke(pg: PgCluster, dbname: str, tmp_path: Path, *args: str, **extra) -> tuple:
    result_file = tmp_path / "result.json"
    variables = {"db_smoke_target_revision": "0003", "result_file": str(result_file), **extra}
    proc = run_playbook("smoke.yml", {"db1": host_vars(pg, dbname)}, variables, tmp_path, *args)
    for secret in (MIGRATOR_PASSWORD, APP_PASSWORD):
        assert secret not in proc.stdout + proc.stderr
    return proc, json.loads(result_file.read_text())


def test_passing_checks_change_nothing(pg: PgCluster, migrated: str, tmp_path: Path) -> None:
    queries = [{"name": "two users", "sql": "SELECT count(*) FROM users", "expect": {"scalar": 2}}]
    proc, result = smoke(pg, migrated, tmp_path, db_smoke_queries=queries)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not result["failed"] and result["failed_checks"] == [] and len(result["checks"]) == 6
    assert "ok   query:two users: got 2, expected 2" in proc.stdout
    after = proc.stdout.split("Check the app role, the revision", 1)[1]
    assert next(line for line in after.splitlines() if line.startswith(("ok:", "changed:"))).startswith("ok:")


def test_failures_are_all_reported_then_named_in_one_message(
    pg: PgCluster, migrated: str, tmp_path: Path
) -> None:
    with contextlib.closing(pg.connect(migrated)) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE users ADD CONSTRAINT short_email CHECK (length(email) < 5) NOT VALID")
        conn.commit()
    queries = [
        {"name": "sneaky write", "sql": "UPDATE users SET email = 'x' RETURNING id", "expect": {"rows": 2}},
        {"name": "fine", "sql": "SELECT 1", "expect": {"rows": 1}},
    ]
    proc, result = smoke(pg, migrated, tmp_path, db_smoke_queries=queries, db_smoke_target_revision="0005")
    assert proc.returncode != 0
    assert result["failed"]
    assert result["failed_checks"] == ["revision_is_target", "constraints_validated", "query:sneaky write"]
    assert (
        "FAIL query:sneaky write: SQL error: cannot execute UPDATE in a read-only transaction" in proc.stdout
    )
    assert "ok   query:fine: 1 row(s), expected 1" in proc.stdout
    [line] = failure_lines(proc)
    assert line == (
        f"3 smoke check(s) failed on {migrated}: revision_is_target (at 0003, expected 0005); "
        "constraints_validated (1 NOT VALID constraint(s): public.users.short_email); "
        "query:sneaky write (SQL error: cannot execute UPDATE in a read-only transaction)"
    )
    with contextlib.closing(pg.connect(migrated)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM users WHERE email = 'x'")
        assert cur.fetchone()[0] == 0


def test_bad_query_spec_is_one_line(pg: PgCluster, migrated: str, tmp_path: Path) -> None:
    queries = [{"name": "typo", "sql": "SELECT 1", "expect": {"row": 1}}]
    proc, result = smoke(pg, migrated, tmp_path, db_smoke_queries=queries)
    assert proc.returncode != 0
    assert failure_lines(proc) == [
        f"smoke checks of {migrated} could not run: smoke query 'typo': unknown expect key 'row' "
        "(use rows, scalar, no_rows)"
    ]
    assert result["failed"] and "checks" not in result  # nothing ran
