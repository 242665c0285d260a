"""Pre-quantized FP8 tiny Llama checkpoints (compressed-tensors' own compressor per tensor,
channel and block; fbgemm_fp8; block-wise fp8) load with no flag, and their float32 logits
match transformers running the dequantized model.

Thresholds: on the CPU both run the same dequantized float32 weights, so logits agree to
1e-4 as for float checkpoints. The FP8 GPU path (the checkpoint's codes kept, activations
quantized per token), emulated exactly on the CPU, is checked at max KL 2e-3 per position
(activation rounding: e4m3 keeps 3 mantissa bits), and the codes it holds are the
checkpoint's, bit for bit.
"""

import pytest
import torch

from max.nn.fp8_linear import Fp8Linear
from max.pipelines.lib.plan import WeightScheme
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


@pytest.mark.parametrize("kind", ["ct-tensor", "ct-channel", "ct-block", "fbgemm", "fp8-block"])
def test_logits_match_transformers_on_the_dequantized_model(float_checkpoint, tmp_path, kind):
    quantized, reference = quantize_tiny_checkpoint(float_checkpoint, tmp_path, kind)
    engine = quantized_engine(quantized)
    assert not layers_of(engine, Fp8Linear)  # the CPU's dequantizing path
    for prompt, expected in zip(PROMPTS, reference_logits(reference)):
        torch.testing.assert_close(prompt_logits(engine, prompt), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["ct-channel", "ct-tensor", "fbgemm", "fp8-block"])
def test_the_fp8_gpu_path_keeps_the_checkpoint_codes(float_checkpoint, tmp_path, kind):
    from safetensors.torch import load_file

    quantized, reference = quantize_tiny_checkpoint(float_checkpoint, tmp_path, kind)
    # What a GPU with FP8 tensor cores runs, emulated exactly by the CPU's float32 references.
    engine = engine_with_plan(quantized, {"weight_scheme": WeightScheme.FP8})
    stored = load_file(str(quantized / "model.safetensors"))
    q = stored["model.layers.0.self_attn.q_proj.weight"]
    layer = engine.runner.model.model.layers[0].self_attn.qkv_proj
    assert isinstance(layer, Fp8Linear)
    if kind != "fp8-block":  # blocks are re-quantized per row (one more rounding)
        assert torch.equal(layer.weight[: q.shape[0]].view(torch.uint8), q.view(torch.uint8))
    for prompt, expected in zip(PROMPTS, reference_logits(reference)):
        got = prompt_logits(engine, prompt)
        kl = torch.nn.functional.kl_div(got.log_softmax(-1), expected.log_softmax(-1), log_target=True, reduction="none")
        assert kl.sum(-1).max() < 2e-3


@pytest.mark.parametrize("strategy", ["tensor", "channel", "block"])
def test_slices_of_a_dequantized_fp8_weight_read_their_own_scales(strategy):
    from max.pipelines.lib.weights.checkpoint import CheckpointTensor
    from max.pipelines.lib.weights.fp8_checkpoint import fp8_weight
    from max.pipelines.lib.weights.quantization_config import CheckpointQuantization

    g = torch.Generator().manual_seed(0)
    codes = (torch.randn(40, 96, generator=g) * 50).to(torch.float8_e4m3fn)
    scales = {"tensor": torch.rand(1, generator=g), "channel": torch.rand(40, 1, generator=g),
              "block": torch.rand(3, 3, generator=g)}[strategy]  # fmt: skip

    def entry(name, value):
        return CheckpointTensor(
            name, tuple(value.shape), "t.safetensors", lambda dtype: value.to(dtype),
            read_slice=lambda dtype, dim, a, b: value.narrow(dim, a, b - a).to(dtype), stored_dtype=value.dtype,
        )  # fmt: skip

    quant = CheckpointQuantization("fp8", "compressed-tensors", strategy, (16, 32) if strategy == "block" else None)
    weight = fp8_weight(entry("w", codes), entry("s", scales), quant)
    full = weight.load(torch.float32)
    if strategy == "block":
        expand = scales.repeat_interleave(16, 0)[:40].repeat_interleave(32, 1)
    else:
        expand = scales.reshape(-1, 1)
    torch.testing.assert_close(full, codes.float() * expand, rtol=0, atol=0)
    # Tensor-parallel shards: rows and columns that cut through blocks.
    torch.testing.assert_close(weight.load_slice(torch.float32, 0, 7, 29), full[7:29], rtol=0, atol=0)
    torch.testing.assert_close(weight.load_slice(torch.float32, 1, 20, 70), full[:, 20:70], rtol=0, atol=0)
    rows = weight.fp8_row_scales()
    assert (rows is None) == (strategy == "block")
    if rows is not None:
        torch.testing.assert_close(rows, expand.expand(40, 1).flatten(), rtol=0, atol=0)
