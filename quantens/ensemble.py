"""`QuantEnsemble`: train every member of a shared-weight network in one step.

```python
import numpy as np
import quantens
from zoo import create_model

model = create_model("digits_resnet_e", bit_widths=(32, 4, 1))
ensemble = quantens.QuantEnsemble(model, bit_widths=(32, 4, 1), target_bits=1)
ensemble.compile(optimizer="adam")
x = np.random.rand(8, 8, 8, 1).astype("float32")
y = np.arange(8) % 10
ensemble.fit(x, y, epochs=1, verbose=0)
logs = ensemble.evaluate(x, y, return_dict=True, verbose=0)  # accuracy_32, ..., loss_1
binary = ensemble.member(1)  # a standalone larq model of the 1-bit member
```
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import zipfile
from collections.abc import Mapping

import tensorflow as tf

from quantens.bits import bits as bits_scope
from quantens.checks import (
    check_bit_widths,
    check_model_io,
    check_number,
    check_per_member,
    member_key,
    missing_members,
)
from quantens.defaults import (
    BIT_WIDTHS,
    FULL_PRECISION,
    MEMBER_BACKWARD,
    MEMBER_BACKWARDS,
    SEED,
)
from quantens.errors import ConfigError, UsageError, WeightsError, one_line
from quantens.larq_hooks import LARQ_LAYER_LOGGER, QuantizedVariable

__all__ = [
    "KERAS_FILE_ENTRIES",
    "MIXED_POOL",
    "QuantEnsemble",
    "held_precision",
    "load_ensemble",
    "member_table",
    "quiet_logger",
]

MIXED_POOL = 8
"""How many per-layer mixes `QuantEnsemble(mixed_students=N)` draws by default (at least N)."""


def _whole_number(value, argument: str, minimum: int, hint: str) -> int:
    """`value` as an int >= `minimum` (an integral number, not a bool), else UsageError."""
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not integral or value < minimum:
        raise UsageError(
            f"QuantEnsemble: {argument} must be a whole number >= {minimum} ({hint}), "
            f"got {value!r}"
        )
    return int(value)


def _mixed_pool(model, bit_widths: tuple[int, ...], size: int, seed: int
                ) -> tuple[dict[str, int], ...]:
    """Up to `size` distinct per-layer mixes of `model`, drawn with numpy's seeded generator.

    The bits are the ensemble's quantized bit-widths (below 32; all of them when
    fewer than two are); each switchable conv or dense layer whose bits a mix can
    change draws one uniformly; a draw with one bit-width only (a uniform member)
    or a repeat is drawn again. Layers held at a fixed precision get the lowest.
    """
    import numpy as np

    from quantens.bits import mix_bits, policy_layers

    quantized = tuple(b for b in bit_widths if b != FULL_PRECISION)
    choices = quantized if len(quantized) >= 2 else bit_widths
    lowest = min(choices)
    held = held_precision(model, lowest)
    named = policy_layers(model)
    free = [name for name in named if name not in held]
    if len(free) < 2:
        raise ConfigError(
            f"QuantEnsemble: mixed_students needs at least 2 switchable conv or dense layers "
            f"whose bits a mix can change; model {model.name!r} has {len(free)}"
            f"{' (' + ', '.join(free) + ')' if free else ''}: use mixed_students=0"
        )
    rng = np.random.default_rng(seed)
    pool: list[dict[str, int]] = []
    seen: set[tuple] = set()
    for _ in range(64 * size):
        if len(pool) == size:
            break
        drawn = tuple(int(b) for b in rng.choice(choices, size=len(free)))
        if len(set(drawn)) < 2 or drawn in seen:
            continue
        seen.add(drawn)
        policy = dict(zip(free, drawn, strict=True))
        policy.update({name: lowest for name in named if name not in policy})
        mix_bits(model, policy, bit_widths)  # a mix the ensemble runs, checked
        pool.append({name: policy[name] for name in named})
    return tuple(pool)


def _checked_arguments(model, bit_widths, target_bits, member_loss_weights, weight_decay):
    """`QuantEnsemble`'s arguments checked: (bit_widths, target_bits, loss weights, decay)."""
    where = "QuantEnsemble"
    if not isinstance(model, tf.keras.Model):
        raise UsageError(
            f"{where}: model must be a Keras model (tf.keras.Model) built from quantens' "
            f"switchable layers, got {type(model).__name__}: pass e.g. "
            "zoo.create_model(name, bit_widths=...) or quantens.quantize_model(model, bit_widths)"
        )
    if getattr(model, "inputs", None):  # a functional model: what training and export need
        check_model_io(model, where)
    bit_widths = check_bit_widths(bit_widths, where)
    members = " ".join(map(str, bit_widths))
    missing = missing_members(model, bit_widths)
    if missing:
        raise ConfigError(
            f"{where}: bit_widths {members} do not fit the model {model.name!r}: {missing}; "
            "build the model with the same bit_widths"
        )
    if target_bits is None:
        target_bits = bit_widths[-1]
    if member_key(target_bits) not in bit_widths:
        raise UsageError(
            f"{where}: target_bits {target_bits!r} is not one of the bit-widths {members}: "
            f"choose a member (default: the lowest, {bit_widths[-1]})"
        )
    weights = check_per_member(member_loss_weights, bit_widths, where, "member_loss_weights")
    weights = {b: weights.get(b, 1.0) for b in bit_widths}
    weight_decay = check_number(weight_decay, where, "weight_decay",
                                hint=" (an L2 coefficient such as 1e-4)")
    return bit_widths, member_key(target_bits), weights, weight_decay


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.ERROR):
    """Raises a logger's level inside the block and restores it after, whatever happens.

    ```python
    import logging
    from quantens.ensemble import quiet_logger
    from quantens.larq_hooks import LARQ_LAYER_LOGGER

    with quiet_logger(LARQ_LAYER_LOGGER):  # larq's "binary kernel without constraint"
        assert logging.getLogger(LARQ_LAYER_LOGGER).level == logging.ERROR
    ```
    """
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@tf.keras.utils.register_keras_serializable(package="quantens")
class QuantEnsemble(tf.keras.Model):
    """A network whose members at several bit-widths share one set of weights.

    `train_step` runs the wrapped model once per bit-width (a Python loop that
    unrolls into one graph), sums the members' cross-entropies (weighted by
    `member_loss_weights`), weight decay and distillation (`set_distillation`),
    and makes
    one optimizer update of the shared weights. The loss is averaged per
    global batch, so it is correct under `tf.distribute`.

    `evaluate` reports `loss` and, per member, `loss_<b>` and `accuracy_<b>`;
    `predict` and `__call__` run the `target_bits` member.

    Arguments:
        model: a functional Keras model built from quantens' switchable layers,
            returning logits.
        bit_widths: the members' bit-widths, e.g. `(32, 8, 4, 2, 1)`.
        target_bits: the member that `predict` runs and checkpoints are chosen
            by; default the lowest bit-width.
        member_loss_weights: cross-entropy weight per bit-width (default 1), a
            finite number >= 0; with every member at 0, training needs
            distillation (`set_distillation`), else `fit` refuses to start.
        weight_decay: L2 coefficient of the full-precision variables (the
            seed's `--wd`: its gradient adds `wd * w`); quantized kernels get
            none, as BMXNet sets their `wd_mult` to 0.
        member_backward: `"joint"` (one backward pass through all members'
            forward passes: every member's activations alive at once) or
            `"sequential"` (each member's forward, loss and backward in turn,
            the gradients added and applied once: the activation memory of one
            member, the same update up to float rounding).
        mixed_students: N extra students per training step, each a per-layer
            mix of the members' bit-widths (Bit-Mixer's last stage, Bulat &
            Tzimiropoulos 2021), for mixed members (`member(policy)`) that
            work without re-estimating their BN statistics; 0 (the default)
            trains the uniform members only, as before (docs/distillation.md,
            "Mixed students", has the design and a measurement). Each is drawn from
            a pool of `mixed_pool` mixes fixed at construction (numpy's seeded
            generator: each switchable conv or dense layer draws one of the
            bit-widths below 32, uniform draws redrawn; `mixed_policies`), N
            distinct ones per step by a stateless random draw from
            (`mixed_seed`, the optimizer's step) (`drawn_mixes(step)`), so a
            resumed run draws what an uninterrupted one would. A mix adds its
            cross-entropy (weight 1) and, with distillation, α·T²·KL to the
            teacher (an ensemble teacher: its highest member; without a
            teacher: the highest member): `Distillation.mixed_target`. Its
            forward pass uses batch statistics and leaves the moving BN
            statistics as the uniform members left them. Logs: `loss_mixed`
            (its mean cross-entropy), `accuracy_mixed`; its KD joins `kd_loss`.
        mixed_pool: the pool's size (default `MIXED_POOL`, at least N); each
            step traces every mix of the pool once per student (`tf.switch_case`).
        mixed_seed: the seed of the pool and of the draws.

    Raises:
        UsageError: an argument that cannot work (not a Keras model, bit-widths
            that are not a list of 1..32, a target or loss weight of a
            non-member, a negative or non-finite loss weight or weight decay,
            mixed students that are not a whole number >= 0, with one member
            or a model without inputs, more of them than the pool holds).
        ConfigError: a model whose switchable layers lack one of the members,
            or, with mixed students, has fewer than 2 layers a mix can change.

    ```python
    import quantens
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(
        create_model("digits_resnet_e", bit_widths=(8, 2)), bit_widths=(8, 2)
    )
    ensemble.compile(optimizer="adam")
    ```
    """

    def __init__(
        self,
        model: tf.keras.Model,
        bit_widths=BIT_WIDTHS,
        target_bits: int | None = None,
        member_loss_weights: Mapping[int, float] | None = None,
        weight_decay: float = 0.0,
        member_backward: str = MEMBER_BACKWARD,
        mixed_students: int = 0,
        mixed_pool: int | None = None,
        mixed_seed: int = SEED,
        **kwargs,
    ):
        bit_widths, target_bits, weights, weight_decay = _checked_arguments(
            model, bit_widths, target_bits, member_loss_weights, weight_decay)
        if member_backward not in MEMBER_BACKWARDS:
            raise UsageError(
                f"QuantEnsemble: member_backward must be one of {', '.join(MEMBER_BACKWARDS)}, "
                f"got {member_backward!r}"
            )
        mixed_students, mixed_pool, mixed_seed = self._checked_mixed(
            model, bit_widths, mixed_students, mixed_pool, mixed_seed)
        super().__init__(**kwargs)
        self.model = model
        self.bit_widths = bit_widths
        self.target_bits = target_bits
        self.member_loss_weights = weights
        self.weight_decay = weight_decay
        self.member_backward = member_backward
        self.mixed_students = mixed_students
        self.mixed_pool = mixed_pool
        self.mixed_seed = mixed_seed
        self.distillation = None
        object.__setattr__(self, "_stages_model", None)
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")
        # string keys: checkpoints (BackupAndRestore) track dicts only by str
        self.member_loss_trackers = {
            str(b): tf.keras.metrics.Mean(name=f"loss_{b}") for b in self.bit_widths
        }
        self.member_accuracies = {
            str(b): tf.keras.metrics.SparseCategoricalAccuracy(name=f"accuracy_{b}")
            for b in self.bit_widths
        }
        self.member_loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.NONE
        )
        # not tracked: plain dicts, drawn again from the seed when the ensemble is rebuilt
        object.__setattr__(self, "_mixed_policies", ())
        if mixed_students:
            pool = _mixed_pool(model, bit_widths, mixed_pool, mixed_seed)
            if len(pool) < mixed_students:
                raise UsageError(
                    f"QuantEnsemble: mixed_students={mixed_students} but model {model.name!r} "
                    f"has only {len(pool)} distinct mixes of {len(bit_widths)} bit-widths: "
                    f"use mixed_students <= {len(pool)}"
                )
            object.__setattr__(self, "_mixed_policies", pool)
            self.mixed_loss_tracker = tf.keras.metrics.Mean(name="loss_mixed")
            self.mixed_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(
                name="accuracy_mixed")
        if getattr(model, "inputs", None):
            # built like its model, so fit's callbacks (BackupAndRestore) accept it
            self.build(model.input_shape)

    @staticmethod
    def _checked_mixed(model, bit_widths, students, pool, seed) -> tuple[int, int, int]:
        """(mixed_students, mixed_pool, mixed_seed) checked; the pool's default resolved."""
        students = _whole_number(students, "mixed_students", 0,
                                 "extra per-layer mixes per step; 0: none")
        pool = max(MIXED_POOL, students) if pool is None else _whole_number(
            pool, "mixed_pool", 1, "how many mixes to draw the students from")
        seed = _whole_number(seed, "mixed_seed", 0, "the seed of the mixes")
        if students and len(bit_widths) < 2:
            raise UsageError(
                f"QuantEnsemble: mixed_students={students} needs at least 2 bit-widths to mix, "
                f"the ensemble has {' '.join(map(str, bit_widths))}: add a member or use 0"
            )
        if students > pool:
            raise UsageError(
                f"QuantEnsemble: mixed_students={students} exceeds mixed_pool={pool}: each step "
                "draws distinct mixes of the pool; use a larger pool"
            )
        if students and not getattr(model, "inputs", None):
            raise UsageError(
                "QuantEnsemble: mixed_students needs a functional or Sequential model (a mix "
                "follows the layer graph); this model has no inputs yet"
            )
        return students, pool, seed

    # ----------------------------------------------------------------- running

    def call(self, inputs, training=None):
        with bits_scope(self.target_bits):
            return self.model(inputs, training=training)

    def member_logits(self, x, training=None) -> dict[int, tf.Tensor]:
        """Every member's logits (float32), keyed by bit-width, highest first."""
        outputs = {}
        for b in self.bit_widths:
            with bits_scope(b):
                outputs[b] = tf.cast(self.model(x, training=training), tf.float32)
        return outputs

    def member_outputs(self, x, training=None) -> tuple[dict, dict | None]:
        """Logits per member and, when distillation matches attention, stage outputs."""
        if self._stages_model is None:
            return self.member_logits(x, training=training), None
        logits, features = {}, {}
        for b in self.bit_widths:
            with bits_scope(b):
                outputs = self._stages_model(x, training=training)
            logits[b] = tf.cast(outputs[0], tf.float32)
            features[b] = list(outputs[1:])
        return logits, features

    # ---------------------------------------------------------- mixed students

    @property
    def mixed_policies(self) -> tuple[dict[str, int], ...]:
        """The pool of per-layer mixes the mixed students are drawn from (empty without them).

        Each is a policy `{layer name: bits}` of the switchable conv and dense
        layers, for `quantens.bits(policy)` or `member(policy)`.

        ```python
        import quantens
        from zoo import create_model

        bits = (32, 4, 1)
        ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4, bit_widths=bits),
                                          bits, mixed_students=1, mixed_pool=4)
        assert len(ensemble.mixed_policies) == 4
        # the bit-widths below 32, at least two in each mix
        assert all(set(p.values()) == {4, 1} for p in ensemble.mixed_policies)
        ```
        """
        return tuple(dict(policy) for policy in self._mixed_policies)

    def drawn_mixes(self, step: int) -> list[dict[str, int]]:
        """The mixes that train at optimizer step `step` (0 for the first): N of the pool.

        A stateless draw from (`mixed_seed`, `step`): the same in every run
        and replica, whatever happened before.

        ```python
        import quantens
        from zoo import create_model

        bits = (32, 2, 1)
        ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4, bit_widths=bits),
                                          bits, mixed_students=1)
        [policy] = ensemble.drawn_mixes(0)  # what the first training step runs
        assert policy in ensemble.mixed_policies and set(policy.values()) == {2, 1}
        ```

        Raises:
            UsageError: the ensemble has no mixed students.
        """
        if not self.mixed_students:
            raise UsageError("drawn_mixes: this ensemble has no mixed students "
                             "(QuantEnsemble(..., mixed_students=N))")
        indices = self._drawn_indices(tf.constant(step, tf.int64))
        return [dict(self._mixed_policies[int(i)]) for i in indices.numpy()]

    def _drawn_indices(self, step) -> tf.Tensor:
        """The pool indices of the mixes of optimizer step `step`: N distinct ones."""
        seed = tf.stack([tf.constant(self.mixed_seed, tf.int64), tf.cast(step, tf.int64)])
        scores = tf.random.stateless_uniform([len(self._mixed_policies)], seed=seed)
        return tf.argsort(scores)[: self.mixed_students]

    def _statistics(self) -> tuple[list, list]:
        """(the model's non-trainable variables, their values now): BN statistics to restore."""
        variables = self.model.non_trainable_variables
        return variables, [tf.identity(v) for v in variables]

    @staticmethod
    def _restore(saved: tuple[list, list], after: list) -> None:
        """Assigns the saved values back once the tensors `after` are computed."""
        variables, values = saved
        with tf.control_dependencies(after):
            for variable, value in zip(variables, values, strict=True):
                variable.assign(value)

    def _mixed_student(self, x, y, index, target, gate, sample_weight, scaled: bool):
        """One mixed student: pool mix `index` (a tensor), its forward pass, loss and
        gradients inside one `tf.switch_case` branch per mix of the pool (each traced once,
        one runs). Returns (logits, CE, gated KD or None, gradients: None for a variable
        no mix of the pool reaches)."""
        optimizer = self.optimizer
        variables = self.model.trainable_variables
        reached: list[list[bool]] = []

        def branch(policy):
            def run():
                with tf.GradientTape() as tape:
                    with bits_scope(policy):
                        logits = tf.cast(self.model(x, training=True), tf.float32)
                    ce = tf.nn.compute_average_loss(self.member_loss_fn(y, logits),
                                                    sample_weight=sample_weight)
                    kd = None if target is None else gate * self.distillation.mixed_loss(
                        logits, target, sample_weight)
                    loss = ce if kd is None else ce + kd
                    scaled_loss = optimizer.get_scaled_loss(loss) if scaled else loss
                grads = tape.gradient(scaled_loss, variables)
                reached.append([g is not None for g in grads])
                grads = [tf.zeros(v.shape, v.dtype) if g is None else tf.convert_to_tensor(g)
                         for g, v in zip(grads, variables, strict=True)]
                return logits, ce, tf.constant(0.0) if kd is None else kd, grads
            return run

        branches = [branch(policy) for policy in self._mixed_policies]
        if len(branches) == 1:
            logits, ce, kd, grads = branches[0]()
        else:
            logits, ce, kd, grads = tf.switch_case(tf.cast(index, tf.int32), branches)
        grads = [g if any(column) else None
                 for g, column in zip(grads, zip(*reached, strict=True), strict=True)]
        return logits, ce, None if target is None else kd, grads

    def _mixed_students(self, x, y, member_logits, teacher_outputs, sample_weight, grads,
                        done: list, scaled: bool):
        """The mixed students of this step, each after `done` and the one before (one
        student's activations alive at a time), their gradients added to `grads`.

        Returns (logits, CEs, KDs or None, grads). The moving BN statistics are
        restored afterwards to what the uniform members left.
        """
        d = self.distillation
        target = d.mixed_target(member_logits, teacher_outputs) if d is not None else None
        gate = d.active(self.optimizer.iterations) if target is not None else None
        indices = self._drawn_indices(self.optimizer.iterations)
        saved = self._statistics()
        logits, ces, kds = [], [], []
        for k in range(self.mixed_students):
            with tf.control_dependencies(done):
                z, ce, kd, student_grads = self._mixed_student(
                    x, y, indices[k], target, gate, sample_weight, scaled)
            grads = [g if a is None else a if g is None else a + g
                     for a, g in zip(grads, student_grads, strict=True)]
            done = [g for g in grads if g is not None]
            logits.append(z)
            ces.append(ce)
            kds.append(kd)
        self._restore(saved, logits + done)
        return logits, ces, None if target is None else kds, grads

    def _joint_step_with_mixes(self, x, y, sample_weight, teacher_outputs):
        """`train_step` (joint) with mixed students: the members' backward pass as without
        them, then the students', the gradients added and applied once."""
        optimizer = self.optimizer
        variables = self.model.trainable_variables
        scaled = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            member_logits, features = self.member_outputs(x, training=True)
            total, losses, terms, teacher_outputs = self._loss_terms(
                x, y, member_logits, sample_weight, True, features, teacher_outputs
            )
            scaled_total = optimizer.get_scaled_loss(total) if scaled else total
        grads = tape.gradient(scaled_total, variables)
        logits, ces, kds, grads = self._mixed_students(
            x, y, member_logits, teacher_outputs, sample_weight, grads, [], scaled)
        total += tf.add_n(ces)
        if kds is not None:
            total += tf.add_n(kds)
            terms = {**terms, "kd_loss": terms["kd_loss"] + tf.add_n(kds)}
        if scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None])
        self._update_mixed_metrics(y, logits, ces, sample_weight)
        return self._update_metrics(
            y, member_logits, total, losses, sample_weight, terms, teacher_outputs
        )

    def _update_mixed_metrics(self, y, logits, ces, sample_weight) -> None:
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.mixed_loss_tracker.update_state(tf.add_n(ces) / len(ces) * replicas)
        for z in logits:
            self.mixed_accuracy.update_state(y, z, sample_weight=sample_weight)

    # -------------------------------------------------------------------- loss

    def set_distillation(self, distillation) -> None:
        """Adds knowledge distillation (`quantens.distillation.Distillation`) to the loss.

        Its terms join the loss inside the gradient tape of `train_step`; its
        metrics (`kd_loss`, `teacher_loss`, `teacher_accuracy`) join the logs.
        None removes it.

        Raises:
            UsageError: not a `Distillation`, or one built for other bit-widths.
        """
        if distillation is not None:
            from quantens.distillation import Distillation

            if not isinstance(distillation, Distillation):
                raise UsageError(
                    "set_distillation: distillation must be a quantens.distillation."
                    f"Distillation or None, got {type(distillation).__name__}"
                )
            if tuple(distillation.bit_widths) != tuple(self.bit_widths):
                raise UsageError(
                    "set_distillation: the distillation's bit_widths "
                    f"{' '.join(map(str, distillation.bit_widths))} differ from the ensemble's "
                    f"{' '.join(map(str, self.bit_widths))}: build it with "
                    "Distillation(ensemble.bit_widths, ...)"
                )
        self.distillation = distillation
        stages = None
        if distillation is not None and distillation.attention_weight:
            from quantens.distillation import with_stage_outputs

            stages = with_stage_outputs(self.model)  # shares the model's layers
        # not tracked: it holds no weights of its own
        object.__setattr__(self, "_stages_model", stages)

    def member_losses(self, y, member_logits, sample_weight=None) -> dict[int, tf.Tensor]:
        """Cross-entropy per member, averaged per global batch (distribution-safe)."""
        return {
            b: tf.nn.compute_average_loss(
                self.member_loss_fn(y, logits), sample_weight=sample_weight
            )
            for b, logits in member_logits.items()
        }

    def compute_ensemble_loss(
        self, x, y, member_logits, sample_weight=None, training=True, member_features=None,
        teacher_outputs=None,
    ):
        """Σ_b w_b·CE_b + weight decay + distillation: (total, CE per member).

        Pure: no teacher step, no metric update. `teacher_outputs` are the
        teacher's (logits, stage outputs) of `x` when already computed (the
        untrained teacher's step); otherwise the teacher runs forward here.
        """
        total, losses, _, _ = self._loss_terms(
            x, y, member_logits, sample_weight, training, member_features, teacher_outputs
        )
        return total, losses

    def _loss_terms(self, x, y, member_logits, sample_weight, training, member_features,
                    teacher_outputs):
        """(total, CE per member, distillation terms, teacher outputs)."""
        losses = self.member_losses(y, member_logits, sample_weight)
        total = tf.add_n([self.member_loss_weights[b] * losses[b] for b in losses])
        regularization = self._regularization() if training else None
        if regularization is not None:
            total += regularization
        terms = {}
        if self.distillation is not None:
            if teacher_outputs is None:
                teacher_outputs = self.distillation.teacher_outputs(x, training=False)
            optimizer = getattr(self, "optimizer", None)
            terms = self.distillation.losses(
                member_logits, member_features, teacher_outputs, sample_weight,
                step=optimizer.iterations if optimizer is not None else None,
            )
            total += tf.add_n(list(terms.values()))
        return total, losses, terms, teacher_outputs

    def _regularization(self) -> tf.Tensor | None:
        """The model's own losses and weight decay, scaled per replica (None without them)."""
        regularization = list(self.model.losses)
        if self.weight_decay:
            regularization += [
                0.5 * self.weight_decay * tf.reduce_sum(tf.square(v))
                for v in self.decayed_variables()
            ]
        if not regularization:
            return None
        return tf.nn.scale_regularization_loss(tf.add_n(regularization))

    def decayed_variables(self) -> list[tf.Variable]:
        """Trainable variables that weight decay applies to: all but quantized kernels."""
        return [
            v for v in self.model.trainable_variables if not isinstance(v, QuantizedVariable)
        ]

    # ------------------------------------------------------------------- steps

    def _update_metrics(self, y, member_logits, total, losses, sample_weight, terms=None,
                        teacher_outputs=None):
        # Losses are averaged per global batch; logs show them per replica batch.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.loss_tracker.update_state(total * replicas)
        for b, logits in member_logits.items():
            self.member_loss_trackers[str(b)].update_state(losses[b] * replicas)
            self.member_accuracies[str(b)].update_state(y, logits, sample_weight=sample_weight)
        if self.distillation is not None:
            self.distillation.update_metrics(y, terms, teacher_outputs, sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def make_train_function(self, force=False):
        """Keras' train function (`fit`, `train_on_batch`), once training can change something.

        Raises:
            UsageError: every member's loss weight is 0 and no distillation pairs
                members with targets: the loss would be constant.
        """
        distils = self.distillation is not None and bool(self.distillation.pairs)
        if not any(self.member_loss_weights.values()) and not distils:
            raise UsageError(
                "QuantEnsemble: member_loss_weights are 0 for every member "
                f"({' '.join(map(str, self.bit_widths))}) and no distillation is set: "
                "training would change nothing; give at least one member a positive weight, "
                "or set_distillation(...) before training"
            )
        return super().make_train_function(force=force)

    def train_step(self, data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        teacher_outputs = None
        if self.distillation is not None and self.distillation.trains_teacher:
            # the untrained teacher's own step; its logits become the targets
            teacher_outputs = self.distillation.train_teacher(x, y, sample_weight)
        if self.member_backward == "sequential":
            return self._sequential_step(x, y, sample_weight, teacher_outputs)
        if self.mixed_students:
            return self._joint_step_with_mixes(x, y, sample_weight, teacher_outputs)
        with tf.GradientTape() as tape:
            member_logits, features = self.member_outputs(x, training=True)
            total, losses, terms, teacher_outputs = self._loss_terms(
                x, y, member_logits, sample_weight, True, features, teacher_outputs
            )
        self.optimizer.minimize(total, self.model.trainable_variables, tape=tape)
        return self._update_metrics(
            y, member_logits, total, losses, sample_weight, terms, teacher_outputs
        )

    def _member_forward(self, x, bits: int, training=None):
        """(logits as float32, stage outputs or None) of one member."""
        with bits_scope(bits):
            if self._stages_model is None:
                return tf.cast(self.model(x, training=training), tf.float32), None
            outputs = self._stages_model(x, training=training)
        return tf.cast(outputs[0], tf.float32), list(outputs[1:])

    def _average_targets(self, x) -> tuple[dict, dict | None]:
        """Every member's outputs of a forward pass that leaves the BN statistics as they were.

        The `average` target needs all members' logits before any student's
        backward; the sequential pass then updates each member's moving
        statistics once, as the joint step does.
        """
        statistics = self.model.non_trainable_variables
        saved = [tf.identity(v) for v in statistics]
        with tf.control_dependencies(saved):
            logits, features = self.member_outputs(x, training=True)
        with tf.control_dependencies(list(logits.values())):
            for variable, value in zip(statistics, saved, strict=True):
                variable.assign(value)
        return logits, features

    def _sequential_step(self, x, y, sample_weight, teacher_outputs):
        """One optimizer update from the members' gradients, computed member after member.

        Each member's forward pass, loss and backward pass run before the next
        member's forward pass starts (control dependencies), so one member's
        activations are alive at a time; the gradients add up and the optimizer
        applies their sum once (one all-reduce under `tf.distribute`). What a
        student learns from is computed first and held constant: the teacher's
        outputs, higher members' logits (the members run highest first), and
        for `average` the members' mean from an extra forward pass.
        """
        d = self.distillation
        variables = self.model.trainable_variables
        optimizer = self.optimizer
        scaled = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
        targets, target_features, gate = {}, {}, None
        if d is not None:
            if teacher_outputs is None:
                teacher_outputs = d.teacher_outputs(x, training=False)
            first = self._average_targets(x) if d.needs_average else ({}, None)
            targets, target_features = d.targets(*first, teacher_outputs)
            gate = d.active(optimizer.iterations)
        grads = [None] * len(variables)
        member_logits, losses, total = {}, {}, tf.constant(0.0)
        collected: dict[str, list] = {}
        done: list = []
        for index, b in enumerate(self.bit_widths):
            with tf.control_dependencies(done):  # the previous member's backward is over
                with tf.GradientTape() as tape:
                    logits, features = self._member_forward(x, b, training=True)
                    losses[b] = tf.nn.compute_average_loss(
                        self.member_loss_fn(y, logits), sample_weight=sample_weight)
                    loss = self.member_loss_weights[b] * losses[b]
                    regularization = self._regularization() if index == 0 else None
                    if regularization is not None:
                        loss += regularization
                    if d is not None:
                        for name, term in d.student_losses(
                                b, logits, features, targets, target_features,
                                sample_weight).items():
                            collected.setdefault(name, []).append(gate * term)
                            loss += gate * term
                    scaled_loss = optimizer.get_scaled_loss(loss) if scaled else loss
                member_grads = tape.gradient(scaled_loss, variables)
            grads = [g if a is None else a if g is None else a + g
                     for a, g in zip(grads, member_grads, strict=True)]
            done = [g for g in grads if g is not None]
            member_logits[b] = logits
            targets[b] = tf.stop_gradient(logits)  # what lower members learn from
            if features is not None:
                target_features[b] = [tf.stop_gradient(f) for f in features]
            total += loss
        mixed = None
        if self.mixed_students:  # each mixed student in turn, after the members
            *mixed, grads = self._mixed_students(
                x, y, member_logits, teacher_outputs, sample_weight, grads, done, scaled)
            total += tf.add_n(mixed[1])
            if mixed[2] is not None:
                total += tf.add_n(mixed[2])
                collected.setdefault("kd_loss", []).extend(mixed[2])
        if scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None])
        terms = {}
        if d is not None:
            terms = {"kd_loss": tf.constant(0.0)}
            terms.update({name: tf.add_n(values) for name, values in collected.items()})
        if mixed is not None:
            self._update_mixed_metrics(y, mixed[0], mixed[1], sample_weight)
        return self._update_metrics(
            y, member_logits, total, losses, sample_weight, terms, teacher_outputs
        )

    def test_step(self, data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        member_logits, features = self.member_outputs(x, training=False)
        total, losses, terms, teacher_outputs = self._loss_terms(
            x, y, member_logits, sample_weight, False, features, None
        )
        # `loss` in evaluation: the members' cross-entropy only, as before
        total = tf.add_n([self.member_loss_weights[b] * losses[b] for b in losses])
        logs = self._update_metrics(
            y, member_logits, total, losses, sample_weight, terms, teacher_outputs
        )
        if self.mixed_students:  # evaluation runs the uniform members only
            logs = {k: v for k, v in logs.items() if k not in ("loss_mixed", "accuracy_mixed")}
        return logs

    # ------------------------------------------------------------ serialization

    def get_config(self) -> dict:
        """The ensemble's config: the wrapped model's and the members'.

        `ensemble.save("run.keras")` and `load_ensemble("run.keras")` (or
        `tf.keras.models.load_model`) round-trip it, weights and optimizer state
        included. Distillation is not part of it: its teacher is a model of its own.

        Raises:
            NotImplementedError: with distillation set (save `ensemble.model`
                or the weights, or `set_distillation(None)` first).
        """
        if self.distillation is not None:
            raise NotImplementedError(
                "a QuantEnsemble with distillation cannot be saved as a whole model (its "
                "teacher is another model): save the weights (save_weights, or "
                "ModelCheckpoint(save_weights_only=True)), or call set_distillation(None) first"
            )
        return {
            "name": self.name,
            "model": tf.keras.saving.serialize_keras_object(self.model),
            "bit_widths": list(self.bit_widths),
            "target_bits": self.target_bits,
            "member_loss_weights": {str(b): w for b, w in self.member_loss_weights.items()},
            "weight_decay": self.weight_decay,
            "member_backward": self.member_backward,
            "mixed_students": self.mixed_students,
            "mixed_pool": self.mixed_pool,
            "mixed_seed": self.mixed_seed,
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> QuantEnsemble:
        from quantens import layers  # noqa: F401  (registers the switchable layers)

        config = dict(config)
        model = tf.keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        weights = {int(b): float(w) for b, w in config.pop("member_loss_weights", {}).items()}
        return cls(model, member_loss_weights=weights, **config)

    def save(self, filepath, overwrite: bool = True, save_format=None, **kwargs) -> None:
        """Saves the ensemble as a `.keras` file (the only whole-model format it has).

        `quantens.ensemble.load_ensemble(path)` reads it back, checking the file first.
        A SavedModel for serving, with one signature per member, is
        `quantens.export.save_serving_model(ensemble, path)`; the weights alone
        are `save_weights(...)`.
        """
        path = str(filepath)
        if save_format not in (None, "keras") or not path.endswith(".keras"):
            raise ValueError(
                f"a QuantEnsemble is saved as a .keras file (ensemble.save('run.keras')), not "
                f"{path!r}: for a SavedModel with a signature per member use "
                "quantens.export.save_serving_model(ensemble, path); for the weights alone "
                "save_weights('run.weights.h5')"
            )
        super().save(filepath, overwrite=overwrite, save_format=save_format, **kwargs)

    def summary(self, line_length: int | None = None, print_fn=None, **kwargs) -> None:
        """The members: bit-widths, shared and per-member parameters, bytes as larq counts them.

        `ensemble.model.summary()` shows the layers; larq's summary describes the
        member in scope: `with quantens.bits(b): lq.models.summary(ensemble)` (outside a
        scope, the 32-bit member), as does `lq.models.summary(ensemble.member(b))`.
        """
        print_fn = print_fn or print
        rows = member_table(self)
        shared = rows[0]["shared_parameters"]
        print_fn(f'QuantEnsemble "{self.name}" of {self.model.name}: {len(rows)} members '
                 f"sharing {shared:,} parameters (one kernel per layer)")
        header = f"{'bits':>5}  {'own parameters':>17}  {'size (bytes)':>12}  note"
        print_fn(header)
        print_fn("-" * len(header))
        for row in rows:
            note = "target" if row["bits"] == self.target_bits else ""
            print_fn(f"{row['bits']:>5}  {row['own_parameters']:>17,}  {row['bytes']:>12,}  {note}")
        for b in self.bit_widths:
            held = held_precision(self.model, b)
            if held:
                by_bits: dict[int, list[str]] = {}
                for name, precision in held.items():
                    by_bits.setdefault(precision, []).append(name)
                print_fn(f"{b:>5}-bit member keeps " + "; ".join(
                    f"{len(names)} layer{'s' if len(names) > 1 else ''} at {p} bits "
                    f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                    for p, names in sorted(by_bits.items(), reverse=True)))
        print_fn("Layers: ensemble.model.summary(); member b in larq's detail: "
                 "with quantens.bits(b): lq.models.summary(ensemble)")

    def predict_step(self, data):
        x, _, _ = tf.keras.utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)

    @property
    def metrics(self):
        return [
            self.loss_tracker,
            *self.member_loss_trackers.values(),
            *self.member_accuracies.values(),
            *([self.mixed_loss_tracker, self.mixed_accuracy] if self.mixed_students else []),
            *(self.distillation.metrics if self.distillation is not None else []),
        ]

    # ----------------------------------------------------------------- members

    def member(self, bits, data=None, *, batch_size: int = 128,
               max_examples: int | None = None, verbose="auto") -> tf.keras.Model:
        """A standalone Keras model of member `bits`, with a copy of its weights.

        Every switchable layer is replaced by its fixed larq/Keras form at that
        bit-width (fixed quantizers, that member's BN), so the result is an
        ordinary larq model: `lq.models.summary`, `save`, and the TFLite / Larq
        Compute Engine converters work on it. Later training of the ensemble
        does not change it.

        `bits` may also be a policy, a bit-width per layer: a mapping of layer
        names or `fnmatch` patterns to bit-widths of the ensemble (the first
        matching pattern wins; `"*"` last gives the rest), or a callable
        `layer -> bits`. The policy names the switchable conv and dense layers;
        activation quantizers and BNs follow the graph (`quantens.bits.mix_bits`
        has the rules). The result, a *mixed member*, is the same kind of
        standalone model: each switchable layer is its fixed form at its own
        bits (kernel quantizer, input quantizer and clip values of that
        precision), named `<layer>_<b>bit` so that `summary()` shows every
        layer's bits, and the model `<model>_mixed_<bits>bit`. It computes what
        `with quantens.bits(policy): ensemble.model(x)` computes. It owns its
        BN statistics: with `data` (inputs of the training split, in the forms
        `quantens.calibrate` takes) they are re-estimated for this mix
        (`quantens.bn_statistics.reestimate_batch_norm`: one pass, exact mean
        and variance, nothing trained; `batch_size`, `max_examples`,
        `verbose` are its arguments); the ensemble's own statistics, and so
        its uniform members, do not change. Without `data`, each BN keeps
        the statistics of the uniform member at its bits, which costs
        accuracy (a warning says so).

        ```python
        import numpy as np
        import quantens
        from zoo import create_model

        bits = (8, 2, 1)
        ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4,
                                                       bit_widths=bits), bits)
        x = np.random.default_rng(0).normal(size=(64, 8, 8, 1)).astype("float32")
        mixed = ensemble.member({"block1_*": 8, "block2_*": 2, "*": 1}, data=x)
        assert mixed.get_layer("block1_conv_8bit").kernel_quantizer.precision == 8
        assert mixed.get_layer("block6_bn_1bit") is not None  # a BN follows its conv
        with quantens.bits({"block1_*": 8, "block2_*": 2, "*": 1}):
            y = ensemble.model(x)  # the same mix, with the ensemble's BN statistics
        ```

        Raises:
            ValueError: an int `bits` that is not a member.
            UsageError: (a ValueError) a policy that does not fit the model
                (see `quantens.bits.mix_bits`), `data` with an int `bits`, or
                data the re-estimation refuses (`DataError`: non-finite or
                mis-shaped inputs).
        """
        from quantens.bits import is_policy

        if is_policy(bits):
            return self._mixed_member(bits, data, batch_size, max_examples, verbose)
        if data is not None:
            raise UsageError(
                f"member({bits!r}, data=...): data re-estimates the BN statistics of a mixed "
                "member (a policy); a uniform member uses the ensemble's own statistics of "
                "its bit-width: leave data out"
            )
        if bits not in self.bit_widths:
            raise ValueError(
                f"no member with {bits} bits; the members are "
                f"{' '.join(map(str, self.bit_widths))}"
            )
        member = self._fixed_model(lambda name: bits)
        member._name = f"{self.model.name}_{bits}bit"
        return member

    def _fixed_model(self, bits_of, rename: bool = False) -> tf.keras.Model:
        """The model with each switchable layer at `bits_of(name)` (None: as it is), its
        weights copied; with `rename`, such a layer is named `<name>_<bits>bit`."""

        def name_of(layer) -> str:
            b = bits_of(layer.name)
            return f"{layer.name}_{b}bit" if rename and b is not None and \
                hasattr(layer, "fixed_layer") else layer.name

        def clone(layer):
            b = bits_of(layer.name)
            if hasattr(layer, "fixed_layer") and b is not None:
                fixed = layer.fixed_layer(b)
                fixed._name = name_of(layer)  # built later: its weights take this name
                return fixed
            return layer.__class__.from_config(layer.get_config())

        try:
            with quiet_logger(LARQ_LAYER_LOGGER):  # "binary kernel without constraint"
                member = tf.keras.models.clone_model(self.model, clone_function=clone)
        except ValueError as error:
            raise ValueError(
                f"member() needs a functional or Sequential model: {error}"
            ) from error
        for layer in self.model.layers:
            fixed = member.get_layer(name_of(layer))
            b = bits_of(layer.name)
            if hasattr(layer, "fixed_weights") and b is not None:
                fixed.set_weights(layer.fixed_weights(b))
            else:
                fixed.set_weights(layer.get_weights())
        return member

    def _mixed_member(self, policy, data, batch_size, max_examples, verbose) -> tf.keras.Model:
        """`member(policy)`: the mixed member, its BN statistics re-estimated from `data`."""
        import warnings

        from quantens.bits import mix_bits

        resolved = mix_bits(self.model, policy, self.bit_widths)
        member = self._fixed_model(resolved.get, rename=True)
        used = sorted(set(resolved.values()), reverse=True)
        member._name = f"{self.model.name}_mixed_{'_'.join(map(str, used))}bit"
        if data is None:
            if len(used) > 1:
                warnings.warn(
                    f"mixed member {member.name}: its BN statistics are those of the uniform "
                    "members, layer by layer, not of this mix, which costs accuracy: "
                    "re-estimate them with member(policy, data=training inputs)",
                    UserWarning, stacklevel=3)
            return member
        from quantens.bn_statistics import reestimate_batch_norm

        bns = [f"{name}_{b}bit" for name, b in resolved.items()
               if isinstance(member.get_layer(f"{name}_{b}bit"),
                             tf.keras.layers.BatchNormalization)]
        if bns:
            reestimate_batch_norm(member, data, bns, batch_size=batch_size,
                                  max_examples=max_examples, verbose=verbose)
        return member


KERAS_FILE_ENTRIES = ("config.json", "model.weights.h5")
"""What a `.keras` file of `QuantEnsemble.save` holds (and `metadata.json`)."""


def _keras_file_problem(path: str) -> tuple[bool, str] | None:
    """(damaged?, why) when `path` is not a whole `.keras` file of a QuantEnsemble, else None.

    Reads the zip's central directory and every entry's checksum (a truncated
    or half-copied file fails here: damaged), then what the archive holds and
    the class name in config.json (an intact file of something else: not
    damaged, the wrong file).
    """
    import json

    if not zipfile.is_zipfile(path):
        return True, "not a complete .keras (zip) file: truncated or half-copied?"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                return True, f"{bad} in the archive fails its checksum"
            names = set(archive.namelist())
            config = json.loads(archive.read("config.json")) if "config.json" in names else None
    except Exception as error:  # zipfile, zlib and json raise many kinds
        return True, f"{type(error).__name__}: {one_line(error, 160)}"
    missing = [n for n in KERAS_FILE_ENTRIES if n not in names]
    if config is None and "metadata.json" in names:  # a Keras save, cut short
        return True, f"the archive has no {' and no '.join(missing)}"
    if config is None:
        listed = ", ".join(sorted(names)[:4]) or "nothing"
        return False, (f"a zip archive without a Keras model in it (no config.json; it holds "
                       f"{listed}): not a file that ensemble.save(path) wrote")
    name = config.get("class_name") if isinstance(config, dict) else None
    if not name:
        return False, ("a .keras archive whose config.json names no Keras class: not a file "
                       "that ensemble.save(path) wrote")
    if name != QuantEnsemble.__name__:
        return False, (f"an intact .keras file holding a {name}, not a QuantEnsemble: load it "
                       "with tf.keras.models.load_model, or convert a float model with "
                       "quantens.quantize_model and wrap it in quantens.QuantEnsemble")
    if missing:
        return True, f"the archive has no {' and no '.join(missing)}"
    return None


def load_ensemble(path, custom_objects=None, compile: bool = True) -> QuantEnsemble:
    """The `QuantEnsemble` that `ensemble.save(path)` wrote to a `.keras` file.

    `tf.keras.models.load_model(path)` with quantens' layers, quantizers and
    the ensemble registered, after checking the file: it exists, is a zip
    whose central directory and checksums read, holds `config.json` and the
    weights, and its model is a QuantEnsemble. `custom_objects` and `compile`
    are `load_model`'s (your own layers; `compile=False` skips the optimizer).

    ```python
    import os, tempfile
    import quantens
    from quantens.ensemble import load_ensemble
    from zoo import create_model

    bits = (32, 1)
    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=4, bit_widths=bits),
                                      bits)
    path = os.path.join(tempfile.mkdtemp(), "run.keras")
    ensemble.save(path)
    assert load_ensemble(path).bit_widths == bits
    ```

    Raises:
        WeightsError: (one line naming the file) it does not exist, is not a
            `.keras` file, is damaged (truncated, a bad checksum, an entry
            missing), holds another model, or Keras cannot load it.
    """
    from quantens import layers, quantizers  # noqa: F401  (register them with Keras)

    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "does not exist"
        raise WeightsError(
            f"{path} {what}: load_ensemble reads the .keras file that ensemble.save(path) "
            "wrote; check the path"
        )
    if not path.endswith(".keras"):
        raise WeightsError(
            f"{path} is not a .keras file: load_ensemble reads what ensemble.save('run.keras') "
            "wrote (weights alone: ensemble.load_weights, or quantens.results.load_weights)"
        )
    problem = _keras_file_problem(path)
    if problem and problem[0]:
        raise WeightsError(
            f"{path} is damaged ({problem[1]}): use another copy of the file, or save the "
            "ensemble again with ensemble.save(path)"
        )
    if problem:
        raise WeightsError(f"{path} is {problem[1]}")
    try:
        with quiet_logger(LARQ_LAYER_LOGGER):
            ensemble = tf.keras.models.load_model(path, custom_objects=custom_objects,
                                                  compile=compile)
    except Exception as error:  # Keras, h5py and larq raise many kinds
        raise WeightsError(
            f"{path} is damaged or not a QuantEnsemble file quantens can build: "
            f"{type(error).__name__}: {one_line(error, 200)}; use another copy, or save the "
            "ensemble again with ensemble.save(path)"
        ) from error
    if not isinstance(ensemble, QuantEnsemble):
        raise WeightsError(
            f"{path} holds a {type(ensemble).__name__}, not a QuantEnsemble: load it with "
            "tf.keras.models.load_model"
        )
    return ensemble


def member_table(ensemble: QuantEnsemble) -> list[dict]:
    """Per member: `bits`, `shared_parameters` (all members'), `own_parameters`
    (its own BN statistics and affine parameters, its clip values) and `bytes`
    at inference, as larq counts them: a quantized kernel at the member's
    bit-width, everything else at 32 bits (see
    `quantens.report.estimate_member_bytes`).

    ```python
    import quantens
    from quantens.ensemble import member_table
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8, bit_widths=(32, 1)),
                                      (32, 1))
    rows = member_table(ensemble)
    assert [r["bits"] for r in rows] == [32, 1] and rows[1]["bytes"] < rows[0]["bytes"]
    ```
    """
    from quantens.report import estimate_member_bytes

    sizes = estimate_member_bytes(ensemble.model, ensemble.bit_widths)
    own = {b: 0 for b in ensemble.bit_widths}
    shared = 0
    for variable in ensemble.model.weights:
        n = int(variable.shape.num_elements() or 0)
        member = _member_of(variable.name, ensemble.bit_widths)
        if member is None:
            shared += n
        else:
            own[member] += n
    return [{"bits": b, "shared_parameters": shared, "own_parameters": own[b],
             "bytes": sizes[b]} for b in ensemble.bit_widths]


def _member_of(name: str, bit_widths) -> int | None:
    """The member a variable belongs to (switchable BN's `bn_<b>` branch, a clip value
    `alpha_<b>`), or None if shared."""
    for part in name.split("/"):
        part = part.split(":")[0]
        for prefix in ("bn_", "alpha_"):
            rest = part[len(prefix):]
            if part.startswith(prefix) and rest.isdigit() and int(rest) in bit_widths:
                return int(rest)
    return None


def held_precision(model: tf.keras.Model, bits: int) -> dict[str, int]:
    """The layers member `bits` quantizes above its own bit-width: `{layer name: bits}`.

    Kernels and quantized activations: a precision policy (`quantize_model`'s
    `policy`: the stem and classifier at 32 bits by default) or a floor
    (`depthwise_bits`: depthwise convolutions and the activations they read at
    8 bits or more) holds them there.

    ```python
    import quantens
    import tensorflow as tf
    from quantens.ensemble import held_precision

    model = tf.keras.Sequential([
        tf.keras.layers.Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1), name="stem"),
        tf.keras.layers.DepthwiseConv2D(3, name="dw"),
        tf.keras.layers.Conv2D(4, 1, name="pw"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10, name="logits"),
    ])
    converted = quantens.quantize_model(model, (32, 4, 1))
    # the dw reads stem_relu: both at 8 bits or more
    assert held_precision(converted, 1) == {"stem": 32, "stem_relu": 8, "dw": 8, "logits": 32}
    assert held_precision(converted, 32) == {}
    ```
    """
    from quantens.quantizers import ClipActivation, WeightQuantizer

    keys = ("kernel_quantizer", "depthwise_quantizer", "pointwise_quantizer", "quantizer",
            "input_quantizer")
    held = {}
    with bits_scope(bits):
        for layer in model.layers:
            precisions = [q.precision for key in keys if isinstance(
                q := getattr(layer, key, None), (WeightQuantizer, ClipActivation))]
            if precisions and max(precisions) > bits:
                held[layer.name] = max(precisions)
    return held
