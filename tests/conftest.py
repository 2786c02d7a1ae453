"""Shared fixtures: one throwaway cluster per test session, a fresh database per test."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

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
    pg.drop_database(name)
