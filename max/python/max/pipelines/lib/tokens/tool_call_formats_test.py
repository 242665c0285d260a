"""The mistral and pythonic tool-call formats: detection from the chat template, whole and
streamed answers (any cut gives the same content and calls), and the forcing grammar."""

import json

import pytest

from max.pipelines.lib.sampling.structured_output import StructuredOutput, grammar_for
from max.pipelines.lib.tokens.tool_calls import (
    HERMES,
    LLAMA3_JSON,
    MISTRAL,
    PYTHONIC,
    ToolCallParser,
    detect_format,
    parse_tool_calls,
    tool_call_grammar,
)

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def _calls(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


def _streamed(text, fmt, step):
    parser = ToolCallParser(fmt)
    content, calls = "", []
    for i in range(0, len(text), step):
        c, found = parser.feed(text[i : i + step])
        content, calls = content + c, calls + found
    c, found = parser.finish()
    return content + c, calls + found


def test_formats_are_detected_from_the_template():
    assert detect_format("{{ '[TOOL_CALLS]' + tool_calls | tojson }} tools") == MISTRAL
    assert detect_format("[func_name1(params_name1=params_value1)] tools") == PYTHONIC
    assert detect_format("<|python_start|> tools") == PYTHONIC
    assert detect_format("<|python_tag|> ipython tools") == LLAMA3_JSON
    assert detect_format("tools") == HERMES


MISTRAL_ANSWERS = [
    ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]', ""),
    ('[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]', ""),
    ('Sure. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]', "Sure. "),
    ('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}', ""),
]


@pytest.mark.parametrize(("text", "content"), MISTRAL_ANSWERS)
@pytest.mark.parametrize("step", [1, 3, 1000])
def test_mistral_calls(text, content, step):
    got_content, calls = _streamed(text, MISTRAL, step)
    assert got_content == content
    assert _calls(calls) == [("get_weather", {"city": "Paris"}), ("get_time", {})]


PYTHONIC_ANSWERS = [
    '[get_weather(city="Paris"), get_time()]',
    '<|python_start|>[get_weather(city="Paris"), get_time()]<|python_end|>',
]


@pytest.mark.parametrize("text", PYTHONIC_ANSWERS)
@pytest.mark.parametrize("step", [1, 4, 1000])
def test_pythonic_calls(text, step):
    content, calls = _streamed(text, PYTHONIC, step)
    assert content == "" and _calls(calls) == [("get_weather", {"city": "Paris"}), ("get_time", {})]


def test_pythonic_literals_become_json():
    _, calls = parse_tool_calls('[f(a=1, b=[True, None], c={"k": 2.5})]', PYTHONIC)
    assert _calls(calls) == [("f", {"a": 1, "b": [True, None], "c": {"k": 2.5}})]


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("[1, 2, 3] are numbers", PYTHONIC),
        ("[f(x)]", PYTHONIC),  # positional arguments: not a call of a tool
        ("[f(a=open('x'))]", PYTHONIC),  # not a literal
        ("[not json", MISTRAL),
        ("Just text.", MISTRAL),
    ],
)
def test_what_is_not_a_call_stays_content(text, fmt):
    assert parse_tool_calls(text, fmt) == (text, [])


def test_mistral_grammar_forces_a_list_of_calls():
    grammar = tool_call_grammar([WEATHER], MISTRAL, parallel=True)
    grammar_for(StructuredOutput("lark", grammar))  # llguidance compiles it
    assert grammar.startswith('start: "[" call (", " call)* "]"')
    with pytest.raises(ValueError, match="pythonic"):
        tool_call_grammar([WEATHER], PYTHONIC, parallel=False)
