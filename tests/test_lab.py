"""The lab playbook end to end: the real ansible-playbook, a real cluster, temp folder and port.

One lifecycle (present -> second run changes nothing -> a database past 0001 is left alone -> absent)
plus the refusals, each showing its one-line reason and that nothing was made or touched. The lab's
staging inventory is used as a user would, with lab_dir and db_port overridden on the command line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from pgcluster import APP, APP_PASSWORD, MIGRATOR, MIGRATOR_PASSWORD, free_port

ROOT = Path(__file__).resolve().parent.parent
SECRETS = (MIGRATOR_PASSWORD, APP_PASSWORD)
TINY = {"users": 200, "meetings": 1000, "participants": 2000}


@dataclass
class Run:
    rc: int
    out: str

    def said(self, text: str) -> bool:
        """Whether the output carries text, whatever line wrapping the yaml callback applied."""

        def flat(s: str) -> str:
            return " ".join(s.replace("'", " ").split())

        return flat(text) in flat(self.out)

    def recap(self, field: str) -> int:
        """A PLAY RECAP counter: the only number a second run must hold at zero."""
        match = re.search(rf"\b{field}=(\d+)", self.out)
        assert match, f"no PLAY RECAP in output:\n{self.out[-3000:]}"
        return int(match.group(1))


def run_lab(lab_dir: Path, port: int, *extra: str) -> Run:
    """ansible-playbook playbooks/lab.yml against the lab staging inventory, redirected to a temp lab."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "PG", "MOLECULE_"))}
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    )
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        "inventories/lab/staging",
        "playbooks/lab.yml",
        "-e",
        f"lab_dir={lab_dir}",
        "-e",
        f"db_port={port}",
        "-e",
        "lab_scale=tiny",
        *extra,
    ]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    for secret in SECRETS:
        assert secret not in out, "a lab password reached the playbook output"
    return Run(proc.returncode, out)


def server_running(lab_dir: Path) -> bool:
    """A postmaster whose command line names this lab's data folder."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return any(str(lab_dir / "data") in line for line in ps.stdout.splitlines())


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def query(port: int, sql: str, user: str = APP, password: str = APP_PASSWORD) -> list[tuple]:
    with (
        contextlib.closing(
            psycopg2.connect(host="127.0.0.1", port=port, dbname="meetings", user=user, password=password)
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(sql)
        return cur.fetchall()


@pytest.fixture
def base() -> Iterator[Path]:
    """A temp folder the postgres OS user can traverse (pytest's tmp_path is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="labtest-"))
    path.chmod(0o755)
    yield path
    if any(server_running(p) for p in path.iterdir()):
        # Safety net only: the tests remove their lab through the playbook.
        run_lab(path / "staging", 0, "-e", "lab_state=absent")
    shutil.rmtree(path, ignore_errors=True)


def test_lab_lifecycle(base: Path) -> None:
    lab_dir, port = base / "staging", free_port()

    first = run_lab(lab_dir, port)
    assert first.rc == 0, first.out[-4000:]
    assert first.recap("changed") > 0
    assert query(port, "SELECT version_num FROM alembic_version") == [("0001",)]
    counts = query(
        port,
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM meetings),"
        " (SELECT count(*) FROM meeting_participants)",
    )
    assert counts == [(TINY["users"], TINY["meetings"], TINY["participants"])]
    assert oct((lab_dir / "run").stat().st_mode & 0o777) == "0o700"
    assert oct(lab_dir.stat().st_mode & 0o777) == "0o700"

    second = run_lab(lab_dir, port)
    assert second.rc == 0, second.out[-4000:]
    assert second.recap("changed") == 0, second.out[-4000:]

    # A lab moved past the starting point (as a demo leaves it) keeps its revision and data.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIGRATION_", "PG"))}
    env["DATABASE_URL"] = f"postgresql+psycopg2://{MIGRATOR}:{MIGRATOR_PASSWORD}@127.0.0.1:{port}/meetings"
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "upgrade", "0002"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    # The same run changes a server setting: lab.conf is rewritten and the server restarted, nothing else.
    past = run_lab(lab_dir, port, "-e", '{"lab_server_settings": {"work_mem": "8MB"}}')
    assert past.rc == 0 and past.recap("changed") == 2, past.out[-4000:]
    assert query(port, "SHOW work_mem") == [("8MB",)]
    assert past.said("is at revision 0002, not 0001: left alone")
    assert query(port, "SELECT version_num FROM alembic_version") == [("0002",)]

    gone = run_lab(lab_dir, port, "-e", "lab_state=absent")
    assert gone.rc == 0, gone.out[-4000:]
    assert not lab_dir.exists()
    assert not server_running(lab_dir)
    assert not port_open(port)


def test_check_mode_on_a_new_lab_makes_nothing(base: Path) -> None:
    lab_dir, port = base / "staging", free_port()
    run = run_lab(lab_dir, port, "--check")
    assert run.rc == 0, run.out[-4000:]
    assert run.said("is not running, so its roles, database and data are not inspected"), run.out[-3000:]
    assert not lab_dir.exists()
    assert not port_open(port)


def test_port_in_use_is_refused_before_anything_is_made(base: Path) -> None:
    lab_dir = base / "staging"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        run = run_lab(lab_dir, port)
    assert run.rc != 0
    assert run.said(f"Port {port} on 127.0.0.1 is already in use by another process"), run.out[-3000:]
    assert not lab_dir.exists()


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["-e", "lab_scale=huge"], "lab_scale must be tiny, small, large or a dict of positive integers"),
        (
            ["-e", '{"lab_scale": {"users": 10, "meetings": 0, "participants": 5}}'],
            "lab_scale must be tiny, small, large or a dict of positive integers",
        ),
        (["-e", "db_host=10.1.2.3"], "The lab makes local throwaway clusters only"),
        (["-e", "lab_dir=relative/lab"], "lab_dir must be an absolute path"),
    ],
    ids=["unknown-scale", "zero-count", "remote-host", "relative-dir"],
)
def test_bad_input_is_refused(base: Path, extra: list[str], reason: str) -> None:
    run = run_lab(base / "staging", free_port(), *extra)
    assert run.rc != 0
    assert run.said(reason), run.out[-3000:]
    assert list(base.iterdir()) == []
    assert not (ROOT / "relative").exists()


def test_folder_not_made_by_the_lab_is_never_taken_or_removed(base: Path) -> None:
    lab_dir = base / "staging"
    lab_dir.mkdir()
    precious = lab_dir / "precious.txt"
    precious.write_text("not the lab's\n")
    port = free_port()

    made = run_lab(lab_dir, port)
    assert made.rc != 0
    assert made.said("has no .lab-cluster marker: it was not made by the lab role"), made.out[-3000:]

    removed = run_lab(lab_dir, port, "-e", "lab_state=absent")
    assert removed.rc != 0
    assert removed.said("it is not removed"), removed.out[-3000:]
    assert sorted(p.name for p in lab_dir.iterdir()) == ["precious.txt"]
    assert precious.read_text() == "not the lab's\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another OS user")
def test_folder_the_server_user_cannot_reach_is_refused(base: Path) -> None:
    private = base / "private"
    private.mkdir(mode=0o700)
    run = run_lab(private / "staging", free_port())
    assert run.rc != 0
    assert run.said(f"The server's OS user postgres cannot reach {private}"), run.out[-3000:]
    assert list(private.iterdir()) == []
