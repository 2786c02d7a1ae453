"""What else is happening on the target database: traffic, sessions that would block DDL, standbys.

The pre-flight reads these before anything changes, so an unattended run can defer instead of queueing
an ACCESS EXCLUSIVE lock behind a forgotten transaction (which would stall every query behind it).
Reading other roles' sessions' state needs ``pg_read_all_stats`` (``pg_monitor``); without it PostgreSQL
hides their state, so the check refuses in one line rather than seeing an idle database that is not.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

POLICIES = ("wait", "defer", "terminate")

_SEES_ALL = (
    "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') OR rolsuper"
    " FROM pg_roles WHERE rolname = current_user"
)

# Sessions on this database, other than ours, in a transaction for too long or idle inside one.
_BLOCKERS = """
SELECT pid, usename, application_name, coalesce(host(client_addr), 'local') AS client, state,
       round(extract(epoch FROM now() - xact_start)::numeric, 1)::float AS xact_age_seconds,
       to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS backend_start
  FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
   AND xact_start IS NOT NULL
   AND (state LIKE 'idle in transaction%%' OR xact_start < now() - make_interval(secs => %s))
 ORDER BY xact_start
"""

_ACTIVE = """
SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'
   AND backend_type = 'client backend'
"""


class ActivityError(Exception):
    """A check that cannot be made, in one line an operator can act on."""


@dataclass
class Limits:
    """Thresholds from the inventory; 0 or negative switches a check off."""

    sample_seconds: float = 3.0
    max_tps: float = 0
    max_active_sessions: int = 0
    max_xact_age_seconds: float = 300
    blocker_policy: str = "defer"
    blocker_wait_seconds: float = 60
    max_replication_lag_seconds: float = 0
    notes: list[str] = field(default_factory=list)


BLIND = (
    "the migration role cannot see other roles' session state, so blockers and active sessions were not "
    "checked: grant it pg_monitor (or pg_read_all_stats)"
)


def sees_all_sessions(conn) -> bool:
    with conn.cursor() as cur:
        cur.execute(_SEES_ALL)
        row = cur.fetchone()
    return bool(row and row[0])


def sample_traffic(conn, seconds: float) -> dict:
    """Transactions per second over `seconds`, and the sessions active right now."""

    def totals() -> tuple[int, float]:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute(
                "SELECT xact_commit + xact_rollback, extract(epoch FROM clock_timestamp())"
                " FROM pg_stat_database WHERE datname = current_database()"
            )
            count, stamp = cur.fetchone()
        return int(count), float(stamp)

    first, t0 = totals()
    time.sleep(max(seconds, 0))
    second, t1 = totals()
    with conn.cursor() as cur:
        cur.execute(_ACTIVE)
        active = int(cur.fetchone()[0])
    # Our own two sampling queries count as transactions too: leave them out.
    tps = max(second - first - 2, 0) / max(t1 - t0, 0.001)
    return {"tps": round(tps, 1), "active_sessions": active, "sample_seconds": round(t1 - t0, 2)}


def find_blockers(conn, max_xact_age_seconds: float) -> list[dict]:
    with conn.cursor() as cur:
        cur.execute(_BLOCKERS, [max_xact_age_seconds])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def terminate(conn, sessions: list[dict]) -> list[dict]:
    """Terminate each session; the result says, per session, whether PostgreSQL agreed."""
    done = []
    with conn.cursor() as cur:
        for s in sessions:
            cur.execute("SELECT pg_terminate_backend(%s, 5000)", [s["pid"]])
            done.append({**s, "terminated": bool(cur.fetchone()[0])})
    return done


def replication(conn) -> dict:
    """Standbys streaming from this server and the worst replay lag (null lag = caught up)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), coalesce(max(extract(epoch FROM replay_lag)), 0)::float"
            " FROM pg_stat_replication"
        )
        count, lag = cur.fetchone()
    return {"standbys": int(count), "max_replay_lag_seconds": round(float(lag), 1)}


def describe_session(s: dict) -> str:
    return (
        f"pid {s['pid']} ({s['usename']}@{s['client']}, {s['application_name'] or 'no application name'}, "
        f"{s['state']}, transaction open {s['xact_age_seconds']}s)"
    )


def assess(conn, limits: Limits, check_mode: bool = False, sleep=time.sleep) -> dict:
    """Traffic, blockers (applying the policy), replication; reasons to stop, and whom we terminated."""
    if limits.blocker_policy not in POLICIES:
        raise ActivityError(f"blocker policy {limits.blocker_policy!r} is not one of {', '.join(POLICIES)}")
    reasons: list[str] = []
    warnings: list[str] = []
    if not sees_all_sessions(conn):
        # Refusing here would stop every run on servers set up before this check existed; say it instead.
        warnings.append(BLIND)
    traffic = (
        sample_traffic(conn, limits.sample_seconds)
        if limits.max_tps > 0 or limits.max_active_sessions > 0
        else {}
    )
    if limits.max_tps > 0 and traffic["tps"] > limits.max_tps:
        reasons.append(f"traffic {traffic['tps']} transactions/s is above {limits.max_tps}")
    if limits.max_active_sessions > 0 and traffic["active_sessions"] > limits.max_active_sessions:
        reasons.append(f"{traffic['active_sessions']} active sessions is above {limits.max_active_sessions}")

    blockers = find_blockers(conn, limits.max_xact_age_seconds) if not warnings else []
    waited = 0.0
    if blockers and limits.blocker_policy == "wait":
        while blockers and waited < limits.blocker_wait_seconds:
            sleep(1.0)
            waited += 1.0
            blockers = find_blockers(conn, limits.max_xact_age_seconds)
    terminated: list[dict] = []
    if blockers and limits.blocker_policy == "terminate" and not check_mode:
        terminated = terminate(conn, blockers)
        blockers = [s for s in terminated if not s["terminated"]]
    if blockers:
        waited_note = f" after waiting {waited:.0f}s" if waited else ""
        reasons.append(
            f"{len(blockers)} session(s) would block DDL{waited_note}: "
            + "; ".join(describe_session(s) for s in blockers)
        )

    repl = replication(conn)
    if (
        limits.max_replication_lag_seconds > 0
        and repl["max_replay_lag_seconds"] > limits.max_replication_lag_seconds
    ):
        reasons.append(
            f"a standby replays {repl['max_replay_lag_seconds']}s behind"
            f" (limit {limits.max_replication_lag_seconds}s)"
        )
    return {
        "traffic": traffic,
        "blockers": blockers,
        "waited_seconds": waited,
        "terminated": terminated,
        "replication": repl,
        "reasons": reasons,
        "warnings": warnings,
    }


# --- One run per database: an advisory lock held by a small process for the whole run ----------------

RUN_LOCK_NAME = "pg-migrate-run"

# The holder: connects (password from stdin, never argv), takes the lock without waiting, says whether
# it got it, and keeps its session open until the token file goes or the ansible-playbook it serves dies.
# Its session closing releases the lock, so a killed run never leaves the database locked.
_HOLDER = r"""
import json, os, sys, time
import psycopg2
cfg = json.loads(sys.stdin.readline())
try:
    conn = psycopg2.connect(host=cfg["host"], port=cfg["port"], dbname=cfg["dbname"], user=cfg["user"],
                            password=cfg["password"] or None, connect_timeout=cfg["connect_timeout"],
                            application_name=cfg["application_name"])
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT pg_try_advisory_lock(%s)", [cfg["key"]])
    locked = cur.fetchone()[0]
except Exception as exc:
    print(json.dumps({"locked": False, "error": str(exc).strip().splitlines()[0]}), flush=True)
    sys.exit(0)
print(json.dumps({"locked": locked, "pid": os.getpid()}), flush=True)
if not locked:
    sys.exit(0)
sys.stdout.close()
while os.path.exists(cfg["token"]) and (not cfg["watch_pid"] or os.path.exists(f"/proc/{cfg['watch_pid']}")):
    time.sleep(1)
"""

_HOLDERS = """
SELECT a.pid, a.application_name, coalesce(host(a.client_addr), 'local') AS client,
       to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS since
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
"""


def run_lock_key(name: str = RUN_LOCK_NAME) -> int:
    """First 8 bytes of sha256(name), signed (distinct from env.py's per-command Alembic lock)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _playbook_pid(start: int | None = None) -> int:
    """The ansible-playbook process this module serves, 0 if none (a module run over SSH has none).

    The outermost one, walking up from our parent: the nearest is the per-task worker ansible-playbook
    forks for each task, which exits as soon as the task that took the lock ends.
    """
    pid = os.getppid() if start is None else start
    found = 0
    for _depth in range(20):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return found
        if b"ansible-playbook" in cmdline:
            found = pid
        if parent <= 1:
            return found
        pid = parent
    return found


def lock_holders(conn, key: int) -> list[dict]:
    with conn.cursor() as cur:
        unsigned = key & 0xFFFFFFFFFFFFFFFF  # pg_locks splits a bigint key into two unsigned halves
        cur.execute(_HOLDERS, [unsigned >> 32, unsigned & 0xFFFFFFFF])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def run_lock_for(dbname: str) -> int:
    """The run lock's key for one target database (taken in the maintenance database, see below)."""
    return run_lock_key(f"{RUN_LOCK_NAME}:{dbname}")


def acquire_run_lock(
    ci,
    run_id: str,
    token: str,
    maintenance_db: str = "postgres",
    watch_pid: int | None = None,
    timeout: float = 30,
) -> dict:
    """Start the holder; {"locked": True, "holder_pid", ...} or {"locked": False}.

    The holder sits in the maintenance database, not the target: the snapshot backup (CREATE DATABASE
    ... TEMPLATE) and the restore's swap need the target free of sessions, and must not end the lock.
    """
    key = run_lock_for(ci.dbname)
    target = ci.dbname
    ci = ci.with_db(maintenance_db)
    application_name = f"pg-migrate run {run_id} on {socket.gethostname()} for {target}"[:63]
    os.makedirs(os.path.dirname(os.path.abspath(token)), mode=0o700, exist_ok=True)
    try:  # never another run's token: removing it (below, when refused) would end that run's holder
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ActivityError(f"cannot take the run lock: its token file {token} exists") from None
    os.close(fd)
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    cfg = {
        "host": ci.host,
        "port": ci.port,
        "dbname": ci.dbname,
        "user": ci.user,
        "password": ci.password,
        "connect_timeout": ci.connect_timeout,
        "application_name": application_name,
        "key": key,
        "token": token,
        "watch_pid": _playbook_pid() if watch_pid is None else watch_pid,
    }
    if proc.stdin is None or proc.stdout is None:  # pipes were asked for; keeps type checkers honest
        raise ActivityError("cannot talk to the run lock's holder process")
    proc.stdin.write(json.dumps(cfg) + "\n")
    proc.stdin.close()
    ready = select.select([proc.stdout], [], [], timeout)[0]
    answer = json.loads(proc.stdout.readline() or "{}") if ready else {}
    proc.stdout.close()
    if answer.get("locked"):
        with open(token, "w", encoding="utf-8") as f:
            f.write(str(proc.pid))
        return {"locked": True, "holder_pid": proc.pid, "application_name": application_name}
    os.unlink(token)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if "error" in answer or not answer:
        why = answer.get("error", "the lock holder did not answer")
        raise ActivityError(f"cannot take the run lock: {why}")
    return {"locked": False}


def release_run_lock(token: str) -> bool:
    """Remove the token (the holder notices within a second) and end the holder now; idempotent."""
    try:
        with open(token, encoding="utf-8") as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return False
    os.unlink(token)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return True
