#!/usr/bin/python
"""Restore a database from a verified backup and swap it in (logic in module_utils/restore.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_restore_db
author: pg-migrate maintainers (@pgmigrate)
short_description: Restore a database from a backup manifest, verify it, and swap it in.
description:
  - Before touching the server - the manifest is well-formed and is a backup of O(login_db) (and of
    O(environment) when given); the archive exists, is owned by the runner, is not writable by group/others
    (nor is its directory), its sha256 equals the manifest's and C(pg_restore --list) reads it. Any failure
    refuses with one line and changes nothing.
  - Restores into a fresh database C(<db>__restore_<UTC timestamp>) (template0, owned by the migration role,
    same encoding and locale as the database it replaces) with C(pg_restore --exit-on-error --jobs).
  - Verifies the restored database - every table's fingerprint equals the manifest's and its Alembic revision
    equals the manifest's starting revision. A mismatch refuses to swap and keeps both databases.
  - Swaps - disallows connections to the failed database, terminates its sessions, renames it to
    C(<db>__failed_<UTC timestamp>) (retrying briefly if a session sneaks in), renames the restored one to
    C(<db>) and carries over the database's grants, connection limit and settings.
  - Works as a non-superuser that owns the database and has CREATEDB and pg_signal_backend.
  - In check mode runs every check and reports the names it would use.
options:
  manifest:
    description: Path of the backup manifest JSON written by pg_backup.
    type: path
    required: true
  environment:
    description: When set, the manifest must come from this environment.
    type: str
    default: ""
  maintenance_db:
    description: Database to connect to for CREATE/ALTER/DROP DATABASE.
    type: str
    default: postgres
  jobs:
    description: Parallel pg_restore jobs.
    type: int
    default: 2
  keep_forensic:
    description:
      - Keep the failed database under its forensic name.
      - When false it is dropped after a verified swap.
    type: bool
    default: true
  rename_retries:
    description: How many times to terminate sessions and retry a rename that finds the database in use.
    type: int
    default: 20
  use_snapshot:
    description:
      - Swap in the backup's snapshot clone (recorded in the manifest) when it still exists, is sealed and
        has the recorded oid, after verifying it against the manifest's fingerprint; otherwise, or when
        false, pg_restore the archive.
    type: bool
    default: true
  progress_file:
    description: File to append progress lines to while the restore runs.
    type: path
  pg_bindir:
    description: Directory of pg_restore (default the PG_BINDIR environment variable, then PostgreSQL 15).
    type: path
extends_documentation_fragment:
  - pgmigrate.pipeline.pgconn
"""

EXAMPLES = r"""
- name: Restore the database from its backup and swap it in.
  pgmigrate.pipeline.pg_restore_db:
    manifest: /var/backups/pg-migrate/staging__meetings__20261125T142233Z__0001.json
    environment: staging
    login_host: db1.staging.example.internal
    login_db: meetings
    login_user: meetings_owner
    login_password: "{{ vault_db_migration_password }}"
  register: restore
"""

RETURN = r"""
restored_database:
  description: Name of the database that now holds the restored data (the target's own name).
  type: str
  returned: always
forensic_database:
  description: Name of the failed database kept for forensics; null when dropped or when there was none.
  type: str
  returned: always
staging_database:
  description: Name the restore used before the swap (the snapshot clone's name when one was swapped in).
  type: str
  returned: always
method:
  description: C(snapshot) when the backup's sealed clone was verified and swapped in, else C(pg_restore).
  type: str
  returned: always
snapshot_note:
  description: Why the snapshot clone was or was not used.
  type: str
  returned: always
fingerprint_ok:
  description: True once every table matched the manifest; null in check mode.
  type: bool
  returned: always
duration_seconds:
  description: Wall time of the whole restore.
  type: float
  returned: success, not in check mode
restore_seconds:
  description: Wall time of pg_restore.
  type: float
  returned: success, not in check mode
verify_seconds:
  description: Wall time of the fingerprint comparison.
  type: float
  returned: success, not in check mode
swap_seconds:
  description: Wall time of the swap (and the forensic drop when asked).
  type: float
  returned: success, not in check mode
sessions_terminated:
  description: Sessions terminated to free the failed database for its rename.
  type: int
  returned: success, not in check mode
settings_warnings:
  description: Database settings that could not be carried over.
  type: list
  elements: str
  returned: success, not in check mode
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import (
    CONN_ARGSPEC,
    ConnInfo,
    require_psycopg2,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.restore import (
    RestoreError,
    RestoreRequest,
    run_restore,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            manifest=dict(type="path", required=True),
            environment=dict(type="str", default=""),
            maintenance_db=dict(type="str", default="postgres"),
            jobs=dict(type="int", default=2),
            keep_forensic=dict(type="bool", default=True),
            rename_retries=dict(type="int", default=20),
            use_snapshot=dict(type="bool", default=True),
            progress_file=dict(type="path"),
            pg_bindir=dict(type="path"),
            **CONN_ARGSPEC,
        ),
        supports_check_mode=True,
    )
    require_psycopg2(module)
    p = module.params
    request = RestoreRequest(
        manifest_path=p["manifest"],
        environment=p["environment"] or None,
        maintenance_db=p["maintenance_db"],
        jobs=max(p["jobs"], 1),
        keep_forensic=p["keep_forensic"],
        rename_retries=max(p["rename_retries"], 0),
        pg_bindir=p["pg_bindir"],
        progress_file=p["progress_file"],
        use_snapshot=p["use_snapshot"],
        check_mode=module.check_mode,
    )
    try:
        result = run_restore(ConnInfo.from_params(p), request)
    except RestoreError as exc:
        module.fail_json(msg=f"restore of {p['login_db']} failed: {exc}")
    for warning in result.get("settings_warnings", []):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
