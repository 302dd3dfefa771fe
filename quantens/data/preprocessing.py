"""Input preprocessing: what a model is fed in place of the pixels, and whether it fits the model.

A model computes on the inputs it was trained on. quantens' own models learn
on `standardized` images (each channel minus the dataset's mean, over its
std); a user's saved float model (`train.py --model PATH`) may have been
trained on pixels in [0, 1], or on keras.applications' preprocessing. The
names (`quantens.defaults.INPUT_PREPROCESSINGS`), each applied to images `x`
with pixels in [0, 255]:

| name | inputs |
|---|---|
| `standardized` | `(x - mean * 255) / (std * 255)`, the dataset's mean and std (the default) |
| `none` | `x`: raw pixels in [0, 255] (a model with its own `Rescaling`/`Normalization`) |
| `unit` | `x / 255`: [0, 1] |
| `symmetric` | `x / 127.5 - 1`: [-1, 1] (keras.applications' "tf" mode) |
| `caffe` | RGB -> BGR, then minus the ImageNet BGR means (103.939, 116.779, 123.68) |
| `torch` | `x / 255`, then minus the ImageNet mean (0.485, 0.456, 0.406), over its std (0.229, 0.224, 0.225) |

`caffe` and `torch` are defined for RGB images only.
`quantens.data.preprocessing_check` measures a float model under each one.

```python
import numpy as np
import quantens.data as qd
from quantens import defaults

assert defaults.INPUT_PREPROCESSING == "standardized"
unit = qd.preprocessing_fn("unit", qd.DATASETS["digits"])
assert float(unit(np.full((8, 8, 1), 255.0, "float32"))[0, 0, 0]) == 1.0
assert qd.applicable_preprocessings(qd.DATASETS["digits"]) == (
    "standardized", "none", "unit", "symmetric")
```
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from quantens.data.augmentation import normalizer
from quantens.data.catalog import IMAGENET_MEAN, IMAGENET_STD, DatasetSpec
from quantens.defaults import INPUT_PREPROCESSINGS
from quantens.errors import DataError

__all__ = [
    "CAFFE_BGR_MEAN",
    "RGB_ONLY",
    "applicable_preprocessings",
    "checked_preprocessing",
    "describe_preprocessing",
    "preprocessing_fn",
    "preprocessing_mean_std",
]

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
"""The ImageNet means (B, G, R) in [0, 255] that `caffe` subtracts (keras.applications')."""

RGB_ONLY = ("caffe", "torch")
"""The preprocessings defined for RGB images only (their constants are per RGB channel)."""


def checked_preprocessing(name: str, spec: DatasetSpec) -> str:
    """`name` if it is a preprocessing that applies to `spec`'s images, else a DataError."""
    if name not in INPUT_PREPROCESSINGS:
        raise DataError(
            f"unknown input preprocessing {name!r}: choose one of {', '.join(INPUT_PREPROCESSINGS)}"
        )
    channels = spec.input_shape[-1]
    if name in RGB_ONLY and channels != 3:
        raise DataError(
            f"input preprocessing {name} is defined for RGB images; {spec.tfds_name} images have "
            f"{channels} channel{'s' if channels != 1 else ''}: choose one of "
            f"{', '.join(applicable_preprocessings(spec))}"
        )
    return name


def applicable_preprocessings(spec: DatasetSpec) -> tuple[str, ...]:
    """The preprocessings defined for a dataset's images (`caffe`, `torch`: RGB only).

    ```python
    import quantens.data as qd

    assert "caffe" in qd.applicable_preprocessings(qd.DATASETS["cifar10"])
    assert "torch" not in qd.applicable_preprocessings(qd.DATASETS["mnist"])
    ```
    """
    rgb = spec.input_shape[-1] == 3
    return tuple(n for n in INPUT_PREPROCESSINGS if rgb or n not in RGB_ONLY)


def preprocessing_fn(name: str, spec: DatasetSpec) -> Callable:
    """images (pixels in [0, 255], float, channels last) -> the inputs of preprocessing `name`.

    Works on one image or a batch. `standardized` is `normalizer(spec)`, what
    `load` has always applied.

    ```python
    import numpy as np
    import quantens.data as qd

    x = np.array([[[0.0, 127.5, 255.0]]], "float32")  # one RGB pixel
    cifar = qd.DATASETS["cifar10"]
    np.testing.assert_allclose(qd.preprocessing_fn("symmetric", cifar)(x), [[[-1, 0, 1]]])
    np.testing.assert_allclose(qd.preprocessing_fn("caffe", cifar)(x),
                               [[[255 - 103.939, 127.5 - 116.779, 0 - 123.68]]], rtol=1e-6)
    ```

    Raises:
        DataError: an unknown name, or `caffe`/`torch` for images that are not RGB.
    """
    name = checked_preprocessing(name, spec)
    if name == "standardized":
        return normalizer(spec)
    if name == "none":
        return lambda image: image
    if name == "unit":
        return lambda image: image / 255.0
    if name == "symmetric":
        return lambda image: image / 127.5 - 1.0
    if name == "caffe":
        return lambda image: image[..., ::-1] - tf.constant(CAFFE_BGR_MEAN, tf.float32)
    mean, std = tf.constant(IMAGENET_MEAN, tf.float32), tf.constant(IMAGENET_STD, tf.float32)
    return lambda image: (image / 255.0 - mean) / std  # torch


def preprocessing_mean_std(name: str, spec: DatasetSpec) -> tuple[tuple, tuple, bool]:
    """(mean, std, bgr) with inputs = (pixels / 255 - mean) / std, channels reversed if bgr.

    The same inputs as `preprocessing_fn(name, spec)` (up to rounding), as a
    per-channel affine map of pixels in [0, 1] (mean and std in input
    channel order): what a model that undoes the preprocessing needs (a
    keras.applications teacher, `zoo.create_teacher`).

    ```python
    import quantens.data as qd

    assert qd.preprocessing_mean_std("symmetric", qd.DATASETS["digits"]) == ((0.5,), (0.5,), False)
    assert qd.preprocessing_mean_std("caffe", qd.DATASETS["cifar10"])[2]
    ```

    Raises:
        DataError: as `preprocessing_fn`.
    """
    name = checked_preprocessing(name, spec)
    channels = spec.input_shape[-1]
    return {
        "standardized": (tuple(spec.mean), tuple(spec.std), False),
        "none": ((0.0,) * channels, (1 / 255,) * channels, False),
        "unit": ((0.0,) * channels, (1.0,) * channels, False),
        "symmetric": ((0.5,) * channels, (0.5,) * channels, False),
        "caffe": (tuple(m / 255 for m in CAFFE_BGR_MEAN), (1 / 255,) * 3, True),
        "torch": (IMAGENET_MEAN, IMAGENET_STD, False),
    }[name]


def _numbers(values, spec: str = ".2f") -> str:
    values = [format(v, spec) for v in values]
    return values[0] if len(values) == 1 else f"[{', '.join(values)}]"


def describe_preprocessing(name: str, spec: DatasetSpec) -> str:
    """What preprocessing `name` feeds a model, as a formula with numbers (x: pixels in [0, 255]).

    What export.json says the exported models expect.

    ```python
    import quantens.data as qd

    assert qd.describe_preprocessing("unit", qd.DATASETS["digits"]).startswith("x / 255")
    assert "(x - 77.85) / 95.88" in qd.describe_preprocessing("standardized", qd.DATASETS["digits"])
    ```

    Raises:
        DataError: as `preprocessing_fn`.
    """
    name = checked_preprocessing(name, spec)
    rgb = " per channel (RGB)" if spec.input_shape[-1] == 3 else ""
    pixels = "x the pixels in [0, 255]"
    if name == "standardized":
        mean = _numbers(m * 255 for m in spec.mean)
        std = _numbers(s * 255 for s in spec.std)
        return (f"(x - {mean}) / {std}{rgb}, {pixels}: the {spec.tfds_name} mean and std "
                "(quantens' standardisation)")
    return {
        "none": "x, the pixels in [0, 255], unchanged",
        "unit": "x / 255: pixels in [0, 1]",
        "symmetric": "x / 127.5 - 1: pixels in [-1, 1] (keras.applications' 'tf' mode)",
        "caffe": (f"RGB -> BGR, then x - {_numbers(CAFFE_BGR_MEAN, 'g')} per channel (BGR), {pixels} "
                  "(keras.applications' 'caffe' mode)"),
        "torch": (f"(x / 255 - {_numbers(IMAGENET_MEAN, 'g')}) / "
                  f"{_numbers(IMAGENET_STD, 'g')}{rgb}, "
                  f"{pixels} (keras.applications' 'torch' mode)"),
    }[name]
