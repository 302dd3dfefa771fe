"""Full-precision teachers: ResNet18_v1 (ImageNet) and the CIFAR ResNets of GluonCV.

The seed's teachers came from the GluonCV model zoo: `ResNet18_v1` and
`cifar_resnet{20,56,110}_v{1,2}`. These are the same architectures in Keras
(v1: post-activation basic blocks; v2: pre-activation), built from plain
Keras layers.

```python
from zoo import list_teachers
from zoo.resnet import cifar_resnet

teacher = cifar_resnet(20, version=2, input_shape=(32, 32, 3), num_classes=100)
assert teacher.name == "cifar_resnet20_v2" and teacher.output_shape == (None, 100)
assert "cifar_resnet20_v2" in list_teachers("cifar_*")  # zoo.create_teacher's name
```
"""

from __future__ import annotations

import tensorflow as tf

from zoo.registry import register_teacher

__all__ = [
    "ResNet18_v1",
    "cifar_resnet",
    "resnet_v1_imagenet",
]

_BN = {"momentum": 0.9, "epsilon": 1e-5}


def _conv(filters, kernel, strides=1, name=None):
    return tf.keras.layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False,
        kernel_initializer="he_normal", name=name,
    )


def _bn(name=None, **kwargs):
    return tf.keras.layers.BatchNormalization(name=name, **_BN, **kwargs)


def _block_v1(x, filters, strides, name):
    """conv-BN-ReLU-conv-BN, plus a (projected) shortcut, then ReLU."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, name=f"{name}_down_conv")(x)
        shortcut = _bn(f"{name}_down_bn")(shortcut)
    y = _conv(filters, 3, strides, name=f"{name}_conv1")(x)
    y = _bn(f"{name}_bn1")(y)
    y = tf.keras.layers.Activation("relu", name=f"{name}_relu1")(y)
    y = _conv(filters, 3, name=f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2")(y)
    y = tf.keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return tf.keras.layers.Activation("relu", name=f"{name}_out")(y)


def _block_v2(x, filters, strides, name):
    """BN-ReLU-conv-BN-ReLU-conv; the shortcut projects the pre-activated input."""
    pre = _bn(f"{name}_bn1")(x)
    pre = tf.keras.layers.Activation("relu", name=f"{name}_relu1")(pre)
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, name=f"{name}_down_conv")(pre)
    y = _conv(filters, 3, strides, name=f"{name}_conv1")(pre)
    y = _bn(f"{name}_bn2")(y)
    y = tf.keras.layers.Activation("relu", name=f"{name}_relu2")(y)
    y = _conv(filters, 3, name=f"{name}_conv2")(y)
    return tf.keras.layers.Add(name=f"{name}_out")([y, shortcut])


def _resnet(inputs, x, stages, filters, version, num_classes, name):
    block = _block_v1 if version == 1 else _block_v2
    for s, (blocks, width) in enumerate(zip(stages, filters, strict=True)):
        for i in range(blocks):
            strides = 2 if s > 0 and i == 0 else 1
            x = block(x, width, strides, name=f"stage{s + 1}_block{i + 1}")
    if version == 2:
        x = _bn("final_bn")(x)
        x = tf.keras.layers.Activation("relu", name="final_relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = tf.keras.layers.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name=name)


def resnet_v1_imagenet(stages, input_shape=(224, 224, 3), num_classes=1000, name="resnet"):
    inputs = tf.keras.Input(input_shape)
    x = _conv(64, 7, 2, name="stem_conv")(inputs)
    x = _bn("stem_bn")(x)
    x = tf.keras.layers.Activation("relu", name="stem_relu")(x)
    x = tf.keras.layers.MaxPool2D(3, 2, padding="same", name="stem_pool")(x)
    return _resnet(inputs, x, stages, (64, 128, 256, 512), 1, num_classes, name)


@register_teacher
def ResNet18_v1(input_shape=(224, 224, 3), num_classes: int = 1000):  # noqa: N802
    """ResNet-18 v1 (He et al. 2016; GluonCV's resnet18_v1), the seed's ImageNet teacher.

    ```python
    from zoo.resnet import ResNet18_v1

    teacher = ResNet18_v1(input_shape=(64, 64, 3), num_classes=10)
    ```
    """
    return resnet_v1_imagenet((2, 2, 2, 2), input_shape, num_classes, name="ResNet18_v1")


def cifar_resnet(depth: int, version: int, input_shape=(32, 32, 3), num_classes: int = 10):
    """GluonCV's CIFAR ResNet: 3 stages of (depth - 2) / 6 basic blocks, 16/32/64 channels."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    n = (depth - 2) // 6
    inputs = tf.keras.Input(input_shape)
    x = inputs
    if version == 2:
        x = _bn("input_bn", center=False, scale=False)(x)
    x = _conv(16, 3, name="stem_conv")(x)
    if version == 1:
        x = _bn("stem_bn")(x)
        x = tf.keras.layers.Activation("relu", name="stem_relu")(x)
    return _resnet(
        inputs, x, (n, n, n), (16, 32, 64), version, num_classes,
        name=f"cifar_resnet{depth}_v{version}",
    )


def _register_cifar(depth: int, version: int):
    def builder(input_shape=(32, 32, 3), num_classes: int = 10):
        return cifar_resnet(depth, version, input_shape, num_classes)

    builder.__name__ = f"cifar_resnet{depth}_v{version}"
    builder.__doc__ = (
        f"CIFAR ResNet-{depth} v{version} (GluonCV's {builder.__name__}).\n\n"
        "```python\n"
        f"from zoo import create_teacher\n\nteacher = create_teacher('{builder.__name__}', "
        "input_shape=(32, 32, 3), num_classes=100)\n```\n"
    )
    return register_teacher(builder)


for _depth in (20, 56, 110):
    for _version in (1, 2):
        _register_cifar(_depth, _version)
