"""Browser sessions, kept on the server: the signed cookie carries only a session id
(`{"sid": …}`), and every request that presents it checks the row in `browser_sessions`. So
signing out, or revoking a session from another browser, ends it at once, in every process (there
is no cache to expire: one primary-key query, joined to the user, which the cookie path needed
anyway). A cookie of the old scheme (`{"uid": …}`, before migration 0008) is refused: the user
signs in again.

`last_seen_at` is written at most once a minute per session (`touch_due`), not on every request.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.requests import HTTPConnection, Request

from api.services import services
from store import queries
from store.db import Database
from store.models import BrowserSession, User

from .errors import AuthError

SESSION_KEY = "sid"
OLD_SESSION_KEY = "uid"  # the cookie of the old scheme: the user id itself, no server record
TOUCH_EVERY = timedelta(seconds=60)


def touch_due(last_seen: datetime, at: datetime, every: timedelta = TOUCH_EVERY) -> bool:
    """Whether a request at `at` should record itself as the session's last use."""
    return at - queries.aware(last_seen) >= every


def ended() -> AuthError:
    return AuthError("session_ended", "this sign-in has ended (signed out, revoked, expired, or "
                     "made before an upgrade): sign in again")


def session_id(conn: HTTPConnection) -> str | None:
    """The id of the browser session the request's cookie carries, if any."""
    if "session" not in conn.scope:
        return None
    sid = conn.session.get(SESSION_KEY)
    return sid if isinstance(sid, str) else None


async def cookie_user(db: Database, conn: HTTPConnection, max_age: timedelta) -> User | None:
    """The user of the request's session cookie; None without one; AuthError (and the cookie
    cleared) for an ended session or a cookie of the old scheme."""
    if "session" not in conn.scope:
        return None
    if OLD_SESSION_KEY in conn.session:
        conn.session.clear()
        raise ended()
    sid = session_id(conn)
    if sid is None:
        return None
    async with db.session() as s:
        found = await queries.browser_session_user(s, sid, max_age=max_age)
    if found is None:
        conn.session.clear()
        raise ended()
    record, user = found
    at = datetime.now(timezone.utc)
    if touch_due(record.last_seen_at, at):
        async with db.session() as s, s.begin():
            await queries.touch_browser_session(s, sid)
    return user


async def sign_in(request: Request, user: User) -> None:
    """Start a browser session for `user` and put (only) its id in the cookie."""
    shared = services(request)
    async with shared.db.session() as s, s.begin():
        record = await queries.start_browser_session(
            s, user.id, user_agent=request.headers.get("user-agent"),
            max_age=timedelta(seconds=shared.settings.session_max_age_s))
    request.session.clear()
    request.session[SESSION_KEY] = record.id


async def sign_out(request: Request) -> None:
    """Revoke the request's browser session and clear the cookie."""
    sid = session_id(request)
    if sid is not None:
        async with services(request).db.session() as s, s.begin():
            await queries.revoke_browser_sessions(s, None, only=sid)
    request.session.clear()


def session_json(record: BrowserSession, current: str | None) -> dict[str, Any]:
    return {"id": record.id, "created_at": queries.aware(record.created_at).isoformat(),
            "last_seen_at": queries.aware(record.last_seen_at).isoformat(),
            "user_agent": record.user_agent, "current": record.id == current}
