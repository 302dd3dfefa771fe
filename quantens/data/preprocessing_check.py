"""Which input preprocessing a float model was trained on: measured, not guessed.

A model computes on the inputs it was trained on; fed other ones (pixels in
[0, 1] where it learned standardised images) it scores near chance, and
its members and float teacher would learn from noise. `check_preprocessing`
measures a float model's accuracy under every preprocessing that applies
(`quantens.data.preprocessing`) on the same images and says when another
one fits it far better than the stated one (`likely_preprocessing`):
`train.py --model PATH` asks it before the first epoch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import tensorflow as tf

from quantens.data.catalog import resolve
from quantens.data.pipeline import load
from quantens.data.preprocessing import (
    applicable_preprocessings,
    checked_preprocessing,
    preprocessing_fn,
)
from quantens.defaults import INPUT_PREPROCESSING
from quantens.errors import DataError

__all__ = [
    "COMPARE_MAX_EXAMPLES",
    "MISMATCH_MIN_GAIN",
    "MISMATCH_MIN_RATIO",
    "PreprocessingCheck",
    "check_preprocessing",
    "compare_preprocessings",
    "likely_preprocessing",
]

COMPARE_MAX_EXAMPLES = 1024
"""`compare_preprocessings` measures on at most this many images (the same ones for each)."""

MISMATCH_MIN_GAIN = 0.20
"""`likely_preprocessing`: another preprocessing must score at least this much more (absolute)..."""

MISMATCH_MIN_RATIO = 1.5
"""...and at least this many times the stated one's accuracy."""


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
    checked_preprocessing(stated, spec)
    names = applicable_preprocessings(spec)
    accuracies, examples = _accuracies(model, dataset, split, names, data_dir, batch_size,
                                       max_examples)
    return PreprocessingCheck(stated, accuracies, examples)
