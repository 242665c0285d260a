"""Micro-benchmark cases of the fused elementwise kernels (RMSNorm, rope + KV write, SwiGLU).

Shapes are a Llama-3-8B decoder step in bfloat16 (hidden 4096, Hq 32 / Hkv 8, head_dim 128,
intermediate 14336) at 1, 256 and 8192 tokens. Each case counts the fewest bytes the op
must move: every input read once, every output written once.
"""

from __future__ import annotations

import torch

from max.benchmark.kernels.bench_harness import BenchCase, tensor_bytes
from max_kernels.activation import silu_and_mul, silu_and_mul_reference
from max_kernels.normalization import rms_norm, rms_norm_reference
from max_kernels.rotary_kv import rope_and_write_kv, rope_and_write_kv_reference

DTYPE = torch.bfloat16


def _rms_norm_case(tokens: int, hidden: int = 4096) -> BenchCase:
    x = torch.randn(tokens, hidden, dtype=DTYPE, device="cuda")
    residual = torch.randn_like(x)
    w = torch.randn(hidden, dtype=DTYPE, device="cuda")
    # Reads x, residual, weight; writes the normalized tensor and the new residual stream.
    moved = tensor_bytes(x, residual, w) + 2 * tensor_bytes(x)
    return BenchCase(
        kernel="rms_norm+residual",
        shape=f"[{tokens}, {hidden}] bf16",
        triton_fn=lambda: rms_norm(x, w, 1e-6, residual=residual),
        reference_fn=lambda: rms_norm_reference(x, w, 1e-6, residual=residual),
        bytes_moved=moved,
    )


def _rope_case(tokens: int, hq: int = 32, hkv: int = 8, d: int = 128) -> BenchCase:
    page_size, max_pos = 16, 131072
    qkv = torch.randn(tokens, (hq + 2 * hkv) * d, dtype=DTYPE, device="cuda")
    q = qkv[:, : hq * d].view(tokens, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(tokens, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(tokens, hkv, d)
    positions = torch.randint(0, max_pos, (tokens,), device="cuda")
    inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device="cuda").float() / d))
    freqs = torch.outer(torch.arange(max_pos, device="cuda", dtype=torch.float32), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    num_pages = max(64, 4 * tokens // page_size)
    k_cache = torch.zeros(num_pages, page_size, hkv, d, dtype=DTYPE, device="cuda")
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(num_pages * page_size, device="cuda")[:tokens]
    args = (q, k, v, positions, cos, sin, k_cache, v_cache, slots)
    # Reads q, k, v, positions, slots and one cos/sin row per token; writes q, k and v.
    table_rows = 2 * tokens * d * cos.element_size()
    moved = 2 * tensor_bytes(q, k, v) + tensor_bytes(positions, slots) + table_rows
    return BenchCase(
        kernel="rope_and_write_kv",
        shape=f"T={tokens} Hq={hq} Hkv={hkv} D={d} bf16",
        triton_fn=lambda: rope_and_write_kv(*args),
        reference_fn=lambda: rope_and_write_kv_reference(*args),
        bytes_moved=moved,
    )


def _silu_case(tokens: int, inter: int = 14336) -> BenchCase:
    x = torch.randn(tokens, 2 * inter, dtype=DTYPE, device="cuda")
    # Reads gate and up, writes one half's worth.
    moved = tensor_bytes(x) + tensor_bytes(x) // 2
    return BenchCase(
        kernel="silu_and_mul",
        shape=f"[{tokens}, {2 * inter}] bf16",
        triton_fn=lambda: silu_and_mul(x),
        reference_fn=lambda: silu_and_mul_reference(x),
        bytes_moved=moved,
    )


def bench_cases() -> list[BenchCase]:
    """The fused elementwise ops at decode (1, 256 tokens) and prefill (8192 tokens) sizes."""
    return [
        *(_rms_norm_case(t) for t in (1, 256, 8192)),
        *(_rope_case(t) for t in (1, 256, 8192)),
        *(_silu_case(t) for t in (256, 8192)),
    ]
