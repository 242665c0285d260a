"""OpenAI's Responses API (POST /v1/responses, GET and DELETE /v1/responses/{id}) through
the HTTP server with the official `openai` client: string and item input, instructions,
function tools and their outputs, tool_choice, text.format, reasoning items, streaming
events in OpenAI's order, previous_response_id over the bounded store (`store: false`
honoured), and errors. The server is scripted (max.testing.scripted_server); the
tokenizer is SmolLM2's.
"""

import json

import httpx
import openai
import pytest

from max.pipelines.lib.tokens.reasoning import QWEN3
from max.testing.scripted_server import ScriptedServer

MODEL = "local"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def server():
    with ScriptedServer(tokens_per_output=2, num_cached_tokens=2, served_model_name=MODEL, reasoning_parser=QWEN3) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_string_input_with_instructions(client, server):
    server.say("Hello there!")
    response = client.responses.create(model=MODEL, input="Hi", instructions="Be brief.")
    prompt = server.last_prompt()
    assert "Be brief." in prompt and "Hi" in prompt
    assert response.output_text == "Hello there!" and response.status == "completed"
    assert response.id.startswith("resp_") and response.instructions == "Be brief."
    usage = response.usage
    assert usage.input_tokens == len(server.last_prompt_ids())
    assert usage.input_tokens_details.cached_tokens == 2 and usage.output_tokens > 0


def test_max_output_tokens_makes_it_incomplete(client, server):
    server.say("Hello there! How are you today?")
    response = client.responses.create(model=MODEL, input="Hi", max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3
    with client.responses.stream(model=MODEL, input="Hi", max_output_tokens=3) as stream:
        streamed = stream.get_final_response()
    assert streamed.status == "incomplete" and streamed.output_text == response.output_text


def test_stream_events_in_openai_order(client, server):
    server.say("Hello there! How are you today?")
    whole = client.responses.create(model=MODEL, input="Hi")
    with client.responses.stream(model=MODEL, input="Hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    squeezed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert squeezed == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    assert final.output_text == whole.output_text and final.usage.output_tokens == whole.usage.output_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_is_its_own_item(client, server, stream):
    server.say("<think>\nThey greet me.\n</think>\n\nHello!")
    if stream:
        with client.responses.stream(model=MODEL, input="Hi") as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(model=MODEL, input="Hi")
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "They greet me.\n" and response.output_text == "Hello!"


@pytest.mark.parametrize("stream", [False, True])
def test_function_call_and_its_output(client, server, stream):
    server.say(CALL)
    ask = dict(model=MODEL, input="Weather in Paris?", tools=[WEATHER])
    if stream:
        with client.responses.stream(**ask) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(**ask)
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    server.say("Sunny.")
    follow = client.responses.create(
        model=MODEL, tools=[WEATHER],
        input=[{"role": "user", "content": "Weather in Paris?"}, calls[0].model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}],
    )  # fmt: skip
    prompt = server.last_prompt()
    assert "sunny, 21 C" in prompt and '"city": "Paris"' in prompt and follow.output_text == "Sunny."


def _by_item(events, kind):
    """The `kind` events of a stream, grouped by output_index."""
    out = {}
    for e in events:
        if e.type == kind:
            out.setdefault(e.output_index, []).append(e)
    return out


@pytest.mark.parametrize("helper", [False, True])
def test_function_call_arguments_stream_in_fragments(client, server, helper):
    # A long argument object and two calls after some text: each function_call item is
    # added with its name, then its arguments arrive in several deltas, then done.
    args = {"city": "Paris", "unit": "celsius", "days": [1, 2, 3], "note": "bring an umbrella if it rains"}
    calls = [json.dumps({"name": "get_weather", "arguments": args}), '{"name": "get_weather", "arguments": {"city": "Rome"}}']
    server.say("Let me look.\n" + "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls))
    ask = dict(model=MODEL, input="Weather?", tools=[WEATHER])
    whole = client.responses.create(**ask)
    if helper:
        with client.responses.stream(**ask) as stream:
            events = list(stream)
            final = stream.get_final_response()
    else:
        events = list(client.responses.create(**ask, stream=True))
        final = events[-1].response
    kinds = [e.type for e in events]
    squeezed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    call_events = ["response.output_item.added", "response.function_call_arguments.delta",
                   "response.function_call_arguments.done", "response.output_item.done"]  # fmt: skip
    assert squeezed == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", *call_events, *call_events, "response.completed",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    expected = [json.loads(item.arguments) for item in whole.output if item.type == "function_call"]
    assert expected == [args, {"city": "Rome"}]
    added = {e.output_index: e.item for e in events if e.type == "response.output_item.added"}
    deltas = _by_item(events, "response.function_call_arguments.delta")
    done = _by_item(events, "response.function_call_arguments.done")
    assert sorted(deltas) == sorted(done) == [1, 2] and len(deltas[1]) > 1  # fragments, not whole at the end
    for index, want in zip((1, 2), expected):
        assert (added[index].type, added[index].name, added[index].arguments) == ("function_call", "get_weather", "")
        joined = "".join(e.delta for e in deltas[index])
        assert {e.item_id for e in deltas[index]} == {added[index].id} and done[index][0].arguments == joined
        assert json.loads(joined) == want
    got = [item for item in final.output if item.type == "function_call"]
    assert [json.loads(item.arguments) for item in got] == expected and {item.status for item in got} == {"completed"}
    assert final.output_text == whole.output_text == "Let me look."


def test_a_call_cut_short_is_incomplete_and_not_continued(client, server):
    server.say("<tool_call>\n" + json.dumps({"name": "get_weather", "arguments": {"city": "Paris " * 40}}))
    events = list(client.responses.create(model=MODEL, input="Weather?", tools=[WEATHER], stream=True, max_output_tokens=40))
    final = events[-1].response
    calls = [item for item in final.output if item.type == "function_call"]
    assert final.status == "incomplete" and [c.status for c in calls] == ["incomplete"]
    assert calls[0].arguments.startswith('{"city": "Paris')
    # The cut call is no call of the conversation (its arguments are no JSON): it continues.
    server.say("Sorry.")
    follow = client.responses.create(model=MODEL, input="Go on.", tools=[WEATHER], previous_response_id=final.id)
    assert follow.output_text == "Sorry."


def test_tool_choice_and_text_format_become_grammars(client, server):
    server.say(CALL)
    client.responses.create(model=MODEL, input="x", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"})
    assert "get_weather" in server.last_params().structured_output.spec
    server.say('{"a": 1}')
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
    response = client.responses.create(
        model=MODEL, input="x", text={"format": {"type": "json_schema", "name": "a", "schema": schema, "strict": True}}
    )
    assert json.loads(response.output_text) == {"a": 1} and response.text.format.type == "json_schema"
    assert '"a"' in server.last_params().structured_output.spec


def test_image_input_reaches_the_chat(client):
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    with pytest.raises(openai.BadRequestError, match="image"):  # this tokenizer takes none: the chat's refusal
        client.responses.create(model=MODEL, input=[{"role": "user", "content": [{"type": "input_text", "text": "x"}, image]}])


def test_previous_response_id_continues_and_store_is_honoured(client, server):
    server.say("My name is Max.")
    first = client.responses.create(model=MODEL, input="What is your name?", instructions="Secret rule.")
    server.say("Nice.")
    second = client.responses.create(model=MODEL, input="And mine is Ann.", previous_response_id=first.id)
    prompt = server.last_prompt()
    assert "What is your name?" in prompt and "My name is Max." in prompt and "And mine is Ann." in prompt
    assert "Secret rule." not in prompt  # instructions do not carry over
    assert client.responses.retrieve(second.id).output_text == "Nice."
    unstored = client.responses.create(model=MODEL, input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="x", previous_response_id=unstored.id)
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    assert httpx.delete(f"{server.url}/v1/responses/{first.id}").status_code == 404


def test_the_store_is_bounded():
    from max.serve.responses_handler import ResponseStore, StoredResponse

    store = ResponseStore(capacity=2)
    for rid in ("a", "b", "c"):
        store.put(rid, StoredResponse({"id": rid}, []))
    assert store.get("a") is None and store.get("c").body == {"id": "c"}
    small = StoredResponse({"id": "s"}, [{"role": "user", "content": "x" * 100}])
    by_bytes = ResponseStore(capacity=10, max_bytes=2 * small.size + 10)
    for rid in ("a", "b", "c"):
        by_bytes.put(rid, small)
    assert by_bytes.get("a") is None and by_bytes.get("b") is small and by_bytes.delete("c") and not by_bytes.delete("c")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL}, "input"),
        ({"model": MODEL, "input": []}, "input"),
        ({"model": MODEL, "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"model": MODEL, "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"model": MODEL, "input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"model": MODEL, "input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format.schema"),
        ({"model": MODEL, "input": "x", "temperature": 3}, "temperature"),
    ],
)
def test_bad_requests_are_openai_400s(server, body, param):
    reply = httpx.post(f"{server.url}/v1/responses", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_openapi_lists_the_new_routes_with_typed_bodies(server):
    from openapi_spec_validator import validate

    document = httpx.get(f"{server.url}/openapi.json").json()
    validate(document)
    paths = document["paths"]
    for path, method, schema in (("/v1/responses", "post", "ResponsesRequest"), ("/v1/messages", "post", "MessagesRequest"),
                                 ("/v1/messages/count_tokens", "post", "CountTokensRequest")):  # fmt: skip
        body = paths[path][method]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{schema}"}
    assert {"get", "delete"} <= set(paths["/v1/responses/{response_id}"])
    assert "chat_template_kwargs" in document["components"]["schemas"]["ChatCompletionRequest"]["properties"]
