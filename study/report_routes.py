"""`GET /api/classes/{id}/report`: the I/O around `study.reports` (the class's students, their
turns, voice time, quiz answers since each joined) for the class's teacher and admins, as JSON,
or as CSV with `Accept: text/csv` or `?format=csv`.

The same rights as the class's transcripts (`server.rights.class_interactions`): a teacher who
does not teach the class gets 404, a student 403; only what each student did after joining the
class counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import false, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from accounts.routes import require_user
from api.errors import ApiError
from api.request import path_key
from api.services import services
from store.models import (TURN_KINDS, ClassMember, Interaction, QuizAnswer,
                          UsageEntry, User, now)
from store.queries import aware, class_taught_by, flagged_counts

from . import mastery
from .reports import StudentActivity, cited_chunks, report_csv, report_json

async def _members(s: AsyncSession, class_id: str) -> list[tuple[User, datetime | None]]:
    query = (select(User, ClassMember.joined_at).join(ClassMember, ClassMember.user_id == User.id)
             .where(ClassMember.class_id == class_id).order_by(User.name, User.email, User.id))
    return [(u, aware(j) if j else None) for u, j in (await s.execute(query)).all()]


def _since(column: Any, joined_at: datetime | None) -> Any:
    """Rows from the student's joining on (none without a joining time, as for transcripts)."""
    return column >= joined_at if joined_at is not None else false()


async def _activity(s: AsyncSession, user: User, joined_at: datetime | None,
                    course: str | None) -> StudentActivity:
    """What one student did since joining: turns, voice time, quiz answers (of `course`)."""
    a = StudentActivity(user.id, user.name, user.email, joined_at)
    turns = (Interaction.user_id == user.id, Interaction.kind.in_(TURN_KINDS),
             Interaction.transcript != "", _since(Interaction.created_at, joined_at))
    counts = dict((await s.execute(select(Interaction.kind, func.count()).where(*turns)
                                   .group_by(Interaction.kind))).all())
    a.voice_questions, a.text_questions = counts.get("voice", 0), counts.get("text", 0)
    cited = [cited_chunks(answer) for answer in (await s.execute(
        select(Interaction.answer).where(*turns, Interaction.answer.contains("[c")))).scalars()]
    where = await mastery.sections_of_chunks(s, (c for ids in cited for c in ids))
    for ids in cited:
        a.sections.update({where[c][1] for c in ids  # a section once per question
                           if c in where and course in (None, where[c][0])})
    a.voice_ms = int((await s.execute(select(func.coalesce(func.sum(UsageEntry.amount), 0)).where(
        UsageEntry.user_id == user.id, UsageEntry.kind == "voice_ms",
        _since(UsageEntry.created_at, joined_at)))).scalar_one())
    query = select(QuizAnswer.sections, QuizAnswer.correct, QuizAnswer.created_at).where(
        QuizAnswer.user_id == user.id, _since(QuizAnswer.created_at, joined_at))
    if course is not None:
        query = query.where(QuizAnswer.course == course)
    answers = (await s.execute(query.order_by(QuizAnswer.created_at, QuizAnswer.id))).all()
    a.mastery = mastery.replay((sections, correct, aware(at)) for sections, correct, at in answers)
    a.flagged = ((await flagged_counts(s, [user.id], since=joined_at)).get(user.id, 0)
                 if joined_at is not None else 0)  # moderation's flags, since joining too
    return a


def wants_csv(request: Request) -> bool:
    chosen = request.query_params.get("format")
    if chosen is not None:
        if chosen not in ("json", "csv"):
            raise ApiError(400, "invalid_request", "format must be json or csv", field="format")
        return chosen == "csv"
    return "text/csv" in request.headers.get("accept", "")


async def class_report(request: Request) -> Response:
    user = await require_user(request, ("teacher", "admin"))
    class_id = path_key(request, "class_id", "class of yours")
    as_csv = wants_csv(request)
    async with services(request).db.session() as s:
        room = await class_taught_by(s, class_id, user)
        if room is None:
            raise ApiError(404, "not_found", "no such class of yours")
        students: Sequence[StudentActivity] = [
            await _activity(s, member, joined_at, room.course)
            for member, joined_at in await _members(s, room.id)]
    report = report_json({"id": room.id, "name": room.name, "course": room.course},
                         students, now())
    if as_csv:
        return Response(report_csv(report), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="class-{room.id}-report.csv"'})
    return JSONResponse(report)


routes = [Route("/api/classes/{class_id}/report", class_report, methods=["GET"])]
