"""Offline mode: application roles lose CONNECT on the database for the run, and get it back after.

Freezing revokes CONNECT from PUBLIC and from the named application roles, then terminates every session
whose role can no longer connect, so nothing writes while the backup is taken and the revisions run (a
restore then loses nothing). What was revoked is written to a state file on the runner *before* revoking:
a run killed half-way leaves the file, and the next unfreeze (or the next run's) gives CONNECT back even
though the database itself no longer shows who had it. Unfreezing grants by database name, so it also
reaches a database that a restore swapped in under the same name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ansible_collections.pgmigrate.pipeline.plugins.module_utils import pgconn

PUBLIC = "PUBLIC"

_CONNECT_GRANTEES = """
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
  FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
 WHERE d.datname = %s AND a.privilege_type = 'CONNECT' AND a.grantee <> d.datdba
"""

_LOCKED_OUT = """
SELECT pid, usename, application_name, coalesce(host(client_addr), 'local') AS client
  FROM pg_stat_activity
 WHERE datname = %s AND pid <> pg_backend_pid() AND usesysid IS NOT NULL
   AND NOT has_database_privilege(usesysid, datid, 'CONNECT')
"""


class FreezeError(Exception):
    """A freeze or unfreeze that cannot be done, in one line."""


def connect_grantees(conn, dbname: str) -> list[str]:
    with conn.cursor() as cur:
        cur.execute(_CONNECT_GRANTEES, [dbname])
        return sorted({r[0] for r in cur.fetchall()})


def _grantee_sql(name: str):
    return pgconn.sql.SQL(PUBLIC) if name == PUBLIC else pgconn.ident(name)


def read_state(path: str) -> list[str]:
    if not path or not os.path.exists(path):
        return []
    try:
        return sorted(set(json.loads(Path(path).read_text())["revoked"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FreezeError(f"cannot read the freeze state file {path}: {exc}") from exc


def write_state(path: str, dbname: str, revoked: list[str]) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"database": dbname, "revoked": sorted(set(revoked))}, f)


def freeze(conn, dbname: str, app_roles: list[str], state_file: str = "", check_mode: bool = False) -> dict:
    """Revoke CONNECT from PUBLIC and `app_roles`, terminate sessions that lost it; report whom."""
    had = connect_grantees(conn, dbname)
    to_revoke = [g for g in had if g == PUBLIC or g in app_roles]
    # A leftover state file (a killed run) still counts: those grantees must get CONNECT back too.
    remembered = read_state(state_file)
    revoked = sorted(set(to_revoke) | set(remembered))
    if check_mode:
        return {"changed": bool(to_revoke), "revoked": revoked, "terminated": [], "still_allowed": []}
    write_state(state_file, dbname, revoked)
    with conn.cursor() as cur:
        for grantee in to_revoke:
            cur.execute(
                pgconn.sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(
                    pgconn.ident(dbname), _grantee_sql(grantee)
                )
            )
        cur.execute(
            "SELECT r FROM unnest(%s::text[]) r WHERE has_database_privilege(r, %s, 'CONNECT')",
            [app_roles, dbname],
        )
        still = [r[0] for r in cur.fetchall()]
        cur.execute(_LOCKED_OUT, [dbname])
        names = [d[0] for d in cur.description]
        sessions = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        terminated = []
        for s in sessions:
            cur.execute("SELECT pg_terminate_backend(%s, 5000)", [s["pid"]])
            terminated.append({**s, "terminated": bool(cur.fetchone()[0])})
    return {
        "changed": bool(to_revoke or terminated),
        "revoked": revoked,
        "terminated": terminated,
        "still_allowed": still,
    }


def unfreeze(conn, dbname: str, grantees: list[str], state_file: str = "", check_mode: bool = False) -> dict:
    """Grant CONNECT back to `grantees` and to whatever the state file remembers; remove the file."""
    wanted = sorted(set(grantees) | set(read_state(state_file)))
    missing = [g for g in wanted if g not in connect_grantees(conn, dbname)]
    if not check_mode:
        with conn.cursor() as cur:
            for grantee in missing:
                cur.execute(
                    pgconn.sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                        pgconn.ident(dbname), _grantee_sql(grantee)
                    )
                )
        if state_file and os.path.exists(state_file):
            os.unlink(state_file)
    return {"changed": bool(missing), "granted": missing, "grantees": wanted}
