"""The db_migrate role through ansible-playbook: check mode, a real run, idempotence, a failing revision."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from pgcluster import MIGRATOR_PASSWORD, PgCluster
from test_alembic_runner import db_state, make_project, write_revision
from test_preflight import failure_lines, host_vars, run_playbook


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj")


def migrate(pg: PgCluster, dbname: str, project: Path, tmp_path: Path, *args: str, **extra) -> tuple:
    result_file = tmp_path / "result.json"
    result_file.unlink(missing_ok=True)
    variables = {"db_alembic_config": str(project), "result_file": str(result_file), **extra}
    proc = run_playbook("migrate.yml", {"db1": host_vars(pg, dbname)}, variables, tmp_path, *args)
    assert MIGRATOR_PASSWORD not in proc.stdout + proc.stderr
    return proc, json.loads(result_file.read_text())


def upgrade_task_status(proc) -> str:
    """'changed' or 'ok': how the role reported its step (the result file's copy aside)."""
    after = proc.stdout.split("Wait for the migration, showing its progress.", 1)[1]
    return next(line.split(":")[0] for line in after.splitlines() if line.startswith(("ok:", "changed:")))


def test_check_mode_then_run_then_nothing_to_do(
    pg: PgCluster, dbname: str, project: Path, tmp_path: Path
) -> None:
    progress = tmp_path / "progress.log"

    proc, result = migrate(pg, dbname, project, tmp_path, "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["pending"] == ["0001", "0002", "0003"] and result["applied"] == []
    assert "CREATE TABLE users" in result["sql"] and "would apply 0001, 0002, 0003 to" in proc.stdout
    assert db_state(pg, dbname) == {"relations": [], "version": None}

    proc, result = migrate(pg, dbname, project, tmp_path, db_migrate_progress_file=str(progress))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [a["revision"] for a in result["applied"]] == ["0001", "0002", "0003"]
    assert (result["revision_before"], result["revision_after"]) == ("base", "0003")
    assert result["row_count_changes"] == {"users": "0002: duplicates removed"}
    assert upgrade_task_status(proc) == "changed"
    assert "backfill batch 1/2 done" in progress.read_text()
    assert stat.S_IMODE(progress.stat().st_mode) == 0o600
    assert db_state(pg, dbname)["version"] == ["0003"]

    proc, result = migrate(pg, dbname, project, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert upgrade_task_status(proc) == "ok" and result["applied"] == []
    assert "already at the target, nothing applied" in proc.stdout


def test_failing_revision_fails_the_role_in_one_line(
    pg: PgCluster, dbname: str, project: Path, tmp_path: Path
) -> None:
    write_revision(
        project.parent,
        "0004",
        "0003",
        "op.execute('CREATE TABLE half_done (id int)')\nop.execute('SELECT 1 / 0')",
    )
    proc, result = migrate(pg, dbname, project, tmp_path, db_migrate_target="0004")
    assert proc.returncode != 0
    [line] = failure_lines(proc)
    assert line.startswith(f"migration of {dbname} failed: revision 0004 failed after ")
    assert line.endswith(
        ": psycopg2.errors.DivisionByZero: division by zero "
        "(applied before it: 0001, 0002, 0003; database is now at 0003)"
    )
    assert result["failed_revision"] == "0004" and result["revision_after"] == "0003"
    assert [a["revision"] for a in result["applied"]] == ["0001", "0002", "0003"]
    assert "half_done" not in db_state(pg, dbname)["relations"]


def test_refused_plan_fails_before_running_anything(
    pg: PgCluster, dbname: str, project: Path, tmp_path: Path
) -> None:
    proc, result = migrate(pg, dbname, project, tmp_path, db_migrate_target="0009")
    assert proc.returncode != 0
    [line] = failure_lines(proc)
    assert line.startswith(f"migration of {dbname} failed: target revision '0009' is not in the chain at ")
    # Refused before anything ran: the registered result is the refusal itself, nothing applied.
    assert result["failed"] and result["msg"] == line and "applied" not in result
    assert db_state(pg, dbname) == {"relations": [], "version": None}
