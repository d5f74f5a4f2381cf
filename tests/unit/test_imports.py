"""The package layering: stage packages import each other without cycles, and only the CLI layer
(`azaion_training/cli.py` and each stage's `cli.py` / `*_cli.py`) may import any stage. Every
import counts, also one inside a function (it is a dependency all the same)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "azaion_training"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_cli(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return last in ("cli", "cli_support") or last.endswith("_cli")


def _unit(module: str) -> str:
    """The package a module belongs to (azaion_training.queue.consumer -> queue); a top-level
    module (layout, settings, metrics...) is its own unit."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("azaion_training"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("azaion_training"))
    return found


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    into_cli = []
    for name, path in modules.items():
        if _is_cli(name):
            continue
        for target in _imports(path):
            if target not in modules:
                continue
            if _is_cli(target):
                into_cli.append((name, target))
            elif _unit(target) != _unit(name):
                edges.setdefault(_unit(name), set()).add(_unit(target))
    return edges, into_cli


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    return components


def test_stage_packages_import_each_other_without_cycles():
    edges, _ = _graph()
    assert _cycles(edges) == [], f"package import cycles: {_cycles(edges)}"
    assert edges, "the graph is empty: the test reads nothing"


def test_no_stage_module_imports_a_cli_module():
    _, into_cli = _graph()
    assert into_cli == [], f"stage modules importing the CLI layer: {into_cli}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
