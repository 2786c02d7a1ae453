"""Shared fixtures: one throwaway cluster per test session, a fresh database per test."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
# The checkout as the collection pgmigrate.pipeline (make venv links it): module_utils are imported by their
# collection path, as the modules import them.
COLLECTIONS = ROOT / ".cache" / "collections"
if not (COLLECTIONS / "ansible_collections" / "pgmigrate" / "pipeline").is_dir():
    raise SystemExit(f"{COLLECTIONS} does not hold the collection link: run `make venv` first")
sys.path.insert(0, str(COLLECTIONS))

from pgcluster import PgCluster, cluster_context  # noqa: E402

_db_counter = itertools.count(1)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """A running cluster for the whole session (its own port and data dir)."""
    with cluster_context() as cluster:
        yield cluster


@pytest.fixture
def dbname(pg: PgCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty database owned by the migration role, dropped after the test."""
    name = f"t{next(_db_counter)}_{request.node.name[:40].lower()}"
    name = "".join(c if c.isalnum() else "_" for c in name)
    pg.create_database(name)
    yield name
    # The database and whatever a restore made beside it (forensic and side copies share the tN_ prefix).
    prefix = name.split("_", 1)[0] + "_"
    with closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix])
        leftovers = [row[0] for row in cur.fetchall()]
    for leftover in leftovers:
        pg.drop_database(leftover)


# --- Alembic and seed data, shared by every suite -------------------------------------------------------

SEED_SQL = ROOT / "roles" / "lab" / "files" / "seed.sql"
TINY_SCALE = {"users": 200, "meetings": 1000, "participants": 2000}


def run_alembic(
    pg: PgCluster,
    dbname: str,
    *args: str,
    url: str | None = None,
    env_extra: dict | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """The real Alembic CLI against a fixture database (URL in the environment, never argv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIGRATION_", "PG"))}
    env["DATABASE_URL"] = url if url is not None else pg.url(dbname)
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"alembic {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def seed(pg: PgCluster, dbname: str, scale: dict | None = None) -> None:
    """Load the lab's seed data (as the migration role, so it owns the rows' tables)."""
    with closing(pg.connect(dbname)) as conn, conn.cursor() as cur:
        cur.execute(SEED_SQL.read_text(), scale or TINY_SCALE)
        conn.commit()


@pytest.fixture
def seeded_db(pg: PgCluster, dbname: str) -> str:
    """A database at revision 0001 with tiny realistic data: the chain's starting point."""
    run_alembic(pg, dbname, "upgrade", "0001")
    seed(pg, dbname)
    return dbname
