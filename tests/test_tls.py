"""TLS without a proxy: `tutor serve --ssl-certfile F --ssl-keyfile F` (or TUTOR_SSL_CERTFILE /
TUTOR_SSL_KEYFILE) serves https:// and wss:// with uvicorn's own TLS.

A self-signed certificate for 127.0.0.1/localhost is made per test (tests/processes.py); the
clients trust exactly that certificate, so a handshake that succeeds is a real TLS one.
"""

from __future__ import annotations

import json
import ssl
import time

import httpx
import pytest
import websockets

from tests.conftest import make_settings
from tests.processes import ServerProcess, self_signed_cert, server_env

OPENAI_DEFAULT = {"Authorization": "Bearer sk-anything"}  # what any client sends from OPENAI_API_KEY


async def first_event(url: str, context: ssl.SSLContext) -> dict:
    async with websockets.connect(url, ssl=context, additional_headers=OPENAI_DEFAULT) as ws:
        return json.loads(await ws.recv())


async def test_tutor_serve_with_a_certificate_answers_wss_and_https(fake, tmp_path) -> None:
    cert, key = self_signed_cert(tmp_path)
    server = ServerProcess("tls", server_env(fake, tmp_path), tmp_path, tls=(cert, key))
    try:
        await server.ready(time.monotonic() + 30)
        context = server.ssl_context()
        async with httpx.AsyncClient(verify=context) as client:
            health = await client.get(f"{server.http_url}/healthz")
        assert health.json() | {"pid": 0, "sessions": 0} == {
            "status": "ok", "transcription": True, "chat": True, "moderation": False,
            "turn_model": "smart-turn-v3.2", "pid": 0, "sessions": 0}

        event = await first_event(f"{server.ws_url}/v1/realtime?model=tutor", context)
        assert event["type"] == "session.created", event

        # it is TLS that answered: a client that does not trust the certificate is turned
        # away by its own check, and plain HTTP gets no answer from the port
        with pytest.raises(ssl.SSLCertVerificationError):
            await first_event(f"{server.ws_url}/v1/realtime", ssl.create_default_context())
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.TransportError):
                await client.get(f"http://{server.address}/healthz", timeout=3)
    finally:
        await server.stop()
        print(f"--- {server.name} (exit {server.proc.returncode}) ---\n{server.log()}")
    assert "https://127.0.0.1" in server.log_path.read_text()  # uvicorn says where it listens


async def test_the_certificate_settings_reach_uvicorn(fake, start_server, tmp_path) -> None:
    """TUTOR_SSL_CERTFILE / TUTOR_SSL_KEYFILE, through `uvicorn_options` as `tutor serve` uses it."""
    cert, key = self_signed_cert(tmp_path)
    address = await start_server(make_settings(fake, ssl_certfile=cert, ssl_keyfile=key))
    context = ssl.create_default_context(cafile=str(cert))
    event = await first_event(f"wss://{address}/api/voice", context)
    assert event["type"] == "session.created", event
    async with httpx.AsyncClient(verify=context) as client:
        assert (await client.get(f"https://{address}/healthz")).json()["status"] == "ok"
