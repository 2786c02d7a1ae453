"""${message}

What it does: ... (say how it stays safe on a large live table: see migrations/safe_ops.py).
Downgrade: lossless | LOSSY - say what is lost and why.

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

from migrations import safe_ops  # noqa: F401 - the safe patterns every revision should use
${imports if imports else ""}
revision: str = "${up_revision}"
down_revision: str | None = ${'"%s"' % down_revision if down_revision else None}
branch_labels: str | tuple[str, ...] | None = ${repr(branch_labels)}
depends_on: str | tuple[str, ...] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else 'raise NotImplementedError("write the upgrade with safe_ops helpers")'}


def downgrade() -> None:
    ${downgrades if downgrades else 'raise NotImplementedError("one-way revision: say why, and how to roll back")'}
