"""Constructors for the server events we send, shaped as the OpenAI Realtime (GA) protocol.

Plain dicts, ready for `json.dumps`; tests parse them back with `openai.types.realtime`.
Events beyond OpenAI's set are prefixed `tutor.`. docs/protocol.md shows each with an example.
`Events` stamps each with an `event_id` from the session's id factory and wraps it in `Send`.
"""

from __future__ import annotations

from typing import Any

from .actions import Send
from .ids import Ids

Event = dict[str, Any]


class Events:
    """Makes the session's outgoing events: each gets the next `event_id` of its ids."""

    def __init__(self, ids: Ids) -> None:
        self.ids = ids

    def send(self, kind: str, **fields: Any) -> Send:
        return Send({"type": kind, "event_id": self.ids("event"), **fields})

    def error(self, code: str, message: str, *, type: str = "invalid_request_error",
              event_id: str | None = None, param: str | None = None) -> Send:
        """`event_id`: the client event refused (the error's own id is minted here)."""
        event = error(code, message, type=type, event_id=event_id, param=param)
        event["event_id"] = self.ids("event")
        return Send(event)


def refusal(code: str, message: str, error_type: str, ids: Ids | None = None) -> Event:
    """The `error` event of a socket refused before any session (sign-in, caps, plan)."""
    event = error(code, message, type=error_type)
    event["event_id"] = (ids or Ids.random())("event")
    return event


def error(code: str, message: str, *, type: str = "invalid_request_error",
          event_id: str | None = None, param: str | None = None) -> Event:
    return {
        "type": "error",
        "error": {"type": type, "code": code, "message": message, "param": param,
                  "event_id": event_id},
    }


def user_audio_item(item_id: str, transcript: str | None = None) -> Event:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
            "status": "completed", "content": [{"type": "input_audio", "transcript": transcript}]}


def user_text_item(item_id: str, text: str) -> Event:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
            "status": "completed", "content": [{"type": "input_text", "text": text}]}


def assistant_item(item_id: str, status: str, text: str | None = None, *,
                   audio: bool = False) -> Event:
    if text is None:
        content: list[Event] = []
    elif audio:
        content = [{"type": "output_audio", "transcript": text}]
    else:
        content = [{"type": "output_text", "text": text}]
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
            "status": status, "content": content}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str,
                       status: str) -> Event:
    return {"id": item_id, "object": "realtime.item", "type": "function_call",
            "status": status, "call_id": call_id, "name": name, "arguments": arguments}


def function_call_output_item(item_id: str, call_id: str, output: str) -> Event:
    return {"id": item_id, "object": "realtime.item", "type": "function_call_output",
            "status": "completed", "call_id": call_id, "output": output}


def message_item(item_id: str, role: str, text: str) -> Event:
    """A system or assistant message a client created (text content)."""
    kind = "output_text" if role == "assistant" else "input_text"
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": role,
            "status": "completed", "content": [{"type": kind, "text": text}]}


def response(response_id: str, status: str, output: list[Event], *, modalities: list[str],
             voice: str, output_format: Event, status_details: Event | None = None,
             metadata: dict[str, str] | None = None, conversation_id: str | None = None,
             max_output_tokens: int | None = None) -> Event:
    audio: Event = {"output": {"format": output_format, "voice": voice}}
    return {"id": response_id, "object": "realtime.response", "status": status,
            "status_details": status_details, "output": output,
            "output_modalities": modalities,
            "conversation_id": conversation_id, "metadata": metadata,
            "max_output_tokens": "inf" if max_output_tokens is None else max_output_tokens,
            "audio": audio}


def text_part(response_id: str, item_id: str, output_index: int = 0) -> Event:
    return {"response_id": response_id, "item_id": item_id, "output_index": output_index,
            "content_index": 0}
