"""Semantic end of turn: a pure state machine deciding how long a pause must last to end a turn.

With `turn_detection.type: "semantic_vad"`, the endpointer reports a short pause (counted from
where the speech really ended) and the turn's audio so far goes to an end-of-turn model (a
`providers.protocols.TurnModel`); its probability that the turn is complete comes back here,
and so may the speculative transcript of the same pause (`dialogue.speculation`). `Judge`
answers with the silence, counted from the end of the speech, after which the turn ends: short
when the student sounds done, long when they sound mid-sentence. The eagerness sets both and
the probability that counts as done, as in OpenAI's protocol ("low" lets the student take their
time, "high" answers as soon as it can; "auto" is "medium").

The text refines the audio: a transcript ending on a word that cannot end an English sentence
("and", "the", "because", a filler such as "um") or on a comma or an ellipsis means not done,
whatever the audio says; one ending on a question mark after a few words means done. A
transcript with no such ending changes nothing. When the pause's transcript is on its way
(speculation is on), a "done" from the audio waits for it: the answer cannot start before the
transcript anyway, so waiting costs nothing and lets the words overrule the sound. No verdict
(no model, a failure, the student spoke again) leaves the silence the session was configured
with.

It reads no clock and does no I/O: the session feeds it and carries out its answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Eagerness:
    threshold: float  # a probability this high means the turn is complete
    complete_ms: int  # silence (from the end of speech) that ends a complete turn
    incomplete_ms: int  # ... and one that is not
    # the silence that ends a turn when no verdict is had (no model on this server, a failed
    # call; counted as `silence_duration_ms` is); None: the session's default
    fallback_ms: int | None = None


# The check itself comes at the speculative pause (~150 ms after the end of speech) and the model
# answers ~50 ms later: a `complete_ms` shorter than that ends the turn as the verdict arrives.
EAGERNESS = {
    "high": Eagerness(0.35, 150, 800, fallback_ms=400),
    "medium": Eagerness(0.5, 300, 1500),
    "auto": Eagerness(0.5, 300, 1500),
    "low": Eagerness(0.65, 500, 3000, fallback_ms=1000),
}

# Words after which an English sentence is not over (articles, conjunctions, prepositions,
# auxiliaries, fillers). English only: other languages rely on the audio model.
DANGLING = frozenset("""
a an the and or but so because if then than that which who whose whom when where while as
of to in on at for with from by about into onto like my your his her its our their this these
those is are was were be been am do does did have has had will would can could should must
um uh er erm hmm mm uhm ah eh well
""".split())
_WORD = re.compile(r"[a-z']+")


def text_verdict(text: str) -> bool | None:
    """From a transcript alone: False (not done), True (done) or None (the text cannot tell)."""
    t = text.strip().lower()
    if not t:
        return None
    if t.endswith((",", "...", "…", "-", "—", ":", ";")):
        return False
    words = _WORD.findall(t)
    if not words:
        return None
    if words[-1] in DANGLING:
        return False
    if t.endswith("?") and len(words) >= 3:
        return True
    return None


@dataclass
class _Pause:
    serial: int
    speech_end_ms: int
    text_coming: bool = False  # a transcript of this pause is on its way (speculation)
    probability: float | None = None
    text: bool | None = None  # text_verdict of the pause's transcript


class Judge:
    def __init__(self, eagerness: str = "auto") -> None:
        self.eagerness_name = eagerness
        self.eagerness = EAGERNESS.get(eagerness, EAGERNESS["auto"])
        self.pause: _Pause | None = None
        self._serial = 0
        self.verdicts = 0  # how many pauses got a verdict (for the session's metrics)

    def paused(self, speech_end_ms: int, text_coming: bool = False) -> int | None:
        """A pause to judge (`text_coming`: its transcript will follow): the serial its verdict
        comes back with, or None (this speech is already being judged)."""
        if self.pause is not None and self.pause.speech_end_ms == speech_end_ms:
            return None
        self._serial += 1
        self.pause = _Pause(self._serial, speech_end_ms, text_coming)
        return self._serial

    def resumed(self) -> None:
        """The student spoke again: any verdict out is for a pause that is over."""
        self.pause = None

    def judged(self, serial: int, probability: float) -> int | None:
        """The model's verdict for pause `serial`: the silence (ms from the end of the speech)
        that now ends the turn, or None when the pause is over."""
        if self.pause is None or self.pause.serial != serial:
            return None
        self.pause.probability = probability
        self.verdicts += 1
        return self.silence_ms()

    def transcribed(self, speech_end_ms: int, text: str | None) -> int | None:
        """The speculative transcript of the speech up to `speech_end_ms` (None: it failed):
        the silence that now ends the turn, or None when nothing is decided."""
        pause = self.pause
        if pause is None or pause.speech_end_ms != speech_end_ms:
            return None
        pause.text_coming = False
        pause.text = None if text is None else text_verdict(text)
        return self.silence_ms()

    def silence_ms(self) -> int | None:
        """The silence that ends the turn for what is known of the pause in progress (None:
        nothing is known, the configured silence holds)."""
        pause = self.pause
        if pause is None:
            return None
        e = self.eagerness
        if pause.text is False:
            return e.incomplete_ms
        if pause.text is True:
            return e.complete_ms
        if pause.probability is None:
            return None
        if pause.probability < e.threshold:
            return e.incomplete_ms
        return None if pause.text_coming else e.complete_ms

    def turn_ended(self) -> None:
        self.pause = None
