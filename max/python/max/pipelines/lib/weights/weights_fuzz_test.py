"""Fuzzing the GGUF and safetensors readers with truncated and corrupted files.

Each mutant of a small valid file (cut at a random length, bytes overwritten, length and
count fields set to huge values, the safetensors JSON header rewritten) is opened and every
tensor read. Properties: the reader either reads it or raises a `MaxError` naming the file;
never another exception, a hang (each file gets a few seconds) or a large allocation (the
process's peak memory stays put). Seeded (MAX_FUZZ_SEED); MAX_FUZZ_CASES mutants per format.
"""

import json
import os
import random
import resource
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from safetensors.torch import save_file

from max.errors import MaxError
from max.pipelines.lib.weights import GGUFFile, open_gguf, open_safetensors
from max.pipelines.lib.weights.gguf_config import gguf_config_kwargs

SEED = int(os.environ.get("MAX_FUZZ_SEED", "7"))
CASES = int(os.environ.get("MAX_FUZZ_CASES", "1000"))
SECONDS_PER_FILE = 5
MAX_PEAK_GROWTH_MB = 256


def _valid_gguf(path: Path) -> bytes:
    rng = np.random.default_rng(0)
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_head_count(4)
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c", "<s>"])
    writer.add_array("tokenizer.ggml.scores", [0.0, 1.0, 2.0, 3.0])
    writer.add_string("general.name", "fuzz")
    writer.add_tensor("token_embd.weight", rng.standard_normal((4, 32), dtype=np.float32))
    writer.add_tensor("output_norm.weight", rng.standard_normal(32).astype(np.float16))
    q8 = rng.integers(0, 256, size=(2, 34), dtype=np.uint8)
    q8[:, 1] = 0x3C  # a finite float16 scale
    writer.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _valid_safetensors(path: Path) -> bytes:
    tensors = {
        "a": torch.arange(12, dtype=torch.float32).view(3, 4),
        "b": torch.ones(5, dtype=torch.float16),
        "c": torch.zeros(2, 2, dtype=torch.bfloat16),
        "d": torch.arange(3, dtype=torch.int64),
    }
    save_file(tensors, str(path))
    return path.read_bytes()


def _mutate_bytes(rng: random.Random, data: bytes, header_end: int) -> bytes:
    """Truncation, overwritten bytes, or an 8-byte field set to an extreme value."""
    kind = rng.randrange(4)
    if kind == 0:
        return data[: rng.randrange(len(data))]
    out = bytearray(data)
    if kind == 1:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(header_end)] = rng.randrange(256)
        return bytes(out)
    # Most GGUF and safetensors length, count and offset fields are 8 bytes wide.
    at = rng.randrange(0, max(1, header_end - 8))
    value = rng.choice([2**64 - 1, 2**63, 2**40, 2**32 + 1, 0, 1, len(data), len(data) + 1])
    width = rng.choice([4, 8])
    out[at : at + width] = struct.pack("<Q", value)[:width]
    return bytes(out[: len(data)])


def _mutate_safetensors_header(rng: random.Random, data: bytes) -> bytes:
    """The JSON header rewritten: shapes, dtypes and offsets that lie."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    name = rng.choice([k for k in header if k != "__metadata__"])
    entry = header[name]
    kind = rng.randrange(7)
    if kind == 0:
        entry["shape"] = rng.choice([[2**62], [2**31, 2**31], [-1], [0], ["x"], [1.5], 7])
    elif kind == 1:
        entry["dtype"] = rng.choice(["F64", "I8", "U8", "BOOL", "F8_E4M3", "Q4", "", None])
    elif kind == 2:
        entry["data_offsets"] = rng.choice([[0, 2**62], [8, 4], [-8, 4], [0, len(body) + 64], [0], "x", [0, 1]])
    elif kind == 3:
        header[name + "x"] = dict(entry)  # two tensors over the same bytes
    elif kind == 4:
        del entry[rng.choice(list(entry))]
    elif kind == 5:
        header["__metadata__"] = rng.choice([{"format": 5}, [1], "x", {"a": {"b": []}}])
    else:
        header = rng.choice([[], "x", None, {}])
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _read_gguf(path: Path) -> None:
    gguf = GGUFFile(path)
    gguf_config_kwargs(gguf)
    for tensor in open_gguf(gguf).values():
        tensor.load(torch.float32)


def _read_safetensors(path: Path) -> None:
    for tensor in open_safetensors([path]).values():
        tensor.load(torch.float32)
        if tensor.shape:
            tensor.load_slice(torch.float32, 0, 0, 1)


class _TimeoutError(Exception):
    pass


def _run_mutants(tmp_path: Path, reader, mutants: list[bytes], suffix: str) -> dict[str, int]:
    """Reads every mutant; returns counts of outcomes; fails on any bad outcome."""

    def alarm(signum, frame):
        raise _TimeoutError()

    previous = signal.signal(signal.SIGALRM, alarm)
    outcomes = {"read": 0, "MaxError": 0}
    bad = []
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        for i, data in enumerate(mutants):
            path = tmp_path / f"mutant{i}{suffix}"
            path.write_bytes(data)
            signal.alarm(SECONDS_PER_FILE)
            try:
                reader(path)
                outcomes["read"] += 1
            except MaxError as e:
                outcomes["MaxError"] += 1
                if path.name not in str(e):
                    bad.append((i, f"MaxError without the file name: {e}"))
            except _TimeoutError:
                bad.append((i, f"no answer within {SECONDS_PER_FILE} s"))
            except Exception as e:
                bad.append((i, f"{type(e).__name__}: {e}"))
            finally:
                signal.alarm(0)
            path.unlink()
    finally:
        signal.signal(signal.SIGALRM, previous)
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert not bad, f"{len(bad)} of {len(mutants)} mutants (seed {SEED}) failed; first: {bad[:5]}"
    assert growth_mb < MAX_PEAK_GROWTH_MB, f"peak memory grew by {growth_mb:.0f} MB"
    return outcomes


def test_corrupted_gguf_files_raise_max_error_naming_the_file(tmp_path):
    data = _valid_gguf(tmp_path / "valid.gguf")
    _read_gguf(tmp_path / "valid.gguf")
    header_end = GGUFFile(tmp_path / "valid.gguf").metadata_nbytes + 200  # metadata and tensor directory
    rng = random.Random(SEED)
    mutants = [data[:n] for n in (0, 3, 4, 8, 16, 24, header_end // 2, header_end, len(data) - 1)]
    mutants += [_mutate_bytes(rng, data, min(header_end, len(data))) for _ in range(CASES)]
    outcomes = _run_mutants(tmp_path, _read_gguf, mutants, ".gguf")
    assert outcomes["MaxError"] > len(mutants) // 3


def test_corrupted_safetensors_files_raise_max_error_naming_the_file(tmp_path):
    data = _valid_safetensors(tmp_path / "valid.safetensors")
    _read_safetensors(tmp_path / "valid.safetensors")
    (n,) = struct.unpack("<Q", data[:8])
    rng = random.Random(SEED)
    mutants = [data[:k] for k in (0, 4, 8, 9, 8 + n // 2, 8 + n, len(data) - 1)]
    for _ in range(CASES):
        if rng.random() < 0.5:
            mutants.append(_mutate_bytes(rng, data, 8 + n))
        else:
            mutants.append(_mutate_safetensors_header(rng, data))
    outcomes = _run_mutants(tmp_path, _read_safetensors, mutants, ".safetensors")
    assert outcomes["MaxError"] > len(mutants) // 3


@pytest.mark.parametrize("name", ["model.safetensors.index.json"])
def test_corrupted_safetensors_index_raises_max_error(tmp_path, name):
    for text in ["{", "[]", '{"weight_map": 5}', '{"weight_map": {"a": "../../etc/passwd"}}', '{"weight_map": {"a": 5}}']:
        index = tmp_path / name
        index.write_text(text)
        with pytest.raises(MaxError, match=name.replace(".", r"\.") + "|passwd|does not exist"):
            open_safetensors([index])
