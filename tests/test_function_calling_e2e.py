"""Function calling over the socket, end to end: the `openai` SDK's Realtime client declares a
tool, the chat model (the loopback fake, over the real chat-completions wire) calls it, the
client answers with a `function_call_output` item and the tutor goes on from the tool's output."""

from __future__ import annotations

import json

from openai import AsyncOpenAI

from tests.realtime_client import api_token

TOOL = {"type": "function", "name": "lookup_grade", "description": "Look up a student's grade",
        "parameters": {"type": "object", "properties": {"student": {"type": "string"}},
                       "required": ["student"]}}


async def _until_done(conn, seen: list) -> dict:  # type: ignore[no-untyped-def]
    async for event in conn:
        seen.append(event)
        assert event.type != "error", event
        if event.type == "response.done":
            return event.response
    raise AssertionError("the socket closed before response.done")


async def test_a_tool_round_trip_through_the_sdk(server, fake):
    client = AsyncOpenAI(api_key=await api_token(server), websocket_base_url=f"ws://{server}/v1")
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "tools": [TOOL],
                                           "tool_choice": "auto"})
        await conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Please use lookup_grade for Ada."}]})
        await conn.response.create()
        seen: list = []
        response = await _until_done(conn, seen)
        [call] = response.output
        assert (call.type, call.name, call.status) == ("function_call", "lookup_grade", "completed")
        arguments = "".join(e.delta for e in seen
                            if e.type == "response.function_call_arguments.delta")
        assert json.loads(arguments) == json.loads(call.arguments)
        kinds = [e.type for e in seen]
        assert kinds.index("response.output_item.added") < kinds.index(
            "response.function_call_arguments.delta") < kinds.index(
            "response.function_call_arguments.done") < kinds.index("response.output_item.done")
        # the chat request offered the tool in chat-completions shape
        assert fake.chats[-1]["tools"][0]["function"]["name"] == "lookup_grade"

        await conn.conversation.item.create(item={"type": "function_call_output",
                                                  "call_id": call.call_id,
                                                  "output": '{"grade": "A-"}'})
        await conn.response.create()
        answer = await _until_done(conn, [])
    assert answer.output[0].content[0].text == 'The tool said: {"grade": "A-"}'
    messages = fake.chats[-1]["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == call.call_id
    assert messages[-1] == {"role": "tool", "tool_call_id": call.call_id,
                            "content": '{"grade": "A-"}'}


async def test_parallel_calls_and_an_unknown_tool(server, fake):
    fake.behaviour.tool_calls = [[("lookup_grade", '{"student": "Ada"}'),
                                  ("drop_tables", "{}")]]
    client = AsyncOpenAI(api_key=await api_token(server), websocket_base_url=f"ws://{server}/v1")
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "tools": [TOOL]})
        await conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Grades?"}]})
        await conn.response.create()
        response = await _until_done(conn, [])
        # both calls reach the client, each its own item; the client decides about the unknown
        assert [(o.type, o.name) for o in response.output] == [
            ("function_call", "lookup_grade"), ("function_call", "drop_tables")]
        assert len({o.call_id for o in response.output}) == 2
        for call, output in zip(response.output, ('{"grade": "A-"}', "error: no such tool")):
            await conn.conversation.item.create(item={"type": "function_call_output",
                                                      "call_id": call.call_id, "output": output})
        await conn.response.create()
        answer = await _until_done(conn, [])
    assert answer.output[0].content[0].text == \
        'The tool said: {"grade": "A-"}; error: no such tool'
    assert [m["role"] for m in fake.chats[-1]["messages"][-3:]] == ["assistant", "tool", "tool"]
