"""The shape of an EAGLE or EAGLE-3 draft head, read from its checkpoint's config.json.

The public heads (EAGLE's `yuhuili/EAGLE-*` and `yuhuili/EAGLE3-*`, and the heads vLLM and
SGLang serve) ship a Llama config of the head's own layer(s) (`num_hidden_layers` 1 for
EAGLE-3), with EAGLE-3's extras: `draft_vocab_size` (the head's own, smaller output
vocabulary), optionally `target_hidden_size` (the target's width, when it differs) and the
target layers whose hidden states feed the head (`eagle_aux_hidden_state_layer_ids`, at the
top level or under `eagle_config`; by default layers 2, L // 2 and L - 3 of an L-layer
target, as EAGLE-3's code and vLLM pick them).

An aux hidden state "of layer i" is the residual stream entering target layer i (the output
of layer i - 1, before any norm); the head concatenates them in ascending layer order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from max.errors import MaxError
from max.nn import DecoderConfig
from max.pipelines.lib.model.decoder_config import decoder_config_from_hf

EAGLE_METHODS = ("eagle", "eagle3")


def default_aux_layers(num_target_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's low, middle and high target layers: 2, L // 2 and L - 3."""
    return (2, num_target_layers // 2, num_target_layers - 3)


@dataclass(frozen=True)
class EagleHeadConfig:
    """What a head is made of.

    `decoder` describes the head's decoder layer(s) (its `vocab_size` is the target's
    vocabulary, which its embedding covers); `draft_vocab_size` the rows of EAGLE-3's own
    `lm_head` (EAGLE uses the target's head); `aux_layers` the target layers whose inputs
    EAGLE-3 fuses (EAGLE takes the target's last hidden state after its final norm).
    """

    method: str
    decoder: DecoderConfig
    target_hidden_size: int
    draft_vocab_size: int
    aux_layers: tuple[int, ...]
    fc_bias: bool = False
    # The checkpoint holds its own token embedding (otherwise the target's is shared).
    has_embedding: bool = True
    # The checkpoint maps its draft vocabulary to the target's (`d2t`, `t2d`).
    has_vocab_map: bool = True

    @property
    def hidden_size(self) -> int:
        """Width of the head's residual stream."""
        return self.decoder.hidden_size

    @property
    def fc_in_features(self) -> int:
        """Width of what `fc` takes: 3 target hidden states (EAGLE-3), or the token's
        embedding and one target hidden state (EAGLE)."""
        if self.method == "eagle3":
            return len(self.aux_layers) * self.target_hidden_size
        return self.hidden_size + self.target_hidden_size


def _aux_layer_ids(hf_config: Any) -> list[int] | None:
    ids = getattr(hf_config, "eagle_aux_hidden_state_layer_ids", None)
    nested = getattr(hf_config, "eagle_config", None)
    if ids is None and isinstance(nested, Mapping):
        ids = nested.get("eagle_aux_hidden_state_layer_ids")
    return None if ids is None else list(ids)


def eagle_head_config(
    hf_config: Any,
    method: str,
    target_num_layers: int,
    target_hidden_size: int,
    target_vocab_size: int,
    max_seq_len: int,
    tensor_names: set[str],
    source: str = "the draft head",
) -> EagleHeadConfig:
    """The head's config from its Llama-style `hf_config` and the names of its checkpoint's
    tensors (which say whether it has its own embedding and vocabulary map). Raises
    MaxError naming `source` when the head cannot serve this target."""
    if method not in EAGLE_METHODS:
        raise MaxError(f"{source}: unknown EAGLE method {method!r} (choose from {', '.join(EAGLE_METHODS)})")
    decoder = decoder_config_from_hf(DecoderConfig, hf_config, max_seq_len)
    if decoder.vocab_size != target_vocab_size:
        raise MaxError(
            f"{source}: the head's vocabulary has {decoder.vocab_size} tokens, the target's "
            f"{target_vocab_size}: it was trained for another target"
        )
    hidden = int(getattr(hf_config, "target_hidden_size", None) or decoder.hidden_size)
    if hidden != target_hidden_size:
        raise MaxError(
            f"{source}: the head takes target hidden states of width {hidden}, the target's are "
            f"{target_hidden_size}"
        )
    aux: tuple[int, ...] = ()
    draft_vocab = decoder.vocab_size
    if method == "eagle3":
        ids = _aux_layer_ids(hf_config)
        ids = list(default_aux_layers(target_num_layers)) if ids is None else ids
        if len(set(ids)) != 3 or not all(0 <= i < target_num_layers for i in ids):
            raise MaxError(
                f"{source}: EAGLE-3 needs 3 distinct target layers in [0, {target_num_layers}) to "
                f"read hidden states from; got {ids} (set eagle_aux_hidden_state_layer_ids)"
            )
        aux = tuple(sorted(ids))
        draft_vocab = int(getattr(hf_config, "draft_vocab_size", None) or decoder.vocab_size)
    has_map = "d2t" in tensor_names
    if method == "eagle3" and not has_map and draft_vocab != decoder.vocab_size:
        raise MaxError(
            f"{source}: the head drafts over {draft_vocab} tokens but has no d2t tensor mapping "
            "them to the target's vocabulary"
        )
    return EagleHeadConfig(
        method=method,
        decoder=decoder,
        target_hidden_size=hidden,
        draft_vocab_size=draft_vocab,
        aux_layers=aux,
        fc_bias="fc.bias" in tensor_names,
        has_embedding="embed_tokens.weight" in tensor_names,
        has_vocab_map=has_map,
    )
