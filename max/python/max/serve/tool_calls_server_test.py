"""Tool calling through the real server on Qwen2.5-Coder-0.5B-Instruct (hermes format, its
chat template renders tools), with the openai client: a call, its result sent back, then the
answer, streaming and not; tool_choice required and a named function always give calls
that parse (the grammar forces them); none gives text; bad tools are a 400."""

import json

import httpx
import openai
import pytest

from max.testing.server_process import ServerProcess

MODEL = "qwen"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--model-path", "qwen2.5-0.5b", "--max-length", "1024", "--served-model-name", MODEL) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600)


def _stream_message(stream):
    """The assistant message and finish reason accumulated from a chat stream."""
    content, calls, finish = "", {}, None
    for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for call in delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = call.id or entry["id"]
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def test_auto_finds_the_call_in_the_answer(client):
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER], max_tokens=40, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_round_trip_call_result_answer(client, stream):
    # The call is forced (tool_choice required): a 0.5B model left to itself with two tools
    # may write its call inside a markdown fence, which no parser takes for a call.
    ask = dict(model=MODEL, tools=[WEATHER, TIME], max_tokens=40, temperature=0)
    first = dict(ask, tool_choice="required", parallel_tool_calls=False)
    if stream:
        _, calls, finish = _stream_message(client.chat.completions.create(messages=QUESTION, stream=True, **first))
    else:
        reply = client.chat.completions.create(messages=QUESTION, **first).choices[0]
        finish = reply.finish_reason
        assert reply.message.content is None
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in reply.message.tool_calls]
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert calls[0]["id"].startswith("call_")
    history = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": calls[0]["id"], "type": "function", "function": {"name": "get_weather", "arguments": calls[0]["arguments"]}}
            ],
        },
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "It is 18 degrees and sunny."},
    ]
    final = dict(ask, tool_choice="none", max_tokens=24)
    if stream:
        content, calls, finish = _stream_message(client.chat.completions.create(messages=history, stream=True, **final))
    else:
        reply = client.chat.completions.create(messages=history, extra_body={"return_token_ids": True}, **final)
        choice = reply.choices[0]
        content, calls, finish = choice.message.content, choice.message.tool_calls or [], choice.finish_reason
        # The chat template rendered the call and its result (Qwen's: a <tool_response> turn).
        prompt = _tokenizer().decode(choice.model_extra["prompt_token_ids"], skip_special_tokens=False)
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt, prompt
        assert "<tool_response>\nIt is 18 degrees and sunny.\n</tool_response>" in prompt, prompt
    # tool_choice none: text, whatever it says (a 0.5B model's answers vary)
    assert content and not calls and finish in ("stop", "length")


def _tokenizer():
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import PipelineConfig, load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(PipelineConfig(model_path="qwen2.5-0.5b"), register_all()))


def test_required_and_named_always_parse(client):
    named = {"type": "function", "function": {"name": "get_time"}}
    for tool_choice, name in (("required", None), (named, "get_time")):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            tools=[WEATHER, TIME],
            tool_choice=tool_choice,
            parallel_tool_calls=False,
            max_tokens=40,
            temperature=0,
        ).choices[0]
        assert reply.finish_reason == "tool_calls"
        (call,) = reply.message.tool_calls
        assert call.function.name == (name or call.function.name) and call.function.name in ("get_weather", "get_time")
        args = json.loads(call.function.arguments)
        assert set(args) == {"city"} if call.function.name == "get_weather" else {"zone"}


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ],
)
def test_bad_tools_are_400(server, extra, param):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, **extra}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
