"""One small `Protocol` per capability, and the values that cross them.

An adapter (`providers.openai`, the test fakes, a future vendor) satisfies a protocol by shape;
nothing here knows a vendor. Every method raises `ProviderError` (`providers.errors`) on failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Protocol

import numpy as np


@dataclass(frozen=True)
class Transcript:
    text: str
    seconds: float  # audio duration billed / transcribed


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer, yielded last by `ChatModel.stream` when the provider reports them."""

    tokens_in: int
    tokens_out: int


@dataclass(frozen=True)
class ToolCallDelta:
    """A fragment of a streamed tool call: `index` is the call's position among the answer's
    calls; `call_id` and `name` come with the first fragment of a call (None after);
    `arguments` is a piece of its JSON arguments (may be "")."""

    index: int
    call_id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True)
class Truncated:
    """Yielded by `ChatModel.stream` when the answer stopped at its token cap (finish reason
    `length`): what came before it is all there is."""


@dataclass(frozen=True)
class JsonReply:
    """A structured-output answer (`ChatModel.complete_json`): the model's JSON text as it came,
    not yet parsed or validated (the caller does both, and may ask again with the error)."""

    text: str
    usage: Usage | None = None
    finish_reason: str | None = None  # "length": cut at the token limit, so likely invalid


class Transcriber(Protocol):
    async def transcribe(
        self, wav: bytes, *, seconds: float, model: str | None = None,
        language: str | None = None
    ) -> Transcript:
        """`wav`: PCM16 mono in a WAV container, `seconds` long (the caller knows; nobody
        reads the header back)."""
        ...


class ChatModel(Protocol):
    def stream(self, messages: list[dict[str, Any]], *, model: str | None = None,
               tools: list[dict[str, Any]] | None = None,
               tool_choice: str | dict[str, Any] | None = None,
               max_tokens: int | None = None) -> AsyncIterator[str | ToolCallDelta | Usage | Truncated]:
        """Yield text deltas and `ToolCallDelta` fragments as they are generated, then a `Usage`
        if known; raise ProviderError on failure. `tools` and `tool_choice` are in
        chat-completions shape (`{"type": "function", "function": {"name", "description",
        "parameters"}}`; `"auto" | "none" | "required" | {"type": "function", "function":
        {"name": ...}}`); `messages` may hold assistant messages with `tool_calls` (content
        possibly None) and `role: "tool"` answers with their `tool_call_id`. `max_tokens` caps
        this answer (the adapter's own default otherwise)."""
        ...

    async def complete_json(self, messages: list[dict[str, str]], *, name: str,
                            schema: dict[str, Any], model: str | None = None,
                            max_tokens: int | None = None,
                            timeout: float | None = None) -> JsonReply:
        """One non-streamed answer constrained to the JSON `schema` (structured output, strict);
        raise ProviderError on failure, with code `provider_refused` when the model refuses."""
        ...


class Synthesizer(Protocol):
    """Text-to-speech."""

    def stream(self, text: str, *, voice: str | None = None) -> AsyncIterator[bytes]:
        """Yield the spoken text as PCM16 mono 24 kHz, in chunks of whole samples, as it is
        synthesised; raise ProviderError on failure."""
        ...


@dataclass(frozen=True)
class Verdict:
    """A moderation check's answer: `flagged`, and the categories that flagged it (the
    provider's names, e.g. "self-harm/intent", "violence"), sorted."""

    flagged: bool
    categories: tuple[str, ...] = ()


class Moderator(Protocol):
    """Content moderation (student's words in, tutor's sentences out)."""

    async def check(self, text: str) -> Verdict:
        """Whether `text` is flagged, and for what; raise ProviderError on failure."""
        ...


class TurnModel(Protocol):
    """End of turn: has the student finished, judged from how the turn so far sounds."""

    name: str  # reported on /healthz

    async def complete(self, pcm: bytes) -> float:
        """The probability (0..1) that the turn is complete, from its audio so far (PCM16 mono
        16 kHz, ending in the pause being judged); raise ProviderError on failure."""
        ...


class Embedder(Protocol):
    model: str  # stored with each vector: vectors of different models must never be compared

    async def embed(self, texts: list[str]) -> np.ndarray:
        """float32, shape (len(texts), d), rows L2-normalised (so a dot product is the cosine);
        raise ProviderError on failure."""
        ...


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as `Embedder.embed` promises them.
    OpenAI's vectors already are; other compatible servers' may not be."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


@dataclass(frozen=True)
class Providers:
    """The capabilities a voice session and the REST routes answer with (embeddings are the
    retriever's own: `rag.search.Retriever`)."""

    transcriber: Transcriber | None
    chat: ChatModel | None
    problem: str | None = None  # why a provider is missing: told to clients, never a traceback
    speech: Synthesizer | None = None  # text-to-speech, for spoken answers
    moderator: Moderator | None = None  # None: moderation is off (docs/tutoring.md)
    turn_model: TurnModel | None = None  # None: semantic_vad ends turns on silence alone
