"""Helpers for the revision-chain tests: what a database holds, as comparable values.

Content is compared as md5 of the ordered text form of each table's data columns, so "nothing lost" means
byte-for-byte the same users, meetings and participants, not just the same counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import closing
from typing import Any

from conftest import ROOT
from pgcluster import PgCluster

REVISIONS = ["0001", "0002", "0003", "0004", "0005"]

# Data columns that exist at every revision: what a round trip must preserve exactly.
USER_COLUMNS = "id, email, name, password_hash, created_at, updated_at"
MEETING_COLUMNS = "id, title, description, start_time, end_time, created_by, created_at, updated_at"

HEAD_TABLES = {"alembic_version", "users", "meetings", "meeting_participants", "meeting_participants_legacy"}
HEAD_CONSTRAINTS = {
    ("users", "users_pkey"),
    ("users", "users_email_key"),
    ("meetings", "meetings_pkey"),
    ("meetings", "meetings_created_by_fkey"),
    ("meetings", "valid_time_range"),
    ("meetings", "valid_status"),
    ("meeting_participants", "meeting_participants_pkey"),
    ("meeting_participants", "meeting_participants_meeting_id_fkey"),
    ("meeting_participants", "meeting_participants_user_id_fkey"),
    ("meeting_participants", "valid_participant_status"),
    ("meeting_participants_legacy", "meeting_participants_legacy_pkey"),
    ("meeting_participants_legacy", "meeting_participants_legacy_meeting_id_fkey"),
    ("meeting_participants_legacy", "meeting_participants_legacy_user_id_fkey"),
    ("alembic_version", "alembic_version_pkc"),
}
HEAD_INDEXES = {
    "users_pkey",
    "users_email_key",
    "meetings_pkey",
    "idx_meetings_time_range",
    "idx_meetings_status",
    "idx_meetings_creator",
    "meeting_participants_pkey",
    "ix_meeting_participants_user_id",
    "meeting_participants_legacy_pkey",
    "ix_meeting_participants_legacy_user_id",
    "alembic_version_pkc",
}


def rows(pg: PgCluster, dbname: str, sql: str, params: Any = None) -> list[tuple]:
    with closing(pg.connect(dbname)) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        result = cur.fetchall() if cur.description else []
        conn.commit()
        return result


def value(pg: PgCluster, dbname: str, sql: str, params: Any = None) -> Any:
    return rows(pg, dbname, sql, params)[0][0]


def version(pg: PgCluster, dbname: str) -> str | None:
    if value(pg, dbname, "SELECT to_regclass('alembic_version') IS NULL"):
        return None
    found = rows(pg, dbname, "SELECT version_num FROM alembic_version")
    return found[0][0] if found else None


def tables(pg: PgCluster, dbname: str) -> set[str]:
    return {r[0] for r in rows(pg, dbname, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def state(pg: PgCluster, dbname: str) -> tuple[str | None, set[str]]:
    """What 'nothing changed' compares: the revision and the table list."""
    return version(pg, dbname), tables(pg, dbname)


def _md5(pg: PgCluster, dbname: str, select: str, order: str) -> tuple[int, str]:
    return tuple(  # type: ignore[return-value]
        rows(
            pg,
            dbname,
            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY {order}), ''))"
            f" FROM ({select}) t",
        )[0]
    )


def fingerprint(pg: PgCluster, dbname: str) -> dict[str, tuple[int, str]]:
    """Count and content hash of users, meetings and participants (attended <=> 'accepted')."""
    legacy_shape = value(
        pg,
        dbname,
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'meeting_participants'::regclass"
        " AND attname = 'attended'",
    )
    attended = "attended" if legacy_shape else "status = 'accepted'"
    return {
        "users": _md5(pg, dbname, f"SELECT {USER_COLUMNS} FROM users", "id"),
        "meetings": _md5(pg, dbname, f"SELECT {MEETING_COLUMNS} FROM meetings", "id"),
        "participants": _md5(
            pg,
            dbname,
            f"SELECT meeting_id, user_id, {attended} AS attended FROM meeting_participants",
            "meeting_id, user_id",
        ),
    }


def schema(pg: PgCluster, dbname: str) -> dict[str, Any]:
    """Constraints (with convalidated), indexes (with indisvalid), user triggers, NOT NULL columns."""
    return {
        "tables": tables(pg, dbname),
        "constraints": {
            (t, n): v
            for t, n, v in rows(
                pg,
                dbname,
                "SELECT conrelid::regclass::text, conname, convalidated FROM pg_constraint c"
                " JOIN pg_namespace s ON s.oid = c.connamespace WHERE s.nspname = 'public'",
            )
        },
        "indexes": dict(
            rows(
                pg,
                dbname,
                "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = 'public'",
            )
        ),
        "triggers": {r[0] for r in rows(pg, dbname, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")},
        "not_null": {
            (t, c)
            for t, c in rows(
                pg,
                dbname,
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND is_nullable = 'NO'",
            )
        },
    }


def alembic_popen(pg: PgCluster, dbname: str, *args: str, env_extra: dict | None = None) -> subprocess.Popen:
    """The real CLI in the background, for tests that watch or interrupt a running migration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIGRATION_", "PG"))}
    env["DATABASE_URL"] = pg.url(dbname)
    env.update(env_extra or {})
    return subprocess.Popen(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


def failed_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line alembic prints for a CommandError ("FAILED: ..." on stdout); no traceback."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.startswith("FAILED:")]
    assert len(lines) == 1, out
    return lines[0]
