"""quizzes, quiz answers and mastery: a student's progress per course section

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03

- `quizzes`: a generated quiz with its correct answers and the sections each question cites, so
  answers are checked server-side (`POST /api/ai/quiz/{id}/answers`).
- `quiz_answers`: one answer per question (unique on quiz and question), with whether it was
  correct (NULL: an open answer not marked) and the question's sections.
- `mastery`: per student, course ('' for none) and section, the moving average of correct
  answers and the next review date (study.mastery).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "quizzes",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("course", sa.String(200), nullable=True),
        sa.Column("topic", sa.Text(), nullable=True),
        sa.Column("questions", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_quizzes_user_id_users",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_quizzes"),
    )
    op.create_index("ix_quizzes_user_id", "quizzes", ["user_id"])
    op.create_table(
        "quiz_answers",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("quiz_id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("question", sa.Integer(), nullable=False),
        sa.Column("course", sa.String(200), nullable=True),
        sa.Column("sections", sa.JSON(), nullable=False),
        sa.Column("choice", sa.Integer(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("self_assessed", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["quiz_id"], ["quizzes.id"],
                                name="fk_quiz_answers_quiz_id_quizzes", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name="fk_quiz_answers_user_id_users", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_quiz_answers"),
        sa.UniqueConstraint("quiz_id", "question", name="uq_quiz_answers_question"),
    )
    op.create_index("ix_quiz_answers_user_created", "quiz_answers", ["user_id", "created_at"])
    op.create_table(
        "mastery",
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("course", sa.String(200), nullable=False),
        sa.Column("section", sa.String(400), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("answers", sa.Integer(), nullable=False),
        sa.Column("correct", sa.Integer(), nullable=False),
        sa.Column("interval_days", sa.Float(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_mastery_user_id_users",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "course", "section", name="pk_mastery"),
    )


def downgrade() -> None:
    op.drop_table("mastery")
    op.drop_index("ix_quiz_answers_user_created", table_name="quiz_answers")
    op.drop_table("quiz_answers")
    op.drop_index("ix_quizzes_user_id", table_name="quizzes")
    op.drop_table("quizzes")
