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

Schedules are tf-keras' `CosineDecay`, `PolynomialDecay` and
`PiecewiseConstantDecay` (or a constant) inside one `MXNetSchedule`, which
follows MXNet's `lr_scheduler` module, counting updates from 1:
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

import numpy as np
import tensorflow as tf

from quantens.defaults import LR_MODES, OPTIMIZERS

__all__ = [
    "LR_MODES",
    "OPTIMIZERS",
    "MXNetSchedule",
    "RAdam",
    "make_optimizer",
    "make_schedule",
]

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

_schedules = tf.keras.optimizers.schedules


def _map_floats(structure: object, convert: type) -> object:
    """`structure` (a number or a nested config) with its floats passed to `convert`."""
    return tf.nest.map_structure(
        lambda value: convert(value) if isinstance(value, float) else value, structure
    )


@tf.keras.utils.register_keras_serializable(package="quantens")
class MXNetSchedule(_Schedule):
    """A tf-keras schedule counted as MXNet's `lr_scheduler` counts, with a
    linear warmup where the tf-keras schedule has none.

    MXNet counts updates from 1: `MXNetSchedule(schedule)(step)` is
    `schedule(step + 1)`, the rate of the update that takes the optimizer from
    `step` to `step + 1` updates done. Over the first `warmup_steps` updates the
    rate ramps linearly instead: update u (1-based) has `warmup_begin_lr +
    (warmup_target - warmup_begin_lr) * u / warmup_steps` while
    `u < warmup_steps`, so the last update of the warmup is at the full rate.
    With `start_after_warmup`, `schedule` counts the updates after the warmup
    (update u gets `schedule(u - warmup_steps)`), as MXNet's poly scheduler
    decays over `max_update - warmup_steps` updates.

    The rate is computed in float64 and returned in float32: `schedule` is
    rebuilt from its config with its floats as float64 (tf-keras schedules
    compute in the dtype of their initial rate). Steps are scalars, as for
    every tf-keras schedule.

    ```python
    import quantens
    import tensorflow as tf
    from quantens.optimizers import MXNetSchedule

    poly = tf.keras.optimizers.schedules.PolynomialDecay(1.0, 8, end_learning_rate=0.0, power=2.0)
    schedule = MXNetSchedule(poly, warmup_steps=2, warmup_target=1.0, start_after_warmup=True)
    assert [float(schedule(s)) for s in (0, 1, 5, 9, 20)] == [0.5, 1.0, 0.25, 0.0, 0.0]

    constant = MXNetSchedule(0.2, warmup_steps=4, warmup_target=0.2)
    assert [round(float(constant(s)), 6) for s in range(5)] == [0.05, 0.1, 0.15, 0.2, 0.2]
    ```

    Args:
        schedule: a `tf.keras.optimizers.schedules.LearningRateSchedule` (or its
            serialized form), or a number > 0 for a constant rate.
        warmup_steps: the number of updates of the linear warmup; 0 for none.
        warmup_begin_lr: the rate the warmup starts from, in [0, warmup_target].
        warmup_target: the rate the warmup ends at, > 0; needed with a warmup.
        start_after_warmup: whether `schedule` starts at the end of the warmup
            rather than at the first update.
        name: the name scope of the computation.
    """

    def __init__(
        self,
        schedule: _Schedule | dict | float,
        warmup_steps: int = 0,
        warmup_begin_lr: float = 0.0,
        warmup_target: float | None = None,
        start_after_warmup: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(schedule, dict):
            schedule = _schedules.deserialize(schedule)
        if isinstance(schedule, _Schedule):
            config = _map_floats(_schedules.serialize(schedule), np.float64)
            self.schedule = _schedules.deserialize(config)
        else:
            _require(
                _real(schedule) and schedule > 0,
                f"MXNetSchedule: schedule must be a LearningRateSchedule or a number > 0, "
                f"got {schedule!r}",
            )
            self.schedule = np.float64(schedule)
        _require(
            isinstance(warmup_steps, numbers.Integral)
            and not isinstance(warmup_steps, bool)
            and warmup_steps >= 0,
            f"MXNetSchedule: warmup_steps must be an integer >= 0, got {warmup_steps!r}",
        )
        if warmup_steps > 0:
            _require(
                _real(warmup_target) and warmup_target > 0,
                f"MXNetSchedule: a warmup needs a warmup_target > 0, got {warmup_target!r}",
            )
            _require(
                _real(warmup_begin_lr) and 0 <= warmup_begin_lr <= warmup_target,
                f"MXNetSchedule: warmup_begin_lr must be in [0, warmup_target={warmup_target}], "
                f"got {warmup_begin_lr!r}",
            )
        self.warmup_steps = int(warmup_steps)
        self.warmup_begin_lr = float(warmup_begin_lr)
        self.warmup_target = None if warmup_target is None else float(warmup_target)
        self.start_after_warmup = bool(start_after_warmup)
        self.name = name

    def __call__(self, step: tf.Tensor | int) -> tf.Tensor:
        with tf.name_scope(self.name or "MXNetSchedule"):
            updates = tf.cast(step, tf.float64) + 1.0  # MXNet's num_update, 1-based
            if isinstance(self.schedule, _Schedule):
                start = float(self.warmup_steps) if self.start_after_warmup else 0.0
                rate = tf.cast(self.schedule(updates - start), tf.float64)
            else:
                rate = tf.constant(self.schedule, tf.float64)
            if self.warmup_steps > 0:
                warmup = self.warmup_begin_lr + (
                    self.warmup_target - self.warmup_begin_lr
                ) * updates / float(self.warmup_steps)
                rate = tf.where(updates < float(self.warmup_steps), warmup, rate)
            return tf.cast(rate, tf.float32)

    def get_config(self) -> dict:
        """The constructor arguments, `schedule` serialized (floats as Python floats)."""
        if isinstance(self.schedule, _Schedule):
            schedule = _map_floats(_schedules.serialize(self.schedule), float)
        else:
            schedule = float(self.schedule)
        return {
            "schedule": schedule,
            "warmup_steps": self.warmup_steps,
            "warmup_begin_lr": self.warmup_begin_lr,
            "warmup_target": self.warmup_target,
            "start_after_warmup": self.start_after_warmup,
            "name": self.name,
        }


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
) -> MXNetSchedule:
    """The schedule of the seed's `--lr-mode`, in optimizer steps.

    An `MXNetSchedule` around tf-keras' `PiecewiseConstantDecay` (`step`),
    `CosineDecay` with its own warmup (`cosine`), `PolynomialDecay` over the
    updates after the warmup (`poly`), or the constant `lr` (`constant`).

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
    _check_schedule(mode, lr, epochs, steps_per_epoch, warmup_epochs, warmup_begin_lr)
    total_steps = int(epochs) * int(steps_per_epoch)
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    _require(
        warmup_steps < total_steps,
        f"warmup_epochs={warmup_epochs} leaves no step of training after the warmup",
    )
    lr = float(lr)
    warmup = {
        "warmup_steps": warmup_steps,
        "warmup_begin_lr": float(warmup_begin_lr),
        "warmup_target": lr,
    }
    if mode == "constant":
        return MXNetSchedule(lr, **warmup)
    if mode == "step":
        return _step_schedule(lr, steps_per_epoch, lr_steps, lr_factor, warmup)
    _require(
        _real(final_lr) and 0 <= final_lr <= lr,
        f"final_lr must be in [0, lr={lr}], got {final_lr!r}",
    )
    decay_steps = total_steps - warmup_steps  # final_lr at update total_steps
    if mode == "cosine":
        return _cosine_schedule(lr, decay_steps, warmup_steps, warmup_begin_lr, final_lr)
    return _poly_schedule(lr, decay_steps, final_lr, power, warmup)


def _check_schedule(mode, lr, epochs, steps_per_epoch, warmup_epochs, warmup_begin_lr) -> None:
    """The arguments every mode of `make_schedule` shares, checked (ValueError naming one)."""
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


def _step_schedule(lr: float, steps_per_epoch: int, lr_steps, lr_factor, warmup: dict
                   ) -> MXNetSchedule:
    """`step`: `lr` multiplied by `lr_factor` at each epoch of `lr_steps` (after the warmup)."""
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
    # update u > b, i.e. step >= b, has passed boundary b (MXNet's MultiFactorScheduler)
    values = [lr * float(lr_factor) ** k for k in range(len(boundaries) + 1)]
    return MXNetSchedule(_schedules.PiecewiseConstantDecay(boundaries, values), **warmup)


def _cosine_schedule(lr: float, decay_steps: int, warmup_steps: int, warmup_begin_lr,
                     final_lr) -> MXNetSchedule:
    """`cosine`: tf-keras' `CosineDecay` to `final_lr`, with its own warmup (MXNet's)."""
    cosine = _schedules.CosineDecay(
        float(warmup_begin_lr) if warmup_steps else lr,
        decay_steps,
        alpha=float(final_lr) / lr,
        warmup_target=lr if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    return MXNetSchedule(cosine)


def _poly_schedule(lr: float, decay_steps: int, final_lr, power, warmup: dict) -> MXNetSchedule:
    """`poly`: `PolynomialDecay` to `final_lr` over the updates after the warmup."""
    _require(_real(power) and power > 0, f"power must be > 0, got {power!r}")
    poly = _schedules.PolynomialDecay(
        lr, decay_steps, end_learning_rate=float(final_lr), power=float(power)
    )
    return MXNetSchedule(poly, start_after_warmup=True, **warmup)


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
