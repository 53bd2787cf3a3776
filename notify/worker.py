"""The outbox worker: claims due messages, sends them, records what happened.

A claim is one UPDATE … RETURNING that moves due rows to `sending` with a lease and counts the
attempt. On PostgreSQL the rows are picked with `FOR UPDATE SKIP LOCKED`, so workers in several
processes share the outbox without taking the same row; on SQLite writes are serialised anyway
and one worker is expected. After sending, the outcome is recorded only if the row is still the
claim this worker made (status `sending`, same attempt count): a worker that was presumed dead
cannot overwrite a newer claim.

A row left in `sending` after its lease means a worker stopped between sending and recording. If
the transport dedupes by idempotency key (the MCP email server, the log), it is sent again and
the receiver keeps one. If it does not (plain SMTP), it becomes `unknown` and is not resent:
a duplicate cannot be taken back, and an admin can requeue it (`POST /api/email/notifications/
{id}/retry`). Failures retry with exponential backoff, then end `failed` with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable

from sqlalchemy import and_, or_, select, update

from store.db import Database
from store.models import EmailNotification, User, now

from .message import Email, Transport, TransportError
from .render import TEMPLATES, Renderer
from .unsubscribe import unsubscribe_url

log = logging.getLogger("tutor.notify.worker")


utcnow = now  # the outbox's clock (store.models.now: aware UTC)


@dataclass
class WorkerConfig:
    sender: str = "Tutor <tutor@localhost>"
    base_url: str = "http://127.0.0.1:8000"  # for unsubscribe links
    link_secret: str = "change-me"
    batch: int = 20
    poll_s: float = 1.0
    lease_s: float = 120.0  # longer than any send may take (the transports time out sooner)
    retry_base_s: float = 30.0
    retry_max_s: float = 3600.0
    max_attempts: int = 8


class OutboxWorker:
    def __init__(self, db: Database, transport: Transport, renderer: Renderer,
                 config: WorkerConfig, *,
                 periodic: Callable[[], Awaitable[None]] | None = None,
                 periodic_every_s: float = 3600.0,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.transport = transport
        self.renderer = renderer
        self.config = config
        self.periodic = periodic  # e.g. queue the weekly summaries; errors are logged
        self.periodic_every_s = periodic_every_s
        self.clock = clock
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = self.failed = self.retried = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="email-outbox")

    def wake(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wakeup.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        next_periodic = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self.periodic is not None and loop.time() >= next_periodic:
                    next_periodic = loop.time() + self.periodic_every_s
                    await self.periodic()
                while await self.run_once():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is down, say: try again at the next poll
                log.exception("email outbox pass failed")
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.config.poll_s)
            except asyncio.TimeoutError:
                pass
            self._wakeup.clear()

    # -- one pass --------------------------------------------------------------------------
    async def run_once(self) -> int:
        """Claim one batch of due messages and send them; returns how many were claimed."""
        claimed = await self.claim()
        if claimed:
            await asyncio.gather(*(self._deliver(row) for row in claimed))
        return len(claimed)

    async def claim(self) -> list[dict[str, Any]]:
        now = self.clock()
        lease = now + timedelta(seconds=self.config.lease_s)
        T = EmailNotification
        async with self.db.session() as s, s.begin():
            stale = and_(T.status == "sending", T.lease_until < now)
            if not self.transport.idempotent:
                await s.execute(update(T).where(stale).values(
                    status="unknown", lease_until=None,
                    error="the worker stopped between sending and recording; not resent, "
                          "since this transport cannot dedupe (requeue to send again)"))
                due = and_(T.status == "pending", T.next_attempt_at <= now)
            else:
                due = or_(and_(T.status == "pending", T.next_attempt_at <= now), stale)
            pick = select(T.id).where(due).order_by(T.next_attempt_at, T.id) \
                .limit(self.config.batch)
            if s.get_bind().dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            result = await s.execute(
                update(T).where(T.id.in_(pick.scalar_subquery()))
                .values(status="sending", attempts=T.attempts + 1, lease_until=lease,
                        transport=self.transport.name)
                .returning(T.id, T.user_id, T.recipient, T.template, T.payload,
                           T.transactional, T.attempts, T.idempotency_key, T.language)
                .execution_options(synchronize_session=False))
            return [dict(r._mapping) for r in result]

    async def _deliver(self, row: dict[str, Any]) -> None:
        user = None
        if row["user_id"]:
            async with self.db.session() as s:
                user = await s.get(User, row["user_id"])
        if not row["transactional"] and user is not None and user.email_unsubscribed_at:
            await self._record(row, status="suppressed", error="the user unsubscribed")
            return
        try:
            email = self.compose(row, user)
        except Exception as exc:  # a bad template or payload: no retry can fix it
            log.error("email %s (%s) cannot be rendered: %s", row["id"], row["template"], exc)
            await self._record(row, status="failed", error=f"render: {exc}")
            self.failed += 1
            return
        try:
            message_id = await self.transport.send(email)
        except TransportError as exc:
            await self._failed(row, str(exc), permanent=exc.permanent)
            return
        await self._record(row, status="sent", provider_message_id=message_id[:255],
                           sent_at=self.clock(), subject=email.subject, error=None)
        self.sent += 1

    def compose(self, row: dict[str, Any], user: User | None) -> Email:
        transactional = TEMPLATES[row["template"]]
        language = row["language"] or (user.language if user else None)
        link = None
        if not transactional and row["user_id"]:
            link = unsubscribe_url(self.config.base_url, self.config.link_secret, row["user_id"])
        rendered = self.renderer.render(row["template"], row["payload"], language=language,
                                        unsubscribe_url=link)
        headers = {"X-Tutor-Template": row["template"]}
        if link:
            headers["List-Unsubscribe"] = f"<{link}>"
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"  # RFC 8058
        else:
            headers["Auto-Submitted"] = "auto-generated"
        return Email(to=row["recipient"], sender=self.config.sender, subject=rendered.subject,
                     text=rendered.text, html=rendered.html,
                     idempotency_key=row["idempotency_key"], headers=headers)

    async def _failed(self, row: dict[str, Any], reason: str, *, permanent: bool) -> None:
        attempts = row["attempts"]
        # A refusal the server calls permanent (no such mailbox) still gets a few tries: a relay
        # misconfigured for an hour says the same. Anything else gets every attempt.
        limit = min(3, self.config.max_attempts) if permanent else self.config.max_attempts
        if attempts >= limit:
            log.error("email %s to %s failed for good after %d attempt(s): %s", row["id"],
                      row["recipient"], attempts, reason)
            await self._record(row, status="failed", error=reason[:2000])
            self.failed += 1
            return
        delay = min(self.config.retry_base_s * 2 ** (attempts - 1), self.config.retry_max_s)
        delay *= random.uniform(0.8, 1.2)  # so a burst of failures does not retry in step
        log.warning("email %s to %s: attempt %d failed (%s); retrying in %.0f s", row["id"],
                    row["recipient"], attempts, reason, delay)
        await self._record(row, status="pending", error=reason[:2000],
                           next_attempt_at=self.clock() + timedelta(seconds=delay))
        self.retried += 1

    async def _record(self, row: dict[str, Any], **values: Any) -> None:
        T = EmailNotification
        async with self.db.session() as s, s.begin():
            await s.execute(update(T).where(T.id == row["id"], T.status == "sending",
                                            T.attempts == row["attempts"])
                            .values(lease_until=None, **values))


async def requeue(db: Database, notification_id: int) -> bool:
    """An admin's retry of a failed or unknown message: back to pending, due now."""
    T = EmailNotification
    async with db.session() as s, s.begin():
        result = await s.execute(update(T).where(T.id == notification_id,
                                                 T.status.in_(("failed", "unknown")))
                                 .values(status="pending", next_attempt_at=utcnow(), attempts=0))
        return bool(result.rowcount)


__all__ = ["OutboxWorker", "WorkerConfig", "requeue"]
