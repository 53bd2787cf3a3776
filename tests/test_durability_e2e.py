"""Turns are recorded off the hot path: a database outage in the middle of a voice session
neither stalls the conversation nor loses a turn (PostgreSQL cut at the network level); and an
answered turn survives the process being killed (SIGKILL, a real `tutor serve`), right after
`response.done` or in the middle of a database outage: the write-ahead spool (store/spool.py) is
replayed at the next start, and each turn is stored exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import websockets
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from store.db import Database, migrate
from store.models import Interaction
from tests.conftest import make_settings, read_pcm
from tests.processes import ServerProcess, wait_for
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
        writer = app.state.services.writer
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
        async with app.state.services.db.session() as s:
            rows = (await s.execute(select(Interaction).order_by(Interaction.id))).scalars().all()
        transcripts = [t["transcript"] for t in
                       conv.of("conversation.item.input_audio_transcription.completed")]
        assert [r.transcript for r in rows] == transcripts
        assert [r.answer for r in rows] == [d["text"] for d in conv.of("response.output_text.done")]
        assert writer.dropped == 0
        await app.state.services.db.close()  # before the database is dropped
        proxy.cut()


async def test_response_done_leaves_only_once_its_turn_is_on_disk(fake, start_server):
    """The spool's disk made slow (300 ms before each row's commit): `response.done` waits for
    it, so a client that has `response.done` has a turn that a crash cannot take away."""
    address = await start_server(make_settings(fake))
    spool = start_server.apps[-1].state.services.spool
    on_disk: list[str] = []
    put = spool.put

    def slow_put(table: str, write_id: str, row: dict) -> None:  # type: ignore[type-arg]
        spool._ops.put((lambda c: time.sleep(0.3), None))  # the spool's thread, not the loop
        put(table, write_id, row)
        spool._ops.put((lambda c: on_disk.append(row["response_id"]), None))

    spool.put = slow_put
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        started = time.perf_counter()
        rid = await ask(conv, "what is two plus two?")
        assert on_disk == [rid], "response.done came before its turn was on disk"
        assert time.perf_counter() - started >= 0.3
        await ws.send(json.dumps({"type": "response.create", "response": {
            "conversation": "none", "input": [{"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "out of band"}]}]}}))
        await conv.until("response.done")


def serve_env(fake, database_url: str, data_dir: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "LLM_", "TUTOR_", "STRIPE_"))}
    env.update(OPENAI_API_KEY="k", OPENAI_BASE_URL=fake.base_url, TUTOR_DATABASE_URL=database_url,
               TUTOR_AUTO_MIGRATE="false", TUTOR_DATA_DIR=str(data_dir),
               TUTOR_LOAD_SAMPLE_COURSE="false", TUTOR_GUEST_TIER="unlimited",
               TUTOR_OUTPUT_MODALITIES="text")
    return env


async def ask(conv: Conversation, question: str) -> str:
    """A typed turn; its response id once `response.done` has arrived."""
    await conv.ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": question}]}}))
    await conv.ws.send(json.dumps({"type": "response.create"}))
    done = await conv.until("response.done")
    assert done["response"]["status"] == "completed"
    return done["response"]["id"]


async def stored(db: Database, response_ids: list[str]) -> dict[str, int]:
    async with db.session() as s:
        rows = await s.execute(select(Interaction.response_id, func.count())
                               .where(Interaction.response_id.in_(response_ids))
                               .group_by(Interaction.response_id))
        return {rid: n for rid, n in rows}


def killed(server: ServerProcess) -> None:
    server.proc.kill()  # SIGKILL: no drain, no flush, nothing runs
    server.proc.wait()


async def restarted(name: str, env: dict[str, str], tmp_path: Path) -> ServerProcess:
    server = ServerProcess(name, env, tmp_path)
    await server.ready(time.monotonic() + 20)
    return server


async def test_sigkill_right_after_response_done_or_mid_outage_loses_no_turn(fake, tmp_path):
    """Three lives of one server (one spool): killed the moment an answer is complete; then
    killed after three turns answered while PostgreSQL was cut; each restart replays the spool,
    and every turn is stored exactly once."""
    async with blank_database("postgresql", tmp_path) as url:
        await asyncio.to_thread(migrate, url)
        db = Database(url)
        real = make_url(url)
        proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432)
        await proxy.start()
        via_proxy = real.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False)
        env = serve_env(fake, via_proxy, tmp_path / "data")
        server = ServerProcess("first", env, tmp_path)
        try:
            await server.ready(time.monotonic() + 30)
            async with websockets.connect(f"{server.ws_url}/api/voice") as ws:
                last = await ask(Conversation(ws), "what is two plus two?")
                killed(server)  # the moment the answer is complete
            before = await stored(db, [last])
            assert (os.stat(tmp_path / "data" / "spool.db").st_mode & 0o777) == 0o600

            server = await restarted("second", env, tmp_path)
            await wait_for(lambda: stored(db, [last]), "the replayed turn")
            async with websockets.connect(f"{server.ws_url}/api/voice") as ws:
                conv = Conversation(ws)
                written = await ask(conv, "first question")
                await wait_for(lambda: stored(db, [written]), "a turn written before the cut")
                proxy.cut()  # PostgreSQL is gone; the student keeps asking
                during = [await ask(conv, f"question {i} during the outage") for i in range(3)]
                killed(server)
            assert await stored(db, during) == {}  # so only the spool can bring them back
            await proxy.restore()

            server = await restarted("third", env, tmp_path)
            everything = [last, written, *during]
            await wait_for(lambda: _all(db, everything), "the replayed turns")
            await asyncio.sleep(0.2)  # a duplicate would have landed by now
            assert await stored(db, everything) == {rid: 1 for rid in everything}, \
                f"the first turn before the first restart: {before}"
        finally:
            await server.stop()
            await db.close()
            proxy.cut()


async def _all(db: Database, response_ids: list[str]) -> bool:
    return len(await stored(db, response_ids)) == len(response_ids)
