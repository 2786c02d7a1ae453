#!/usr/bin/python
"""Write the run report of one database's pipeline run."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: run_report
author: pg-migrate maintainers (@pgmigrate)
short_description: Write a pipeline run's JSON report and human summary, and say how the run ended.
description:
  - Assembles every step's registered result into one JSON document and a short text summary, writes both
    into O(report_dir) (created 0700, files 0600), and returns the summary lines for the play to print.
  - Decides the outcome from the steps' own results (a window that deferred the run, a downgrade or a restore
    that succeeded, whether a backup was started) and where the run stopped; for a run that failed, renders
    the message it exits with from the report (RV(failure_summary)).
  - Secrets are never written; step results pass through a scrubber that drops password-like keys and
    Ansible's C(invocation).
options:
  report_dir:
    description: Directory for the report files.
    type: path
    required: true
  host:
    description: Inventory name of the database host.
    type: str
    required: true
  environment:
    description: The environment (staging, production, ...).
    type: str
    required: true
  database:
    description: The database name.
    type: str
    required: true
  stopped_at:
    description: The step the run stopped in (preflight, backup, migrate, durable_backup, smoke), or C(done).
    type: str
    default: done
  dry_run:
    description: Whether the run was a check-mode run.
    type: bool
    default: false
  steps:
    description:
      - Step name to that step's registered result; missing and skipped steps are left out.
      - The names are C(preflight) (the plan), C(history), C(gate), C(lock), C(window), C(lint), C(freeze),
        C(snapshot) (the backup's checks and clone), C(backup) (the durable dump), C(migrate), C(thaw),
        C(smoke), C(downgrade) and C(restore).
    type: dict
    default: {}
  failed_step:
    description: The step that failed, if any.
    type: str
    default: ""
  error:
    description: The failure's one-line cause.
    type: str
    default: ""
  restore_error:
    description: Why the way back by restore failed (the restore, or the durable backup it needed), if it did.
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: Write the run report.
  pgmigrate.pipeline.run_report:
    report_dir: /var/lib/pg-migrate/reports
    host: "{{ inventory_hostname }}"
    environment: staging
    database: meetings
    stopped_at: done
    steps:
      preflight: "{{ db_preflight_result }}"
"""

RETURN = r"""
json_path:
  description: Path of the JSON report.
  type: str
  returned: always
text_path:
  description: Path of the human summary.
  type: str
  returned: always
summary:
  description: The summary lines.
  type: list
  elements: str
  returned: always
report:
  description: The JSON document.
  type: dict
  returned: always
failed_run:
  description: Whether the outcome is a failure or a refusal (the play then fails with RV(failure_summary)).
  type: bool
  returned: always
failure_summary:
  description: The cause, what the database is now and what to do; empty when the run did not fail.
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.report import (
    FAILED_OUTCOMES,
    build_report,
    failure_summary,
    outcome_of,
    restore_error_of,
    summary_lines,
    write_report,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            report_dir=dict(type="path", required=True),
            host=dict(type="str", required=True),
            environment=dict(type="str", required=True),
            database=dict(type="str", required=True),
            stopped_at=dict(type="str", default="done"),
            dry_run=dict(type="bool", default=False),
            steps=dict(type="dict", default={}),
            failed_step=dict(type="str", default=""),
            error=dict(type="str", default=""),
            restore_error=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    p = module.params
    restore_error = restore_error_of(p["steps"], p["restore_error"])
    outcome = outcome_of(p["steps"], p["stopped_at"], p["dry_run"], restore_error)
    try:
        report = build_report(
            host=p["host"],
            environment=p["environment"],
            database=p["database"],
            outcome=outcome,
            steps=p["steps"],
            failed_step=p["failed_step"],
            error=p["error"],
            restore_error=restore_error,
        )
        json_path, text_path = write_report(p["report_dir"], report)
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"cannot write the run report into {p['report_dir']}: {exc}")
    failed = outcome in FAILED_OUTCOMES
    module.exit_json(
        changed=True,
        json_path=str(json_path),
        text_path=str(text_path),
        summary=summary_lines(report),
        report=report,
        failed_run=failed,
        failure_summary=failure_summary(report) if failed else "",
    )


if __name__ == "__main__":
    main()
