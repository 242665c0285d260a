"""The public ops of the kernel library, each dispatched once between Triton and torch.

`max.nn` calls only these. On CUDA tensors (unless the backend is forced to `torch`) each op
runs its Triton kernel; everywhere else its plain-torch reference, which defines the result
and is the CPU path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from max_kernels import activation as _activation
from max_kernels import argmax as _argmax
from max_kernels import fp8 as _fp8
from max_kernels import gemv as _gemv
from max_kernels import mixture_of_experts as _moe
from max_kernels import normalization as _rms_norm
from max_kernels import rotary_kv as _rotary_kv
from max_kernels import sampling as _sampling
from max_kernels.backend import use_triton


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    residual: torch.Tensor | None = None,
    gemma: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x (Llama's, or Gemma's (1 + w)); with `residual`, of x + residual, which is
    returned too."""
    fn = _rms_norm.rms_norm if use_triton(x) else _rms_norm.rms_norm_reference
    return fn(x, weight, eps, residual=residual, gemma=gemma)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ weight.T (+ bias) -> [M, N]. One row of 16-bit activations on CUDA (batch-1
    decode) goes through the Triton GEMV, which starts reading its weight before the previous
    kernel ends; everything else through `F.linear` (cuBLAS on the GPU)."""
    if (
        x.is_cuda
        and x.dim() == 2
        and x.shape[0] == 1
        and x.dtype in (torch.bfloat16, torch.float16)
        and weight.dtype == x.dtype
        and weight.stride(-1) == 1
        and use_triton(x)
        and _gemv.gemv_enabled()
    ):
        return _gemv.gemv(x if x.stride(-1) == 1 else x.contiguous(), weight, bias)
    return F.linear(x, weight, bias)


def fp8_linear(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [M, K] times an FP8 weight (e4m3 codes [N, K], float32 scales [N]); [M, N] in x's
    dtype. Up to `SMALL_M` rows x stays unquantized and the weight is decoded on the fly
    (reading it is the whole cost); above, x is quantized per row and both operands go to
    the FP8 tensor cores. On a GPU with FP8 (capability 8.9+) the Triton / `_scaled_mm`
    kernels, elsewhere the float32 references of the same rule."""
    small = x.shape[0] <= _fp8.SMALL_M
    if use_triton(x) and x.is_cuda and _fp8.fp8_supported(x.device):
        if x.shape[0] == 1:
            fn = _fp8.fp8_gemv
        else:
            fn = _fp8.fp8_weight_only_linear if small else _fp8.fp8_linear
    else:
        fn = _fp8.fp8_weight_only_linear_reference if small else _fp8.fp8_linear_reference
    return fn(x, w_q, w_scale, bias)


def rope_and_write_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> torch.Tensor:
    """Rotates q and k by position, stores k and v at their cache slots; returns rotated q."""
    fn = _rotary_kv.rope_and_write_kv if use_triton(q) else _rotary_kv.rope_and_write_kv_reference
    return fn(q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of x = [gate | up]."""
    fn = _activation.silu_and_mul if use_triton(x) else _activation.silu_and_mul_reference
    return fn(x)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(gate) * up of x = [gate | up]."""
    fn = _activation.gelu_tanh_and_mul if use_triton(x) else _activation.gelu_tanh_and_mul_reference
    return fn(x)


def fused_moe(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    activation: str = "silu",
    b_gate_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
    alpha: float = _moe.SWIGLU_ALPHA,
    limit: float = _moe.SWIGLU_LIMIT,
) -> torch.Tensor:
    """The routed experts' gated MLPs, summed by router weight, for every token (`alpha` and
    `limit` are those of the "clamped_swiglu" activation)."""
    fn = _moe.fused_moe if use_triton(x) else _moe.fused_moe_reference
    return fn(
        x,
        w_gate_up,
        w_down,
        topk_weights,
        topk_ids,
        activation=activation,
        b_gate_up=b_gate_up,
        b_down=b_down,
        alpha=alpha,
        limit=limit,
    )


def apply_penalties(
    logits: torch.Tensor,
    prompt_ids: torch.Tensor,
    output_ids: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """Repetition (Hugging Face's), frequency and presence (OpenAI's) penalties per row."""
    fn = _sampling.apply_penalties if use_triton(logits) else _sampling.apply_penalties_reference
    return fn(logits, prompt_ids, output_ids, repetition, frequency, presence)


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """int64 [N]: each row's index of its largest logit (greedy decoding), as torch.argmax."""
    fn = _argmax.argmax_rows if use_triton(logits) else _argmax.argmax_rows_reference
    return fn(logits)


def sample_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    steps: torch.Tensor,
) -> torch.Tensor:
    """One token per row: greedy where temperature is 0, else a seeded draw after the
    temperature and the top-k / top-p / min-p filters."""
    fn = _sampling.sample_tokens if use_triton(logits) else _sampling.sample_tokens_reference
    return fn(logits, temperature, top_k, top_p, min_p, seeds, steps)
