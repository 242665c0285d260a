"""The draft-model proposer: a smaller model of the same vocabulary drafts greedily.

The draft model runs through its own `ModelRunner` over its own paged KV cache (built by
`draft_model_builder`). For each request it remembers the tokens whose keys and values its
cache holds. On `propose` it keeps the longest common prefix of those with the tokens the
engine now knows (after rejected drafts that prefix is simply shorter: a rollback costs
nothing), runs the missing tokens of every sequence as one ragged batch (chunked under the
step's token budget), then feeds its own greedy choices back one token at a time.

The draft steps stay on the device: each step's greedy tokens feed the next step through
the runner's decode fast path (`InputBatchBuilder.next_decode`, a CUDA-graph replay on the
GPU), and the host reads the drafts once, at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from max.pipelines.lib.engine.request import Request
from max.pipelines.lib.engine.scheduler import ScheduledChunk
from max.pipelines.lib.runner.input_batch import ModelInputs
from max.pipelines.lib.runner.model_runner import ModelRunner
from max.pipelines.lib.sampling.sampling_params import SamplingParams
from max.pipelines.lib.speculative.proposer import DraftSequence
from max_kernels import argmax_rows


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass(eq=False)
class DraftRow:
    """One sequence drafting in a `propose` call.

    `request.tokens` is what the host knows of the sequence: its tokens, then the drafts
    read back so far; `start` the first token the draft cache lacks; `length` the
    sequence's own token count; `num_drafts` how many drafts it makes.
    """

    index: int
    request: Request
    start: int
    length: int
    num_drafts: int
    drafts: list[int] = field(default_factory=list)

    def add_draft(self, token: int) -> None:
        """Appends a draft read back from the device."""
        self.drafts.append(token)
        self.request.tokens.append(token)


class DraftModelProposer:
    """A `DraftProposer` backed by a smaller language model (see the module docstring).

    `runner` owns the draft model and its KV cache (no other user); `max_step_tokens` is the
    most tokens one of its steps runs (longer catch-ups are chunked).
    """

    def __init__(self, runner: ModelRunner, max_step_tokens: int) -> None:
        if max_step_tokens < 1:
            raise ValueError(f"max_step_tokens must be at least 1 (got {max_step_tokens})")
        self.runner = runner
        self.kv_cache = runner.kv_cache
        self.max_step_tokens = max_step_tokens
        # Per request: the tokens whose keys and values the draft cache holds, in order.
        self._cached: dict[str, list[int]] = {}
        self._params = SamplingParams(temperature=0.0)

    @property
    def vocab_size(self) -> int:
        """Rows of the draft model's logits."""
        return int(self.runner.model.model_config.vocab_size)

    def num_cached_tokens(self, request_id: str) -> int:
        """Tokens of `request_id` whose keys and values the draft cache holds."""
        return len(self._cached.get(request_id, ()))

    def propose(self, sequences: Sequence[DraftSequence], num_tokens: int) -> list[list[int]]:
        """Up to `num_tokens` greedy drafts per sequence. A sequence gets fewer near the
        model's maximum length, and none when the draft cache has no pages left for it."""
        drafts: list[list[int]] = [[] for _ in sequences]
        rows = [row for i, seq in enumerate(sequences) if (row := self._open(i, seq, num_tokens)) is not None]
        if rows:
            try:
                self._run(rows)
            finally:
                self.runner.record_draws(None, None)  # the next call starts from the host
            for row in rows:
                drafts[row.index] = row.drafts
                # The last draft was never fed back: its keys are not in the cache.
                self._cached[row.request.request_id] = row.request.tokens[: row.length + row.num_drafts - 1]
        return drafts

    def release(self, request_id: str) -> None:
        """Frees the request's draft-cache pages and forgets its tokens."""
        self._cached.pop(request_id, None)
        self.kv_cache.free(request_id)

    # -- one call -------------------------------------------------------------------------
    def _open(self, index: int, seq: DraftSequence, num_tokens: int) -> DraftRow | None:
        """The row of a sequence that drafts now, its cache cut back to the prefix it shares
        with `seq` and its pages reserved; None if it drafts nothing."""
        tokens = list(seq.token_ids)
        length = len(tokens)
        # The cache then holds length + n - 1 tokens: every draft but the last is fed back.
        n = min(num_tokens, self.runner.max_seq_len - length + 1)
        if length == 0 or n <= 0:
            return None
        rid = seq.request_id
        cached = self._cached.get(rid, [])
        # The last known token always runs again: its logits give the first draft.
        keep = min(common_prefix_length(cached, tokens), length - 1)
        self._cached[rid] = cached[:keep]
        if not self.kv_cache.reserve(rid, length + n - 1):
            self.release(rid)  # out of pages: this sequence does not speculate now
            return None
        request = Request(rid, tokens, length, self._params, 0, self.runner.max_seq_len, 0)
        return DraftRow(index, request, keep, length, n)

    def _run(self, rows: list[DraftRow]) -> None:
        """Catches every row up, then drafts; fills each row's `drafts`."""
        # Draws not read back yet: (rows of the step in batch order, their tokens [B]).
        unread: list[tuple[list[DraftRow], torch.Tensor]] = []
        order, last = self._catch_up(rows, unread)
        for j in range(1, max(r.num_drafts for r in rows)):
            active = [r for r in order if r.num_drafts > j]
            if last is not None and len(active) == len(order):
                # The same rows each feed the token they drew: derived on the device.
                self.runner.record_draws(last, unread[-1][1])
            else:
                read_back(unread)
                self.runner.record_draws(None, None)
            chunks = [ScheduledChunk(r.request, r.length + j - 1, 1) for r in active]
            last = self.runner.prepare(chunks)
            unread.append((active, argmax_rows(self.runner.execute(last))))
            order = active
        read_back(unread)

    def _catch_up(
        self, rows: list[DraftRow], unread: list[tuple[list[DraftRow], torch.Tensor]]
    ) -> tuple[list[DraftRow], ModelInputs | None]:
        """Runs each row's uncached tokens, at most `max_step_tokens` a step; appends each
        row's first draft to `unread`. Returns the rows, in the last step's batch order
        with its inputs when every row drew in that step (the next step may derive from
        it), else in any order with None."""
        next_start = {id(r): r.start for r in rows}
        while True:
            budget = self.max_step_tokens
            single: list[ScheduledChunk] = []
            multi: list[ScheduledChunk] = []
            owners: dict[int, DraftRow] = {}
            for row in rows:
                start = next_start[id(row)]
                take = min(row.length - start, budget)
                if take <= 0:
                    continue
                chunk = ScheduledChunk(row.request, start, take)
                (single if take == 1 else multi).append(chunk)
                owners[id(chunk)] = row
                next_start[id(row)] = start + take
                budget -= take
            if not owners:
                raise AssertionError("a catch-up step with nothing to run")
            batch = single + multi  # the builder takes one-token chunks first
            self.runner.record_draws(None, None)
            inputs = self.runner.prepare(batch)
            logits = self.runner.execute(inputs)
            done = [b for b, chunk in enumerate(batch) if chunk.completes]
            stepped = [owners[id(batch[b])] for b in done]
            if len(done) == logits.shape[0]:  # the usual case: a row per chunk, each completing
                unread.append((stepped, argmax_rows(logits)))
            elif done:
                picks = torch.tensor([inputs.logits_rows[b].start for b in done], device=logits.device)
                unread.append((stepped, argmax_rows(logits[picks])))
            if all(next_start[id(r)] == r.length for r in rows):
                if len(done) == len(batch) == len(rows):
                    return stepped, inputs
                return rows, None


def read_back(unread: list[tuple[list[DraftRow], torch.Tensor]]) -> None:
    """Copies the drawn tokens to the host, in step order, onto their rows (one sync)."""
    if not unread:
        return
    values = torch.cat([tokens for _, tokens in unread]).tolist()
    offset = 0
    for step_rows, tokens in unread:
        for row, value in zip(step_rows, values[offset : offset + len(step_rows)]):
            row.add_draft(value)
        offset += tokens.shape[0]
    unread.clear()
