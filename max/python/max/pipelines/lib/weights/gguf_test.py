"""The GGUF reader and decoders against the `gguf` package, on files written here."""

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize as reference_dequantize

from max.errors import MaxError
from max.pipelines.lib.weights.gguf_dequant import SUPPORTED_GGML_TYPES, dequantize
from max.pipelines.lib.weights.gguf_reader import GGUFFile

# f16 fields (byte offsets) of each block type, kept finite in random test blocks.
_F16_OFFSETS = {
    "Q8_0": [0],
    "Q4_0": [0],
    "Q4_1": [0, 2],
    "Q5_0": [0],
    "Q5_1": [0, 2],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q6_K": [208],
}


def _random_blocks(qtype: GGMLQuantizationType, rows: int, rng) -> np.ndarray:
    block, nbytes = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, nbytes), dtype=np.uint8)
    for offset in _F16_OFFSETS[qtype.name]:
        raw[:, offset + 1] = rng.integers(0x20, 0x3C, size=rows) | (rng.integers(0, 2, size=rows) << 7)
    return raw


def _write(path, tensors: dict, metadata=True):
    writer = GGUFWriter(str(path), "llama")
    if metadata:
        writer.add_uint32("llama.block_count", 2)
        writer.add_string("general.name", "tiny ☃")
        writer.add_array("tokenizer.ggml.tokens", ["<s>", "héllo", "", "wörld"])
        writer.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.0, 3.25])
        writer.add_float32("llama.rope.freq_base", 500000.0)
    for name, (data, raw_dtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_reader_reads_metadata_and_tensors(tmp_path):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 32)).astype(np.float32)
    f16 = rng.standard_normal((2, 64)).astype(np.float16)
    q = _random_blocks(GGMLQuantizationType.Q4_K, 4, rng)
    path = tmp_path / "t.gguf"
    _write(path, {"a.weight": (f32, None), "b.weight": (f16, None), "c.weight": (q, GGMLQuantizationType.Q4_K)})
    g = GGUFFile(path)
    assert g.architecture == "llama"
    assert g.field("{arch}.block_count") == 2
    assert g.metadata["general.name"] == "tiny ☃"
    assert g.metadata["tokenizer.ggml.tokens"] == ["<s>", "héllo", "", "wörld"]
    np.testing.assert_array_equal(g.metadata["tokenizer.ggml.scores"], [0.0, -1.5, 2.0, 3.25])
    assert g.tensors["a.weight"].shape == (3, 32)
    assert g.tensors["c.weight"].shape == (4, 256) and g.tensors["c.weight"].type_name == "Q4_K"
    a = dequantize(g.tensor_bytes("a.weight"), g.tensors["a.weight"], torch.float32)
    np.testing.assert_array_equal(a.numpy(), f32)
    b = dequantize(g.tensor_bytes("b.weight"), g.tensors["b.weight"], torch.float32)
    np.testing.assert_array_equal(b.numpy(), f16.astype(np.float32))
    c = dequantize(g.tensor_bytes("c.weight"), g.tensors["c.weight"], torch.float32)
    np.testing.assert_array_equal(c.numpy(), reference_dequantize(q, GGMLQuantizationType.Q4_K))
    a[0, 0] = 123.0  # decoded tensors are copies, not views of the read-only map
    assert dequantize(g.tensor_bytes("a.weight"), g.tensors["a.weight"], torch.float32)[0, 0] != 123.0


@pytest.mark.parametrize("type_name", [t for t in SUPPORTED_GGML_TYPES if t in _F16_OFFSETS])
def test_decoders_are_bit_exact(type_name, tmp_path):
    qtype = GGMLQuantizationType[type_name]
    raw = _random_blocks(qtype, 8, np.random.default_rng(1))
    path = tmp_path / "q.gguf"
    _write(path, {"w": (raw, qtype)}, metadata=False)
    g = GGUFFile(path)
    ours = dequantize(g.tensor_bytes("w"), g.tensors["w"], torch.float32).numpy()
    np.testing.assert_array_equal(ours, reference_dequantize(raw, qtype))


def test_bf16_tensors(tmp_path):
    values = torch.randn(2, 8).to(torch.bfloat16)
    raw = values.view(torch.uint8).numpy()
    path = tmp_path / "bf.gguf"
    _write(path, {"w": (raw, GGMLQuantizationType.BF16)}, metadata=False)
    g = GGUFFile(path)
    out = dequantize(g.tensor_bytes("w"), g.tensors["w"], torch.bfloat16)
    assert torch.equal(out, values)


def test_truncated_file_names_the_tensor(tmp_path):
    path = tmp_path / "t.gguf"
    _write(path, {"a.weight": (np.ones((64, 64), np.float32), None)})
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(MaxError, match="truncated: tensor 'a.weight'"):
        GGUFFile(cut)
    cut.write_bytes(data[:40])
    with pytest.raises(MaxError, match="not a valid GGUF file"):
        GGUFFile(cut)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(MaxError, match="bad magic"):
        GGUFFile(path)


def test_unsupported_type_names_tensor_and_type(tmp_path):
    block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType.Q2_K]
    path = tmp_path / "q2.gguf"
    _write(path, {"w": (np.zeros((1, nbytes), np.uint8), GGMLQuantizationType.Q2_K)}, metadata=False)
    g = GGUFFile(path)
    with pytest.raises(MaxError, match="'w' is encoded as Q2_K, which is not supported"):
        dequantize(g.tensor_bytes("w"), g.tensors["w"], torch.float32)
