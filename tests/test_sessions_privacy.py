"""Sessions and privacy (issue 15), each finding reproduced against the real app under uvicorn on
SQLite and PostgreSQL: a browser session cookie replayed after logout (and after revocation from
another browser, and on another server process) is refused; a cookie of the old scheme (a bare
user id) is refused cleanly; a teacher cannot put anyone in a class, students join with the
class's code, and the teacher sees only turns from after the join; tickets and tokens in query
strings never reach the log of a real `tutor serve`; its data dir is 0700 and the database 0600.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time
from base64 import b64encode
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import itsdangerous
import pytest
import websockets
from sqlalchemy import select, text

from server.logs import REDACTED, SCRUB, scrub
from store import queries
from store.db import Database, migrate
from store.models import ClassMember, Classroom, EmailNotification
from tests.conftest import make_settings
from tests.processes import ServerProcess, refused
from tests.storage_fixtures import blank_db_url  # noqa: F401  (fixture: sqlite, postgresql)

SECRET = "test-session-secret"


async def start(fake, start_server, database_url: str, **overrides):  # type: ignore[no-untyped-def]
    address = await start_server(make_settings(fake, database_url=database_url,
                                               session_secret=SECRET, **overrides))
    return f"http://{address}", start_server.apps[-1]


async def google_browser(base: str, user_agent: str) -> httpx.AsyncClient:
    """A browser signed in with Google (the loopback provider): its cookie jar holds the session."""
    client = httpx.AsyncClient(base_url=base, headers={"user-agent": user_agent})
    r = await client.get("/api/auth/google/login", follow_redirects=True)
    assert [h.status_code for h in r.history] == [302, 302, 303], r.text
    return client


def cookie_of(client: httpx.AsyncClient) -> dict[str, str]:
    return {"cookie": f"tutor_session={client.cookies['tutor_session']}"}


async def status(base: str, headers: dict[str, str]) -> tuple[int, str | None]:
    async with httpx.AsyncClient(base_url=base) as fresh:  # no jar: exactly the cookie given
        r = await fresh.get("/api/auth/me", headers=headers)
    code = r.json().get("error", {}).get("message", "").split(":")[0] if r.status_code != 200 \
        else None
    return r.status_code, code


async def test_a_session_cookie_ends_at_logout_and_revocation_in_every_process(
        fake, oidc, start_server, blank_db_url):  # noqa: F811
    google = dict(google_client_id=oidc.client_id, google_client_secret=oidc.client_secret,
                  google_discovery_url=oidc.discovery_url)
    base, _ = await start(fake, start_server, blank_db_url, **google)
    other, _ = await start(fake, start_server, blank_db_url, **google)  # a second process
    laptop = await google_browser(base, "Laptop/1.0")
    phone = await google_browser(base, "Phone/2.0")
    tablet = await google_browser(base, "Tablet/3.0")
    try:
        stolen = cookie_of(laptop)  # what an attacker copied, or a shared computer keeps
        assert await status(base, stolen) == (200, None)
        assert await status(other, stolen) == (200, None)  # the cookie works on either process

        # logout ends the session on the server: the copied cookie is refused everywhere
        assert (await laptop.post("/api/auth/logout")).status_code == 204
        assert await status(base, stolen) == (401, "session_ended")
        assert await status(other, stolen) == (401, "session_ended")

        sessions = (await phone.get("/api/auth/sessions")).json()["items"]
        assert sorted(s["user_agent"] for s in sessions) == ["Phone/2.0", "Tablet/3.0"]
        assert [s["user_agent"] for s in sessions if s["current"]] == ["Phone/2.0"]

        # the phone signs the tablet out, from the other process
        tablet_id = next(s["id"] for s in sessions if s["user_agent"] == "Tablet/3.0")
        r = await phone.delete(f"{other}/api/auth/sessions/{tablet_id}")
        assert r.status_code == 204
        assert (await tablet.get("/api/auth/me")).status_code == 401
        assert (await phone.delete(f"/api/auth/sessions/{tablet_id}")).status_code == 404
        left = (await phone.get("/api/auth/sessions")).json()["items"]
        assert [s["user_agent"] for s in left] == ["Phone/2.0"]

        # "sign out everywhere else" keeps this browser only
        again = await google_browser(base, "Laptop/1.1")
        assert (await phone.delete("/api/auth/sessions")).json() == {"revoked": 1}
        assert (await again.get("/api/auth/me")).status_code == 401
        assert (await phone.get("/api/auth/me")).status_code == 200
        await again.aclose()

        # someone else's session id is not found, not revoked
        r = await phone.delete("/api/auth/sessions/not-yours")
        assert r.status_code == 404
    finally:
        for client in (laptop, phone, tablet):
            await client.aclose()


async def test_a_cookie_of_the_old_scheme_is_refused_and_cleared(fake, jwks, start_server,
                                                                 blank_db_url):  # noqa: F811
    base, app = await start(fake, start_server, blank_db_url, supabase_url=jwks.project_url)
    async with app.state.services.db.session() as s, s.begin():
        user = await queries.upsert_user(s, provider="supabase", subject="old", email=None,
                                         name="Before the upgrade")
    # what SessionMiddleware signed before: the user id itself, valid for 14 days
    old = itsdangerous.TimestampSigner(SECRET).sign(
        b64encode(json.dumps({"uid": user.id}).encode())).decode()
    async with httpx.AsyncClient(base_url=base) as client:
        r = await client.get("/api/auth/me", headers={"cookie": f"tutor_session={old}"})
    assert r.status_code == 401
    assert r.json()["error"]["message"].startswith("session_ended: ")
    assert "sign in again" in r.json()["error"]["message"]
    assert r.headers["set-cookie"].startswith("tutor_session=null;")  # the browser drops it


async def test_classes_are_joined_by_code_and_teachers_see_only_later_turns(
        fake, jwks, start_server, blank_db_url):  # noqa: F811
    base, app = await start(fake, start_server, blank_db_url, supabase_url=jwks.project_url)
    async with httpx.AsyncClient(base_url=base) as client:
        async def user(email: str, role: str = "student") -> tuple[dict[str, str], str]:
            headers = {"Authorization": f"Bearer {jwks.sign(jwks.access_token_claims(email=email))}"}
            uid = (await client.get("/api/auth/me", headers=headers)).json()["id"]
            async with app.state.services.db.session() as s, s.begin():
                await queries.set_role(s, uid, role)
            return headers, uid

        ada, ada_id = await user("ada@example.com")
        bob, bob_id = await user("bob@example.com")
        teacher, _ = await user("teacher@example.com", "teacher")
        admin, admin_id = await user("admin@example.com", "admin")
        other_admin, other_admin_id = await user("admin2@example.com", "admin")

        async def ask(headers: dict[str, str], message: str) -> None:
            r = await client.post("/api/ai/chat", json={"message": message}, headers=headers)
            assert r.status_code == 200, r.text
            assert await app.state.services.writer.flush(5)

        await ask(ada, "Private: I failed my exam and I am scared to tell anyone.")
        await ask(bob, "Private: my parents are divorcing.")
        room = (await client.post("/api/classes", json={"name": "7B"}, headers=teacher)).json()

        # a member's turns from before they joined stay private (an admin enrolls Bob)
        assert (await client.post(f"/api/classes/{room['id']}/students", json={"user_id": bob_id},
                                  headers=admin)).status_code == 204
        r = await client.get(f"/api/classes/{room['id']}/interactions", headers=teacher)
        assert r.json()["items"] == []
        # the attack: a teacher enrolls someone by id (an admin, a student), without consent
        for victim in (admin_id, ada_id):
            r = await client.post(f"/api/classes/{room['id']}/students",
                                  json={"user_id": victim}, headers=teacher)
            assert r.status_code == 403, r.text

        code = room["join_code"]
        assert len(code) == 8 and code.isalnum() and code.isupper()
        listed = (await client.get("/api/classes", headers=teacher)).json()["items"]
        assert listed == [room]

        # a student joins with the code (as typed: any case, with a dash), once
        typed = f"{code[:4].lower()}-{code[4:]}"
        r = await client.post("/api/classes/join", json={"code": typed}, headers=ada)
        assert (r.status_code, r.json()) == (201, {"class_id": room["id"], "name": "7B"})
        r = await client.post("/api/classes/join", json={"code": code}, headers=ada)
        assert r.status_code == 200  # already a member: joined_at unchanged
        await ask(ada, "How do I divide fractions?")

        # the teacher sees what Ada asked after joining, never what she asked before
        seen = (await client.get(f"/api/classes/{room['id']}/interactions",
                                 headers=teacher)).json()["items"]
        assert [t["transcript"] for t in seen] == ["How do I divide fractions?"]
        mine = (await client.get("/api/me/classes", headers=ada)).json()["items"]
        assert [(c["class_id"], c["name"]) for c in mine] == [(room["id"], "7B")]

        # bad codes are clear refusals; a rotated code ends the old one, members stay
        carl, _ = await user("carl@example.com")
        for body, expected in (({"code": "ZZZZZZZZ"}, 404), ({}, 400), ({"code": 7}, 400),
                               ({"code": "x" * 65}, 400), ({"code": " - "}, 404)):
            r = await client.post("/api/classes/join", json=body, headers=carl)
            assert r.status_code == expected, (body, r.text)
        rotated = (await client.post(f"/api/classes/{room['id']}/code", headers=teacher)).json()
        assert rotated["join_code"] != code
        assert (await client.post("/api/classes/join", json={"code": code},
                                  headers=carl)).status_code == 404
        assert (await client.post(f"/api/classes/{room['id']}/code",
                                  headers=ada)).status_code == 403
        assert (await client.post("/api/classes/join", json={"code": rotated["join_code"]},
                                  headers=teacher)).status_code == 409  # their own class

        # an invitation by email carries the current code, once per address
        r = await client.post(f"/api/classes/{room['id']}/invitations", headers=teacher,
                              json={"emails": ["Dan@Example.com", "dan@example.com ", "e@x.org"]})
        assert (r.status_code, r.json()) == (202, {"queued": 2, "already_invited": 0})
        r = await client.post(f"/api/classes/{room['id']}/invitations", headers=teacher,
                              json={"emails": ["e@x.org"]})
        assert r.json() == {"queued": 0, "already_invited": 1}
        for emails in ([], ["not an address"], ["a@b.c"] * 31, "e@x.org"):
            r = await client.post(f"/api/classes/{room['id']}/invitations", headers=teacher,
                                  json={"emails": emails})
            assert r.status_code == 400, emails
        assert (await client.post(f"/api/classes/{room['id']}/invitations", headers=ada,
                                  json={"emails": ["e@x.org"]})).status_code == 403
        async with app.state.services.db.session() as s:
            mails = (await s.execute(select(EmailNotification).where(
                EmailNotification.template == "class_invitation"))).scalars().all()
        assert sorted(m.recipient for m in mails) == ["dan@example.com", "e@x.org"]
        assert {m.payload["join_code"] for m in mails} == {rotated["join_code"]}

        # a student may leave: the teacher then sees none of their turns
        assert (await client.delete(f"/api/me/classes/{room['id']}", headers=ada)).status_code == 204
        assert (await client.delete(f"/api/me/classes/{room['id']}", headers=ada)).status_code == 404
        seen = (await client.get(f"/api/classes/{room['id']}/interactions",
                                 headers=teacher)).json()["items"]
        assert seen == []

        # an admin may still add a user by id (documented, above), but not another admin
        assert (await client.post(f"/api/classes/{room['id']}/students",
                                  json={"user_id": other_admin_id},
                                  headers=admin)).status_code == 403
        assert (await client.post("/api/classes/nope/students", json={"user_id": bob_id},
                                  headers=admin)).status_code == 404


def test_scrub_redacts_credentials_and_keeps_the_rest():
    cases = {
        "/api/voice?ticket=abc123&course=maths": f"/api/voice?ticket={REDACTED}&course=maths",
        "/v1/realtime?resume=r-1_2": f"/v1/realtime?resume={REDACTED}",
        "/api/auth/me?access_token=a.b.c": f"/api/auth/me?access_token={REDACTED}",
        "/x?token=t&id_token=i&refresh_token=r": f"/x?token={REDACTED}&id_token={REDACTED}"
                                                 f"&refresh_token={REDACTED}",
        "/api/auth/google/callback?code=4/0x&state=s": f"/api/auth/google/callback?code={REDACTED}"
                                                       f"&state={REDACTED}",
        "Authorization: Bearer abc.def": f"Authorization: Bearer {REDACTED}",
        "key tt_0123456789abcdefXYZ_- used": f"key {REDACTED} used",
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln!": f"jwt {REDACTED}!",
        "/api/me/interactions?limit=5&before=9": "/api/me/interactions?limit=5&before=9",
    }
    assert {text: scrub(text) for text in cases} == cases
    # uvicorn's access record keeps its five arguments (its own formatter unpacks them)
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/api/voice?ticket=T0P", "1.1", 101), None)
    assert SCRUB.filter(record)
    assert record.getMessage() == f'127.0.0.1:5 - "GET /api/voice?ticket={REDACTED} HTTP/1.1" 101'
    record = logging.LogRecord("tutor", logging.INFO, __file__, 1,
                               {"event": "x", "url": "/?ticket=T0P", "n": 3}, (), None)
    SCRUB.filter(record)  # a structlog event dict
    assert record.msg == {"event": "x", "url": f"/?ticket={REDACTED}", "n": 3}


async def test_tutor_serve_logs_no_credentials_and_keeps_its_data_private(fake, tmp_path: Path):
    """A real `tutor serve` (dev mode, its default SQLite database in a fresh data dir, the
    umask most systems have): tickets and tokens in request URLs, accepted or refused, are not in
    its log; the data dir is 0700 and the database files 0600."""
    started = time.monotonic()
    data = tmp_path / "state" / "data"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "LLM_", "TUTOR_", "STRIPE_"))}
    env.update({"TUTOR_DATA_DIR": str(data), "OPENAI_BASE_URL": fake.base_url,
                "OPENAI_API_KEY": "test", "TUTOR_LOAD_SAMPLE_COURSE": "false",
                "TUTOR_LOG_FORMAT": "json"})
    umask = os.umask(0o022)
    try:
        server = ServerProcess("serve", env, tmp_path)
    finally:
        os.umask(umask)
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ2aWN0aW0ifQ.c2lnbmF0dXJlLXNlY3JldA"
    try:
        await server.ready(time.monotonic() + 60)  # imports and migrations, on a busy machine
        async with httpx.AsyncClient(base_url=server.http_url) as client:
            ticket = (await client.post("/api/voice/session")).json()["ticket"]
            async with websockets.connect(f"{server.ws_url}/api/voice?ticket={ticket}") as ws:
                await ws.recv()  # session.created: the ticket was accepted (and logged)
            event, _ = await refused(f"{server.ws_url}/api/voice?ticket={ticket}", {})
            assert event["error"]["code"] == "invalid_ticket"  # used: refused (and logged)
            await client.get(f"/api/auth/me?access_token={jwt}")
            await client.get("/healthz?token=tt_SeCrEt0123456789abcdef&resume=ReSuMe-42")
            # the database files, while the server has them open
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
            parent = stat.S_IMODE(data.stat().st_mode)
        await asyncio.sleep(0.1)  # the access log line of the last request
    finally:
        await server.stop()
    log = server.log_path.read_text()
    assert f"ticket={REDACTED}" in log and "access_token=" in log  # the lines are there
    for secret in (ticket, jwt, "tt_SeCrEt", "ReSuMe-42", "c2lnbmF0dXJl"):
        assert secret not in log, secret
    assert parent == 0o700
    assert {"tutor.db", "tutor.db-wal", "tutor.db-shm"} <= set(modes)
    assert all(mode == 0o600 for mode in modes.values()), modes
    print(f"tutor serve test: {time.monotonic() - started:.1f} s")


async def test_the_upgrade_gives_old_classes_a_code_and_old_memberships_a_join_time(
        blank_db_url):  # noqa: F811
    """Migration 0008 over data made before it: a class gets a join code; a membership without
    a join time counts from the upgrade (the teacher sees nothing older)."""
    await asyncio.to_thread(migrate, blank_db_url, "0006")
    db = Database(blank_db_url)
    try:
        async with db.engine.begin() as c:
            for uid in ("t1", "s1"):
                await c.execute(text(
                    "INSERT INTO users (id, role, tier, auth_provider, auth_subject, created_at, "
                    "last_seen_at) VALUES (:id, 'student', 'free', 'google', :id, :at, :at)"),
                    {"id": uid, "at": datetime(2026, 1, 1, tzinfo=timezone.utc)})
            await c.execute(text("INSERT INTO classes (id, name, teacher_id, created_at) "
                                 "VALUES ('c1', 'Old class', 't1', :at)"),
                            {"at": datetime(2026, 1, 1, tzinfo=timezone.utc)})
            await c.execute(text("INSERT INTO class_members (class_id, user_id) "
                                 "VALUES ('c1', 's1')"))
        await asyncio.to_thread(migrate, blank_db_url)
        async with db.session() as s:
            room = await s.get(Classroom, "c1")
            member = await s.get(ClassMember, ("c1", "s1"))
        assert room is not None and len(room.join_code or "") == 8
        assert member is not None and member.joined_at is not None
        assert queries.aware(member.joined_at) > datetime.now(timezone.utc) - timedelta(minutes=5)
    finally:
        await db.close()
