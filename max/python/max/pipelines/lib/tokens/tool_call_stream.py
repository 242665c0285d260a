"""Streaming a tool call's arguments as the model writes them (the chat, Messages and Responses streams).

`ToolCallParser` hands out a call once it is whole. A client that streams wants the call's
name as soon as it is known and its arguments in fragments as they come, the way OpenAI
sends them: a first fragment with the call's index, id and name (arguments ""), then
fragments of the arguments' JSON text; their concatenation is the arguments. For the
hermes format (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`)
`ToolCallStreamer` reads the open call's text after each delta: once the name is complete
it sends the header, and while the arguments object is being written it sends the text
added since (an unfinished object's text so far is always the beginning of its final
text). A call that completes before anything of it was sent goes out in one fragment,
whole. Other formats are read at the end of the answer and go out whole.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from max.pipelines.lib.tokens.tool_calls import ToolCall, ToolCallParser

_NAME = re.compile(r'"name"\s*:\s*("(?:[^"\\]|\\.)*")')
_ARGUMENTS = re.compile(r'"(?:arguments|parameters)"\s*:\s*')


@dataclass
class ToolCallFragment:
    """A piece of the `index`th call: its header (id and name) and/or argument text."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None


def open_call_first(fragments: list[ToolCallFragment]) -> tuple[list[ToolCallFragment], list[ToolCallFragment]]:
    """A delta's fragments split into those that continue the call already open (no header)
    and the rest. A stream of blocks sends the first before the delta's text: text written
    before a call went out with the delta that opened the call, so this delta's text comes
    after the open call's rest."""
    n = 0
    while n < len(fragments) and fragments[n].name is None:
        n += 1
    return fragments[:n], fragments[n:]


def _arguments_text(body: str) -> tuple[str, bool] | None:
    """The arguments object's text in a call's (partial) JSON body, and whether it is
    whole; None until it has begun."""
    match = _ARGUMENTS.search(body)
    if match is None or match.end() >= len(body) or body[match.end()] != "{":
        return None
    start = match.end()
    try:
        _, end = json.JSONDecoder().raw_decode(body, start)
    except ValueError:
        return body[start:], False
    return body[start:end], True


class ToolCallStreamer:
    """Turns a `ToolCallParser`'s progress into `ToolCallFragment`s (module docstring)."""

    def __init__(self, parser: ToolCallParser) -> None:
        self.parser = parser
        self.count = 0  # calls begun (the next call's index)
        self._open: ToolCallFragment | None = None  # the header sent for the open call
        self._sent = ""  # its argument text sent so far
        self._bodies_read = 0  # of the parser's call_bodies, those this streamer has matched

    def fragments(self, completed: list[ToolCall]) -> list[ToolCallFragment]:
        """What to send after a delta that completed the calls `completed` (in order)."""
        out = []
        new_bodies = self.parser.call_bodies[self._bodies_read :]  # of the tagged calls just closed
        self._bodies_read = len(self.parser.call_bodies)
        for call in completed:
            if self._open is not None:  # the rest of the call whose header went out
                call.id = self._open.id
                # The open call is the first to close: its body is the first one new.
                whole = _arguments_text(new_bodies[0]) if new_bodies else None
                text = whole[0] if whole is not None else call.arguments
                rest = text[len(self._sent) :] if text.startswith(self._sent) else ""
                if rest:
                    out.append(ToolCallFragment(self._open.index, rest))
                self._open, self._sent = None, ""
            else:
                out.append(ToolCallFragment(self.count, call.arguments, call.id, call.name))
                self.count += 1
        out += self._progress()
        return out

    def _progress(self) -> list[ToolCallFragment]:
        """The open call's header and new argument text, if any."""
        body = self.parser.open_call_text
        if body is None:
            return []
        out = []
        if self._open is None:
            name = _NAME.search(body)
            if name is None:
                return []
            call_id = ToolCall("", "").id
            self._open = ToolCallFragment(self.count, "", call_id, json.loads(name.group(1)))
            self.count += 1
            out.append(self._open)
        args = _arguments_text(body)
        if args is not None and len(args[0]) > len(self._sent):
            out.append(ToolCallFragment(self._open.index, args[0][len(self._sent) :]))
            self._sent = args[0]
        return out
