#!/usr/bin/python
"""Read-only per-table fingerprint, optionally compared with a backup manifest."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_fingerprint
author: pg-migrate maintainers (@pgmigrate)
short_description: Fingerprint every table of a database and compare it with a backup manifest.
description:
  - For every ordinary table of every non-system schema, the row count and an order-independent checksum
    of the rows' text form, in one REPEATABLE READ read-only transaction with pinned DateStyle, TimeZone,
    IntervalStyle, extra_float_digits and bytea_output (see module_utils/fingerprint.py).
  - With O(manifest), also reports the differences; it does not fail on them (O(fail_on_difference) does).
  - Never changes anything.
options:
  manifest:
    description: Backup manifest whose C(tables) to compare with; empty compares nothing.
    type: path
    default: ""
  fail_on_difference:
    description: Fail when the fingerprint differs from the manifest's.
    type: bool
    default: false
  login_db:
    description: The database to fingerprint.
    type: str
    required: true
  login_user:
    description: A role that can read every table (the migration role).
    type: str
    required: true
  login_password:
    description: That role's password.
    type: str
    default: ""
extends_documentation_fragment:
  - pgmigrate.pipeline.pgconn
"""

EXAMPLES = r"""
- name: Prove the database still holds what the backup holds.
  pgmigrate.pipeline.pg_fingerprint:
    manifest: /var/backups/pg-migrate/staging__meetings__20261125T142233Z__0001.json
    fail_on_difference: true
    login_db: meetings
    login_user: meetings_owner
    login_password: "{{ vault_db_migration_password }}"
"""

RETURN = r"""
tables:
  description: Per table (C(schema.table)) its C(rows) and C(checksum).
  type: dict
  returned: success
differences:
  description: One line per table that differs from the manifest (empty without a manifest).
  type: list
  elements: str
  returned: success
equal:
  description: True when there is a manifest and nothing differs.
  type: bool
  returned: success
"""

import contextlib
import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.fingerprint import (
    compare,
    database_fingerprint,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import (
    CONN_ARGSPEC,
    ConnInfo,
    connect_or_fail,
    require_psycopg2,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            manifest=dict(type="path", default=""),
            fail_on_difference=dict(type="bool", default=False),
            **CONN_ARGSPEC,
        ),
        supports_check_mode=True,
    )
    require_psycopg2(module)
    expected = None
    if module.params["manifest"]:
        try:
            with open(module.params["manifest"], encoding="utf-8") as f:
                expected = json.load(f)["tables"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            module.fail_json(msg=f"cannot read the tables of manifest {module.params['manifest']}: {exc}")
    ci = ConnInfo.from_params(module.params)
    conn = connect_or_fail(module, ci)
    with contextlib.closing(conn):
        tables = database_fingerprint(conn)
    differences = compare(expected, tables) if expected is not None else []
    if differences and module.params["fail_on_difference"]:
        module.fail_json(
            msg=f"{ci.dbname} differs from the manifest: {'; '.join(differences[:5])}",
            tables=tables,
            differences=differences,
        )
    module.exit_json(
        changed=False, tables=tables, differences=differences, equal=expected is not None and not differences
    )


if __name__ == "__main__":
    main()
