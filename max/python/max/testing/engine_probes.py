"""Looking inside a built engine from tests: full-prompt logits, greedy decoding."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from max.pipelines.lib import LLMEngine, SamplingParams
from max.pipelines.lib.engine.request import Request
from max.pipelines.lib.engine.scheduler import ScheduledChunk
from max.pipelines.lib.model.multimodal import ImageInput


def prompt_logits(
    engine: LLMEngine, ids: Sequence[int], images: Sequence[ImageInput] = (), lora: str | None = None
) -> torch.Tensor:
    """Float32 logits [len(ids), vocab] of every prompt position, in one prefill (under the
    LoRA adapter `lora`, if given)."""
    request = Request("probe", list(ids), len(ids), SamplingParams(), 0, len(ids), 0, images=tuple(images))
    if lora is not None:
        request.lora = engine.lora.ref(lora)
        (request.lora_slot,) = engine.lora.activate([request.lora])
    engine.runner.check_images(images, ids)
    cache = engine.kv_cache
    assert cache.reserve("probe", len(ids))
    try:
        inputs = engine.runner.inputs.build([ScheduledChunk(request, 0, len(ids))], all_logits=[True])
        return engine.runner.execute(inputs).cpu()
    finally:
        cache.free("probe")


def greedy_tokens(
    engine: LLMEngine,
    prompts: Sequence[Sequence[int]],
    steps: int,
    images: Sequence[Sequence[ImageInput]] | None = None,
    loras: Sequence[str | None] | None = None,
) -> list[list[int]]:
    """Greedy continuations (EOS ignored) of every prompt (with its `images`, under its LoRA
    adapter of `loras`), run as one continuous batch."""
    params = SamplingParams(max_new_tokens=steps, temperature=0.0, ignore_eos=True)
    ids = [f"greedy-{i}" for i in range(len(prompts))]
    for i, (rid, prompt) in enumerate(zip(ids, prompts)):
        engine.add_request(rid, list(prompt), params, images=images[i] if images else (), lora=loras[i] if loras else None)
    out: dict[str, list[int]] = {rid: [] for rid in ids}
    while engine.has_unfinished():
        for o in engine.step():
            out[o.request_id].extend(o.new_token_ids)
    return [out[rid] for rid in ids]
