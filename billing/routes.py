"""HTTP routes of billing: plans, usage, Stripe checkout/portal/transactions, and the webhook.

- `GET /api/billing/tiers`: the plans on offer (public).
- `GET /api/billing/usage`: the caller's tier, usage and what is left.
- `POST /api/payments/checkout` {"tier": "pro", "seats"?: n}: a Stripe Checkout session URL.
- `POST /api/payments/portal`: a Stripe customer portal URL.
- `GET /api/payments/transactions?limit=&before=`: the caller's payment log, newest first.
- `POST /api/payments/webhook`: Stripe's events (signature-checked; no user credentials).
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from accounts.routes import require_user
from api.errors import ApiError
from api.request import body_bytes, json_body, page_args
from api.services import services
from store.models import PaymentTransaction

from .stripe import LIVE, PaymentError, StripeBilling, WebhookRejected

log = logging.getLogger("tutor.billing")


def _payments(request: Request) -> StripeBilling:
    payments = services(request).payments
    if payments is None:
        raise ApiError(503, "not_configured", "payments are not configured (STRIPE_API_KEY, "
                       "TUTOR_STRIPE_PRICES, STRIPE_WEBHOOK_SECRET)")
    return payments


async def tiers(request: Request) -> Response:
    return JSONResponse({"tiers": services(request).billing.catalog.public()})


async def usage(request: Request) -> Response:
    user = await require_user(request)
    return JSONResponse(await services(request).billing.usage(user))


async def checkout(request: Request) -> Response:
    user = await require_user(request)
    payments = _payments(request)
    body = await json_body(request, empty_ok=True)
    catalog = services(request).billing.catalog
    name = body.get("tier")
    tier = catalog.tiers.get(name) if isinstance(name, str) else None
    if tier is None or not tier.stripe_price:
        on_sale = [t.name for t in catalog.tiers.values() if t.stripe_price]
        raise ApiError(400, "invalid_request", f"'tier' must be one of {on_sale}", field="tier")
    seats = body.get("seats", 1)
    if isinstance(seats, bool) or not isinstance(seats, int) or not 1 <= seats <= 10_000:
        raise ApiError(400, "invalid_request", "'seats' must be an integer from 1 to 10000",
                       field="seats")
    if seats != 1 and not tier.per_seat:
        raise ApiError(400, "invalid_request", f"the {tier.name} plan is not sold per seat",
                       field="seats")
    if tier.per_seat and user.role not in ("teacher", "admin"):
        raise ApiError(403, "forbidden",
                       f"the {tier.name} plan is bought by a teacher for their classes")
    if user.subscription_id and user.subscription_status in LIVE:
        raise ApiError(409, "conflict", "there is a subscription already: change or cancel it in "
                       "the customer portal (POST /api/payments/portal)")
    try:
        session = await payments.checkout(user, tier, seats=seats, base_url=str(request.base_url))
    except PaymentError as exc:
        raise ApiError(502, "payment_provider_error", str(exc)) from exc
    return JSONResponse(session, status_code=201)


async def portal(request: Request) -> Response:
    user = await require_user(request)
    payments = _payments(request)
    if not user.stripe_customer_id:
        raise ApiError(409, "conflict", "there is no billing account yet: subscribe through "
                       "POST /api/payments/checkout first")
    try:
        session = await payments.portal(user, base_url=str(request.base_url))
    except PaymentError as exc:
        raise ApiError(502, "payment_provider_error", str(exc)) from exc
    return JSONResponse(session, status_code=201)


async def transactions(request: Request) -> Response:
    user = await require_user(request)
    limit, before_id = page_args(request)
    query = select(PaymentTransaction).where(PaymentTransaction.user_id == user.id)
    if before_id is not None:
        query = query.where(PaymentTransaction.id < before_id)
    query = query.order_by(PaymentTransaction.id.desc()).limit(limit)
    async with services(request).db.session() as s:
        rows = list((await s.execute(query)).scalars())
    items = [{"id": r.id, "event_type": r.event_type, "stripe_event_id": r.stripe_event_id,
              "object_id": r.stripe_object_id, "amount": r.amount, "currency": r.currency,
              "status": r.status, "tier": r.tier, "created_at": r.created_at.isoformat()}
             for r in rows]
    return JSONResponse({"transactions": items,
                         "next_before": items[-1]["id"] if len(items) == limit else None})


async def webhook(request: Request) -> Response:
    payments = _payments(request)
    body = await body_bytes(request, services(request).settings.max_json_bytes)
    try:
        result = await payments.handle(body, request.headers.get("stripe-signature"))
    except WebhookRejected as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc
    except PaymentError as exc:
        raise ApiError(503, "payment_provider_error", f"{exc}; retry later") from exc
    except Exception as exc:
        log.exception("webhook processing failed")
        raise ApiError(500, "processing_failed",
                       "the event could not be processed; retry later") from exc
    return JSONResponse(result)


routes = [
    Route("/api/billing/tiers", tiers),
    Route("/api/billing/usage", usage),
    Route("/api/payments/checkout", checkout, methods=["POST"]),
    Route("/api/payments/portal", portal, methods=["POST"]),
    Route("/api/payments/transactions", transactions),
    Route("/api/payments/webhook", webhook, methods=["POST"]),
]
