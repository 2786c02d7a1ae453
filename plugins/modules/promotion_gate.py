#!/usr/bin/python
"""The promotion gate: production takes only what staging already took, unchanged, and survived."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: promotion_gate
author: pg-migrate maintainers (@pgmigrate)
short_description: Refuse a production run unless staging's history shows the same chain succeeded there.
description:
  - Connects to staging's database read-only (every transaction is READ ONLY) and reads its
    C(pipeline_history.runs).
  - Refuses, naming everything that is missing, unless staging has a succeeded run to O(target_revision) that
    finished at least O(soak_seconds) ago, and staging applied every revision of O(pending) from a file whose
    sha256 equals the file on disk now.
  - Nothing pending passes (there is nothing to promote). O(override) with a reason lets a refused gate pass;
    the verdict, problems and reason are returned for the history row.
  - Never writes anywhere; C(changed) is always false.
options:
  alembic_config:
    description: The Alembic project's alembic.ini; the pending revisions' files are checksummed.
    type: path
    required: true
  target_revision:
    description: The revision production goes to.
    type: str
    required: true
  pending:
    description: The revisions production would apply.
    type: list
    elements: str
    required: true
  soak_seconds:
    description: How long ago staging must have succeeded at least.
    type: int
    default: 0
  override:
    description: The operator's reason to promote although the gate refuses (recorded in history).
    type: str
    default: ""
  login_host:
    description: Staging's database server host.
    type: str
    default: 127.0.0.1
  login_port:
    description: Staging's database server port.
    type: int
    default: 5432
  login_db:
    description: Staging's database.
    type: str
    required: true
  login_user:
    description: A role that can read C(pipeline_history.runs) on staging.
    type: str
    required: true
  login_password:
    description: Its password (never logged or returned).
    type: str
    default: ""
  connect_timeout:
    description: Seconds to wait for a connection.
    type: int
    default: 10
"""

EXAMPLES = r"""
- name: Check staging took the same chain.
  pgmigrate.pipeline.promotion_gate:
    alembic_config: /srv/app/alembic.ini
    target_revision: "0005"
    pending: ["0002", "0003"]
    soak_seconds: 86400
    login_host: staging-db.internal
    login_db: meetings
    login_user: meetings_owner
    login_password: "{{ vault_db_preflight_gate_staging_password }}"
"""

RETURN = r"""
duration_seconds:
  description: How long the module ran.
  type: float
  returned: success
passed:
  description: Whether production may go on (also true when overridden).
  type: bool
  returned: always
overridden:
  description: Whether the gate refused and O(override) let it pass.
  type: bool
  returned: always
problems:
  description: What staging's history is missing, one line each.
  type: list
  elements: str
  returned: always
staging_run_id:
  description: The staging run that first reached the target, when there is one.
  type: str
  returned: always
override:
  description: The operator's reason when it let a refused gate pass (recorded in history), else empty.
  type: str
  returned: always
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.alembic_runner import (
    MigrationError,
    revision_checksums,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.history import gate_problems
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import (
    CONN_ARGSPEC,
    ConnInfo,
    connect_or_fail,
    require_psycopg2,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            alembic_config=dict(type="path", required=True),
            target_revision=dict(type="str", required=True),
            pending=dict(type="list", elements="str", required=True),
            soak_seconds=dict(type="int", default=0),
            override=dict(type="str", default=""),
            **CONN_ARGSPEC,
        ),
        supports_check_mode=True,
    )
    started = time.monotonic()
    require_psycopg2(module)
    p = module.params
    verdict = {"passed": False, "overridden": False, "problems": [], "staging_run_id": None, "override": ""}
    if not p["pending"]:
        module.exit_json(changed=False, **{**verdict, "passed": True}, duration_seconds=0.0)
    ci = ConnInfo.from_params(p)
    try:
        on_disk = revision_checksums(p["alembic_config"], p["pending"])
    except MigrationError as exc:
        module.fail_json(msg=f"promotion gate: {exc}", **verdict)
    conn = connect_or_fail(
        module,
        ci,
        prefix="promotion gate: staging history: ",
        fail_extra=verdict,
        options="-c default_transaction_read_only=on",
    )
    try:
        problems, facts = gate_problems(conn, p["target_revision"], p["pending"], on_disk, p["soak_seconds"])
    except Exception as exc:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        module.fail_json(
            msg=f"promotion gate: cannot read staging's history at {ci.describe()}: {text}", **verdict
        )
    finally:
        conn.close()
    verdict.update(problems=problems, staging_run_id=facts["staging_run_id"])
    if problems and not p["override"].strip():
        module.fail_json(
            msg="promotion gate refused: "
            + "; ".join(problems)
            + " (to promote anyway: -e promotion_override='<reason>', recorded in history)",
            **verdict,
        )
    verdict.update(passed=True, overridden=bool(problems), override=p["override"].strip() if problems else "")
    module.exit_json(changed=False, **verdict, duration_seconds=round(time.monotonic() - started, 3))


if __name__ == "__main__":
    main()
