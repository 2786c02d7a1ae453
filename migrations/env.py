"""Alembic environment for the meetings schema.

Online runs: one connection with the run's lock_timeout and statement_timeout, a session-level advisory
lock so two migrators never interleave (the second fails fast naming the first), and one transaction per
revision so a failure leaves the database at the last completed revision. Offline (``--sql``) runs render
the whole chain without touching a database.

Every failure a DBA can cause (no URL, unreachable server, wrong password, bad -x value, lock held)
ends as one ``alembic.util.CommandError`` line; the password is never part of it.
"""

from __future__ import annotations

import logging
import os
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context
from alembic.util import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from migrations import safe_ops
from migrations.models import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
log = logging.getLogger("migrations.env")

APPLICATION_NAME = "alembic-migrate"
# Commands that only read: they need no lock, so `alembic current` works while a migration runs.
READ_ONLY_COMMANDS = frozenset({"current", "check", "heads", "history", "show", "branches"})


def database_url(xargs: dict[str, str]) -> str | None:
    return os.environ.get("DATABASE_URL") or xargs.get("url") or None


def explain_connect_error(url: sa.URL, exc: BaseException) -> str:
    """One line for the usual ways a connection fails; never includes the password.

    The Alembic project stays self-contained (users copy it and point the pipeline at their copy), so
    this mirrors module_utils/pgconn.explain_connect_error instead of importing it.
    """
    where = f"{url.username}@{url.host or 'localhost'}:{url.port or 5432}/{url.database}"
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "password authentication failed" in text:
        return f"cannot connect to {where}: wrong password for role {url.username!r}"
    if "does not exist" in text and "database" in text:
        return f"cannot connect to {where}: database {url.database!r} does not exist"
    if "Connection refused" in text or "could not connect" in text or "timeout expired" in text:
        return f"cannot connect to {where}: server unreachable ({text})"
    return f"cannot connect to {where}: {text}"


def command_name() -> str | None:
    cmd = getattr(config.cmd_opts, "cmd", None)
    return getattr(cmd[0], "__name__", None) if cmd else None


def lock_holder(connection: sa.Connection, key: int) -> str:
    """Who holds the migration lock, from pg_locks + pg_stat_activity, for the fail-fast message."""
    row = connection.execute(
        sa.text(
            "SELECT a.pid, a.application_name, a.client_addr, a.backend_start"
            " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND l.classid::bigint = :hi AND l.objid::bigint = :lo AND l.objsubid = 1"
        ),
        {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
    ).first()
    if row is None:
        return "another session (it released the lock meanwhile, or is not visible to this role)"
    pid, app, addr, started = row
    return (
        f"pid {pid}, application_name {app or '(none)'!r}, client {addr or 'local socket'}, "
        f"backend_start {started:%Y-%m-%d %H:%M:%S%z}"
    )


def database_error(exc: BaseException) -> str:
    """The first line of the database's own complaint, even when SQLAlchemy raised a follow-up error
    (a killed session surfaces as PendingRollbackError while Alembic leaves its autocommit block)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DBAPIError):
            text = str(seen.orig or seen).strip()
            return text.splitlines()[0] if text else type(seen.orig).__name__
        seen = seen.__cause__ or seen.__context__
    return str(exc).strip().splitlines()[0]


def take_migration_lock(connection: sa.Connection) -> int:
    key = safe_ops.advisory_lock_key()
    if not connection.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
        holder = lock_holder(connection, key)
        raise CommandError(f"another migration holds the migration advisory lock ({holder}); not started")
    return key


def run_migrations_offline(settings: safe_ops.Settings, url: str | None) -> None:
    """Render SQL only: the URL (optional here) just names the dialect; nothing connects."""
    context.configure(
        url=url,
        dialect_name=None if url else "postgresql",
        target_metadata=Base.metadata,
        literal_binds=True,
        transaction_per_migration=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.execute(f"SET lock_timeout = '{settings.lock_timeout}'")
        context.execute(f"SET statement_timeout = '{settings.statement_timeout}'")
        context.run_migrations()


def connect(url: str) -> sa.Connection:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CommandError("DATABASE_URL / -x url is not a valid database URL") from None
    engine = sa.create_engine(
        parsed,
        poolclass=sa.pool.NullPool,
        connect_args={"application_name": APPLICATION_NAME, "connect_timeout": 10},
    )
    try:
        return engine.connect()
    except DBAPIError as exc:
        raise CommandError(explain_connect_error(parsed, exc.orig or exc)) from None


def seal_version_table(connection: sa.Connection) -> None:
    """Only the migration role may write the revision stamp.

    Default privileges that give the application DML "on all tables" also cover alembic_version, and an
    application that can UPDATE it can make every later run believe the wrong revision. Reading stays
    allowed. Runs after every online upgrade/downgrade/stamp, so a re-granted privilege does not survive.
    """
    grantees = connection.execute(
        sa.text(
            "SELECT DISTINCT g.rolname FROM pg_class c"
            " CROSS JOIN LATERAL aclexplode(c.relacl) a"
            " JOIN pg_roles g ON g.oid = a.grantee"
            " WHERE c.oid = to_regclass('alembic_version') AND a.grantee <> c.relowner"
            " AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')"
        )
    ).scalars()
    quote = connection.dialect.identifier_preparer.quote
    for role in list(grantees):
        connection.execute(
            sa.text(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM {quote(role)}")
        )
    connection.commit()


def run_migrations_online(settings: safe_ops.Settings, url: str | None) -> None:
    if not url:
        raise CommandError(
            "no database URL: set the DATABASE_URL environment variable or pass -x url=postgresql://..."
        )
    connection = connect(url)
    key = None
    try:
        connection.execute(
            sa.text(
                "SELECT set_config('lock_timeout', :l, false), set_config('statement_timeout', :s, false)"
            ),
            {"l": settings.lock_timeout, "s": settings.statement_timeout},
        )
        if command_name() not in READ_ONLY_COMMANDS:
            key = take_migration_lock(connection)
        connection.commit()
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            transaction_per_migration=True,
            compare_type=True,
        )
        try:
            with context.begin_transaction():
                context.run_migrations()
            if key is not None:
                seal_version_table(connection)
        except SQLAlchemyError as exc:
            log.debug("migration failed", exc_info=True)
            raise CommandError(f"migration failed: {database_error(exc)}") from None
    finally:
        if key is not None and not connection.closed:
            # Best effort: closing the session releases the lock anyway.
            try:
                connection.rollback()
                connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                connection.commit()
            except DBAPIError:
                log.debug("advisory unlock failed; the session close releases it", exc_info=True)
        connection.close()


def main() -> None:
    xargs = context.get_x_argument(as_dictionary=True)
    settings = safe_ops.parse_settings(xargs, os.environ)
    config.attributes[safe_ops.SETTINGS_KEY] = settings
    url = database_url(xargs)
    if context.is_offline_mode():
        run_migrations_offline(settings, url)
    else:
        run_migrations_online(settings, url)


main()
