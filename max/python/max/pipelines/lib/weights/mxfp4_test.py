"""MXFP4 decoding against transformers' own decoder, on random blocks and on the experts of
a tiny gpt-oss checkpoint written in MXFP4 and loaded by transformers."""

from pathlib import Path

import pytest
import torch
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from max.errors import MaxError
from max.pipelines.lib.weights import CheckpointTensor, open_safetensors
from max.pipelines.lib.weights.mxfp4 import FP4_VALUES, decode_mxfp4, decode_mxfp4_pairs
from max.testing.mxfp4_checkpoints import encode_mxfp4, write_mxfp4_experts
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS


def _random_pair(experts=3, rows=8, groups=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (experts, rows, groups, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(100, 140, (experts, rows, groups), generator=g, dtype=torch.uint8)
    return blocks, scales


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_decoding_matches_transformers(dtype):
    blocks, scales = _random_pair()
    scales[0, 0, 0] = 127 - 20  # float16 subnormals round alike too
    expected = convert_moe_packed_tensors(blocks, scales, dtype=dtype)  # [E, cols, rows]
    ours = decode_mxfp4(blocks, scales).to(dtype)
    assert ours.shape == (3, 8, 64)
    torch.testing.assert_close(ours.transpose(1, 2), expected, rtol=0, atol=0)


def test_nibble_order_and_scale():
    blocks = torch.zeros(1, 1, 16, dtype=torch.uint8)
    blocks[0, 0, 0] = 0x2F  # low nibble 0xF (-6.0) first, then 0x2 (1.0)
    scales = torch.tensor([[127 + 3]], dtype=torch.uint8)
    row = decode_mxfp4(blocks, scales)[0]
    assert row[:3].tolist() == [-6.0 * 8, 1.0 * 8, 0.0]


def test_encoding_round_trips_fp4_values():
    w = (torch.tensor(FP4_VALUES).repeat(4) * 2.0**-5).view(2, 32)
    blocks, scales = encode_mxfp4(w)
    torch.testing.assert_close(decode_mxfp4(blocks, scales), w, rtol=0, atol=0)


def _tensor(name, value: torch.Tensor) -> CheckpointTensor:
    return CheckpointTensor(
        name, tuple(value.shape), "t.safetensors", lambda dtype: value.to(dtype),
        read_slice=lambda dtype, dim, start, stop: value.narrow(dim, start, stop - start).to(dtype),
    )  # fmt: skip


def test_pairs_become_one_lazily_decoded_tensor():
    blocks, scales = _random_pair(seed=1)
    checkpoint = {"w_blocks": _tensor("w_blocks", blocks), "w_scales": _tensor("w_scales", scales), "b": _tensor("b", scales)}
    decoded = decode_mxfp4_pairs(checkpoint)
    assert sorted(decoded) == ["b", "w"] and decoded["w"].shape == (3, 8, 64) and decoded["w"].encoding == "mxfp4"
    full = decoded["w"].load(torch.float32)
    torch.testing.assert_close(full, decode_mxfp4(blocks, scales), rtol=0, atol=0)
    torch.testing.assert_close(decoded["w"].load_slice(torch.float32, 0, 1, 2), full[1:2], rtol=0, atol=0)


def test_blocks_without_scales_are_a_clear_error():
    blocks, _ = _random_pair()
    with pytest.raises(MaxError, match="'w_blocks' has no 'w_scales' beside it"):
        decode_mxfp4_pairs({"w_blocks": _tensor("w_blocks", blocks)})
    with pytest.raises(MaxError, match="do not pair up"):
        decode_mxfp4_pairs({"w_blocks": _tensor("w_blocks", blocks), "w_scales": _tensor("w_scales", blocks)})


def test_tiny_checkpoint_experts_decode_as_transformers_loads_them(tmp_path):
    from transformers import AutoModelForCausalLM

    path = write_mxfp4_experts(write_tiny_checkpoint(tmp_path / "m", TINY_CONFIGS["gpt_oss"], seed=2))
    reference = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    ours = decode_mxfp4_pairs(open_safetensors([Path(path) / "model.safetensors"]))
    for i, layer in enumerate(reference.model.layers):
        for proj in ("gate_up_proj", "down_proj"):
            decoded = ours[f"model.layers.{i}.mlp.experts.{proj}"].load(torch.float32)
            # transformers holds [E, in, out]; the checkpoint stores [E, out, in].
            expected = getattr(layer.mlp.experts, proj).detach()
            torch.testing.assert_close(decoded.transpose(1, 2), expected, rtol=0, atol=0)
