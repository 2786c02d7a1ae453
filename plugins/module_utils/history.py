"""Deployment history in each target database, and the promotion gate that reads staging's.

Every pipeline run writes one row to ``pipeline_history.runs`` of the database it migrates: a row in state
``running`` right after the pre-flight, and the outcome when the run ends. The history lives in the target
database (not on the runner) because that is the one place that travels with the data: a restore brings
the rows of the backup back, a new runner sees what the old one did, and production can read staging's.

The schema belongs to the migration role and is never part of the Alembic chain (env.py compares only the
default schema, so `alembic check` does not see it). PUBLIC, and so the application role, gets nothing.

A row left ``running`` means a run died without finishing (runner killed, network cut): nobody knows what
state it left, so every later run refuses until an operator looks and marks it resolved with a reason.
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass, field

from ansible_collections.pgmigrate.pipeline.plugins.module_utils.checksums import HISTORY_SCHEMA
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.report import OUTCOMES

try:
    from psycopg2.extras import Json
except ImportError:  # pragma: no cover - the module reports missing psycopg2 itself
    Json = None

RUNNING = "running"

_OUTCOME_LIST = ", ".join(f"'{o}'" for o in (RUNNING, *OUTCOMES))

DDL = f"""
CREATE SCHEMA IF NOT EXISTS {HISTORY_SCHEMA};
REVOKE ALL ON SCHEMA {HISTORY_SCHEMA} FROM PUBLIC;
CREATE TABLE IF NOT EXISTS {HISTORY_SCHEMA}.runs (
    run_id text PRIMARY KEY,
    environment text NOT NULL,
    database_name text NOT NULL,
    inventory_host text NOT NULL,
    run_by text NOT NULL,
    run_from text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome text NOT NULL CHECK (outcome IN ({_OUTCOME_LIST})),
    revision_from text,
    revision_to text,
    target_revision text,
    applied jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    backup_archive text,
    backup_manifest text,
    manifest_sha256 text,
    schema_fingerprint text,
    drift text,
    promotion_override text,
    gate jsonb,
    error text,
    resolution text,
    resolved_at timestamptz,
    resolved_by text
);
REVOKE ALL ON TABLE {HISTORY_SCHEMA}.runs FROM PUBLIC;
"""

TABLE = f"{HISTORY_SCHEMA}.runs"


class HistoryError(Exception):
    """A refusal whose message is one line an operator can act on."""


def who() -> tuple[str, str]:
    """The OS user and host name of the runner, for the run_by/run_from columns."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in a container: still record something honest
        user = "unknown"
    return user, socket.gethostname()


def table_exists(conn) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", [TABLE])
        return bool(cur.fetchone()[0])


def ensure_schema(conn) -> None:
    """Create the schema and table on first use (idempotent; the caller commits).

    A table made by an older version of the pipeline has an outcome CHECK without the newer outcomes
    (failed-and-downgraded): it is widened here, so recording the new outcome cannot fail a run.
    """
    with conn.cursor() as cur:
        cur.execute(DDL)
        cur.execute(
            "SELECT pg_catalog.pg_get_constraintdef(oid) FROM pg_catalog.pg_constraint"
            " WHERE conrelid = %s::regclass AND conname = 'runs_outcome_check'",
            [TABLE],
        )
        row = cur.fetchone()
        if row is None or any(f"'{outcome}'" not in row[0] for outcome in (RUNNING, *OUTCOMES)):
            cur.execute(
                f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS runs_outcome_check,"
                f" ADD CONSTRAINT runs_outcome_check CHECK (outcome IN ({_OUTCOME_LIST}))"
            )


def _short(sha: str) -> str:
    return sha[:12]


# --- Recorded checksums (what was applied, as recorded) -------------------------------------------------


def recorded_checksums(conn, outcomes: tuple[str, ...] = ("succeeded",)) -> dict[str, dict]:
    """Revision -> {file, sha256, run_id} from the runs that applied it; the newest run wins."""
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT run_id, applied FROM {TABLE} WHERE outcome = ANY(%s) ORDER BY started_at, run_id",
            [list(outcomes)],
        )
        merged: dict[str, dict] = {}
        for run_id, applied in cur.fetchall():
            for rev, entry in (applied or {}).items():
                merged[rev] = {**entry, "run_id": run_id}
    return merged


def checksum_problems(recorded: dict[str, dict], on_disk: dict[str, dict], revisions: set[str]) -> list[str]:
    """Flyway-style validate: every applied revision's file must still be the one that was applied."""
    problems = []
    for rev in sorted(revisions & set(recorded)):
        was = recorded[rev]
        now = on_disk.get(rev)
        if now is None:
            problems.append(
                f"revision {rev} ({was.get('file')}) was applied by run {was['run_id']} "
                "but is no longer in the chain"
            )
        elif now["sha256"] != was.get("sha256"):
            problems.append(
                f"{now['file']} (revision {rev}) changed after run {was['run_id']} applied it "
                f"(applied sha256 {_short(was.get('sha256', ''))}, file now {_short(now['sha256'])}): "
                "restore the applied file and put the change in a new revision"
            )
    return problems


# --- Start of a run ------------------------------------------------------------------------------------


@dataclass
class Start:
    """What a run's start needs to know; filled from the module's parameters."""

    run_id: str
    environment: str
    database: str
    inventory_host: str
    current_revision: str
    target_revision: str
    applied_revisions: set[str]  # the current revision and its ancestors
    on_disk: dict[str, dict]  # revision -> {file, sha256}, the whole chain on disk
    resolve_run: str = ""
    resolve_reason: str = ""
    accept_drift: str = ""
    refuse_drift: bool = False
    check_mode: bool = False
    warnings: list[str] = field(default_factory=list)


def _unresolved(cur, own_run: str) -> list[tuple]:
    cur.execute(
        f"SELECT run_id, started_at, run_by, run_from FROM {TABLE}"
        " WHERE outcome = %s AND resolution IS NULL AND run_id <> %s ORDER BY started_at",
        [RUNNING, own_run],
    )
    return cur.fetchall()


def _resolve(cur, run_id: str, reason: str, by: str) -> None:
    if not reason.strip():
        raise HistoryError(f"resolving run {run_id} needs a reason: -e db_preflight_resolve_reason='<why>'")
    cur.execute(
        f"UPDATE {TABLE} SET resolution = %s, resolved_at = now(), resolved_by = %s"
        " WHERE run_id = %s AND outcome = %s AND resolution IS NULL",
        [reason, by, run_id, RUNNING],
    )
    if cur.rowcount != 1:
        raise HistoryError(f"there is no unresolved running run {run_id!r} in {TABLE} to resolve")


def _blocked_message(rows: list[tuple]) -> str:
    first = rows[0]
    others = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
    return (
        f"run {first[0]} started {first[1]:%Y-%m-%d %H:%M:%S%z} by {first[2]}@{first[3]} "
        f"never finished{others}: "
        "check the database (revision, data, the run's report and backup), then mark it resolved with "
        f"-e db_preflight_resolve_run={first[0]} -e db_preflight_resolve_reason='<what you found>'"
    )


def _last_fingerprint(cur, revision: str) -> tuple[str, str] | None:
    cur.execute(
        f"SELECT run_id, schema_fingerprint FROM {TABLE}"
        " WHERE schema_fingerprint IS NOT NULL AND revision_to = %s ORDER BY finished_at DESC LIMIT 1",
        [revision],
    )
    row = cur.fetchone()
    return (row[0], row[1]) if row else None


def drift_message(start: Start, last: tuple[str, str] | None, current: str) -> str:
    """Empty when the schema is what the last successful run at this revision left."""
    if last is None or last[1] == current:
        return ""
    return (
        f"the schema of {start.database} drifted since run {last[0]} left it at revision "
        f"{start.current_revision} (schema fingerprint {_short(last[1])}, now {_short(current)})"
    )


def start_run(conn, start: Start, fingerprint: str) -> dict:
    """Refuse a run that must not start; otherwise record it as running. Returns the facts to hand on.

    Order: resolve what the operator marked, refuse while an earlier run is unresolved, record this run,
    then validate applied checksums and drift. A refusal still leaves this run's row, as refused.
    """
    user, host = who()
    facts: dict = {"recorded": False, "resolved": "", "drift": "", "checksum_problems": []}
    if not table_exists(conn):
        if start.check_mode:
            return facts
        ensure_schema(conn)
    problems: list[str] = []
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            # One start at a time per database: two runners must not both see "nothing running".
            cur.execute(f"LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE")
            if start.resolve_run:
                _resolve(cur, start.resolve_run, start.resolve_reason, f"{user}@{host}")
                facts["resolved"] = start.resolve_run
            blocked = _unresolved(cur, start.run_id)
            if blocked:
                problems.append(_blocked_message(blocked))
            last = _last_fingerprint(cur, start.current_revision)
            facts["drift"] = drift_message(start, last, fingerprint)
            recorded_drift = facts["drift"]
            if recorded_drift and start.accept_drift.strip():
                recorded_drift += f" (accepted: {start.accept_drift.strip()})"
            if not start.check_mode:
                cur.execute(
                    f"INSERT INTO {TABLE} (run_id, environment, database_name, inventory_host, run_by,"
                    " run_from, outcome, revision_from, target_revision, drift)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        start.run_id,
                        start.environment,
                        start.database,
                        start.inventory_host,
                        user,
                        host,
                        RUNNING,
                        start.current_revision,
                        start.target_revision,
                        recorded_drift or None,
                    ],
                )
                facts["recorded"] = True
        if start.check_mode:
            conn.rollback()
        else:
            conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = True

    facts["checksum_problems"] = checksum_problems(
        recorded_checksums(conn), start.on_disk, start.applied_revisions
    )
    problems += facts["checksum_problems"]
    if facts["drift"]:
        if start.refuse_drift and not start.accept_drift.strip():
            problems.append(
                f"{facts['drift']}: {start.environment} refuses a drifted schema; reconcile it, "
                "or accept it with -e db_preflight_accept_drift='<why>'"
            )
        else:
            start.warnings.append(facts["drift"])
    if problems:
        message = "; ".join(problems)
        if facts["recorded"]:
            with conn.cursor() as cur:
                cur.execute(
                    f"UPDATE {TABLE} SET outcome = 'refused', error = %s, finished_at = now()"
                    " WHERE run_id = %s",
                    [message, start.run_id],
                )
        raise HistoryError(message)
    return facts


# --- End of a run --------------------------------------------------------------------------------------


def finish_run(conn, row: dict) -> None:
    """Record how the run ended; an upsert, because a restore may have brought back an older copy of the
    row (the backup was taken after the start) or none at all."""
    user, host = who()
    if not table_exists(conn):
        ensure_schema(conn)
    values = {
        "run_by": user,
        "run_from": host,
        "applied": Json(row.get("applied") or {}),
        "gate": Json(row["gate"]) if row.get("gate") else None,
        **{k: row.get(k) for k in FINISH_COLUMNS if k not in ("applied", "gate")},
    }
    columns = ["run_id", *values]
    updates = ", ".join(
        f"{c} = EXCLUDED.{c}" for c in values if c not in ("run_by", "run_from", "started_at")
    )
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {TABLE} ({', '.join(columns)}, finished_at) VALUES "
            f"({', '.join(['%s'] * len(columns))}, now()) "
            f"ON CONFLICT (run_id) DO UPDATE SET {updates}, finished_at = now()",
            [row["run_id"], *values.values()],
        )


FINISH_COLUMNS = (
    "environment",
    "database_name",
    "inventory_host",
    "outcome",
    "revision_from",
    "revision_to",
    "target_revision",
    "applied",
    "backup_archive",
    "backup_manifest",
    "manifest_sha256",
    "schema_fingerprint",
    "promotion_override",
    "gate",
    "error",
)


# --- The promotion gate --------------------------------------------------------------------------------


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}min"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}"


def gate_problems(
    staging_conn, target: str, pending: list[str], on_disk: dict[str, dict], soak_seconds: int
) -> tuple[list[str], dict]:
    """Why production must not take `pending` (to `target`) yet, judged by staging's history.

    Staging must have a succeeded run to the same target, at least `soak_seconds` ago, and must have
    applied every pending revision from a file with the same sha256 as the one on disk now.
    """
    facts: dict = {"staging_run_id": None, "staging_finished_at": None}
    if not pending:
        return [], facts
    if not table_exists(staging_conn):
        return [f"staging has no deployment history ({TABLE} is missing): release to staging first"], facts
    problems: list[str] = []
    with staging_conn.cursor() as cur:
        cur.execute(
            f"SELECT run_id, finished_at, extract(epoch FROM now() - finished_at) FROM {TABLE}"
            " WHERE outcome = 'succeeded' AND revision_to = %s ORDER BY finished_at LIMIT 1",
            [target],
        )
        reached = cur.fetchone()
        cur.execute(
            f"SELECT revision_to FROM {TABLE} WHERE outcome = 'succeeded' ORDER BY finished_at DESC LIMIT 1"
        )
        latest = cur.fetchone()
    if reached is None:
        where = f"its last succeeded run reached {latest[0]}" if latest else "it has no succeeded run"
        problems.append(f"staging has no succeeded run to {target} ({where})")
    else:
        facts.update(staging_run_id=reached[0], staging_finished_at=reached[1].isoformat())
        if float(reached[2]) < soak_seconds:
            problems.append(
                f"staging reached {target} in run {reached[0]} only {_age(float(reached[2]))} ago; "
                f"the soak time is {_age(soak_seconds)}"
            )
    staged = recorded_checksums(staging_conn)
    for rev in pending:
        here = on_disk.get(rev, {})
        there = staged.get(rev)
        if there is None:
            problems.append(f"revision {rev} ({here.get('file', '?')}) was never applied on staging")
        elif there.get("sha256") != here.get("sha256"):
            problems.append(
                f"{here.get('file', rev)} differs from the file staging applied in run {there['run_id']} "
                f"(staging sha256 {_short(there.get('sha256', ''))}, here {_short(here.get('sha256', ''))})"
            )
    return problems, facts
