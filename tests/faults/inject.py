"""Fault injection while a real ansible-playbook runs: gates, process sampling, output by host."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ansible_run import ROOT, ansible_env, playbook_cmd
from pgcluster import PgCluster

from .projects import GATE_KEYS


class Gate:
    """Holds the gate's advisory lock in one database, so a GATED revision stops there mid-migration."""

    def __init__(self, pg: PgCluster, dbname: str) -> None:
        self.pg, self.dbname = pg, dbname
        self.conn = pg.superuser_conn(dbname)
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s, %s)", GATE_KEYS)

    def wait_for_migration(self, timeout: float = 120) -> int:
        """The pid of the migration's backend once it waits at the gate."""
        deadline = time.monotonic() + timeout
        with contextlib.closing(self.pg.superuser_conn(self.dbname)) as conn, conn.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND classid = %s AND objid = %s AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())",
                    GATE_KEYS,
                )
                row = cur.fetchone()
                if row:
                    return row[0]
                time.sleep(0.2)
        raise AssertionError(f"the migration of {self.dbname} never reached the gate")

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def signal_backend(pg: PgCluster, dbname: str, pid: int, how: str) -> None:
    """pg_cancel_backend or pg_terminate_backend, as an administrator would."""
    with contextlib.closing(pg.superuser_conn(dbname)) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT pg_{how}_backend(%s)", [pid])
        assert cur.fetchone()[0], f"could not {how} backend {pid}"


def children(pid: int) -> list[int]:
    """Direct children of a process (from /proc), e.g. a postmaster's backends."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat_fields[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not end")
        time.sleep(0.1)


class ArgvSampler(threading.Thread):
    """Samples every process's argv while a run goes on; remembers any that holds a secret."""

    def __init__(self, secrets: list[str], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.secrets, self.interval = secrets, interval
        self.samples = 0
        self.leaks: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if any(secret in argv for secret in self.secrets):
                    self.leaks.append(f"pid {entry.name}: {argv[:200]}")
            self.samples += 1
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@contextlib.contextmanager
def playbook(
    playbook_path: str, hosts: dict, extra: dict, tmp_path: Path, *args: str
) -> Iterator[subprocess.Popen[str]]:
    """ansible-playbook started in the background (own process group), for faults injected meanwhile."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cmd = playbook_cmd(playbook_path, hosts, extra, tmp_path, *args)
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=ansible_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def failures_by_host(stdout: str) -> dict[str, list[str]]:
    """The 'msg' of each failed task, by host (`fatal: [host]: FAILED! => {json}`)."""
    found: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if line.startswith("fatal: [") and " => " in line:
            host = line[len("fatal: [") : line.index("]")]
            found.setdefault(host, []).append(json.loads(line.split(" => ", 1)[1])["msg"])
    return found


def reports(report_dir: Path) -> dict[str, dict]:
    """The run reports in a directory, by host."""
    return {r["host"]: r for r in (json.loads(p.read_text()) for p in report_dir.glob("*.json"))}
