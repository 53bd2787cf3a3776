"""What is mailed when, besides what the account and payment code queue in their own
transactions (welcome: `store.queries.upsert_user`; receipts and failed payments:
`billing.stripe`): notices when voice minutes reach the warning level and run out."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from billing.quota import day_key, month_key, seconds_to_next_day, seconds_to_next_month
from billing.tiers import Tier
from store import queries
from store.db import Database
from store.models import User


def quota_notifier(db: Database, upgrade_url: str | None = None):  # type: ignore[no-untyped-def]
    async def notify(user_id: str, tier: Tier, period: str, used_ms: int, limit_ms: int,
                     percent: int, at: float) -> None:
        async with db.session() as s, s.begin():
            user = await s.get(User, user_id)
            if user is None or not user.email or user.email_unsubscribed_at:
                return
            stamp = day_key(at) if period == "day" else month_key(at)
            common: dict[str, Any] = {"name": user.name or "", "period": period,
                                      "limit_minutes": round(limit_ms / 60000, 1),
                                      "tier_label": tier.label or tier.name,
                                      "upgrade_url": upgrade_url}
            if percent >= 100:
                reset = at + (seconds_to_next_day(at) if period == "day"
                              else seconds_to_next_month(at))
                template = "quota_exhausted"
                payload = {**common, "resets_at":
                           datetime.fromtimestamp(reset, timezone.utc).isoformat()}
            else:
                template = "quota_warning"
                payload = {**common, "percent": percent,
                           "used_minutes": round(used_ms / 60000, 1)}
            await queries.enqueue_email(s, recipient=user.email, template=template,
                                        payload=payload, transactional=False, user_id=user.id,
                                        language=user.language,
                                        key=f"quota{percent}:{user.id}:{period}:{stamp}")
    return notify
