"""`--speculative-config` reads vLLM's JSON, fills vLLM's defaults, and names what is wrong."""

import argparse

import pytest

from max.errors import MaxError
from max.pipelines.lib import PipelineConfig
from max.pipelines.lib.config_flags import add_flags, from_args
from max.pipelines.lib.speculative.ngram_proposer import NgramProposer
from max.pipelines.lib.speculative.spec_decode_stats import SpecDecodeStats
from max.pipelines.lib.speculative.speculative_config import (
    SpeculativeConfig,
    check_implemented,
    parse_speculative_config,
)
from max.pipelines.lib.speculative.speculator import build_proposer


def test_ngram_json_and_defaults():
    config = parse_speculative_config('{"method": "ngram", "num_speculative_tokens": 4}')
    assert config == SpeculativeConfig("ngram", 4, 5, 5)
    one_bound = parse_speculative_config({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3})
    assert (one_bound.prompt_lookup_min, one_bound.prompt_lookup_max) == (3, 3)
    both = parse_speculative_config(
        {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 1, "prompt_lookup_max": 4, "disable_by_batch_size": 8}
    )
    assert both.speculates_at(7) and not both.speculates_at(8)
    assert parse_speculative_config(None) is None
    assert parse_speculative_config(both) is both


@pytest.mark.parametrize(
    "value, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"method": "medusa", "num_speculative_tokens": 2}, "method must be one of"),
        ({"method": "ngram"}, "num_speculative_tokens is required"),
        ({"method": "ngram", "num_speculative_tokens": 0}, "between 1 and 32"),
        ({"method": "ngram", "num_speculative_tokens": "4"}, "must be an integer"),
        ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 4, "prompt_lookup_max": 2}, "exceeds"),
        ({"method": "ngram", "num_speculative_tokens": 2, "model": "x"}, "takes no model"),
        ({"method": "draft_model", "num_speculative_tokens": 2}, "needs a model"),
        ({"method": "eagle3", "model": "m", "num_speculative_tokens": 2, "prompt_lookup_min": 2}, "belong to method ngram"),
        ({"method": "ngram", "num_speculative_tokens": 2, "draft_tp": 1}, "unknown key(s) draft_tp"),
        ({"method": "ngram", "num_speculative_tokens": 2, "disable_by_batch_size": 0}, "at least 1"),
    ],
)
def test_bad_configs_are_usage_errors(value, message):
    with pytest.raises(MaxError, match="--speculative-config") as info:
        parse_speculative_config(value)
    assert message in str(info.value)


def test_methods_with_a_model_need_the_proposer_built_beside_the_target():
    # build_engine builds a draft model's or a head's proposer; an engine given only the
    # config cannot, and says so instead of speculating with something else.
    config = parse_speculative_config({"method": "eagle3", "model": "org/heads", "num_speculative_tokens": 3})
    check_implemented(config)
    with pytest.raises(MaxError, match="eagle3 needs its proposer built with the target"):
        build_proposer(config)
    assert isinstance(build_proposer(parse_speculative_config({"method": "ngram", "num_speculative_tokens": 3})), NgramProposer)


def test_the_flag_reaches_pipeline_config():
    parser = argparse.ArgumentParser()
    add_flags(parser, PipelineConfig)
    args = parser.parse_args(["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}'])
    config = from_args(PipelineConfig, args)
    assert config.speculative_config == SpeculativeConfig("ngram", 3, 5, 5)
    assert from_args(PipelineConfig, parser.parse_args([])).speculative_config is None
    # The offline API takes a dict, checked with the rest of the config.
    offline = PipelineConfig(speculative_config={"method": "ngram", "num_speculative_tokens": 2})
    offline.validate()
    assert offline.speculative_config.num_speculative_tokens == 2
    with pytest.raises(MaxError, match="num_speculative_tokens"):
        PipelineConfig(speculative_config={"method": "ngram"}).validate()


def test_stats_add_up_across_replicas():
    a, b = SpecDecodeStats(), SpecDecodeStats()
    a.record(3, 2)
    b.record(2, 0)
    b.record(4, 4)
    total = sum([a, b])
    assert (total.num_drafts, total.num_draft_tokens, total.num_accepted_tokens) == (3, 9, 6)
    assert total.accepted_per_pos == [2, 2, 1, 1]
    assert total.acceptance_rate == pytest.approx(6 / 9)
    assert total.mean_accepted_length == pytest.approx(1 + 6 / 3)
