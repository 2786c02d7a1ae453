"""The backup step against a real cluster: verified archive, honest manifest, refusals that write nothing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.backup import (
    BackupError,
    BackupRequest,
    run_backup,
    sha256_file,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.fingerprint import compare
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import ConnInfo, pgpass_env
from pgcluster import MIGRATOR, MIGRATOR_PASSWORD, PG_BINDIR
from test_fingerprint import execute, fp, load_sample

ROOT = Path(__file__).resolve().parent.parent
NAME_RE = re.compile(r"^staging__(?P<db>.+)__\d{8}T\d{6}Z__(?P<rev>.+)\.(dump|dir)$")


def conn_info(pg, dbname: str) -> ConnInfo:
    return ConnInfo("127.0.0.1", pg.port, dbname, MIGRATOR, MIGRATOR_PASSWORD)


def backup(pg, dbname: str, directory: Path, **options) -> dict:
    return run_backup(
        conn_info(pg, dbname), BackupRequest(environment="staging", directory=str(directory), **options)
    )


def restore_copy(pg, archive: str, into: str) -> None:
    """An independent restore (plain pg_restore as the migration role) to look inside an archive."""
    pg.create_database(into)
    with pgpass_env(conn_info(pg, into)) as env:
        subprocess.run(
            [str(PG_BINDIR / "pg_restore"), "-d", into, "--exit-on-error", archive],
            env=env,
            check=True,
            capture_output=True,
        )


@pytest.fixture
def sample(pg, dbname):
    load_sample(pg, dbname)
    return dbname


@pytest.fixture
def backup_dir(tmp_path) -> Path:
    return tmp_path / "backups"


@pytest.fixture
def scratch_db(pg, dbname):
    name = f"{dbname}_copy"
    yield name
    pg.drop_database(name)


def test_backup_is_private_verified_and_described(pg, sample, backup_dir, tmp_path, scratch_db):
    progress = tmp_path / "progress.log"
    result = backup(pg, sample, backup_dir, progress_file=str(progress))
    archive, manifest_path = Path(result["archive"]), Path(result["manifest_path"])
    assert NAME_RE.match(archive.name).group("rev") == "0001"
    assert manifest_path == archive.with_suffix(".json")
    assert stat.S_IMODE(backup_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert stat.S_IMODE(manifest_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in backup_dir.iterdir()) == sorted([archive.name, manifest_path.name])

    manifest = json.loads(manifest_path.read_text())
    assert manifest == result["manifest"]
    assert manifest["sha256"] == sha256_file(str(archive)) == result["sha256"]
    assert manifest["size_bytes"] == archive.stat().st_size
    assert manifest["starting_revision"] == "0001"
    assert manifest["database"] == sample and manifest["environment"] == "staging"
    assert re.fullmatch(r"15\.\d+", manifest["server_version"])
    assert {k: v["rows"] for k, v in manifest["tables"].items()} == {
        'odd schema.Meet"ings': 900,
        "public.alembic_version": 1,
        "public.empty_one": 0,
        "public.users": 300,
    }
    listing = subprocess.run(
        [str(PG_BINDIR / "pg_restore"), "--list", str(archive)], capture_output=True, text=True
    )
    assert listing.returncode == 0 and "TABLE DATA public users" in listing.stdout
    assert "fingerprint public.users: 300 rows" in progress.read_text()
    restore_copy(pg, str(archive), scratch_db)
    assert compare(manifest["tables"], fp(pg, scratch_db)) == []


def test_fingerprint_comes_from_the_dump_snapshot(pg, sample, backup_dir, scratch_db):
    """Writes committed after the snapshot export are in neither the manifest nor the archive."""

    def write_meanwhile(_snapshot: str) -> None:
        execute(pg, sample, "UPDATE users SET name = 'late' WHERE id <= 50; INSERT INTO empty_one VALUES (7)")

    result = backup(pg, sample, backup_dir, after_snapshot=write_meanwhile)
    manifest = result["manifest"]
    assert manifest["tables"]["public.empty_one"]["rows"] == 0
    restore_copy(pg, result["archive"], scratch_db)
    assert compare(manifest["tables"], fp(pg, scratch_db)) == []
    live = compare(manifest["tables"], fp(pg, sample))
    assert sorted(p.split(":")[0] for p in live) == ["public.empty_one", "public.users"]


def test_directory_format_with_parallel_jobs(pg, sample, backup_dir, scratch_db):
    result = backup(pg, sample, backup_dir, archive_format="directory", jobs=3)
    archive = Path(result["archive"])
    assert archive.is_dir() and archive.suffix == ".dir"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o700
    files = result["manifest"]["files"]
    assert "toc.dat" in files and len(files) >= 4
    for name, digest in files.items():
        assert stat.S_IMODE((archive / name).stat().st_mode) == 0o600
        assert sha256_file(str(archive / name)) == digest
    restore_copy(pg, str(archive), scratch_db)
    assert compare(result["manifest"]["tables"], fp(pg, scratch_db)) == []


def test_retention_keeps_the_newest_per_environment_and_database(pg, sample, backup_dir):
    backup_dir.mkdir(mode=0o700)
    old = [f"staging__{sample}__2026010{i}T000000Z__0001" for i in range(1, 5)]
    for stem in old:
        (backup_dir / f"{stem}.dump").write_text("x")
        (backup_dir / f"{stem}.json").write_text("{}")
    (backup_dir / f"staging__{sample}__20260102T000000Z__0001.dir").mkdir()  # a directory-format one
    keep_others = [
        f"production__{sample}__20250101T000000Z__0001.dump",
        "notes.txt",
        f"staging__{sample}.dump",
    ]
    for name in keep_others:
        (backup_dir / name).write_text("x")
    result = backup(pg, sample, backup_dir, retention=2)
    assert sorted(Path(p).name for p in result["retention_removed"]) == [
        f"{old[0]}.dump", f"{old[1]}.dir", f"{old[1]}.dump", f"{old[2]}.dump"
    ]  # fmt: skip
    assert sorted(p.name for p in backup_dir.iterdir()) == sorted(
        [*keep_others, f"{old[3]}.dump", f"{old[3]}.json", Path(result["archive"]).name,
         Path(result["manifest_path"]).name]
    )  # fmt: skip


def assert_refused(pg, dbname, directory: Path, match: str, **options) -> None:
    before = sorted(os.listdir(directory)) if directory.is_dir() else None
    with pytest.raises(BackupError, match=match) as info:
        backup(pg, dbname, directory, **options)
    assert "\n" not in str(info.value)
    assert (sorted(os.listdir(directory)) if directory.is_dir() else None) == before


def test_world_accessible_dir_is_refused(pg, sample, backup_dir):
    backup_dir.mkdir(mode=0o755)
    backup_dir.chmod(0o755)
    assert_refused(pg, sample, backup_dir, r"accessible by group/others \(mode 0755\); chmod 0700")


@pytest.mark.skipif(
    shutil.which("chattr") is None, reason="needs chattr to make a directory unwritable for root"
)
def test_unwritable_dir_is_refused(pg, sample, backup_dir):
    backup_dir.mkdir(mode=0o700)
    if subprocess.run(["chattr", "+i", str(backup_dir)], capture_output=True).returncode != 0:
        pytest.skip("filesystem does not support the immutable attribute")
    try:
        assert_refused(pg, sample, backup_dir, r"backups is not writable: Operation not permitted")
    finally:
        subprocess.run(["chattr", "-i", str(backup_dir)], check=True)


def test_dir_that_cannot_be_created_is_refused(pg, sample, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BackupError, match=r"cannot create backup directory .*afile/backups: Not a directory"):
        backup(pg, sample, tmp_path / "afile" / "backups")


def test_not_enough_space_is_refused_before_writing(pg, sample, backup_dir):
    backup_dir.mkdir(mode=0o700)
    assert_refused(
        pg, sample, backup_dir,
        r"not enough space in .*backups: need \d+ bytes \(database size \d+ x space factor 1e\+12\), "
        r"\d+ bytes free$",
        space_factor=1e12,
    )  # fmt: skip


def test_unexpected_revision_is_refused(pg, sample, backup_dir):
    backup_dir.mkdir(mode=0o700)
    assert_refused(
        pg, sample, backup_dir, r"is at revision 0001, not 0002 as pre-flight saw", expected_revision="0002"
    )


def test_wrong_password_is_one_clear_line(pg, sample, backup_dir):
    request = BackupRequest(environment="staging", directory=str(backup_dir))
    ci = ConnInfo("127.0.0.1", pg.port, sample, MIGRATOR, "wrong")
    with pytest.raises(BackupError, match=r"wrong password for role 'meetings_owner'$"):
        run_backup(ci, request)


def test_check_mode_reports_and_writes_nothing(pg, sample, backup_dir):
    result = backup(pg, sample, backup_dir, check_mode=True)
    assert not backup_dir.exists()
    assert result["would_create_dir"] is True
    assert NAME_RE.match(Path(result["archive"]).name)
    assert "public.users" in result["tables"]


def test_empty_database_is_at_base(pg, dbname, backup_dir):
    result = backup(pg, dbname, backup_dir)
    assert result["manifest"]["starting_revision"] == "base" and result["manifest"]["tables"] == {}
    assert Path(result["archive"]).name.endswith("__base.dump")


def test_hostile_database_name_stays_harmless(pg, backup_dir):
    hostile = 'curious.anonymous"; SELECT pg_sleep(1); --'
    pg.create_database(hostile)
    try:
        load_sample(pg, hostile)
        result = backup(pg, hostile, backup_dir)
        assert Path(result["archive"]).parent == backup_dir
        assert Path(result["archive"]).name.startswith(
            "staging__curious.anonymous___SELECT_pg_sleep_1___--__"
        )
        assert result["manifest"]["database"] == hostile
    finally:
        pg.drop_database(hostile)


def test_password_never_in_argv_results_or_files(pg, dbname, backup_dir, tmp_path):
    execute(pg, dbname, "CREATE TABLE bulk AS SELECT g, md5(g::text) AS t FROM generate_series(1, 400000) g")
    seen: list[str] = []
    done = threading.Event()

    def sample_cmdlines() -> None:
        while not done.is_set():
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    with contextlib.suppress(OSError):
                        seen.append(
                            (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                        )

    sampler = threading.Thread(target=sample_cmdlines)
    sampler.start()
    try:
        result = backup(pg, dbname, backup_dir, progress_file=str(tmp_path / "progress.log"))
    finally:
        done.set()
        sampler.join()
    assert any("pg_dump" in cmd and "--snapshot=" in cmd for cmd in seen), "the sampler never saw pg_dump"
    assert not [cmd for cmd in seen if MIGRATOR_PASSWORD in cmd]
    assert MIGRATOR_PASSWORD not in json.dumps(result)
    for path in [*backup_dir.iterdir(), tmp_path / "progress.log"]:
        assert MIGRATOR_PASSWORD.encode() not in path.read_bytes()


def test_module_through_ansible_playbook(pg, sample, tmp_path):
    """The real entry point: the db_backup role in a tiny playbook, secrets in a 0600 vars file."""
    vars_file = tmp_path / "vars.json"
    fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(
            {"db_environment": "staging", "db_host": "127.0.0.1", "db_port": pg.port, "db_name": sample,
             "db_migration_user": MIGRATOR, "db_migration_password": MIGRATOR_PASSWORD,
             "db_backup_dir": str(tmp_path / "b"), "db_backup_retention": 2,
             "result_file": str(tmp_path / "result.json")}, f,
        )  # fmt: skip
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    proc = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", "-e", f"@{vars_file}", "tests/playbooks/backup.yml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert MIGRATOR_PASSWORD not in proc.stdout + proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert set(result) >= {"archive", "manifest_path", "manifest", "sha256", "duration_seconds"}
    assert result["manifest"]["tables"]["public.users"]["rows"] == 300
    assert stat.S_IMODE(Path(result["manifest_path"]).stat().st_mode) == 0o600
