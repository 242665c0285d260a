"""Details clients read, through the HTTP server with the official `openai` client:
`usage.prompt_tokens_details.cached_tokens`, `logit_bias` and `priority` reaching the
engine (and their bad values refused), tool-call arguments streamed in fragments, and
the mistral and pythonic tool-call formats (--tool-call-parser). The engine is scripted
(max.testing.scripted_engine); the tokenizer is SmolLM2's."""

import json

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from max.pipelines.lib import TextTokenizer
from max.pipelines.lib.tokens.tool_calls import MISTRAL, PYTHONIC
from max.serve.api_server import ServerState, create_app
from max.testing.app_server import AppServer
from max.testing.scripted_engine import ScriptedEngine
from max.testing.tiny_tokenizer import TOKENIZER_VOCAB, tokenizer_dir

MODEL = "m"
HI = [{"role": "user", "content": "Hi"}]
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer(AutoTokenizer.from_pretrained(str(tokenizer_dir())), set())


def _serve(tokenizer, engine, tool_call_parser=None):
    state = ServerState(tokenizer=tokenizer, engine=engine, served_model_name=MODEL, max_seq_len=512,
                        vocab_size=TOKENIZER_VOCAB, tool_call_parser=tool_call_parser)  # fmt: skip
    return AppServer(create_app(state))


@pytest.fixture(scope="module")
def engine():
    return ScriptedEngine(tokens_per_output=1, num_cached_tokens=4)


@pytest.fixture(scope="module")
def server(tokenizer, engine):
    with _serve(tokenizer, engine) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def _say(engine, tokenizer, text):
    engine.say(tokenizer.encode(text, add_special_tokens=False))


def _last_params(engine):
    return engine.params[next(reversed(engine.params))]


def test_cached_tokens_in_usage(client, engine, tokenizer):
    _say(engine, tokenizer, "Hello!")
    chat = client.chat.completions.create(model=MODEL, messages=HI)
    assert chat.usage.prompt_tokens_details.cached_tokens == 4
    two = client.completions.create(model=MODEL, prompt="Hello there my friend", n=2, max_tokens=3)
    assert two.usage.prompt_tokens_details.cached_tokens == 4  # the prompt counts once
    stream = client.chat.completions.create(model=MODEL, messages=HI, stream=True, stream_options={"include_usage": True})
    assert [c.usage for c in stream if c.usage][0].prompt_tokens_details.cached_tokens == 4


def test_logit_bias_and_priority_reach_the_engine(client, engine, tokenizer):
    _say(engine, tokenizer, "Hello!")
    client.chat.completions.create(model=MODEL, messages=HI, logit_bias={"42": 5, "7": -100}, extra_body={"priority": -3})
    params = _last_params(engine)
    assert params.logit_bias == {42: 5.0, 7: -100.0} and params.priority == -3
    client.completions.create(model=MODEL, prompt="x", max_tokens=2, logit_bias={"9": 1})
    assert _last_params(engine).logit_bias == {9: 1.0} and _last_params(engine).priority == 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"3": 101}}, "logit_bias.3"),
        ({"logit_bias": {"3": "1"}}, "logit_bias.3"),
        ({"logit_bias": [1]}, "logit_bias"),
        ({"priority": 1.5}, "priority"),
        ({"priority": True}, "priority"),
    ],
)
def test_bad_logit_bias_and_priority_are_400s(server, extra, param):
    reply = httpx.post(f"{server.url}/v1/chat/completions", json={"model": MODEL, "messages": HI, **extra})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text


def test_tool_call_arguments_stream_in_fragments(client, engine, tokenizer):
    _say(engine, tokenizer, HERMES_CALL)
    whole = client.chat.completions.create(model=MODEL, messages=HI, tools=[WEATHER]).choices[0].message.tool_calls
    pieces = []
    for chunk in client.chat.completions.create(model=MODEL, messages=HI, tools=[WEATHER], stream=True):
        pieces += chunk.choices[0].delta.tool_calls or []
    assert pieces[0].id and pieces[0].function.name == "get_weather" and pieces[0].function.arguments == ""
    assert len(pieces) > 5 and all(p.index == 0 for p in pieces) and all(p.id is None for p in pieces[1:])
    arguments = "".join(p.function.arguments for p in pieces)
    assert json.loads(arguments) == json.loads(whole[0].function.arguments) == {"city": "Paris", "unit": "C"}


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        (MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'),
        (PYTHONIC, '[get_weather(city="Paris")]'),
    ],
)
def test_other_tool_call_formats(tokenizer, fmt, text):
    engine = ScriptedEngine()
    _say(engine, tokenizer, text)
    with _serve(tokenizer, engine, fmt) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        choice = client.chat.completions.create(model=MODEL, messages=HI, tools=[WEATHER]).choices[0]
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
        assert calls == [("get_weather", {"city": "Paris"})] and choice.finish_reason == "tool_calls"
        forced = httpx.post(f"{srv.url}/v1/chat/completions",
                            json={"model": MODEL, "messages": HI, "tools": [WEATHER], "tool_choice": "required"})  # fmt: skip
    if fmt == PYTHONIC:
        assert forced.status_code == 400 and forced.json()["error"]["param"] == "tool_choice"
    else:
        assert forced.status_code == 200 and "get_weather" in engine.params[next(reversed(engine.params))].structured_output.spec
