"""Helpers every export module shares: TensorFlow on demand, quiet converters, batches.

The bottom of `quantens.export`: it imports no other export module, so any of
them can use it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np

__all__ = ["in_memory", "iter_batches", "quiet_converter_warnings", "quiet_interpreter_deprecation",
           "tensorflow"]


def tensorflow():
    """The `tensorflow` module, imported on first use (after `quantens` chose tf-keras)."""
    import tensorflow as tf

    return tf


@contextlib.contextmanager
def quiet_converter_warnings():
    """Silences the TFLite converter's "Statistics for quantized inputs" warnings.

    The int8 files carry their ranges in fake-quant ops, so the converter's
    advice to give input statistics does not apply.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        yield


# the UserWarning `tf.lite.Interpreter.__init__` gives on every interpreter it
# creates (TensorFlow >= 2.18): four lines that begin with this, indented
_INTERPRETER_DEPRECATION = r"\s*Warning: tf\.lite\.Interpreter is deprecated"


@contextlib.contextmanager
def quiet_interpreter_deprecation():
    """Silences `tf.lite.Interpreter`'s "deprecated, use LiteRT" warning, and only it.

    TensorFlow gives it with `warnings.warn` each time an interpreter is
    created; quantens creates one only where LiteRT (`ai_edge_litert`) is not
    installed (`quantens.export.runtime.create_interpreter`), so the advice
    is known. Other warnings pass as before.

    ```python
    import warnings
    from quantens.export.common import quiet_interpreter_deprecation

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_interpreter_deprecation():
            warnings.warn("    Warning: tf.lite.Interpreter is deprecated and is scheduled")
            warnings.warn("something else")
    assert [str(w.message) for w in caught] == ["something else"]
    ```
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_INTERPRETER_DEPRECATION, category=UserWarning)
        yield


def _array(value) -> np.ndarray | None:
    """`value` as a numpy array when it is one or a tensor (anything with `.numpy()`), else None."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "numpy") and hasattr(value, "shape") and hasattr(value, "dtype"):
        return np.asarray(value.numpy())
    return None


def in_memory(data) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(x, y or None) of data held in memory, or None for a dataset or another iterable.

    In memory: an array or a tensor of inputs; an `(x, y)` or `(x, y,
    sample_weight)` tuple of arrays or tensors, as `model.fit` takes
    them (sample weights are not read).

    ```python
    import numpy as np
    from quantens.export.common import in_memory

    x, y = in_memory((np.zeros((3, 2)), np.arange(3)))
    assert x.shape == (3, 2) and y.tolist() == [0, 1, 2]
    assert in_memory(iter([])) is None
    ```
    """
    x = _array(data)
    if x is not None:
        return x, None
    if isinstance(data, tuple) and 1 <= len(data) <= 3:
        arrays = [_array(item) for item in data]
        if arrays[0] is not None and all(a is not None for a in arrays[1:2]):
            return arrays[0], arrays[1] if len(arrays) > 1 else None
    return None


def iter_batches(data, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(x, y or None) numpy batches from a dataset, an array or tensor, or an (x, y) tuple.

    Arrays and tensors held in memory (see `in_memory`) are cut into batches of
    `batch_size`; a batched `tf.data.Dataset` (or any iterable of batches)
    gives its own batches, `(x, y)` or `x` alone.

    ```python
    import numpy as np
    from quantens.export.common import iter_batches

    batches = list(iter_batches(np.zeros((5, 2), "float32"), batch_size=2))
    assert [len(x) for x, _ in batches] == [2, 2, 1] and batches[0][1] is None
    ```
    """
    if data is None:
        return
    held = in_memory(data)
    if held is not None:
        x, y = held
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size], None if y is None else y[start:start + batch_size]
        return
    for item in data:
        if isinstance(item, (tuple, list)):
            x, y = item[0], (item[1] if len(item) > 1 else None)
        else:
            x, y = item, None
        yield np.asarray(x, np.float32), None if y is None else np.asarray(y)
