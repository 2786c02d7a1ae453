"""The run report: what it records, what it never records, where it lands."""

import json
import stat
from datetime import UTC, datetime

import pytest

from module_utils.report import build_report, decide_outcome, summary_lines, write_report

STEPS = {
    "preflight": {
        "run_id": "20261125T142233Z-ab12",
        "current_revision": "0001",
        "target_revision": "0005",
        "duration_seconds": 0.4,
    },
    "backup": {
        "manifest_path": "/b/x.json",
        "archive": "/b/x.dump",
        "duration_seconds": 1.25,
        "invocation": {"module_args": {"login_password": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"}},
    },
    "migrate": {
        "revision_before": "0001",
        "revision_after": "0003",
        "applied": [{"revision": "0002", "seconds": 1.5}, {"revision": "0003", "seconds": 0.5}],
        "duration_seconds": 2.0,
        "password": "s3cret",
    },
}


def _report(**kw):
    args = dict(
        host="h1",
        environment="staging",
        database="meetings",
        outcome="failed-and-restored",
        steps=STEPS,
        failed_step="smoke",
        error="smoke check 'orders' failed",
        finished_at=datetime(2026, 11, 25, tzinfo=UTC),
    )
    args.update(kw)
    return build_report(**args)


def test_report_records_revisions_timings_and_failure():
    report = _report()
    assert report["revision_from"] == "0001" and report["revision_to"] == "0003"
    assert report["timings"] == {"preflight": 0.4, "backup": 1.25, "migrate": 2.0}
    assert report["failed_step"] == "smoke"
    lines = summary_lines(report)
    assert lines[0] == "staging meetings (h1): FAILED-AND-RESTORED"
    assert "  applied 0002 in 1.50s" in lines
    assert any("failed at smoke: smoke check 'orders' failed" in line for line in lines)


def test_after_a_verified_restore_the_report_shows_the_starting_revision():
    steps = dict(
        STEPS,
        restore={
            "restored_database": "meetings",
            "forensic_database": "meetings__failed_x",
            "fingerprint_ok": True,
            "starting_revision": "0001",
            "duration_seconds": 0.5,
        },
    )
    report = _report(steps=steps)
    assert report["revision_to"] == "0001"
    assert "failed database kept as meetings__failed_x" in summary_lines(report)[-1]


def test_report_never_carries_secrets():
    text = json.dumps(_report())
    assert "s3cret" not in text and "invocation" not in text


def test_unknown_outcome_and_step_are_refused():
    with pytest.raises(ValueError, match="unknown outcome 'maybe'"):
        _report(outcome="maybe")
    with pytest.raises(ValueError, match="unknown step"):
        _report(steps={"teleport": {}})


def test_written_files_are_private(tmp_path):
    json_path, text_path = write_report(tmp_path / "reports", _report())
    assert stat.S_IMODE((tmp_path / "reports").stat().st_mode) == 0o700
    for path in (json_path, text_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json_path.name == "20261125T142233Z-ab12__staging__h1.json"
    assert json.loads(json_path.read_text())["outcome"] == "failed-and-restored"


@pytest.mark.parametrize(
    ("stopped_at", "dry_run", "restored", "restore_error", "expected"),
    [
        ("done", False, False, "", "succeeded"),
        ("done", True, False, "", "dry-run"),
        ("preflight", False, False, "", "refused"),
        ("backup", False, False, "", "refused"),
        ("migrate", False, True, "", "failed-and-restored"),
        ("smoke", False, True, "", "failed-and-restored"),
        ("migrate", False, False, "archive sha256 mismatch", "failed-restore-failed"),
        ("migrate", False, True, "fingerprint differs", "failed-restore-failed"),
        ("smoke", False, False, "", "failed-restore-failed"),
    ],
)
def test_outcome_follows_where_the_run_stopped(stopped_at, dry_run, restored, restore_error, expected):
    assert decide_outcome(stopped_at, dry_run, restored, restore_error) == expected


def test_a_failed_smoke_check_on_an_untouched_database_is_not_a_failed_restore():
    assert decide_outcome("smoke", False, False, "", touched=False) == "failed-unchanged"


def test_a_verified_downgrade_is_its_own_outcome_and_names_each_lossy_downgrade():
    assert decide_outcome("smoke", False, False, "", downgraded=True) == "failed-and-downgraded"
    downgrade = {
        "ok": True,
        "revision_after": "0001",
        "downgraded": [{"revision": "0003", "seconds": 0.2, "note": "lossless"}],
        "lossy": [{"revision": "0002", "note": "LOSSY - drops the column."}],
        "duration_seconds": 0.7,
    }
    steps = dict(STEPS, preflight={**STEPS["preflight"], "mode": "online"}, downgrade=downgrade)
    report = _report(outcome="failed-and-downgraded", steps=steps)
    assert report["revision_to"] == "0001" and report["timings"]["downgrade"] == 0.7
    assert report["notes"] == [
        "downgraded to 0001 with the schema the run started from; the backup was not restored, so what the "
        "application wrote during the run is kept",
        "the downgrade of 0002 is lossy: LOSSY - drops the column.",
    ]
    assert "  NOTE: the downgrade of 0002 is lossy: LOSSY - drops the column." in summary_lines(report)


def test_an_online_restore_says_writes_since_the_backup_may_be_lost_and_why_no_downgrade():
    steps = dict(
        STEPS,
        preflight={**STEPS["preflight"], "mode": "online"},
        backup={**STEPS["backup"], "manifest": {"started_at": "2026-11-25T10:00:00Z"}},
        downgrade={"ok": False, "msg": "downgrade of meetings failed: the downgrade of 0003 failed: boom"},
    )
    (note,) = _report(steps=steps)["notes"]
    assert note == (
        "online mode: the backup was restored instead of downgrading (downgrade of meetings failed: the "
        "downgrade of 0003 failed: boom); writes the application made after the backup "
        "(2026-11-25T10:00:00Z) may be lost"
    )
    offline = dict(steps, preflight={**STEPS["preflight"], "mode": "offline"})
    assert _report(steps=offline)["notes"] == []  # nothing could write while the run held the database


def test_offline_runs_report_how_long_the_application_had_no_connect():
    preflight = {
        **STEPS["preflight"],
        "mode": "offline",
        "freeze": {"revoked": ["app"], "frozen_at": "2026-11-25T10:00:00.250000+00:00"},
        "thaw": {"granted": ["app"], "thawed_at": "2026-11-25T10:04:10.500000+00:00"},
    }
    report = _report(outcome="succeeded", steps=dict(STEPS, preflight=preflight))
    assert report["frozen_seconds"] == 250.25
    assert "  application without CONNECT (offline mode) for 250.25s" in summary_lines(report)
    assert _report()["frozen_seconds"] is None  # online: nothing was frozen
