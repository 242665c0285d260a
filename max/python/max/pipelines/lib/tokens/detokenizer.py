"""Incremental detokenization and stop strings, for streaming text out token by token.

Decoding one token at a time is wrong for byte-level and SentencePiece tokenizers: a
character may span tokens, and spaces depend on the previous token. The detokenizer
decodes a short window twice (with and without the newest tokens) and emits the
difference, and waits while the text ends in an incomplete character (U+FFFD).
"""

from __future__ import annotations

from collections.abc import Sequence

from max.pipelines.lib.tokens.tokenizer import TextTokenizer

_CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    """Turns a growing list of output token ids into text deltas."""

    def __init__(self, tokenizer: TextTokenizer, prompt_ids: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        # A few prompt tokens give the first output token its left context (spaces).
        self.ids: list[int] = list(prompt_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def add(self, new_ids: Sequence[int]) -> str:
        """The text that `new_ids` complete (may be empty while a character is partial)."""
        self.ids.extend(new_ids)
        decode = self.tokenizer.decode
        prefix_text = decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = decode(self.ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever text is still held back (at the end of generation)."""
        decode = self.tokenizer.decode
        prefix_text = decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


class StopStringMatcher:
    """Finds the first stop string in streamed text and holds back what might begin one.

    `feed` returns the text safe to emit now and whether a stop string was found; the
    stop string itself and everything after it are never emitted.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.pending = ""

    def feed(self, text: str, final: bool = False) -> tuple[str, bool]:
        """(text to emit, stopped)."""
        if not self.stop:
            return text, False
        buffer = self.pending + text
        cut = min((i for i in (buffer.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.pending = ""
            return buffer[:cut], True
        if final or self.hold == 0:
            self.pending = ""
            return buffer, False
        keep = self._partial_stop_suffix(buffer)
        self.pending = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def _partial_stop_suffix(self, buffer: str) -> int:
        """Length of the longest end of `buffer` that begins some stop string."""
        for k in range(min(self.hold, len(buffer)), 0, -1):
            tail = buffer[len(buffer) - k :]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0
