"""Billing: free and paid tiers, the limits they set, and Stripe subscriptions.

`tiers` defines the plans (voice minutes per day/month, requests per minute per route group,
session length and concurrency, model and features) and maps Stripe prices to them. `meter` is
the pure, clock-free voice meter the live session runs per audio chunk. `quota` keeps the shared
counters (Redis, or in-process when Redis is not configured), `ratelimit` the per-minute request
limits (the `limits` library), `usage` the ledger written off the hot path, `stripe` the
checkout/portal calls and webhook processing, and `routes` the HTTP endpoints.
"""
