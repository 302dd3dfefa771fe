"""Entry-point plumbing of every command: its name, one-line errors, exit codes.

`program_name` names the running command (`quantens-train` as a console
script, `train.py` from a checkout); `run_main` turns a `QuantensError`
into one line `prog: error: ...` and its exit code; `fail` prints such a
line and exits. `Parser` is the one-line-error argparse parser every
command builds.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable

from quantens.argparsing import OneLineParser
from quantens.errors import QuantensError, one_line

__all__ = ["CONSOLE_SCRIPTS", "Parser", "fail", "program_name", "run_main"]

Parser = OneLineParser
"""argparse with one-line errors and exit code 2 (`quantens.argparsing.OneLineParser`)."""

CONSOLE_SCRIPTS = ("quantens-train", "quantens-export", "quantens-report", "quantens-evaluate")
"""The commands `pip install` puts on PATH (setup.py's console_scripts)."""


def program_name(script: str, default: str, argv0: str | None = None) -> str:
    """The name of the running command in usage lines and `prog: error: ...` lines.

    `script` (e.g. `quantens-export`) when the process was started as that
    console script, i.e. `sys.argv[0]`'s basename is `script` (`.exe` and
    `-script.py` of Windows launchers dropped); otherwise `default`, the
    name of the `python ...` form (`train.py`, `quantens.export`).

    ```python
    from quantens.cli import program_name

    assert program_name("quantens-train", "train.py", "/venv/bin/quantens-train") == "quantens-train"
    assert program_name("quantens-train", "train.py", "train.py") == "train.py"
    assert program_name("quantens-export", "quantens.export", "/x/quantens/export/__main__.py") == (
        "quantens.export")
    ```
    """
    name = os.path.basename(sys.argv[0] if argv0 is None else argv0 or "")
    name = re.sub(r"(-script\.pyw?|\.exe)$", "", name, flags=re.IGNORECASE)
    return script if name == script else default


def fail(message: str, code: int = 2, prog: str | None = None) -> None:
    """Prints `prog: error: <message>` and exits (no traceback)."""
    prog = prog or os.path.basename(sys.argv[0]) or "train.py"
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_main(main: Callable[[], int], prog: str) -> int:
    """Runs an entry point; errors become one line `prog: error: ...` and an exit code.

    A `QuantensError` exits with its `exit_code`; a full disk with 1 and
    Ctrl-C with 130, each with what to do next (results are written whole,
    so re-running the same command resumes).
    """
    try:
        return main()
    except QuantensError as error:
        print(f"{prog}: error: {one_line(error, limit=1000)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as error:
        full = _disk_full(error)
        if full is None:
            raise
        where = f" while writing {full}" if full else ""
        print(f"{prog}: error: no space left on device{where}; free space and re-run the "
              "same command to resume", file=sys.stderr)
        return 1


def _disk_full(error: BaseException) -> str | None:
    """The file being written when `error` (or its cause) says the disk is full ("" if unknown).

    None when it is another error. Python raises OSError(ENOSPC / EDQUOT);
    TensorFlow's writers an `OpError` whose message ends "No space left on device"
    (or "Disk quota exceeded") after the file name.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error.filename or ""
        text = str(getattr(error, "message", "") or error)
        for phrase in (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT)):
            if phrase in text:
                where = text[:text.index(phrase)].strip().rstrip(";:,").strip()
                return where if where.startswith(os.sep) and "\n" not in where else ""
        error = error.__cause__ or error.__context__
    return None
