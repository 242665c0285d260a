"""Continuous batching: which requests run in the next step, and with how many tokens.

Every step has a token budget. Requests already running go first (a decoding request
needs one token; a request still prefilling gets the next chunk of its prompt), then
waiting requests are admitted in arrival order while the budget, the batch-size limit and
the KV cache allow. When the cache runs out of pages for a running request, the most
recently admitted request is preempted: its pages are freed and it goes back to the front
of the queue, to be recomputed (prompt plus what it generated so far) when pages free up.

With LoRA, the running requests' adapters may use at most `max_loras` device slots. A
waiting request whose adapter would need one more is passed over (it keeps its place in
the queue) and the requests behind it are admitted; it runs once a running adapter's last
request finishes and frees its slot. So that a busy adapter cannot hold its slot forever,
a request passed over in `MAX_LORA_SKIPS` steps stops the admission of other requests
that hold a slot, until it gets one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from max.kv_cache import PagedKVCache
from max.pipelines.lib.engine.request import Request, RequestStatus
from max.pipelines.lib.model.multimodal import image_blocks

FCFS, PRIORITY = "fcfs", "priority"

# Steps a request waiting for an adapter slot may be passed over before requests that use
# the running adapters stop being admitted ahead of it (so that one of them drains).
MAX_LORA_SKIPS = 32


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
        # Images run whole within one chunk (the model's image tokens see each other both
        # ways: Gemma 3); the engine sets it from the model.
        self.whole_images = False
        # Steps in which each waiting request was passed over for want of an adapter slot.
        self._lora_skips: dict[str, int] = {}
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
        self._lora_skips.pop(request.request_id, None)
        self.kv_cache.free(request.request_id)
        request.status = RequestStatus.FINISHED

    def _adapter_fits(self, request: Request, running: set[int], starving: bool) -> bool:
        """Whether admitting `request` keeps the running adapters (`running`, uids) within
        `max_loras`; while a passed-over request is `starving`, no adapter request is
        admitted ahead of it."""
        if request.lora is None or self.max_loras is None:
            return True
        if starving:
            return False
        return request.lora.uid in running or len(running) < self.max_loras

    def _pass_over(self, request: Request) -> bool:
        """Counts a step in which `request` waited for an adapter slot; True once it has
        waited `MAX_LORA_SKIPS` steps."""
        skips = self._lora_skips.get(request.request_id, 0) + 1
        self._lora_skips[request.request_id] = skips
        return skips >= MAX_LORA_SKIPS

    def _chunk_tokens(self, request: Request, budget: int) -> int:
        """How many of the request's uncomputed tokens run this step: as many as the budget
        allows; with `whole_images`, cut back to the start of an image the chunk would end
        inside (0: the image waits for a step with room for all of it)."""
        n = min(request.num_uncomputed, budget)
        if self.whole_images and request.images:
            start = request.num_computed
            for first, end in image_blocks(request.images):
                if first < start + n < end:
                    return max(first - start, 0)
        return n

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
            n = self._chunk_tokens(request, budget)
            if n == 0:
                continue  # its next image does not fit in what is left of the budget
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
        adapters = {r.lora.uid for r in self.running if r.lora is not None}
        passed_over: list[Request] = []  # waiting for an adapter slot; they keep their places
        starving = False
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size and not preempted:
            request = self.waiting[0]
            if not self._adapter_fits(request, adapters, starving):
                # Every slot is held by running adapters: admit the requests behind it.
                passed_over.append(self.waiting.popleft())
                starving = self._pass_over(request) or starving
                continue
            if request.num_computed == 0:
                use_cache = self.enable_prefix_caching and not request.skips_prefix_cache
                cached = self.kv_cache.match_prefix(request.request_id, request.prefix_key_tokens) if use_cache else 0
                request.num_computed = cached
                if request.num_output_tokens == 0:
                    request.num_cached_prompt_tokens = cached
            n = self._chunk_tokens(request, budget)
            if n == 0 or not self.kv_cache.reserve(request.request_id, request.num_computed + n):
                # Not now: give back what the prefix match took; try again next step.
                self.kv_cache.free(request.request_id)
                request.num_computed = 0
                break
            self.waiting.popleft()
            self._lora_skips.pop(request.request_id, None)
            if request.lora is not None:
                adapters.add(request.lora.uid)
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            chunks.append(ScheduledChunk(request, request.num_computed, n))
            budget -= n
        self.waiting.extendleft(reversed(passed_over))
        # Decoding chunks (one token) first: attention handles them as one group.
        chunks.sort(key=lambda c: c.num_tokens != 1)
        return SchedulerOutput(chunks, preempted)
