"""`POST /api/ai/chat`: a typed question in, the tutor's answer out as Server-Sent Events.

Same grounding, prompt assembly and chat provider as a voice turn, and the same course frame:
on a course with saved settings a student's `instructions` stay inside the course's prompt
(`dialogue.prompts.framed`); an admin's or the course's teacher's replace it. Events: `citations`
({"citations": [...]}, the course passages used), `delta` ({"delta"}) as the answer is generated,
then `done` ({"text"}) or `error` ({"code", "message"}) when the provider fails mid-answer.
"""

from __future__ import annotations

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
from store.models import COURSE_CHARS

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
    grounding = await state.knowledge(course)(history[-1]["content"], user.id)
    messages = grounding.apply(chat_messages(instructions or prompt, history, frame))
    session_id = "chat_" + secrets.token_hex(8)

    async def stream() -> AsyncIterator[bytes]:
        yield _sse("citations", {"citations": grounding.citations()})
        parts: list[str] = []
        usage: Usage | None = None
        status = "completed"
        try:
            async for delta in chat.stream(messages, model=model):
                if isinstance(delta, Usage):
                    usage = delta
                    continue
                parts.append(delta)
                yield _sse("delta", {"delta": delta})
        except ProviderError as exc:
            state.metrics.provider_failed("llm", exc.code)
            status = "failed"
            yield _sse("error", {"code": exc.code, "message": exc.message})
        else:
            yield _sse("done", {"text": "".join(parts)})
        finally:
            state.writer.submit({
                "session_id": session_id, "user_id": user.id, "kind": "text", "course": course,
                "transcript": history[-1]["content"], "answer": "".join(parts),
                "status": status, "cancelled": False, "tokens_in": usage.tokens_in if usage else None,
                "tokens_out": usage.tokens_out if usage else None})

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
