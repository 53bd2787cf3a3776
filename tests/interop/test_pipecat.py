"""Pipecat's `OpenAIRealtimeLLMService` (pipecat-ai, from PyPI), in a pipeline built as Pipecat's
examples build one, plays the interop scenario against the real app on the service's defaults:
typed and spoken turns, audio answers, a barge-in, a function tool.

What this client needs beyond the shared checks: its `session.update` names no output modalities
(only its own `response.create` asks for ["audio"]), so the answers the server's turn detection
makes are spoken only if the session's default is audio, as OpenAI's is; it tracks a function call
only from `conversation.item.added` (item type "function_call"), runs it on
`response.function_call_arguments.done`, and answers with a `function_call_output` item; a message
appended mid-session reaches the server as a `conversation.item.create` with role "system"; on
`input_audio_buffer.speech_started` it sends `conversation.item.truncate` and nothing else, leaving
the cancel and the next answer to the server's turn detection; and any `error` event ends its
receive loop (the session is dead after it), and so does a server event of a type it models that
fails its pydantic model (check `events_parse`). The driver is `drivers/pipecat_realtime.py`.
"""

from __future__ import annotations

from tests.interop.conftest import (DRIVERS, REQUIRED_CHECKS, TOOL_JSON, check_report,
                                    python_env, speech_pcm, tool_output_reached_model)

REQUIREMENTS = ["pipecat-ai[openai]"]  # as Pipecat documents for its OpenAI services
CLIENT_CHECKS = ["events_parse"]


async def test_pipecat_openai_realtime_service_plays_the_scenario(stack, tmp_path) -> None:
    python = python_env("pipecat", REQUIREMENTS)
    speech = speech_pcm("q_derivative.wav", 24000, tmp_path)

    report = await stack.run([str(python), str(DRIVERS / "pipecat_realtime.py")],
                             env={"INTEROP_SPEECH": str(speech), "INTEROP_TOOL": TOOL_JSON},
                             timeout=150)

    check_report(report, REQUIRED_CHECKS + CLIENT_CHECKS, stack)
    assert tool_output_reached_model(stack.fake), "the tool's output never reached the model"
