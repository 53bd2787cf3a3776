"""Speculative turn ends: a pure state machine deciding when to start work before a turn is over.

When the student pauses (well short of the silence that ends a turn), the audio so far is sent
to transcription; if its transcript comes back while they are still silent, the answer is
started too, but held. If the pause becomes the end of the turn and the speech did not change
(no voiced frame since the pause), the transcript and the held answer are used: the student sees
text as soon as the turn ends. If they go on speaking, the work is discarded and nothing of it
reaches the client.

`Speculator` only decides and counts; the protocol core (`realtime`) turns its decisions
into provider calls. Cost is capped two ways: at most `max_per_turn` guesses per turn, and over
the session the wasted guesses may not exceed `budget` × turns + 2 (a student who hesitates a lot
stops being guessed for until enough turns go by). A guess is only reused when the audio did not
change, so its transcript is the transcript of the turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Guess:
    """Speculative work for one pause: its transcription, then perhaps a held answer."""

    serial: int  # names the speculative transcription (its result comes back with it)
    item_id: str  # the user item the turn will be
    speech_end_ms: int  # where the speech ended when the pause was noticed
    text: str | None = None  # the transcript, once known
    seconds: float = 0.0  # audio duration the transcriber reported
    failed: bool = False  # the transcription failed: the turn is transcribed afresh
    response_id: str | None = None  # the held answer, once started
    messages: list[dict[str, str]] = field(default_factory=list)
    question: str = ""


@dataclass
class SpeculationStats:
    guesses: int = 0
    hits: int = 0  # a turn ended on a guess's audio and used its transcript
    misses: int = 0  # the student went on (or the audio changed): the guess was discarded
    wasted_stt: int = 0  # transcriptions made for nothing
    wasted_llm: int = 0  # answers started for nothing
    turns: int = 0  # turns ended (speculated or not), for the budget


class Speculator:
    def __init__(self, *, max_per_turn: int = 2, budget: float = 0.5) -> None:
        self.max_per_turn = max_per_turn
        self.budget = budget
        self.guess: Guess | None = None
        self.stats = SpeculationStats()
        self._this_turn = 0
        self._serial = 0

    def paused(self, item_id: str, speech_end_ms: int) -> Guess | None:
        """The student paused in turn `item_id`: a new guess to transcribe, or None (one is
        already out for this audio, this turn had its share, or the session's budget is spent)."""
        if self.guess is not None and self.guess.item_id == item_id \
                and self.guess.speech_end_ms == speech_end_ms:
            return None  # same speech as the guess already out
        if self._this_turn >= self.max_per_turn or \
                self.stats.misses >= self.budget * self.stats.turns + 2:
            return None
        self._this_turn += 1
        self._serial += 1
        self.stats.guesses += 1
        self.guess = Guess(self._serial, item_id, speech_end_ms)
        return self.guess

    def transcribed(self, serial: int, text: str, seconds: float) -> Guess | None:
        """A speculative transcript: the guess it belongs to if that is still out, else None."""
        guess = self.guess
        if guess is None or guess.serial != serial:
            return None
        guess.text, guess.seconds = text, seconds
        return guess

    def transcription_failed(self, serial: int) -> None:
        if self.guess is not None and self.guess.serial == serial:
            self.guess.failed = True

    def answering(self, response_id: str, messages: list[dict[str, str]], question: str) -> None:
        """A held answer was started for the current guess."""
        assert self.guess is not None
        self.guess.response_id = response_id
        self.guess.messages, self.guess.question = messages, question

    def resumed(self) -> Guess | None:
        """The student spoke again after the pause: the guess out (to discard), if any."""
        return self._discard()

    def discard(self) -> Guess | None:
        """The turn was cleared or the session is ending: the guess out, if any."""
        guess = self._discard()
        if guess is not None:
            self.stats.misses -= 1  # not the student's doing: kept out of the budget
        return guess

    def turn_started(self) -> None:
        self._this_turn = 0

    def turn_ended(self, item_id: str, speech_end_ms: int) -> tuple[Guess | None, Guess | None]:
        """The turn ended: (the guess to use, the guess to discard). A guess is used when it
        was made on this turn's speech as it ended (nothing voiced since) and did not fail."""
        self.stats.turns += 1
        self._this_turn = 0
        guess = self.guess
        if guess is None:
            return None, None
        self.guess = None
        if guess.item_id == item_id and guess.speech_end_ms == speech_end_ms and not guess.failed:
            self.stats.hits += 1
            return guess, None
        self._count_miss(guess)
        return None, guess

    def answer_unused(self) -> None:
        """A used guess's held answer did not fit the turn after all (the conversation changed
        meanwhile): it is discarded, its transcript kept."""
        self.stats.wasted_llm += 1

    def _discard(self) -> Guess | None:
        guess, self.guess = self.guess, None
        if guess is not None:
            self._count_miss(guess)
        return guess

    def _count_miss(self, guess: Guess) -> None:
        self.stats.misses += 1
        self.stats.wasted_stt += 1
        if guess.response_id is not None:
            self.stats.wasted_llm += 1
