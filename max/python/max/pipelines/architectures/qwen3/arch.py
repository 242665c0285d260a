"""Declarations of the Qwen3 architectures (dense and mixture of experts)."""

from max.pipelines.lib import SupportedArchitecture, TextTokenizer, WeightsFormat

from . import weight_adapters
from .model import Qwen3Model, Qwen3MoeModel

_ADAPTERS = {
    WeightsFormat.safetensors: weight_adapters.convert_safetensor_state_dict,
    WeightsFormat.gguf: weight_adapters.convert_gguf_state_dict,
}

qwen3_arch = SupportedArchitecture(
    name="Qwen3ForCausalLM",
    example_repo_ids=["Qwen/Qwen3-8B", "Qwen/Qwen3-0.6B"],
    default_encoding="bfloat16",
    supported_encodings=["float32", "bfloat16", "float16"],
    pipeline_model=Qwen3Model,
    tokenizer=TextTokenizer,
    weight_adapters=_ADAPTERS,
    multi_gpu_supported=True,
)

qwen3_moe_arch = SupportedArchitecture(
    name="Qwen3MoeForCausalLM",
    example_repo_ids=["Qwen/Qwen3-30B-A3B"],
    default_encoding="bfloat16",
    supported_encodings=["float32", "bfloat16", "float16"],
    pipeline_model=Qwen3MoeModel,
    tokenizer=TextTokenizer,
    weight_adapters=_ADAPTERS,
    multi_gpu_supported=True,
)
