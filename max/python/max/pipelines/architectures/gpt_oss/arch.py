"""Declaration of the gpt-oss architecture."""

from max.pipelines.lib import SupportedArchitecture, TextTokenizer, WeightsFormat

from . import weight_adapters
from .model import GptOssModel

gpt_oss_arch = SupportedArchitecture(
    name="GptOssForCausalLM",
    example_repo_ids=["openai/gpt-oss-20b", "unsloth/gpt-oss-20b-BF16", "openai/gpt-oss-120b"],
    default_encoding="bfloat16",
    supported_encodings=["float32", "bfloat16", "float16"],
    pipeline_model=GptOssModel,
    tokenizer=TextTokenizer,
    weight_adapters={WeightsFormat.safetensors: weight_adapters.convert_safetensor_state_dict},
    multi_gpu_supported=True,
)
