"""Every ```python block in the docstrings of `quantens` and `zoo` runs.

The examples are found with `ast` (no import needed to find them): the module,
class and function/method docstrings of every .py file under `quantens/` and
`zoo/`. Each fenced block that opens with ```python and closes with ``` is one
test, with an id like `quantens/bits.py::bits[0]` (the first block of the
function `bits`), `quantens/bits.py::validate_bit_widths[0]` or
`quantens/bits.py::<module>[0]` (the module docstring). Blocks fenced as ```
or ```bash are text, not collected.

Each block runs in a fresh namespace with the repository root as working
directory; an example that writes files makes its own `tempfile.mkdtemp()`.
`conftest.py` prints how many examples were collected and how many passed.
"""

import ast
import os
import tempfile
import textwrap

import pytest

pytestmark = pytest.mark.trains  # every example of the library: not in `make test-fast`

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("quantens", "zoo")
MIN_EXAMPLES = 40


def _blocks(docstring):
    """The ```python blocks of a docstring, dedented, in order."""
    blocks, current = [], None
    for line in docstring.splitlines():
        fence = line.strip()
        if current is None:
            if fence == "```python":
                current = []
        elif fence == "```":
            blocks.append(textwrap.dedent("\n".join(current)).strip("\n") + "\n")
            current = None
        else:
            current.append(line)
    if current is not None:
        raise ValueError(f"unclosed ```python block in docstring:\n{docstring}")
    return blocks


def _docstrings(tree):
    """(qualname, docstring) of a module (`<module>`), its classes and functions/methods."""
    found = []
    doc = ast.get_docstring(tree)
    if doc:
        found.append(("<module>", doc))

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                qualname = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    found.append((qualname, doc))
                visit(child, qualname + ".")

    visit(tree, "")
    return found


def collect_examples(root=ROOT):
    """[(id, source)] of every docstring example under `PACKAGES`, sorted by file."""
    examples = []
    for package in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, package)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
            for filename in sorted(f for f in filenames if f.endswith(".py")):
                path = os.path.join(dirpath, filename)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), filename=rel)
                for qualname, doc in _docstrings(tree):
                    for i, source in enumerate(_blocks(doc)):
                        examples.append((f"{rel}::{qualname}[{i}]", source))
    return examples


EXAMPLES = collect_examples()


def test_collector_finds_examples():
    assert len(EXAMPLES) >= MIN_EXAMPLES, [example_id for example_id, _ in EXAMPLES]
    ids = [example_id for example_id, _ in EXAMPLES]
    assert len(ids) == len(set(ids)), "example ids are not unique"


def test_collector_skips_text_blocks():
    doc = (
        "Intro.\n\n```\nnot python\n```\n\n```bash\npython train.py\n```\n\n"
        "    ```python\n    x = 1\n    ```\n"
    )
    assert _blocks(doc) == ["x = 1\n"]


# examples that train or convert to TFLite: the full suite runs them, `make test-fast` not
SLOW_EXAMPLES = ("quantens/cli/tune.py::tune[", "quantens/export/__init__.py::")


@pytest.mark.parametrize("example_id,source", [
    pytest.param(example_id, source, id=example_id,
                 marks=[pytest.mark.slow] if example_id.startswith(SLOW_EXAMPLES) else [])
    for example_id, source in EXAMPLES
])
def test_docstring_example(example_id, source, monkeypatch, tmp_path, tfds_dir):
    from tensorflow_datasets.core import constants

    monkeypatch.chdir(ROOT)
    # What an example writes stays in temporary folders, as on a fresh clone:
    # its tempfile.mkdtemp() folders and the pretrained-weights cache in this
    # test's tmp_path, datasets it prepares in the session's TFDS directory.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("QUANTENS_HOME", str(tmp_path / "quantens_home"))
    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
    monkeypatch.setattr(constants, "DATA_DIR", tfds_dir)  # read once, at import
    namespace = {"__name__": "__docstring_example__"}
    exec(compile(source, f"<{example_id}>", "exec"), namespace)
