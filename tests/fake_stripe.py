"""A loopback stand-in for the Stripe API, speaking the real wire protocol.

The real `stripe` SDK talks to it unchanged (`StripeClient(key, base_addresses={"api":
fake.base_url}, http_client=stripe.HTTPXClient())`): requests arrive form-encoded with bracketed
keys (`line_items[0][price]`, `metadata[user_id]`) and are parsed back into nested dicts and lists;
answers are JSON objects shaped like Stripe's (id prefixes, `object`, `livemode: false`,
`created`), errors are Stripe's `{"error": {...}}` with the status codes the SDK maps to its
exception classes. Parameters the SDK's own param types do not know are refused, as Stripe does,
and POSTs honour the `Idempotency-Key` (a repeat replays the first answer).

Endpoints: POST /v1/customers, GET /v1/customers/{id}; POST /v1/checkout/sessions,
GET /v1/checkout/sessions/{id} (`expand=["line_items"]` works); POST /v1/billing_portal/sessions;
GET /v1/subscriptions/{id}, /v1/prices/{id}, /v1/invoices/{id}, /v1/charges/{id}. `expand`
of id fields (customer, subscription, latest_invoice, ...) works on all of them.

The test plays Stripe's side with plain methods: `complete_checkout` (the customer paid),
`create_customer`, `create_subscription` / `update_subscription` / `delete_subscription`, `invoice`,
`charge_refund`, and `event` + `signed` to build a webhook delivery signed exactly as Stripe
signs it. It fails on demand: queue "500" or "timeout" in `failures`, consumed one per request.
Every request is recorded in `requests` as (method, path, parsed params).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import secrets
import string
import time
from typing import Any, Callable
from urllib.parse import parse_qsl

import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fake_openai import LoopbackServer

DEFAULT_PRICES: dict[str, dict[str, Any]] = {
    "price_pro": {"unit_amount": 1500, "currency": "usd", "product": "prod_pro",
                  "nickname": "Pro monthly"},
    "price_school": {"unit_amount": 900, "currency": "usd", "product": "prod_school",
                     "nickname": "School, per seat monthly"},
}

PERIOD_S = 30 * 24 * 3600
API_VERSION: str = stripe.api_version  # what this SDK sends as Stripe-Version

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _now() -> int:
    return int(time.time())


# -- form decoding ---------------------------------------------------------------------------

def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding back into nested values: `a[b][0][c]=v` -> {"a": {"b": [{"c": "v"}]}}.

    Leaves stay strings (Stripe coerces per parameter); `a[]=x` appends. A level whose keys are
    all indexes becomes a list in index order.
    """
    root: dict[str, Any] = {}
    for key, value in pairs:
        match = re.fullmatch(r"([^\[\]]+)((?:\[[^\[\]]*\])*)", key)
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))] if match else [key]
        node = root
        for depth, part in enumerate(parts):
            if part == "":
                part = str(len(node))
            if depth == len(parts) - 1:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
    return _listify(root)


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    value = {k: _listify(v) for k, v in value.items()}
    if value and all(k.isdigit() for k in value):
        return [value[k] for k in sorted(value, key=int)]
    return value


# -- errors ----------------------------------------------------------------------------------

class StripeFailure(Exception):
    """An error answer in Stripe's format; raised by handlers, turned into the response."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        error: dict[str, Any] = {"type": type, "message": message}
        if code:
            error["code"] = code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param:
            error["param"] = param
        self.body = {"error": error}


def _missing(kind: str, value: str, param: str = "id") -> StripeFailure:
    status = 404 if param == "id" else 400
    return StripeFailure(status, f"No such {kind}: '{value}'", code="resource_missing", param=param)


def _invalid(param: str, message: str) -> StripeFailure:
    return StripeFailure(400, message, code="parameter_invalid", param=param)


def _allowed(params_type: str) -> frozenset[str] | None:
    """Top-level parameter names of the SDK's own params TypedDict, without request options."""
    try:
        module_name, _, name = params_type.rpartition(".")
        module = __import__(f"stripe.params{module_name and '.' + module_name}", fromlist=[name])
        from stripe._request_options import RequestOptions
        options = set(RequestOptions.__annotations__)
        return frozenset(set(getattr(module, name).__annotations__) - options) | {"expand"}
    except (ImportError, AttributeError):  # an SDK laid out otherwise: accept anything
        return None


class FakeStripe(LoopbackServer):
    def __init__(self, prices: dict[str, dict[str, Any]] | None = None,
                 api_key: str = "sk_test_123") -> None:
        super().__init__()
        self.api_key = api_key
        self.api_version = API_VERSION
        self.prices: dict[str, dict[str, Any]] = {
            pid: _price_object(pid, spec)
            for pid, spec in (DEFAULT_PRICES if prices is None else prices).items()}
        self.customers: dict[str, dict[str, Any]] = {}
        self.checkout_sessions: dict[str, dict[str, Any]] = {}
        self.session_line_items: dict[str, list[dict[str, Any]]] = {}  # price, quantity
        self.session_subscription_data: dict[str, dict[str, Any]] = {}
        self.portal_sessions: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.request_headers: list[dict[str, str]] = []  # parallel to `requests`
        self.failures: list[str] = []  # "500" | "timeout", consumed one per request
        self.hang_seconds = 30.0
        self._idempotent: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {}
        R = Callable[..., dict[str, Any]]
        self._routes: list[tuple[str, re.Pattern[str], R, frozenset[str] | None]] = [
            (method, re.compile(pattern), handler, _allowed(params))
            for method, pattern, handler, params in [
                ("POST", r"/v1/customers", self._create_customer, "CustomerCreateParams"),
                ("GET", r"/v1/customers/([^/]+)", self._get_customer, "CustomerRetrieveParams"),
                ("POST", r"/v1/checkout/sessions", self._create_checkout,
                 "checkout.SessionCreateParams"),
                ("GET", r"/v1/checkout/sessions/([^/]+)", self._get_checkout,
                 "checkout.SessionRetrieveParams"),
                ("POST", r"/v1/billing_portal/sessions", self._create_portal,
                 "billing_portal.SessionCreateParams"),
                ("GET", r"/v1/subscriptions/([^/]+)", self._get("subscription", self.subscriptions),
                 "SubscriptionRetrieveParams"),
                ("GET", r"/v1/prices/([^/]+)", self._get("price", self.prices),
                 "PriceRetrieveParams"),
                ("GET", r"/v1/invoices/([^/]+)", self._get("invoice", self.invoices),
                 "InvoiceRetrieveParams"),
                ("GET", r"/v1/charges/([^/]+)", self._get("charge", self.charges),
                 "ChargeRetrieveParams"),
            ]]
        self.app = Starlette(routes=[
            Route("/{path:path}", self._dispatch,
                  methods=["GET", "POST", "DELETE", "PUT", "PATCH"]),
        ])

    # -- the wire ----------------------------------------------------------------------------
    async def _dispatch(self, request: Request) -> Response:
        method, path = request.method, request.url.path
        raw = (await request.body()).decode() if method == "POST" else request.url.query
        params = parse_form(parse_qsl(raw, keep_blank_values=True))
        self.requests.append((method, path, params))
        self.request_headers.append(dict(request.headers))
        failure = self.failures.pop(0) if self.failures else None
        if failure not in (None, "500", "timeout"):
            raise ValueError(f"unknown failure {failure!r}: use '500' or 'timeout'")
        headers = {"Request-Id": new_id("req_", 14),
                   "Stripe-Version": request.headers.get("stripe-version", self.api_version)}
        if failure == "500":
            return JSONResponse(StripeFailure(500, "An unknown error occurred (fake failure).",
                                              type="api_error").body,
                                status_code=500, headers=headers)
        key = request.headers.get("idempotency-key") if method == "POST" else None
        if key:
            headers["Idempotency-Key"] = key
        try:
            self._authenticate(request.headers.get("authorization"))
            replay = self._replay(key, method, path, params)
            if replay is not None:
                status, body = 200, replay
                headers["Idempotent-Replayed"] = "true"
            else:
                status, body = 200, self._answer(method, path, params)
                if key:
                    self._idempotent[key] = (method, path, params, body)
        except StripeFailure as e:
            status, body = e.status, e.body
            if status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="Stripe"'
        # A timeout is a slow answer, not a lost request: the work above is done (and kept for
        # idempotent replay), as when Stripe is slow and the client gives up.
        if failure == "timeout":
            await self._hang(request)
        return JSONResponse(body, status_code=status, headers=headers)

    def _authenticate(self, authorization: str | None) -> None:
        if not authorization:
            raise StripeFailure(401, "You did not provide an API key. You need to provide your "
                                     "API key in the Authorization header, using Bearer auth "
                                     "(e.g. 'Authorization: Bearer YOUR_SECRET_KEY').")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.api_key:
            shown = token.strip()
            shown = (shown[:8] + "*" * (len(shown) - 12) + shown[-4:]) if len(shown) > 12 else "***"
            raise StripeFailure(401, f"Invalid API Key provided: {shown}")

    def _replay(self, key: str | None, method: str, path: str,
                params: dict[str, Any]) -> dict[str, Any] | None:
        if not key or key not in self._idempotent:
            return None
        first = self._idempotent[key]
        if first[:3] != (method, path, params):
            raise StripeFailure(400, "Keys for idempotent requests can only be used with the same "
                                     "parameters they were first used with. Try using a key other "
                                     f"than '{key}' if you meant to execute a different request.",
                                type="idempotency_error")
        return first[3]

    def _answer(self, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        for route_method, pattern, handler, allowed in self._routes:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                if allowed is not None:
                    for name in params:
                        if name not in allowed:
                            raise StripeFailure(400, f"Received unknown parameter: {name}",
                                                code="parameter_unknown", param=name)
                body = copy.deepcopy(handler(params, *match.groups()))
                expand = params.get("expand") or []
                for field in [expand] if isinstance(expand, str) else expand:
                    self._expand(body, field.split("."), field)
                return body
        raise StripeFailure(404, f"Unrecognized request URL ({method}: {path}). Please see "
                                 "https://stripe.com/docs or we can help at "
                                 "https://support.stripe.com/.")

    async def _hang(self, request: Request) -> None:
        """Wait `hang_seconds`, or less if the client hangs up first."""
        deadline = time.monotonic() + self.hang_seconds
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                return
            await asyncio.sleep(min(0.02, max(deadline - time.monotonic(), 0)))

    def _expand(self, obj: Any, parts: list[str], whole: str) -> None:
        if not isinstance(obj, dict):
            return
        head, rest = parts[0], parts[1:]
        if obj.get("object") == "list" and head == "data":
            for item in obj["data"]:
                if rest:
                    self._expand(item, rest, whole)
            return
        if head not in obj:
            raise StripeFailure(400, f"This property cannot be expanded ({whole}).", param="expand")
        value = obj[head]
        if isinstance(value, str):
            found = self._lookup(value)
            if found is None:
                raise StripeFailure(400, f"This property cannot be expanded ({whole}).",
                                    param="expand")
            obj[head] = value = copy.deepcopy(found)
        if rest:
            self._expand(value, rest, whole)

    def _lookup(self, object_id: str) -> dict[str, Any] | None:
        for store in (self.prices, self.customers, self.subscriptions, self.invoices, self.charges,
                      self.checkout_sessions, self.portal_sessions):
            if object_id in store:
                return store[object_id]
        return None

    # -- endpoints ---------------------------------------------------------------------------
    def _get(self, kind: str, store: dict[str, dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        def handler(params: dict[str, Any], object_id: str) -> dict[str, Any]:
            if object_id not in store:
                raise _missing(kind, object_id)
            return store[object_id]
        return handler

    def _create_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._new_customer(email=params.get("email") or None,
                                  name=params.get("name") or None,
                                  description=params.get("description") or None,
                                  phone=params.get("phone") or None,
                                  metadata=_metadata(params.get("metadata")))

    def _get_customer(self, params: dict[str, Any], customer_id: str) -> dict[str, Any]:
        if customer_id not in self.customers:
            raise _missing("customer", customer_id)
        return self.customers[customer_id]

    def _create_checkout(self, params: dict[str, Any]) -> dict[str, Any]:
        mode = params.get("mode")
        if mode not in ("payment", "subscription", "setup"):
            raise StripeFailure(400, "Missing required param: mode." if not mode else
                                f"Invalid mode: must be one of payment, setup, or subscription",
                                code="parameter_missing" if not mode else "parameter_invalid",
                                param="mode")
        customer, email = params.get("customer") or None, params.get("customer_email") or None
        if customer and email:
            raise StripeFailure(400, "You may only specify one of these parameters: customer, "
                                     "customer_email.", param="customer_email")
        if customer and customer not in self.customers:
            raise _missing("customer", customer, param="customer")
        items = self._line_items(params.get("line_items"), mode)
        for name in ("success_url", "cancel_url", "return_url"):
            url = params.get(name)
            if url is not None and not re.match(r"https?://\S+$", url):
                raise _invalid(name, "Not a valid URL")
        prices = [self.prices[i["price"]] for i in items]
        amount = sum(p["unit_amount"] * i["quantity"] for p, i in zip(prices, items))
        now, session_id = _now(), new_id("cs_test_", 58)
        session = {
            "id": session_id, "object": "checkout.session",
            "after_expiration": None, "allow_promotion_codes": None,
            "amount_subtotal": amount if items else None, "amount_total": amount if items else None,
            "billing_address_collection": None, "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id") or None,
            "created": now, "currency": prices[0]["currency"] if prices else None,
            "customer": customer, "customer_creation": None if customer else "always",
            "customer_details": ({"email": self.customers[customer]["email"]} if customer else
                                 {"email": email} if email else None),
            "customer_email": email, "expires_at": now + 24 * 3600, "invoice": None,
            "livemode": False, "locale": params.get("locale"),
            "metadata": _metadata(params.get("metadata")), "mode": mode,
            "payment_intent": None, "payment_method_types": ["card"],
            "payment_status": "no_payment_required" if mode == "setup" else "unpaid",
            "return_url": params.get("return_url"), "setup_intent": None,
            "status": "open", "subscription": None, "success_url": params.get("success_url"),
            "ui_mode": params.get("ui_mode") or "hosted",
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
        }
        self.checkout_sessions[session_id] = session
        self.session_line_items[session_id] = items
        data = params.get("subscription_data")
        self.session_subscription_data[session_id] = data if isinstance(data, dict) else {}
        return session

    def _line_items(self, raw: Any, mode: str) -> list[dict[str, Any]]:
        if mode == "setup":
            if raw:
                raise _invalid("line_items", "You cannot pass `line_items` in `setup` mode.")
            return []
        if not raw:
            raise StripeFailure(400, f"`line_items` is required in `{mode}` mode.",
                                code="parameter_missing", param="line_items")
        if not isinstance(raw, list) or not all(isinstance(i, dict) for i in raw):
            raise _invalid("line_items", "Invalid array")
        items = []
        for n, item in enumerate(raw):
            price = item.get("price")
            if not price:
                raise StripeFailure(400, f"You must specify either `price` or `price_data` in "
                                         f"`line_items[{n}]` (this fake supports `price` only).",
                                    code="parameter_missing", param=f"line_items[{n}][price]")
            if price not in self.prices:
                raise _missing("price", price, param=f"line_items[{n}][price]")
            if "quantity" not in item:
                raise StripeFailure(400, f"Quantity is required. Add `quantity` to "
                                         f"`line_items[{n}]`", code="parameter_missing",
                                    param=f"line_items[{n}][quantity]")
            quantity = _int(item["quantity"], f"line_items[{n}][quantity]")
            if quantity < 1:
                raise _invalid(f"line_items[{n}][quantity]",
                               "This value must be greater than or equal to 1.")
            items.append({"price": price, "quantity": quantity})
        recurring = [self.prices[i["price"]]["type"] == "recurring" for i in items]
        if mode == "payment" and any(recurring):
            raise _invalid("line_items", "You specified `payment` mode but passed a recurring "
                                         "price. Either switch to `subscription` mode or use only "
                                         "one-time prices.")
        if mode == "subscription" and not any(recurring):
            raise _invalid("line_items", "You must specify at least one recurring price in "
                                         "`subscription` mode when using prices.")
        return items

    def _get_checkout(self, params: dict[str, Any], session_id: str) -> dict[str, Any]:
        if session_id not in self.checkout_sessions:
            raise _missing("checkout.session", session_id)
        session = self.checkout_sessions[session_id]
        expand = params.get("expand") or []
        if "line_items" in expand:  # only there when asked for, as on Stripe
            session = {**session, "line_items": self._line_item_list(session_id)}
        return session

    def _line_item_list(self, session_id: str) -> dict[str, Any]:
        data = []
        for item in self.session_line_items[session_id]:
            price = self.prices[item["price"]]
            amount = price["unit_amount"] * item["quantity"]
            data.append({"id": new_id("li_"), "object": "item", "amount_discount": 0,
                         "amount_subtotal": amount, "amount_tax": 0, "amount_total": amount,
                         "currency": price["currency"],
                         "description": price.get("nickname") or price["product"],
                         "price": copy.deepcopy(price), "quantity": item["quantity"]})
        return {"object": "list", "data": data, "has_more": False,
                "url": f"/v1/checkout/sessions/{session_id}/line_items"}

    def _create_portal(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = params.get("customer")
        if not customer:
            raise StripeFailure(400, "Missing required param: customer.",
                                code="parameter_missing", param="customer")
        if customer not in self.customers:
            raise _missing("customer", customer, param="customer")
        return_url = params.get("return_url")
        if return_url is not None and not re.match(r"https?://\S+$", return_url):
            raise _invalid("return_url", "Not a valid URL")
        session = {"id": new_id("bps_"), "object": "billing_portal.session",
                   "configuration": "bpc_fakeDefaultConfiguration", "created": _now(),
                   "customer": customer, "flow": None, "livemode": False, "locale": None,
                   "on_behalf_of": None, "return_url": return_url,
                   "url": f"https://billing.stripe.com/p/session/test_{new_id('', 40)}"}
        self.portal_sessions[session["id"]] = session
        return session

    # -- Stripe's side, for the tests --------------------------------------------------------
    def create_customer(self, email: str | None = None, *, name: str | None = None,
                        metadata: dict[str, str] | None = None) -> dict[str, Any]:
        """A customer made on Stripe's side (as by the Dashboard or a completed Checkout)."""
        return copy.deepcopy(self._new_customer(email=email, name=name, metadata=metadata))

    def _new_customer(self, *, email: str | None = None, name: str | None = None,
                      description: str | None = None, phone: str | None = None,
                      metadata: dict[str, str] | None = None) -> dict[str, Any]:
        customer = {
            "id": new_id("cus_", 14), "object": "customer", "address": None, "balance": 0,
            "created": _now(), "currency": None, "default_source": None, "delinquent": False,
            "description": description, "discount": None, "email": email,
            "invoice_prefix": new_id("", 8).upper(),
            "invoice_settings": {"custom_fields": None, "default_payment_method": None,
                                 "footer": None, "rendering_options": None},
            "livemode": False, "metadata": metadata or {}, "name": name, "phone": phone,
            "preferred_locales": [], "shipping": None, "tax_exempt": "none", "test_clock": None,
        }
        self.customers[customer["id"]] = customer
        return customer

    def complete_checkout(self, session_id: str, *, status: str = "active",
                          quantity: int | None = None) -> dict[str, Any]:
        """The customer paid: the session completes and a subscription (status `status`) starts
        for its prices; `quantity` overrides the first line item's. Returns the subscription."""
        session = self.checkout_sessions[session_id]
        if session["status"] != "open":
            raise ValueError(f"checkout session {session_id} is {session['status']}, not open")
        if session["mode"] != "subscription":
            raise ValueError(f"checkout session {session_id} is in {session['mode']} mode")
        if not session["customer"]:
            session["customer"] = self._new_customer(email=session["customer_email"])["id"]
        customer = self.customers[session["customer"]]
        items = [dict(i) for i in self.session_line_items[session_id]]
        if quantity is not None:
            items[0]["quantity"] = quantity
        data = self.session_subscription_data[session_id]
        sub = self._new_subscription(customer["id"], [(i["price"], i["quantity"]) for i in items],
                                     status=status, metadata=_metadata(data.get("metadata")))
        paid = status in ("active", "trialing")
        session.update(status="complete", subscription=sub["id"],
                       invoice=sub["latest_invoice"],
                       payment_status="paid" if paid else "unpaid",
                       customer_details={"address": None, "email": customer["email"],
                                         "name": customer["name"], "phone": None,
                                         "tax_exempt": "none", "tax_ids": []})
        return copy.deepcopy(sub)

    def create_subscription(self, customer: str, price: str, *, status: str = "active",
                            quantity: int = 1, metadata: dict[str, str] | None = None,
                            period_end: int | None = None) -> dict[str, Any]:
        if customer not in self.customers:
            raise KeyError(f"no such customer {customer!r}")
        return copy.deepcopy(self._new_subscription(customer, [(price, quantity)], status=status,
                                                    metadata=metadata, period_end=period_end))

    def _new_subscription(self, customer: str, items: list[tuple[str, int]], *, status: str,
                          metadata: dict[str, str] | None = None,
                          period_end: int | None = None) -> dict[str, Any]:
        for price, _ in items:
            if price not in self.prices:
                raise KeyError(f"no such price {price!r}")
        now = _now()
        end = period_end if period_end is not None else now + PERIOD_S
        sub_id = new_id("sub_")
        sub = {
            "id": sub_id, "object": "subscription", "application": None,
            "billing_cycle_anchor": now, "cancel_at": None, "cancel_at_period_end": False,
            "canceled_at": None, "collection_method": "charge_automatically", "created": now,
            "currency": self.prices[items[0][0]]["currency"],
            "current_period_start": now, "current_period_end": end,
            "customer": customer, "default_payment_method": None, "description": None,
            "discounts": [], "ended_at": None,
            "items": {"object": "list", "data": [
                {"id": new_id("si_", 14), "object": "subscription_item", "created": now,
                 "current_period_start": now, "current_period_end": end, "discounts": [],
                 "metadata": {}, "price": copy.deepcopy(self.prices[price]), "quantity": quantity,
                 "subscription": sub_id, "tax_rates": []}
                for price, quantity in items],
                "has_more": False, "total_count": len(items),
                "url": f"/v1/subscription_items?subscription={sub_id}"},
            "latest_invoice": None, "livemode": False, "metadata": dict(metadata or {}),
            "pause_collection": None, "start_date": now, "status": status,
            "trial_end": end if status == "trialing" else None,
            "trial_start": now if status == "trialing" else None,
        }
        self.subscriptions[sub_id] = sub
        self.invoice(sub_id, paid=status in ("active", "trialing"),
                     amount=0 if status == "trialing" else None)
        return sub

    def update_subscription(self, sub_id: str, **changes: Any) -> dict[str, Any]:
        """Change a subscription as Stripe would: `price` and `quantity` apply to its (first)
        item, the period to the top level and every item; other keys are set as given."""
        sub = self.subscriptions[sub_id]
        item = sub["items"]["data"][0]
        now = _now()
        for key, value in changes.items():
            if key == "price":
                if value not in self.prices:
                    raise KeyError(f"no such price {value!r}")
                item["price"] = copy.deepcopy(self.prices[value])
                sub["currency"] = item["price"]["currency"]
            elif key == "quantity":
                item["quantity"] = value
            elif key in ("current_period_start", "current_period_end"):
                sub[key] = value
                for each in sub["items"]["data"]:
                    each[key] = value
            elif key == "metadata":
                sub["metadata"] = dict(value)
            elif key == "cancel_at_period_end":
                sub[key] = bool(value)
                sub["canceled_at"] = now if value else None
            elif key in sub:
                sub[key] = value
            else:
                raise TypeError(f"a subscription has no field {key!r}")
        sub["cancel_at"] = sub["current_period_end"] if sub["cancel_at_period_end"] else None
        if sub["status"] == "canceled":
            sub["canceled_at"] = sub["canceled_at"] or now
            sub["ended_at"] = sub["ended_at"] or now
        return copy.deepcopy(sub)

    def delete_subscription(self, sub_id: str) -> dict[str, Any]:
        """Cancel now (what `customer.subscription.deleted` carries)."""
        sub = self.subscriptions[sub_id]
        now = _now()
        sub.update(status="canceled", ended_at=now, canceled_at=sub["canceled_at"] or now)
        return copy.deepcopy(sub)

    def invoice(self, sub_id: str, *, paid: bool = True,
                amount: int | None = None) -> dict[str, Any]:
        """A finalized invoice for the subscription's current period (paid, or open with the
        amount still due); it becomes the subscription's latest_invoice."""
        sub = self.subscriptions[sub_id]
        customer = self.customers.get(sub["customer"], {})
        invoice_id, now = new_id("in_"), _now()
        first = sub["latest_invoice"] is None
        period = {"start": sub["current_period_start"], "end": sub["current_period_end"]}
        lines = []
        for item in sub["items"]["data"]:
            price = item["price"]
            line_amount = price["unit_amount"] * item["quantity"]
            if amount is not None and len(sub["items"]["data"]) == 1:
                line_amount = amount
            lines.append({
                "id": new_id("il_"), "object": "line_item", "amount": line_amount,
                "currency": price["currency"],
                "description": f"{item['quantity']} × {price.get('nickname') or price['product']}",
                "discountable": True, "discounts": [], "invoice": invoice_id, "livemode": False,
                "metadata": dict(sub["metadata"]),
                "parent": {"type": "subscription_item_details", "invoice_item_details": None,
                           "subscription_item_details": {
                               "invoice_item": None, "proration": False,
                               "proration_details": {"credited_items": None},
                               "subscription": sub_id, "subscription_item": item["id"]}},
                "period": dict(period),
                "pricing": {"type": "price_details",
                            "price_details": {"price": price["id"], "product": price["product"]},
                            "unit_amount_decimal": str(price["unit_amount"])},
                "quantity": item["quantity"],
            })
        total = amount if amount is not None else sum(line["amount"] for line in lines)
        invoice = {
            "id": invoice_id, "object": "invoice", "account_country": "US",
            "amount_due": total, "amount_paid": total if paid else 0,
            "amount_remaining": 0 if paid else total, "attempt_count": 1, "attempted": True,
            "auto_advance": not paid,
            "billing_reason": "subscription_create" if first else "subscription_cycle",
            "collection_method": "charge_automatically", "created": now,
            "currency": sub["currency"], "customer": sub["customer"],
            "customer_email": customer.get("email"), "customer_name": customer.get("name"),
            "description": None, "due_date": None,
            "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_fake/test_{new_id('', 40)}",
            "invoice_pdf": f"https://pay.stripe.com/invoice/acct_fake/test_{new_id('', 40)}/pdf",
            "lines": {"object": "list", "data": lines, "has_more": False,
                      "total_count": len(lines), "url": f"/v1/invoices/{invoice_id}/lines"},
            "livemode": False, "metadata": {},
            "next_payment_attempt": None if paid else now + 3 * 24 * 3600,
            "number": f"{customer.get('invoice_prefix', 'FAKE')}-{len(self.invoices) + 1:04d}",
            "parent": {"type": "subscription_details", "quote_details": None,
                       "subscription_details": {"metadata": dict(sub["metadata"]),
                                                "subscription": sub_id}},
            "period_start": period["start"], "period_end": period["end"],
            "status": "paid" if paid else "open",
            "status_transitions": {"finalized_at": now, "marked_uncollectible_at": None,
                                   "paid_at": now if paid else None, "voided_at": None},
            "subscription": sub_id,  # older API versions; newer ones only under parent
            "subtotal": total, "total": total,
        }
        self.invoices[invoice_id] = invoice
        sub["latest_invoice"] = invoice_id
        return copy.deepcopy(invoice)

    def charge_refund(self, customer: str, amount: int, *,
                      invoice: str | None = None) -> dict[str, Any]:
        """A charge refunded in full (what `charge.refunded` carries)."""
        now = _now()
        currency = self.invoices[invoice]["currency"] if invoice in self.invoices else "usd"
        charge = {
            "id": new_id("ch_"), "object": "charge", "amount": amount, "amount_captured": amount,
            "amount_refunded": amount, "balance_transaction": new_id("txn_"),
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "captured": True, "created": now, "currency": currency, "customer": customer,
            "description": None, "disputed": False, "failure_code": None, "failure_message": None,
            "invoice": invoice, "livemode": False, "metadata": {}, "paid": True,
            "payment_intent": new_id("pi_"), "payment_method": new_id("pm_"),
            "receipt_url": None, "refunded": True, "status": "succeeded",
        }
        self.charges[charge["id"]] = charge
        return copy.deepcopy(charge)

    # -- webhooks ----------------------------------------------------------------------------
    def event(self, type: str, obj: dict[str, Any], *, created: int | None = None,
              event_id: str | None = None,
              previous_attributes: dict[str, Any] | None = None) -> dict[str, Any]:
        """A snapshot Event carrying a copy of `obj` as it is now."""
        data: dict[str, Any] = {"object": copy.deepcopy(obj)}
        if previous_attributes is not None:
            data["previous_attributes"] = copy.deepcopy(previous_attributes)
        return {"id": event_id or new_id("evt_"), "object": "event",
                "api_version": self.api_version,
                "created": created if created is not None else _now(), "data": data,
                "livemode": False, "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None}, "type": type}

    def signed(self, event: dict[str, Any], secret: str, *,
               timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
        """The webhook delivery for `event`: Stripe's pretty-printed UTF-8 JSON body and headers
        with a `Stripe-Signature` of `t=<timestamp>,v1=<HMAC-SHA256 of "t.body">`."""
        payload = json.dumps(event, indent=2, ensure_ascii=False)
        header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)
        return payload.encode("utf-8"), {"Stripe-Signature": header,
                                         "Content-Type": "application/json; charset=utf-8"}


def _price_object(price_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    one_time = spec.get("type") == "one_time" or ("recurring" in spec and not spec["recurring"])
    price = {
        "id": price_id, "object": "price", "active": True, "billing_scheme": "per_unit",
        "created": _now(), "currency": "usd", "custom_unit_amount": None, "livemode": False,
        "lookup_key": None, "metadata": {}, "nickname": None, "product": f"prod_{price_id}",
        "recurring": None if one_time else {"interval": "month", "interval_count": 1,
                                            "meter": None, "trial_period_days": None,
                                            "usage_type": "licensed"},
        "tax_behavior": "unspecified", "tiers_mode": None, "transform_quantity": None,
        "type": "one_time" if one_time else "recurring",
    }
    price.update({k: v for k, v in spec.items() if k != "recurring" or v})
    price["unit_amount_decimal"] = str(price["unit_amount"])
    return price


def _metadata(value: Any) -> dict[str, str]:
    """Metadata as sent: a dict of strings; "" (Stripe's "unset") or absent is empty."""
    return {k: v for k, v in value.items() if v != ""} if isinstance(value, dict) else {}


def _int(value: Any, param: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _invalid(param, f"Invalid integer: {value}") from None
