"""Per-minute request limits, per user (or per client address before sign-in), per route group.

Built on the `limits` library's sliding-window counter: a rejected call is not counted, so a
client that keeps retrying too early does not push its own window further out. Storage is Redis
when configured (every process shares the same windows), memory otherwise.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int  # whole seconds until a call would be accepted (0 when allowed)


def storage_for(redis_url: str | None, **redis_options: Any) -> Storage:
    """`redis_options` go to the redis-py client (its timeouts and retries)."""
    if not redis_url:
        return MemoryStorage()
    scheme, rest = redis_url.split("://", 1)
    # The redis-py implementation, which the project already depends on (not coredis).
    return RedisStorage(f"async+{scheme}://{rest}", implementation="redispy",
                        key_prefix="tutor:rl", **redis_options)


class RequestLimiter:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.strategy = SlidingWindowCounterRateLimiter(storage)
        self._items: dict[int, RateLimitItemPerMinute] = {}

    def _item(self, per_minute: int) -> RateLimitItemPerMinute:
        item = self._items.get(per_minute)
        if item is None:
            item = self._items[per_minute] = RateLimitItemPerMinute(per_minute)
        return item

    async def hit(self, group: str, who: str, per_minute: int | None) -> Decision:
        if per_minute is None:
            return Decision(True, 0, 0, 0)
        item = self._item(per_minute)
        allowed = await self.strategy.hit(item, group, who)
        stats = await self.strategy.get_window_stats(item, group, who)
        retry = 0 if allowed else max(1, math.ceil(stats.reset_time - time.time()))
        return Decision(allowed, per_minute, stats.remaining, retry)

    async def peek(self, group: str, who: str, per_minute: int | None) -> Decision:
        if per_minute is None:
            return Decision(True, 0, 0, 0)
        stats = await self.strategy.get_window_stats(self._item(per_minute), group, who)
        return Decision(stats.remaining > 0, per_minute, stats.remaining, 0)
