"""Turn-taking: a pure state machine deciding when the tutor answers and when it must stop.

It is told what happened (speech started, a turn was transcribed, a response was asked for, a
delta arrived) and answers with what to do (`StartResponse`, `CancelResponse`). It reads no
clock and does no I/O. The bounded conversation history lives here, because what goes into
the next prompt is a turn-taking decision (an interrupted answer is kept as far as it got).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from .prompts import chat_messages


class TurnState(str, Enum):
    LISTENING = "listening"
    TRANSCRIBING = "transcribing"
    RESPONDING = "responding"


@dataclass(frozen=True)
class ResponseOptions:
    """What one requested answer asks for beyond the session's defaults (a `response.create`).
    `spec` is the protocol's own description of the answer (modalities, tools...), carried
    through untouched."""

    instructions: str | None = None  # None: the session's
    input: list[dict[str, Any]] | None = None  # entries replacing the conversation as context
    in_conversation: bool = True  # False: out of band, the answer is not added to it
    spec: Any = None


AUTO = ResponseOptions()  # an answer started by turn detection


@dataclass(frozen=True)
class StartResponse:
    response_id: str
    messages: list[dict[str, Any]]
    question: str = ""  # what the student said or typed since the previous answer
    options: ResponseOptions = AUTO


@dataclass(frozen=True)
class CancelResponse:
    response_id: str
    reason: str  # "turn_detected" (barge-in) or "client_cancelled"
    text: str  # what had been generated when it was cut


class ResponseAlreadyActive(Exception):
    pass


@dataclass
class _Response:
    id: str
    options: ResponseOptions = AUTO
    parts: list[str] = field(default_factory=list)
    # set by the protocol: the assistant item's id and flags, and its function calls (entries)
    entry: dict[str, Any] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def entries(self, text: str, cut: bool = False) -> list[dict[str, Any]]:
        """What the answer adds to the conversation: its text (if any), then its calls
        (`cut`: it was cancelled, so its items are incomplete)."""
        said = [{"role": "assistant", "content": text, **self.entry}] if text else []
        if cut:
            said = [{**e, "_incomplete": True} for e in said]
            for call in self.calls:
                call["_incomplete"] = True
        return said + self.calls

    @property
    def text(self) -> str:
        return "".join(self.parts)


class TurnTaker:
    def __init__(
        self,
        *,
        instructions: str,
        frame: str | None = None,
        new_response_id: Callable[[], str],
        history_messages: int = 20,
        auto_respond: bool = True,
        interrupt: bool = True,
    ) -> None:
        self.instructions = instructions
        self.frame = frame  # the course's locked frame: instructions stay inside it
        self.auto_respond = auto_respond  # answer each transcribed turn without response.create
        self.interrupt = interrupt  # speech during an answer cancels it (barge-in)
        self._new_response_id = new_response_id
        # the conversation: chat-message entries, each with its Realtime item id (`_id`)
        self.history: deque[dict[str, Any]] = deque(maxlen=history_messages)
        self.user_speaking = False
        self.pending_transcripts: set[str] = set()
        self.response: _Response | None = None
        self._wanted: ResponseOptions | None = None  # an answer is wanted, with these options
        self._unanswered: list[str] = []

    @property
    def state(self) -> TurnState:
        if self.response is not None:
            return TurnState.RESPONDING
        if self.pending_transcripts:
            return TurnState.TRANSCRIBING
        return TurnState.LISTENING

    # -- what the student did --------------------------------------------------------------
    def speech_started(self) -> CancelResponse | None:
        self.user_speaking = True
        if self.response is not None and self.interrupt:
            return self._cancel("turn_detected")
        return None

    def turn_committed(self, item_id: str) -> None:
        """A turn's audio went to transcription; no answer starts before its text is known."""
        self.user_speaking = False
        self.pending_transcripts.add(item_id)

    def speech_discarded(self) -> None:
        self.user_speaking = False

    def transcribed(self, item_id: str, text: str, reuse: StartResponse | None = None
                    ) -> StartResponse | None:
        """`reuse`: an answer already started speculatively (see `preview`); its id is kept when
        the answer starting now has exactly its messages and question."""
        self.pending_transcripts.discard(item_id)
        if text.strip():
            self.user_text(text, {"_id": item_id, "_audio": True})
            if self.auto_respond and self._wanted is None:
                self._wanted = AUTO
        return self._maybe_start(reuse)

    def preview(self, text: str) -> StartResponse | None:
        """The answer that would start if the turn in progress ended now with `text` (changes
        nothing; a speculative answer is started with it), or None if none would start at once."""
        if not text.strip() or not self.auto_respond or self.response is not None \
                or self.pending_transcripts:
            return None
        history = deque(self.history, maxlen=self.history.maxlen)
        history.append({"role": "user", "content": text})
        return StartResponse(self._new_response_id(),
                             chat_messages(self.instructions, list(history), self.frame),
                             "\n".join([*self._unanswered, text]))

    def transcription_failed(self, item_id: str) -> StartResponse | None:
        self.pending_transcripts.discard(item_id)
        if not self.history or self.history[-1]["role"] != "user":
            self._wanted = None  # nothing the student said is left to answer
        return self._maybe_start()

    def user_text(self, text: str, item: dict[str, Any] | None = None,
                  after: str | None = None) -> None:
        """What the student said or typed (`item`: its Realtime id and flags; `after`: placed
        after that entry, as in `add_entry`)."""
        self.add_entry({"role": "user", "content": text, **(item or {})}, after)
        self._unanswered.append(text)

    def add_entry(self, entry: dict[str, Any], after: str | None = None) -> None:
        """A conversation item the client created that is not the student's question (a system
        or assistant message, a function call or its output). `after`: the id of the entry it
        follows ("root": first; None: last). Raises KeyError for an unknown `after`."""
        if after is None:
            self.history.append(entry)
            return
        index = 0 if after == "root" else self._index(after) + 1
        if len(self.history) == self.history.maxlen:
            self.history.popleft()  # the oldest goes, as appending would drop it
            index = max(0, index - 1)
        self.history.insert(index, entry)

    def entry(self, item_id: str) -> dict[str, Any]:
        """The conversation entry of a Realtime item; KeyError when it is not (or no longer) held."""
        return self.history[self._index(item_id)]

    def delete(self, item_id: str) -> None:
        del self.history[self._index(item_id)]

    def _index(self, item_id: str) -> int:
        for i, entry in enumerate(self.history):
            if entry.get("_id") == item_id:
                return i
        raise KeyError(item_id)

    def request_response(self, options: ResponseOptions = AUTO) -> StartResponse | None:
        """An explicit `response.create`; it waits for pending transcripts, then starts."""
        if self.response is not None:
            raise ResponseAlreadyActive(self.response.id)
        self._wanted = options
        return self._maybe_start()

    def cancel(self) -> CancelResponse | None:
        """Cancel the answer in progress; a requested answer not yet started is dropped too."""
        self._wanted = None
        return self._cancel("client_cancelled") if self.response is not None else None

    def next_response(self) -> StartResponse | None:
        """After a cancel or a failure: start an answer that was queued behind it, if any."""
        return self._maybe_start()

    # -- what the model did ----------------------------------------------------------------
    def delta(self, response_id: str, text: str) -> bool:
        """Record a text delta; False when it belongs to a response that is no longer live."""
        if self.response is None or self.response.id != response_id:
            return False
        self.response.parts.append(text)
        return True

    def finished(self, response_id: str) -> tuple[str, StartResponse | None] | None:
        if self.response is None or self.response.id != response_id:
            return None
        text = self.response.text
        if self.response.options.in_conversation:
            self.history.extend(self.response.entries(text))
        self.response = None
        return text, self._maybe_start()

    def failed(self, response_id: str) -> str | None:
        if self.response is None or self.response.id != response_id:
            return None
        text = self.response.text
        self.response = None
        return text

    def replace_answer(self, said: str, heard: str) -> None:
        """The student heard only `heard` of the answer `said` (spoken answers cut short): the
        history keeps what was heard, so the tutor does not believe it said the rest."""
        for i in range(len(self.history) - 1, -1, -1):
            message = self.history[i]
            if message["role"] == "assistant" and message["content"] == said:
                if heard:
                    self.history[i] = {**message, "content": heard}
                else:
                    del self.history[i]
                return

    # -- internals -------------------------------------------------------------------------
    def _cancel(self, reason: str) -> CancelResponse:
        assert self.response is not None
        cut = CancelResponse(self.response.id, reason, self.response.text)
        if self.response.options.in_conversation:  # calls cut short are kept: never answered,
            self.history.extend(self.response.entries(cut.text, cut=True))  # reach no prompt
        self.response = None
        return cut

    def _maybe_start(self, reuse: StartResponse | None = None) -> StartResponse | None:
        options = self._wanted
        if (
            options is None
            or self.response is not None
            or self.pending_transcripts
            or self.user_speaking
        ):
            return None
        self._wanted = None
        instructions = self.instructions if options.instructions is None else options.instructions
        if options.input is not None:  # its own context: the conversation is neither read nor
            messages = chat_messages(instructions, options.input, self.frame)  # answered
            question = next((e["content"] for e in reversed(options.input)
                             if e.get("role") == "user" and e.get("content")), "")
        else:
            messages = chat_messages(instructions, list(self.history), self.frame)
            question = "\n".join(self._unanswered)
            if options.in_conversation:
                self._unanswered = []
        if reuse is not None and reuse.messages == messages and reuse.question == question:
            response_id = reuse.response_id
        else:
            response_id = self._new_response_id()
        self.response = _Response(response_id, options)
        return StartResponse(response_id, messages, question, options)
