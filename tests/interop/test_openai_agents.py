"""The OpenAI Agents SDK for JavaScript (`@openai/agents-realtime`), a `RealtimeSession` over
WebSocket on its defaults (semantic_vad, pcm 24 kHz, audio answers, tracing "auto"), plays the
interop scenario against the real app: typed and spoken turns, a barge-in, a function tool.

Besides the shared checks, this client needs its local history to be built from the server's
items (`conversation.item.added` / `.done`, and `conversation.item.retrieved` in answer to the
`conversation.item.retrieve` it sends after every transcript and truncation), and silently drops
any event its zod schemas reject, so both are checked too. The driver is
`drivers/openai_agents.mjs`.
"""

from __future__ import annotations


from tests.interop.conftest import (DRIVERS, NODE, REQUIRED_CHECKS, TOOL_OUTPUT, TOOL_PROMPT,
                                    check_report, node_env, speech_pcm,
                                    tool_output_reached_model)

PACKAGES = ["@openai/agents-realtime", "@openai/agents", "zod", "ws"]
CLIENT_CHECKS = ["history", "item_retrieve", "events_match_sdk_schema"]


async def test_the_agents_sdk_realtime_session_plays_the_scenario(stack, tmp_path) -> None:
    folder = node_env("openai-agents", PACKAGES)
    speech = speech_pcm("q_derivative.wav", 24000, tmp_path)

    report = await stack.run(
        [str(NODE), str(DRIVERS / "openai_agents.mjs")], cwd=folder,
        env={"INTEROP_SPEECH": str(speech), "INTEROP_TOOL_PROMPT": TOOL_PROMPT,
             "INTEROP_TOOL_OUTPUT": TOOL_OUTPUT}, timeout=150)

    check_report(report, REQUIRED_CHECKS + CLIENT_CHECKS, stack)
    assert tool_output_reached_model(stack.fake), "the tool's output never reached the model"
