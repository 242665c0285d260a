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
from max_kernels import cpu_gemv as _cpu_gemv
from max_kernels import cpu_packed_linear as _cpu_packed
from max_kernels import cpu_token_ops as _cpu_tokens
from max_kernels import fp8 as _fp8
from max_kernels import gemv as _gemv
from max_kernels import int4_gemm as _int4_gemm
from max_kernels import int4_gemv as _int4_gemv
from max_kernels import int4_layout as _int4_layout
from max_kernels import int8_gemm as _int8_gemm
from max_kernels import int8_gemv as _int8_gemv
from max_kernels import int8_layout as _int8_layout
from max_kernels import lora_sgmv as _lora_sgmv
from max_kernels import mixture_of_experts as _moe
from max_kernels import mla_decode as _mla
from max_kernels import moe_router as _router
from max_kernels import mxfp4_moe as _mxfp4_moe
from max_kernels import normalization as _rms_norm
from max_kernels import rotary_kv as _rotary_kv
from max_kernels import sampling as _sampling
from max_kernels.backend import use_triton
from max_kernels.decode_attention import decode_attention
from max_kernels.fp8_kv_cache import is_fp8
from max_kernels.lora_reference import lora_expand_reference, lora_shrink_reference

# By name: the package exports the op `paged_attention`, which hides the module's name.
from max_kernels.paged_attention import paged_attention_reference, write_kv_cache_reference
from max_kernels.prefill_attention import prefill_attention
from max_kernels.ragged_layout import RaggedLayout


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
    if use_triton(x):
        return _rms_norm.rms_norm(x, weight, eps, residual=residual, gemma=gemma)
    if _cpu_tokens.takes_rms_norm(x, weight, residual, gemma):  # bfloat16 on an AVX2 CPU: one C call
        return _cpu_tokens.add_rms_norm(x, weight, eps, residual)
    return _rms_norm.rms_norm_reference(x, weight, eps, residual=residual, gemma=gemma)


def rms_norm_qk(
    qk: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, num_q_heads: int, eps: float, *, gemma: bool = False
) -> torch.Tensor:
    """The per-head RMSNorms of the query heads qk[:, :num_q_heads] (q_weight) and the key
    heads qk[:, num_q_heads:] (k_weight) of [T, Hq + Hkv, D] in one launch on CUDA (Qwen3's
    and Gemma 3's q_norm and k_norm); [T, Hq + Hkv, D], whose two slices are q and k."""
    fn = _rms_norm.rms_norm_qk if use_triton(qk) else _rms_norm.rms_norm_qk_reference
    return fn(qk, q_weight, k_weight, num_q_heads, eps, gemma=gemma)


def _takes_gemv(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x @ weight.T goes through the Triton GEMV: one row of 16-bit activations on
    CUDA (batch-1 decode)."""
    return (
        x.is_cuda
        and x.dim() == 2
        and x.shape[0] == 1
        and x.dtype in (torch.bfloat16, torch.float16)
        and weight.dtype == x.dtype
        and weight.stride(-1) == 1
        and use_triton(x)
        and _gemv.gemv_enabled()
    )


def _gemv_call(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, **options) -> torch.Tensor:
    """The one-row GEMV on x's row (made contiguous where a strided view gives it)."""
    return _gemv.gemv(x if x.stride(-1) == 1 else x.contiguous(), weight, bias, **options)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ weight.T (+ bias) -> [M, N]. One row of 16-bit activations on CUDA (batch-1
    decode) goes through the Triton GEMV, which starts reading its weight before the previous
    kernel ends; one bfloat16 row on the CPU through ATen's GEMV (`max_kernels.cpu_gemv`);
    float32 rows on the CPU through oneDNN's packed weight, padded to a multiple of 8 rows
    (`max_kernels.cpu_packed_linear`: a row gets the same bits in any step); everything
    else through `F.linear` (cuBLAS on the GPU)."""
    if _takes_gemv(x, weight):
        return _gemv_call(x, weight, bias)
    if _cpu_gemv.takes_cpu_gemv(x, weight):
        return _cpu_gemv.cpu_gemv(x, weight, bias)
    if _cpu_packed.takes_packed_linear(x, weight):
        return _cpu_packed.packed_linear(x, weight, bias)
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


def int4_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [M, K] times an int4 weight in our layout (`max_kernels.int4_layout`: packed codes
    [N, K/2], scales and zeros [N, K/G]) -> [M, N] in x's dtype. On CUDA the Triton GEMV
    (up to 16 rows: decode) or GEMM (prefill); elsewhere, and for group sizes the kernels
    do not take, the reference (exact dequantization, then the product)."""
    if use_triton(x) and _int4_gemv.int4_kernels_take(group_size):
        if x.shape[0] <= _int4_gemv.GEMV_MAX_ROWS:
            return _int4_gemv.int4_gemv(x, qweight, scales, zeros, group_size, bias)
        return _int4_gemm.int4_gemm(x, qweight, scales, zeros, group_size, bias)
    return _int4_layout.int4_linear_reference(x, qweight, scales, zeros, group_size, bias)


def int8_linear(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [M, K] times an int8 weight in our layout (`max_kernels.int8_layout`: codes [N, K],
    float16 scales [N, K/G]) -> [M, N] in x's dtype. On CUDA the Triton GEMV (up to 16
    rows: decode) or GEMM (prefill); elsewhere, and for group sizes the kernels do not take,
    the reference (exact dequantization, then the product)."""
    if use_triton(x) and _int8_gemv.int8_kernels_take(group_size):
        if x.shape[0] <= _int8_gemv.GEMV_MAX_ROWS:
            return _int8_gemv.int8_gemv(x, codes, scales, group_size, bias)
        return _int8_gemm.int8_gemm(x, codes, scales, group_size, bias)
    return _int8_layout.int8_linear_reference(x, codes, scales, group_size, bias)


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
    layout: RaggedLayout | None = None,
) -> torch.Tensor:
    """Rotates q and k by position, stores k and v at their cache slots; returns rotated q.
    An FP8 cache gets them quantized by its per-tensor `k_scale` / `v_scale` (None: 1.0).
    The torch path keeps what the step's layers share in the step's `layout`, if given."""
    if use_triton(q):
        return _rotary_kv.rope_and_write_kv(q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping, k_scale=k_scale, v_scale=v_scale)
    if _cpu_tokens.takes_rope(q, k, v, k_cache, v_cache):  # bfloat16 on an AVX2 CPU: one C call
        c, signed_s = _rotary_kv.rotation_rows(positions, cos, sin, q.dtype, layout)
        return _cpu_tokens.rope_and_write_kv(q, k, v, c, signed_s, k_cache, v_cache, slot_mapping)
    return _rotary_kv.rope_and_write_kv_reference(
        q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping, k_scale=k_scale, v_scale=v_scale, layout=layout
    )


def write_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layout: RaggedLayout,
    *,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Stores the step's new keys and values [T, Hkv, D] at their cache slots; into an FP8
    cache quantized by `k_scale` / `v_scale` (None: 1.0). The torch store on every device:
    the layers write the cache inside `rope_and_write_kv`, whose kernel is the GPU path."""
    write_kv_cache_reference(k, v, k_cache, v_cache, layout, k_scale=k_scale, v_scale=v_scale)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layout: RaggedLayout,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    *,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of the step's queries over their requests' cached keys and values.

    On CUDA the leading decode rows (one query token each) run the split-K decode kernel
    and the rest the ragged prefill kernel, both reading keys and values in place from
    their pages; elsewhere `max_kernels.paged_attention.paged_attention_reference`. Where
    the layout lets tokens see keys ahead of them (`key_limit`: Gemma 3's image tokens),
    the prefill kernel reads each row's limit; a decode row's limit is always its own
    position (an image in one chunk of one token is one token wide).

    Args:
        q: [T, Hq, D] queries of the step's new tokens, ragged as `layout` says.
        k_cache, v_cache: [num_pages, page_size, Hkv, D], in q's dtype or float8_e4m3fn;
            this step's keys and values must already be written.
        layout: the step's ragged layout.
        scale: factor applied to q·k.
        sliding_window: if set, a query at position p sees keys at positions > p - window.
        softcap: if set, scores become softcap * tanh(scores / softcap) before the softmax.
        sinks: optional float32 [Hq], a learned logit per head that joins each softmax's
            denominator (gpt-oss).
        k_scale, v_scale: float32 [1] per-tensor scales of an FP8 cache (None: 1.0);
            other caches ignore them.

    Returns:
        [T, Hq, D] attention output, in q's dtype.
    """
    if not use_triton(q):
        return paged_attention_reference(
            q, k_cache, v_cache, layout, scale, sliding_window, softcap, sinks, k_scale=k_scale, v_scale=v_scale
        )
    out = torch.empty_like(q)
    nd = layout.num_decode
    options = dict(sliding_window=sliding_window, softcap=softcap, sinks=sinks)
    if is_fp8(k_cache):
        options.update(k_scale=k_scale, v_scale=v_scale)
    if nd > 0:
        decode_attention(
            q[:nd],
            k_cache,
            v_cache,
            layout.page_table[:nd],
            layout.context_lens[:nd],
            scale,
            num_splits=layout.num_splits,
            out=out[:nd],
            **options,
        )
    if nd < layout.num_requests:
        t0 = layout.num_decode  # decode rows hold one token each
        query_start = layout.cached(
            ("prefill", "query_start"), lambda: layout.query_start[nd:] - layout.query_start[nd]
        )
        prefill_attention(
            q[t0:],
            k_cache,
            v_cache,
            layout.page_table[nd:],
            query_start,
            layout.context_lens[nd:],
            layout.max_query_len,
            scale,
            out=out[t0:],
            key_limit=None if layout.key_limit is None else layout.key_limit[t0:],
            **options,
        )
    return out


def mla_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    rank: int,
    *,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Multi-head latent attention of one decode token per request with absorbed weights:
    q [B, H, rank + rope] (q_nope · W_UK, then the rotary query) over the cached latent
    rows; [B, H, rank] output latents (see `max_kernels.mla_decode`). On CUDA the split-K
    Triton kernel, elsewhere its float32 reference."""
    fn = _mla.mla_decode if use_triton(q) else _mla.mla_decode_reference
    return fn(q, k_cache, v_cache, page_table, context_lens, scale, rank, num_splits=num_splits)


def write_latent_rows(
    rows: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Stores latent cache rows [T, rank + rope] at their slots, split over the layer's two
    cache halves; slots < 0 (padding) are skipped. Capture-safe on CUDA."""
    fn = _mla.write_latent_rows if use_triton(rows) else _mla.write_latent_rows_reference
    fn(rows, k_cache, v_cache, slot_mapping)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of x = [gate | up]."""
    if use_triton(x):
        return _activation.silu_and_mul(x)
    if _cpu_tokens.takes_silu_and_mul(x):  # bfloat16 on an AVX2 CPU: one C call
        return _cpu_tokens.silu_and_mul(x)
    return _activation.silu_and_mul_reference(x)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(gate) * up of x = [gate | up]."""
    fn = _activation.gelu_tanh_and_mul if use_triton(x) else _activation.gelu_tanh_and_mul_reference
    return fn(x)


def moe_route(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    top_k: int,
    *,
    routing: str = _router.SOFTMAX_TOPK,
    renormalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's top-k experts by router logits x @ weight.T (+ bias): (float32 weights
    [T, k], int64 ids [T, k]), by `routing` "softmax_topk" (Qwen3-MoE; `renormalize` is
    its norm_topk_prob) or "topk_softmax" (gpt-oss). On CUDA up to
    `moe_router.ROUTER_MAX_TOKENS` tokens the one-kernel router; elsewhere the torch rule
    (`max_kernels.moe_router.moe_route_reference`), which defines the result."""
    if use_triton(x) and _router.kernel_applies(x, weight, bias, top_k):
        fn = _router.moe_route
    else:
        fn = _router.moe_route_reference
    return fn(x, weight, bias, top_k, routing=routing, renormalize=renormalize)


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
    `limit` are those of the "clamped_swiglu" activation). On CUDA GEMVs over each chosen
    expert's rows up to `moe_gemv.GEMV_MAX_TOKENS` tokens, grouped GEMMs above."""
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


def fused_moe_mxfp4(
    x: torch.Tensor,
    gate_up_blocks: torch.Tensor,
    gate_up_scales: torch.Tensor,
    down_blocks: torch.Tensor,
    down_scales: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    activation: str = "silu",
    b_gate_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
    alpha: float = _moe.SWIGLU_ALPHA,
    limit: float = _moe.SWIGLU_LIMIT,
) -> torch.Tensor:
    """`fused_moe` on experts kept packed in MXFP4 as gpt-oss stores them (uint8 blocks
    [E, rows, K/32, 16] and E8M0 scales [E, rows, K/32]; gate/up rows and bias interleaved,
    row 2j gate and 2j + 1 up of feature j), decoded inside the kernels. Equals `fused_moe`
    on the decoded, de-interleaved weights up to float32 summation order (see
    `max_kernels.mxfp4_moe.fused_moe_mxfp4`)."""
    fn = _mxfp4_moe.fused_moe_mxfp4 if use_triton(x) else _mxfp4_moe.fused_moe_mxfp4_reference
    return fn(
        x,
        gate_up_blocks,
        gate_up_scales,
        down_blocks,
        down_scales,
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


def lora_add(
    y: torch.Tensor,
    x: torch.Tensor,
    lora: _lora_sgmv.LoRAStack,
    token_slots: torch.Tensor,
    groups: _lora_sgmv.LoRAGroups | None,
) -> torch.Tensor:
    """Adds each token's LoRA product into y [T, N] in place and returns y: for token t in
    adapter slot s (int32 `token_slots`, -1: the base model), output slice j = (offset, size)
    of `lora.slices` gets scales[s] * (x[t] @ a[s, jR:(j+1)R].T) @ b[s, offset:offset+size].T,
    with x [T, K] and the weights of `lora`. On CUDA the segmented gather kernels over the
    rows grouped by slot (`groups`, required there): two launches whatever the number of
    slices; elsewhere `lora_reference`, which defines the result."""
    if not use_triton(x):
        v = lora_shrink_reference(x, lora.a, token_slots)
        return lora_expand_reference(y, v, lora.b, lora.scales, token_slots, lora.slices)
    if groups is None:
        raise ValueError("lora_add on CUDA needs the rows grouped by slot (lora_sgmv.group_rows)")
    partials = _lora_sgmv.lora_shrink_sgmv(x, lora.a, groups, lora.b.shape[2])
    return _lora_sgmv.lora_expand_sgmv(y, partials, lora.b, lora.scales, groups, lora.slices)


# Splits of a one-row shrink whose sums the GEMV's epilogue adds (it reads them once per
# program, not in one register block as the expand kernel does: more splits, a shorter shrink).
_GEMV_LORA_SPLITS = 32


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora: _lora_sgmv.LoRAStack,
    token_slots: torch.Tensor,
    groups: _lora_sgmv.LoRAGroups | None,
) -> torch.Tensor:
    """`linear(x, weight, bias)` with each token's LoRA product added, as `lora_add` adds it.
    Where the product is the one-row GEMV (batch-1 decode on CUDA), the GEMV adds the LoRA
    product itself after a shrink launch (`gemv.LoRAEpilogue`); else `linear`, then
    `lora_add`."""
    if groups is not None and _takes_gemv(x, weight):
        partials = _lora_sgmv.lora_shrink_sgmv(x, lora.a, groups, lora.b.shape[2], max_splits=_GEMV_LORA_SPLITS)
        epilogue = _gemv.LoRAEpilogue(partials, lora.b, lora.scales, groups.tiles, tuple(lora.slices))
        return _gemv_call(x, weight, bias, lora=epilogue)
    return lora_add(linear(x, weight, bias), x, lora, token_slots, groups)
