"""The tutor's default system prompt and how a chat request's messages are assembled,
including the course passages and the student's own earlier turns retrieved for a question."""

from __future__ import annotations

from typing import Any

TUTOR_INSTRUCTIONS = """\
You are a patient, encouraging tutor talking with a student by voice.
Guide the student to the answer instead of just giving it: ask one short question at a time,
give a hint when they are stuck, and check their understanding before moving on.
Keep answers short and conversational (two to four sentences) because they are spoken aloud;
no lists, tables or markdown. If the student asks for the answer outright after trying,
explain it step by step. If you are not sure of something, say so."""


GROUNDING = """
Course material for this question follows, each passage with its id in brackets. Base your answer
on it and mention the id of a passage you use, like [c12]. If the material does not cover the
question, say that the course does not cover it before helping from general knowledge."""

NO_MATERIAL = """
No course material matched this question: say that the course does not seem to cover it, then
help from general knowledge."""

MEMORY = """
What this student asked you before (most relevant first), in case they refer back to it:"""

# The student's own notes (study.notes) found by memory search, after their earlier turns. A note
# can be 20 000 characters: only its beginning goes into the prompt.
NOTES = """
Notes this student wrote for themselves (most relevant first), in case they ask about them:"""
NOTE_PROMPT_CHARS = 1500


def chat_messages(instructions: str, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat request's messages: the instructions, then the conversation's entries as the
    chat-completions API takes them. Entries may carry private keys (`_id`, `_audio`: the
    Realtime item they stand for), which are left out.

    Function calls follow the API's rule: an assistant message with `tool_calls` is followed at
    once by one `tool` message per call. So a call's output is placed right after its call
    wherever the client added it, consecutive calls (and the text just before them) share one
    assistant message, and a call without an output (never answered, or cut by a barge-in) is
    left out, as is an output whose call is not in the conversation."""
    outputs = {e.get("tool_call_id"): e for e in history if e.get("role") == "tool"}
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}]
    calling: dict[str, Any] | None = None  # the assistant message the last calls joined
    for entry in history:
        if "tool_calls" in entry:
            calls = [c for c in entry["tool_calls"] if c["id"] in outputs]
            if not calls:
                continue
            if calling is None:
                last = messages[-1]
                if last["role"] == "assistant" and "tool_calls" not in last:
                    calling = last  # the answer's text, then its calls: one message
                else:
                    calling = {"role": "assistant", "content": None}
                    messages.append(calling)
                calling["tool_calls"] = []
            calling["tool_calls"].extend(calls)
            messages.extend({"role": "tool", "tool_call_id": c["id"],
                             "content": outputs[c["id"]].get("content") or ""} for c in calls)
        else:
            calling = None  # an output (placed above already) or a message ends the calls
            if entry.get("role") != "tool":
                messages.append({"role": entry.get("role"), "content": entry.get("content")})
    return messages


def grounded(messages: list[dict[str, Any]], passages: list[tuple[str, str, str]],
             memories: list[tuple[str, str]] = (),
             notes: list[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """`messages` with the system prompt extended by course passages (id, heading, text), the
    student's earlier turns (question, answer) and notes (title, text). Only the system message
    changes."""
    system = messages[0]["content"]
    if passages:
        system += GROUNDING + "".join(f"\n\n[{pid}] {heading}\n{text}" if heading else
                                      f"\n\n[{pid}]\n{text}" for pid, heading, text in passages)
    else:
        system += NO_MATERIAL
    if memories:
        system += MEMORY + "".join(f"\n- Student: {q}\n  Tutor: {a}" for q, a in memories)
    if notes:
        system += NOTES + "".join(_note_line(title, text) for title, text in notes)
    return [{"role": "system", "content": system}, *messages[1:]]


def _note_line(title: str, text: str) -> str:
    if len(text) > NOTE_PROMPT_CHARS:
        text = text[: NOTE_PROMPT_CHARS - 1] + "…"
    text = text.strip().replace("\n", "\n  ")
    return f"\n- {title}: {text}" if title else f"\n- {text}"
