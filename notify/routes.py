"""`/api/email`: the outbox for admins, what was sent for users, teachers' messages to their
classes, preferences, and the unsubscribe link.

- `GET /api/email/notifications?status=&limit=&before=`: admins see every message (with errors),
  anyone else the messages sent to them.
- `POST /api/email/notifications/{id}/retry` (admin): a failed or unknown message, again.
- `POST /api/email/send` (teacher, admin) {"subject", "body", "class_id" | "user_ids"}.
- `PUT /api/email/preferences` {"weekly_summary"?, "guardian_email"?, "language"?, "subscribed"?}.
- `GET /api/email/unsubscribe?token=` (a confirmation page) and `POST` (unsubscribes; also the
  RFC 8058 one-click POST that mail clients send from the List-Unsubscribe-Post header).
"""

from __future__ import annotations

import html
import re
import secrets
from typing import Any

from sqlalchemy import select, update
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from accounts.routes import require_user
from api.errors import ApiError
from api.request import json_body, page_args, path_id, query_text, text_field, text_problem
from api.services import services
from store import queries
from store.models import ClassMember, Classroom, EmailNotification, User, now

from .unsubscribe import read_token
from .worker import requeue

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_RECIPIENTS = 500


def _row(n: EmailNotification, admin: bool) -> dict[str, Any]:
    out = {"id": n.id, "recipient": n.recipient, "template": n.template, "subject": n.subject,
           "status": n.status, "transactional": n.transactional,
           "created_at": n.created_at.isoformat(),
           "sent_at": n.sent_at.isoformat() if n.sent_at else None}
    if admin:
        out.update(user_id=n.user_id, attempts=n.attempts, error=n.error,
                   transport=n.transport, provider_message_id=n.provider_message_id,
                   next_attempt_at=n.next_attempt_at.isoformat() if n.next_attempt_at else None,
                   payload=n.payload)
    return out


async def notifications(request: Request) -> Response:
    user = await require_user(request)
    admin = user.role == "admin"
    limit, before_id = page_args(request)
    T = EmailNotification
    query = select(T)
    if not admin:
        query = query.where(T.user_id == user.id, T.status == "sent")
    elif status := query_text(request, "status", 16):  # email_notifications.status String(16)
        query = query.where(T.status == status)
    if before_id is not None:
        query = query.where(T.id < before_id)
    async with services(request).db.session() as s:
        rows = list((await s.execute(query.order_by(T.id.desc()).limit(limit))).scalars())
    items = [_row(n, admin) for n in rows]
    return JSONResponse({"notifications": items,
                         "next_before": items[-1]["id"] if len(items) == limit else None})


async def retry(request: Request) -> Response:
    await require_user(request, ("admin",))
    notification_id = path_id(request, "id", "notification")
    if not await requeue(services(request).db, notification_id):
        raise ApiError(409, "conflict", "only a failed or unknown message can be retried")
    services(request).email_worker.wake()
    return JSONResponse({"id": notification_id, "status": "pending"})


async def send(request: Request) -> Response:
    """A teacher's message to students of their classes (an admin's to anyone)."""
    sender = await require_user(request, ("teacher", "admin"))
    body = await json_body(request)
    subject = text_field(body, "subject", 200)
    text = text_field(body, "body", 20_000)
    class_id, user_ids = body.get("class_id"), body.get("user_ids")
    if (class_id is None) == (user_ids is None):
        raise ApiError(400, "invalid_request", "give either 'class_id' or 'user_ids'")
    db = services(request).db
    class_name = None
    async with db.session() as s, s.begin():
        if class_id is not None:
            room = await s.get(Classroom, class_id) \
                if isinstance(class_id, str) and not text_problem(class_id, 32) else None
            if room is None or (sender.role != "admin" and room.teacher_id != sender.id):
                raise ApiError(404, "not_found", "no such class of yours")
            class_name = room.name
            user_ids = await queries.class_student_ids(s, room.id)
        elif not isinstance(user_ids, list) or not 0 < len(user_ids) <= MAX_RECIPIENTS \
                or not all(isinstance(u, str) and not text_problem(u, 32) for u in user_ids):
            raise ApiError(400, "invalid_request",
                           f"'user_ids' must be a list of 1 to {MAX_RECIPIENTS} ids",
                           field="user_ids")
        elif sender.role != "admin":
            taught = select(ClassMember.user_id).join(
                Classroom, Classroom.id == ClassMember.class_id).where(
                Classroom.teacher_id == sender.id)
            mine = set((await s.execute(taught.where(ClassMember.user_id.in_(user_ids))))
                       .scalars())
            if set(user_ids) - mine:
                raise ApiError(403, "forbidden", "you can only write to students of your classes")
        users = list((await s.execute(select(User).where(User.id.in_(user_ids)))).scalars())
        batch = secrets.token_hex(8)
        queued, skipped = [], {"no_email": 0, "unsubscribed": 0}
        for user in users:
            if not user.email:
                skipped["no_email"] += 1
            elif user.email_unsubscribed_at:
                skipped["unsubscribed"] += 1
            else:
                await queries.enqueue_email(
                    s, recipient=user.email, template="teacher_message", transactional=False,
                    payload={"name": user.name or "", "teacher_name": sender.name or "",
                             "class_name": class_name, "subject_line": subject,
                             "body": text},
                    user_id=user.id, language=user.language, key=f"teacher:{batch}:{user.id}")
                queued.append(user.id)
    services(request).email_worker.wake()
    return JSONResponse({"queued": len(queued), "skipped": skipped}, status_code=202)


async def preferences(request: Request) -> Response:
    user = await require_user(request)
    body = await json_body(request)
    values: dict[str, Any] = {}
    if "weekly_summary" in body:
        if not isinstance(body["weekly_summary"], bool):
            raise ApiError(400, "invalid_request", "'weekly_summary' must be a boolean",
                           field="weekly_summary")
        values["weekly_summary"] = body["weekly_summary"]
    if "guardian_email" in body:
        g = body["guardian_email"]
        if g is not None and (not isinstance(g, str) or not EMAIL.match(g)
                              or text_problem(g, 320)):  # no NUL: [^@\s] lets it through
            raise ApiError(400, "invalid_request",
                           "'guardian_email' must be an email address or null",
                           field="guardian_email")
        values["guardian_email"] = g
    if "language" in body:
        lang = body["language"]
        if lang is not None and (not isinstance(lang, str) or not re.match(r"^[a-zA-Z-]{2,16}$",
                                                                         lang)):
            raise ApiError(400, "invalid_request",
                           "'language' must be a language tag such as 'fr' or null",
                           field="language")
        values["language"] = lang
    if "subscribed" in body:
        if not isinstance(body["subscribed"], bool):
            raise ApiError(400, "invalid_request", "'subscribed' must be a boolean",
                           field="subscribed")
        values["email_unsubscribed_at"] = None if body["subscribed"] else now()
    if not values:
        raise ApiError(400, "invalid_request", "nothing to change: weekly_summary, "
                       "guardian_email, language, subscribed")
    async with services(request).db.session() as s, s.begin():
        await s.execute(update(User).where(User.id == user.id).values(**values))
        row = await s.get(User, user.id)
        assert row is not None
        return JSONResponse({"weekly_summary": row.weekly_summary,
                             "guardian_email": row.guardian_email, "language": row.language,
                             "subscribed": row.email_unsubscribed_at is None})


PAGE = """<!doctype html><html lang="en"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<body style="font-family: system-ui, sans-serif; max-width: 32rem; margin: 3rem auto; padding: 0 1rem">
<h1 style="font-size: 1.4rem">{title}</h1><p>{text}</p>{form}</body></html>"""


async def unsubscribe(request: Request) -> Response:
    secret = services(request).email_link_secret
    token = request.query_params.get("token", "")
    user_id = read_token(secret, token) if token else None
    if user_id is None:
        return HTMLResponse(PAGE.format(title="This link is not valid", form="",
                                        text="It may have been cut short by your mail program."),
                            status_code=400)
    if request.method == "GET":  # a mail scanner following links must not unsubscribe anyone
        form = (f'<form method="post" action="?token={html.escape(token)}">'
                '<button type="submit">Unsubscribe</button></form>')
        return HTMLResponse(PAGE.format(
            title="Unsubscribe from tutor emails?", form=form,
            text="You will still get account and payment emails."))
    async with services(request).db.session() as s, s.begin():
        await s.execute(update(User).where(User.id == user_id,
                                           User.email_unsubscribed_at.is_(None))
                        .values(email_unsubscribed_at=now()))
    return HTMLResponse(PAGE.format(title="You are unsubscribed", form="",
                                    text="No more progress summaries or notices. Account and "
                                         "payment emails still come."))


routes = [
    Route("/api/email/notifications", notifications, methods=["GET"]),
    Route("/api/email/notifications/{id}/retry", retry, methods=["POST"]),
    Route("/api/email/send", send, methods=["POST"]),
    Route("/api/email/preferences", preferences, methods=["PUT"]),
    Route("/api/email/unsubscribe", unsubscribe, methods=["GET", "POST"]),
]


