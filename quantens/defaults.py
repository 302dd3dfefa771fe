"""Defaults and choice lists: one home for each, shared by the library and the command line.

This module imports nothing from TensorFlow, so the command line can answer
`--help` and reject a bad flag before TensorFlow loads.

```python
from quantens import defaults

assert defaults.BIT_WIDTHS == (32, 8, 4, 2, 1)
assert "progressive" in defaults.KD_MODES
```
"""

from __future__ import annotations

# ------------------------------------------------------------------ members
BIT_WIDTHS = (32, 8, 4, 2, 1)
"""The members of the seed's examples: full precision down to binary."""

FULL_PRECISION = 32
"""The bit-width at which weights and activations are not quantized (and the highest one)."""

# --------------------------------------------------------------- quantizers
WEIGHT_QUANTIZATIONS = ("dorefa", "identity")
WEIGHT_QUANTIZATION = "dorefa"
ACTIVATION_METHODS = ("round", "det_sign")
ACTIVATION_METHOD = "round"
CLIP_THRESHOLD = 1.3
"""Activation gradients are cancelled where |x| exceeds it (the seed's examples)."""

# ------------------------------------------------------------------ models
MODEL = "digits_resnet_e"
INITIAL_LAYERS = ("imagenet", "thumbnail", "grouped_stem")

ARCHITECTURE_FLAGS = (
    "model", "bit_widths", "initial_layers", "weight_quantization", "activation_method",
    "clip_threshold", "fp_downsample_sc", "pool_downsample_sc", "fp_weights", "share_bn",
    "width",
)
"""The train.py flags that define the network (and so what a weights file fits)."""

ARCHITECTURE_DEFAULTS = {
    "model": MODEL, "bit_widths": list(BIT_WIDTHS), "initial_layers": None,
    "weight_quantization": WEIGHT_QUANTIZATION, "activation_method": ACTIVATION_METHOD,
    "clip_threshold": CLIP_THRESHOLD, "fp_downsample_sc": False, "pool_downsample_sc": False,
    "fp_weights": False, "share_bn": False, "width": None,
}
"""The value of each architecture flag when it is not given (train.py's defaults)."""

DERIVED_KEYS = ("input_shape", "num_classes")
"""Keys of a run's config.json that train.py derives from the dataset rather than reads as flags."""

# -------------------------------------------------------------------- data
DATASET = "digits"
AUGMENTATIONS = ("low", "medium", "high")

# ---------------------------------------------------------------- training
OPTIMIZERS = ("radam", "adam", "sgd", "nag")
"""The names `quantens.optimizers.make_optimizer` accepts (`--optimizer`)."""

LR_MODES = ("cosine", "step", "poly", "constant")
"""The modes `quantens.optimizers.make_schedule` accepts (`--lr-mode`)."""

MODES = ("hybrid", "symbolic", "imperative")
DTYPES = ("float32", "float16", "bfloat16")

# ------------------------------------------------------ knowledge distillation
KD_MODES = ("none", "simple", "progressive")
"""`--kd-mode`: no distillation, teacher -> every member, or a chain down the bit-widths."""

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
