"""Declaration of the OLMo 2 architecture."""

from max.pipelines.lib import SupportedArchitecture, TextTokenizer, WeightsFormat

from . import weight_adapters
from .model import Olmo2Model

olmo2_arch = SupportedArchitecture(
    name="Olmo2ForCausalLM",
    example_repo_ids=["allenai/OLMo-2-1124-7B-Instruct", "allenai/OLMo-2-0425-1B-Instruct"],
    default_encoding="bfloat16",
    supported_encodings=["float32", "bfloat16", "float16"],
    pipeline_model=Olmo2Model,
    tokenizer=TextTokenizer,
    weight_adapters={
        WeightsFormat.safetensors: weight_adapters.convert_safetensor_state_dict,
        WeightsFormat.gguf: weight_adapters.convert_gguf_state_dict,
    },
    multi_gpu_supported=True,
)
