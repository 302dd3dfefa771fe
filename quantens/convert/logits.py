"""Logits at the output: `logits_model` removes a model's final softmax.

quantens trains on logits (a from-logits cross-entropy): `logits_model` follows
every output of a model back through the layers and TF ops that map logits to
logits, removes a final softmax (a layer, a fused `activation="softmax"`, a
nested model's last layer, a `tf.nn.softmax` op) and refuses an output that
cannot be told to be logits. `quantize_model` calls it and warns with
`SoftmaxRemovedWarning`.
"""

from __future__ import annotations

import tensorflow as tf

from quantens import keras_graph
from quantens.convert.kinds import check_graph_model, describe
from quantens.errors import ConfigError

__all__ = ["SoftmaxRemovedWarning", "logits_model"]


class SoftmaxRemovedWarning(UserWarning):
    """A model's final softmax was removed: quantens trains on logits."""


def _layer_classes(*names: str) -> tuple:
    return tuple(getattr(tf.keras.layers, n) for n in names if hasattr(tf.keras.layers, n))


_AFFINE_OUTPUT = _layer_classes(
    "Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D",
    "SeparableConv1D", "SeparableConv2D", "LocallyConnected1D", "LocallyConnected2D",
    "BatchNormalization", "LayerNormalization")
"""Layers whose output is logits when they have no activation (or a linear one)."""

_IDENTITY_LAYERS = _layer_classes("Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout",
                                  "ActivityRegularization", "Identity")
"""The identity at inference: may stand between a final softmax and the output."""

_RESHAPE_LAYERS = _layer_classes("Flatten", "Reshape")
"""Shape only: between a final softmax and the output while the last (class) axis stays."""

_LOGITS_LAYERS = _layer_classes(
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "ZeroPadding1D", "ZeroPadding2D",
    "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "Permute", "Rescaling",
    "Normalization", "Add", "Subtract", "Average", "Maximum", "Minimum", "Concatenate")
"""Logits in, logits out (linear maps, pooling, selection, shape): may end a model, but
not stand after a softmax (which would then not be the model's last step)."""

_SOFTMAX_OPS = ("nn.softmax", "math.softmax")
_IDENTITY_OPS = ("identity",)
_RESHAPE_OPS = ("reshape", "squeeze", "compat.v1.squeeze", "expand_dims",
                "compat.v1.expand_dims")
_LOGITS_OPS = ("math.reduce_mean", "math.reduce_sum", "math.reduce_max", "math.negative",
               "nn.log_softmax", "math.log_softmax", "nn.bias_add", "concat",
               "__operators__.getitem", "compat.v1.gather", "gather")
_SUM_OPS = ("__operators__.add", "math.add", "math.subtract", "math.add_n")
"""Logits + logits (or + a constant): every tensor argument must be logits."""
_SCALE_OPS = ("math.multiply", "math.truediv", "math.divide")
"""Logits times (or divided by) a constant: logits; two model tensors are not."""

_IDENTITY, _THROUGH, _SOFTMAX, _FUSED_SOFTMAX, _LOGITS = (
    "identity", "through", "softmax", "fused softmax", "logits")
"""What a layer does to logits (`_role`); "" for what cannot give logits."""

_LOGITS_HINT = ("quantens trains on logits: end the model in a layer without activation "
                "(e.g. Dense(classes)) or in a softmax (removed for you)")


def _is_softmax(function) -> bool:
    return function is tf.keras.activations.softmax or function is tf.nn.softmax


def _is_linear(function) -> bool:
    return function is None or function is tf.keras.activations.linear


def _function_name(function) -> str:
    return getattr(function, "__name__", type(function).__name__)


def _op_name(layer) -> str | None:
    """The TF function a `TFOpLambda` layer records (`"nn.softmax"`), else None."""
    symbol = getattr(layer, "symbol", None)
    return symbol if isinstance(symbol, str) and hasattr(layer, "function") else None


def _last_axis(axis, rank) -> bool:
    """Whether a softmax `axis` of a tensor of `rank` is its last axis (the classes)."""
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return False
        axis = axis[0]
    if axis is None:
        return True
    try:
        axis = int(axis)
    except (TypeError, ValueError):
        return False
    return axis == -1 or (rank is not None and axis == rank - 1)


def _keeps_last_axis(node) -> bool:
    before, after = node.keras_inputs[0].shape, tf.nest.flatten(node.outputs)[0].shape
    return (before.rank is not None and after.rank is not None and before.rank > 0
            and after.rank > 0 and before[-1] is not None and before[-1] == after[-1])


def _data_inputs(node) -> list:
    """The model tensors of a TF op's first argument (its data; later ones are options)."""
    ids = {id(x) for x in node.keras_inputs}
    first = node.call_args[0] if node.call_args else None
    return [x for x in tf.nest.flatten(first) if id(x) in ids]


def _what(layer) -> str:
    """A layer as an error names it: its name, class and what it computes."""
    op = _op_name(layer)
    if op is not None:
        return f"{layer.name!r} (the TF op tf.{op})"
    activation = getattr(layer, "activation", None)
    if isinstance(layer, tf.keras.layers.Activation):
        return f"{layer.name!r} (Activation {_function_name(activation)!r})"
    if activation is not None and not _is_linear(activation):
        return (f"{layer.name!r} ({type(layer).__name__} with "
                f"activation={_function_name(activation)!r})")
    return describe(layer)


def _role(layer, node) -> tuple[str, list]:
    """What `layer` (called at `node`) does to logits, and the tensors to follow.

    "" where its output cannot be told to be logits (a sigmoid, a `Lambda`, an input).
    """
    layers = tf.keras.layers
    op = _op_name(layer)
    if op is not None:
        if op in _SOFTMAX_OPS:
            axis = node.call_kwargs.get("axis", node.call_args[1] if len(node.call_args) > 1
                                        else -1)
            if _last_axis(axis, node.keras_inputs[0].shape.rank):
                return _SOFTMAX, _data_inputs(node)
        elif op in _IDENTITY_OPS + _RESHAPE_OPS and len(_data_inputs(node)) == 1:
            keeps = op in _IDENTITY_OPS or _keeps_last_axis(node)
            return (_IDENTITY if keeps else _THROUGH), _data_inputs(node)
        elif op in _LOGITS_OPS:
            return _THROUGH, _data_inputs(node)
        elif op in _SUM_OPS:
            return _THROUGH, list(node.keras_inputs)
        elif op in _SCALE_OPS and len(node.keras_inputs) == 1:
            return _THROUGH, list(node.keras_inputs)
        return "", []
    inputs = list(node.keras_inputs)
    if isinstance(layer, layers.Softmax):
        rank = inputs[0].shape.rank if len(inputs) == 1 else None
        return (_SOFTMAX if _last_axis(layer.axis, rank) else ""), inputs
    if isinstance(layer, layers.Activation):
        if _is_softmax(layer.activation):
            return _SOFTMAX, inputs
        if _is_linear(layer.activation):
            return _IDENTITY, inputs
        return "", inputs
    if isinstance(layer, _AFFINE_OUTPUT):
        activation = getattr(layer, "activation", None)
        if _is_linear(activation):
            return _LOGITS, []
        return (_FUSED_SOFTMAX if _is_softmax(activation) else ""), inputs
    if isinstance(layer, _IDENTITY_LAYERS) and len(inputs) == 1:
        return _IDENTITY, inputs
    if isinstance(layer, _RESHAPE_LAYERS) and len(inputs) == 1:
        return (_IDENTITY if _keeps_last_axis(node) else _THROUGH), inputs
    if isinstance(layer, _LOGITS_LAYERS):
        return _THROUGH, inputs
    return "", inputs


def _call_again(layer, node, replace: dict):
    """Calls `layer` with `node`'s arguments, the tensors in `replace` (by id) replaced."""
    values = {keras_graph.tensor_id(x): replace.get(id(x), x) for x in node.keras_inputs}
    return keras_graph.call_node(layer, node, values)


def _copy_layer(layer, **changes):
    config = {**layer.get_config(), **changes}
    return layer.__class__.from_config(config)


class _LogitsFinder:
    """Follows a model's outputs back to their logits; rebuilds what a softmax removal changes.

    Nothing of the model is changed: a layer that must compute something else (a
    fused softmax made linear, a layer after a removed softmax) is a copy, called on
    the original's tensors.
    """

    def __init__(self, model):
        self.model = model
        self.removed: list[str] = []
        self._seen: dict = {}
        self._inside: list = []  # (nested model, its node): the graphs being walked

    def logits(self, tensor, reader=None):
        """The tensor of logits that replaces `tensor` (itself when nothing changes).

        `reader`: the first layer between `tensor` and the model's output that is not
        the identity for a softmax (None: there is none, a softmax here is final).
        """
        key = (id(tensor), reader is None, id(self._inside[-1][1]) if self._inside else None)
        if key not in self._seen:
            self._seen[key] = self._logits(tensor, reader)
        return self._seen[key]

    def _logits(self, tensor, reader):
        layer, node, tensor_index = keras_graph.producer_call(tensor)
        if isinstance(layer, tf.keras.Model):
            return self._nested(layer, node, tensor_index, reader)
        if isinstance(layer, tf.keras.layers.InputLayer) and self._inside:
            return self._outside(tensor, reader)
        role, inputs = _role(layer, node)
        if role in (_SOFTMAX, _FUSED_SOFTMAX):
            if reader is not None:
                raise ConfigError(
                    f"model {self.model.name!r}: the softmax of {_what(layer)} is not its last "
                    f"step ({_what(reader)} reads the probabilities), so it cannot be removed; "
                    f"{_LOGITS_HINT}"
                )
            self.removed.append(layer.name)
            if role == _SOFTMAX:
                return inputs[0]
            linear = _copy_layer(layer, activation="linear")
            y = _call_again(linear, node, {})
            linear.set_weights(layer.get_weights())
            return tf.nest.flatten(y)[tensor_index]
        if role == _LOGITS:
            return tensor
        if role == _IDENTITY:
            new = self.logits(inputs[0], reader)
            if new is inputs[0]:
                return tensor
            copy = _copy_layer(layer)
            y = _call_again(copy, node, {id(inputs[0]): new})
            if layer.weights:
                copy.set_weights(layer.get_weights())
            return tf.nest.flatten(y)[tensor_index]
        if role == _THROUGH and inputs:
            for x in inputs:  # a softmax below raises: nothing changes
                self.logits(x, layer)
            return tensor
        raise ConfigError(
            f"model {self.model.name!r} does not end in logits: its output comes from "
            f"{_what(layer)}; {_LOGITS_HINT}"
        )

    def _nested(self, inner, node, index: int, reader):
        if not keras_graph.is_graph_network(inner):
            raise ConfigError(
                f"model {self.model.name!r}: its output comes from {describe(inner)}, a "
                "subclassed model whose layers quantens cannot see; build it as a functional "
                "or Sequential model"
            )
        inside = inner.outputs[index]
        self._inside.append((inner, node))
        try:
            new = self.logits(inside, reader)
        finally:
            self._inside.pop()
        if new is inside:
            return tf.nest.flatten(node.outputs)[index]
        outputs = list(inner.outputs)
        outputs[index] = new
        rebuilt = tf.keras.Model(
            keras_graph.nested_inputs(inner),
            tf.nest.pack_sequence_as(keras_graph.nested_outputs(inner), outputs),
            name=inner.name,
        )
        return tf.nest.flatten(_call_again(rebuilt, node, {}))[index]

    def _outside(self, tensor, reader):
        """An input of the nested model being walked: follow what the outer graph feeds it.

        A softmax out there is not removed: the nested model's layers read it.
        """
        inner, node = self._inside.pop()
        try:
            position = [id(x) for x in inner.inputs].index(id(tensor))
            self.logits(tf.nest.flatten(node.keras_inputs)[position], reader or inner)
        finally:
            self._inside.append((inner, node))
        return tensor


def logits_model(model: tf.keras.Model) -> tuple[tf.keras.Model, tuple[str, ...]]:
    """`model` without a final softmax, and the names of the layers whose softmax was removed.

    quantens trains on logits (a from-logits cross-entropy). A model that ends in
    a softmax computes the softmax of logits: the returned model outputs those
    logits. A final softmax is found wherever it is computed: a `Softmax` or
    `Activation("softmax")` layer, the `activation="softmax"` of the last layer,
    the last layer of a nested model (a functional or Sequential model used as a
    layer, at any depth), or a TF op (`tf.nn.softmax(x)`, `tf.keras.activations.softmax`)
    on the last axis, followed by nothing but layers that are the identity for it
    (`Dropout`, `Flatten` or `Reshape` that keep the class axis, a linear
    `Activation`). Without one, the model is returned as it is (the same object)
    with `()`. `model` is not changed: the returned model shares its layers but
    for the ones that change (a fused softmax: a copy of the layer without it).

    Every output must be logits: the output of a layer without activation that
    computes them (`Dense`, a convolution, `EinsumDense`, a normalization), seen
    through layers that map logits to logits (dropout, reshapes, pooling,
    padding, `Add`, `Rescaling`, a nested model's output, `x * constant`, ...).

    Raises:
        ConfigError: an output that cannot be told to be logits (a sigmoid, a relu, a
            `Lambda`, an unknown layer or TF op: the message names the layer), or a
            softmax that is not the last step (pooling after it); a subclassed model.
        UsageError: `model` is not a tf.keras model.

    ```python
    import numpy as np
    import quantens  # before TensorFlow: selects tf-keras
    import tensorflow as tf
    from quantens.convert import logits_model

    inputs = tf.keras.Input((4,))
    logits = tf.keras.layers.Dense(3, name="logits")(inputs)
    model = tf.keras.Model(inputs, tf.nn.softmax(logits))
    plain, removed = logits_model(model)
    x = np.ones((1, 4), "float32")
    np.testing.assert_allclose(tf.nn.softmax(plain(x)), model(x), atol=1e-6)
    assert removed == (model.layers[-1].name,)  # "tf.nn.softmax", the TF op's layer
    assert logits_model(plain) == (plain, ())
    ```
    """
    check_graph_model(model, "logits_model")
    finder = _LogitsFinder(model)
    outputs = [finder.logits(x) for x in model.outputs]
    if not finder.removed:
        return model, ()
    nested_outputs = keras_graph.nested_outputs(model)
    plain = tf.keras.Model(keras_graph.nested_inputs(model),
                           tf.nest.pack_sequence_as(nested_outputs, outputs), name=model.name)
    return plain, tuple(finder.removed)
