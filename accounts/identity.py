"""Who is calling: resolves a request or a WebSocket to a local user, or refuses.

Credentials, in order: `Authorization: Bearer` (an API token `tt_…`, else a Supabase access
token), the signed session cookie (HTTP only; never for WebSockets, which use tickets; it carries
a server-side session's id, checked on every request: accounts.sessions), and in
dev mode the local guest. An invalid credential of ours is refused, never downgraded to the guest;
but in dev mode a bearer that is not ours at all (the `sk-…` every OpenAI client sends) is ignored,
as local OpenAI-compatible servers ignore it, so any client works on its defaults.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from store import queries
from store.db import Database
from store.models import User

from .errors import AuthError
from .sessions import cookie_user
from .supabase import SupabaseVerifier
from .tickets import TicketStore

log = logging.getLogger("tutor.accounts")


class Authenticator:
    def __init__(self, db: Database, *, supabase: SupabaseVerifier | None, tickets: TicketStore,
                 guest_allowed: bool, allowed_origins: list[str],
                 session_max_age_s: float = 14 * 24 * 3600) -> None:
        self.db = db
        self.session_max_age = timedelta(seconds=session_max_age_s)
        self.supabase = supabase
        self.tickets = tickets
        self.guest_allowed = guest_allowed
        self.allowed_origins = set(allowed_origins)

    async def bearer(self, token: str) -> User:
        if token.startswith(queries.API_TOKEN_PREFIX):
            async with self.db.session() as s:
                user = await queries.user_for_api_token(s, token)
            if user is None:
                raise AuthError("invalid_token", "unknown, expired or revoked API token")
            return user
        if self.supabase is None:
            raise AuthError("invalid_token", "not an API token, and Supabase sign-in is not configured")
        claims = await self.supabase.verify(token)
        meta = claims.get("user_metadata") or {}
        async with self.db.session() as s, s.begin():
            return await queries.upsert_user(
                s, provider="supabase", subject=str(claims["sub"]), email=claims.get("email"),
                name=meta.get("full_name") or meta.get("name"))

    async def guest(self) -> User:
        async with self.db.session() as s, s.begin():
            return await queries.upsert_user(s, provider="guest", subject="local", email=None,
                                             name="Local guest")

    def recognises(self, token: str) -> bool:
        """Whether a bearer token is one of ours, valid or not: an API token, or a JWT when
        Supabase sign-in is configured to check it."""
        return token.startswith(queries.API_TOKEN_PREFIX) or (
            self.supabase is not None and self.supabase.recognises(token))

    async def _bearer_user(self, token: str) -> User | None:
        """The user a bearer token names; None for a bearer ignored in dev mode."""
        if self.guest_allowed and not self.recognises(token):
            return None
        return await self.bearer(token)

    async def user_of(self, conn: HTTPConnection) -> User | None:
        """The caller of an HTTP request; None when there are no credentials (and no guest)."""
        header = conn.headers.get("authorization")
        user = await self._bearer_user(_bearer_token(header)) if header else None
        if user is not None:
            return user
        user = await cookie_user(self.db, conn, self.session_max_age)
        if user is not None:
            return user
        return await self.guest() if self.guest_allowed else None

    async def socket_user(self, conn: HTTPConnection) -> User:
        """The caller of a WebSocket: a ticket (browsers, from an allowed Origin), a bearer token
        (programs), or the dev guest. Cookies are not accepted: any page may open a socket."""
        origin = conn.headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, conn.headers.get("host", "")):
            raise AuthError("origin_not_allowed", f"origin {origin} may not open a voice session")
        ticket = conn.query_params.get("ticket")
        if ticket is not None:
            user_id = await self.tickets.redeem(ticket)
            if user_id is None:
                raise AuthError("invalid_ticket", "the ticket is unknown, used or expired")
            async with self.db.session() as s:
                user = await queries.get_user(s, user_id)
            if user is None:
                raise AuthError("invalid_ticket", "the ticket's user no longer exists")
            return user
        header = conn.headers.get("authorization")
        token = _bearer_token(header) if header else _subprotocol_key(conn)
        user = await self._bearer_user(token) if token else None
        if user is not None:
            return user
        if self.guest_allowed:
            return await self.guest()
        raise AuthError("unauthorized", "sign in: open the socket with ?ticket= from "
                        "POST /api/voice/session, or send Authorization: Bearer <token>")

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Listed origins, or the server's own (same host and port as the request)."""
        return origin in self.allowed_origins or urlsplit(origin).netloc == host


KEY_SUBPROTOCOL = "openai-insecure-api-key."


def _subprotocol_key(conn: HTTPConnection) -> str | None:
    """Browsers cannot set headers on a WebSocket: OpenAI's browser clients offer the key as a
    subprotocol, `openai-insecure-api-key.<key>` (beside `realtime`). Read as a bearer token."""
    offered = conn.headers.get("sec-websocket-protocol") or ""
    for protocol in offered.split(","):
        protocol = protocol.strip()
        if protocol.startswith(KEY_SUBPROTOCOL) and len(protocol) > len(KEY_SUBPROTOCOL):
            return protocol[len(KEY_SUBPROTOCOL):]
    return None


def _bearer_token(header: str) -> str:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("invalid_token", "Authorization must be 'Bearer <token>'")
    return token.strip()


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "name": user.name, "role": user.role,
            "tier": user.tier, "auth_provider": user.auth_provider,
            "created_at": user.created_at.isoformat()}
