"""Session summaries (`POST /api/ai/summary`), sans I/O: the request, the prompt, the JSON schema
of the summary (structured output) and its validation.

A summary is written for the student from one of their own sessions (its turns, oldest first,
the most recent `MAX_TURNS` when it is longer), with the course passages retrieved for what they
asked, which its key points cite where they apply. Unknown passage ids are dropped; a key point
may cite none (a session can go beyond the course).
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from .quiz import known_sources, passage_block, sources_schema, storable, turn_block, validated

MAX_TURNS = 60  # the most recent turns of a longer session are summarised
TURN_CHARS = 1200
MAX_POINTS = 8
MAX_TOPICS = 8
MAX_TOKENS = 900
SCHEMA_NAME = "session_summary"


class SummaryRequest(BaseModel):
    """`{session_id}`: a session id from `session.created` or `GET /api/me/interactions`."""

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)

    session_id: storable(64)  # type: ignore[valid-type]


INSTRUCTIONS = """\
You summarise a tutoring session for the student who had it. Address them as "you".
"summary": two to four sentences on what they worked on and where they got to.
"key_points": two to six things to remember from the session, each one sentence; in its
"sources", the ids of the course passages it comes from (only ids shown below; none if no passage
covers it).
"topics": one to five short names of the subjects covered.
Write in the language the student used. The session follows, oldest turn first."""

OMITTED = "\n(earlier turns of this session are left out)"
MATERIAL = """
Course passages on the subjects of the session, each with its id in brackets:"""
NO_MATERIAL = """
No course passage matched this session: leave every "sources" empty."""


def summary_schema(ids: Sequence[str]) -> dict[str, Any]:
    point = {"type": "object", "additionalProperties": False, "required": ["point", "sources"],
             "properties": {"point": {"type": "string"}, "sources": sources_schema(ids)}}
    return {"type": "object", "additionalProperties": False,
            "required": ["summary", "key_points", "topics"],
            "properties": {"summary": {"type": "string"},
                           "key_points": {"type": "array", "items": point},
                           "topics": {"type": "array", "items": {"type": "string"}}}}


def summary_messages(turns: Sequence[Any], passages: Sequence[Any],
                     omitted: bool = False) -> list[dict[str, str]]:
    system = INSTRUCTIONS + (OMITTED if omitted else "") + turn_block(turns, TURN_CHARS)
    system += (MATERIAL + passage_block(passages)) if passages else NO_MATERIAL
    return [{"role": "system", "content": system},
            {"role": "user", "content": "Summarise this session for me."}]


class KeyPoint(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)

    point: str = Field(min_length=1)
    sources: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _sources(self, info: ValidationInfo) -> KeyPoint:
        context = info.context or {}
        self.sources = known_sources(self.sources, context.get("ids", []),
                                     context.setdefault("dropped", []))
        return self


class SessionSummary(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)

    summary: str = Field(min_length=1)
    key_points: list[KeyPoint] = Field(min_length=1)
    topics: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _trim(self) -> SessionSummary:
        self.key_points = self.key_points[:MAX_POINTS]
        topics: list[str] = []
        for t in self.topics:
            if t and t.casefold() not in (seen.casefold() for seen in topics):
                topics.append(t)
        self.topics = topics[:MAX_TOPICS]
        return self


def validate_summary(data: Any, *, ids: Sequence[str]) -> SessionSummary:
    return validated(SessionSummary, data, {"ids": list(ids)}, "summary")
