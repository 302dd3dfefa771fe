"""The layers of the code base: command line -> zoo -> quantens, and nothing pointing up.

The import graph is read with `ast` (no module is imported), so these tests
are fast and see imports inside functions too.
"""

import ast
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLI = ("quantens.cli", "train")  # the command-line layer (quantens/cli/, train.py)


def _is_cli_file(path: pathlib.Path, root: pathlib.Path = ROOT) -> bool:
    """Files of the command-line layer: quantens/cli/ and `python -m` shims (__main__.py)."""
    relative = path.relative_to(root).as_posix()
    return relative.startswith("quantens/cli/") or path.name == "__main__.py"


def import_statements(source: str) -> list[list[str]]:
    """Per absolute import statement, the modules it may load (`from a import b`: a, a.b)."""
    statements = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            statements += [[alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            statements.append([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
    return statements


def _names(module: str, banned: tuple[str, ...]) -> bool:
    return any(module == b or module.startswith(b + ".") for b in banned)


def upward_imports(root: pathlib.Path = ROOT) -> list[str]:
    """`file imports module` for each import from the library into the zoo or the CLI,
    and from the zoo into the CLI."""
    rules = (("quantens", ("zoo", *CLI)), ("zoo", CLI))
    found = []
    for package, banned in rules:
        for path in sorted((root / package).rglob("*.py")):
            if _is_cli_file(path, root):
                continue
            for statement in import_statements(path.read_text(encoding="utf-8")):
                upward = [m for m in statement if _names(m, banned)]
                if upward:
                    found.append(f"{path.relative_to(root).as_posix()} imports {upward[0]}")
    return found


def test_no_library_or_zoo_module_imports_upward():
    assert upward_imports() == []


@pytest.mark.parametrize("package, source, banned", [
    ("quantens", "from zoo import create_model\n", "zoo"),
    ("quantens", "def f():\n    import zoo.pretrained\n", "zoo.pretrained"),
    ("quantens", "from quantens.cli import fail\n", "quantens.cli"),
    ("quantens", "from quantens import cli\n", "quantens.cli"),
    ("zoo", "from quantens.cli import build_parser\n", "quantens.cli"),
    ("zoo", "import train\n", "train"),
])
def test_the_dependency_check_catches_an_upward_import(tmp_path, package, source, banned):
    """The check above fails for each kind of upward import (a planted module)."""
    for name in ("quantens", "zoo"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / package / "planted.py").write_text(source)
    found = upward_imports(tmp_path)
    assert len(found) == 1 and found[0].startswith(f"{package}/planted.py imports {banned}")


def test_the_cli_layer_may_import_everything(tmp_path):
    for name in ("quantens", "zoo"):
        (tmp_path / name).mkdir()
    (tmp_path / "quantens" / "cli").mkdir()
    (tmp_path / "quantens" / "cli" / "export.py").write_text("import zoo\n")
    (tmp_path / "quantens" / "__main__.py").write_text("from quantens.cli import export\n")
    assert upward_imports(tmp_path) == []


def test_only_command_line_entry_points_exit_the_process():
    """`sys.exit` / `SystemExit` appear only in the CLI layer and `if __name__ == "__main__"`."""
    offenders = []
    pattern = re.compile(r"sys\.exit|SystemExit")
    for package in ("quantens", "zoo"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if _is_cli_file(path):
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            for number, line in enumerate(lines, 1):
                if pattern.search(line) and not _in_main_guard(lines, number):
                    offenders.append(f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()}")
    assert offenders == []


def _in_main_guard(lines: list[str], number: int) -> bool:
    """Whether line `number` lies in a module-level `if __name__ == "__main__":` block."""
    for line in reversed(lines[: number - 1]):
        if line and not line[0].isspace():
            return line.startswith("if __name__ == ")
    return False


def test_defaults_errors_layout_and_the_parser_load_without_tensorflow():
    """The command line answers --help and bad flags before TensorFlow loads."""
    code = (
        "import sys, quantens.defaults, quantens.errors, quantens.layout, quantens.cli\n"
        "import quantens.export, quantens.cli.export  # export reads a result dir first\n"
        "quantens.cli.build_parser().parse_args([])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'larq')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
