"""Reasoning in a generation's text: `<think>...</think>` split from the answer.

Reasoning models (Qwen3, DeepSeek-R1 and its distillations) think before they answer:

    <think>
    ...the reasoning...
    </think>

    ...the answer...

`ReasoningParser` follows the text as it is generated and splits it into reasoning (the
part between the tags, without them) and content (the answer), incrementally: a tag cut
across two deltas is held back until it is whole. Where the reasoning starts depends on
the family and on the prompt:
- `qwen3`: the model writes `<think>` itself; an answer that does not open with it has no
  reasoning (Qwen3 with `enable_thinking: false`, whose template closes an empty block).
- `deepseek_r1`: the chat template opens the block (the prompt ends `<think>\\n`), so the
  generation starts inside the reasoning, and without a `</think>` it is all reasoning.
Either family starts inside the reasoning when the prompt itself leaves a `<think>` open.

Structured outputs (and forced tool calls) hold the answer, not the reasoning:
`constraint_after_reasoning` wraps a constraint in a grammar that lets the thinking run free.
"""

from __future__ import annotations

import dataclasses
import json
import re

from max.errors import MaxError
from max.pipelines.lib.sampling.structured_output import StructuredOutput, grammar_for
from max.pipelines.lib.tokens.text_stream import TextDelta

QWEN3 = "qwen3"
DEEPSEEK_R1 = "deepseek_r1"
REASONING_PARSERS = (QWEN3, DEEPSEEK_R1)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

_UNDECIDED, _REASONING, _CONTENT = "undecided", "reasoning", "content"


def prompt_opens_reasoning(prompt_text: str) -> bool:
    """Whether the prompt's text ends inside an unclosed `<think>` block."""
    return prompt_text.rfind(THINK_OPEN) > prompt_text.rfind(THINK_CLOSE)


class ReasoningParser:
    """Splits one generation's text into (content, reasoning) as it arrives.

    `content` and `reasoning` accumulate what was split so far; `reasoning_ended` tells
    whether the answer has begun (structured outputs and tool calls apply to it alone).
    """

    def __init__(self, family: str, prompt_open: bool = False) -> None:
        if family not in REASONING_PARSERS:
            raise ValueError(f"unknown reasoning parser {family!r}; known: {', '.join(REASONING_PARSERS)}")
        self.family = family
        self.content = ""
        self.reasoning = ""
        self._buffer = ""
        self._state = _REASONING if prompt_open or family == DEEPSEEK_R1 else _UNDECIDED
        self._after_close = False  # the whitespace right after </think> is not the answer's

    @property
    def reasoning_ended(self) -> bool:
        """The answer has begun (or there was no reasoning)."""
        return self._state == _CONTENT

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        """The (content, reasoning) that `text` adds; `final` flushes what was held back."""
        self._buffer += text
        content, reasoning = [], []
        while self._buffer:
            if self._state == _UNDECIDED:
                head = self._buffer.lstrip()
                if not head:
                    break
                if head.startswith(THINK_OPEN):
                    self._buffer = head[len(THINK_OPEN) :]
                    self._state = _REASONING
                elif THINK_OPEN.startswith(head) and not final:
                    break  # may still become the tag
                else:
                    self._state = _CONTENT
            elif self._state == _REASONING:
                end = self._buffer.find(THINK_CLOSE)
                if end >= 0:
                    reasoning.append(self._buffer[:end])
                    self._buffer = self._buffer[end + len(THINK_CLOSE) :]
                    self._state, self._after_close = _CONTENT, True
                    continue
                keep = 0 if final else _partial_tag(self._buffer, THINK_CLOSE)
                reasoning.append(self._buffer[: len(self._buffer) - keep])
                self._buffer = self._buffer[len(self._buffer) - keep :]
                break
            else:
                if self._after_close:
                    self._buffer = self._buffer.lstrip()
                    if not self._buffer:
                        break
                    self._after_close = False
                content.append(self._buffer)
                self._buffer = ""
        if final and self._buffer:  # an undecided tail that never became a tag
            content.append(self._buffer)
            self._buffer = ""
        added_content, added_reasoning = "".join(content), "".join(reasoning)
        if not self.reasoning:  # the newline models write after <think>
            added_reasoning = added_reasoning.lstrip("\n")
        self.content += added_content
        self.reasoning += added_reasoning
        return added_content, added_reasoning

    def split(self, delta: TextDelta) -> TextDelta:
        """`delta` with its text replaced by the content it adds, and its reasoning set."""
        content, reasoning = self.feed(delta.text, final=delta.finished)
        return dataclasses.replace(delta, text=content, reasoning_text=delta.reasoning_text + reasoning)


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of `text` that begins `tag` (it may still become one)."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


def constraint_after_reasoning(
    answer: StructuredOutput, family: str, prompt_open: bool, tag_ids: tuple[int, int] | None = None
) -> StructuredOutput:
    """A Lark grammar (llguidance's dialect) that lets the model reason freely and holds
    only the answer after `</think>` to `answer`'s constraint.

    `tag_ids`: the ids of `<think>` and `</think>` where the tokenizer has each as one
    token (llguidance matches such tokens by id, not by their text). MaxError: a Lark
    answer whose rules cannot be nested (it refers to `start` or sets llguidance options).
    """
    inner = grammar_for(answer)  # validated, with the schema's strictness and spacing
    if inner.lstrip().startswith("{"):
        spec = json.loads(inner)["grammars"][0]
        if spec.get("json_schema") is not None:
            rules = [f"{_ANSWER}: %json {json.dumps(spec['json_schema'])}"]
        else:
            rules = _nested(spec["lark_grammar"])
    else:
        rules = _nested(inner)
    if tag_ids is not None:
        opening, think = f"<[{tag_ids[0]}]>", f"{_BODY}: {_TEXT} <[{tag_ids[1]}]>"
    else:
        opening, think = json.dumps(THINK_OPEN), f"{_BODY}[lazy]: {_TEXT} {json.dumps(THINK_CLOSE)}"
    if prompt_open or family == DEEPSEEK_R1:
        start = f"start: {_BODY} {_GAP} {_ANSWER}"
    else:
        start = f"start: ({opening} {_BODY} {_GAP})? {_ANSWER}"
    lines = ["%llguidance {}", start, think, rf"{_TEXT}: /(.|\n)*/", rf"{_GAP}: /[ \t\r\n]*/", *rules]
    return StructuredOutput("lark", "\n".join(lines) + "\n")


# The wrapping grammar's names, apart from any a nested grammar may use.
_ANSWER, _BODY, _TEXT, _GAP = "reasoning__answer", "reasoning__body", "REASONING__TEXT", "REASONING__GAP"


def _nested(lark: str) -> list[str]:
    """A Lark grammar's lines with its `start` rule renamed to the answer's."""
    lines = lark.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"\s*start\s*:", line)]
    rest = "\n".join(line.split(":", 1)[1] if i in starts else line for i, line in enumerate(lines))
    if len(starts) != 1 or re.search(r"\bstart\b", rest) or "%llguidance" in lark:
        raise MaxError("this Lark grammar cannot be combined with --reasoning-parser (it refers to 'start' "
                       "or sets %llguidance options)")  # fmt: skip
    lines[starts[0]] = re.sub(r"^\s*start\s*:", f"{_ANSWER}:", lines[starts[0]])
    return lines
