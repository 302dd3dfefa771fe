"""The result directory of a run: every file name in one object.

```
config.json           every resolved flag
model.json            the Keras model config: the model is rebuilt from it, no flags needed
history.csv           one row per epoch, every metric
metrics.json          bit-widths, target bits, accuracy per member
ensemble.weights.h5   final shared weights;  best.weights.h5 by target bits
train.log             the log file (unless --log says otherwise)
backup/               BackupAndRestore state (resume after a kill)
tensorboard/          TensorBoard logs: per-member metrics, learning rate (train/, validation/)
report.md, *.png      the report
export/               member_<b>.tflite, saved_model/, export.json
tuning/               a hyperparameter search: trials, search.json, best.json
.lock                 the lock of the run that owns the directory (quantens.locking)
```

```python
from quantens.layout import ResultDir

run = ResultDir("results/digits_resnet_e_digits")
assert run.weights == "results/digits_resnet_e_digits/ensemble.weights.h5"
assert run.path(ResultDir.EXPORT_REPORT) == "results/digits_resnet_e_digits/export/export.json"
```

No TensorFlow import: the command line checks paths before TensorFlow loads.
"""

from __future__ import annotations

import dataclasses
import os

__all__ = [
    "ResultDir",
]


@dataclasses.dataclass(frozen=True)
class ResultDir:
    """A result directory (`root`) and the paths of its files."""

    root: str

    CONFIG = "config.json"
    MODEL = "model.json"
    HISTORY = "history.csv"
    METRICS = "metrics.json"
    WEIGHTS = "ensemble.weights.h5"
    BEST_WEIGHTS = "best.weights.h5"
    LOG = "train.log"
    BACKUP = "backup"
    REPORT = "report.md"
    PLOTS = {
        "accuracy": "accuracy_per_bits.png",
        "size": "accuracy_vs_size.png",
        "curves": "training_curves.png",
        "frontier": "accuracy_vs_bytes.png",
    }
    EXPORT = "export"
    EXPORT_REPORT = os.path.join("export", "export.json")
    TUNING = "tuning"
    WORKERS = ".workers"
    LOCK = ".lock"
    TENSORBOARD = "tensorboard"

    def path(self, name: str) -> str:
        """The path of `name` (a file name of this class, or any relative path) in the directory."""
        return os.path.join(self.root, name)

    @property
    def config(self) -> str:
        return self.path(self.CONFIG)

    @property
    def model(self) -> str:
        return self.path(self.MODEL)

    @property
    def history(self) -> str:
        return self.path(self.HISTORY)

    @property
    def metrics(self) -> str:
        return self.path(self.METRICS)

    @property
    def weights(self) -> str:
        return self.path(self.WEIGHTS)

    @property
    def best_weights(self) -> str:
        return self.path(self.BEST_WEIGHTS)

    @property
    def log(self) -> str:
        return self.path(self.LOG)

    @property
    def backup(self) -> str:
        return self.path(self.BACKUP)

    @property
    def report(self) -> str:
        return self.path(self.REPORT)

    @property
    def export(self) -> str:
        return self.path(self.EXPORT)

    @property
    def export_report(self) -> str:
        return self.path(self.EXPORT_REPORT)

    @property
    def tuning(self) -> str:
        return self.path(self.TUNING)

    def worker(self, index: int) -> ResultDir:
        """The private directory of a non-chief worker (multi-worker training)."""
        return ResultDir(self.path(os.path.join(self.WORKERS, str(index))))
