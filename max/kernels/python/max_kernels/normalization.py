"""RMSNorm (Llama's and Gemma's), optionally fused with the residual add before it.

`rms_norm` is the Triton kernel, `rms_norm_reference` the plain-torch version that defines
the result (it is `max.nn.norm.RMSNorm` / `GemmaRMSNorm`, with vLLM's fused residual add in
front). The kernel normalizes whole rows held in registers: one program per row, or several
rows per program when rows are short (the per-head q/k norms of Qwen3 and Gemma 3).
`rms_norm_qk` normalizes the query and the key heads of a fused qkv projection in one
launch, each with its own weight (Qwen3 runs two norms per layer there, Gemma 3 too).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from max_kernels.backend import unspecialized
from max_kernels.pdl import pdl_launch, pdl_prologue

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803

# A row is held in registers at once; beyond this the reference is used instead.
MAX_TRITON_DIM = 16384


def rms_norm_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    residual: torch.Tensor | None = None,
    gemma: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x over its last dimension, in plain torch.

    Llama: `weight * (x / rms(x)).to(x.dtype)`; Gemma (`gemma=True`): `(x / rms(x) * (1 + w))`
    in float32, cast to x's dtype. The statistic is always taken in float32.

    Args:
        x: [..., D] activations.
        weight: [D] scale.
        eps: added to the mean square.
        residual: if given (x's shape and dtype), normalizes `s = x + residual` (added in x's
            dtype) and returns `(norm(s), s)`.
        gemma: Gemma's zero-centred `(1 + weight)` scaling.
        out: optional preallocated output for the normalized tensor.

    Returns:
        The normalized tensor, or `(normalized, x + residual)` when `residual` is given.
    """
    if residual is not None:
        x = x + residual
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if gemma:
        y = (xf * (1.0 + weight.float())).to(x.dtype)
    else:
        y = weight * xf.to(x.dtype)
    if out is not None:
        y = out.copy_(y)
    return y if residual is None else (y, x)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    residual: torch.Tensor | None = None,
    gemma: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x over its last dimension, as a Triton kernel (see `rms_norm_reference`).

    x (and residual, out) may be strided views whose last dimension is contiguous, e.g. the
    per-head q of a fused qkv projection viewed as [T, H, head_dim]. Computes in float32,
    rounding where the reference does: the residual sum to x's dtype, and for Llama the
    normalized value to x's dtype before the weight multiplies it.
    """
    d = x.shape[-1]
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    if out is not None and out.shape != x.shape:
        raise ValueError(f"out shape {tuple(out.shape)} != x shape {tuple(x.shape)}")
    if d > MAX_TRITON_DIM:
        return rms_norm_reference(x, weight, eps, residual=residual, gemma=gemma, out=out)
    out_dtype = x.dtype if gemma else torch.promote_types(weight.dtype, x.dtype)
    if out is None:
        out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    summed = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else None
    if x.numel() == 0:
        return out if summed is None else (out, summed)

    x3 = _rows_3d(x)
    out3 = _rows_3d(out, allow_copy=False)
    res3 = _rows_3d(residual) if residual is not None else x3
    sum3 = _rows_3d(summed, allow_copy=False) if summed is not None else x3
    _launch(x3, res3, weight.contiguous(), out3, sum3, eps, has_residual=residual is not None, gemma=gemma)
    return out if summed is None else (out, summed)


def rms_norm_qk_reference(
    qk: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, num_q_heads: int, eps: float, *, gemma: bool = False
) -> torch.Tensor:
    """The query heads qk[:, :num_q_heads] normalized with q_weight and the key heads
    qk[:, num_q_heads:] with k_weight, as two `rms_norm_reference` calls; [T, Hq + Hkv, D]
    in a new tensor (q and k are views of it)."""
    q = rms_norm_reference(qk[:, :num_q_heads], q_weight, eps, gemma=gemma)
    k = rms_norm_reference(qk[:, num_q_heads:], k_weight, eps, gemma=gemma)
    return torch.cat((q, k), dim=1)


def rms_norm_qk(
    qk: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, num_q_heads: int, eps: float, *, gemma: bool = False
) -> torch.Tensor:
    """`rms_norm_qk_reference` in one launch of the RMSNorm kernel.

    qk: [T, Hq + Hkv, D] with a contiguous last dimension, typically the query and key
    columns of the fused qkv projection's output viewed per head (no copy):
    `qkv[:, :(Hq + Hkv) * D].view(T, Hq + Hkv, D)`. Returns [T, Hq + Hkv, D] in the dtype
    `rms_norm` gives; out[:, :Hq] and out[:, Hq:] are the normalized q and k.
    """
    if qk.dim() != 3 or not 0 < num_q_heads < qk.shape[1]:
        raise ValueError(f"rms_norm_qk takes [T, Hq + Hkv, D] with 0 < Hq < Hq + Hkv, got {tuple(qk.shape)}, Hq={num_q_heads}")
    d = qk.shape[-1]
    if d > MAX_TRITON_DIM:
        return rms_norm_qk_reference(qk, q_weight, k_weight, num_q_heads, eps, gemma=gemma)
    weight_dtype = torch.promote_types(q_weight.dtype, k_weight.dtype)
    out_dtype = qk.dtype if gemma else torch.promote_types(weight_dtype, qk.dtype)
    out = torch.empty(qk.shape, dtype=out_dtype, device=qk.device)
    if qk.numel() == 0:
        return out
    x3 = qk if qk.stride(-1) == 1 else qk.contiguous()
    _launch(x3, x3, q_weight.contiguous(), out, x3, eps, has_residual=False, gemma=gemma,
            k_weight=k_weight.contiguous(), num_q_heads=num_q_heads)  # fmt: skip
    return out


def _launch(x3, res3, weight, out3, sum3, eps, *, has_residual, gemma, k_weight=None, num_q_heads=0):
    """The kernel over rows (outer, inner) of [outer, inner, D] views; with k_weight, rows
    whose inner index is num_q_heads or more take it instead of `weight`."""
    outer, inner, d = x3.shape
    n_rows = outer * inner
    block_d = triton.next_power_of_2(d)
    # Short rows are batched so that a program still handles ~2k elements.
    block_rows = max(1, min(64, 2048 // block_d))
    num_warps = max(1, min(16, block_rows * block_d // 512))
    grid = (triton.cdiv(n_rows, block_rows),)
    _rms_norm_kernel[grid](
        x3, res3, weight, k_weight if k_weight is not None else weight, out3, sum3,
        n_rows, inner, d, num_q_heads if k_weight is not None else inner,
        x3.stride(0), x3.stride(1), res3.stride(0), res3.stride(1),
        out3.stride(0), out3.stride(1), sum3.stride(0), sum3.stride(1),
        eps,
        HAS_RESIDUAL=has_residual,
        GEMMA=gemma,
        TWO_WEIGHTS=k_weight is not None,
        BLOCK_ROWS=block_rows,
        BLOCK_D=block_d,
        num_warps=num_warps,
        **pdl_launch(x3),
    )  # fmt: skip


def _rows_3d(t: torch.Tensor, allow_copy: bool = True) -> torch.Tensor:
    """t as [outer, inner, D] with a contiguous last dimension; rows are (outer, inner) pairs.

    Two leading strides cover the common strided views (per-head slices of a fused
    projection) without a copy; more leading dims are merged into the first.
    """
    if t.stride(-1) != 1:
        if not allow_copy:
            raise ValueError("the output of rms_norm needs a contiguous last dimension")
        t = t.contiguous()
    if t.dim() == 1:
        return t.view(1, 1, -1)
    if t.dim() == 2:
        return t.unsqueeze(0)
    if t.dim() == 3:
        return t
    if allow_copy:
        return t.reshape(-1, *t.shape[-2:])
    return t.view(-1, *t.shape[-2:])


@triton.jit(**unspecialized(ints=("n_rows",)))
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, w2_ptr, out_ptr, sum_ptr,
    n_rows, inner, D, split,
    sx0, sx1, sr0, sr1, so0, so1, ss0, ss1,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    GEMMA: tl.constexpr,
    TWO_WEIGHTS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    pdl_prologue(USE_PDL)
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    mask = (rows < n_rows)[:, None] & col_ok[None, :]
    # int64 before the strides: rows * stride overflows int32 on large batches.
    rows64 = rows.to(tl.int64)
    a = rows64 // inner
    b = rows64 % inner
    x = tl.load(x_ptr + (a * sx0 + b * sx1)[:, None] + cols[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + (a * sr0 + b * sr1)[:, None] + cols[None, :], mask=mask, other=0.0)
        # Rounded to x's dtype, as torch's x + residual is, before the statistic reads it.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(sum_ptr + (a * ss0 + b * ss1)[:, None] + cols[None, :], x, mask=mask)
    xf = x.to(tl.float32)
    inv_rms = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=1) / D + eps)
    y = xf * inv_rms[:, None]
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if TWO_WEIGHTS:
        # Heads from `split` on (the keys of a fused q/k) take the second weight.
        w2 = tl.load(w2_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        w = tl.where((b >= split)[:, None], w2, w)
    if GEMMA:
        y = y * (1.0 + w)
    else:
        # Llama casts the normalized value to x's dtype before the weight multiplies it.
        y = y.to(x_ptr.dtype.element_ty).to(tl.float32) * w
    tl.store(
        out_ptr + (a * so0 + b * so1)[:, None] + cols[None, :],
        y.to(out_ptr.dtype.element_ty),
        mask=mask,
    )
