"""The draft-model proposer on the CPU in float32: a draft equal to the target drafts the
target's own greedy continuation; a rollback (a shorter or diverging sequence) drafts what
a fresh proposer drafts; pages come back on release; another vocabulary is refused."""

import pytest

from max.errors import MaxError
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, build_engine, resolve_model
from max.pipelines.lib.pipeline_builder import build_rank
from max.pipelines.lib.speculative.draft_model import common_prefix_length
from max.pipelines.lib.speculative.draft_model_builder import build_draft_model_proposer
from max.pipelines.lib.speculative.proposer import DraftSequence
from max.testing.engine_probes import greedy_tokens
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

STEPS = 10
PROMPTS = [[1, 50, 60, 70, 80], [1, 7], [1] + list(range(300, 322)), [1, 5, 9, 13, 17, 21, 25, 29, 33]]


@pytest.fixture(scope="module")
def target_path(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("target"), llama_config(), seed=11)


@pytest.fixture(scope="module")
def other_draft_path(tmp_path_factory):
    config = llama_config(hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    return write_tiny_checkpoint(tmp_path_factory.mktemp("draft"), config, seed=5)


def _target(path, **overrides):
    settings = dict(model_path=str(path), kv_cache_page_size=4, max_length=128)
    settings.update(overrides)
    return resolve_model(PipelineConfig(**settings), register_all())


def _proposer(draft_path, target, **kwargs):
    return build_draft_model_proposer(str(draft_path), target, build_rank, registry=register_all(), **kwargs)


def _seqs(token_lists):
    return [DraftSequence(f"r{i}", tokens) for i, tokens in enumerate(token_lists)]


@pytest.fixture(scope="module")
def greedy(target_path):
    return greedy_tokens(build_engine(_target(target_path)), PROMPTS, STEPS)


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2


@pytest.mark.parametrize("step_tokens", [None, 5])  # 5: catch-ups chunked over several steps
def test_draft_equal_to_target_drafts_the_target_greedy_continuation(target_path, greedy, step_tokens):
    target = _target(target_path, max_num_batched_tokens=step_tokens)
    proposer = _proposer(target_path, target)
    assert proposer.propose(_seqs(PROMPTS), 4) == [g[:4] for g in greedy]
    # Each sequence accepted some drafts plus the target's token: the cache rolls back to
    # the common prefix and drafting goes on from there.
    accepted = [1, 4, 0, 2]
    grown = [p + g[: a + 1] for p, g, a in zip(PROMPTS, greedy, accepted)]
    drafts = proposer.propose(_seqs(grown), 5)
    assert drafts == [g[a + 1 : a + 6] for g, a in zip(greedy, accepted)]
    for i, (p, a) in enumerate(zip(PROMPTS, accepted)):
        assert proposer.num_cached_tokens(f"r{i}") == len(p) + a + 1 + 4


def test_rollback_drafts_what_a_fresh_proposer_drafts(target_path, other_draft_path):
    target = _target(target_path)
    used = _proposer(other_draft_path, target)
    first = used.propose(_seqs(PROMPTS), 4)
    assert all(len(d) == 4 for d in first)
    # Shortened below what the draft cached, then diverging; one sequence is dropped.
    changed = [PROMPTS[0][:3] + [99, 98], PROMPTS[1] + first[1][:2] + [7], PROMPTS[2][:-6]]
    fresh = _proposer(other_draft_path, target)
    assert used.propose(_seqs(changed), 3) == fresh.propose(_seqs(changed), 3)
    assert used.propose(_seqs(changed), 2) == fresh.propose(_seqs(changed), 2)


def test_release_frees_the_pages(target_path, other_draft_path):
    proposer = _proposer(other_draft_path, _target(target_path))
    pool = proposer.kv_cache.pool
    proposer.propose(_seqs(PROMPTS), 3)
    assert pool.num_in_use > 0
    for i in range(len(PROMPTS)):
        proposer.release(f"r{i}")
        assert proposer.num_cached_tokens(f"r{i}") == 0
    assert pool.num_in_use == 0


def test_no_drafts_past_the_maximum_length_or_without_pages(target_path, other_draft_path):
    target = _target(target_path, max_length=32)
    proposer = _proposer(other_draft_path, target, kv_cache_tokens=40)
    # 30 tokens: 32 positions leave room for 3 drafts (the last one is not fed back).
    long = [1] + list(range(400, 429))
    drafts = proposer.propose(_seqs([long, PROMPTS[1]]), 6)
    assert [len(d) for d in drafts] == [3, 6]
    # 10 pages of 4 tokens are taken: a third sequence gets none, the others keep theirs.
    assert proposer.propose(_seqs([long, PROMPTS[1], PROMPTS[2]]), 2)[2] == []


def test_a_draft_with_another_vocabulary_is_refused(target_path, tmp_path):
    small = write_tiny_checkpoint(tmp_path / "small", llama_config(vocab_size=1000), seed=1)
    with pytest.raises(MaxError, match="vocabulary of 1000 tokens.*49152"):
        _proposer(small, _target(target_path))


# A proposer handed to build_engine replaces the config's own (the flag's draft_model
# method itself is tested in speculative_methods_test).
_SPEC = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 1}


@pytest.mark.parametrize("same_as_target", [True, False])
def test_the_engine_verifying_draft_model_drafts_gives_the_plain_greedy_tokens(
    target_path, other_draft_path, greedy, same_as_target
):
    proposer = _proposer(target_path if same_as_target else other_draft_path, _target(target_path))
    resolved = _target(target_path, speculative_config=_SPEC)
    engine = build_engine(resolved, proposer=proposer)
    assert greedy_tokens(engine, PROMPTS, STEPS) == greedy
    stats = engine.stats().spec_decode
    assert stats.num_draft_tokens > 0
    if same_as_target:  # every draft is the target's own choice
        assert stats.num_accepted_tokens == stats.num_draft_tokens
    assert proposer.kv_cache.pool.num_in_use == 0  # finished requests released their pages
