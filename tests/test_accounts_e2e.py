"""Sign-in end to end: the real app under uvicorn, a loopback OpenID provider and a Supabase
JWKS endpoint, followed with a real HTTP client; tokens, tickets, roles and data rights."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import websockets
from sqlalchemy import select

from accounts.secrets import SecretBox, generate_key
from store import queries
from store.models import ApiToken, Interaction, User
from tests.conftest import make_settings, read_pcm
from tests.realtime_client import Conversation, check_shape, session_update
from tests.services import redis_client  # noqa: F401

KEY = generate_key()


@pytest.fixture
async def app_server(fake, oidc, jwks, start_server):
    """A server with Google and Supabase sign-in configured (so no guest)."""
    address = await start_server(make_settings(
        fake, google_client_id=oidc.client_id, google_client_secret=oidc.client_secret,
        google_discovery_url=oidc.discovery_url, supabase_url=jwks.project_url,
        secret_keys=KEY, allowed_origins=["https://school.example"]))
    return address, start_server.apps[-1]


async def google_sign_in(client: httpx.AsyncClient, address: str) -> httpx.Response:
    """Follow the whole redirect dance: us → provider's authorize → our callback → home."""
    return await client.get(f"http://{address}/api/auth/google/login", follow_redirects=True)


async def test_google_sign_in_creates_a_user_and_a_session(app_server, oidc):
    address, app = app_server
    async with httpx.AsyncClient() as client:
        r = await google_sign_in(client, address)
        assert [h.status_code for h in r.history] == [302, 302, 303]
        assert r.history[0].headers["location"].startswith(f"{oidc.issuer}/authorize")
        assert "code_challenge_method=S256" in r.history[0].headers["location"]
        set_cookie = r.history[2].headers["set-cookie"].lower()
        me = await client.get(f"http://{address}/api/auth/me")
    assert me.status_code == 200
    assert me.json() | {"id": None, "created_at": None} == {
        "id": None, "created_at": None, "email": "student@example.com", "name": "Sam Student",
        "role": "student", "tier": "free", "auth_provider": "google"}
    assert set_cookie.startswith("tutor_session=")
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie
    assert oidc.token_requests[-1]["form"]["code_verifier"]  # PKCE was used
    async with app.state.services.db.session() as s:
        user = (await s.execute(select(User).where(User.auth_provider == "google"))).scalar_one()
    # the refresh token is stored, but only encrypted
    assert user.oauth_refresh_token and "refresh" not in user.oauth_refresh_token
    assert SecretBox(KEY).decrypt(user.oauth_refresh_token) in oidc.refresh_tokens


@pytest.mark.parametrize("forgery", [
    {"id_token_overrides": {"aud": "someone-else"}},
    {"id_token_overrides": {"iss": "https://evil.example"}},
    {"id_token_overrides": {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}},
    {"id_token_overrides": {"nonce": "replayed"}},
    {"sign_with_other_key": True},
    {"alg_none": True},
], ids=["audience", "issuer", "expired", "nonce", "forged-signature", "alg-none"])
async def test_forged_google_id_tokens_are_refused(app_server, oidc, forgery):
    address, _ = app_server
    for name, value in forgery.items():
        setattr(oidc, name, value)
    async with httpx.AsyncClient() as client:
        r = await google_sign_in(client, address)
        assert r.status_code == 401, r.text
        assert (await client.get(f"http://{address}/api/auth/me")).status_code == 401


async def test_callback_without_the_login_state_is_refused(app_server, oidc):
    address, _ = app_server
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://{address}/api/auth/google/callback?code=x&state=y")
    assert r.status_code == 401


async def test_supabase_access_token_signs_in(app_server, jwks):
    address, _ = app_server
    claims = jwks.access_token_claims()
    token = jwks.sign(claims)
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://{address}/api/auth/me",
                             headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.json()["auth_provider"] == "supabase"
    assert r.json()["email"] == claims["email"]


@pytest.mark.parametrize("case", ["forged", "expired", "audience", "issuer", "none", "garbage",
                                  "scheme"])
async def test_bad_bearer_tokens_get_401(app_server, jwks, case):
    from tests.fake_oidc import generate_signing_key, unsigned

    address, _ = app_server
    now = int(time.time())
    token = {
        "forged": lambda: jwks.sign(jwks.access_token_claims(), key=generate_signing_key("ES256"),
                                    kid=jwks.key("ES256").kid),
        "expired": lambda: jwks.sign(jwks.access_token_claims(exp=now - 600, iat=now - 4000)),
        "audience": lambda: jwks.sign(jwks.access_token_claims(aud="anon")),
        "issuer": lambda: jwks.sign(jwks.access_token_claims(iss="https://other.supabase.co/auth/v1")),
        "none": lambda: unsigned(jwks.access_token_claims()),
        "garbage": lambda: "not-a-token",
        "scheme": lambda: None,
    }[case]()
    header = f"Bearer {token}" if token else "Basic dXNlcjpwYXNz"
    async with httpx.AsyncClient() as client:
        for path in ("/api/auth/me", "/api/me/interactions"):
            r = await client.get(f"http://{address}{path}", headers={"Authorization": header})
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["code"] == "unauthorized"


async def test_nothing_works_without_credentials_when_sign_in_is_configured(app_server):
    address, _ = app_server
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://{address}/api/auth/me")).status_code == 401
        assert (await client.post(f"http://{address}/api/ai/chat",
                                  json={"message": "hi"})).status_code == 401
        assert (await client.post(f"http://{address}/api/voice/session")).status_code == 401
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        event = json.loads(await ws.recv())
        check_shape(event)
        assert event["type"] == "error" and event["error"]["code"] == "unauthorized"
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd.code == 1008


async def test_api_tokens_issue_use_and_logout(app_server, jwks):
    address, app = app_server
    supabase = {"Authorization": f"Bearer {jwks.sign(jwks.access_token_claims())}"}
    async with httpx.AsyncClient() as client:
        r = await client.post(f"http://{address}/api/auth/token", json={"name": "cli"},
                              headers=supabase)
        assert r.status_code == 201
        token = r.json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await client.get(f"http://{address}/api/auth/me", headers=bearer)).status_code == 200
        assert (await client.post(f"http://{address}/api/auth/logout",
                                  headers=bearer)).status_code == 204
        assert (await client.get(f"http://{address}/api/auth/me", headers=bearer)).status_code == 401
    async with app.state.services.db.session() as s:
        stored = (await s.execute(select(ApiToken))).scalar_one()
    assert stored.token_hash != token and token not in stored.token_hash


async def test_voice_ticket_is_single_use_and_checks_the_origin(app_server):
    address, _ = app_server
    async with httpx.AsyncClient() as client:
        await google_sign_in(client, address)

        async def ticket() -> str:
            r = await client.post(f"http://{address}/api/voice/session")
            assert r.status_code == 201
            return r.json()["ticket"]

        first = await ticket()
        origin = {"Origin": "https://school.example"}
        async with websockets.connect(f"ws://{address}/api/voice?ticket={first}",
                                      additional_headers=origin) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        for url, headers, code in [
            (f"/api/voice?ticket={first}", origin, "invalid_ticket"),  # used already
            ("/api/voice?ticket=made-up", origin, "invalid_ticket"),
            (f"/api/voice?ticket={await ticket()}", {"Origin": "https://evil.example"},
             "origin_not_allowed"),
        ]:
            async with websockets.connect(f"ws://{address}{url}", additional_headers=headers) as ws:
                event = json.loads(await ws.recv())
                assert event["error"]["code"] == code
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd.code == 1008
        # the server's own origin is always allowed
        async with websockets.connect(f"ws://{address}/api/voice?ticket={await ticket()}",
                                      additional_headers={"Origin": f"http://{address}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"


async def test_tickets_in_redis_work_across_server_processes(fake, start_server, jwks,
                                                             redis_client):
    shared = make_settings(fake, supabase_url=jwks.project_url,
                           redis_url="redis://127.0.0.1:6379/15")  # one database, one Redis
    one = await start_server(shared)
    two = await start_server(shared)
    bearer = {"Authorization": f"Bearer {jwks.sign(jwks.access_token_claims())}"}
    async with httpx.AsyncClient() as client:
        ticket = (await client.post(f"http://{one}/api/voice/session", headers=bearer)).json()["ticket"]
    async with websockets.connect(f"ws://{two}/api/voice?ticket={ticket}") as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"


async def test_voice_turns_are_recorded_for_the_signed_in_student(app_server, jwks):
    address, app = app_server
    claims = jwks.access_token_claims()
    bearer = {"Authorization": f"Bearer {jwks.sign(claims)}"}
    async with websockets.connect(f"ws://{address}/api/voice", additional_headers=bearer) as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.stream(read_pcm("q_war.wav"), 16000)
        metrics = await conv.until("tutor.response.metrics")
    assert await app.state.services.writer.flush(5)
    async with httpx.AsyncClient() as client:
        page = (await client.get(f"http://{address}/api/me/interactions", headers=bearer)).json()
    [row] = page["items"]
    assert row["kind"] == "voice" and row["status"] == "completed"
    assert row["transcript"] == conv.of(
        "conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert row["answer"] == conv.of("response.output_text.done")[0]["text"]
    assert row["audio_seconds"] == pytest.approx(3.3, abs=0.1)
    assert row["tokens_in"] > 0 and row["tokens_out"] > 0
    assert row["latency_ms"]["stt"] == metrics["stt_ms"]


async def signed_in(jwks, **claims) -> tuple[dict[str, str], str]:
    c = jwks.access_token_claims(**claims)
    return {"Authorization": f"Bearer {jwks.sign(c)}"}, c["sub"]


async def test_roles_and_data_rights(app_server, jwks):
    address, app = app_server
    student, _ = await signed_in(jwks, email="s@example.com")
    other_student, _ = await signed_in(jwks, email="o@example.com")
    teacher, _ = await signed_in(jwks, email="t@example.com")
    other_teacher, _ = await signed_in(jwks, email="t2@example.com")
    admin, _ = await signed_in(jwks, email="a@example.com")
    base = f"http://{address}"
    async with httpx.AsyncClient(base_url=base) as client:
        ids = {}
        for name, h in [("student", student), ("other", other_student), ("teacher", teacher),
                        ("teacher2", other_teacher), ("admin", admin)]:
            ids[name] = (await client.get("/api/auth/me", headers=h)).json()["id"]
        async with app.state.services.db.session() as s, s.begin():
            for name, role in [("teacher", "teacher"), ("teacher2", "teacher"), ("admin", "admin")]:
                await queries.set_role(s, ids[name], role)
        # a typed question by each student is recorded
        for h in (student, other_student):
            await client.post("/api/ai/chat", json={"message": "What is a prime?"}, headers=h)
        assert await app.state.services.writer.flush(5)

        # students: no classes, no admin
        assert (await client.post("/api/classes", json={"name": "x"}, headers=student)).status_code == 403
        assert (await client.get("/api/admin/users", headers=student)).status_code == 403
        assert (await client.get("/api/admin/users", headers=teacher)).status_code == 403
        # paging arguments out of range are refusals, not server errors
        for query in ("offset=abc", "offset=-1", "offset=%C2%B2", f"offset={2**64}"):
            r = await client.get(f"/api/admin/users?{query}", headers=admin)
            assert r.status_code == 400, query
        for query in (f"before={2**64}", "before=0", "before=-5"):
            r = await client.get(f"/api/me/interactions?{query}", headers=student)
            assert r.status_code == 400, query
        # a teacher sees the transcripts of the students who joined their class (with its
        # code), from the join on, and only those (tests/test_sessions_privacy.py: the details)
        room = (await client.post("/api/classes", json={"name": "Maths 7B", "course": "maths"},
                                  headers=teacher)).json()
        assert room["course"] == "maths"  # the course the class studies (None when not given)
        assert (await client.post(f"/api/classes/{room['id']}/students",
                                  json={"user_id": ids["student"]}, headers=teacher)).status_code == 403
        assert (await client.post("/api/classes/join", json={"code": room["join_code"]},
                                  headers=student)).status_code == 201
        await client.post("/api/ai/chat", json={"message": "And a composite?"}, headers=student)
        await client.post("/api/ai/chat", json={"message": "Not in the class"}, headers=other_student)
        assert await app.state.services.writer.flush(5)
        seen = (await client.get(f"/api/classes/{room['id']}/interactions", headers=teacher)).json()
        assert [(row["user_id"], row["transcript"]) for row in seen["items"]] == [
            (ids["student"], "And a composite?")]
        assert (await client.get(f"/api/classes/{room['id']}/interactions",
                                 headers=other_teacher)).status_code == 404
        assert (await client.post(f"/api/classes/{room['id']}/code",
                                  headers=other_teacher)).status_code == 404
        # an admin manages users
        r = await client.patch(f"/api/admin/users/{ids['other']}", json={"role": "teacher"},
                               headers=admin)
        assert r.status_code == 200 and r.json()["role"] == "teacher"
        assert (await client.patch(f"/api/admin/users/{ids['other']}", json={"role": "wizard"},
                                   headers=admin)).status_code == 400
        assert len((await client.get("/api/admin/users", headers=admin)).json()["items"]) == 5
        # a student exports, then deletes, their account
        export = await client.get("/api/me/export", headers=student)
        assert export.headers["content-disposition"].startswith("attachment")
        assert [r["transcript"] for r in export.json()["interactions"]] == [
            "What is a prime?", "And a composite?"]
        assert (await client.delete("/api/me", headers=student)).status_code == 204
    async with app.state.services.db.session() as s:
        left = (await s.execute(select(Interaction.user_id))).scalars().all()
    assert ids["student"] not in left and ids["other"] in left


async def test_interactions_are_paginated_newest_first(app_server, jwks):
    address, app = app_server
    student, _ = await signed_in(jwks)
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        for i in range(5):
            await client.post("/api/ai/chat", json={"message": f"question {i}"}, headers=student)
        assert await app.state.services.writer.flush(5)
        seen, before = [], None
        while True:
            params = {"limit": 2} | ({"before": before} if before else {})
            page = (await client.get("/api/me/interactions", params=params, headers=student)).json()
            seen += [row["transcript"] for row in page["items"]]
            before = page["next_before"]
            if before is None:
                break
    assert seen == [f"question {i}" for i in reversed(range(5))]


@pytest.mark.parametrize("host, configured, guest", [
    ("127.0.0.1", False, True), ("::1", False, True), ("localhost", False, True),
    ("0.0.0.0", False, False), ("192.0.2.10", False, False), ("127.0.0.1", True, False)])
def test_guest_mode_only_on_loopback_without_sign_in(host, configured, guest):
    settings = make_settings(None, host=host, google_client_id="id" if configured else None)
    assert settings.guest_allowed is guest


async def test_a_server_reachable_from_the_network_has_no_guest(fake, start_server):
    address = await start_server(make_settings(fake, host="0.0.0.0"))  # the setting, not the bind
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://{address}/api/auth/me")).status_code == 401
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        assert json.loads(await ws.recv())["error"]["code"] == "unauthorized"


async def test_token_request_with_a_bad_body_is_a_400(server):
    async with httpx.AsyncClient() as client:
        r = await client.post(f"http://{server}/api/auth/token", content=b"{nope",
                              headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        r = await client.post(f"http://{server}/api/auth/token", json={"name": 5})
        assert r.status_code == 400
