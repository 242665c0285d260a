"""What a GPU holds for a GGUF file, run on the CPU's exact reference products in float32:
Q8_0 files in the int8 layout code for code (W8A16), and a 4-bit file's wider layers in int8
beside its 4-bit layers in int4 (W4A16), as a Q4_K_M file mixes Q6_K into Q4_K; the untied
embedding and LM head by the same rule. (The `gguf` package cannot write Q6_K; Q5_0 takes
the same path: re-quantized from decoded values.)"""

import pytest
import torch

from max.nn import Transformer
from max.nn.int4_linear import Int4Linear
from max.nn.int8_linear import Int8Linear
from max.nn.quantized_embedding import QuantizedEmbedding
from max.pipelines.lib.plan import WeightScheme
from max.testing.engine_probes import prompt_logits
from max.testing.parity import PROMPTS
from max.testing.quantized_parity import (
    engine_with_plan,
    layers_of,
    quantized_engine,
    write_quantizable_checkpoint,
)
from max.testing.tiny_gguf import write_llama_gguf


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory):
    return write_quantizable_checkpoint(tmp_path_factory.mktemp("float"))


def test_q8_0_is_held_code_for_code_in_int8(float_checkpoint, tmp_path):
    gguf = write_llama_gguf(float_checkpoint, tmp_path / "tiny-Q8_0.gguf", "Q8_0")
    plan = {"weight_scheme": WeightScheme.W8A16, "dtype": torch.float32}
    engine = engine_with_plan(gguf, plan, quantization_encoding="q8_0")
    held = layers_of(engine, Int8Linear)
    # 8 decoder layers, the LM head and the embedding's table.
    assert len(held) == 10 and all(m.group_size == 32 and m.codes.dtype == torch.int8 for m in held)
    network = engine.runner.model.model
    assert isinstance(network.lm_head, Int8Linear) and isinstance(network.embed_tokens, QuantizedEmbedding)
    decoded = quantized_engine(gguf, quantization_encoding="float32")
    for prompt in PROMPTS:
        # The int8 layout's weight is the file's decoded weight exactly.
        torch.testing.assert_close(prompt_logits(engine, prompt), prompt_logits(decoded, prompt), rtol=1e-5, atol=1e-5)


def test_the_wider_layers_of_a_4_bit_file_are_int8(float_checkpoint, tmp_path):
    gguf = write_llama_gguf(float_checkpoint, tmp_path / "tiny-Q4_1.gguf", "Q4_1", {"ffn_down": "Q5_0"})
    plan = {"weight_scheme": WeightScheme.W4A16, "dtype": torch.float32}
    engine = engine_with_plan(gguf, plan, quantization_encoding="q4_1")
    int4, int8 = layers_of(engine, Int4Linear), layers_of(engine, Int8Linear)
    # 6 decoder layers, the embedding's table and the head in int4; the two down projections int8.
    assert len(int4) == 8 and len(int8) == 2 and all(m.in_features == 256 for m in int8)
    decoded = quantized_engine(gguf, quantization_encoding="float32")
    for prompt in PROMPTS:
        got, want = prompt_logits(engine, prompt), prompt_logits(decoded, prompt)
        # Q4_1 codes survive; Q5_0 is re-quantized to int8 (half an int8 step at most, a
        # sixteenth of a Q5_0 step): 2.8e-3 at most measured on logits of about 1.
        torch.testing.assert_close(got, want, rtol=5e-3, atol=5e-3)


def _q4_k_m_wider_layers(num_layers: int) -> set[str]:
    """The layers a Q4_K_M file stores in Q6_K (llama.cpp's `use_more_bits`: attn_v and
    ffn_down of the first and last eighth and every third layer between; our fused qkv
    follows its v part), and the head."""
    eighth = num_layers // 8
    more = [i for i in range(num_layers) if i < eighth or i >= 7 * eighth or (i - eighth) % 3 == 2]
    return {f"layers.{i}.{p}" for i in more for p in ("self_attn.qkv_proj", "mlp.down_proj")} | {"lm_head"}


def test_a_q4_k_m_file_of_the_8b_shape_takes_under_6_gb():
    """Issue 29's goal, from the layouts' own byte counts on the real Llama-3.1-8B shape:
    int4 (groups of 32, scale and zero in bfloat16) for the Q4_K layers and the embedding,
    int8 (groups of 32, float16 scales) for the Q6_K ones and the head: 5.84 GB."""
    from max.benchmark.model_configs import config_dir
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import PipelineConfig, resolve_model
    from max.pipelines.lib.model.memory_plan import planned_weight_bytes
    from max.pipelines.lib.model.pipeline_model import skip_parameter_init
    from max.pipelines.lib.weights.quantized_layers import gguf_layer_transforms

    config = PipelineConfig(model_path=str(config_dir("Llama-3.1-8B")), load_format="dummy", max_length=4096)
    resolved = resolve_model(config, register_all())
    model_config = resolved.architecture.pipeline_model.config_class.from_huggingface(resolved.hf_config, 4096)
    with torch.device("meta"), skip_parameter_init():
        network = Transformer(model_config)
    wide = _q4_k_m_wider_layers(model_config.num_layers)
    _, sizes = gguf_layer_transforms(network, torch.bfloat16, True, wide, ["embed_tokens", "lm_head"])
    assert len(sizes) == 4 * 32 + 2
    total = planned_weight_bytes(network, torch.bfloat16, sizes)
    assert 5.7e9 < total < 6e9
    # Decoded to bfloat16 (what the GPU held before), the same file takes 16 GB.
    assert planned_weight_bytes(network, torch.bfloat16) > 16e9


def test_a_tied_embedding_stays_float(tmp_path):
    """The head of a tied model reads the embedding's whole weight every step: not decoded
    from a quantized table each time."""
    from max.nn import VocabParallelEmbedding
    from max.testing.quantized_parity import QUANTIZABLE_CONFIG
    from max.testing.tiny_checkpoints import write_tiny_checkpoint

    tied = write_tiny_checkpoint(tmp_path / "tied", {**QUANTIZABLE_CONFIG, "tie_word_embeddings": True}, seed=3)
    gguf = write_llama_gguf(tied, tmp_path / "tiny-Q8_0.gguf", "Q8_0")
    engine = engine_with_plan(gguf, {"weight_scheme": WeightScheme.W8A16, "dtype": torch.float32}, quantization_encoding="q8_0")
    assert len(layers_of(engine, Int8Linear)) == 8
    assert type(engine.runner.model.model.embed_tokens) is VocabParallelEmbedding
