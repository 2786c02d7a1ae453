"""Pre-flight planning and one-at-a-time upgrades, against a real cluster and the real Alembic CLI.

Most cases use a small Alembic project written into tmp_path (its env.py follows the project contract
in docs/DESIGN.md: DATABASE_URL, -x timeouts, a transaction per migration), so they pin this code's
behaviour independently of the shipped chain; tests/test_alembic_runner_repo.py runs the shipped chain.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import textwrap
from pathlib import Path

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils import alembic_runner as ar
from ansible_collections.pgmigrate.pipeline.plugins.module_utils import pgconn
from pgcluster import MIGRATOR, MIGRATOR_PASSWORD, PgCluster

ENV_PY = '''
"""Contract-following env.py for tests: DATABASE_URL, -x lock_timeout/statement_timeout."""
import os
from logging.config import fileConfig
from alembic import context
from sqlalchemy import create_engine, pool, text

fileConfig(context.config.config_file_name)
x = context.get_x_argument(as_dictionary=True)
url = os.environ.get("DATABASE_URL") or x.get("url")
if not url:
    raise SystemExit("set DATABASE_URL or pass -x url=...")


def run_migrations_offline():
    context.configure(url=url, literal_binds=True, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        conn.execute(text("SELECT set_config('lock_timeout', :v, false)"), {"v": x.get("lock_timeout", "5s")})
        conn.execute(text("SELECT set_config('statement_timeout', :v, false)"),
                     {"v": x.get("statement_timeout", "15min")})
        conn.commit()
        context.configure(connection=conn, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

REVISION = '''
"""{doc}"""
import logging
from alembic import op

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None
{extra}

def upgrade():
{body}


def downgrade():
    pass
'''

BASE_CHAIN = [
    ("0001", None, "op.execute('CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL)')", ""),
    (
        "0002",
        "0001",
        "log = logging.getLogger('alembic.runtime.migration')\n"
        "op.execute('ALTER TABLE users ADD COLUMN name text')\n"
        "log.info('backfill batch 1/2 done')\n"
        "log.info('backfill batch 2/2 done')",
        "row_count_changes = {'users': 'duplicates removed'}",
    ),
    ("0003", "0002", "op.execute('CREATE INDEX users_email_ix ON users (email)')", ""),
]


def write_revision(project: Path, rev: str, down: str | None, body: str, extra: str = "") -> None:
    text = REVISION.format(
        doc=f"Test revision {rev}.", rev=rev, down=down, extra=extra, body=textwrap.indent(body, "    ")
    )
    (project / "migrations" / "versions" / f"{rev}_test.py").write_text(text)


def make_project(base: Path, chain=BASE_CHAIN) -> Path:
    """A minimal Alembic project; returns the path of its alembic.ini (relative script_location)."""
    (base / "migrations" / "versions").mkdir(parents=True)
    (base / "migrations" / "env.py").write_text(ENV_PY)
    (base / "migrations" / "script.py.mako").write_text("")
    ini = base / "alembic.ini"
    ini.write_text(
        "[alembic]\nscript_location = migrations\n\n"
        "[loggers]\nkeys = root,alembic\n[handlers]\nkeys = console\n[formatters]\nkeys = generic\n"
        "[logger_root]\nlevel = WARNING\nhandlers = console\n"
        "[logger_alembic]\nlevel = INFO\nhandlers =\nqualname = alembic\n"
        "[handler_console]\nclass = StreamHandler\nargs = (sys.stderr,)\nformatter = generic\n"
        "[formatter_generic]\nformat = %(levelname)-5.5s [%(name)s] %(message)s\n"
    )
    for rev, down, body, extra in chain:
        write_revision(base, rev, down, body, extra)
    return ini


def conninfo(pg: PgCluster, dbname: str, password: str = MIGRATOR_PASSWORD, port: int | None = None):
    return pgconn.ConnInfo("127.0.0.1", port or pg.port, dbname, MIGRATOR, password, connect_timeout=3)


def db_state(pg: PgCluster, dbname: str) -> dict:
    """What a refusal must leave untouched: tables and the version row."""
    with contextlib.closing(pg.superuser_conn(dbname)) as conn, conn.cursor() as cur:
        cur.execute("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY 1")
        rels = [r[0] for r in cur.fetchall()]
        version = None
        if "alembic_version" in rels:
            cur.execute("SELECT version_num FROM alembic_version")
            version = [r[0] for r in cur.fetchall()]
    return {"relations": rels, "version": version}


def set_version(pg: PgCluster, dbname: str, rev: str) -> None:
    with contextlib.closing(pg.connect(dbname)) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        cur.execute("INSERT INTO alembic_version VALUES (%s)", [rev])
        conn.commit()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj")


# --- Reading the chain -----------------------------------------------------------------------------------


def test_chain_is_ordered_with_declarations(project: Path) -> None:
    chain = ar.load_chain(str(project))
    assert chain.revisions == ["0001", "0002", "0003"]
    assert chain.heads == ["0003"]
    assert chain.row_count_changes == {"0002": {"users": "duplicates removed"}}
    assert chain.location == str(project.parent / "migrations")


def test_missing_config_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ar.MigrationError, match=r"^alembic config .*nope.ini does not exist$"):
        ar.load_chain(str(tmp_path / "nope.ini"))


def test_broken_revision_is_one_line(project: Path) -> None:
    (project.parent / "migrations" / "versions" / "0004_test.py").write_text(
        "revision = '0004'\nthis is not python\n"
    )
    with pytest.raises(ar.MigrationError, match=r"cannot read the migration chain of .*alembic.ini: "):
        ar.load_chain(str(project))


# --- Pre-flight ------------------------------------------------------------------------------------------


def test_preflight_of_fresh_database_plans_everything(pg: PgCluster, dbname: str, project: Path) -> None:
    facts = ar.preflight(str(project), conninfo(pg, dbname))
    assert facts["current_revision"] == "base"
    assert facts["target_revision"] == "0003"
    assert facts["pending"] == ["0001", "0002", "0003"]
    assert facts["server_version"].startswith("15.")
    assert facts["database_size_bytes"] > 0 and facts["database_size"]
    assert db_state(pg, dbname) == {"relations": [], "version": None}


def test_preflight_plans_only_what_is_pending(pg: PgCluster, dbname: str, project: Path) -> None:
    ar.upgrade(str(project), conninfo(pg, dbname), target="0001")
    facts = ar.preflight(str(project), conninfo(pg, dbname), target="0002")
    assert (facts["current_revision"], facts["target_revision"], facts["pending"]) == (
        "0001",
        "0002",
        ["0002"],
    )


@pytest.mark.parametrize(
    ("version", "target", "message"),
    [
        ("abcd", "head", r"^database is at abcd, which the chain at .*/migrations does not contain$"),
        ("0001", "0009", r"^target revision '0009' is not in the chain at .*/migrations \(it has 3 revision"),
        ("0003", "0002", r"^target 0002 is behind the database's current revision 0003: this pipeline only"),
    ],
    ids=["unknown-current", "unknown-target", "target-behind"],
)
def test_preflight_refusals_change_nothing(
    pg: PgCluster, dbname: str, project: Path, version: str, target: str, message: str
) -> None:
    set_version(pg, dbname, version)
    before = db_state(pg, dbname)
    with pytest.raises(ar.MigrationError, match=message):
        ar.preflight(str(project), conninfo(pg, dbname), target=target)
    with pytest.raises(ar.MigrationError, match=message):
        ar.upgrade(str(project), conninfo(pg, dbname), target=target)
    assert db_state(pg, dbname) == before


def test_several_heads_are_refused(pg: PgCluster, dbname: str, project: Path) -> None:
    write_revision(project.parent, "0002b", "0001", "op.execute('SELECT 1')")
    with pytest.raises(
        ar.MigrationError, match=r"^the chain at .* has several heads \(0002b, 0003\): merge them"
    ):
        ar.preflight(str(project), conninfo(pg, dbname))
    assert db_state(pg, dbname) == {"relations": [], "version": None}


def test_wrong_password_is_one_line(pg: PgCluster, dbname: str, project: Path) -> None:
    with pytest.raises(ar.MigrationError) as err:
        ar.preflight(str(project), conninfo(pg, dbname, password="not-the-password"))
    assert (
        str(err.value)
        == f"cannot connect to {MIGRATOR}@127.0.0.1:{pg.port}/{dbname}: wrong password for role {MIGRATOR!r}"
    )


def test_unreachable_server_is_one_line(dbname: str, project: Path, pg: PgCluster) -> None:
    from pgcluster import free_port

    with pytest.raises(ar.MigrationError, match=r"^cannot connect to .*: server unreachable") as err:
        ar.upgrade(str(project), conninfo(pg, dbname, port=free_port()))
    assert "\n" not in str(err.value)


# --- Upgrading -------------------------------------------------------------------------------------------


def test_upgrade_steps_one_revision_at_a_time(
    pg: PgCluster, dbname: str, project: Path, tmp_path: Path
) -> None:
    progress = tmp_path / "progress" / "run.log"
    ci = conninfo(pg, dbname)
    result = ar.upgrade(str(project), ci, options=ar.Options(lock_timeout="2s"), progress_file=str(progress))

    assert not result["failed"] and result["changed"]
    assert (result["revision_before"], result["revision_after"]) == ("base", "0003")
    assert [a["revision"] for a in result["applied"]] == ["0001", "0002", "0003"]
    assert all(a["seconds"] > 0 for a in result["applied"])
    assert result["row_count_changes"] == {"users": "0002: duplicates removed"}
    assert db_state(pg, dbname)["version"] == ["0003"]

    log = progress.read_text()
    order = [log.index(f"{rev}: starting") for rev in ("0001", "0002", "0003")]
    assert order == sorted(order)
    assert "[0002] INFO  [alembic.runtime.migration] backfill batch 2/2 done" in log
    assert "Running upgrade 0001 -> 0002" in log
    assert stat.S_IMODE(progress.stat().st_mode) == 0o600
    assert MIGRATOR_PASSWORD not in log and MIGRATOR_PASSWORD not in json.dumps(result)

    again = ar.upgrade(str(project), ci)
    assert (again["changed"], again["applied"], again["revision_after"]) == (False, [], "0003")


def test_failure_in_the_middle_names_revision_and_where_it_stopped(
    pg: PgCluster, dbname: str, project: Path
) -> None:
    write_revision(
        project.parent,
        "0004",
        "0003",
        "op.execute('CREATE TABLE half_done (id int)')\n"
        "op.execute('INSERT INTO half_done VALUES (1)')\n"
        "raise RuntimeError('backfill of 0004 hit an unexpected row')",
    )
    write_revision(project.parent, "0005", "0004", "op.execute('CREATE TABLE never_made (id int)')")
    ci = conninfo(pg, dbname)
    ar.upgrade(str(project), ci, target="0001")

    result = ar.upgrade(str(project), ci)

    assert result["failed"] and result["failed_revision"] == "0004"
    assert result["error"] == "RuntimeError: backfill of 0004 hit an unexpected row"
    assert [a["revision"] for a in result["applied"]] == ["0002", "0003"]
    assert result["revision_after"] == "0003"
    assert result["msg"].startswith("revision 0004 failed after ")
    assert result["msg"].endswith(
        ": RuntimeError: backfill of 0004 hit an unexpected row "
        "(applied before it: 0002, 0003; database is now at 0003)"
    )
    state = db_state(pg, dbname)
    assert "half_done" not in state["relations"] and "never_made" not in state["relations"]
    assert state["version"] == ["0003"]


def test_database_error_is_the_root_cause(pg: PgCluster, dbname: str, project: Path) -> None:
    write_revision(project.parent, "0004", "0003", "op.execute('SELECT 1 / 0')")
    result = ar.upgrade(str(project), conninfo(pg, dbname))
    assert result["error"] == "psycopg2.errors.DivisionByZero: division by zero"
    assert result["revision_after"] == "0003"


def test_lock_timeout_reaches_the_migration(pg: PgCluster, dbname: str, project: Path) -> None:
    ci = conninfo(pg, dbname)
    ar.upgrade(str(project), ci, target="0002")
    with contextlib.closing(pg.superuser_conn(dbname)) as blocker, blocker.cursor() as cur:
        blocker.autocommit = False
        cur.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        result = ar.upgrade(str(project), ci, options=ar.Options(lock_timeout="200ms"))
        blocker.rollback()
    assert result["failed_revision"] == "0003"
    assert result["error"] == "psycopg2.errors.LockNotAvailable: canceling statement due to lock timeout"
    assert result["revision_after"] == "0002"
    # The schema could not be read either (deparsing opens the locked table): skipped, never waited on.
    assert result["schema_fingerprint_before"] == ""


def test_check_mode_renders_sql_and_changes_nothing(pg: PgCluster, dbname: str, project: Path) -> None:
    ci = conninfo(pg, dbname)
    ar.upgrade(str(project), ci, target="0001")
    before = db_state(pg, dbname)

    result = ar.upgrade(str(project), ci, check_mode=True)

    assert result["changed"] and result["applied"] == [] and result["pending"] == ["0002", "0003"]
    assert "ALTER TABLE users ADD COLUMN name text" in result["sql"]
    assert "CREATE INDEX users_email_ix ON users (email)" in result["sql"]
    assert "CREATE TABLE users" not in result["sql"]
    assert [p["revision"] for p in result["sql_by_revision"]] == ["0002", "0003"]
    assert result["revision_after"] == "0001"
    assert db_state(pg, dbname) == before


def test_child_gets_no_password_in_env_or_url(
    pg: PgCluster, dbname: str, project: Path, tmp_path: Path
) -> None:
    """The revision itself dumps what it can see; only the private PGPASSFILE may hold the password."""
    seen = tmp_path / "seen.json"
    body = (
        "import json, os\n"
        f"files = {{k: open(v).read() for k, v in os.environ.items() if k == 'PGPASSFILE'}}\n"
        f"json.dump({{'env': dict(os.environ), 'files': files}}, open({str(seen)!r}, 'w'))"
    )
    write_revision(project.parent, "0004", "0003", body)
    ar.upgrade(str(project), conninfo(pg, dbname))
    data = json.loads(seen.read_text())
    env_text = json.dumps(data["env"])
    assert MIGRATOR_PASSWORD not in env_text
    assert data["env"]["DATABASE_URL"] == f"postgresql+psycopg2://{MIGRATOR}@127.0.0.1:{pg.port}/{dbname}"
    assert MIGRATOR_PASSWORD in data["files"]["PGPASSFILE"]
    assert not os.path.exists(data["env"]["PGPASSFILE"])


def test_root_error_unwraps_sqlalchemy_and_skips_noise() -> None:
    out = [
        "INFO  [alembic.runtime.migration] Running upgrade 0003 -> 0004",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "sqlalchemy.exc.IntegrityError: (psycopg2.errors.UniqueViolation) could not create unique index",
        "DETAIL:  Key (email)=(a@example.com) is duplicated.",
        "",
        "[SQL: CREATE UNIQUE INDEX ...]",
        "(Background on this error at: https://sqlalche.me/e/20/gkpj)",
    ]
    assert ar.root_error(out) == "psycopg2.errors.UniqueViolation: could not create unique index"
    assert ar.root_error(["  FAILED: Can't locate revision identified by 'zz'"]) == (
        "Can't locate revision identified by 'zz'"
    )
    assert ar.root_error(["set DATABASE_URL or pass -x url=..."]) == "set DATABASE_URL or pass -x url=..."
    assert ar.root_error([]) == "alembic exited with an error and printed nothing"


def test_run_id_is_sortable_and_unique() -> None:
    ids = {ar.new_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == len("20261125T142233Z-3fa9c1") and i[8] == "T" for i in ids)


def test_hostile_database_name_reaches_alembic_intact(pg: PgCluster, project: Path, tmp_path: Path) -> None:
    """SQLAlchemy does not decode a URL's database part, so the name must arrive exactly as it is."""
    name = 'curious.anonymous"; SELECT pg_sleep(30); --'
    pg.create_database(name)
    try:
        result = ar.upgrade(str(project), conninfo(pg, name), progress_file=str(tmp_path / "p.log"))
        assert not result["failed"], result["msg"]
        assert db_state(pg, name)["version"] == ["0003"]
        assert ar.upgrade(str(project), conninfo(pg, name), check_mode=True)["changed"] is False
    finally:
        pg.drop_database(name)
    with pytest.raises(ar.MigrationError, match=r"^database name 'what\?' contains '\?'"):
        ar.alembic_url(conninfo(pg, "what?"))


def test_unwritable_progress_file_is_refused_before_anything_runs(
    pg: PgCluster, dbname: str, project: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(
        ar.MigrationError, match=r"^cannot write the progress file .*a-file/p.log: File exists \(.*/a-file\)$"
    ):
        ar.upgrade(str(project), conninfo(pg, dbname), progress_file=str(blocker / "p.log"))
    assert db_state(pg, dbname) == {"relations": [], "version": None}
