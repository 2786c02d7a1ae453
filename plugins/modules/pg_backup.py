#!/usr/bin/python
"""Verified pg_dump backup with a same-snapshot fingerprint manifest (logic in module_utils/backup.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_backup
author: pg-migrate maintainers (@pgmigrate)
short_description: Back up one database with pg_dump, verify the archive and write its manifest.
description:
  - Opens a REPEATABLE READ transaction, exports its snapshot, runs C(pg_dump --snapshot) on it and
    fingerprints every table (row count and checksum) in the same transaction, so the manifest describes
    exactly what the archive holds.
  - The archive is read back with C(pg_restore --list) and hashed (sha256) before it gets its final name
    C(<environment>__<database>__<UTC timestamp>__<revision>.dump) (or C(.dir));
    the manifest JSON lands beside it.
  - Refuses, changing nothing, when the backup directory is accessible by group/others, not owned by the
    runner or not writable, or when C(pg_database_size * space_factor) does not fit in its free space.
  - Keeps the newest O(retention) backups of this environment and database; never the one just taken.
  - The password reaches pg_dump through a private pgpass file only, never its argv or the result.
  - In check mode reports the archive it would write and the tables it would cover.
  - Every failure is one line starting C(backup of <database> failed:); a dump of a clone that fails says the
    clone is kept.
options:
  environment:
    description: Environment name, first part of the archive name.
    type: str
    required: true
  backup_dir:
    description: Directory for archives and manifests; created 0700 when missing.
    type: path
    required: true
  format:
    description: pg_dump archive format.
    type: str
    choices: [custom, directory]
    default: custom
  jobs:
    description: Parallel pg_dump jobs (directory format only).
    type: int
    default: 2
  retention:
    description: How many backups of this environment and database to keep (at least 1).
    type: int
    default: 5
  space_factor:
    description: Free space needed, as a multiple of C(pg_database_size).
    type: float
    default: 1.0
  lock_wait_timeout:
    description: How long pg_dump and the fingerprint wait for a table lock before giving up.
    type: str
    default: 60s
  expected_revision:
    description:
      - The revision pre-flight saw; the backup fails when the database is at another one.
      - Empty skips the check.
    type: str
    default: ""
  step:
    description:
      - C(prepare) runs every refusal (directory, space, revision) and creates the directory, dumping nothing;
        then, with O(clone), clones the database with C(CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY)
        when no other session is connected (it never terminates any) and returns C(snapshot_database), or
        why not in C(snapshot_skipped). Quick, so the playbook runs it before migrating.
      - C(dump) takes the verified archive and manifest (of O(source_database) when given); long, so the
        playbook runs it in the background.
      - C(drop_snapshot) drops the clone named by O(source_database) (only names of the snapshot scheme).
    type: str
    choices: [dump, prepare, drop_snapshot]
    default: dump
  clone:
    description: With O(step=prepare), make the snapshot clone when the database is ours alone.
    type: bool
    default: true
  source_database:
    description:
      - A snapshot clone to dump instead of O(login_db); the manifest still names O(login_db), records
        the clone and its oid, and the clone is sealed (connections forbidden) once fingerprinted.
    type: str
  maintenance_db:
    description: Database to connect to for CREATE, ALTER and DROP DATABASE.
    type: str
    default: postgres
  progress_file:
    description: File to append progress lines to while the backup runs.
    type: path
  pg_bindir:
    description:
      - Directory of pg_dump and pg_restore.
      - Default the PG_BINDIR environment variable, then the PostgreSQL 15 bin directory.
    type: path
extends_documentation_fragment:
  - pgmigrate.pipeline.pgconn
"""

EXAMPLES = r"""
- name: Dump the database to a custom-format archive.
  pgmigrate.pipeline.pg_backup:
    environment: staging
    backup_dir: /var/backups/pg-migrate
    login_host: db1.staging.example.internal
    login_db: meetings
    login_user: meetings_owner
    login_password: "{{ vault_db_migration_password }}"
  register: backup
"""

RETURN = r"""
archive:
  description: Absolute path of the archive (file for custom format, directory for directory format).
  type: str
  returned: always
manifest_path:
  description: Absolute path of the manifest JSON.
  type: str
  returned: always
manifest:
  description: The manifest (format in docs/DESIGN.md), with per-table C(rows) and C(checksum).
  type: dict
  returned: success, not in check mode
sha256:
  description: sha256 of the archive (directory format - over the sorted per-file hashes).
  type: str
  returned: success, not in check mode
duration_seconds:
  description: Wall time of the backup, verification included (step prepare - the checks and the clone).
  type: float
  returned: success
retention_removed:
  description: Archives removed by retention (their manifests went with them).
  type: list
  elements: str
  returned: success, not in check mode
snapshot_database:
  description: The snapshot clone made (step prepare) or dumped (step dump); null when none.
  type: str
  returned: success
snapshot_skipped:
  description: Why no snapshot clone was made (other sessions, clone refused, O(clone=false)); empty when
    one was.
  type: str
  returned: step prepare
snapshot_seconds:
  description: How long making the clone took.
  type: float
  returned: step prepare
tables:
  description: Tables the backup would fingerprint.
  type: list
  elements: str
  returned: check mode
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.backup import (
    BackupError,
    BackupRequest,
    drop_snapshot,
    run_backup,
    take_snapshot,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import (
    CONN_ARGSPEC,
    ConnInfo,
    require_psycopg2,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            environment=dict(type="str", required=True),
            backup_dir=dict(type="path", required=True),
            format=dict(type="str", choices=["custom", "directory"], default="custom"),
            jobs=dict(type="int", default=2),
            retention=dict(type="int", default=5),
            space_factor=dict(type="float", default=1.0),
            lock_wait_timeout=dict(type="str", default="60s"),
            expected_revision=dict(type="str", default=""),
            step=dict(type="str", choices=["dump", "prepare", "drop_snapshot"], default="dump"),
            clone=dict(type="bool", default=True),
            source_database=dict(type="str"),
            maintenance_db=dict(type="str", default="postgres"),
            progress_file=dict(type="path"),
            pg_bindir=dict(type="path"),
            **CONN_ARGSPEC,
        ),
        supports_check_mode=True,
    )
    started = time.monotonic()
    require_psycopg2(module)
    p = module.params
    prefix = f"backup of {p['login_db']} failed: "
    if p["jobs"] < 1 or p["retention"] < 1 or p["space_factor"] <= 0:
        module.fail_json(msg=prefix + "jobs and retention must be at least 1 and space_factor above 0")
    ci = ConnInfo.from_params(p)
    request = BackupRequest(
        environment=p["environment"],
        directory=p["backup_dir"],
        archive_format=p["format"],
        jobs=p["jobs"],
        retention=p["retention"],
        space_factor=p["space_factor"],
        lock_wait_timeout=p["lock_wait_timeout"],
        expected_revision=p["expected_revision"] or None,
        pg_bindir=p["pg_bindir"],
        progress_file=p["progress_file"],
        check_mode=module.check_mode,
        source_database=p["source_database"] or None,
        maintenance_db=p["maintenance_db"],
        prepare_only=p["step"] == "prepare",
    )
    try:
        if p["step"] == "drop_snapshot":
            if not p["source_database"]:
                module.fail_json(
                    msg=prefix + "step drop_snapshot needs source_database (the snapshot to drop)"
                )
            if not module.check_mode:
                drop_snapshot(ci, p["maintenance_db"], p["source_database"])
            module.exit_json(changed=True, snapshot_database=p["source_database"])
        result = run_backup(ci, request)
        if p["step"] == "prepare":
            clone = (
                take_snapshot(ci, p["maintenance_db"], module.check_mode)
                if p["clone"]
                else {
                    "snapshot_database": None,
                    "snapshot_skipped": "no clone (clone: false)",
                    "snapshot_seconds": 0,
                }
            )
            result.update(clone, changed=result["changed"] or bool(clone["snapshot_database"]))
            result["duration_seconds"] = round(time.monotonic() - started, 3)
    except BackupError as exc:
        kept = f"; the clone {p['source_database']} is kept" if p["source_database"] else ""
        module.fail_json(msg=f"{prefix}{exc}{kept}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
