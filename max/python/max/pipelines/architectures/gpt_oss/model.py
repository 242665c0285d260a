"""gpt-oss's pipeline model: the generic `max.nn.Transformer` with `GptOssConfig`.

Everything gpt-oss has beyond Llama is a `max.nn` option that its config turns on:
attention sinks, q/k/v/o biases, alternating sliding-window and full layers, YaRN rope,
and routed experts with a biased router, a softmax over the top-k logits, biased experts
and the clamped SwiGLU.
"""

from max.pipelines.lib import PipelineModel

from .model_config import GptOssConfig


class GptOssModel(PipelineModel):
    """Runs `GptOssForCausalLM` checkpoints (bfloat16 or float, or MXFP4 experts)."""

    config_class = GptOssConfig
