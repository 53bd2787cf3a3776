"""Weekly progress summaries, from `interactions`: one per student who used the tutor that week,
to the student and, when set, to their parent's or teacher's address (`users.guardian_email`).

Queued with a key per (student, ISO week, recipient), so running it again (every hour by the
worker, or by hand: `tutor email-summaries`) queues nothing twice.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import select

from store import queries
from store.db import Database
from store.models import TURN_KINDS, Interaction, User

STOPWORDS = set("""
a about above after again all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has
have having he her here hers him his how i if in into is it its itself just me more most my no
nor not now of off on once only or other our out over own same she should so some such than that
the their them then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yes okay ok um uh like
tell explain please know mean something thing things get got make made really much many way
""".split())
WORD = re.compile(r"[a-zA-Z][a-zA-Z'-]{2,}")


def last_full_week(now: datetime) -> tuple[datetime, str]:
    """Monday 00:00 UTC of the last complete ISO week, and its label (e.g. 2026-W47)."""
    today = now.astimezone(timezone.utc).date()
    monday = today - timedelta(days=today.weekday() + 7)
    start = datetime(monday.year, monday.month, monday.day, tzinfo=timezone.utc)
    return start, week_label(monday)


def week_label(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def topics(questions: list[str], k: int = 5) -> list[str]:
    """The words a student asked about most (a plain frequency count over their questions)."""
    counts = Counter(w.lower().strip("'-") for q in questions for w in WORD.findall(q))
    return [w for w, _ in counts.most_common(50) if w not in STOPWORDS][:k]


async def queue_weekly_summaries(db: Database, week_start: datetime) -> int:
    """Queue the summaries of the week starting at `week_start`; returns how many were new."""
    end = week_start + timedelta(days=7)
    label = week_label(week_start.date())
    queued = 0
    async with db.session() as s, s.begin():
        rows = (await s.execute(
            select(Interaction.user_id, Interaction.session_id, Interaction.course,
                   Interaction.transcript, Interaction.audio_seconds)
            .where(Interaction.created_at >= week_start, Interaction.created_at < end,
                   Interaction.user_id.is_not(None), Interaction.kind.in_(TURN_KINDS))
            .order_by(Interaction.user_id, Interaction.id))).all()
        by_user: dict[str, list] = {}
        for row in rows:
            by_user.setdefault(row.user_id, []).append(row)
        for user_id, turns in by_user.items():
            user = await s.get(User, user_id)
            if user is None or not user.weekly_summary or user.email_unsubscribed_at:
                continue
            questions = [t.transcript for t in turns if t.transcript]
            payload = {
                "student_name": user.name or "", "week": label,
                "minutes": round(sum(t.audio_seconds or 0 for t in turns) / 60, 1),
                "questions": len(questions), "sessions": len({t.session_id for t in turns}),
                "topics": topics(questions),
                "courses": sorted({t.course for t in turns if t.course}),
            }
            recipients = [(user.email, "student")] if user.email else []
            if user.guardian_email:
                recipients.append((user.guardian_email, "guardian"))
            for address, role in recipients:
                queued += await queries.enqueue_email(
                    s, recipient=address, template="weekly_summary",
                    payload={**payload, "name": (user.name or "") if role == "student" else "",
                             "recipient_role": role},
                    transactional=False, user_id=user.id, language=user.language,
                    key=f"weekly:{user.id}:{label}:{role}")
    return queued
