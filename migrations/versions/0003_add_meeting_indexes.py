"""Meeting indexes: idx_meetings_time_range (start_time, end_time), idx_meetings_status, idx_meetings_creator.

What it does: builds each index with CREATE INDEX CONCURRENTLY outside a transaction (writes go on during
the build), with statement_timeout raised for the build only. An INVALID index left by an earlier failed
build is dropped (DROP INDEX CONCURRENTLY) before retrying; a valid one is kept, so a re-run after an
interruption only builds what is missing.

Downgrade: lossless - DROP INDEX CONCURRENTLY for each (indexes hold no data).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from migrations import safe_ops

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

INDEXES = {
    "idx_meetings_time_range": "start_time, end_time",
    "idx_meetings_status": "status",
    "idx_meetings_creator": "created_by",
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        safe_ops.create_index_concurrently(name, "meetings", columns)


def downgrade() -> None:
    for name in reversed(INDEXES):
        safe_ops.drop_index_concurrently(name)
