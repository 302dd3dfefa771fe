"""BN statistics re-estimated from data: the exact mean and variance of each BN's inputs.

A mixed member (`QuantEnsemble.member(policy)`) combines layers at several
bit-widths; each BN's statistics were estimated in training for a uniform
member, and hold only for the precisions of the layers that fed it then.
`reestimate_batch_norm(model, data)` runs forward passes over `data` (no
gradient, nothing trained) and sets each chosen BN's moving mean and variance
to the mean and variance of its inputs over every example read: cumulative
over the batches (combined exactly, batch by batch), as in "precise BN" (Wu &
Johnson 2021) and AdaBN, not an exponential moving average. The passes run in
training mode: every BN normalises with its batch's statistics, so that what
a BN sees does not depend on the stale statistics of the BNs before it.

```python
import numpy as np
import quantens  # before TensorFlow: selects tf-keras
import tensorflow as tf
from quantens.bn_statistics import reestimate_batch_norm

inputs = tf.keras.Input((3,))
hidden = tf.keras.layers.Dense(4, name="fc")(inputs)
model = tf.keras.Model(inputs, tf.keras.layers.BatchNormalization(name="bn")(hidden))
x = np.random.default_rng(0).normal(size=(300, 3)).astype("float32")
assert reestimate_batch_norm(model, x, batch_size=64) == 300
h = model.get_layer("fc")(x).numpy()
np.testing.assert_allclose(model.get_layer("bn").moving_mean, h.mean(0), rtol=1e-5, atol=1e-6)
np.testing.assert_allclose(model.get_layer("bn").moving_variance, h.var(0), rtol=1e-4)
```
"""

from __future__ import annotations

import math
import numbers
import time

import numpy as np
import tensorflow as tf

from quantens.checks import check_finite_inputs, check_input_shape
from quantens.errors import DataError, QuantensError, UsageError, one_line

__all__ = ["PROGRESS_AFTER_S", "reestimate_batch_norm"]

PROGRESS_AFTER_S = 2.0
"""With `verbose="auto"`, a progress bar appears once a pass has run this long."""


def _chosen(model, layers) -> list:
    """The BatchNormalization layers to re-estimate: those named, or every one of `model`."""
    if layers is None:
        chosen = [layer for layer in model.layers
                  if isinstance(layer, tf.keras.layers.BatchNormalization)]
    else:
        if isinstance(layers, str):
            layers = [layers]
        chosen = []
        for name in layers:
            try:
                layer = model.get_layer(name)
            except ValueError:
                raise UsageError(f"reestimate_batch_norm: model {model.name!r} has no layer "
                                 f"{name!r}: name its BatchNormalization layers") from None
            if not isinstance(layer, tf.keras.layers.BatchNormalization):
                raise UsageError(f"reestimate_batch_norm: layer {name!r} is a "
                                 f"{type(layer).__name__}, not a BatchNormalization")
            chosen.append(layer)
    if not chosen:
        raise UsageError(f"reestimate_batch_norm: model {model.name!r} has no "
                         "BatchNormalization layer to re-estimate")
    return chosen


def _probe(model, bns: list):
    """A traced pass (training mode) returning (mean, variance, count) of each BN's inputs
    per channel, for one batch."""
    tensors = []
    for layer in bns:
        try:
            tensors.append(layer.input)
        except (AttributeError, ValueError) as error:
            raise UsageError(
                f"reestimate_batch_norm needs each BN called once in a functional model; "
                f"{layer.name!r} is not: {one_line(error)}") from None
    probe = tf.keras.Model(model.inputs, tensors, name=f"{model.name}_bn_inputs")
    axes = []
    for layer, tensor in zip(bns, tensors, strict=True):
        rank = len(tensor.shape)
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        channels = {a % rank for a in axis}
        axes.append([a for a in range(rank) if a not in channels])

    @tf.function(reduce_retracing=True, autograph=False)
    def moments(x):
        outputs = probe(x, training=True)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        result = []
        for output, reduce in zip(outputs, axes, strict=True):
            output = tf.cast(output, tf.float32)
            mean, variance = tf.nn.moments(output, reduce)
            count = tf.size(output) // tf.maximum(tf.size(mean), 1)
            result.append((mean, variance, count))
        return result

    return moments


def _batch_count(data, batch_size: int, max_examples: int | None) -> int | None:
    """How many batches a pass reads, where that is known beforehand (else None)."""
    from quantens.export.common import in_memory

    held = in_memory(data)
    if held is not None:
        n = len(held[0]) if max_examples is None else min(len(held[0]), max_examples)
        return math.ceil(n / batch_size)
    if isinstance(data, tf.data.Dataset):
        count = int(data.cardinality())
        return count if count >= 0 else None
    return None


def _checked_batch(x, wanted: tuple, index: int) -> np.ndarray:
    x = np.asarray(x, np.float32)
    got = tuple(x.shape[1:])
    check_input_shape(got, wanted, "BN re-estimation data",
                      "pass inputs of the training split as the model reads them")
    check_finite_inputs(x, "BN re-estimation data", f"inputs of batch {index}",
                        "nothing was changed")
    return x


def _check_arguments(data, batch_size, max_examples, verbose, wanted) -> None:
    for name, value in (("batch_size", batch_size), ("max_examples", max_examples)):
        if value is None and name == "max_examples":
            continue
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise UsageError(f"reestimate_batch_norm: {name} must be a whole number >= 1, "
                             f"got {value!r}")
    if verbose not in (0, 1, "auto") or isinstance(verbose, bool):
        raise UsageError(f"reestimate_batch_norm: verbose must be 0, 1 or 'auto', got "
                         f"{verbose!r}")
    if data is None:
        raise UsageError("reestimate_batch_norm: data is None: pass inputs of the training "
                         "split (an array, an (x, y) tuple or a batched tf.data.Dataset)")
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        spec = spec[0] if isinstance(spec, (tuple, list)) else spec
        shape = getattr(spec, "shape", None)
        if shape is not None and shape.rank is not None and shape.rank == len(wanted):
            raise UsageError(
                "BN re-estimation data: the tf.data.Dataset yields single inputs, not "
                f"batches: pass dataset.batch({batch_size}) (it reads batches, as model.fit "
                "does)")


class _Moments:
    """Per-channel count, mean and sum of squared deviations, combined batch by batch
    (Chan et al.'s pairwise update, in float64: exact up to rounding)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0.0, None, None

    def add(self, mean, variance, count) -> None:
        mean, variance = np.asarray(mean, np.float64), np.asarray(variance, np.float64)
        count = float(count)
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, variance * count
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + variance * count + delta**2 * (self.count * count / total)
        self.count = total

    def variance(self) -> np.ndarray:
        return self.m2 / self.count


def reestimate_batch_norm(model: tf.keras.Model, data, layers=None, *, batch_size: int = 128,
                          max_examples: int | None = None, verbose="auto") -> int:
    """Sets BN moving means and variances to those of their inputs over `data`; returns how
    many inputs were read.

    One pass over `data` in training mode (see the module docstring); nothing
    is trained, and only the chosen BNs' statistics change (a pass in training
    mode would move every BN's: they are put back).

    Arguments:
        model: a functional Keras model (e.g. a mixed member).
        data: inputs of the training split, in the forms `quantens.calibrate`
            takes: an array or tensor, an `(x, y)` (or `(x, y, sample_weight)`)
            tuple of arrays or tensors, or a batched `tf.data.Dataset` of `x`
            or `(x, y)`; every value finite.
        layers: names of the `BatchNormalization` layers to re-estimate
            (default: every one of `model`).
        batch_size: the batch size for data held in memory (a dataset keeps its
            own batches); the BNs normalise with each batch's statistics.
        max_examples: read at most this many inputs (default: all of `data`).
        verbose: 1 shows a progress bar, 0 none, `"auto"` one once a pass
            runs longer than `PROGRESS_AFTER_S` seconds.

    Raises:
        UsageError: (one line) an argument of the wrong kind, a layer that is
            not a BN of the model, a dataset of single inputs.
        DataError: empty data, inputs of another shape than the model's, a
            non-finite input (NaN, inf), or statistics that come out
            non-finite. Whatever it raises (or a Ctrl-C), every weight of the
            model is as it was.
    """
    from quantens.export.common import in_memory, iter_batches

    wanted = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if wanted is None:
        raise UsageError("reestimate_batch_norm: the model has several inputs; it takes "
                         "models with one input")
    _check_arguments(data, batch_size, max_examples, verbose, wanted)
    bns = _chosen(model, layers)
    if isinstance(data, list) and data and in_memory(data[0]) is not None:
        data = tuple(data)  # [x, y] as (x, y)
    moments = _probe(model, bns)
    target = _batch_count(data, int(batch_size), max_examples)
    progress = tf.keras.utils.Progbar(target, unit_name="batch") if verbose == 1 else None
    statistics = model.non_trainable_weights
    saved = tf.keras.backend.batch_get_value(statistics)
    totals = [_Moments() for _ in bns]
    read, started = 0, time.monotonic()
    try:
        for index, (x, _) in enumerate(iter_batches(data, int(batch_size))):
            if max_examples is not None:
                x = x[:max_examples - read]
            x = _checked_batch(x, wanted, index)
            if len(x) == 0:
                continue
            for total, (mean, variance, count) in zip(totals, moments(tf.constant(x)),
                                                      strict=True):
                total.add(mean.numpy(), variance.numpy(), count.numpy())
            read += len(x)
            if progress is None and verbose == "auto" and \
                    time.monotonic() - started > PROGRESS_AFTER_S:
                progress = tf.keras.utils.Progbar(target, unit_name="batch")
                progress.update(index)
            if progress is not None:
                progress.update(index + 1)
            if max_examples is not None and read >= max_examples:
                break
    except QuantensError:
        raise
    except (TypeError, ValueError) as error:
        raise UsageError(
            "BN re-estimation data must be an array or tensor of inputs, an (x, y) tuple or a "
            f"batched tf.data.Dataset, got {type(data).__name__}: {one_line(error)}"
        ) from error
    finally:  # the passes in training mode moved every BN's statistics: put them back
        tf.keras.backend.batch_set_value(list(zip(statistics, saved, strict=True)))
    if read == 0:
        raise DataError("BN re-estimation data is empty: pass inputs of the training split")
    values = []
    for layer, total in zip(bns, totals, strict=True):
        mean, variance = total.mean.astype(np.float32), total.variance().astype(np.float32)
        if not (np.isfinite(mean).all() and np.isfinite(variance).all()):
            raise DataError(
                f"BN re-estimation: the inputs of {layer.name!r} have non-finite statistics "
                "(activations overflow float32: inputs far larger than the training data?); "
                "pass inputs scaled as in training. Nothing was changed")
        values += [(layer.moving_mean, mean), (layer.moving_variance, variance)]
    tf.keras.backend.batch_set_value(values)
    return read
