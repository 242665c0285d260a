"""Token selection on the device: penalties, then greedy or a seeded draw after the filters.

The semantics are those of the batched sampler (`max.pipelines.lib.sampling.sampler`), row by row:
greedy rows (temperature 0, or top_k 1) take the argmax of the logits; the others divide by
the temperature, keep the top-k tokens, then the smallest prefix of the sorted probabilities
whose mass reaches top_p (at least one token), then drop tokens whose probability is below
min_p times the largest, and draw by an exponential race: the argmax over kept tokens of
`log p_v - log(-log(u_v))`, where u_v is counter-based noise, a pure function of (seed, step,
token). A seeded request thus draws the same token wherever it is batched and on any device.

The Triton kernels never synchronise with the host, so a decode step that ends with them can
be captured in a CUDA graph. `sample_tokens` runs one program per row that streams the row in
blocks: the top-k and top-p cutoffs are found exactly by a 16-way search over the integer
keys that order float32 values (8 passes each, counting tokens or summing probability above
16 candidate thresholds per pass); a row without filters is one pass. The race skips the
log-sum-exp of `log p_v`: it shifts every score of a row equally and cannot move the argmax.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Triton kernels name their sizes and compile-time constants in capitals.
# ruff: noqa: N803

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for x in [0, 2**32), without int64 overflow."""
    lo = x * (constant & 0xFFFF)
    hi = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A well-mixed 32-bit hash of int64 values in [0, 2**32) ("lowbias32")."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


_U_MAX = 1.0 - 2.0**-24  # the largest float32 below 1


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Float32 in (0, 1) of shape [N, vocab]: a pure function of (seed, step, token)."""
    seeds = seeds.to(torch.int64)
    row = hash32((seeds & _MASK32) ^ hash32((seeds >> 32) & _MASK32))
    row = hash32(row ^ hash32(steps.to(torch.int64) & _MASK32))
    vocab = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)
    h = hash32(row[:, None] ^ hash32(vocab)[None, :])
    # The top bucket's midpoint (2**24 - 0.5) rounds to 2**24 in float32, which would make
    # u == 1 and -log(-log(u)) = +inf: that token would win whatever its logit (NaN for a
    # -inf one, which argmax takes too). Clamping changes only that value.
    return torch.clamp(((h >> 8).float() + 0.5) * (1.0 / (1 << 24)), max=_U_MAX)


# ----------------------------------------------------------------------------- references


def apply_penalties_reference(
    logits: torch.Tensor,
    prompt_ids: torch.Tensor,
    output_ids: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """Repetition (Hugging Face's), frequency and presence (OpenAI's) penalties per row.

    Args:
        logits: float32 [N, V].
        prompt_ids, output_ids: int64 [N, L] token ids, padded with -1.
        repetition, frequency, presence: float32 [N].

    Returns:
        New float32 [N, V] logits. Tokens seen in the prompt or the output have positive
        logits divided by `repetition` and negative ones multiplied by it; then each token
        loses `frequency` per occurrence in the output and `presence` once if it occurs.
    """
    n, vocab = logits.shape
    # Padding (-1) lands in an extra column that is cut off afterwards.
    out_ids = torch.where(output_ids >= 0, output_ids, vocab).long()
    counts = torch.zeros(n, vocab + 1, device=logits.device)
    counts.scatter_add_(1, out_ids, torch.ones(out_ids.shape, device=logits.device))
    counts = counts[:, :vocab]
    prompt = torch.where(prompt_ids >= 0, prompt_ids, vocab).long()
    seen = torch.zeros(n, vocab + 1, dtype=torch.bool, device=logits.device)
    seen.scatter_(1, prompt, True)
    seen = seen[:, :vocab] | (counts > 0)
    rep = repetition[:, None]
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalized, logits)
    return logits - frequency[:, None] * counts - presence[:, None] * (counts > 0).float()


def sample_tokens_reference(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    steps: torch.Tensor,
) -> torch.Tensor:
    """One token per row of float32 logits [N, V], as the batched sampler draws it.

    Args:
        logits: float32 [N, V] (penalties already applied).
        temperature: float32 [N]; 0 means greedy.
        top_k: int [N]; <= 0 turns it off (1 is greedy).
        top_p: float32 [N]; 1.0 turns it off.
        min_p: float32 [N]; 0 turns it off.
        seeds: int64 [N], the requests' 64-bit seeds.
        steps: int64 [N], the index of the token being drawn in each request's output.

    Returns:
        int64 [N] token ids.
    """
    n, vocab = logits.shape
    greedy = (temperature == 0) | (top_k == 1)
    tokens = torch.argmax(logits, dim=-1)
    # Greedy rows are computed too (at temperature 1) and discarded, so that no row subset
    # has to be taken with a data-dependent shape.
    temps = torch.where(greedy, torch.ones_like(temperature), temperature)
    sub = logits / temps[:, None]
    wants_filter = (top_k > 0) | (top_p < 1.0) | (min_p > 0.0)
    # On the CPU, asking the host costs nothing and spares the sort when no row filters.
    if logits.is_cuda or bool(wants_filter.any()):
        sub = _filter_reference(sub, top_k, top_p, min_p)
    noise = uniform_noise(seeds, steps, vocab)
    scores = torch.log_softmax(sub, dim=-1) - torch.log(-torch.log(noise))
    return torch.where(greedy, tokens, torch.argmax(scores, dim=-1))


def _filter_reference(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """Sets to -inf the logits that top-k, top-p or min-p exclude (per-row settings)."""
    n, vocab = logits.shape
    k = torch.where(top_k > 0, top_k.long(), vocab)
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    rank = torch.arange(vocab, device=logits.device)[None, :]
    drop = rank >= k[:, None]
    probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least one token). A row
    # with top_p == 1 keeps everything even where the float32 cumsum overshoots 1.
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop |= (mass_before >= top_p[:, None]) & (top_p[:, None] < 1.0)
    drop |= probs < min_p[:, None] * probs[:, :1]
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


# ----------------------------------------------------------------------------- Triton

_INT32_MIN = tl.constexpr(-(2**31))
_INT32_MAX = tl.constexpr(2**31 - 1)

# Scan block of the streaming passes, and of the threshold-search passes, which compare each
# logit with _NUM_CANDIDATES thresholds at once ([block, candidates] in registers).
_BLOCK = 4096
_SEARCH_BLOCK = 1024
_NUM_CANDIDATES = 16
_LOG_CANDIDATES = 4
# Each search pass narrows the key interval 16-fold: 8 passes resolve 32-bit keys exactly.
_SEARCH_PASSES = 8


@triton.jit
def _hash32(x):
    # lowbias32 on uint32 values; the products wrap mod 2**32 as `hash32` computes them.
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _ordered_key(v):
    # int32 whose signed order is the float order (negative floats have their magnitude
    # bits flipped), so that cutoffs are searched exactly over integers.
    bits = v.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _sample_kernel(
    logits_ptr,
    stride_row,
    V,
    temperature_ptr,
    top_k_ptr,
    top_p_ptr,
    min_p_ptr,
    seeds_ptr,
    steps_ptr,
    out_ptr,
    BLOCK: tl.constexpr,
    SEARCH_BLOCK: tl.constexpr,
    NCAND: tl.constexpr,
    LOG_NCAND: tl.constexpr,
    SEARCH_PASSES: tl.constexpr,
):
    row = tl.program_id(0)
    base = logits_ptr + row.to(tl.int64) * stride_row
    temp = tl.load(temperature_ptr + row)
    k = tl.load(top_k_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    min_p = tl.load(min_p_ptr + row)
    seed = tl.load(seeds_ptr + row)
    step = tl.load(steps_ptr + row)

    sampled = (temp != 0.0) & (k != 1)
    greedy = (temp == 0.0) | (k == 1)
    use_k = (k > 0) & (k < V) & sampled
    use_p = (top_p < 1.0) & sampled
    use_min_p = (min_p > 0.0) & sampled
    filtered = use_k | use_p | use_min_p
    # Scaled logits use IEEE division (Triton's `/` is div.full.f32, up to 2 ulp off), so
    # they, and the keys searched below, are torch's `logits / temperature` bit for bit.
    t = tl.where(greedy, 1.0, temp)

    offs = tl.arange(0, BLOCK)
    best_val = tl.full([BLOCK], float("-inf"), tl.float32)
    best_idx = offs

    # Data-dependent trip counts (0 or a full scan) select each row's passes without
    # branching: only the passes a row needs read its logits.
    greedy_end = tl.where(greedy, V, 0)
    for start in range(0, greedy_end, BLOCK):
        idx = start + offs
        x = tl.load(base + idx, mask=idx < V, other=float("-inf"))
        better = x > best_val
        best_val = tl.where(better, x, best_val)
        best_idx = tl.where(better, idx, best_idx)

    # Filtered rows: the largest scaled logit and the range of keys.
    vmax = tl.full([BLOCK], float("-inf"), tl.float32)
    kmin = tl.full([BLOCK], _INT32_MAX, tl.int32)
    kmax = tl.full([BLOCK], _INT32_MIN, tl.int32)
    stats_end = tl.where(filtered, V, 0)
    for start in range(0, stats_end, BLOCK):
        idx = start + offs
        mask = idx < V
        s = tl.math.div_rn(tl.load(base + idx, mask=mask, other=0.0), t)
        key = _ordered_key(s)
        vmax = tl.maximum(vmax, tl.where(mask, s, float("-inf")))
        kmin = tl.minimum(kmin, tl.where(mask, key, _INT32_MAX))
        kmax = tl.maximum(kmax, tl.where(mask, key, _INT32_MIN))
    m = tl.max(vmax, axis=0)
    key_min = tl.min(kmin, axis=0).to(tl.int64)
    key_max = tl.max(kmax, axis=0).to(tl.int64)

    soffs = tl.arange(0, SEARCH_BLOCK)
    j = tl.arange(0, NCAND).to(tl.int64)

    # Top-k: the largest key c with count(key >= c) >= k. Invariant: count(key >= lo) >= k
    # and count(key >= hi) < k.
    lo = key_min
    hi = key_max + 1
    k_passes = tl.where(use_k, SEARCH_PASSES, 0)
    for _ in range(0, k_passes):
        cand = lo + (((hi - lo) * j) >> LOG_NCAND)
        cand32 = cand.to(tl.int32)
        count = tl.zeros([NCAND], dtype=tl.int32)
        for start in range(0, V, SEARCH_BLOCK):
            idx = start + soffs
            mask = idx < V
            s = tl.math.div_rn(tl.load(base + idx, mask=mask, other=0.0), t)
            key = _ordered_key(s)
            ge = (key[:, None] >= cand32[None, :]) & mask[:, None]
            count += tl.sum(ge.to(tl.int32), axis=0)
        ok = count >= k
        lo = tl.max(tl.where(ok, cand, lo), axis=0)
        hi = tl.min(tl.where(ok, hi, cand), axis=0)
    k_cut = tl.where(use_k, lo, _INT32_MIN).to(tl.int32)

    # Top-p: a token is kept while the probability mass strictly above it (within the top-k)
    # is below top_p; find the smallest kept key. Invariant: lo is dropped, hi is kept.
    lo = tl.maximum(k_cut.to(tl.int64) - 1, _INT32_MIN)
    hi = key_max
    p_passes = tl.where(use_p, SEARCH_PASSES, 0)
    for _ in range(0, p_passes):
        cand = lo + (((hi - lo) * j) >> LOG_NCAND)
        cand32 = cand.to(tl.int32)
        above = tl.zeros([NCAND], dtype=tl.float32)
        total = tl.zeros([SEARCH_BLOCK], dtype=tl.float32)
        for start in range(0, V, SEARCH_BLOCK):
            idx = start + soffs
            mask = idx < V
            s = tl.math.div_rn(tl.load(base + idx, mask=mask, other=0.0), t)
            key = _ordered_key(s)
            e = tl.where(mask & (key >= k_cut), tl.exp(s - m), 0.0)
            total += e
            above += tl.sum(tl.where(key[:, None] > cand32[None, :], e[:, None], 0.0), axis=0)
        dropped = above >= top_p * tl.sum(total, axis=0)
        lo = tl.max(tl.where(dropped, cand, lo), axis=0)
        hi = tl.min(tl.where(dropped, hi, cand), axis=0)
    p_cut = tl.where(use_p, hi, _INT32_MIN).to(tl.int32)

    # Min-p: p_v >= min_p * p_max  <=>  s_v >= m + log(min_p); -inf keeps every token.
    min_p_cut = tl.where(use_min_p, m + tl.log(tl.maximum(min_p, 1e-30)), float("-inf"))

    # The exponential race over the kept tokens.
    row_hash = _hash32(seed.to(tl.uint32) ^ _hash32((seed >> 32).to(tl.uint32)))
    row_hash = _hash32(row_hash ^ _hash32(step.to(tl.uint32)))
    race_end = tl.where(greedy, 0, V)
    for start in range(0, race_end, BLOCK):
        idx = start + offs
        mask = idx < V
        s = tl.math.div_rn(tl.load(base + idx, mask=mask, other=0.0), t)
        key = _ordered_key(s)
        keep = mask & (key >= k_cut) & (key >= p_cut) & (s >= min_p_cut)
        h = _hash32(row_hash ^ _hash32(idx.to(tl.uint32)))
        u = tl.minimum(((h >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0), 0.99999994)  # _U_MAX
        score = tl.where(keep, s - tl.log(-tl.log(u)), float("-inf"))
        better = score > best_val
        best_val = tl.where(better, score, best_val)
        best_idx = tl.where(better, idx, best_idx)

    # First index of the maximum, as torch.argmax picks it (lanes hold their first best).
    best = tl.max(best_val, axis=0)
    token = tl.min(tl.where(best_val == best, best_idx, _INT32_MAX), axis=0)
    tl.store(out_ptr + row, token.to(tl.int64))


def sample_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    steps: torch.Tensor,
) -> torch.Tensor:
    """Triton `sample_tokens_reference`: one token per row, without host synchronisation."""
    return _launch_sample(
        logits, temperature, top_k, top_p, min_p, seeds, steps, _BLOCK, _SEARCH_BLOCK
    )


def _launch_sample(logits, temperature, top_k, top_p, min_p, seeds, steps, block, search_block):
    n, vocab = logits.shape
    # The kernel works on float32 rows with a unit stride (the sampler's logits already are).
    logits = logits.float()
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    out = torch.empty(n, dtype=torch.int64, device=logits.device)
    if n == 0:
        return out
    _sample_kernel[(n,)](
        logits,
        logits.stride(0),
        vocab,
        temperature.to(torch.float32).contiguous(),
        top_k.to(torch.int32).contiguous(),
        top_p.to(torch.float32).contiguous(),
        min_p.to(torch.float32).contiguous(),
        seeds.to(torch.int64).contiguous(),
        steps.to(torch.int64).contiguous(),
        out,
        BLOCK=block,
        SEARCH_BLOCK=search_block,
        NCAND=_NUM_CANDIDATES,
        LOG_NCAND=_LOG_CANDIDATES,
        SEARCH_PASSES=_SEARCH_PASSES,
        num_warps=8,
    )
    return out


@triton.jit
def _count_tokens_kernel(
    prompt_ptr,
    output_ptr,
    marks_ptr,
    repetition_ptr,
    stride_prompt,
    stride_output,
    Lp,
    Lo,
    V,
    BLOCK_L: tl.constexpr,
):
    # marks[row, v] = 2 * (occurrences of v in the output) + (1 if v is in the prompt).
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    marks = marks_ptr + row.to(tl.int64) * V
    # With repetition 1 the prompt changes nothing: skip its scatter (a prompt of length 0).
    rep = tl.load(repetition_ptr + row)
    prompt_len = tl.where(rep != 1.0, Lp, 0)
    ids = tl.load(
        prompt_ptr + row.to(tl.int64) * stride_prompt + offs, mask=offs < prompt_len, other=-1
    )
    ok = (ids >= 0) & (ids < V)
    tl.atomic_or(marks + ids, 1, mask=ok)
    ids = tl.load(output_ptr + row.to(tl.int64) * stride_output + offs, mask=offs < Lo, other=-1)
    ok = (ids >= 0) & (ids < V)
    tl.atomic_add(marks + ids, 2, mask=ok)


@triton.jit
def _penalize_kernel(
    logits_ptr,
    marks_ptr,
    out_ptr,
    repetition_ptr,
    frequency_ptr,
    presence_ptr,
    stride_logits,
    stride_out,
    V,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < V
    row64 = row.to(tl.int64)
    x = tl.load(logits_ptr + row64 * stride_logits + offs, mask=mask, other=0.0)
    marks = tl.load(marks_ptr + row64 * V + offs, mask=mask, other=0)
    rep = tl.load(repetition_ptr + row)
    freq = tl.load(frequency_ptr + row)
    pres = tl.load(presence_ptr + row)
    count = (marks >> 1).to(tl.float32)
    # IEEE division and no fused multiply-add (see the launch): the reference's rounding.
    penalized = tl.where(x > 0, tl.math.div_rn(x, rep), x * rep)
    x = tl.where(marks != 0, penalized, x)
    y = x - freq * count - pres * (count > 0).to(tl.float32)
    tl.store(out_ptr + row64 * stride_out + offs, y, mask=mask)


def apply_penalties(
    logits: torch.Tensor,
    prompt_ids: torch.Tensor,
    output_ids: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """Triton `apply_penalties_reference`: a scatter of token counts, then one elementwise pass."""
    n, vocab = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    prompt_ids = prompt_ids if prompt_ids.stride(-1) == 1 else prompt_ids.contiguous()
    output_ids = output_ids if output_ids.stride(-1) == 1 else output_ids.contiguous()
    out = torch.empty_like(logits)
    if n == 0 or vocab == 0:
        return out
    repetition = repetition.to(torch.float32).contiguous()
    frequency = frequency.to(torch.float32).contiguous()
    presence = presence.to(torch.float32).contiguous()
    marks = torch.zeros(n, vocab, dtype=torch.int32, device=logits.device)
    lp, lo = prompt_ids.shape[1], output_ids.shape[1]
    block_l = 256
    if max(lp, lo) > 0:
        _count_tokens_kernel[(n, triton.cdiv(max(lp, lo), block_l))](
            prompt_ids,
            output_ids,
            marks,
            repetition,
            prompt_ids.stride(0),
            output_ids.stride(0),
            lp,
            lo,
            vocab,
            BLOCK_L=block_l,
        )
    block = 1024
    # No fused multiply-add, so that `x - f * c` rounds as the reference's separate ops do.
    _penalize_kernel[(n, triton.cdiv(vocab, block))](
        logits,
        marks,
        out,
        repetition,
        frequency,
        presence,
        logits.stride(0),
        out.stride(0),
        vocab,
        BLOCK=block,
        enable_fp_fusion=False,
    )
    return out
