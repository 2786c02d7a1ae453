"""Run the real ansible-playbook against fixture clusters, the way a user would.

Inventories and passwords go into 0600 files in the test's tmp_path; a password never reaches argv (the
helper asserts it). Output uses the JSON result format, so a failed task's message is one parseable line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from pgcluster import APP, APP_PASSWORD, MIGRATOR, MIGRATOR_PASSWORD, PgCluster

ROOT = Path(__file__).resolve().parent.parent


def write_private(path: Path, data: dict) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(data, f)
    return path


def host_vars(pg: PgCluster, dbname: str, environment: str = "staging", **extra) -> dict:
    """Connection variables of docs/DESIGN.md, without passwords (those go in the private vars file)."""
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "db_environment": environment,
        "db_host": "127.0.0.1",
        "db_port": pg.port,
        "db_name": dbname,
        "db_migration_user": MIGRATOR,
        "db_app_user": APP,
        "db_alembic_config": str(ROOT / "alembic.ini"),
        **extra,
    }


def ansible_env() -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }


def playbook_cmd(playbook: str, hosts: dict[str, dict], extra: dict, tmp_path: Path, *args: str) -> list[str]:
    """The argv of an ansible-playbook run; `playbook` is relative to the repository root."""
    inventory = write_private(tmp_path / "inventory.yml", {"all": {"hosts": hosts}})
    secrets = {"db_migration_password": MIGRATOR_PASSWORD, "db_app_password": APP_PASSWORD, **extra}
    vars_file = write_private(tmp_path / "vars.yml", secrets)
    cmd = ["ansible-playbook", "-i", str(inventory), "-e", f"@{vars_file}", playbook, *args]
    assert MIGRATOR_PASSWORD not in " ".join(cmd) and APP_PASSWORD not in " ".join(cmd)
    return cmd


def run_playbook(
    playbook: str, hosts: dict[str, dict], extra: dict, tmp_path: Path, *args: str, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    cmd = playbook_cmd(playbook, hosts, extra, tmp_path, *args)
    return subprocess.run(cmd, cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=timeout)


def failure_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The 'msg' of each failed task (`fatal: [host]: FAILED! => {json}`)."""
    return [
        json.loads(line.split(" => ", 1)[1])["msg"]
        for line in proc.stdout.splitlines()
        if line.startswith("fatal: [") and " => " in line
    ]


def single_host(pg: PgCluster, dbname: str, **extra) -> dict[str, dict]:
    return {f"{dbname}-host": host_vars(pg, dbname, **extra)}


__all__ = [
    "APP",
    "MIGRATOR",
    "ROOT",
    "ansible_env",
    "failure_lines",
    "host_vars",
    "playbook_cmd",
    "run_playbook",
    "single_host",
    "write_private",
]
