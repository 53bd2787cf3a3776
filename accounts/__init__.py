"""Who is calling: sign-in (Google OpenID Connect, Supabase access tokens, API tokens), browser
sessions kept server-side (revocable), single-use WebSocket tickets, the encryption of secrets
kept at rest, and the `/api/auth` routes.
"""
