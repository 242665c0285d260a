"""Loading checkpoint tensors into fused parameters, and the errors that name the tensors."""

import pytest
import torch

from max.errors import MaxError
from max.nn import Attention, GatedMLP, RotaryEmbedding
from max.pipelines.lib.weights import CheckpointTensor, load_checkpoint_into


def _tensor(name: str, value: torch.Tensor) -> CheckpointTensor:
    return CheckpointTensor(name, tuple(value.shape), "model.safetensors", lambda dtype: value.to(dtype))


def _attention(bias: bool) -> Attention:
    rotary = RotaryEmbedding(8, {"rope_type": "default", "rope_theta": 100.0}, 32, 32)
    return Attention(0, 16, num_heads=4, num_kv_heads=2, head_dim=8, rotary=rotary, qkv_bias=bias)


def test_q_k_v_fill_the_fused_projection_in_order():
    g = torch.Generator().manual_seed(0)
    parts = {n: torch.randn(rows, 16, generator=g) for n, rows in (("q", 32), ("k", 16), ("v", 16))}
    biases = {n: torch.randn(p.shape[0], generator=g) for n, p in parts.items()}
    state = {f"{n}_proj.weight": _tensor(f"{n}_proj.weight", p) for n, p in parts.items()}
    state |= {f"{n}_proj.bias": _tensor(f"{n}_proj.bias", b) for n, b in biases.items()}
    state["o_proj.weight"] = _tensor("o_proj.weight", torch.randn(16, 32, generator=g))
    attention = _attention(bias=True)
    load_checkpoint_into(attention, state, torch.float32, torch.device("cpu"))
    q, k, v = attention.qkv_proj.weight.split([32, 16, 16])
    assert torch.equal(q, parts["q"]) and torch.equal(k, parts["k"]) and torch.equal(v, parts["v"])
    assert torch.equal(attention.qkv_proj.bias, torch.cat([biases["q"], biases["k"], biases["v"]]))


def test_gate_and_up_fill_the_fused_projection():
    gate, up, down = torch.randn(24, 16), torch.randn(24, 16), torch.randn(16, 24)
    mlp = GatedMLP(16, 24, "silu")
    state = {
        "gate_proj.weight": _tensor("gate_proj.weight", gate),
        "up_proj.weight": _tensor("up_proj.weight", up),
        "down_proj.weight": _tensor("down_proj.weight", down),
    }
    load_checkpoint_into(mlp, state, torch.float32, torch.device("cpu"))
    x = torch.randn(3, 16)
    expected = (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T
    torch.testing.assert_close(mlp(x), expected)


def test_a_missing_part_is_named():
    state = {n: _tensor(n, torch.zeros(r, 16)) for n, r in (("q_proj.weight", 32), ("k_proj.weight", 16))}
    state["o_proj.weight"] = _tensor("o_proj.weight", torch.zeros(16, 32))
    with pytest.raises(MaxError, match="lacks tensors the model needs: v_proj.weight"):
        load_checkpoint_into(_attention(bias=False), state, torch.float32, torch.device("cpu"))


def test_a_part_of_the_wrong_shape_is_named_with_its_file():
    shapes = {"q_proj.weight": (32, 16), "k_proj.weight": (8, 16), "v_proj.weight": (16, 16), "o_proj.weight": (16, 32)}
    state = {n: _tensor(n, torch.zeros(s)) for n, s in shapes.items()}
    with pytest.raises(MaxError, match=r"model.safetensors: tensors 'q_proj.weight', 'k_proj.weight', 'v_proj.weight' make up shape \(56, 16\), the model expects \(64, 16\) for 'qkv_proj.weight'"):
        load_checkpoint_into(_attention(bias=False), state, torch.float32, torch.device("cpu"))
