"""The injected-fault suite: real ansible-playbook runs of playbooks/migrate.yml against real PostgreSQL.

For every fault: the run exits non-zero (or ends "deferred"), one output line names the cause, the database
is afterwards either at the target revision or equal to its snapshot from before the run (rows, contents,
schema objects, revision; the run history schema excluded), the application role can read again, and the
run wrote a report. Most faults share one playbook run (one host per fault, one database per host), so the
suite costs a handful of ansible-playbook runs; the server kill and the concurrent runs need their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2.errors
import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils import activity
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import ConnInfo
from ansible_run import host_vars, run_playbook
from conftest import run_alembic, seed
from faults import inject, projects
from faults.state import HISTORY_SCHEMA, app_can_read, databases, differences, revision, snapshot
from pgcluster import APP, APP_PASSWORD, MIGRATOR, MIGRATOR_PASSWORD, PgCluster, cluster_context, free_port
from psycopg2 import sql

HEAD = "0005"
TEMPLATE = "fault_template"
HOSTILE = 'x"; DROP TABLE users; --'
F8_OWNER = "fault_owner_f8"
WRONG_PW_ROLE = "fault_wrongpw"


@pytest.fixture(scope="module")
def fc() -> Iterator[PgCluster]:
    """The suite's own cluster (one fault kills its server), with a seeded template every database copies."""
    with cluster_context() as cluster:
        cluster.create_database(TEMPLATE)
        run_alembic(cluster, TEMPLATE, "upgrade", "0001")
        seed(cluster, TEMPLATE)
        with contextlib.closing(cluster.superuser_conn()) as conn, conn.cursor() as cur:
            # f8's migration role acts through meetings_owner's privileges, but CREATEDB is its own.
            cur.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD %s IN ROLE {}").format(
                    sql.Identifier(F8_OWNER), sql.Identifier(MIGRATOR)
                ),
                [MIGRATOR_PASSWORD],
            )
            cur.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'another-password'").format(
                    sql.Identifier(WRONG_PW_ROLE)
                )
            )
        yield cluster


def clone(pg: PgCluster, name: str, owner: str = MIGRATOR) -> str:
    """A database at 0001 with the seed data, copied from the template (fast), owned by `owner`."""
    with contextlib.closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE), sql.Identifier(owner)
            )
        )
    return name


@dataclass
class Fault:
    """One host of the shared run: its database, inventory extras, and what happens mid-run."""

    host: str
    db: str
    hostvars: dict = field(default_factory=dict)
    inject: Callable[[PgCluster, str, Path, int], None] | None = None


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    failures: dict[str, list[str]]
    reports: dict[str, dict]
    before: dict[str, dict]
    dbs_before: set[str]
    argv_leaks: list[str]
    argv_samples: int
    tmp: Path


def run_with_faults(
    pg: PgCluster, faults: list[Fault], tmp: Path, *args: str, extra: dict | None = None
) -> Run:
    """One ansible-playbook run over every fault's host, with gated faults injected while it runs."""
    hosts = {
        f.host: host_vars(pg, f.db, **{"db_backup_dir": str(tmp / "backups" / f.host), **f.hostvars})
        for f in faults
    }
    before = {f.host: snapshot(pg, f.db) for f in faults if f.db in databases(pg)}
    dbs_before = databases(pg)
    gates = {f.host: inject.Gate(pg, f.db) for f in faults if f.inject}
    sampler = inject.ArgvSampler([MIGRATOR_PASSWORD, APP_PASSWORD])
    sampler.start()
    errors: list[BaseException] = []

    def injector(fault: Fault) -> None:
        try:
            pid = gates[fault.host].wait_for_migration()
            assert fault.inject is not None
            fault.inject(pg, fault.db, tmp / "backups" / fault.host, pid)
        except BaseException as exc:  # surfaced after the run
            errors.append(exc)
        finally:
            gates[fault.host].release()

    extra_vars = {"db_report_dir": str(tmp / "reports"), **(extra or {})}
    with inject.playbook("playbooks/migrate.yml", hosts, extra_vars, tmp, "--forks", "20", *args) as proc:
        threads = [threading.Thread(target=injector, args=(f,)) for f in faults if f.inject]
        for t in threads:
            t.start()
        stdout, stderr = proc.communicate(timeout=600)
        for t in threads:
            t.join()
    sampler.stop()
    (tmp / "stdout.txt").write_text(stdout + "\n--- stderr ---\n" + stderr)
    if errors:
        raise AssertionError(f"{errors[0]}; the run's output is in {tmp / 'stdout.txt'}") from errors[0]
    return Run(
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        failures=inject.failures_by_host(stdout),
        reports=inject.reports(tmp / "reports"),
        before=before,
        dbs_before=dbs_before,
        argv_leaks=sampler.leaks,
        argv_samples=sampler.samples,
        tmp=tmp,
    )


# --- what each gated fault does while the migration waits at the gate ---------------------------------


def terminate_backend(pg: PgCluster, db: str, backups: Path, pid: int) -> None:
    inject.signal_backend(pg, db, pid, "terminate")


def corrupt_backup(pg: PgCluster, db: str, backups: Path, pid: int) -> None:
    """Flip bytes in the middle of the verified archive (size and mode unchanged), then fail the revision."""
    (archive,) = backups.glob("*.dump")
    with archive.open("r+b") as f:
        f.seek(archive.stat().st_size // 2)
        chunk = f.read(16)
        f.seek(archive.stat().st_size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    inject.signal_backend(pg, db, pid, "cancel")


def refuse_new_databases(pg: PgCluster, db: str, backups: Path, pid: int) -> None:
    """Take CREATEDB from this host's migration role, so the restore cannot create its database."""
    with contextlib.closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER ROLE {} NOCREATEDB").format(sql.Identifier(F8_OWNER)))
    inject.signal_backend(pg, db, pid, "cancel")


# Fault 11: the application's long transaction, opened once the migration waits at the gate (pre-flight saw
# no blocker), holds the lock the revision's DDL needs; it stays open until the shared run is over.
BLOCKERS: list = []


def block_meetings(pg: PgCluster, db: str, backups: Path, pid: int) -> None:
    holder = pg.connect(db, user=APP, password=APP_PASSWORD)
    BLOCKERS.append(holder)
    with holder.cursor() as cur:
        cur.execute("SELECT count(*) FROM meetings")  # ACCESS SHARE, held until the transaction ends


def gated_early(tmp: Path, host: str) -> dict:
    """A project whose 0002 commits work and waits at the gate (the rest of the chain never runs)."""
    config = projects.project(
        tmp / "projects" / host, projects.gated("0002", "0001"), drop="0002_add_meeting_status.py"
    )
    return {"db_alembic_config": str(config)}


FAILING_SMOKE = [
    {"name": "no meeting may exist", "sql": "SELECT 1 FROM meetings LIMIT 1", "expect": {"no_rows": True}}
]


@pytest.fixture(scope="module")
def shared_run(fc: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Faults 1, 2, 3, 5, 7, 8, 11, 12 in one playbook run at -v, one host per fault."""
    tmp = tmp_path_factory.mktemp("shared_run")
    faults = [
        Fault(
            "f1_mid_chain",
            clone(fc, "f1"),
            {
                "db_alembic_config": str(projects.project(tmp / "projects/f1", projects.FAILS_MID_CHAIN)),
                "db_migrate_batch_size": 50,
            },
        ),
        Fault(
            "f2_concurrent_index",
            clone(fc, "f2"),
            {
                "db_alembic_config": str(
                    projects.project(
                        tmp / "projects/f2",
                        projects.FAILS_AFTER_CONCURRENT_INDEX,
                        drop="0002_add_meeting_status.py",
                    )
                )
            },
        ),
        Fault("f3_smoke", clone(fc, "f3"), {"db_smoke_queries": FAILING_SMOKE, "db_migrate_target": "0002"}),
        Fault("f5_terminated", clone(fc, "f5"), gated_early(tmp, "f5"), terminate_backend),
        Fault("f7_corrupt_backup", clone(fc, "f7"), gated_early(tmp, "f7"), corrupt_backup),
        Fault(
            "f8_restore_fails",
            clone(fc, "f8", owner=F8_OWNER),
            {**gated_early(tmp, "f8"), "db_migration_user": F8_OWNER},
            refuse_new_databases,
        ),
        Fault(
            "f11_lock_held",
            clone(fc, "f11"),
            {
                "db_alembic_config": str(
                    projects.project(
                        tmp / "projects/f11", projects.gated_before_ddl(), drop="0002_add_meeting_status.py"
                    )
                ),
                "db_migrate_lock_timeout": "200ms",
                "db_migrate_lock_retries": 2,
                "db_migrate_lock_retry_delay": 0.5,
            },
            block_meetings,
        ),
        Fault("f12_unreachable", clone(fc, "f12a"), {"db_port": free_port()}),
        Fault("f12_wrong_password", clone(fc, "f12b"), {"db_migration_user": WRONG_PW_ROLE}),
        Fault("f12_unknown_target", clone(fc, "f12c"), {"db_migrate_target": "9999"}),
        Fault("f12_hostile_role", clone(fc, "f12d"), {"db_migration_user": HOSTILE}),
        Fault(
            "f12_hostile_setting", clone(fc, "f12e"), {"db_migrate_lock_timeout": "1s'; DROP TABLE users; --"}
        ),
        Fault("f12_hostile_database", clone(fc, HOSTILE), {"db_migrate_target": "0002"}),
    ]
    try:
        yield run_with_faults(fc, faults, tmp, "-v")
    finally:
        for holder in BLOCKERS:
            holder.close()
        with contextlib.closing(fc.superuser_conn()) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(F8_OWNER)))


def assert_unchanged(pg: PgCluster, run: Run, host: str, db: str) -> None:
    assert differences(run.before[host], snapshot(pg, db)) == []
    assert app_can_read(pg, db) == ""


def one_line(run: Run, host: str, *words: str) -> str:
    """The failure line of `host` that names the cause (every word in it)."""
    lines = [line for msg in run.failures.get(host, []) for line in msg.splitlines()]
    matching = [line for line in lines if all(w in line for w in words)]
    assert matching, f"{host}: no failure line names {words}: {lines}"
    return matching[0]


def test_run_fails_and_reports_every_host(shared_run: Run):
    assert shared_run.returncode != 0
    failed = set(shared_run.failures)
    assert failed == {h for h in shared_run.reports if h != "f12_hostile_database"}, shared_run.stdout[-4000:]
    assert len(shared_run.reports) == 13


def test_1_revision_failing_mid_chain_after_committed_batches_is_restored(fc: PgCluster, shared_run: Run):
    one_line(shared_run, "f1_mid_chain", "0004 failed after committing its batches")
    report = shared_run.reports["f1_mid_chain"]
    assert report["outcome"] == "failed-and-restored" and report["failed_step"] == "migrate"
    assert [a["revision"] for a in report["applied"]] == ["0002", "0003"]
    assert_unchanged(fc, shared_run, "f1_mid_chain", "f1")


def test_2_revision_failing_after_a_concurrent_index_build_is_restored(fc: PgCluster, shared_run: Run):
    one_line(shared_run, "f2_concurrent_index", "0002 failed after a concurrent index build")
    assert shared_run.reports["f2_concurrent_index"]["outcome"] == "failed-and-restored"
    assert_unchanged(fc, shared_run, "f2_concurrent_index", "f2")


def test_3_failing_smoke_query_is_undone_by_downgrade_and_named(fc: PgCluster, shared_run: Run):
    """Online mode (the manual default): 0002 completed, so its downgrade undoes it; nothing is restored."""
    one_line(shared_run, "f3_smoke", "no meeting may exist")
    report = shared_run.reports["f3_smoke"]
    assert report["outcome"] == "failed-and-downgraded" and report["failed_step"] == "smoke"
    assert [d["revision"] for d in report["steps"]["downgrade"]["downgraded"]] == ["0002"]
    assert_unchanged(fc, shared_run, "f3_smoke", "f3")


def test_5_terminated_migration_backend_is_restored(fc: PgCluster, shared_run: Run):
    one_line(shared_run, "f5_terminated", "terminat")
    assert shared_run.reports["f5_terminated"]["outcome"] == "failed-and-restored"
    assert_unchanged(fc, shared_run, "f5_terminated", "f5")


def test_7_corrupted_backup_is_refused_and_the_failed_database_left_in_place(fc: PgCluster, shared_run: Run):
    one_line(shared_run, "f7_corrupt_backup", "sha256")
    assert "Manual steps" in "\n".join(shared_run.failures["f7_corrupt_backup"])
    assert shared_run.reports["f7_corrupt_backup"]["outcome"] == "failed-restore-failed"
    # Left for an operator exactly as the failure left it: the gated revision's committed work still there.
    assert revision(fc, "f7") == "0001"
    assert snapshot(fc, "f7")["tables"]["public.fault_committed"]["rows"] == 100
    assert app_can_read(fc, "f7") == ""


def test_8_restore_that_cannot_create_its_database_fails_loudly_with_manual_steps(
    fc: PgCluster, shared_run: Run
):
    one_line(shared_run, "f8_restore_fails", "THE RESTORE FAILED", "permission denied to create database")
    assert "Manual steps: ansible-playbook" in "\n".join(shared_run.failures["f8_restore_fails"])
    assert shared_run.reports["f8_restore_fails"]["outcome"] == "failed-restore-failed"
    assert revision(fc, "f8") == "0001"
    assert snapshot(fc, "f8")["tables"]["public.fault_committed"]["rows"] == 100
    assert app_can_read(fc, "f8") == ""


def test_7_8_failed_restores_leave_no_stray_database(fc: PgCluster, shared_run: Run):
    forensic = {
        r["restore"]["forensic_database"]
        for r in shared_run.reports.values()
        if r["restore"]["forensic_database"]
    }
    assert databases(fc) - shared_run.dbs_before == forensic
    restored = [r for r in shared_run.reports.values() if r["outcome"] == "failed-and-restored"]
    assert len(forensic) == len(restored) >= 3  # each restored database's failed copy kept for forensics


def test_11_lock_held_by_a_long_transaction_fails_cleanly_naming_the_lock(fc: PgCluster, shared_run: Run):
    """The blocker appears after pre-flight (which saw none): the revision's DDL times out on its lock, is run
    again twice, then fails; nothing was committed, so the online rescue downgrades (nothing to undo)."""
    one_line(shared_run, "f11_lock_held", "revision 0002 failed", "canceling statement due to lock timeout")
    report = shared_run.reports["f11_lock_held"]
    assert report["steps"]["window"]["verdict"] == "go" and report["steps"]["window"]["blockers"] == []
    assert report["outcome"] == "failed-and-downgraded" and report["failed_step"] == "migrate"
    retries = report["steps"]["migrate"]["retries"]
    assert [(r["revision"], r["attempt"]) for r in retries] == [("0002", 1), ("0002", 2)]
    assert all("lock timeout" in r["error"] for r in retries)
    assert report["steps"]["downgrade"]["downgraded"] == []
    assert_unchanged(fc, shared_run, "f11_lock_held", "f11")


@pytest.mark.parametrize(
    ("host", "db", "words"),
    [
        ("f12_unreachable", "f12a", ("server unreachable",)),
        ("f12_wrong_password", "f12b", (f"wrong password for role '{WRONG_PW_ROLE}'",)),
        ("f12_unknown_target", "f12c", ("9999", "not in the chain")),
        ("f12_hostile_role", "f12d", ("wrong password for role",)),
    ],
)
def test_12_bad_inventory_is_refused_before_anything_changes(
    fc: PgCluster, shared_run: Run, host: str, db: str, words: tuple[str, ...]
):
    one_line(shared_run, host, *words)
    report = shared_run.reports[host]
    assert report["outcome"] == "refused"
    assert report["backup"]["archive"] is None
    assert_unchanged(fc, shared_run, host, db)


def test_12_hostile_database_name_is_migrated_as_a_name_never_as_sql(fc: PgCluster, shared_run: Run):
    assert shared_run.reports["f12_hostile_database"]["outcome"] == "succeeded"
    assert revision(fc, HOSTILE) == "0002"
    for db in ("f12a", "f12d", "f12e", HOSTILE, TEMPLATE):
        assert snapshot(fc, db)["tables"]["public.users"]["rows"] == 200


def test_12_hostile_setting_is_refused_never_pasted_into_sql(fc: PgCluster, shared_run: Run):
    one_line(shared_run, "f12_hostile_setting", "invalid lock_timeout")
    assert shared_run.reports["f12_hostile_setting"]["outcome"] == "refused"  # pre-flight, before the backup
    assert_unchanged(fc, shared_run, "f12_hostile_setting", "f12e")


# --- security: what the shared run left behind ----------------------------------------------------------


def test_no_password_in_reports_progress_manifests_or_archives(shared_run: Run):
    """Every file the run wrote (the test's own inventory and vars files aside) is free of passwords."""
    written = [p for d in ("reports", "backups") for p in (shared_run.tmp / d).rglob("*") if p.is_file()]
    assert any(p.suffix == ".dump" for p in written) and any(p.suffix == ".progress" for p in written)
    for path in written:
        content = path.read_bytes()
        for secret in (MIGRATOR_PASSWORD, APP_PASSWORD):
            assert secret.encode() not in content, path


def test_backups_are_private_to_the_runner(shared_run: Run):
    backup_dirs = [p for p in (shared_run.tmp / "backups").iterdir() if p.is_dir()]  # a db_backup_dir each
    assert any(backup_dirs)
    for path in [*backup_dirs, *(p for d in backup_dirs for p in d.rglob("*"))]:
        st = path.stat()
        assert st.st_uid == os.geteuid(), path
        assert stat.S_IMODE(st.st_mode) == (0o700 if path.is_dir() else 0o600), path


def history_tables(pg: PgCluster, db: str) -> list[str]:
    with contextlib.closing(pg.superuser_conn(db)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables"
            " WHERE schemaname = %s",
            [HISTORY_SCHEMA],
        )
        return [r[0] for r in cur.fetchall()]


def test_history_holds_no_password_and_is_not_writable_by_the_application_role(
    fc: PgCluster, shared_run: Run
):
    tables = history_tables(fc, HOSTILE)
    assert tables, "no run history in the migrated database"
    with contextlib.closing(fc.superuser_conn(HOSTILE)) as conn, conn.cursor() as cur:
        for table in tables:
            cur.execute(f"SELECT coalesce(string_agg(h::text, ' '), '') FROM {table} AS h")
            text = cur.fetchone()[0]
            assert MIGRATOR_PASSWORD not in text and APP_PASSWORD not in text, table
    with contextlib.closing(fc.connect(HOSTILE, user=APP, password=APP_PASSWORD)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            for table in tables:
                for statement in (f"DELETE FROM {table}", f"UPDATE {table} SET outcome = outcome"):
                    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                        cur.execute(statement)


def test_restore_refuses_an_archive_that_others_can_write(fc: PgCluster, shared_run: Run):
    manifest = Path(shared_run.reports["f12_hostile_database"]["backup"]["manifest"])
    archive = Path(json.loads(manifest.read_text())["archive"])
    before = snapshot(fc, HOSTILE)
    archive.chmod(0o666)
    try:
        tmp = shared_run.tmp / "restore"
        tmp.mkdir()
        proc = run_playbook(
            "playbooks/restore.yml",
            {"hostile": host_vars(fc, HOSTILE)},
            {"backup": str(manifest), "db_report_dir": str(tmp / "reports")},
            tmp,
        )
    finally:
        archive.chmod(0o600)
    assert proc.returncode != 0
    lines = [
        line for msg in inject.failures_by_host(proc.stdout).get("hostile", []) for line in msg.splitlines()
    ]
    assert any("writable by group/others" in line for line in lines), lines
    assert differences(before, snapshot(fc, HOSTILE)) == []


def test_argv_of_every_process_during_the_shared_run_holds_no_password(shared_run: Run):
    assert shared_run.argv_samples > 20
    assert shared_run.argv_leaks == []


def test_verbose_output_holds_no_password(shared_run: Run):
    for secret in (MIGRATOR_PASSWORD, APP_PASSWORD):
        assert secret not in shared_run.stdout + shared_run.stderr


# --- faults that need a run of their own --------------------------------------------------------------


def solo(
    pg: PgCluster, tmp: Path, db: str, hostvars: dict, fault: Callable[..., None] | None = None, *args: str
) -> tuple[Run, dict]:
    """One host, one run; returns the run and the host's report."""
    run = run_with_faults(pg, [Fault("solo", db, hostvars, fault)], tmp, *args)
    return run, run.reports["solo"]


def kill_and_restart_server(pg: PgCluster, db: str, backups: Path, pid: int) -> None:
    """SIGKILL every server process mid-migration (a crash: postmaster and backends), then start it again
    (crash recovery). Killing only the postmaster would leave backends that keep the new one from starting."""
    postmaster = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    for pid in [postmaster, *inject.children(postmaster)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    inject.wait_gone(postmaster)
    pg.start()


def test_4_server_killed_mid_migration_then_back_is_restored(fc: PgCluster, tmp_path: Path):
    db = clone(fc, "f4")
    run, report = solo(fc, tmp_path, db, gated_early(tmp_path, "f4"), kill_and_restart_server)
    assert run.returncode != 0
    one_line(run, "solo", "revision 0002 failed")
    assert report["outcome"] == "failed-and-restored", run.stdout[-3000:]
    assert_unchanged(fc, run, "solo", db)
    for secret in (MIGRATOR_PASSWORD, APP_PASSWORD):  # default verbosity, this time
        assert secret not in run.stdout + run.stderr
    assert run.argv_leaks == []


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 32 KiB tmpfs, smaller than the tiny database's archive (about 56 KiB): pg_dump runs out of space."""
    mount = tmp_path / "tiny"
    mount.mkdir(mode=0o700)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_6_backup_directory_out_of_space_fails_cleanly_and_leaves_no_partial_archive(
    fc: PgCluster, tmp_path: Path, tiny_filesystem: Path
):
    db = clone(fc, "f6")
    dbs_before = databases(fc)
    # The space estimate is told the archive is tiny, so the dump itself meets the full disk.
    hostvars = {"db_backup_dir": str(tiny_filesystem / "backups"), "db_backup_space_factor": 0.0001}
    run = run_with_faults(fc, [Fault("solo", db, hostvars)], tmp_path)
    report = run.reports["solo"]
    assert run.returncode != 0
    line = one_line(run, "solo", "No space left on device")
    assert report["outcome"] != "succeeded"
    # The dump may run before the migration (nothing changed) or beside it (the database is at the target).
    if revision(fc, db) != HEAD:
        assert_unchanged(fc, run, "solo", db)
    assert app_can_read(fc, db) == ""
    leftovers = [p.name for p in (tiny_filesystem / "backups").iterdir()]
    assert not [name for name in leftovers if name.endswith((".dump", ".partial", ".json"))], leftovers
    # A side database may stay only when the failure line names it for the operator.
    assert all(name in line for name in databases(fc) - dbs_before), (databases(fc) - dbs_before, line)


def migration_sessions(pg: PgCluster, db: str) -> int:
    with contextlib.closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = %s", (db, MIGRATOR)
        )
        return cur.fetchone()[0]


def test_9_second_run_while_the_first_migrates_is_refused_and_the_first_finishes(
    fc: PgCluster, tmp_path: Path
):
    db = clone(fc, "f9")
    # Few rename retries: should the second run ever restore over the first, fail fast instead of waiting.
    hostvars = {**gated_early(tmp_path, "f9"), "db_migrate_target": "0002", "db_restore_rename_retries": 2}
    second: dict = {}

    def start_a_second_run(pg: PgCluster, db: str, backups: Path, pid: int) -> None:
        second["before"] = snapshot(pg, db)
        (tmp_path / "second").mkdir()
        second["proc"] = run_playbook(
            "playbooks/migrate.yml",
            {"second": host_vars(pg, db, db_backup_dir=str(tmp_path / "second" / "backups"), **hostvars)},
            {"db_report_dir": str(tmp_path / "second" / "reports")},
            tmp_path / "second",
            timeout=240,
        )
        second["after"] = snapshot(pg, db)

    first, first_report = solo(fc, tmp_path / "first", db, hostvars, start_a_second_run)
    proc = second["proc"]
    assert proc.returncode != 0
    lines = [
        line for msg in inject.failures_by_host(proc.stdout).get("second", []) for line in msg.splitlines()
    ]
    # It names the run in progress (id, start, user@host) and changes nothing.
    assert any(first_report["run_id"] in line for line in lines), lines
    assert inject.reports(tmp_path / "second" / "reports")["second"]["outcome"] == "refused"
    assert differences(second["before"], second["after"]) == []  # the second run touched nothing
    assert first.returncode == 0 and first_report["outcome"] == "succeeded", first.stdout[-3000:]
    assert revision(fc, db) == "0002"


def take_run_lock(pg: PgCluster, db: str, tmp_path: Path) -> dict:
    """Try the run lock of ``db`` the way a second run would (the holder watches this test process)."""
    token = str(tmp_path / "probe.runlock")
    ci = ConnInfo("127.0.0.1", pg.port, db, MIGRATOR, MIGRATOR_PASSWORD)
    return {**activity.acquire_run_lock(ci, "probe", token, watch_pid=os.getpid()), "token": token}


def test_10_killed_ansible_playbook_is_detected_by_the_next_run(fc: PgCluster, tmp_path: Path):
    db = clone(fc, "f10")
    hostvars = {**gated_early(tmp_path, "f10"), "db_migrate_target": "0002"}
    gate = inject.Gate(fc, db)
    first = tmp_path / "first"
    hosts = {"solo": host_vars(fc, db, db_backup_dir=str(first / "backups"), **hostvars)}
    try:
        with inject.playbook(
            "playbooks/migrate.yml", hosts, {"db_report_dir": str(first / "reports")}, first
        ) as proc:
            pid = gate.wait_for_migration()
            assert not take_run_lock(fc, db, tmp_path)["locked"], "the run lock must be held while migrating"
            os.killpg(proc.pid, signal.SIGKILL)  # the runner dies; its background migration lives on
            proc.communicate()
        # The run lock's holder (its own session, not in the killed process group) watched ansible-playbook
        # and let go when it died: the database is not left locked.
        deadline = time.monotonic() + 15
        while not (probe := take_run_lock(fc, db, tmp_path))["locked"]:
            assert time.monotonic() < deadline, "the run lock outlived the killed ansible-playbook"
            time.sleep(0.5)
        activity.release_run_lock(probe["token"])
        # An operator ends the orphaned migration session; the orphaned job then exits by itself.
        inject.signal_backend(fc, db, pid, "terminate")
    finally:
        gate.release()
    deadline = time.monotonic() + 30
    while migration_sessions(fc, db) and time.monotonic() < deadline:
        time.sleep(0.2)
    (progress,) = (first / "reports").glob("*.progress")
    killed_run_id = progress.name.split("__")[0]
    before = snapshot(fc, db)

    second = tmp_path / "second"
    second.mkdir()
    proc2 = run_playbook(
        "playbooks/migrate.yml",
        {"solo": host_vars(fc, db, db_backup_dir=str(second / "backups"), **hostvars)},
        {"db_report_dir": str(second / "reports")},
        second,
        timeout=240,
    )
    assert proc2.returncode != 0
    lines = [
        line for msg in inject.failures_by_host(proc2.stdout).get("solo", []) for line in msg.splitlines()
    ]
    assert any(killed_run_id in line and "never finished" in line for line in lines), lines
    assert inject.reports(second / "reports")["solo"]["outcome"] == "refused"
    assert differences(before, snapshot(fc, db)) == []
