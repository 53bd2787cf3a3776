"""`Billing`: what the routes and the voice socket ask before doing work, and what they report after.

It resolves a user's effective tier (their own subscription, a school seat, the grace period of a
failed payment), applies per-minute request limits, opens and closes metered voice sessions,
charges voice and chat use to the shared counters and the ledger, and reports usage. It never
blocks the voice loop: the socket calls it when a session opens and from background tasks.

When Redis is configured but unreachable, limits fail open (the request or session goes on, a
warning is logged and `store_failures` counts it) and unrecorded voice charges are kept by the
session's meter and retried: a tutor that stops talking because a cache is down is worse than a
few unmetered seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from sqlalchemy import func, select

from api.errors import ApiError
from store.db import Database
from store.models import ClassMember, Classroom, User

from .meter import VoiceLimits, VoiceMeter, VoiceUsage
from .quota import QuotaStore, day_key, month_key, seconds_to_next_day, seconds_to_next_month
from .ratelimit import Decision, RequestLimiter
from .tiers import Tier, TierCatalog

log = logging.getLogger("tutor.billing")

# WebSocket close codes (4000-4999 are the application's); documented in docs/billing.md.
CLOSE_QUOTA_EXCEEDED = 4402
CLOSE_SESSION_EXPIRED = 4408
CLOSE_TOO_MANY = 4429


class QuotaError(ApiError):
    """A refusal: an HTTP status for routes (answered with `Retry-After` when waiting helps), a
    close code for sockets, one error code for both."""

    def __init__(self, code: str, message: str, *, status: int, close_code: int,
                 retry_after_s: int | None = None) -> None:
        super().__init__(status, code, message, headers=None if retry_after_s is None
                         else {"Retry-After": str(retry_after_s)})
        self.close_code = close_code
        self.retry_after_s = retry_after_s


def rate_limited(decision: Decision, group: str) -> QuotaError:
    return QuotaError("rate_limited",
                      f"too many '{group}' requests: {decision.limit} a minute; retry in "
                      f"{decision.retry_after_s} s", status=429, close_code=CLOSE_TOO_MANY,
                      retry_after_s=decision.retry_after_s)


def quota_exceeded(message: str, retry_after_s: int | None = None) -> QuotaError:
    return QuotaError("quota_exceeded", message, status=402, close_code=CLOSE_QUOTA_EXCEEDED,
                      retry_after_s=retry_after_s)


@dataclass
class VoiceGrant:
    """What an opened voice session may do: its tier and its meter."""

    tier: Tier
    meter: VoiceMeter
    chat_used: int


def _aware(t: datetime | None) -> datetime | None:
    return t if t is None or t.tzinfo else t.replace(tzinfo=timezone.utc)


class Billing:
    def __init__(self, db: Database, catalog: TierCatalog, quotas: QuotaStore,
                 limiter: RequestLimiter, *, ledger: Callable[[dict[str, Any]], None] | None = None,
                 anonymous_rpm: int | None = 60, meter_step_ms: int = 1000,
                 session_ttl_s: float = 120.0, default_model: str | None = None,
                 large_model: str | None = None, guest_tier: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.catalog = catalog
        self.quotas = quotas
        self.limiter = limiter
        self.ledger = ledger  # hands a usage row to the background writer
        self.anonymous_rpm = anonymous_rpm
        self.meter_step_ms = meter_step_ms
        self.session_ttl_s = session_ttl_s
        self.default_model = default_model
        self.large_model = large_model
        self.guest_tier = guest_tier
        self.clock = clock
        self.store_failures = 0
        self.on_store_failure: Callable[[], None] | None = None  # /metrics counts them too
        # (user id, tier, "day"|"month", used ms, limit ms, percent, at): queue a notice
        self.on_voice_threshold: Callable[..., Awaitable[None]] | None = None
        self.warning_percent = 80
        self._seat_cache: dict[str, tuple[float, str | None]] = {}

    # -- tiers -----------------------------------------------------------------------------
    def own_tier(self, user: User, at: float | None = None) -> Tier:
        """The user's subscription tier; the default plan once a failed payment's grace ended."""
        grace = _aware(user.grace_until)
        at = self.clock() if at is None else at
        if user.auth_provider == "guest" and self.guest_tier:
            return self.catalog.get(self.guest_tier)
        if grace is not None and grace.timestamp() <= at:
            return self.catalog.get(None)
        return self.catalog.get(user.tier)

    async def tier_of(self, user: User) -> Tier:
        own = self.own_tier(user)
        seat = await self._seat_tier(user)
        return self.catalog.best(own.name, seat) if seat else own

    def chat_model(self, tier: Tier) -> str | None:
        if tier.chat_model == "large":
            return self.large_model or self.default_model
        return tier.chat_model or self.default_model

    async def _seat_tier(self, user: User) -> str | None:
        """A per-seat plan bought by a teacher covers the first `seats` students of their classes
        (by when they joined). Cached for 30 s per user."""
        per_seat = [t.name for t in self.catalog.tiers.values() if t.per_seat]
        if not per_seat:
            return None
        at = self.clock()
        cached = self._seat_cache.get(user.id)
        if cached and cached[0] > at:
            return cached[1]
        tier = None
        async with self.db.session() as s:
            teachers = select(Classroom.teacher_id).join(
                ClassMember, ClassMember.class_id == Classroom.id).where(ClassMember.user_id == user.id)
            rows = (await s.execute(select(User).where(User.id.in_(teachers),
                                                       User.tier.in_(per_seat),
                                                       User.seats > 0))).scalars()
            for teacher in rows:
                if self.own_tier(teacher, at).name != teacher.tier:
                    continue  # the teacher's subscription lapsed
                students = (await s.execute(
                    select(ClassMember.user_id, func.min(ClassMember.joined_at).label("joined"))
                    .join(Classroom, Classroom.id == ClassMember.class_id)
                    .where(Classroom.teacher_id == teacher.id)
                    .group_by(ClassMember.user_id)
                    .order_by("joined", ClassMember.user_id)
                    .limit(teacher.seats))).scalars().all()
                if user.id in students:
                    tier = teacher.tier
                    break
        if len(self._seat_cache) > 10_000:
            self._seat_cache.clear()
        self._seat_cache[user.id] = (at + 30, tier)
        return tier

    # -- request limits --------------------------------------------------------------------
    async def check_request(self, group: str, user: User | None, client: str) -> Decision | None:
        """Counts one request of `group`; raises `QuotaError` (429) when over the limit."""
        if user is not None:
            tier = await self.tier_of(user)
            who, per_minute = f"u:{user.id}", tier.rpm(group)
        else:
            who, per_minute = f"ip:{client}", self.anonymous_rpm
        try:
            decision = await self.limiter.hit(group, who, per_minute)
        except Exception as exc:
            self.store_failed("rate limit", exc)
            return None
        if not decision.allowed:
            raise rate_limited(decision, group)
        return decision

    async def take_chat(self, user: User, tier: Tier) -> None:
        """One typed question against the daily allowance; raises `QuotaError` (402) when spent."""
        try:
            used = await self.quotas.take_chat(user.id, tier.chat_messages_per_day, self.clock())
        except Exception as exc:
            self.store_failed("chat quota", exc)
            return
        if used is None:
            raise quota_exceeded(
                f"the {tier.label or tier.name} plan's {tier.chat_messages_per_day} typed "
                "questions for today are used up; more tomorrow (UTC) or upgrade",
                int(seconds_to_next_day(self.clock())))
        self._ledger(user.id, None, "chat", 1, tier)

    # -- voice sessions --------------------------------------------------------------------
    async def open_voice(self, user: User, session_id: str) -> VoiceGrant:
        """Refuses (`QuotaError`) when the plan's minutes are spent or too many sessions are live."""
        tier = await self.tier_of(user)
        limits = VoiceLimits(*tier.voice_limits_ms())
        at = self.clock()
        try:
            usage = await self.quotas.voice_usage(user.id, at)
            chat_used = await self.quotas.chat_used(user.id, at)
        except Exception as exc:
            self.store_failed("voice quota", exc)
            usage, chat_used = VoiceUsage(), 0
        meter = VoiceMeter(limits, usage, step_ms=self.meter_step_ms)
        if meter.exhausted:
            raise quota_exceeded(self.exhausted_message(tier),
                                 int(self.reset_seconds(tier, usage, at)))
        try:
            ok = await self.quotas.acquire_session(user.id, session_id,
                                                   tier.max_concurrent_sessions,
                                                   self.session_ttl_s, at)
        except Exception as exc:
            self.store_failed("session count", exc)
            ok = True
        if not ok:
            raise QuotaError("too_many_sessions",
                             f"the {tier.label or tier.name} plan allows "
                             f"{tier.max_concurrent_sessions} voice session(s) at a time; close "
                             "another one first", status=429, close_code=CLOSE_TOO_MANY,
                             retry_after_s=int(self.session_ttl_s))
        return VoiceGrant(tier, meter, chat_used)

    async def check_voice(self, user: User) -> Tier:
        """Before a ticket is issued: refuses (402) when the plan's minutes are spent."""
        tier = await self.tier_of(user)
        at = self.clock()
        try:
            usage = await self.quotas.voice_usage(user.id, at)
        except Exception as exc:
            self.store_failed("voice quota", exc)
            return tier
        if VoiceLimits(*tier.voice_limits_ms()).remaining_ms(usage) == 0:
            raise quota_exceeded(self.exhausted_message(tier),
                                 int(self.reset_seconds(tier, usage, at)))
        return tier

    async def keep_voice(self, user_id: str, session_id: str) -> None:
        try:
            await self.quotas.refresh_session(user_id, session_id, self.session_ttl_s, self.clock())
        except Exception as exc:
            self.store_failed("session count", exc)

    async def close_voice(self, user_id: str, session_id: str) -> None:
        try:
            await self.quotas.release_session(user_id, session_id)
        except Exception as exc:
            self.store_failed("session count", exc)

    async def charge_voice(self, user_id: str, session_id: str, tier: Tier, ms: int) -> VoiceUsage:
        """Adds received audio to the shared counters (raises if they cannot be reached: the
        caller keeps the amount) and to the ledger."""
        at = self.clock()
        usage = await self.quotas.charge_voice(user_id, ms, at)
        self._ledger(user_id, session_id, "voice_ms", ms, tier)
        if self.on_voice_threshold is not None:
            day_limit, month_limit = tier.voice_limits_ms()
            for period, used, limit in (("day", usage.day_ms, day_limit),
                                        ("month", usage.month_ms, month_limit)):
                if limit is None:
                    continue
                for percent in (self.warning_percent, 100):
                    if used - ms < limit * percent / 100 <= used:  # this charge crossed it
                        try:
                            await self.on_voice_threshold(user_id, tier, period, used, limit,
                                                          percent, at)
                        except Exception:
                            log.exception("quota notice for %s could not be queued", user_id)
        return usage

    def exhausted_message(self, tier: Tier) -> str:
        return (f"the {tier.label or tier.name} plan's voice minutes are used up "
                f"({_minutes(tier.voice_minutes_per_day)} a day, "
                f"{_minutes(tier.voice_minutes_per_month)} a month); upgrade or come back later")

    def reset_seconds(self, tier: Tier, usage: VoiceUsage, at: float) -> float:
        """When the binding limit resets: the month's if it is spent, else the day's."""
        limits = VoiceLimits(*tier.voice_limits_ms())
        if limits.month_ms is not None and usage.month_ms >= limits.month_ms:
            return seconds_to_next_month(at)
        return seconds_to_next_day(at)

    def rate_limits(self, grant: VoiceGrant) -> list[dict[str, Any]]:
        """The entries of a `rate_limits.updated` event, from the session's meter (no I/O)."""
        at = self.clock()
        tier, meter = grant.tier, grant.meter
        limits = meter.limits
        binding = [v for v in (limits.day_ms, limits.month_ms) if v is not None]
        entries: list[dict[str, Any]] = []
        if binding:
            left = meter.remaining_ms or 0
            entries.append({"name": "voice_seconds", "limit": min(binding) // 1000,
                            "remaining": left // 1000,
                            "reset_seconds": round(self.reset_seconds(tier, meter.used, at), 1)})
        if tier.chat_messages_per_day is not None:
            entries.append({"name": "requests", "limit": tier.chat_messages_per_day,
                            "remaining": max(0, tier.chat_messages_per_day - grant.chat_used),
                            "reset_seconds": round(seconds_to_next_day(at), 1)})
        return entries

    # -- reporting -------------------------------------------------------------------------
    async def usage(self, user: User) -> dict[str, Any]:
        tier = await self.tier_of(user)
        at = self.clock()
        voice = await self.quotas.voice_usage(user.id, at)
        chat_used = await self.quotas.chat_used(user.id, at)
        limits = VoiceLimits(*tier.voice_limits_ms())
        remaining = limits.remaining_ms(voice)
        requests = {}
        for group in sorted({*tier.requests_per_minute, "ai", "rag", "voice"} - {"default"}):
            d = await self.limiter.peek(group, f"u:{user.id}", tier.rpm(group))
            requests[group] = {"limit_per_minute": tier.rpm(group),
                               "remaining": d.remaining if tier.rpm(group) is not None else None}
        return {
            "tier": tier.name, "tier_label": tier.label, "own_tier": self.own_tier(user).name,
            "day": day_key(at), "month": month_key(at),
            "voice": {
                "used_today_seconds": round(voice.day_ms / 1000, 1),
                "used_this_month_seconds": round(voice.month_ms / 1000, 1),
                "minutes_per_day": tier.voice_minutes_per_day,
                "minutes_per_month": tier.voice_minutes_per_month,
                "remaining_seconds": None if remaining is None else round(remaining / 1000, 1),
                "resets_in_seconds": round(self.reset_seconds(tier, voice, at)),
                "max_session_minutes": tier.max_session_minutes,
                "max_concurrent_sessions": tier.max_concurrent_sessions,
            },
            "chat": {"used_today": chat_used, "per_day": tier.chat_messages_per_day,
                     "remaining": None if tier.chat_messages_per_day is None
                     else max(0, tier.chat_messages_per_day - chat_used)},
            "requests": requests,
            "features": tier.features,
            "subscription": {
                "status": user.subscription_status, "price": user.subscription_price,
                "period_end": _iso(user.period_end),
                "cancel_at_period_end": bool(user.cancel_at_period_end),
                "grace_until": _iso(user.grace_until), "seats": user.seats,
            },
        }

    # -- helpers ---------------------------------------------------------------------------
    def _ledger(self, user_id: str, session_id: str | None, kind: str, amount: int,
                tier: Tier) -> None:
        if self.ledger is not None:
            self.ledger({"user_id": user_id, "session_id": session_id, "kind": kind,
                         "amount": int(amount), "tier": tier.name,
                         "created_at": datetime.now(timezone.utc)})

    def store_failed(self, what: str, exc: BaseException) -> None:
        self.store_failures += 1
        if self.on_store_failure is not None:
            self.on_store_failure()
        log.warning("%s store unavailable (%s: %s); allowing the request", what,
                    exc.__class__.__name__, exc)


def _minutes(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:g} min"


def _iso(t: datetime | None) -> str | None:
    t = _aware(t)
    return t.isoformat() if t else None


__all__ = ["Billing", "QuotaError", "VoiceGrant", "CLOSE_QUOTA_EXCEEDED", "CLOSE_SESSION_EXPIRED",
           "CLOSE_TOO_MANY"]
