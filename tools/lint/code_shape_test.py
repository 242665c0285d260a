"""The shape of the source tree: modules import one another in one direction, and stay small.

- No import cycles among the modules of `max` and `max_kernels` (imports inside functions
  and under TYPE_CHECKING count too: a cycle hidden there is still two modules that need
  each other). A module importing a package counts as importing its `__init__`.
- No source file over 600 lines, no class over 300.
"""

from __future__ import annotations

import ast
from pathlib import Path

MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300
PACKAGE_ROOTS = ("max/python", "max/kernels/python")


def workspace_root() -> Path:
    """The real source tree: ruff.toml in the runfiles links back to it."""
    return Path("ruff.toml").resolve().parent


def _modules(root: Path) -> dict[str, Path]:
    """Every module of the project by dotted name (a package by its own name)."""
    found = {}
    for base in PACKAGE_ROOTS:
        top = root / base
        for path in top.rglob("*.py"):
            parts = path.relative_to(top).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project's modules that module `name` imports (the longest known prefix of each
    imported name; `from package import module` counts the module)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            parts = target.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in modules:
                    if candidate != name:
                        found.add(candidate)
                    break
    return found


def _cycle_through(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path of imports from `start` back to itself, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        module, path = stack.pop()
        for target in sorted(graph.get(module, ())):
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def test_no_import_cycles() -> None:
    modules = _modules(workspace_root())
    assert "max.pipelines.lib" in modules and "max_kernels" in modules, "could not locate the source tree"
    # A package's __init__ re-exporting its modules is not a cycle with them: only the
    # modules' own imports of one another are followed (packages are leaves).
    graph = {
        name: {t for t in _imports(path, name, modules) if modules[t].name != "__init__.py"}
        for name, path in modules.items()
        if path.name != "__init__.py"
    }
    cycles = sorted({" -> ".join(c) for name in graph if (c := _cycle_through(name, graph))})
    assert not cycles, "\n".join(cycles)


def test_modules_and_classes_stay_small() -> None:
    too_long = []
    for path in sorted(_modules(workspace_root()).values()):
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(f"{path}: class {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, "\n".join(too_long)
