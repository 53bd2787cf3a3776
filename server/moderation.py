"""Moderation's shell: checks text with the provider, stores what was flagged, alerts teachers.

`Moderation.check` asks the `providers.Moderator` about one text (the student's turn, or one
sentence of the tutor's answer) and hands the verdict, or the failure, to the pure
`realtime.moderation.rule`. A flagged text is handed to the background writer as a
`flagged_turns` row (never awaited: the voice loop does not wait on the database) and, when one
of its categories is urgent, an alert for each of the student's teachers is put in the email
outbox from a task of its own. `GET /api/classes/{class_id}/flags` shows a class's teacher (or
an admin) what was flagged of its students since each joined. docs/tutoring.md, "Moderation".
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from accounts.routes import require_user
from api.errors import ApiError
from api.request import page_args, path_key
from api.services import services
from providers import Moderator, ProviderError
from realtime.moderation import Direction, Policy, Ruling, rule
from store import queries
from store.db import Database
from store.models import FLAGGED_TEXT_CHARS, FlaggedTurn, User
from store.writer import InteractionWriter

from .metrics import Metrics

log = logging.getLogger("tutor.moderation")


@dataclass(frozen=True)
class Turn:
    """Whose turn a checked text belongs to, for the stored flag."""

    session_id: str
    user_id: str | None
    course: str | None
    response_id: str | None = None


class Moderation:
    def __init__(self, moderator: Moderator, policy: Policy, *, flags: InteractionWriter,
                 db: Database, metrics: Metrics | None = None) -> None:
        self.moderator = moderator
        self.policy = policy
        self.flags = flags  # writes flagged_turns rows in the background
        self.db = db
        self.metrics = metrics
        self._alerts: set[asyncio.Task[None]] = set()

    async def check(self, text: str, direction: Direction, turn: Turn) -> Ruling:
        """The ruling on `text`; a flag is stored (and teachers alerted) on the way."""
        try:
            verdict = await self.moderator.check(text)
        except Exception as exc:  # ProviderError, or a bug: the policy decides either way
            code = exc.code if isinstance(exc, ProviderError) else "internal_error"
            if self.metrics is not None:
                self.metrics.provider_failed("moderation", code)
            log.warning("moderation check failed (%s): failing %s", code,
                        "closed" if self.policy.fail_closed else "open",
                        exc_info=not isinstance(exc, ProviderError))
            return rule(self.policy, direction, failed=True)
        ruling = rule(self.policy, direction, flagged=verdict.flagged,
                      categories=verdict.categories)
        if ruling.categories:
            self._flagged(text, direction, turn, ruling)
        return ruling

    def _flagged(self, text: str, direction: Direction, turn: Turn, ruling: Ruling) -> None:
        row: dict[str, Any] = {
            "session_id": turn.session_id, "user_id": turn.user_id, "course": turn.course,
            "response_id": turn.response_id, "direction": direction,
            "categories": list(ruling.categories), "text": text[:FLAGGED_TEXT_CHARS],
            "urgent": ruling.urgent, "write_id": uuid.uuid4().hex}  # also keys the alerts
        self.flags.submit(row)
        log.info("turn flagged: %s %s", direction, ",".join(ruling.categories))
        if ruling.urgent and turn.user_id is not None:
            task = asyncio.create_task(self._alert(turn, row))
            self._alerts.add(task)
            task.add_done_callback(self._alerts.discard)

    async def _alert(self, turn: Turn, row: dict[str, Any]) -> None:
        try:
            await alert_teachers(self.db, turn.user_id or "", row)
        except Exception:  # the flag is stored; the alert is logged, never the student's words
            log.exception("could not queue the urgent moderation alert %s", row["write_id"])

    async def settle(self) -> None:
        """Wait for the alerts being queued (tests; the app's shutdown)."""
        if self._alerts:
            await asyncio.gather(*self._alerts, return_exceptions=True)


async def alert_teachers(db: Database, student_id: str, row: dict[str, Any]) -> int:
    """Queue a `moderation_alert` to each teacher of the student's classes, once per flag
    (keyed by its write id); returns how many were queued."""
    queued = 0
    async with db.session() as s, s.begin():
        student = await s.get(User, student_id)
        if student is None:
            return 0
        for teacher in await queries.teachers_of_student(s, student_id):
            if not teacher.email:
                continue
            queued += await queries.enqueue_email(
                s, recipient=teacher.email, template="moderation_alert", transactional=True,
                user_id=teacher.id, language=teacher.language,
                key=f"flag:{row['write_id']}:{teacher.id}",
                payload={"name": teacher.name or "", "course": row.get("course"),
                         "student_name": student.name or student.email or "a student",
                         "categories": row["categories"]})
    return queued


def flag_json(flag: FlaggedTurn) -> dict[str, Any]:
    return {"id": flag.id, "user_id": flag.user_id, "session_id": flag.session_id,
            "course": flag.course, "response_id": flag.response_id,
            "direction": flag.direction, "categories": flag.categories, "text": flag.text,
            "urgent": flag.urgent, "created_at": flag.created_at.isoformat()}


async def class_flags(request: Request) -> Response:
    """The flagged turns of the class's students since each joined, newest first; `?before=`
    the last id seen for the next page."""
    user = await require_user(request, ("teacher", "admin"))
    limit, before = page_args(request)
    async with services(request).db.session() as s:
        room = await queries.class_taught_by(s, path_key(request, "class_id", "class of yours"),
                                             user)
        if room is None:
            raise ApiError(404, "not_found", "no such class of yours")
        flags = await queries.flagged_turns_page(s, room.id, limit=limit, before_id=before)
    return JSONResponse({"items": [flag_json(f) for f in flags],
                         "next_before": flags[-1].id if len(flags) == limit else None})


routes = [Route("/api/classes/{class_id}/flags", class_flags, methods=["GET"])]
