"""Initial tables: users, meetings and the legacy meeting_participants (attended flag).

What it does: creates the three tables the rest of the chain evolves. The legacy participants table gets
a primary key (meeting_id, user_id), so the batched copy in 0005 walks an index, and foreign keys with
ON DELETE CASCADE (deleting a user cascades to their meetings, which must be able to take their
participants along), plus an index on user_id so that cascade does not scan the table.

Downgrade: LOSSY - drops all three tables with every row in them. Only for empty/throwaway databases;
production rolls back from the pipeline's backup instead.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

TIMESTAMPTZ = sa.TIMESTAMP(timezone=True)


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
    ]


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("email", sa.String(120), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="users_pkey"),
        sa.UniqueConstraint("email", name="users_email_key"),
    )
    op.create_table(
        "meetings",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("title", sa.String(100), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("start_time", TIMESTAMPTZ, nullable=False),
        sa.Column("end_time", TIMESTAMPTZ, nullable=False),
        sa.Column("created_by", sa.BigInteger, nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="meetings_pkey"),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], ondelete="CASCADE", name="meetings_created_by_fkey"
        ),
        sa.CheckConstraint("end_time > start_time", name="valid_time_range"),
    )
    op.create_table(
        "meeting_participants",
        sa.Column("meeting_id", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("attended", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("meeting_id", "user_id", name="meeting_participants_pkey"),
        sa.ForeignKeyConstraint(
            ["meeting_id"], ["meetings.id"], ondelete="CASCADE", name="meeting_participants_meeting_id_fkey"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], ondelete="CASCADE", name="meeting_participants_user_id_fkey"
        ),
    )
    # A fresh, empty table: a plain CREATE INDEX blocks nobody here.
    op.create_index("ix_meeting_participants_user_id", "meeting_participants", ["user_id"])


def downgrade() -> None:
    op.drop_table("meeting_participants")
    op.drop_table("meetings")
    op.drop_table("users")
