"""notes: interactions of kind `note` may link to the turn they were saved from, and are edited

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

A note is a row of `interactions` (kind `note`, title in `transcript`, text in `answer`), so the
full-text index of 0002 covers it unchanged: a note is searchable, and part of the student's
memory, from the moment it is stored. What notes add:

- `turn_id`: the student's own turn a note was saved from or is about (nullable). Not a foreign
  key: SQLite can add one only by copying the table (Alembic's batch mode), which would drop the
  FTS triggers of 0002 with the old table. The server checks the turn is the student's own when
  the note is made; turns are deleted only with their account, which takes the notes along.
- `updated_at`: when a note was last edited (NULL: never; turns are never edited).
- indexes on `turn_id` and on (user_id, kind, id): a student's notes, newest first, without
  walking all their turns.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs, also on SQLite: a batch (table copy) would drop the FTS triggers of 0002.
    op.add_column("interactions", sa.Column(
        "turn_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True))
    op.add_column("interactions", sa.Column("updated_at", sa.DateTime(timezone=True),
                                            nullable=True))
    op.create_index("ix_interactions_turn_id", "interactions", ["turn_id"])
    op.create_index("ix_interactions_user_kind", "interactions", ["user_id", "kind", "id"])


def downgrade() -> None:
    op.drop_index("ix_interactions_user_kind", table_name="interactions")
    op.drop_index("ix_interactions_turn_id", table_name="interactions")
    # Native DROP COLUMN (SQLite ≥ 3.35), again to keep the FTS triggers. Notes stay as rows of
    # kind `note` (an older server shows them as turns); delete them first if that is unwanted.
    for column in ("updated_at", "turn_id"):
        op.execute(f"ALTER TABLE interactions DROP COLUMN {column}")
