"""Each course's tutor settings: how they are checked, stored as versions, read back (with a
short in-process cache, off the frame path) and who may change them.

The settings themselves (`dialogue.prompts.TutorSettings`) and the prompt built from them are
pure and live in `dialogue.prompts`; this module is their storage and their rules. A course's
current settings are its newest row of `course_tutor_versions` (one row per change: who, when,
the whole settings); a course without rows has the defaults. Admins and the course's teachers (a
teacher of a class whose `course` is that course) may change them and may replace the prompt
from their own client; once a course has saved settings, everyone else's client stays inside
its frame (`locked`).

The HTTP routes are in `study.tutor_routes`; docs/tutoring.md describes the settings.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy import exists, func, select
from sqlalchemy.exc import IntegrityError

from api.errors import ApiError
from api.request import text_problem
from dialogue.prompts import (ANSWER_LENGTHS, MODES, READING_LEVELS, SCOPES, TutorSettings,
                              tutor_prompt)
from realtime.config import VOICES, SessionConfig
from store.db import Database
from store.models import Classroom, CourseTutorVersion, User

from .mastery import weakest

log = logging.getLogger("tutor.courses")

LEVEL_CHARS = 60  # grade_level
LANGUAGE_CHARS = 40
EXTRA_CHARS = 2000  # the teacher's extra instructions
WEAK_SECTIONS_IN_PROMPT = 3  # the student's weakest sections the prompt names
CACHE_TTL_S = 10.0  # a change reaches other processes' new sessions within this

# field → the values it takes (a tuple), or the most characters of its free text (an int)
CHOICES: dict[str, tuple[str, ...] | int] = {
    "mode": MODES, "grade_level": LEVEL_CHARS, "reading_level": READING_LEVELS,
    "language": LANGUAGE_CHARS, "answer_length": ANSWER_LENGTHS, "voice": VOICES,
    "scope": SCOPES, "extra_instructions": EXTRA_CHARS,
}
OPTIONAL = ("grade_level", "reading_level", "language", "voice")  # null: not set


@dataclass(frozen=True)
class CourseTutor:
    """A course's current settings and the version they are (0: the defaults, never saved)."""

    course: str
    settings: TutorSettings
    version: int = 0
    updated_by: str | None = None
    updated_at: datetime | None = None

    def prompt(self, server_instructions: str | None = None,
               weak_sections: list[str] = ()) -> str:
        """The course's frame. The server's own prompt (`TUTOR_INSTRUCTIONS`) stands in for
        the built-in one only on a course whose teachers never saved settings."""
        return tutor_prompt(self.settings, weak_sections=weak_sections,
                            base=server_instructions if self.version == 0 else None)

    def session_config(self, config: SessionConfig, server_instructions: str | None, *,
                       locked: bool, weak_sections: list[str] = ()) -> SessionConfig:
        """A new voice session's `config` on this course: the course's prompt (with the
        student's weakest sections) as its instructions, and as its frame when `locked`
        (`CourseTutors.locked`)."""
        prompt = self.prompt(server_instructions, weak_sections)
        return replace(config, instructions=prompt, frame=prompt if locked else None)

    def to_json(self) -> dict[str, Any]:
        return {"course": self.course, **asdict(self.settings), "version": self.version,
                "updated_by": self.updated_by,
                "updated_at": self.updated_at.isoformat() if self.updated_at else None}


def checked(body: dict[str, Any], current: TutorSettings) -> TutorSettings:
    """`current` with the fields `body` sets (the others kept), each checked: a 400
    `invalid_request` naming the field otherwise."""
    changes: dict[str, Any] = {}
    for name, value in body.items():
        allowed = CHOICES.get(name)
        if allowed is None:
            raise ApiError(400, "invalid_request", f"unknown setting '{name}' (settings: "
                           f"{', '.join(CHOICES)})", field=name)
        if value is None and name in OPTIONAL:
            changes[name] = None
        elif isinstance(allowed, tuple):
            if not isinstance(value, str) or value not in allowed:
                raise ApiError(400, "invalid_request", f"'{name}' must be one of "
                               f"{', '.join(allowed)}"
                               + (" (or null)" if name in OPTIONAL else ""), field=name)
            changes[name] = value
        else:
            if not isinstance(value, str):
                raise ApiError(400, "invalid_request", f"'{name}' must be a string", field=name)
            value = value.strip()
            problem = text_problem(value, allowed)
            if problem:
                raise ApiError(400, "invalid_request", f"'{name}' {problem}", field=name)
            changes[name] = value if value or name == "extra_instructions" else None
    return replace(current, **changes)


def from_stored(stored: dict[str, Any]) -> TutorSettings:
    """A stored version's settings (fields a later server dropped are ignored)."""
    names = {f.name for f in fields(TutorSettings)}
    return TutorSettings(**{k: v for k, v in stored.items() if k in names})


def changed_fields(before: TutorSettings | None, after: TutorSettings) -> list[str]:
    """The settings a version changed from the one before it (the defaults before the first)."""
    before = before or TutorSettings()
    return [f.name for f in fields(TutorSettings)
            if getattr(before, f.name) != getattr(after, f.name)]


class CourseTutors:
    """The courses' tutor settings over the database, cached for `ttl_s` per course in this
    process (a session start or a typed question reads them once; a change made here is seen at
    once, one made by another process within `ttl_s`)."""

    def __init__(self, db: Database, *, ttl_s: float = CACHE_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[float, CourseTutor]] = {}

    async def current(self, course: str | None, *, fresh: bool = False) -> CourseTutor:
        """The course's settings (the defaults for no course, or one never set); `fresh`: read
        from the database, not the cache (before a change)."""
        if not course:
            return CourseTutor("", TutorSettings())
        hit = self._cache.get(course)
        if hit is not None and hit[0] > self.clock() and not fresh:
            return hit[1]
        try:
            async with self.db.session() as s:
                row = (await s.execute(
                    select(CourseTutorVersion).where(CourseTutorVersion.course == course)
                    .order_by(CourseTutorVersion.version.desc()).limit(1))).scalar_one_or_none()
        except Exception as exc:
            if hit is None or fresh:
                raise  # an outage: the caller refuses (server.outage)
            # a course's frame stays locked through a database blip: its last known settings
            log.warning("course %r tutor settings unreadable (%s); using the last known", course,
                        exc)
            return hit[1]
        tutor = _tutor(row) if row is not None else CourseTutor(course, TutorSettings())
        self._cache[course] = (self.clock() + self.ttl_s, tutor)
        return tutor

    async def save(self, course: str, settings: TutorSettings, user_id: str) -> CourseTutor:
        """A new version of the course's settings, numbered after the newest (a concurrent
        save that took the same number is retried on the next one)."""
        for _ in range(5):
            try:
                async with self.db.session() as s, s.begin():
                    newest = (await s.execute(
                        select(func.max(CourseTutorVersion.version))
                        .where(CourseTutorVersion.course == course))).scalar() or 0
                    row = CourseTutorVersion(course=course, version=newest + 1,
                                             settings=asdict(settings), updated_by=user_id)
                    s.add(row)
                    await s.flush()
                    tutor = _tutor(row)
            except IntegrityError:
                continue
            self._cache[course] = (self.clock() + self.ttl_s, tutor)
            return tutor
        raise ApiError(409, "conflict", "the course's tutor settings are being changed by "
                       "someone else at the same moment; try again")

    async def versions(self, course: str, limit: int, before: int | None
                       ) -> list[dict[str, Any]]:
        """The course's versions, newest first (`before`: older than that version), each with
        the fields it changed from the one before."""
        query = select(CourseTutorVersion).where(CourseTutorVersion.course == course)
        if before is not None:
            query = query.where(CourseTutorVersion.version < before)
        async with self.db.session() as s:
            rows = list((await s.execute(
                query.order_by(CourseTutorVersion.version.desc()).limit(limit + 1))).scalars())
        out = []
        for i, row in enumerate(rows[:limit]):
            older = rows[i + 1] if i + 1 < len(rows) else None
            if older is None and row.version > 1:  # the page ends: read the one before it
                async with self.db.session() as s:
                    older = (await s.execute(select(CourseTutorVersion).where(
                        CourseTutorVersion.course == course,
                        CourseTutorVersion.version == row.version - 1))).scalar_one_or_none()
            settings = from_stored(row.settings)
            out.append({**_tutor(row).to_json(), "changed": changed_fields(
                from_stored(older.settings) if older is not None else None, settings)})
        return out

    async def weak_sections(self, user_id: str, course: str | None) -> list[str]:
        """The student's weakest sections of `course` for the prompt (`study.mastery.weakest`),
        read once per session or typed question. Empty when the read fails: the prompt then
        goes without them rather than the student without an answer."""
        try:
            async with self.db.session() as s:
                return await weakest(s, user_id, course, WEAK_SECTIONS_IN_PROMPT)
        except Exception:
            log.warning("weakest sections of %s unavailable", course, exc_info=True)
            return []

    async def locked(self, tutor: CourseTutor, user: User) -> bool:
        """Whether `user`'s client stays inside the course's frame: on a course whose teachers
        saved settings (version 1 on), for everyone but its teachers and admins. A course never
        set keeps the old behaviour: any client's instructions replace the prompt."""
        return tutor.version > 0 and not await self.may_shape(user, tutor.course)

    async def may_shape(self, user: User, course: str | None) -> bool:
        """An admin, or a teacher of a class on `course`: they change its settings, and their
        own client may replace its prompt."""
        if user.role == "admin":
            return True
        if user.role != "teacher" or not course:
            return False
        async with self.db.session() as s:
            return bool((await s.execute(select(exists().where(
                Classroom.teacher_id == user.id, Classroom.course == course)))).scalar())


def _tutor(row: CourseTutorVersion) -> CourseTutor:
    at = row.updated_at
    if at.tzinfo is None:  # SQLite gives back naive UTC
        at = at.replace(tzinfo=timezone.utc)
    return CourseTutor(row.course, from_stored(row.settings), row.version, row.updated_by, at)
