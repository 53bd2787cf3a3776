"""Constructors for the server events we send, shaped as the OpenAI Realtime (GA) protocol.

Plain dicts, ready for `json.dumps`; tests parse them back with `openai.types.realtime`.
Events beyond OpenAI's set are prefixed `tutor.`. docs/protocol.md shows each with an example.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

Event = dict[str, Any]


class Ids:
    """Short unique ids: a random per-session prefix and a counter (cheap, and sortable)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._n = itertools.count(1)

    def __call__(self, kind: str) -> str:
        return f"{kind}_{self._prefix}{next(self._n):04d}"


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


def response(response_id: str, status: str, output: list[Event], *,
             status_details: Event | None = None, modalities: list[str] | None = None) -> Event:
    return {"id": response_id, "object": "realtime.response", "status": status,
            "status_details": status_details, "output": output,
            "output_modalities": modalities or ["text"],
            "conversation_id": None}


def text_part(response_id: str, item_id: str) -> Event:
    return {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
