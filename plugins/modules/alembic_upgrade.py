#!/usr/bin/python
"""Apply an Alembic chain's pending revisions one at a time, timing each, with a progress file."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: alembic_upgrade
author: pg-migrate maintainers (@pgmigrate)
short_description: Upgrade a database with the real Alembic CLI, one revision at a time.
description:
  - Plans like M(pgmigrate.pipeline.alembic_status), then runs C(python -m alembic -c <config> upgrade <rev>)
    for each pending revision in order, timing each, with a URL without password in C(DATABASE_URL) and a
    private PGPASSFILE.
  - Appends human-readable progress (including Alembic's own log lines, such as batch progress) to
    O(progress_file) while it runs, so an operator can C(tail -f) it.
  - On failure returns C(failed) with one line naming the revision that failed and the root error, the
    revisions applied before it, and the revision the database is at now (also as data).
  - In check mode changes nothing and returns the pending revisions and their offline SQL
    (C(alembic upgrade <from>:<to> --sql)).
  - At the target already, returns C(changed=false).
options:
  target:
    description: The revision to reach, C(head) or a full revision id of the chain.
    type: str
    default: head
  lock_retries:
    description: Run a revision again this many times when it gives up waiting for a lock (after env.py's
      own per-statement retries) and its work was rolled back; 0 never retries.
    type: int
    default: 0
  lock_retry_delay:
    description: Seconds before the first such retry; each next one waits twice as long.
    type: float
    default: 10
extends_documentation_fragment:
  - pgmigrate.pipeline.alembic_cli
  - pgmigrate.pipeline.pgconn
"""

EXAMPLES = r"""
- name: Upgrade the database to head.
  pgmigrate.pipeline.alembic_upgrade:
    alembic_config: /srv/app/alembic.ini
    lock_timeout: 5s
    progress_file: /var/lib/pg-migrate/progress/meetings.log
    login_db: meetings
    login_user: meetings_owner
    login_password: "{{ vault_db_migration_password }}"
  register: upgrade
"""

RETURN = r"""
revision_before:
  description: The database's revision before the run (C(base) when none).
  type: str
  returned: always
revision_after:
  description: The database's revision after the run (where it stopped, on failure).
  type: str
  returned: always
target_revision:
  description: The target, resolved.
  type: str
  returned: always
pending:
  description: Revisions the run set out to apply, in order.
  type: list
  elements: str
  returned: always
retries:
  description: Each revision run again after a lock timeout (revision, attempt, delay, error).
  type: list
  elements: dict
  returned: always
applied:
  description: Revisions applied, each with its duration.
  type: list
  elements: dict
  returned: always
  sample: [{"revision": "0002", "seconds": 1.25}]
row_count_changes:
  description: Merged C(row_count_changes) declarations of the applied (or, in check mode, pending) revisions.
  type: dict
  returned: always
sql:
  description: Offline SQL of the pending revisions (check mode only).
  type: str
  returned: always
failed_revision:
  description: The revision that failed.
  type: str
  returned: failure
error:
  description: The root error of the failing revision (last meaningful line of Alembic's output).
  type: str
  returned: failure
schema_fingerprint_before:
  description: The schema fingerprint before anything ran (what an online rescue's downgrade returns to).
  type: str
  returned: always
failed_revision_committed:
  description: Whether the failed revision entered an autocommit block, committing work no downgrade can undo.
  type: bool
  returned: failure
duration_seconds:
  description: How long the module ran.
  type: float
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.alembic_runner import (
    Options,
    exit_module,
    upgrade,
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
            lock_timeout=dict(type="str", default=""),
            statement_timeout=dict(type="str", default=""),
            batch_size=dict(type="int", default=0),
            batch_sleep=dict(type="str", default=""),
            progress_file=dict(type="path", default=""),
            version_table=dict(type="str", default="alembic_version"),
            lock_retries=dict(type="int", default=0),
            lock_retry_delay=dict(type="float", default=10.0),
            **CONN_ARGSPEC,
        ),
        supports_check_mode=True,
    )
    require_psycopg2(module)
    p = module.params
    exit_module(
        module,
        lambda: upgrade(
            p["alembic_config"],
            ConnInfo.from_params(p),
            target=p["target"],
            options=Options(
                lock_timeout=p["lock_timeout"] or None,
                statement_timeout=p["statement_timeout"] or None,
                batch_size=p["batch_size"] or None,
                batch_sleep=p["batch_sleep"] or None,
            ),
            progress_file=p["progress_file"] or None,
            check_mode=module.check_mode,
            version_table=p["version_table"],
            lock_retries=p["lock_retries"],
            lock_retry_delay=p["lock_retry_delay"],
        ),
        prefix=f"migration of {p['login_db']} failed: ",
    )


if __name__ == "__main__":
    main()
