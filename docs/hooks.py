"""mkdocs hooks: the command-line reference generated from the parsers, API names resolved.

Registered in mkdocs.yml (`hooks:`); excluded from the site (`exclude_docs`).

- `<!-- cli: COMMAND -->` in a page becomes COMMAND's reference: usage, description,
  one table per flag group (flag, value, default, meaning) and the epilog, rendered from
  the command's own `argparse` parser (`command_parser`), so the page cannot drift from
  `--help`. tests/test_docs.py compares the tables with the parsers.
- `::: quantens.NAME` / `::: zoo.NAME` (mkdocstrings) is rewritten to the module that
  defines NAME: quantens loads its public names lazily, which static analysis cannot
  follow, and the page keeps working when a name moves between modules.
- `<!-- modules: DIR -->` becomes a table of DIR's modules and subpackages (a row each:
  the first line of its docstring, read with `ast`), then one such table per subpackage.
- `<!-- layers -->` becomes the table of supported layer kinds, read from
  `quantens.registry` (the one table the converter and the exporter read too).
- `<!-- api: quantens -->` becomes a `:::` block for every name of `quantens.__all__`
  that the page does not document elsewhere, so a new public name is never missing.

Only public entry points are imported: each command's `build_parser` where the module
has one, else its `main`, stopped at the moment it parses its arguments.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything loads TensorFlow

log = logging.getLogger("mkdocs.hooks.quantens")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Command:
    script: str
    """The console script `pip install` puts on PATH."""
    python: str
    """The same command from a checkout."""
    modules: tuple[str, ...]
    """Where to look for `build_parser(prog=...)`, first match wins."""
    main: str
    """The module whose `main(argv)` builds and parses the parser (the fallback)."""


COMMANDS = (
    Command("quantens-train", "python train.py", ("quantens.cli.train", "quantens.cli"),
            "quantens.cli.train"),
    Command("quantens-export", "python -m quantens.export", ("quantens.cli.export",),
            "quantens.cli.export"),
    Command("quantens-report", "python -m quantens.report", ("quantens.cli.report",),
            "quantens.cli.report"),
    Command("quantens-evaluate", "python -m zoo.evaluate", ("zoo.evaluate",), "zoo.evaluate"),
)


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__(parser.prog)
        self.parser = parser


def _parser_of_main(main) -> argparse.ArgumentParser:
    """The parser `main` builds: stopped when it first parses, before it does anything."""
    original = argparse.ArgumentParser.parse_known_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_known_args = capture
    try:
        main([])
    except _Captured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_known_args = original
    raise RuntimeError(f"{main.__module__}.main returned without parsing its arguments")


def command_parser(command: Command) -> argparse.ArgumentParser:
    """The parser of one command, named as its console script."""
    for name in command.modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        builder = getattr(module, "build_parser", None)
        if callable(builder):
            try:
                return builder(prog=command.script)
            except TypeError:
                return builder()
    return _parser_of_main(importlib.import_module(command.main).main)


def _visible(action: argparse.Action) -> bool:
    return not isinstance(action, argparse._HelpAction) and action.help != argparse.SUPPRESS


def groups(parser: argparse.ArgumentParser) -> list[tuple[str, list[argparse.Action]]]:
    """(title, actions) of every flag group with a documented action, in `--help` order."""
    titles = {"positional arguments": "arguments", "options": "options",
              "optional arguments": "options"}
    found = []
    for group in parser._action_groups:  # argparse keeps its groups here (no public API)
        actions = [a for a in group._group_actions if _visible(a)]
        if actions:
            found.append((titles.get(group.title, group.title), actions))
    return found


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def flag_cell(action: argparse.Action) -> str:
    """The flag column: every option string (or the positional's name) in backticks."""
    if not action.option_strings:
        return f"`{(action.metavar or action.dest).upper()}`"
    return ", ".join(f"`{s}`" for s in action.option_strings)


def value_cell(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None:
        value = " \\| ".join(f"`{c}`" for c in action.choices)
    elif isinstance(action.metavar, str):
        value = f"`{action.metavar}`"
    else:
        kind = getattr(action.type, "__name__", None)
        value = {"int": "integer", "float": "number"}.get(kind, "text")
    if action.nargs in ("+", "*"):
        value += " …"
    return value


def default_cell(action: argparse.Action) -> str:
    default = action.default
    if default in (None, "") or default is argparse.SUPPRESS or not action.option_strings:
        return ""
    if action.nargs == 0 and default is False:
        return ""
    if isinstance(default, (list, tuple)):
        return "`" + " ".join(map(str, default)) + "`"
    return f"`{default}`"


def help_cell(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": "", "default": action.default}
    return _cell(text)


def render_command(command: Command, parser: argparse.ArgumentParser) -> str:
    """A command's reference in markdown: usage, description, a table per group, epilog."""
    usage = parser.format_usage().rstrip()
    lines = [f"## `{command.script}`", "",
             f"From a checkout: `{command.python}`. Generated from its parser, as "
             "`--help` prints it.", "", "```text", usage, "```", ""]
    if parser.description:
        lines += [" ".join(parser.description.split()), ""]
    for title, actions in groups(parser):
        lines += [f"### {command.script}: {title}", "",
                  "| flag | value | default | meaning |", "|---|---|---|---|"]
        lines += [f"| {flag_cell(a)} | {value_cell(a)} | {default_cell(a)} | {help_cell(a)} |"
                  for a in actions]
        lines.append("")
    if parser.epilog:
        lines += ["```text", parser.epilog.rstrip(), "```", ""]
    return "\n".join(lines)


def render_cli(script: str) -> str:
    for command in COMMANDS:
        if command.script == script:
            return render_command(command, command_parser(command))
    raise KeyError(f"no command {script!r}: one of {', '.join(c.script for c in COMMANDS)}")


_CLI = re.compile(r"^<!-- cli: (?P<script>[\w-]+) -->$", re.MULTILINE)
_API = re.compile(r"^(?P<indent>[ \t]*):::[ \t]+(?P<package>quantens|zoo)\.(?P<name>\w+)[ \t]*$",
                  re.MULTILINE)
_API_REST = re.compile(r"^<!-- api: (?P<package>quantens) -->$", re.MULTILINE)


def defining_path(package: str, name: str) -> str:
    """`module.NAME` of the module that defines `package.NAME` (unchanged for a submodule)."""
    obj = getattr(importlib.import_module(package), name)
    module = getattr(obj, "__module__", None)
    if inspect.ismodule(obj) or not module or module == package:
        return f"{package}.{name}"
    return f"{module}.{name}"


_DIRECTIVE = re.compile(r"^[ \t]*:::[ \t]+(?P<path>[\w.]+)[ \t]*$", re.MULTILINE)


def _api_rest(package: str, markdown: str) -> str:
    """`:::` blocks for the names of `package.__all__` the page does not show yet, under a
    heading per defining module, in `__all__` order."""
    documented = {m["path"].rsplit(".", 1)[-1] for m in _DIRECTIVE.finditer(markdown)}
    by_module: dict[str, list[str]] = {}
    for name in importlib.import_module(package).__all__:
        if name not in documented:
            module = defining_path(package, name).rsplit(".", 1)[0]
            by_module.setdefault(module, []).append(name)
    sections = []
    for module, names in by_module.items():
        sections.append(f"## `{module}`")
        sections += [f"::: {package}.{name}" for name in names]
    return "\n\n".join(sections)


def _summary(path: Path) -> str:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return _cell(docstring.strip().split("\n\n")[0]) or "*(no docstring)*"


def module_tables(directory: str, level: int = 4) -> str:
    """A table of the modules and subpackages of `directory` (relative to the repository),
    each with its docstring's first paragraph, then the same for every subpackage."""
    base = ROOT / directory
    if not (base / "__init__.py").is_file():
        raise FileNotFoundError(f"{directory} is not a package")
    rows, subpackages = [], []
    for path in sorted(base.iterdir()):
        if path.is_dir() and (path / "__init__.py").is_file():
            rows.append((f"`{path.name}/`", _summary(path / "__init__.py")))
            subpackages.append(path)
        elif path.suffix == ".py" and path.name != "__main__.py":
            rows.append((f"`{path.name}`", _summary(path)))
    lines = ["| module | what it is |", "|---|---|"]
    lines += [f"| {name} | {summary} |" for name, summary in rows]
    text = "\n".join(lines) + "\n"
    for sub in subpackages:
        if len([p for p in sub.glob("*.py") if p.name != "__main__.py"]) > 1:
            relative = sub.relative_to(ROOT).as_posix()
            text += f"\n{'#' * level} `{relative}/`\n\n" + module_tables(relative, level)
    return text


def layer_table() -> str:
    """The layer kinds with a quantized kernel, from `quantens.registry`, in registration order."""
    import quantens

    quantens.quantize_model  # noqa: B018  (loads the converter, which registers every kind)
    registry = importlib.import_module("quantens.registry")
    lines = ["| float layer | becomes | quantized kernels |", "|---|---|---|"]
    for entry in registry.registered_layers():
        kernels = ", ".join(f"`{k}`" for k in entry.kernels)
        lines.append(f"| `{entry.float_class.__name__}` | "
                     f"`{entry.switchable_class.__name__}` | {kernels} |")
    return "\n".join(lines) + "\n"


_LAYERS = re.compile(r"^<!-- layers -->$", re.MULTILINE)
_MODULES = re.compile(r"^<!-- modules: (?P<directory>[\w/]+) -->$", re.MULTILINE)


def on_page_markdown(markdown: str, page, config, files) -> str:
    def cli(match: re.Match) -> str:
        try:
            return render_cli(match["script"])
        except Exception as error:  # a broken page must fail the --strict build, loudly
            log.warning("%s: cannot render the command line of %s: %s: %s",
                        page.file.src_uri, match["script"], type(error).__name__, error)
            return f"*(the reference of `{match['script']}` could not be generated)*"

    def api(match: re.Match) -> str:
        try:
            path = defining_path(match["package"], match["name"])
        except Exception as error:
            log.warning("%s: %s.%s: %s: %s", page.file.src_uri, match["package"],
                        match["name"], type(error).__name__, error)
            return match[0]
        return f"{match['indent']}::: {path}"

    def modules(match: re.Match) -> str:
        try:
            return module_tables(match["directory"])
        except Exception as error:
            log.warning("%s: cannot list the modules of %s: %s: %s", page.file.src_uri,
                        match["directory"], type(error).__name__, error)
            return match[0]

    markdown = _CLI.sub(cli, markdown)
    markdown = _MODULES.sub(modules, markdown)
    if _LAYERS.search(markdown):
        try:
            table = layer_table()
        except Exception as error:
            log.warning("%s: cannot read the layer registry: %s: %s", page.file.src_uri,
                        type(error).__name__, error)
            table = "<!-- layers -->"
        markdown = _LAYERS.sub(lambda m: table, markdown)
    markdown = _API_REST.sub(lambda m: _api_rest(m["package"], markdown), markdown)
    return _API.sub(api, markdown)
