"""Declarations of the Gemma 3 architectures: text only, and with images."""

from max.pipelines.lib import SupportedArchitecture, TextTokenizer, WeightsFormat

from . import weight_adapters
from .image_tokenizer import Gemma3ImageTokenizer
from .model import Gemma3Model, Gemma3VLModel

gemma3_arch = SupportedArchitecture(
    name="Gemma3ForCausalLM",
    example_repo_ids=["google/gemma-3-1b-it", "google/gemma-3-270m"],
    default_encoding="bfloat16",
    supported_encodings=["float32", "bfloat16", "float16"],
    pipeline_model=Gemma3Model,
    tokenizer=TextTokenizer,
    weight_adapters={
        WeightsFormat.safetensors: weight_adapters.convert_safetensor_state_dict,
        WeightsFormat.gguf: weight_adapters.convert_gguf_state_dict,
    },
    multi_gpu_supported=True,
)

gemma3_vl_arch = SupportedArchitecture(
    name="Gemma3ForConditionalGeneration",
    example_repo_ids=["google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it"],
    default_encoding="bfloat16",
    supported_encodings=["float32", "bfloat16", "float16"],
    pipeline_model=Gemma3VLModel,
    tokenizer=Gemma3ImageTokenizer,
    weight_adapters={WeightsFormat.safetensors: weight_adapters.convert_vl_safetensor_state_dict},
    multi_gpu_supported=True,
)
