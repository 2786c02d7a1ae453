"""Smoke checks against a real cluster: each broken state is caught, named, and nothing is changed."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils import alembic_runner as ar
from ansible_collections.pgmigrate.pipeline.plugins.module_utils import smoke
from pgcluster import APP, APP_PASSWORD, MIGRATOR, PgCluster
from test_alembic_runner import conninfo, make_project

_copies = itertools.count(1)


@pytest.fixture(scope="module")
def template(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Migrated once per module: the test chain's head (0003) with five users the app role can read."""
    name = "smoke_template"
    pg.create_database(name)
    ar.upgrade(str(make_project(tmp_path_factory.mktemp("proj"))), conninfo(pg, name))
    with contextlib.closing(pg.connect(name)) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 5) g"
        )
        conn.commit()
    yield name
    pg.drop_database(name)


@pytest.fixture
def migrated(pg: PgCluster, template: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A private copy of the template, so each test can break it its own way."""
    name = f"smoke_{next(_copies)}"
    with contextlib.closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name} TEMPLATE {template} OWNER {MIGRATOR}")
    yield name
    pg.drop_database(name)


def run(pg: PgCluster, dbname: str, **kw) -> dict:
    kw.setdefault("target_revision", "0003")
    return smoke.run_checks(conninfo(pg, dbname), app_user=APP, app_password=APP_PASSWORD, **kw)


def detail(result: dict, name: str) -> dict:
    return next(c for c in result["checks"] if c["name"] == name)


def write_manifest(tmp_path: Path, tables: dict[str, int]) -> str:
    path = tmp_path / "manifest.json"
    path.write_text(
        json.dumps(
            {"format_version": 1, "tables": {t: {"rows": n, "checksum": "x"} for t, n in tables.items()}}
        )
    )
    return str(path)


def fingerprint(pg: PgCluster, dbname: str) -> tuple:
    """Rows and catalog state a read-only check must not touch."""
    with contextlib.closing(pg.superuser_conn(dbname)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), coalesce(sum(hashtext(u::text)), 0) FROM users u")
        rows = cur.fetchone()
        cur.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace")
        return rows, cur.fetchone()[0]


def test_every_builtin_passes_on_a_migrated_database(pg: PgCluster, migrated: str, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, {"public.users": 5, "public.alembic_version": 1})
    before = fingerprint(pg, migrated)
    result = run(pg, migrated, manifest_path=manifest)
    assert result["failed_checks"] == [], result["checks"]
    assert [c["name"] for c in result["checks"]] == [
        "app_role_connects",
        "revision_is_target",
        "indexes_valid",
        "constraints_validated",
        "no_rows_lost",
    ]
    assert result["changed"] is False
    assert fingerprint(pg, migrated) == before


def test_wrong_revision_is_named(pg: PgCluster, migrated: str) -> None:
    result = run(pg, migrated, target_revision="0005")
    assert result["failed_checks"] == ["revision_is_target"]
    assert detail(result, "revision_is_target")["detail"] == "at 0003, expected 0005"


def test_invalid_index_from_failed_concurrent_build_is_named(pg: PgCluster, migrated: str) -> None:
    with contextlib.closing(pg.connect(migrated)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute("INSERT INTO users (email) VALUES ('u1@example.com')")  # a duplicate
        with pytest.raises(psycopg2.errors.UniqueViolation):
            cur.execute('CREATE UNIQUE INDEX CONCURRENTLY "users email uniq" ON users (email)')
    result = run(pg, migrated)
    assert result["failed_checks"] == ["indexes_valid"]
    # The duplicate is found while building, before the index is even marked ready for writes.
    assert (
        detail(result, "indexes_valid")["detail"]
        == '1 unusable index(es): public."users email uniq" (not ready)'
    )


def test_not_valid_constraint_is_named(pg: PgCluster, migrated: str) -> None:
    with contextlib.closing(pg.connect(migrated)) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE users ADD CONSTRAINT email_has_at CHECK (email LIKE '%@%') NOT VALID")
        conn.commit()
    result = run(pg, migrated)
    assert result["failed_checks"] == ["constraints_validated"]
    assert (
        detail(result, "constraints_validated")["detail"]
        == "1 NOT VALID constraint(s): public.users.email_has_at"
    )


def test_deleted_row_against_manifest_is_named(pg: PgCluster, migrated: str, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, {"public.users": 5, "public.gone": 3})
    with contextlib.closing(pg.connect(migrated)) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM users WHERE id = 1")
        conn.commit()
    result = run(pg, migrated, manifest_path=manifest)
    assert result["failed_checks"] == ["no_rows_lost"]
    assert detail(result, "no_rows_lost")["detail"] == (
        "rows lost since the backup: public.gone 3 -> (missing), public.users 5 -> 4"
    )
    excused = run(
        pg, migrated, manifest_path=manifest, row_count_changes={"users": "dedupe", "public.gone": "dropped"}
    )
    assert excused["failed_checks"] == []
    assert (
        "allowed by row_count_changes: public.gone 3 -> (missing), public.users 5 -> 4"
        in (detail(excused, "no_rows_lost")["detail"])
    )


def test_no_manifest_skips_with_a_note(pg: PgCluster, migrated: str) -> None:
    assert detail(run(pg, migrated), "no_rows_lost") == {
        "name": "no_rows_lost",
        "ok": True,
        "detail": "skipped: no backup manifest given",
    }


def test_unreadable_manifest_is_one_line(pg: PgCluster, migrated: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(
        smoke.SmokeSpecError, match=r"^backup manifest .*bad.json is unreadable: JSONDecodeError"
    ):
        run(pg, migrated, manifest_path=str(bad))
    with pytest.raises(smoke.SmokeSpecError, match=r"^backup manifest .*absent.json does not exist$"):
        run(pg, migrated, manifest_path=str(tmp_path / "absent.json"))


GOOD_QUERIES = [
    {"name": "five users", "sql": "SELECT id FROM users", "expect": {"rows": 5}},
    {"name": "count", "sql": "SELECT count(*) FROM users", "expect": {"scalar": 5}},
    {
        "name": "text scalar",
        "sql": "SELECT email FROM users WHERE id = 1",
        "expect": {"scalar": "u1@example.com"},
    },
    {"name": "no orphans", "sql": "SELECT 1 FROM users WHERE email IS NULL", "expect": {"no_rows": True}},
]


def test_user_queries_pass(pg: PgCluster, migrated: str) -> None:
    result = run(pg, migrated, queries=GOOD_QUERIES)
    assert result["failed_checks"] == []
    assert [c["name"] for c in result["checks"]][-4:] == [f"query:{q['name']}" for q in GOOD_QUERIES]


@pytest.mark.parametrize(
    ("query", "expected_detail"),
    [
        ({"sql": "SELECT id FROM users", "expect": {"rows": 2}}, "more than 2 row(s), expected 2"),
        ({"sql": "SELECT id FROM users LIMIT 1", "expect": {"rows": 3}}, "1 row(s), expected 3"),
        ({"sql": "SELECT count(*) FROM users", "expect": {"scalar": 6}}, "got 5, expected 6"),
        (
            {"sql": "SELECT id FROM users", "expect": {"scalar": 1}},
            "expected exactly one row for a scalar, got 2+",
        ),
        ({"sql": "SELECT id FROM users", "expect": {"no_rows": True}}, "returned rows, first: (1,)"),
        (
            {"sql": "SELECT * FROM no_such_table", "expect": {"rows": 1}},
            'SQL error: relation "no_such_table" does not exist',
        ),
        (
            {"sql": "DELETE FROM users RETURNING id", "expect": {"no_rows": True}},
            "SQL error: cannot execute DELETE in a read-only transaction",
        ),
        (
            {"sql": "SELECT pg_sleep(2)", "expect": {"rows": 1}},
            "SQL error: canceling statement due to statement timeout",
        ),
    ],
    ids=[
        "too-many-rows",
        "too-few-rows",
        "wrong-scalar",
        "scalar-many-rows",
        "unexpected-rows",
        "sql-error",
        "write",
        "timeout",
    ],
)
def test_failing_user_query_is_named(pg: PgCluster, migrated: str, query: dict, expected_detail: str) -> None:
    before = fingerprint(pg, migrated)
    queries = [{"name": "the probe", **query}, GOOD_QUERIES[1]]
    result = run(pg, migrated, queries=queries, statement_timeout="300ms")
    assert result["failed_checks"] == ["query:the probe"]
    assert detail(result, "query:the probe")["detail"] == expected_detail
    assert detail(result, "query:count")["ok"], "a failed query must not poison the next one"
    assert fingerprint(pg, migrated) == before


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        ([{"sql": "SELECT 1", "expect": {"rows": 1}}], r"^smoke query #2 has no name"),
        (
            [{"name": "q", "sql": "SELECT 1", "expect": {"row": 1}}],
            r"^smoke query 'q': unknown expect key 'row'",
        ),
        (
            [{"name": "q", "sql": "SELECT 1", "expect": {"rows": 1, "no_rows": True}}],
            r"^smoke query 'q': expect must",
        ),
        ([{"name": "q", "expect": {"rows": 1}}], r"^smoke query 'q' has no sql$"),
        (
            [{"name": "q", "sql": "SELECT 1", "expect": {"rows": "x"}}],
            r"^smoke query 'q': expect.rows must be",
        ),
        (
            [{"name": "q", "sql": "SELECT 1", "expect": {"no_rows": False}}],
            r"^smoke query 'q': expect.no_rows must",
        ),
        (
            [{"name": "q", "sql": "SELECT 1", "expect": {"rows": 1}, "sqll": "x"}],
            r"^smoke query 'q' has unknown key",
        ),
        ([GOOD_QUERIES[0], GOOD_QUERIES[0]], r"^smoke query 'five users' is defined twice$"),
        (["SELECT 1"], r"^smoke query #2 must be a mapping"),
    ],
)
def test_bad_query_spec_is_refused_before_running_anything(
    pg: PgCluster, migrated: str, queries: list, message: str
) -> None:
    with pytest.raises(smoke.SmokeSpecError, match=message):
        run(pg, migrated, queries=[GOOD_QUERIES[1], *queries])


def test_app_role_that_cannot_connect_is_named(pg: PgCluster, migrated: str) -> None:
    result = smoke.run_checks(
        conninfo(pg, migrated),
        app_user=APP,
        app_password="wrong",
        target_revision="0003",
        queries=GOOD_QUERIES[:1],
    )
    assert result["failed_checks"] == ["app_role_connects", "query:five users"]
    assert detail(result, "app_role_connects")["detail"].endswith(f"wrong password for role {APP!r}")
    assert detail(result, "query:five users")["detail"] == "not run: the app role cannot connect"
    assert "wrong" not in json.dumps(result).replace("wrong password", "")


def test_migration_role_that_cannot_connect_is_one_line(pg: PgCluster, migrated: str) -> None:
    with pytest.raises(
        smoke.SmokeSpecError, match=r"^cannot connect to .*: wrong password for role 'meetings_owner'$"
    ):
        smoke.run_checks(
            conninfo(pg, migrated, password="nope"),
            app_user=APP,
            app_password=APP_PASSWORD,
            target_revision="0003",
        )
