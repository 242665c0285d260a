"""Tool-call formats: parsing whole and streamed answers (any split of the text gives the
same content and calls), the grammar that forces calls, and the fallback rendering."""

import json

import pytest

from max.pipelines.lib.sampling.structured_output import StructuredOutput, grammar_for
from max.pipelines.lib.tokens.tool_calls import (
    HERMES,
    LLAMA3_JSON,
    ToolCallParser,
    detect_format,
    messages_without_tool_fields,
    parse_tool_calls,
    tool_call_grammar,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}

HERMES_ANSWER = (
    'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
)


def _calls(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


def test_hermes_whole_answer():
    content, calls = parse_tool_calls(HERMES_ANSWER, HERMES)
    assert content.strip() == "Let me look."
    assert _calls(calls) == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert calls[0].id != calls[1].id and calls[0].id.startswith("call_")


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_hermes_streamed_in_any_pieces(step):
    parser = ToolCallParser(HERMES)
    content, calls = "", []
    for i in range(0, len(HERMES_ANSWER), step):
        c, k = parser.feed(HERMES_ANSWER[i : i + step])
        assert "<" not in c  # the start of a call is never streamed as content
        content, calls = content + c, calls + k
    c, k = parser.finish()
    assert (content + c).strip() == "Let me look."
    assert _calls(calls + k) == [("get_weather", {"city": "Paris"}), ("get_time", {})]


def test_text_that_is_not_a_call_stays_content():
    assert parse_tool_calls("a < b and <tool_call>not json</tool_call>", HERMES) == (
        "a < b and <tool_call>not json</tool_call>",
        [],
    )
    content, calls = parse_tool_calls('<tool_call>\n{"name": "get_time", "arguments": {}}', HERMES)
    assert content == "" and _calls(calls) == [("get_time", {})]  # cut before its end tag


def test_llama3_json():
    answer = '{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "get_time", "parameters": {}}'
    assert _calls(parse_tool_calls(answer, LLAMA3_JSON)[1]) == [("get_weather", {"city": "Oslo"}), ("get_time", {})]
    assert parse_tool_calls("The weather is fine.", LLAMA3_JSON) == ("The weather is fine.", [])
    assert detect_format("{% if x %}<|python_tag|>{% endif %}") == LLAMA3_JSON
    # A hermes model that drops the tags: a bare call is still a call.
    bare = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert _calls(parse_tool_calls(bare, HERMES)[1]) == [("get_weather", {"city": "Paris"})]
    assert parse_tool_calls('{"not": "a call"}', HERMES) == ('{"not": "a call"}', [])
    assert detect_format("<tool_call>") == HERMES


@pytest.mark.parametrize("format", [HERMES, LLAMA3_JSON])
@pytest.mark.parametrize("parallel", [False, True])
def test_grammar_compiles(format, parallel):
    grammar_for(StructuredOutput("lark", tool_call_grammar([WEATHER, TIME], format, parallel)))
    grammar_for(StructuredOutput("lark", tool_call_grammar([WEATHER], format, parallel, tag_ids=(7, 8))))


def test_fallback_rendering_keeps_calls_and_results():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    out = messages_without_tool_fields(messages, [WEATHER])
    assert out[0]["role"] == "system" and "Be brief." in out[0]["content"] and "get_weather" in out[0]["content"]
    assert _calls(parse_tool_calls(out[2]["content"], HERMES)[1]) == [("get_weather", {"city": "Rome"})]
    assert out[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
