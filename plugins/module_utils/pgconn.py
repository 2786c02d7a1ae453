"""Connections to the target database, shared by every custom module.

Passwords travel in exactly two ways: as a keyword to psycopg2 (in-process, never argv), and for
child processes (pg_dump, pg_restore, alembic) as a pgpass file that lives in a private 0700
directory for the duration of the call. Nothing here ever prints or returns a password.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

try:
    import psycopg2
    from psycopg2 import sql

    HAS_PSYCOPG2 = True
except ImportError:  # pragma: no cover - reported by the module as a clear error
    HAS_PSYCOPG2 = False

# The argument spec fragment every module that talks to PostgreSQL accepts.
CONN_ARGSPEC = dict(
    login_host=dict(type="str", default="127.0.0.1"),
    login_port=dict(type="int", default=5432),
    login_db=dict(type="str", required=True),
    login_user=dict(type="str", required=True),
    login_password=dict(type="str", no_log=True, default=""),
    connect_timeout=dict(type="int", default=10),
)

APPLICATION_NAME = "pg-migrate-pipeline"


@dataclass(frozen=True)
class ConnInfo:
    host: str
    port: int
    dbname: str
    user: str
    password: str = ""
    connect_timeout: int = 10

    @classmethod
    def from_params(cls, params: dict) -> ConnInfo:
        return cls(
            host=params["login_host"],
            port=int(params["login_port"]),
            dbname=params["login_db"],
            user=params["login_user"],
            password=params.get("login_password") or "",
            connect_timeout=int(params.get("connect_timeout") or 10),
        )

    def with_db(self, dbname: str) -> ConnInfo:
        return ConnInfo(self.host, self.port, dbname, self.user, self.password, self.connect_timeout)

    def describe(self) -> str:
        """Where we connect, for messages: never includes the password."""
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"

    def sqlalchemy_url(self) -> str:
        """A URL without a password (libpq finds it in PGPASSFILE).

        The user is percent-encoded (SQLAlchemy decodes it); the database name goes in raw, because
        SQLAlchemy 2.0's make_url takes everything up to a '?' and never decodes it. A name holding '?'
        cannot be spelled in a URL at all, so it is refused here in one line.
        """
        if "?" in self.dbname:
            raise ValueError(
                f"database name {self.dbname!r} contains '?', which a SQLAlchemy URL cannot carry"
            )
        user, host = quote(self.user, safe=""), quote(self.host, safe="")
        return f"postgresql+psycopg2://{user}@{host}:{self.port}/{self.dbname}"


def connect(ci: ConnInfo, autocommit: bool = True, **kwargs):
    """Open a psycopg2 connection; the password goes in-process, never through argv."""
    conn = psycopg2.connect(
        host=ci.host,
        port=ci.port,
        dbname=ci.dbname,
        user=ci.user,
        password=ci.password or None,
        connect_timeout=ci.connect_timeout,
        application_name=kwargs.pop("application_name", APPLICATION_NAME),
        **kwargs,
    )
    conn.autocommit = autocommit
    return conn


# How a server that is down, starting or recovering answers; anything else (a wrong password) is final.
_TRANSIENT = (
    "Connection refused",
    "could not connect",
    "the database system is starting up",
    "the database system is in recovery mode",
    "the database system is shutting down",
    "server closed the connection unexpectedly",
)


def connect_when_up(ci: ConnInfo, wait_seconds: float, interval: float = 1.0, **kwargs):
    """Connect, waiting up to ``wait_seconds`` for a server that is down or recovering to come back.

    A crash is the moment a restore is needed most, and crash recovery takes a few seconds: giving up at
    the first refused connection would turn a recoverable failure into a failed restore.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return connect(ci, **kwargs)
        except psycopg2.OperationalError as exc:
            if time.monotonic() >= deadline or not any(t in str(exc) for t in _TRANSIENT):
                raise
            time.sleep(interval)


def explain_connect_error(ci: ConnInfo, exc: Exception) -> str:
    """One clear line for the usual ways a connection fails."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "password authentication failed" in text:
        return f"cannot connect to {ci.describe()}: wrong password for role {ci.user!r}"
    if "does not exist" in text and "database" in text:
        return f"cannot connect to {ci.describe()}: database {ci.dbname!r} does not exist"
    if "Connection refused" in text or "could not connect" in text or "timeout expired" in text:
        return f"cannot connect to {ci.describe()}: server unreachable ({text})"
    return f"cannot connect to {ci.describe()}: {text}"


PSYCOPG2_MISSING = "psycopg2 is required on the runner (pip install psycopg2-binary)"


def require_psycopg2(module) -> None:
    """Fail an Ansible module in one line when psycopg2 is not importable on the runner."""
    if not HAS_PSYCOPG2:
        module.fail_json(msg=PSYCOPG2_MISSING)


def connect_or_fail(module, ci: ConnInfo, prefix: str = "", fail_extra: dict | None = None, **kwargs):
    """Connect for an Ansible module, or fail it with explain_connect_error's one line (after ``prefix``)."""
    try:
        return connect(ci, **kwargs)
    except Exception as exc:
        module.fail_json(msg=prefix + explain_connect_error(ci, exc), **(fail_extra or {}))


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextlib.contextmanager
def pgpass_env(ci: ConnInfo, base_env: dict | None = None) -> Iterator[dict]:
    """Environment for a libpq child process: PGPASSFILE in a private temp dir, removed afterwards."""
    env = dict(os.environ if base_env is None else base_env)
    for leaked in ("PGPASSWORD", "DATABASE_URL"):
        env.pop(leaked, None)
    tmpdir = tempfile.mkdtemp(prefix="pgpass-")
    os.chmod(tmpdir, 0o700)
    try:
        path = os.path.join(tmpdir, "pgpass")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            # '*' for the database: pg_restore and the restore swap connect to other databases too.
            f.write(":".join(_pgpass_escape(v) for v in (ci.host, str(ci.port), "*", ci.user, ci.password)))
            f.write("\n")
        env.update(
            PGPASSFILE=path,
            PGHOST=ci.host,
            PGPORT=str(ci.port),
            PGUSER=ci.user,
            PGDATABASE=ci.dbname,
            PGCONNECT_TIMEOUT=str(ci.connect_timeout),
            PGAPPNAME=APPLICATION_NAME,
        )
        yield env
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def ident(name: str):
    """A safely quoted identifier (psycopg2.sql), for names that come from inventory."""
    return sql.Identifier(name)
