"""Background writers: rows are handed over without awaiting, and written in batches.

`InteractionWriter` takes finished turns; the same class, given another model, writes the usage
ledger (`InteractionWriter(db, model=UsageEntry)`).

`submit()` only appends to an in-memory queue and, given a `store.spool.Spool`, queues the row
for the write-ahead spool on local disk (durable a few ms later, from the spool's thread), so the
voice loop never waits on the database or the disk. Each row gets its `write_id` (a unique id in
the database, migration 0007) and its `created_at` when accepted. A single task writes batches
with INSERT ... ON CONFLICT (write_id) DO NOTHING (with `gather_s`, as the usage ledger's writer
has, after a quiet spell it first waits that long for more rows: rows that trickle in go as one
INSERT), and tells the spool once they are committed;
when the database is unreachable it keeps the batch and retries with exponential backoff. Rows a
crash left in the spool are written first at the next start: written already or not, each is
stored exactly once. A row the database refuses for good (its user was deleted meanwhile, a value
the column cannot hold: any integrity or data error, SQLSTATE classes 23 and 22) goes to the
spool's dead letters with the reason (only logged without a spool), so one bad row cannot stall
every later one. NUL characters, which PostgreSQL refuses in text and SQLite stores, are replaced
by U+FFFD when a row is submitted, so a turn is stored the same on both.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from .db import Database
from .models import Base, FlaggedTurn, Interaction, UsageEntry, now
from .spool import Spool, dead_letters, forget_dead_letter, keep_dead_letter

log = logging.getLogger("tutor.store.writer")


class InteractionWriter:
    def __init__(self, db: Database, *, model: type[Base] = Interaction, batch_size: int = 200,
                 retry_initial_s: float = 0.1, retry_max_s: float = 5.0,
                 spool: Spool | None = None, gather_s: float = 0.0) -> None:
        self.db = db
        self.model = model
        self.table = model.__tablename__
        self.spool = spool
        self.batch_size = batch_size
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        # after a quiet spell, wait this long for more rows before writing: rows that trickle
        # in (the ledger's voice charges, one a second per session) go as one INSERT
        self.gather_s = gather_s
        self._queue: deque[dict[str, Any]] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.failures = 0  # failed write attempts (each retried)
        self.dropped = 0  # rows refused for good (dead letters, with a spool)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, row: dict[str, Any]) -> None:
        row = {k: v.replace("\x00", "\ufffd") if isinstance(v, str) and "\x00" in v else v
               for k, v in row.items()}
        row.setdefault("write_id", uuid.uuid4().hex)
        row.setdefault("created_at", now())
        self._queue.append(row)
        if self.spool is not None:
            self.spool.put(self.table, row["write_id"], row)
        self._idle.clear()
        self._wakeup.set()

    async def durable(self) -> None:
        """Returns once every row submitted so far is on local disk (the spool's next commit);
        at once without a spool. What the voice loop awaits before `response.done`."""
        if self.spool is not None:
            await self.spool.sync()

    def start(self) -> None:
        """Starts the writing task; rows an earlier process left in the spool go first."""
        if self.spool is not None:
            recovered = self.spool.recovered(self.table)
            self._queue.extendleft(reversed(recovered))
            if recovered:
                self._idle.clear()
        self._task = asyncio.create_task(self._run(), name=f"writer-{self.table}")

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is written; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self, timeout: float = 10.0) -> None:
        if not await self.flush(timeout):
            log.error("stopping with %d %s rows not written (database unreachable): %s",
                      self.pending, self.table,
                      "kept in the spool, written at the next start" if self.spool is not None
                      else "lost")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        delay = self.retry_initial_s
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                if self.gather_s and len(self._queue) < self.batch_size:
                    await asyncio.sleep(self.gather_s)
                continue
            batch = [self._queue[i] for i in range(min(self.batch_size, len(self._queue)))]
            try:
                try:
                    await self._write(batch)
                except DBAPIError as exc:
                    if not refused_for_good(exc):
                        raise
                    await self._write_one_by_one(len(batch))
                else:
                    for _ in batch:
                        self._queue.popleft()
                    self._committed(batch)
            except Exception as exc:  # unreachable, restarting, locked: keep the rows, retry
                self.failures += 1
                log.warning("writing %d rows failed (%s); retrying in %.1f s",
                            len(batch), exc.__class__.__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            delay = self.retry_initial_s

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        await insert_rows(self.db, self.model, rows)
        self.written += len(rows)

    def _committed(self, rows: list[dict[str, Any]]) -> None:
        if self.spool is not None:
            self.spool.done([row["write_id"] for row in rows])

    async def _write_one_by_one(self, count: int) -> None:
        """Isolate the refused row(s) of a batch: each row leaves the queue once written or
        refused for good; any other error propagates, and the rest is retried later."""
        for _ in range(count):
            row = self._queue[0]
            try:
                await self._write([row])
            except DBAPIError as exc:
                if not refused_for_good(exc):
                    raise
                self.dropped += 1
                reason = refusal(exc)
                log.error("%s row refused by the database, %s: %s (%s)", self.table,
                          "kept as a dead letter" if self.spool is not None else "dropped",
                          {k: row.get(k) for k in ("write_id", "session_id", "user_id",
                                                   "response_id")}, reason)
                if self.spool is not None:
                    self.spool.dead(self.table, row["write_id"], row, reason)
            else:
                self._committed([row])
            self._queue.popleft()


async def insert_rows(db: Database, model: type[Base], rows: list[dict[str, Any]]) -> None:
    """Inserts `rows` in one transaction; a row already there (same write_id: a replay) is left
    as it is."""
    dialect = sqlite if db.is_sqlite else postgresql
    statement = dialect.insert(model).on_conflict_do_nothing(index_elements=["write_id"])
    async with db.session() as session, session.begin():
        await session.execute(statement, rows)


async def retry_dead_letters(db: Database, path: Path,
                             write_ids: set[str] | None = None) -> tuple[int, int]:
    """Writes the spool's dead letters (those of `write_ids`, or all) to the database again, for
    `tutor dead-letters --retry` once the cause is fixed: each one written (or found there
    already) leaves the dead letters; one refused again stays, with the new reason. Any other
    error (the database unreachable) propagates. Returns (written, still refused)."""
    models = {m.__tablename__: m for m in (Interaction, UsageEntry, FlaggedTurn)}
    written = refused = 0
    for letter in dead_letters(path):
        if write_ids is not None and letter["write_id"] not in write_ids:
            continue
        try:
            await insert_rows(db, models[letter["table"]], [letter["row"]])
        except DBAPIError as exc:
            if not refused_for_good(exc):
                raise
            keep_dead_letter(path, letter["write_id"], refusal(exc))
            refused += 1
        else:
            forget_dead_letter(path, letter["write_id"])
            written += 1
    return written, refused


def refused_for_good(exc: DBAPIError) -> bool:
    """The database refused the row itself (writing it again would fail again), as opposed to
    being unreachable, restarting or locked: an integrity or data error, however the driver
    classes it (asyncpg's NUL refusal arrives as a bare DBAPIError with SQLSTATE 22021)."""
    if isinstance(exc, (IntegrityError, DataError)):
        return True
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    return sqlstate[:2] in ("22", "23")


def refusal(exc: DBAPIError) -> str:
    """Why the database refused a row, for the dead letters: SQLSTATE and the driver's message."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    message = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
    return (f"{sqlstate}: " if sqlstate else "") + f"{type(exc.orig).__name__}: {message}"[:500]
