"""The restore step: bring a database back to a verified backup without losing the failed state.

Why it is built this way:

* Every check that can be done before touching the server is done first (manifest well-formed and
  for this database, archive owned by us and not writable by others, sha256 equal, readable by
  ``pg_restore --list``): a refusal leaves the server exactly as it was.
* The archive is restored into a fresh database and compared with the manifest's fingerprint and
  starting revision *before* the swap: if the backup does not give back what it promised, the
  failed database stays where it is and both are kept for a human.
* The swap is two renames, so the application sees either the failed database or the restored
  one, never a half-restored one, and the failed one survives as a forensic copy.
* Fast path: when the manifest names a snapshot clone (see ``backup.take_snapshot``) that is still
  sealed (no connections allowed) with the oid the backup recorded, that clone is verified against the
  manifest's fingerprint and renamed into place instead of running pg_restore: seconds instead of
  minutes. Anything else (no clone, dropped, unsealed, different oid, fingerprint differs) falls back
  to pg_restore of the verified archive, saying why.
* The migration role is not a superuser: it owns the database, has CREATEDB and pg_signal_backend;
  every statement here works with exactly that.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass

try:
    from psycopg2 import errors as pg_errors
    from psycopg2 import sql
except ImportError:  # pragma: no cover - the module reports missing psycopg2 itself
    pg_errors = sql = None

from ansible_collections.pgmigrate.pipeline.plugins.module_utils import backup, fingerprint, pgconn
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.progress import Progress

BackupError, pg_tool = backup.BackupError, backup.pg_tool
ConnInfo, connect, explain_connect_error = pgconn.ConnInfo, pgconn.connect, pgconn.explain_connect_error
connect_when_up = pgconn.connect_when_up

MAX_IDENTIFIER_BYTES = 63
MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "environment": str,
    "database": str,
    "archive": str,
    "archive_format": str,
    "sha256": str,
    "starting_revision": str,
    "tables": dict,
}


class RestoreError(Exception):
    """A refusal or failure, explained in one line for the operator."""


@dataclass
class RestoreRequest:
    manifest_path: str
    environment: str | None = None
    maintenance_db: str = "postgres"
    jobs: int = 2
    keep_forensic: bool = True
    rename_retries: int = 20
    pg_bindir: str | None = None
    progress_file: str | None = None
    check_mode: bool = False
    # Swap in the backup's sealed snapshot clone when it is usable (else pg_restore the archive).
    use_snapshot: bool = True
    # How long to wait for a server that is down or recovering (a crash is when a restore is needed).
    server_wait_seconds: float = 120


# --- checks before touching anything ----------------------------------------------------------------


def _refuse_if_writable_by_others(path: str, what: str) -> None:
    st = os.lstat(path)
    if st.st_mode & 0o022:
        raise RestoreError(
            f"{what} {path} is writable by group/others (mode {stat.S_IMODE(st.st_mode):04o}); refusing"
        )


def load_manifest(path: str) -> dict:
    """Read and validate a manifest; any problem is one line that names the file."""
    if not path:
        raise RestoreError("no manifest given (pass the backup's .json manifest path)")
    if not os.path.isfile(path):
        raise RestoreError(f"manifest {path} does not exist or is not a file")
    _refuse_if_writable_by_others(path, "manifest")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RestoreError(f"manifest {path} is not readable JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise RestoreError(f"manifest {path} is not a JSON object")
    for key, kind in MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(key), kind):
            raise RestoreError(
                f"manifest {path} is malformed: field {key!r} missing or not a {kind.__name__}"
            )
    if manifest["format_version"] != backup.MANIFEST_FORMAT_VERSION:
        raise RestoreError(f"manifest {path} has format_version {manifest['format_version']}, expected 1")
    if manifest["archive_format"] not in backup.FORMATS:
        raise RestoreError(f"manifest {path} names an unknown archive_format {manifest['archive_format']!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", manifest["sha256"]):
        raise RestoreError(f"manifest {path} is malformed: sha256 is not 64 hex digits")
    if not os.path.isabs(manifest["archive"]):
        raise RestoreError(f"manifest {path} is malformed: archive path is not absolute")
    for table, entry in manifest["tables"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("rows"), int) and "checksum" in entry):
            raise RestoreError(f"manifest {path} is malformed: table {table!r} lacks rows/checksum")
    return manifest


def check_archive(manifest: dict, pg_bindir: str | None = None) -> int:
    """Prove the archive is ours, untouched and readable; returns its TOC entry count."""
    archive = manifest["archive"]
    if not os.path.lexists(archive):
        raise RestoreError(f"archive {archive} named by the manifest does not exist")
    if os.path.islink(archive):
        raise RestoreError(f"archive {archive} is a symbolic link; refusing")
    directory_format = manifest["archive_format"] == "directory"
    if os.path.isdir(archive) != directory_format:
        raise RestoreError(f"archive {archive} is not a {manifest['archive_format']}-format archive")
    uid = os.geteuid()
    members = [archive]
    if directory_format:
        members += [os.path.join(archive, name) for name in sorted(os.listdir(archive))]
    for path in members:
        if os.lstat(path).st_uid != uid:
            raise RestoreError(
                f"archive {path} is owned by uid {os.lstat(path).st_uid}, not the runner ({uid})"
            )
        _refuse_if_writable_by_others(path, "archive")
    _refuse_if_writable_by_others(os.path.dirname(archive), "archive directory")
    sha, files, _size = backup.archive_digest(archive, manifest["archive_format"])
    if sha != manifest["sha256"]:
        detail = ""
        if files is not None and isinstance(manifest.get("files"), dict):
            changed = sorted(set(files.items()) ^ set(manifest["files"].items()))
            detail = f" (differing files: {', '.join(sorted({name for name, _h in changed}))})"
        raise RestoreError(
            f"archive {archive} has sha256 {sha}, the manifest says {manifest['sha256']}{detail}"
        )
    try:
        return backup.list_archive(archive, pg_bindir)
    except BackupError as exc:
        raise RestoreError(str(exc)) from None


# --- names ------------------------------------------------------------------------------------------


side_name = backup.side_name


def usable_snapshot(cur, manifest: dict) -> tuple[str | None, str]:
    """The manifest's snapshot clone when it can stand in for a restore, else (None, why not).

    Usable means: it exists, has the oid the backup recorded (not a lookalike made later under the same
    name) and is still sealed (connections forbidden since it was fingerprinted).
    """
    name, oid = manifest.get("snapshot_database"), manifest.get("snapshot_oid")
    if not name:
        return None, "the backup has no snapshot"
    cur.execute("SELECT oid, datallowconn FROM pg_database WHERE datname = %s", (name,))
    row = cur.fetchone()
    if row is None:
        return None, f"snapshot {name} no longer exists"
    if row[0] != oid:
        return None, f"snapshot {name} has oid {row[0]}, the backup recorded {oid}"
    if row[1]:
        return None, f"snapshot {name} accepts connections (not sealed): it may have changed"
    return name, f"snapshot {name} is sealed and unchanged since the backup"


def _conninfo_dbname(name: str) -> str:
    """A libpq conninfo string naming one database, so odd names are never parsed as URIs/options."""
    return "dbname='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --- server side ------------------------------------------------------------------------------------


@dataclass
class TargetInfo:
    exists: bool
    oid: int | None = None
    owner: str | None = None
    encoding: str | None = None
    collate: str | None = None
    ctype: str | None = None
    conn_limit: int = -1
    allow_connections: bool = True
    has_acl: bool = False


def target_info(cur, database: str) -> TargetInfo:
    cur.execute(
        "SELECT d.oid, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, "
        "d.datconnlimit, d.datallowconn, d.datacl IS NOT NULL FROM pg_database d WHERE d.datname = %s",
        (database,),
    )
    row = cur.fetchone()
    if row is None:
        return TargetInfo(exists=False)
    return TargetInfo(True, *row)


def database_exists(cur, name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    return cur.fetchone() is not None


def create_database(cur, name: str, owner: str, info: TargetInfo) -> None:
    query = sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
        sql.Identifier(name), sql.Identifier(owner)
    )
    if info.exists:  # same encoding and locale as the database it replaces
        query += sql.SQL(" ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            sql.Literal(info.encoding), sql.Literal(info.collate), sql.Literal(info.ctype)
        )
    try:
        cur.execute(query)
    except pg_errors.Error as exc:  # e.g. CREATEDB revoked: say so in one line, not as a traceback
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RestoreError(
            f"cannot create database {name} to restore into: {reason}; nothing was swapped"
        ) from None


def run_pg_restore(
    ci: ConnInfo, archive: str, database: str, jobs: int, pg_bindir: str | None, progress: Progress
) -> None:
    argv = [
        pg_tool("pg_restore", pg_bindir),
        f"--dbname={_conninfo_dbname(database)}",
        "--exit-on-error",
        "--no-password",
        "--verbose",
        f"--jobs={max(jobs, 1)}",
        archive,
    ]
    with pgconn.pgpass_env(ci) as env:
        child = backup.LoggedChild(argv, env, progress)
        returncode = child.wait()
    if returncode != 0:
        raise RestoreError(
            f"pg_restore into {database} failed (exit {returncode}): {child.error_line()}; "
            f"the half-restored database {database} is kept, the original is untouched"
        )


def terminate_sessions(cur, database: str) -> int:
    """Terminate the sessions pg_signal_backend may end; superusers' stay and make the rename say so.

    Processes that advertise no role (autovacuum workers) only a superuser may signal; the rename ends
    them by itself (PostgreSQL terminates autovacuum workers in a database it renames or drops).
    """
    cur.execute(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(a.pid)) FROM pg_stat_activity a "
        "JOIN pg_roles r ON r.oid = a.usesysid "
        "WHERE a.datname = %s AND a.pid <> pg_backend_pid() AND NOT r.rolsuper",
        (database,),
    )
    return int(cur.fetchone()[0])


def rename_database(cur, old: str, new: str, retries: int) -> int:
    """Rename, terminating sessions that sneak in meanwhile; returns sessions terminated."""
    terminated = 0
    for attempt in range(retries + 1):
        terminated += terminate_sessions(cur, old)
        try:
            cur.execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
            )
            return terminated
        except pg_errors.ObjectInUse:
            if attempt == retries:
                cur.execute(
                    "SELECT string_agg(DISTINCT usename, ', ') FROM pg_stat_activity WHERE datname = %s",
                    (old,),
                )
                who = cur.fetchone()[0] or "unknown"
                raise RestoreError(
                    f"cannot rename database {old}: sessions of {who} stay connected after {retries} retries"
                ) from None
            time.sleep(0.25)
    return terminated


def set_allow_connections(cur, database: str, allow: bool) -> None:
    cur.execute(
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
            sql.Identifier(database), sql.SQL("true" if allow else "false")
        )
    )


def carry_over_settings(cur, source: str, target: str, info: TargetInfo) -> list[str]:
    """Give the restored database the failed one's CONNECT/TEMP grants, connection limit and
    database-level settings (these live in the cluster, not in the dump). Returns warnings."""
    warnings: list[str] = []
    if info.has_acl:
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(target)))
        cur.execute(
            "SELECT a.grantee = 0, r.rolname, a.privilege_type, a.is_grantable "
            "FROM pg_database d, aclexplode(d.datacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
            "WHERE d.datname = %s ORDER BY 2, 3",
            (source,),
        )
        for is_public, grantee, privilege, grantable in cur.fetchall():
            query = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
                sql.SQL(privilege),
                sql.Identifier(target),
                sql.SQL("PUBLIC") if is_public else sql.Identifier(grantee),
            )
            if grantable:
                query += sql.SQL(" WITH GRANT OPTION")
            cur.execute(query)
    if info.conn_limit != -1:
        cur.execute(
            sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
                sql.Identifier(target), sql.Literal(info.conn_limit)
            )
        )
    cur.execute(
        "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
        "WHERE d.datname = %s AND s.setrole = 0",
        (source,),
    )
    for item in [row[0] for row in cur.fetchall()]:
        name, value = item.split("=", 1)
        try:  # set_config parses the value like the server does (lists, units); FROM CURRENT stores it
            cur.execute("SELECT set_config(%s, %s, false)", (name, value))
            cur.execute(
                sql.SQL("ALTER DATABASE {} SET {} FROM CURRENT").format(
                    sql.Identifier(target), sql.Identifier(name)
                )
            )
            cur.execute(sql.SQL("RESET {}").format(sql.Identifier(name)))
        except Exception as exc:  # one unsettable parameter must not stop the restore
            warnings.append(f"setting {name} not carried over: {backup.first_error_line(str(exc))}")
    return warnings


# --- the whole step ---------------------------------------------------------------------------------


def verify_restored(ci: ConnInfo, database: str, manifest: dict, jobs: int = 1) -> list[str]:
    """Differences between the restored database and what the manifest promises.

    ``jobs`` > 1 reads tables in parallel: only for a database nobody else can reach (the clone).
    """
    try:
        conn = connect(ci.with_db(database))
    except Exception as exc:
        raise RestoreError(explain_connect_error(ci.with_db(database), exc)) from None
    with contextlib.closing(conn):
        methods = fingerprint.expected_methods(manifest["tables"])
        if jobs > 1:
            actual = fingerprint.parallel_fingerprint(lambda: connect(ci.with_db(database)), jobs, methods)
        else:
            actual = fingerprint.database_fingerprint(conn, methods)
        problems = fingerprint.compare(manifest["tables"], actual)
        with conn.cursor() as cur:
            revision = backup.alembic_revision(cur)
    if revision != manifest["starting_revision"]:
        problems.insert(0, f"revision {revision}, expected {manifest['starting_revision']}")
    return problems


def run_restore(ci: ConnInfo, req: RestoreRequest) -> dict:
    """Check, restore, verify, swap. ``ci.dbname`` is the database to bring back."""
    clock = time.monotonic()
    database = ci.dbname
    manifest = load_manifest(req.manifest_path)
    if manifest["database"] != database:
        raise RestoreError(
            f"manifest {req.manifest_path} is a backup of {manifest['database']!r}, not {database!r}"
        )
    if req.environment and manifest["environment"] != req.environment:
        raise RestoreError(
            f"manifest {req.manifest_path} is from environment {manifest['environment']!r}, "
            f"not {req.environment!r}"
        )
    if database == req.maintenance_db:
        raise RestoreError(
            f"cannot restore {database!r}: it is the maintenance database the swap connects to"
        )
    maint_ci = ci.with_db(req.maintenance_db)
    try:
        conn = connect_when_up(maint_ci, 0 if req.check_mode else req.server_wait_seconds)
    except Exception as exc:
        raise RestoreError(explain_connect_error(maint_ci, exc)) from None
    with contextlib.closing(conn), conn.cursor() as cur:
        snapshot, snapshot_note = usable_snapshot(cur, manifest) if req.use_snapshot else (None, "disabled")
        # The sealed clone never passes through the archive; the archive is checked when it is used.
        toc_entries = manifest.get("toc_entries") if snapshot else check_archive(manifest, req.pg_bindir)
        stamp = backup.utc_now().strftime(backup.TIMESTAMP_FORMAT)
        restored_name = snapshot or side_name(database, "restore", stamp)
        forensic_name = side_name(database, "failed", stamp)
        for name in {restored_name, forensic_name} - {snapshot}:
            if database_exists(cur, name):
                raise RestoreError(f"database {name} already exists; is another restore running?")
        info = target_info(cur, database)
        result = {
            "method": "snapshot" if snapshot else "pg_restore",
            "snapshot_note": snapshot_note,
            "archive": manifest["archive"],
            "manifest_path": os.path.abspath(req.manifest_path),
            "starting_revision": manifest["starting_revision"],
            "toc_entries": toc_entries,
            "restored_database": database,
            "forensic_database": forensic_name if info.exists else None,
            "staging_database": restored_name,
        }
        check_seconds = round(time.monotonic() - clock, 3)
        if req.check_mode:
            return {**result, "changed": True, "fingerprint_ok": None, "check_seconds": check_seconds}
        progress = Progress(req.progress_file, error=RestoreError)
        step = time.monotonic()
        problems: list[str] = []
        if snapshot:
            progress.line(f"verifying sealed snapshot {snapshot} against the manifest")
            set_allow_connections(cur, snapshot, True)
            problems = verify_restored(ci, snapshot, manifest, jobs=req.jobs)
            if problems:  # the clone is not what the manifest says: the archive is the way back
                set_allow_connections(cur, snapshot, False)
                result["snapshot_note"] = f"snapshot {snapshot} differs ({'; '.join(problems[:3])})"
                progress.line(result["snapshot_note"] + ": falling back to pg_restore")
                snapshot, problems, result["method"] = None, [], "pg_restore"
                result["toc_entries"] = check_archive(manifest, req.pg_bindir)
                restored_name = result["staging_database"] = side_name(database, "restore", stamp)
            restore_seconds = 0.0
        if not snapshot:
            progress.line(f"restoring {manifest['archive']} into new database {restored_name}")
            create_database(cur, restored_name, ci.user, info)
            step = time.monotonic()
            run_pg_restore(ci, manifest["archive"], restored_name, req.jobs, req.pg_bindir, progress)
            restore_seconds = round(time.monotonic() - step, 3)
            step = time.monotonic()
            progress.line(f"verifying {restored_name} against the manifest")
            problems = verify_restored(ci, restored_name, manifest)
        verify_seconds = round(time.monotonic() - step, 3)
        if problems:
            raise RestoreError(
                f"restored database {restored_name} does not match the manifest ({'; '.join(problems[:5])}); "
                f"not swapped: {database} is untouched and {restored_name} is kept for inspection"
            )
        step = time.monotonic()
        warnings = carry_over_settings(cur, database, restored_name, info) if info.exists else []
        if snapshot and not info.has_acl:  # the clone was made private; give back the default access
            cur.execute(
                sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO PUBLIC").format(sql.Identifier(snapshot))
            )
        cur.execute("SELECT oid FROM pg_database WHERE datname = %s", (restored_name,))
        restored_oid = cur.fetchone()[0]
        try:
            terminated = _swap(cur, database, restored_name, forensic_name, info, req, progress)
        except RestoreError as exc:
            raise RestoreError(
                f"{exc}; not swapped: {database} is unchanged, "
                f"the verified restore is kept as {restored_name}"
            ) from None
        cur.execute("SELECT oid FROM pg_database WHERE datname = %s", (database,))
        swapped = cur.fetchone()[0] == restored_oid
        dropped = False
        if info.exists and swapped and not req.keep_forensic:
            progress.line(f"dropping forensic copy {forensic_name}")
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(forensic_name)))
            dropped = True
        swap_seconds = round(time.monotonic() - step, 3)
    duration = round(time.monotonic() - clock, 3)
    progress.line(f"restore of {database} done in {duration}s")
    return {
        **result,
        "changed": True,
        "fingerprint_ok": True,
        "forensic_database": None if dropped or not info.exists else forensic_name,
        "forensic_dropped": dropped,
        "sessions_terminated": terminated,
        # Not "warnings": Ansible reserves that key in module results (the module warns with each).
        "settings_warnings": warnings,
        "check_seconds": check_seconds,
        "restore_seconds": restore_seconds,
        "verify_seconds": verify_seconds,
        "swap_seconds": swap_seconds,
        "duration_seconds": duration,
    }


def _swap(
    cur,
    database: str,
    restored: str,
    forensic: str,
    info: TargetInfo,
    req: RestoreRequest,
    progress: Progress,
) -> int:
    """Failed database -> forensic name, restored -> real name; undo the first rename if the second fails."""
    if not info.exists:
        progress.line(f"{database} does not exist: renaming {restored} to it")
        return rename_database(cur, restored, database, req.rename_retries)
    progress.line(f"swapping: {database} -> {forensic}, {restored} -> {database}")
    set_allow_connections(cur, database, False)
    try:
        terminated = rename_database(cur, database, forensic, req.rename_retries)
    except BaseException:
        set_allow_connections(cur, database, info.allow_connections)
        raise
    try:
        terminated += rename_database(cur, restored, database, req.rename_retries)
    except BaseException:
        rename_database(cur, forensic, database, req.rename_retries)
        set_allow_connections(cur, database, info.allow_connections)
        raise
    set_allow_connections(cur, forensic, info.allow_connections)  # a human may want to look inside
    return terminated
