"""REST side of the core: health, and the typed chat route streaming Server-Sent Events."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT, make_settings
from tests.realtime_client import sse_events



async def test_healthz_reports_providers(server):
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://{server}/healthz")
    health = r.json()
    assert health.pop("pid") > 0 and health.pop("sessions") == 0
    assert health == {"status": "ok", "transcription": True, "chat": True, "moderation": False,
                      "turn_model": "smart-turn-v3.2"}


async def test_chat_streams_deltas_then_done(server, fake):
    fake.behaviour.reply = "Think about halves first."
    async with httpx.AsyncClient() as client:
        async with client.stream("POST", f"http://{server}/api/ai/chat", json={
            "message": "What is 1/2 + 1/4?",
            "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        }) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            body = "".join([chunk async for chunk in r.aiter_text()])
    events = sse_events(body)
    assert [e for e, _ in events] == ["citations"] + ["delta"] * 4 + ["done"]
    assert "".join(d["delta"] for e, d in events if e == "delta") == "Think about halves first."
    assert events[-1][1] == {"text": "Think about halves first."}
    sent = fake.chats[-1]["messages"]
    assert sent[0]["role"] == "system" and "tutor" in sent[0]["content"]
    assert [m["content"] for m in sent[1:]] == ["hi", "hello", "What is 1/2 + 1/4?"]


async def test_chat_reports_a_provider_failure_mid_stream(server, fake):
    fake.behaviour.chat_failures = ["cut"]
    async with httpx.AsyncClient() as client:
        r = await client.post(f"http://{server}/api/ai/chat", json={"message": "hi"})
    events = sse_events(r.text)
    assert events[-1] == ("error", {"code": "provider_stream_interrupted",
                                    "message": events[-1][1]["message"]})


@pytest.mark.parametrize("body", [{}, {"message": ""}, {"message": "x", "history": "nope"},
                                  {"message": "x", "history": [{"role": "system", "content": "x"}]}])
async def test_chat_rejects_bad_requests(server, body):
    async with httpx.AsyncClient() as client:
        r = await client.post(f"http://{server}/api/ai/chat", json=body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"


async def test_chat_without_provider_says_what_to_configure(start_server):
    server = await start_server(make_settings(None))
    async with httpx.AsyncClient() as client:
        r = await client.post(f"http://{server}/api/ai/chat", json={"message": "hi"})
    assert r.status_code == 503
    assert "OPENAI_API_KEY" in r.json()["error"]["message"]


def test_tutor_serve_starts_without_any_key():
    """`tutor serve` (what `make run` runs) starts on a bare environment and answers health."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "LLM_", "TUTOR_"))}
    tutor = os.path.join(os.path.dirname(sys.executable), "tutor")
    proc = subprocess.Popen([tutor, "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        assert r.json() | {"pid": 0, "sessions": 0} == {
            "status": "ok", "transcription": False, "chat": False, "moderation": False,
            "turn_model": "smart-turn-v3.2", "pid": 0, "sessions": 0}
    finally:
        proc.terminate()
        proc.wait(10)


def test_tutor_ingest_loads_files_and_reports_refusals(tmp_path):
    """`tutor ingest PATH... --course NAME`: one line per file, exit status 1 if any is refused."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "cells.md").write_text("# Cells\n\nCells are the units of life. They divide.\n")
    (docs / "broken.md").write_bytes(b"\x00\x01\x02")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_", "TUTOR_"))}
    env["TUTOR_DATA_DIR"] = str(tmp_path / "data")
    tutor = os.path.join(os.path.dirname(sys.executable), "tutor")

    def run(*paths):
        return subprocess.run([tutor, "ingest", *map(str, paths), "--course", "biology"],
                              env=env, capture_output=True, text=True, timeout=60)

    first = run(docs)
    assert first.returncode == 1
    assert "created    cells.md: 1 chunks" in first.stdout
    assert "refused    broken.md:" in first.stdout and "(undecodable)" in first.stdout
    again = run(docs / "cells.md")
    assert again.returncode == 0 and "unchanged  cells.md: 1 chunks" in again.stdout
