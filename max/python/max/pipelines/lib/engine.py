"""The engine: continuous batching over a paged KV cache, token ids in, token ids out.

`LLMEngine.step()` asks the scheduler for a batch, prepares the step's ragged inputs
once, runs the model, samples one token for each request whose tokens are all computed,
and reports what each request produced. Requests join (`add_request`) and leave
(`abort`, or finishing) between steps; a finished or aborted request's pages are freed
at once.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import torch

from max.errors import MaxError
from max.kv_cache import PagedKVCache
from max.pipelines.lib.pipeline_model import ModelInputs, PipelineModel
from max.pipelines.lib.request import Request, RequestOutput, TokenLogprob
from max.pipelines.lib.sampler import SamplingBatch, sample
from max.pipelines.lib.sampling_params import SamplingParams
from max.pipelines.lib.scheduler import ScheduledChunk, Scheduler


@dataclass
class EngineStats:
    """A snapshot of the engine's load, for metrics and tests."""

    num_running: int
    num_waiting: int
    kv_pages_in_use: int
    kv_pages_total: int
    kv_pages_cached: int
    num_preemptions: int


def _as_seed(seed: int | None) -> int:
    """A signed 64-bit seed (random when None)."""
    value = random.getrandbits(64) if seed is None else seed & (2**64 - 1)
    return value - 2**64 if value >= 2**63 else value


class LLMEngine:
    """Runs many generation requests together; see the module docstring."""

    def __init__(
        self,
        model: PipelineModel,
        kv_cache: PagedKVCache,
        max_batch_size: int,
        max_num_batched_tokens: int,
        eos_token_ids: set[int],
        vocab_size: int,
        enable_prefix_caching: bool = True,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.scheduler = Scheduler(kv_cache, max_batch_size, max_num_batched_tokens, enable_prefix_caching)
        self.eos_token_ids = set(eos_token_ids)
        self.vocab_size = vocab_size
        self.max_seq_len = model.max_seq_len
        self._requests: dict[str, Request] = {}
        self._arrivals = itertools.count()
        # The last step, kept for the decode fast path (`prepare_next_token_inputs`).
        self._last_inputs: ModelInputs | None = None
        self._last_tokens: torch.Tensor | None = None
        self._last_page_counts: list[int] = []

    # -- requests ------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_tokens: list[int], params: SamplingParams) -> None:
        """Queues a request; raises MaxError if it cannot be served."""
        if request_id in self._requests:
            raise MaxError(f"request id {request_id!r} is already in use")
        if not prompt_tokens:
            raise MaxError("the prompt is empty")
        params.validate(self.vocab_size)
        bad = next((t for t in prompt_tokens if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise MaxError(f"prompt token id {bad} is outside the vocabulary (size {self.vocab_size})")
        n = len(prompt_tokens)
        limit = self.max_seq_len
        if n > limit or (n == limit and params.max_new_tokens != 0):
            raise MaxError(
                f"the prompt has {n} tokens; the model's maximum length is {limit} tokens "
                "(prompt and output together)"
            )
        if params.max_new_tokens is not None and n + params.max_new_tokens > limit:
            raise MaxError(
                f"the prompt ({n} tokens) plus max_new_tokens ({params.max_new_tokens}) exceeds "
                f"the model's maximum length of {limit} tokens"
            )
        total = limit if params.max_new_tokens is None else n + params.max_new_tokens
        request = Request(
            request_id=request_id,
            tokens=list(prompt_tokens),
            num_prompt_tokens=n,
            params=params,
            seed=_as_seed(params.seed),
            max_total_tokens=total,
            arrival=next(self._arrivals),
        )
        self._requests[request_id] = request
        self.scheduler.add(request)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Cancels a request (no-op if unknown or finished); its pages are freed now."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return None
        self.scheduler.remove(request)
        request.finish_reason = "abort"
        return RequestOutput(request_id, [], True, "abort", num_prompt_tokens=request.num_prompt_tokens)

    def request_ids(self) -> list[str]:
        """Ids of the requests waiting or running."""
        return list(self._requests)

    def has_unfinished(self) -> bool:
        """Any request is waiting or running."""
        return self.scheduler.has_work()

    def stats(self) -> EngineStats:
        """Current load."""
        pool = self.kv_cache.pool
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_pages_in_use=pool.num_in_use,
            kv_pages_total=pool.num_pages,
            kv_pages_cached=pool.num_cached,
            num_preemptions=self.scheduler.num_preemptions,
        )

    # -- stepping ------------------------------------------------------------------------
    def _inputs(self, chunks: list[ScheduledChunk], all_logits: list[bool] | None) -> ModelInputs:
        """Step inputs, derived on device from the last step when it is a plain repeat."""
        ids = [c.request.request_id for c in chunks]
        page_counts = [len(self.kv_cache.pages(i)) for i in ids]
        last = self._last_inputs
        if (
            last is not None
            and all_logits is None
            and last.request_ids == ids
            and page_counts == self._last_page_counts
            and all(c.num_tokens == 1 for c in chunks)
            and last.layout.num_decode == len(ids)
        ):
            inputs = self.model.prepare_next_token_inputs(self._last_tokens, last)
        else:
            inputs = self.model.prepare_initial_token_inputs(chunks, self.kv_cache, all_logits)
        self._last_page_counts = page_counts
        return inputs

    def step(self) -> list[RequestOutput]:
        """Runs one batch; returns what each scheduled request produced."""
        plan = self.scheduler.schedule()
        chunks = plan.chunks
        if not chunks:
            self._last_inputs = None
            return []
        wants_all = [c.request.wants_prompt_logprobs for c in chunks]
        all_logits = wants_all if any(wants_all) else None
        inputs = self._inputs(chunks, all_logits)
        logits = self.model.execute(inputs).logits

        outputs: dict[str, RequestOutput] = {}
        for b, chunk in enumerate(chunks):
            if all_logits is not None and all_logits[b]:
                self._record_prompt_logprobs(chunk, logits[inputs.logits_rows[b]])

        # A request draws a token once all its tokens are computed, unless it is at its limit
        # already (max_new_tokens == 0: the caller only wanted the prompt processed).
        drawing = [
            b
            for b, c in enumerate(chunks)
            if c.completes and len(c.request.tokens) < c.request.max_total_tokens
        ]
        token_tensor = None
        if drawing:
            rows = torch.tensor([inputs.logits_rows[b].stop - 1 for b in drawing], device=logits.device)
            reqs = [chunks[b].request for b in drawing]
            result = sample(
                logits[rows],
                SamplingBatch(
                    params=[r.params for r in reqs],
                    seeds=[r.seed for r in reqs],
                    steps=[r.num_output_tokens for r in reqs],
                    prompt_tokens=[r.tokens[: r.num_prompt_tokens] for r in reqs],
                    output_tokens=[r.output_tokens for r in reqs],
                ),
            )
            token_tensor = result.token_tensor
            for i, b in enumerate(drawing):
                request = chunks[b].request
                out = outputs.setdefault(request.request_id, self._output(request))
                out.new_token_ids.append(result.tokens[i])
                if request.params.logprobs is not None:
                    top = []
                    if request.params.logprobs > 0:
                        k = request.params.logprobs
                        top = list(zip(result.top_ids[i][:k], result.top_logprobs[i][:k]))
                    out.logprobs = [TokenLogprob(result.tokens[i], result.logprobs[i], top)]

        for b, chunk in enumerate(chunks):
            request = chunk.request
            request.num_computed += chunk.num_tokens
            self.kv_cache.commit(request.request_id, request.tokens, request.num_computed)
            out = outputs.setdefault(request.request_id, self._output(request))
            if chunk.completes and request.prompt_logprobs and request.num_output_tokens == 0:
                out.prompt_logprobs = [None, *request.prompt_logprobs]
            if b in drawing:
                request.tokens.append(out.new_token_ids[-1])
                self._check_finished(request, out.new_token_ids[-1])
            elif chunk.completes:
                request.finish_reason = "length"  # max_new_tokens == 0: prompt only
            if request.finish_reason is not None:
                out.finished = True
                out.finish_reason = request.finish_reason
                self.scheduler.remove(request)
                self._requests.pop(request.request_id, None)

        # Keep this step for the fast path only if it was a pure decode of everyone.
        all_drew = len(drawing) == len(chunks) and not any(r.finished for r in outputs.values())
        self._last_inputs = inputs if all_drew else None
        self._last_tokens = token_tensor if all_drew else None
        return [outputs[c.request.request_id] for c in chunks if c.request.request_id in outputs]

    def _output(self, request: Request) -> RequestOutput:
        return RequestOutput(
            request.request_id,
            [],
            num_prompt_tokens=request.num_prompt_tokens,
            num_cached_tokens=request.num_cached_prompt_tokens,
        )

    def _check_finished(self, request: Request, token: int) -> None:
        params = request.params
        if token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids):
            request.finish_reason = "stop"
        elif len(request.tokens) >= request.max_total_tokens:
            request.finish_reason = "length"

    def _record_prompt_logprobs(self, chunk: ScheduledChunk, logits: torch.Tensor) -> None:
        """Log-probabilities of the prompt tokens that this chunk's logits predict.

        Row i of `logits` predicts the token at position start + i + 1; positions past the
        prompt, and those recorded before (a recomputed chunk), are skipped.
        """
        request = chunk.request
        first = max(chunk.start + 1, len(request.prompt_logprobs) + 1)
        last = min(chunk.start + chunk.num_tokens, request.num_prompt_tokens - 1)
        if first > last:
            return
        rows = torch.arange(first - chunk.start - 1, last - chunk.start, device=logits.device)
        targets = torch.tensor(request.tokens[first : last + 1], device=logits.device)
        logprobs = torch.log_softmax(logits[rows].float(), dim=-1)
        chosen = logprobs.gather(1, targets[:, None]).squeeze(1).tolist()
        k = request.params.prompt_logprobs or 0
        top_values, top_ids = torch.topk(logprobs, k, dim=-1) if k > 0 else (None, None)
        for i, (target, value) in enumerate(zip(request.tokens[first : last + 1], chosen)):
            top = list(zip(top_ids[i].tolist(), top_values[i].tolist())) if k > 0 else []
            request.prompt_logprobs.append(TokenLogprob(target, value, top))
