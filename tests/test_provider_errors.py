"""`providers.errors.from_openai`: the exceptions the real `openai` SDK raises, against the loopback
fake provider (tests/fake_openai.py) or a closed port, become the protocol's error codes."""

from __future__ import annotations

import socket

import openai
import pytest

from providers import ProviderError
from providers.errors import from_openai
from providers.openai import make_client
from tests.fake_openai import FakeOpenAI

MESSAGES = [{"role": "user", "content": "What is a ratio?"}]


async def sdk_failure(base_url: str, *, timeout: float = 5) -> openai.OpenAIError:
    """The exception one chat completion raises through the real SDK (no retries)."""
    client = make_client(api_key="k", base_url=base_url, timeout=timeout, connect_timeout=1,
                         max_retries=0)
    try:
        with pytest.raises(openai.OpenAIError) as raised:
            await client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    finally:
        await client.close()
    return raised.value


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_an_http_error_is_provider_error_with_its_status(fake: FakeOpenAI) -> None:
    fake.behaviour.chat_failures = ["500"]

    error = from_openai(await sdk_failure(fake.base_url), "chat")

    assert isinstance(error, ProviderError)
    assert error.code == "provider_error"
    assert error.message.startswith("chat provider answered HTTP 500")


async def test_no_answer_in_time_is_provider_timeout(fake: FakeOpenAI) -> None:
    fake.behaviour.chat_failures = ["timeout"]

    error = from_openai(await sdk_failure(fake.base_url, timeout=0.2), "chat")

    assert error.code == "provider_timeout"
    assert error.message == "chat provider did not answer in time"


async def test_a_refused_connection_is_unreachable_before_a_stream_and_a_cut_one_after() -> None:
    exc = await sdk_failure(f"http://127.0.0.1:{closed_port()}/v1")

    before = from_openai(exc, "transcription")
    during = from_openai(exc, "speech", streaming=True)

    assert (before.code, before.message) == ("provider_unreachable",
                                             "transcription provider could not be reached")
    assert during.code == "provider_stream_interrupted"
    assert during.message.startswith("speech provider stream broke")


def test_a_raw_transport_error_is_a_broken_stream() -> None:
    error = from_openai(ConnectionResetError("peer reset"), "chat", streaming=True)

    assert error.code == "provider_stream_interrupted"
