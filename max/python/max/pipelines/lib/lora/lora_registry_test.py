"""Reading and checking PEFT adapters (each refusal names what is wrong), the registry's
device slots and host LRU, and the prefix-cache keys of adapter requests."""

import json

import pytest
import torch
from safetensors.torch import save_file

from max.errors import MaxError
from max.nn.lora import attach_lora
from max.nn.transformer import DecoderConfig, Transformer
from max.pipelines.lib.lora import AdapterKeyedTokens, LoRARegistry, read_adapter
from max.pipelines.lib.lora.engine_lora import parse_lora_modules
from max.pipelines.lib.model.multimodal import ImageInput, ImageKeyedTokens

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM = 32, 48, 4, 2, 8


def _network():
    config = DecoderConfig(
        vocab_size=50, hidden_size=HIDDEN, intermediate_size=INTER, num_layers=2, num_heads=HEADS,
        num_kv_heads=KV_HEADS, head_dim=HEAD_DIM, norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        max_position_embeddings=64, max_seq_len=64,
    )  # fmt: skip
    return Transformer(config)


SHAPES = {
    "self_attn.q_proj": (HIDDEN, HEADS * HEAD_DIM),
    "self_attn.k_proj": (HIDDEN, KV_HEADS * HEAD_DIM),
    "self_attn.v_proj": (HIDDEN, KV_HEADS * HEAD_DIM),
    "self_attn.o_proj": (HEADS * HEAD_DIM, HIDDEN),
    "mlp.gate_proj": (HIDDEN, INTER),
    "mlp.up_proj": (HIDDEN, INTER),
    "mlp.down_proj": (INTER, HIDDEN),
}


def _write(folder, rank=4, config=None, tensors=None, modules=SHAPES, seed=0):
    """A PEFT adapter folder written by hand (PEFT's names and layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    if tensors is None:
        tensors = {}
        for layer in range(2):
            for module, (fan_in, fan_out) in modules.items():
                key = f"base_model.model.model.layers.{layer}.{module}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=g)
                tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=g)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "bias": "none", **(config or {})}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def _registry(max_loras=2, max_cpu_loras=None, max_rank=8):
    targets = attach_lora(_network(), max_loras, max_rank)
    return LoRARegistry(targets, max_cpu_loras)


def test_reads_rank_and_scale_plain_and_rslora(tmp_path):
    adapter = read_adapter("a", str(_write(tmp_path / "a", rank=4)))
    assert adapter.rank == 4 and adapter.scale == 2.0
    assert set(adapter.weights) == {f"layers.{i}.{m}" for i in range(2) for m in SHAPES}
    rs = read_adapter("b", str(_write(tmp_path / "b", rank=4, config={"use_rslora": True, "lora_alpha": 6})))
    assert rs.scale == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"use_dora": True}, "uses DoRA"),
        ({"bias": "lora_only"}, "trains biases"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
        ({"peft_type": "IA3"}, "peft_type IA3"),
    ],
)
def test_unsupported_adapter_configs_are_refused_by_name(tmp_path, config, message):
    with pytest.raises(MaxError, match=message):
        read_adapter("a", str(_write(tmp_path / "a", config=config)))


def test_tensors_outside_the_supported_projections_are_refused_naming_the_module(tmp_path):
    moe = {
        "base_model.model.model.layers.0.mlp.experts.3.gate_proj.lora_A.weight": torch.zeros(4, HIDDEN),
        "base_model.model.model.layers.0.mlp.experts.3.gate_proj.lora_B.weight": torch.zeros(INTER, 4),
    }
    with pytest.raises(MaxError, match=r"module layers\.0\.mlp\.experts\.3\.gate_proj is in the MoE experts"):
        read_adapter("a", str(_write(tmp_path / "moe", tensors=moe)))
    head = {"base_model.model.lm_head.lora_A.weight": torch.zeros(4, HIDDEN)}
    with pytest.raises(MaxError, match=r"tensor base_model\.model\.lm_head\.lora_A\.weight is not a LoRA matrix"):
        read_adapter("a", str(_write(tmp_path / "head", tensors=head)))
    half = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, HIDDEN)}
    with pytest.raises(MaxError, match=r"q_proj has lora_A without its other half"):
        read_adapter("a", str(_write(tmp_path / "half", tensors=half)))
    with pytest.raises(MaxError, match="no such folder"):
        read_adapter("a", str(tmp_path / "missing"))


def test_registry_refuses_adapters_that_do_not_fit_the_model(tmp_path):
    registry = _registry(max_rank=8)
    with pytest.raises(MaxError, match=r"module layers\.0\.mlp\.down_proj has rank 16, over --max-lora-rank 8"):
        registry.add("big", str(_write(tmp_path / "big", rank=16)))
    wrong = {**SHAPES, "mlp.down_proj": (INTER + 1, HIDDEN)}
    with pytest.raises(MaxError, match=r"module layers\.0\.mlp\.down_proj has lora_A \(4, 49\).*needs \(4, 48\)"):
        registry.add("wrong", str(_write(tmp_path / "wrong", modules=wrong)))
    deep = {f"base_model.model.model.layers.7.self_attn.q_proj.lora_{h}.weight": torch.zeros(*s) for h, s in (("A", (4, HIDDEN)), ("B", (32, 4)))}
    with pytest.raises(MaxError, match=r"module layers\.7\.self_attn\.q_proj is not a projection of this model"):
        registry.add("deep", str(_write(tmp_path / "deep", tensors=deep)))
    assert registry.names() == []
    with pytest.raises(MaxError, match="'nope' does not exist"):
        registry.ref("nope")


def test_slots_are_reused_least_recently_used_and_evicted_adapters_are_read_again(tmp_path):
    registry = _registry(max_loras=2, max_cpu_loras=2)
    refs = [registry.add(f"a{i}", str(_write(tmp_path / f"a{i}", seed=i))) for i in range(3)]
    with pytest.raises(MaxError, match="already loaded"):
        registry.add("a0", str(tmp_path / "a0"))
    assert registry.activate([refs[0], None, refs[1]]) == [0, -1, 1]
    assert registry.activate([refs[1]]) == [1]
    # a2 takes the slot of a0 (used least recently); a0 was evicted from the host (LRU of 2).
    assert registry.activate([refs[2]]) == [0]
    assert refs[0].uid not in registry._host
    assert registry.activate([refs[0], refs[2]]) == [1, 0]
    q = registry.targets.targets["layers.1.self_attn.q_proj"]
    a0 = read_adapter("a0", str(tmp_path / "a0")).weights["layers.1.self_attn.q_proj"][0]
    torch.testing.assert_close(q.slots.a[1, :4], a0)
    assert float(registry.targets.scales[1]) == 2.0
    with pytest.raises(RuntimeError, match="uses 3 LoRA adapters; the device holds 2"):
        registry.activate(refs)
    registry.remove("a1")
    assert registry.names() == ["a0", "a2"]
    with pytest.raises(MaxError, match="not loaded"):
        registry.remove("a1")


def test_prefix_keys_of_adapters_never_collide():
    tokens = [5, 6, 7, 2**31]
    one, two = AdapterKeyedTokens(tokens, 1), AdapterKeyedTokens(tokens, 2)
    assert len(one) == 4 and one[:2] != tokens[:2] and one[:4] != two[:4] and one[1] == one[:][1]
    image = ImageInput.create(torch.zeros(2, 3).numpy(), (1, 1, 2), 1, 2)
    keyed = AdapterKeyedTokens(ImageKeyedTokens(tokens, [image]), 3)
    assert keyed[1] < 0 and keyed[1] != image.key_token and keyed[0] == 5 ^ (3 << 32)


def test_lora_modules_flag_pairs():
    assert parse_lora_modules(["a=/x", "b = org/repo"]) == [("a", "/x"), ("b", "org/repo")]
    with pytest.raises(MaxError, match="give NAME=PATH"):
        parse_lora_modules(["nopath"])


def test_quantized_projections_and_bad_sizes_are_refused():
    network = _network()
    network.layers[1].mlp.down_proj = torch.nn.Identity()  # as a quantized layer replaces it
    with pytest.raises(MaxError, match=r"layers\.1\.mlp\.down_proj is Identity \(quantized weights with LoRA"):
        attach_lora(network, 2, 8)
    with pytest.raises(MaxError, match="must be at least 1"):
        attach_lora(_network(), 0, 8)


def test_adapters_read_in_the_background_register_when_finished(tmp_path):
    registry = _registry()
    registry.start_add("good", str(_write(tmp_path / "good")), "op1")
    registry.start_add("big", str(_write(tmp_path / "big", rank=16)), "op2")
    with pytest.raises(MaxError, match="already loaded"):
        registry.start_add("good", str(tmp_path / "good"), "op3")
    done = {}
    while registry.reading:
        done.update(registry.finish_adds(timeout=1.0))
    assert done["op1"] is None and "over --max-lora-rank 8" in done["op2"]
    assert registry.names() == ["good"]
