"""sentence-transformers' `Dense` module: a linear layer and an activation after the pooling.

Some embedding models project the pooled vector before normalizing it (EmbeddingGemma has
two, 768 -> 3072 -> 768; older models one `Tanh` layer). Each module has a folder
(`2_Dense/`) holding `config.json` (`in_features`, `out_features`, `bias`,
`activation_function` as a dotted class name, Tanh when absent, as sentence-transformers
defaults) and its weights `linear.weight` / `linear.bias` in `model.safetensors`.

The projection runs in float32 on the pooled float32 vector, once per request. Only the
activations named in `ACTIVATIONS` are applied; any other name is refused at start-up (where
sentence-transformers itself would import the class or fall back to Tanh).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from max.errors import MaxError

# torch.nn activation class names -> their function (sentence-transformers saves the class
# path, e.g. `torch.nn.modules.activation.Tanh`).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Identity": lambda x: x,
    "Tanh": torch.tanh,
    "ReLU": F.relu,
    "GELU": F.gelu,
    "SiLU": F.silu,
    "Sigmoid": torch.sigmoid,
}
_DEFAULT_ACTIVATION = "torch.nn.modules.activation.Tanh"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class DenseModule:
    """One Dense module as its folder describes it (no weights read yet)."""

    folder: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str  # a key of ACTIVATIONS


def _activation_name(dotted: Any, config_path: Path) -> str:
    """The ACTIVATIONS key of a saved `activation_function`, or MaxError naming the file."""
    text = str(dotted)
    module, _, name = text.rpartition(".")
    if (module == "torch.nn" or module.startswith("torch.nn.modules")) and name in ACTIVATIONS:
        return name
    raise MaxError(
        f"{config_path}: activation_function {text!r} is not supported "
        f"(supported: torch.nn {', '.join(ACTIVATIONS)})"
    )


def read_dense_module(folder: Path) -> DenseModule:
    """The Dense module saved in `folder`; MaxError for settings it cannot reproduce."""
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise MaxError(f"cannot read {config_path}: {e}") from None
    if not isinstance(config, dict):
        raise MaxError(f"{config_path}: expected a JSON object")
    if config.get("use_residual"):
        raise MaxError(f"{config_path}: a Dense module with use_residual is not supported")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, "sentence_embedding") != "sentence_embedding":
            raise MaxError(
                f"{config_path}: {key} {config[key]!r} is not supported (only sentence_embedding)"
            )
    try:
        in_features, out_features = int(config["in_features"]), int(config["out_features"])
    except (KeyError, TypeError, ValueError):
        raise MaxError(f"{config_path}: in_features and out_features must be integers") from None
    activation = _activation_name(
        config.get("activation_function", _DEFAULT_ACTIVATION), config_path
    )
    if not (folder / WEIGHTS_FILE).is_file():
        pickled = " (its pytorch_model.bin is a pickled checkpoint, which is refused)"
        raise MaxError(
            f"{folder}: the Dense module has no {WEIGHTS_FILE}"
            + (pickled if (folder / "pytorch_model.bin").is_file() else "")
        )
    return DenseModule(
        folder, in_features, out_features, bool(config.get("bias", True)), activation
    )


def _load(module: DenseModule, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The module's weight [out, in] and bias [out] (None without bias), float32 on `device`."""
    from safetensors import SafetensorError, safe_open

    path = module.folder / WEIGHTS_FILE
    wanted = {"linear.weight": (module.out_features, module.in_features)}
    if module.bias:
        wanted["linear.bias"] = (module.out_features,)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), "pt") as f:
            for name, shape in wanted.items():
                if name not in f.keys():
                    raise MaxError(f"{path} has no tensor {name}")
                tensor = f.get_tensor(name)
                if tuple(tensor.shape) != shape:
                    raise MaxError(
                        f"{path}: {name} has shape {tuple(tensor.shape)}, expected {shape}"
                    )
                tensors[name] = tensor.to(device=device, dtype=torch.float32)
    except (SafetensorError, OSError) as e:
        raise MaxError(f"cannot read {path}: {e}") from None
    return tensors["linear.weight"], tensors.get("linear.bias")


class DenseProjection:
    """Dense modules loaded on a device, applied in order to a pooled float32 vector."""

    def __init__(self, modules: Sequence[DenseModule], device: torch.device) -> None:
        self._layers = [(*_load(m, device), ACTIVATIONS[m.activation]) for m in modules]

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        for weight, bias, activation in self._layers:
            vector = activation(F.linear(vector, weight, bias))
        return vector
