"""What a database looks like, for "nothing lost, nothing changed" assertions.

A state is every table's row count and content checksum (module_utils.fingerprint, the same code the backup
manifest uses), every schema object with its definition, and the Alembic revision. The run history schema
(`pipeline_history`) is left out: its rows change on every run by design.
"""

from __future__ import annotations

import contextlib

import psycopg2
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.fingerprint import (
    compare,
    database_fingerprint,
)
from pgcluster import APP, APP_PASSWORD, PgCluster

HISTORY_SCHEMA = "pipeline_history"

# Columns, constraints, indexes (with validity), sequences, views and functions outside the system schemas.
_OBJECTS_SQL = """
SELECT 'column', n.nspname || '.' || c.relname || '.' || a.attname,
       pg_catalog.format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm')
   AND n.nspname <> ALL(%(skip)s) AND n.nspname !~ '^pg_'
UNION ALL
SELECT 'constraint', n.nspname || '.' || cl.relname || '.' || co.conname,
       pg_catalog.pg_get_constraintdef(co.oid) || CASE WHEN co.convalidated THEN '' ELSE ' NOT VALID' END
  FROM pg_catalog.pg_constraint co
  JOIN pg_catalog.pg_class cl ON cl.oid = co.conrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace
 WHERE n.nspname <> ALL(%(skip)s) AND n.nspname !~ '^pg_'
UNION ALL
SELECT 'index', n.nspname || '.' || ic.relname,
       pg_catalog.pg_get_indexdef(i.indexrelid) || CASE WHEN i.indisvalid THEN '' ELSE ' INVALID' END
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace
 WHERE n.nspname <> ALL(%(skip)s) AND n.nspname !~ '^pg_'
UNION ALL
SELECT CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' WHEN 'm' THEN 'matview'
            ELSE 'relation' END,
       n.nspname || '.' || c.relname, c.relkind::text
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('S', 'v', 'm', 'r', 'p') AND n.nspname <> ALL(%(skip)s) AND n.nspname !~ '^pg_'
UNION ALL
SELECT 'function',
       n.nspname || '.' || p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')',
       md5(p.prosrc)
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname <> ALL(%(skip)s) AND n.nspname !~ '^pg_'
 ORDER BY 1, 2, 3
"""

_SKIP = ["pg_catalog", "information_schema", HISTORY_SCHEMA]


def revision(pg: PgCluster, dbname: str) -> str | None:
    """The Alembic revision, None when the database has no version table."""
    with contextlib.closing(pg.superuser_conn(dbname)) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT version_num FROM public.alembic_version")
        row = cur.fetchone()
        return row[0] if row else None


def snapshot(pg: PgCluster, dbname: str) -> dict:
    """Tables (rows + checksum), schema objects and revision of one database, history excluded."""
    with contextlib.closing(pg.superuser_conn(dbname)) as conn:
        tables = {
            key: value
            for key, value in database_fingerprint(conn).items()
            if not key.startswith(f"{HISTORY_SCHEMA}.")
        }
        with conn.cursor() as cur:
            cur.execute(_OBJECTS_SQL, {"skip": _SKIP})
            objects = [list(row) for row in cur.fetchall()]
    return {"tables": tables, "objects": objects, "revision": revision(pg, dbname)}


def differences(before: dict, after: dict) -> list[str]:
    """Everything that differs between two snapshots, empty when they are equal."""
    problems = compare(before["tables"], after["tables"])
    if before["revision"] != after["revision"]:
        problems.append(f"revision {after['revision']}, expected {before['revision']}")
    old = {tuple(o) for o in before["objects"]}
    new = {tuple(o) for o in after["objects"]}
    problems += [f"object gone: {o}" for o in sorted(old - new)]
    problems += [f"object added: {o}" for o in sorted(new - old)]
    return problems


def databases(pg: PgCluster) -> set[str]:
    with contextlib.closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")
        return {r[0] for r in cur.fetchall()}


def app_can_read(pg: PgCluster, dbname: str) -> str:
    """'' when the application role can connect and read meetings, else the reason it cannot."""
    try:
        with (
            contextlib.closing(pg.connect(dbname, user=APP, password=APP_PASSWORD)) as conn,
            conn.cursor() as cur,
        ):
            cur.execute("SELECT count(*) FROM meetings")
            cur.fetchone()
    except psycopg2.Error as exc:
        return str(exc).strip().splitlines()[0]
    return ""
