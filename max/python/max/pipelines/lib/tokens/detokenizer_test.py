"""Streaming detokenization never splits characters; stop strings are never emitted."""

import pytest

from max.pipelines.lib.hub.model_source import resolve_model_source
from max.pipelines.lib.tokens.detokenizer import IncrementalDetokenizer, StopStringMatcher
from max.pipelines.lib.tokens.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer.from_source(resolve_model_source(None))


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! The capital of France is Paris.",
        "日本語のテキストと émojis 🤖🎉 mixed with ASCII",
        "  leading spaces\n\nand\ttabs  ",
    ],
)
def test_streamed_text_equals_full_decode(tokenizer, text):
    prompt = tokenizer.encode("Say:")
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, prompt)
    pieces = [detok.add([i]) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == tokenizer.decode(ids)
    assert all("\ufffd" not in p for p in pieces)


def test_multibyte_character_split_over_tokens_waits(tokenizer):
    ids = tokenizer.encode("🤖", add_special_tokens=False)
    assert len(ids) > 1  # byte-level BPE spreads the emoji over several tokens
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.add([i]) for i in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1)
    assert pieces[-1] == "🤖"


def test_stop_strings_across_chunks():
    m = StopStringMatcher(["STOP", "\n\n"])
    emitted = []
    for chunk in ["Hello ", "wor", "ld ST", "O", "P and more"]:
        text, stopped = m.feed(chunk)
        emitted.append(text)
        if stopped:
            break
    assert "".join(emitted) == "Hello world "
    assert stopped


def test_held_back_text_comes_out_at_the_end():
    m = StopStringMatcher(["STOP"])
    text, stopped = m.feed("end ST")
    assert text == "end " and not stopped  # only "ST" could begin "STOP"
    text, stopped = m.feed("", final=True)
    assert text == "ST" and not stopped


def test_chat_template_of_the_default_model(tokenizer):
    assert tokenizer.has_chat_template
    prompt = tokenizer.render_chat([{"role": "user", "content": "Hi"}])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert 2 in tokenizer.eos_token_ids  # <|im_end|>
