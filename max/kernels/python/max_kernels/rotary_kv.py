"""Rotary position embedding of q and k fused with the store of k and v into the paged cache.

`rope_and_write_kv` is the Triton kernel: one launch rotates the queries and keys of all the
step's tokens and writes the keys and values at their cache slots, reading q, k and v
straight out of the fused qkv projection (strided views, no copy). `rope_and_write_kv_reference`
is the torch path it must match: `max.nn.rotary_embedding.RotaryEmbedding.forward` followed
by `max_kernels.paged_attention.write_kv_cache_reference`.

The cos/sin tables [max_positions, rotary_dim] are float32 in the "rotate half" layout
(cat(freqs, freqs), any rope scaling already folded in), so every rope variant is the same
kernel with other tables. Only the first rotary_dim channels of a head rotate (partial
rotary); the rest pass through. A cache slot < 0 marks a padding row, whose k and v are not
stored. An FP8 (e4m3) cache stores k and v quantized by their per-tensor scales
(`max_kernels.fp8_kv_cache`); caches of other dtypes take them as they are.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from max_kernels.backend import unspecialized
from max_kernels.fp8_kv_cache import is_fp8, kernel_view, kv_scale, quantize_e4m3, quantize_kv
from max_kernels.pdl import pdl_launch, pdl_prologue
from max_kernels.ragged_layout import RaggedLayout

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803


def _step_cached(layout: RaggedLayout | None, key: tuple, inputs: tuple[torch.Tensor, ...], build):
    """build(), kept in the step's `layout` (when given) for the other layers of the step,
    which pass the same tensors. Held with the tensors it came from: they stay alive as
    long as the entry, so their ids cannot be reused within the step."""
    if layout is None:
        return build()
    entry = layout.cached((key, *map(id, inputs)), lambda: (inputs, build()))
    if all(a is b for a, b in zip(entry[0], inputs)):
        return entry[1]
    return build()


def rotation_rows(positions, cos, sin, dtype: torch.dtype, layout: RaggedLayout | None):
    """(cos rows, signed sin rows) [T, 1, rotary_dim] of the step's positions in `dtype`.
    The sin rows' first half is negated, so that `x * cos + x.roll(half) * signed_sin` is
    `x * cos + rotate_half(x) * sin` bit for bit: (-a) * b and a * (-b) round alike."""

    def gather():
        c = cos[positions].unsqueeze(1).to(dtype)
        s = sin[positions].unsqueeze(1).to(dtype)
        half = s.shape[-1] // 2
        return c, torch.cat((-s[..., :half], s[..., half:]), dim=-1)

    return _step_cached(layout, ("rope rows", dtype), (positions, cos, sin), gather)


def _rotate(x: torch.Tensor, c: torch.Tensor, signed_s: torch.Tensor) -> torch.Tensor:
    """x * c + rotate_half(x) * s over x's last dimension, in four ops (one roll instead of
    two slices, a negation and a concatenation): the reference's values bit for bit."""
    out = x * c
    out += x.roll(x.shape[-1] // 2, dims=-1) * signed_s
    return out


def rope_and_write_kv_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    layout: RaggedLayout | None = None,
) -> torch.Tensor:
    """Rotates q and k by position in q's dtype, stores k and v in the cache; returns q rotated.

    Args:
        q: [T, Hq, D] queries; k, v: [T, Hkv, D] keys and values of the step's tokens.
        positions: [T] absolute positions (int64).
        cos, sin: [max_positions, rotary_dim] float32 tables, rotary_dim <= D.
        k_cache, v_cache: [num_pages, page_size, Hkv, D]; the flat slot of a token is
            page * page_size + offset.
        slot_mapping: [T] int64 cache slot of each token; < 0 for padding rows (not stored).
        k_scale, v_scale: float32 [1] per-tensor scales of an FP8 cache (None: 1.0); other
            caches ignore them.
        layout: the step's layout, if any: what every layer of the step would compute
            alike (the tables' rows, whether a slot is padding) is kept there.

    Returns:
        The rotated queries [T, Hq, D].

    Computes `q * c + rotate_half(q) * s` (and the same for k) with c and s the tables'
    rows rounded to q's dtype, each product rounded to q's dtype: what
    `max.nn.rotary_embedding.RotaryEmbedding.forward` computes. It is the CPU path, where a
    decode step is thousands of small ops, so it is written in few of them: the rows of the
    tables and whether any slot is padding are worked out once per step (in `layout`), and
    the rotation is one roll, not four ops (`_rotate`). The skip of padding rows uses a
    boolean index, which synchronizes with a CUDA device; the Triton kernel is the
    capture-safe path.
    """
    c, signed_s = rotation_rows(positions, cos, sin, q.dtype, layout)
    r = cos.shape[-1]
    if r == q.shape[-1]:
        q_rot, k_rot = _rotate(q, c, signed_s), _rotate(k, c, signed_s)
    else:  # partial rotary: only the first r channels rotate
        q_rot = torch.cat((_rotate(q[..., :r], c, signed_s), q[..., r:]), -1)
        k_rot = torch.cat((_rotate(k[..., :r], c, signed_s), k[..., r:]), -1)
    if _step_cached(layout, ("all slots real",), (slot_mapping,), lambda: bool((slot_mapping >= 0).all())):
        slots, k_new, v_new = slot_mapping, k_rot, v
    else:
        keep = slot_mapping >= 0
        slots, k_new, v_new = slot_mapping[keep], k_rot[keep], v[keep]
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    if is_fp8(k_cache):
        # Copied as bytes: index_copy_ has no float8 kernel on the CPU.
        k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
        k_new = quantize_kv(k_new, k_scale).view(torch.uint8)
        v_new = quantize_kv(v_new, v_scale).view(torch.uint8)
    k_cache.view(num_slots, *k_cache.shape[2:]).index_copy_(0, slots, k_new)
    v_cache.view(num_slots, *v_cache.shape[2:]).index_copy_(0, slots, v_new)
    return q_rot


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
    *,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton version of `rope_and_write_kv_reference` (same arguments), in one launch.

    q, k and v may be views with any token and head strides (last dimension contiguous).
    The rotation is computed in float32 with the float32 tables and rounded once, so it
    differs from the reference (which rounds cos/sin and each product to q's dtype) by a
    few units in the last place in bfloat16/float16; v is copied bit for bit. An FP8 cache
    gets the rotated float32 k quantized directly (the reference quantizes k rounded to
    q's dtype first, so a code may differ by one step) and v's codes bit for bit. Returns
    a new contiguous [T, Hq, D] tensor. Capture-safe: no host synchronization.
    """
    t, hq, d = q.shape
    hkv = k.shape[1]
    rotary_dim = cos.shape[-1]
    if rotary_dim > d or rotary_dim % 2:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and at most head_dim {d}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("the KV cache needs a contiguous last dimension")
    q, k, v, cos, sin = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v, cos, sin))
    q_out = torch.empty((t, hq, d), dtype=q.dtype, device=q.device)
    if t == 0:
        return q_out
    kv_fp8 = is_fp8(k_cache)
    if kv_fp8:
        k_scale, v_scale = kv_scale(k_scale, q), kv_scale(v_scale, q)
        k_cache, v_cache = kernel_view(k_cache), kernel_view(v_cache)
    else:
        k_scale = v_scale = k_cache  # not read

    block_d = triton.next_power_of_2(d)
    block_h = min(triton.next_power_of_2(max(hq, hkv)), max(1, 1024 // block_d))
    num_q_blocks = triton.cdiv(hq, block_h)
    # Axis 1: the q head blocks first, then the kv head blocks (k and v together).
    grid = (t, num_q_blocks + triton.cdiv(hkv, block_h))
    _rope_kv_kernel[grid](
        q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping, q_out, k_scale, v_scale,
        hq, hkv, d, rotary_dim // 2, rotary_dim, k_cache.shape[1], num_q_blocks,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos.stride(0), sin.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        q_out.stride(0), q_out.stride(1),
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        KV_FP8=kv_fp8,
        num_warps=4,
        **pdl_launch(q),
    )  # fmt: skip
    return q_out


@triton.jit(**unspecialized(pointers=("pos_ptr", "slot_ptr")))
def _rope_kv_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, slot_ptr, qo_ptr,
    k_scale_ptr, v_scale_ptr,
    Hq, Hkv, D, half, rotary_dim, page_size, num_q_blocks,
    sq_t, sq_h, sk_t, sk_h, sv_t, sv_h,
    s_cos, s_sin,
    skc_p, skc_s, skc_h, svc_p, svc_s, svc_h,
    sqo_t, sqo_h,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    KV_FP8: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    pdl_prologue(USE_PDL)
    tok = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    i = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    rot = d < rotary_dim
    first = d < half
    # rotate_half maps (a, b) to (-b, a): channel d pairs with d +- half.
    partner = tl.where(first, d + half, d - half)
    sign = tl.where(first, -1.0, 1.0)
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    c = tl.load(cos_ptr + pos * s_cos + d, mask=rot, other=0.0)[None, :]
    s = tl.load(sin_ptr + pos * s_sin + d, mask=rot, other=0.0)[None, :]
    rot2 = rot[None, :]
    sign2 = sign[None, :]

    # Queries: heads of q block `blk`; none when blk is a kv block (hq >= Hq masks them).
    hq = blk * BLOCK_H + i
    q_mask = (hq < Hq)[:, None] & d_ok[None, :]
    q_row = (tok * sq_t + hq.to(tl.int64) * sq_h)[:, None]
    x = tl.load(q_ptr + q_row + d[None, :], mask=q_mask, other=0.0).to(tl.float32)
    x2 = tl.load(q_ptr + q_row + partner[None, :], mask=q_mask & rot2, other=0.0).to(tl.float32)
    y = tl.where(rot2, x * c + sign2 * x2 * s, x)
    qo_row = (tok * sqo_t + hq.to(tl.int64) * sqo_h)[:, None]
    tl.store(qo_ptr + qo_row + d[None, :], y.to(qo_ptr.dtype.element_ty), mask=q_mask)

    # Keys and values: kv heads of block blk - num_q_blocks (negative for q blocks: masked).
    hk = (blk - num_q_blocks) * BLOCK_H + i
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    # A padding row (slot < 0) stores no heads. (A scalar bool `&` a vector mask breaks the
    # interpreter's mask dtype, hence the head limit instead.)
    kv_heads = tl.where(slot >= 0, Hkv, 0)
    kv_mask = ((hk >= 0) & (hk < kv_heads))[:, None] & d_ok[None, :]
    hk64 = hk.to(tl.int64)
    page = slot // page_size
    offset = slot % page_size
    k_row = (tok * sk_t + hk64 * sk_h)[:, None]
    x = tl.load(k_ptr + k_row + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
    x2 = tl.load(k_ptr + k_row + partner[None, :], mask=kv_mask & rot2, other=0.0).to(tl.float32)
    y = tl.where(rot2, x * c + sign2 * x2 * s, x)
    kc_row = (page * skc_p + offset * skc_s + hk64 * skc_h)[:, None]
    if KV_FP8:
        k_codes = quantize_e4m3(y, tl.load(k_scale_ptr), kc_ptr.dtype.element_ty)
        tl.store(kc_ptr + kc_row + d[None, :], k_codes, mask=kv_mask)
    else:
        tl.store(kc_ptr + kc_row + d[None, :], y.to(kc_ptr.dtype.element_ty), mask=kv_mask)
    v_row = (tok * sv_t + hk64 * sv_h)[:, None]
    vals = tl.load(v_ptr + v_row + d[None, :], mask=kv_mask, other=0.0)
    vc_row = (page * svc_p + offset * svc_s + hk64 * svc_h)[:, None]
    if KV_FP8:
        v_codes = quantize_e4m3(vals.to(tl.float32), tl.load(v_scale_ptr), vc_ptr.dtype.element_ty)
        tl.store(vc_ptr + vc_row + d[None, :], v_codes, mask=kv_mask)
    else:
        tl.store(vc_ptr + vc_row + d[None, :], vals.to(vc_ptr.dtype.element_ty), mask=kv_mask)
