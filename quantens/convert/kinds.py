"""What `quantize_model` makes of each Keras layer: its kind, or why it cannot convert it.

A layer is a kernel layer of `quantens.registry` (`KERNEL`: it becomes the
switchable layer registered for it), a `BatchNormalization` (`BN`), a `ReLU`
or `Activation` (`ACT`: a `QuantActivation` where it is ReLU-like,
`relu_layer_cap`), a nested functional or Sequential model (`NESTED`: its
layers are flattened into the converted model) or a layer kept as it is
(`KEEP`: no weights, or `Normalization`). An already quantized layer, a
recurrent or wrapper layer, a subclassed model and any other layer with
weights are a `ConfigError` naming the layer and `supported_layers()`.

```python
import quantens  # before TensorFlow: selects tf-keras
import tensorflow as tf
from quantens.convert import kinds

assert kinds.layer_kind(tf.keras.layers.Conv2D(4, 3)) == kinds.KERNEL
assert kinds.layer_kind(tf.keras.layers.ReLU(6.0)) == kinds.ACT
assert kinds.relu_layer_cap(tf.keras.layers.ReLU(6.0)) == (True, 6.0)
assert "Conv2D" in kinds.supported_layers()
```
"""

from __future__ import annotations

import math

import tensorflow as tf

from quantens import keras_graph, registry
from quantens.errors import ConfigError, UsageError
from quantens.larq_hooks import is_larq_layer
from quantens.layers import (
    QuantActivation,
    SwitchableBatchNormalization,
)

__all__ = [
    "ACT", "BN", "KEEP", "KERNEL", "NESTED", "SUPPORTED", "check_graph_model", "describe",
    "layer_kind", "relu_cap", "relu_layer_cap", "source_layer", "supported_layers",
]


def supported_layers() -> str:
    """What `quantize_model` converts and keeps (the kernel layers from `quantens.registry`)."""
    return (
        f"quantize_model converts {registry.kernel_layer_names()}, "
        "BatchNormalization and ReLU-like activations, and keeps layers without weights "
        "and Normalization"
    )


SUPPORTED = supported_layers()  # the layers registered when quantens.convert loads

KERNEL = "kernel"  # a layer of `quantens.registry`
BN = "bn"
ACT = "act"
KEEP = "keep"
NESTED = "nested"


def describe(layer) -> str:
    """A layer (or model) as an error names it: `'conv' (Conv2D)`."""
    return f"{layer.name!r} ({type(layer).__name__})"


def layer_kind(layer) -> str:
    """What `quantize_model` does with `layer`; ConfigError for what it cannot convert."""
    layers = tf.keras.layers
    if is_larq_layer(layer) or isinstance(layer, (SwitchableBatchNormalization,
                                                  QuantActivation)):
        raise ConfigError(
            f"layer {describe(layer)} is already quantized: {supported_layers()} of a float "
            "model"
        )
    if isinstance(layer, tf.keras.Model):
        if keras_graph.is_graph_network(layer):
            return NESTED
        raise ConfigError(
            f"layer {describe(layer)} is a subclassed model without a functional graph: "
            f"{supported_layers()}, in functional or Sequential models"
        )
    if isinstance(layer, (layers.RNN, layers.Wrapper)):
        raise ConfigError(
            f"layer {describe(layer)} is not supported (recurrent and wrapper layers are "
            f"not): {supported_layers()}"
        )
    if registry.layer_entry_for(layer) is not None:
        return KERNEL
    kind = {layers.BatchNormalization: BN, layers.ReLU: ACT,
            layers.Activation: ACT}.get(type(layer))
    if kind is not None:
        return kind
    if layer.weights and not isinstance(layer, layers.Normalization):
        raise ConfigError(
            f"layer {describe(layer)} has weights and is not supported: {supported_layers()}"
        )
    return KEEP


def relu_cap(activation) -> tuple[bool, float | None]:
    """(is ReLU-like, cap) of an activation function (None: uncapped relu)."""
    if activation in (tf.keras.activations.relu, tf.nn.relu):
        return True, None
    if activation is tf.nn.relu6:  # what "relu6" resolves to
        return True, 6.0
    return False, None


def relu_layer_cap(layer) -> tuple[bool, float | None]:
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
    return relu_cap(layer.activation)


_PASS_THROUGH = (tf.keras.layers.ZeroPadding2D, tf.keras.layers.Dropout,
                 tf.keras.layers.SpatialDropout2D, tf.keras.layers.Cropping2D)
"""Layers between an activation and the convolution that reads it, values unchanged."""


def source_layer(layer):
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


def check_graph_model(model, what: str = "quantize_model") -> None:
    """UsageError unless `model` is a tf.keras model; ConfigError unless it has a graph."""
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
            f"model {describe(model)} is a subclassed (or unbuilt Sequential) model without a "
            f"functional graph: {what} needs a functional or Sequential model with "
            "an input shape"
        )
