#!/usr/bin/python
"""Decide whether a migration may start now: maintenance window, traffic, blocking sessions, standbys."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: db_window
author: pg-migrate maintainers (@pgmigrate)
short_description: Decide whether a migration may start now (window, traffic, blockers, standbys).
description:
  - Checks the maintenance window (weekdays and hours in an IANA time zone), samples the database's
    transaction rate and active sessions, finds sessions whose open transaction would block DDL, and reads
    the standbys' replay lag.
  - Returns a verdict, C(go), C(defer) (a scheduled run ends quietly and is reported) or C(refuse) (a manual
    run stops), with one reason per failed check. A verdict other than C(go) fails the task, with the
    verdict and every reason as data and one line that starts C(deferred) (a scheduled run) or
    C(pre-flight of <database> refused) and gives every reason; so does a check that cannot be made (bad
    window, no connection). The migration role needs pg_monitor (or pg_read_all_stats) to see other roles'
    sessions; without it, blockers and active sessions are not checked and a warning says so.
  - With O(blocker_policy=terminate) terminates the blocking sessions and returns whom (not in check mode);
    each terminated session is also a warning.
options:
  window_days:
    description: Weekdays the window opens on (mon..sun); empty means no window (always inside).
    type: list
    elements: str
    default: []
  window_start:
    description: Opening time of day, HH:MM, in O(window_timezone).
    type: str
    default: "00:00"
  window_end:
    description: Closing time of day, HH:MM; not after the start means the window runs past midnight.
    type: str
    default: "00:00"
  window_timezone:
    description: IANA time zone of the window.
    type: str
    default: UTC
  now:
    description: ISO 8601 instant to judge instead of the clock (rehearsals and tests); empty for the clock.
    type: str
    default: ""
  run_kind:
    description: C(scheduled) defers when a check fails; C(manual) refuses.
    type: str
    choices: [manual, scheduled]
    default: manual
  ignore_window:
    description: A manual run told to go ahead outside the window (the other checks still apply).
    type: bool
    default: false
  sample_seconds:
    description: Seconds over which the transaction rate is sampled.
    type: float
    default: 3
  max_tps:
    description: Defer above this many transactions per second; 0 switches the check off.
    type: float
    default: 0
  max_active_sessions:
    description: Defer above this many active sessions (other than ours); 0 switches the check off.
    type: int
    default: 0
  max_xact_age_seconds:
    description: A transaction open longer than this (or any idle-in-transaction session) would block DDL.
    type: float
    default: 300
  blocker_policy:
    description: What to do about blocking sessions, C(wait) up to O(blocker_wait_seconds), C(defer) or
      C(terminate).
    type: str
    choices: [wait, defer, terminate]
    default: defer
  blocker_wait_seconds:
    description: How long the C(wait) policy waits for blockers to end.
    type: float
    default: 60
  max_replication_lag_seconds:
    description: Defer when a standby replays further behind than this; 0 switches the check off.
    type: float
    default: 0
extends_documentation_fragment:
  - pgmigrate.pipeline.pgconn
"""

EXAMPLES = r"""
- name: Decide whether the scheduled run may start.
  pgmigrate.pipeline.db_window:
    window_days: [sat, sun]
    window_start: "02:00"
    window_end: "05:00"
    window_timezone: Europe/Berlin
    run_kind: scheduled
    max_tps: 50
    login_db: meetings
    login_user: meetings_owner
    login_password: "{{ vault_db_migration_password }}"
  register: verdict
"""

RETURN = r"""
verdict:
  description: C(go), C(defer) or C(refuse).
  type: str
  returned: success
reasons:
  description: One line per failed check.
  type: list
  elements: str
  returned: success
window:
  description: The window verdict (inside, window, now, local_time, closes_at or next_opening).
  type: dict
  returned: success
traffic:
  description: tps, active_sessions, sample_seconds (empty when both checks are off).
  type: dict
  returned: success
blockers:
  description: Sessions still blocking DDL (pid, usename, client, application_name, state, xact_age_seconds).
  type: list
  elements: dict
  returned: success
terminated:
  description: Sessions the terminate policy ended, each with C(terminated) true or false.
  type: list
  elements: dict
  returned: success
replication:
  description: standbys and max_replay_lag_seconds.
  type: dict
  returned: success
unchecked:
  description: Checks that could not be made (a migration role without pg_monitor), one line each.
  type: list
  elements: str
  returned: success
msg:
  description: One line saying the verdict and why.
  type: str
  returned: always
run_kind:
  description: C(manual) or C(scheduled), as given.
  type: str
  returned: success
duration_seconds:
  description: How long the checks took.
  type: float
  returned: success
"""

import json
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.activity import ActivityError, Limits, assess
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import (
    CONN_ARGSPEC,
    ConnInfo,
    connect_or_fail,
    require_psycopg2,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.window import (
    WindowError,
    check,
    parse_now,
    parse_window,
)


def decide(window: dict, reasons: list[str], run_kind: str, ignore_window: bool) -> tuple[str, list[str]]:
    """go, defer or refuse: a scheduled run waits for a better time, a manual one is told why not."""
    why = list(reasons)
    if not window["inside"]:
        where = f"outside the maintenance window {window['window']} (now {window['local_time']}"
        where += f", next opening {window['next_opening']})" if window.get("next_opening") else ")"
        if not (run_kind == "manual" and ignore_window):
            why.insert(0, where)
    if not why:
        return "go", []
    return ("defer" if run_kind == "scheduled" else "refuse"), why


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            window_days=dict(type="list", elements="str", default=[]),
            window_start=dict(type="str", default="00:00"),
            window_end=dict(type="str", default="00:00"),
            window_timezone=dict(type="str", default="UTC"),
            now=dict(type="str", default=""),
            run_kind=dict(type="str", choices=["manual", "scheduled"], default="manual"),
            ignore_window=dict(type="bool", default=False),
            sample_seconds=dict(type="float", default=3),
            max_tps=dict(type="float", default=0),
            max_active_sessions=dict(type="int", default=0),
            max_xact_age_seconds=dict(type="float", default=300),
            blocker_policy=dict(type="str", choices=["wait", "defer", "terminate"], default="defer"),
            blocker_wait_seconds=dict(type="float", default=60),
            max_replication_lag_seconds=dict(type="float", default=0),
            **CONN_ARGSPEC,
        ),
        supports_check_mode=True,
    )
    require_psycopg2(module)
    p = module.params
    started = time.monotonic()
    try:
        win = parse_window(p["window_days"], p["window_start"], p["window_end"], p["window_timezone"])
        window = check(win, parse_now(p["now"]))
    except WindowError as exc:
        module.fail_json(msg=f"pre-flight of {p['login_db']} refused: {exc}")
    ci = ConnInfo.from_params(p)
    conn = connect_or_fail(module, ci, prefix=f"pre-flight of {p['login_db']} refused: ")
    limits = Limits(
        sample_seconds=p["sample_seconds"],
        max_tps=p["max_tps"],
        max_active_sessions=p["max_active_sessions"],
        max_xact_age_seconds=p["max_xact_age_seconds"],
        blocker_policy=p["blocker_policy"],
        blocker_wait_seconds=p["blocker_wait_seconds"],
        max_replication_lag_seconds=p["max_replication_lag_seconds"],
    )
    try:
        found = assess(conn, limits, check_mode=module.check_mode)
    except ActivityError as exc:
        module.fail_json(msg=f"pre-flight of {p['login_db']} refused: {exc}")
    finally:
        conn.close()
    verdict, reasons = decide(window, found["reasons"], p["run_kind"], p["ignore_window"])
    msg = "may start now"
    if verdict == "defer":
        msg = "deferred: " + "; ".join(reasons)
    elif verdict != "go":
        msg = f"pre-flight of {p['login_db']} refused: " + "; ".join(reasons)
    elif not window["inside"]:
        msg += " (outside the window, told to ignore it)"
    for session in found["terminated"]:
        module.warn(f"terminated a session that would block DDL on {p['login_db']}: {json.dumps(session)}")
    for unchecked in found["warnings"]:
        module.warn(f"{p['login_db']}: {unchecked}")
    end = module.exit_json if verdict == "go" else module.fail_json
    end(
        changed=bool(found["terminated"]),
        verdict=verdict,
        reasons=reasons,
        window=window,
        traffic=found["traffic"],
        blockers=found["blockers"],
        terminated=found["terminated"],
        waited_seconds=found["waited_seconds"],
        replication=found["replication"],
        unchecked=found["warnings"],
        run_kind=p["run_kind"],
        duration_seconds=round(time.monotonic() - started, 3),
        msg=msg,
    )


if __name__ == "__main__":
    main()
