"""Plans and what each allows. Defined in configuration; a user's tier comes from their subscription.

The built-in catalogue (`DEFAULT_TIERS`) is what `make run` uses. A deployment replaces or extends
it with `TUTOR_TIERS_FILE` (JSON: {"tiers": {name: {...}}, "default": "free"}) and binds Stripe
prices to tiers with `TUTOR_STRIPE_PRICES` ("pro=price_123,school=price_456").
A limit of `None` means unlimited.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

# Route groups for per-minute request limits; a path belongs to the first prefix it starts with.
ROUTE_GROUPS: tuple[tuple[str, str], ...] = (
    ("/api/ai", "ai"),
    ("/api/rag", "rag"),
    ("/api/voice", "voice"),
    ("/v1/realtime", "voice"),
    ("/api/payments", "payments"),
    ("/api/billing", "billing"),
    ("/api/auth", "auth"),
)
# cheap and for the operator's probes, or authenticated by signature
# Outside request limits: probes, the scraper, Stripe's webhook, the browser client's files.
UNLIMITED_PATHS = ("/healthz", "/readyz", "/metrics", "/api/payments/webhook", "/")
UNLIMITED_PREFIXES = ("/web/",)


def unlimited(path: str) -> bool:
    return path in UNLIMITED_PATHS or path.startswith(UNLIMITED_PREFIXES)


def route_group(path: str) -> str:
    for prefix, group in ROUTE_GROUPS:
        if path == prefix or path.startswith(prefix + "/"):
            return group
    return "default"


class Tier(BaseModel):
    name: str
    label: str = ""
    rank: int = 0  # order of plans, for "upgrade" and for picking the better of two
    voice_minutes_per_day: float | None = None
    voice_minutes_per_month: float | None = None
    chat_messages_per_day: int | None = None  # /api/ai/chat questions, quizzes and summaries
    requests_per_minute: dict[str, int] = Field(default_factory=dict)  # route group → limit
    max_session_minutes: float | None = 60
    max_concurrent_sessions: int | None = 1
    chat_model: str | None = None  # None: LLM_MODEL; "large": LLM_MODEL_LARGE; else a model name
    features: list[str] = Field(default_factory=list)  # e.g. "tts", "speculative"
    tts_voice: str | None = None
    stripe_price: str | None = None  # the Stripe price whose subscription grants this tier
    per_seat: bool = False  # a subscription's quantity is the number of students it covers

    def rpm(self, group: str) -> int | None:
        return self.requests_per_minute.get(group, self.requests_per_minute.get("default"))

    def allows(self, feature: str) -> bool:
        return feature in self.features

    def voice_limits_ms(self) -> tuple[int | None, int | None]:
        def ms(minutes: float | None) -> int | None:
            return None if minutes is None else int(minutes * 60_000)
        return ms(self.voice_minutes_per_day), ms(self.voice_minutes_per_month)


DEFAULT_TIERS: dict[str, dict[str, Any]] = {
    "free": dict(
        label="Free", rank=0, voice_minutes_per_day=10, voice_minutes_per_month=100,
        chat_messages_per_day=50,
        requests_per_minute={"ai": 20, "rag": 30, "voice": 10, "default": 120},
        max_session_minutes=15, max_concurrent_sessions=1, chat_model=None,
        features=[]),
    "pro": dict(
        label="Pro", rank=10, voice_minutes_per_day=300, voice_minutes_per_month=3000,
        chat_messages_per_day=1000,
        requests_per_minute={"ai": 60, "rag": 120, "voice": 30, "default": 300},
        max_session_minutes=120, max_concurrent_sessions=2, chat_model="large",
        features=["tts", "speculative", "semantic_turns"], tts_voice="alloy"),
    "school": dict(
        label="School (per seat)", rank=5, voice_minutes_per_day=60,
        voice_minutes_per_month=600, chat_messages_per_day=300,
        requests_per_minute={"ai": 40, "rag": 60, "voice": 20, "default": 200},
        max_session_minutes=60, max_concurrent_sessions=1, chat_model=None,
        features=["tts", "speculative", "semantic_turns"], tts_voice="alloy", per_seat=True),
    # Not for sale: staff, load tests, and a dev guest who should not run out.
    "unlimited": dict(
        label="Unlimited", rank=100, voice_minutes_per_day=None, voice_minutes_per_month=None,
        chat_messages_per_day=None, requests_per_minute={}, max_session_minutes=None,
        max_concurrent_sessions=None, chat_model=None, features=["tts", "speculative", "semantic_turns"]),
}


MAX_TIER_CHARS = 32


class TierCatalog:
    def __init__(self, tiers: dict[str, Tier], default: str = "free") -> None:
        if default not in tiers:
            raise ValueError(f"default tier {default!r} is not defined")
        too_long = [name for name in tiers if len(name) > MAX_TIER_CHARS]
        if too_long:  # users.tier is String(MAX_TIER_CHARS): the database would refuse it
            raise ValueError(f"tier names have at most {MAX_TIER_CHARS} characters: {too_long[0]!r}")
        self.tiers = tiers
        self.default = default

    def get(self, name: str | None) -> Tier:
        """The tier of that name; an unknown or empty name falls back to the default plan."""
        return self.tiers.get(name or "", self.tiers[self.default])

    def for_price(self, price_id: str | None) -> Tier | None:
        for tier in self.tiers.values():
            if price_id and tier.stripe_price == price_id:
                return tier
        return None

    def best(self, *names: str | None) -> Tier:
        return max((self.get(n) for n in names), key=lambda t: t.rank)

    def fullest(self) -> Tier:
        """The plan with every feature any plan has (the highest ranked of those, or the highest
        ranked plan if none has them all): the dev guest's, so `make run` shows everything."""
        every = {f for t in self.tiers.values() for f in t.features}
        return max(self.tiers.values(), key=lambda t: (every <= set(t.features), t.rank))

    def guest_plan(self, configured: str | None, *, dev_mode: bool) -> str | None:
        """The dev guest's plan: TUTOR_GUEST_TIER if set, else in dev mode the fullest plan, so
        a newcomer's `make run` speaks its answers; None leaves the guest on its own tier."""
        if configured:
            return configured
        return self.fullest().name if dev_mode else None

    @classmethod
    def load(cls, path: Path | None = None, prices: dict[str, str] | None = None) -> "TierCatalog":
        spec: dict[str, Any] = {"tiers": DEFAULT_TIERS, "default": "free"}
        if path is not None:
            spec = json.loads(Path(path).read_text())
        tiers = {name: Tier(name=name, **fields) for name, fields in spec["tiers"].items()}
        for name, price in (prices or {}).items():
            if name not in tiers:
                raise ValueError(f"TUTOR_STRIPE_PRICES names an unknown tier {name!r}")
            tiers[name] = tiers[name].model_copy(update={"stripe_price": price})
        return cls(tiers, spec.get("default", "free"))

    def public(self) -> list[dict[str, Any]]:
        return [t.model_dump(exclude={"stripe_price"}) | {"purchasable": bool(t.stripe_price)}
                for t in sorted(self.tiers.values(), key=lambda t: t.rank)]
