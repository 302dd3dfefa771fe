"""The float emitter: a member's steps as TensorFlow ops, in the member's own arithmetic.

`FloatEmitter(graph).run(x)` emits every step of a `StepGraph` in order,
one method per kind of step (`emit`, dispatched on the step's class), and
returns the logits. The int8 emitter (`quantens.export.int8`) and the LCE
emitter (`quantens.export.lce`) subclass it and change only the arithmetic
(`linear`, `affine`, `apply_activation`, `quantize`) or one kind of step.

Each tensor that an int8 file quantizes with a calibrated range goes through
`tap`: in float mode it is recorded (`calibrate` reads the ranges from
there), in int8 mode it is fake-quantized on its range. A step whose int8
form keeps its input's scale (max pooling, reshapes) takes that scale
instead (`keep_scale`).

```python
import numpy as np
import quantens
from quantens.export.builder import build_graph
from quantens.export.emit import FloatEmitter, calibrate
from zoo import create_model

ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 4))
graph = build_graph(ensemble.member(4), bits=4)
x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
np.testing.assert_allclose(FloatEmitter(graph).run(x), ensemble.member(4)(x), atol=1e-4)
assert calibrate(graph, x)["logits"][0] < 0.0
```
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from quantens import keras_graph
from quantens.errors import ExportError
from quantens.export.common import iter_batches, tensorflow
from quantens.export.graph import StepGraph
from quantens.export.steps import (
    Act,
    ActStep,
    AddStep,
    AffineStep,
    AvgPoolStep,
    DenseStep,
    DepthwiseStep,
    IdentityStep,
    InputStep,
    LayerStep,
    LinearStep,
    MaxPoolStep,
    MeanStep,
    ReshapeStep,
    Step,
)

__all__ = ["DEAD_TENSOR_WIDTH", "MAX_CALIBRATION_EXAMPLES", "FloatEmitter", "calibrate"]

MAX_CALIBRATION_EXAMPLES = 2048
DEAD_TENSOR_WIDTH = 1e-6  # a calibrated range narrower than this: the tensor is ~0


class FloatEmitter:
    """Emits a `StepGraph` as float32 TensorFlow ops that compute what the member computes.

    `taps`, when a dict, receives every tensor that an int8 file quantizes
    with a calibrated range (by name).
    """

    def __init__(self, graph: StepGraph, taps: dict | None = None):
        self.graph = graph
        self.taps = taps
        self.x = None  # the input batch, while `run` runs
        self.values: dict[str, Any] = {}
        self._activated: dict[tuple, Any] = {}  # (tensor, activation) -> its value
        self.scale_of: dict[str, str] = {}  # tensor -> the tap whose int8 range it has
        self.grid_only = graph.grid_only_tensors()

    def run(self, x):
        """The logits of input batch `x`."""
        self.x = x
        for step in self.graph.steps:
            if isinstance(step, IdentityStep):
                continue
            self.values[step.name] = self.emit(step)
        return self.values[self.graph.output]

    # --------------------------------------------------------- the arithmetic

    def quantize(self, name: str, t):
        """A tapped tensor in this arithmetic (float: as it is)."""
        return t

    def apply_activation(self, x, act: Act):
        tf = tensorflow()
        if act.kind == "relu":
            y = tf.nn.relu(x)
            return y if act.max_value is None else tf.minimum(y, act.max_value)
        if act.kind == "clip":
            return tf.clip_by_value(x, -1.0, 1.0)
        if act.kind == "sign":
            return tf.sign(tf.sign(x) + 0.1)  # larq.math.sign: 0 -> +1
        if act.kind == "function":
            return act.quantizer(x)
        return self.grid_activation(x, act)

    def grid_activation(self, x, act: Act):
        """A k-bit activation (`round`, `symmetric`)."""
        tf = tensorflow()
        if act.quantizer is not None:  # the member's own arithmetic
            if isinstance(act.quantizer, tf.keras.layers.Layer) and act.quantizer.built:
                # its `call`, outside the Keras layer's name scope: the quantizer's name
                # carries a process-wide counter, which would make the file's tensor
                # names, and so its size, differ from one export to the next
                return act.quantizer.call(x)
            return act.quantizer(x)
        n = float(act.levels)
        low = 0.0 if act.kind == "round" else -1.0
        unit = (tf.clip_by_value(x, low, 1.0) - low) / (1.0 - low)
        return tf.round(unit * n) / n * (1.0 - low) + low

    def linear(self, a, step: LinearStep):
        """The member's order (conv, then BN): ties such as sign(0) stay exact."""
        tf = tensorflow()
        kernel = tf.constant(step.kernel.astype(np.float32))
        y = self.apply_kernel(a, kernel, step)
        if np.any(step.mult != 1.0):
            y = y * step.mult.astype(np.float32)
        return tf.nn.bias_add(y, step.add.astype(np.float32))

    def apply_kernel(self, a, kernel, step: LinearStep):
        """`a` (*) `kernel` as the step's op (matmul, convolution, depthwise convolution)."""
        tf = tensorflow()
        if isinstance(step, DenseStep):
            return tf.matmul(a, kernel)
        geometry = step.geometry
        padding = geometry.padding
        if padding == "SAME" and geometry.pad_value != 0.0:
            a = tf.pad(a, self.pads(a, step), constant_values=geometry.pad_value)
            padding = "VALID"
        if isinstance(step, DepthwiseStep):
            return tf.nn.depthwise_conv2d(a, kernel, (1, *geometry.strides, 1), padding,
                                          dilations=geometry.dilations)
        return tf.nn.conv2d(a, kernel, geometry.strides, padding,
                            dilations=geometry.dilations)

    @staticmethod
    def pads(x, step: LinearStep) -> list[list[int]]:
        """The explicit SAME padding of a convolution step's input `x`."""
        return step.geometry.pads(int(x.shape[1]), int(x.shape[2]), step.kernel.shape[:2])

    def affine(self, x, step: AffineStep):
        tf = tensorflow()
        y = x * step.mult.astype(np.float32) + step.add.astype(np.float32)
        return tf.nn.relu(y) if step.relu else y

    # ------------------------------------------------------------ the state

    def tap(self, step: Step, name: str, t, same_as: str | None = None):
        """`t`, which the int8 file quantizes on the calibrated range of tensor `name`.

        `same_as`: TFLite keeps the scale of that input (round like it).
        """
        if same_as is not None:
            if same_as not in self.scale_of:
                return t
            name = self.scale_of[same_as]
        elif name in self.grid_only:  # requantized onto the grid by its only reader
            return t
        elif self.taps is not None:
            self.taps[name] = t
        self.scale_of[step.name] = name
        return self.quantize(name, t)

    def keep_scale(self, step: Step) -> None:
        """The output of `step` has its input's int8 scale."""
        if step.inputs[0] in self.scale_of:
            self.scale_of[step.name] = self.scale_of[step.inputs[0]]

    def activated(self, name: str, act: Act | None):
        """Tensor `name` through `act`, computed once per tensor and activation."""
        if act is None:
            return self.values[name]
        key = (name, *act.key())
        if key not in self._activated:
            self._activated[key] = self.apply_activation(self.values[name], act)
        return self._activated[key]

    # ------------------------------------------------------------- the steps

    @functools.singledispatchmethod
    def emit(self, step: Step):  # pragma: no cover
        raise AssertionError(f"no emitter for {type(step).__name__}")

    @emit.register
    def _(self, step: InputStep):
        tf = tensorflow()
        return self.tap(step, step.name, tf.convert_to_tensor(self.x, tf.float32))

    @emit.register
    def _(self, step: LinearStep):
        y = self.linear_output(step)
        if step.relu:
            y = tensorflow().nn.relu(y)
        if step.post is not None:
            y = self.apply_activation(self.tap(step, step.name, y), step.post)
            return self.tap(step, f"{step.name}/activation", y)
        return self.tap(step, step.name, y)

    def linear_output(self, step: LinearStep):
        """A linear step before its ReLU or activation."""
        return self.linear(self.activated(step.inputs[0], step.act), step)

    @emit.register
    def _(self, step: AffineStep):
        return self.tap(step, step.name, self.affine(self.values[step.inputs[0]], step))

    @emit.register
    def _(self, step: AddStep):
        ins = self.summands(step)
        tf = tensorflow()
        y = tf.add_n(ins) if len(ins) > 2 else ins[0] + ins[1]
        if step.relu:
            y = tf.nn.relu(y)
        return self.tap(step, step.name, y)

    def summands(self, step: AddStep) -> list:
        return [self.values[n] for n in step.inputs]

    @emit.register
    def _(self, step: ActStep):
        act = step.act
        if act is None:
            return self.values[step.inputs[0]]
        if act.kind in ("relu", "function", "clip"):
            return self.tap(step, step.name,
                            self.apply_activation(self.values[step.inputs[0]], act))
        y = self.activated(step.inputs[0], act)
        if act.kind == "round" and act.bits > 8:  # no int8 grid: calibrated
            y = self.tap(step, step.name, y)
        return y

    @emit.register
    def _(self, step: MaxPoolStep):
        self.keep_scale(step)
        return tensorflow().nn.max_pool2d(self.values[step.inputs[0]], step.size, step.strides,
                                          step.padding)

    @emit.register
    def _(self, step: AvgPoolStep):
        y = tensorflow().nn.avg_pool2d(self.values[step.inputs[0]], step.size, step.strides,
                                       step.padding)
        return self.tap(step, step.name, y, same_as=step.inputs[0])

    @emit.register
    def _(self, step: MeanStep):
        return self.tap(step, step.name,
                        tensorflow().reduce_mean(self.values[step.inputs[0]], axis=[1, 2]))

    @emit.register
    def _(self, step: ReshapeStep):
        y = tensorflow().reshape(self.values[step.inputs[0]], [-1, *step.shape])
        self.keep_scale(step)
        return y

    @emit.register
    def _(self, step: LayerStep):
        values = {kid: self.values[source] for kid, source in step.arguments.items()}
        y = keras_graph.call_node(step.layer, step.node, values, training=False,
                                  override_training=True)
        if step.same_scale:
            self.keep_scale(step)
            return y
        return self.tap(step, step.name, y)


def calibrate(graph: StepGraph, data, max_examples: int = MAX_CALIBRATION_EXAMPLES,
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
    tf = tensorflow()

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec((None, *graph.input_shape), tf.float32)])
    def stats(batch):
        taps: dict = {}
        FloatEmitter(graph, taps=taps).run(batch)
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
