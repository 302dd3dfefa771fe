"""The quantens model zoo: architectures by name, like timm and larq-zoo.

```python
import zoo

print(zoo.list_models("resnet*"))
model = zoo.create_model("digits_resnet_e", bit_widths=(32, 8, 4, 2, 1))
```
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import quantens  # noqa: F401  (selects tf-keras before TensorFlow loads)

_MODELS: dict[str, Callable] = {}


def register_model(builder: Callable) -> Callable:
    """Registers a builder function under its name (a decorator)."""
    _MODELS[builder.__name__] = builder
    return builder


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered architectures matching a shell-style pattern."""
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def get_builder(name: str) -> Callable:
    if name not in _MODELS:
        raise ValueError(
            f"unknown model {name!r}: choose one of {', '.join(list_models())}"
        )
    return _MODELS[name]


def create_model(name: str, **kwargs):
    """Builds a registered architecture: `create_model("resnet18_e1", num_classes=10)`.

    Keyword arguments go to the builder (`input_shape`, `num_classes`,
    `bit_widths`, `weights`, quantizer options).
    """
    return get_builder(name)(**kwargs)


def create_model_from_flags(flags: dict, input_shape, num_classes: int):
    """Builds the model a `train.py` run describes (its `config.json` flags).

    ```python
    from zoo import create_model_from_flags

    flags = {"model": "digits_resnet_e", "bit_widths": [32, 1], "width": 8}
    model = create_model_from_flags(flags, (8, 8, 1), 10)
    ```
    """
    get = flags.get
    kwargs = dict(
        input_shape=tuple(input_shape),
        num_classes=int(num_classes),
        bit_widths=tuple(get("bit_widths", (32, 8, 4, 2, 1))),
        weight_quantization=get("weight_quantization", "dorefa"),
        activation_method=get("activation_method", "round"),
        clip_threshold=get("clip_threshold", 1.3),
        fp_weights=bool(get("fp_weights", False)),
        share_bn=bool(get("share_bn", False)),
        sync_bn=bool(get("sync_bn", False)),
    )
    # flags that are off keep the architecture's own default
    for flag in ("fp_downsample_sc", "pool_downsample_sc"):
        if get(flag):
            kwargs[flag] = True
    if get("initial_layers"):
        kwargs["initial_layers"] = get("initial_layers")
    elif kwargs["input_shape"][0] < 64:
        kwargs["initial_layers"] = "thumbnail"
    if get("width"):
        kwargs["width"] = int(get("width"))
    return create_model(flags["model"], **kwargs)


from zoo import resnet_e  # noqa: E402,F401  (registers the builders)

__all__ = [
    "create_model",
    "create_model_from_flags",
    "get_builder",
    "list_models",
    "register_model",
]
