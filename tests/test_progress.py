"""The progress callback: a polled background job prints its progress line instead of "FAILED - RETRYING"."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ansible_run import ROOT, ansible_env


def test_a_polled_job_shows_its_progress_line_and_other_retries_print_as_usual(tmp_path: Path):
    progress = tmp_path / "job.progress"
    env = {**ansible_env(), "PGMIGRATE_PROGRESS_INTERVAL": "1.5", "ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml"}
    proc = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            "localhost,",
            "-e",
            f"progress_file={progress}",
            "tests/playbooks/progress.yml",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = proc.stdout.splitlines()
    shown = [line for line in lines if line.startswith("  progress [localhost]: step ")]
    # About one line per 1.5 s of a 4 s job, each the file's latest line at the time (rising numbers).
    assert 1 <= len(shown) <= 3, lines
    numbers = [int(line.rsplit(" ", 1)[1]) for line in shown]
    assert numbers == sorted(numbers) and numbers[-1] > 1
    assert not any("RETRYING" in line and "Wait for the slow job" in line for line in lines)
    assert any("RETRYING" in line and "Retry a task that is not a background job" in line for line in lines)
    assert os.path.getsize(progress) > 0
