"""The registry of architectures, and loading custom ones from outside the tree.

Built-in architectures are registered by `max.pipelines.architectures.register_all()`
(the lib layer never imports architectures). `--custom-architectures PATH` imports a folder
(or `PATH:module`) that exports `ARCHITECTURES = [...]` and registers each entry, allowed
to replace a built-in of the same name.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

from max.errors import MaxError
from max.pipelines.lib.model.bare_architectures import causal_lm_of_bare_model
from max.pipelines.lib.model.supported_architecture import SupportedArchitecture


class PipelineRegistry:
    """Architectures by name (the config's `architectures[0]`)."""

    def __init__(self) -> None:
        self._architectures: dict[str, SupportedArchitecture] = {}

    def register(self, arch: SupportedArchitecture, allow_override: bool = False) -> None:
        """Adds an architecture; replacing an existing name needs `allow_override`."""
        if not isinstance(arch, SupportedArchitecture):
            raise MaxError(f"{arch!r} is not a SupportedArchitecture")
        if arch.name in self._architectures and not allow_override:
            raise MaxError(f"architecture {arch.name!r} is already registered")
        self._architectures[arch.name] = arch

    def names(self) -> list[str]:
        """Registered architecture names, sorted."""
        return sorted(self._architectures)

    def architectures(self) -> list[SupportedArchitecture]:
        """Registered architectures, sorted by name."""
        return [self._architectures[n] for n in self.names()]

    def retrieve(self, name: str) -> SupportedArchitecture:
        """The architecture called `name`, or a MaxError listing the supported ones.

        A bare transformer's name (`Qwen2Model`, as sentence-transformers saves embedding
        models) that is not registered itself gets its causal LM's architecture under that
        name (`bare_architectures`)."""
        if name in self._architectures:
            return self._architectures[name]
        causal_lm = causal_lm_of_bare_model(name)
        if causal_lm in self._architectures:
            return dataclasses.replace(self._architectures[causal_lm], name=name)
        raise MaxError(
            f"architecture {name!r} is not supported; supported architectures: "
            f"{', '.join(self.names()) or '(none registered)'}. A new one can be added "
            "with --custom-architectures PATH"
        )

    def __contains__(self, name: str) -> bool:
        return name in self._architectures


PIPELINE_REGISTRY = PipelineRegistry()
"""The process-wide registry used by the command-line tools and the server."""


def import_custom_architectures(spec: str) -> list[SupportedArchitecture]:
    """Imports `PATH` (a package folder or .py file) or `PATH:module`; returns its ARCHITECTURES."""
    path_text, _, module_name = spec.partition(":") if ":" in spec else (spec, "", "")
    path = Path(path_text).expanduser().resolve()
    if not path.exists():
        raise MaxError(f"--custom-architectures: {path_text} does not exist")
    if module_name:
        root = path
    else:
        root = path.parent
        module_name = path.stem if path.suffix == ".py" else path.name
        if path.is_dir() and not (path / "__init__.py").is_file():
            raise MaxError(f"--custom-architectures: {path} has no __init__.py")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except MaxError:
        raise
    except Exception as e:
        raise MaxError(
            f"--custom-architectures: importing {module_name!r} from {root} failed: "
            f"{type(e).__name__}: {e}"
        ) from None
    archs = getattr(module, "ARCHITECTURES", None)
    if not isinstance(archs, (list, tuple)) or not archs:
        raise MaxError(f"--custom-architectures: {module_name!r} exports no ARCHITECTURES list")
    for arch in archs:
        if not isinstance(arch, SupportedArchitecture):
            raise MaxError(
                f"--custom-architectures: {module_name}.ARCHITECTURES holds {arch!r}, "
                "not a SupportedArchitecture"
            )
    return list(archs)


def register_custom_architectures(specs: list[str], registry: PipelineRegistry = PIPELINE_REGISTRY) -> None:
    """Imports and registers each `--custom-architectures` entry (overriding built-ins)."""
    for spec in specs:
        for arch in import_custom_architectures(spec):
            registry.register(arch, allow_override=True)
