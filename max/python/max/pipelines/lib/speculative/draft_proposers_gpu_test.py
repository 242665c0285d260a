"""The draft-model and EAGLE-3 proposers on a GPU in float32: a draft model equal to the target
drafts the CPU's greedy continuation, its drafts past the first replaying decode graphs; an
EAGLE-3 head drafts on the GPU what it drafts on the CPU from the tap's features, and a
graph step the tap did not capture hands no stale features over. Skipped without a GPU
(CI has none); run through the device tool."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, build_engine, resolve_model
from max.pipelines.lib.engine.request import Request
from max.pipelines.lib.engine.scheduler import ScheduledChunk
from max.pipelines.lib.pipeline_builder import build_rank
from max.pipelines.lib.sampling.sampling_params import SamplingParams
from max.pipelines.lib.speculative.draft_model_builder import build_draft_model_proposer
from max.pipelines.lib.speculative.eagle_builder import build_eagle_proposer
from max.pipelines.lib.speculative.proposer import DraftSequence
from max.testing.engine_probes import greedy_tokens
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = [[1, 50, 60, 70], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [1, 400], [1] + list(range(600, 640))]


def _target(path, devices, **overrides):
    settings = dict(model_path=str(path), devices=devices, quantization_encoding="float32", kv_cache_page_size=16, max_length=256, max_batch_size=8)
    settings.update(overrides)
    return resolve_model(PipelineConfig(**settings), register_all())


def _seqs(token_lists):
    return [DraftSequence(f"r{i}", tokens) for i, tokens in enumerate(token_lists)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("llama"), llama_config(num_hidden_layers=7), seed=3)


def test_draft_model_on_the_gpu_drafts_the_cpu_greedy_continuation(checkpoint):
    cpu = greedy_tokens(build_engine(_target(checkpoint, "cpu")), PROMPTS, 12)
    proposer = build_draft_model_proposer(str(checkpoint), _target(checkpoint, "gpu"), build_rank, registry=register_all())
    assert proposer.runner.graph_batch_sizes
    replays = proposer.runner.num_replays
    assert proposer.propose(_seqs(PROMPTS), 4) == [c[:4] for c in cpu]
    # Drafts 2 to 4 are three decode-graph replays, fed on the device.
    assert proposer.runner.num_replays - replays == 3
    accepted = [0, 3, 1, 4]
    grown = [p + c[: a + 1] for p, c, a in zip(PROMPTS, cpu, accepted)]
    assert proposer.propose(_seqs(grown), 4) == [c[a + 1 : a + 5] for c, a in zip(cpu, accepted)]
    for i in range(len(PROMPTS)):
        proposer.release(f"r{i}")
    assert proposer.kv_cache.pool.num_in_use == 0


def _write_eagle3_head(folder, hidden=64, vocab=49152, draft_vocab=300):
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g) / math.sqrt(shape[-1])

    w = {
        "midlayer.self_attn.q_proj.weight": rand(hidden, 2 * hidden),
        "midlayer.self_attn.k_proj.weight": rand(32, 2 * hidden),
        "midlayer.self_attn.v_proj.weight": rand(32, 2 * hidden),
        "midlayer.self_attn.o_proj.weight": rand(hidden, hidden),
        "midlayer.mlp.gate_proj.weight": rand(96, hidden),
        "midlayer.mlp.up_proj.weight": rand(96, hidden),
        "midlayer.mlp.down_proj.weight": rand(hidden, 96),
        "fc.weight": rand(hidden, 3 * hidden, scale=3.0),
        "lm_head.weight": rand(draft_vocab, hidden, scale=3.0),
    }
    for name in ("input_layernorm", "hidden_norm", "post_attention_layernorm"):
        w[f"midlayer.{name}.weight"] = 1 + 0.2 * torch.randn(hidden, generator=g)
    w["norm.weight"] = 1 + 0.2 * torch.randn(hidden, generator=g)
    kept = torch.sort(torch.randperm(vocab, generator=g)[:draft_vocab]).values
    w["d2t"] = kept - torch.arange(draft_vocab)
    w["t2d"] = torch.zeros(vocab, dtype=torch.bool).index_fill_(0, kept, True)
    folder.mkdir()
    save_file(w, str(folder / "model.safetensors"))
    config = {"model_type": "llama", "hidden_size": hidden, "intermediate_size": 96, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 1, "rms_norm_eps": 1e-5, "vocab_size": vocab,
              "max_position_embeddings": 512, "draft_vocab_size": draft_vocab}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _eagle_drafts(checkpoint, head, devices, **overrides):
    """Runs the prompts through the target's runner (one step), hands the tap's features to
    the proposer and drafts 4 tokens after each prompt plus a token."""
    runner = build_rank(_target(checkpoint, devices, **overrides))
    proposer, tap = build_eagle_proposer(head, "eagle3", runner.model, kv_cache_tokens=1024, max_step_tokens=512)
    requests = [Request(f"r{i}", list(p), len(p), SamplingParams(), 0, 256, 0) for i, p in enumerate(PROMPTS)]
    chunks = [ScheduledChunk(r, 0, len(r.tokens)) for r in requests]
    for r in requests:
        runner.kv_cache.reserve(r.request_id, len(r.tokens))
    inputs = runner.prepare(chunks)
    runner.execute(inputs)
    proposer.observe_step(inputs)
    drafts = proposer.propose(_seqs([p + [42] for p in PROMPTS]), 4)
    return drafts, proposer, runner, requests


def test_eagle3_on_the_gpu_drafts_what_it_drafts_on_the_cpu(checkpoint, tmp_path):
    head = _write_eagle3_head(tmp_path / "head")
    cpu, _, _, _ = _eagle_drafts(checkpoint, head, "cpu")
    gpu, _, _, _ = _eagle_drafts(checkpoint, head, "gpu", enforce_eager=True)
    assert all(len(d) == 4 for d in cpu)
    assert gpu == cpu


def test_a_graph_step_the_tap_did_not_capture_gives_no_features(checkpoint, tmp_path):
    head = _write_eagle3_head(tmp_path / "head")
    _, proposer, runner, requests = _eagle_drafts(checkpoint, head, "gpu")
    assert runner.graph_batch_sizes  # captured before the tap was installed
    for r in requests:
        r.tokens.append(42)
        runner.kv_cache.reserve(r.request_id, len(r.tokens))
    decode = [ScheduledChunk(r, len(r.tokens) - 1, 1) for r in requests]
    replays = runner.num_replays
    inputs = runner.prepare(decode)
    runner.execute(inputs)
    assert runner.num_replays == replays + 1
    proposer.observe_step(inputs)
    assert proposer.propose(_seqs([r.tokens + [7] for r in requests]), 4) == [[]] * len(requests)
