"""An assistant answer streamed as a sequence of blocks, one open at a time: the reasoning,
the text, each tool call. Anthropic's content blocks (/v1/messages) and the Responses API's
output items (/v1/responses) follow the same order; they differ only in the events that
start a block, add to it and end it (`BlockStream`'s three abstract methods).

The order's rules, shared by both APIs:
- a tool call's block starts as soon as its name is written (a `ToolCallFragment` header)
  and its argument text follows in fragments; a delta's fragments that continue the open
  call go before the delta's text (`open_call_first`);
- whitespace is held back: before any text it is not worth a block, and at the end of
  the text a call that follows drops it (the whole answer's text is stripped when it has
  calls); at the end of the answer it goes to the open text block.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

from max.pipelines.lib import TextDelta
from max.pipelines.lib.tokens.tool_call_stream import ToolCallFragment, open_call_first

BlockKind = Literal["reasoning", "text", "call"]


class BlockStream(ABC):
    """Turns one choice's deltas into its blocks' events (server-sent event strings)."""

    def __init__(self) -> None:
        self.kind: BlockKind | None = None  # the kind of the open block
        self.text = ""  # the open block's text so far (a call's: its arguments)
        self._held_space = ""

    def write(self, delta: TextDelta) -> list[str]:
        """The events of one delta."""
        continuing, fragments = open_call_first(delta.tool_calls)
        events = [e for fragment in continuing for e in self._call_fragment(fragment)]
        if delta.reasoning_text:
            events += self._open("reasoning") + self._add(delta.reasoning_text)
        body = delta.text.rstrip()
        if body:
            events += self._open("text") + self._add(self._held_space + body)
            self._held_space = ""
        self._held_space += delta.text[len(body) :]
        return events + [e for fragment in fragments for e in self._call_fragment(fragment)]

    def close(self) -> list[str]:
        """The events that end the answer: the open block's last whitespace, and its end."""
        events = self._add(self._held_space) if self.kind == "text" and self._held_space else []
        self._held_space = ""
        return events + self._end()

    # -- what each API sends ---------------------------------------------------------------
    @abstractmethod
    def start_block(self, kind: BlockKind, call: ToolCallFragment | None) -> list[str]:
        """The events that start a block of `kind` (a call's: with its id and name)."""

    @abstractmethod
    def block_delta(self, text: str) -> list[str]:
        """The events that add `text` to the open block (`self.text` already holds it)."""

    @abstractmethod
    def end_block(self) -> list[str]:
        """The events that end the open block (`self.kind`, `self.text`)."""

    # -- the order -------------------------------------------------------------------------
    def _call_fragment(self, fragment: ToolCallFragment) -> list[str]:
        events = []
        if fragment.name is not None:  # a new call: whitespace before it is dropped
            self._held_space = ""
            events += self._open("call", fragment)
        if fragment.arguments and self.kind == "call":
            events += self._add(fragment.arguments)
        return events

    def _open(self, kind: BlockKind, call: ToolCallFragment | None = None) -> list[str]:
        """Starts a block of `kind` unless one is open (a call always starts its own)."""
        if self.kind == kind and call is None:
            return []
        events = self._end()
        self.kind, self.text = kind, ""
        return events + self.start_block(kind, call)

    def _add(self, text: str) -> list[str]:
        self.text += text
        return self.block_delta(text)

    def _end(self) -> list[str]:
        if self.kind is None:
            return []
        events = self.end_block()
        self.kind, self.text = None, ""
        return events
