"""Verifies Supabase Auth access tokens locally, so a signed-in request costs no call to Supabase.

Asymmetric signing keys come from the project's JWKS (cached; fetched again early when a token
names an unknown `kid`, rate-limited, one fetch in flight); HS256 only with the legacy secret.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import httpx
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, ClaimError, ExpiredTokenError, JoseError
from joserfc.jwk import Key, OctKey, import_key

from accounts.errors import AuthError

log = logging.getLogger(__name__)

# What Supabase signs with, and the key type each algorithm needs. Ed25519 appears under its old
# name (EdDSA) and its RFC 9864 name. Anything else, "none" first of all, is refused before a key
# is even looked up.
ASYMMETRIC_ALGORITHMS: dict[str, str] = {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP",
                                         "Ed25519": "OKP"}
LEGACY_ALGORITHM = "HS256"

# A token is parsed before it is trusted; Supabase's are about 1 KB.
MAX_TOKEN_CHARS = 8192
# After a failed fetch, the next try waits this long (or the refresh interval, if shorter): long
# enough not to hammer a struggling endpoint, short enough that a blip at startup heals quickly.
FAILED_FETCH_RETRY_S = 5.0
JWKS_TIMEOUT_S = 5.0


class SupabaseVerifier:
    """Checks a Supabase access token's signature and claims; `verify` returns the claims."""

    def __init__(self, *, jwks_url: str | None, issuer: str | None, legacy_secret: str | None,
                 audience: str = "authenticated", http: httpx.AsyncClient | None = None,
                 cache_ttl_s: float = 600, min_refresh_interval_s: float = 30, leeway_s: int = 30,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if jwks_url is None and not legacy_secret:
            raise ValueError("SupabaseVerifier needs a JWKS URL, a legacy JWT secret, or both")
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.cache_ttl_s = cache_ttl_s
        self.min_refresh_interval_s = min_refresh_interval_s
        # Supabase uses the legacy secret's text as the HMAC key, as is (not base64-decoded).
        self._legacy_key = OctKey.import_key(legacy_secret.encode()) if legacy_secret else None
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=JWKS_TIMEOUT_S)
        self._clock = clock
        claims: dict[str, Any] = {"exp": {"essential": True}, "sub": {"essential": True},
                                  "aud": {"essential": True, "value": audience}}
        if issuer:
            claims["iss"] = {"essential": True, "value": issuer}
        self._claims = jwt.JWTClaimsRegistry(leeway=leeway_s, **claims)
        self._keys: dict[str, Key] = {}
        self._loaded_at: float | None = None  # last successful fetch
        self._fetched_at: float | None = None  # last fetch started, successful or not
        self._last_fetch_failed = False
        self._fetch: asyncio.Task[None] | None = None

    @classmethod
    def from_project_url(cls, url: str, legacy_secret: str | None = None,
                         http: httpx.AsyncClient | None = None, **options: Any) -> SupabaseVerifier:
        """For a project at `url` (https://<ref>.supabase.co): its JWKS and its issuer."""
        base = url.rstrip("/")
        return cls(jwks_url=f"{base}/auth/v1/.well-known/jwks.json", issuer=f"{base}/auth/v1",
                   legacy_secret=legacy_secret, http=http, **options)

    async def aclose(self) -> None:
        """Close the HTTP client if this verifier made it (one passed in belongs to the caller)."""
        if self._owns_http:
            await self._http.aclose()

    def recognises(self, token: str) -> bool:
        """Whether `token` is shaped like what this verifier checks (a signed JWT), good or bad:
        in dev mode, a bearer that is not is someone else's key and is ignored, not refused."""
        try:
            _header(token)
        except AuthError:
            return False
        return True

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims if it is genuine, current and meant for us; otherwise AuthError."""
        header = _header(token)
        alg = header.get("alg")
        key = await self._key_for(alg, header.get("kid"))
        try:
            claims = jwt.decode(token, key, algorithms=[alg]).claims
        except BadSignatureError:
            raise AuthError("invalid_token", "the signature does not verify") from None
        except JoseError as error:
            raise AuthError("invalid_token", error.description or error.error) from None
        self._check(claims)
        return claims

    # -- keys ------------------------------------------------------------------------------
    async def _key_for(self, alg: object, kid: object) -> Key:
        if alg == LEGACY_ALGORITHM:
            if self._legacy_key is None:
                raise AuthError("unsupported_algorithm",
                                "HS256 tokens are refused: no legacy JWT secret is configured")
            return self._legacy_key
        if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS or self.jwks_url is None:
            raise AuthError("unsupported_algorithm", f"tokens signed with {alg!r} are refused")
        if not isinstance(kid, str) or not kid:
            raise AuthError("unknown_key", "the token names no key id")
        key = await self._published_key(kid)
        # A key is only trusted for the algorithm family it was published for.
        if key.key_type != ASYMMETRIC_ALGORITHMS[alg] or key.alg not in (None, alg):
            raise AuthError("invalid_token", f"key {kid!r} is not a {alg} key")
        return key

    async def _published_key(self, kid: str) -> Key:
        if self._loaded_at is None or self._clock() - self._loaded_at >= self.cache_ttl_s:
            if self._may_fetch(due=True):
                await self._refresh()
        key = self._keys.get(kid)
        # An unknown kid may be a key Supabase has just rotated in, or a forgery: look again,
        # but no more often than min_refresh_interval_s whatever the number of such tokens.
        if key is None and self._may_fetch(due=False):
            await self._refresh()
            key = self._keys.get(kid)
        if key is None:
            if self._loaded_at is None:
                raise AuthError("keys_unavailable", "Supabase's signing keys could not be fetched")
            raise AuthError("unknown_key", f"no key {kid!r} in the project's key set")
        return key

    def _may_fetch(self, *, due: bool) -> bool:
        if self._fetch is not None or self._fetched_at is None:
            return True  # joining the fetch in flight costs nothing
        since = self._clock() - self._fetched_at
        if self._last_fetch_failed:
            return since >= min(FAILED_FETCH_RETRY_S, self.min_refresh_interval_s)
        return due or since >= self.min_refresh_interval_s

    async def _refresh(self) -> None:
        # Every caller waits on the same fetch; shield() keeps it going for the others when one
        # of them is cancelled (a client hanging up mid-request).
        if self._fetch is None:
            self._fetch = asyncio.create_task(self._fetch_keys())
        await asyncio.shield(self._fetch)

    async def _fetch_keys(self) -> None:
        assert self.jwks_url is not None
        self._fetched_at = self._clock()
        try:
            response = await self._http.get(self.jwks_url, timeout=JWKS_TIMEOUT_S)
            response.raise_for_status()
            keys = _parse_key_set(response.json())
        except (httpx.HTTPError, ValueError) as error:
            # Keep the keys we have: a stale set beats refusing everyone while Supabase is down.
            self._last_fetch_failed = True
            log.warning("fetching Supabase signing keys from %s failed: %s", self.jwks_url, error)
            return
        finally:
            self._fetch = None
        self._keys = keys
        self._loaded_at = self._clock()
        self._last_fetch_failed = False

    # -- claims ----------------------------------------------------------------------------
    def _check(self, claims: dict[str, Any]) -> None:
        try:
            self._claims.validate(claims)
        except ExpiredTokenError:
            raise AuthError("expired_token", "the token has expired") from None
        except ClaimError as error:
            # A MissingClaimError names every missing claim, comma-separated.
            names = error.claim.split(",")
            code = ("wrong_audience" if "aud" in names else
                    "wrong_issuer" if "iss" in names else "invalid_token")
            raise AuthError(code, error.description) from None


def _header(token: object) -> dict[str, Any]:
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise AuthError("invalid_token", "not a token")
    try:
        return dict(jws.extract_compact(token.encode("ascii")).headers())
    except (JoseError, ValueError, TypeError, UnicodeError):
        raise AuthError("invalid_token", "not a signed JWT") from None


def _parse_key_set(document: object) -> dict[str, Key]:
    """The usable signature keys of a JWKS by kid; entries we cannot or must not use are skipped."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the response is not a JWK set")
    keys: dict[str, Key] = {}
    for entry in entries:
        # Symmetric ("oct") entries are never accepted from a key set: that is how an attacker
        # would get a public value accepted as an HMAC secret.
        if (not isinstance(entry, dict) or not isinstance(entry.get("kid"), str)
                or entry.get("kty") not in {"RSA", "EC", "OKP"}
                or entry.get("use", "sig") != "sig"):
            continue
        try:
            keys[entry["kid"]] = import_key(entry)
        except (JoseError, ValueError, TypeError) as error:
            log.warning("skipping Supabase key %r: %s", entry["kid"], error)
    return keys
