"""Tiny sentence-transformers embedding models, written locally from a tiny random
checkpoint of one of `TINY_CONFIGS` (qwen3 by default; no download): the bare transformer
(`Qwen3Model`, `LlamaModel`..., no LM head), a Pooling module, optionally Dense projections
and Normalize, saved by sentence-transformers itself so that its files are exactly what a
real embedding repo holds. The tokenizer keeps no chat template:
sentence-transformers 6 would wrap plain texts in it (its "message" modality), which
embedding repos saved by earlier versions do not."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

# sentence-transformers' names of the pooling modes we serve.
ST_POOLING = {"last": "lasttoken", "mean": "mean", "cls": "cls"}


def write_embedding_model(
    directory: Path,
    mode: str = "last",
    normalize: bool = True,
    seed: int = 0,
    arch: str = "qwen3",
    dense: Sequence[tuple[int, torch.nn.Module]] = (),
) -> Path:
    """A sentence-transformers model folder (see the module docstring) of the `arch` tiny
    checkpoint, pooling by `mode` (last, mean or cls), then one random Dense module per
    `dense` entry (its output size and activation, e.g. `torch.nn.Tanh()`)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    directory = Path(directory)
    base = write_tiny_checkpoint(
        directory.parent / f"{directory.name}-base",
        TINY_CONFIGS[arch],
        seed,
        with_tokenizer=True,
    )
    (base / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = base / "tokenizer_config.json"
    if tokenizer_config.is_file():
        fields = json.loads(tokenizer_config.read_text())
        fields.pop("chat_template", None)
        tokenizer_config.write_text(json.dumps(fields))
    transformer = Transformer(str(base))
    width = transformer.get_embedding_dimension()
    modules = [transformer, Pooling(width, pooling_mode=ST_POOLING[mode])]
    generator = torch.Generator().manual_seed(seed)
    for out_features, activation in dense:
        # Weights of about unit gain, so that the activation is not just linear near zero.
        weight = torch.randn(out_features, width, generator=generator) / width**0.5
        bias = torch.randn(out_features, generator=generator) * 0.1
        modules.append(
            Dense(
                width,
                out_features,
                activation_function=activation,
                init_weight=weight,
                init_bias=bias,
            )
        )
        width = out_features
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(directory))
    return directory


def write_sentence_transformers_files(
    directory: Path, mode: str = "last", normalize: bool = True, max_seq_length: int = 512
) -> Path:
    """Makes the Hugging Face model folder `directory` a sentence-transformers model too
    (the transformer at its root, then Pooling and Normalize), in the module names of the
    embedding repos on the Hub (`sentence_transformers.models.*`)."""
    from transformers import AutoConfig

    directory = Path(directory)
    hidden = int(AutoConfig.from_pretrained(str(directory)).hidden_size)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]  # fmt: skip
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
        (directory / "2_Normalize").mkdir(exist_ok=True)
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    (directory / "1_Pooling").mkdir(exist_ok=True)
    flags = {f"pooling_mode_{name}": ST_POOLING[mode] == key for name, key in
             (("cls_token", "cls"), ("mean_tokens", "mean"), ("max_tokens", "max"), ("lasttoken", "lasttoken"))}  # fmt: skip
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": hidden, **flags}, indent=2)
    )
    return directory
