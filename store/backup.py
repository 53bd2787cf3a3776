"""Backups of the tutor's database, and restoring them (`tutor backup`, `tutor restore`).

A backup is one uncompressed tar file holding `manifest.json` (what it is: the backend, the
Alembic revision, when, with what, the SHA-256 of the payload and the row count of every table)
and the payload, which the usual tools open once extracted (`tar -xf`):

- SQLite: `database.sqlite3`, made with SQLite's online backup API in one read transaction: a
  consistent snapshot, taken while the server runs (in WAL mode, writers are not blocked).
- PostgreSQL: `database.pgdump`, `pg_dump --format=custom` of the database's schema (normally
  `public`), run on a snapshot exported by the transaction that counted the rows, so the counts
  in the manifest are exactly what the dump holds. pg_dump never blocks the server's writes.

Restoring checks the manifest first (a PostgreSQL dump is refused for SQLite and the other way
round; a backup from a newer schema than this code knows is refused), refuses while anything else
is connected to the database (stop the servers; `force` overrides), takes a safety backup of what
it is about to replace, restores, checks that every table has the rows the manifest counted, and
migrates to this code's head revision when the backup is older.

- SQLite: the payload is extracted next to the database, checked (`PRAGMA quick_check`, the row
  counts), migrated, then copied into the database file through the backup API while this process
  holds the database's exclusive lock: a server that is still running cannot be writing meanwhile,
  and is detected because its idle connections keep that lock from being taken.
- PostgreSQL: `pg_restore --clean --if-exists --no-owner --no-privileges` piped into
  `psql --single-transaction`, after dropping the tutor's tables: all or nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import text
from sqlalchemy.engine import make_url

from .db import Database, migrate, normalise_url, revisions
from .files import open_private, private_dir, private_sqlite

FORMAT = "tutor-backup"
VERSION = 1
MANIFEST = "manifest.json"
PAYLOAD = {"sqlite": "database.sqlite3", "postgresql": "database.pgdump"}
NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
# query parameters of a SQLAlchemy URL that libpq (pg_dump, psql) understands; asyncpg's `ssl`
# is libpq's `sslmode`
LIBPQ_PARAMS = {"sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "connect_timeout",
                "application_name", "target_session_attrs", "options", "service"}


class BackupError(Exception):
    """Something the operator must fix; the message says what."""


@dataclass
class Manifest:
    backend: str
    alembic_revision: str | None
    created_at: str
    database: str  # where it was taken from, without password
    tool: str
    payload: str
    sha256: str = ""
    bytes: int = 0
    tables: dict[str, int] = field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION

    @property
    def rows(self) -> int:
        return sum(self.tables.values())


@dataclass
class RestoreResult:
    manifest: Manifest
    target: str
    safety_backup: Path | None
    migrated_to: str | None  # the head revision, when the backup was older


def backend_of(url: str) -> str:
    name = make_url(normalise_url(url)).get_backend_name()
    if name not in PAYLOAD:
        raise BackupError(f"backups support SQLite and PostgreSQL, not {name}")
    return name


def describe(url: str) -> str:
    """The database, for messages: a SQLite file's path, or the PostgreSQL URL without password."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() == "sqlite":
        return str(parsed.database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=True)


def default_path(directory: Path, backend: str, at: datetime | None = None) -> Path:
    stamp = (at or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return directory / f"tutor-{backend}-{stamp}.tar"


def head_revision() -> str | None:
    return revisions()[0]


def _known_revision(revision: str | None) -> bool:
    return revision is None or revision in revisions()[1]


# -- the archive ------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_archive(out: Path, manifest: Manifest, payload: Path) -> None:
    """manifest.json first (so reading it never walks the payload), then the payload. Written
    under a temporary name and renamed: a backup file that exists is complete."""
    manifest.sha256 = _sha256(payload)
    manifest.bytes = payload.stat().st_size
    private_dir(out.parent)
    partial = out.with_name(f".{out.name}.{secrets.token_hex(4)}.partial")
    try:
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            data = json.dumps(asdict(manifest), indent=2).encode() + b"\n"
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), int(datetime.now().timestamp()), 0o600
            tar.addfile(info, io.BytesIO(data))
            info = tar.gettarinfo(payload, arcname=manifest.payload)
            info.mode, info.uname, info.gname = 0o600, "", ""
            with payload.open("rb") as f:
                tar.addfile(info, f)
        os.chmod(partial, 0o600)  # a backup holds everything, including hashed tokens
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def read_manifest(archive: Path) -> Manifest:
    try:
        with tarfile.open(archive, "r:*") as tar:
            member = tar.extractfile(MANIFEST)
            assert member is not None
            raw = json.loads(member.read())
    except FileNotFoundError:
        raise BackupError(f"{archive}: no such file") from None
    except (tarfile.TarError, KeyError, AssertionError, ValueError) as exc:
        raise BackupError(f"{archive} is not a tutor backup ({exc.__class__.__name__}: {exc})") \
            from None
    if raw.get("format") != FORMAT:
        raise BackupError(f"{archive} is not a tutor backup")
    if raw.get("version", 0) > VERSION:
        raise BackupError(f"{archive} is a backup of format version {raw['version']}; this "
                          f"version of the tutor reads version {VERSION} and older")
    known = Manifest.__dataclass_fields__
    return Manifest(**{k: v for k, v in raw.items() if k in known})


def _extract_payload(archive: Path, manifest: Manifest, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        source = tar.extractfile(manifest.payload)
        if source is None:
            raise BackupError(f"{archive} has no {manifest.payload}")
        digest = hashlib.sha256()
        with open_private(dest) as out:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    if digest.hexdigest() != manifest.sha256:
        raise BackupError(f"{archive} is damaged: its {manifest.payload} does not match the "
                          "checksum in its manifest")


# -- backup -----------------------------------------------------------------------------------

async def backup(url: str, out: Path) -> Manifest:
    """Back the database at `url` up into the archive `out` (replaced if it exists)."""
    if backend_of(url) == "sqlite":
        return await asyncio.to_thread(_sqlite_backup, url, out)
    return await _pg_backup(url, out)


def _sqlite_path(url: str) -> Path:
    database = make_url(normalise_url(url)).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up or restored")
    return Path(database).resolve()


def _sqlite_connect(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=timeout, isolation_level=None)


def _sqlite_tables(conn: sqlite3.Connection) -> list[str]:
    """Every table with rows of its own: FTS5 virtual tables read their content table (and are
    rebuilt from their shadow tables, which are counted)."""
    rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' "
                        "AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall()
    return [name for name, sql in rows if not (sql or "").upper().startswith("CREATE VIRTUAL")]


def _sqlite_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
            for t in _sqlite_tables(conn)}


def _sqlite_revision(conn: sqlite3.Connection) -> str | None:
    if "alembic_version" not in _sqlite_tables(conn):
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def _sqlite_snapshot(source: sqlite3.Connection, dest: Path) -> tuple[str | None, dict[str, int]]:
    """Copy `source` into the new file `dest` (one step: one read transaction, a consistent
    snapshot) as a self-contained rollback-journal database; its revision and row counts."""
    copy = _sqlite_connect(dest)
    try:
        source.backup(copy)  # pages=-1: all at once
        copy.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal beside it
        check = copy.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise BackupError(f"the copy failed SQLite's check: {check}")
        return _sqlite_revision(copy), _sqlite_counts(copy)
    finally:
        copy.close()


def _sqlite_backup(url: str, out: Path, source: sqlite3.Connection | None = None) -> Manifest:
    path = _sqlite_path(url)
    if source is None and not path.exists():
        raise BackupError(f"there is no SQLite database at {path}")
    private_dir(out.parent)
    with tempfile.TemporaryDirectory(prefix=".tutor-backup-", dir=out.parent) as tmp:
        payload = Path(tmp) / PAYLOAD["sqlite"]
        conn = source or _sqlite_connect(path)
        try:
            revision, tables = _sqlite_snapshot(conn, payload)
        finally:
            if source is None:
                conn.close()
        manifest = Manifest(backend="sqlite", alembic_revision=revision,
                            created_at=_now(), database=str(path),
                            tool=f"SQLite {sqlite3.sqlite_version} online backup API",
                            payload=PAYLOAD["sqlite"], tables=tables)
        _write_archive(out, manifest, payload)
    return manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- PostgreSQL ---------------------------------------------------------------------------------

def libpq_url(url: str) -> tuple[str, dict[str, str]]:
    """The SQLAlchemy URL as a libpq URL for pg_dump, pg_restore and psql, and the environment to
    run them with: the password goes in PGPASSWORD, never on a command line."""
    parsed = make_url(normalise_url(url))
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    params = []
    for key, value in parsed.query.items():
        for v in (value if isinstance(value, tuple) else (value,)):
            name = "sslmode" if key == "ssl" else key
            if name in LIBPQ_PARAMS:
                params.append(f"{name}={quote(str(v), safe='')}")
    user = quote(parsed.username, safe="") + "@" if parsed.username else ""
    host = parsed.host or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    port = f":{parsed.port}" if parsed.port else ""
    dsn = f"postgresql://{user}{host}{port}/{quote(parsed.database or '', safe='')}"
    return dsn + ("?" + "&".join(params) if params else ""), env


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} is not installed: PostgreSQL backups need the PostgreSQL "
                          "client programs (Debian: apt-get install postgresql-client)")
    return path


def _tool_major(path: str) -> tuple[int, str]:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not match:
        raise BackupError(f"cannot tell the version of {path}: {out!r}")
    return int(match.group(1)), out.strip()


async def _pg_server_major(db: Database) -> int:
    async with db.engine.connect() as c:
        return int((await c.execute(text("SHOW server_version_num"))).scalar_one()) // 10000


async def _run(args: list[str], env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise BackupError(f"{Path(args[0]).name} failed ({proc.returncode}): "
                          f"{(err or out).decode(errors='replace').strip()}")


async def _pg_backup(url: str, out: Path) -> Manifest:
    pg_dump = _tool("pg_dump")
    client_major, client_version = _tool_major(pg_dump)
    dsn, env = libpq_url(url)
    db = Database(url, pool_size=1, max_overflow=0)
    try:
        server_major = await _pg_server_major(db)
        if client_major < server_major:
            raise BackupError(f"{client_version} cannot dump a PostgreSQL {server_major} server: "
                              f"install the PostgreSQL {server_major} client programs")
        async with db.engine.connect() as c:
            c = await c.execution_options(isolation_level="REPEATABLE READ")
            async with c.begin():  # rolled back at the end: it only reads
                await c.execute(text("SET TRANSACTION READ ONLY"))
                snapshot = (await c.execute(text("SELECT pg_export_snapshot()"))).scalar_one()
                schema = (await c.execute(text("SELECT current_schema()"))).scalar_one()
                tables = await _pg_counts(c, schema)
                revision = None
                if "alembic_version" in tables:
                    revision = (await c.execute(text(
                        f'SELECT version_num FROM "{schema}".alembic_version'))).scalar_one_or_none()
                private_dir(out.parent)
                with tempfile.TemporaryDirectory(prefix=".tutor-backup-", dir=out.parent) as tmp:
                    payload = Path(tmp) / PAYLOAD["postgresql"]
                    # the exporting transaction stays open until pg_dump has its snapshot
                    await _run([pg_dump, "--format=custom", f"--snapshot={snapshot}",
                                f"--schema={schema}", "--no-owner", "--no-privileges",
                                f"--file={payload}", f"--dbname={dsn}"], env)
                    manifest = Manifest(backend="postgresql", alembic_revision=revision,
                                        created_at=_now(), database=describe(url),
                                        tool=f"{client_version}, server {server_major}",
                                        payload=PAYLOAD["postgresql"], tables=tables)
                    await asyncio.to_thread(_write_archive, out, manifest, payload)
                await c.rollback()
    except BackupError:
        raise
    except OSError as exc:
        raise BackupError(f"cannot reach PostgreSQL at {describe(url)}: {exc}") from None
    finally:
        await db.close()
    return manifest


async def _pg_counts(c: Any, schema: str) -> dict[str, int]:
    names = (await c.execute(text(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = :schema "
        "AND table_type = 'BASE TABLE' ORDER BY table_name"), {"schema": schema})).scalars().all()
    return {t: (await c.execute(text(f'SELECT count(*) FROM "{schema}"."{t}"'))).scalar_one()
            for t in names}


# -- restore ----------------------------------------------------------------------------------

async def restore(url: str, archive: Path, *, safety_dir: Path | None,
                  force: bool = False) -> RestoreResult:
    """Replace the database at `url` with the backup `archive`. `safety_dir`: where to back up
    what is being replaced first (None: no safety backup). `force`: even though other
    connections are open (a running server would keep writing into the restored database)."""
    manifest = read_manifest(archive)
    backend = backend_of(url)
    if manifest.backend != backend:
        raise BackupError(
            f"{archive.name} is a {NAMES[manifest.backend]} backup, and the database to restore "
            f"into ({describe(url)}) is {NAMES[backend]}: a backup restores only into the same "
            "kind of database (check TUTOR_DATABASE_URL)")
    if not _known_revision(manifest.alembic_revision):
        raise BackupError(
            f"{archive.name} was made at schema revision {manifest.alembic_revision}, which this "
            f"version of the tutor does not know (its newest is {head_revision()}): restore it "
            "with the version that made it, or a newer one")
    if backend == "sqlite":
        return await asyncio.to_thread(_sqlite_restore, url, archive, manifest, safety_dir, force)
    return await _pg_restore(url, archive, manifest, safety_dir, force)


def _check_counts(manifest: Manifest, counts: dict[str, int], where: str) -> None:
    wrong = [f"{t}: {counts.get(t, 'missing')} rows, the backup has {n}"
             for t, n in sorted(manifest.tables.items()) if counts.get(t) != n]
    if wrong:
        raise BackupError(f"{where} does not hold what the backup counted: " + "; ".join(wrong))


def _safety_path(safety_dir: Path, backend: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return safety_dir / f"tutor-{backend}-{stamp}-before-restore.tar"


def _sqlite_lock(path: Path) -> sqlite3.Connection:
    """A connection holding the database's exclusive lock until it is closed. SQLite in WAL mode
    refuses it while any other connection is open, even an idle one: the server's pool."""
    conn = _sqlite_connect(path, timeout=0.5)
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        conn.execute("COMMIT")  # the lock stays: exclusive locking mode never gives it back
    except sqlite3.OperationalError as exc:
        conn.close()
        if "locked" in str(exc) or "busy" in str(exc):
            raise BackupError(f"{path} is in use (is `tutor serve` running on it?): stop the "
                              "server first, or pass --force") from None
        raise
    return conn


def _sqlite_restore(url: str, archive: Path, manifest: Manifest, safety_dir: Path | None,
                    force: bool) -> RestoreResult:
    path = _sqlite_path(url)
    private_dir(path.parent)
    staged = path.with_name(f".{path.name}.restore-{secrets.token_hex(4)}")
    safety = None
    migrated = None
    try:
        _extract_payload(archive, manifest, staged)
        conn = _sqlite_connect(staged)
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"{archive} holds a damaged database: {check}")
            _check_counts(manifest, _sqlite_counts(conn), archive.name)
        finally:
            conn.close()
        head = head_revision()
        if manifest.alembic_revision != head:
            migrate(f"sqlite+aiosqlite:///{staged}")  # this thread has no event loop: fine
            migrated = head
        if path.exists():
            target = _sqlite_connect(path, timeout=30) if force else _sqlite_lock(path)
        else:
            private_sqlite(path)
            target = _sqlite_connect(path)
        try:
            if safety_dir is not None and _sqlite_tables(target):
                safety = _safety_path(safety_dir, "sqlite")
                _sqlite_backup(url, safety, source=target)
            source = _sqlite_connect(staged)
            try:
                expected = _sqlite_counts(source)  # after migrating, if it was
                source.backup(target)
            finally:
                source.close()
            copied = _sqlite_counts(target)
            if copied != expected:
                raise BackupError(f"{path} does not hold what was restored into it: "
                                  f"{copied} rows, expected {expected}")
        finally:
            target.close()
    finally:
        staged.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm", "-journal"):
            staged.with_name(staged.name + suffix).unlink(missing_ok=True)
    return RestoreResult(manifest, str(path), safety, migrated)


async def _pg_restore(url: str, archive: Path, manifest: Manifest, safety_dir: Path | None,
                      force: bool) -> RestoreResult:
    from .models import Base

    pg_restore, psql = _tool("pg_restore"), _tool("psql")
    dsn, env = libpq_url(url)
    db = Database(url, pool_size=1, max_overflow=0)
    safety = None
    migrated = None
    try:
        try:
            async with db.engine.connect() as c:
                others = (await c.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"))).scalar_one()
                existing = await _pg_counts(c, (await c.execute(
                    text("SELECT current_schema()"))).scalar_one())
        except OSError as exc:
            raise BackupError(f"cannot reach PostgreSQL at {describe(url)}: {exc}") from None
        if others and not force:
            raise BackupError(f"{others} other connections are open on {describe(url)} (is "
                              "`tutor serve` running on it?): stop the servers first, or pass "
                              "--force")
        if safety_dir is not None and "alembic_version" in existing:
            safety = _safety_path(safety_dir, "postgresql")
            await _pg_backup(url, safety)
        await db.close()
        with tempfile.TemporaryDirectory(prefix="tutor-restore-") as tmp:
            payload = Path(tmp) / manifest.payload
            await asyncio.to_thread(_extract_payload, archive, manifest, payload)
            await asyncio.to_thread(_pg_restore_payload, pg_restore, psql, dsn, env, payload,
                                    Path(tmp), set(Base.metadata.tables) | {"alembic_version"})
        async with db.engine.connect() as c:
            schema = (await c.execute(text("SELECT current_schema()"))).scalar_one()
            _check_counts(manifest, await _pg_counts(c, schema), describe(url))
    finally:
        await db.close()
    head = head_revision()
    if manifest.alembic_revision != head:
        await asyncio.to_thread(migrate, url)
        migrated = head
    return RestoreResult(manifest, describe(url), safety, migrated)


def _pg_restore_payload(pg_restore: str, psql: str, dsn: str, env: dict[str, str],
                        payload: Path, tmp: Path, own_tables: set[str]) -> None:
    """One transaction: drop the tutor's tables (those in the dump and those this code's models
    have, so a table a later migration made cannot be left behind), then the dump's SQL."""
    listing = subprocess.run([pg_restore, "--list", str(payload)], capture_output=True,
                             text=True, env=env)
    if listing.returncode != 0:
        raise BackupError(f"pg_restore cannot read the dump: {listing.stderr.strip()}")
    keep, tables, schemas = [], set(), set()
    for line in listing.stdout.splitlines():
        entry = re.match(r"^\d+; \d+ \d+ (\S+(?: \S+)*?) (\S+) (\S+) \S+$", line)
        if entry and entry.group(1) == "SCHEMA":  # the schema is there already: keep it
            keep.append(";" + line)
            continue
        if entry and entry.group(1) == "TABLE":
            schemas.add(entry.group(2))
            tables.add((entry.group(2), entry.group(3)))
        keep.append(line)
    listfile = tmp / "restore.list"
    listfile.write_text("\n".join(keep) + "\n")
    schema = next(iter(schemas), "public")
    tables |= {(schema, t) for t in own_tables}
    preamble = tmp / "preamble.sql"
    preamble.write_text(f'CREATE SCHEMA IF NOT EXISTS "{schema}";\n' + "".join(
        f'DROP TABLE IF EXISTS "{s}"."{t}" CASCADE;\n' for s, t in sorted(tables)))
    dump = subprocess.Popen([pg_restore, "--clean", "--if-exists", "--no-owner",
                             "--no-privileges", "--no-comments", f"--use-list={listfile}",
                             "--file=-", str(payload)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    load = subprocess.run([psql, "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1",
                           "--single-transaction", f"--file={preamble}", "--file=-",
                           f"--dbname={dsn}"], stdin=dump.stdout, capture_output=True, env=env)
    assert dump.stdout is not None
    dump.stdout.close()
    dump_err = dump.stderr.read() if dump.stderr else b""
    dump.wait()
    if dump.returncode != 0:
        raise BackupError(f"pg_restore failed: {dump_err.decode(errors='replace').strip()}")
    if load.returncode != 0:
        raise BackupError("the restore was rolled back, the database is as it was: psql: "
                          + (load.stderr or load.stdout).decode(errors="replace").strip())
