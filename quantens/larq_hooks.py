"""Every use of larq's private layer internals, each behind one public name.

A switchable layer (`quantens.layers`) keeps ONE kernel variable for every
member: larq wraps each kernel in a `QuantizedVariable` when the layer creates
it, and quantens needs a wrapper whose precision follows the active bit-width.
larq offers no public way to choose that wrapper, nor to tell its layers and
variables apart, so the private parts of larq (and of tf-keras' variable
creation, which larq overrides) used for them live here and nowhere else
(`tests/test_imports.py` checks it); each name says why no public path
serves. A larq upgrade that renames one breaks this module's tests, not the
switchable layers silently. (`quantens.keras_graph` does the same for
tf-keras' functional graph.)

```python
import quantens  # before TensorFlow: selects tf-keras
import larq as lq
import numpy as np
from quantens import larq_hooks

class Tagged(larq_hooks.QuantizedVariable):
    '''larq's variable under another class: what this layer's kernels become.'''

class TaggedDense(larq_hooks.KernelWrapping, lq.layers.QuantDense):
    def quantized_variable_class(self, quantizer):
        return Tagged

layer = TaggedDense(2, kernel_quantizer=lq.quantizers.DoReFa(k_bit=2, mode="weights"))
layer.build((None, 3))
assert type(layer.kernel) is Tagged and larq_hooks.is_larq_layer(layer)
with lq.context.quantized_scope(True):  # read through its quantizer: 2-bit DoReFa
    assert set(np.round(np.abs(layer.kernel.numpy()) * 3).ravel()) <= {1.0, 3.0}
plain = lq.layers.QuantDense(2, kernel_quantizer=lq.quantizers.DoReFa(k_bit=2, mode="weights"))
plain.build((None, 3))
assert type(plain.kernel) is larq_hooks.QuantizedVariable  # larq's own, unchanged
```
"""

from __future__ import annotations

from larq.layers_base import BaseLayer
from larq.quantized_variable import QuantizedVariable

__all__ = ["LARQ_LAYER_LOGGER", "KernelWrapping", "QuantizedVariable", "is_larq_layer"]

# `QuantizedVariable` (imported above) is larq's kernel wrapper: a variable read
# through its quantizer inside `larq.context.quantized_scope(True)`, whose
# `precision` `lq.models.summary` reports. Private: `larq.quantized_variable` is
# not among larq's public modules (`larq.__all__`), yet it is the only class
# larq's layers, optimizers and summary recognise as a quantized kernel. Its
# `__init__` assigns `precision`: a subclass that derives it (a property)
# needs a setter that ignores that assignment
# (`quantens.layers.SwitchableQuantizedVariable`).

LARQ_LAYER_LOGGER = "larq.layers_base"
"""The logger larq's layers warn on ("binary kernel without constraint ...").

Private: named after larq's internal module `larq.layers_base`; larq has no
option to silence that warning, only its logger's level.
"""


def is_larq_layer(layer) -> bool:
    """Whether `layer` is one of larq's quantized layers (`lq.layers.QuantConv2D`, ...).

    Private: larq's quantized layers share only `larq.layers_base.BaseLayer`,
    which larq does not export; listing the public `lq.layers.Quant*`
    classes one by one would let a new larq layer slip through.
    """
    return isinstance(layer, BaseLayer)


class KernelWrapping:
    """Mixin that lets a larq layer choose the class of its quantized kernel variables.

    Put it before the larq layer in the bases (`class L(KernelWrapping,
    lq.layers.QuantDense)`). Each variable larq would quantize (a kernel, a
    depthwise or pointwise kernel) is created as
    `self.quantized_variable_class(quantizer).from_variable(variable,
    quantizer)`, `quantizer` being the one larq gives that variable; the
    default class is larq's own `QuantizedVariable`, so the layer is then
    larq's, unchanged.

    Private, twice: larq wraps kernels by overriding tf-keras'
    `_add_variable_with_custom_getter` (the hook through which `add_weight`
    creates every variable of a layer) in `BaseLayer`, with no argument
    that chooses the wrapper, and asks the layer's `_get_quantizer(name)`
    which quantizer guards variable `name` (the only record of it:
    `kernel` -> `kernel_quantizer`, `depthwise_kernel` ->
    `depthwise_quantizer`, ...). This mixin overrides the same hook, and
    calls it past larq's `BaseLayer` (`super(BaseLayer, self)`), which would
    otherwise wrap the variable a second time.
    """

    def quantized_variable_class(self, quantizer) -> type:
        """The class (a `QuantizedVariable`) of a kernel variable that `quantizer` guards."""
        return QuantizedVariable

    def _add_variable_with_custom_getter(self, name: str, **kwargs):
        quantizer = self._get_quantizer(name)
        if quantizer is None:  # not a quantized variable (a bias, ...)
            return super()._add_variable_with_custom_getter(name, **kwargs)
        wrapper = self.quantized_variable_class(quantizer)
        old_getter = kwargs.pop("getter")

        def getter(*args, **kwargs):
            return wrapper.from_variable(old_getter(*args, **kwargs), quantizer)

        return super(BaseLayer, self)._add_variable_with_custom_getter(
            name, getter=getter, **kwargs
        )
