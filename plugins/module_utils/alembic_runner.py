"""Read an Alembic chain, plan an upgrade, and apply it one revision at a time.

The chain is read in-process with ``alembic.script.ScriptDirectory`` (no database needed), so the
pre-flight can refuse a bad plan before anything is backed up. Migrations themselves run through the
real Alembic CLI in a child process: that is what users run by hand, it keeps the project's ``env.py``
in charge of timeouts and locking, and a crash in a revision cannot take the Ansible module down with
it. The child gets a URL without a password plus a private PGPASSFILE (``pgconn.pgpass_env``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ansible_collections.pgmigrate.pipeline.plugins.module_utils import pgconn
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.checksums import (
    file_sha256,
    schema_fingerprint,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.progress import Progress

BASE = "base"

# How the root cause of a failed Alembic run looks in its output, and what to skip when it is missing.
_EXCEPTION_LINE = re.compile(
    r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Failure|Warning)\w*): (?P<msg>.+)$"
)
_WRAPPED_DBAPI = re.compile(r"^\((?P<type>[\w.]+)\) (?P<msg>.+)$")
_NOISE_PREFIXES = ("[SQL:", "[parameters:", "(Background on this error", "Traceback ", "  File ", "    ")


class MigrationError(Exception):
    """A refusal or failure whose message is one line an operator can act on."""


@dataclass(frozen=True)
class Chain:
    """What the pipeline needs to know about an Alembic project, read once."""

    config_path: str
    location: str
    revisions: list[str]  # base -> head, topologically ordered
    heads: list[str]
    parents: dict[str, list[str]]
    row_count_changes: dict[str, dict[str, str]] = field(default_factory=dict)
    # The "Downgrade: ..." line of each revision's docstring, where it has one (LOSSY or not, and why).
    downgrade_notes: dict[str, str] = field(default_factory=dict)

    def ancestors(self, revision: str | None) -> set[str]:
        """The revision and everything below it (what `alembic upgrade <revision>` leaves applied)."""
        seen: set[str] = set()
        todo = [revision] if revision else []
        while todo:
            rev = todo.pop()
            if rev not in seen:
                seen.add(rev)
                todo.extend(self.parents.get(rev, []))
        return seen


@contextlib.contextmanager
def _in_directory(path: str) -> Iterator[None]:
    """Alembic resolves relative script_location against the cwd; users expect the ini's directory."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def load_chain(config_path: str) -> Chain:
    """Read revisions, heads and `row_count_changes` declarations without touching a database."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config_path = os.path.abspath(config_path)
    if not os.path.isfile(config_path):
        raise MigrationError(f"alembic config {config_path} does not exist")
    try:
        with _in_directory(os.path.dirname(config_path)):
            script = ScriptDirectory.from_config(Config(config_path))
            location = os.path.abspath(script.dir)
            ordered = list(reversed(list(script.walk_revisions("base", "heads"))))
            heads = list(script.get_heads())
    except MigrationError:
        raise
    except Exception as exc:  # a syntax error in a revision, a missing directory, a cycle...
        raise MigrationError(f"cannot read the migration chain of {config_path}: {_one_line(exc)}") from exc
    if not ordered:
        raise MigrationError(f"the chain at {location} has no revisions")
    changes: dict[str, dict[str, str]] = {}
    notes: dict[str, str] = {}
    for sc in ordered:
        declared = getattr(sc.module, "row_count_changes", None)
        if declared:
            changes[sc.revision] = {str(k): str(v) for k, v in dict(declared).items()}
        note = downgrade_note(sc.module.__doc__ or "")
        if note:
            notes[sc.revision] = note
    return Chain(
        config_path=config_path,
        location=location,
        revisions=[sc.revision for sc in ordered],
        heads=heads,
        parents={sc.revision: _down_revisions(sc.down_revision) for sc in ordered},
        row_count_changes=changes,
        downgrade_notes=notes,
    )


def downgrade_note(doc: str) -> str:
    """The docstring's "Downgrade: ..." paragraph as one line (the style guide asks every revision for it)."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip().lower().startswith("downgrade:"):
            paragraph = [line.strip()[len("downgrade:") :].strip()]
            for more in lines[i + 1 :]:
                if not more.strip() or re.match(r"^\s*(Revision ID|Revises|Create Date):", more):
                    break
                paragraph.append(more.strip())
            return " ".join(part for part in paragraph if part)
    return ""


def is_lossy(note: str) -> bool:
    return note.upper().startswith("LOSSY")


def _down_revisions(down: str | tuple | list | None) -> list[str]:
    if down is None:
        return []
    return [down] if isinstance(down, str) else list(down)


def revision_files(config_path: str) -> dict[str, str]:
    """Revision id -> absolute path of its file, for every revision of the chain (read in-process)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config_path = os.path.abspath(config_path)
    with _in_directory(os.path.dirname(config_path)):
        script = ScriptDirectory.from_config(Config(config_path))
        return {sc.revision: os.path.abspath(sc.path) for sc in script.walk_revisions("base", "heads")}


def revision_checksums(config_path: str, revisions: list[str] | None = None) -> dict[str, dict[str, str]]:
    """Revision id -> {file (base name), sha256} for the given revisions (all when None)."""
    files = revision_files(config_path)
    wanted = files if revisions is None else {rev: files[rev] for rev in revisions if rev in files}
    return {
        rev: {"file": os.path.basename(path), "sha256": file_sha256(path)} for rev, path in wanted.items()
    }


# --- Reading the database ------------------------------------------------------------------------------


def read_current_revision(conn, version_table: str = "alembic_version") -> str | None:
    """The database's revision, None when it has never been migrated (no version table, or empty)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", [version_table])
        if not cur.fetchone()[0]:
            return None
        cur.execute(pgconn.sql.SQL("SELECT version_num FROM {}").format(_qualified(version_table)))
        rows = [r[0] for r in cur.fetchall()]
    if len(rows) > 1:
        raise MigrationError(
            f"database has several current revisions ({', '.join(sorted(rows))}): a branched history "
            "is not supported by this pipeline"
        )
    return rows[0] if rows else None


def _qualified(name: str):
    return pgconn.sql.SQL(".").join(pgconn.ident(part) for part in name.split(".", 1))


def server_facts(conn) -> dict:
    """Figures the report wants from the pre-flight: version and size, read once."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int,"
            " pg_database_size(current_database()), pg_size_pretty(pg_database_size(current_database()))"
        )
        version, version_num, size, pretty = cur.fetchone()
    return {
        "server_version": version.split()[0],
        "server_version_num": version_num,
        "database_size_bytes": size,
        "database_size": pretty,
    }


def connect_or_explain(ci: pgconn.ConnInfo):
    """A connection, or a MigrationError carrying pgconn's one-line explanation."""
    try:
        return pgconn.connect(ci)
    except Exception as exc:
        raise MigrationError(pgconn.explain_connect_error(ci, exc)) from exc


# --- Planning ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    current: str | None
    target: str
    pending: list[str]

    @property
    def current_label(self) -> str:
        return self.current or BASE


def resolve_target(chain: Chain, target: str) -> str:
    """'head' -> the single head id; anything else must be a revision id of the chain, spelled fully."""
    if len(chain.heads) != 1:
        raise MigrationError(
            f"the chain at {chain.location} has several heads ({', '.join(sorted(chain.heads))}): "
            "merge them (alembic merge) before migrating"
        )
    if target in ("head", "heads"):
        return chain.heads[0]
    if target not in chain.revisions:
        raise MigrationError(
            f"target revision {target!r} is not in the chain at {chain.location} "
            f"(it has {_span(chain.revisions)})"
        )
    return target


def _span(revisions: list[str]) -> str:
    return f"{len(revisions)} revision(s), {revisions[0]} .. {revisions[-1]}"


def _require_known(chain: Chain, current: str | None) -> None:
    if current is not None and current not in chain.revisions:
        raise MigrationError(
            f"database is at {current}, which the chain at {chain.location} does not contain"
        )


def plan(chain: Chain, current: str | None, target: str) -> Plan:
    """What an upgrade from `current` to `target` applies, in order; refusals are one line each."""
    resolved = resolve_target(chain, target)
    _require_known(chain, current)
    below_current = chain.ancestors(current)
    if current is not None and resolved != current and resolved in below_current:
        raise MigrationError(
            f"target {resolved} is behind the database's current revision {current}: this pipeline "
            "only upgrades (restore a backup or run a reviewed downgrade by hand)"
        )
    below_target = chain.ancestors(resolved)
    if current is not None and current not in below_target:
        raise MigrationError(
            f"target {resolved} does not descend from the database's current revision {current}"
        )
    pending = [rev for rev in chain.revisions if rev in below_target and rev not in below_current]
    return Plan(current=current, target=resolved, pending=pending)


def check_session_settings(conn, settings: dict[str, str]) -> None:
    """Let the server itself parse the migration's session settings (lock_timeout, statement_timeout), in
    a transaction rolled back at once: a bad value is refused before the backup, not after it."""
    for name, value in settings.items():
        if value in (None, ""):
            continue
        with conn.cursor() as cur:
            try:
                cur.execute("SELECT pg_catalog.set_config(%s, %s, true)", (name, str(value)))
            except Exception as exc:
                conn.rollback()
                reason = _one_line(getattr(exc, "pgerror", None) or exc).removeprefix("ERROR:").strip()
                raise MigrationError(f"invalid {name} {str(value)!r}: {reason}") from None
        conn.rollback()


def preflight(
    config_path: str,
    ci: pgconn.ConnInfo,
    target: str = "head",
    version_table: str = "alembic_version",
    session_settings: dict[str, str] | None = None,
) -> dict:
    """Everything the pre-flight checks, read-only: chain, connection, current revision, plan, and the
    session settings the migration will run with."""
    chain = load_chain(config_path)
    conn = connect_or_explain(ci)
    try:
        current = read_current_revision(conn, version_table)
        facts = server_facts(conn)
        check_session_settings(conn, session_settings or {})
    finally:
        conn.close()
    p = plan(chain, current, target)
    return {
        "current_revision": p.current_label,
        "target_revision": p.target,
        "pending": p.pending,
        "chain": chain.revisions,
        "alembic_config": chain.config_path,
        "script_location": chain.location,
        **facts,
    }


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique enough to name a run's backups and reports: UTC timestamp + 6 hex digits."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{os.urandom(3).hex()}"


# --- Running the Alembic CLI ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The `-x` knobs of the project contract; None means "let env.py use its default"."""

    lock_timeout: str | None = None
    statement_timeout: str | None = None
    batch_size: int | None = None
    batch_sleep: str | None = None

    def x_args(self) -> list[str]:
        args: list[str] = []
        for key in ("lock_timeout", "statement_timeout", "batch_size", "batch_sleep"):
            value = getattr(self, key)
            if value not in (None, ""):
                args += ["-x", f"{key}={value}"]
        return args


# Printed by the Alembic child each time a revision enters an autocommit block: from there on, the
# revision's work is committed as it goes, and a failure leaves it half-applied with no version stamp
# (Alembic records a revision only once it completes). The online rescue must know that: a downgrade
# cannot undo what no stamp records.
COMMIT_NOTE = "pipeline: the revision commits work outside its own transaction (autocommit block)"

# The Alembic CLI (alembic.config.main, what `python -m alembic` runs), with MigrationContext's
# autocommit_block announcing itself first. Works with any project's env.py; never used for --sql, whose
# output is the rendered script.
_ANNOUNCING_ALEMBIC = f"""
import contextlib, sys
from alembic.runtime.migration import MigrationContext
_block = MigrationContext.autocommit_block
@contextlib.contextmanager
def _announced(self):
    print({COMMIT_NOTE!r}, flush=True)
    with _block(self) as value:
        yield value
MigrationContext.autocommit_block = _announced
from alembic.config import main
sys.exit(main(argv=sys.argv[1:], prog="alembic"))
"""


def alembic_argv(
    config_path: str, options: Options, *args: str, python: str | None = None, announce_commits: bool = False
) -> list[str]:
    run = ["-c", _ANNOUNCING_ALEMBIC] if announce_commits else ["-m", "alembic"]
    return [python or sys.executable, *run, "-c", config_path, *options.x_args(), *args]


def alembic_url(ci: pgconn.ConnInfo) -> str:
    """The URL without password for the Alembic child (see pgconn.ConnInfo.sqlalchemy_url)."""
    try:
        return ci.sqlalchemy_url()
    except ValueError as exc:
        raise MigrationError(str(exc)) from None


def _child_env(ci: pgconn.ConnInfo, base: dict) -> dict:
    env = {k: v for k, v in base.items() if not k.startswith("MIGRATION_")}
    env["DATABASE_URL"] = alembic_url(ci)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _one_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def root_error(output: list[str]) -> str:
    """The line that says why Alembic failed: the last exception line, unwrapped from SQLAlchemy's."""
    for raw in reversed(output):
        line = raw.strip()
        if line.startswith("FAILED:"):
            return line[len("FAILED:") :].strip()
        m = _EXCEPTION_LINE.match(line)
        if m:
            wrapped = _WRAPPED_DBAPI.match(m.group("msg"))
            if wrapped and m.group("type").startswith("sqlalchemy."):
                return f"{wrapped.group('type')}: {wrapped.group('msg')}"
            return f"{m.group('type')}: {m.group('msg')}"
    for raw in reversed(output):
        if raw.strip() and not raw.startswith(_NOISE_PREFIXES) and "INFO  [" not in raw:
            return raw.strip()
    return "alembic exited with an error and printed nothing"


def _run_streaming(argv: list[str], cwd: str, env: dict, on_line) -> tuple[int, list[str]]:
    """Run a child, handing each output line to on_line as it comes; keep the tail for errors."""
    tail: collections.deque[str] = collections.deque(maxlen=400)
    with subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        if proc.stdout is None:  # stdout=PIPE was asked for
            raise MigrationError(f"cannot read the output of {argv[0]}")
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            on_line(line)
        rc = proc.wait()
    return rc, list(tail)


def merged_row_count_changes(chain: Chain, revisions: list[str]) -> dict[str, str]:
    """Tables whose row count may shrink, from every revision that ran, reasons joined."""
    merged: dict[str, str] = {}
    for rev in revisions:
        for table, reason in chain.row_count_changes.get(rev, {}).items():
            merged[table] = f"{merged[table]}; {rev}: {reason}" if table in merged else f"{rev}: {reason}"
    return merged


def render_sql(
    chain: Chain, ci: pgconn.ConnInfo, p: Plan, options: Options, python: str | None = None
) -> tuple[str, list[dict]]:
    """Offline SQL for each pending revision (`alembic upgrade prev:rev --sql`): nothing is written.

    One call per revision, so a revision that cannot be rendered offline (a data loop that needs a
    live connection) is named and the others still show their SQL.
    """
    parts: list[dict] = []
    previous = p.current
    with pgconn.pgpass_env(ci) as base_env:
        env = _child_env(ci, base_env)
        for rev in p.pending:
            span = f"{previous}:{rev}" if previous else rev
            proc = subprocess.run(  # the return code is read below: a revision may not render offline
                alembic_argv(chain.config_path, options, "upgrade", span, "--sql", python=python),
                check=False,
                cwd=os.path.dirname(chain.config_path),
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if proc.returncode == 0:
                parts.append({"revision": rev, "sql": proc.stdout, "error": None})
            else:
                error = root_error((proc.stdout + proc.stderr).splitlines())
                parts.append({"revision": rev, "sql": "", "error": error})
            previous = rev
    text = "\n".join(
        part["sql"]
        if part["error"] is None
        else f"-- {part['revision']}: cannot render offline: {part['error']}"
        for part in parts
    )
    return text, parts


def upgrade(
    config_path: str,
    ci: pgconn.ConnInfo,
    target: str = "head",
    options: Options | None = None,
    progress_file: str | None = None,
    check_mode: bool = False,
    version_table: str = "alembic_version",
    python: str | None = None,
    lock_retries: int = 0,
    lock_retry_delay: float = 10.0,
) -> dict:
    """Apply pending revisions one at a time; the result says what ran, how long, and where it stopped.

    Returns a dict with `failed` and `msg` rather than raising for a failed revision, because the
    caller (and the rescue that restores the backup) needs the partial progress as data.

    A revision that gives up waiting for a lock (after env.py's own per-statement retries) is run again
    up to `lock_retries` times, `lock_retry_delay` seconds later, doubling: a long transaction that ends
    a minute later should not cost a restore. Each retry is listed in the result's `retries`.
    """
    options = options or Options()
    progress = Progress(progress_file, error=MigrationError)
    chain = load_chain(config_path)
    conn = connect_or_explain(ci)
    try:
        current = read_current_revision(conn, version_table)
        # What the schema looked like before anything ran: an online rescue's downgrade must get back here.
        schema_before = (
            "" if check_mode else _schema_fingerprint(conn, options.lock_timeout or "5s", progress)
        )
    finally:
        conn.close()
    p = plan(chain, current, target)
    result: dict = {
        "schema_fingerprint_before": schema_before,
        "changed": False,
        "failed": False,
        "revision_before": p.current_label,
        "revision_after": p.current_label,
        "target_revision": p.target,
        "pending": p.pending,
        "applied": [],
        "row_count_changes": {},
        "sql": "",
        "alembic_config": chain.config_path,
        "retries": [],
    }
    if not p.pending:
        progress.line(f"database already at {p.target}: nothing to apply")
        result["msg"] = f"{p.current_label} -> {p.target}; already at the target, nothing applied"
        return result
    if check_mode:
        progress.line(f"check mode: rendering SQL for {', '.join(p.pending)}")
        result["sql"], result["sql_by_revision"] = render_sql(chain, ci, p, options, python)
        result["changed"] = True
        result["row_count_changes"] = merged_row_count_changes(chain, p.pending)
        result["msg"] = f"would apply {', '.join(p.pending)} ({p.current_label} -> {p.target})"
        return result

    total = len(p.pending)
    progress.line(f"upgrading {p.current_label} -> {p.target}: {total} revision(s): {', '.join(p.pending)}")
    with pgconn.pgpass_env(ci) as base_env:
        env = _child_env(ci, base_env)
        for n, rev in enumerate(p.pending, start=1):
            progress.line(f"[{n}/{total}] {rev}: starting")
            started = time.monotonic()
            delay = lock_retry_delay
            committed: list[bool] = []
            for attempt in range(1, lock_retries + 2):
                committed.clear()
                rc, tail = _run_streaming(
                    alembic_argv(
                        chain.config_path, options, "upgrade", rev, python=python, announce_commits=True
                    ),
                    cwd=os.path.dirname(chain.config_path),
                    env=env,
                    on_line=lambda line, rev=rev, seen=committed: _on_upgrade_line(line, rev, progress, seen),
                )
                error = root_error(tail) if rc != 0 else ""
                if rc == 0 or attempt > lock_retries or not _retryable(error, ci, version_table, result):
                    break
                retry = {"revision": rev, "attempt": attempt, "delay": delay, "error": error}
                result["retries"].append(retry)
                progress.line(f"[{rev}] lock timeout, retry {attempt}/{lock_retries} in {delay:g}s: {error}")
                time.sleep(delay)
                delay *= 2
            seconds = round(time.monotonic() - started, 3)
            if rc != 0:
                result["failed_revision_committed"] = bool(committed)
                return _failed(result, chain, ci, rev, seconds, error, version_table, progress)
            result["applied"].append({"revision": rev, "seconds": seconds})
            result["revision_after"] = rev
            result["changed"] = True
            progress.line(f"[{n}/{total}] {rev}: done in {seconds:.2f}s")
    result["row_count_changes"] = merged_row_count_changes(chain, [a["revision"] for a in result["applied"]])
    steps = ", ".join(f"{a['revision']} in {a['seconds']:.2f}s" for a in result["applied"])
    result["msg"] = f"{p.current_label} -> {p.target}; applied {steps}"
    progress.line(f"finished: database at {p.target}")
    return result


def _on_upgrade_line(line: str, rev: str, progress: Progress, committed: list[bool]) -> None:
    if line.strip() == COMMIT_NOTE:
        committed.append(True)
    progress.line(f"[{rev}] {line}")


def _schema_fingerprint(conn, lock_timeout: str = "10s", progress: Progress | None = None) -> str:
    """The schema fingerprint, or "" when a lock held by another session keeps it from being read within
    ``lock_timeout`` (the upgrade goes on under its own lock_timeout; an online rescue without it restores).
    """
    try:
        return schema_fingerprint(conn, lock_timeout)
    except Exception as exc:
        if not is_lock_timeout(f"{type(exc).__name__} {exc}"):
            raise
        conn.rollback()
        if progress is not None:
            progress.line(f"schema fingerprint not taken: a lock was held past {lock_timeout}")
        return ""


def is_lock_timeout(error: str) -> bool:
    return "lock timeout" in error or "LockNotAvailable" in error


def _retryable(error: str, ci: pgconn.ConnInfo, version_table: str, result: dict) -> bool:
    """A lock timeout, and the revision's work rolled back: the database is still where it was."""
    if not is_lock_timeout(error):
        return False
    try:
        return _revision_now(ci, version_table) == result["revision_after"]
    except Exception:
        return False


def _revision_now(ci: pgconn.ConnInfo, version_table: str) -> str:
    """The database's revision read on a fresh connection (after a child process failed or was killed)."""
    conn = pgconn.connect(ci)
    try:
        return read_current_revision(conn, version_table) or BASE
    finally:
        conn.close()


def _revision_or_unknown(ci: pgconn.ConnInfo, version_table: str) -> str:
    """Where a failed run left the database, for its message: the revision, or why it cannot be read."""
    try:
        return _revision_now(ci, version_table)
    except Exception as exc:
        return f"unknown ({_one_line(exc)})"


def _failed(
    result: dict,
    chain: Chain,
    ci: pgconn.ConnInfo,
    rev: str,
    seconds: float,
    error: str,
    version_table: str,
    progress: Progress,
) -> dict:
    """Fill in the failure: which revision, the root error, what ran before it, where the db is now."""
    now = _revision_or_unknown(ci, version_table)
    applied = [a["revision"] for a in result["applied"]]
    result.update(
        failed=True,
        failed_revision=rev,
        failed_after_seconds=seconds,
        error=error,
        revision_after=now,
        row_count_changes=merged_row_count_changes(chain, applied),
    )
    before = ", ".join(applied) if applied else "none"
    result["msg"] = (
        f"revision {rev} failed after {seconds:.1f}s: {error} "
        f"(applied before it: {before}; database is now at {now})"
    )
    progress.line(f"FAILED: {result['msg']}")
    return result


def exit_module(module, run, prefix: str = "") -> None:
    """Run ``run()`` (pre-flight, upgrade or downgrade) for an Ansible module and end it, timed: a refusal
    (MigrationError) or a failed run fails the task with one line (after ``prefix``) and, for a failed run,
    the result as data, so the rescue sees how far it got."""
    started = time.monotonic()
    try:
        result = run()
    except MigrationError as exc:
        module.fail_json(msg=prefix + str(exc))
    result["duration_seconds"] = round(time.monotonic() - started, 3)
    if result.pop("failed"):
        module.fail_json(**{**result, "msg": prefix + result["msg"]})
    module.exit_json(**result)


# --- The online rescue: downgrade to where the run started --------------------------------------------


def downgrade(
    config_path: str,
    ci: pgconn.ConnInfo,
    target: str,
    expected_schema: str = "",
    options: Options | None = None,
    progress_file: str | None = None,
    version_table: str = "alembic_version",
    python: str | None = None,
) -> dict:
    """Undo the revisions applied above ``target`` one at a time, newest first, then prove the schema is
    the one the run started from (``expected_schema``, a schema fingerprint taken before the upgrade).

    Alembic only records a revision that completed, so a revision that failed half-way is invisible to a
    downgrade: whatever it committed stays, and the schema check is what catches it (the caller restores
    the backup then). Returns a dict with ``failed`` and ``msg`` rather than raising, like upgrade().
    """
    options = options or Options()
    progress = Progress(progress_file, error=MigrationError)
    chain = load_chain(config_path)
    goal = None if target == BASE else target
    if goal is not None and goal not in chain.revisions:
        raise MigrationError(f"downgrade target {target!r} is not in the chain at {chain.location}")
    conn = connect_or_explain(ci)
    try:
        current = read_current_revision(conn, version_table)
    finally:
        conn.close()
    _require_known(chain, current)
    above = chain.ancestors(current) - chain.ancestors(goal)
    if goal is not None and goal not in chain.ancestors(current):
        raise MigrationError(
            f"database is at {current or BASE}, which is not above {target}: nothing to downgrade from"
        )
    undo = [rev for rev in reversed(chain.revisions) if rev in above]
    result: dict = {
        "changed": False,
        "failed": False,
        "revision_before": current or BASE,
        "revision_after": current or BASE,
        "target_revision": target,
        "downgraded": [],
        "lossy": [],
        "schema_matches": None,
        "alembic_config": chain.config_path,
    }
    progress.line(
        f"downgrading {current or BASE} -> {target}: {', '.join(undo)}" if undo else f"already at {target}"
    )
    with pgconn.pgpass_env(ci) as base_env:
        env = _child_env(ci, base_env)
        for rev in undo:
            parents = chain.parents.get(rev, [])
            if len(parents) > 1:
                return _downgrade_failed(
                    result,
                    ci,
                    version_table,
                    progress,
                    f"{rev} is a merge revision: not downgraded automatically",
                )
            down = parents[0] if parents else BASE
            started = time.monotonic()
            rc, tail = _run_streaming(
                alembic_argv(chain.config_path, options, "downgrade", down, python=python),
                cwd=os.path.dirname(chain.config_path),
                env=env,
                on_line=lambda line, rev=rev: progress.line(f"[downgrade {rev}] {line}"),
            )
            if rc != 0:
                return _downgrade_failed(
                    result, ci, version_table, progress, f"the downgrade of {rev} failed: {root_error(tail)}"
                )
            note = chain.downgrade_notes.get(rev, "")
            seconds = round(time.monotonic() - started, 3)
            result["downgraded"].append({"revision": rev, "seconds": seconds, "note": note})
            if is_lossy(note):
                result["lossy"].append({"revision": rev, "note": note})
            result["revision_after"] = down
            result["changed"] = True
            progress.line(f"[downgrade {rev}] done in {seconds:.2f}s")
    conn = connect_or_explain(ci)
    try:
        now = read_current_revision(conn, version_table) or BASE
        schema_after = _schema_fingerprint(conn)
    finally:
        conn.close()
    result["revision_after"] = now
    result["schema_fingerprint_after"] = schema_after
    if now != target:
        return _downgrade_failed(
            result, ci, version_table, progress, f"the database is at {now}, not {target}"
        )
    if expected_schema and not schema_after:
        return _downgrade_failed(
            result, ci, version_table, progress, f"the schema at {target} could not be read (a lock was held)"
        )
    if expected_schema:
        result["schema_matches"] = schema_after == expected_schema
        if not result["schema_matches"]:
            return _downgrade_failed(
                result,
                ci,
                version_table,
                progress,
                f"the schema at {target} is not the one the run started from (fingerprint "
                f"{schema_after[:12]}, expected {expected_schema[:12]}): something the failed run did "
                "is not undone by the downgrades",
            )
    undone = ", ".join(r["revision"] for r in result["downgraded"])
    result["msg"] = (
        f"downgraded {undone} ({result['revision_before']} -> {now})"
        if undo
        else f"nothing to downgrade: the database is still at {now}"
    ) + (", schema as it was before the run" if expected_schema else "")
    progress.line(result["msg"])
    return result


def _downgrade_failed(
    result: dict, ci: pgconn.ConnInfo, version_table: str, progress: Progress, why: str
) -> dict:
    result["revision_after"] = _revision_or_unknown(ci, version_table)
    result["failed"] = True
    result["msg"] = f"{why} (database is now at {result['revision_after']})"
    progress.line(f"DOWNGRADE FAILED: {result['msg']}")
    return result
