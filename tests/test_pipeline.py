"""playbooks/migrate.yml and playbooks/restore.yml end to end, through the real ansible-playbook.

Every failing case asserts three things: the run failed (non-zero), the cause is named in one line, and the
database is fingerprint-equal to what it was before the run (or, for refusals, untouched and unbacked-up).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.checksums import schema_description
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.fingerprint import (
    compare,
    database_fingerprint,
)
from ansible_run import ROOT, failure_lines, run_playbook, single_host
from pgcluster import APP, APP_PASSWORD, MIGRATOR_PASSWORD, PgCluster, free_port

FAILING_REVISION = ROOT / "tests" / "fixtures" / "0006_fails_after_committed_work.py"


def fingerprint(pg: PgCluster, dbname: str) -> dict:
    """The data's fingerprint; the run history (schema pipeline_history) changes on every run by design."""
    with contextlib.closing(pg.superuser_conn(dbname)) as conn:
        tables = database_fingerprint(conn)
    return {k: v for k, v in tables.items() if not k.startswith("pipeline_history.")}


def revision(pg: PgCluster, dbname: str) -> str | None:
    with contextlib.closing(pg.superuser_conn(dbname)) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('alembic_version') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT version_num FROM alembic_version")
        return cur.fetchone()[0]


def databases(pg: PgCluster) -> set[str]:
    with contextlib.closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")
        return {r[0] for r in cur.fetchall()}


def reports(report_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(report_dir.glob("*.json"))]


def pipeline_vars(tmp_path: Path, **extra) -> dict:
    return {
        "db_backup_dir": str(tmp_path / "backups"),
        "db_report_dir": str(tmp_path / "reports"),
        **extra,
    }


def migrate(pg, dbname, tmp_path, *args, extra: dict | None = None, host_extra: dict | None = None):
    return run_playbook(
        "playbooks/migrate.yml",
        single_host(pg, dbname, **(host_extra or {})),
        pipeline_vars(tmp_path, **(extra or {})),
        tmp_path,
        *args,
    )


# Distinct batch sizes per mode, so the progress file shows which one the migration ran with.
BATCH_SIZES = {"db_migrate_batch_size": 100, "db_migrate_offline_batch_size": 250}


def batch_widths(report_dir: Path) -> set[int]:
    """Key ranges of the backfill batches the run's progress file logged ("batch 3: rows 201..300, ...")."""
    text = "".join(p.read_text() for p in report_dir.glob("*.progress"))
    return {int(hi) - int(lo) + 1 for lo, hi in re.findall(r"batch \d+: rows (\d+)\.\.(\d+)", text)}


def failing_project(tmp_path: Path) -> Path:
    """The shipped project plus a revision that commits work and then fails."""
    dest = tmp_path / "project"
    shutil.copytree(ROOT / "migrations", dest / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "alembic.ini", dest / "alembic.ini")
    shutil.copy(FAILING_REVISION, dest / "migrations" / "versions" / FAILING_REVISION.name)
    return dest / "alembic.ini"


def test_migrates_to_head_with_a_verified_backup_and_a_report(pg: PgCluster, seeded_db: str, tmp_path: Path):
    proc = migrate(pg, seeded_db, tmp_path, extra=BATCH_SIZES)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert revision(pg, seeded_db) == "0005"
    # A manual run is online: the application may write, so the small batches (short row locks).
    assert batch_widths(tmp_path / "reports") == {100}

    (report,) = reports(tmp_path / "reports")
    assert report["outcome"] == "succeeded"
    assert [a["revision"] for a in report["applied"]] == ["0002", "0003", "0004", "0005"]
    steps = {"preflight", "history", "lock", "window", "lint", "snapshot", "backup", "migrate", "smoke"}
    assert set(report["timings"]) == steps
    assert "SUCCEEDED" in proc.stdout

    backup_dir = tmp_path / "backups"
    assert stat.S_IMODE(backup_dir.stat().st_mode) == 0o700
    manifest = json.loads(Path(report["backup"]["manifest"]).read_text())
    assert manifest["starting_revision"] == "0001"
    for path in backup_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    for secret in (MIGRATOR_PASSWORD, APP_PASSWORD):
        assert secret not in proc.stdout + proc.stderr
        assert secret not in json.dumps(report) and secret not in json.dumps(manifest)


def test_check_mode_lists_pending_sql_and_changes_nothing(pg: PgCluster, seeded_db: str, tmp_path: Path):
    before = fingerprint(pg, seeded_db)
    proc = migrate(pg, seeded_db, tmp_path, "--check")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0002" in proc.stdout and "ALTER TABLE meetings ADD COLUMN" in proc.stdout
    assert compare(before, fingerprint(pg, seeded_db)) == []
    assert not list((tmp_path / "backups").glob("*.dump")) if (tmp_path / "backups").exists() else True
    (report,) = reports(tmp_path / "reports")
    assert report["outcome"] == "dry-run"


def test_a_revision_that_fails_after_committed_work_is_undone_by_the_restore(
    pg: PgCluster, seeded_db: str, tmp_path: Path
):
    before = fingerprint(pg, seeded_db)
    dbs_before = databases(pg)
    proc = migrate(pg, seeded_db, tmp_path, extra={"db_alembic_config": str(failing_project(tmp_path))})
    assert proc.returncode != 0
    lines = failure_lines(proc)
    assert any("0006 failed after committing its batches" in line for line in lines), proc.stdout[-4000:]

    assert revision(pg, seeded_db) == "0001"
    assert compare(before, fingerprint(pg, seeded_db)) == []
    forensic = databases(pg) - dbs_before
    assert len(forensic) == 1
    with contextlib.closing(pg.superuser_conn(forensic.pop())) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM audit_log")  # the damage is kept for forensics
        assert cur.fetchone()[0] == 200

    (report,) = reports(tmp_path / "reports")
    assert report["outcome"] == "failed-and-restored"
    assert report["failed_step"] == "migrate" and report["revision_to"] == "0001"
    # Online mode: no downgrade undoes work Alembic never recorded; the report says what a restore costs.
    (note,) = report["notes"]
    assert "revision 0006 committed work outside its transaction" in note
    assert note.endswith("may be lost")
    assert "writes the application made after the backup may be lost" in "\n".join(lines)


class AppWriter:
    """The application, writing users through the whole run (online mode): each committed id is kept."""

    def __init__(self, pg: PgCluster, dbname: str) -> None:
        self.pg, self.dbname = pg, dbname
        self.ids: list[int] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                with contextlib.closing(
                    self.pg.connect(self.dbname, user=APP, password=APP_PASSWORD)
                ) as conn:
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        while not self.stop.is_set():
                            n += 1
                            cur.execute(
                                "INSERT INTO users (email, name, password_hash) VALUES (%s, 'writer', 'x') "
                                "RETURNING id",
                                (f"writer{n}@example.org",),
                            )
                            self.ids.append(cur.fetchone()[0])
                            time.sleep(0.05)
            except Exception as exc:  # a DDL lock or the swap may end a session: reconnect, count it
                self.errors.append(str(exc).splitlines()[0])
                time.sleep(0.1)

    def __enter__(self) -> AppWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def test_online_a_failing_smoke_query_is_undone_by_downgrade_keeping_the_applications_writes(
    pg: PgCluster, seeded_db: str, tmp_path: Path
):
    """Online mode (the default for a manual run): head is downgraded back to 0001, the schema is proved
    to be the starting one, nothing is restored, and every row the application wrote meanwhile stays."""
    before = fingerprint(pg, seeded_db)
    with contextlib.closing(pg.superuser_conn(seeded_db)) as conn:
        schema_before = schema_description(conn)
    dbs_before = databases(pg)
    queries = [
        {
            "name": "meetings table is empty",
            "sql": "SELECT 1 FROM meetings LIMIT 1",
            "expect": {"no_rows": True},
        },
        {"name": "broken sql", "sql": "SELECT FROM nowhere_at_all", "expect": {"rows": 1}},
    ]
    with AppWriter(pg, seeded_db) as writer:
        proc = migrate(pg, seeded_db, tmp_path, extra={"db_smoke_queries": queries, **BATCH_SIZES})
    assert proc.returncode != 0
    summary = "\n".join(failure_lines(proc))
    assert "meetings table is empty" in summary and "broken sql" in summary
    # Upgrade and downgrade (0005's copy back) both batch with the online size while the application writes.
    assert batch_widths(tmp_path / "reports") == {100}
    assert "Downgraded" in summary and "anything the application wrote during the run is kept" in summary
    assert "Lossy downgrades" in summary and "0005, 0004, 0002" in summary

    assert revision(pg, seeded_db) == "0001"
    with contextlib.closing(pg.superuser_conn(seeded_db)) as conn:
        assert schema_description(conn) == schema_before
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM users WHERE name = 'writer'")
            kept = {row[0] for row in cur.fetchall()}
    assert len(writer.ids) > 10 and set(writer.ids) <= kept, (len(writer.ids), len(kept), writer.errors[:3])
    after = {k: v for k, v in fingerprint(pg, seeded_db).items() if k != "public.users"}
    assert compare({k: v for k, v in before.items() if k != "public.users"}, after) == []
    assert databases(pg) == dbs_before  # nothing restored, no forensic copy, the clone dropped

    (report,) = reports(tmp_path / "reports")
    assert report["outcome"] == "failed-and-downgraded" and report["failed_step"] == "smoke"
    assert report["revision_to"] == "0001" and report["mode"] == "online"
    assert [d["revision"] for d in report["steps"]["downgrade"]["downgraded"]] == [
        "0005",
        "0004",
        "0003",
        "0002",
    ]
    assert report["notes"][0].startswith("downgraded to 0001 with the schema the run started from")
    assert any(n.startswith("the downgrade of 0004 is lossy") for n in report["notes"])
    assert Path(report["backup"]["manifest"]).exists()  # the durable backup was still collected


def test_a_durable_backup_failing_after_the_migration_is_undone_by_downgrade_in_offline_mode(
    pg: PgCluster, seeded_db: str, tmp_path: Path
):
    """The dump of the pre-run clone fails while the chain runs: there is no verified backup to restore, so
    even in offline mode the way back is the downgrade. Nothing wrote meanwhile: the data is exactly as
    before, CONNECT is back, and the unverified clone is kept (and named) for the operator."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "pg_dump"  # pg_restore still comes from the real bindir
    fake.write_text(
        '#!/bin/sh\necho "pg_dump: error: could not write to output file: Input/output error" >&2\nexit 1\n'
    )
    fake.chmod(0o700)
    before = fingerprint(pg, seeded_db)
    dbs_before = databases(pg)

    proc = migrate(
        pg,
        seeded_db,
        tmp_path,
        extra={"db_preflight_mode": "offline", "db_backup_pg_bindir": str(bindir), **BATCH_SIZES},
    )

    assert proc.returncode != 0
    summary = "\n".join(failure_lines(proc))
    assert "the durable_backup step failed" in summary and "Input/output error" in summary, summary
    assert "Downgraded" in summary and "(offline mode)" in summary
    assert revision(pg, seeded_db) == "0001"
    assert compare(before, fingerprint(pg, seeded_db)) == []
    (clone,) = databases(pg) - dbs_before
    assert "__snap_" in clone and clone in proc.stdout  # kept, and the run says so
    (report,) = reports(tmp_path / "reports")
    assert report["outcome"] == "failed-and-downgraded" and report["failed_step"] == "durable_backup"
    assert report["frozen_seconds"] > 0
    with contextlib.closing(pg.connect(seeded_db, user=APP, password=APP_PASSWORD)) as conn:
        assert conn.closed == 0  # CONNECT is back
    # The chain ran frozen, with the offline batch size (no writer waits on its row locks).
    assert batch_widths(tmp_path / "reports") == {250}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unreachable", "server unreachable"),
        ("wrong_password", "wrong password for role 'meetings_owner'"),
        ("unknown_target", "not in the chain"),
        ("backup_dir_not_creatable", "cannot create backup directory"),
        ("backup_dir_open_to_others", "is accessible by group/others"),
        ("not_enough_disk", "not enough space in"),
        ("bad_lock_timeout", "invalid lock_timeout '5 fortnights'"),
    ],
)
def test_bad_input_is_refused_before_anything_changes(
    pg: PgCluster, seeded_db: str, tmp_path: Path, case: str, expected: str
):
    before = fingerprint(pg, seeded_db)
    dbs_before = databases(pg)
    extra: dict = {}
    host_extra: dict = {}
    if case == "unreachable":
        host_extra = {"db_port": free_port()}
    elif case == "wrong_password":
        extra = {"db_migration_password": "not-the-password"}
    elif case == "unknown_target":
        extra = {"db_migrate_target": "9999"}
    elif case == "bad_lock_timeout":
        extra = {"db_migrate_lock_timeout": "5 fortnights"}
    elif case == "backup_dir_not_creatable":
        (tmp_path / "a-file").write_text("")  # even root cannot make a directory below a file
        extra = {"db_backup_dir": str(tmp_path / "a-file" / "backups")}
    elif case == "backup_dir_open_to_others":
        (tmp_path / "shared").mkdir(mode=0o777)
        (tmp_path / "shared").chmod(0o777)
        extra = {"db_backup_dir": str(tmp_path / "shared")}
    elif case == "not_enough_disk":
        extra = {"db_backup_space_factor": 1e12}
    proc = migrate(pg, seeded_db, tmp_path, extra=extra, host_extra=host_extra)
    assert proc.returncode != 0
    lines = failure_lines(proc)
    assert any(expected in line for line in lines), lines
    assert compare(before, fingerprint(pg, seeded_db)) == []
    assert databases(pg) == dbs_before
    assert not list(tmp_path.glob("backups/*.dump"))
    (report,) = reports(tmp_path / "reports")
    assert report["outcome"] == "refused"


def test_restore_playbook_refuses_a_corrupt_backup_before_dropping_anything(
    pg: PgCluster, seeded_db: str, tmp_path: Path
):
    assert migrate(pg, seeded_db, tmp_path).returncode == 0
    (report,) = reports(tmp_path / "reports")
    manifest = Path(report["backup"]["manifest"])
    archive = Path(json.loads(manifest.read_text())["archive"])
    with archive.open("r+b") as f:
        f.truncate(archive.stat().st_size // 2)
    before = fingerprint(pg, seeded_db)
    dbs_before = databases(pg)

    proc = run_playbook(
        "playbooks/restore.yml", single_host(pg, seeded_db), {"backup": str(manifest)}, tmp_path
    )
    assert proc.returncode != 0
    assert any("sha256" in line for line in failure_lines(proc)), failure_lines(proc)
    assert compare(before, fingerprint(pg, seeded_db)) == []
    assert databases(pg) == dbs_before
