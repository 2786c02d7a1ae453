"""Wait a little for a background (async) Ansible job, and say how far it got.

Long steps (dump, migration, restore) run as async jobs so the play can show progress while they work:
a retrying task calls :func:`wait` for a few seconds at a time and returns the job's latest progress line,
which the ``progress`` callback prints on every retry.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def default_async_dir() -> str:
    return os.path.expanduser(os.environ.get("ANSIBLE_ASYNC_DIR", "~/.ansible_async"))


def last_line(path: str | None, max_bytes: int = 4096) -> str:
    """The last non-empty line of a progress file (empty when there is none yet)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def job_status(async_dir: str, jid: str) -> dict | None:
    """The job's final result once it has finished, else None. Raises LookupError for an unknown job."""
    path = Path(async_dir) / jid
    if not path.exists():
        raise LookupError(f"no async job {jid} in {async_dir}")
    try:
        data = json.loads(path.read_text() or "null")
    except json.JSONDecodeError:
        return None  # being written
    if not data or (data.get("started") and not data.get("finished")):
        return None
    return data


def wait(async_dir: str, jid: str, progress_file: str | None, seconds: float, interval: float = 0.5) -> dict:
    """Poll the job for up to ``seconds``; return finished, the job's result, progress and elapsed."""
    deadline = time.monotonic() + seconds
    while True:
        data = job_status(async_dir, jid)
        if data is not None:
            (Path(async_dir) / jid).unlink(missing_ok=True)
            return {"finished": True, "job_result": data, "progress": last_line(progress_file)}
        if time.monotonic() >= deadline:
            return {"finished": False, "job_result": {}, "progress": last_line(progress_file)}
        time.sleep(interval)
