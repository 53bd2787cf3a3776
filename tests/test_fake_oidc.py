"""The fake OpenID Connect provider behaves like Google to a real OAuth client.

authlib's own client discovers it, signs in with PKCE (S256), exchanges the code and reads
userinfo; joserfc checks the ID token against the published JWKS. Then the forgery knobs.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import httpx
import pytest
import pytest_asyncio
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import BadSignatureError, UnsupportedAlgorithmError
from joserfc.jwk import KeySet

from tests.fake_oidc import DROP, FakeOIDC

REDIRECT_URI = "http://127.0.0.1:8000/auth/google/callback"

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def google() -> AsyncIterator[FakeOIDC]:
    async with FakeOIDC() as fake:
        yield fake


@pytest_asyncio.fixture(loop_scope="module")
async def metadata(google: FakeOIDC) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        return (await http.get(google.discovery_url)).json()


def client_for(google: FakeOIDC, **options: Any) -> AsyncOAuth2Client:
    options.setdefault("client_secret", google.client_secret)
    return AsyncOAuth2Client(client_id=google.client_id, scope="openid email profile",
                             redirect_uri=REDIRECT_URI, code_challenge_method="S256", **options)


async def authorize(client: AsyncOAuth2Client, metadata: dict[str, Any], verifier: str,
                    nonce: str) -> tuple[str, str]:
    """What the browser does: follow the authorize URL; returns (callback URL, state)."""
    url, state = client.create_authorization_url(metadata["authorization_endpoint"],
                                                 code_verifier=verifier, nonce=nonce)
    async with httpx.AsyncClient() as browser:
        response = await browser.get(url)
    assert response.status_code == 302
    return response.headers["location"], state


async def sign_in(google: FakeOIDC, metadata: dict[str, Any], nonce: str = "n-0S6_WzA2Mj",
                  **options: Any) -> dict[str, Any]:
    verifier = generate_token(48)
    async with client_for(google, **options) as client:
        callback, state = await authorize(client, metadata, verifier, nonce)
        return dict(await client.fetch_token(metadata["token_endpoint"], state=state,
                                             authorization_response=callback,
                                             code_verifier=verifier))


async def published_keys(metadata: dict[str, Any]) -> KeySet:
    async with httpx.AsyncClient() as http:
        return KeySet.import_key_set((await http.get(metadata["jwks_uri"])).json())


async def test_discovery_describes_a_google_like_provider(
        google: FakeOIDC, metadata: dict[str, Any]) -> None:
    assert metadata["issuer"] == google.issuer
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["id_token_signing_alg_values_supported"] == ["RS256"]
    assert set(metadata["token_endpoint_auth_methods_supported"]) == {
        "client_secret_post", "client_secret_basic"}


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
async def test_code_flow_with_pkce_gives_a_verifiable_id_token_and_userinfo(
        google: FakeOIDC, metadata: dict[str, Any], auth_method: str) -> None:
    verifier, nonce = generate_token(48), generate_token(16)
    async with client_for(google, token_endpoint_auth_method=auth_method) as client:
        callback, state = await authorize(client, metadata, verifier, nonce)
        assert callback.startswith(REDIRECT_URI + "?code=") and f"state={state}" in callback
        token = await client.fetch_token(metadata["token_endpoint"], state=state,
                                         authorization_response=callback, code_verifier=verifier)
        assert token["token_type"] == "Bearer" and token["refresh_token"]
        assert google.token_requests[-1]["auth_method"] == auth_method

        id_token = jwt.decode(token["id_token"], await published_keys(metadata),
                              algorithms=["RS256"])
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": google.issuer},
            aud={"essential": True, "value": google.client_id},
            nonce={"essential": True, "value": nonce},
            exp={"essential": True}, sub={"essential": True},
        ).validate(id_token.claims)
        assert id_token.claims["email"] == "student@example.com"
        assert id_token.claims["email_verified"] is True

        userinfo = (await client.get(metadata["userinfo_endpoint"])).json()
        assert userinfo == google.user


async def test_a_code_is_spent_by_its_first_exchange(
        google: FakeOIDC, metadata: dict[str, Any]) -> None:
    verifier = generate_token(48)
    async with client_for(google) as client:
        callback, state = await authorize(client, metadata, verifier, "nonce")
        await client.fetch_token(metadata["token_endpoint"], state=state,
                                 authorization_response=callback, code_verifier=verifier)
        with pytest.raises(OAuthError, match="invalid_grant"):
            await client.fetch_token(metadata["token_endpoint"], state=state,
                                     authorization_response=callback, code_verifier=verifier)


async def test_a_wrong_code_verifier_or_client_secret_is_refused(
        google: FakeOIDC, metadata: dict[str, Any]) -> None:
    verifier = generate_token(48)
    async with client_for(google) as client:
        callback, state = await authorize(client, metadata, verifier, "nonce")
        with pytest.raises(OAuthError, match="invalid_grant"):
            await client.fetch_token(metadata["token_endpoint"], state=state,
                                     authorization_response=callback,
                                     code_verifier=generate_token(48))
    with pytest.raises(OAuthError, match="invalid_client"):
        await sign_in(google, metadata, client_secret="not-the-secret")


async def test_authorize_requires_pkce_and_a_known_client(
        google: FakeOIDC, metadata: dict[str, Any]) -> None:
    endpoint = metadata["authorization_endpoint"]
    base = {"client_id": google.client_id, "redirect_uri": REDIRECT_URI,
            "response_type": "code", "scope": "openid email", "state": "s1"}
    async with httpx.AsyncClient() as browser:
        no_pkce = await browser.get(endpoint, params=base)
        plain = await browser.get(endpoint, params={**base, "code_challenge": "abc",
                                                    "code_challenge_method": "plain"})
        stranger = await browser.get(endpoint, params={**base, "client_id": "someone"})
        elsewhere = await browser.get(endpoint, params={**base, "redirect_uri": "https://evil/cb"})
    for response in (no_pkce, plain):
        assert response.status_code == 302
        assert "error=invalid_request" in response.headers["location"]
        assert "state=s1" in response.headers["location"]
    assert stranger.status_code == elsewhere.status_code == 400  # never redirected


async def test_forgery_knobs_apply_to_the_next_id_token_only(
        google: FakeOIDC, metadata: dict[str, Any]) -> None:
    keys = await published_keys(metadata)

    google.id_token_overrides = {"aud": "someone-else", "nonce": DROP}
    claims = jwt.decode((await sign_in(google, metadata))["id_token"], keys).claims
    assert claims["aud"] == "someone-else" and "nonce" not in claims

    google.sign_with_other_key = True
    with pytest.raises(BadSignatureError):
        jwt.decode((await sign_in(google, metadata))["id_token"], keys)

    google.alg_none = True
    with pytest.raises(UnsupportedAlgorithmError):
        jwt.decode((await sign_in(google, metadata))["id_token"], keys, algorithms=["RS256"])

    claims = jwt.decode((await sign_in(google, metadata))["id_token"], keys).claims
    assert claims["aud"] == google.client_id and claims["nonce"] == "n-0S6_WzA2Mj"


async def test_sign_mints_tokens_the_jwks_vouches_for(
        google: FakeOIDC, metadata: dict[str, Any]) -> None:
    token = google.sign({"sub": "anyone", "iss": google.issuer})
    assert jwt.decode(token, await published_keys(metadata)).claims["sub"] == "anyone"
