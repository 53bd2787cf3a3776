"""Refusals, not 500s: every REST input that once answered 500 (issue 15's fuzzing), against
every route it applies to, on SQLite and on PostgreSQL, with the exact status and error code,
and the server still answering afterwards. Then property-based fuzzing of every JSON route with
Hypothesis: arbitrary JSON bodies, and arbitrary query parameters on the list routes, never get
a 5xx.

One server per backend answers the whole list (each case is a line of `CASES`, so a failure
names every input that went wrong at once, not only the first).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.request import MAX_JSON_DEPTH, json_depth
from store import queries
from store.models import User
from tests.conftest import make_settings
from tests.fake_stripe import FakeStripe
from tests.processes import refused
from tests.storage_fixtures import blank_db_url  # noqa: F401

MAX_JSON_BYTES = 256 * 1024  # small, so the oversized bodies stay cheap to send
DEEP = b"[" * 3000 + b"]" * 3000
DEEP_FIELD = b'{"name": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3001
JUST_TOO_DEEP = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
TOO_LARGE = b'{"name": "' + b"x" * (MAX_JSON_BYTES + 10) + b'"}'
NUL = "a\x00b"
BIG = 2**64
JSON_HEADERS = {"content-type": "application/json"}


@dataclass
class Case:
    method: str
    path: str  # {cid}: a class, {uid}: a student, {nid}: a note
    status: int
    code: str
    json: Any = None  # a body sent as JSON
    content: bytes | None = None  # a raw body
    files: dict[str, Any] | None = None
    data: dict[str, str] | None = None


JSON_ROUTES = [  # (method, path): every route that reads a JSON body
    ("POST", "/api/auth/token"),
    ("POST", "/api/classes"),
    ("POST", "/api/classes/{cid}/students"),
    ("POST", "/api/classes/join"),
    ("POST", "/api/classes/{cid}/invitations"),
    ("PATCH", "/api/admin/users/{uid}"),
    ("POST", "/api/rag/search"),
    ("POST", "/api/ai/chat"),
    ("POST", "/api/ai/quiz"),
    ("POST", "/api/ai/summary"),
    ("POST", "/api/payments/checkout"),
    ("POST", "/api/email/send"),
    ("PUT", "/api/email/preferences"),
    ("POST", "/api/notes"),
    ("PATCH", "/api/notes/{nid}"),
]
LIST_ROUTES = ["/api/me/interactions", "/api/classes/{cid}/interactions", "/api/admin/users",
               "/api/payments/transactions", "/api/email/notifications", "/api/notes"]


def body_cases() -> list[Case]:
    """What breaks a JSON parser, against every JSON route (and the webhook's raw body)."""
    out = []
    for method, path in JSON_ROUTES:
        out += [
            Case(method, path, 400, "invalid_json", content=DEEP),
            Case(method, path, 400, "invalid_json", content=DEEP_FIELD),
            Case(method, path, 400, "invalid_json", content=JUST_TOO_DEEP),
            Case(method, path, 413, "body_too_large", content=TOO_LARGE),
            Case(method, path, 400, "invalid_json", content=b"{nope"),
            Case(method, path, 400, "invalid_json", content=b'{"name": NaN}'),
            Case(method, path, 400, "invalid_json", content=b'{"name": "\\ud800"}'),
            Case(method, path, 400, "invalid_json", content=b'{"name": "\xff\xfe"}'),
            Case(method, path, 400, "invalid_json", content=b'{"n": ' + b"9" * 5000 + b"}"),
        ]
    out.append(Case("POST", "/api/payments/webhook", 413, "body_too_large", content=TOO_LARGE))
    return out


def field_cases() -> list[Case]:
    """Values a column cannot hold (too long, NUL) and unknown tiers, at the routes taking them."""
    return [
        Case("POST", "/api/classes", 400, "invalid_request", json={"name": "c" * 201}),
        Case("POST", "/api/classes", 400, "invalid_request", json={"name": NUL}),
        Case("POST", "/api/classes/{cid}/students", 404, "not_found", json={"user_id": NUL}),
        Case("POST", "/api/classes/{cid}/students", 404, "not_found", json={"user_id": "u" * 40}),
        Case("POST", "/api/classes/join", 400, "invalid_request", json={"code": NUL}),
        Case("POST", "/api/classes/join", 400, "invalid_request", json={"code": "c" * 65}),
        Case("POST", "/api/classes/{cid}/invitations", 400, "invalid_request",
             json={"emails": ["a\x00@b.co"]}),
        Case("PATCH", "/api/admin/users/{uid}", 400, "unknown_tier", json={"tier": "t" * 33}),
        Case("PATCH", "/api/admin/users/{uid}", 400, "unknown_tier", json={"tier": "platinum"}),
        Case("PATCH", "/api/admin/users/{uid}", 400, "unknown_tier", json={"tier": NUL}),
        Case("PATCH", "/api/admin/users/{uid}", 400, "unknown_tier", json={"tier": ["free"]}),
        Case("PATCH", "/api/admin/users/%00", 404, "not_found", json={"role": "student"}),
        Case("PATCH", "/api/admin/users/" + "u" * 40, 404, "not_found", json={"role": "student"}),
        Case("POST", "/api/auth/token", 400, "invalid_request", json={"name": NUL}),
        Case("POST", "/api/auth/token", 400, "invalid_request", json={"name": "n" * 101}),
        Case("POST", "/api/rag/search", 400, "invalid_request", json={"query": "x", "course": NUL}),
        Case("POST", "/api/rag/search", 400, "invalid_request",
             json={"query": "x", "course": "c" * 201}),
        Case("POST", "/api/rag/search", 400, "invalid_request", json={"query": NUL}),
        Case("POST", "/api/ai/chat", 400, "invalid_request", json={"message": "hi", "course": NUL}),
        Case("POST", "/api/ai/chat", 400, "invalid_request",
             json={"message": "hi", "course": "c" * 201}),
        Case("POST", "/api/ai/chat", 400, "invalid_request", json={"message": NUL}),
        Case("POST", "/api/ai/quiz", 400, "invalid_request", json={"topic": NUL}),
        Case("POST", "/api/ai/quiz", 400, "invalid_request", json={"topic": "x", "course": NUL}),
        Case("POST", "/api/ai/summary", 400, "invalid_request", json={"session_id": NUL}),
        Case("POST", "/api/email/send", 400, "invalid_request",
             json={"subject": NUL, "body": "b", "user_ids": ["x"]}),
        Case("POST", "/api/email/send", 400, "invalid_request",
             json={"subject": "s", "body": NUL, "user_ids": ["x"]}),
        Case("POST", "/api/email/send", 404, "not_found",
             json={"subject": "s", "body": "b", "class_id": NUL}),
        Case("POST", "/api/email/send", 400, "invalid_request",
             json={"subject": "s", "body": "b", "user_ids": [NUL]}),
        Case("PUT", "/api/email/preferences", 400, "invalid_request",
             json={"guardian_email": "a\x00@b.co"}),
        Case("POST", "/api/notes", 400, "invalid_field", json={"text": NUL}),
        Case("POST", "/api/notes", 400, "invalid_field", json={"text": "t", "title": NUL}),
        Case("POST", "/api/notes", 400, "invalid_field", json={"text": "t", "course": NUL}),
        Case("POST", "/api/notes", 400, "invalid_field", json={"from_turn": "resp\x00"}),
        Case("PATCH", "/api/notes/{nid}", 400, "invalid_field", json={"text": NUL}),
        Case("POST", "/api/rag/documents", 400, "invalid_request",
             files={"file": ("a.md", b"# A\n\ntext")}, data={"course": NUL}),
        Case("POST", "/api/rag/documents", 400, "invalid_request",
             files={"file": ("a.md", b"# A\n\ntext")}, data={"course": "c" * 201}),
        Case("POST", "/api/rag/documents", 400, "invalid_request",
             files={"file": ("a.md", b"# A\n\ntext")}, data={"course": "c", "source": NUL}),
    ]


def query_cases() -> list[Case]:
    """Paging past 64 bits or not a number, ids in paths, NUL in query parameters."""
    out = []
    for path in LIST_ROUTES:
        for query in (f"before={BIG}", "before=abc", "before=-1", "before=0", "limit=abc",
                      f"before={2**63}"):
            out.append(Case("GET", f"{path}?{query}", 400, "invalid_request"))
    for offset in ("abc", "-1", str(BIG), "²", "1.5"):
        out.append(Case("GET", f"/api/admin/users?offset={offset}", 400, "invalid_request"))
    out += [
        Case("POST", f"/api/email/notifications/{BIG}/retry", 404, "not_found"),
        Case("POST", "/api/email/notifications/0/retry", 404, "not_found"),
        Case("POST", "/api/email/notifications/abc/retry", 404, "not_found"),
        Case("GET", "/api/email/notifications?status=%00", 400, "invalid_request"),
        Case("GET", "/api/email/notifications?status=" + "s" * 17, 400, "invalid_request"),
        Case("GET", "/api/notes?course=%00", 400, "invalid_request"),
        Case("GET", "/api/notes?q=a%00b", 400, "invalid_field"),
        Case("GET", f"/api/notes/{BIG}", 404, "note_not_found"),
        Case("PATCH", f"/api/notes/{BIG}", 404, "note_not_found", json={"text": "x"}),
        Case("DELETE", f"/api/notes/{BIG}", 404, "note_not_found"),
        Case("GET", "/api/rag/documents?course=%00", 400, "invalid_request"),
        Case("DELETE", "/api/rag/documents?course=%00&source=a", 400, "invalid_request"),
        Case("DELETE", "/api/rag/documents?course=c&source=%00", 400, "invalid_request"),
        Case("GET", f"/api/rag/passages/c{BIG}", 404, "not_found"),
        Case("GET", "/api/classes/%00/interactions", 404, "not_found"),
        Case("POST", "/api/classes/%00/code", 404, "not_found"),
        Case("DELETE", "/api/me/classes/%00", 404, "not_found"),
        Case("DELETE", "/api/auth/sessions/%00", 404, "not_found"),
        Case("DELETE", "/api/auth/sessions/" + "s" * 65, 404, "not_found"),
        Case("POST", "/api/classes/" + "c" * 40 + "/students", 404, "not_found",
             json={"user_id": "x"}),
    ]
    return out


CASES = body_cases() + field_cases() + query_cases()


@dataclass
class World:
    client: httpx.AsyncClient
    ids: dict[str, Any]
    student_id: str

    def url(self, path: str) -> str:
        return path.format(**self.ids)


@pytest.fixture
async def stripe_fake():
    async with FakeStripe(api_key="sk_test_x") as server:
        yield server


async def world(start_server, fake, stripe_fake, database_url: str) -> tuple[World, Any]:
    """A server on `database_url` with an admin (unlimited plan), a student, a class and a note."""
    address = await start_server(make_settings(
        fake, database_url=database_url, supabase_jwt_secret="s" * 32, dev_guest=False,
        max_json_bytes=MAX_JSON_BYTES, stripe_api_key="sk_test_x",
        stripe_api_base=stripe_fake.base_url, stripe_webhook_secret="whsec_x",
        stripe_prices={"pro": "price_pro"}))
    app = start_server.apps[-1]
    async with app.state.services.db.session() as s, s.begin():
        admin = await queries.upsert_user(s, provider="google", subject="admin", name="Admin",
                                          email="admin@example.com", role="admin")
        admin.tier = "unlimited"  # no per-minute limit in the way of a long list
        student = await queries.upsert_user(s, provider="google", subject="student",
                                            name="Stu", email="stu@example.com")
        token, _ = await queries.issue_api_token(s, admin.id)
        room = await queries.create_class(s, admin.id, "Algebra")
    client = httpx.AsyncClient(base_url=f"http://{address}", timeout=10,
                               headers={"Authorization": f"Bearer {token}"})
    note = await client.post("/api/notes", json={"text": "a note"})
    assert note.status_code == 201, note.text
    return World(client, {"cid": room.id, "uid": student.id, "nid": note.json()["id"]},
                 student.id), app


async def answer(w: World, case: Case) -> httpx.Response:
    kwargs: dict[str, Any] = {}
    if case.content is not None:
        kwargs = {"content": case.content, "headers": JSON_HEADERS}
    elif case.files is not None:
        kwargs = {"files": case.files, "data": case.data}
    elif case.json is not None:
        kwargs = {"json": case.json}
    return await w.client.request(case.method, w.url(case.path), **kwargs)


async def test_every_fuzz_input_is_refused_with_its_code_and_the_server_goes_on(
        fake, stripe_fake, start_server, blank_db_url):  # noqa: F811
    w, app = await world(start_server, fake, stripe_fake, blank_db_url)
    try:
        wrong = []
        for case in CASES:
            r = await answer(w, case)
            got = (r.status_code, r.json().get("error", {}).get("code")
                   if r.headers.get("content-type", "").startswith("application/json") else r.text)
            if got != (case.status, case.code):
                wrong.append((case.method, case.path, repr(case.json or case.content or case.data)[:60],
                              got, r.text[:200]))
        assert not wrong, "\n".join(map(repr, wrong))

        # the unknown tier was refused by name, and the student kept the tier they had
        r = await w.client.patch(w.url("/api/admin/users/{uid}"), json={"tier": "platinum"})
        message = r.json()["error"]["message"]
        assert "free" in message and "pro" in message and "unlimited" in message, message
        async with app.state.services.db.session() as s:
            assert (await s.get(User, w.student_id)).tier == "free"
        r = await w.client.patch(w.url("/api/admin/users/{uid}"), json={"tier": "pro"})
        assert (r.status_code, r.json()["tier"]) == (200, "pro")

        # still answering, reads and writes: nothing above broke a connection or a session
        assert (await w.client.get("/readyz")).status_code == 200
        r = await w.client.post("/api/classes", json={"name": "c" * 200})
        assert r.status_code == 201, r.text
        r = await w.client.post("/api/notes", json={"text": "after the storm", "course": "c"})
        assert r.status_code == 201, r.text
        assert (await w.client.get("/api/notes?course=c")).json()["items"][0]["text"] == \
            "after the storm"
    finally:
        await w.client.aclose()


def test_json_depth_counts_nesting_and_ignores_brackets_in_strings():
    assert json_depth(b'{"a": [1, {"b": []}]}') == 4
    assert json_depth(b'"[[[[" ') == 0
    assert json_depth(b'["\\"[[[", {}]') == 2  # an escaped quote does not end the string
    assert json_depth(b"1") == json_depth(b"") == 0
    assert json_depth(DEEP) == 3000


# --- property-based: arbitrary JSON bodies and query parameters never answer 5xx ----------------------------------

ROUTE_FIELDS = {  # what each JSON route reads: a body made of these reaches its deeper checks
    "/api/auth/token": ["name"],
    "/api/classes": ["name"],
    "/api/classes/{cid}/students": ["user_id"],
    "/api/classes/join": ["code"],
    "/api/classes/{cid}/invitations": ["emails"],
    "/api/admin/users/{uid}": ["role", "tier"],
    "/api/rag/search": ["query", "course", "k"],
    "/api/ai/chat": ["message", "history", "instructions", "course"],
    "/api/ai/quiz": ["topic", "source", "course", "questions", "kinds"],
    "/api/ai/summary": ["session_id"],
    "/api/payments/checkout": ["tier", "seats"],
    "/api/payments/webhook": ["id", "type", "data"],
    "/api/email/send": ["subject", "body", "class_id", "user_ids"],
    "/api/email/preferences": ["weekly_summary", "guardian_email", "language", "subscribed"],
    "/api/notes": ["text", "title", "course", "turn_id", "from_turn"],
    "/api/notes/{nid}": ["text", "title", "course"],
}
hostile = st.sampled_from(["", " ", "\x00", "a\x00b", "\ud800", "a" * 201, "b" * 33, "x@y.co",
                           "pro", "free", "unlimited", "student", "admin", "recent", "topic",
                           "mcq", "user", str(2**64), "-1", "0"])
scalars = (st.none() | st.booleans() | st.integers() | st.integers(2**63 - 2, 2**70)
           | st.floats(allow_nan=False) | st.text(max_size=40) | hostile)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8) | hostile, inner, max_size=4),
                           max_leaves=12)


QUERY_ROUTES = [("GET", path) for path in LIST_ROUTES] + [
    ("GET", "/api/rag/documents"), ("DELETE", "/api/rag/documents"), ("GET", "/api/billing/usage")]
QUERY_PARAMS = ["limit", "before", "offset", "course", "source", "status", "q"]


def route_bodies(route: tuple[str, str]) -> st.SearchStrategy[tuple[tuple[str, str], Any]]:
    fields = ROUTE_FIELDS[route[1]]
    own = st.fixed_dictionaries({}, optional={f: hostile | json_values for f in fields})
    return st.tuples(st.just(route), st.one_of(json_values, own, own, own))


async def test_arbitrary_json_bodies_never_get_a_server_error(fake, stripe_fake, start_server,
                                                              blank_db_url):  # noqa: F811
    w, _ = await world(start_server, fake, stripe_fake, blank_db_url)
    await w.client.aclose()
    base, headers = str(w.client.base_url), dict(w.client.headers)
    routes = JSON_ROUTES + [("POST", "/api/payments/webhook")]

    def fuzz() -> None:  # Hypothesis is synchronous: it runs in a thread, the server in the loop
        with httpx.Client(base_url=base, headers=headers, timeout=10) as client:

            @settings(max_examples=100, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])
            @given(st.sampled_from(routes).flatmap(route_bodies))
            def never_5xx(request: tuple[tuple[str, str], Any]) -> None:
                (method, path), body = request
                r = client.request(method, path.format(**w.ids),
                                   content=json.dumps(body).encode(), headers=JSON_HEADERS)
                assert r.status_code < 500, (method, path, body, r.status_code, r.text)
            never_5xx()

            @settings(max_examples=60, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])
            @given(st.sampled_from(QUERY_ROUTES),
                   st.dictionaries(st.sampled_from(QUERY_PARAMS), st.text(max_size=30)
                                   | st.integers().map(str)
                                   | hostile.filter(lambda v: v != "\ud800"),  # no URL for it
                                   max_size=3))
            def queries_never_5xx(route: tuple[str, str], params: dict[str, str]) -> None:
                method, path = route
                r = client.request(method, path.format(**w.ids), params=params)
                assert r.status_code < 500, (method, path, params, r.status_code, r.text)
            queries_never_5xx()
            assert client.get("/readyz").status_code == 200

    await asyncio.to_thread(fuzz)


@pytest.mark.parametrize("course", ["a%00b", "c" * 201])
async def test_a_voice_socket_for_a_course_no_column_can_hold_is_refused(fake, start_server,
                                                                        course):
    """The course of `?course=` is stored with every turn: refused at the door (before, a turn's
    row failed in the writer on PostgreSQL)."""
    address = await start_server(make_settings(fake))
    event, close_code = await refused(f"ws://{address}/api/voice?course={course}", {})
    assert (event["error"]["code"], close_code) == ("invalid_course", 1008)
    async with httpx.AsyncClient() as client:  # and the server goes on
        assert (await client.get(f"http://{address}/readyz")).status_code == 200
