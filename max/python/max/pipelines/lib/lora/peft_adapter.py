"""Reading a LoRA adapter in the PEFT format: `adapter_config.json` and
`adapter_model.safetensors`, from a folder or a Hugging Face repo id (through the same Hub
download path and cache as models).

What is served: plain LoRA (PEFT's `LORA` type) on the decoder's q, k, v, o, gate, up and
down projections, one rank and one alpha for every module, `lora_alpha / r` or rsLoRA's
`lora_alpha / sqrt(r)` scaling. Everything else an adapter may carry (DoRA, LoRA biases,
per-module rank or alpha patterns, trained copies of whole modules, embedding or LM-head
adapters, MoE experts) is refused with an error naming it, never silently dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from max.errors import MaxError
from max.nn.lora import TARGET_MODULES, lora_scale
from max.pipelines.lib.hub.hub_download import fetch_snapshot
from max.pipelines.lib.hub.hub_files import RepoFiles

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLED_WEIGHTS = "adapter_model.bin"

# `....layers.<i>.<self_attn|mlp>.<...>.lora_<A|B>.weight`, PEFT's saved names (the adapter
# name "default" is dropped on save; a named one is kept before `.weight`).
_KEY = re.compile(r"^(?:.*\.)?(layers\.\d+\.[\w.]+?)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


@dataclass
class LoRAAdapter:
    """An adapter in host memory: its (A [r, in], B [out, r]) per PEFT module path
    (`layers.3.self_attn.q_proj`) on the CPU in the file's dtype (converted when copied into
    the device slots), and the scale of its products."""

    name: str
    path: str
    rank: int
    scale: float
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]


def adapter_folder(spec: str) -> Path:
    """The local folder of adapter `spec`: a folder, or a Hub repo id fetched into the cache."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):

        def choose(files: list[str], folder: Path) -> RepoFiles:
            if CONFIG_FILE not in files or WEIGHTS_FILE not in files:
                pickled = " (only the pickled adapter_model.bin, which is refused)" if PICKLED_WEIGHTS in files else ""
                raise MaxError(f"LoRA adapter {spec}: the repo has no {CONFIG_FILE} and {WEIGHTS_FILE}{pickled}")
            return RepoFiles([CONFIG_FILE, WEIGHTS_FILE], [WEIGHTS_FILE])

        return fetch_snapshot(spec, None, choose, what="LoRA adapter").directory
    raise MaxError(f"LoRA adapter {spec}: no such folder (give a PEFT adapter folder or a Hub repo id ORG/NAME)")


def adapter_rank(spec: str) -> int:
    """The rank adapter `spec` (folder or repo id) declares in its config."""
    path = adapter_folder(spec) / CONFIG_FILE
    try:
        return int(json.loads(path.read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MaxError(f"LoRA adapter {spec}: cannot read its rank from {path}: {e}") from None


def read_adapter(name: str, spec: str) -> LoRAAdapter:
    """Reads and checks adapter `spec` (folder or repo id) under the name `name`."""
    folder = adapter_folder(spec)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file():
        raise MaxError(f"LoRA adapter {name!r}: {folder} has no {CONFIG_FILE}")
    if not weights_path.is_file():
        pickled = f" ({PICKLED_WEIGHTS} is pickled and refused)" if (folder / PICKLED_WEIGHTS).exists() else ""
        raise MaxError(f"LoRA adapter {name!r}: {folder} has no {WEIGHTS_FILE}{pickled}")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise MaxError(f"LoRA adapter {name!r}: cannot read {config_path}: {e}") from None
    rank, scale = _check_config(name, config)
    weights = _read_weights(name, weights_path)
    for path, (a, _) in weights.items():
        if a.shape[0] != rank:
            raise MaxError(f"LoRA adapter {name!r}: module {path} has rank {a.shape[0]}, its config says r={rank}")
    return LoRAAdapter(name, str(spec), rank, scale, weights)


def _check_config(name: str, config: dict) -> tuple[int, float]:
    """(rank, scale) of a PEFT LoRA config; MaxError for what is not served."""
    where = f"LoRA adapter {name!r}: {CONFIG_FILE}"
    kind = str(config.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise MaxError(f"{where} has peft_type {kind}; only LORA adapters are supported")
    refused = {
        "use_dora": "DoRA",
        "modules_to_save": "modules_to_save (trained copies of whole modules)",
        "rank_pattern": "a per-module rank_pattern",
        "alpha_pattern": "a per-module alpha_pattern",
        "trainable_token_indices": "trainable tokens",
    }
    for key, what in refused.items():
        if config.get(key):
            raise MaxError(f"{where} uses {what}, which is not supported yet")
    if config.get("bias", "none") != "none":
        raise MaxError(f"{where} trains biases (bias={config['bias']!r}), which is not supported yet")
    try:
        rank = int(config["r"])
        alpha = float(config.get("lora_alpha", 8))
    except (KeyError, TypeError, ValueError):
        raise MaxError(f"{where} has no valid rank 'r' and 'lora_alpha'") from None
    if rank < 1:
        raise MaxError(f"{where} has rank r={rank}")
    return rank, lora_scale(alpha, rank, bool(config.get("use_rslora", False)))


def _read_weights(name: str, weights_path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) per module path from the adapter's safetensors; MaxError naming the first
    tensor that is not a LoRA matrix of a projection this layer hook serves."""
    from safetensors import SafetensorError, safe_open

    halves: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            for key in f.keys():
                m = _KEY.match(key)
                if m is None:
                    raise MaxError(f"LoRA adapter {name!r}: tensor {key} is not a LoRA matrix of a decoder layer's projection (not supported)")
                path, half = m.group(1), m.group(2)
                module = path.rsplit(".", 1)[-1]
                if ".experts." in path or path.endswith(".experts"):
                    raise MaxError(f"LoRA adapter {name!r}: module {path} is in the MoE experts, which LoRA does not support yet")
                if module not in TARGET_MODULES:
                    raise MaxError(
                        f"LoRA adapter {name!r}: module {path} is not supported (targets: {', '.join(TARGET_MODULES)})"
                    )
                halves.setdefault(path, {})[half] = f.get_tensor(key)
    except (SafetensorError, OSError) as e:
        raise MaxError(f"LoRA adapter {name!r}: cannot read {weights_path}: {e}") from None
    weights = {}
    for path, pair in halves.items():
        if set(pair) != {"A", "B"}:
            raise MaxError(f"LoRA adapter {name!r}: module {path} has lora_{''.join(pair)} without its other half")
        a, b = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise MaxError(f"LoRA adapter {name!r}: module {path} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} of different ranks")
        weights[path] = (a, b)
    if not weights:
        raise MaxError(f"LoRA adapter {name!r}: {weights_path} holds no LoRA matrices")
    return weights
