"""Background writers: rows are handed over without awaiting, and written in batches.

`InteractionWriter` takes finished turns; the same class, given another model, writes the usage
ledger (`InteractionWriter(db, model=UsageEntry)`).

`submit()` only appends to an in-memory queue, so the voice loop never waits on the database.
A single task writes batches; when the database is unreachable it keeps the batch and retries with
exponential backoff, so nothing accepted is lost while the process lives. A row the database
refuses for good (its user was deleted meanwhile, a value the column cannot hold: any integrity or
data error, SQLSTATE classes 23 and 22) is logged and dropped, so one bad row cannot stall every
later one. NUL characters, which PostgreSQL refuses in text and SQLite stores, are replaced by
U+FFFD when a row is submitted, so a turn is stored the same on both.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from sqlalchemy import insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from .db import Database
from .models import Base, Interaction

log = logging.getLogger("tutor.store.writer")


class InteractionWriter:
    def __init__(self, db: Database, *, model: type[Base] = Interaction, batch_size: int = 200,
                 retry_initial_s: float = 0.1, retry_max_s: float = 5.0) -> None:
        self.db = db
        self.model = model
        self.batch_size = batch_size
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._queue: deque[dict[str, Any]] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.failures = 0  # failed write attempts (each retried)
        self.dropped = 0  # rows refused for good

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, row: dict[str, Any]) -> None:
        self._queue.append({k: v.replace("\x00", "\ufffd") if isinstance(v, str) and "\x00" in v
                            else v for k, v in row.items()})
        self._idle.clear()
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(),
                                         name=f"writer-{self.model.__tablename__}")

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is written; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self, timeout: float = 10.0) -> None:
        if not await self.flush(timeout):
            log.error("stopping with %d %s rows not written (database unreachable)",
                      self.pending, self.model.__tablename__)
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
            except Exception as exc:  # unreachable, restarting, locked: keep the rows, retry
                self.failures += 1
                log.warning("writing %d rows failed (%s); retrying in %.1f s",
                            len(batch), exc.__class__.__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            delay = self.retry_initial_s

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        async with self.db.session() as session, session.begin():
            await session.execute(insert(self.model), rows)
        self.written += len(rows)

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
                log.error("%s row refused by the database, dropped: %s (%s)",
                          self.model.__tablename__,
                          {k: row.get(k) for k in ("session_id", "user_id", "response_id")}, exc)
            self._queue.popleft()


def refused_for_good(exc: DBAPIError) -> bool:
    """The database refused the row itself (writing it again would fail again), as opposed to
    being unreachable, restarting or locked: an integrity or data error, however the driver
    classes it (asyncpg's NUL refusal arrives as a bare DBAPIError with SQLSTATE 22021)."""
    if isinstance(exc, (IntegrityError, DataError)):
        return True
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    return sqlstate[:2] in ("22", "23")
