"""`--speculative-config` with a model (draft_model, eagle, eagle3) through `build_engine`,
what every entry point calls, on the CPU in float32: the engine builds the proposer from
the config alone and its greedy tokens are the plain engine's. A draft model equal to the
target has every draft accepted; tiny random EAGLE heads, fed the features of the engine's
own steps, get drafts verified (no trained heads can be fetched here)."""

import pytest

from max.errors import MaxError
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, build_engine, resolve_model
from max.pipelines.lib.speculative.draft_model import DraftModelProposer
from max.pipelines.lib.speculative.eagle_proposer import EagleProposer
from max.testing.engine_probes import greedy_tokens
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint
from max.testing.tiny_eagle_heads import write_head

PROMPTS = [[1, 50, 60, 70, 80, 90], [1, 7, 9], [1] + list(range(300, 317))]
STEPS = 10


@pytest.fixture(scope="module")
def target_path(tmp_path_factory):
    # 7 layers: EAGLE-3 reads three of them (low, middle, high).
    return write_tiny_checkpoint(tmp_path_factory.mktemp("t"), llama_config(num_hidden_layers=7), seed=3)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heads")
    return {method: write_head(folder / method, method, seed=5) for method in ("eagle", "eagle3")}


def _engine(target_path, speculative=None):
    settings = dict(model_path=str(target_path), kv_cache_page_size=4, max_length=128)
    return build_engine(resolve_model(PipelineConfig(**settings, speculative_config=speculative), register_all()))


@pytest.fixture(scope="module")
def plain_greedy(target_path):
    return greedy_tokens(_engine(target_path), PROMPTS, STEPS)


@pytest.mark.parametrize("method", ["draft_model", "eagle", "eagle3"])
def test_build_engine_builds_the_proposer_from_the_config(target_path, heads, plain_greedy, method):
    model = str(target_path) if method == "draft_model" else str(heads[method])
    engine = _engine(target_path, {"method": method, "model": model, "num_speculative_tokens": 3})
    proposer = engine.speculator.proposer
    assert isinstance(proposer, DraftModelProposer if method == "draft_model" else EagleProposer)
    assert greedy_tokens(engine, PROMPTS, STEPS) == plain_greedy
    stats = engine.stats().spec_decode
    assert stats.num_draft_tokens > 0
    if method == "draft_model":  # the draft is the target: every draft is its own choice
        assert stats.num_accepted_tokens == stats.num_draft_tokens
    assert proposer.kv_cache.pool.num_in_use == 0  # finished requests released their pages


def test_a_draft_model_with_another_vocabulary_is_a_start_up_error(tmp_path, target_path):
    small = write_tiny_checkpoint(tmp_path / "small", llama_config(vocab_size=1000), seed=1)
    with pytest.raises(MaxError, match="must share the target's vocabulary"):
        _engine(target_path, {"method": "draft_model", "model": str(small), "num_speculative_tokens": 2})


def test_a_missing_head_folder_is_a_start_up_error(tmp_path, target_path):
    with pytest.raises(MaxError, match="--speculative-config eagle3 model .*no-head.* does not exist"):
        _engine(target_path, {"method": "eagle3", "model": str(tmp_path / "no-head"), "num_speculative_tokens": 2})
