"""Quantizers for every member of a shared-weight ensemble, built on larq's.

Two kinds of objects live here:

- fixed quantizers, one bit-width each (`RoundActivation`,
  `SymmetricRoundActivation`, `FullPrecisionActivation`, and larq's own `DoReFa`
  and `SteSign`), which standalone members (`QuantEnsemble.member`) use;
- switchable quantizers, `WeightQuantizer` and `ActivationQuantizer`, which
  pick the fixed quantizer of the active bit-width (`quantens.bits`) each time
  they are called, so one layer with one kernel serves every member.

Rules (those of BMXNet, the code base quantens replaces):

| bits  | weights (`dorefa`)                    | activations (`round`)          | activations (`det_sign`) |
|-------|---------------------------------------|--------------------------------|--------------------------|
| 32    | identity                              | relu                           | clip to [-1, 1]          |
| 2..31 | DoReFa: tanh, normalise by max, round | clip to [0, 1], 2^k levels     | clip to [-1, 1], 2^k levels |
| 1     | sign, straight-through gradient       | clip to [0, 1], levels {0, 1}  | sign                     |

Activation gradients are straight-through where |x| <= `clip_threshold` and
zero elsewhere (BMXNet's gradient cancelling). Weight method `identity` keeps
every member's weights in full precision (the seed's `--fp-weights`); weight
method `narrow` (`NarrowRangeWeights`) quantizes 2..31-bit members to the
symmetric narrow-range grid TFLite stores exactly (2^(k-1) - 1 levels each
side of zero, a max-abs scale per output channel), so that 2..4-bit members
deploy as packed INT4 and 5..8-bit ones as int8 without a rounding of their
own; 1 bit is sign, as with `dorefa`.

Options for models converted from float ones (`quantens.quantize_model`):
`ActivationQuantizer(value_range=r, max_value=m)` is a ReLU-like activation
on [0, r] (`RangeRoundActivation`: 2^k - 1 steps of r / (2^k - 1) at k bits,
straight-through gradients inside [0, r]; exactly relu, capped at m if given,
at 32 bits), and `bits=` fixes a `WeightQuantizer`'s or `ActivationQuantizer`'s
precision for every member.

Aliases: every weight method (`WeightQuantizer`: dorefa, identity, narrow) and
every activation method (`ActivationQuantizer`: round, det_sign; and pact, a
`PACTActivation` for the default bit-widths) is registered with Keras as
`"quantens.<method>"` (`QUANTIZER_ALIASES`), larq's convention for quantizer
aliases (`larq.utils.register_alias`): once this module is imported, any larq
layer takes them as quantizer identifiers, and saves and loads as usual (what
an alias builds is a serializable quantizer object). `get` takes them with or
without the prefix, and larq's own identifiers.

```python
import larq as lq
import numpy as np
import tensorflow as tf
import quantens
from quantens import quantizers  # registers the aliases

layer = lq.layers.QuantDense(3, kernel_quantizer="quantens.dorefa",
                             input_quantizer="quantens.round")
x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
with quantens.bits(2):
    y = layer(x)
    w = quantizers.get("dorefa")(layer.kernel.latent_variable)
    x2 = quantizers.get("round")(x)
np.testing.assert_allclose(y, tf.matmul(x2, w) + layer.bias, rtol=1e-6)
```

```python
import numpy as np
import larq as lq
import quantens

q = quantens.WeightQuantizer("dorefa")
w = np.linspace(-2, 2, 9).astype("float32")
with quantens.bits(2):
    w2 = q(w)
np.testing.assert_allclose(w2, lq.quantizers.DoReFa(k_bit=2, mode="weights")(w))
```
"""

from __future__ import annotations

import math

import larq as lq
import tensorflow as tf

from quantens.bits import active_bits, check_bit_width
from quantens.defaults import CLIP_THRESHOLD, FULL_PRECISION, WEIGHT_QUANTIZATIONS

__all__ = [
    "ACTIVATION_QUANTIZER_METHODS",
    "ALIAS_PREFIX",
    "DEFAULT_CLIP_VALUE",
    "DEFAULT_CLIP_VALUES",
    "PACT_MIN_ALPHA",
    "QUANTIZER_ALIASES",
    "WEIGHT_METHODS",
    "ActivationQuantizer",
    "ClipActivation",
    "FullPrecisionActivation",
    "NarrowRangeWeights",
    "PACTActivation",
    "RangeRoundActivation",
    "RoundActivation",
    "SwitchableQuantizer",
    "SymmetricRoundActivation",
    "WeightQuantizer",
    "default_clip_value",
    "get",
    "pact",
]

WEIGHT_METHODS = WEIGHT_QUANTIZATIONS  # dorefa, identity, narrow
"""The methods `WeightQuantizer` takes."""
ACTIVATION_QUANTIZER_METHODS = ("round", "det_sign")
"""The methods `ActivationQuantizer` takes (`--activation-method` adds pact:
`quantens.defaults.ACTIVATION_METHOD_CHOICES`)."""


def _gradient_cancel(x: tf.Tensor, dy: tf.Tensor, clip_threshold: float | None):
    if clip_threshold is None:
        return dy
    return tf.where(tf.abs(x) <= clip_threshold, dy, tf.zeros_like(dy))


def _k_bit_round(x: tf.Tensor, k_bit: int, low: float, clip_threshold: float | None):
    """Clips `x` to [low, 1] and rounds to 2**k_bit evenly spaced levels."""

    @tf.custom_gradient
    def _round(x):
        levels = 2.0**k_bit - 1.0
        unit = (tf.clip_by_value(x, low, 1.0) - low) / (1.0 - low)
        y = tf.round(unit * levels) / levels * (1.0 - low) + low

        def grad(dy):
            return _gradient_cancel(x, dy, clip_threshold)

        return y, grad

    return _round(x)


def _check_method(method: str, allowed: tuple[str, ...], what: str) -> str:
    if method not in allowed:
        raise ValueError(
            f"unknown {what} {method!r}: choose one of {', '.join(allowed)}"
        )
    return method


@tf.keras.utils.register_keras_serializable(package="quantens")
class RoundActivation(lq.quantizers.Quantizer):
    """Clips to [0, 1] and rounds to `2**k_bit` levels (BMXNet's `round`).

    The gradient is straight-through where |x| <= `clip_threshold`, zero
    elsewhere.

    ```python
    import numpy as np
    from quantens.quantizers import RoundActivation

    y = RoundActivation(k_bit=2)(np.array([-1.0, 0.2, 0.5, 0.9], "float32"))
    np.testing.assert_allclose(y, [0.0, 1 / 3, 2 / 3, 1.0], rtol=1e-6)
    ```
    """

    def __init__(self, k_bit: int = 2, clip_threshold: float | None = CLIP_THRESHOLD, **kwargs):
        self.precision = check_bit_width(k_bit)
        self.clip_threshold = clip_threshold
        super().__init__(**kwargs)

    def call(self, inputs):
        return _k_bit_round(inputs, self.precision, 0.0, self.clip_threshold)

    def get_config(self):
        return {
            **super().get_config(),
            "k_bit": self.precision,
            "clip_threshold": self.clip_threshold,
        }


@tf.keras.utils.register_keras_serializable(package="quantens")
class SymmetricRoundActivation(RoundActivation):
    """Clips to [-1, 1] and rounds to `2**k_bit` levels (`det_sign` above 1 bit).

    ```python
    import numpy as np
    from quantens.quantizers import SymmetricRoundActivation

    y = SymmetricRoundActivation(k_bit=2)(np.array([-2.0, -0.2, 0.2], "float32"))
    np.testing.assert_allclose(y, [-1.0, -1 / 3, 1 / 3], rtol=1e-6)
    ```
    """

    def call(self, inputs):
        return _k_bit_round(inputs, self.precision, -1.0, self.clip_threshold)


@tf.keras.utils.register_keras_serializable(package="quantens")
class FullPrecisionActivation(lq.quantizers.Quantizer):
    """The 32-bit member's activation: `relu` (for `round`) or `clip` to [-1, 1].

    ```python
    import numpy as np
    from quantens.quantizers import FullPrecisionActivation

    y = FullPrecisionActivation("relu")(np.array([-1.0, 2.0], "float32"))
    np.testing.assert_allclose(y, [0.0, 2.0])
    ```
    """

    precision = FULL_PRECISION

    def __init__(self, function: str = "relu", **kwargs):
        self.function = _check_method(function, ("relu", "clip"), "activation")
        super().__init__(**kwargs)

    def call(self, inputs):
        if self.function == "relu":
            return tf.nn.relu(inputs)
        return tf.clip_by_value(inputs, -1.0, 1.0)

    def get_config(self):
        return {**super().get_config(), "function": self.function}


def _k_bit_round_range(x: tf.Tensor, k_bit: int, value_range: float):
    """Clips `x` to [0, value_range] and rounds to 2**k_bit levels over it."""

    @tf.custom_gradient
    def _round(x):
        levels = 2.0**k_bit - 1.0
        step = value_range / levels
        y = tf.round(tf.clip_by_value(x, 0.0, value_range) / step) * step

        def grad(dy):
            inside = tf.logical_and(x >= 0.0, x <= value_range)
            return tf.where(inside, dy, tf.zeros_like(dy))

        return y, grad

    return _round(x)


def _check_positive(value, what: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not (math.isfinite(value) and value > 0):  # inf would make every step inf, NaN below it
        raise ValueError(f"{what} must be a finite number > 0 (or None), got {value}")
    return value


@tf.keras.utils.register_keras_serializable(package="quantens")
class RangeRoundActivation(lq.quantizers.Quantizer):
    """A ReLU-like activation on [0, `value_range`]: k-bit levels, or a (capped) relu at 32.

    Below 32 bits it clips to [0, `value_range`] and rounds to `2**k_bit - 1`
    steps of `value_range / (2**k_bit - 1)`; the gradient is straight-through
    inside [0, `value_range`] and zero outside. At 32 bits it is exactly
    `relu`, capped at `max_value` when that is set (`relu6` for 6).
    The members of `quantens.quantize_model`'s activations use it.

    ```python
    import numpy as np
    from quantens.quantizers import RangeRoundActivation

    x = np.array([-1.0, 1.1, 2.9, 7.0], "float32")
    np.testing.assert_allclose(RangeRoundActivation(2, value_range=6.0)(x), [0, 2, 2, 6])
    np.testing.assert_allclose(RangeRoundActivation(32, 6.0, max_value=6.0)(x), [0, 1.1, 2.9, 6])
    np.testing.assert_allclose(RangeRoundActivation(32, 1.0)(x), [0, 1.1, 2.9, 7])  # relu
    ```
    """

    def __init__(self, k_bit: int = 2, value_range: float = 1.0,
                 max_value: float | None = None, **kwargs):
        self.precision = check_bit_width(k_bit)
        self.value_range = _check_positive(value_range, "value_range")
        if self.value_range is None:
            raise ValueError("value_range must be positive, got None")
        self.max_value = _check_positive(max_value, "max_value")
        super().__init__(**kwargs)

    def call(self, inputs):
        if self.precision == FULL_PRECISION:
            y = tf.nn.relu(inputs)
            return y if self.max_value is None else tf.minimum(y, self.max_value)
        return _k_bit_round_range(inputs, self.precision, self.value_range)

    def get_config(self):
        return {
            **super().get_config(),
            "k_bit": self.precision,
            "value_range": self.value_range,
            "max_value": self.max_value,
        }


def pact(x: tf.Tensor, alpha: tf.Tensor, k_bit: int) -> tf.Tensor:
    """PACT (Choi et al. 2018): clip(x, 0, α) on 2^k - 1 steps of α / (2^k - 1).

    Gradients: dy/dx = 1 for 0 <= x < α (straight through the rounding), 0
    elsewhere; dy/dα = 1 for x >= α, 0 elsewhere (the paper's), summed over
    the tensor.

    ```python
    import numpy as np
    import tensorflow as tf
    from quantens.quantizers import pact

    x = tf.constant([-0.5, 0.3, 0.8, 2.0])
    alpha = tf.Variable(1.5)
    with tf.GradientTape() as tape:
        y = pact(x, alpha, 2)  # levels 0, 0.5, 1.0, 1.5
    np.testing.assert_allclose(y, [0.0, 0.5, 1.0, 1.5])
    assert float(tape.gradient(y, alpha)) == 1.0  # one input at or above alpha
    ```
    """
    levels = float(2**k_bit - 1)

    @tf.custom_gradient
    def _pact(x, alpha):
        step = alpha / levels
        y = tf.round(tf.clip_by_value(x, 0.0, alpha) / step) * step

        def grad(dy):
            inside = tf.logical_and(x >= 0.0, x < alpha)
            dx = tf.where(inside, dy, tf.zeros_like(dy))
            dalpha = tf.reduce_sum(tf.where(x >= alpha, dy, tf.zeros_like(dy)))
            return dx, tf.cast(dalpha, alpha.dtype)

        return y, grad

    return _pact(x, tf.cast(alpha, x.dtype))


@tf.keras.utils.register_keras_serializable(package="quantens")
class NarrowRangeWeights(lq.quantizers.Quantizer):
    """Weights on the symmetric narrow-range k-bit grid: what TFLite stores exactly.

    q = s * round(w / s) with s = max|w| / (2^(k-1) - 1) per output channel
    (the kernel's last axis; with `depthwise=True`, a depthwise kernel's
    (h, w, channels, multiplier): per channel and multiplier): the integers
    -(2^(k-1) - 1) ... 2^(k-1) - 1, zero included, times s. Those are TFLite's
    symmetric (zero point 0) narrow-range weights: 2..4 bits fit INT4, 5..8 bits
    int8, exactly. The gradient is straight-through (every w lies inside the
    range by construction of s); s itself is not trained.

    ```python
    import numpy as np
    from quantens.quantizers import NarrowRangeWeights

    w = np.array([[-0.9, 0.2], [0.1, -0.4], [0.6, 0.05]], "float32")  # 2 output channels
    q = NarrowRangeWeights(2)(w).numpy()  # levels {-1, 0, 1} * s per channel
    np.testing.assert_allclose(q[:, 0], [-0.9, 0.0, 0.9], rtol=1e-6)
    np.testing.assert_allclose(q[:, 1], [0.0, -0.4, 0.0], rtol=1e-6)
    ```
    """

    precision = None

    def __init__(self, k_bit: int = 4, depthwise: bool = False, **kwargs):
        self.precision = check_bit_width(k_bit)
        if self.precision < 2:
            raise ValueError(
                "the narrow-range grid needs 2 or more bits (1 bit is sign: SteSign)"
            )
        self.depthwise = bool(depthwise)
        super().__init__(**kwargs)

    @property
    def levels(self) -> int:
        """m = 2^(k-1) - 1: the largest integer of the grid."""
        return 2 ** (self.precision - 1) - 1

    def scale(self, inputs) -> tf.Tensor:
        """s per output channel (shape 1, ..., 1, channels; depthwise: 1, 1, c, m)."""
        axes = [0, 1] if self.depthwise else list(range(len(inputs.shape) - 1))
        absmax = tf.reduce_max(tf.abs(inputs), axis=axes, keepdims=True)
        return tf.where(absmax > 0, absmax / float(self.levels), tf.ones_like(absmax))

    def call(self, inputs):
        inputs = tf.convert_to_tensor(inputs)
        s = tf.stop_gradient(self.scale(inputs))
        quantized = tf.round(inputs / s) * s
        return inputs + tf.stop_gradient(quantized - inputs)  # straight-through

    def get_config(self):
        config = {**super().get_config(), "k_bit": self.precision}
        if self.depthwise:
            config["depthwise"] = True
        return config


class SwitchableQuantizer(lq.quantizers.Quantizer):
    """Base of quantizers that follow the active bit-width (`quantens.bits`).

    A subclass says what it applies at each bit-width (`for_bits`); calling it
    applies the quantizer of the active bit-width (32 outside any scope).
    Switchable layers (`quantens.layers`) keep one kernel for every member by
    giving larq such a quantizer.
    """

    @property
    def precision(self) -> int:
        """The bit-width the quantizer applies now (32 outside any scope)."""
        bits = active_bits()
        return FULL_PRECISION if bits is None else bits

    def for_bits(self, bits: int) -> lq.quantizers.Quantizer | None:
        """A new fixed quantizer for `bits`, or None where nothing is applied."""
        raise NotImplementedError

    def call(self, inputs):
        quantizer = self.for_bits(self.precision)
        return inputs if quantizer is None else quantizer(inputs)


@tf.keras.utils.register_keras_serializable(package="quantens")
class WeightQuantizer(SwitchableQuantizer):
    """Quantizes a kernel to the active bit-width.

    Arguments:
        method: `"dorefa"` (DoReFa for 2..31 bits, sign for 1 bit, identity for
            32), `"narrow"` (`NarrowRangeWeights` for 2..31 bits, sign for 1 bit,
            identity for 32) or `"identity"` (full-precision weights for every
            member).
        bits: a fixed bit-width: every member then gets the kernel at `bits`
            (`for_bits` ignores the member's bits). None (the default) follows
            the member. `quantens.quantize_model`'s `policy` sets it.
        min_bits: members below it get the kernel at `min_bits` (None: no
            floor); `quantize_model`'s `depthwise_bits` sets it for depthwise
            kernels.

    ```python
    import numpy as np
    import quantens

    q = quantens.WeightQuantizer()
    w = np.array([-0.3, 0.0, 0.7], "float32")
    with quantens.bits(1):
        np.testing.assert_allclose(q(w), [-1.0, 1.0, 1.0])
    with quantens.bits(32):
        np.testing.assert_allclose(q(w), w)

    fixed = quantens.WeightQuantizer(bits=32)  # full precision in every member
    with quantens.bits(1):
        np.testing.assert_allclose(fixed(w), w)
    ```
    """

    def __init__(self, method: str = "dorefa", bits: int | None = None,
                 depthwise: bool = False, min_bits: int | None = None, **kwargs):
        self.method = _check_method(method, WEIGHT_METHODS, "weight quantization")
        self.bits = None if bits is None else check_bit_width(bits, "fixed bit-width")
        self.min_bits = None if min_bits is None else check_bit_width(min_bits, "minimum bit-width")
        self.depthwise = bool(depthwise)  # set by depthwise layers: narrow scales per channel
        super().__init__(**kwargs)

    def _bits_for(self, bits: int) -> int:
        if self.bits is not None:
            return self.bits  # a fixed precision, whatever the member
        if self.min_bits is not None and bits < self.min_bits:
            return self.min_bits  # never below min_bits
        return bits

    @property
    def precision(self) -> int:
        """The bit-width applied now: the fixed `bits`, else the active one (at least `min_bits`)."""
        return self._bits_for(super().precision)

    def for_bits(self, bits: int) -> lq.quantizers.Quantizer | None:
        bits = self._bits_for(check_bit_width(bits))
        if self.method == "identity" or bits == FULL_PRECISION:
            return None
        if bits == 1:
            # sign with a plain straight-through gradient, as BMXNet's det_sign.
            return lq.quantizers.SteSign(clip_value=None)
        if self.method == "narrow":
            return NarrowRangeWeights(bits, depthwise=self.depthwise)
        return lq.quantizers.DoReFa(k_bit=bits, mode="weights")

    def get_config(self):
        config = {**super().get_config(), "method": self.method}
        if self.bits is not None:
            config["bits"] = self.bits
        if self.min_bits is not None:
            config["min_bits"] = self.min_bits
        if self.depthwise:
            config["depthwise"] = True
        return config


@tf.keras.utils.register_keras_serializable(package="quantens")
class ActivationQuantizer(SwitchableQuantizer):
    """Quantizes activations to the active bit-width.

    Arguments:
        method: `"round"` (values in [0, 1]; relu at 32 bits) or `"det_sign"`
            (values in [-1, 1], sign at 1 bit; clip at 32 bits).
        clip_threshold: gradients are cancelled where |x| exceeds it (the
            seed's `--clip-threshold`); None passes every gradient.
        value_range: (`round` only) k-bit members clip to [0, `value_range`]
            instead of [0, 1] and round to `2**k - 1` steps over it, with
            straight-through gradients inside that range (`clip_threshold` is
            then not used); see `RangeRoundActivation`. Defaults to
            `max_value` when that is set; None (and no `max_value`) is [0, 1].
        max_value: (`round` only) the 32-bit member's relu is capped at it
            (6: relu6); None: an uncapped relu.
        bits: a fixed bit-width for every member (None: follow the member).

    ```python
    import numpy as np
    import quantens

    q = quantens.ActivationQuantizer("round", clip_threshold=1.3)
    with quantens.bits(1):
        np.testing.assert_allclose(q(np.array([-1.0, 0.4, 0.6], "float32")), [0, 0, 1])

    relu6 = quantens.ActivationQuantizer(max_value=6.0)  # ReLU6 at 32 bits, [0, 6] below
    x = np.array([-1.0, 2.5, 8.0], "float32")
    np.testing.assert_allclose(relu6(x), [0, 2.5, 6])
    with quantens.bits(2):
        np.testing.assert_allclose(relu6(x), [0, 2, 6])
    ```
    """

    def __init__(
        self, method: str = "round", clip_threshold: float | None = CLIP_THRESHOLD,
        value_range: float | None = None, max_value: float | None = None,
        bits: int | None = None, **kwargs
    ):
        self.method = _check_method(method, ACTIVATION_QUANTIZER_METHODS, "activation method")
        if clip_threshold is not None and not clip_threshold > 0:
            raise ValueError(
                f"clip_threshold must be positive (or None), got {clip_threshold}"
            )
        self.clip_threshold = clip_threshold
        self.max_value = _check_positive(max_value, "max_value")
        self.value_range = _check_positive(value_range, "value_range")
        if self.value_range is None:
            self.value_range = self.max_value
        if self.value_range is not None and self.method != "round":
            raise ValueError(
                f"value_range and max_value apply to the 'round' activation method, "
                f"not {self.method!r}"
            )
        self.bits = None if bits is None else check_bit_width(bits, "fixed bit-width")
        super().__init__(**kwargs)

    @property
    def precision(self) -> int:
        """The bit-width applied now: the fixed `bits`, else the active one."""
        return self.bits if self.bits is not None else super().precision

    def for_bits(self, bits: int) -> lq.quantizers.Quantizer:
        bits = check_bit_width(bits)
        if self.bits is not None:
            bits = self.bits  # a fixed precision, whatever the member
        if self.value_range is not None:
            return RangeRoundActivation(bits, self.value_range, max_value=self.max_value)
        if bits == FULL_PRECISION:
            return FullPrecisionActivation("relu" if self.method == "round" else "clip")
        if self.method == "round":
            return RoundActivation(bits, clip_threshold=self.clip_threshold)
        if bits == 1:
            return lq.quantizers.SteSign(clip_value=self.clip_threshold)
        return SymmetricRoundActivation(bits, clip_threshold=self.clip_threshold)

    def get_config(self):
        config = {
            **super().get_config(),
            "method": self.method,
            "clip_threshold": self.clip_threshold,
        }
        # only when set: configs of today's quantizers stay as they were
        for key in ("value_range", "max_value", "bits"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        return config


PACT_MIN_ALPHA = 1e-3
"""The smallest clip value: weight decay and the gradient may push α down, 0 would divide by 0."""


def _min_alpha(alpha):
    return tf.maximum(alpha, PACT_MIN_ALPHA)


DEFAULT_CLIP_VALUES = {1: 1.0, 2: 2.0, 3: 4.0}
"""A k-bit member's clip value of a ReLU-like activation when no data sets it
(`default_clip_value`): 1 at 1 bit (its threshold 0.5 sits near the middle of
a BN output; a threshold of 3, a ReLU6's [0, 6], leaves almost every
activation 0 and the member diverges), 2 at 2 bits, 4 at 3 bits and 6 from 4
bits up, never above the activation's own cap (a ReLU6 keeps [0, 6] from 4
bits up). `quantens.calibrate` replaces them with values from data."""

DEFAULT_CLIP_VALUE = 6.0


def default_clip_value(bits: int, cap: float | None = None) -> float:
    """The clip value of member `bits` for an activation capped at `cap` (None: a relu).

    ```python
    from quantens.quantizers import default_clip_value

    assert [default_clip_value(b, cap=6.0) for b in (8, 4, 2, 1)] == [6.0, 6.0, 2.0, 1.0]
    assert default_clip_value(8, cap=3.0) == 3.0
    ```
    """
    value = DEFAULT_CLIP_VALUES.get(int(bits), DEFAULT_CLIP_VALUE)
    return value if cap is None else min(value, float(cap))


@tf.keras.utils.register_keras_serializable(package="quantens")
class ClipActivation(SwitchableQuantizer):
    """A ReLU-like activation with its own clip value α_b per member (a switchable clipping level).

    Member k (< 32 bits) computes clip(x, 0, α_k) on 2^k - 1 steps of
    α_k / (2^k - 1) (`pact`); the 32-bit member computes relu, capped at
    `max_value` when set (relu6 for 6), exactly the float activation. Each α_k
    is a variable of its own (`alpha_<k>`): `quantens.calibrate` sets it from
    data, and with `learned=True` it is trained by member k's loss alone
    (PACT's gradient), so every member finds its own range. `for_bits(k)` is
    the fixed `RangeRoundActivation(k, α_k)` at α's current value: standalone
    members and their export use it.

    Arguments:
        bit_widths: the members (a variable per member below 32 bits).
        clip: the initial α, one number for every member or a mapping
            `{bits: α}` (members not in it get `default_clip_value`).
        max_value: the cap of the 32-bit member's relu (and the largest α
            a default gives); None: an uncapped relu.
        learned: α is trainable (PACT) instead of set by calibration only.
        bits: a fixed bit-width for every member (None: follow the member);
            the members then share that precision's α.
        min_bits: members below it quantize to `min_bits` levels (still on
            their own α); None: no floor.

    ```python
    import numpy as np
    import quantens
    from quantens.quantizers import ClipActivation

    relu6 = ClipActivation((32, 8, 1), clip={8: 6.0, 1: 1.0}, max_value=6.0)
    x = np.array([-1.0, 0.7, 3.0, 7.0], "float32")
    np.testing.assert_allclose(relu6(x), [0.0, 0.7, 3.0, 6.0])  # 32 bits: relu6
    with quantens.bits(1):
        np.testing.assert_allclose(relu6(x), [0.0, 1.0, 1.0, 1.0])  # {0, α_1}, α_1 = 1
    with quantens.bits(8):
        np.testing.assert_allclose(relu6(x), [0.0, 12 / 17, 3.011765, 6.0], rtol=1e-5)  # steps 6 / 255
    ```
    """

    def __init__(self, bit_widths=None, clip=None, max_value: float | None = None,
                 learned: bool = False, bits: int | None = None, min_bits: int | None = None,
                 **kwargs):
        from quantens.bits import validate_bit_widths
        from quantens.defaults import BIT_WIDTHS

        self.bits = None if bits is None else check_bit_width(bits, "fixed bit-width")
        self.min_bits = None if min_bits is None else check_bit_width(min_bits, "minimum bit-width")
        self.member_bits = validate_bit_widths(bit_widths or BIT_WIDTHS)
        self.max_value = _check_positive(max_value, "max_value")
        self.learned = bool(learned)
        owners = (self.bits,) if self.bits is not None else self.member_bits
        given = clip if isinstance(clip, dict) else {}
        unknown = sorted(int(b) for b in given if int(b) not in owners)
        if unknown:
            raise ValueError(f"clip values for {unknown} bits: not a member "
                             f"({' '.join(map(str, owners))})")
        self.clip = {}
        for b in owners:
            if b == FULL_PRECISION:
                continue
            value = given.get(b, given.get(str(b))) if isinstance(clip, dict) else clip
            if value is None:
                value = default_clip_value(self._levels_of(b), self.max_value)
            value = _check_positive(value, f"clip value of the {b}-bit member")
            self.clip[str(b)] = value
        super().__init__(**kwargs)
        self.alphas = {}

    def _member(self, bits: int) -> int:
        """Whose α member `bits` uses: the fixed `bits`' when set, else its own."""
        return self.bits if self.bits is not None else bits

    def _levels_of(self, bits: int) -> int:
        """The precision member `bits` quantizes to (at least `min_bits`)."""
        bits = self._member(bits)
        return max(bits, self.min_bits) if self.min_bits is not None else bits

    @property
    def precision(self) -> int:
        """The bit-width applied now: the fixed `bits`, else the active one (at least `min_bits`)."""
        return self._levels_of(super().precision)

    def build(self, input_shape):
        for key, value in self.clip.items():
            self.alphas[key] = self.add_weight(
                name=f"alpha_{key}", shape=(), trainable=self.learned,
                initializer=tf.keras.initializers.Constant(value),
                constraint=_min_alpha)
        super().build(input_shape)

    def _alpha(self, bits: int):
        if not self.built:
            self.build(None)
        if str(bits) not in self.alphas:
            raise ValueError(
                f"{type(self).__name__} has clip values for "
                f"{' '.join(self.alphas) or 'no'} bits, not {bits}"
            )
        return self.alphas[str(bits)]

    def clip_variable(self, bits: int) -> tf.Variable:
        """The variable α of member `bits` (of the fixed `bits` when set)."""
        return self._alpha(self._member(check_bit_width(bits)))

    def call(self, inputs):
        member = self._member(super().precision)
        levels = self._levels_of(member)
        if levels == FULL_PRECISION:
            y = tf.nn.relu(inputs)
            return y if self.max_value is None else tf.minimum(y, self.max_value)
        return pact(inputs, self._alpha(member), levels)

    def for_bits(self, bits: int) -> lq.quantizers.Quantizer:
        member = self._member(check_bit_width(bits))
        levels = self._levels_of(member)
        if levels == FULL_PRECISION:
            return RangeRoundActivation(FULL_PRECISION, self.max_value or 1.0,
                                        max_value=self.max_value)
        alpha = max(float(self._alpha(member).numpy()), PACT_MIN_ALPHA)
        return RangeRoundActivation(levels, alpha, max_value=self.max_value)

    def get_config(self):
        config = {**super().get_config(), "bit_widths": list(self.member_bits),
                  "clip": dict(self.clip), "max_value": self.max_value,
                  "learned": self.learned}
        if self.bits is not None:
            config["bits"] = self.bits
        if self.min_bits is not None:
            config["min_bits"] = self.min_bits
        return config


@tf.keras.utils.register_keras_serializable(package="quantens")
class PACTActivation(ClipActivation):
    """A ReLU-like activation with a learned clip value α per member (PACT, Choi et al. 2018).

    Member k (< 32 bits) computes `pact(x, α_k, k)`: clip(x, 0, α_k) on
    2^k - 1 steps, with α_k a trainable variable of this quantizer (one per
    member, initialised to `init`; the paper's gradient, see `pact`; weight
    decay, when the ensemble has it, applies to α as in the paper). The
    32-bit member is a relu. A `ClipActivation` with `learned=True`.
    `train.py --activation-method pact` puts it in ResNetE's convolutions
    instead of the fixed [0, 1] `round`.

    ```python
    import numpy as np
    import tensorflow as tf
    import quantens
    from quantens.quantizers import PACTActivation

    q = PACTActivation((32, 4, 2), init=2.0)
    x = np.array([-1.0, 0.5, 3.0], "float32")
    with quantens.bits(2):
        np.testing.assert_allclose(q(x), [0.0, 2 / 3, 2.0], rtol=1e-6)  # α = 2, 3 steps
    assert sorted(v.name.split("/")[-1] for v in q.trainable_weights) == ["alpha_2:0", "alpha_4:0"]
    np.testing.assert_allclose(q(x), [0.0, 0.5, 3.0])  # 32 bits: relu
    ```
    """

    def __init__(self, bit_widths=None, init: float = 1.0, **kwargs):
        for key in ("clip", "max_value", "learned", "bits", "min_bits"):
            kwargs.pop(key, None)  # a PACTActivation's config is (bit_widths, init)
        self.init = _check_positive(init, "PACT init")
        if self.init is None:
            raise ValueError("PACT init must be positive, got None")
        super().__init__(bit_widths, clip=self.init, learned=True, **kwargs)

    def get_config(self):
        config = super().get_config()
        for key in ("clip", "max_value", "learned"):
            config.pop(key)
        return {**config, "init": self.init}


# ------------------------------------------------------------------ aliases

ALIAS_PREFIX = "quantens."
"""The prefix of quantens' method names in Keras' global registry: `"quantens.dorefa"`."""


def _alias(name: str, build):
    """A builder of method `name`'s quantizer, as Keras deserialises it: `build(**config)`."""

    def quantizer(**config) -> lq.quantizers.Quantizer:
        return build(**config)

    quantizer.__name__ = quantizer.__qualname__ = f"{ALIAS_PREFIX}{name}"
    quantizer.__doc__ = f"The `{name}` quantizer of quantens (`quantens.quantizers.get`)."
    return quantizer


QUANTIZER_ALIASES = {
    **{m: _alias(m, lambda m=m, **config: WeightQuantizer(m, **config))
       for m in WEIGHT_METHODS},
    **{m: _alias(m, lambda m=m, **config: ActivationQuantizer(m, **config))
       for m in ACTIVATION_QUANTIZER_METHODS},
    "pact": _alias("pact", PACTActivation),
}
"""quantens' quantizer method names and what each builds: a new switchable quantizer.

Each is registered with Keras as `"quantens.<method>"` (see the module's
"Aliases"), larq's convention for quantizer aliases."""

for _name, _build in QUANTIZER_ALIASES.items():
    tf.keras.utils.get_custom_objects()[f"{ALIAS_PREFIX}{_name}"] = _build
del _name, _build


def get(identifier):
    """A quantizer from an identifier: a quantens method name or anything larq's `get` takes.

    `"dorefa"` and `"quantens.dorefa"` (any name of `QUANTIZER_ALIASES`, with or
    without the prefix) build a new quantens switchable quantizer; other
    strings (`"ste_sign"`), config dicts and callables go to
    `larq.quantizers.get`; None stays None.

    ```python
    import larq as lq
    from quantens import quantizers

    assert quantizers.get("narrow").method == "narrow"
    assert quantizers.get("quantens.det_sign").method == "det_sign"
    assert isinstance(quantizers.get("ste_sign"), lq.quantizers.SteSign)
    assert quantizers.get(None) is None
    ```

    Raises:
        ValueError: an identifier neither quantens nor larq knows.
    """
    if isinstance(identifier, str):
        name = identifier.removeprefix(ALIAS_PREFIX)
        if name in QUANTIZER_ALIASES:
            return QUANTIZER_ALIASES[name]()
    return lq.quantizers.get(identifier)
