"""Declaration of the Qwen2.5-VL architecture."""

from max.pipelines.lib import SupportedArchitecture, WeightsFormat
from max.pipelines.lib.tokens.vision_tokenizer import VisionLanguageTokenizer

from . import weight_adapters
from .model import Qwen25VLModel

qwen2_5_vl_arch = SupportedArchitecture(
    name="Qwen2_5_VLForConditionalGeneration",
    example_repo_ids=["Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"],
    default_encoding="bfloat16",
    supported_encodings=["float32", "bfloat16", "float16"],
    pipeline_model=Qwen25VLModel,
    tokenizer=VisionLanguageTokenizer,
    weight_adapters={WeightsFormat.safetensors: weight_adapters.convert_safetensor_state_dict},
    multi_gpu_supported=True,
)
