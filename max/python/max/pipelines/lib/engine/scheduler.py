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
from collections.abc import Mapping
from dataclasses import dataclass, field

from max.kv_cache import PagedKVCache
from max.pipelines.lib.engine.request import Request, RequestStatus

FCFS, PRIORITY = "fcfs", "priority"


@dataclass
class ScheduledChunk:
    """One request's share of a step: run `num_tokens` tokens from `start`.

    A speculating request's chunk ends with its `draft_tokens` (counted in `num_tokens`):
    its last known token plus k drafts, all verified in this step.
    """

    request: Request
    start: int
    num_tokens: int
    draft_tokens: list[int] = field(default_factory=list)

    @property
    def token_ids(self) -> list[int]:
        """The token ids to run."""
        known = self.request.tokens[self.start : self.start + self.num_tokens - len(self.draft_tokens)]
        return known + self.draft_tokens if self.draft_tokens else known

    @property
    def completes(self) -> bool:
        """After this chunk every token of the request is computed (a token is drawn)."""
        return self.start + self.num_tokens - len(self.draft_tokens) == len(self.request.tokens)


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
        # LoRA: the most distinct adapters one step may use (the device's slots); None: no limit.
        self.max_loras: int | None = None
        self.policy = FCFS  # --scheduling-policy: the order in which waiting requests are admitted

    def add(self, request: Request) -> None:
        """Queues a new request (with the `priority` policy, after every waiting request of
        the same or a more urgent priority: lower numbers first, as vLLM orders them)."""
        request.status = RequestStatus.WAITING
        if self.policy == PRIORITY and self.waiting and self.waiting[-1].params.priority > request.params.priority:
            after = next(i for i, r in enumerate(self.waiting) if r.params.priority > request.params.priority)
            self.waiting.insert(after, request)
            return
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

    def _adapter_fits(self, request: Request) -> bool:
        """Whether admitting `request` keeps the running adapters within `max_loras`."""
        if request.lora is None or self.max_loras is None:
            return True
        running = {r.lora.uid for r in self.running if r.lora is not None}
        return request.lora.uid in running or len(running) < self.max_loras

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv_cache.free(request.request_id)
        request.num_computed = 0
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        self.num_preemptions += 1

    def schedule(self, drafts: Mapping[str, list[int]] | None = None) -> SchedulerOutput:
        """The next step's batch. `drafts` (speculative decoding) are draft tokens by request
        id: a decoding request that has some runs them after its last token, as many as the
        budget leaves room for, and its pages are reserved for them too."""
        budget = self.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[Request] = []
        for request in list(self.running):
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted below while making room for an earlier request
            n = min(request.num_uncomputed, budget)
            draft = drafts.get(request.request_id, []) if drafts and request.num_uncomputed == 1 else []
            draft = draft[: budget - n]
            n += len(draft)
            while not self.kv_cache.reserve(request.request_id, request.num_computed + n):
                if draft:  # drafts are worth no preemption: verify none this step
                    n, draft = n - len(draft), []
                    continue
                victim = self.running[-1]
                for c in [c for c in chunks if c.request is victim]:
                    chunks.remove(c)
                    budget += c.num_tokens
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
            else:
                chunks.append(ScheduledChunk(request, request.num_computed, n, draft))
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size and not preempted:
            request = self.waiting[0]
            if not self._adapter_fits(request):
                break  # every adapter slot is taken by running requests: wait for one to free
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
