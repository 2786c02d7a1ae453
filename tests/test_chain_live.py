"""The chain against a database in use: watched from another connection while it runs, interrupted,
locked out, handed a failed index build, written to during the participants copy."""

from __future__ import annotations

import time
from contextlib import closing, suppress

import psycopg2
from chain_helpers import (
    alembic_popen,
    failed_line,
    fingerprint,
    rows,
    state,
    value,
    version,
    wait_for,
)
from conftest import run_alembic

from migrations.safe_ops import advisory_lock_key

SLOW_BATCHES = {"MIGRATION_BATCH_SIZE": "100", "MIGRATION_BATCH_SLEEP": "0.2"}
MEETINGS = 1000  # conftest.TINY_SCALE
EXPECTED_STATUS = (
    "CASE WHEN end_time < now() THEN 'completed' WHEN start_time <= now() THEN 'in_progress'"
    " ELSE 'scheduled' END"
)


def backfilled(pg, dbname) -> int | None:
    """Committed backfill progress as another session sees it (None before the column exists)."""
    try:
        return value(pg, dbname, "SELECT count(status) FROM meetings")
    except psycopg2.errors.UndefinedColumn:
        return None


def test_backfill_commits_each_batch_as_it_goes(pg, seeded_db):
    proc = alembic_popen(pg, seeded_db, "upgrade", "0002", env_extra=SLOW_BATCHES)
    seen: set[int] = set()
    while proc.poll() is None:
        seen.add(backfilled(pg, seeded_db) or 0)
        time.sleep(0.05)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    intermediate = sorted(v for v in seen if 0 < v < MEETINGS)
    assert len(intermediate) >= 3, f"saw only {sorted(seen)}"
    assert all(v % 100 == 0 for v in intermediate), "progress moves one committed batch at a time"
    assert "batch 1: rows 1..100, 100 updated" in err
    assert "batch 10: rows 901..1000, 100 updated" in err


def test_interrupted_backfill_resumes_and_ends_as_an_uninterrupted_run_would(pg, seeded_db):
    before = fingerprint(pg, seeded_db)
    proc = alembic_popen(pg, seeded_db, "upgrade", "0002", env_extra=SLOW_BATCHES)
    wait_for(lambda: (backfilled(pg, seeded_db) or 0) >= 300)
    terminated = value(
        pg,
        seeded_db,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'alembic-migrate'",
    )
    assert terminated == 1
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "FAILED: migration failed: server closed the connection unexpectedly" in out
    assert version(pg, seeded_db) == "0001", "the revision is not stamped"
    partial = backfilled(pg, seeded_db)
    assert 300 <= partial < MEETINGS, "finished batches stay committed"

    resumed = run_alembic(pg, seeded_db, "upgrade", "0002", env_extra={"MIGRATION_BATCH_SIZE": "100"})
    assert version(pg, seeded_db) == "0002"
    assert "batch 1: rows 1..100, 0 updated" in resumed.stderr, "done batches are skipped, not redone"
    # Same result as an uninterrupted run: every status follows the times (none near a boundary moved
    # within the few seconds of this test: the seed places times on quarter hours).
    assert value(pg, seeded_db, f"SELECT count(*) FROM meetings WHERE status <> {EXPECTED_STATUS}") == 0
    assert value(pg, seeded_db, "SELECT count(*) FROM meetings WHERE status IS NULL") == 0
    assert fingerprint(pg, seeded_db) == before
    run_alembic(pg, seeded_db, "upgrade", "head")
    run_alembic(pg, seeded_db, "check")


def test_second_migrator_fails_fast_naming_the_lock_holder(pg, seeded_db):
    before = state(pg, seeded_db)
    with closing(
        psycopg2.connect(
            host="127.0.0.1",
            port=pg.port,
            dbname=seeded_db,
            user="meetings_owner",
            password="lab-owner-pw",
            application_name="dba-manual-migration",
        )
    ) as holder:
        holder.autocommit = True
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s), pg_backend_pid()", [advisory_lock_key()])
            holder_pid = cur.fetchone()[1]
        started = time.monotonic()
        proc = run_alembic(pg, seeded_db, "upgrade", "head", check=False)
        assert time.monotonic() - started < 10, "fails fast, does not wait for the lock"
        line = failed_line(proc)
        assert "another migration holds the migration advisory lock" in line
        assert f"pid {holder_pid}" in line
        assert "'dba-manual-migration'" in line
        assert "client 127.0.0.1" in line
        assert "backend_start 20" in line
        assert state(pg, seeded_db) == before
        # Read-only commands still work while a migration runs.
        assert "0001" in run_alembic(pg, seeded_db, "current").stdout
    run_alembic(pg, seeded_db, "upgrade", "head")
    assert version(pg, seeded_db) == "0005"


def test_invalid_leftover_of_a_failed_concurrent_build_is_dropped_and_rebuilt(pg, seeded_db):
    run_alembic(pg, seeded_db, "upgrade", "0002")
    with closing(pg.connect(seeded_db)) as conn:
        conn.autocommit = True
        # A UNIQUE build on a column full of duplicates fails and leaves an INVALID index.
        with conn.cursor() as cur, suppress(psycopg2.errors.UniqueViolation):
            cur.execute("CREATE UNIQUE INDEX CONCURRENTLY idx_meetings_status ON meetings (status)")
    assert rows(
        pg,
        seeded_db,
        "SELECT indisvalid, indisunique FROM pg_index WHERE indexrelid = 'idx_meetings_status'::regclass",
    ) == [(False, True)]

    out = run_alembic(pg, seeded_db, "upgrade", "0003")
    assert "dropping INVALID index idx_meetings_status" in out.stderr
    assert rows(
        pg,
        seeded_db,
        "SELECT indisvalid, indisunique FROM pg_index WHERE indexrelid = 'idx_meetings_status'::regclass",
    ) == [(True, False)]


def test_participants_written_during_the_copy_reach_the_new_table(pg, seeded_db):
    run_alembic(pg, seeded_db, "upgrade", "0004")
    proc = alembic_popen(
        pg,
        seeded_db,
        "upgrade",
        "0005",
        env_extra={"MIGRATION_BATCH_SIZE": "100", "MIGRATION_BATCH_SLEEP": "0.2"},
    )
    wait_for(lambda: value(pg, seeded_db, "SELECT to_regclass('meeting_participants_new') IS NOT NULL"))
    wait_for(lambda: value(pg, seeded_db, "SELECT count(*) FROM meeting_participants_new") > 200)
    # The old application keeps writing to the legacy table: behind, inside and ahead of the copy.
    rows(
        pg,
        seeded_db,
        "UPDATE meeting_participants SET attended = NOT attended WHERE meeting_id IN (1, 500, 999);"
        "DELETE FROM meeting_participants WHERE meeting_id IN (2, 998);"
        "INSERT INTO meeting_participants (meeting_id, user_id, attended)"
        " SELECT m, u, true FROM (VALUES (3), (997)) AS v(m), generate_series(1, 200) AS u"
        " ON CONFLICT DO NOTHING",
    )
    expected = fingerprint(pg, seeded_db)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert fingerprint(pg, seeded_db) == expected
    assert value(pg, seeded_db, "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == 0


def hold_table_lock(pg, dbname):
    """An open transaction that has read meetings: any ALTER TABLE meetings must wait for it."""
    conn = pg.connect(dbname)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM meetings")
    return conn


def test_ddl_that_cannot_get_its_lock_backs_off_and_retries(pg, seeded_db):
    blocker = hold_table_lock(pg, seeded_db)
    seen: list[str] = []
    try:
        proc = alembic_popen(pg, seeded_db, "-x", "lock_timeout=200ms", "upgrade", "0002")
        for line in proc.stderr:
            seen.append(line)
            if "retrying" in line:
                break
    finally:
        blocker.rollback()
        blocker.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert any("lock_timeout (200ms) on attempt 1/5, retrying in 0.5s" in line for line in seen), seen
    assert version(pg, seeded_db) == "0002"


def test_ddl_that_never_gets_its_lock_fails_cleanly_and_changes_nothing(pg, seeded_db):
    before = state(pg, seeded_db)
    blocker = hold_table_lock(pg, seeded_db)
    try:
        started = time.monotonic()
        proc = run_alembic(pg, seeded_db, "-x", "lock_timeout=100ms", "upgrade", "0002", check=False)
        elapsed = time.monotonic() - started
    finally:
        blocker.rollback()
        blocker.close()
    line = failed_line(proc)
    assert "canceling statement due to lock timeout" in line
    assert proc.stderr.count("retrying in") == 4, "five attempts with backoff"
    assert elapsed < 30
    assert state(pg, seeded_db) == before
    assert not value(
        pg,
        seeded_db,
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'meetings'::regclass AND attname = 'status'",
    )


def test_interrupted_participants_copy_resumes_to_the_same_result(pg, seeded_db):
    run_alembic(pg, seeded_db, "upgrade", "0004")
    proc = alembic_popen(pg, seeded_db, "upgrade", "0005", env_extra=SLOW_BATCHES)
    wait_for(lambda: value(pg, seeded_db, "SELECT to_regclass('meeting_participants_new') IS NOT NULL"))
    wait_for(lambda: value(pg, seeded_db, "SELECT count(*) FROM meeting_participants_new") >= 400)
    value(
        pg,
        seeded_db,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'alembic-migrate'",
    )
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert version(pg, seeded_db) == "0004"
    # Meanwhile the application keeps writing to the legacy table; the trigger is still mirroring.
    rows(pg, seeded_db, "UPDATE meeting_participants SET attended = NOT attended WHERE meeting_id = 1")
    expected = fingerprint(pg, seeded_db)

    run_alembic(pg, seeded_db, "upgrade", "0005", env_extra={"MIGRATION_BATCH_SIZE": "100"})
    assert version(pg, seeded_db) == "0005"
    assert fingerprint(pg, seeded_db) == expected
    assert value(pg, seeded_db, "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == 0
    run_alembic(pg, seeded_db, "check")
