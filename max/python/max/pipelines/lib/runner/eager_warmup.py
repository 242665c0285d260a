"""Compiling the eager step's Triton kernel variants at start-up, before any request.

An eager step picks some kernels' variants by shape (decode attention with and without
split-K, the prefill kernel's four tile heights); a variant compiled on first use stalled a
mixed step of the 1000-request benchmark by ~0.5 s. `warm_eager_kernels` runs one eager
step of each of `EAGER_WARMUP_SHAPES` (token 0, every key read from page 0, no KV written).
"""

from __future__ import annotations

import logging
import time

import torch

from max.kv_cache import PagedKVCache
from max.pipelines.lib.model.pipeline_model import PipelineModel
from max.pipelines.lib.runner.input_batch import InputBatchBuilder, ModelInputs
from max_kernels import RaggedLayout

logger = logging.getLogger("max.pipelines")

# (decoding rows, their context length, prompt-chunk length): between them they reach every
# Triton kernel variant that an eager step chooses by shape.
EAGER_WARMUP_SHAPES = ((1, 600, 200), (48, 300, 12), (0, 0, 6), (2, 300, 2))


def warm_eager_kernels(model: PipelineModel, kv_cache: PagedKVCache, inputs: InputBatchBuilder) -> None:
    """Runs one eager step of each of `EAGER_WARMUP_SHAPES` on `model`'s device; a failure
    is only logged (the steps themselves then compile what is missing)."""
    start = time.perf_counter()
    device = model.device
    try:
        for num_decode, context, chunk in EAGER_WARMUP_SHAPES:
            context, chunk = min(context, model.max_seq_len), min(chunk, model.max_seq_len)
            q_lens = [1] * num_decode + [chunk]
            ctx = [context] * num_decode + [chunk]
            total = sum(q_lens)
            positions = [context - 1] * num_decode + list(range(chunk))
            width = kv_cache.params.pages_for_tokens(max(ctx))
            starts = [0]
            for n in q_lens:
                starts.append(starts[-1] + n)
            layout = RaggedLayout(
                query_start=torch.tensor(starts, dtype=torch.int32, device=device),
                context_lens=torch.tensor(ctx, dtype=torch.int32, device=device),
                page_table=torch.zeros(len(q_lens), width, dtype=torch.int32, device=device),
                slot_mapping=torch.full((total,), -1, dtype=torch.int64, device=device),
                page_size=kv_cache.page_size,
                num_decode=num_decode,
                query_lens=q_lens,
                context_lens_host=ctx,
                num_splits=inputs.decode_splits(num_decode, max(ctx[:num_decode], default=1)),
            )
            rows = [*range(num_decode), total - 1]
            model.execute(
                ModelInputs(
                    tokens=torch.zeros(total, dtype=torch.int64, device=device),
                    positions=torch.tensor(positions, dtype=torch.int64, device=device),
                    layout=layout,
                    logits_indices=torch.tensor(rows, dtype=torch.int64, device=device),
                    logits_rows=[slice(i, i + 1) for i in range(len(rows))],
                    request_ids=[],
                    kv_cache=kv_cache,
                )
            )
        torch.cuda.synchronize(device)
    except Exception as e:  # a warm-up only: the steps themselves compile what is missing
        logger.warning("eager warm-up failed (%s: %s)", type(e).__name__, e)
        return
    logger.info("warmed the eager step's kernels in %.1f s", time.perf_counter() - start)
