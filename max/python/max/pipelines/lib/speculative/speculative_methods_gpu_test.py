"""`--speculative-config` draft_model and eagle3 through `build_engine` on a GPU in float32
(CUDA graphs for plain decode steps and verify steps): greedy outputs equal the plain
run's, and the EAGLE-3 head's feature tap went in before the target's graphs were captured
(the graphs copy the features, so decode and verify steps feed the head). Skipped without a GPU.

    PYTHONPATH=max/python:max/kernels/python python3 -m pytest -q \\
        max/python/max/pipelines/lib/speculative/speculative_methods_gpu_test.py
"""

import pytest
import torch

from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint
from max.testing.tiny_eagle_heads import write_head

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = [[1, 50, 60, 70], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [1, 400], [1] + list(range(600, 640))]
STEPS = 24


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # 7 layers: EAGLE-3 reads three of them.
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), llama_config(num_hidden_layers=7), seed=3)


def _run(path, speculative=None):
    settings = dict(
        model_path=str(path), devices="gpu", quantization_encoding="float32", kv_cache_page_size=16,
        max_length=256, max_batch_size=8, speculative_config=speculative,
    )  # fmt: skip
    engine = build_engine(resolve_model(PipelineConfig(**settings), register_all()))
    params = SamplingParams(max_new_tokens=STEPS, temperature=0.0, ignore_eos=True)
    out = {f"r{i}": [] for i in range(len(PROMPTS))}
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"r{i}", prompt, params)
    while engine.has_unfinished():
        for o in engine.step():
            out[o.request_id].extend(o.new_token_ids)
    return out, engine


@pytest.fixture(scope="module")
def plain(checkpoint):
    out, engine = _run(checkpoint)
    assert engine.runner.num_replays > 0  # plain decode ran as CUDA graphs
    return out


def test_draft_model_on_the_gpu_matches_plain(checkpoint, plain):
    spec, engine = _run(checkpoint, {"method": "draft_model", "model": str(checkpoint), "num_speculative_tokens": 4})
    assert spec == plain
    stats = engine.stats().spec_decode
    assert stats.num_draft_tokens > 0 and stats.num_accepted_tokens == stats.num_draft_tokens
    assert engine.runner.verify.num_replays > 0  # the target's verify steps replayed graphs


def test_eagle3_on_the_gpu_matches_plain_with_the_tap_in_the_graphs(checkpoint, plain, tmp_path):
    head = write_head(tmp_path / "head", "eagle3", seed=5)
    spec, engine = _run(checkpoint, {"method": "eagle3", "model": str(head), "num_speculative_tokens": 3})
    assert spec == plain
    assert engine.speculator.proposer.tap.in_graphs
    assert engine.runner.verify.num_replays > 0
    assert engine.stats().spec_decode.num_draft_tokens > 0
