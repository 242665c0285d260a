"""Safetensors checkpoints: one file, or shards listed by `model.safetensors.index.json`.

The files are read through our own memory map rather than the `safetensors` package's: a
tensor (or a block of its rows) is copied out of the map and the map's pages are then
given back to the kernel (`madvise(MADV_DONTNEED)`), so that reading a 60 GB checkpoint
does not leave 60 GB of file pages counted in the process's resident memory. The format
is an 8-byte little-endian header length, a JSON header mapping each tensor name to its
dtype, shape and byte range, then the data, row-major.
"""

from __future__ import annotations

import json
import mmap
import struct
import warnings
from pathlib import Path

import torch

from max.errors import MaxError
from max.pipelines.lib.weights.checkpoint import Checkpoint, CheckpointTensor, numel, rows_per_block

# Safetensors dtype names -> torch dtypes (those torch has).
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
for _name, _attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"), ("F8_E8M0", "float8_e8m0fnu")):
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)

# A header larger than this is not a real checkpoint's (they are a few MB at most).
_MAX_HEADER = 100 * 2**20


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


class SafetensorsFile:
    """One safetensors file, memory-mapped: its tensor directory, and reads of whole
    tensors or of row ranges that give the map's pages back once copied."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                size = f.seek(0, 2)
                if size < 8:
                    raise ValueError("shorter than its 8-byte header length")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            (header_len,) = struct.unpack("<Q", self._map[:8])
            if header_len > min(_MAX_HEADER, size - 8):
                raise ValueError(f"header length {header_len} runs past the end of the file")
            header = json.loads(bytes(self._map[8 : 8 + header_len]))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
        except (OSError, ValueError, struct.error, UnicodeDecodeError) as e:
            raise MaxError(f"cannot read safetensors file {path}: {e}") from None
        self._data_start = 8 + header_len
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            self.entries[name] = self._entry(name, meta, size)

    def _entry(self, name: str, meta: object, size: int) -> tuple[torch.dtype, tuple[int, ...], int, int]:
        """(dtype, shape, absolute start, absolute end) of one header entry, checked."""
        try:
            dtype = _DTYPES[meta["dtype"]]
            shape = tuple(int(d) for d in meta["shape"])
            begin, end = (int(o) for o in meta["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(meta, dict) and meta.get("dtype") not in _DTYPES:
                raise MaxError(f"{self.path}: tensor {name!r} has dtype {meta.get('dtype')!r}, which is not supported") from None
            raise MaxError(f"{self.path}: tensor {name!r} has a malformed header entry: {e!r}") from None
        numel = 1
        for d in shape:
            if d < 0:
                raise MaxError(f"{self.path}: tensor {name!r} has a negative dimension in {shape}")
            numel *= d
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        start, stop = self._data_start + begin, self._data_start + end
        if begin < 0 or end - begin != nbytes or stop > size:
            raise MaxError(
                f"{self.path}: tensor {name!r} ({meta['dtype']} {shape}) has byte range "
                f"[{begin}, {end}), which does not match its size or runs past the end of the file"
            )
        return dtype, shape, start, stop

    def read_rows(self, name: str, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows [start, stop) (dimension 0) of a tensor, copied out of the map into `dtype`;
        the pages read are given back afterwards."""
        stored, shape, begin, _ = self.entries[name]
        if not shape:
            start, stop = 0, 1
        row_bytes = numel(shape[1:]) * torch.empty((), dtype=stored).element_size()
        lo, hi = begin + start * row_bytes, begin + stop * row_bytes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "buffer is not writable": only read
            raw = torch.frombuffer(self._map, dtype=torch.uint8, count=hi - lo, offset=lo) if hi > lo else torch.empty(0, dtype=torch.uint8)
        view = raw.view(stored).view((stop - start, *shape[1:]) if shape else ())
        value = view.to(dtype, copy=True)
        del raw, view
        self._release(lo, hi)
        return value

    def _release(self, lo: int, hi: int) -> None:
        """Drops the pages of [lo, hi) from this process's memory (they stay in the page
        cache, and a later read faults them back in)."""
        page = mmap.PAGESIZE
        first = lo - lo % page
        if hi > first and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED, first, hi - first)


def _tensor(file: SafetensorsFile, name: str) -> CheckpointTensor:
    """A lazily read checkpoint tensor of `file`."""
    _, shape, _, _ = file.entries[name]

    def read(dtype: torch.dtype) -> torch.Tensor:
        return file.read_rows(name, 0, shape[0] if shape else 1, dtype)

    def read_slice(dtype: torch.dtype, dim: int, start: int, stop: int) -> torch.Tensor:
        if dim == 0:
            return file.read_rows(name, start, stop, dtype)
        # Another dimension: blocks of whole rows, each narrowed as soon as it is read, so
        # that no more than a block of the full tensor is held at once.
        out = torch.empty((*shape[:dim], stop - start, *shape[dim + 1 :]), dtype=dtype)
        step = rows_per_block(shape, file.entries[name][0])
        for r in range(0, shape[0], step):
            block = file.read_rows(name, r, min(r + step, shape[0]), dtype)
            out[r : r + block.shape[0]] = block.narrow(dim, start, stop - start)
        return out

    return CheckpointTensor(name, shape, str(file.path), read, read_slice=read_slice, stored_dtype=file.entries[name][0])


def open_safetensors(paths: list[Path]) -> Checkpoint:
    """The tensors of the given safetensors files (or index), read lazily."""
    tensors: dict[str, CheckpointTensor] = {}
    for path in _shards(paths):
        file = SafetensorsFile(path)
        for name in file.entries:
            if name in tensors:
                raise MaxError(f"tensor {name!r} appears in both {tensors[name].source} and {path}")
            tensors[name] = _tensor(file, name)
    return tensors
