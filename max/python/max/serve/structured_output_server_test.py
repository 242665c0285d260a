"""Structured outputs through the real server on SmolLM2-135M-Instruct, with the openai client:
json_schema (nested objects, arrays, enums, required fields; strict) and json_object answers
parse and validate, greedy and sampled, streamed or not; regex and choice constraints in
vLLM's shapes; constrained and free requests mixed in one batch leave the free ones as
they are alone; bad or unsupported constraints are a 400 naming what is wrong."""

import asyncio
import json
import re

import httpx
import jsonschema
import openai
import pytest

from max.testing.server_process import ServerProcess

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "hobbies": {"type": "array", "items": {"enum": ["chess", "music", "tennis", "cooking"]}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 16}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
        },
    },
    "required": ["name", "age", "hobbies", "address"],
}
ORDER = {
    "type": "object",
    "properties": {
        "status": {"enum": ["open", "shipped", "closed"]},
        "lines": {
            "type": "array",
            "minItems": 1,
            "maxItems": 2,
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}$"}, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["sku", "qty"],
            },
        },
        "paid": {"type": "boolean"},
    },
    "required": ["status", "lines", "paid"],
}
VERDICT = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "confidence": {"type": "integer", "minimum": 0, "maximum": 100}},
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}
SCHEMAS = {"person": PERSON, "order": ORDER, "verdict": VERDICT}
PROMPTS = {
    "person": "Invent a person and describe them as JSON.",
    "order": "Write a shop order as JSON.",
    "verdict": "Is Paris in France? Answer as JSON.",
}


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--max-length", "1024", "--kv-cache-page-size", "16") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600)


def _schema_format(name):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


async def _gather(server, calls):
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600)
    try:
        return await asyncio.gather(*(call(client) for call in calls))
    finally:
        await client.close()


def _chat_call(prompt, max_tokens, **extra):
    def call(client):
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, **extra
        )

    return call


def test_json_schemas_parse_and_validate_greedy_and_sampled(server):
    cases = [(name, temperature, seed) for name in SCHEMAS for temperature, seed in ((0.0, None), (1.0, 1))]
    calls = [
        _chat_call(PROMPTS[name], 120, temperature=t, seed=seed, response_format=_schema_format(name))
        for name, t, seed in cases
    ]
    replies = asyncio.run(_gather(server, calls))
    for (name, t, seed), reply in zip(cases, replies):
        choice = reply.choices[0]
        value = json.loads(choice.message.content)
        jsonschema.validate(value, SCHEMAS[name])
        assert choice.finish_reason == "stop", (name, t, seed, choice.message.content)
        # strict: objects that leave additionalProperties unsaid get no other keys
        assert set(value) <= set(SCHEMAS[name]["properties"]), value


def test_json_object_and_streamed_schema(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_object"},
    )
    content = reply.choices[0].message.content
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    assert content.startswith("{")
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPTS["verdict"]}],
        max_tokens=40,
        temperature=0,
        stream=True,
        response_format=_schema_format("verdict"),
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), VERDICT)


def test_regex_and_choice_in_vllm_shapes(client):
    phone = r"\(\d{3}\) \d{3}-\d{4}"
    for extra in ({"guided_regex": phone}, {"structured_outputs": {"regex": phone}}):
        reply = client.completions.create(model=MODEL, prompt="Call me at", max_tokens=20, temperature=0, extra_body=extra)
        assert re.fullmatch(phone, reply.choices[0].text), reply.choices[0].text
    for extra in ({"guided_choice": ["yes", "no"]}, {"structured_outputs": {"choice": ["yes", "no"]}}):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Is the sky blue?"}],
            max_tokens=5,
            temperature=1.0,
            seed=3,
            extra_body=extra,
        )
        assert reply.choices[0].message.content in ("yes", "no")
    reply = client.completions.create(
        model=MODEL, prompt="A fruit:", max_tokens=20, extra_body={"guided_json": VERDICT}, temperature=0
    )
    jsonschema.validate(json.loads(reply.choices[0].text), VERDICT)


def test_64_constrained_and_free_requests_mixed(server, client):
    free_prompts = [f"Tell me about the number {i}." for i in range(32)]
    free = [_chat_call(p, 8, temperature=0, extra_body={"ignore_eos": True}) for p in free_prompts]
    constrained = [
        _chat_call(PROMPTS["verdict"], 40, temperature=1.0 if i % 2 else 0.0, seed=i, response_format=_schema_format("verdict"))
        for i in range(32)
    ]
    calls = [c for pair in zip(free, constrained) for c in pair]
    replies = asyncio.run(_gather(server, calls))
    for i, reply in enumerate(replies):
        if i % 2:
            jsonschema.validate(json.loads(reply.choices[0].message.content), VERDICT)
    # Free requests batched with constrained ones answer what they answer alone.
    for i in (0, 31):
        alone = _chat_call(free_prompts[i], 8, temperature=0, extra_body={"ignore_eos": True})(client)
        assert alone.choices[0].message.content == replies[2 * i].choices[0].message.content


@pytest.mark.parametrize(
    "extra, status, words",
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "dependentSchemas": {"a": {}}}}}},
            400,
            "dependentSchemas",
        ),
        ({"guided_regex": "(?<=a)b"}, 400, "look-around"),
        ({"response_format": {"type": "xml"}}, 400, "response_format.type"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, 400, "schema"),
        ({"guided_choice": "yes"}, 400, "guided_choice"),
        ({"guided_regex": "a+", "guided_choice": ["a"]}, 400, "only one output constraint"),
        ({"structured_outputs": {"xml": "<a/>"}}, 400, "structured_outputs.xml"),
    ],
)
def test_bad_constraints_are_400_naming_them(server, extra, status, words):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, **extra}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"] or words == error["param"], error


def test_named_tool_on_a_template_without_tools(client):
    # SmolLM2's chat template knows no tools: they go to the system prompt (hermes format)
    # and the grammar makes the named call.
    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"word": {"type": "string", "maxLength": 12}}, "required": ["word"]},
        },
    }
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Look up the word 'cat'."}],
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        parallel_tool_calls=False,
        max_tokens=40,
        temperature=0,
    ).choices[0]
    assert reply.finish_reason == "tool_calls", reply
    (call,) = reply.message.tool_calls
    assert call.function.name == "lookup" and set(json.loads(call.function.arguments)) == {"word"}


def test_chat_logprobs_cover_exactly_the_content(client):
    for stream in (False, True):
        kwargs = dict(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=40, temperature=0, logprobs=True
        )
        if stream:
            chunks = [c for c in client.chat.completions.create(stream=True, **kwargs) if c.choices]
            content = "".join(c.choices[0].delta.content or "" for c in chunks)
            tokens = [t.token for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
            finish = chunks[-1].choices[0].finish_reason
        else:
            choice = client.chat.completions.create(**kwargs).choices[0]
            content, finish = choice.message.content, choice.finish_reason
            tokens = [t.token for t in choice.logprobs.content]
        assert finish == "stop"  # ended by its EOS, which is not part of the content
        assert "".join(tokens) == content
