"""MXFP4 fused MoE at gpt-oss-20b's real sizes on a CUDA GPU, against its torch reference.

gpt-oss-20b's routed experts: E=32, k=4, H=2880, I=2880, biases, clamped SwiGLU (alpha
1.702, limit 7). Packed weights are random bytes with scales 117..123 (decoded weights
of magnitude ~2**-7, as the checkpoint's); x ~ N(0, 1); router softmax, top-4,
renormalized. T = 1..4, 8, 256 and 2048 tokens by `fused_moe_mxfp4`'s own choice of path
(and of GEMV tiles: one-token ones up to 8 routed rows, few-token ones above), each path
forced at 1 and 8 tokens (the GEMV at one token is batch-1 decode), and the GEMV path
with the sum over the k slots left to torch (no arrival counters) as well as in its down
launch.

Tolerances as `sampling_moe_gpu_test`'s fused_moe (bfloat16 and float16): the reference
rounds every intermediate and adds the k weighted outputs in the dtype, the kernels sum
them in float32, so elementwise |diff| <= 2e-2 * max|ref| + 2e-2 * |ref| and the mean
|diff| <= 5e-3 * mean|ref|; float32: 1e-4 relative to max|ref|.

The op is also captured in a CUDA graph and replayed on new inputs (no host sync inside).
"""

import pytest
import torch

import max_kernels.mxfp4_gemv as gemv_module
from max_kernels.cuda_graph import capture_graph
from max_kernels.mxfp4_moe import (
    GEMV_MAX_TOKENS,
    _fused_moe_mxfp4,
    fused_moe_mxfp4,
    fused_moe_mxfp4_reference,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# gpt-oss-20b: experts, k, hidden, intermediate.
EXPERTS, TOP_K, HIDDEN, INTER = 32, 4, 2880, 2880
KWARGS = dict(activation="clamped_swiglu", alpha=1.702, limit=7.0)


def _weights(seed=0, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def packed(rows, cols):
        blocks = torch.randint(0, 256, (EXPERTS, rows, cols // 32, 16), generator=g, device="cuda", dtype=torch.uint8)
        scales = torch.randint(117, 124, (EXPERTS, rows, cols // 32), generator=g, device="cuda", dtype=torch.uint8)
        return blocks, scales

    gate_up = packed(2 * INTER, HIDDEN)
    down = packed(HIDDEN, INTER)
    b_gate_up = (torch.randn(EXPERTS, 2 * INTER, generator=g, device="cuda") * 0.1).to(dtype)
    b_down = (torch.randn(EXPERTS, HIDDEN, generator=g, device="cuda") * 0.1).to(dtype)
    return (*gate_up, *down), dict(b_gate_up=b_gate_up, b_down=b_down)


def _tokens(tokens, seed, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(1000 + seed)
    x = torch.randn(tokens, HIDDEN, generator=g, device="cuda").to(dtype)
    router = torch.randn(tokens, EXPERTS, generator=g, device="cuda")
    weights, ids = torch.topk(torch.softmax(router, dim=-1), TOP_K, dim=-1)
    return x, weights / weights.sum(-1, keepdim=True), ids


def _check(got, expected, dtype):
    assert got.dtype == dtype and got.shape == expected.shape
    got, expected = got.float(), expected.float()
    assert torch.isfinite(got).all()
    scale = expected.abs().max().item()
    diff = (got - expected).abs()
    if dtype == torch.float32:
        assert diff.max().item() <= 1e-4 * scale
    else:
        assert (diff <= 2e-2 * scale + 2e-2 * expected.abs()).all(), diff.max().item()
        assert diff.mean().item() <= 5e-3 * expected.abs().mean().item()


@pytest.fixture(scope="module")
def weights():
    return _weights()


@pytest.mark.parametrize("tokens", [1, 2, 3, 4, 8, 256, 2048])
def test_fused_moe_mxfp4_gpt_oss_20b(weights, tokens):
    packed, biases = weights
    x, w, ids = _tokens(tokens, seed=tokens)
    args = (x, *packed, w, ids)
    _check(fused_moe_mxfp4(*args, **KWARGS, **biases), fused_moe_mxfp4_reference(*args, **KWARGS, **biases), x.dtype)


@pytest.mark.parametrize(
    "path,tokens", [("gemv", 1), ("gemv", 8), ("mma", 1), ("mma", 8), ("mma", 1500), ("dequant", 8), ("dequant", 1500)]
)
def test_each_path_at_full_size(weights, path, tokens):
    packed, biases = weights
    x, w, ids = _tokens(tokens, seed=100 + tokens)
    args = (x, *packed, w, ids)
    expected = fused_moe_mxfp4_reference(*args, **KWARGS, **biases)
    got = _fused_moe_mxfp4(*args, "clamped_swiglu", biases["b_gate_up"], biases["b_down"], 1.702, 7.0, path=path)
    _check(got, expected, x.dtype)


@pytest.mark.parametrize("tokens", [1, 4])
def test_gemv_path_without_arrival_counters(weights, tokens, monkeypatch):
    packed, biases = weights
    x, w, ids = _tokens(tokens, seed=150 + tokens)
    args = (x, *packed, w, ids)
    expected = fused_moe_mxfp4_reference(*args, **KWARGS, **biases)
    monkeypatch.setattr(gemv_module.grid_counters, "counters", lambda device, needed=1: None)
    _check(fused_moe_mxfp4(*args, **KWARGS, **biases), expected, x.dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("tokens", [1, 64])
def test_other_dtypes(dtype, tokens):
    packed, biases = _weights(seed=1, dtype=dtype)
    x, w, ids = _tokens(tokens, seed=200 + tokens, dtype=dtype)
    args = (x, *packed, w, ids)
    _check(fused_moe_mxfp4(*args, **KWARGS, **biases), fused_moe_mxfp4_reference(*args, **KWARGS, **biases), dtype)


@pytest.mark.parametrize("tokens", [1, GEMV_MAX_TOKENS + 60, 1100])
def test_replays_from_a_cuda_graph(weights, tokens):
    packed, biases = weights
    x, w, ids = _tokens(tokens, seed=300)
    graph, out = capture_graph(lambda: fused_moe_mxfp4(x, *packed, w, ids, **KWARGS, **biases))
    fresh = _tokens(tokens, seed=301)
    for dst, src in zip((x, w, ids), fresh):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, fused_moe_mxfp4(x, *packed, w, ids, **KWARGS, **biases))
