"""A `train.py` run's architecture flags (its config.json) as a zoo builder's arguments.

Below the factory and the pretrained registry, which both need it: the
factory builds a run's model from its flags, and a pretrained tag records
the flags of the run it comes from (`zoo.pretrained` builds the tag's
architecture from them to check a model against it).

```python
from zoo.flags import builder_kwargs

assert builder_kwargs({"model": "digits_resnet_e"}, (8, 8, 1), 10)["num_classes"] == 10
```
"""

from __future__ import annotations

from quantens import defaults
from zoo import applications

__all__ = ["builder_kwargs"]


def builder_kwargs(flags: dict, input_shape, num_classes: int) -> dict:
    """The builder arguments that `train.py` flags (a config.json) stand for.

    ```python
    from zoo.flags import builder_kwargs

    kwargs = builder_kwargs({"model": "digits_resnet_e", "width": 8}, (8, 8, 1), 10)
    assert kwargs["width"] == 8 and kwargs["initial_layers"] == "thumbnail"
    ```
    """
    flags = {**defaults.ARCHITECTURE_DEFAULTS, **flags}
    get = flags.get
    kwargs = dict(
        input_shape=tuple(input_shape),
        num_classes=int(num_classes),
        bit_widths=tuple(get("bit_widths")),
        activation_method=get("activation_method"),
        clip_threshold=get("clip_threshold"),
        fp_weights=bool(get("fp_weights")),
        share_bn=bool(get("share_bn")),
        sync_bn=bool(get("sync_bn", False)),
    )
    if get("weight_quantization") is not None:  # None: the architecture's own default
        kwargs["weight_quantization"] = get("weight_quantization")
    # flags that are off keep the architecture's own default
    for flag in ("fp_downsample_sc", "pool_downsample_sc"):
        if get(flag):
            kwargs[flag] = True
    if get("initial_layers"):
        kwargs["initial_layers"] = get("initial_layers")
    elif kwargs["input_shape"][0] < 64 and not applications.is_converted(get("model")):
        kwargs["initial_layers"] = "thumbnail"  # ResNetE's stem for small images
    if get("width"):
        kwargs["width"] = int(get("width"))
    if get("alpha") is not None:
        kwargs["alpha"] = float(get("alpha"))
    return kwargs
