"""Resuming a conversation after a dropped connection (a network blip, a phone changing networks).

Each voice session gets a resume token (`tutor.session.resumable`), refreshed after every answer.
The conversation (history, voice and input settings) is kept under it for `TUTOR_RESUME_TTL_S`
(120 s) after the socket goes; a new socket of the same user opened with `?resume=<token>` starts
from it (`tutor.session.resumed`). A token is used once: the resumed session gets a new one.
Kept in Redis when configured (any server process can resume), else in this process. Only a
SHA-256 of the token is stored.
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from accounts.tickets import ticket_hash


def _key(token: str) -> str:
    return "tutor:resume:" + ticket_hash(token)  # stored as a ticket is: hashed


class ResumeStore(Protocol):
    async def save(self, token: str, state: dict[str, Any], ttl_s: float) -> None: ...
    async def take(self, token: str) -> dict[str, Any] | None: ...


class MemoryResume:
    def __init__(self, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self.clock = clock
        self._items: dict[str, tuple[float, dict[str, Any]]] = {}

    async def save(self, token: str, state: dict[str, Any], ttl_s: float) -> None:
        now = self.clock()
        if len(self._items) > 10_000:
            self._items = {k: v for k, v in self._items.items() if v[0] > now}
        self._items[_key(token)] = (now + ttl_s, state)

    async def take(self, token: str) -> dict[str, Any] | None:
        item = self._items.pop(_key(token), None)
        return item[1] if item and item[0] > self.clock() else None


class RedisResume:
    def __init__(self, redis) -> None:  # type: ignore[no-untyped-def]
        self.redis = redis

    async def save(self, token: str, state: dict[str, Any], ttl_s: float) -> None:
        await self.redis.set(_key(token), json.dumps(state), px=int(ttl_s * 1000))

    async def take(self, token: str) -> dict[str, Any] | None:
        raw = await self.redis.getdel(_key(token))
        return json.loads(raw) if raw else None
