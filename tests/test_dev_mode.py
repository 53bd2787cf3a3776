"""A newcomer's first run: in dev mode (loopback, no sign-in configured) any OpenAI client works
on its defaults, the guest's answers are spoken, and a server without a provider says so.

- A bearer that is not one of ours (the `sk-…` every client sends from OPENAI_API_KEY) is ignored
  in dev mode, as local OpenAI-compatible servers ignore it: the caller is the guest, over HTTP
  and on the voice socket. Ours but invalid (a revoked `tt_` token, an expired Supabase token, a
  used ticket) is still refused; outside dev mode nothing changes.
- The dev guest's plan is the one with every feature unless TUTOR_GUEST_TIER names another.
- Without a provider the server logs a WARNING at startup naming what to set.
"""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
import websockets
from openai import AsyncOpenAI

from billing.tiers import Tier, TierCatalog
from tests.conftest import make_settings
from tests.fake_oidc import FakeJWKS
from tests.processes import refused
from tests.realtime_client import Conversation

SK = {"Authorization": "Bearer sk-proj-0123456789abcdef"}  # an OpenAI key, as clients send it
QUESTION = "What is a prime number?"


def typed_question(text: str) -> list[str]:
    return [json.dumps({"type": "conversation.item.create",
                        "item": {"type": "message", "role": "user",
                                 "content": [{"type": "input_text", "text": text}]}}),
            json.dumps({"type": "response.create"})]


# -- the bearer rule ----------------------------------------------------------------------------
async def test_in_dev_mode_an_openai_key_is_the_guest_over_http_and_the_socket(fake, start_server):
    address = await start_server(make_settings(fake))
    app = start_server.apps[-1]
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        me = await http.get("/api/auth/me", headers=SK)
        assert me.status_code == 200, me.text
        assert me.json()["auth_provider"] == "guest" and me.json()["name"] == "Local guest"
        chat = await http.post("/api/ai/chat", json={"message": QUESTION}, headers=SK)
        assert chat.status_code == 200, chat.text

        async with websockets.connect(f"ws://{address}/v1/realtime?model=gpt-realtime",
                                      additional_headers=SK) as ws:
            conv = Conversation(ws)
            assert (await conv.next())["type"] == "session.created"
            for message in typed_question("Is 7 prime?"):
                await ws.send(message)
            done = await conv.until("response.done")
            assert done["response"]["status"] == "completed"
        assert await app.state.services.writer.flush(5)
        # both turns are the guest's: its history, asked for without any credential
        history = (await http.get("/api/me/interactions")).json()["items"]
    assert sorted(row["transcript"] for row in history) == ["Is 7 prime?", QUESTION]


async def test_the_openai_sdk_works_with_whatever_key_it_has(fake, start_server):
    """The README's first example, with OPENAI_API_KEY left as the user's own."""
    address = await start_server(make_settings(fake))
    client = AsyncOpenAI(api_key="sk-anything", websocket_base_url=f"ws://{address}/v1")
    async with client.realtime.connect(model="tutor") as conn:
        await conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": QUESTION}]})
        await conn.response.create()
        async for event in conn:
            assert event.type != "error", event
            if event.type == "response.done":
                assert event.response.status == "completed"
                break
    await client.close()


async def test_in_dev_mode_our_own_invalid_credentials_are_still_refused(fake, start_server):
    address = await start_server(make_settings(fake))
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        token = (await http.post("/api/auth/token", json={"name": "cli"}, headers=SK)).json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await http.get("/api/auth/me", headers=bearer)).status_code == 200
        assert (await http.post("/api/auth/logout", headers=bearer)).status_code == 204
        for headers in (bearer, {"Authorization": "Bearer tt_made-up"}):
            r = await http.get("/api/auth/me", headers=headers)
            assert r.status_code == 401, r.text
            assert r.json()["error"]["message"].startswith("invalid_token")
            event, code = await refused(f"ws://{address}/v1/realtime", headers)
            assert (event["error"]["code"], code) == ("invalid_token", 1008)
    # a ticket is ours too, whatever bearer comes with it
    event, code = await refused(f"ws://{address}/api/voice?ticket=made-up", SK)
    assert (event["error"]["code"], code) == ("invalid_ticket", 1008)


@pytest.mark.parametrize("settings", [{"host": "0.0.0.0"}, {"dev_guest": False}],
                         ids=["off-loopback", "guest-off"])
async def test_outside_dev_mode_a_foreign_bearer_is_refused_as_before(fake, start_server,
                                                                      settings):
    address = await start_server(make_settings(fake, **settings))
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        r = await http.get("/api/auth/me", headers=SK)
    assert r.status_code == 401 and r.json()["error"]["message"].startswith("invalid_token")
    event, code = await refused(f"ws://{address}/v1/realtime", SK)
    assert (event["error"]["code"], code) == ("invalid_token", 1008)


async def test_with_supabase_and_the_guest_forced_on_its_tokens_are_still_checked(fake,
                                                                                 start_server):
    async with FakeJWKS() as jwks:
        address = await start_server(make_settings(fake, supabase_url=jwks.project_url,
                                                   dev_guest=True))
        now = int(time.time())
        expired = jwks.sign(jwks.access_token_claims(exp=now - 600, iat=now - 4000))
        good = jwks.sign(jwks.access_token_claims(email="sam@example.com"))
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            r = await http.get("/api/auth/me", headers={"Authorization": f"Bearer {expired}"})
            assert r.status_code == 401 and "expired_token" in r.json()["error"]["message"]
            r = await http.get("/api/auth/me", headers={"Authorization": f"Bearer {good}"})
            assert r.json()["email"] == "sam@example.com"
            assert (await http.get("/api/auth/me", headers=SK)).json()["auth_provider"] == "guest"
        event, code = await refused(f"ws://{address}/v1/realtime",
                                    {"Authorization": f"Bearer {expired}"})
        assert (event["error"]["code"], code) == ("expired_token", 1008)


# -- the dev guest's plan -----------------------------------------------------------------------
async def spoken_answers(address: str) -> tuple[list[str], list[dict]]:
    """Ask for spoken answers: the output modalities the session then has, and any errors."""
    async with websockets.connect(f"ws://{address}/v1/realtime", additional_headers=SK) as ws:
        conv = Conversation(ws)
        created = await conv.next()
        assert created["type"] == "session.created"
        assert created["session"]["output_modalities"] == ["text"]  # until asked
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["audio"]}}))
        updated = await conv.until("session.updated")
        await conv.sync()  # whatever the update caused has arrived
    return updated["session"]["output_modalities"], conv.of("error")


async def test_the_dev_guest_has_the_plan_with_every_feature(fake, start_server):
    address = await start_server(make_settings(fake, guest_tier=None))  # the default
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        usage = (await http.get("/api/billing/usage")).json()
    assert usage["tier"] == "unlimited"
    assert {"tts", "speculative"} <= set(usage["features"])
    assert await spoken_answers(address) == (["audio"], [])


async def test_an_explicit_guest_tier_wins(fake, start_server):
    address = await start_server(make_settings(fake, guest_tier="free"))
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        assert (await http.get("/api/billing/usage")).json()["tier"] == "free"
    modalities, [error] = await spoken_answers(address)
    assert modalities == ["text"] and error["error"]["code"] == "feature_not_available"


def test_the_fullest_plan_has_every_feature_then_the_highest_rank():
    catalog = TierCatalog({
        "basic": Tier(name="basic", rank=0),
        "voice": Tier(name="voice", rank=5, features=["tts", "speculative"]),
        "big": Tier(name="big", rank=9, features=["tts"]),  # ranked higher, but not everything
    }, default="basic")
    assert catalog.fullest().name == "voice"
    assert catalog.guest_plan(None, dev_mode=True) == "voice"
    assert catalog.guest_plan("basic", dev_mode=True) == "basic"
    assert catalog.guest_plan(None, dev_mode=False) is None  # the guest keeps its own tier
    assert TierCatalog.load().fullest().name == "unlimited"


# -- a server without a provider ----------------------------------------------------------------
def provider_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "tutor"
            and "No AI provider is configured" in r.getMessage()]


async def test_a_server_without_a_provider_warns_at_startup(start_server, caplog):
    caplog.set_level(logging.INFO)
    address = await start_server(make_settings(None))
    [warning] = provider_warnings(caplog)
    assert "OPENAI_API_KEY" in warning and "LLM_BASE_URL" in warning
    # and the socket says so too, right after session.created
    async with websockets.connect(f"ws://{address}/v1/realtime") as ws:
        conv = Conversation(ws)
        assert (await conv.next())["type"] == "session.created"
        error = await conv.until("error")
    assert error["error"]["code"] == "provider_not_configured"


async def test_a_server_with_a_provider_does_not_warn(fake, start_server, caplog):
    caplog.set_level(logging.INFO)
    await start_server(make_settings(fake))
    assert provider_warnings(caplog) == []


async def test_a_browser_client_offering_the_key_as_a_subprotocol_is_answered_realtime(server):
    """OpenAI's browser clients cannot set headers: they offer `realtime` and the key as a
    subprotocol. The server picks `realtime` (a browser refuses a handshake that picks none)
    and reads the key as a bearer (here any key: dev mode)."""
    async with websockets.connect(
            f"ws://{server}/v1/realtime?model=gpt-realtime",
            subprotocols=["realtime", "openai-insecure-api-key.sk-browser", "openai-beta.realtime-v1"]
    ) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "session.created"
