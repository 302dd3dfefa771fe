"""The 1-bit member as a Larq Compute Engine file: bitpacked binary convolutions.

A 1-bit member's convolution with +-1 weights that reads a 1-bit activation
is rewritten exactly into the +-1 form that LCE binarizes (`binary_conv`);
everything else (full-precision layers, depthwise convolutions, convolutions
of full-precision tensors) stays a float op in the same file.
`MemberGraph.lce_plan()` says which convolutions are binarized and why the
others are not.
"""

from __future__ import annotations

import tempfile

import numpy as np

from quantens.errors import ExportError
from quantens.export.graph import Act, MemberGraph, Step, _tf


def binary_conv(x, act: Act, step: Step, pads):
    """The 1-bit conv in the +-1 form LCE binarizes, exactly equal to the member's.

    `x` is the tensor before the 1-bit activation `act`; `pads(x, step)` gives
    the SAME padding of the step. Returns the output and None, or, where the
    member pads with zeros but LCE with ones, the output without a constant
    per-position correction that the caller adds.

    `round` activations on [0, r] give x_q in {0, r}: s = sign(r/2 - x) =
    1 - 2 x_q / r (ties x = r/2 give x_q = 0 and s = +1, as the member rounds
    half to even), zero padding of x_q is padding of s with 1, so conv(x_q, w) =
    r (sum(w) - conv(s, w)) / 2 per output channel. `det_sign` inputs are +-1
    already; where the member pads them with 0, they are padded with 1 and the
    padding taps' weights are removed.
    """
    tf = _tf()
    p = step.params
    kernel = p["kernel"]  # +-1
    if act.kind == "sign":
        s = tf.sign(tf.sign(x) + 0.1)
        padding = pads(s, step) if p["padding"] == "SAME" else [[0, 0]] * 4
        if any(sum(pad) for pad in padding):
            s = tf.pad(s, padding, constant_values=1.0)
        y = tf.nn.conv2d(s, tf.constant(kernel.astype(np.float32)), p["strides"], "VALID",
                         dilations=p["dilations"])
        y = y * p["mult"].astype(np.float32) + p["add"].astype(np.float32)
        if p["pad_value"] != 1.0 and any(sum(pad) for pad in padding):
            # the member pads with v (larq's default 0), LCE's fast path with 1
            # (its zero-padding kernel gives wrong results on x86): remove what
            # the padding taps added, (1 - v) * their weights per output position
            border = np.pad(np.zeros((1, int(x.shape[1]), int(x.shape[2]), int(x.shape[-1]))),
                            padding, constant_values=1.0)
            with tf.init_scope():  # a constant: computed eagerly while tracing
                taps = tf.nn.conv2d(border.astype(np.float32), kernel.astype(np.float32),
                                    p["strides"], "VALID", dilations=p["dilations"]).numpy()
            correction = (-p["mult"] * (1.0 - p["pad_value"]) * taps).astype(np.float32)
            return y, correction
        return y, None
    if p["pad_value"] != 0.0 and p["padding"] == "SAME":
        raise ExportError(f"{step.name}: round activations with pad_values != 0")
    r = float(act.value_range)
    s = tf.sign(tf.sign(0.5 * r - x) + 0.1)
    if p["padding"] == "SAME" and any(sum(pad) for pad in pads(s, step)):
        s = tf.pad(s, pads(s, step), constant_values=1.0)
    y = tf.nn.conv2d(s, tf.constant(kernel.astype(np.float32)), p["strides"], "VALID",
                     dilations=p["dilations"])
    total = kernel.sum(axis=(0, 1, 2))
    mult = -p["mult"] * r / 2.0
    add = p["mult"] * r * total / 2.0 + p["add"]
    return y * mult.astype(np.float32) + add.astype(np.float32), None


def lce_flatbuffer(graph: MemberGraph) -> bytes:
    """The LCE file of a 1-bit member's graph."""
    tf = _tf()
    import larq_compute_engine as lce

    module = tf.Module()
    module.serve = tf.function(
        lambda x: {"logits": graph.forward(x, "lce")}, autograph=False,
        input_signature=[tf.TensorSpec((1, *graph.input_shape), tf.float32, "images")])
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        return lce.convert_saved_model(tmp)
