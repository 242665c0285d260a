"""The engine: continuous batching over a paged KV cache, token ids in, token ids out.

`LLMEngine.step()` reads as schedule -> run -> process: the scheduler picks the batch, the
model runner builds the step's inputs and runs it (replaying CUDA graphs for decode
batches), one token is sampled for each request whose tokens are all computed, and the
output processor turns the draws into what each request produced. Requests join (`add_request`) and leave (`abort`, or finishing) between
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

Embeddings (`pooling`, set for `--task embed`): a request whose params carry `pooling` is a
prompt-only request whose chunks' final hidden states are pooled (`pooling.request_pooling`)
instead of sampled; it shares the batch, the chunked prefill and the prefix cache with
generation requests, and its pages are freed once its prompt is computed.

Speculative decoding (`speculative_config`): before scheduling, the `Speculator` proposes
draft tokens for the decoding requests that may speculate; each such request runs its last
token plus its drafts in one chunk, logits come back for all of them, the sampler draws at
every one of those positions, and the output processor keeps the drafts up to the first
one the target disagrees with, plus the target's own token there (see
`speculative.rejection_sampler`). Rejected drafts' KV stays in slots past the request's
computed length, overwritten by the next step. Proposing needs every token on the host, so
while speculation is on (at most `disable_by_batch_size` requests running) steps are read
before the next is launched: such steps run synchronously.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from max.errors import MaxError
from max.pipelines.lib.engine.output_processor import LaunchedStep, OutputProcessor
from max.pipelines.lib.engine.request import Request, RequestOutput
from max.pipelines.lib.engine.scheduler import ScheduledChunk, Scheduler
from max.pipelines.lib.engine.step_observer import StepObserver
from max.pipelines.lib.lora.lora_stats import LoRAStats, lora_stats
from max.pipelines.lib.lora.registry import LoRARegistry, adapter_ref
from max.pipelines.lib.model.multimodal import ImageInput
from max.pipelines.lib.model.pipeline_model import PipelineModel
from max.pipelines.lib.pooling.pooling_config import PoolingConfig
from max.pipelines.lib.pooling.request_pooling import RequestPooling
from max.pipelines.lib.runner.device_transfer import upload
from max.pipelines.lib.runner.input_batch import ModelInputs, PendingTokens, PooledRows
from max.pipelines.lib.runner.model_runner import ModelRunner
from max.pipelines.lib.sampling.sampler import SampledTokens, SamplingBatch, sample_on_device
from max.pipelines.lib.sampling.sampling_params import SamplingParams
from max.pipelines.lib.sampling.structured_output import GrammarBackend
from max.pipelines.lib.speculative.draft_masks import step_bitmask
from max.pipelines.lib.speculative.proposer import DraftProposer
from max.pipelines.lib.speculative.spec_decode_stats import SpecDecodeStats
from max.pipelines.lib.speculative.speculative_config import SpeculativeConfig
from max.pipelines.lib.speculative.speculator import Speculator

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
    spec_decode: SpecDecodeStats = field(default_factory=SpecDecodeStats)
    lora: LoRAStats = field(default_factory=LoRAStats)  # disabled unless `enable_lora` set adapters


def _as_seed(seed: int | None) -> int:
    """A signed 64-bit seed (random when None)."""
    value = random.getrandbits(64) if seed is None else seed & (2**64 - 1)
    return value - 2**64 if value >= 2**63 else value


class LLMEngine:
    """Runs many generation requests together; see the module docstring."""

    def __init__(
        self,
        runner: ModelRunner,
        max_batch_size: int,
        max_num_batched_tokens: int,
        eos_token_ids: set[int],
        vocab_size: int,
        enable_prefix_caching: bool = True,
        async_scheduling: bool = False,
        grammar: Callable[[], GrammarBackend] | None = None,
        freeze_startup_objects: bool = False,
        speculative_config: SpeculativeConfig | None = None,
        proposer: DraftProposer | None = None,
    ) -> None:
        self.runner = runner
        self.kv_cache = kv_cache = runner.kv_cache
        self.async_scheduling = async_scheduling
        self.scheduler = Scheduler(kv_cache, max_batch_size, max_num_batched_tokens, enable_prefix_caching)
        # A model whose image tokens see each other both ways needs each image in one chunk.
        self.scheduler.whole_images = bool(getattr(getattr(runner, "model", None), "bidirectional_images", False))
        self.eos_token_ids = set(eos_token_ids)
        self.vocab_size = vocab_size
        self.max_seq_len = runner.max_seq_len
        self._requests: dict[str, Request] = {}
        self.lora: LoRARegistry | None = None  # LoRA adapters, when `enable_lora` sets them
        self.pooling: PoolingConfig | None = None  # how embedding requests pool (None: refused)
        # Speculative decoding: the proposer of `speculative_config` (or `proposer`, e.g. a test's).
        self.speculator = Speculator(speculative_config, proposer) if speculative_config is not None else None
        spec_stats = self.speculator.stats if self.speculator is not None else None
        self.outputs = OutputProcessor(self.scheduler, kv_cache, self.eos_token_ids, self._requests, spec_stats)
        self.observers: list[StepObserver] = []
        self._arrivals = itertools.count()
        self._step_ids = itertools.count()
        self._inflight: LaunchedStep | None = None
        # The last launched step whose draws are not read yet: its placeholders' source.
        self._inflight_source: LaunchedStep | None = None
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
        lora: str | None = None,
    ) -> None:
        """Queues a request; raises MaxError if it cannot be served. `images` are the
        prompt's images, each on its run of image tokens (see `multimodal.ImageInput`);
        `lora` names the LoRA adapter it runs (None: the base model)."""
        if request_id in self._requests:
            raise MaxError(f"request id {request_id!r} is already in use")
        if not prompt_tokens:
            raise MaxError("the prompt is empty")
        params.validate(self.vocab_size)
        pooling = self._pooling(params)
        if pooling is not None:
            params = dataclasses.replace(params, max_new_tokens=0)  # nothing is sampled
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
        self.runner.check_images(images, prompt_tokens)
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
            lora=adapter_ref(self.lora, lora),
            pooling=pooling,
        )
        self._requests[request_id] = request
        self.scheduler.add(request)
        for observer in self.observers:
            observer.request_added(request_id, n)

    def _pooling(self, params: SamplingParams) -> RequestPooling | None:
        """The pooling of an embedding request (None for a generation request); raises
        MaxError if this engine does not embed or the request asks what the model cannot."""
        if params.pooling is None:
            return None
        if self.pooling is None:
            raise MaxError("this model does not serve embeddings (start it with --task embed)")
        self.pooling.check_dimensions(params.pooling.dimensions)
        return RequestPooling(self.pooling, params.pooling.dimensions)

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
        if self.speculator is not None:
            self.speculator.release(request_id)
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
            spec_decode=self.speculator.stats.copy() if self.speculator is not None else SpecDecodeStats(),
            lora=lora_stats(self.lora, self.scheduler.running, self.scheduler.waiting),
        )

    # -- stepping ------------------------------------------------------------------------
    def add_observer(self, observer: StepObserver) -> None:
        """Calls `observer` around every step from now on (see `step_observer`)."""
        self.observers.append(observer)

    def step(self) -> list[RequestOutput]:
        """Runs one batch; returns what the requests produced (with asynchronous scheduling,
        the tokens of the step launched by the previous call)."""
        for observer in self.observers:
            observer.step_started()
        previous = self._inflight
        self._inflight = None
        outputs: list[RequestOutput] = []
        speculating = self.speculator is not None and self.speculator.active(len(self.scheduler.running))
        if previous is not None and (previous.needs_host or not self.async_scheduling or speculating):
            outputs = self._process(previous)
            previous = None
        launched = self._launch()
        if previous is not None:
            outputs = self._process(previous)
        if launched is not None:
            if self.async_scheduling:
                self._inflight = launched
            else:
                outputs = self._process(launched)
        for observer in self.observers:
            observer.step_finished(outputs)
        return outputs

    @property
    def model(self) -> PipelineModel:
        """The runner's pipeline model (for tools and tests that look inside it)."""
        return self.runner.model

    def _launch(self) -> LaunchedStep | None:
        """Schedules a batch and queues its work on the device (the forward pass and the
        draws); reads nothing back."""
        drafts = self.speculator.drafts(self.scheduler.running) if self.speculator is not None else None
        plan = self.scheduler.schedule(drafts)
        for victim in plan.preempted:
            self.outputs.drop_pending(victim)
        chunks = plan.chunks
        if not chunks:
            self.runner.record_draws(None, None)
            return None
        if self.lora is not None:
            self.lora.assign([c.request for c in chunks])
        wants_all = [c.request.wants_prompt_logprobs for c in chunks]
        all_logits = wants_all if any(wants_all) else None
        inputs = self.runner.prepare(chunks, all_logits, self._pending())
        if self.observers:
            kind = self.runner.step_kind(inputs)
            for observer in self.observers:
                observer.step_launching(inputs, kind)
        logits = self.runner.execute(inputs)
        if inputs.pooled is not None:
            _pool(chunks, inputs.pooled)
        if self.speculator is not None:
            self.speculator.observe(inputs)
        for observer in self.observers:
            observer.step_launched(inputs)
        # A request draws a token once all its tokens are computed, unless it is at its limit
        # already (max_new_tokens == 0: the caller only wanted the prompt processed).
        drawing = [
            b
            for b, c in enumerate(chunks)
            if c.completes and len(c.request.tokens) < c.request.max_total_tokens
        ]
        sampled, first_rows = _sample(chunks, drawing, logits, inputs, self._grammar) if drawing else (None, None)
        step = LaunchedStep(
            next(self._step_ids),
            chunks,
            drawing,
            [c.completes for c in chunks],
            sampled,
            inputs,
            logits=logits if all_logits is not None else None,
            all_logits=all_logits,
            needs_host=all_logits is not None
            or any(c.request.params.has_penalties or c.request.matcher is not None or c.draft_tokens for c in chunks),
            request_ids=[c.request.request_id for c in chunks],
            sampler_rows=first_rows,
        )
        self.outputs.book(step)
        # The next decode step can be derived from this one only if everyone drew.
        everyone = len(drawing) == len(chunks) and first_rows is None
        self.runner.record_draws(inputs, sampled.tokens if everyone and sampled is not None else None)
        self._inflight_source = step
        return step

    def _pending(self) -> PendingTokens | None:
        """Where the draws of the launched step that have not reached the host yet are."""
        launched = self._inflight_source
        if launched is None or launched.sampled is None:
            return None
        first = launched.sampler_rows or range(len(launched.drawing))
        rows = {launched.chunks[b].request.request_id: first[i] for i, b in enumerate(launched.drawing)}
        return PendingTokens(launched.sampled.tokens, rows)

    def _process(self, step: LaunchedStep) -> list[RequestOutput]:
        """Reads a launched step's tokens and reports them (waits for the device)."""
        if self._inflight_source is step:
            self._inflight_source = None
        outputs = self.outputs.process(step)
        if self.speculator is not None:
            for out in outputs:
                if out.finished:
                    self.speculator.release(out.request_id)
        return outputs


def _sample(
    chunks: list[ScheduledChunk],
    drawing: list[int],
    logits: torch.Tensor,
    inputs: ModelInputs,
    grammar: GrammarBackend | None,
) -> tuple[SampledTokens, list[int] | None]:
    """Draws a token for each of the chunks `drawing` from its last logits row (and from
    each draft's row, at the output positions that follow), on the device; starts
    copying the draws to the host. Also returns each chunk's first sampler row when
    some chunk verifies drafts (None: row i is chunk drawing[i]'s)."""
    widths = [len(chunks[b].draft_tokens) + 1 for b in drawing]
    if len(drawing) == logits.shape[0]:
        rows = logits  # the usual case: every row draws, in order
    else:
        ends = [inputs.logits_rows[b].stop for b in drawing]
        index = [r for end, w in zip(ends, widths) for r in range(end - w, end)]
        # A verify step's rows all draw, in order; otherwise the drawing rows are picked by
        # an index uploaded without waiting for the device (a pageable copy would wait).
        rows = logits if index == list(range(logits.shape[0])) else logits[upload(np.array(index), logits.device)]
    reqs = [chunks[b].request for b, w in zip(drawing, widths) for _ in range(w)]
    steps = [chunks[b].request.num_output_tokens + i for b, w in zip(drawing, widths) for i in range(w)]
    params = [r.params for r in reqs]
    # Token histories only matter to penalties; copying them every step is not free.
    penalized = any(p.has_penalties for p in params)
    constrained = [row for row, r in enumerate(reqs) if r.matcher is not None]
    # A speculating request's masks follow its matcher through the drafts (`draft_masks`).
    matchers = [(c.request.matcher, c.draft_tokens) for c in (chunks[b] for b in drawing) if c.request.matcher is not None]
    bitmask = step_bitmask(grammar, matchers) if constrained else None
    sampled = sample_on_device(
        rows,
        SamplingBatch(
            params=params,
            seeds=[r.seed for r in reqs],
            steps=steps,
            prompt_tokens=[r.tokens[: r.num_prompt_tokens] for r in reqs] if penalized else (),
            output_tokens=[r.output_tokens for r in reqs] if penalized else (),
            token_bitmask=bitmask,
            bitmask_rows=constrained,
        ),
    )
    sampled.start_copy()
    first_rows = list(itertools.accumulate(widths, initial=0))[:-1] if len(reqs) > len(drawing) else None
    return sampled, first_rows


def _pool(chunks: list[ScheduledChunk], pooled: PooledRows) -> None:
    """Hands each embedding request the final hidden states of its chunk's pooled rows."""
    for b, chunk in enumerate(chunks):
        if chunk.request.pooling is not None:
            chunk.request.pooling.add(chunk.start, pooled.hidden[pooled.rows[b]])
