"""course tutor settings: each course's tutor settings, versioned (who changed what, when)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

- `course_tutor_versions`: one row per saved version of a course's tutor settings (mode, grade
  and reading level, language, answer length, voice, scope, the teacher's extra instructions, as
  a JSON object), numbered 1, 2, ... per course (unique), with who saved it (`updated_by`, kept
  as NULL when that account is deleted) and when. The newest version is the course's current
  settings; a course without rows has the defaults (`dialogue.prompts.TutorSettings`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "course_tutor_versions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                  autoincrement=True),
        sa.Column("course", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("updated_by", sa.String(32), sa.ForeignKey(
            "users.id", ondelete="SET NULL",
            name="fk_course_tutor_versions_updated_by_users"), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_course_tutor_versions"),
        sa.UniqueConstraint("course", "version", name="uq_course_tutor_versions_course_version"),
    )


def downgrade() -> None:
    op.drop_table("course_tutor_versions")
