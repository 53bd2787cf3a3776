"""`POST /api/ai/chat`: a typed question in, the tutor's answer out as Server-Sent Events.

Same grounding, prompt assembly and chat provider as a voice turn. Events: `citations`
({"citations": [...]}, the course passages used), `delta` ({"delta"}) as the answer is generated,
then `done` ({"text"}) or `error` ({"code", "message"}) when the provider fails mid-answer.
With moderation on (`server.moderation`), the question is checked while retrieval runs and a
flagged one is answered with the safe line (the same events, no citations); the answer is sent
sentence by sentence, each once checked, and a flagged sentence is replaced by the safe line,
which ends the answer (`done` has the text as sent).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from accounts.routes import require_user
from api.errors import ApiError
from api.request import json_body, text_problem
from api.services import services
from dialogue.prompts import chat_messages
from providers import ProviderError, Usage
from realtime.moderation import AnswerCut, Ruling
from store.models import COURSE_CHARS

from .moderation import Moderation, Turn

MAX_HISTORY = 50
MAX_MESSAGE_CHARS = 100_000  # a typed question (the JSON body is bounded anyway)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_request", message, field=field)


def _parse(body: dict[str, Any]) -> tuple[str | None, list[dict[str, str]]]:
    if not isinstance(body.get("message"), str) or not body["message"].strip():
        raise _invalid("message", "body must be a JSON object with a non-empty string 'message'")
    history = body.get("history") or []
    if not isinstance(history, list) or len(history) > MAX_HISTORY or not all(
        isinstance(m, dict) and m.get("role") in ("user", "assistant")
        and isinstance(m.get("content"), str) for m in history
    ):
        raise _invalid("history", f"'history' must be a list of at most {MAX_HISTORY} "
                       "{role: user|assistant, content: string} objects")
    problem = text_problem(body["message"], MAX_MESSAGE_CHARS)  # it is stored as the turn
    if problem:
        raise _invalid("message", f"'message' {problem}")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _invalid("instructions", "'instructions' must be a string")
    course = body.get("course")
    if course is not None and not isinstance(course, str):
        raise _invalid("course", "'course' must be a string")
    if course and (problem := text_problem(course, COURSE_CHARS)):
        raise _invalid("course", f"'course' {problem}")
    messages = [{"role": m["role"], "content": m["content"]} for m in history]
    return instructions, [*messages, {"role": "user", "content": body["message"]}]


async def chat_endpoint(request: Request) -> Response:
    state = services(request)
    user = await require_user(request)
    body = await json_body(request)
    instructions, history = _parse(body)
    chat = state.providers.chat
    if chat is None:
        raise ApiError(503, "provider_not_configured",
                       state.providers.problem or "no chat model")
    tier = await state.billing.tier_of(user)
    await state.billing.take_chat(user, tier)  # 402 when today's typed questions are used up
    model = state.billing.chat_model(tier)
    course = body.get("course") or state.settings.default_course
    session_id = "chat_" + secrets.token_hex(8)
    turn = Turn(session_id, user.id, course)
    guard = _Guard(state.moderation, turn) if state.moderation is not None else None
    if guard is not None:  # the question is checked beside retrieval and the model's first token
        guard.ask(history[-1]["content"])
    try:
        grounding = await state.knowledge(course)(history[-1]["content"], user.id)
    except BaseException:
        if guard is not None:
            guard.cancel()
        raise
    messages = grounding.apply(chat_messages(instructions or state.session_config.instructions,
                                             history))

    async def stream() -> AsyncIterator[bytes]:
        parts: list[str] = []
        usage: Usage | None = None
        status = "completed"
        started = guard is None  # the verdict on the question came (and it passed)

        async def verdict() -> list[bytes]:
            """The citations once the question passed; its safe line when it did not."""
            nonlocal started
            assert guard is not None
            refused = await guard.asked()
            started = True
            if refused is None:
                return [_sse("citations", {"citations": grounding.citations()})]
            parts.append(refused)
            return [_sse("citations", {"citations": []}), _sse("delta", {"delta": refused})]

        try:
            if guard is None:
                yield _sse("citations", {"citations": grounding.citations()})
            try:
                async for delta in chat.stream(messages, model=model):
                    if isinstance(delta, Usage):
                        usage = delta
                        continue
                    if not started:
                        for event in await verdict():
                            yield event
                    if guard is not None and guard.stopped:
                        break
                    for text in [delta] if guard is None else await guard.feed(delta):
                        parts.append(text)
                        yield _sse("delta", {"delta": text})
                    if guard is not None and guard.stopped:
                        break
                if not started:
                    for event in await verdict():
                        yield event
                for text in await guard.finish() if guard is not None else []:
                    parts.append(text)
                    yield _sse("delta", {"delta": text})
            except ProviderError as exc:
                state.metrics.provider_failed("llm", exc.code)
                if not started:
                    for event in await verdict():
                        yield event
                if guard is None or not guard.stopped:  # else the safe line was the answer
                    status = "failed"
                    yield _sse("error", {"code": exc.code, "message": exc.message})
                    return
            yield _sse("done", {"text": "".join(parts)})
        finally:
            if guard is not None:
                guard.cancel()
            state.writer.submit({
                "session_id": session_id, "user_id": user.id, "kind": "text", "course": course,
                "transcript": history[-1]["content"], "answer": "".join(parts),
                "status": status, "cancelled": False, "tokens_in": usage.tokens_in if usage else None,
                "tokens_out": usage.tokens_out if usage else None})

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _Guard:
    """A typed answer's moderation: the question's verdict first (`ask`, `asked`), then the
    answer's sentences, each checked as soon as it is complete (side by side) and given back in
    order once it passed; a flagged one is replaced by the safe line and ends the answer
    (`stopped`)."""

    def __init__(self, moderation: Moderation, turn: Turn) -> None:
        self.moderation = moderation
        self.turn = turn
        self.cut = AnswerCut()
        self.question: asyncio.Future[Ruling] | None = None
        self.pending: list[tuple[str, asyncio.Future[Ruling]]] = []
        self.stopped = False
        self.shown = False

    def ask(self, question: str) -> None:
        self.question = asyncio.ensure_future(self.moderation.check(question, "input", self.turn))

    async def asked(self) -> str | None:
        """None when the question passed; else the line said instead (the answer stops)."""
        assert self.question is not None
        ruling = await self.question
        if ruling.allow:
            return None
        self.stopped = True
        return ruling.reply or ""

    async def feed(self, delta: str) -> list[str]:
        for sentence in self.cut.feed(delta):
            self._check(sentence)
        return await self._passed(wait=False)

    async def finish(self) -> list[str]:
        rest = None if self.stopped else self.cut.flush()
        if rest is not None:
            self._check(rest)
        return await self._passed(wait=True)

    def _check(self, text: str) -> None:
        self.pending.append(
            (text, asyncio.ensure_future(self.moderation.check(text, "output", self.turn))))

    async def _passed(self, *, wait: bool) -> list[str]:
        out: list[str] = []
        while self.pending and not self.stopped and (wait or self.pending[0][1].done()):
            text, check = self.pending.pop(0)
            ruling = await check
            if ruling.allow:
                out.append(text)
                self.shown = True
            else:
                self.stopped = True
                line = ruling.reply or ""
                out.append(f" {line}" if self.shown else line)
        return out

    def cancel(self) -> None:
        for check in [self.question, *(c for _, c in self.pending)]:
            if check is not None:
                check.cancel()
