"""Micro-benchmark cases of the paged decode and prefill attention kernels.

Each case times the Triton kernel against the gather-based torch path of `paged_attention`
(forced with the `torch` backend: it copies each request's keys and values out of their
pages, then runs torch's SDPA).
The fewest bytes either must move are the keys and values each request sees, read once,
plus the queries and the output.
"""

from __future__ import annotations

import torch

from max.benchmark.kernels.bench_harness import BenchCase, tensor_bytes
from max_kernels import paged_attention
from max_kernels.backend import backend
from max_kernels.decode_attention import decode_attention, default_num_splits
from max_kernels.prefill_attention import prefill_attention
from max_kernels.ragged_layout import RaggedLayout

_HQ, _HKV, _D = 32, 8, 128  # Llama-3-8B's attention shape
_DTYPE = torch.bfloat16


class _Step:
    """One step's queries, a paged cache holding every request's keys, and its layout."""

    def __init__(self, contexts: list[int], new: list[int], page_size: int) -> None:
        g = torch.Generator(device="cuda").manual_seed(0)
        needed = [-(-c // page_size) for c in contexts]
        num_pages = sum(needed)
        shape = (num_pages, page_size, _HKV, _D)
        self.k_cache = torch.randn(shape, generator=g, device="cuda", dtype=_DTYPE)
        self.v_cache = torch.randn(shape, generator=g, device="cuda", dtype=_DTYPE)
        # Pages of a long-running server are scattered over the pool.
        perm = torch.randperm(num_pages, generator=torch.Generator().manual_seed(0)).int()
        table = torch.zeros(len(contexts), max(needed), dtype=torch.int32)
        first = 0
        for b, n in enumerate(needed):
            table[b, :n] = perm[first : first + n]
            first += n
        self.page_table = table.cuda()
        self.context_lens = torch.tensor(contexts, dtype=torch.int32, device="cuda")
        starts = [0]
        for n in new:
            starts.append(starts[-1] + n)
        self.query_start = torch.tensor(starts, dtype=torch.int32, device="cuda")
        self.q = torch.randn(starts[-1], _HQ, _D, generator=g, device="cuda", dtype=_DTYPE)
        self.out = torch.empty_like(self.q)
        self.contexts = contexts
        self.new = new
        self.layout = RaggedLayout(
            query_start=self.query_start,
            context_lens=self.context_lens,
            page_table=self.page_table,
            slot_mapping=torch.zeros(starts[-1], dtype=torch.int64, device="cuda"),
            page_size=page_size,
            num_decode=len(new) if all(n == 1 for n in new) else 0,
            query_lens=list(new),
            context_lens_host=list(contexts),
        )
        self.scale = _D**-0.5

    def bytes_moved(self) -> int:
        """Keys and values each request sees, read once, plus queries and output."""
        kv = sum(self.contexts) * _HKV * _D * 2 * self.q.element_size()
        return kv + tensor_bytes(self.q, self.out)

    def reference(self) -> torch.Tensor:
        """The gather-based torch path."""
        with backend("torch"):
            return paged_attention(self.q, self.k_cache, self.v_cache, self.layout, self.scale)


def _decode_case(batch: int, context: int, page_size: int) -> BenchCase:
    step = _Step([context] * batch, [1] * batch, page_size)
    splits = default_num_splits(batch, _HKV, max_context=context)

    def triton_fn():
        return decode_attention(
            step.q,
            step.k_cache,
            step.v_cache,
            step.page_table,
            step.context_lens,
            step.scale,
            num_splits=splits,
            out=step.out,
        )

    shape = f"B={batch} ctx={context} Hq={_HQ} Hkv={_HKV} D={_D} page={page_size} splits={splits}"
    return BenchCase("decode_attention", shape, triton_fn, step.reference, step.bytes_moved())


def _prefill_case(batch: int, prompt: int, page_size: int) -> BenchCase:
    step = _Step([prompt] * batch, [prompt] * batch, page_size)

    def triton_fn():
        return prefill_attention(
            step.q,
            step.k_cache,
            step.v_cache,
            step.page_table,
            step.query_start,
            step.context_lens,
            prompt,
            step.scale,
            out=step.out,
        )

    shape = f"B={batch} prompt={prompt} Hq={_HQ} Hkv={_HKV} D={_D} page={page_size}"
    return BenchCase("prefill_attention", shape, triton_fn, step.reference, step.bytes_moved())


def bench_cases() -> list[BenchCase]:
    """Decode at long, batched and wide shapes, and a batch of 2k-token prompts (bf16)."""
    return [
        _decode_case(1, 32768, 128),
        _decode_case(1, 32768, 16),
        _decode_case(64, 4096, 128),
        _decode_case(64, 4096, 16),
        _decode_case(256, 1024, 16),
        _prefill_case(8, 2048, 128),
    ]
