"""Defaults and choice lists: one home for each, shared by the library and the command line.

This module imports nothing from TensorFlow, so the command line can answer
`--help` and reject a bad flag before TensorFlow loads.

```python
from quantens import defaults

assert defaults.BIT_WIDTHS == (32, 8, 4, 2, 1)
assert "progressive" in defaults.KD_MODES
assert defaults.INPUT_PREPROCESSING in defaults.INPUT_PREPROCESSINGS
```
"""

from __future__ import annotations

import os

__all__ = [
    "ACTIVATION_METHOD",
    "ACTIVATION_METHOD_CHOICES",
    "ARCHITECTURE_DEFAULTS",
    "ARCHITECTURE_FLAGS",
    "AUGMENTATIONS",
    "AVERAGE",
    "BIT_WIDTHS",
    "CALIBRATION_METHODS",
    "CLIP_THRESHOLD",
    "CONVERTED_WEIGHT_QUANTIZATION",
    "DATASET",
    "DERIVED_KEYS",
    "DTYPES",
    "ENSEMBLE_TEACHER",
    "FULL_PRECISION",
    "INITIAL_LAYERS",
    "INPUT_PREPROCESSING",
    "INPUT_PREPROCESSINGS",
    "KD_MODES",
    "KD_TEACHER_MODES",
    "KD_TEMPERATURE",
    "KD_WEIGHT",
    "KERAS_MODEL_PREFIX",
    "LR_MODES",
    "MEMBER_BACKWARD",
    "MEMBER_BACKWARDS",
    "MODEL",
    "MODEL_FILE_SUFFIXES",
    "MODES",
    "OPTIMIZERS",
    "RESNET_E_MODELS",
    "TEACHER",
    "TEACHER_MODES",
    "TUNERS",
    "WEIGHT_QUANTIZATION",
    "WEIGHT_QUANTIZATIONS",
    "default_weight_quantization",
    "is_model_file",
    "kd_pairs",
]

# ------------------------------------------------------------------ members
BIT_WIDTHS = (32, 8, 4, 2, 1)
"""The members of the seed's examples: full precision down to binary."""

FULL_PRECISION = 32
"""The bit-width at which weights and activations are not quantized (and the highest one)."""

# --------------------------------------------------------------- quantizers
WEIGHT_QUANTIZATIONS = ("dorefa", "identity", "narrow")
WEIGHT_QUANTIZATION = "dorefa"
"""The weight quantizer of ResNetE (the seed's DoReFa)."""
CONVERTED_WEIGHT_QUANTIZATION = "narrow"
"""The weight quantizer of converted float networks (`quantize_model`): a scale per
channel keeps each kernel's scale, so the original's BN statistics still fit."""
ACTIVATION_METHOD_CHOICES = ("round", "det_sign", "pact")
"""`--activation-method`, the input quantizer of ResNetE's convolutions: an
`ActivationQuantizer` method (`quantens.quantizers.ACTIVATION_QUANTIZER_METHODS`:
round, det_sign) or pact (`PACTActivation`, a learned clip value per member)."""

ACTIVATION_METHOD = "round"
"""The default of `--activation-method`."""
CALIBRATION_METHODS = ("mse", "percentile")
CALIBRATION = "mse"
"""`--calibration`'s default: how a converted model's members are calibrated."""
"""How `quantens.calibrate` chooses a member's clip value: least squared error, or a percentile."""
CLIP_THRESHOLD = 1.3
"""Activation gradients are cancelled where |x| exceeds it (the seed's examples)."""

# ------------------------------------------------------------------ models
MODEL = "digits_resnet_e"
RESNET_E_MODELS = ("digits_resnet_e", "resnet18_e1", "resnet34_e1")
"""The zoo's ResNetE architectures: the models whose convolutions take `--activation-method`."""
INITIAL_LAYERS = ("imagenet", "thumbnail", "grouped_stem")

KERAS_MODEL_PREFIX = "keras:"
"""`--model keras:NAME`: the `tf.keras.applications` network NAME, converted by `quantize_model`."""

MODEL_FILE_SUFFIXES = (".keras", ".h5")
"""`--model PATH`: a user's saved float Keras model (a whole model, `model.save(PATH)`)."""


def is_model_file(model: str) -> bool:
    """Whether a `--model` value is the path of a saved model (not a zoo or `keras:` name).

    A path: it ends in `.keras` or `.h5`, or it has a directory part.

    ```python
    from quantens.defaults import is_model_file

    assert is_model_file("my_cnn.keras") and is_model_file("models/cnn.h5")
    assert not is_model_file("mobilenet_v2") and not is_model_file("keras:MobileNetV2")
    ```
    """
    model = str(model)
    if model.startswith(KERAS_MODEL_PREFIX):
        return False
    return model.lower().endswith(MODEL_FILE_SUFFIXES) or "/" in model or os.sep in model


ARCHITECTURE_FLAGS = (
    "model", "bit_widths", "initial_layers", "weight_quantization", "activation_method",
    "clip_threshold", "fp_downsample_sc", "pool_downsample_sc", "fp_weights", "share_bn",
    "width", "alpha",
)
"""The train.py flags that define the network (and so what a weights file fits)."""

ARCHITECTURE_DEFAULTS = {
    "model": MODEL, "bit_widths": list(BIT_WIDTHS), "initial_layers": None,
    "weight_quantization": None, "activation_method": ACTIVATION_METHOD,
    "clip_threshold": CLIP_THRESHOLD, "fp_downsample_sc": False, "pool_downsample_sc": False,
    "fp_weights": False, "share_bn": False, "width": None, "alpha": None,
}
"""The value of each architecture flag when it is not given (train.py's defaults; None:
the model's own, e.g. `weight_quantization` dorefa for ResNetE, narrow for converted networks)."""

def default_weight_quantization(model: str) -> str:
    """A model's own weight quantizer: dorefa for ResNetE, narrow for converted networks.

    ```python
    from quantens.defaults import default_weight_quantization

    assert default_weight_quantization("digits_resnet_e") == "dorefa"
    assert default_weight_quantization("mobilenet_v2") == "narrow"
    ```
    """
    return WEIGHT_QUANTIZATION if model in RESNET_E_MODELS else CONVERTED_WEIGHT_QUANTIZATION


DERIVED_KEYS = ("input_shape", "num_classes")
"""Keys of a run's config.json that train.py derives from the dataset rather than reads as flags."""

# -------------------------------------------------------------------- data
DATASET = "digits"
AUGMENTATIONS = ("low", "medium", "high")
AUGMENTATION = "medium"
BATCH_SIZE = 64
"""`--batch-size`: per device."""

INPUT_PREPROCESSINGS = ("standardized", "none", "unit", "symmetric", "caffe", "torch")
"""`--input-preprocessing`: what a model is fed in place of the pixels x in [0, 255]:
standardized ((x - mean) / std, the dataset's), none (x), unit (x / 255), symmetric
(x / 127.5 - 1), caffe and torch (keras.applications' modes; RGB images only). The
functions are `quantens.data.preprocessing_fn`."""
INPUT_PREPROCESSING = "standardized"
"""The default of `--input-preprocessing` and `quantens.data.load`: what quantens' own
models are trained on."""

# ---------------------------------------------------------------- training
OPTIMIZERS = ("radam", "adam", "sgd", "nag")
"""The names `quantens.optimizers.make_optimizer` accepts (`--optimizer`)."""

LR_MODES = ("cosine", "step", "poly", "constant")
"""The modes `quantens.optimizers.make_schedule` accepts (`--lr-mode`)."""

OPTIMIZER = "adam"
LR = 0.005
LR_MODE = "cosine"
LR_FACTOR = 0.1
MOMENTUM = 0.9
EPOCHS = 30
WEIGHT_DECAY = 0.0
SEED = 0
"""The defaults of `--optimizer`, `--lr`, `--lr-mode`, `--lr-factor`, `--momentum`,
`--epochs`, `--wd` and `--seed` (and of `quantens.run.ScheduleSettings`)."""

MODES = ("hybrid", "symbolic", "imperative")
DTYPES = ("float32", "float16", "bfloat16")

# ------------------------------------------------------ knowledge distillation
KD_MODES = ("none", "simple", "progressive", "highest", "average")
"""`--kd-mode`: no distillation, teacher -> every member, a chain down the bit-widths,
every member from the highest one, or every member from the members' average."""

TEACHER = "teacher"
"""A distillation target: the external (or ensemble) teacher."""
AVERAGE = "average"
"""A distillation target: the members' mean logits (`--kd-mode average`)."""


def kd_pairs(mode: str, bit_widths, has_teacher: bool) -> list:
    """The (student bits, target) pairs of a KD mode; a target is a bit-width, "teacher" or "average".

    `simple`: the teacher teaches every member; `progressive`: (teacher ->)
    highest -> next lower -> ... -> lowest; `highest`: (teacher -> highest,)
    the highest member teaches every other; `average`: (teacher -> highest,)
    every member learns from the members' mean logits (a self-ensemble).
    No TensorFlow: the command line checks its KD flags with it.

    ```python
    from quantens.defaults import kd_pairs

    assert kd_pairs("highest", (32, 4, 1), has_teacher=False) == [(4, 32), (1, 32)]
    assert kd_pairs("average", (32, 1), has_teacher=False) == [(32, "average"), (1, "average")]
    ```

    Raises:
        UsageError: unknown mode, or `simple` without a teacher.
    """
    from quantens.errors import UsageError

    bit_widths = sorted(bit_widths, reverse=True)
    if mode not in KD_MODES:
        raise UsageError(f"unknown kd mode {mode!r}: choose one of {', '.join(KD_MODES)}")
    if mode == "none":
        return []
    if mode == "simple":
        if not has_teacher:
            raise UsageError("kd mode 'simple' needs a teacher (--teacher, --kd-teacher-mode)")
        return [(b, TEACHER) for b in bit_widths]
    pairs: list = [(bit_widths[0], TEACHER)] if has_teacher else []
    if mode == "highest":
        return pairs + [(b, bit_widths[0]) for b in bit_widths[1:]]
    if mode == "average":
        return pairs + [(b, AVERAGE) for b in bit_widths]
    return pairs + list(zip(bit_widths[1:], bit_widths[:-1], strict=True))


MEMBER_BACKWARDS = ("joint", "sequential")
"""How `QuantEnsemble.train_step` gets the members' gradients: one backward pass through
every member's forward pass (joint), or member after member, adding them up (sequential:
the memory of one member's activations)."""
MEMBER_BACKWARD = "joint"
"""The default of `member_backward` / `--member-backward`."""

KD_TEACHER_MODES = ("none", "pretrained_external", "untrained_external")
"""`--kd-teacher-mode`: the teacher's training level."""

ENSEMBLE_TEACHER = "ensemble"
"""The teacher mode of `--ensemble-teacher` (a trained ensemble, member b teaches member b)."""

TEACHER_MODES = (*KD_TEACHER_MODES, ENSEMBLE_TEACHER)
"""Every teacher mode `quantens.distillation.Distillation` accepts."""

KD_TEMPERATURE = 4.0
KD_WEIGHT = 1.0

# ------------------------------------------------------------------ tuning
TUNERS = ("random", "hyperband", "bayesian")

# ------------------------------------------------------------ budget members
KB = 1000
"""Bytes in a kB of `--budget-kb` and of the budget members' names (`member_budget_300kb`)."""
