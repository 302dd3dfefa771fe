"""Calibration: fit every low-bit member to real inputs before (or instead of) training.

A member of a converted float model starts with the original's BN statistics
and with default clip values for its activations. `calibrate(ensemble, data)`
runs a few hundred real inputs through every member below 32 bits and sets

- each quantized activation's clip value of that member (`ClipActivation`'s
  α_b, in `QuantActivation` layers and in layers' `input_quantizer`), chosen
  per member by `choose_clip`: the clip value that minimises the mean squared
  error between the member's k-bit activation and the float activation
  (`method="mse"`, the default) or a high percentile of the inputs
  (`method="percentile"`);
- each member's BN statistics (`SwitchableBatchNormalization`'s branch b):
  the original's (the 32-bit member's) statistics moved by what the member's
  quantization changes in the mean and variance of the BN's inputs (see
  `_set_statistics`): an 8-bit member keeps the original's statistics up to
  its rounding, a member whose kernels changed scale gets its own.

The 32-bit member is not touched: its activations and BN statistics stay the
original's. Members are calibrated one at a time, each in two passes over the
data in training mode (every BN normalises with its batch's statistics, so
that what a layer sees does not depend on stale statistics before it): the
second pass sees the clip values of the first.

```python
import numpy as np
import quantens
import tensorflow as tf

model = tf.keras.Sequential([
    tf.keras.layers.Conv2D(8, 3, input_shape=(8, 8, 1), name="stem"),
    tf.keras.layers.BatchNormalization(name="bn"),
    tf.keras.layers.ReLU(6.0, name="relu"),
    tf.keras.layers.Conv2D(8, 3, name="conv"),
    tf.keras.layers.ReLU(name="relu2"),
    tf.keras.layers.GlobalAveragePooling2D(),
    tf.keras.layers.Dense(10, name="logits"),
])
bits = (32, 8, 2)
ensemble = quantens.QuantEnsemble(quantens.quantize_model(model, bits), bits)
x = np.random.default_rng(0).normal(size=(64, 8, 8, 1)).astype("float32")
clips = quantens.calibrate(ensemble, x)
assert set(clips) == {8, 2} and set(clips[2]) == {"relu", "relu2"}
assert clips[2]["relu"] < clips[8]["relu"] <= 6.0  # fewer levels: a smaller range
```
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from quantens.bits import bits as bits_scope
from quantens.checks import check_finite_inputs, check_input_shape
from quantens.defaults import CALIBRATION_METHODS, FULL_PRECISION
from quantens.errors import ConfigError, DataError, QuantensError, UsageError, one_line
from quantens.quantizers import PACT_MIN_ALPHA, ClipActivation

__all__ = [
    "CALIBRATION_EXAMPLES",
    "CANDIDATES",
    "PASSES",
    "SAMPLES_PER_LAYER",
    "calibrate",
    "check_calibratable",
    "choose_clip",
]

CALIBRATION_EXAMPLES = 512
"""Inputs `calibrate` reads at most (a few hundred are enough: it estimates
per-channel means and variances and the tails of activation distributions)."""

SAMPLES_PER_LAYER = 65536
"""Activation values kept per layer and member (a uniform random subsample)."""

CANDIDATES = 128
"""Clip values `choose_clip` tries between 0 and the largest value, before refining."""

PASSES = 2


def _reference(x: np.ndarray, cap: float | None) -> np.ndarray:
    y = np.maximum(x, 0.0)
    return y if cap is None else np.minimum(y, cap)


def _quantize(x: np.ndarray, alpha: np.ndarray, bits: int) -> np.ndarray:
    """k-bit activations of `x` (n values) for each clip value in `alpha` (m): (m, n)."""
    levels = 2.0**bits - 1.0
    step = alpha[:, None] / levels
    return np.round(np.clip(x[None, :], 0.0, alpha[:, None]) / step) * step


def _squared_errors(x: np.ndarray, target: np.ndarray, alphas: np.ndarray, bits: int):
    errors = np.empty(len(alphas))
    for start in range(0, len(alphas), 16):  # chunks: (16, n) at a time
        chunk = alphas[start:start + 16]
        errors[start:start + 16] = np.mean((_quantize(x, chunk, bits) - target) ** 2, axis=1)
    return errors


def choose_clip(values, bits: int, cap: float | None = None, method: str = "mse",
                percentile: float = 99.99) -> float | None:
    """The clip value α of a `bits`-bit activation for inputs `values`.

    The member computes clip(x, 0, α) on 2^k - 1 steps; the float activation
    it stands for is relu(x), capped at `cap`. `method="mse"` returns the α
    (at most `cap`) that minimises the mean squared error between the two over
    `values` (a grid of `CANDIDATES` values up to the largest activation,
    refined once around the best); `"percentile"` the `percentile`-th
    percentile of the positive activations. None when no value is positive
    (nothing to fit: keep the clip value as it is).

    ```python
    import numpy as np
    from quantens.calibration import choose_clip

    x = np.random.default_rng(0).uniform(0.0, 1.0, 200_000)
    # 1 bit on U[0, 1]: alpha * [x > alpha / 2]; its squared error is minimal at alpha = 2/3
    assert abs(choose_clip(x, 1) - 2 / 3) < 0.01
    assert choose_clip(x, 8, cap=0.5) == 0.5  # never above the cap
    ```
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"unknown calibration method {method!r}: choose one of {', '.join(CALIBRATION_METHODS)}"
        )
    x = np.asarray(values, np.float64).ravel()
    target = _reference(x, cap)
    top = float(target.max(initial=0.0))
    if not top > 0:
        return None
    if method == "percentile":
        alpha = float(np.percentile(target[target > 0], percentile))
        return max(alpha, PACT_MIN_ALPHA)
    alphas = np.linspace(top / CANDIDATES, top, CANDIDATES)
    best = int(np.argmin(_squared_errors(x, target, alphas, bits)))
    step = top / CANDIDATES
    fine = np.linspace(max(alphas[best] - step, step / 16), alphas[best] + step, 33)
    fine = fine[fine <= top]
    errors = _squared_errors(x, target, fine, bits)
    return max(float(fine[int(np.argmin(errors))]), PACT_MIN_ALPHA)


def _clip_quantizer(layer) -> ClipActivation | None:
    """The `ClipActivation` a layer applies to its input (its `quantizer` or `input_quantizer`)."""
    for key in ("quantizer", "input_quantizer"):
        quantizer = getattr(layer, key, None)
        if isinstance(quantizer, ClipActivation):
            return quantizer
    return None


def _probe_input(layer):
    try:
        return layer.input
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"calibrate needs every quantized activation and BN layer called once in the "
            f"model; layer {layer.name!r} is not: {error}"
        ) from None


def check_calibratable(model: tf.keras.Model, bit_widths) -> None:
    """Raises ConfigError unless some activation of `model` has a clip value to calibrate.

    `calibrate` fits the clip values (`ClipActivation`) and BN statistics of a
    converted float model's members (`quantize_model`) before training. A
    model none of whose quantized activations has a clip value for the
    members `bit_widths` (below 32 bits) learned its ranges and BN statistics
    together in training (the zoo's ResNetE): calibrating it would change only
    its trained BN statistics, so it is refused. `train.py --calibration` asks
    the same question.

    ```python
    import quantens
    import tensorflow as tf
    from quantens.calibration import check_calibratable

    model = tf.keras.Sequential([tf.keras.layers.Dense(4, activation="relu", input_shape=(3,)),
                                 tf.keras.layers.Dense(2)])
    check_calibratable(quantens.quantize_model(model, (32, 2), policy={}), (2,))
    ```
    """
    low = [b for b in bit_widths if b != FULL_PRECISION]
    if not low:
        return
    for layer in model.layers:
        quantizer = _clip_quantizer(layer)
        if quantizer is None:
            continue
        for b in low:
            with bits_scope(b):
                if quantizer.precision != FULL_PRECISION:
                    return
    raise ConfigError(
        f"model {model.name!r} has no clip value to calibrate for members "
        f"{' '.join(map(str, low))}: its activations have ranges learned in training (no "
        "ClipActivation follows those members), and calibration would only overwrite the BN "
        "statistics trained with them; calibrate converted float models "
        "(quantens.quantize_model), or leave calibration out"
    )


class _Probes:
    """A model sharing the ensemble's layers that returns the inputs to calibrate on."""

    def __init__(self, model: tf.keras.Model, batch_norm: bool):
        from quantens.layers import SwitchableBatchNormalization

        self.clips = [(layer, q) for layer in model.layers
                      if (q := _clip_quantizer(layer)) is not None]
        self.bns = [layer for layer in model.layers if batch_norm and
                    isinstance(layer, SwitchableBatchNormalization) and not layer.shared]
        tensors = [_probe_input(layer) for layer, _ in self.clips]
        tensors += [_probe_input(layer) for layer in self.bns]
        self.model = tf.keras.Model(model.inputs, tensors or model.outputs,
                                    name=f"{model.name}_calibration")
        self._calls: dict = {}  # bits -> the traced pass (clip values are read as variables)
        # every BN's statistics: a pass in training mode moves them, and it must not
        self.statistics = [w for layer in model.layers if isinstance(
            layer, (SwitchableBatchNormalization, tf.keras.layers.BatchNormalization))
            for w in layer.non_trainable_weights]

    def run(self, batches, bits: int, rng, clips: bool = True) -> tuple[list, list]:
        """(activation samples per clip layer, (sum, sum of squares, count) per BN)."""
        if bits not in self._calls:  # traced inside the scope on its first call
            self._calls[bits] = tf.function(lambda x: self.model(x, training=True),
                                            autograph=False)
        call = self._calls[bits]
        saved = tf.keras.backend.batch_get_value(self.statistics)
        n_clips = len(self.clips)
        per_batch = max(1, SAMPLES_PER_LAYER // max(1, len(batches)))
        samples: list[list] = [[] for _ in self.clips]
        moments: list = [None] * len(self.bns)
        try:
            for batch in batches:
                with bits_scope(bits):
                    outputs = call(tf.constant(batch))
                outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
                for i in range(n_clips if clips else 0):
                    flat = np.asarray(outputs[i]).ravel()
                    samples[i].append(flat[rng.integers(0, flat.size, min(per_batch, flat.size))])
                for j, layer in enumerate(self.bns):
                    moments[j] = _add_moments(moments[j], np.asarray(outputs[n_clips + j]),
                                              layer.branch(bits).axis)
        finally:  # the pass trains no BN: every branch's statistics as they were
            tf.keras.backend.batch_set_value(list(zip(self.statistics, saved, strict=True)))
        return [np.concatenate(s) if s else None for s in samples], moments


def _add_moments(moments, x: np.ndarray, axis) -> tuple:
    axis = [a % x.ndim for a in (axis if isinstance(axis, (list, tuple)) else [axis])]
    reduce = tuple(a for a in range(x.ndim) if a not in axis)
    x = x.astype(np.float64)
    now = (x.sum(axis=reduce), np.square(x).sum(axis=reduce), x.size // np.prod(
        [x.shape[a] for a in axis]))
    if moments is None:
        return now
    return tuple(a + b for a, b in zip(moments, now, strict=True))


def _mean_variance(moments) -> tuple[np.ndarray, np.ndarray]:
    total, squares, count = moments
    mean = total / count
    return mean, np.maximum(squares / count - mean**2, 0.0)


def _set_statistics(layer, bits: int, moments, reference) -> None:
    """Member `bits`'s BN statistics from the moments of its inputs.

    With the 32-bit member's BN and input moments as `reference`, the member
    gets the 32-bit statistics moved by what quantization changed: mean +
    (member's mean - 32-bit mean), variance * (member's variance / 32-bit
    variance). A member that computes what the float model computes keeps the
    original's statistics exactly (they were estimated during training, over
    more data than calibration reads), and a member whose kernels changed
    scale (DoReFa, 1 bit) gets its own. Without a 32-bit member: the moments
    themselves.
    """
    mean, variance = _mean_variance(moments)
    if reference is not None:
        bn_32, moments_32 = reference
        mean_32, variance_32 = _mean_variance(moments_32)
        ratio = np.divide(variance, variance_32, out=np.ones_like(variance),
                          where=variance_32 > 0)
        fresh = variance_32 <= 0  # a dead channel at 32 bits: the member's own moments
        mean = np.where(fresh, mean, bn_32.moving_mean.numpy() + (mean - mean_32))
        variance = np.where(fresh, variance, bn_32.moving_variance.numpy() * ratio)
    mean, variance = mean.astype(np.float32), variance.astype(np.float32)
    if not (np.isfinite(mean).all() and np.isfinite(variance).all()):
        raise DataError(
            f"calibration of member {bits}: the inputs of BN layer {layer.name!r} have "
            "non-finite statistics (activations overflow float32: inputs far larger than the "
            "training data?); pass inputs scaled as in training. Nothing was changed"
        )
    branch = layer.branch(bits)
    branch.moving_mean.assign(mean)
    branch.moving_variance.assign(variance)


def _unbatched_dataset(data, wanted: tuple) -> bool:
    """Whether `data` is a tf.data.Dataset whose elements are single inputs, not batches."""
    if not isinstance(data, tf.data.Dataset):
        return False
    spec = data.element_spec
    spec = spec[0] if isinstance(spec, (tuple, list)) else spec
    shape = getattr(spec, "shape", None)
    return shape is not None and shape.rank is not None and shape.rank == len(wanted)


def _batches(data, max_examples: int, batch_size: int, wanted: tuple) -> list[np.ndarray]:
    """The calibration inputs as float32 batches, checked: the model's shape, finite values.

    `wanted`: the model's input shape without the batch axis (None where any size fits).
    """
    from quantens.export.common import in_memory, iter_batches

    if isinstance(data, list) and data and in_memory(data[0]) is not None:
        data = tuple(data)  # [x, y] as (x, y)
    if _unbatched_dataset(data, wanted):
        raise UsageError(
            "calibration data: the tf.data.Dataset yields single inputs, not batches: pass "
            f"dataset.batch({batch_size}) (calibrate reads batches, as model.fit does)"
        )
    chunks, total, got = [], 0, None
    try:
        for x, _ in iter_batches(data, batch_size):
            x = np.asarray(x, np.float32)
            if got is None:
                got = tuple(x.shape[1:])
            elif tuple(x.shape[1:]) != got:
                raise DataError(f"calibration data has batches of inputs of shape {got} and "
                                f"{tuple(x.shape[1:])}: pass inputs of one shape, the model's")
            chunks.append(x[:max_examples - total])
            total += len(chunks[-1])
            if total >= max_examples:
                break
    except QuantensError:
        raise
    except (TypeError, ValueError) as error:
        raise UsageError(
            "calibration data must be an array or tensor of inputs, an (x, y) tuple or a "
            f"batched tf.data.Dataset, got {type(data).__name__}: {one_line(error)}"
        ) from error
    if got is not None:
        check_input_shape(got, wanted, "calibration data",
                          "pass images of the training split as the model reads them")
    if total == 0:
        raise DataError("calibration data is empty: pass a few hundred inputs of the training split")
    x = np.concatenate(chunks)
    check_finite_inputs(x, "calibration data", f"of its first {len(x)} inputs",
                        "nothing was calibrated")
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


def _checked_arguments(ensemble, bit_widths, method, max_examples, batch_size):
    """`calibrate`'s arguments checked: (the functional model, the members to calibrate)."""
    from quantens.checks import check_bit_widths, missing_members
    from quantens.ensemble import QuantEnsemble

    if isinstance(ensemble, QuantEnsemble):
        model, own = ensemble.model, ensemble.bit_widths
    elif isinstance(ensemble, tf.keras.Model):
        model, own = ensemble, None
    else:
        raise UsageError(
            "calibrate: ensemble must be a QuantEnsemble (or the functional model of one, "
            f"with bit_widths), got {type(ensemble).__name__}"
        )
    if bit_widths is None and own is None:
        raise UsageError(
            f"calibrate: ensemble is a {type(ensemble).__name__}, not a QuantEnsemble: pass "
            "bit_widths, the members to calibrate"
        )
    members = check_bit_widths(own if bit_widths is None else bit_widths, "calibrate")
    if own is not None:
        stray = sorted(set(members) - set(own), reverse=True)
        if stray:
            raise UsageError(
                f"calibrate: bit_widths: {stray} bits are not members ({' '.join(map(str, own))})"
                ": name members of the ensemble, or leave bit_widths out for every one below 32"
            )
    missing = missing_members(model, members)
    if missing:
        raise ConfigError(f"calibrate: bit_widths {' '.join(map(str, members))} do not fit "
                          f"the model {model.name!r}: {missing}")
    if method not in CALIBRATION_METHODS:
        raise UsageError(
            f"calibrate: unknown calibration method {method!r}: choose one of "
            f"{', '.join(CALIBRATION_METHODS)}"
        )
    for name, value in (("max_examples", max_examples), ("batch_size", batch_size)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise UsageError(f"calibrate: {name} must be a whole number >= 1, got {value!r}")
    return model, members


def calibrate(ensemble, data, bit_widths=None, *, method: str = "mse",
              batch_norm: bool = True, max_examples: int = CALIBRATION_EXAMPLES,
              batch_size: int = 128, seed: int = 0, verbose: int = 0
              ) -> dict[int, dict[str, float]]:
    """Sets every low-bit member's activation clip values and BN statistics from `data`.

    See the module docstring. Nothing of the 32-bit member changes, and nothing
    is trained: a converted trained float model calibrated this way has
    members that compute what the original computes up to their rounding.

    Arguments:
        ensemble: a `QuantEnsemble`, or the functional model of one (then
            `bit_widths` names its members).
        data: inputs from the training split: an array or tensor, an `(x, y)`
            (or `(x, y, sample_weight)`) tuple of arrays or tensors, or a
            batched `tf.data.Dataset` of `x` or `(x, y)`; at most
            `max_examples` are read, every one finite.
        bit_widths: the members to calibrate (default: every member below 32 bits).
        method: `"mse"` or `"percentile"` (see `choose_clip`).
        batch_norm: re-estimate each member's BN statistics (switchable BN
            only; a BN shared by all members is left as it is).
        max_examples, batch_size: how many inputs, in batches of how many.
        seed: of the random subsample of activation values.
        verbose: 1 prints a progress bar, one step per member and pass.

    Returns:
        `{bits: {layer name: clip value}}` of every member calibrated.

    Raises:
        UsageError: (one line naming the argument) `ensemble` neither a
            QuantEnsemble nor a Keras model (or a model without `bit_widths`),
            bit-widths that are not members, an unknown method, `max_examples`
            or `batch_size` below 1, data of another kind.
        ConfigError: a model whose switchable layers lack one of the members,
            or with no clip value to calibrate (`check_calibratable`).
        DataError: empty data, inputs of another shape than the model's, a
            non-finite input (NaN, inf), or a member's clip values or BN
            statistics that come out non-finite.

    Whatever it raises (or a Ctrl-C half way), every weight of the model is
    as it was before the call.
    """
    model, members = _checked_arguments(ensemble, bit_widths, method, max_examples, batch_size)
    low = [b for b in members if b != FULL_PRECISION]
    try:
        check_calibratable(model, low)
    except ConfigError as error:
        raise ConfigError(f"calibrate: {error}") from None
    batches = _batches(data, int(max_examples), int(batch_size), tuple(model.input_shape[1:]))
    own = getattr(ensemble, "bit_widths", members)
    probes = _Probes(model, batch_norm)
    weights = model.weights
    before = tf.keras.backend.batch_get_value(weights)
    try:
        return _calibrate_members(probes, batches, low, own, method, seed, verbose)
    except BaseException:  # an error or Ctrl-C half way: every member as it was
        tf.keras.backend.batch_set_value(list(zip(weights, before, strict=True)))
        raise


def _calibrate_members(probes: _Probes, batches, low, own, method: str, seed: int,
                       verbose: int) -> dict[int, dict[str, float]]:
    """`calibrate`'s passes over `batches` for the members `low`, each value checked
    (finite) before it is written."""
    rng = np.random.default_rng(seed)
    reference = None  # the 32-bit member's BN inputs: what each member's shift is measured from
    if probes.bns and FULL_PRECISION in own:
        reference = probes.run(batches, FULL_PRECISION, rng, clips=False)[1]
    progress = tf.keras.utils.Progbar(len(low) * PASSES, verbose=verbose,
                                      unit_name="pass") if verbose else None
    done: set[int] = set()  # clip variables set already (a fixed precision shared by members)
    result: dict[int, dict[str, float]] = {}
    for b in low:
        result[b] = {}
        for _ in range(PASSES):
            samples, moments = probes.run(batches, b, rng)
            for (layer, quantizer), values in zip(probes.clips, samples, strict=True):
                with bits_scope(b):
                    active = quantizer.precision
                if active == FULL_PRECISION:
                    continue
                variable = quantizer.clip_variable(b)
                if id(variable) in done:
                    continue
                if values is not None and not np.isfinite(values).all():
                    raise DataError(
                        f"calibration of member {b}: the inputs of {layer.name!r} are not "
                        "finite (activations overflow float32: inputs far larger than the "
                        "training data?); pass inputs scaled as in training. Nothing was "
                        "changed"
                    )
                alpha = choose_clip(values, active, quantizer.max_value, method)
                if alpha is not None:
                    variable.assign(alpha)
                result[b][layer.name] = float(variable.numpy())
            for j, layer in enumerate(probes.bns):
                _set_statistics(layer, b, moments[j], None if reference is None else
                                (layer.branch(FULL_PRECISION), reference[j]))
            if progress is not None:
                progress.add(1)
        done.update(id(q.clip_variable(b)) for _, q in probes.clips
                    if q.bits is not None and q.bits != FULL_PRECISION)
    return result
