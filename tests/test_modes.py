"""Lock safety while migrating, through migrate.yml: a long transaction holds a lock 0002's DDL needs.

lock_timeout fires, the revision is retried (env.py per statement, then the runner per revision, with
backoff) and the retries are reported. Either the blocker ends and the run succeeds, or it never does and
the run fails and restores: nothing half-applied either way.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from ansible_run import failure_lines
from pgcluster import APP, APP_PASSWORD, PgCluster
from test_pipeline import fingerprint, migrate, reports, revision

from module_utils.fingerprint import compare

FAST_LOCKS = {
    "db_migrate_lock_timeout": "100ms",
    "db_migrate_lock_retries": 1,
    "db_migrate_lock_retry_delay": 1,
}


def hold_meetings(pg: PgCluster, dbname: str):
    """An application transaction left open after reading meetings: ALTER TABLE meetings must wait."""
    conn = pg.connect(dbname, user=APP, password=APP_PASSWORD)
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM meetings")
    return conn


def release_on_first_retry(progress_dir: Path, blocker, stop: threading.Event) -> None:
    """End the blocking transaction once the runner says it retries (not before: the retry is the test)."""
    while not stop.is_set():
        if any("lock timeout, retry 1/" in p.read_text() for p in progress_dir.glob("*.progress")):
            blocker.rollback()
            return
        time.sleep(0.2)


def test_a_lock_timeout_is_retried_and_the_run_succeeds_when_the_blocker_ends(
    pg: PgCluster, seeded_db: str, tmp_path: Path
):
    blocker = hold_meetings(pg, seeded_db)
    stop = threading.Event()
    watcher = threading.Thread(target=release_on_first_retry, args=(tmp_path / "reports", blocker, stop))
    watcher.start()
    try:
        proc = migrate(pg, seeded_db, tmp_path, extra=FAST_LOCKS)
    finally:
        stop.set()
        watcher.join()
        blocker.close()
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert revision(pg, seeded_db) == "0005"
    (report,) = reports(tmp_path / "reports")
    (retry,) = report["steps"]["migrate"]["retries"]
    assert retry["revision"] == "0002" and retry["attempt"] == 1 and "lock timeout" in retry["error"]
    assert "revisions retried" in proc.stdout


def test_a_lock_that_is_never_released_fails_and_restores_with_nothing_half_applied(
    pg: PgCluster, seeded_db: str, tmp_path: Path
):
    before = fingerprint(pg, seeded_db)
    with contextlib.closing(hold_meetings(pg, seeded_db)):
        proc = migrate(pg, seeded_db, tmp_path, extra=FAST_LOCKS)
    assert proc.returncode != 0
    assert any("revision 0002 failed" in line and "lock timeout" in line for line in failure_lines(proc))
    assert revision(pg, seeded_db) == "0001"
    assert compare(before, fingerprint(pg, seeded_db)) == []
    (report,) = reports(tmp_path / "reports")
    assert report["outcome"] == "failed-and-restored"
    assert [r["attempt"] for r in report["steps"]["migrate"]["retries"]] == [1]
