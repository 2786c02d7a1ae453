"""module_utils.history against a real database, without Ansible: the cases the playbook tests leave out.

The end-to-end behaviour (rows written by migrate.yml, the gate, release.yml) is in tests/test_gate.py.
"""

from __future__ import annotations

import contextlib

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils import history
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.alembic_runner import revision_checksums
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.checksums import schema_fingerprint
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import ConnInfo, connect
from pgcluster import PgCluster

CHAIN = revision_checksums("alembic.ini")


def conn_to(pg: PgCluster, dbname: str):
    return contextlib.closing(
        connect(ConnInfo("127.0.0.1", pg.port, dbname, "meetings_owner", "lab-owner-pw"))
    )


def start(run_id: str, **extra) -> history.Start:
    fields = {
        "environment": "staging",
        "database": "db",
        "inventory_host": "h",
        "current_revision": "base",
        "target_revision": "0005",
        "applied_revisions": set(),
        "on_disk": CHAIN,
    }
    return history.Start(run_id=run_id, **{**fields, **extra})


def succeed(conn, run_id: str, revisions: list[str], **extra) -> None:
    history.finish_run(
        conn,
        {
            "run_id": run_id,
            "environment": "staging",
            "database_name": "db",
            "inventory_host": "h",
            "outcome": "succeeded",
            "revision_to": revisions[-1],
            "applied": {rev: CHAIN[rev] for rev in revisions},
            **extra,
        },
    )


def test_the_gate_names_the_soak_time_and_revisions_staging_never_applied(pg: PgCluster, dbname: str):
    with conn_to(pg, dbname) as conn:
        history.ensure_schema(conn)
        succeed(conn, "r1", ["0002", "0003"])
        problems, _ = history.gate_problems(conn, "0003", ["0002", "0003"], CHAIN, soak_seconds=3600)
        assert len(problems) == 1 and "only 0s ago; the soak time is 60min" in problems[0]

        problems, _ = history.gate_problems(conn, "0004", ["0002", "0003", "0004"], CHAIN, soak_seconds=0)
        assert problems == [
            "staging has no succeeded run to 0004 (its last succeeded run reached 0003)",
            "revision 0004 (0004_add_user_phone.py) was never applied on staging",
        ]
        assert history.gate_problems(conn, "0003", [], CHAIN, soak_seconds=10**6) == (
            [],
            {
                "staging_run_id": None,
                "staging_finished_at": None,
            },
        )


def test_resolving_needs_a_reason_and_an_unfinished_run(pg: PgCluster, dbname: str):
    with conn_to(pg, dbname) as conn:
        history.start_run(conn, start("r1"), schema_fingerprint(conn))
        with pytest.raises(history.HistoryError, match="needs a reason"):
            history.start_run(conn, start("r2", resolve_run="r1"), schema_fingerprint(conn))
        with pytest.raises(history.HistoryError, match="no unresolved running run 'nope'"):
            history.start_run(
                conn, start("r3", resolve_run="nope", resolve_reason="x"), schema_fingerprint(conn)
            )
        with conn.cursor() as cur:  # the refusals rolled back: no row for r2 or r3, r1 still unresolved
            cur.execute("SELECT run_id, outcome, resolution FROM pipeline_history.runs")
            assert cur.fetchall() == [("r1", "running", None)]


def test_check_mode_writes_nothing_not_even_the_schema(pg: PgCluster, dbname: str):
    with conn_to(pg, dbname) as conn:
        facts = history.start_run(conn, start("r1", check_mode=True), schema_fingerprint(conn))
        assert facts["recorded"] is False and not history.table_exists(conn)


def test_drift_is_refused_where_asked_and_an_accepted_drift_is_recorded_with_its_reason(
    pg: PgCluster, dbname: str
):
    with conn_to(pg, dbname) as conn:
        succeed(conn, "r1", ["0002"], schema_fingerprint=schema_fingerprint(conn))
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE by_hand (id int)")
        refuse = {"current_revision": "0002", "refuse_drift": True}
        with pytest.raises(history.HistoryError, match="drifted since run r1 left it at revision 0002"):
            history.start_run(conn, start("r2", **refuse), schema_fingerprint(conn))
        facts = history.start_run(
            conn, start("r3", accept_drift="hotfix table, ticket 7", **refuse), schema_fingerprint(conn)
        )
        assert facts["drift"]
        with conn.cursor() as cur:
            cur.execute("SELECT run_id, outcome, drift FROM pipeline_history.runs WHERE run_id <> 'r1'")
            rows = {r[0]: r[1:] for r in cur.fetchall()}
        assert rows["r2"][0] == "refused"
        assert rows["r3"][0] == "running" and rows["r3"][1].endswith("(accepted: hotfix table, ticket 7)")


def test_a_history_table_from_before_the_downgrade_outcome_is_widened_and_takes_it(
    pg: PgCluster, dbname: str
):
    """An older pipeline's outcome CHECK lacks failed-and-downgraded: the next run must not fail on it."""
    with conn_to(pg, dbname) as conn:
        history.ensure_schema(conn)
        old = ", ".join(
            f"'{o}'" for o in (history.RUNNING, *history.OUTCOMES) if o != "failed-and-downgraded"
        )
        with conn.cursor() as cur:
            cur.execute(
                "ALTER TABLE pipeline_history.runs DROP CONSTRAINT runs_outcome_check,"
                f" ADD CONSTRAINT runs_outcome_check CHECK (outcome IN ({old}))"
            )
        conn.commit()
        with pytest.raises(Exception, match="runs_outcome_check"):
            succeed(conn, "r0", ["0002"], outcome="failed-and-downgraded")
        conn.rollback()

        history.ensure_schema(conn)
        succeed(conn, "r1", ["0002"], outcome="failed-and-downgraded")
        with conn.cursor() as cur:
            cur.execute("SELECT run_id, outcome FROM pipeline_history.runs")
            assert cur.fetchall() == [("r1", "failed-and-downgraded")]
            cur.execute("SELECT count(*) FROM pg_constraint WHERE conname = 'runs_outcome_check'")
            assert cur.fetchone()[0] == 1
