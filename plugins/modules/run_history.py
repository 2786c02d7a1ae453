#!/usr/bin/python
"""Record a pipeline run in the target database's deployment history, and refuse runs that must not start."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: run_history
author: pg-migrate maintainers (@pgmigrate)
short_description: Write a run's row in pipeline_history.runs; refuse unresolved, tampered or drifted runs.
description:
  - With O(state=started), creates the C(pipeline_history) schema on first use (owned by the login role,
    nothing granted to PUBLIC), marks O(resolve_run) resolved when asked, and records this run as C(running).
  - It then refuses, in one line naming the cause, when an earlier run of this database never finished and
    is unresolved, when the file of an applied revision changed since a run applied it (its sha256 differs
    from the recorded one), or when O(refuse_drift) is set and the schema differs from what the last
    successful run at the current revision left (a schema fingerprint). A refused run's row says refused.
  - With O(state=finished), records what O(report) says (the report of M(pgmigrate.pipeline.run_report)),
    that is the outcome, revisions, backup, each applied revision's file sha256 (as the start computed them,
    kept in the report's C(history) step) and the promotion gate's verdict (its C(gate) step). An upsert by
    run id, so it lands after a restore too.
  - Fails with one line that starts C(deployment history of <database> refused the run) when a run must not
    start, and C(the outcome (<outcome>) of run <id> could not be recorded) when the end cannot be written.
  - In check mode nothing is written; the refusals are still checked.
options:
  state:
    description: C(started) before the backup, C(finished) after the report.
    type: str
    choices: [started, finished]
    required: true
  run_id:
    description: The run's identifier (from the pre-flight).
    type: str
    required: true
  environment:
    description: The environment of the run.
    type: str
    required: true
  inventory_host:
    description: The inventory host name of the database.
    type: str
    required: true
  alembic_config:
    description: The Alembic project's alembic.ini (O(state=started)); its revision files are checksummed.
    type: path
  current_revision:
    description: The database's revision before the run (C(base) when none).
    type: str
    default: base
  target_revision:
    description: The revision the run goes to.
    type: str
    default: ""
  pending:
    description: The revisions the run applies, in order.
    type: list
    elements: str
    default: []
  resolve_run:
    description: Run id of an unfinished (C(running)) run to mark resolved before starting.
    type: str
    default: ""
  resolve_reason:
    description: Why O(resolve_run) is resolved (required with it; recorded).
    type: str
    default: ""
  refuse_drift:
    description: Refuse a schema that drifted since the last successful run (production).
    type: bool
    default: false
  accept_drift:
    description: A reason to go on despite drift; recorded in the row.
    type: str
    default: ""
  report:
    description: The run report (O(state=finished)); revisions, applied list, backup paths, error, and the
      steps' results (C(history) for the checksums, C(gate) for the promotion gate's verdict).
    type: dict
    default: {}
extends_documentation_fragment:
  - pgmigrate.pipeline.pgconn
"""

EXAMPLES = r"""
- name: Record the run as running.
  pgmigrate.pipeline.run_history:
    state: started
    run_id: "{{ db_preflight_result.run_id }}"
    environment: staging
    inventory_host: "{{ inventory_hostname }}"
    alembic_config: /srv/app/alembic.ini
    current_revision: "0001"
    target_revision: "0005"
    pending: ["0002", "0003", "0004", "0005"]
    login_db: meetings
    login_user: meetings_owner
    login_password: "{{ vault_db_migration_password }}"
"""

RETURN = r"""
duration_seconds:
  description: How long the module ran.
  type: float
  returned: success
recorded:
  description: Whether a row was written.
  type: bool
  returned: always
checksums:
  description: Revision to C({file, sha256}) of the pending revisions' files (O(state=started)).
  type: dict
  returned: success
drift:
  description: Why the schema counts as drifted, empty when it does not.
  type: str
  returned: success
resolved:
  description: The run id marked resolved, empty when none.
  type: str
  returned: success
warnings_found:
  description: Things worth saying that did not stop the run (drift outside production).
  type: list
  elements: str
  returned: success
"""

import hashlib
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.alembic_runner import (
    MigrationError,
    load_chain,
    revision_checksums,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.checksums import schema_fingerprint
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.history import (
    HistoryError,
    Start,
    finish_run,
    start_run,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import (
    CONN_ARGSPEC,
    ConnInfo,
    connect_or_fail,
    require_psycopg2,
)


def _started(module: AnsibleModule, conn) -> dict:
    p = module.params
    if not p["alembic_config"]:
        raise HistoryError("alembic_config is required with state=started")
    chain = load_chain(p["alembic_config"])
    on_disk = revision_checksums(chain.config_path)
    current = p["current_revision"]
    start = Start(
        run_id=p["run_id"],
        environment=p["environment"],
        database=p["login_db"],
        inventory_host=p["inventory_host"],
        current_revision=current,
        target_revision=p["target_revision"],
        applied_revisions=chain.ancestors(None if current == "base" else current),
        on_disk=on_disk,
        resolve_run=p["resolve_run"],
        resolve_reason=p["resolve_reason"],
        accept_drift=p["accept_drift"],
        refuse_drift=p["refuse_drift"],
        check_mode=module.check_mode,
    )
    facts = start_run(conn, start, schema_fingerprint(conn))
    return {
        "changed": facts["recorded"],
        "recorded": facts["recorded"],
        "checksums": {rev: on_disk[rev] for rev in p["pending"] if rev in on_disk},
        "drift": facts["drift"],
        "resolved": facts["resolved"],
        "warnings_found": start.warnings,
    }


def _manifest_sha256(path: str | None) -> str | None:
    if not path or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# What the history keeps of the promotion gate's result (the report's gate step).
GATE_KEYS = ("passed", "overridden", "problems", "staging_run_id", "override")


def _finished(module: AnsibleModule, conn) -> dict:
    p = module.params
    if module.check_mode:
        return {"changed": False, "recorded": False}
    report = p["report"] or {}
    steps = report.get("steps") or {}
    checksums = (steps.get("history") or {}).get("checksums") or {}
    gate = {k: v for k, v in (steps.get("gate") or {}).items() if k in GATE_KEYS}
    applied = {}
    for entry in report.get("applied") or []:
        rev = entry.get("revision")
        applied[rev] = {**(checksums.get(rev) or {}), "seconds": entry.get("seconds")}
    backup = report.get("backup") or {}
    outcome = report.get("outcome") or "refused"
    finish_run(
        conn,
        {
            "run_id": p["run_id"],
            "environment": p["environment"],
            "database_name": p["login_db"],
            "inventory_host": p["inventory_host"],
            "outcome": outcome,
            "revision_from": report.get("revision_from"),
            "revision_to": report.get("revision_to"),
            "target_revision": report.get("target_revision"),
            "applied": applied,
            "backup_archive": backup.get("archive"),
            "backup_manifest": backup.get("manifest"),
            "manifest_sha256": _manifest_sha256(backup.get("manifest")),
            # Only a run that ended where it meant to vouches for the schema it leaves.
            "schema_fingerprint": schema_fingerprint(conn) if outcome == "succeeded" else None,
            "promotion_override": gate.get("override") or None,
            "gate": gate or None,
            "error": report.get("error") or None,
        },
    )
    return {"changed": True, "recorded": True}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["started", "finished"], required=True),
            run_id=dict(type="str", required=True),
            environment=dict(type="str", required=True),
            inventory_host=dict(type="str", required=True),
            alembic_config=dict(type="path"),
            current_revision=dict(type="str", default="base"),
            target_revision=dict(type="str", default=""),
            pending=dict(type="list", elements="str", default=[]),
            resolve_run=dict(type="str", default=""),
            resolve_reason=dict(type="str", default=""),
            refuse_drift=dict(type="bool", default=False),
            accept_drift=dict(type="str", default=""),
            report=dict(type="dict", default={}),
            **CONN_ARGSPEC,
        ),
        supports_check_mode=True,
    )
    started = time.monotonic()
    require_psycopg2(module)
    p = module.params
    if p["state"] == "started":
        step, prefix = _started, f"deployment history of {p['login_db']} refused the run: "
    else:
        outcome = (p["report"] or {}).get("outcome") or "?"
        step = _finished
        prefix = (
            f"the outcome ({outcome}) of run {p['run_id']} could not be recorded in {p['login_db']}'s "
            "deployment history: "
        )
    ci = ConnInfo.from_params(p)
    conn = connect_or_fail(module, ci, prefix=prefix + "deployment history: ", fail_extra={"recorded": False})
    try:
        result = step(module, conn)
    except (HistoryError, MigrationError) as exc:
        module.fail_json(msg=prefix + str(exc), recorded=False)
    except Exception as exc:  # a database error: one line, never a traceback with parameters
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        module.fail_json(msg=f"{prefix}deployment history of {ci.describe()}: {text}", recorded=False)
    finally:
        conn.close()
    module.exit_json(**result, duration_seconds=round(time.monotonic() - started, 3))


if __name__ == "__main__":
    main()
