"""Batched token selection: penalties, temperature, top-k / top-p / min-p, seeded sampling.

All requests of a step are decided together on the logits' device (on a GPU by the
kernel library's Triton sampler, on the CPU by its torch reference): `sample_on_device`
queues the work and returns device tensors without synchronising the host, and
`SampledTokens.to_host` reads them back. Randomness is counter-based: the noise for request r
at output position t and token v is a hash of (r's seed, t, v), so a seeded request draws
the same tokens whatever it is batched with, on any device, and no per-request generator
state has to be kept. Constrained rows (structured outputs) have their token bitmask applied
first; the other rows' logits are used as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from max.pipelines.lib.runner.device_transfer import HostCopy, upload
from max.pipelines.lib.sampling.sampling_params import SamplingParams
from max.pipelines.lib.sampling.structured_output import apply_token_bitmask
from max_kernels import apply_penalties, argmax_rows, sample_tokens
from max_kernels.sampling import hash32, uniform_noise

__all__ = ["SampledTokens", "SamplerOutput", "SamplingBatch", "hash32", "sample", "sample_on_device", "uniform_noise"]


@dataclass
class SamplingBatch:
    """What the sampler needs to know about the N rows it decides."""

    params: Sequence[SamplingParams]
    seeds: Sequence[int]  # per request, 64-bit
    steps: Sequence[int]  # per request: index of the token being drawn in its output
    prompt_tokens: Sequence[Sequence[int]]
    output_tokens: Sequence[Sequence[int]]
    # Constrained decoding: int32 [len(bitmask_rows), words] token masks (on the host) of
    # the rows listed; the other rows are not touched.
    token_bitmask: torch.Tensor | None = None
    bitmask_rows: Sequence[int] = ()


@dataclass
class SamplerOutput:
    """Chosen tokens and, where asked, their log-probabilities and top alternatives."""

    tokens: list[int]
    token_tensor: torch.Tensor | None = None  # the same tokens, on the logits' device
    logprobs: list[float] | None = None
    top_ids: list[list[int]] | None = None
    top_logprobs: list[list[float]] | None = None


@dataclass
class SampledTokens:
    """A step's draws, still on the device; `to_host` reads them (one synchronisation)."""

    tokens: torch.Tensor  # int64 [N]
    logprobs: torch.Tensor | None = None  # float32 [N]
    top_ids: torch.Tensor | None = None  # int64 [N, k]
    top_logprobs: torch.Tensor | None = None  # float32 [N, k]
    _copy: HostCopy | None = None

    def start_copy(self) -> None:
        """Starts copying the results to the host, behind the kernels that compute them."""
        if self._copy is None:
            self._copy = HostCopy([self.tokens, self.logprobs, self.top_ids, self.top_logprobs])

    def to_host(self) -> SamplerOutput:
        """The results as Python lists (waits for the device)."""
        self.start_copy()
        tokens, logprobs, top_ids, top_logprobs = self._copy.wait()
        return SamplerOutput(
            tokens.tolist(),
            self.tokens,
            logprobs.tolist() if logprobs is not None else None,
            top_ids.tolist() if top_ids is not None else None,
            top_logprobs.tolist() if top_logprobs is not None else None,
        )


def _padded(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """int64 [N, L] of the rows, padded with -1."""
    width = max([1, *(len(r) for r in rows)])
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _penalized(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    params = batch.params
    device = logits.device
    rep = [p.repetition_penalty for p in params]
    # The prompt only matters to the repetition penalty.
    prompts = [prompt if p.repetition_penalty != 1.0 else () for p, prompt in zip(params, batch.prompt_tokens)]
    factors = upload(
        np.array([rep, [p.frequency_penalty for p in params], [p.presence_penalty for p in params]], dtype=np.float32),
        device,
    )
    return apply_penalties(
        logits,
        upload(_padded(prompts), device),
        upload(_padded(batch.output_tokens), device),
        factors[0],
        factors[1],
        factors[2],
    )


def _biased(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """`logits` with each request's logit_bias added (rows without one stay as they were)."""
    rows, cols, values = [], [], []
    for r, p in enumerate(params):
        for token, bias in (p.logit_bias or {}).items():
            rows.append(r)
            cols.append(token)
            values.append(bias)
    index = upload(np.array([rows, cols], dtype=np.int64), logits.device)
    bias = upload(np.array(values, dtype=np.float32), logits.device)
    return logits.index_put((index[0], index[1]), bias, accumulate=True)


def sample_on_device(logits: torch.Tensor, batch: SamplingBatch) -> SampledTokens:
    """Chooses one token per row of `logits` [N, vocab] (float32); nothing waits for the
    device."""
    params = batch.params
    device = logits.device
    want_logprobs = any(p.logprobs is not None for p in params)
    raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
    if batch.token_bitmask is not None:  # logprobs stay the model's, as vLLM reports them
        logits = apply_token_bitmask(logits, batch.token_bitmask, batch.bitmask_rows)
    if any(p.has_penalties for p in params):
        logits = _penalized(logits, batch)
    if any(p.logit_bias for p in params):
        logits = _biased(logits, params)
    if all(p.greedy for p in params):
        tokens = argmax_rows(logits)
    else:
        floats = np.array(
            [
                [0.0 if p.greedy else p.temperature for p in params],
                [p.top_p for p in params],
                [p.min_p for p in params],
            ],
            dtype=np.float32,
        )
        ints = np.array(
            [[p.top_k for p in params], [int(s) for s in batch.seeds], list(batch.steps)], dtype=np.int64
        )
        f, i = upload(floats, device), upload(ints, device)
        tokens = sample_tokens(logits, f[0], i[0].to(torch.int32), f[1], f[2], i[1], i[2])
    out = SampledTokens(tokens)
    if raw_logprobs is not None:
        out.logprobs = raw_logprobs.gather(1, tokens[:, None]).squeeze(1)
        k = max(p.logprobs or 0 for p in params)
        if k > 0:
            out.top_logprobs, out.top_ids = torch.topk(raw_logprobs, k, dim=-1)
    return out


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
    """Chooses one token per row of `logits` [N, vocab] (float32) and reads the choice."""
    return sample_on_device(logits, batch).to_host()
