"""User phone: users.phone varchar(20) NOT NULL DEFAULT 'unknown'.

What it does: adds the column nullable (catalog only), sets the default so new users get 'unknown' at
once, backfills existing users with 'unknown' in id ranges WHERE phone IS NULL (a commit per batch,
resumable), then NOT NULL through a validated CHECK (phone IS NOT NULL), so no scan happens under
ACCESS EXCLUSIVE. Every step checks the catalog first, so a half-done run can be re-run.

Downgrade: LOSSY - drops the column and every phone number entered since the upgrade.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from migrations import safe_ops

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    safe_ops.add_column_if_missing("users", "phone varchar(20)")
    safe_ops.execute(f"{safe_ops.RERUNNABLE}ALTER TABLE users ALTER COLUMN phone SET DEFAULT 'unknown'")
    safe_ops.backfill_in_batches("users", "id", "phone = 'unknown'", "phone IS NULL")
    safe_ops.set_not_null("users", "phone")


def downgrade() -> None:
    safe_ops.execute("ALTER TABLE users DROP COLUMN IF EXISTS phone")
