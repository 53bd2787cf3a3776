"""The conversation's items as the client sees them: a client's item turned into a conversation
entry and back, where a new item goes, and the `conversation.item.*` events.

The entries themselves (the bounded history) are the turn-taker's (`dialogue.turntaking`);
`Conversation` adds what only the protocol knows: the last item's id (each added item names its
predecessor) and the recent audio items whose transcript was empty (not in the history, but a
client may still retrieve or delete them).
"""

from __future__ import annotations

from typing import Any

from dialogue.turntaking import TurnTaker

from . import events as ev
from .actions import Action, Send
from .errors import ClientError

UNHEARD_KEPT = 32  # empty transcripts kept for `conversation.item.retrieve`


class Conversation:
    def __init__(self, turns: TurnTaker, events: ev.Events, history_messages: int) -> None:
        self.turns = turns
        self.events = events
        self.history_messages = history_messages
        self.last_item_id: str | None = None
        self._unheard: dict[str, str] = {}  # audio item id → its (empty) transcript

    # -- items joining the end -------------------------------------------------------------
    def added(self, item: dict[str, Any]) -> Send:
        """`conversation.item.added`: an item joins the end of the conversation."""
        previous, self.last_item_id = self.last_item_id, item["id"]
        return self.events.send("conversation.item.added", previous_item_id=previous, item=item)

    def complete(self, item: dict[str, Any]) -> list[Action]:
        """A complete item joins the end of the conversation: `conversation.item.added`, then
        `conversation.item.done`."""
        return [self.added(item), self.done(item)]

    def done(self, item: dict[str, Any]) -> Send:
        return self.events.send("conversation.item.done", item=item)

    def unheard(self, item_id: str, transcript: str) -> None:
        """An audio item whose transcript is empty: not in the conversation, still retrievable."""
        self._unheard[item_id] = transcript
        if len(self._unheard) > UNHEARD_KEPT:
            del self._unheard[next(iter(self._unheard))]

    def holds(self, item_id: str) -> bool:
        try:
            self.turns.entry(item_id)
        except KeyError:
            return False
        return True

    # -- client events ---------------------------------------------------------------------
    def create(self, message: dict[str, Any], now: float) -> list[Action]:
        """`conversation.item.create`: at the end, or after `previous_item_id`."""
        item = message.get("item")
        if not isinstance(item, dict):
            raise ClientError("missing_required_parameter", "conversation.item.create needs 'item'",
                              "item")
        previous = message.get("previous_item_id")
        if previous is not None and not isinstance(previous, str):
            raise ClientError("invalid_value", "previous_item_id must be a string",
                              "previous_item_id")
        item_id = item["id"] if isinstance(item.get("id"), str) and item["id"] \
            else self.events.ids("item")
        entry, created = conversation_item(item, item_id)
        if previous == self.last_item_id or (previous == "root" and self.last_item_id is None):
            previous = None  # after the last item (or first of none): at the end
        elif previous not in (None, "root") and not self.holds(previous):
            previous = None  # an item we no longer hold (or never did): at the end, as OpenAI
        if entry["role"] == "user" and "tool_calls" not in entry:
            self.turns.user_text(entry["content"], {"_id": item_id}, after=previous)
        else:
            self.turns.add_entry(entry, after=previous)
        if previous is None:
            return self.complete(created)
        return [self.events.send("conversation.item.added", item=created,
                                 previous_item_id=None if previous == "root" else previous),
                self.done(created)]

    def retrieve(self, message: dict[str, Any], now: float) -> list[Action]:
        item_id = message.get("item_id")
        if not isinstance(item_id, str):
            raise ClientError("missing_required_parameter", "retrieve needs 'item_id'", "item_id")
        try:
            item = realtime_item(self.turns.entry(item_id))
        except KeyError:
            if item_id not in self._unheard:
                raise ClientError("item_not_found", f"no item '{item_id}' in the conversation "
                                  f"(only the last {self.history_messages} are kept)",
                                  "item_id")
            item = ev.user_audio_item(item_id, self._unheard[item_id])
        return [self.events.send("conversation.item.retrieved", item=item)]

    def delete(self, message: dict[str, Any], now: float) -> list[Action]:
        item_id = message.get("item_id")
        if not isinstance(item_id, str):
            raise ClientError("missing_required_parameter", "delete needs 'item_id'", "item_id")
        try:
            self.turns.delete(item_id)
        except KeyError:
            if self._unheard.pop(item_id, None) is None:
                raise ClientError("item_not_found", f"no item '{item_id}' in the conversation",
                                  "item_id")
        return [self.events.send("conversation.item.deleted", item_id=item_id)]


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
