"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens) through the HTTP
server with the official `anthropic` client: system prompts, stop reasons and sequences,
streaming, tools (tool_use out, tool_result back), thinking blocks, usage, and Anthropic's
error body. The engine is scripted (max.testing.scripted_engine) so that the model's text
(a tool call, a thinking block) is known; the tokenizer is SmolLM2's.
"""


import anthropic
import httpx
import pytest
from transformers import AutoTokenizer

from max.pipelines.lib import TextTokenizer
from max.pipelines.lib.tokens.reasoning import QWEN3
from max.serve.api_server import ServerState, create_app
from max.testing.app_server import AppServer
from max.testing.images import png_bytes, random_picture
from max.testing.scripted_engine import ScriptedEngine
from max.testing.tiny_tokenizer import TOKENIZER_VOCAB, tokenizer_dir

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
def tokenizer():
    return TextTokenizer(AutoTokenizer.from_pretrained(str(tokenizer_dir())), set())


@pytest.fixture(scope="module")
def engine():
    return ScriptedEngine(tokens_per_output=2, num_cached_tokens=3)


@pytest.fixture(scope="module")
def server(tokenizer, engine):
    state = ServerState(tokenizer=tokenizer, engine=engine, served_model_name=MODEL, max_seq_len=1024,
                        vocab_size=TOKENIZER_VOCAB, api_key=KEY, reasoning_parser=QWEN3)  # fmt: skip
    with AppServer(create_app(state)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=60)


def _say(engine, tokenizer, text):
    engine.say(tokenizer.encode(text, add_special_tokens=False))


def _last_prompt(engine, tokenizer):
    return tokenizer.decode(engine.received[next(reversed(engine.received))][0], skip_special_tokens=False)


def test_a_message_with_a_system_prompt(client, engine, tokenizer):
    _say(engine, tokenizer, "Hello there!")
    reply = client.messages.create(model=MODEL, max_tokens=50, system="Be brief.", messages=HI)
    prompt_ids = engine.received[next(reversed(engine.received))][0]
    assert "Be brief." in _last_prompt(engine, tokenizer)
    assert [(b.type, b.text) for b in reply.content] == [("text", "Hello there!")]
    assert (reply.role, reply.model, reply.stop_reason, reply.stop_sequence) == ("assistant", MODEL, "end_turn", None)
    assert reply.id.startswith("msg_")
    usage = reply.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == len(prompt_ids) and usage.cache_read_input_tokens == 3
    assert usage.output_tokens == len(tokenizer.encode("Hello there!", add_special_tokens=False))


def test_stop_reasons(client, engine, tokenizer):
    _say(engine, tokenizer, "Hello there! How are you today?")
    short = client.messages.create(model=MODEL, max_tokens=2, messages=HI)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 2
    cut = client.messages.create(model=MODEL, max_tokens=50, messages=HI, stop_sequences=["nope", "How"])
    assert (cut.content[0].text, cut.stop_reason, cut.stop_sequence) == ("Hello there! ", "stop_sequence", "How")


def test_stream_events_add_up_to_the_message(client, engine, tokenizer):
    _say(engine, tokenizer, "Hello there! How are you today?")
    whole = client.messages.create(model=MODEL, max_tokens=50, messages=HI)
    with client.messages.stream(model=MODEL, max_tokens=50, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == whole.usage.output_tokens


def test_raw_event_order(server, engine, tokenizer):
    _say(engine, tokenizer, "<think>Hmm.</think>Hi!")
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
def test_thinking_is_its_own_block(client, engine, tokenizer, stream):
    _say(engine, tokenizer, "<think>\nThe user greets me.\n</think>\n\nHello!")
    ask = dict(model=MODEL, max_tokens=80, messages=HI, thinking={"type": "enabled", "budget_tokens": 1024})
    if stream:
        with client.messages.stream(**ask) as events:
            reply = events.get_final_message()
    else:
        reply = client.messages.create(**ask)
    assert [b.type for b in reply.content] == ["thinking", "text"]
    assert (reply.content[0].thinking, reply.content[1].text) == ("The user greets me.\n", "Hello!")
    assert "enable_thinking" not in _last_prompt(engine, tokenizer)  # a template variable, not text


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_and_its_result(client, engine, tokenizer, stream):
    _say(engine, tokenizer, CALL)
    ask = dict(model=MODEL, max_tokens=80, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER])
    if stream:
        with client.messages.stream(**ask) as events:
            reply = events.get_final_message()
    else:
        reply = client.messages.create(**ask)
    assert reply.stop_reason == "tool_use"
    uses = [b for b in reply.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [("get_weather", {"city": "Paris"})] and uses[0].id.startswith("toolu_")
    _say(engine, tokenizer, "It is sunny in Paris.")
    history = [
        *ask["messages"],
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}, uses[0].model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny, 21 C"}]},
    ]
    answer = client.messages.create(model=MODEL, max_tokens=80, messages=history, tools=[WEATHER])
    prompt = _last_prompt(engine, tokenizer)
    assert "sunny, 21 C" in prompt and '"city": "Paris"' in prompt and "get_weather" in prompt
    assert answer.content[0].text == "It is sunny in Paris." and answer.stop_reason == "end_turn"


def test_tool_choice_any_forces_a_call_grammar(client, engine, tokenizer):
    _say(engine, tokenizer, CALL)
    reply = client.messages.create(model=MODEL, max_tokens=80, messages=HI, tools=[WEATHER], tool_choice={"type": "any"})
    assert reply.stop_reason == "tool_use"
    params = engine.params[next(reversed(engine.params))]
    assert params.structured_output is not None and "get_weather" in params.structured_output.spec


def test_count_tokens_matches_the_prompt(client, engine, tokenizer):
    _say(engine, tokenizer, "ok")
    ask = dict(model=MODEL, system="Be brief.", messages=HI, tools=[WEATHER])
    count = client.messages.count_tokens(**ask)
    client.messages.create(max_tokens=5, **ask)
    assert count.input_tokens == len(engine.received[next(reversed(engine.received))][0])


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
