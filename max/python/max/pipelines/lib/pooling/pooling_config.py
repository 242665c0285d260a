"""How an embedding model pools, read from its sentence-transformers files, and which task
(`generate` or `embed`) a model folder serves.

A sentence-transformers model folder lists its modules in `modules.json`: the transformer
(whose final hidden states, after the final norm, are the token embeddings), a `Pooling`
module whose `config.json` (in its own folder, e.g. `1_Pooling/`) names the pooling mode,
then any `Dense` projections (`dense_module`), and optionally `Normalize` (L2). Both the
older names (`sentence_transformers.models.Pooling`, `pooling_mode_lasttoken: true`...) and
sentence-transformers 5+'s (`...modules.pooling.Pooling`, `"pooling_mode": "lasttoken"`) are
read. Other modules that change the vector (LayerNorm, Dropout...) are refused rather than
ignored, so that no embedding differs silently from the reference's.

Without `modules.json` a decoder model embeds as vLLM embeds one: the last token, normalized.
Matryoshka truncation (`dimensions` in a request) is allowed when config.json says so, as
vLLM reads it: `matryoshka_dimensions` (the allowed sizes) or `is_matryoshka: true` (any size).

The task (`--task auto`, vLLM's rule): `embed` when the folder's `modules.json` has a Pooling
module (some embedding models keep a `*ForCausalLM` architecture) or the architecture is a
bare `*Model` (no LM head), else `generate`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from max.errors import MaxError
from max.pipelines.lib.hub.hf_config import text_config
from max.pipelines.lib.pooling.dense_module import DenseModule, DenseProjection, read_dense_module

POOLING_MODES = ("last", "mean", "cls")
TASKS = ("auto", "generate", "embed")
# sentence-transformers' names of the pooling modes we implement.
_ST_MODES = {"lasttoken": "last", "mean": "mean", "cls": "cls"}
_ST_FLAGS = {
    "pooling_mode_lasttoken": "last",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
}
_OTHER_FLAGS = (
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
)


@dataclass(frozen=True)
class PoolingConfig:
    """The model's pooling: `mode` (last, mean or cls) over states of `hidden_size`, the
    Dense modules then applied (`dense`; their weights in `projection` once loaded), whether
    the vector is L2-normalized, and which truncated sizes requests may ask for
    (`matryoshka`: None refuses `dimensions`; an empty tuple allows any size up to `size`)."""

    hidden_size: int
    mode: str = "last"
    normalize: bool = True
    matryoshka: tuple[int, ...] | None = None
    dense: tuple[DenseModule, ...] = ()
    projection: DenseProjection | None = field(default=None, compare=False, repr=False)

    @property
    def size(self) -> int:
        """The embedding's size (the last Dense module's output, else the hidden size)."""
        return self.dense[-1].out_features if self.dense else self.hidden_size

    def with_projection(self, device: torch.device) -> PoolingConfig:
        """This config with its Dense modules' weights loaded on `device` (for the engine)."""
        if not self.dense:
            return self
        return dataclasses.replace(self, projection=DenseProjection(self.dense, device))

    def check_dimensions(self, dimensions: int | None) -> None:
        """Raises MaxError unless a request may ask for `dimensions` features."""
        if dimensions is None:
            return
        if self.matryoshka is None:
            raise MaxError(
                "this model does not support matryoshka representation: 'dimensions' cannot be set"
            )
        if dimensions < 1 or dimensions > self.size:
            raise MaxError(
                f"'dimensions' must be between 1 and the model's {self.size} (got {dimensions})"
            )
        if self.matryoshka and dimensions not in self.matryoshka:
            allowed = ", ".join(str(d) for d in self.matryoshka)
            raise MaxError(f"this model supports 'dimensions' of {allowed} (got {dimensions})")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MaxError(f"cannot read {path}: {e}") from None


def _modules(directory: Path | None) -> list[dict[str, Any]] | None:
    """The entries of the folder's modules.json (None: there is none)."""
    if directory is None or not (directory / "modules.json").is_file():
        return None
    modules = _read_json(directory / "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise MaxError(f"{directory / 'modules.json'}: expected a list of modules")
    return modules


def _kind(module: dict[str, Any]) -> str:
    """A module's class name (`Pooling` of `sentence_transformers.models.Pooling`)."""
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def has_pooling_module(directory: Path | None) -> bool:
    """Whether the folder is a sentence-transformers model with a Pooling module."""
    modules = _modules(directory)
    return modules is not None and any(_kind(m) == "Pooling" for m in modules)


def resolve_task(task: str, directory: Path | None, architecture: str) -> str:
    """`generate` or `embed` for `--task` (see the module docstring for `auto`)."""
    if task not in TASKS:
        raise MaxError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    if task != "auto":
        return task
    if has_pooling_module(directory) or (
        architecture.endswith("Model") and not architecture.endswith("ForCausalLM")
    ):
        return "embed"
    return "generate"


def _pooling_mode(path: Path) -> str:
    """The mode a Pooling module's config.json names."""
    config = _read_json(path)
    if not isinstance(config, dict):
        raise MaxError(f"{path}: expected a JSON object")
    if not config.get("include_prompt", True):
        raise MaxError(
            f"{path}: pooling that leaves out the prompt (include_prompt: false) is not supported"
        )
    named = config.get("pooling_mode")
    if isinstance(named, str):
        modes = [_ST_MODES.get(named, named)]
    else:
        modes = [mode for flag, mode in _ST_FLAGS.items() if config.get(flag)]
        modes += [flag.removeprefix("pooling_mode_") for flag in _OTHER_FLAGS if config.get(flag)]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise MaxError(
            f"{path}: pooling {'+'.join(modes) or 'none'} is not supported (one of: lasttoken, mean, cls)"
        )
    return modes[0]


def _matryoshka(hf_config: Any) -> tuple[int, ...] | None:
    dims = getattr(hf_config, "matryoshka_dimensions", None)
    if dims:
        return tuple(int(d) for d in dims)
    return () if getattr(hf_config, "is_matryoshka", False) else None


def read_pooling_config(directory: Path | None, hf_config: Any) -> PoolingConfig:
    """The pooling of the model in `directory` with config `hf_config` (see the module
    docstring); MaxError for sentence-transformers modules we cannot reproduce."""
    hidden_size = int(text_config(hf_config).hidden_size)
    matryoshka = _matryoshka(hf_config)
    modules = _modules(directory)
    if modules is None:
        return PoolingConfig(hidden_size, "last", True, matryoshka)
    mode, normalize, dense = None, False, []
    for module in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind, folder = _kind(module), directory / str(module.get("path", ""))
        if kind == "Transformer" and mode is None:
            continue
        if kind == "Pooling" and mode is None:
            mode = _pooling_mode(folder / "config.json")
        elif kind == "Dense" and mode is not None and not normalize:
            dense.append(
                _chained(
                    read_dense_module(folder), dense[-1].out_features if dense else hidden_size
                )
            )
        elif kind == "Normalize" and mode is not None and not normalize:
            normalize = True
        else:
            raise MaxError(
                f"{directory / 'modules.json'}: the sentence-transformers module {module.get('type')!r} "
                "is not supported here (only Transformer, then Pooling, then any Dense, then Normalize)"
            )
    if mode is None:
        raise MaxError(f"{directory / 'modules.json'} has no Pooling module")
    return PoolingConfig(hidden_size, mode, normalize, matryoshka, tuple(dense))


def _chained(module: DenseModule, width: int) -> DenseModule:
    """`module`, checked to read vectors of `width` features (what the step before gives)."""
    if module.in_features != width:
        raise MaxError(
            f"{module.folder / 'config.json'}: in_features is {module.in_features}, but the vector "
            f"before it has {width} features"
        )
    return module
