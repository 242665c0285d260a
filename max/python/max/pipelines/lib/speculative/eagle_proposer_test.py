"""The EAGLE-3 and EAGLE proposers over a tiny random target (CPU, float32): the tap takes the
features transformers reports (hidden states entering the aux layers; the last hidden
state after the final norm); the proposer's drafts, batched, incremental and after
rollbacks, equal a from-scratch run of the head over the whole sequence."""

import pytest
import torch

from max.kv_cache import KVCacheParams, PagedKVCache
from max.nn import step_context
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, build_engine, resolve_model
from max.pipelines.lib.engine.request import Request
from max.pipelines.lib.engine.scheduler import ScheduledChunk
from max.pipelines.lib.pipeline_builder import build_rank
from max.pipelines.lib.runner.input_batch import InputBatchBuilder
from max.pipelines.lib.sampling.sampling_params import SamplingParams
from max.pipelines.lib.speculative.eagle_builder import build_eagle_proposer
from max.pipelines.lib.speculative.proposer import DraftSequence
from max.testing.engine_probes import greedy_tokens
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint
from max.testing.tiny_eagle_heads import write_head
from max_kernels import RaggedLayout

LAYERS = 7
PROMPTS = [[1, 50, 60, 70, 80, 90], [1, 7, 9], [1] + list(range(300, 317))]


@pytest.fixture(scope="module")
def target_path(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("t"), llama_config(num_hidden_layers=LAYERS), seed=3)


@pytest.fixture(scope="module")
def target(target_path):
    config = PipelineConfig(model_path=str(target_path), kv_cache_page_size=4, max_length=128)
    return build_rank(resolve_model(config, register_all())).model


@pytest.fixture(scope="module")
def reference(target_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(target_path), torch_dtype=torch.float32).eval()


def hf_features(reference, tokens, method, aux_layers):
    with torch.no_grad():
        out = reference.model(torch.tensor([tokens]), output_hidden_states=True)
    if method == "eagle":
        return out.last_hidden_state[0]
    return torch.cat([out.hidden_states[i][0] for i in aux_layers], dim=-1)


def run_head_once(head, tokens, hidden):
    """The head over one whole sequence in one step, on a fresh cache: outputs [T, H]."""
    c = head.config.decoder
    cache = PagedKVCache(KVCacheParams(c.num_layers, c.num_kv_heads, c.head_dim, 4, torch.float32), 64, "cpu", False)
    t = len(tokens)
    cache.reserve("s", t)
    pages = torch.tensor(cache.pages("s"), dtype=torch.int32)[None]
    index = torch.arange(t)
    layout = RaggedLayout(torch.tensor([0, t], dtype=torch.int32), torch.tensor([t], dtype=torch.int32), pages,
                          pages[0, index // 4].long() * 4 + index % 4, 4, 1 if t == 1 else 0, [t], [t])  # fmt: skip
    with torch.inference_mode(), step_context(layout, cache):
        return head(torch.tensor(tokens), index, hidden)


def reference_drafts(proposer, tokens, features, k):
    """Drafts by rerunning the head from scratch over pairs (g_p, x_{p+1}), then over its
    own outputs and drafts."""
    head = proposer.head
    hidden, toks, drafts = head.fuse(features[: len(tokens) - 1]), list(tokens[1:]), []
    for _ in range(k):
        out = run_head_once(head, toks, hidden)[-1:]
        with torch.inference_mode():
            draft = int(proposer._draw(out)[0])
        drafts.append(draft)
        toks.append(draft)
        hidden = torch.cat([hidden, out])
    return drafts


def _proposer(folder, method, target):
    return build_eagle_proposer(folder, method, target, kv_cache_tokens=400, max_step_tokens=256, page_size=4)


@pytest.mark.parametrize("method", ["eagle3", "eagle"])
def test_the_tap_takes_the_features_transformers_reports(tmp_path, target, reference, method):
    proposer, tap = _proposer(write_head(tmp_path / method, method), method, target)
    try:
        tokens = PROMPTS[2]
        request = Request("r", tokens, len(tokens), SamplingParams(), 0, 128, 0)
        runner_cache = PagedKVCache(KVCacheParams(LAYERS, 2, 16, 4, torch.float32), 16, "cpu", False)
        runner_cache.reserve("r", len(tokens))
        inputs = InputBatchBuilder(target, runner_cache).build([ScheduledChunk(request, 0, len(tokens))])
        target.execute(inputs)
        expected = hf_features(reference, tokens, method, proposer.head.config.aux_layers)
        assert torch.allclose(tap.rows(len(tokens)), expected, atol=1e-5, rtol=0)
        # The step's features go to the proposer, which drafts from them.
        proposer.observe_step(inputs)
        seq = tokens + [42]
        drafts = proposer.propose([DraftSequence("r", seq)], 3)
        assert drafts == [reference_drafts(proposer, seq, expected, 3)]
        # A step that did not write the tap (a graph captured without it) hands nothing
        # over: stale rows never become features.
        proposer.observe_step(inputs)
        assert proposer.propose([DraftSequence("r", seq)], 3) == [[]]
    finally:
        tap.remove()


@pytest.mark.parametrize("method", ["eagle3", "eagle"])
def test_drafts_equal_a_from_scratch_run_of_the_head(tmp_path, target, reference, method):
    folder = write_head(tmp_path / method, method, seed=4)
    proposer, tap = _proposer(folder, method, target)
    tap.remove()  # features come from transformers here (the tap has its own test)
    aux = proposer.head.config.aux_layers
    seqs = [p + [11 * (i + 1)] for i, p in enumerate(PROMPTS)]  # prompt + the target's first token
    feats = [hf_features(reference, s + [5] * 8, method, aux) for s in seqs]  # features past N-2 ignored
    for i, s in enumerate(seqs):
        proposer.add_target_features(f"r{i}", 0, feats[i][: len(s) - 1])
    drafts = proposer.propose([DraftSequence(f"r{i}", s) for i, s in enumerate(seqs)], 4)
    assert drafts == [reference_drafts(proposer, s, f, 4) for s, f in zip(seqs, feats)]
    # A verify step ran each last token and its drafts; 0, 2 and 4 were accepted, then the
    # target's own token. The step's features (rejected positions included) come in.
    grown = [s + d[:a] + [900 + a] for s, d, a in zip(seqs, drafts, (0, 2, 4))]
    feats = [hf_features(reference, g + [5] * 8, method, aux) for g in grown]
    for i, s in enumerate(seqs):
        proposer.add_target_features(f"r{i}", len(s) - 1, feats[i][len(s) - 1 : len(s) + 4])
    again = proposer.propose([DraftSequence(f"r{i}", g) for i, g in enumerate(grown)], 3)
    assert again == [reference_drafts(proposer, g, f, 3) for g, f in zip(grown, feats)]
    fresh, fresh_tap = _proposer(folder, method, target)
    fresh_tap.remove()
    for i, f in enumerate(feats):
        fresh.add_target_features(f"r{i}", 0, f)
    assert fresh.propose([DraftSequence(f"r{i}", g) for i, g in enumerate(grown)], 3) == again


def test_no_features_no_drafts_and_release_frees_pages(tmp_path, target, reference):
    proposer, tap = _proposer(write_head(tmp_path / "h", "eagle3"), "eagle3", target)
    tap.remove()
    seq = PROMPTS[0] + [3]
    assert proposer.propose([DraftSequence("r", seq)], 3) == [[]]
    feats = hf_features(reference, seq, "eagle3", proposer.head.config.aux_layers)
    proposer.add_target_features("r", 2, feats[2:4])  # positions 0, 1 and 4 missing
    assert proposer.propose([DraftSequence("r", seq)], 3) == [[]]
    proposer.add_target_features("r", 0, feats)
    assert len(proposer.propose([DraftSequence("r", seq)], 3)[0]) == 3
    assert proposer.kv_cache.pool.num_in_use > 0
    proposer.release("r")
    assert proposer.kv_cache.pool.num_in_use == 0


@pytest.fixture(scope="module")
def plain_greedy(target_path):
    config = PipelineConfig(model_path=str(target_path), kv_cache_page_size=4, max_length=128)
    return greedy_tokens(build_engine(resolve_model(config, register_all())), PROMPTS, 10)


@pytest.mark.parametrize("method", ["eagle3", "eagle"])
def test_the_engine_verifying_eagle_drafts_gives_the_plain_greedy_tokens(tmp_path, target_path, plain_greedy, method):
    settings = dict(model_path=str(target_path), kv_cache_page_size=4, max_length=128)
    # The proposer swapped into an engine built for another method, fed each step's features
    # by hand (the flag's own path, where the engine calls observe_step, is tested in
    # speculative_methods_test).
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 1}
    resolved = resolve_model(PipelineConfig(**settings, speculative_config=spec), register_all())
    engine = build_engine(resolved)
    proposer, _ = _proposer(write_head(tmp_path / method, method), method, engine.runner.model)
    engine.speculator.proposer = proposer
    execute = engine.runner.execute

    def execute_and_observe(inputs):
        logits = execute(inputs)
        proposer.observe_step(inputs)
        return logits

    engine.runner.execute = execute_and_observe
    assert greedy_tokens(engine, PROMPTS, 10) == plain_greedy
    assert engine.stats().spec_decode.num_draft_tokens > 0
    assert proposer.kv_cache.pool.num_in_use == 0


def test_a_step_longer_than_the_tap_gives_no_features(tmp_path, target):
    proposer, tap = build_eagle_proposer(write_head(tmp_path / "h", "eagle3"), "eagle3", target, 400, max_step_tokens=8, page_size=4)
    try:
        tokens = PROMPTS[2]  # 18 tokens in one step: more than the tap keeps
        cache = PagedKVCache(KVCacheParams(LAYERS, 2, 16, 4, torch.float32), 16, "cpu", False)
        cache.reserve("r", len(tokens))
        request = Request("r", tokens, len(tokens), SamplingParams(), 0, 128, 0)
        inputs = InputBatchBuilder(target, cache).build([ScheduledChunk(request, 0, len(tokens))])
        target.execute(inputs)
        proposer.observe_step(inputs)
        assert proposer.propose([DraftSequence("r", tokens + [42])], 3) == [[]]
    finally:
        tap.remove()
