"""Maintenance window, traffic and blockers: pure verdicts, live session checks, and migrate.yml's handling.

The window is judged at a pinned instant (`db_preflight_window_now`), so inside/outside does not depend on
when the
suite runs. The playbook cases assert the exit code, the one-line reason, the report's outcome, and that the
database did not change when the run did not start.
"""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils import activity
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.fingerprint import compare
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.window import (
    WindowError,
    check,
    parse_now,
    parse_window,
)
from ansible_run import failure_lines
from pgcluster import APP, APP_PASSWORD, MIGRATOR, PgCluster
from test_pipeline import fingerprint, migrate, reports, revision

# Saturday 2026-11-28 03:00 in Berlin (UTC+1) and Wednesday 2026-11-25 12:00 UTC.
SATURDAY_NIGHT = "2026-11-28T02:00:00Z"
WEDNESDAY_NOON = "2026-11-25T12:00:00Z"
WEEKEND = {
    "db_preflight_window_days": ["sat", "sun"],
    "db_preflight_window_start": "01:00",
    "db_preflight_window_end": "05:00",
}
WEEKEND["db_preflight_window_timezone"] = "Europe/Berlin"


def at(text: str) -> datetime:
    moment = parse_now(text)
    assert moment is not None
    return moment


# --- the window, pure ---------------------------------------------------------------------------------


def test_inside_and_outside_a_window_in_a_named_time_zone():
    win = parse_window(["sat", "sun"], "01:00", "05:00", "Europe/Berlin")
    inside = check(win, at(SATURDAY_NIGHT))
    assert inside["inside"] and inside["closes_at"] == "2026-11-28T04:00:00Z"
    outside = check(win, at(WEDNESDAY_NOON))
    assert not outside["inside"] and outside["next_opening"] == "2026-11-28T00:00:00Z"
    assert outside["local_time"] == "Wed 2026-11-25 13:00 CET"


def test_a_window_past_midnight_belongs_to_the_day_it_opens():
    win = parse_window(["sat"], "22:00", "04:00", "UTC")
    assert check(win, at("2026-11-29T03:59:00Z"))["inside"]  # Sunday morning, Saturday's window
    assert not check(win, at("2026-11-29T22:30:00Z"))["inside"]  # Sunday night: no window
    assert not check(win, at("2026-11-28T21:59:00Z"))["inside"]


def test_the_window_follows_daylight_saving_time():
    win = parse_window(["sun"], "02:30", "04:00", "Europe/Berlin")
    # 2026-03-29: clocks jump from 02:00 to 03:00 local; 01:45Z is 03:45 CEST, inside.
    assert check(win, at("2026-03-29T01:45:00Z"))["inside"]
    # In winter the same local window is an hour later in UTC.
    assert not check(win, at("2026-11-29T01:00:00Z"))["inside"]
    assert check(win, at("2026-11-29T02:00:00Z"))["inside"]


def test_no_window_configured_is_always_inside():
    assert check(parse_window([], "00:00", "00:00", "UTC"), at(WEDNESDAY_NOON))["inside"]


@pytest.mark.parametrize(
    ("days", "start", "end", "tz", "expected"),
    [
        (["funday"], "01:00", "02:00", "UTC", "window day 'funday' is not one of"),
        (["mon"], "1am", "02:00", "UTC", "window start '1am' is not a time of day"),
        (["mon"], "01:00", "25:00", "UTC", "window end '25:00' is not a time of day"),
        (["mon"], "01:00", "02:00", "Mars/Olympus", "'Mars/Olympus' is not an IANA time zone"),
        (["mon"], "03:00", "03:00", "UTC", "a window must last some time"),
    ],
)
def test_a_bad_window_is_refused_in_one_line(days, start, end, tz, expected):
    with pytest.raises(WindowError, match=expected.replace("(", r"\(")):
        parse_window(days, start, end, tz)


# --- live sessions ------------------------------------------------------------------------------------


@pytest.fixture
def monitor(pg: PgCluster):
    """The migration role may see other roles' sessions (pg_monitor), for this test only."""
    with contextlib.closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute(f"GRANT pg_monitor TO {MIGRATOR}")
    yield
    with contextlib.closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute(f"REVOKE pg_monitor FROM {MIGRATOR}")


def app_session(pg: PgCluster, dbname: str):
    conn = pg.connect(dbname, user=APP, password=APP_PASSWORD)
    conn.set_session(autocommit=False)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")  # now idle in transaction: it would hold up DDL
    return conn


def test_an_idle_in_transaction_session_is_named_and_the_wait_policy_sees_it_end(
    pg: PgCluster, dbname: str, monitor
):
    blocker = app_session(pg, dbname)
    pid = blocker.get_backend_pid()
    with contextlib.closing(pg.connect(dbname)) as conn:
        conn.autocommit = True
        found = activity.assess(conn, activity.Limits(blocker_policy="defer"))
        assert [b["pid"] for b in found["blockers"]] == [pid]
        assert f"pid {pid} ({APP}@127.0.0.1" in found["reasons"][0]

        threading.Timer(1.5, blocker.rollback).start()
        started = time.monotonic()
        waited = activity.assess(conn, activity.Limits(blocker_policy="wait", blocker_wait_seconds=20))
        assert waited["reasons"] == [] and 1 <= waited["waited_seconds"] < 10
        assert time.monotonic() - started < 10
    blocker.close()


def test_without_pg_monitor_the_blind_spot_is_a_warning_not_silence(pg: PgCluster, dbname: str):
    with contextlib.closing(app_session(pg, dbname)), contextlib.closing(pg.connect(dbname)) as conn:
        conn.autocommit = True
        found = activity.assess(conn, activity.Limits())
    assert found["warnings"] == [activity.BLIND] and found["reasons"] == []


def test_active_sessions_above_the_limit_are_a_reason(pg: PgCluster, dbname: str, monitor):
    busy = [pg.connect(dbname, user=APP, password=APP_PASSWORD) for _ in range(2)]
    workers = [threading.Thread(target=lambda c=c: c.cursor().execute("SELECT pg_sleep(3)")) for c in busy]
    for c, w in zip(busy, workers, strict=True):
        c.autocommit = True
        w.start()
    time.sleep(0.5)
    with contextlib.closing(pg.connect(dbname)) as conn:
        conn.autocommit = True
        found = activity.assess(conn, activity.Limits(sample_seconds=0.5, max_active_sessions=1))
    for c, w in zip(busy, workers, strict=True):
        w.join()
        c.close()
    assert found["traffic"]["active_sessions"] == 2
    assert "2 active sessions is above 1" in found["reasons"][0]


# --- migrate.yml --------------------------------------------------------------------------------------


def test_a_scheduled_run_outside_the_window_is_deferred_with_exit_0(
    pg: PgCluster, seeded_db: str, tmp_path: Path
):
    before = fingerprint(pg, seeded_db)
    extra = {**WEEKEND, "db_preflight_window_now": WEDNESDAY_NOON, "db_preflight_run_kind": "scheduled"}
    proc = migrate(pg, seeded_db, tmp_path, extra=extra)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert any(line.startswith("deferred: outside the maintenance window") for line in failure_lines(proc))
    assert compare(before, fingerprint(pg, seeded_db)) == []
    assert not list(tmp_path.glob("backups/*.dump"))
    (report,) = reports(tmp_path / "reports")
    assert report["outcome"] == "deferred"
    assert report["steps"]["window"]["window"]["next_opening"] == "2026-11-28T00:00:00Z"


def test_a_manual_run_outside_the_window_is_refused_and_changes_nothing(
    pg: PgCluster, seeded_db: str, tmp_path: Path
):
    before = fingerprint(pg, seeded_db)
    proc = migrate(pg, seeded_db, tmp_path, extra={**WEEKEND, "db_preflight_window_now": WEDNESDAY_NOON})
    assert proc.returncode != 0
    lines = failure_lines(proc)
    assert any(
        "refused: outside the maintenance window sat,sun 01:00-05:00 Europe/Berlin" in x for x in lines
    )
    assert compare(before, fingerprint(pg, seeded_db)) == []
    (report,) = reports(tmp_path / "reports")
    assert report["outcome"] == "refused"


def test_a_manual_override_migrates_and_the_terminate_policy_names_whom_it_cut(
    pg: PgCluster, seeded_db: str, tmp_path: Path, monitor
):
    blocker = app_session(pg, seeded_db)
    pid = blocker.get_backend_pid()
    extra = {
        **WEEKEND,
        "db_preflight_window_now": WEDNESDAY_NOON,
        "db_preflight_ignore_window": True,
        "db_preflight_blocker_policy": "terminate",
    }
    proc = migrate(pg, seeded_db, tmp_path, extra=extra)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert revision(pg, seeded_db) == "0005"
    assert "told to ignore it" in proc.stdout
    (report,) = reports(tmp_path / "reports")
    assert report["outcome"] == "succeeded"
    (cut,) = report["steps"]["window"]["terminated"]
    assert cut["pid"] == pid and cut["usename"] == APP and cut["terminated"] is True
    blocker.close()
