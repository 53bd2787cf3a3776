"""Billing: free and paid tiers, the limits they set, and Stripe subscriptions.

`tiers` defines the plans (voice minutes per day/month, requests per minute per route group,
session length and concurrency, model and features) and maps Stripe prices to them. `meter` is
the pure, clock-free voice meter the live session runs per audio chunk. `quota` keeps the shared
counters (Redis, or in-process when Redis is not configured) and `ratelimit` the per-minute
request limits (the `limits` library), which `middleware` applies to every HTTP route.
`service.Billing` is what routes and the voice socket ask before working and report to after (a
user's effective tier, metered sessions, charges to the counters and to the usage ledger, which
the background writer of `store` records off the hot path). `stripe` makes the checkout and
portal calls and processes the webhook; `routes` holds the HTTP endpoints.
"""
