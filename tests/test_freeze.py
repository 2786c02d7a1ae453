"""Offline mode: the application loses CONNECT for the run and always gets it back.

Module-level tests prove the freeze and thaw themselves (sessions cut, state file, a killed run thawed later);
the playbook tests prove migrate.yml gives CONNECT back after a success and after a forced failure that
was restored (the restored database is a new one: CONNECT is granted on it by name).
"""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path

import psycopg2
import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils import freeze
from ansible_run import failure_lines
from pgcluster import APP, APP_PASSWORD, PgCluster
from test_pipeline import failing_project, migrate, reports, revision


def app_can_connect(pg: PgCluster, dbname: str) -> bool:
    try:
        pg.connect(dbname, user=APP, password=APP_PASSWORD).close()
    except psycopg2.OperationalError as exc:
        assert "permission denied for database" in str(exc)
        return False
    return True


def app_session_alive(conn) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        return True
    except psycopg2.Error:
        return False


def test_freeze_cuts_the_application_and_thaw_gives_connect_back(pg: PgCluster, dbname: str, tmp_path: Path):
    app = pg.connect(dbname, user=APP, password=APP_PASSWORD)
    state = tmp_path / "state" / "db.frozen"
    with contextlib.closing(pg.connect("postgres")) as conn:
        conn.autocommit = True
        frozen = freeze.freeze(conn, dbname, [APP], str(state))
        assert frozen["revoked"] == ["PUBLIC"] and frozen["still_allowed"] == []
        assert [s["usename"] for s in frozen["terminated"]] == [APP]
        assert frozen["terminated"][0]["pid"] == app.get_backend_pid()
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert not app_session_alive(app) and not app_can_connect(pg, dbname)
        pg.connect(dbname).close()  # the migration role (owner) still connects

        thawed = freeze.unfreeze(conn, dbname, frozen["revoked"], str(state))
        assert thawed["granted"] == ["PUBLIC"] and not state.exists()
        assert app_can_connect(pg, dbname)
        assert freeze.unfreeze(conn, dbname, ["PUBLIC"])["changed"] is False  # idempotent


def test_a_run_killed_while_frozen_is_thawed_from_the_state_file(pg: PgCluster, dbname: str, tmp_path: Path):
    state = tmp_path / "db.frozen"
    with contextlib.closing(pg.connect("postgres")) as conn:
        conn.autocommit = True
        freeze.freeze(conn, dbname, [APP], str(state))
        # The next run freezes again: the database shows nobody to revoke, the state file remembers PUBLIC.
        again = freeze.freeze(conn, dbname, [APP], str(state))
        assert again["revoked"] == ["PUBLIC"]
        assert freeze.unfreeze(conn, dbname, [], str(state))["granted"] == ["PUBLIC"]
    assert app_can_connect(pg, dbname)


def test_an_explicit_grant_to_an_application_role_is_revoked_only_when_listed(
    pg: PgCluster, dbname: str, tmp_path: Path
):
    with contextlib.closing(pg.connect("postgres")) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO {APP}')
        frozen = freeze.freeze(conn, dbname, [], str(tmp_path / "s"))  # APP not listed: its grant stays
        assert frozen["still_allowed"] == [] and app_can_connect(pg, dbname)
        listed = freeze.freeze(conn, dbname, [APP], str(tmp_path / "s"))
        assert listed["revoked"] == ["PUBLIC", APP] and not app_can_connect(pg, dbname)
        freeze.unfreeze(conn, dbname, listed["revoked"], str(tmp_path / "s"))
    assert app_can_connect(pg, dbname)


@pytest.mark.parametrize("fail", [False, True], ids=["success", "forced-failure"])
def test_offline_mode_cuts_the_application_and_connect_returns(
    pg: PgCluster, seeded_db: str, tmp_path: Path, fail: bool
):
    app = pg.connect(seeded_db, user=APP, password=APP_PASSWORD)
    pid = app.get_backend_pid()
    extra: dict = {"db_preflight_mode": "offline"}
    if fail:
        extra["db_alembic_config"] = str(failing_project(tmp_path))
    proc = migrate(pg, seeded_db, tmp_path, extra=extra)
    assert not app_session_alive(app)
    app.close()
    (report,) = reports(tmp_path / "reports")
    freeze_step = report["steps"]["freeze"]
    assert [s["pid"] for s in freeze_step["terminated"]] == [pid]
    assert report["steps"]["preflight"]["mode"] == "offline"
    if fail:
        assert proc.returncode != 0
        assert any("0006 failed" in line for line in failure_lines(proc))
        assert report["outcome"] == "failed-and-restored" and revision(pg, seeded_db) == "0001"
    else:
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert report["outcome"] == "succeeded" and revision(pg, seeded_db) == "0005"
    assert app_can_connect(pg, seeded_db)
    assert not list((tmp_path / "reports").glob("*.frozen"))
