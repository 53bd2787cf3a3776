"""`SessionRunner`: the shell around one `RealtimeSession`, a loop that moves bytes.

It reads the socket's messages and hands them to the core with the loop's clock, and carries out
the actions it gets back through one table keyed by action type: events go to one writer task
(so they leave in the order they were decided), provider calls run as tasks whose results are
fed back to the core. Cancelling a response cancels its task, which closes the provider's HTTP
stream at once. Speculative work (see `dialogue.speculation`) runs the same way: a held answer
keeps what its provider gave (`Answer.held_outputs`) until the core releases it, or is dropped
with its task when the core abandons it. With moderation on (`server.moderation`), the student's
words are checked while retrieval runs and the answer waits for the verdict; the answer's text is
checked sentence by sentence (`_AnswerGuard`, carrying out `realtime.moderation.AnswerGate`)
before the core, and so the client and the speech,
sees any of it; a held answer is moderated before it is released, and cancelling an answer
cancels its pending checks. A finished turn is handed to the background writer;
its `response.done` leaves once the turn is on local disk (the writer's spool, a few ms), so a
client that got it has a turn that survives a crash of the server (docs/operations.md,
"Durability of turns"). Every step of the core and the actions it returns run through `step`
(or `_receive`, `_answered`), which add their thread CPU time to the session's `cpu_s`: read
at scrape time for `tutor_session_cpu_seconds_total`, and sent in `tutor.response.metrics`
with the event loop's lag (docs/operations.md, "How busy is a process").
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Union

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from billing.service import Billing, VoiceGrant
from providers import ProviderError, Providers, ToolCallDelta, Truncated, Usage
from rag.grounding import Grounding
from realtime import (Abandon, Action, Adopt, Cancel, Charge, Close, Generate, RealtimeSession,
                      JudgeTurn, Record, Release, ReportLimits, Send, SendBinary, Synthesize,
                      Transcribe)
from realtime.beta import client_text_to_ga, ga_to_client
from realtime.moderation import AnswerGate, Check, GateAction, Pass, Ruling

from .loopwatch import LoopWatch
from .metrics import SAMPLE_EVERY, Metrics
from .moderation import Moderation, Turn
from .playback import Playback
from .resume import ResumeStore

log = logging.getLogger("tutor.voice")
slog = structlog.get_logger("tutor.voice")
DURABLE_WAIT_S = 2.0  # longest `response.done` waits for its turn to reach the spool


@dataclass
class TurnClock:
    """Stage timestamps of one turn (perf_counter seconds), reported as `tutor.response.metrics`."""

    ended: float | None  # when the end of the turn was decided (None: not yet, speculative)
    stt_start: float = 0.0
    stt_end: float = 0.0
    speculative: bool = False  # transcription started at a pause, before the turn ended


@dataclass(frozen=True)
class Citations:
    """The course passages an answer is grounded in (retrieval's output, before the chat's)."""

    passages: list[dict[str, Any]]


@dataclass(frozen=True)
class Failed:
    """The answer failed: this is the protocol error the client gets."""

    code: str
    message: str


@dataclass(frozen=True)
class Finished:
    """The answer's stream ended (its `Usage` and `Truncated` are on the `Answer`)."""


# What an answer's providers give, in order: fed to the core, or held while it is speculative.
Output = Union[str, ToolCallDelta, Citations, Failed, Finished]


@dataclass
class Answer:
    """One answer, from its `Generate` to its `Record`. A held (speculative) answer keeps what
    its providers gave in `held_outputs` until released; the figures time it for
    `tutor.response.metrics`, which `metrics` holds once worked out."""

    clock: TurnClock | None
    held: bool = False
    held_outputs: list[Output] = field(default_factory=list)
    started: float = 0.0  # the chat request went out
    first_token: float = 0.0
    first_sent: float = 0.0  # the first delta went to the client
    retrieval_ms: float | None = None
    retrieval_degraded: str | None = None  # rag.grounding.TIMED_OUT / FAILED: answered without
    usage: Usage | None = None
    truncated: bool = False  # stopped at its token cap
    input_verdict: float = 0.0  # moderation's verdict on the student's words came (0: none)
    metrics: dict[str, Any] = field(default_factory=dict)


class SessionRunner:
    def __init__(self, websocket: WebSocket, session: RealtimeSession, providers: Providers, *,
                 user_id: str | None = None,
                 record: Callable[[dict[str, Any]], None] | None = None,
                 durable: Callable[[], Awaitable[None]] | None = None,
                 knowledge: Callable[[str, str | None], Awaitable[Grounding]] | None = None,
                 course: str | None = None, billing: Billing | None = None,
                 grant: VoiceGrant | None = None, resume: ResumeStore | None = None,
                 resume_ttl_s: float = 120.0, metrics: Metrics | None = None,
                 beta: bool = False, outbox_max_bytes: int,
                 moderation: Moderation | None = None,
                 loopwatch: LoopWatch | None = None) -> None:
        self.websocket = websocket
        self.session = session
        self.providers = providers
        self.user_id = user_id
        self.record = record  # hands a finished turn to the background writer (never awaits)
        # waits until every turn recorded so far is on local disk (the writer's spool):
        # `response.done` goes out after that, so an answered turn survives a crash
        self.durable = durable
        self._barrier: asyncio.Future[None] | None = None  # holds response.done in the outbox
        self.knowledge = knowledge  # (question, user id) → course passages and memories
        self.course = course
        self.billing = billing
        self.grant = grant
        self.resume = resume
        self.resume_ttl_s = resume_ttl_s
        self.metrics = metrics
        self.beta = beta  # the client speaks the beta protocol: events translated both ways
        self.moderation = moderation  # None: nothing is checked
        self.loopwatch = loopwatch  # the event loop's recent lag, for tutor.response.metrics
        # thread CPU seconds of this session's own work on the loop: the core's steps and the
        # actions carried out (`_receive`, `step`, `_answered`), each timed once, outermost
        self.cpu_s = 0.0
        self._timing = False
        self.resume_token = secrets.token_urlsafe(24)
        self.charges: set[asyncio.Task[None]] = set()  # never cancelled: billing must land
        self.playbacks: dict[str, Playback] = {}  # response id → its synthesis and playback
        self.outbox: asyncio.Queue[str | bytes | Close | asyncio.Future[None]] = asyncio.Queue()
        self.outbox_max_bytes = outbox_max_bytes
        self.queued_bytes = 0  # of the events decided and not yet handed to the socket
        self.overflowed = False  # the client stopped reading: the session is being closed
        self._receiving: asyncio.Task[Any] | None = None  # the reader loop, while it runs
        self.responses: dict[str, asyncio.Task[None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.get_running_loop()
        self._answering: TurnClock | None = None  # the turn whose transcript is being handled
        self._answers: dict[str, Answer] = {}  # response id → its answer, until recorded
        self._guesses: dict[int, tuple[asyncio.Task[None], TurnClock]] = {}  # speculative STT
        self._chunks = 0  # audio messages received (one in SAMPLE_EVERY is timed)
        self._carry_out: dict[type, Callable[[Any], None]] = {
            Send: self._send, SendBinary: self._send_binary,
            Transcribe: self._start_transcription, Generate: self._start_answer,
            JudgeTurn: self._judge_turn,
            Cancel: self._cancel, Synthesize: self._synthesize,
            Adopt: self._adopt, Release: self._release, Abandon: self._abandon,
            Record: self._finished_turn, Charge: self._start_charge,
            ReportLimits: self._report_limits, Close: self._close,
        }
        self._to_core: dict[type, Callable[[str, Answer, Any], list[Action]]] = {
            ToolCallDelta: self._tool_call, Citations: self._citations, Failed: self._failed,
            Finished: self._completed,
        }

    async def run(self, resume: dict[str, Any] | Literal[False] | None = None) -> None:
        """`resume`: the state of the dropped session to continue (checked by the caller), or
        False when the client asked to resume and the token was refused."""
        writer = asyncio.create_task(self._write())
        self.step(self.session.open, self.loop.time())
        if self.resume is not None:
            if resume is False:
                self.step(lambda: [self.session.resume_refused()])
            elif resume is not None:
                self.step(self.session.restore, resume)
            self.step(lambda: [self.session.resumable(self.resume_token, self.resume_ttl_s)])
        timers: list[asyncio.TimerHandle] = []
        if self.grant is not None and self.grant.tier.max_session_minutes:
            timers.append(self.loop.call_later(self.grant.tier.max_session_minutes * 60,
                                               lambda: self.step(self.session.expire)))
        if self.grant is not None and self.billing is not None:
            self._spawn(self._keep_alive())
        self._spawn(self._watch_idle())
        self._receiving = asyncio.current_task()
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                now = self.loop.time()
                if message.get("text") is not None:
                    text = client_text_to_ga(message["text"]) if self.beta else message["text"]
                    self._receive(self.session.receive_text, text, now)
                elif message.get("bytes") is not None:
                    self._receive(self.session.receive_audio, message["bytes"], now)
        except WebSocketDisconnect:
            pass
        except asyncio.CancelledError:
            if not self.overflowed:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]  # ended by _overflow
        finally:
            self._receiving = None
            for timer in timers:
                timer.cancel()
            for task in (*self.tasks, writer):
                task.cancel()
            for playback in self.playbacks.values():
                playback.cancel()
            await self._save_for_resume()
            await self._settle_charges()

    @property
    def audio_s(self) -> float:
        """Seconds of audio this session has received (and the core heard)."""
        return self.session.audio_ms / 1000

    def step(self, fn: Callable[..., list[Action]], *args: Any) -> None:
        """One step of the core, `fn(*args)`, and its actions carried out, timed as this
        session's CPU (`_timed`)."""
        self._timed(lambda: self.execute(fn(*args)))

    def _timed(self, fn: Callable[..., None], *args: Any) -> None:
        """`fn(*args)`, its thread CPU time added to this session's (`cpu_s`): once, since a
        call inside a timed one is already counted."""
        if self._timing:
            fn(*args)
            return
        self._timing = True
        started = time.thread_time()
        try:
            fn(*args)
        finally:
            self._timing = False
            self.cpu_s += time.thread_time() - started

    def _receive(self, receive: Callable[[Any, float], list[Action]], data: Any, now: float
                 ) -> None:
        """Hand a client message to the core and carry out its actions, timed as this
        session's CPU."""
        self._timed(self._handle, receive, data, now)

    def _handle(self, receive: Callable[[Any, float], list[Action]], data: Any, now: float
                ) -> None:
        """A client message to the core, timing it for the VAD histograms: a chunk that
        ended a turn is an endpoint decision; one audio chunk in SAMPLE_EVERY gives the cost
        per 30 ms frame. Events are sent after the clock stops."""
        if self.metrics is None:
            self.execute(receive(data, now))
            return
        started = time.perf_counter()
        actions = receive(data, now)
        spent = time.perf_counter() - started
        if actions and any(isinstance(a, Adopt) or (isinstance(a, Transcribe)
                                                    and not a.speculative) for a in actions):
            self.metrics.endpoint.observe(spent)
        elif isinstance(data, bytes) and data:
            self._chunks += 1
            if self._chunks % SAMPLE_EVERY == 0:
                chunk_ms = self.session.config.input_format.ms(len(data))
                self.metrics.vad_frame.observe(spent * 30 / chunk_ms)
        self.execute(actions)

    def execute(self, actions: list[Action]) -> None:
        for action in actions:
            self._carry_out[type(action)](action)
        if self._barrier is not None:  # a response.done with no turn to record
            self._barrier.set_result(None)
            self._barrier = None

    # -- the actions, one handler each (`_carry_out`) --------------------------------------
    def _send(self, action: Send) -> None:
        if self.metrics is not None:
            self.metrics.event_sent(action.event)
        event = ga_to_client(action.event) if self.beta else action.event
        if event is None:
            return
        if action.event["type"] == "response.done" and self.durable is not None:
            self._barrier = self.loop.create_future()
            self.outbox.put_nowait(self._barrier)  # released once it is recorded
        self._put(json.dumps(event))

    def _send_binary(self, action: SendBinary) -> None:
        self._put(action.data)

    def _start_transcription(self, action: Transcribe) -> None:
        if action.speculative:
            clock = TurnClock(None, speculative=True)
            task = self._spawn(self._transcribe(action, clock))
            self._guesses[action.speculative] = (task, clock)
        else:
            self._spawn(self._transcribe(action, TurnClock(time.perf_counter())))

    def _start_answer(self, action: Generate) -> None:
        answer = self._answers[action.response_id] = Answer(self._answering, held=action.held)
        self.responses[action.response_id] = self._spawn(self._generate(action, answer))

    def _cancel(self, action: Cancel) -> None:
        task = self.responses.pop(action.response_id, None)
        if task is not None:
            task.cancel()
        self._stop_speaking(action.response_id)

    def _synthesize(self, action: Synthesize) -> None:
        playback = self.playbacks.get(action.response_id)
        if playback is None:
            playback = self.playbacks[action.response_id] = Playback(self, action.response_id)
        playback.add(action)

    def _adopt(self, action: Adopt) -> None:
        guess = self._guesses.pop(action.serial, None)
        if guess is not None:  # the turn ends now; its transcript is known or on its way
            guess[1].ended = time.perf_counter()
        if self.metrics is not None:
            self.metrics.speculations.labels("hit").inc()
            self.metrics.speculative_calls.labels("stt", "used").inc()

    def _release(self, action: Release) -> None:
        answer = self._answers[action.response_id]
        answer.held = False
        held, answer.held_outputs = answer.held_outputs, []
        for output in held:  # what it generated while held, in order
            self._answered(action.response_id, answer, output)
        if self.metrics is not None:
            self.metrics.speculative_calls.labels("llm", "used").inc()

    def _abandon(self, action: Abandon) -> None:
        """Speculative work the core will not use: cancelled, and nothing of it sent."""
        guess = self._guesses.pop(action.serial, None)
        if guess is not None:
            guess[0].cancel()
        if self.metrics is not None and action.serial:
            if action.missed:  # as the core's Speculator counts them (not a clear or the end)
                self.metrics.speculations.labels("miss").inc()
            self.metrics.speculative_calls.labels("stt", "wasted").inc()
        if action.response_id is not None:
            task = self.responses.pop(action.response_id, None)
            if task is not None:
                task.cancel()
            self._answers.pop(action.response_id, None)
            if self.metrics is not None:
                self.metrics.speculative_calls.labels("llm", "wasted").inc()

    def _finished_turn(self, action: Record) -> None:
        spoken = self._stop_speaking(action.response_id)  # finished, failed or cut
        answer = self._answers.pop(action.response_id, None)
        if spoken and answer and answer.metrics and action.status == "completed":
            answer.metrics.update(self._load())
            event = self.session.response_metrics(action.response_id, answer.metrics)
            self._put(json.dumps(event.event))
        self._record(action, answer)
        if self._barrier is not None:
            self._spawn(self._release_when_durable(self._barrier))
            self._barrier = None
        if self.resume is not None:  # each answer makes the token's state current
            self._spawn(self._save_for_resume())

    def _start_charge(self, action: Charge) -> None:
        task = asyncio.create_task(self._charge(action.ms))
        self.charges.add(task)
        task.add_done_callback(self.charges.discard)

    def _report_limits(self, action: ReportLimits) -> None:
        entries = (self.billing.rate_limits(self.grant)
                   if self.billing is not None and self.grant is not None else [])
        for event in self.session.rate_limits_updated(entries):
            self._put(json.dumps(event.event))

    def _close(self, action: Close) -> None:
        self._put(action)  # the writer closes after what is queued before

    async def _release_when_durable(self, barrier: asyncio.Future[None]) -> None:
        assert self.durable is not None
        try:
            await asyncio.wait_for(self.durable(), DURABLE_WAIT_S)
        except Exception as exc:  # the spool's disk failing must not stall the session
            log.error("the turn did not reach the spool in %.0f s (%r); answering anyway",
                      DURABLE_WAIT_S, exc)
        finally:
            if not barrier.done():
                barrier.set_result(None)

    async def _save_for_resume(self) -> None:
        if self.resume is None:
            return
        try:
            await self.resume.save(self.resume_token,
                                   {"user_id": self.user_id, "session_id": self.session.id,
                                    **self.session.export_state()}, self.resume_ttl_s)
        except Exception as exc:  # a blip of the store: the conversation is not resumable
            log.warning("could not save session %s for resume: %s", self.session.id, exc)

    def _load(self) -> dict[str, float]:
        """How busy the session and the process are, for `tutor.response.metrics`: this
        session's CPU so far and the event loop's largest lag of the last second (ms)."""
        out = {"session_cpu_ms": round(self.cpu_s * 1000, 3)}
        if self.loopwatch is not None:
            out["loop_lag_ms"] = self.loopwatch.recent_ms
        return out

    def first_audio(self, response_id: str, at: float) -> None:
        """The first audio of an answer went out: how long after its first text delta."""
        answer = self._answers.get(response_id)
        if answer is not None and answer.first_sent:
            answer.metrics["first_audio_after_first_delta_ms"] = \
                round((at - answer.first_sent) * 1000, 3)

    def drain(self) -> None:
        """The server is stopping (SIGTERM): finish the current answer, then close 1012."""
        self.step(self.session.drain)

    def _stop_speaking(self, response_id: str) -> bool:
        playback = self.playbacks.pop(response_id, None)
        if playback is not None:
            playback.cancel()
        return playback is not None

    async def _charge(self, ms: int) -> None:
        assert self.billing is not None and self.grant is not None and self.user_id is not None
        try:
            usage = await self.billing.charge_voice(self.user_id, self.session.id,
                                                    self.grant.tier, ms)
        except Exception as exc:
            self.billing.store_failed("voice charge", exc)
            self.step(self.session.quota_charge_failed)
        else:
            self.step(self.session.quota_charged, usage)

    async def _settle_charges(self) -> None:
        """The socket is gone: wait for charges in flight, then charge what is left."""
        if self.billing is None or self.grant is None:
            return
        deadline = self.loop.time() + 5.0
        while self.charges and self.loop.time() < deadline:  # one charge may start the next
            await asyncio.wait(set(self.charges), timeout=deadline - self.loop.time())
        final = self.session.final_charge()
        if final is not None and self.user_id is not None:
            try:
                await self.billing.charge_voice(self.user_id, self.session.id, self.grant.tier,
                                                final.ms)
            except Exception as exc:
                self.billing.store_failed("voice charge", exc)
                log.error("session %s: %d ms of voice could not be charged", self.session.id,
                          final.ms)

    async def _watch_idle(self) -> None:
        """Wakes at the core's idle deadline (which moves with each client message) and lets
        it decide; ends when the session has none (no timeout, or closing)."""
        while (deadline := self.session.idle_deadline()) is not None:
            await asyncio.sleep(max(0.0, deadline - self.loop.time()))
            self.step(self.session.check_idle, self.loop.time())

    async def _keep_alive(self) -> None:
        """Keeps this session counted among the user's live ones (the count expires on a crash)."""
        assert self.billing is not None and self.user_id is not None
        while True:
            await asyncio.sleep(self.billing.session_ttl_s / 3)
            await self.billing.keep_voice(self.user_id, self.session.id)

    def _record(self, turn: Record, answer: Answer | None) -> None:
        usage = answer.usage if answer is not None else None
        metrics = answer.metrics if answer is not None else {}
        if self.metrics is not None:
            self.metrics.observe_turn(turn.kind, turn.status, metrics)
        # ids, status and timings only: never the transcript or the answer at info level
        slog.info("turn finished", response_id=turn.response_id, kind=turn.kind,
                  status=turn.status, audio_seconds=turn.audio_seconds, **metrics)
        if self.record is None:
            return
        self.record({
            "session_id": self.session.id, "user_id": self.user_id, "kind": turn.kind,
            "course": self.course,
            "response_id": turn.response_id, "transcript": turn.transcript,
            "answer": turn.answer, "status": turn.status,
            "cancelled": turn.status == "cancelled", "audio_seconds": turn.audio_seconds,
            "tokens_in": usage.tokens_in if usage else None,
            "tokens_out": usage.tokens_out if usage else None,
            "stt_ms": metrics.get("stt_ms"),
            "retrieval_ms": metrics.get("retrieval_ms"),
            "llm_first_token_ms": metrics.get("llm_first_token_ms"),
            "end_of_turn_to_first_delta_ms": metrics.get("end_of_turn_to_first_delta_ms"),
            "server_ms": metrics.get("server_ms"),
        })

    def _spawn(self, coro) -> asyncio.Task[None]:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _put(self, message: str | bytes | Close) -> None:
        """Queue a message for the writer, within the session's byte budget."""
        if self.overflowed:
            return
        if not isinstance(message, Close):
            self.queued_bytes += len(message)
            if self.queued_bytes > self.outbox_max_bytes:
                self._overflow()
                return
        self.outbox.put_nowait(message)

    def _overflow(self) -> None:
        """The client does not read what it is sent (its socket's buffers are full and the
        backlog passed `outbox_max_bytes`): drop the backlog and end the session, rather than
        hold memory for a reader that is not there. It gets `slow_consumer` and close 1008 if
        it ever reads again; the reader loop is stopped either way."""
        self.overflowed = True
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.queued_bytes = 0
        slog.warning("slow consumer: session closed", backlog_limit=self.outbox_max_bytes)
        refusal = self.session.slow_consumer(self.outbox_max_bytes).event
        if self.metrics is not None:
            self.metrics.event_sent(refusal)
        self.outbox.put_nowait(json.dumps(refusal))
        self.outbox.put_nowait(Close(1008, "slow_consumer"))
        if self._receiving is not None:
            self._receiving.cancel()

    async def _write(self) -> None:
        try:
            while True:
                message = await self.outbox.get()
                if isinstance(message, asyncio.Future):  # the turn before is being recorded
                    await asyncio.wait({message}, timeout=DURABLE_WAIT_S)
                    continue
                if isinstance(message, Close):
                    await self.websocket.close(code=message.code, reason=message.reason)
                    return
                if isinstance(message, bytes):
                    await self.websocket.send_bytes(message)
                else:
                    await self.websocket.send_text(message)
                self.queued_bytes = max(0, self.queued_bytes - len(message))
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client went away; the reader loop sees the disconnect

    def _judge_turn(self, action: JudgeTurn) -> None:
        self._spawn(self._judge(action))

    async def _judge(self, job: JudgeTurn) -> None:
        """The end-of-turn model's verdict, off the loop (the model runs in its thread pool). A
        failure is logged and counted, not told: the turn then ends on silence."""
        model = self.providers.turn_model
        if model is None:
            return
        started = time.perf_counter()
        try:
            probability = await model.complete(job.pcm)
        except ProviderError as exc:
            log.warning("end-of-turn model failed: %s", exc.message)
            if self.metrics is not None:
                self.metrics.provider_failed("turn", exc.code)
            return
        if self.metrics is not None:
            self.metrics.turn_verdict(time.perf_counter() - started, probability)
        self.step(self.session.turn_judged, job.serial, probability)

    async def _transcribe(self, job: Transcribe, clock: TurnClock) -> None:
        transcriber = self.providers.transcriber
        serial = job.speculative

        def failed(code: str, message: str) -> list[Action]:  # called through `step`
            if serial:
                return self.session.speculative_transcription_failed(serial, code, message)
            return self.session.transcription_failed(job.item_id, code, message)

        if transcriber is None:
            self.step(failed, "provider_not_configured",
                      self.providers.problem or "no transcriber")
            return
        try:
            clock.stt_start = time.perf_counter()
            result = await transcriber.transcribe(job.wav, seconds=job.seconds, model=job.model,
                                                  language=job.language)
            clock.stt_end = time.perf_counter()
        except ProviderError as exc:
            if self.metrics is not None:
                self.metrics.provider_failed("stt", exc.code)
            self.step(failed, exc.code, exc.message)
        except Exception:
            log.exception("transcription of %s failed", job.item_id)
            self.step(failed, "internal_error", "transcription failed on the server")
        else:
            self._answering = clock  # an answer started by this transcript is timed from it
            try:
                if serial:
                    self.step(self.session.speculative_transcribed, serial, result.text,
                              result.seconds)
                else:
                    self.step(self.session.transcription_completed, job.item_id, result.text,
                              result.seconds)
            finally:
                self._answering = None

    async def _generate(self, job: Generate, answer: Answer) -> None:
        """Retrieval (with the moderation of the student's words beside it), then the streamed
        completion. Every output goes to the core through `_answered`, which keeps it while the
        answer is held (speculative); with moderation, text goes through `_AnswerGuard` first."""
        rid = job.response_id
        chat = self.providers.chat
        messages = job.messages
        guard: _AnswerGuard | None = None
        emit: Callable[[Output], None] = lambda output: self._answered(rid, answer, output)
        if self.moderation is not None:
            turn = Turn(self.session.id, self.user_id, self.course, rid)
            # the student's words are checked beside retrieval and the model's first token
            guard = _AnswerGuard(self, rid, answer, self.moderation, turn, job.question or None)
            emit = guard.put
        try:
            try:
                if chat is None:
                    raise ProviderError("provider_not_configured", self.providers.problem or "no chat model")
                if self.knowledge is not None and job.question:
                    # Retrieval starts as soon as the answer does: the transcript is known by now.
                    grounding = await self.knowledge(job.question, self.user_id)
                    answer.retrieval_ms = grounding.retrieval_ms
                    answer.retrieval_degraded = grounding.degraded
                    messages = grounding.apply(messages)
                    emit(Citations(grounding.citations()))
                answer.started = time.perf_counter()
                options: dict[str, Any] = {}
                if job.tools:
                    options.update(tools=list(job.tools), tool_choice=job.tool_choice)
                if job.max_tokens is not None:
                    options["max_tokens"] = job.max_tokens
                async for output in chat.stream(messages, model=job.model, **options):
                    if isinstance(output, Usage):
                        answer.usage = output
                    elif isinstance(output, Truncated):
                        answer.truncated = True
                    else:
                        if not answer.first_token:
                            answer.first_token = time.perf_counter()
                        emit(output)
                        if guard is not None and guard.stopped:
                            break  # a sentence was flagged: the answer ended there
            except ProviderError as exc:
                if self.metrics is not None:
                    self.metrics.provider_failed("llm", exc.code)
                emit(Failed(exc.code, exc.message))
            except Exception:
                log.exception("response %s failed", rid)
                emit(Failed("internal_error", "the answer failed on the server"))
            else:
                emit(Finished())
            if guard is not None:
                await guard.released()
        finally:
            if guard is not None:
                guard.cancel()
            if self.responses.get(rid) is asyncio.current_task():
                del self.responses[rid]

    def _answered(self, rid: str, answer: Answer, output: Output) -> None:
        """An output of answer `rid`: held while the answer is, else to the core (a text delta
        straight on, the rest through `_to_core`) and its actions carried out, timed as the
        session's CPU like every `step`."""
        if answer.held:
            answer.held_outputs.append(output)
            return
        self._timed(self._to_the_core, rid, answer, output)

    def _to_the_core(self, rid: str, answer: Answer, output: Output) -> None:
        if isinstance(output, str):
            actions = self.session.response_delta(rid, output)
            self.execute(actions)
            if actions and not answer.first_sent:
                answer.first_sent = time.perf_counter()
            return
        self.execute(self._to_core[type(output)](rid, answer, output))

    # -- an answer's other outputs, to the core (`_to_core`) -------------------------------
    def _tool_call(self, rid: str, answer: Answer, call: ToolCallDelta) -> list[Action]:
        return self.session.response_tool_call(rid, call.index, call.call_id, call.name,
                                               call.arguments)

    def _citations(self, rid: str, answer: Answer, citations: Citations) -> list[Action]:
        return [self.session.response_citations(rid, citations.passages)]

    def _failed(self, rid: str, answer: Answer, failure: Failed) -> list[Action]:
        return self.session.response_failed(rid, failure.code, failure.message)

    def _completed(self, rid: str, answer: Answer, finished: Finished) -> list[Action]:
        extra: list[Action] = []
        if answer.first_token and answer.first_sent:
            answer.metrics.update(_metrics(answer))
            answer.metrics.update(self._load())
            if not self.session.speaking(rid):  # a spoken answer reports when it ends
                extra.append(self.session.response_metrics(rid, answer.metrics))
        return self.session.response_completed(rid, truncated=answer.truncated) + extra


class _AnswerGuard:
    """Carries out one answer's `realtime.moderation.AnswerGate`: starts its checks (side by
    side), hands what passes to the core (`_answered`), and on a `Stop` says the ruling's line,
    ends the answer and cancels the task generating it. Cancelled with the answer (barge-in, an
    abandoned guess), pending checks included."""

    def __init__(self, runner: SessionRunner, rid: str, answer: Answer, moderation: Moderation,
                 turn: Turn, question: str | None) -> None:
        self.runner = runner
        self.rid = rid
        self.answer = answer
        self.moderation = moderation
        self.turn = turn
        self.gate = AnswerGate(question, ends=(Failed, Finished))
        self._question = 0 if question else None  # its ticket
        self._producer = asyncio.current_task()  # the answer's task, stopped with the answer
        self._checks: dict[int, asyncio.Future[Ruling]] = {}
        self._ended = asyncio.Event()
        self._cancelled = False
        self._carry_out(self.gate.start())

    @property
    def stopped(self) -> bool:
        return self.gate.stopped

    def put(self, output: Output) -> None:
        self._carry_out(self.gate.output(output))

    def _carry_out(self, actions: list[GateAction]) -> None:
        for action in actions:
            if isinstance(action, Check):
                check = asyncio.ensure_future(
                    self.moderation.check(action.text, action.direction, self.turn))
                self._checks[action.ticket] = check
                check.add_done_callback(functools.partial(self._ruled, action.ticket))
            elif isinstance(action, Pass):
                self.runner._answered(self.rid, self.answer, action.output)
                if isinstance(action.output, (Failed, Finished)):
                    self._ended.set()
            else:  # Stop: the safe line ends the answer
                self.runner._answered(self.rid, self.answer, action.line)
                self.runner._answered(self.rid, self.answer, Finished())
                self._ended.set()
                if self._producer is not None and not self._producer.done():
                    self._producer.cancel()

    def _ruled(self, ticket: int, check: asyncio.Future[Ruling]) -> None:
        self._checks.pop(ticket, None)
        if self._cancelled or check.cancelled():
            return
        if ticket == self._question:
            self.answer.input_verdict = time.perf_counter()
        self._carry_out(self.gate.ruled(ticket, check.result()))

    async def released(self) -> None:
        """Returns once the answer's last output (or the safe line) was passed on."""
        await self._ended.wait()

    def cancel(self) -> None:
        self._cancelled = True
        for check in list(self._checks.values()):
            check.cancel()


def _metrics(answer: Answer) -> dict[str, Any]:
    """Stage latencies in ms. `server_ms` is our own share of end-of-turn → first delta: the
    time not spent in transcription, retrieval, or waiting for the chat model's first token.
    For a speculative turn (its work overlapped the end of the turn) it is the time from the
    later of the turn's end and the first token to the first delta. `retrieval`, only when the
    answer went without some of it: "timed_out" (over its budget) or "failed"."""
    clock = answer.clock
    ms: dict[str, float] = {"llm_first_token_ms": (answer.first_token - answer.started) * 1000}
    if answer.retrieval_ms is not None:
        ms["retrieval_ms"] = answer.retrieval_ms
    if answer.input_verdict:  # how long the first token waited for moderation's verdict
        ms["moderation_wait_ms"] = max(0.0, answer.input_verdict - answer.first_token) * 1000
    if clock is not None and clock.ended is not None:
        ms["stt_ms"] = (clock.stt_end - clock.stt_start) * 1000
        ms["transcript_wait_ms"] = max(0.0, clock.stt_end - clock.ended) * 1000
        ms["end_of_turn_to_first_delta_ms"] = (answer.first_sent - clock.ended) * 1000
        if clock.speculative:
            ms["server_ms"] = (answer.first_sent - max(clock.ended, answer.first_token)) * 1000
        else:
            ms["server_ms"] = (ms["end_of_turn_to_first_delta_ms"] - ms["stt_ms"]
                               - ms["llm_first_token_ms"] - (answer.retrieval_ms or 0.0))
    out: dict[str, Any] = {k: round(v, 3) for k, v in ms.items()}
    if clock is not None and clock.speculative:
        out["speculative"] = True
    if answer.retrieval_degraded is not None:
        out["retrieval"] = answer.retrieval_degraded
    return out
