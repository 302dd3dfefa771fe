"""Writing and reading a run's files whole (temporary name, then rename).

The file names are `quantens.layout.ResultDir`'s. The model is recorded as
its Keras config (`write_model`, model.json), so a finished run is rebuilt by
`read_model` without the zoo or the flag parser.

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
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable

import h5py
import numpy as np
import tensorflow as tf

from quantens.errors import one_line

__all__ = [
    "BackupLast",
    "BestCheckpoint",
    "DivergenceGuard",
    "HistoryCSV",
    "LogFile",
    "atomic_path",
    "check_backup",
    "file_logger",
    "load_weights",
    "read_history",
    "read_json",
    "read_model",
    "remove_stale_temporaries",
    "save_run",
    "save_weights",
    "weights_mismatch",
    "write_json",
    "write_model",
    "write_text",
]


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


def write_model(model: tf.keras.Model, path: str) -> None:
    """Records `model`'s architecture as its Keras config (`model.to_json()`), atomically.

    ```python
    import os, tempfile
    import quantens
    from quantens.results import read_model, write_model
    from zoo import create_model

    path = os.path.join(tempfile.mkdtemp(), "model.json")
    write_model(create_model("digits_resnet_e", width=8, bit_widths=(32, 1)), path)
    assert read_model(path).count_params() > 0
    ```
    """
    write_text(path, model.to_json(indent=1) + "\n")


def save_run(result_dir: str, model: tf.keras.Model, config: dict) -> None:
    """Writes what a finished run leaves for the commands: config.json, model.json, weights.

    For a model trained in Python, so that `python -m quantens.export` and
    `python -m quantens.report` work on it. `config` needs at least `model`
    (a name), `bit_widths`, `input_shape`, `num_classes` and `dataset`.

    ```python
    import tempfile
    import quantens
    from quantens.results import read_model, save_run
    from zoo import create_model

    run = tempfile.mkdtemp()
    save_run(run, create_model("digits_resnet_e", width=8, bit_widths=(32, 1)),
             {"model": "digits_resnet_e", "bit_widths": [32, 1], "input_shape": [8, 8, 1],
              "num_classes": 10, "dataset": "digits"})
    assert read_model(run + "/model.json").count_params() > 0
    ```
    """
    from quantens.layout import ResultDir

    run = ResultDir(result_dir)
    write_json(run.config, config)
    write_model(model, run.model)
    save_weights(model, run.weights)


def read_model(path: str) -> tf.keras.Model:
    """The (untrained) model that `write_model` recorded in `path`.

    Raises:
        ResultDirError: there is no such file.
        WeightsError: the file is not a Keras model config quantens can build.
    """
    from quantens import layers  # noqa: F401  (registers quantens' layers with Keras)
    from quantens.errors import ResultDirError, WeightsError, one_line

    if not os.path.isfile(path):
        raise ResultDirError(
            f"{path} does not exist: train.py writes it at the start of a run; re-run "
            "train.py with this --result-path to record the model"
        )
    try:
        with open(path, encoding="utf-8") as f:
            model = tf.keras.models.model_from_json(f.read())
    except Exception as error:  # JSON, Keras and larq raise many kinds
        raise WeightsError(
            f"{path} is not a Keras model config quantens can build ({one_line(error)})"
        ) from error
    if not isinstance(model, tf.keras.Model):  # e.g. an unknown class_name
        raise WeightsError(
            f"{path} is not a Keras model config quantens can build (it makes a "
            f"{type(model).__name__}, not a model): re-run train.py with this --result-path "
            "to record the model again"
        )
    return model


def save_weights(model: tf.keras.Model, path: str) -> None:
    """`model.save_weights(path)`, written whole or not at all."""
    with atomic_path(path) as tmp:
        model.save_weights(tmp)


def _h5_shapes(path: str) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: shapes.__setitem__(name, tuple(obj.shape))
            if isinstance(obj, h5py.Dataset) else None
        )
    return shapes


def weights_mismatch(model: tf.keras.Model, path: str) -> str | None:
    """Why a quantens weights file does not fit `model` exactly, or None if it does.

    Keras loads a `.weights.h5` file of another ensemble silently when the
    layers line up but some weights are missing (e.g. fewer bit-widths);
    comparing with a file the model itself writes catches every difference.
    """
    found = _h5_shapes(path)
    with tempfile.TemporaryDirectory() as tmp:
        reference = os.path.join(tmp, "expected.weights.h5")
        model.save_weights(reference)
        expected = _h5_shapes(reference)
    if found == expected:
        return None
    mismatched = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if mismatched:
        k = mismatched[0]
        return f"{k} has shape {found[k]} in the file but {expected[k]} in the model"
    if missing:
        return f"{len(missing)} weights of the model are missing (e.g. {missing[0]})"
    return f"{len(unexpected)} weights are not in the model (e.g. {unexpected[0]})"


def load_weights(model: tf.keras.Model, path: str) -> None:
    """`model.load_weights(path)` for weights saved by quantens under any file name.

    Keras picks the format of `.weights.h5` files from the name; the same file
    renamed (the seed's `first_stage.params`) is read in that format too, and
    it must hold exactly the model's weights (`WeightsError`, a ValueError,
    otherwise).

    Raises:
        WeightsError: (one line naming the file) weights of another
            architecture, or a file that h5py cannot read: damaged (a
            truncated, half-copied file: use another copy).
    """
    from quantens.errors import WeightsError, one_line

    path = os.fspath(path)
    try:
        _load_weights(model, path)
    except OSError as error:  # h5py's, for a file it cannot read
        if isinstance(error, FileNotFoundError) or not os.path.exists(path):
            raise WeightsError(f"{path} does not exist: check the weights file's path") from error
        raise WeightsError(
            f"{path} is damaged (truncated? a half-copied file: {one_line(error, 160)}): use "
            "another copy of the file"
        ) from error


def _load_weights(model: tf.keras.Model, path: str) -> None:
    from quantens.errors import WeightsError

    legacy = True
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:  # a whole model's .h5 keeps them in model_weights
            legacy = "layer_names" in f.attrs or "model_weights" in f
    if legacy:
        model.load_weights(path)
        return
    mismatch = weights_mismatch(model, path)
    if mismatch:
        raise WeightsError(f"the file holds weights of another architecture: {mismatch}")
    if path.endswith(".weights.h5"):
        model.load_weights(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        link = os.path.join(tmp, "weights.weights.h5")
        os.symlink(os.path.abspath(path), link)
        model.load_weights(link)


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
    """The rows of a `history.csv` ([] when there is none).

    Raises:
        ResultDirError: a file whose rows have no whole epoch number (damaged:
            the message says to remove or restore it).
    """
    from quantens.errors import ResultDirError

    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            if int(row["epoch"]) < 1:
                raise ValueError(f"epoch {row['epoch']}")
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, csv.Error) as error:
        raise ResultDirError(
            f"{path} is damaged ({type(error).__name__}: {one_line(error, 80)}): restore it "
            "from a copy, or remove it to start the run's history afresh (weights and "
            "backup are kept)"
        ) from None
    return rows


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
    """Saves weights whenever `monitor` improves (higher is better), atomically.

    Only a finite score of finite weights counts. With `history_path`, a
    resumed run starts from the best value of the epochs it does not repeat
    (and keeps the existing `best.weights.h5` unless it is beaten).
    """

    def __init__(
        self,
        path: str,
        monitor: str,
        save: Callable[[str], None] | None = None,
        history_path: str | None = None,
    ):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.best = -float("inf")
        self.best_epoch: int | None = None  # 1-based, once known
        self.best_weights: list | None = None  # in memory when saved by this process
        self._save = save
        self.history_path = history_path
        self._resumed_from = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._resumed_from is not None:
            return
        self._resumed_from = epoch  # the first epoch of this run (0-based)
        if self.history_path and os.path.exists(self.path):
            # rows of epochs this run repeats (written before a kill) do not count
            rows = [
                (float(row[self.monitor]), int(row["epoch"]))
                for row in read_history(self.history_path)
                if row.get(self.monitor) not in (None, "") and int(row["epoch"]) <= epoch
            ]
            finite = [r for r in rows if math.isfinite(r[0])]
            if finite:
                self.best, self.best_epoch = max(finite, key=lambda r: (r[0], -r[1]))

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value) or not value > self.best:
            return
        weights = self.model.get_weights()
        if not all(np.all(np.isfinite(w)) for w in weights):
            return  # never a non-finite model as the best one
        self.best, self.best_epoch, self.best_weights = float(value), epoch + 1, weights
        if self._save:
            self._save(self.path)
        else:
            save_weights(self.model, self.path)


class DivergenceGuard(tf.keras.callbacks.Callback):
    """Stops training at the first non-finite or exploded loss with a `DivergedError`.

    Checks the running losses after every batch and the validation losses at
    the end of every epoch: a member's cross-entropy above `bound` (default
    `LOSS_BOUND`, 1,000 nats: a uniform guess over C classes costs ln C, so
    this is far past any learning model) or a non-finite one stops the run.
    Raised before the epoch ends, so nothing of it is saved; the callbacks
    that save (best checkpoint, backup) only ever see finite epochs.

    ```python
    import numpy as np
    import tensorflow as tf
    from quantens.errors import DivergedError
    from quantens.results import DivergenceGuard

    guard = DivergenceGuard()
    guard.set_model(tf.keras.Sequential([tf.keras.layers.Dense(1)]))
    try:
        guard.on_train_batch_end(3, {"loss": np.nan, "loss_32": 0.5, "loss_1": np.nan})
    except DivergedError as error:
        assert "1 bit" in str(error) and error.exit_code == 3
    ```
    """

    LOSS_BOUND = 1000.0

    def __init__(self, bound: float = LOSS_BOUND):
        super().__init__()
        self.bound = float(bound)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _check(self, logs, where: str, prefix: str = "") -> None:
        bad = {}
        for key, value in (logs or {}).items():
            if not key.startswith(f"{prefix}loss"):
                continue
            value = float(value)
            if not math.isfinite(value) or abs(value) > self.bound:
                bad[key] = value
        if not bad:
            return
        from quantens.errors import DivergedError

        members = sorted(
            {k[len(prefix) + 5:] for k in bad if k[len(prefix) + 5:].isdigit()}, key=int,
            reverse=True,
        )
        who = f"members {', '.join(f'{b} bit' for b in members)}" if members else "the ensemble"
        kind = "non-finite" if any(not math.isfinite(v) for v in bad.values()) else (
            f"above {self.bound:g}")
        raise DivergedError(
            f"training diverged at {where}: the {'validation ' if prefix else ''}loss of {who} "
            f"is {kind} ({', '.join(f'{k}={v:.4g}' for k, v in sorted(bad.items()))}); nothing "
            "of this epoch was saved; lower --lr (or raise --warmup-epochs), check "
            "--kd-temperature and --kd-weight"
        )

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"epoch {self.epoch + 1}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"epoch {epoch + 1} (validation)", prefix="val_")


class BackupLast(tf.keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that restores first but backs up only when `backup_now` says.

    Listed first (it restores the training state before the other callbacks
    start), its end-of-epoch backup is made by `after_epoch()`, a callback
    listed last: the history row, the log line and the best checkpoint of an
    epoch are written before the backup records the epoch as done, so a kill
    at any instant repeats at most that epoch, and its row once.
    """

    def on_train_begin(self, logs=None):
        check_backup(self.backup_dir)
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        pass  # see after_epoch

    def after_epoch(self) -> tf.keras.callbacks.Callback:
        backup = super()

        class _Backup(tf.keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                backup.on_epoch_end(epoch, logs)

        return _Backup()


def check_backup(backup_dir: str) -> None:
    """Raises ResultDirError when the backup a resumed run would start from cannot be read.

    Keras would log a warning and train from epoch 1, overwriting the run's
    progress; a damaged backup is one line saying what to do instead.
    """
    from quantens.errors import ResultDirError

    for folder, _, names in os.walk(backup_dir):
        if "checkpoint" not in names:
            continue
        try:
            latest = tf.train.latest_checkpoint(folder)
            if latest is None:
                raise ValueError("its checkpoint file names no readable checkpoint")
            tf.train.load_checkpoint(latest).get_variable_to_shape_map()
        except (ValueError, tf.errors.OpError) as error:
            raise ResultDirError(
                f"{backup_dir} is damaged ({one_line(error, 120)}): the run cannot resume "
                "from it; restore it from a copy, or remove that folder to train again "
                "from epoch 1"
            ) from None


def remove_stale_temporaries(directory: str) -> list[str]:
    """Removes the temporary files `atomic_path` left in `directory` when a run was killed.

    Only its own naming pattern (`.<name>.<random>.tmp<suffix>`); returns the
    names removed.
    """
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.startswith(".") and ".tmp" in name and os.path.isfile(path):
            os.remove(path)
            removed.append(name)
    return sorted(removed)


def file_logger(path: str) -> logging.Logger:
    """A logger that appends to `path` (the `--log` file), one line per record."""
    logger = logging.getLogger(f"quantens.run.{os.path.abspath(path)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger


def _format_logs(logs: dict) -> str:
    return " ".join(f"{k}={float(v):.4f}" for k, v in (logs or {}).items())


class LogFile(tf.keras.callbacks.Callback):
    """Writes progress to the `--log` file: every `interval` batches and each epoch.

    Lines look like the seed's: `Epoch[3] Batch[100] speed=812.3 samples/s loss=...`.
    """

    def __init__(self, logger: logging.Logger, interval: int = 50, batch_size: int = 1):
        super().__init__()
        self.logger = logger
        self.interval = interval
        self.batch_size = batch_size

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.started = self.tick = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.interval:
            return
        now = time.time()
        speed = self.interval * self.batch_size / max(now - self.tick, 1e-9)
        self.tick = now
        self.logger.info(
            "Epoch[%d] Batch[%d] speed=%.1f samples/s %s",
            self.epoch + 1, batch + 1, speed, _format_logs(logs),
        )

    def on_epoch_end(self, epoch, logs=None):
        self.logger.info(
            "Epoch[%d] time=%.1fs %s", epoch + 1, time.time() - self.started, _format_logs(logs)
        )
