"""Moderation's decisions, pure: a check's verdict (or its failure) in, what the tutor does out.

The shell checks the student's words and each sentence of the tutor's answer with a
`providers.Moderator` and hands the result here. `rule` says whether the text goes on, and if
not what the student hears instead (a calm, age-appropriate line from `safe_reply`, with the
help resources the school configured when self-harm is involved), which categories are stored
as a flag, and whether the flag is urgent (the student's teachers are emailed). A check that
failed is allowed (fail open) or refused with a neutral line (fail closed), per the policy.
`AnswerGate` orders one answer's moderation: the student's words first, then the answer's
outputs, its text cut into sentences (`AnswerCut`, the text exactly as generated) that are each
checked; it says which checks to start (`Check`), what may be passed on (`Pass`) once everything
before it passed, and where the answer ends with the ruling's line instead (`Stop`).
docs/tutoring.md, "Moderation", describes the behaviour.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Union

from dialogue.sentences import SentenceSplitter

Direction = Literal["input", "output"]  # the student's words, or the tutor's answer

UNAVAILABLE_INPUT = ("I can't answer that just now. Please try again in a moment, or ask your "
                     "teacher.")
UNAVAILABLE_OUTPUT = "Sorry, I have to stop here. Please ask me again in a moment."
SELF_HARM = ("It sounds like you might be going through something really hard, and I'm glad "
             "you said something. You don't have to deal with this alone: please talk to an "
             "adult you trust, like a parent, a teacher or the school counsellor, today.")
DANGER = ("That's not something I can help with. If someone is being hurt or is in danger, "
          "please tell a teacher or another adult you trust straight away. When you're ready, "
          "we can get back to your course.")
OFF_LIMITS = ("That's not something I can talk about here. Let's get back to your course: what "
              "would you like to work on?")
STOPPED = "Let's stop there and get back to your course. What would you like to work on next?"


@dataclass(frozen=True)
class Policy:
    """The school's moderation settings (`server.config.Settings`, `moderation_*`)."""

    fail_closed: bool = True  # a check that failed refuses the text
    urgent: frozenset[str] = frozenset({"self-harm", "sexual/minors"})  # emailed to teachers
    help_resources: str = ""  # said with the self-harm line (phone numbers, the counsellor)


@dataclass(frozen=True)
class Ruling:
    allow: bool  # the text goes on as it is
    reply: str | None = None  # what is said instead (None when allowed)
    categories: tuple[str, ...] = ()  # flagged for these: stored (empty: nothing stored)
    urgent: bool = False  # one of them is urgent: the student's teachers are emailed
    unchecked: bool = False  # the check failed (allowed only when the policy fails open)


def is_urgent(categories: Iterable[str], urgent: Iterable[str]) -> bool:
    """A category is urgent when the policy names it or its family ("self-harm" covers
    "self-harm/intent")."""
    marked = set(urgent)
    return any(c in marked or c.split("/", 1)[0] in marked for c in categories)


def safe_reply(categories: Iterable[str], help_resources: str = "") -> str:
    """The line said instead of a flagged turn or sentence, by the gravest category."""
    families = {c.split("/", 1)[0] for c in categories}
    if "self-harm" in families:
        return f"{SELF_HARM} {help_resources.strip()}".strip()
    if families & {"violence", "harassment", "hate", "illicit"}:
        return DANGER
    return OFF_LIMITS


def rule(policy: Policy, direction: Direction, *, flagged: bool = False,
         categories: Iterable[str] = (), failed: bool = False) -> Ruling:
    """What happens to a checked text: `flagged` with its `categories`, or the check `failed`."""
    if failed:
        if not policy.fail_closed:
            return Ruling(True, unchecked=True)
        return Ruling(False, UNAVAILABLE_INPUT if direction == "input" else UNAVAILABLE_OUTPUT,
                      unchecked=True)
    if not flagged:
        return Ruling(True)
    found = tuple(sorted(set(categories))) or ("flagged",)  # flagged without a category named
    reply = safe_reply(found, policy.help_resources)
    if direction == "output" and reply != safe_reply(("self-harm",), policy.help_resources):
        reply = STOPPED  # the tutor's own words: it stops (help is offered for self-harm only)
    return Ruling(False, reply, found, is_urgent(found, policy.urgent))


class AnswerCut:
    """Cuts a streamed answer where `SentenceSplitter` cuts it (the pieces a spoken answer is
    synthesised in), but returns the text as generated, whitespace included, so the checked
    pieces put together are the answer exactly."""

    def __init__(self) -> None:
        self._splitter = SentenceSplitter()
        self._raw = ""

    def feed(self, delta: str) -> list[str]:
        self._raw += delta
        out = []
        for piece in self._splitter.feed(delta):
            end = self._raw.find(piece) + len(piece)
            out.append(self._raw[:end])
            self._raw = self._raw[end:]
        return out

    def flush(self) -> str | None:
        self._splitter.flush()
        rest, self._raw = self._raw, ""
        return rest if rest.strip() else None


@dataclass(frozen=True)
class Check:
    """Check `text` and give the ruling to `AnswerGate.ruled` with this `ticket`."""

    ticket: int
    text: str
    direction: Direction


@dataclass(frozen=True)
class Pass:
    """Hand this output on: a piece of the answer's text, or any other output (citations, a tool
    call, the end), in the order the answer gave them."""

    output: Any


@dataclass(frozen=True)
class Stop:
    """The answer ends here, with this line instead of what was checked (nothing after it)."""

    line: str


GateAction = Union[Check, Pass, Stop]


class AnswerGate:
    """One answer's moderation, in order. `question` (the student's words, when there are any)
    is checked first and nothing passes before its ruling; then each output given to `output`
    passes once every check before it allowed its text. Text is cut into sentences, each
    checked as soon as it is complete (the checks run side by side). `ends` marks the outputs
    that end an answer (its text so far is cut and checked before them). After a `Stop`
    nothing more comes out."""

    def __init__(self, question: str | None, ends: tuple[type, ...]) -> None:
        self.ends = ends
        self.stopped = False
        self._cut = AnswerCut()
        self._queue: deque[tuple[int | None, Any]] = deque()  # (ticket, text) or (None, output)
        self._rulings: dict[int, Ruling] = {}
        self._tickets = 0
        self._shown = False
        self._first = [self._check(question, "input")] if question else []

    def start(self) -> list[GateAction]:
        """The checks to start with: the student's words."""
        first, self._first = self._first, []
        return list(first)

    def output(self, output: Any) -> list[GateAction]:
        if self.stopped:
            return []
        actions: list[GateAction] = []
        if isinstance(output, str):
            actions += [self._check(piece, "output") for piece in self._cut.feed(output)]
            return actions + self._drain()
        if isinstance(output, self.ends):
            rest = self._cut.flush()
            if rest is not None:
                actions.append(self._check(rest, "output"))
        self._queue.append((None, output))
        return actions + self._drain()

    def ruled(self, ticket: int, ruling: Ruling) -> list[GateAction]:
        if self.stopped:
            return []
        self._rulings[ticket] = ruling
        return self._drain()

    def _check(self, text: str, direction: Direction) -> Check:
        check = Check(self._tickets, text, direction)
        self._tickets += 1
        self._queue.append((check.ticket, text if direction == "output" else None))
        return check

    def _drain(self) -> list[GateAction]:
        out: list[GateAction] = []
        while self._queue and not self.stopped:
            ticket, item = self._queue[0]
            if ticket is not None:
                ruling = self._rulings.pop(ticket, None)
                if ruling is None:
                    break  # its check is still running
                if not ruling.allow:
                    self.stopped = True
                    line = ruling.reply or ""
                    out.append(Stop(f" {line}" if self._shown else line))
                    break
                if item is not None:  # the question's text is the student's: never passed on
                    self._shown = True
                    out.append(Pass(item))
            else:
                out.append(Pass(item))
            self._queue.popleft()
        return out
