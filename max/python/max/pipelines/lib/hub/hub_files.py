"""Which files of a Hugging Face repo a model (or a tokenizer) needs.

Pure choices over a repo's file list, shared by the download and by the offline check of
the cache: the config, generation config, tokenizer files and chat template, plus one set
of weights (the safetensors, with the shards an index names, or one GGUF file picked by
`--quantization-encoding`). Pickled checkpoints are never chosen.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from max.errors import MaxError
from max.pipelines.lib.config import QUANTIZED_ENCODINGS

# At least one of these is present where a Hugging Face tokenizer can be loaded.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
# Small files fetched with every model (those the repo has, at its top level).
METADATA_FILES = (
    "config.json",
    "generation_config.json",
    *TOKENIZER_FILES,
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",  # a vision-language model's image processor
    # An embedding model's sentence-transformers modules: its pooling (`--task embed`).
    "modules.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
)
# sentence-transformers' Dense modules (`2_Dense/`, `3_Dense/`...): config and weights.
SENTENCE_TRANSFORMERS_DENSE = re.compile(r"^\d+_Dense/(config\.json|model\.safetensors)$")
INDEX_SUFFIX = ".safetensors.index.json"
# What the first, small download asks for: the metadata and any safetensors index (read
# before choosing which shards to fetch).
METADATA_PATTERNS = [*METADATA_FILES, f"*{INDEX_SUFFIX}"]
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# How GGUF file names spell each encoding (llama.cpp's type names), e.g. `-Q4_K_M.gguf`.
_GGUF_NAMES = {
    "float32": ("f32", "fp32"),
    "float16": ("f16", "fp16"),
    "bfloat16": ("bf16",),
    "q4_0": ("q4_0",),
    "q4_1": ("q4_1",),
    "q5_0": ("q5_0",),
    "q8_0": ("q8_0",),
    "q4_k": ("q4_k",),
    "q5_k": ("q5_k",),
    "q6_k": ("q6_k",),
}
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$")


@dataclass
class RepoFiles:
    """The repo files to have locally (`download`) and, among them, the weights to load
    (`weights`: an index, the safetensors files or one GGUF file; empty for config only)."""

    download: list[str]
    weights: list[str]

    def required(self) -> list[str]:
        """The files that must be present for the model to load (the metadata other than
        config.json is optional: a cache filled by other tools may lack some of it)."""
        return [f for f in self.download if f == "config.json" or f not in METADATA_FILES]


def _top_level(files: Sequence[str]) -> list[str]:
    return [f for f in files if "/" not in f]


def metadata_files(files: Sequence[str]) -> list[str]:
    """The metadata files (config, tokenizer, chat template) among a repo's files."""
    present = set(files)
    dense = sorted(f for f in files if SENTENCE_TRANSFORMERS_DENSE.match(f))
    return [f for f in METADATA_FILES if f in present] + dense


def _listing(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _index_shards(repo_id: str, index: str, files: Sequence[str], folder: Path) -> list[str]:
    """The shard files a safetensors index names (relative to the index's folder)."""
    path = folder / index
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MaxError(f"{repo_id}: cannot read the safetensors index {index} ({e})") from e
    prefix = index.rsplit("/", 1)[0] + "/" if "/" in index else ""
    shards = sorted({prefix + name for name in weight_map.values()})
    missing = [s for s in shards if s not in set(files)]
    if missing:
        raise MaxError(f"{repo_id}: {index} names shard {missing[0]}, which the repo does not have")
    return shards


def _matches_encoding(filename: str, encoding: str) -> bool:
    stem = filename.rsplit("/", 1)[-1].lower().removesuffix(".gguf")
    for name in _GGUF_NAMES.get(encoding, ()):
        # `Q4_K` also names Q4_K_S/Q4_K_M files; `Q4_0` must not match `Q4_0_4_4`.
        suffix = r"(?:_[sml])?" if name.endswith("_k") else ""
        if re.search(rf"(?<![a-z0-9]){re.escape(name)}{suffix}(?![a-z0-9_])", stem):
            return True
    return False


def choose_gguf(repo_id: str, ggufs: Sequence[str], encoding: str | None) -> str:
    """The one GGUF file of a repo to load: the only one, or the one whose name carries
    `encoding` (Q4_K_M is preferred among Q4_K_* files, as llama.cpp recommends it)."""
    ggufs = sorted(ggufs)
    if encoding is None:
        if len(ggufs) == 1:
            chosen = [ggufs[0]]
        else:
            raise MaxError(
                f"{repo_id} holds several GGUF files ({_listing(ggufs)}): pick one with "
                "--quantization-encoding (e.g. q4_k, q8_0, float16) or --weight-path FILE"
            )
    else:
        chosen = [g for g in ggufs if _matches_encoding(g, encoding)]
        if len(chosen) > 1:
            medium = [g for g in chosen if re.search(r"_m(?![a-z0-9])", g.rsplit("/", 1)[-1].lower())]
            chosen = medium or chosen
        if chosen and all(_SPLIT_GGUF.search(g) for g in chosen):
            chosen = chosen[:1]  # the parts of one split file: refused below
        if not chosen:
            raise MaxError(
                f"{repo_id} has no GGUF file in encoding {encoding} (its GGUF files: "
                f"{_listing(ggufs)}): choose another --quantization-encoding or --weight-path FILE"
            )
        if len(chosen) > 1:
            raise MaxError(
                f"{repo_id} holds several GGUF files in encoding {encoding} ({_listing(chosen)}): "
                "pick one with --weight-path FILE"
            )
    if _SPLIT_GGUF.search(chosen[0]):
        raise MaxError(
            f"{chosen[0]} of {repo_id} is one part of a split GGUF file, which is not supported: "
            "merge the parts with llama.cpp's gguf-split --merge and pass the file"
        )
    return chosen[0]


def _refuse_pickled(repo_id: str, names: Sequence[str]) -> None:
    pickled = [n for n in names if n.endswith(PICKLED_SUFFIXES)]
    if pickled:
        raise MaxError(
            f"{pickled[0]} of {repo_id} is a pickled PyTorch checkpoint, which is refused (loading "
            "it could run arbitrary code) and never downloaded: use safetensors or GGUF weights"
        )


def select_model_files(
    repo_id: str,
    files: Sequence[str],
    folder: Path,
    weight_names: Sequence[str] = (),
    encoding: str | None = None,
    load_format: str = "auto",
) -> RepoFiles:
    """The files of `repo_id` (whose file list is `files`) that the model needs.

    `folder` holds the metadata already fetched (a safetensors index is read from it).
    `weight_names` are `--weight-path` names inside the repo. Safetensors are preferred,
    unless a quantized `encoding` asks for a GGUF file.
    """
    metadata = metadata_files(files)
    if weight_names:
        _refuse_pickled(repo_id, weight_names)
        missing = [w for w in weight_names if w not in set(files)]
        if missing:
            weights = [f for f in files if f.endswith((".safetensors", ".gguf", INDEX_SUFFIX))]
            raise MaxError(
                f"--weight-path {missing[0]}: {repo_id} has no such file (its weight files: "
                f"{_listing(sorted(weights)) or 'none'})"
            )
        shards = [s for w in weight_names if w.endswith(INDEX_SUFFIX) for s in _index_shards(repo_id, w, files, folder)]
        return RepoFiles([*metadata, *weight_names, *shards], list(weight_names))
    if load_format == "dummy":
        if "config.json" not in metadata:
            raise MaxError(f"{repo_id} has no config.json, which --load-format dummy reads the shapes from")
        return RepoFiles(metadata, [])
    top = _top_level(files)
    indexes = sorted(f for f in top if f.endswith(INDEX_SUFFIX))
    safetensors = sorted(f for f in top if f.endswith(".safetensors"))
    ggufs = [f for f in files if f.endswith(".gguf")]
    wants_gguf = encoding in QUANTIZED_ENCODINGS and bool(ggufs)
    if (indexes or safetensors) and not wants_gguf:
        if "config.json" not in metadata:
            raise MaxError(f"{repo_id} has safetensors weights but no config.json")
        if indexes:
            shards = _index_shards(repo_id, indexes[0], files, folder)
            return RepoFiles([*metadata, indexes[0], *shards], [indexes[0]])
        return RepoFiles([*metadata, *safetensors], safetensors)
    if ggufs:
        chosen = choose_gguf(repo_id, ggufs, encoding)
        return RepoFiles([*metadata, chosen], [chosen])
    pickled = [f for f in top if f.endswith(PICKLED_SUFFIXES)]
    if pickled:
        raise MaxError(
            f"{repo_id} holds only pickled PyTorch checkpoints ({_listing(pickled, 3)}), which are "
            "refused (loading them could run arbitrary code) and not downloaded: use a repo "
            "with safetensors or GGUF weights"
        )
    raise MaxError(
        f"{repo_id} holds no safetensors or GGUF weights (files: {_listing(sorted(files)) or 'none'}); "
        "a repo with only config.json loads with --load-format dummy (random weights)"
    )


def select_tokenizer_files(repo_id: str, files: Sequence[str]) -> RepoFiles:
    """The files of `repo_id` that its tokenizer needs (no weights)."""
    metadata = metadata_files(files)
    if not any(f in metadata for f in TOKENIZER_FILES):
        raise MaxError(
            f"--tokenizer {repo_id}: the repo has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
            "pass the repo of the base model, whose tokenizer this model uses"
        )
    return RepoFiles(metadata, [])


def split_weight_reference(reference: str, repo_id: str, files: Sequence[str]) -> tuple[str, str]:
    """Where a `--weight-path` that is not a local file lives: (repo id, file name).

    A name the model's repo has is that file; `ORG/NAME/FILE` names FILE in another repo
    (MAX's spelling, e.g. a GGUF repo beside the original model's config and tokenizer).
    """
    if reference in set(files):
        return repo_id, reference
    if reference.startswith(repo_id + "/"):
        return repo_id, reference[len(repo_id) + 1 :]
    parts = reference.split("/")
    if len(parts) >= 3:
        return "/".join(parts[:2]), "/".join(parts[2:])
    return repo_id, reference
