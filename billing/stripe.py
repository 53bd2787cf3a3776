"""Stripe: Checkout and the customer portal, and the webhook that keeps each user's tier right.

Calls go through the `stripe` SDK's async client (`StripeClient` with its HTTPX transport); the
API base is configurable so tests point it at a loopback fake that speaks Stripe's wire format.

The webhook never trusts event order or content for state. It verifies the signature and its
timestamp on the raw body, records the event id once (a replay changes nothing), and for anything
about a subscription re-fetches the subscription from Stripe and sets the user's tier from what
Stripe says now. The event row, the user's new state and the `payment_transactions` row are
written in one transaction: a failure answers 5xx so Stripe retries, and leaves nothing half done.
Deliveries overlap, so once committed the subscription is fetched again and re-applied if it moved
on meanwhile (a late answer must not overwrite a newer state).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import stripe
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store import queries
from store.models import PaymentTransaction, StripeEvent, User

from .service import Billing
from .tiers import Tier

log = logging.getLogger("tutor.billing.stripe")

HANDLED = {
    "checkout.session.completed", "customer.subscription.created",
    "customer.subscription.updated", "customer.subscription.deleted", "invoice.paid",
    "invoice.payment_failed", "charge.refunded",
}
LIVE = {"active", "trialing", "past_due"}  # a subscription that still grants its tier


class PaymentError(Exception):
    """Stripe could not be reached or refused a call: 502 for the caller, retry for webhooks."""


class WebhookRejected(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), timezone.utc) if value else None


def _date(value: datetime | None) -> str | None:
    return value.date().isoformat() if value else None


def _id(value: Any) -> str | None:
    """An id field that may be expanded into an object."""
    if isinstance(value, dict):
        return value.get("id")
    return value if isinstance(value, str) else None


def subscription_of(event_type: str, obj: dict[str, Any]) -> str | None:
    if event_type.startswith("customer.subscription."):
        return obj.get("id")
    if event_type == "checkout.session.completed":
        return _id(obj.get("subscription"))
    if event_type.startswith("invoice."):
        parent = (obj.get("parent") or {}).get("subscription_details") or {}
        return _id(obj.get("subscription")) or _id(parent.get("subscription"))
    return None


def user_hint(obj: dict[str, Any]) -> str | None:
    """Our user id, as we put it on the checkout session and the subscription's metadata."""
    return obj.get("client_reference_id") or (obj.get("metadata") or {}).get("user_id")


class StripeBilling:
    def __init__(self, billing: Billing, *, api_key: str, webhook_secret: str | None,
                 api_base: str | None = None, tolerance_s: int = 300, grace_days: float = 7.0,
                 timeout_s: float = 20.0, public_url: str | None = None) -> None:
        self.billing = billing
        self.webhook_secret = webhook_secret
        self.tolerance_s = tolerance_s
        self.grace = timedelta(days=grace_days)
        self.public_url = public_url
        self.http = stripe.HTTPXClient(timeout=timeout_s)
        self.client = stripe.StripeClient(
            api_key, base_addresses={"api": api_base} if api_base else None,
            http_client=self.http, max_network_retries=1)

    async def aclose(self) -> None:
        await self.http.close_async()

    # -- checkout and portal ---------------------------------------------------------------
    async def customer_for(self, user: User) -> str:
        """The user's Stripe customer, created once (an idempotency key guards double clicks)."""
        if user.stripe_customer_id:
            return user.stripe_customer_id
        params: dict[str, Any] = {"metadata": {"user_id": user.id}}
        if user.email:
            params["email"] = user.email
        if user.name:
            params["name"] = user.name
        try:
            customer = await self.client.v1.customers.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": f"customer-{user.id}"})
        except stripe.StripeError as exc:
            raise PaymentError(f"Stripe refused to create the customer: {exc}") from exc
        async with self.billing.db.session() as s, s.begin():
            await s.execute(update(User).where(User.id == user.id,
                                               User.stripe_customer_id.is_(None))
                            .values(stripe_customer_id=customer.id))
            stored = (await s.execute(select(User.stripe_customer_id)
                                      .where(User.id == user.id))).scalar_one()
        user.stripe_customer_id = stored
        return stored

    async def checkout(self, user: User, tier: Tier, *, seats: int, base_url: str) -> dict[str, Any]:
        customer = await self.customer_for(user)
        base = (self.public_url or base_url).rstrip("/")
        try:
            session = await self.client.v1.checkout.sessions.create_async(params={
                "mode": "subscription", "customer": customer, "client_reference_id": user.id,
                "line_items": [{"price": tier.stripe_price or "", "quantity": seats}],
                "success_url": base + "/?checkout=success&session_id={CHECKOUT_SESSION_ID}",
                "cancel_url": base + "/?checkout=cancelled",
                "metadata": {"user_id": user.id, "tier": tier.name},
                "subscription_data": {"metadata": {"user_id": user.id, "tier": tier.name}},
            })
        except stripe.StripeError as exc:
            raise PaymentError(f"Stripe refused the checkout session: {exc}") from exc
        return {"id": session.id, "url": session.url, "tier": tier.name, "seats": seats}

    async def portal(self, user: User, *, base_url: str) -> dict[str, Any]:
        assert user.stripe_customer_id
        base = (self.public_url or base_url).rstrip("/")
        try:
            session = await self.client.v1.billing_portal.sessions.create_async(
                params={"customer": user.stripe_customer_id, "return_url": base + "/"})
        except stripe.StripeError as exc:
            raise PaymentError(f"Stripe refused the portal session: {exc}") from exc
        return {"id": session.id, "url": session.url}

    # -- webhook ---------------------------------------------------------------------------
    def verify(self, body: bytes, header: str | None) -> dict[str, Any]:
        if not self.webhook_secret:
            raise WebhookRejected(503, "not_configured", "STRIPE_WEBHOOK_SECRET is not set")
        if not header:
            raise WebhookRejected(400, "invalid_signature", "missing Stripe-Signature header")
        try:
            stripe.WebhookSignature.verify_header(body.decode("utf-8"), header,
                                                  self.webhook_secret, self.tolerance_s)
        except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
            raise WebhookRejected(400, "invalid_signature", str(exc)) from exc
        # The SDK only refuses old timestamps; one far in the future is just as suspect.
        # The first `t`, as the SDK reads it (it has just parsed it as an integer).
        stamp = next(p.split("=", 1)[1] for p in header.split(",") if p.split("=", 1)[0] == "t")
        if int(stamp) > time.time() + self.tolerance_s:
            raise WebhookRejected(400, "invalid_signature", "timestamp is in the future")
        try:
            event = json.loads(body)
        except ValueError as exc:
            raise WebhookRejected(400, "invalid_request", "body is not JSON") from exc
        if not isinstance(event, dict) or not isinstance(event.get("id"), str) \
                or not isinstance((event.get("data") or {}).get("object"), dict):
            raise WebhookRejected(400, "invalid_request", "not a Stripe event")
        return event

    async def handle(self, body: bytes, header: str | None) -> dict[str, Any]:
        """Process one delivery; returns what the response says. Raises `WebhookRejected`
        (bad signature, 4xx: Stripe gives up) or anything else (5xx: Stripe retries)."""
        event = self.verify(body, header)
        etype, obj = event.get("type", ""), event["data"]["object"]
        async with self.billing.db.session() as s:
            if await s.get(StripeEvent, event["id"]) is not None:
                return {"status": "duplicate", "id": event["id"]}
        sub_id = subscription_of(etype, obj) if etype in HANDLED else None
        # the current state, whatever order the events came in
        subscription = await self._fetch(sub_id) if sub_id else None
        if subscription is not None and subscription.get("deleted_at_stripe"):
            subscription = None  # Stripe has no such subscription: record the event, change nothing
        async with self.billing.db.session() as s, s.begin():
            if not await _record_event(s, event):
                return {"status": "duplicate", "id": event["id"]}
            if etype not in HANDLED:
                return {"status": "ignored", "id": event["id"], "type": etype}
            user = await self._user_for(s, obj, subscription)
            tier = None
            if user is not None and subscription is not None:
                tier = self._apply(user, subscription)
            s.add(_transaction(event, user, tier))
            if user is not None and user.email and etype in ("invoice.paid",
                                                             "invoice.payment_failed"):
                await self._mail(s, etype, event["id"], obj, user)  # commits with the rest
        if user is not None and subscription is not None:
            tier = await self._settle(user.id, subscription, tier)
        self.billing._seat_cache.clear()
        return {"status": "processed", "id": event["id"], "type": etype,
                "user_id": user.id if user else None, "tier": tier}

    async def _fetch(self, sub_id: str) -> dict[str, Any]:
        try:
            fetched = await self.client.v1.subscriptions.retrieve_async(sub_id)
        except stripe.InvalidRequestError as exc:
            if exc.code != "resource_missing":
                raise PaymentError(f"could not fetch subscription {sub_id}: {exc}") from exc
            # Retrying could never succeed (a test-mode object, another account's id): say so.
            log.error("Stripe has no subscription %s; the event is recorded and ignored", sub_id)
            return {"id": sub_id, "deleted_at_stripe": True}
        except stripe.StripeError as exc:
            raise PaymentError(f"could not fetch subscription {sub_id}: {exc}") from exc
        return fetched.to_dict()

    async def _settle(self, user_id: str, applied: dict[str, Any], tier: str | None) -> str | None:
        """Deliveries overlap (a checkout sends several events at once), so one whose fetch
        answered late may just have written an older state over a newer one. After committing,
        ask Stripe again and apply until the two agree: the last writer always checks after its
        write, in whichever process, so what stays is what Stripe says after the last write."""
        for _ in range(3):
            try:
                current = await self._fetch(applied["id"])
            except PaymentError as exc:  # the event is recorded; its own state stays
                log.warning("%s; could not confirm the state just written", exc)
                break
            if current == applied or current.get("deleted_at_stripe"):
                break
            async with self.billing.db.session() as s, s.begin():
                user = await s.get(User, user_id)
                if user is None:
                    break
                tier = self._apply(user, current)
            applied = current
        return tier

    async def _mail(self, s: AsyncSession, etype: str, event_id: str, invoice: dict[str, Any],
                    user: User) -> None:
        tier = self.billing.catalog.get(user.tier)
        common = {"name": user.name or "", "currency": invoice.get("currency") or "usd",
                  "tier_label": tier.label or tier.name}
        if etype == "invoice.paid":
            template = "payment_receipt"
            payload = {**common, "amount": invoice.get("amount_paid") or 0,
                       "period_end": _date(user.period_end),
                       "invoice_url": invoice.get("hosted_invoice_url")}
        else:
            template = "payment_failed"
            payload = {**common, "amount": invoice.get("amount_due") or 0,
                       "grace_until": _date(user.grace_until)}
            if self.public_url:  # the web page opens the customer portal from there
                payload["portal_hint"] = self.public_url.rstrip("/") + "/?billing=portal"
        await queries.enqueue_email(s, recipient=user.email or "", template=template,
                                    payload=payload, transactional=True, user_id=user.id,
                                    language=user.language, key=f"stripe:{event_id}")

    async def _user_for(self, s: AsyncSession, obj: dict[str, Any],
                        subscription: dict[str, Any] | None) -> User | None:
        customer = _id(obj.get("customer")) or (subscription or {}).get("customer")
        customer = _id(customer)
        if customer:
            user = (await s.execute(select(User).where(User.stripe_customer_id == customer))
                    ).scalar_one_or_none()
            if user is not None:
                return user
        hint = user_hint(obj) or user_hint(subscription or {})
        user = await s.get(User, hint) if hint else None
        if user is None:
            log.warning("Stripe event for an unknown customer %s; recorded, no user changed",
                        customer)
            return None
        if customer and not user.stripe_customer_id:
            user.stripe_customer_id = customer
        return user

    def _apply(self, user: User, sub: dict[str, Any]) -> str:
        """Set the user's tier from the subscription as Stripe has it now; returns the tier."""
        status = sub.get("status")
        if user.subscription_id and user.subscription_id != sub["id"] and status not in LIVE:
            return user.tier  # an old, ended subscription: the current one decides
        items = (sub.get("items") or {}).get("data") or [{}]
        item = items[0]
        price = _id(item.get("price"))
        catalog = self.billing.catalog
        tier = catalog.for_price(price) if status in LIVE else None
        if status in LIVE and tier is None:
            log.error("subscription %s has price %s, which no tier sells (TUTOR_STRIPE_PRICES)",
                      sub["id"], price)
        user.tier = (tier or catalog.get(None)).name
        user.subscription_id = sub["id"]
        user.subscription_status = status
        user.subscription_price = price
        user.period_end = _ts(item.get("current_period_end") or sub.get("current_period_end"))
        user.cancel_at_period_end = bool(sub.get("cancel_at_period_end"))
        user.seats = int(item.get("quantity") or 1) if tier is not None and tier.per_seat else None
        if status == "past_due":
            user.grace_until = user.grace_until or datetime.now(timezone.utc) + self.grace
        else:
            user.grace_until = None
        return user.tier


async def _record_event(s: AsyncSession, event: dict[str, Any]) -> bool:
    """Insert the event id; False when it is already there (a concurrent duplicate delivery)."""
    result = await s.execute(queries.dialect_insert(s)(StripeEvent).values(
        id=event["id"], type=str(event.get("type", ""))[:100], created=event.get("created"),
        processed_at=datetime.now(timezone.utc)).on_conflict_do_nothing(index_elements=["id"]))
    return bool(result.rowcount)


def _transaction(event: dict[str, Any], user: User | None, tier: str | None) -> PaymentTransaction:
    etype, obj = event["type"], event["data"]["object"]
    amount = status = None
    if etype == "invoice.paid":
        amount, status = obj.get("amount_paid"), "paid"
    elif etype == "invoice.payment_failed":
        amount, status = obj.get("amount_due"), "payment_failed"
    elif etype == "charge.refunded":
        amount, status = obj.get("amount_refunded"), "refunded"
    elif etype == "checkout.session.completed":
        amount, status = obj.get("amount_total"), obj.get("payment_status") or "completed"
    else:
        status = obj.get("status")
    return PaymentTransaction(
        user_id=user.id if user else None, stripe_event_id=event["id"], event_type=etype,
        stripe_customer_id=_id(obj.get("customer")), stripe_object_id=obj.get("id"),
        amount=amount, currency=obj.get("currency"), status=status, tier=tier,
        payload={"object": obj.get("object"), "id": obj.get("id"), "created": event.get("created")})
