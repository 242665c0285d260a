"""Every architecture on the GPU's code path: the Triton kernels (through Triton's CPU
interpreter, as CI has no GPU) give the tokens of the torch reference ops, greedy and
seeded, with asynchronous scheduling on, through prefill, decode and chunked prefill.

Without a GPU the test runner sets TRITON_INTERPRET=1 before anything imports Triton
(tools/pytest_main.py); run by hand as `TRITON_INTERPRET=1 python -m pytest ...`.
"""

import pytest

import max_kernels
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

PROMPTS = [[1, 50, 60, 70], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [1, 400]]


def _generate(path, kernels: str, params: SamplingParams) -> list[list[int]]:
    config = PipelineConfig(model_path=str(path), kv_cache_page_size=16, max_length=128, max_num_batched_tokens=12)
    engine = build_engine(resolve_model(config, register_all()))
    engine.async_scheduling = kernels == "triton"
    out = {str(i): [] for i in range(len(PROMPTS))}
    with max_kernels.backend(kernels):
        for i, prompt in enumerate(PROMPTS):
            engine.add_request(str(i), prompt, params)
        while engine.has_unfinished():
            for o in engine.step():
                out[o.request_id].extend(o.new_token_ids)
    return list(out.values())


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_triton_kernels_give_the_reference_tokens(name, tmp_path):
    path = write_tiny_checkpoint(tmp_path, TINY_CONFIGS[name], seed=3)
    greedy = SamplingParams(max_new_tokens=5, temperature=0.0, ignore_eos=True)
    assert _generate(path, "triton", greedy) == _generate(path, "torch", greedy)
    if name == "llama3":
        seeded = SamplingParams(max_new_tokens=5, temperature=0.9, top_k=50, top_p=0.9, seed=5, ignore_eos=True)
        assert _generate(path, "triton", seeded) == _generate(path, "torch", seeded)
