"""The LoRA part of a step's inputs: each token's adapter slot, and the rows grouped by slot.

The engine gives each scheduled request its adapter's device slot (`Request.lora_slot`, -1
for the base model) before the step is built; here that becomes the int32 slot of every
token (what the torch reference reads) and the adapter rows grouped by slot in tiles (what
the CUDA kernels run over: `max_kernels.lora_sgmv.group_rows`), uploaded in one copy. A
step without adapter requests carries none, and its layers skip LoRA.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from max.nn.lora import LoRABatch
from max.pipelines.lib.engine.scheduler import ScheduledChunk
from max.pipelines.lib.runner.device_transfer import upload
from max_kernels import LoRAGroups
from max_kernels.lora_sgmv import group_rows, tile_rows


def lora_batch(
    batch: Sequence[ScheduledChunk], q_lens: np.ndarray, cu: np.ndarray, device: torch.device
) -> LoRABatch | None:
    """The adapter rows of a step running `batch` (tokens per chunk `q_lens`, offsets `cu`);
    None when no request of it runs an adapter (the layers then skip LoRA altogether)."""
    slots = np.fromiter((c.request.lora_slot for c in batch), dtype=np.int32, count=len(batch))
    return _upload(slots, np.repeat(slots, q_lens), device)


def next_decode_lora(prev: LoRABatch | None) -> LoRABatch | None:
    """The adapter rows of the decode step that follows `prev` for the same requests: one
    token each, in the slots they had."""
    if prev is None or prev.request_slots is None:
        return None
    return _upload(prev.request_slots, prev.request_slots, prev.token_slots.device)


def _upload(request_slots: np.ndarray, token_slots: np.ndarray, device: torch.device) -> LoRABatch | None:
    if (request_slots < 0).all():
        return None
    block_m = tile_rows(token_slots)
    rows, tiles = group_rows(token_slots, block_m)
    t, r = len(token_slots), len(rows)
    ints = upload(np.concatenate([token_slots, rows, tiles.ravel()]).astype(np.int32), device)
    return LoRABatch(ints[:t], LoRAGroups(ints[t : t + r], ints[t + r :].view(3, -1), block_m), request_slots)
