"""Prompt lookup proposes what followed the longest recurring suffix, and nothing otherwise."""

import pytest

from max.pipelines.lib.speculative.ngram_proposer import NgramProposer, longest_ngram_continuation
from max.pipelines.lib.speculative.proposer import DraftSequence


def test_proposes_what_followed_the_earlier_occurrence():
    tokens = [1, 2, 3, 4, 5, 6, 9, 2, 3]
    assert longest_ngram_continuation(tokens, 1, 3, 3) == [4, 5, 6]


def test_longest_match_wins_over_a_later_shorter_one():
    # Suffix [7, 8, 9]: matched in full at the start; "9" alone recurs later, followed by 5.
    tokens = [7, 8, 9, 1, 2, 6, 9, 5, 7, 8, 9]
    assert longest_ngram_continuation(tokens, 1, 3, 2) == [1, 2]


def test_latest_of_equally_long_matches_wins():
    tokens = [4, 5, 10, 4, 5, 20, 4, 5]
    assert longest_ngram_continuation(tokens, 2, 2, 1) == [20]


def test_below_min_n_proposes_nothing():
    tokens = [1, 2, 3, 9, 3]  # only a 1-gram recurs
    assert longest_ngram_continuation(tokens, 2, 4, 3) == []
    assert longest_ngram_continuation(tokens, 1, 4, 3) == [9, 3]


def test_proposal_stops_at_the_sequence_end():
    tokens = [6, 6, 6]
    # The latest earlier "6 6" ends at index 1; only one token follows it.
    assert longest_ngram_continuation(tokens, 2, 2, 5) == [6]


def test_max_n_longer_than_the_sequence_is_safe():
    assert longest_ngram_continuation([3, 3], 1, 10, 4) == [3]
    assert longest_ngram_continuation([3], 1, 10, 4) == []
    assert longest_ngram_continuation([1, 2, 3], 1, 10, 4) == []


def test_proposer_batches_sequences_in_order():
    proposer = NgramProposer(1, 2)
    sequences = [DraftSequence("a", [1, 2, 1]), DraftSequence("b", [5, 6, 7])]
    assert proposer.propose(sequences, 2) == [[2, 1], []]
    proposer.release("a")  # stateless: nothing to forget
    with pytest.raises(ValueError):
        NgramProposer(3, 2)


def test_matches_a_brute_force_search():
    import random

    rng = random.Random(0)
    for _ in range(300):
        tokens = [rng.randrange(4) for _ in range(rng.randrange(1, 30))]
        low, high = rng.randint(1, 3), rng.randint(3, 5)
        expected = []
        for n in range(min(high, len(tokens) - 1), low - 1, -1):
            suffix = tokens[-n:]
            starts = [i for i in range(len(tokens) - n) if tokens[i : i + n] == suffix]
            if starts:
                i = starts[-1]
                expected = tokens[i + n : i + n + 3]
                break
        assert longest_ngram_continuation(tokens, low, high, 3) == expected, (tokens, low, high)
