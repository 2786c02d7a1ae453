"""Smoke checks after a migration: read-only, each named, all run even when one fails.

The checks answer the questions an on-call DBA asks after a release: can the application still log
in, is the schema at the revision we meant, did a concurrent index build or a NOT VALID constraint
get left behind half-done, did any table lose rows it had in the backup, and do the team's own
queries still answer as expected. Nothing here writes: the built-ins only read catalogs and counts,
and user queries run as the application role inside a READ ONLY transaction with a statement
timeout, so a careless query cannot change data or hang the pipeline.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from ansible_collections.pgmigrate.pipeline.plugins.module_utils import pgconn

EXPECT_KINDS = ("rows", "scalar", "no_rows")
SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema')"
QUERY_PREFIX = "query:"


class SmokeSpecError(ValueError):
    """An unusable input (bad query spec, unreadable manifest): one line naming the culprit."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Query:
    name: str
    sql: str
    kind: str
    expected: Any


def parse_queries(raw: list | None) -> list[Query]:
    """Validate every user query before running any, so a typo fails fast and names its query."""
    queries: list[Query] = []
    seen: set[str] = set()
    for n, item in enumerate(raw or [], start=1):
        label = f"smoke query #{n}"
        if not isinstance(item, dict):
            raise SmokeSpecError(f"{label} must be a mapping (name, sql, expect), got {type(item).__name__}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SmokeSpecError(f"{label} has no name (each query needs name, sql and expect)")
        label = f"smoke query {name!r}"
        unknown = set(item) - {"name", "sql", "expect"}
        if unknown:
            raise SmokeSpecError(f"{label} has unknown key(s) {', '.join(sorted(unknown))}")
        if name in seen:
            raise SmokeSpecError(f"{label} is defined twice")
        seen.add(name)
        sql_text = item.get("sql")
        if not isinstance(sql_text, str) or not sql_text.strip():
            raise SmokeSpecError(f"{label} has no sql")
        expect = item.get("expect")
        if not isinstance(expect, dict) or len(expect) != 1:
            raise SmokeSpecError(
                f"{label}: expect must have exactly one of {', '.join(EXPECT_KINDS)} (got {expect!r})"
            )
        ((kind, expected),) = expect.items()
        if kind not in EXPECT_KINDS:
            raise SmokeSpecError(f"{label}: unknown expect key {kind!r} (use {', '.join(EXPECT_KINDS)})")
        if kind == "rows" and (isinstance(expected, bool) or not isinstance(expected, int) or expected < 0):
            raise SmokeSpecError(f"{label}: expect.rows must be a whole number >= 0 (got {expected!r})")
        if kind == "no_rows" and expected is not True:
            raise SmokeSpecError(f"{label}: expect.no_rows must be true (got {expected!r})")
        queries.append(Query(name=name, sql=sql_text, kind=kind, expected=expected))
    return queries


def load_manifest(path: str) -> dict[str, int]:
    """Per-table row counts from the backup manifest (see docs/DESIGN.md)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        tables = data["tables"]
        return {str(name): int(info["rows"]) for name, info in tables.items()}
    except FileNotFoundError as exc:
        raise SmokeSpecError(f"backup manifest {path} does not exist") from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SmokeSpecError(f"backup manifest {path} is unreadable: {type(exc).__name__}: {exc}") from exc


def _qualify(table: str) -> str:
    return table if "." in table else f"public.{table}"


# --- Built-in checks (as the migration role: it can see every table and catalog) ------------------------


def check_revision(conn, target: str, version_table: str = "alembic_version") -> Check:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", [version_table])
        if not cur.fetchone()[0]:
            return Check("revision_is_target", False, f"no {version_table} table; expected revision {target}")
        cur.execute(pgconn.sql.SQL("SELECT version_num FROM {}").format(pgconn.ident(version_table)))
        found = sorted(r[0] for r in cur.fetchall())
    if found == [target]:
        return Check("revision_is_target", True, f"at {target}")
    return Check("revision_is_target", False, f"at {', '.join(found) or 'base'}, expected {target}")


def check_indexes(conn) -> Check:
    """An interrupted CREATE INDEX CONCURRENTLY leaves an index that costs writes and serves no reads."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT format('%I.%I', n.nspname, c.relname),"
            " CASE WHEN NOT i.indisready THEN 'not ready' ELSE 'invalid' END"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            f" WHERE (NOT i.indisvalid OR NOT i.indisready) AND n.nspname NOT IN {SYSTEM_SCHEMAS}"
            " AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'"
            " ORDER BY 1"
        )
        bad = [f"{name} ({state})" for name, state in cur.fetchall()]
    if bad:
        return Check("indexes_valid", False, f"{len(bad)} unusable index(es): {', '.join(bad)}")
    return Check("indexes_valid", True, "every index is valid and ready")


def check_constraints(conn) -> Check:
    """A constraint added NOT VALID and never validated does not protect existing rows."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT format('%I.%I.%I', n.nspname, c.relname, k.conname)"
            " FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            f" WHERE NOT k.convalidated AND n.nspname NOT IN {SYSTEM_SCHEMAS}"
            " AND n.nspname NOT LIKE 'pg\\_toast%%' ORDER BY 1"
        )
        bad = [r[0] for r in cur.fetchall()]
    if bad:
        return Check("constraints_validated", False, f"{len(bad)} NOT VALID constraint(s): {', '.join(bad)}")
    return Check("constraints_validated", True, "every constraint is validated")


def check_rows(conn, manifest_path: str, row_count_changes: dict[str, str] | None) -> Check:
    """Every table of the backup still has at least its rows, unless a revision declared otherwise."""
    name = "no_rows_lost"
    if not manifest_path:
        return Check(name, True, "skipped: no backup manifest given")
    before = load_manifest(manifest_path)
    allowed = {_qualify(t) for t in (row_count_changes or {})}
    lost: list[str] = []
    excused: list[str] = []
    with conn.cursor() as cur:
        for table, rows in sorted(before.items()):
            schema, relname = _qualify(table).split(".", 1)
            cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", [schema, relname])
            if cur.fetchone()[0] is None:
                now: int | None = None
            else:
                count = pgconn.sql.SQL("SELECT count(*) FROM {}.{}")
                cur.execute(count.format(pgconn.ident(schema), pgconn.ident(relname)))
                now = cur.fetchone()[0]
            if now is not None and now >= rows:
                continue
            what = f"{table} {rows} -> {'(missing)' if now is None else now}"
            (excused if _qualify(table) in allowed else lost).append(what)
    if lost:
        return Check(name, False, f"rows lost since the backup: {', '.join(lost)}")
    note = f"; allowed by row_count_changes: {', '.join(excused)}" if excused else ""
    return Check(name, True, f"{len(before)} table(s) have at least their backup row counts{note}")


# --- User queries (as the application role, READ ONLY, bounded) -----------------------------------------


def _same(found: Any, expected: Any) -> bool:
    """YAML gives 3, '3', true or null; PostgreSQL gives int, Decimal, str, date... compare sensibly."""
    if found == expected:
        return True
    if found is None or expected is None or isinstance(expected, bool) or isinstance(found, bool):
        return False
    return str(found) == str(expected)


def run_query(conn, q: Query, statement_timeout: str) -> Check:
    """One user query in its own read-only transaction; an SQL error is a named failure."""
    name = f"{QUERY_PREFIX}{q.name}"
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('statement_timeout', %s, true)", [statement_timeout])
            cur.execute(q.sql)
            if cur.description is None:
                return Check(name, False, "the statement returned no rows to check (use a SELECT)")
            if q.kind == "rows":
                got = len(cur.fetchmany(q.expected + 1))
                ok = got == q.expected
                shown = f"more than {q.expected}" if got > q.expected else str(got)
                return Check(name, ok, f"{shown} row(s), expected {q.expected}")
            if q.kind == "no_rows":
                row = cur.fetchone()
                detail = "no rows" if row is None else f"returned rows, first: {_short(row)}"
                return Check(name, row is None, detail)
            rows = cur.fetchmany(2)
            if len(rows) != 1 or len(rows[0]) < 1:
                got = f"{len(rows)}{'+' if rows else ''}"
                return Check(name, False, f"expected exactly one row for a scalar, got {got}")
            value = rows[0][0]
            return Check(name, _same(value, q.expected), f"got {value!r}, expected {q.expected!r}")
    except pgconn.psycopg2.Error as exc:
        return Check(name, False, f"SQL error: {_pg_error(exc)}")
    finally:
        conn.rollback()


def _short(row: Any, limit: int = 120) -> str:
    text = repr(tuple(row))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pg_error(exc: Exception) -> str:
    first = str(getattr(exc, "pgerror", None) or exc).strip().splitlines()
    line = first[0] if first else type(exc).__name__
    return line.removeprefix("ERROR:").strip()


def run_checks(
    ci: pgconn.ConnInfo,
    app_user: str,
    app_password: str,
    target_revision: str,
    manifest_path: str = "",
    row_count_changes: dict[str, str] | None = None,
    queries: list | None = None,
    statement_timeout: str = "30s",
    version_table: str = "alembic_version",
) -> dict:
    """Every check, each with ok/detail; raises only for unusable input or an unreachable server."""
    started = time.monotonic()
    parsed = parse_queries(queries)
    try:
        conn = pgconn.connect(ci)
    except Exception as exc:
        raise SmokeSpecError(pgconn.explain_connect_error(ci, exc)) from exc
    checks: list[Check] = []
    try:
        checks.append(_app_and_queries(ci, app_user, app_password, parsed, statement_timeout, checks))
        checks.append(check_revision(conn, target_revision, version_table))
        checks.append(check_indexes(conn))
        checks.append(check_constraints(conn))
        checks.append(check_rows(conn, manifest_path, row_count_changes))
    finally:
        conn.close()
    ordered = sorted(checks, key=lambda c: c.name.startswith(QUERY_PREFIX))
    failed = [c.name for c in ordered if not c.ok]
    return {
        "changed": False,
        "checks": [asdict(c) for c in ordered],
        # Not "failed": Ansible reserves that key in module results (db_smoke_result.failed is this list).
        "failed_checks": failed,
        "passed": len(ordered) - len(failed),
        "duration_seconds": round(time.monotonic() - started, 3),
    }


def _app_and_queries(
    ci: pgconn.ConnInfo,
    app_user: str,
    app_password: str,
    queries: list[Query],
    timeout: str,
    out: list[Check],
) -> Check:
    """Connect as the app role once; run user queries on that connection, appending their checks to out."""
    app = pgconn.ConnInfo(ci.host, ci.port, ci.dbname, app_user, app_password, ci.connect_timeout)
    try:
        conn = pgconn.connect(app, autocommit=False)
    except Exception as exc:
        reason = pgconn.explain_connect_error(app, exc)
        skipped = "not run: the app role cannot connect"
        out.extend(Check(f"{QUERY_PREFIX}{q.name}", False, skipped) for q in queries)
        return Check("app_role_connects", False, reason)
    try:
        conn.set_session(readonly=True)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        conn.rollback()
        out.extend(run_query(conn, q, timeout) for q in queries)
    finally:
        conn.close()
    return Check("app_role_connects", True, f"{app.describe()} ran SELECT 1")
