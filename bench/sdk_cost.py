"""Event-loop time of one provider call through the `openai` SDK: figures, not assertions.

Each call runs against an in-memory transport (nothing leaves the process, no sleeping), so the
time measured is all CPU spent on the calling thread: building and sending the request, reading
and parsing the answer. Compared:

- a streamed chat answer of `--tokens` deltas, through the SDK's typed stream (`create(stream=True)`,
  one pydantic chunk object per delta: how providers.openai read answers before issue 16) and
  through `providers.openai.OpenAIChatModel.stream` (raw response, one `json.loads` per delta);
- a transcription (`OpenAITranscriber.transcribe`, 3 s of audio).

    python -m bench.sdk_cost [--calls 300] [--tokens 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from openai import AsyncOpenAI

from audio.pcm import wav_bytes
from providers.openai import OpenAIChatModel, OpenAITranscriber, _http


def _answer(tokens: int) -> bytes:
    chunks = []
    for i in range(tokens):
        chunks.append({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                       "choices": [{"index": 0, "delta": {"content": f"word{i} "},
                                    "finish_reason": None}]})
    chunks.append({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [], "usage": {"prompt_tokens": 900, "completion_tokens": tokens,
                                            "total_tokens": 900 + tokens}})
    return ("".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n").encode()


def _client(tokens: int) -> AsyncOpenAI:
    body = _answer(tokens)

    def answer(request: _http.Request) -> _http.Response:
        if request.url.path.endswith("/audio/transcriptions"):
            return _http.Response(200, json={"text": "What is the derivative of x squared?"})
        return _http.Response(200, content=body, headers={"content-type": "text/event-stream"})

    http = _http.AsyncClient(transport=_http.MockTransport(answer))
    return AsyncOpenAI(api_key="bench", base_url="http://bench.invalid/v1", http_client=http,
                       max_retries=0)


# a grounded prompt of the usual size: system prompt, 4 passages, a few turns of history
MESSAGES = [{"role": "system", "content": "You are a patient tutor. " * 40},
            {"role": "system", "content": "Course passages:\n" + ("[c1] Some course text. " * 150)},
            *[{"role": r, "content": "An earlier sentence of the conversation. " * 5}
              for r in ("user", "assistant") * 3],
            {"role": "user", "content": "What is the derivative of x squared?"}]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=40)
    args = parser.parse_args()
    client = _client(args.tokens)
    chat = OpenAIChatModel(client, "m")
    stt = OpenAITranscriber(client, "whisper-1")
    wav = wav_bytes(b"\0\0" * 16000 * 3)

    async def typed() -> None:
        stream = await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True})
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    _ = choice.delta.content

    async def adapter() -> None:
        async for _ in chat.stream(MESSAGES):
            pass

    async def transcribe() -> None:
        await stt.transcribe(wav, seconds=3.0)

    results = {}
    for name, call in (("chat, SDK typed stream", typed), ("chat, adapter (raw)", adapter),
                       ("transcription", transcribe)):
        for _ in range(20):  # warm-up: lazy imports, type caches
            await call()
        started = time.process_time()
        for _ in range(args.calls):
            await call()
        results[name] = (time.process_time() - started) / args.calls * 1000
    await client.close()
    for name, ms in results.items():
        print(f"{name:28s} {ms:6.2f} ms of CPU per call ({args.tokens} deltas per answer)")


if __name__ == "__main__":
    asyncio.run(main())
