"""The package's imports flow one way: the graph of flash_jax's modules, counting imports at module
level and inside functions alike, has no cycle."""
from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "flash_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = ("flash_jax",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package's modules a module's import statements name (an imported name that is a module
    counts as that module; a name from a package's __init__ counts as the package)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) + is_package - node.level]
                base = ".".join(anchor + ([base] if base else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names)
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (module level and function level)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imported(ast.parse(path.read_text()), name, path.name == "__init__.py", modules) - {name}
            for name, path in files.items()}


def layers(graph: dict[str, set[str]]) -> list[list[str]]:
    """Modules in layers, each importing only from the layers before it; raises on a cycle."""
    placed, result = set(), []
    while len(placed) < len(graph):
        layer = sorted(m for m, deps in graph.items() if m not in placed and deps <= placed)
        if not layer:
            raise AssertionError(f"import cycle among: {', '.join(sorted(set(graph) - placed))}")
        result.append(layer)
        placed.update(layer)
    return result


def test_import_graph_has_no_cycle():
    assert layers(import_graph())


def test_the_graph_sees_function_level_imports():
    tree = ast.parse("def f():\n    from flash_jax.fl import rules\n")
    assert _imported(tree, "flash_jax.x", False, {"flash_jax.fl", "flash_jax.fl.rules"}) == {"flash_jax.fl.rules"}


if __name__ == "__main__":
    for i, layer in enumerate(layers(import_graph())):
        print(f"{i}: {' '.join(layer)}")
