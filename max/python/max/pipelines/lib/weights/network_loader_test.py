"""The streaming loader: the same weights as loading into an allocated network, and a
peak memory of the weights (measured in a child process on a model of 1.3 GB)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from max.nn import DecoderConfig, Transformer
from max.nn.fp8_linear import fp8_replacements, quantize_linears_fp8
from max.nn.quantized_linear import quantize_linears, weight_only_replacements
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, resolve_model
from max.pipelines.lib.model.pipeline_model import skip_parameter_init
from max.pipelines.lib.pipeline_builder import open_checkpoint
from max.pipelines.lib.weights import fill_dummy_weights, load_checkpoint_into
from max.pipelines.lib.weights.network_loader import LayerTransform, load_network
from max.testing.tiny_checkpoints import llama_config, write_config_only, write_tiny_checkpoint

_CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(the model's config, its checkpoint in the model's names) of a tiny random Llama."""
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), llama_config())
    resolved = resolve_model(PipelineConfig(model_path=str(path), max_length=64), register_all())
    adapter = resolved.architecture.weight_adapters[resolved.source.weights_format]
    config = resolved.architecture.pipeline_model.config_class.from_huggingface(resolved.hf_config, 64)
    return config, adapter(open_checkpoint(resolved), resolved.hf_config)


def _meta_network(config: DecoderConfig) -> Transformer:
    with torch.device("meta"), skip_parameter_init():
        return Transformer(config)


def _allocated_network(config: DecoderConfig) -> Transformer:
    net = _meta_network(config).to_empty(device=_CPU)
    for module in net.modules():
        if hasattr(module, "init_buffers"):
            module.init_buffers(_CPU)
    return net


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_weights_equal_those_loaded_into_an_allocated_network(tiny, dtype):
    config, state = tiny
    reference = _allocated_network(config).to(dtype)
    load_checkpoint_into(reference, state, dtype, _CPU)
    streamed = _meta_network(config)
    report = load_network(streamed, state, _CPU, dtype)
    _same(streamed, reference)
    assert report.weight_bytes == sum(t.numel() * t.element_size() for t in streamed.state_dict().values())


def test_dummy_weights_equal_the_allocated_networks(tiny):
    config, _ = tiny
    reference = _allocated_network(config).to(torch.bfloat16)
    fill_dummy_weights(reference, seed=3)
    streamed = _meta_network(config)
    load_network(streamed, None, _CPU, torch.bfloat16, seed=3)
    _same(streamed, reference)


def test_layers_quantized_while_loading_equal_those_quantized_after(tiny):
    config, state = tiny
    after = _allocated_network(config).to(torch.bfloat16)
    load_checkpoint_into(after, state, torch.bfloat16, _CPU)
    quantize_linears_fp8(after)
    streamed = _meta_network(config)
    transforms = {p: LayerTransform(fn) for p, fn in fp8_replacements(streamed).items()}
    load_network(streamed, state, _CPU, torch.bfloat16, transforms)
    _same(streamed, after)


def test_int4_layers_read_in_float32_equal_the_old_path(tiny):
    """CPU weight-only int4: the linear weights are quantized from float32 values, the rest
    is cast to bfloat16, as when the whole network was loaded in float32 first."""
    config, state = tiny
    old = _allocated_network(config)
    load_checkpoint_into(old, state, torch.float32, _CPU)
    quantize_linears(old, "int4", torch.bfloat16)
    with torch.no_grad():
        for param in old.parameters():
            param.data = param.data.to(torch.bfloat16)
    streamed = _meta_network(config)
    replacements = weight_only_replacements(streamed, "int4", torch.bfloat16)
    transforms = {p: LayerTransform(fn, torch.float32) for p, fn in replacements.items()}
    load_network(streamed, state, _CPU, torch.bfloat16, transforms)
    _same(streamed, old)


# -- peak memory, in a child process -------------------------------------------------------

# 12 layers of hidden 2048: 672M parameters, 1.34 GB in bfloat16 (the old loader peaked at
# three times that: float32 first, then the cast).
_BIG = dict(
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=12, num_attention_heads=16,
    num_key_value_heads=4, vocab_size=32000, max_position_embeddings=256,
)

_CHILD = textwrap.dedent(
    """
    import json, sys
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import PipelineConfig, resolve_model
    from max.pipelines.lib.pipeline_builder import load_pipeline_model

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    path, load_format, quantization = sys.argv[1:4]
    config = PipelineConfig(
        model_path=path, load_format=load_format, quantization_encoding="bfloat16",
        quantization=quantization or None, max_length=256,
    )
    resolved = resolve_model(config, register_all())
    try:  # the peak so far is the imports'; reset it where the kernel lets us
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pass
    base = status("VmRSS")
    model = load_pipeline_model(resolved)
    peak = status("VmHWM")
    params = dict(model.model.named_parameters())
    embed = params[next(n for n in params if "embed" in n)]
    print(json.dumps({
        "base": base, "peak": peak, "weights": model.load_report.weight_bytes,
        "embed_row3": embed[3, :8].float().tolist(),
    }))
    """
)


def _load_in_child(path: Path, load_format: str, quantization: str = "") -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), load_format, quantization],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A bfloat16 safetensors file written one tensor at a time (value i of a tensor is
    (i % 251) / 1000, so that reads can be checked), never holding the whole model."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name in shapes:
            n = header[name]["data_offsets"][1] // 2 - header[name]["data_offsets"][0] // 2
            f.write(_pattern(n).view(torch.int16).numpy().tobytes())


def _pattern(n: int) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.int32) % 251).to(torch.bfloat16) / 1000


def _hf_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    d = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes |= {
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i),
        }
    return shapes


_SLACK = 2**30  # the bound: peak <= final weights + 1 GiB


def test_dummy_load_peaks_at_the_weights(tmp_path):
    path = write_config_only(tmp_path / "big", llama_config(**_BIG))
    got = _load_in_child(path, "dummy")
    assert got["weights"] > 1.3e9
    assert got["peak"] - got["base"] <= got["weights"] + _SLACK, got


def test_fp8_load_never_holds_the_bfloat16_weights(tmp_path):
    path = write_config_only(tmp_path / "big", llama_config(**_BIG))
    got = _load_in_child(path, "dummy", "fp8")
    # The decoder's linears in one byte per weight, the embedding and LM head in bfloat16.
    assert got["weights"] < 0.65 * 1.34e9
    assert got["peak"] - got["base"] <= got["weights"] + _SLACK, got


def test_safetensors_load_peaks_at_the_weights_and_reads_the_file(tmp_path):
    cfg = llama_config(**_BIG)
    path = write_config_only(tmp_path / "big", cfg)
    _write_safetensors(path / "model.safetensors", _hf_shapes(cfg))
    got = _load_in_child(path, "safetensors")
    h = cfg["hidden_size"]
    assert got["embed_row3"] == _pattern(4 * h)[3 * h : 3 * h + 8].float().tolist()
    # The file's pages are given back as they are read: the peak is the weights, not the
    # weights plus the whole memory-mapped file.
    assert got["peak"] - got["base"] <= got["weights"] + _SLACK, got
