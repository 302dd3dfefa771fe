"""The exceptions quantens raises: one small hierarchy, each message one line that says how to fix it.

Library functions raise these (chained `from` their cause where there is one)
and never exit the process; the command-line entry points turn them into
`prog: error: <message>` and the exit code `error.exit_code`.

```python
from quantens import errors

try:
    raise errors.DataError("--dataset foo: unknown dataset") from KeyError("foo")
except errors.QuantensError as error:
    assert isinstance(error, ValueError) and error.exit_code == 2
    assert errors.one_line(error) == "--dataset foo: unknown dataset"
```

No TensorFlow import: the command line uses them before TensorFlow loads.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "DeviceError",
    "DivergedError",
    "DownloadError",
    "ExportError",
    "LockedError",
    "PretrainedError",
    "QuantensError",
    "ReportError",
    "ResultDirError",
    "SearchFailed",
    "TeacherError",
    "TuningError",
    "UsageError",
    "WeightsError",
    "one_line",
]


class QuantensError(Exception):
    """Base of every error quantens raises on purpose; `exit_code` is what a command exits with."""

    exit_code = 2


class UsageError(QuantensError, ValueError):
    """A flag or argument value that cannot work; the message names it."""


class ConfigError(UsageError):
    """A model or run configuration that cannot be built (bad architecture options)."""


class DataError(QuantensError, ValueError):
    """A dataset that cannot be found, prepared or read."""


class DeviceError(QuantensError, ValueError):
    """Devices or a distribution strategy that cannot be set up as asked."""


class LockedError(QuantensError, RuntimeError):
    """A result directory that another run (train, export, search) owns right now."""


class ResultDirError(QuantensError, FileNotFoundError):
    """A result directory (or a file in it) that is missing or unusable."""


class WeightsError(QuantensError, ValueError):
    """A weights file that cannot be read or does not fit the model."""


class ExportError(QuantensError, ValueError):
    """An ensemble or result directory that cannot be exported."""


class ReportError(QuantensError, ValueError):
    """A result directory whose files cannot make a report."""


class TeacherError(QuantensError, ValueError):
    """A teacher that cannot be built or loaded."""


class PretrainedError(QuantensError, ValueError):
    """An unknown pretrained tag, or pretrained weights that do not fit the model."""


class DownloadError(PretrainedError):
    """A weights file that could not be downloaded and verified; nothing was cached."""


class TuningError(QuantensError, ValueError):
    """A hyperparameter search that cannot start or resume as asked."""


class DivergedError(QuantensError, ArithmeticError):
    """Training whose loss became non-finite or exploded; nothing of the diverged epoch was saved.

    Exit code 3: the input was valid, the run diverged.
    """

    exit_code = 3


class SearchFailed(TuningError):
    """A search whose trials failed (exit code 1: the input was fine, the runs were not)."""

    exit_code = 1


def one_line(error: BaseException, limit: int = 300) -> str:
    """The first meaningful line of an error (TensorFlow puts it last after "in user code")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = lines[-1] if lines[0].startswith("in user code") else lines[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
