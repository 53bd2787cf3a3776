"""Turns are recorded off the hot path: a database outage in the middle of a voice session
neither stalls the conversation nor loses a turn (PostgreSQL cut at the network level)."""

from __future__ import annotations

import asyncio

import websockets
from sqlalchemy import select
from sqlalchemy.engine import make_url

from store.models import Interaction
from tests.conftest import make_settings, read_pcm
from tests.realtime_client import Conversation, session_update
from tests.services import TcpProxy
from tests.storage_fixtures import blank_database


async def test_a_database_outage_mid_session_loses_no_turn(fake, start_server, tmp_path):
    async with blank_database("postgresql", tmp_path) as url:
        real = make_url(url)
        proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432)
        await proxy.start()
        via_proxy = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        address = await start_server(make_settings(fake, database_url=via_proxy))
        app = start_server.apps[-1]
        writer = app.state.writer
        async with websockets.connect(f"ws://{address}/api/voice") as ws:
            conv = Conversation(ws)
            await ws.send(session_update(16000))
            await conv.stream(read_pcm("q_war.wav"), 16000)
            assert await writer.flush(5) and writer.written == 1

            proxy.cut()  # the database is gone; the student keeps talking
            await conv.stream(read_pcm("q_french.wav"), 16000)
            await conv.stream(read_pcm("q_fractions.wav"), 16000)
            assert [d["response"]["status"] for d in conv.of("response.done")] == ["completed"] * 3
            while writer.failures == 0:
                await asyncio.sleep(0.02)
            assert writer.pending == 2 and not await writer.flush(0.3)

            await proxy.restore()
            assert await writer.flush(10)
        async with app.state.db.session() as s:
            rows = (await s.execute(select(Interaction).order_by(Interaction.id))).scalars().all()
        transcripts = [t["transcript"] for t in
                       conv.of("conversation.item.input_audio_transcription.completed")]
        assert [r.transcript for r in rows] == transcripts
        assert [r.answer for r in rows] == [d["text"] for d in conv.of("response.output_text.done")]
        assert writer.dropped == 0
        await app.state.db.close()  # before the database is dropped
        proxy.cut()
