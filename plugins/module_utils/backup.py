"""The backup step: a verified pg_dump archive plus a manifest that says what it must contain.

Why it is built this way:

* The manifest's per-table fingerprint must describe exactly the archive, so pg_dump runs with
  ``--snapshot`` on a snapshot we export from an open REPEATABLE READ transaction, and the
  fingerprint is computed in that same transaction while pg_dump runs.
* A backup nobody can restore is worse than none (it lets the pipeline go on), so the archive is
  read back with ``pg_restore --list`` and hashed before anything else happens.
* The archive is written under a ``.partial`` name and only renamed to its final name once
  verified: a file that matches our naming scheme is always a complete, verified backup, and
  retention never counts a broken one.
* Passwords reach pg_dump only through a private pgpass file (``pgconn.pgpass_env``), never argv.
* Fast path (``snapshot``): when nobody else is connected, the database is first cloned with
  ``CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY`` (about 1 s a GB here, a full pg_restore is
  ~15x slower). The durable dump is then taken *from the clone*, so it can run while the migration
  changes the original, and the clone, sealed (no connections) once fingerprinted, is what the restore
  swaps back in. Other sessions on the database make the clone impossible without terminating them,
  which the backup never does: it falls back to dumping the database itself and says why.

Also home to the archive helpers the restore step shares (tool lookup, hashing, listing).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

try:
    from psycopg2 import sql
except ImportError:  # pragma: no cover - the module reports missing psycopg2 itself
    sql = None

from ansible_collections.pgmigrate.pipeline.plugins.module_utils.fingerprint import (
    fingerprint,
    list_tables,
    pin_settings,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import (
    ConnInfo,
    connect,
    explain_connect_error,
    pgpass_env,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.progress import Progress

MANIFEST_FORMAT_VERSION = 1
FORMATS = {"custom": ".dump", "directory": ".dir"}
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
# <environment>__<database>__<UTC timestamp>__<revision>.<dump|dir>; the manifest adds .json.
NAME_RE = re.compile(
    r"^(?P<prefix>.+?__.+?)__(?P<ts>\d{8}T\d{6}Z)__(?P<rev>[A-Za-z0-9_,.-]+)\.(?P<ext>dump|dir)$"
)
DEFAULT_BINDIR = "/usr/lib/postgresql/15/bin"
STDERR_TAIL_LINES = 20


class BackupError(Exception):
    """A refusal or failure, explained in one line for the operator."""


# --- helpers shared with the restore step ----------------------------------------------------------


def pg_tool(name: str, bindir: str | None = None) -> str:
    """Absolute path of a PostgreSQL client program (the bindir wins over PATH: versions matter)."""
    for candidate_dir in (bindir, os.environ.get("PG_BINDIR"), DEFAULT_BINDIR):
        if candidate_dir:
            path = os.path.join(candidate_dir, name)
            if os.access(path, os.X_OK):
                return path
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} not found (set pg_bindir or PG_BINDIR to the PostgreSQL bin directory)")
    return found


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def iso(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_directory(path: str) -> tuple[str, dict[str, str]]:
    """A directory archive's hash: sha256 over ``name  sha256\\n`` lines of its files, sorted by name.

    The per-file hashes go in the manifest too, so a restore can say which file is damaged.
    """
    files: dict[str, str] = {}
    for root, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            files[os.path.relpath(full, path)] = sha256_file(full)
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}  {files[name]}\n".encode())
    return digest.hexdigest(), dict(sorted(files.items()))


def archive_digest(path: str, archive_format: str) -> tuple[str, dict[str, str] | None, int]:
    """(sha256, per-file hashes or None, size in bytes) of an archive in either format."""
    if archive_format == "directory":
        total, files = sha256_directory(path)
        size = sum(os.path.getsize(os.path.join(path, name)) for name in files)
        return total, files, size
    return sha256_file(path), None, os.path.getsize(path)


def first_error_line(stderr: str) -> str:
    """The line of a client program's stderr that says what went wrong."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line or "FATAL" in line or "fatal" in line:
            return line
    return lines[-1] if lines else "no error output"


def list_archive(archive: str, bindir: str | None = None) -> int:
    """Read the archive's table of contents with ``pg_restore --list``; returns the entry count."""
    proc = subprocess.run(
        [pg_tool("pg_restore", bindir), "--list", archive],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BackupError(f"pg_restore --list cannot read {archive}: {first_error_line(proc.stderr)}")
    return sum(1 for line in proc.stdout.splitlines() if line and not line.startswith(";"))


def server_version(cur) -> str:
    cur.execute("SELECT current_setting('server_version')")
    return cur.fetchone()[0].split()[0]


def alembic_revision(cur) -> str:
    """The database's Alembic revision as the pipeline names it: 'base' when there is none."""
    cur.execute("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not cur.fetchone()[0]:
        return "base"
    cur.execute("SELECT version_num FROM alembic_version ORDER BY version_num")
    heads = [row[0] for row in cur.fetchall()]
    return ",".join(heads) if heads else "base"


def safe_name_part(value: str) -> str:
    """A database or environment name made safe for a file name (hostile names stay harmless)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", value) or "_"


# --- the backup directory ---------------------------------------------------------------------------


def _check_existing_dir(path: str) -> None:
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise BackupError(f"backup directory {path} exists but is not a directory")
    if st.st_mode & 0o077:
        raise BackupError(
            f"backup directory {path} is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "chmod 0700 it or choose another db_backup_dir"
        )
    if st.st_uid != os.geteuid():
        raise BackupError(
            f"backup directory {path} is owned by uid {st.st_uid}, not by the runner ({os.geteuid()})"
        )
    try:  # os.access lies for root; a real file creation does not
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BackupError(f"backup directory {path} is not writable: {exc.strerror}") from None


def prepare_backup_dir(path: str, check_mode: bool) -> bool:
    """Validate (or create 0700) the backup directory. Returns True when it was (or would be) created."""
    if os.path.lexists(path):
        _check_existing_dir(path)
        return False
    if check_mode:
        return True
    try:
        os.makedirs(path, mode=0o700)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise BackupError(f"cannot create backup directory {path}: {exc.strerror}") from None
    return True


def free_bytes(path: str) -> int:
    """Free space where the path is (or would be created)."""
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe).free


def check_space(path: str, database_size: int, factor: float) -> int:
    needed = int(database_size * factor)
    free = free_bytes(path)
    if needed > free:
        raise BackupError(
            f"not enough space in {path}: need {needed} bytes (database size {database_size} x space factor "
            f"{factor:g}), {free} bytes free"
        )
    return needed


# --- naming and retention ---------------------------------------------------------------------------


def archive_path(
    directory: str, environment: str, database: str, started: dt.datetime, revision: str, archive_format: str
) -> str:
    stem = "__".join(
        (
            safe_name_part(environment),
            safe_name_part(database),
            started.strftime(TIMESTAMP_FORMAT),
            safe_name_part(revision),
        )
    )
    return os.path.join(directory, stem + FORMATS[archive_format])


def manifest_path_for(archive: str) -> str:
    return os.path.splitext(archive)[0] + ".json"


def existing_backups(directory: str, environment: str, database: str) -> list[str]:
    """Our archives for this environment+database, oldest first (only names in our scheme)."""
    prefix = f"{safe_name_part(environment)}__{safe_name_part(database)}"
    found = []
    for name in os.listdir(directory):
        match = NAME_RE.match(name)
        if match and match.group("prefix") == prefix:
            found.append((match.group("ts"), name))
    return [os.path.join(directory, name) for _ts, name in sorted(found)]


def apply_retention(directory: str, environment: str, database: str, keep: int, just_taken: str) -> list[str]:
    """Remove all but the newest ``keep`` backups (archive and manifest together); never ``just_taken``."""
    backups = existing_backups(directory, environment, database)
    doomed = [path for path in backups[: max(len(backups) - max(keep, 1), 0)] if path != just_taken]
    for archive in doomed:
        if os.path.isdir(archive) and not os.path.islink(archive):
            shutil.rmtree(archive)
        else:
            os.unlink(archive)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(manifest_path_for(archive))
    return doomed


def write_private_json(path: str, data: dict) -> None:
    """Write JSON 0600 atomically (temp file in the same directory, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".manifest-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --- pg_dump ----------------------------------------------------------------------------------------


@dataclass
class BackupRequest:
    environment: str
    directory: str
    archive_format: str = "custom"
    jobs: int = 2
    retention: int = 5
    space_factor: float = 1.0
    lock_wait_timeout: str = "60s"
    expected_revision: str | None = None
    pg_bindir: str | None = None
    progress_file: str | None = None
    check_mode: bool = False
    # Dump this database (a snapshot clone made by take_snapshot) instead of the connection's; the
    # manifest still names the connection's database, and records the clone for the restore.
    source_database: str | None = None
    # Run every refusal (directory, space, revision, name) for real, create the directory, dump nothing:
    # a dump that runs on while migrating must not discover a refusal only after the migration.
    prepare_only: bool = False
    maintenance_db: str = "postgres"
    # Test hook: runs right after the snapshot is exported, before pg_dump and the fingerprint.
    after_snapshot: Callable[[str], None] | None = field(default=None, repr=False)


class LoggedChild:
    """A PostgreSQL client program whose --verbose stderr streams to the progress file.

    The last lines are kept so a failure can be explained in one line; stdout is discarded (both
    pg_dump and pg_restore write to files or databases). umask 077: whatever it creates is private.
    """

    def __init__(self, argv: list[str], env: dict, progress: Progress):
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            umask=0o077,
        )
        self.progress = progress
        self.tail: list[str] = []
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.tail = [*self.tail[-(STDERR_TAIL_LINES - 1) :], line]
            self.progress.line(line)

    def wait(self) -> int:
        returncode = self.proc.wait()
        self.pump.join()
        return returncode

    def kill(self) -> None:
        self.proc.kill()
        self.wait()

    def error_line(self) -> str:
        return first_error_line("\n".join(self.tail))


def _dump_argv(req: BackupRequest, target: str, snapshot: str) -> list[str]:
    argv = [
        pg_tool("pg_dump", req.pg_bindir),
        f"--format={req.archive_format}",
        f"--file={target}",
        f"--snapshot={snapshot}",
        f"--lock-wait-timeout={req.lock_wait_timeout}",
        "--no-password",
        "--verbose",
    ]
    if req.archive_format == "directory":
        argv.append(f"--jobs={max(req.jobs, 1)}")
    return argv  # the database comes from PGDATABASE: no names (hostile or not) in argv


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _free_name(req: BackupRequest, database: str, revision: str) -> tuple[dt.datetime, str]:
    """A timestamp whose archive name is not taken yet (two backups in one second wait a tick)."""
    for _attempt in range(3):
        started = utc_now()
        path = archive_path(req.directory, req.environment, database, started, revision, req.archive_format)
        if not os.path.lexists(path) and not os.path.lexists(path + ".partial"):
            return started, path
        time.sleep(1.05 - (time.time() % 1))
    raise BackupError(f"archive name {path} is taken; is another backup of this database running?")


def run_backup(ci: ConnInfo, req: BackupRequest) -> dict:
    """Take, verify and describe one backup. Returns the module's result (manifest included)."""
    if req.archive_format not in FORMATS:
        raise BackupError(f"unknown archive format {req.archive_format!r} (choose custom or directory)")
    directory = os.path.abspath(req.directory)
    req.directory = directory
    created_dir = prepare_backup_dir(directory, req.check_mode)
    progress = Progress(None if req.check_mode else req.progress_file, error=BackupError)
    clock = time.monotonic()
    source_ci = ci.with_db(req.source_database) if req.source_database else ci
    try:
        conn = connect(source_ci, autocommit=False)
    except Exception as exc:  # psycopg2.OperationalError and friends
        raise BackupError(explain_connect_error(source_ci, exc)) from None
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_catalog.pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
            cur.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (req.lock_wait_timeout,))
            pin_settings(cur)
            cur.execute("SELECT pg_catalog.pg_database_size(current_database())")
            db_size = int(cur.fetchone()[0])
            version = server_version(cur)
            revision = alembic_revision(cur)
            if req.expected_revision and revision != req.expected_revision:
                raise BackupError(
                    f"{ci.dbname} is at revision {revision}, not {req.expected_revision} as pre-flight saw; "
                    "is someone else migrating it?"
                )
            tables = list_tables(cur)
            needed = check_space(directory, db_size, req.space_factor)
            started, archive = _free_name(req, ci.dbname, revision)
            if req.check_mode or req.prepare_only:
                return {
                    "changed": created_dir,
                    "archive": archive,
                    "manifest_path": manifest_path_for(archive),
                    "would_create_dir": created_dir,
                    "database_size_bytes": db_size,
                    "space_needed_bytes": needed,
                    "starting_revision": revision,
                    "tables": [f"{s}.{t}" for s, t in tables],
                    "server_version": version,
                }
            progress.line(f"backup of {ci.describe()} at revision {revision} to {archive} ({db_size} bytes)")
            if req.after_snapshot is not None:
                req.after_snapshot(snapshot)
            partial = archive + ".partial"
            try:
                tables_fp = _dump_and_fingerprint(source_ci, req, cur, tables, snapshot, partial, progress)
                conn.rollback()  # the snapshot may go now: pg_dump has finished with it
                progress.line("verifying the archive with pg_restore --list")
                toc_entries = list_archive(partial, req.pg_bindir)
                sha, files, size = archive_digest(partial, req.archive_format)
                os.rename(partial, archive)
            except BaseException:
                _remove(partial)
                raise
    finally:
        conn.close()
    duration = round(time.monotonic() - clock, 3)
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "environment": req.environment,
        "host": ci.host,
        "port": ci.port,
        "database": ci.dbname,
        "archive": archive,
        "archive_format": req.archive_format,
        "sha256": sha,
        "size_bytes": size,
        "server_version": version,
        "starting_revision": revision,
        "started_at": iso(started),
        "duration_seconds": duration,
        "toc_entries": toc_entries,
        "tables": tables_fp,
    }
    if files is not None:
        manifest["files"] = files
    if req.source_database:
        manifest["snapshot_database"] = req.source_database
        manifest["snapshot_oid"] = seal_snapshot(ci, req.maintenance_db, req.source_database)
    manifest_path = manifest_path_for(archive)
    try:
        write_private_json(manifest_path, manifest)
    except BaseException:
        _remove(archive)
        raise
    removed = apply_retention(directory, req.environment, ci.dbname, req.retention, archive)
    progress.line(
        f"backup done in {duration}s: {size} bytes, sha256 {sha}, {len(removed)} old backup(s) removed"
    )
    return {
        "changed": True,
        "archive": archive,
        "manifest_path": manifest_path,
        "snapshot_database": req.source_database,
        "manifest": manifest,
        "sha256": sha,
        "duration_seconds": duration,
        "size_bytes": size,
        "created_dir": created_dir,
        "retention_removed": removed,
    }


def _dump_and_fingerprint(
    ci: ConnInfo, req: BackupRequest, cur, tables, snapshot: str, partial: str, progress: Progress
) -> dict:
    """Run pg_dump on the exported snapshot while this transaction fingerprints the same snapshot."""
    with pgpass_env(ci) as env:
        child = LoggedChild(_dump_argv(req, partial, snapshot), env, progress)
        try:
            tables_fp = fingerprint(
                cur, tables, on_table=lambda key, fp: progress.line(f"fingerprint {key}: {fp['rows']} rows")
            )
        except BaseException:
            child.kill()
            raise
        returncode = child.wait()
    if returncode != 0:
        raise BackupError(f"pg_dump failed (exit {returncode}): {child.error_line()}")
    return tables_fp


# --- the snapshot clone -----------------------------------------------------------------------------

SNAPSHOT_ROLE = "snap"


def side_name(database: str, role: str, stamp: str) -> str:
    """``<db>__<role>_<stamp>``, shortening the database part so it fits PostgreSQL's 63 bytes."""
    suffix = f"__{role}_{stamp}"
    base = database
    while len((base + suffix).encode()) > 63:
        base = base[:-1]
    return base + suffix


def _maintenance_conn(ci: ConnInfo, maintenance_db: str):
    maint = ci.with_db(maintenance_db)
    try:
        return connect(maint)
    except Exception as exc:
        raise BackupError(explain_connect_error(maint, exc)) from None


def other_sessions(cur, database: str) -> tuple[int, str]:
    """Client sessions on the database other than ours, and their users (pg_stat_activity shows every
    backend's database and user to every role). Autovacuum workers (no user) do not count: CREATE
    DATABASE cancels them on the template itself."""
    cur.execute(
        "SELECT count(*), coalesce(string_agg(DISTINCT usename, ', '), '') FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid() AND usesysid IS NOT NULL",
        (database,),
    )
    count, users = cur.fetchone()
    return int(count), users


def take_snapshot(ci: ConnInfo, maintenance_db: str = "postgres", check_mode: bool = False) -> dict:
    """Clone the database by file copy when it is ours alone; never terminates anyone.

    Returns ``snapshot_database`` (None when no clone was made), ``snapshot_skipped`` (why not) and
    ``snapshot_seconds``. The clone is private (CONNECT revoked from PUBLIC): only its owner, the
    migration role, can read it.
    """
    clock = time.monotonic()
    conn = _maintenance_conn(ci, maintenance_db)
    name = side_name(ci.dbname, SNAPSHOT_ROLE, utc_now().strftime(TIMESTAMP_FORMAT))
    result: dict = {"snapshot_database": None, "snapshot_skipped": "", "snapshot_seconds": 0.0}
    try:
        with conn.cursor() as cur:
            count, users = other_sessions(cur, ci.dbname)
            if count:
                result["snapshot_skipped"] = (
                    f"{count} other session(s) of {users} on {ci.dbname}: dumping the database itself"
                )
            elif check_mode:
                result["snapshot_database"] = name
            else:
                try:
                    cur.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {} STRATEGY FILE_COPY").format(
                            sql.Identifier(name), sql.Identifier(ci.user), sql.Identifier(ci.dbname)
                        )
                    )
                except Exception as exc:  # a session slipped in, not the owner, no space: plain dump
                    result["snapshot_skipped"] = (
                        f"cannot clone {ci.dbname} ({first_error_line(str(exc))}): "
                        "dumping the database itself"
                    )
                else:
                    cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
                    result["snapshot_database"] = name
    finally:
        conn.close()
    result["snapshot_seconds"] = round(time.monotonic() - clock, 3)
    return result


def seal_snapshot(ci: ConnInfo, maintenance_db: str, name: str) -> int:
    """Forbid connections to the fingerprinted clone, so it stays what the manifest describes until a
    restore (which checks the seal and the oid) unseals it. Returns its oid."""
    conn = _maintenance_conn(ci, maintenance_db)
    try:
        with conn.cursor() as cur:
            seal = sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name))
            cur.execute(seal)
            cur.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def drop_snapshot(ci: ConnInfo, maintenance_db: str, name: str) -> bool:
    """Drop a clone this pipeline made (nobody may connect to it, so no FORCE is needed). Only names
    of our scheme for this database are accepted: this never drops anything else."""
    stamp_shape = "00000000T000000Z"
    expected = re.escape(side_name(ci.dbname, SNAPSHOT_ROLE, stamp_shape)[: -len(stamp_shape)])
    if not re.fullmatch(expected + r"\d{8}T\d{6}Z", name):
        raise BackupError(f"{name!r} is not a snapshot of {ci.dbname!r}; not dropping it")
    conn = _maintenance_conn(ci, maintenance_db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            return True
    finally:
        conn.close()
