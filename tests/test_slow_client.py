"""A client that never reads cannot grow the server: its session's unsent events are bounded
by `TUTOR_WS_OUTBOX_MAX_BYTES`, past which the session ends (`slow_consumer`, close 1008)."""

from __future__ import annotations

import asyncio
import json
import time

import websockets

from tests.conftest import make_settings

BIG = "x" * 100_000  # a 100 KB typed message: each is echoed in conversation.item.added/.done


async def test_a_client_that_never_reads_is_closed_and_its_backlog_freed(fake, start_server):
    address = await start_server(make_settings(fake, ws_outbox_max_bytes=2 * 1024 * 1024))
    app = start_server.apps[-1]
    item = json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": BIG}]}})
    # max_queue=1: the client library stops reading the socket after one message
    async with websockets.connect(f"ws://{address}/v1/realtime", max_queue=1,
                                  write_limit=2**24) as ws:
        deadline = time.monotonic() + 20
        sent = 0
        while not app.state.services.runners and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        [runner] = list(app.state.services.runners)
        while time.monotonic() < deadline and runner in app.state.services.runners:
            try:
                await asyncio.wait_for(ws.send(item), 1)
            except (websockets.ConnectionClosed, asyncio.TimeoutError):
                break
            sent += 1
            assert runner.queued_bytes <= 2 * 1024 * 1024 + 300_000  # never far past the budget
            await asyncio.sleep(0.005)
        # the server gave up on this client: the session is gone, its backlog with it
        while time.monotonic() < deadline and runner in app.state.services.runners:
            await asyncio.sleep(0.05)
        assert runner not in app.state.services.runners, f"still open after {sent} messages"
        assert runner.queued_bytes == 0 and runner.outbox.qsize() <= 2  # the refusal and the close
    assert sent > 20  # it took far more than the budget's worth to get there
    assert app.state.services.metrics.errors.labels("slow_consumer")._value.get() == 1
