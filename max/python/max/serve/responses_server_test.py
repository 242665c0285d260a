"""OpenAI's Responses API (POST /v1/responses, GET and DELETE /v1/responses/{id}) through
the HTTP server with the official `openai` client: string and item input, instructions,
function tools and their outputs, tool_choice, text.format, reasoning items, streaming
events in OpenAI's order, previous_response_id over the bounded store (`store: false`
honoured), and errors. The engine is scripted (max.testing.scripted_engine); the
tokenizer is SmolLM2's.
"""

import json

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from max.pipelines.lib import TextTokenizer
from max.pipelines.lib.tokens.reasoning import QWEN3
from max.serve.api_server import ServerState, create_app
from max.testing.app_server import AppServer
from max.testing.scripted_engine import ScriptedEngine
from max.testing.tiny_tokenizer import TOKENIZER_VOCAB, tokenizer_dir

MODEL = "local"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer(AutoTokenizer.from_pretrained(str(tokenizer_dir())), set())


@pytest.fixture(scope="module")
def engine():
    return ScriptedEngine(tokens_per_output=2, num_cached_tokens=2)


@pytest.fixture(scope="module")
def server(tokenizer, engine):
    state = ServerState(tokenizer=tokenizer, engine=engine, served_model_name=MODEL, max_seq_len=1024,
                        vocab_size=TOKENIZER_VOCAB, reasoning_parser=QWEN3)  # fmt: skip
    with AppServer(create_app(state)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def _say(engine, tokenizer, text):
    engine.say(tokenizer.encode(text, add_special_tokens=False))


def _last_prompt(engine, tokenizer):
    return tokenizer.decode(engine.received[next(reversed(engine.received))][0], skip_special_tokens=False)


def test_string_input_with_instructions(client, engine, tokenizer):
    _say(engine, tokenizer, "Hello there!")
    response = client.responses.create(model=MODEL, input="Hi", instructions="Be brief.")
    prompt = _last_prompt(engine, tokenizer)
    assert "Be brief." in prompt and "Hi" in prompt
    assert response.output_text == "Hello there!" and response.status == "completed"
    assert response.id.startswith("resp_") and response.instructions == "Be brief."
    usage = response.usage
    assert usage.input_tokens == len(engine.received[next(reversed(engine.received))][0])
    assert usage.input_tokens_details.cached_tokens == 2 and usage.output_tokens > 0


def test_max_output_tokens_makes_it_incomplete(client, engine, tokenizer):
    _say(engine, tokenizer, "Hello there! How are you today?")
    response = client.responses.create(model=MODEL, input="Hi", max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3
    with client.responses.stream(model=MODEL, input="Hi", max_output_tokens=3) as stream:
        streamed = stream.get_final_response()
    assert streamed.status == "incomplete" and streamed.output_text == response.output_text


def test_stream_events_in_openai_order(client, engine, tokenizer):
    _say(engine, tokenizer, "Hello there! How are you today?")
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
def test_reasoning_is_its_own_item(client, engine, tokenizer, stream):
    _say(engine, tokenizer, "<think>\nThey greet me.\n</think>\n\nHello!")
    if stream:
        with client.responses.stream(model=MODEL, input="Hi") as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(model=MODEL, input="Hi")
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "They greet me.\n" and response.output_text == "Hello!"


@pytest.mark.parametrize("stream", [False, True])
def test_function_call_and_its_output(client, engine, tokenizer, stream):
    _say(engine, tokenizer, CALL)
    ask = dict(model=MODEL, input="Weather in Paris?", tools=[WEATHER])
    if stream:
        with client.responses.stream(**ask) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(**ask)
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    _say(engine, tokenizer, "Sunny.")
    follow = client.responses.create(
        model=MODEL, tools=[WEATHER],
        input=[{"role": "user", "content": "Weather in Paris?"}, calls[0].model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}],
    )  # fmt: skip
    prompt = _last_prompt(engine, tokenizer)
    assert "sunny, 21 C" in prompt and '"city": "Paris"' in prompt and follow.output_text == "Sunny."


def test_tool_choice_and_text_format_become_grammars(client, engine, tokenizer):
    _say(engine, tokenizer, CALL)
    client.responses.create(model=MODEL, input="x", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"})
    assert "get_weather" in engine.params[next(reversed(engine.params))].structured_output.spec
    _say(engine, tokenizer, '{"a": 1}')
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
    response = client.responses.create(
        model=MODEL, input="x", text={"format": {"type": "json_schema", "name": "a", "schema": schema, "strict": True}}
    )
    assert json.loads(response.output_text) == {"a": 1} and response.text.format.type == "json_schema"
    assert '"a"' in engine.params[next(reversed(engine.params))].structured_output.spec


def test_image_input_reaches_the_chat(client):
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    with pytest.raises(openai.BadRequestError, match="image"):  # this tokenizer takes none: the chat's refusal
        client.responses.create(model=MODEL, input=[{"role": "user", "content": [{"type": "input_text", "text": "x"}, image]}])


def test_previous_response_id_continues_and_store_is_honoured(client, engine, tokenizer, server):
    _say(engine, tokenizer, "My name is Max.")
    first = client.responses.create(model=MODEL, input="What is your name?", instructions="Secret rule.")
    _say(engine, tokenizer, "Nice.")
    second = client.responses.create(model=MODEL, input="And mine is Ann.", previous_response_id=first.id)
    prompt = _last_prompt(engine, tokenizer)
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
