"""Convert a float Keras model into a shared-weight ensemble: `quantize_model`.

`quantize_model(model, bit_widths)` rebuilds a functional or Sequential model
from quantens' switchable layers, layer by layer, with the original's weights:

| original layer                          | converted layer                                     |
|-----------------------------------------|-----------------------------------------------------|
| `Conv2D`                                | `QuantConv2D`: one kernel, `WeightQuantizer`        |
| `DepthwiseConv2D`                       | `quantens.layers.QuantDepthwiseConv2D`              |
| `SeparableConv2D`                       | `quantens.layers.QuantSeparableConv2D` (one layer:  |
|                                         | one depthwise and one pointwise kernel)             |
| `Dense`                                 | `QuantDense`                                        |
| `BatchNormalization`                    | `SwitchableBatchNormalization`, every member's BN   |
|                                         | starting from the original's statistics             |
| `ReLU`, `ReLU(6)`, `Activation("relu")`, | `QuantActivation` (see below)                      |
| `Activation("relu6")`, a fused relu     |                                                     |
| other layers without weights, `Normalization` | kept as they are (a copy)                     |

Every converted layer keeps its name. Kernels are quantized by a switchable
`WeightQuantizer`: by default on the narrow-range grid with a max-abs scale per
output channel (`weight_quantization="narrow"`; sign at 1 bit, identity at
32), which keeps each kernel's scale, so that every member's BN, started from
the original's statistics, still fits (DoReFa's per-tensor tanh normalisation
rescales a kernel 2-10x: an 8-bit DoReFa member of a trained MobileNetV2
agreed with it on 14% of its test images, the narrow grid on 99%). Depthwise
kernels stay at `depthwise_bits` (8) or more in every member. Biases stay full
precision. Convolutions and dense layers do not quantize their inputs
(`input_quantizer=None`): activations are quantized where the original has a
ReLU-like activation, by a `QuantActivation` in its place holding a
`ClipActivation`: a clip value α_b per member (a switchable clipping level).
At 32 bits it computes exactly the original activation (relu, or relu capped
at `max_value`: relu6); member b clips to [0, α_b] and rounds to 2^b - 1 steps
of α_b / (2^b - 1), with straight-through gradients inside [0, α_b]:

- α_b starts at `quantens.quantizers.default_clip_value(b, cap)`: a ReLU6 keeps
  its [0, 6] from 4 bits up, while 3-, 2- and 1-bit members get [0, 4],
  [0, 2] and [0, 1] (a 1-bit member on [0, 6] thresholds at 3, about three
  standard deviations above the BN output before it: almost every activation
  is 0, whole channels are constant in a batch, and BN's backward pass
  multiplies the gradient by up to 1/sqrt(epsilon) per layer; a MobileNetV2
  ensemble with such a member had a NaN loss in its first epoch);
- `quantens.calibrate(ensemble, images)` sets every α_b (and member b's BN
  statistics) from a few hundred real inputs: what makes a converted trained
  model good before any training;
- every α_b is trained with member b's loss (PACT; `learn_ranges=False`:
  only `calibrate` sets them);
- `relu_range=r` instead gives every member [0, r] ([0, min(cap, r)]).

A fused activation (`Conv2D(..., activation="relu")`) becomes its own
`QuantActivation` named `<layer>_relu` (or `_relu6`) after the layer. Other
activations inside the model (sigmoid, swish, softmax, leaky relu, `ReLU` with
a threshold or negative slope), fused or not, are kept as they are, in full
precision.

The output must be logits (quantens trains with a from-logits cross-entropy):
`logits_model` checks every output and removes a final softmax (a `Softmax` or
`Activation("softmax")` layer, the last layer's `activation="softmax"`, the last
layer of a nested model, a `tf.nn.softmax` op), with a `SoftmaxRemovedWarning`:
the converted model outputs the logits the original fed into its softmax. An
output that cannot be told to be logits (a sigmoid, a relu, a `Lambda`, an
unknown layer or TF op at the end) is a `ConfigError` naming the layer.

Tensors that are not the output of a ReLU-like activation (the input image,
residual sums, MobileNetV2's linear bottlenecks, pooled features, the logits)
are NOT quantized: they stay full precision in every member, and a layer that
reads one sees full-precision inputs. Their range is not known from the graph
(they are signed and unbounded), and the linear bottlenecks are what keeps
MobileNetV2 accurate; the quantized members are quantized in their weights and
in every ReLU-like activation.

Nested models (a functional or Sequential model used as a layer) are
flattened: their layers join the converted model under their own names (which
must then be unique), and a `training=` argument of the call is passed on to
their layers.

The precision `policy` (see `quantize_model`) fixes some layers' precision in
every member; by default the first convolution and the last `Dense` layer
stay full precision, as ResNetE's stem and classifier.

```python
import numpy as np
import quantens  # before TensorFlow: selects tf-keras
import tensorflow as tf

inputs = tf.keras.Input((8, 8, 3))
x = tf.keras.layers.Conv2D(8, 3, name="stem_conv")(inputs)
x = tf.keras.layers.BatchNormalization(name="stem_bn")(x)
x = tf.keras.layers.ReLU(6.0, name="stem_relu")(x)
x = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
x = tf.keras.layers.GlobalAveragePooling2D()(x)
outputs = tf.keras.layers.Dense(10, name="logits")(x)
model = tf.keras.Model(inputs, outputs)

bits = (32, 4, 1)
converted = quantens.quantize_model(model, bits)
x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
with quantens.bits(32):
    np.testing.assert_allclose(converted(x), model(x), atol=1e-5)
assert isinstance(converted.get_layer("dw_relu"), quantens.QuantActivation)
ensemble = quantens.QuantEnsemble(converted, bits)
binary = ensemble.member(1)  # a plain larq model of the 1-bit member
```
"""

from __future__ import annotations

import collections
import fnmatch
import math
import numbers
import warnings
from collections.abc import Callable, Mapping

import larq as lq
import numpy as np
import tensorflow as tf

from quantens import keras_graph, registry
from quantens.bits import check_bit_width
from quantens.checks import check_model_io
from quantens.defaults import (
    BIT_WIDTHS,
    CONVERTED_WEIGHT_QUANTIZATION,
    FULL_PRECISION,
    WEIGHT_QUANTIZATIONS,
)
from quantens.ensemble import check_bit_widths
from quantens.errors import ConfigError, UsageError
from quantens.layers import (
    QuantActivation,
    SwitchableBatchNormalization,
)
from quantens.quantizers import ClipActivation, WeightQuantizer

__all__ = [
    "Policy", "QUANTIZER_OPTIONS", "SUPPORTED", "SoftmaxRemovedWarning", "default_policy",
    "logits_model", "quantize_model", "supported_layers",
]


def supported_layers() -> str:
    """What `quantize_model` converts and keeps (the kernel layers from `quantens.registry`)."""
    return (
        f"quantize_model converts {registry.kernel_layer_names()}, "
        "BatchNormalization and ReLU-like activations, and keeps layers without weights "
        "and Normalization"
    )


SUPPORTED = supported_layers()  # the layers registered when quantens.convert loads

QUANTIZER_OPTIONS = {
    "weight_quantization": CONVERTED_WEIGHT_QUANTIZATION,
    "relu_range": None,
    "learn_ranges": True,
    "depthwise_bits": 8,
    "share_bn": False,
    "sync_bn": False,
}
"""`quantize_model`'s `**quantizer_options` and their defaults:

- `weight_quantization`: `narrow` (the default: a max-abs scale per output
  channel keeps every kernel's scale, so each member's BN, started from the
  original's statistics, still fits), `dorefa` (a per-tensor tanh
  normalisation that rescales each kernel: run `quantens.calibrate` to
  re-estimate the members' BN statistics) or `identity` (full-precision
  weights in every member);
- `relu_range`: one clip value for every k-bit member: [0, relu_range] for a
  relu, [0, min(cap, relu_range)] for a capped relu such as ReLU6. None (the
  default): a clip value per member, `quantens.quantizers.default_clip_value`
  until `quantens.calibrate` sets it from data;
- `learn_ranges`: every member's clip values are trained with its own loss
  (PACT's gradient; the default: on a converted MobileNetV2 fine-tuned 10
  epochs, learned ranges took the 2-bit member from 85% to 93% and the 32-,
  8- and 4-bit members from 92-93% to 97%); False: they change only by
  `quantens.calibrate`;
- `depthwise_bits`: depthwise convolutions (`DepthwiseConv2D`, and the
  depthwise step of `SeparableConv2D`) are quantized to at least this many
  bits in every member, their kernels and the ReLU-like activation they read
  (default 8: a 3x3 depthwise kernel mixes 9 values of one channel, and a
  MobileNetV2 whose 2-bit member had them at 2 bits reached 25% on digits
  after fine-tuning, 94% with them at 8 bits); None: the member's own bits;
- `share_bn`: one BN for all members instead of one per member;
- `sync_bn`: BN statistics synchronised across replicas (`synchronized=True`).
"""

Policy = Mapping[str, "int | None"] | Callable[[tf.keras.layers.Layer], "int | None"] | None

_KERNEL = "kernel"  # a layer of `quantens.registry`
_BN = "bn"
_ACT = "act"
_KEEP = "keep"
_NESTED = "nested"


def _describe(layer) -> str:
    return f"{layer.name!r} ({type(layer).__name__})"


def _kind(layer) -> str:
    """What `quantize_model` does with `layer`; ConfigError for what it cannot convert."""
    layers = tf.keras.layers
    if isinstance(layer, (lq.layers_base.BaseLayer, SwitchableBatchNormalization,
                          QuantActivation)):
        raise ConfigError(
            f"layer {_describe(layer)} is already quantized: {supported_layers()} of a float "
            "model"
        )
    if isinstance(layer, tf.keras.Model):
        if keras_graph.is_graph_network(layer):
            return _NESTED
        raise ConfigError(
            f"layer {_describe(layer)} is a subclassed model without a functional graph: "
            f"{supported_layers()}, in functional or Sequential models"
        )
    if isinstance(layer, (layers.RNN, layers.Wrapper)):
        raise ConfigError(
            f"layer {_describe(layer)} is not supported (recurrent and wrapper layers are "
            f"not): {supported_layers()}"
        )
    if registry.layer_entry_for(layer) is not None:
        return _KERNEL
    kind = {layers.BatchNormalization: _BN, layers.ReLU: _ACT,
            layers.Activation: _ACT}.get(type(layer))
    if kind is not None:
        return kind
    if layer.weights and not isinstance(layer, layers.Normalization):
        raise ConfigError(
            f"layer {_describe(layer)} has weights and is not supported: {supported_layers()}"
        )
    return _KEEP


def _relu_cap(activation) -> tuple[bool, float | None]:
    """(is ReLU-like, cap) of an activation function (None: uncapped relu)."""
    if activation in (tf.keras.activations.relu, tf.nn.relu):
        return True, None
    if activation is tf.nn.relu6:  # what "relu6" resolves to
        return True, 6.0
    return False, None


def _relu_layer_cap(layer) -> tuple[bool, float | None]:
    """(is ReLU-like, cap) of a `ReLU` or `Activation` layer."""
    if isinstance(layer, tf.keras.layers.ReLU):
        if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
            return False, None
        if layer.max_value is None:
            return True, None
        cap = float(layer.max_value)
        if math.isinf(cap) and cap > 0:  # ReLU(max_value=inf) is the uncapped relu
            return True, None
        return (True, cap) if math.isfinite(cap) and cap > 0 else (False, None)
    return _relu_cap(layer.activation)


_PASS_THROUGH = (tf.keras.layers.ZeroPadding2D, tf.keras.layers.Dropout,
                 tf.keras.layers.SpatialDropout2D, tf.keras.layers.Cropping2D)
"""Layers between an activation and the convolution that reads it, values unchanged."""


def _producer(layer):
    """The layer whose output `layer` reads, through padding and dropout; None if unclear."""
    nodes = keras_graph.inbound_nodes(layer)
    while len(nodes) == 1:
        inbound = tf.nest.flatten(nodes[0].inbound_layers)
        if len(inbound) != 1:
            return None
        layer = inbound[0]
        if not isinstance(layer, _PASS_THROUGH):
            return layer
        nodes = keras_graph.inbound_nodes(layer)
    return None


def _check_graph_model(model, what: str = "quantize_model") -> None:
    if not isinstance(model, tf.keras.Model):
        keras3 = type(model).__module__.split(".")[0] == "keras"
        raise UsageError(
            f"{what} needs a tf.keras functional or Sequential model, got "
            f"{type(model).__module__}.{type(model).__name__}"
            + ("; this is a Keras 3 model: build it with tf.keras after `import quantens` "
               "(tf-keras, the Keras 2 API larq needs)" if keras3 else "")
        )
    if not keras_graph.is_graph_network(model):
        raise ConfigError(
            f"model {_describe(model)} is a subclassed (or unbuilt Sequential) model without a "
            f"functional graph: {what} needs a functional or Sequential model with "
            "an input shape"
        )


# ------------------------------------------------------------- logits at the output


class SoftmaxRemovedWarning(UserWarning):
    """A model's final softmax was removed: quantens trains on logits."""


def _layer_classes(*names: str) -> tuple:
    return tuple(getattr(tf.keras.layers, n) for n in names if hasattr(tf.keras.layers, n))


_AFFINE_OUTPUT = _layer_classes(
    "Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D",
    "SeparableConv1D", "SeparableConv2D", "LocallyConnected1D", "LocallyConnected2D",
    "BatchNormalization", "LayerNormalization")
"""Layers whose output is logits when they have no activation (or a linear one)."""

_IDENTITY_LAYERS = _layer_classes("Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout",
                                  "ActivityRegularization", "Identity")
"""The identity at inference: may stand between a final softmax and the output."""

_RESHAPE_LAYERS = _layer_classes("Flatten", "Reshape")
"""Shape only: between a final softmax and the output while the last (class) axis stays."""

_LOGITS_LAYERS = _layer_classes(
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "ZeroPadding1D", "ZeroPadding2D",
    "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "Permute", "Rescaling",
    "Normalization", "Add", "Subtract", "Average", "Maximum", "Minimum", "Concatenate")
"""Logits in, logits out (linear maps, pooling, selection, shape): may end a model, but
not stand after a softmax (which would then not be the model's last step)."""

_SOFTMAX_OPS = ("nn.softmax", "math.softmax")
_IDENTITY_OPS = ("identity",)
_RESHAPE_OPS = ("reshape", "squeeze", "compat.v1.squeeze", "expand_dims",
                "compat.v1.expand_dims")
_LOGITS_OPS = ("math.reduce_mean", "math.reduce_sum", "math.reduce_max", "math.negative",
               "nn.log_softmax", "math.log_softmax", "nn.bias_add", "concat",
               "__operators__.getitem", "compat.v1.gather", "gather")
_SUM_OPS = ("__operators__.add", "math.add", "math.subtract", "math.add_n")
"""Logits + logits (or + a constant): every tensor argument must be logits."""
_SCALE_OPS = ("math.multiply", "math.truediv", "math.divide")
"""Logits times (or divided by) a constant: logits; two model tensors are not."""

_IDENTITY, _THROUGH, _SOFTMAX, _FUSED_SOFTMAX, _LOGITS = (
    "identity", "through", "softmax", "fused softmax", "logits")
"""What a layer does to logits (`_role`); "" for what cannot give logits."""

_LOGITS_HINT = ("quantens trains on logits: end the model in a layer without activation "
                "(e.g. Dense(classes)) or in a softmax (removed for you)")


def _is_softmax(function) -> bool:
    return function is tf.keras.activations.softmax or function is tf.nn.softmax


def _is_linear(function) -> bool:
    return function is None or function is tf.keras.activations.linear


def _function_name(function) -> str:
    return getattr(function, "__name__", type(function).__name__)


def _op_name(layer) -> str | None:
    """The TF function a `TFOpLambda` layer records (`"nn.softmax"`), else None."""
    symbol = getattr(layer, "symbol", None)
    return symbol if isinstance(symbol, str) and hasattr(layer, "function") else None


def _last_axis(axis, rank) -> bool:
    """Whether a softmax `axis` of a tensor of `rank` is its last axis (the classes)."""
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return False
        axis = axis[0]
    if axis is None:
        return True
    try:
        axis = int(axis)
    except (TypeError, ValueError):
        return False
    return axis == -1 or (rank is not None and axis == rank - 1)


def _keeps_last_axis(node) -> bool:
    before, after = node.keras_inputs[0].shape, tf.nest.flatten(node.outputs)[0].shape
    return (before.rank is not None and after.rank is not None and before.rank > 0
            and after.rank > 0 and before[-1] is not None and before[-1] == after[-1])


def _data_inputs(node) -> list:
    """The model tensors of a TF op's first argument (its data; later ones are options)."""
    ids = {id(x) for x in node.keras_inputs}
    first = node.call_args[0] if node.call_args else None
    return [x for x in tf.nest.flatten(first) if id(x) in ids]


def _what(layer) -> str:
    """A layer as an error names it: its name, class and what it computes."""
    op = _op_name(layer)
    if op is not None:
        return f"{layer.name!r} (the TF op tf.{op})"
    activation = getattr(layer, "activation", None)
    if isinstance(layer, tf.keras.layers.Activation):
        return f"{layer.name!r} (Activation {_function_name(activation)!r})"
    if activation is not None and not _is_linear(activation):
        return (f"{layer.name!r} ({type(layer).__name__} with "
                f"activation={_function_name(activation)!r})")
    return _describe(layer)


def _role(layer, node) -> tuple[str, list]:
    """What `layer` (called at `node`) does to logits, and the tensors to follow.

    "" where its output cannot be told to be logits (a sigmoid, a `Lambda`, an input).
    """
    layers = tf.keras.layers
    op = _op_name(layer)
    if op is not None:
        if op in _SOFTMAX_OPS:
            axis = node.call_kwargs.get("axis", node.call_args[1] if len(node.call_args) > 1
                                        else -1)
            if _last_axis(axis, node.keras_inputs[0].shape.rank):
                return _SOFTMAX, _data_inputs(node)
        elif op in _IDENTITY_OPS + _RESHAPE_OPS and len(_data_inputs(node)) == 1:
            keeps = op in _IDENTITY_OPS or _keeps_last_axis(node)
            return (_IDENTITY if keeps else _THROUGH), _data_inputs(node)
        elif op in _LOGITS_OPS:
            return _THROUGH, _data_inputs(node)
        elif op in _SUM_OPS:
            return _THROUGH, list(node.keras_inputs)
        elif op in _SCALE_OPS and len(node.keras_inputs) == 1:
            return _THROUGH, list(node.keras_inputs)
        return "", []
    inputs = list(node.keras_inputs)
    if isinstance(layer, layers.Softmax):
        rank = inputs[0].shape.rank if len(inputs) == 1 else None
        return (_SOFTMAX if _last_axis(layer.axis, rank) else ""), inputs
    if isinstance(layer, layers.Activation):
        if _is_softmax(layer.activation):
            return _SOFTMAX, inputs
        if _is_linear(layer.activation):
            return _IDENTITY, inputs
        return "", inputs
    if isinstance(layer, _AFFINE_OUTPUT):
        activation = getattr(layer, "activation", None)
        if _is_linear(activation):
            return _LOGITS, []
        return (_FUSED_SOFTMAX if _is_softmax(activation) else ""), inputs
    if isinstance(layer, _IDENTITY_LAYERS) and len(inputs) == 1:
        return _IDENTITY, inputs
    if isinstance(layer, _RESHAPE_LAYERS) and len(inputs) == 1:
        return (_IDENTITY if _keeps_last_axis(node) else _THROUGH), inputs
    if isinstance(layer, _LOGITS_LAYERS):
        return _THROUGH, inputs
    return "", inputs


def _call_again(layer, node, replace: dict):
    """Calls `layer` with `node`'s arguments, the tensors in `replace` (by id) replaced."""
    values = {keras_graph.tensor_id(x): replace.get(id(x), x) for x in node.keras_inputs}
    return keras_graph.call_node(layer, node, values)


def _copy_layer(layer, **changes):
    config = {**layer.get_config(), **changes}
    return layer.__class__.from_config(config)


class _LogitsFinder:
    """Follows a model's outputs back to their logits; rebuilds what a softmax removal changes.

    Nothing of the model is changed: a layer that must compute something else (a
    fused softmax made linear, a layer after a removed softmax) is a copy, called on
    the original's tensors.
    """

    def __init__(self, model):
        self.model = model
        self.removed: list[str] = []
        self._seen: dict = {}
        self._inside: list = []  # (nested model, its node): the graphs being walked

    def logits(self, tensor, reader=None):
        """The tensor of logits that replaces `tensor` (itself when nothing changes).

        `reader`: the first layer between `tensor` and the model's output that is not
        the identity for a softmax (None: there is none, a softmax here is final).
        """
        key = (id(tensor), reader is None, id(self._inside[-1][1]) if self._inside else None)
        if key not in self._seen:
            self._seen[key] = self._logits(tensor, reader)
        return self._seen[key]

    def _logits(self, tensor, reader):
        layer, node, tensor_index = keras_graph.producer_call(tensor)
        if isinstance(layer, tf.keras.Model):
            return self._nested(layer, node, tensor_index, reader)
        if isinstance(layer, tf.keras.layers.InputLayer) and self._inside:
            return self._outside(tensor, reader)
        role, inputs = _role(layer, node)
        if role in (_SOFTMAX, _FUSED_SOFTMAX):
            if reader is not None:
                raise ConfigError(
                    f"model {self.model.name!r}: the softmax of {_what(layer)} is not its last "
                    f"step ({_what(reader)} reads the probabilities), so it cannot be removed; "
                    f"{_LOGITS_HINT}"
                )
            self.removed.append(layer.name)
            if role == _SOFTMAX:
                return inputs[0]
            linear = _copy_layer(layer, activation="linear")
            y = _call_again(linear, node, {})
            linear.set_weights(layer.get_weights())
            return tf.nest.flatten(y)[tensor_index]
        if role == _LOGITS:
            return tensor
        if role == _IDENTITY:
            new = self.logits(inputs[0], reader)
            if new is inputs[0]:
                return tensor
            copy = _copy_layer(layer)
            y = _call_again(copy, node, {id(inputs[0]): new})
            if layer.weights:
                copy.set_weights(layer.get_weights())
            return tf.nest.flatten(y)[tensor_index]
        if role == _THROUGH and inputs:
            for x in inputs:  # a softmax below raises: nothing changes
                self.logits(x, layer)
            return tensor
        raise ConfigError(
            f"model {self.model.name!r} does not end in logits: its output comes from "
            f"{_what(layer)}; {_LOGITS_HINT}"
        )

    def _nested(self, inner, node, index: int, reader):
        if not keras_graph.is_graph_network(inner):
            raise ConfigError(
                f"model {self.model.name!r}: its output comes from {_describe(inner)}, a "
                "subclassed model whose layers quantens cannot see; build it as a functional "
                "or Sequential model"
            )
        inside = inner.outputs[index]
        self._inside.append((inner, node))
        try:
            new = self.logits(inside, reader)
        finally:
            self._inside.pop()
        if new is inside:
            return tf.nest.flatten(node.outputs)[index]
        outputs = list(inner.outputs)
        outputs[index] = new
        rebuilt = tf.keras.Model(
            keras_graph.nested_inputs(inner),
            tf.nest.pack_sequence_as(keras_graph.nested_outputs(inner), outputs),
            name=inner.name,
        )
        return tf.nest.flatten(_call_again(rebuilt, node, {}))[index]

    def _outside(self, tensor, reader):
        """An input of the nested model being walked: follow what the outer graph feeds it.

        A softmax out there is not removed: the nested model's layers read it.
        """
        inner, node = self._inside.pop()
        try:
            position = [id(x) for x in inner.inputs].index(id(tensor))
            self.logits(tf.nest.flatten(node.keras_inputs)[position], reader or inner)
        finally:
            self._inside.append((inner, node))
        return tensor


def logits_model(model: tf.keras.Model) -> tuple[tf.keras.Model, tuple[str, ...]]:
    """`model` without a final softmax, and the names of the layers whose softmax was removed.

    quantens trains on logits (a from-logits cross-entropy). A model that ends in
    a softmax computes the softmax of logits: the returned model outputs those
    logits. A final softmax is found wherever it is computed: a `Softmax` or
    `Activation("softmax")` layer, the `activation="softmax"` of the last layer,
    the last layer of a nested model (a functional or Sequential model used as a
    layer, at any depth), or a TF op (`tf.nn.softmax(x)`, `tf.keras.activations.softmax`)
    on the last axis, followed by nothing but layers that are the identity for it
    (`Dropout`, `Flatten` or `Reshape` that keep the class axis, a linear
    `Activation`). Without one, the model is returned as it is (the same object)
    with `()`. `model` is not changed: the returned model shares its layers but
    for the ones that change (a fused softmax: a copy of the layer without it).

    Every output must be logits: the output of a layer without activation that
    computes them (`Dense`, a convolution, `EinsumDense`, a normalization), seen
    through layers that map logits to logits (dropout, reshapes, pooling,
    padding, `Add`, `Rescaling`, a nested model's output, `x * constant`, ...).

    Raises:
        ConfigError: an output that cannot be told to be logits (a sigmoid, a relu, a
            `Lambda`, an unknown layer or TF op: the message names the layer), or a
            softmax that is not the last step (pooling after it); a subclassed model.
        UsageError: `model` is not a tf.keras model.

    ```python
    import numpy as np
    import quantens  # before TensorFlow: selects tf-keras
    import tensorflow as tf
    from quantens.convert import logits_model

    inputs = tf.keras.Input((4,))
    logits = tf.keras.layers.Dense(3, name="logits")(inputs)
    model = tf.keras.Model(inputs, tf.nn.softmax(logits))
    plain, removed = logits_model(model)
    x = np.ones((1, 4), "float32")
    np.testing.assert_allclose(tf.nn.softmax(plain(x)), model(x), atol=1e-6)
    assert removed == (model.layers[-1].name,)  # "tf.nn.softmax", the TF op's layer
    assert logits_model(plain) == (plain, ())
    ```
    """
    _check_graph_model(model, "logits_model")
    finder = _LogitsFinder(model)
    outputs = [finder.logits(x) for x in model.outputs]
    if not finder.removed:
        return model, ()
    nested_outputs = keras_graph.nested_outputs(model)
    plain = tf.keras.Model(keras_graph.nested_inputs(model),
                           tf.nest.pack_sequence_as(nested_outputs, outputs), name=model.name)
    return plain, tuple(finder.removed)


class _Unit:
    """One thing the policy decides on: a kernel layer or a (possibly fused) activation."""

    def __init__(self, name: str, layer, kind: str):
        self.name, self.layer, self.kind = name, layer, kind


class _Plan:
    """The flattened layers of a model, checked, and the units the policy decides on."""

    def __init__(self, model):
        self.names: set[str] = set()
        self.layers: list = []  # (layer, kind), inputs first, nested models flattened
        self._calls: collections.Counter = collections.Counter()
        self._visit(model, top=True)
        self.units: list[_Unit] = []
        self.fused: dict[int, tuple[str, float | None]] = {}  # id(layer) -> (name, cap)
        for layer, kind in self.layers:
            if kind == _KERNEL:
                self.units.append(_Unit(layer.name, layer, registry.layer_entry_for(layer).role))
                relu_like, cap = _relu_cap(layer.activation)
                if relu_like:
                    function = "relu" if cap is None else "relu6"
                    name = self._unique(f"{layer.name}_{function}")
                    self.fused[id(layer)] = (name, cap)
                    # the policy sees a fused activation as the layer it becomes
                    standin = tf.keras.layers.Activation(function, name=name)
                    self.units.append(_Unit(name, standin, _ACT))
            elif kind == _ACT and _relu_layer_cap(layer)[0]:
                self.units.append(_Unit(layer.name, layer, _ACT))
        self.feeds_depthwise = {self._activation_name(producer) for layer, kind in self.layers
                                if kind == _KERNEL and registry.layer_entry_for(layer).depthwise
                                for producer in [_producer(layer)] if producer is not None}
        self.feeds_depthwise.discard(None)

    def _activation_name(self, layer) -> str | None:
        """The name of the quantized activation `layer` ends in (a fused one's), or None."""
        if id(layer) in self.fused:
            return self.fused[id(layer)][0]
        if isinstance(layer, (tf.keras.layers.ReLU, tf.keras.layers.Activation)) \
                and _relu_layer_cap(layer)[0]:
            return layer.name
        return None

    def _unique(self, base: str) -> str:
        name, i = base, 0
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def _visit(self, model, top: bool = False) -> None:
        if top:  # a nested model's inputs become the outer tensors: no layer of their own
            for x in model.inputs:
                self._add_name(keras_graph.producer(x), model)
        for node in keras_graph.network_nodes(model):
            layer = node.layer
            self._calls[id(layer)] += 1
            if self._calls[id(layer)] > 1:
                raise ConfigError(
                    f"layer {_describe(layer)} is called more than once (a shared layer): "
                    "quantize_model needs every layer called once; give each call its own layer"
                )
            kind = _kind(layer)
            if kind == _NESTED:
                self._visit(layer)
                continue
            self._add_name(layer, model)
            self.layers.append((layer, kind))

    def _add_name(self, layer, owner) -> None:
        if layer.name in self.names:
            raise ConfigError(
                f"layer name {layer.name!r} appears twice once nested model {owner.name!r} is "
                "flattened: quantize_model needs unique layer names; rename one"
            )
        self.names.add(layer.name)


def default_policy(model: tf.keras.Model) -> dict[str, int]:
    """The default precision policy: the first convolution and the last `Dense` at 32 bits.

    The layers of ResNetE's stem and classifier, which stay full precision in
    every member. A model without `Dense` keeps its last convolution (a fully
    convolutional classifier) instead. Combine it with your own patterns:
    `policy={**default_policy(model), "block_*": 8}`.

    ```python
    from quantens.convert import default_policy  # before TensorFlow: selects tf-keras
    import tensorflow as tf

    model = tf.keras.Sequential([
        tf.keras.layers.Conv2D(4, 3, input_shape=(8, 8, 1), name="first"),
        tf.keras.layers.Conv2D(4, 3, name="second"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10, name="classifier"),
    ])
    assert default_policy(model) == {"first": 32, "classifier": 32}
    ```
    """
    _check_graph_model(model)
    return _default_policy(_Plan(model).units)


def _default_policy(units) -> dict[str, int]:
    convs = [u.name for u in units if u.kind == registry.CONV]
    dense = [u.name for u in units if u.kind == registry.DENSE]
    chosen = convs[:1] + (dense[-1:] or convs[-1:])
    return {name: FULL_PRECISION for name in chosen}


def _policy_bits(value, what: str) -> int | None:
    if value is None:
        return None
    try:
        return check_bit_width(value, "fixed bit-width")
    except ValueError as error:
        raise UsageError(f"policy for {what}: {error}") from None


def _resolve_policy(policy: Policy, plan: _Plan) -> dict[str, int | None]:
    """Fixed bit-width (or None: follow the member) per unit name."""
    if policy is None:
        policy = _default_policy(plan.units)
    if callable(policy) and not isinstance(policy, Mapping):
        return {u.name: _policy_bits(policy(u.layer), f"layer {u.name!r}") for u in plan.units}
    if not isinstance(policy, Mapping):
        raise UsageError(
            f"policy must map layer-name patterns to bit-widths or be a callable "
            f"layer -> bits, got {type(policy).__name__}"
        )
    patterns = {str(p): _policy_bits(v, f"pattern {p!r}") for p, v in policy.items()}
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in plan.names):
            raise UsageError(f"policy pattern {pattern!r} matches no layer of the model")
    resolved = {}
    for unit in plan.units:
        matches = [b for p, b in patterns.items() if fnmatch.fnmatchcase(unit.name, p)]
        resolved[unit.name] = matches[0] if matches else None
    return resolved


class _Builder:
    """Calls the converted layers on new tensors, in the original's order."""

    def __init__(self, plan: _Plan, bit_widths, fixed_bits, options):
        self.plan = plan
        self.bit_widths = bit_widths
        self.fixed_bits = fixed_bits
        self.weight_method = options["weight_quantization"]
        self.relu_range = options["relu_range"]
        self.learn_ranges = options["learn_ranges"]
        self.depthwise_bits = options["depthwise_bits"]
        self.share_bn = options["share_bn"]
        self.sync_bn = options["sync_bn"]

    def run(self, model, inputs, training=None) -> list:
        values = {keras_graph.tensor_id(x): y for x, y in zip(model.inputs, inputs, strict=True)}
        for node in keras_graph.network_nodes(model):
            outputs = self.call(node.layer, node, values, training)
            for x_id, y in zip(keras_graph.node_output_ids(node), tf.nest.flatten(outputs),
                               strict=True):
                values[x_id] = y
        return [values[keras_graph.tensor_id(x)] for x in model.outputs]

    def call(self, layer, node, values, training):
        kind = _kind(layer)
        if kind == _NESTED:
            args, kwargs = keras_graph.node_arguments(node, values)
            kwargs = dict(kwargs)
            inner_training = kwargs.pop("training", training)
            flat = tf.nest.flatten(args[0] if len(args) == 1 else args)
            if len(flat) != len(layer.inputs):
                raise ConfigError(
                    f"nested model {_describe(layer)} is called with {len(flat)} tensors for "
                    f"its {len(layer.inputs)} inputs"
                )
            outputs = self.run(layer, flat, training=inner_training)
            return tf.nest.pack_sequence_as(keras_graph.nested_outputs(layer), outputs)
        new, after = self.convert(layer, kind)
        y = keras_graph.call_node(new, node, values, training=training)
        if kind == _BN:
            for branch in new.branches.values():
                branch.set_weights(layer.get_weights())
        elif not isinstance(new, QuantActivation):  # its clip values are its own
            new.set_weights(layer.get_weights())
        return after(y) if after is not None else y

    def activation(self, name: str, cap: float | None, dtype) -> QuantActivation:
        clip = None  # a default per member
        if self.relu_range is not None:
            clip = self.relu_range if cap is None else min(cap, self.relu_range)
        floor = self.depthwise_bits if name in self.plan.feeds_depthwise else None
        quantizer = ClipActivation(self.bit_widths, clip=clip, max_value=cap,
                                   learned=self.learn_ranges, bits=self.fixed_bits.get(name),
                                   min_bits=floor)
        return QuantActivation(quantizer=quantizer, name=name, dtype=dtype)

    def convert(self, layer, kind: str):
        """(the new layer, a fused activation layer to call after it or None)."""
        config = layer.get_config()
        if kind == _KERNEL:
            entry = registry.layer_entry_for(layer)
            cls, keys = entry.switchable_class, entry.kernels
            after = None
            if id(layer) in self.plan.fused:
                name, cap = self.plan.fused[id(layer)]
                config["activation"] = "linear"
                after = self.activation(name, cap, config.get("dtype"))
            bits = self.fixed_bits.get(layer.name)
            for key in keys:
                floor = self.depthwise_bits if key == "depthwise_quantizer" else None
                config[key] = WeightQuantizer(self.weight_method, bits=bits, min_bits=floor)
            return cls.from_config({**config, "input_quantizer": None}), after
        if kind == _BN:
            if self.sync_bn:  # not in a BatchNormalization's get_config: set it here
                config["synchronized"] = True
            return SwitchableBatchNormalization(self.bit_widths, shared=self.share_bn,
                                                **config), None
        if kind == _ACT:
            relu_like, cap = _relu_layer_cap(layer)
            if relu_like:
                return self.activation(layer.name, cap, config.get("dtype")), None
        return layer.__class__.from_config(config), None


def _check_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(QUANTIZER_OPTIONS))
    if unknown:
        raise UsageError(
            f"unknown quantizer option {unknown[0]!r}: choose from "
            f"{', '.join(QUANTIZER_OPTIONS)}"
        )
    options = {**QUANTIZER_OPTIONS, **options}
    if options["weight_quantization"] not in WEIGHT_QUANTIZATIONS:
        raise UsageError(
            f"unknown weight_quantization {options['weight_quantization']!r}: choose one of "
            f"{', '.join(WEIGHT_QUANTIZATIONS)}"
        )
    relu_range = options["relu_range"]
    if relu_range is not None:
        if isinstance(relu_range, bool) or not isinstance(relu_range, numbers.Real) \
                or not math.isfinite(relu_range) or not relu_range > 0:
            raise UsageError(
                f"relu_range must be a finite number > 0 (or None: a clip value per member), "
                f"got {relu_range!r}")
        options["relu_range"] = float(relu_range)
    if options["depthwise_bits"] is not None:
        try:
            options["depthwise_bits"] = check_bit_width(options["depthwise_bits"], "depthwise_bits")
        except ValueError as error:
            raise UsageError(f"{error} (or None: the member's own bits)") from None
    for name in ("learn_ranges", "share_bn", "sync_bn"):
        value = options[name]
        if not isinstance(value, (bool, np.bool_)):
            raise UsageError(f"{name} must be True or False, got {value!r}")
        options[name] = bool(value)
    return options


def _check_something_varies(model, plan: _Plan, fixed_bits: dict, bit_widths, options) -> None:
    """ConfigError when every member would compute the same function (nothing to quantize)."""
    if len(bit_widths) < 2:
        return
    weights_vary = options["weight_quantization"] != "identity"
    varying = [u for u in plan.units if fixed_bits.get(u.name) is None
               and (u.kind == _ACT or weights_vary)]
    if varying:
        return
    start = (f"model {model.name!r} has nothing to quantize: its members "
             f"{', '.join(map(str, bit_widths))} would all compute the same, because")
    if not plan.units:
        raise ConfigError(
            f"{start} it has no {_either(registry.kernel_layer_names())} layer and no "
            "ReLU-like activation (what quantize_model quantizes); convert a model with some"
        )
    free = [u for u in plan.units if fixed_bits.get(u.name) is None]
    if free:  # all of them kernels, under identity weights
        raise ConfigError(
            f"{start} weight_quantization='identity' keeps every kernel full precision and no "
            "ReLU-like activation follows the member; use weight_quantization='narrow' (the "
            "default)"
        )
    fixed = [u.name for u in plan.units][:6] + (["..."] if len(plan.units) > 6 else [])
    raise ConfigError(
        f"{start} the policy fixes the precision of every layer it could quantize "
        f"({', '.join(fixed)}; by default the first convolution and the last Dense stay at "
        "32 bits); pass a policy that leaves some to follow the member (policy={} fixes "
        "nothing)"
    )


def _either(names: str) -> str:
    """"A, B, C" as "A, B or C"."""
    head, _, last = names.rpartition(", ")
    return f"{head} or {last}" if head else last


def _new_input(x, input_shape: tuple[int, ...]):
    config = keras_graph.producer(x).get_config()
    return tf.keras.Input(
        batch_shape=(config["batch_input_shape"][0], *input_shape), dtype=config.get("dtype"),
        sparse=config.get("sparse", False), ragged=config.get("ragged", False),
        name=config["name"],
    )


def quantize_model(model: tf.keras.Model, bit_widths=BIT_WIDTHS, *, policy: Policy = None,
                   input_shape=None, **quantizer_options) -> tf.keras.Model:
    """A copy of a float functional or Sequential model made of switchable layers.

    The converted model holds one kernel per convolution / dense layer for
    every member, the original's weights, and per member a BN initialised
    from the original's; its 32-bit member computes what `model` computes (see
    the module docstring for what each layer becomes), in logits: a final
    softmax is removed (`logits_model`), with a `SoftmaxRemovedWarning`. Train
    it with `quantens.QuantEnsemble(converted, bit_widths)`; run member b with
    `quantens.bits(b)` or `ensemble.member(b)`. `model` itself is not changed.

    Arguments:
        model: a functional or Sequential Keras model (nested ones are flattened).
        bit_widths: the members, e.g. `(32, 8, 4, 2, 1)`.
        policy: which layers have a fixed precision in every member: a mapping of
            layer-name patterns (`fnmatch`, the first matching pattern wins) to
            a bit-width (32 = full precision; None = follow the member), or a
            callable `layer -> bits or None`. It applies to the layers that
            quantize something: convolutions and dense layers (their kernels)
            and ReLU-like activations (a fused one under its new name
            `<layer>_relu`, and given to a callable as an `Activation` layer of
            that name). None (the default) is `default_policy(model)`: the
            first convolution and the last `Dense` at 32 bits. A mapping
            replaces the default; `{}` fixes nothing. A layer fixed below 32
            bits is quantized in the 32-bit member too, which then no longer
            computes what `model` computes.
        input_shape: the input size without the batch axis, e.g. `(32, 32, 3)`,
            for a model saved for inputs of any size (`(None, None, 3)`): the
            converted model takes this size (a TFLite file needs a fixed one).
            Sizes the model fixes itself must agree.
        **quantizer_options: see `QUANTIZER_OPTIONS`: `weight_quantization`
            (`"narrow"`, `"dorefa"` or `"identity"`), `relu_range` (one clip
            value for every member instead of one per member),
            `learn_ranges` (train the clip values), `depthwise_bits` (the
            least precision of depthwise kernels, default 8), `share_bn` (one
            BN for all members), `sync_bn` (BN statistics synchronised across
            replicas).

    Raises (all `ValueError`s, one line each):
        UsageError: `model` is not a tf.keras model; bad `bit_widths`, policy,
            option name or option value.
        ConfigError: a subclassed model, a layer called more than once, a
            layer with weights it cannot convert (RNNs, `Conv3D`,
            `Conv2DTranspose`, `Embedding`, ...), an already quantized layer
            (the message names the layer); more than one input or output, an
            input of unknown size without `input_shape`, or an output that
            is not logits (`quantens.checks.check_model_io`, `logits_model`);
            nothing to quantize (no convolution, dense layer
            or ReLU-like activation follows the member: every member would
            compute the same).

    ```python
    import numpy as np
    import quantens  # before TensorFlow: selects tf-keras
    import tensorflow as tf

    model = tf.keras.Sequential([
        tf.keras.layers.Conv2D(8, 3, activation="relu", input_shape=(8, 8, 1), name="stem"),
        tf.keras.layers.Conv2D(8, 3, activation="relu6", name="conv"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10, name="logits"),
    ])
    converted = quantens.quantize_model(model, (32, 2))
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
    with quantens.bits(32):
        np.testing.assert_allclose(converted(x), model(x), atol=1e-5)

    fixed = quantens.quantize_model(model, (32, 2), policy={"stem": 32, "logits": 8})
    for b in (32, 2):
        with quantens.bits(b):
            assert fixed.get_layer("logits").kernel_quantizer.precision == 8
            assert fixed.get_layer("conv").kernel_quantizer.precision == b
    ```
    """
    bit_widths = check_bit_widths(bit_widths, "quantize_model")
    options = _check_options(quantizer_options)
    _check_graph_model(model)
    plan = _Plan(model)  # what cannot be converted, before looking at the output
    shape = check_model_io(model, "quantize_model", input_shape)
    model, removed = logits_model(model)
    if removed:
        plan = _Plan(model)
        warnings.warn(
            f"model {model.name!r}: removed the final softmax "
            f"({', '.join(map(repr, removed))}); quantens trains on logits: the converted "
            "model outputs them (softmax them for probabilities)",
            SoftmaxRemovedWarning, stacklevel=2,
        )
    fixed_bits = _resolve_policy(policy, plan)
    _check_something_varies(model, plan, fixed_bits, bit_widths, options)
    builder = _Builder(plan, bit_widths, fixed_bits, options)
    from quantens.ensemble import quiet_logger

    with quiet_logger("larq.layers_base"):  # "binary kernel without constraint"
        inputs = [_new_input(x, shape) for x in model.inputs]
        outputs = builder.run(model, inputs)
    nested_inputs = keras_graph.nested_inputs(model)
    nested_outputs = keras_graph.nested_outputs(model)
    return tf.keras.Model(
        tf.nest.pack_sequence_as(nested_inputs, inputs),
        tf.nest.pack_sequence_as(nested_outputs, outputs),
        name=model.name,
    )
