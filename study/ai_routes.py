"""`POST /api/ai/quiz`, `POST /api/ai/quiz/{id}/answers` and `POST /api/ai/summary`: the I/O
around `study.quiz`, `study.answers` and `study.summary` (the student's turns from the database,
course passages from the retriever, the chat model's structured output with one retry, the
plan's limits) and their HTTP errors.

A quiz and a summary each count as one typed question of the plan's daily allowance
(`Billing.take_chat`, 402), use the plan's chat model, and sit in the `ai` group of per-minute
request limits (the middleware, 429) like `/api/ai/chat`. The allowance is taken once what the
request needs has been found (a topic the course does not cover, or an unknown session, costs
nothing) and just before the model is asked; a failed answer is not refunded, as with chat. A
quiz is stored with its correct answers and the sections each question cites, so its answers
are checked here and move the student's mastery (`study.mastery`); answering is not charged.
Errors are `api.errors.ApiError`s; the codes are in docs/errors.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable, Sequence, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from accounts.routes import require_user
from api.errors import ApiError
from api.request import body_bytes, max_json_bytes, parse_json, path_key
from api.services import services
from providers import ProviderError
from rag.grounding import Grounding
from store.models import TURN_KINDS, Interaction, Quiz, QuizAnswer

from . import mastery
from . import quiz as quizzes
from . import summary as summaries
from .answers import AnswerProblem, AnswersRequest, mark, marked_json
from .quiz import InvalidOutput, QuizRequest, request_errors
from .summary import SummaryRequest

log = logging.getLogger("tutor.study")

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

RECENT_SESSIONS = 3  # a quiz on recent sessions covers the student's last three sessions,
RECENT_TURNS = 24  # at most this many turns of them
RECENT_QUERIES = 6  # passages are retrieved for this many of the latest distinct questions
PASSAGES_PER_QUERY = 2
MAX_PASSAGES = 8

# ProviderError codes → HTTP status; everything else a provider does wrong is 502.
PROVIDER_STATUS = {"provider_timeout": 504, "provider_refused": 422}

RETRY = """\
Your answer could not be used:
{errors}
Answer again with JSON that follows the schema and fixes these problems."""


async def parse(request: Request, model: type[M]) -> M:
    value = parse_json(await body_bytes(request, max_json_bytes(request)) or b"null")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ApiError(400, "invalid_request", request_errors(exc)) from exc


def chat_model_of(request: Request) -> Any:
    providers = services(request).providers
    chat = providers.chat
    if chat is None:
        raise ApiError(503, "provider_not_configured", providers.problem or "no chat model")
    if not hasattr(chat, "complete_json"):
        raise ApiError(503, "provider_not_configured",
                       "the configured chat model does not support structured output")
    return chat


async def generate(chat: Any, messages: list[dict[str, str]], *, name: str,
                   schema: dict[str, Any], model: str | None, max_tokens: int, timeout: float,
                   validate: Callable[[Any], T]) -> T:
    """The model's structured answer, validated. An invalid one (not JSON, cut at the token
    limit, or refused by `validate` with `InvalidOutput`) is sent back once with what is wrong;
    invalid twice raises ProviderError `provider_invalid_output`."""
    for attempt in range(2):
        reply = await chat.complete_json(messages, name=name, schema=schema, model=model,
                                         max_tokens=max_tokens, timeout=timeout)
        try:
            if reply.finish_reason == "length":
                raise InvalidOutput([f"the answer was cut at the limit of {max_tokens} tokens; "
                                     "keep every text shorter"])
            try:
                data = json.loads(reply.text)
            except ValueError as exc:
                raise InvalidOutput([f"the answer is not valid JSON ({exc})"]) from exc
            return validate(data)
        except InvalidOutput as exc:
            log.warning("%s: invalid structured output (attempt %d): %s", name, attempt + 1,
                        "; ".join(exc.errors))
            if attempt:
                raise ProviderError("provider_invalid_output",
                                    "the chat model's answer was invalid twice: "
                                    + "; ".join(exc.errors)) from exc
            messages = [*messages, {"role": "assistant", "content": reply.text},
                        {"role": "user", "content": RETRY.format(
                            errors="\n".join(f"- {e}" for e in exc.errors))}]
    raise AssertionError("unreachable")


async def answer(request: Request, user: Any, chat: Any, messages: list[dict[str, str]],
                 **generation: Any) -> tuple[Any, str | None]:
    """Charge one of the plan's typed questions, then `generate` with the plan's model: its
    result and the model. A provider's failure is counted and refused with its status."""
    state = services(request)
    tier = await state.billing.tier_of(user)
    await state.billing.take_chat(user, tier)  # 402 when today's typed questions are used up
    model = state.billing.chat_model(tier)
    try:
        return await generate(chat, messages, model=model, **generation), model
    except ProviderError as exc:
        state.metrics.provider_failed("llm", exc.code)
        raise ApiError(PROVIDER_STATUS.get(exc.code, 502), exc.code, exc.message) from exc


async def passages_for(retriever: Any, questions: Sequence[str], *, course: str | None,
                       limit: int) -> list[Any]:
    """Course passages for several questions (the latest first): each question's best ones
    taken in turn, once each, up to `limit`. A failed lookup counts as none found."""
    distinct: list[str] = []
    for q in questions:
        if q.strip() and q.strip() not in distinct:
            distinct.append(q.strip())
    distinct = distinct[:RECENT_QUERIES]
    found = await asyncio.gather(*(retriever.search(q, course=course, k=PASSAGES_PER_QUERY,
                                                    wait_for_embedding=False)
                                   for q in distinct), return_exceptions=True)
    for failure in (f for f in found if isinstance(f, BaseException)):
        log.warning("retrieval failed, going on without it: %r", failure)
    lists = [f for f in found if not isinstance(f, BaseException)]
    passages: dict[int, Any] = {}
    for rank in range(PASSAGES_PER_QUERY):
        for hits in lists:
            if rank < len(hits) and hits[rank].chunk_id not in passages:
                passages[hits[rank].chunk_id] = hits[rank]
    return list(passages.values())[:limit]


async def recent_turns(db: Any, user_id: str, course: str | None) -> list[Interaction]:
    """The student's turns of their last `RECENT_SESSIONS` sessions (of `course`, when given),
    at most `RECENT_TURNS`, oldest first; only turns with something said or typed."""
    query = select(Interaction).where(Interaction.user_id == user_id, Interaction.transcript != "",
                                      Interaction.kind.in_(TURN_KINDS))  # not the notes
    if course is not None:
        query = query.where(Interaction.course == course)
    query = query.order_by(Interaction.id.desc()).limit(RECENT_TURNS * 3)
    async with db.session() as s:
        rows = list((await s.execute(query)).scalars())
    sessions: list[str] = []
    turns = []
    for row in rows:
        if row.session_id not in sessions:
            if len(sessions) == RECENT_SESSIONS:
                continue
            sessions.append(row.session_id)
        if row.transcript.strip():
            turns.append(row)
    return turns[:RECENT_TURNS][::-1]


async def session_turns(db: Any, user_id: str, session_id: str) -> tuple[list[Interaction], bool]:
    """The user's own turns of `session_id`, oldest first, the latest `MAX_TURNS` of them, and
    whether earlier ones were left out. Another user's session has none."""
    query = (select(Interaction)
             .where(Interaction.session_id == session_id, Interaction.user_id == user_id,
                    Interaction.kind.in_(TURN_KINDS))  # a turn saved as a note is not a turn
             .order_by(Interaction.id.desc()).limit(summaries.MAX_TURNS + 1))
    async with db.session() as s:
        rows = [r for r in (await s.execute(query)).scalars() if r.transcript.strip()
                or r.answer.strip()]
    return rows[: summaries.MAX_TURNS][::-1], len(rows) > summaries.MAX_TURNS


async def quiz_endpoint(request: Request) -> Response:
    state = services(request)
    settings = state.settings
    user = await require_user(request)
    body = await parse(request, QuizRequest)
    chat = chat_model_of(request)
    course = body.course or settings.default_course
    limit = min(MAX_PASSAGES, max(settings.rag_top_k, body.questions))
    turns: list[Interaction] = []
    if body.source == "recent":
        turns = await recent_turns(state.db, user.id, body.course)
        if not turns:
            raise ApiError(422, "no_history", "you have no recent sessions to make a quiz from"
                           + (f" in the course {body.course!r}" if body.course else ""))
        passages = await passages_for(state.retriever, [t.transcript for t in turns[::-1]],
                                      course=course, limit=limit)
    else:
        assert body.topic is not None
        try:
            passages = await state.retriever.search(body.topic, course=course, k=limit)
        except Exception as exc:
            log.warning("retrieval failed for a quiz: %r", exc)
            raise ApiError(503, "retrieval_unavailable",
                           "the course material could not be searched; try again") from exc
        # Vector search always has nearest neighbours: the topic must also match the
        # material's words, or a topic the course never mentions would get a quiz anyway.
        if not any(h.fts_rank is not None for h in passages):
            raise ApiError(422, "no_material", f"the course material has nothing on "
                           f"{body.topic!r}" + (f" (course {course!r})" if course else ""))

    ids = quizzes.passage_ids(passages)
    questions, model = await answer(
        request, user, chat, quizzes.quiz_messages(body, passages, turns),
        name=quizzes.SCHEMA_NAME, schema=quizzes.quiz_schema(body.questions, body.kinds, ids),
        max_tokens=quizzes.max_tokens(body.questions),
        timeout=settings.provider_timeout_s * (1 + body.questions / 5),
        validate=lambda data: quizzes.validate_quiz(data, questions=body.questions,
                                                    kinds=body.kinds, ids=ids))
    sections = {f"c{h.chunk_id}": mastery.section_of(h.source, h.heading_path) for h in passages}
    stored = [q.public() | {"sections": list(dict.fromkeys(sections[c] for c in q.sources
                                                            if c in sections))}
              for q in questions]
    async with state.db.session() as s, s.begin():
        row = Quiz(user_id=user.id, course=course, topic=body.topic, questions=stored)
        s.add(row)
        await s.flush()
    return JSONResponse({
        "quiz": {"id": row.id, "source": body.source, "course": course, "topic": body.topic,
                 "questions": [q.public() for q in questions]},
        "citations": Grounding(passages=quizzes.cited(passages, questions)).citations(),
        "model": model,
    })


async def summary_endpoint(request: Request) -> Response:
    state = services(request)
    settings = state.settings
    user = await require_user(request)
    body = await parse(request, SummaryRequest)
    chat = chat_model_of(request)
    turns, omitted = await session_turns(state.db, user.id, body.session_id)
    if not turns:
        raise ApiError(404, "not_found", f"you have no session {body.session_id!r}")
    course = next((t.course for t in reversed(turns) if t.course), settings.default_course)
    passages = await passages_for(state.retriever, [t.transcript for t in reversed(turns)],
                                  course=course, limit=max(settings.rag_top_k, 6))

    ids = quizzes.passage_ids(passages)
    result, model = await answer(
        request, user, chat, summaries.summary_messages(turns, passages, omitted),
        name=summaries.SCHEMA_NAME, schema=summaries.summary_schema(ids),
        max_tokens=summaries.MAX_TOKENS, timeout=settings.provider_timeout_s * 2,
        validate=lambda data: summaries.validate_summary(data, ids=ids))
    return JSONResponse({
        "session_id": body.session_id, "course": course, "turns": len(turns),
        "truncated": omitted,
        "summary": result.summary,
        "key_points": [p.model_dump() for p in result.key_points],
        "topics": result.topics,
        "citations": Grounding(passages=quizzes.cited(passages, result.key_points)).citations(),
        "model": model,
    })


async def answers_endpoint(request: Request) -> Response:
    """Record answers to one of the caller's quizzes: each checked (`study.answers`) and stored,
    and each marked one updates the mastery of the question's sections (`study.mastery`)."""
    user = await require_user(request)
    quiz_id = path_key(request, "quiz_id", "quiz")
    body = await parse(request, AnswersRequest)
    try:
        return await _record_answers(request, user.id, quiz_id, body)
    except IntegrityError as exc:  # the same question answered by two requests at once
        raise ApiError(409, "conflict", "already answered") from exc


async def _record_answers(request: Request, user_id: str, quiz_id: str,
                          body: AnswersRequest) -> Response:
    async with services(request).db.session() as s, s.begin():
        quiz = await s.get(Quiz, quiz_id)
        if quiz is None or quiz.user_id != user_id:
            raise ApiError(404, "not_found", "no such quiz of yours")
        try:
            marked = [mark(quiz.questions, a) for a in body.answers]
        except AnswerProblem as exc:
            raise ApiError(400, "invalid_request", str(exc), field=exc.field) from exc
        asked = [m.question for m in marked]
        done = set((await s.execute(select(QuizAnswer.question).where(
            QuizAnswer.quiz_id == quiz.id, QuizAnswer.question.in_(asked)))).scalars())
        if done:
            raise ApiError(409, "conflict", "already answered: question "
                           + ", ".join(str(q) for q in sorted(done)))
        changed: dict[str, mastery.Progress] = {}
        for m in marked:
            s.add(QuizAnswer(quiz_id=quiz.id, user_id=user_id, question=m.question,
                             course=quiz.course, sections=m.sections, choice=m.choice,
                             text=m.text, correct=m.correct, self_assessed=m.self_assessed))
            if m.correct is not None and m.sections:
                changed |= await mastery.record(s, user_id, quiz.course, m.sections, m.correct)
        answered = (await s.execute(select(QuizAnswer.correct).where(
            QuizAnswer.quiz_id == quiz.id))).scalars().all()
    return JSONResponse({
        "quiz_id": quiz.id,
        "answers": [marked_json(quiz.questions[m.question], m) for m in marked],
        "score": {"questions": len(quiz.questions), "answered": len(answered),
                  "correct": sum(1 for c in answered if c)},
        "mastery": [mastery.progress_json(section, p) for section, p in changed.items()],
    }, status_code=201)


routes = [
    Route("/api/ai/quiz", quiz_endpoint, methods=["POST"]),
    Route("/api/ai/quiz/{quiz_id}/answers", answers_endpoint, methods=["POST"]),
    Route("/api/ai/summary", summary_endpoint, methods=["POST"]),
]
