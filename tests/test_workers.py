"""`tutor serve --workers 2` on one port, against the test PostgreSQL and Redis: real processes.

- both workers answer (each HTTP connection and each voice socket lands on one of them, spread
  by the kernel: SO_REUSEPORT), and /healthz says which one answered;
- one scrape of /metrics, whichever worker answers, counts the sessions of both;
- each worker has its own spool file;
- SIGTERM to the parent drains every worker as a single process does: the answer in progress
  finishes, every session gets `server_shutting_down` and close 1012, and every process is gone;
- without Redis, `--workers 2` is refused with a message saying why;
- the spool files of workers a smaller server no longer starts are moved into worker 0's.

One server start for the first four. Under CI=true an unreachable PostgreSQL or Redis fails
these tests (tests.services).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from server.workers import usable_cpus, worker_count
from store.spool import adopt_orphans, base_spool, connect, worker_spool, worker_spools
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.processes import ServerProcess, server_env, wait_for
from tests.realtime_client import Conversation
from tests.services import redis_client, redis_url  # noqa: F401  (a fixture)
from tests.storage_fixtures import blank_database

SESSIONS = 16  # sockets spread over 2 workers: all on one has odds of 2 in 65 536


def metric(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} is missing from /metrics")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def health_by_pid(url: str, tries: int = 40) -> dict[int, int]:
    """/healthz on a new connection each time: {pid: its open voice sessions}."""
    seen: dict[int, int] = {}
    for _ in range(tries):
        async with httpx.AsyncClient() as client:  # a new connection: the kernel picks again
            health = (await client.get(f"{url}/healthz")).json()
        seen[health["pid"]] = health["sessions"]
    return seen


async def test_two_workers_share_the_port_the_metrics_and_the_drain(tmp_path: Path, redis_client):  # noqa: F811
    async with FakeOpenAI(Behaviour(token_delay=0.05, reply="one two three four five six "
                                    "seven eight nine ten eleven twelve")) as fake, \
            blank_database("postgresql", tmp_path) as db_url:
        env = server_env(fake, tmp_path, TUTOR_DATABASE_URL=db_url, TUTOR_REDIS_URL=redis_url(),
                         TUTOR_GUEST_TIER="unlimited", TUTOR_SHUTDOWN_DRAIN_S="10",
                         TUTOR_OUTPUT_MODALITIES="text")  # migrations: once, by the parent
        server = ServerProcess("workers", env, tmp_path, args=("--workers", "2"))
        try:
            await server.ready(asyncio.get_running_loop().time() + 60)

            workers = await health_by_pid(server.http_url)
            assert len(workers) == 2 and server.proc.pid not in workers, workers
            assert set(workers.values()) == {0}

            async with AsyncExitStack() as stack:
                convs = []
                for _ in range(SESSIONS):
                    ws = await stack.enter_async_context(
                        websockets.connect(f"{server.ws_url}/v1/realtime"))
                    conv = Conversation(ws)
                    await conv.until("session.created")
                    convs.append(conv)

                async def both_hold_sessions() -> dict[int, int] | None:
                    seen = await health_by_pid(server.http_url, 20)
                    return seen if len(seen) == 2 and sum(seen.values()) == SESSIONS else None
                per_worker = await wait_for(both_hold_sessions, "both workers' sessions", 10)
                assert set(per_worker) == set(workers)
                assert all(n > 0 for n in per_worker.values()), per_worker

                for _ in range(4):  # whichever worker answers the scrape
                    async with httpx.AsyncClient() as client:
                        text = (await client.get(f"{server.http_url}/metrics")).text
                    assert metric(text, "tutor_sessions_connected") == SESSIONS
                    assert metric(text, "tutor_sessions_total") == SESSIONS
                    assert metric(text, "tutor_spool_pending") == 0
                    assert metric(text, "process_resident_memory_bytes") > 0
                data = tmp_path / "data"
                assert (data / "spool.db").exists() and (data / "spool.worker1.db").exists()

                asking = convs[0]
                await asking.ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": "count to twelve"}]}}))
                await asking.ws.send(json.dumps({"type": "response.create"}))
                await asking.until("response.output_text.delta")
                server.proc.send_signal(signal.SIGTERM)  # to the parent only, mid-answer

                async def closed(conv: Conversation) -> None:
                    with pytest.raises(websockets.ConnectionClosed):
                        while True:
                            await conv.next(timeout=15)
                await asyncio.gather(*(closed(c) for c in convs))
            exit_code = await asyncio.to_thread(server.proc.wait, 15)
        finally:
            await server.stop()
            print(server.log())
    assert exit_code == 0
    assert [d["response"]["status"] for d in asking.of("response.done")] == ["completed"]
    for conv in convs:
        assert conv.events[-1]["type"] == "error", conv.types()
        assert conv.events[-1]["error"]["code"] == "server_shutting_down"
        assert conv.ws.close_code == 1012
    assert not any(alive(pid) for pid in workers)


def test_two_workers_without_redis_are_refused(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_", "TUTOR_"))}
    env.update(TUTOR_DATA_DIR=str(tmp_path / "data"))
    tutor = os.path.join(os.path.dirname(sys.executable), "tutor")
    done = subprocess.run([tutor, "serve", "--workers", "2", "--port", "0"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert "--workers 2 needs" in done.stderr and "TUTOR_REDIS_URL" in done.stderr
    assert "TUTOR_DATABASE_URL" in done.stderr  # SQLite too
    assert not (tmp_path / "data").exists()  # refused before anything was touched


def test_worker_count():
    assert worker_count("auto") == usable_cpus() == len(os.sched_getaffinity(0))
    assert worker_count("3") == 3 and worker_count(1) == 1
    for bad in ("0", "-2", "many"):
        with pytest.raises(ValueError):
            worker_count(bad)


def test_spools_of_workers_no_longer_started_move_to_worker_0(tmp_path: Path):
    path = tmp_path / "spool.db"
    for index in (1, 2, 3):
        with connect(worker_spool(path, index)) as conn:
            conn.execute("INSERT INTO pending VALUES (?, 'interactions', '{}', 1)",
                         (f"w{index}",))
            conn.execute("INSERT INTO dead_letters VALUES (?, 'usage', '{}', 'refused', 2)",
                         (f"d{index}",))
    assert worker_spools(path) == [path] + [tmp_path / f"spool.worker{i}.db" for i in (1, 2, 3)]
    assert base_spool(worker_spool(path, 3)) == path and base_spool(path) == path

    assert adopt_orphans(path, 2) == 4  # workers 2 and 3: two rows each
    assert worker_spools(path) == [path, tmp_path / "spool.worker1.db"]
    with sqlite3.connect(path) as conn:
        assert sorted(k for k, in conn.execute("SELECT write_id FROM pending")) == ["w2", "w3"]
        assert sorted(k for k, in conn.execute("SELECT write_id FROM dead_letters")) == [
            "d2", "d3"]
    assert adopt_orphans(path, 1) == 2 and worker_spools(path) == [path]
    assert not list(tmp_path.glob("spool.worker*"))
