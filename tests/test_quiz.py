"""`POST /api/ai/quiz` end to end: the real app under uvicorn, the sample course, and the real
`openai` SDK's structured output against the loopback fake provider (tests/fake_openai.py), which
checks the schema as OpenAI checks a strict one and answers what each test queues: valid quizzes
citing the passages the prompt showed, made-up passage ids, invalid JSON, wrong shapes, refusals,
failures and timeouts. Also the plan's limits (typed-question allowance, per-minute requests, the
tier's model) and the validation rules by plain calls."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest

from providers import ProviderError, Providers
from providers.openai import OpenAIChatModel, make_client
from study.quiz import InvalidOutput, quiz_schema, validate_quiz
from tests.conftest import make_settings
from tests.fake_openai import (Refusal, Truncated, prompt_passage_ids, schema_instance,
                               strict_schema_problem, structured_schema)

CITATION_KEYS = {"chunk_id", "course", "document", "heading", "score", "snippet"}
TOPIC = "dividing fractions"


# --- helpers ---------------------------------------------------------------------------------

def quiz_for(body: dict[str, Any], *, sources: list[list[str]] | None = None) -> dict[str, Any]:
    """A valid quiz for a structured-output request: as many questions as the schema asks, of
    its kinds in turn, each citing a passage the prompt showed (or `sources[i]`)."""
    questions = structured_schema(body)["properties"]["questions"]
    kinds = questions["items"]["properties"]["type"]["enum"]
    ids = prompt_passage_ids(body)
    out = []
    for i in range(questions["minItems"]):
        cite = sources[i] if sources and i < len(sources) else ([ids[i % len(ids)]] if ids else [])
        if kinds[i % len(kinds)] == "mcq":
            out.append({"type": "mcq", "question": f"What is 1/2 divided by 1/4? ({i})",
                        "choices": ["1/8", "2", "4"], "answer_index": 1, "answer": "2",
                        "explanation": "Multiply by the reciprocal: 1/2 x 4 = 2.", "sources": cite})
        else:
            out.append({"type": "open", "question": f"Why do we flip the second fraction? ({i})",
                        "choices": None, "answer_index": None,
                        "answer": "Dividing by a number is multiplying by its reciprocal.",
                        "explanation": "Division undoes multiplication.", "sources": cite})
    return {"questions": out}


def mcq(**changes: Any) -> Any:
    """A one-question quiz builder whose mcq question has `changes` applied (sources: the first
    passage of the prompt unless changed)."""
    def build(body: dict[str, Any]) -> dict[str, Any]:
        question = {"type": "mcq", "question": "What is 1/2 divided by 1/4?",
                    "choices": ["1/8", "2", "4"], "answer_index": 1, "answer": "2",
                    "explanation": "Multiply by the reciprocal.",
                    "sources": prompt_passage_ids(body)[:1]}
        question.update(changes)
        return {"questions": [question]}
    return build


async def course_server(fake, start_server, **overrides: Any) -> str:
    address = await start_server(make_settings(fake, load_sample_course=True, **overrides))
    return f"http://{address}"


async def quiz(base: str, **body: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        return await client.post("/api/ai/quiz", json=body)


def structured_requests(fake) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [c for c in fake.chats if (c.get("response_format") or {}).get("type") == "json_schema"]


def check_citations(result: dict[str, Any]) -> None:
    ids = {c["chunk_id"] for c in result["citations"]}
    for c in result["citations"]:
        assert set(c) == CITATION_KEYS and re.match(r"^c\d+$", c["chunk_id"]), c
        assert c["course"] == "sample" and c["snippet"]
    cited = {s for q in result["quiz"]["questions"] for s in q["sources"]}
    assert cited == ids  # every citation is cited, every source has its citation


# --- a quiz on a topic -----------------------------------------------------------------------

async def test_a_quiz_on_a_course_topic_cites_the_passages_it_was_given(fake, start_server):
    base = await course_server(fake, start_server)
    fake.behaviour.structured_reply = quiz_for
    r = await quiz(base, topic=TOPIC, questions=4)
    assert r.status_code == 200, r.text
    result = r.json()
    questions = result["quiz"]["questions"]
    assert result["quiz"] | {"questions": None, "id": None} == {
        "id": None, "source": "topic", "course": None, "topic": TOPIC, "questions": None}
    assert re.fullmatch(r"[0-9a-f]{32}", result["quiz"]["id"])  # stored, for its answers
    assert [q["type"] for q in questions] == ["mcq", "open", "mcq", "open"]
    assert questions[0] == {"type": "mcq", "question": "What is 1/2 divided by 1/4? (0)",
                            "choices": ["1/8", "2", "4"], "answer_index": 1, "answer": "2",
                            "explanation": "Multiply by the reciprocal: 1/2 x 4 = 2.",
                            "sources": questions[0]["sources"]}
    assert set(questions[1]) == {"type", "question", "answer", "explanation", "sources"}
    check_citations(result)
    assert any("fraction" in c["snippet"].lower() or "fraction" in c["heading"].lower()
               for c in result["citations"])

    # what went to the provider: one non-streamed structured-output request, strict schema
    [sent] = structured_requests(fake)
    assert not sent.get("stream")
    spec = sent["response_format"]["json_schema"]
    assert spec["name"] == "quiz" and spec["strict"] is True
    assert strict_schema_problem(spec) is None
    shown = prompt_passage_ids(sent)
    assert shown and spec["schema"]["properties"]["questions"]["minItems"] == 4
    sources = spec["schema"]["properties"]["questions"]["items"]["properties"]["sources"]
    assert sources["items"]["enum"] == shown  # a strict provider cannot invent an id
    assert "Dividing Fractions" in sent["messages"][0]["content"]
    assert TOPIC in sent["messages"][-1]["content"]
    assert sent["model"] == "gpt-4o-mini" and result["model"] == "gpt-4o-mini"
    assert sent["max_tokens"] >= 4 * 200


async def test_kinds_and_course_are_honoured(fake, start_server):
    base = await course_server(fake, start_server)
    fake.behaviour.structured_reply = quiz_for
    r = await quiz(base, topic="photosynthesis", course="sample", questions=2, kinds=["open"])
    assert r.status_code == 200, r.text
    assert [q["type"] for q in r.json()["quiz"]["questions"]] == ["open", "open"]
    assert r.json()["quiz"]["course"] == "sample"
    schema = structured_schema(fake.chats[-1])
    assert schema["properties"]["questions"]["items"]["properties"]["type"]["enum"] == ["open"]
    assert "Photosynthesis" in fake.chats[-1]["messages"][0]["content"]


async def test_the_fakes_generic_answer_is_a_schema_instance(fake, start_server):
    """With nothing queued the fake answers a generic instance of the schema: open questions
    citing the first passage shown, which is a valid quiz."""
    base = await course_server(fake, start_server)
    r = await quiz(base, topic=TOPIC, questions=2, kinds=["open"])
    assert r.status_code == 200, r.text
    first = prompt_passage_ids(fake.chats[-1])[0]
    assert [q["sources"] for q in r.json()["quiz"]["questions"]] == [[first], [first]]


# --- made-up sources, invalid output, retries ------------------------------------------------

async def test_made_up_source_ids_are_dropped_when_the_question_cites_a_real_one(fake,
                                                                                start_server):
    base = await course_server(fake, start_server)
    fake.behaviour.structured = [lambda body: quiz_for(
        body, sources=[["c999999", prompt_passage_ids(body)[0]], [prompt_passage_ids(body)[0]]])]
    r = await quiz(base, topic=TOPIC, questions=2)
    assert r.status_code == 200, r.text
    assert len(structured_requests(fake)) == 1
    assert r.json()["quiz"]["questions"][0]["sources"] == [prompt_passage_ids(fake.chats[-1])[0]]
    assert "c999999" not in json.dumps(r.json())
    check_citations(r.json())


async def test_a_question_citing_only_made_up_sources_is_sent_back_once(fake, start_server):
    base = await course_server(fake, start_server)
    fake.behaviour.structured = [lambda body: quiz_for(body, sources=[["c999999"], ["c888888"]]),
                                 quiz_for]
    r = await quiz(base, topic=TOPIC, questions=2)
    assert r.status_code == 200, r.text
    first, retry = structured_requests(fake)
    assert retry["messages"][:-2] == first["messages"]
    assert retry["messages"][-2]["role"] == "assistant" and "c999999" in retry["messages"][-2]["content"]
    feedback = retry["messages"][-1]["content"]
    assert "questions.0: the question cites none of the passages given" in feedback
    assert "questions.1:" in feedback
    assert "c999999" not in json.dumps(r.json()) and "c888888" not in json.dumps(r.json())
    check_citations(r.json())


async def test_invalid_json_then_a_valid_answer(fake, start_server):
    base = await course_server(fake, start_server)
    fake.behaviour.structured = ['{"questions": [{"type": "mcq", "quest', quiz_for]
    r = await quiz(base, topic=TOPIC, questions=3)
    assert r.status_code == 200, r.text
    assert len(r.json()["quiz"]["questions"]) == 3
    retry = structured_requests(fake)[1]
    assert retry["messages"][-2] == {"role": "assistant",
                                     "content": '{"questions": [{"type": "mcq", "quest'}
    assert "not valid JSON" in retry["messages"][-1]["content"]


@pytest.mark.parametrize("bad, says", [
    (mcq(answer="7", answer_index=None), "the answer must be one of the choices"),
    (mcq(answer_index=3), "answer_index 3 is not the index of a choice"),
    (mcq(answer="4"), "the answer '4' is not choices[1]"),
    (mcq(choices=["2", "2", "4"]), "the choices must be distinct"),
    (mcq(choices=["2"], answer_index=0), "needs 2 to 6 choices, not 1"),
    (mcq(choices=None, answer_index=None), "needs 2 to 6 choices, not 0"),
    (mcq(type="essay"), "questions.0.type: Input should be 'mcq' or 'open'"),
    (mcq(question=""), "questions.0.question: String should have at least 1 character"),
    (lambda body: {"questions": []}, "asked for 1 questions, got 0"),
    (lambda body: {"quiz": []}, "questions: Field required"),
    (lambda body: [1, 2], "Input should be a valid dictionary"),
])
async def test_each_kind_of_invalid_quiz_is_explained_to_the_model(fake, start_server, bad, says):
    base = await course_server(fake, start_server)
    fake.behaviour.structured = [bad, quiz_for]
    r = await quiz(base, topic=TOPIC, questions=1, kinds=["mcq"])
    assert r.status_code == 200, r.text
    assert says in structured_requests(fake)[1]["messages"][-1]["content"]


async def test_invalid_twice_is_a_502(fake, start_server):
    base = await course_server(fake, start_server)
    fake.behaviour.structured = ["not json at all", mcq(answer="7", answer_index=None)]
    r = await quiz(base, topic=TOPIC, questions=1)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "provider_invalid_output"
    assert "the answer must be one of the choices" in r.json()["error"]["message"]
    assert len(structured_requests(fake)) == 2  # one retry, no more


async def test_an_answer_cut_at_the_token_limit_is_retried(fake, start_server):
    base = await course_server(fake, start_server)
    fake.behaviour.structured = [Truncated('{"questions": [{"type": "open"'), quiz_for]
    r = await quiz(base, topic=TOPIC, questions=1)
    assert r.status_code == 200, r.text
    assert "cut at the limit of 520 tokens" in structured_requests(fake)[1]["messages"][-1]["content"]


async def test_a_refusal_is_a_clear_error(fake, start_server):
    base = await course_server(fake, start_server)
    fake.behaviour.structured = [Refusal("I can't help with that.")]
    r = await quiz(base, topic=TOPIC)
    assert r.status_code == 422
    assert r.json()["error"] == {"code": "provider_refused",
                                 "message": "the chat model declined: I can't help with that."}
    assert len(structured_requests(fake)) == 1  # a refusal is not retried


# --- provider failures -----------------------------------------------------------------------

async def test_provider_http_error_is_a_502(fake, start_server):
    base = await course_server(fake, start_server)
    fake.behaviour.chat_failures = ["500"]
    r = await quiz(base, topic=TOPIC)
    assert r.status_code == 502 and r.json()["error"]["code"] == "provider_error"
    assert "HTTP 500" in r.json()["error"]["message"]


async def test_provider_timeout_is_a_504(fake, start_server):
    base = await course_server(fake, start_server, provider_timeout_s=0.5)
    fake.behaviour.chat_failures = ["timeout"]
    r = await quiz(base, topic=TOPIC, questions=1)
    assert r.status_code == 504 and r.json()["error"]["code"] == "provider_timeout"
    fake.behaviour.structured_reply = quiz_for  # the next request works
    assert (await quiz(base, topic=TOPIC, questions=1)).status_code == 200


async def test_unreachable_provider_is_a_502(fake, start_server):
    nowhere = make_client(api_key="k", base_url="http://127.0.0.1:9/v1",  # the discard port
                          timeout=1, connect_timeout=1, max_retries=0)
    address = await start_server(make_settings(fake, load_sample_course=True),
                                 Providers(None, OpenAIChatModel(nowhere, "m")))
    try:
        r = await quiz(f"http://{address}", topic=TOPIC)
    finally:
        await nowhere.close()
    assert r.status_code == 502 and r.json()["error"]["code"] == "provider_unreachable", r.text


async def test_without_a_provider_it_says_what_to_configure(start_server):
    base = f"http://{await start_server(make_settings(None))}"
    r = await quiz(base, topic=TOPIC)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "provider_not_configured"
    assert "OPENAI_API_KEY" in r.json()["error"]["message"]


# --- bad requests, nothing to quiz on ---------------------------------------------------------

@pytest.mark.parametrize("body", [
    {}, {"topic": ""}, {"topic": "   "}, {"topic": 3}, {"topic": "x", "questions": 0},
    {"topic": "x", "questions": 11}, {"topic": "x", "questions": "5"},
    {"topic": "x", "questions": True}, {"topic": "x", "kinds": []},
    {"topic": "x", "kinds": ["essay"]}, {"topic": "x", "kinds": "mcq"},
    {"topic": "x", "source": "recent"}, {"source": "everything"}, {"source": "topic"},
    {"topic": "x", "course": ""}, {"topic": "x", "count": 3}, [], "topic",
])
async def test_bad_requests_are_400(fake, start_server, body):
    base = await course_server(fake, start_server)
    r = await quiz(base, **body) if isinstance(body, dict) else None
    if r is None:
        async with httpx.AsyncClient(base_url=base) as client:
            r = await client.post("/api/ai/quiz", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request" and r.json()["error"]["message"]
    assert fake.chats == []


async def test_a_body_that_is_not_json_is_400(fake, start_server):
    base = await course_server(fake, start_server)
    async with httpx.AsyncClient(base_url=base) as client:
        r = await client.post("/api/ai/quiz", content=b"{topic: fractions",
                              headers={"content-type": "application/json"})
        empty = await client.post("/api/ai/quiz")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    assert empty.status_code == 400


async def test_a_topic_the_course_does_not_cover_costs_nothing(fake, start_server, tmp_path):
    path = tmp_path / "tiers.json"
    path.write_text(json.dumps({"tiers": {"one": {"chat_messages_per_day": 1}}, "default": "one"}))
    base = await course_server(fake, start_server, tiers_file=path, guest_tier="one")
    r = await quiz(base, topic="zyzzyva quokka")
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_material"
    r = await quiz(base, topic="fractions", course="no-such-course")
    assert r.status_code == 422 and "no-such-course" in r.json()["error"]["message"]
    assert fake.chats == []
    fake.behaviour.structured_reply = quiz_for
    assert (await quiz(base, topic=TOPIC, questions=1)).status_code == 200  # still allowed one


# --- a quiz on the student's recent sessions --------------------------------------------------

async def test_a_quiz_on_recent_sessions_uses_the_students_turns_and_their_passages(
        fake, start_server):
    base = await course_server(fake, start_server)
    app = start_server.apps[-1]
    r = await quiz(base, source="recent")
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_history"

    fake.behaviour.reply = "Multiply by the reciprocal [c1]."
    async with httpx.AsyncClient(base_url=base) as client:
        for question in ("How do I divide fractions?", "What does the Calvin cycle make?"):
            assert (await client.post("/api/ai/chat", json={"message": question})).status_code == 200
    assert await app.state.services.writer.flush(5)
    fake.chats.clear()
    fake.behaviour.structured_reply = quiz_for
    r = await quiz(base, source="recent", questions=3)
    assert r.status_code == 200, r.text
    assert r.json()["quiz"]["source"] == "recent" and r.json()["quiz"]["topic"] is None
    check_citations(r.json())
    system = fake.chats[-1]["messages"][0]["content"]
    # the turns, oldest first, then passages found for them
    assert system.index("Student: How do I divide fractions?") \
        < system.index("Student: What does the Calvin cycle make?")
    # the passage id the tutor mentioned back then is not shown as if it were a passage now
    assert "Tutor: Multiply by the reciprocal." in system and "[c1]" not in system
    assert "Dividing Fractions" in system and "Calvin Cycle" in system
    # a course filter that matches none of them
    r = await quiz(base, source="recent", course="history")
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_history"


async def test_recent_turns_without_course_material_give_an_uncited_quiz(fake, start_server):
    base = f"http://{await start_server(make_settings(fake))}"  # no course at all
    app = start_server.apps[-1]
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.post("/api/ai/chat", json={"message": "What is a noun?"})
                ).status_code == 200
    assert await app.state.services.writer.flush(5)
    fake.behaviour.structured_reply = quiz_for
    r = await quiz(base, source="recent", questions=2)
    assert r.status_code == 200, r.text
    assert r.json()["citations"] == []
    assert all(q["sources"] == [] for q in r.json()["quiz"]["questions"])
    assert "leave \"sources\" empty" in fake.chats[-1]["messages"][0]["content"]


# --- the plan's limits -----------------------------------------------------------------------

async def test_quizzes_count_against_the_plans_typed_questions_and_request_limit(
        fake, start_server, tmp_path):
    path = tmp_path / "tiers.json"
    path.write_text(json.dumps({"tiers": {
        "tiny": {"chat_messages_per_day": 2, "chat_model": "large",
                 "requests_per_minute": {"ai": 3, "default": 100}}}, "default": "tiny"}))
    base = await course_server(fake, start_server, tiers_file=path, guest_tier="tiny",
                               llm_model_large="big-model")
    fake.behaviour.structured_reply = quiz_for
    async with httpx.AsyncClient(base_url=base) as client:
        first = await client.post("/api/ai/quiz", json={"topic": TOPIC, "questions": 1})
        chat = await client.post("/api/ai/chat", json={"message": "hi"})
        spent = await client.post("/api/ai/quiz", json={"topic": TOPIC, "questions": 1})
        limited = await client.post("/api/ai/quiz", json={"topic": TOPIC, "questions": 1})
        usage = (await client.get("/api/billing/usage")).json()
        limited_summary = await client.post("/api/ai/summary", json={"session_id": "x"})
    assert (first.status_code, chat.status_code) == (200, 200)
    assert first.json()["model"] == "big-model" and structured_requests(fake)[0]["model"] == "big-model"
    assert spent.status_code == 402 and spent.json()["error"]["code"] == "quota_exceeded"
    assert 0 < int(spent.headers["retry-after"]) <= 86400
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert limited_summary.status_code == 429  # the same "ai" group
    assert usage["requests"]["ai"]["limit_per_minute"] == 3
    assert len(structured_requests(fake)) == 1


# --- validation by plain calls ----------------------------------------------------------------

def test_the_schema_is_strict_and_its_generic_instance_is_judged():
    schema = quiz_schema(3, ["mcq", "open"], ["c1", "c2"])
    assert strict_schema_problem({"name": "quiz", "strict": True, "schema": schema}) is None
    with pytest.raises(InvalidOutput) as caught:  # "answer 4" is not a choice
        validate_quiz(schema_instance(schema), questions=3, kinds=["mcq", "open"], ids=["c1"])
    assert len(caught.value.errors) == 3


def test_an_answer_index_alone_or_an_answer_text_alone_is_enough():
    q = {"type": "mcq", "question": "?", "choices": ["a", "b"], "explanation": "", "sources": ["c1"]}
    by_index = validate_quiz({"questions": [q | {"answer_index": 1, "answer": ""}]},
                             questions=1, kinds=["mcq"], ids=["c1"])
    by_text = validate_quiz({"questions": [q | {"answer_index": None, "answer": " B. "}]},
                            questions=1, kinds=["mcq"], ids=["c1"])
    assert by_index[0].public() == by_text[0].public() == q | {"answer_index": 1, "answer": "b"}


def test_extra_questions_are_cut_and_open_questions_lose_their_choices():
    q = {"type": "open", "question": "?", "choices": ["x"], "answer_index": 0, "answer": "a",
         "explanation": "", "sources": ["[c2]", "c2"]}
    out = validate_quiz({"questions": [q, q, q]}, questions=2, kinds=["open"], ids=["c2"])
    assert [o.public() for o in out] == [{"type": "open", "question": "?", "answer": "a",
                                          "explanation": "", "sources": ["c2"]}] * 2


# --- the provider method itself, through the real SDK ------------------------------------------

async def test_complete_json_over_the_sdk(fake):
    client = make_client(api_key="k", base_url=fake.base_url, timeout=5, connect_timeout=1,
                         max_retries=0)
    chat = OpenAIChatModel(client, "m", max_tokens=400)
    schema = {"type": "object", "additionalProperties": False, "required": ["n"],
              "properties": {"n": {"type": "integer"}}}
    messages = [{"role": "user", "content": "a number please"}]
    try:
        fake.behaviour.structured = [{"n": 7}, Refusal("No."), Truncated('{"n": ')]
        reply = await chat.complete_json(messages, name="number", schema=schema)
        assert (json.loads(reply.text), reply.finish_reason) == ({"n": 7}, "stop")
        assert reply.usage is not None and reply.usage.tokens_in == 3
        assert fake.chats[-1]["max_tokens"] == 400 and fake.chats[-1]["response_format"] == {
            "type": "json_schema", "json_schema": {"name": "number", "strict": True,
                                                   "schema": schema}}
        with pytest.raises(ProviderError) as refused:
            await chat.complete_json(messages, name="number", schema=schema)
        assert refused.value.code == "provider_refused"
        cut = await chat.complete_json(messages, name="number", schema=schema, max_tokens=3)
        assert (cut.text, cut.finish_reason) == ('{"n": ', "length")
        assert fake.chats[-1]["max_tokens"] == 3
        # a schema OpenAI would refuse is refused by the fake too (HTTP 400)
        loose = {"type": "object", "properties": {"n": {"type": "integer"}}}
        with pytest.raises(ProviderError) as bad_schema:
            await chat.complete_json(messages, name="number", schema=loose)
        assert bad_schema.value.code == "provider_error"
        assert "additionalProperties" in bad_schema.value.message
        # the per-request timeout replaces the client's
        fake.behaviour.chat_failures = ["timeout"]
        started = asyncio.get_running_loop().time()
        with pytest.raises(ProviderError) as timed_out:
            await chat.complete_json(messages, name="number", schema=schema, timeout=0.3)
        assert timed_out.value.code == "provider_timeout"
        assert asyncio.get_running_loop().time() - started < 3
    finally:
        await client.close()
