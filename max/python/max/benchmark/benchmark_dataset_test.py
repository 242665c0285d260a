"""The workload sampler: random lengths and their range ratio, ShareGPT parsing and
filtering of a small file written here."""

import argparse
import json

import pytest

from max.benchmark.benchmark_dataset import (
    add_dataset_args,
    build_requests,
    random_requests,
    sharegpt_requests,
)
from max.errors import MaxError


class WordTokenizer:
    """One token per word: lengths are easy to state."""

    vocab_size = 1000

    def encode(self, text):
        return [len(w) for w in text.split()]

    def decode(self, ids):
        return " ".join("x" * max(1, i % 7) for i in ids)


def test_random_fixed_lengths_are_exact():
    requests = random_requests(20, input_len=12, output_len=5, range_ratio=0.0, vocab_size=50, seed=1)
    assert len(requests) == 20
    for r in requests:
        assert r.prompt_len == len(r.prompt) == 12 and r.output_len == 5
        assert all(isinstance(t, int) and 0 <= t < 50 for t in r.prompt)
    again = random_requests(20, 12, 5, 0.0, 50, seed=1)
    assert [r.prompt for r in again] == [r.prompt for r in requests]
    assert [r.prompt for r in random_requests(20, 12, 5, 0.0, 50, seed=2)] != [r.prompt for r in requests]


def test_random_range_ratio_spreads_lengths_within_bounds():
    requests = random_requests(400, input_len=100, output_len=40, range_ratio=0.5, vocab_size=50, seed=0)
    inputs = [r.prompt_len for r in requests]
    outputs = [r.output_len for r in requests]
    assert min(inputs) >= 50 and max(inputs) <= 150
    assert min(outputs) >= 20 and max(outputs) <= 60
    assert min(inputs) < 60 and max(inputs) > 140  # uniform over the whole range
    assert 90 < sum(inputs) / len(inputs) < 110
    assert all(len(r.prompt) == r.prompt_len for r in requests)


def test_random_text_prompts_through_a_tokenizer():
    requests = random_requests(3, 4, 2, 0.0, 1000, tokenizer=WordTokenizer())
    assert all(isinstance(r.prompt, str) and len(r.prompt.split()) == 4 for r in requests)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 2.0])
def test_bad_range_ratio(ratio):
    with pytest.raises(MaxError, match="range-ratio"):
        random_requests(2, 10, 10, ratio, 50)


def _sharegpt(tmp_path):
    entries = [
        {"id": "a", "conversations": [
            {"from": "human", "value": "one two three four five"},
            {"from": "gpt", "value": "six seven eight nine"},
            {"from": "human", "value": "ignored follow-up question here"},
        ]},
        # A system turn first: the first *human* turn is the prompt.
        {"id": "b", "conversations": [
            {"from": "system", "value": "be nice"},
            {"from": "human", "value": "alpha beta gamma delta"},
            {"from": "gpt", "value": "a b c d e f"},
        ]},
        {"id": "short", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there you all"}]},
        {"id": "no-reply", "conversations": [{"from": "human", "value": "is anyone there at all"}]},
        {"id": "too-long", "conversations": [{"from": "human", "value": "w " * 1100}, {"from": "gpt", "value": "x y z w"}]},
        {"id": "broken"},
        "not a conversation",
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(entries))
    return path


def test_sharegpt_first_human_turn_and_reply_length(tmp_path):
    requests = sharegpt_requests(_sharegpt(tmp_path), 10, WordTokenizer(), seed=0)
    by_prompt = {r.prompt: r for r in requests}
    assert set(by_prompt) == {"one two three four five", "alpha beta gamma delta"}  # the rest filtered
    assert (by_prompt["one two three four five"].prompt_len, by_prompt["one two three four five"].output_len) == (5, 4)
    assert (by_prompt["alpha beta gamma delta"].prompt_len, by_prompt["alpha beta gamma delta"].output_len) == (4, 6)


def test_sharegpt_count_seed_and_fixed_output_len(tmp_path):
    path = _sharegpt(tmp_path)
    one = sharegpt_requests(path, 1, WordTokenizer(), seed=0)
    assert len(one) == 1
    orders = {tuple(r.prompt for r in sharegpt_requests(path, 2, WordTokenizer(), seed=s)) for s in range(8)}
    assert len(orders) == 2  # the seed shuffles
    fixed = sharegpt_requests(path, 10, WordTokenizer(), output_len=7)
    assert {r.output_len for r in fixed} == {7}
    assert len(fixed) == 4  # a fixed output length skips only the unusable entries


def test_sharegpt_without_tokenizer_estimates_lengths(tmp_path):
    requests = sharegpt_requests(_sharegpt(tmp_path), 10, None)
    first = next(r for r in requests if r.prompt.startswith("one"))
    assert first.prompt_len == 6  # 23 characters / 4, rounded up


def test_sharegpt_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MaxError, match="not valid JSON"):
        sharegpt_requests(bad, 1)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(MaxError, match="no usable conversation"):
        sharegpt_requests(empty, 1)
    with pytest.raises(MaxError, match="cannot read"):
        sharegpt_requests(tmp_path / "missing.json", 1)


def test_build_requests_from_flags(tmp_path):
    parser = argparse.ArgumentParser()
    add_dataset_args(parser)
    args = parser.parse_args(["--num-prompts", "3", "--random-input-len", "6", "--random-output-len", "2"])
    assert [r.prompt_len for r in build_requests(args, 100, None)] == [6, 6, 6]
    with pytest.raises(MaxError, match="need a tokenizer"):
        build_requests(args, 100, None, text=True)
    with pytest.raises(MaxError, match="--random-vocab-size"):
        build_requests(args, None, None)
    args = parser.parse_args(["--dataset", "sharegpt"])
    with pytest.raises(MaxError, match="--dataset-path"):
        build_requests(args, None, None)
    args = parser.parse_args(["--dataset", "sharegpt", "--dataset-path", str(_sharegpt(tmp_path)), "--num-prompts", "2"])
    assert len(build_requests(args, None, WordTokenizer())) == 2
