"""Resuming a conversation after a dropped connection (a network blip, a phone changing networks).

Each voice session gets a resume token (`tutor.session.resumable`), refreshed after every answer.
The conversation (history, voice and input settings) is kept under it for `TUTOR_RESUME_TTL_S`
(120 s) after the socket goes; a new socket of the same user opened with `?resume=<token>` starts
from it (`tutor.session.resumed`). A token is used once: the resumed session gets a new one.
Kept in Redis when configured (any server process can resume), else in this process. Only a
SHA-256 of the token is stored.
"""

from __future__ import annotations

import asyncio
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
    """Resume states in this process, each dropped when its time is up (a timer per token, so
    a quiet server gives the memory back too), and at most `max_entries` (the oldest go)."""

    def __init__(self, clock=time.monotonic, max_entries: int = 1000) -> None:  # type: ignore[no-untyped-def]
        self.clock = clock
        self.max_entries = max_entries
        self._items: dict[str, tuple[float, dict[str, Any]]] = {}  # oldest first
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._items)

    async def save(self, token: str, state: dict[str, Any], ttl_s: float) -> None:
        key = _key(token)
        self._drop(key)  # saved again: it moves to the end, with a new time
        self._items[key] = (self.clock() + ttl_s, state)
        self._timers[key] = asyncio.get_running_loop().call_later(ttl_s, self._drop, key)
        while len(self._items) > self.max_entries:
            self._drop(next(iter(self._items)))

    async def take(self, token: str) -> dict[str, Any] | None:
        key = _key(token)
        item = self._items.get(key)
        self._drop(key)
        return item[1] if item and item[0] > self.clock() else None

    def _drop(self, key: str) -> None:
        self._items.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()


class RedisResume:
    def __init__(self, redis) -> None:  # type: ignore[no-untyped-def]
        self.redis = redis

    async def save(self, token: str, state: dict[str, Any], ttl_s: float) -> None:
        await self.redis.set(_key(token), json.dumps(state), px=int(ttl_s * 1000))

    async def take(self, token: str) -> dict[str, Any] | None:
        raw = await self.redis.getdel(_key(token))
        return json.loads(raw) if raw else None
