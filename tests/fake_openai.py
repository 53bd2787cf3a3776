"""A loopback stand-in for an OpenAI-compatible API, speaking the real wire protocol.

`POST /v1/audio/transcriptions` takes the SDK's multipart upload, parses the WAV and answers
with what it received (duration and rate, unless a transcript is queued);
`POST /v1/chat/completions` streams SSE chunks with a set time to first token and inter-token
delay. It fails on demand: queue "500", "timeout", "cut" (connection dropped mid-stream) or
"stall" (stops sending mid-stream). A request with `response_format: {"type": "json_schema"}`
(structured output) is checked as OpenAI checks a strict schema (400 otherwise) and answered with
JSON content: what `Behaviour.structured` queues (a dict/list as JSON; a string verbatim, so
invalid output too; a `Refusal`; a `Truncated` answer; or a callable of the request body
returning one of those), else `Behaviour.structured_reply(body)`, else a generic instance of the
schema (an enum's first value, so a schema naming passage ids cites one).
A request with `tools` (and `tool_choice` not "none") makes tool calls, streamed as OpenAI
streams them (a first fragment per call with its index, id and name, then its JSON arguments in
pieces, then `finish_reason: "tool_calls"`): the calls `Behaviour.tool_calls` queues (one entry
per such request; an unknown name or invalid arguments too), else one per offered tool whose
name the last (user) message mentions, in the order mentioned, with `schema_instance` of its
parameters as arguments; a `tool_choice` naming a function, or "required", forces a call. After
`role: "tool"` messages the reply quotes them ("The tool said: ..."). Tools, `tool_choice` and
the tool-call/tool-answer pairing of the messages are checked as OpenAI checks them (400
otherwise). `max_completion_tokens` (or `max_tokens`) caps the streamed tokens (text tokens or
argument pieces), then `finish_reason: "length"`.
`POST /v1/embeddings` answers deterministic feature-hashing vectors (texts sharing words are
similar), as floats or base64 as asked, after `embedding_latency`. `POST /v1/moderations`
answers as OpenAI's moderation endpoint does (every category, `flagged` when one is true), after
`moderation_latency`: a text holding a phrase of `MODERATION_PHRASES` (case-insensitive) is
flagged with its categories, anything else passes; it fails on demand too
(`moderation_failures`: "500" | "timeout"). Used by
the tests (in-process) and by bench/ (as a subprocess:
`python -m tests.fake_openai --port 9100 --stt-latency 0.3 --ttft 0.4`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import math
import re
import socket
import struct
import time
import uuid
import wave
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


# Test phrases the fake moderation flags, with their categories. The last one is meant for the
# tutor's answers (a test makes the fake chat model say it): students in tests never do.
MODERATION_PHRASES: dict[str, tuple[str, ...]] = {
    "i want to hurt myself": ("self-harm", "self-harm/intent"),
    "i will punch him": ("harassment", "violence"),
    "here is how to make a weapon": ("illicit", "illicit/violent", "violence"),
}
MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)


def moderation_result(text: str) -> dict[str, Any]:
    """One result of the moderation endpoint for `text`, as OpenAI shapes it."""
    lowered = text.lower()
    flagged = {c for phrase, cats in MODERATION_PHRASES.items() if phrase in lowered for c in cats}
    return {"flagged": bool(flagged),
            "categories": {c: c in flagged for c in MODERATION_CATEGORIES},
            "category_scores": {c: 0.99 if c in flagged else 0.001 for c in MODERATION_CATEGORIES},
            "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES}}


class LoopbackServer:
    """A Starlette app served by uvicorn on a free loopback port in the running event loop."""

    app: Starlette

    def __init__(self) -> None:
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server, self._task, self.port = await serve_in_loop(self.app)

    async def stop(self) -> None:
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        await self._task

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass(frozen=True)
class Refusal:
    """A structured-output answer the model declines: `message.refusal` set, `content` null."""

    text: str = "I'm sorry, but I can't help with that request."


@dataclass(frozen=True)
class Truncated:
    """A structured-output answer cut at the token limit: this text, `finish_reason: "length"`."""

    text: str


@dataclass
class Behaviour:
    stt_latency: float = 0.0
    ttft: float = 0.0
    token_delay: float = 0.0
    reply: str | None = None  # None: a short reply quoting the student's last message
    transcripts: list[str] = field(default_factory=list)  # consumed one per transcription
    chat_failures: list[str] = field(default_factory=list)  # consumed one per chat request
    stt_failures: list[str] = field(default_factory=list)  # "500" | "timeout"
    embedding_failures: list[str] = field(default_factory=list)  # "500" | "timeout", per request
    embedding_latency: float = 0.0
    moderation_latency: float = 0.0
    moderation_failures: list[str] = field(default_factory=list)  # "500" | "timeout", per request
    tts_latency: float = 0.0  # time to the first audio bytes
    tts_ms_per_char: float = 60.0  # audio length of the synthesised text (~15 characters/s)
    tts_failures: list[str] = field(default_factory=list)  # "500" | "cut", per request
    # 24 kHz PCM16 to speak with (looped), or a function of the text giving it; None: a soft tone
    tts_audio: bytes | Callable[[str], bytes] | None = None
    hang_seconds: float = 3600.0
    # structured output (response_format json_schema): outputs consumed one per such request,
    # each a dict/list (sent as JSON), a str (sent verbatim: invalid JSON, wrong shapes), a
    # Refusal, a Truncated, or a callable(request body) returning one of those; when none is
    # queued, structured_reply(body), or else a generic instance of the requested schema
    structured: list[Any] = field(default_factory=list)
    structured_reply: Callable[[dict[str, Any]], Any] | None = None
    # tool calls to make, one entry per request offering tools (tool_choice not "none"): each
    # the calls as (function name, arguments JSON), sent as given; [] answers with text
    tool_calls: list[list[tuple[str, str]]] = field(default_factory=list)


class FakeOpenAI(LoopbackServer):
    def __init__(self, behaviour: Behaviour | None = None) -> None:
        super().__init__()
        self.behaviour = behaviour or Behaviour()
        self.transcriptions: list[dict[str, Any]] = []
        self.chats: list[dict[str, Any]] = []
        self.embeddings: list[dict[str, Any]] = []  # model, inputs (count), encoding_format
        self.app = Starlette(routes=[
            Route("/v1/audio/transcriptions", self._transcribe, methods=["POST"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/audio/speech", self._speech, methods=["POST"]),
            Route("/v1/moderations", self._moderations, methods=["POST"]),
        ])
        self.moderations: list[dict[str, Any]] = []  # model, input (the text checked)
        self.speeches: list[dict[str, Any]] = []  # model, voice, input, response_format

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- endpoints -------------------------------------------------------------------------
    async def _transcribe(self, request: Request) -> Response:
        # Latencies count from the request's arrival, so the fake's own parsing is inside them
        # and a benchmark subtracting them measures the server, not this stand-in.
        arrived = time.perf_counter()
        b = self.behaviour
        form = await request.form()
        upload = form["file"]
        data = await upload.read()  # type: ignore[union-attr]
        with wave.open(io.BytesIO(data)) as w:
            rate, frames, channels = w.getframerate(), w.getnframes(), w.getnchannels()
        seconds = frames / rate
        self.transcriptions.append({"model": form.get("model"), "seconds": seconds, "rate": rate,
                                    "channels": channels, "filename": upload.filename,  # type: ignore[union-attr]
                                    "language": form.get("language")})
        failure = b.stt_failures.pop(0) if b.stt_failures else None
        if failure == "500":
            return JSONResponse({"error": {"message": "fake upstream failure", "type": "server_error"}},
                                status_code=500)
        await asyncio.sleep(b.hang_seconds if failure == "timeout"
                            else b.stt_latency - (time.perf_counter() - arrived))
        text = b.transcripts.pop(0) if b.transcripts else f"[{seconds:.2f} s of audio at {rate} Hz]"
        return JSONResponse({"text": text, "usage": {"type": "duration", "seconds": seconds}})

    async def _chat(self, request: Request) -> Response:
        arrived = time.perf_counter()
        b = self.behaviour
        body = await request.json()
        self.chats.append(body)
        failure = b.chat_failures.pop(0) if b.chat_failures else None
        if failure == "500":
            return JSONResponse({"error": {"message": "fake upstream failure", "type": "server_error"}},
                                status_code=500)
        if failure == "timeout":
            await asyncio.sleep(b.hang_seconds)
        problem = request_problem(body)
        if problem:
            message, param = problem
            return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                           "param": param, "code": None}}, status_code=400)
        messages = body["messages"]
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        answers = _trailing_tool_answers(messages)
        if answers:  # after a tool's output the model answers from it, whatever `reply` says
            reply = "The tool said: " + "; ".join(answers)
        elif b.reply is not None:
            reply = b.reply
        else:
            reply = f"Good question! Let us work it out. You said: {last_user}"
        model = body.get("model", "fake")
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            problem = strict_schema_problem(response_format.get("json_schema"))
            if problem:
                return JSONResponse({"error": {"message": problem, "type": "invalid_request_error",
                                               "param": "response_format", "code": None}},
                                    status_code=400)
            output = self._structured_output(body)
            if isinstance(output, Refusal):
                return JSONResponse(_completion(model, None, refusal=output.text,
                                                usage=_usage(body["messages"], output.text)))
            if isinstance(output, Truncated):
                return JSONResponse(_completion(model, output.text, finish_reason="length",
                                                usage=_usage(body["messages"], output.text)))
            reply = output
            if not body.get("stream"):
                return JSONResponse(_completion(model, reply,
                                                usage=_usage(body["messages"], reply)))
        calls = self._tool_calls(body)
        if not body.get("stream"):
            if calls:
                return JSONResponse(_completion(model, None, finish_reason="tool_calls",
                                                tool_calls=calls))
            return JSONResponse(_completion(model, reply))
        if calls:
            head, deltas = None, _tool_call_deltas(calls)
            finish_reason = "tool_calls"
        else:
            head = {"role": "assistant", "content": ""}
            deltas = [{"content": token} for token in re.findall(r"\S+\s*", reply)]
            finish_reason = "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if limit is not None and len(deltas) > limit:
            deltas, finish_reason = deltas[:limit], "length"
        usage = (body.get("stream_options") or {}).get("include_usage")
        stream = self._stream(model, head, deltas, finish_reason, failure, arrived + b.ttft,
                              b.token_delay, _prompt_tokens(messages) if usage else None)
        return StreamingResponse(stream, media_type="text/event-stream")

    def _tool_calls(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The calls to answer a request with, as a message's `tool_calls`: none without tools
        or with `tool_choice: "none"`; else the queued ones, or those the last message names
        when it is the student's (or a system message after the prompt), or the forced one."""
        tools = body.get("tools") or []
        choice = body.get("tool_choice")
        if not tools or choice == "none":
            return []
        b = self.behaviour
        if b.tool_calls:
            named = b.tool_calls.pop(0)
        else:
            functions = {t["function"]["name"]: t["function"] for t in tools}
            if isinstance(choice, dict):
                chosen = [choice["function"]["name"]]
            else:
                # the latest instruction: a user message, or a system message added after the
                # prompt (Pipecat adds typed user text as a system item)
                messages = body["messages"]
                last = messages[-1]
                latest = last.get("role") == "user" or (last.get("role") == "system"
                                                        and len(messages) > 1)
                text = _text(last.get("content")) if latest else ""
                chosen = sorted((n for n in functions if n in text), key=text.index)
                if not chosen and choice == "required":
                    chosen = [tools[0]["function"]["name"]]
            default = {"type": "object", "properties": {}}
            named = [(n, json.dumps(schema_instance(functions[n].get("parameters") or default)))
                     for n in chosen]
        return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                 "function": {"name": name, "arguments": arguments}} for name, arguments in named]

    def _structured_output(self, body: dict[str, Any]) -> str | Refusal | Truncated:
        b = self.behaviour
        output: Any = b.structured.pop(0) if b.structured else b.structured_reply
        if output is None:
            output = schema_instance(body["response_format"]["json_schema"].get("schema") or {})
        if callable(output):
            output = output(body)
        if isinstance(output, (Refusal, Truncated, str)):
            return output
        return json.dumps(output)

    async def _speech(self, request: Request) -> Response:
        """OpenAI's `POST /v1/audio/speech` with `response_format: "pcm"`: 24 kHz 16-bit mono,
        streamed in 100 ms chunks (faster than real time, as the real one) after `tts_latency`."""
        arrived = time.perf_counter()
        b = self.behaviour
        body = await request.json()
        self.speeches.append({k: body.get(k) for k in ("model", "voice", "input",
                                                       "response_format")})
        failure = b.tts_failures.pop(0) if b.tts_failures else None
        if failure == "500":
            return JSONResponse({"error": {"message": "fake upstream failure",
                                           "type": "server_error"}}, status_code=500)
        n = int(len(body.get("input", "")) * b.tts_ms_per_char * 24)  # samples
        source = (b.tts_audio(body.get("input", "")) if callable(b.tts_audio)
                  else b.tts_audio) or _tone(24000)
        reps = n * 2 // len(source) + 1
        pcm = (source * reps)[: n * 2]

        async def chunks() -> AsyncIterator[bytes]:
            await asyncio.sleep(b.tts_latency - (time.perf_counter() - arrived))
            for i in range(0, len(pcm), 4800):
                if failure == "cut" and i:
                    raise ConnectionAbortedError("fake TTS drops the connection mid-stream")
                yield pcm[i: i + 4800]
                await asyncio.sleep(0)

        return StreamingResponse(chunks(), media_type="audio/pcm")

    async def _moderations(self, request: Request) -> Response:
        arrived = time.perf_counter()
        body = await request.json()
        text = body.get("input")
        if not isinstance(text, str):
            return JSONResponse({"error": {"message": "input must be a string (text only here)",
                                           "type": "invalid_request_error"}}, status_code=400)
        model = body.get("model", "omni-moderation-latest")
        self.moderations.append({"model": model, "input": text})
        failures = self.behaviour.moderation_failures
        failure = failures.pop(0) if failures else None
        if failure == "500":
            return JSONResponse({"error": {"message": "fake upstream failure",
                                           "type": "server_error"}}, status_code=500)
        await asyncio.sleep(self.behaviour.hang_seconds if failure == "timeout"
                            else self.behaviour.moderation_latency - (time.perf_counter() - arrived))
        return JSONResponse({"id": "modr-" + uuid.uuid4().hex[:12], "model": model,
                             "results": [moderation_result(text)]})

    async def _embeddings(self, request: Request) -> Response:
        arrived = time.perf_counter()
        body = await request.json()
        texts = [body["input"]] if isinstance(body.get("input"), str) else body.get("input")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return JSONResponse({"error": {"message": "input must be a string or a list of strings",
                                           "type": "invalid_request_error"}}, status_code=400)
        encoding = body.get("encoding_format", "float")
        model = body.get("model", "fake")
        self.embeddings.append({"model": model, "inputs": len(texts), "encoding_format": encoding})
        failures = self.behaviour.embedding_failures
        failure = failures.pop(0) if failures else None
        if failure == "500":
            return JSONResponse({"error": {"message": "fake upstream failure",
                                           "type": "server_error"}}, status_code=500)
        await asyncio.sleep(self.behaviour.hang_seconds if failure == "timeout"
                            else self.behaviour.embedding_latency - (time.perf_counter() - arrived))
        data = []
        for i, text in enumerate(texts):
            vector = fake_embedding(text)
            # base64 is what the SDK asks for by default: little-endian float32, which it decodes.
            value: Any = (base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                          if encoding == "base64" else vector)
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(len(t.split()) for t in texts)
        return JSONResponse({"object": "list", "data": data, "model": model,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _stream(self, model: str, head: dict[str, Any] | None,
                      deltas: list[dict[str, Any]], finish_reason: str, failure: str | None,
                      first_token_at: float, token_delay: float,
                      prompt_tokens: int | None) -> AsyncIterator[bytes]:
        """`head` (the role, for a text answer) at once, then each delta (a token, or a piece of
        a tool call) from the time of the first token on, then `finish_reason`."""
        b = self.behaviour
        if head is not None:
            yield _chunk(model, head)
        await asyncio.sleep(first_token_at - time.perf_counter())
        for i, delta in enumerate(deltas):
            if i and token_delay:
                await asyncio.sleep(token_delay)
            if i == 2 and failure == "cut":
                raise ConnectionAbortedError("fake provider drops the connection mid-stream")
            if i == 2 and failure == "stall":
                await asyncio.sleep(b.hang_seconds)
            yield _chunk(model, delta)
        yield _chunk(model, {}, finish_reason=finish_reason)
        if prompt_tokens is not None:  # OpenAI's last chunk with stream_options.include_usage
            payload = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                       "model": model, "choices": [],
                       "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(deltas),
                                 "total_tokens": prompt_tokens + len(deltas)}}
            yield f"data: {json.dumps(payload)}\n\n".encode()
        yield b"data: [DONE]\n\n"


def _tone(samples: int) -> bytes:
    """One second of a soft 220 Hz tone: the fake's voice when no speech is given."""
    return struct.pack(f"<{samples}h", *(int(3000 * math.sin(2 * math.pi * 220 * i / 24000))
                                          for i in range(samples)))


EMBEDDING_DIMENSIONS = 256


def _stem(word: str) -> str:
    """A crude stem, so that "divide", "divides", "dividing" and "divided" all give "divid"."""
    if word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        word = word[:-2]  # classes, boxes
    else:
        for suffix in ("ing", "ed", "s"):
            if len(word) > len(suffix) + 2 and word.endswith(suffix) and not word.endswith("ss"):
                word = word[:-len(suffix)]
                break
    return word[:-1] if len(word) > 4 and word.endswith("e") else word


def fake_embedding(text: str) -> list[float]:
    """Signed feature hashing of lower-cased, crudely stemmed words into 256 dimensions,
    L2-normalised: deterministic across processes (hashlib, not the salted `hash`), and texts
    that share words point the same way."""
    vector = [0.0] * EMBEDDING_DIMENSIONS
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        word = _stem(word)
        digest = hashlib.sha256(word.encode()).digest()
        index = int.from_bytes(digest[:4], "little") % EMBEDDING_DIMENSIONS
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if not norm:  # no words at all: still a unit vector, as a real model would give
        return [1.0] + [0.0] * (EMBEDDING_DIMENSIONS - 1)
    return [v / norm for v in vector]


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    payload = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
               "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    return f"data: {json.dumps(payload)}\n\n".encode()


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """A stand-in token count: one per word of every message."""
    return sum(len(str(m.get("content", "")).split()) for m in messages)


def _completion(model: str, text: str | None, *, refusal: str | None = None,
                finish_reason: str = "stop", usage: dict[str, int] | None = None,
                tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if refusal is not None:
        message["refusal"] = refusal
    if tool_calls:
        message["tool_calls"] = tool_calls
    completion = {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                  "model": model, "choices": [{"index": 0, "finish_reason": finish_reason,
                                               "message": message}]}
    if usage is not None:
        completion["usage"] = usage
    return completion


def _usage(messages: list[dict[str, Any]], output: str) -> dict[str, int]:
    prompt, completion = _prompt_tokens(messages), len(output.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


# -- tool calls ----------------------------------------------------------------------------------

_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ARGUMENT_PIECE = 8  # characters of a call's JSON arguments per streamed fragment


def _text(content: Any) -> str:
    """A message's text: its content string, or its text parts joined."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def _trailing_tool_answers(messages: list[dict[str, Any]]) -> list[str]:
    """The contents of the `role: "tool"` messages that end the conversation, in order."""
    answers: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        answers.append(_text(message.get("content")))
    return answers[::-1]


def _tool_call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stream deltas of `calls` as OpenAI sends them: per call, a first fragment with its
    index, id, type and name (and the role, for the first call), then its arguments in pieces."""
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        first: dict[str, Any] = {"tool_calls": [{
            "index": index, "id": call["id"], "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""}}]}
        if not index:
            first = {"role": "assistant", "content": None, **first}
        deltas.append(first)
        arguments = call["function"]["arguments"]
        for i in range(0, len(arguments), _ARGUMENT_PIECE):
            deltas.append({"tool_calls": [{"index": index, "function": {
                "arguments": arguments[i: i + _ARGUMENT_PIECE]}}]})
    return deltas


def request_problem(body: dict[str, Any]) -> tuple[str, str | None] | None:
    """What OpenAI would refuse (HTTP 400) in a chat request's tools, tool choice, token caps
    and tool-call/tool-answer pairing, as (message, param), or None."""
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        return ("Setting 'max_tokens' and 'max_completion_tokens' at the same time is not "
                "supported.", "max_tokens")
    tools = body.get("tools")
    choice = body.get("tool_choice")
    names: list[str] = []
    for i, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            return f"Missing required parameter: 'tools[{i}].function'.", f"tools[{i}].function"
        if tool.get("type") != "function":
            return (f"Invalid value: '{tool.get('type')}'. Supported values are: 'function'.",
                    f"tools[{i}].type")
        name = function.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
            return (f"Invalid 'tools[{i}].function.name': string does not match pattern. "
                    "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                    f"tools[{i}].function.name")
        names.append(name)
    if choice is not None:
        if not tools:
            return ("Invalid value for 'tool_choice': 'tool_choice' is only allowed when "
                    "'tools' are specified.", "tool_choice")
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            if choice.get("type") != "function" or name not in names:
                return (f"Invalid 'tool_choice': no function named '{name}' in 'tools'.",
                        "tool_choice")
        elif choice not in ("none", "auto", "required"):
            return (f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and "
                    "'required'.", "tool_choice")
    calls: list[str] | None = None  # the ids the current run of tool messages answers
    pending: list[str] = []  # those not answered yet
    for i, message in enumerate(body.get("messages") or []):
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            for key in ("tool_call_id", "content"):
                if message.get(key) is None:
                    return (f"Missing required parameter: 'messages[{i}].{key}'.",
                            f"messages[{i}].{key}")
            if calls is None:
                return ("Invalid parameter: messages with role 'tool' must be a response to a "
                        "preceeding message with 'tool_calls'.", f"messages.[{i}].role")
            if call_id not in calls:
                return (f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                        "'tool_calls' of previous message.", f"messages.[{i}].tool_call_id")
            if call_id in pending:
                pending.remove(call_id)
            continue
        if pending:
            return ("An assistant message with 'tool_calls' must be followed by tool messages "
                    "responding to each 'tool_call_id'. The following tool_call_ids did not "
                    f"have response messages: {', '.join(pending)}", f"messages.[{i}].role")
        calls = None
        if role != "assistant" or not message.get("tool_calls"):
            continue
        for j, call in enumerate(message["tool_calls"]):
            where = f"messages[{i}].tool_calls[{j}]"
            for key in ("id", "type", "function"):
                if key not in call:
                    return f"Missing required parameter: '{where}.{key}'.", f"{where}.{key}"
            if not isinstance(call["function"].get("arguments"), str):
                return (f"Missing required parameter: '{where}.function.arguments'.",
                        f"{where}.function.arguments")
        calls = [call["id"] for call in message["tool_calls"]]
        pending = list(calls)
    if pending:
        return ("An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(pending)}", "messages")
    return None


# -- structured output ---------------------------------------------------------------------------

_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PASSAGE_ID = re.compile(r"\[(c\d+)\]")


def strict_schema_problem(spec: Any) -> str | None:
    """What OpenAI would refuse (HTTP 400) in a `json_schema` response format, or None: a name
    of 1-64 letters, digits, `_` or `-`; an object schema at the root; with `strict`, every
    object closed (`additionalProperties: false`) and requiring each of its properties."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) \
            or not _SCHEMA_NAME.match(spec["name"]):
        return "Invalid 'response_format.json_schema.name': 1-64 of a-z, A-Z, 0-9, _ and -."
    schema = spec.get("schema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return (f"Invalid schema for response_format '{spec['name']}': schema must be a JSON "
                "Schema of 'type: \"object\"'.")
    if not spec.get("strict"):
        return None

    def walk(node: Any, context: tuple[str, ...]) -> str | None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                if (found := walk(item, (*context, str(i)))) is not None:
                    return found
            return None
        if not isinstance(node, dict):
            return None
        where = f"Invalid schema for response_format '{spec['name']}': In context={context}, "
        kind = node.get("type")
        if "properties" in node or kind == "object" or (isinstance(kind, list)
                                                        and "object" in kind):
            if node.get("additionalProperties") is not False:
                return where + "'additionalProperties' is required to be supplied and to be false."
            missing = [k for k in node.get("properties", {}) if k not in node.get("required", [])]
            if missing:
                return (where + "'required' is required to be supplied and to be an array "
                        f"including every key in properties. Missing '{missing[0]}'.")
        for key in ("properties", "$defs", "definitions"):
            for name, sub in (node.get(key) or {}).items():
                if (found := walk(sub, (*context, key, name))) is not None:
                    return found
        for key in ("items", "anyOf"):
            if key in node and (found := walk(node[key], (*context, key))) is not None:
                return found
        return None

    return walk(schema, ())


def schema_instance(schema: dict[str, Any]) -> Any:
    """A deterministic instance of a (strict) JSON schema: every property; an enum's first
    value; for a nullable type, the other one; arrays of minItems items (at least one, at most
    maxItems); strings "<property> <n>", distinct."""
    counter = [0]

    def make(node: dict[str, Any], name: str) -> Any:
        if "enum" in node:
            return node["enum"][0] if node["enum"] else None
        if "const" in node:
            return node["const"]
        if "anyOf" in node:
            return make(node["anyOf"][0], name)
        kind = node.get("type", "string")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object":
            return {k: make(v, k) for k, v in (node.get("properties") or {}).items()}
        if kind == "array":
            count = max(node.get("minItems", 1), 1)
            if "maxItems" in node:
                count = min(count, node["maxItems"])
            return [make(node.get("items") or {}, name) for _ in range(count)]
        if kind == "integer":
            return int(node.get("minimum", 0))
        if kind == "number":
            return float(node.get("minimum", 0))
        if kind == "boolean":
            return False
        if kind == "null":
            return None
        counter[0] += 1
        return f"{name} {counter[0]}"

    return make(schema, "value")


def prompt_passage_ids(body: dict[str, Any]) -> list[str]:
    """The course passage ids (`[c12]`) a chat request's messages show the model, in order."""
    seen: dict[str, None] = {}
    for message in body.get("messages", []):
        for pid in _PASSAGE_ID.findall(str(message.get("content") or "")):
            seen.setdefault(pid, None)
    return list(seen)


def structured_schema(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema a structured-output request asked for."""
    return body["response_format"]["json_schema"]["schema"]


async def serve_in_loop(app: Any, **options: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """Run `app` under uvicorn in the current event loop on a free loopback port."""
    # IPPROTO_TCP spelled out: asyncio only turns Nagle off on accepted sockets whose protocol
    # says TCP, and with Nagle on every loopback request stalls ~40 ms on a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    return server, task, sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--stt-latency", type=float, default=0.3)
    parser.add_argument("--ttft", type=float, default=0.4)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--tts-latency", type=float, default=0.0)
    parser.add_argument("--tts-ms-per-char", type=float, default=60.0)
    parser.add_argument("--embedding-latency", type=float, default=0.0)
    parser.add_argument("--moderation-latency", type=float, default=0.0)
    args = parser.parse_args()
    fake = FakeOpenAI(Behaviour(stt_latency=args.stt_latency, ttft=args.ttft,
                                token_delay=args.token_delay, tts_latency=args.tts_latency,
                                tts_ms_per_char=args.tts_ms_per_char,
                                embedding_latency=args.embedding_latency,
                                moderation_latency=args.moderation_latency))
    # Idle connections are kept longer than the server's client keeps them (60 s), as real
    # providers do, so the client never reuses a connection this side is just closing.
    uvicorn.run(fake.app, host=args.host, port=args.port, log_level="warning",
                timeout_keep_alive=120)


if __name__ == "__main__":
    main()
