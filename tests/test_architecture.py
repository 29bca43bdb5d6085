"""The package's shape: no import circles (imports inside functions included), small modules and
short functions. Read from the source with ast; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lens_bias"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
# The stages, in the order data flows: a stage imports only the shared modules (the files directly
# in lens_bias/), itself and the stages before it. The root __init__ (the public face) may import any.
STAGES = ("prompts", "model", "hooks", "measures", "attribution", "selection", "weights", "mitigation",
          "studies", "report", "pipeline", "cli", "harness")


def _module_name(path: Path, pkg: Path = PKG) -> str:
    parts = ["lens_bias", *path.relative_to(pkg).with_suffix("").parts]
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def _targets(node: ast.AST, here: str, known: set[str], is_pkg: bool) -> set[str]:
    """The lens_bias modules one import statement reaches (``from . import x`` reaches x)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        base = here.split(".") if is_pkg else here.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        mod = ".".join([*base, node.module] if node.module else base)
    else:
        mod = node.module or ""
    if mod not in known:
        return set()
    subs = {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known}
    return subs or {mod}


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """Module -> the lens_bias modules it imports anywhere in its body (functions included)."""
    files = {_module_name(p, pkg): p for p in pkg.rglob("*.py")}
    known = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_pkg = path.name == "__init__.py"
        graph[name] = set().union(*(_targets(n, name, known, is_pkg) for n in ast.walk(tree))) - {name}
    return graph


def stage_of(module: str) -> int | None:
    """The position of a module's stage in STAGES; None for the shared modules and the root."""
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import against the stage order, as 'importer -> imported'."""
    bad = []
    for mod, deps in sorted(graph.items()):
        if mod == "lens_bias":
            continue
        mine = stage_of(mod)
        for dep in sorted(deps):
            theirs = stage_of(dep)
            if dep == "lens_bias" or (theirs is not None and (mine is None or theirs > mine)):
                bad.append(f"{mod} -> {dep}")
    return bad


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


def test_stage_order_finder_sees_an_upward_import(tmp_path):
    for d in ("", "prompts", "model"):
        (tmp_path / d).mkdir(exist_ok=True)
        (tmp_path / d / "__init__.py").write_text("")
    (tmp_path / "errors.py").write_text("")
    (tmp_path / "prompts" / "pairs.py").write_text("from ..errors import x\n")
    (tmp_path / "model" / "load.py").write_text("from ..prompts.pairs import x\nfrom . import batching\n")
    (tmp_path / "model" / "batching.py").write_text("")
    graph = import_graph(tmp_path)
    assert graph["lens_bias.model.load"] == {"lens_bias.prompts.pairs", "lens_bias.model.batching"}
    assert upward_imports(graph) == []
    (tmp_path / "prompts" / "pairs.py").write_text("def f():\n    from ..model.load import y\n")
    (tmp_path / "errors.py").write_text("from .prompts import pairs\n")
    assert upward_imports(import_graph(tmp_path)) == ["lens_bias.errors -> lens_bias.prompts.pairs",
                                                      "lens_bias.prompts.pairs -> lens_bias.model.load"]


def test_stages_import_only_downward():
    """prompts -> model -> hooks -> measures -> attribution -> selection -> weights -> studies ->
    report -> pipeline -> cli, imports inside functions included; shared modules import no stage."""
    bad = upward_imports(import_graph())
    assert not bad, "imports against the stage order (STAGES):\n" + "\n".join(bad)


def test_every_module_lives_in_a_stage_or_is_shared():
    shared = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    assert shared <= {"errors", "atomic", "stats", "frames", "bridge", "masks", "scores", "vocab",
                      "_moved"}, shared
    assert {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(STAGES)


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


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_module_and_function_sizes(path):
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, (
        f"{path.name} has over {MAX_MODULE_LINES} lines: split it")
    long = [f"{fn.name} ({_code_lines(fn)} lines)" for fn in ast.walk(ast.parse(text))
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            and _code_lines(fn) > MAX_FUNCTION_LINES]
    assert not long, (f"{path.name}: functions over {MAX_FUNCTION_LINES} lines (docstrings aside): "
                      f"{', '.join(long)}")


def test_no_private_name_is_imported_across_modules():
    """A leading underscore means 'this module only': what another module needs gets a public name."""
    bad = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (
                    node.level or (node.module or "").startswith("lens_bias")):
                bad += [f"{path.relative_to(PKG)}:{node.lineno} {a.name}" for a in node.names
                        if a.name.startswith("_") and a.name != "_moved"]
    assert not bad, "private names imported from another module: " + ", ".join(bad)


def test_lines_stay_within_the_configured_length():
    """Ruff's line-length rule is on (not ignored), and no line of the package, the tests or the
    benchmarks is longer; as in ruff, a trailing ``# noqa`` / ``# type:`` pragma does not count,
    nor does a line that is one unbroken token (a URL)."""
    import re
    import tomllib

    cfg = tomllib.loads((PKG.parent / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["ruff"]
    assert "E501" not in cfg["lint"].get("ignore", []), "turn E501 back on in pyproject.toml"
    limit = cfg["line-length"]
    long = [f"{p.relative_to(PKG.parent)}:{i}" for d in ("lens_bias", "tests", "benchmarks")
            for p in sorted((PKG.parent / d).rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if len(code := re.sub(r"\s*# (noqa|type:).*$", "", line)) > limit and " " in code.strip()]
    assert not long, f"{len(long)} lines over {limit} characters: {long[:10]}"
