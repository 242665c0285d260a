"""--reasoning-parser through the HTTP server (uvicorn on a local port, the official `openai`
client): `<think>...</think>` becomes `message.reasoning_content` (and streamed
`delta.reasoning_content`, tags cut across events), `chat_template_kwargs` reach the chat
template, and tool calls and structured outputs apply to the answer after the reasoning.

The engine is scripted (max.testing.scripted_engine): a tiny random model never writes a
thinking block; the tokenizer is SmolLM2's, with a Qwen3-style template.
"""

import json

import openai
import pytest
from transformers import AutoTokenizer

from max.pipelines.lib import TextTokenizer
from max.pipelines.lib.tokens.reasoning import QWEN3
from max.serve.api_server import ServerState, create_app
from max.testing.app_server import AppServer
from max.testing.scripted_engine import ScriptedEngine
from max.testing.tiny_tokenizer import TOKENIZER_VOCAB, tokenizer_dir

MODEL = "thinker"
# Qwen3's way: enable_thinking false closes an empty block; `open_thinking` (a variable of
# this test) opens one, as DeepSeek-R1's template does.
TEMPLATE = (
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}"
    "{%- if open_thinking is defined and open_thinking %}<think>\n{%- endif %}{%- endif %}"
)
ANSWER = "<think>\nThe user greets me.\n</think>\n\nHello there!"
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def tokenizer():
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    hf.chat_template = TEMPLATE
    return TextTokenizer(hf, set())


def _serve(tokenizer, engine, parser):
    state = ServerState(tokenizer=tokenizer, engine=engine, served_model_name=MODEL, max_seq_len=512,
                        vocab_size=TOKENIZER_VOCAB, reasoning_parser=parser)  # fmt: skip
    return AppServer(create_app(state))


@pytest.fixture(scope="module")
def engine():
    return ScriptedEngine(tokens_per_output=1)


@pytest.fixture(scope="module")
def client(tokenizer, engine):
    with _serve(tokenizer, engine, QWEN3) as srv:
        yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)


def _say(engine, tokenizer, text):
    engine.say(tokenizer.encode(text, add_special_tokens=False))


def _last_prompt(engine, tokenizer):
    return tokenizer.decode(engine.received[next(reversed(engine.received))][0], skip_special_tokens=False)


def test_thinking_becomes_reasoning_content(client, engine, tokenizer):
    _say(engine, tokenizer, ANSWER)
    message = client.chat.completions.create(model=MODEL, messages=HI).choices[0].message
    assert (message.content, message.reasoning_content) == ("Hello there!", "The user greets me.\n")


def test_streamed_reasoning_comes_first_and_adds_up(client, engine, tokenizer):
    _say(engine, tokenizer, ANSWER)
    deltas = [c.choices[0].delta for c in client.chat.completions.create(model=MODEL, messages=HI, stream=True)]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert (content, reasoning) == ("Hello there!", "The user greets me.\n")
    kinds = [k for d in deltas for k in ("reasoning_content", "content") if getattr(d, k, None)]
    assert kinds == sorted(kinds, key=lambda k: k == "content") and "think>" not in content + reasoning


def test_chat_template_kwargs_reach_the_template(client, engine, tokenizer):
    _say(engine, tokenizer, "Hello there!")
    reply = client.chat.completions.create(
        model=MODEL, messages=HI, extra_body={"chat_template_kwargs": {"enable_thinking": False}}
    )
    assert _last_prompt(engine, tokenizer).endswith("<think>\n\n</think>")
    assert (reply.choices[0].message.content, reply.choices[0].message.reasoning_content) == ("Hello there!", None)


def test_a_template_that_opens_the_block_starts_the_reasoning(client, engine, tokenizer):
    _say(engine, tokenizer, "Hmm.\n</think>\n\nYes.")
    reply = client.chat.completions.create(model=MODEL, messages=HI, extra_body={"chat_template_kwargs": {"open_thinking": True}})
    assert (reply.choices[0].message.content, reply.choices[0].message.reasoning_content) == ("Yes.", "Hmm.\n")


def test_bad_chat_template_kwargs_are_a_400(client):
    for bad, message in (("yes", "chat_template_kwargs"), ({"messages": []}, "may not set 'messages'")):
        with pytest.raises(openai.BadRequestError, match=message):
            client.chat.completions.create(model=MODEL, messages=HI, extra_body={"chat_template_kwargs": bad})


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_are_read_after_the_reasoning(client, engine, tokenizer, stream):
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    _say(engine, tokenizer, f"<think>Maybe <tool_call> here? No: call it.</think>\n{call}")
    ask = dict(model=MODEL, messages=HI, tools=[WEATHER])
    if stream:
        reasoning, parts, finish = "", {}, None
        for chunk in client.chat.completions.create(stream=True, **ask):
            delta = chunk.choices[0].delta
            reasoning += getattr(delta, "reasoning_content", None) or ""
            for c in delta.tool_calls or []:  # a name, then the arguments in fragments
                name, args = parts.get(c.index, ("", ""))
                parts[c.index] = (name + (c.function.name or ""), args + (c.function.arguments or ""))
            finish = chunk.choices[0].finish_reason or finish
        calls = [(name, json.loads(args)) for name, args in parts.values()]
    else:
        choice = client.chat.completions.create(**ask).choices[0]
        reasoning, finish = choice.message.reasoning_content, choice.finish_reason
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert calls == [("get_weather", {"city": "Paris"})] and finish == "tool_calls"
    assert reasoning == "Maybe <tool_call> here? No: call it."


def test_the_output_constraint_holds_the_answer_only(client, engine, tokenizer):
    _say(engine, tokenizer, '<think>x</think>{"a": 1}')
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    reply = client.chat.completions.create(
        model=MODEL, messages=HI, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    )
    assert reply.choices[0].message.content == '{"a": 1}'
    grammar = engine.params[next(reversed(engine.params))].structured_output
    assert grammar.kind == "lark" and "<think>" in grammar.spec and '"a"' in grammar.spec


def test_without_the_flag_the_thinking_stays_in_the_content(tokenizer):
    engine = ScriptedEngine()
    _say(engine, tokenizer, ANSWER)
    with _serve(tokenizer, engine, None) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        message = client.chat.completions.create(model=MODEL, messages=HI).choices[0].message
    assert message.content == ANSWER and getattr(message, "reasoning_content", None) is None
