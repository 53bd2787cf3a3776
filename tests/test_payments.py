"""Payments end to end: the real app under uvicorn, the real `stripe` SDK talking to a loopback
Stripe (tests/fake_stripe.py), and Stripe's side played by the test: checkout sessions completed,
subscriptions changed, and webhook deliveries signed exactly as Stripe signs them.

Every scenario checks what the HTTP answers say and what ends up in the database (the user's tier
and subscription fields, `payment_transactions`, `stripe_events`). The core webhook scenarios also
run on PostgreSQL (`[postgresql]`; skipped without it on a developer's machine, failing under CI).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import stripe
from sqlalchemy import delete, select
from starlette.applications import Starlette

from server.config import Settings
from store import queries
from store.models import PaymentTransaction, StripeEvent, User
from tests.conftest import Server, make_settings
from tests.fake_stripe import FakeStripe
from tests.storage_fixtures import BACKENDS, blank_database

SECRET = "whsec_test"
API_KEY = "sk_test_123"
PRICES = {"pro": "price_pro", "school": "price_school"}
DAY = 86400


def aware(t: datetime | None) -> datetime | None:
    return t if t is None or t.tzinfo else t.replace(tzinfo=timezone.utc)  # SQLite drops zones


@dataclass
class Caller:
    id: str
    headers: dict[str, str]


@dataclass
class Payments:
    """The running app, its Stripe, and the helpers every scenario uses."""

    app: Starlette
    stripe: FakeStripe
    http: httpx.AsyncClient

    # -- callers ---------------------------------------------------------------------------
    async def user(self, role: str = "student", name: str = "Sam") -> Caller:
        async with self.app.state.services.db.session() as s, s.begin():
            user = await queries.upsert_user(s, provider="google", subject=secrets.token_hex(8),
                                             email=f"{secrets.token_hex(4)}@example.com",
                                             name=name, role=role)
            token, _ = await queries.issue_api_token(s, user.id)
        return Caller(user.id, {"Authorization": f"Bearer {token}"})

    async def get(self, who: Caller, path: str) -> httpx.Response:
        return await self.http.get(path, headers=who.headers)

    async def post(self, who: Caller, path: str, body: dict[str, Any] | None = None
                   ) -> httpx.Response:
        return await self.http.post(path, headers=who.headers, json=body)

    async def usage(self, who: Caller) -> dict[str, Any]:
        r = await self.get(who, "/api/billing/usage")
        assert r.status_code == 200, r.text
        return r.json()

    # -- Stripe's side ---------------------------------------------------------------------
    async def checkout(self, who: Caller, tier: str = "pro", seats: int | None = None) -> str:
        body: dict[str, Any] = {"tier": tier} | ({"seats": seats} if seats else {})
        r = await self.post(who, "/api/payments/checkout", body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    async def subscribe(self, who: Caller, tier: str = "pro", *, seats: int | None = None,
                        deliver: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
        """Checkout through our API, the customer pays at Stripe, and (unless `deliver` is
        False) Stripe tells us. Returns (checkout session, subscription) as Stripe has them."""
        session_id = await self.checkout(who, tier, seats)
        sub = self.stripe.complete_checkout(session_id, quantity=seats)
        session = self.stripe.checkout_sessions[session_id]
        if deliver:
            r = await self.deliver("checkout.session.completed", session)
            assert r.status_code == 200 and r.json()["status"] == "processed", r.text
        return session, sub

    def event(self, type: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.stripe.event(type, obj)

    def signed(self, event: dict[str, Any], *, secret: str = SECRET,
               timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
        return self.stripe.signed(event, secret, timestamp=timestamp)

    async def post_webhook(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.http.post("/api/payments/webhook", content=body, headers=headers)

    async def deliver(self, type_or_event: str | dict[str, Any],
                      obj: dict[str, Any] | None = None) -> httpx.Response:
        """One signed delivery of a new event (`type`, `obj`) or of a given event."""
        event = (type_or_event if isinstance(type_or_event, dict)
                 else self.event(type_or_event, obj or {}))
        return await self.post_webhook(*self.signed(event))

    def fetches(self, sub_id: str) -> int:
        return sum(1 for m, p, _ in self.stripe.requests
                   if m == "GET" and p == f"/v1/subscriptions/{sub_id}")

    # -- the database ----------------------------------------------------------------------
    async def row(self, user_id: str) -> User:
        async with self.app.state.services.db.session() as s:
            user = await s.get(User, user_id)
        assert user is not None
        return user

    async def transactions(self) -> list[PaymentTransaction]:
        async with self.app.state.services.db.session() as s:
            return list((await s.execute(select(PaymentTransaction)
                                         .order_by(PaymentTransaction.id))).scalars())

    async def events(self) -> list[StripeEvent]:
        async with self.app.state.services.db.session() as s:
            return list((await s.execute(select(StripeEvent))).scalars())


def settings_for(stripe_fake: FakeStripe, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        database_url=database_url, dev_guest=False, stripe_api_key=API_KEY,
        stripe_webhook_secret=SECRET, stripe_api_base=stripe_fake.base_url, stripe_prices=PRICES)
    return make_settings(None, **(values | overrides))


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the PostgreSQL scenarios parametrize this


@pytest.fixture
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    async with blank_database(backend, tmp_path) as url:  # the app migrates it at startup
        yield url


@pytest.fixture
async def stripe_fake() -> AsyncIterator[FakeStripe]:
    async with FakeStripe(api_key=API_KEY) as server:
        yield server


@pytest.fixture
async def pay(database_url: str, stripe_fake: FakeStripe,
              start_server: Server) -> AsyncIterator[Payments]:
    address = await start_server(settings_for(stripe_fake, database_url))
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as http:
        yield Payments(start_server.apps[-1], stripe_fake, http)


both_backends = pytest.mark.parametrize("backend", BACKENDS)


# -- checkout and portal -------------------------------------------------------------------

async def test_checkout_creates_one_customer_and_a_session_for_the_tier_price(pay: Payments):
    sam = await pay.user(name="Sam Student")
    r = await pay.post(sam, "/api/payments/checkout", {"tier": "pro"})
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["tier"] == "pro" and first["seats"] == 1
    assert first["url"].startswith("https://checkout.stripe.com/") and first["id"] in first["url"]

    customers = [params for method, path, params in pay.stripe.requests
                 if (method, path) == ("POST", "/v1/customers")]
    assert len(customers) == 1
    assert customers[0]["metadata"] == {"user_id": sam.id}
    assert customers[0]["name"] == "Sam Student" and customers[0]["email"].endswith("@example.com")
    customer_id = (await pay.row(sam.id)).stripe_customer_id
    assert customer_id in pay.stripe.customers

    session = pay.stripe.checkout_sessions[first["id"]]
    assert session["mode"] == "subscription" and session["customer"] == customer_id
    assert session["client_reference_id"] == sam.id
    assert session["metadata"] == {"user_id": sam.id, "tier": "pro"}
    assert pay.stripe.session_line_items[first["id"]] == [{"price": "price_pro", "quantity": 1}]
    assert pay.stripe.session_subscription_data[first["id"]]["metadata"] == {
        "user_id": sam.id, "tier": "pro"}
    assert session["success_url"].startswith(str(pay.http.base_url).rstrip("/") + "/?checkout=")

    # A second checkout (say, the first tab was closed) reuses the customer.
    second = await pay.checkout(sam)
    assert second != first["id"]
    assert pay.stripe.checkout_sessions[second]["customer"] == customer_id
    assert sum(1 for m, p, _ in pay.stripe.requests if (m, p) == ("POST", "/v1/customers")) == 1
    assert len(pay.stripe.customers) == 1

    # A double click by a new user: two sessions, one customer (Stripe's idempotency key).
    ada = await pay.user(name="Ada")
    sessions = await asyncio.gather(pay.checkout(ada), pay.checkout(ada))
    customer_id = (await pay.row(ada.id)).stripe_customer_id
    assert len(pay.stripe.customers) == 2
    assert {pay.stripe.checkout_sessions[i]["customer"] for i in sessions} == {customer_id}


async def test_checkout_refuses_what_is_not_for_sale_and_reports_stripe_failures(
        pay: Payments):
    sam = await pay.user()
    for body in ({"tier": "gold"}, {"tier": "free"}, {"tier": "unlimited"}, {}, {"tier": 3},
                 {"tier": "pro", "seats": 2},          # pro is not sold per seat
                 {"tier": "school", "seats": 0}, {"tier": "school", "seats": "2"},
                 {"tier": "school", "seats": True}, {"tier": "school", "seats": 10_001}):
        r = await pay.post(sam, "/api/payments/checkout", body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["code"] == "invalid_request"
    r = await pay.http.post("/api/payments/checkout", json={"tier": "pro"})  # no credentials
    assert r.status_code == 401
    assert pay.stripe.requests == []  # nothing reached Stripe, no customer was made
    assert (await pay.row(sam.id)).stripe_customer_id is None

    pay.stripe.failures = ["500", "500"]  # Stripe is down (the SDK retries once)
    r = await pay.post(sam, "/api/payments/checkout", {"tier": "pro"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "payment_provider_error", r.text
    assert (await pay.row(sam.id)).stripe_customer_id is None
    assert (await pay.post(sam, "/api/payments/checkout", {"tier": "pro"})).status_code == 201


async def test_without_stripe_configured_payments_answer_503(stripe_fake: FakeStripe,
                                                             start_server, tmp_path: Path):
    async def server(**overrides: Any) -> Payments:
        url = f"sqlite+aiosqlite:///{tmp_path}/{secrets.token_hex(4)}.db"
        address = await start_server(settings_for(stripe_fake, url, **overrides))
        http = httpx.AsyncClient(base_url=f"http://{address}", timeout=10)
        return Payments(start_server.apps[-1], stripe_fake, http)

    pay = await server(stripe_api_key=None, stripe_webhook_secret=None)
    async with pay.http:
        sam = await pay.user()
        for path in ("/api/payments/checkout", "/api/payments/portal"):
            r = await pay.post(sam, path, {"tier": "pro"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "not_configured", r.text
        assert (await pay.deliver("invoice.paid", {"id": "in_1"})).status_code == 503
        assert (await pay.usage(sam))["tier"] == "free"  # the plans still work
        assert (await pay.get(sam, "/api/payments/transactions")).json()["transactions"] == []
    assert stripe_fake.requests == []

    pay = await server(stripe_webhook_secret=None)  # checkout works, the webhook cannot
    async with pay.http:
        sam = await pay.user()
        _, sub = await pay.subscribe(sam, deliver=False)
        r = await pay.deliver("customer.subscription.created", sub)
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_configured"
        assert await pay.events() == [] and (await pay.row(sam.id)).tier == "free"


async def test_portal_needs_a_customer_first(pay: Payments):
    sam = await pay.user()
    r = await pay.post(sam, "/api/payments/portal")
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert pay.stripe.portal_sessions == {}
    await pay.checkout(sam)
    r = await pay.post(sam, "/api/payments/portal")
    assert r.status_code == 201, r.text
    assert r.json()["url"].startswith("https://billing.stripe.com/")
    (portal,) = pay.stripe.portal_sessions.values()
    assert portal["id"] == r.json()["id"]
    assert portal["customer"] == (await pay.row(sam.id)).stripe_customer_id
    assert portal["return_url"] == str(pay.http.base_url).rstrip("/") + "/"


# -- webhooks ------------------------------------------------------------------------------

@both_backends
async def test_a_paid_checkout_makes_the_user_pro_and_logs_the_payments(pay: Payments):
    sam = await pay.user()
    before = await pay.usage(sam)
    assert before["tier"] == "free" and before["subscription"]["status"] is None
    session_id = await pay.checkout(sam)
    sub = pay.stripe.complete_checkout(session_id)
    session = pay.stripe.checkout_sessions[session_id]

    r = await pay.deliver("checkout.session.completed", session)
    assert r.status_code == 200, r.text
    assert r.json() | {"id": None} == {"status": "processed", "id": None, "tier": "pro",
                                       "type": "checkout.session.completed", "user_id": sam.id}
    # The state came from Stripe, not from the event (asked again once written, see below).
    assert pay.fetches(sub["id"]) == 2
    user = await pay.row(sam.id)
    assert (user.tier, user.subscription_id, user.subscription_status, user.subscription_price) \
        == ("pro", sub["id"], "active", "price_pro")
    assert aware(user.period_end).timestamp() == sub["current_period_end"]
    assert (user.cancel_at_period_end, user.grace_until, user.seats) == (False, None, None)

    invoice = pay.stripe.invoices[sub["latest_invoice"]]
    r = await pay.deliver("invoice.paid", invoice)
    assert r.status_code == 200 and r.json()["status"] == "processed", r.text

    rows = await pay.transactions()
    assert [(t.event_type, t.user_id, t.amount, t.currency, t.status, t.tier, t.stripe_object_id)
            for t in rows] == [
        ("checkout.session.completed", sam.id, 1500, "usd", "paid", "pro", session_id),
        ("invoice.paid", sam.id, 1500, "usd", "paid", "pro", invoice["id"])]
    assert {e.id for e in await pay.events()} == {t.stripe_event_id for t in rows}

    listed = (await pay.get(sam, "/api/payments/transactions")).json()
    assert [(t["event_type"], t["amount"], t["status"]) for t in listed["transactions"]] == [
        ("invoice.paid", 1500, "paid"), ("checkout.session.completed", 1500, "paid")]
    assert listed["next_before"] is None
    for limit in ("1", "0", "-3"):  # fewer than one is one
        page = (await pay.get(sam, f"/api/payments/transactions?limit={limit}")).json()
        assert [t["event_type"] for t in page["transactions"]] == ["invoice.paid"], limit
        assert page["next_before"] == page["transactions"][0]["id"], limit
    rest = (await pay.get(sam, f"/api/payments/transactions?before={page['next_before']}")).json()
    assert [t["event_type"] for t in rest["transactions"]] == ["checkout.session.completed"]
    other = await pay.user()  # nobody else sees them
    assert (await pay.get(other, "/api/payments/transactions")).json()["transactions"] == []

    usage = await pay.usage(sam)
    assert (usage["tier"], usage["own_tier"]) == ("pro", "pro")
    assert usage["subscription"]["status"] == "active"
    assert usage["subscription"]["price"] == "price_pro"
    assert usage["voice"]["minutes_per_day"] == 300


async def test_forged_tampered_or_stale_deliveries_change_nothing(pay: Payments):
    sam = await pay.user()
    _, sub = await pay.subscribe(sam, deliver=False)  # Stripe has it; we have not been told
    event = pay.event("customer.subscription.created", sub)
    body, headers = pay.signed(event)
    now = int(time.time())
    attempts = {
        "wrong secret": pay.signed(event, secret="whsec_someone_else"),
        "tampered body": (body.replace(b'"livemode": false', b'"livemode": true'), headers),
        "missing header": (body, {"Content-Type": "application/json"}),
        "garbage header": (body, {"Stripe-Signature": "t=soon,v1=abc"}),
        "stale": pay.signed(event, timestamp=now - 301 - 5),
        "future": pay.signed(event, timestamp=now + 301 + 5),
        "another event's signature": (body, pay.signed(pay.event("invoice.paid", {}))[1]),
    }
    for name, (b, h) in attempts.items():
        r = await pay.post_webhook(b, h)
        assert r.status_code == 400, (name, r.text)
        assert r.json()["error"]["code"] == "invalid_signature", name
    assert await pay.events() == [] and await pay.transactions() == []
    assert (await pay.row(sam.id)).tier == "free"
    assert pay.fetches(sub["id"]) == 0  # refused before anything was asked of Stripe

    # Not a signature problem: a signed body that is not an event is a 400 of its own.
    r = await pay.post_webhook(*pay.stripe.signed({"id": "x"}, SECRET))  # type: ignore[arg-type]
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"

    # The timestamp that counts is the signed one (the first), as in Stripe's SDK: a second,
    # unsigned `t` neither breaks the check (a 500) nor moves it.
    future = int(time.time()) + 3600
    late_body, late_headers = pay.signed(event, timestamp=future)
    r = await pay.post_webhook(late_body, {
        **late_headers, "Stripe-Signature": late_headers["Stripe-Signature"] + f",t={now}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_signature", r.text
    assert await pay.events() == [] and (await pay.row(sam.id)).tier == "free"
    r = await pay.post_webhook(body, {**headers,
                                      "Stripe-Signature": headers["Stripe-Signature"] + ",t=x"})
    assert r.status_code == 200 and r.json()["status"] == "processed", r.text
    assert (await pay.row(sam.id)).tier == "pro"
    r = await pay.post_webhook(body, headers)  # the same delivery again: already done
    assert r.json()["status"] == "duplicate"


@both_backends
async def test_a_replayed_or_duplicate_event_is_processed_once(pay: Payments):
    sam = await pay.user()
    _, sub = await pay.subscribe(sam)
    invoice = pay.stripe.invoice(sub["id"])  # the next month's
    event = pay.event("invoice.paid", invoice)
    first = await pay.deliver(event)
    assert first.json()["status"] == "processed"
    # Stripe's retry signs anew; a replayer resends the same bytes.
    again = await pay.post_webhook(*pay.signed(event, timestamp=int(time.time()) - 10))
    assert again.status_code == 200 and again.json() == {"status": "duplicate", "id": event["id"]}

    # The same event arriving several times at once (Stripe retried while we were working).
    racing = pay.event("invoice.paid", pay.stripe.invoice(sub["id"]))
    answers = await asyncio.gather(*(pay.deliver(racing) for _ in range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    assert sorted(a.json()["status"] for a in answers) == ["duplicate"] * 3 + ["processed"]

    rows = await pay.transactions()
    assert sorted(t.stripe_event_id for t in rows if t.event_type == "invoice.paid") \
        == sorted([event["id"], racing["id"]])
    ids = [e.id for e in await pay.events()]
    assert len(ids) == len(set(ids)) == 3  # checkout.session.completed and the two invoices
    assert (await pay.row(sam.id)).tier == "pro"


async def test_events_out_of_order_end_in_what_stripe_says_now(pay: Payments):
    sam = await pay.user()
    _, sub = await pay.subscribe(sam, deliver=False)
    created = pay.event("customer.subscription.created", sub)
    updated = pay.event("customer.subscription.updated",
                        pay.stripe.update_subscription(sub["id"], status="past_due"))
    deleted = pay.event("customer.subscription.deleted", pay.stripe.delete_subscription(sub["id"]))

    # Delivered in the reverse order: each one re-fetches, and the subscription is over.
    for event in (deleted, created, updated):
        r = await pay.deliver(event)
        assert r.status_code == 200 and r.json()["status"] == "processed", r.text
        assert r.json()["tier"] == "free", event["type"]
        user = await pay.row(sam.id)
        assert (user.tier, user.subscription_id, user.subscription_status, user.grace_until) \
            == ("free", sub["id"], "canceled", None), event["type"]
    assert pay.fetches(sub["id"]) == 3 * 2  # each one fetched, and checked once written
    assert [t.status for t in await pay.transactions()] == ["canceled", "active", "past_due"]
    usage = await pay.usage(sam)
    assert (usage["tier"], usage["subscription"]["status"]) == ("free", "canceled")


async def test_a_late_answer_from_stripe_does_not_overwrite_a_newer_state(pay: Payments):
    """Checkout sends several events at once. The first one's fetch answers late, with the
    subscription still `incomplete`; meanwhile it became `active` and that was written. The
    late writer must not leave a paying customer on the free plan."""
    sam = await pay.user()
    _, sub = await pay.subscribe(sam, deliver=False)
    pay.stripe.update_subscription(sub["id"], status="incomplete")
    pay.stripe.hang_seconds = 0.3  # under the app's provider timeout (1 s): slow, not failed
    pay.stripe.failures = ["timeout"]  # for the next request: the slow delivery's fetch
    slow = asyncio.create_task(pay.deliver("customer.subscription.created",
                                           pay.stripe.subscriptions[sub["id"]]))
    while pay.fetches(sub["id"]) == 0:  # its answer (`incomplete`) is taken, and on its way
        await asyncio.sleep(0.005)
    active = pay.stripe.update_subscription(sub["id"], status="active")
    r = await pay.deliver("customer.subscription.updated", active)
    assert r.json()["tier"] == "pro", r.text
    r = await slow
    assert r.status_code == 200 and r.json()["tier"] == "pro", r.text
    user = await pay.row(sam.id)
    assert (user.tier, user.subscription_status) == ("pro", "active")
    assert [t.status for t in await pay.transactions()] == ["active", "incomplete"]


async def test_cancelling_at_period_end_keeps_pro_until_the_subscription_ends(pay: Payments):
    sam = await pay.user()
    _, sub = await pay.subscribe(sam)
    r = await pay.deliver("customer.subscription.updated",
                          pay.stripe.update_subscription(sub["id"], cancel_at_period_end=True))
    assert r.json()["tier"] == "pro", r.text
    user = await pay.row(sam.id)
    assert (user.tier, user.subscription_status, user.cancel_at_period_end) \
        == ("pro", "active", True)
    usage = await pay.usage(sam)
    assert usage["tier"] == "pro" and usage["subscription"]["cancel_at_period_end"] is True
    assert usage["subscription"]["period_end"] == datetime.fromtimestamp(
        sub["current_period_end"], timezone.utc).isoformat()

    r = await pay.deliver("customer.subscription.deleted",
                          pay.stripe.delete_subscription(sub["id"]))
    assert r.json()["tier"] == "free", r.text
    user = await pay.row(sam.id)
    assert (user.tier, user.subscription_status) == ("free", "canceled")
    assert (await pay.usage(sam))["tier"] == "free"


async def test_a_failed_payment_keeps_the_plan_for_the_grace_period_then_downgrades(
        pay: Payments):
    sam = await pay.user()
    _, sub = await pay.subscribe(sam)
    pay.stripe.update_subscription(sub["id"], status="past_due")
    invoice = pay.stripe.invoice(sub["id"], paid=False)
    r = await pay.deliver("invoice.payment_failed", invoice)
    assert r.status_code == 200 and r.json()["tier"] == "pro", r.text

    user = await pay.row(sam.id)
    assert (user.tier, user.subscription_status) == ("pro", "past_due")
    grace = aware(user.grace_until)
    assert grace is not None and abs(grace.timestamp() - (time.time() + 7 * DAY)) < 60
    (failed,) = [t for t in await pay.transactions() if t.event_type == "invoice.payment_failed"]
    assert (failed.status, failed.amount, failed.user_id, failed.tier) \
        == ("payment_failed", 1500, sam.id, "pro")

    # Stripe retries the card and sends the subscription again: the grace period does not restart.
    await pay.deliver("customer.subscription.updated", pay.stripe.subscriptions[sub["id"]])
    assert aware((await pay.row(sam.id)).grace_until) == grace

    usage = await pay.usage(sam)
    assert (usage["tier"], usage["own_tier"]) == ("pro", "pro")
    assert usage["subscription"]["grace_until"] == grace.isoformat()

    # The card works again: the grace period ends; the next failure starts a new one.
    pay.stripe.update_subscription(sub["id"], status="active")
    r = await pay.deliver("invoice.paid", pay.stripe.invoice(sub["id"]))
    assert r.json()["tier"] == "pro", r.text
    user = await pay.row(sam.id)
    assert (user.tier, user.subscription_status, user.grace_until) == ("pro", "active", None)
    pay.stripe.update_subscription(sub["id"], status="past_due")
    await pay.deliver("invoice.payment_failed", pay.stripe.invoice(sub["id"], paid=False))
    assert aware((await pay.row(sam.id)).grace_until) > grace

    pay.app.state.services.billing.clock = lambda: time.time() + 8 * DAY  # the grace period is over
    usage = await pay.usage(sam)
    assert (usage["tier"], usage["own_tier"]) == ("free", "free")
    assert usage["subscription"]["status"] == "past_due"  # Stripe has not given up yet
    assert (await pay.row(sam.id)).tier == "pro"  # stored: the subscription's; effective: free

    r = await pay.deliver("customer.subscription.deleted",
                          pay.stripe.delete_subscription(sub["id"]))
    assert r.json()["tier"] == "free"
    user = await pay.row(sam.id)
    assert (user.tier, user.subscription_status, user.grace_until) == ("free", "canceled", None)


async def test_an_unknown_customer_is_recorded_and_linked_by_a_later_checkout(pay: Payments):
    sam, bystander = await pay.user(), await pay.user()
    await pay.checkout(bystander)  # has a customer of their own
    # A Payment Link: Stripe makes the customer when the checkout completes, not our API.
    http = stripe.HTTPXClient()
    try:
        dashboard = stripe.StripeClient(API_KEY, base_addresses={"api": pay.stripe.base_url},
                                        http_client=http)
        session = await dashboard.v1.checkout.sessions.create_async(params={
            "mode": "subscription", "customer_email": "sam@example.com",
            "client_reference_id": sam.id, "line_items": [{"price": "price_pro", "quantity": 1}],
            "success_url": "https://tutor.example/ok", "cancel_url": "https://tutor.example/no"})
    finally:
        await http.close_async()
    sub = pay.stripe.complete_checkout(session.id)
    customer = sub["customer"]

    # The subscription's events arrive before the session's: nobody has that customer yet.
    for event_type, obj in (("customer.subscription.created", sub),
                            ("invoice.paid", pay.stripe.invoices[sub["latest_invoice"]])):
        r = await pay.deliver(event_type, obj)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "processed" and r.json()["user_id"] is None
    rows = await pay.transactions()
    assert [(t.event_type, t.user_id, t.stripe_customer_id) for t in rows] == [
        ("customer.subscription.created", None, customer), ("invoice.paid", None, customer)]
    assert len(await pay.events()) == 2
    for who in (sam, bystander):
        user = await pay.row(who.id)
        assert (user.tier, user.subscription_id) == ("free", None)
    assert (await pay.row(sam.id)).stripe_customer_id is None

    r = await pay.deliver("checkout.session.completed", pay.stripe.checkout_sessions[session.id])
    assert r.json()["user_id"] == sam.id and r.json()["tier"] == "pro", r.text
    user = await pay.row(sam.id)
    assert (user.tier, user.stripe_customer_id, user.subscription_id) \
        == ("pro", customer, sub["id"])
    assert (await pay.row(bystander.id)).tier == "free"
    # From now on the customer is known.
    r = await pay.deliver("invoice.paid", pay.stripe.invoice(sub["id"]))
    assert r.json()["user_id"] == sam.id


async def test_when_stripe_cannot_be_reached_the_event_is_retried_later(pay: Payments):
    sam = await pay.user()
    _, sub = await pay.subscribe(sam, deliver=False)
    delivery = pay.signed(pay.event("customer.subscription.created", sub))
    pay.stripe.failures = ["500", "500"]  # the re-fetch fails (the SDK tries twice)
    r = await pay.post_webhook(*delivery)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "payment_provider_error"
    assert pay.fetches(sub["id"]) == 2
    assert await pay.events() == [] and await pay.transactions() == []
    assert (await pay.row(sam.id)).tier == "free"

    r = await pay.post_webhook(*delivery)  # Stripe's retry
    assert r.status_code == 200 and r.json()["status"] == "processed", r.text
    assert (await pay.row(sam.id)).tier == "pro"
    assert len(await pay.events()) == len(await pay.transactions()) == 1


async def test_a_database_failure_leaves_nothing_half_done(pay: Payments):
    sam = await pay.user()
    _, sub = await pay.subscribe(sam, deliver=False)
    event = pay.event("customer.subscription.created", sub)
    # A leftover row with the event's id: the transaction row cannot be written, so the whole
    # transaction (event id, the user's new tier) must roll back.
    async with pay.app.state.services.db.session() as s, s.begin():
        s.add(PaymentTransaction(stripe_event_id=event["id"], event_type="leftover"))
    r = await pay.deliver(event)
    assert r.status_code == 500 and r.json()["error"]["code"] == "processing_failed", r.text
    assert await pay.events() == []
    user = await pay.row(sam.id)
    assert (user.tier, user.subscription_id, user.stripe_customer_id) \
        == ("free", None, sub["customer"])

    async with pay.app.state.services.db.session() as s, s.begin():
        await s.execute(delete(PaymentTransaction))
    r = await pay.deliver(event)
    assert r.status_code == 200 and r.json()["status"] == "processed", r.text
    assert (await pay.row(sam.id)).tier == "pro"


async def test_a_refund_is_logged_and_other_event_types_are_ignored(pay: Payments):
    sam = await pay.user()
    _, sub = await pay.subscribe(sam)
    charge = pay.stripe.charge_refund(sub["customer"], 1500, invoice=sub["latest_invoice"])
    r = await pay.deliver("charge.refunded", charge)
    assert r.status_code == 200 and r.json()["user_id"] == sam.id, r.text
    (refund,) = [t for t in await pay.transactions() if t.event_type == "charge.refunded"]
    assert (refund.status, refund.amount, refund.currency, refund.user_id) \
        == ("refunded", 1500, "usd", sam.id)
    assert refund.stripe_object_id == charge["id"]
    listed = (await pay.get(sam, "/api/payments/transactions")).json()["transactions"]
    assert (listed[0]["event_type"], listed[0]["status"], listed[0]["amount"]) \
        == ("charge.refunded", "refunded", 1500)
    assert (await pay.row(sam.id)).tier == "pro"  # a refund alone does not end the subscription

    r = await pay.deliver("customer.created", {"id": "cus_x", "object": "customer"})
    assert r.status_code == 200 and r.json()["status"] == "ignored", r.text
    assert [e.type for e in await pay.events()][-1:] == ["customer.created"]
    assert len(await pay.transactions()) == len(await pay.events()) - 1


async def test_a_school_plan_covers_the_first_students_by_seat(pay: Payments):
    teacher = await pay.user(role="teacher", name="Ms Tee")
    students = [await pay.user(name=f"student {n}") for n in range(3)]
    async with pay.app.state.services.db.session() as s, s.begin():
        room = await queries.create_class(s, teacher.id, "Fractions")
    for student in students:  # one by one, so they join in this order
        async with pay.app.state.services.db.session() as s, s.begin():
            await queries.add_student(s, room.id, student.id)
    assert (await pay.usage(students[0]))["tier"] == "free"  # cached as "no seat" for 30 s

    session, sub = await pay.subscribe(teacher, "school", seats=2)
    assert pay.stripe.session_line_items[session["id"]] == [{"price": "price_school",
                                                             "quantity": 2}]
    user = await pay.row(teacher.id)
    assert (user.tier, user.seats, user.subscription_price) == ("school", 2, "price_school")

    tiers = [(await pay.usage(s))["tier"] for s in students]
    assert tiers == ["school", "school", "free"]
    assert [(await pay.usage(s))["own_tier"] for s in students] == ["free"] * 3
    assert (await pay.usage(teacher))["subscription"]["seats"] == 2

    # A third seat bought: the third student is covered at once (the webhook clears the cache).
    r = await pay.deliver("customer.subscription.updated",
                          pay.stripe.update_subscription(sub["id"], quantity=3))
    assert r.status_code == 200, r.text
    assert (await pay.row(teacher.id)).seats == 3
    assert [(await pay.usage(s))["tier"] for s in students] == ["school"] * 3

    await pay.deliver("customer.subscription.deleted", pay.stripe.delete_subscription(sub["id"]))
    user = await pay.row(teacher.id)
    assert (user.tier, user.seats) == ("free", None)
    assert [(await pay.usage(s))["tier"] for s in students] == ["free"] * 3


async def test_checkout_refuses_a_second_subscription_and_seats_for_students(pay: Payments):
    student = await pay.user()
    seats = await pay.post(student, "/api/payments/checkout", {"tier": "school", "seats": 3})
    assert seats.status_code == 403  # a school plan is bought by a teacher
    await pay.subscribe(student)
    again = await pay.post(student, "/api/payments/checkout", {"tier": "pro"})
    assert again.status_code == 409 and "portal" in again.json()["error"]["message"]
    assert sum(1 for m, p, _ in pay.stripe.requests
               if m == "POST" and p == "/v1/checkout/sessions") == 1


async def test_an_event_for_a_subscription_stripe_does_not_have_is_recorded_once(pay: Payments):
    student = await pay.user()
    await pay.subscribe(student)
    ghost = {"id": "sub_ghost", "object": "subscription", "customer": "cus_nobody",
             "status": "canceled", "items": {"data": []}}
    event = pay.event("customer.subscription.deleted", ghost)
    r = await pay.deliver(event)
    assert r.status_code == 200 and r.json()["status"] == "processed"  # no retry loop for days
    assert (await pay.deliver(event)).json()["status"] == "duplicate"  # Stripe's retry: once
    assert (await pay.row(student.id)).tier == "pro"
    assert [t.event_type for t in await pay.transactions()].count(
        "customer.subscription.deleted") == 1


async def test_receipts_and_failed_payments_are_mailed_with_the_event(pay: Payments):
    from store.models import EmailNotification

    student = await pay.user()
    _, sub = await pay.subscribe(student)
    paid = pay.stripe.invoice(sub["id"], paid=True)
    event = pay.event("invoice.paid", paid)
    assert (await pay.deliver(event)).status_code == 200
    assert (await pay.deliver(event)).json()["status"] == "duplicate"
    pay.stripe.update_subscription(sub["id"], status="past_due")
    failed = pay.stripe.invoice(sub["id"], paid=False)
    assert (await pay.deliver("invoice.payment_failed", failed)).status_code == 200
    async with pay.app.state.services.db.session() as s:
        rows = list((await s.execute(select(EmailNotification).where(
            EmailNotification.template.in_(("payment_receipt", "payment_failed")))
            .order_by(EmailNotification.id))).scalars())
    assert [r.template for r in rows] == ["payment_receipt", "payment_failed"]  # once each
    assert rows[0].idempotency_key == f"stripe:{event['id']}" and rows[0].transactional
    assert rows[0].payload["amount"] == paid["amount_paid"]
    assert rows[1].payload["grace_until"] is not None
