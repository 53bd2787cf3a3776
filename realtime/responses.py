"""The answers of a session, from `response.create` (or a turn's end) to `response.done`.

`Responses` opens an answer (`response.created`, then `Generate`, or `Release` of a held
speculative one), opens its message item at the first delta and its function-call items as
they stream, speaks it when it is in audio (`Synthesize` per piece, the audio fed back, see
`spoken`), and closes it completed, incomplete, failed or cancelled (`response.done`, `Record`).
Pure: the turn-taker decides when an answer starts or is cut; this module says so in events.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Callable

from dialogue.sentences import heard_text
from dialogue.turntaking import (CancelResponse, ResponseAlreadyActive, ResponseOptions,
                                 StartResponse, TurnTaker)

from . import events as ev
from .actions import (Action, Cancel, Generate, Record, Release, ReportLimits, Send, SendBinary,
                      Synthesize)
from .config import SessionConfig, answer_settings, response_metadata, sub_object
from .errors import ClientError, collect
from .items import Conversation, conversation_item
from .spoken import SpokenAnswer


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
class FunctionCall:
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
class Reply:
    """One response's items as the client sees them: its message item (opened at the first
    delta), its function calls, and the turn it answers."""

    spec: ResponseSpec
    question: str
    audio_s: float
    item_id: str | None = None
    item_index: int = 0
    part: dict[str, Any] = field(default_factory=dict)  # its ids, as each content event has them
    calls: dict[int, FunctionCall] = field(default_factory=dict)  # by the provider's call index
    outputs: int = 0
    truncated: bool = False  # the model stopped at max_output_tokens


class Responses:
    """The session's answers: the one in progress and any held speculative ones (`replies`),
    the spoken ones among them (`spoken`), and the last spoken answer (for truncation)."""

    def __init__(self, config: SessionConfig, turns: TurnTaker, conversation: Conversation,
                 events: ev.Events, *, metered: bool, binary_audio: bool,
                 settle: Callable[[list[Action]], list[Action]]) -> None:
        self.config = config  # the session's, kept current by it
        self.turns = turns
        self.conversation = conversation
        self.events = events
        self.ids = events.ids
        self.metered = metered  # the plan's allowance is reported after each answer
        self.binary_audio = binary_audio  # the tutor's audio as binary frames, not base64 events
        self._settle = settle  # the session's: close it if its plan ended it and all is quiet
        self.conversation_id = self.ids("conv")
        self.replies: dict[str, Reply] = {}  # response id → its items, while it runs
        self.spoken: dict[str, SpokenAnswer] = {}  # response id → its speech, while spoken
        self.last_spoken: tuple[str, str, list] | None = None  # item id, text, pieces
        self.unanswered_audio_s = 0.0  # audio of the turns the next answer will answer
        self.cut_by_speech = False  # the last answer was cut by barge-in, none started since

    # -- client events ---------------------------------------------------------------------
    def create(self, message: dict[str, Any], now: float) -> list[Action]:
        """`response.create`: an answer now, or once pending transcripts are in."""
        response = message.get("response") or {}
        if not isinstance(response, dict):
            raise ClientError("invalid_value", "response must be an object", "response")
        options, problems = self._options(response)
        try:
            start = self.turns.request_response(options)
        except ResponseAlreadyActive as exc:
            raise ClientError("conversation_already_has_active_response",
                              f"response {exc} is still in progress; cancel it first")
        out: list[Action] = []
        if problems:
            out.append(self.events.error(problems[0].code, "; ".join(p.message for p in problems),
                                         event_id=message.get("event_id") if isinstance(
                                             message.get("event_id"), str) else None,
                                         param=problems[0].param))
        return out + self.start(start)

    def _options(self, response: dict[str, Any]) -> tuple[ResponseOptions, list[ClientError]]:
        """A `response.create`'s own settings over the session's: invalid ones are refused
        (the answer goes on without them), as `session.update` does."""
        cfg = self.config
        problems: list[ClientError] = []
        instructions = None
        metadata = None
        in_conversation, entries = True, None
        with collect(problems):
            if response.get("instructions") is not None:
                if not isinstance(response["instructions"], str):
                    raise ClientError("invalid_value", "instructions must be a string",
                                      "response.instructions")
                instructions = response["instructions"]
        out_audio: dict[str, Any] = {}
        with collect(problems):
            out_audio = sub_object(sub_object(response, "audio", "response.audio"), "output",
                                   "response.audio.output")
        answer = {"output_audio": cfg.output_audio, "voice": cfg.voice, "tools": cfg.tools,
                  "tool_choice": cfg.tool_choice, "max_output_tokens": cfg.max_output_tokens,
                  **answer_settings(response, out_audio, "response", cfg.audio_allowed,
                                    problems)}
        with collect(problems):
            if response.get("metadata") is not None:
                metadata = response_metadata(response["metadata"])
        with collect(problems):
            conversation = response.get("conversation", "auto")
            if conversation not in ("auto", "none", None):
                raise ClientError("invalid_value", "conversation must be 'auto' or 'none'",
                                  "response.conversation")
            in_conversation = conversation != "none"
        with collect(problems):
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

    def cancel(self, message: dict[str, Any], now: float) -> list[Action]:
        """`response.cancel`."""
        cut = self.turns.cancel()
        if cut is None:
            if self.cut_by_speech:
                return []  # the answer the client cancels was just cut by the student's speech
            raise ClientError("response_cancel_not_active",
                              "Cancellation failed: no active response found")
        return self.cancelled(cut, now)

    def clear_audio(self, message: dict[str, Any], now: float) -> list[Action]:
        """`output_audio_buffer.clear`: stop the answer being spoken, now."""
        response = self.turns.response
        if response is None or response.id not in self.spoken:
            raise ClientError("response_cancel_not_active", "no answer is being spoken")
        cut = self.turns.cancel()
        assert cut is not None
        return self.cancelled(cut, now)

    def truncate(self, message: dict[str, Any], now: float) -> list[Action]:
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
        if response is not None and self.replies[response.id].item_id == item_id \
                and response.id in self.spoken:
            cut = self.turns.cancel()
            assert cut is not None
            out += self.cancelled(cut, None)
        if self.last_spoken is None or self.last_spoken[0] != item_id:
            raise ClientError("item_truncate_invalid_item_id",
                              f"{item_id} is not the last spoken answer", "item_id")
        _, full, pieces = self.last_spoken
        total = sum(p.ms for p in pieces)
        if end_ms > total + 1:
            raise ClientError("invalid_value", f"audio_end_ms {end_ms} is past the end of the "
                              f"answer's audio ({total:.0f} ms)", "audio_end_ms")
        self.turns.replace_answer(full, heard_text(pieces, end_ms))
        return out + [self.events.send("conversation.item.truncated", item_id=item_id,
                                       content_index=message.get("content_index", 0),
                                       audio_end_ms=end_ms)]

    # -- turns and responses ---------------------------------------------------------------
    # -- what the model answers (the shell feeds it in) --------------------------------------
    def delta(self, response_id: str, delta: str) -> list[Action]:
        if not self.turns.delta(response_id, delta):
            return []  # a late delta of a response already cancelled
        reply = self.replies[response_id]
        out = self._open_message(response_id, reply)
        st = self.spoken.get(response_id)
        if st is None:
            return [*out, self.events.send("response.output_text.delta", delta=delta,
                                           **reply.part)]
        out.append(self.events.send("response.output_audio_transcript.delta", delta=delta,
                                    **reply.part))
        return out + [self._speak(response_id, st, text) for text in st.splitter.feed(delta)]

    def tool_call(self, response_id: str, index: int, call_id: str | None,
                  name: str | None, arguments: str) -> list[Action]:
        """A fragment of function call `index` of an answer: the first opens its item."""
        response = self.turns.response
        if response is None or response.id != response_id:
            return []  # a late fragment of a response already cancelled
        reply = self.replies[response_id]
        out: list[Action] = []
        call = reply.calls.get(index)
        if call is None:
            call = reply.calls[index] = FunctionCall(self.ids("item"), call_id or self.ids("call"),
                                                     name or "", reply.outputs)
            reply.outputs += 1
            response.calls.append(call.entry)
            item = call.item("in_progress")
            out.append(self.events.send("response.output_item.added", response_id=response_id,
                                        output_index=call.output_index, item=item))
            if reply.spec.in_conversation:
                out.append(self.conversation.added(item))
        if arguments:
            call.add(arguments)
            out.append(self.events.send("response.function_call_arguments.delta",
                                        response_id=response_id, item_id=call.item_id,
                                        output_index=call.output_index, call_id=call.call_id,
                                        delta=arguments))
        return out

    def _open_message(self, rid: str, reply: Reply) -> list[Action]:
        """The answer's message item, opened at its first delta (a response that only calls
        functions has none)."""
        if reply.item_id is not None:
            return []
        item_id = reply.item_id = self.ids("item")
        reply.item_index, reply.outputs = reply.outputs, reply.outputs + 1
        reply.part = ev.text_part(rid, item_id, reply.item_index)
        response = self.turns.response
        if response is not None and response.id == rid:
            response.entry = {"_id": item_id, "_audio": reply.spec.audio}
        item = ev.assistant_item(item_id, "in_progress")
        audio = reply.spec.audio
        part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        out: list[Action] = [self.events.send("response.output_item.added", response_id=rid,
                                              output_index=reply.item_index, item=item)]
        if reply.spec.in_conversation:
            out.append(self.conversation.added(item))
        out.append(self.events.send("response.content_part.added", part=part, **reply.part))
        return out

    def _speak(self, rid: str, st: SpokenAnswer, text: str) -> Synthesize:
        return Synthesize(rid, st.add(text), text, self.config.voice)

    def completed(self, response_id: str, truncated: bool = False) -> list[Action]:
        """The answer's text is complete (`truncated`: it stopped at `max_output_tokens`, and
        the response is `incomplete`)."""
        reply = self.replies.get(response_id)
        if reply is not None and truncated:
            reply.truncated = True
        st = self.spoken.get(response_id)
        if st is not None:  # the text is complete; the answer ends when its audio has gone out
            if self.turns.response is None or self.turns.response.id != response_id:
                return []
            st.text_done = True
            rest = st.splitter.flush()
            out: list[Action] = [self._speak(response_id, st, rest)] if rest else []
            return out + self._settle(self._maybe_finish_speech(response_id))
        result = self.turns.finished(response_id)
        if result is None:
            return []
        text, next_response = result
        return self._settle(self._finish(response_id, text) + self.start(next_response))

    def _finish(self, rid: str, text: str) -> list[Action]:
        """Close an answer that ran to its end: completed, or incomplete at its token cap."""
        if self.replies[rid].truncated:
            return self._close(rid, text, "incomplete",
                               {"type": "incomplete", "reason": "max_output_tokens"})
        return self._close(rid, text, "completed")

    def failed(self, response_id: str, code: str, message: str) -> list[Action]:
        text = self.turns.failed(response_id)
        if text is None:
            return []
        details = {"type": "failed", "error": {"type": "server_error", "code": code,
                                               "message": message}}
        return self._settle([self.events.error(code, message, type="server_error"),
                             *self._close(response_id, text, "failed", details),
                             *self.start(self.turns.next_response())])

    def citations(self, response_id: str, citations: list[dict[str, Any]]) -> Send:
        """`tutor.citations`: the course passages an answer is grounded in, before its text."""
        return self.events.send("tutor.citations", response_id=response_id, citations=citations)

    # -- spoken answers (the shell feeds their audio in) -----------------------------------
    def audio(self, response_id: str, index: int, pcm: bytes, now: float) -> list[Action]:
        """Audio of piece `index` of an answer, in order, as the shell gets it from TTS."""
        st = self.spoken.get(response_id)
        if st is None or not pcm:
            return []  # a late chunk of an answer already cut off
        return self._audio_out(response_id, st.audio(index, pcm, now))

    def _audio_out(self, response_id: str, data: bytes) -> list[Action]:
        """Audio in the session's output format, as a binary frame or an event."""
        if not data:
            return []
        if self.binary_audio:
            return [SendBinary(data)]
        reply = self.replies[response_id]
        return [self.events.send("response.output_audio.delta",
                                 delta=base64.b64encode(data).decode("ascii"), **reply.part)]

    def audio_done(self, response_id: str, index: int) -> list[Action]:
        st = self.spoken.get(response_id)
        if st is None:
            return []
        st.pieces[index].done = True
        return self._settle(self._maybe_finish_speech(response_id))

    def synthesis_failed(self, response_id: str, index: int, code: str, message: str
                         ) -> list[Action]:
        """Synthesis of one piece failed: said once; the answer goes on (its text is there)."""
        st = self.spoken.get(response_id)
        if st is None:
            return []
        out: list[Action] = []
        if not st.failed:
            st.failed = True
            out.append(self.events.error(code, f"speech synthesis failed: {message}",
                                         type="server_error"))
        return out + self.audio_done(response_id, index)

    def speaking(self, response_id: str) -> bool:
        """Whether this answer is (also) spoken."""
        return response_id in self.spoken

    def _maybe_finish_speech(self, rid: str) -> list[Action]:
        st = self.spoken[rid]
        if not st.finished:
            return []
        tail = self._audio_out(rid, st.encoder.flush()) if st.first_audio_at is not None else []
        result = self.turns.finished(rid)
        if result is None:
            return []
        text, next_response = result
        return tail + self._finish(rid, text) + self.start(next_response)

    def echo_window(self, now: float) -> bool:
        """The tutor started speaking less than `echo_guard_ms` ago (and still is)."""
        for st in self.spoken.values():
            if st.first_audio_at is not None and \
                    (now - st.first_audio_at) * 1000 < self.config.echo_guard_ms:
                return True
        return False

    # -- an answer's life ------------------------------------------------------------------
    def start(self, start: StartResponse | None, held: str | None = None) -> list[Action]:
        """Open the answer `start`: `response.created`, then `Generate` (or `Release` when it is
        the speculative answer `held`, already running). Its items open as its output comes."""
        if start is None:
            return []
        rid = start.response_id
        self.cut_by_speech = False
        spec = start.options.spec or self.default_spec()
        reply = self.replies[rid] = Reply(spec, start.question, 0.0)
        if spec.in_conversation and start.options.input is None:
            reply.audio_s, self.unanswered_audio_s = self.unanswered_audio_s, 0.0
        if spec.audio:
            self.spoken[rid] = SpokenAnswer.new(self.config.output_format)
        return [self.events.send("response.created",
                                 response=self._response_object(rid, "in_progress", reply, [])),
                Release(rid) if rid == held else self.generate(start, spec)]

    def generate(self, start: StartResponse, spec: ResponseSpec, held: bool = False
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

    def default_spec(self) -> ResponseSpec:
        cfg = self.config
        return ResponseSpec(audio=cfg.output_audio, voice=cfg.voice, tools=cfg.tools,
                            tool_choice=cfg.tool_choice, max_output_tokens=cfg.max_output_tokens)

    def _response_object(self, rid: str, status: str, reply: Reply, output: list[Any],
                         details: dict[str, Any] | None = None) -> dict[str, Any]:
        spec = reply.spec
        return ev.response(rid, status, output, status_details=details,
                           modalities=["audio"] if spec.audio else ["text"],
                           metadata=spec.metadata,
                           conversation_id=self.conversation_id if spec.in_conversation
                           else None,
                           max_output_tokens=spec.max_output_tokens,
                           voice=spec.voice, output_format=self.config.output_format.to_json())

    def cancelled(self, cut: CancelResponse, now: float | None = None) -> list[Action]:
        details = {"type": "cancelled", "reason": cut.reason}
        self.cut_by_speech = cut.reason == "turn_detected"
        text = cut.text
        out: list[Action] = [Cancel(cut.response_id)]
        st = self.spoken.get(cut.response_id)
        if st is not None:
            text = st.heard(now)  # the tutor remembers what was heard, not what was written
            self.turns.replace_answer(cut.text, text)
            if st.first_audio_at is not None:  # the client should drop what it buffered
                out.append(self.events.send("output_audio_buffer.cleared",
                                            response_id=cut.response_id))
        return [*out, *self._close(cut.response_id, text, "cancelled", details),
                *self.start(self.turns.next_response())]

    def _close(self, rid: str, text: str, status: str,
               details: dict[str, Any] | None = None) -> list[Action]:
        reply = self.replies.pop(rid)
        st = self.spoken.pop(rid, None)
        out: list[Action] = []
        if reply.item_id is None and not reply.calls and status == "completed":
            out += self._open_message(rid, reply)  # an empty answer still has its message
        item_status = "completed" if status == "completed" else "incomplete"
        output: list[tuple[int, dict[str, Any]]] = []
        if reply.item_id is not None:
            item_id, part = reply.item_id, reply.part
            if st is None:
                item = ev.assistant_item(item_id, item_status, text)
                out += [self.events.send("response.output_text.done", text=text, **part),
                        self.events.send("response.content_part.done",
                                         part={"type": "text", "text": text}, **part)]
            else:
                self.last_spoken = (item_id, text, st.pieces)
                item = ev.assistant_item(item_id, item_status, text, audio=True)
                out += [self.events.send("response.output_audio.done", **part),
                        self.events.send("response.output_audio_transcript.done", transcript=text,
                                         **part),
                        self.events.send("response.content_part.done",
                                         part={"type": "audio", "transcript": text}, **part)]
            out.append(self.events.send("response.output_item.done", response_id=rid,
                                        output_index=reply.item_index, item=item))
            if reply.spec.in_conversation:
                out.append(self.conversation.done(item))
            output.append((reply.item_index, item))
        for call in reply.calls.values():
            item = call.item(item_status)
            if status == "completed":
                out.append(self.events.send("response.function_call_arguments.done",
                                            response_id=rid, item_id=call.item_id,
                                            output_index=call.output_index,
                                            call_id=call.call_id, name=call.name,
                                            arguments=item["arguments"]))
            out.append(self.events.send("response.output_item.done", response_id=rid,
                                        output_index=call.output_index, item=item))
            if reply.spec.in_conversation:
                out.append(self.conversation.done(item))
            output.append((call.output_index, item))
        items = [item for _, item in sorted(output, key=lambda pair: pair[0])]
        audio_s = reply.audio_s
        return [
            *out,
            self.events.send("response.done",
                             response=self._response_object(rid, status, reply, items, details)),
            Record(rid, "voice" if audio_s else "text", reply.question, text, status,
                   round(audio_s, 3) if audio_s else None),
            *([ReportLimits()] if self.metered else []),
        ]
