"""The checks every entry point shares: one home per fact, each a typed one-line error.

Arguments: `check_bit_widths` (members), `check_number` (a finite number),
`check_per_member` (`{bits: number}` of members), `member_key`. Models:
`missing_members` (a layer without one of the members) and `check_model_io`
(what a model must be for quantens to train and export it).
`quantize_model`, `QuantEnsemble`, `calibrate`, `Distillation` and the
command line call these; no module here imports another quantens module at
import time but `bits`, `defaults` and `errors`, so any module can use them.

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

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

from quantens.bits import validate_bit_widths
from quantens.defaults import FULL_PRECISION
from quantens.errors import ConfigError, DataError, UsageError, one_line

__all__ = [
    "check_bit_widths",
    "check_finite_inputs",
    "check_input_shape",
    "check_model_io",
    "check_number",
    "check_per_member",
    "fixed_input_shape",
    "member_key",
    "missing_members",
]


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


_BIT_WIDTHS_EXPECTED = "distinct integers from 1 to 32, e.g. (32, 8, 4, 2, 1)"


def check_bit_widths(bit_widths, where: str, argument: str = "bit_widths") -> tuple[int, ...]:
    """`validate_bit_widths` for a public function's argument: a `UsageError` naming both.

    ```python
    from quantens.checks import check_bit_widths
    from quantens.errors import UsageError

    assert check_bit_widths([1, 32], "f") == (32, 1)
    try:
        check_bit_widths(None, "f")
        raise AssertionError("None passed")
    except UsageError as error:
        assert str(error).startswith("f: bit_widths must list")
    ```
    """
    if bit_widths is None or isinstance(bit_widths, (bool, float, Mapping)) or not isinstance(
            bit_widths, (Iterable, numbers.Integral, str)):
        raise UsageError(
            f"{where}: {argument} must list the members' bit-widths, {_BIT_WIDTHS_EXPECTED}; "
            f"got {bit_widths!r}"
        )
    try:
        return validate_bit_widths(bit_widths)
    except (TypeError, ValueError) as error:
        raise UsageError(
            f"{where}: {argument} {bit_widths!r}: {one_line(error)}"
        ) from error


def member_key(b):
    """A per-member key as an int ("4" and numpy integers too), else None.

    ```python
    from quantens.checks import member_key

    assert member_key("4") == 4 and member_key(True) is None and member_key(2.5) is None
    ```
    """
    try:
        value = int(b)
        return value if not isinstance(b, bool) and value == float(b) else None
    except (TypeError, ValueError):
        return None


def _layers(model) -> Iterable:
    for layer in getattr(model, "layers", []):
        yield layer
        if getattr(layer, "layers", None):
            yield from _layers(layer)


def missing_members(model, bit_widths) -> str | None:
    """Why `model` cannot run every member of `bit_widths` (a layer without one), or None.

    ```python
    import zoo
    from quantens.checks import missing_members

    model = zoo.create_model("digits_resnet_e", width=4, bit_widths=(32, 1))
    assert missing_members(model, (32, 1)) is None
    assert "(no 4)" in missing_members(model, (32, 4, 1))  # its BN has no 4-bit statistics
    ```
    """
    from quantens.layers import SwitchableBatchNormalization
    from quantens.quantizers import ClipActivation

    for layer in _layers(model):
        owners = []
        if isinstance(layer, SwitchableBatchNormalization) and not layer.shared:
            owners.append((layer.bit_widths, bit_widths))
        for key in ("quantizer", "input_quantizer"):
            quantizer = getattr(layer, key, None)
            if isinstance(quantizer, ClipActivation) and quantizer.bits is None:
                low = [b for b in bit_widths if b != FULL_PRECISION]
                owners.append((quantizer.member_bits, low))
        for have, need in owners:
            missing = sorted(set(need) - set(have), reverse=True)
            if missing:
                return (f"its layer {layer.name!r} has members {' '.join(map(str, have))} "
                        f"only (no {' '.join(map(str, missing))})")
    return None



def check_number(value, where: str, argument: str, positive: bool = False,
                 hint: str = "") -> float:
    """A finite number (> 0 when `positive`, else >= 0), or a UsageError naming `argument`.

    ```python
    from quantens.checks import check_number

    assert check_number(2, "f", "weight") == 2.0
    ```
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise UsageError(
            f"{where}: {argument} must be a finite number {'> 0' if positive else '>= 0'}"
            f"{hint}, got {value!r}"
        )
    return float(value)


def check_per_member(values, bit_widths, where: str, argument: str | None,
                     positive: bool = False) -> dict[int, float]:
    """`{bits: number}` of members checked (None: {}), or a UsageError naming `argument`.

    The library's and the command line's one check of per-member values
    (`--kd-weights 1:2` is `where="--kd-weights"`, `argument=None`).

    ```python
    from quantens.checks import check_per_member

    assert check_per_member({"1": 2}, (32, 1), "f", "weights") == {1: 2.0}
    ```
    """
    subject = f"{where}: {argument}" if argument else where
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise UsageError(
            f"{subject} must be a dict {{bits: value}}, e.g. {{1: 2.0}}, "
            f"got {type(values).__name__}"
        )
    checked = {}
    for b, v in values.items():
        key = member_key(b)
        if key not in bit_widths:
            raise UsageError(
                f"{subject} names bit-widths [{b!r}] that are not members "
                f"({' '.join(map(str, bit_widths))}): give values only for members"
            )
        checked[key] = check_number(v, where, f"{argument}[{key}]" if argument else
                                    f"the value for {key} bits", positive)
    return checked


def check_input_shape(got: tuple, wanted: tuple, what: str, fix: str) -> None:
    """Raises DataError when inputs of shape `got` (no batch axis) do not fit a model
    taking `wanted` (None: any size); a single input without its batch axis is named.

    ```python
    from quantens.checks import check_input_shape
    from quantens.errors import DataError

    check_input_shape((8, 8, 1), (None, 8, 1), "data", "pass images")
    try:
        check_input_shape((8, 1), (8, 8, 1), "data", "pass images")
    except DataError as error:
        assert "add a batch axis (x[None])" in str(error)
    ```
    """
    if len(got) == len(wanted) and all(w is None or w == g
                                       for w, g in zip(wanted, got, strict=True)):
        return
    single = len(got) == len(wanted) - 1 and tuple(wanted[1:]) == got
    raise DataError(f"{what} has inputs of shape {got}, the model takes {wanted}: "
                    + ("one input, not a batch: add a batch axis (x[None])" if single else fix))


def check_finite_inputs(x, what: str, where: str, outcome: str) -> None:
    """Raises DataError naming how many values of the batch `x` are NaN or inf, in how
    many inputs (`where` follows that count), and which comes first.

    ```python
    import numpy as np
    from quantens.checks import check_finite_inputs
    from quantens.errors import DataError

    x = np.zeros((4, 2), "float32")
    x[2, 1] = np.nan
    try:
        check_finite_inputs(x, "data", "inputs", "nothing was changed")
    except DataError as error:
        assert "1 non-finite values (NaN or inf) in 1 inputs (input 2 first)" in str(error)
    ```
    """
    import numpy as np

    bad = ~np.isfinite(x)
    if bad.any():
        inputs = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
        raise DataError(
            f"{what} holds {int(bad.sum())} non-finite values (NaN or inf) in {len(inputs)} "
            f"{where} (input {int(inputs[0])} first): clean or drop them; {outcome}")
