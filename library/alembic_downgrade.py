#!/usr/bin/python
"""Downgrade a database to the revision a failed online run started from, and prove the schema is back."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: alembic_downgrade
short_description: Undo the revisions a failed run applied, with the real Alembic CLI, newest first.
description:
  - The online-mode rescue. Runs C(python -m alembic -c <config> downgrade <parent>) for each revision above
    O(target), newest first, timing each, with a URL without password in C(DATABASE_URL) and a private
    PGPASSFILE.
  - Then checks that the database is at O(target) and, given O(expected_schema), that its schema fingerprint
    (every column, index and constraint outside the system and history schemas) equals the one taken before
    the run. A revision that failed half-way is not recorded by Alembic, so nothing downgrades it; this check
    is what notices what it left behind.
  - Fails (with C(downgraded), C(revision_after) and one line saying why) when a downgrade fails or the
    schema differs; the caller restores the backup then.
  - Lists in C(lossy) the downgrades whose revision docstring calls them LOSSY (its C(Downgrade) paragraph).
options:
  target:
    description: The revision to go back to (the run's starting revision), or C(base).
    type: str
    required: true
  expected_schema:
    description: Schema fingerprint from before the run (C(schema_fingerprint_before) of M(alembic_upgrade));
      empty skips the schema check.
    type: str
    default: ""
  login_db:
    description: The target database.
    type: str
    required: true
  login_user:
    description: The migration role.
    type: str
    required: true
  login_password:
    description: The migration role's password (goes to Alembic through a private PGPASSFILE only).
    type: str
    default: ""
extends_documentation_fragment:
  - alembic_cli
  - pgconn
"""

EXAMPLES = r"""
- name: Downgrade to the revision the run started from.
  alembic_downgrade:
    alembic_config: /srv/app/alembic.ini
    target: "0001"
    expected_schema: "{{ db_migrate_result.schema_fingerprint_before }}"
    login_db: meetings
    login_user: meetings_owner
    login_password: "{{ vault_db_migration_password }}"
  no_log: true
  register: downgrade
"""

RETURN = r"""
revision_before:
  description: The database's revision before the downgrade.
  type: str
  returned: always
revision_after:
  description: The database's revision after it (where it stopped, on failure).
  type: str
  returned: always
downgraded:
  description: Revisions downgraded, newest first, each with its duration and its docstring's downgrade note.
  type: list
  elements: dict
  returned: always
  sample: [{"revision": "0004", "seconds": 0.4, "note": "LOSSY - drops the column ..."}]
lossy:
  description: The downgraded revisions whose note says LOSSY (data written since the upgrade is lost there).
  type: list
  elements: dict
  returned: always
schema_matches:
  description: Whether the schema equals O(expected_schema) (null when not checked).
  type: bool
  returned: always
duration_seconds:
  description: How long the module ran.
  type: float
  returned: always
"""

from ansible.module_utils.alembic_runner import Options, downgrade, exit_module
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.checksums import schema_fingerprint  # noqa: F401 - shipped for the runner's import
from ansible.module_utils.pgconn import CONN_ARGSPEC, ConnInfo, require_psycopg2


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            alembic_config=dict(type="path", required=True),
            target=dict(type="str", required=True),
            expected_schema=dict(type="str", default=""),
            lock_timeout=dict(type="str", default=""),
            statement_timeout=dict(type="str", default=""),
            batch_size=dict(type="int", default=0),
            batch_sleep=dict(type="str", default=""),
            progress_file=dict(type="path", default=""),
            version_table=dict(type="str", default="alembic_version"),
            **CONN_ARGSPEC,
        ),
        supports_check_mode=False,
    )
    require_psycopg2(module)
    p = module.params
    exit_module(
        module,
        lambda: downgrade(
            p["alembic_config"],
            ConnInfo.from_params(p),
            target=p["target"],
            expected_schema=p["expected_schema"],
            options=Options(
                lock_timeout=p["lock_timeout"] or None,
                statement_timeout=p["statement_timeout"] or None,
                batch_size=p["batch_size"] or None,
                batch_sleep=p["batch_sleep"] or None,
            ),
            progress_file=p["progress_file"] or None,
            version_table=p["version_table"],
        ),
    )


if __name__ == "__main__":
    main()
