#!/usr/bin/python
"""Pre-flight of a migration: read the chain and the database, refuse a bad plan, change nothing."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: alembic_status
author: pg-migrate maintainers (@pgmigrate)
short_description: Plan an Alembic upgrade from the chain and the database's revision, changing nothing.
description:
  - Reads the chain of the Alembic project at O(alembic_config) in-process (no database needed), connects as
    the migration role, reads the current revision (no version table means C(base)) and works out the
    revisions an upgrade to O(target) would apply.
  - Refuses, with one line each, a database at a revision the chain does not contain, a target the chain
    does not contain, a chain with several heads, a target behind the current revision (downgrades are not
    this module's business), and a connection that fails (wrong password, unreachable server).
  - Never writes to the database; C(changed) is always false.
  - Returns the run's facts that every later step uses (run id, environment, database, mode, revisions).
  - A refusal fails the task with one line starting C(pre-flight of <database> refused:).
options:
  session_settings:
    description: Settings the migration's sessions will use (C(lock_timeout), C(statement_timeout)), name to
      value; each is parsed by the server now, in a transaction rolled back at once, so a bad value is refused
      before anything runs. Empty values are skipped.
    type: dict
    default: {}
  alembic_config:
    description: The project's C(alembic.ini); a relative C(script_location) is read from its directory.
    type: path
    required: true
  target:
    description: The revision to reach, C(head) or a full revision id of the chain.
    type: str
    default: head
  version_table:
    description: Alembic's version table (as the project's env.py names it).
    type: str
    default: alembic_version
  run_id:
    description: Identifier of this run; empty makes one (UTC timestamp plus 6 random hex digits).
    type: str
    default: ""
  environment:
    description: The environment the database belongs to, handed on with the plan.
    type: str
    default: ""
  run_kind:
    description: C(manual) (an operator's run) or C(scheduled) (a timer's), handed on with the plan.
    type: str
    choices: [manual, scheduled]
    default: manual
  mode:
    description: C(online) (the application keeps writing) or C(offline) (it loses CONNECT), handed on.
    type: str
    choices: [online, offline]
    default: online
extends_documentation_fragment:
  - pgmigrate.pipeline.pgconn
"""

EXAMPLES = r"""
- name: Plan the upgrade to head.
  pgmigrate.pipeline.alembic_status:
    alembic_config: /srv/app/alembic.ini
    login_host: 127.0.0.1
    login_port: 5432
    login_db: meetings
    login_user: meetings_owner
    login_password: "{{ vault_db_migration_password }}"
  register: plan
"""

RETURN = r"""
run_id:
  description: Identifier of this run.
  type: str
  returned: success
  sample: 20261125T142233Z-3fa9c1
environment:
  description: The environment, as given.
  type: str
  returned: success
database:
  description: The target database.
  type: str
  returned: success
run_kind:
  description: C(manual) or C(scheduled), as given.
  type: str
  returned: success
mode:
  description: C(online) or C(offline), as given.
  type: str
  returned: success
alembic_config:
  description: The absolute path of the project's C(alembic.ini).
  type: str
  returned: success
current_revision:
  description: The database's revision, C(base) when it has none.
  type: str
  returned: success
  sample: "0001"
target_revision:
  description: The target, resolved (C(head) becomes the head's id).
  type: str
  returned: success
  sample: "0005"
pending:
  description: Revisions an upgrade would apply, in order.
  type: list
  elements: str
  returned: success
  sample: ["0002", "0003"]
chain:
  description: Every revision of the chain, base to head.
  type: list
  elements: str
  returned: success
server_version:
  description: PostgreSQL server version.
  type: str
  returned: success
  sample: "15.19"
database_size_bytes:
  description: Size of the database in bytes.
  type: int
  returned: success
database_size:
  description: Size of the database, human-readable.
  type: str
  returned: success
  sample: 42 MB
duration_seconds:
  description: How long the pre-flight took.
  type: float
  returned: success
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.alembic_runner import (
    exit_module,
    new_run_id,
    preflight,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import (
    CONN_ARGSPEC,
    ConnInfo,
    require_psycopg2,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            alembic_config=dict(type="path", required=True),
            target=dict(type="str", default="head"),
            version_table=dict(type="str", default="alembic_version"),
            run_id=dict(type="str", default=""),
            environment=dict(type="str", default=""),
            run_kind=dict(type="str", choices=["manual", "scheduled"], default="manual"),
            mode=dict(type="str", choices=["online", "offline"], default="online"),
            session_settings=dict(type="dict", default={}),
            **CONN_ARGSPEC,
        ),
        supports_check_mode=True,
    )
    require_psycopg2(module)
    p = module.params
    exit_module(
        module,
        lambda: {
            "changed": False,
            "failed": False,
            "run_id": p["run_id"] or new_run_id(),
            "environment": p["environment"],
            "database": p["login_db"],
            "run_kind": p["run_kind"],
            "mode": p["mode"],
            **preflight(
                p["alembic_config"],
                ConnInfo.from_params(p),
                p["target"],
                p["version_table"],
                {str(k): str(v) for k, v in p["session_settings"].items()},
            ),
        },
        prefix=f"pre-flight of {p['login_db']} refused: ",
    )


if __name__ == "__main__":
    main()
