#!/usr/bin/python
"""Read-only smoke checks of a migrated database, each named, all reported."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_smoke
author: pg-migrate maintainers (@pgmigrate)
short_description: Run named, read-only smoke checks against a migrated database.
description:
  - Built-in checks, each named in the result - C(app_role_connects) (the application role logs in and runs
    C(SELECT 1)), C(revision_is_target), C(indexes_valid) (no invalid or not-ready index in user schemas),
    C(constraints_validated) (no NOT VALID constraint), C(no_rows_lost) (every table of the backup manifest
    has at least its backed-up rows unless listed in O(row_count_changes)).
  - User queries (O(queries)) run as the application role in a READ ONLY transaction with
    O(statement_timeout); an SQL error is a failed check named C(query:<name>), not a crash.
  - Never changes anything; returns every check with C(ok) and C(detail), the names of failed ones and one
    summary line per check. Fails when a check fails, with every check as data and one line that starts
    C(<N> smoke check(s) failed on <database>) and names each failed check with its detail; fails with one
    line that starts C(smoke checks of <database> could not run) for unusable input (a malformed query, an
    unreadable manifest) or when the migration role cannot connect.
options:
  target_revision:
    description: The revision the database must be at.
    type: str
    required: true
  app_user:
    description: The application role.
    type: str
    required: true
  app_password:
    description: The application role's password.
    type: str
    default: ""
  manifest:
    description: Path of the backup manifest JSON; empty skips C(no_rows_lost) with a note.
    type: path
    default: ""
  row_count_changes:
    description: Tables (C(name) or C(schema.name)) whose row count may shrink, to a reason.
    type: dict
    default: {}
  queries:
    description:
      - User queries, each C({name, sql, expect}).
      - "C(expect) is one of C({rows: N}), C({scalar: V}), C({no_rows: true})."
    type: list
    elements: raw
    default: []
  statement_timeout:
    description: statement_timeout for each user query.
    type: str
    default: 30s
  version_table:
    description: Alembic's version table.
    type: str
    default: alembic_version
extends_documentation_fragment:
  - pgmigrate.pipeline.pgconn
"""

EXAMPLES = r"""
- name: Smoke-test the migrated database.
  pgmigrate.pipeline.pg_smoke:
    target_revision: "0005"
    app_user: meetings_app
    app_password: "{{ vault_db_app_password }}"
    manifest: /var/backups/pg-migrate/staging__meetings__20261125T142233Z__0001.json
    queries:
      - name: recent meetings exist
        sql: SELECT 1 FROM meetings WHERE starts_at > now() - interval '30 days' LIMIT 1
        expect: {rows: 1}
    login_db: meetings
    login_user: meetings_owner
    login_password: "{{ vault_db_migration_password }}"
  register: smoke
"""

RETURN = r"""
checks:
  description: Every check, built-ins first, each with name, ok and detail.
  type: list
  elements: dict
  returned: success
  sample: [{"name": "indexes_valid", "ok": false, "detail": "1 unusable index(es): public.ix (invalid)"}]
failed_checks:
  description: Names of the failed checks.
  type: list
  elements: str
  returned: success
passed:
  description: How many checks passed.
  type: int
  returned: success
summary:
  description: One line per check, C(ok) or C(FAIL), then the check's name and its detail.
  type: list
  elements: str
  returned: success
duration_seconds:
  description: How long the checks took.
  type: float
  returned: success
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import (
    CONN_ARGSPEC,
    ConnInfo,
    require_psycopg2,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.smoke import SmokeSpecError, run_checks


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            target_revision=dict(type="str", required=True),
            app_user=dict(type="str", required=True),
            app_password=dict(type="str", default="", no_log=True),
            manifest=dict(type="path", default=""),
            row_count_changes=dict(type="dict", default={}),
            queries=dict(type="list", elements="raw", default=[]),
            statement_timeout=dict(type="str", default="30s"),
            version_table=dict(type="str", default="alembic_version"),
            **CONN_ARGSPEC,
        ),
        supports_check_mode=True,
    )
    require_psycopg2(module)
    p = module.params
    try:
        result = run_checks(
            ConnInfo.from_params(p),
            app_user=p["app_user"],
            app_password=p["app_password"],
            target_revision=p["target_revision"],
            manifest_path=p["manifest"],
            row_count_changes=p["row_count_changes"],
            queries=p["queries"],
            statement_timeout=p["statement_timeout"],
            version_table=p["version_table"],
        )
    except SmokeSpecError as exc:
        module.fail_json(msg=f"smoke checks of {p['login_db']} could not run: {exc}")
    failed = [c for c in result["checks"] if not c["ok"]]
    result["summary"] = [
        f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}" for c in result["checks"]
    ]
    if failed:
        named = "; ".join(f"{c['name']} ({c['detail']})" for c in failed)
        module.fail_json(msg=f"{len(failed)} smoke check(s) failed on {p['login_db']}: {named}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
