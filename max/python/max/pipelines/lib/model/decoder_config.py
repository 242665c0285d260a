"""Reading the fields that every Llama-family Hugging Face config shares.

Architectures whose network is `max.nn.Transformer` build their `DecoderConfig` with
`decoder_config_from_hf` and pass only what is special about them (biases, q/k norms,
experts). Defaults are read as transformers reads them (see `hf_config`).
"""

from __future__ import annotations

from typing import Any, TypeVar

from max.nn import DecoderConfig
from max.nn.transformer import FULL, SLIDING
from max.pipelines.lib.hub.hf_config import head_dim, layer_types, rope_parameters, text_config

C = TypeVar("C", bound=DecoderConfig)


def decoder_config_from_hf(cls: type[C], hf_config: Any, max_seq_len: int, **special: Any) -> C:
    """A `cls` (DecoderConfig subclass) from a Llama-family HF config (or the text part of a
    vision-language one) plus `special` fields."""
    hf_config = text_config(hf_config)
    num_heads = hf_config.num_attention_heads
    fields: dict[str, Any] = dict(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        intermediate_size=hf_config.intermediate_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=num_heads,
        num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or num_heads,
        head_dim=head_dim(hf_config),
        norm_eps=hf_config.rms_norm_eps,
        rope_parameters=rope_parameters(hf_config),
        max_position_embeddings=hf_config.max_position_embeddings,
        max_seq_len=max_seq_len,
        hidden_act=getattr(hf_config, "hidden_act", "silu"),
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        layer_types=layer_types(hf_config),
        sliding_window=getattr(hf_config, "sliding_window", None),
    )
    fields.update(special)
    return cls(**fields)


def windowed_everywhere(hf_config: Any) -> list[str]:
    """Layer types of a config whose `sliding_window`, when set, applies to every layer
    (Mistral, Phi-3): all "sliding_attention", or all "full_attention" without a window or
    with one no shorter than the model's positions (Phi-3-128k's 262144), which never binds."""
    hf_config = text_config(hf_config)
    window = getattr(hf_config, "sliding_window", None)
    kind = SLIDING if window and window < hf_config.max_position_embeddings else FULL
    return [kind] * hf_config.num_hidden_layers
