"""Storage: the schema (`models`), migrations (Alembic, in `migrations/`), the database handle
(`db`), the queries the routes run (`queries`) and the background interaction writer (`writer`).

PostgreSQL in production (Supabase included), an SQLite file by default. Nothing on the voice hot
path awaits the database: turns are handed to the writer, which commits them in the background.
"""
