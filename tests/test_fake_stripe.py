"""The fake Stripe behaves like Stripe to the real `stripe` SDK (async client over httpx).

Customers, Checkout and the billing portal through the SDK's own calls; Stripe's side played
with the control methods; errors raising the SDK's exception classes; webhook deliveries that
the SDK's verifier accepts, and refuses once tampered with.
"""

from __future__ import annotations

import time
from typing import AsyncIterator

import pytest
import pytest_asyncio
import stripe

from tests.fake_stripe import API_VERSION, FakeStripe, parse_form

SECRET = "whsec_test"


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    async with FakeStripe() as server:
        yield server


def client_for(fake: FakeStripe, key: str = "sk_test_123",
               timeout: float = 5) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": fake.base_url},
                               http_client=stripe.HTTPXClient(timeout=timeout),
                               max_network_retries=0)


async def checkout(client: stripe.StripeClient, customer: str,
                   **extra: object) -> stripe.checkout.Session:
    return await client.v1.checkout.sessions.create_async(params={
        "mode": "subscription", "customer": customer, "client_reference_id": "u1",
        "line_items": [{"price": "price_pro", "quantity": 1}],
        "success_url": "http://x/ok", "cancel_url": "http://x/cancel",
        "metadata": {"user_id": "u1"}, "subscription_data": {"metadata": {"user_id": "u1"}},
        **extra})


def test_form_keys_nest_back_into_dicts_and_lists() -> None:
    pairs = [("line_items[0][price]", "p1"), ("line_items[0][quantity]", "2"),
             ("line_items[1][price]", "p2"), ("metadata[user_id]", "u1"), ("expand[]", "a"),
             ("expand[]", "b"), ("mode", "subscription")]
    assert parse_form(pairs) == {"line_items": [{"price": "p1", "quantity": "2"}, {"price": "p2"}],
                                 "metadata": {"user_id": "u1"}, "expand": ["a", "b"],
                                 "mode": "subscription"}


async def test_a_checkout_becomes_a_subscription_the_sdk_can_read(fake: FakeStripe) -> None:
    client = client_for(fake)
    cust = await client.v1.customers.create_async(
        params={"email": "a@b.c", "metadata": {"user_id": "u1"}})
    assert cust.id.startswith("cus_") and cust.object == "customer" and cust.livemode is False
    cs = await checkout(client, cust.id)
    assert cs.id.startswith("cs_test_") and cs.url.startswith("https://")
    assert (cs.mode, cs.customer, cs.client_reference_id, cs.status, cs.subscription) == (
        "subscription", cust.id, "u1", "open", None)
    assert cs.amount_total == 1500 and cs.metadata.to_dict() == {"user_id": "u1"}

    # what went over the wire: form-encoded, bracketed keys, parsed back; the SDK's headers
    method, path, params = fake.requests[-1]
    assert (method, path) == ("POST", "/v1/checkout/sessions")
    assert params["line_items"] == [{"price": "price_pro", "quantity": "1"}]
    assert params["subscription_data"] == {"metadata": {"user_id": "u1"}}
    headers = fake.request_headers[-1]
    assert headers["authorization"] == "Bearer sk_test_123"
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert headers["stripe-version"] == API_VERSION and headers["idempotency-key"]

    sub = fake.complete_checkout(cs.id, quantity=3)
    got = await client.v1.subscriptions.retrieve_async(sub["id"])
    item = got["items"].data[0]
    assert (got.status, got.customer) == ("active", cust.id)
    assert (item.price.id, item.quantity) == ("price_pro", 3)
    assert item.price.unit_amount == 1500 and item.price.recurring.interval == "month"
    assert item.current_period_end == got.current_period_end == sub["current_period_end"]
    assert got.current_period_end - got.current_period_start == 30 * 24 * 3600
    assert got.metadata.to_dict() == {"user_id": "u1"}  # from subscription_data, not the session
    assert got.latest_invoice.startswith("in_")

    done = await client.v1.checkout.sessions.retrieve_async(cs.id,
                                                            params={"expand": ["line_items"]})
    assert (done.status, done.payment_status, done.subscription) == ("complete", "paid", sub["id"])
    assert done.line_items.data[0].price.id == "price_pro"

    portal = await client.v1.billing_portal.sessions.create_async(
        params={"customer": cust.id, "return_url": "http://x/"})
    assert portal.id.startswith("bps_") and portal.url.startswith("https://")
    assert portal.return_url == "http://x/"
    again = await client.v1.customers.retrieve_async(cust.id)
    assert (again.email, again.metadata.to_dict()) == ("a@b.c", {"user_id": "u1"})
    price = await client.v1.prices.retrieve_async("price_school")
    assert (price.unit_amount, price.currency, price.type) == (900, "usd", "recurring")


async def test_a_session_with_only_an_email_creates_the_customer_on_completion(
        fake: FakeStripe) -> None:
    client = client_for(fake)
    cs = await client.v1.checkout.sessions.create_async(params={
        "mode": "subscription", "customer_email": "new@b.c", "success_url": "http://x/ok",
        "line_items": [{"price": "price_school", "quantity": 25}]})
    assert cs.customer is None and cs.amount_total == 900 * 25
    sub = fake.complete_checkout(cs.id, status="trialing")
    customer = fake.customers[sub["customer"]]
    assert customer["email"] == "new@b.c"
    assert sub["status"] == "trialing" and sub["items"]["data"][0]["quantity"] == 25
    assert fake.checkout_sessions[cs.id]["customer"] == customer["id"]
    with pytest.raises(ValueError):
        fake.complete_checkout(cs.id)  # a session completes once


async def test_unknown_ids_are_404_resource_missing(fake: FakeStripe) -> None:
    client = client_for(fake)
    with pytest.raises(stripe.InvalidRequestError) as raised:
        await client.v1.subscriptions.retrieve_async("sub_nope")
    error = raised.value
    assert (error.http_status, error.code, error.param) == (404, "resource_missing", "id")
    assert "No such subscription: 'sub_nope'" in str(error)
    with pytest.raises(stripe.InvalidRequestError) as raised:
        await client.v1.customers.retrieve_async("cus_nope")
    assert raised.value.http_status == 404


async def test_bad_params_are_400_and_create_nothing(fake: FakeStripe) -> None:
    client = client_for(fake)
    cust = await client.v1.customers.create_async(params={"email": "a@b.c"})
    with pytest.raises(stripe.InvalidRequestError) as raised:
        await client.v1.checkout.sessions.create_async(params={
            "mode": "subscription", "customer": cust.id, "success_url": "http://x/ok"})
    assert (raised.value.http_status, raised.value.param) == (400, "line_items")
    with pytest.raises(stripe.InvalidRequestError) as raised:
        await checkout(client, cust.id, line_items=[{"price": "price_gold", "quantity": 1}])
    assert (raised.value.code, raised.value.param) == ("resource_missing", "line_items[0][price]")
    with pytest.raises(stripe.InvalidRequestError) as raised:
        await checkout(client, cust.id, customer_email="a@b.c")
    assert "only specify one" in str(raised.value)
    with pytest.raises(stripe.InvalidRequestError) as raised:  # not one of the SDK's params
        await checkout(client, cust.id, subscription_metadata={"a": "b"})
    assert (raised.value.code, raised.value.param) == ("parameter_unknown", "subscription_metadata")
    assert fake.checkout_sessions == {}


async def test_a_wrong_key_raises_authentication_error(fake: FakeStripe) -> None:
    with pytest.raises(stripe.AuthenticationError) as raised:
        await client_for(fake, key="sk_test_wrong").v1.customers.create_async(
            params={"email": "a@b.c"})
    assert raised.value.http_status == 401 and "Invalid API Key" in str(raised.value)
    assert fake.customers == {} and len(fake.requests) == 1


async def test_failures_are_consumed_one_per_request(fake: FakeStripe) -> None:
    client = client_for(fake, timeout=0.2)
    fake.failures[:] = ["500", "timeout"]
    fake.hang_seconds = 5  # cut short when the client hangs up
    with pytest.raises(stripe.APIError) as raised:
        await client.v1.customers.create_async(params={"email": "a@b.c"})
    assert raised.value.http_status == 500 and fake.customers == {}  # refused before any work

    started = time.perf_counter()
    with pytest.raises(stripe.APIConnectionError):
        await client.v1.customers.create_async(params={"email": "a@b.c"},
                                               options={"idempotency_key": "k1"})
    assert time.perf_counter() - started < 1
    # a slow answer, not a lost request: the customer exists, and a retry with the same key
    # replays it instead of creating a second one
    assert len(fake.customers) == 1
    again = await client.v1.customers.create_async(params={"email": "a@b.c"},
                                                   options={"idempotency_key": "k1"})
    assert list(fake.customers) == [again.id] and fake.failures == []
    with pytest.raises(stripe.IdempotencyError):
        await client.v1.customers.create_async(params={"email": "other@b.c"},
                                               options={"idempotency_key": "k1"})


async def test_control_methods_keep_subscriptions_consistent(fake: FakeStripe) -> None:
    client = client_for(fake)
    cust = await client.v1.customers.create_async(params={"email": "a@b.c"})
    sub = fake.create_subscription(cust.id, "price_pro", metadata={"user_id": "u1"})
    end = sub["current_period_end"] + 3600
    fake.update_subscription(sub["id"], price="price_school", quantity=4, current_period_end=end,
                             cancel_at_period_end=True, status="past_due")
    got = await client.v1.subscriptions.retrieve_async(sub["id"], params={"expand": ["customer"]})
    item = got["items"].data[0]
    assert (got.status, got.cancel_at_period_end, got.cancel_at) == ("past_due", True, end)
    assert (item.price.id, item.quantity, item.current_period_end) == ("price_school", 4, end)
    assert got.customer.email == "a@b.c"  # expanded

    unpaid = fake.invoice(sub["id"], paid=False)
    assert (unpaid["status"], unpaid["amount_due"], unpaid["amount_paid"]) == ("open", 3600, 0)
    assert unpaid["parent"]["subscription_details"]["subscription"] == sub["id"]
    assert unpaid["lines"]["data"][0]["pricing"]["price_details"]["price"] == "price_school"
    assert fake.subscriptions[sub["id"]]["latest_invoice"] == unpaid["id"]
    refund = fake.charge_refund(cust.id, 3600, invoice=unpaid["id"])
    assert refund["id"].startswith("ch_") and refund["refunded"] is True
    assert refund["amount_refunded"] == 3600

    gone = fake.delete_subscription(sub["id"])
    assert gone["status"] == "canceled" and gone["ended_at"] is not None
    assert (await client.v1.subscriptions.retrieve_async(sub["id"])).status == "canceled"


async def test_a_signed_event_verifies_and_a_tampered_one_does_not(fake: FakeStripe) -> None:
    customer = fake.create_customer("a@b.c")
    sub = fake.create_subscription(customer["id"], "price_pro", metadata={"user_id": "u1"})
    event = fake.event("customer.subscription.updated",
                       fake.update_subscription(sub["id"], status="past_due"),
                       previous_attributes={"status": "active"})
    assert event["id"].startswith("evt_") and event["data"]["object"] is not sub
    body, headers = fake.signed(event, SECRET)
    assert headers["Stripe-Signature"].startswith("t=") and ",v1=" in headers["Stripe-Signature"]

    verified = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], SECRET,
                                              tolerance=300)
    assert (verified.id, verified.type) == (event["id"], "customer.subscription.updated")
    assert isinstance(verified.data.object, stripe.Subscription)
    assert verified.data.object.status == "past_due"
    assert verified.data.object.metadata["user_id"] == "u1"
    via_client = client_for(fake).construct_event(body, headers["Stripe-Signature"], SECRET)
    assert via_client.data.object.id == sub["id"]

    tampered = body.replace(b'"past_due"', b'"active"')
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered, headers["Stripe-Signature"], SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], "whsec_other")
    old_body, old_headers = fake.signed(event, SECRET, timestamp=int(time.time()) - 600)
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.Webhook.construct_event(old_body, old_headers["Stripe-Signature"], SECRET,
                                       tolerance=300)
