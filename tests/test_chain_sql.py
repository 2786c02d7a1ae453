"""Offline SQL of the whole chain: renders without a database, and passes the real squawk linter."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_alembic
from pgcluster import MIGRATOR, MIGRATOR_PASSWORD, PG_BINDIR

SQUAWK = shutil.which("squawk", path=str(Path(sys.executable).parent)) or "squawk"
# Alembic's own bookkeeping table: emitted by Alembic (not our revisions) once, on an empty database,
# with no way to put a squawk comment on it. Everything else must lint clean.
ALEMBIC_VERSION_DDL = re.compile(r"CREATE TABLE alembic_version \(.*?\);\n", re.S)


def render(pg, *args: str) -> str:
    return run_alembic(pg, "unused", *args, "--sql", url="").stdout


def squawk(tmp_path: Path, sql: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "migration.sql"
    path.write_text(sql)
    return subprocess.run([SQUAWK, str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("revisions", ["head", "0001:head"])
def test_rendered_chain_passes_squawk(pg, tmp_path, revisions):
    sql = render(pg, "upgrade", revisions)
    assert "UPDATE alembic_version SET version_num='0005'" in sql
    # Batched loops render set-based, saying that online mode batches.
    assert sql.count("-- online mode runs this in batches") == 3
    linted = ALEMBIC_VERSION_DDL.sub("", sql, count=1)
    result = squawk(tmp_path, linted)
    assert result.returncode == 0, result.stdout + result.stderr
    # Intended findings are acknowledged statement by statement, each with its reason.
    ignores = re.findall(r"-- squawk-ignore ([\w,-]+) -- (.+)", sql)
    assert ignores and all(reason.strip() for _, reason in ignores)


def test_squawk_fails_a_naive_blocking_index_build(tmp_path):
    naive = "SET lock_timeout = '5s';\nSET statement_timeout = '15min';\n" + (
        "CREATE INDEX idx_x ON meetings (status);\n"
    )
    result = squawk(tmp_path, naive)
    assert result.returncode != 0
    assert "require-concurrent-index-creation" in result.stdout + result.stderr


def test_downgrade_renders_too(pg):
    sql = render(pg, "downgrade", "head:base")
    assert "DROP INDEX CONCURRENTLY IF EXISTS idx_meetings_status" in sql
    assert "ALTER TABLE meeting_participants_legacy RENAME TO meeting_participants" in sql


def test_offline_sql_runs_on_a_fresh_database(pg, dbname):
    """The rendered script is real SQL: psql applies it and the result is the head schema."""
    sql = render(pg, "upgrade", "head")
    proc = subprocess.run(
        [str(PG_BINDIR / "psql"), "-v", "ON_ERROR_STOP=1", "-q", "-X", "-h", "127.0.0.1", "-p", str(pg.port)],
        env={**os.environ, "PGUSER": MIGRATOR, "PGPASSWORD": MIGRATOR_PASSWORD, "PGDATABASE": dbname},
        input=sql,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    check = run_alembic(pg, dbname, "check")
    assert "No new upgrade operations detected" in check.stdout + check.stderr
