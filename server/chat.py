"""`POST /api/ai/chat`: a typed question in, the tutor's answer out as Server-Sent Events.

Same prompt assembly and chat provider as a voice turn. Events: `delta` ({"delta"}), then
`done` ({"text"}) or `error` ({"code", "message"}) when the provider fails mid-answer.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from dialogue.prompts import chat_messages
from dialogue.providers import ProviderError

MAX_HISTORY = 50


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _parse(body: Any) -> tuple[str | None, list[dict[str, str]]]:
    if not isinstance(body, dict) or not isinstance(body.get("message"), str) \
            or not body["message"].strip():
        raise ValueError("body must be a JSON object with a non-empty string 'message'")
    history = body.get("history") or []
    if not isinstance(history, list) or len(history) > MAX_HISTORY or not all(
        isinstance(m, dict) and m.get("role") in ("user", "assistant")
        and isinstance(m.get("content"), str) for m in history
    ):
        raise ValueError(f"'history' must be a list of at most {MAX_HISTORY} "
                         "{role: user|assistant, content: string} objects")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ValueError("'instructions' must be a string")
    messages = [{"role": m["role"], "content": m["content"]} for m in history]
    return instructions, [*messages, {"role": "user", "content": body["message"]}]


async def chat_endpoint(request: Request) -> Response:
    state = request.app.state
    try:
        instructions, history = _parse(await request.json())
    except ValueError as exc:
        return _error(400, "invalid_request", str(exc))
    chat = state.providers.chat
    if chat is None:
        return _error(503, "provider_not_configured", state.providers.problem or "no chat model")
    messages = chat_messages(instructions or state.session_config.instructions, history)

    async def stream() -> AsyncIterator[bytes]:
        parts: list[str] = []
        try:
            async for delta in chat.stream(messages):
                parts.append(delta)
                yield _sse("delta", {"delta": delta})
        except ProviderError as exc:
            yield _sse("error", {"code": exc.code, "message": exc.message})
            return
        yield _sse("done", {"text": "".join(parts)})

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
