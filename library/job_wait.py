#!/usr/bin/python
"""Wait a few seconds for an async job and report its latest progress line."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: job_wait
short_description: Wait briefly for a background job and report its progress.
description:
  - Polls an async job (started with C(async) and C(poll=0)) for up to O(seconds) and returns whether it
    finished, its result when it has, and the last line of its O(progress_file).
  - Meant for a retrying task (C(until=result.finished)); the repository's C(progress) callback prints
    the progress line on every retry, so long steps show progress while they run.
  - Never fails because the job failed; the caller inspects RV(job_result).
options:
  jid:
    description: The async job id (C(ansible_job_id) of the started task).
    type: str
    required: true
  progress_file:
    description: File the job appends progress lines to.
    type: path
  seconds:
    description: How long to wait in this call.
    type: float
    default: 10
  async_dir:
    description: Ansible's async job directory; default C($ANSIBLE_ASYNC_DIR) or C(~/.ansible_async).
    type: path
"""

EXAMPLES = r"""
- name: Wait for the dump, showing its progress.
  job_wait:
    jid: "{{ dump_job.ansible_job_id }}"
    progress_file: /var/lib/pg-migrate/run.progress
  register: dump_wait
  until: dump_wait.finished
  retries: 720
  delay: 0
"""

RETURN = r"""
finished:
  description: Whether the job has finished.
  type: bool
  returned: always
job_result:
  description: The job's module result once finished (empty before).
  type: dict
  returned: always
progress:
  description: The last line of the progress file (empty when there is none yet).
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.jobwait import default_async_dir, wait


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            jid=dict(type="str", required=True),
            progress_file=dict(type="path"),
            seconds=dict(type="float", default=10),
            async_dir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = wait(p["async_dir"] or default_async_dir(), p["jid"], p["progress_file"], p["seconds"])
    except LookupError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
