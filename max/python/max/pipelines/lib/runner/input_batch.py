"""One step's inputs, and how the model runner builds them from the scheduler's chunks.

A step runs a ragged batch (MAX's layout): the new tokens of every scheduled request
concatenated into one flat tensor, with row offsets per request, their positions, their
KV-cache slots and page tables, and the rows whose logits are wanted. `InputBatchBuilder`
builds that from the scheduler's chunks (nano-vllm's `prepare_prefill`/`prepare_decode`,
vLLM v1's input batch) in two uploads; a decode step that repeats the last one for the same
requests is derived on the device from the last step's inputs and draws, without going
back to Python lists. The pipeline model takes part through two small hooks: its tokens'
rotary positions, and the encoder outputs (image embeddings) of the step.

`ModelInputs.to_wire`/`from_wire` flatten every field a step carries (embeddings and M-RoPE
positions included) for the tensor-parallel broadcast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from max.kv_cache import PagedKVCache
from max.nn.lora import LoRABatch
from max.pipelines.lib.engine.scheduler import ScheduledChunk
from max.pipelines.lib.runner.device_transfer import upload
from max.pipelines.lib.runner.lora_inputs import lora_batch, next_decode_lora
from max_kernels import RaggedLayout
from max_kernels.decode_attention import default_num_splits


class StepModel(Protocol):
    """What the builder needs of a model (`PipelineModel` is one): its device and its two
    hooks into a step's inputs."""

    device: torch.device

    def rotary_positions(self, batch: Sequence[ScheduledChunk], cache_index: np.ndarray) -> np.ndarray:
        """The rotary positions of the step's tokens, given their cache indices."""
        ...

    def encoder_outputs(self, batch: Sequence[ScheduledChunk]) -> EncoderOutputs | None:
        """Image embeddings and M-RoPE positions of the step, or None."""
        ...


@dataclass
class ModelInputs:
    """One step's inputs, on the model's device.

    `positions` are the tokens' rotary positions (equal to their index in the request's
    cache for text models; a vision-language model's positions after an image are offset).
    `logits_indices` lists the token rows whose logits are wanted, grouped by request in
    batch order; `logits_rows[b]` is the slice of those rows that belongs to request b.
    A step holding image tokens also carries `rope_positions` (M-RoPE's [3, T] positions,
    which the network then rotates by) and `embeds` (rows, vectors) that replace those
    rows' token embeddings; such a step always runs eagerly. A step with embedding
    requests carries `pooled`: the rows whose final hidden states they pool (it runs
    eagerly too).
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
    lora: LoRABatch | None = None  # each token's LoRA adapter slot (None: no LoRA)
    pooled: PooledRows | None = None  # embedding requests' rows (None: no pooling)

    @property
    def has_images(self) -> bool:
        """The step carries image embeddings or multimodal positions (no graph replays it)."""
        return self.embeds is not None or self.rope_positions is not None

    # -- the tensor-parallel wire format -------------------------------------------------
    def to_wire(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(header, tensors): the host fields as a picklable header, and every device tensor
        by name. `from_wire` rebuilds the inputs from both on another rank."""
        layout = self.layout
        tensors = {
            "tokens": self.tokens,
            "positions": self.positions,
            "logits_indices": self.logits_indices,
            "query_start": layout.query_start,
            "context_lens": layout.context_lens,
            "page_table": layout.page_table,
            "slot_mapping": layout.slot_mapping,
        }
        if self.rope_positions is not None:
            tensors["rope_positions"] = self.rope_positions
        if self.embeds is not None:
            tensors["embed_rows"], tensors["embed_vectors"] = self.embeds
        if self.pooled is not None:
            tensors["pooled_indices"] = self.pooled.indices
        if layout.key_limit is not None:
            tensors["key_limit"] = layout.key_limit
        header = {
            "page_size": layout.page_size,
            "num_decode": layout.num_decode,
            "query_lens": layout.query_lens,
            "context_lens_host": layout.context_lens_host,
            "num_splits": layout.num_splits,
            "logits_rows": [(r.start, r.stop) for r in self.logits_rows],
            "pooled_rows": None if self.pooled is None else [(r.start, r.stop) for r in self.pooled.rows],
        }
        return header, tensors

    @classmethod
    def from_wire(cls, header: dict[str, Any], tensors: dict[str, torch.Tensor], kv_cache: PagedKVCache) -> ModelInputs:
        """The inputs `to_wire` described (request ids are rank 0's business: none here)."""
        layout = RaggedLayout(
            query_start=tensors["query_start"],
            context_lens=tensors["context_lens"],
            page_table=tensors["page_table"],
            slot_mapping=tensors["slot_mapping"],
            page_size=header["page_size"],
            num_decode=header["num_decode"],
            query_lens=header["query_lens"],
            context_lens_host=header["context_lens_host"],
            num_splits=header["num_splits"],
            key_limit=tensors.get("key_limit"),
        )
        embeds = (tensors["embed_rows"], tensors["embed_vectors"]) if "embed_rows" in tensors else None
        pooled_rows = header.get("pooled_rows")
        pooled = None if pooled_rows is None else PooledRows(tensors["pooled_indices"], [slice(a, z) for a, z in pooled_rows])
        return cls(
            tokens=tensors["tokens"],
            positions=tensors["positions"],
            layout=layout,
            logits_indices=tensors["logits_indices"],
            logits_rows=[slice(a, z) for a, z in header["logits_rows"]],
            request_ids=[],
            kv_cache=kv_cache,
            rope_positions=tensors.get("rope_positions"),
            embeds=embeds,
            pooled=pooled,
        )


@dataclass
class PooledRows:
    """The token rows of a step whose final hidden states (after the final norm) embedding
    requests pool: `indices` [P] on the device, `rows[b]` the slice of them that is chunk
    b's. The forward pass leaves those states in `hidden` [P, hidden_size] (a result slot
    of the step, read by the engine after it ran, whichever runner ran it)."""

    indices: torch.Tensor
    rows: list[slice]
    hidden: torch.Tensor | None = None


@dataclass
class ModelOutputs:
    """Float32 logits [N, vocab], one row per entry of `ModelInputs.logits_indices`."""

    logits: torch.Tensor


@dataclass
class EncoderOutputs:
    """What a step's encoder hands the decoder (a vision-language model's images): M-RoPE
    positions of every token [3, T] (None: the model rotates by 1-D positions), the token
    rows the images fill, their embeddings (on the device), and, where image tokens see
    each other both ways (Gemma 3), the last key each token may see (`RaggedLayout.key_limit`)."""

    rope_positions: np.ndarray | None
    rows: np.ndarray
    vectors: torch.Tensor
    key_limit: np.ndarray | None = None


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


class InputBatchBuilder:
    """Builds each step's `ModelInputs` for one model and its KV cache (see the module
    docstring); remembers the last step for the decode fast path."""

    def __init__(self, model: StepModel, kv_cache: PagedKVCache) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.device = model.device
        # This rank's KV heads: what the decode kernel's split-K choice depends on.
        self.num_kv_heads = kv_cache.params.num_kv_heads
        self._last: ModelInputs | None = None
        self._last_tokens: torch.Tensor | None = None
        self._last_page_counts: list[int] = []
        self._last_ends: list[int] = []  # where each request of the last step ended

    def decode_splits(self, batch_size: int, max_context: int) -> int:
        """How many parts the GPU decode-attention kernel cuts each context into (split-K)."""
        if self.device.type != "cuda":
            return 1
        return default_num_splits(batch_size, self.num_kv_heads, max_context)

    def prepare(
        self,
        chunks: Sequence[ScheduledChunk],
        all_logits: Sequence[bool] | None = None,
        pending: PendingTokens | None = None,
    ) -> ModelInputs:
        """The step's inputs, derived on the device from the last step when it is a plain
        repeat (the same requests each decoding the token they drew, on the pages they
        had), else built from the chunks."""
        ids = [c.request.request_id for c in chunks]
        page_counts = [len(self.kv_cache.pages(i)) for i in ids]
        starts = [c.start for c in chunks]
        last = self._last
        if (
            last is not None
            and self._last_tokens is not None
            and all_logits is None
            and last.request_ids == ids
            # The same requests, not new ones under the ids of finished ones (a prompt whose
            # prefix was cached may start with one token): each continues where it ended.
            and starts == self._last_ends
            and page_counts == self._last_page_counts
            and all(c.num_tokens == 1 for c in chunks)
        ):
            inputs = self.next_decode(self._last_tokens, last)
        else:
            inputs = self.build(chunks, all_logits, pending)
        self._last_page_counts = page_counts
        self._last_ends = [c.start + c.num_tokens for c in chunks]
        return inputs

    def record_draws(self, inputs: ModelInputs | None, tokens: torch.Tensor | None) -> None:
        """After a step: `tokens` [B] on the device when every request of `inputs` drew one
        (the next step may then be derived from these), else None."""
        self._last = inputs if tokens is not None else None
        self._last_tokens = tokens

    def build(
        self,
        batch: Sequence[ScheduledChunk],
        all_logits: Sequence[bool] | None = None,
        pending: PendingTokens | None = None,
    ) -> ModelInputs:
        """Flat inputs for a step that runs `batch` (one-token chunks must come first).

        For each chunk, logits are computed for its last token when the chunk completes the
        request's tokens (and for each of its draft tokens: speculative decoding), and for
        every token when `all_logits[b]` (prompt logprobs).
        A token id of -1 is one sampled in the previous step that has not reached the host
        yet; `pending` says where it is on the device.
        """
        kv_cache = self.kv_cache
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
        positions = self.model.rotary_positions(batch, cache_index)
        request_ids = [c.request.request_id for c in batch]
        page_table = kv_cache.page_table_array(request_ids)
        ps = kv_cache.page_size
        slots = page_table[req_index, cache_index // ps].astype(np.int64) * ps + cache_index % ps
        context_lens = starts + q_lens
        pooling = any(c.request.pooling is not None for c in batch)
        if all_logits is None and num_decode == len(batch) and not pooling:
            rows = np.arange(len(batch))
            logits_rows = [slice(b, b + 1) for b in range(len(batch))]
        else:
            rows, logits_rows = _logits_rows(batch, cu, all_logits)
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
        inputs = ModelInputs(
            tokens=tokens_t,
            positions=longs[total : 2 * total],
            layout=layout,
            logits_indices=longs[3 * total :],
            logits_rows=logits_rows,
            request_ids=request_ids,
            kv_cache=kv_cache,
        )
        if getattr(self.model, "lora", None) is not None:
            inputs.lora = lora_batch(batch, q_lens, cu, device)
        if pooling:
            inputs.pooled = _pooled_rows(batch, cu, device)
        encoded = self.model.encoder_outputs(batch)
        if encoded is not None:
            if encoded.rope_positions is not None:
                inputs.rope_positions = upload(encoded.rope_positions, device)
            if encoded.key_limit is not None:
                layout.key_limit = upload(encoded.key_limit, device)
            inputs.embeds = (upload(encoded.rows, device), encoded.vectors)
        return inputs

    def next_decode(self, next_tokens: torch.Tensor, prev_inputs: ModelInputs) -> ModelInputs:
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
            lora=next_decode_lora(prev_inputs.lora),
        )


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
        elif chunk.completes and chunk.request.pooling is None:  # an embedding request samples nothing
            # A speculating request needs its last known token's row and each draft's.
            rows.extend(range(int(cu[b + 1]) - 1 - len(chunk.draft_tokens), int(cu[b + 1])))
        logits_rows.append(slice(first, len(rows)))
    return np.array(rows, dtype=np.int64), logits_rows


def _pooled_rows(batch: Sequence[ScheduledChunk], cu: np.ndarray, device: torch.device) -> PooledRows:
    """The rows each embedding request's pooling reads (`RequestPooling.rows`)."""
    rows: list[int] = []
    slices: list[slice] = []
    for b, chunk in enumerate(batch):
        first = len(rows)
        pooling = chunk.request.pooling
        if pooling is not None:
            rows.extend(int(cu[b]) + r for r in pooling.rows(chunk.start, chunk.num_tokens, chunk.completes))
        slices.append(slice(first, len(rows)))
    return PooledRows(upload(np.array(rows, dtype=np.int64), device), slices)
