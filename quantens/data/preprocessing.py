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

`caffe` and `torch` are defined for RGB images only. `check_preprocessing`
measures a float model's accuracy under each one that applies and says when
another one fits it far better than the stated one (`likely_preprocessing`).

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

import dataclasses
import math
from collections.abc import Callable, Mapping

import tensorflow as tf

from quantens.data.augmentation import normalizer
from quantens.data.catalog import IMAGENET_MEAN, IMAGENET_STD, DatasetSpec, resolve
from quantens.defaults import INPUT_PREPROCESSING, INPUT_PREPROCESSINGS
from quantens.errors import DataError

__all__ = [
    "CAFFE_BGR_MEAN",
    "COMPARE_MAX_EXAMPLES",
    "MISMATCH_MIN_GAIN",
    "MISMATCH_MIN_RATIO",
    "RGB_ONLY",
    "PreprocessingCheck",
    "applicable_preprocessings",
    "check_preprocessing",
    "compare_preprocessings",
    "describe_preprocessing",
    "likely_preprocessing",
    "preprocessing_fn",
    "preprocessing_mean_std",
]

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
"""The ImageNet means (B, G, R) in [0, 255] that `caffe` subtracts (keras.applications')."""

RGB_ONLY = ("caffe", "torch")
"""The preprocessings defined for RGB images only (their constants are per RGB channel)."""

COMPARE_MAX_EXAMPLES = 1024
"""`compare_preprocessings` measures on at most this many images (the same ones for each)."""

MISMATCH_MIN_GAIN = 0.20
"""`likely_preprocessing`: another preprocessing must score at least this much more (absolute)..."""

MISMATCH_MIN_RATIO = 1.5
"""...and at least this many times the stated one's accuracy."""


def _checked_name(name: str, spec: DatasetSpec) -> str:
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
    name = _checked_name(name, spec)
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
    name = _checked_name(name, spec)
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
    name = _checked_name(name, spec)
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


def likely_preprocessing(accuracies: Mapping[str, float], stated: str) -> str | None:
    """The preprocessing that fits a model far better than `stated`, or None.

    Far better: the best other one scores at least `MISMATCH_MIN_GAIN` more
    (absolute) and at least `MISMATCH_MIN_RATIO` times the stated one's
    accuracy. Then the model was most likely trained on its inputs.

    ```python
    from quantens.data import likely_preprocessing

    assert likely_preprocessing({"standardized": 0.348, "unit": 0.816}, "standardized") == "unit"
    assert likely_preprocessing({"standardized": 0.70, "unit": 0.95}, "standardized") is None
    ```
    """
    base = accuracies[stated]
    others = {n: a for n, a in accuracies.items() if n != stated}
    if not others:
        return None
    best = max(others, key=others.get)  # a tie: the first one named
    far = (others[best] >= base + MISMATCH_MIN_GAIN - 1e-9
           and others[best] >= MISMATCH_MIN_RATIO * base - 1e-9)
    return best if far else None


def _accuracies(model, dataset: str, split, names, data_dir, batch_size: int,
                max_examples: int) -> tuple[dict[str, float], int]:
    """({name: accuracy}, examples) of `model` on the first `max_examples` images of `split`."""
    from quantens.data.pipeline import load  # which imports this module

    spec = resolve(dataset, data_dir)
    names = applicable_preprocessings(spec) if names is None else tuple(names)
    functions = {n: preprocessing_fn(n, spec) for n in names}
    if max_examples < 1:
        raise DataError(f"max_examples must be at least 1, got {max_examples}")
    batch_size = min(int(batch_size), int(max_examples))
    pixels = load(dataset, split, batch_size, data_dir=data_dir, preprocessing="none",
                  take_batches=math.ceil(max_examples / batch_size))
    correct, seen = dict.fromkeys(names, 0), 0
    for images, labels in pixels:
        keep = min(int(images.shape[0]), max_examples - seen)
        images, labels = images[:keep], tf.cast(labels[:keep], tf.int64)
        for n, function in functions.items():
            logits = model(function(images), training=False)
            predicted = tf.argmax(tf.reshape(logits, (keep, -1)), axis=-1)
            correct[n] += int(tf.reduce_sum(tf.cast(predicted == labels, tf.int32)))
        seen += keep
        if seen >= max_examples:
            break
    if not seen:
        raise DataError(f"{dataset} {split}: no examples to measure the model on")
    return {n: correct[n] / seen for n in names}, seen


def compare_preprocessings(model, dataset: str = "digits", split="validation", *,
                           names=None, data_dir: str | None = None, batch_size: int = 256,
                           max_examples: int = COMPARE_MAX_EXAMPLES) -> dict[str, float]:
    """{name: accuracy} of a float model under each preprocessing, on the same images.

    The first `max_examples` images of `split` (a split name or a `Split`),
    read once without augmentation, each preprocessing applied to them;
    accuracy is the argmax of `model(inputs, training=False)` against the
    label. `names`: the preprocessings to measure (default: every one that
    applies to the dataset, `applicable_preprocessings`).

    ```python
    import tempfile
    import quantens  # before TensorFlow: selects tf-keras
    import tensorflow as tf
    import quantens.data as qd

    model = tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=(8, 8, 1)),
                                 tf.keras.layers.Dense(10)])
    accuracy = qd.compare_preprocessings(model, "digits", "validation", max_examples=64,
                                         data_dir=tempfile.mkdtemp())
    assert set(accuracy) == {"standardized", "none", "unit", "symmetric"}
    ```

    Raises:
        DataError: an unknown or inapplicable name, a dataset that cannot be read.
    """
    return _accuracies(model, dataset, split, names, data_dir, batch_size, max_examples)[0]


@dataclasses.dataclass(frozen=True)
class PreprocessingCheck:
    """What `check_preprocessing` found: the accuracy under each preprocessing and the verdict.

    `better` is the preprocessing that fits the model far better than
    `stated` (`likely_preprocessing`), None when the stated one is fine.

    ```python
    from quantens.data import PreprocessingCheck

    check = PreprocessingCheck("standardized", {"standardized": 0.348, "unit": 0.816}, 144)
    assert check.accuracy == 0.348 and check.better == "unit"
    ```
    """

    stated: str
    accuracies: dict
    examples: int

    @property
    def accuracy(self) -> float:
        """The accuracy under the stated preprocessing."""
        return self.accuracies[self.stated]

    @property
    def better(self) -> str | None:
        """The preprocessing the model was most likely trained on instead, or None."""
        return likely_preprocessing(self.accuracies, self.stated)


def check_preprocessing(model, dataset: str = "digits", split="validation",
                        stated: str = INPUT_PREPROCESSING, *, data_dir: str | None = None,
                        batch_size: int = 256,
                        max_examples: int = COMPARE_MAX_EXAMPLES) -> PreprocessingCheck:
    """Whether a float model fits the `stated` preprocessing: every applicable one measured.

    What `train.py --model PATH` does before the first epoch: a model that
    scores far better under another preprocessing (`likely_preprocessing`)
    was trained on other inputs, and distilling from it would teach noise.

    ```python
    import tempfile
    import quantens  # before TensorFlow: selects tf-keras
    import tensorflow as tf
    import quantens.data as qd

    model = tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=(8, 8, 1)),
                                 tf.keras.layers.Dense(10)])
    check = qd.check_preprocessing(model, "digits", "validation", stated="unit",
                                   max_examples=64, data_dir=tempfile.mkdtemp())
    assert check.examples == 64 and 0 <= check.accuracy <= 1
    ```

    Raises:
        DataError: as `compare_preprocessings`, or a `stated` name that does not apply.
    """
    spec = resolve(dataset, data_dir)
    _checked_name(stated, spec)
    names = applicable_preprocessings(spec)
    accuracies, examples = _accuracies(model, dataset, split, names, data_dir, batch_size,
                                       max_examples)
    return PreprocessingCheck(stated, accuracies, examples)
