"""Converted float networks: `tf.keras.applications` models and users' saved models.

Three forms of a model name reach the same conversion, `quantens.quantize_model`
of a float Keras model:

- the registered names `mobilenet_v2` and `resnet50`
  (`tf.keras.applications.MobileNetV2` / `ResNet50`);
- `keras:NAME` for any `tf.keras.applications` builder (`keras:MobileNetV3Small`,
  `keras:EfficientNetB0`); a network the converter cannot take fails with
  its one-line ValueError;
- the path of a saved float model (`.keras` or `.h5`, a whole model written by
  `model.save(path)`), `--model PATH` of train.py.

The float network is built with `include_top=True, weights=None,
classifier_activation=None`: it ends in the logits of `num_classes` classes
(global average pooling and a `Dense` named `predictions`), as every zoo model
does, whatever its `weights`. `weights` is

- None: keras' random initialisation;
- `"imagenet_float"`: keras.applications' ImageNet float weights (downloaded
  by keras into `~/.keras/models`). With `num_classes=1000` every layer gets
  them, the classifier included; otherwise the backbone gets them
  (`include_top=False`) and the classifier stays freshly initialised, the
  usual Keras transfer-learning start. Offline this is one `DownloadError`
  that says to pass a local file instead;
- a path: a float weights file of the same network (`.h5`, `.weights.h5` or
  `.keras`; keras' own ImageNet `.h5` files, with or without their top, work
  too): the whole network's weights, or the backbone's (the classifier then
  stays freshly initialised).

The networks take the images quantens' data pipeline makes (standardised per
channel), like every zoo model. ImageNet weights were trained on keras' own
preprocessing (`[-1, 1]` for MobileNetV2, caffe-style BGR for ResNet50):
they are a starting point for fine-tuning, not a calibrated ImageNet
classifier on quantens' inputs.

The zoo's architecture arguments (train.py's flags, `zoo.builder_kwargs`)
mean for a converted network: `weight_quantization` and `fp_weights`
(= `weight_quantization="identity"`) choose its weight quantizer, `share_bn` and
`sync_bn` its batch normalisation, `alpha` the width multiplier of the
MobileNets (`--alpha`). The others describe ResNetE's own blocks and are
refused unless they have their default: `activation_method` (activations are
quantized by rounding on the range of each ReLU-like activation),
`clip_threshold`, `initial_layers` (the network keeps its own stem), `width`
(use `alpha`), `fp_downsample_sc`, `pool_downsample_sc`.

```python
import numpy as np
import quantens  # before TensorFlow: selects tf-keras
import zoo

model = zoo.create_model("mobilenet_v2", input_shape=(32, 32, 3), num_classes=10,
                         alpha=0.35, bit_widths=(32, 4, 1))
with quantens.bits(1):
    logits = model(np.zeros((1, 32, 32, 3), "float32"))
assert logits.shape == (1, 10)
```
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
import warnings

import tensorflow as tf

import quantens
from quantens import defaults, keras_graph
from quantens.checks import check_model_io
from quantens.convert import SoftmaxRemovedWarning, logits_model
from quantens.errors import (
    ConfigError,
    DownloadError,
    PretrainedError,
    UsageError,
    WeightsError,
    one_line,
)
from zoo.registry import register_model

IMAGENET_FLOAT = "imagenet_float"
"""The `weights` value that converts keras.applications' ImageNet float weights."""

IMAGENET_CLASSES = 1000
DOWNLOAD_TIMEOUT = 30.0
"""Seconds a socket operation of the weights download may block (a dead network fails fast)."""

KERAS_PREFIX = defaults.KERAS_MODEL_PREFIX

_REGISTERED = {"mobilenet_v2": "MobileNetV2", "resnet50": "ResNet50"}


# ------------------------------------------------------------------ names


def application_builder(name: str):
    """The `tf.keras.applications` builder function `name` (e.g. `"MobileNetV2"`).

    Raises:
        ConfigError: no such builder; the message lists a few.

    ```python
    from zoo.applications import application_builder

    assert application_builder("ResNet50").__name__ == "ResNet50"
    ```
    """
    builder = getattr(tf.keras.applications, name, None)
    if not (callable(builder) and name[:1].isupper()):
        known = sorted(n for n in dir(tf.keras.applications)
                       if n[:1].isupper() and callable(getattr(tf.keras.applications, n)))
        raise ConfigError(
            f"unknown tf.keras.applications model {name!r}: choose a builder such as "
            f"{', '.join(k for k in known if k in ('MobileNetV2', 'ResNet50', 'EfficientNetB0'))}"
            f" ({len(known)} in all: dir(tf.keras.applications))"
        )
    return builder


def is_converted(name: str) -> bool:
    """Whether the zoo model `name` is a converted float network (this module's forms)."""
    name = str(name)
    return (name in _REGISTERED or name.startswith(KERAS_PREFIX)
            or defaults.is_model_file(name))


def builder_for(name: str):
    """The zoo builder of `keras:NAME` or of a saved model's path; None for other names.

    Checks what can be checked without building: the keras name exists; the
    file exists, can be read and holds a whole model (not weights only).

    Raises:
        ConfigError: an unknown keras name or a file that cannot be a saved model.

    ```python
    from zoo.applications import builder_for

    build = builder_for("keras:MobileNetV2")
    model = build(input_shape=(32, 32, 3), num_classes=10, alpha=0.35, bit_widths=(32, 1))
    assert builder_for("digits_resnet_e") is None
    ```
    """
    name = str(name)
    if name.startswith(KERAS_PREFIX):
        application = name[len(KERAS_PREFIX):]
        application_builder(application)
        return functools.partial(keras_application, application)
    if defaults.is_model_file(name):
        check_model_file(name)
        return functools.partial(saved_model, name)
    return None


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
"""How a zip archive (a `.keras` file) starts: a first member, or no member at all."""


def _damaged(path: str, reason) -> ConfigError:
    """The error for a file cut short or damaged (`reason`: an exception or a phrase)."""
    if isinstance(reason, BaseException):
        reason = one_line(reason)
    return ConfigError(
        f"{path} is damaged (truncated or partly copied?): {reason}; save the model again"
    )


def _read_all(name: str, item) -> None:
    """Reads an HDF5 object's attributes and data (h5py raises where the file is damaged)."""
    import h5py

    for key in item.attrs:
        item.attrs[key]  # noqa: B018  (the read is the check)
    if isinstance(item, h5py.Dataset):
        item[()]  # noqa: B018


def check_model_file(path: str) -> None:
    """Raises ConfigError unless `path` is a readable `.keras` or `.h5` file of a whole model.

    Reads the file without TensorFlow (every member of a `.keras` archive against
    its checksum, every object of an `.h5` file), so that a command can check it
    before it writes anything: a file cut short or damaged while copied is one
    line naming it ("... is damaged (...): save the model again").
    """
    import zipfile
    import zlib

    import h5py

    hint = "save the float model with model.save('model.keras') (or a .h5 path)"
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ConfigError(
            f"{path} is a directory (a SavedModel?): quantens reads saved Keras models from "
            f"{' or '.join(defaults.MODEL_FILE_SUFFIXES)} files; {hint}"
        )
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{path} is not readable by this user")
    if path.lower().endswith(".keras"):
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic not in _ZIP_MAGIC:
            raise ConfigError(f"{path} is not a .keras file (a zip archive); {hint}")
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                broken = archive.testzip()
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError,
                NotImplementedError) as error:
            reason = error if zipfile.is_zipfile(path) else \
                "its zip archive has no end (no central directory)"
            raise _damaged(path, reason) from error
        if broken is not None:
            raise _damaged(path, f"{broken!r} in its zip archive fails its checksum")
        if "config.json" not in names:
            raise ConfigError(f"{path} holds no model config; {hint}")
        return
    if path.lower().endswith(".h5"):
        if not h5py.is_hdf5(path):
            raise ConfigError(f"{path} is not an HDF5 file; {hint}")
        try:
            with h5py.File(path, "r") as f:
                whole = "model_config" in f.attrs
                _read_all("/", f)
                f.visititems(_read_all)
        except Exception as error:  # h5py's OSError, RuntimeError, KeyError of a damaged file
            raise _damaged(path, error) from error
        if not whole:
            raise ConfigError(
                f"{path} holds weights only, not a model; {hint}, or pass the weights "
                "to a zoo model (zoo.create_model(NAME, weights=PATH))"
            )
        return
    raise ConfigError(
        f"{path}: a saved model is a {' or '.join(defaults.MODEL_FILE_SUFFIXES)} file; {hint}"
    )


# ------------------------------------------------------------ the options


def converted_options(
    model: str,
    weight_quantization: str = defaults.CONVERTED_WEIGHT_QUANTIZATION,
    activation_method: str = defaults.ACTIVATION_METHOD,
    clip_threshold: float | None = defaults.CLIP_THRESHOLD,
    fp_weights: bool = False,
    share_bn: bool = False,
    sync_bn: bool = False,
    initial_layers: str | None = None,
    width: int | None = None,
    fp_downsample_sc: bool = False,
    pool_downsample_sc: bool = False,
    **quantizer_options,
) -> dict:
    """`quantize_model`'s options for the zoo's architecture arguments (train.py's flags).

    Arguments that mean something for a converted network are mapped; the
    ones that describe ResNetE's own blocks are refused unless they have
    their default (a ConfigError naming the argument and its flag). Other
    keyword arguments are `quantize_model` options (`relu_range`, `learn_ranges`,
    `depthwise_bits`).

    ```python
    from zoo.applications import converted_options

    assert converted_options("resnet50", fp_weights=True, share_bn=True) == {
        "weight_quantization": "identity", "share_bn": True, "sync_bn": False}
    assert converted_options("resnet50")["weight_quantization"] == "narrow"
    try:
        converted_options("resnet50", width=16)
        raise AssertionError("width passed")
    except ValueError as error:
        assert "width" in str(error)
    ```
    """
    def refuse(argument: str, value, why: str):
        flag = "--" + argument.replace("_", "-")
        raise ConfigError(
            f"{model}: {argument}={value!r} ({flag}) has no meaning for a converted network: "
            f"{why}"
        )

    if activation_method != defaults.ACTIVATION_METHOD:
        refuse("activation_method", activation_method,
               "its ReLU-like activations are quantized by rounding on a clip value per "
               "member (quantens.ClipActivation); leave it at "
               f"{defaults.ACTIVATION_METHOD!r}")
    if clip_threshold is not None and float(clip_threshold) != defaults.CLIP_THRESHOLD:
        refuse("clip_threshold", clip_threshold,
               "gradients pass inside each activation's range; leave it at "
               f"{defaults.CLIP_THRESHOLD}")
    if initial_layers is not None:
        refuse("initial_layers", initial_layers, "the network keeps its own stem")
    if width is not None:
        refuse("width", width, "the width multiplier of the MobileNets is alpha (--alpha); "
               "other networks have a fixed width")
    for argument, value in (("fp_downsample_sc", fp_downsample_sc),
                            ("pool_downsample_sc", pool_downsample_sc)):
        if value:
            refuse(argument, value, "the network keeps its own shortcuts")
    options = {
        "weight_quantization": "identity" if fp_weights else weight_quantization,
        "share_bn": bool(share_bn),
        "sync_bn": bool(sync_bn),
    }
    return {**options, **quantizer_options}


# --------------------------------------------------- keras.applications


@contextlib.contextmanager
def _download_timeout(seconds: float):
    """A socket timeout for keras' `urlretrieve`, which sets none (a dead network would hang)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _application_kwargs(name: str, builder, alpha: float | None) -> dict:
    if alpha is None:
        return {}
    if "alpha" not in inspect.signature(builder).parameters:
        raise ConfigError(
            f"tf.keras.applications.{name} has no width multiplier alpha (--alpha): only "
            "the MobileNets (MobileNet, MobileNetV2, MobileNetV3*) have one"
        )
    return {"alpha": float(alpha)}


def _build(name: str, builder, **kwargs):
    try:
        return builder(**kwargs)
    except ValueError as error:  # keras' checks of the arguments (input size, alpha, ...)
        raise ConfigError(f"tf.keras.applications.{name}: {one_line(error)}") from error


def _weighted(model) -> list:
    return [layer for layer in model.layers if layer.weights]


def _copy_backbone(source, target, what: str, count: int | None = None) -> None:
    """Copies the weights of the first `count` (default: all) layers of `source` into
    the first layers of `target`.

    Layers are paired by position among the layers with weights (the names of
    keras' unnamed layers change from model to model); shapes must agree.
    """
    sources, targets = _weighted(source), _weighted(target)
    sources = sources if count is None else sources[:count]
    if len(sources) > len(targets):
        raise WeightsError(
            f"{what} holds {len(sources)} layers with weights, the model {len(targets)}"
        )
    for s, t in zip(sources, targets, strict=False):
        shapes = [tuple(w.shape) for w in s.weights]
        wanted = [tuple(w.shape) for w in t.weights]
        if shapes != wanted:
            raise WeightsError(
                f"layer {t.name!r}: {what} has weights of shapes {shapes}, the model {wanted} "
                "(another architecture, input channels or alpha?)"
            )
        t.set_weights(s.get_weights())


def _load_file(model, path: str) -> None:
    if path.lower().endswith(".keras"):
        model.load_weights(path)
    else:
        from quantens.results import load_weights

        load_weights(model, path)


def _imagenet_float(name: str, builder, model, num_classes: int, kwargs: dict) -> None:
    """Copies keras.applications' ImageNet float weights into `model` (downloading them)."""
    top = num_classes == IMAGENET_CLASSES
    try:
        with _download_timeout(DOWNLOAD_TIMEOUT):
            source = builder(include_top=top, weights="imagenet", **kwargs)
    except ValueError as error:  # keras refuses the arguments for its ImageNet weights
        raise PretrainedError(
            f"weights={IMAGENET_FLOAT!r} for tf.keras.applications.{name}: {one_line(error)}"
        ) from error
    except Exception as error:  # URL fetch failure, timeouts, an unwritable cache
        raise DownloadError(
            f"could not download the ImageNet float weights of tf.keras.applications.{name} "
            f"({one_line(error)}); download keras' weights file for {name} on a machine "
            "with network (tf.keras.applications."
            f"{name}(weights='imagenet'{'' if top else ', include_top=False'}) saves it in "
            "~/.keras/models/) and pass its path as weights=PATH (any float .h5/.keras "
            f"weights file of {name}, with or without its classifier)"
        ) from error
    _copy_backbone(source, model, f"the ImageNet weights of {name}")


def _float_weights_file(name: str, builder, model, input_shape, num_classes: int,
                        kwargs: dict, path: str) -> None:
    """Loads a float weights file of the network, whole or its backbone, into `model`."""
    if not os.path.isfile(path):
        raise WeightsError(f"float weights {path}: no such file")
    try:
        _load_file(model, path)
        return
    except Exception as error:  # Keras' ValueError on a mismatch, h5py's OSError
        first = error
    # the backbone's weights (keras' *_no_top.h5), or a file with ImageNet's classifier
    backbone = _build(name, builder, include_top=False, weights=None,
                      input_shape=tuple(input_shape), **kwargs)
    count = len(_weighted(backbone))
    sources = [lambda: backbone]
    if num_classes != IMAGENET_CLASSES:
        sources.append(lambda: builder(include_top=True, weights=None,
                                       input_shape=tuple(input_shape),
                                       classes=IMAGENET_CLASSES, classifier_activation=None,
                                       **kwargs))
    for source in sources:
        try:
            source = source()
            _load_file(source, path)
        except Exception:  # noqa: S112  (not this form of the file: try the next)
            continue
        _copy_backbone(source, model, path, count)
        return
    raise WeightsError(
        f"cannot load {path} into tf.keras.applications.{name} (input {tuple(input_shape)}, "
        f"{num_classes} classes{''.join(f', {k}={v}' for k, v in kwargs.items())}), with or "
        f"without its classifier: {one_line(first)}"
    )


def float_application(
    name: str,
    input_shape=(224, 224, 3),
    num_classes: int = IMAGENET_CLASSES,
    weights: str | None = None,
    alpha: float | None = None,
) -> tf.keras.Model:
    """The float `tf.keras.applications` network that the zoo converts, with its weights.

    `tf.keras.applications.<name>(include_top=True, weights=None,
    classifier_activation=None, ...)` (logits), then `weights` as the module
    docstring says: None, `"imagenet_float"` or a float weights file.

    Raises:
        ConfigError: unknown name, arguments keras refuses.
        DownloadError: `"imagenet_float"` could not be downloaded (offline).
        WeightsError: a weights file that does not fit.

    ```python
    from zoo.applications import float_application

    model = float_application("MobileNetV2", (32, 32, 3), 10, alpha=0.35)
    assert model.output_shape == (None, 10)
    ```
    """
    builder = application_builder(name)
    kwargs = _application_kwargs(name, builder, alpha)
    model = _build(name, builder, include_top=True, weights=None,
                   input_shape=tuple(input_shape), classes=int(num_classes),
                   classifier_activation=None, **kwargs)
    if weights is None:
        return model
    weights = os.fspath(weights)
    if weights == "imagenet":
        raise PretrainedError(
            f"weights='imagenet': the ImageNet float weights of keras are "
            f"weights={IMAGENET_FLOAT!r} (converted to an ensemble, quantized below 32 bits)"
        )
    if weights == IMAGENET_FLOAT:
        _imagenet_float(name, builder, model, int(num_classes), kwargs)
    else:
        _float_weights_file(name, builder, model, input_shape, int(num_classes), kwargs,
                            weights)
    return model


def keras_application(
    name: str,
    input_shape=(224, 224, 3),
    num_classes: int = IMAGENET_CLASSES,
    bit_widths=defaults.BIT_WIDTHS,
    weights: str | None = None,
    alpha: float | None = None,
    policy=None,
    **options,
) -> tf.keras.Model:
    """`quantize_model` of the float `tf.keras.applications` network `name` (`keras:NAME`).

    Arguments:
        name: a builder of `tf.keras.applications`, e.g. `"MobileNetV3Small"`.
        input_shape, num_classes, weights, alpha: the float network
            (`float_application`).
        bit_widths, policy: as in `quantens.quantize_model`.
        **options: the zoo's architecture arguments (`converted_options`) and
            `quantize_model`'s quantizer options.

    Raises:
        ValueError: what `quantize_model` cannot convert (one line naming the
            layer), arguments without a meaning for the network (ConfigError),
            and the errors of `float_application`.

    ```python
    from zoo.applications import keras_application

    model = keras_application("MobileNetV3Small", (32, 32, 3), 10, (32, 2), alpha=0.75)
    ```
    """
    return _convert_application(name, f"{KERAS_PREFIX}{name}", input_shape, num_classes,
                                bit_widths, weights, alpha, policy, options)


def _convert_application(name, label, input_shape, num_classes, bit_widths, weights, alpha,
                         policy, options) -> tf.keras.Model:
    quantizer_options = converted_options(label, **options)  # before building anything
    model = float_application(name, input_shape, num_classes, weights, alpha)
    return quantens.quantize_model(model, bit_widths, policy=policy, **quantizer_options)


@register_model
def mobilenet_v2(
    input_shape=(224, 224, 3),
    num_classes: int = IMAGENET_CLASSES,
    bit_widths=defaults.BIT_WIDTHS,
    weights: str | None = None,
    alpha: float = 1.0,
    policy=None,
    **options,
) -> tf.keras.Model:
    """MobileNetV2 (`tf.keras.applications.MobileNetV2`) converted to a shared-weight ensemble.

    `alpha` is the width multiplier (keras has ImageNet weights for 0.35,
    0.5, 0.75, 1.0, 1.3 and 1.4). The first convolution (`Conv1`) and the
    classifier (`predictions`) stay full precision, depthwise kernels at 8
    bits or more; below 32 bits every ReLU6 is quantized on a clip value per
    member ([0, 6] from 4 bits up until `quantens.calibrate` fits it to data);
    the linear bottlenecks and residual sums stay full precision
    (`quantens.convert`).

    ```python
    import zoo

    model = zoo.create_model("mobilenet_v2", input_shape=(32, 32, 3), num_classes=10,
                             alpha=0.35, bit_widths=(32, 8, 4, 2, 1))
    ```
    """
    return _convert_application("MobileNetV2", "mobilenet_v2", input_shape, num_classes,
                                bit_widths, weights, alpha, policy, options)


@register_model
def resnet50(
    input_shape=(224, 224, 3),
    num_classes: int = IMAGENET_CLASSES,
    bit_widths=defaults.BIT_WIDTHS,
    weights: str | None = None,
    policy=None,
    **options,
) -> tf.keras.Model:
    """ResNet50 (`tf.keras.applications.ResNet50`) converted to a shared-weight ensemble.

    The stem convolution (`conv1_conv`) and the classifier (`predictions`)
    stay full precision; below 32 bits every ReLU is quantized on a clip value
    per member (`quantens.calibrate` fits them to data); residual sums stay
    full precision.

    ```python
    import zoo

    model = zoo.create_model("resnet50", input_shape=(32, 32, 3), num_classes=10,
                             bit_widths=(32, 1))
    ```
    """
    return _convert_application("ResNet50", "resnet50", input_shape, num_classes,
                                bit_widths, weights, options.pop("alpha", None), policy, options)


# ------------------------------------------------------------ saved models


def load_float_model(path: str, input_shape=None, num_classes: int | None = None):
    """A user's saved float model (`.keras`/`.h5`), checked, ending in logits.

    A final softmax (a `Softmax`/`Activation("softmax")` layer, the last
    layer's `activation="softmax"`, a nested model's last softmax, a
    `tf.nn.softmax` op) is removed by `quantens.convert.logits_model`, with a
    `SoftmaxRemovedWarning`: quantens trains on logits, and the softmax of the
    logits is what the saved model computed. `input_shape` and `num_classes`
    (a dataset's), when given, must match the model's.

    Raises:
        ConfigError: not a saved model, a damaged file (cut short, partly
            copied: "PATH is damaged ..."), a file Keras cannot load, more than
            one input or output, another input shape or number of classes, an
            output that is not logits (a sigmoid, a `Lambda`, ...).

    ```python
    import os, tempfile, warnings
    import quantens  # before TensorFlow: selects tf-keras
    import tensorflow as tf
    from zoo.applications import SoftmaxRemovedWarning, load_float_model

    path = os.path.join(tempfile.mkdtemp(), "cnn.keras")
    tf.keras.Sequential([
        tf.keras.layers.Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1)),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10, activation="softmax"),
    ]).save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_float_model(path, (8, 8, 1), 10)
    assert model.layers[-1].get_config()["activation"] == "linear"
    assert any(w.category is SoftmaxRemovedWarning for w in caught)
    ```
    """
    path = os.fspath(path)
    check_model_file(path)
    try:
        model = tf.keras.models.load_model(path, compile=False)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:  # ValueErrors of a damaged file
        raise _damaged(path, error) from error
    except (ValueError, TypeError) as error:  # Keras' own: unknown custom layers, bad config
        raise ConfigError(f"cannot load {path} as a Keras model: {one_line(error)}") from error
    except Exception as error:  # h5py's OSError/RuntimeError/KeyError, zipfile.BadZipFile
        raise _damaged(path, error) from error
    if not isinstance(model, tf.keras.Model):
        raise ConfigError(
            f"{path} holds a {type(model).__name__}, not a model: save the float model "
            "(a functional or Sequential tf.keras.Model) with model.save(path)"
        )
    if not keras_graph.is_graph_network(model):
        raise ConfigError(
            f"{path} holds a subclassed model: quantize_model needs a functional or "
            "Sequential model"
        )
    try:  # one input and output of logits, of the dataset's images when given
        check_model_io(model, path, input_shape, fixed_size=False)
    except ConfigError:
        raise
    except UsageError as error:  # input_shape (the dataset's images) contradicts the model
        raise ConfigError(
            f"{path}: the model's input shape is {tuple(model.input_shape[1:])}, the dataset's "
            f"images are {tuple(input_shape)}; save a model for {tuple(input_shape)} inputs"
        ) from error
    output = tuple(model.output_shape[1:])
    if num_classes is not None and output != (int(num_classes),):
        raise ConfigError(
            f"{path}: the model's output has shape {output}, the dataset has {num_classes} "
            f"classes; its last layer must give one logit per class, shape ({num_classes},)"
        )
    try:
        model, removed = logits_model(model)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
    if removed:
        warnings.warn(
            f"{path}: removed the final softmax ({', '.join(map(repr, removed))}); quantens "
            "trains on logits (the ensemble's predictions are logits, softmax them for "
            "probabilities)",
            SoftmaxRemovedWarning, stacklevel=2,
        )
    return model


def saved_model(
    path: str,
    input_shape=None,
    num_classes: int | None = None,
    bit_widths=defaults.BIT_WIDTHS,
    weights: str | None = None,
    alpha: float | None = None,
    policy=None,
    **options,
) -> tf.keras.Model:
    """`quantize_model` of a user's saved float model (`--model PATH`), with its weights.

    `input_shape` and `num_classes` must match the model's (`load_float_model`);
    the other arguments as in `keras_application`. The saved model carries its
    own weights: `weights` and `alpha` must be None.

    ```python
    import os, tempfile
    import quantens  # before TensorFlow: selects tf-keras
    import tensorflow as tf
    from zoo import create_model

    path = os.path.join(tempfile.mkdtemp(), "cnn.keras")
    tf.keras.Sequential([
        tf.keras.layers.Conv2D(8, 3, activation="relu", input_shape=(8, 8, 1)),
        tf.keras.layers.Conv2D(8, 3, activation="relu"),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(10),
    ]).save(path)
    model = create_model(path, input_shape=(8, 8, 1), num_classes=10, bit_widths=(32, 2))
    ```
    """
    if weights is not None:
        raise ConfigError(f"{path}: a saved model carries its own weights; leave weights out")
    if alpha is not None:
        raise ConfigError(f"{path}: alpha={alpha!r} (--alpha) has no meaning for a saved model")
    quantizer_options = converted_options(path, **options)
    model = load_float_model(path, input_shape, num_classes)
    return quantens.quantize_model(model, bit_widths, policy=policy, input_shape=input_shape,
                                   **quantizer_options)


__all__ = [
    "DOWNLOAD_TIMEOUT",
    "IMAGENET_CLASSES",
    "IMAGENET_FLOAT",
    "KERAS_PREFIX",
    "SoftmaxRemovedWarning",
    "application_builder",
    "builder_for",
    "check_model_file",
    "converted_options",
    "float_application",
    "float_teacher",
    "is_converted",
    "keras_application",
    "load_float_model",
    "mobilenet_v2",
    "resnet50",
    "saved_model",
]


def float_teacher(path: str, input_shape=None, num_classes: int | None = None) -> tf.keras.Model:
    """The float original of a converted saved model, frozen: the teacher of its members.

    `load_float_model(path, ...)` (a final softmax removed, silently: the
    conversion said so already) with `trainable = False`. `train.py --model
    PATH` distils every member from it by default (`--no-float-teacher`).

    ```python
    import os, tempfile
    import quantens  # before TensorFlow: selects tf-keras
    import tensorflow as tf
    from zoo.applications import float_teacher

    path = os.path.join(tempfile.mkdtemp(), "cnn.keras")
    tf.keras.Sequential([
        tf.keras.layers.Conv2D(8, 3, activation="relu", input_shape=(8, 8, 1)),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(10, activation="softmax"),
    ]).save(path)
    teacher = float_teacher(path, (8, 8, 1), 10)
    assert not teacher.trainable and teacher.layers[-1].get_config()["activation"] == "linear"
    ```
    """
    from quantens.run import float_teacher as frozen_logits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SoftmaxRemovedWarning)
        return frozen_logits(load_float_model(path, input_shape, num_classes))
