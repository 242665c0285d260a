"""The one-kernel decode step (`rope_decode_attention`) under Triton's interpreter, against
the composition of references and against the three-kernel Triton path it replaces.

Every cache slot no request owns, and each new token's own slot before the call, holds NaN:
a program that reads a key it should not, or reads the new token back from the cache
instead of from registers, poisons its output.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math
from dataclasses import dataclass

import pytest
import torch

from max_kernels import rope_decode_attention as fused
from max_kernels.decode_attention import decode_attention
from max_kernels.rope_decode_attention import rope_decode_attention, rope_decode_attention_reference
from max_kernels.rotary_kv import rope_and_write_kv


@dataclass
class Step:
    """A decode step's inputs: projections (views of one fused qkv row per request), rope
    tables and the paged cache."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    rows: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    slots: torch.Tensor
    table: torch.Tensor
    ctx: torch.Tensor


def _step(contexts, hq=4, hkv=2, d=32, rotary_dim=None, page_size=16, dtype=torch.float32, seed=0):
    """Request b has contexts[b] keys counting its new token (0: a padding row)."""
    g = torch.Generator().manual_seed(seed)
    rotary_dim = rotary_dim or d
    pages = [-(-c // page_size) for c in contexts]
    num_pages = sum(pages) + 2
    nan_page = num_pages - 1
    k_cache = torch.full((num_pages, page_size, hkv, d), math.nan, dtype=dtype)
    v_cache = torch.full_like(k_cache, math.nan)
    perm = torch.randperm(num_pages - 1, generator=g).tolist()
    table = torch.full((len(contexts), max(pages + [1]) + 1), nan_page, dtype=torch.int32)
    slots = torch.full((len(contexts),), -1, dtype=torch.int64)
    for b, c in enumerate(contexts):
        own = [perm.pop() for _ in range(pages[b])]
        table[b, : len(own)] = torch.tensor(own, dtype=torch.int32)
        for j in range(c - 1):  # the cached keys; the new token's slot stays NaN
            k_cache[own[j // page_size], j % page_size] = torch.randn(hkv, d, generator=g).to(dtype)
            v_cache[own[j // page_size], j % page_size] = torch.randn(hkv, d, generator=g).to(dtype)
        if c > 0:
            slots[b] = own[(c - 1) // page_size] * page_size + (c - 1) % page_size
    qkv = torch.randn(len(contexts), (hq + 2 * hkv) * d, generator=g).to(dtype)
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    angles = torch.rand(512, rotary_dim // 2, generator=g) * 6.0
    emb = torch.cat([angles, angles], dim=-1)
    ctx = torch.tensor(contexts, dtype=torch.int32)
    return Step(
        q.view(-1, hq, d),
        k.view(-1, hkv, d),
        v.view(-1, hkv, d),
        (ctx.long() - 1).clamp(min=0),
        emb.cos(),
        emb.sin(),
        k_cache,
        v_cache,
        slots,
        table,
        ctx,
    )


def _call(fn, s: Step, **opts):
    """fn on copies of the step's caches: (output, k cache, v cache)."""
    kc, vc = s.k_cache.clone(), s.v_cache.clone()
    out = fn(s.q, s.k, s.v, s.rows, s.cos, s.sin, kc, vc, s.slots, s.table, s.ctx, 0.3, **opts)
    return out, kc, vc


def _three_kernels(q, k, v, rows, cos, sin, kc, vc, slots, table, ctx, scale, num_splits=None, **opts):
    """The path the fused kernel replaces: rope_and_write_kv, then decode_attention."""
    q = rope_and_write_kv(q, k, v, rows, cos, sin, kc, vc, slots)
    return decode_attention(q, kc, vc, table, ctx, scale, num_splits=num_splits, **opts)


CASES = {
    "one split": dict(contexts=[37, 1, 130], splits=1),
    "three splits, a padding row": dict(contexts=[200, 0, 65, 3], splits=3),
    "four splits, small pages": dict(contexts=[90, 17], splits=4, page_size=5),
    "groups of four, partial rotary": dict(contexts=[70, 129], splits=2, hq=8, hkv=2, rotary_dim=16),
    "no grouping": dict(contexts=[33, 64], splits=2, hq=2, hkv=2),
    "sliding window": dict(contexts=[150, 20], splits=3, window=40),
    "softcap": dict(contexts=[80, 5], splits=2, softcap=5.0),
    "sinks, split": dict(contexts=[100, 9], splits=3, sinks=True),
    "sinks, one split": dict(contexts=[100, 9], splits=1, sinks=True),
}


def _opts(case: dict, hq: int) -> dict:
    opts = {"num_splits": case["splits"]}
    if "window" in case:
        opts["sliding_window"] = case["window"]
    if "softcap" in case:
        opts["softcap"] = case["softcap"]
    if case.get("sinks"):
        opts["sinks"] = torch.randn(hq, generator=torch.Generator().manual_seed(3))
    return opts


@pytest.mark.parametrize("name", list(CASES))
def test_matches_the_references_and_writes_the_new_token(name):
    case = CASES[name]
    shape = {key: case[key] for key in ("hq", "hkv", "rotary_dim", "page_size") if key in case}
    s = _step(case["contexts"], **shape)
    opts = _opts(case, s.q.shape[1])
    got, kc, vc = _call(rope_decode_attention, s, **opts)
    want, kc_ref, vc_ref = _call(rope_decode_attention_reference, s, **opts)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(kc, kc_ref, atol=1e-5, rtol=1e-5, equal_nan=True)
    torch.testing.assert_close(vc, vc_ref, atol=0, rtol=0, equal_nan=True)
    # Each merge put its counter back, for the next layer.
    assert not fused._COUNTERS or not fused._COUNTERS[s.q.device].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["three splits, a padding row", "groups of four, partial rotary", "sinks, split"])
def test_equals_the_three_kernel_path(name, dtype):
    case = CASES[name]
    shape = {key: case[key] for key in ("hq", "hkv", "rotary_dim", "page_size") if key in case}
    s = _step(case["contexts"], dtype=dtype, **shape)
    opts = _opts(case, s.q.shape[1])
    got, kc, vc = _call(rope_decode_attention, s, **opts)
    want, kc_ref, vc_ref = _call(_three_kernels, s, **opts)
    assert torch.equal(kc.nan_to_num(7.0), kc_ref.nan_to_num(7.0))
    assert torch.equal(vc.nan_to_num(7.0), vc_ref.nan_to_num(7.0))
    torch.testing.assert_close(got, want, atol=1e-6 if dtype == torch.float32 else 1e-2, rtol=1e-5)


def test_refuses_heads_that_do_not_group():
    s = _step([5], hq=3, hkv=2)
    with pytest.raises(ValueError, match="do not group"):
        _call(rope_decode_attention, s)
