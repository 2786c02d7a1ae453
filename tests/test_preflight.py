"""The db_preflight role through ansible-playbook: what it hands forward, and each refusal in one line."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import ansible_run
import pytest
from ansible_run import failure_lines, host_vars
from pgcluster import MIGRATOR_PASSWORD, PgCluster
from test_alembic_runner import db_state, make_project

ROOT = Path(__file__).resolve().parent.parent


def run_playbook(playbook: str, hosts: dict[str, dict], extra: dict, tmp_path: Path, *args: str):
    """One of tests/playbooks/ through ansible_run.run_playbook (passwords only in a 0600 vars file)."""
    extra = {"db_report_dir": str(tmp_path / "reports"), **extra}
    return ansible_run.run_playbook(f"tests/playbooks/{playbook}", hosts, extra, tmp_path, *args, timeout=300)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj")


def test_role_hands_the_plan_forward(pg: PgCluster, dbname: str, project: Path, tmp_path: Path) -> None:
    result_dir = tmp_path / "results"
    result_dir.mkdir()
    proc = run_playbook(
        "preflight.yml",
        {"db1": host_vars(pg, dbname)},
        {"db_alembic_config": str(project), "result_dir": str(result_dir)},
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((result_dir / "db1.json").read_text())
    assert result["environment"] == "staging"
    assert (result["current_revision"], result["target_revision"]) == ("base", "0003")
    assert result["pending"] == ["0001", "0002", "0003"]
    assert result["server_version"].startswith("15.") and int(result["database_size_bytes"]) > 0
    assert len(result["run_id"]) == len("20261125T142233Z-3fa9c1")
    assert "3 revision(s) pending to reach 0003: 0001, 0002, 0003" in proc.stdout
    assert MIGRATOR_PASSWORD not in proc.stdout + proc.stderr
    assert db_state(pg, dbname) == {"relations": [], "version": None}


def test_db_migrate_target_from_the_command_line_is_honoured(
    pg: PgCluster, dbname: str, project: Path, tmp_path: Path
) -> None:
    result_dir = tmp_path / "results"
    result_dir.mkdir()
    extra = {
        "db_alembic_config": str(project),
        "db_migrate_target": "0002",
        "result_dir": str(result_dir),
    }
    proc = run_playbook("preflight.yml", {"db1": host_vars(pg, dbname)}, extra, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((result_dir / "db1.json").read_text())["pending"] == ["0001", "0002"]


def test_mixed_environments_are_refused(pg: PgCluster, dbname: str, project: Path, tmp_path: Path) -> None:
    hosts = {
        "stage-db": host_vars(pg, dbname, "staging"),
        "prod-db": host_vars(pg, dbname, "production"),
    }
    proc = run_playbook("preflight.yml", hosts, {"db_alembic_config": str(project)}, tmp_path)
    assert proc.returncode != 0
    expected = (
        "this play mixes environments (production: prod-db; staging: stage-db): "
        "run one environment's inventory at a time"
    )
    assert failure_lines(proc) == [expected, expected], proc.stdout


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        ("0003", {"db_migrate_target": "0001"}, "target 0001 is behind the database's current revision 0003"),
        ("zzzz", {}, "database is at zzzz, which the chain at "),
        (None, {"db_migrate_target": "0042"}, "target revision '0042' is not in the chain at "),
        (None, {"db_migration_password": "not-the-password"}, "wrong password for role 'meetings_owner'"),
    ],
    ids=["behind", "unknown-current", "unknown-target", "wrong-password"],
)
def test_refusals_are_one_line_and_change_nothing(
    pg: PgCluster, dbname: str, project: Path, tmp_path: Path, setup: str | None, extra: dict, message: str
) -> None:
    if setup:
        with contextlib.closing(pg.connect(dbname)) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
            cur.execute("INSERT INTO alembic_version VALUES (%s)", [setup])
            conn.commit()
    before = db_state(pg, dbname)
    proc = run_playbook(
        "preflight.yml",
        {"db1": host_vars(pg, dbname)},
        {"db_alembic_config": str(project), **extra},
        tmp_path,
    )
    assert proc.returncode != 0
    lines = failure_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(f"pre-flight of {dbname} refused: "), proc.stdout
    assert message in lines[0]
    assert db_state(pg, dbname) == before
    assert MIGRATOR_PASSWORD not in proc.stdout + proc.stderr
