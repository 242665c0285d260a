"""The harmony chat format (gpt-oss): splitting a generation into its channels.

A harmony model answers in messages, each a header and a body:

    <|start|>assistant<|channel|>analysis<|message|>...thinking...<|end|>
    <|start|>assistant<|channel|>final<|message|>...the answer...<|return|>

(the chat template ends the prompt with `<|start|>assistant`, so a generation begins inside
the first header). The `final` channel is what the user sees; `analysis` is the model's
reasoning (and `commentary` its tool-call preambles, which without tool support are
treated as reasoning too). `HarmonyParser` follows the generated token ids and splits the
text of each message body into content (final, or a message without a channel) and
reasoning (any other channel), incrementally, for streaming.

The special tokens are found in the model's own tokenizer (the `openai-harmony` package
would download its vocabulary on first use). A model whose tokenizer lacks them is not a
harmony model and gets no parser.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from max.pipelines.lib.tokens.detokenizer import IncrementalDetokenizer
from max.pipelines.lib.tokens.text_stream import TextDelta
from max.pipelines.lib.tokens.tokenizer import TextTokenizer

CONTENT_CHANNELS = (None, "final")  # a message without a channel is an answer too

_HEADER, _BODY, _BETWEEN = "header", "body", "between"


@dataclass(frozen=True)
class HarmonyTokens:
    """The ids of harmony's special tokens in one tokenizer."""

    start: int
    end: int
    message: int
    channel: int
    constrain: int | None
    stops: frozenset[int]  # <|end|>, <|return|>, <|call|>: each ends a message

    @classmethod
    def find(cls, tokenizer: TextTokenizer | None) -> HarmonyTokens | None:
        """The tokenizer's harmony tokens, or None if it is not a harmony tokenizer."""
        if tokenizer is None:
            return None
        vocab = tokenizer.hf.get_vocab()
        required = [vocab.get(t) for t in ("<|start|>", "<|end|>", "<|message|>", "<|channel|>")]
        if any(i is None for i in required):
            return None
        start, end, message, channel = required
        stops = {end} | {vocab[t] for t in ("<|return|>", "<|call|>") if t in vocab}
        return cls(start, end, message, channel, vocab.get("<|constrain|>"), frozenset(stops))


class HarmonyParser:
    """Splits one generation's text into content and reasoning as its tokens arrive.

    `prompt_ids` tell where the generation starts: inside the header the template opened
    (`<|start|>assistant`), or inside a message body it prefilled (e.g.
    `<|channel|>final<|message|>`); a prompt without harmony messages starts in a body
    without a channel (content).
    """

    def __init__(self, tokenizer: TextTokenizer, tokens: HarmonyTokens, prompt_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.content = ""
        self.reasoning = ""
        self._state = _BODY
        self._header: list[int] = []
        self._channel: str | None = None
        self._detok = IncrementalDetokenizer(tokenizer)
        self._messages = 0
        self._prompt_header = 0
        starts = [i for i, t in enumerate(prompt_ids) if t == tokens.start]
        if starts:
            self.feed(prompt_ids[starts[-1] :], emit=False)
        self._prompt_header = len(self._header)  # header tokens the template wrote

    def feed(self, ids: Sequence[int], final: bool = False, emit: bool = True) -> tuple[str, str]:
        """Follows `ids`; returns the (content, reasoning) text they add. `final`: the
        generation ended (held-back text is flushed). `emit=False` only follows the state
        (the prompt's tail)."""
        parts = {True: [], False: []}  # is content -> texts
        tokens = self.tokens
        for t in ids:
            if t == tokens.start or (t == tokens.channel and self._state != _HEADER):
                self._close(parts, emit)
                self._state, self._header, self._prompt_header = _HEADER, [], 0
                if t == tokens.channel:  # a header without <|start|> (lenient)
                    self._header.append(t)
            elif t == tokens.message and self._state == _HEADER:
                self._open()
            elif t in tokens.stops and self._state == _BODY:
                self._close(parts, emit)
                self._state = _BETWEEN
            elif self._state == _HEADER:
                self._header.append(t)
            elif self._state == _BODY:
                text = self._detok.add([t])
                if emit:
                    parts[self._channel in CONTENT_CHANNELS].append(text)
            # Tokens between messages (after <|end|>, before <|start|>) belong to none.
        if final:
            self._finish(parts)
        content, reasoning = "".join(parts[True]), "".join(parts[False])
        self.content += content
        self.reasoning += reasoning
        return content, reasoning

    def split(self, delta: TextDelta) -> TextDelta:
        """`delta` with its text replaced by the content it adds, and its reasoning set."""
        content, reasoning = self.feed(delta.token_ids, final=delta.finished)
        return dataclasses.replace(delta, text=content, reasoning_text=reasoning)

    # -- messages ------------------------------------------------------------------------
    def _open(self) -> None:
        """Enters a message body, its channel read from the header."""
        ids = self._header
        if self.tokens.channel in ids:
            ids = ids[len(ids) - ids[::-1].index(self.tokens.channel) :]
            if self.tokens.constrain in ids:
                ids = ids[: ids.index(self.tokens.constrain)]
            words = self.tokenizer.decode(ids).split()
            # "commentary to=functions.f": the channel is the first word.
            self._channel = words[0] if words else None
        else:
            self._channel = None
        self._state = _BODY
        self._detok = IncrementalDetokenizer(self.tokenizer)
        self._messages += 1

    def _close(self, parts: dict, emit: bool) -> None:
        """Ends the current message body (if any), flushing its held-back text."""
        if self._state == _BODY:
            text = self._detok.flush()
            if emit:
                parts[self._channel in CONTENT_CHANNELS].append(text)

    def _finish(self, parts: dict) -> None:
        self._close(parts, True)
        said = self._header[self._prompt_header :]
        if self._state == _HEADER and not self._messages and said:
            # The model never opened a message: its text is all there is to show.
            parts[True].append(self.tokenizer.decode(said))
        self._state = _BETWEEN
