"""Full-integer int8 files of 2..8-bit members, on the member's own grid.

BN is folded into the convolution before it; a DoReFa kernel takes values
(2i - n)/n with n = 2^k - 1, so the folded kernel of output channel c is
(2i - n) * (A_c / n) for BN's multiplier A_c, stored as the odd integers 2i - n
with per-channel scale |A_c| / n (exact for k <= 7; at 8 bits |2i - n| can
reach 255 > 127, and channels that need it fall back to a max-abs scale).
The `narrow` weight grid is integers -(2^(k-1) - 1) ... 2^(k-1) - 1 times a
per-channel scale s: stored as those integers with scale |A_c| s, exact up to
8 bits. Depthwise kernels are stored the same way, per channel of their output. A
k-bit `round` activation on [0, r] (r = 1 in ResNetE, 6 for a converted ReLU6)
takes the values i * r / n: an int8 tensor of scale r / n and zero point -128,
produced by a requantization (which rounds to the grid and saturates at 0)
and a MINIMUM with r. Every other tensor (input, stem, BN and residual sums,
linear bottlenecks, pooled features, logits) is int8 with a range calibrated
on training data.
"""

from __future__ import annotations

import math

import numpy as np

from quantens.errors import ExportError
from quantens.export.common import quiet_converter_warnings, tensorflow
from quantens.export.emit import FloatEmitter
from quantens.export.flatbuffer import int8_conv_weights
from quantens.export.graph import StepGraph
from quantens.export.steps import Act, AffineStep, DenseStep, LinearStep

__all__ = [
    "Int8Emitter", "fake_quant_kernel", "fake_quant_weights", "int8_flatbuffer",
    "round_to_grid", "weights_report",
]


def round_to_grid(x, act: Act):
    """clip(x, 0, r) rounded to the grid i * r / n as int8 (scale r/n, zero point -128)."""
    tf = tensorflow()
    r, n = float(act.value_range), float(act.levels)
    if act.levels > 255:  # more levels than int8 holds: a calibrated-free 8-bit range
        return tf.quantization.fake_quant_with_min_max_args(
            tf.clip_by_value(x, 0.0, r), min=0.0, max=r, num_bits=8)
    # requantize onto scale r/n, zero point -128 (rounds, saturates at 0), then
    # MINIMUM with r: exactly clip(x, 0, r) rounded to the grid i * r / n
    return tf.quantization.fake_quant_with_min_max_args(
        tf.minimum(x, r), min=0.0, max=255.0 * r / n, num_bits=8)


def fake_quant_weights(kernel: np.ndarray, unit: np.ndarray | None, mult: np.ndarray,
                       per_channel: bool, depthwise: bool = False, spread: bool = False):
    """Int8 weights of a folded kernel; on the grid with scale |mult| * unit where it fits.

    `kernel` is the folded kernel (quantized kernel * mult), the quantized
    kernel being integers * `unit` per output channel (DoReFa: 1/n, the
    narrow grid: its scale); channels whose integers exceed 127 (or without a
    grid) get a max-abs scale. Per-channel scales run over the output channels
    (for a depthwise kernel (h, w, c, m): the c * m channels TFLite stores last).

    `spread`: the grid's integers times the largest m with m * max|integer|
    <= 127 (scale |mult| * unit / m; +-1 weights become +-127). Still exact,
    and the int32 bias, whose scale is the input's times the weights', gets m
    times finer: with a coarse input grid (a 1-bit activation's scale is its
    range r), a bias rounded to units of r * |mult| would move the output by
    up to half that and flip the next binary activation.
    """
    tf = tensorflow()
    shape = kernel.shape
    if depthwise:  # per channel of the output: (h, w, 1, c * m), as TFLite stores it
        kernel = kernel.reshape(shape[0], shape[1], 1, shape[2] * shape[3])
    axes = tuple(range(kernel.ndim - 1))
    absmax = np.abs(kernel).max(axis=axes)
    scale = absmax / 127.0
    if unit is not None:
        step = np.where(mult == 0, 1.0, mult) * unit
        ints = np.abs(np.rint(kernel / step)).max(axis=axes)
        exact = (ints <= 127) & (mult != 0)
        grid_scale = np.abs(mult) * unit
        if spread:
            grid_scale = grid_scale / np.floor(127.0 / np.clip(ints, 1.0, 127.0))
        scale = np.where(exact, grid_scale, scale)
    if not per_channel:
        scale = np.full_like(scale, scale.max())
    bound = (127.0 * np.maximum(scale, 1e-12)).astype(np.float32)
    weights = tf.constant(kernel.astype(np.float32))
    if per_channel:
        weights = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            weights, -bound, bound, num_bits=8, narrow_range=True)
    else:
        weights = tf.quantization.fake_quant_with_min_max_vars(
            weights, -float(bound[0]), float(bound[0]), num_bits=8, narrow_range=True)
    return tf.reshape(weights, shape) if depthwise else weights


def fake_quant_kernel(step: LinearStep, per_channel: bool, as_conv: bool = False,
                      spread: bool = False):
    """The int8 weights of a linear step (conv, depthwise, dense), BN folded in.

    `as_conv`: a dense kernel (in, out) as a 1x1 conv kernel (1, 1, in, out),
    so that its scales can be per output channel (TFLite's converter takes
    per-channel scales for CONV_2D, not for a matmul). `spread`: see
    `fake_quant_weights`.
    """
    folded = step.folded_kernel()
    if as_conv:
        folded = folded.reshape(1, 1, *folded.shape)
    return fake_quant_weights(folded, step.unit, step.mult, per_channel,
                              depthwise=step.depthwise, spread=spread)


class Int8Emitter(FloatEmitter):
    """Emits a `StepGraph` fake-quantized on the member's grid, for the TFLite converter.

    `ranges` maps tensor names to calibrated (min, max) (`emit.calibrate`).
    BN is folded into the kernel before it (one int8 op, one rounding); a
    k-bit `round` activation is requantized onto its grid (`round_to_grid`).
    `spread`: see `fake_quant_weights` (LCE files).
    """

    def __init__(self, graph: StepGraph, ranges, spread: bool = False):
        super().__init__(graph)
        if ranges is None:
            raise ValueError("int8 mode needs calibrated ranges")
        self.ranges = ranges
        self.spread = spread

    def quantize(self, name: str, t):
        lo, hi = self.ranges[name]
        return tensorflow().quantization.fake_quant_with_min_max_args(
            t, min=float(lo), max=float(hi), num_bits=8)

    def grid_activation(self, x, act: Act):
        if act.kind == "round":
            return round_to_grid(x, act)
        raise ExportError(
            "int8 export supports `round` activations; `det_sign` members with 2..8 "
            "bits are exported as float32"
        )

    def linear(self, a, step: LinearStep):
        tf = tensorflow()
        # a dense kernel on a grid with a scale per output channel (narrow) needs
        # per-channel int8 scales: only as a 1x1 convolution
        dense_as_conv = (isinstance(step, DenseStep) and step.unit is not None
                         and np.ptp(step.unit) > 0)
        kernel = fake_quant_kernel(step, per_channel=not isinstance(step, DenseStep)
                                   or dense_as_conv, as_conv=dense_as_conv, spread=self.spread)
        if dense_as_conv:
            y = tf.nn.conv2d(tf.reshape(a, [-1, 1, 1, int(a.shape[-1])]), kernel, 1, "VALID")
            y = tf.reshape(y, [-1, int(kernel.shape[-1])])
        else:
            y = self.apply_kernel(a, kernel, step)
        return tf.nn.bias_add(y, step.add.astype(np.float32))

    def affine(self, x, step: AffineStep):
        tf = tensorflow()
        if len(x.shape) != 4:
            return super().affine(x, step)
        # one DEPTHWISE_CONV_2D: a single rounding
        mult, add = step.mult, step.add.astype(np.float32)
        kernel = fake_quant_weights(mult.reshape(1, 1, -1, 1), None, mult,
                                    per_channel=True, depthwise=True)
        y = tf.nn.bias_add(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID"), add)
        return tf.nn.relu(y) if step.relu else y


def int8_flatbuffer(graph: StepGraph, ranges) -> bytes:
    """The int8 file of `graph` with calibrated `ranges` (see `emit.calibrate`)."""
    tf = tensorflow()
    fn = tf.function(lambda x: Int8Emitter(graph, ranges).run(x), autograph=False,
                     input_signature=[tf.TensorSpec((1, *graph.input_shape), tf.float32,
                                                    "images")])
    holder = tf.Module()
    holder.fn = fn
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function()], holder)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with quiet_converter_warnings():
        return converter.convert()


def weights_report(flatbuffer: bytes, bits: int, grid_scales=None) -> dict:
    """How the quantized convolutions of an int8 file sit on the member's grid.

    A conv (or depthwise conv) reads the member's k-bit grid when its input
    has zero point -128 and the scale of one of the member's k-bit activations
    (`grid_scales`, value_range / n; default 1/n).
    """
    n = 2**bits - 1
    scales = sorted(grid_scales) if grid_scales else [1 / n]
    convs = int8_conv_weights(flatbuffer)
    grid = [c for c in convs if c["input_zero_point"] == -128
            and c["input_scale"] is not None
            and any(math.isclose(c["input_scale"], s, rel_tol=1e-6) for s in scales)]

    def rows(c):
        w = c["weights"]
        if c["op"] == "DEPTHWISE_CONV_2D":  # (1, h, w, channels): channels last
            return list(w.reshape(-1, w.shape[-1]).T)
        return list(w.reshape(w.shape[0], -1))

    grid_rows = [r for c in grid for r in rows(c)]
    return {
        "conv_ops": len(convs),
        "grid_conv_ops": len(grid),  # their input is a k-bit grid i * r / n
        "grid_conv_channels": len(grid_rows),
        "max_levels_per_channel": max((len(np.unique(r)) for r in grid_rows), default=0),
        # weights exactly the grid's odd integers 2i - n (always for k <= 7)
        "channels_exactly_on_grid": sum(
            bool(np.all(np.abs(r) <= n) and np.all(r % 2 == 1)) for r in grid_rows),
    }
