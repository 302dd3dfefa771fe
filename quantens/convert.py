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
activations (sigmoid, swish, softmax, leaky relu, `ReLU` with a threshold or
negative slope), fused or not, are kept as they are, in full precision.

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
from collections.abc import Callable, Mapping

import larq as lq
import tensorflow as tf

from quantens.bits import _check_one, validate_bit_widths
from quantens.defaults import (
    BIT_WIDTHS,
    CONVERTED_WEIGHT_QUANTIZATION,
    FULL_PRECISION,
    WEIGHT_QUANTIZATIONS,
)
from quantens.layers import (
    QuantActivation,
    QuantConv2D,
    QuantDense,
    QuantDepthwiseConv2D,
    QuantSeparableConv2D,
    SwitchableBatchNormalization,
)
from quantens.quantizers import ClipActivation, WeightQuantizer

SUPPORTED = (
    "quantize_model converts Conv2D, DepthwiseConv2D, SeparableConv2D, Dense, "
    "BatchNormalization and ReLU-like activations, and keeps layers without weights "
    "and Normalization"
)

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

_CONV = "conv"
_DEPTHWISE = "depthwise"
_SEPARABLE = "separable"
_DENSE = "dense"
_BN = "bn"
_ACT = "act"
_KEEP = "keep"
_NESTED = "nested"
_KERNEL_KINDS = (_CONV, _DEPTHWISE, _SEPARABLE, _DENSE)
_CONV_KINDS = (_CONV, _DEPTHWISE, _SEPARABLE)

_NEW_CLASS = {
    _CONV: (QuantConv2D, ("kernel_quantizer",)),
    _DEPTHWISE: (QuantDepthwiseConv2D, ("depthwise_quantizer",)),
    _SEPARABLE: (QuantSeparableConv2D, ("depthwise_quantizer", "pointwise_quantizer")),
    _DENSE: (QuantDense, ("kernel_quantizer",)),
}


def _describe(layer) -> str:
    return f"{layer.name!r} ({type(layer).__name__})"


def _kind(layer) -> str:
    """What `quantize_model` does with `layer`; ValueError for what it cannot convert."""
    layers = tf.keras.layers
    if isinstance(layer, (lq.layers_base.BaseLayer, SwitchableBatchNormalization,
                          QuantActivation)):
        raise ValueError(
            f"layer {_describe(layer)} is already quantized: {SUPPORTED} of a float model"
        )
    if isinstance(layer, tf.keras.Model):
        if getattr(layer, "_is_graph_network", False):
            return _NESTED
        raise ValueError(
            f"layer {_describe(layer)} is a subclassed model without a functional graph: "
            f"{SUPPORTED}, in functional or Sequential models"
        )
    if isinstance(layer, (layers.RNN, layers.Wrapper)):
        raise ValueError(
            f"layer {_describe(layer)} is not supported (recurrent and wrapper layers are "
            f"not): {SUPPORTED}"
        )
    kinds = {
        layers.Conv2D: _CONV,
        layers.DepthwiseConv2D: _DEPTHWISE,
        layers.SeparableConv2D: _SEPARABLE,
        layers.Dense: _DENSE,
        layers.BatchNormalization: _BN,
        layers.ReLU: _ACT,
        layers.Activation: _ACT,
    }
    kind = kinds.get(type(layer))
    if kind is not None:
        return kind
    if layer.weights and not isinstance(layer, layers.Normalization):
        raise ValueError(f"layer {_describe(layer)} has weights and is not supported: {SUPPORTED}")
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
        return (True, cap) if cap > 0 else (False, None)
    return _relu_cap(layer.activation)


_PASS_THROUGH = (tf.keras.layers.ZeroPadding2D, tf.keras.layers.Dropout,
                 tf.keras.layers.SpatialDropout2D, tf.keras.layers.Cropping2D)
"""Layers between an activation and the convolution that reads it, values unchanged."""


def _producer(layer):
    """The layer whose output `layer` reads, through padding and dropout; None if unclear."""
    nodes = getattr(layer, "_inbound_nodes", [])
    while len(nodes) == 1:
        inbound = tf.nest.flatten(nodes[0].inbound_layers)
        if len(inbound) != 1:
            return None
        layer = inbound[0]
        if not isinstance(layer, _PASS_THROUGH):
            return layer
        nodes = getattr(layer, "_inbound_nodes", [])
    return None


def _network_nodes(model) -> list:
    """The non-input nodes of a functional model, inputs first (keras' own order)."""
    by_depth = model._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]
            if not node.is_input]


def _check_graph_model(model) -> None:
    if not isinstance(model, tf.keras.Model):
        raise ValueError(
            f"quantize_model needs a tf.keras Model, got {type(model).__name__}"
        )
    if not getattr(model, "_is_graph_network", False):
        raise ValueError(
            f"model {_describe(model)} is a subclassed (or unbuilt Sequential) model without a "
            "functional graph: quantize_model needs a functional or Sequential model with "
            "an input shape"
        )


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
            if kind in _KERNEL_KINDS:
                self.units.append(_Unit(layer.name, layer, kind))
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
                                if kind in (_DEPTHWISE, _SEPARABLE)
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
                self._add_name(x._keras_history.layer, model)
        for node in _network_nodes(model):
            layer = node.layer
            self._calls[id(layer)] += 1
            if self._calls[id(layer)] > 1:
                raise ValueError(
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
            raise ValueError(
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
    convs = [u.name for u in units if u.kind in _CONV_KINDS]
    dense = [u.name for u in units if u.kind == _DENSE]
    chosen = convs[:1] + (dense[-1:] or convs[-1:])
    return {name: FULL_PRECISION for name in chosen}


def _policy_bits(value, what: str) -> int | None:
    if value is None:
        return None
    try:
        return _check_one(value, "fixed bit-width")
    except ValueError as error:
        raise ValueError(f"policy for {what}: {error}") from None


def _resolve_policy(policy: Policy, plan: _Plan) -> dict[str, int | None]:
    """Fixed bit-width (or None: follow the member) per unit name."""
    if policy is None:
        policy = _default_policy(plan.units)
    if callable(policy) and not isinstance(policy, Mapping):
        return {u.name: _policy_bits(policy(u.layer), f"layer {u.name!r}") for u in plan.units}
    if not isinstance(policy, Mapping):
        raise ValueError(
            f"policy must map layer-name patterns to bit-widths or be a callable "
            f"layer -> bits, got {type(policy).__name__}"
        )
    patterns = {str(p): _policy_bits(v, f"pattern {p!r}") for p, v in policy.items()}
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in plan.names):
            raise ValueError(f"policy pattern {pattern!r} matches no layer of the model")
    resolved = {}
    for unit in plan.units:
        matches = [b for p, b in patterns.items() if fnmatch.fnmatchcase(unit.name, p)]
        resolved[unit.name] = matches[0] if matches else None
    return resolved


class _Reuse:
    """A tensor_dict entry for `Node.map_arguments` that can be popped any number of times."""

    def __init__(self, value):
        self.value = value

    def pop(self):
        return self.value


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
        values = {str(id(x)): _Reuse(y) for x, y in zip(model.inputs, inputs, strict=True)}
        for node in _network_nodes(model):
            args, kwargs = node.map_arguments(values)
            outputs = self.call(node.layer, args, kwargs, training)
            for x_id, y in zip(node.flat_output_ids, tf.nest.flatten(outputs), strict=True):
                values[x_id] = _Reuse(y)
        return [values[str(id(x))].pop() for x in model.outputs]

    def call(self, layer, args, kwargs, training):
        kind = _kind(layer)
        if kind == _NESTED:
            kwargs = dict(kwargs)
            inner_training = kwargs.pop("training", training)
            flat = tf.nest.flatten(args[0] if len(args) == 1 else args)
            if len(flat) != len(layer.inputs):
                raise ValueError(
                    f"nested model {_describe(layer)} is called with {len(flat)} tensors for "
                    f"its {len(layer.inputs)} inputs"
                )
            outputs = self.run(layer, flat, training=inner_training)
            return tf.nest.pack_sequence_as(layer._nested_outputs, outputs)
        new, after = self.convert(layer, kind)
        if training is not None and "training" not in kwargs and new._expects_training_arg:
            kwargs = {**kwargs, "training": training}
        y = new(*args, **kwargs)
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
        if kind in _KERNEL_KINDS:
            cls, keys = _NEW_CLASS[kind]
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
        raise ValueError(
            f"unknown quantizer option {unknown[0]!r}: choose from "
            f"{', '.join(QUANTIZER_OPTIONS)}"
        )
    options = {**QUANTIZER_OPTIONS, **options}
    if options["weight_quantization"] not in WEIGHT_QUANTIZATIONS:
        raise ValueError(
            f"unknown weight_quantization {options['weight_quantization']!r}: choose one of "
            f"{', '.join(WEIGHT_QUANTIZATIONS)}"
        )
    relu_range = options["relu_range"]
    if relu_range is not None:
        if isinstance(relu_range, bool) or not isinstance(relu_range, (int, float)) \
                or not relu_range > 0:
            raise ValueError(
                f"relu_range must be a positive number (or None: a clip value per member), "
                f"got {relu_range!r}")
        options["relu_range"] = float(relu_range)
    options["learn_ranges"] = bool(options["learn_ranges"])
    if options["depthwise_bits"] is not None:
        try:
            options["depthwise_bits"] = _check_one(options["depthwise_bits"], "depthwise_bits")
        except ValueError as error:
            raise ValueError(f"{error} (or None: the member's own bits)") from None
    options["share_bn"] = bool(options["share_bn"])
    options["sync_bn"] = bool(options["sync_bn"])
    return options


def _new_input(x):
    config = x._keras_history.layer.get_config()
    return tf.keras.Input(
        batch_shape=config["batch_input_shape"], dtype=config.get("dtype"),
        sparse=config.get("sparse", False), ragged=config.get("ragged", False),
        name=config["name"],
    )


def quantize_model(model: tf.keras.Model, bit_widths=BIT_WIDTHS, *, policy: Policy = None,
                   **quantizer_options) -> tf.keras.Model:
    """A copy of a float functional or Sequential model made of switchable layers.

    The converted model holds one kernel per convolution / dense layer for
    every member, the original's weights, and per member a BN initialised
    from the original's; its 32-bit member computes what `model` computes (see
    the module docstring for what each layer becomes). Train it with
    `quantens.QuantEnsemble(converted, bit_widths)`; run member b with
    `quantens.bits(b)` or `ensemble.member(b)`.

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
        **quantizer_options: see `QUANTIZER_OPTIONS`: `weight_quantization`
            (`"narrow"`, `"dorefa"` or `"identity"`), `relu_range` (one clip
            value for every member instead of one per member),
            `learn_ranges` (train the clip values), `depthwise_bits` (the
            least precision of depthwise kernels, default 8), `share_bn` (one
            BN for all members), `sync_bn` (BN statistics synchronised across
            replicas).

    Raises:
        ValueError: for a subclassed model, a layer called more than once, a
            layer with weights it cannot convert (RNNs, `Conv1D`,
            `Conv2DTranspose`, `Embedding`, ...), an already quantized layer, a
            bad policy or option; the message names the layer.

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
    bit_widths = validate_bit_widths(bit_widths)
    options = _check_options(quantizer_options)
    _check_graph_model(model)
    plan = _Plan(model)
    fixed_bits = _resolve_policy(policy, plan)
    builder = _Builder(plan, bit_widths, fixed_bits, options)
    from quantens.ensemble import _quiet_logger

    with _quiet_logger("larq.layers_base"):  # "binary kernel without constraint"
        inputs = [_new_input(x) for x in model.inputs]
        outputs = builder.run(model, inputs)
    nested_inputs = getattr(model, "_nested_inputs", model.inputs)
    nested_outputs = getattr(model, "_nested_outputs", model.outputs)
    return tf.keras.Model(
        tf.nest.pack_sequence_as(nested_inputs, inputs),
        tf.nest.pack_sequence_as(nested_outputs, outputs),
        name=model.name,
    )
