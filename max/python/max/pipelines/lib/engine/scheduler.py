"""Continuous batching: which requests run in the next step, and with how many tokens.

Every step has a token budget. Requests already running go first (a decoding request
needs one token; a request still prefilling gets the next chunk of its prompt), then
waiting requests are admitted in arrival order while the budget, the batch-size limit and
the KV cache allow. When the cache runs out of pages for a running request, the most
recently admitted request is preempted: its pages are freed and it goes back to the front
of the queue, to be recomputed (prompt plus what it generated so far) when pages free up.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from max.kv_cache import PagedKVCache
from max.pipelines.lib.engine.request import Request, RequestStatus


@dataclass
class ScheduledChunk:
    """One request's share of a step: run `num_tokens` tokens from `start`."""

    request: Request
    start: int
    num_tokens: int

    @property
    def token_ids(self) -> list[int]:
        """The token ids to run."""
        return self.request.tokens[self.start : self.start + self.num_tokens]

    @property
    def completes(self) -> bool:
        """After this chunk every token of the request is computed (a token is drawn)."""
        return self.start + self.num_tokens == len(self.request.tokens)


@dataclass
class SchedulerOutput:
    """A step's batch (decoding chunks first) and the requests preempted to make room."""

    chunks: list[ScheduledChunk]
    preempted: list[Request]

    @property
    def num_tokens(self) -> int:
        """Tokens in the step."""
        return sum(c.num_tokens for c in self.chunks)


class Scheduler:
    """Owns the waiting queue and the running set; decides each step's batch."""

    def __init__(
        self,
        kv_cache: PagedKVCache,
        max_batch_size: int,
        max_num_batched_tokens: int,
        enable_prefix_caching: bool = True,
    ) -> None:
        self.kv_cache = kv_cache
        self.max_batch_size = max_batch_size
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_prefix_caching = enable_prefix_caching
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        """Queues a new request."""
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def has_work(self) -> bool:
        """Any request is waiting or running."""
        return bool(self.waiting or self.running)

    def remove(self, request: Request) -> None:
        """Takes a request out (finished or aborted) and frees its pages."""
        if request in self.running:
            self.running.remove(request)
        else:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        self.kv_cache.free(request.request_id)
        request.status = RequestStatus.FINISHED

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv_cache.free(request.request_id)
        request.num_computed = 0
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        self.num_preemptions += 1

    def schedule(self) -> SchedulerOutput:
        """The next step's batch."""
        budget = self.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[Request] = []
        for request in list(self.running):
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted below while making room for an earlier request
            n = min(request.num_uncomputed, budget)
            while not self.kv_cache.reserve(request.request_id, request.num_computed + n):
                victim = self.running[-1]
                for c in [c for c in chunks if c.request is victim]:
                    chunks.remove(c)
                    budget += c.num_tokens
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
            else:
                chunks.append(ScheduledChunk(request, request.num_computed, n))
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size and not preempted:
            request = self.waiting[0]
            if request.num_computed == 0:
                use_cache = self.enable_prefix_caching and not request.wants_prompt_logprobs
                cached = self.kv_cache.match_prefix(request.request_id, request.prefix_key_tokens) if use_cache else 0
                request.num_computed = cached
                if request.num_output_tokens == 0:
                    request.num_cached_prompt_tokens = cached
            n = min(request.num_uncomputed, budget)
            if not self.kv_cache.reserve(request.request_id, request.num_computed + n):
                # Not now: give back what the prefix match took; try again next step.
                self.kv_cache.free(request.request_id)
                request.num_computed = 0
                break
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            chunks.append(ScheduledChunk(request, request.num_computed, n))
            budget -= n
        # Decoding chunks (one token) first: attention handles them as one group.
        chunks.sort(key=lambda c: c.num_tokens != 1)
        return SchedulerOutput(chunks, preempted)
