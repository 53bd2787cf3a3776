"""The write-ahead spool: accepted rows on local disk until the database has committed them.

A row handed to the background writer (`store.writer`) is also put here, in a SQLite file in
WAL mode (`TUTOR_SPOOL_FILE`, default `<data dir>/spool.db`, mode 0600) with full fsync. One
thread owns the file: `put`, `done` and `dead` only queue an operation and return (the event loop
never waits on the disk), and the thread applies everything queued in one transaction per pass
(group commit: while one commit is being synced, the next batch gathers), so a row is durable a
few milliseconds after it was accepted, whatever the database is doing.

Tables (both keyed by the row's `write_id`, its unique id in the database too):
- `pending`: rows accepted and not yet committed by the database. The writer removes a row
  (`done`) only after the database committed it; at startup every pending row is read back
  (`recovered`) and written again, which the database's unique `write_id` makes idempotent.
- `dead_letters`: rows the database refused for good (`dead`), with the reason and the time, so
  one bad row never blocks the others and nothing is silently dropped. `tutor dead-letters`
  lists them and retries them (docs/operations.md, "Dead letters").

Row values are JSON; datetimes are kept as `{"$dt": ISO 8601}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import sqlite3
import threading
import time
from contextlib import closing
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from .files import private_sqlite

log = logging.getLogger("tutor.store.spool")

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    write_id TEXT PRIMARY KEY, tbl TEXT NOT NULL, row TEXT NOT NULL, accepted_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    write_id TEXT PRIMARY KEY, tbl TEXT NOT NULL, row TEXT NOT NULL, reason TEXT NOT NULL,
    failed_at REAL NOT NULL);
"""

Op = Callable[[sqlite3.Connection], Any]


def encode(row: dict[str, Any]) -> str:
    return json.dumps(row, default=_encode_value, separators=(",", ":"))


def decode(text: str) -> dict[str, Any]:
    return json.loads(text, object_hook=_decode_value)


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    raise TypeError(f"cannot spool a {type(value).__name__}")


def _decode_value(obj: dict[str, Any]) -> Any:
    return datetime.fromisoformat(obj["$dt"]) if obj.keys() == {"$dt"} else obj


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """The spool file, created 0600 (its folder 0700) with its tables; WAL, fsync on commit
    (`synchronous="NORMAL"`: no fsync per commit, still durable across a crash of the process
    but not of the machine; bench/spool.py compares them)."""
    private_sqlite(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")  # FULL: a commit survives power loss too
    conn.execute("PRAGMA busy_timeout=5000")  # `tutor dead-letters` may hold it a moment
    conn.executescript(SCHEMA)
    return conn


class Spool:
    def __init__(self, path: Path, *, on_commit: Callable[[int], None] | None = None,
                 synchronous: str = "FULL") -> None:
        self.path = path
        self.on_commit = on_commit  # told how many operations each commit made durable (bench)
        self._conn = connect(path, synchronous)
        self._recovered: dict[str, list[dict[str, Any]]] = {}
        for table, text in self._conn.execute("SELECT tbl, row FROM pending ORDER BY accepted_at"):
            self._recovered.setdefault(table, []).append(decode(text))
        self._ops: queue.SimpleQueue[tuple[Op, Future[Any] | None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="spool", daemon=True)
        self._thread.start()
        self.commits = 0
        self.errors = 0

    @classmethod
    async def open(cls, path: Path, **options: Any) -> "Spool":
        spool = await asyncio.to_thread(cls, path, **options)
        if spool._recovered:
            log.warning("replaying %s rows accepted before the last stop",
                        {t: len(rows) for t, rows in spool._recovered.items()})
        return spool

    def recovered(self, table: str) -> list[dict[str, Any]]:
        """The rows of `table` left pending by an earlier process (handed out once)."""
        return self._recovered.pop(table, [])

    # --- non-blocking: queued for the spool's thread -------------------------------------------

    def put(self, table: str, write_id: str, row: dict[str, Any]) -> None:
        accepted = time.time()  # encoded on the spool's thread, off the event loop
        self._ops.put((lambda c: c.execute("INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?)",
                                           (write_id, table, encode(row), accepted)), None))

    def done(self, write_ids: list[str]) -> None:
        """The database committed these rows: they leave the spool."""
        self._ops.put((lambda c: c.executemany("DELETE FROM pending WHERE write_id = ?",
                                               [(k,) for k in write_ids]), None))

    def dead(self, table: str, write_id: str, row: dict[str, Any], reason: str) -> None:
        """The database refused this row for good: kept apart with the reason."""
        failed = time.time()

        def move(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?)",
                      (write_id, table, encode(row), reason, failed))
            c.execute("DELETE FROM pending WHERE write_id = ?", (write_id,))

        self._ops.put((move, None))

    # --- awaited: answered by the spool's thread after its next commit -------------------------

    async def call(self, op: Op) -> Any:
        future: Future[Any] = Future()
        self._ops.put((op, future))
        return await asyncio.wrap_future(future)

    async def sync(self) -> None:
        """Returns once everything queued so far is committed."""
        await self.call(lambda c: None)

    async def counts(self) -> dict[str, int]:
        """Rows pending and dead letters in the file now (what /metrics shows)."""
        return await self.call(lambda c: {
            "pending": c.execute("SELECT count(*) FROM pending").fetchone()[0],
            "dead_letters": c.execute("SELECT count(*) FROM dead_letters").fetchone()[0]})

    async def close(self) -> None:
        self._ops.put(None)
        await asyncio.to_thread(self._thread.join)
        self._conn.close()

    def _run(self) -> None:
        conn = self._conn
        while True:
            batch = [self._ops.get()]
            while True:  # group commit: everything queued meanwhile goes in the same transaction
                try:
                    batch.append(self._ops.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            results: list[tuple[Future[Any], Any, BaseException | None]] = []
            try:
                conn.execute("BEGIN")
                for item in batch:
                    if item is None:
                        continue
                    op, future = item
                    try:
                        value, error = op(conn), None
                    except sqlite3.Error as exc:  # one operation failing: the others go on
                        self.errors += 1
                        log.error("spool operation failed: %s", exc)
                        value, error = None, exc
                    if future is not None:
                        results.append((future, value, error))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:  # disk full, file damaged: said loudly, never fatal
                self.errors += 1
                log.error("spool commit failed (%s): %d operations lost from the spool (the "
                          "writer still holds its rows in memory)", exc, len(batch))
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                results = [(f, None, exc) for item in batch if item is not None
                           for f in [item[1]] if f is not None]
            else:
                self.commits += 1
                if self.on_commit is not None:
                    self.on_commit(len(batch))
            for future, value, error in results:
                if error is None:
                    future.set_result(value)
                else:
                    future.set_exception(error)
            if stop:
                return


def dead_letters(path: Path) -> list[dict[str, Any]]:
    """The dead letters in a spool file, oldest first (for `tutor dead-letters`)."""
    with closing(connect(path)) as conn:
        return [{"write_id": k, "table": t, "reason": r, "failed_at": f, "row": decode(row)}
                for k, t, row, r, f in conn.execute(
                    "SELECT write_id, tbl, row, reason, failed_at FROM dead_letters "
                    "ORDER BY failed_at")]


def forget_dead_letter(path: Path, write_id: str) -> None:
    """The row is in the database now (`tutor dead-letters --retry`)."""
    with closing(connect(path)) as conn:
        conn.execute("DELETE FROM dead_letters WHERE write_id = ?", (write_id,))


def keep_dead_letter(path: Path, write_id: str, reason: str) -> None:
    """Refused again: the new reason and time."""
    with closing(connect(path)) as conn:
        conn.execute("UPDATE dead_letters SET reason = ?, failed_at = ? WHERE write_id = ?",
                     (reason, time.time(), write_id))


# --- several server processes (`tutor serve --workers N`) -----------------------------------
#
# Each worker process has its own spool file, named by its index (not its pid), so a restarted
# server with as many workers finds its files again: worker 0 uses the configured path itself,
# worker i the file `spool.worker<i>.db` next to it. A server started with fewer workers than
# before (or as one process) first moves the rows of the files no worker will open into the
# configured one, where worker 0 replays them (`adopt_orphans`, run before any worker starts).

def worker_spool(path: Path, index: int) -> Path:
    """The spool file of worker `index` (0: the configured path)."""
    return path if index == 0 else path.with_name(f"{path.stem}.worker{index}{path.suffix}")


def base_spool(path: Path) -> Path:
    """The configured spool path, from any worker's spool file."""
    match = re.fullmatch(r"(.*)\.worker\d+", path.stem)
    return path.with_name(match.group(1) + path.suffix) if match else path


def _worker_index(path: Path, candidate: Path) -> int | None:
    tail = candidate.name[len(path.stem) + len(".worker"):-len(path.suffix) or None]
    return int(tail) if tail.isdigit() and int(tail) > 0 else None


def worker_spools(path: Path) -> list[Path]:
    """The configured spool and every worker's file next to it that exists, by index."""
    found = {}
    for candidate in path.parent.glob(f"{path.stem}.worker*{path.suffix}"):
        index = _worker_index(path, candidate)
        if index is not None and candidate.name == worker_spool(path, index).name:
            found[index] = candidate
    return [path] + [found[i] for i in sorted(found)]


def adopt_orphans(path: Path, workers: int) -> int:
    """Moves the pending rows and dead letters of the worker spools that no worker of a server
    of `workers` processes opens (indexes >= workers) into `path`, and deletes those files.
    Call it before the workers start (no process may hold the files). Returns the rows moved."""
    orphans = [p for p in worker_spools(path)[1:] if (_worker_index(path, p) or 0) >= workers]
    if not orphans:
        return 0
    moved = 0
    with closing(connect(path)) as target:
        for orphan in orphans:
            with closing(connect(orphan)) as source:
                pending = source.execute("SELECT write_id, tbl, row, accepted_at FROM pending"
                                         ).fetchall()
                dead = source.execute("SELECT write_id, tbl, row, reason, failed_at "
                                      "FROM dead_letters").fetchall()
            with target:  # one transaction per file: all its rows, or none
                target.execute("BEGIN")
                target.executemany("INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?)", pending)
                target.executemany("INSERT OR IGNORE INTO dead_letters VALUES (?, ?, ?, ?, ?)",
                                   dead)
                target.execute("COMMIT")
            moved += len(pending) + len(dead)
            if pending or dead:
                log.warning("%s: %d pending rows and %d dead letters moved to %s (fewer "
                            "workers than before)", orphan, len(pending), len(dead), path)
            for suffix in ("", "-wal", "-shm"):
                Path(str(orphan) + suffix).unlink(missing_ok=True)
    return moved


def counts_of(paths: list[Path]) -> dict[str, int]:
    """Pending rows and dead letters summed over spool files (blocking: call from a thread);
    what /metrics shows for a server of several workers, whichever worker answers."""
    total = {"pending": 0, "dead_letters": 0}
    for p in paths:
        if not p.exists():
            continue
        with closing(sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5)) as conn:
            total["pending"] += conn.execute("SELECT count(*) FROM pending").fetchone()[0]
            total["dead_letters"] += conn.execute(
                "SELECT count(*) FROM dead_letters").fetchone()[0]
    return total
