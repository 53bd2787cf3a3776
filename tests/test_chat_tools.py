"""Function calling through the chat adapter: the real `openai` SDK, built as the app builds it
(`server.app.build_providers`), streams against the loopback fake provider (tests/fake_openai.py),
which calls the tools the student's message names, or those a test queues, the way OpenAI
streams them. Covers one call and parallel calls as `ToolCallDelta` fragments, a forced call of
an unknown tool, the follow-up request carrying the calls and their answers, `tool_choice`,
the per-answer token cap, and that a request without tools streams text as before. Also the
streams some compatible servers send instead (Ollama reuses index 0 for every parallel call),
from a loopback server speaking those bytes."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from providers import ProviderError, ToolCallDelta, Truncated, Usage
from providers.openai import OpenAIChatModel
from server.app import build_providers
from tests.conftest import make_settings
from tests.fake_openai import FakeOpenAI, LoopbackServer

LOOKUP = {"type": "function", "function": {
    "name": "lookup_word", "description": "Look a word up in the course glossary.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}},
                   "required": ["word"], "additionalProperties": False}}}
GRADE = {"type": "function", "function": {
    "name": "grade_answer", "description": "Record whether the student's answer was right.",
    "parameters": {"type": "object", "properties": {
        "question": {"type": "string"}, "correct": {"type": "boolean"},
        "score": {"type": "integer", "minimum": 1}},
        "required": ["question", "correct", "score"], "additionalProperties": False}}}
TOOLS = [LOOKUP, GRADE]


@pytest.fixture
async def chat(fake: FakeOpenAI) -> AsyncIterator[OpenAIChatModel]:
    providers, clients = build_providers(make_settings(fake))
    assert isinstance(providers.chat, OpenAIChatModel)
    yield providers.chat
    for client in clients:
        await client.close()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You are a patient tutor."},
            {"role": "user", "content": text}]


async def answer(chat: OpenAIChatModel, messages: list[dict[str, Any]], **options: Any
                 ) -> tuple[str, list[ToolCallDelta], list[Usage]]:
    """Everything one streamed answer yields: its text, its tool-call fragments, its usage."""
    text, fragments, usage = [], [], []
    async for piece in chat.stream(messages, **options):
        if isinstance(piece, str):
            text.append(piece)
        elif isinstance(piece, ToolCallDelta):
            fragments.append(piece)
        elif isinstance(piece, Usage):
            usage.append(piece)
        else:
            assert isinstance(piece, Truncated)
            text.append("<truncated>")
    return "".join(text), fragments, usage


def calls_of(fragments: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """The calls the fragments make up, in index order, as an assistant message's `tool_calls`;
    checks that id and name come with each call's first fragment only."""
    calls: dict[int, dict[str, Any]] = {}
    for f in fragments:
        if f.index not in calls:
            assert f.call_id and f.name, f"the first fragment of call {f.index} names it: {f}"
            calls[f.index] = {"id": f.call_id, "type": "function",
                              "function": {"name": f.name, "arguments": ""}}
        else:
            assert (f.call_id, f.name) == (None, None), f"only the first fragment names it: {f}"
        calls[f.index]["function"]["arguments"] += f.arguments
    assert sorted(calls) == list(range(len(calls))), "calls are numbered 0, 1, ..."
    return [calls[i] for i in sorted(calls)]


async def test_a_tool_the_student_names_is_called_in_fragments_that_join_into_json_arguments(
        fake: FakeOpenAI, chat: OpenAIChatModel) -> None:
    text, fragments, usage = await answer(chat, user("Use lookup_word on 'reciprocal'."),
                                          tools=TOOLS)

    assert text == ""
    assert len(fragments) > 2, "the arguments arrive in pieces, as OpenAI streams them"
    [call] = calls_of(fragments)
    assert call["id"].startswith("call_") and call["function"]["name"] == "lookup_word"
    assert json.loads(call["function"]["arguments"]) == {"word": "word 1"}
    assert len(usage) == 1 and usage[0].tokens_out == len(fragments)
    sent = fake.chats[-1]
    assert sent["tools"] == TOOLS and "tool_choice" not in sent
    assert sent["stream"] is True and sent["max_tokens"] == 400  # the configured default


async def test_two_named_tools_are_called_in_parallel_in_the_order_they_were_named(
        chat: OpenAIChatModel) -> None:
    text, fragments, _ = await answer(
        chat, user("First grade_answer for my last reply, then lookup_word 'divisor'."),
        tools=TOOLS)

    calls = calls_of(fragments)
    assert text == ""
    assert [c["function"]["name"] for c in calls] == ["grade_answer", "lookup_word"]
    assert calls[0]["id"] != calls[1]["id"]
    assert json.loads(calls[0]["function"]["arguments"]) == {
        "question": "question 1", "correct": False, "score": 1}
    assert json.loads(calls[1]["function"]["arguments"]) == {"word": "word 1"}


async def test_a_queued_call_of_a_tool_nobody_offered_comes_through_as_sent(
        fake: FakeOpenAI, chat: OpenAIChatModel) -> None:
    fake.behaviour.tool_calls = [[("delete_all_grades", '{"really": true}')]]

    _, fragments, _ = await answer(chat, user("How do I divide fractions?"), tools=TOOLS)
    [call] = calls_of(fragments)
    assert call["function"] == {"name": "delete_all_grades", "arguments": '{"really": true}'}

    # the queue held one entry: the next request, naming no tool, is answered in words
    text, fragments, _ = await answer(chat, user("How do I divide fractions?"), tools=TOOLS)
    assert fragments == [] and text.startswith("Good question!")


async def test_the_follow_up_with_the_calls_and_their_outputs_is_answered_in_words(
        fake: FakeOpenAI, chat: OpenAIChatModel) -> None:
    messages = user("Please lookup_word 'quotient' and grade_answer my reply.")
    _, fragments, _ = await answer(chat, messages, tools=TOOLS)
    calls = calls_of(fragments)
    follow_up = [*messages, {"role": "assistant", "content": None, "tool_calls": calls},
                 {"role": "tool", "tool_call_id": calls[0]["id"],
                  "content": '{"meaning": "the result of a division"}'},
                 {"role": "tool", "tool_call_id": calls[1]["id"], "content": "recorded"}]

    text, fragments, _ = await answer(chat, follow_up, tools=TOOLS)

    assert fragments == []
    assert text == 'The tool said: {"meaning": "the result of a division"}; recorded'
    assert fake.chats[-1]["messages"][2:] == follow_up[2:]


async def test_a_follow_up_that_leaves_a_call_unanswered_is_refused_as_openai_refuses_it(
        chat: OpenAIChatModel) -> None:
    messages = user("Please lookup_word 'quotient' and grade_answer my reply.")
    _, fragments, _ = await answer(chat, messages, tools=TOOLS)
    calls = calls_of(fragments)
    half = [*messages, {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "a division's result"}]

    with pytest.raises(ProviderError) as refused:
        await answer(chat, half, tools=TOOLS)
    assert refused.value.code == "provider_error" and "HTTP 400" in refused.value.message
    assert f"did not have response messages: {calls[1]['id']}" in refused.value.message

    with pytest.raises(ProviderError) as orphan:  # an answer to a call never made
        await answer(chat, [*messages, {"role": "tool", "tool_call_id": "call_x",
                                        "content": "?"}], tools=TOOLS)
    assert "must be a response to a preceeding message with 'tool_calls'" in orphan.value.message


async def test_tool_choice_none_gets_words_and_a_named_or_required_choice_forces_a_call(
        fake: FakeOpenAI, chat: OpenAIChatModel) -> None:
    text, fragments, _ = await answer(chat, user("Use lookup_word on 'ratio'."), tools=TOOLS,
                                      tool_choice="none")
    assert fragments == [] and text.startswith("Good question!")
    assert fake.chats[-1]["tool_choice"] == "none"

    forced = {"type": "function", "function": {"name": "grade_answer"}}
    _, fragments, _ = await answer(chat, user("Use lookup_word on 'ratio'."), tools=TOOLS,
                                   tool_choice=forced)
    assert [c["function"]["name"] for c in calls_of(fragments)] == ["grade_answer"]
    assert fake.chats[-1]["tool_choice"] == forced

    _, fragments, _ = await answer(chat, user("What is a ratio?"), tools=TOOLS,
                                   tool_choice="required")
    assert [c["function"]["name"] for c in calls_of(fragments)] == ["lookup_word"]

    _, fragments, _ = await answer(chat, user("What is a ratio?"), tools=TOOLS)
    assert fragments == [], "auto, and no tool named: no call"


async def test_a_per_answer_token_cap_cuts_the_answer_and_is_sent_as_max_completion_tokens(
        fake: FakeOpenAI, chat: OpenAIChatModel) -> None:
    fake.behaviour.reply = "one two three four five six"

    text, _, usage = await answer(chat, user("Count for me."), max_tokens=3)

    assert text == "one two three <truncated>"  # said once, where the answer stopped
    assert usage[0].tokens_out == 3
    sent = fake.chats[-1]
    assert sent["max_completion_tokens"] == 3 and "max_tokens" not in sent

    # a call cut at the cap leaves arguments that do not parse: the caller must check them
    _, fragments, _ = await answer(chat, user("Use lookup_word on 'ratio'."), tools=TOOLS,
                                   max_tokens=2)
    [call] = calls_of(fragments)
    with pytest.raises(json.JSONDecodeError):
        json.loads(call["function"]["arguments"])


async def test_a_request_without_tools_streams_the_same_text_as_before(
        fake: FakeOpenAI, chat: OpenAIChatModel) -> None:
    pieces = [p async for p in chat.stream(user("hello there"))]

    assert pieces[:-1] == ["Good ", "question! ", "Let ", "us ", "work ", "it ", "out. ",
                           "You ", "said: ", "hello ", "there"]
    assert isinstance(pieces[-1], Usage) and pieces[-1].tokens_out == 11
    sent = fake.chats[-1]
    assert not {"tools", "tool_choice", "max_completion_tokens"} & set(sent)
    assert sent["stream_options"] == {"include_usage": True}


# --- streams of other OpenAI-compatible servers -------------------------------------------------

class CannedStream(LoopbackServer):
    """A chat-completions endpoint that answers every request with the same SSE chunks."""

    def __init__(self, deltas: list[dict[str, Any]]) -> None:
        super().__init__()
        self.deltas = deltas
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat,
                                           methods=["POST"])])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _chat(self, request: Request) -> Response:
        chunks = [*self.deltas, None]
        body = "".join(
            "data: " + json.dumps({
                "id": "chatcmpl-canned", "object": "chat.completion.chunk", "created": 0,
                "model": "m", "choices": [{"index": 0, "delta": delta or {},
                                           "finish_reason": None if delta else "tool_calls"}],
            }) + "\n\n" for delta in chunks) + "data: [DONE]\n\n"
        return Response(body, media_type="text/event-stream")


def call_fragment(index: int | None, call_id: str | None, name: str | None, arguments: str
                  ) -> dict[str, Any]:
    fragment: dict[str, Any] = {"function": {"arguments": arguments}}
    if index is not None:
        fragment["index"] = index
    if call_id is not None:
        fragment.update(id=call_id, type="function")
    if name is not None:
        fragment["function"]["name"] = name
    return {"tool_calls": [fragment]}


@pytest.mark.parametrize("deltas", [
    pytest.param([call_fragment(0, "call_a", "lookup_word", '{"word": "ratio"}'),
                  call_fragment(0, "call_b", "grade_answer", '{"correct": true}')],
                 id="every call at index 0, each whole (Ollama)"),
    pytest.param([call_fragment(None, "call_a", "lookup_word", '{"word": "ratio"}'),
                  call_fragment(None, "call_b", "grade_answer", '{"correct": true}')],
                 id="no index at all (older Ollama)"),
    pytest.param([call_fragment(0, "call_a", "lookup_word", '{"word": '),
                  call_fragment(0, "call_a", "lookup_word", '"ratio"}'),
                  call_fragment(1, "call_b", "grade_answer", '{"correct": '),
                  call_fragment(1, "call_b", None, "true}")],
                 id="the id and name repeated on every fragment"),
])
async def test_calls_from_other_compatible_servers_are_numbered_as_openai_numbers_them(
        deltas: list[dict[str, Any]]) -> None:
    async with CannedStream(deltas) as server:
        providers, clients = build_providers(make_settings(server))
        assert isinstance(providers.chat, OpenAIChatModel)
        try:
            _, fragments, _ = await answer(providers.chat, user("Look up ratio and grade me."),
                                           tools=TOOLS)
        finally:
            for client in clients:
                await client.close()

    assert calls_of(fragments) == [
        {"id": "call_a", "type": "function",
         "function": {"name": "lookup_word", "arguments": '{"word": "ratio"}'}},
        {"id": "call_b", "type": "function",
         "function": {"name": "grade_answer", "arguments": '{"correct": true}'}}]


async def test_a_call_streamed_without_an_id_gets_one() -> None:
    deltas = [call_fragment(0, None, "lookup_word", '{"word": '),
              call_fragment(0, None, None, '"ratio"}')]
    async with CannedStream(deltas) as server:
        providers, clients = build_providers(make_settings(server))
        assert isinstance(providers.chat, OpenAIChatModel)
        try:
            _, fragments, _ = await answer(providers.chat, user("Look up ratio."), tools=TOOLS)
        finally:
            for client in clients:
                await client.close()

    [call] = calls_of(fragments)
    assert call["id"].startswith("call_") and call["function"] == {
        "name": "lookup_word", "arguments": '{"word": "ratio"}'}
