"""The default output, with a long step's progress line where Ansible would print "FAILED - RETRYING".

The long steps (dump, migration, downgrade, restore) run in the background and the play polls them with
``ansible.builtin.async_status`` every second. The default callback prints "FAILED - RETRYING: ... (N
retries left)" on every poll: noise that says nothing of how far the step got. This callback is the
default one except there: when a polled job was started with a ``progress_file`` argument, it prints that
file's last line at most every ``progress_interval`` seconds instead.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: progress
type: stdout
short_description: Default output, with the progress line of a long step while it is polled.
description:
  - The C(ansible.builtin.default) stdout callback, except while a background job started with a
    C(progress_file) argument is polled by C(ansible.builtin.async_status) with C(until) and C(retries) -
    instead of a "FAILED - RETRYING" line on every poll it prints the last line of that file, at most every
    O(progress_interval) seconds, after C(progress [<host>]).
  - Polls of other jobs, and every other retrying task, print as the default callback prints them.
requirements:
  - set as the stdout callback in ansible.cfg (C(stdout_callback = pgmigrate.pipeline.progress))
extends_documentation_fragment:
  - ansible.builtin.default_callback
  - ansible.builtin.result_format_callback
options:
  progress_interval:
    description: Seconds between two progress lines of one job.
    type: float
    default: 10
    env:
      - name: PGMIGRATE_PROGRESS_INTERVAL
    ini:
      - section: callback_progress
        key: progress_interval
"""

import os
import time

from ansible.plugins.callback.default import CallbackModule as DefaultCallback


def last_line(path: str, max_bytes: int = 4096) -> str:
    """The last non-empty line of a progress file (empty when there is none yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class CallbackModule(DefaultCallback):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "pgmigrate.pipeline.progress"

    def __init__(self) -> None:
        super().__init__()
        # job id -> [progress file, when its last line was printed (or the job started)]
        self._jobs: dict[str, list] = {}

    def v2_runner_on_ok(self, result) -> None:
        data = result.result
        path = (result.task.args or {}).get("progress_file")
        if data.get("ansible_job_id") and data.get("started") and not data.get("finished") and path:
            self._jobs[data["ansible_job_id"]] = [str(path), time.monotonic()]
        elif data.get("finished"):
            self._jobs.pop(data.get("ansible_job_id", ""), None)
        super().v2_runner_on_ok(result)

    def v2_runner_on_failed(self, result, ignore_errors: bool = False) -> None:
        self._jobs.pop(result.result.get("ansible_job_id", ""), None)
        super().v2_runner_on_failed(result, ignore_errors)

    def v2_runner_retry(self, result) -> None:
        job = self._jobs.get(result.result.get("ansible_job_id", ""))
        if job is None:
            super().v2_runner_retry(result)
            return
        now = time.monotonic()
        if now - job[1] < float(self.get_option("progress_interval")):
            return
        job[1] = now
        line = last_line(job[0]) or "(no progress line yet)"
        self._display.display(f"  progress [{result.host.get_name()}]: {line}")
