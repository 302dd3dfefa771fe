"""The result directory: files written whole (temporary name, then rename).

```
config.json           every resolved flag
history.csv           one row per epoch, every metric
metrics.json          bit-widths, target bits, validation accuracy per member
ensemble.weights.h5   final shared weights;  best.weights.h5 by target bits
backup/               BackupAndRestore state (resume after a kill)
```

```python
import os, tempfile
from quantens.results import write_json, read_json

path = os.path.join(tempfile.mkdtemp(), "metrics.json")
write_json(path, {"bit_widths": [32, 1]})
assert read_json(path) == {"bit_widths": [32, 1]}
```
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Callable

import tensorflow as tf


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path beside `path`; renames it to `path` on success.

    On error the temporary file is removed and `path` is left as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    # keep the suffix: Keras picks the weights format from it
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{_suffix(base)}", dir=directory)
    os.close(fd)
    os.remove(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _suffix(name: str) -> str:
    for suffix in (".weights.h5", ".h5", ".json", ".csv", ".tflite"):
        if name.endswith(suffix):
            return suffix
    return ""


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_weights(model: tf.keras.Model, path: str) -> None:
    """`model.save_weights(path)`, written whole or not at all."""
    with atomic_path(path) as tmp:
        model.save_weights(tmp)


def _write_rows(path: str, rows: list[dict]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_history(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


class HistoryCSV(tf.keras.callbacks.Callback):
    """Writes `history.csv`, one row per epoch, rewritten whole every epoch.

    A resumed run (BackupAndRestore) starts at a later epoch: rows of the
    epochs it repeats are replaced, so each epoch appears once.
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.rows: list[dict] = []

    def on_train_begin(self, logs=None):
        self.rows = read_history(self.path)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch + 1] + [row]
        _write_rows(self.path, self.rows)


class BestCheckpoint(tf.keras.callbacks.Callback):
    """Saves weights whenever `monitor` improves (higher is better), atomically."""

    def __init__(self, path: str, monitor: str, save: Callable[[str], None] | None = None):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.best = -float("inf")
        self._save = save

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not value > self.best:
            return
        self.best = float(value)
        if self._save:
            self._save(self.path)
        else:
            save_weights(self.model, self.path)
