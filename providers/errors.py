"""How a provider's failure crosses into our code: `ProviderError` with a protocol error `code`,
and `from_openai`, the one place that maps the `openai` SDK's exceptions to those codes.

Callers (the realtime shell, REST routes, ingestion) catch `ProviderError` and pass its `code`
to the client; none of them knows the SDK's exception tree.
"""

from __future__ import annotations

import openai


class ProviderError(Exception):
    """A provider call failed; `code` is the protocol error code the client is told. The adapters
    raise `provider_timeout`, `provider_unreachable`, `provider_error` (an HTTP error, or an
    answer that cannot be used), `provider_stream_interrupted` (a streamed answer was cut) and
    `provider_refused` (the model declined); callers add their own, such as
    `provider_not_configured`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def from_openai(exc: BaseException, what: str, *, streaming: bool = False) -> ProviderError:
    """The `ProviderError` for an exception raised by the `openai` SDK (or by its transport,
    which some versions leave raw) during a `what` call ("chat", "transcription", ...).
    `streaming`: the answer had started, so a broken connection is a cut stream, not an
    unreachable provider."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError("provider_timeout", f"{what} provider did not answer in time")
    if isinstance(exc, openai.APIStatusError):
        return ProviderError(
            "provider_error", f"{what} provider answered HTTP {exc.status_code}: {exc.message}"
        )
    if isinstance(exc, openai.APIConnectionError) and not streaming:
        return ProviderError("provider_unreachable", f"{what} provider could not be reached")
    return ProviderError("provider_stream_interrupted", f"{what} provider stream broke: {exc!r}")
