"""CUDA graphs for speculative decoding's verify steps, bucketed by batch size and draft count.

A verify step runs, for each speculating request, its last token and its k drafts: 1 + k
query rows after the request's cached context, with logits at every one of them. Run
eagerly, an 8B step of that shape is ~30 ms of Python and kernel launches against ~6 ms of
GPU work, so speculation could not beat plain decoding (whose steps replay graphs).

`VerifyGraphs` captures the model's forward once per (batch bucket B, draft bucket K) over
persistent buffers of B * (1 + K) token rows. Every request of the graph goes through the
ragged prefill attention kernel with a grid of 1 + K query rows per request; the kernel
reads each request's real first row, length and context length from the device
(`query_start`, `context_lens`), so one graph serves every context length and any mix of
draft counts up to K: a step's requests are packed as they come (a request with fewer
drafts, or none, takes fewer rows), and what is left is padding.
- Padding rows (past the step's tokens) write no KV (slot -1) and belong to no request;
  their outputs are computed and never read.
- Padding requests (past the step's requests) start at the step's last row with no rows
  and no keys (context 0).
- The logits rows are the step's own `logits_indices` (row 0 for the padding entries), so
  the graph returns the step's logits in the order an eager step would.
Steps with images or LoRA adapters, and larger steps, run eagerly. This is the runner's
part (`ModelRunner` delegates to it), beside its decode and prefill graphs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from max.kv_cache import PagedKVCache
from max.pipelines.lib.model.pipeline_model import PipelineModel
from max.pipelines.lib.runner.input_batch import ModelInputs
from max_kernels import RaggedLayout

logger = logging.getLogger("max.pipelines")

# Batches up to this many requests get verify graphs: beyond it a verify step's products
# take long enough that launching them from Python costs little in comparison.
MAX_VERIFY_GRAPH_BATCH = 32


class Replayable(Protocol):
    """A captured step (`torch.cuda.CUDAGraph`, or a test's eager stand-in)."""

    def replay(self) -> None:
        """Runs the captured step again over the current contents of its buffers."""
        ...


# record(layout, args, out): captures the network's forward over `args` (tokens, positions,
# logits rows) in the step `layout()` describes, writing its logits into `out`.
Recorder = Callable[[Callable[[], RaggedLayout], tuple, torch.Tensor], Replayable]


def draft_buckets(max_drafts: int) -> list[int]:
    """Draft counts that get graphs: powers of two below `max_drafts`, then `max_drafts`."""
    sizes, k = [], 1
    while k < max_drafts:
        sizes.append(k)
        k *= 2
    return sizes + ([max_drafts] if max_drafts > 0 else [])


def verify_graph_shapes(max_drafts: int, max_batch_size: int, max_tokens: int) -> list[tuple[int, int]]:
    """(batch bucket, draft bucket) pairs to capture: batches 1, 2, 4, 8, ... up to
    `max_batch_size` (at most `MAX_VERIFY_GRAPH_BATCH`), each with every draft bucket whose
    rows fit in a step's token budget `max_tokens`."""
    cap = min(max_batch_size, MAX_VERIFY_GRAPH_BATCH)
    batches = [b for b in (1, 2, 4, 8, 16) if b < cap] + ([cap] if cap > 0 else [])
    return [(b, k) for b in batches for k in draft_buckets(max_drafts) if b * (1 + k) <= max_tokens]


def verify_logits_rows(shapes: list[tuple[int, int]]) -> int:
    """Rows of the shared logits buffer that graphs of `shapes` need (0 for none)."""
    return max((b * (1 + k) for b, k in shapes), default=0)


@dataclass
class _Bucket:
    """One captured verify step: `batch` requests of up to 1 + `drafts` rows each."""

    batch: int
    drafts: int
    graph: Replayable

    @property
    def rows(self) -> int:
        return self.batch * (1 + self.drafts)


class VerifyGraphs:
    """The verify steps' graphs and their persistent buffers (see the module docstring).
    Empty (every step eager) until `capture` runs."""

    def __init__(self, model: PipelineModel, kv_cache: PagedKVCache) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self._buckets: list[_Bucket] = []  # by rows, smallest first
        self.num_replays = 0

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(batch, drafts) of the captured graphs."""
        return [(g.batch, g.drafts) for g in self._buckets]

    def clear(self) -> None:
        """Drops the graphs (the caller has synchronised the device)."""
        self._buckets = []

    # -- capture -------------------------------------------------------------------------
    def capture(self, shapes: list[tuple[int, int]], record: Recorder) -> None:
        """Captures a graph for each (batch, drafts) of `shapes` with `record`; on failure
        (an architecture whose forward cannot be captured) verify steps stay eager."""
        if not shapes:
            return
        start = time.perf_counter()
        model, device = self.model, self.model.device
        rows = verify_logits_rows(shapes)
        batch = max(b for b, _ in shapes)
        width = self.kv_cache.params.pages_for_tokens(model.max_seq_len)
        self._tokens = torch.zeros(rows, dtype=torch.int64, device=device)
        self._positions = torch.zeros(rows, dtype=torch.int64, device=device)
        self._slots = torch.full((rows,), -1, dtype=torch.int64, device=device)
        self._logits_index = torch.zeros(rows, dtype=torch.int64, device=device)
        self._query_start = torch.zeros(batch + 1, dtype=torch.int32, device=device)
        self._context_lens = torch.zeros(batch, dtype=torch.int32, device=device)
        self._page_table = torch.zeros(batch, width, dtype=torch.int32, device=device)
        # One logits buffer for every graph (as the decode graphs share theirs).
        self._logits = torch.empty(rows, model.model_config.vocab_size, dtype=torch.float32, device=device)
        buckets = []
        try:
            # Largest first: the smaller graphs then fit in the memory the first one took.
            for b, k in sorted(shapes, key=lambda s: -s[0] * (1 + s[1])):
                n = b * (1 + k)
                # Capture-time inputs: every request full (1 + k rows, no earlier context).
                self._query_start[: b + 1].copy_(torch.arange(0, n + 1, 1 + k, dtype=torch.int32, device=device))
                self._context_lens[:b].fill_(1 + k)
                self._logits_index[:n].copy_(torch.arange(n, device=device))
                args = (self._tokens[:n], self._positions[:n], self._logits_index[:n])
                graph = record(lambda b=b, k=k: self._layout(b, k), args, self._logits[:n])
                buckets.append(_Bucket(b, k, graph))
        except Exception as e:
            logger.warning("verify steps run eagerly: capturing them failed (%s: %s)", type(e).__name__, e)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return
        self._buckets = sorted(buckets, key=lambda g: (g.rows, g.batch))
        logger.info(
            "captured CUDA graphs for verify steps of (batch, drafts) %s in %.1f s",
            ", ".join(f"({b}, {k})" for b, k in self.shapes),
            time.perf_counter() - start,
        )

    def _layout(self, batch: int, drafts: int) -> RaggedLayout:
        """The layout a graph of `batch` requests of up to 1 + `drafts` rows reads: every
        request through the prefill kernel, lengths on the device only."""
        n = batch * (1 + drafts)
        return RaggedLayout(
            query_start=self._query_start[: batch + 1],
            context_lens=self._context_lens[:batch],
            page_table=self._page_table[:batch],
            slot_mapping=self._slots[:n],
            page_size=self.kv_cache.page_size,
            num_decode=0,
            # The grid covers 1 + drafts rows per request; the kernel reads the real ones.
            query_lens=[1 + drafts] * batch,
            context_lens_host=None,
        )

    # -- replay --------------------------------------------------------------------------
    def bucket_for(self, inputs: ModelInputs) -> _Bucket | None:
        """The smallest graph that can run `inputs`, or None: the step must have a request
        of several rows (one-row steps are decode graphs' business), none longer than the
        largest draft bucket allows, no images and no LoRA rows."""
        if not self._buckets or inputs.has_images or inputs.lora is not None:
            return None
        layout = inputs.layout
        b, longest = layout.num_requests, layout.max_query_len
        if longest <= 1:
            return None
        return next((g for g in self._buckets if g.batch >= b and g.drafts + 1 >= longest), None)

    def replay(self, inputs: ModelInputs) -> torch.Tensor:
        """Float32 logits [N, vocab] of the step (a view of the shared buffer: valid until
        the next step), N being `inputs.logits_indices`' length."""
        entry = self.bucket_for(inputs)
        if entry is None:
            raise ValueError("no verify graph fits this step (check bucket_for first)")
        layout = inputs.layout
        b, t, n = layout.num_requests, layout.num_tokens, inputs.logits_indices.shape[0]
        self._tokens[:t].copy_(inputs.tokens)
        self._positions[:t].copy_(inputs.positions)
        self._slots[:t].copy_(layout.slot_mapping)
        self._slots[t : entry.rows].fill_(-1)  # padding rows write no KV
        self._query_start[: b + 1].copy_(layout.query_start)
        self._query_start[b + 1 : entry.batch + 1].fill_(t)  # padding requests: no rows
        self._context_lens[:b].copy_(layout.context_lens)
        self._context_lens[b : entry.batch].zero_()  # ... and no keys
        width = layout.page_table.shape[1]
        self._page_table[:b, :width].copy_(layout.page_table)
        self._logits_index[:n].copy_(inputs.logits_indices)
        self._logits_index[n : entry.rows].zero_()
        entry.graph.replay()
        self.num_replays += 1
        return self._logits[:n]
