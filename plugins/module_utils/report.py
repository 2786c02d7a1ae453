"""The run report: one JSON document and a short human summary per run and database.

The playbook hands every step's result here once, at the end (its `always:` section), so the report
is written whether the run succeeded, was refused, or failed and was restored.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

OUTCOMES = (
    "succeeded",
    "dry-run",
    "refused",
    "failed-unchanged",
    "failed-and-downgraded",
    "failed-and-restored",
    "failed-restore-failed",
    "deferred",
)

# Every step's registered result, in pipeline order (migrate.yml hands them over by these names).
STEPS = (
    "preflight",
    "history",
    "gate",
    "lock",
    "window",
    "lint",
    "freeze",
    "snapshot",
    "backup",
    "migrate",
    "thaw",
    "smoke",
    "downgrade",
    "restore",
)
# Outcomes after which the run exits non-zero, with the report's failure summary as its message.
FAILED_OUTCOMES = (
    "refused",
    "failed-unchanged",
    "failed-and-downgraded",
    "failed-and-restored",
    "failed-restore-failed",
)

# Keys a step result may carry that must never reach a report (defence in depth: modules don't return them).
_SECRET_KEYS = {"password", "login_password", "db_migration_password", "db_app_password", "pgpass"}


def decide_outcome(
    stopped_at: str,
    dry_run: bool,
    restored: bool,
    restore_error: str = "",
    touched: bool = True,
    downgraded: bool = False,
) -> str:
    """How a run ended, from where it stopped and what the rescue managed.

    Stopping in pre-flight or backup changed nothing (a refusal). A later failure in a run that migrated
    nothing (no revision was pending, so no backup was taken) left the database as it was. Otherwise the
    database was touched, and only a verified downgrade (online mode: back at the starting revision with
    the starting schema) or a verified restore makes it a clean failure.
    """
    if stopped_at == "done":
        return "dry-run" if dry_run else "succeeded"
    if stopped_at in ("preflight", "backup"):
        return "refused"
    if not touched:
        return "failed-unchanged"
    if downgraded:
        return "failed-and-downgraded"
    if restored and not restore_error:
        return "failed-and-restored"
    return "failed-restore-failed"


def present(result: dict | None) -> bool:
    """Whether a step ran: registered, and not skipped (a task skipped by its ``when`` still registers)."""
    return bool(result) and not result.get("skipped")


def restore_error_of(steps: dict[str, dict | None], given: str = "") -> str:
    """Why the way back by restore failed: what the playbook's rescue caught, else the restore's own error."""
    restore = steps.get("restore")
    if given or not (present(restore) and restore.get("failed")):
        return given
    return str(restore.get("msg") or "the restore failed")


def outcome_of(steps: dict[str, dict | None], stopped_at: str, dry_run: bool, restore_error: str = "") -> str:
    """The outcome from the steps' own results: a window that deferred the run, a downgrade or a restore
    that succeeded, and whether a backup was started (nothing pending: the database was not touched)."""
    window = steps.get("window") or {}
    if present(window) and window.get("verdict") == "defer":
        return "deferred"
    downgrade, restore = steps.get("downgrade"), steps.get("restore")
    return decide_outcome(
        stopped_at,
        dry_run,
        restored=present(restore) and not restore.get("failed"),
        restore_error=restore_error,
        touched=present(steps.get("snapshot")) or present(steps.get("backup")),
        downgraded=present(downgrade) and not downgrade.get("failed"),
    )


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k.lower() not in _SECRET_KEYS and k != "invocation"}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _seconds(result: dict | None) -> float | None:
    if not result:
        return None
    value = result.get("duration_seconds")
    return round(float(value), 2) if value is not None else None


def build_report(
    *,
    host: str,
    environment: str,
    database: str,
    outcome: str,
    steps: dict[str, dict | None],
    failed_step: str = "",
    error: str = "",
    restore_error: str = "",
    finished_at: datetime | None = None,
) -> dict:
    """Assemble the JSON document; pure, so it is tested without files."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}")
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise ValueError(f"unknown step(s) {', '.join(sorted(unknown))}; expected {', '.join(STEPS)}")
    steps = {name: result for name, result in steps.items() if present(result)}
    preflight = steps.get("preflight") or {}
    migrate = steps.get("migrate") or {}
    backup = steps.get("backup") or {}
    restore = steps.get("restore") or {}
    downgrade = steps.get("downgrade") or {}
    finished = (finished_at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if restore.get("fingerprint_ok"):  # after a verified restore the database is back where it started
        revision_to = restore.get("starting_revision")
    elif downgrade and not downgrade.get("failed"):
        revision_to = downgrade.get("revision_after")
    else:
        revision_to = migrate.get("revision_after", preflight.get("current_revision"))
    return {
        "format_version": 1,
        "run_id": preflight.get("run_id", ""),
        "host": host,
        "environment": environment,
        "database": database,
        "outcome": outcome,
        "finished_at": finished,
        "failed_step": failed_step,
        "error": error,
        "revision_from": migrate.get("revision_before", preflight.get("current_revision")),
        "revision_to": revision_to,
        "target_revision": preflight.get("target_revision"),
        "applied": migrate.get("applied", []),
        "backup": {"manifest": backup.get("manifest_path"), "archive": backup.get("archive")},
        "restore": {
            "restored_database": restore.get("restored_database") if not restore.get("failed") else None,
            "forensic_database": restore.get("forensic_database") if not restore.get("failed") else None,
            "error": restore_error,
        },
        "mode": preflight.get("mode", ""),
        "frozen_seconds": frozen_seconds(steps.get("freeze") or {}, steps.get("thaw") or {}),
        "notes": rescue_notes(outcome, preflight.get("mode", ""), backup, downgrade),
        "timings": {name: _seconds(steps[name]) for name in STEPS if _seconds(steps.get(name)) is not None},
        "steps": {name: _scrub(result) for name, result in steps.items() if result},
    }


def frozen_seconds(freeze: dict, thaw: dict) -> float | None:
    """Offline mode: how long the application had no CONNECT (revoked -> given back), None otherwise."""
    start = (freeze.get("frozen_at") or "").strip()
    end = (thaw.get("thawed_at") or "").strip()
    if not (start and end):
        return None
    try:
        return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 2)
    except ValueError:
        return None


def rescue_notes(outcome: str, mode: str, backup: dict, downgrade: dict) -> list[str]:
    """What an operator must know about the data after an online run's rescue (nothing in offline mode,
    where the application could not write while the run held the database)."""
    notes: list[str] = []
    downgrade = downgrade or {}
    if outcome == "failed-and-downgraded":
        notes.append(
            f"downgraded to {downgrade.get('revision_after')} with the schema the run started from; "
            "the backup was not restored, so what the application wrote during the run is kept"
        )
        for entry in downgrade.get("lossy") or []:
            notes.append(f"the downgrade of {entry['revision']} is lossy: {entry['note']}")
    elif mode == "online" and outcome == "failed-and-restored":
        taken = (backup.get("manifest") or {}).get("started_at") or "the start of the run"
        notes.append(
            f"online mode: the backup was restored instead of downgrading{_why_not(downgrade)}; writes the "
            f"application made after the backup ({taken}) may be lost"
        )
    elif mode == "online" and outcome == "failed-restore-failed":
        notes.append(
            f"online mode: not downgraded{_why_not(downgrade)}, and the restore failed too: the database "
            "may be partly migrated"
        )
    return notes


def _why_not(downgrade: dict) -> str:
    return f" ({downgrade['msg']})" if downgrade.get("msg") and downgrade.get("failed") else ""


def summary_lines(report: dict) -> list[str]:
    """The short human summary printed at the end of the run and saved beside the JSON."""
    lines = [
        f"{report['environment']} {report['database']} ({report['host']}): {report['outcome'].upper()}",
        f"  run {report['run_id'] or '-'}, revision {report['revision_from'] or 'base'} -> "
        f"{report['revision_to'] or 'base'} (target {report['target_revision'] or '-'})",
    ]
    for entry in report["applied"]:
        lines.append(f"  applied {entry['revision']} in {entry['seconds']:.2f}s")
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in report["timings"].items() if v is not None)
    if timings:
        lines.append(f"  timings: {timings}")
    if report.get("frozen_seconds") is not None:
        lines.append(f"  application without CONNECT (offline mode) for {report['frozen_seconds']:.2f}s")
    if report["failed_step"]:
        lines.append(f"  failed at {report['failed_step']}: {report['error']}")
    if report["backup"]["manifest"]:
        lines.append(f"  backup manifest: {report['backup']['manifest']}")
    for note in report.get("notes", []):
        lines.append(f"  NOTE: {note}")
    if report["restore"]["restored_database"]:
        lines.append(
            f"  restored {report['restore']['restored_database']} from the backup; "
            f"failed database kept as {report['restore']['forensic_database'] or '(dropped)'}"
        )
    return lines


def failure_summary(report: dict) -> str:
    """What a failed run says when it exits: the cause, then what the database is now and what to do."""
    steps = report["steps"]
    manifest = report["backup"]["manifest"]
    where = f"{report['environment']} {report['database']} ({report['host']})"
    lines = [f"{where}: the {report['failed_step'] or '?'} step failed: {report['error']}"]
    outcome = report["outcome"]
    if outcome in ("refused", "failed-unchanged"):
        lines.append("Nothing was changed: the run stopped before migrating.")
    elif outcome == "failed-restore-failed":
        lines += [
            f"THE RESTORE FAILED: {report['restore']['error']}",
            f"The database may be partly migrated. Backup manifest: {manifest or 'none'}",
            "Manual steps: ansible-playbook -i <this inventory> pgmigrate.pipeline.restore "
            f"-e backup={manifest or '<manifest>'}",
        ]
    elif outcome == "failed-and-downgraded":
        downgrade = steps.get("downgrade") or {}
        lines.append(
            f"Downgraded {report['database']} to {downgrade.get('revision_after')} ({report['mode']} mode), "
            "with the schema it had before the run; no backup was restored, so anything the application "
            "wrote during the run is kept."
        )
        if downgrade.get("lossy"):
            lossy = ", ".join(entry["revision"] for entry in downgrade["lossy"])
            lines.append(
                "Lossy downgrades (what the application wrote to what they removed since the upgrade is "
                f"gone): {lossy}."
            )
        lines.append(f"Backup, if it is needed after all: {manifest or '(none)'}")
    elif outcome == "failed-and-restored":
        restore = steps.get("restore") or {}
        forensic = report["restore"]["forensic_database"] or "(dropped)"
        lines += [
            f"Restored {report['database']} from {manifest} "
            f"(verified at revision {restore.get('starting_revision')}).",
            f"The failed database is kept as {forensic} for forensics.",
        ]
        if report["mode"] == "online":
            downgrade = steps.get("downgrade") or {}
            why = downgrade.get("msg") if downgrade.get("failed") else "no downgrade was possible"
            lines.append(
                f"Online mode: not downgraded ({why}), so writes the application made after the backup "
                "may be lost."
            )
    return "\n".join(lines)


def write_report(report_dir: str | os.PathLike, report: dict) -> tuple[Path, Path]:
    """Write `<run_id>__<environment>__<host>.json` and `.txt`; the directory is created 0700."""
    directory = Path(report_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    run_id = report["run_id"] or report["finished_at"].replace(":", "")
    stem = f"{run_id}__{report['environment']}__{report['host']}"
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem)
    json_path = directory / f"{stem}.json"
    text_path = directory / f"{stem}.txt"
    for path, content in (
        (json_path, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n"),
        (text_path, "\n".join(summary_lines(report)) + "\n"),
    ):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(content)
    return json_path, text_path
