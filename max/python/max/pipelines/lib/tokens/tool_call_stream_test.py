"""Tool-call arguments streamed in fragments: every way of cutting a hermes answer gives a
header then fragments whose concatenation is the call's arguments, with the call's id."""

import json

import pytest

from max.pipelines.lib.tokens.tool_call_stream import ToolCallStreamer, open_call_first
from max.pipelines.lib.tokens.tool_calls import HERMES, LLAMA3_JSON, ToolCallParser

ANSWER = (
    'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
)


def _stream(text, cuts, fmt=HERMES):
    parser = ToolCallParser(fmt)
    streamer = ToolCallStreamer(parser)
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    fragments, content = [], ""
    for piece in pieces:
        c, calls = parser.feed(piece)
        content += c
        fragments += streamer.fragments(calls)
    c, calls = parser.finish()
    fragments += streamer.fragments(calls)
    return content + c, fragments, parser.calls


def _joined(fragments):
    calls = {}
    for f in fragments:
        entry = calls.setdefault(f.index, {"id": None, "name": None, "arguments": ""})
        entry["id"] = f.id or entry["id"]
        entry["name"] = f.name or entry["name"]
        entry["arguments"] += f.arguments
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_fragments_add_up_to_the_calls(step):
    content, fragments, calls = _stream(ANSWER, list(range(step, len(ANSWER), step)))
    assert content.strip() == "Let me check."
    joined = _joined(fragments)
    assert [(j["id"], j["name"]) for j in joined] == [(c.id, c.name) for c in calls]
    assert [json.loads(j["arguments"]) for j in joined] == [json.loads(c.arguments) for c in calls]
    if step < 10:  # streamed piecemeal: the header went out before the arguments
        first = [f for f in fragments if f.index == 0]
        assert first[0].name == "get_weather" and first[0].arguments == "" and len(first) > 2


def test_other_formats_go_out_whole():
    text = '{"name": "get_time", "parameters": {"zone": "CET"}}'
    _, fragments, calls = _stream(text, list(range(1, len(text))), LLAMA3_JSON)
    assert [(f.index, f.id, f.name, f.arguments) for f in fragments] == [(0, calls[0].id, "get_time", calls[0].arguments)]


def test_the_open_calls_rest_goes_before_the_text_and_the_next_call():
    # One delta closes the first call, has text after it and opens the second one.
    parser = ToolCallParser(HERMES)
    streamer = ToolCallStreamer(parser)
    streamer.fragments(parser.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa')[1])
    content, calls = parser.feed('ris"}}\n</tool_call>\nNow the time.<tool_call>\n{"name": "get_time", "arguments": {')
    continuing, rest = open_call_first(streamer.fragments(calls))
    assert content == "\nNow the time." and [(f.index, f.name, f.arguments) for f in continuing] == [(0, None, 'ris"}')]
    assert [(f.index, f.name) for f in rest] == [(1, "get_time"), (1, None)]
