"""mkdocs hooks (``hooks:`` in mkdocs.yml): keep the site true to the code.

* The tutorial notebooks (``notebooks/*.ipynb``) are published with the site under
  ``notebooks/``, so pages link to them and ``mkdocs build --strict`` fails on a link to a
  notebook that does not exist.
* ``docs/cli.md``: each ``<!-- cli: COMMAND -->`` marker is replaced by the options table of that
  ``lens-bias`` command, read from the Typer app itself (names, defaults, help). A marker for an
  unknown command fails the build; a command without a marker gets a generated section at the end
  of the page, so a new command is never missing from the reference.
* ``docs/api.md``: the docstrings cross-reference with Sphinx roles (``:func:`select```,
  ``:class:`~lens_bias.scores.Scores```), which mkdocstrings leaves as text. Each role becomes a
  link to the object's entry on the page (resolved like Sphinx: the full dotted name, or relative
  to the object whose docstring it is in and its parents; ``~`` shows only the last part), or plain
  code when the object is not documented there.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.api_refs")
MARKER = re.compile(r"<!--\s*cli:\s*([a-z][a-z -]*?)\s*-->")
ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|exc|obj):<code>(~?)([\w.]+)</code>")
ANCHOR = re.compile(r'id="(lens_bias(?:\.\w+)*)"')

# options declared without help text in lens_bias.cli.main
FALLBACK_HELP = {
    "--batch-size": "pairs (or texts) per forward pass; lower it if memory runs out",
    "--seed": "seed of the pair sampling, the template split and random choices",
    "--overwrite": "replace an existing output",
}


def on_files(files, config):
    root = Path(config["config_file_path"]).parent
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        files.append(File(f"notebooks/{nb.name}", src_dir=str(root), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def _commands():
    """{"run": click.Command, "experiment curve": click.Command, ...} in definition order."""
    import typer.main

    from lens_bias.cli.main import app

    out = {}

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            full = f"{prefix}{name}"
            if hasattr(cmd, "commands"):
                walk(cmd, full + " ")
            else:
                out[full] = cmd

    walk(typer.main.get_command(app), "")
    return out


def _default(p) -> str:
    if getattr(p, "is_flag", False):
        return "on" if p.default else "off"
    if p.required:
        return "required"
    d = p.default
    if d is None or d == ():
        return "-"
    return f"`{d}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(cmd) -> str:
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for p in cmd.params:
        if not p.opts or not p.opts[0].startswith("-"):
            continue
        names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
        help_ = getattr(p, "help", None) or FALLBACK_HELP.get(p.opts[0], "")
        rows.append(f"| {names} | {_default(p)} | {_cell(help_)} |")
    return "\n".join(rows)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "cli.md":
        return markdown
    cmds = _commands()
    seen = set()

    def replace(m):
        name = m.group(1).strip()
        if name not in cmds:
            raise PluginError(f"docs/cli.md has a marker for 'lens-bias {name}', which does not exist; "
                              f"commands: {', '.join(cmds)}")
        seen.add(name)
        return _table(cmds[name])

    markdown = MARKER.sub(replace, markdown)
    missing = [n for n in cmds if n not in seen]
    if missing:
        markdown += "\n\n## Other commands\n\nGenerated from the code; not yet described above.\n"
        for n in missing:
            help_ = (cmds[n].help or "").strip()
            markdown += f"\n### `lens-bias {n}`\n\n{help_}\n\n{_table(cmds[n])}\n"
    return markdown


ROOT = Path(__file__).resolve().parents[1]


def _source(module: str) -> Path | None:
    """The file of a lens_bias module (``lens_bias.model.load``, a package's ``__init__.py``), or None."""
    parts = module.split(".")
    for path in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if parts[0] == "lens_bias" and path.is_file():
            return path
    return None


@functools.cache
def _imports(module: str) -> dict[str, str]:
    """``{name: "lens_bias.x.y.name"}`` for every relative ``from ..x.y import name`` in ``module``'s
    source (any depth: the stages are subpackages)."""
    import ast

    path = _source(module)
    if path is None:
        return {}
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)]
            mod = ".".join([*base, node.module] if node.module else base)
            out.update({a.asname or a.name: f"{mod}.{a.name}" for a in node.names})
    return out


def _module_prefix(name: str) -> tuple[str, str]:
    """``name`` cut into its longest lens_bias module prefix and the rest (``""`` when none)."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if _source(".".join(parts[:k])):
            return ".".join(parts[:k]), ".".join(parts[k:])
    return "", name


def _resolve(name: str, context: str, ids: set[str]) -> str | None:
    """The page anchor of ``name`` as seen from the object ``context`` (Sphinx's lookup order)."""
    scope = context
    while scope:
        if f"{scope}.{name}" in ids:
            return f"{scope}.{name}"
        scope = scope.rpartition(".")[0]
    for full in (name, f"lens_bias.{name}"):
        if full in ids:
            return full
    # a name imported into a module (``MaskError`` in materialize, ``lens_bias.load_model``): its
    # documented home, read from the module's imports (nothing is imported)
    if name.startswith("lens_bias."):
        module, rest = _module_prefix(name)
    else:
        module, rest = _module_prefix(context)[0], name
    head, _, tail = rest.partition(".")
    home = _imports(module).get(head) if module and head else None
    if home:
        full = f"{home}.{tail}" if tail else home
        if full in ids:
            return full
    return None


def on_page_content(html, page, config, files):
    if page.file.src_uri != "api.md":
        return html
    anchors = [(m.start(), m.group(1)) for m in ANCHOR.finditer(html)]
    ids = {a for _, a in anchors}
    out, last, i = [], 0, 0
    context = ""
    for m in ROLE.finditer(html):
        while i < len(anchors) and anchors[i][0] < m.start():
            context = anchors[i][1]
            i += 1
        short, name = m.group(1), m.group(2)
        shown = name.rpartition(".")[2] if short else name
        target = _resolve(name, context, ids)
        code = f"<code>{shown}</code>"
        if target is None:
            log.debug("api.md: %s (in %s) is not documented on the page; shown as code", name, context)
        out.append(html[last:m.start()])
        out.append(f'<a href="#{target}">{code}</a>' if target else code)
        last = m.end()
    out.append(html[last:])
    return "".join(out)
