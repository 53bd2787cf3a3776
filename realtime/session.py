"""`RealtimeSession`: one Realtime session, sans I/O. Client messages in, actions out.

It is fed text messages, binary audio and provider results, each with the time the shell saw
it, and answers with a list of actions (`realtime.actions`). It routes each client event
through one handler table to the concern that owns it (the config, the audio input, the
conversation's items, the answers), and owns what spans them: a turn's life from speech to
transcript (with speculation), the plan's allowance and the session's end, and resuming.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Callable

from audio.input import TurnEnded, TurnPaused, TurnResumed, TurnStarted
from audio.pcm import bytes_to_seconds, wav_bytes
from billing.meter import VoiceMeter, VoiceUsage
from dialogue.endofturn import Judge
from dialogue.speculation import Guess, Speculator
from dialogue.turntaking import StartResponse, TurnState, TurnTaker

from . import config as cfgs
from .actions import (Abandon, Action, Adopt, Charge, Close, JudgeTurn, ReportLimits, Send,
                      Transcribe)
from .config import SessionConfig
from .errors import ClientError
from .events import Events, user_audio_item
from .ids import Ids
from .input import InputAudio
from .items import Conversation
from .responses import Responses

# Close codes of a session ended by its plan (see docs/billing.md).
CLOSE_CODES = {"quota_exceeded": 4402, "session_expired": 4408, "idle_timeout": 4408,
               "server_shutting_down": 1012}  # 1012: service restart (RFC 6455 registry)
# Client events refused once the session is closing (they would start new work).
WORK_EVENTS = {"input_audio_buffer.commit", "conversation.item.create", "response.create"}
# OpenAI client events we recognise but do not implement (yet): refused with a clear reason.
UNSUPPORTED: set[str] = {"transcription_session.update"}


class RealtimeSession:
    def __init__(self, config: SessionConfig, *, provider_problem: str | None = None,
                 meter: VoiceMeter | None = None, binary_audio: bool = False,
                 ids: Ids | None = None) -> None:
        self.ids = ids or Ids.random()
        self.id = self.ids.session
        self.events = Events(self.ids)
        self.provider_problem = provider_problem
        self.meter = meter  # the plan's voice allowance; None: unmetered
        self._closing: tuple[str, str] | None = None  # (code, message) once the plan ends it
        self._last_client_at: float | None = None  # loop time of the last client message
        self.closed = False
        self.turns = TurnTaker(instructions=config.instructions, frame=config.frame,
                               new_response_id=lambda: self.ids("resp"),
                               history_messages=config.history_messages)
        self.spec = Speculator(max_per_turn=config.speculative_max_per_turn,
                               budget=config.speculative_budget)
        self._adopted: dict[int, str] = {}  # speculative serial → the turn awaiting its transcript
        self.conversation = Conversation(self.turns, self.events, config.history_messages)
        self.responses = Responses(config, self.turns, self.conversation, self.events,
                                   metered=meter is not None, binary_audio=binary_audio,
                                   settle=self._then_maybe_close)
        self.input = InputAudio(config, self.responses.echo_window)
        self.audio_ms = 0.0  # of audio heard (fed to the turn detection), for the shell's figures
        self._speech_item_id: str | None = None  # the user item of the speech in progress
        self.judge: Judge | None = None  # semantic_vad's end-of-turn verdicts (config setter)
        self.config = config
        self._handlers: dict[str, Callable[[dict[str, Any], float], list[Action]]] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self.conversation.create,
            "conversation.item.retrieve": self.conversation.retrieve,
            "conversation.item.delete": self.conversation.delete,
            "response.create": self.responses.create,
            "response.cancel": self.responses.cancel,
            "output_audio_buffer.clear": self.responses.clear_audio,
            "conversation.item.truncate": self.responses.truncate,
        }
        self._on_turn: dict[type, Callable[[Any, float], list[Action]]] = {
            TurnStarted: self._speech_started, TurnPaused: self._paused,
            TurnResumed: self._resumed, TurnEnded: self._speech_stopped,
        }

    @property
    def config(self) -> SessionConfig:
        return self._config

    @config.setter
    def config(self, config: SessionConfig) -> None:
        """Every concern sees the same config; the turn-taker takes what it decides with."""
        self._config = config
        self.responses.config = config
        self.input.config = config
        td = config.turn_detection
        self.turns.instructions = config.instructions
        self.turns.frame = config.frame
        self.turns.auto_respond = td.create_response if td else False
        self.turns.interrupt = td.interrupt_response if td else False
        eagerness = td.eagerness if td is not None and config.semantic else None
        if eagerness is None:
            self.judge = None
        elif self.judge is None or self.judge.eagerness_name != eagerness:
            self.judge = Judge(eagerness)

    # -- entry points ----------------------------------------------------------------------
    def open(self, now: float | None = None) -> list[Action]:
        """`now`: when the socket opened, from which an idle session is timed."""
        self._last_client_at = now
        out: list[Action] = [self.events.send("session.created", session=self._session_object())]
        if self.meter is not None:
            out.append(ReportLimits())
        if self.provider_problem:
            out.append(self.events.error("provider_not_configured", self.provider_problem,
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
            return [self.events.error("invalid_json", f"message is not valid JSON: {exc}")]
        except RecursionError:  # json's parser recurses per level: a hostile frame ends here
            return [self.events.error("invalid_json", "message is nested too deeply")]
        if not isinstance(message, dict):
            return [self.events.error("invalid_json", "message must be a JSON object")]
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
            return [self.events.error(exc.code, exc.message, event_id=event_id, param=exc.param)]

    def receive_audio(self, pcm: bytes, now: float, *, event_id: str | None = None) -> list[Action]:
        self._last_client_at = now
        if len(pcm) > self.config.max_message_bytes:
            return [self._too_large(len(pcm), event_id)]
        if self._closing is not None:
            return []  # the plan ended the session: what arrives now is neither heard nor billed
        try:
            turn_events = self.input.feed(pcm, now)
        except ClientError as exc:
            return [self.events.error(exc.code, exc.message, event_id=event_id)]
        ms = self.config.input_format.ms(len(pcm))
        self.audio_ms += ms
        out: list[Action] = []
        for turn_event in turn_events:
            out += self._on_turn[type(turn_event)](turn_event, now)
        meter = self.meter
        if meter is not None:
            charge = meter.audio(ms)
            if charge:
                out.append(Charge(charge))
            if meter.exhausted:
                out += self._end("quota_exceeded", "the plan's voice minutes are used up")
        return out

    # -- what the shell got from the providers ---------------------------------------------
    def transcription_completed(self, item_id: str, text: str, seconds: float,
                                guess: Guess | None = None) -> list[Action]:
        """`guess`: the speculative guess whose transcript this is (its held answer, if any, is
        used when it fits the conversation as it is now, else discarded)."""
        out: list[Action] = [self.events.send(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id, content_index=0, transcript=text,
            usage={"type": "duration", "seconds": round(seconds, 3)})]
        if not text.strip():  # not in the conversation, but the client may retrieve it
            self.conversation.unheard(item_id, text)
        held = guess.response_id if guess is not None else None
        reuse = None if held is None or guess is None else \
            StartResponse(held, guess.messages, guess.question)
        start = self.turns.transcribed(item_id, text, reuse)
        out += self.responses.start(start, held=held)
        if held is not None and (start is None or start.response_id != held):
            self.spec.answer_unused()
            out.append(Abandon(0, held))
        return self._then_maybe_close(out)

    def transcription_failed(self, item_id: str, code: str, message: str) -> list[Action]:
        out: list[Action] = [
            self.events.send("conversation.item.input_audio_transcription.failed",
                             item_id=item_id, content_index=0,
                             error={"type": "server_error", "code": code, "message": message}),
            self.events.error(code, f"transcription of {item_id} failed: {message}",
                              type="server_error"),
        ]
        return self._then_maybe_close(
            out + self.responses.start(self.turns.transcription_failed(item_id)))

    def speculative_transcribed(self, serial: int, text: str, seconds: float) -> list[Action]:
        """The transcript of a speculative transcription: the turn's, if the turn has ended on
        it; else kept for the guess, and the answer started (held) if one would start now."""
        item_id = self._adopted.pop(serial, None)
        if item_id is not None:
            return self.transcription_completed(item_id, text, seconds)
        guess = self.spec.transcribed(serial, text, seconds)
        if guess is None or self._closing is not None:
            return []
        out: list[Action] = []
        start = self.turns.preview(text)
        if start is not None:
            self.spec.answering(start.response_id, start.messages, start.question)
            out.append(self.responses.generate(start, self.responses.default_spec(), held=True))
        if self.judge is not None:  # the words may say the student is (not) done
            out += self._end_after(self.judge.transcribed(guess.speech_end_ms, text))
        return out

    def turn_judged(self, serial: int, probability: float) -> list[Action]:
        """The end-of-turn model's verdict on pause `serial` (`JudgeTurn`): the turn ends now,
        or later, or sooner than the configured silence (dialogue.endofturn)."""
        if self.judge is None or self._closing is not None:
            return []
        return self._end_after(self.judge.judged(serial, probability))

    def _end_after(self, silence_ms: int | None) -> list[Action]:
        if silence_ms is None or self._speech_item_id is None:
            return []
        turn = self.input.audio.end_after(silence_ms)
        return self._speech_stopped(turn) if turn is not None else []

    def speculative_transcription_failed(self, serial: int, code: str, message: str
                                         ) -> list[Action]:
        item_id = self._adopted.pop(serial, None)
        if item_id is not None:
            return self.transcription_failed(item_id, code, message)
        self.spec.transcription_failed(serial)  # the turn will be transcribed afresh
        guess = self.spec.guess
        if self.judge is not None and guess is not None and guess.serial == serial:
            return self._end_after(self.judge.transcribed(guess.speech_end_ms, None))
        return []

    def response_delta(self, response_id: str, delta: str) -> list[Action]:
        return self.responses.delta(response_id, delta)

    def response_tool_call(self, response_id: str, index: int, call_id: str | None,
                           name: str | None, arguments: str) -> list[Action]:
        return self.responses.tool_call(response_id, index, call_id, name, arguments)

    def response_citations(self, response_id: str, citations: list[dict[str, Any]]) -> Send:
        return self.responses.citations(response_id, citations)

    def response_completed(self, response_id: str, truncated: bool = False) -> list[Action]:
        return self.responses.completed(response_id, truncated)

    def response_failed(self, response_id: str, code: str, message: str) -> list[Action]:
        return self.responses.failed(response_id, code, message)

    def response_metrics(self, response_id: str, metrics: dict[str, Any]) -> Send:
        """`tutor.response.metrics`: stage latencies of a finished response and how busy the
        session and the process are, measured by the shell."""
        return self.events.send("tutor.response.metrics", response_id=response_id, **metrics)

    def speech_audio(self, response_id: str, index: int, pcm: bytes, now: float) -> list[Action]:
        """Audio of piece `index` of an answer, in order, as the shell gets it from TTS."""
        return self.responses.audio(response_id, index, pcm, now)

    def speech_done(self, response_id: str, index: int) -> list[Action]:
        return self.responses.audio_done(response_id, index)

    def speech_failed(self, response_id: str, index: int, code: str, message: str
                      ) -> list[Action]:
        return self.responses.synthesis_failed(response_id, index, code, message)

    def speaking(self, response_id: str) -> bool:
        """Whether this answer is (also) spoken."""
        return self.responses.speaking(response_id)

    # -- the plan's allowance and the session's end ----------------------------------------
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

    def rate_limits_updated(self, rate_limits: list[dict[str, Any]]) -> list[Send]:
        """What the plan has left (entries built by `billing`; none on an unlimited plan):
        `rate_limits.updated` with the entries OpenAI's clients know (`requests`, `tokens`),
        and `tutor.rate_limits.updated` with all of them, voice minutes included."""
        if not rate_limits:
            return []
        known = [e for e in rate_limits if e.get("name") in ("requests", "tokens")]
        out = [self.events.send("rate_limits.updated", rate_limits=known)] if known else []
        return out + [self.events.send("tutor.rate_limits.updated", rate_limits=rate_limits)]

    def final_charge(self) -> Charge | None:
        """When the socket is gone: the audio not yet charged."""
        if self.meter is None:
            return None
        ms = self.meter.flush()
        return Charge(ms) if ms else None

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

    def slow_consumer(self, backlog_limit: int) -> Send:
        """The shell stops sending to a client that does not read: what it is told if it ever
        reads again (the shell closes with 1008)."""
        return self.events.error("slow_consumer", f"more than {backlog_limit} bytes of events "
                                 "were waiting to be read; the session is closed")

    def _end(self, code: str, message: str) -> list[Action]:
        """End the session for the plan: speech in progress is dropped, an answer already being
        given (or awaited for a finished turn) completes, then `error` and `Close`."""
        if self._closing is not None:
            return []
        self._closing = (code, message)
        self.input.audio.clear()
        self._drop_speech()
        return self._discard_guess() + self._maybe_close()

    def _maybe_close(self) -> list[Action]:
        if self._closing is None or self.closed or self.turns.state != TurnState.LISTENING:
            return []
        self.closed = True
        code, message = self._closing
        report: list[Action] = [ReportLimits()] if code == "quota_exceeded" else []
        error_type = "server_error" if code == "server_shutting_down" else "invalid_request_error"
        return [*report, self.events.error(code, message, type=error_type),
                Close(CLOSE_CODES[code], code)]

    def _then_maybe_close(self, out: list[Action]) -> list[Action]:
        return out + self._maybe_close() if self._closing is not None else out

    # -- resuming after a dropped connection ---------------------------------------------
    def export_state(self) -> dict[str, Any]:
        """What a resumed session needs: the conversation and the settings a client chose."""
        return {"history": list(self.turns.history), **cfgs.exported(self.config)}

    def restore(self, state: dict[str, Any]) -> list[Action]:
        """Continue a dropped session's conversation (the shell checked the token and user)."""
        self.config = cfgs.restored(self.config, state)
        self.input.reset(self.config)
        for entry in state.get("history", [])[-self.turns.history.maxlen:]:  # type: ignore[index]
            self.turns.history.append(dict(entry))  # our own export: items, calls and all
        return [self.events.send("session.updated", session=self._session_object()),
                self.events.send("tutor.session.resumed", messages=len(self.turns.history))]

    def resume_refused(self) -> Send:
        return self.events.error("resume_not_found", "the resume token is unknown, used, "
                                 "expired or not yours; this is a new conversation",
                                 param="resume")

    def resumable(self, token: str, expires_in_s: float) -> Send:
        """`tutor.session.resumable`: reconnect with `?resume=<token>` to go on from here."""
        return self.events.send("tutor.session.resumable", resume_token=token,
                                expires_in_s=expires_in_s)

    # -- client events (the rest are the concerns' own) ------------------------------------
    def _session_update(self, message: dict[str, Any], now: float) -> list[Action]:
        session = message.get("session")
        if not isinstance(session, dict):
            raise ClientError("missing_required_parameter", "session.update needs a 'session' object",
                              "session")
        old = self.config
        self.config, problems = cfgs.updated_config(old, session)
        out: list[Action] = []
        if (old.input_format, old.turn_detection, old.min_speech_ms) != (
            self.config.input_format, self.config.turn_detection, self.config.min_speech_ms
        ):
            self.input.reset(self.config)
            self._drop_speech()
            out += self._discard_guess()
        out.append(self.events.send("session.updated", session=self._session_object()))
        if problems:  # one error for the fields refused; the rest was applied
            event_id = message.get("event_id")
            out.append(self.events.error(
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
        turn = self.input.audio.commit()
        if turn is None or not turn.audio:
            raise ClientError("input_audio_buffer_commit_empty",
                              "nothing to commit: the input audio buffer holds no speech")
        if self.config.turn_detection is None:
            return self._committed(turn, self.ids("item"))
        return self._speech_stopped(turn)

    def _clear(self, message: dict[str, Any], now: float) -> list[Action]:
        self.input.audio.clear()
        self._drop_speech()
        return self._discard_guess() + [self.events.send("input_audio_buffer.cleared")]

    # -- a turn, from speech to transcript -------------------------------------------------
    def _speech_started(self, started: TurnStarted, now: float | None = None) -> list[Action]:
        self._speech_item_id = self.ids("item")
        self.spec.turn_started()
        out: list[Action] = [self.events.send("input_audio_buffer.speech_started",
                                              audio_start_ms=started.start_ms,
                                              item_id=self._speech_item_id)]
        cut = self.turns.speech_started()
        return out + (self.responses.cancelled(cut, now) if cut else [])

    def _speech_stopped(self, turn: TurnEnded, now: float | None = None) -> list[Action]:
        item_id = self._speech_item_id or self.ids("item")
        self._speech_item_id = None
        if self.judge is not None:
            self.judge.turn_ended()
        out: list[Action] = []
        if turn.forced:
            out.append(self.events.error(
                "input_audio_turn_too_long", f"the turn reached the maximum of "
                f"{self.config.max_turn_ms} ms and was ended there"))
        out.append(self.events.send("input_audio_buffer.speech_stopped",
                                    audio_end_ms=turn.end_ms, item_id=item_id))
        return out + self._committed(turn, item_id)

    def _drop_speech(self) -> None:
        """The speech in progress will not become a turn (cleared, reconfigured, ending)."""
        if self.judge is not None:
            self.judge.turn_ended()
        if self._speech_item_id is not None:
            self._speech_item_id = None
            self.turns.speech_discarded()

    def _committed(self, turn: TurnEnded, item_id: str) -> list[Action]:
        previous = self.conversation.last_item_id
        used, dropped = self.spec.turn_ended(item_id, turn.speech_end_ms)
        out: list[Action] = [] if dropped is None else [Abandon(dropped.serial,
                                                                dropped.response_id, True)]
        self.turns.turn_committed(item_id)
        self.responses.unanswered_audio_s += bytes_to_seconds(len(turn.audio))
        out += [
            self.events.send("input_audio_buffer.committed", item_id=item_id,
                             previous_item_id=previous),
            *self.conversation.complete(user_audio_item(item_id)),
        ]
        if used is None:
            return out + [self._transcribe(item_id, turn.audio)]
        out.append(Adopt(used.serial))  # the pause's transcription is this turn's
        if used.text is None:  # still running: its result completes the turn
            self._adopted[used.serial] = item_id
            return out
        return out + self.transcription_completed(item_id, used.text, used.seconds, used)

    def _transcribe(self, item_id: str, pcm: bytes, speculative: int = 0) -> Transcribe:
        return Transcribe(item_id, wav_bytes(pcm), bytes_to_seconds(len(pcm)),
                          self.config.transcription_model, self.config.transcription_language,
                          speculative=speculative)

    # -- speculation -----------------------------------------------------------------------
    def _paused(self, paused: TurnPaused, now: float) -> list[Action]:
        """A pause in the turn (counted from the end of speech): the end-of-turn model judges
        it (semantic_vad) and its transcription starts speculatively (both when both are on)."""
        item_id = self._speech_item_id
        if item_id is None or self._closing is not None or not paused.audio:
            return []  # no turn the client knows of (held as echo), or ending
        out: list[Action] = []
        guess = self.spec.paused(item_id, paused.speech_end_ms) \
            if self.config.speculating else None
        if guess is not None:
            out.append(self._transcribe(item_id, paused.audio, speculative=guess.serial))
        if self.judge is not None:
            serial = self.judge.paused(paused.speech_end_ms, text_coming=guess is not None)
            if serial is not None:
                out.append(JudgeTurn(serial, paused.audio))
        return out

    def _resumed(self, resumed: TurnResumed, now: float) -> list[Action]:
        if self.judge is not None:
            self.judge.resumed()
        return self._discard_guess(resumed=True)

    def _discard_guess(self, *, resumed: bool = False) -> list[Action]:
        guess = self.spec.resumed() if resumed else self.spec.discard()
        return [] if guess is None else [Abandon(guess.serial, guess.response_id, resumed)]

    # -- helpers ---------------------------------------------------------------------------
    def _too_large(self, size: int, event_id: str | None = None) -> Send:
        return self.events.error("message_too_large",
                                 f"message of {size} bytes exceeds the limit of "
                                 f"{self.config.max_message_bytes} bytes; it was dropped",
                                 event_id=event_id)

    def _session_object(self) -> dict[str, Any]:
        return cfgs.session_object(self.config, self.id)
