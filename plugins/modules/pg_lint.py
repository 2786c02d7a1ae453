#!/usr/bin/python
"""The linter gate: squawk on the pending revisions' offline SQL, refusing unapproved violations."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_lint
author: pg-migrate maintainers (@pgmigrate)
short_description: Lint the pending revisions' offline SQL with squawk and refuse unapproved violations.
description:
  - Renders each pending revision's SQL offline (C(alembic upgrade prev:rev --sql), no database touched) and
    runs squawk on it. Approval lives in the revision file, per statement, as a
    C(-- squawk-ignore <rules> -- <reason>) line above the statement; an ignore without a reason is a
    violation, and so is a revision that cannot be rendered offline.
  - With O(enforce=true) (production) fails naming each violation's revision, statement and rule; otherwise
    returns them as warnings. Never needs a password; C(changed) is always false.
options:
  alembic_config:
    description: The project's C(alembic.ini).
    type: path
    required: true
  current_revision:
    description: The database's revision (C(base) when never migrated), from the pre-flight.
    type: str
    required: true
  target_revision:
    description: The revision the run goes to, from the pre-flight.
    type: str
    required: true
  pending:
    description: The revisions the run applies, in order, from the pre-flight.
    type: list
    elements: str
    required: true
  squawk:
    description: The squawk executable.
    type: str
    default: squawk
  enforce:
    description: Fail on any violation (production); false only reports them.
    type: bool
    default: true
  login_host:
    description: Database server host (only written into the offline URL).
    type: str
    default: 127.0.0.1
  login_port:
    description: Database server port (only written into the offline URL).
    type: int
    default: 5432
  login_db:
    description: The target database (only written into the offline URL).
    type: str
    required: true
  login_user:
    description: The migration role (only written into the offline URL).
    type: str
    required: true
  login_password:
    description: Not needed; accepted for symmetry with the other modules.
    type: str
    default: ""
  connect_timeout:
    description: Unused (nothing connects).
    type: int
    default: 10
"""

EXAMPLES = r"""
- name: Lint the pending revisions.
  pgmigrate.pipeline.pg_lint:
    alembic_config: /srv/app/alembic.ini
    current_revision: "0001"
    target_revision: "0005"
    pending: ["0002", "0003", "0004", "0005"]
    enforce: true
    login_db: meetings
    login_user: meetings_owner
"""

RETURN = r"""
duration_seconds:
  description: How long the module ran.
  type: float
  returned: success
violations:
  description: Each unapproved finding (revision, rule, statement, message).
  type: list
  elements: dict
  returned: success
revisions:
  description: Per revision, its violations and approvals (rules, reason).
  type: list
  elements: dict
  returned: success
msg:
  description: One line per violation, or that the SQL is clean.
  type: str
  returned: always
"""

import sys
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.alembic_runner import BASE, MigrationError
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.lint import LintError, describe, lint
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import CONN_ARGSPEC, ConnInfo


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            alembic_config=dict(type="path", required=True),
            current_revision=dict(type="str", required=True),
            target_revision=dict(type="str", required=True),
            pending=dict(type="list", elements="str", required=True),
            squawk=dict(type="str", default="squawk"),
            enforce=dict(type="bool", default=True),
            **CONN_ARGSPEC,
        ),
        supports_check_mode=True,
    )
    started = time.monotonic()
    p = module.params
    current = None if p["current_revision"] == BASE else p["current_revision"]
    try:
        found = lint(
            p["alembic_config"],
            ConnInfo.from_params(p),
            current,
            p["target_revision"],
            p["pending"],
            p["squawk"],
            python=sys.executable,
        )
    except (LintError, MigrationError) as exc:
        module.fail_json(msg=f"lint gate: {exc}")
    lines = [describe(v) for v in found["violations"]]
    if lines and p["enforce"]:
        module.fail_json(msg="lint gate refused: " + "; ".join(lines), **found)
    msg = "; ".join(lines) if lines else f"squawk: {', '.join(p['pending']) or 'nothing'} clean or approved"
    module.exit_json(changed=False, msg=msg, **found, duration_seconds=round(time.monotonic() - started, 3))


if __name__ == "__main__":
    main()
