"""The revision chain on a database with data: stairway, round trip, head schema, alembic check, seed."""

from __future__ import annotations

from itertools import pairwise

from chain_helpers import (
    HEAD_CONSTRAINTS,
    HEAD_INDEXES,
    HEAD_TABLES,
    REVISIONS,
    fingerprint,
    rows,
    schema,
    state,
    value,
    version,
)
from conftest import run_alembic, seed


def test_stairway_each_revision_upgrades_downgrades_and_upgrades_again(pg, seeded_db):
    for previous, rev in pairwise(REVISIONS):
        run_alembic(pg, seeded_db, "upgrade", rev)
        assert version(pg, seeded_db) == rev
        run_alembic(pg, seeded_db, "downgrade", "-1")
        assert version(pg, seeded_db) == previous
        run_alembic(pg, seeded_db, "upgrade", rev)
        assert version(pg, seeded_db) == rev


def test_first_revision_downgrades_to_an_empty_database_and_back(pg, dbname):
    run_alembic(pg, dbname, "upgrade", "0001")
    run_alembic(pg, dbname, "downgrade", "-1")
    assert state(pg, dbname) == (None, {"alembic_version"})
    run_alembic(pg, dbname, "upgrade", "0001")
    assert version(pg, dbname) == "0001"


def assert_head_schema(pg, dbname):
    head = schema(pg, dbname)
    assert head["tables"] == HEAD_TABLES
    missing = HEAD_CONSTRAINTS - set(head["constraints"])
    assert not missing, missing
    assert all(head["constraints"].values()), "every constraint validated"
    assert not [c for c in head["constraints"] if c[1].endswith("_not_null")], "helper checks dropped"
    assert set(head["indexes"]) == HEAD_INDEXES
    assert all(head["indexes"].values()), "every index valid"
    assert head["triggers"] == set(), "mirror triggers removed"
    assert {("meetings", "status"), ("users", "phone"), ("meeting_participants", "status")} <= head[
        "not_null"
    ]


def test_round_trip_preserves_every_row_and_builds_the_whole_head_schema(pg, seeded_db):
    at_0001 = fingerprint(pg, seeded_db)
    assert at_0001["participants"][0] > 0

    run_alembic(pg, seeded_db, "upgrade", "head")
    assert version(pg, seeded_db) == "0005"
    assert_head_schema(pg, seeded_db)
    assert fingerprint(pg, seeded_db) == at_0001
    assert value(pg, seeded_db, "SELECT count(*) FROM meetings WHERE status IS NULL") == 0
    assert value(pg, seeded_db, "SELECT count(*) FROM users WHERE phone <> 'unknown'") == 0
    assert rows(pg, seeded_db, "SELECT DISTINCT status FROM meeting_participants ORDER BY 1") == [
        ("accepted",),
        ("declined",),
    ]
    check = run_alembic(pg, seeded_db, "check")
    assert "No new upgrade operations detected" in check.stdout + check.stderr

    run_alembic(pg, seeded_db, "downgrade", "0001")
    assert state(pg, seeded_db) == ("0001", {"alembic_version", "users", "meetings", "meeting_participants"})
    assert fingerprint(pg, seeded_db) == at_0001

    run_alembic(pg, seeded_db, "upgrade", "head")
    assert_head_schema(pg, seeded_db)
    assert fingerprint(pg, seeded_db) == at_0001

    run_alembic(pg, seeded_db, "downgrade", "base")
    assert state(pg, seeded_db) == (None, {"alembic_version"})
    run_alembic(pg, seeded_db, "upgrade", "head")
    assert_head_schema(pg, seeded_db)
    run_alembic(pg, seeded_db, "check")


def test_status_backfill_follows_the_meeting_times(pg, seeded_db):
    run_alembic(pg, seeded_db, "upgrade", "0002")
    counts = dict(rows(pg, seeded_db, "SELECT status, count(*) FROM meetings GROUP BY 1"))
    assert set(counts) == {"completed", "in_progress", "scheduled"}
    wrong = value(
        pg,
        seeded_db,
        "SELECT count(*) FROM meetings WHERE status <> CASE WHEN end_time < now() THEN 'completed'"
        " WHEN start_time <= now() THEN 'in_progress' ELSE 'scheduled' END",
    )
    assert wrong == 0


def test_downgrade_of_0005_carries_back_changes_made_after_the_upgrade(pg, seeded_db):
    run_alembic(pg, seeded_db, "upgrade", "head")
    m_id, u_id = rows(
        pg,
        seeded_db,
        "SELECT m.id, u.id FROM meetings m CROSS JOIN users u WHERE NOT EXISTS (SELECT 1 FROM"
        " meeting_participants p WHERE p.meeting_id = m.id AND p.user_id = u.id) ORDER BY 1, 2 LIMIT 1",
    )[0]
    gone = rows(
        pg,
        seeded_db,
        "SELECT meeting_id, user_id FROM meeting_participants WHERE status = 'accepted'"
        " ORDER BY 1, 2 LIMIT 1",
    )[0]
    flipped = rows(
        pg,
        seeded_db,
        "SELECT meeting_id, user_id FROM meeting_participants WHERE status = 'declined'"
        " ORDER BY 1, 2 LIMIT 1",
    )[0]
    rows(
        pg,
        seeded_db,
        "INSERT INTO meeting_participants VALUES (%s, %s, 'tentative');"
        "DELETE FROM meeting_participants WHERE (meeting_id, user_id) = (%s, %s);"
        "UPDATE meeting_participants SET status = 'accepted' WHERE (meeting_id, user_id) = (%s, %s)",
        (m_id, u_id, *gone, *flipped),
    )
    expected = fingerprint(pg, seeded_db)

    run_alembic(pg, seeded_db, "downgrade", "0004")
    assert fingerprint(pg, seeded_db) == expected
    attended = dict(
        ((m, u), a)
        for m, u, a in rows(pg, seeded_db, "SELECT meeting_id, user_id, attended FROM meeting_participants")
    )
    assert attended[(m_id, u_id)] is False, "tentative collapses to not attended (documented loss)"
    assert gone not in attended
    assert attended[flipped] is True


def test_seed_is_deterministic_idempotent_and_sets_the_sequences(pg, seeded_db):
    # dbname is the same database as seeded_db; seed a second, fresh one to compare.
    other = f"{seeded_db}_again"
    pg.create_database(other)
    try:
        run_alembic(pg, other, "upgrade", "0001")
        seed(pg, other)
        assert fingerprint(pg, other) == fingerprint(pg, seeded_db)
    finally:
        pg.drop_database(other)

    before = fingerprint(pg, seeded_db)
    seed(pg, seeded_db)
    assert fingerprint(pg, seeded_db) == before, "a second run inserts nothing"

    facts = rows(
        pg,
        seeded_db,
        "SELECT (SELECT count(*) FROM meetings WHERE now() BETWEEN start_time AND end_time),"
        " (SELECT count(*) FROM meetings WHERE end_time < now()),"
        " (SELECT count(*) FROM meetings WHERE start_time > now()),"
        " (SELECT avg(attended::int) FROM meeting_participants),"
        " (SELECT min(start_time) > now() - interval '731 days' FROM meetings),"
        " (SELECT max(start_time) < now() + interval '183 days' FROM meetings)",
    )[0]
    in_progress, past, future, attended, after_start, before_end = facts
    assert in_progress > 0 and past > 0 and future > 0
    assert 0.6 < attended < 0.8
    assert after_start and before_end
    new_ids = rows(
        pg,
        seeded_db,
        "INSERT INTO users (email, name, password_hash) VALUES ('new@example.com', 'New', 'x') RETURNING id;",
    )
    assert new_ids[0][0] == value(pg, seeded_db, "SELECT max(id) FROM users")
