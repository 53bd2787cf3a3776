"""Shared fixtures: the speech corpus, the loopback fake provider, and the real app under uvicorn."""

from __future__ import annotations

import json
import os
import tempfile
import wave
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import settings as hypothesis_settings

from providers import Providers
from server.app import build_providers, create_app
from server.cli import uvicorn_options
from server.config import Settings
from tests.fake_oidc import FakeJWKS, FakeOIDC
from tests.fake_openai import FakeOpenAI, serve_in_loop

ROOT = Path(__file__).resolve().parent.parent

# Property-based tests (Hypothesis): no per-example deadline (a loaded CI machine is slow); under
# CI=true the examples are derived from each test's name, so every CI run tries the same inputs
# and a failure there reproduces. Each test sets its own (modest) max_examples.
hypothesis_settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
hypothesis_settings.register_profile("dev", deadline=None)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")
CORPUS = Path(os.environ.get("TUTOR_SPEECH_CORPUS", ROOT.parent / "shared" / "audio"))


def _corpus_manifest() -> dict[str, Any]:
    path = CORPUS / "manifest.json"
    if not path.exists():
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"speech corpus not found at {CORPUS} (set TUTOR_SPEECH_CORPUS)")
        pytest.skip(f"speech corpus not found at {CORPUS}", allow_module_level=True)
    return json.loads(path.read_text())


MANIFEST = _corpus_manifest()
CORPUS_FILES = sorted(MANIFEST["files"])


def read_pcm(name: str) -> bytes:
    with wave.open(str(CORPUS / name)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return w.readframes(w.getnframes())


def expected_turns(name: str) -> int:
    return MANIFEST["files"][name]["utterances"]


def make_settings(fake: FakeOpenAI | None = None, **overrides: Any) -> Settings:
    scratch = tempfile.mkdtemp(prefix='tutor-test-')
    values: dict[str, Any] = dict(
        openai_api_key="test-key" if fake else None,
        openai_base_url=fake.base_url if fake else None,
        llm_api_key=None, llm_base_url=None,
        audio_burst_ms=10**9,  # tests stream faster than real time unless they test the bound
        provider_timeout_s=1.0,
        provider_max_retries=0,
        database_url=f"sqlite+aiosqlite:///{scratch}/tutor.db",
        spool_file=Path(scratch) / "spool.db",  # never the checkout's data/
        google_client_id=None, supabase_url=None, supabase_jwt_secret=None, redis_url=None,
        load_sample_course=False,  # the tests that want it say so
        guest_tier="unlimited",  # billing tests set their own plans
        # one provider call per turn, as these tests count them; the speculation tests
        # (test_speculation*.py) turn it on
        speculative=False,
        # written answers unless a test asks for speech (the interop tests keep the default)
        output_modalities="text",
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
async def oidc() -> AsyncIterator[FakeOIDC]:
    """A loopback Google (OpenID Connect discovery, authorize, token, JWKS)."""
    async with FakeOIDC() as provider:
        yield provider


@pytest.fixture
async def jwks() -> AsyncIterator[FakeJWKS]:
    """A loopback JWKS endpoint, as Supabase's."""
    async with FakeJWKS() as keys:
        yield keys


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


Server = Callable[..., Awaitable[str]]


@pytest.fixture
async def start_server() -> AsyncIterator[Server]:
    """Start the real app under uvicorn on a free port; returns its base URL (http://...)."""
    running = []

    async def start(settings: Settings, providers: Providers | None = None) -> str:
        app = create_app(settings, providers=providers)
        server, task, port = await serve_in_loop(app, **uvicorn_options(settings))
        running.append((server, task))
        start.apps.append(app)  # type: ignore[attr-defined]
        return f"127.0.0.1:{port}"

    start.apps = []  # type: ignore[attr-defined]  # the apps, for tests that look at app.state
    yield start
    for server, task in running:
        server.should_exit = True
        await task


@pytest.fixture
async def server(fake: FakeOpenAI, start_server: Server) -> str:
    return await start_server(make_settings(fake))


__all__ = ["build_providers", "read_pcm", "expected_turns", "make_settings", "CORPUS_FILES"]
