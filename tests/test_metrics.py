"""`/metrics` (Prometheus text format, parsed back with prometheus-client's own parser) after
real voice turns, and `/readyz` checking the database, its migrations and Redis."""

from __future__ import annotations

import httpx
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_settings, read_pcm
from tests.realtime_client import Conversation, session_update
from tests.services import TcpProxy, redis_client  # noqa: F401  (a fixture)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_after_voice_turns_and_an_error(fake, start_server):
    address = await start_server(make_settings(fake))
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.stream(read_pcm("q_war.wav"), 16000)
        await ws.send("not json")
        await conv.until("error")
        async with httpx.AsyncClient() as client:
            live = samples((await client.get(f"http://{address}/metrics")).text)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{address}/metrics")
    after = samples(response.text)
    assert response.headers["content-type"].startswith("text/plain")
    assert live[("tutor_sessions_connected", ())] == 1
    assert after[("tutor_sessions_total", ())] == 1
    assert after[("tutor_turns_total", (("kind", "voice"), ("status", "completed")))] == 1
    assert after[("tutor_errors_total", (("code", "invalid_json"),))] == 1
    for stage in ("transcription", "first_token", "end_of_speech_to_first_delta", "server_own"):
        assert after[("tutor_stage_seconds_count", (("stage", stage),))] == 1
    assert 0 < after[("tutor_stage_seconds_sum", (("stage", "end_of_speech_to_first_delta"),))] < 5
    # the process's own memory and descriptors, so that growth of either shows (issue 15)
    assert after[("process_resident_memory_bytes", ())] > 10 * 2**20
    assert after[("process_open_fds", ())] > 3


async def test_the_email_outbox_backlog_is_exported(fake, start_server):
    from store import queries

    address = await start_server(make_settings(fake, email_worker=False))
    app = start_server.apps[-1]
    async with app.state.services.db.session() as s, s.begin():
        for i in range(3):
            await queries.enqueue_email(s, recipient=f"s{i}@example.com", template="welcome",
                                        payload={"name": "S"}, transactional=True)
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://{address}/metrics")).text
    assert samples(text)[("tutor_email_outbox", (("status", "pending"),))] == 3
    assert samples(text)[("tutor_quota_store_failures_total", ())] == 0


async def test_readyz_checks_database_migrations_and_redis(fake, start_server, redis_client):  # noqa: F811
    proxy = TcpProxy("127.0.0.1", 6379)
    await proxy.start()
    address = await start_server(make_settings(fake, redis_url=f"redis://127.0.0.1:{proxy.port}/15"))
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "migrations": "ok", "redis": "ok"}
        proxy.cut()
        down = await client.get("/readyz")
        assert (await client.get("/healthz")).status_code == 200  # liveness stays cheap
    assert down.status_code == 503 and down.json()["checks"]["redis"].startswith("unreachable")


async def test_readyz_is_unready_behind_head_and_ready_ahead_of_it(fake, start_server):
    """Behind this code's head (a migration not applied) is not ready; a revision this code
    does not know is a newer release's, migrated ahead during a rolling deploy: still ready."""
    from sqlalchemy import text

    address = await start_server(make_settings(fake))
    db = start_server.apps[-1].state.services.db
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        for revision, status in (("0001", 503), ("9999_from_a_newer_release", 200)):
            async with db.session() as s, s.begin():
                if revision == "0001":
                    revision = _first_revision()
                await s.execute(text("UPDATE alembic_version SET version_num = :r"),
                                {"r": revision})
            ready = await client.get("/readyz")
            assert ready.status_code == status, ready.json()
            assert (ready.json()["checks"]["migrations"] == "ok") == (status == 200)


def _first_revision() -> str:
    from alembic.script import ScriptDirectory

    from store.db import alembic_config
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_base()


async def test_provider_failures_are_counted_by_provider_and_code(fake, start_server):
    fake.behaviour.stt_failures = ["500"]
    fake.behaviour.chat_failures = ["500"]
    address = await start_server(make_settings(fake))
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.stream(read_pcm("q_war.wav"), 16000, polite=False)
        failed = await conv.until("conversation.item.input_audio_transcription.failed")
    assert failed["error"]["code"] == "provider_error"
    async with httpx.AsyncClient() as client:
        r = await client.post(f"http://{address}/api/ai/chat", json={"message": "2+2?"})
        assert "event: error" in r.text
        after = samples((await client.get(f"http://{address}/metrics")).text)
    assert after[("tutor_provider_failures_total",
                  (("code", "provider_error"), ("provider", "stt")))] == 1
    assert after[("tutor_provider_failures_total",
                  (("code", "provider_error"), ("provider", "llm")))] == 1
