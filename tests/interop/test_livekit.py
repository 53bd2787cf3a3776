"""LiveKit Agents' OpenAI Realtime model (livekit-agents + livekit-plugins-openai, from PyPI),
driven without a room as the framework's AgentActivity drives it, plays the interop scenario on
its defaults: semantic_vad (create and interrupt responses), audio output, 24 kHz pcm.

What this client needs beyond the shared checks: update_chat_ctx() waits (5 s) for a
`conversation.item.added` carrying the very item id it created; generate_reply() waits (10 s) for
a `response.created` whose `response.metadata.client_event_id` echoes its `response.create`;
its mirror of the conversation places every `conversation.item.added` at its
`previous_item_id`, and the next item it creates (a function_call_output) is anchored on that
mirror, so a stale previous_item_id misplaces the output before its call; a barge-in is a
`conversation.item.truncate` at the playback position (plus a `response.cancel` only while the
response is still generating). The driver is `drivers/livekit_realtime.py`.
"""

from __future__ import annotations


from tests.interop.conftest import (DRIVERS, REQUIRED_CHECKS, TOOL_JSON, TOOL_NAME, TOOL_OUTPUT,
                                    check_report, python_env, speech_pcm)

# the handshakes above, the mirror's order, and no error raised by the plugin itself
LIVEKIT_CHECKS = [*REQUIRED_CHECKS, "update_chat_ctx", "generate_reply", "items_in_order",
                  "no_plugin_errors"]


async def test_livekit_realtime_model_plays_the_scenario_on_its_defaults(stack, tmp_path):
    python = python_env("livekit", ["livekit-agents", "livekit-plugins-openai"])
    env = {"SPEECH_PCM": str(speech_pcm("q_derivative.wav", 24000, tmp_path)),
           "BARGE_PCM": str(speech_pcm("q_photosynthesis.wav", 24000, tmp_path)),
           "INTEROP_TOOL": TOOL_JSON}

    report = await stack.run([str(python), str(DRIVERS / "livekit_realtime.py")], env=env,
                             timeout=150)

    check_report(report, LIVEKIT_CHECKS, stack)
    assert any(answered_call(chat["messages"]) for chat in stack.fake.chats), (
        "no chat request carried the call and, after it, its output", stack.fake.chats[-1:])


def answered_call(messages: list[dict]) -> bool:
    """The model was shown a call of the tool followed by the tool's output for it."""
    called = set()
    for message in messages:
        called |= {c["id"] for c in message.get("tool_calls") or []
                   if c["function"]["name"] == TOOL_NAME}
        if message["role"] == "tool" and message.get("tool_call_id") in called \
                and message.get("content") == TOOL_OUTPUT:
            return True
    return False
