"""`POST /api/ai/chat`: a typed question in, the tutor's answer out as Server-Sent Events.

Same grounding, prompt assembly and chat provider as a voice turn, and the same course frame:
on a course with saved settings a student's `instructions` stay inside the course's prompt
(`dialogue.prompts.framed`); an admin's or the course's teacher's replace it. Events: `citations`
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
from typing import Any, AsyncIterator, Union

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from accounts.routes import require_user
from api.errors import ApiError
from api.request import json_body, text_problem
from api.services import services
from dialogue.prompts import chat_messages
from providers import ProviderError, Usage
from realtime.moderation import AnswerGate, Check, GateAction, Pass, Ruling
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
    tutor = await state.tutors.current(course)  # the course's settings, read once per request
    prompt = tutor.prompt(state.settings.instructions,
                          await state.tutors.weak_sections(user.id, course))
    frame = prompt if await state.tutors.locked(tutor, user) else None
    session_id = "chat_" + secrets.token_hex(8)
    moderation = state.moderation
    turn = Turn(session_id, user.id, course)
    # the question is checked beside retrieval and the model's first token
    gate = _Moderated(moderation, turn, history[-1]["content"]) if moderation is not None else None
    try:
        grounding = await state.knowledge(course)(history[-1]["content"], user.id)
    except BaseException:
        if gate is not None:
            gate.cancel()
        raise
    messages = grounding.apply(chat_messages(instructions or prompt, history, frame))

    async def stream() -> AsyncIterator[bytes]:
        parts: list[str] = []
        usage: Usage | None = None
        status = "completed"
        ended: Ended = _DONE

        def event(output: Any) -> list[bytes]:
            nonlocal status
            if isinstance(output, str):
                parts.append(output)
                return [_sse("delta", {"delta": output})]
            if isinstance(output, list):
                return [_sse("citations", {"citations": output})]
            if isinstance(output, ProviderError):
                status = "failed"
                return [_sse("error", {"code": output.code, "message": output.message})]
            return [_sse("done", {"text": "".join(parts)})]

        try:
            first: list[Any] = [grounding.citations()]  # with moderation: once the question passed
            if gate is None:
                first = []
                yield _sse("citations", {"citations": grounding.citations()})
            try:
                async for delta in chat.stream(messages, model=model):
                    if isinstance(delta, Usage):
                        usage = delta
                        continue
                    outputs = [*first, delta] if gate is None else await gate.feed(*first, delta)
                    first = []
                    for output in outputs:
                        for sse in event(output):
                            yield sse
                    if gate is not None and gate.stopped:
                        break
            except ProviderError as exc:
                state.metrics.provider_failed("llm", exc.code)
                ended = exc
            outputs = [*first, ended] if gate is None else await gate.end(*first, ended)
            for output in outputs:
                for sse in event(output):
                    yield sse
        finally:
            if gate is not None:
                gate.cancel()
            state.writer.submit({
                "session_id": session_id, "user_id": user.id, "kind": "text", "course": course,
                "transcript": history[-1]["content"], "answer": "".join(parts),
                "status": status, "cancelled": False, "tokens_in": usage.tokens_in if usage else None,
                "tokens_out": usage.tokens_out if usage else None})

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _Done:
    """The answer's end (the `done` event)."""


_DONE = _Done()
Ended = Union[_Done, ProviderError]  # how a typed answer ends: done, or the provider's error


class _Moderated:
    """Carries out one typed answer's `realtime.moderation.AnswerGate`: outputs (the citations
    as a list, text, then how it ended) go in, and come back once they passed, in order; checks
    run side by side. A `Stop` gives the safe line and the end (with no citations if none had
    gone)."""

    def __init__(self, moderation: Moderation, turn: Turn, question: str) -> None:
        self.moderation = moderation
        self.turn = turn
        self.gate = AnswerGate(question, ends=(_Done, ProviderError))
        self.checks: dict[int, asyncio.Future[Ruling]] = {}
        self.cited = False
        self._start(self.gate.start())

    @property
    def stopped(self) -> bool:
        return self.gate.stopped

    async def feed(self, *outputs: Any) -> list[Any]:
        """What passed so far, without waiting for checks still running."""
        return await self._through(outputs, wait=False)

    async def end(self, *outputs: Any) -> list[Any]:
        """Everything that passes, once every check is in."""
        return await self._through(outputs, wait=True)

    async def _through(self, outputs: tuple[Any, ...], *, wait: bool) -> list[Any]:
        passed: list[Any] = []
        for output in outputs:
            passed += self._start(self.gate.output(output))
        while self.checks and not self.stopped:
            ticket = min(self.checks)
            if not wait and not self.checks[ticket].done():
                break
            ruling = await self.checks.pop(ticket)
            passed += self._start(self.gate.ruled(ticket, ruling))
        return passed

    def _start(self, actions: list[GateAction]) -> list[Any]:
        passed: list[Any] = []
        for action in actions:
            if isinstance(action, Check):
                self.checks[action.ticket] = asyncio.ensure_future(
                    self.moderation.check(action.text, action.direction, self.turn))
            elif isinstance(action, Pass):
                self.cited = self.cited or isinstance(action.output, list)
                passed.append(action.output)
            else:
                passed += ([] if self.cited else [[]]) + [action.line, _DONE]
        return passed

    def cancel(self) -> None:
        for check in self.checks.values():
            check.cancel()
