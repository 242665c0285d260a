"""LoRA adapters against transformers + PEFT in float32 on tiny random checkpoints, and a
batch mixing adapters and the base model against each request run alone."""

import pytest
import torch

from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model
from max.testing.engine_probes import greedy_tokens, prompt_logits
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS
from max.testing.tiny_lora import peft_reference, write_tiny_adapter

PROMPTS = [[1, 15, 300, 7, 2048, 9, 11], [1, 9000, 17, 17, 17, 44, 5, 6, 7, 1200, 33], [1, 4]]


def _engine(base, adapters: dict, **overrides):
    config = PipelineConfig(
        model_path=str(base),
        kv_cache_page_size=4,
        max_length=256,
        enable_lora=True,
        lora_modules=[f"{name}={path}" for name, path in adapters.items()],
        max_lora_rank=8,
        **overrides,
    )
    return build_engine(resolve_model(config, register_all()))


@pytest.mark.parametrize("arch", ["llama3", "qwen2", "qwen3", "gemma3"])
def test_adapter_logits_match_transformers_with_peft(arch, tmp_path):
    base = write_tiny_checkpoint(tmp_path / "base", TINY_CONFIGS[arch], seed=3)
    adapters = {
        # Every projection, the slots' full rank.
        "full": write_tiny_adapter(base, tmp_path / "full", seed=1, rank=8, alpha=16),
        # A lower rank (zero-padded in its slot), rsLoRA scaling, attention only.
        "rs": write_tiny_adapter(
            base, tmp_path / "rs", seed=2, rank=4, alpha=8, use_rslora=True, targets=("q_proj", "v_proj", "o_proj")
        ),
    }
    engine = _engine(base, adapters)
    for name, path in adapters.items():
        reference = peft_reference(base, path)
        expected = {}
        for i, prompt in enumerate(PROMPTS):
            with torch.no_grad():
                expected[i] = reference(torch.tensor([prompt])).logits[0]
            got = prompt_logits(engine, prompt, lora=name)
            torch.testing.assert_close(got, expected[i], rtol=1e-5, atol=1e-5)
        with torch.no_grad(), reference.disable_adapter():
            base_expected = reference(torch.tensor([PROMPTS[0]])).logits[0]
        torch.testing.assert_close(prompt_logits(engine, PROMPTS[0]), base_expected, rtol=1e-5, atol=1e-5)
        # The adapter changes the logits (the test would pass on a no-op otherwise).
        assert (expected[0] - base_expected).abs().max() > 1e-2


def test_batch_mixing_four_adapters_and_the_base_model_gives_each_its_own_tokens(tmp_path):
    base = write_tiny_checkpoint(tmp_path / "base", TINY_CONFIGS["llama3"], seed=5)
    adapters = {f"a{i}": write_tiny_adapter(base, tmp_path / f"a{i}", seed=10 + i, rank=4 + i, magnitude=0.2) for i in range(4)}
    # Two device slots for four adapters: slots are reloaded as requests come and go.
    engine = _engine(base, adapters, max_loras=2, max_cpu_loras=2, max_batch_size=8)
    prompts = [PROMPTS[i % 3] for i in range(10)]
    loras = [None, "a0", "a1", "a2", "a3", "a0", None, "a3", "a1", "a2"]
    together = greedy_tokens(engine, prompts, 12, loras=loras)
    alone = [greedy_tokens(engine, [p], 12, loras=[lora])[0] for p, lora in zip(prompts, loras)]
    assert together == alone
    # Different adapters really give different continuations of the same prompt.
    assert len({tuple(t) for t, p in zip(together, prompts) if p == PROMPTS[0]}) > 1
    assert engine.kv_cache.pool.num_in_use == 0


def test_prefix_cache_never_shares_pages_between_adapters(tmp_path):
    base = write_tiny_checkpoint(tmp_path / "base", TINY_CONFIGS["llama3"], seed=5)
    adapters = {"a": write_tiny_adapter(base, tmp_path / "a", seed=1, magnitude=0.2)}
    engine = _engine(base, adapters)
    prompt = list(range(3, 40))
    first = greedy_tokens(engine, [prompt], 4)  # the base model caches the prompt's pages
    assert engine.stats().kv_pages_cached > 0
    with_adapter = greedy_tokens(engine, [prompt], 4, loras=["a"])
    fresh = _engine(base, adapters)
    assert with_adapter == greedy_tokens(fresh, [prompt], 4, loras=["a"])
    assert with_adapter != first
    # A second request with the same adapter does reuse the adapter's pages.
    engine.add_request("again", prompt, SamplingParams(max_new_tokens=1, temperature=0.0), lora="a")
    (output,) = engine.step()
    assert output.num_cached_tokens >= 32
