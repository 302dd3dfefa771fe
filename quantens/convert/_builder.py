"""The construction of a converted model: switchable layers, called in the original's order.

`build_model` calls, node by node, a new layer for each layer of the
original (its kind from `quantens.convert.kinds`, its fixed bits from the
policy, the quantizer options), on new inputs, copies the original's
weights into it (into every member's BN), and calls a `QuantActivation`
after a layer whose fused relu it took out; nested models are flattened.

Private (the leading underscore): `quantize_model` is the way in.
"""

from __future__ import annotations

import tensorflow as tf

from quantens import keras_graph, registry
from quantens.convert._plan import Plan
from quantens.convert.kinds import ACT, BN, KERNEL, NESTED, describe, layer_kind, relu_layer_cap
from quantens.errors import ConfigError
from quantens.larq_hooks import LARQ_LAYER_LOGGER
from quantens.layers import (
    QuantActivation,
    SwitchableBatchNormalization,
)
from quantens.quantizers import ClipActivation, WeightQuantizer


class _Builder:
    """Calls the converted layers on new tensors, in the original's order."""

    def __init__(self, plan: Plan, bit_widths, fixed_bits, options):
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
        kind = layer_kind(layer)
        if kind == NESTED:
            args, kwargs = keras_graph.node_arguments(node, values)
            kwargs = dict(kwargs)
            inner_training = kwargs.pop("training", training)
            flat = tf.nest.flatten(args[0] if len(args) == 1 else args)
            if len(flat) != len(layer.inputs):
                raise ConfigError(
                    f"nested model {describe(layer)} is called with {len(flat)} tensors for "
                    f"its {len(layer.inputs)} inputs"
                )
            outputs = self.run(layer, flat, training=inner_training)
            return tf.nest.pack_sequence_as(keras_graph.nested_outputs(layer), outputs)
        new, after = self.convert(layer, kind)
        y = keras_graph.call_node(new, node, values, training=training)
        if kind == BN:
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
        if kind == KERNEL:
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
        if kind == BN:
            if self.sync_bn:  # not in a BatchNormalization's get_config: set it here
                config["synchronized"] = True
            return SwitchableBatchNormalization(self.bit_widths, shared=self.share_bn,
                                                **config), None
        if kind == ACT:
            relu_like, cap = relu_layer_cap(layer)
            if relu_like:
                return self.activation(layer.name, cap, config.get("dtype")), None
        return layer.__class__.from_config(config), None


def _new_input(x, input_shape: tuple[int, ...]):
    config = keras_graph.producer(x).get_config()
    return tf.keras.Input(
        batch_shape=(config["batch_input_shape"][0], *input_shape), dtype=config.get("dtype"),
        sparse=config.get("sparse", False), ragged=config.get("ragged", False),
        name=config["name"],
    )


def build_model(model, plan: Plan, shape, bit_widths, fixed_bits: dict,
                options: dict) -> tf.keras.Model:
    """`model` rebuilt from switchable layers (`plan`: its `Plan`, `shape`: its input size
    without the batch axis, `fixed_bits`: the resolved policy, `options`: checked)."""
    builder = _Builder(plan, bit_widths, fixed_bits, options)
    from quantens.ensemble import quiet_logger

    with quiet_logger(LARQ_LAYER_LOGGER):  # "binary kernel without constraint"
        inputs = [_new_input(x, shape) for x in model.inputs]
        outputs = builder.run(model, inputs)
    nested_inputs = keras_graph.nested_inputs(model)
    nested_outputs = keras_graph.nested_outputs(model)
    return tf.keras.Model(
        tf.nest.pack_sequence_as(nested_inputs, inputs),
        tf.nest.pack_sequence_as(nested_outputs, outputs),
        name=model.name,
    )
