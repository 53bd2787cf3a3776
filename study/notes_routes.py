"""HTTP routes of the students' notes (`/api/notes`); docs/notes.md describes them.

Every route starts with `require_user`: a note is only ever read, changed or deleted by the
student who wrote it, and anyone else gets the same 404 as for a note that does not exist.
Refusals are `api.errors.ApiError`s with a code per reason (docs/errors.md).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from accounts.routes import require_user
from api.errors import ApiError
from api.request import json_body, page_args, query_text
from api.services import services
from store.models import COURSE_CHARS

from . import notes
from .notes import note_json

# 20 000 characters of text, each up to 6 bytes as a JSON escape (\uXXXX), plus the rest
MAX_BODY_BYTES = 160 * 1024
TURN_WAIT_S = 2.0  # a turn that just ended may still be on its way to the database


def _not_found() -> ApiError:
    return ApiError(404, "note_not_found", "no such note of yours")


async def create_note(request: Request) -> Response:
    user = await require_user(request)
    body = await json_body(request, max_bytes=MAX_BODY_BYTES)
    fields = notes.check_fields(body, notes.CREATE_FIELDS)
    ref = fields.from_turn if fields.from_turn is not None else fields.turn_id
    if ref is None and fields.text is None:
        raise ApiError(400, "text_required", "a note needs some 'text' (or 'from_turn': the "
                       "id of one of your turns to save)")
    db = services(request).db
    turn = None
    if ref is not None:
        async with db.session() as s:
            turn = await notes.own_turn(s, user.id, ref)
        if turn is None:  # it may still be in this process's write queue
            await services(request).writer.flush(TURN_WAIT_S)
            async with db.session() as s:
                turn = await notes.own_turn(s, user.id, ref)
        if turn is None:
            raise ApiError(404, "turn_not_found", f"no turn {ref!r} of yours (a voice or typed "
                           "turn, by its id or response id)")
    text, title = fields.text, fields.title
    if fields.from_turn is not None:
        assert turn is not None
        saved = notes.turn_text(turn)
        if not saved:
            raise ApiError(400, "empty_turn", "that turn has neither a question nor an answer")
        text = notes.check_text(f"{text}\n\n{saved}" if text else saved)
        title = title or notes.short_title(turn.transcript)
    assert text is not None
    async with db.session() as s, s.begin():
        row = await notes.add_note(s, user.id, text_=text, title=title,
                                   course=fields.course or (turn.course if turn else None),
                                   turn=turn)
    return JSONResponse(note_json(row), status_code=201,
                        headers={"Location": f"/api/notes/{row.id}"})


async def list_notes(request: Request) -> Response:
    user = await require_user(request)
    limit, before = page_args(request)
    query = notes.check_query(request.query_params.get("q"))
    course = query_text(request, "course", COURSE_CHARS)
    async with services(request).db.session() as s:
        rows = await notes.notes_page(s, user.id, course=course, query=query, limit=limit,
                                      before_id=before)
    return JSONResponse({"items": [note_json(r) for r in rows],
                         "next_before": rows[-1].id if len(rows) == limit else None})


async def get_note(request: Request) -> Response:
    user = await require_user(request)
    async with services(request).db.session() as s:
        row = await notes.own_note(s, user.id, request.path_params["note_id"])
    if row is None:
        raise _not_found()
    return JSONResponse(note_json(row))


async def update_note(request: Request) -> Response:
    user = await require_user(request)
    body = await json_body(request, max_bytes=MAX_BODY_BYTES)
    fields = notes.check_fields(body, notes.UPDATE_FIELDS)
    if not fields.given:
        raise ApiError(400, "nothing_to_update", "give 'text', 'title' or 'course' to change")
    async with services(request).db.session() as s, s.begin():
        row = await notes.own_note(s, user.id, request.path_params["note_id"])
        if row is None:
            raise _not_found()
        notes.apply_update(row, fields)
    return JSONResponse(note_json(row))


async def delete_note(request: Request) -> Response:
    user = await require_user(request)
    async with services(request).db.session() as s, s.begin():
        row = await notes.own_note(s, user.id, request.path_params["note_id"])
        if row is None:
            raise _not_found()
        await s.delete(row)
    return Response(status_code=204)


routes = [
    Route("/api/notes", create_note, methods=["POST"]),
    Route("/api/notes", list_notes, methods=["GET"]),
    Route("/api/notes/{note_id:int}", get_note, methods=["GET"]),
    Route("/api/notes/{note_id:int}", update_note, methods=["PATCH"]),
    Route("/api/notes/{note_id:int}", delete_note, methods=["DELETE"]),
]
