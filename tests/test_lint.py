"""The linter gate: squawk on the pending revisions' offline SQL; approval per statement, with a reason.

A copied project gets a revision 0006 with a blocking index build, in three spellings: naive, approved
(ignore + reason) and "approved" without a reason. The gate is exercised in-process and through migrate.yml.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from ansible_collections.pgmigrate.pipeline.plugins.module_utils import lint, pgconn
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.fingerprint import compare
from ansible_run import ROOT, failure_lines
from conftest import run_alembic
from pgcluster import PgCluster
from test_pipeline import fingerprint, migrate, reports, revision

SQUAWK = str(Path(sys.executable).parent / "squawk")
NAIVE = "CREATE INDEX idx_lint_status ON meetings (status)"
RULES = "require-concurrent-index-creation"
REASON = "meetings is small here; a short write block is accepted"
REVISION = '''"""Index meetings by status the blocking way (a lint gate fixture).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute({sql!r})


def downgrade() -> None:
    op.execute("DROP INDEX idx_lint_status")
'''
SPELLINGS = {
    "naive": NAIVE,
    "approved": f"-- squawk-ignore {RULES} -- {REASON}\n{NAIVE}",
    "unreasoned": f"-- squawk-ignore {RULES}\n{NAIVE}",
}


def project(tmp_path: Path, spelling: str) -> Path:
    dest = tmp_path / f"project-{spelling}"
    shutil.copytree(ROOT / "migrations", dest / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "alembic.ini", dest / "alembic.ini")
    text = REVISION.format(sql=SPELLINGS[spelling])
    (dest / "migrations" / "versions" / "0006_lint_fixture.py").write_text(text)
    return dest / "alembic.ini"


def run_gate(config: Path) -> dict:
    ci = pgconn.ConnInfo("127.0.0.1", 5432, "offline", "meetings_owner")
    return lint.lint(str(config), ci, "0005", "0006", ["0006"], SQUAWK, python=sys.executable)


def test_the_shipped_chain_passes_the_gate_revision_by_revision():
    ci = pgconn.ConnInfo("127.0.0.1", 5432, "offline", "meetings_owner")
    found = lint.lint(
        str(ROOT / "alembic.ini"), ci, None, "0005", ["0001", "0002", "0003", "0004", "0005"], SQUAWK
    )
    assert found["violations"] == []
    approved = {r["revision"]: r["approved"] for r in found["revisions"]}
    assert set(approved) == {"0001", "0002", "0003", "0004", "0005"}
    assert all(a["reason"] for entries in approved.values() for a in entries)


@pytest.mark.parametrize(
    ("spelling", "expected_rules"),
    [
        ("naive", {"require-concurrent-index-creation"}),
        ("approved", set()),
        ("unreasoned", {"approval-without-reason"}),
    ],
)
def test_a_blocking_index_build_needs_an_approval_with_a_reason(tmp_path, spelling, expected_rules):
    found = run_gate(project(tmp_path, spelling))
    assert {v["rule"] for v in found["violations"]} == expected_rules
    for v in found["violations"]:
        assert v["revision"] == "0006" and v["statement"] == f"{NAIVE};"
    if spelling == "approved":
        (entry,) = found["revisions"][0]["approved"]
        assert entry == {"rules": RULES, "reason": REASON}


def test_a_revision_that_cannot_render_offline_is_a_violation(tmp_path):
    config = project(tmp_path, "naive")
    path = config.parent / "migrations" / "versions" / "0006_lint_fixture.py"
    needs_live = (
        "    if op.get_context().as_sql:\n"
        "        raise RuntimeError('this backfill needs a live connection')\n"
    )
    path.write_text(path.read_text().replace("    op.execute(", needs_live + "    op.execute(", 1))
    (v,) = run_gate(config)["violations"]
    assert v["rule"] == "cannot-render-offline" and v["revision"] == "0006"


def test_the_gate_refuses_an_unapproved_build_and_accepts_it_once_approved(
    pg: PgCluster, seeded_db: str, tmp_path: Path
):
    run_alembic(pg, seeded_db, "upgrade", "0005")
    before = fingerprint(pg, seeded_db)
    refused = tmp_path / "refused"
    refused.mkdir()
    proc = migrate(
        pg,
        seeded_db,
        refused,
        extra={"db_alembic_config": str(project(tmp_path, "naive")), "db_preflight_lint_enforce": True},
    )
    assert proc.returncode != 0
    line = next(x for x in failure_lines(proc) if x.startswith("lint gate refused"))
    assert f"revision 0006, rule {RULES}: {NAIVE}; (During normal index creation" in line
    assert revision(pg, seeded_db) == "0005" and compare(before, fingerprint(pg, seeded_db)) == []
    assert not list(refused.glob("backups/*.dump"))
    (report,) = reports(refused / "reports")
    assert report["outcome"] == "refused"

    accepted = tmp_path / "accepted"
    accepted.mkdir()
    proc = migrate(
        pg,
        seeded_db,
        accepted,
        extra={"db_alembic_config": str(project(tmp_path, "approved")), "db_preflight_lint_enforce": True},
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert revision(pg, seeded_db) == "0006"
    assert "squawk: 0006 clean or approved" in proc.stdout
