#!/usr/bin/python
"""One run per database: take or release the run's advisory lock, naming the holder on a conflict."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_run_lock
author: pg-migrate maintainers (@pgmigrate)
short_description: Take or release the advisory lock that allows one pipeline run per database.
description:
  - With O(state=acquired) starts a small holder process that connects as the migration role (password over
    its stdin, never argv) to the maintenance database, takes a session-level advisory lock keyed by the
    target database's name without waiting, and keeps its session open until O(token_file) is removed or
    the ansible-playbook it serves dies; its session closing releases the lock, so a killed run never
    leaves the database locked.
  - When another run holds the lock, fails at once with one line that starts
    C(pre-flight of <database> refused) and names the holder (pid, application name with its run id and
    runner host, client address, start time).
  - With O(state=released) removes the token file and ends the holder; idempotent.
options:
  state:
    description: C(acquired) or C(released).
    type: str
    choices: [acquired, released]
    required: true
  run_id:
    description: This run's id; the holder's application name carries it (and the runner's host name).
    type: str
    default: ""
  token_file:
    description: File on the runner that keeps the holder alive (0600, holds its pid).
    type: path
    required: true
  maintenance_db:
    description: Database the holder sits in (the target must stay free of sessions for snapshots and swaps).
    type: str
    default: postgres
extends_documentation_fragment:
  - pgmigrate.pipeline.pgconn
"""

EXAMPLES = r"""
- name: Take the run lock.
  pgmigrate.pipeline.pg_run_lock:
    state: acquired
    run_id: "{{ db_preflight_result.run_id }}"
    token_file: /var/lib/pg-migrate/meetings.runlock
    login_db: meetings
    login_user: meetings_owner
    login_password: "{{ vault_db_migration_password }}"
"""

RETURN = r"""
duration_seconds:
  description: How long the module ran.
  type: float
  returned: success
holder_pid:
  description: The runner-side process holding the lock (state=acquired).
  type: int
  returned: when acquired
token_file:
  description: The token file that keeps the holder alive (state=acquired); releasing the lock removes it.
  type: str
  returned: when acquired
holders:
  description: Sessions holding the lock when it could not be taken (pid, application_name, client, since).
  type: list
  elements: dict
  returned: on conflict
msg:
  description: One line saying what happened.
  type: str
  returned: always
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.activity import (
    ActivityError,
    acquire_run_lock,
    lock_holders,
    release_run_lock,
    run_lock_for,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import (
    CONN_ARGSPEC,
    ConnInfo,
    connect_or_fail,
    require_psycopg2,
)


def describe(holder: dict) -> str:
    name = holder["application_name"] or "no application name"
    return f"pid {holder['pid']} ({name}, from {holder['client']}, since {holder['since']})"


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["acquired", "released"], required=True),
            run_id=dict(type="str", default=""),
            token_file=dict(type="path", required=True),
            maintenance_db=dict(type="str", default="postgres"),
            **CONN_ARGSPEC,
        ),
        supports_check_mode=False,
    )
    started = time.monotonic()
    require_psycopg2(module)
    p = module.params
    if p["state"] == "released":
        released = release_run_lock(p["token_file"])
        module.exit_json(changed=released, msg="run lock released" if released else "no run lock held")
    ci = ConnInfo.from_params(p)
    prefix = f"pre-flight of {p['login_db']} refused: "
    try:
        got = acquire_run_lock(ci, p["run_id"], p["token_file"], p["maintenance_db"])
    except (ActivityError, OSError) as exc:
        module.fail_json(msg=prefix + str(exc))
    if got["locked"]:
        module.exit_json(
            changed=True,
            holder_pid=got["holder_pid"],
            token_file=p["token_file"],
            duration_seconds=round(time.monotonic() - started, 3),
            msg=f"run lock taken ({got['application_name']})",
        )
    conn = connect_or_fail(module, ci.with_db(p["maintenance_db"]), prefix=prefix)
    try:
        holders = lock_holders(conn, run_lock_for(p["login_db"]))
    finally:
        conn.close()
    # Hook: pipeline_history.runs has the holder's run under the run id its application name carries.
    who = "; ".join(describe(h) for h in holders) or "a session that has just let go (try again)"
    module.fail_json(msg=f"{prefix}another run holds the run lock on {p['login_db']}: {who}", holders=holders)


if __name__ == "__main__":
    main()
