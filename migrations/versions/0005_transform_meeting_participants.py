"""Participants transformation: attended flag -> meeting_participants.status, legacy table kept.

What it does, on a live 10M-row table:
1. creates meeting_participants_new (meeting_id, user_id) with status (CHECK valid_participant_status),
   foreign keys to meetings and users (ON DELETE CASCADE, like the legacy table), an index on user_id,
   and a trigger on the legacy table that mirrors every insert, update and delete into it from then on;
2. copies the legacy rows in meeting_id ranges (INSERT ... SELECT ... FOR KEY SHARE ... ON CONFLICT DO
   NOTHING, 'accepted' when attended else 'declined'), a commit per batch: resumable, and rows the
   application changes meanwhile are already mirrored (the key-share lock keeps a concurrent delete from
   slipping between a batch's read and its insert);
3. swaps in one short transaction, together with the version stamp: locks both tables, catches up any
   legacy rows beyond the copied range that did not come through the trigger, drops the trigger, renames
   the legacy table to meeting_participants_legacy and the new one to meeting_participants, renaming
   constraints and indexes so every name says which table it belongs to.

The legacy table stays (no longer written by anything) until a later revision drops it.

Downgrade: LOSSY - restores the legacy table under its old name and drops the new one. Before the swap
back, rows added or changed in the new table since the upgrade are copied back (mirror trigger plus a
batched reconcile, deleted rows removed), but status collapses to a boolean: 'accepted' -> attended,
every other status ('declined', 'invited', 'tentative') -> not attended, so those distinctions are lost.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic.util import CommandError

from migrations import safe_ops

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

LIVE = "meeting_participants"
KEPT = "meeting_participants_legacy"
BUILD = "meeting_participants_new"
KEYS = ("meeting_id", "user_id")
STATUSES = ("invited", "accepted", "tentative", "declined")
FORWARD_TRIGGER = "meeting_participants_mirror_to_new"
BACKWARD_TRIGGER = "meeting_participants_mirror_to_legacy"


def _names(table: str) -> dict[str, str]:
    """Constraint names PostgreSQL would give on ``table``."""
    return {
        "pkey": f"{table}_pkey",
        "meeting_fk": f"{table}_meeting_id_fkey",
        "user_fk": f"{table}_user_id_fkey",
    }


def _renames(before: str, after: str) -> tuple[dict[str, str], dict[str, str]]:
    """(constraint renames, index renames) for moving a participants table from one name to another."""
    old, new = _names(before), _names(after)
    return {old[k]: new[k] for k in old}, {f"ix_{before}_user_id": f"ix_{after}_user_id"}


def _range(table: str) -> str:
    return f"SELECT min(meeting_id), max(meeting_id) FROM {table}"


def upgrade() -> None:
    names = _names(BUILD)
    allowed = ", ".join(f"'{s}'" for s in STATUSES)
    safe_ops.execute(
        f"""CREATE TABLE IF NOT EXISTS {BUILD} (
    meeting_id bigint NOT NULL,
    user_id bigint NOT NULL,
    {safe_ops.squawk_ignore("prefer-text-field", "varchar(n) is the spec")}    status varchar(20) NOT NULL,
    CONSTRAINT {names["pkey"]} PRIMARY KEY (meeting_id, user_id),
    CONSTRAINT {names["meeting_fk"]} FOREIGN KEY (meeting_id) REFERENCES meetings (id) ON DELETE CASCADE,
    CONSTRAINT {names["user_fk"]} FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT valid_participant_status CHECK (status IN ({allowed}))
)"""
    )
    safe_ops.execute(
        "-- squawk-ignore require-concurrent-index-creation -- the table is new and empty here\n"
        f"CREATE INDEX IF NOT EXISTS ix_{BUILD}_user_id ON {BUILD} (user_id)"
    )
    status = "CASE WHEN {}attended THEN 'accepted' ELSE 'declined' END"
    safe_ops.install_mirror_trigger(LIVE, BUILD, KEYS, {"status": status.format("NEW.")}, FORWARD_TRIGGER)

    copy = (
        f"INSERT INTO {BUILD} (meeting_id, user_id, status)"
        f" SELECT meeting_id, user_id, {status.format('')} FROM {LIVE}"
    )
    _, copied_upto = safe_ops.run_in_batches(
        f"{copy} WHERE meeting_id >= :lo AND meeting_id < :hi FOR KEY SHARE ON CONFLICT DO NOTHING",
        key_range_sql=_range(LIVE),
        verb="copied",
        offline_sql=f"{copy} ON CONFLICT DO NOTHING",
    )

    # The swap: one short transaction, committed together with the version stamp.
    safe_ops.execute(f"LOCK TABLE {LIVE}, {BUILD} IN ACCESS EXCLUSIVE MODE")
    if copied_upto is not None:
        caught_up = safe_ops.execute(
            f"{copy} WHERE meeting_id > :upto ON CONFLICT DO NOTHING", {"upto": copied_upto}
        )
        safe_ops.log.info("swap: %d legacy rows beyond the copied range caught up", caught_up)
    safe_ops.drop_mirror_trigger(LIVE, FORWARD_TRIGGER)
    safe_ops.rename_table(LIVE, KEPT, *_renames(LIVE, KEPT))
    safe_ops.rename_table(BUILD, LIVE, *_renames(BUILD, LIVE))


def downgrade() -> None:
    if not safe_ops.offline() and not safe_ops.table_exists(KEPT):
        raise CommandError(
            f"cannot downgrade 0005: table {KEPT} no longer exists, so the attended flags cannot be "
            "restored; restore from a backup instead"
        )
    safe_ops.install_mirror_trigger(
        LIVE, KEPT, KEYS, {"attended": "NEW.status = 'accepted'"}, BACKWARD_TRIGGER
    )
    upsert = (
        f"INSERT INTO {KEPT} (meeting_id, user_id, attended)"
        f" SELECT meeting_id, user_id, status = 'accepted' FROM {LIVE}"
    )
    on_conflict = (
        "ON CONFLICT (meeting_id, user_id) DO UPDATE SET attended = EXCLUDED.attended"
        f" WHERE {KEPT}.attended IS DISTINCT FROM EXCLUDED.attended"
    )
    safe_ops.run_in_batches(
        f"{upsert} WHERE meeting_id >= :lo AND meeting_id < :hi FOR KEY SHARE {on_conflict}",
        key_range_sql=_range(LIVE),
        verb="copied back",
        offline_sql=f"{upsert} {on_conflict}",
    )
    stale = (
        f"DELETE FROM {KEPT} AS k WHERE NOT EXISTS"
        f" (SELECT 1 FROM {LIVE} AS p WHERE p.meeting_id = k.meeting_id AND p.user_id = k.user_id)"
    )
    safe_ops.run_in_batches(
        f"{stale} AND k.meeting_id >= :lo AND k.meeting_id < :hi",
        key_range_sql=_range(KEPT),
        verb="deleted (gone from the new table)",
        offline_sql=stale,
    )

    safe_ops.execute(f"LOCK TABLE {LIVE}, {KEPT} IN ACCESS EXCLUSIVE MODE")
    safe_ops.drop_mirror_trigger(LIVE, BACKWARD_TRIGGER)
    safe_ops.execute(
        "-- squawk-ignore ban-drop-table -- downgrade: its rows were copied back to the legacy table\n"
        f"DROP TABLE {LIVE}"
    )
    safe_ops.rename_table(KEPT, LIVE, *_renames(KEPT, LIVE))
