"""Teacher invitations end to end, on SQLite and PostgreSQL: the real app under uvicorn, a loopback
Google (tests/fake_oidc.py) and Supabase JWKS, a real HTTP client. An admin (or a school's seat
owner) invites; the email waits in the outbox with its link; the invitee opens it and signs in
(Google), or posts its token (Supabase); they are a teacher. Expired, revoked, reused, unknown
links are refused with their codes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select, update

from store import queries
from store.models import EmailNotification, Invitation, User, now
from tests.conftest import make_settings
from tests.storage_fixtures import BACKENDS, blank_database


@pytest.fixture(params=BACKENDS)
async def app_server(request, fake, oidc, jwks, start_server, tmp_path: Path):
    """A server with Google and Supabase sign-in (no guest), on each backend."""
    async with blank_database(request.param, tmp_path) as url:
        address = await start_server(make_settings(
            fake, database_url=url, google_client_id=oidc.client_id,
            google_client_secret=oidc.client_secret, google_discovery_url=oidc.discovery_url,
            supabase_url=jwks.project_url))
        yield f"http://{address}", start_server.apps[-1]


def bearer(jwks, email: str) -> dict[str, str]:
    claims = jwks.access_token_claims(email=email, sub=f"sub-{email}")
    return {"Authorization": f"Bearer {jwks.sign(claims)}"}


async def user_with_role(client: httpx.AsyncClient, app, headers: dict[str, str], role: str,
                         **fields: Any) -> str:
    user_id = (await client.get("/api/auth/me", headers=headers)).json()["id"]
    async with app.state.services.db.session() as s, s.begin():
        await queries.set_role(s, user_id, role)
        for name, value in fields.items():
            setattr(await s.get(User, user_id), name, value)
    return user_id


async def mails_to(app, address: str) -> list[EmailNotification]:
    async with app.state.services.db.session() as s:
        return list((await s.execute(select(EmailNotification).where(
            EmailNotification.template == "role_invitation",
            EmailNotification.recipient == address).order_by(EmailNotification.id))).scalars())


def token_of(mail: EmailNotification) -> str:
    return parse_qs(urlsplit(mail.payload["accept_url"]).query)["token"][0]


async def test_an_invited_teacher_signs_in_with_google_and_is_a_teacher(app_server, oidc, jwks):
    base, app = app_server
    admin = bearer(jwks, "head@school.example")
    async with httpx.AsyncClient(base_url=base) as client:
        admin_id = await user_with_role(client, app, admin, "admin")
        body = {"emails": ["Rivera@School.example"], "role": "teacher"}
        r = await client.post("/api/invitations", json=body, headers=admin)
        assert r.status_code == 202, r.text
        assert r.json()["queued"] == 1 and r.json()["already_invited"] == 0
        item = r.json()["items"][0]
        assert (item["email"], item["role"], item["status"], item["invited_by"]) == (
            "rivera@school.example", "teacher", "open", admin_id)
        again = await client.post("/api/invitations", json=body, headers=admin)
        assert again.json()["queued"] == 0 and again.json()["already_invited"] == 1
    mails = await mails_to(app, "rivera@school.example")
    assert len(mails) == 1 and mails[0].transactional  # idempotent per address
    link = mails[0].payload["accept_url"]
    assert link.startswith(f"{base}/api/invitations/accept?token=")
    async with app.state.services.db.session() as s:  # only the token's hash is stored
        row = (await s.execute(select(Invitation))).scalar_one()
    assert token_of(mails[0]) not in (row.token_hash, row.id)

    oidc.user = {"sub": "google-rivera", "email": "rivera@school.example", "name": "Ms. Rivera",
                 "email_verified": True}
    async with httpx.AsyncClient() as browser:  # never signed in: the link leads to Google
        r = await browser.get(link, follow_redirects=True)
        assert [h.status_code for h in r.history] == [303, 302, 302, 303]
        assert r.history[1].url.path == "/api/auth/google/login"
        assert r.url.query == b"invitation=accepted"
        me = (await browser.get(f"{base}/api/auth/me")).json()
        assert (me["email"], me["role"], me["auth_provider"]) == (
            "rivera@school.example", "teacher", "google")
        # a teacher now: classes are theirs to create
        assert (await browser.post(f"{base}/api/classes", json={"name": "Algebra"})
                ).status_code == 201
        # the link again: used
        r = await browser.get(link, follow_redirects=True)
        assert r.url.query == b"invitation=invitation_used"
    async with httpx.AsyncClient(base_url=base) as client:
        listed = (await client.get("/api/invitations", headers=admin)).json()["items"]
        assert [(i["status"], i["accepted_by"]) for i in listed] == [("accepted", me["id"])]
        r = await client.post("/api/invitations/accept", json={"token": token_of(mails[0])},
                              headers=bearer(jwks, "someone@school.example"))
        assert (r.status_code, r.json()["error"]["code"]) == (409, "invitation_used")
        assert (await client.get("/api/auth/me", headers=bearer(
            jwks, "someone@school.example"))).json()["role"] == "student"


async def test_supabase_sign_in_accepts_with_the_token(app_server, jwks):
    base, app = app_server
    admin = bearer(jwks, "head@school.example")
    invitee = bearer(jwks, "li@school.example")
    async with httpx.AsyncClient(base_url=base) as client:
        await user_with_role(client, app, admin, "admin")
        r = await client.post("/api/invitations", json={"emails": ["li@school.example"],
                                                        "role": "admin"}, headers=admin)
        assert r.status_code == 202
        token = token_of((await mails_to(app, "li@school.example"))[0])
        r = await client.post("/api/invitations/accept", json={"token": token}, headers=invitee)
        assert r.status_code == 200, r.text
        assert r.json()["role"] == "admin" and r.json()["invitation"]["status"] == "accepted"
        assert (await client.get("/api/auth/me", headers=invitee)).json()["role"] == "admin"
        # a role is only raised: an admin accepting a teacher's invitation stays admin
        await client.post("/api/invitations", json={"emails": ["head@school.example"]},
                          headers=admin)
        token = token_of((await mails_to(app, "head@school.example"))[0])
        r = await client.post("/api/invitations/accept", json={"token": token}, headers=admin)
        assert r.status_code == 200 and r.json()["role"] == "admin"


async def test_expired_revoked_and_unknown_invitations_are_refused(app_server, jwks):
    base, app = app_server
    admin = bearer(jwks, "head@school.example")
    invitee = bearer(jwks, "late@school.example")
    async with httpx.AsyncClient(base_url=base) as client:
        await user_with_role(client, app, admin, "admin")
        r = await client.post("/api/invitations", json={"emails": ["late@school.example",
                                                                   "gone@school.example"]},
                              headers=admin)
        items = {i["email"]: i for i in r.json()["items"]}
        late = token_of((await mails_to(app, "late@school.example"))[0])
        gone = token_of((await mails_to(app, "gone@school.example"))[0])

        async with app.state.services.db.session() as s, s.begin():
            await s.execute(update(Invitation).where(Invitation.email == "late@school.example")
                            .values(expires_at=now() - timedelta(seconds=1)))
        r = await client.post("/api/invitations/accept", json={"token": late}, headers=invitee)
        assert (r.status_code, r.json()["error"]["code"]) == (410, "invitation_expired")

        r = await client.delete(f"/api/invitations/{items['gone@school.example']['id']}",
                                headers=admin)
        assert r.status_code == 204
        r = await client.post("/api/invitations/accept", json={"token": gone}, headers=invitee)
        assert (r.status_code, r.json()["error"]["code"]) == (410, "invitation_revoked")

        for token in ("no-such-token", "x" * 101):
            r = await client.post("/api/invitations/accept", json={"token": token},
                                  headers=invitee)
            assert r.status_code in (400, 404), r.text
        assert (await client.get("/api/auth/me", headers=invitee)).json()["role"] == "student"
        statuses = {i["email"]: i["status"] for i in
                    (await client.get("/api/invitations", headers=admin)).json()["items"]}
        assert statuses == {"late@school.example": "expired", "gone@school.example": "revoked"}

        # an expired address invited again: a new link, one more email; the old one is revoked
        r = await client.post("/api/invitations", json={"emails": ["late@school.example"]},
                              headers=admin)
        assert r.json()["queued"] == 1
        mails = await mails_to(app, "late@school.example")
        assert len(mails) == 2
        r = await client.post("/api/invitations/accept", json={"token": late}, headers=invitee)
        assert r.json()["error"]["code"] == "invitation_revoked"
        r = await client.post("/api/invitations/accept", json={"token": token_of(mails[1])},
                              headers=invitee)
        assert r.status_code == 200 and r.json()["role"] == "teacher"


async def test_who_may_invite(app_server, jwks):
    base, app = app_server
    student = bearer(jwks, "kid@school.example")
    teacher = bearer(jwks, "plain@school.example")
    owner = bearer(jwks, "owner@school.example")
    admin = bearer(jwks, "head@school.example")
    body = {"emails": ["new@school.example"]}
    async with httpx.AsyncClient(base_url=base) as client:
        await client.get("/api/auth/me", headers=student)
        await user_with_role(client, app, teacher, "teacher")
        await user_with_role(client, app, owner, "teacher", tier="school", seats=2)
        await user_with_role(client, app, admin, "admin")
        for who in (student, teacher):
            r = await client.post("/api/invitations", json=body, headers=who)
            assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
            assert (await client.get("/api/invitations", headers=who)).status_code == 403
        # a seat owner: teachers only, as many as seats
        r = await client.post("/api/invitations", json={**body, "role": "admin"}, headers=owner)
        assert (r.status_code, r.json()["error"]["field"]) == (403, "role")
        r = await client.post("/api/invitations", json={"emails": ["a@school.example",
                                                                   "b@school.example"]},
                              headers=owner)
        assert r.status_code == 202 and r.json()["queued"] == 2
        r = await client.post("/api/invitations", json={"emails": ["c@school.example"]},
                              headers=owner)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "seats_exhausted")
        assert await mails_to(app, "c@school.example") == []  # nothing queued
        first = (await client.get("/api/invitations", headers=owner)).json()["items"]
        assert sorted(i["email"] for i in first) == ["a@school.example", "b@school.example"]
        assert (await client.delete(f"/api/invitations/{first[0]['id']}",
                                    headers=owner)).status_code == 204
        r = await client.post("/api/invitations", json={"emails": ["c@school.example"]},
                              headers=owner)
        assert r.status_code == 202  # a revoked invitation gives its seat back
        # an admin's invitations are not the seat owner's to see or revoke
        r = await client.post("/api/invitations", json=body, headers=admin)
        admins = r.json()["items"][0]["id"]
        assert admins not in {i["id"] for i in
                              (await client.get("/api/invitations", headers=owner)).json()["items"]}
        assert (await client.delete(f"/api/invitations/{admins}", headers=owner)).status_code == 404
        assert len((await client.get("/api/invitations", headers=admin)).json()["items"]) == 4
        # the admin's open invitation is not shown to a seat owner inviting the same address
        r = await client.post("/api/invitations", json=body, headers=owner)
        assert (r.json()["queued"], r.json()["already_invited"], r.json()["items"]) == (0, 1, [])
        # malformed requests
        for bad in ({"emails": []}, {"emails": ["no-at"]}, {"emails": "a@b.c"},
                    {"emails": ["a@b.c"], "role": "wizard"}):
            r = await client.post("/api/invitations", json=bad, headers=admin)
            assert r.status_code == 400, bad
