"""Idle and half-open connections are timed out, and connections are capped per address and
per user (issue 15; server/connections.py, docs/operations.md "Timeouts and connection caps").

The attacks first: a flood of TCP connections that never send a byte, a request head sent a
byte at a time (slowloris), a WebSocket peer that stops answering pings, a voice session that
says nothing, and one address or one user opening more sessions than allowed. The flood runs
against a real `tutor serve` (uvicorn's options as the command sets them), counting the
server's own file descriptors; the others against the in-process server, which takes the same
options (`uvicorn_options`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time

import pytest
import websockets

from server.connections import SessionSlots
from tests.conftest import make_settings
from tests.processes import ServerProcess, refused, server_env, wait_for
from tests.realtime_client import Conversation, core_session, sent

TOO_MANY = 4429


def sockets(pid: int) -> int:
    """The process's open sockets (its other descriptors, e.g. SQLite's, come and go)."""
    folder = f"/proc/{pid}/fd"
    count = 0
    for fd in os.listdir(folder):
        try:
            count += os.readlink(f"{folder}/{fd}").startswith("socket:")
        except FileNotFoundError:  # closed between the listing and the look
            pass
    return count


async def closed_by_server(sock: socket.socket) -> bool:
    """Reads (and drops) what the server sends until it closes: True once it has."""
    loop = asyncio.get_running_loop()
    try:
        while await loop.sock_recv(sock, 65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return True


async def raw_connection(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, address)
    return sock


async def test_a_flood_of_silent_connections_and_a_slowloris_are_closed(fake, tmp_path) -> None:
    cap, timeout = 20, 1.0
    # the loopback is trusted for X-Forwarded-For by default, and so not capped: trust another
    # (documentation-range) address, so that this client counts as one address
    env = server_env(fake, tmp_path, TUTOR_HTTP_HEAD_TIMEOUT_S=str(timeout),
                     TUTOR_HTTP_MAX_CONNECTIONS_PER_ADDRESS=str(cap),
                     FORWARDED_ALLOW_IPS="192.0.2.1")
    server = ServerProcess("limits", env, tmp_path)
    try:
        await server.ready(time.monotonic() + 30)
        address = ("127.0.0.1", server.port)
        baseline = sockets(server.proc.pid)
        opened = time.monotonic()
        flood = [await raw_connection(address) for _ in range(cap + 10)]

        async def closed_after(sock: socket.socket) -> float:
            await closed_by_server(sock)
            return time.monotonic() - opened

        closed = await asyncio.wait_for(asyncio.gather(*map(closed_after, flood)), 10)
        held, over = closed[:cap], closed[cap:]
        # past the cap: closed at once; within it: held until the head deadline, then closed
        assert max(over) < timeout * 0.9 <= min(held), (over, held)
        for sock in flood:
            sock.close()
        await wait_for(lambda: _async(sockets(server.proc.pid) <= baseline),
                       "the server to give back its descriptors", 2)

        # slowloris: a head that keeps coming, a byte at a time, never completes
        sock = await raw_connection(address)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for byte in head:
                await loop.sock_sendall(sock, bytes([byte]))
                await asyncio.sleep(0.01)
        assert time.monotonic() - started < timeout + 1.5
        sock.close()

        # a complete request is answered as ever, and a kept-alive connection's next head has
        # the same deadline
        sock = await raw_connection(address)
        await loop.sock_sendall(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await loop.sock_recv(sock, 4096)).startswith(b"HTTP/1.1 200")
        await loop.sock_sendall(sock, b"GET /hea")
        assert await asyncio.wait_for(closed_by_server(sock), timeout + 1.5)
        sock.close()
    finally:
        await server.stop()


async def _async(value):  # type: ignore[no-untyped-def]
    return value


async def test_an_idle_session_ends_with_idle_timeout(fake, start_server) -> None:
    server = await start_server(make_settings(fake, session_idle_timeout_s=0.4))
    url = f"ws://{server}/v1/realtime"
    async with websockets.connect(url) as talker, websockets.connect(url) as idle:
        chatty, quiet = Conversation(talker), Conversation(idle)
        await chatty.until("session.created")
        await quiet.until("session.created")
        opened = time.monotonic()
        for _ in range(8):  # 0.8 s of a message every 0.1 s: never idle
            await talker.send(json.dumps({"type": "input_audio_buffer.clear"}))
            await asyncio.sleep(0.1)
        error = await quiet.until("error", timeout=2)
        assert error["error"]["code"] == "idle_timeout", error
        with pytest.raises(websockets.ConnectionClosed) as info:
            await quiet.next()
        assert info.value.rcvd.code == 4408 and info.value.rcvd.reason == "idle_timeout"
        assert time.monotonic() - opened >= 0.3
        await chatty.sync()  # the talking one is still open
        assert "error" not in chatty.types()


async def test_a_peer_that_stops_answering_pings_is_dropped(fake, start_server) -> None:
    server = await start_server(make_settings(fake, ws_ping_interval_s=0.2, ws_ping_timeout_s=0.2,
                                              session_idle_timeout_s=None))
    host, port = server.split(":")
    sock = await raw_connection((host, int(port)))
    key = base64.b64encode(os.urandom(16))
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                            b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert (await loop.sock_recv(sock, 4096)).startswith(b"HTTP/1.1 101")
    started = time.monotonic()  # and from now on, never a pong
    assert await asyncio.wait_for(closed_by_server(sock), 3)
    assert time.monotonic() - started >= 0.3
    sock.close()
    app = start_server.apps[0]
    await wait_for(lambda: _async(not app.state.services.runners), "the session to end")
    assert not app.state.services.slots.addresses and not app.state.services.slots.users


async def test_sessions_past_the_address_cap_are_refused_until_one_closes(fake, start_server
                                                                         ) -> None:
    server = await start_server(make_settings(fake, max_sessions_per_address=2,
                                              max_sessions_per_user=None))
    url = f"ws://{server}/v1/realtime"
    first, second = await websockets.connect(url), await websockets.connect(url)
    try:
        await Conversation(second).until("session.created")
        event, code = await refused(url, {})
        assert (event["type"], event["error"]["code"], code) == \
            ("error", "too_many_connections", TOO_MANY), event
        # the address is the one uvicorn trusts: X-Forwarded-For from the (trusted) loopback
        other = await websockets.connect(url, additional_headers={"X-Forwarded-For": "192.0.2.7"})
        assert (await Conversation(other).next())["type"] == "session.created"
        await other.close()
        await first.close()
        app = start_server.apps[0]
        await wait_for(lambda: _async(app.state.services.slots.addresses["127.0.0.1"] == 1),
                       "the closed session's slot")
        async with websockets.connect(url) as third:
            assert (await Conversation(third).next())["type"] == "session.created"
    finally:
        await first.close()
        await second.close()


async def test_sessions_past_the_user_cap_are_refused_until_one_closes(fake, start_server
                                                                      ) -> None:
    # the dev guest is one user on the unlimited plan: only the server's own cap applies
    server = await start_server(make_settings(fake, max_sessions_per_user=2))
    url = f"ws://{server}/v1/realtime"
    async with websockets.connect(url) as first:
        async with websockets.connect(url, additional_headers={"X-Forwarded-For": "192.0.2.8"}):
            await Conversation(first).until("session.created")
            event, code = await refused(url, {"X-Forwarded-For": "192.0.2.9"})
            assert (event["error"]["code"], code) == ("too_many_sessions", TOO_MANY), event
        app = start_server.apps[0]
        await wait_for(lambda: _async(sum(app.state.services.slots.users.values()) == 1),
                       "the closed session's slot")
        async with websockets.connect(url) as again:
            assert (await Conversation(again).next())["type"] == "session.created"
    await wait_for(lambda: _async(not app.state.services.slots.users and not app.state.services.slots.addresses),
                   "every slot given back")


def test_session_slots_count_and_give_back() -> None:
    slots = SessionSlots(per_address=2, per_user=1)
    assert slots.take_address("a") is None and slots.take_address("a") is None
    assert slots.take_address("a").code == "too_many_connections"  # type: ignore[union-attr]
    assert slots.take_address("b") is None
    assert slots.take_user("u") is None
    assert slots.take_user("u").code == "too_many_sessions"  # type: ignore[union-attr]
    slots.release_address("a")
    assert slots.take_address("a") is None
    for who in ("a", "a", "b"):
        slots.release_address(who)
    slots.release_user("u")
    assert not slots.addresses and not slots.users  # nothing kept for those that went
    assert SessionSlots(None, None).take_address("a") is None


def test_the_core_ends_an_idle_session_after_the_answer_in_progress() -> None:
    s = core_session(idle_timeout_s=10.0)
    s.open(now=100.0)
    assert s.idle_deadline() == 110.0 and s.check_idle(109.9) == []
    s.receive_text(json.dumps({"type": "input_audio_buffer.clear"}), 105.0)
    assert s.idle_deadline() == 115.0 and s.check_idle(110.0) == []
    # an answer under way when the deadline passes is finished first
    actions = s.receive_text(json.dumps({"type": "response.create"}), 106.0)
    rid = next(e for e in sent(actions) if e["type"] == "response.created")["response"]["id"]
    assert s.check_idle(116.0) == [] and s.idle_deadline() is None  # closing
    done = s.response_completed(rid)
    errors = [e for e in sent(done) if e["type"] == "error"]
    assert [e["error"]["code"] for e in errors] == ["idle_timeout"]
    assert done[-1].code == 4408 and done[-1].reason == "idle_timeout"
    assert core_session().idle_deadline() is None  # no timeout configured
