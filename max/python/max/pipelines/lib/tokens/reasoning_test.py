"""The `<think>` split: whole texts, every way of cutting them into deltas, both families."""

import pytest

from max.errors import MaxError
from max.pipelines.lib.sampling.structured_output import StructuredOutput
from max.pipelines.lib.tokens.reasoning import (
    DEEPSEEK_R1,
    QWEN3,
    THINK_CLOSE,
    THINK_OPEN,
    ReasoningParser,
    constraint_after_reasoning,
    prompt_opens_reasoning,
)
from max.pipelines.lib.tokens.text_stream import TextDelta

THOUGHT = "<think>\nThe user greets me.\n</think>\n\nHello there!"


def _split(family, text, cuts, prompt_open=False):
    parser = ReasoningParser(family, prompt_open)
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    content = reasoning = ""
    for i, piece in enumerate(pieces):
        c, r = parser.feed(piece, final=i == len(pieces) - 1)
        content, reasoning = content + c, reasoning + r
    assert (parser.content, parser.reasoning) == (content, reasoning)
    return content, reasoning, parser


def test_qwen3_splits_thinking_from_the_answer():
    content, reasoning, parser = _split(QWEN3, THOUGHT, [])
    assert (content, reasoning) == ("Hello there!", "The user greets me.\n")
    assert parser.reasoning_ended


@pytest.mark.parametrize("cut", range(1, len(THOUGHT)))
def test_tags_cut_across_deltas_split_the_same(cut):
    assert _split(QWEN3, THOUGHT, [cut])[:2] == ("Hello there!", "The user greets me.\n")


def test_every_character_its_own_delta():
    cuts = list(range(1, len(THOUGHT)))
    assert _split(QWEN3, THOUGHT, cuts)[:2] == ("Hello there!", "The user greets me.\n")


def test_qwen3_without_thinking_is_all_content():
    assert _split(QWEN3, "Hello <think> is a tag", [2])[:2] == ("Hello <think> is a tag", "")
    assert _split(QWEN3, "<thi", [])[:2] == ("<thi", "")  # never became the tag


def test_deepseek_starts_inside_the_reasoning():
    content, reasoning, parser = _split(DEEPSEEK_R1, "Let me see.\n</think>\n\n42", [5, 14])
    assert (content, reasoning) == ("42", "Let me see.\n")
    unfinished = _split(DEEPSEEK_R1, "Still thinking", [3])
    assert unfinished[:2] == ("", "Still thinking") and not unfinished[2].reasoning_ended


def test_a_prompt_that_opens_the_block_starts_the_reasoning():
    assert prompt_opens_reasoning("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_reasoning("<think>\n\n</think>\n\n")
    assert _split(QWEN3, "hmm</think>yes", [], prompt_open=True)[:2] == ("yes", "hmm")


def test_split_moves_text_to_reasoning_text():
    parser = ReasoningParser(QWEN3)
    delta = parser.split(TextDelta("<think>a", [1], None, False, None))
    assert (delta.text, delta.reasoning_text) == ("", "a")
    delta = parser.split(TextDelta("</think>b", [2], None, True, "stop"))
    assert (delta.text, delta.reasoning_text, delta.token_ids) == ("b", "", [2])


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="qwen3"):
        ReasoningParser("granite")


# -- structured outputs after the reasoning ------------------------------------------------
SCHEMA = '{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}'


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    from max.testing.tiny_tokenizer import tokenizer_dir

    return AutoTokenizer.from_pretrained(str(tokenizer_dir()))


_BACKENDS = {}  # one llguidance tokenizer per HF tokenizer (each takes a second to build)


def _accepts(hf, constraint, text):
    from max.pipelines.lib.sampling.structured_output import GrammarBackend

    if id(hf) not in _BACKENDS:
        _BACKENDS[id(hf)] = (hf, GrammarBackend(hf, len(hf), [hf.eos_token_id]))
    matcher = _BACKENDS[id(hf)][1].matcher(constraint)
    return matcher.consume_tokens(hf.encode(text, add_special_tokens=False)) and matcher.is_accepting()


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('<think>\nmaybe {"a": "x"} </think>\n\n{"a": 5}', True),
        ('{"a": 5}', True),  # qwen3 may skip the thinking
        ('<think>no end {"a": 5}', False),
        ('Sure! {"a": 5}', False),
        ('<think>x</think>{"a": "five"}', False),
    ],
)
def test_the_schema_holds_the_answer_only(hf_tokenizer, text, ok):
    constraint = constraint_after_reasoning(StructuredOutput("json_schema", SCHEMA), QWEN3, prompt_open=False)
    assert _accepts(hf_tokenizer, constraint, text) is ok


def test_an_open_block_must_be_closed_before_the_answer(hf_tokenizer):
    constraint = constraint_after_reasoning(StructuredOutput("choice", '["yes", "no"]'), DEEPSEEK_R1, prompt_open=True)
    assert _accepts(hf_tokenizer, constraint, "hmm</think>\nyes")
    assert not _accepts(hf_tokenizer, constraint, "yes")
    regex = constraint_after_reasoning(StructuredOutput("regex", "[0-9]+"), QWEN3, prompt_open=True)
    assert _accepts(hf_tokenizer, regex, "so </think> 42") and not _accepts(hf_tokenizer, regex, "so </think> x")


def test_tags_that_are_single_tokens_are_matched_by_id(hf_tokenizer):
    from transformers import AutoTokenizer

    from max.testing.tiny_tokenizer import tokenizer_dir

    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    hf.add_tokens([THINK_OPEN, THINK_CLOSE])
    ids = (hf.convert_tokens_to_ids(THINK_OPEN), hf.convert_tokens_to_ids(THINK_CLOSE))
    constraint = constraint_after_reasoning(StructuredOutput("json_schema", SCHEMA), QWEN3, False, ids)
    assert _accepts(hf, constraint, '<think>I think.</think>\n{"a": 1}')
    assert not _accepts(hf, constraint, '<think>I think.</think>\n{"b": 1}')


def test_a_lark_answer_nests_unless_it_refers_to_start(hf_tokenizer):
    lark = StructuredOutput("lark", 'start: item ("," item)*\nitem: "x" | "y"\n')
    constraint = constraint_after_reasoning(lark, QWEN3, False)
    assert _accepts(hf_tokenizer, constraint, "<think>two</think>x,y")
    assert not _accepts(hf_tokenizer, constraint, "<think>two</think>x,z")
    with pytest.raises(MaxError, match="reasoning-parser"):
        constraint_after_reasoning(StructuredOutput("lark", 'start: "x" | "(" start ")"'), QWEN3, False)
