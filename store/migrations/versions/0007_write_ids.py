"""write ids: each turn and each usage-ledger row carries the unique id the writer gave it

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

The background writer (store.writer) keeps every accepted row in a write-ahead spool on local disk
until the database has committed it, and replays the spool at startup. A row may then reach the
database twice (committed, then the process died before the spool heard of it): `write_id` with
a unique index makes the second insert a no-op (INSERT ... ON CONFLICT (write_id) DO NOTHING on
SQLite and PostgreSQL). Nullable: rows from before this revision, and notes, have none, and NULLs
never conflict. Plain ADD COLUMN and CREATE UNIQUE INDEX, also on SQLite (a batch table copy
would drop the FTS triggers of 0002).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLES = ("interactions", "usage_ledger")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("write_id", sa.String(32), nullable=True))
        op.create_index(f"uq_{table}_write_id", table, ["write_id"], unique=True)


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(f"uq_{table}_write_id", table_name=table)
        op.execute(f"ALTER TABLE {table} DROP COLUMN write_id")  # native, keeps the FTS triggers
