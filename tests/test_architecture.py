"""The package's shape: no import circles (imports inside functions included), small modules and
short functions. Read from the source with ast; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lens_bias"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    return "lens_bias" if path.name == "__init__.py" else f"lens_bias.{path.stem}"


def _targets(node: ast.AST, here: str, known: set[str]) -> set[str]:
    """The lens_bias modules one import statement reaches (``from . import x`` reaches x)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        base = here if here == "lens_bias" else here.rsplit(".", 1)[0]
        mod = f"{base}.{node.module}" if node.module else base
    else:
        mod = node.module or ""
    if mod not in known:
        return set()
    subs = {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known}
    return subs or {mod}


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """Module -> the lens_bias modules it imports anywhere in its body (functions included)."""
    files = {_module_name(p): p for p in pkg.glob("*.py")}
    known = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = set().union(*(_targets(n, name, known) for n in ast.walk(tree))) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_cycle_finder_sees_a_circle_through_a_function_level_import(tmp_path):
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "a.py").write_text("from .b import f\n")
    (tmp_path / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (tmp_path / "c.py").write_text("import lens_bias.a\n")
    graph = import_graph(tmp_path)
    assert graph["lens_bias.a"] == {"lens_bias.b"} and graph["lens_bias.c"] == {"lens_bias.a"}
    assert find_cycle(graph) == ["lens_bias.a", "lens_bias.b", "lens_bias.a"]
    (tmp_path / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(tmp_path)) is None


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function without its docstring."""
    n = fn.end_lineno - fn.lineno + 1
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        n -= body[0].end_lineno - body[0].lineno + 1
    return n


@pytest.mark.parametrize("path", sorted(PKG.glob("*.py")), ids=lambda p: p.name)
def test_module_and_function_sizes(path):
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name} has over {MAX_MODULE_LINES} lines: split it"
    long = [f"{fn.name} ({_code_lines(fn)} lines)" for fn in ast.walk(ast.parse(text))
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and _code_lines(fn) > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines (docstrings aside): {', '.join(long)}"
