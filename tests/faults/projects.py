"""Copies of the shipped Alembic project with one fault-injecting revision, the way a user points
db_alembic_config at their own project. The shipped chain is never edited.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The test holds this two-key advisory lock (never the chain's one-key lock) to stop a gated revision
# in the middle of the migration, after committed work, until the fault is injected.
GATE_KEYS = (8, 6)

_HEADER = '''"""Fault-suite revision: {doc}"""

from alembic import op

from migrations import safe_ops  # noqa: F401

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None
'''

# Replaces 0004, the chain's middle (0002 and 0003 run before it, 0005 stays pending): it commits its
# backfill batches, then fails.
FAILS_MID_CHAIN = (
    "0004_add_user_phone.py",
    _HEADER.format(doc="0004 commits its backfill batches, then fails.", revision="0004", down="0003")
    + """

def upgrade() -> None:
    safe_ops.add_column_if_missing("users", "phone varchar(20)")
    safe_ops.backfill_in_batches("users", "id", "phone = 'unknown'", "phone IS NULL")
    raise RuntimeError("fault: 0004 failed after committing its batches")


def downgrade() -> None:
    op.execute("ALTER TABLE users DROP COLUMN IF EXISTS phone")
""",
)

# Replacing 0002: builds an index concurrently (non-transactional, committed at once), then fails.
FAILS_AFTER_CONCURRENT_INDEX = (
    "0002_fault_concurrent_index.py",
    _HEADER.format(doc="0002 builds an index concurrently, then fails.", revision="0002", down="0001")
    + """

def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("CREATE INDEX CONCURRENTLY fault_idx_users_name ON users (name)")
    raise RuntimeError("fault: 0002 failed after a concurrent index build")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS fault_idx_users_name")
""",
)


def gated(revision: str = "0006", down: str = "0005") -> tuple[str, str]:
    """A revision that commits work, waits at the test's gate (no lock_timeout for this one wait), then
    finishes. As 0006 the whole shipped chain runs first; replacing 0002 it stops the chain at its start."""
    doc = f"{revision} commits work, waits at the test's gate, then finishes."
    return (
        f"{revision}_fault_gate.py",
        _HEADER.format(doc=doc, revision=revision, down=down)
        + f"""

def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("CREATE TABLE fault_committed (id int PRIMARY KEY)")
        op.execute("INSERT INTO fault_committed SELECT generate_series(1, 100)")
        op.execute("UPDATE users SET name = name || ' (gated)' WHERE id <= 50")
    op.execute("SET LOCAL lock_timeout = 0")
    op.execute("SELECT pg_advisory_xact_lock{GATE_KEYS}")
    op.execute("CREATE TABLE fault_after_gate (id int PRIMARY KEY)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS fault_after_gate")
    op.execute("DROP TABLE IF EXISTS fault_committed")
""",
    )


def gated_before_ddl(revision: str = "0002", down: str = "0001") -> tuple[str, str]:
    """A revision that first waits at the test's gate, having done nothing, then takes the ACCESS EXCLUSIVE
    lock on meetings that any ALTER TABLE needs: the test opens a blocking transaction while it waits, so the
    lock is taken only after pre-flight has seen a database without blockers. Nothing commits before the DDL.
    """
    doc = f"{revision} waits at the test's gate, then alters meetings (an ACCESS EXCLUSIVE lock)."
    return (
        f"{revision}_fault_gate_before_ddl.py",
        _HEADER.format(doc=doc, revision=revision, down=down)
        + f"""

def upgrade() -> None:
    # The gate wait is exempt from lock_timeout; the DDL after it runs under the run's own lock_timeout.
    op.execute("SELECT set_config('fault.lock_timeout', current_setting('lock_timeout'), true)")
    op.execute("SET LOCAL lock_timeout = 0")
    op.execute("SELECT pg_advisory_xact_lock{GATE_KEYS}")
    op.execute("SELECT set_config('lock_timeout', current_setting('fault.lock_timeout'), true)")
    op.execute("ALTER TABLE meetings ADD COLUMN fault_flag boolean")


def downgrade() -> None:
    op.execute("ALTER TABLE meetings DROP COLUMN IF EXISTS fault_flag")
""",
    )


def project(dest: Path, revision: tuple[str, str] | None = None, drop: str = "") -> Path:
    """Copy the shipped project to `dest`, add one revision file (dropping the file named `drop`, which
    it replaces); returns its alembic.ini."""
    shutil.copytree(ROOT / "migrations", dest / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "alembic.ini", dest / "alembic.ini")
    if revision is not None:
        name, text = revision
        (dest / "migrations" / "versions" / name).write_text(text)
    if drop:
        (dest / "migrations" / "versions" / drop).unlink()
    return dest / "alembic.ini"
