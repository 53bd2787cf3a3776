"""HTTP routes of course knowledge: documents (teachers and admins); search, the list of courses
and single passages (anyone signed in: the browser client links citations to passages).

Uploads are multipart (`file`, `course`); a document is replaced when its bytes change and left
alone when they do not. After every change the course's vector matrix is reloaded and the
in-memory course mirror (`rag.mirror`) rebuilt, before the response.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from accounts.routes import require_user
from api.errors import ApiError
from api.request import json_body, query_text, text_field, text_value
from api.services import services
from providers import ProviderError
from store.models import COURSE_CHARS, SOURCE_CHARS, Content

from .ingest import IngestError, delete_document, ingest, list_documents

STATUS = {"document_too_large": 413, "unsupported_type": 415}
QUERY_CHARS = 2000


async def upload_document(request: Request) -> Response:
    await require_user(request, ("teacher", "admin"))
    state = services(request)
    settings = state.settings
    try:
        form = await request.form(max_files=1, max_fields=4,
                                  max_part_size=settings.rag_max_document_bytes + 1)
    except Exception as exc:  # malformed multipart, a part over the limit
        raise ApiError(400, "invalid_request",
                       f"expected a multipart form with 'file' and 'course': {exc}") from exc
    upload, course = form.get("file"), form.get("course")
    if not hasattr(upload, "read") or not isinstance(course, str) or not course.strip():
        raise ApiError(400, "invalid_request",
                       "expected a multipart form with 'file' and 'course'")
    course = text_value(course, "course", COURSE_CHARS)
    data = await upload.read(settings.rag_max_document_bytes + 1)  # type: ignore[union-attr]
    filename = upload.filename or "upload"  # type: ignore[union-attr]
    source = text_value(form.get("source") if isinstance(form.get("source"), str) else filename,
                        "source", SOURCE_CHARS)
    try:
        result = await ingest(state.db, state.retriever.embedder, state.parser, course=course,
                              source=source, filename=filename, data=data)
    except IngestError as exc:
        raise ApiError(STATUS.get(exc.code, 400), exc.code, exc.message) from exc
    except ProviderError as exc:
        raise ApiError(502, exc.code, f"embedding failed, nothing changed: {exc.message}") from exc
    if result.status != "unchanged":
        await state.retriever.content_changed(result.course)
    return JSONResponse({"status": result.status, "course": result.course,
                         "source": result.source, "chunks": result.chunks},
                        status_code=201 if result.status == "created" else 200)


async def documents(request: Request) -> Response:
    await require_user(request, ("teacher", "admin"))
    course = query_text(request, "course", COURSE_CHARS)
    return JSONResponse({"items": _jsonable(await list_documents(services(request).db, course))})


async def remove_document(request: Request) -> Response:
    await require_user(request, ("teacher", "admin"))
    course = query_text(request, "course", COURSE_CHARS)
    source = query_text(request, "source", SOURCE_CHARS)
    if not course or not source:
        raise ApiError(400, "invalid_request", "give ?course=…&source=…")
    state = services(request)
    if not await delete_document(state.db, course, source):
        raise ApiError(404, "not_found", "no such document")
    await state.retriever.content_changed(course)
    return Response(status_code=204)


async def search(request: Request) -> Response:
    await require_user(request)
    body = await json_body(request)
    query = text_field(body, "query", QUERY_CHARS)
    k = body.get("k", services(request).settings.rag_top_k)
    if not isinstance(k, int) or not 1 <= k <= 50:
        raise ApiError(400, "invalid_request", "k must be an integer from 1 to 50", field="k")
    course = body.get("course") if isinstance(body.get("course"), str) else None
    course = text_value(course or None, "course", COURSE_CHARS, required=False)
    hits = await services(request).retriever.search(query, course=course, k=k)
    return JSONResponse({"items": [
        {"chunk_id": f"c{h.chunk_id}", "course": h.course, "document": h.source,
         "heading": h.heading_path, "text": h.text, "score": h.score,
         "fts_rank": h.fts_rank, "vector_rank": h.vector_rank} for h in hits]})


async def courses(request: Request) -> Response:
    """`{"items": [{"name", "documents", "chunks"}]}`, by name: what a client offers to pick."""
    await require_user(request)
    query = (select(Content.course, func.count(func.distinct(Content.source)), func.count())
             .group_by(Content.course).order_by(Content.course))
    async with services(request).db.session() as s:
        rows = (await s.execute(query)).all()
    return JSONResponse({"items": [{"name": c, "documents": d, "chunks": n}
                                   for c, d, n in rows]})


async def passage(request: Request) -> Response:
    """One passage by the id citations give it (`c123`; a bare `123` works too)."""
    await require_user(request)
    raw = request.path_params["chunk_id"]
    number = raw[1:] if raw[:1] in ("c", "C") else raw
    if not number.isdigit() or len(number) > 18:
        raise ApiError(404, "not_found", f"no passage {raw!r}: ids look like c123")
    async with services(request).db.session() as s:
        row = await s.get(Content, int(number))
    if row is None:
        raise ApiError(404, "not_found", f"no passage {raw!r}")
    return JSONResponse({"chunk_id": f"c{row.id}", "course": row.course, "document": row.source,
                         "heading": row.heading_path, "text": row.text})


def _jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
            for row in rows]


routes = [
    Route("/api/rag/documents", upload_document, methods=["POST"]),
    Route("/api/rag/documents", documents, methods=["GET"]),
    Route("/api/rag/documents", remove_document, methods=["DELETE"]),
    Route("/api/rag/search", search, methods=["POST"]),
    Route("/api/rag/courses", courses, methods=["GET"]),
    Route("/api/rag/passages/{chunk_id}", passage, methods=["GET"]),
]
