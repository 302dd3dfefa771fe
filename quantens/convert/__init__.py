"""Convert a float Keras model into a shared-weight ensemble: `quantize_model`.

`quantize_model(model, bit_widths)` rebuilds a functional or Sequential model
from quantens' switchable layers, layer by layer, with the original's weights.
A layer with a kernel (`Conv2D`, `DepthwiseConv2D`, `Dense`, ...:
`supported_layers()` names every kind `quantens.registry` holds, and
docs/converting.md#supported-layers, generated from it, shows the switchable
layer each becomes and its quantized kernels) becomes its switchable layer,
with one kernel; a `BatchNormalization` a `SwitchableBatchNormalization`,
every member's BN starting from the original's statistics; a ReLU-like
activation (`ReLU`, `ReLU(6)`, `Activation("relu")`, `Activation("relu6")`, a
fused relu) a `QuantActivation` (see below); other layers without weights,
and `Normalization`, are kept as they are (a copy).

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
activations inside the model (sigmoid, swish, softmax, leaky relu, `ReLU` with
a threshold or negative slope), fused or not, are kept as they are, in full
precision.

The output must be logits (quantens trains with a from-logits cross-entropy):
`logits_model` checks every output and removes a final softmax (a `Softmax` or
`Activation("softmax")` layer, the last layer's `activation="softmax"`, the last
layer of a nested model, a `tf.nn.softmax` op), with a `SoftmaxRemovedWarning`:
the converted model outputs the logits the original fed into its softmax. An
output that cannot be told to be logits (a sigmoid, a relu, a `Lambda`, an
unknown layer or TF op at the end) is a `ConfigError` naming the layer.

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

The package, one concern a module, arrows pointing down:
`quantens.convert.kinds` (what each layer becomes), `.logits` (the final
softmax), `._plan` (a model's layers, flattened and checked), `.policy` (the
precision policy), `.options` (the quantizer options, checked), `._builder`
(the construction) and this module, `quantize_model`, which runs them.
"""

from __future__ import annotations

import warnings

import tensorflow as tf

from quantens.checks import check_bit_widths, check_model_io
from quantens.convert._builder import build_model
from quantens.convert._plan import Plan
from quantens.convert.kinds import SUPPORTED, check_graph_model, supported_layers
from quantens.convert.logits import SoftmaxRemovedWarning, logits_model
from quantens.convert.options import QUANTIZER_OPTIONS, check_options, check_something_varies
from quantens.convert.policy import Policy, default_policy, resolve_policy
from quantens.defaults import BIT_WIDTHS

__all__ = [
    "Policy", "QUANTIZER_OPTIONS", "SUPPORTED", "SoftmaxRemovedWarning", "default_policy",
    "logits_model", "quantize_model", "supported_layers",
]


def quantize_model(model: tf.keras.Model, bit_widths=BIT_WIDTHS, *, policy: Policy = None,
                   input_shape=None, **quantizer_options) -> tf.keras.Model:
    """A copy of a float functional or Sequential model made of switchable layers.

    The converted model holds one kernel per convolution / dense layer for
    every member, the original's weights, and per member a BN initialised
    from the original's; its 32-bit member computes what `model` computes (see
    the module docstring for what each layer becomes), in logits: a final
    softmax is removed (`logits_model`), with a `SoftmaxRemovedWarning`. Train
    it with `quantens.QuantEnsemble(converted, bit_widths)`; run member b with
    `quantens.bits(b)` or `ensemble.member(b)`. `model` itself is not changed.

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
        input_shape: the input size without the batch axis, e.g. `(32, 32, 3)`,
            for a model saved for inputs of any size (`(None, None, 3)`): the
            converted model takes this size (a TFLite file needs a fixed one).
            Sizes the model fixes itself must agree.
        **quantizer_options: see `QUANTIZER_OPTIONS`: `weight_quantization`
            (`"narrow"`, `"dorefa"` or `"identity"`), `relu_range` (one clip
            value for every member instead of one per member),
            `learn_ranges` (train the clip values), `depthwise_bits` (the
            least precision of depthwise kernels, default 8), `share_bn` (one
            BN for all members), `sync_bn` (BN statistics synchronised across
            replicas).

    Raises (all `ValueError`s, one line each):
        UsageError: `model` is not a tf.keras model; bad `bit_widths`, policy,
            option name or option value.
        ConfigError: a subclassed model, a layer called more than once, a
            layer with weights it cannot convert (RNNs, `Conv3D`,
            `Conv2DTranspose`, `Embedding`, ...), an already quantized layer
            (the message names the layer); more than one input or output, an
            input of unknown size without `input_shape`, or an output that
            is not logits (`quantens.checks.check_model_io`, `logits_model`);
            nothing to quantize (no convolution, dense layer
            or ReLU-like activation follows the member: every member would
            compute the same).

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
    bit_widths = check_bit_widths(bit_widths, "quantize_model")
    options = check_options(quantizer_options)
    check_graph_model(model)
    plan = Plan(model)  # what cannot be converted, before looking at the output
    shape = check_model_io(model, "quantize_model", input_shape)
    model, removed = logits_model(model)
    if removed:
        plan = Plan(model)
        warnings.warn(
            f"model {model.name!r}: removed the final softmax "
            f"({', '.join(map(repr, removed))}); quantens trains on logits: the converted "
            "model outputs them (softmax them for probabilities)",
            SoftmaxRemovedWarning, stacklevel=2,
        )
    fixed_bits = resolve_policy(policy, plan)
    check_something_varies(model, plan, fixed_bits, bit_widths, options)
    return build_model(model, plan, shape, bit_widths, fixed_bits, options)
