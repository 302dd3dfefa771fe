"""The 1-bit member as a Larq Compute Engine file: bitpacked binary convolutions.

A 1-bit member's convolution with +-1 weights that reads a 1-bit activation
is rewritten exactly into the +-1 form that LCE binarizes (`binary_conv`);
`MemberGraph.lce_plan()` says which convolutions are binarized and why the
others are not. Everything else (full-precision layers, depthwise
convolutions, convolutions of full-precision tensors) is, by `lce_flatbuffer`'s
`int8`: float32 ops whose filters are stored as int8 wherever int8 holds them
exactly (the default, `"exact"`: the file computes what the member computes),
int8 ops on calibrated ranges (`"full"`, as an int8 file), or float32.

Why "exact" is the default: int8 ops round full-precision tensors (the input,
linear bottlenecks, residual sums) that feed the member's 1-bit thresholds,
and an int8 op's int32 bias is rounded to units of input scale * weight scale,
which for an input on a 1-bit grid (scale r) is coarse enough to flip the
next 1-bit activation. Measured on the digits test images: the 1-bit member
of the MobileNetV2-shaped test model (16x16, 12 epochs, 90.5% accurate):
exact file 100% agreement, int8-op file 93.9%; `digits_resnet_e` (4 epochs):
100% and 98.9%. Storing the +-1 filters as int8 is what makes the file
small: the converted Keras MobileNetV2 (alpha 0.35, 32x32) falls from
1,179,548 B to 479,032 B (its int8-op file: 520,344 B, the per-channel
parameters of every int8 tensor included; the 8-bit member's int8 file:
628,496 B), the MobileNetV2-shaped model from 60,792 B to 38,936 B (int8
ops: 43,368 B; 8 bits: 49,760 B). Latency (x86, 1 thread, XNNPACK) is that
of the float32 file: TFLite dequantizes constant filters once.
"""

from __future__ import annotations

import tempfile

import numpy as np

from quantens.errors import ExportError
from quantens.export.common import quiet_converter_warnings, tensorflow
from quantens.export.emit import FloatEmitter
from quantens.export.graph import StepGraph
from quantens.export.int8 import Int8Emitter
from quantens.export.int8_filters import exact_int8, store_exact_int8
from quantens.export.steps import Act, AddStep, ConvStep, LinearStep

__all__ = [
    "LCE_INT8_CHOICES", "LceEmitter", "LceInt8Emitter", "binary_conv", "lce_emitter",
    "lce_flatbuffer", "remainder_plan",
]


def binary_conv(x, act: Act, step: ConvStep, pads, on_grid=None):
    """The 1-bit conv in the +-1 form LCE binarizes, exactly equal to the member's.

    `x` is the tensor before the 1-bit activation `act`; `pads(x, step)` gives
    the SAME padding of the step. Returns the output and None, or, where the
    member pads with zeros but LCE with ones, the output without a constant
    per-position correction that the caller adds.

    `on_grid` (int8 files, `round` activations): the activation already on its
    int8 grid {0, r} (scale r, zero point -128). The binarizer then reads
    r/2 - x_q as an int8 tensor of scale r/2 and zero point 0, whose values
    +-r/2 are exactly the integers +-1: LCE's int8 binarizer (value < zero
    point gives -1) makes the same +-1 as the float rewrite, with no rounding
    of its own.

    `round` activations on [0, r] give x_q in {0, r}: s = sign(r/2 - x) =
    1 - 2 x_q / r (ties x = r/2 give x_q = 0 and s = +1, as the member rounds
    half to even), zero padding of x_q is padding of s with 1, so conv(x_q, w) =
    r (sum(w) - conv(s, w)) / 2 per output channel. `det_sign` inputs are +-1
    already; where the member pads them with 0, they are padded with 1 and the
    padding taps' weights are removed.
    """
    tf = tensorflow()
    g = step.geometry
    kernel = step.kernel  # +-1
    mult_, add_ = step.mult, step.add
    if act.kind == "sign":
        s = tf.sign(tf.sign(x) + 0.1)
        padding = pads(s, step) if g.padding == "SAME" else [[0, 0]] * 4
        if any(sum(pad) for pad in padding):
            s = tf.pad(s, padding, constant_values=1.0)
        y = tf.nn.conv2d(s, tf.constant(kernel.astype(np.float32)), g.strides, "VALID",
                         dilations=g.dilations)
        y = y * mult_.astype(np.float32) + add_.astype(np.float32)
        if g.pad_value != 1.0 and any(sum(pad) for pad in padding):
            # the member pads with v (larq's default 0), LCE's fast path with 1
            # (its zero-padding kernel gives wrong results on x86): remove what
            # the padding taps added, (1 - v) * their weights per output position
            border = np.pad(np.zeros((1, int(x.shape[1]), int(x.shape[2]), int(x.shape[-1]))),
                            padding, constant_values=1.0)
            with tf.init_scope():  # a constant: computed eagerly while tracing
                taps = tf.nn.conv2d(border.astype(np.float32), kernel.astype(np.float32),
                                    g.strides, "VALID", dilations=g.dilations).numpy()
            correction = (-mult_ * (1.0 - g.pad_value) * taps).astype(np.float32)
            return y, correction
        return y, None
    if g.pad_value != 0.0 and g.padding == "SAME":
        raise ExportError(f"{step.name}: round activations with pad_values != 0")
    r = float(act.value_range)
    if on_grid is None:
        s = tf.sign(tf.sign(0.5 * r - x) + 0.1)
    else:
        half = tf.quantization.fake_quant_with_min_max_args(
            0.5 * r - on_grid, min=-64.0 * r, max=63.5 * r, num_bits=8)
        s = tf.sign(tf.sign(half) + 0.1)
    if g.padding == "SAME" and any(sum(pad) for pad in pads(s, step)):
        s = tf.pad(s, pads(s, step), constant_values=1.0)
    y = tf.nn.conv2d(s, tf.constant(kernel.astype(np.float32)), g.strides, "VALID",
                     dilations=g.dilations)
    total = kernel.sum(axis=(0, 1, 2))
    mult = -mult_ * r / 2.0
    add = mult_ * r * total / 2.0 + add_
    return y * mult.astype(np.float32) + add.astype(np.float32), None


class LceEmitter(FloatEmitter):
    """Emits a 1-bit member's `StepGraph` with its binary convolutions in LCE's +-1 form.

    The convolutions of `graph.lce_plan()["binary"]` become `binary_conv`;
    every other step is emitted as by the emitter this class is mixed into
    (float32 here, int8 in `LceInt8Emitter`).
    """

    def __init__(self, graph: StepGraph, **kwargs):
        super().__init__(graph, **kwargs)
        self.binary = set(graph.lce_plan()["binary"])
        self.pending: dict[str, np.ndarray] = {}  # constants to add to an ADD's summand

    def linear_output(self, step: LinearStep):
        if step.name not in self.binary:
            return super().linear_output(step)
        source, act = self.graph.binary_input(step)
        # int8: the binarizer reads the activation on its int8 grid {0, r}
        on_grid = self.activated(source, act) if isinstance(self, Int8Emitter) else None
        y, correction = binary_conv(self.values[source], act, step, self.pads, on_grid=on_grid)
        if correction is not None:
            users = self.graph.readers(step.name)
            if not step.relu and len(users) == 1 and isinstance(users[0], AddStep) \
                    and len(users[0].inputs) == 2:
                # LCE fuses any constant ADD after a bconv into its per-channel
                # bias (and then fails): add it to the other summand instead
                self.pending[step.name] = correction
            else:
                y = y + correction
        return y

    def summands(self, step: AddStep) -> list:
        ins = super().summands(step)
        for i, name in enumerate(step.inputs):
            if name in self.pending and len(ins) == 2:
                ins[1 - i] = ins[1 - i] + self.pending.pop(name)
        return ins


class LceInt8Emitter(LceEmitter, Int8Emitter):
    """`LceEmitter` whose other layers are int8 on calibrated ranges (`lce_int8="full"`)."""

    def __init__(self, graph: StepGraph, ranges):
        super().__init__(graph, ranges=ranges, spread=True)


def lce_emitter(graph: StepGraph, ranges=None) -> LceEmitter:
    """The LCE emitter of `graph`: float32 remainder, or int8 on `ranges` when given."""
    return LceEmitter(graph) if ranges is None else LceInt8Emitter(graph, ranges)


LCE_INT8_CHOICES = ("exact", "full", "none")


def lce_flatbuffer(graph: StepGraph, int8: str = "exact", ranges=None) -> bytes:
    """The LCE file of a 1-bit member's graph.

    `int8` says what becomes of the layers LCE does not binarize:
    `"exact"`: float32 ops that compute what the member computes, their
    filters stored as int8 wherever int8 holds them exactly (+-1 and k-bit
    kernels with BN folded in: `quantens.export.int8_filters`), full-precision
    filters float32; `"full"`: int8 ops as in an int8 file, the full-precision
    tensors on calibrated `ranges` (`graph.calibrate`), which LCE's converter
    turns into int8 ops as the TFLite converter does (int8 arithmetic, but
    rounding the tensors that feed 1-bit thresholds flips activations: the
    file agrees with its member as an int8 file does); `"none"`: float32.
    `remainder_plan` names the layers that are int8 and float32.
    """
    tf = tensorflow()
    import larq_compute_engine as lce

    if int8 not in LCE_INT8_CHOICES:
        raise ValueError(f"int8 must be one of {LCE_INT8_CHOICES}, not {int8!r}")
    if int8 == "full" and ranges is None:
        raise ValueError("int8='full' needs calibrated ranges")
    ranges = ranges if int8 == "full" else None
    module = tf.Module()
    module.serve = tf.function(
        lambda x: {"logits": lce_emitter(graph, ranges).run(x)}, autograph=False,
        input_signature=[tf.TensorSpec((1, *graph.input_shape), tf.float32, "images")])
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        with quiet_converter_warnings():
            flatbuffer = lce.convert_saved_model(tmp)
    return store_exact_int8(flatbuffer)[0] if int8 == "exact" else flatbuffer


def remainder_plan(graph: StepGraph, int8: str) -> dict:
    """The layers with weights that LCE does not binarize: which are int8, which float32.

    `int8_layers`: names; `float32_layers`: name -> reason. With `"exact"` a
    layer is int8 when int8 holds its BN-folded filter exactly (the rule of
    `quantens.export.int8_filters`, applied to the filter the converter
    stores); with `"full"` every one is an int8 op; with `"none"` none.
    """
    binary = set(graph.lce_plan()["binary"])
    int8_layers, float_layers = [], {}
    for s in graph.steps:
        if not isinstance(s, LinearStep) or s.name in binary:
            continue
        if int8 == "full":
            int8_layers.append(s.name)
            continue
        if int8 == "none":
            float_layers[s.name] = "int8='none'"
            continue
        folded = s.folded_kernel()
        if s.depthwise:  # (h, w, c, m): per channel of the output, c * m
            h, w, c, m = folded.shape
            folded = folded.reshape(h, w, c * m)
        if exact_int8(folded.astype(np.float32), folded.ndim - 1) is None:
            float_layers[s.name] = ("int8 would round its weights (full precision, or "
                                    "integers beyond -127 ... 127)")
        else:
            int8_layers.append(s.name)
    return {"int8_layers": int8_layers, "float32_layers": float_layers}
