"""The small per-token ops of a bfloat16 step on x86 CPUs with AVX2: C kernels of ours.

A CPU decode step of a small model is a few thousand small torch ops. The residual add
with RMSNorm (`normalization.rms_norm_reference`: eight ops) and the rotary embedding with
the store of k and v into the paged cache (`rotary_kv.rope_and_write_kv_reference`: ten)
each cost tens of microseconds a layer in dispatch and temporaries for a few thousand
multiply-adds (SmolLM2-135M, AVX2: ~2 ms of a ~17 ms step each); SwiGLU's
`activation.silu_and_mul_reference` (three ops) ~0.4 ms. `cpu_token_ops.c` does each in
one call, rounding to bfloat16 where the reference rounds: the rope is the reference bit
for bit; the norm's float32 mean of squares is summed in another order and silu's exp is
another polynomial, so an output can differ from the reference's in its last bit, rarely.

Only bfloat16 takes these (the float32 path is the verification reference and keeps
torch's ops), with Llama's norm (Gemma's keeps torch's), and where `cpu_native` can build
the library (AVX2 and FMA, a C compiler).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from max_kernels import cpu_native


@functools.cache
def _library() -> ctypes.CDLL | None:
    i64, ptr, f32, cint = cpu_native.I64, cpu_native.PTR, cpu_native.F32, cpu_native.INT
    rope = [ptr, i64, ptr, i64, ptr, i64, i64, i64, i64, i64, ptr, ptr, i64, ptr, ptr, ptr, ptr, cint]
    return cpu_native.library(
        "cpu_token_ops",
        {
            "max_add_rms_norm": ([ptr, i64, ptr, ptr, f32, i64, i64, ptr, ptr, cint], None),
            "max_rope_write_kv": (rope, None),
            "max_silu_and_mul": ([ptr, i64, i64, i64, ptr, cint], None),
        },
    )


def available() -> bool:
    """Whether this CPU and machine run the kernels (AVX2 and FMA, a C compiler, a build)."""
    return _library() is not None


def _rows_of(t: torch.Tensor) -> bool:
    """A bfloat16 CPU tensor of rows: 2-D, its last dimension contiguous."""
    return t.device.type == "cpu" and t.dtype == torch.bfloat16 and t.dim() == 2 and t.stride(-1) == 1


def takes_rms_norm(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None, gemma: bool) -> bool:
    """Whether `add_rms_norm` serves this norm: Llama's, bfloat16 rows [T, D] (D % 8 == 0)
    with a bfloat16 weight and a contiguous residual of x's shape."""
    return (
        not gemma
        and _rows_of(x)
        and x.shape[-1] % 8 == 0
        and weight.dtype == torch.bfloat16
        and weight.is_contiguous()
        and (residual is None or (residual.dtype == torch.bfloat16 and residual.is_contiguous() and residual.shape == x.shape))
        and available()
    )


def add_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`rms_norm_reference(x, weight, eps, residual=residual)` (Llama's) in one call:
    norm(x), or with `residual`, (norm(x + residual), x + residual). `takes_rms_norm` must hold."""
    rows, d = x.shape
    y = torch.empty((rows, d), dtype=torch.bfloat16)
    s = None if residual is None else torch.empty((rows, d), dtype=torch.bfloat16)
    _library().max_add_rms_norm(
        x.data_ptr(), x.stride(0), None if residual is None else residual.data_ptr(), weight.data_ptr(), eps, rows, d,
        y.data_ptr(), None if s is None else s.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return y if s is None else (y, s)


def _heads_of(t: torch.Tensor) -> bool:
    """[T, H, D] bfloat16 on the CPU whose heads are contiguous and D apart within a row."""
    return t.device.type == "cpu" and t.dtype == torch.bfloat16 and t.dim() == 3 and t.stride(2) == 1 and t.stride(1) == t.shape[2]


def takes_rope(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether `rope_and_write_kv` serves these: bfloat16 q, k and v [T, H, D] (heads
    contiguous: views of a fused qkv projection are) and contiguous bfloat16 caches."""
    return (
        _heads_of(q)
        and _heads_of(k)
        and _heads_of(v)
        and k_cache.dtype == torch.bfloat16
        and v_cache.dtype == torch.bfloat16
        and k_cache.is_contiguous()
        and v_cache.is_contiguous()
        and available()
    )


def rope_and_write_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_rows: torch.Tensor,
    signed_sin_rows: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> torch.Tensor:
    """q and k rotated by their rows of the tables (cos and signed sin, bfloat16, [T, 1, r]
    or [T, r], as `rotary_kv.rotation_rows` gives them), k and v stored at `slot_mapping`
    (int64 [T]; < 0: not stored); returns q rotated [T, Hq, D]. `takes_rope` must hold."""
    t, hq, d = q.shape
    hkv = k.shape[1]
    c = cos_rows.reshape(t, -1).contiguous()
    s = signed_sin_rows.reshape(t, -1).contiguous()
    r = c.shape[1]
    if r > d or r % 2 or s.shape != c.shape or k.shape != v.shape or k_cache.shape[-2:] != (hkv, d):
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, tables [{t}, {r}], cache {tuple(k_cache.shape)} do not fit")
    slots = slot_mapping.to(torch.int64).contiguous()
    out = torch.empty((t, hq, d), dtype=torch.bfloat16)
    _library().max_rope_write_kv(
        q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), t, hq, hkv, d,
        c.data_ptr(), s.data_ptr(), r, slots.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    return out


def takes_silu_and_mul(x: torch.Tensor) -> bool:
    """Whether `silu_and_mul` serves x = [gate | up]: bfloat16 rows [T, 2I] (I % 8 == 0)."""
    return _rows_of(x) and x.shape[-1] % 16 == 0 and available()


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """`activation.silu_and_mul_reference(x)` in one call: silu(gate) * up of x = [gate | up]
    [T, 2I] -> [T, I]. `takes_silu_and_mul` must hold."""
    t, two_i = x.shape
    out = torch.empty((t, two_i // 2), dtype=torch.bfloat16)
    _library().max_silu_and_mul(x.data_ptr(), x.stride(0), t, two_i // 2, out.data_ptr(), torch.get_num_threads())
    return out
