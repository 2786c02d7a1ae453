#!/usr/bin/python
"""Write the run report of one database's pipeline run."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: run_report
short_description: Write a pipeline run's JSON report and human summary.
description:
  - Assembles every step's result into one JSON document and a short text summary, writes both into
    O(report_dir) (created 0700, files 0600), and returns the summary lines for the play to print.
  - Secrets are never written; step results pass through a scrubber that drops password-like keys.
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
  outcome:
    description:
      - How the run ended. When empty it is decided from O(stopped_at), O(dry_run), whether O(steps)
        holds a restore result, and O(restore_error).
    type: str
    default: ""
    choices:
      - ""
      - succeeded
      - dry-run
      - refused
      - failed-unchanged
      - failed-and-downgraded
      - failed-and-restored
      - failed-restore-failed
      - deferred
  stopped_at:
    description: The step the run stopped in (preflight, backup, migrate, durable_backup, smoke), or C(done).
    type: str
    default: done
  dry_run:
    description: Whether the run was a check-mode run.
    type: bool
    default: false
  restore_error:
    description: Why the restore failed, empty when it did not.
    type: str
    default: ""
  touched:
    description: Whether the run got as far as changing the database (a backup was taken before migrating).
    type: bool
    default: true
  steps:
    description: Step name (preflight, backup, migrate, smoke, restore) to that step's result.
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
"""

EXAMPLES = r"""
- name: Write the run report.
  run_report:
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
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.report import OUTCOMES, build_report, decide_outcome, summary_lines, write_report


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            report_dir=dict(type="path", required=True),
            host=dict(type="str", required=True),
            environment=dict(type="str", required=True),
            database=dict(type="str", required=True),
            outcome=dict(type="str", default="", choices=["", *OUTCOMES]),
            stopped_at=dict(type="str", default="done"),
            dry_run=dict(type="bool", default=False),
            restore_error=dict(type="str", default=""),
            touched=dict(type="bool", default=True),
            steps=dict(type="dict", default={}),
            failed_step=dict(type="str", default=""),
            error=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    p = module.params
    outcome = p["outcome"] or decide_outcome(
        p["stopped_at"],
        p["dry_run"],
        bool(p["steps"].get("restore")),
        p["restore_error"],
        p["touched"],
        downgraded=bool((p["steps"].get("downgrade") or {}).get("ok")),
    )
    try:
        report = build_report(
            host=p["host"],
            environment=p["environment"],
            database=p["database"],
            outcome=outcome,
            steps=p["steps"],
            failed_step=p["failed_step"],
            error=p["error"],
        )
        json_path, text_path = write_report(p["report_dir"], report)
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"cannot write the run report into {p['report_dir']}: {exc}")
    module.exit_json(
        changed=True,
        json_path=str(json_path),
        text_path=str(text_path),
        summary=summary_lines(report),
        report=report,
    )


if __name__ == "__main__":
    main()
