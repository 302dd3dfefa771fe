"""The quantens model zoo: architectures by name, like timm and larq-zoo.

```python
import zoo

print(zoo.list_models("resnet*"))
model = zoo.create_model("digits_resnet_e", bit_widths=(32, 8, 4, 2, 1))
```

The names live in `zoo.registry` (`register_model`, `register_teacher`),
building by name in `zoo.factory` (`create_model`, `create_teacher`), the
architectures in `zoo.resnet_e`, `zoo.resnet` and `zoo.applications`, the
pretrained tags in `zoo.pretrained`; this package re-exports their public API.
"""

from __future__ import annotations

import quantens  # noqa: F401  (selects tf-keras before TensorFlow loads)
from quantens.errors import TeacherError
from quantens.startup import quiet_native_logs
from zoo.registry import (
    is_model,
    list_models,
    list_teachers,
    model_builder,
    register_model,
    register_teacher,
    teacher_builder,
)

with quiet_native_logs():  # TensorFlow's start-up lines would bury a command's one-line error
    from zoo import applications, resnet, resnet_e  # noqa: F401  (registers the builders)
    from zoo.factory import (
        accepted_arguments,
        check_arguments,
        check_flags,
        create_model,
        create_model_from_flags,
        create_teacher,
        get_builder,
    )
    from zoo.flags import builder_kwargs

_PRETRAINED = ("create_pretrained", "list_pretrained", "load_pretrained", "pretrained_config")


def __getattr__(name: str):
    # zoo.list_pretrained & co., imported on first use (python -m zoo.pretrained stays clean)
    if name in _PRETRAINED:
        from zoo import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


__all__ = [
    "TeacherError",
    "accepted_arguments",
    "builder_kwargs",
    "check_arguments",
    "check_flags",
    "create_model",
    "create_model_from_flags",
    "create_pretrained",
    "create_teacher",
    "get_builder",
    "is_model",
    "list_models",
    "list_pretrained",
    "list_teachers",
    "load_pretrained",
    "model_builder",
    "pretrained_config",
    "register_model",
    "register_teacher",
    "teacher_builder",
]
