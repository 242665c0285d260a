"""The order of an answer's blocks (answer_blocks.py), on a writer that records what it is
asked to send: whitespace before a call is dropped and at the end kept, the open call's rest
goes before the delta's text, and a call always starts a block of its own."""

from max.pipelines.lib import TextDelta
from max.pipelines.lib.tokens.tool_call_stream import ToolCallFragment
from max.serve.answer_blocks import BlockStream


class _Recorder(BlockStream):
    def start_block(self, kind, call):
        return [f"start {kind}" + (f" {call.name}" if call is not None else "")]

    def block_delta(self, text):
        return [f"add {text!r}"]

    def end_block(self):
        return [f"end {self.kind} {self.text!r}"]


def _delta(text="", calls=(), reasoning=""):
    return TextDelta(text, [], None, False, None, reasoning_text=reasoning, tool_calls=list(calls))


def _header(index, name, arguments=""):
    return ToolCallFragment(index, arguments, f"call_{index}", name)


def test_whitespace_before_a_call_is_dropped_and_text_then_calls_follow():
    writer = _Recorder()
    events = writer.write(_delta(reasoning="Hmm."))
    events += writer.write(_delta("Let me look.\n"))
    events += writer.write(_delta("\n", [_header(0, "get_weather", '{"city": "Pa')]))
    # The first call's rest, text after it (kept apart), then the second call whole.
    events += writer.write(_delta(" ", [ToolCallFragment(0, 'ris"}'), _header(1, "get_time", "{}")]))
    events += writer.close()
    assert events == [
        "start reasoning", "add 'Hmm.'",
        "end reasoning 'Hmm.'", "start text", "add 'Let me look.'",
        "end text 'Let me look.'", "start call get_weather", "add '{\"city\": \"Pa'",
        "add 'ris\"}'",
        "end call '{\"city\": \"Paris\"}'", "start call get_time", "add '{}'",
        "end call '{}'",
    ]  # fmt: skip


def test_the_texts_last_whitespace_is_kept_at_the_end():
    writer = _Recorder()
    events = writer.write(_delta("  ")) + writer.write(_delta("Hi \n")) + writer.write(_delta(" ")) + writer.close()
    assert events == ["start text", "add '  Hi'", "add ' \\n '", "end text '  Hi \\n '"]


def test_the_rest_of_the_open_call_goes_before_the_text():
    writer = _Recorder()
    writer.write(_delta(calls=[_header(0, "f", "{")]))
    events = writer.write(_delta("Done.", [ToolCallFragment(0, "}")])) + writer.close()
    assert events == ["add '}'", "end call '{}'", "start text", "add 'Done.'", "end text 'Done.'"]
