"""A standalone member as a list of steps, with BN folded into convolutions.

`MemberGraph(ensemble.member(b), b)` walks the member's Keras graph once and
keeps what export needs: convolutions (plain, depthwise, separable as its two
parts) and dense layers with their quantized kernels and the BatchNormalization
after them folded in, the member's activation quantizers, and every other
layer as itself. `forward` emits the member as TensorFlow ops in one of three
modes (see `quantens.export` for how each file format uses them).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from quantens.errors import ExportError

SUPPORTED_LAYERS = (
    "Conv2D, DepthwiseConv2D, SeparableConv2D, Dense (larq's too), BatchNormalization, "
    "activation layers, Add, pooling, and layers without weights (Concatenate, "
    "ZeroPadding2D, Reshape, Dropout, Rescaling, TF ops, ...) called once each"
)
MAX_CALIBRATION_EXAMPLES = 2048
DEAD_TENSOR_WIDTH = 1e-6  # a calibrated range narrower than this: the tensor is ~0

# layers that keep their input's int8 scale in TFLite (no rounding of their own)
_SAME_SCALE = ("Reshape", "Flatten", "ZeroPadding2D", "Cropping2D", "Permute",
               "MaxPooling2D", "GlobalMaxPooling2D")
# layers that are the identity at inference
_IDENTITY = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
             "GaussianDropout", "GaussianNoise", "AlphaDropout", "ActivityRegularization")


def _tf():
    import tensorflow as tf

    return tf


def iter_batches(data, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(x, y or None) numpy batches from a dataset, an array or an (x, y) tuple."""
    if data is None:
        return
    if isinstance(data, np.ndarray):
        data = (data, None)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        x, y = data
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size], None if y is None else y[start:start + batch_size]
        return
    for item in data:
        if isinstance(item, (tuple, list)):
            x, y = item[0], (item[1] if len(item) > 1 else None)
        else:
            x, y = item, None
        yield np.asarray(x, np.float32), None if y is None else np.asarray(y)


@dataclasses.dataclass
class Act:
    """An activation of a member.

    `round`: clip to [0, `value_range`] and round to the grid i * value_range / n
    (n = 2^bits - 1); `symmetric`: the grid on [-1, 1]; `sign`: +-1; `relu`
    (capped at `max_value` when set) and `clip` ([-1, 1]): full precision;
    `function`: any other activation function (`fn`), in full precision.
    `quantizer` is the member's own quantizer, called in float mode so that
    the export computes exactly what the member computes.
    """

    kind: str
    bits: int = 32
    value_range: float = 1.0
    max_value: float | None = None
    quantizer: Callable | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def levels(self) -> int:
        return 2**self.bits - 1

    @property
    def binary(self) -> bool:
        """{0, value_range} (round) or +-1 (sign): what LCE can binarize."""
        return self.bits == 1 and self.kind in ("round", "sign")


@dataclasses.dataclass
class Step:
    op: str
    name: str
    inputs: list[str]
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


def act_of(quantizer) -> Act | None:
    """Describes an activation (function) or activation quantizer of a member."""
    import larq as lq
    import tensorflow as tf

    from quantens.quantizers import (
        FullPrecisionActivation,
        RangeRoundActivation,
        RoundActivation,
        SymmetricRoundActivation,
    )

    if quantizer is None:
        return None
    if isinstance(quantizer, RangeRoundActivation):
        if quantizer.precision == 32:
            return Act("relu", max_value=quantizer.max_value)
        return Act("round", quantizer.precision, quantizer.value_range, quantizer=quantizer)
    if isinstance(quantizer, SymmetricRoundActivation):
        return Act("symmetric", quantizer.precision, quantizer=quantizer)
    if isinstance(quantizer, RoundActivation):
        return Act("round", quantizer.precision, quantizer=quantizer)
    if isinstance(quantizer, FullPrecisionActivation):
        return Act(quantizer.function)
    if isinstance(quantizer, lq.quantizers.SteSign):
        return Act("sign", 1)
    if quantizer in (tf.keras.activations.linear,):
        return None
    if quantizer in (tf.keras.activations.relu, tf.nn.relu):
        return Act("relu")
    if quantizer is tf.nn.relu6:
        return Act("relu", max_value=6.0)
    if callable(quantizer) and not isinstance(quantizer, lq.quantizers.Quantizer):
        name = getattr(quantizer, "__name__", type(quantizer).__name__)
        return Act("function", quantizer=quantizer) if name != "linear" else None
    raise ExportError(
        f"cannot export the activation quantizer {type(quantizer).__name__}: supported are "
        "quantens' round, det_sign and ranged activations, sign, and activation functions"
    )


def weight_grid(quantizer, kernel: np.ndarray) -> int | None:
    """n = 2^k - 1 when the quantized kernel lies on DoReFa's k-bit grid (2i - n)/n (1: sign)."""
    import larq as lq

    if isinstance(quantizer, lq.quantizers.DoReFa):
        n = 2**int(quantizer.precision) - 1
    elif isinstance(quantizer, lq.quantizers.SteSign):
        n = 1
    else:
        return None
    ints = np.rint(kernel * n)
    if np.abs(ints - kernel * n).max(initial=0.0) > 1e-3 or np.any((ints + n) % 2):
        return None
    return n


def weight_unit(quantizer, latent: np.ndarray, kernel: np.ndarray, depthwise: bool):
    """Per output channel (TFLite's order), u such that the quantized kernel is integers * u.

    DoReFa: 1/n; sign: 1; the narrow-range grid: its scale s. None when the
    kernel is not on such a grid (full precision).
    """
    from quantens.quantizers import NarrowRangeWeights

    channels = kernel.shape[2] * kernel.shape[3] if depthwise else kernel.shape[-1]
    n = weight_grid(quantizer, kernel)
    if n is not None:
        return np.full(channels, 1.0 / n)
    if not isinstance(quantizer, NarrowRangeWeights):
        return None
    scale = np.asarray(quantizer.scale(latent.astype(np.float32)), np.float64)
    if depthwise:  # per (channel, multiplier), or per multiplier for a kernel's last axis
        unit = np.broadcast_to(scale.reshape(scale.shape[-2:]), kernel.shape[2:])
    else:
        unit = np.broadcast_to(scale.reshape(-1), (kernel.shape[-1],))
    unit = np.asarray(unit, np.float64).reshape(-1)
    shaped = unit.reshape(kernel.shape[2:]) if depthwise else unit
    ints = kernel / shaped
    if np.abs(ints - np.rint(ints)).max(initial=0.0) > 1e-3 or \
            np.abs(np.rint(ints)).max(initial=0.0) > quantizer.levels:
        return None
    return unit


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _act_key(name: str, act: Act) -> tuple:
    """One activation of one tensor (forward computes each once)."""
    return (name, act.kind, act.bits, act.value_range, act.max_value)


def bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization at inference as y = A x + B (float64)."""
    weights = dict(zip([w.name.split("/")[-1].split(":")[0] for w in bn.weights],
                       [np.asarray(w.numpy(), np.float64) for w in bn.weights], strict=True))
    mean, var = weights["moving_mean"], weights["moving_variance"]
    gamma = weights.get("gamma", np.ones_like(mean))
    beta = weights.get("beta", np.zeros_like(mean))
    mult = gamma / np.sqrt(var + bn.epsilon)
    return mult, beta - mean * mult


def _kernel(layer, attribute: str, quantizer_attribute: str, depthwise: bool = False) -> dict:
    """The quantized kernel (float64) of a (larq) layer, its DoReFa grid n and unit."""
    variable = getattr(layer, attribute)
    latent = np.asarray(getattr(variable, "latent_variable", variable).numpy(), np.float64)
    quantizer = getattr(layer, quantizer_attribute, None)
    kernel = (np.asarray(quantizer(latent.astype(np.float32)), np.float64)
              if quantizer is not None else latent)
    return {"kernel": kernel, "grid": weight_grid(quantizer, kernel),
            "unit": weight_unit(quantizer, latent, kernel, depthwise)}


def _unsupported(name: str, layer) -> ExportError:
    return ExportError(
        f"cannot export layer {name} ({type(layer).__name__}); supported: {SUPPORTED_LAYERS}"
    )


class MemberGraph:
    """A standalone member as a list of steps, with BN folded into convolutions.

    Built from `QuantEnsemble.member(b)` (of a zoo model or of a
    `quantens.quantize_model` conversion); `forward` emits it as TensorFlow
    ops in one of three modes: `"float"` (the member's own arithmetic, used to
    calibrate ranges), `"int8"` (fake-quantized on the member's grid, for the
    TFLite converter) and `"lce"` (the 1-bit member in the +-1 form that Larq
    Compute Engine turns into binary convolutions).

    ```python
    import numpy as np
    import quantens
    from quantens.export import MemberGraph
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 8, 4, 2, 1))
    graph = MemberGraph(ensemble.member(4), bits=4)
    x = np.zeros((2, 8, 8, 1), "float32")
    np.testing.assert_allclose(graph.forward(x), ensemble.member(4)(x), atol=1e-4)
    ```
    """

    def __init__(self, member, bits: int):
        from quantens.convert import _network_nodes  # the converter's walk of a graph

        tf = _tf()
        self.bits = int(bits)
        if len(member.inputs) != 1 or len(member.outputs) != 1:
            raise ExportError("export needs a model with one input and one output")
        self.input_shape = tuple(member.input_shape[1:])
        nodes = _network_nodes(member)
        producer: dict[str, str] = {}  # keras tensor id -> the layer that makes it
        for x in member.inputs:
            producer[str(id(x))] = x._keras_history.layer.name
        calls: collections.Counter = collections.Counter()
        inputs_of: dict[str, list[str]] = {}
        self._consumers: dict[str, list[str]] = collections.defaultdict(list)
        for node in nodes:
            layer = node.layer
            calls[layer.name] += 1
            if calls[layer.name] > 1:
                raise ExportError(f"layer {layer.name} is called more than once")
            if isinstance(layer, tf.keras.Model):
                raise ExportError(
                    f"layer {layer.name} is a nested model: export needs its layers in the "
                    "member itself (quantens.quantize_model flattens nested models)"
                )
            if len(node.outputs if isinstance(node.outputs, list) else [node.outputs]) != 1:
                raise _unsupported(layer.name, layer)
            names = [producer[str(id(t))] for t in node.keras_inputs]
            inputs_of[layer.name] = names
            for name in dict.fromkeys(names):
                self._consumers[name].append(layer.name)
            producer[str(id(node.outputs[0] if isinstance(node.outputs, list)
                              else node.outputs))] = layer.name
        self._producer = producer
        self.output = member.outputs[0]._keras_history.layer.name
        self.steps: list[Step] = [Step("input", member.inputs[0]._keras_history.layer.name, [])]
        self._alias: dict[str, str] = {}
        self._folded: set[str] = set()
        self._member = member
        for node in nodes:
            layer = node.layer
            if layer.name in self._alias or layer.name in self._folded:
                continue
            ins = [self._source(n) for n in inputs_of[layer.name]]
            self.steps.append(self._step(layer, node, ins))
        self.output = self._source(self.output)
        self._by_name = {s.name: s for s in self.steps}

    # ----------------------------------------------------------------- building

    def _source(self, name: str) -> str:
        while name in self._alias:
            name = self._alias[name]
        return name

    def _single_consumer(self, name: str, kind) -> Any:
        users = self._consumers.get(name, [])
        if len(users) != 1 or name == self.output:
            return None
        layer = self._member.get_layer(users[0])
        return layer if isinstance(layer, kind) else None

    def _fuse_relu(self, name: str) -> bool:
        tf = _tf()
        nxt = self._single_consumer(name, tf.keras.layers.Activation)
        if nxt is not None and act_of(nxt.activation) == Act("relu"):
            self._alias[nxt.name] = name
            return True
        return False

    def _step(self, layer, node, ins: list[str]) -> Step:
        tf = _tf()
        import larq as lq

        layers = tf.keras.layers
        name = layer.name
        cls = type(layer).__name__
        if isinstance(layer, layers.SeparableConv2D):
            return self._separable_step(layer, ins)
        if isinstance(layer, layers.DepthwiseConv2D):
            if type(layer) not in (layers.DepthwiseConv2D, lq.layers.QuantDepthwiseConv2D):
                raise _unsupported(name, layer)
            return self._linear_step(layer, ins, "depthwise")
        if isinstance(layer, layers.Conv2D):
            if type(layer) not in (layers.Conv2D, lq.layers.QuantConv2D):
                raise _unsupported(name, layer)
            if layer.groups != 1:
                raise ExportError(f"{name}: grouped convolutions are not supported")
            return self._linear_step(layer, ins, "conv")
        if isinstance(layer, layers.Dense):
            return self._linear_step(layer, ins, "dense")
        if isinstance(layer, layers.BatchNormalization):
            mult, add = bn_affine(layer)
            return Step("affine", name, ins, {"mult": mult, "add": add,
                                              "relu": self._fuse_relu(name)})
        if isinstance(layer, layers.Add) and len(ins) >= 2:
            return Step("add", name, ins, {"relu": self._fuse_relu(name)})
        if isinstance(layer, layers.Activation):
            return Step("act", name, ins, {"act": act_of(layer.activation)})
        if isinstance(layer, (layers.MaxPool2D, layers.AvgPool2D)):
            op = "maxpool" if isinstance(layer, layers.MaxPool2D) else "avgpool"
            return Step(op, name, ins, {"size": layer.pool_size, "strides": layer.strides,
                                        "padding": layer.padding.upper()})
        if isinstance(layer, layers.GlobalAveragePooling2D) and not layer.keepdims:
            return Step("mean", name, ins)
        if isinstance(layer, layers.Flatten):
            return Step("flatten", name, ins)
        if cls in _IDENTITY and len(ins) == 1:
            self._alias[name] = ins[0]
            return Step("identity", name, ins)
        if layer.weights and not isinstance(layer, layers.Normalization):
            raise _unsupported(name, layer)
        if isinstance(layer, lq.layers_base.BaseLayer):
            raise _unsupported(name, layer)
        same_scale = cls in _SAME_SCALE and len(ins) == 1
        return Step("layer", name, ins, {"layer": layer, "node": node, "same_scale": same_scale})

    def _fold_bn(self, name: str, mult: np.ndarray, add: np.ndarray):
        """Folds a BN that is the only consumer of `name`: (mult, add, output name)."""
        tf = _tf()
        bn = self._single_consumer(name, tf.keras.layers.BatchNormalization)
        if bn is None:
            return mult, add, name
        a, b = bn_affine(bn)
        self._alias[bn.name] = name
        self._folded.add(bn.name)
        return mult * a, a * add + b, bn.name

    def _linear_step(self, layer, ins, op: str) -> Step:
        attribute, quantizer = (("depthwise_kernel", "depthwise_quantizer") if op == "depthwise"
                                else ("kernel", "kernel_quantizer"))
        params = _kernel(layer, attribute, quantizer, depthwise=op == "depthwise")
        kernel = params["kernel"]
        channels = (kernel.shape[2] * kernel.shape[3]) if op == "depthwise" else kernel.shape[-1]
        add = (np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias
               else np.zeros(channels))
        params["act"] = act_of(getattr(layer, "input_quantizer", None))
        return self._finish_linear(layer, ins, op, params, np.ones(channels), add)

    def _separable_step(self, layer, ins) -> Step:
        """A separable convolution as a depthwise step and a pointwise conv step."""
        import larq as lq

        tf = _tf()
        if type(layer) not in (tf.keras.layers.SeparableConv2D, lq.layers.QuantSeparableConv2D):
            raise _unsupported(layer.name, layer)
        depthwise = _kernel(layer, "depthwise_kernel", "depthwise_quantizer", depthwise=True)
        pointwise = _kernel(layer, "pointwise_kernel", "pointwise_quantizer")
        channels = depthwise["kernel"].shape[2] * depthwise["kernel"].shape[3]
        first = Step("depthwise", f"{layer.name}/depthwise", ins, {
            **depthwise, "mult": np.ones(channels),
            "add": np.zeros(channels), "relu": False, "post": None,
            "act": act_of(getattr(layer, "input_quantizer", None)),
            **self._conv_geometry(layer),
        })
        self.steps.append(first)
        out = pointwise["kernel"].shape[-1]
        add = np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias else np.zeros(out)
        params = {**pointwise, "act": None,
                  "strides": (1, 1), "dilations": (1, 1), "padding": "VALID", "pad_value": 0.0}
        return self._finish_linear(layer, [first.name], "conv", params, np.ones(out), add,
                                   geometry=False)

    @staticmethod
    def _conv_geometry(layer) -> dict:
        return {"strides": tuple(layer.strides), "dilations": tuple(layer.dilation_rate),
                "padding": layer.padding.upper(),
                "pad_value": float(getattr(layer, "pad_values", 0.0))}

    def _finish_linear(self, layer, ins, op, params, mult, add, geometry: bool = True) -> Step:
        post = act_of(layer.activation)
        relu = False
        if post is None:
            mult, add, out_name = self._fold_bn(layer.name, mult, add)
            relu = self._fuse_relu(out_name)
        elif post == Act("relu"):
            relu, post = True, None
        elif post.kind not in ("relu", "function"):
            raise ExportError(f"{layer.name}: activation {layer.activation} is not supported")
        params.update(mult=mult, add=add, relu=relu, post=post)
        if geometry and op != "dense":
            params.update(self._conv_geometry(layer))
        return Step(op, layer.name, ins, params)

    # ----------------------------------------------------------------- queries

    def step(self, name: str) -> Step:
        return self._by_name[name]

    def binary_input(self, step: Step) -> tuple[str, Act] | None:
        """(pre-activation tensor, its 1-bit activation) when `step` reads a binary input.

        Either the step's own input quantizer (ResNetE) or an activation step
        that makes its input ({0, range} or +-1; quantize_model's models).
        """
        act = step.params.get("act")
        if act is not None:
            return (step.inputs[0], act) if act.binary else None
        source = self._by_name.get(step.inputs[0])
        if source is not None and source.op == "act" and source.params["act"] is not None \
                and source.params["act"].binary:
            return source.inputs[0], source.params["act"]
        return None

    def lce_plan(self) -> dict:
        """Which 1-bit-weight layers LCE binarizes, and why the others stay float.

        `binary`: names of the convolutions LCE turns into `LceBconv2d` (+-1
        weights that read a 1-bit activation); `float`: name -> reason for
        every other layer with +-1 weights.
        """
        binary, other = [], {}
        for s in self.steps:
            if s.op not in ("conv", "depthwise", "dense") or s.params["grid"] != 1:
                continue
            if s.op == "depthwise":
                other[s.name] = "depthwise: LCE has no binary depthwise convolution"
            elif s.op == "dense":
                other[s.name] = "dense: LCE binarizes convolutions only"
            elif self.binary_input(s) is None:
                other[s.name] = ("its input is not a 1-bit activation (full-precision "
                                 "tensor such as a residual sum or linear bottleneck)")
            elif self.binary_input(s)[1].kind == "round" and s.params["padding"] == "SAME" \
                    and s.params["pad_value"] != 0.0:
                other[s.name] = "round activations with pad_values != 0"
            else:
                binary.append(s.name)
        return {"binary": binary, "float": other}

    def quantized_conv_inputs(self) -> list[str]:
        """Names of the tensors that reach a convolution through its quantized activation.

        In the 1-bit member these are the tensors LCE binarizes: their values
        are compared with the threshold (0.5 for `round`).
        """
        return [s.inputs[0] for s in self.steps
                if s.op == "conv" and s.params["act"] is not None]

    def grid_scales(self) -> set[float]:
        """value_range / n of every k-bit `round` activation (an int8 grid's scale)."""
        acts = [s.params.get("act") for s in self.steps]
        return {a.value_range / a.levels for a in acts
                if a is not None and a.kind == "round" and a.bits <= 8}

    def grid_only_tensors(self) -> set[str]:
        """Tensors read only through one k-bit `round` activation (k <= 8).

        In an int8 file such a tensor is requantized straight onto the
        activation's grid (scale r/n, zero point -128: the requantization
        rounds and saturates at 0) instead of first onto a calibrated 8-bit
        range: one rounding instead of two.
        """
        readers: dict[str, set] = collections.defaultdict(set)
        for s in self.steps:
            if s.op == "identity":
                continue
            act = s.params.get("act")
            for name in s.inputs:
                grid = (act is not None and act.kind == "round" and act.bits <= 8
                        and (s.op == "act" or (s.op in ("conv", "depthwise", "dense")
                                               and name == s.inputs[0])))
                readers[name].add((act.value_range, act.bits) if grid else None)
        return {name for name, acts in readers.items()
                if name != self.output and len(acts) == 1 and None not in acts
                and self._by_name[name].op != "input"
                and self._by_name[name].params.get("post") is None}

    def has_symmetric_activations(self) -> bool:
        return any(s.params.get("act") is not None and s.params["act"].kind == "symmetric"
                   for s in self.steps)

    # ----------------------------------------------------------------- emission

    def forward(self, x, mode: str = "float", ranges: Mapping[str, tuple] | None = None,
                taps: dict | None = None):
        """The member's logits as TensorFlow ops (`mode`: float, int8 or lce).

        `ranges` (int8 mode) maps tensor names to calibrated (min, max);
        `taps` (float mode), when a dict, receives every tensor that int8 mode
        quantizes with a calibrated range. In lce mode, what is not binarized
        is float32 (the member's arithmetic), or with `ranges` int8 as in int8
        mode.
        """
        from quantens.export import lce

        tf = _tf()
        if mode not in ("float", "int8", "lce"):
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "int8" and ranges is None:
            raise ValueError("int8 mode needs calibrated ranges")
        # the arithmetic of everything that is not a binary convolution
        arithmetic = "int8" if ranges is not None and mode in ("int8", "lce") else mode
        values: dict[str, Any] = {}
        quantized: dict[tuple, Any] = {}
        pending: dict[str, np.ndarray] = {}  # LCE: constants to add to an ADD's summand
        scale_of: dict[str, str] = {}  # tensor -> the tap whose int8 range it has
        binary = set(self.lce_plan()["binary"]) if mode == "lce" else set()
        grid_only = self.grid_only_tensors()

        def tap(name, t, same_as: str | None = None):
            if same_as is not None:  # TFLite keeps the input's scale: round like it
                if same_as not in scale_of:
                    return t
                name = scale_of[same_as]
            elif name in grid_only:  # requantized onto the grid by its only reader
                return t
            elif taps is not None:
                taps[name] = t
            scale_of[step.name] = name
            if arithmetic == "int8":
                lo, hi = ranges[name]
                t = tf.quantization.fake_quant_with_min_max_args(
                    t, min=float(lo), max=float(hi), num_bits=8)
            return t

        def keep_scale(step):  # the output has its input's int8 scale
            if step.inputs[0] in scale_of:
                scale_of[step.name] = scale_of[step.inputs[0]]

        def activation(name: str, act: Act | None):
            if act is None:
                return values[name]
            key = _act_key(name, act)
            if key not in quantized:
                quantized[key] = self._activation(values[name], act, arithmetic)
            return quantized[key]

        for step in self.steps:
            p = step.params
            if step.op == "identity":
                continue
            if step.op == "input":
                values[step.name] = tap(step.name, tf.convert_to_tensor(x, tf.float32))
                continue
            ins = [values[n] for n in step.inputs]
            if step.op in ("conv", "depthwise", "dense"):
                if step.name in binary:
                    source, act = self.binary_input(step)
                    # int8: the binarizer reads the activation on its int8 grid {0, r}
                    on_grid = activation(source, act) if arithmetic == "int8" else None
                    y, correction = lce.binary_conv(values[source], act, step, self._pads,
                                                    on_grid=on_grid)
                    if correction is not None:
                        users = [t for t in self.steps
                                 if step.name in t.inputs and t.op != "identity"]
                        if (not p["relu"] and len(users) == 1 and users[0].op == "add"
                                and len(users[0].inputs) == 2):
                            # LCE fuses any constant ADD after a bconv into its per-channel
                            # bias (and then fails): add it to the other summand instead
                            pending[step.name] = correction
                        else:
                            y = y + correction
                else:
                    y = self._linear(activation(step.inputs[0], p["act"]), step, arithmetic,
                                     spread=mode == "lce")
                if p["relu"]:
                    y = tf.nn.relu(y)
                if p.get("post") is not None:
                    y = self._activation(tap(step.name, y), p["post"], arithmetic)
                    y = tap(f"{step.name}/activation", y)
                else:
                    y = tap(step.name, y)
            elif step.op == "affine":
                y = self._affine(ins[0], p, arithmetic)
                y = tap(step.name, y)
            elif step.op == "add":
                for i, name in enumerate(step.inputs):
                    if name in pending and len(ins) == 2:
                        ins[1 - i] = ins[1 - i] + pending.pop(name)
                y = tf.add_n(ins) if len(ins) > 2 else ins[0] + ins[1]
                if p["relu"]:
                    y = tf.nn.relu(y)
                y = tap(step.name, y)
            elif step.op == "act":
                act = p["act"]
                if act is None:
                    y = ins[0]
                elif act.kind in ("relu", "function", "clip"):
                    y = tap(step.name, self._activation(ins[0], act, arithmetic))
                else:
                    y = activation(step.inputs[0], act)
                    if act.kind == "round" and act.bits > 8:  # no int8 grid: calibrated
                        y = tap(step.name, y)
            elif step.op in ("maxpool", "avgpool"):
                pool = tf.nn.max_pool2d if step.op == "maxpool" else tf.nn.avg_pool2d
                if step.op == "maxpool":
                    keep_scale(step)
                y = pool(ins[0], p["size"], p["strides"], p["padding"])
                if step.op == "avgpool":
                    y = tap(step.name, y, same_as=step.inputs[0])
            elif step.op == "mean":
                y = tap(step.name, tf.reduce_mean(ins[0], axis=[1, 2]))
            elif step.op == "flatten":
                y = tf.reshape(ins[0], [-1, int(np.prod(ins[0].shape[1:]))])
                keep_scale(step)
            elif step.op == "layer":
                y = self._call_layer(step, values)
                if p["same_scale"]:
                    keep_scale(step)
                else:
                    y = tap(step.name, y)
            else:  # pragma: no cover
                raise AssertionError(step.op)
            values[step.name] = y
        return values[self.output]

    def _call_layer(self, step: Step, values: dict):
        """Calls a layer without quantized weights on the values of its inputs."""
        from quantens.convert import _Reuse

        node, layer = step.params["node"], step.params["layer"]
        tensors = {kid: _Reuse(values[self._source(self._producer[kid])])
                   for kid, _ in node._keras_inputs_ids_and_indices}
        args, kwargs = node.map_arguments(tensors)
        if getattr(layer, "_expects_training_arg", False):
            kwargs = {**kwargs, "training": False}
        return layer(*args, **kwargs)

    def _activation(self, x, act: Act, mode: str):
        from quantens.export import int8

        tf = _tf()
        if act.kind == "relu":
            y = tf.nn.relu(x)
            return y if act.max_value is None else tf.minimum(y, act.max_value)
        if act.kind == "clip":
            return tf.clip_by_value(x, -1.0, 1.0)
        if act.kind == "sign":
            return tf.sign(tf.sign(x) + 0.1)  # larq.math.sign: 0 -> +1
        if act.kind == "function":
            return act.quantizer(x)
        if mode == "int8" and act.kind == "round":
            return int8.round_to_grid(x, act)
        if mode == "int8":
            raise ExportError(
                "int8 export supports `round` activations; `det_sign` members with 2..8 "
                "bits are exported as float32"
            )
        if act.quantizer is not None:  # the member's own arithmetic
            return act.quantizer(x)
        n = float(act.levels)
        low = 0.0 if act.kind == "round" else -1.0
        unit = (tf.clip_by_value(x, low, 1.0) - low) / (1.0 - low)
        return tf.round(unit * n) / n * (1.0 - low) + low

    def _linear(self, a, step: Step, mode: str, spread: bool = False):
        from quantens.export import int8

        tf = _tf()
        p = step.params
        # a dense kernel on a grid with a scale per output channel (narrow) needs
        # per-channel int8 scales: only as a 1x1 convolution
        dense_as_conv = (mode == "int8" and step.op == "dense" and p["unit"] is not None
                         and np.ptp(p["unit"]) > 0)
        if mode == "int8":  # BN folded into the kernel: one int8 op, one rounding
            kernel = int8.fake_quant_kernel(step, per_channel=step.op != "dense" or dense_as_conv,
                                            as_conv=dense_as_conv, spread=spread)
            mult = None
        else:  # the member's order (conv, then BN): ties such as sign(0) stay exact
            kernel = tf.constant(p["kernel"].astype(np.float32))
            mult = p["mult"].astype(np.float32)
        if dense_as_conv:
            y = tf.nn.conv2d(tf.reshape(a, [-1, 1, 1, int(a.shape[-1])]), kernel, 1, "VALID")
            y = tf.reshape(y, [-1, int(kernel.shape[-1])])
        elif step.op == "dense":
            y = tf.matmul(a, kernel)
        else:
            padding = p["padding"]
            if padding == "SAME" and p["pad_value"] != 0.0:
                a = tf.pad(a, self._pads(a, step), constant_values=p["pad_value"])
                padding = "VALID"
            if step.op == "depthwise":
                strides = (1, *p["strides"], 1)
                y = tf.nn.depthwise_conv2d(a, kernel, strides, padding,
                                           dilations=p["dilations"])
            else:
                y = tf.nn.conv2d(a, kernel, p["strides"], padding, dilations=p["dilations"])
        if mult is not None and np.any(p["mult"] != 1.0):
            y = y * mult
        return tf.nn.bias_add(y, p["add"].astype(np.float32))

    def _pads(self, x, step: Step) -> list[list[int]]:
        p = step.params
        kh, kw = p["kernel"].shape[:2]
        h, w = int(x.shape[1]), int(x.shape[2])
        return [[0, 0], list(same_padding(h, kh, p["strides"][0], p["dilations"][0])),
                list(same_padding(w, kw, p["strides"][1], p["dilations"][1])), [0, 0]]

    def _affine(self, x, p: dict, mode: str):
        from quantens.export import int8

        tf = _tf()
        mult, add = p["mult"], p["add"].astype(np.float32)
        if len(x.shape) == 4 and mode == "int8":
            # one DEPTHWISE_CONV_2D: a single rounding
            kernel = int8.fake_quant_weights(mult.reshape(1, 1, -1, 1), None, mult,
                                             per_channel=True, depthwise=True)
            y = tf.nn.bias_add(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID"), add)
        else:
            y = x * mult.astype(np.float32) + add
        return tf.nn.relu(y) if p["relu"] else y


def calibrate(graph: MemberGraph, data, max_examples: int = MAX_CALIBRATION_EXAMPLES,
              batch_size: int = 256) -> dict[str, tuple[float, float]]:
    """Min and max of every int8 tensor of `graph` in float mode over `data`.

    ```python
    import numpy as np
    import quantens
    from quantens.export import MemberGraph, calibrate
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 4))
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype("float32")
    ranges = calibrate(MemberGraph(ensemble.member(4), 4), x)
    assert ranges["logits"][0] < ranges["logits"][1]
    ```
    """
    tf = _tf()

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec((None, *graph.input_shape), tf.float32)])
    def stats(batch):
        taps: dict = {}
        graph.forward(batch, "float", taps=taps)
        return {k: (tf.reduce_min(v), tf.reduce_max(v)) for k, v in taps.items()}

    ranges: dict[str, list[float]] = {}
    seen = 0
    for x, _ in iter_batches(data, batch_size):
        x = x[: max_examples - seen]
        seen += len(x)
        for name, (lo, hi) in stats(x).items():
            lo, hi = float(lo), float(hi)
            old = ranges.get(name, [lo, hi])
            ranges[name] = [min(old[0], lo), max(old[1], hi)]
        if seen >= max_examples:
            break
    if not seen:
        raise ExportError("calibration_data holds no examples")
    result = {}
    for name, (lo, hi) in ranges.items():
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # zero must be exactly representable
        if hi - lo < DEAD_TENSOR_WIDTH:
            # zero on every calibration example (a dead ReLU, logits of an untrained
            # classifier): a unit range, not a sliver. An output scale of 1e-3/255
            # would be over 256 times finer than its op's input scale times weight
            # scale, and XNNPACK refuses to prepare such an op.
            hi = lo + 1.0
        result[name] = (lo, hi)
    return result
