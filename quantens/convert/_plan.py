"""The plan of a conversion: a model's layers, flattened and checked, and the policy's units.

`Plan(model)` walks the model once, before anything is built: it flattens
nested models, gives every layer its kind (`quantens.convert.kinds`), refuses
shared layers and names that clash once flattened, names the activations that
fused relus become (`<layer>_relu`, `<layer>_relu6`), lists the units the
precision policy decides on (kernel layers and ReLU-like activations) and the
activations that feed a depthwise convolution (held at `depthwise_bits`).

Private (the leading underscore): the plan is the converter's working state,
read by `quantens.convert.policy`, `quantens.convert.options` and the
builder; nothing here is for users.
"""

from __future__ import annotations

import collections

import tensorflow as tf

from quantens import keras_graph, registry
from quantens.convert.kinds import (
    ACT,
    KERNEL,
    NESTED,
    describe,
    layer_kind,
    relu_cap,
    relu_layer_cap,
    source_layer,
)
from quantens.errors import ConfigError


class Unit:
    """One thing the policy decides on: a kernel layer or a (possibly fused) activation."""

    def __init__(self, name: str, layer, kind: str):
        self.name, self.layer, self.kind = name, layer, kind


class Plan:
    """The flattened layers of a model, checked, and the units the policy decides on."""

    def __init__(self, model):
        self.names: set[str] = set()
        self.layers: list = []  # (layer, kind), inputs first, nested models flattened
        self._calls: collections.Counter = collections.Counter()
        self._visit(model, top=True)
        self.units: list[Unit] = []
        self.fused: dict[int, tuple[str, float | None]] = {}  # id(layer) -> (name, cap)
        for layer, kind in self.layers:
            if kind == KERNEL:
                self.units.append(Unit(layer.name, layer, registry.layer_entry_for(layer).role))
                relu_like, cap = relu_cap(layer.activation)
                if relu_like:
                    function = "relu" if cap is None else "relu6"
                    name = self._unique(f"{layer.name}_{function}")
                    self.fused[id(layer)] = (name, cap)
                    # the policy sees a fused activation as the layer it becomes
                    standin = tf.keras.layers.Activation(function, name=name)
                    self.units.append(Unit(name, standin, ACT))
            elif kind == ACT and relu_layer_cap(layer)[0]:
                self.units.append(Unit(layer.name, layer, ACT))
        self.feeds_depthwise = {self._activation_name(producer) for layer, kind in self.layers
                                if kind == KERNEL and registry.layer_entry_for(layer).depthwise
                                for producer in [source_layer(layer)] if producer is not None}
        self.feeds_depthwise.discard(None)

    def _activation_name(self, layer) -> str | None:
        """The name of the quantized activation `layer` ends in (a fused one's), or None."""
        if id(layer) in self.fused:
            return self.fused[id(layer)][0]
        if isinstance(layer, (tf.keras.layers.ReLU, tf.keras.layers.Activation)) \
                and relu_layer_cap(layer)[0]:
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
                    f"layer {describe(layer)} is called more than once (a shared layer): "
                    "quantize_model needs every layer called once; give each call its own layer"
                )
            kind = layer_kind(layer)
            if kind == NESTED:
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
