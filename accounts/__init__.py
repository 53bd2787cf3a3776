"""Who is calling: sign-in (Google OpenID Connect, Supabase access tokens, API tokens), browser
sessions, single-use WebSocket tickets, and the encryption of secrets kept at rest.

Nothing here touches the database or the web framework: the storage layer and the app wire these
pieces together.
"""
