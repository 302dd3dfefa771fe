"""Export every member of a shared-weight ensemble on its own.

```
python -m quantens.export RESULT_DIR
```

(`quantens.cli.export`) reads a result directory of `train.py` (`config.json`,
`model.json`, `ensemble.weights.h5`) and writes `RESULT_DIR/export/`; `train.py
--export` hands its trained ensemble and datasets straight to `export_ensemble`:

```
saved_model/         ONE SavedModel: the shared weights once, a serving signature per
                     member (serving_bits_32 ... serving_bits_1), the target member
                     as serving_default
member_<b>.tflite    one flatbuffer per member:
                       32 and 9..31 bits  float32, the quantizers inlined
                       2..8 bits          full-integer int8; the quantized convolutions'
                                          weights and inputs lie on the member's own
                                          k-bit grid (float32 input and output)
                       1 bit              Larq Compute Engine: bitpacked binary
                                          convolutions (LceBconv2d)
export.json          per member: file, bytes, op histogram, and on the test split
                     top-1 agreement with the Keras member, max |logit difference|,
                     accuracy of the TFLite file
```

The directory is written under a temporary name beside `export/` and renamed
into place at the end, so a failed export leaves nothing half-written.

How the int8 members stay on their grid: BN is folded into the convolution
before it; a DoReFa kernel takes values (2i - n)/n with n = 2^k - 1, so the
folded kernel of output channel c is (2i - n) * (A_c / n) for BN's multiplier
A_c, stored as the odd integers 2i - n with per-channel scale |A_c| / n (exact
for k <= 7; at 8 bits |2i - n| can reach 255 > 127, and channels that need it
fall back to a max-abs scale). The conv input, `round` activations clip(x, 0, 1)
on the grid i/n, is an int8 tensor of scale 1/n and zero point -128, produced by
a requantization (which rounds to the grid and saturates at 0) and a MINIMUM
with 1. Every other tensor (input, stem, BN and residual sums, pooled
features, logits) is int8 with a range calibrated on training data.

The 1-bit member with `round` activations computes conv(x, w) for x in {0, 1}
and w = sign(w); it is rewritten exactly into the +-1 form that LCE binarizes:
with s = sign(0.5 - x) = 1 - 2x and zero padding of x = padding of s with 1,
conv(x, w) = (sum(w) - conv(s, w)) / 2, and that affine map is folded into the
following BN. (`det_sign` members pad +-1 inputs with 0; LCE's kernel for that
is wrong on x86, so they are padded with 1 and a constant per position is
subtracted.)

Fidelity: float32 and LCE files compute what the Keras member computes, up to
float32 rounding (~1e-6); a binary activation whose input lies within that
rounding of its threshold may flip (rare: `differing_examples` in export.json).
An int8 file is exact on the grid but rounds the input, the full-precision
weights and the tensors between grids to 8 bits, and a coarse member flips
activations where that moves a value across a threshold. For `digits_resnet_e`
(width 32) after 4 epochs, the 8-, 4- and 2-bit files agreed with their members
on >= 99.1% of the test images over 8 seeds. Narrow models are more fragile: at
width 8 the 2-bit file agrees on 96.7-98.6% after 4 epochs and 98.6-99.4% after 30.
export.json reports, for each int8 file, how often the Keras member keeps its
prediction when only its input is rounded to int8
(`keras_input_rounding_agreement`).

```python
import tempfile
import numpy as np
import quantens
from quantens.export import export_ensemble
from zoo import create_model

bits = (32, 4, 1)
ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8, bit_widths=bits), bits)
x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
report = export_ensemble(ensemble, tempfile.mkdtemp(), val_data=x, calibration_data=x)
print(report["members"]["4"]["bytes"])
```
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

import quantens  # noqa: F401  (selects tf-keras before TensorFlow loads)
from quantens.errors import ExportError, ResultDirError, one_line
from quantens.layout import ResultDir

EXPORT_REPORT_FILE = os.path.basename(ResultDir.EXPORT_REPORT)  # export.json
SAVED_MODEL_DIR = "saved_model"
INT8_BITS = range(2, 9)
SUPPORTED_LAYERS = ("Conv2D, Dense (larq's too), BatchNormalization, Add, Activation, pooling, "
                    "Flatten")
MAX_CALIBRATION_EXAMPLES = 2048
DIFFERING_LOGIT_DIFF = 1e-4  # fidelity: an example "differs" beyond this |logit difference|

FLOAT32 = "float32"
INT8 = "int8"
LCE = "lce"



def member_file(bits: int) -> str:
    """The file name of member `bits` inside `export/`.

    ```python
    from quantens.export import member_file

    assert member_file(4) == "member_4.tflite"
    ```
    """
    return f"member_{int(bits)}.tflite"


def member_format(bits: int) -> str:
    """The TFLite form of a member: `"float32"`, `"int8"` or `"lce"`.

    (With `det_sign` activations, whose grid (2i - n)/n has no int8 form with
    zero point, 2..8-bit members are float32 files.)

    ```python
    from quantens.export import member_format

    assert [member_format(b) for b in (32, 16, 8, 2, 1)] == [
        "float32", "float32", "int8", "int8", "lce"]
    ```
    """
    if bits == 1:
        return LCE
    if bits in INT8_BITS:
        return INT8
    return FLOAT32


# --------------------------------------------------------------------------- data


def _batches(data, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
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


# ------------------------------------------------------------ the member's graph


def _tf():
    import tensorflow as tf

    return tf


@dataclasses.dataclass
class _Act:
    """An activation quantizer: `round` (grid i/n on [0,1]), `symmetric` (grid on
    [-1,1]), `sign` (+-1), or a full-precision `relu` / `clip`."""

    kind: str
    bits: int = 32

    @property
    def levels(self) -> int:
        return 2**self.bits - 1


@dataclasses.dataclass
class _Step:
    op: str
    name: str
    inputs: list[str]
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


def _act_of(quantizer) -> _Act | None:
    """Describes a fixed quantizer of a member (see `quantens.quantizers`)."""
    import larq as lq

    from quantens.quantizers import (
        FullPrecisionActivation,
        RoundActivation,
        SymmetricRoundActivation,
    )

    if quantizer is None:
        return None
    if isinstance(quantizer, SymmetricRoundActivation):
        return _Act("symmetric", quantizer.precision)
    if isinstance(quantizer, RoundActivation):
        return _Act("round", quantizer.precision)
    if isinstance(quantizer, FullPrecisionActivation):
        return _Act(quantizer.function)
    if isinstance(quantizer, lq.quantizers.SteSign):
        return _Act("sign", 1)
    if callable(quantizer) and getattr(quantizer, "__name__", "") in ("relu", "linear"):
        return None if quantizer.__name__ == "linear" else _Act("relu")
    raise ExportError(
        f"cannot export the activation quantizer {type(quantizer).__name__}: supported are "
        "the round, det_sign and full-precision relu/clip activations"
    )


def _weight_grid(layer, kernel: np.ndarray) -> int | None:
    """n = 2^k - 1 when the kernel lies on the symmetric k-bit grid (2i - n)/n."""
    import larq as lq

    quantizer = getattr(layer, "kernel_quantizer", None)
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


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class MemberGraph:
    """A standalone member as a list of steps, with BN folded into convolutions.

    Built from `QuantEnsemble.member(b)`; `forward` emits it as TensorFlow ops
    in one of three modes: `"float"` (the member's own arithmetic, used to
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
        self.bits = int(bits)
        self.input_shape = tuple(member.input_shape[1:])
        config = member.get_config()
        entries = config["layers"]
        inputs_of: dict[str, list[str]] = {}
        consumers: dict[str, list[str]] = collections.defaultdict(list)
        for entry in entries:
            nodes = entry.get("inbound_nodes") or []
            if len(nodes) > 1:
                raise ExportError(f"layer {entry['name']} is called more than once")
            try:
                names = [t[0] for t in nodes[0]] if nodes else []
            except (TypeError, IndexError, KeyError):  # TF-op layers keep another format
                raise ExportError(
                    f"cannot export layer {entry['name']} ({entry.get('class_name')}); "
                    f"supported: {SUPPORTED_LAYERS}"
                ) from None
            inputs_of[entry["name"]] = names
            for name in names:
                consumers[name].append(entry["name"])
        outputs = [o[0] for o in config["output_layers"]]
        if len(config["input_layers"]) != 1 or len(outputs) != 1:
            raise ExportError("export needs a model with one input and one output")
        self.output = outputs[0]
        self.steps: list[_Step] = []
        alias: dict[str, str] = {}

        def source(name: str) -> str:
            while name in alias:
                name = alias[name]
            return name

        def single_consumer(name: str, kind) -> Any:
            users = consumers.get(name, [])
            if len(users) != 1 or name == self.output:
                return None
            layer = member.get_layer(users[0])
            return layer if isinstance(layer, kind) else None

        def fuse_relu(name: str) -> bool:
            tf = _tf()
            nxt = single_consumer(name, tf.keras.layers.Activation)
            if nxt is not None and _act_of(nxt.activation) == _Act("relu"):
                alias[nxt.name] = name
                return True
            return False

        tf = _tf()
        folded: set[str] = set()
        for entry in entries:
            name = entry["name"]
            if name in alias or name in folded:
                continue
            layer = member.get_layer(name)
            ins = [source(n) for n in inputs_of[name]]
            if isinstance(layer, tf.keras.layers.InputLayer):
                self.steps.append(_Step("input", name, []))
            elif isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)):
                self.steps.append(self._linear_step(layer, ins, member, single_consumer,
                                                    alias, folded, fuse_relu))
            elif isinstance(layer, tf.keras.layers.BatchNormalization):
                mult, add = _bn_affine(layer)
                self.steps.append(_Step("affine", name, ins, {
                    "mult": mult, "add": add, "relu": fuse_relu(name)}))
            elif isinstance(layer, tf.keras.layers.Add):
                self.steps.append(_Step("add", name, ins, {"relu": fuse_relu(name)}))
            elif isinstance(layer, tf.keras.layers.Activation):
                act = _act_of(layer.activation)
                self.steps.append(_Step("act", name, ins, {"act": act}))
            elif isinstance(layer, (tf.keras.layers.MaxPool2D, tf.keras.layers.AvgPool2D)):
                self.steps.append(_Step(
                    "maxpool" if isinstance(layer, tf.keras.layers.MaxPool2D) else "avgpool",
                    name, ins, {"size": layer.pool_size, "strides": layer.strides,
                                "padding": layer.padding.upper()}))
            elif isinstance(layer, tf.keras.layers.GlobalAveragePooling2D):
                if layer.keepdims:
                    raise ExportError(f"{name}: keepdims=True is not supported")
                self.steps.append(_Step("mean", name, ins))
            elif isinstance(layer, tf.keras.layers.Flatten):
                self.steps.append(_Step("flatten", name, ins))
            else:
                raise ExportError(
                    f"cannot export layer {name} ({type(layer).__name__}); supported: "
                    f"{SUPPORTED_LAYERS}"
                )
        self.output = source(self.output)

    def _linear_step(self, layer, ins, member, single_consumer, alias, folded, fuse_relu):
        tf = _tf()
        import larq as lq

        is_conv = isinstance(layer, tf.keras.layers.Conv2D)
        if is_conv and (type(layer) not in (tf.keras.layers.Conv2D, lq.layers.QuantConv2D)):
            raise ExportError(f"cannot export layer {layer.name} ({type(layer).__name__})")
        if is_conv and layer.groups != 1:
            raise ExportError(f"{layer.name}: grouped convolutions are not supported")
        act = _act_of(getattr(layer, "input_quantizer", None))
        latent = np.asarray(layer.kernel.numpy() if not hasattr(layer.kernel, "latent_variable")
                            else layer.kernel.latent_variable.numpy(), np.float64)
        quantizer = getattr(layer, "kernel_quantizer", None)
        kernel = (np.asarray(quantizer(latent.astype(np.float32)), np.float64)
                  if quantizer is not None else latent)
        out_channels = kernel.shape[-1]
        mult = np.ones(out_channels)
        add = (np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias
               else np.zeros(out_channels))
        post = _act_of(layer.activation)
        out_name = layer.name
        if post is None:
            bn = single_consumer(layer.name, tf.keras.layers.BatchNormalization)
            if bn is not None:
                a, b = _bn_affine(bn)
                mult, add = a, a * add + b
                alias[bn.name] = layer.name
                folded.add(bn.name)
                out_name = bn.name
            relu = fuse_relu(out_name)
        elif post == _Act("relu"):
            relu = True
        else:
            raise ExportError(f"{layer.name}: activation {layer.activation} is not supported")
        params = {
            "kernel": kernel, "mult": mult, "add": add, "relu": relu, "act": act,
            "grid": _weight_grid(layer, kernel),
        }
        if is_conv:
            params.update(
                strides=tuple(layer.strides), dilations=tuple(layer.dilation_rate),
                padding=layer.padding.upper(),
                pad_value=float(getattr(layer, "pad_values", 0.0)),
            )
        return _Step("conv" if is_conv else "dense", layer.name, ins, params)

    # ------------------------------------------------------------ emission

    def quantized_conv_inputs(self) -> list[str]:
        """Names of the tensors that reach a convolution through its quantized activation.

        In the 1-bit member these are the tensors LCE binarizes: their values
        are compared with the threshold (0.5 for `round`).
        """
        return [s.inputs[0] for s in self.steps
                if s.op == "conv" and s.params["act"] is not None]

    def forward(self, x, mode: str = "float", ranges: Mapping[str, tuple] | None = None,
                taps: dict | None = None):
        """The member's logits as TensorFlow ops (`mode`: float, int8 or lce).

        `ranges` (int8 mode) maps tensor names to calibrated (min, max);
        `taps` (float mode), when a dict, receives every tensor that int8 mode
        quantizes with a calibrated range.
        """
        tf = _tf()
        if mode not in ("float", "int8", "lce"):
            raise ValueError(f"unknown mode {mode!r}")
        values: dict[str, Any] = {}
        quantized: dict[tuple, Any] = {}
        pending: dict[str, np.ndarray] = {}  # LCE: constants to add to an ADD's summand

        scale_of: dict[str, str] = {}  # tensor -> the tap whose int8 range it has

        def tap(name, t, same_as: str | None = None):
            if same_as is not None:  # TFLite keeps the input's scale: round like it
                if same_as not in scale_of:
                    return t
                name = scale_of[same_as]
            elif taps is not None:
                taps[name] = t
            scale_of[step.name] = name
            if mode == "int8":
                lo, hi = ranges[name]
                t = tf.quantization.fake_quant_with_min_max_args(
                    t, min=float(lo), max=float(hi), num_bits=8)
            return t

        def quantize_input(name: str, act: _Act | None):
            if act is None:
                return values[name]
            key = (name, act.kind, act.bits)
            if key not in quantized:
                quantized[key] = self._activation(values[name], act, mode)
            return quantized[key]

        for step in self.steps:
            p = step.params
            if step.op == "input":
                values[step.name] = tap(step.name, tf.convert_to_tensor(x, tf.float32))
                continue
            ins = [values[n] for n in step.inputs]
            if step.op in ("conv", "dense"):
                a = quantize_input(step.inputs[0], p["act"])
                if (mode == "lce" and step.op == "conv" and p["grid"] == 1
                        and p["act"] is not None and p["act"].bits == 1
                        and p["act"].kind in ("round", "sign")):
                    y, correction = self._binary_conv(values[step.inputs[0]], step)
                    if correction is not None:
                        users = [t for t in self.steps if step.name in t.inputs]
                        if (not p["relu"] and len(users) == 1 and users[0].op == "add"
                                and len(users[0].inputs) == 2):
                            # LCE fuses any constant ADD after a bconv into its per-channel
                            # bias (and then fails): add it to the other summand instead
                            pending[step.name] = correction
                        else:
                            y = y + correction
                else:
                    y = self._linear(a, step, mode)
                if p["relu"]:
                    y = tf.nn.relu(y)
                y = tap(step.name, y)
            elif step.op == "affine":
                y = self._affine(ins[0], p, mode)
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
                elif act.kind == "relu":
                    y = tap(step.name, tf.nn.relu(ins[0]))
                else:
                    y = quantize_input(step.inputs[0], act)
            elif step.op in ("maxpool", "avgpool"):
                pool = tf.nn.max_pool2d if step.op == "maxpool" else tf.nn.avg_pool2d
                if step.op == "maxpool":
                    scale_of[step.name] = scale_of.get(step.inputs[0], step.inputs[0])
                y = pool(ins[0], p["size"], p["strides"], p["padding"])
                if step.op == "avgpool":
                    y = tap(step.name, y, same_as=step.inputs[0])
            elif step.op == "mean":
                y = tap(step.name, tf.reduce_mean(ins[0], axis=[1, 2]))
            elif step.op == "flatten":
                y = tf.reshape(ins[0], [-1, int(np.prod(ins[0].shape[1:]))])
                scale_of[step.name] = scale_of.get(step.inputs[0], step.inputs[0])
            else:  # pragma: no cover
                raise AssertionError(step.op)
            values[step.name] = y
        return values[self.output]

    def _activation(self, x, act: _Act, mode: str):
        tf = _tf()
        if act.kind == "relu":
            return tf.nn.relu(x)
        if act.kind == "clip":
            return tf.clip_by_value(x, -1.0, 1.0)
        if act.kind == "sign":
            return tf.sign(tf.sign(x) + 0.1)  # larq.math.sign: 0 -> +1
        n = float(act.levels)
        if mode == "int8" and act.kind == "round":
            # requantize onto scale 1/n, zero point -128 (rounds, saturates at 0), then
            # MINIMUM with 1: exactly clip(x, 0, 1) rounded to the grid i/n
            return tf.quantization.fake_quant_with_min_max_args(
                tf.minimum(x, 1.0), min=0.0, max=255.0 / n, num_bits=8)
        if mode == "int8":
            raise ExportError(
                "int8 export supports `round` activations; `det_sign` members with 2..8 "
                "bits are exported as float32"
            )
        low = 0.0 if act.kind == "round" else -1.0
        unit = (tf.clip_by_value(x, low, 1.0) - low) / (1.0 - low)
        return tf.round(unit * n) / n * (1.0 - low) + low

    def _linear(self, a, step: _Step, mode: str):
        tf = _tf()
        p = step.params
        if mode == "int8":  # BN folded into the kernel: one int8 op, one rounding
            kernel = self._fake_quant_kernel(p["kernel"] * p["mult"], p,
                                             per_channel=step.op == "conv")
            mult = None
        else:  # the member's order (conv, then BN): ties such as sign(0) stay exact
            kernel = tf.constant(p["kernel"].astype(np.float32))
            mult = p["mult"].astype(np.float32)
        if step.op == "dense":
            y = tf.matmul(a, kernel)
        else:
            padding = p["padding"]
            if padding == "SAME" and p["pad_value"] != 0.0:
                a = tf.pad(a, self._pads(a, step), constant_values=p["pad_value"])
                padding = "VALID"
            y = tf.nn.conv2d(a, kernel, p["strides"], padding, dilations=p["dilations"])
        if mult is not None and np.any(p["mult"] != 1.0):
            y = y * mult
        return tf.nn.bias_add(y, p["add"].astype(np.float32))

    @staticmethod
    def _fake_quant_kernel(kernel: np.ndarray, p: dict, per_channel: bool):
        """Int8 weights; on the grid with scale |mult|/n where |2i - n| <= 127."""
        tf = _tf()
        axes = tuple(range(kernel.ndim - 1))
        absmax = np.abs(kernel).max(axis=axes)
        scale = absmax / 127.0
        n = p["grid"]
        if n is not None:
            ints = np.abs(np.rint(p["kernel"] * n)).max(axis=axes)
            exact = ints <= 127
            scale = np.where(exact, np.abs(p["mult"]) / n, scale)
        if not per_channel:
            scale = np.full_like(scale, scale.max())
        bound = (127.0 * np.maximum(scale, 1e-12)).astype(np.float32)
        kernel = tf.constant(kernel.astype(np.float32))
        if per_channel:
            return tf.quantization.fake_quant_with_min_max_vars_per_channel(
                kernel, -bound, bound, num_bits=8, narrow_range=True)
        return tf.quantization.fake_quant_with_min_max_vars(
            kernel, -float(bound[0]), float(bound[0]), num_bits=8, narrow_range=True)

    def _pads(self, x, step: _Step) -> list[list[int]]:
        p = step.params
        kh, kw = p["kernel"].shape[:2]
        h, w = int(x.shape[1]), int(x.shape[2])
        return [[0, 0], list(_same_padding(h, kh, p["strides"][0], p["dilations"][0])),
                list(_same_padding(w, kw, p["strides"][1], p["dilations"][1])), [0, 0]]

    def _binary_conv(self, x, step: _Step):
        """The 1-bit conv in the +-1 form LCE binarizes, exactly equal to the member's.

        Returns the output and None, or, where the member pads with zeros but LCE
        with ones, the output without a constant per-position correction that
        the caller adds.

        `round` inputs x in {0, 1}: s = sign(0.5 - x) = 1 - 2x (ties x = 0.5 give
        x = 0 and s = +1, as the member rounds half to even), zero padding of x is
        padding of s with 1, so conv(x, w) = (sum(w) - conv(s, w)) / 2 per output
        channel. `det_sign` inputs are +-1 already; where the member pads them
        with 0, they are padded with 1 and the padding taps' weights are removed.
        """
        tf = _tf()
        p = step.params
        kernel = p["kernel"]  # +-1
        if p["act"].kind == "sign":
            s = tf.sign(tf.sign(x) + 0.1)
            pads = self._pads(s, step) if p["padding"] == "SAME" else [[0, 0]] * 4
            if any(sum(pad) for pad in pads):
                s = tf.pad(s, pads, constant_values=1.0)
            y = tf.nn.conv2d(s, tf.constant(kernel.astype(np.float32)), p["strides"], "VALID",
                             dilations=p["dilations"])
            y = y * p["mult"].astype(np.float32) + p["add"].astype(np.float32)
            if p["pad_value"] != 1.0 and any(sum(pad) for pad in pads):
                # the member pads with v (larq's default 0), LCE's fast path with 1
                # (its zero-padding kernel gives wrong results on x86): remove what
                # the padding taps added, (1 - v) * their weights per output position
                border = np.pad(np.zeros((1, int(x.shape[1]), int(x.shape[2]), int(x.shape[-1]))),
                                pads, constant_values=1.0)
                with tf.init_scope():  # a constant: computed eagerly while tracing
                    taps = tf.nn.conv2d(border.astype(np.float32), kernel.astype(np.float32),
                                        p["strides"], "VALID", dilations=p["dilations"]).numpy()
                correction = (-p["mult"] * (1.0 - p["pad_value"]) * taps).astype(np.float32)
                return y, correction
            return y, None
        if p["pad_value"] != 0.0:
            raise ExportError(f"{step.name}: round activations with pad_values != 0")
        s = tf.sign(tf.sign(0.5 - x) + 0.1)
        if p["padding"] == "SAME" and any(sum(pad) for pad in self._pads(s, step)):
            s = tf.pad(s, self._pads(s, step), constant_values=1.0)
        y = tf.nn.conv2d(s, tf.constant(kernel.astype(np.float32)), p["strides"], "VALID",
                         dilations=p["dilations"])
        total = kernel.sum(axis=(0, 1, 2))
        mult = -p["mult"] / 2.0
        add = p["mult"] * total / 2.0 + p["add"]
        return y * mult.astype(np.float32) + add.astype(np.float32), None

    def _affine(self, x, p: dict, mode: str):
        tf = _tf()
        mult, add = p["mult"], p["add"].astype(np.float32)
        if len(x.shape) == 4 and mode == "int8":
            # one DEPTHWISE_CONV_2D: a single rounding
            kernel = self._fake_quant_kernel(
                mult.reshape(1, 1, -1, 1), {"grid": None, "mult": mult}, True)
            y = tf.nn.bias_add(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID"), add)
        else:
            y = x * mult.astype(np.float32) + add
        return tf.nn.relu(y) if p["relu"] else y


def _bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization at inference as y = A x + B (float64)."""
    weights = dict(zip([w.name.split("/")[-1].split(":")[0] for w in bn.weights],
                       [np.asarray(w.numpy(), np.float64) for w in bn.weights], strict=True))
    mean, var = weights["moving_mean"], weights["moving_variance"]
    gamma = weights.get("gamma", np.ones_like(mean))
    beta = weights.get("beta", np.zeros_like(mean))
    mult = gamma / np.sqrt(var + bn.epsilon)
    return mult, beta - mean * mult


# ------------------------------------------------------------------ conversion


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
    for x, _ in _batches(data, batch_size):
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
        if hi - lo < 1e-6:
            hi = lo + 1e-3
        result[name] = (lo, hi)
    return result


def _float_member_flatbuffer(member, input_shape) -> bytes:
    tf = _tf()
    fn = tf.function(lambda x: member(x, training=False), autograph=False,
                     input_signature=[tf.TensorSpec((1, *input_shape), tf.float32, "images")])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function()], member)
    return converter.convert()


def _int8_flatbuffer(graph: MemberGraph, ranges) -> bytes:
    tf = _tf()
    fn = tf.function(lambda x: graph.forward(x, "int8", ranges=ranges), autograph=False,
                     input_signature=[tf.TensorSpec((1, *graph.input_shape), tf.float32,
                                                    "images")])
    holder = tf.Module()
    holder.fn = fn
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function()], holder)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with _quiet_warnings():
        return converter.convert()


def _lce_flatbuffer(graph: MemberGraph) -> bytes:
    tf = _tf()
    import larq_compute_engine as lce

    module = tf.Module()
    module.serve = tf.function(
        lambda x: {"logits": graph.forward(x, "lce")}, autograph=False,
        input_signature=[tf.TensorSpec((1, *graph.input_shape), tf.float32, "images")])
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        return lce.convert_saved_model(tmp)


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        yield


def _convert(ensemble, bits: int, calibration_data=None, member=None) -> tuple[bytes, str]:
    member = member if member is not None else ensemble.member(bits)
    input_shape = tuple(member.input_shape[1:])
    fmt = member_format(bits)
    if fmt == FLOAT32:
        return _float_member_flatbuffer(member, input_shape), FLOAT32
    graph = MemberGraph(member, bits)
    if fmt == LCE:
        return _lce_flatbuffer(graph), LCE
    if any(s.params.get("act") is not None and s.params["act"].kind == "symmetric"
           for s in graph.steps):
        # det_sign's grid (2i - n)/n has no int8 form with one rounding: float32
        return _float_member_flatbuffer(member, input_shape), FLOAT32
    if calibration_data is None:
        raise ExportError(
            f"the {bits}-bit member is exported as int8 and needs calibration_data "
            "(inputs from the training split)"
        )
    return _int8_flatbuffer(graph, calibrate(graph, calibration_data)), INT8


def convert_member(ensemble, bits: int, calibration_data=None) -> bytes:
    """The TFLite flatbuffer of member `bits` (see `member_format`).

    int8 members (2..8 bits) need `calibration_data` (inputs from the training
    split) for the ranges of their full-precision tensors. With `det_sign`
    activations, 2..8-bit members are float32 files.

    ```python
    import quantens
    from quantens.export import convert_member
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    flatbuffer = convert_member(ensemble, 1)
    assert b"LceBconv2d" in flatbuffer
    ```
    """
    return _convert(ensemble, bits, calibration_data)[0]


# ------------------------------------------------------------ reading flatbuffers


def _flatbuffer_model(flatbuffer: bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))


def _op_name(model, code_index: int) -> str:
    from tensorflow.lite.python import schema_py_generated as schema

    code = model.operatorCodes[code_index]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    for name, value in vars(schema.BuiltinOperator).items():
        if value == builtin:
            return name
    return f"BUILTIN_{builtin}"


def op_counts(flatbuffer: bytes) -> dict[str, int]:
    """How often each operator occurs in a TFLite flatbuffer (custom ops by name).

    ```python
    import numpy as np
    import quantens
    from quantens.export import convert_member, op_counts
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    assert op_counts(convert_member(ensemble, 1))["LceBconv2d"] == 6
    ```
    """
    model = _flatbuffer_model(flatbuffer)
    counts: collections.Counter = collections.Counter()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            counts[_op_name(model, op.opcodeIndex)] += 1
    return dict(sorted(counts.items()))


def int8_conv_weights(flatbuffer: bytes) -> list[dict]:
    """The int8 weights of every CONV_2D op, with the quantization of its input.

    Each item: `weights` (int8, output channels first, as TFLite stores them),
    `input_scale`, `input_zero_point`. A conv whose input has scale 1/n and zero
    point -128 reads a k-bit activation grid (n = 2^k - 1).
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = _flatbuffer_model(flatbuffer)
    found = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if _op_name(model, op.opcodeIndex) != "CONV_2D":
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            data = model.buffers[tensor.buffer].data
            if tensor.type != schema.TensorType.INT8 or data is None:
                continue
            q = subgraph.tensors[op.inputs[0]].quantization
            found.append({
                "weights": np.asarray(data, np.uint8).view(np.int8).reshape(tensor.shape),
                "input_scale": float(q.scale[0]) if q is not None and q.scale is not None
                else None,
                "input_zero_point": int(q.zeroPoint[0]) if q is not None
                and q.zeroPoint is not None else None,
            })
    return found


# ----------------------------------------------------------------- interpreters


def _input_quantization(flatbuffer: bytes) -> tuple[float, int] | None:
    """(scale, zero point) the model input is rounded to, when its first op quantizes it."""
    model = _flatbuffer_model(flatbuffer)
    graph = model.subgraphs[0]
    source = graph.inputs[0]
    for op in graph.operators:
        if _op_name(model, op.opcodeIndex) == "QUANTIZE" and op.inputs[0] == source:
            q = graph.tensors[op.outputs[0]].quantization
            return float(q.scale[0]), int(q.zeroPoint[0])
    tensor = graph.tensors[source]
    if tensor.quantization is not None and tensor.quantization.scale is not None:
        return float(tensor.quantization.scale[0]), int(tensor.quantization.zeroPoint[0])
    return None


class TFLiteRunner:
    """Runs a member's flatbuffer, one example per call (batch 1).

    TensorFlow's `tf.lite.Interpreter` runs float32 and int8 files; the Larq
    Compute Engine interpreter runs files with LCE ops (the TF interpreter
    cannot), by default with its indirect BGEMM kernel, which is exact and, on
    x86, about 8x faster than its default binary kernel. Float32 in, float32
    logits out (int8 inputs are quantized here).

    ```python
    import numpy as np
    import quantens
    from quantens.export import TFLiteRunner, convert_member
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    runner = TFLiteRunner(convert_member(ensemble, 32))
    logits = runner(np.zeros((3, 8, 8, 1), "float32"))
    assert logits.shape == (3, 10)
    ```
    """

    def __init__(self, flatbuffer: bytes, num_threads: int = 1, use_xnnpack: bool = True,
                 lce_indirect_bgemm: bool = True):
        self.is_lce = b"Lce" in flatbuffer and any(
            name.startswith("Lce") for name in op_counts(flatbuffer))
        self.interpreter_name = "larq_compute_engine" if self.is_lce else "tensorflow"
        if self.is_lce:
            from larq_compute_engine.tflite.python.interpreter import Interpreter

            self._lce = Interpreter(flatbuffer, num_threads=num_threads,
                                    use_xnnpack=use_xnnpack,
                                    use_indirect_bgemm=lce_indirect_bgemm).interpreter
        else:
            import warnings

            tf = _tf()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
                self._tfl = tf.lite.Interpreter(model_content=flatbuffer,
                                                num_threads=num_threads)
            self._tfl.allocate_tensors()
            self._in = self._tfl.get_input_details()[0]
            self._out = self._tfl.get_output_details()[0]
        self.input_quantization = _input_quantization(flatbuffer)

    def run_one(self, x: np.ndarray) -> np.ndarray:
        """Logits of one batch-1 input (shape (1, H, W, C)); `invoke` in benchmarks."""
        if self.is_lce:
            return np.asarray(self._lce.predict([x])[0], np.float32)
        if self._in["dtype"] != np.float32:
            scale, zero = self._in["quantization"]
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(self._in["dtype"])
        self._tfl.set_tensor(self._in["index"], x)
        self._tfl.invoke()
        y = self._tfl.get_tensor(self._out["index"])
        if self._out["dtype"] != np.float32:
            scale, zero = self._out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.asarray(y, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return np.concatenate([self.run_one(x[i:i + 1]) for i in range(len(x))])


# ------------------------------------------------------------------ SavedModel


def save_serving_model(ensemble, path: str) -> dict:
    """Writes ONE SavedModel of all members: shared weights once, a signature each.

    Signatures `serving_bits_<b>` run member b (input `images`, output
    `logits`); `serving_default` runs the target member. Returns a summary
    (signatures, variable count).

    ```python
    import os, tempfile
    import numpy as np
    import tensorflow as tf
    import quantens
    from quantens.export import save_serving_model
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    path = os.path.join(tempfile.mkdtemp(), "saved_model")
    save_serving_model(ensemble, path)
    loaded = tf.saved_model.load(path)
    logits = loaded.signatures["serving_bits_1"](images=np.zeros((2, 8, 8, 1), "float32"))
    ```
    """
    tf = _tf()
    from quantens.bits import bits as bits_scope

    model = ensemble.model
    input_shape = tuple(model.input_shape[1:])
    spec = tf.TensorSpec((None, *input_shape), tf.float32, "images")
    variables = _distinct_variables(model)

    def serving(b: int):
        @tf.function(input_signature=[spec])
        def serve(images):
            # the scope is read while tracing: each function is member b
            with bits_scope(b):
                return {"logits": model(images, training=False)}

        return serve

    module = tf.Module()
    module.shared_variables = variables  # each shared weight once
    signatures = {}
    for b in ensemble.bit_widths:
        fn = serving(b)
        setattr(module, f"bits_{b}", fn)
        signatures[f"serving_bits_{b}"] = fn.get_concrete_function()
    signatures["serving_default"] = signatures[f"serving_bits_{ensemble.target_bits}"]
    tf.saved_model.save(module, path, signatures=signatures)
    return {
        "path": os.path.basename(path),
        "signatures": {name: (ensemble.target_bits if name == "serving_default"
                              else int(name.rsplit("_", 1)[1])) for name in signatures},
        "variables": len(variables),
        "parameters": int(sum(np.prod(v.shape) for v in variables)),
        "bytes": _tree_bytes(path),
    }


def _distinct_variables(model) -> list:
    seen, result = set(), []
    for v in model.weights:
        v = getattr(v, "latent_variable", v)
        if id(v) not in seen:
            seen.add(id(v))
            result.append(v)
    return result


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


# ------------------------------------------------------------------- fidelity


def fidelity(member, flatbuffer: bytes, val_data, batch_size: int = 256,
             max_examples: int | None = None) -> dict:
    """How a member's flatbuffer agrees with the Keras member on `val_data`.

    The Keras member runs as Keras runs it (`predict`, a traced graph). Returns
    examples, top-1 agreement, max and mean |logit difference|, how many
    examples have a logit that differs by more than 1e-4, the accuracy of
    both where labels are given and, for files that round their input to int8,
    `keras_input_rounding_agreement`: how often the Keras member keeps its
    prediction when only its input is rounded that way (a ceiling for what any
    such file can reach).

    ```python
    import numpy as np
    import quantens
    from quantens.export import convert_member, fidelity
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype("float32")
    report = fidelity(ensemble.member(32), convert_member(ensemble, 32), x)
    assert report["agreement"] == 1.0
    ```
    """
    runner = TFLiteRunner(flatbuffer)
    rounding = runner.input_quantization
    keras, tflite, rounded, labels = [], [], [], []
    seen = 0
    for x, y in _batches(val_data, batch_size):
        if max_examples is not None:
            x = x[: max_examples - seen]
            y = None if y is None else y[: len(x)]
            if not len(x):
                break
        seen += len(x)
        keras.append(np.asarray(member.predict(x, batch_size=len(x), verbose=0), np.float32))
        tflite.append(runner(x))
        if rounding is not None:
            scale, zero = rounding
            xq = (np.clip(np.round(x / scale) + zero, -128, 127) - zero) * scale
            rounded.append(member.predict(xq.astype(np.float32), batch_size=len(x), verbose=0))
        if y is not None:
            labels.append(np.asarray(y).reshape(-1))
    if not keras:
        raise ExportError("val_data holds no examples")
    k, t = np.concatenate(keras), np.concatenate(tflite)
    diff = np.abs(k - t)
    report = {
        "examples": int(len(k)),
        "agreement": float(np.mean(k.argmax(-1) == t.argmax(-1))),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        # examples whose logits differ by more than float32 rounding could explain
        "differing_examples": int(np.sum(diff.max(axis=-1) > DIFFERING_LOGIT_DIFF)),
        "keras_logit_range": [float(k.min()), float(k.max())],
        "keras_accuracy": None,
        "tflite_accuracy": None,
        "keras_input_rounding_agreement": None,
        "interpreter": runner.interpreter_name,
    }
    if rounded:
        report["keras_input_rounding_agreement"] = float(
            np.mean(k.argmax(-1) == np.concatenate(rounded).argmax(-1)))
    if labels and len(labels) == len(keras):
        y = np.concatenate(labels)
        report["keras_accuracy"] = float(np.mean(k.argmax(-1) == y))
        report["tflite_accuracy"] = float(np.mean(t.argmax(-1) == y))
    return report


def _weights_report(flatbuffer: bytes, bits: int) -> dict:
    """How the quantized convolutions of an int8 file sit on the member's grid."""
    n = 2**bits - 1
    convs = int8_conv_weights(flatbuffer)
    grid = [c["weights"] for c in convs if c["input_zero_point"] == -128
            and c["input_scale"] is not None and math.isclose(c["input_scale"], 1 / n,
                                                              rel_tol=1e-6)]
    rows = [row for w in grid for row in w.reshape(w.shape[0], -1)]
    return {
        "conv_ops": len(convs),
        "grid_conv_ops": len(grid),  # their input is the k-bit grid i/n
        "grid_conv_channels": len(rows),
        "max_levels_per_channel": max((len(np.unique(r)) for r in rows), default=0),
        # weights exactly the grid's odd integers 2i - n (always for k <= 7)
        "channels_exactly_on_grid": sum(
            bool(np.all(np.abs(r) <= n) and np.all(r % 2 == 1)) for r in rows),
    }


# ----------------------------------------------------------------------- export


def export_ensemble(ensemble, out_dir: str, val_data=None, calibration_data=None, *,
                    batch_size: int = 256, max_val_examples: int | None = None,
                    extra: Mapping[str, Any] | None = None,
                    remove_stale: bool = False) -> dict:
    """Writes `out_dir` (SavedModel, member_<b>.tflite, export.json) whole or not at all.

    Arguments:
        ensemble: a `QuantEnsemble`.
        out_dir: the export directory (replaced if it exists).
        val_data: validation inputs (a dataset of (x, y) batches, an array, or
            an (x, y) tuple of arrays); fidelity is reported when given.
        calibration_data: training inputs for the ranges of the int8 members'
            full-precision tensors (needed when a member has 2..8 bits).
        batch_size: batch size for Keras predictions on numpy data.
        max_val_examples: check fidelity on the first examples only (the
            TFLite files run one example at a time).
        extra: more fields for export.json (e.g. the model name).
        remove_stale: first remove the temporary folders that killed exports
            of `out_dir` left beside it (`.export.*.tmp`, `.export.*.old`);
            only for a caller that owns the directory (`quantens.locking`).

    Returns the content of export.json.

    ```python
    import tempfile
    import numpy as np
    import quantens
    from quantens.export import export_ensemble
    from zoo import create_model

    bits = (32, 8, 1)
    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8, bit_widths=bits), bits)
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
    report = export_ensemble(ensemble, tempfile.mkdtemp(), val_data=x, calibration_data=x)
    assert sorted(report["members"]) == ["1", "32", "8"]
    ```
    """
    from quantens.results import write_json

    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    if remove_stale:
        remove_stale_exports(out_dir)
    started = time.time()
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    try:
        report: dict[str, Any] = {
            **dict(extra or {}),
            "bit_widths": list(ensemble.bit_widths),
            "target_bits": ensemble.target_bits,
            "input_shape": list(ensemble.model.input_shape[1:]),
            "saved_model": save_serving_model(ensemble, os.path.join(tmp, SAVED_MODEL_DIR)),
            "members": {},
        }
        for b in ensemble.bit_widths:
            t0 = time.time()
            member = ensemble.member(b)
            flatbuffer, fmt = _convert(ensemble, b, calibration_data, member)
            entry: dict[str, Any] = {
                "file": member_file(b),
                "format": fmt,
                "bytes": len(flatbuffer),
                "ops": op_counts(flatbuffer),
                "convert_seconds": round(time.time() - t0, 2),
            }
            if entry["format"] == INT8:
                entry["int8_weights"] = _weights_report(flatbuffer, b)
                entry["input_quantization"] = dict(zip(
                    ("scale", "zero_point"), _input_quantization(flatbuffer), strict=True))
            with open(os.path.join(tmp, member_file(b)), "wb") as f:
                f.write(flatbuffer)
            if val_data is not None:
                entry["fidelity"] = fidelity(member, flatbuffer, val_data, batch_size,
                                             max_val_examples)
            report["members"][str(b)] = entry
        report["export_seconds"] = round(time.time() - started, 1)
        write_json(os.path.join(tmp, EXPORT_REPORT_FILE), report)
        _replace_dir(tmp, out_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def remove_stale_exports(out_dir: str) -> list[str]:
    """Removes what killed exports of `out_dir` left beside it; returns the names removed.

    Only this module's own naming pattern: `.<name>.<random>.tmp` (an export
    being written) and `.<name>.<random>.old` (a previous export being
    replaced). Call it only while owning the result directory.

    ```python
    import os, tempfile
    from quantens.export import remove_stale_exports

    run = tempfile.mkdtemp()
    os.makedirs(os.path.join(run, ".export.k1ll3d.tmp", "saved_model"))
    assert remove_stale_exports(os.path.join(run, "export")) == [".export.k1ll3d.tmp"]
    ```
    """
    out_dir = os.path.abspath(out_dir)
    parent, base = os.path.dirname(out_dir), os.path.basename(out_dir)
    removed = []
    if not os.path.isdir(parent):
        return removed
    for name in sorted(os.listdir(parent)):
        if name.startswith(f".{base}.") and name.endswith((".tmp", ".old")):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed.append(name)
    return removed


def _replace_dir(tmp: str, out_dir: str) -> None:
    """Renames `tmp` to `out_dir`; an existing `out_dir` is swapped out, then removed."""
    old = None
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".old",
                               dir=os.path.dirname(out_dir))
        os.rmdir(old)
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------- result directories


def read_result_config(result_dir: str, weights: str | None = ResultDir.WEIGHTS) -> dict:
    """The `config.json` of a result directory, after checking that it can be exported.

    Needs no TensorFlow: raises `ResultDirError` (a FileNotFoundError) /
    `ExportError` with a one-line message saying what is missing and how to
    make it. `weights=None` skips the check of the weights file.

    ```python
    import tempfile
    from quantens.errors import ResultDirError
    from quantens.export import read_result_config

    try:
        read_result_config(tempfile.mkdtemp())
    except ResultDirError as error:
        assert "no config.json" in str(error)
    ```
    """
    if not os.path.isdir(result_dir):
        raise ResultDirError(
            f"{result_dir} is not a directory: pass a result directory of "
            "`python train.py --result-path DIR`"
        )
    run = ResultDir(result_dir)
    if not os.path.isfile(run.config):
        raise ResultDirError(
            f"{result_dir} has no config.json: it is not a result directory of "
            "`python train.py --result-path DIR`"
        )
    try:
        with open(run.config, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as error:
        raise ExportError(f"{run.config} cannot be read: {one_line(error)}") from error
    if not isinstance(config, dict):
        raise ExportError(f"{run.config} must hold a JSON object of flags: re-run train.py")
    missing = [k for k in ("model", "bit_widths", "input_shape", "num_classes", "dataset")
               if k not in config]
    if missing:
        raise ExportError(
            f"{run.config} lacks {', '.join(missing)}: re-run train.py to write a "
            "complete config.json"
        )
    if weights is not None and not os.path.isfile(run.path(weights)):
        raise ResultDirError(
            f"{result_dir} has no {weights}: training writes it when it ends; finish "
            f"(or resume) the run with `python train.py --result-path {result_dir} ...`"
        )
    return config


def load_result_ensemble(result_dir: str, weights: str = ResultDir.WEIGHTS, model=None):
    """Rebuilds the ensemble of a finished run: `(QuantEnsemble, config)`.

    The model is rebuilt from the directory's model.json (its Keras config),
    unless `model` (an untrained model of the run's architecture) is given.
    The weights file must hold exactly that model's weights; otherwise
    `ExportError` says so.

    ```python
    import tempfile
    import quantens
    from quantens.export import load_result_ensemble
    from quantens.results import save_run
    from zoo import create_model

    run = tempfile.mkdtemp()
    save_run(run, create_model("digits_resnet_e", width=8, bit_widths=(32, 1)),
             {"model": "digits_resnet_e", "bit_widths": [32, 1], "input_shape": [8, 8, 1],
              "num_classes": 10, "dataset": "digits"})
    ensemble, config = load_result_ensemble(run)
    assert ensemble.bit_widths == (32, 1)
    ```
    """
    config = read_result_config(result_dir, weights)
    from quantens.ensemble import QuantEnsemble
    from quantens.results import read_model

    run = ResultDir(result_dir)
    if model is None:
        model = read_model(run.model)
    weights_path = run.path(weights)
    _check_weights_file(model, weights_path, config)
    try:
        model.load_weights(weights_path)
    except Exception as error:  # h5py / Keras raise many kinds; all mean "does not fit"
        raise ExportError(
            f"{weights_path} does not fit the model of config.json: {one_line(error)}"
        ) from error
    ensemble = QuantEnsemble(model, config["bit_widths"], config.get("target_bits"))
    return ensemble, config


def _check_weights_file(model, path: str, config: dict) -> None:
    """Compares the file's variables (names and shapes) with the model's own.

    Keras loads a weights file of another ensemble silently when the layers
    line up but some are missing (e.g. fewer bit-widths); comparing with a file
    the rebuilt model writes catches every difference.
    """
    describe = (f"model {config['model']!r} with bit-widths "
                f"{' '.join(map(str, config['bit_widths']))}"
                + (f", width {config['width']}" if config.get("width") else ""))
    from quantens.results import weights_mismatch

    try:
        detail = weights_mismatch(model, path)
    except Exception as error:
        raise ExportError(f"{path} is not a weights file: {one_line(error)}") from error
    if detail is None:
        return
    raise ExportError(
        f"{path} holds weights of another architecture than config.json's {describe}: "
        f"{detail}; export the result directory that trained these weights"
    )


def export_datasets(dataset: str, bit_widths, *, batch_size: int = 256,
                    data_dir: str | None = None, evaluate: bool = True):
    """(validation data or None, calibration data or None) of a dataset, for `export_ensemble`.

    Validation data (fidelity) is the dataset's test split; calibration data (only
    when a member is stored as int8) the first examples of its training split,
    both without augmentation.

    ```python
    from quantens.export import export_datasets

    val, calibration = export_datasets("digits", (32, 4, 1), batch_size=128)
    x, y = next(iter(calibration))
    assert x.shape[1:] == (8, 8, 1)
    ```
    """
    from quantens import data

    try:
        spec = data.resolve(dataset, data_dir)
        val = data.load(dataset, spec.test_split, batch_size, data_dir=data_dir) if evaluate else None
        calibration = None
        if any(member_format(b) == INT8 for b in bit_widths):
            calibration = data.load(
                dataset, spec.train_split, batch_size, data_dir=data_dir,
                take_batches=max(1, math.ceil(MAX_CALIBRATION_EXAMPLES / batch_size)))
    except Exception as error:  # TFDS raises many kinds; all mean "no data"
        raise ExportError(
            f"dataset {dataset} cannot be loaded (data_dir {data_dir}): {one_line(error)}"
        ) from error
    return val, calibration


def export_result_dir(result_dir: str, out_dir: str | None = None, *,
                      weights: str = ResultDir.WEIGHTS, batch_size: int | None = None,
                      evaluate: bool = True, max_val_examples: int | None = None,
                      model=None, remove_stale: bool = False) -> dict:
    """Exports a finished run's result directory to `RESULT_DIR/export/`.

    The ensemble is rebuilt by `load_result_ensemble` (from model.json, or
    from `model`), the data by `export_datasets`. Returns the content of
    export.json. (Within a run, train.py passes its ensemble to
    `export_ensemble` instead.)

    ```python
    import os, tempfile
    import quantens
    from quantens.export import export_result_dir
    from quantens.results import save_run
    from zoo import create_model

    run = tempfile.mkdtemp()
    save_run(run, create_model("digits_resnet_e", width=8, bit_widths=(32, 1)),
             {"model": "digits_resnet_e", "bit_widths": [32, 1], "input_shape": [8, 8, 1],
              "num_classes": 10, "dataset": "digits"})
    report = export_result_dir(run, max_val_examples=8)
    assert os.path.isfile(os.path.join(run, "export", "member_1.tflite"))
    ```
    """
    ensemble, config = load_result_ensemble(result_dir, weights, model=model)
    batch_size = int(batch_size or config.get("batch_size") or 256)
    val, calibration = export_datasets(
        config["dataset"], ensemble.bit_widths, batch_size=batch_size,
        data_dir=config.get("data_dir"), evaluate=evaluate,
    )
    from quantens import data

    split = data.resolve(config["dataset"], config.get("data_dir")).test_split
    return export_ensemble(
        ensemble, out_dir or ResultDir(result_dir).export, val_data=val,
        calibration_data=calibration, batch_size=batch_size, max_val_examples=max_val_examples,
        extra={"model": config["model"], "dataset": config["dataset"],
               "split": split if evaluate else None, "weights": weights},
        remove_stale=remove_stale,
    )


def summary_table(report: Mapping[str, Any]) -> str:
    """export.json as a table: one line per member."""
    lines = ["bits  format   bytes       agreement  max|dlogit|  tflite acc  keras acc",
             "----  -------  ----------  ---------  -----------  ----------  ---------"]

    def fmt(value, spec):
        return format(value, spec) if value is not None else "-"

    for b, entry in report["members"].items():
        fid = entry.get("fidelity") or {}
        lines.append(
            f"{b:>4}  {entry['format']:<7}  {entry['bytes']:>10}  "
            f"{fmt(fid.get('agreement'), '>9.4f')}  {fmt(fid.get('max_abs_logit_diff'), '>11.2e')}"
            f"  {fmt(fid.get('tflite_accuracy'), '>10.4f')}  "
            f"{fmt(fid.get('keras_accuracy'), '>9.4f')}"
        )
    return "\n".join(lines)
