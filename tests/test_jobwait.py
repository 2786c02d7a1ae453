"""Waiting for background jobs: running, finished, unknown; the progress line shown meanwhile."""

import json

import pytest

from module_utils.jobwait import last_line, wait


def test_a_running_job_reports_its_latest_progress_line(tmp_path):
    (tmp_path / "j1").write_text(json.dumps({"started": True, "finished": False, "ansible_job_id": "j1"}))
    progress = tmp_path / "progress"
    progress.write_text("dumping public.users\ndumping public.meetings\n\n")
    result = wait(str(tmp_path), "j1", str(progress), seconds=0.2, interval=0.05)
    assert result == {"finished": False, "job_result": {}, "progress": "dumping public.meetings"}
    assert (tmp_path / "j1").exists()


def test_a_finished_job_hands_back_its_result_and_is_cleaned_up(tmp_path):
    (tmp_path / "j2").write_text(json.dumps({"failed": True, "msg": "pg_dump: error: connection lost"}))
    result = wait(str(tmp_path), "j2", None, seconds=5)
    assert result["finished"] and result["job_result"]["msg"] == "pg_dump: error: connection lost"
    assert not (tmp_path / "j2").exists()


def test_an_unknown_job_is_an_error(tmp_path):
    with pytest.raises(LookupError, match="no async job nope"):
        wait(str(tmp_path), "nope", None, seconds=0.1)


def test_missing_progress_file_is_just_empty(tmp_path):
    assert last_line(str(tmp_path / "absent")) == "" and last_line(None) == ""
