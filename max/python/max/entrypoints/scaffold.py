"""`new-architecture`: start a new architecture folder from an existing one.

Copies the five files of a registered architecture folder (tests excluded), renames the
architecture (the config's `architectures[0]` name) and its classes, and writes a
BUILD.bazel, so the folder works at once both outside the tree (`serve
--custom-architectures PATH`) and, moved under `architectures/`, as a built-in one.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from max.errors import MaxError

CONTRACT_FILES = ("__init__.py", "arch.py", "model.py", "model_config.py", "weight_adapters.py")

_BUILD = '''load("//tools:py.bzl", "modular_py_library")

package(default_visibility = ["//visibility:public"])

# {name}, scaffolded from {source}/.
modular_py_library(
    name = "{folder}",
    deps = [
        "//max/python/max/nn",
        "//max/python/max/pipelines/lib",
    ],
)
'''


def _class_prefix(arch) -> str:
    """The prefix shared by an architecture's classes, e.g. "Llama3" of Llama3Model."""
    name = arch.pipeline_model.__name__
    if not name.endswith("Model"):
        raise MaxError(f"cannot tell the class prefix of {name}")
    return name[: -len("Model")]


def scaffold_architecture(source: str, name: str, output: Path) -> Path:
    """Creates `output` from architecture folder `source`, renamed to `name`."""
    if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", name):
        raise MaxError(f"--name {name!r} must be a class name such as MyModelForCausalLM")
    folder = output.name
    if not folder.isidentifier():
        raise MaxError(f"the output folder's name {folder!r} must be a Python identifier (it is the package name)")
    if output.exists() and any(output.iterdir()):
        raise MaxError(f"{output} exists and is not empty")
    try:
        package = importlib.import_module(f"max.pipelines.architectures.{source}")
    except ModuleNotFoundError:
        from max.pipelines.architectures import ARCHITECTURES

        folders = sorted({a.pipeline_model.__module__.split(".")[3] for a in ARCHITECTURES})
        raise MaxError(f"no architecture folder {source!r} (choose from {', '.join(folders)})") from None
    archs = package.ARCHITECTURES
    if len(archs) != 1:
        raise MaxError(f"{source}/ declares {len(archs)} architectures; scaffold from a folder with one")
    (arch,) = archs
    old_prefix = _class_prefix(arch)
    new_prefix = name.removesuffix("ForCausalLM") or name
    source_dir = Path(package.__file__).parent
    output.mkdir(parents=True, exist_ok=True)
    for file in CONTRACT_FILES:
        text = (source_dir / file).read_text()
        text = text.replace(f'"{arch.name}"', f'"{name}"').replace(f"`{arch.name}`", f"`{name}`")
        text = re.sub(rf"\b{re.escape(old_prefix)}(?=[A-Z])", new_prefix, text)
        text = re.sub(rf"\b{re.escape(source)}_arch\b", f"{folder}_arch", text)
        text = re.sub(r"example_repo_ids=\[[^\]]*\]", "example_repo_ids=[]", text)
        if file == "__init__.py":
            text = re.sub(r'\A""".*?"""', f'"""{name} (scaffolded from {source}/)."""', text, flags=re.S)
        (output / file).write_text(text)
    (output / "BUILD.bazel").write_text(_BUILD.format(name=name, source=source, folder=folder))
    return output
