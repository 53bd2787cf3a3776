"""Shared quota counters: voice milliseconds per day and month, chat messages per day, and live
sessions per user. Redis when configured (atomic Lua scripts, so several server processes share
one budget), in-process dictionaries otherwise. Periods are UTC days and months.

Callers pass the time (`at`, Unix seconds) rather than the store reading a clock, so tests can
cross a midnight without waiting for one.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol

from .meter import VoiceUsage

DAY_TTL_S = 2 * 86400
MONTH_TTL_S = 32 * 86400


def day_key(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y%m%d")


def month_key(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y%m")


def seconds_to_next_day(at: float) -> float:
    return 86400 - at % 86400


def seconds_to_next_month(at: float) -> float:
    d = datetime.fromtimestamp(at, timezone.utc)
    nxt = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=timezone.utc)
    return nxt.timestamp() - at


class QuotaStore(Protocol):
    async def charge_voice(self, user_id: str, ms: int, at: float) -> VoiceUsage: ...
    async def voice_usage(self, user_id: str, at: float) -> VoiceUsage: ...
    async def take_chat(self, user_id: str, limit: int | None, at: float) -> int | None: ...
    async def chat_used(self, user_id: str, at: float) -> int: ...
    async def acquire_session(self, user_id: str, session_id: str, limit: int | None,
                              ttl_s: float, at: float) -> bool: ...
    async def refresh_session(self, user_id: str, session_id: str, ttl_s: float,
                              at: float) -> None: ...
    async def release_session(self, user_id: str, session_id: str) -> None: ...


class MemoryQuotas:
    """One process's counters (the default without Redis). Old periods are dropped as they pass."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._sessions: dict[str, dict[str, float]] = {}  # user → session → expiry

    def _prune(self, at: float) -> None:
        if len(self._counts) > 10_000:  # drop counters of past periods
            today, month = day_key(at), month_key(at)
            self._counts = {k: v for k, v in self._counts.items()
                            if k.endswith(today) or k.endswith(month)}

    async def charge_voice(self, user_id: str, ms: int, at: float) -> VoiceUsage:
        self._prune(at)
        d, m = f"{user_id}:voice:d:{day_key(at)}", f"{user_id}:voice:m:{month_key(at)}"
        self._counts[d] = self._counts.get(d, 0) + ms
        self._counts[m] = self._counts.get(m, 0) + ms
        return VoiceUsage(self._counts[d], self._counts[m])

    async def voice_usage(self, user_id: str, at: float) -> VoiceUsage:
        return VoiceUsage(self._counts.get(f"{user_id}:voice:d:{day_key(at)}", 0),
                          self._counts.get(f"{user_id}:voice:m:{month_key(at)}", 0))

    async def take_chat(self, user_id: str, limit: int | None, at: float) -> int | None:
        key = f"{user_id}:chat:d:{day_key(at)}"
        used = self._counts.get(key, 0)
        if limit is not None and used >= limit:
            return None
        self._counts[key] = used + 1
        return used + 1

    async def chat_used(self, user_id: str, at: float) -> int:
        return self._counts.get(f"{user_id}:chat:d:{day_key(at)}", 0)

    async def acquire_session(self, user_id: str, session_id: str, limit: int | None,
                              ttl_s: float, at: float) -> bool:
        live = {s: t for s, t in self._sessions.get(user_id, {}).items() if t > at}
        if limit is not None and len(live) >= limit and session_id not in live:
            self._sessions[user_id] = live
            return False
        live[session_id] = at + ttl_s
        self._sessions[user_id] = live
        return True

    async def refresh_session(self, user_id: str, session_id: str, ttl_s: float,
                              at: float) -> None:
        self._sessions.setdefault(user_id, {})[session_id] = at + ttl_s

    async def release_session(self, user_id: str, session_id: str) -> None:
        self._sessions.get(user_id, {}).pop(session_id, None)


_CHARGE_VOICE = """
local d = redis.call('INCRBY', KEYS[1], ARGV[1])
if d == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
local m = redis.call('INCRBY', KEYS[2], ARGV[1])
if m == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
return {d, m}
"""

_TAKE_CAPPED = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) >= 0 and used >= tonumber(ARGV[1]) then return -1 end
used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return used
"""

_ACQUIRE_SESSION = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local limit = tonumber(ARGV[3])
if limit >= 0 and redis.call('ZSCORE', KEYS[1], ARGV[4]) == false
   and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisQuotas:
    """Counters in Redis, shared by every server process; each update is one atomic script."""

    def __init__(self, redis, prefix: str = "tutor:quota") -> None:  # type: ignore[no-untyped-def]
        self.redis = redis
        self.prefix = prefix
        self._charge = redis.register_script(_CHARGE_VOICE)
        self._take = redis.register_script(_TAKE_CAPPED)
        self._acquire = redis.register_script(_ACQUIRE_SESSION)

    def _k(self, user_id: str, rest: str) -> str:
        return f"{self.prefix}:{user_id}:{rest}"

    async def charge_voice(self, user_id: str, ms: int, at: float) -> VoiceUsage:
        keys = [self._k(user_id, f"voice:d:{day_key(at)}"),
                self._k(user_id, f"voice:m:{month_key(at)}")]
        d, m = await self._charge(keys=keys, args=[int(ms), DAY_TTL_S, MONTH_TTL_S])
        return VoiceUsage(int(d), int(m))

    async def voice_usage(self, user_id: str, at: float) -> VoiceUsage:
        d, m = await self.redis.mget(self._k(user_id, f"voice:d:{day_key(at)}"),
                                     self._k(user_id, f"voice:m:{month_key(at)}"))
        return VoiceUsage(int(d or 0), int(m or 0))

    async def take_chat(self, user_id: str, limit: int | None, at: float) -> int | None:
        used = await self._take(keys=[self._k(user_id, f"chat:d:{day_key(at)}")],
                                args=[-1 if limit is None else limit, DAY_TTL_S])
        return None if int(used) < 0 else int(used)

    async def chat_used(self, user_id: str, at: float) -> int:
        return int(await self.redis.get(self._k(user_id, f"chat:d:{day_key(at)}")) or 0)

    async def acquire_session(self, user_id: str, session_id: str, limit: int | None,
                              ttl_s: float, at: float) -> bool:
        ok = await self._acquire(keys=[self._k(user_id, "sessions")],
                                 args=[at, at + ttl_s, -1 if limit is None else limit,
                                       session_id, int(ttl_s) + 60])
        return bool(int(ok))

    async def refresh_session(self, user_id: str, session_id: str, ttl_s: float,
                              at: float) -> None:
        key = self._k(user_id, "sessions")
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.zadd(key, {session_id: at + ttl_s}).expire(key, int(ttl_s) + 60).execute()

    async def release_session(self, user_id: str, session_id: str) -> None:
        await self.redis.zrem(self._k(user_id, "sessions"), session_id)


def now() -> float:
    """The wall clock the shells pass as `at` (UTC-based Unix time)."""
    return time.time()
