"""Transcription, streaming chat and structured output, speech, embeddings and moderation over
the official `openai` SDK (`AsyncOpenAI`): one adapter per protocol of `providers.protocols`.

Any OpenAI-compatible server works (OpenAI, OpenRouter, Ollama, vLLM): only the base URL, key
and model differ. A client (`make_client`) is made once and shared by every session, so its HTTP
connections are pooled across them. SDK exceptions become `ProviderError`s through
`providers.errors.from_openai` only.

The chat stream is requested through the SDK but its server-sent events are read as plain JSON
(`_sse_json`), and its messages go as `extra_body`: the SDK's per-token pydantic objects and its
per-message type-directed copy were most of a turn's CPU (docs/benchmarks.md, issue 16).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator

import numpy as np
import openai
from openai import AsyncOpenAI

from audio.pcm import SPEECH_RATE, wav_bytes

from .errors import ProviderError, from_openai
from .protocols import (JsonReply, ToolCallDelta, Transcript, Truncated, Usage, Verdict,
                        normalise)

try:  # the HTTP library the SDK is built on (httpx2 in openai 3.x)
    import httpx2 as _http
except ImportError:  # pragma: no cover
    import httpx as _http  # type: ignore[no-redef]

log = logging.getLogger("tutor.providers")


def make_client(*, api_key: str, base_url: str | None, timeout: float, connect_timeout: float,
                max_retries: int, keepalive_s: float = 60.0) -> AsyncOpenAI:
    # Idle connections are kept longer than httpx's 5 s: a student's turns are several seconds
    # apart, and a new connection (a TLS handshake with a real provider) costs tens of ms
    # in the middle of a turn. bench/ showed the p99 tail this removes.
    http = openai.DefaultAsyncHttpxClient(
        limits=_http.Limits(max_connections=1000, max_keepalive_connections=200,
                            keepalive_expiry=keepalive_s),
    )
    return AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        timeout=openai.Timeout(timeout, connect=connect_timeout),
        max_retries=max_retries,
        http_client=http,
    )


class OpenAITranscriber:
    def __init__(self, client: AsyncOpenAI, model: str) -> None:
        self.client = client
        self.model = model

    async def transcribe(
        self, wav: bytes, *, seconds: float, model: str | None = None,
        language: str | None = None
    ) -> Transcript:
        extra = {"language": language} if language else {}
        try:
            result = await self.client.audio.transcriptions.create(
                model=model or self.model, file=("turn.wav", wav, "audio/wav"), **extra
            )
        except openai.OpenAIError as exc:
            raise from_openai(exc, "transcription") from exc
        return Transcript(result.text, seconds)


class OpenAIChatModel:
    def __init__(self, client: AsyncOpenAI, model: str, max_tokens: int | None = None,
                 stream_usage: bool = True) -> None:
        self.client = client
        self.model = model
        self.max_tokens = max_tokens
        self.stream_usage = stream_usage  # some compatible servers refuse stream_options

    async def stream(self, messages: list[dict[str, Any]], *, model: str | None = None,
                     tools: list[dict[str, Any]] | None = None,
                     tool_choice: str | dict[str, Any] | None = None,
                     max_tokens: int | None = None) -> AsyncIterator[str | ToolCallDelta | Usage | Truncated]:
        # A per-answer cap goes as `max_completion_tokens` (OpenAI's name; its reasoning models
        # refuse `max_tokens`); the configured default keeps `max_tokens`, which every
        # compatible server (Ollama, LM Studio) honours. Never both: OpenAI refuses the pair.
        extra: dict[str, Any] = ({"max_completion_tokens": max_tokens} if max_tokens
                                 else {"max_tokens": self.max_tokens} if self.max_tokens else {})
        if tools:  # tool_choice without tools is a 400 at OpenAI
            extra["tools"] = tools
            if tool_choice is not None:
                extra["tool_choice"] = tool_choice
        if self.stream_usage:
            extra["stream_options"] = {"include_usage": True}
        calls = _ToolCalls()
        finished = streaming = False
        try:
            # The SDK makes the request (its parameters, headers, retries, status errors); the
            # SSE body is read here as plain JSON: building the SDK's pydantic chunk objects
            # cost ~0.1 ms per token, most of an answer's CPU (docs/benchmarks.md). The
            # messages go as `extra_body`, which the SDK sends as they are: its type-directed
            # copy of every message (an identity for plain JSON like ours) cost ~1.5 ms per
            # request, growing with the conversation.
            async with self.client.chat.completions.with_streaming_response.create(
                model=model or self.model, messages=[], extra_body={"messages": messages},
                stream=True, **extra  # type: ignore[arg-type]
            ) as response:
                streaming = True  # from here on a broken connection means a cut stream
                async for chunk in _sse_json(response.http_response):
                    usage = chunk.get("usage")
                    if usage is not None:
                        yield Usage(usage.get("prompt_tokens") or 0,
                                    usage.get("completion_tokens") or 0)
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        content = delta.get("content")
                        if content:
                            yield content
                        for call in delta.get("tool_calls") or ():
                            yield calls.fragment(call)
                        reason = choice.get("finish_reason")
                        if reason:
                            finished = True
                            if reason == "length":
                                yield Truncated()
        except ProviderError:
            raise
        except Exception as exc:  # SDK errors, and transport errors some versions leave raw
            raise from_openai(exc, "chat", streaming=streaming) from exc
        if not finished:
            # A stream that stops without a finish_reason was cut, even if the socket closed cleanly.
            raise ProviderError("provider_stream_interrupted", "chat provider stream ended early")

    async def complete_json(self, messages: list[dict[str, str]], *, name: str,
                            schema: dict[str, Any], model: str | None = None,
                            max_tokens: int | None = None,
                            timeout: float | None = None) -> JsonReply:
        """A non-streamed completion with `response_format: json_schema` (strict). The JSON text
        is returned as it came; a refusal (`message.refusal`, or `finish_reason:
        content_filter`) raises `provider_refused`. `timeout` replaces the client's read timeout
        for this request: a non-streamed answer arrives all at once, so its wait grows with its
        length (the connect timeout stays the client's)."""
        extra: dict[str, Any] = {}
        if max_tokens or self.max_tokens:
            extra["max_tokens"] = max_tokens or self.max_tokens
        if timeout is not None:
            connect = getattr(self.client.timeout, "connect", None)
            extra["timeout"] = openai.Timeout(timeout, connect=connect)
        try:
            completion = await self.client.chat.completions.create(
                model=model or self.model, messages=messages,  # type: ignore[arg-type]
                response_format={"type": "json_schema",
                                 "json_schema": {"name": name, "strict": True, "schema": schema}},
                **extra)
        except Exception as exc:  # SDK errors, and transport errors some versions leave raw
            raise from_openai(exc, "chat") from exc
        usage = (Usage(completion.usage.prompt_tokens, completion.usage.completion_tokens)
                 if completion.usage is not None else None)
        if not completion.choices:
            return JsonReply("", usage, None)
        choice = completion.choices[0]
        refusal = getattr(choice.message, "refusal", None)
        if refusal or choice.finish_reason == "content_filter":
            raise ProviderError("provider_refused",
                                f"the chat model declined: {refusal or 'content filtered'}")
        return JsonReply(choice.message.content or "", usage, choice.finish_reason)


class _ToolCalls:
    """Numbers the tool calls of one streamed answer as OpenAI does (0, 1, ...), whatever the
    server sent: a call is known by its id, so a server that reuses `index` 0 for every parallel
    call (Ollama) or repeats the id on each fragment still gives one call per id; a fragment
    without an id continues the call last started at its index, and a call that never had an
    id gets one, since the answer to it must name it."""

    __slots__ = ("by_id", "by_index")

    def __init__(self) -> None:
        self.by_id: dict[str, int] = {}
        self.by_index: dict[int, int] = {}  # the server's index -> ours

    def fragment(self, call: dict[str, Any]) -> ToolCallDelta:
        """One `delta.tool_calls[]` entry of a streamed chunk, as JSON."""
        function = call.get("function") or None
        arguments = (function.get("arguments") if function is not None else None) or ""
        their_index = call.get("index") or 0
        call_id = call.get("id")
        known = self.by_id.get(call_id) if call_id else self.by_index.get(their_index)
        if known is not None:
            return ToolCallDelta(known, None, None, arguments)
        call_id = call_id or f"call_{uuid.uuid4().hex[:24]}"
        index = self.by_id[call_id] = self.by_index[their_index] = len(self.by_id)
        return ToolCallDelta(index, call_id, function.get("name") if function is not None else None,
                             arguments)


async def _lines(response: Any) -> AsyncIterator[str]:
    try:
        async for line in response.aiter_lines():
            yield line
    except _http.TimeoutException as exc:
        raise openai.APITimeoutError(request=response.request) from exc
    except _http.RequestError as exc:
        raise openai.APIConnectionError(request=response.request) from exc


async def _sse_json(response: Any) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of a chat completion's server-sent events, as the SDK's `AsyncStream`
    reads them: `data:` lines (several joined by newlines) make an event at a blank line, up to
    `[DONE]` (the rest of the body is read, so the connection goes back to the pool); an event
    with an `error` raises `openai.APIError` with its message; a read timeout raises
    `openai.APITimeoutError` and a broken connection `openai.APIConnectionError`, as there."""
    data: list[str] = []
    done = False
    async for line in _lines(response):
        if line:
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
            continue  # event:, id:, retry: and comments say nothing a chat stream uses
        if not data or done:
            data.clear()
            continue
        text = "\n".join(data)
        data.clear()
        if text.startswith("[DONE]"):
            done = True
            continue
        event = json.loads(text)
        if isinstance(event, dict) and event.get("error"):
            error = event["error"]
            message = error.get("message") if isinstance(error, dict) else None
            raise openai.APIError(message if isinstance(message, str) and message
                                  else "An error occurred during streaming",
                                  request=response.request, body=error)
        yield event
    if data and not done:  # a last event without its blank line
        text = "\n".join(data)
        if not text.startswith("[DONE]"):
            event = json.loads(text)
            if isinstance(event, dict) and not event.get("error"):
                yield event


async def warm_up() -> float:
    """Run one transcription and one streamed chat through the SDK against an in-memory
    transport (nothing leaves the process), so its lazy imports and type caches are built at
    startup rather than in the first student's turn (~35 ms saved, see bench/). Returns ms."""
    started = time.perf_counter()

    def answer(request: _http.Request) -> _http.Response:
        if request.url.path.endswith("/audio/transcriptions"):
            return _http.Response(200, json={"text": ""})
        chunk = ('data: {"id": "w", "object": "chat.completion.chunk", "created": 0, "model": "w", '
                 '"choices": [{"index": 0, "delta": {"content": "w"}, "finish_reason": "stop"}]}'
                 "\n\ndata: [DONE]\n\n")
        return _http.Response(200, content=chunk.encode(),
                              headers={"content-type": "text/event-stream"})

    try:
        async with _http.AsyncClient(transport=_http.MockTransport(answer)) as http:
            client = AsyncOpenAI(api_key="warm-up", base_url="http://warm-up.invalid/v1",
                                 http_client=http, max_retries=0)
            await OpenAITranscriber(client, "w").transcribe(wav_bytes(b"\0\0" * 160), seconds=0.01)
            async for _ in OpenAIChatModel(client, "w").stream([{"role": "user", "content": "w"}]):
                pass
    except Exception:  # best effort: a warm-up must never stop the server from starting
        log.warning("provider warm-up failed", exc_info=True)
    return (time.perf_counter() - started) * 1000


class OpenAISpeech:
    """Text-to-speech through `audio.speech` with raw PCM output (24 kHz, 16-bit, mono),
    streamed: chunks are yielded as they arrive, so playback starts before synthesis ends."""

    RATE = SPEECH_RATE

    def __init__(self, client: AsyncOpenAI, model: str, voice: str, chunk_bytes: int = 4800
                 ) -> None:
        self.client = client
        self.model = model
        self.voice = voice
        self.chunk_bytes = chunk_bytes  # 100 ms at 24 kHz

    async def stream(self, text: str, *, voice: str | None = None) -> AsyncIterator[bytes]:
        rest = b""
        try:
            async with self.client.audio.speech.with_streaming_response.create(
                model=self.model, voice=voice or self.voice, input=text,  # type: ignore[arg-type]
                response_format="pcm",
            ) as response:
                async for chunk in response.iter_bytes(self.chunk_bytes):
                    data = rest + chunk
                    cut = len(data) - len(data) % 2  # whole samples only
                    rest = data[cut:]
                    if cut:
                        yield data[:cut]
        except ProviderError:
            raise
        except Exception as exc:
            raise from_openai(exc, "speech", streaming=True) from exc


class OpenAIEmbedder:
    """Embeddings through `embeddings.create`, in batches of `batch_size` texts with at most
    `max_in_flight` requests at once; rows come back normalised, whatever the server sent."""

    def __init__(self, client: AsyncOpenAI, model: str, batch_size: int = 64,
                 max_in_flight: int = 4) -> None:
        if batch_size < 1 or max_in_flight < 1:
            raise ValueError("batch_size and max_in_flight must be at least 1")
        self.client = client
        self.model = model
        self.batch_size = batch_size
        # A few requests at once make a large document quicker without tripping a provider's
        # rate limit, or taking every pooled connection from live voice sessions.
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        batches = [texts[i:i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        tasks = [asyncio.ensure_future(self._batch(batch)) for batch in batches]
        try:
            rows = await asyncio.gather(*tasks)
        except BaseException:
            # One failed batch fails the whole document: stop paying for the others.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        if len({r.shape[1] for r in rows}) != 1:
            raise ProviderError("provider_error",
                                "embedding provider changed dimensions mid-document")
        return normalise(np.concatenate(rows))

    async def _batch(self, texts: list[str]) -> np.ndarray:
        async with self._in_flight:
            try:
                response = await self.client.embeddings.create(model=self.model, input=texts)
            except openai.OpenAIError as exc:
                raise from_openai(exc, "embedding") from exc
        data = sorted(response.data, key=lambda d: d.index)  # the API does not promise order
        if len(data) != len(texts):
            raise ProviderError("provider_error", f"embedding provider returned {len(data)} "
                                f"vectors for {len(texts)} texts")
        return np.asarray([d.embedding for d in data], dtype=np.float32)


class OpenAIModerator:
    """Moderation through `moderations.create` (`omni-moderation-latest` by default). A check is
    short and on a turn's path, so it has its own read timeout (`timeout_s`), shorter than the
    client's: past it the check fails like any provider error and the caller's fail-open or
    fail-closed setting decides."""

    def __init__(self, client: AsyncOpenAI, model: str, timeout_s: float | None = None) -> None:
        self.client = client
        self.model = model
        self.timeout_s = timeout_s

    async def check(self, text: str) -> Verdict:
        extra: dict[str, Any] = {}
        if self.timeout_s is not None:
            extra["timeout"] = openai.Timeout(self.timeout_s,
                                              connect=getattr(self.client.timeout, "connect", None))
        try:
            response = await self.client.moderations.create(model=self.model, input=text, **extra)
        except Exception as exc:  # SDK errors, and transport errors some versions leave raw
            raise from_openai(exc, "moderation") from exc
        if not response.results:
            raise ProviderError("provider_error", "moderation provider returned no result")
        result = response.results[0]
        flags = result.categories.model_dump(by_alias=True)
        categories = tuple(sorted(name for name, on in flags.items() if on))
        return Verdict(bool(result.flagged), categories)
