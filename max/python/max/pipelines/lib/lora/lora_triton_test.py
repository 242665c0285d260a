"""LoRA on the GPU's code path without a GPU: the segmented LoRA kernels (through Triton's
CPU interpreter) over the rows the step inputs group by slot give the torch reference's
tokens, for a batch mixing two adapters and the base model through chunked prefill, mixed
steps and decode steps derived on the device (asynchronous scheduling).

Without a GPU the test runner sets TRITON_INTERPRET=1 before anything imports Triton
(tools/pytest_main.py); run by hand as `TRITON_INTERPRET=1 python -m pytest ...`.
"""

import max_kernels
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, build_engine, resolve_model
from max.testing.engine_probes import greedy_tokens
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS
from max.testing.tiny_lora import write_tiny_adapter
from max_kernels import lora_sgmv

PROMPTS = [[1, 50, 60, 70], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [1, 400], [1, 50, 60, 70]]
LORAS = ["a", None, "b", "b"]


def _tokens(base, adapters, kernels: str) -> list[list[int]]:
    config = PipelineConfig(
        model_path=str(base), kv_cache_page_size=16, max_length=128, max_num_batched_tokens=12, enable_lora=True,
        lora_modules=[f"{n}={p}" for n, p in adapters.items()], max_loras=2, max_lora_rank=8,
    )  # fmt: skip
    engine = build_engine(resolve_model(config, register_all()))
    engine.async_scheduling = kernels == "triton"
    with max_kernels.backend(kernels):
        return greedy_tokens(engine, PROMPTS, 5, loras=LORAS)


def test_lora_kernels_give_the_reference_tokens_through_mixed_and_decode_steps(tmp_path, monkeypatch):
    launches = []
    shrink = lora_sgmv.lora_shrink_sgmv
    monkeypatch.setattr(lora_sgmv, "lora_shrink_sgmv", lambda *a: launches.append(a[2].num_tiles) or shrink(*a))
    base = write_tiny_checkpoint(tmp_path / "base", TINY_CONFIGS["llama3"], seed=3)
    adapters = {n: write_tiny_adapter(base, tmp_path / n, seed=i, rank=4 + 4 * i, magnitude=0.2) for i, n in enumerate("ab")}
    reference = _tokens(base, adapters, "torch")
    assert not launches
    assert _tokens(base, adapters, "triton") == reference
    assert launches and max(launches) > 1  # the kernels ran, over tiles of several slots
    # The adapters matter: the same prompt under a and b continues differently.
    assert reference[0] != reference[3]
