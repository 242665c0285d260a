"""The engine: continuous batching over a paged KV cache, token ids in, token ids out.

`LLMEngine.step()` asks the scheduler for a batch, prepares the step's ragged inputs,
runs the model (through the `ModelRunner`, which replays CUDA graphs for decode batches),
samples one token for each request whose tokens are all computed, and reports what each
request produced. Requests join (`add_request`) and leave (`abort`, or finishing) between
steps; a finished or aborted request's pages are freed at once.

With asynchronous scheduling (on by default on a GPU, as in vLLM v1 and SGLang) a step is
launched before the previous one's tokens have reached the host: each request that drew a
token gets a placeholder (-1) that the next step's inputs take from the device, and
`step()` then reads and reports the previous step's tokens while the GPU computes the new
one. The host's scheduling, bookkeeping and messaging thus overlap the GPU's work. A
request that stopped (EOS, stop token) is computed one step too many, and that step's
result is dropped. Steps that need sampled tokens on the host before the next one can be
prepared (penalties, prompt logprobs, structured outputs) are read at once.

Structured outputs: a constrained request's matcher must have consumed every token it drew
before its next mask is built, so a step with a constrained request in it is read before
the next one is launched (`needs_host`), as for penalties: batches with constrained requests
run synchronously, the others keep the overlap. (The alternative, building the mask of step
N+1 on the device from step N's tokens, would need the grammar on the device.)
"""

from __future__ import annotations

import gc
import itertools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from max.errors import MaxError
from max.kv_cache import PagedKVCache
from max.pipelines.lib.model_runner import ModelRunner
from max.pipelines.lib.multimodal import ImageInput
from max.pipelines.lib.pipeline_model import ModelInputs, PendingTokens, PipelineModel
from max.pipelines.lib.request import Request, RequestOutput, TokenLogprob
from max.pipelines.lib.sampler import SampledTokens, SamplingBatch, sample_on_device
from max.pipelines.lib.sampling_params import SamplingParams
from max.pipelines.lib.scheduler import ScheduledChunk, Scheduler
from max.pipelines.lib.structured_output import GrammarBackend

logger = logging.getLogger("max.pipelines.engine")


@dataclass
class EngineStats:
    """A snapshot of the engine's load, for metrics and tests."""

    num_running: int
    num_waiting: int
    kv_pages_in_use: int
    kv_pages_total: int
    kv_pages_cached: int
    num_preemptions: int


@dataclass
class _LaunchedStep:
    """A step whose work is queued on the device and whose tokens are not read yet."""

    step_id: int
    chunks: list[ScheduledChunk]
    drawing: list[int]  # indices of the chunks that drew a token, in sampler row order
    completes: list[bool]  # per chunk: it computed the request's last known token
    sampled: SampledTokens | None
    inputs: ModelInputs
    logits: torch.Tensor | None = None  # kept only for prompt logprobs
    all_logits: list[bool] | None = None
    # The next step needs this one's tokens on the host (penalties, prompt logprobs).
    needs_host: bool = False
    request_ids: list[str] = field(default_factory=list)


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
        runner: ModelRunner | None = None,
        async_scheduling: bool = False,
        grammar: Callable[[], GrammarBackend] | None = None,
        freeze_startup_objects: bool = False,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.runner = runner or ModelRunner(model, kv_cache, max_batch_size, use_cuda_graphs=False)
        self.async_scheduling = async_scheduling
        self.scheduler = Scheduler(kv_cache, max_batch_size, max_num_batched_tokens, enable_prefix_caching)
        self.eos_token_ids = set(eos_token_ids)
        self.vocab_size = vocab_size
        self.max_seq_len = model.max_seq_len
        self._requests: dict[str, Request] = {}
        self._arrivals = itertools.count()
        self._step_ids = itertools.count()
        self._inflight: _LaunchedStep | None = None
        # The last launched step whose draws are not read yet: its placeholders' source.
        self._inflight_source: _LaunchedStep | None = None
        # The last launched step, kept for the decode fast path (`prepare_next_token_inputs`).
        self._last_inputs: ModelInputs | None = None
        self._last_tokens: torch.Tensor | None = None
        self._last_page_counts: list[int] = []
        # Structured outputs: builds the grammar backend on the first constrained request
        # (None: no tokenizer, constraints are refused).
        self._grammar_factory = grammar
        self._grammar: GrammarBackend | None = None
        # The start-up objects (modules, graphs, the KV cache's tables) live as long as the
        # engine. Frozen, they are left out of Python's full collections, which otherwise
        # walk them all and stall a step for tens of milliseconds now and then (vLLM and
        # SGLang do the same after start-up); `close` unfreezes them.
        self._froze_startup_objects = freeze_startup_objects
        if freeze_startup_objects:
            gc.collect()
            gc.freeze()

    # -- requests ------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt_tokens: list[int],
        params: SamplingParams,
        images: Sequence[ImageInput] = (),
    ) -> None:
        """Queues a request; raises MaxError if it cannot be served. `images` are the
        prompt's images, each on its run of image tokens (see `multimodal.ImageInput`)."""
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
        images = tuple(images)
        self.model.check_images(images, prompt_tokens)
        matcher = self._matcher(params) if params.structured_output is not None else None
        request = Request(
            request_id=request_id,
            tokens=list(prompt_tokens),
            num_prompt_tokens=n,
            params=params,
            seed=_as_seed(params.seed),
            max_total_tokens=total,
            arrival=next(self._arrivals),
            matcher=matcher,
            images=images,
        )
        self._requests[request_id] = request
        self.scheduler.add(request)

    def _matcher(self, params: SamplingParams):
        """A matcher of the request's grammar (raises MaxError if it cannot have one)."""
        if self._grammar is None:
            if self._grammar_factory is None:
                raise MaxError("structured outputs need the model's tokenizer (this engine runs without one)")
            try:
                self._grammar = self._grammar_factory()
            except MaxError:
                raise
            except Exception as e:  # e.g. llguidance takes only fast (Rust) tokenizers
                raise MaxError(f"structured outputs are not available with this tokenizer: {e}") from None
        return self._grammar.matcher(params.structured_output)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Cancels a request (no-op if unknown or finished); its pages are freed now."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return None
        self.scheduler.remove(request)
        request.finish_reason = "abort"
        return RequestOutput(request_id, [], True, "abort", num_prompt_tokens=request.num_prompt_tokens)

    def close(self) -> None:
        """Stops what the engine started (the other tensor-parallel ranks), and returns the
        objects frozen at start-up to the garbage collector."""
        self.runner.close()
        if self._froze_startup_objects:
            gc.unfreeze()
            self._froze_startup_objects = False

    def request_ids(self) -> list[str]:
        """Ids of the requests waiting or running."""
        return list(self._requests)

    def has_unfinished(self) -> bool:
        """Any request is waiting or running, or a step's results are still to be read."""
        return self.scheduler.has_work() or self._inflight is not None

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
    def step(self) -> list[RequestOutput]:
        """Runs one batch; returns what the requests produced (with asynchronous scheduling,
        the tokens of the step launched by the previous call)."""
        previous = self._inflight
        self._inflight = None
        outputs: list[RequestOutput] = []
        if previous is not None and (previous.needs_host or not self.async_scheduling):
            outputs = self._finalize(previous)
            previous = None
        launched = self._launch()
        if previous is not None:
            outputs = self._finalize(previous)
        if launched is not None:
            if self.async_scheduling:
                self._inflight = launched
            else:
                outputs = self._finalize(launched)
        return outputs

    def _inputs(self, chunks: list[ScheduledChunk], all_logits: list[bool] | None) -> ModelInputs:
        """Step inputs, derived on device from the last step when it is a plain repeat."""
        ids = [c.request.request_id for c in chunks]
        page_counts = [len(self.kv_cache.pages(i)) for i in ids]
        last = self._last_inputs
        if (
            last is not None
            and self._last_tokens is not None
            and all_logits is None
            and last.request_ids == ids
            and page_counts == self._last_page_counts
            and all(c.num_tokens == 1 for c in chunks)
        ):
            inputs = self.model.prepare_next_token_inputs(self._last_tokens, last)
        else:
            pending = None
            launched = self._inflight_source
            if launched is not None and launched.sampled is not None:
                rows = {launched.chunks[b].request.request_id: i for i, b in enumerate(launched.drawing)}
                pending = PendingTokens(launched.sampled.tokens, rows)
            inputs = self.model.prepare_initial_token_inputs(chunks, self.kv_cache, all_logits, pending)
        self._last_page_counts = page_counts
        return inputs

    def _launch(self) -> _LaunchedStep | None:
        """Schedules a batch and queues its work on the device; reads nothing back."""
        plan = self.scheduler.schedule()
        for victim in plan.preempted:
            self._drop_pending(victim)
        chunks = plan.chunks
        if not chunks:
            self._last_inputs = self._last_tokens = None
            return None
        wants_all = [c.request.wants_prompt_logprobs for c in chunks]
        all_logits = wants_all if any(wants_all) else None
        inputs = self._inputs(chunks, all_logits)
        logits = self.runner.execute(inputs)

        # A request draws a token once all its tokens are computed, unless it is at its limit
        # already (max_new_tokens == 0: the caller only wanted the prompt processed).
        drawing = [
            b
            for b, c in enumerate(chunks)
            if c.completes and len(c.request.tokens) < c.request.max_total_tokens
        ]
        sampled = None
        step_id = next(self._step_ids)
        if drawing:
            reqs = [chunks[b].request for b in drawing]
            if len(drawing) == logits.shape[0]:
                rows = logits  # the usual case: every row draws, in order
            else:
                last_rows = [inputs.logits_rows[b].stop - 1 for b in drawing]
                rows = logits[torch.tensor(last_rows, device=logits.device)]
            params = [r.params for r in reqs]
            # Token histories only matter to penalties; copying them every step is not free.
            penalized = any(p.has_penalties for p in params)
            constrained = [row for row, r in enumerate(reqs) if r.matcher is not None]
            bitmask = self._grammar.fill_bitmask([reqs[row].matcher for row in constrained]) if constrained else None
            sampled = sample_on_device(
                rows,
                SamplingBatch(
                    params=params,
                    seeds=[r.seed for r in reqs],
                    steps=[r.num_output_tokens for r in reqs],
                    prompt_tokens=[r.tokens[: r.num_prompt_tokens] for r in reqs] if penalized else (),
                    output_tokens=[r.output_tokens for r in reqs] if penalized else (),
                    token_bitmask=bitmask,
                    bitmask_rows=constrained,
                ),
            )
            sampled.start_copy()
        completes = [c.completes for c in chunks]
        step = _LaunchedStep(step_id, chunks, drawing, completes, sampled, inputs, all_logits=all_logits)
        step.request_ids = [c.request.request_id for c in chunks]
        if all_logits is not None:
            step.logits = logits
        step.needs_host = all_logits is not None or any(
            c.request.params.has_penalties or c.request.matcher is not None for c in chunks
        )

        # Book the step as done: the device will have computed these tokens before anything
        # launched later reads them.
        drew = set(drawing)
        for b, chunk in enumerate(chunks):
            chunk.request.num_computed += chunk.num_tokens
            if completes[b] and b not in drew:
                self.scheduler.remove(chunk.request)  # prompt only: finished once read
        for row, b in enumerate(drawing):
            request = chunks[b].request
            request.pending.append((step_id, row, len(request.tokens)))
            request.tokens.append(-1)
            if len(request.tokens) >= request.max_total_tokens:
                # Its last token: nothing more to schedule; the step's result is read later.
                self.scheduler.remove(request)
        # Keep this step for the decode fast path only if everyone drew.
        everyone = len(drawing) == len(chunks)
        self._last_inputs = inputs if everyone else None
        self._last_tokens = sampled.tokens if everyone and sampled is not None else None
        self._inflight_source = step
        return step

    def _drop_pending(self, request: Request) -> None:
        """A preempted request forgets the token it is still drawing; recomputing it later
        draws the same one again (the noise is a function of seed and position)."""
        if request.pending:
            del request.tokens[request.pending[0][2] :]
            request.pending.clear()

    def _finalize(self, step: _LaunchedStep) -> list[RequestOutput]:
        """Reads a launched step's tokens and reports them (waits for the device)."""
        host = step.sampled.to_host() if step.sampled is not None else None
        if self._inflight_source is step:
            self._inflight_source = None
        outputs: dict[str, RequestOutput] = {}
        live = [
            (b, c.request)
            for b, c in enumerate(step.chunks)
            if self._requests.get(c.request.request_id) is c.request
        ]
        for b, _ in live:
            if step.all_logits is not None and step.all_logits[b]:
                self._record_prompt_logprobs(step.chunks[b], step.logits[step.inputs.logits_rows[b]])
        for row, b in enumerate(step.drawing):
            request = step.chunks[b].request
            entry = next((p for p in request.pending if p[0] == step.step_id), None)
            if entry is None or self._requests.get(request.request_id) is not request:
                continue  # preempted, aborted or finished since the launch
            request.pending.remove(entry)
            index = entry[2]
            token = host.tokens[row]
            request.tokens[index] = token
            out = outputs.setdefault(request.request_id, self._output(request))
            out.new_token_ids.append(token)
            if request.params.logprobs is not None:
                top = []
                if request.params.logprobs > 0:
                    k = request.params.logprobs
                    top = list(zip(host.top_ids[row][:k], host.top_logprobs[row][:k]))
                out.logprobs = [TokenLogprob(token, host.logprobs[row], top)]
            self._check_finished(request, token, index + 1)
            if request.matcher is not None and request.finish_reason is None:
                self._advance_matcher(request, token)

        drew = set(step.drawing)
        for b, request in live:
            known = request.pending[0][2] if request.pending else len(request.tokens)
            self.kv_cache.commit(request.request_id, request.prefix_key_tokens, min(request.num_computed, known))
            out = outputs.setdefault(request.request_id, self._output(request))
            if step.completes[b] and request.prompt_logprobs and request.num_output_tokens <= 1:
                out.prompt_logprobs = [None, *request.prompt_logprobs]
            if b not in drew and step.completes[b]:
                request.finish_reason = "length"  # max_new_tokens == 0: prompt only
            if request.finish_reason is not None:
                out.finished = True
                out.finish_reason = request.finish_reason
                self.scheduler.remove(request)
                self._requests.pop(request.request_id, None)
        return [outputs[rid] for rid in step.request_ids if rid in outputs]

    def _output(self, request: Request) -> RequestOutput:
        return RequestOutput(
            request.request_id,
            [],
            num_prompt_tokens=request.num_prompt_tokens,
            num_cached_tokens=request.num_cached_prompt_tokens,
        )

    def _check_finished(self, request: Request, token: int, length: int) -> None:
        """Sets the finish reason once the token at position `length` - 1 ends the request."""
        params = request.params
        if token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids):
            request.finish_reason = "stop"
        elif length >= request.max_total_tokens:
            request.finish_reason = "length"

    def _advance_matcher(self, request: Request, token: int) -> None:
        """Feeds the drawn token to the request's grammar; a finished grammar (nothing may
        follow but EOS) ends the request."""
        matcher = request.matcher
        if not matcher.consume_token(token):
            # Cannot happen while masks are applied; end the request rather than loop.
            logger.warning("request %s: the grammar refused token %d: %s", request.request_id, token, matcher.get_error())
            request.finish_reason = "stop"
        elif matcher.is_stopped():
            request.finish_reason = "stop"

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
