"""Messages between the HTTP process and the engine process (all picklable)."""

from __future__ import annotations

from dataclasses import dataclass, field

from max.pipelines.lib import EngineStats, RequestOutput, SamplingParams
from max.pipelines.lib.model.multimodal import ImageInput


@dataclass
class AddRequest:
    """Start generating for `prompt_ids` (with the prompt's images, each on its run of
    image tokens)."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    images: tuple[ImageInput, ...] = ()
    lora: str | None = None  # the LoRA adapter it runs (None: the base model)


@dataclass
class LoRAAdapterOp:
    """Load the LoRA adapter in local folder `path` as `name` (`path` None: unload it); the
    engine answers with a finished `RequestOutput` of id `op_id` (its `error` if it failed)."""

    op_id: str
    name: str
    path: str | None


@dataclass
class AbortRequest:
    """Stop a request (client gone, stop string found)."""

    request_id: str


@dataclass
class Shutdown:
    """Finish up and exit."""


@dataclass
class EngineReady:
    """The engine loaded its model and takes requests."""

    max_seq_len: int
    vocab_size: int
    kv_pages_total: int
    # Where the device memory went at start-up, by component (bytes; `MemoryReport`).
    memory: dict[str, int] = field(default_factory=dict)
    # The engine's statistics before its first step (/metrics shows them until a step reports).
    stats: EngineStats | None = None


@dataclass
class EngineFailed:
    """The engine could not start (bad model, no memory...) or died."""

    message: str


@dataclass
class StepOutputs:
    """What one engine step produced, plus the engine's load after it."""

    outputs: list[RequestOutput] = field(default_factory=list)
    stats: EngineStats | None = None
