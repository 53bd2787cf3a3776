"""Connection limits that uvicorn does not have: a deadline for the request head, a cap on the
HTTP connections of one address, and caps on the voice sessions of one address and one user.

uvicorn times out an idle keep-alive connection, but not a fresh one: a TCP connection that
never sends a byte (half-open, or a flood of them), or sends its request head a byte at a time
(slowloris), is held for ever, with its file descriptor. `guarded_http` makes a subclass of
uvicorn's httptools protocol (passed as `http=`) that arms a timer whenever it waits for a
request head (on connect, and when the next request on a kept-alive connection begins) and
cancels it when the head is complete; if it fires, the connection is closed. The same class
counts connections per peer address and closes those past the cap at once.

`SessionSlots` counts the voice sessions per address and per user in this process: a pure
counter (no I/O, no awaits), so a check and its increment cannot interleave with another
socket's, and `release` is called from a `finally` on every exit path.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from uvicorn.middleware.proxy_headers import _TrustedHosts
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("tutor.connections")


def guarded_http(head_timeout_s: float, max_per_address: int | None) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a request-head deadline and a per-address cap.

    Connections from addresses uvicorn trusts for `X-Forwarded-For` (FORWARDED_ALLOW_IPS:
    loopback by default, a reverse proxy in production) are not capped here: behind a proxy
    every client shares its address. They are capped per client address at the voice socket
    (`SessionSlots`), where the forwarded address is known."""
    open_per_address: Counter[str] = Counter()  # this server's connections, by peer address
    trusted: list[_TrustedHosts] = []  # FORWARDED_ALLOW_IPS, parsed on the first connection

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _head_timer = None
        _counted: str | None = None

        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def,override]
            super().connection_made(transport)
            host = self.client[0] if self.client else None
            if not trusted:
                trusted.append(_TrustedHosts(self.config.forwarded_allow_ips))
            if max_per_address is not None and host is not None and host not in trusted[0]:
                if open_per_address[host] >= max_per_address:
                    log.warning("%s: more than %d connections; closed", host, max_per_address)
                    transport.abort()
                    return
                open_per_address[host] += 1
                self._counted = host
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # the next request of a kept-alive connection: its head has a deadline

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def handle_websocket_upgrade(self) -> None:
            self._release()  # the voice endpoint counts it from now on (SessionSlots)
            super().handle_websocket_upgrade()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._release()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(head_timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _release(self) -> None:
            if self._counted is not None:
                open_per_address[self._counted] -= 1
                if open_per_address[self._counted] <= 0:
                    del open_per_address[self._counted]
                self._counted = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                log.info("%s: no complete request head in %.0f s; closed",
                         self.client[0] if self.client else "?", head_timeout_s)
                self.transport.abort()  # nothing of ours is waiting to be sent

    return GuardedHttpToolsProtocol


@dataclass
class Refusal:
    code: str
    message: str


@dataclass
class SessionSlots:
    """Open voice sessions per client address and per user, in this process. `None`: no cap.

    `take_address` before sign-in (an attacker need not sign in to hold sockets), `take_user`
    after; each successful take is given back with the matching `release_*` exactly once."""

    per_address: int | None
    per_user: int | None
    addresses: Counter[str] = field(default_factory=Counter)
    users: Counter[str] = field(default_factory=Counter)

    def take_address(self, address: str) -> Refusal | None:
        return _take(self.addresses, address, self.per_address, Refusal(
            "too_many_connections", f"{self.per_address} voice sessions are already open from "
            "this address; close one, or try again later"))

    def take_user(self, user_id: str) -> Refusal | None:
        return _take(self.users, user_id, self.per_user, Refusal(
            "too_many_sessions", f"{self.per_user} voice sessions are already open for this "
            "account; close another one first"))

    def release_address(self, address: str) -> None:
        _give_back(self.addresses, address)

    def release_user(self, user_id: str) -> None:
        _give_back(self.users, user_id)

    @contextmanager
    def address(self, address: str) -> Iterator[Refusal | None]:
        """`with slots.address(a) as refusal:` the slot is held for the block (None), or refused;
        given back however the block ends."""
        yield from _held(self.take_address(address), lambda: self.release_address(address))

    @contextmanager
    def user(self, user_id: str) -> Iterator[Refusal | None]:
        yield from _held(self.take_user(user_id), lambda: self.release_user(user_id))


def _take(counts: Counter[str], key: str, cap: int | None, refusal: Refusal) -> Refusal | None:
    if cap is not None and counts[key] >= cap:
        return refusal
    counts[key] += 1
    return None


def _held(refusal: Refusal | None, release: Callable[[], None]) -> Iterator[Refusal | None]:
    try:
        yield refusal
    finally:
        if refusal is None:
            release()


def _give_back(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]  # no key left behind per address or user that has gone
