"""The shipped chain (alembic.ini, migrations/) through the runner and the smoke checks, on seeded data.

A user's revision that fails is added to a copy of the project in tmp_path, the way users point
db_alembic_config at their own project.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils import alembic_runner as ar
from ansible_collections.pgmigrate.pipeline.plugins.module_utils import smoke
from pgcluster import APP, APP_PASSWORD, PgCluster
from test_alembic_runner import conninfo, db_state

ROOT = Path(__file__).resolve().parent.parent
REPO_INI = ROOT / "alembic.ini"

FAILING_REVISION = '''"""A user's revision that does real work, then fails: nothing of it may stay."""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE TABLE audit_log (id bigint PRIMARY KEY, note text)")
    op.execute("INSERT INTO audit_log SELECT g, 'row ' || g FROM generate_series(1, 100) g")
    op.execute("UPDATE users SET email = upper(email)")
    raise RuntimeError("0006 could not reconcile audit_log with users")


def downgrade():
    op.execute("DROP TABLE audit_log")
'''


def manifest_of(pg: PgCluster, dbname: str, path: Path) -> str:
    """Row counts the way db_backup's manifest records them (docs/DESIGN.md), for no_rows_lost."""
    with contextlib.closing(pg.superuser_conn(dbname)) as conn, conn.cursor() as cur:
        cur.execute("SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables ORDER BY 1")
        tables = {}
        for (name,) in cur.fetchall():
            cur.execute(f"SELECT count(*) FROM {name}")
            tables[name] = {"rows": cur.fetchone()[0], "checksum": ""}
    path.write_text(json.dumps({"format_version": 1, "tables": tables}))
    return str(path)


def user_project(tmp_path: Path, revision: str = FAILING_REVISION) -> Path:
    """A copy of the shipped project (self-contained, docs/DESIGN.md) with the user's failing 0006 on top."""
    dest = tmp_path / "project"
    dest.mkdir()
    shutil.copy(REPO_INI, dest / "alembic.ini")
    shutil.copytree(ROOT / "migrations", dest / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "migrations" / "versions" / "0006_user_audit_log.py").write_text(revision)
    return dest / "alembic.ini"


def test_shipped_chain_plans_renders_and_applies(pg: PgCluster, seeded_db: str, tmp_path: Path) -> None:
    ci = conninfo(pg, seeded_db)
    facts = ar.preflight(str(REPO_INI), ci)
    assert (facts["current_revision"], facts["target_revision"]) == ("0001", "0005")
    assert facts["pending"] == ["0002", "0003", "0004", "0005"]

    before = db_state(pg, seeded_db)
    dry = ar.upgrade(str(REPO_INI), ci, check_mode=True)
    assert [p["revision"] for p in dry["sql_by_revision"]] == ["0002", "0003", "0004", "0005"]
    assert all(p["error"] is None for p in dry["sql_by_revision"]), dry["sql_by_revision"]
    assert "CREATE INDEX CONCURRENTLY" in dry["sql"]
    assert db_state(pg, seeded_db) == before

    manifest = manifest_of(pg, seeded_db, tmp_path / "manifest.json")
    progress = tmp_path / "progress.log"
    result = ar.upgrade(
        str(REPO_INI), ci, options=ar.Options(batch_size=300, lock_timeout="2s"), progress_file=str(progress)
    )
    assert not result["failed"], result["msg"]
    assert [a["revision"] for a in result["applied"]] == ["0002", "0003", "0004", "0005"]
    assert result["revision_after"] == "0005"
    log = progress.read_text()
    assert all(f"{rev}: done in" in log for rev in result["pending"])

    checks = smoke.run_checks(
        ci,
        app_user=APP,
        app_password=APP_PASSWORD,
        target_revision="0005",
        manifest_path=manifest,
        row_count_changes=result["row_count_changes"],
    )
    assert checks["failed_checks"] == [], checks["checks"]

    again = ar.upgrade(str(REPO_INI), ci)
    assert (again["changed"], again["applied"]) == (False, [])


def test_failing_user_revision_reports_and_leaves_the_last_good_revision(
    pg: PgCluster, seeded_db: str, tmp_path: Path
) -> None:
    ini = user_project(tmp_path)
    ci = conninfo(pg, seeded_db)
    assert ar.preflight(str(ini), ci)["pending"] == ["0002", "0003", "0004", "0005", "0006"]

    result = ar.upgrade(str(ini), ci)

    assert result["failed"] and result["failed_revision"] == "0006", result["msg"]
    assert result["error"] == "RuntimeError: 0006 could not reconcile audit_log with users"
    assert [a["revision"] for a in result["applied"]] == ["0002", "0003", "0004", "0005"]
    assert result["revision_after"] == "0005"
    assert "audit_log" not in db_state(pg, seeded_db)["relations"]
    with contextlib.closing(pg.superuser_conn(seeded_db)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM users WHERE email <> lower(email)")
        assert cur.fetchone()[0] == 0, "the failed revision's UPDATE must be rolled back"
    checks = smoke.run_checks(ci, app_user=APP, app_password=APP_PASSWORD, target_revision="0005")
    assert checks["failed_checks"] == [], checks["checks"]

    # The failing revision ran in one transaction: it committed nothing, and the runner says so.
    assert result["failed_revision_committed"] is False
    down = ar.downgrade(str(ini), ci, "0001", expected_schema=result["schema_fingerprint_before"])
    assert not down["failed"], down["msg"]
    assert [d["revision"] for d in down["downgraded"]] == ["0005", "0004", "0003", "0002"]


COMMITTING_REVISION = FAILING_REVISION.replace(
    """    op.execute("INSERT INTO audit_log SELECT g, 'row ' || g FROM generate_series(1, 100) g")""",
    """    with op.get_context().autocommit_block():
        op.execute("INSERT INTO audit_log SELECT g, 'row ' || g FROM generate_series(1, 100) g")""",
)
UNDOWNGRADABLE_REVISION = FAILING_REVISION.replace(
    """    op.execute("UPDATE users SET email = upper(email)")
    raise RuntimeError("0006 could not reconcile audit_log with users")""",
    "",
).replace(
    """    op.execute("DROP TABLE audit_log")""", """    raise RuntimeError("0006 cannot be downgraded")"""
)


def test_downgrade_undoes_the_applied_revisions_and_proves_the_schema_is_back(
    pg: PgCluster, seeded_db: str, tmp_path: Path
) -> None:
    """The online rescue's core: head -> start, newest first, each lossy note named, schema as before."""
    ci = conninfo(pg, seeded_db)
    before = db_state(pg, seeded_db)
    up = ar.upgrade(str(REPO_INI), ci, options=ar.Options(batch_size=500))
    assert not up["failed"] and len(up["schema_fingerprint_before"]) == 64

    progress = tmp_path / "progress.log"
    down = ar.downgrade(
        str(REPO_INI),
        ci,
        "0001",
        expected_schema=up["schema_fingerprint_before"],
        progress_file=str(progress),
    )
    assert not down["failed"], down["msg"]
    assert [d["revision"] for d in down["downgraded"]] == ["0005", "0004", "0003", "0002"]
    assert [d["revision"] for d in down["lossy"]] == ["0005", "0004", "0002"]  # 0003 only drops indexes
    assert down["lossy"][1]["note"].startswith("LOSSY - drops the column and every phone number")
    assert down["schema_matches"] is True and down["revision_after"] == "0001"
    assert "downgraded 0005, 0004, 0003, 0002 (0005 -> 0001)" in progress.read_text()
    assert db_state(pg, seeded_db) == before

    again = ar.downgrade(str(REPO_INI), ci, "0001", expected_schema=up["schema_fingerprint_before"])
    assert (again["failed"], again["changed"], again["downgraded"]) == (False, False, [])


def test_a_revision_that_committed_before_failing_is_flagged_and_its_leftovers_fail_the_schema_check(
    pg: PgCluster, seeded_db: str, tmp_path: Path
) -> None:
    ini = user_project(tmp_path, COMMITTING_REVISION)
    ci = conninfo(pg, seeded_db)
    up = ar.upgrade(str(ini), ci)
    assert up["failed"] and up["failed_revision"] == "0006"
    assert up["failed_revision_committed"] is True

    down = ar.downgrade(str(ini), ci, "0001", expected_schema=up["schema_fingerprint_before"])
    assert down["failed"] and down["revision_after"] == "0001"
    assert "the schema at 0001 is not the one the run started from" in down["msg"]
    assert "audit_log" in db_state(pg, seeded_db)["relations"]  # left for the restore to deal with


def test_a_failing_downgrade_stops_there_and_says_where_the_database_is(
    pg: PgCluster, seeded_db: str, tmp_path: Path
) -> None:
    ini = user_project(tmp_path, UNDOWNGRADABLE_REVISION)
    ci = conninfo(pg, seeded_db)
    up = ar.upgrade(str(ini), ci)
    assert not up["failed"], up["msg"]

    down = ar.downgrade(str(ini), ci, "0001", expected_schema=up["schema_fingerprint_before"])
    assert down["failed"] and down["downgraded"] == [] and down["revision_after"] == "0006"
    assert (
        down["msg"]
        == "the downgrade of 0006 failed: RuntimeError: 0006 cannot be downgraded (database is now at 0006)"
    )

    with pytest.raises(ar.MigrationError, match="downgrade target '9999' is not in the chain"):
        ar.downgrade(str(ini), ci, "9999")
