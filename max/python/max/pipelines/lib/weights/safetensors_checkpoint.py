"""Safetensors checkpoints: one file, or shards listed by `model.safetensors.index.json`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from max.errors import MaxError
from max.pipelines.lib.weights.checkpoint import Checkpoint, CheckpointTensor


def _shards(paths: list[Path]) -> list[Path]:
    """Expands an index.json into its shard files; checks each shard exists."""
    files: list[Path] = []
    for path in paths:
        if path.name.endswith(".index.json"):
            try:
                weight_map = json.loads(path.read_text())["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise MaxError(f"cannot read safetensors index {path}: {e!r}") from None
            for shard in shards:
                # Shards live beside the index: no absolute paths, no way out of the folder.
                if not isinstance(shard, str) or Path(shard).is_absolute() or ".." in Path(shard).parts:
                    raise MaxError(f"safetensors index {path} names a shard outside its folder: {shard!r}")
                files.append(path.parent / shard)
        else:
            files.append(path)
    for f in files:
        if not f.is_file():
            raise MaxError(f"safetensors file {f} does not exist")
    return files


def open_safetensors(paths: list[Path]) -> Checkpoint:
    """The tensors of the given safetensors files (or index), read lazily."""
    from safetensors import SafetensorError, safe_open

    tensors: dict[str, CheckpointTensor] = {}
    for file in _shards(paths):
        try:
            handle = safe_open(str(file), framework="pt")
            names = list(handle.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise MaxError(f"cannot read safetensors file {file}: {e}") from None
        for name in names:
            if name in tensors:
                raise MaxError(f"tensor {name!r} appears in both {tensors[name].source} and {file}")
            shape = tuple(handle.get_slice(name).get_shape())

            def read(dtype: torch.dtype, handle=handle, name=name, file=file) -> torch.Tensor:
                try:
                    return handle.get_tensor(name).to(dtype)
                except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                    raise MaxError(f"cannot read tensor {name!r} from {file}: {e}") from None

            def read_slice(
                dtype: torch.dtype, dim: int, start: int, stop: int, handle=handle, name=name, file=file
            ) -> torch.Tensor:
                index = tuple(slice(start, stop) if d == dim else slice(None) for d in range(dim + 1))
                try:
                    return handle.get_slice(name)[index].to(dtype)
                except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                    raise MaxError(f"cannot read tensor {name!r} from {file}: {e}") from None

            tensors[name] = CheckpointTensor(name, shape, str(file), read, read_slice=read_slice)
    return tensors
