"""A direct reader of GGUF files: metadata, tensor directory, and tensor bytes.

The file is memory-mapped; metadata is parsed with `struct` straight from the map (string
arrays such as a 262k-entry vocabulary in well under a second), and tensors are handed
out as zero-copy uint8 views of their bytes for `gguf_dequant` to decode.

Format (version 2 and 3): magic "GGUF", version, tensor count, metadata count, then the
metadata key/values, then one entry per tensor (name, dims innermost-first, type, offset),
then the tensor data, aligned to `general.alignment` (32 by default).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from max.errors import MaxError

GGUF_MAGIC = b"GGUF"

# Metadata value types.
_SCALARS = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_NUMPY_SCALARS = {
    0: np.uint8,
    1: np.int8,
    2: np.uint16,
    3: np.int16,
    4: np.uint32,
    5: np.int32,
    6: np.float32,
    7: np.bool_,
    10: np.uint64,
    11: np.int64,
    12: np.float64,
}
_STRING = 8
_ARRAY = 9
_MAX_ARRAY_DEPTH = 8  # real files nest none; a corrupt one must not exhaust the stack

# GGML tensor types: name, elements per block, bytes per block.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    30: ("BF16", 1, 2),
}


@dataclass(frozen=True)
class GGUFTensorInfo:
    """Where one tensor lives in the file and how it is encoded."""

    name: str
    shape: tuple[int, ...]  # row-major (outermost first), as torch sees it
    ggml_type: int
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        """GGML type name, e.g. "Q4_K"."""
        return GGML_TYPES[self.ggml_type][0]


class GGUFFile:
    """A GGUF file opened for reading: `.metadata`, `.tensors`, and `.tensor_bytes(name)`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise MaxError(f"cannot read GGUF file {self.path}: {e}") from None
        self._buf = memoryview(self._map)
        self._pos = 0
        try:
            self._parse()
        except (struct.error, IndexError, UnicodeDecodeError, ValueError, OverflowError, TypeError) as e:
            # Counts and lengths are read from the file: a corrupt one overflows or runs off the end.
            raise MaxError(f"{self.path} is not a valid GGUF file (truncated or corrupt: {e})") from None

    # -- parsing -----------------------------------------------------------------------
    def _read(self, fmt: str, size: int) -> Any:
        value = struct.unpack_from(fmt, self._buf, self._pos)[0]
        self._pos += size
        return value

    def _string(self) -> str:
        n = self._read("<Q", 8)
        end = self._pos + n
        if end > len(self._buf):
            raise ValueError("string runs past the end of the file")
        s = bytes(self._buf[self._pos : end]).decode("utf-8", errors="replace")
        self._pos = end
        return s

    def _value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self._read(*_SCALARS[vtype])
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            etype = self._read("<I", 4)
            count = self._read("<Q", 8)
            if etype in _NUMPY_SCALARS:
                dtype = np.dtype(_NUMPY_SCALARS[etype])
                nbytes = count * dtype.itemsize
                if self._pos + nbytes > len(self._buf):
                    raise ValueError("array runs past the end of the file")
                arr = np.frombuffer(self._buf, dtype=dtype, count=count, offset=self._pos)
                self._pos += nbytes
                return arr
            if etype == _STRING:
                return self._string_array(count)
            if depth >= _MAX_ARRAY_DEPTH:
                raise ValueError(f"metadata arrays nested over {_MAX_ARRAY_DEPTH} deep")
            return [self._value(etype, depth + 1) for _ in range(count)]
        raise ValueError(f"unknown metadata value type {vtype}")

    def _string_array(self, count: int) -> list[str]:
        buf, pos, out = self._buf, self._pos, []
        unpack = struct.Struct("<Q").unpack_from
        append = out.append
        for _ in range(count):
            (n,) = unpack(buf, pos)
            pos += 8
            append(str(buf[pos : pos + n], "utf-8", "replace"))
            pos += n
        if pos > len(buf):
            raise ValueError("string array runs past the end of the file")
        self._pos = pos
        return out

    def _parse(self) -> None:
        if bytes(self._buf[:4]) != GGUF_MAGIC:
            raise MaxError(f"{self.path} is not a GGUF file (bad magic bytes)")
        self._pos = 4
        self.version = self._read("<I", 4)
        if self.version not in (2, 3):
            raise MaxError(f"{self.path}: GGUF version {self.version} is not supported (2 or 3)")
        n_tensors = self._read("<Q", 8)
        n_kv = self._read("<Q", 8)
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._read("<I", 4))
        self.metadata_nbytes = self._pos
        raw = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._read("<I", 4)
            dims = [self._read("<Q", 8) for _ in range(n_dims)]
            ggml_type = self._read("<I", 4)
            offset = self._read("<Q", 8)
            raw.append((name, dims, ggml_type, offset))
        alignment = int(self.metadata.get("general.alignment", 32))
        if alignment < 1:
            raise ValueError(f"general.alignment is {alignment}")
        data_start = -(-self._pos // alignment) * alignment
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, dims, ggml_type, offset in raw:
            if ggml_type not in GGML_TYPES:
                raise MaxError(f"{self.path}: tensor {name!r} has unknown GGML type {ggml_type}")
            _, block, block_bytes = GGML_TYPES[ggml_type]
            count = math.prod(dims)  # exact: a corrupt dimension must not wrap around
            if count % block:
                raise MaxError(
                    f"{self.path}: tensor {name!r} has {count} elements, not a whole number of "
                    f"{GGML_TYPES[ggml_type][0]} blocks of {block}"
                )
            nbytes = count // block * block_bytes
            start = data_start + offset
            if start + nbytes > len(self._buf):
                raise MaxError(
                    f"{self.path} is truncated: tensor {name!r} needs bytes up to "
                    f"{start + nbytes}, the file has {len(self._buf)}"
                )
            self.tensors[name] = GGUFTensorInfo(name, tuple(reversed(dims)), ggml_type, start, nbytes)

    # -- access ------------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        """`general.architecture`, e.g. "llama", "qwen2", "gemma3"."""
        return str(self.metadata.get("general.architecture", ""))

    def field(self, key: str, default: Any = None) -> Any:
        """A metadata value, with `{arch}` in the key replaced by the architecture."""
        return self.metadata.get(key.replace("{arch}", self.architecture), default)

    def tensor_bytes(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The raw encoded bytes [start, stop) of a tensor (all of them by default), as a
        read-only uint8 view of the file."""
        info = self.tensors[name]
        stop = info.nbytes if stop is None else stop
        return np.frombuffer(self._buf, dtype=np.uint8, count=stop - start, offset=info.offset + start)

    def release(self, name: str) -> None:
        """Drops a tensor's pages from this process's memory once it has been decoded (they
        stay in the page cache; a later read faults them back in), so that reading a whole
        file does not leave all of it counted as resident."""
        info = self.tensors[name]
        first = info.offset - info.offset % mmap.PAGESIZE
        end = info.offset + info.nbytes
        if end > first and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED, first, end - first)
