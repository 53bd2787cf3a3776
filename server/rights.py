"""Routes for data rights and roles: a student's own history, export and account deletion;
teachers' classes and their students' transcripts; admins' user management.

Classes are joined by consent: a class has a join code (shown to its teacher, rotatable) that a
student enters (`POST /api/classes/join`), and which its teacher may email to students (an
invitation through the outbox: it carries the code, joining is still the student's act); a teacher
cannot add anyone. A teacher sees a student's
turns from the moment the student joined, never before; a student may leave a class. Only an
admin may add a user to a class by id (kept for school-run setups; the same "from now on" rule).

Every route starts with `require_user(request, roles)`, so a missing or wrong role is refused
before anything is read.
"""

from __future__ import annotations

import hashlib
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from accounts.identity import user_json
from accounts.routes import require_user
from api.errors import ApiError
from api.request import (json_body, offset_arg, page_args, path_key, text_field, text_problem,
                         unstorable)
from api.services import services
from store import queries
from store.models import COURSE_CHARS, ROLES, Classroom, Interaction, User
from store.models import NOTE
from study.notes import note_json


def interaction_json(row: Interaction) -> dict[str, Any]:
    return {"id": row.id, "session_id": row.session_id, "user_id": row.user_id,
            "kind": row.kind, "course": row.course, "transcript": row.transcript,
            "answer": row.answer, "status": row.status, "audio_seconds": row.audio_seconds,
            "tokens_in": row.tokens_in, "tokens_out": row.tokens_out,
            "latency_ms": {"stt": row.stt_ms, "retrieval": row.retrieval_ms,
                           "llm_first_token": row.llm_first_token_ms,
                           "end_of_turn_to_first_delta": row.end_of_turn_to_first_delta_ms,
                           "server": row.server_ms},
            "created_at": row.created_at.isoformat()}


async def _page(request: Request, user_ids: list[str], class_id: str | None = None
                ) -> JSONResponse:
    limit, before = page_args(request)
    async with services(request).db.session() as s:
        rows = await queries.interactions_page(s, user_ids, limit=limit, before_id=before,
                                               class_id=class_id)
    return JSONResponse({"items": [interaction_json(r) for r in rows],
                         "next_before": rows[-1].id if len(rows) == limit else None})


async def my_interactions(request: Request) -> Response:
    user = await require_user(request)
    return await _page(request, [user.id])


# What the export carries of each progress and safety row (ids and internals left out).
EXPORTED_ANSWER = ("quiz_id", "question", "course", "sections", "choice", "text", "correct",
                   "self_assessed", "created_at")
EXPORTED_MASTERY = ("course", "section", "score", "answers", "correct", "due_at", "updated_at")
EXPORTED_FLAG = ("session_id", "course", "direction", "categories", "text", "created_at")


def _row_json(row: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    values = {name: getattr(row, name) for name in columns}
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in values.items()}


async def my_export(request: Request) -> Response:
    user = await require_user(request)
    async with services(request).db.session() as s:
        rows = await queries.all_interactions(s, user.id)
        answers, standing, flags = await queries.progress_of(s, user.id)
    return JSONResponse({"user": user_json(user),
                         "interactions": [interaction_json(r) for r in rows if r.kind != NOTE],
                         "notes": [note_json(r) for r in rows if r.kind == NOTE],
                         "quiz_answers": [_row_json(a, EXPORTED_ANSWER) for a in answers],
                         "mastery": [_row_json(m, EXPORTED_MASTERY) for m in standing],
                         "flagged_turns": [_row_json(f, EXPORTED_FLAG) for f in flags]},
                        headers={"Content-Disposition": 'attachment; filename="tutor-export.json"'})


async def delete_me(request: Request) -> Response:
    user = await require_user(request)
    if user.auth_provider == "guest":
        raise ApiError(403, "forbidden", "the local guest account cannot be deleted")
    async with services(request).db.session() as s, s.begin():
        await queries.delete_user(s, user.id)
    request.session.clear()
    return Response(status_code=204)


async def create_class(request: Request) -> Response:
    user = await require_user(request, ("teacher", "admin"))
    body = await json_body(request)
    name = text_field(body, "name", 200)  # classes.name is String(200)
    course = text_field(body, "course", COURSE_CHARS, required=False)
    async with services(request).db.session() as s, s.begin():
        room = await queries.create_class(s, user.id, name, course)
    return JSONResponse(class_json(room), status_code=201)


def class_json(room: Classroom) -> dict[str, Any]:
    """A class as its teacher sees it, join code included."""
    return {"id": room.id, "name": room.name, "teacher_id": room.teacher_id,
            "course": room.course, "join_code": room.join_code}


async def my_classes_as_teacher(request: Request) -> Response:
    user = await require_user(request, ("teacher", "admin"))
    async with services(request).db.session() as s:
        rooms = await queries.classes_of_teacher(s, user.id)
    return JSONResponse({"items": [class_json(r) for r in rooms]})


async def _own_class(request: Request) -> tuple[User, Classroom]:
    """The caller (a teacher, or an admin) and the class of the path, if it is theirs (404)."""
    user = await require_user(request, ("teacher", "admin"))
    async with services(request).db.session() as s:
        room = await queries.class_taught_by(s, path_key(request, "class_id", "class of yours"),
                                             user)
    if room is None:
        raise ApiError(404, "not_found", "no such class of yours")
    return user, room


async def rotate_code(request: Request) -> Response:
    """A new join code: the old one stops working (members stay)."""
    _, room = await _own_class(request)
    async with services(request).db.session() as s, s.begin():
        room = await s.merge(room)
        await queries.rotate_join_code(s, room)
    return JSONResponse(class_json(room))


MAX_INVITATIONS = 30  # addresses per request


def _digest(address: str) -> str:
    """An address in an idempotency key (100 characters at most)."""
    return hashlib.sha256(address.encode()).hexdigest()[:40]


def _addresses(body: dict[str, Any]) -> list[str]:
    emails = body.get("emails")
    if not isinstance(emails, list) or not 0 < len(emails) <= MAX_INVITATIONS or not all(
            isinstance(e, str) and 3 <= len(e.strip()) <= 320 and "@" in e.strip()
            and not unstorable(e)
            and not any(c.isspace() or c in "<>,;" for c in e.strip()) for e in emails):
        raise ApiError(400, "invalid_request",
                       f"'emails' must be a list of 1 to {MAX_INVITATIONS} email addresses",
                       field="emails")
    return sorted({e.strip().lower() for e in emails})


async def invite(request: Request) -> Response:
    """Email the class's join code to addresses (through the outbox): joining is still the
    student's act. Once per class, code and address (asking again does not mail again)."""
    teacher, room = await _own_class(request)
    addresses = _addresses(await json_body(request))
    settings = services(request).settings
    join_url = (settings.public_url or str(request.base_url)).rstrip("/") + "/"
    queued = 0
    async with services(request).db.session() as s, s.begin():
        for address in addresses:
            queued += await queries.enqueue_email(
                s, recipient=address, template="class_invitation", transactional=True,
                payload={"name": "", "teacher_name": teacher.name or "", "class_name": room.name,
                         "join_code": room.join_code, "join_url": join_url},
                key=f"invite:{room.id}:{room.join_code}:{_digest(address)}")
    services(request).email_worker.wake()
    return JSONResponse({"queued": queued, "already_invited": len(addresses) - queued},
                        status_code=202)


async def join_class(request: Request) -> Response:
    """A student joins a class with the code its teacher gave; from now on, the teacher sees
    their turns (none from before)."""
    user = await require_user(request)
    code = (await json_body(request)).get("code")
    if not isinstance(code, str) or not code or text_problem(code, 64):
        raise ApiError(400, "invalid_request", "send the class's join code: {\"code\": \"…\"}",
                       field="code")
    async with services(request).db.session() as s, s.begin():
        room = await queries.class_by_code(s, code)
        if room is None:
            raise ApiError(404, "not_found", "no class has this join code (ask your teacher for "
                           "the current one)")
        if room.teacher_id == user.id:
            raise ApiError(409, "conflict", "you teach this class")
        added = await queries.add_student(s, room.id, user.id)
    return JSONResponse({"class_id": room.id, "name": room.name},
                        status_code=201 if added else 200)


async def my_classes(request: Request) -> Response:
    """The classes the caller joined, and since when their teachers see their turns."""
    user = await require_user(request)
    async with services(request).db.session() as s:
        rows = await queries.classes_of_student(s, user.id)
    return JSONResponse({"items": [
        {"class_id": room.id, "name": room.name, "teacher_id": room.teacher_id,
         "joined_at": queries.aware(member.joined_at).isoformat() if member.joined_at else None}
        for room, member in rows]})


async def leave_class(request: Request) -> Response:
    user = await require_user(request)
    async with services(request).db.session() as s, s.begin():
        left = await queries.leave_class(s, path_key(request, "class_id", "class"), user.id)
    if not left:
        raise ApiError(404, "not_found", "you are not in this class")
    return Response(status_code=204)


async def add_student(request: Request) -> Response:
    """Admins only: add a user to a class by id (a teacher's students join with the code)."""
    admin = await require_user(request, ("admin",))
    class_id = path_key(request, "class_id", "class")
    body = await json_body(request)
    user_id = body.get("user_id")
    if not isinstance(user_id, str) or text_problem(user_id, 32):  # users.id is String(32)
        raise ApiError(404, "not_found", "no such user")
    async with services(request).db.session() as s, s.begin():
        if await s.get(Classroom, class_id) is None:
            raise ApiError(404, "not_found", "no such class")
        student = await queries.get_user(s, user_id)
        if student is None:
            raise ApiError(404, "not_found", "no such user")
        if student.role == "admin" and student.id != admin.id:
            raise ApiError(403, "forbidden",
                           "an admin's account cannot be put in a class by someone else")
        await queries.add_student(s, class_id, student.id)
    return Response(status_code=204)


async def class_interactions(request: Request) -> Response:
    """The class's students' turns since each joined, newest first."""
    _, room = await _own_class(request)
    async with services(request).db.session() as s:
        students = await queries.class_student_ids(s, room.id)
    return await _page(request, students, class_id=room.id)


async def list_users(request: Request) -> Response:
    await require_user(request, ("admin",))
    limit, _ = page_args(request)
    offset = offset_arg(request)
    async with services(request).db.session() as s:
        users = await queries.list_users(s, limit=limit, offset=offset)
    return JSONResponse({"items": [user_json(u) for u in users]})


async def update_user(request: Request) -> Response:
    await require_user(request, ("admin",))
    user_id = path_key(request, "user_id", "user")
    body = await json_body(request)
    if "role" in body and body["role"] not in ROLES:
        raise ApiError(400, "invalid_request", f"role must be one of {', '.join(ROLES)}",
                       field="role")
    known = services(request).billing.catalog.tiers  # a tier not in it would silently be free
    if "tier" in body and (not isinstance(body["tier"], str) or body["tier"] not in known):
        raise ApiError(400, "unknown_tier", f"tier must be one of {', '.join(sorted(known))}",
                       field="tier")
    async with services(request).db.session() as s, s.begin():
        user = await queries.get_user(s, user_id)
        if user is None:
            raise ApiError(404, "not_found", "no such user")
        if "role" in body:
            user.role = body["role"]
        if "tier" in body:
            user.tier = body["tier"]
    return JSONResponse(user_json(user))


routes = [
    Route("/api/me/interactions", my_interactions, methods=["GET"]),
    Route("/api/me/export", my_export, methods=["GET"]),
    Route("/api/me", delete_me, methods=["DELETE"]),
    Route("/api/me/classes", my_classes, methods=["GET"]),
    Route("/api/me/classes/{class_id}", leave_class, methods=["DELETE"]),
    Route("/api/classes", create_class, methods=["POST"]),
    Route("/api/classes", my_classes_as_teacher, methods=["GET"]),
    Route("/api/classes/join", join_class, methods=["POST"]),
    Route("/api/classes/{class_id}/code", rotate_code, methods=["POST"]),
    Route("/api/classes/{class_id}/invitations", invite, methods=["POST"]),
    Route("/api/classes/{class_id}/students", add_student, methods=["POST"]),
    Route("/api/classes/{class_id}/interactions", class_interactions, methods=["GET"]),
    Route("/api/admin/users", list_users, methods=["GET"]),
    Route("/api/admin/users/{user_id}", update_user, methods=["PATCH"]),
]
