"""The restore step against a real cluster: damage undone, failed state kept, bad input refused untouched."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import psycopg2
import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.fingerprint import compare
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.restore import (
    RestoreError,
    RestoreRequest,
    run_restore,
)
from chain_helpers import wait_for
from pgcluster import APP, APP_PASSWORD, MIGRATOR, MIGRATOR_PASSWORD, cluster_context
from test_backup import backup, conn_info
from test_fingerprint import execute, fp, load_sample

ROOT = Path(__file__).resolve().parent.parent


def databases(pg) -> set[str]:
    """This suite's databases (the `dbname` fixture's tN_ names and what restores made beside them).

    Other suites share the session cluster; their leftovers are theirs to clean and not counted here.
    """
    with closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE NOT datistemplate AND datname ~ '^t[0-9]+_'")
        return {row[0] for row in cur.fetchall()}


def restore(pg, dbname: str, manifest: str, **options) -> dict:
    return run_restore(conn_info(pg, dbname), RestoreRequest(manifest_path=manifest, **options))


@pytest.fixture
def side_databases(pg, dbname):
    """Drops whatever restore/forensic databases a test leaves next to its database."""
    before = databases(pg)
    yield
    for name in databases(pg) - before - {dbname}:
        pg.drop_database(name)


@pytest.fixture
def backed_up(pg, dbname, tmp_path, side_databases) -> dict:
    load_sample(pg, dbname)
    return backup(pg, dbname, tmp_path / "backups")


DAMAGE = {
    "drop-table": 'DROP TABLE "odd schema"."Meet""ings"',
    "change-rows": "UPDATE users SET name = 'oops' WHERE id % 3 = 0; INSERT INTO empty_one VALUES (1), (2)",
    "migration": "ALTER TABLE users ADD COLUMN nickname text DEFAULT 'x'; "
    "UPDATE alembic_version SET version_num = '0002'",
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_restore_undoes_damage_and_keeps_the_failed_state(pg, dbname, backed_up, damage):
    manifest = backed_up["manifest"]
    execute(pg, dbname, DAMAGE[damage])
    damaged = fp(pg, dbname)
    result = restore(pg, dbname, backed_up["manifest_path"])
    assert result["fingerprint_ok"] is True and result["restored_database"] == dbname
    assert compare(manifest["tables"], fp(pg, dbname)) == []
    with closing(pg.connect(dbname)) as conn, conn.cursor() as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        assert cur.fetchone()[0] == "0001"
    forensic = result["forensic_database"]
    assert re.search(r"__failed_\d{8}T\d{6}Z$", forensic) and fp(pg, forensic) == damaged
    assert databases(pg) == {dbname, forensic}
    # Each part was timed (pg_restore, verification and swap all take real time), and they fit in the whole.
    parts = [result[key] for key in ("restore_seconds", "verify_seconds", "swap_seconds")]
    assert result["method"] == "pg_restore" and all(part > 0 for part in parts)
    assert result["duration_seconds"] >= sum(parts)


def test_keep_forensic_false_drops_the_failed_database(pg, dbname, backed_up):
    execute(pg, dbname, DAMAGE["change-rows"])
    result = restore(pg, dbname, backed_up["manifest_path"], keep_forensic=False)
    assert result["forensic_database"] is None and result["forensic_dropped"] is True
    assert databases(pg) == {dbname}
    assert compare(backed_up["manifest"]["tables"], fp(pg, dbname)) == []


def test_app_session_on_the_failed_database_is_terminated(pg, dbname, backed_up):
    app = pg.connect(dbname, user=APP, password=APP_PASSWORD)
    app.autocommit = True
    try:
        result = restore(pg, dbname, backed_up["manifest_path"])
        assert result["sessions_terminated"] >= 1
        with pytest.raises(psycopg2.OperationalError), app.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        app.close()
    with closing(pg.connect(dbname, user=APP, password=APP_PASSWORD)) as again, again.cursor() as cur:
        cur.execute("SELECT current_database()")  # the app reconnects by name and lands on the restored one
        assert cur.fetchone()[0] == dbname


def test_session_that_cannot_be_terminated_leaves_everything_in_place(pg, dbname, backed_up):
    """A superuser session is beyond pg_signal_backend: the rename gives up, nothing is half-swapped."""
    execute(pg, dbname, DAMAGE["change-rows"])
    before = fp(pg, dbname)
    expected = (
        r"sessions of postgres stay connected after 2 retries; not swapped: .* is unchanged, "
        r"the verified restore is kept as .*__restore_"
    )
    with closing(pg.superuser_conn(dbname)), pytest.raises(RestoreError, match=expected):
        restore(pg, dbname, backed_up["manifest_path"], rename_retries=2)
    assert fp(pg, dbname) == before
    with closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (dbname,))
        assert cur.fetchone()[0] is True
    assert len(databases(pg) - {dbname}) == 1


def test_an_autovacuum_worker_on_the_failed_database_does_not_stop_the_swap(tmp_path):
    """Autovacuum workers advertise no role, and PostgreSQL lets no non-superuser signal them ("must be a
    superuser to terminate superuser process"). After a large failed backfill one is likely to be working
    on the database being replaced; the rename ends it by itself, so the swap must not try (found by the
    benchmark at 1.2 GB). Own cluster: autovacuum is made to start within a second and to crawl."""
    with cluster_context() as vpg:
        vpg.create_database("t_vac")
        load_sample(vpg, "t_vac")
        manifest = backup(vpg, "t_vac", tmp_path / "backups")["manifest_path"]
        expected = fp(vpg, "t_vac")
        with closing(vpg.superuser_conn()) as conn, conn.cursor() as cur:
            cur.execute("ALTER SYSTEM SET autovacuum_naptime = 1")
            cur.execute("SELECT pg_reload_conf()")
        with closing(vpg.superuser_conn("t_vac")) as conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE churn AS"
                " SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 100000) g"
            )
            cur.execute(
                "ALTER TABLE churn SET (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0,"
                " autovacuum_analyze_threshold = 0, autovacuum_analyze_scale_factor = 0,"
                " autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1)"
            )
            cur.execute("DELETE FROM churn")

            def autovacuum_working() -> bool:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = 't_vac' AND backend_type = 'autovacuum worker'"
                )
                return bool(cur.fetchone()[0])

            wait_for(autovacuum_working, timeout=60, interval=0.2)

        result = restore(vpg, "t_vac", manifest, keep_forensic=False)

        assert result["changed"]
        assert fp(vpg, "t_vac") == expected


def test_connect_grants_and_settings_are_carried_over(pg, dbname, backed_up):
    execute(pg, dbname, "SELECT 1")
    with closing(pg.connect(dbname)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{dbname}" FROM PUBLIC')
        cur.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO {APP}')
        cur.execute(f'ALTER DATABASE "{dbname}" SET search_path = "$user", public, "odd schema"')
        cur.execute(f"ALTER DATABASE \"{dbname}\" SET work_mem = '8MB'")
        cur.execute(f'ALTER DATABASE "{dbname}" CONNECTION LIMIT 40')
    query = (
        "SELECT datacl::text, datconnlimit, (SELECT setconfig FROM pg_db_role_setting "
        "WHERE setdatabase = d.oid AND setrole = 0) FROM pg_database d WHERE datname = %s"
    )
    with closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        cur.execute(query, (dbname,))
        before = cur.fetchone()
    result = restore(pg, dbname, backed_up["manifest_path"])
    assert result["settings_warnings"] == []
    with closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        cur.execute(query, (dbname,))
        after = cur.fetchone()
    assert after[1:] == before[1:]
    assert sorted(after[0].strip("{}").split(",")) == sorted(before[0].strip("{}").split(","))


def test_directory_format_restores_with_jobs(pg, dbname, tmp_path, side_databases):
    load_sample(pg, dbname)
    made = backup(pg, dbname, tmp_path / "backups", archive_format="directory", jobs=2)
    execute(pg, dbname, DAMAGE["drop-table"])
    result = restore(pg, dbname, made["manifest_path"], jobs=3)
    assert result["fingerprint_ok"] is True
    assert compare(made["manifest"]["tables"], fp(pg, dbname)) == []


def test_missing_target_database_is_simply_restored(pg, dbname, backed_up):
    pg.drop_database(dbname)
    result = restore(pg, dbname, backed_up["manifest_path"])
    assert result["forensic_database"] is None
    assert databases(pg) == {dbname}
    assert compare(backed_up["manifest"]["tables"], fp(pg, dbname)) == []


def test_check_mode_checks_everything_and_changes_nothing(pg, dbname, backed_up):
    execute(pg, dbname, DAMAGE["change-rows"])
    before = fp(pg, dbname)
    result = restore(pg, dbname, backed_up["manifest_path"], check_mode=True)
    assert re.search(r"__restore_\d{8}T\d{6}Z$", result["staging_database"])
    assert re.search(r"__failed_\d{8}T\d{6}Z$", result["forensic_database"])
    assert fp(pg, dbname) == before and databases(pg) == {dbname}


# --- refusals: one clear line, nothing touched --------------------------------------------------------


def flip_bytes(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def rewrite_manifest(path: Path, **changes) -> None:
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def resign(manifest_path: Path) -> None:
    """Make the manifest's sha256 agree with a tampered archive, so a later check has to catch it."""
    from ansible_collections.pgmigrate.pipeline.plugins.module_utils.backup import sha256_file

    manifest = json.loads(manifest_path.read_text())
    rewrite_manifest(manifest_path, sha256=sha256_file(manifest["archive"]))


REFUSALS = {
    "flipped-bytes": (
        lambda a, m: flip_bytes(a, a.stat().st_size // 2),
        r"has sha256 [0-9a-f]{64}, the manifest says",
    ),
    "truncated": (
        lambda a, m: os.truncate(a, a.stat().st_size // 2),
        r"has sha256 [0-9a-f]{64}, the manifest says",
    ),
    "wrong-sha256": (lambda a, m: rewrite_manifest(m, sha256="0" * 64), r"the manifest says 0{64}$"),
    "corrupt-header-resigned": (
        lambda a, m: (flip_bytes(a, 0), resign(m)),
        r"pg_restore --list cannot read .*: pg_restore: error: input file does not appear to be a valid "
        r"archive",
    ),
    "truncated-resigned": (
        lambda a, m: (os.truncate(a, 40), resign(m)),
        r"pg_restore --list cannot read .*\.dump: pg_restore: error:",
    ),
    "world-writable-archive": (
        lambda a, m: a.chmod(0o646),
        r"archive .*\.dump is writable by group/others \(mode 0646\)",
    ),
    "group-writable-dir": (
        lambda a, m: a.parent.chmod(0o770),
        r"archive directory .*backups is writable by group/others",
    ),
    "foreign-owner": (
        lambda a, m: os.chown(a, 65534, 65534),
        r"archive .* is owned by uid 65534, not the runner \(0\)",
    ),
    "missing-archive": (lambda a, m: a.unlink(), r"archive .*\.dump named by the manifest does not exist"),
    "missing-manifest": (lambda a, m: m.unlink(), r"manifest .*\.json does not exist or is not a file"),
    "not-json": (lambda a, m: m.write_text("{oops"), r"manifest .*\.json is not readable JSON: Expecting"),
    "no-tables": (
        lambda a, m: rewrite_manifest(m, tables=None),
        r"manifest .*\.json is malformed: field 'tables' missing or not a dict",
    ),
    "other-database": (
        lambda a, m: rewrite_manifest(m, database="elsewhere"),
        r"is a backup of 'elsewhere', not ",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_input_is_refused_and_nothing_changes(pg, dbname, backed_up, case):
    execute(pg, dbname, DAMAGE["change-rows"])
    archive, manifest = Path(backed_up["archive"]), Path(backed_up["manifest_path"])
    tamper, message = REFUSALS[case]
    tamper(archive, manifest)
    before = fp(pg, dbname)
    with pytest.raises(RestoreError, match=message) as info:
        restore(pg, dbname, str(manifest))
    assert "\n" not in str(info.value)
    assert fp(pg, dbname) == before
    assert databases(pg) == {dbname}


def test_fingerprint_mismatch_refuses_to_swap_and_keeps_both(pg, dbname, backed_up):
    """The archive is intact but does not hold what the manifest promises (manifest edited)."""
    manifest = Path(backed_up["manifest_path"])
    tables = json.loads(manifest.read_text())["tables"]
    tables["public.users"]["rows"] = 299
    rewrite_manifest(manifest, tables=tables)
    execute(pg, dbname, DAMAGE["change-rows"])
    before = fp(pg, dbname)
    expected = (
        r"does not match the manifest \(public.users: 300 rows, expected 299\); "
        r"not swapped: .* is untouched and .*__restore_\d{8}T\d{6}Z is kept"
    )
    with pytest.raises(RestoreError, match=expected) as info:
        restore(pg, dbname, str(manifest))
    assert fp(pg, dbname) == before
    kept = databases(pg) - {dbname}
    assert len(kept) == 1 and kept.pop() in str(info.value)


def test_wrong_revision_refuses_to_swap(pg, dbname, backed_up):
    rewrite_manifest(Path(backed_up["manifest_path"]), starting_revision="0003")
    with pytest.raises(RestoreError, match=r"revision 0001, expected 0003"):
        restore(pg, dbname, backed_up["manifest_path"])
    assert compare(backed_up["manifest"]["tables"], fp(pg, dbname)) == []


def test_restore_playbook_end_to_end(pg, dbname, backed_up, tmp_path):
    """playbooks/restore.yml with an inventory of two databases: only the manifest's one is restored."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        json.dumps(
            {"lab": {"hosts": {
                "the-one": {"db_name": dbname},
                "another": {"db_name": "postgres"},
            }, "vars": {
                "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                "db_environment": "staging", "db_host": "127.0.0.1",
                "db_port": pg.port, "db_migration_user": MIGRATOR, "db_app_user": APP,
            }}}
        )
    )  # fmt: skip
    secrets = tmp_path / "secrets.json"
    fd = os.open(secrets, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"db_migration_password": MIGRATOR_PASSWORD, "db_app_password": APP_PASSWORD}, f)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }

    def play(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ansible-playbook", "-i", str(inventory), "-e", f"@{secrets}", *extra, "playbooks/restore.yml"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    missing = play()
    assert missing.returncode != 0
    assert "pass the backup's manifest: -e backup=/path/to/<backup>.json" in missing.stdout
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{oops")
    assert "is not readable JSON: Expecting property name" in play("-e", f"backup={garbled}").stdout
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({**backed_up["manifest"], "database": "elsewhere"}))
    refused = play("-e", f"backup={elsewhere}")
    assert refused.returncode != 0
    assert "no host of this inventory is that database" in refused.stdout
    assert databases(pg) == {dbname}
    execute(pg, dbname, DAMAGE["drop-table"])
    done = play("-e", f"backup={backed_up['manifest_path']}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert MIGRATOR_PASSWORD not in done.stdout + done.stderr
    assert compare(backed_up["manifest"]["tables"], fp(pg, dbname)) == []
    forensic = (databases(pg) - {dbname}).pop()
    assert f"forensic copy of the failed database: {forensic}" in done.stdout


def test_directory_archive_tampering_names_the_file(pg, dbname, tmp_path, side_databases):
    load_sample(pg, dbname)
    made = backup(pg, dbname, tmp_path / "backups", archive_format="directory")
    toc = Path(made["archive"]) / "toc.dat"
    flip_bytes(toc, toc.stat().st_size // 2)
    with pytest.raises(RestoreError, match=r"the manifest says [0-9a-f]{64} \(differing files: toc.dat\)$"):
        restore(pg, dbname, made["manifest_path"])
    assert databases(pg) == {dbname}


def test_hostile_database_name_round_trip(pg, tmp_path):
    hostile = "curious.anonymous\"; SELECT pg_sleep(30); -- dbname='postgres'"
    pg.create_database(hostile)
    try:
        load_sample(pg, hostile)
        made = backup(pg, hostile, tmp_path / "backups")
        execute(pg, hostile, DAMAGE["drop-table"])
        result = restore(pg, hostile, made["manifest_path"], keep_forensic=False)
        assert result["restored_database"] == hostile and result["forensic_dropped"] is True
        assert compare(made["manifest"]["tables"], fp(pg, hostile)) == []
    finally:
        for name in databases(pg):
            if name.startswith("curious.anonymous"):
                pg.drop_database(name)
