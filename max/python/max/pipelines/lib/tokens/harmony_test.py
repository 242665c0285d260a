"""The harmony channel split on a word-level tokenizer with harmony's special tokens: the
final channel is content, analysis (and any other channel) reasoning, token by token."""

from types import SimpleNamespace

import pytest

from max.pipelines.lib import TextTokenizer
from max.pipelines.lib.tokens.harmony import HarmonyParser, HarmonyTokens
from max.testing.harmony_model import write_harmony_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    directory = write_harmony_tokenizer(tmp_path_factory.mktemp("harmony"))
    return TextTokenizer(AutoTokenizer.from_pretrained(str(directory)), set())


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _run(tokenizer, prompt: str, generated: str, one_by_one: bool = True):
    parser = HarmonyParser(tokenizer, HarmonyTokens.find(tokenizer), _ids(tokenizer, prompt))
    ids = _ids(tokenizer, generated)
    if not one_by_one:
        return parser.feed(ids, final=True), parser
    pieces = [parser.feed([t], final=i == len(ids) - 1) for i, t in enumerate(ids)]
    content, reasoning = ("".join(p[k] for p in pieces) for k in (0, 1))
    assert (content, reasoning) == (parser.content, parser.reasoning)
    return (content, reasoning), parser


GPT_OSS_PROMPT = "<|start|>user<|message|>Let<|end|><|start|>assistant"
ANSWER = "<|channel|>analysis<|message|>Let me think<|end|><|start|>assistant<|channel|>final<|message|>Four<|return|>"


def test_gpt_oss_generation_splits_analysis_from_final(tokenizer):
    (content, reasoning), _ = _run(tokenizer, GPT_OSS_PROMPT, ANSWER)
    assert (content, reasoning) == ("Four", "Let me think")
    assert _run(tokenizer, GPT_OSS_PROMPT, ANSWER, one_by_one=False)[0] == ("Four", "Let me think")


def test_generation_continues_a_message_the_template_opened(tokenizer):
    prompt = GPT_OSS_PROMPT + "<|channel|>analysis<|message|>Let"
    generated = "me think<|end|><|start|>assistant<|channel|>final<|message|>Four<|return|>"
    assert _run(tokenizer, prompt, generated)[0] == ("Four", " me think")
    final_prompt = GPT_OSS_PROMPT + "<|channel|>final<|message|>"
    assert _run(tokenizer, final_prompt, "Four<|return|>")[0] == ("Four", "")


def test_other_channels_and_constrained_headers_are_reasoning(tokenizer):
    generated = "<|channel|>commentary to=functions.f<|constrain|>json<|message|>me<|call|>"
    assert _run(tokenizer, GPT_OSS_PROMPT, generated)[0] == ("", "me")
    assert _run(tokenizer, GPT_OSS_PROMPT, "<|message|>Four<|end|>")[0] == ("Four", "")  # no channel: an answer


def test_text_outside_the_format_is_not_lost(tokenizer):
    # A model that never opens a message: its header text is all it said.
    assert _run(tokenizer, GPT_OSS_PROMPT, "Four me")[0] == ("Four me", "")
    # A prompt without harmony messages: the output is plain content until a header.
    assert _run(tokenizer, "Let", "me think")[0] == ("me think", "")
    # Between messages (after <|end|>, before <|start|>) nothing belongs to a channel.
    assert _run(tokenizer, GPT_OSS_PROMPT, "<|channel|>final<|message|>Four<|end|>me")[0] == ("Four", "")


def test_only_harmony_tokenizers_get_a_parser(tokenizer):
    assert HarmonyTokens.find(tokenizer) is not None
    assert HarmonyTokens.find(None) is None
    plain = SimpleNamespace(hf=SimpleNamespace(get_vocab=lambda: {"<|start|>": 1, "<|end|>": 2, "a": 3}))
    assert HarmonyTokens.find(plain) is None
