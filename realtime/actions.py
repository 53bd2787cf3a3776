"""What the core asks the shell to do: one small frozen dataclass per action.

`RealtimeSession` answers every input with a list of these; the shell (`server.session_runner`)
carries each out through a table keyed by its type, and feeds the results back to the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class Send:
    """An event for the client (GA shape; the shell translates it for beta clients)."""

    event: dict[str, Any]


@dataclass(frozen=True)
class SendBinary:
    """A binary frame: the tutor's audio in the session's output format, for clients that
    asked for binary audio."""

    data: bytes


@dataclass(frozen=True)
class Transcribe:
    """Transcribe a turn's audio (a WAV of PCM16 mono at 16 kHz, `seconds` long)."""

    item_id: str
    wav: bytes
    seconds: float
    model: str
    language: str | None
    speculative: int = 0  # a speculative transcription's serial (its result comes back with it)


@dataclass(frozen=True)
class JudgeTurn:
    """Ask the end-of-turn model whether the turn whose audio so far is `pcm` (PCM16 mono 16 kHz,
    ending in a pause) is complete; its verdict comes back with `serial`
    (`RealtimeSession.turn_judged`)."""

    serial: int
    pcm: bytes


@dataclass(frozen=True)
class Generate:
    response_id: str
    messages: list[dict[str, Any]]
    question: str = ""  # what the answer answers: retrieval looks this up first
    model: str | None = None  # the chat model (the tier's); None: the provider's default
    held: bool = False  # speculative: generate, but hold every result until `Release`
    tools: tuple[dict[str, Any], ...] = ()  # chat-completions shaped function tools
    tool_choice: str | dict[str, Any] | None = None  # chat-completions shaped; None: default
    max_tokens: int | None = None


@dataclass(frozen=True)
class Cancel:
    response_id: str


@dataclass(frozen=True)
class Synthesize:
    """Synthesise this piece of an answer (pieces of a response are played in `index` order)."""

    response_id: str
    index: int
    text: str
    voice: str


@dataclass(frozen=True)
class Adopt:
    """The turn just ended on the speech of speculative guess `serial`: its transcription (done
    or still running) is the turn's. The turn's end is now."""

    serial: int


@dataclass(frozen=True)
class Release:
    """The held answer `response_id` is the turn's answer: deliver what it holds, then go on."""

    response_id: str


@dataclass(frozen=True)
class Abandon:
    """Speculative work nobody will use: cancel transcription `serial` (0: none) and the held
    answer `response_id` (None: none). Nothing of it was or will be sent to the client."""

    serial: int
    response_id: str | None
    missed: bool = False  # the student went on (a miss); False: cleared, ending, or unused


@dataclass(frozen=True)
class Record:
    """A finished turn (answered, cancelled or failed), for the interactions table."""

    response_id: str
    kind: str  # voice | text
    transcript: str
    answer: str
    status: str
    audio_seconds: float | None


@dataclass(frozen=True)
class Charge:
    """Voice milliseconds received, to add to the user's shared quota counters."""

    ms: int


@dataclass(frozen=True)
class ReportLimits:
    """Send `rate_limits.updated` with the session's current allowance (built by the shell)."""


@dataclass(frozen=True)
class Close:
    """Close the socket with this code, after every event decided before it has been sent."""

    code: int
    reason: str


Action = Union[Send, SendBinary, Transcribe, Generate, Cancel, Synthesize, Adopt, Release, Abandon,
               Record, Charge, ReportLimits, Close]
