"""The one table of layers with quantized kernels: what converts, trains and exports.

Each row (`register_layer`) names a float Keras layer class, the switchable
quantens layer that replaces it (one kernel for every member, see
`quantens.layers`), the switchable layer's kernel quantizer arguments (read
from the switchable class itself: named once, there), and an
export hook that describes the member's layer as export steps
(`quantens.export.steps`). Every reader uses this table:
`quantens.quantize_model` (which layers it converts, into what, and the
"supported: ..." of its errors), `quantens.export` (which layers of a member
it exports, how, and its errors) and the docs.

BatchNormalization (switchable BN), ReLU-like activations (`QuantActivation`)
and layers without weights are handled by the converter and the exporter
themselves: they have no kernel to quantize.

A layer kind is its switchable class (a `quantens.layers.SwitchableKernelLayer`)
and one `register_layer` call, nothing else: the kernel quantizer arguments come
from the class, and `quantens.layers.__all__` (so `quantens.<Name>`) lists every
switchable class `quantens.layers` defines; this module registers them as
`layers.<Name>`, as it does for `Conv1D` (a 2-D convolution on the
(N, 1, W, C) view of its input, in its export hook). `unregister_layer` takes a
kind out again (`tests/test_layer_kind.py` plants one, converts, trains and
exports it).

```python
import quantens  # before TensorFlow: selects tf-keras
import tensorflow as tf
from quantens import registry

entry = registry.layer_entry_for(tf.keras.layers.Conv2D(4, 3))
assert entry.switchable_class is quantens.layers.QuantConv2D
assert entry.kernels == ("kernel_quantizer",) and entry.role == "conv"
assert registry.kernel_layer_names().startswith("Conv2D, DepthwiseConv2D")
assert registry.layer_entry_for(tf.keras.layers.Conv1D(4, 3)).switchable_class is \
    quantens.layers.QuantConv1D
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import numpy as np
import tensorflow as tf

from quantens import layers
from quantens.errors import ExportError, UsageError

if TYPE_CHECKING:
    from quantens.export.steps import Kernel, LinearStep, Step

__all__ = [
    "CONV", "DENSE", "ExportHook", "LayerBuild", "LayerEntry", "kernel_layer_names",
    "layer_entry_for", "member_layer_entry", "register_layer", "registered_layers",
    "unregister_layer",
]

CONV = "conv"
DENSE = "dense"
ROLES = (CONV, DENSE)


class LayerBuild(Protocol):
    """What the export builder offers an export hook while it builds one layer's steps.

    `layer` is the member's layer (a float Keras layer or the larq layer of
    the switchable one's `fixed_layer`); `inputs` the names of the steps it
    reads.
    """

    layer: tf.keras.layers.Layer
    inputs: list[str]

    def kernel(self, attribute: str = "kernel", quantizer: str = "kernel_quantizer",
               depthwise: bool = False) -> Kernel:
        """`layer.<attribute>` through `layer.<quantizer>`: the member's quantized kernel."""

    def linear(self, step_class: type[LinearStep], kernel: Kernel, *, name: str | None = None,
               inputs: list[str] | None = None, act="input_quantizer", bias: bool = True,
               finish: bool = True, **fields) -> LinearStep:
        """A linear step of `kernel` (BN multiplier 1, the layer's bias or zeros).

        `name` and `inputs` default to the layer's; `act` to the layer's input
        quantizer (None: none); `fields` are the step class's own (a
        convolution's `geometry`). `finish`: the step makes the layer's output,
        so the layer's activation, and the BatchNormalization and ReLU that
        only read the layer, are folded into it.
        """


class ExportHook(Protocol):
    """Describes a member's layer as export steps; the last one makes the layer's output.

    A hook may raise `ExportError` for a configuration it cannot export.
    """

    def __call__(self, layer: tf.keras.layers.Layer, build: LayerBuild) -> list[Step]: ...


@dataclasses.dataclass(frozen=True)
class LayerEntry:
    """One supported layer kind with a quantized kernel.

    Arguments:
        float_class: the Keras layer `quantize_model` converts (exactly this
            class, not subclasses).
        switchable_class: the quantens layer it becomes; its `fixed_layer`
            gives the member's layer (see `quantens.layers.SwitchableLayer`).
        kernels: the switchable layer's kernel quantizer arguments.
        export: the export hook (`ExportHook`).
        role: `"conv"` or `"dense"`: what the default precision policy takes
            the layer for (the first convolution and the last dense layer stay
            full precision).
        exact: export only the float class and the member's larq class
            themselves, not their subclasses.
    """

    float_class: type
    switchable_class: type
    kernels: tuple[str, ...]
    export: ExportHook
    role: str = CONV
    exact: bool = True

    @property
    def name(self) -> str:
        return self.float_class.__name__

    @property
    def member_classes(self) -> tuple[type, ...]:
        """The classes a member holds for this kind: the float one, the switchable one's fixed."""
        return (self.float_class, self.switchable_class.fixed_class)

    @property
    def depthwise(self) -> bool:
        """Whether it has a depthwise kernel (held at `depthwise_bits` by the converter)."""
        return "depthwise_quantizer" in self.kernels


_ENTRIES: dict[type, LayerEntry] = {}


def register_layer(float_class: type, switchable_class: type, *, export: ExportHook,
                   kernels: tuple[str, ...] | None = None, role: str = CONV,
                   exact: bool = True, replace: bool = False) -> LayerEntry:
    """Adds a layer kind to the table (see `LayerEntry` for the arguments).

    `kernels` defaults to the switchable class's own list of kernel quantizer
    arguments (its `_QUANTIZER_KEYS`, the one home of that fact); given, it
    must name the same arguments.

    Raises `UsageError` (a ValueError, one line) for a class registered
    already (unless `replace`), a switchable class that is not a subclass of
    the float one or lacks the `SwitchableLayer` protocol, an unknown role,
    `kernels` that is not a sequence of argument names (a bare string is
    refused), or an `export` that is not callable.
    """
    if not (isinstance(float_class, type) and issubclass(float_class, tf.keras.layers.Layer)):
        raise UsageError(f"register_layer: {float_class!r} is not a Keras layer class")
    if not (isinstance(switchable_class, type) and issubclass(switchable_class, float_class)
            and issubclass(switchable_class, layers.SwitchableLayer)
            and hasattr(switchable_class, "fixed_class")):
        raise UsageError(
            f"register_layer: {getattr(switchable_class, '__name__', switchable_class)} must "
            f"subclass {float_class.__name__} and be a quantens switchable layer "
            "(fixed_layer, fixed_weights, fixed_class)"
        )
    own = tuple(getattr(switchable_class, "_QUANTIZER_KEYS", ()) or ())
    if kernels is None:
        kernels = own
    elif isinstance(kernels, (str, bytes)) or not isinstance(kernels, Iterable):
        raise UsageError(
            f"register_layer: kernels must be a sequence of kernel quantizer argument names, "
            f"e.g. ({kernels!r},), got {type(kernels).__name__} {kernels!r}"
        )
    kernels = tuple(kernels)
    if not kernels or not all(isinstance(k, str) and k.isidentifier() for k in kernels):
        raise UsageError("register_layer: kernels must name the kernel quantizer arguments, "
                         f"e.g. ('kernel_quantizer',), got {kernels!r}")
    if own and kernels != own:
        raise UsageError(
            f"register_layer: kernels {kernels!r} differ from {switchable_class.__name__}'s "
            f"kernel quantizer arguments {own!r}: leave kernels out (they come from the class)"
        )
    if not callable(export):
        raise UsageError(f"register_layer: export must be a function (layer, build) -> steps, "
                         f"got {type(export).__name__}")
    if role not in ROLES:
        raise UsageError(f"register_layer: role must be one of {', '.join(ROLES)}, got {role!r}")
    if float_class in _ENTRIES and not replace:
        raise UsageError(f"register_layer: {float_class.__name__} is registered already")
    entry = LayerEntry(float_class, switchable_class, kernels, export, role, exact)
    _ENTRIES[float_class] = entry
    return entry


def unregister_layer(float_class: type) -> LayerEntry:
    """Takes the kind of `float_class` out of the table; returns its entry.

    For a kind registered for a while (a test's, a plug-in's): afterwards
    `quantize_model` refuses `float_class` again and the exporter no longer
    knows its member class. Raises `UsageError` when it is not registered.

    ```python
    import quantens  # before TensorFlow: selects tf-keras
    import larq as lq
    import tensorflow as tf
    from quantens import registry
    from quantens.errors import ExportError
    from quantens.layers import SwitchableKernelLayer

    class QuantConv3D(SwitchableKernelLayer, lq.layers.QuantConv3D):
        fixed_class = lq.layers.QuantConv3D

    def no_export(layer, build):
        raise ExportError(f"{layer.name}: no 3-D convolution in the exporter")

    registry.register_layer(tf.keras.layers.Conv3D, QuantConv3D, export=no_export)
    assert registry.kernel_layer_names().endswith("Conv3D")
    entry = registry.unregister_layer(tf.keras.layers.Conv3D)
    assert entry.switchable_class is QuantConv3D
    assert registry.layer_entry_for(tf.keras.layers.Conv3D(2, 1)) is None
    ```
    """
    if float_class not in _ENTRIES:
        raise UsageError(
            f"unregister_layer: {getattr(float_class, '__name__', float_class)!r} is not a "
            f"registered layer kind; registered: {kernel_layer_names()}"
        )
    return _ENTRIES.pop(float_class)


def registered_layers() -> tuple[LayerEntry, ...]:
    """Every entry, in the order registered."""
    return tuple(_ENTRIES.values())


def layer_entry_for(layer) -> LayerEntry | None:
    """The entry whose float class is exactly `layer`'s class (what the converter converts)."""
    return _ENTRIES.get(type(layer))


def member_layer_entry(layer) -> LayerEntry | None:
    """The entry of a member's layer: the nearest registered float class among its bases.

    The caller checks `exact` (`type(layer) in entry.member_classes`).
    """
    for cls in type(layer).__mro__:
        if cls in _ENTRIES:
            return _ENTRIES[cls]
    return None


def kernel_layer_names() -> str:
    """"Conv2D, DepthwiseConv2D, ...": the registered kinds, for messages and docs."""
    return ", ".join(entry.name for entry in _ENTRIES.values())


# -------------------------------------------------------------- built-in kinds


def _conv2d(layer, build: LayerBuild) -> list:
    from quantens.export.steps import ConvGeometry, ConvStep

    if layer.groups != 1:
        raise ExportError(f"{layer.name}: grouped convolutions are not supported")
    return [build.linear(ConvStep, build.kernel(), geometry=ConvGeometry.of(layer))]


def _depthwise_conv2d(layer, build: LayerBuild) -> list:
    from quantens.export.steps import ConvGeometry, DepthwiseStep

    kernel = build.kernel("depthwise_kernel", "depthwise_quantizer", depthwise=True)
    return [build.linear(DepthwiseStep, kernel, geometry=ConvGeometry.of(layer))]


def _separable_conv2d(layer, build: LayerBuild) -> list:
    """A depthwise step, then a pointwise (1x1) convolution step."""
    from quantens.export.steps import ConvGeometry, ConvStep, DepthwiseStep

    depthwise = build.linear(
        DepthwiseStep, build.kernel("depthwise_kernel", "depthwise_quantizer", depthwise=True),
        name=f"{layer.name}/depthwise", bias=False, finish=False,
        geometry=ConvGeometry.of(layer))
    pointwise = build.linear(
        ConvStep, build.kernel("pointwise_kernel", "pointwise_quantizer"),
        inputs=[depthwise.name], act=None,
        geometry=ConvGeometry(strides=(1, 1), dilations=(1, 1), padding="VALID"))
    return [depthwise, pointwise]


def _dense(layer, build: LayerBuild) -> list:
    from quantens.export.steps import DenseStep

    return [build.linear(DenseStep, build.kernel())]


register_layer(tf.keras.layers.Conv2D, layers.QuantConv2D, export=_conv2d)
register_layer(tf.keras.layers.DepthwiseConv2D, layers.QuantDepthwiseConv2D,
               export=_depthwise_conv2d)
register_layer(tf.keras.layers.SeparableConv2D, layers.QuantSeparableConv2D,
               export=_separable_conv2d)
register_layer(tf.keras.layers.Dense, layers.QuantDense, export=_dense, role=DENSE, exact=False)


def _conv1d(layer, build: LayerBuild) -> list:
    """A 1-D convolution as a 2-D one on the (N, 1, W, C) view of its input."""
    from quantens.export.steps import ConvGeometry, ConvStep, ReshapeStep

    width, channels = layer.input_shape[1:]
    if layer.padding == "causal" or layer.groups != 1 or width is None \
            or layer.data_format != "channels_last":
        raise ExportError(
            f"{layer.name}: Conv1D exports with 'valid' or 'same' padding, one group, "
            "channels last and a fixed input length"
        )
    kernel = build.kernel()  # (k, in, out)
    view = ReshapeStep(name=f"{layer.name}/as_2d", inputs=build.inputs,
                       shape=(1, int(width), int(channels)))
    conv = build.linear(
        ConvStep, kernel.reshaped(1, *np.shape(kernel.values)), name=f"{layer.name}/conv2d",
        inputs=[view.name],
        geometry=ConvGeometry(strides=(1, int(layer.strides[0])),
                              dilations=(1, int(layer.dilation_rate[0])),
                              padding=layer.padding.upper(),
                              pad_value=float(getattr(layer, "pad_values", 0.0))))
    back = ReshapeStep(name=layer.name, inputs=[conv.name],
                       shape=tuple(int(d) for d in layer.output_shape[1:]))
    return [view, conv, back]


register_layer(tf.keras.layers.Conv1D, layers.QuantConv1D, export=_conv1d)
