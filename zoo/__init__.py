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


from zoo import resnet_e  # noqa: E402,F401  (registers the builders)

__all__ = ["create_model", "get_builder", "list_models", "register_model"]
