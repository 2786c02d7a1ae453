#!/usr/bin/python
"""Downgrade a database to the revision a failed online run started from, and prove the schema is back."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: alembic_downgrade
author: pg-migrate maintainers (@pgmigrate)
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
  - Refuses before running anything when the failed revision committed work outside its transaction, or when
    there is no schema fingerprint to prove the result against. Every failure is one line starting
    C(downgrade of <database> failed:).
options:
  target:
    description: The revision to go back to (the run's starting revision), or C(base).
    type: str
    required: true
  expected_schema:
    description: Schema fingerprint from before the run (C(schema_fingerprint_before) of
      M(pgmigrate.pipeline.alembic_upgrade)). Empty is refused (nothing to prove the schema is back against)
      unless O(check_schema=false).
    type: str
    default: ""
  check_schema:
    description: Prove the schema against O(expected_schema) after the downgrades; false only for a downgrade
      an operator runs by hand and checks otherwise.
    type: bool
    default: true
  failed_revision:
    description: The revision whose upgrade failed (C(failed_revision) of
      M(pgmigrate.pipeline.alembic_upgrade)).
    type: str
    default: ""
  failed_revision_committed:
    description: Whether that revision had committed work outside its transaction (an autocommit block) before
      it failed. Such a downgrade is refused, since Alembic has no record of that work and no downgrade
      undoes it.
    type: bool
    default: false
extends_documentation_fragment:
  - pgmigrate.pipeline.alembic_cli
  - pgmigrate.pipeline.pgconn
"""

EXAMPLES = r"""
- name: Downgrade to the revision the run started from.
  pgmigrate.pipeline.alembic_downgrade:
    alembic_config: /srv/app/alembic.ini
    target: "0001"
    expected_schema: "{{ db_migrate_result.schema_fingerprint_before }}"
    login_db: meetings
    login_user: meetings_owner
    login_password: "{{ vault_db_migration_password }}"
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.alembic_runner import (
    Options,
    downgrade,
    exit_module,
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
            target=dict(type="str", required=True),
            expected_schema=dict(type="str", default=""),
            check_schema=dict(type="bool", default=True),
            failed_revision=dict(type="str", default=""),
            failed_revision_committed=dict(type="bool", default=False),
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
    prefix = f"downgrade of {p['login_db']} failed: "
    if p["failed_revision_committed"]:
        module.fail_json(
            msg=f"{prefix}not downgrading: revision {p['failed_revision'] or '(unknown)'} committed work "
            "outside its transaction before it failed, and no downgrade records or undoes that"
        )
    if p["check_schema"] and not p["expected_schema"]:
        module.fail_json(
            msg=f"{prefix}not downgrading: the migration step recorded no schema fingerprint from before "
            "the run"
        )
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
        prefix=prefix,
    )


if __name__ == "__main__":
    main()
