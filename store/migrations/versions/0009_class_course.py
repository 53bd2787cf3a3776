"""a class's course: the course a class studies, so its teachers shape that course's tutor

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

- `classes.course` (nullable, indexed): the course (as `content.course` names it) a class
  studies. A teacher of a class on a course is one of that course's teachers (they edit its tutor
  settings and see its reports); a class without a course is as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("classes", sa.Column("course", sa.String(200), nullable=True))
    op.create_index("ix_classes_course", "classes", ["course"])


def downgrade() -> None:
    op.drop_index("ix_classes_course", table_name="classes")
    op.execute("ALTER TABLE classes DROP COLUMN course")  # native: keeps SQLite's table as is
