"""Decode attention over a paged bfloat16 KV cache on x86 CPUs with AVX2: a C kernel of ours.

In a CPU decode step of a small model, attention through torch costs more than its
arithmetic: gathering each request's keys and values into a padded copy (two
`index_select`s a layer) and `scaled_dot_product_attention`'s set-up take ~70 us a layer
for SmolLM2 at a few hundred tokens, against a few microseconds of multiply-adds.
`decode_attention` (`cpu_decode_attention.c`, built by `cpu_native`) reads the keys and
values in place by their cache slots, one work item per (request, KV head) on torch's
threads, and computes the scores and softmax in float32, rounding the output once.
`decode_attention_reference` is the same in torch. It serves bfloat16 caches only: the
float32 path is the verification reference and keeps torch's ops.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from max_kernels import cpu_native


@functools.cache
def _library() -> ctypes.CDLL | None:
    i64, ptr, f32, cint = cpu_native.I64, cpu_native.PTR, cpu_native.F32, cpu_native.INT
    args = [ptr, ptr, ptr, ptr, i64, ptr, ptr, i64, i64, i64, i64, f32, ptr, cint]
    return cpu_native.library("cpu_decode_attention", {"max_decode_attention": (args, cint)})


def available() -> bool:
    """Whether this CPU and machine run the kernel (AVX2 and FMA, a C compiler, a build)."""
    return _library() is not None


def takes(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether `decode_attention` serves these queries and cache: bfloat16 on the CPU, a
    contiguous cache (read in place), head size a multiple of 8, and the kernel available."""
    return (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and k_cache.dtype == torch.bfloat16
        and k_cache.is_contiguous()
        and q.shape[-1] % 8 == 0
        and available()
    )


def _check(q, k_cache, v_cache, kv_slots, lo, hi) -> None:
    b, hq, d = q.shape
    hkv = k_cache.shape[-2]
    if k_cache.shape[-1] != d or v_cache.shape != k_cache.shape or hq % hkv:
        raise ValueError(f"queries {tuple(q.shape)} do not fit the caches {tuple(k_cache.shape)} / {tuple(v_cache.shape)}")
    if kv_slots.dim() != 2 or kv_slots.shape[0] != b or lo.shape != (b,) or hi.shape != (b,):
        raise ValueError(f"{b} requests: kv_slots {tuple(kv_slots.shape)}, bounds {tuple(lo.shape)} / {tuple(hi.shape)}")


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_slots: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """out [b, Hq, D] = softmax(scale q k^T) v for each request r's query q[r] [Hq, D] over
    its keys j in [lo[r], hi[r]] (inclusive), found at flat cache slots kv_slots[r, j];
    caches [..., Hkv, D] (pages and page slots flattened), bfloat16; query head i reads KV
    head i // (Hq / Hkv). `takes(q, k_cache)` must hold."""
    lib = _library()
    if lib is None:
        raise RuntimeError("cpu_decode_attention is not available on this machine (see available())")
    _check(q, k_cache, v_cache, kv_slots, lo, hi)
    b, hq, d = q.shape
    hkv = k_cache.shape[-2]
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("decode_attention reads the caches in place: they must be contiguous")
    if lo.dtype != torch.int32 or hi.dtype != torch.int32 or kv_slots.dtype != torch.int64:
        raise ValueError(f"bounds are int32 and slots int64, got {lo.dtype} / {hi.dtype} / {kv_slots.dtype}")
    q = q.contiguous()
    slots, lo, hi = kv_slots.contiguous(), lo.contiguous(), hi.contiguous()  # no copies where they are
    out = torch.empty_like(q)
    rc = lib.max_decode_attention(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr(), slots.shape[1], lo.data_ptr(), hi.data_ptr(),
        b, hq, hkv, d, float(scale), out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    if rc != 0:
        raise MemoryError("cpu_decode_attention: the kernel could not allocate its buffers")
    return out


def decode_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_slots: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """`decode_attention` in torch, request by request, in float32; the output in q's dtype."""
    _check(q, k_cache, v_cache, kv_slots, lo, hi)
    b, hq, d = q.shape
    hkv = k_cache.shape[-2]
    k_flat, v_flat = k_cache.reshape(-1, hkv, d), v_cache.reshape(-1, hkv, d)
    out = torch.empty_like(q)
    for r in range(b):
        slots = kv_slots[r, int(lo[r]) : int(hi[r]) + 1].long()
        k = k_flat[slots].float().repeat_interleave(hq // hkv, dim=1)  # [n, Hq, D]
        v = v_flat[slots].float().repeat_interleave(hq // hkv, dim=1)
        probs = torch.softmax(torch.einsum("hd,nhd->hn", q[r].float() * scale, k), dim=-1)
        out[r] = torch.einsum("hn,nhd->hd", probs, v).to(q.dtype)
    return out
