"""Every ```python block of README.md and docs/**/*.md runs (or says why it cannot).

One test per page: the page's blocks run in order in ONE namespace (a page's
later blocks build on its earlier ones: getting-started saves the ensemble
its first block trained), a fresh namespace per page, in a temporary working
directory, offline (a connection or name lookup other than this machine's is
refused), with the session's TFDS directory (digits prepared once) and the
pretrained-weights cache in the test's tmp_path. Each block is compiled with
the markdown file's name and line numbers, so a traceback points at the page.

A block that cannot run in the suite (a download, a GPU, minutes of training)
has, on the line right before its fence, `<!-- not run: REASON -->`; it is
still compiled (no syntax error), and the reason must say something (ten
characters or more). Fences
are ``` or ~~~, indented or not (blocks inside list items); a ```py,
```python3 or ```pycon fence is refused, so no Python hides from the suite.

A page whose first blocks are, character for character, the first blocks of
a page already run in this session starts from a (shallow) copy of the
namespace after them instead of running them again: README.md's "API in ten
lines" is docs/getting-started.md's first block and trains once (runtime
only: run either page alone and it runs all its blocks; files those blocks
wrote stay in the other page's working directory).

Pages whose blocks train or export (`SLOW_PAGES`, ~15 s for the 5-member
training of README.md / getting-started, ~10 s for converting.md's
convert-calibrate-fine-tune-export) are marked `slow`: `make test-fast` leaves
them out, `make test` runs them.
"""

from __future__ import annotations

import re
import socket
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.trains  # trains or traces whole models: not in `make test-fast`

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MIN_BLOCKS = 7

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")
PYTHON_LIKE = re.compile(r"^(py|pycon|python\d*|ipython\d*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    page: str        # path relative to the repository root
    line: int        # 1-based line of the first line of code (after the fence)
    source: str      # dedented
    not_run: str | None  # the marker's reason ("" for a marker without one); None: runs


def blocks_of(markdown: str, page: str = "<page>") -> list[Block]:
    """The ```python blocks of `markdown`, in order; raises ValueError on a malformed page."""
    lines = markdown.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            if NOT_RUN.match(lines[i]) and not (
                    i + 1 < len(lines) and (m := FENCE.match(lines[i + 1]))
                    and m["info"] == "python"):
                raise ValueError(f"{page}:{i + 1}: a `not run` marker not right before "
                                 f"a ```python fence")
            i += 1
            continue
        fence, info, indent = match["fence"], match["info"], match["indent"]
        if PYTHON_LIKE.match(info) and info != "python":
            raise ValueError(f"{page}:{i + 1}: fence ```{info}: write ```python (it runs) "
                             f"or ```text")
        end = next((j for j in range(i + 1, len(lines))
                    if lines[j].strip().startswith(fence[0] * len(fence))
                    and lines[j].strip().strip(fence[0]) == ""), None)
        if end is None:
            raise ValueError(f"{page}:{i + 1}: unclosed fence")
        if info == "python":
            code = [line[len(indent):] if line.startswith(indent) else line.lstrip()
                    for line in lines[i + 1:end]]
            marker = NOT_RUN.match(lines[i - 1]) if i else None
            blocks.append(Block(page, i + 2, textwrap.dedent("\n".join(code)) + "\n",
                                marker["reason"].strip() if marker else None))
        i = end + 1
    return blocks


def collect(pages=PAGES) -> dict[str, list[Block]]:
    """page (relative path) -> its python blocks, for every page that has one."""
    found = {}
    for path in pages:
        rel = path.relative_to(ROOT).as_posix()
        blocks = blocks_of(path.read_text(encoding="utf-8"), rel)
        if blocks:
            found[rel] = blocks
    return found


BLOCKS = collect()


def _code(block: Block):
    """The block compiled so that tracebacks show the page and its line numbers."""
    return compile("\n" * (block.line - 1) + block.source, str(ROOT / block.page), "exec")


# ----------------------------------------------------------------- the collector

def test_the_collector_finds_every_python_block():
    assert sum(len(b) for b in BLOCKS.values()) >= MIN_BLOCKS, BLOCKS
    assert "README.md" in BLOCKS and "docs/getting-started.md" in BLOCKS


def test_the_collector_reads_fences_markers_and_line_numbers():
    page = ("Intro.\n\n```python\nx = 1\n```\n\n```bash\npython train.py\n```\n\n"
            "<!-- not run: needs the ImageNet download -->\n```python\nimagenet()\n```\n\n"
            "1. a step:\n\n   ```python\n   if x:\n       y = 2\n   ```\n"
            "~~~python\n```\nz = 3\n~~~\n")
    blocks = blocks_of(page)
    assert [(b.line, b.source, b.not_run) for b in blocks] == [
        (4, "x = 1\n", None),
        (13, "imagenet()\n", "needs the ImageNet download"),
        (19, "if x:\n    y = 2\n", None),
        (23, "```\nz = 3\n", None),
    ]


@pytest.mark.parametrize("page,error", [
    ("<!-- not run: why -->\n\n```python\nx = 1\n```\n", "not right before"),
    ("<!-- not run: why -->\n```bash\nls\n```\n", "not right before"),
    ("```py\nx = 1\n```\n", "write ```python"),
    ("```pycon\n>>> x = 1\n```\n", "write ```python"),
    ("```python\nx = 1\n", "unclosed"),
])
def test_the_collector_refuses_what_would_hide_a_block(page, error):
    with pytest.raises(ValueError, match=error):
        blocks_of(page)


def test_every_not_run_block_says_why_and_compiles():
    skipped = [b for blocks in BLOCKS.values() for b in blocks if b.not_run is not None]
    for block in skipped:
        assert len(block.not_run) >= 10, (
            f"{block.page}:{block.line - 1}: `<!-- not run: REASON -->` needs a reason")
        _code(block)  # a SyntaxError names the page and line


# -------------------------------------------------------------------- the pages

@pytest.fixture
def offline(monkeypatch):
    """Connections and name lookups leave this machine only as errors."""
    local = ("127.0.0.1", "::1", "localhost", "0.0.0.0", "")
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def checked_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in local:
            raise OSError(f"test_doc_examples runs offline: no connection to {address}")
        return connect(sock, address)

    def checked_getaddrinfo(host, *args, **kwargs):
        if host not in local and host is not None:
            raise socket.gaierror(f"test_doc_examples runs offline: no lookup of {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", checked_connect)
    monkeypatch.setattr(socket, "getaddrinfo", checked_getaddrinfo)


def test_the_examples_run_offline(offline):
    import urllib.request

    with pytest.raises(OSError, match="offline"):
        urllib.request.urlopen("https://example.com", timeout=5)


_NAMESPACES: dict[tuple[str, ...], dict] = {}  # leading block sources -> namespace after them


def _start(sources: list[str]) -> tuple[int, dict]:
    """(how many leading blocks are already run, a copy of the namespace after them)."""
    for n in range(len(sources), 0, -1):
        if tuple(sources[:n]) in _NAMESPACES:
            return n, dict(_NAMESPACES[tuple(sources[:n])])
    return 0, {"__name__": "__doc_example__"}


# pages whose blocks train or export: the full suite runs them, `make test-fast` not
SLOW_PAGES = ("README.md", "docs/getting-started.md", "docs/converting.md",
              "docs/choosing-a-member.md")


@pytest.mark.parametrize("page", [
    pytest.param(page, marks=[pytest.mark.slow] if page in SLOW_PAGES else [])
    for page in BLOCKS
])
def test_the_python_blocks_of_the_page_run(page, offline, monkeypatch, tmp_path, tfds_dir):
    from tensorflow_datasets.core import constants

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("QUANTENS_HOME", str(tmp_path / "quantens_home"))
    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
    monkeypatch.setattr(constants, "DATA_DIR", tfds_dir)  # read once, at import

    runnable = [b for b in BLOCKS[page] if b.not_run is None]
    sources = [b.source for b in runnable]
    done, namespace = _start(sources)
    for n, block in enumerate(runnable[done:], start=done + 1):
        exec(_code(block), namespace)
        _NAMESPACES[tuple(sources[:n])] = dict(namespace)
