"""How answers are written: server-sent events stay one line whatever the text holds; an
assistant message and its streamed deltas carry reasoning, content and tool calls in
OpenAI's shape."""

import json

from max.pipelines.lib import TextDelta
from max.pipelines.lib.tokens.tool_calls import ToolCall
from max.serve.response_rendering import assistant_delta, chunk, sse, token_id_fields


def test_stream_events_are_one_line_even_with_unicode_line_separators():
    """Generated text may hold U+2028, U+2029 or NEL, which JSON leaves raw but line readers
    built on str.splitlines() (httpx's) take for line ends (the soak benchmark found one)."""
    event = sse({"text": "a\u2028b\u2029c\x85d é"})
    assert len(event.strip("\n").splitlines()) == 1
    assert json.loads(event[len("data: ") :])["text"] == "a\u2028b\u2029c\x85d é"


def test_a_delta_says_only_what_is_new_and_numbers_its_calls_after_those_sent():
    text = TextDelta("Hi", [1], None, False, None)
    assert assistant_delta(text, None, 0) == {"content": "Hi"}
    finished = TextDelta("", [2], None, True, "stop")
    assert assistant_delta(finished, "stop", 0) == {}
    reasoning = TextDelta("", [3], None, False, None, reasoning_text="hmm")
    assert assistant_delta(reasoning, None, 0) == {"reasoning_content": "hmm"}
    call = ToolCall("lookup", '{"word": "cat"}', id="call_1")
    calls = TextDelta("", [4], None, True, "stop", tool_calls=[call])
    assert assistant_delta(calls, "tool_calls", 2) == {
        "tool_calls": [{"index": 2, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"word": "cat"}'}}]
    }


def test_chunks_and_token_id_fields():
    body = chunk("cmpl-1", "text_completion", "m", [{"index": 0}], {"prompt_tokens": 1})
    assert (body["object"], body["choices"], body["usage"]) == ("text_completion", [{"index": 0}], {"prompt_tokens": 1})
    assert "usage" not in chunk("cmpl-1", "text_completion", "m", [])
    assert list(token_id_fields([5, 6], [1, 2])) == ["prompt_token_ids", "token_ids"]
    assert token_id_fields([5]) == {"token_ids": [5]}
