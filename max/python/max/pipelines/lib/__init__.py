"""The pipeline library: architectures' contract, model loading, engine and generation.

Public pieces, bottom up: `SupportedArchitecture` and `PipelineRegistry` (what an
architecture declares, and where it is found); `PipelineConfig`; model sources, configs,
tokenizers and weights; `PipelineModel` (what an architecture's model.py subclasses);
`Scheduler`, `LLMEngine` (continuous batching over the paged KV cache); `TextGenerator`.
"""

from max.pipelines.lib.config import (
    ENCODINGS,
    FLOAT_ENCODINGS,
    PipelineConfig,
    parse_device,
    parse_memory,
)
from max.pipelines.lib.engine.llm_engine import EngineStats, LLMEngine
from max.pipelines.lib.engine.request import RequestOutput, TokenLogprob
from max.pipelines.lib.engine.text_generator import Completion, TextGenerator
from max.pipelines.lib.hub.embedded_models import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    find_embedded_model,
)
from max.pipelines.lib.hub.hf_config import head_dim, layer_types, rope_parameters
from max.pipelines.lib.hub.model_source import ModelSource, resolve_model_source
from max.pipelines.lib.model.pipeline_model import PipelineModel
from max.pipelines.lib.model.registry import (
    PIPELINE_REGISTRY,
    PipelineRegistry,
    import_custom_architectures,
    register_custom_architectures,
)
from max.pipelines.lib.model.supported_architecture import SupportedArchitecture, WeightAdapter
from max.pipelines.lib.model_resolution import (
    ResolvedModel,
    load_tokenizer,
    resolve_model,
    tokenizer_source,
)
from max.pipelines.lib.pipeline_builder import build_engine
from max.pipelines.lib.plan import ExecutionPlan, WeightScheme
from max.pipelines.lib.runner.input_batch import ModelInputs, ModelOutputs
from max.pipelines.lib.sampling.sampling_params import SamplingParams
from max.pipelines.lib.tokens.text_stream import RequestTextStream, TextDelta
from max.pipelines.lib.tokens.tokenizer import TextTokenizer
from max.pipelines.lib.weights import Checkpoint, CheckpointTensor, WeightsFormat

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "ENCODINGS",
    "FLOAT_ENCODINGS",
    "PIPELINE_REGISTRY",
    "Checkpoint",
    "CheckpointTensor",
    "Completion",
    "EngineStats",
    "ExecutionPlan",
    "LLMEngine",
    "ModelInputs",
    "ModelOutputs",
    "ModelSource",
    "PipelineConfig",
    "PipelineModel",
    "PipelineRegistry",
    "RequestOutput",
    "RequestTextStream",
    "ResolvedModel",
    "SamplingParams",
    "SupportedArchitecture",
    "TextDelta",
    "TextGenerator",
    "TextTokenizer",
    "TokenLogprob",
    "WeightAdapter",
    "WeightScheme",
    "WeightsFormat",
    "build_engine",
    "find_embedded_model",
    "head_dim",
    "import_custom_architectures",
    "layer_types",
    "load_tokenizer",
    "parse_device",
    "parse_memory",
    "register_custom_architectures",
    "resolve_model",
    "resolve_model_source",
    "rope_parameters",
    "tokenizer_source",
]
