"""billing: Stripe subscription state on users, seats, processed Stripe events, usage ledger

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

USER_COLUMNS = ("stripe_customer_id", "subscription_id", "subscription_status",
                "subscription_price", "period_end", "cancel_at_period_end", "grace_until", "seats")


def upgrade() -> None:
    # Plain ADD COLUMNs (no batch table copy), as in 0003.
    op.add_column("users", sa.Column("stripe_customer_id", sa.String(255), nullable=True))
    op.add_column("users", sa.Column("subscription_id", sa.String(255), nullable=True))
    op.add_column("users", sa.Column("subscription_status", sa.String(32), nullable=True))
    op.add_column("users", sa.Column("subscription_price", sa.String(255), nullable=True))
    op.add_column("users", sa.Column("period_end", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False,
                                     server_default=sa.false()))
    op.add_column("users", sa.Column("grace_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("seats", sa.Integer(), nullable=True))
    op.create_index("ix_users_stripe_customer_id", "users", ["stripe_customer_id"], unique=True)
    op.add_column("class_members", sa.Column("joined_at", sa.DateTime(timezone=True),
                                             nullable=True))
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    op.create_table(
        "usage_ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("user_id", sa.String(32), nullable=True),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("tier", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_usage_ledger_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_ledger")),
    )
    op.create_index("ix_usage_ledger_user_created", "usage_ledger", ["user_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_ledger_user_created", table_name="usage_ledger")
    op.drop_table("usage_ledger")
    op.drop_table("stripe_events")
    op.execute("ALTER TABLE class_members DROP COLUMN joined_at")
    op.drop_index("ix_users_stripe_customer_id", table_name="users")
    for column in USER_COLUMNS:
        op.execute(f"ALTER TABLE users DROP COLUMN {column}")
