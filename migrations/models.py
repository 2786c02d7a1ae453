"""The schema at head (revision 0005), as SQLAlchemy 2 declarative models, for ``alembic check``.

These describe what the migrations produce; they are not the application's models and the revisions never
import them (a revision must keep meaning what it meant when it shipped). Every constraint and index is
named exactly as PostgreSQL / the revisions name it, so a freshly migrated database compares clean.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TIMESTAMPTZ = sa.TIMESTAMP(timezone=True)
MEETING_STATUSES = ("scheduled", "in_progress", "completed", "cancelled")
PARTICIPANT_STATUSES = ("invited", "accepted", "tentative", "declined")


class Base(DeclarativeBase):
    pass


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class User(Base):
    __tablename__ = "users"
    __table_args__ = (sa.UniqueConstraint("email", name="users_email_key"),)

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(120))
    name: Mapped[str] = mapped_column(sa.String(100))
    password_hash: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[dt.datetime] = mapped_column(TIMESTAMPTZ, server_default=sa.func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(TIMESTAMPTZ, server_default=sa.func.now())
    phone: Mapped[str] = mapped_column(sa.String(20), server_default="unknown")


class Meeting(Base):
    __tablename__ = "meetings"
    __table_args__ = (
        sa.CheckConstraint("end_time > start_time", name="valid_time_range"),
        sa.CheckConstraint(_in("status", MEETING_STATUSES), name="valid_status"),
        sa.Index("idx_meetings_time_range", "start_time", "end_time"),
        sa.Index("idx_meetings_status", "status"),
        sa.Index("idx_meetings_creator", "created_by"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str | None] = mapped_column(sa.Text)
    start_time: Mapped[dt.datetime] = mapped_column(TIMESTAMPTZ)
    end_time: Mapped[dt.datetime] = mapped_column(TIMESTAMPTZ)
    created_by: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE", name="meetings_created_by_fkey")
    )
    created_at: Mapped[dt.datetime] = mapped_column(TIMESTAMPTZ, server_default=sa.func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(TIMESTAMPTZ, server_default=sa.func.now())
    status: Mapped[str] = mapped_column(sa.String(20), server_default="scheduled")


def _participant_keys(table: str, *extra: object) -> tuple:
    """Table args shared by both participants tables: (meeting_id, user_id) key, user_id index."""
    return (
        sa.PrimaryKeyConstraint("meeting_id", "user_id", name=f"{table}_pkey"),
        sa.Index(f"ix_{table}_user_id", "user_id"),
        *extra,
    )


def _cascading_fk(table: str, column: str, target: str) -> Mapped[int]:
    """A bigint foreign key that follows its parent's deletion (user -> meetings -> participants)."""
    return mapped_column(
        sa.BigInteger, sa.ForeignKey(target, ondelete="CASCADE", name=f"{table}_{column}_fkey")
    )


class MeetingParticipant(Base):
    """Who is in which meeting, with an RSVP status (revision 0005)."""

    __tablename__ = "meeting_participants"
    __table_args__ = _participant_keys(
        __tablename__,
        sa.CheckConstraint(_in("status", PARTICIPANT_STATUSES), name="valid_participant_status"),
    )

    meeting_id: Mapped[int] = _cascading_fk(__tablename__, "meeting_id", "meetings.id")
    user_id: Mapped[int] = _cascading_fk(__tablename__, "user_id", "users.id")
    status: Mapped[str] = mapped_column(sa.String(20))


class MeetingParticipantLegacy(Base):
    """The pre-0005 attendance table, kept (renamed) so 0005's downgrade can restore it."""

    __tablename__ = "meeting_participants_legacy"
    __table_args__ = _participant_keys(__tablename__)

    meeting_id: Mapped[int] = _cascading_fk(__tablename__, "meeting_id", "meetings.id")
    user_id: Mapped[int] = _cascading_fk(__tablename__, "user_id", "users.id")
    attended: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
