"""Switchable layers: one kernel for every member, per-bit quantizers and BN.

`QuantConv2D`, `QuantConv1D`, `QuantDepthwiseConv2D`, `QuantSeparableConv2D` and
`QuantDense` subclass larq's layers of the same name and hold ONE kernel variable (one of each
kind for the separable convolution); the kernel and the inputs are quantized to the
active bit-width (`quantens.bits`) each time the layer is called. Each is a
`SwitchableKernelLayer`: a new layer kind is such a class here plus its one
`quantens.registry.register_layer` call; this module's `__all__` (and so the
top level's, `quantens.<Name>`) lists every `SwitchableKernelLayer` it defines.
`SwitchableBatchNormalization` keeps statistics and affine parameters per
bit-width (as in Any-Precision DNNs and slimmable networks), or one shared set.

Each switchable layer can also give a fixed, standalone copy of itself for one
bit-width (`fixed_layer(bits)`), made only of larq and Keras layers;
`QuantEnsemble.member` builds members from those.

```python
import numpy as np
import tensorflow as tf
import quantens

inputs = tf.keras.Input((8, 8, 3))
x = quantens.QuantConv2D(16, 3, padding="same", use_bias=False)(inputs)
x = quantens.SwitchableBatchNormalization(bit_widths=(32, 4, 1))(x)
model = tf.keras.Model(inputs, x)
with quantens.bits(4):
    y4 = model(np.ones((1, 8, 8, 3), "float32"))
```
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import larq as lq
import tensorflow as tf

from quantens.bits import active_bits, layer_scope, validate_bit_widths
from quantens.defaults import BIT_WIDTHS, CLIP_THRESHOLD
from quantens.larq_hooks import KernelWrapping, QuantizedVariable
from quantens.quantizers import (
    ACTIVATION_QUANTIZER_METHODS,
    WEIGHT_METHODS,
    ActivationQuantizer,
    SwitchableQuantizer,
    WeightQuantizer,
)

_NOT_KINDS = [
    "QuantActivation", "SwitchableBatchNormalization", "SwitchableKernelLayer", "SwitchableLayer",
    "SwitchableQuantizedVariable",
]
"""The public names that are not layer kinds; `__all__` (at the end) adds the kinds."""


@runtime_checkable
class SwitchableLayer(Protocol):
    """A layer whose members differ: how `QuantEnsemble.member(bits)` gets member `bits`'s layer.

    Every switchable layer of this module has these two methods; a member
    is built by replacing each such layer with `fixed_layer(bits)` and
    setting its weights to `fixed_weights(bits)`, so a member holds only
    larq and Keras layers (which `quantens.export` reads). A new switchable
    layer kind implements them and is registered with
    `quantens.registry.register_layer`.

    ```python
    import quantens
    from quantens.layers import SwitchableLayer

    bn = quantens.SwitchableBatchNormalization(bit_widths=(32, 2))
    bn.build((None, 3))
    assert isinstance(bn, SwitchableLayer)
    fixed = bn.fixed_layer(2)
    fixed.build((None, 3))
    fixed.set_weights(bn.fixed_weights(2))
    ```
    """

    def fixed_layer(self, bits: int) -> tf.keras.layers.Layer:
        """A standalone layer (larq or Keras, no quantens layer) equal to this one at `bits`.

        Its configuration only: its weights are not set (see `fixed_weights`).
        """
        ...

    def fixed_weights(self, bits: int) -> list:
        """The weight values of `fixed_layer(bits)`, in its `get_weights()` order."""
        ...


class SwitchableQuantizedVariable(QuantizedVariable):
    """A larq `QuantizedVariable` whose precision follows its quantizer.

    larq fixes a variable's precision when the variable is created; here the
    same kernel has the precision of whichever member runs, so that
    `lq.models.summary` inside `quantens.bits(b)` describes member b.
    """

    @property
    def precision(self):
        return getattr(self.quantizer, "precision", None)

    @precision.setter
    def precision(self, value):
        # QuantizedVariable.__init__ stores a precision; ours is always derived.
        pass


def _as_quantizer(identifier, switchable_cls, methods):
    """Turns our method names into switchable quantizers; larq's ids pass through."""
    if isinstance(identifier, str) and identifier in methods:
        return switchable_cls(identifier)
    return identifier


class SwitchableKernelLayer(KernelWrapping):
    """Mixin for larq layers whose kernel quantizers follow the active bits: a layer kind.

    Put it before the larq layer in the bases. `_QUANTIZER_KEYS` names the
    layer's kernel quantizer arguments (each defaulting to `"dorefa"`; the
    registry reads them too); `input_quantizer` defaults to `"round"`;
    `fixed_class` is the larq layer class of its members (`fixed_layer`).
    Each kernel a switchable quantizer guards is ONE
    `SwitchableQuantizedVariable` for every member
    (`quantens.larq_hooks.KernelWrapping`). A class of this module is listed
    in its `__all__` and is `quantens.<Name>`; register it with
    `quantens.registry.register_layer` to convert and export it.

    ```python
    import larq as lq
    import numpy as np
    import quantens
    from quantens.layers import SwitchableKernelLayer, SwitchableQuantizedVariable

    class QuantConv3D(SwitchableKernelLayer, lq.layers.QuantConv3D):
        fixed_class = lq.layers.QuantConv3D

    conv = QuantConv3D(2, 1, input_quantizer=None)
    x = np.random.rand(1, 2, 2, 2, 3).astype("float32")
    with quantens.bits(1):
        y1 = conv(x)
    assert isinstance(conv.kernel, SwitchableQuantizedVariable)
    assert len(conv.trainable_weights) == 2  # one kernel, one bias: every member's
    assert not np.allclose(y1, conv(x))  # 32 bits outside any scope
    ```
    """

    _QUANTIZER_KEYS: tuple[str, ...] = ("kernel_quantizer",)

    def __init__(self, *args, input_quantizer="round", **kwargs):
        for key in self._QUANTIZER_KEYS:
            kwargs[key] = _as_quantizer(kwargs.get(key, "dorefa"), WeightQuantizer,
                                        WEIGHT_METHODS)
            if key == "depthwise_quantizer" and isinstance(kwargs[key], WeightQuantizer):
                kwargs[key].depthwise = True  # its narrow grid: a scale per channel
        super().__init__(
            *args,
            input_quantizer=_as_quantizer(
                input_quantizer, ActivationQuantizer, ACTIVATION_QUANTIZER_METHODS
            ),
            **kwargs,
        )

    def quantized_variable_class(self, quantizer) -> type:
        """`SwitchableQuantizedVariable` for a switchable quantizer; larq's own class otherwise."""
        if isinstance(quantizer, SwitchableQuantizer):
            return SwitchableQuantizedVariable
        return super().quantized_variable_class(quantizer)

    def call(self, inputs):
        with layer_scope(self):  # in a quantens.bits(policy) scope: this layer's own bits
            return super().call(inputs)

    def fixed_weights(self, bits: int) -> list:
        """The weights of `fixed_layer(bits)`: this layer's, without its quantizers' own
        (a `PACTActivation`'s clip values live in the fixed quantizer's range)."""
        owned = {id(w) for key in (*self._QUANTIZER_KEYS, "input_quantizer")
                 for w in getattr(getattr(self, key), "weights", [])}
        return tf.keras.backend.batch_get_value(
            [w for w in self.weights if id(w) not in owned])

    def fixed_layer(self, bits: int) -> tf.keras.layers.Layer:
        """A standalone larq layer equal to this one at `bits` (weights not copied)."""
        config = self.get_config()
        for key in (*self._QUANTIZER_KEYS, "input_quantizer"):
            quantizer = getattr(self, key)
            if isinstance(quantizer, SwitchableQuantizer):
                quantizer = quantizer.for_bits(bits)
            config[key] = quantizer
        return self.fixed_class.from_config(config)


@tf.keras.utils.register_keras_serializable(package="quantens")
class QuantConv2D(SwitchableKernelLayer, lq.layers.QuantConv2D):
    """larq's `QuantConv2D` with one kernel shared by every bit-width.

    `kernel_quantizer` defaults to `"dorefa"` and `input_quantizer` to
    `"round"` (switchable `WeightQuantizer` / `ActivationQuantizer`); any larq
    quantizer or None is accepted too and then applies to every member.

    ```python
    import numpy as np
    import quantens

    conv = quantens.QuantConv2D(4, 3, padding="same")
    x = np.random.rand(1, 5, 5, 2).astype("float32")
    with quantens.bits(1):
        y1 = conv(x)
    with quantens.bits(32):
        y32 = conv(x)
    assert len(conv.trainable_weights) == 2  # one kernel, one bias
    ```
    """

    fixed_class = lq.layers.QuantConv2D


@tf.keras.utils.register_keras_serializable(package="quantens")
class QuantConv1D(SwitchableKernelLayer, lq.layers.QuantConv1D):
    """larq's `QuantConv1D` with one kernel shared by every bit-width (sequences, sensors).

    ```python
    import numpy as np
    import quantens
    from quantens.layers import QuantConv1D

    conv = QuantConv1D(4, 3, padding="same", input_quantizer=None)
    x = np.random.rand(2, 16, 3).astype("float32")
    with quantens.bits(2):
        y2 = conv(x)
    assert y2.shape == (2, 16, 4) and len(conv.trainable_weights) == 2
    assert conv.fixed_layer(2).kernel_quantizer.precision == 2
    ```
    """

    fixed_class = lq.layers.QuantConv1D


@tf.keras.utils.register_keras_serializable(package="quantens")
class QuantDense(SwitchableKernelLayer, lq.layers.QuantDense):
    """larq's `QuantDense` with one kernel shared by every bit-width.

    ```python
    import numpy as np
    import quantens

    dense = quantens.QuantDense(3, input_quantizer=None)
    with quantens.bits(2):
        y = dense(np.ones((1, 4), "float32"))
    ```
    """

    fixed_class = lq.layers.QuantDense


@tf.keras.utils.register_keras_serializable(package="quantens")
class QuantDepthwiseConv2D(SwitchableKernelLayer, lq.layers.QuantDepthwiseConv2D):
    """larq's `QuantDepthwiseConv2D` with one depthwise kernel shared by every bit-width.

    `depthwise_quantizer` defaults to `"dorefa"` and `input_quantizer` to
    `"round"` (switchable `WeightQuantizer` / `ActivationQuantizer`); any larq
    quantizer or None is accepted too and then applies to every member. The
    bias stays full precision.

    ```python
    import numpy as np
    import quantens
    from quantens.layers import QuantDepthwiseConv2D

    conv = QuantDepthwiseConv2D(3, padding="same", input_quantizer=None)
    x = np.random.rand(1, 5, 5, 2).astype("float32")
    with quantens.bits(1):
        y1 = conv(x)
    with quantens.bits(32):
        y32 = conv(x)
    assert [w.name.split("/")[-1] for w in conv.weights] == ["depthwise_kernel:0", "bias:0"]
    assert conv.fixed_layer(1).depthwise_quantizer.precision == 1
    ```
    """

    _QUANTIZER_KEYS = ("depthwise_quantizer",)
    fixed_class = lq.layers.QuantDepthwiseConv2D


@tf.keras.utils.register_keras_serializable(package="quantens")
class QuantSeparableConv2D(SwitchableKernelLayer, lq.layers.QuantSeparableConv2D):
    """larq's `QuantSeparableConv2D`: one depthwise and one pointwise kernel for every bit-width.

    `depthwise_quantizer` and `pointwise_quantizer` default to `"dorefa"`,
    `input_quantizer` to `"round"`; the bias stays full precision.

    ```python
    import numpy as np
    import quantens
    from quantens.layers import QuantSeparableConv2D

    conv = QuantSeparableConv2D(4, 3, padding="same", input_quantizer=None)
    x = np.random.rand(1, 5, 5, 2).astype("float32")
    with quantens.bits(2):
        y2 = conv(x)
    assert len(conv.trainable_weights) == 3  # depthwise kernel, pointwise kernel, bias
    ```
    """

    _QUANTIZER_KEYS = ("depthwise_quantizer", "pointwise_quantizer")
    fixed_class = lq.layers.QuantSeparableConv2D


@tf.keras.utils.register_keras_serializable(package="quantens")
class QuantActivation(tf.keras.layers.Layer):
    """An activation quantized to the active bit-width, as a layer.

    ```python
    import numpy as np
    import quantens

    act = quantens.QuantActivation("round", clip_threshold=1.3)
    with quantens.bits(2):
        y = act(np.array([[0.1, 0.5, 2.0]], "float32"))

    # a ReLU6 (`quantens.quantize_model` makes these): relu6 at 32 bits,
    # 2**k - 1 steps on [0, 6] at k bits
    relu6 = quantens.QuantActivation(max_value=6.0)
    x = np.array([[-1.0, 2.5, 8.0]], "float32")
    np.testing.assert_allclose(relu6(x), [[0.0, 2.5, 6.0]])
    with quantens.bits(1):
        np.testing.assert_allclose(relu6(x), [[0.0, 0.0, 6.0]])
    ```

    Arguments:
        method, clip_threshold, value_range, max_value, bits: those of
            `quantens.ActivationQuantizer`.
        quantizer: a switchable activation quantizer to use instead (e.g. a
            `quantens.ClipActivation`, a clip value per member: what
            `quantens.quantize_model` puts in place of a ReLU); the other
            arguments are then ignored.
    """

    def __init__(self, method: str = "round", clip_threshold: float | None = CLIP_THRESHOLD,
                 value_range: float | None = None, max_value: float | None = None,
                 bits: int | None = None, quantizer=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(quantizer, dict):
            quantizer = tf.keras.utils.deserialize_keras_object(quantizer)
        if quantizer is not None and not isinstance(quantizer, SwitchableQuantizer):
            raise ValueError(
                f"QuantActivation's quantizer must be a switchable quantens quantizer "
                f"(ClipActivation, ActivationQuantizer), got {type(quantizer).__name__}"
            )
        self._custom_quantizer = quantizer is not None
        self.quantizer = quantizer if quantizer is not None else ActivationQuantizer(
            method, clip_threshold=clip_threshold, value_range=value_range,
            max_value=max_value, bits=bits,
        )

    bits_follow = "outputs"  # in a mix: the bits of the layers it feeds (quantens.bits.mix_bits)

    def call(self, inputs):
        with layer_scope(self):
            return self.quantizer(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def fixed_layer(self, bits: int) -> tf.keras.layers.Layer:
        return tf.keras.layers.Activation(self.quantizer.for_bits(bits), name=self.name)

    def fixed_weights(self, bits: int) -> list:
        """None: a clip value lives in the fixed quantizer's range, not in a weight."""
        return []

    def get_config(self):
        if self._custom_quantizer:
            return {**super().get_config(),
                    "quantizer": tf.keras.utils.serialize_keras_object(self.quantizer)}
        config = {
            **super().get_config(),
            "method": self.quantizer.method,
            "clip_threshold": self.quantizer.clip_threshold,
        }
        # only when set: configs of today's layers stay as they were
        for key in ("value_range", "max_value", "bits"):
            if getattr(self.quantizer, key) is not None:
                config[key] = getattr(self.quantizer, key)
        return config


@tf.keras.utils.register_keras_serializable(package="quantens")
class SwitchableBatchNormalization(tf.keras.layers.Layer):
    """Batch normalization with its own statistics and affine per bit-width.

    Members see differently quantized activations, so their statistics differ;
    one BN per member (switchable BN, Any-Precision DNNs) keeps each member's
    own. With `shared=True` all members use one BN.

    Arguments:
        bit_widths: the members' bit-widths.
        shared: one BN for all members instead of one per member.
        **kwargs: passed to every `tf.keras.layers.BatchNormalization` (e.g.
            `momentum`, `epsilon`, `synchronized`); `name`, `dtype` and
            `trainable` configure this layer.

    ```python
    import numpy as np
    import quantens

    bn = quantens.SwitchableBatchNormalization(bit_widths=(32, 1))
    with quantens.bits(1):
        y = bn(np.ones((2, 3), "float32"), training=True)
    assert len(bn.weights) == 8  # gamma, beta, mean, variance per member
    ```
    """

    _OWN_KWARGS = ("name", "dtype", "trainable", "input_shape", "batch_input_shape")

    def __init__(self, bit_widths=BIT_WIDTHS, shared: bool = False, **kwargs):
        own = {k: kwargs.pop(k) for k in self._OWN_KWARGS if k in kwargs}
        super().__init__(**own)
        self.bit_widths = validate_bit_widths(bit_widths)
        self.shared = bool(shared)
        self.bn_config = dict(kwargs)
        keys = ("shared",) if self.shared else self.bit_widths
        self.branches = {
            str(key): tf.keras.layers.BatchNormalization(
                name=f"bn_{key}", dtype=self.dtype_policy, **self.bn_config
            )
            for key in keys
        }

    def build(self, input_shape):
        for branch in self.branches.values():
            with tf.name_scope(branch.name):
                branch.build(input_shape)
        super().build(input_shape)

    def branch(self, bits: int | None = None) -> tf.keras.layers.BatchNormalization:
        """The BN used at `bits` (default: the active bit-width, else the highest)."""
        if bits is None:
            bits = active_bits() or self.bit_widths[0]
        if bits not in self.bit_widths:
            raise ValueError(
                f"{self.name} has no member with {bits} bits; its bit-widths are "
                f"{' '.join(map(str, self.bit_widths))}"
            )
        return self.branches["shared" if self.shared else str(bits)]

    bits_follow = "inputs"  # in a mix: the bits of the layers feeding it (quantens.bits.mix_bits)

    def call(self, inputs, training=None):
        with layer_scope(self):
            return self.branch()(inputs, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def fixed_layer(self, bits: int) -> tf.keras.layers.Layer:
        """A plain BatchNormalization configured like member `bits`'s branch (weights not copied)."""
        branch = self.branch(bits)
        return tf.keras.layers.BatchNormalization.from_config(
            {**branch.get_config(), "name": self.name}
        )

    def fixed_weights(self, bits: int) -> list:
        return self.branch(bits).get_weights()

    def get_config(self):
        return {
            **super().get_config(),
            "bit_widths": list(self.bit_widths),
            "shared": self.shared,
            **self.bn_config,
        }


__all__ = [*_NOT_KINDS, *sorted(
    name for name, value in dict(globals()).items()
    if isinstance(value, type) and issubclass(value, SwitchableKernelLayer)
    and value is not SwitchableKernelLayer and value.__module__ == __name__
)]
"""The public names, the layer kinds (every `SwitchableKernelLayer` defined here) included."""
