"""The steps of an exported member: one small typed dataclass per kind of op.

`quantens.export.builder` makes a list of these from a member (BN folded
into the convolution before it), `quantens.export.graph.StepGraph` holds the
list and answers questions about it, and the emitters (`emit` for float,
`int8`, `lce`) turn each step into TensorFlow ops. A step names its output
tensor (`name`) and the tensors it reads (`inputs`, names of earlier steps).

```python
import numpy as np
from quantens.export.steps import Act, ConvGeometry, ConvStep, Kernel

kernel = Kernel(np.ones((3, 3, 2, 4)), grid=1, unit=np.ones(4))
step = ConvStep(name="conv", inputs=["x"], kernel=kernel.values, grid=kernel.grid,
                unit=kernel.unit, act=Act("round", 1), mult=np.full(4, 0.5), add=np.zeros(4),
                geometry=ConvGeometry(strides=(1, 1), dilations=(1, 1), padding="SAME"))
assert step.output_channels == 4 and step.folded_kernel().max() == 0.5
assert step.geometry.pads(8, 8, kernel.values.shape[:2]) == [[0, 0], [1, 1], [1, 1], [0, 0]]
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from quantens.errors import ExportError

__all__ = [
    "Act", "ActStep", "AddStep", "AffineStep", "AvgPoolStep", "ConvGeometry", "ConvStep",
    "DenseStep", "DepthwiseStep", "IdentityStep", "InputStep", "Kernel", "LayerStep",
    "LinearStep", "MaxPoolStep", "MeanStep", "ReshapeStep", "Step", "act_of", "bn_affine",
    "read_kernel", "same_padding", "step_act", "weight_grid", "weight_unit",
]


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

    @property
    def on_int8_grid(self) -> bool:
        """A k-bit `round` activation with k <= 8: an int8 tensor of scale r/n, zero point -128."""
        return self.kind == "round" and self.bits <= 8

    def key(self) -> tuple:
        """What makes two activations of one tensor the same (each is computed once)."""
        return (self.kind, self.bits, self.value_range, self.max_value)


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
    """(before, after): the padding of one axis that TensorFlow's "SAME" adds."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization at inference as y = A x + B (float64)."""
    weights = dict(zip([w.name.split("/")[-1].split(":")[0] for w in bn.weights],
                       [np.asarray(w.numpy(), np.float64) for w in bn.weights], strict=True))
    mean, var = weights["moving_mean"], weights["moving_variance"]
    gamma = weights.get("gamma", np.ones_like(mean))
    beta = weights.get("beta", np.zeros_like(mean))
    mult = gamma / np.sqrt(var + bn.epsilon)
    return mult, beta - mean * mult


@dataclasses.dataclass
class Kernel:
    """A member's quantized kernel (float64), its DoReFa grid n and its unit (`weight_unit`)."""

    values: np.ndarray
    grid: int | None
    unit: np.ndarray | None

    def reshaped(self, *shape: int) -> Kernel:
        """The same kernel in another shape (its output channels, and so its unit, unchanged)."""
        return Kernel(self.values.reshape(shape), self.grid, self.unit)


def read_kernel(layer, attribute: str, quantizer_attribute: str,
                depthwise: bool = False) -> Kernel:
    """The quantized kernel of a (larq) layer: `layer.<attribute>` through its quantizer."""
    variable = getattr(layer, attribute)
    latent = np.asarray(getattr(variable, "latent_variable", variable).numpy(), np.float64)
    quantizer = getattr(layer, quantizer_attribute, None)
    kernel = (np.asarray(quantizer(latent.astype(np.float32)), np.float64)
              if quantizer is not None else latent)
    return Kernel(kernel, weight_grid(quantizer, kernel),
                  weight_unit(quantizer, latent, kernel, depthwise))


# ------------------------------------------------------------------- the steps


@dataclasses.dataclass(kw_only=True)
class Step:
    """One op of a member: its output's `name` and the names of the tensors it reads."""

    name: str
    inputs: list[str]


@dataclasses.dataclass(kw_only=True)
class InputStep(Step):
    """The member's input."""


@dataclasses.dataclass(kw_only=True)
class IdentityStep(Step):
    """A layer that is the identity at inference (dropout, noise): its readers read its input."""


@dataclasses.dataclass(kw_only=True)
class ConvGeometry:
    """Strides, dilations and padding of a 2-D convolution (height, width)."""

    strides: tuple[int, int]
    dilations: tuple[int, int]
    padding: str  # "SAME" or "VALID"
    pad_value: float = 0.0  # larq's `pad_values`: what SAME padding pads with

    @classmethod
    def of(cls, layer) -> ConvGeometry:
        """The geometry of a Keras or larq 2-D convolution layer."""
        return cls(strides=tuple(layer.strides), dilations=tuple(layer.dilation_rate),
                   padding=layer.padding.upper(),
                   pad_value=float(getattr(layer, "pad_values", 0.0)))

    def pads(self, height: int, width: int, kernel_size) -> list[list[int]]:
        """The explicit SAME padding of an NHWC input of `height` x `width`."""
        kh, kw = kernel_size
        return [[0, 0], list(same_padding(height, kh, self.strides[0], self.dilations[0])),
                list(same_padding(width, kw, self.strides[1], self.dilations[1])), [0, 0]]


@dataclasses.dataclass(kw_only=True)
class LinearStep(Step):
    """A layer with a quantized kernel, BN folded in: y = (x (*) kernel) * mult + add.

    `act`: the activation its input goes through first (the layer's input
    quantizer); `relu`: a ReLU after it; `post`: any other activation after
    it (the layer's own `activation`); `bn`: the name of the
    BatchNormalization folded into it, if any.
    """

    kernel: np.ndarray
    grid: int | None
    unit: np.ndarray | None
    act: Act | None
    mult: np.ndarray
    add: np.ndarray
    relu: bool = False
    post: Act | None = None
    bn: str | None = None
    depthwise: ClassVar[bool] = False
    kind: ClassVar[str] = "linear"  # how `lce_plan` and reports name it

    @property
    def output_channels(self) -> int:
        return int(self.kernel.shape[-1])

    def folded_kernel(self) -> np.ndarray:
        """The kernel with BN's multiplier folded into its output channels."""
        return self.kernel * self.mult


@dataclasses.dataclass(kw_only=True)
class ConvStep(LinearStep):
    """A 2-D convolution, kernel (h, w, in, out)."""

    geometry: ConvGeometry
    kind: ClassVar[str] = "conv"


@dataclasses.dataclass(kw_only=True)
class DepthwiseStep(LinearStep):
    """A depthwise 2-D convolution, kernel (h, w, channels, multiplier)."""

    geometry: ConvGeometry
    depthwise: ClassVar[bool] = True
    kind: ClassVar[str] = "depthwise"

    @property
    def output_channels(self) -> int:
        return int(self.kernel.shape[2] * self.kernel.shape[3])

    def folded_kernel(self) -> np.ndarray:
        h, w, c, m = self.kernel.shape
        return self.kernel * self.mult.reshape(1, 1, c, m)


@dataclasses.dataclass(kw_only=True)
class DenseStep(LinearStep):
    """A matrix product, kernel (in, out)."""

    kind: ClassVar[str] = "dense"


@dataclasses.dataclass(kw_only=True)
class AffineStep(Step):
    """A BatchNormalization that no convolution absorbed: y = x * mult + add (then ReLU)."""

    mult: np.ndarray
    add: np.ndarray
    relu: bool = False


@dataclasses.dataclass(kw_only=True)
class AddStep(Step):
    """The sum of two or more tensors (then ReLU)."""

    relu: bool = False


@dataclasses.dataclass(kw_only=True)
class ActStep(Step):
    """An activation layer (None: linear, the identity)."""

    act: Act | None


@dataclasses.dataclass(kw_only=True)
class MaxPoolStep(Step):
    """2-D max pooling (keeps its input's int8 scale)."""

    size: tuple[int, int]
    strides: tuple[int, int]
    padding: str


@dataclasses.dataclass(kw_only=True)
class AvgPoolStep(Step):
    """2-D average pooling."""

    size: tuple[int, int]
    strides: tuple[int, int]
    padding: str


@dataclasses.dataclass(kw_only=True)
class MeanStep(Step):
    """The mean over height and width (GlobalAveragePooling2D)."""


@dataclasses.dataclass(kw_only=True)
class ReshapeStep(Step):
    """The input in another shape, (batch, *shape) (keeps its input's int8 scale)."""

    shape: tuple[int, ...]


@dataclasses.dataclass(kw_only=True)
class LayerStep(Step):
    """A layer without quantized weights, called as itself on the values of its inputs.

    `arguments` maps the Keras tensors its call read (`keras_graph.tensor_id`)
    to the steps that make them; `same_scale`: TFLite keeps its input's int8
    scale (padding, cropping, reshapes, max pooling).
    """

    layer: Any
    node: Any
    arguments: dict[str, str]
    same_scale: bool = False


def step_act(step: Step) -> Act | None:
    """The activation a step applies to its (first) input: a linear step's or an activation's."""
    return step.act if isinstance(step, (LinearStep, ActStep)) else None
