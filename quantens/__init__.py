"""quantens: ensembles of quantized neural networks with shared weights.

One set of latent weights is quantized on the fly to several bit-widths (for
example 32, 8, 4, 2 and 1 bits); all members are trained together in one
`train_step`, optionally with knowledge distillation.

```python
import numpy as np
import quantens
from zoo import create_model

bits = (32, 8, 4, 2, 1)
model = create_model("digits_resnet_e", width=8, bit_widths=bits)
ensemble = quantens.QuantEnsemble(model, bit_widths=bits, target_bits=1)
ensemble.compile(optimizer="adam")
x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
with quantens.bits(1):
    logits_1 = model(x)  # the 1-bit member: the same weights, binarized
assert logits_1.shape == (4, 10)
```

Importing this package selects the Keras 2 API (`tf-keras`) that larq is built
on, by setting `TF_USE_LEGACY_KERAS=1` before TensorFlow is imported.
"""

import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"


def _check_keras_version() -> None:
    """Fail clearly when TensorFlow was already imported with Keras 3."""
    if "tensorflow" not in sys.modules:
        return
    import tensorflow as tf

    version = str(getattr(tf.keras, "__version__", ""))
    if version.startswith("3"):
        raise ImportError(
            "quantens needs the Keras 2 API (tf-keras), but TensorFlow was already "
            f"imported with Keras {version}. Import quantens before tensorflow, or "
            "set TF_USE_LEGACY_KERAS=1 in the environment before starting Python."
        )


_check_keras_version()

# bits.py is plain Python; the rest loads TensorFlow, so it is imported on first
# use: `python train.py --help` and flag errors answer without loading TensorFlow.
from quantens.bits import active_bits, bits, validate_bit_widths  # noqa: E402,F401 (_EAGER)

_EAGER = ("active_bits", "bits", "validate_bit_widths")
"""Public names of the top level defined before TensorFlow loads."""

_FORWARDED = "quantens.layers"
"""Every name of this module's `__all__` is a top-level name, imported on first use: the
switchable layers, the layer kinds among them (each `SwitchableKernelLayer` it defines),
so a new kind needs no line here."""

_LAZY = {
    # the ensemble and its training
    "QuantEnsemble": "quantens.ensemble",
    "load_ensemble": "quantens.ensemble",
    "Distillation": "quantens.distillation",
    # the table of supported layer kinds (the switchable layers: `_FORWARDED`)
    "register_layer": "quantens.registry",
    "unregister_layer": "quantens.registry",
    "LayerEntry": "quantens.registry",
    "LayerBuild": "quantens.registry",
    "ExportHook": "quantens.registry",
    # quantizers
    "ActivationQuantizer": "quantens.quantizers",
    "WeightQuantizer": "quantens.quantizers",
    "SwitchableQuantizer": "quantens.quantizers",
    "PACTActivation": "quantens.quantizers",
    "ClipActivation": "quantens.quantizers",
    "NarrowRangeWeights": "quantens.quantizers",
    "RoundActivation": "quantens.quantizers",
    "SymmetricRoundActivation": "quantens.quantizers",
    "FullPrecisionActivation": "quantens.quantizers",
    "RangeRoundActivation": "quantens.quantizers",
    # converting float models
    "calibrate": "quantens.calibration",
    "quantize_model": "quantens.convert",
    "logits_model": "quantens.convert",
    "SoftmaxRemovedWarning": "quantens.convert",
    # data
    "DatasetSpec": "quantens.data",
    "Digits": "quantens.data",
    "EpochCounter": "quantens.data",
    "FolderInfo": "quantens.data",
    "PreprocessingCheck": "quantens.data",
    "Split": "quantens.data",
    "SplitPlan": "quantens.data",
    # training runs: optimizers, callbacks, result directories, reports
    "RAdam": "quantens.optimizers",
    "MXNetSchedule": "quantens.optimizers",
    "BackupLast": "quantens.results",
    "BestCheckpoint": "quantens.results",
    "DivergenceGuard": "quantens.results",
    "HistoryCSV": "quantens.results",
    "LogFile": "quantens.results",
    "ResultDir": "quantens.layout",
    "ResultDirLock": "quantens.locking",
    "ResultData": "quantens.report",
    "ClusterConfig": "quantens.cluster",
    # a run as typed settings, what it builds (quantens.run), members chosen by budget
    "DataSettings": "quantens.run",
    "Datasets": "quantens.run",
    "DistillationSettings": "quantens.run",
    "EnsembleSettings": "quantens.run",
    "ScheduleSettings": "quantens.run",
    "PolicySearchResult": "quantens.budget",
    "search_policy": "quantens.budget",
    # typed errors
    **{name: "quantens.errors" for name in (
        "QuantensError", "UsageError", "ConfigError", "DataError", "DeviceError",
        "LockedError", "ResultDirError", "WeightsError", "ExportError", "ReportError",
        "TeacherError", "PretrainedError", "DownloadError", "TuningError", "DivergedError",
        "SearchFailed",
    )},
}
"""Public names of the top level -> the module that defines them, imported on first use."""


def _submodules() -> set[str]:
    """The names of quantens' submodules (from the file system: nothing imported)."""
    import pkgutil

    return {info.name for info in pkgutil.iter_modules(__path__)}


def __getattr__(name: str):
    """The lazy names: `_LAZY`'s, `_FORWARDED`'s `__all__`, and `__all__` itself.

    A name neither holds, unless private or a submodule's (`from quantens
    import cli` asks here first), imports `_FORWARDED` (TensorFlow) to look.
    """
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name == "__all__":  # computed: `_FORWARDED`'s names are known once it is imported
        value = sorted({*_EAGER, *_LAZY, *importlib.import_module(_FORWARDED).__all__})
    elif name.startswith("_") or name in _submodules() or \
            name not in importlib.import_module(_FORWARDED).__all__:
        raise AttributeError(f"module 'quantens' has no attribute {name!r}")
    else:
        value = getattr(importlib.import_module(_FORWARDED), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__getattr__("__all__")})


__version__ = "0.1.0"
