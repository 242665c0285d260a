"""Loading an EAGLE or EAGLE-3 head from its folder: config.json and safetensors weights.

The tensor names are the public checkpoints' (see `eagle3_head`, `eagle_head`); a leading
`model.` (as some exports write) is dropped. A tensor missing, extra or of another shape is
refused with the file and tensor named, before anything is allocated. Pickled `.bin`
weights are refused (convert them to safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from max.errors import MaxError
from max.pipelines.lib.model.pipeline_model import skip_parameter_init
from max.pipelines.lib.speculative.eagle3_head import Eagle3Head
from max.pipelines.lib.speculative.eagle_config import EagleHeadConfig, eagle_head_config
from max.pipelines.lib.speculative.eagle_head import EagleHead
from max.pipelines.lib.weights import Checkpoint, open_safetensors
from max.pipelines.lib.weights.network_loader import load_network

_PREFIX = "model."


def _weight_files(folder: Path) -> list[Path]:
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        return index[:1]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise MaxError(
            f"{folder}: the draft head's weights are pickled (.bin/.pt), which are not loaded "
            "(they can run code): convert them to safetensors"
        )
    raise MaxError(f"{folder}: no safetensors weights for the draft head")


def _read_config(folder: Path):
    path = folder / "config.json"
    try:
        values = json.loads(path.read_text())
    except OSError as e:
        raise MaxError(f"cannot read the draft head's config {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise MaxError(f"the draft head's config {path} is not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise MaxError(f"the draft head's config {path} is not a JSON object")
    from transformers import LlamaConfig  # the heads' configs are Llama configs

    values = {k: v for k, v in values.items() if k not in ("model_type", "transformers_version")}
    return LlamaConfig(**values)


def _our_names(checkpoint: Checkpoint) -> dict:
    """The checkpoint keyed by the head's parameter names."""
    state = {}
    for name, tensor in checkpoint.items():
        ours = name.removeprefix(_PREFIX)
        if ours in state:
            raise MaxError(f"{tensor.source}: tensor {name!r} appears twice (with and without {_PREFIX!r})")
        state[ours] = tensor
    return state


def load_eagle_head(
    folder: str | Path,
    method: str,
    target_num_layers: int,
    target_hidden_size: int,
    target_vocab_size: int,
    max_seq_len: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Eagle3Head | EagleHead:
    """The head in `folder` (method "eagle3" or "eagle") for a target of the given shape,
    on `device` in `dtype` (its `d2t`/`t2d` stay integer and boolean)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MaxError(f"draft head folder {folder} does not exist")
    hf_config = _read_config(folder)
    state = _our_names(open_safetensors(_weight_files(folder)))
    config = eagle_head_config(
        hf_config, method, target_num_layers, target_hidden_size, target_vocab_size,
        max_seq_len, set(state), source=str(folder),
    )  # fmt: skip
    with torch.device("meta"), skip_parameter_init():
        head = build_eagle_head(config)
    load_network(head, state, device, dtype)
    return head.eval()


def build_eagle_head(config: EagleHeadConfig) -> Eagle3Head | EagleHead:
    """The (unloaded) head module of `config.method`."""
    return Eagle3Head(config) if config.method == "eagle3" else EagleHead(config)

