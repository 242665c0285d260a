"""Declaration of the Mistral architecture."""

from max.pipelines.lib import SupportedArchitecture, TextTokenizer, WeightsFormat

from . import weight_adapters
from .model import MistralModel

mistral_arch = SupportedArchitecture(
    name="MistralForCausalLM",
    example_repo_ids=["mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-v0.1"],
    default_encoding="bfloat16",
    supported_encodings=["float32", "bfloat16", "float16"],
    pipeline_model=MistralModel,
    tokenizer=TextTokenizer,
    weight_adapters={WeightsFormat.safetensors: weight_adapters.convert_safetensor_state_dict},
    multi_gpu_supported=True,
)
