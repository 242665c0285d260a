"""Declaration of the Phi-3 architecture."""

from max.pipelines.lib import SupportedArchitecture, TextTokenizer, WeightsFormat

from . import weight_adapters
from .model import Phi3Model

phi3_arch = SupportedArchitecture(
    name="Phi3ForCausalLM",
    example_repo_ids=["microsoft/Phi-3-mini-4k-instruct", "microsoft/Phi-3-mini-128k-instruct"],
    default_encoding="bfloat16",
    supported_encodings=["float32", "bfloat16", "float16"],
    pipeline_model=Phi3Model,
    tokenizer=TextTokenizer,
    weight_adapters={
        WeightsFormat.safetensors: weight_adapters.convert_safetensor_state_dict,
        WeightsFormat.gguf: weight_adapters.convert_gguf_state_dict,
    },
    multi_gpu_supported=True,
)
