"""Unsubscribe links: the user id, signed (itsdangerous, HMAC) so that nobody can unsubscribe
someone else by guessing an id. The tokens never expire: an unsubscribe link in a months-old
message must still work (and a leaked one can do no more than unsubscribe its own recipient).
Changing the secret invalidates every link already sent."""

from __future__ import annotations

from urllib.parse import urlencode

from itsdangerous import BadData, URLSafeSerializer

SALT = "tutor-unsubscribe"  # so a token signed for another purpose with the same secret fails


def _serializer(secret: str) -> URLSafeSerializer:
    if not secret:
        raise ValueError("unsubscribe links need a non-empty secret")
    return URLSafeSerializer(secret, salt=SALT)


def make_token(secret: str, user_id: str) -> str:
    if not isinstance(user_id, str) or not user_id:
        raise ValueError(f"not a user id: {user_id!r}")
    return _serializer(secret).dumps(user_id)


def read_token(secret: str, token: str) -> str | None:
    """The user id a token was made for; None when it is forged, altered or garbled (or when
    there is no secret to check it against)."""
    if not secret or not isinstance(token, str) or not token or len(token) > 4096:
        return None
    try:
        value = _serializer(secret).loads(token)
    except BadData:
        return None
    return value if isinstance(value, str) and value else None


def unsubscribe_url(base_url: str, secret: str, user_id: str) -> str:
    """`{base_url}/api/email/unsubscribe?token=...`"""
    return (f"{base_url.rstrip('/')}/api/email/unsubscribe?"
            f"{urlencode({'token': make_token(secret, user_id)})}")
