"""The declaration of an architecture: what an `arch.py` builds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from max.pipelines.lib.tokens.tokenizer import TextTokenizer
from max.pipelines.lib.weights import Checkpoint, WeightsFormat

if TYPE_CHECKING:
    from max.pipelines.lib.model.pipeline_model import PipelineModel

WeightAdapter = Callable[[Checkpoint, Any], Checkpoint]
"""Maps a checkpoint in its own tensor names to the model's names: (checkpoint, hf_config)."""


@dataclass(frozen=True)
class SupportedArchitecture:
    """An architecture the framework can run.

    `name` is the class name in a model's config.json `architectures[0]` (for GGUF, the
    name its GGUF architecture maps to). `weight_adapters` has one adapter per weights
    format the architecture reads.
    """

    name: str
    example_repo_ids: list[str]
    default_encoding: str
    supported_encodings: list[str]
    pipeline_model: type[PipelineModel]
    weight_adapters: Mapping[WeightsFormat, WeightAdapter]
    tokenizer: type[TextTokenizer] = TextTokenizer
    multi_gpu_supported: bool = False
