"""Mastery per course section: how well a student knows each part of a course, from their quiz
answers, and which sections they should practise first (`weakest`, for the tutor's prompt).

A section is what the course's material calls one: the first `SECTION_DEPTH` headings of a
passage's heading path ("Algebra Basics > Solving Linear Equations"; deeper headings, such as a
worked example, belong to their section), or the document's name for text before any heading.

The model (`update`, pure: the time is a parameter):
- `score` is an exponential moving average of the answers' correctness (1 right, 0 wrong) with
  weight `ALPHA`, starting from 0 (nothing shown yet): three right answers in a row give 0.66,
  five give 0.83; a section is mastered from `MASTERED`.
- the review date is a spaced-repetition interval (Leitner-like): a right answer schedules the
  next review 1 day later the first time, then `GROWTH` times the last interval (at most
  `MAX_INTERVAL_DAYS`); a wrong one makes the section due at once and starts the interval over.
An answer not marked (an open question the student did not self-assess) changes nothing.
`weakest` lists the sections due for review or below `MASTERED`, lowest score first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import SECTION_CHARS, Content, Mastery, now
from store.queries import aware, dialect_insert

SECTION_DEPTH = 2
HEADING_SEPARATOR = " > "  # as rag.worker joins a passage's headings
ALPHA = 0.3
MASTERED = 0.8
GROWTH = 2.5
MAX_INTERVAL_DAYS = 60.0


def section_of(source: str, heading_path: str) -> str:
    """The section a passage belongs to (see the module's docstring)."""
    headings = [h.strip() for h in heading_path.split(HEADING_SEPARATOR) if h.strip()]
    name = HEADING_SEPARATOR.join(headings[:SECTION_DEPTH]) or source
    return name[:SECTION_CHARS]


@dataclass(frozen=True)
class Progress:
    """A student's standing in one section."""

    score: float = 0.0
    answers: int = 0
    correct: int = 0
    interval_days: float = 0.0
    due_at: datetime | None = None  # None: never answered

    def due(self, at: datetime) -> bool:
        return self.due_at is not None and aware(self.due_at) <= at

    def weak(self, at: datetime) -> bool:
        return self.answers > 0 and (self.score < MASTERED or self.due(at))


def update(progress: Progress, correct: bool, at: datetime) -> Progress:
    """The standing after one marked answer at `at`."""
    score = progress.score + ALPHA * ((1.0 if correct else 0.0) - progress.score)
    if correct:
        interval = min(MAX_INTERVAL_DAYS, progress.interval_days * GROWTH
                       if progress.interval_days else 1.0)
    else:
        interval = 0.0
    return Progress(score=score, answers=progress.answers + 1,
                    correct=progress.correct + int(correct), interval_days=interval,
                    due_at=at + timedelta(days=interval))


def replay(answers: Iterable[tuple[Sequence[str], bool | None, datetime]]
           ) -> dict[str, Progress]:
    """Each section's standing after `answers` (sections, correct, when), oldest first."""
    standing: dict[str, Progress] = {}
    for sections, correct, at in answers:
        if correct is None:
            continue
        for section in sections:
            standing[section] = update(standing.get(section, Progress()), correct, at)
    return standing


def ranked(standing: dict[str, Progress], at: datetime) -> list[str]:
    """The sections to practise first: due or not mastered, the lowest score (then the longest
    overdue) first."""
    weak = [(p.score, aware(p.due_at) if p.due_at else at, s) for s, p in standing.items()
            if p.weak(at)]
    return [s for _, _, s in sorted(weak)]


def progress_json(section: str, p: Progress) -> dict[str, Any]:
    return {"section": section, "score": round(p.score, 3), "answers": p.answers,
            "correct": p.correct,
            "due_at": aware(p.due_at).isoformat() if p.due_at else None}


# -- the stored standing ---------------------------------------------------------------------

def _course_key(course: str | None) -> str:
    return course or ""


def _progress(row: Mastery) -> Progress:
    return Progress(score=row.score, answers=row.answers, correct=row.correct,
                    interval_days=row.interval_days, due_at=aware(row.due_at))


async def standing(s: AsyncSession, user_id: str, course: str | None) -> dict[str, Progress]:
    query = select(Mastery).where(Mastery.user_id == user_id,
                                  Mastery.course == _course_key(course))
    return {row.section: _progress(row) for row in (await s.execute(query)).scalars()}


async def record(s: AsyncSession, user_id: str, course: str | None, sections: Sequence[str],
                 correct: bool, at: datetime | None = None) -> dict[str, Progress]:
    """Update the student's sections after one marked answer, in the caller's transaction. A
    section's row is made if missing (once, whoever comes first) and locked while it is updated
    (PostgreSQL), so two answers at once both count."""
    at = at or now()
    changed: dict[str, Progress] = {}
    for section in dict.fromkeys(sections):
        key = {"user_id": user_id, "course": _course_key(course), "section": section}
        await s.execute(dialect_insert(s)(Mastery).values(
            **key, score=0.0, answers=0, correct=0, interval_days=0.0, due_at=at, updated_at=at,
        ).on_conflict_do_nothing(index_elements=list(key)))
        row = (await s.execute(select(Mastery).filter_by(**key).with_for_update()
                               .execution_options(populate_existing=True))).scalar_one()
        after = update(_progress(row), correct, at)
        row.score, row.answers, row.correct = after.score, after.answers, after.correct
        row.interval_days, row.due_at, row.updated_at = after.interval_days, after.due_at, at
        changed[section] = after
    await s.flush()
    return changed


async def weakest(s: AsyncSession, user_id: str, course: str | None, n: int,
                  at: datetime | None = None) -> list[str]:
    """At most `n` sections of `course` the student should practise first (low mastery or due
    for review, the lowest score first): what the tutor's prompt names and `practice` mode
    quizzes from. Empty for a student who has answered nothing yet."""
    if n <= 0:
        return []
    return ranked(await standing(s, user_id, course), at or now())[:n]


async def sections_of_chunks(s: AsyncSession, chunk_ids: Iterable[int]
                             ) -> dict[int, tuple[str, str]]:
    """The course and section of each passage (`content` row) still in the material."""
    ids = sorted(set(chunk_ids))
    if not ids:
        return {}
    rows = (await s.execute(select(Content.id, Content.course, Content.source,
                                   Content.heading_path).where(Content.id.in_(ids)))).all()
    return {r.id: (r.course, section_of(r.source, r.heading_path)) for r in rows}

