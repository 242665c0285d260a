"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens) through the HTTP
server with the official `anthropic` client: system prompts, stop reasons and sequences,
streaming, tools (tool_use out, tool_result back), thinking blocks, usage, and Anthropic's
error body. The server is scripted (max.testing.scripted_server) so that the model's text
(a tool call, a thinking block) is known; the tokenizer is SmolLM2's.
"""


import json

import anthropic
import httpx
import pytest

from max.pipelines.lib.tokens.reasoning import QWEN3
from max.testing.images import png_bytes, random_picture
from max.testing.scripted_server import ScriptedServer

MODEL = "claude-local"
KEY = "sk-test"
HI = [{"role": "user", "content": "Hi"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def server():
    with ScriptedServer(tokens_per_output=2, num_cached_tokens=3, served_model_name=MODEL, api_key=KEY,
                        reasoning_parser=QWEN3) as srv:  # fmt: skip
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=60)


def test_a_message_with_a_system_prompt(client, server):
    server.say("Hello there!")
    reply = client.messages.create(model=MODEL, max_tokens=50, system="Be brief.", messages=HI)
    prompt_ids = server.last_prompt_ids()
    assert "Be brief." in server.last_prompt()
    assert [(b.type, b.text) for b in reply.content] == [("text", "Hello there!")]
    assert (reply.role, reply.model, reply.stop_reason, reply.stop_sequence) == ("assistant", MODEL, "end_turn", None)
    assert reply.id.startswith("msg_")
    usage = reply.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == len(prompt_ids) and usage.cache_read_input_tokens == 3
    assert usage.output_tokens == len(server.tokenizer.encode("Hello there!", add_special_tokens=False))


def test_stop_reasons(client, server):
    server.say("Hello there! How are you today?")
    short = client.messages.create(model=MODEL, max_tokens=2, messages=HI)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 2
    cut = client.messages.create(model=MODEL, max_tokens=50, messages=HI, stop_sequences=["nope", "How"])
    assert (cut.content[0].text, cut.stop_reason, cut.stop_sequence) == ("Hello there! ", "stop_sequence", "How")


def test_stream_events_add_up_to_the_message(client, server):
    server.say("Hello there! How are you today?")
    whole = client.messages.create(model=MODEL, max_tokens=50, messages=HI)
    with client.messages.stream(model=MODEL, max_tokens=50, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == whole.usage.output_tokens


def test_raw_event_order(server):
    server.say("<think>Hmm.</think>Hi!")
    body = {"model": MODEL, "max_tokens": 50, "messages": HI, "stream": True}
    names = []
    with httpx.stream("POST", f"{server.url}/v1/messages", json=body, headers={"x-api-key": KEY}) as response:
        names = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
    squeezed = [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]]
    assert squeezed == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_is_its_own_block(client, server, stream):
    server.say("<think>\nThe user greets me.\n</think>\n\nHello!")
    ask = dict(model=MODEL, max_tokens=80, messages=HI, thinking={"type": "enabled", "budget_tokens": 1024})
    if stream:
        with client.messages.stream(**ask) as events:
            reply = events.get_final_message()
    else:
        reply = client.messages.create(**ask)
    assert [b.type for b in reply.content] == ["thinking", "text"]
    assert (reply.content[0].thinking, reply.content[1].text) == ("The user greets me.\n", "Hello!")
    assert "enable_thinking" not in server.last_prompt()  # a template variable, not text


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_and_its_result(client, server, stream):
    server.say(CALL)
    ask = dict(model=MODEL, max_tokens=80, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER])
    if stream:
        with client.messages.stream(**ask) as events:
            reply = events.get_final_message()
    else:
        reply = client.messages.create(**ask)
    assert reply.stop_reason == "tool_use"
    uses = [b for b in reply.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [("get_weather", {"city": "Paris"})] and uses[0].id.startswith("toolu_")
    server.say("It is sunny in Paris.")
    history = [
        *ask["messages"],
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}, uses[0].model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny, 21 C"}]},
    ]
    answer = client.messages.create(model=MODEL, max_tokens=80, messages=history, tools=[WEATHER])
    prompt = server.last_prompt()
    assert "sunny, 21 C" in prompt and '"city": "Paris"' in prompt and "get_weather" in prompt
    assert answer.content[0].text == "It is sunny in Paris." and answer.stop_reason == "end_turn"


def test_tool_use_input_streams_in_fragments(client, server):
    # A long input and two calls after some text: each tool_use block opens with its name,
    # then its input arrives in several input_json_delta fragments, then it stops.
    args = {"city": "Paris", "unit": "celsius", "days": [1, 2, 3], "note": "bring an umbrella if it rains"}
    calls = [json.dumps({"name": "get_weather", "arguments": args}), '{"name": "get_weather", "arguments": {"city": "Rome"}}']
    server.say("Let me look.\n" + "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls))
    ask = dict(model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER])
    whole = client.messages.create(**ask)
    with client.messages.stream(**ask) as stream:
        events = [e for e in stream if e.type.startswith(("message_", "content_block_"))]
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    squeezed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert squeezed == ["message_start", *["content_block_start", "content_block_delta", "content_block_stop"] * 3,
                        "message_delta", "message_stop"]  # fmt: skip
    starts = [e.content_block for e in events if e.type == "content_block_start"]
    assert [b.type for b in starts] == ["text", "tool_use", "tool_use"]
    assert all(b.name == "get_weather" and b.input == {} and b.id.startswith("toolu_") for b in starts[1:])
    expected = [b.input for b in whole.content if b.type == "tool_use"]
    assert expected == [args, {"city": "Rome"}]
    for index in (1, 2):
        deltas = [e.delta for e in events if e.type == "content_block_delta" and e.index == index]
        assert {d.type for d in deltas} == {"input_json_delta"}
        assert json.loads("".join(d.partial_json for d in deltas)) == expected[index - 1]
        if index == 1:
            assert len(deltas) > 1  # fragments, not the input whole at the end
    assert [b.input for b in final.content if b.type == "tool_use"] == expected and final.stop_reason == "tool_use"
    assert [b.text for b in final.content if b.type == "text"] == [b.text for b in whole.content if b.type == "text"]


def test_a_call_cut_by_max_tokens_still_ends_the_stream_well(client, server):
    server.say("<tool_call>\n" + json.dumps({"name": "get_weather", "arguments": {"city": "Paris " * 40}}))
    ask = dict(model=MODEL, max_tokens=40, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER])
    with client.messages.stream(**ask) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 40
    # The call's block went out while it was written (its input, unfinished, reads as what
    # the client could parse of it); the answer's text then says what the model wrote.
    assert [b.type for b in final.content] == ["tool_use", "text"] and isinstance(final.content[0].input, dict)
    assert final.content[1].text.startswith('<tool_call>\n{"name": "get_weather"')


def test_tool_choice_any_forces_a_call_grammar(client, server):
    server.say(CALL)
    reply = client.messages.create(model=MODEL, max_tokens=80, messages=HI, tools=[WEATHER], tool_choice={"type": "any"})
    assert reply.stop_reason == "tool_use"
    params = server.last_params()
    assert params.structured_output is not None and "get_weather" in params.structured_output.spec


def test_count_tokens_matches_the_prompt(client, server):
    server.say("ok")
    ask = dict(model=MODEL, system="Be brief.", messages=HI, tools=[WEATHER])
    count = client.messages.count_tokens(**ask)
    client.messages.create(max_tokens=5, **ask)
    assert count.input_tokens == len(server.last_prompt_ids())


def test_images_reach_the_chat_as_image_parts(client):
    data = __import__("base64").b64encode(png_bytes(random_picture(8, 8, 0))).decode()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    # This tokenizer takes no images: the refusal names them, in Anthropic's shape.
    with pytest.raises(anthropic.BadRequestError) as error:
        client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": [image]}])
    assert error.value.body["type"] == "error" and error.value.body["error"]["type"] == "invalid_request_error"
    assert "image" in error.value.body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": MODEL, "messages": HI}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 5, "messages": HI, "temperature": 1.5}, "temperature"),
        ({"model": "other", "max_tokens": 5, "messages": HI}, "not served"),
        ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "role"),
        ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_use"}]}]}, "tool_use"),
        ({"model": MODEL, "max_tokens": 5, "messages": HI, "tool_choice": {"type": "tool"}, "tools": [WEATHER]}, "name"),
        ({"model": MODEL, "max_tokens": 0, "messages": HI}, "max_tokens"),
    ],
)
def test_bad_requests_get_anthropic_errors(server, body, words):
    reply = httpx.post(f"{server.url}/v1/messages", json=body, headers={"x-api-key": KEY})
    assert reply.status_code == 400, reply.text
    error = reply.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert words in error["error"]["message"]


def test_a_wrong_key_is_an_anthropic_authentication_error(server):
    client = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as error:
        client.messages.create(model=MODEL, max_tokens=5, messages=HI)
    assert error.value.body["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.url}/v1/messages", headers={"x-api-key": KEY}).json()["type"] == "error"  # 405
