"""From a step's sampled tokens to what each request produced (vLLM v1's output processor).

The engine launches a step and hands it here twice:
- `book(step)`, at launch: the step's tokens count as computed, and each request that draws
  gets a placeholder (-1) at the end of its tokens, with the (step, sampler row, index)
  that will fill it, so the next step can be scheduled before this one's draws reach the
  host (asynchronous scheduling);
- `process(step)`, once the draws are needed on the host: placeholders are filled, the
  draws reported with their logprobs, grammars advanced, stop conditions checked, prompt
  logprobs recorded and the computed pages committed to the prefix cache; finished
  requests leave the scheduler.
A preempted request forgets the draw it is still waiting for (`drop_pending`).

A speculating request (a chunk with draft tokens) drew at its last token and at each
draft; `process` keeps the drafts up to the first the target disagrees with, then the
target's token there (`accepted_draws`), stops at a stop token, EOS or the length limit
among them, and counts the accepted drafts as computed (their KV is in the cache); the
rejected drafts' slots are past the computed length, to be overwritten.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from max.kv_cache import PagedKVCache
from max.pipelines.lib.engine.request import Request, RequestOutput, TokenLogprob
from max.pipelines.lib.engine.scheduler import ScheduledChunk, Scheduler
from max.pipelines.lib.runner.input_batch import ModelInputs
from max.pipelines.lib.sampling.sampler import SampledTokens
from max.pipelines.lib.speculative.rejection_sampler import accepted_draws
from max.pipelines.lib.speculative.spec_decode_stats import SpecDecodeStats

logger = logging.getLogger("max.pipelines.engine")


@dataclass
class LaunchedStep:
    """A step whose work is queued on the device and whose tokens are not read yet."""

    step_id: int
    chunks: list[ScheduledChunk]
    drawing: list[int]  # indices of the chunks that drew a token, in sampler row order
    completes: list[bool]  # per chunk: it computed the request's last known token
    sampled: SampledTokens | None
    inputs: ModelInputs
    logits: torch.Tensor | None = None  # kept only for prompt logprobs
    all_logits: list[bool] | None = None
    # The next step needs this one's tokens on the host (penalties, prompt logprobs,
    # structured outputs).
    needs_host: bool = False
    request_ids: list[str] = field(default_factory=list)
    # Speculative decoding: each drawing chunk's first sampler row (its draws are the rows
    # from there, one per verified position); None when every chunk drew one token (row i).
    sampler_rows: list[int] | None = None


class OutputProcessor:
    """See the module docstring. `requests` is the engine's table of live requests (by id),
    which this removes finished requests from."""

    def __init__(
        self,
        scheduler: Scheduler,
        kv_cache: PagedKVCache,
        eos_token_ids: set[int],
        requests: Mapping[str, Request],
        spec_stats: SpecDecodeStats | None = None,
    ) -> None:
        self.spec_stats = spec_stats  # where verified drafts are counted
        self.scheduler = scheduler
        self.kv_cache = kv_cache
        self.eos_token_ids = eos_token_ids
        self.requests = requests

    def book(self, step: LaunchedStep) -> None:
        """Records a launched step as done (the device will have computed its tokens before
        anything launched later reads them) and gives each drawing request a placeholder."""
        drew = set(step.drawing)
        for b, chunk in enumerate(step.chunks):
            # Drafts count as computed only once accepted (`process`).
            chunk.request.num_computed += chunk.num_tokens - len(chunk.draft_tokens)
            if step.completes[b] and b not in drew:
                # Prompt only (e.g. an embedding request): finished once read. Its pages are
                # indexed for the prefix cache before they go (the step writing them is queued
                # before any step that could reuse them).
                request = chunk.request
                self.kv_cache.commit(request.request_id, request.prefix_key_tokens, request.num_computed)
                self.scheduler.remove(request)
        for i, b in enumerate(step.drawing):
            request = step.chunks[b].request
            row = step.sampler_rows[i] if step.sampler_rows is not None else i
            request.pending.append((step.step_id, row, len(request.tokens)))
            request.tokens.append(-1)
            if len(request.tokens) >= request.max_total_tokens:
                # Its last token: nothing more to schedule; the step's result is read later.
                self.scheduler.remove(request)

    @staticmethod
    def drop_pending(request: Request) -> None:
        """A preempted request forgets the token it is still drawing; recomputing it later
        draws the same one again (the noise is a function of seed and position)."""
        if request.pending:
            del request.tokens[request.pending[0][2] :]
            request.pending.clear()

    def process(self, step: LaunchedStep) -> list[RequestOutput]:
        """Reads a launched step's tokens and reports them (waits for the device)."""
        host = step.sampled.to_host() if step.sampled is not None else None
        outputs: dict[str, RequestOutput] = {}
        live = [
            (b, c.request)
            for b, c in enumerate(step.chunks)
            if self.requests.get(c.request.request_id) is c.request
        ]
        for b, _ in live:
            if step.all_logits is not None and step.all_logits[b]:
                record_prompt_logprobs(step.chunks[b], step.logits[step.inputs.logits_rows[b]])
        for b in step.drawing:
            request = step.chunks[b].request
            entry = next((p for p in request.pending if p[0] == step.step_id), None)
            if entry is None or self.requests.get(request.request_id) is not request:
                continue  # preempted, aborted or finished since the launch
            request.pending.remove(entry)
            _, row, index = entry
            drafts = step.chunks[b].draft_tokens
            if drafts:
                accepted, emitted = accepted_draws(drafts, host.tokens[row : row + len(drafts) + 1])
                if self.spec_stats is not None:
                    self.spec_stats.record(len(drafts), accepted)
            else:
                emitted = [host.tokens[row]]
            out = outputs.setdefault(request.request_id, _output(request))
            for i, token in enumerate(emitted):
                if i == 0:
                    request.tokens[index] = token
                else:  # an accepted draft's successor: its KV is computed, the token is known
                    request.tokens.append(token)
                    request.num_computed += 1
                out.new_token_ids.append(token)
                if request.params.logprobs is not None:
                    out.logprobs = (out.logprobs or []) + [_logprob(host, row + i, token, request.params.logprobs)]
                self._check_finished(request, token, index + i + 1)
                if request.matcher is not None and request.finish_reason is None:
                    _advance_matcher(request, token)  # a finished grammar ends the request
                if request.finish_reason is not None:
                    break  # a stop among the accepted drafts: nothing after it is emitted

        drew = set(step.drawing)
        for b, request in live:
            known = request.pending[0][2] if request.pending else len(request.tokens)
            self.kv_cache.commit(request.request_id, request.prefix_key_tokens, min(request.num_computed, known))
            out = outputs.setdefault(request.request_id, _output(request))
            if step.completes[b] and request.prompt_logprobs and request.num_output_tokens <= 1:
                out.prompt_logprobs = [None, *request.prompt_logprobs]
            if b not in drew and step.completes[b]:
                request.finish_reason = "length"  # max_new_tokens == 0: prompt only
                if request.pooling is not None:  # an embedding request: its prompt pooled
                    request.finish_reason = "stop"
                    out.embedding = request.pooling.vector().tolist()
            if request.finish_reason is not None:
                out.finished = True
                out.finish_reason = request.finish_reason
                self.scheduler.remove(request)
                self.requests.pop(request.request_id, None)
        return [outputs[rid] for rid in step.request_ids if rid in outputs]

    def _check_finished(self, request: Request, token: int, length: int) -> None:
        """Sets the finish reason once the token at position `length` - 1 ends the request."""
        params = request.params
        if token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids):
            request.finish_reason = "stop"
        elif length >= request.max_total_tokens:
            request.finish_reason = "length"


def _logprob(host, row: int, token: int, k: int) -> TokenLogprob:
    """The drawn token's log-probability at sampler row `row`, with the top `k` others."""
    top = list(zip(host.top_ids[row][:k], host.top_logprobs[row][:k])) if k > 0 else []
    return TokenLogprob(token, host.logprobs[row], top)


def _output(request: Request) -> RequestOutput:
    return RequestOutput(
        request.request_id,
        [],
        num_prompt_tokens=request.num_prompt_tokens,
        num_cached_tokens=request.num_cached_prompt_tokens,
    )


def _advance_matcher(request: Request, token: int) -> None:
    """Feeds the drawn token to the request's grammar; a finished grammar (nothing may
    follow but EOS) ends the request."""
    matcher = request.matcher
    if not matcher.consume_token(token):
        # Cannot happen while masks are applied; end the request rather than loop.
        logger.warning("request %s: the grammar refused token %d: %s", request.request_id, token, matcher.get_error())
        request.finish_reason = "stop"
    elif matcher.is_stopped():
        request.finish_reason = "stop"


def record_prompt_logprobs(chunk: ScheduledChunk, logits: torch.Tensor) -> None:
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
