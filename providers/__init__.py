"""The AI services the tutor calls: a provider is whatever answers one capability over the network.

Each capability is one small protocol (`protocols`): `Transcriber` (speech to text), `ChatModel`
(streamed answers with tool calls, and structured JSON output), `Synthesizer` (text to speech)
and `Embedder` (text to vectors, for retrieval); a turn model or a moderation check joins them
the same way. `openai` adapts the official `openai` SDK to each of them, so any
OpenAI-compatible server works. Failures cross as `ProviderError` with a protocol error code;
`errors.from_openai` is the one place the SDK's exceptions are mapped to those codes.
"""

from .errors import ProviderError
from .protocols import (ChatModel, Embedder, JsonReply, Providers, Synthesizer, ToolCallDelta,
                        Transcriber, Transcript, Truncated, Usage, normalise)

__all__ = ["ChatModel", "Embedder", "JsonReply", "ProviderError", "Providers", "Synthesizer",
           "ToolCallDelta", "Transcriber", "Transcript", "Truncated", "Usage", "normalise"]
