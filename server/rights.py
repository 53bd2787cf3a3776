"""Routes for data rights and roles: a student's own history, export and account deletion;
teachers' classes and their students' transcripts; admins' user management.

Every route starts with `require_user(request, roles)`, so a missing or wrong role is refused
before anything is read.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from accounts.identity import user_json
from accounts.http import (Refusal, json_body, offset_arg, page_args, path_key, text_field,
                           text_problem)
from accounts.routes import require_user
from store import queries
from store.models import ROLES, Classroom, Interaction
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


async def _page(request: Request, user_ids: list[str]) -> JSONResponse:
    limit, before = page_args(request)
    async with request.app.state.db.session() as s:
        rows = await queries.interactions_page(s, user_ids, limit=limit, before_id=before)
    return JSONResponse({"items": [interaction_json(r) for r in rows],
                         "next_before": rows[-1].id if len(rows) == limit else None})


async def my_interactions(request: Request) -> Response:
    user = await require_user(request)
    return await _page(request, [user.id])


async def my_export(request: Request) -> Response:
    user = await require_user(request)
    async with request.app.state.db.session() as s:
        rows = await queries.all_interactions(s, user.id)
    return JSONResponse({"user": user_json(user),
                         "interactions": [interaction_json(r) for r in rows if r.kind != NOTE],
                         "notes": [note_json(r) for r in rows if r.kind == NOTE]},
                        headers={"Content-Disposition": 'attachment; filename="tutor-export.json"'})


async def delete_me(request: Request) -> Response:
    user = await require_user(request)
    if user.auth_provider == "guest":
        raise HTTPException(403, "the local guest account cannot be deleted")
    async with request.app.state.db.session() as s, s.begin():
        await queries.delete_user(s, user.id)
    request.session.clear()
    return Response(status_code=204)


async def create_class(request: Request) -> Response:
    user = await require_user(request, ("teacher", "admin"))
    name = text_field(await json_body(request), "name", 200)  # classes.name is String(200)
    async with request.app.state.db.session() as s, s.begin():
        room = await queries.create_class(s, user.id, name)
    return JSONResponse({"id": room.id, "name": room.name, "teacher_id": room.teacher_id},
                        status_code=201)


async def _own_class(request: Request) -> str:
    user = await require_user(request, ("teacher", "admin"))
    class_id = path_key(request, "class_id", "class of yours")
    async with request.app.state.db.session() as s:
        room = await s.get(Classroom, class_id)
    if room is None or (user.role != "admin" and room.teacher_id != user.id):
        raise HTTPException(404, "no such class of yours")
    return class_id


async def add_student(request: Request) -> Response:
    class_id = await _own_class(request)
    body = await json_body(request)
    user_id = body.get("user_id")
    if not isinstance(user_id, str) or text_problem(user_id, 32):  # users.id is String(32)
        raise HTTPException(404, "no such user")
    async with request.app.state.db.session() as s, s.begin():
        student = await queries.get_user(s, user_id)
        if student is None:
            raise HTTPException(404, "no such user")
        await queries.add_student(s, class_id, student.id)
    return Response(status_code=204)


async def class_interactions(request: Request) -> Response:
    class_id = await _own_class(request)
    async with request.app.state.db.session() as s:
        students = await queries.class_student_ids(s, class_id)
    return await _page(request, students)


async def list_users(request: Request) -> Response:
    await require_user(request, ("admin",))
    limit, _ = page_args(request)
    offset = offset_arg(request)
    async with request.app.state.db.session() as s:
        users = await queries.list_users(s, limit=limit, offset=offset)
    return JSONResponse({"items": [user_json(u) for u in users]})


async def update_user(request: Request) -> Response:
    await require_user(request, ("admin",))
    user_id = path_key(request, "user_id", "user")
    body = await json_body(request)
    if "role" in body and body["role"] not in ROLES:
        raise HTTPException(400, f"role must be one of {', '.join(ROLES)}")
    known = request.app.state.billing.catalog.tiers  # a tier not in it would silently be free
    if "tier" in body and (not isinstance(body["tier"], str) or body["tier"] not in known):
        raise Refusal(400, "unknown_tier", f"tier must be one of {', '.join(sorted(known))}")
    async with request.app.state.db.session() as s, s.begin():
        user = await queries.get_user(s, user_id)
        if user is None:
            raise HTTPException(404, "no such user")
        if "role" in body:
            user.role = body["role"]
        if "tier" in body:
            user.tier = body["tier"]
    return JSONResponse(user_json(user))


routes = [
    Route("/api/me/interactions", my_interactions, methods=["GET"]),
    Route("/api/me/export", my_export, methods=["GET"]),
    Route("/api/me", delete_me, methods=["DELETE"]),
    Route("/api/classes", create_class, methods=["POST"]),
    Route("/api/classes/{class_id}/students", add_student, methods=["POST"]),
    Route("/api/classes/{class_id}/interactions", class_interactions, methods=["GET"]),
    Route("/api/admin/users", list_users, methods=["GET"]),
    Route("/api/admin/users/{user_id}", update_user, methods=["PATCH"]),
]
