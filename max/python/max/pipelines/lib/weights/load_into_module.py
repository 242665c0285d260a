"""Reading adapted checkpoint tensors into a model's parameters, with exact error messages."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from max.errors import MaxError
from max.pipelines.lib.weights.checkpoint import Checkpoint


def load_checkpoint_into(
    module: nn.Module, state: Checkpoint, dtype: torch.dtype, device: torch.device
) -> None:
    """Copies every parameter of `module` from `state` (already in the model's names).

    Missing and unexpected tensors, and shape mismatches, are errors that name the tensor
    and the file it came from.
    """
    params = dict(module.named_parameters())
    missing = sorted(set(params) - set(state))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MaxError(f"the checkpoint lacks tensors the model needs: {shown}")
    unexpected = sorted(set(state) - set(params))
    if unexpected:
        entry = state[unexpected[0]]
        raise MaxError(
            f"{entry.source}: tensor {entry.name!r} (loaded as {unexpected[0]!r}) matches no "
            f"parameter of the model ({len(unexpected)} such tensors)"
        )
    # A progress bar for loads that take a while (it hides itself when stderr is no terminal).
    total_bytes = sum(p.numel() * p.element_size() for p in params.values())
    progress = tqdm(
        params.items(), desc="Loading weights", unit="tensor", disable=None if total_bytes > 2**28 else True
    )
    for name, param in progress:
        entry = state[name]
        if tuple(entry.shape) != tuple(param.shape):
            raise MaxError(
                f"{entry.source}: tensor {entry.name!r} has shape {tuple(entry.shape)}, "
                f"the model expects {tuple(param.shape)} for {name!r}"
            )
        value = entry.load(dtype)
        if tuple(value.shape) != tuple(param.shape):
            raise MaxError(
                f"{entry.source}: tensor {entry.name!r} read with shape {tuple(value.shape)}, "
                f"the model expects {tuple(param.shape)}"
            )
        with torch.no_grad():
            param.copy_(value.to(device=device, dtype=param.dtype))


def fill_dummy_weights(module: nn.Module, seed: int = 0) -> None:
    """Random weights of the real shapes (`--load-format dummy`), for speed measurements.

    Norm weights get one (an identity), everything else N(0, 0.02), so activations stay
    in range over many layers.
    """
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, param in module.named_parameters():
            owner = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
            if "norm" in owner:
                param.fill_(1.0)
                continue
            if param.device not in generators:
                generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
            param.normal_(0.0, 0.02, generator=generators[param.device])
