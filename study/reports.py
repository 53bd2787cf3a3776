"""A class's report for its teacher, sans I/O: per student, the time and questions since they
joined, the course sections they asked about and their mastery; per class, the most asked
sections and those with the lowest mastery; as JSON, or as CSV (one row per student).

Sections asked about come from the turns' citations: the tutor names the passages it uses
(`[c12]`, see `dialogue.prompts`), each passage belongs to a section (`study.mastery.section_of`).
A turn whose answer cites nothing counts as a question without a section. Mastery is replayed
from the student's quiz answers since they joined (`study.mastery.replay`), so a teacher learns
nothing from before a student joined their class, as with the transcripts.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Sequence

from .mastery import Progress, progress_json, ranked

CITATION = re.compile(r"\[c(\d+)\]")
TOP = 10  # sections listed per student and per class


def cited_chunks(answer: str) -> list[int]:
    """The passage ids an answer cites (`[c12]`), once each, in order."""
    return list(dict.fromkeys(int(m) for m in CITATION.findall(answer)))


@dataclass
class StudentActivity:
    """What the report counts of one student, since they joined the class."""

    user_id: str
    name: str | None
    email: str | None
    joined_at: datetime | None
    voice_ms: int = 0
    voice_questions: int = 0
    text_questions: int = 0
    sections: Counter[str] = field(default_factory=Counter)  # questions per section
    mastery: dict[str, Progress] = field(default_factory=dict)
    flagged: int = 0  # turns moderation flagged (store.queries.flagged_counts)


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 3) if values else None


def student_json(a: StudentActivity, at: datetime) -> dict[str, Any]:
    return {
        "user_id": a.user_id, "name": a.name, "email": a.email,
        "joined_at": a.joined_at.isoformat() if a.joined_at else None,
        "voice_minutes": round(a.voice_ms / 60000, 1),
        "questions": a.voice_questions + a.text_questions,
        "voice_questions": a.voice_questions, "text_questions": a.text_questions,
        "sections_asked": [{"section": s, "questions": n} for s, n in a.sections.most_common(TOP)],
        "mastery": {"mean": _mean(p.score for p in a.mastery.values()),
                    "sections": [progress_json(s, p) for s, p in sorted(a.mastery.items())],
                    "weakest": ranked(a.mastery, at)[:TOP]},
        "flagged_turns": a.flagged,
    }


def class_json(students: Sequence[StudentActivity]) -> dict[str, Any]:
    asked: Counter[str] = Counter()
    askers: Counter[str] = Counter()
    scores: dict[str, list[float]] = {}
    for a in students:
        asked.update(a.sections)
        askers.update(a.sections.keys())
        for section, p in a.mastery.items():
            scores.setdefault(section, []).append(p.score)
    lowest = sorted((_mean(v), s, len(v)) for s, v in scores.items())
    return {
        "students": len(students),
        "voice_minutes": round(sum(a.voice_ms for a in students) / 60000, 1),
        "questions": sum(a.voice_questions + a.text_questions for a in students),
        "most_asked_sections": [{"section": s, "questions": n, "students": askers[s]}
                                for s, n in asked.most_common(TOP)],
        "lowest_mastery_sections": [{"section": s, "mean_score": m, "students": n}
                                    for m, s, n in lowest[:TOP]],
    }


def report_json(room: dict[str, Any], students: Sequence[StudentActivity],
                at: datetime) -> dict[str, Any]:
    return {"class": room, "generated_at": at.isoformat(), "totals": class_json(students),
            "students": [student_json(a, at) for a in students]}


CSV_COLUMNS = ("user_id", "name", "email", "joined_at", "voice_minutes", "questions",
               "voice_questions", "text_questions", "sections_asked", "mastery_mean",
               "weakest_sections", "flagged_turns")


def _cell(value: Any) -> str:
    """A CSV cell a spreadsheet shows as text: a leading = + - @ would start a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def report_csv(report: dict[str, Any]) -> str:
    """One row per student; lists as "section (n)" or "section score" joined by "; "."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for st in report["students"]:
        scores = {m["section"]: m["score"] for m in st["mastery"]["sections"]}
        writer.writerow([_cell(v) for v in (
            st["user_id"], st["name"], st["email"], st["joined_at"], st["voice_minutes"],
            st["questions"], st["voice_questions"], st["text_questions"],
            "; ".join(f"{x['section']} ({x['questions']})" for x in st["sections_asked"]),
            st["mastery"]["mean"],
            "; ".join(f"{s} {scores[s]}" for s in st["mastery"]["weakest"]),
            st["flagged_turns"])])
    return out.getvalue()
