"""Pre-quantized int4 tiny Llama checkpoints (GPTQ symmetric and not, act-order, groups of
32/64/128; AWQ's GEMM layout), packed by the test's own loops, load with no flag into our
int4 layout, and their float32 logits match transformers running the dequantized model to
1e-4 (the CPU computes the exact reference product of the packed weights); random int4
weights for a quantized config (`--load-format dummy`) and `--quantization int4`.
"""

import pytest
import torch

from max.nn.int4_linear import Int4Linear
from max.testing.engine_probes import prompt_logits
from max.testing.parity import PROMPTS
from max.testing.quantized_checkpoints import quantize_tiny_checkpoint
from max.testing.quantized_parity import (
    engine_with_plan,
    layers_of,
    quantized_engine,
    reference_logits,
    write_quantizable_checkpoint,
)


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory):
    return write_quantizable_checkpoint(tmp_path_factory.mktemp("float"))


@pytest.mark.parametrize(
    ("kind", "group"),
    [
        ("gptq-sym", 32),
        ("gptq-asym-actorder", 64),
        ("gptq-sym-actorder", 128),
        ("gptq-asym", 128),
        ("awq", 32),
    ],
)
def test_logits_match_transformers_on_the_dequantized_model(float_checkpoint, tmp_path, kind, group):
    quantized, reference = quantize_tiny_checkpoint(float_checkpoint, tmp_path, kind, group)
    engine = quantized_engine(quantized)
    # int4 stays packed (qkv, o, gate_up, down in each of 2 layers), its reference product on the CPU.
    held = layers_of(engine, Int4Linear)
    assert len(held) == 8 and all(m.group_size == group for m in held)
    # Act-order permutes the columns of every layer with more than one group.
    assert any(m.perm is not None for m in held) == ("actorder" in kind)
    for prompt, expected in zip(PROMPTS, reference_logits(reference)):
        torch.testing.assert_close(prompt_logits(engine, prompt), expected, rtol=1e-4, atol=1e-4)


def test_dummy_weights_of_a_quantized_layout_and_int4_on_load(float_checkpoint, tmp_path):
    quantized, _ = quantize_tiny_checkpoint(float_checkpoint, tmp_path, "gptq-sym", 32)
    dummy = quantized_engine(quantized, load_format="dummy")
    assert len(layers_of(dummy, Int4Linear)) == 8
    on_load = quantized_engine(float_checkpoint, quantization="int4")
    held = layers_of(on_load, Int4Linear)
    assert len(held) == 8 and all(m.group_size == 128 for m in held)
    float_engine = quantized_engine(float_checkpoint)
    # 4-bit round-to-nearest of random weights (no outliers to spare): 0.986 measured.
    for prompt in PROMPTS[:2]:
        got, want = prompt_logits(on_load, prompt), prompt_logits(float_engine, prompt)
        assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() > 0.97


def test_a_4_bit_gguf_on_the_gpu_path_keeps_its_q4_1_codes(float_checkpoint, tmp_path):
    from max.pipelines.lib.plan import WeightScheme
    from max.testing.tiny_gguf import write_llama_gguf

    gguf = write_llama_gguf(float_checkpoint, tmp_path / "tiny-Q4_1.gguf", "Q4_1")
    # What a GPU runs for a 4-bit GGUF (W4A16, groups of 32 as Q4_1's blocks), on the CPU's
    # exact reference product in float32.
    plan = {"weight_scheme": WeightScheme.W4A16, "dtype": torch.float32}
    engine = engine_with_plan(gguf, plan, quantization_encoding="q4_1")
    held = layers_of(engine, Int4Linear)
    # 8 decoder layers, the embedding's table and the LM head (Q4_1 in the file too).
    assert len(held) == 10 and all(m.group_size == 32 for m in held)
    decoded = quantized_engine(gguf, quantization_encoding="float32")
    for prompt in PROMPTS[:2]:
        # The Q4_1 codes and minimums survive; only float32 rounding of the scales differs.
        torch.testing.assert_close(prompt_logits(engine, prompt), prompt_logits(decoded, prompt), rtol=1e-3, atol=1e-3)


def test_fused_parts_with_different_column_orders_stay_float():
    from max.pipelines.lib.weights.quantized_layers import _int4_from_checkpoint
    from max.pipelines.lib.weights.quantized_tensor import Int4Groups, QuantizedWeightTensor

    def part(seed):
        g_idx = torch.randperm(64, generator=torch.Generator().manual_seed(seed)) // 32
        groups = Int4Groups(torch.ones(8, 2), torch.full((8, 2), 8.0), g_idx, 32)
        return QuantizedWeightTensor("p.qweight", (8, 64), "t", lambda dtype: None, int4_groups=lambda: groups, int4_group_size=32)

    layer = torch.nn.Linear(64, 16, bias=False)
    assert _int4_from_checkpoint([(part(0), None), (part(1), None)], torch.float32)(layer) is layer
    with torch.no_grad():
        layer.weight.copy_(torch.randint(-8, 8, (16, 64)).float())
    same = _int4_from_checkpoint([(part(0), None), (part(0), None)], torch.float32)(layer)
    assert isinstance(same, Int4Linear) and same.perm is not None
    x = torch.randn(3, 64)
    torch.testing.assert_close(same(x), layer(x), rtol=1e-5, atol=1e-5)
