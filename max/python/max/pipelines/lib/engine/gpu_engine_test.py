"""The GPU step loop: CUDA-graph decode and asynchronous scheduling give the tokens of the
eager, synchronous loop (and of the CPU in float32), and memory does not grow with steps.
Skipped without a GPU (CI has none); run through the device tool."""

import pytest
import torch

from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model
from max.testing.engine_probes import greedy_tokens, prompt_logits
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = [[1, 50, 60, 70], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [1, 400], [1] + list(range(600, 640))]


def _engine(path, devices, **overrides):
    settings = dict(model_path=str(path), devices=devices, quantization_encoding="float32", kv_cache_page_size=16, max_length=256, max_batch_size=8)
    settings.update(overrides)
    return build_engine(resolve_model(PipelineConfig(**settings), register_all()))


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def checkpoint(request, tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp(request.param), TINY_CONFIGS[request.param], seed=3)


def test_graphs_and_overlap_match_eager_and_cpu_in_float32(checkpoint):
    cpu = greedy_tokens(_engine(checkpoint, "cpu"), PROMPTS, 24)
    eager = _engine(checkpoint, "gpu", enforce_eager=True, async_scheduling=False)
    assert eager.runner.graph_batch_sizes == [] and not eager.async_scheduling
    fast = _engine(checkpoint, "gpu")
    assert fast.runner.graph_batch_sizes and fast.async_scheduling
    assert greedy_tokens(eager, PROMPTS, 24) == cpu
    assert greedy_tokens(fast, PROMPTS, 24) == cpu
    assert fast.runner.num_replays > 0


def test_single_request_prefill_graphs_match_the_cpu(checkpoint):
    """Lone requests prefill through the padded prefill graphs (lengths across buckets, and
    a prefix-cache hit that leaves a shorter chunk) and decode the CPU's greedy tokens."""
    prompts = [[1, 50, 60, 70], [1] + list(range(700, 739)), [1] + list(range(100, 199)), [1] + list(range(100, 150))]
    cpu_engine, fast = _engine(checkpoint, "cpu"), _engine(checkpoint, "gpu")
    assert fast.runner.prefill_graph_sizes[-1] == 256  # capped by max_length
    for prompt in prompts:  # one at a time: the fourth shares 50 tokens with the third
        assert greedy_tokens(fast, [prompt], 12) == greedy_tokens(cpu_engine, [prompt], 12)
    assert fast.runner.num_prefill_replays >= len(prompts)


def test_seeded_sampling_gives_the_cpu_tokens(checkpoint):
    params = SamplingParams(max_new_tokens=16, temperature=0.8, top_p=0.9, top_k=40, seed=11, ignore_eos=True)

    def run(engine):
        engine.add_request("s", PROMPTS[1], params)
        out = []
        while engine.has_unfinished():
            for o in engine.step():
                out.extend(o.new_token_ids)
        return out

    assert run(_engine(checkpoint, "gpu")) == run(_engine(checkpoint, "cpu"))


def test_device_memory_does_not_grow_over_ten_thousand_steps():
    path = write_tiny_checkpoint(__import__("tempfile").mkdtemp(), TINY_CONFIGS["llama3"], seed=1)
    engine = _engine(path, "gpu", quantization_encoding="bfloat16", max_length=512)
    params = SamplingParams(max_new_tokens=400, temperature=0.0, ignore_eos=True)
    marks, steps = [], 0
    for round_ in range(26):  # 26 rounds of 400 decode steps (and a few prefills each)
        for i in range(8):
            engine.add_request(f"{round_}-{i}", PROMPTS[i % len(PROMPTS)], params)
        while engine.has_unfinished():
            engine.step()
            steps += 1
        torch.cuda.synchronize()
        marks.append(torch.cuda.memory_allocated())
    assert steps >= 10_000
    # After the first round every buffer exists; later rounds add nothing.
    assert set(marks[1:]) == {marks[1]}, marks


def test_start_up_warm_up_writes_no_kv(checkpoint):
    """The eager steps run at start-up (and the graph captures) leave the KV cache as it
    was allocated: every slot they name is -1."""
    engine = _engine(checkpoint, "gpu")
    for layer in range(engine.kv_cache.params.num_layers):
        k, v = engine.kv_cache.layer(layer)
        assert not k.any() and not v.any()


def test_fp8_on_the_gpu_follows_the_cpu_emulation(checkpoint):
    """`--quantization fp8` on the GPU's kernels gives the logits of its float32 emulation on
    the CPU (same weight codes and scales; only sums, and so the odd activation code,
    differ), and its decode graphs run.

    How far "the odd code" moves the logits depends on the model: the tiny random Gemma 3
    moves by up to 10 % (1 - cosine) between float32 and FP8 on the CPU, Llama by 0.1 %. So
    the GPU may differ from the emulation by at most 3x what FP8 itself changes on the CPU
    (and 0.5 % in any case)."""
    from max.nn.fp8_linear import Fp8Linear
    from max_kernels.fp8 import fp8_supported

    if not fp8_supported(torch.device("cuda")):
        pytest.skip("needs FP8 tensor cores (compute capability 8.9+)")

    def distance(a, b):
        return 1 - torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()

    # Both in float32, so that only FP8's kernels differ, not the activations' dtype.
    cpu_float = _engine(checkpoint, "cpu")
    cpu = _engine(checkpoint, "cpu", quantization="fp8")
    gpu = _engine(checkpoint, "gpu", quantization="fp8")
    assert any(isinstance(m, Fp8Linear) for m in gpu.model.model.modules())
    for prompt in PROMPTS:  # 2 to 41 tokens: the weight-only (<= 16 rows) and W8A8 paths
        emulated = prompt_logits(cpu, prompt)
        allowed = max(0.005, 3 * distance(emulated, prompt_logits(cpu_float, prompt)))
        assert distance(prompt_logits(gpu, prompt), emulated) <= allowed
    tokens = greedy_tokens(gpu, PROMPTS, 16)
    assert gpu.runner.num_replays > 0
    assert all(len(t) == 16 for t in tokens)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fp8_kv_cache_graphs_match_eager_and_follow_the_cpu_emulation(dtype):
    """`--kv-cache-dtype fp8`: CUDA-graph decode and overlap over the e4m3 cache give the
    eager loop's tokens, and in float32 the GPU's logits follow the CPU's emulation of the
    same cache (codes may differ at rounding ties only)."""
    path = write_tiny_checkpoint(__import__("tempfile").mkdtemp(), TINY_CONFIGS["llama3"], seed=3)
    eager = _engine(path, "gpu", quantization_encoding=dtype, kv_cache_dtype="fp8", enforce_eager=True, async_scheduling=False)
    fast = _engine(path, "gpu", quantization_encoding=dtype, kv_cache_dtype="fp8")
    assert fast.kv_cache.keys[0].dtype == torch.float8_e4m3fn and fast.runner.graph_batch_sizes
    assert greedy_tokens(fast, PROMPTS, 24) == greedy_tokens(eager, PROMPTS, 24)
    assert fast.runner.num_replays > 0
    if dtype == "float32":
        cpu = _engine(path, "cpu", kv_cache_dtype="fp8")
        for prompt in PROMPTS:
            a, b = prompt_logits(fast, prompt), prompt_logits(cpu, prompt)
            assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.9999


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packed_mxfp4_experts_on_the_gpu_follow_the_cpu(tmp_path, dtype):
    """gpt-oss with MXFP4 experts: on the GPU they stay packed (the grouped kernels decode
    them), on the CPU they are decoded on load; graphs, eager steps and the CPU agree."""
    from max.testing.mxfp4_checkpoints import write_mxfp4_experts

    path = write_mxfp4_experts(write_tiny_checkpoint(tmp_path / "m", TINY_CONFIGS["gpt_oss"], seed=3))
    cpu = _engine(path, "cpu", quantization_encoding=dtype)
    gpu = _engine(path, "gpu", quantization_encoding=dtype)
    moe = gpu.model.model.layers[0].mlp
    assert moe.config.expert_weights == "mxfp4" and moe.experts_down_blocks.dtype == torch.uint8
    # In bfloat16 the GPU's products and the CPU's round in other orders (as every bfloat16
    # GPU-against-CPU comparison here): float32 is the exact check.
    tolerance = 1e-4 if dtype == "float32" else 1.5e-1
    for prompt in PROMPTS:
        torch.testing.assert_close(prompt_logits(gpu, prompt), prompt_logits(cpu, prompt), rtol=tolerance, atol=tolerance)
    if dtype == "float32":
        assert greedy_tokens(gpu, PROMPTS, 16) == greedy_tokens(cpu, PROMPTS, 16)
