"""The promotion gate, deployment history and release.yml, through the real ansible-playbook.

One staging and one or two production databases live in the session's cluster; the production hosts
read the staging database's history the way the production inventory says (db_preflight_gate_staging_*).
Every refusal shows the one-line reason and that production's data did not change.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.checksums import file_sha256
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.fingerprint import (
    compare,
    database_fingerprint,
)
from ansible_run import ROOT, ansible_env, failure_lines, host_vars, playbook_cmd, run_playbook, write_private
from conftest import run_alembic, seed
from pgcluster import APP, APP_PASSWORD, MIGRATOR, MIGRATOR_PASSWORD, PgCluster

FAILING_REVISION = ROOT / "tests" / "fixtures" / "0006_fails_after_committed_work.py"


# --- helpers ---------------------------------------------------------------------------------------------


def data_fingerprint(pg: PgCluster, dbname: str) -> dict:
    """The application's data: every table but the pipeline's own history."""
    with contextlib.closing(pg.superuser_conn(dbname)) as conn:
        found = database_fingerprint(conn)
    return {k: v for k, v in found.items() if not k.startswith("pipeline_history.")}


def history(pg: PgCluster, dbname: str) -> list[dict]:
    with contextlib.closing(pg.superuser_conn(dbname)) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('pipeline_history.runs') IS NOT NULL")
        if not cur.fetchone()[0]:
            return []
        cur.execute("SELECT * FROM pipeline_history.runs ORDER BY started_at")
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def revision(pg: PgCluster, dbname: str) -> str:
    with contextlib.closing(pg.superuser_conn(dbname)) as conn, conn.cursor() as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        return cur.fetchone()[0]


def new_seeded_db(pg: PgCluster, name: str) -> str:
    pg.create_database(name)
    run_alembic(pg, name, "upgrade", "0001")
    seed(pg, name)
    return name


def project_copy(tmp_path: Path, failing: bool = False) -> Path:
    """The shipped Alembic project copied, as a user points db_alembic_config at their own."""
    dest = tmp_path / "project"
    shutil.copytree(ROOT / "migrations", dest / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "alembic.ini", dest / "alembic.ini")
    if failing:
        shutil.copy(FAILING_REVISION, dest / "migrations" / "versions" / FAILING_REVISION.name)
    return dest / "alembic.ini"


def production_vars(pg: PgCluster, dbname: str, staging_db: str) -> dict:
    return host_vars(
        pg,
        dbname,
        environment="production",
        db_preflight_gate_staging_host="127.0.0.1",
        db_preflight_gate_staging_port=pg.port,
        db_preflight_gate_staging_name=staging_db,
        db_preflight_gate_staging_user=MIGRATOR,
    )


def pipeline_vars(tmp_path: Path, **extra) -> dict:
    return {
        "db_backup_dir": str(tmp_path / "backups"),
        "db_report_dir": str(tmp_path / "reports"),
        "db_preflight_gate_staging_password": MIGRATOR_PASSWORD,
        **extra,
    }


def migrate(tmp_path: Path, name: str, hostvars: dict, *args: str, **extra):
    run_dir = tmp_path / name
    run_dir.mkdir(exist_ok=True)
    return run_playbook(
        "playbooks/migrate.yml", {name: hostvars}, pipeline_vars(tmp_path, **extra), run_dir, *args
    )


@pytest.fixture
def dbs(pg: PgCluster, request: pytest.FixtureRequest):
    """Fresh seeded databases at 0001, named after the test; dropped afterwards."""
    made: list[str] = []

    def make(role: str) -> str:
        made.append(new_seeded_db(pg, f"g_{request.node.name[:30].lower()}_{role}"))
        return made[-1]

    yield make
    # The databases and what a restore made beside them (forensic copies start with the same name).
    prefix = f"g_{request.node.name[:30].lower()}"
    with contextlib.closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix])
        leftovers = {row[0] for row in cur.fetchall()}
    for name in set(made) | leftovers:
        pg.drop_database(name)


def release(pg: PgCluster, tmp_path: Path, staging: str, production: str, **extra):
    groups = {
        "staging": {"hosts": {"stg": host_vars(pg, staging)}},
        "production": {"hosts": {"prd": production_vars(pg, production, staging)}},
    }
    inventory = write_private(tmp_path / "release-inventory.yml", groups)
    return run_playbook(
        "playbooks/release.yml", {}, pipeline_vars(tmp_path, **extra), tmp_path, "-i", str(inventory)
    )


# --- the gate and the history ----------------------------------------------------------------------------


def test_production_alone_is_refused_override_is_recorded_release_passes_drift_refused(
    pg: PgCluster, dbs, tmp_path: Path
):
    staging, prod_alone, prod_after = dbs("stg"), dbs("prd1"), dbs("prd2")
    before = data_fingerprint(pg, prod_alone)

    proc = migrate(tmp_path, "p1", production_vars(pg, prod_alone, staging))
    assert proc.returncode != 0
    line = next((m for m in failure_lines(proc) if "promotion gate refused" in m), str(failure_lines(proc)))
    assert "staging has no deployment history" in line and "promotion_override" in line
    assert compare(before, data_fingerprint(pg, prod_alone)) == []
    (row,) = history(pg, prod_alone)
    assert row["outcome"] == "refused" and "promotion gate refused" in row["error"]

    proc = migrate(
        tmp_path, "p1o", production_vars(pg, prod_alone, staging), promotion_override="hotfix INC-42"
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "promotion gate overridden (hotfix INC-42)" in proc.stdout
    row = history(pg, prod_alone)[-1]
    assert row["outcome"] == "succeeded" and row["promotion_override"] == "hotfix INC-42"
    assert row["gate"]["overridden"] and "staging has no deployment history" in row["gate"]["problems"][0]

    # release.yml: staging first, then production, which passes the gate on staging's history.
    proc = release(pg, tmp_path, staging, prod_after)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "promotion gate passed" in proc.stdout
    (row,) = history(pg, staging)
    versions = ROOT / "migrations" / "versions"
    assert row["outcome"] == "succeeded" and (row["revision_from"], row["revision_to"]) == ("0001", "0005")
    assert row["run_by"] and row["run_from"] and row["finished_at"] > row["started_at"]
    assert row["manifest_sha256"] == file_sha256(row["backup_manifest"])
    assert sorted(row["applied"]) == ["0002", "0003", "0004", "0005"]
    for entry in row["applied"].values():
        assert entry["sha256"] == file_sha256(versions / entry["file"])
    assert revision(pg, prod_after) == "0005"
    assert history(pg, prod_after)[-1]["started_at"] > row["finished_at"]
    row = history(pg, prod_after)[-1]
    assert row["outcome"] == "succeeded" and row["promotion_override"] is None
    assert row["gate"]["staging_run_id"] == history(pg, staging)[0]["run_id"]

    # The history stays out of the chain's way, and the application cannot write it.
    assert "No new upgrade operations detected" in run_alembic(pg, prod_after, "check").stdout
    with (
        contextlib.closing(pg.connect(prod_after, APP, APP_PASSWORD)) as conn,
        conn.cursor() as cur,
        pytest.raises(psycopg2.errors.InsufficientPrivilege),
    ):
        cur.execute("UPDATE pipeline_history.runs SET outcome = 'succeeded'")

    # Drift: a hand-made change to production's schema is refused before anything else happens.
    with contextlib.closing(pg.superuser_conn(prod_after)) as conn, conn.cursor() as cur:
        cur.execute("CREATE INDEX users_by_hand ON users (name)")
    proc = migrate(tmp_path, "p2d", production_vars(pg, prod_after, staging))
    assert proc.returncode != 0
    assert any("drifted since run" in m and "production refuses" in m for m in failure_lines(proc))


def test_an_edited_applied_revision_is_refused_and_named(pg: PgCluster, dbs, tmp_path: Path):
    staging, production = dbs("stg"), dbs("prd")
    config = project_copy(tmp_path)
    proc = migrate(tmp_path, "s", host_vars(pg, staging), db_alembic_config=str(config))
    assert proc.returncode == 0, proc.stdout[-3000:]

    edited = config.parent / "migrations" / "versions" / "0003_add_meeting_indexes.py"
    edited.write_text(edited.read_text() + "\n# tweaked after staging applied it\n")
    before = data_fingerprint(pg, production)

    proc = migrate(tmp_path, "p", production_vars(pg, production, staging), db_alembic_config=str(config))
    assert proc.returncode != 0
    assert any(
        "0003_add_meeting_indexes.py differs from the file staging applied" in m for m in failure_lines(proc)
    ), failure_lines(proc)
    assert compare(before, data_fingerprint(pg, production)) == []
    assert revision(pg, production) == "0001"

    # Staging itself (nothing pending) refuses to run on a chain whose applied file changed.
    proc = migrate(tmp_path, "s2", host_vars(pg, staging), db_alembic_config=str(config))
    assert proc.returncode != 0
    assert any(
        "0003_add_meeting_indexes.py (revision 0003) changed after run" in m for m in failure_lines(proc)
    ), failure_lines(proc)


def test_a_killed_run_stays_running_and_blocks_until_resolved(pg: PgCluster, dbs, tmp_path: Path):
    staging = dbs("stg")
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    # The row is written before the backup, so the window between "row is running" and "run ends" is the
    # whole backup and migration: kill the runner inside it, as a reboot would.
    cmd = playbook_cmd(
        "playbooks/migrate.yml", {"stg": host_vars(pg, staging)}, pipeline_vars(tmp_path), run_dir
    )
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=ansible_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(r["outcome"] == "running" for r in history(pg, staging)):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never recorded itself"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(3)  # let the background job of the killed run (pg_dump or alembic) end on its own
    (killed,) = history(pg, staging)
    assert killed["outcome"] == "running" and killed["finished_at"] is None
    fp = data_fingerprint(pg, staging)

    proc = migrate(tmp_path, "next", host_vars(pg, staging))
    assert proc.returncode != 0
    line = next((m for m in failure_lines(proc) if "never finished" in m), str(failure_lines(proc)))
    assert (
        f"run {killed['run_id']} started" in line and f"db_preflight_resolve_run={killed['run_id']}" in line
    )
    assert compare(fp, data_fingerprint(pg, staging)) == []

    proc = migrate(
        tmp_path,
        "resolved",
        host_vars(pg, staging),
        db_preflight_resolve_run=killed["run_id"],
        db_preflight_resolve_reason="runner rebooted; checked revision and data",
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    rows = {r["run_id"]: r for r in history(pg, staging)}
    assert rows[killed["run_id"]]["resolution"] == "runner rebooted; checked revision and data"
    assert rows[killed["run_id"]]["resolved_by"]
    assert list(rows.values())[-1]["outcome"] == "succeeded"


# --- release.yml -----------------------------------------------------------------------------------------


def test_release_stops_after_a_staging_failure_without_touching_production(
    pg: PgCluster, dbs, tmp_path: Path
):
    staging, production = dbs("stg"), dbs("prd")
    before = data_fingerprint(pg, production)
    proc = release(
        pg, tmp_path, staging, production, db_alembic_config=str(project_copy(tmp_path, failing=True))
    )
    assert proc.returncode != 0
    # Every staging database failed, so Ansible ends the playbook there; had only some failed, the guard
    # play would stop production with "production not touched".
    assert not [line for line in proc.stdout.splitlines() if line.startswith(("ok: [prd]", "changed: [prd]"))]
    assert history(pg, production) == []
    assert compare(before, data_fingerprint(pg, production)) == []
    assert history(pg, staging)[-1]["outcome"] == "failed-and-restored"


def test_migrate_refuses_both_inventories_at_once(pg: PgCluster, dbs, tmp_path: Path):
    staging, production = dbs("stg"), dbs("prd")
    hosts = {"stg": host_vars(pg, staging), "prd": production_vars(pg, production, staging)}
    proc = run_playbook("playbooks/migrate.yml", hosts, pipeline_vars(tmp_path), tmp_path)
    assert proc.returncode != 0
    assert any("this play mixes environments" in m for m in failure_lines(proc))
    assert history(pg, staging) == history(pg, production) == []
