"""Who is calling: sign-in (Google OpenID Connect, Supabase access tokens, API tokens), browser
sessions, single-use WebSocket tickets, the encryption of secrets kept at rest, the `/api/auth`
routes; and people and roles without SQL: invitations to a role (`invitations`, with their routes
in `invitation_routes`) and the queries behind `tutor users` (`people`).

Much of it is rows in the database, read and written through `store`: users (upserted at sign-in,
with their encrypted refresh token), API tokens (stored hashed), browser sessions (`sessions`: the
cookie carries only an id, checked against its row on every request, so revoking one ends it in
every process), invitations (the link's token stored hashed). Tickets live in Redis or in memory
(`tickets`); Supabase tokens are verified locally against the project's JWKS (`supabase`).
`identity.Authenticator` turns a request or a WebSocket into a user, or an `errors.AuthError` with
a stable code.
"""
