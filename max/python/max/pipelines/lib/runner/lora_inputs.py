"""The LoRA part of a step's inputs: each token's adapter slot, and the request segments.

The engine gives each scheduled request its adapter's device slot (`Request.lora_slot`, -1
for the base model) before the step is built; here that becomes the int32 slot of every
token (what the per-row BGMV kernels of decode read) and, for a step with prompt chunks,
the row tiles of the requests with adapters (what the SGMV kernels run over), uploaded in
one copy. A step without adapter requests carries none, and its layers skip LoRA.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from max.nn.lora import LoRABatch
from max.pipelines.lib.engine.scheduler import ScheduledChunk
from max.pipelines.lib.runner.device_transfer import upload
from max_kernels import LoRASegments
from max_kernels.lora_sgmv import segment_tiles


def lora_batch(
    batch: Sequence[ScheduledChunk], q_lens: np.ndarray, cu: np.ndarray, device: torch.device
) -> LoRABatch | None:
    """The adapter rows of a step running `batch` (tokens per chunk `q_lens`, offsets `cu`);
    None when no request of it runs an adapter (the layers then skip LoRA altogether)."""
    slots = np.fromiter((c.request.lora_slot for c in batch), dtype=np.int32, count=len(batch))
    if (slots < 0).all():
        return None
    if bool((q_lens == 1).all()):
        return LoRABatch(upload(slots, device))
    tiles = segment_tiles(cu, slots)
    ints = upload(np.concatenate([slots, np.repeat(slots, q_lens), tiles.ravel()]), device)
    b, t = len(batch), int(cu[-1])
    return LoRABatch(ints[b : b + t], LoRASegments(ints[b + t :].view(3, -1)), ints[:b])


def next_decode_lora(prev: LoRABatch | None) -> LoRABatch | None:
    """The adapter rows of the decode step that follows `prev` for the same requests: one
    token each, in the slots they had."""
    if prev is None:
        return None
    return LoRABatch(prev.request_slots if prev.request_slots is not None else prev.token_slots)
