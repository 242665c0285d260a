"""Running a pipeline model's steps on its device; on CUDA, decode steps replay CUDA graphs.

A decode step of a small batch is hundreds of short kernels: launched one by one from
Python, the GPU waits for the host most of the time. At start-up the runner captures the
model's decode forward once per batch-size bucket into a CUDA graph over persistent input
buffers (token ids, positions, context lengths, slots, page table); a step then copies its
inputs into those buffers (a batch padded up to the next bucket: padding rows have no
keys and write no KV) and replays the graph, a single launch. A step that prefills one
request (the first token of a lone request: time to first token) replays a graph too, one
per bucket of prompt-chunk lengths up to `MAX_PREFILL_GRAPH_TOKENS`: padding rows run
through the products but write no KV, and the prefill kernel reads the real length from
the device. Other steps (mixed, several prefills, larger batches) run eagerly on the same
kernels. Speculative decoding's verify steps (1 + k rows per request) replay graphs
bucketed by batch size and draft count (`verify_graphs`). This is vLLM's GPU model
runner's part, kept out of both the engine and the architecture's `PipelineModel`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from max.kv_cache import PagedKVCache
from max.nn import step_context
from max.pipelines.lib.engine.scheduler import ScheduledChunk
from max.pipelines.lib.model.multimodal import ImageInput
from max.pipelines.lib.model.pipeline_model import PipelineModel
from max.pipelines.lib.runner.eager_warmup import warm_eager_kernels
from max.pipelines.lib.runner.input_batch import InputBatchBuilder, ModelInputs, PendingTokens
from max.pipelines.lib.runner.verify_graphs import VerifyGraphs, verify_graph_shapes
from max_kernels import RaggedLayout

logger = logging.getLogger("max.pipelines")


# The longest prompt chunk a single-request prefill graph takes; longer ones run eagerly
# (there the GPU's work, not the launches, dominates).
MAX_PREFILL_GRAPH_TOKENS = 512


def prefill_graph_sizes(max_tokens: int) -> list[int]:
    """Prompt-chunk lengths that get a prefill graph: 16, then every 32 to 256 and every 64
    to `MAX_PREFILL_GRAPH_TOKENS` (a chunk is padded by fewer than 32 tokens up to 256, 64
    beyond; below ~256 tokens the products' time is the weights' read, not the rows),
    capped at the step's token budget."""
    sizes = [16, *range(32, 257, 32), *range(320, MAX_PREFILL_GRAPH_TOKENS + 1, 64)]
    cap = min(max_tokens, MAX_PREFILL_GRAPH_TOKENS)
    return [s for s in sizes if s < cap] + ([cap] if cap > 0 else [])


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    """The decode batch sizes that get a CUDA graph: 1, 2, 4, 8, then every 16."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_batch_size]
    sizes += list(range(16, max_batch_size, 16))
    return sorted({*sizes, max_batch_size})


@dataclass
class _Graph:
    """One captured decode step of `batch_size` rows and its logits output buffer."""

    batch_size: int
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor


class ModelRunner:
    """Owns the step for the engine: builds its inputs (`InputBatchBuilder`) and runs it,
    replaying a graph for decode batches and single-request prefills, eagerly otherwise."""

    def __init__(
        self,
        model: PipelineModel,
        kv_cache: PagedKVCache,
        max_batch_size: int,
        use_cuda_graphs: bool,
        max_prefill_tokens: int = 0,
        warm_eager: bool = False,
        verify_drafts: int = 0,
        verify_batch_size: int = 0,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.inputs = InputBatchBuilder(model, kv_cache)
        self._graphs: dict[int, _Graph] = {}
        self._sizes: list[int] = []
        self._prefill_graphs: dict[int, _Graph] = {}
        self._prefill_sizes: list[int] = []
        self.num_replays = 0
        self.num_prefill_replays = 0
        # Verify steps of up to `verify_drafts` drafts for up to `verify_batch_size` requests.
        self.verify = VerifyGraphs(model, kv_cache)
        if use_cuda_graphs and model.device.type == "cuda":
            self._capture(graph_batch_sizes(max_batch_size))
            if max_prefill_tokens > 0:
                self._capture_prefill(prefill_graph_sizes(min(max_prefill_tokens, model.max_seq_len)))
            if verify_drafts > 0 and getattr(model, "lora", None) is None:
                pool = torch.cuda.graph_pool_handle()
                shapes = verify_graph_shapes(verify_drafts, verify_batch_size, max_prefill_tokens or model.max_seq_len)
                self.verify.capture(shapes, lambda layout, args, out: self._record(pool, layout, args, out))
        if warm_eager and model.device.type == "cuda":
            warm_eager_kernels(model, kv_cache, self.inputs)

    @property
    def max_seq_len(self) -> int:
        """Longest sequence (prompt + output) the model serves."""
        return self.model.max_seq_len

    def check_images(self, images: Sequence[ImageInput], prompt_tokens: Sequence[int]) -> None:
        """Raises MaxError unless the model can take `images` for this prompt."""
        self.model.check_images(images, prompt_tokens)

    def prepare(
        self,
        chunks: Sequence[ScheduledChunk],
        all_logits: Sequence[bool] | None = None,
        pending: PendingTokens | None = None,
    ) -> ModelInputs:
        """The device inputs of a step that runs `chunks` (see `InputBatchBuilder.prepare`)."""
        return self.inputs.prepare(chunks, all_logits, pending)

    def record_draws(self, inputs: ModelInputs | None, tokens: torch.Tensor | None) -> None:
        """What the step of `inputs` drew: `tokens` [B] on the device when every request
        drew one (the next decode step can then be derived from them), else None."""
        self.inputs.record_draws(inputs, tokens)

    @property
    def graph_batch_sizes(self) -> list[int]:
        """Batch sizes with a captured decode graph (empty when running eagerly)."""
        return list(self._sizes)

    @property
    def prefill_graph_sizes(self) -> list[int]:
        """Prompt-chunk lengths with a captured single-request prefill graph."""
        return list(self._prefill_sizes)

    def step_kind(self, inputs: ModelInputs) -> str:
        """How `execute` will run these inputs (one of `step_observer.STEP_KINDS`)."""
        layout = inputs.layout
        b, nd = layout.num_requests, layout.num_decode
        # Graphs output logits only: steps that pool hidden states run eagerly.
        if not inputs.has_images and inputs.pooled is None:
            if self._sizes and nd == b and b <= self._sizes[-1] and len(inputs.logits_rows) == b:
                return "graph_decode"
            if (
                self._prefill_sizes
                and b == 1
                and nd == 0
                and layout.query_lens[0] <= self._prefill_sizes[-1]
                and inputs.logits_indices.shape[0] == 1
            ):
                return "graph_prefill"
            if self.verify.bucket_for(inputs) is not None:
                return "graph_verify"
        return "eager_decode" if nd == b else ("eager_mixed" if nd > 0 else "eager_prefill")

    def execute(self, inputs: ModelInputs) -> torch.Tensor:
        """Float32 logits [N, vocab] of the step, one row per `inputs.logits_indices` entry.

        A graph step returns a view of the graph's output buffer: valid until the next step.
        """
        kind = self.step_kind(inputs)
        if kind == "graph_decode":
            return self._replay(inputs)
        if kind == "graph_prefill":
            return self._replay_prefill(inputs)
        if kind == "graph_verify":
            return self.verify.replay(inputs)
        return self.model.execute(inputs).logits

    def close(self) -> None:
        """Releases the captured graphs once the device's queued work is done; no step runs
        after this. Under tensor parallelism the graphs hold captured collectives, so they
        go before the group is left."""
        if self._graphs or self._prefill_graphs or self.verify.shapes:
            torch.cuda.synchronize(self.model.device)
        self._graphs.clear()
        self._prefill_graphs.clear()
        self.verify.clear()
        self._sizes, self._prefill_sizes = [], []

    # -- capture -------------------------------------------------------------------------
    def _capture(self, sizes: list[int]) -> None:
        start = time.perf_counter()
        model, device = self.model, self.model.device
        largest = sizes[-1]
        width = self.kv_cache.params.pages_for_tokens(model.max_seq_len)
        self._tokens = torch.zeros(largest, dtype=torch.int64, device=device)
        self._positions = torch.zeros(largest, dtype=torch.int64, device=device)
        self._context_lens = torch.zeros(largest, dtype=torch.int32, device=device)
        self._slots = torch.full((largest,), -1, dtype=torch.int64, device=device)
        self._page_table = torch.zeros(largest, width, dtype=torch.int32, device=device)
        self._query_start = torch.arange(largest + 1, dtype=torch.int32, device=device)
        self._rows = torch.arange(largest, dtype=torch.int64, device=device)
        # Every graph copies its logits into this one buffer: an output kept alive per graph
        # would pin its memory in the shared pool (gigabytes over dozens of batch sizes).
        self._logits = torch.empty(largest, model.model_config.vocab_size, dtype=torch.float32, device=device)
        pool = torch.cuda.graph_pool_handle()
        # Largest first: the smaller graphs then fit in the memory the first one took.
        for size in reversed(sizes):
            args = (self._tokens[:size], self._positions[:size], self._rows[:size])
            graph = self._record(pool, lambda size=size: self._layout(size), args, self._logits[:size])
            self._graphs[size] = _Graph(size, graph, self._logits[:size])
        torch.cuda.synchronize(device)
        self._sizes = sorted(sizes)
        logger.info(
            "captured CUDA graphs for decode batch sizes %s in %.1f s",
            _ranges(self._sizes),
            time.perf_counter() - start,
        )

    def _capture_prefill(self, sizes: list[int]) -> None:
        """One graph per chunk length: one request's tokens, its last token's logits."""
        start = time.perf_counter()
        model, device = self.model, self.model.device
        largest = sizes[-1]
        width = self.kv_cache.params.pages_for_tokens(model.max_seq_len)
        self._p_tokens = torch.zeros(largest, dtype=torch.int64, device=device)
        self._p_positions = torch.arange(largest, dtype=torch.int64, device=device)
        self._p_slots = torch.full((largest,), -1, dtype=torch.int64, device=device)
        self._p_query_start = torch.tensor([0, largest], dtype=torch.int32, device=device)
        self._p_context_lens = torch.tensor([largest], dtype=torch.int32, device=device)
        self._p_page_table = torch.zeros(1, width, dtype=torch.int32, device=device)
        self._p_logits_index = torch.tensor([largest - 1], dtype=torch.int64, device=device)
        self._p_logits = torch.empty(1, model.model_config.vocab_size, dtype=torch.float32, device=device)
        pool = torch.cuda.graph_pool_handle()
        try:
            for size in reversed(sizes):

                def layout(size: int = size) -> RaggedLayout:
                    return RaggedLayout(
                        query_start=self._p_query_start,
                        context_lens=self._p_context_lens,
                        page_table=self._p_page_table,
                        slot_mapping=self._p_slots[:size],
                        page_size=self.kv_cache.page_size,
                        num_decode=0,
                        # The grid covers `size` rows; the kernel reads the real length.
                        query_lens=[size],
                        context_lens_host=None,
                    )

                # Capture-time inputs: one request of `size` tokens, its last row's logits.
                self._p_query_start[1] = size
                self._p_context_lens.fill_(size)
                self._p_logits_index.fill_(size - 1)
                args = (self._p_tokens[:size], self._p_positions[:size], self._p_logits_index)
                graph = self._record(pool, layout, args, self._p_logits)
                self._prefill_graphs[size] = _Graph(size, graph, self._p_logits)
        except Exception as e:  # an architecture whose prefill cannot be captured runs it eagerly
            logger.warning("prefill steps run eagerly: capturing them failed (%s: %s)", type(e).__name__, e)
            self._prefill_graphs.clear()
            torch.cuda.synchronize(device)
            return
        torch.cuda.synchronize(device)
        self._prefill_sizes = sorted(sizes)
        logger.info(
            "captured CUDA graphs for single-request prefills of %s tokens in %.1f s",
            _ranges(self._prefill_sizes),
            time.perf_counter() - start,
        )

    def _record(
        self, pool, layout: Callable[[], RaggedLayout], args: tuple, out: torch.Tensor
    ) -> torch.cuda.CUDAGraph:
        """Runs the network once eagerly (compiling the Triton kernels and warming the
        allocator), then captures it writing its logits into `out`. Each run gets a fresh
        layout: one that ran eagerly has cached derived tensors outside the graph, which
        replays would then read stale."""
        model = self.model.model
        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), step_context(layout(), self.kv_cache):
                model(*args)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool), step_context(layout(), self.kv_cache):
                out.copy_(model(*args))
        return graph

    def _layout(self, size: int) -> RaggedLayout:
        """The step layout a graph of `size` rows reads, over the persistent buffers."""
        return RaggedLayout(
            query_start=self._query_start[: size + 1],
            context_lens=self._context_lens[:size],
            page_table=self._page_table[:size],
            slot_mapping=self._slots[:size],
            page_size=self.kv_cache.page_size,
            num_decode=size,
            query_lens=[1] * size,
            context_lens_host=None,
            num_splits=self.inputs.decode_splits(size, self.model.max_seq_len),
        )

    # -- replay --------------------------------------------------------------------------
    def _replay(self, inputs: ModelInputs) -> torch.Tensor:
        layout = inputs.layout
        b = layout.num_requests
        size = next(s for s in self._sizes if s >= b)
        self._tokens[:b].copy_(inputs.tokens)
        self._positions[:b].copy_(inputs.positions)
        self._context_lens[:b].copy_(layout.context_lens)
        self._slots[:b].copy_(layout.slot_mapping)
        width = layout.page_table.shape[1]
        self._page_table[:b, :width].copy_(layout.page_table)
        if size > b:
            # Padding rows: no keys to read, no KV to write.
            self._context_lens[b:size].zero_()
            self._slots[b:size].fill_(-1)
        entry = self._graphs[size]
        entry.graph.replay()
        self.num_replays += 1
        return entry.logits[:b]

    def _replay_prefill(self, inputs: ModelInputs) -> torch.Tensor:
        layout = inputs.layout
        n = layout.query_lens[0]
        size = next(s for s in self._prefill_sizes if s >= n)
        # Padding rows keep earlier (valid) token ids and positions; they must write no KV.
        self._p_tokens[:n].copy_(inputs.tokens)
        self._p_positions[:n].copy_(inputs.positions)
        self._p_slots[:n].copy_(layout.slot_mapping)
        if size > n:
            self._p_slots[n:size].fill_(-1)
        self._p_query_start.copy_(layout.query_start)
        self._p_context_lens.copy_(layout.context_lens)
        width = layout.page_table.shape[1]
        self._p_page_table[:, :width].copy_(layout.page_table)
        self._p_logits_index.copy_(inputs.logits_indices)
        self._prefill_graphs[size].graph.replay()
        self.num_prefill_replays += 1
        return self._p_logits


def _ranges(sizes: list[int]) -> str:
    return ", ".join(str(s) for s in sizes) if len(sizes) <= 8 else f"{sizes[0]}..{sizes[-1]} ({len(sizes)} sizes)"
