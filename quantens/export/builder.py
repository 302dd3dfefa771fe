"""The walk of a member's Keras graph that makes its export steps.

`build_graph(member, bits)` visits the member's layer calls once, in order,
and makes one or more steps (`quantens.export.steps`) of each: layers with a
quantized kernel through their `quantens.registry` entry's export hook (the
BatchNormalization and ReLU that only read such a layer folded into it),
BatchNormalization, Add, activations, pooling and reshapes as their own
steps, and any other layer without weights as itself (`LayerStep`).

```python
import numpy as np
import quantens
from quantens.export.builder import build_graph
from quantens.export.steps import ConvStep
from zoo import create_model

ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 4))
graph = build_graph(ensemble.member(4), bits=4)
assert graph.input_shape == (8, 8, 1)
assert any(isinstance(s, ConvStep) and s.grid == 15 for s in graph.steps)
```
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import numpy as np

from quantens import keras_graph
from quantens.errors import ExportError
from quantens.export.common import tensorflow
from quantens.export.graph import StepGraph
from quantens.export.steps import (
    Act,
    ActStep,
    AddStep,
    AffineStep,
    AvgPoolStep,
    IdentityStep,
    InputStep,
    Kernel,
    LayerStep,
    LinearStep,
    MaxPoolStep,
    MeanStep,
    ReshapeStep,
    Step,
    act_of,
    bn_affine,
    read_kernel,
)

__all__ = ["GraphBuilder", "build_graph", "supported_layers"]

# layers that keep their input's int8 scale in TFLite (no rounding of their own)
_SAME_SCALE = ("Reshape", "Flatten", "ZeroPadding2D", "Cropping2D", "Permute",
               "MaxPooling2D", "GlobalMaxPooling2D")
# layers that are the identity at inference
_IDENTITY = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
             "GaussianDropout", "GaussianNoise", "AlphaDropout", "ActivityRegularization")


def supported_layers() -> str:
    """What export takes, for messages and docs (the kernel layers from `quantens.registry`)."""
    from quantens import registry  # loads TensorFlow: only once a member is exported

    return (
        f"{registry.kernel_layer_names()} (larq's too), BatchNormalization, "
        "activation layers, Add, pooling, and layers without weights (Concatenate, "
        "ZeroPadding2D, Reshape, Dropout, Rescaling, TF ops, ...) called once each"
    )


def _unsupported(name: str, layer) -> ExportError:
    return ExportError(
        f"cannot export layer {name} ({type(layer).__name__}); supported: {supported_layers()}"
    )


def build_graph(member, bits) -> StepGraph:
    """The steps of a standalone member (`QuantEnsemble.member(bits)`).

    A mixed member (`QuantEnsemble.member(policy)`) is walked the same way:
    each fixed layer's steps come from its own quantizers, at its own bits.
    `bits` may then be its bits per layer (a mapping); the graph's `bits` is
    the highest of them.
    """
    if isinstance(bits, Mapping):
        bits = max(bits.values())
    return GraphBuilder(member, bits).build()


class _LayerBuild:
    """What an export hook gets (`quantens.registry.LayerBuild`) for one layer."""

    def __init__(self, builder: GraphBuilder, layer, inputs: list[str]):
        self._builder = builder
        self.layer = layer
        self.inputs = inputs

    def kernel(self, attribute: str = "kernel", quantizer: str = "kernel_quantizer",
               depthwise: bool = False) -> Kernel:
        return read_kernel(self.layer, attribute, quantizer, depthwise=depthwise)

    def linear(self, step_class: type[LinearStep], kernel: Kernel, *, name: str | None = None,
               inputs: list[str] | None = None, act="input_quantizer", bias: bool = True,
               finish: bool = True, **fields) -> LinearStep:
        layer = self.layer
        if act == "input_quantizer":
            act = act_of(getattr(layer, "input_quantizer", None))
        values = kernel.values
        channels = (values.shape[2] * values.shape[3] if step_class.depthwise
                    else values.shape[-1])
        add = (np.asarray(layer.bias.numpy(), np.float64) if bias and layer.use_bias
               else np.zeros(channels))
        step = step_class(name=layer.name if name is None else name,
                          inputs=self.inputs if inputs is None else inputs,
                          kernel=values, grid=kernel.grid, unit=kernel.unit, act=act,
                          mult=np.ones(channels), add=add, **fields)
        if finish:
            self._builder.finish_linear(layer, step)
        return step


class GraphBuilder:
    """Walks a member's graph once; `build()` returns its `StepGraph`."""

    def __init__(self, member, bits: int):
        tf = tensorflow()
        self.bits = int(bits)
        if len(member.inputs) != 1 or len(member.outputs) != 1:
            raise ExportError("export needs a model with one input and one output")
        self.input_shape = tuple(member.input_shape[1:])
        self._member = member
        self._nodes = keras_graph.network_nodes(member)
        producer: dict[str, str] = {}  # keras tensor id -> the layer that makes it
        for x in member.inputs:
            producer[keras_graph.tensor_id(x)] = keras_graph.producer(x).name
        calls: collections.Counter = collections.Counter()
        self._inputs_of: dict[str, list[str]] = {}
        self._consumers: dict[str, list[str]] = collections.defaultdict(list)
        for node in self._nodes:
            layer = node.layer
            calls[layer.name] += 1
            if calls[layer.name] > 1:
                raise ExportError(f"layer {layer.name} is called more than once")
            if isinstance(layer, tf.keras.Model):
                raise ExportError(
                    f"layer {layer.name} is a nested model: export needs its layers in the "
                    "member itself (quantens.quantize_model flattens nested models)"
                )
            outputs = node.outputs if isinstance(node.outputs, list) else [node.outputs]
            if len(outputs) != 1:
                raise _unsupported(layer.name, layer)
            names = [producer[str(id(t))] for t in node.keras_inputs]
            self._inputs_of[layer.name] = names
            for name in dict.fromkeys(names):
                self._consumers[name].append(layer.name)
            producer[keras_graph.tensor_id(outputs[0])] = layer.name
        self._producer = producer
        self._output_layer = keras_graph.producer(member.outputs[0]).name
        self._alias: dict[str, str] = {}
        self._folded: set[str] = set()

    def build(self) -> StepGraph:
        input_name = keras_graph.producer(self._member.inputs[0]).name
        steps: list[Step] = [InputStep(name=input_name, inputs=[])]
        for node in self._nodes:
            layer = node.layer
            if layer.name in self._alias or layer.name in self._folded:
                continue
            ins = [self._source(n) for n in self._inputs_of[layer.name]]
            steps.extend(self._steps(layer, node, ins))
        return StepGraph(steps, self.input_shape, self._source(self._output_layer), self.bits)

    # ------------------------------------------------------------ the walk

    def _source(self, name: str) -> str:
        while name in self._alias:
            name = self._alias[name]
        return name

    def _single_consumer(self, name: str, kind) -> Any:
        users = self._consumers.get(name, [])
        if len(users) != 1 or name == self._output_layer:
            return None
        layer = self._member.get_layer(users[0])
        return layer if isinstance(layer, kind) else None

    def _fuse_relu(self, name: str) -> bool:
        nxt = self._single_consumer(name, tensorflow().keras.layers.Activation)
        if nxt is not None and act_of(nxt.activation) == Act("relu"):
            self._alias[nxt.name] = name
            return True
        return False

    def _fold_bn(self, name: str, mult: np.ndarray, add: np.ndarray):
        """Folds a BN that is the only consumer of `name`: (mult, add, output name)."""
        bn = self._single_consumer(name, tensorflow().keras.layers.BatchNormalization)
        if bn is None:
            return mult, add, name
        a, b = bn_affine(bn)
        self._alias[bn.name] = name
        self._folded.add(bn.name)
        return mult * a, a * add + b, bn.name

    def finish_linear(self, layer, step: LinearStep) -> None:
        """Folds what follows `layer` into `step`: its activation, or the BN and ReLU after it."""
        post = act_of(layer.activation)
        relu = False
        mult, add = step.mult, step.add
        if post is None:
            mult, add, out_name = self._fold_bn(layer.name, mult, add)
            if out_name != layer.name:
                step.bn = out_name
            relu = self._fuse_relu(out_name)
        elif post == Act("relu"):
            relu, post = True, None
        elif post.kind not in ("relu", "function"):
            raise ExportError(f"{layer.name}: activation {layer.activation} is not supported")
        step.mult, step.add, step.relu, step.post = mult, add, relu, post

    def _steps(self, layer, node, ins: list[str]) -> list[Step]:
        """The steps of one layer call."""
        from quantens import registry

        entry = registry.member_layer_entry(layer)
        if entry is not None:
            if entry.exact and type(layer) not in entry.member_classes:
                raise _unsupported(layer.name, layer)
            return list(entry.export(layer, _LayerBuild(self, layer, ins)))
        return [self._plain_step(layer, node, ins)]

    def _plain_step(self, layer, node, ins: list[str]) -> Step:
        """The step of a layer without a quantized kernel."""
        layers = tensorflow().keras.layers
        name = layer.name
        cls = type(layer).__name__
        if isinstance(layer, layers.BatchNormalization):
            mult, add = bn_affine(layer)
            return AffineStep(name=name, inputs=ins, mult=mult, add=add,
                              relu=self._fuse_relu(name))
        if isinstance(layer, layers.Add) and len(ins) >= 2:
            return AddStep(name=name, inputs=ins, relu=self._fuse_relu(name))
        if isinstance(layer, layers.Activation):
            return ActStep(name=name, inputs=ins, act=act_of(layer.activation))
        if isinstance(layer, (layers.MaxPool2D, layers.AvgPool2D)):
            pool = MaxPoolStep if isinstance(layer, layers.MaxPool2D) else AvgPoolStep
            return pool(name=name, inputs=ins, size=layer.pool_size, strides=layer.strides,
                        padding=layer.padding.upper())
        if isinstance(layer, layers.GlobalAveragePooling2D) and not layer.keepdims:
            return MeanStep(name=name, inputs=ins)
        if isinstance(layer, layers.Flatten):
            return ReshapeStep(name=name, inputs=ins,
                               shape=(int(np.prod(layer.input_shape[1:])),))
        if cls in _IDENTITY and len(ins) == 1:
            self._alias[name] = ins[0]
            return IdentityStep(name=name, inputs=ins)
        if layer.weights and not isinstance(layer, layers.Normalization):
            raise _unsupported(name, layer)
        from quantens.larq_hooks import is_larq_layer  # larq loads TensorFlow

        if is_larq_layer(layer):
            raise _unsupported(name, layer)
        arguments = {kid: self._source(self._producer[kid])
                     for kid in keras_graph.node_input_ids(node)}
        return LayerStep(name=name, inputs=ins, layer=layer, node=node, arguments=arguments,
                         same_scale=cls in _SAME_SCALE and len(ins) == 1)
