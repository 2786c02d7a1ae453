"""A tiny smoke of the benchmark harness (bench/run.py): the figures that need no ansible-playbook run, on
tiny data, and the table rendering. The real run is `make bench` (minutes, lab scale large)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import ConnInfo
from conftest import ROOT, run_alembic, seed
from pgcluster import APP, APP_PASSWORD, MIGRATOR, MIGRATOR_PASSWORD


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module
    spec.loader.exec_module(module)
    return module


def test_backup_and_rollback_figures_on_tiny_data(bench, pg, dbname, tmp_path):
    run_alembic(pg, dbname, "upgrade", "0001")
    seed(pg, dbname)
    target = bench.Target(ci=ConnInfo("127.0.0.1", pg.port, dbname, MIGRATOR, MIGRATOR_PASSWORD))

    results = bench.run_bench(target, tmp_path, parts=("backup", "rollback"))

    b, r = results["backup"], results["rollback"]
    assert b["clone_seconds"] > 0 and b["plain_pg_dump_seconds"] > 0 and b["ratio_total"] > 0
    assert r["pipeline_rollback_seconds"] > 0 and r["plain_pg_restore_seconds"] > 0
    assert r["ratio"] == round(r["pipeline_rollback_seconds"] / r["plain_pg_restore_seconds"], 3)
    assert results["database"]["rows"]["users"] == 200
    # The rollbacks brought the data back and left no scratch or forensic database behind.
    with contextlib.closing(pg.connect("postgres")) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s OR datname LIKE 'bench_%%'",
            (f"{dbname}__%",),
        )
        assert cur.fetchall() == []
    table = bench.markdown(results)
    assert "| rollback: failure -> verified database in place |" in table and "pg_dump -Fc" in table
    json.dumps(results)  # the results file is plain JSON


def test_online_figures_on_tiny_data_the_writer_survives_both_chains(bench, pg, dbname, tmp_path):
    """The writer script is valid at every revision (no pgbench client aborts through either chain), and
    both the pipeline's step and the naive statements end at the same tables."""
    run_alembic(pg, dbname, "upgrade", "0001")
    seed(pg, dbname)
    target = bench.Target(
        ci=ConnInfo("127.0.0.1", pg.port, dbname, MIGRATOR, MIGRATOR_PASSWORD),
        app=ConnInfo("127.0.0.1", pg.port, dbname, APP, APP_PASSWORD),
    )

    results = bench.measure_online(target, tmp_path, segment=2)

    for side in ("pipeline", "naive"):
        assert results[side]["writer_errors"] == [], results[side]["writer_errors"]
        assert results[side]["transactions"] > 20, results[side]
        assert results[side]["worst_ms"] >= results[side]["p99_ms"] >= results[side]["p50_ms"] > 0
    assert list(results["naive"]["revision_seconds"]) == ["0002", "0003", "0004", "0005"]
    assert "| online mode: worst writer stall" in bench.markdown({**_minimal(), "online": results})


def _minimal() -> dict:
    return {
        "machine": {"cpus": 2, "cpu_model": "x", "memory_gb": 1, "postgresql": "15"},
        "finished_at": "now",
        "total_seconds": 1,
    }


def test_markdown_says_when_a_goal_is_not_met(bench):
    results = {
        "machine": {"cpus": 2, "cpu_model": "x", "memory_gb": 1, "postgresql": "15"},
        "finished_at": "now",
        "total_seconds": 1,
        "window": {
            "pipeline_playbook_seconds": 20,
            "bare_alembic_seconds": 10,
            "ratio": 2.0,
            "goal": 1.3,
            "met": False,
        },
    }
    assert "2.0x | <= 1.3x NOT met |" in bench.markdown(results)


def test_bench_inventory_is_not_the_lab(bench):
    target = bench.load_target()
    assert target.ci.port == 56116 and target.inventory == Path(ROOT / "bench" / "inventory")
