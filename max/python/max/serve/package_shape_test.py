"""The shape of the max.serve package.

Its modules import one another in one direction only: no module reaches itself again
through the imports of the ones it imports (imports under TYPE_CHECKING and inside
functions count too: a cycle hidden there is still two modules that need each other). No
module is longer than 600 lines, and no class longer than 300.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent
PREFIX = "max.serve."
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300


def _sources() -> dict[str, ast.Module]:
    return {
        path.stem: ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.glob("*.py"))
        if not path.stem.endswith("_test")
    }


def _imports(tree: ast.Module) -> set[str]:
    """The max.serve modules a module imports, anywhere in it."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "max.serve":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith(PREFIX):
                found.add(node.module[len(PREFIX) :].split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(a.name[len(PREFIX) :].split(".")[0] for a in node.names if a.name.startswith(PREFIX))
    return found


def _cycle_through(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path of imports from `start` back to itself, if there is one."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        module, path = stack.pop()
        for target in sorted(graph.get(module, ())):
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def test_no_import_cycles():
    sources = _sources()
    graph = {name: _imports(tree) & set(sources) for name, tree in sources.items()}
    cycles = [" -> ".join(c) for name in sorted(graph) if (c := _cycle_through(name, graph))]
    assert not cycles, cycles


def test_modules_and_classes_stay_small():
    too_long = []
    for path in sorted(PACKAGE.glob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(f"{path.name}: class {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long
