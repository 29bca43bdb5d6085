"""The declared dependencies are the imported ones. Read with ast and tomllib; nothing is imported.

Every ``import`` / ``from`` in ``lens_bias/*.py`` (imports inside functions included) is collected;
the standard library (``sys.stdlib_module_names``) and ``lens_bias`` itself are left out, and each
remaining top-level module is mapped to its distribution (:data:`DIST`, else the module's own name;
names compared after PEP 503 normalization, so ``transformer_lens`` is ``transformer-lens``). Then:

1. A module imported at module level, or in a function outside a ``try`` that catches
   ImportError, is needed by every user: it must be in ``[project].dependencies``.
2. A module whose every import is inside a function *and* inside a ``try`` that catches
   ImportError / ModuleNotFoundError (an optional feature that fails with an install hint:
   ``pandas`` for the DataFrames, ``torch_pruning`` for ``apply_torch_pruning``) may instead be
   declared in an extra, and such a module must be in ``dev`` too (the tests exercise it).
3. The zoo's model packages (``module`` of ``lens_bias/data/zoo.json``) are data, each with its
   own exact install command (one must be installed with ``--no-deps``, which an extra cannot
   say): they must follow rule 2's guard, but are declared nowhere.
4. Every ``[project].dependencies`` entry must be imported by lens_bias, except those in
   :data:`INDIRECT`, each with the reason it is needed and a check that the reason still holds.

:data:`DIST` is checked against the installed packages' metadata, so a wrong mapping fails too.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lens_bias"

# import name -> distribution name, where they differ beyond PEP 503 normalization
DIST = {"yaml": "PyYAML", "PIL": "pillow", "sklearn": "scikit-learn", "google": "protobuf"}
# declared runtime dependencies lens_bias never imports itself: reason, and a check that it still holds
INDIRECT = {
    "gguf": ("transformers reads the zoo's .gguf files with it (zoo.load_gguf passes gguf_file=)",
             lambda: "gguf_file=" in (PKG / "model" / "zoo.py").read_text(encoding="utf-8")),
}
GUARD_ERRORS = {"ImportError", "ModuleNotFoundError"}


def normalize(name: str) -> str:
    """PEP 503: ``Transformer_Lens`` and ``transformer-lens`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution(module: str) -> str:
    return normalize(DIST.get(module, module))


def requirement_name(spec: str) -> str:
    """``"torch>=2.4,<=2.14.1"`` -> ``"torch"``; ``"mkdocstrings[python]>=0.26"`` -> ``"mkdocstrings"``."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    assert m, f"cannot read the requirement {spec!r}"
    return normalize(m.group(1))


def _catches_import_error(node: ast.Try) -> bool:
    for h in node.handlers:
        types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
        if any(isinstance(t, ast.Name) and t.id in GUARD_ERRORS for t in types):
            return True
    return False


def third_party_imports(pkg: Path = PKG) -> dict[str, list[tuple[str, int, bool]]]:
    """Top-level module -> one ``(file, line, guarded)`` per import of it; ``guarded``: inside a
    function and inside the body of a ``try`` that catches ImportError."""
    found: dict[str, list[tuple[str, int, bool]]] = {}

    def visit(node: ast.AST, path: Path, in_function: bool, in_guard: bool) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top != pkg.name:
                found.setdefault(top, []).append((path.name, node.lineno, in_function and in_guard))
        in_function = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        if isinstance(node, ast.Try):
            for child in node.body:
                visit(child, path, in_function, in_guard or _catches_import_error(node))
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, path, in_function, in_guard)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, path, in_function, in_guard)

    for path in sorted(pkg.rglob("*.py")):
        visit(ast.parse(path.read_text(encoding="utf-8")), path, False, False)
    return found


def declared(pyproject: Path = ROOT / "pyproject.toml") -> tuple[set[str], dict[str, set[str]]]:
    """(``[project].dependencies``, ``{extra: its requirements}``), normalized names."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    extras = {k: {requirement_name(r) for r in v}
              for k, v in project.get("optional-dependencies", {}).items()}
    return {requirement_name(r) for r in project.get("dependencies", [])}, extras


def problems(imports: dict[str, list[tuple[str, int, bool]]], deps: set[str], extras: dict[str, set[str]],
             zoo_modules: set[str] = frozenset(), indirect: set[str] = frozenset()) -> list[str]:
    """Every breach of the rules of this module's docstring, as one line each (empty = none)."""
    out = []
    in_extras = set().union(*extras.values()) if extras else set()
    for module, sites in sorted(imports.items()):
        dist = distribution(module)
        where = ", ".join(f"{f}:{line}" for f, line, _ in sites)
        optional = all(g for _, _, g in sites)
        if module in zoo_modules:
            if not optional:
                out.append(f"zoo package {module} is imported outside a guarded function import ({where})")
        elif dist in deps:
            continue
        elif optional and dist in in_extras:
            if dist not in extras.get("dev", set()):
                out.append(f"{dist} (optional, {where}) is in an extra but not in 'dev': the tests need it")
        elif optional:
            out.append(f"{dist} is imported ({where}) but declared nowhere: add it to [project].dependencies "
                       "or to an extra")
        else:
            out.append(f"{dist} is imported ({where}) but not in [project].dependencies")
    used = {distribution(m) for m in imports}
    out += [f"{d} is in [project].dependencies but lens_bias never imports it"
            for d in sorted(deps - used - indirect)]
    return out


def _zoo_modules() -> set[str]:
    return {e["module"] for e in json.loads((PKG / "data" / "zoo.json").read_text(encoding="utf-8"))}


def test_declared_dependencies_are_the_imported_ones():
    deps, extras = declared()
    found = problems(third_party_imports(), deps, extras, _zoo_modules(), set(INDIRECT))
    assert not found, "\n".join(found)


def test_indirect_dependencies_are_declared_and_still_needed():
    deps, _ = declared()
    for name, (why, still) in INDIRECT.items():
        assert normalize(name) in deps, f"{name} is listed as indirect ({why}) but not declared"
        assert still(), f"{name} was declared because {why}; that no longer holds: drop it from both"


def test_dist_map_matches_the_installed_metadata():
    installed = importlib.metadata.packages_distributions()
    for module in third_party_imports():
        if module in installed:  # e.g. a zoo package may be absent
            assert distribution(module) in {normalize(d) for d in installed[module]}, \
                f"{module} belongs to {installed[module]}, not {distribution(module)}: fix DIST"


def test_pandas_extra():
    deps, extras = declared()
    assert "pandas" in extras["pandas"] and "pandas" in extras["dev"] and "pandas" not in deps


def test_the_checker_sees_each_kind_of_breach(tmp_path):
    pkg = tmp_path / "lens_bias"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "import os\nimport numpy as np\nfrom yaml import safe_load\nfrom . import b\n"
        "def f():\n    try:\n        import pandas\n    except ImportError:\n        raise\n"
        "def g():\n    import scipy\n"
        "def h():\n    try:\n        import zoo_pkg\n"
        "    except (ModuleNotFoundError, OSError):\n        pass\n")
    (pkg / "b.py").write_text("import lens_bias.a\n")
    imports = third_party_imports(pkg)
    assert set(imports) == {"numpy", "yaml", "pandas", "scipy", "zoo_pkg"}
    assert imports["pandas"] == [("a.py", 7, True)] and imports["scipy"] == [("a.py", 11, False)]
    extras = {"pandas": {"pandas"}, "dev": {"pandas"}}
    ok = problems(imports, {"numpy", "pyyaml", "scipy", "gguf"}, extras, {"zoo_pkg"}, {"gguf"})
    assert ok == []
    bad = problems(imports, {"numpy", "einops", "gguf"}, {"pandas": {"pandas"}}, {"zoo_pkg"}, {"gguf"})
    assert bad == [
        "pandas (optional, a.py:7) is in an extra but not in 'dev': the tests need it",
        "scipy is imported (a.py:11) but not in [project].dependencies",
        "pyyaml is imported (a.py:3) but not in [project].dependencies",
        "einops is in [project].dependencies but lens_bias never imports it",
    ]
    (pkg / "c.py").write_text("import zoo_pkg\n")
    assert problems(third_party_imports(pkg), {"numpy", "pyyaml", "scipy"}, extras, {"zoo_pkg"}) == \
        ["zoo package zoo_pkg is imported outside a guarded function import (a.py:14, c.py:1)"]
