"""The run report: what it records, what it never records, where it lands."""

import json
import stat
from datetime import UTC, datetime

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.report import (
    build_report,
    decide_outcome,
    failure_summary,
    outcome_of,
    restore_error_of,
    summary_lines,
    write_report,
)

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
        "failed": False,
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
        downgrade={"failed": True, "msg": "downgrade of meetings failed: the downgrade of 0003 failed: boom"},
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
    steps = dict(
        STEPS,
        preflight={**STEPS["preflight"], "mode": "offline"},
        freeze={"revoked": ["app"], "frozen_at": "2026-11-25T10:00:00.250000+00:00"},
        thaw={"granted": ["app"], "thawed_at": "2026-11-25T10:04:10.500000+00:00"},
    )
    report = _report(outcome="succeeded", steps=steps)
    assert report["frozen_seconds"] == 250.25
    assert "  application without CONNECT (offline mode) for 250.25s" in summary_lines(report)
    assert _report()["frozen_seconds"] is None  # online: nothing was frozen


def test_an_online_run_whose_restore_failed_too_says_so_and_never_that_it_was_restored():
    steps = dict(
        STEPS,
        preflight={**STEPS["preflight"], "mode": "online"},
        downgrade={"failed": True, "msg": "downgrade of meetings failed: boom"},
        restore={"failed": True, "msg": "restore of meetings failed: sha256 differs"},
    )
    report = _report(outcome="failed-restore-failed", steps=steps)
    assert report["notes"] == [
        "online mode: not downgraded (downgrade of meetings failed: boom), and the restore failed too: the "
        "database may be partly migrated"
    ]
    assert report["restore"]["restored_database"] is None


def test_the_outcome_comes_from_the_steps_own_results():
    skipped = {"skipped": True, "changed": False}
    # A task skipped by its `when` still registers: it did not run, so nothing was touched.
    assert outcome_of({"snapshot": skipped, "backup": None}, "smoke", False) == "failed-unchanged"
    assert outcome_of({"snapshot": {"archive": "/b/x.dump"}}, "smoke", False) == "failed-restore-failed"
    assert outcome_of({"window": {"failed": True, "verdict": "defer"}}, "preflight", False) == "deferred"
    assert outcome_of({"window": {"failed": True, "verdict": "refuse"}}, "preflight", False) == "refused"
    downgraded = {"snapshot": {"archive": "/b/x.dump"}, "downgrade": {"revision_after": "0001"}}
    assert outcome_of(downgraded, "smoke", False) == "failed-and-downgraded"
    not_downgraded = dict(
        downgraded, downgrade={"failed": True, "msg": "no"}, restore={"fingerprint_ok": True}
    )
    assert outcome_of(not_downgraded, "smoke", False) == "failed-and-restored"
    restore_failed = dict(not_downgraded, restore={"failed": True, "msg": "restore of x failed: boom"})
    assert restore_error_of(restore_failed) == "restore of x failed: boom"
    assert restore_error_of(restore_failed, "backup of x failed: dump") == "backup of x failed: dump"
    assert (
        outcome_of(restore_failed, "smoke", False, restore_error_of(restore_failed))
        == "failed-restore-failed"
    )


def test_the_failure_summary_is_rendered_from_the_report():
    refused = _report(outcome="refused", failed_step="preflight", error="pre-flight of meetings refused: no")
    assert failure_summary(refused).splitlines() == [
        "staging meetings (h1): the preflight step failed: pre-flight of meetings refused: no",
        "Nothing was changed: the run stopped before migrating.",
    ]
    failed = _report(
        outcome="failed-restore-failed", restore_error="restore of meetings failed: sha256 differs"
    )
    lines = failure_summary(failed).splitlines()
    assert lines[1] == "THE RESTORE FAILED: restore of meetings failed: sha256 differs"
    assert (
        lines[3]
        == "Manual steps: ansible-playbook -i <this inventory> pgmigrate.pipeline.restore -e backup=/b/x.json"
    )
    steps = dict(STEPS, restore={"starting_revision": "0001", "forensic_database": "meetings__failed_x"})
    restored = _report(outcome="failed-and-restored", steps=steps)
    assert failure_summary(restored).splitlines()[1:] == [
        "Restored meetings from /b/x.json (verified at revision 0001).",
        "The failed database is kept as meetings__failed_x for forensics.",
    ]
