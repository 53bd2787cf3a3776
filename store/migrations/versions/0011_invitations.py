"""invitations: an admin or a school's seat owner invites people to a role by email

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

- `invitations`: one row per invitation (accounts.invitations). The link's token is stored as a
  SHA-256 only (it is a credential, like an API token); the address in clear, lowercased (the
  inviter lists and revokes by it). At most one open invitation (neither accepted nor revoked)
  per address: a partial unique index, on both backends.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

OPEN = "accepted_at IS NULL AND revoked_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "invitations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("invited_by", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("accepted_by", sa.String(32), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('teacher', 'admin')", name="ck_invitations_role"),
        sa.ForeignKeyConstraint(["invited_by"], ["users.id"], ondelete="SET NULL",
                                name="fk_invitations_invited_by_users"),
        sa.ForeignKeyConstraint(["accepted_by"], ["users.id"], ondelete="CASCADE",
                                name="fk_invitations_accepted_by_users"),
        sa.PrimaryKeyConstraint("id", name="pk_invitations"),
        sa.UniqueConstraint("token_hash", name="uq_invitations_token_hash"),
    )
    op.create_index("ix_invitations_invited_by", "invitations", ["invited_by"])
    op.create_index("ix_invitations_accepted_by", "invitations", ["accepted_by"])
    op.create_index("uq_invitations_open_email", "invitations", ["email"], unique=True,
                    sqlite_where=sa.text(OPEN), postgresql_where=sa.text(OPEN))


def downgrade() -> None:
    op.drop_table("invitations")
