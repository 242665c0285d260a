"""Tiny random EAGLE and EAGLE-3 draft heads in the public checkpoints' layout, written for
the tiny Llama target of `tiny_checkpoints.llama_config` (hidden size 64, 4 heads of 16, 2
KV heads): no trained heads can be fetched, so the EAGLE path is proven on these."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from max.testing.tiny_tokenizer import TOKENIZER_VOCAB

H, VOCAB, DRAFT_VOCAB = 64, TOKENIZER_VOCAB, 300


def _rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g) / math.sqrt(shape[-1])


def write_head(folder: Path, method: str, seed: int = 0) -> Path:
    """A random `method` ("eagle3" or "eagle") head in `folder` (created): config.json and
    model.safetensors. EAGLE-3's has its own draft vocabulary of DRAFT_VOCAB tokens."""
    g = torch.Generator().manual_seed(seed)
    prefix = "midlayer." if method == "eagle3" else "layers.0."
    # EAGLE-3's attention reads [embedding, fused features]; EAGLE's the fc's output.
    width = 2 * H if method == "eagle3" else H
    w = {
        f"{prefix}self_attn.q_proj.weight": _rand(g, H, width),
        f"{prefix}self_attn.k_proj.weight": _rand(g, 32, width),
        f"{prefix}self_attn.v_proj.weight": _rand(g, 32, width),
        f"{prefix}self_attn.o_proj.weight": _rand(g, H, H),
        f"{prefix}mlp.gate_proj.weight": _rand(g, 96, H),
        f"{prefix}mlp.up_proj.weight": _rand(g, 96, H),
        f"{prefix}mlp.down_proj.weight": _rand(g, H, 96),
        f"{prefix}post_attention_layernorm.weight": 1 + 0.2 * torch.randn(H, generator=g),
    }
    config = {"model_type": "llama", "hidden_size": H, "intermediate_size": 96, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 1, "rms_norm_eps": 1e-5, "vocab_size": VOCAB,
              "max_position_embeddings": 512}  # fmt: skip
    if method == "eagle3":
        for name in ("midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight", "norm.weight"):
            w[name] = 1 + 0.2 * torch.randn(H, generator=g)
        # Scaled up so that the random head's drafts are not all one token.
        w["fc.weight"] = 3 * _rand(g, H, 3 * H)
        w["lm_head.weight"] = 3 * _rand(g, DRAFT_VOCAB, H)
        kept = torch.sort(torch.randperm(VOCAB, generator=g)[:DRAFT_VOCAB]).values
        w["d2t"] = kept - torch.arange(DRAFT_VOCAB)
        w["t2d"] = torch.zeros(VOCAB, dtype=torch.bool).index_fill_(0, kept, True)
        config["draft_vocab_size"] = DRAFT_VOCAB
    else:
        w["fc.weight"] = _rand(g, H, 2 * H)
    folder.mkdir(parents=True)
    save_file(w, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder
