"""The documentation agrees with the code: KD modes, teacher modes, quantizer options,
flag lists and the generated command-line reference; README.md fits on two screens; every
relative link points to a file that exists.

No TensorFlow for the markdown checks; the command-line checks build the parsers (the
`quantens-evaluate` one imports the zoo, hence TensorFlow).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from quantens import defaults

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 150


def load_hooks():
    """docs/hooks.py (the mkdocs hooks) as a module."""
    name = "quantens_docs_hooks"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DOCS / "hooks.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    return sys.modules[name]


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def without_code(markdown: str) -> str:
    """Markdown without fenced code blocks (links and tables inside them are examples)."""
    return re.sub(r"(?ms)^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", "", markdown)


def section(markdown: str, heading: str) -> str:
    """The text under `heading` (e.g. "## KD modes") up to the next heading as high."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = markdown.splitlines()
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines))
                if re.match(rf"^#{{1,{level}}} ", lines[i])), len(lines))
    return "\n".join(lines[start + 1:end])


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of the markdown tables in `markdown`, as lists of stripped cells."""
    rows = []
    for line in without_code(markdown).splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
            rows.pop()  # the line before the separator is the header
            continue
        rows.append(cells)
    return rows


def ticked(cell: str) -> list[str]:
    """The `code` spans of a cell, in order."""
    return re.findall(r"`([^`]+)`", cell)


def flags_in(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w`-])`?(--?[a-z][\w-]*)", text))


# ------------------------------------------------------------------ README and links

def test_the_readme_fits_on_two_screens():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines: move detail to a page of docs/ "
        f"(at most {README_MAX_LINES})")


def test_the_readme_keeps_the_two_commands_and_the_seeds_examples():
    from seed_examples import EXAMPLES

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make train" in readme and "make test" in readme
    for n, command in EXAMPLES.items():
        assert command.replace("python main.py", "python train.py", 1) in readme, (
            f"README.md lost the seed's example {n}")


MARKDOWN_FILES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", MARKDOWN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(path):
    text = without_code(path.read_text(encoding="utf-8"))
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    targets += re.findall(r"(?m)^\s*\[[^\]]+\]:\s*(\S+)", text)  # reference definitions
    broken = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: links to missing files: {broken}"


def test_the_link_check_sees_links_and_skips_code():
    text = "[a](x.md) ![b](img/p.png) `[c](no.md)`\n```\n[d](code.md)\n```\n[e]: ref.md\n"
    stripped = without_code(text)
    assert "code.md" not in stripped and "x.md" in stripped and "p.png" in stripped


# --------------------------------------------------------------- knowledge distillation

def test_the_documented_kd_modes_are_the_codes():
    rows = table_rows(section(page("distillation.md"), "## KD modes"))
    assert [ticked(r[0])[0] for r in rows] == list(defaults.KD_MODES)
    for row in rows:
        mode, documented = ticked(row[0])[0], row[2]
        pairs = defaults.kd_pairs(mode, (32, 8, 1), has_teacher=True)
        shown = [] if documented == "none" else [p.strip() for p in documented.split(",")]
        targets = {defaults.TEACHER: "T", defaults.AVERAGE: "mean"}
        assert shown == [f"{s}←{targets.get(t, t)}" for s, t in pairs], mode


def test_the_documented_teacher_modes_are_the_codes():
    rows = table_rows(section(page("distillation.md"), "## Teacher modes"))
    assert [ticked(r[0])[0] for r in rows] == list(defaults.TEACHER_MODES)


# ------------------------------------------------------------------ quantizer options

def _code_table(name: str) -> tuple[Path, ast.Dict]:
    """The one module-level `NAME = {...}` of the library, read without importing it."""
    found = []
    for path in sorted((ROOT / "quantens").rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            if isinstance(value, ast.Dict) and any(
                    isinstance(t, ast.Name) and t.id == name for t in targets):
                found.append((path, value))
    assert len(found) == 1, f"expected one {name} in quantens/, found {found}"
    return found[0]


def _value(node: ast.expr):
    if isinstance(node, ast.Name):
        return getattr(defaults, node.id)  # e.g. CONVERTED_WEIGHT_QUANTIZATION
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return getattr(defaults, node.attr)  # defaults.X
    return ast.literal_eval(node)


def test_the_documented_quantizer_options_are_the_codes(train_parser):
    _, table = _code_table("QUANTIZER_OPTIONS")
    code = {ast.literal_eval(k): _value(v) for k, v in zip(table.keys, table.values, strict=True)}
    rows = table_rows(section(page("converting.md"), "## Quantizer options"))
    documented = {ticked(r[0])[0]: ticked(r[1])[0] for r in rows}
    assert list(documented) == list(code)
    for option, default in code.items():
        assert ast.literal_eval(documented[option]) == default, option
    weights = next(r for r in rows if ticked(r[0])[0] == "weight_quantization")
    named = [ast.literal_eval(t) for t in ticked(weights[2]) if t.startswith('"')]
    assert sorted(named) == sorted(_choices(train_parser, "--weight-quantization"))


def _choices(parser, flag: str) -> list[str]:
    return next(list(a.choices) for a in parser._actions if flag in a.option_strings)


def test_the_quantization_rules_name_every_quantizer(train_parser):
    rules = section(page("architecture.md"), "## Quantization rules")
    for flag in ("--weight-quantization", "--activation-method"):
        for method in _choices(train_parser, flag):
            assert f"`{method}`" in rules, (flag, method)


# ---------------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def hooks():
    return load_hooks()


@pytest.fixture(scope="module")
def train_parser(hooks):
    return hooks.command_parser(hooks.COMMANDS[0])


def _visible_actions(hooks, parser):
    return [a for _, actions in hooks.groups(parser) for a in actions]


def test_the_seed_flag_table_and_the_flags_beyond_it_are_every_train_flag(hooks, train_parser):
    training = page("training.md")
    start = training.index("Every flag (`python train.py --help`")
    flag_docs = training[start:training.index("## Data and splits")]
    actions = [a for a in _visible_actions(hooks, train_parser) if a.option_strings]
    options = {o for a in actions for o in a.option_strings}
    named = flags_in(flag_docs) - {"--help"}
    assert sorted(named - options) == [], "flags documented that train.py does not have"
    missing = [a.option_strings[-1] for a in actions if not set(a.option_strings) & named]
    assert missing == [], "train.py flags missing from docs/training.md"


def test_the_seed_flag_table_lists_each_flags_choices(hooks, train_parser):
    training = page("training.md")
    flag_docs = training[training.index("| seed flag |"):training.index("Beyond the seed")]
    by_flag = {o: a for a in train_parser._actions for o in a.option_strings}
    checked = 0
    for flag_cell, meaning in table_rows(flag_docs):
        with_choices = [f for f in ticked(flag_cell)
                        if f in by_flag and by_flag[f].choices is not None]
        if len(with_choices) != 1:
            continue
        choices = set(by_flag[with_choices[0]].choices) - {"none"} | (
            {"none"} if "`none`" in meaning else set())
        named = {t for t in ticked(meaning) if re.fullmatch(r"[a-z_]+", t)}
        assert named == set(by_flag[with_choices[0]].choices) or named == choices, (
            with_choices[0], sorted(named))
        checked += 1
    assert checked >= 6


def test_every_command_is_documented_and_installed(hooks):
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    installed = re.findall(r'"(quantens-[\w-]+)=', setup)
    assert sorted(c.script for c in hooks.COMMANDS) == sorted(installed)
    placeholders = re.findall(r"<!-- cli: ([\w-]+) -->", page("command-line.md"))
    assert placeholders == [c.script for c in hooks.COMMANDS]


@pytest.mark.parametrize("script", ["quantens-train", "quantens-export", "quantens-report",
                                    "quantens-evaluate"])
def test_the_generated_reference_is_the_parser(hooks, script):
    command = next(c for c in hooks.COMMANDS if c.script == script)
    parser = hooks.command_parser(command)
    markdown = hooks.render_command(command, parser)
    rows = table_rows(markdown)
    actions = _visible_actions(hooks, parser)
    assert len(rows) == len(actions)
    for (flag, value, default, meaning), action in zip(rows, actions, strict=True):
        if action.option_strings:
            assert ticked(flag) == list(action.option_strings)
        else:
            assert ticked(flag) == [(action.metavar or action.dest).upper()]
        if action.choices is not None:
            assert ticked(value) == [str(c) for c in action.choices]
        if default:
            expected = action.default
            if isinstance(expected, (list, tuple)):
                expected = " ".join(map(str, expected))
            assert ticked(default) == [str(expected)], action.dest
        assert " ".join((action.help or "").split())[:40].replace("|", "\\|") in meaning \
            or "%(" in (action.help or "")
    for title, _ in hooks.groups(parser):
        assert f"### {script}: {title}" in markdown


def test_the_generated_reference_covers_every_train_flag(hooks, train_parser):
    markdown = hooks.render_command(hooks.COMMANDS[0], train_parser)
    documented = {f for row in table_rows(markdown) for f in ticked(row[0])}
    options = {o for a in train_parser._actions for o in a.option_strings} - {"-h", "--help"}
    assert documented == options


def test_the_module_tables_list_every_module(hooks):
    markdown = page("architecture.md")
    assert "<!-- modules: quantens -->" in markdown and "<!-- modules: zoo -->" in markdown
    tables = hooks.module_tables("quantens") + hooks.module_tables("zoo")
    for path in [*(ROOT / "quantens").rglob("*.py"), *(ROOT / "zoo").glob("*.py")]:
        if path.name not in ("__main__.py", "__init__.py"):
            assert f"| `{path.name}` |" in tables, path


def test_the_supported_layer_table_is_the_registry(hooks):
    assert "<!-- layers -->" in section(page("converting.md"), "## Supported layers")
    from quantens import registry

    rows = table_rows(hooks.layer_table())
    assert [ticked(r[0])[0] for r in rows] == [
        e.float_class.__name__ for e in registry.registered_layers()]
    assert [ticked(r[1])[0] for r in rows] == [
        e.switchable_class.__name__ for e in registry.registered_layers()]


# ------------------------------------------------------------- the export package's layers

EXPORT_LIST_INTRO = "The modules, one idea each, each importing only those above it:"


def export_module_list() -> list[str]:
    """The modules that `quantens.export`'s docstring lists, in its order (read with `ast`)."""
    source = (ROOT / "quantens" / "export" / "__init__.py").read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(source))
    block = re.search(r"```\n(.*?)\n```", doc[doc.index(EXPORT_LIST_INTRO):], re.S).group(1)
    return [line.split()[0] for line in block.splitlines() if line and not line[0].isspace()]


def test_the_export_modules_import_only_those_listed_above_them():
    from test_imports import import_graph

    listed = export_module_list()
    graph = {name.rpartition(".")[2]: {m.rpartition(".")[2] for m in imported}
             for name, imported in import_graph().items() if name != "quantens.export"}
    graph.pop("__main__", None)  # the command line: it may import anything
    assert sorted(listed) == sorted(graph), "the docstring's list is not the package's modules"
    wrong = {module: sorted(graph[module] - set(listed[:i]))
             for i, module in enumerate(listed) if graph[module] - set(listed[:i])}
    assert not wrong, f"quantens.export's docstring: these import modules listed below them: {wrong}"
