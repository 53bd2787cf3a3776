"""WebSocket tickets redeem once, to the user they were issued for, and only while fresh.

Every behaviour is checked on both stores: in memory (with a hand-moved clock) and on the real
Redis at 127.0.0.1:6379 (database 15, a prefix of its own per test, removed afterwards).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import AsyncIterator

import pytest
from redis.asyncio import Redis

from accounts.tickets import MemoryTickets, RedisTickets, TicketStore, ticket_hash
from tests.services import redis_client  # noqa: F401  (fixture)

SHORT_TTL_S = 0.2  # Redis expires keys with millisecond precision


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class Tickets:
    """A store under test, and how to let `seconds` pass for it."""

    def __init__(self, store: TicketStore, clock: Clock | None = None) -> None:
        self.store = store
        self.clock = clock

    async def wait(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)


@pytest.fixture
async def redis_prefix(redis_client: Redis) -> AsyncIterator[str]:  # noqa: F811
    prefix = f"test:ticket:{uuid.uuid4().hex}:"
    yield prefix
    keys = [key async for key in redis_client.scan_iter(match=prefix + "*")]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture(params=["memory", "redis"])
def tickets(request: pytest.FixtureRequest) -> Tickets:
    if request.param == "memory":
        clock = Clock()
        return Tickets(MemoryTickets(clock=clock), clock)
    client = request.getfixturevalue("redis_client")
    return Tickets(RedisTickets(client, prefix=request.getfixturevalue("redis_prefix")))


async def test_a_ticket_redeems_to_its_user(tickets: Tickets) -> None:
    ticket = await tickets.store.issue("user-1", ttl_s=30)
    assert await tickets.store.redeem(ticket) == "user-1"


async def test_a_ticket_redeems_only_once(tickets: Tickets) -> None:
    ticket = await tickets.store.issue("user-1", ttl_s=30)
    assert await tickets.store.redeem(ticket) == "user-1"
    assert await tickets.store.redeem(ticket) is None


@pytest.mark.parametrize("ticket", ["", "not-a-ticket", "x" * 10_000])
async def test_an_unknown_ticket_redeems_to_nobody(tickets: Tickets, ticket: str) -> None:
    await tickets.store.issue("user-1", ttl_s=30)
    assert await tickets.store.redeem(ticket) is None


async def test_tickets_are_distinct_and_unguessable(tickets: Tickets) -> None:
    issued = [await tickets.store.issue("user-1", ttl_s=30) for _ in range(20)]
    assert len(set(issued)) == 20
    assert all(len(t) >= 43 for t in issued)  # 32 random bytes, url-safe base64
    assert await tickets.store.redeem(issued[7]) == "user-1"


async def test_each_ticket_keeps_its_own_user(tickets: Tickets) -> None:
    a = await tickets.store.issue("user-a", ttl_s=30)
    b = await tickets.store.issue("user-b", ttl_s=30)
    assert await tickets.store.redeem(b) == "user-b"
    assert await tickets.store.redeem(a) == "user-a"


async def test_an_expired_ticket_redeems_to_nobody(tickets: Tickets) -> None:
    stale = await tickets.store.issue("user-1", ttl_s=SHORT_TTL_S)
    fresh = await tickets.store.issue("user-1", ttl_s=30)
    await tickets.wait(SHORT_TTL_S + 0.05)
    assert await tickets.store.redeem(stale) is None
    assert await tickets.store.redeem(fresh) == "user-1"


async def test_of_50_concurrent_redeems_exactly_one_wins(tickets: Tickets) -> None:
    ticket = await tickets.store.issue("user-1", ttl_s=30)
    results = await asyncio.gather(*(tickets.store.redeem(ticket) for _ in range(50)))
    assert results.count("user-1") == 1
    assert results.count(None) == 49


async def test_redis_stores_only_a_hash_of_each_ticket(
        redis_client: Redis, redis_prefix: str) -> None:  # noqa: F811
    store = RedisTickets(redis_client, prefix=redis_prefix)
    ticket = await store.issue("user-1", ttl_s=30)
    keys = [k.decode() async for k in redis_client.scan_iter(match=redis_prefix + "*")]
    assert keys == [redis_prefix + ticket_hash(ticket)]
    assert ticket not in keys[0]
    assert 0 < await redis_client.pttl(keys[0]) <= 30_000  # Redis expires it, to the millisecond


async def test_memory_tickets_drop_expired_entries_as_new_ones_are_issued() -> None:
    clock = Clock()
    store = MemoryTickets(clock=clock)
    for _ in range(100):
        await store.issue("user-1", ttl_s=1)
    clock.now += 2
    ticket = await store.issue("user-2", ttl_s=1)
    assert len(store) == 1
    assert await store.redeem(ticket) == "user-2"
