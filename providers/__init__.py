"""The AI services the tutor calls: a provider is whatever answers one capability over the network.

Each capability is one small protocol (`protocols`): `Transcriber` (speech to text), `ChatModel`
(streamed answers with tool calls, and structured JSON output), `Synthesizer` (text to speech)
`Embedder` (text to vectors, for retrieval) and `Moderator` (is this text flagged, and for
what); a turn model joins them the same way. `openai` adapts the official `openai` SDK to each of them, so any
OpenAI-compatible server works. Failures cross as `ProviderError` with a protocol error code;
`errors.from_openai` is the one place the SDK's exceptions are mapped to those codes.
"""

from .errors import ProviderError
from .protocols import (ChatModel, Embedder, JsonReply, Moderator, Providers, Synthesizer,
                        ToolCallDelta, Transcriber, Transcript, Truncated, Usage, Verdict,
                        normalise)

__all__ = ["ChatModel", "Embedder", "JsonReply", "Moderator", "ProviderError", "Providers", "Synthesizer",
           "ToolCallDelta", "Transcriber", "Transcript", "Truncated", "Usage", "Verdict",
           "normalise"]
