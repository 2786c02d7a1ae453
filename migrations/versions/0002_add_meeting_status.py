"""Meeting status: meetings.status varchar(20) NOT NULL DEFAULT 'scheduled', CHECK valid_status.

What it does, without a long lock on a live 5M-row table:
1. adds the column nullable without a default (catalog only), sets the default for new rows, and adds
   CHECK valid_status NOT VALID (new writes obey it at once; existing NULLs pass);
2. backfills existing rows from their times (ended -> completed, now inside -> in_progress, else
   scheduled) in id ranges WHERE status IS NULL, one commit per batch: an interrupted run resumes where
   it stopped, and every step checks the catalog first so a half-done revision can simply be re-run;
3. NOT NULL through a validated CHECK (status IS NOT NULL) (no scan under ACCESS EXCLUSIVE), then
   VALIDATE valid_status, each validation in its own transaction.

The backfill reads now() per batch, so a row's status depends on when its batch ran; rows whose start or
end falls inside the run window may differ between two runs. That is inherent to the data.

Downgrade: LOSSY - drops the column. Statuses the application set since (notably 'cancelled') are lost;
re-upgrading recomputes status from times only.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from migrations import safe_ops

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

STATUSES = ("scheduled", "in_progress", "completed", "cancelled")
STATUS_FROM_TIMES = (
    "CASE WHEN end_time < now() THEN 'completed'"
    " WHEN start_time <= now() AND end_time >= now() THEN 'in_progress'"
    " ELSE 'scheduled' END"
)


def upgrade() -> None:
    safe_ops.add_column_if_missing("meetings", "status varchar(20)")
    safe_ops.execute(f"{safe_ops.RERUNNABLE}ALTER TABLE meetings ALTER COLUMN status SET DEFAULT 'scheduled'")
    allowed = ", ".join(f"'{s}'" for s in STATUSES)
    safe_ops.add_check_not_valid("meetings", "valid_status", f"status IN ({allowed})")
    safe_ops.backfill_in_batches("meetings", "id", f"status = {STATUS_FROM_TIMES}", "status IS NULL")
    safe_ops.validate_constraint("meetings", "valid_status")
    safe_ops.set_not_null("meetings", "status")


def downgrade() -> None:
    safe_ops.execute("ALTER TABLE meetings DROP CONSTRAINT IF EXISTS valid_status")
    safe_ops.execute("ALTER TABLE meetings DROP COLUMN IF EXISTS status")
