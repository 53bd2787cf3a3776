"""Supabase access tokens are verified locally against the project's published keys.

Everything runs against `FakeJWKS`, a real HTTP server on loopback: genuine tokens pass, every kind
of forgery fails with its own code, and the key set is fetched rarely, once at a time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import AsyncIterator

import pytest
import pytest_asyncio

from accounts.errors import AuthError
from accounts.supabase import SupabaseVerifier
from tests.fake_oidc import FakeJWKS, generate_signing_key, unsigned

LEGACY_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"


class Clock:
    """The verifier's monotonic clock, moved by hand (token times stay on the real clock)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# One key server for the module (reset before each test), so every test shares its event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def key_server() -> AsyncIterator[FakeJWKS]:
    async with FakeJWKS() as fake:
        yield fake


@pytest.fixture
def project(key_server: FakeJWKS) -> FakeJWKS:
    key_server.reset()
    return key_server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture(loop_scope="module")
async def verifier(project: FakeJWKS, clock: Clock) -> AsyncIterator[SupabaseVerifier]:
    v = SupabaseVerifier.from_project_url(project.project_url, clock=clock)
    yield v
    await v.aclose()


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def refusal(verifier: SupabaseVerifier, token: str) -> str:
    with pytest.raises(AuthError) as raised:
        await verifier.verify(token)
    return raised.value.code


# -- genuine tokens -------------------------------------------------------------------------
@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_a_genuine_token_is_accepted_and_its_claims_returned(
        project: FakeJWKS, verifier: SupabaseVerifier, alg: str) -> None:
    claims = project.access_token_claims()
    assert await verifier.verify(project.sign(claims, alg=alg)) == claims


async def test_an_audience_list_containing_ours_is_accepted(
        project: FakeJWKS, verifier: SupabaseVerifier) -> None:
    claims = project.access_token_claims(aud=["other", "authenticated"])
    assert (await verifier.verify(project.sign(claims)))["sub"] == claims["sub"]


async def test_a_token_just_past_exp_is_accepted_within_the_leeway(
        project: FakeJWKS, verifier: SupabaseVerifier) -> None:
    claims = project.access_token_claims(exp=int(time.time()) - 10)
    assert await verifier.verify(project.sign(claims)) == claims


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")  # "EdDSA" is the old name
async def test_an_ed25519_token_is_accepted(project: FakeJWKS, verifier: SupabaseVerifier) -> None:
    project.rotate("EdDSA")
    claims = project.access_token_claims()
    assert await verifier.verify(project.sign(claims, alg="EdDSA")) == claims


async def test_hs256_is_accepted_only_with_the_legacy_secret(project: FakeJWKS) -> None:
    token = project.sign(project.access_token_claims(), alg="HS256", key=LEGACY_SECRET)
    without = SupabaseVerifier.from_project_url(project.project_url)
    legacy = SupabaseVerifier.from_project_url(project.project_url, legacy_secret=LEGACY_SECRET)
    other = SupabaseVerifier.from_project_url(project.project_url, legacy_secret="x" * 40)
    try:
        assert await refusal(without, token) == "unsupported_algorithm"
        assert (await legacy.verify(token))["role"] == "authenticated"
        assert await refusal(other, token) == "invalid_token"
    finally:
        for v in (without, legacy, other):
            await v.aclose()


async def test_legacy_only_projects_need_no_key_set(project: FakeJWKS) -> None:
    v = SupabaseVerifier(jwks_url=None, issuer=None, legacy_secret=LEGACY_SECRET)
    try:
        assert await v.verify(project.sign(project.access_token_claims(), alg="HS256",
                                           key=LEGACY_SECRET))
        es256 = project.sign(project.access_token_claims())
        assert await refusal(v, es256) == "unsupported_algorithm"
        assert project.fetches == 0
    finally:
        await v.aclose()


# -- refusals -------------------------------------------------------------------------------
async def test_a_token_signed_by_a_key_not_in_the_jwks_is_refused(
        project: FakeJWKS, verifier: SupabaseVerifier) -> None:
    published = project.key("ES256")
    impostor = generate_signing_key("ES256", kid=published.kid)  # same kid, different key
    token = project.sign(project.access_token_claims(), key=impostor)
    assert await refusal(verifier, token) == "invalid_token"


async def test_a_tampered_payload_is_refused(project: FakeJWKS, verifier: SupabaseVerifier) -> None:
    header, _, signature = project.sign(project.access_token_claims()).split(".")
    _, payload, _ = project.sign(project.access_token_claims(role="service_role")).split(".")
    assert await refusal(verifier, f"{header}.{payload}.{signature}") == "invalid_token"


async def test_an_expired_token_is_refused(project: FakeJWKS, verifier: SupabaseVerifier) -> None:
    claims = project.access_token_claims(exp=int(time.time()) - 120)  # beyond the 30 s leeway
    assert await refusal(verifier, project.sign(claims)) == "expired_token"


@pytest.mark.parametrize("aud", ["someone-else", ["anon", "service"], None])
async def test_a_token_for_another_audience_is_refused(
        project: FakeJWKS, verifier: SupabaseVerifier, aud: object) -> None:
    claims = project.access_token_claims(aud=aud)
    if aud is None:
        del claims["aud"]
    assert await refusal(verifier, project.sign(claims)) == "wrong_audience"


@pytest.mark.parametrize("iss", ["https://evil.supabase.co/auth/v1", None])
async def test_a_token_from_another_issuer_is_refused(
        project: FakeJWKS, verifier: SupabaseVerifier, iss: str | None) -> None:
    claims = project.access_token_claims(iss=iss)
    if iss is None:
        del claims["iss"]
    assert await refusal(verifier, project.sign(claims)) == "wrong_issuer"


async def test_an_unsigned_alg_none_token_is_refused(
        project: FakeJWKS, verifier: SupabaseVerifier) -> None:
    token = unsigned(project.access_token_claims(), kid=project.key("ES256").kid)
    assert await refusal(verifier, token) == "unsupported_algorithm"
    assert project.fetches == 0  # refused before any key was looked up


async def test_an_algorithm_outside_the_allowed_list_is_refused(
        project: FakeJWKS, verifier: SupabaseVerifier) -> None:
    rsa = project.key("RS256")
    token = project.sign(project.access_token_claims(), alg="RS512",
                         key=generate_signing_key("RS512", kid=rsa.kid))
    assert await refusal(verifier, token) == "unsupported_algorithm"


async def test_a_published_public_key_is_not_accepted_as_an_hmac_secret(
        project: FakeJWKS, verifier: SupabaseVerifier) -> None:
    # The classic algorithm confusion: HS256 "signed" with the RSA public key's PEM. joserfc will
    # not even make such a token, so the forger builds it by hand.
    rsa = project.key("RS256")
    header = {"alg": "HS256", "typ": "JWT", "kid": rsa.kid}
    signing_input = f"{b64(json.dumps(header))}.{b64(json.dumps(project.access_token_claims()))}"
    mac = hmac.new(rsa.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(mac)}"
    assert await refusal(verifier, token) == "unsupported_algorithm"


async def test_a_key_is_only_trusted_for_its_own_algorithm(
        project: FakeJWKS, verifier: SupabaseVerifier) -> None:
    ec_kid = project.key("ES256").kid
    token = project.sign(project.access_token_claims(), alg="RS256",
                         key=generate_signing_key("RS256"), kid=ec_kid)
    assert await refusal(verifier, token) == "invalid_token"


async def test_a_token_without_sub_is_refused(
        project: FakeJWKS, verifier: SupabaseVerifier) -> None:
    claims = project.access_token_claims()
    del claims["sub"]
    assert await refusal(verifier, project.sign(claims)) == "invalid_token"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_a_token_from_the_future_is_refused(
        project: FakeJWKS, verifier: SupabaseVerifier, claim: str) -> None:
    claims = project.access_token_claims(**{claim: int(time.time()) + 600})
    assert await refusal(verifier, project.sign(claims)) == "invalid_token"


@pytest.mark.parametrize("garbage", [
    "", "garbage", "a.b.c", "x" * 20_000, "é.é.é", "e30.e30.",  # header without alg
    "W10.e30.",  # header is a JSON list
])
async def test_garbage_is_refused(project: FakeJWKS, verifier: SupabaseVerifier,
                                  garbage: str) -> None:
    assert await refusal(verifier, garbage) == "invalid_token"


# -- fetching the key set -------------------------------------------------------------------
async def test_the_cache_serves_later_tokens_until_its_ttl(
        project: FakeJWKS, verifier: SupabaseVerifier, clock: Clock) -> None:
    for _ in range(10):
        await verifier.verify(project.sign(project.access_token_claims(), alg="RS256"))
        clock.advance(30)
    assert project.fetches == 1
    clock.advance(600)
    await verifier.verify(project.sign(project.access_token_claims()))
    assert project.fetches == 2


async def test_a_rotated_in_key_is_accepted_after_one_refresh(
        project: FakeJWKS, verifier: SupabaseVerifier, clock: Clock) -> None:
    await verifier.verify(project.sign(project.access_token_claims()))
    new_kid = project.rotate("ES256")
    token = project.sign(project.access_token_claims())
    assert project.key("ES256").kid == new_kid
    # Right after a fetch, an unknown kid does not trigger another one...
    assert await refusal(verifier, token) == "unknown_key"
    assert project.fetches == 1
    # ...but once the refresh interval has passed, it does, and the new key is found.
    clock.advance(30)
    assert await verifier.verify(token)
    assert project.fetches == 2


async def test_tokens_with_unknown_kids_refresh_at_most_once_per_interval(
        project: FakeJWKS, verifier: SupabaseVerifier, clock: Clock) -> None:
    await verifier.verify(project.sign(project.access_token_claims()))

    async def forge_many() -> None:
        for _ in range(25):
            token = project.sign(project.access_token_claims(), key=generate_signing_key("ES256"))
            assert await refusal(verifier, token) == "unknown_key"

    for step, expected_fetches in [(0, 1), (30, 2), (10, 2), (20, 3)]:
        clock.advance(step)
        await forge_many()
        assert project.fetches == expected_fetches


async def test_concurrent_verifies_on_a_cold_cache_share_one_fetch(
        project: FakeJWKS, verifier: SupabaseVerifier) -> None:
    project.delay_s = 0.05
    tokens = [project.sign(project.access_token_claims(), alg=("ES256", "RS256")[i % 2])
              for i in range(20)]
    results = await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert len(results) == 20
    assert project.fetches == 1


async def test_concurrent_unknown_kids_share_one_refresh(
        project: FakeJWKS, verifier: SupabaseVerifier, clock: Clock) -> None:
    await verifier.verify(project.sign(project.access_token_claims()))
    clock.advance(30)
    project.delay_s = 0.05
    forged = [project.sign(project.access_token_claims(), key=generate_signing_key("ES256"))
              for _ in range(20)]
    results = await asyncio.gather(*(verifier.verify(t) for t in forged), return_exceptions=True)
    assert {r.code for r in results if isinstance(r, AuthError)} == {"unknown_key"}
    assert len(results) == 20 and project.fetches == 2


async def test_a_cancelled_verify_does_not_cancel_the_shared_fetch(
        project: FakeJWKS, verifier: SupabaseVerifier) -> None:
    project.delay_s = 0.1
    token = project.sign(project.access_token_claims())
    first = asyncio.create_task(verifier.verify(token))
    second = asyncio.create_task(verifier.verify(token))
    await asyncio.sleep(0.02)
    first.cancel()
    assert (await second)["sub"]
    assert first.cancelled() and project.fetches == 1


async def test_an_unreachable_key_set_is_reported_as_such(
        project: FakeJWKS, verifier: SupabaseVerifier, clock: Clock) -> None:
    project.status = 503
    token = project.sign(project.access_token_claims())
    assert await refusal(verifier, token) == "keys_unavailable"
    # A failing endpoint is not hammered: the next try waits a few seconds.
    assert await refusal(verifier, token) == "keys_unavailable"
    assert project.fetches == 1
    project.status = 200
    clock.advance(5)
    assert await verifier.verify(token)
    assert project.fetches == 2


async def test_known_keys_stay_in_use_while_the_key_set_is_unreachable(
        project: FakeJWKS, verifier: SupabaseVerifier, clock: Clock) -> None:
    token = project.sign(project.access_token_claims())
    await verifier.verify(token)
    project.status = 500
    clock.advance(601)  # the cache is due, the fetch fails: the last good keys still serve
    assert await verifier.verify(token)
    assert project.fetches == 2


async def test_from_project_url_derives_jwks_and_issuer() -> None:
    v = SupabaseVerifier.from_project_url("https://abcd.supabase.co/")
    try:
        assert v.jwks_url == "https://abcd.supabase.co/auth/v1/.well-known/jwks.json"
        assert v.issuer == "https://abcd.supabase.co/auth/v1"
        assert v.audience == "authenticated"
    finally:
        await v.aclose()


async def test_a_verifier_needs_some_way_to_check_signatures() -> None:
    with pytest.raises(ValueError):
        SupabaseVerifier(jwks_url=None, issuer=None, legacy_secret=None)

