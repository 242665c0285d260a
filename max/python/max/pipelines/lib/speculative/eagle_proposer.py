"""The EAGLE / EAGLE-3 proposer: a draft head over the target's own features.

The head at position p reads the target's features there (g_p: EAGLE-3's three layers
fused, or EAGLE's last hidden state) and the token at p + 1, and predicts the token at
p + 2. So for a sequence of N known tokens it needs the target's features at positions
0..N-2 (the last token has not run through the target yet): the engine hands them over
after every target step (`add_target_features`, taken from a `TargetFeatureTap`). On
`propose` the head catches up on the positions it has not run with target features (its
own paged KV cache, one layer per head layer), the last of which gives draft 1; each
further draft feeds the head its own output and the drafted token (positions past N-2,
which the next call runs again with the target's features once it has them).

A sequence whose features are missing (the target has not run it since the head's cache
diverged) gets no drafts: never a wrong one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from max.kv_cache import PagedKVCache
from max.nn import step_context
from max.pipelines.lib.engine.request import Request
from max.pipelines.lib.engine.scheduler import ScheduledChunk
from max.pipelines.lib.runner.input_batch import EncoderOutputs, InputBatchBuilder, ModelInputs
from max.pipelines.lib.sampling.sampling_params import SamplingParams
from max.pipelines.lib.speculative.draft_model import DraftRow, common_prefix_length, read_back
from max.pipelines.lib.speculative.eagle_features import TargetFeatureTap
from max.pipelines.lib.speculative.proposer import DraftSequence
from max_kernels import argmax_rows


class _HeadSteps:
    """What the input builder needs of the head: its device, and text-only positions."""

    lora = None

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def rotary_positions(self, batch: Sequence[ScheduledChunk], cache_index: np.ndarray) -> np.ndarray:
        return cache_index

    def encoder_outputs(self, batch: Sequence[ScheduledChunk]) -> EncoderOutputs | None:
        return None


@dataclass
class _Features:
    """A request's target features for positions start.. (rows of `values`)."""

    start: int
    values: torch.Tensor

    @property
    def stop(self) -> int:
        return self.start + self.values.shape[0]


class EagleProposer:
    """A `DraftProposer` backed by an `Eagle3Head` or `EagleHead` (see the module docstring).

    `kv_cache` is the head's own (one layer per head layer); `lm_head` turns EAGLE's
    output into logits (the target's head; None for EAGLE-3, which has its own);
    `max_seq_len` caps the positions drafted; `tap` (installed on the target) is where
    `observe_step` reads a step's features.
    """

    def __init__(
        self,
        head: nn.Module,
        kv_cache: PagedKVCache,
        max_seq_len: int,
        lm_head: Callable[[torch.Tensor], torch.Tensor] | None = None,
        tap: TargetFeatureTap | None = None,
    ) -> None:
        if head.config.method == "eagle" and lm_head is None:
            raise ValueError("an EAGLE head draws through the target's lm_head: pass it")
        self.head = head
        self.kv_cache = kv_cache
        self.max_seq_len = max_seq_len
        self._lm_head = lm_head
        self.tap = tap
        # The tap's write count when a step's features were last taken: rows newer than it
        # are fresh (a graph the tap is not in writes none).
        self._seen_writes = tap.num_writes if tap is not None else 0
        device = head.fc.weight.device
        self.builder = InputBatchBuilder(_HeadSteps(device), kv_cache)
        # Per request: tokens 0..h of the h head positions computed from target features.
        self._tokens: dict[str, list[int]] = {}
        self._features: dict[str, _Features] = {}
        self._params = SamplingParams(temperature=0.0)

    # -- what the engine hands over --------------------------------------------------------
    def add_target_features(self, request_id: str, start: int, features: torch.Tensor) -> None:
        """The target's features [n, width] of the request's positions start..start+n-1,
        as a step ran them (rejected drafts' positions included: the next step's rows
        replace them). Copied: `features` may be a view of the tap's buffer."""
        have = self._features.get(request_id)
        if have is not None and have.start <= start <= have.stop:
            values = torch.cat([have.values[: start - have.start], features])
            self._features[request_id] = _Features(have.start, values)
        else:
            self._features[request_id] = _Features(start, features.clone())

    def observe_step(self, inputs: ModelInputs) -> None:
        """After the target ran the step of `inputs` (its runner's `execute`): hands each
        request's rows of the tap's features over (`add_target_features`)."""
        if self.tap is None:
            raise ValueError("observe_step needs the proposer's TargetFeatureTap")
        layout = inputs.layout
        if not self.tap.fresh_since(self._seen_writes):
            # A graph captured without the tap ran this step: its features never came. The
            # requests' features stop here, so they get no drafts until they are re-run.
            for request_id in inputs.request_ids:
                self._features.pop(request_id, None)
            return
        self._seen_writes = self.tap.num_writes
        if layout.context_lens_host is None:
            raise ValueError("observe_step needs the step's host context lengths")
        rows = self.tap.rows(sum(layout.query_lens))
        offset = 0
        for request_id, n, context in zip(inputs.request_ids, layout.query_lens, layout.context_lens_host):
            # The step's tokens of a request sit at the end of its context.
            self.add_target_features(request_id, context - n, rows[offset : offset + n])
            offset += n

    def release(self, request_id: str) -> None:
        """Frees the request's head-cache pages and forgets its tokens and features."""
        self._tokens.pop(request_id, None)
        self._features.pop(request_id, None)
        self.kv_cache.free(request_id)

    # -- drafting ----------------------------------------------------------------------------
    def propose(self, sequences: Sequence[DraftSequence], num_tokens: int) -> list[list[int]]:
        """Up to `num_tokens` greedy drafts per sequence (none without its features, near
        the maximum length, or when the head's cache has no pages left)."""
        drafts: list[list[int]] = [[] for _ in sequences]
        rows = [row for i, seq in enumerate(sequences) if (row := self._open(i, seq, num_tokens)) is not None]
        if not rows:
            return drafts
        try:
            with torch.inference_mode():
                self._run(rows)
        finally:
            self.builder.record_draws(None, None)
        for row in rows:
            drafts[row.index] = row.drafts
            rid = row.request.request_id
            known = self._tokens[rid] = list(sequences[row.index].token_ids)
            # Positions before N - 1 are in the head's cache now: their features go.
            features = self._features[rid]
            cut = len(known) - 1 - features.start
            self._features[rid] = _Features(features.start + cut, features.values[cut:])
        return drafts

    def _open(self, index: int, seq: DraftSequence, num_tokens: int) -> DraftRow | None:
        """The row of a sequence that drafts now (its cache cut back to what still holds,
        its pages reserved), or None when it cannot."""
        tokens = list(seq.token_ids)
        n_known = len(tokens)
        n = min(num_tokens, self.max_seq_len - n_known + 1)
        rid = seq.request_id
        features = self._features.get(rid)
        if n_known < 2 or n <= 0 or features is None:
            return None
        stored = self._tokens.get(rid, [])
        cached_positions = max(len(stored) - 1, 0)
        valid = min(cached_positions, max(common_prefix_length(stored, tokens) - 1, 0))
        # The last position always runs again: its output gives the first draft.
        keep = min(valid, n_known - 2)
        if features.start > keep or features.stop < n_known - 1:
            return None
        self._tokens[rid] = tokens[: keep + 1]
        # The head's cache then holds positions 0..N-2 and the fed-back drafts.
        if not self.kv_cache.reserve(rid, n_known + n - 2):
            self.release(rid)
            return None
        # Row p of the head runs the token at p + 1: the request's tokens shifted by one.
        request = Request(rid, tokens[1:], n_known - 1, self._params, 0, self.max_seq_len, 0)
        return DraftRow(index, request, keep, n_known - 1, n)

    def _draw(self, out: torch.Tensor) -> torch.Tensor:
        """Greedy target token ids [B] of the head's output rows [B, H]."""
        logits = self.head.logits(out) if self._lm_head is None else self.head.logits(out, self._lm_head)
        return self.head.to_target_ids(argmax_rows(logits))

    def _forward(self, inputs: ModelInputs, hidden: torch.Tensor) -> torch.Tensor:
        with step_context(inputs.layout, self.kv_cache):
            out = self.head(inputs.tokens, inputs.positions, hidden)
        return out[inputs.logits_indices]

    def _run(self, rows: list[DraftRow]) -> None:
        """One step over every row's positions not in the head's cache (target features),
        then one step per further draft (the head's own output); fills the rows' drafts."""
        unread: list[tuple[list[DraftRow], torch.Tensor]] = []
        single = [r for r in rows if r.length - r.start == 1]
        order = single + [r for r in rows if r.length - r.start != 1]  # one-token chunks first
        chunks = [ScheduledChunk(r.request, r.start, r.length - r.start) for r in order]
        features = [self._features[r.request.request_id] for r in order]
        rows_in = [f.values[r.start - f.start : r.length - f.start] for r, f in zip(order, features)]
        self.builder.record_draws(None, None)
        inputs = self.builder.prepare(chunks)
        out = self._forward(inputs, self.head.fuse(torch.cat(rows_in)))
        tokens = self._draw(out)
        unread.append((order, tokens))
        for j in range(1, max(r.num_drafts for r in rows)):
            active = [r for r in order if r.num_drafts > j]
            if len(active) == len(order):
                self.builder.record_draws(inputs, tokens)
            else:
                keep = torch.tensor([i for i, r in enumerate(order) if r.num_drafts > j], device=out.device)
                out = out[keep]
                read_back(unread)
                self.builder.record_draws(None, None)
            chunks = [ScheduledChunk(r.request, r.length + j - 1, 1) for r in active]
            inputs = self.builder.prepare(chunks)
            out = self._forward(inputs, out)
            tokens = self._draw(out)
            unread.append((active, tokens))
            order = active
        read_back(unread)
