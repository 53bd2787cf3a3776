"""Who is calling: sign-in (Google OpenID Connect, Supabase access tokens, API tokens), browser
sessions, single-use WebSocket tickets, the encryption of secrets kept at rest, and the
`/api/auth` routes.

Much of it is rows in the database, read and written through `store`: users (upserted at sign-in,
with their encrypted refresh token), API tokens (stored hashed), and browser sessions
(`sessions`: the cookie carries only an id, checked against its row on every request, so
revoking one ends it in every process). Tickets live in Redis or in memory (`tickets`); Supabase
tokens are verified locally against the project's JWKS (`supabase`). `identity.Authenticator`
turns a request or a WebSocket into a user, or an `errors.AuthError` with a stable code.
"""
