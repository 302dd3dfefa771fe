"""Optimizers and learning-rate schedules of the seed's flags.

`make_optimizer` gives the seed's `--optimizer {radam,adam,sgd,nag}`;
`RAdam` is the rectified Adam of Liu et al. (2019), which tf-keras lacks.
`make_schedule` gives `--lr-mode {step,cosine,poly,constant}` with
`--lr-steps`, `--lr-factor` and `--warmup-epochs`, as Keras
`LearningRateSchedule`s counted in optimizer steps.

```python
import quantens
from quantens.optimizers import make_optimizer, make_schedule

schedule = make_schedule("cosine", 0.01, epochs=150, steps_per_epoch=391, warmup_epochs=5)
optimizer = make_optimizer("radam", schedule)
```

No optimizer here applies weight decay: `--wd` is an L2 term of the loss on
the full-precision variables only (BMXNet sets `wd_mult=0` on quantized
kernels), added by the ensemble.

Schedules follow MXNet's `lr_scheduler` module, which counts updates from 1:
`schedule(step)` is the rate of the update that takes the optimizer from
`step` to `step + 1` updates done (Keras passes `optimizer.iterations`), and
equals MXNet's `scheduler(step + 1)`. So a warmup from 0 never spends an update
at rate 0, its last update is at the full rate, a step decay at epoch e applies
from the first update of epoch e (0-based), and cosine and poly reach
`final_lr` at the last update of training.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import tensorflow as tf

__all__ = [
    "LR_MODES",
    "OPTIMIZERS",
    "ConstantSchedule",
    "CosineSchedule",
    "PolySchedule",
    "RAdam",
    "StepSchedule",
    "make_optimizer",
    "make_schedule",
]

OPTIMIZERS = ("radam", "adam", "sgd", "nag")
"""The names `make_optimizer` accepts (the seed's `--optimizer` choices)."""

LR_MODES = ("step", "cosine", "poly", "constant")
"""The modes `make_schedule` accepts (the seed's `--lr-mode` choices)."""

_Schedule = tf.keras.optimizers.schedules.LearningRateSchedule


def _real(value: object) -> bool:
    """A finite real number (not a bool)."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _increasing(values: Sequence[float]) -> bool:
    """Strictly increasing (an empty or one-element list is)."""
    return all(a < b for a, b in zip(values[:-1], values[1:], strict=True))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# --------------------------------------------------------------------------- RAdam


@tf.keras.utils.register_keras_serializable(package="quantens")
class RAdam(tf.keras.optimizers.Optimizer):
    r"""Rectified Adam (Liu et al., 2019, "On the Variance of the Adaptive
    Learning Rate and Beyond", Algorithm 2).

    With t the 1-based step, g the gradient and α the learning rate:

    ```
    m_t = β1 m_{t-1} + (1 - β1) g          m̂_t = m_t / (1 - β1^t)
    v_t = β2 v_{t-1} + (1 - β2) g²
    ρ∞  = 2 / (1 - β2) - 1                  ρ_t = ρ∞ - 2 t β2^t / (1 - β2^t)
    if ρ_t > rho_threshold:                 (the variance of the adaptive rate is tractable)
        r_t = sqrt((ρ_t - 4)(ρ_t - 2) ρ∞ / ((ρ∞ - 4)(ρ∞ - 2) ρ_t))
        l_t = sqrt(1 - β2^t) / (sqrt(v_t) + ε)
        θ_t = θ_{t-1} - α r_t m̂_t l_t
    else:
        θ_t = θ_{t-1} - α m̂_t                (momentum SGD, no adaptive rate)
    ```

    ε is added to the square root of the *uncorrected* v_t, as in the
    authors' code and in tf-keras `Adam` ("epsilon hat"); the paper's
    Algorithm 2 has no ε. With β2 = 0.999 the first four steps are un-adapted
    (ρ_1..ρ_4 ≤ 4) and the rectified update starts at step 5.

    ```python
    import quantens
    import tensorflow as tf
    from quantens.optimizers import RAdam

    w = tf.Variable([1.0, -2.0])
    optimizer = RAdam(learning_rate=0.1)
    for _ in range(10):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(w**2)
        optimizer.apply_gradients([(tape.gradient(loss, w), w)])
    ```

    Args:
        learning_rate: a float, or a
            `tf.keras.optimizers.schedules.LearningRateSchedule` called with the
            number of updates done. Defaults to 0.001.
        beta_1: decay of the first moment, in [0, 1). Defaults to 0.9.
        beta_2: decay of the second moment, in (0, 1). Defaults to 0.999.
        epsilon: added to sqrt(v_t) in the rectified update. Defaults to 1e-8
            (the authors' default; tf-keras `Adam` uses 1e-7).
        rho_threshold: the rectified update is used where ρ_t > rho_threshold.
            Defaults to 4, the paper's threshold (the authors' code and
            TensorFlow Addons use 5); at least 4, where r_t is real.
        weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
        ema_momentum, ema_overwrite_frequency, jit_compile, name: as in
            `tf.keras.optimizers.Optimizer`. quantens applies `--wd` in the loss,
            so `weight_decay` defaults to None.

    The per-step scalars (β^t, ρ_t, r_t, the step size) are computed in float64
    from the Python floats β1, β2 whatever the variables' dtype: in float32,
    ρ_t = ρ∞ - (a number close to ρ∞) keeps only about four significant digits
    in the first steps, and 1 - β2 computed from a float32 β2 about five.
    """

    def __init__(
        self,
        learning_rate: float | _Schedule = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        rho_threshold: float = 4.0,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        jit_compile: bool = True,
        name: str = "RAdam",
        **kwargs,
    ) -> None:
        _require(
            _real(beta_1) and 0.0 <= beta_1 < 1.0, f"RAdam: beta_1 must be in [0, 1), got {beta_1!r}"
        )
        _require(
            _real(beta_2) and 0.0 < beta_2 < 1.0, f"RAdam: beta_2 must be in (0, 1), got {beta_2!r}"
        )
        _require(_real(epsilon) and epsilon >= 0, f"RAdam: epsilon must be >= 0, got {epsilon!r}")
        _require(
            _real(rho_threshold) and rho_threshold >= 4,
            f"RAdam: rho_threshold must be >= 4 (r_t is not real below 4), got {rho_threshold!r}",
        )
        super().__init__(
            name=name,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            jit_compile=jit_compile,
            **kwargs,
        )
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.rho_threshold = float(rho_threshold)

    def build(self, var_list: list[tf.Variable]) -> None:
        """Creates the moment slots `m` and `v` of every variable."""
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self._built = True
        self._momentums = []
        self._velocities = []
        for var in var_list:
            self._momentums.append(
                self.add_variable_from_reference(model_variable=var, variable_name="m")
            )
            self._velocities.append(
                self.add_variable_from_reference(model_variable=var, variable_name="v")
            )

    def _step_coefficients(self) -> tuple[tf.Tensor, tf.Tensor]:
        """(rectified, coefficient) of this step, in float64.

        rectified: whether ρ_t > rho_threshold; coefficient: α r_t sqrt(1 -
        β2^t) / (1 - β1^t) where rectified, else α / (1 - β1^t).
        """
        f64 = tf.float64
        t = tf.cast(self.iterations + 1, f64)
        lr = tf.cast(self.learning_rate, f64)
        beta_1_power = tf.pow(tf.constant(self.beta_1, f64), t)
        beta_2_power = tf.pow(tf.constant(self.beta_2, f64), t)
        rho_inf = 2.0 / (1.0 - self.beta_2) - 1.0  # a Python float
        rho_t = rho_inf - 2.0 * t * beta_2_power / (1.0 - beta_2_power)
        rectified = rho_t > self.rho_threshold
        # r_t² is only used where ρ_t > threshold >= 4, where it is positive;
        # elsewhere keep it finite (ρ∞ <= 4 when β2 <= 0.6: never rectified).
        r_squared = tf.math.divide_no_nan(
            (rho_t - 4.0) * (rho_t - 2.0) * rho_inf,
            (rho_inf - 4.0) * (rho_inf - 2.0) * rho_t,
        )
        r_t = tf.sqrt(tf.maximum(r_squared, 0.0))
        step_size = lr / (1.0 - beta_1_power)
        coefficient = tf.where(
            rectified, step_size * r_t * tf.sqrt(1.0 - beta_2_power), step_size
        )
        return rectified, coefficient

    def update_step(self, gradient: tf.Tensor | tf.IndexedSlices, variable: tf.Variable) -> None:
        """Applies one RAdam update of `variable` with `gradient`."""
        dtype = variable.dtype
        index = self._index_dict[self._var_key(variable)]
        m = self._momentums[index]
        v = self._velocities[index]
        one_minus_beta_1 = tf.constant(1.0 - self.beta_1, dtype)
        one_minus_beta_2 = tf.constant(1.0 - self.beta_2, dtype)

        if isinstance(gradient, tf.IndexedSlices):
            # Sparse gradients: decay the whole moments, add the given rows
            # (the same result as the dense update, like tf-keras Adam).
            m.assign_add(-m * one_minus_beta_1)
            m.scatter_add(tf.IndexedSlices(gradient.values * one_minus_beta_1, gradient.indices))
            v.assign_add(-v * one_minus_beta_2)
            v.scatter_add(
                tf.IndexedSlices(tf.square(gradient.values) * one_minus_beta_2, gradient.indices)
            )
        else:
            m.assign_add((gradient - m) * one_minus_beta_1)
            v.assign_add((tf.square(gradient) - v) * one_minus_beta_2)

        rectified, coefficient = self._step_coefficients()
        denominator = tf.where(
            rectified, tf.sqrt(v) + tf.constant(self.epsilon, dtype), tf.ones_like(v)
        )
        variable.assign_sub(m * tf.cast(coefficient, dtype) / denominator)

    def get_config(self) -> dict:
        """The constructor arguments (the learning rate or its schedule serialized)."""
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter(self._learning_rate),
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "rho_threshold": self.rho_threshold,
            }
        )
        return config


# ----------------------------------------------------------------------- schedules


class _WarmupSchedule(_Schedule):
    """A schedule with a linear warmup over its first `warmup_steps` updates.

    Subclasses give `_after_warmup(updates)`, the rate as a float64 function of
    the 1-based update count (MXNet's `num_update`).
    """

    def __init__(
        self,
        learning_rate: float,
        warmup_steps: int = 0,
        warmup_begin_lr: float = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        kind = type(self).__name__
        _require(
            _real(learning_rate) and learning_rate > 0,
            f"{kind}: learning_rate must be a number > 0, got {learning_rate!r}",
        )
        _require(
            isinstance(warmup_steps, numbers.Integral)
            and not isinstance(warmup_steps, bool)
            and warmup_steps >= 0,
            f"{kind}: warmup_steps must be an integer >= 0, got {warmup_steps!r}",
        )
        _require(
            _real(warmup_begin_lr) and 0 <= warmup_begin_lr <= learning_rate,
            f"{kind}: warmup_begin_lr must be in [0, learning_rate={learning_rate}], "
            f"got {warmup_begin_lr!r}",
        )
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.warmup_begin_lr = float(warmup_begin_lr)
        self.name = name

    def _after_warmup(self, updates: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def __call__(self, step: tf.Tensor | int) -> tf.Tensor:
        with tf.name_scope(self.name or type(self).__name__):
            updates = tf.cast(step, tf.float64) + 1.0  # MXNet's num_update, 1-based
            rate = self._after_warmup(updates)
            if self.warmup_steps > 0:
                warmup = self.warmup_begin_lr + (
                    self.learning_rate - self.warmup_begin_lr
                ) * updates / float(self.warmup_steps)
                rate = tf.where(updates < float(self.warmup_steps), warmup, rate)
            return tf.cast(rate, tf.float32)

    def get_config(self) -> dict:
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "warmup_begin_lr": self.warmup_begin_lr,
            "name": self.name,
        }


@tf.keras.utils.register_keras_serializable(package="quantens")
class ConstantSchedule(_WarmupSchedule):
    """A constant learning rate after a linear warmup.

    ```python
    import quantens
    from quantens.optimizers import ConstantSchedule

    schedule = ConstantSchedule(0.1, warmup_steps=4)
    assert [round(float(schedule(s)), 6) for s in range(5)] == [0.025, 0.05, 0.075, 0.1, 0.1]
    ```
    """

    def _after_warmup(self, updates: tf.Tensor) -> tf.Tensor:
        return tf.fill(tf.shape(updates), tf.constant(self.learning_rate, tf.float64))


@tf.keras.utils.register_keras_serializable(package="quantens")
class StepSchedule(_WarmupSchedule):
    """The rate is multiplied by `factor` at each of `boundaries` (in steps).

    `schedule(step)` is `learning_rate * factor ** k`, k the number of
    boundaries <= step: with boundaries at `epoch * steps_per_epoch`, the first
    update of each of those (0-based) epochs has the new rate, as MXNet's
    `MultiFactorScheduler` does. The warmup, if any, ramps to `learning_rate`.

    ```python
    import quantens
    from quantens.optimizers import StepSchedule

    schedule = StepSchedule(1.0, boundaries=[10, 20], factor=0.1)
    assert [round(float(schedule(s)), 6) for s in (9, 10, 19, 20)] == [1.0, 0.1, 0.1, 0.01]
    ```
    """

    def __init__(
        self,
        learning_rate: float,
        boundaries: Sequence[int],
        factor: float = 0.1,
        warmup_steps: int = 0,
        warmup_begin_lr: float = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__(learning_rate, warmup_steps, warmup_begin_lr, name)
        boundaries = list(boundaries)
        _require(
            all(isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in boundaries)
            and all(b > 0 for b in boundaries),
            f"StepSchedule: boundaries must be integers > 0, got {boundaries!r}",
        )
        _require(
            _increasing(boundaries),
            f"StepSchedule: boundaries must be strictly increasing, got {boundaries!r}",
        )
        _require(
            _real(factor) and 0 < factor <= 1,
            f"StepSchedule: factor must be in (0, 1], got {factor!r}",
        )
        self.boundaries = [int(b) for b in boundaries]
        self.factor = float(factor)

    def _after_warmup(self, updates: tf.Tensor) -> tf.Tensor:
        if not self.boundaries:
            return tf.fill(tf.shape(updates), tf.constant(self.learning_rate, tf.float64))
        step = updates - 1.0
        boundaries = tf.constant(self.boundaries, tf.float64)
        passed = tf.reduce_sum(
            tf.cast(step[..., None] >= boundaries, tf.float64), axis=-1
        )
        return self.learning_rate * tf.pow(tf.constant(self.factor, tf.float64), passed)

    def get_config(self) -> dict:
        return {**super().get_config(), "boundaries": self.boundaries, "factor": self.factor}


class _DecaySchedule(_WarmupSchedule):
    """A decay from `learning_rate` to `final_lr` over the updates after warmup."""

    def __init__(
        self,
        learning_rate: float,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_begin_lr: float = 0.0,
        final_lr: float = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__(learning_rate, warmup_steps, warmup_begin_lr, name)
        kind = type(self).__name__
        _require(
            isinstance(total_steps, numbers.Integral)
            and not isinstance(total_steps, bool)
            and total_steps > self.warmup_steps,
            f"{kind}: total_steps must be an integer > warmup_steps={self.warmup_steps}, "
            f"got {total_steps!r}",
        )
        _require(
            _real(final_lr) and 0 <= final_lr <= learning_rate,
            f"{kind}: final_lr must be in [0, learning_rate={learning_rate}], got {final_lr!r}",
        )
        self.total_steps = int(total_steps)
        self.final_lr = float(final_lr)

    def _progress(self, updates: tf.Tensor) -> tf.Tensor:
        """0 at the end of warmup, 1 at the last update (MXNet's max_update), clipped."""
        decay_steps = float(self.total_steps - self.warmup_steps)
        return tf.clip_by_value((updates - self.warmup_steps) / decay_steps, 0.0, 1.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "total_steps": self.total_steps, "final_lr": self.final_lr}


@tf.keras.utils.register_keras_serializable(package="quantens")
class CosineSchedule(_DecaySchedule):
    """Cosine decay to `final_lr` at the last of `total_steps` updates (MXNet's
    `CosineScheduler`), after a linear warmup.

    With p = (step + 1 - warmup_steps) / (total_steps - warmup_steps):
    `final_lr + (learning_rate - final_lr) * (1 + cos(pi * p)) / 2`.

    ```python
    import quantens
    from quantens.optimizers import CosineSchedule

    schedule = CosineSchedule(1.0, total_steps=100, warmup_steps=10)
    assert round(float(schedule(4)), 6) == 0.5       # warmup: 5 of 10 updates
    assert round(float(schedule(54)), 6) == 0.5      # half way through the decay
    assert float(schedule(99)) == 0.0                # the last update
    ```
    """

    def _after_warmup(self, updates: tf.Tensor) -> tf.Tensor:
        cosine = 0.5 * (1.0 + tf.cos(math.pi * self._progress(updates)))
        return self.final_lr + (self.learning_rate - self.final_lr) * cosine


@tf.keras.utils.register_keras_serializable(package="quantens")
class PolySchedule(_DecaySchedule):
    """Polynomial decay to `final_lr` at the last of `total_steps` updates
    (MXNet's `PolyScheduler`, power 2 by default), after a linear warmup.

    With p as in `CosineSchedule`:
    `final_lr + (learning_rate - final_lr) * (1 - p) ** power`.

    ```python
    import quantens
    from quantens.optimizers import PolySchedule

    schedule = PolySchedule(1.0, total_steps=100)
    assert round(float(schedule(49)), 6) == 0.25     # (1 - 1/2) ** 2
    ```
    """

    def __init__(
        self,
        learning_rate: float,
        total_steps: int,
        power: float = 2.0,
        warmup_steps: int = 0,
        warmup_begin_lr: float = 0.0,
        final_lr: float = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__(learning_rate, total_steps, warmup_steps, warmup_begin_lr, final_lr, name)
        _require(_real(power) and power > 0, f"PolySchedule: power must be > 0, got {power!r}")
        self.power = float(power)

    def _after_warmup(self, updates: tf.Tensor) -> tf.Tensor:
        remaining = tf.pow(1.0 - self._progress(updates), self.power)
        return self.final_lr + (self.learning_rate - self.final_lr) * remaining

    def get_config(self) -> dict:
        return {**super().get_config(), "power": self.power}


def _parse_lr_steps(lr_steps: Sequence[float] | str) -> list[float]:
    if isinstance(lr_steps, str):
        parts = [p.strip() for p in lr_steps.split(",") if p.strip()]
        try:
            return [float(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"lr_steps must be comma-separated epochs such as '30,60,90', got {lr_steps!r}"
            ) from None
    steps = list(lr_steps)
    _require(all(_real(s) for s in steps), f"lr_steps must be numbers of epochs, got {steps!r}")
    return [float(s) for s in steps]


def make_schedule(
    mode: str,
    lr: float,
    epochs: int,
    steps_per_epoch: int,
    lr_steps: Sequence[float] | str = (),
    lr_factor: float = 0.1,
    warmup_epochs: float = 0.0,
    *,
    warmup_begin_lr: float = 0.0,
    final_lr: float = 0.0,
    power: float = 2.0,
) -> _Schedule:
    """The schedule of the seed's `--lr-mode`, in optimizer steps.

    Args:
        mode: `step` (multiply by `lr_factor` at each epoch of `lr_steps`),
            `cosine` or `poly` (decay to `final_lr` at the end of training),
            or `constant`.
        lr: the base learning rate, > 0.
        epochs: the length of training; `epochs * steps_per_epoch` updates.
        steps_per_epoch: optimizer updates (batches) per epoch.
        lr_steps: `step` mode only: epochs, increasing and > 0, as numbers or
            the seed's string "30,60,90"; boundaries at epoch * steps_per_epoch
            (rounded). Epochs at or past `epochs` never take effect. Ignored by
            the other modes.
        lr_factor: `step` mode only: the multiplier at each step, in (0, 1].
        warmup_epochs: linear warmup from `warmup_begin_lr` to `lr` over this
            many epochs (may be fractional; rounded to whole steps), before
            the schedule of `mode`; 0 for none. Less than `epochs`.
        warmup_begin_lr: the rate the warmup starts from (the seed's
            `--warmup-lr`), in [0, lr].
        final_lr: `cosine`/`poly`: the rate at the last update, in [0, lr].
        power: `poly`: the exponent, 2 as in MXNet's `PolyScheduler`.

    Raises:
        ValueError: for an unknown mode or a value out of range.

    ```python
    import quantens
    from quantens.optimizers import make_schedule

    schedule = make_schedule("step", 0.1, epochs=90, steps_per_epoch=100,
                             lr_steps="30,60", lr_factor=0.1, warmup_epochs=1)
    assert abs(float(schedule(3000)) - 0.01) < 1e-9    # the first update of epoch 30
    ```
    """
    if mode not in LR_MODES:
        raise ValueError(f"unknown lr mode {mode!r}: choose one of {', '.join(LR_MODES)}")
    _require(_real(lr) and lr > 0, f"lr must be a number > 0, got {lr!r}")
    _require(
        isinstance(epochs, numbers.Integral) and not isinstance(epochs, bool) and epochs > 0,
        f"epochs must be an integer > 0, got {epochs!r}",
    )
    _require(
        isinstance(steps_per_epoch, numbers.Integral)
        and not isinstance(steps_per_epoch, bool)
        and steps_per_epoch > 0,
        f"steps_per_epoch must be an integer > 0, got {steps_per_epoch!r}",
    )
    _require(
        _real(warmup_epochs) and 0 <= warmup_epochs < epochs,
        f"warmup_epochs must be >= 0 and less than epochs={epochs}, got {warmup_epochs!r}",
    )
    _require(
        _real(warmup_begin_lr) and 0 <= warmup_begin_lr <= lr,
        f"warmup_begin_lr must be in [0, lr={lr}], got {warmup_begin_lr!r}",
    )
    total_steps = int(epochs) * int(steps_per_epoch)
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    _require(
        warmup_steps < total_steps,
        f"warmup_epochs={warmup_epochs} leaves no step of training after the warmup",
    )
    common = {"warmup_steps": warmup_steps, "warmup_begin_lr": float(warmup_begin_lr)}

    if mode == "constant":
        return ConstantSchedule(float(lr), **common)
    if mode == "step":
        epochs_list = _parse_lr_steps(lr_steps)
        _require(bool(epochs_list), "lr mode 'step' needs at least one epoch in lr_steps")
        _require(
            all(e > 0 for e in epochs_list),
            f"lr_steps must be epochs > 0, got {epochs_list!r}",
        )
        _require(
            _increasing(epochs_list),
            f"lr_steps must be strictly increasing, got {epochs_list!r}",
        )
        _require(
            _real(lr_factor) and 0 < lr_factor <= 1,
            f"lr_factor must be in (0, 1], got {lr_factor!r}",
        )
        boundaries = [int(round(e * steps_per_epoch)) for e in epochs_list]
        _require(
            _increasing(boundaries) and boundaries[0] > 0,
            f"lr_steps {epochs_list!r} fall on the same or the first step with "
            f"steps_per_epoch={steps_per_epoch}",
        )
        return StepSchedule(float(lr), boundaries, factor=float(lr_factor), **common)
    _require(
        _real(final_lr) and 0 <= final_lr <= lr,
        f"final_lr must be in [0, lr={lr}], got {final_lr!r}",
    )
    if mode == "cosine":
        return CosineSchedule(float(lr), total_steps, final_lr=float(final_lr), **common)
    _require(_real(power) and power > 0, f"power must be > 0, got {power!r}")
    return PolySchedule(
        float(lr), total_steps, power=float(power), final_lr=float(final_lr), **common
    )


# ----------------------------------------------------------------------- optimizers


def make_optimizer(
    name: str,
    learning_rate: float | _Schedule,
    momentum: float = 0.9,
    **kwargs,
) -> tf.keras.optimizers.Optimizer:
    """The optimizer of the seed's `--optimizer`, without weight decay.

    - `radam`: `RAdam` (β = 0.9, 0.999; ε = 1e-8);
    - `adam`: `tf.keras.optimizers.Adam` with ε = 1e-8, MXNet's default (ε is
      added to sqrt(v) in both);
    - `sgd`: `tf.keras.optimizers.SGD` with `momentum`;
    - `nag`: `tf.keras.optimizers.SGD` with `momentum` and `nesterov=True`.

    `momentum` is used by `sgd` and `nag` only (as in the seed). Other keyword
    arguments go to the optimizer (e.g. `jit_compile`, `clipnorm`).

    ```python
    import quantens
    from quantens.optimizers import make_optimizer

    optimizer = make_optimizer("nag", 0.1, momentum=0.9)
    assert optimizer.nesterov and optimizer.momentum == 0.9
    ```

    Raises:
        ValueError: for an unknown name, a learning rate <= 0 or a momentum
            outside [0, 1).
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    if not isinstance(learning_rate, _Schedule):
        _require(
            _real(learning_rate) and learning_rate > 0,
            f"learning rate must be a number > 0 or a LearningRateSchedule, got {learning_rate!r}",
        )
        learning_rate = float(learning_rate)
    if key == "radam":
        return RAdam(learning_rate=learning_rate, **kwargs)
    if key == "adam":
        return tf.keras.optimizers.Adam(learning_rate=learning_rate, epsilon=1e-8, **kwargs)
    _require(
        _real(momentum) and 0 <= momentum < 1,
        f"momentum must be in [0, 1), got {momentum!r}",
    )
    return tf.keras.optimizers.SGD(
        learning_rate=learning_rate,
        momentum=float(momentum),
        nesterov=(key == "nag"),
        **kwargs,
    )
