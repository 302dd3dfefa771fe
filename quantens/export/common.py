"""Helpers every export module shares: TensorFlow on demand, quiet converters, batches.

The bottom of `quantens.export`: it imports no other export module, so any of
them can use it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np

__all__ = ["iter_batches", "quiet_converter_warnings", "tensorflow"]


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


def iter_batches(data, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(x, y or None) numpy batches from a dataset, an array or an (x, y) tuple.

    ```python
    import numpy as np
    from quantens.export.common import iter_batches

    batches = list(iter_batches(np.zeros((5, 2), "float32"), batch_size=2))
    assert [len(x) for x, _ in batches] == [2, 2, 1] and batches[0][1] is None
    ```
    """
    if data is None:
        return
    if isinstance(data, np.ndarray):
        data = (data, None)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        x, y = data
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size], None if y is None else y[start:start + batch_size]
        return
    for item in data:
        if isinstance(item, (tuple, list)):
            x, y = item[0], (item[1] if len(item) > 1 else None)
        else:
            x, y = item, None
        yield np.asarray(x, np.float32), None if y is None else np.asarray(y)
