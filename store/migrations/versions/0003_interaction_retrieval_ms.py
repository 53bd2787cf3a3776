"""interactions.retrieval_ms: the retrieval stage's latency, next to the other stages

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN, also on SQLite: a batch (table copy) would drop the FTS triggers of 0002.
    op.add_column("interactions", sa.Column("retrieval_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    # Native DROP COLUMN (SQLite ≥ 3.35), again to keep the FTS triggers.
    op.execute("ALTER TABLE interactions DROP COLUMN retrieval_ms")
