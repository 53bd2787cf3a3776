"""full-text search over course content and the student's own turns

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

Dialect-specific, because the two backends index text in different ways:

- PostgreSQL: a generated `search tsvector` column (English stemming) on `content` and on
  `interactions`, each with a GIN index.
- SQLite: FTS5 external-content tables `fts_content` and `fts_interactions` (porter stemming),
  kept in step with their tables by AFTER INSERT / DELETE / UPDATE triggers.

Every object is named `fts_*` (the column is `search`) so autogenerate can be told to leave them
alone: the models cannot describe them. Two consequences for later migrations:
- SQLite: a batch (copy-and-rename) alteration of `content` or `interactions` drops their
  triggers with the old table; such a migration must recreate them (`_sqlite_index`) and rebuild.
- PostgreSQL: changing the type of a column the `search` expression reads needs the column
  dropped and re-added around it.
"""

from __future__ import annotations

from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# table -> the text columns it is searched by
INDEXED = {"content": ("heading_path", "text"), "interactions": ("transcript", "answer")}


def upgrade() -> None:
    for table, columns in INDEXED.items():
        if op.get_context().dialect.name == "postgresql":
            _postgres_index(table, columns)
        else:
            _sqlite_index(table, columns)


def downgrade() -> None:
    for table in INDEXED:
        if op.get_context().dialect.name == "postgresql":
            op.execute(f"DROP INDEX IF EXISTS fts_{table}_search")
            op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS search")
        else:
            for event in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS fts_{table}_{event}")
            op.execute(f"DROP TABLE IF EXISTS fts_{table}")  # its shadow tables go with it


def _postgres_index(table: str, columns: tuple[str, ...]) -> None:
    # STORED: computed once per write rather than on every search; existing rows are filled by
    # the ALTER itself. coalesce, because `NULL || text` is NULL and would hide the whole row.
    document = " || ' ' || ".join(f"coalesce({c}, '')" for c in columns)
    op.execute(f"ALTER TABLE {table} ADD COLUMN search tsvector "
               f"GENERATED ALWAYS AS (to_tsvector('english', {document})) STORED")
    op.execute(f"CREATE INDEX fts_{table}_search ON {table} USING GIN (search)")


def _sqlite_index(table: str, columns: tuple[str, ...]) -> None:
    """The external-content pattern of https://sqlite.org/fts5.html#external_content_tables: the
    index stores no copy of the text, and the triggers feed it every change. A 'delete' must be
    given the old values exactly, which is why the UPDATE trigger deletes before it inserts."""
    fts = f"fts_{table}"
    names = ", ".join(columns)
    new = ", ".join(f"new.{c}" for c in columns)
    old = ", ".join(f"old.{c}" for c in columns)
    op.execute(f"CREATE VIRTUAL TABLE {fts} USING fts5({names}, content='{table}', "
               f"content_rowid='id', tokenize='porter unicode61')")
    op.execute(f"CREATE TRIGGER {fts}_insert AFTER INSERT ON {table} BEGIN "
               f"INSERT INTO {fts}(rowid, {names}) VALUES (new.id, {new}); END")
    op.execute(f"CREATE TRIGGER {fts}_delete AFTER DELETE ON {table} BEGIN "
               f"INSERT INTO {fts}({fts}, rowid, {names}) VALUES ('delete', old.id, {old}); END")
    # Only when indexed text changes: ingestion rewrites embeddings, and re-indexing a chunk
    # for that would be wasted work.
    op.execute(f"CREATE TRIGGER {fts}_update AFTER UPDATE OF {names} ON {table} BEGIN "
               f"INSERT INTO {fts}({fts}, rowid, {names}) VALUES ('delete', old.id, {old}); "
               f"INSERT INTO {fts}(rowid, {names}) VALUES (new.id, {new}); END")
    op.execute(f"INSERT INTO {fts}({fts}) VALUES ('rebuild')")  # rows stored before this migration
