"""DeepSeek-V2 against transformers, float32, on tiny random checkpoints: latent attention
over the paged cache (latent and rotary key cached, not per-head keys and values), YaRN with
mscale, group-limited routing with shared experts, and a low-rank query (DeepSeek-V2's, not
Lite's)."""

import pytest

from max.testing.parity import (
    assert_batching_invariant,
    assert_matches_transformers,
    build_tiny_engine,
)
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

_LITE_ROUTING = {"topk_method": "greedy", "n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0}


@pytest.mark.parametrize(
    "overrides", [{}, {"q_lora_rank": 24, **_LITE_ROUTING}], ids=["grouped_routing", "q_lora_greedy_routing"]
)
def test_matches_transformers(overrides, tmp_path):
    config = {**TINY_CONFIGS["deepseek_v2"], **overrides}
    # 12 greedy steps: every step runs the reference's per-expert loop (slow on a busy CPU).
    assert_matches_transformers(write_tiny_checkpoint(tmp_path / "d", config, seed=3), steps=12, tolerance=1e-5)


def test_batching_changes_nothing(tmp_path):
    assert_batching_invariant(write_tiny_checkpoint(tmp_path / "d", TINY_CONFIGS["deepseek_v2"], seed=5), steps=6)


def test_cache_holds_one_latent_row_per_token(tmp_path):
    """kv_lora_rank + qk_rope_head_dim = 40 values per token and layer, in two halves."""
    engine = build_tiny_engine(write_tiny_checkpoint(tmp_path / "d", TINY_CONFIGS["deepseek_v2"], seed=3))
    k_cache, v_cache = engine.kv_cache.layer(0)
    assert k_cache.shape[2:] == v_cache.shape[2:] == (1, 20)


def test_kv_bytes_per_token_of_the_lite_shape():
    """DeepSeek-V2-Lite in bfloat16: 27 layers x (512 + 64) values x 2 bytes per token, a
    ninth of what its 16 heads would cache as keys (192 wide) and values (128), and less
    than grouped-query models of similar size cache."""
    import torch

    from max.benchmark.model_configs import config_dir
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import PipelineConfig, resolve_model

    def bytes_per_token(name: str) -> int:
        config = PipelineConfig(model_path=str(config_dir(name)), load_format="dummy", max_length=4096)
        resolved = resolve_model(config, register_all())
        params = resolved.architecture.pipeline_model.get_kv_params(resolved.hf_config, config, torch.bfloat16)
        return params.bytes_per_page // params.page_size

    per_token = bytes_per_token("DeepSeek-V2-Lite")
    assert per_token == 27 * 576 * 2
    assert per_token * 8 < 27 * 16 * (192 + 128) * 2
    # Grouped-query models: Llama-3.1-8B (8 KV heads of 128, 32 layers) caches over 4x as
    # much; Qwen3-30B-A3B (4 KV heads, 48 layers), an MoE of similar active size, 3.2x.
    assert per_token * 4 < bytes_per_token("Llama-3.1-8B") == 131072
    assert per_token * 3 < bytes_per_token("Qwen3-30B-A3B") == 98304
