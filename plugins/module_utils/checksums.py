"""What a revision file and a schema look like, as one sha256 each.

Alembic records only a revision id in the database, so an applied revision whose file was edited later
goes unnoticed (Flyway's `validate` catches this; Alembic has no equivalent). The pipeline records the
sha256 of each revision file it applies and compares it with the file on disk before every later run
(alembic_runner.revision_checksums reads the chain's files and hashes them here).

A schema fingerprint is the sha256 of a canonical text description of every table, column, index and
constraint outside the system schemas and the pipeline's own history schema. Recorded after each run,
it tells the next run whether someone changed the schema by hand since (drift).
"""

from __future__ import annotations

import hashlib
import os

HISTORY_SCHEMA = "pipeline_history"

# Columns, indexes and constraints of every ordinary or partitioned table outside the system schemas and
# the history schema; names and definitions as PostgreSQL prints them, so the text is stable across runs.
SCHEMA_DESCRIPTION_SQL = """
SELECT 'column ' || n.nspname || '.' || c.relname || '.' || a.attname || ' '
       || pg_catalog.format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', %(history)s)
   AND n.nspname !~ '^pg_'
UNION ALL
SELECT 'index ' || pg_catalog.pg_get_indexdef(i.indexrelid)
       || CASE WHEN i.indisvalid THEN '' ELSE ' (invalid)' END
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', %(history)s) AND n.nspname !~ '^pg_'
UNION ALL
SELECT 'constraint ' || n.nspname || '.' || c.relname || '.' || k.conname || ' '
       || pg_catalog.pg_get_constraintdef(k.oid)
  FROM pg_catalog.pg_constraint k
  JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', %(history)s) AND n.nspname !~ '^pg_'
ORDER BY 1
"""


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


_IN_ERROR = 3  # psycopg2.extensions.TRANSACTION_STATUS_INERROR


def schema_description(conn, lock_timeout: str = "10s") -> list[str]:
    """The canonical lines the schema fingerprint hashes (also handy to diff by hand).

    Deparsing defaults and constraints opens each table, so a session holding an ACCESS EXCLUSIVE lock
    would make this wait forever: it waits ``lock_timeout`` at most (psycopg2's LockNotAvailable then),
    and the connection's own setting is put back afterwards.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT pg_catalog.current_setting('lock_timeout')")
        previous = cur.fetchone()[0]
        cur.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)", [lock_timeout])
        try:
            cur.execute(SCHEMA_DESCRIPTION_SQL, {"history": HISTORY_SCHEMA})
            return [row[0] for row in cur.fetchall()]
        finally:
            if conn.get_transaction_status() != _IN_ERROR:
                cur.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)", [previous])


def schema_fingerprint(conn, lock_timeout: str = "10s") -> str:
    """sha256 over the schema description, one line each."""
    digest = hashlib.sha256()
    for line in schema_description(conn, lock_timeout):
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()
