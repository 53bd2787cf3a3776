"""email: unsubscribe and summary preferences on users; outbox language, subject, lease, transport

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("email_unsubscribed_at", sa.DateTime(timezone=True),
                                     nullable=True))
    op.add_column("users", sa.Column("guardian_email", sa.String(320), nullable=True))
    op.add_column("users", sa.Column("weekly_summary", sa.Boolean(), nullable=False,
                                     server_default=sa.true()))
    op.add_column("email_notifications", sa.Column("language", sa.String(16), nullable=True))
    op.add_column("email_notifications", sa.Column("subject", sa.Text(), nullable=True))
    op.add_column("email_notifications", sa.Column("lease_until", sa.DateTime(timezone=True),
                                                   nullable=True))
    op.add_column("email_notifications", sa.Column("transport", sa.String(16), nullable=True))


def downgrade() -> None:
    for column in ("transport", "lease_until", "subject", "language"):
        op.execute(f"ALTER TABLE email_notifications DROP COLUMN {column}")
    for column in ("weekly_summary", "guardian_email", "email_unsubscribed_at"):
        op.execute(f"ALTER TABLE users DROP COLUMN {column}")
