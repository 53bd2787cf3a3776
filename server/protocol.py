"""The Realtime protocol for one session, sans I/O: client messages in, actions out.

`RealtimeSession` is fed text messages, binary audio and provider results, each with the time
the shell saw it, and answers with a list of actions: `Send` an event, `Transcribe` a turn,
`Generate` an answer, `Cancel` one. It owns validation and error codes, the session config,
the audio input (VAD/endpointing) and the turn-taker; it never awaits, reads a clock, or
touches a socket, so tests drive it with plain calls and the shell in `server.voice` stays a
loop that moves bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Union

from audio.formats import (DEFAULT_FORMAT, SPEECH_RATE, AudioFormat, InputDecoder, OutputEncoder,
                           parse)
from audio.pcm import SAMPLE_WIDTH, AudioFormatError, wav_bytes
from audio.turns import AudioInput, TurnEnded, TurnPaused, TurnResumed, TurnStarted, VadSettings
from billing.meter import VoiceMeter, VoiceUsage
from dialogue.speculation import Guess, Speculator
from dialogue.speech import Piece, SentenceSplitter, heard_text
from dialogue.turns import (CancelResponse, ResponseAlreadyActive, ResponseOptions, StartResponse,
                            TurnState, TurnTaker)

from . import events as ev


@dataclass(frozen=True)
class Send:
    event: dict[str, Any]


@dataclass(frozen=True)
class Transcribe:
    item_id: str
    wav: bytes
    model: str
    language: str | None
    speculative: int = 0  # a speculative transcription's serial (its result comes back with it)


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
class Speak:
    """Synthesise this piece of an answer (pieces of a response are played in `index` order)."""

    response_id: str
    index: int
    text: str
    voice: str


@dataclass(frozen=True)
class SendBinary:
    """A binary frame: the tutor's audio (PCM16, 24 kHz, mono) for clients that asked for it."""

    data: bytes


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


Action = Union[Send, Transcribe, Generate, Cancel, Record, Charge, ReportLimits, Close, Speak,
               SendBinary, Adopt, Release, Abandon]
OUTPUT_RATE = SPEECH_RATE  # the tutor's audio (before the session's output format)
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
          "verse", "marin", "cedar")

# Close codes of a session ended by its plan (see docs/billing.md).
CLOSE_CODES = {"quota_exceeded": 4402, "session_expired": 4408, "idle_timeout": 4408,
               "server_shutting_down": 1012}  # 1012: service restart (RFC 6455 registry)
# Client events refused once the session is closing (they would start new work).
WORK_EVENTS = {"input_audio_buffer.commit", "conversation.item.create", "response.create"}


# semantic_vad's eagerness → how long a silence ends the turn (no end-of-turn model yet: the
# eagerness only moves the silence threshold; "auto" and "medium" keep the session's default)
EAGERNESS_SILENCE_MS = {"low": 1000, "high": 400}


@dataclass(frozen=True)
class TurnDetection:
    type: str = "server_vad"  # or "semantic_vad" (eagerness mapped onto the silence threshold)
    eagerness: str = "auto"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 600
    create_response: bool = True
    interrupt_response: bool = True
    speculative: bool = True  # extension: start transcribing (and answering) at a pause


@dataclass(frozen=True)
class SessionConfig:
    instructions: str
    model: str
    input_rate: int = 24000  # of the PCM16 the input decodes to (8000 for G.711)
    input_format: AudioFormat = DEFAULT_FORMAT  # audio/pcm (24 or 16 kHz), pcmu, pcma
    output_format: AudioFormat = DEFAULT_FORMAT  # audio/pcm at 24 kHz, pcmu, pcma
    turn_detection: TurnDetection | None = TurnDetection()
    default_turn_detection: TurnDetection = TurnDetection()  # what re-enabling VAD starts from
    transcription_model: str = "gpt-4o-mini-transcribe"
    transcription_language: str | None = None
    min_speech_ms: int = 200
    max_turn_ms: int = 30000
    history_messages: int = 20
    audio_burst_ms: int = 3000
    max_message_bytes: int = 256 * 1024
    output_audio: bool = False  # speak the answers (output_modalities ["audio"])
    voice: str = "alloy"
    audio_allowed: bool = True  # the plan includes spoken answers
    # Echo: speech detected within `echo_guard_ms` of the tutor starting to speak counts only if
    # it goes on for `echo_persist_ms` more (the tutor's own voice leaking into the microphone).
    echo_guard_ms: int = 400
    echo_persist_ms: int = 300
    audio_lead_ms: int = 300  # the tutor's audio is sent at playback pace, this far ahead
    # Speculation (dialogue.speculation): a pause this long starts the work of a turn end;
    # 0: not available (server setting or plan). At most half the silence threshold.
    speculative_pause_ms: int = 0
    speculative_max_per_turn: int = 2
    speculative_budget: float = 0.5
    tools: tuple[dict[str, Any], ...] = ()  # Realtime function tools ({type, name, ...})
    tool_choice: str | dict[str, Any] = "auto"
    max_output_tokens: int | None = None  # None: "inf"
    idle_timeout_s: float | None = None  # no client message this long ends the session

    def __post_init__(self) -> None:
        if self.input_format.type == "audio/pcm" and self.input_format.rate != self.input_rate:
            # configured by its rate alone (TUTOR_INPUT_SAMPLE_RATE, older resume state)
            object.__setattr__(self, "input_format", AudioFormat("audio/pcm", self.input_rate))

    @property
    def pause_ms(self) -> int:
        """The effective speculative pause: 0 when speculation is off for this session."""
        td = self.turn_detection
        if td is None or not td.speculative or self.speculative_pause_ms <= 0:
            return 0
        return min(self.speculative_pause_ms, td.silence_duration_ms // 2)


@dataclass
class _Speech:
    """An answer being spoken: its pieces, and when its audio started going out."""

    splitter: SentenceSplitter
    pieces: list[Piece]
    encoder: OutputEncoder
    text_done: bool = False
    first_audio_at: float | None = None
    failed: bool = False

    @property
    def sent_ms(self) -> float:
        return sum(p.ms for p in self.pieces)

    def heard(self, now: float | None) -> str:
        """What the student heard: the audio sent, no further than the time it has played."""
        if self.first_audio_at is None:
            return ""
        played = self.sent_ms if now is None else (now - self.first_audio_at) * 1000
        return heard_text(self.pieces, min(self.sent_ms, played))


@dataclass(frozen=True)
class ResponseSpec:
    """A response as `response.create` asked for it (or the session's defaults)."""

    audio: bool
    voice: str
    metadata: dict[str, str] | None = None
    tools: tuple[dict[str, Any], ...] = ()  # Realtime function tools
    tool_choice: str | dict[str, Any] = "auto"
    max_output_tokens: int | None = None
    in_conversation: bool = True  # conversation "auto"; False: "none" (out of band)


@dataclass
class _Call:
    """A function call of an answer: its item, and its conversation entry (the turn-taker
    keeps that one; the arguments grow in it as they stream)."""

    item_id: str
    call_id: str
    name: str
    output_index: int
    entry: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.entry = {"role": "assistant", "content": None, "_id": self.item_id, "tool_calls": [
            {"id": self.call_id, "type": "function",
             "function": {"name": self.name, "arguments": ""}}]}

    @property
    def arguments(self) -> str:
        return self.entry["tool_calls"][0]["function"]["arguments"]

    def add(self, fragment: str) -> None:
        self.entry["tool_calls"][0]["function"]["arguments"] += fragment

    def item(self, status: str) -> dict[str, Any]:
        return ev.function_call_item(self.item_id, self.call_id, self.name, self.arguments,
                                     status)


@dataclass
class _Reply:
    """One response's items as the client sees them: its message item (opened at the first
    delta), its function calls, and the turn it answers."""

    spec: ResponseSpec
    question: str
    audio_s: float
    item_id: str | None = None
    item_index: int = 0
    calls: dict[int, _Call] = field(default_factory=dict)  # by the provider's call index
    outputs: int = 0
    truncated: bool = False  # the model stopped at max_output_tokens


class ClientError(Exception):
    """A client event we refuse; becomes an `error` event, the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


# OpenAI client events we recognise but do not implement (yet): refused with a clear reason.
UNSUPPORTED: set[str] = {"transcription_session.update"}


class RealtimeSession:
    def __init__(self, config: SessionConfig, *, provider_problem: str | None = None,
                 meter: VoiceMeter | None = None, binary_audio: bool = False) -> None:
        self.config = config
        self.binary_audio = binary_audio  # the tutor's audio as binary frames, not base64 events
        self._speech: dict[str, _Speech] = {}  # response id → its speech, while spoken
        self._last_spoken: tuple[str, str, list[Piece]] | None = None  # item id, text, pieces
        # a speech start held as possible echo, and where voice must reach for it to count (ms)
        self._held: tuple[TurnStarted, float] | None = None
        self.provider_problem = provider_problem
        self.meter = meter  # the plan's voice allowance; None: unmetered
        self._closing: tuple[str, str] | None = None  # (code, message) once the plan ends it
        self._last_client_at: float | None = None  # loop time of the last client message
        self.closed = False
        self.ids = ev.Ids()
        self.id = self.ids("sess")
        self.turns = TurnTaker(
            instructions=config.instructions,
            new_response_id=lambda: self.ids("resp"),
            history_messages=config.history_messages,
        )
        self._apply_turn_detection()
        self.spec = Speculator(max_per_turn=config.speculative_max_per_turn,
                               budget=config.speculative_budget)
        self._adopted: dict[int, str] = {}  # speculative serial → the turn awaiting its transcript
        self.audio = self._new_audio_input()
        self._tokens_ms = float(config.audio_burst_ms)  # token bucket for audio ahead of real time
        self._last_audio_at: float | None = None
        self._last_item_id: str | None = None
        self._speech_item_id: str | None = None
        self._replies: dict[str, _Reply] = {}  # response id → its items, while it runs
        self._unanswered_audio_s = 0.0  # audio of the turns the next answer will answer
        self._conversation_id = self.ids("conv")
        # recent user audio items whose transcript was empty (so not in the conversation)
        self._unheard: dict[str, str] = {}
        self._cut_by_speech = False  # the last answer was cut by barge-in, none started since
        self._handlers: dict[str, Callable[[dict[str, Any], float], list[Action]]] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "output_audio_buffer.clear": self._output_clear,
            "conversation.item.truncate": self._item_truncate,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.delete": self._item_delete,
        }

    # -- entry points ----------------------------------------------------------------------
    def open(self, now: float | None = None) -> list[Action]:
        """`now`: when the socket opened, from which an idle session is timed."""
        self._last_client_at = now
        out: list[Action] = [self._send("session.created", session=self._session_object())]
        if self.meter is not None:
            out.append(ReportLimits())
        if self.provider_problem:
            out.append(self._error("provider_not_configured", self.provider_problem,
                                   type="server_error"))
        return out

    def receive_text(self, text: str, now: float) -> list[Action]:
        self._last_client_at = now  # any message, even one refused, shows the client is there
        if len(text) > self.config.max_message_bytes or (
            len(text) * 4 > self.config.max_message_bytes
            and len(text.encode()) > self.config.max_message_bytes
        ):
            return [self._too_large(len(text.encode()))]
        try:
            message = json.loads(text)
        except ValueError as exc:
            return [self._error("invalid_json", f"message is not valid JSON: {exc}")]
        except RecursionError:  # json's parser recurses per level: a hostile frame ends here
            return [self._error("invalid_json", "message is nested too deeply")]
        if not isinstance(message, dict):
            return [self._error("invalid_json", "message must be a JSON object")]
        event_id = message.get("event_id") if isinstance(message.get("event_id"), str) else None
        kind = message.get("type")
        try:
            if not isinstance(kind, str):
                raise ClientError("missing_required_parameter", "event has no string 'type'", "type")
            handler = self._handlers.get(kind)
            if self._closing is not None and kind in WORK_EVENTS:
                raise ClientError(self._closing[0], "the session is ending: " + self._closing[1])
            if handler is None:
                if kind in UNSUPPORTED:
                    raise ClientError("unsupported_event", f"'{kind}' is not supported by this server")
                raise ClientError("unknown_event_type", f"unknown event type '{kind}'", "type")
            return self._then_maybe_close(handler(message, now))
        except ClientError as exc:
            return [self._error(exc.code, exc.message, event_id=event_id, param=exc.param)]

    def receive_audio(self, pcm: bytes, now: float, *, event_id: str | None = None) -> list[Action]:
        self._last_client_at = now
        if len(pcm) > self.config.max_message_bytes:
            return [self._too_large(len(pcm), event_id)]
        if self._closing is not None:
            return []  # the plan ended the session: what arrives now is neither heard nor billed
        chunk_ms = self.config.input_format.ms(len(pcm))
        if self._last_audio_at is not None:
            refill = (now - self._last_audio_at) * 1000
            self._tokens_ms = min(float(self.config.audio_burst_ms), self._tokens_ms + refill)
        self._last_audio_at = now
        if chunk_ms > self._tokens_ms:
            return [self._error(
                "input_audio_rate_exceeded",
                f"audio is arriving faster than real time (more than {self.config.audio_burst_ms}"
                " ms ahead); this chunk was dropped",
                event_id=event_id)]
        try:
            turn_events = self.audio.feed(self._decoder.decode(pcm))
        except AudioFormatError as exc:
            return [self._error(exc.code, str(exc), event_id=event_id)]
        self._tokens_ms -= chunk_ms
        out: list[Action] = []
        for turn_event in turn_events:
            if isinstance(turn_event, TurnPaused):
                out += self._paused(turn_event)
            elif isinstance(turn_event, TurnResumed):
                out += self._discard_guess(resumed=True)
            elif isinstance(turn_event, TurnStarted):
                if self._echo_window(now):  # voice must go on this much longer to count
                    self._held = (turn_event, self.audio.position_ms + self.config.echo_persist_ms)
                else:
                    out += self._speech_started(turn_event, now)
            elif self._held is not None:
                self._held = None  # it stopped before it persisted: the tutor's echo, dropped
            else:
                out += self._speech_stopped(turn_event)
        if self._held is not None and self.audio.last_voiced_ms >= self._held[1]:
            held, self._held = self._held[0], None
            out += self._speech_started(held, now)  # it persisted: the student speaks
        meter = self.meter
        if meter is not None:
            charge = meter.audio(chunk_ms)
            if charge:
                out.append(Charge(charge))
            if meter.exhausted:
                out += self._end("quota_exceeded", "the plan's voice minutes are used up")
        return out

    # -- the plan's allowance --------------------------------------------------------------
    def quota_charged(self, usage: VoiceUsage) -> list[Action]:
        """The shared counter recorded a charge and says what this user has used in all."""
        assert self.meter is not None
        out: list[Action] = []
        charge = self.meter.charged(usage)
        if charge:
            out.append(Charge(charge))
        if self.meter.exhausted:  # perhaps by another session of the same user
            out += self._end("quota_exceeded", "the plan's voice minutes are used up")
        return out

    def quota_charge_failed(self) -> list[Action]:
        """The counter was unreachable: the amount is kept and charged with the next audio."""
        assert self.meter is not None
        self.meter.charge_failed()
        return []

    def expire(self) -> list[Action]:
        """The plan's maximum session length is reached (the shell's timer says so)."""
        return self._end("session_expired", "the plan's maximum session length is reached")

    def idle_deadline(self) -> float | None:
        """When the session times out if the client sends nothing more (None: never)."""
        if self.config.idle_timeout_s is None or self._last_client_at is None or self._closing:
            return None
        return self._last_client_at + self.config.idle_timeout_s

    def check_idle(self, now: float) -> list[Action]:
        """The shell's idle timer fired: end the session (`idle_timeout`, close 4408) if no
        client message came in `idle_timeout_s`; an answer being given finishes first."""
        deadline = self.idle_deadline()
        if deadline is None or now < deadline:
            return []
        return self._end("idle_timeout", f"no message from the client in "
                         f"{self.config.idle_timeout_s:g} s; the session is closed")

    def drain(self) -> list[Action]:
        """The server is stopping: the answer in progress finishes, then close 1012."""
        return self._end("server_shutting_down",
                         "the server is restarting; reconnect (with your resume token) to go on")

    def final_charge(self) -> Charge | None:
        """When the socket is gone: the audio not yet charged."""
        if self.meter is None:
            return None
        ms = self.meter.flush()
        return Charge(ms) if ms else None

    def _end(self, code: str, message: str) -> list[Action]:
        """End the session for the plan: speech in progress is dropped, an answer already being
        given (or awaited for a finished turn) completes, then `error` and `Close`."""
        if self._closing is not None:
            return []
        self._closing = (code, message)
        self.audio.clear()
        if self._speech_item_id is not None:
            self._speech_item_id = None
            self.turns.speech_discarded()
        return self._discard_guess() + self._maybe_close()

    def _maybe_close(self) -> list[Action]:
        if self._closing is None or self.closed or self.turns.state != TurnState.LISTENING:
            return []
        self.closed = True
        code, message = self._closing
        report: list[Action] = [ReportLimits()] if code == "quota_exceeded" else []
        error_type = "server_error" if code == "server_shutting_down" else "invalid_request_error"
        return [*report, self._error(code, message, type=error_type),
                Close(CLOSE_CODES[code], code)]

    def _then_maybe_close(self, out: list[Action]) -> list[Action]:
        return out + self._maybe_close() if self._closing is not None else out

    def transcription_completed(self, item_id: str, text: str, seconds: float,
                                guess: Guess | None = None) -> list[Action]:
        """`guess`: the speculative guess whose transcript this is (its held answer, if any, is
        used when it fits the conversation as it is now, else discarded)."""
        out: list[Action] = [self._send(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id, content_index=0, transcript=text,
            usage={"type": "duration", "seconds": round(seconds, 3)})]
        if not text.strip():  # not in the conversation, but the client may retrieve it
            self._unheard[item_id] = text
            if len(self._unheard) > 32:
                del self._unheard[next(iter(self._unheard))]
        held = guess.response_id if guess is not None else None
        reuse = None if held is None or guess is None else \
            StartResponse(held, guess.messages, guess.question)
        start = self.turns.transcribed(item_id, text, reuse)
        out += self._start(start, held=held)
        if held is not None and (start is None or start.response_id != held):
            self.spec.answer_unused()
            out.append(Abandon(0, held))
        return self._then_maybe_close(out)

    # -- speculation -----------------------------------------------------------------------
    def speculative_transcribed(self, serial: int, text: str, seconds: float) -> list[Action]:
        """The transcript of a speculative transcription: the turn's, if the turn has ended on
        it; else kept for the guess, and the answer started (held) if one would start now."""
        item_id = self._adopted.pop(serial, None)
        if item_id is not None:
            return self.transcription_completed(item_id, text, seconds)
        guess = self.spec.transcribed(serial, text, seconds)
        if guess is None or self._closing is not None:
            return []
        start = self.turns.preview(text)
        if start is None:
            return []
        self.spec.answering(start.response_id, start.messages, start.question)
        return [self._generate(start, self._default_spec(), held=True)]

    def speculative_transcription_failed(self, serial: int, code: str, message: str
                                         ) -> list[Action]:
        item_id = self._adopted.pop(serial, None)
        if item_id is not None:
            return self.transcription_failed(item_id, code, message)
        self.spec.transcription_failed(serial)  # the turn will be transcribed afresh
        return []

    def _paused(self, paused: TurnPaused) -> list[Action]:
        item_id = self._speech_item_id
        if item_id is None or self._closing is not None or not paused.audio:
            return []  # no turn the client knows of (held as echo), or ending
        guess = self.spec.paused(item_id, paused.speech_end_ms)
        if guess is None:
            return []
        return [Transcribe(item_id, wav_bytes(paused.audio), self.config.transcription_model,
                           self.config.transcription_language, speculative=guess.serial)]

    def _discard_guess(self, *, resumed: bool = False) -> list[Action]:
        guess = self.spec.resumed() if resumed else self.spec.discard()
        return [] if guess is None else [Abandon(guess.serial, guess.response_id, resumed)]

    def transcription_failed(self, item_id: str, code: str, message: str) -> list[Action]:
        out: list[Action] = [
            self._send("conversation.item.input_audio_transcription.failed", item_id=item_id,
                       content_index=0,
                       error={"type": "server_error", "code": code, "message": message}),
            self._error(code, f"transcription of {item_id} failed: {message}", type="server_error"),
        ]
        return self._then_maybe_close(out + self._start(self.turns.transcription_failed(item_id)))

    def response_delta(self, response_id: str, delta: str) -> list[Action]:
        if not self.turns.delta(response_id, delta):
            return []  # a late delta of a response already cancelled
        reply = self._replies[response_id]
        out = self._open_message(response_id, reply)
        part = ev.text_part(response_id, reply.item_id, reply.item_index)  # type: ignore[arg-type]
        st = self._speech.get(response_id)
        if st is None:
            return [*out, self._send("response.output_text.delta", delta=delta, **part)]
        out.append(self._send("response.output_audio_transcript.delta", delta=delta, **part))
        return out + [self._speak(response_id, st, text) for text in st.splitter.feed(delta)]

    def response_tool_call(self, response_id: str, index: int, call_id: str | None,
                           name: str | None, arguments: str) -> list[Action]:
        """A fragment of function call `index` of an answer: the first opens its item."""
        response = self.turns.response
        if response is None or response.id != response_id:
            return []  # a late fragment of a response already cancelled
        reply = self._replies[response_id]
        out: list[Action] = []
        call = reply.calls.get(index)
        if call is None:
            call = reply.calls[index] = _Call(self.ids("item"), call_id or self.ids("call"),
                                              name or "", reply.outputs)
            reply.outputs += 1
            response.calls.append(call.entry)
            item = call.item("in_progress")
            out.append(self._send("response.output_item.added", response_id=response_id,
                                  output_index=call.output_index, item=item))
            if reply.spec.in_conversation:
                out.append(self._item_added(item))
        if arguments:
            call.add(arguments)
            out.append(self._send("response.function_call_arguments.delta",
                                  response_id=response_id, item_id=call.item_id,
                                  output_index=call.output_index, call_id=call.call_id,
                                  delta=arguments))
        return out

    def _open_message(self, rid: str, reply: _Reply) -> list[Action]:
        """The answer's message item, opened at its first delta (a response that only calls
        functions has none)."""
        if reply.item_id is not None:
            return []
        item_id = reply.item_id = self.ids("item")
        reply.item_index, reply.outputs = reply.outputs, reply.outputs + 1
        response = self.turns.response
        if response is not None and response.id == rid:
            response.entry = {"_id": item_id, "_audio": reply.spec.audio}
        item = ev.assistant_item(item_id, "in_progress")
        audio = reply.spec.audio
        part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        out: list[Action] = [self._send("response.output_item.added", response_id=rid,
                                        output_index=reply.item_index, item=item)]
        if reply.spec.in_conversation:
            out.append(self._item_added(item))
        out.append(self._send("response.content_part.added", part=part,
                              **ev.text_part(rid, item_id, reply.item_index)))
        return out

    def _speak(self, rid: str, st: _Speech, text: str) -> Speak:
        st.pieces.append(Piece(text))
        return Speak(rid, len(st.pieces) - 1, text, self.config.voice)

    def response_completed(self, response_id: str, truncated: bool = False) -> list[Action]:
        """The answer's text is complete (`truncated`: it stopped at `max_output_tokens`, and
        the response is `incomplete`)."""
        reply = self._replies.get(response_id)
        if reply is not None and truncated:
            reply.truncated = True
        st = self._speech.get(response_id)
        if st is not None:  # the text is complete; the answer ends when its audio has gone out
            if self.turns.response is None or self.turns.response.id != response_id:
                return []
            st.text_done = True
            rest = st.splitter.flush()
            out: list[Action] = [self._speak(response_id, st, rest)] if rest else []
            return out + self._then_maybe_close(self._maybe_finish_speech(response_id))
        result = self.turns.finished(response_id)
        if result is None:
            return []
        text, next_response = result
        return self._then_maybe_close(self._finish(response_id, text) + self._start(next_response))

    def _finish(self, rid: str, text: str) -> list[Action]:
        """Close an answer that ran to its end: completed, or incomplete at its token cap."""
        if self._replies[rid].truncated:
            return self._close_response(rid, text, "incomplete",
                                        {"type": "incomplete", "reason": "max_output_tokens"})
        return self._close_response(rid, text, "completed")

    def response_failed(self, response_id: str, code: str, message: str) -> list[Action]:
        text = self.turns.failed(response_id)
        if text is None:
            return []
        details = {"type": "failed", "error": {"type": "server_error", "code": code,
                                                "message": message}}
        return self._then_maybe_close([self._error(code, message, type="server_error"),
                                       *self._close_response(response_id, text, "failed", details),
                                       *self._start(self.turns.next_response())])

    def response_citations(self, response_id: str, citations: list[dict[str, Any]]) -> Send:
        """`tutor.citations`: the course passages an answer is grounded in, before its text."""
        return self._send("tutor.citations", response_id=response_id, citations=citations)

    # -- spoken answers --------------------------------------------------------------------
    def speech_audio(self, response_id: str, index: int, pcm: bytes, now: float) -> list[Action]:
        """Audio of piece `index` of an answer, in order, as the shell gets it from TTS."""
        st = self._speech.get(response_id)
        if st is None or not pcm:
            return []  # a late chunk of an answer already cut off
        if st.first_audio_at is None:
            st.first_audio_at = now
        st.pieces[index].ms += len(pcm) / SAMPLE_WIDTH * 1000 / OUTPUT_RATE
        return self._audio_out(response_id, st.encoder.encode(pcm))

    def _audio_out(self, response_id: str, data: bytes) -> list[Action]:
        """Audio in the session's output format, as a binary frame or an event."""
        if not data:
            return []
        if self.binary_audio:
            return [SendBinary(data)]
        reply = self._replies[response_id]
        return [self._send("response.output_audio.delta",
                           delta=base64.b64encode(data).decode("ascii"),
                           **ev.text_part(response_id, reply.item_id,  # type: ignore[arg-type]
                                          reply.item_index))]

    def speech_done(self, response_id: str, index: int) -> list[Action]:
        st = self._speech.get(response_id)
        if st is None:
            return []
        st.pieces[index].done = True
        return self._then_maybe_close(self._maybe_finish_speech(response_id))

    def speech_failed(self, response_id: str, index: int, code: str, message: str
                      ) -> list[Action]:
        """Synthesis of one piece failed: said once; the answer goes on (its text is there)."""
        st = self._speech.get(response_id)
        if st is None:
            return []
        out: list[Action] = []
        if not st.failed:
            st.failed = True
            out.append(self._error(code, f"speech synthesis failed: {message}",
                                   type="server_error"))
        return out + self.speech_done(response_id, index)

    def speaking(self, response_id: str) -> bool:
        """Whether this answer is (also) spoken."""
        return response_id in self._speech

    def _maybe_finish_speech(self, rid: str) -> list[Action]:
        st = self._speech[rid]
        if not st.text_done or not all(p.done for p in st.pieces):
            return []
        tail = self._audio_out(rid, st.encoder.flush()) if st.first_audio_at is not None else []
        result = self.turns.finished(rid)
        if result is None:
            return []
        text, next_response = result
        return tail + self._finish(rid, text) + self._start(next_response)

    def _echo_window(self, now: float) -> bool:
        """The tutor started speaking less than `echo_guard_ms` ago (and still is)."""
        for st in self._speech.values():
            if st.first_audio_at is not None and \
                    (now - st.first_audio_at) * 1000 < self.config.echo_guard_ms:
                return True
        return False

    # -- resuming after a dropped connection ---------------------------------------------
    def export_state(self) -> dict[str, Any]:
        """What a resumed session needs: the conversation and the settings a client chose."""
        cfg = self.config
        return {"history": list(self.turns.history), "instructions": cfg.instructions,
                "input_format": cfg.input_format.to_json(),
                "output_format": cfg.output_format.to_json(), "output_audio": cfg.output_audio,
                "voice": cfg.voice, "tools": list(cfg.tools), "tool_choice": cfg.tool_choice,
                "turn_detection": None if cfg.turn_detection is None
                else vars(cfg.turn_detection)}

    def restore(self, state: dict[str, Any]) -> list[Action]:
        """Continue a dropped session's conversation (the shell checked the token and user)."""
        td = state.get("turn_detection")
        input_format = parse(state["input_format"], "input") if "input_format" in state \
            else self.config.input_format
        self.config = replace(
            self.config, instructions=state.get("instructions", self.config.instructions),
            input_format=input_format, input_rate=input_format.pcm_rate,
            tools=tuple(state.get("tools", ())), tool_choice=state.get("tool_choice", "auto"),
            output_format=parse(state["output_format"], "output") if "output_format" in state
            else self.config.output_format,
            output_audio=bool(state.get("output_audio")) and self.config.audio_allowed,
            voice=state.get("voice", self.config.voice),
            turn_detection=None if td is None else TurnDetection(**td))
        self._apply_turn_detection()
        self.audio = self._new_audio_input()
        for entry in state.get("history", [])[-self.turns.history.maxlen:]:  # type: ignore[index]
            self.turns.history.append(dict(entry))  # our own export: items, calls and all
        return [self._send("session.updated", session=self._session_object()),
                self._send("tutor.session.resumed", messages=len(self.turns.history))]

    def resume_refused(self) -> Send:
        return self._error("resume_not_found", "the resume token is unknown, used, expired or "
                           "not yours; this is a new conversation", param="resume")

    def resumable(self, token: str, expires_in_s: float) -> Send:
        """`tutor.session.resumable`: reconnect with `?resume=<token>` to go on from here."""
        return self._send("tutor.session.resumable", resume_token=token,
                          expires_in_s=expires_in_s)

    def rate_limits_updated(self, rate_limits: list[dict[str, Any]]) -> list[Send]:
        """What the plan has left (entries built by `billing`; none on an unlimited plan):
        `rate_limits.updated` with the entries OpenAI's clients know (`requests`, `tokens`),
        and `tutor.rate_limits.updated` with all of them, voice minutes included."""
        if not rate_limits:
            return []
        known = [e for e in rate_limits if e.get("name") in ("requests", "tokens")]
        out = [self._send("rate_limits.updated", rate_limits=known)] if known else []
        return out + [self._send("tutor.rate_limits.updated", rate_limits=rate_limits)]

    def response_metrics(self, response_id: str, metrics: dict[str, Any]) -> Send:
        """`tutor.response.metrics`: stage latencies of a finished response, measured by the shell."""
        return self._send("tutor.response.metrics", response_id=response_id, **metrics)

    # -- client events ---------------------------------------------------------------------
    def _session_update(self, message: dict[str, Any], now: float) -> list[Action]:
        session = message.get("session")
        if not isinstance(session, dict):
            raise ClientError("missing_required_parameter", "session.update needs a 'session' object",
                              "session")
        old = self.config
        self.config, problems = _updated_config(old, session)
        self._apply_turn_detection()
        out: list[Action] = []
        if (old.input_format, old.turn_detection, old.min_speech_ms) != (
            self.config.input_format, self.config.turn_detection, self.config.min_speech_ms
        ):
            self.audio = self._new_audio_input()
            self._speech_item_id = None
            self.turns.speech_discarded()
            out += self._discard_guess()
        out.append(self._send("session.updated", session=self._session_object()))
        if problems:  # one error for the fields refused; the rest was applied
            event_id = message.get("event_id")
            out.append(self._error(
                problems[0].code, "; ".join(f"{p.param}: {p.message}" if p.param else p.message
                                            for p in problems)
                + " (the rest of the update was applied)",
                event_id=event_id if isinstance(event_id, str) else None,
                param=problems[0].param))
        return out

    def _append(self, message: dict[str, Any], now: float) -> list[Action]:
        audio = message.get("audio")
        if not isinstance(audio, str):
            raise ClientError("missing_required_parameter",
                              "input_audio_buffer.append needs 'audio' (base64 PCM16)", "audio")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ClientError("invalid_base64", f"'audio' is not valid base64: {exc}", "audio")
        event_id = message.get("event_id")
        return self.receive_audio(pcm, now, event_id=event_id if isinstance(event_id, str) else None)

    def _commit(self, message: dict[str, Any], now: float) -> list[Action]:
        turn = self.audio.commit()
        if turn is None or not turn.audio:
            raise ClientError("input_audio_buffer_commit_empty",
                              "nothing to commit: the input audio buffer holds no speech")
        if self.config.turn_detection is None:
            return self._committed(turn, self.ids("item"))
        return self._speech_stopped(turn)

    def _clear(self, message: dict[str, Any], now: float) -> list[Action]:
        self.audio.clear()
        if self._speech_item_id is not None:
            self._speech_item_id = None
            self.turns.speech_discarded()
        return self._discard_guess() + [self._send("input_audio_buffer.cleared")]

    def _item_create(self, message: dict[str, Any], now: float) -> list[Action]:
        item = message.get("item")
        if not isinstance(item, dict):
            raise ClientError("missing_required_parameter", "conversation.item.create needs 'item'",
                              "item")
        previous = message.get("previous_item_id")
        if previous is not None and not isinstance(previous, str):
            raise ClientError("invalid_value", "previous_item_id must be a string",
                              "previous_item_id")
        item_id = item["id"] if isinstance(item.get("id"), str) and item["id"] \
            else self.ids("item")
        entry, created = conversation_item(item, item_id)
        if previous == self._last_item_id or (previous == "root" and self._last_item_id is None):
            previous = None  # after the last item (or first of none): at the end
        elif previous not in (None, "root") and not self._in_history(previous):
            previous = None  # an item we no longer hold (or never did): at the end, as OpenAI
        if entry["role"] == "user" and "tool_calls" not in entry:
            self.turns.user_text(entry["content"], {"_id": item_id}, after=previous)
        else:
            self.turns.add_entry(entry, after=previous)
        if previous is None:
            return self._item_complete(created)
        return [self._send("conversation.item.added", item=created,
                           previous_item_id=None if previous == "root" else previous),
                self._item_done(created)]

    def _in_history(self, item_id: str) -> bool:
        try:
            self.turns.entry(item_id)
        except KeyError:
            return False
        return True

    def _item_retrieve(self, message: dict[str, Any], now: float) -> list[Action]:
        item_id = message.get("item_id")
        if not isinstance(item_id, str):
            raise ClientError("missing_required_parameter", "retrieve needs 'item_id'", "item_id")
        try:
            item = realtime_item(self.turns.entry(item_id))
        except KeyError:
            if item_id not in self._unheard:
                raise ClientError("item_not_found", f"no item '{item_id}' in the conversation "
                                  f"(only the last {self.config.history_messages} are kept)",
                                  "item_id")
            item = ev.user_audio_item(item_id, self._unheard[item_id])
        return [self._send("conversation.item.retrieved", item=item)]

    def _item_delete(self, message: dict[str, Any], now: float) -> list[Action]:
        item_id = message.get("item_id")
        if not isinstance(item_id, str):
            raise ClientError("missing_required_parameter", "delete needs 'item_id'", "item_id")
        try:
            self.turns.delete(item_id)
        except KeyError:
            if self._unheard.pop(item_id, None) is None:
                raise ClientError("item_not_found", f"no item '{item_id}' in the conversation",
                                  "item_id")
        return [self._send("conversation.item.deleted", item_id=item_id)]

    def _response_create(self, message: dict[str, Any], now: float) -> list[Action]:
        response = message.get("response") or {}
        if not isinstance(response, dict):
            raise ClientError("invalid_value", "response must be an object", "response")
        options, problems = self._response_options(response)
        try:
            start = self.turns.request_response(options)
        except ResponseAlreadyActive as exc:
            raise ClientError("conversation_already_has_active_response",
                              f"response {exc} is still in progress; cancel it first")
        out: list[Action] = []
        if problems:
            out.append(self._error(problems[0].code, "; ".join(p.message for p in problems),
                                   event_id=message.get("event_id") if isinstance(
                                       message.get("event_id"), str) else None,
                                   param=problems[0].param))
        return out + self._start(start)

    def _response_options(self, response: dict[str, Any]) -> tuple[ResponseOptions,
                                                                    list[ClientError]]:
        """A `response.create`'s own settings over the session's: invalid ones are refused
        (the answer goes on without them), as `session.update` does."""
        cfg = self.config
        problems: list[ClientError] = []
        instructions = None
        metadata = None
        in_conversation, entries = True, None
        with _collect(problems):
            if response.get("instructions") is not None:
                if not isinstance(response["instructions"], str):
                    raise ClientError("invalid_value", "instructions must be a string",
                                      "response.instructions")
                instructions = response["instructions"]
        out_audio: dict[str, Any] = {}
        with _collect(problems):
            out_audio = _object(_object(response, "audio", "response.audio"), "output",
                                "response.audio.output")
        answer = {"output_audio": cfg.output_audio, "voice": cfg.voice, "tools": cfg.tools,
                  "tool_choice": cfg.tool_choice, "max_output_tokens": cfg.max_output_tokens,
                  **_answer_settings(response, out_audio, "response", cfg.audio_allowed,
                                     problems)}
        with _collect(problems):
            if response.get("metadata") is not None:
                metadata = _metadata(response["metadata"])
        with _collect(problems):
            conversation = response.get("conversation", "auto")
            if conversation not in ("auto", "none", None):
                raise ClientError("invalid_value", "conversation must be 'auto' or 'none'",
                                  "response.conversation")
            in_conversation = conversation != "none"
        with _collect(problems):
            if response.get("input") is not None:
                entries = self._input_entries(response["input"])
        spec = ResponseSpec(audio=answer["output_audio"], voice=answer["voice"],
                            metadata=metadata, tools=answer["tools"],
                            tool_choice=answer["tool_choice"],
                            max_output_tokens=answer["max_output_tokens"],
                            in_conversation=in_conversation)
        return ResponseOptions(instructions=instructions, input=entries,
                               in_conversation=in_conversation, spec=spec), problems

    def _input_entries(self, items: Any) -> list[dict[str, Any]]:
        """`response.input`: the items this answer sees instead of the conversation (new
        items, or `item_reference`s to ones the conversation holds)."""
        if not isinstance(items, list):
            raise ClientError("invalid_value", "input must be a list of items", "response.input")
        entries = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ClientError("invalid_value", "each input item must be an object",
                                  f"response.input[{i}]")
            if item.get("type") == "item_reference":
                try:
                    entries.append(self.turns.entry(str(item.get("id"))))
                except KeyError:
                    raise ClientError("item_not_found", f"no item '{item.get('id')}' in the "
                                      "conversation", f"response.input[{i}].id")
            else:
                entries.append(conversation_item(item, str(item.get("id") or f"input_{i}"))[0])
        return entries

    def _response_cancel(self, message: dict[str, Any], now: float) -> list[Action]:
        cut = self.turns.cancel()
        if cut is None:
            if self._cut_by_speech:
                return []  # the answer the client cancels was just cut by the student's speech
            raise ClientError("response_cancel_not_active",
                              "Cancellation failed: no active response found")
        return self._cancelled(cut, now)

    def _output_clear(self, message: dict[str, Any], now: float) -> list[Action]:
        """`output_audio_buffer.clear`: stop the answer being spoken, now."""
        response = self.turns.response
        if response is None or response.id not in self._speech:
            raise ClientError("response_cancel_not_active", "no answer is being spoken")
        cut = self.turns.cancel()
        assert cut is not None
        return self._cancelled(cut, now)

    def _item_truncate(self, message: dict[str, Any], now: float) -> list[Action]:
        """`conversation.item.truncate`: the student heard only `audio_end_ms` of an answer, so
        the tutor remembers only that much of it (an answer still being spoken is cut first)."""
        item_id, end_ms = message.get("item_id"), message.get("audio_end_ms")
        if not isinstance(item_id, str):
            raise ClientError("missing_required_parameter", "truncate needs 'item_id'", "item_id")
        if isinstance(end_ms, bool) or not isinstance(end_ms, int) or end_ms < 0:
            raise ClientError("invalid_value", "audio_end_ms must be a non-negative integer",
                              "audio_end_ms")
        out: list[Action] = []
        response = self.turns.response
        if response is not None and self._replies[response.id].item_id == item_id \
                and response.id in self._speech:
            cut = self.turns.cancel()
            assert cut is not None
            out += self._cancelled(cut, None)
        if self._last_spoken is None or self._last_spoken[0] != item_id:
            raise ClientError("item_truncate_invalid_item_id",
                              f"{item_id} is not the last spoken answer", "item_id")
        _, full, pieces = self._last_spoken
        total = sum(p.ms for p in pieces)
        if end_ms > total + 1:
            raise ClientError("invalid_value", f"audio_end_ms {end_ms} is past the end of the "
                              f"answer's audio ({total:.0f} ms)", "audio_end_ms")
        self.turns.replace_answer(full, heard_text(pieces, end_ms))
        return out + [self._send("conversation.item.truncated", item_id=item_id,
                                 content_index=message.get("content_index", 0),
                                 audio_end_ms=end_ms)]

    # -- turns and responses ---------------------------------------------------------------
    def _speech_started(self, started: TurnStarted, now: float | None = None) -> list[Action]:
        self._speech_item_id = self.ids("item")
        self.spec.turn_started()
        out: list[Action] = [self._send("input_audio_buffer.speech_started",
                                        audio_start_ms=started.start_ms,
                                        item_id=self._speech_item_id)]
        cut = self.turns.speech_started()
        return out + (self._cancelled(cut, now) if cut else [])

    def _speech_stopped(self, turn: TurnEnded) -> list[Action]:
        item_id = self._speech_item_id or self.ids("item")
        self._speech_item_id = None
        out: list[Action] = []
        if turn.forced:
            out.append(self._error("input_audio_turn_too_long",
                                   f"the turn reached the maximum of {self.config.max_turn_ms} ms "
                                   "and was ended there"))
        out.append(self._send("input_audio_buffer.speech_stopped", audio_end_ms=turn.end_ms,
                              item_id=item_id))
        return out + self._committed(turn, item_id)

    def _committed(self, turn: TurnEnded, item_id: str) -> list[Action]:
        previous = self._last_item_id
        used, dropped = self.spec.turn_ended(item_id, turn.speech_end_ms)
        out: list[Action] = [] if dropped is None else [Abandon(dropped.serial,
                                                                dropped.response_id, True)]
        self.turns.turn_committed(item_id)
        self._unanswered_audio_s += len(turn.audio) / SAMPLE_WIDTH / 16000
        out += [
            self._send("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous),
            *self._item_complete(ev.user_audio_item(item_id)),
        ]
        if used is None:
            return out + [Transcribe(item_id, wav_bytes(turn.audio),
                                     self.config.transcription_model,
                                     self.config.transcription_language)]
        out.append(Adopt(used.serial))  # the pause's transcription is this turn's
        if used.text is None:  # still running: its result completes the turn
            self._adopted[used.serial] = item_id
            return out
        return out + self.transcription_completed(item_id, used.text, used.seconds, used)

    def _start(self, start: StartResponse | None, held: str | None = None) -> list[Action]:
        """Open the answer `start`: `response.created`, then `Generate` (or `Release` when it is
        the speculative answer `held`, already running). Its items open as its output comes."""
        if start is None:
            return []
        rid = start.response_id
        self._cut_by_speech = False
        spec = start.options.spec or self._default_spec()
        reply = self._replies[rid] = _Reply(spec, start.question, 0.0)
        if spec.in_conversation and start.options.input is None:
            reply.audio_s, self._unanswered_audio_s = self._unanswered_audio_s, 0.0
        if spec.audio:
            self._speech[rid] = _Speech(SentenceSplitter(), [],
                                        OutputEncoder(self.config.output_format))
        return [self._send("response.created",
                           response=self._response_object(rid, "in_progress", reply, [])),
                Release(rid) if rid == held else self._generate(start, spec)]

    def _generate(self, start: StartResponse, spec: ResponseSpec, held: bool = False
                  ) -> Generate:
        tools = tuple({"type": "function", "function": {
            k: v for k, v in tool.items() if k in ("name", "description", "parameters")}}
            for tool in spec.tools)
        choice = spec.tool_choice
        if isinstance(choice, dict):
            choice = {"type": "function", "function": {"name": choice.get("name")}}
        return Generate(start.response_id, start.messages, start.question, self.config.model,
                        held=held, tools=tools, tool_choice=choice if tools else None,
                        max_tokens=spec.max_output_tokens)

    def _default_spec(self) -> ResponseSpec:
        cfg = self.config
        return ResponseSpec(audio=cfg.output_audio, voice=cfg.voice, tools=cfg.tools,
                            tool_choice=cfg.tool_choice, max_output_tokens=cfg.max_output_tokens)

    def _response_object(self, rid: str, status: str, reply: _Reply, output: list[Any],
                         details: dict[str, Any] | None = None) -> dict[str, Any]:
        spec = reply.spec
        return ev.response(rid, status, output, status_details=details,
                           modalities=["audio"] if spec.audio else ["text"],
                           metadata=spec.metadata,
                           conversation_id=self._conversation_id if spec.in_conversation
                           else None,
                           max_output_tokens=spec.max_output_tokens,
                           voice=spec.voice, output_format=self.config.output_format.to_json())

    def _cancelled(self, cut: CancelResponse, now: float | None = None) -> list[Action]:
        details = {"type": "cancelled", "reason": cut.reason}
        self._cut_by_speech = cut.reason == "turn_detected"
        text = cut.text
        out: list[Action] = [Cancel(cut.response_id)]
        st = self._speech.get(cut.response_id)
        if st is not None:
            text = st.heard(now)  # the tutor remembers what was heard, not what was written
            self.turns.replace_answer(cut.text, text)
            if st.first_audio_at is not None:  # the client should drop what it buffered
                out.append(self._send("output_audio_buffer.cleared", response_id=cut.response_id))
        return [*out, *self._close_response(cut.response_id, text, "cancelled", details),
                *self._start(self.turns.next_response())]

    def _close_response(self, rid: str, text: str, status: str,
                        details: dict[str, Any] | None = None) -> list[Action]:
        reply = self._replies.pop(rid)
        st = self._speech.pop(rid, None)
        out: list[Action] = []
        if reply.item_id is None and not reply.calls and status == "completed":
            out += self._open_message(rid, reply)  # an empty answer still has its message
        item_status = "completed" if status == "completed" else "incomplete"
        output: list[tuple[int, dict[str, Any]]] = []
        if reply.item_id is not None:
            item_id = reply.item_id
            part = ev.text_part(rid, item_id, reply.item_index)
            if st is None:
                item = ev.assistant_item(item_id, item_status, text)
                out += [self._send("response.output_text.done", text=text, **part),
                        self._send("response.content_part.done",
                                   part={"type": "text", "text": text}, **part)]
            else:
                self._last_spoken = (item_id, text, st.pieces)
                item = ev.assistant_item(item_id, item_status, text, audio=True)
                out += [self._send("response.output_audio.done", **part),
                        self._send("response.output_audio_transcript.done", transcript=text,
                                   **part),
                        self._send("response.content_part.done",
                                   part={"type": "audio", "transcript": text}, **part)]
            out.append(self._send("response.output_item.done", response_id=rid,
                                  output_index=reply.item_index, item=item))
            if reply.spec.in_conversation:
                out.append(self._item_done(item))
            output.append((reply.item_index, item))
        for call in reply.calls.values():
            item = call.item(item_status)
            if status == "completed":
                out.append(self._send("response.function_call_arguments.done", response_id=rid,
                                      item_id=call.item_id, output_index=call.output_index,
                                      call_id=call.call_id, name=call.name,
                                      arguments=item["arguments"]))
            out.append(self._send("response.output_item.done", response_id=rid,
                                  output_index=call.output_index, item=item))
            if reply.spec.in_conversation:
                out.append(self._item_done(item))
            output.append((call.output_index, item))
        items = [item for _, item in sorted(output, key=lambda pair: pair[0])]
        audio_s = reply.audio_s
        return [
            *out,
            self._send("response.done",
                       response=self._response_object(rid, status, reply, items, details)),
            Record(rid, "voice" if audio_s else "text", reply.question, text, status,
                   round(audio_s, 3) if audio_s else None),
            *([ReportLimits()] if self.meter is not None else []),
        ]

    # -- helpers ---------------------------------------------------------------------------
    def _item_added(self, item: dict[str, Any]) -> Send:
        """`conversation.item.added`: an item joins the end of the conversation."""
        previous, self._last_item_id = self._last_item_id, item["id"]
        return self._send("conversation.item.added", previous_item_id=previous, item=item)

    def _item_complete(self, item: dict[str, Any]) -> list[Action]:
        """A complete item joins the end of the conversation: `conversation.item.added`, then
        `conversation.item.done`."""
        return [self._item_added(item), self._item_done(item)]

    def _item_done(self, item: dict[str, Any]) -> Send:
        return self._send("conversation.item.done", item=item)

    def _send(self, kind: str, **fields: Any) -> Send:
        return Send({"type": kind, "event_id": self.ids("event"), **fields})

    def _error(self, code: str, message: str, *, type: str = "invalid_request_error",
               event_id: str | None = None, param: str | None = None) -> Send:
        event = ev.error(code, message, type=type, event_id=event_id, param=param)
        event["event_id"] = self.ids("event")
        return Send(event)

    def _too_large(self, size: int, event_id: str | None = None) -> Send:
        return self._error("message_too_large",
                           f"message of {size} bytes exceeds the limit of "
                           f"{self.config.max_message_bytes} bytes; it was dropped",
                           event_id=event_id)

    def _apply_turn_detection(self) -> None:
        td = self.config.turn_detection
        self.turns.instructions = self.config.instructions
        self.turns.auto_respond = td.create_response if td else False
        self.turns.interrupt = td.interrupt_response if td else False

    def _new_audio_input(self) -> AudioInput:
        self._decoder = InputDecoder(self.config.input_format)
        td = self.config.turn_detection
        vad = None if td is None else VadSettings(
            threshold=td.threshold, prefix_padding_ms=td.prefix_padding_ms,
            silence_duration_ms=td.silence_duration_ms, min_speech_ms=self.config.min_speech_ms,
            pause_ms=self.config.pause_ms)
        return AudioInput(input_rate=self.config.input_rate, vad=vad,
                          max_turn_ms=self.config.max_turn_ms)

    def _session_object(self) -> dict[str, Any]:
        cfg = self.config
        td = cfg.turn_detection
        transcription: dict[str, Any] = {"model": cfg.transcription_model}
        if cfg.transcription_language:
            transcription["language"] = cfg.transcription_language
        return {
            "type": "realtime", "object": "realtime.session", "id": self.id, "model": cfg.model,
            "output_modalities": ["audio"] if cfg.output_audio else ["text"],
            "instructions": cfg.instructions,
            "tools": list(cfg.tools), "tool_choice": cfg.tool_choice,
            "max_output_tokens": "inf" if cfg.max_output_tokens is None
            else cfg.max_output_tokens,
            "audio": {"input": {
                "format": cfg.input_format.to_json(),
                "transcription": transcription,
                "turn_detection": _turn_detection_object(td, cfg.pause_ms > 0),
            }, "output": {"format": cfg.output_format.to_json(), "voice": cfg.voice}},
        }


def _turn_detection_object(td: TurnDetection | None, speculative: bool) -> dict[str, Any] | None:
    if td is None:
        return None
    if td.type == "semantic_vad":
        return {"type": "semantic_vad", "eagerness": td.eagerness,
                "create_response": td.create_response,
                "interrupt_response": td.interrupt_response, "speculative": speculative}
    fields = {k: v for k, v in vars(td).items() if k not in ("type", "eagerness")}
    return {"type": "server_vad", **fields, "speculative": speculative}


@contextmanager
def _collect(problems: list[ClientError]) -> Iterator[None]:
    """One field of an update: a refusal is noted and the rest of the update goes on."""
    try:
        yield
    except ClientError as exc:
        problems.append(exc)


def _updated_config(config: SessionConfig, session: dict[str, Any]
                    ) -> tuple[SessionConfig, list[ClientError]]:
    """Apply a `session.update` payload field by field: the new config, and the fields refused
    (each left as it was). Fields of OpenAI's session that this server does not use (tracing,
    noise reduction, prompt, ...) are accepted and ignored."""
    problems: list[ClientError] = []
    changes: dict[str, Any] = {}
    with _collect(problems):
        if session.get("type", "realtime") != "realtime":
            raise ClientError("invalid_value", "only 'realtime' sessions are supported "
                              "(not transcription sessions)", "session.type")
    with _collect(problems):
        if "instructions" in session:
            instructions = session["instructions"]
            if not isinstance(instructions, str):
                raise ClientError("invalid_value", "instructions must be a string",
                                  "session.instructions")
            changes["instructions"] = instructions
    audio: dict[str, Any] = {}
    with _collect(problems):
        audio = _object(session, "audio", "session.audio")
    audio_out: dict[str, Any] = {}
    with _collect(problems):
        audio_out = _object(audio, "output", "session.audio.output")
    changes.update(_answer_settings(session, audio_out, "session", config.audio_allowed,
                                    problems))
    with _collect(problems):
        if "format" in audio_out:
            changes["output_format"] = _format(audio_out["format"], "output")
    audio_in: dict[str, Any] = {}
    with _collect(problems):
        audio_in = _object(audio, "input", "session.audio.input")
    with _collect(problems):
        if "format" in audio_in:
            fmt = changes["input_format"] = _format(audio_in["format"], "input")
            changes["input_rate"] = fmt.pcm_rate
    with _collect(problems):
        if "transcription" in audio_in:
            tr = audio_in["transcription"] or {}
            if not isinstance(tr, dict):
                raise ClientError("invalid_value", "transcription must be an object",
                                  "session.audio.input.transcription")
            for key, name in (("model", "transcription_model"),
                              ("language", "transcription_language")):
                if key in tr:
                    if not isinstance(tr[key], str) and not (key == "language" and tr[key] is None):
                        raise ClientError("invalid_value", f"transcription.{key} must be a string",
                                          f"session.audio.input.transcription.{key}")
                    changes[name] = tr[key]
    with _collect(problems):
        if "turn_detection" in audio_in:
            td = audio_in["turn_detection"]
            if isinstance(td, dict) and td.get("speculative") is True \
                    and config.speculative_pause_ms <= 0:
                raise ClientError("feature_not_available", "speculative turn ends are not part "
                                  "of this plan (or are off on this server)",
                                  "session.audio.input.turn_detection.speculative")
            changes["turn_detection"] = _turn_detection(
                td, config.turn_detection or config.default_turn_detection,
                config.default_turn_detection)
    return replace(config, **changes), problems


def _format(value: Any, direction: str) -> AudioFormat:
    try:
        return parse(value, direction)  # type: ignore[arg-type]
    except AudioFormatError as exc:
        raise ClientError(exc.code, str(exc), getattr(exc, "param", None))


def _answer_settings(obj: dict[str, Any], audio_out: dict[str, Any], prefix: str,
                     audio_allowed: bool, problems: list[ClientError]) -> dict[str, Any]:
    """What a session and a response both set about an answer, as SessionConfig fields: the
    modality, the voice, the tools and the token cap (only those present; refusals noted)."""
    settings: dict[str, Any] = {}
    with _collect(problems):
        if obj.get("output_modalities") is not None:
            settings["output_audio"] = _modalities(obj["output_modalities"], audio_allowed,
                                                   f"{prefix}.output_modalities")
    with _collect(problems):
        if "tools" in obj:
            settings["tools"] = _tools(obj["tools"], f"{prefix}.tools")
    with _collect(problems):
        if "tool_choice" in obj:
            settings["tool_choice"] = _tool_choice(obj["tool_choice"], f"{prefix}.tool_choice")
    with _collect(problems):
        if "max_output_tokens" in obj:
            settings["max_output_tokens"] = _max_tokens(obj["max_output_tokens"],
                                                        f"{prefix}.max_output_tokens")
    with _collect(problems):
        if "voice" in audio_out:
            settings["voice"] = _voice(audio_out["voice"], f"{prefix}.audio.output.voice")
    return settings


def _modalities(value: Any, audio_allowed: bool, param: str) -> bool:
    """`output_modalities`: True for spoken answers (["audio"], with their transcript)."""
    if value not in (["text"], ["audio"]):  # compared, never hashed: [[]] is no TypeError
        raise ClientError("invalid_value", "output_modalities must be [\"text\"] or "
                          "[\"audio\"] (audio comes with its transcript)", param)
    if value == ["audio"] and not audio_allowed:
        raise ClientError("feature_not_available", "spoken answers are not part of this "
                          "plan; answers stay text", param)
    return value == ["audio"]


def _voice(value: Any, param: str) -> str:
    if not isinstance(value, str) or value not in VOICES:
        raise ClientError("invalid_value", f"voice must be one of {', '.join(VOICES)}", param)
    return value


def _metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 16 or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
            for k, v in value.items()):
        raise ClientError("invalid_value", "metadata must be at most 16 string keys (64 "
                          "characters) with string values (512 characters)", "response.metadata")
    return dict(value)


def _tools(value: Any, param: str) -> tuple[dict[str, Any], ...]:
    """Function tools, as Realtime declares them: {type: "function", name, description,
    parameters}. Other tool types (MCP servers) are not run by this server."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > 128:
        raise ClientError("invalid_value", "tools must be a list (at most 128)", param)
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ClientError("unsupported_tool_type", "only function tools are supported "
                              "(type 'function'); MCP tools are not", f"{param}[{i}].type")
        name = tool.get("name")
        if not isinstance(name, str) or not name or len(name) > 64:
            raise ClientError("invalid_value", "a function tool needs a 'name' (1-64 "
                              "characters)", f"{param}[{i}].name")
        parameters = tool.get("parameters")
        if parameters is not None and (not isinstance(parameters, dict)
                                       or _depth(parameters) > MAX_SCHEMA_DEPTH):
            raise ClientError("invalid_value", "parameters must be a JSON schema object (at "
                              f"most {MAX_SCHEMA_DEPTH} levels deep)", f"{param}[{i}].parameters")
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise ClientError("invalid_value", "description must be a string",
                              f"{param}[{i}].description")
        tools.append({"type": "function", "name": name,
                      **({"description": description} if description else {}),
                      "parameters": parameters or {"type": "object", "properties": {}}})
    return tuple(tools)


MAX_SCHEMA_DEPTH = 32  # a tool's parameters are echoed and sent on: no hostile nesting


def _depth(value: Any, limit: int = MAX_SCHEMA_DEPTH + 1) -> int:
    """How deep a JSON value nests (counting stops past `limit`)."""
    if limit <= 0 or not isinstance(value, (dict, list)):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)


def _tool_choice(value: Any, param: str) -> str | dict[str, Any]:
    if value in ("auto", "none", "required"):
        return str(value)
    if isinstance(value, dict) and value.get("type") == "function" \
            and isinstance(value.get("name"), str):
        return {"type": "function", "name": value["name"]}
    raise ClientError("invalid_value", "tool_choice must be 'auto', 'none', 'required' or "
                      "{type: 'function', name}", param)


def _max_tokens(value: Any, param: str) -> int | None:
    if value == "inf" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise ClientError("invalid_value", "max_output_tokens must be 1-4096 or 'inf'", param)
    return value


def _text(content: Any, kinds: tuple[str, ...], param: str) -> str:
    texts = [part.get("text", part.get("transcript")) for part in content or []
             if isinstance(part, dict) and part.get("type") in kinds] \
        if isinstance(content, list) else []
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ClientError("missing_required_parameter",
                          f"a message needs content [{{type: '{kinds[0]}', text: ...}}]", param)
    return "\n".join(texts)


def conversation_item(item: dict[str, Any], item_id: str
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A client's Realtime item → (the conversation entry, the item as the server reports
    it). Messages of any role with text, function calls and their outputs; audio and image
    content is refused."""
    kind, role = item.get("type", "message"), item.get("role")
    if kind == "message":
        if role == "user":
            text = _text(item.get("content"), ("input_text",), "item.content")
            return {"role": "user", "content": text, "_id": item_id}, \
                ev.user_text_item(item_id, text)
        if role in ("system", "assistant"):
            kinds = ("input_text",) if role == "system" else ("output_text", "text",
                                                              "output_audio", "audio")
            text = _text(item.get("content"), kinds, "item.content")
            return {"role": role, "content": text, "_id": item_id}, \
                ev.message_item(item_id, role, text)
        raise ClientError("invalid_value", "a message's role is 'user', 'assistant' or "
                          "'system'", "item.role")
    if kind == "function_call":
        call_id, name = item.get("call_id"), item.get("name")
        arguments = item.get("arguments", "")
        if not isinstance(call_id, str) or not isinstance(name, str) \
                or not isinstance(arguments, str):
            raise ClientError("missing_required_parameter", "a function_call item needs "
                              "'call_id', 'name' and 'arguments' (strings)", "item")
        entry = {"role": "assistant", "content": None, "_id": item_id, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": name, "arguments": arguments}}]}
        return entry, ev.function_call_item(item_id, call_id, name, arguments, "completed")
    if kind == "function_call_output":
        call_id, output = item.get("call_id"), item.get("output")
        if not isinstance(call_id, str) or not isinstance(output, str):
            raise ClientError("missing_required_parameter", "a function_call_output item needs "
                              "'call_id' and 'output' (strings)", "item")
        return {"role": "tool", "tool_call_id": call_id, "content": output, "_id": item_id}, \
            ev.function_call_output_item(item_id, call_id, output)
    raise ClientError("unsupported_item", f"items of type '{kind}' are not supported (message, "
                      "function_call and function_call_output are)", "item.type")


def realtime_item(entry: dict[str, Any]) -> dict[str, Any]:
    """A conversation entry as the Realtime item it stands for (`conversation.item.retrieve`)."""
    item_id = entry["_id"]
    status = "incomplete" if entry.get("_incomplete") else "completed"
    if "tool_calls" in entry:
        call = entry["tool_calls"][0]
        return ev.function_call_item(item_id, call["id"], call["function"]["name"],
                                     call["function"]["arguments"], status)
    if entry["role"] == "tool":
        return ev.function_call_output_item(item_id, entry["tool_call_id"], entry["content"])
    if entry["role"] == "user":
        return ev.user_audio_item(item_id, entry["content"]) if entry.get("_audio") \
            else ev.user_text_item(item_id, entry["content"])
    if entry["role"] == "assistant":
        return ev.assistant_item(item_id, status, entry["content"],
                                 audio=bool(entry.get("_audio")))
    return ev.message_item(item_id, entry["role"], entry["content"])


def _object(parent: dict[str, Any], key: str, param: str) -> dict[str, Any]:
    value = parent.get(key) or {}
    if not isinstance(value, dict):
        raise ClientError("invalid_value", f"{param} must be an object", param)
    return value


def _turn_detection(value: Any, current: TurnDetection, default: TurnDetection
                    ) -> TurnDetection | None:
    """`server_vad` with its settings, or `semantic_vad` with an eagerness (mapped onto the
    silence threshold: EAGERNESS_SILENCE_MS)."""
    param = "session.audio.input.turn_detection"
    if value is None:
        return None
    kind = value.get("type", current.type) if isinstance(value, dict) else None
    if kind not in ("server_vad", "semantic_vad"):
        raise ClientError("unsupported_turn_detection", "turn_detection must be {type: "
                          "'server_vad' or 'semantic_vad', ...} or null", param)
    base = current
    fields: dict[str, Any] = {"type": kind}
    if kind == "semantic_vad":
        eagerness = value.get("eagerness") or "auto"
        if eagerness not in ("low", "medium", "high", "auto"):
            raise ClientError("invalid_value", "eagerness must be low, medium, high or auto",
                              f"{param}.eagerness")
        fields["eagerness"] = eagerness
        fields["silence_duration_ms"] = EAGERNESS_SILENCE_MS.get(
            eagerness, default.silence_duration_ms)
        fields["threshold"], fields["prefix_padding_ms"] = default.threshold, \
            default.prefix_padding_ms
    else:
        fields["eagerness"] = "auto"
        for name, types, lo, hi in (("threshold", (int, float), 0.0, 1.0),
                                    ("prefix_padding_ms", int, 0, 5000),
                                    ("silence_duration_ms", int, 30, 10000)):
            if value.get(name) is not None:
                v = value[name]
                if isinstance(v, bool) or not isinstance(v, types) or not lo <= v <= hi:
                    raise ClientError("invalid_value", f"{name} must be a number in [{lo}, {hi}]",
                                      f"{param}.{name}")
                fields[name] = v
    for name in ("create_response", "interrupt_response", "speculative"):
        if value.get(name) is not None:
            if not isinstance(value[name], bool):
                raise ClientError("invalid_value", f"{name} must be a boolean", f"{param}.{name}")
            fields[name] = value[name]
    return replace(base, **fields)
