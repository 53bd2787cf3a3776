"""Who is calling: sign-in (Google OpenID Connect, Supabase access tokens, API tokens), browser
sessions kept server-side (revocable), single-use WebSocket tickets, the encryption of secrets
kept at rest, and the `/api/auth` routes.

`accounts.http` reads a request the same way for every route package (the JSON body within its
limits, paging, path ids, storable text), each refusal with its `error.code`; it imports nothing
of the project, so any package may use it without an upward arrow.
"""
