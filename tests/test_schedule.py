"""playbooks/schedule.yml: a systemd timer + service (verified, next trigger in the window), or a cron entry.

systemd is not PID 1 here, so units go to a temporary directory and are never started; systemd-analyze
verify and calendar read them offline. No database is needed: the schedule only writes files.
"""

from __future__ import annotations

import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.window import check, parse_window
from ansible_run import run_playbook, single_host
from pgcluster import free_port

WINDOW = {
    "db_preflight_window_days": ["sat", "sun"],
    "db_preflight_window_start": "01:00",
    "db_preflight_window_end": "05:00",
    "db_preflight_window_timezone": "Europe/Berlin",
}


class _NoCluster:
    port = free_port()


def schedule(tmp_path: Path, backend: str, state: str = "present", **extra):
    extra_vars = {
        **WINDOW,
        "schedule_backend": backend,
        "schedule_state": state,
        "schedule_systemd_dir": str(tmp_path / "units"),
        "schedule_cron_dir": str(tmp_path / "cron"),
        "schedule_log_file": str(tmp_path / "log" / "runs.log"),
        "schedule_lock_file": str(tmp_path / "run.lock"),
        "schedule_report_dir": str(tmp_path / "reports"),
        "schedule_inventory": str(tmp_path / "inventory.yml"),
        **extra,
    }
    (tmp_path / "units").mkdir(exist_ok=True)
    (tmp_path / "cron").mkdir(exist_ok=True)
    return run_playbook("playbooks/schedule.yml", single_host(_NoCluster, "meetings"), extra_vars, tmp_path)


def test_systemd_units_verify_and_the_next_trigger_falls_inside_the_window(tmp_path: Path):
    proc = schedule(tmp_path, "systemd")
    assert proc.returncode == 0, proc.stdout[-3000:]
    timer = tmp_path / "units" / "pg-migrate-staging.timer"
    service = tmp_path / "units" / "pg-migrate-staging.service"
    assert "OnCalendar=Sat,Sun *-*-* 01:05:00 Europe/Berlin" in timer.read_text()
    text = service.read_text()
    assert "/usr/bin/flock --nonblock --conflict-exit-code 0 " + str(tmp_path / "run.lock") in text
    assert "-e db_preflight_run_kind=scheduled -e db_preflight_mode=offline" in text
    assert f"StandardOutput=append:{tmp_path / 'log' / 'runs.log'}" in text
    assert " pgmigrate.pipeline.migrate " in text

    verify = subprocess.run(
        ["systemd-analyze", "verify", str(timer)],
        capture_output=True,
        text=True,
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path / 'units'}:", "PATH": "/usr/bin:/bin"},
    )
    assert verify.returncode == 0, verify.stderr

    calendar = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations", "4", "Sat,Sun *-*-* 01:05:00 Europe/Berlin"],
        capture_output=True,
        text=True,
        check=True,
    )
    elapses = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", calendar.stdout)
    assert len(elapses) == 4
    win = parse_window(**{k.removeprefix("db_preflight_window_"): v for k, v in WINDOW.items()})
    for text in elapses:
        moment = datetime.fromisoformat(text + "+00:00")
        assert check(win, moment)["inside"], text
    assert "next run" in proc.stdout and "UTC" in proc.stdout

    removed = schedule(tmp_path, "systemd", state="absent")
    assert removed.returncode == 0, removed.stdout[-3000:]
    assert not timer.exists() and not service.exists()


def test_cron_entry_checks_the_hour_in_the_window_time_zone_and_is_removed(tmp_path: Path):
    proc = schedule(tmp_path, "cron")
    assert proc.returncode == 0, proc.stdout[-3000:]
    cron = (tmp_path / "cron" / "pg-migrate-staging").read_text()
    (entry,) = [line for line in cron.splitlines() if line.startswith("05 ")]
    guard = 'case "$(TZ=Europe/Berlin date +\\%a\\%H | tr A-Z a-z)" in sat01|sun01)'
    assert entry.startswith(f"05 * * * * root {guard}")
    assert "flock --nonblock --conflict-exit-code 0" in entry and "db_preflight_run_kind=scheduled" in entry
    removed = schedule(tmp_path, "cron", state="absent")
    assert removed.returncode == 0, removed.stdout[-3000:]
    assert not (tmp_path / "cron" / "pg-migrate-staging").exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"db_preflight_window_days": []}, "a schedule needs the maintenance window"),
        ({"db_preflight_window_start": "23:58"}, "passes midnight"),
    ],
)
def test_a_schedule_that_cannot_fit_the_window_is_refused_and_writes_nothing(tmp_path, extra, expected):
    proc = schedule(tmp_path, "systemd", **extra)
    assert proc.returncode != 0 and expected in proc.stdout
    assert list((tmp_path / "units").iterdir()) == []


HOSTILE_DIR = 'it\'s a "dir" $(touch PWNED) `touch PWNED`; touch PWNED'


def _stub_ansible_playbook(tmp_path: Path) -> Path:
    """Stands in for ansible-playbook: records where it ran, its ANSIBLE_CONFIG and its argv, one per line."""
    stub = tmp_path / "bin" / "ansible-playbook"
    stub.parent.mkdir()
    stub.write_text(
        "#!/bin/sh\n"
        f"{{ pwd; printf '%s\\n' \"$ANSIBLE_CONFIG\"; printf '%s\\n' \"$@\"; }} > {tmp_path / 'ran.txt'}\n"
    )
    stub.chmod(0o755)
    return stub


def test_hostile_values_reach_the_scheduled_command_as_words_never_as_shell(tmp_path: Path):
    """The cron line is run by /bin/sh: a project directory, time zone, inventory and report directory full of
    quotes, $(), backquotes and semicolons must arrive as exactly those strings, and nothing else runs."""
    project = tmp_path / HOSTILE_DIR
    project.mkdir()
    inventory = str(tmp_path / "inv'; touch PWNED #.yml")
    reports = str(tmp_path / "rep $(touch PWNED)")
    proc = schedule(
        tmp_path,
        "cron",
        schedule_project_dir=str(project),
        schedule_inventory=inventory,
        schedule_report_dir=reports,
        schedule_ansible_playbook=str(_stub_ansible_playbook(tmp_path)),
        db_preflight_window_timezone="UTC$(touch PWNED)",
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    cron = (tmp_path / "cron" / "pg-migrate-staging").read_text()
    (entry,) = [line for line in cron.splitlines() if line[:1].isdigit()]
    (tmp_path / "log").mkdir()
    # The whole line as cron's /bin/sh runs it: the hostile time zone must not run anything either.
    subprocess.run(["/bin/sh", "-c", entry.split(" root ", 1)[1]], cwd=tmp_path, check=True)
    # The command the guard starts in the window, run directly (no clock involved).
    command = entry.split(") cd ", 1)[1].rsplit(";; esac", 1)[0]
    subprocess.run(["/bin/sh", "-c", "cd " + command.replace("\\%", "%")], cwd=tmp_path, check=True)
    assert not list(tmp_path.rglob("PWNED"))
    where, config, *argv = (tmp_path / "ran.txt").read_text().splitlines()
    assert where == str(project) and config == str(project / "ansible.cfg")
    assert argv == [
        "-i",
        inventory,
        "pgmigrate.pipeline.migrate",
        "-e",
        "db_preflight_run_kind=scheduled",
        "-e",
        "db_preflight_mode=offline",
        "-e",
        f"db_report_dir={reports}",
    ]


def test_the_service_quotes_every_word_for_systemd(tmp_path: Path):
    """systemd splits ExecStart itself (quotes as in sh, % and $ special): the hostile words stay whole."""
    reports = str(tmp_path / "rep 100% $HOME")
    proc = schedule(tmp_path, "systemd", schedule_report_dir=reports)  # the role runs systemd-analyze verify
    assert proc.returncode == 0, proc.stdout[-3000:]
    service = (tmp_path / "units" / "pg-migrate-staging.service").read_text()
    (exec_start,) = [line for line in service.splitlines() if line.startswith("ExecStart=")]
    assert "'db_report_dir=" + reports.replace("%", "%%").replace("$", "$$") + "'" in exec_start
