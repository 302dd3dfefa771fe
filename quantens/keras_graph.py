"""Every use of tf-keras' private graph internals, each behind one public function.

`quantens.quantize_model` rebuilds a model layer by layer and
`quantens.export` walks a member's graph: both need the functional graph of
a tf-keras model (its nodes in order, the tensors each call read, the
arguments of each call). tf-keras has no public API for most of that, so the
private attributes used live here and nowhere else; each function says why
no public path serves. A tf-keras upgrade that renames one breaks this
module's tests, not the converter silently.

```python
import quantens  # before TensorFlow: selects tf-keras
import numpy as np
import tensorflow as tf
from quantens import keras_graph

inputs = tf.keras.Input((3,))
hidden = tf.keras.layers.Dense(4, name="hidden")(inputs)
model = tf.keras.Model(inputs, tf.keras.layers.Dense(2, name="out")(hidden))
nodes = keras_graph.network_nodes(model)
assert [node.layer.name for node in nodes] == ["hidden", "out"]
assert keras_graph.producer(model.outputs[0]).name == "out"
x = tf.constant(np.ones((1, 3), "float32"))
y = keras_graph.call_node(nodes[0].layer, nodes[0], {keras_graph.tensor_id(inputs): x})
assert y.shape == (1, 4)
```
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "call_node", "expects_training", "inbound_nodes", "is_graph_network", "nested_inputs",
    "nested_outputs", "network_nodes", "node_arguments", "node_input_ids", "node_output_ids",
    "producer",
    "producer_call", "tensor_id",
]


def network_nodes(model) -> list:
    """The non-input nodes (layer calls) of a functional model, inputs first.

    Private: `_nodes_by_depth` is the only record of the calls in the order
    Keras itself runs them; `model.layers` loses calls and their order, and
    `clone_model` builds a new model instead of telling the calls of this one
    (and its `clone_function` maps one layer to one layer: it can neither
    flatten a nested model nor add the `QuantActivation` that a fused ReLU
    becomes after its convolution, which `quantize_model` does).
    """
    by_depth = model._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]
            if not node.is_input]


def is_graph_network(model) -> bool:
    """Whether `model` is functional (or a built Sequential): it has a graph of layer calls.

    Private: tf-keras exposes no public flag that tells a functional model
    from a subclassed one.
    """
    return bool(getattr(model, "_is_graph_network", False))


def tensor_id(tensor) -> str:
    """The key by which a node names a Keras tensor (`node_input_ids`, `call_node`)."""
    return str(id(tensor))


def producer(tensor):
    """The layer that made a symbolic Keras tensor.

    Private: `_keras_history` is the only link from a Keras tensor to its layer.
    """
    return tensor._keras_history.layer


def producer_call(tensor) -> tuple:
    """(layer, node, index of the tensor among the node's outputs) of a Keras tensor.

    Private: `_keras_history` (see `producer`) and the layer's inbound nodes.
    """
    layer, node_index, tensor_index = tensor._keras_history
    return layer, inbound_nodes(layer)[node_index], tensor_index


def inbound_nodes(layer) -> list:
    """The calls of `layer` in functional models (tf-keras: `inbound_nodes`, public)."""
    return list(getattr(layer, "inbound_nodes", None) or [])


def node_input_ids(node) -> list[str]:
    """`tensor_id`s of the Keras tensors a node read, in the order of its arguments.

    Private: `_keras_inputs_ids_and_indices` is how the node itself keys them
    (the public `keras_inputs` gives the tensors, this their keys as
    `Node.map_arguments` looks them up).
    """
    return [kid for kid, _ in node._keras_inputs_ids_and_indices]


def node_output_ids(node) -> list[str]:
    """`tensor_id`s of the Keras tensors a node made, flattened (`Node.flat_output_ids`)."""
    return list(node.flat_output_ids)


class _Reusable:
    """A value for `Node.map_arguments`, which pops each entry, that stays available."""

    def __init__(self, value):
        self.value = value

    def pop(self):
        return self.value


def call_node(layer, node, values: Mapping[str, object], training: bool | None = None,
              override_training: bool = False):
    """Calls `layer` with the arguments of `node`, its Keras tensors replaced by `values`.

    `values` maps `tensor_id`s to the new tensors (every tensor the node
    read); other arguments (constants, keyword arguments such as `axis`) are
    the node's own. `training`, when not None, is passed to a layer that
    takes it and was not given one (with `override_training`, even when the
    node gave one).

    Private: `Node.map_arguments` is the only way to get the arguments of a
    recorded call with its tensors replaced (keyword arguments of TF-op
    layers included), and `_expects_training_arg` tells whether a layer
    takes `training` (see `expects_training`).
    """
    args, kwargs = node_arguments(node, values)
    if training is not None and expects_training(layer) and \
            (override_training or "training" not in kwargs):
        kwargs = {**kwargs, "training": training}
    return layer(*args, **kwargs)


def node_arguments(node, values: Mapping[str, object]) -> tuple[list, dict]:
    """(args, kwargs) of `node`'s call with its Keras tensors replaced by `values` (see `call_node`).

    Private: `Node.map_arguments` (see `call_node`).
    """
    return node.map_arguments({k: _Reusable(v) for k, v in values.items()})


def expects_training(layer) -> bool:
    """Whether `layer.call` takes a `training` argument.

    Private: `_expects_training_arg` is what Keras itself reads; inspecting
    `call`'s signature would miss layers whose `call` is wrapped.
    """
    return bool(getattr(layer, "_expects_training_arg", False))


def nested_inputs(model) -> object:
    """A functional model's inputs in the structure it was built with (see `nested_outputs`).

    Private: `_nested_inputs`; the public `model.inputs` is flattened.
    """
    return getattr(model, "_nested_inputs", model.inputs)


def nested_outputs(model) -> object:
    """A functional model's outputs in the structure it was built with (a dict, a list, ...).

    Private: `_nested_outputs`; the public `model.outputs` is flattened.
    """
    return getattr(model, "_nested_outputs", model.outputs)
