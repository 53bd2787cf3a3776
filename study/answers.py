"""A student's answers to a stored quiz (`POST /api/ai/quiz/{id}/answers`), sans I/O: the
request, and each answer checked against the quiz's stored questions.

Multiple-choice answers are marked by the server (the choice against the stored `answer_index`);
the client cannot say whether they were right. An open question has no automatic marking: the
student compares their text with the model answer and says whether they got it (`"correct"`:
self-assessed, stored as such); left out, the answer is recorded unmarked and does not change
mastery. Each question is answered once; a quiz may be answered over several requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .quiz import MAX_QUESTIONS, storable

MAX_ANSWER_CHARS = 4000


class AnswerIn(BaseModel):
    """`{question, choice}` for multiple choice, `{question, text?, correct?}` for an open one."""

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)

    question: int = Field(ge=0, lt=MAX_QUESTIONS)
    choice: int | None = Field(None, ge=0)
    text: storable(MAX_ANSWER_CHARS) | None = None  # type: ignore[valid-type]
    correct: bool | None = None


class AnswersRequest(BaseModel):
    """`{"answers": [AnswerIn, ...]}`: each question at most once."""

    model_config = ConfigDict(extra="forbid", strict=True)

    answers: list[AnswerIn] = Field(min_length=1, max_length=MAX_QUESTIONS)

    @model_validator(mode="after")
    def _once(self) -> AnswersRequest:
        asked = [a.question for a in self.answers]
        if len(set(asked)) != len(asked):
            raise ValueError("each question may be answered once")
        return self


class AnswerProblem(ValueError):
    """An answer that does not fit its question; `field` names it for the error body."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Marked:
    """One answer, checked: what is stored and returned."""

    question: int
    choice: int | None
    text: str | None
    correct: bool | None  # None: an open answer the student did not mark
    self_assessed: bool
    sections: list[str]


def mark(questions: Sequence[dict[str, Any]], answer: AnswerIn) -> Marked:
    """`answer` checked against the stored `questions`, or `AnswerProblem`."""
    where = f"answers[question={answer.question}]"
    if answer.question >= len(questions):
        raise AnswerProblem(f"the quiz has {len(questions)} questions (0 to "
                            f"{len(questions) - 1})", where)
    stored = questions[answer.question]
    sections = list(stored.get("sections") or [])
    if stored["type"] == "mcq":
        if answer.choice is None or answer.text is not None or answer.correct is not None:
            raise AnswerProblem('a multiple-choice question takes only "choice" (the server '
                                "marks it)", where)
        if answer.choice >= len(stored["choices"]):
            raise AnswerProblem(f"choice {answer.choice} is not one of the "
                                f"{len(stored['choices'])} choices", where)
        return Marked(answer.question, answer.choice, None,
                      answer.choice == stored["answer_index"], False, sections)
    if answer.choice is not None:
        raise AnswerProblem('an open question takes "text" and, once you compared it with the '
                            'model answer, "correct"', where)
    return Marked(answer.question, None, answer.text, answer.correct,
                  answer.correct is not None, sections)


def marked_json(stored: dict[str, Any], m: Marked) -> dict[str, Any]:
    """An answer as returned: the verdict with the correct answer, its explanation and sources."""
    out = {"question": m.question, "type": stored["type"], "correct": m.correct,
           "self_assessed": m.self_assessed, "answer": stored["answer"],
           "explanation": stored.get("explanation", ""), "sources": stored.get("sources", []),
           "sections": m.sections}
    if stored["type"] == "mcq":
        out |= {"choice": m.choice, "answer_index": stored["answer_index"]}
    return out
