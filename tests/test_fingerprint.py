"""The fingerprint: equal for equal data wherever it lives, different after any row changes."""

from __future__ import annotations

from contextlib import closing

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.fingerprint import (
    compare,
    database_fingerprint,
    expected_methods,
)

# Awkward types on purpose: their text form depends on session settings the fingerprint pins.
SAMPLE_SCHEMA = """
CREATE SCHEMA "odd schema";
CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
INSERT INTO alembic_version VALUES ('0001');
CREATE TABLE users (
    id integer PRIMARY KEY, name text NOT NULL, created timestamptz NOT NULL, score float8,
    avatar bytea, prefs jsonb, lunch interval
);
CREATE TABLE "odd schema"."Meet""ings" (id bigint PRIMARY KEY, user_id integer REFERENCES users, day date);
CREATE TABLE empty_one (id integer);
"""
SAMPLE_ROWS = """
INSERT INTO users
SELECT g, 'user ' || g, timestamptz '2026-01-01 00:00+00' + g * interval '37 minutes', g / 7.0,
       decode(md5(g::text), 'hex'), jsonb_build_object('n', g), g * interval '1 second'
  FROM generate_series(1, %(users)s) g ORDER BY {order};
INSERT INTO "odd schema"."Meet""ings" SELECT g, 1 + g %% %(users)s, date '2026-01-01' + g %% 300
  FROM generate_series(1, %(meetings)s) g ORDER BY {order};
"""


def load_sample(pg, dbname: str, users: int = 300, meetings: int = 900, order: str = "g") -> None:
    """Create the sample tables and rows in ``order`` (physical order must not matter)."""
    with closing(pg.connect(dbname)) as conn, conn.cursor() as cur:
        cur.execute(SAMPLE_SCHEMA)
        cur.execute(SAMPLE_ROWS.format(order=order), {"users": users, "meetings": meetings})
        conn.commit()


def fp(pg, dbname: str, **session) -> dict:
    with closing(pg.connect(dbname)) as conn:
        if session:
            with conn.cursor() as cur:
                for name, value in session.items():
                    cur.execute("SELECT set_config(%s, %s, false)", (name, value))
            conn.commit()
        return database_fingerprint(conn)


def execute(pg, dbname: str, statement: str) -> None:
    with closing(pg.connect(dbname)) as conn, conn.cursor() as cur:
        cur.execute(statement)
        conn.commit()


@pytest.fixture
def other_db(pg, dbname):
    name = f"{dbname}_twin"
    pg.create_database(name)
    yield name
    pg.drop_database(name)


def test_covers_every_table_with_counts(pg, dbname):
    load_sample(pg, dbname)
    result = fp(pg, dbname)
    assert {key: value["rows"] for key, value in result.items()} == {
        'odd schema.Meet"ings': 900,
        "public.alembic_version": 1,
        "public.empty_one": 0,
        "public.users": 300,
    }
    assert result["public.empty_one"]["checksum"] == "0"


def test_equal_for_identical_data_in_another_database_and_order(pg, dbname, other_db):
    load_sample(pg, dbname, order="g")
    load_sample(pg, other_db, order="random()")
    assert fp(pg, dbname) == fp(pg, other_db)


def test_session_settings_do_not_change_it(pg, dbname):
    load_sample(pg, dbname)
    baseline = fp(pg, dbname)
    odd = fp(
        pg,
        dbname,
        DateStyle="SQL, DMY",
        TimeZone="Asia/Kathmandu",
        extra_float_digits="-3",
        IntervalStyle="iso_8601",
        bytea_output="escape",
    )
    assert odd == baseline


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("UPDATE users SET name = 'someone else' WHERE id = 17", "public.users: same row count (300)"),
        ("UPDATE users SET score = score + 1e-12 WHERE id = 17", "public.users: same row count (300)"),
        ("INSERT INTO empty_one VALUES (1)", "public.empty_one: 1 rows, expected 0"),
        (
            'DELETE FROM "odd schema"."Meet""ings" WHERE id = 5',
            'odd schema.Meet"ings: 899 rows, expected 900',
        ),
        ("UPDATE alembic_version SET version_num = '0002'", "public.alembic_version: same row count (1)"),
        ("DROP TABLE empty_one", "public.empty_one: missing"),
        ("CREATE TABLE newcomer (id int)", "public.newcomer: unexpected table"),
    ],
    ids=["changed-row", "float-last-digit", "added-row", "deleted-row", "revision", "dropped", "new-table"],
)
def test_detects_each_kind_of_change(pg, dbname, damage, expected):
    load_sample(pg, dbname)
    before = fp(pg, dbname)
    execute(pg, dbname, damage)
    problems = compare(before, fp(pg, dbname))
    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_swapped_values_between_rows_are_detected(pg, dbname):
    """Same multiset of column values, different rows: a per-column checksum would miss this."""
    load_sample(pg, dbname)
    before = fp(pg, dbname)
    execute(
        pg,
        dbname,
        "UPDATE users SET name = CASE id WHEN 1 THEN 'user 2' ELSE 'user 1' END WHERE id IN (1, 2)",
    )
    assert compare(before, fp(pg, dbname)) == ["public.users: same row count (300) but different contents"]


def test_rows_are_hashed_by_type_and_by_text_where_a_type_has_no_hash(pg, dbname):
    """json and point have no hash function: those tables fall back to text, the rest use the fast hash."""
    load_sample(pg, dbname)
    execute(pg, dbname, "CREATE TABLE notes (id int, body json, at point)")
    execute(pg, dbname, "INSERT INTO notes VALUES (1, '{}', '(1,2)')")
    result = fp(pg, dbname)
    assert {key: value["method"] for key, value in result.items()} == {
        'odd schema.Meet"ings': "hash",
        "public.alembic_version": "hash",
        "public.empty_one": "hash",
        "public.notes": "text",
        "public.users": "hash",
    }
    execute(pg, dbname, "UPDATE notes SET body = '{\"a\": 1}'")
    assert compare(result, fp(pg, dbname)) == ["public.notes: same row count (1) but different contents"]


def test_a_verifier_recomputes_each_table_the_way_the_manifest_did(pg, dbname):
    """A manifest written before methods existed (no method: text) still verifies, by text."""
    load_sample(pg, dbname)
    with closing(pg.connect(dbname)) as conn:
        by_text = database_fingerprint(conn, {"public.users": "text"})
    assert by_text["public.users"]["method"] == "text"
    with closing(pg.connect(dbname)) as conn:
        all_text = database_fingerprint(conn, {key: "text" for key in by_text})
    legacy = {key: {k: v for k, v in entry.items() if k != "method"} for key, entry in all_text.items()}
    assert set(expected_methods(legacy).values()) == {"text"}
    with closing(pg.connect(dbname)) as conn:
        again = database_fingerprint(conn, expected_methods(legacy))
    assert compare(legacy, again) == []
    auto = fp(pg, dbname)
    assert compare(by_text, auto) == ["public.users: fingerprinted by hash, expected text"]
