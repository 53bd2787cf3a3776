"""Quizzes (`POST /api/ai/quiz`), sans I/O: the request, the prompt, the JSON schema the chat
model must follow (structured output), and the validation of what it returns.

A quiz is built from course passages (retrieved for a topic, or for the student's recent turns)
that the model sees with their ids (`[c12]`); every question must cite the passages it comes
from. What the model returns is checked here beyond the schema (a provider may not enforce it):
the kinds asked for, 2 to 6 distinct choices with the answer among them, and sources that are
passages it was actually given (unknown ids are dropped; a question left citing none is invalid).
An invalid answer raises `InvalidOutput` with readable errors, which the route sends back to the
model once (`study.ai_routes`). Helpers shared with `study.summary` live here too.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal, Sequence, TypeVar

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      model_validator)

from api.request import unstorable

log = logging.getLogger("tutor.study")
M = TypeVar("M", bound=BaseModel)

KINDS = ("mcq", "open")
MAX_QUESTIONS = 10
DEFAULT_QUESTIONS = 5
MIN_CHOICES, MAX_CHOICES = 2, 6
TURN_CHARS = 600  # of each recent question and answer put in the prompt
SCHEMA_NAME = "quiz"


def max_tokens(questions: int) -> int:
    """The output budget of a quiz: about 220 tokens a question (choices, answer, explanation)."""
    return 300 + 220 * questions


class InvalidOutput(Exception):
    """The model's answer is not usable; `errors` say why, for the retry prompt and the log."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def error_lines(exc: ValidationError, limit: int = 12) -> list[str]:
    """pydantic's errors as "where: what" lines (the "Value error, " prefix removed)."""
    lines = []
    for e in exc.errors()[:limit]:
        where = ".".join(str(p) for p in e["loc"]) or "(root)"
        lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return lines


def validated(model: type[M], data: Any, context: dict[str, Any], what: str) -> M:
    """`data` checked as `model` (with `context["ids"]`, the passages given), or
    `InvalidOutput`. Sources the model made up are dropped by the validators, and logged here."""
    try:
        result = model.model_validate(data, context=context)
    except ValidationError as exc:
        raise InvalidOutput(error_lines(exc)) from exc
    if context.get("dropped"):
        log.warning("%s: dropped source ids that were not among the passages given: %s",
                    what, sorted(set(context["dropped"])))
    return result


def request_errors(exc: ValidationError) -> str:
    return "; ".join(error_lines(exc, 5))


def clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def passage_block(passages: Sequence[Any]) -> str:
    """Course passages (`rag.search.Hit`) as the chat prompt shows them: "[c12] heading\\ntext"."""
    return "".join(f"\n\n[c{h.chunk_id}] {h.heading_path}\n{h.text}" if h.heading_path else
                   f"\n\n[c{h.chunk_id}]\n{h.text}" for h in passages)


_CITATION_MARK = re.compile(r"\s*\[c\d+\]")


def turn_block(turns: Sequence[Any], limit: int = TURN_CHARS) -> str:
    """The student's turns (`store.models.Interaction`), oldest first. The passage ids the tutor
    mentioned in its answers (`[c12]`) are taken out: the model must cite only the passages it
    is shown now, and an id seen in a turn would look like one."""
    return "".join(f"\n- Student: {clip(t.transcript, limit)}\n  Tutor: "
                   f"{clip(_CITATION_MARK.sub('', t.answer), limit)}" for t in turns)


def passage_ids(passages: Sequence[Any]) -> list[str]:
    return [f"c{h.chunk_id}" for h in passages]


def sources_schema(ids: Sequence[str]) -> dict[str, Any]:
    """An array of passage ids; with an enum, so a strict provider cannot invent one."""
    items: dict[str, Any] = {"type": "string", "enum": list(ids)} if ids else {"type": "string"}
    return {"type": "array", "items": items,
            "description": "ids of the course passages this comes from, like \"c12\""}


def known_sources(sources: Sequence[str], ids: Sequence[str], dropped: list[str]) -> list[str]:
    """`sources` that are among `ids` (once each, in order); the others go to `dropped`."""
    kept: list[str] = []
    for s in sources:
        s = s.strip().strip("[]")
        if s in ids:
            if s not in kept:
                kept.append(s)
        else:
            dropped.append(s)
    return kept


# -- the request -------------------------------------------------------------------------------

def _storable(value: str) -> str:
    problem = unstorable(value)
    if problem:
        raise ValueError(f"the text {problem}")
    return value


def storable(max_chars: int) -> Any:
    """The type of a non-empty string of at most `max_chars` that the database can hold."""
    return Annotated[str, Field(min_length=1, max_length=max_chars), AfterValidator(_storable)]


class QuizRequest(BaseModel):
    """`{course?, topic? | source: "recent", questions?: 1..10, kinds?: ["mcq", "open"]}`."""

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)

    course: storable(200) | None = None  # type: ignore[valid-type]
    topic: storable(500) | None = None  # type: ignore[valid-type]
    source: Literal["topic", "recent"] | None = None
    questions: int = Field(DEFAULT_QUESTIONS, ge=1, le=MAX_QUESTIONS)
    kinds: list[Literal["mcq", "open"]] = Field(default_factory=lambda: list(KINDS),
                                                min_length=1, max_length=2)

    @model_validator(mode="after")
    def _source(self) -> QuizRequest:
        if self.source is None:
            if self.topic is None:
                raise ValueError('give a "topic", or "source": "recent" for a quiz on your '
                                 "recent sessions")
            self.source = "topic"
        elif self.source == "topic" and self.topic is None:
            raise ValueError('"source": "topic" needs a "topic"')
        elif self.source == "recent" and self.topic is not None:
            raise ValueError('give either a "topic" or "source": "recent", not both')
        self.kinds = [k for k in KINDS if k in self.kinds]  # once each, in a stable order
        return self


# -- the prompt and the schema -----------------------------------------------------------------

INSTRUCTIONS = """\
You write short quizzes that help a student check what they have learned.
Write exactly {n} questions. Allowed question types: {kinds}.{mix}
- "mcq" (multiple choice): 2 to 6 distinct "choices", exactly one of them correct; "answer_index"
  is the 0-based index of the correct choice and "answer" is its exact text.
- "open": a question answered in a few words or sentences; "choices" and "answer_index" are null
  and "answer" is a model answer.
"explanation" says in one or two sentences why the answer is right.
Write in the language of the course material."""

TOPIC_MATERIAL = """
Base every question and its answer on the course passages below, each shown with its id in
brackets. In "sources", list the ids of the passages each question comes from: at least one, and
only ids shown below."""

RECENT = """
The quiz reviews what the student worked on in their recent tutoring sessions: their questions
and the tutor's answers follow, oldest first. Ask about the ideas they met, not about the
conversation itself."""

RECENT_MATERIAL = """
Course passages on those subjects follow, each shown with its id in brackets. Prefer questions the
passages answer; in "sources", list the ids of the passages each question comes from: at least
one, and only ids shown below."""

RECENT_NO_MATERIAL = """
No course material matched those sessions: base the questions on what the tutor explained, and
leave "sources" empty."""


def quiz_schema(questions: int, kinds: Sequence[str], ids: Sequence[str]) -> dict[str, Any]:
    """The strict JSON schema of a quiz (every object closed, every property required; what is
    optional is nullable). Exactly `questions` questions, of `kinds`, citing `ids`."""
    question = {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "question", "choices", "answer_index", "answer", "explanation",
                     "sources"],
        "properties": {
            "type": {"type": "string", "enum": list(kinds)},
            "question": {"type": "string"},
            "choices": {"type": ["array", "null"], "items": {"type": "string"},
                        "minItems": MIN_CHOICES, "maxItems": MAX_CHOICES,
                        "description": "mcq: 2 to 6 distinct choices; open: null"},
            "answer_index": {"type": ["integer", "null"],
                             "description": "mcq: 0-based index of the correct choice; "
                                            "open: null"},
            "answer": {"type": "string",
                       "description": "mcq: the text of the correct choice; open: a model "
                                      "answer"},
            "explanation": {"type": "string"},
            "sources": sources_schema(ids),
        },
    }
    return {"type": "object", "additionalProperties": False, "required": ["questions"],
            "properties": {"questions": {"type": "array", "items": question,
                                         "minItems": questions, "maxItems": questions}}}


def quiz_messages(request: QuizRequest, passages: Sequence[Any],
                  turns: Sequence[Any] = ()) -> list[dict[str, str]]:
    kinds = ", ".join(f'"{k}"' for k in request.kinds)
    mix = " Mix both types." if len(request.kinds) > 1 and request.questions > 1 else ""
    system = INSTRUCTIONS.format(n=request.questions, kinds=kinds, mix=mix)
    if request.source == "recent":
        system += RECENT + turn_block(turns)
        system += (RECENT_MATERIAL + passage_block(passages)) if passages else RECENT_NO_MATERIAL
        ask = f"Write a {request.questions}-question quiz on my recent sessions."
    else:
        system += TOPIC_MATERIAL + passage_block(passages)
        ask = f"Write a {request.questions}-question quiz on this topic: {request.topic}"
    return [{"role": "system", "content": system}, {"role": "user", "content": ask}]


# -- validation --------------------------------------------------------------------------------

def _same(a: str, b: str) -> bool:
    return " ".join(a.split()).rstrip(".").casefold() == " ".join(b.split()).rstrip(".").casefold()


class QuizQuestion(BaseModel):
    """One question as returned to the client: mcq ones with `choices` and `answer_index`."""

    model_config = ConfigDict(str_strip_whitespace=True)

    type: Literal["mcq", "open"]
    question: str = Field(min_length=1)
    choices: list[str] | None = None
    answer_index: int | None = None
    answer: str = ""
    explanation: str = ""
    sources: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> QuizQuestion:
        context = info.context or {}
        kinds, ids = context.get("kinds", KINDS), context.get("ids", [])
        if self.type not in kinds:
            raise ValueError(f"type {self.type!r} was not asked for (only {', '.join(kinds)})")
        if self.type == "mcq":
            choices = [" ".join(c.split()) for c in self.choices or []]
            if not MIN_CHOICES <= len(choices) <= MAX_CHOICES:
                raise ValueError(f"a multiple-choice question needs {MIN_CHOICES} to "
                                 f"{MAX_CHOICES} choices, not {len(choices)}")
            if not all(choices):
                raise ValueError("a choice is empty")
            if len({c.casefold() for c in choices}) != len(choices):
                raise ValueError("the choices must be distinct (exactly one is correct)")
            index = self.answer_index
            if index is None:
                matches = [i for i, c in enumerate(choices) if _same(c, self.answer)]
                if len(matches) != 1:
                    raise ValueError("the answer must be one of the choices")
                index = matches[0]
            elif not 0 <= index < len(choices):
                raise ValueError(f"answer_index {index} is not the index of a choice "
                                 f"(0 to {len(choices) - 1})")
            elif self.answer and not _same(self.answer, choices[index]):
                raise ValueError(f"the answer {self.answer!r} is not choices[{index}] "
                                 f"({choices[index]!r})")
            self.choices, self.answer_index, self.answer = choices, index, choices[index]
        else:
            self.choices = self.answer_index = None
            if not self.answer:
                raise ValueError("an open question needs a model answer")
        self.sources = known_sources(self.sources, ids, context.setdefault("dropped", []))
        if ids and not self.sources:
            raise ValueError("the question cites none of the passages given; cite at least one "
                             f"of: {', '.join(ids)}")
        return self

    def public(self) -> dict[str, Any]:
        if self.type == "mcq":
            return self.model_dump()
        return self.model_dump(exclude={"choices", "answer_index"})


class QuizOutput(BaseModel):
    questions: list[QuizQuestion]

    @model_validator(mode="after")
    def _count(self, info: ValidationInfo) -> QuizOutput:
        wanted = (info.context or {}).get("questions", len(self.questions))
        if len(self.questions) < wanted:
            raise ValueError(f"asked for {wanted} questions, got {len(self.questions)}")
        self.questions = self.questions[:wanted]
        return self


def validate_quiz(data: Any, *, questions: int, kinds: Sequence[str],
                  ids: Sequence[str]) -> list[QuizQuestion]:
    """The quiz's questions, or `InvalidOutput`. Sources the model made up are dropped (logged)."""
    context: dict[str, Any] = {"questions": questions, "kinds": list(kinds), "ids": list(ids)}
    return validated(QuizOutput, data, context, "quiz").questions


def cited(passages: Sequence[Any], questions_or_points: Sequence[Any]) -> list[Any]:
    """The passages cited at least once, in the order they were given."""
    used = {s for q in questions_or_points for s in q.sources}
    return [h for h in passages if f"c{h.chunk_id}" in used]
