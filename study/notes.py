"""Students' notes: what they are, how they are checked, stored, found and shown.

A note is a row of `interactions` of kind `note`: its title in `transcript`, its text in
`answer`, `turn_id` naming the student's own turn it was saved from (or is about), `updated_at`
set by edits. Being a row of that table, a note is in the full-text index of migration 0002
from the moment it is stored, so `rag.fts.memory_search` (the student's memory, put into the
tutor's prompt) finds it with no separate indexing step, and it goes with the account.

The HTTP routes are in `study.notes_routes`; docs/notes.md describes the API.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from rag.fts import interactions_matching, terms
from api.errors import ApiError
from api.request import MAX_ID, unstorable
from store.models import COURSE_CHARS, NOTE, TURN_KINDS, Interaction, now

MAX_TEXT_CHARS = 20_000
MAX_TITLE_CHARS = 200
MAX_QUERY_CHARS = 1_000
MAX_RESPONSE_ID_CHARS = 64  # interactions.response_id is String(64)


def note_json(row: Interaction) -> dict[str, Any]:
    return {"id": row.id, "title": row.transcript or None, "text": row.answer,
            "course": row.course, "turn_id": row.turn_id, "session_id": row.session_id,
            "created_at": _utc(row.created_at).isoformat(),
            "updated_at": _utc(row.updated_at).isoformat() if row.updated_at else None}


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)  # SQLite gives back naive UTC


# --- checking what a client sends -------------------------------------------------------------

@dataclass
class NoteFields:
    """The checked fields of a request; `given` names the ones present in it."""

    given: frozenset[str]
    text: str | None = None
    title: str | None = None
    course: str | None = None
    turn_id: int | None = None
    from_turn: int | str | None = None


CREATE_FIELDS = frozenset({"text", "title", "course", "turn_id", "from_turn"})
UPDATE_FIELDS = frozenset({"text", "title", "course"})


def check_fields(body: dict[str, Any], allowed: frozenset[str]) -> NoteFields:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field {unknown[0]!r}; a note takes "
                       + ", ".join(sorted(allowed)), field=unknown[0])
    fields = NoteFields(given=frozenset(body))
    if "text" in body:
        fields.text = check_text(body["text"])
    if body.get("title") is not None:
        fields.title = check_title(body["title"])
    if body.get("course") is not None:
        course = body["course"]
        if not isinstance(course, str) or len(course.strip()) > COURSE_CHARS:
            raise ApiError(400, "invalid_field", f"'course' must be a string of at most "
                           f"{COURSE_CHARS} characters", field="course")
        fields.course = _storable(course.strip(), "course") or None
    if body.get("turn_id") is not None:
        fields.turn_id = _id(body["turn_id"], "turn_id")
    if body.get("from_turn") is not None:
        ref = body["from_turn"]
        if isinstance(ref, str) and ref.strip() and len(ref.strip()) <= MAX_RESPONSE_ID_CHARS:
            ref = _storable(ref.strip(), "from_turn")
            fields.from_turn = _id(int(ref), "from_turn") if ref.isascii() and ref.isdigit() \
                else ref
        else:
            fields.from_turn = _id(ref, "from_turn")
    if fields.turn_id is not None and fields.from_turn is not None:
        raise ApiError(400, "conflicting_fields", "give 'from_turn' (save a turn as a note) or "
                       "'turn_id' (link your own text to a turn), not both")
    return fields


def check_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ApiError(400, "invalid_field", "'text' must be a string", field="text")
    value = value.strip()
    if not value:
        raise ApiError(400, "text_required", "a note needs some 'text'", field="text")
    if len(value) > MAX_TEXT_CHARS:
        raise ApiError(400, "text_too_long", f"'text' has {len(value)} characters; a note "
                       f"holds at most {MAX_TEXT_CHARS}", field="text")
    return _storable(value, "text")


def check_title(value: Any) -> str | None:
    if not isinstance(value, str):
        raise ApiError(400, "invalid_field", "'title' must be a string or null", field="title")
    value = " ".join(value.split())
    if len(value) > MAX_TITLE_CHARS:
        raise ApiError(400, "title_too_long", f"'title' has {len(value)} characters; at most "
                       f"{MAX_TITLE_CHARS}", field="title")
    return _storable(value, "title") or None


def check_query(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    if len(value) > MAX_QUERY_CHARS:
        raise ApiError(400, "query_too_long", f"'q' may have at most {MAX_QUERY_CHARS} "
                       "characters", field="q")
    return _storable(value, "q")


def _storable(value: str, name: str) -> str:
    problem = unstorable(value)
    if problem:
        raise ApiError(400, "invalid_field", f"'{name}' {problem}", field=name)
    return value


def _id(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise ApiError(400, "invalid_field", f"'{name}' must be the positive integer id of "
                       "one of your turns" + (" or its response id" if name == "from_turn" else ""),
                       field=name)
    return value


# --- turns as notes ---------------------------------------------------------------------------

def turn_text(turn: Interaction) -> str:
    """A turn written out as note text: the question, then the tutor's answer."""
    lines = []
    if turn.transcript.strip():
        lines.append(f"Question: {turn.transcript.strip()}")
    if turn.answer.strip():
        lines.append(f"Answer: {turn.answer.strip()}")
    return "\n".join(lines)


def short_title(question: str) -> str | None:
    """The default title of a note saved from a turn: its question, cut at a word if long."""
    question = " ".join(question.split())
    if len(question) <= MAX_TITLE_CHARS:
        return question or None
    return question[: MAX_TITLE_CHARS - 1].rsplit(" ", 1)[0] + "…"


# --- queries (the caller commits) -------------------------------------------------------------

async def own_turn(s: AsyncSession, user_id: str, ref: int | str) -> Interaction | None:
    """`user_id`'s voice or text turn by interaction id, or by the response id the voice socket
    announced (`response.created`); None for anyone else's, for a note, or for no such row."""
    query = select(Interaction).where(Interaction.user_id == user_id,
                                      Interaction.kind.in_(TURN_KINDS))
    if isinstance(ref, int):
        query = query.where(Interaction.id == ref)
    else:
        query = query.where(Interaction.response_id == ref).order_by(Interaction.id.desc())
    return (await s.execute(query.limit(1))).scalar_one_or_none()


async def own_note(s: AsyncSession, user_id: str, note_id: int) -> Interaction | None:
    if not 0 < note_id <= MAX_ID:
        return None
    query = select(Interaction).where(Interaction.id == note_id, Interaction.user_id == user_id,
                                      Interaction.kind == NOTE)
    return (await s.execute(query)).scalar_one_or_none()


async def add_note(s: AsyncSession, user_id: str, *, text_: str, title: str | None,
                   course: str | None, turn: Interaction | None) -> Interaction:
    """A new note; linked to `turn` (already checked to be the user's own) when given, in whose
    session it then sits."""
    row = Interaction(session_id=turn.session_id if turn else "note_" + secrets.token_hex(8),
                      user_id=user_id, kind=NOTE, course=course, transcript=title or "",
                      answer=text_, status="completed", cancelled=False,
                      turn_id=turn.id if turn else None, created_at=now())
    s.add(row)
    await s.flush()
    return row


async def notes_page(s: AsyncSession, user_id: str, *, course: str | None = None,
                     query: str | None = None, limit: int = 50,
                     before_id: int | None = None) -> list[Interaction]:
    """`user_id`'s notes, newest first, keyset paged like every list (`before_id`: the last
    id of the previous page). `query`: only notes whose title or text match it, by the same
    full-text search as the student's memory (any of its words, stemmed; stop words ignored)."""
    sql = select(Interaction).where(Interaction.user_id == user_id, Interaction.kind == NOTE)
    if course is not None:
        sql = sql.where(Interaction.course == course)
    if before_id is not None:
        sql = sql.where(Interaction.id < before_id)
    if query is not None:
        if not terms(query):
            return []  # only stop words or punctuation: nothing to look for
        sql = sql.where(interactions_matching(s, query))
    sql = sql.order_by(Interaction.id.desc()).limit(limit)
    return list((await s.execute(sql)).scalars())


def apply_update(row: Interaction, fields: NoteFields) -> None:
    if "text" in fields.given:  # check_fields made sure it is some text
        assert fields.text is not None
        row.answer = fields.text
    if "title" in fields.given:
        row.transcript = fields.title or ""
    if "course" in fields.given:
        row.course = fields.course
    row.updated_at = now()
