"""`PipelineModel`: builds an architecture's network, loads its weights, runs its steps.

The base class does everything that is the same for decoder-only language models;
an architecture's `model.py` subclasses it and names its config class (and, if its network
is not the generic `max.nn.Transformer`, overrides `build_network`).

A step runs a ragged batch: the new tokens of every scheduled request concatenated into
one flat tensor, with row offsets per request (MAX's layout). `prepare_initial_token_inputs`
builds that from the scheduler's chunks; `prepare_next_token_inputs` derives the next
decode step's inputs from the previous ones without going back to Python lists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from max.errors import MaxError
from max.kv_cache import KVCacheParams, PagedKVCache
from max.nn import DecoderConfig, TensorParallel, Transformer, step_context
from max.nn.checkpoint_layout import leaves, parameter_sources
from max.nn.fp8_linear import quantize_linears_fp8
from max.nn.quantized_linear import quantize_linears
from max.pipelines.lib.config import PipelineConfig
from max.pipelines.lib.device_transfer import upload
from max.pipelines.lib.hf_config import text_config
from max.pipelines.lib.multimodal import ImageInput, check_images
from max.pipelines.lib.scheduler import ScheduledChunk
from max.pipelines.lib.weights import Checkpoint, fill_dummy_weights, load_checkpoint_into
from max_kernels import RaggedLayout
from max_kernels.decode_attention import default_num_splits

_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
)


@contextlib.contextmanager
def skip_parameter_init() -> Iterator[None]:
    """Turns torch.nn.init's initializers into no-ops while a network is being shaped:
    its weights come from the checkpoint, so random init would be wasted work (and on the
    meta device its first use alone costs seconds)."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


# GGUF encodings of more than four bits per weight: under int4 their layers stay int8
# (a float checkpoint's layers are quantized as asked).
_WIDE_GGUF = {"Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0", "Q8_K"}


def _wide_layers(network: nn.Module, state: Any) -> set[str]:
    """Module paths of the layers whose weight comes from a GGUF tensor stored with more
    than four bits (kept int8 under int4 quantization)."""
    wide = set()
    for name, source in parameter_sources(network).items():
        if name.endswith(".weight") and any(getattr(state[leaf], "encoding", "") in _WIDE_GGUF for leaf in leaves(source)):
            wide.add(name.removesuffix(".weight"))
    return wide


@dataclass
class ModelInputs:
    """One step's inputs, on the model's device.

    `positions` are the tokens' rotary positions (equal to their index in the request's
    cache for text models; a vision-language model's positions after an image are offset).
    `logits_indices` lists the token rows whose logits are wanted, grouped by request in
    batch order; `logits_rows[b]` is the slice of those rows that belongs to request b.
    A step holding image tokens also carries `rope_positions` (M-RoPE's [3, T] positions,
    which the network then rotates by) and `embeds` (rows, vectors) that replace those
    rows' token embeddings; such a step always runs eagerly.
    """

    tokens: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    layout: RaggedLayout
    logits_indices: torch.Tensor  # int64 [N]
    logits_rows: list[slice]
    request_ids: list[str]
    kv_cache: PagedKVCache
    rope_positions: torch.Tensor | None = None  # int64 [3, T]
    embeds: tuple[torch.Tensor, torch.Tensor] | None = None  # int64 [R], [R, hidden]

    @property
    def has_images(self) -> bool:
        """The step carries image embeddings or multimodal positions (no graph replays it)."""
        return self.embeds is not None or self.rope_positions is not None


@dataclass
class ModelOutputs:
    """Float32 logits [N, vocab], one row per entry of `ModelInputs.logits_indices`."""

    logits: torch.Tensor


@dataclass
class PendingTokens:
    """Tokens sampled by the previous step, still on the device (asynchronous scheduling):
    `tokens[rows[request_id]]` is the token that request drew."""

    tokens: torch.Tensor
    rows: dict[str, int]

    def fill(self, tokens: torch.Tensor, request_ids: Sequence[str], where: np.ndarray) -> torch.Tensor:
        """`tokens` with the placeholder rows (`where`) replaced by the requests' draws."""
        src = np.full(len(where), -1, dtype=np.int64)
        src[where] = [self.rows[r] for r in request_ids]
        src_t = upload(src, tokens.device)
        drawn = self.tokens[src_t.clamp(min=0)]
        return torch.where(src_t >= 0, drawn, tokens)


class PipelineModel:
    """Base class of every architecture's model: see the module docstring."""

    # The architecture's config class: a DecoderConfig (sub)class with a classmethod
    # `from_huggingface(hf_config, max_seq_len)`.
    config_class: ClassVar[type[DecoderConfig]]
    # The token id that marks an image's positions in a prompt (None: the model takes no
    # images; vision-language models set it from their config).
    image_token_id: int | None = None

    def __init__(
        self,
        pipeline_config: PipelineConfig,
        hf_config: Any,
        checkpoint: Checkpoint | None,
        weight_adapter: Any,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.pipeline_config = pipeline_config
        self.hf_config = hf_config
        self.dtype = dtype
        self.device = device
        self.max_seq_len = self.calculate_max_seq_len(pipeline_config, hf_config)
        self.model_config = self.config_class.from_huggingface(hf_config, self.max_seq_len)
        self.model = self.load_model(checkpoint, weight_adapter)

    # -- sizes ---------------------------------------------------------------------------
    @classmethod
    def calculate_max_seq_len(cls, pipeline_config: PipelineConfig, hf_config: Any) -> int:
        """Longest sequence (prompt + output) the model serves."""
        model_max = int(getattr(text_config(hf_config), "max_position_embeddings", 0) or 0)
        wanted = pipeline_config.max_length
        if wanted is None:
            if not model_max:
                raise MaxError("the model config has no max_position_embeddings: pass --max-length")
            return model_max
        if model_max and wanted > model_max:
            raise MaxError(
                f"--max-length {wanted} exceeds the model's maximum of {model_max} positions"
            )
        return wanted

    @classmethod
    def get_num_layers(cls, hf_config: Any) -> int:
        """Decoder layers (each has its own KV cache)."""
        return int(text_config(hf_config).num_hidden_layers)

    @classmethod
    def get_kv_params(
        cls, hf_config: Any, pipeline_config: PipelineConfig, dtype: torch.dtype
    ) -> KVCacheParams:
        """The KV cache geometry this model needs."""
        config = cls.config_class.from_huggingface(hf_config, 1)
        # Under tensor parallelism every rank caches the KV heads its query heads read.
        kv_start, kv_stop = TensorParallel(0, pipeline_config.tp_size).kv_heads(config.num_kv_heads)
        return KVCacheParams(
            num_layers=cls.get_num_layers(hf_config),
            num_kv_heads=kv_stop - kv_start,
            head_dim=config.head_dim,
            page_size=pipeline_config.kv_cache_page_size,
            dtype=dtype,
        )

    @classmethod
    def estimate_kv_cache_size(
        cls, pipeline_config: PipelineConfig, hf_config: Any, dtype: torch.dtype
    ) -> int:
        """Bytes of KV cache for a full batch of full-length requests (an upper bound)."""
        params = cls.get_kv_params(hf_config, pipeline_config, dtype)
        max_len = cls.calculate_max_seq_len(pipeline_config, hf_config)
        pages = params.pages_for_tokens(max_len) * pipeline_config.max_batch_size
        return pages * params.bytes_per_page

    def estimate_activation_memory(self, max_batch_tokens: int, max_batch_size: int) -> int:
        """Bytes one step's activations may take at most (a rough upper bound), which the KV
        cache must leave free: the widest intermediate tensors of a layer for every token of
        the step, and the float32 logits of a full batch (a graph's output buffer, an eager
        step's, and a sampler's copy)."""
        c = self.model_config
        elem = torch.empty((), dtype=self.dtype).element_size()
        inter = c.intermediate_size
        if c.moe is not None:
            inter = max(inter, c.moe.moe_intermediate_size * c.moe.num_experts_per_tok)
        width = 6 * c.hidden_size + 3 * inter + 3 * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        return max_batch_tokens * width * elem + 3 * max_batch_size * c.vocab_size * 4

    def check_images(self, images: Sequence[ImageInput], prompt_tokens: Sequence[int]) -> None:
        """Raises MaxError unless the model can take `images` for this prompt (a text model
        takes none)."""
        check_images(images, prompt_tokens, self.image_token_id)

    # -- building ------------------------------------------------------------------------
    def build_network(self) -> nn.Module:
        """The network for `self.model_config`; architectures with their own blocks override."""
        return Transformer(self.model_config)

    def load_model(self, checkpoint: Checkpoint | None, weight_adapter: Any) -> nn.Module:
        """Builds the network without allocating, then fills it from the checkpoint.

        With no checkpoint (`--load-format dummy`) the weights are random. Under weight-only
        quantization (a quantized encoding on the CPU) the weights are read in float32,
        the linear layers quantized from those values, and the rest cast to `self.dtype`.
        """
        scheme = self.pipeline_config.weight_quantization()
        with torch.device("meta"), skip_parameter_init():
            network = self.build_network()
        network = network.to_empty(device=self.device).to(torch.float32 if scheme else self.dtype)
        for module in network.modules():
            init = getattr(module, "init_buffers", None)
            if init is not None:
                init(self.device)
        if checkpoint is None:
            fill_dummy_weights(network, self.pipeline_config.seed)
        else:
            state = weight_adapter(checkpoint, self.hf_config)
            load_checkpoint_into(network, state, torch.float32 if scheme else self.dtype, self.device)
        if self.pipeline_config.quantization == "fp8":
            quantize_linears_fp8(network)
        if scheme:
            keep_int8 = () if checkpoint is None else _wide_layers(network, state)
            quantize_linears(network, scheme, self.dtype, keep_int8)
            with torch.no_grad():
                for param in network.parameters():
                    param.data = param.data.to(self.dtype)
        return network.eval()

    # -- steps ---------------------------------------------------------------------------
    def decode_splits(self, batch_size: int, max_context: int) -> int:
        """How many parts the GPU decode-attention kernel cuts each context into (split-K)."""
        if self.device.type != "cuda":
            return 1
        kv_start, kv_stop = TensorParallel(0, self.pipeline_config.tp_size).kv_heads(self.model_config.num_kv_heads)
        return default_num_splits(batch_size, kv_stop - kv_start, max_context)

    def prepare_initial_token_inputs(
        self,
        batch: Sequence[ScheduledChunk],
        kv_cache: PagedKVCache,
        all_logits: Sequence[bool] | None = None,
        pending: PendingTokens | None = None,
    ) -> ModelInputs:
        """Flat inputs for a step that runs `batch` (one-token chunks must come first).

        For each chunk, logits are computed for its last token when the chunk completes the
        request's tokens, and for every token when `all_logits[b]` (prompt logprobs).
        A token id of -1 is one sampled in the previous step that has not reached the host
        yet; `pending` says where it is on the device.
        """
        q_lens = np.fromiter((c.num_tokens for c in batch), dtype=np.int64, count=len(batch))
        starts = np.fromiter((c.start for c in batch), dtype=np.int64, count=len(batch))
        # Leading one-token chunks form the decode group of the attention kernels.
        num_decode = int(np.argmax(q_lens != 1)) if (q_lens != 1).any() else len(batch)
        cu = np.zeros(len(batch) + 1, dtype=np.int64)
        np.cumsum(q_lens, out=cu[1:])
        total = int(cu[-1])
        if num_decode == len(batch):
            tokens = np.fromiter((c.request.tokens[c.start] for c in batch), dtype=np.int64, count=total)
        else:
            tokens = np.fromiter((t for c in batch for t in c.token_ids), dtype=np.int64, count=total)
        req_index = np.repeat(np.arange(len(batch)), q_lens)
        # Each token's index in its request's cache (where its keys go), and its rotary position.
        cache_index = np.repeat(starts, q_lens) + (np.arange(total) - np.repeat(cu[:-1], q_lens))
        positions = self.rotary_positions(batch, cache_index)
        request_ids = [c.request.request_id for c in batch]
        page_table = kv_cache.page_table_array(request_ids)
        ps = kv_cache.page_size
        slots = page_table[req_index, cache_index // ps].astype(np.int64) * ps + cache_index % ps
        context_lens = starts + q_lens
        if all_logits is None and num_decode == len(batch):
            rows = np.arange(len(batch))
            logits_rows = [slice(b, b + 1) for b in range(len(batch))]
        else:
            rows, logits_rows = self._logits_rows(batch, cu, all_logits)
        device = self.device
        # Two uploads: one int64 block (tokens, positions, slots, logits rows) and one int32.
        longs = upload(np.concatenate([tokens, positions, slots, rows]), device)
        ints = upload(np.concatenate([cu, context_lens, page_table.ravel()]).astype(np.int32), device)
        b = len(batch)
        tokens_t = longs[:total]
        if pending is not None and (tokens < 0).any():
            tokens_t = pending.fill(tokens_t, [request_ids[i] for i in req_index[tokens < 0]], tokens < 0)
        layout = RaggedLayout(
            query_start=ints[: b + 1],
            context_lens=ints[b + 1 : 2 * b + 1],
            page_table=ints[2 * b + 1 :].view(page_table.shape),
            slot_mapping=longs[2 * total : 3 * total],
            page_size=ps,
            num_decode=num_decode,
            query_lens=q_lens.tolist(),
            context_lens_host=context_lens.tolist(),
            num_splits=self.decode_splits(num_decode, int(context_lens[:num_decode].max(initial=1))),
        )
        return ModelInputs(
            tokens=tokens_t,
            positions=longs[total : 2 * total],
            layout=layout,
            logits_indices=longs[3 * total :],
            logits_rows=logits_rows,
            request_ids=request_ids,
            kv_cache=kv_cache,
        )

    def rotary_positions(self, batch: Sequence[ScheduledChunk], cache_index: np.ndarray) -> np.ndarray:
        """The rotary positions of the step's tokens, given their cache indices: the same
        for text models (vision-language models offset the text after an image)."""
        return cache_index

    @staticmethod
    def _logits_rows(
        batch: Sequence[ScheduledChunk], cu: np.ndarray, all_logits: Sequence[bool] | None
    ) -> tuple[np.ndarray, list[slice]]:
        """Token rows whose logits are computed, and each request's slice of them."""
        rows: list[int] = []
        logits_rows: list[slice] = []
        for b, chunk in enumerate(batch):
            first = len(rows)
            if all_logits is not None and all_logits[b]:
                rows.extend(range(cu[b], cu[b + 1]))
            elif chunk.completes:
                rows.append(int(cu[b + 1]) - 1)
            logits_rows.append(slice(first, len(rows)))
        return np.array(rows, dtype=np.int64), logits_rows

    def prepare_next_token_inputs(
        self, next_tokens: torch.Tensor, prev_inputs: ModelInputs
    ) -> ModelInputs:
        """Inputs of the decode step that follows `prev_inputs` for the same requests.

        Every request of the previous step drew one token (`next_tokens`, [B] on device)
        and now runs it. The caller guarantees each request's pages already cover the new
        position (the page table is reused as is).
        """
        prev = prev_inputs.layout
        b = prev.num_requests
        last_rows = prev.query_start[1:].long() - 1
        positions = prev_inputs.positions[last_rows] + 1
        # The new token's place in the cache is the count of tokens already there (not its
        # rotary position, which multimodal prompts offset).
        index = prev.context_lens.long()
        ps = prev.page_size
        pages = prev.page_table.gather(1, (index // ps)[:, None]).squeeze(1).long()
        context_host = [n + 1 for n in prev.context_lens_host]
        layout = RaggedLayout(
            query_start=torch.arange(b + 1, dtype=torch.int32, device=self.device),
            context_lens=prev.context_lens + 1,
            page_table=prev.page_table,
            slot_mapping=pages * ps + index % ps,
            page_size=ps,
            num_decode=b,
            query_lens=[1] * b,
            context_lens_host=context_host,
            num_splits=self.decode_splits(b, max(context_host, default=1)),
        )
        return ModelInputs(
            tokens=next_tokens.to(torch.int64),
            positions=positions,
            layout=layout,
            logits_indices=torch.arange(b, dtype=torch.int64, device=self.device),
            logits_rows=[slice(i, i + 1) for i in range(b)],
            request_ids=prev_inputs.request_ids,
            kv_cache=prev_inputs.kv_cache,
        )

    @torch.inference_mode()
    def execute(self, inputs: ModelInputs) -> ModelOutputs:
        """Runs one step: writes the new tokens' keys and values, returns their logits."""
        positions = inputs.positions if inputs.rope_positions is None else inputs.rope_positions
        extra = () if inputs.embeds is None else (inputs.embeds,)
        with step_context(inputs.layout, inputs.kv_cache):
            logits = self.model(inputs.tokens, positions, inputs.logits_indices, *extra)
        return ModelOutputs(logits)
