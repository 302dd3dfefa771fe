"""The zoo's registry: architecture and teacher builders by name, like timm's.

A builder is a function that returns a Keras model; the decorators below file
it under its `__name__`. Registering a name twice warns (a `UserWarning`
naming both builders) and keeps the later one. Building by name, with the
`keras:NAME` and saved-model forms and pretrained tags, is `zoo.factory`'s.

```python
import warnings

import zoo
from zoo.registry import list_models, register_model


@register_model
def tiny_mlp(input_shape=(4,), num_classes: int = 3, **kwargs):
    import tensorflow as tf

    inputs = tf.keras.Input(input_shape)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(num_classes)(inputs))


assert "tiny_mlp" in list_models("tiny_*")
assert zoo.create_model("tiny_mlp").output_shape == (None, 3)


def another_tiny_mlp(**kwargs):
    return tiny_mlp(**kwargs)


another_tiny_mlp.__name__ = "tiny_mlp"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    register_model(another_tiny_mlp)  # the same name again: a UserWarning, the later one wins
assert "'tiny_mlp' is registered twice" in str(caught[0].message)
```
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable

__all__ = [
    "is_model",
    "list_models",
    "list_teachers",
    "model_builder",
    "register_model",
    "register_teacher",
    "teacher_builder",
]

_MODELS: dict[str, Callable] = {}
_TEACHERS: dict[str, Callable] = {}


def _place(builder: Callable) -> str:
    """Where a builder is defined: `module.name (file:line)`."""
    where = f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__name__', builder)}"
    code = getattr(builder, "__code__", None)
    return f"{where} ({code.co_filename}:{code.co_firstlineno})" if code else where


def _register(table: dict[str, Callable], kind: str, builder: Callable) -> Callable:
    name = builder.__name__
    previous = table.get(name)
    if previous is not None and previous is not builder:  # the same function again is no news
        warnings.warn(
            f"zoo {kind} {name!r} is registered twice: {_place(previous)} is replaced by "
            f"{_place(builder)}; give one of them another name",
            UserWarning, stacklevel=3,
        )
    table[name] = builder
    return builder


def register_model(builder: Callable | None = None, *, forwards_to: Callable | None = None):
    """Registers an architecture builder under its name (a decorator, with or without arguments).

    `forwards_to`: the function a builder passes its `**kwargs` to, so that
    `zoo.create_model` can name an argument no builder along the way takes
    (`zoo.accepted_arguments`) instead of failing with Python's keyword error.

    A name that is already registered is replaced, with a `UserWarning`
    naming both builders.
    """
    def register(builder: Callable) -> Callable:
        if forwards_to is not None:
            builder.forwards_to = forwards_to
        return _register(_MODELS, "model", builder)

    return register if builder is None else register(builder)


def register_teacher(builder: Callable) -> Callable:
    """Registers a full-precision teacher builder under its name (a decorator).

    A name that is already registered is replaced, with a `UserWarning`.
    """
    return _register(_TEACHERS, "teacher", builder)


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered architectures matching a shell-style pattern."""
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def list_teachers(pattern: str = "*") -> list[str]:
    """Registered teachers matching a pattern (`zoo.create_teacher` takes keras.applications
    names too)."""
    return sorted(name for name in _TEACHERS if fnmatch.fnmatch(name, pattern))


def is_model(name: str) -> bool:
    """Whether `name` is a registered architecture."""
    return name in _MODELS


def model_builder(name: str) -> Callable | None:
    """The registered builder of architecture `name`, None if there is none."""
    return _MODELS.get(name)


def teacher_builder(name: str) -> Callable | None:
    """The registered builder of teacher `name`, None if there is none."""
    return _TEACHERS.get(name)
