"""Moderation's decisions, pure: a check's verdict (or its failure) in, what the tutor does out.

The shell checks the student's words and each sentence of the tutor's answer with a
`providers.Moderator` and hands the result here. `rule` says whether the text goes on, and if
not what the student hears instead (a calm, age-appropriate line from `safe_reply`, with the
help resources the school configured when self-harm is involved), which categories are stored
as a flag, and whether the flag is urgent (the student's teachers are emailed). A check that
failed is allowed (fail open) or refused with a neutral line (fail closed), per the policy.
`AnswerCut` cuts a streamed answer into the sentences that are checked before any of them is
shown or spoken, keeping the text exactly as generated (spaces and line breaks included).
docs/tutoring.md, "Moderation", describes the behaviour.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

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
