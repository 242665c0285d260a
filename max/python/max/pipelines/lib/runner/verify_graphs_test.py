"""Verify-step graphs (speculative decoding): which (batch, drafts) buckets are captured, and
that a step packed into a bucket's persistent buffers (padding rows that write no KV,
padding requests with no rows and no keys, requests with fewer drafts than the bucket's)
gives the logits of the step run on its own, and the engine's tokens stay those of plain
decoding.

CUDA graphs need a GPU (speculative_gpu_test.py replays them there); here each "graph"
replays the captured forward eagerly over the same buffers, through the same Triton
kernels (in Triton's CPU interpreter, which the test runner turns on without a GPU), so
everything the graph reads comes from the device buffers as it would on the GPU. The
other steps run the torch reference ops (the interpreter is slow).
"""

import pytest
import torch

import max_kernels
from max.nn import step_context
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model
from max.pipelines.lib.runner.verify_graphs import (
    MAX_VERIFY_GRAPH_BATCH,
    draft_buckets,
    verify_graph_shapes,
    verify_logits_rows,
)
from max.pipelines.lib.speculative.oracle_proposer import OracleProposer
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

PROMPTS = [[1, 40, 41, 42, 43, 40, 41], [1, 50, 60, 70, 80], [1, 7] * 4]
STEPS = 8
K = 2


def test_draft_buckets_are_powers_of_two_then_the_configured_count():
    assert draft_buckets(8) == [1, 2, 4, 8]
    assert draft_buckets(5) == [1, 2, 4, 5]
    assert draft_buckets(1) == [1]
    assert draft_buckets(0) == []


def test_verify_shapes_cover_small_batches_within_the_token_budget():
    shapes = verify_graph_shapes(4, 256, 8192)
    assert {b for b, _ in shapes} == {1, 2, 4, 8, 16, MAX_VERIFY_GRAPH_BATCH}
    assert {k for _, k in shapes} == {1, 2, 4}
    assert verify_graph_shapes(4, 3, 8192) == [(b, k) for b in (1, 2, 3) for k in (1, 2, 4)]
    # A bucket whose rows exceed a step's token budget is never needed.
    assert (2, 4) in verify_graph_shapes(4, 8, 10) and (4, 4) not in verify_graph_shapes(4, 8, 10)
    assert verify_logits_rows(verify_graph_shapes(8, 4, 8192)) == 4 * 9
    assert verify_graph_shapes(0, 8, 8192) == []


class _EagerGraph:
    """Stands in for a CUDA graph: each replay runs the captured forward over the buffers
    (with a fresh layout, as the graph recomputes every derived tensor)."""

    def __init__(self, model, kv_cache, layout, args, out):
        self.model, self.kv_cache, self.layout, self.args, self.out = model, kv_cache, layout, args, out
        self.replay()

    def replay(self):
        with torch.inference_mode(), step_context(self.layout(), self.kv_cache):
            self.out.copy_(self.model(*self.args))


def _engine(path, proposer=None):
    settings = dict(model_path=str(path), kv_cache_page_size=4, max_length=128, max_batch_size=4)
    if proposer is not None:
        settings["speculative_config"] = {"method": "ngram", "num_speculative_tokens": K}
    return build_engine(resolve_model(PipelineConfig(**settings), register_all()), proposer=proposer)


def _run(engine):
    params = SamplingParams(max_new_tokens=STEPS, temperature=0.0, ignore_eos=True)
    out = {f"r{i}": [] for i in range(len(PROMPTS))}
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"r{i}", prompt, params)
    while engine.has_unfinished():
        for o in engine.step():
            out[o.request_id].extend(o.new_token_ids)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), llama_config(), seed=11)


def test_packed_verify_steps_give_the_eager_logits_and_the_plain_tokens(checkpoint):
    plain = _run(_engine(checkpoint))
    refs = {rid: PROMPTS[int(rid[1:])] + tokens for rid, tokens in plain.items()}
    # Every third position wrong: rejections, rollbacks and bonus tokens; requests whose
    # drafts run out near their end verify fewer than K.
    engine = _engine(checkpoint, OracleProposer(refs, 1000, corrupt_every=3))
    runner = engine.runner
    model, kv_cache = runner.model, runner.kv_cache
    with max_kernels.backend("triton"):
        runner.verify.capture(
            verify_graph_shapes(K, 4, 64), lambda layout, args, out: _EagerGraph(model.model, kv_cache, layout, args, out)
        )
    assert sorted(runner.verify.shapes) == [(b, k) for b in (1, 2, 4) for k in (1, 2)]
    seen = []
    replay = runner.verify.replay

    def checked_replay(inputs):
        with max_kernels.backend("triton"):
            expected = model.execute(inputs).logits.clone()  # the step on its own, eagerly
            got = replay(inputs)
        bucket = runner.verify.bucket_for(inputs)
        seen.append((inputs.layout.num_requests, bucket.batch, inputs.layout.num_tokens, bucket.rows))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        return got

    runner.verify.replay = checked_replay
    assert _run(engine) == plain
    assert runner.verify.num_replays == len(seen) > 0
    assert any(b < batch for b, batch, _, _ in seen), seen  # padding requests
    assert any(t < rows for _, _, t, rows in seen), seen  # padding rows
    assert engine.stats().spec_decode.num_accepted_tokens > 0
