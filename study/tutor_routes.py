"""HTTP routes of a course's tutor settings (`/api/courses/{course}/tutor`); docs/tutoring.md
describes them.

Only admins and the course's teachers read or change them (`CourseTutors.may_shape`); anyone
else gets 403 `not_course_teacher`. Every `PUT` stores a new version.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from accounts.routes import require_user
from api.errors import ApiError
from api.request import json_body, page_args, path_key
from api.services import services
from store.models import COURSE_CHARS, User

from .tutor import checked


async def _course(request: Request) -> tuple[User, str]:
    """The caller and the path's course, once the caller is known to be one of its teachers or
    an admin."""
    user = await require_user(request)
    course = path_key(request, "course", "course", COURSE_CHARS)
    if not await services(request).tutors.may_shape(user, course):
        raise ApiError(403, "not_course_teacher", "only an admin or a teacher of a class on "
                       "this course may see or change its tutor settings")
    return user, course


async def get_settings(request: Request) -> Response:
    _, course = await _course(request)
    return JSONResponse((await services(request).tutors.current(course)).to_json())


async def put_settings(request: Request) -> Response:
    user, course = await _course(request)
    body = await json_body(request)
    tutors = services(request).tutors
    settings = checked(body, (await tutors.current(course, fresh=True)).settings)
    return JSONResponse((await tutors.save(course, settings, user.id)).to_json())


async def list_versions(request: Request) -> Response:
    _, course = await _course(request)
    limit, before = page_args(request)
    items = await services(request).tutors.versions(course, limit, before)
    return JSONResponse({"items": items,
                         "next_before": items[-1]["version"] if len(items) == limit else None})


routes = [
    Route("/api/courses/{course}/tutor", get_settings, methods=["GET"]),
    Route("/api/courses/{course}/tutor", put_settings, methods=["PUT"]),
    Route("/api/courses/{course}/tutor/versions", list_versions, methods=["GET"]),
]
