"""The injected-fault suite: real ansible-playbook runs of playbooks/migrate.yml against real PostgreSQL.

For every fault: the run exits non-zero (or ends "deferred"), one output line names the cause, the database
is afterwards either at the target revision or equal to its snapshot from before the run (rows, contents,
schema objects, revision; the run history schema excluded), the application role can read again, and the
run wrote a report. Most faults share one playbook run (one host per fault, one database per host), so the
suite costs a handful of ansible-playbook runs; the server kill and the concurrent runs need their own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ansible_run import host_vars
from conftest import run_alembic, seed
from faults import inject, projects
from faults.state import app_can_read, databases, differences, revision, snapshot
from pgcluster import APP, APP_PASSWORD, MIGRATOR, MIGRATOR_PASSWORD, PgCluster, cluster_context, free_port
from psycopg2 import sql

HEAD = "0005"
TEMPLATE = "fault_template"
HOSTILE = 'x"; DROP TABLE users; --'
F8_OWNER = "fault_owner_f8"
WRONG_PW_ROLE = "fault_wrongpw"
FAST_POLL = {"db_job_wait_poll_seconds": 1}


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

    extra_vars = {"db_report_dir": str(tmp / "reports"), **FAST_POLL, **(extra or {})}
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


def gated_early(tmp: Path, host: str) -> dict:
    """A project whose 0002 commits work and waits at the gate (the rest of the chain never runs)."""
    config = projects.project(
        tmp / "projects" / host, projects.gated("0002", "0001"), drop="0002_add_meeting_status.py"
    )
    return {"db_migrate_alembic_config": str(config)}


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
                "db_migrate_alembic_config": str(
                    projects.project(tmp / "projects/f1", projects.FAILS_MID_CHAIN)
                ),
                "db_migrate_batch_size": 50,
            },
        ),
        Fault(
            "f2_concurrent_index",
            clone(fc, "f2"),
            {
                "db_migrate_alembic_config": str(
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
        Fault("f11_lock_held", clone(fc, "f11"), {"db_migrate_lock_timeout": "200ms"}),
        Fault("f12_unreachable", clone(fc, "f12a"), {"db_port": free_port()}),
        Fault("f12_wrong_password", clone(fc, "f12b"), {"db_migration_user": WRONG_PW_ROLE}),
        Fault("f12_unknown_target", clone(fc, "f12c"), {"db_migrate_target": "9999"}),
        Fault("f12_hostile_role", clone(fc, "f12d"), {"db_migration_user": HOSTILE}),
        Fault("f12_hostile_database", clone(fc, HOSTILE), {"db_migrate_target": "0002"}),
    ]
    # Fault 11: a long transaction of the application holds a lock every DDL of 0002 needs.
    holder = fc.connect("f11", user=APP, password=APP_PASSWORD)
    with holder.cursor() as cur:
        cur.execute("SELECT count(*) FROM meetings")
    try:
        yield run_with_faults(fc, faults, tmp, "-v")
    finally:
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
    assert len(shared_run.reports) == 12


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


def test_3_failing_smoke_query_is_restored_and_named(fc: PgCluster, shared_run: Run):
    one_line(shared_run, "f3_smoke", "no meeting may exist")
    report = shared_run.reports["f3_smoke"]
    assert report["outcome"] == "failed-and-restored" and report["failed_step"] == "smoke"
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
    assert len(forensic) == 5  # f1, f2, f3, f5, f11: the failed databases kept for forensics


def test_11_lock_held_by_a_long_transaction_fails_cleanly_naming_the_lock(fc: PgCluster, shared_run: Run):
    one_line(shared_run, "f11_lock_held", "lock")
    report = shared_run.reports["f11_lock_held"]
    assert report["outcome"] in ("failed-and-restored", "deferred", "refused"), report["outcome"]
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
    for db in ("f12a", "f12d", HOSTILE, TEMPLATE):
        assert snapshot(fc, db)["tables"]["public.users"]["rows"] == 200


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


def test_6_backup_directory_out_of_space_refuses_and_leaves_nothing_behind(
    fc: PgCluster, tmp_path: Path, tiny_filesystem: Path
):
    db = clone(fc, "f6")
    dbs_before = databases(fc)
    # The space estimate is told the archive is tiny, so the dump itself meets the full disk.
    hostvars = {"db_backup_dir": str(tiny_filesystem / "backups"), "db_backup_space_factor": 0.0001}
    run = run_with_faults(fc, [Fault("solo", db, hostvars)], tmp_path)
    report = run.reports["solo"]
    assert run.returncode != 0
    one_line(run, "solo", "No space left on device")
    assert report["outcome"] == "refused" and report["failed_step"] == "backup"
    assert_unchanged(fc, run, "solo", db)
    assert list((tiny_filesystem / "backups").iterdir()) == []  # no partial archive, no manifest
    assert databases(fc) == dbs_before  # no side database (snapshot clone) left behind
