"""SIGTERM drains `tutor serve`: the answer in progress finishes, the session then gets an
`error` `server_shutting_down` and close 1012 (reconnect elsewhere), new sessions and /readyz
are refused meanwhile, and the process exits 0. A real process, a real signal."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets

from tests.fake_openai import Behaviour, FakeOpenAI
from tests.processes import free_port
from tests.realtime_client import Conversation

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def slow_fake():
    async with FakeOpenAI(Behaviour(token_delay=0.05,
                                    reply="one two three four five six seven eight nine ten "
                                          "eleven twelve thirteen fourteen fifteen")) as fake:
        yield fake


async def test_sigterm_lets_the_answer_finish_then_closes_with_1012(slow_fake, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_", "TUTOR_"))}
    env.update(OPENAI_API_KEY="k", OPENAI_BASE_URL=slow_fake.base_url,
               TUTOR_DATA_DIR=str(tmp_path), TUTOR_LOAD_SAMPLE_COURSE="false",
               TUTOR_GUEST_TIER="unlimited", TUTOR_SHUTDOWN_DRAIN_S="10",
               TUTOR_OUTPUT_MODALITIES="text")
    tutor = os.path.join(os.path.dirname(sys.executable), "tutor")
    proc = subprocess.Popen([tutor, "serve", "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(200):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
                    await asyncio.sleep(0.1)
            async with websockets.connect(f"ws://127.0.0.1:{port}/api/voice") as ws:
                conv = Conversation(ws)
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": "count to fifteen"}]}}))
                await ws.send(json.dumps({"type": "response.create"}))
                await conv.until("response.output_text.delta")
                proc.send_signal(signal.SIGTERM)  # mid-answer
                await asyncio.sleep(0.2)
                ready = await client.get("/readyz")
                async with websockets.connect(f"ws://127.0.0.1:{port}/api/voice") as late:
                    refusal = json.loads(await late.recv())
                    with pytest.raises(websockets.ConnectionClosed):
                        await late.recv()
                    assert late.close_code == 1012
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        await conv.next()
                assert ws.close_code == 1012
        exit_code = await asyncio.to_thread(proc.wait, 15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = conv.of("response.done")
    assert [d["response"]["status"] for d in done] == ["completed"]  # the answer was finished
    assert conv.of("response.output_text.done")[0]["text"].endswith("fifteen")
    assert conv.events[-1]["type"] == "error"
    assert conv.events[-1]["error"]["code"] == "server_shutting_down"
    assert refusal["error"]["code"] == "server_shutting_down"
    assert ready.status_code == 503 and "draining" in ready.json()["checks"]
    assert exit_code == 0


async def test_logs_are_json_lines_with_session_ids_and_no_transcripts(slow_fake, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_", "TUTOR_"))}
    env.update(OPENAI_API_KEY="k", OPENAI_BASE_URL=slow_fake.base_url, TUTOR_LOG_FORMAT="json",
               TUTOR_DATA_DIR=str(tmp_path), TUTOR_LOAD_SAMPLE_COURSE="false",
               TUTOR_GUEST_TIER="unlimited")
    slow_fake.behaviour.token_delay = 0
    tutor = os.path.join(os.path.dirname(sys.executable), "tutor")
    proc = subprocess.Popen([tutor, "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    secret_question = "my private question about zebras"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        async with websockets.connect(f"ws://127.0.0.1:{port}/api/voice") as ws:
            conv = Conversation(ws)
            session_id = (await conv.until("session.created"))["session"]["id"]
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": secret_question}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            await conv.until("response.done")
        await asyncio.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        output = (await asyncio.to_thread(proc.communicate, timeout=15))[0].decode()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert lines and all({"event", "level", "timestamp", "logger"} <= set(r) for r in lines)
    turn = next(r for r in lines if r["event"] == "turn finished")
    assert turn["session_id"] == session_id and turn["status"] == "completed"
    assert turn["kind"] == "text" and "llm_first_token_ms" in turn
    assert any(r["event"] == "session opened" and r["session_id"] == session_id for r in lines)
    assert "zebras" not in output  # never the student's words
