"""Google sign-in with OpenID Connect, through authlib's Starlette client.

authlib keeps state, nonce and the PKCE verifier in the (signed) session between the redirect
and the callback, exchanges the code, and validates the ID token against the provider's JWKS
(signature, issuer, audience, expiry, nonce). We then upsert the user and keep the refresh token,
if any, encrypted.
"""

from __future__ import annotations

from authlib.integrations.starlette_client import OAuth

from .secrets import SecretBox


def google_oauth(*, client_id: str, client_secret: str, discovery_url: str) -> OAuth:
    oauth = OAuth()
    oauth.register(
        name="google",
        client_id=client_id,
        client_secret=client_secret,
        server_metadata_url=discovery_url,
        client_kwargs={"scope": "openid email profile", "code_challenge_method": "S256",
                       "timeout": 10},
    )
    return oauth


def sealed_refresh_token(token: dict, box: SecretBox | None) -> str | None:
    """The refresh token encrypted for storage, or None (none given, or no key to seal it)."""
    refresh = token.get("refresh_token")
    return box.encrypt(refresh) if refresh and box is not None else None
