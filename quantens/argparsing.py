"""`OneLineParser`: argparse whose errors are one line `prog: error: ...` and exit code 2.

The one definition that the command line (`quantens.cli`) and the zoo's
`python -m zoo.evaluate` both use: the zoo may not import the command line,
so it lives in the library. No TensorFlow import.

```python
from quantens.argparsing import OneLineParser

parser = OneLineParser(prog="python -m demo", error_prog="demo")
parser.add_argument("--n", type=int, default=1)
assert parser.parse_args(["--n", "3"]).n == 3 and parser.error_prog == "demo"
```
"""

from __future__ import annotations

import argparse

__all__ = ["OneLineParser"]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage wall) and exit code 2.

    `error_prog` names the program in error lines (default: `prog`).
    `error(message)` prints `<error_prog>: error: <message> (see --help)`;
    `fail(message)` the same line without the pointer to `--help`.
    """

    def __init__(self, *args, error_prog: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.error_prog = error_prog or self.prog

    def error(self, message):
        """A usage error: one line naming `--help`, exit code 2."""
        self.fail(f"{message} (see --help)")

    def fail(self, message: str):
        """Prints `<error_prog>: error: <message>` and exits with 2."""
        self.exit(2, f"{self.error_prog}: error: {message}\n")
