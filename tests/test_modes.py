"""Lock safety through migrate.yml: one run per database, and lock timeouts retried, never half-applied.

Two runs started together: exactly one migrates, the other stops in pre-flight naming the holder.
A long transaction holds a lock 0002's DDL needs: lock_timeout fires, the revision is retried (env.py per
statement, then the runner per revision, with backoff) and the retries are reported. Either the blocker
ends and the run succeeds, or it never does and the run fails and restores: nothing half-applied.
"""

from __future__ import annotations

import contextlib
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils import activity, pgconn
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.fingerprint import compare
from ansible_run import ROOT, ansible_env, failure_lines, playbook_cmd, single_host
from pgcluster import APP, APP_PASSWORD, MIGRATOR, MIGRATOR_PASSWORD, PgCluster
from test_pipeline import fingerprint, migrate, pipeline_vars, reports, revision

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


class LateBlocker:
    """The application transaction that blocks 0002, opened once the run is past pre-flight.

    Pre-flight's blocker check would (rightly) refuse a run while an idle-in-transaction session exists, so
    the lock path is only reachable for a blocker that appears later: here, once the run's progress file
    exists (the backup has started). With ``release_on_retry`` it ends its transaction as soon as the runner
    reports a lock-timeout retry (not before: the retry is the test).
    """

    def __init__(self, pg: PgCluster, dbname: str, reports_dir: Path, release_on_retry: bool) -> None:
        self.pg, self.dbname, self.reports_dir, self.release_on_retry = (
            pg,
            dbname,
            reports_dir,
            release_on_retry,
        )
        self.stop = threading.Event()
        self.conn = None
        self.thread = threading.Thread(target=self._run)

    def _progress(self) -> str:
        return "".join(p.read_text() for p in self.reports_dir.glob("*.progress"))

    def _run(self) -> None:
        while not self.stop.is_set() and not list(self.reports_dir.glob("*.progress")):
            time.sleep(0.05)
        if self.stop.is_set():
            return
        self.conn = hold_meetings(self.pg, self.dbname)
        while self.release_on_retry and not self.stop.is_set():
            if "lock timeout, retry 1/" in self._progress():
                self.conn.rollback()
                return
            time.sleep(0.2)

    def __enter__(self) -> LateBlocker:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        if self.conn is not None:
            self.conn.close()


def test_a_lock_timeout_is_retried_and_the_run_succeeds_when_the_blocker_ends(
    pg: PgCluster, seeded_db: str, tmp_path: Path
):
    with LateBlocker(pg, seeded_db, tmp_path / "reports", release_on_retry=True) as blocker:
        proc = migrate(pg, seeded_db, tmp_path, extra=FAST_LOCKS)
    assert blocker.conn is not None, "the blocker never started"
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert revision(pg, seeded_db) == "0005"
    (report,) = reports(tmp_path / "reports")
    (retry,) = report["steps"]["migrate"]["retries"]
    assert retry["revision"] == "0002" and retry["attempt"] == 1 and "lock timeout" in retry["error"]
    assert "revisions retried" in proc.stdout


def test_a_lock_that_is_never_released_fails_and_is_undone_with_nothing_half_applied(
    pg: PgCluster, seeded_db: str, tmp_path: Path
):
    before = fingerprint(pg, seeded_db)
    with LateBlocker(pg, seeded_db, tmp_path / "reports", release_on_retry=False) as blocker:
        proc = migrate(pg, seeded_db, tmp_path, extra=FAST_LOCKS)
    assert blocker.conn is not None, "the blocker never started"
    assert proc.returncode != 0
    assert any("revision 0002 failed" in line and "lock timeout" in line for line in failure_lines(proc))
    assert revision(pg, seeded_db) == "0001"
    assert compare(before, fingerprint(pg, seeded_db)) == []
    (report,) = reports(tmp_path / "reports")
    # Online mode: 0002 gave up before committing anything, so nothing needed downgrading and nothing was
    # restored (the blocking application session was never cut); the schema check proved it.
    assert report["outcome"] == "failed-and-downgraded"
    assert report["steps"]["downgrade"]["downgraded"] == []
    assert report["steps"]["migrate"]["failed_revision_committed"] is False
    assert [r["attempt"] for r in report["steps"]["migrate"]["retries"]] == [1]


def test_two_simultaneous_runs_exactly_one_migrates_and_the_other_names_the_holder(
    pg: PgCluster, seeded_db: str, tmp_path: Path
):
    procs = []
    for name in ("first", "second"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        cmd = playbook_cmd(
            "playbooks/migrate.yml", single_host(pg, seeded_db), pipeline_vars(run_dir), run_dir
        )
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0 and codes[1] != 0, outputs
    loser_index = [p.returncode for p in procs].index(codes[1])
    winner = reports(tmp_path / ("first", "second")[1 - loser_index] / "reports")[0]
    # The loser stops in pre-flight naming the winner's run: the history's unfinished-run check or, when
    # both pass it at the same instant, the run lock (whose holder's application name carries the run id).
    line = next(x for x in outputs[loser_index].splitlines() if "fatal:" in x and winner["run_id"] in x)
    assert "never finished" in line or "another run holds the run lock" in line
    assert revision(pg, seeded_db) == "0005"
    outcomes = sorted(
        r["outcome"] for name in ("first", "second") for r in reports(tmp_path / name / "reports")
    )
    assert outcomes == ["refused", "succeeded"]
    assert not list((tmp_path / ("first", "second")[loser_index]).glob("backups/*"))  # it backed nothing up


def test_the_run_lock_holder_watches_the_outermost_ansible_playbook_not_its_per_task_worker(tmp_path: Path):
    """ansible-playbook forks a worker per task, which exits when the task that took the lock ends: the
    holder must watch the ansible-playbook the worker came from, or the lock ends with the task."""
    script = tmp_path / "ansible-playbook"  # stands in for both: the outer run and its per-task worker
    script.write_text(
        '#!/bin/sh\nif [ "$1" = outer ]; then "$0" worker & echo $! > "$2"; wait; exit; fi\nsleep 30\n'
    )
    script.chmod(0o700)
    worker_pid = tmp_path / "worker.pid"
    outer = subprocess.Popen([str(script), "outer", str(worker_pid)])
    try:
        deadline = time.monotonic() + 5
        while not worker_pid.exists() or not worker_pid.read_text().strip():
            assert time.monotonic() < deadline, "the stand-in worker never started"
            time.sleep(0.05)
        worker = int(worker_pid.read_text())
        # A module's parent is the worker; walking up from there must end at the outer ansible-playbook.
        assert activity._playbook_pid(start=worker) == outer.pid
    finally:
        if worker_pid.exists() and worker_pid.read_text().strip():
            subprocess.run(["pkill", "-P", worker_pid.read_text().strip()], check=False)
        subprocess.run(["pkill", "-P", str(outer.pid)], check=False)
        outer.kill()
        outer.wait()


def test_the_run_lock_admits_one_holder_names_it_and_is_released(pg: PgCluster, dbname: str, tmp_path: Path):
    ci = pgconn.ConnInfo("127.0.0.1", pg.port, dbname, MIGRATOR, MIGRATOR_PASSWORD)
    first = activity.acquire_run_lock(ci, "RUN-ONE", str(tmp_path / "one.token"), watch_pid=0)
    assert first["locked"] and stat.S_IMODE((tmp_path / "one.token").stat().st_mode) == 0o600
    try:
        assert activity.acquire_run_lock(ci, "RUN-TWO", str(tmp_path / "two.token"), watch_pid=0) == {
            "locked": False
        }
        assert not (tmp_path / "two.token").exists()
        # A refused run must never remove the holder's token (that would end the first run's lock).
        with pytest.raises(activity.ActivityError, match=r"one\.token exists"):
            activity.acquire_run_lock(ci, "RUN-TWO", str(tmp_path / "one.token"), watch_pid=0)
        assert (tmp_path / "one.token").exists()
        with contextlib.closing(pgconn.connect(ci.with_db("postgres"))) as conn:
            (holder,) = activity.lock_holders(conn, activity.run_lock_for(dbname))
        assert holder["application_name"].startswith("pg-migrate run RUN-ONE on ")
        assert holder["since"].startswith("20")
        # The holder sits in the maintenance database: the target stays free for snapshots and swaps.
        with contextlib.closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [dbname])
            assert cur.fetchone()[0] == 0
    finally:
        assert activity.release_run_lock(str(tmp_path / "one.token"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        again = activity.acquire_run_lock(ci, "RUN-THREE", str(tmp_path / "three.token"), watch_pid=0)
        if again["locked"]:
            break
        time.sleep(0.3)
    assert again["locked"]
    assert activity.release_run_lock(str(tmp_path / "three.token"))
    assert activity.release_run_lock(str(tmp_path / "three.token")) is False  # idempotent
