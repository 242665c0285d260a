"""Batched token selection: penalties, temperature, top-k / top-p / min-p, seeded sampling.

All requests of a step are handled with tensor operations over [N, vocab]. Randomness is
counter-based: the noise for request r at output position t and token v is a hash of
(r's seed, t, v), so a seeded request draws the same tokens whatever it is batched with,
on any device, and no per-request generator state has to be kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from max.pipelines.lib.sampling_params import SamplingParams

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


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Float32 in (0, 1) of shape [N, vocab]: a pure function of (seed, step, token)."""
    seeds = seeds.to(torch.int64)
    row = hash32((seeds & _MASK32) ^ hash32((seeds >> 32) & _MASK32))
    row = hash32(row ^ hash32(steps.to(torch.int64) & _MASK32))
    vocab = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)
    h = hash32(row[:, None] ^ hash32(vocab)[None, :])
    return ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))


@dataclass
class SamplingBatch:
    """What the sampler needs to know about the N rows it decides."""

    params: Sequence[SamplingParams]
    seeds: Sequence[int]  # per request, 64-bit
    steps: Sequence[int]  # per request: index of the token being drawn in its output
    prompt_tokens: Sequence[Sequence[int]]
    output_tokens: Sequence[Sequence[int]]


@dataclass
class SamplerOutput:
    """Chosen tokens and, where asked, their log-probabilities and top alternatives."""

    tokens: list[int]
    token_tensor: torch.Tensor | None = None  # the same tokens, on the logits' device
    logprobs: list[float] | None = None
    top_ids: list[list[int]] | None = None
    top_logprobs: list[list[float]] | None = None


def _apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    n, vocab = logits.shape
    device = logits.device
    rep = torch.tensor([p.repetition_penalty for p in batch.params], device=device)
    freq = torch.tensor([p.frequency_penalty for p in batch.params], device=device)
    pres = torch.tensor([p.presence_penalty for p in batch.params], device=device)
    counts = torch.zeros(n, vocab, device=device)
    seen = torch.zeros(n, vocab, dtype=torch.bool, device=device)
    for i, (prompt, out) in enumerate(zip(batch.prompt_tokens, batch.output_tokens)):
        if out:
            ids = torch.tensor(out, device=device)
            counts[i].index_add_(0, ids, torch.ones(len(out), device=device))
        if batch.params[i].repetition_penalty != 1.0 and prompt:
            seen[i, torch.tensor(prompt, device=device)] = True
    seen |= counts > 0
    # Hugging Face's repetition penalty: shrink positive logits, grow negative ones.
    penalized = torch.where(logits > 0, logits / rep[:, None], logits * rep[:, None])
    logits = torch.where(seen, penalized, logits)
    return logits - freq[:, None] * counts - pres[:, None] * (counts > 0).float()


def _filter(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Sets to -inf the logits that top-k, top-p or min-p exclude (per row settings)."""
    n, vocab = logits.shape
    device = logits.device
    top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=device)
    top_p = torch.tensor([p.top_p for p in params], device=device)
    min_p = torch.tensor([p.min_p for p in params], device=device)
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    rank = torch.arange(vocab, device=device)[None, :]
    drop = rank >= top_k[:, None]
    probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least one token).
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop |= mass_before >= top_p[:, None]
    drop |= probs < min_p[:, None] * probs[:, :1]
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
    """Chooses one token per row of `logits` [N, vocab] (float32)."""
    params = batch.params
    n, vocab = logits.shape
    device = logits.device
    want_logprobs = any(p.logprobs is not None for p in params)
    raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
    if any(p.has_penalties for p in params):
        logits = _apply_penalties(logits, batch)
    tokens = torch.argmax(logits, dim=-1)
    sampled_rows = [i for i, p in enumerate(params) if not p.greedy]
    if sampled_rows:
        rows = torch.tensor(sampled_rows, device=device)
        sub_params = [params[i] for i in sampled_rows]
        temps = torch.tensor([p.temperature for p in sub_params], device=device)
        sub = logits[rows] / temps[:, None]
        if any(p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0 for p in sub_params):
            sub = _filter(sub, sub_params)
        noise = uniform_noise(
            torch.tensor([batch.seeds[i] for i in sampled_rows], device=device),
            torch.tensor([batch.steps[i] for i in sampled_rows], device=device),
            vocab,
        )
        # Exponential race: argmax p_v / E_v with E_v ~ Exp(1) draws v with probability p_v.
        scores = torch.log_softmax(sub, dim=-1) - torch.log(-torch.log(noise))
        tokens[rows] = torch.argmax(scores, dim=-1)
    out = SamplerOutput(tokens.tolist(), tokens)
    if raw_logprobs is not None:
        out.logprobs = raw_logprobs.gather(1, tokens[:, None]).squeeze(1).tolist()
        k = max(p.logprobs or 0 for p in params)
        if k > 0:
            top_lp, top_ids = torch.topk(raw_logprobs, k, dim=-1)
            out.top_ids = top_ids.tolist()
            out.top_logprobs = top_lp.tolist()
    return out
