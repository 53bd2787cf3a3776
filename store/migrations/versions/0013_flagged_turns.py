"""flagged turns: what moderation flagged, with its categories, for the student's teachers

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03

- `flagged_turns`: one row per flagged student turn (`direction` "input") or tutor sentence
  ("output"): the session, user, course and response, the categories (JSON list), the flagged
  text, whether it was urgent (the teachers were emailed), and the background writer's
  `write_id` (unique: a replay of the spool inserts it once).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "flagged_turns",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(32),
                  sa.ForeignKey("users.id", ondelete="CASCADE",
                                name=op.f("fk_flagged_turns_user_id_users")), nullable=True),
        sa.Column("course", sa.String(200), nullable=True),
        sa.Column("response_id", sa.String(64), nullable=True),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("categories", sa.JSON(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("write_id", sa.String(32), nullable=True),
        sa.CheckConstraint("direction IN ('input', 'output')",
                           name=op.f("ck_flagged_turns_direction")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flagged_turns")),
    )
    op.create_index("ix_flagged_turns_user_created", "flagged_turns", ["user_id", "created_at"])
    op.create_index("uq_flagged_turns_write_id", "flagged_turns", ["write_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_flagged_turns_write_id", table_name="flagged_turns")
    op.drop_index("ix_flagged_turns_user_created", table_name="flagged_turns")
    op.drop_table("flagged_turns")
