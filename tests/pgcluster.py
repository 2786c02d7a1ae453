"""Throwaway PostgreSQL clusters for the test suite.

Each cluster lives in its own directory with its own port, is reached by the
superuser over a private Unix socket (trust, socket directory 0700), and by
every other role over TCP with scram-sha-256, so password handling is exercised
the way it is on a real server. As root the server runs as the ``postgres``
OS user, because initdb refuses root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from psycopg2 import sql

PG_BINDIR = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))

MIGRATOR = "meetings_owner"
MIGRATOR_PASSWORD = "lab-owner-pw"
APP = "meetings_app"
APP_PASSWORD = "lab-app-pw"


def free_port() -> int:
    """Ask the kernel for a port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> str | None:
    """The OS user the server must run as: postgres when we are root, else ourselves."""
    return "postgres" if os.geteuid() == 0 else None


@dataclass
class PgCluster:
    """One initdb'd, running cluster. Use :func:`start_cluster` to make one."""

    base: Path
    port: int
    run_as: str | None = field(default_factory=_server_user)

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def sockdir(self) -> Path:
        return self.base / "run"

    @property
    def logfile(self) -> Path:
        return self.base / "server.log"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(PG_BINDIR / argv[0]), *argv[1:]]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True)

    def init(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(mode=0o700, exist_ok=True)
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            for p in (self.base, self.sockdir):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        conf = self.datadir / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                f"\nport = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sockdir}'\n"
                "unix_socket_permissions = 0700\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 128MB\nmax_connections = 60\n"
                "password_encryption = 'scram-sha-256'\n"
            )

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False)

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would."""
        pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)

    def superuser_conn(self, dbname: str = "postgres"):
        conn = psycopg2.connect(host=str(self.sockdir), port=self.port, user="postgres", dbname=dbname)
        conn.autocommit = True
        return conn

    def url(self, dbname: str, user: str = MIGRATOR, password: str | None = MIGRATOR_PASSWORD) -> str:
        cred = f"{user}:{password}" if password is not None else user
        return f"postgresql+psycopg2://{cred}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str, user: str = MIGRATOR, password: str = MIGRATOR_PASSWORD):
        return psycopg2.connect(host="127.0.0.1", port=self.port, user=user, password=password, dbname=dbname)

    def create_roles(self) -> None:
        """The lab's role model: a migration role owning the schema (not superuser) and an app role."""
        with contextlib.closing(self.superuser_conn()) as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD %s").format(sql.Identifier(MIGRATOR)),
                [MIGRATOR_PASSWORD],
            )
            cur.execute(sql.SQL("GRANT pg_signal_backend, pg_monitor TO {}").format(sql.Identifier(MIGRATOR)))
            cur.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(APP)), [APP_PASSWORD]
            )

    def create_database(self, name: str) -> None:
        """A database owned by the migration role, whose public schema it owns too."""
        with contextlib.closing(self.superuser_conn()) as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(MIGRATOR))
            )
        with contextlib.closing(self.superuser_conn(name)) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(MIGRATOR)))
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(APP)))
            cur.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public "
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
                ).format(sql.Identifier(MIGRATOR), sql.Identifier(APP))
            )
            cur.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public "
                    "GRANT USAGE, SELECT ON SEQUENCES TO {}"
                ).format(sql.Identifier(MIGRATOR), sql.Identifier(APP))
            )

    def drop_database(self, name: str) -> None:
        with contextlib.closing(self.superuser_conn()) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def start_cluster(base: Path | None = None, port: int | None = None) -> PgCluster:
    """initdb, start, and create the lab roles in a fresh cluster."""
    if base is None:
        base = Path(tempfile.mkdtemp(prefix="pgtest-"))
        base.chmod(0o755)
    cluster = PgCluster(base=base, port=port or free_port())
    cluster.init()
    cluster.start()
    cluster.create_roles()
    return cluster


def destroy_cluster(cluster: PgCluster) -> None:
    cluster.stop("immediate")
    shutil.rmtree(cluster.base, ignore_errors=True)


@contextlib.contextmanager
def cluster_context() -> Iterator[PgCluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        destroy_cluster(cluster)
