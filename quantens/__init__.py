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
from quantens.bits import active_bits, bits, validate_bit_widths  # noqa: E402

_LAZY = {
    # the ensemble and its training
    "QuantEnsemble": "quantens.ensemble",
    "load_ensemble": "quantens.ensemble",
    "Distillation": "quantens.distillation",
    # switchable layers and the table of supported layer kinds
    "QuantActivation": "quantens.layers",
    "QuantConv1D": "quantens.layers",
    "QuantConv2D": "quantens.layers",
    "QuantDense": "quantens.layers",
    "QuantDepthwiseConv2D": "quantens.layers",
    "QuantSeparableConv2D": "quantens.layers",
    "SwitchableBatchNormalization": "quantens.layers",
    "SwitchableLayer": "quantens.layers",
    "SwitchableQuantizedVariable": "quantens.layers",
    "register_layer": "quantens.registry",
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
    # typed errors
    **{name: "quantens.errors" for name in (
        "QuantensError", "UsageError", "ConfigError", "DataError", "DeviceError",
        "LockedError", "ResultDirError", "WeightsError", "ExportError", "ReportError",
        "TeacherError", "PretrainedError", "DownloadError", "TuningError", "DivergedError",
        "SearchFailed",
    )},
}
"""Public names of the top level -> the module that defines them, imported on first use."""


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quantens' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])


__version__ = "0.1.0"

__all__ = [
    "ActivationQuantizer",
    "BackupLast",
    "BestCheckpoint",
    "ClipActivation",
    "ClusterConfig",
    "ConfigError",
    "DataError",
    "DatasetSpec",
    "DeviceError",
    "Digits",
    "Distillation",
    "DivergedError",
    "DivergenceGuard",
    "DownloadError",
    "EpochCounter",
    "ExportError",
    "ExportHook",
    "FolderInfo",
    "FullPrecisionActivation",
    "HistoryCSV",
    "LayerBuild",
    "LayerEntry",
    "LockedError",
    "LogFile",
    "MXNetSchedule",
    "NarrowRangeWeights",
    "PACTActivation",
    "PreprocessingCheck",
    "PretrainedError",
    "QuantActivation",
    "QuantConv1D",
    "QuantConv2D",
    "QuantDense",
    "QuantDepthwiseConv2D",
    "QuantEnsemble",
    "QuantSeparableConv2D",
    "QuantensError",
    "RAdam",
    "RangeRoundActivation",
    "ReportError",
    "ResultData",
    "ResultDir",
    "ResultDirError",
    "ResultDirLock",
    "RoundActivation",
    "SearchFailed",
    "SoftmaxRemovedWarning",
    "Split",
    "SplitPlan",
    "SwitchableBatchNormalization",
    "SwitchableLayer",
    "SwitchableQuantizedVariable",
    "SwitchableQuantizer",
    "SymmetricRoundActivation",
    "TeacherError",
    "TuningError",
    "UsageError",
    "WeightQuantizer",
    "WeightsError",
    "active_bits",
    "bits",
    "calibrate",
    "load_ensemble",
    "logits_model",
    "quantize_model",
    "register_layer",
    "validate_bit_widths",
]
