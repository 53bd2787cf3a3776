"""Loopback stand-ins for the identity providers, speaking the real protocols over real sockets.

`FakeOIDC` is an OpenID Connect provider like Google (discovery, authorize with PKCE, token, JWKS,
userinfo) that can forge its next ID token on demand; `FakeJWKS` is a Supabase project's
signing-key endpoint with key rotation and a fetch counter. Both run in the test's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.fake_openai import LoopbackServer

DROP = object()  # as a value in FakeOIDC.id_token_overrides: leave that claim out of the token

CODE_TTL_S = 60.0
TOKEN_TTL_S = 3600


def generate_signing_key(alg: str = "RS256", kid: str | None = None) -> Key:
    """A new private key for `alg` (RS256, ES256, EdDSA) published with kid, alg and use=sig."""
    parameters = {"kid": kid or str(uuid.uuid4()), "alg": alg, "use": "sig"}
    if alg.startswith("RS"):
        return RSAKey.generate_key(2048, parameters=parameters)
    if alg == "ES256":
        return ECKey.generate_key("P-256", parameters=parameters)
    if alg in ("EdDSA", "Ed25519"):
        return OKPKey.generate_key("Ed25519", parameters=parameters)
    raise ValueError(f"no key type for {alg}")


def sign(claims: dict[str, Any], *, key: Key | str, alg: str, kid: str | None = None) -> str:
    """A compact JWT over `claims`; a str key is an HMAC secret. kid defaults to the key's."""
    if isinstance(key, str):
        key = OctKey.import_key(key.encode())
    header: dict[str, Any] = {"alg": alg}
    if kid or key.kid:
        header["kid"] = kid or key.kid
    return jwt.encode(header, dict(claims), key, algorithms=[alg])


def unsigned(claims: dict[str, Any], kid: str | None = None) -> str:
    """An `alg: none` token: what a forger sends hoping the verifier skips the signature."""
    header: dict[str, Any] = {"alg": "none", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def s256(verifier: str) -> str:
    """The PKCE S256 code challenge for `verifier` (RFC 7636 §4.2)."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status,
                        headers={"cache-control": "no-store"})


@dataclass
class Grant:
    """What /authorize remembered for one authorization code."""

    client_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str
    user: dict[str, Any]
    expires_at: float


@dataclass
class Session:
    """What an access or refresh token stands for."""

    client_id: str
    scope: str
    user: dict[str, Any]
    expires_at: float = field(default=float("inf"))


class FakeOIDC(LoopbackServer):
    """An OpenID Connect provider that signs in `user` at once (no login page).

    Forgery knobs, applied to the next ID token only and then reset: `id_token_overrides`
    (claims to replace; DROP removes one), `sign_with_other_key` (a key not in the JWKS, same
    kid), `alg_none` (an unsigned token).
    """

    def __init__(self, *, client_id: str = "tutor-web", client_secret: str = "tutor-web-secret",
                 redirect_uris: list[str] | None = None) -> None:
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        # None: any loopback redirect URI (tests rarely know their port in advance); a list: exact
        # matches only, as Google does for web clients.
        self.redirect_uris = redirect_uris
        self.user: dict[str, Any] = {"sub": "google-123", "email": "student@example.com",
                                     "name": "Sam Student", "email_verified": True}
        self.key = generate_signing_key("RS256")
        self.kid = self.key.kid
        self.other_key = generate_signing_key("RS256", kid=self.kid)
        self.id_token_overrides: dict[str, Any] = {}
        self.sign_with_other_key = False
        self.alg_none = False
        self.codes: dict[str, Grant] = {}
        self.access_tokens: dict[str, Session] = {}
        self.refresh_tokens: dict[str, Session] = {}
        self.token_requests: list[dict[str, Any]] = []  # form and client auth method, for asserts
        self.app = Starlette(routes=[
            Route("/.well-known/openid-configuration", self._discovery),
            Route("/authorize", self._authorize),
            Route("/token", self._token, methods=["POST"]),
            Route("/userinfo", self._userinfo, methods=["GET", "POST"]),
            Route("/jwks", self._jwks),
        ])

    @property
    def issuer(self) -> str:
        return self.base_url

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def sign(self, claims: dict[str, Any], *, key: Key | str | None = None, alg: str = "RS256",
             kid: str | None = None) -> str:
        """Mint any token; by default one this provider's JWKS vouches for."""
        return sign(claims, key=key if key is not None else self.key, alg=alg,
                    kid=kid or (self.kid if key is None else None))

    def id_token_claims(self, client_id: str, nonce: str | None) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": client_id, "azp": client_id,
                                  **self.user, "iat": now, "exp": now + TOKEN_TTL_S}
        if nonce is not None:
            claims["nonce"] = nonce
        return claims

    # -- endpoints -------------------------------------------------------------------------
    async def _discovery(self, request: Request) -> Response:
        base = self.issuer
        return JSONResponse({
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "userinfo_endpoint": f"{base}/userinfo",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "claims_supported": ["iss", "aud", "sub", "email", "email_verified", "name", "nonce",
                                 "iat", "exp"],
        })

    async def _jwks(self, request: Request) -> Response:
        return JSONResponse({"keys": [self.key.as_dict(private=False)]})

    async def _authorize(self, request: Request) -> Response:
        q = request.query_params
        redirect_uri = q.get("redirect_uri", "")
        # A bad client or redirect URI is answered here, never by redirecting: redirecting to an
        # unchecked URI is the open redirect OAuth forbids (RFC 6749 §4.1.2.1).
        if q.get("client_id") != self.client_id:
            return _oauth_error("invalid_client", "unknown client_id")
        if not self._redirect_allowed(redirect_uri):
            return _oauth_error("invalid_request", "redirect_uri is not registered for this client")

        def back(**params: str) -> Response:
            if q.get("state") is not None:
                params["state"] = q["state"]
            separator = "&" if "?" in redirect_uri else "?"
            return RedirectResponse(f"{redirect_uri}{separator}{urlencode(params)}",
                                    status_code=302)

        scope = q.get("scope", "")
        if q.get("response_type") != "code":
            return back(error="unsupported_response_type", error_description="only code")
        if "openid" not in scope.split():
            return back(error="invalid_scope", error_description="scope must include openid")
        if not q.get("code_challenge") or q.get("code_challenge_method") != "S256":
            return back(error="invalid_request", error_description="PKCE with S256 is required")
        code = secrets.token_urlsafe(24)
        self.codes[code] = Grant(client_id=self.client_id, redirect_uri=redirect_uri, scope=scope,
                                 nonce=q.get("nonce"), code_challenge=q["code_challenge"],
                                 user=dict(self.user), expires_at=time.monotonic() + CODE_TTL_S)
        return back(code=code)

    async def _token(self, request: Request) -> Response:
        form = await request.form()
        client_id, method = self._authenticate_client(request, form)
        self.token_requests.append({"form": dict(form), "auth_method": method})
        if client_id is None:
            return _oauth_error("invalid_client", "client authentication failed", status=401)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            # Popped first: a code is spent by its first use, even a failed one (RFC 6749 §4.1.2).
            grant = self.codes.pop(str(form.get("code", "")), None)
            if grant is None or time.monotonic() > grant.expires_at or grant.client_id != client_id:
                return _oauth_error("invalid_grant", "unknown, used or expired code")
            if form.get("redirect_uri") != grant.redirect_uri:
                return _oauth_error("invalid_grant", "redirect_uri differs from the authorize one")
            verifier = str(form.get("code_verifier", ""))
            if not verifier or not hmac.compare_digest(s256(verifier), grant.code_challenge):
                return _oauth_error("invalid_grant", "code_verifier does not match code_challenge")
            return self._issue_tokens(client_id, grant.scope, grant.user, grant.nonce,
                                      with_refresh=True)
        if grant_type == "refresh_token":
            session = self.refresh_tokens.get(str(form.get("refresh_token", "")))
            if session is None or session.client_id != client_id:
                return _oauth_error("invalid_grant", "unknown refresh token")
            # Like Google: a new access token and ID token, the same refresh token.
            return self._issue_tokens(client_id, session.scope, session.user, None,
                                      with_refresh=False)
        return _oauth_error("unsupported_grant_type", f"grant_type {grant_type!r}")

    async def _userinfo(self, request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        session = self.access_tokens.get(token) if scheme.lower() == "bearer" else None
        if session is None or time.monotonic() > session.expires_at:
            return Response(status_code=401,
                            headers={"www-authenticate": 'Bearer error="invalid_token"'})
        return JSONResponse(session.user)

    # -- helpers ---------------------------------------------------------------------------
    def _redirect_allowed(self, uri: str) -> bool:
        if self.redirect_uris is not None:
            return uri in self.redirect_uris
        parts = urlsplit(uri)
        return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost")

    def _authenticate_client(self, request: Request, form: Any) -> tuple[str | None, str]:
        """(client id or None, method used). Exactly one method may be used (RFC 6749 §2.3)."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            if "client_secret" in form:
                return None, "both"
            try:
                decoded = base64.b64decode(credentials, validate=True).decode()
            except ValueError:
                return None, "client_secret_basic"
            # Each half is form-urlencoded before joining (RFC 6749 §2.3.1).
            raw_id, _, raw_secret = decoded.partition(":")
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            method = "client_secret_basic"
        elif "client_secret" in form:
            client_id, secret = str(form.get("client_id", "")), str(form["client_secret"])
            method = "client_secret_post"
        else:
            return None, "none"
        if client_id == self.client_id and hmac.compare_digest(secret, self.client_secret):
            return client_id, method
        return None, method

    def _issue_tokens(self, client_id: str, scope: str, user: dict[str, Any], nonce: str | None,
                      *, with_refresh: bool) -> Response:
        access_token = secrets.token_urlsafe(32)
        self.access_tokens[access_token] = Session(client_id, scope, user,
                                                   time.monotonic() + TOKEN_TTL_S)
        body: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer",
                                "expires_in": TOKEN_TTL_S, "scope": scope,
                                "id_token": self._mint_id_token(client_id, nonce)}
        if with_refresh:
            refresh_token = secrets.token_urlsafe(32)
            self.refresh_tokens[refresh_token] = Session(client_id, scope, user)
            body["refresh_token"] = refresh_token
        return JSONResponse(body, headers={"cache-control": "no-store", "pragma": "no-cache"})

    def _mint_id_token(self, client_id: str, nonce: str | None) -> str:
        claims = self.id_token_claims(client_id, nonce)
        for name, value in self.id_token_overrides.items():
            if value is DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        if self.alg_none:
            token = unsigned(claims, kid=self.kid)
        else:
            token = sign(claims, key=self.other_key if self.sign_with_other_key else self.key,
                         alg="RS256", kid=self.kid)
        self.id_token_overrides, self.sign_with_other_key, self.alg_none = {}, False, False
        return token


class FakeJWKS(LoopbackServer):
    """A Supabase project's key endpoint: `{project_url}/auth/v1/.well-known/jwks.json`.

    Starts with one ES256 and one RS256 key; `rotate` publishes another, `retire` withdraws one.
    `fetches` counts requests; `delay_s` slows each answer (to catch concurrent fetches) and
    `status` other than 200 makes it fail. `reset` goes back to the start, so one server can
    serve a whole test module (stopping uvicorn takes ~0.2 s, too long to pay per test).
    """

    def __init__(self) -> None:
        super().__init__()
        self._initial_keys = [generate_signing_key("ES256"), generate_signing_key("RS256")]
        self.reset()
        self.app = Starlette(routes=[Route("/auth/v1/.well-known/jwks.json", self._jwks)])

    def reset(self) -> None:
        self.keys: list[Key] = list(self._initial_keys)
        self.fetches = 0
        self.delay_s = 0.0
        self.status = 200

    @property
    def project_url(self) -> str:
        return self.base_url

    @property
    def jwks_url(self) -> str:
        return f"{self.project_url}/auth/v1/.well-known/jwks.json"

    @property
    def issuer(self) -> str:
        return f"{self.project_url}/auth/v1"

    def key(self, alg: str) -> Key:
        """The newest published key for `alg`."""
        return next(k for k in reversed(self.keys) if k.alg == alg)

    def rotate(self, alg: str = "ES256") -> str:
        """Publish a new key for `alg`; returns its kid."""
        key = generate_signing_key(alg)
        self.keys.append(key)
        return str(key.kid)

    def retire(self, kid: str) -> None:
        self.keys = [k for k in self.keys if k.kid != kid]

    def sign(self, claims: dict[str, Any], *, alg: str = "ES256", key: Key | str | None = None,
             kid: str | None = None) -> str:
        """Mint a token: by default with the newest published key for `alg`; a str key is an
        HS256 secret (Supabase's legacy JWT secret)."""
        return sign(claims, key=key if key is not None else self.key(alg), alg=alg, kid=kid)

    def access_token_claims(self, **overrides: Any) -> dict[str, Any]:
        """The claims of a genuine Supabase access token for a signed-in user."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": "authenticated", "sub": str(uuid.uuid4()),
            "email": "student@example.com", "phone": "", "role": "authenticated", "aal": "aal1",
            "session_id": str(uuid.uuid4()), "is_anonymous": False,
            "app_metadata": {"provider": "email", "providers": ["email"]}, "user_metadata": {},
            "iat": now, "exp": now + TOKEN_TTL_S,
        }
        claims.update(overrides)
        return claims

    async def _jwks(self, request: Request) -> Response:
        self.fetches += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.status != 200:
            return JSONResponse({"error": "unavailable"}, status_code=self.status)
        return JSONResponse({"keys": [k.as_dict(private=False) for k in self.keys]})
