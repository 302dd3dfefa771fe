"""Checks of what a model must be for quantens to train and export it, shared by every entry.

`quantize_model`, `QuantEnsemble` and the zoo's loader of saved models
(`train.py --model PATH`) ask the same questions here, so a model they
cannot train or export is refused by each of them with the same one line,
before anything is trained:

- one input and one output (the logits of every member);
- a fixed input size (TFLite files have one; `quantize_model(...,
  input_shape=...)` fixes a model saved for any size);
- an output of shape `(batch, classes)`.

```python
import quantens
import tensorflow as tf
from quantens.checks import check_model_io
from quantens.errors import ConfigError

inputs = tf.keras.Input((None, None, 1))
x = tf.keras.layers.GlobalAveragePooling2D()(tf.keras.layers.Conv2D(4, 3)(inputs))
model = tf.keras.Model(inputs, tf.keras.layers.Dense(10)(x))
assert check_model_io(model, "f", input_shape=(8, 8, 1)) == (8, 8, 1)
try:
    check_model_io(model, "f")
    raise AssertionError("an unknown input size passed")
except ConfigError as error:
    assert "input_shape" in str(error)
```
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from quantens.errors import ConfigError, UsageError

__all__ = ["check_model_io", "fixed_input_shape"]


def _shape(shape) -> tuple:
    return tuple(None if d is None else int(d) for d in shape)


def fixed_input_shape(model_shape: Sequence, input_shape, where: str) -> tuple[int, ...] | None:
    """The input shape (no batch axis) with every size known, or None if it cannot be fixed.

    `model_shape` is the model's (None where any size fits); `input_shape`,
    when given, fixes the unknown sizes and must agree with the known ones
    (a UsageError names both).

    ```python
    from quantens.checks import fixed_input_shape

    assert fixed_input_shape((None, None, 3), (32, 32, 3), "f") == (32, 32, 3)
    assert fixed_input_shape((None, None, 3), None, "f") is None
    ```
    """
    model_shape = _shape(model_shape)
    if input_shape is None:
        return model_shape if None not in model_shape else None
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or not all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1
            for d in input_shape):
        raise UsageError(
            f"{where}: input_shape must be a tuple of whole sizes >= 1 without the batch axis, "
            f"e.g. (32, 32, 3), got {input_shape!r}"
        )
    wanted = tuple(int(d) for d in input_shape)
    if len(wanted) != len(model_shape) or any(
            d is not None and d != w for d, w in zip(model_shape, wanted, strict=False)):
        raise UsageError(
            f"{where}: input_shape {wanted} does not fit the model's input shape {model_shape}: "
            "give the sizes the model leaves open (None) and keep the others"
        )
    return wanted


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def check_model_io(model, where: str, input_shape=None, fixed_size: bool = True) -> tuple:
    """The model's input shape (fixed by `input_shape`), or a ConfigError naming what is wrong.

    A model quantens can train and export has one input, one output of shape
    `(batch, classes)`, and a known input size, or one that `input_shape`
    fixes (with `fixed_size=False` an unknown size passes: a float model
    loaded before its size is known). `where` starts the message (the
    function, flag or file that was given the model). An `input_shape` that
    contradicts the model's is a UsageError.
    """
    inputs, outputs = list(getattr(model, "inputs", None) or []), list(
        getattr(model, "outputs", None) or [])
    name = getattr(model, "name", type(model).__name__)
    if len(inputs) != 1 or len(outputs) != 1:
        names = ", ".join(t.name.split("/")[0] for t in outputs[:4])
        raise ConfigError(
            f"{where}: model {name!r} has {_count(len(inputs), 'input')} and "
            f"{_count(len(outputs), 'output')}"
            + (f" ({names})" if len(outputs) > 1 else "")
            + "; quantens trains models with one image input and one output of logits (keep "
            "one: tf.keras.Model(model.input, model.outputs[0]))"
        )
    output = _shape(outputs[0].shape)
    if len(output) != 2 or output[1] is None:
        raise ConfigError(
            f"{where}: model {name!r} outputs shape {output}; quantens trains logits of shape "
            "(batch, classes): end the model with Dense(classes) (after Flatten or "
            "GlobalAveragePooling2D)"
        )
    model_shape = _shape(inputs[0].shape[1:])
    fixed = fixed_input_shape(model_shape, input_shape, where)
    if fixed is None and not fixed_size:
        return model_shape
    if fixed is None:
        raise ConfigError(
            f"{where}: model {name!r} takes inputs of shape {model_shape}, of unknown size: a "
            "TFLite file needs a fixed one; pass input_shape (the images' size, e.g. "
            f"{tuple(32 if d is None else d for d in model_shape)}) to quantize_model, or "
            "rebuild the model with a fixed tf.keras.Input shape"
        )
    return fixed
