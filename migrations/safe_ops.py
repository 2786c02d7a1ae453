"""Safe schema-change patterns for a large, live PostgreSQL database, shared by every revision.

Each helper exists because the obvious one-liner hurts a live table:

- a single ``UPDATE`` over millions of rows holds every row lock until it ends, so backfills run in
  key-range batches with a commit per batch (:func:`backfill_in_batches`, :func:`run_in_batches`) and
  only touch rows still pending, which also makes them resumable after an interruption;
- ``CREATE INDEX`` blocks writes for the whole build, so indexes are built ``CONCURRENTLY`` outside a
  transaction, and the INVALID leftover of a failed build is dropped before a retry
  (:func:`create_index_concurrently`, :func:`drop_index_concurrently`);
- ``SET NOT NULL`` scans the table under ACCESS EXCLUSIVE, so it goes through a validated
  ``CHECK (col IS NOT NULL)`` that lets PostgreSQL skip the scan (:func:`set_not_null`);
- DDL waiting for a lock queues every later query behind it, so every statement runs under the session's
  ``lock_timeout`` and is retried with backoff when it gives up (:func:`execute`).

In offline (``--sql``) mode nothing touches a database: batched loops render as one set-based statement
with a comment saying that online mode batches, and catalog checks are replaced by ``IF [NOT] EXISTS``
where PostgreSQL has it.

Identifiers and SQL fragments passed here come from the revisions' source code, never from user input.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError
from sqlalchemy.exc import DBAPIError

log = logging.getLogger("migrations.safe_ops")

LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout
LOCK_RETRIES = 5
FIRST_BACKOFF_SECONDS = 0.5
# Index builds and constraint validations legitimately scan the whole table: they get this instead of the
# per-statement limit, inside their autocommit block only.
LONG_STATEMENT_TIMEOUT = "4h"

ADVISORY_LOCK_NAME = "alembic-migrate"
SETTINGS_KEY = "migration_settings"

_DURATION = re.compile(r"^\d+\s*(us|ms|s|min|h|d)?$")


def advisory_lock_key(name: str = ADVISORY_LOCK_NAME) -> int:
    """A fixed bigint for pg_try_advisory_lock, derived from a name so every tool computes the same one."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@dataclass(frozen=True)
class Settings:
    """The run's tuning knobs (docs/DESIGN.md), resolved once by env.py."""

    lock_timeout: str = "5s"
    statement_timeout: str = "15min"
    batch_size: int = 10000
    batch_sleep: float = 0.0


# -x name -> (environment fallback, default)
OPTIONS: dict[str, tuple[str, str]] = {
    "lock_timeout": ("MIGRATION_LOCK_TIMEOUT", "5s"),
    "statement_timeout": ("MIGRATION_STATEMENT_TIMEOUT", "15min"),
    "batch_size": ("MIGRATION_BATCH_SIZE", "10000"),
    "batch_sleep": ("MIGRATION_BATCH_SLEEP", "0"),
}


def parse_settings(xargs: Mapping[str, str], environ: Mapping[str, str]) -> Settings:
    """Resolve each knob from -x, else its environment variable, else the default; refuse bad values.

    Values are validated here (not by PostgreSQL) so a typo fails before anything connects, with a message
    naming the option, and so the durations are safe to render into offline SQL.
    """
    raw: dict[str, str] = {}
    for name, (env_name, default) in OPTIONS.items():
        source = f"-x {name}" if name in xargs else env_name if env_name in environ else None
        value = xargs.get(name, environ.get(env_name, default)).strip()
        raw[name] = value
        if name.endswith("_timeout") and not _DURATION.match(value):
            raise CommandError(
                f"invalid {source or name} value {value!r}: expected a PostgreSQL duration such as "
                "500ms, 5s, 15min, 1h (0 disables)"
            )
        if name == "batch_size" and not (value.isdigit() and int(value) > 0):
            raise CommandError(f"invalid {source or name} value {value!r}: expected a positive integer")
        if name == "batch_sleep":
            try:
                ok = float(value) >= 0
            except ValueError:
                ok = False
            if not ok:
                raise CommandError(
                    f"invalid {source or name} value {value!r}: expected seconds >= 0 (e.g. 0.5)"
                )
    return Settings(
        lock_timeout=raw["lock_timeout"],
        statement_timeout=raw["statement_timeout"],
        batch_size=int(raw["batch_size"]),
        batch_sleep=float(raw["batch_sleep"]),
    )


def squawk_ignore(rules: str, reason: str) -> str:
    """A squawk per-statement ignore line (it covers the line that follows), with the reason beside it."""
    return f"-- squawk-ignore {rules} -- {reason}\n"


# Statements made re-runnable by the catalog checks below, which offline SQL cannot show.
RERUNNABLE = squawk_ignore("prefer-robust-stmts", "online mode checks the catalog before running it")


def settings() -> Settings:
    """The settings env.py resolved for this run (defaults when a revision is imported elsewhere)."""
    return context.config.attributes.get(SETTINGS_KEY) or Settings()


def offline() -> bool:
    return context.is_offline_mode()


def _in_autocommit(conn: sa.Connection) -> bool:
    return bool(conn.connection.driver_connection.autocommit)


def _is_lock_timeout(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "pgcode", None) == LOCK_NOT_AVAILABLE


def execute(statement: str, params: Mapping[str, object] | None = None) -> int:
    """Run one statement, retrying with backoff when it gives up waiting for a lock; return its rowcount.

    Inside the migration's transaction each attempt runs under a savepoint, so a lock timeout does not
    abort the whole revision; in an autocommit block the statement is its own transaction anyway.
    """
    if offline():
        op.execute(sa.text(statement).bindparams(**(params or {})))
        return 0
    conn = op.get_bind()
    delay = FIRST_BACKOFF_SECONDS
    for attempt in range(1, LOCK_RETRIES + 1):
        try:
            if _in_autocommit(conn):
                return conn.execute(sa.text(statement), params or {}).rowcount
            with conn.begin_nested():
                return conn.execute(sa.text(statement), params or {}).rowcount
        except DBAPIError as exc:
            if not _is_lock_timeout(exc) or attempt == LOCK_RETRIES:
                raise
            log.warning(
                "lock_timeout (%s) on attempt %d/%d, retrying in %.1fs: %s",
                settings().lock_timeout,
                attempt,
                LOCK_RETRIES,
                delay,
                statement.split("\n")[0][:120],
            )
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def scalar(query: str, params: Mapping[str, object] | None = None) -> object:
    """One value from a read-only catalog or data query (online mode only)."""
    return op.get_bind().execute(sa.text(query), params or {}).scalar()


# --- catalog checks (online mode) ----------------------------------------------------------------------


def table_exists(table: str) -> bool:
    return scalar("SELECT to_regclass(:t) IS NOT NULL", {"t": table}) is True


def constraint_state(table: str, name: str) -> bool | None:
    """None when the constraint does not exist, else whether it is validated."""
    return scalar(  # type: ignore[return-value]
        "SELECT convalidated FROM pg_constraint WHERE conrelid = to_regclass(:t) AND conname = :n",
        {"t": table, "n": name},
    )


def index_state(name: str) -> bool | None:
    """None when the index does not exist, else whether it is valid (a failed CONCURRENTLY build is not)."""
    return scalar(  # type: ignore[return-value]
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(:n)", {"n": name}
    )


def column_not_null(table: str, column: str) -> bool:
    return (
        scalar(
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attname = :c",
            {"t": table, "c": column},
        )
        is True
    )


# --- timeouts ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def long_statement_timeout() -> Iterator[None]:
    """Raise statement_timeout for one whole-table operation, then put the run's limit back."""
    op.execute(f"SET statement_timeout = '{LONG_STATEMENT_TIMEOUT}'")
    try:
        yield
    finally:
        op.execute(f"SET statement_timeout = '{settings().statement_timeout}'")


# --- batched data changes ------------------------------------------------------------------------------


def run_in_batches(
    statement: str, *, key_range_sql: str, verb: str, offline_sql: str
) -> tuple[int, int | None]:
    """Run ``statement`` (with :lo/:hi bounds on a key) once per key range, a commit per batch.

    ``key_range_sql`` returns (min, max) of the key, read once at the start: rows inserted later are the
    application's and already carry the new shape (a default, or a mirroring trigger). Re-running after an
    interruption is safe as long as ``statement`` only touches rows still pending. Must not be called from
    inside another autocommit block. Offline, ``offline_sql`` is rendered instead.

    Returns (rows affected, highest key covered), the latter None offline or when there were no rows.
    """
    s = settings()
    total = 0
    with op.get_context().autocommit_block():
        if offline():
            op.execute(
                f"-- online mode runs this in batches of {s.batch_size} keys, a commit per batch\n"
                f"{offline_sql}"
            )
            return 0, None
        lo, hi = op.get_bind().execute(sa.text(key_range_sql)).one()
        if lo is None:
            log.info("no rows to process")
            return 0, None
        start, batch = int(lo), 0
        while start <= int(hi):
            end = start + s.batch_size
            batch += 1
            done = execute(statement, {"lo": start, "hi": end})
            total += done
            log.info("batch %d: rows %d..%d, %d %s", batch, start, end - 1, done, verb)
            start = end
            if s.batch_sleep:
                time.sleep(s.batch_sleep)
    log.info("%d rows %s in %d batches", total, verb, batch)
    return total, int(hi)


def backfill_in_batches(table: str, key: str, assignments: str, pending: str) -> int:
    """``UPDATE table SET assignments WHERE pending`` by ranges of the integer key, a commit per batch."""
    update = f"UPDATE {table} SET {assignments} WHERE {pending}"
    rows, _ = run_in_batches(
        f"{update} AND {key} >= :lo AND {key} < :hi",
        key_range_sql=f"SELECT min({key}), max({key}) FROM {table}",
        verb="updated",
        offline_sql=update,
    )
    return rows


# --- constraints ---------------------------------------------------------------------------------------


def add_column_if_missing(table: str, column_ddl: str) -> None:
    """A nullable column without a default: a catalog-only change, instant on any table size."""
    execute(
        squawk_ignore("prefer-text-field", "varchar(n) is the spec; widening it is catalog-only")
        + f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column_ddl}"
    )


def add_check_not_valid(table: str, name: str, condition: str) -> None:
    """A CHECK that new writes obey at once, without scanning existing rows under the table lock."""
    if not offline() and constraint_state(table, name) is not None:
        return
    execute(f"{RERUNNABLE}ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")


def validate_constraint(table: str, name: str) -> None:
    """Scan existing rows under SHARE UPDATE EXCLUSIVE (reads and writes go on), in its own transaction."""
    if not offline() and constraint_state(table, name) is True:
        return
    with op.get_context().autocommit_block(), long_statement_timeout():
        execute(f"{RERUNNABLE}ALTER TABLE {table} VALIDATE CONSTRAINT {name}")


def set_not_null(table: str, column: str) -> None:
    """SET NOT NULL without a scan under ACCESS EXCLUSIVE: through a validated CHECK, dropped afterwards.

    Leaves the migration inside a transaction holding the short SET NOT NULL lock; the version stamp that
    follows commits it.
    """
    check = f"{table}_{column}_not_null"
    if offline() or not column_not_null(table, column):
        add_check_not_valid(table, check, f"{column} IS NOT NULL")
        validate_constraint(table, check)
        execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL")
    execute(
        squawk_ignore("ban-drop-constraint", "a temporary helper check, redundant with NOT NULL")
        + f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {check}"
    )


# --- indexes -------------------------------------------------------------------------------------------


def create_index_concurrently(name: str, table: str, columns: str) -> None:
    """Build an index without blocking writes; drop the INVALID leftover of a failed build first.

    A build that gives up waiting for a lock is retried with backoff; any other failure drops its own
    leftover and raises, so a re-run starts clean.
    """
    create = f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({columns})"
    drop = f"DROP INDEX CONCURRENTLY IF EXISTS {name}"
    with op.get_context().autocommit_block(), long_statement_timeout():
        if offline():
            op.execute(create)
            return
        conn = op.get_bind()
        delay = FIRST_BACKOFF_SECONDS
        for attempt in range(1, LOCK_RETRIES + 1):
            state = index_state(name)
            if state is True:
                log.info("index %s already exists and is valid", name)
                return
            if state is False:
                log.warning("dropping INVALID index %s left by an earlier failed build", name)
                execute(drop)
            try:
                conn.execute(sa.text(create))
                log.info("built index %s", name)
                return
            except DBAPIError as exc:
                if index_state(name) is False:
                    execute(drop)
                if not _is_lock_timeout(exc) or attempt == LOCK_RETRIES:
                    raise
                log.warning("index %s: lock_timeout, retrying in %.1fs", name, delay)
                time.sleep(delay)
                delay *= 2


def drop_index_concurrently(name: str) -> None:
    with op.get_context().autocommit_block():
        execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


# --- table copies --------------------------------------------------------------------------------------


def install_mirror_trigger(
    source: str, target: str, keys: tuple[str, ...], values: Mapping[str, str], name: str
) -> None:
    """Make ``target`` follow every insert, update and delete on ``source`` while a batched copy runs.

    ``values`` maps target columns to expressions over ``NEW``. Writes the application makes during the
    copy land in both tables, so the final swap only needs a short lock, not a second full pass.
    """
    cols = ", ".join((*keys, *values))
    new_vals = ", ".join((*(f"NEW.{k}" for k in keys), *values.values()))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in values)
    old_match = " AND ".join(f"{k} = OLD.{k}" for k in keys)
    old_keys = ", ".join(f"OLD.{k}" for k in keys)
    new_keys = ", ".join(f"NEW.{k}" for k in keys)
    execute(
        f"""CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND ({old_keys}) IS DISTINCT FROM ({new_keys})) THEN
        DELETE FROM {target} WHERE {old_match};
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO {target} ({cols}) VALUES ({new_vals})
        ON CONFLICT ({", ".join(keys)}) DO UPDATE SET {updates};
    END IF;
    RETURN NULL;
END
$body$"""
    )
    execute(
        f"CREATE OR REPLACE TRIGGER {name} AFTER INSERT OR UPDATE OR DELETE ON {source} "
        f"FOR EACH ROW EXECUTE FUNCTION {name}()"
    )


def drop_mirror_trigger(source: str, name: str) -> None:
    execute(f"DROP TRIGGER IF EXISTS {name} ON {source}")
    execute(
        squawk_ignore("ban-drop-function", "the temporary mirror trigger's own function")
        + f"DROP FUNCTION IF EXISTS {name}()"
    )


def rename_table(old: str, new: str, renames: Mapping[str, str], indexes: Mapping[str, str]) -> None:
    """Rename a table with its constraints and indexes, so every name still says which table it is on.

    Renames break clients that use the old names: callers do this only in a planned swap.
    """
    swap = "a planned swap of the table and its object names"
    execute(squawk_ignore("renaming-table", swap) + f"ALTER TABLE {old} RENAME TO {new}")
    for before, after in renames.items():
        execute(
            squawk_ignore("renaming-object", swap)
            + f"ALTER TABLE {new} RENAME CONSTRAINT {before} TO {after}"
        )
    for before, after in indexes.items():
        execute(squawk_ignore("renaming-object", swap) + f"ALTER INDEX {before} RENAME TO {after}")
