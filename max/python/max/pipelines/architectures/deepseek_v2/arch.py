"""Declaration of the DeepSeek-V2 architecture."""

from max.pipelines.lib import SupportedArchitecture, TextTokenizer, WeightsFormat

from . import weight_adapters
from .model import DeepseekV2Model

deepseek_v2_arch = SupportedArchitecture(
    name="DeepseekV2ForCausalLM",
    example_repo_ids=["deepseek-ai/DeepSeek-V2-Lite-Chat", "deepseek-ai/DeepSeek-V2-Lite"],
    default_encoding="bfloat16",
    supported_encodings=["float32", "bfloat16", "float16"],
    pipeline_model=DeepseekV2Model,
    tokenizer=TextTokenizer,
    weight_adapters={
        WeightsFormat.safetensors: weight_adapters.convert_safetensor_state_dict,
        WeightsFormat.gguf: weight_adapters.convert_gguf_state_dict,
    },
    multi_gpu_supported=False,
)
