#!/usr/bin/python
"""Offline mode: take CONNECT away from the application for the run, and give it back afterwards."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_freeze
author: pg-migrate maintainers (@pgmigrate)
short_description: Revoke or restore the application's CONNECT on a database, terminating its sessions.
description:
  - With O(state=frozen) revokes CONNECT on O(database) from PUBLIC and from O(app_roles), then terminates
    every session whose role can no longer connect, and returns whom it terminated. What it revoked is
    written to O(state_file) first, so an interrupted run still knows whom to give CONNECT back to.
  - With O(state=thawed) grants CONNECT back to O(grantees) and to whatever O(state_file) remembers, by
    database name (it also reaches a database a restore swapped in), and removes the state file.
  - Fails when an application role can still connect after the freeze (through another role's grant).
options:
  state:
    description: C(frozen) or C(thawed).
    type: str
    choices: [frozen, thawed]
    required: true
  database:
    description: The database to freeze or thaw.
    type: str
    required: true
  app_roles:
    description: Application roles that must lose CONNECT (PUBLIC always does).
    type: list
    elements: str
    default: []
  grantees:
    description: For O(state=thawed), who gets CONNECT back (PUBLIC spelled C(PUBLIC)).
    type: list
    elements: str
    default: []
  state_file:
    description: File on the runner remembering whom the freeze revoked (0600); empty for none.
    type: str
    default: ""
  login_db:
    description: Database to connect to (the maintenance database, so a swapped-in database is reached).
    type: str
    required: true
  login_user:
    description: The migration role (owns the database, member of pg_signal_backend).
    type: str
    required: true
  login_password:
    description: The migration role's password (never logged or returned).
    type: str
    default: ""
extends_documentation_fragment:
  - pgmigrate.pipeline.pgconn
"""

EXAMPLES = r"""
- name: Take CONNECT away from the application.
  pgmigrate.pipeline.pg_freeze:
    state: frozen
    database: meetings
    app_roles: [meetings_app]
    state_file: /var/lib/pg-migrate/meetings.frozen
    login_db: postgres
    login_user: meetings_owner
    login_password: "{{ vault_db_migration_password }}"
"""

RETURN = r"""
duration_seconds:
  description: How long the module ran.
  type: float
  returned: success
revoked:
  description: Grantees whose CONNECT was revoked (frozen).
  type: list
  elements: str
  returned: state=frozen
terminated:
  description: Sessions terminated because their role lost CONNECT (pid, usename, client, application_name).
  type: list
  elements: dict
  returned: state=frozen
frozen_at:
  description: When CONNECT was taken away (UTC, ISO 8601; empty in check mode), the start of the
    application's
    maintenance window.
  type: str
  returned: state=frozen
granted:
  description: Grantees that got CONNECT back (thawed).
  type: list
  elements: str
  returned: state=thawed
thawed_at:
  description: When CONNECT came back (UTC, ISO 8601), empty when nobody needed it back.
  type: str
  returned: state=thawed
msg:
  description: One line saying what happened.
  type: str
  returned: always
"""

import time
from datetime import UTC, datetime

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.freeze import freeze, unfreeze
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import (
    CONN_ARGSPEC,
    ConnInfo,
    connect_or_fail,
    require_psycopg2,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["frozen", "thawed"], required=True),
            database=dict(type="str", required=True),
            app_roles=dict(type="list", elements="str", default=[]),
            grantees=dict(type="list", elements="str", default=[]),
            state_file=dict(type="str", default=""),
            **CONN_ARGSPEC,
        ),
        supports_check_mode=True,
    )
    started = time.monotonic()
    require_psycopg2(module)
    p = module.params
    ci = ConnInfo.from_params(p)
    what = "freeze of" if p["state"] == "frozen" else "giving CONNECT back on"
    prefix = f"{what} {p['database']} failed: "
    conn = connect_or_fail(module, ci, prefix=prefix)
    try:
        if p["state"] == "frozen":
            result = freeze(conn, p["database"], p["app_roles"], p["state_file"], module.check_mode)
            msg = f"{p['database']}: CONNECT revoked from {', '.join(result['revoked']) or 'nobody'}"
            msg += f"; {len(result['terminated'])} session(s) terminated"
            if result["still_allowed"]:
                msg = (
                    f"{p['database']}: cannot freeze: {', '.join(result['still_allowed'])} can still connect "
                    "(through another role's grant): revoke that grant or list the role in the freeze"
                )
                result["failed"] = True
        else:
            result = unfreeze(conn, p["database"], p["grantees"], p["state_file"], module.check_mode)
            given = ", ".join(result["granted"]) or "nobody (already had it)"
            msg = f"{p['database']}: CONNECT given back to {given}"
    except Exception as exc:  # psycopg2 errors too: one line, never a traceback
        module.fail_json(msg=f"{prefix}{p['state']} {p['database']}: {str(exc).strip().splitlines()[0]}")
    finally:
        conn.close()
    stamp = "" if module.check_mode else datetime.now(UTC).isoformat()
    if p["state"] == "frozen":
        result["frozen_at"] = stamp
    else:
        result["thawed_at"] = stamp if result["granted"] else ""
    if result.pop("failed", False):
        module.fail_json(msg=prefix + msg, **result)
    module.exit_json(msg=msg, **result, duration_seconds=round(time.monotonic() - started, 3))


if __name__ == "__main__":
    main()
