"""The official `openai` SDKs against the tutor: the Python SDK's `client.realtime.connect`
(over ws://) and the Node SDK's `OpenAIRealtimeWS` (which always dials wss://, so its server
here serves TLS with a self-signed certificate that node is told to trust). Each plays the
interop scenario through a driver in `drivers/` on the SDK's defaults, only URL and key set.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from tests.interop.conftest import (DRIVERS, NODE, REQUIRED_CHECKS, TOOL_JSON, Stack, check_report,
                                    node_env, python_env, serving, speech_pcm,
                                    tool_output_reached_model)
from tests.processes import self_signed_cert

SPEECH = "q_derivative.wav"
DRIVER_TIMEOUT_S = 120.0


async def test_the_python_sdk_plays_the_scenario_and_every_event_parses_as_its_own_type(
        stack: Stack, tmp_path: Path) -> None:
    python = python_env("openai-python", ["openai[realtime]"])
    speech = speech_pcm(SPEECH, 24000, tmp_path)
    report = await stack.run([str(python), str(DRIVERS / "openai_python.py"), str(speech)],
                             env={"INTEROP_TOOL": TOOL_JSON}, timeout=DRIVER_TIMEOUT_S)
    check_report(report, [*REQUIRED_CHECKS, "events_validate"], stack)
    assert tool_output_reached_model(stack.fake)


@pytest.fixture
async def tls_stack(start_server: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    """What the interop `stack` fixture does, with the app serving TLS (settings
    ssl_certfile/ssl_keyfile, as `tutor serve --ssl-certfile/--ssl-keyfile` does)."""
    cert, key = self_signed_cert(tmp_path)
    async with serving(start_server, ssl_certfile=cert, ssl_keyfile=key) as stack:
        yield replace(stack, cert=cert)


async def test_the_node_sdk_plays_the_scenario_over_tls(tls_stack: Stack,
                                                         tmp_path: Path) -> None:
    stack = tls_stack
    folder = node_env("openai-node", ["openai", "ws"])
    speech = speech_pcm(SPEECH, 24000, tmp_path)
    report = await stack.run([str(NODE), str(DRIVERS / "openai_node.mjs"),
                              str(speech)], cwd=folder, timeout=DRIVER_TIMEOUT_S,
                             env={"INTEROP_TOOL": TOOL_JSON, "NODE_EXTRA_CA_CERTS": str(stack.cert)})
    check_report(report, REQUIRED_CHECKS, stack)
    assert tool_output_reached_model(stack.fake)
