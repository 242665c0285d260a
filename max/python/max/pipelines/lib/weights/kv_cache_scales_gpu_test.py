"""A checkpoint's calibrated KV cache scales on the GPU: the Triton kernels (rope + KV write,
decode and prefill attention, in CUDA graphs) read the file's per-layer scales, giving the
eager loop's tokens and, in float32, the logits of the CPU's emulation of the same cache.
Skipped without a GPU (CI has none); run through the device tool."""

import shutil

import pytest
import torch

from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, build_engine, resolve_model
from max.testing.engine_probes import greedy_tokens, prompt_logits
from max.testing.kv_scale_checkpoints import add_kv_cache_scales, calibrate_kv_scales
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# The test checkpoint's quantization_config comes from compressed-tensors (pure Python, with
# pydantic): carry its wheel to a GPU image that lacks it.
pytest.importorskip("compressed_tensors", reason="writes the checkpoint's kv_cache_scheme")

PROMPTS = [[1, 50, 60, 70], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [1] + list(range(600, 640))]


def _engine(path, devices, **overrides):
    settings = dict(
        model_path=str(path), devices=devices, quantization_encoding="float32", kv_cache_page_size=16,
        max_length=256, max_batch_size=8,
    )  # fmt: skip
    settings.update(overrides)
    return build_engine(resolve_model(PipelineConfig(**settings), register_all()))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("kv_scales_gpu")
    plain = write_tiny_checkpoint(root / "float", TINY_CONFIGS["llama3"], seed=3)
    k_scales, v_scales = calibrate_kv_scales(_engine(plain, "cpu"), PROMPTS[2])
    path = add_kv_cache_scales(shutil.copytree(plain, root / "calibrated"), k_scales, v_scales)
    return plain, path, k_scales, v_scales


def test_graphs_read_the_file_s_scales_and_follow_the_cpu_emulation(calibrated):
    plain, path, k_scales, v_scales = calibrated
    fast = _engine(path, "gpu")  # auto: the kv_cache_scheme makes it fp8
    eager = _engine(path, "gpu", enforce_eager=True, async_scheduling=False)
    assert fast.kv_cache.keys[0].dtype == torch.float8_e4m3fn and fast.runner.graph_batch_sizes
    assert [s.item() for s in fast.kv_cache.k_scales] == k_scales
    assert [s.item() for s in fast.kv_cache.v_scales] == v_scales
    assert greedy_tokens(fast, PROMPTS, 24) == greedy_tokens(eager, PROMPTS, 24)
    assert fast.runner.num_replays > 0
    cpu = _engine(path, "cpu")
    unscaled = _engine(plain, "gpu", kv_cache_dtype="fp8")
    for prompt in PROMPTS:
        gpu_logits = prompt_logits(fast, prompt)
        assert torch.nn.functional.cosine_similarity(gpu_logits, prompt_logits(cpu, prompt), dim=-1).min() > 0.9999
        if len(prompt) > 10:  # the scales matter on the GPU too
            assert (gpu_logits - prompt_logits(unscaled, prompt)).abs().max() > 1e-3
