"""Building zoo models by name: `create_model`, `create_teacher`, a run's flags.

A name is a registered architecture (`zoo.registry`), `keras:NAME` (a
converted `tf.keras.applications` network) or the path of a saved float
Keras model (`zoo.applications`); a pretrained tag as `weights` configures
its architecture (`zoo.pretrained`). `zoo` re-exports everything here.

```python
import zoo

model = zoo.create_model("digits_resnet_e", width=8, bit_widths=(32, 1))
assert model.output_shape == (None, 10)
```
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from quantens import defaults
from quantens.errors import ConfigError, TeacherError, one_line
from zoo import applications, registry
from zoo.flags import builder_kwargs

__all__ = [
    "accepted_arguments",
    "check_arguments",
    "check_flags",
    "create_model",
    "create_model_from_flags",
    "create_teacher",
    "get_builder",
]

# keras.applications families and the input preprocessing their weights expect
_APPLICATION_MODES = {
    "ResNet": "caffe", "VGG": "caffe", "MobileNet": "tf", "Inception": "tf",
    "Xception": "tf", "NASNet": "tf", "DenseNet": "torch",
}


def accepted_arguments(name: str) -> set[str] | None:
    """The keyword arguments the builder of `name` takes (None: any, it does not say).

    ```python
    import zoo

    assert "width" in zoo.accepted_arguments("digits_resnet_e")
    assert "alpha" not in zoo.accepted_arguments("digits_resnet_e")
    assert zoo.accepted_arguments("mobilenet_v2") is None  # options go on to quantize_model
    ```
    """
    builder: Callable | None = get_builder(name)
    accepted: set[str] = set()
    while builder is not None:
        parameters = inspect.signature(builder).parameters.values()
        accepted |= {p.name for p in parameters if p.kind in (
            p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return accepted
        builder = getattr(builder, "forwards_to", None)
    return None


def check_arguments(name: str, arguments) -> None:
    """Raises ConfigError naming the first of `arguments` that the builder of `name` does not take.

    ```python
    import zoo
    from quantens.errors import ConfigError

    try:
        zoo.check_arguments("digits_resnet_e", ["width", "alpha"])
        raise AssertionError("alpha passed")
    except ConfigError as error:
        assert "digits_resnet_e takes no alpha (--alpha)" in str(error)
    ```
    """
    accepted = accepted_arguments(name)
    if accepted is None:
        return
    unknown = [a for a in arguments if a not in accepted]
    if unknown:
        flag = "--" + unknown[0].replace("_", "-")
        raise ConfigError(f"{name} takes no {unknown[0]} ({flag}): leave it out")


def get_builder(name: str) -> Callable:
    """The builder of a model name: a registered one, `keras:NAME` or a saved model's path.

    `keras:NAME` converts the `tf.keras.applications` network NAME, a path
    (`.keras`/`.h5`) a user's saved float model (`zoo.applications`).

    Raises:
        ValueError: an unknown name; for `keras:NAME` and paths a `ConfigError`
            saying what is wrong with the name or the file.

    ```python
    import zoo

    build = zoo.get_builder("keras:ResNet50")
    try:
        zoo.get_builder("missing/model.keras")
    except ValueError as error:
        assert "no such file" in str(error)
    ```
    """
    builder = registry.model_builder(name)
    if builder is not None:
        return builder
    builder = applications.builder_for(name)
    if builder is None:
        raise ValueError(
            f"unknown model {name!r}: choose one of {', '.join(registry.list_models())}, "
            f"{defaults.KERAS_MODEL_PREFIX}NAME (a tf.keras.applications network, e.g. "
            f"{defaults.KERAS_MODEL_PREFIX}MobileNetV2) or the path of a saved float Keras "
            f"model ({', '.join(defaults.MODEL_FILE_SUFFIXES)})"
        )
    return builder


def create_model(name: str, **kwargs):
    """Builds a registered architecture: `create_model("resnet18_e1", num_classes=10)`.

    `name` is a registered architecture (`list_models()`), `keras:NAME` (a
    converted `tf.keras.applications` network) or the path of a saved float
    Keras model (`zoo.applications`). Keyword arguments go to the builder
    (`input_shape`, `num_classes`, `bit_widths`, `weights`, quantizer
    options). A pretrained tag as `weights`
    configures its own architecture (input shape, classes, bit-widths, width,
    quantizers), as in timm; an explicit argument that contradicts the tag is
    a `PretrainedError` naming both values.

    ```python
    import zoo

    model = zoo.create_model("digits_resnet_e", weights="digits_w8")  # the tag's width 8
    try:
        zoo.create_model("digits_resnet_e", weights="digits_w8", width=16)
    except zoo.pretrained.PretrainedError as error:
        assert "width=16" in str(error) and "width=8" in str(error)
    ```
    """
    weights = kwargs.get("weights")
    if isinstance(weights, str) and weights != "pretrained":
        from zoo import pretrained

        if pretrained.is_tag(name, weights):
            kwargs = {**_tag_kwargs(name, weights, kwargs), **kwargs}
    check_arguments(name, kwargs)
    return get_builder(name)(**kwargs)


def _tag_kwargs(name: str, tag: str, given: dict) -> dict:
    """The builder arguments of a tag's architecture; conflicts with `given` are an error."""
    from zoo import pretrained

    config = pretrained.pretrained_config(name, tag)
    wanted = builder_kwargs({**config.flags, "model": name}, config.input_shape,
                             config.num_classes)

    def same(a, b) -> bool:
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return list(a) == list(b)
        return a == b

    for key, value in given.items():
        if key in wanted and not same(value, wanted[key]):
            raise pretrained.PretrainedError(
                f"create_model({name!r}, weights={tag!r}, {key}={value!r}): the tag's "
                f"weights are for {key}={wanted[key]!r}; leave {key} out (the tag sets it) "
                "or build without the tag"
            )
    return wanted


def _application(name: str):
    import tensorflow as tf

    builder = getattr(tf.keras.applications, name, None)
    return builder if callable(builder) and name[:1].isupper() else None


def _keras_application_teacher(builder, name, input_shape, num_classes, weights, mean, std,
                               bgr=False):
    """A keras.applications model fed with quantens' preprocessed images."""
    import tensorflow as tf

    pretrained = weights == "pretrained"
    try:
        base = builder(
            include_top=True, weights="imagenet" if pretrained else None,
            input_shape=tuple(input_shape), classes=int(num_classes),
            classifier_activation=None,
        )
    except ValueError as error:
        raise TeacherError(f"teacher {name}: {one_line(error)}") from error
    except Exception as error:  # urllib/HTTP errors when offline
        raise TeacherError(
            f"cannot download the ImageNet weights of {name} ({type(error).__name__}: "
            f"{one_line(error) if str(error) else 'no network?'}); pass a local "
            "weights file with --teacher-params"
        ) from error
    mode = next((m for prefix, m in _APPLICATION_MODES.items() if name.startswith(prefix)), None)
    inputs = tf.keras.Input(tuple(input_shape))
    raw = inputs * (tf.constant(std) * 255.0) + tf.constant(mean) * 255.0  # back to 0..255
    if bgr:  # inputs in BGR order (caffe): back to RGB
        raw = raw[..., ::-1]
    x = raw if mode is None else tf.keras.applications.imagenet_utils.preprocess_input(
        raw, mode=mode
    )
    return tf.keras.Model(inputs, base(x), name=name)


def create_teacher(
    name: str,
    input_shape,
    num_classes: int,
    weights: str | None = None,
    mean=(0.5,),
    std=(0.5,),
    bgr: bool = False,
):
    """A full-precision teacher returning logits.

    Arguments:
        name: a zoo teacher (`ResNet18_v1`, `cifar_resnet110_v2`, ...; see
            `list_teachers()`) or a `tf.keras.applications` model (`ResNet50`).
        input_shape, num_classes: the dataset's.
        weights: None (random initialisation), `"pretrained"` (the teacher's
            own pretrained source: ImageNet weights of keras.applications), or
            the path of a Keras weights file.
        mean, std: the normalisation of the inputs, (pixels / 255 - mean) / std
            (keras.applications teachers undo it and apply their own
            preprocessing; `quantens.data.preprocessing_mean_std`).
        bgr: the inputs' channels are in BGR order (`caffe` preprocessing).

    ```python
    from zoo import create_teacher

    teacher = create_teacher("cifar_resnet20_v1", (32, 32, 3), 10)
    ```

    Raises:
        TeacherError: unknown name, no pretrained source, unreadable weights.
    """
    import os

    is_file = weights not in (None, "pretrained")
    if is_file and not os.path.isfile(weights):
        raise TeacherError(f"teacher weights {weights}: no such file")
    registered = registry.teacher_builder(name)
    if registered is not None:
        if weights == "pretrained":
            raise TeacherError(
                f"no pretrained weights of {name} can be obtained here (the seed loaded them "
                "from GluonCV); pass a Keras weights file with --teacher-params, or use a "
                "keras.applications teacher such as --teacher ResNet50"
            )
        teacher = registered(input_shape=tuple(input_shape), num_classes=int(num_classes))
    elif _application(name) is not None:
        teacher = _keras_application_teacher(
            _application(name), name, input_shape, num_classes,
            None if is_file else weights, mean, std, bgr,
        )
    else:
        raise TeacherError(
            f"unknown teacher {name!r}: choose one of {', '.join(registry.list_teachers())} or a "
            "tf.keras.applications model (e.g. ResNet50)"
        )
    if is_file:
        try:
            from quantens.results import load_weights

            load_weights(teacher, weights)
        except Exception as error:  # h5py OSError, Keras ValueError on mismatch
            raise TeacherError(
                f"cannot load teacher weights {weights} into {name} ({one_line(error)})"
            ) from error
    return teacher


def create_model_from_flags(flags: dict, input_shape, num_classes: int):
    """Builds the model a `train.py` run describes (its `config.json` flags).

    ```python
    from zoo import create_model_from_flags

    flags = {"model": "digits_resnet_e", "bit_widths": [32, 1], "width": 8}
    model = create_model_from_flags(flags, (8, 8, 1), 10)
    ```
    """
    return create_model(flags["model"], **builder_kwargs(flags, input_shape, num_classes))


def check_flags(flags: dict, input_shape, num_classes: int) -> None:
    """Raises ConfigError when the model of `flags` takes an architecture flag it has no use for.

    What `create_model_from_flags` would refuse, without building anything.
    """
    check_arguments(flags["model"], builder_kwargs(flags, input_shape, num_classes))
