"""Bad input: each fails with one clear line, leaks no password, and leaves the database as it was."""

from __future__ import annotations

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import ConnInfo, pgpass_env
from chain_helpers import failed_line, state
from conftest import run_alembic
from pgcluster import MIGRATOR, MIGRATOR_PASSWORD, free_port


def assert_refused(pg, db, *args, expect: str, url: str | None = None, env_extra: dict | None = None):
    before = state(pg, db)
    proc = run_alembic(pg, db, *args, url=url, env_extra=env_extra, check=False)
    line = failed_line(proc)
    assert expect in line, line
    assert MIGRATOR_PASSWORD not in proc.stdout + proc.stderr
    assert state(pg, db) == before
    return line


def test_no_url_names_both_ways_to_give_one(pg, seeded_db):
    line = assert_refused(pg, seeded_db, "upgrade", "head", url="", expect="no database URL")
    assert "DATABASE_URL" in line and "-x url=" in line


def test_url_from_x_option_is_used_when_the_environment_has_none(pg, seeded_db):
    run_alembic(pg, seeded_db, "-x", f"url={pg.url(seeded_db)}", "upgrade", "0002", url="")
    assert state(pg, seeded_db)[0] == "0002"


def test_unreachable_server(pg, seeded_db):
    url = pg.url(seeded_db).replace(f":{pg.port}/", f":{free_port()}/")
    assert_refused(pg, seeded_db, "upgrade", "head", url=url, expect="server unreachable")


def test_wrong_password(pg, seeded_db):
    url = pg.url(seeded_db, password="not-the-password")
    line = assert_refused(pg, seeded_db, "upgrade", "head", url=url, expect="wrong password")
    assert "not-the-password" not in line
    assert f"meetings_owner@127.0.0.1:{pg.port}/{seeded_db}" in line


def test_unknown_target_revision(pg, seeded_db):
    assert_refused(pg, seeded_db, "upgrade", "0042", expect="Can't locate revision identified by '0042'")


@pytest.mark.parametrize(
    ("option", "env", "expect"),
    [
        ("lock_timeout=soon", None, "invalid -x lock_timeout value 'soon'"),
        ("statement_timeout=15 minutes", None, "invalid -x statement_timeout value '15 minutes'"),
        ("batch_size=0", None, "invalid -x batch_size value '0': expected a positive integer"),
        ("batch_sleep=-1", None, "invalid -x batch_sleep value '-1'"),
        (None, {"MIGRATION_BATCH_SIZE": "many"}, "invalid MIGRATION_BATCH_SIZE value 'many'"),
    ],
)
def test_bad_tuning_values(pg, seeded_db, option, env, expect):
    args = ("-x", option) if option else ()
    assert_refused(pg, seeded_db, *args, "upgrade", "head", env_extra=env, expect=expect)


def test_offline_rendering_needs_no_database(pg, seeded_db):
    """--sql never connects: an unreachable URL does not matter, and nothing is changed."""
    url = pg.url(seeded_db).replace(f":{pg.port}/", f":{free_port()}/")
    before = state(pg, seeded_db)
    proc = run_alembic(pg, seeded_db, "upgrade", "head", "--sql", url=url)
    assert "CREATE INDEX CONCURRENTLY" in proc.stdout
    assert state(pg, seeded_db) == before


def test_pipeline_style_url_without_password_uses_the_pgpass_file(pg, seeded_db):
    """The pipeline's contract (docs/DESIGN.md): URL without a password, password in PGPASSFILE."""
    ci = ConnInfo("127.0.0.1", pg.port, seeded_db, MIGRATOR, MIGRATOR_PASSWORD)
    with pgpass_env(ci, base_env={}) as env:
        proc = run_alembic(pg, seeded_db, "upgrade", "0002", url=ci.sqlalchemy_url(), env_extra=env)
    assert MIGRATOR_PASSWORD not in proc.stdout + proc.stderr
    assert state(pg, seeded_db)[0] == "0002"
