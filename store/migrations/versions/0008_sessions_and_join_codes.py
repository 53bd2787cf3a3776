"""sessions and classes by consent: server-side browser sessions, class join codes

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-03

- `browser_sessions`: one row per signed-in browser; the signed cookie now carries only the
  row's id, and every request checks the row (accounts.sessions), so logout and revocation take
  effect at once. Cookies of the old scheme (a user id only) are refused: users sign in again.
- `classes.join_code`: the code students enter to join a class (teachers no longer add users
  by id). Existing classes get a code here.
- `class_members.joined_at` is set where it was NULL (to now): a teacher sees a student's turns
  from the moment they joined, and a membership of unknown age counts from the upgrade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from store.queries import new_join_code

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

def upgrade() -> None:
    op.create_table(
        "browser_sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_agent", sa.String(300), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_browser_sessions_user_id_users"),
        sa.PrimaryKeyConstraint("id", name="pk_browser_sessions"),
    )
    op.create_index("ix_browser_sessions_user_id", "browser_sessions", ["user_id"])
    op.add_column("classes", sa.Column("join_code", sa.String(16), nullable=True))
    op.create_index("ix_classes_join_code", "classes", ["join_code"], unique=True)
    conn = op.get_bind()
    classes = sa.table("classes", sa.column("id", sa.String), sa.column("join_code", sa.String))
    for (class_id,) in conn.execute(sa.select(classes.c.id)).all():
        conn.execute(classes.update().where(classes.c.id == class_id)
                     .values(join_code=new_join_code()))
    op.execute("UPDATE class_members SET joined_at = CURRENT_TIMESTAMP WHERE joined_at IS NULL")


def downgrade() -> None:
    op.drop_index("ix_classes_join_code", table_name="classes")
    op.execute("ALTER TABLE classes DROP COLUMN join_code")  # native: keeps SQLite's table as is
    op.drop_index("ix_browser_sessions_user_id", table_name="browser_sessions")
    op.drop_table("browser_sessions")
