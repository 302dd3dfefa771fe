"""ResNetE ("Back to Simplicity", Bethge et al. 2019) as shared-weight ensembles.

ResNetE1 doubles ResNet's shortcuts: every basic block of two 3x3 convolutions
becomes two blocks of one quantized 3x3 convolution each, with its own
shortcut. The stem and the classifier stay full precision; downsampling
shortcuts are a 1x1 convolution (full precision with `fp_downsample_sc`,
preceded by 2x2 average pooling with `pool_downsample_sc`).

```python
from zoo.resnet_e import resnet18_e1

model = resnet18_e1(input_shape=(32, 32, 3), num_classes=10,
                    initial_layers="thumbnail", bit_widths=(32, 1))
```
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

import quantens
from quantens import defaults
from quantens.bits import validate_bit_widths
from quantens.defaults import INITIAL_LAYERS
from zoo.registry import register_model

__all__ = [
    "digits_resnet_e",
    "resnet18_e1",
    "resnet34_e1",
    "resnet_e",
]


def _stem(x, filters: int, initial_layers: str, bn_kwargs: dict):
    def conv_bn_relu(x, filters, kernel, strides=1, groups=1, name=""):
        x = tf.keras.layers.Conv2D(
            filters, kernel, strides=strides, padding="same", groups=groups,
            use_bias=False, kernel_initializer="he_normal", name=f"stem_conv{name}",
        )(x)
        x = tf.keras.layers.BatchNormalization(name=f"stem_bn{name}", **bn_kwargs)(x)
        return tf.keras.layers.Activation("relu", name=f"stem_relu{name}")(x)

    if initial_layers == "imagenet":
        x = conv_bn_relu(x, filters, 7, strides=2)
        return tf.keras.layers.MaxPool2D(3, strides=2, padding="same", name="stem_pool")(x)
    if initial_layers == "thumbnail":
        return conv_bn_relu(x, filters, 3)
    if initial_layers == "grouped_stem":
        # MeliusNet's grouped stem: three 3x3 convolutions, two of them grouped.
        x = conv_bn_relu(x, filters // 2, 3, strides=2, name="1")
        x = conv_bn_relu(x, filters // 2, 3, groups=4, name="2")
        x = conv_bn_relu(x, filters, 3, groups=8, name="3")
        return tf.keras.layers.MaxPool2D(3, strides=2, padding="same", name="stem_pool")(x)
    raise ValueError(
        f"unknown initial layers {initial_layers!r}: choose one of {', '.join(INITIAL_LAYERS)}"
    )


def resnet_e(
    stage_blocks: Sequence[int],
    stage_filters: Sequence[int],
    input_shape=(224, 224, 3),
    num_classes: int = 1000,
    bit_widths=defaults.BIT_WIDTHS,
    initial_layers: str = "imagenet",
    stem_filters: int | None = None,
    weight_quantization: str = defaults.WEIGHT_QUANTIZATION,
    activation_method: str = defaults.ACTIVATION_METHOD,
    clip_threshold: float | None = defaults.CLIP_THRESHOLD,
    fp_weights: bool = False,
    fp_downsample_sc: bool = False,
    pool_downsample_sc: bool = False,
    share_bn: bool = False,
    sync_bn: bool = False,
    weights: str | None = None,
    name: str = "resnet_e",
) -> tf.keras.Model:
    """A ResNetE network with `stage_blocks[i]` one-conv blocks in stage i.

    Arguments:
        stage_blocks: quantized 3x3 convolutions (= blocks) per stage.
        stage_filters: channels per stage; stages after the first halve the
            resolution in their first block.
        input_shape, num_classes: as in `keras.applications`.
        bit_widths: the members of the ensemble.
        initial_layers: the stem: `imagenet` (7x7/2 conv + max pool),
            `thumbnail` (3x3 conv, for small images) or `grouped_stem`.
        weight_quantization: `dorefa`, `narrow` or `identity`; `fp_weights=True` is
            the same as `identity` (full-precision weights for every member).
        activation_method: `round`, `det_sign`, or `pact` (a learned clip
            value per conv and member, `quantens.quantizers.PACTActivation`).
        clip_threshold: activation gradients are cancelled beyond it.
        fp_downsample_sc: full-precision 1x1 convolution in downsampling
            shortcuts (quantized otherwise).
        pool_downsample_sc: 2x2 average pooling before that convolution
            (otherwise the convolution has stride 2).
        share_bn: one BN for all members instead of one per member.
        sync_bn: synchronise BN statistics across replicas.
        weights: None, the path of a weights file, or a pretrained tag of this
            model (`zoo.list_pretrained()`).
    """
    bit_widths = validate_bit_widths(bit_widths)
    if len(stage_blocks) != len(stage_filters):
        raise ValueError("stage_blocks and stage_filters must have the same length")
    bn_kwargs = {"momentum": 0.9, "epsilon": 1e-5}
    if sync_bn:
        bn_kwargs["synchronized"] = True
    kernel_quantizer = "identity" if fp_weights else weight_quantization

    def switchable_bn(name):
        return quantens.SwitchableBatchNormalization(
            bit_widths, shared=share_bn, name=name, **bn_kwargs
        )

    def quant_conv(filters, kernel, strides, name):
        return quantens.QuantConv2D(
            filters, kernel, strides=strides, padding="same", use_bias=False,
            kernel_quantizer=quantens.WeightQuantizer(kernel_quantizer),
            input_quantizer=(
                quantens.PACTActivation(bit_widths) if activation_method == "pact"
                else quantens.ActivationQuantizer(activation_method,
                                                  clip_threshold=clip_threshold)),
            kernel_initializer="glorot_normal", name=name,
        )

    inputs = tf.keras.Input(shape=input_shape)
    x = _stem(inputs, stem_filters or stage_filters[0], initial_layers, bn_kwargs)
    block = 0
    for stage, (blocks, filters) in enumerate(zip(stage_blocks, stage_filters, strict=True)):
        for i in range(blocks):
            block += 1
            strides = 2 if stage > 0 and i == 0 else 1
            shortcut = x
            if strides != 1 or shortcut.shape[-1] != filters:
                sc_strides = strides
                if pool_downsample_sc and strides != 1:
                    shortcut = tf.keras.layers.AvgPool2D(
                        2, strides=2, padding="same", name=f"block{block}_sc_pool"
                    )(shortcut)
                    sc_strides = 1
                if fp_downsample_sc:
                    shortcut = tf.keras.layers.Conv2D(
                        filters, 1, strides=sc_strides, use_bias=False,
                        kernel_initializer="he_normal", name=f"block{block}_sc_conv",
                    )(shortcut)
                else:
                    shortcut = quant_conv(filters, 1, sc_strides, f"block{block}_sc_conv")(
                        shortcut
                    )
                shortcut = switchable_bn(f"block{block}_sc_bn")(shortcut)
            y = quant_conv(filters, 3, strides, f"block{block}_conv")(x)
            y = switchable_bn(f"block{block}_bn")(y)
            x = tf.keras.layers.Add(name=f"block{block}_add")([y, shortcut])
    x = switchable_bn("final_bn")(x)
    x = tf.keras.layers.Activation("relu", name="final_relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = tf.keras.layers.Dense(num_classes, name="logits")(x)
    model = tf.keras.Model(inputs, outputs, name=name)
    if weights is not None:
        from zoo.pretrained import load_weights_into

        load_weights_into(model, name, weights)
    return model


@register_model(forwards_to=resnet_e)
def resnet18_e1(input_shape=(224, 224, 3), num_classes: int = 1000, **kwargs):
    """ResNetE-18 (BMXNet's resnet18_e1): 16 quantized 3x3 convolutions.

    ```python
    from zoo import create_model

    model = create_model("resnet18_e1", input_shape=(32, 32, 3), num_classes=10,
                         initial_layers="thumbnail", bit_widths=(32, 1))
    ```
    """
    return resnet_e(
        (4, 4, 4, 4), (64, 128, 256, 512), input_shape, num_classes,
        name="resnet18_e1", **kwargs,
    )


@register_model(forwards_to=resnet_e)
def resnet34_e1(input_shape=(224, 224, 3), num_classes: int = 1000, **kwargs):
    """ResNetE-34: 32 quantized 3x3 convolutions (stages of 6, 8, 12, 6).

    ```python
    from zoo import create_model

    model = create_model("resnet34_e1", input_shape=(32, 32, 3), num_classes=10,
                         initial_layers="thumbnail", bit_widths=(32, 1))
    ```
    """
    return resnet_e(
        (6, 8, 12, 6), (64, 128, 256, 512), input_shape, num_classes,
        name="resnet34_e1", **kwargs,
    )


@register_model(forwards_to=resnet_e)
def digits_resnet_e(
    input_shape=(8, 8, 1), num_classes: int = 10, width: int = 32, **kwargs
):
    """A small ResNetE for 8x8 digits: 3x3 stem, three stages of two blocks.

    `width` is the first stage's channels (stages: width, 2*width, 4*width).

    ```python
    from zoo import create_model

    model = create_model("digits_resnet_e", width=16, bit_widths=(32, 1))
    ```
    """
    kwargs.setdefault("initial_layers", "thumbnail")
    kwargs.setdefault("fp_downsample_sc", True)
    kwargs.setdefault("pool_downsample_sc", True)
    return resnet_e(
        (2, 2, 2), (width, 2 * width, 4 * width), input_shape, num_classes,
        name="digits_resnet_e", **kwargs,
    )
