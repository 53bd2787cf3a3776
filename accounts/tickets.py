"""Short-lived, single-use tickets that let a signed-in browser open the voice WebSocket.

A browser cannot set headers on a WebSocket, so it asks for a ticket over an authenticated request
and opens `wss://…/api/voice?ticket=…`. Only a SHA-256 hash of each ticket is stored.
"""

from __future__ import annotations

import hashlib
import heapq
import secrets
import time
from typing import Callable, Protocol

from redis.asyncio import Redis

# Anything longer is not one of ours; refuse it before hashing attacker-sized input.
MAX_TICKET_CHARS = 128


class TicketStore(Protocol):
    async def issue(self, user_id: str, ttl_s: float) -> str:
        """A new ticket that redeems to `user_id` once, within `ttl_s` seconds."""
        ...

    async def redeem(self, ticket: str) -> str | None:
        """The user id the first time; None for a used, unknown or expired ticket."""
        ...


def new_ticket() -> str:
    return secrets.token_urlsafe(32)


def ticket_hash(ticket: str) -> str:
    """The form a ticket is stored in: a leaked store does not hold usable tickets."""
    return hashlib.sha256(ticket.encode()).hexdigest()


def _plausible(ticket: object) -> bool:
    return isinstance(ticket, str) and 0 < len(ticket) <= MAX_TICKET_CHARS


class MemoryTickets:
    """Tickets in this process (one server, or tests); expired ones are dropped as we go."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tickets: dict[str, tuple[str, float]] = {}  # hash -> (user id, expires at)
        self._expiries: list[tuple[float, str]] = []  # heap of (expires at, hash)

    async def issue(self, user_id: str, ttl_s: float) -> str:
        now = self._clock()
        self._prune(now)
        ticket = new_ticket()
        key = ticket_hash(ticket)
        self._tickets[key] = (user_id, now + ttl_s)
        heapq.heappush(self._expiries, (now + ttl_s, key))
        return ticket

    async def redeem(self, ticket: str) -> str | None:
        if not _plausible(ticket):
            return None
        entry = self._tickets.pop(ticket_hash(ticket), None)  # pop: single use, no await between
        if entry is None or self._clock() >= entry[1]:
            return None
        return entry[0]

    def __len__(self) -> int:
        return len(self._tickets)

    def _prune(self, now: float) -> None:
        # The heap may name hashes already redeemed; popping them is harmless.
        while self._expiries and self._expiries[0][0] <= now:
            _, key = heapq.heappop(self._expiries)
            entry = self._tickets.get(key)
            if entry is not None and entry[1] <= now:
                del self._tickets[key]


class RedisTickets:
    """Tickets in Redis, shared by every server process; Redis expires them itself."""

    def __init__(self, redis: Redis, prefix: str = "tutor:ticket:") -> None:
        self._redis = redis
        self.prefix = prefix

    async def issue(self, user_id: str, ttl_s: float) -> str:
        ttl_ms = max(1, round(ttl_s * 1000))
        while True:
            ticket = new_ticket()
            # NX: 256 random bits never collide in practice, but a ticket must never be silently
            # re-pointed at another user if they did.
            if await self._redis.set(self._key(ticket), user_id, nx=True, px=ttl_ms):
                return ticket

    async def redeem(self, ticket: str) -> str | None:
        if not _plausible(ticket):
            return None
        # GETDEL (Redis >= 6.2) reads and deletes in one step: of any number of concurrent
        # redeems, exactly one gets the user id.
        value = await self._redis.getdel(self._key(ticket))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def _key(self, ticket: str) -> str:
        return self.prefix + ticket_hash(ticket)
