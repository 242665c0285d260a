"""EAGLE-3 and EAGLE heads on tiny random checkpoints written with the public tensor names,
against a float32 reference written here from the papers' equations in plain torch
(RMSNorm, RoPE, causal grouped-query attention, SwiGLU): the same outputs within 1e-5,
whether the sequence runs in one step or in several over the paged KV cache, and when the
head's own output feeds the next draft step. Bad checkpoints are refused by name."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from max.errors import MaxError
from max.kv_cache import KVCacheParams, PagedKVCache
from max.nn import step_context
from max.pipelines.lib.speculative.eagle_checkpoint import load_eagle_head
from max.pipelines.lib.speculative.eagle_config import default_aux_layers
from max_kernels import RaggedLayout

H, HEADS, KV_HEADS, D, INTER, VOCAB, DRAFT_VOCAB = 32, 4, 2, 8, 48, 97, 40
THETA, EPS, PAGE = 10000.0, 1e-5, 4
TARGET_LAYERS, TARGET_H = 8, 24


def _config(**extra):
    config = {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_size": H,
        "intermediate_size": INTER, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": 1, "rms_norm_eps": EPS, "rope_theta": THETA, "vocab_size": VOCAB,
        "max_position_embeddings": 256, "hidden_act": "silu", "tie_word_embeddings": False,
    }  # fmt: skip
    config.update(extra)
    return config


def _layer(prefix, in_features, g):
    def rand(*shape, scale=None):
        return torch.randn(*shape, generator=g) * (scale or 1 / math.sqrt(shape[-1]))

    return {
        f"{prefix}self_attn.q_proj.weight": rand(HEADS * D, in_features),
        f"{prefix}self_attn.k_proj.weight": rand(KV_HEADS * D, in_features),
        f"{prefix}self_attn.v_proj.weight": rand(KV_HEADS * D, in_features),
        f"{prefix}self_attn.o_proj.weight": rand(H, HEADS * D),
        f"{prefix}mlp.gate_proj.weight": rand(INTER, H),
        f"{prefix}mlp.up_proj.weight": rand(INTER, H),
        f"{prefix}mlp.down_proj.weight": rand(H, INTER),
        f"{prefix}post_attention_layernorm.weight": 1 + 0.2 * torch.randn(H, generator=g),
    }


def eagle3_tensors(seed=0, with_embedding=True):
    g = torch.Generator().manual_seed(seed)
    w = _layer("midlayer.", 2 * H, g)
    for name in ("midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight", "norm.weight"):
        w[name] = 1 + 0.2 * torch.randn(H, generator=g)
    w["fc.weight"] = torch.randn(H, 3 * TARGET_H, generator=g) / math.sqrt(3 * TARGET_H)
    w["lm_head.weight"] = torch.randn(DRAFT_VOCAB, H, generator=g) / math.sqrt(H)
    if with_embedding:
        w["embed_tokens.weight"] = torch.randn(VOCAB, H, generator=g)
    # The draft vocabulary: 40 of the target's 97 ids, in order; d2t holds offsets.
    kept = torch.sort(torch.randperm(VOCAB, generator=g)[:DRAFT_VOCAB]).values
    w["d2t"] = kept - torch.arange(DRAFT_VOCAB)
    w["t2d"] = torch.zeros(VOCAB, dtype=torch.bool).index_fill_(0, kept, True)
    return w


def eagle_tensors(seed=0, layers=2):
    g = torch.Generator().manual_seed(seed)
    w = {}
    for i in range(layers):
        w.update(_layer(f"layers.{i}.", H, g))
        if i > 0:
            w[f"layers.{i}.input_layernorm.weight"] = 1 + 0.2 * torch.randn(H, generator=g)
    w["fc.weight"] = torch.randn(H, 2 * H, generator=g) / math.sqrt(2 * H)
    w["fc.bias"] = 0.1 * torch.randn(H, generator=g)
    w["embed_tokens.weight"] = torch.randn(VOCAB, H, generator=g)
    return w


def write_head(folder, tensors, config):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def load(folder, method="eagle3", target_h=TARGET_H):
    return load_eagle_head(folder, method, TARGET_LAYERS, target_h, VOCAB, 128, torch.device("cpu"), torch.float32)


# -- the reference, from the equations ----------------------------------------------------
def rms_norm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def rope(x, positions):
    inv_freq = 1.0 / THETA ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = positions.double()[:, None] * inv_freq[None]
    cos, sin = torch.cat([angles, angles], -1).cos().float(), torch.cat([angles, angles], -1).sin().float()
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]


def attention(x, w, prefix, positions):
    t = x.shape[0]
    q = rope((x @ w[f"{prefix}q_proj.weight"].T).view(t, HEADS, D), positions)
    k = rope((x @ w[f"{prefix}k_proj.weight"].T).view(t, KV_HEADS, D), positions)
    v = (x @ w[f"{prefix}v_proj.weight"].T).view(t, KV_HEADS, D)
    k, v = (z.repeat_interleave(HEADS // KV_HEADS, dim=1) for z in (k, v))
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(D)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(t, HEADS * D)
    return out @ w[f"{prefix}o_proj.weight"].T


def mlp(x, w, prefix):
    gate, up = x @ w[f"{prefix}gate_proj.weight"].T, x @ w[f"{prefix}up_proj.weight"].T
    return (torch.nn.functional.silu(gate) * up) @ w[f"{prefix}down_proj.weight"].T


def eagle3_reference(w, tokens, g, positions):
    """EAGLE-3's layer: h = g + attn([norm(e); norm(g)]), out = h + mlp(norm(h))."""
    e = w["embed_tokens.weight"][tokens]
    x = torch.cat([rms_norm(e, w["midlayer.input_layernorm.weight"]), rms_norm(g, w["midlayer.hidden_norm.weight"])], -1)
    h = g + attention(x, w, "midlayer.self_attn.", positions)
    out = h + mlp(rms_norm(h, w["midlayer.post_attention_layernorm.weight"]), w, "midlayer.mlp.")
    return out, rms_norm(out, w["norm.weight"]) @ w["lm_head.weight"].T


def eagle_reference(w, tokens, f, positions, layers=2):
    """EAGLE: x = fc([e; f]); Llama layers, the first without its input norm."""
    x = torch.cat([w["embed_tokens.weight"][tokens], f], -1) @ w["fc.weight"].T + w["fc.bias"]
    for i in range(layers):
        p = f"layers.{i}."
        normed = x if i == 0 else rms_norm(x, w[f"{p}input_layernorm.weight"])
        x = x + attention(normed, w, f"{p}self_attn.", positions)
        x = x + mlp(rms_norm(x, w[f"{p}post_attention_layernorm.weight"]), w, f"{p}mlp.")
    return x


# -- running a head over the paged cache ---------------------------------------------------
def run_steps(head, tokens, hidden, chunks, num_layers=1):
    """Runs one sequence through `head` in consecutive chunks of the given lengths (each a
    step over the head's paged cache); returns the outputs of every position."""
    params = KVCacheParams(num_layers=num_layers, num_kv_heads=KV_HEADS, head_dim=D, page_size=PAGE, dtype=torch.float32)
    cache = PagedKVCache(params, 16, "cpu", enable_prefix_caching=False)
    assert cache.reserve("s", len(tokens))
    pages = torch.tensor(cache.pages("s"), dtype=torch.int32)[None]
    outs, start = [], 0
    for n in chunks:
        index = torch.arange(start, start + n)
        layout = RaggedLayout(
            query_start=torch.tensor([0, n], dtype=torch.int32),
            context_lens=torch.tensor([start + n], dtype=torch.int32),
            page_table=pages,
            slot_mapping=(pages[0, index // PAGE].long() * PAGE + index % PAGE),
            page_size=PAGE,
            num_decode=1 if n == 1 else 0,
            query_lens=[n],
            context_lens_host=[start + n],
        )
        with torch.inference_mode(), step_context(layout, cache):
            outs.append(head(tokens[start : start + n], index, hidden[start : start + n]))
        start += n
    return torch.cat(outs)


@pytest.fixture(scope="module")
def eagle3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eagle3")
    return write_head(folder, eagle3_tensors(), _config(draft_vocab_size=DRAFT_VOCAB, target_hidden_size=TARGET_H))


@pytest.mark.parametrize("chunks", [[9], [5, 4], [3, 1, 1, 4]])
def test_eagle3_head_matches_the_reference(eagle3_folder, chunks):
    w = eagle3_tensors()
    head = load(eagle3_folder)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (9,), generator=g)
    aux = torch.randn(9, 3 * TARGET_H, generator=g)
    fused = aux @ w["fc.weight"].T
    assert torch.allclose(head.fuse(aux), fused, atol=1e-5, rtol=0)
    out = run_steps(head, tokens, head.fuse(aux), chunks)
    ref_out, ref_logits = eagle3_reference(w, tokens, fused, torch.arange(9))
    assert torch.allclose(out, ref_out, atol=1e-5, rtol=0)
    assert torch.allclose(head.logits(out), ref_logits, atol=1e-5, rtol=0)


def test_eagle3_head_feeds_itself_back_and_maps_drafts_to_target_ids(eagle3_folder):
    w = eagle3_tensors()
    head = load(eagle3_folder)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, VOCAB, (6,), generator=g)
    fused = torch.randn(6, 3 * TARGET_H, generator=g) @ w["fc.weight"].T
    first, logits = eagle3_reference(w, tokens, fused, torch.arange(6))
    draft = logits[-1].argmax()
    target_id = int(draft + w["d2t"][draft])
    assert int(head.to_target_ids(draft[None])[0]) == target_id and bool(w["t2d"][target_id])
    # Draft step 2: the drafted token at position 6, with the head's own last output.
    tokens2 = torch.cat([tokens, torch.tensor([target_id])])
    hidden2 = torch.cat([fused, first[-1:]])
    ref_out, _ = eagle3_reference(w, tokens2, hidden2, torch.arange(7))
    out = run_steps(head, tokens2, hidden2, [6, 1])
    assert torch.allclose(out, ref_out, atol=1e-5, rtol=0)


def test_eagle3_head_without_embedding_shares_the_target_one(tmp_path):
    w = eagle3_tensors(with_embedding=False)
    folder = write_head(tmp_path / "h", {f"model.{k}": v for k, v in w.items()}, _config(draft_vocab_size=DRAFT_VOCAB, target_hidden_size=TARGET_H))
    head = load(folder)
    assert head.config.aux_layers == tuple(sorted(default_aux_layers(TARGET_LAYERS)))
    embed = torch.nn.Embedding(VOCAB, H)
    head.share_embedding(embed)
    tokens = torch.arange(5)
    fused = torch.randn(5, H)
    ref_out, _ = eagle3_reference({**w, "embed_tokens.weight": embed.weight.detach()}, tokens, fused, torch.arange(5))
    assert torch.allclose(run_steps(head, tokens, fused, [5]), ref_out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunks", [[7], [4, 1, 2]])
def test_eagle_head_matches_the_reference(tmp_path, chunks):
    w = eagle_tensors()
    head = load(write_head(tmp_path / "e", w, _config(num_hidden_layers=2)), method="eagle", target_h=H)
    g = torch.Generator().manual_seed(3)
    tokens, features = torch.randint(0, VOCAB, (7,), generator=g), torch.randn(7, H, generator=g)
    params = KVCacheParams(num_layers=2, num_kv_heads=KV_HEADS, head_dim=D, page_size=PAGE, dtype=torch.float32)
    assert params.num_layers == len(head.layers)
    out = run_steps(head, tokens, features, chunks, num_layers=2)
    assert torch.allclose(out, eagle_reference(w, tokens, features, torch.arange(7)), atol=1e-5, rtol=0)


def test_aux_layers_from_the_config_sorted_and_checked(tmp_path):
    folder = write_head(tmp_path / "a", eagle3_tensors(), _config(draft_vocab_size=DRAFT_VOCAB, target_hidden_size=TARGET_H, eagle_config={"eagle_aux_hidden_state_layer_ids": [6, 1, 3]}))
    assert load(folder).config.aux_layers == (1, 3, 6)
    bad = write_head(tmp_path / "b", eagle3_tensors(), _config(draft_vocab_size=DRAFT_VOCAB, target_hidden_size=TARGET_H, eagle_aux_hidden_state_layer_ids=[1, 1, 9]))
    with pytest.raises(MaxError, match=r"3 distinct target layers in \[0, 8\).*\[1, 1, 9\]"):
        load(bad)


def test_bad_checkpoints_are_refused_by_name(tmp_path):
    config = _config(draft_vocab_size=DRAFT_VOCAB, target_hidden_size=TARGET_H)
    w = eagle3_tensors()
    w["fc.weight"] = w["fc.weight"][:, :-1]
    with pytest.raises(MaxError, match=r"model\.safetensors: tensor 'fc\.weight' has shape \(32, 71\)"):
        load(write_head(tmp_path / "shape", w, config))
    w = eagle3_tensors()
    del w["midlayer.hidden_norm.weight"]
    with pytest.raises(MaxError, match="lacks tensors.*midlayer.hidden_norm.weight"):
        load(write_head(tmp_path / "missing", w, config))
    with pytest.raises(MaxError, match="vocabulary has 97 tokens, the target's 96"):
        load_eagle_head(write_head(tmp_path / "ok", eagle3_tensors(), config), "eagle3", TARGET_LAYERS, TARGET_H, 96, 128, torch.device("cpu"), torch.float32)
    with pytest.raises(MaxError, match="target hidden states of width 24, the target's are 32"):
        load(tmp_path / "ok", target_h=H)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(config))
    (pickled / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(MaxError, match="pickled.*convert them to safetensors"):
        load(pickled)
