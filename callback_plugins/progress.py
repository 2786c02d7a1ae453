"""Print a long step's progress line each time its waiting task retries.

The default callback only says "FAILED - RETRYING ... (N retries left)" while a task polls; this one adds
the ``progress`` field of the polling result (see the job_wait module), so an operator watching a dump, a
migration or a restore sees how far it got, not only that it is still running.
"""

from __future__ import annotations

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: progress
type: notification
short_description: Show the progress line of a polling task on every retry.
description:
  - On each retry of a task whose result carries a non-empty C(progress) field, prints that field.
requirements:
  - enabled in ansible.cfg (C(callbacks_enabled = progress))
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "progress"
    CALLBACK_NEEDS_ENABLED = True

    def v2_runner_retry(self, result) -> None:
        progress = (result._result or {}).get("progress")
        if progress:
            self._display.display(f"  progress [{result._host.get_name()}]: {progress}")
