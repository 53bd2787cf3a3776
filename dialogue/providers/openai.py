"""Transcription and streaming chat over the official `openai` SDK (`AsyncOpenAI`).

Any OpenAI-compatible server works (OpenAI, OpenRouter, Ollama, vLLM): only the base URL, key
and model differ. One client per base URL per process, so HTTP connections are pooled across
sessions. SDK exceptions are mapped to `ProviderError` codes here and nowhere else.
"""

from __future__ import annotations

from typing import AsyncIterator

import openai
from openai import AsyncOpenAI

from . import ProviderError, Transcript

_WAV_HEADER = 44


def make_client(*, api_key: str, base_url: str | None, timeout: float, connect_timeout: float,
                max_retries: int) -> AsyncOpenAI:
    return AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        timeout=openai.Timeout(timeout, connect=connect_timeout),
        max_retries=max_retries,
    )


def _provider_error(exc: BaseException, what: str, *, streaming: bool = False) -> ProviderError:
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError("provider_timeout", f"{what} provider did not answer in time")
    if isinstance(exc, openai.APIStatusError):
        return ProviderError(
            "provider_error", f"{what} provider answered HTTP {exc.status_code}: {exc.message}"
        )
    if isinstance(exc, openai.APIConnectionError) and not streaming:
        return ProviderError("provider_unreachable", f"{what} provider could not be reached")
    return ProviderError("provider_stream_interrupted", f"{what} provider stream broke: {exc!r}")


class OpenAITranscriber:
    def __init__(self, client: AsyncOpenAI, model: str) -> None:
        self.client = client
        self.model = model

    async def transcribe(
        self, wav: bytes, *, model: str | None = None, language: str | None = None
    ) -> Transcript:
        extra = {"language": language} if language else {}
        try:
            result = await self.client.audio.transcriptions.create(
                model=model or self.model, file=("turn.wav", wav, "audio/wav"), **extra
            )
        except openai.OpenAIError as exc:
            raise _provider_error(exc, "transcription") from exc
        seconds = (len(wav) - _WAV_HEADER) / 2 / 16000
        return Transcript(result.text, seconds)


class OpenAIChatModel:
    def __init__(self, client: AsyncOpenAI, model: str, max_tokens: int | None = None) -> None:
        self.client = client
        self.model = model
        self.max_tokens = max_tokens

    async def stream(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        extra = {"max_tokens": self.max_tokens} if self.max_tokens else {}
        finished = streaming = False
        try:
            stream = await self.client.chat.completions.create(
                model=self.model, messages=messages, stream=True, **extra  # type: ignore[arg-type]
            )
            streaming = True  # from here on a broken connection means a cut stream
            async with stream:
                async for chunk in stream:
                    for choice in chunk.choices:
                        if choice.delta.content:
                            yield choice.delta.content
                        if choice.finish_reason:
                            finished = True
        except ProviderError:
            raise
        except Exception as exc:  # SDK errors, and transport errors some versions leave raw
            raise _provider_error(exc, "chat", streaming=streaming) from exc
        if not finished:
            # A stream that stops without a finish_reason was cut, even if the socket closed cleanly.
            raise ProviderError("provider_stream_interrupted", "chat provider stream ended early")
