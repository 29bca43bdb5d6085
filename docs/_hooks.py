"""mkdocs hooks (``hooks:`` in mkdocs.yml): keep the site true to the code.

* The tutorial notebooks (``notebooks/*.ipynb``) are published with the site under
  ``notebooks/``, so pages link to them and ``mkdocs build --strict`` fails on a link to a
  notebook that does not exist.
* ``docs/cli.md``: each ``<!-- cli: COMMAND -->`` marker is replaced by the options table of that
  ``lens-bias`` command, read from the Typer app itself (names, defaults, help). A marker for an
  unknown command fails the build; a command without a marker gets a generated section at the end
  of the page, so a new command is never missing from the reference.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

MARKER = re.compile(r"<!--\s*cli:\s*([a-z][a-z -]*?)\s*-->")

# options declared without help text in lens_bias.cli
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

    from lens_bias.cli import app

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
